//! The worker under broker faults it cannot prevent, against a real broker:
//! a connection the broker closes while jobs wait on Twilio's Retry-After
//! sends each job once; an operator deleting `sms.dlx` does not stall dead
//! letters; a producer's per-message expiration never makes a dead letter
//! vanish; two dead letters of one job are replayed once; a memory alarm
//! blocks publishing but never the acks, and the ingest answers 503 when the
//! broker does not confirm a job within 5 s. (The ingest refusing a job that
//! has already expired is in `ingest.rs`.)

use std::time::{Duration, Instant, SystemTime};

use crate::support::*;
use lapin::BasicProperties;
use lapin::options::ExchangeDeleteOptions;
use serde_json::{Value, json};
use sms_dispatch::wire::{DeadLetter, Reason};

const SECS: Duration = Duration::from_secs(60);

/// Closes, from the broker's side, the worker's consuming connection on
/// `vhost` (the one named `sms-dispatch worker`).
fn close_consuming_connection(vhost: &Vhost) {
    let listing = rabbitmqctl(
        None,
        &[
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "vhost",
            "client_properties",
        ],
    );
    // The client properties carry lapin's connection name; the publishing
    // connection's is "sms-dispatch worker (publishing)".
    let name = listing
        .lines()
        .map(|l| l.splitn(3, '\t').collect::<Vec<_>>())
        .find(|cols| {
            cols.len() == 3 && cols[1] == vhost.name && cols[2].contains("sms-dispatch worker\"")
        })
        .map(|cols| cols[0].to_owned())
        .unwrap_or_else(|| {
            panic!(
                "no consuming worker connection on {}: {listing}",
                vhost.name
            )
        });
    rabbitmqctl(
        None,
        &["close_connection", &name, "test: closed by the broker"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_closed_while_jobs_wait_on_retry_after_sends_each_job_once() {
    within(180, async {
        let vhost = Vhost::create();
        let config = ConfigFile::full();
        let twilio = FakeTwilio::start().await;
        let worker =
            WorkerProcess::start_ready(WorkerOptions::new(&vhost.url, &config, &twilio)).await;
        let conn = vhost.connect().await;
        let publisher = vhost.publisher(&conn).await;
        let channel = conn.create_channel().await.unwrap();
        // The first job's 429 holds every call in the worker for 10 s: long
        // enough for the broker to close the connection and lapin to
        // recover it while the other jobs wait, whatever the machine's load.
        let first = TestJob::new(&number(), "SignIn");
        twilio.script(
            &first.to,
            [
                Reply::too_many_requests().with_retry_after("10"),
                Reply::created(),
            ],
        );
        publish(&publisher, &first).await;
        twilio
            .wait_until(SECS, "the 429", |r| r.iter().any(|r| r.status == 429))
            .await;
        // Fewer than the test worker's prefetch (16), so all are delivered.
        let held: Vec<TestJob> = (0..12).map(|_| TestJob::new(&number(), "SignIn")).collect();
        for job in &held {
            publish(&publisher, job).await;
        }
        eventually(SECS, "the 12 jobs held by the rate limit", || async {
            let in_flight = metric(&worker.metrics().await, "sms_in_flight", "");
            (in_flight == Some(12.0)).then_some(())
        })
        .await;
        assert_eq!(twilio.request_count(), 1, "nothing is sent while held");

        close_consuming_connection(&vhost);

        twilio
            .wait_until(Duration::from_secs(120), "every job sent", |r| {
                r.iter().filter(|r| r.status == 201).count() >= 13
            })
            .await;
        wait_drained(&channel, &worker, SECS).await;
        let accepted = twilio.accepted();
        for job in held.iter().chain([&first]) {
            let copies = accepted.iter().filter(|r| r.to() == job.to).count();
            assert_eq!(copies, 1, "{} was sent {copies} times", job.to);
        }
        assert_eq!(accepted.len(), 13);
        worker.finish().await;
    })
    .await;
}

/// A body the decoder refuses, so the worker dead-letters it at once.
fn invalid_body() -> Vec<u8> {
    serde_json::to_vec(&json!({"to": "not a number", "type": "SignIn", "payload": {"code": "1"}}))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_keep_flowing_after_an_operator_deletes_the_dead_letter_exchange() {
    within(120, async {
        let bed = TestBed::start(ConfigFile::full()).await;
        bed.channel
            .exchange_delete("sms.dlx".into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
        for _ in 0..3 {
            publish_raw(&bed.channel, &invalid_body(), BasicProperties::default()).await;
        }
        // The publish into the missing exchange closes the worker's
        // publishing channel; it must reopen it (declaring sms.dlx again)
        // rather than retry on a dead channel for ever.
        let dead = bed.dead_letters(3, SECS).await;
        assert!(
            dead.iter()
                .all(|d| d.header_str("x-sms-reason").as_deref() == Some("invalid_job"))
        );
        bed.wait_drained(SECS).await;
        let (status, ready) = bed.worker.readyz().await;
        assert_eq!(status, 200, "{ready}");
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_never_expires_even_when_the_producer_gave_the_job_a_ttl() {
    within(60, async {
        let bed = TestBed::start(ConfigFile::full()).await;
        let properties = BasicProperties::default()
            .with_expiration("600000".into())
            .with_message_id("expiring-job".into());
        publish_raw(&bed.channel, &invalid_body(), properties).await;
        let dead = bed.dead_letters(1, SECS).await;
        assert_eq!(dead[0].properties.expiration(), &None);
        assert_eq!(
            dead[0].properties.message_id().as_ref().map(|m| m.as_str()),
            Some("expiring-job"),
            "everything else is kept"
        );
        assert_eq!(dead[0].body, invalid_body());
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_dead_letters_of_one_job_are_replayed_once() {
    within(60, async {
        let vhost = Vhost::create();
        let conn = vhost.connect().await;
        let p = vhost.publisher(&conn).await;
        let job = TestJob::new(&number(), "SignIn");
        let other = TestJob::new(&number(), "SignIn");
        let original = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        for j in [&job, &job, &other] {
            let properties = DeadLetter {
                reason: Reason::RetriesExhausted,
                error: "HTTP 503: unavailable",
                attempts: 8,
                twilio_code: None,
                first_seen: SystemTime::now(),
            }
            .properties(&original);
            p.publish("sms.dlx", "send", &j.body(), properties)
                .await
                .unwrap();
        }
        let url = vhost.url.clone();
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            run_cli(
                &["dlq", "replay", "--all"],
                &[("SMS_DISPATCH_AMQP_URL", &url)],
            )
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("replayed 2 to sms/send"), "{out}");
        assert!(out.contains("removed 1 duplicate"), "{out}");
        let channel = conn.create_channel().await.unwrap();
        let sent: Vec<Value> = take_all(&channel, "sms.send")
            .await
            .iter()
            .map(Taken::json)
            .collect();
        let ids: Vec<&str> = sent.iter().filter_map(|j| j["id"].as_str()).collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert_eq!(ids.iter().filter(|i| **i == job.id).count(), 1, "{ids:?}");
        assert_eq!(ready(&channel, "sms.dead").await, 0);
    })
    .await;
}

/// Unacked messages in `queue` on `vhost`, as the broker counts them.
fn unacked(node: &str, vhost: &str, queue: &str) -> u64 {
    let listing = rabbitmqctl(
        Some(node),
        &[
            "list_queues",
            "-q",
            "--no-table-headers",
            "-p",
            vhost,
            "name",
            "messages_unacknowledged",
        ],
    );
    listing
        .lines()
        .find_map(|l| {
            let (name, n) = l.split_once('\t')?;
            (name == queue).then(|| n.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {queue} in {listing}"))
}

/// A broker node of the test's own (`name`, AMQP on `port`, distribution on
/// `port` + 20000), a vhost on it, and a ready worker there with `config` and
/// the ingest open to `token`.
async fn worker_on_a_node_of_its_own(
    name: &'static str,
    port: u16,
    config: &ConfigFile,
    token: &str,
) -> (BrokerNode, Vhost, FakeTwilio, WorkerProcess) {
    let node = tokio::task::spawn_blocking(move || BrokerNode::start(name, port, port + 20000))
        .await
        .unwrap();
    let vhost = node.vhost();
    let twilio = FakeTwilio::start().await;
    let mut options = WorkerOptions::new(&vhost.url, config, &twilio);
    options
        .env
        .push(("SMS_DISPATCH_INGEST_TOKEN", token.to_owned()));
    let worker = WorkerProcess::start_ready(options).await;
    (node, vhost, twilio, worker)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_alarm_blocks_publishing_but_never_the_acks() {
    within(240, async {
        let config = ConfigFile::full();
        let (node, vhost, twilio, worker) =
            worker_on_a_node_of_its_own("smsdispatch-alarm", 5699, &config, "alarm-test-token")
                .await;

        // Six jobs reach Twilio and wait at its gate: five it will accept,
        // one it refuses for good, which the worker must then dead-letter,
        // that is, publish while the alarm is on.
        twilio.hold();
        let refused = TestJob::new(&number(), "SignIn");
        twilio.script(
            &refused.to,
            [Reply::error(400, 21211), Reply::error(400, 21211)],
        );
        let accepted: Vec<TestJob> = (0..5).map(|_| TestJob::new(&number(), "SignIn")).collect();
        let mut all = accepted.clone();
        all.push(refused.clone());
        vhost.publish_all(&all).await;
        twilio.wait_held(6, SECS, "the six jobs at the gate").await;

        let alarm_node = node.node.clone();
        tokio::task::spawn_blocking(move || {
            rabbitmqctl(
                Some(&alarm_node),
                &["set_vm_memory_high_watermark", "absolute", "1"],
            )
        })
        .await
        .unwrap();
        twilio.release();

        // The dead letter's publish is blocked; the worker says so, and the
        // ingest answers at once instead of after a confirm timeout.
        let body = eventually(SECS, "/readyz to say blocked", || async {
            let (status, body) = worker.readyz().await;
            (status == 503 && body["reason"] == "blocked").then_some(body)
        })
        .await;
        assert!(body["detail"].as_str().unwrap_or("").contains("alarm"), "{body}");
        let started = std::time::Instant::now();
        let ingest = reqwest::Client::new()
            .post(format!("http://{}/v1/send", worker.http))
            .header("Authorization", "Bearer alarm-test-token")
            .json(&json!({"to": number(), "type": "SignIn", "payload": {"code": crate::support::code()}}))
            .send()
            .await
            .unwrap();
        assert_eq!(ingest.status(), 503);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "the ingest waited {:?} on a blocked broker",
            started.elapsed()
        );

        // The five sent jobs are acked while the alarm lasts: the consuming
        // connection never published, so the broker never blocked it.
        eventually(SECS, "the sent jobs acked during the alarm", || {
            let node_name = node.node.clone();
            let v = vhost.name.clone();
            async move {
                let n = tokio::task::spawn_blocking(move || unacked(&node_name, &v, "sms.send"))
                    .await
                    .unwrap();
                (n <= 1).then_some(())
            }
        })
        .await;
        assert_eq!(twilio.accepted().len(), 5);

        let clear_node = node.node.clone();
        tokio::task::spawn_blocking(move || {
            rabbitmqctl(Some(&clear_node), &["set_vm_memory_high_watermark", "0.4"])
        })
        .await
        .unwrap();
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        let dead = take_at_least(&channel, "sms.dead", 1, Duration::from_secs(90)).await;
        assert_eq!(dead[0].header_str("x-sms-reason").as_deref(), Some("rejected"));
        eventually(SECS, "/readyz ready again", || async {
            (worker.readyz().await.0 == 200).then_some(())
        })
        .await;
        worker.finish().await;
        drop(vhost);
        drop(node);
    })
    .await;
}

/// Whether `node` reports a resource alarm in effect.
fn alarm_in_effect(node: &str) -> bool {
    let clear = std::process::Command::new("rabbitmq-diagnostics")
        .args(["-q", "-n", node, "check_local_alarms"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("rabbitmq-diagnostics runs");
    !clear.success()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ingest_answers_503_when_the_broker_does_not_confirm_within_5_s() {
    within(240, async {
        let config = ConfigFile::full();
        let (node, vhost, _twilio, worker) = worker_on_a_node_of_its_own(
            "smsdispatch-confirm",
            5695,
            &config,
            "confirm-test-token",
        )
        .await;

        // The alarm goes up before the worker has published anything: the
        // broker blocks its publishing connection only at the first publish
        // (the ingest's), so the worker cannot know it in advance and the
        // publish waits for a confirm that does not come.
        let alarm_node = node.node.clone();
        tokio::task::spawn_blocking(move || {
            rabbitmqctl(
                Some(&alarm_node),
                &["set_vm_memory_high_watermark", "absolute", "1"],
            );
            let start = Instant::now();
            while !alarm_in_effect(&alarm_node) {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "no memory alarm on {alarm_node}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .await
        .unwrap();
        let (status, body) = worker.readyz().await;
        assert_eq!(status, 200, "nothing tells the worker yet: {body}");

        let started = Instant::now();
        let response = reqwest::Client::new()
            .post(format!("http://{}/v1/send", worker.http))
            .header("Authorization", "Bearer confirm-test-token")
            .timeout(Duration::from_secs(30))
            .json(&json!({"to": number(), "type": "SignIn", "payload": {"code": crate::support::code()}}))
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        println!("the ingest answered after {took:?} with no confirm");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 503, "{body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains("confirm"),
            "not the confirm timeout: {body}"
        );
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_secs(10),
            "answered after {took:?}; the confirm timeout is 5 s (a publish's own is 15 s)"
        );

        let clear_node = node.node.clone();
        tokio::task::spawn_blocking(move || {
            rabbitmqctl(Some(&clear_node), &["set_vm_memory_high_watermark", "0.4"])
        })
        .await
        .unwrap();
        worker.wait_ready(SECS).await;
        worker.finish().await;
        drop(vhost);
        drop(node);
    })
    .await;
}
