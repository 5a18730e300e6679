//! A broker restart mid-run, on a RabbitMQ node of the test's own: the worker
//! reports not ready while the broker is gone, recovers by itself, and every
//! job is sent, a redelivered one no more than once by this worker.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

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
        let config = ConfigFile::full();
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
        {
            let conn = vhost.connect().await;
            let publisher = vhost.publisher(&conn).await;
            for job in &jobs {
                publish(&publisher, job).await;
            }
            let _ = conn.close(200, "published".into()).await;
        }
        twilio
            .wait_until(SECS, "a quarter of the jobs sent", |r| {
                r.iter().filter(|r| r.status == 201).count() >= 150
            })
            .await;

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
            .json(&serde_json::json!({"to": number(), "type": "SignIn", "payload": {"code": support::code()}}))
            .send()
            .await
            .unwrap();
        assert_eq!(ingest.status(), 503);
        assert_eq!(metric(&worker.metrics().await, "sms_amqp_connected", ""), Some(0.0));
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
