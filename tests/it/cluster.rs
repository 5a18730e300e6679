//! A fleet under loss. Three workers on a three-node RabbitMQ cluster of the
//! test's own, given every node's URL: the node that leads `sms.send` and
//! one worker are killed with `kill -9` mid-run, and every job is still
//! sent, twice only if its call was in flight at the kills. And three
//! workers restarted one by one (SIGTERM) while jobs flow: nothing lost,
//! nothing sent twice.
//!
//! Each test sets its own pace. In the cluster test the workers share one
//! fake Twilio account, each with an API key of its own, so the record tells
//! whose calls were in flight at the kills: the fake answers slowly while
//! the jobs are published, then fast; mid-run its gate closes, each worker's
//! prefetch of calls piles up there, the kills land, the gate opens. In the
//! rolling restart the test publishes at a bounded rate and stops the next
//! worker only once the restarted one is ready and has sent jobs.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const SECS: Duration = Duration::from_secs(60);

/// Each worker's prefetch: the most calls one worker has in flight.
const PREFETCH: u16 = 16;

/// The shared Redis (never stopped by a test), under a prefix of the run's own.
const SHARED_REDIS: &str = "redis://127.0.0.1:6379/0";

/// Three workers, three nodes, 5,000 jobs, run twice: with the fleet's
/// Redis (no job sent twice: a record, a lease or the Twilio list settles
/// every redelivery) and without it (duplicates at most a prefetch per
/// connection lost with calls in flight: the killed worker's, and each
/// survivor's that was on the dead node).
#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_node_and_a_worker_mid_run_loses_nothing() {
    within(300, async {
        let started = Instant::now();
        let cluster = tokio::task::block_in_place(|| {
            Cluster::start("smsdispatch-c", [5681, 5682, 5683], [25681, 25682, 25683])
        });
        println!("three-node cluster up in {:.0?}", started.elapsed());

        let prefix = format!("sms-dispatch-test-cluster-{:016x}:", fastrand::u64(..));
        let killed = kill_mid_run(&cluster, Some(&prefix)).await;

        // The killed node comes back on its data and rejoins; the run
        // without Redis has all three nodes again.
        let restarted = Instant::now();
        tokio::task::block_in_place(|| cluster.nodes[killed].restart());
        println!(
            "{} back in the cluster in {:.0?}",
            cluster.nodes[killed].node,
            restarted.elapsed()
        );
        kill_mid_run(&cluster, None).await;
        println!("cluster test done in {:.0?}", started.elapsed());
    })
    .await;
}

/// Jobs in each run.
const CLUSTER_JOBS: usize = 5000;

/// Calls answered at full speed before the gate closes and the kills land.
const BEFORE_KILL: usize = 900;

