//! Abuse limits against the real broker and the real Redis: a pumping wave
//! into one premium range is capped at its country's budget while every
//! legitimate sign-in elsewhere goes out, across two workers; two workers
//! share one per-number limit; the ingest refuses with 429 and publishes
//! nothing; refused jobs wait in `sms.blocked`, where `dlq list --blocked`
//! shows the rule.

use std::time::Duration;

use crate::support::*;
use lapin::BasicProperties;
use serde_json::{Value, json};

const SECS: Duration = Duration::from_secs(90);

/// A worker on `vhost` with these limits, sharing `prefix` in the Redis.
fn limited<'a>(
    vhost: &'a Vhost,
    config: &'a ConfigFile,
    twilio: &'a FakeTwilio,
    prefix: &str,
    limits: &[(&'a str, &str)],
) -> WorkerOptions<'a> {
    let mut o = WorkerOptions::new(&vhost.url, config, twilio);
    o.env.push((
        "SMS_DISPATCH_REDIS_URL",
        "redis://127.0.0.1:6379/0".to_owned(),
    ));
    o.env.push(("SMS_DISPATCH_REDIS_PREFIX", prefix.to_owned()));
    for (k, v) in limits {
        o.env.push((k, (*v).to_owned()));
    }
    o
}

fn prefix() -> String {
    format!("sms-dispatch-test-{:016x}:", fastrand::u64(..))
}

