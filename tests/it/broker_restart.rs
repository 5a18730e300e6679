//! A broker restart mid-run, on a RabbitMQ node of the test's own: the worker
//! reports not ready while the broker is gone, recovers by itself, and every
//! job is sent, a redelivered one no more than once by this worker. A SIGTERM
//! during the outage stops it at once with exit 0; a broker that never
//! answers makes it exit 1 after the reconnect deadline.
//!
//! Outcome events already confirmed survive the restart, and jobs in flight
//! across it are sent once.
//!
//! Each test sets its own pace: the fake Twilio answers a set number of calls
//! and then holds the rest at its gate, so the broker always stops mid-run,
//! with a prefetch worth of calls in flight, however fast the machine.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::*;

const SECS: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_mid_run_loses_nothing() {
    within(240, async {
        let node = tokio::task::spawn_blocking(|| BrokerNode::start("smsdispatch-restart", 5698, 25698))
            .await
            .unwrap();
        let vhost = node.vhost();
        let twilio = FakeTwilio::start().await;
        twilio.set_latency(Duration::from_millis(100));
        let config = ConfigFile::patient();
        let prefetch: u16 = 32;
        let mut options = WorkerOptions::new(&vhost.url, &config, &twilio);
        options.prefetch = prefetch;
        options
            .env
            .push(("SMS_DISPATCH_INGEST_TOKEN", "restart-test-token".to_owned()));
        if let Ok(filter) = std::env::var("DEBUG_RUST_LOG") {
            options.env.push(("RUST_LOG", filter));
        }
        let worker = WorkerProcess::start_ready(options).await;
        let jobs: Vec<TestJob> = (0..1000).map(|_| TestJob::new(&number(), "SignIn")).collect();
        // 150 jobs go out, then the run stalls with a prefetch worth of calls
        // held in flight: the broker stops there, mid-run.
        let before_stop = 150;
        twilio.hold_after(before_stop);
        vhost.publish_all(&jobs).await;
        let held = twilio
            .wait_held(usize::from(prefetch), SECS, "a prefetch worth of calls in flight")
            .await;
        assert_eq!(held, usize::from(prefetch), "no more calls than the prefetch");
        assert_eq!(twilio.accepted().len(), before_stop);

        let stopping = {
            let node = node.node.clone();
            tokio::task::spawn_blocking(move || rabbitmqctl(Some(&node), &["stop_app"]))
        };
        let body = eventually(SECS, "/readyz to say disconnected", || async {
            let (status, body) = worker.readyz().await;
            (status == 503).then_some(body)
        })
        .await;
        assert_eq!(body["reason"], "disconnected");
        // Logto's HTTP connector is told at once that the job was not taken.
        let ingest = reqwest::Client::new()
            .post(format!("http://{}/v1/send", worker.http))
            .header("Authorization", "Bearer restart-test-token")
            .json(&serde_json::json!({"to": number(), "type": "SignIn", "payload": {"code": crate::support::code()}}))
            .send()
            .await
            .unwrap();
        assert_eq!(ingest.status(), 503);
        assert_eq!(metric(&worker.metrics().await, "sms_amqp_connected", ""), Some(0.0));
        // The calls in flight across the loss are answered now, with no
        // channel left to ack them on.
        twilio.release();
        stopping.await.unwrap();
        let sent_while_down = twilio.accepted().len();
        assert!(
            sent_while_down < jobs.len(),
            "the broker must stop mid-run; every job was already sent"
        );

        let node_name = node.node.clone();
        tokio::task::spawn_blocking(move || {
            rabbitmqctl(Some(&node_name), &["start_app"]);
        })
        .await
        .unwrap();
        node.wait_running(SECS);
        worker.wait_ready(SECS).await;
        assert_eq!(metric(&worker.metrics().await, "sms_amqp_connected", ""), Some(1.0));

        twilio
            .wait_until(Duration::from_secs(120), "every job sent", |r| {
                let mut sent: HashMap<&str, usize> = HashMap::new();
                for r in r.iter().filter(|r| r.status == 201) {
                    *sent.entry(r.to()).or_default() += 1;
                }
                jobs.iter().all(|j| sent.contains_key(j.to.as_str()))
            })
            .await;
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        wait_drained(&channel, &worker, SECS).await;
        assert_eq!(ready(&channel, "sms.dead").await, 0, "nothing dead-lettered");
        let total = twilio.accepted().len();
        let duplicates = total - jobs.len();
        println!(
            "broker stopped after {sent_while_down} of {} jobs: {duplicates} sent twice (prefetch {prefetch})",
            jobs.len()
        );
        assert!(duplicates <= usize::from(prefetch));
        let logs = worker.finish().await;
        assert!(logs.iter().any(|l| l["message"] == "broker connection lost; lapin is reconnecting"));
        // lapin's recovery, or the worker's own new connection when lapin
        // stalls (amqp-rs/lapin#450).
        assert!(logs.iter().any(|l| l["message"] == "broker connection re-established"
            || l["message"] == "consuming on a new broker connection"));
        drop(vhost);
        drop(node);
    })
    .await;
}

