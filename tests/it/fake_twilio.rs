//! The fake Twilio answers like Twilio: a 201 message resource, 401/20003 for bad credentials, 404/20404 for a wrong path or account, the validation codes, the magic test numbers; and it plays scripts, Retry-After, HTML pages, hang-ups, latency and `wait_until` as the other tests rely on.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fake_twilio::*;
use serde_json::Value;

const FROM: &str = "+15005550006";
const TO: &str = "+14155550100";

type Form<'a> = Vec<(&'a str, &'a str)>;

async fn within_deadline<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(Duration::from_secs(30), test)
        .await
        .expect("test deadline");
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn messages_url(fake: &FakeTwilio, account: &str) -> String {
    format!(
        "{}/2010-04-01/Accounts/{account}/Messages.json",
        fake.base_url()
    )
}

async fn send_as(
    client: &reqwest::Client,
    fake: &FakeTwilio,
    (user, pass): (&str, &str),
    form: &[(&str, &str)],
) -> reqwest::Response {
    client
        .post(messages_url(fake, TEST_ACCOUNT_SID))
        .basic_auth(user, Some(pass))
        .form(form)
        .send()
        .await
        .unwrap()
}

async fn send(
    client: &reqwest::Client,
    fake: &FakeTwilio,
    form: &[(&str, &str)],
) -> reqwest::Response {
    send_as(client, fake, (TEST_ACCOUNT_SID, TEST_AUTH_TOKEN), form).await
}

/// Asserts a Twilio JSON error body and returns it.
async fn expect_error(response: reqwest::Response, status: u16, code: u64) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(
        body["more_info"],
        format!("https://www.twilio.com/docs/errors/{code}")
    );
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    body
}

