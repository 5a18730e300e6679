//! Reconciliation against Twilio's message list, with the real broker and a
//! fake Twilio that lists what it created: a call that created the message
//! and then failed (a 5xx, an answer after the worker's timeout, a worker
//! killed mid-call) is found instead of sent again; a message listed only
//! after a moment is still found; a list that cannot be read leads to a
//! send; a lookalike created before the first attempt is not taken for the
//! job's.

use std::time::{Duration, SystemTime};

use crate::support::*;

const SECS: Duration = Duration::from_secs(60);

/// What the full config's SignIn template makes of `job`.
fn sign_in_text(job: &TestJob) -> String {
    format!("Your sign-in code is {}", job.code)
}

async fn reconciled(worker: &WorkerProcess, result: &str) -> Option<f64> {
    metric(
        &worker.metrics().await,
        "sms_reconciled_total",
        &format!("result=\"{result}\""),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_500_after_creating_is_found_not_sent_again() {
    within(120, async {
        let bed = TestBed::start(ConfigFile::full()).await;
        // Twilio lists a new message only after a moment.
        bed.twilio.set_listing_delay(Duration::from_secs(3));
        let job = TestJob::new(&number(), "SignIn");
        bed.twilio.script(&job.to, [Reply::created_then_error(500)]);
        bed.publish(&job).await;
        eventually(SECS, "the job settled", || async {
            (reconciled(&bed.worker, "found").await == Some(1.0)).then_some(())
        })
        .await;
        bed.wait_drained(SECS).await;
        assert_eq!(bed.twilio.messages_to(&job.to), 1, "created once");
        assert_eq!(bed.twilio.request_count(), 1, "one create call");
        assert_eq!(ready(&bed.channel, "sms.dead").await, 0);
        let logs = bed.worker.finish().await;
        let line = logs
            .iter()
            .find(|l| l["outcome"] == "reconciled")
            .expect("a reconciled line");
        assert!(
            line["span"]["message_sid"]
                .as_str()
                .is_some_and(|s| s.starts_with("SM")),
            "{line}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_after_the_workers_timeout_is_found_not_sent_again() {
    within(120, async {
        let config = ConfigFile::write(
            "toml",
            &format!(
                r#"
[twilio]
account_sid = "{TEST_ACCOUNT_SID}"
auth_token = "{TEST_AUTH_TOKEN}"
messaging_service_sid = "{TEST_MESSAGING_SERVICE_SID}"
request_timeout_ms = 1000

[[templates]]
type = "SignIn"
content = "Your sign-in code is {{{{code}}}}"
"#
            ),
        );
        let bed = TestBed::start(config).await;
        let job = TestJob::new(&number(), "SignIn");
        // Twilio creates the message, but answers after the worker gave up.
        bed.twilio.script(
            &job.to,
            [Reply::created().with_latency(Duration::from_secs(3))],
        );
        bed.publish(&job).await;
        eventually(SECS, "the job settled", || async {
            (reconciled(&bed.worker, "found").await == Some(1.0)).then_some(())
        })
        .await;
        bed.wait_drained(SECS).await;
        assert_eq!(bed.twilio.messages_to(&job.to), 1, "created once");
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_that_cannot_be_read_leads_to_a_send() {
    within(120, async {
        let bed = TestBed::start(ConfigFile::full()).await;
        bed.twilio.set_list_reply(Some(Reply::server_error(500)));
        let job = TestJob::new(&number(), "SignIn");
        bed.twilio.script(&job.to, [Reply::created_then_error(500)]);
        bed.publish(&job).await;
        bed.twilio
            .wait_until(SECS, "the job sent again", |r| {
                r.iter().any(|r| r.to() == job.to && r.status == 201)
            })
            .await;
        bed.wait_drained(SECS).await;
        // A possible duplicate beats a locked-out user.
        assert_eq!(bed.twilio.messages_to(&job.to), 2);
        assert_eq!(reconciled(&bed.worker, "failed").await, Some(1.0));
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lookalike_created_before_the_first_attempt_is_not_the_jobs() {
    within(120, async {
        let bed = TestBed::start(ConfigFile::full()).await;
        let job = TestJob::new(&number(), "SignIn");
        // The same text to the same number from the same sender, five
        // minutes ago (an earlier sign-in that happened to draw the same
        // code).
        bed.twilio.inject_message(
            &job.to,
            Some(TEST_MESSAGING_SERVICE_SID),
            None,
            &sign_in_text(&job),
            SystemTime::now() - Duration::from_secs(300),
        );
        // The first call fails without creating anything.
        bed.twilio.script(&job.to, [Reply::server_error(503)]);
        bed.publish(&job).await;
        eventually(SECS, "the job reconciled", || async {
            (reconciled(&bed.worker, "not_found").await == Some(1.0)).then_some(())
        })
        .await;
        bed.twilio
            .wait_until(SECS, "the job sent", |r| {
                r.iter().any(|r| r.to() == job.to && r.status == 201)
            })
            .await;
        bed.wait_drained(SECS).await;
        assert_eq!(
            bed.twilio.messages_to(&job.to),
            2,
            "the old one and the job's"
        );
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_never_tried_is_never_reconciled() {
    within(60, async {
        let bed = TestBed::start(ConfigFile::full()).await;
        let jobs: Vec<TestJob> = (0..20).map(|_| TestJob::new(&number(), "SignIn")).collect();
        for job in &jobs {
            bed.publish(job).await;
        }
        bed.twilio
            .wait_until(SECS, "every job sent", |r| {
                r.iter().filter(|r| r.status == 201).count() >= jobs.len()
            })
            .await;
        bed.wait_drained(SECS).await;
        assert_eq!(bed.twilio.list_calls(), 0, "no list call for a clean send");
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_in_flight_when_their_worker_is_killed_reach_twilio_once() {
    within(180, async {
        let vhost = Vhost::create();
        let config = ConfigFile::full();
        let twilio = FakeTwilio::start().await;
        let prefix = format!("sms-dispatch-test-{:016x}:", fastrand::u64(..));
        let options = |twilio| {
            let mut o = WorkerOptions::new(&vhost.url, &config, twilio);
            o.env.push((
                "SMS_DISPATCH_REDIS_URL",
                "redis://127.0.0.1:6379/0".to_owned(),
            ));
            o.env.push(("SMS_DISPATCH_REDIS_PREFIX", prefix.clone()));
            o
        };
        let first = WorkerProcess::start_ready(options(&twilio)).await;
        let jobs: Vec<TestJob> = (0..5).map(|_| TestJob::new(&number(), "SignIn")).collect();
        // Every call reaches Twilio and waits there; then the worker dies.
        twilio.hold();
        vhost.publish_all(&jobs).await;
        twilio
            .wait_held(jobs.len(), SECS, "the calls in flight")
            .await;
        first.kill9();
        let mut first = first;
        first.wait_exit(SECS).await;
        // Twilio creates each message although nobody hears the answer.
        twilio.release();
        twilio
            .wait_until(SECS, "the held calls answered", |r| r.len() >= jobs.len())
            .await;
        let second = WorkerProcess::start_ready(options(&twilio)).await;
        eventually(Duration::from_secs(120), "every job settled", || async {
            (reconciled(&second, "found").await == Some(jobs.len() as f64)).then_some(())
        })
        .await;
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        wait_drained(&channel, &second, SECS).await;
        for job in &jobs {
            assert_eq!(twilio.messages_to(&job.to), 1, "{} created once", job.to);
        }
        second.finish().await;
    })
    .await;
}
