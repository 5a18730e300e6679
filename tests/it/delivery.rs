//! Delivery guarantees against a real broker: retries survive restarts and
//! honour Retry-After (in the delay queue that fits it), stale codes are never
//! sent, account faults pause instead of dead-lettering, SIGTERM or SIGINT
//! finishes what is in flight, and a kill -9 loses nothing.
//!
//! Faults land where the test puts them: the fake Twilio holds calls at its
//! gate until the test has done what it must, instead of racing the machine.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::*;

const SECS: Duration = Duration::from_secs(30);

/// Counts the 201s per recipient.
fn accepted_per_number(twilio: &FakeTwilio) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in twilio.accepted() {
        *counts.entry(r.to().to_owned()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_errors_and_rate_limits_are_retried_never_before_retry_after() {
    within(120, async {
        let mut bed = TestBed::start(ConfigFile::full()).await;
        // Two 5xx in a row: retried in the process, then sent.
        let flaky = TestJob::new(&number(), "SignIn");
        bed.twilio.script(
            &flaky.to,
            [Reply::server_error(500), Reply::server_error(503)],
        );
        // A rate limit with Retry-After: 3 s is longer than the in-process
        // budget (2 s), so the job is parked in a delay queue.
        let limited = TestJob::new(&number(), "Register");
        bed.twilio.script(
            &limited.to,
            [Reply::too_many_requests().with_retry_after("3")],
        );
        bed.publish(&flaky).await;
        bed.publish(&limited).await;
        let first_429 = bed
            .twilio
            .wait_until(SECS, "the rate limit answered", |r| {
                r.iter().any(|r| r.to() == limited.to && r.status == 429)
            })
            .await
            .into_iter()
            .find(|r| r.status == 429)
            .unwrap();
        // Once the worker has taken the rate limit in (its log says so), the
        // whole worker slows down: a job published now waits too.
        bed.worker
            .wait_log(SECS, "the worker to slow down", |l| {
                (l["message"] == "rate limited by Twilio: fewer concurrent calls until it recovers")
                    .then_some(())
            })
            .await;
        let bystander = TestJob::new(&number(), "SignIn");
        bed.publish(&bystander).await;

        let seen = bed
            .twilio
            .wait_until(SECS, "every job sent", |r| {
                r.iter().filter(|r| r.status == 201).count() == 3
            })
            .await;
        let calls = |to: &str| -> Vec<&Received> { seen.iter().filter(|r| r.to() == to).collect() };
        assert_eq!(calls(&flaky.to).len(), 3, "two 5xx then a 201");
        let retried = calls(&limited.to);
        assert_eq!(retried.len(), 2, "one 429 then a 201");
        let waited = retried[1].at.duration_since(first_429.answered_at);
        assert!(
            waited >= Duration::from_secs(3),
            "retried {waited:?} after a 429 that said Retry-After: 3"
        );
        let bystander_at = calls(&bystander.to)[0].at;
        assert!(
            bystander_at.duration_since(first_429.answered_at) >= Duration::from_millis(2900),
            "a job published during the rate limit went out {:?} after it",
            bystander_at.duration_since(first_429.answered_at)
        );
        bed.wait_drained(SECS).await;
        assert_eq!(
            ready(&bed.channel, "sms.dead").await,
            0,
            "nothing dead-lettered"
        );

        let logs = bed.worker.finish().await;
        let parked = logs
            .iter()
            .find(|l| l["outcome"] == "retry" && l["queue"].is_string())
            .expect("the 429 was parked");
        assert_eq!(parked["span"]["job_id"], limited.id.as_str());
        assert_eq!(parked["queue"], "sms.retry.4s");
        assert_eq!(parked["twilio_code"], 20429);
        assert!(parked["delay_ms"].as_u64().unwrap() >= 3000);
        assert!(
            logs.iter().any(|l| l["message"]
                == "rate limited by Twilio: fewer concurrent calls until it recovers"),
            "the rate limit slowed the whole worker"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_are_counted_in_the_message_and_end_in_retries_exhausted() {
    within(60, async {
        let config = ConfigFile::full();
        let twilio = FakeTwilio::start().await;
        let bed = TestBed::start_with(config, twilio, |o| {
            o.env.push(("SMS_DISPATCH_MAX_ATTEMPTS", "3".to_owned()));
        })
        .await;
        let doomed = TestJob::new(&number(), "SignIn");
        bed.twilio.script(
            &doomed.to,
            [
                Reply::server_error(503),
                Reply::server_error(503),
                Reply::server_error(503),
                Reply::created(),
            ],
        );
        bed.publish(&doomed).await;
        let dead = bed.dead_letters(1, SECS).await;
        assert_eq!(
            dead[0].header_str("x-sms-reason").as_deref(),
            Some("retries_exhausted")
        );
        assert_eq!(dead[0].header_i64("x-sms-attempts"), Some(3));
        assert_eq!(dead[0].header_i64("x-sms-twilio-code"), Some(20503));
        assert_eq!(bed.twilio.request_count(), 3, "three attempts in all");
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_retry_survives_a_worker_crash_with_its_attempt_count() {
    within(120, async {
        let vhost = Vhost::create();
        let twilio = FakeTwilio::start().await;
        let config = ConfigFile::full();
        let job = TestJob::new(&number(), "SignIn");
        // 503 with Retry-After: 5 parks the job (sms.retry.8s).
        twilio.script(&job.to, [Reply::server_error(503).with_retry_after("5")]);
        let mut first =
            WorkerProcess::start_ready(WorkerOptions::new(&vhost.url, &config, &twilio)).await;
        let conn = vhost.connect().await;
        let publisher = vhost.publisher(&conn).await;
        publish(&publisher, &job).await;
        first
            .wait_log(SECS, "the job parked", |l| {
                (l["outcome"] == "retry" && l["queue"] == "sms.retry.8s").then_some(())
            })
            .await;
        first.kill9();
        first.wait_exit(SECS).await;
        assert_eq!(
            vhost.ready("sms.retry.8s").await,
            1,
            "the job waits in the broker"
        );

        let second =
            WorkerProcess::start_ready(WorkerOptions::new(&vhost.url, &config, &twilio)).await;
        let seen = twilio
            .wait_until(SECS, "the job sent by the new worker", |r| {
                r.iter().any(|r| r.status == 201)
            })
            .await;
        assert_eq!(seen.len(), 2);
        assert!(seen[1].at.duration_since(seen[0].answered_at) >= Duration::from_secs(5));
        let channel = conn.create_channel().await.unwrap();
        wait_drained(&channel, &second, SECS).await;
        let logs = second.finish().await;
        let sent = logs.iter().find(|l| l["outcome"] == "sent").unwrap();
        assert_eq!(sent["attempts"], 2, "the count came with the message");
        assert_eq!(sent["span"]["attempt"], 2);
        drop(first);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_beyond_8_s_waits_in_the_16_s_delay_queue() {
    within(90, async {
        let mut bed = TestBed::start(ConfigFile::full()).await;
        let job = TestJob::new(&number(), "SignIn");
        // 10 s: past the 8 s tier, so the job waits in sms.retry.16s with
        // its own 10 s as the message's TTL.
        bed.twilio
            .script(&job.to, [Reply::server_error(503).with_retry_after("10")]);
        bed.publish(&job).await;
        let parked = bed
            .worker
            .wait_log(SECS, "the job parked", |l| {
                (l["outcome"] == "retry" && l["queue"].is_string()).then(|| l.clone())
            })
            .await;
        assert_eq!(parked["queue"], "sms.retry.16s", "{parked}");
        assert_eq!(parked["span"]["job_id"], job.id.as_str());
        assert!(parked["delay_ms"].as_u64().unwrap() >= 10_000, "{parked}");
        assert_eq!(
            ready(&bed.channel, "sms.retry.16s").await,
            1,
            "the job waits in the 16 s delay queue"
        );
        assert_eq!(ready(&bed.channel, "sms.retry.8s").await, 0);
        let seen = bed
            .twilio
            .wait_until(SECS, "the job sent after its delay", |r| {
                r.iter().any(|r| r.status == 201)
            })
            .await;
        assert_eq!(seen.len(), 2, "one 503, then the 201");
        let waited = seen[1].at.duration_since(seen[0].answered_at);
        assert!(
            waited >= Duration::from_secs(10),
            "retried {waited:?} after a 503 that said Retry-After: 10"
        );
        bed.wait_drained(SECS).await;
        assert_eq!(ready(&bed.channel, "sms.retry.16s").await, 0);
        let logs = bed.worker.finish().await;
        let sent = logs.iter().find(|l| l["outcome"] == "sent").unwrap();
        assert_eq!(sent["attempts"], 2, "{sent}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_code_is_never_sent() {
    within(60, async {
        let bed = TestBed::start(ConfigFile::full()).await;
        let stale = TestJob::new(&number(), "SignIn").expired();
        // 30 s left (time enough for a first attempt on a busy machine), but
        // Twilio says come back in 60 s: no retry past expiry.
        let left: u64 = 30;
        let short = TestJob::new(&number(), "SignIn").expires_in(Duration::from_secs(left));
        bed.twilio
            .script(&short.to, [Reply::server_error(503).with_retry_after("60")]);
        bed.publish(&stale).await;
        bed.publish(&short).await;
        let dead = bed.dead_letters(2, SECS).await;
        for d in &dead {
            assert_eq!(d.header_str("x-sms-reason").as_deref(), Some("expired"));
        }
        let stale_dead = dead.iter().find(|d| d.json()["id"] == stale.id).unwrap();
        assert_eq!(stale_dead.header_i64("x-sms-attempts"), Some(0));
        let short_dead = dead.iter().find(|d| d.json()["id"] == short.id).unwrap();
        assert_eq!(short_dead.header_i64("x-sms-attempts"), Some(1));
        let seen = bed.twilio.requests();
        assert!(
            seen.iter().all(|r| r.to() != stale.to),
            "the expired job reached Twilio"
        );
        let short_calls: Vec<_> = seen.iter().filter(|r| r.to() == short.to).collect();
        assert_eq!(short_calls.len(), 1, "not retried past its expiry");
        let validity: u64 = short_calls[0]
            .field("ValidityPeriod")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            validity <= left,
            "ValidityPeriod {validity} is more than the time left"
        );
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_fault_pauses_the_worker_and_it_resumes_by_itself() {
    within(120, async {
        let twilio = FakeTwilio::start().await;
        twilio.set_default(Reply::error(401, 20003));
        let bed = TestBed::start_with(ConfigFile::full(), twilio, |o| o.prefetch = 8).await;
        let jobs: Vec<TestJob> = (0..20).map(|_| TestJob::new(&number(), "SignIn")).collect();
        for job in &jobs {
            bed.publish(job).await;
        }
        let body = eventually(SECS, "/readyz to report the pause", || async {
            let (status, body) = bed.worker.readyz().await;
            (status == 503 && body["reason"] == "paused").then_some(body)
        })
        .await;
        assert!(body["detail"].as_str().unwrap().contains("20003"), "{body}");
        assert_eq!(
            metric(&bed.worker.metrics().await, "sms_worker_paused", ""),
            Some(1.0)
        );
        // It probes, one job at a time: each probe starts after the last
        // one's answer. (The calls made before the pause tripped are all
        // answered first: the first probe comes a second later.)
        eventually(SECS, "the calls made before the pause answered", || {
            std::future::ready((bed.twilio.in_flight() == 0).then_some(()))
        })
        .await;
        let before = bed.twilio.request_count();
        let seen = bed
            .twilio
            .wait_until(SECS, "three probes", |r| r.len() >= before + 3)
            .await;
        let probes = &seen[before..];
        for pair in probes.windows(2) {
            assert!(
                pair[1].at >= pair[0].answered_at,
                "a probe started before the previous one was answered"
            );
            assert_eq!(pair[0].twilio_code, Some(20003));
        }
        assert_eq!(
            ready(&bed.channel, "sms.dead").await,
            0,
            "nothing dead-lettered while paused"
        );

        // The credentials are fixed: the next probe succeeds and it resumes.
        bed.twilio.set_default(Reply::created());
        bed.twilio
            .wait_until(Duration::from_secs(60), "every job sent", |r| {
                r.iter().filter(|r| r.status == 201).count() >= jobs.len()
            })
            .await;
        bed.worker.wait_ready(SECS).await;
        bed.wait_drained(SECS).await;
        assert_eq!(
            ready(&bed.channel, "sms.dead").await,
            0,
            "nothing dead-lettered"
        );
        let counts = accepted_per_number(&bed.twilio);
        for job in &jobs {
            assert_eq!(counts.get(&job.to), Some(&1), "each job sent exactly once");
        }
        assert_eq!(
            metric(&bed.worker.metrics().await, "sms_worker_paused", ""),
            Some(0.0)
        );
        let logs = bed.worker.finish().await;
        let count = |outcome: &str| logs.iter().filter(|l| l["outcome"] == outcome).count();
        assert_eq!(count("paused"), 1, "the fault is logged once per pause");
        assert_eq!(count("resumed"), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_jobs_in_flight_finish_and_exits_0() {
    within(
        60,
        jobs_in_flight_finish_on("SIGTERM", WorkerProcess::terminate),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_stops_the_worker_as_gracefully_as_sigterm() {
    within(
        60,
        jobs_in_flight_finish_on("SIGINT", WorkerProcess::interrupt),
    )
    .await;
}

/// Ten calls in flight when `stop` signals the worker: it waits for all ten,
/// acks them, publishes their outcome events (confirmed before it closes
/// the connection) and exits 0.
async fn jobs_in_flight_finish_on(signal: &str, stop: fn(&WorkerProcess)) {
    let twilio = FakeTwilio::start().await;
    // The calls stay in flight until the worker has taken the signal in.
    twilio.hold();
    let vhost = Vhost::create();
    let config = ConfigFile::patient();
    let mut worker =
        WorkerProcess::start_ready(WorkerOptions::new(&vhost.url, &config, &twilio)).await;
    let conn = vhost.connect().await;
    let publisher = vhost.publisher(&conn).await;
    let channel = conn.create_channel().await.unwrap();
    let events = bind_events(&channel, "default.sent").await;
    let jobs: Vec<TestJob> = (0..10).map(|_| TestJob::new(&number(), "SignIn")).collect();
    for job in &jobs {
        publish(&publisher, job).await;
    }
    eventually(SECS, "all ten calls in flight", || {
        std::future::ready((twilio.in_flight() == 10).then_some(()))
    })
    .await;
    stop(&worker);
    let waiting = worker
        .wait_log(SECS, &format!("the worker to stop for {signal}"), |l| {
            (l["message"] == "shutting down: waiting for jobs in flight")
                .then(|| l["in_flight"].as_u64())
                .flatten()
        })
        .await;
    assert_eq!(waiting, 10, "it waits for every job in flight");
    twilio.release();
    let status = worker.wait_exit(SECS).await;
    assert!(status.success(), "exit status {status} on {signal}");
    assert_eq!(twilio.accepted().len(), 10, "every job in flight finished");
    assert_eq!(vhost.ready("sms.send").await, 0, "and was acked");
    // Confirmed before the exit, so in the queue now: no waiting.
    assert_eq!(
        ready(&channel, &events).await,
        10,
        "and its outcome event was published before the exit"
    );
    worker.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn what_misses_the_grace_period_goes_back_to_the_queue_untouched() {
    within(60, async {
        let twilio = FakeTwilio::start().await;
        // Held for good: no call finishes within the grace period.
        twilio.hold();
        let vhost = Vhost::create();
        let config = ConfigFile::patient();
        let mut options = WorkerOptions::new(&vhost.url, &config, &twilio);
        options
            .env
            .push(("SMS_DISPATCH_SHUTDOWN_GRACE_SECS", "1".to_owned()));
        let mut worker = WorkerProcess::start_ready(options).await;
        let conn = vhost.connect().await;
        let publisher = vhost.publisher(&conn).await;
        let jobs: Vec<TestJob> = (0..3).map(|_| TestJob::new(&number(), "SignIn")).collect();
        for job in &jobs {
            publish(&publisher, job).await;
        }
        eventually(SECS, "three calls in flight", || {
            std::future::ready((twilio.in_flight() == 3).then_some(()))
        })
        .await;
        let stopping = Instant::now();
        worker.terminate();
        let status = worker.wait_exit(SECS).await;
        assert!(status.success(), "exit status {status}");
        assert!(
            stopping.elapsed() < Duration::from_secs(8),
            "the grace period was kept"
        );
        let channel = conn.create_channel().await.unwrap();
        let back = take_at_least(&channel, "sms.send", 3, SECS).await;
        for job in &jobs {
            let m = back
                .iter()
                .find(|m| m.json()["id"] == job.id)
                .expect("back in the queue");
            assert_eq!(m.body, job.body(), "untouched");
            assert_eq!(m.header_i64("x-sms-attempts"), None);
        }
        worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_2000_jobs_in_flight_loses_nothing() {
    within(300, async {
        let vhost = Vhost::create();
        let twilio = FakeTwilio::start().await;
        twilio.set_latency(Duration::from_millis(20));
        let config = ConfigFile::patient();
        let prefetch: u16 = 64;
        let options = || {
            let mut o = WorkerOptions::new(&vhost.url, &config, &twilio);
            o.prefetch = prefetch;
            o
        };
        let mut first = WorkerProcess::start_ready(options()).await;
        let conn = vhost.connect().await;
        let publisher = vhost.publisher(&conn).await;
        let jobs: Vec<TestJob> = (0..2000).map(|_| TestJob::new(&number(), "SignIn")).collect();
        // A quarter of the jobs go out, then a prefetch worth of calls is
        // held in flight: the kill lands there.
        twilio.hold_after(500);
        for job in &jobs {
            publish(&publisher, job).await;
        }
        let held = twilio
            .wait_held(usize::from(prefetch), Duration::from_secs(120), "a prefetch worth of calls in flight")
            .await;
        assert_eq!(held, usize::from(prefetch), "no more calls than the prefetch");
        first.kill9();
        first.wait_exit(SECS).await;
        let at_kill = twilio.accepted().len();
        // Twilio still sends what it received before the kill.
        twilio.release();

        let second = WorkerProcess::start_ready(options()).await;
        eventually(Duration::from_secs(120), "every job sent", || {
            let counts = accepted_per_number(&twilio);
            std::future::ready(jobs.iter().all(|j| counts.contains_key(&j.to)).then_some(()))
        })
        .await;
        let channel = conn.create_channel().await.unwrap();
        wait_drained(&channel, &second, SECS).await;
        let total = twilio.accepted().len();
        let duplicates = total - jobs.len();
        println!(
            "kill -9 after {at_kill} of {} jobs sent: {duplicates} sent twice (prefetch {prefetch})",
            jobs.len()
        );
        assert!(
            duplicates <= usize::from(prefetch),
            "{duplicates} duplicates exceed the prefetch of {prefetch}"
        );
        assert_eq!(vhost.ready("sms.dead").await, 0, "nothing dead-lettered");
        second.finish().await;
        drop(first);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_call_holds_no_other_jobs_ack_and_batched_acks_keep_the_channel_open() {
    within(180, async {
        // Acks go out in batches: the contiguous prefix of finished tags in
        // one `multiple` ack, every finished tag above a gap on its own. The
        // first job's call is slow (the fake answers it after 25 s; the
        // worker's timeout is 120 s), so its tag is the gap below all the
        // others: they must still be acked, or the prefetch would fill after
        // 63 of them and the rest would never be sent.
        let twilio = FakeTwilio::start().await;
        let slow = TestJob::new(&number(), "SignIn");
        twilio.script(
            &slow.to,
            [Reply::created().with_latency(Duration::from_secs(25))],
        );
        let bed = TestBed::start_with(ConfigFile::patient(), twilio, |o| o.prefetch = 64).await;
        bed.publish(&slow).await;
        eventually(SECS, "the slow call in flight", || async {
            (bed.twilio.in_flight() == 1).then_some(())
        })
        .await;
        let jobs: Vec<TestJob> = (0..1_000)
            .map(|_| TestJob::new(&number(), "SignIn"))
            .collect();
        bed.vhost.publish_all(&jobs).await;
        bed.twilio
            .wait_until(SECS, "the other 1,000 jobs sent", |r| {
                r.iter().filter(|r| r.status == 201).count() >= jobs.len()
            })
            .await;
        // Every other delivery was acked while the slow one still waits: the
        // broker holds one unacked message, and the worker one job.
        let unacked = eventually(SECS, "one unacked message left", || async {
            let out = rabbitmqctl(
                None,
                &[
                    "list_queues",
                    "-p",
                    &bed.vhost.name,
                    "-q",
                    "--no-table-headers",
                    "name",
                    "messages_unacknowledged",
                ],
            );
            let unacked: u64 = out
                .lines()
                .filter_map(|l| l.split_once('\t'))
                .find(|(name, _)| name.trim() == "sms.send")
                .and_then(|(_, n)| n.trim().parse().ok())
                .unwrap_or(u64::MAX);
            (unacked == 1).then_some(unacked)
        })
        .await;
        assert_eq!(unacked, 1);
        assert_eq!(
            metric(&bed.worker.metrics().await, "sms_in_flight", ""),
            Some(1.0)
        );
        // The slow call ends; everything is sent once, nothing dead-lettered,
        // and the channel was never closed by an ack of an unknown tag.
        bed.twilio
            .wait_until(Duration::from_secs(60), "the slow job sent", |r| {
                r.iter().any(|r| r.status == 201 && r.to() == slow.to)
            })
            .await;
        // Then 2,000 more, one in seven a little slower: gaps open and
        // close all the time, so multiple acks and single ones interleave.
        let more: Vec<TestJob> = (0..2_000)
            .map(|_| TestJob::new(&number(), "SignIn"))
            .collect();
        for job in more.iter().step_by(7) {
            bed.twilio.script(
                &job.to,
                [Reply::created().with_latency(Duration::from_millis(30))],
            );
        }
        bed.vhost.publish_all(&more).await;
        bed.twilio
            .wait_until(Duration::from_secs(90), "every job sent", |r| {
                r.iter().filter(|r| r.status == 201).count() >= 1 + jobs.len() + more.len()
            })
            .await;
        bed.wait_drained(SECS).await;
        let counts = accepted_per_number(&bed.twilio);
        assert_eq!(counts.len(), 1 + jobs.len() + more.len(), "every job sent");
        assert!(counts.values().all(|&n| n == 1), "a job sent twice");
        assert_eq!(ready(&bed.channel, "sms.dead").await, 0);
        let logs = bed.worker.finish().await;
        assert!(
            !logs.iter().any(|l| l["message"] == "Channel closed"
                || l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("consumer interrupted"))),
            "the consuming channel was closed"
        );
    })
    .await;
}