fn is_hex_sid(sid: &str, prefix: &str) -> bool {
    sid.len() == 34
        && sid.starts_with(prefix)
        && sid[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn constants_have_twilio_shapes() {
    assert!(is_hex_sid(TEST_ACCOUNT_SID, "AC"));
    assert!(is_hex_sid(TEST_API_KEY, "SK"));
    assert!(is_hex_sid(TEST_MESSAGING_SERVICE_SID, "MG"));
    assert_eq!(TEST_AUTH_TOKEN.len(), 32);
    assert!(TEST_AUTH_TOKEN.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!TEST_API_SECRET.is_empty());
}

#[tokio::test]
async fn created_with_from_is_queued_message_resource() {
    within_deadline(async {
        let fake = FakeTwilio::start().await;
        let client = client();
        let before = Instant::now();
        let response = send(
            &client,
            &fake,
            &[
                ("To", TO),
                ("From", FROM),
                ("Body", "Your code is 123456"),
                ("ValidityPeriod", "600"),
            ],
        )
        .await;
        let after = Instant::now();
        assert_eq!(response.status().as_u16(), 201);
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "application/json; charset=utf-8");
        let request_id = headers["twilio-request-id"].to_str().unwrap();
        assert!(is_hex_sid(request_id, "RQ"), "{request_id}");
        assert_eq!(headers["twilio-concurrent-requests"], "1");
        assert!(headers.get("retry-after").is_none());

        let body: Value = response.json().await.unwrap();
        let sid = body["sid"].as_str().unwrap().to_string();
        assert!(is_hex_sid(&sid, "SM"), "{sid}");
        assert_eq!(body["account_sid"], TEST_ACCOUNT_SID);
        assert_eq!(body["to"], TO);
        assert_eq!(body["from"], FROM);
        assert_eq!(body["messaging_service_sid"], Value::Null);
        assert_eq!(body["body"], "Your code is 123456");
        assert_eq!(body["status"], "queued");
        assert_eq!(body["num_segments"], "1");
        assert_eq!(body["num_media"], "0");
        assert_eq!(body["direction"], "outbound-api");
        assert_eq!(body["api_version"], "2010-04-01");
        assert_eq!(body["price"], Value::Null);
        assert_eq!(body["price_unit"], "USD");
        assert_eq!(body["error_code"], Value::Null);
        assert_eq!(body["error_message"], Value::Null);
        assert_eq!(body["date_sent"], Value::Null);
        let created = body["date_created"].as_str().unwrap();
        assert!(
            created.ends_with(" +0000") && created.len() == 31,
            "{created}"
        );
        assert_eq!(body["date_updated"], created);
        assert_eq!(
            body["uri"],
            format!("/2010-04-01/Accounts/{TEST_ACCOUNT_SID}/Messages/{sid}.json")
        );
        assert_eq!(
            body["subresource_uris"]["media"],
            format!("/2010-04-01/Accounts/{TEST_ACCOUNT_SID}/Messages/{sid}/Media.json")
        );

        let accepted = fake.accepted();
        assert_eq!(accepted.len(), 1);
        let r = &accepted[0];
        assert_eq!(r.sid.as_deref(), Some(sid.as_str()));
        assert_eq!(r.status, 201);
        assert_eq!(r.twilio_code, None);
        assert_eq!(r.account_sid, TEST_ACCOUNT_SID);
        assert_eq!(r.username, TEST_ACCOUNT_SID);
        assert_eq!(r.to(), TO);
        assert_eq!(r.body(), "Your code is 123456");
        assert_eq!(r.field("ValidityPeriod"), Some("600"));
        assert_eq!(r.field("StatusCallback"), None);
        // The arrival and the answer, as the other tests time Retry-After
        // with them: both within this call, the answer after the arrival
        // (not left at the arrival's instant).
        assert!(before <= r.at, "arrived before the request was sent");
        assert!(r.at < r.answered_at, "answered when it arrived");
        assert!(r.answered_at <= after, "answered after the response came");
        assert_eq!(fake.request_count(), 1);
        assert_eq!(fake.in_flight(), 0);
    })
    .await
}

#[tokio::test]
async fn messaging_service_with_api_key_is_accepted() {
    within_deadline(async {
        let fake = FakeTwilio::start().await;
        let client = client();
        let response = send_as(
            &client,
            &fake,
            (TEST_API_KEY, TEST_API_SECRET),
            &[
                ("To", TO),
                ("MessagingServiceSid", TEST_MESSAGING_SERVICE_SID),
                ("Body", "Your code is 654321"),
                ("RiskCheck", "disable"),
            ],
        )
        .await;
        assert_eq!(response.status().as_u16(), 201);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "accepted");
        assert_eq!(body["from"], Value::Null);
        assert_eq!(body["messaging_service_sid"], TEST_MESSAGING_SERVICE_SID);
        assert_eq!(body["account_sid"], TEST_ACCOUNT_SID);

        // Sids are unique per message.
        let second: Value = send_as(
            &client,
            &fake,
            (TEST_API_KEY, TEST_API_SECRET),
            &[
                ("To", TO),
                ("MessagingServiceSid", TEST_MESSAGING_SERVICE_SID),
                ("Body", "again"),
            ],
        )
        .await
        .json()
        .await
        .unwrap();
        assert_ne!(second["sid"], body["sid"]);

        let requests = fake.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].username, TEST_API_KEY);
        assert_eq!(requests[0].field("RiskCheck"), Some("disable"));
    })
    .await
}

