//! Logto's HTTP SMS connector posting into the worker: `POST /v1/send` needs
//! the bearer token, refuses a bad body with a JSON error, and answers 202
//! with the job id only after the broker confirmed the job, which is then
//! sent like any other.

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

const SECS: Duration = Duration::from_secs(30);
const TOKEN: &str = "ingest-token-for-tests-0123456789";

async fn bed_with_ingest() -> TestBed {
    let twilio = FakeTwilio::start().await;
    TestBed::start_with(ConfigFile::full(), twilio, |o| {
        o.env.push(("SMS_DISPATCH_INGEST_TOKEN", TOKEN.to_owned()));
    })
    .await
}

async fn post(bed: &TestBed, auth: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{}/v1/send", bed.worker.http))
        .json(body);
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn logtos_http_connector_can_post_a_job() {
    within(60, async {
        let bed = bed_with_ingest().await;
        let to = number();
        let code = crate::support::code();
        // Exactly what Logto's HTTP SMS connector sends.
        let job = json!({
            "to": to,
            "type": "ForgotPassword",
            "payload": {"code": code, "locale": "en"},
            "ip": "203.0.113.7"
        });
        let bearer = format!("Bearer {TOKEN}");
        let (status, body) = post(&bed, Some(&bearer), &job).await;
        assert_eq!(status, 202, "{body}");
        let id = body["id"].as_str().expect("an id").to_owned();

        let seen = bed
            .twilio
            .wait_until(SECS, "the job sent", |r| r.iter().any(|r| r.status == 201))
            .await;
        assert_eq!(seen[0].to(), to);
        assert_eq!(seen[0].body(), format!("Reset code: {code}"));
        bed.wait_drained(SECS).await;
        let logs = bed.worker.finish().await;
        let sent = logs.iter().find(|l| l["outcome"] == "sent").unwrap();
        assert_eq!(
            sent["span"]["job_id"],
            id.as_str(),
            "the answered id is the job's id"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_no_entry_and_a_bad_body_is_a_400() {
    within(60, async {
        let bed = bed_with_ingest().await;
        let good =
            json!({"to": number(), "type": "SignIn", "payload": {"code": crate::support::code()}});
        for auth in [None, Some("Bearer wrong"), Some(TOKEN)] {
            let (status, body) = post(&bed, auth, &good).await;
            assert_eq!(status, 401, "{auth:?}");
            assert!(body["error"].as_str().is_some());
        }
        let bearer = format!("Bearer {TOKEN}");
        let cases = [
            (json!({"type": "SignIn", "payload": {"code": "1"}}), "`to`"),
            (
                json!({"to": "+15005550006", "type": "Login", "payload": {"code": "1"}}),
                "`type`",
            ),
            (
                json!({"to": "+15005550006", "type": "SignIn", "payload": {}}),
                "payload.code",
            ),
            (json!([1, 2]), "object"),
        ];
        for (job, field) in cases {
            let (status, body) = post(&bed, Some(&bearer), &job).await;
            assert_eq!(status, 400, "{job}");
            let error = body["error"].as_str().unwrap();
            assert!(error.contains(field), "{error} lacks {field}");
        }
        assert_eq!(bed.twilio.request_count(), 0, "nothing refused was sent");
        assert_eq!(
            ready(&bed.channel, "sms.send").await,
            0,
            "nothing refused was queued"
        );
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_there_is_no_ingest_route() {
    within(60, async {
        let bed = TestBed::start(ConfigFile::full()).await;
        let response = reqwest::Client::new()
            .post(format!("http://{}/v1/send", bed.worker.http))
            .json(&json!({"to": number(), "type": "SignIn", "payload": {"code": "1"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        bed.worker.finish().await;
    })
    .await;
}