/// A broker down for longer than lapin gets to recover: the worker opens a
/// new connection itself, and the old one, if lapin brings it back later, is
/// closed so that no second consumer sits on the queue holding jobs.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_outage_ends_with_one_consumer_and_every_job_sent() {
    within(300, async {
        let node =
            tokio::task::spawn_blocking(|| BrokerNode::start("smsdispatch-outage", 5697, 25697))
                .await
                .unwrap();
        let vhost = node.vhost();
        let twilio = FakeTwilio::start().await;
        twilio.set_latency(Duration::from_millis(50));
        let config = ConfigFile::patient();
        let prefetch: u16 = 16;
        let mut options = WorkerOptions::new(&vhost.url, &config, &twilio);
        options.prefetch = prefetch;
        let mut worker = WorkerProcess::start_ready(options).await;
        let jobs: Vec<TestJob> = (0..300)
            .map(|_| TestJob::new(&number(), "SignIn"))
            .collect();
        // 60 jobs go out, then the run stalls with a prefetch worth of calls
        // held in flight, and the outage starts there.
        twilio.hold_after(60);
        vhost.publish_all(&jobs).await;
        twilio
            .wait_held(
                usize::from(prefetch),
                SECS,
                "a prefetch worth of calls in flight",
            )
            .await;
        let name = node.node.clone();
        tokio::task::spawn_blocking(move || rabbitmqctl(Some(&name), &["stop_app"]))
            .await
            .unwrap();
        twilio.release();
        worker
            .wait_log(SECS, "the worker to give up on lapin's recovery", |l| {
                (l["message"]
                    == "lapin did not recover the broker connection in time; opening a new one")
                    .then_some(())
            })
            .await;
        let name = node.node.clone();
        tokio::task::spawn_blocking(move || rabbitmqctl(Some(&name), &["start_app"]))
            .await
            .unwrap();
        node.wait_running(SECS);
        let restarted = std::time::Instant::now();
        twilio
            .wait_until(Duration::from_secs(120), "every job sent", |r| {
                let sent: std::collections::HashSet<&str> = r
                    .iter()
                    .filter(|r| r.status == 201)
                    .map(|r| r.to())
                    .collect();
                jobs.iter().all(|j| sent.contains(j.to.as_str()))
            })
            .await;
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        wait_drained(&channel, &worker, SECS).await;
        // lapin may still bring the abandoned connection back (it retries at
        // most about 5 s apart) unless its recovery stalled for good: watch
        // for it for 15 s, in which time the worker must close it.
        let came_back = "the abandoned broker connection came back; closing it";
        while restarted.elapsed() < Duration::from_secs(15)
            && !worker.json_logs().iter().any(|l| l["message"] == came_back)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // One consumer on sms.send: the old connection is not holding jobs.
        eventually(SECS, "exactly one consumer on sms.send", || {
            let out = rabbitmqctl(
                Some(&node.node),
                &[
                    "list_consumers",
                    "-p",
                    &vhost.name,
                    "--quiet",
                    "--no-table-headers",
                    "queue_name",
                ],
            );
            let n = out.lines().filter(|l| l.trim() == "sms.send").count();
            std::future::ready((n == 1).then_some(()))
        })
        .await;
        let duplicates = twilio.accepted().len() - jobs.len();
        println!("after a long outage: {duplicates} sent twice (prefetch {prefetch})");
        assert!(duplicates <= usize::from(prefetch));
        worker.finish().await;
        drop(vhost);
        drop(node);
    })
    .await;
}