#[tokio::test]
async fn bad_credentials_get_401_20003_with_www_authenticate() {
    within_deadline(async {
        let fake = FakeTwilio::start().await;
        let client = client();
        let form = [("To", TO), ("From", FROM), ("Body", "hi")];

        let response = send_as(&client, &fake, (TEST_ACCOUNT_SID, "wrong"), &form).await;
        assert_eq!(
            response.headers()["www-authenticate"],
            "Basic realm=\"Twilio API\""
        );
        assert!(response.headers().contains_key("twilio-request-id"));
        let body = expect_error(response, 401, 20003).await;
        assert_eq!(body["message"], "Authenticate");

        // A key's secret does not go with the account sid, nor the other way round.
        let response = send_as(&client, &fake, (TEST_ACCOUNT_SID, TEST_API_SECRET), &form).await;
        expect_error(response, 401, 20003).await;
        let response = send_as(&client, &fake, (TEST_API_KEY, TEST_AUTH_TOKEN), &form).await;
        expect_error(response, 401, 20003).await;

        // No Authorization header at all, and a garbage one.
        let response = client
            .post(messages_url(&fake, TEST_ACCOUNT_SID))
            .form(&form)
            .send()
            .await
            .unwrap();
        expect_error(response, 401, 20003).await;
        let response = client
            .post(messages_url(&fake, TEST_ACCOUNT_SID))
            .header("authorization", "Basic %%%not-base64")
            .form(&form)
            .send()
            .await
            .unwrap();
        expect_error(response, 401, 20003).await;

        let requests = fake.requests();
        assert_eq!(requests.len(), 5);
        assert!(requests.iter().all(|r| r.status == 401));
        assert!(requests.iter().all(|r| r.twilio_code == Some(20003)));
        assert_eq!(requests[0].username, TEST_ACCOUNT_SID);
        assert_eq!(requests[0].to(), TO);
        assert_eq!(requests[3].username, "");
        assert_eq!(requests[4].username, "");
        assert!(fake.accepted().is_empty());
    })
    .await
}

