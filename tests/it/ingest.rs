//! Logto's HTTP SMS connector posting into the worker: `POST /v1/send` needs
//! the bearer token, refuses a bad body or an expired job with a JSON error,
//! and answers 202 with the job id only after the broker confirmed the job,
//! which is then sent like any other.
//!
//! What the ingest publishes is seen in a queue of the test's own, bound to
//! `sms` with `send` next to `sms.send`: the worker empties `sms.send`, so an
//! empty `sms.send` would prove nothing.

use std::time::Duration;

use crate::support::*;
use lapin::Channel;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
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

/// The test's own queue, bound where a job for the worker lands.
const COPIES: &str = "test.ingest-copies";

/// Declares [`COPIES`] on `channel` (exclusive to its connection) and binds
/// it to `sms`/`send`: from now on it gets a copy of every job published.
async fn bind_copies(channel: &Channel) {
    channel
        .queue_declare(
            COPIES.into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            COPIES.into(),
            "sms".into(),
            "send".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Posts a good job and checks that it is the only job published since the
/// bind and the only one sent. (The 202 follows the broker's confirm, which
/// follows every earlier publish's: a refused job that had been published
/// would be in the queue in front of it.)
async fn only_a_good_job_goes_out(bed: &TestBed) {
    let to = number();
    let good = json!({"to": to, "type": "SignIn", "payload": {"code": crate::support::code()}});
    let (status, body) = post(bed, Some(&format!("Bearer {TOKEN}")), &good).await;
    assert_eq!(status, 202, "{body}");
    let published: Vec<String> = take_at_least(&bed.channel, COPIES, 1, SECS)
        .await
        .iter()
        .map(|m| {
            m.properties
                .message_id()
                .as_ref()
                .map_or("", |id| id.as_str())
                .to_owned()
        })
        .collect();
    assert_eq!(
        published,
        [body["id"].as_str().unwrap()],
        "a refused job was published"
    );
    let seen = bed
        .twilio
        .wait_until(SECS, "the good job sent", |r| !r.is_empty())
        .await;
    bed.wait_drained(SECS).await;
    assert_eq!(bed.twilio.request_count(), 1, "a refused job was sent");
    assert_eq!(seen[0].to(), to);
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
        bind_copies(&bed.channel).await;
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
        // Published to sms/send once, as posted, with the answered id.
        let copies = take_at_least(&bed.channel, COPIES, 1, SECS).await;
        assert_eq!(copies.len(), 1, "one job published");
        let published = copies[0].json();
        assert_eq!(published["to"], to);
        assert_eq!(published["payload"]["code"], code);
        assert_eq!(
            copies[0]
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str()),
            Some(id.as_str())
        );

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
        bind_copies(&bed.channel).await;
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
        only_a_good_job_goes_out(&bed).await;
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

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_expires_at_has_passed_is_a_400_and_publishes_nothing() {
    within(60, async {
        let bed = bed_with_ingest().await;
        bind_copies(&bed.channel).await;
        let expired = TestJob::new(&number(), "SignIn").expired();
        let job: Value = serde_json::from_slice(&expired.body()).unwrap();
        let (status, body) = post(&bed, Some(&format!("Bearer {TOKEN}")), &job).await;
        assert_eq!(status, 400, "{body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains("expires_at"), "{body}");
        only_a_good_job_goes_out(&bed).await;
        assert_eq!(
            ready(&bed.channel, "sms.dead").await,
            0,
            "nor was it dead-lettered"
        );
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_role_takes_jobs_while_the_worker_role_is_paused() {
    within(150, async {
        // `run --role worker` and `run --role http` on one broker: the HTTP
        // side consumes nothing and stays ready through a fleet-wide pause
        // (an account fault), so Logto's sign-ins keep being queued; the
        // worker side serves no ingest.
        let twilio = FakeTwilio::start().await;
        twilio.set_default(Reply::error(401, 20003));
        let bed = TestBed::start_with(ConfigFile::full(), twilio, |o| {
            o.args = vec!["--role", "worker"];
            o.prefetch = 4;
        })
        .await;
        let config = ConfigFile::full();
        let mut http_options = WorkerOptions::new(&bed.vhost.url, &config, &bed.twilio);
        http_options.args = vec!["--role", "http"];
        http_options
            .env
            .push(("SMS_DISPATCH_INGEST_TOKEN", TOKEN.to_owned()));
        let http = WorkerProcess::start_ready(http_options).await;
        let bearer = format!("Bearer {TOKEN}");
        let post_to = |addr: std::net::SocketAddr, body: Value| {
            let bearer = bearer.clone();
            async move {
                let response = reqwest::Client::new()
                    .post(format!("http://{addr}/v1/send"))
                    .header("Authorization", bearer)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                response.status().as_u16()
            }
        };
        let job = |to: &str| json!({"to": to, "type": "SignIn", "payload": {"code": crate::support::code()}});

        let first = number();
        assert_eq!(
            post_to(bed.worker.http, job(&first)).await,
            404,
            "--role worker serves no ingest"
        );
        assert_eq!(post_to(http.http, job(&first)).await, 202);
        eventually(SECS, "the worker role to pause on 20003", || async {
            let (status, body) = bed.worker.readyz().await;
            (status == 503 && body["reason"] == "paused").then_some(())
        })
        .await;
        let second = number();
        assert_eq!(
            post_to(http.http, job(&second)).await,
            202,
            "the HTTP role takes jobs during the pause"
        );
        let (status, body) = http.readyz().await;
        assert_eq!(status, 200, "the HTTP role is ready while paused: {body}");

        // The account is fixed: the worker role's probe resumes it, and both
        // jobs go out once, from the worker role (the HTTP role, consuming
        // nothing, has no Twilio to send them with).
        bed.twilio.set_default(Reply::created());
        bed.twilio
            .wait_until(Duration::from_secs(90), "both jobs sent", |r| {
                [&first, &second]
                    .iter()
                    .all(|to| r.iter().any(|r| r.status == 201 && r.to() == to.as_str()))
            })
            .await;
        bed.wait_drained(SECS).await;
        assert_eq!(bed.twilio.messages_to(&first), 1);
        assert_eq!(bed.twilio.messages_to(&second), 1);
        http.finish().await;
        bed.worker.finish().await;
    })
    .await;
}

#[test]
fn the_http_role_with_nothing_to_serve_is_a_usage_error() {
    let config = ConfigFile::full();
    let (code, _, stderr) = run_cli(
        &["run", "--role", "http"],
        &[
            ("SMS_DISPATCH_CONFIG", config.0.to_str().unwrap()),
            ("SMS_DISPATCH_AMQP_URL", "amqp://127.0.0.1:1/%2f"),
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("SMS_DISPATCH_INGEST_TOKEN") && stderr.lines().count() == 1,
        "{stderr}"
    );
}
