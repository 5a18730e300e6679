//! Outcome events against a real broker: a service bound to `sms.events`
//! learns each job's outcome once, routed by its source (the job's
//! `app_id`), with the number masked and no code in it.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;

const SECS: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn each_outcome_is_one_event_routed_by_its_source() {
    within(120, async {
        let bed = TestBed::start(ConfigFile::full()).await;
        let sent_q = bind_events(&bed.channel, "default.sent").await;
        let dead_q = bind_events(&bed.channel, "default.dead_lettered.*").await;
        let billing_q = bind_events(&bed.channel, "billing.#").await;

        let plain: Vec<TestJob> = (0..3).map(|_| TestJob::new(&number(), "SignIn")).collect();
        for job in &plain {
            bed.publish(job).await;
        }
        let refused = TestJob::new(&number(), "SignIn");
        bed.twilio.script(&refused.to, [Reply::error(400, 21211)]);
        bed.publish(&refused).await;
        // A job from another service names itself in app_id.
        let billing = TestJob::new(&number(), "SignIn");
        publish_from(&bed.channel, &billing, "billing").await;

        let sent = take_at_least(&bed.channel, &sent_q, 3, SECS).await;
        let dead = take_at_least(&bed.channel, &dead_q, 1, SECS).await;
        let theirs = take_at_least(&bed.channel, &billing_q, 1, SECS).await;
        bed.wait_drained(SECS).await;

        let mut ids: Vec<String> = sent
            .iter()
            .map(|e| e.json()["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        let mut expected: Vec<String> = plain.iter().map(|j| j.id.clone()).collect();
        expected.sort();
        assert_eq!(ids, expected, "one sent event per sent job");
        for event in &sent {
            let body = event.json();
            assert_eq!(body["outcome"], "sent");
            assert!(body["message_sid"].as_str().unwrap().starts_with("SM"));
            assert_eq!(body["type"], "SignIn");
            assert!(body["to"].as_str().unwrap().contains('*'), "masked: {body}");
            assert!(body["at"].is_string() && body["attempts"] == 1, "{body}");
        }
        let dead = dead[0].json();
        assert_eq!(dead["id"], refused.id.as_str());
        assert_eq!(dead["outcome"], "dead_lettered");
        assert_eq!(dead["reason"], "rejected");
        assert_eq!(dead["twilio_code"], 21211);
        assert_eq!(theirs.len(), 1);
        assert_eq!(theirs[0].json()["id"], billing.id.as_str());
        // Nothing else was published under those keys, and no event carries
        // a code or a full number (the log scan checks the worker's side).
        assert_eq!(ready(&bed.channel, &sent_q).await, 0);
        for event in sent.iter().chain(theirs.iter()) {
            let text = String::from_utf8_lossy(&event.body).into_owned();
            for job in plain.iter().chain([&billing]) {
                assert!(!text.contains(&job.code), "a code in an event: {text}");
                assert!(!text.contains(&job.to[3..]), "a number in an event: {text}");
            }
        }
        assert_eq!(
            metric(
                &bed.worker.metrics().await,
                "sms_events_published_total",
                "outcome=\"sent\""
            ),
            Some(4.0)
        );
        bed.worker.finish().await;
    })
    .await;
}

/// The subscriber example a service team copies
/// (`examples/outcomes/subscribe.py`, with `pika`), run as it is against a
/// real worker: it binds only its own source, handles a repeated event once,
/// acks what it handled, and prints the job's `sent` event as one JSON line
/// with the number masked and no code.
#[tokio::test(flavor = "multi_thread")]
async fn the_python_subscriber_example_prints_each_outcome_once() {
    within(120, async {
        require_pika();
        let bed = TestBed::start(ConfigFile::full()).await;
        let mut subscriber = Subscriber::start(&bed.vhost.url, "default", 2);
        subscriber.wait_ready(SECS).await;

        // An event repeated (as a redelivery repeats one): handled once.
        let repeated = serde_json::json!({
            "id": "an-earlier-job", "type": "SignIn", "to": "+81*******00",
            "outcome": "sent", "message_sid": "SM00", "attempts": 1,
            "at": "2025-01-01T00:00:00Z",
        });
        for _ in 0..2 {
            bed.publisher
                .channel()
                .basic_publish(
                    "sms.events".into(),
                    "default.sent".into(),
                    BasicPublishOptions::default(),
                    repeated.to_string().as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
        // Another service's job, its event published first: never routed here.
        let theirs = TestJob::new(&number(), "SignIn");
        publish_from(&bed.channel, &theirs, "billing").await;
        eventually(SECS, "billing's sent event", || async {
            let text = bed.worker.metrics().await;
            (metric(&text, "sms_events_published_total", "outcome=\"sent\"") == Some(1.0))
                .then_some(())
        })
        .await;
        let job = TestJob::new(&number(), "SignIn");
        bed.publish(&job).await;

        // It stops by itself after two distinct events.
        let printed = subscriber.wait_exit(SECS).await;
        assert_eq!(printed.len(), 2, "one line per distinct event: {printed:?}");
        let events: Vec<serde_json::Value> = printed
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(events[0], repeated);
        let sent = &events[1];
        assert_eq!(sent["id"], job.id.as_str(), "{sent}");
        assert_eq!(sent["outcome"], "sent");
        assert_eq!(sent["type"], "SignIn");
        assert!(sent["message_sid"].as_str().unwrap().starts_with("SM"));
        let to = sent["to"].as_str().unwrap();
        assert!(
            to.contains('*') && !to.contains(&job.to[3..]),
            "masked: {to}"
        );
        assert!(
            !printed[1].contains(&job.code),
            "a code in an event: {sent}"
        );
        // Its durable queue holds nothing more: every event was acked.
        assert_eq!(ready(&bed.channel, "default.sms-outcomes").await, 0);
        bed.worker.finish().await;
    })
    .await;
}

/// Fails the test, saying what to do, when `python3` cannot import `pika`:
/// the example's test must not pass by not running.
fn require_pika() {
    let out = Command::new("python3")
        .args(["-c", "import pika"])
        .output()
        .unwrap_or_else(|e| panic!("python3 does not run ({e}); the pika example's test needs it"));
    assert!(
        out.status.success(),
        "python3 cannot import pika, which examples/outcomes/subscribe.py needs: \
         `python3 -m pip install pika` (.ci/run installs it when missing)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `examples/outcomes/subscribe.py` as a child process, its output captured;
/// killed on drop.
struct Subscriber {
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    fn start(url: &str, source: &str, count: usize) -> Subscriber {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/outcomes/subscribe.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--url", url, "--source", source])
            .args(["--count", &count.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs the example");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::clone(&out);
        let mut readers = vec![std::thread::spawn(move || read_lines(stdout, &lines))];
        let lines = Arc::clone(&err);
        readers.push(std::thread::spawn(move || read_lines(stderr, &lines)));
        Subscriber {
            child,
            out,
            err,
            readers,
        }
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().join("\n")
    }

    /// Waits for the `ready` line it prints once its queue is bound.
    async fn wait_ready(&mut self, deadline: Duration) {
        eventually(deadline, "the subscriber to say ready", || {
            let ready = self.err.lock().unwrap().iter().any(|l| l == "ready");
            if !ready && let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the subscriber exited ({status}) before it was ready:\n{}",
                    self.stderr()
                );
            }
            std::future::ready(ready.then_some(()))
        })
        .await;
    }

    /// Waits for it to exit with success, and returns what it printed.
    async fn wait_exit(&mut self, deadline: Duration) -> Vec<String> {
        let status = eventually(deadline, "the subscriber to exit", || {
            std::future::ready(self.child.try_wait().unwrap())
        })
        .await;
        // Its pipes closed with it: read everything it wrote.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        assert!(
            status.success(),
            "the subscriber exited with {status}:\n{}",
            self.stderr()
        );
        self.out.lock().unwrap().clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