#[tokio::test]
async fn wrong_account_path_or_method_gets_404_20404() {
    within_deadline(async {
        let fake = FakeTwilio::start().await;
        let client = client();
        let form = [("To", TO), ("From", FROM), ("Body", "hi")];
        let other_account = "ACffffffffffffffffffffffffffffffff";

        let response = client
            .post(messages_url(&fake, other_account))
            .basic_auth(TEST_ACCOUNT_SID, Some(TEST_AUTH_TOKEN))
            .form(&form)
            .send()
            .await
            .unwrap();
        let body = expect_error(response, 404, 20404).await;
        assert_eq!(
            body["message"],
            format!(
                "The requested resource /2010-04-01/Accounts/{other_account}/Messages.json was not found"
            )
        );

        let response = client
            .post(format!(
                "{}/2010-04-01/Accounts/{TEST_ACCOUNT_SID}/Calls.json",
                fake.base_url()
            ))
            .basic_auth(TEST_ACCOUNT_SID, Some(TEST_AUTH_TOKEN))
            .form(&form)
            .send()
            .await
            .unwrap();
        expect_error(response, 404, 20404).await;

        // GET on the Messages resource is the list (reconciliation reads
        // it); on another account's path it is not found.
        let response = client
            .get(messages_url(&fake, TEST_ACCOUNT_SID))
            .basic_auth(TEST_ACCOUNT_SID, Some(TEST_AUTH_TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let list: Value = response.json().await.unwrap();
        assert!(list["messages"].is_array(), "{list}");
        let response = client
            .get(messages_url(&fake, other_account))
            .basic_auth(TEST_ACCOUNT_SID, Some(TEST_AUTH_TOKEN))
            .send()
            .await
            .unwrap();
        expect_error(response, 404, 20404).await;

        // The create calls are recorded; list calls are counted apart.
        let requests = fake.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(fake.list_calls(), 1);
        assert_eq!(requests[0].account_sid, other_account);
        assert!(requests.iter().all(|r| r.twilio_code == Some(20404)));
    })
    .await
}

#[tokio::test]
async fn validation_errors_like_twilio() {
    within_deadline(async {
        let fake = FakeTwilio::start().await;
        let client = client();
        let long_body = "x".repeat(1601);
        let max_body = "é".repeat(1600); // 1600 characters, 3200 bytes: allowed
        let cases: Vec<(Form, Option<u64>)> = vec![
            (vec![("From", FROM), ("Body", "hi")], Some(21604)),
            (vec![("To", TO), ("Body", "hi")], Some(21603)),
            (vec![("To", TO), ("From", FROM)], Some(21602)),
            (vec![("To", TO), ("From", FROM), ("Body", "")], Some(21602)),
            (
                vec![("To", TO), ("From", FROM), ("Body", long_body.as_str())],
                Some(21617),
            ),
            (
                vec![("To", TO), ("From", FROM), ("Body", max_body.as_str())],
                None,
            ),
            (
                vec![
                    ("To", TO),
                    ("From", FROM),
                    ("Body", "hi"),
                    ("ValidityPeriod", "0"),
                ],
                Some(21624),
            ),
            (
                vec![
                    ("To", TO),
                    ("From", FROM),
                    ("Body", "hi"),
                    ("ValidityPeriod", "36001"),
                ],
                Some(21624),
            ),
            (
                vec![
                    ("To", TO),
                    ("From", FROM),
                    ("Body", "hi"),
                    ("ValidityPeriod", "1.5"),
                ],
                Some(21624),
            ),
            (
                vec![
                    ("To", TO),
                    ("From", FROM),
                    ("Body", "hi"),
                    ("ValidityPeriod", "36000"),
                ],
                None,
            ),
            (
                vec![
                    ("To", TO),
                    ("From", FROM),
                    ("Body", "hi"),
                    ("ValidityPeriod", "1"),
                ],
                None,
            ),
        ];
        for (form, code) in &cases {
            let response = send(&client, &fake, form).await;
            match code {
                Some(code) => {
                    expect_error(response, 400, *code).await;
                }
                None => assert_eq!(response.status().as_u16(), 201, "{form:?}"),
            }
        }

        // The message texts are Twilio's.
        let body = expect_error(send(&client, &fake, &[("Body", "hi")]).await, 400, 21604).await;
        assert_eq!(body["message"], "A 'To' phone number is required.");

        // Twilio reads form parameters only: a JSON body has no `To`.
        let response = client
            .post(messages_url(&fake, TEST_ACCOUNT_SID))
            .basic_auth(TEST_ACCOUNT_SID, Some(TEST_AUTH_TOKEN))
            .json(&serde_json::json!({"To": TO, "From": FROM, "Body": "hi"}))
            .send()
            .await
            .unwrap();
        expect_error(response, 400, 21604).await;

        let requests = fake.requests();
        assert_eq!(requests.len(), cases.len() + 2);
        for (r, (_, code)) in requests.iter().zip(&cases) {
            assert_eq!(r.twilio_code.map(u64::from), *code);
            assert_eq!(r.status, if code.is_some() { 400 } else { 201 });
        }
    })
    .await
}

#[tokio::test]
async fn magic_test_numbers() {
    within_deadline(async {
        let fake = FakeTwilio::start().await;
        let client = client();
        let cases = [
            ("+15005550001", FROM, 21211),
            ("+15005550002", FROM, 21612),
            ("+15005550003", FROM, 21408),
            ("+15005550004", FROM, 21610),
            ("+15005550009", FROM, 21614),
            (TO, "+15005550001", 21212),
            (TO, "+15005550007", 21606),
            (TO, "+15005550008", 21611),
        ];
        for (to, from, code) in cases {
            let response = send(
                &client,
                &fake,
                &[("To", to), ("From", from), ("Body", "hi")],
            )
            .await;
            let body = expect_error(response, 400, code).await;
            if code == 21211 {
                assert_eq!(
                    body["message"],
                    "The 'To' number +15005550001 is not a valid phone number."
                );
            }
        }
        // The passing magic From, and a magic To with a Messaging Service.
        let response = send(
            &client,
            &fake,
            &[("To", TO), ("From", FROM), ("Body", "hi")],
        )
        .await;
        assert_eq!(response.status().as_u16(), 201);
        let response = send(
            &client,
            &fake,
            &[
                ("To", "+15005550009"),
                ("MessagingServiceSid", TEST_MESSAGING_SERVICE_SID),
                ("Body", "hi"),
            ],
        )
        .await;
        expect_error(response, 400, 21614).await;
        assert_eq!(fake.accepted().len(), 1);
        assert_eq!(fake.request_count(), cases.len() + 2);
    })
    .await
}

#[tokio::test]
async fn script_is_used_in_order_then_default() {
    within_deadline(async {
        let fake = FakeTwilio::start().await;
        let client = client();
        let form = [("To", TO), ("From", FROM), ("Body", "hi")];
        fake.script(
            TO,
            [
                Reply::too_many_requests(),
                Reply::server_error(503),
                Reply::error(400, 21211),
                Reply::created(),
            ],
        );

        let response = send(&client, &fake, &form).await;
        assert!(response.headers().get("retry-after").is_none());
        let body = expect_error(response, 429, 20429).await;
        assert_eq!(body["message"], "Too Many Requests");
        let body = expect_error(send(&client, &fake, &form).await, 503, 20503).await;
        assert_eq!(body["message"], "Service Unavailable");
        expect_error(send(&client, &fake, &form).await, 400, 21211).await;
        assert_eq!(send(&client, &fake, &form).await.status().as_u16(), 201);

        // Script exhausted: the default applies, and can be replaced.
        assert_eq!(send(&client, &fake, &form).await.status().as_u16(), 201);
        fake.set_default(Reply::server_error(500));
        let body = expect_error(send(&client, &fake, &form).await, 500, 20500).await;
        assert_eq!(body["message"], "Internal Server Error");
        // Another To without a script gets the default too.
        let other = [("To", "+14155550199"), ("From", FROM), ("Body", "hi")];
        expect_error(send(&client, &fake, &other).await, 500, 20500).await;
        fake.set_default(Reply::created());

        // A script wins over a magic number; afterwards the magic number applies again.
        let magic = [("To", "+15005550001"), ("From", FROM), ("Body", "hi")];
        fake.script("+15005550001", [Reply::created()]);
        assert_eq!(send(&client, &fake, &magic).await.status().as_u16(), 201);
        expect_error(send(&client, &fake, &magic).await, 400, 21211).await;

        // Validation comes before the script: the script is not consumed.
        fake.script(TO, [Reply::error(400, 21610)]);
        expect_error(
            send(&client, &fake, &[("To", TO), ("From", FROM)]).await,
            400,
            21602,
        )
        .await;
        expect_error(send(&client, &fake, &form).await, 400, 21610).await;

        let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [429, 503, 400, 201, 201, 500, 500, 201, 400, 400, 400]
        );
        assert_eq!(fake.accepted().len(), 3);
    })
    .await
}

#[tokio::test]
async fn retry_after_is_passed_verbatim() {
    within_deadline(async {
        let fake = FakeTwilio::start().await;
        let client = client();
        let form = [("To", TO), ("From", FROM), ("Body", "hi")];
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        fake.script(
            TO,
            [
                Reply::too_many_requests().with_retry_after("7"),
                Reply::server_error(503).with_retry_after(date),
                Reply::html(502).with_retry_after("120"),
            ],
        );
        let response = send(&client, &fake, &form).await;
        assert_eq!(response.headers()["retry-after"], "7");
        expect_error(response, 429, 20429).await;
        let response = send(&client, &fake, &form).await;
        assert_eq!(response.headers()["retry-after"], date);
        expect_error(response, 503, 20503).await;
        let response = send(&client, &fake, &form).await;
        assert_eq!(response.status().as_u16(), 502);
        assert_eq!(response.headers()["retry-after"], "120");
    })
    .await
}

#[tokio::test]
async fn html_reply_is_not_json() {
    within_deadline(async {
        let fake = FakeTwilio::start().await;
        let client = client();
        fake.set_default(Reply::html(502));
        let response = send(
            &client,
            &fake,
            &[("To", TO), ("From", FROM), ("Body", "hi")],
        )
        .await;
        assert_eq!(response.status().as_u16(), 502);
        assert_eq!(response.headers()["content-type"], "text/html");
        let text = response.text().await.unwrap();
        assert!(text.contains("<title>502 Bad Gateway</title>"), "{text}");
        assert!(serde_json::from_str::<Value>(&text).is_err());
        let requests = fake.requests();
        assert_eq!(requests[0].status, 502);
        assert_eq!(requests[0].twilio_code, None);
        assert_eq!(requests[0].sid, None);
    })
    .await
}

#[tokio::test]
async fn hang_up_closes_without_answer_and_is_recorded() {
    within_deadline(async {
        let fake = FakeTwilio::start().await;
        let client = client();
        let form = [("To", TO), ("From", FROM), ("Body", "hi")];
        // Warm a keep-alive connection first, so the hang-up happens on a reused one.
        assert_eq!(send(&client, &fake, &form).await.status().as_u16(), 201);
        fake.script(TO, [Reply::hang_up()]);

        let err = client
            .post(messages_url(&fake, TEST_ACCOUNT_SID))
            .basic_auth(TEST_ACCOUNT_SID, Some(TEST_AUTH_TOKEN))
            .form(&form)
            .send()
            .await
            .expect_err("a hang-up has no answer");
        assert!(err.status().is_none(), "{err:?}");
        assert!(err.is_request() && !err.is_timeout(), "{err:?}");

        // The next request gets a fresh connection and an answer.
        assert_eq!(send(&client, &fake, &form).await.status().as_u16(), 201);

        let requests = fake.requests();
        assert_eq!(requests.len(), 3);
        assert_eq!(requests[1].status, 0);
        assert_eq!(requests[1].twilio_code, None);
        assert_eq!(requests[1].sid, None);
        assert_eq!(requests[1].to(), TO);
        assert_eq!(fake.accepted().len(), 2);
    })
    .await
}

#[tokio::test]
async fn latency_holds_concurrent_requests_in_flight() {
    within_deadline(async {
        let fake = FakeTwilio::start_with(FakeTwilioConfig {
            latency: Duration::from_millis(1000),
            ..FakeTwilioConfig::default()
        })
        .await;
        // The gate keeps all 50 in flight until the last has arrived, however busy the
        // machine; the latency then still applies to each.
        fake.hold();
        let client = client();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..50 {
            let client = client.clone();
            let fake = fake.clone();
            tasks.spawn(async move {
                let to = format!("+1415555{i:04}");
                let response = send(
                    &client,
                    &fake,
                    &[("To", &to), ("From", FROM), ("Body", "hi")],
                )
                .await;
                assert_eq!(response.status().as_u16(), 201);
                response.headers()["twilio-concurrent-requests"]
                    .to_str()
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            });
        }
        assert_eq!(
            fake.wait_held(50, Duration::from_secs(20), "all 50 requests")
                .await,
            50
        );
        fake.release();
        let mut concurrent = Vec::new();
        while let Some(result) = tasks.join_next().await {
            concurrent.push(result.unwrap());
        }
        assert_eq!(fake.max_in_flight(), 50);
        assert_eq!(concurrent.iter().max(), Some(&50));
        assert_eq!(fake.in_flight(), 0);
        assert_eq!(fake.accepted().len(), 50);
        for r in fake.requests() {
            assert!(r.answered_at.duration_since(r.at) >= Duration::from_millis(1000));
        }

        // A per-reply latency overrides the default one.
        fake.set_latency(Duration::ZERO);
        fake.script(
            TO,
            [Reply::created().with_latency(Duration::from_millis(300))],
        );
        send(
            &client,
            &fake,
            &[("To", TO), ("From", FROM), ("Body", "hi")],
        )
        .await;
        let last = fake.requests().pop().unwrap();
        assert!(last.answered_at.duration_since(last.at) >= Duration::from_millis(300));
    })
    .await
}

#[tokio::test]
async fn request_is_recorded_even_if_the_client_gives_up() {
    within_deadline(async {
        let fake = FakeTwilio::start().await;
        // Held until the client has given up, however long that takes.
        fake.hold();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(1000))
            .build()
            .unwrap();
        let err = client
            .post(messages_url(&fake, TEST_ACCOUNT_SID))
            .basic_auth(TEST_ACCOUNT_SID, Some(TEST_AUTH_TOKEN))
            .form(&[("To", TO), ("From", FROM), ("Body", "hi")])
            .send()
            .await
            .expect_err("the client times out first");
        assert!(err.is_timeout(), "{err:?}");
        assert_eq!(
            fake.wait_held(1, Duration::from_secs(5), "the request")
                .await,
            1
        );
        fake.release();
        // Like Twilio, the message was created anyway: the ambiguity of a timeout.
        let seen = fake
            .wait_until(Duration::from_secs(5), "the abandoned request", |r| {
                r.len() == 1
            })
            .await;
        assert_eq!(seen[0].status, 201);
        assert_eq!(fake.in_flight(), 0);
    })
    .await
}