/// Outcome events survive a restart of the broker (the node stopped
/// cleanly and started again on its data), and the restart sends no code
/// twice. A service's durable queue bound to `sms.events` still holds, after
/// the restart, the events confirmed before it; the jobs whose Twilio calls
/// were in flight across it (held at the fake's gate until the node is back)
/// are sent once; the jobs taken after it get their events too.
#[tokio::test(flavor = "multi_thread")]
async fn outcome_events_survive_a_broker_restart_without_a_second_sms() {
    within(300, async {
        let node =
            tokio::task::spawn_blocking(|| BrokerNode::start("smsdispatch-events", 5694, 25694))
                .await
                .unwrap();
        let vhost = node.vhost();
        let twilio = FakeTwilio::start().await;
        let config = ConfigFile::patient();
        let worker =
            WorkerProcess::start_ready(WorkerOptions::new(&vhost.url, &config, &twilio)).await;
        let queue = "service.sms-outcomes";
        {
            let conn = vhost.connect().await;
            let channel = conn.create_channel().await.unwrap();
            bind_to_events(&channel, queue, "#", true).await;
            let _ = conn.close(200, "bound".into()).await;
        }
        let sent_events = || async {
            metric(
                &worker.metrics().await,
                "sms_events_published_total",
                "outcome=\"sent\"",
            )
            .unwrap_or(0.0)
        };

        // Before the restart: sent, acked, their events confirmed.
        let before: Vec<TestJob> = (0..10).map(|_| TestJob::new(&number(), "SignIn")).collect();
        vhost.publish_all(&before).await;
        eventually(
            SECS,
            "the events of the jobs sent before the restart",
            || async { (sent_events().await == 10.0).then_some(()) },
        )
        .await;
        // Across it: their calls held at the gate until the node is back.
        twilio.hold();
        let across: Vec<TestJob> = (0..6).map(|_| TestJob::new(&number(), "SignIn")).collect();
        vhost.publish_all(&across).await;
        twilio
            .wait_held(across.len(), SECS, "the calls in flight across the restart")
            .await;

        tokio::task::block_in_place(|| node.stop());
        eventually(SECS, "/readyz to say disconnected", || async {
            let (status, body) = worker.readyz().await;
            (status == 503 && body["reason"] == "disconnected").then_some(())
        })
        .await;
        tokio::task::block_in_place(|| node.restart());
        worker.wait_ready(Duration::from_secs(120)).await;
        assert_eq!(
            vhost.ready(queue).await,
            10,
            "the events confirmed before the restart are still queued after it"
        );

        // The held calls are answered now: their deliveries died with the
        // old connection, and the copies the broker delivers again must not
        // be sent a second time.
        twilio.release();
        let after: Vec<TestJob> = (0..5).map(|_| TestJob::new(&number(), "SignIn")).collect();
        vhost.publish_all(&after).await;
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        let mut events: Vec<serde_json::Value> = Vec::new();
        let waiting = Instant::now();
        while !before
            .iter()
            .chain(&across)
            .chain(&after)
            .all(|j| events.iter().any(|e| e["id"] == j.id.as_str()))
        {
            assert!(
                waiting.elapsed() < SECS,
                "waited {SECS:?} for a sent event for every job; got {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            events.extend(take_all(&channel, queue).await.iter().map(Taken::json));
        }
        wait_drained(&channel, &worker, SECS).await;
        events.extend(take_all(&channel, queue).await.iter().map(Taken::json));

        // Twilio saw each job exactly once.
        let jobs: Vec<&TestJob> = before.iter().chain(&across).chain(&after).collect();
        let requests = twilio.requests();
        for job in &jobs {
            let calls = requests.iter().filter(|r| r.to() == job.to).count();
            assert_eq!(calls, 1, "job {} was sent {calls} times", job.id);
        }
        assert_eq!(requests.len(), jobs.len(), "no other call to Twilio");
        assert!(requests.iter().all(|r| r.status == 201));
        // One `sent` event for each job, including those whose 201 came
        // back to a connection the restart had closed: their ack was lost
        // with it, and the copy delivered again, acked as a duplicate
        // without a send, is told as `sent` then.
        for event in &events {
            assert_eq!(event["outcome"], "sent", "{event}");
            assert!(
                jobs.iter().any(|j| event["id"] == j.id.as_str()),
                "an event for no job of this test: {event}"
            );
        }
        let count = |job: &TestJob| events.iter().filter(|e| e["id"] == job.id.as_str()).count();
        for job in &jobs {
            assert_eq!(count(job), 1, "sent events for job {}", job.id);
        }
        let logs = worker.finish().await;
        assert!(
            logs.iter()
                .any(|l| l["message"] == "broker connection lost; lapin is reconnecting")
        );
        drop(conn);
        drop(vhost);
        drop(node);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_never_answers_ends_the_worker_with_exit_1_at_the_deadline() {
    within(90, async {
        let config = ConfigFile::full();
        let path = config.0.to_str().unwrap();
        let env = [
            ("SMS_DISPATCH_CONFIG", path),
            // Nothing listens on port 1: every connection is refused.
            (
                "SMS_DISPATCH_AMQP_URL",
                "amqp://guest:guest@127.0.0.1:1/%2f",
            ),
            ("SMS_DISPATCH_RECONNECT_DEADLINE_SECS", "5"),
            ("SMS_DISPATCH_HTTP_ADDR", "127.0.0.1:0"),
            ("SMS_DISPATCH_LOG_FORMAT", "json"),
        ];
        let started = Instant::now();
        // The command's own deadline (60 s) kills it if it keeps trying.
        let (exit, out, err) = run_cli_async(&["run"], &env, Io::default()).await;
        let took = started.elapsed();
        assert_eq!(exit, 1, "{out}{err}");
        assert!(
            err.contains("could not connect to the broker within 5 s"),
            "{err}"
        );
        assert!(
            took >= Duration::from_secs(5),
            "gave up after {took:?}, before its 5 s deadline"
        );
        assert!(
            took < Duration::from_secs(30),
            "took {took:?} to give up with a 5 s deadline"
        );
        let lines: Vec<String> = out.lines().map(str::to_owned).collect();
        let problems = scan_logs(&lines, true);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    })
    .await;
}

/// SIGTERM while the broker is down: the worker stops at once and exits 0,
/// both while lapin is still recovering the connection and once the worker
/// is opening a new one itself, instead of waiting for a broker that may not
/// come back (the reconnect deadline is 300 s).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_broker_outage_exits_0_at_once() {
    within(240, async {
        let node =
            tokio::task::spawn_blocking(|| BrokerNode::start("smsdispatch-down", 5696, 25696))
                .await
                .unwrap();
        let vhost = node.vhost();
        let twilio = FakeTwilio::start().await;
        let config = ConfigFile::full();
        let mut recovering =
            WorkerProcess::start_ready(WorkerOptions::new(&vhost.url, &config, &twilio)).await;
        let mut reconnecting =
            WorkerProcess::start_ready(WorkerOptions::new(&vhost.url, &config, &twilio)).await;
        let name = node.node.clone();
        tokio::task::spawn_blocking(move || rabbitmqctl(Some(&name), &["stop_app"]))
            .await
            .unwrap();

        // While lapin is recovering (before the 15 s the worker gives it).
        for worker in [&recovering, &reconnecting] {
            eventually(SECS, "/readyz to say disconnected", || async {
                let (status, body) = worker.readyz().await;
                (status == 503 && body["reason"] == "disconnected").then_some(())
            })
            .await;
        }
        let signalled = Instant::now();
        recovering.terminate();
        let status = recovering.wait_exit(SECS).await;
        let took = signalled.elapsed();
        assert!(status.success(), "exit status {status}");
        println!("stopped {took:?} after SIGTERM during lapin's recovery");
        assert!(
            took < Duration::from_secs(10),
            "{took:?} to stop during lapin's recovery"
        );

        // While the worker opens a new connection (after lapin's 15 s).
        reconnecting
            .wait_log(SECS, "the worker to open a new connection", |l| {
                (l["message"]
                    == "lapin did not recover the broker connection in time; opening a new one")
                    .then_some(())
            })
            .await;
        let signalled = Instant::now();
        reconnecting.terminate();
        let status = reconnecting.wait_exit(SECS).await;
        let took = signalled.elapsed();
        assert!(status.success(), "exit status {status}");
        println!("stopped {took:?} after SIGTERM while connecting anew");
        assert!(
            took < Duration::from_secs(10),
            "{took:?} to stop while connecting anew"
        );
        let logs = reconnecting.finish().await;
        assert!(
            logs.iter()
                .any(|l| l["message"] == "stopped during a broker outage"),
            "stopped where it was connecting"
        );
        recovering.finish().await;
        drop(vhost);
        drop(node);
    })
    .await;
}