/// One run on a fresh vhost: three workers (with the shared Redis under
/// `redis_prefix`, or without Redis), `CLUSTER_JOBS` jobs, `kill -9` of the
/// node leading `sms.send` and of one worker mid-run. Returns the index of
/// the killed node.
async fn kill_mid_run(cluster: &Cluster, redis_prefix: Option<&str>) -> usize {
    let label = if redis_prefix.is_some() {
        "with Redis"
    } else {
        "without Redis"
    };
    let started = Instant::now();
    let vhost = cluster.vhost(0);
    let urls = cluster.urls(&vhost);
    let account = FleetAccount::start(3).await;
    let twilio = &account.twilio;
    // Slow while the jobs are published, so that the run is still at its
    // start when publishing ends, however slow the machine.
    twilio.set_latency(Duration::from_secs(2));
    let mut workers = Vec::new();
    for (_, config) in &account.keys {
        let mut options = WorkerOptions::new(&urls, config, twilio);
        options.prefetch = PREFETCH;
        options.env.push(("RUST_LOG", BULK_LOG_FILTER.to_owned()));
        if let Some(prefix) = redis_prefix {
            options.env.extend([
                ("SMS_DISPATCH_REDIS_URL", SHARED_REDIS.to_owned()),
                ("SMS_DISPATCH_REDIS_PREFIX", prefix.to_owned()),
            ]);
        }
        // One at a time: the first declares the topology, so sms.send's
        // leader is on the node the first worker consumes from.
        workers.push(WorkerProcess::start_ready(options).await);
    }
    let homes: Vec<usize> = workers
        .iter()
        .map(|w| {
            let port = consuming_port(w, 0).expect("a worker logs the node it connected to");
            cluster.node_on_port(port).expect("a cluster node's port")
        })
        .collect();
    let queue = cluster.quorum_queue(0, &vhost, "sms.send");
    let all: HashSet<&str> = cluster.nodes.iter().map(|n| n.node.as_str()).collect();
    let members: HashSet<&str> = queue.members.iter().map(String::as_str).collect();
    assert_eq!(members, all, "sms.send is replicated on all three nodes");
    let leader = queue.leader;
    // The worker to kill consumes from another node when one does: the
    // node's loss and the worker's are then two losses, not one.
    let victim = (0..3).rev().find(|&i| homes[i] != leader).unwrap_or(2);
    // Survivors whose node dies with the leader: they must move on.
    let cut_off: Vec<usize> = (0..3)
        .filter(|&i| i != victim && homes[i] == leader)
        .collect();
    println!(
        "{label}: workers consume from {:?}; sms.send leads on {}; killing it and worker {victim}",
        homes
            .iter()
            .map(|&h| cluster.nodes[h].node.as_str())
            .collect::<Vec<_>>(),
        cluster.nodes[leader].node,
    );

    // Published through a node that survives, which also answers the
    // checks afterwards.
    let checker = (leader + 1) % 3;
    let conn = cluster.connect(checker, &vhost).await;
    let publisher = vhost.publisher(&conn).await;
    let jobs = BulkJobs::new().take(CLUSTER_JOBS);
    let publishing = Instant::now();
    publish_concurrently(&publisher, &jobs, 32).await;
    println!(
        "{label}: {CLUSTER_JOBS} jobs published in {:.1?}",
        publishing.elapsed()
    );

    // Full speed until the run is under way, then the gate closes and each
    // worker's prefetch of calls piles up there.
    twilio.set_latency(Duration::ZERO);
    twilio
        .wait_until(SECS, "the run under way", |r| r.len() >= BEFORE_KILL)
        .await;
    twilio.hold();
    let all_calls = 3 * usize::from(PREFETCH);
    let held = twilio
        .wait_held(
            all_calls,
            SECS,
            "every worker's prefetch of calls in flight",
        )
        .await;
    assert_eq!(held, all_calls, "no more calls than the prefetch allows");
    let sent_before = twilio.accepted().len();
    assert!(
        sent_before + all_calls < CLUSTER_JOBS,
        "the kills must land mid-run; {sent_before} of {CLUSTER_JOBS} were sent already"
    );

    let kill_at = Instant::now();
    tokio::task::block_in_place(|| cluster.nodes[leader].kill9());
    workers[victim].kill9();
    workers[victim].wait_exit(SECS).await;
    twilio.release();

    // A worker whose node died moves to another one and consumes again.
    for &i in &cut_off {
        workers[i]
            .wait_log(SECS, "the worker to consume on another node", |l| {
                (l["message"] == "consuming on a new broker connection").then_some(())
            })
            .await;
        let port = consuming_port(&workers[i], 2).expect("the node it moved to");
        assert_ne!(
            cluster.node_on_port(port),
            Some(leader),
            "worker {i} moved to a live node"
        );
        workers[i].wait_ready(SECS).await;
    }

    // Every job sent.
    let wanted: HashSet<&str> = jobs.iter().map(|j| j.to.as_str()).collect();
    assert_eq!(wanted.len(), jobs.len(), "one number per job");
    eventually(Duration::from_secs(120), "every job sent", || {
        let sent = sends_per_number(&[twilio.accepted()]);
        std::future::ready(wanted.iter().all(|to| sent.contains_key(*to)).then_some(()))
    })
    .await;
    // Nothing left: no job parked behind a lease, none in a worker.
    let survivors: Vec<&WorkerProcess> = (0..3)
        .filter(|&i| i != victim)
        .map(|i| &workers[i])
        .collect();
    let channel = conn.create_channel().await.unwrap();
    wait_quiet(
        &channel,
        &["sms.retry.4s"],
        &survivors,
        Duration::from_secs(90),
    )
    .await;

    // Every survivor is ready again: none is left unable to publish (a
    // park, a retry, a dead letter) through a channel the kills broke.
    for i in (0..3).filter(|&i| i != victim) {
        let waiting = Instant::now();
        loop {
            let (status, body) = workers[i].readyz().await;
            if status == 200 {
                break;
            }
            assert!(
                waiting.elapsed() < SECS,
                "{label}: worker {i} is still not ready {SECS:?} after the run: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Which calls were in flight at the kills, worker by worker (each
    // calls with its own API key).
    let accepted = twilio.accepted();
    let in_flight_at_kill = |i: usize| -> HashSet<&str> {
        accepted
            .iter()
            .filter(|r| r.username == account.keys[i].0)
            .filter(|r| r.at <= kill_at && r.answered_at >= kill_at)
            .map(Received::to)
            .collect()
    };
    let sent = sends_per_number(std::slice::from_ref(&accepted));
    let unknown: Vec<&String> = sent
        .keys()
        .filter(|to| !wanted.contains(to.as_str()))
        .collect();
    assert!(unknown.is_empty(), "sent to numbers of no job: {unknown:?}");
    let twice: HashSet<&str> = sent
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(to, _)| to.as_str())
        .collect();
    let resent: usize = sent.values().map(|n| n - 1).sum();
    assert!(
        sent.values().all(|n| *n <= 2),
        "no job sent more than twice"
    );

    // How the survivors settled the jobs that came back.
    let mut settled = [0.0; 3];
    for w in &survivors {
        let text = w.metrics().await;
        let series = [
            ("sms_duplicates_suppressed_total", "store=\"redis\""),
            ("sms_duplicates_suppressed_total", "store=\"memory\""),
            ("sms_reconciled_total", "result=\"found\""),
        ];
        for (total, (name, labels)) in settled.iter_mut().zip(series) {
            *total += metric(&text, name, labels).unwrap_or(0.0);
        }
    }
    let parked = workers
        .iter()
        .flat_map(WorkerProcess::json_logs)
        .filter(|l| l["outcome"] == "parked" && mentions_lease(l))
        .count();

    // Twice only if in flight at the kills: with Redis only on the killed
    // worker (a survivor's calls are recorded as sent, or leased while
    // they last); without, on any worker the kills cut off from its jobs.
    let suspects: Vec<usize> = if redis_prefix.is_some() {
        vec![victim]
    } else {
        std::iter::once(victim)
            .chain(cut_off.iter().copied())
            .collect()
    };
    let exposed: HashSet<&str> = suspects
        .iter()
        .flat_map(|&i| in_flight_at_kill(i))
        .collect();
    let victim_in_flight = in_flight_at_kill(victim).len();
    let cut_off_in_flight: usize = cut_off.iter().map(|&i| in_flight_at_kill(i).len()).sum();
    println!(
        "{label}: {CLUSTER_JOBS} jobs, {sent_before} sent before the kills; \
         {resent} sent twice ({victim_in_flight} in flight on the killed worker, \
         {cut_off_in_flight} on the {} worker(s) cut off from their node; prefetch {PREFETCH}); \
         settled without a send: {} by a Redis record, {} by a worker's memory, \
         {} found in Twilio's list; {parked} parks behind a live lease; run took {:.0?}",
        cut_off.len(),
        settled[0],
        settled[1],
        settled[2],
        started.elapsed()
    );
    let stray: Vec<&&str> = twice.iter().filter(|to| !exposed.contains(**to)).collect();
    assert!(
        stray.is_empty(),
        "{label}: sent twice though not in flight at the kills: {stray:?}"
    );
    assert!(
        resent <= usize::from(PREFETCH) * suspects.len(),
        "{label}: {resent} sent twice, more than a prefetch per worker cut off ({suspects:?})"
    );
    if redis_prefix.is_some() {
        // The calls in flight on a worker cut off from its node went
        // through, but could not be acked: each came back, and was settled
        // by the record of its send.
        assert!(
            settled[0] + settled[1] >= cut_off_in_flight as f64,
            "{label}: the {cut_off_in_flight} jobs sent by workers cut off from their node were settled without a send"
        );
    }

    for (i, worker) in workers.into_iter().enumerate() {
        if i != victim {
            worker.finish().await;
        }
    }
    // No job was left unacked on a live channel either: closed now, it
    // would be back in the queue.
    for queue in ["sms.send", "sms.retry.4s"] {
        assert_eq!(
            ready(&channel, queue).await,
            0,
            "{label}: nothing left in {queue}"
        );
    }
    let _ = conn.close(200, "checked".into()).await;
    leader
}

/// Whether a log line is the "another worker is sending this job" park.
fn mentions_lease(line: &Value) -> bool {
    line["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("another worker is sending"))
}

/// The rate the rolling-restart test publishes at: 25 jobs every 50 ms.
const BATCH: usize = 25;
const TICK: Duration = Duration::from_millis(50);
/// The most jobs it publishes, however slow the restarts (60 s' worth).
const MOST_JOBS: usize = 30_000;

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_while_jobs_flow_loses_nothing_and_sends_nothing_twice() {
    within(180, async {
        let started = Instant::now();
        let vhost = Vhost::create();
        let config = ConfigFile::full();
        let twilio = FakeTwilio::start().await;
        twilio.set_latency(Duration::from_millis(20));
        let options = || {
            let mut options = WorkerOptions::new(&vhost.url, &config, &twilio);
            options.prefetch = PREFETCH;
            options.env.push(("RUST_LOG", BULK_LOG_FILTER.to_owned()));
            options
        };
        let mut workers = Vec::new();
        for _ in 0..3 {
            workers.push(WorkerProcess::start_ready(options()).await);
        }
        let conn = vhost.connect().await;
        let publisher = vhost.publisher(&conn).await;
        let stop = Arc::new(AtomicBool::new(false));
        let producer = tokio::spawn(produce(publisher, Arc::clone(&stop)));

        twilio
            .wait_until(SECS, "jobs flowing", |r| r.len() >= 500)
            .await;
        let mut in_flight_at_stop = Vec::new();
        for i in 0..3 {
            let old = workers.remove(i);
            let logs = old.finish().await;
            in_flight_at_stop.push(
                logs.iter()
                    .find(|l| l["message"] == "shutting down: waiting for jobs in flight")
                    .and_then(|l| l["in_flight"].as_u64())
                    .expect("the shutdown line"),
            );
            let new = WorkerProcess::start_ready(options()).await;
            // Jobs go out through the restarted worker before the next stops.
            eventually(SECS, "jobs sent by the restarted worker", || async {
                let sent = metric(&new.metrics().await, "sms_sent_total", "type=\"SignIn\"");
                (sent.unwrap_or(0.0) >= 50.0).then_some(())
            })
            .await;
            workers.insert(i, new);
        }
        // Jobs keep flowing after the last restart, then the producer stops.
        let so_far = twilio.request_count();
        twilio
            .wait_until(SECS, "jobs after the restarts", |r| r.len() >= so_far + 500)
            .await;
        stop.store(true, Ordering::Relaxed);
        let jobs = producer.await.expect("the producer");
        assert!(
            jobs.len() < MOST_JOBS,
            "the restarts ended before the producer's cap"
        );

        let wanted: HashSet<&str> = jobs.iter().map(|j| j.to.as_str()).collect();
        eventually(Duration::from_secs(120), "every job sent", || {
            let sent = sends_per_number(&[twilio.accepted()]);
            std::future::ready(wanted.iter().all(|to| sent.contains_key(*to)).then_some(()))
        })
        .await;
        let channel = conn.create_channel().await.unwrap();
        let running: Vec<&WorkerProcess> = workers.iter().collect();
        wait_quiet(&channel, &[], &running, SECS).await;
        let sent = sends_per_number(&[twilio.accepted()]);
        let twice = sent.values().filter(|n| **n > 1).count();
        println!(
            "rolling restart: {} jobs at {} jobs/s, {:?} in flight at each SIGTERM; \
             {twice} sent twice; took {:.0?}",
            jobs.len(),
            BATCH as f64 / TICK.as_secs_f64(),
            in_flight_at_stop,
            started.elapsed()
        );
        assert_eq!(twice, 0, "nothing sent twice");
        assert_eq!(sent.len(), jobs.len(), "every job sent, and nothing else");
        assert_eq!(twilio.accepted().len(), jobs.len());
        assert_eq!(
            ready(&channel, "sms.dead").await,
            0,
            "nothing dead-lettered"
        );
        for worker in workers {
            worker.finish().await;
        }
        // Nothing was left unacked on a live channel either.
        assert_eq!(
            ready(&channel, "sms.send").await,
            0,
            "nothing left in sms.send"
        );
        let _ = conn.close(200, "checked".into()).await;
    })
    .await;
}

/// Publishes `BATCH` jobs every `TICK` until `stop` (or `MOST_JOBS`);
/// returns them.
async fn produce(publisher: sms_dispatch::wire::Publisher, stop: Arc<AtomicBool>) -> Vec<TestJob> {
    let mut series = BulkJobs::new();
    let mut jobs = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) && jobs.len() < MOST_JOBS {
        tick.tick().await;
        let batch = series.take(BATCH);
        publish_concurrently(&publisher, &batch, BATCH).await;
        jobs.extend(batch);
    }
    jobs
}