/// A job body as Logto's connector sends it, with the end user's IP.
fn job(to: &str, ip: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "to": to,
        "type": "SignIn",
        "payload": {"code": crate::support::code()},
        "ip": ip,
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pumping_wave_is_capped_at_its_budget_and_every_real_sign_in_goes_out() {
    within(240, async {
        let vhost = Vhost::create();
        let config = ConfigFile::full();
        let twilio = FakeTwilio::start().await;
        let prefix = prefix();
        let limits = [
            ("SMS_DISPATCH_COUNTRY_BUDGET_PER_HOUR", "60"),
            ("SMS_DISPATCH_LIMIT_PER_NUMBER", "5/10m,10/1d"),
            ("SMS_DISPATCH_LIMIT_PER_IP", "30/10m,200/1d"),
        ];
        let first =
            WorkerProcess::start_ready(limited(&vhost, &config, &twilio, &prefix, &limits)).await;
        let second =
            WorkerProcess::start_ready(limited(&vhost, &config, &twilio, &prefix, &limits)).await;
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();

        // 1,000 requests to sequential numbers in one Jamaican range, from
        // 100 rotating IPs; mixed in, 100 sign-ins to five other countries.
        let legit_prefixes = ["+8190123", "+4930123", "+3314523", "+4420794", "+1415555"];
        let mut legit = Vec::new();
        for i in 0..1_000usize {
            let to = format!("+1876555{i:04}");
            publish_raw(
                &channel,
                &job(&to, &format!("198.51.100.{}", i % 100)),
                BasicProperties::default(),
            )
            .await;
            if i.is_multiple_of(10) {
                let n = i / 10;
                let to = format!("{}{n:04}", legit_prefixes[n % legit_prefixes.len()]);
                publish_raw(
                    &channel,
                    &job(&to, &format!("203.0.113.{}", n % 250)),
                    BasicProperties::default(),
                )
                .await;
                legit.push(to);
            }
        }
        let blocked = take_at_least(&channel, "sms.blocked", 940, Duration::from_secs(180)).await;
        for worker in [&first, &second] {
            wait_drained(&channel, worker, SECS).await;
        }
        let accepted = twilio.accepted();
        for to in &legit {
            assert!(
                accepted.iter().any(|r| r.to() == to),
                "a legitimate sign-in to {to} was not sent"
            );
        }
        let pumped = accepted.iter().filter(|r| r.to().starts_with("+1876")).count();
        println!(
            "pumping wave: {pumped} of 1000 sent (budget 60 segments an hour), {} blocked; 100 of 100 legitimate sent",
            blocked.len()
        );
        assert_eq!(pumped, 60, "the range is capped at its budget across both workers");
        assert_eq!(blocked.len(), 940);
        assert!(blocked.iter().all(|b| {
            b.header_str("x-sms-reason").as_deref() == Some("blocked")
                && b.header_str("x-sms-error").as_deref() == Some("country_budget")
        }));
        let mut counted = 0.0;
        for worker in [&first, &second] {
            counted += metric(
                &worker.metrics().await,
                "sms_blocked_total",
                "rule=\"country_budget\"",
            )
            .unwrap_or(0.0);
        }
        assert_eq!(counted, 940.0);
        first.finish().await;
        second.finish().await;
    })
    .await;
}

/// Waits until `sms.blocked` holds `n` jobs (without taking them).
async fn take_blocked_count(channel: &lapin::Channel, n: u32) {
    eventually(SECS, "the refused jobs in sms.blocked", || async {
        (ready(channel, "sms.blocked").await >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_share_one_per_number_limit_and_dlq_list_blocked_shows_the_rule() {
    within(120, async {
        let vhost = Vhost::create();
        let config = ConfigFile::full();
        let twilio = FakeTwilio::start().await;
        let prefix = prefix();
        let limits = [("SMS_DISPATCH_LIMIT_PER_NUMBER", "3/10m")];
        let first =
            WorkerProcess::start_ready(limited(&vhost, &config, &twilio, &prefix, &limits)).await;
        let second =
            WorkerProcess::start_ready(limited(&vhost, &config, &twilio, &prefix, &limits)).await;
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        let to = number();
        for i in 0..8 {
            publish_raw(
                &channel,
                &job(&to, &format!("203.0.113.{i}")),
                BasicProperties::default(),
            )
            .await;
        }
        // Every job settled: three sent, five blocked (checked before the
        // queue is called drained, which it also is before the first
        // delivery).
        take_blocked_count(&channel, 5).await;
        for worker in [&first, &second] {
            wait_drained(&channel, worker, SECS).await;
        }
        assert_eq!(twilio.accepted().len(), 3, "one limit for the fleet");
        let url = vhost.url.clone();
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            run_cli(
                &["dlq", "list", "--blocked", "--json"],
                &[("SMS_DISPATCH_AMQP_URL", &url)],
            )
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "{err}");
        let listed: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(listed.len(), 5, "{out}");
        assert!(
            listed
                .iter()
                .all(|l| l["reason"] == "blocked" && l["error"] == "per_number"),
            "{out}"
        );
        assert!(!out.contains(&to[3..]), "never the number: {out}");
        first.finish().await;
        second.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ingest_answers_429_and_publishes_nothing() {
    within(120, async {
        let vhost = Vhost::create();
        let config = ConfigFile::full();
        let twilio = FakeTwilio::start().await;
        let prefix = prefix();
        let mut options = limited(
            &vhost,
            &config,
            &twilio,
            &prefix,
            &[("SMS_DISPATCH_LIMIT_PER_NUMBER", "2/10m")],
        );
        options
            .env
            .push(("SMS_DISPATCH_INGEST_TOKEN", "limits-test-token".to_owned()));
        let worker = WorkerProcess::start_ready(options).await;
        let to = number();
        let client = reqwest::Client::new();
        let mut statuses = Vec::new();
        let mut last = Value::Null;
        for _ in 0..3 {
            let response = client
                .post(format!("http://{}/v1/send", worker.http))
                .header("Authorization", "Bearer limits-test-token")
                .json(&json!({"to": to, "type": "SignIn", "payload": {"code": crate::support::code()}, "ip": "203.0.113.7"}))
                .send()
                .await
                .unwrap();
            statuses.push(response.status().as_u16());
            last = response.json().await.unwrap_or(Value::Null);
        }
        assert_eq!(statuses, [202, 202, 429], "{last}");
        assert_eq!(last["rule"], "per_number");
        assert!(last["error"].as_str().is_some_and(|e| !e.is_empty()));
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        wait_drained(&channel, &worker, SECS).await;
        assert_eq!(twilio.accepted().len(), 2, "the refused job was never published");
        assert_eq!(ready(&channel, "sms.blocked").await, 0);
        // The admitted jobs were not counted a second time by the worker.
        assert_eq!(
            metric(&worker.metrics().await, "sms_blocked_total", "rule=\"per_number\""),
            Some(1.0)
        );
        worker.finish().await;
    })
    .await;
}