#[tokio::test]
async fn the_gate_holds_requests_in_flight_until_released() {
    within_deadline(async {
        let fake = FakeTwilio::start().await;
        fake.hold_after(2);
        let client = client();
        let form = [("To", TO), ("From", FROM), ("Body", "hi")];
        for _ in 0..2 {
            assert_eq!(send(&client, &fake, &form).await.status().as_u16(), 201);
        }
        let held = {
            let (client, fake) = (client.clone(), fake.clone());
            tokio::spawn(async move { send(&client, &fake, &form).await.status().as_u16() })
        };
        assert_eq!(
            fake.wait_held(1, Duration::from_secs(10), "the third request")
                .await,
            1
        );
        assert_eq!(fake.in_flight(), 1, "a held request is in flight");
        assert_eq!(fake.request_count(), 2, "and not answered");
        fake.release();
        assert_eq!(held.await.unwrap(), 201);
        assert_eq!(fake.held(), 0);
        assert_eq!(fake.in_flight(), 0);
        assert_eq!(fake.accepted().len(), 3);
        assert_eq!(fake.max_in_flight(), 1);
        // An open gate holds nothing.
        assert_eq!(send(&client, &fake, &form).await.status().as_u16(), 201);
        assert_eq!(fake.held(), 0);
    })
    .await
}

