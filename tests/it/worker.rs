//! The worker against a real RabbitMQ and the fake Twilio: every job ends as
//! exactly one Twilio message or one dead letter with a reason; templates are
//! chosen by `locale`, else by `uiLocales`; classic queues work as quorum
//! ones do.

use std::time::Duration;

use crate::support::*;
use lapin::BasicProperties;
use serde_json::json;

const SECS: Duration = Duration::from_secs(30);

/// Templates for every type, with locales, and a Generic fallback.
fn templates() -> ConfigFile {
    ConfigFile::logto(&[
        ("SignIn", None, "Sign in with {{code}}"),
        ("SignIn", Some("ja"), "サインインコード {{code}}"),
        ("SignIn", Some("ja-JP"), "サインイン(日本) {{code}}"),
        ("Register", None, "Welcome! Code {{code}}"),
        ("ForgotPassword", None, "Reset with {{ code }}"),
        ("Generic", None, "Your code is {{code}}"),
        ("Generic", Some("fr"), "Votre code est {{code}}"),
        (
            "OrganizationInvitation",
            None,
            "Join {{organization.name}}: {{link}}",
        ),
        ("MfaVerification", Some("de"), "MFA-Code {{code}}"),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_gets_its_template_with_locale_and_generic_fallback() {
    within(90, async {
        let bed = TestBed::start(templates()).await;

        let invite = TestJob::new(&number(), "OrganizationInvitation")
            .var("link", json!("https://example.com/i/abc"))
            .var("organization", json!({"name": "Acme"}));
        let cases: Vec<(TestJob, String)> = vec![
            sign_in(None, |c| format!("Sign in with {c}")),
            sign_in(Some("ja-JP"), |c| format!("サインイン(日本) {c}")),
            sign_in(Some("ja"), |c| format!("サインインコード {c}")),
            sign_in(Some("ja-Hira-JP"), |c| format!("サインインコード {c}")),
            sign_in(Some("en-US"), |c| format!("Sign in with {c}")),
            typed("Register", None, |c| format!("Welcome! Code {c}")),
            typed("ForgotPassword", Some("ja"), |c| format!("Reset with {c}")),
            typed("Generic", None, |c| format!("Your code is {c}")),
            typed("Generic", Some("fr-CA"), |c| format!("Votre code est {c}")),
            typed("UserPermissionValidation", None, |c| {
                format!("Your code is {c}")
            }),
            typed("BindNewIdentifier", Some("fr"), |c| {
                format!("Votre code est {c}")
            }),
            typed("MfaVerification", Some("de-AT"), |c| {
                format!("MFA-Code {c}")
            }),
            typed("MfaVerification", Some("en"), |c| {
                format!("Your code is {c}")
            }),
            typed("BindMfa", None, |c| format!("Your code is {c}")),
            (invite, "Join Acme: https://example.com/i/abc".to_owned()),
        ];
        for request in send_each(&bed, &cases).await {
            assert_eq!(request.status, 201);
            assert_eq!(
                request.field("MessagingServiceSid"),
                Some(TEST_MESSAGING_SERVICE_SID)
            );
            let validity: u64 = request.field("ValidityPeriod").unwrap().parse().unwrap();
            assert!((560..=600).contains(&validity), "ValidityPeriod {validity}");
            assert_eq!(request.username, TEST_ACCOUNT_SID);
        }
        bed.wait_drained(SECS).await;
        assert_eq!(
            ready(&bed.channel, "sms.dead").await,
            0,
            "nothing dead-lettered"
        );
        let logs = bed.worker.finish().await;
        let sent: Vec<_> = logs.iter().filter(|l| l["outcome"] == "sent").collect();
        assert_eq!(sent.len(), cases.len(), "one log line per sent job");
        assert!(sent.iter().all(|l| {
            l["span"]["message_sid"]
                .as_str()
                .is_some_and(|s| s.starts_with("SM"))
        }));
    })
    .await;
}

/// Publishes each job, waits until each was sent once, checks each one's
/// text, and returns the Twilio requests.
async fn send_each(bed: &TestBed, cases: &[(TestJob, String)]) -> Vec<Received> {
    for (job, _) in cases {
        bed.publish(job).await;
    }
    let seen = bed
        .twilio
        .wait_until(SECS, "every job sent", |r| r.len() >= cases.len())
        .await;
    assert_eq!(seen.len(), cases.len(), "one Twilio call per job");
    for (job, expected) in cases {
        let request = seen
            .iter()
            .find(|r| r.to() == job.to)
            .unwrap_or_else(|| panic!("no request for job {}", job.id));
        assert_eq!(
            request.body(),
            expected,
            "{} {:?} {:?}",
            job.kind,
            job.payload.get("locale"),
            job.payload.get("uiLocales")
        );
    }
    seen
}

fn sign_in(locale: Option<&str>, body: impl Fn(&str) -> String) -> (TestJob, String) {
    typed("SignIn", locale, body)
}

fn typed(kind: &str, locale: Option<&str>, body: impl Fn(&str) -> String) -> (TestJob, String) {
    let mut job = TestJob::new(&number(), kind);
    if let Some(l) = locale {
        job = job.locale(l);
    }
    let expected = body(&job.code);
    (job, expected)
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_locales_choose_the_template_when_there_is_no_locale_and_render_as_a_variable() {
    within(60, async {
        let bed = TestBed::start(ConfigFile::logto(&[
            ("SignIn", None, "Sign in with {{code}}"),
            ("SignIn", Some("ja"), "サインインコード {{code}}"),
            ("Register", None, "Code {{code}} ({{uiLocales}})"),
        ]))
        .await;
        let ui_locales = |kind: &str, locales: &str, body: fn(&str) -> String| {
            let job = TestJob::new(&number(), kind).var("uiLocales", json!(locales));
            let expected = body(&job.code);
            (job, expected)
        };
        let mut cases = vec![
            // Logto's raw preference list: its first tag chooses, down to
            // the language (ja-JP → ja) as a locale would.
            ui_locales("SignIn", "ja-JP en", |c| format!("サインインコード {c}")),
            // No template for the first tag: the type's default.
            ui_locales("SignIn", "fr ja", |c| format!("Sign in with {c}")),
            // A variable like any other.
            ui_locales("Register", "fr-CA de", |c| format!("Code {c} (fr-CA de)")),
        ];
        // `locale` wins over `uiLocales`.
        let english = TestJob::new(&number(), "SignIn")
            .var("uiLocales", json!("ja"))
            .locale("en");
        let expected = format!("Sign in with {}", english.code);
        cases.push((english, expected));
        send_each(&bed, &cases).await;
        bed.wait_drained(SECS).await;
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_queue_type_classic_the_worker_declares_classic_queues_and_sends() {
    within(60, async {
        let vhost = Vhost::create();
        let twilio = FakeTwilio::start().await;
        let config = ConfigFile::full();
        let mut options = WorkerOptions::new(&vhost.url, &config, &twilio);
        options
            .env
            .push(("SMS_DISPATCH_QUEUE_TYPE", "classic".to_owned()));
        let worker = WorkerProcess::start_ready(options).await;
        let name = vhost.name.clone();
        let listing = tokio::task::spawn_blocking(move || {
            rabbitmqctl(
                None,
                &[
                    "list_queues",
                    "-q",
                    "--no-table-headers",
                    "-p",
                    &name,
                    "name",
                    "type",
                    "arguments",
                ],
            )
        })
        .await
        .unwrap();
        let queues: Vec<(&str, &str)> = listing
            .lines()
            .filter_map(|l| {
                let mut cols = l.split('\t');
                Some((cols.next()?, cols.next()?))
            })
            .collect();
        // sms.send and the eight delay queues, and every other queue the
        // worker declares (sms.dead is classic whatever the setting).
        assert!(queues.iter().any(|(q, _)| *q == "sms.send"), "{listing}");
        let delay_queues = queues.iter().filter(|(q, _)| q.starts_with("sms.retry."));
        assert_eq!(delay_queues.count(), 8, "{listing}");
        for (queue, kind) in &queues {
            assert_eq!(*kind, "classic", "{queue} in:\n{listing}");
        }
        assert!(
            listing
                .lines()
                .filter(|l| l.starts_with("sms.send\t") || l.starts_with("sms.retry."))
                .all(|l| l.contains("x-queue-type") && l.contains("classic")),
            "declared classic, not left to the default:\n{listing}"
        );
        // A job published to the classic queues is sent (no topology
        // declared here: a quorum one would not match).
        let conn = vhost.connect().await;
        let publisher = sms_dispatch::wire::Publisher::open(&conn).await.unwrap();
        let job = TestJob::new(&number(), "SignIn");
        publish(&publisher, &job).await;
        let seen = twilio
            .wait_until(SECS, "the job sent", |r| r.iter().any(|r| r.status == 201))
            .await;
        assert_eq!(seen[0].to(), job.to);
        let channel = conn.create_channel().await.unwrap();
        wait_drained(&channel, &worker, SECS).await;
        let logs = worker.finish().await;
        assert!(logs.iter().any(|l| l["outcome"] == "sent"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_type_without_template_or_generic_is_dead_lettered_no_template() {
    within(60, async {
        let bed = TestBed::start(ConfigFile::logto(&[(
            "SignIn",
            Some("ja"),
            "コード {{code}}",
        )]))
        .await;
        let register = TestJob::new(&number(), "Register");
        let english = TestJob::new(&number(), "SignIn").locale("en");
        bed.publish(&register).await;
        bed.publish(&english).await;
        let dead = bed.dead_letters(2, SECS).await;
        assert_eq!(dead.len(), 2);
        for d in &dead {
            assert_eq!(d.header_str("x-sms-reason").as_deref(), Some("no_template"));
            assert!(d.header_str("x-sms-error").unwrap().contains("no template"));
            assert_eq!(d.header_i64("x-sms-attempts"), Some(0));
            assert_eq!(d.header_i64("x-sms-twilio-code"), None);
        }
        assert_eq!(bed.twilio.request_count(), 0, "Twilio was never called");
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_error_is_tried_once_and_dead_lettered_with_the_twilio_code() {
    within(60, async {
        let bed = TestBed::start(ConfigFile::full()).await;
        // Twilio's magic number: geo permission not enabled for this region.
        let geo = TestJob::new("+15005550003", "SignIn");
        let scripted = TestJob::new(&number(), "SignIn");
        bed.twilio.script(&scripted.to, [Reply::error(400, 21610)]);
        bed.publish(&geo).await;
        bed.publish(&scripted).await;
        let dead = bed.dead_letters(2, SECS).await;
        for (job, code) in [(&geo, 21408), (&scripted, 21610)] {
            let d = dead
                .iter()
                .find(|d| d.json()["id"] == job.id)
                .expect("the job's dead letter");
            assert_eq!(d.header_str("x-sms-reason").as_deref(), Some("rejected"));
            assert_eq!(d.header_i64("x-sms-twilio-code"), Some(code));
            assert_eq!(d.header_i64("x-sms-attempts"), Some(1));
            let error = d.header_str("x-sms-error").unwrap();
            assert!(error.contains(&code.to_string()), "{error}");
            assert!(
                !error.contains(job.to.trim_start_matches('+')),
                "no number in {error}"
            );
            assert_eq!(d.body, job.body(), "the body is unchanged");
            assert_eq!(
                d.properties.message_id().as_ref().map(|m| m.as_str()),
                Some(job.id.as_str()),
                "the properties are kept"
            );
            let calls = bed
                .twilio
                .requests()
                .iter()
                .filter(|r| r.to() == job.to)
                .count();
            assert_eq!(calls, 1, "a permanent error is tried exactly once");
        }
        bed.wait_drained(SECS).await;
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_jobs_are_dead_lettered_with_a_reason_and_the_worker_carries_on() {
    within(60, async {
        let bed = TestBed::start(ConfigFile::full()).await;

        let big = format!(
            r#"{{"to":"+15005550006","type":"SignIn","payload":{{"code":"1","pad":"{}"}}}}"#,
            "x".repeat(9000)
        );
        let malformed: Vec<(&str, Vec<u8>, &str)> = vec![
            ("not-json", b"hello, world".to_vec(), "not JSON"),
            ("too-big", big.into_bytes(), "8192"),
            ("array", b"[1,2,3]".to_vec(), "JSON object"),
            ("bad-number", br#"{"to":"+0123","type":"SignIn","payload":{"code":"1"}}"#.to_vec(), "`to`"),
            ("bad-type", br#"{"to":"+15005550006","type":"Login","payload":{"code":"1"}}"#.to_vec(), "`type`"),
            ("no-payload", br#"{"to":"+15005550006","type":"SignIn"}"#.to_vec(), "`payload`"),
            ("no-code", br#"{"to":"+15005550006","type":"SignIn","payload":{}}"#.to_vec(), "payload.code"),
            ("bad-expiry", br#"{"to":"+15005550006","type":"SignIn","payload":{"code":"1"},"expires_at":"soon"}"#.to_vec(), "expires_at"),
            ("binary", vec![0xff, 0xfe, 0x00, 0x80], "not JSON"),
        ];
        for (id, body, _) in &malformed {
            publish_raw(
                &bed.channel,
                body,
                BasicProperties::default().with_message_id((*id).into()),
            )
            .await;
        }
        // A good job after the bad ones is still sent.
        let good = TestJob::new(&number(), "SignIn");
        bed.publish(&good).await;

        let dead = bed.dead_letters(9, SECS).await;
        assert_eq!(dead.len(), malformed.len());
        for (id, body, expected) in &malformed {
            let d = dead
                .iter()
                .find(|d| d.properties.message_id().as_ref().map(|m| m.as_str()) == Some(*id))
                .unwrap_or_else(|| panic!("no dead letter for {id}"));
            assert_eq!(d.header_str("x-sms-reason").as_deref(), Some("invalid_job"), "{id}");
            let error = d.header_str("x-sms-error").unwrap();
            assert!(error.contains(expected), "{id}: {error:?} lacks {expected:?}");
            assert_eq!(&d.body, body, "{id}: body unchanged");
        }
        bed.twilio
            .wait_until(SECS, "the good job sent", |r| r.iter().any(|r| r.to() == good.to))
            .await;
        assert_eq!(bed.twilio.request_count(), 1, "no malformed job reached Twilio");
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_error_succeeds_on_retry() {
    within(60, async {
        let bed = TestBed::start(ConfigFile::full()).await;
        let flaky = TestJob::new(&number(), "SignIn");
        let proxy = TestJob::new(&number(), "Register");
        let dropped = TestJob::new(&number(), "ForgotPassword");
        bed.twilio.script(&flaky.to, [Reply::server_error(503)]);
        bed.twilio.script(&proxy.to, [Reply::html(502)]);
        bed.twilio.script(&dropped.to, [Reply::hang_up()]);
        for job in [&flaky, &proxy, &dropped] {
            bed.publish(job).await;
        }
        let seen = bed
            .twilio
            .wait_until(SECS, "each job answered 201 after one failure", |r| {
                r.iter().filter(|r| r.status == 201).count() == 3
            })
            .await;
        for job in [&flaky, &proxy, &dropped] {
            let calls: Vec<_> = seen.iter().filter(|r| r.to() == job.to).collect();
            assert_eq!(calls.len(), 2, "one failure, one success");
            assert_eq!(calls[1].status, 201);
        }
        bed.wait_drained(SECS).await;
        assert_eq!(ready(&bed.channel, "sms.dead").await, 0);
        let logs = bed.worker.finish().await;
        let retries = logs.iter().filter(|l| l["outcome"] == "retry").count();
        assert_eq!(retries, 3, "one retry line per failure");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keeps_a_prefetch_worth_of_slow_calls_in_flight() {
    within(120, async {
        let twilio = FakeTwilio::start().await;
        twilio.set_latency(Duration::from_millis(200));
        // Every call is held until the test has seen how many the worker
        // keeps in flight: that follows from the prefetch, not from how fast
        // this machine lets the worker read and send.
        twilio.hold();
        let bed = TestBed::start_with(ConfigFile::patient(), twilio, |o| o.prefetch = 100).await;
        let jobs: Vec<TestJob> = (0..400)
            .map(|_| TestJob::new(&number(), "SignIn"))
            .collect();
        for job in &jobs {
            bed.publish(job).await;
        }
        let held = bed
            .twilio
            .wait_held(100, Duration::from_secs(60), "a prefetch worth of calls")
            .await;
        assert_eq!(held, 100, "as many calls in flight as the prefetch");
        assert_eq!(
            ready(&bed.channel, "sms.send").await,
            300,
            "the broker keeps the rest until the worker acks"
        );
        bed.twilio.release();
        bed.twilio
            .wait_until(Duration::from_secs(60), "every job sent", |r| {
                r.iter().filter(|r| r.status == 201).count() >= jobs.len()
            })
            .await;
        let max = bed.twilio.max_in_flight();
        println!("max Twilio calls in flight: {max} (prefetch 100)");
        assert!(
            max >= 90,
            "only {max} calls in flight with a prefetch of 100"
        );
        assert!(
            max <= 100,
            "{max} calls in flight exceed the prefetch of 100"
        );
        assert_eq!(bed.twilio.request_count(), jobs.len(), "each job sent once");
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_renders_and_logs_masked_without_calling_twilio() {
    within(60, async {
        let twilio = FakeTwilio::start().await;
        let mut bed = TestBed::start_with(ConfigFile::full(), twilio, |o| {
            o.args = vec!["--dry-run"];
        })
        .await;
        let job = TestJob::new(&number(), "SignIn");
        bed.publish(&job).await;
        let line = bed
            .worker
            .wait_log(SECS, "the dry-run line", |l| {
                (l["message"] == "dry run: not calling Twilio").then(|| l.clone())
            })
            .await;
        assert_eq!(line["body"], "Your sign-in code is ******");
        assert!(line["span"]["to"].as_str().unwrap().contains("****"));
        bed.wait_drained(SECS).await;
        assert_eq!(bed.twilio.request_count(), 0);
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bare_403_from_an_edge_pauses_and_dead_letters_nothing() {
    within(120, async {
        // An edge in front of Twilio (a proxy, a WAF) refusing with a status
        // and no body: every job would hit it, so it is an account-level
        // fault, not a reason to dead-letter the queue.
        let twilio = FakeTwilio::start().await;
        twilio.set_default(Reply::bare(403));
        let bed = TestBed::start_with(ConfigFile::full(), twilio, |o| o.prefetch = 4).await;
        let jobs: Vec<TestJob> = (0..5).map(|_| TestJob::new(&number(), "SignIn")).collect();
        for job in &jobs {
            bed.publish(job).await;
        }
        let body = eventually(SECS, "/readyz to report the pause", || async {
            let (status, body) = bed.worker.readyz().await;
            (status == 503 && body["reason"] == "paused").then_some(body)
        })
        .await;
        let detail = body["detail"].as_str().unwrap_or("");
        assert!(
            detail.contains("403") && detail.contains("empty body"),
            "{body}"
        );
        assert_eq!(ready(&bed.channel, "sms.dead").await, 0);
        bed.twilio.set_default(Reply::created());
        bed.twilio
            .wait_until(Duration::from_secs(90), "every job sent", |r| {
                r.iter().filter(|r| r.status == 201).count() >= jobs.len()
            })
            .await;
        bed.wait_drained(SECS).await;
        assert_eq!(ready(&bed.channel, "sms.dead").await, 0);
        bed.worker.finish().await;
    })
    .await;
}