#[tokio::test]
async fn wait_until_wakes_on_requests() {
    within_deadline(async {
        let fake = FakeTwilio::start().await;
        fake.set_latency(Duration::from_millis(50));
        let client = client();
        let sender = {
            let fake = fake.clone();
            tokio::spawn(async move {
                for i in 0..3 {
                    let to = format!("+1415555000{i}");
                    send(
                        &client,
                        &fake,
                        &[("To", &to), ("From", FROM), ("Body", "hi")],
                    )
                    .await;
                }
            })
        };
        let seen = fake
            .wait_until(Duration::from_secs(10), "three messages", |r| {
                r.iter().filter(|r| r.status == 201).count() == 3
            })
            .await;
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2].to(), "+14155550002");
        sender.await.unwrap();
    })
    .await
}

#[tokio::test]
#[should_panic(expected = "timed out after 200ms waiting for a message that never comes")]
async fn wait_until_panics_after_deadline() {
    within_deadline(async {
        let fake = FakeTwilio::start().await;
        let client = client();
        send(
            &client,
            &fake,
            &[
                ("To", "+15005550001"),
                ("From", FROM),
                ("Body", "secret body"),
            ],
        )
        .await;
        fake.wait_until(
            Duration::from_millis(200),
            "a message that never comes",
            |r| r.iter().any(|r| r.status == 201),
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn wait_until_summary_has_statuses_not_bodies() {
    within_deadline(async {
        let fake = FakeTwilio::start().await;
        let client = client();
        send(
            &client,
            &fake,
            &[
                ("To", "+15005550001"),
                ("From", FROM),
                ("Body", "secret body"),
            ],
        )
        .await;
        let waiter = fake.clone();
        let panic = tokio::spawn(async move {
            waiter
                .wait_until(Duration::from_millis(100), "never", |_| false)
                .await;
        })
        .await
        .expect_err("wait_until panics");
        let payload = panic.into_panic();
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("1 requests: 400/21211 ×1"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    })
    .await
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_server() {
    within_deadline(async {
        let fake = FakeTwilio::start().await;
        let url = messages_url(&fake, TEST_ACCOUNT_SID);
        let clone = fake.clone();
        drop(fake);
        // Still served while a clone lives.
        let client = client();
        let response = send(
            &client,
            &clone,
            &[("To", TO), ("From", FROM), ("Body", "hi")],
        )
        .await;
        assert_eq!(response.status().as_u16(), 201);
        drop(clone);
        let err = reqwest::Client::new()
            .post(&url)
            .basic_auth(TEST_ACCOUNT_SID, Some(TEST_AUTH_TOKEN))
            .form(&[("To", TO), ("From", FROM), ("Body", "hi")])
            .send()
            .await
            .expect_err("the server is gone");
        assert!(err.status().is_none(), "{err:?}");
    })
    .await
}

#[tokio::test]
async fn other_account_config() {
    within_deadline(async {
        let account = "AC11111111111111111111111111111111";
        let fake = FakeTwilio::start_with(FakeTwilioConfig {
            account_sid: account.to_string(),
            credentials: vec![(account.to_string(), "token".to_string())],
            latency: Duration::ZERO,
        })
        .await;
        let client = client();
        let form = [("To", TO), ("From", FROM), ("Body", "hi")];
        let response = client
            .post(messages_url(&fake, account))
            .basic_auth(account, Some("token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["account_sid"], account);
        // The default test account's credentials are unknown to this fake:
        // Twilio authenticates before it reads the path.
        expect_error(send(&client, &fake, &form).await, 401, 20003).await;
        // Known credentials on another account's path: not found.
        let other = client
            .post(messages_url(&fake, TEST_ACCOUNT_SID))
            .basic_auth(account, Some("token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        expect_error(other, 404, 20404).await;
    })
    .await
}

#[test]
fn segments_gsm7_and_ucs2() {
    assert_eq!(num_segments("a"), 1);
    assert_eq!(num_segments(&"a".repeat(160)), 1);
    assert_eq!(num_segments(&"a".repeat(161)), 2);
    assert_eq!(num_segments(&"a".repeat(306)), 2);
    assert_eq!(num_segments(&"a".repeat(307)), 3);
    // Extension characters take two septets; é and £ are in the basic set.
    assert_eq!(num_segments(&"€".repeat(80)), 1);
    assert_eq!(num_segments(&"€".repeat(81)), 2);
    assert_eq!(num_segments(&"é£".repeat(80)), 1);
    // Anything else is UCS-2, counted in UTF-16 units.
    assert_eq!(num_segments(&"ł".repeat(70)), 1);
    assert_eq!(num_segments(&"ł".repeat(71)), 2);
    assert_eq!(num_segments(&"😀".repeat(35)), 1);
    assert_eq!(num_segments(&"😀".repeat(36)), 2);
    assert_eq!(num_segments(&format!("`{}", "a".repeat(69))), 1);
    assert_eq!(num_segments(&format!("`{}", "a".repeat(70))), 2);
}

#[test]
fn dates_look_like_twilio() {
    let t = UNIX_EPOCH + Duration::from_secs(1_438_287_151);
    assert_eq!(format_rfc2822(t), "Thu, 30 Jul 2015 20:12:31 +0000");
    let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // leap day
    assert_eq!(format_rfc2822(t), "Tue, 29 Feb 2000 00:00:00 +0000");
    assert_eq!(
        format_rfc2822(UNIX_EPOCH),
        "Thu, 01 Jan 1970 00:00:00 +0000"
    );
    assert!(format_rfc2822(SystemTime::now()).ends_with(" +0000"));
}

#[tokio::test]
async fn a_messaging_service_send_is_accepted_with_zero_segments_and_bare_replies_have_no_body() {
    within_deadline(async {
        let fake = FakeTwilio::start().await;
        let client = client();
        let form = [
            ("To", TO),
            ("MessagingServiceSid", TEST_MESSAGING_SERVICE_SID),
            ("Body", "Your code is 123456"),
        ];
        let response = send(&client, &fake, &form).await;
        assert_eq!(response.status().as_u16(), 201);
        let body: Value = response.json().await.unwrap();
        // As Twilio: the count comes later, once a sender is chosen.
        assert_eq!(body["status"], "accepted");
        assert_eq!(body["num_segments"], "0");

        fake.set_default(Reply::bare(401));
        let response = send(&client, &fake, &form).await;
        assert_eq!(response.status().as_u16(), 401);
        assert!(response.bytes().await.unwrap().is_empty());
    })
    .await
}

#[test]
fn status_callbacks_are_signed_as_twilios_documentation_says() {
    let form: Vec<(String, String)> = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+14158675309"),
        ("Digits", "1234"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(
        twilio_signature(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &form
        ),
        "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    );
}
