//! The load benchmark: the real worker binary against the real RabbitMQ and
//! an in-process fake Twilio, side by side with the broker's own limit,
//! measured in one run on this machine. It prints figures and PASS/FAIL
//! against the targets; it never fails a build on a figure.
//!
//! `cargo bench --bench load` runs the full benchmark, each figure three
//! times (the median and the spread are printed); `-- --quick` runs a few
//! hundred jobs once, only to prove it still works (CI does that). To
//! profile the worker, set `BENCH_WRAP` to a command to run it under, e.g.
//! `BENCH_WRAP="perf record -g -o /tmp/worker.perf"` or
//! `BENCH_WRAP="valgrind --tool=massif"` (it is stopped with SIGTERM, so the
//! profiler writes its report), and `BENCH_ONLY` to the figures to measure
//! (`limit,instant,slow,latency,redis,events,fleet`).
//! `BENCH_WORKER=path` measures another build of the worker (to compare two
//! builds minutes apart); `BENCH_ENV_NAME=value` sets `NAME` in the workers'
//! environment, to try a setting against the same run's baseline (e.g.
//! `BENCH_ENV_LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use fake_twilio::{FakeTwilio, TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, TEST_MESSAGING_SERVICE_SID};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::json;

const WORKER: &str = env!("CARGO_BIN_EXE_sms-dispatch");

/// The worker binary to measure: this build's, or `BENCH_WORKER` (another
/// build, e.g. the last release's, to compare two builds on the same machine
/// minutes apart).
fn worker_binary() -> String {
    std::env::var("BENCH_WORKER").unwrap_or_else(|_| WORKER.to_owned())
}

/// How big each measurement is.
struct Sizes {
    /// Jobs for the instant-Twilio runs and the broker-limit runs.
    instant_jobs: usize,
    /// Jobs for the 200 ms run.
    slow_jobs: usize,
    /// Seconds of 1,000 jobs/s for the latency run.
    latency_secs: u64,
    /// Jobs per worker for each fleet run.
    fleet_jobs_per_worker: usize,
    /// Runs of each figure (the median and the spread are reported).
    runs: usize,
}

/// The fleet's Redis for the Redis run (CI and this machine run one here).
const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// The targets of the issue, and the settings they are measured with.
const INSTANT_PREFETCH: u16 = 64;
const SLOW_PREFETCH: u16 = 500;
const TWILIO_LATENCY: Duration = Duration::from_millis(200);
const OFFERED_RATE: u64 = 1_000;
/// Acks per frame for the batched broker limit (the worker flushes at a
/// quarter of its prefetch).
const LIMIT_BATCH: usize = INSTANT_PREFETCH as usize / 4;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = if quick {
        Sizes {
            instant_jobs: 300,
            slow_jobs: 300,
            latency_secs: 1,
            fleet_jobs_per_worker: 100,
            runs: 1,
        }
    } else {
        Sizes {
            instant_jobs: 20_000,
            slow_jobs: 12_000,
            latency_secs: 10,
            fleet_jobs_per_worker: 1_600,
            runs: 3,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(sizes, quick));
}

/// Whether figure `name` is measured: all of them, unless `BENCH_ONLY`
/// lists some (`limit,instant,slow,latency,redis,events,fleet`), e.g. to
/// profile one run with `BENCH_WRAP`.
fn wanted(name: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.split(',').any(|n| n.trim() == name))
}

/// The median of several runs and their spread.
#[derive(Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(mut values: Vec<f64>) -> Stat {
        assert!(!values.is_empty(), "no runs");
        values.sort_by(f64::total_cmp);
        Stat {
            median: values[values.len() / 2],
            min: values[0],
            max: values[values.len() - 1],
        }
    }

    /// `median [min–max]`, with `decimals`.
    fn show(&self, decimals: usize) -> String {
        format!(
            "{:.*} [{:.*}–{:.*}]",
            decimals, self.median, decimals, self.min, decimals, self.max
        )
    }
}

/// Runs `measure` `runs` times.
async fn repeat<T, F, Fut>(runs: usize, mut measure: F) -> Vec<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut results = Vec::with_capacity(runs);
    for _ in 0..runs {
        results.push(measure().await);
    }
    results
}

/// Throughput runs summarised: rate, CPU per job, peak RSS.
struct Summary {
    rate: Stat,
    cpu: Stat,
    rss: Stat,
    max_in_flight: usize,
}

impl Summary {
    fn of(runs: &[Throughput]) -> Summary {
        Summary {
            rate: Stat::of(runs.iter().map(|t| t.rate).collect()),
            cpu: Stat::of(runs.iter().map(|t| t.cpu_per_job_us).collect()),
            rss: Stat::of(runs.iter().map(|t| t.peak_rss_mib).collect()),
            max_in_flight: runs.iter().map(|t| t.max_in_flight).max().unwrap_or(0),
        }
    }
}

async fn run(sizes: Sizes, quick: bool) {
    println!(
        "sms-dispatch load benchmark{}",
        if quick {
            " (quick mode: figures are not meaningful)"
        } else {
            ""
        }
    );
    println!(
        "machine: {} cores, RabbitMQ {}, queue type quorum, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        rabbitmq_version(),
        sms_dispatch::wire::format_rfc3339(SystemTime::now())
    );
    println!(
        "each figure: median [min–max] of {} run(s); workers log JSON at info to a file",
        sizes.runs
    );
    println!();
    let runs = sizes.runs;
    let mut targets: Vec<(bool, String)> = Vec::new();

    // 1. The broker's own limit: publish, then consume doing no work, with
    //    per-message acks and with batched acks (multiple = true).
    let mut limit = None;
    if wanted("limit") {
        let single = repeat(runs, || {
            broker_limit(sizes.instant_jobs, INSTANT_PREFETCH, 1)
        })
        .await;
        let batched = repeat(runs, || {
            broker_limit(sizes.instant_jobs, INSTANT_PREFETCH, LIMIT_BATCH)
        })
        .await;
        let (single, single_cpu) = (
            Stat::of(single.iter().map(|r| r.0).collect()),
            Stat::of(single.iter().map(|r| r.1).collect()),
        );
        let (batched, batched_cpu) = (
            Stat::of(batched.iter().map(|r| r.0).collect()),
            Stat::of(batched.iter().map(|r| r.1).collect()),
        );
        println!(
            "broker limit, per-message acks   {} msg/s  ({} messages, prefetch {})",
            single.show(0),
            sizes.instant_jobs,
            INSTANT_PREFETCH
        );
        println!(
            "  do-nothing consumer CPU        {} µs/msg",
            single_cpu.show(1)
        );
        println!(
            "broker limit, acks in batches    {} msg/s  (multiple = true every {LIMIT_BATCH})",
            batched.show(0)
        );
        println!(
            "  do-nothing consumer CPU        {} µs/msg",
            batched_cpu.show(1)
        );
        limit = Some(single);
    }

    // 2. The worker with a Twilio that answers at once (events on, nobody
    //    bound: the default deployment before a service subscribes).
    let mut instant = None;
    if wanted("instant") {
        let results = repeat(runs, || {
            worker_throughput(
                sizes.instant_jobs,
                INSTANT_PREFETCH,
                Duration::ZERO,
                &[],
                false,
            )
        })
        .await;
        let summary = Summary::of(&results);
        println!(
            "worker, instant Twilio           {} jobs/s  ({} jobs, prefetch {})",
            summary.rate.show(0),
            sizes.instant_jobs,
            INSTANT_PREFETCH
        );
        println!(
            "  worker CPU                     {} µs/job   peak RSS {} MiB",
            summary.cpu.show(1),
            summary.rss.show(1)
        );
        if let Some(limit) = limit {
            let ratio = summary.rate.median / limit.median;
            targets.push((
                ratio >= 1.0,
                format!(
                    "instant Twilio: {:.0} jobs/s ≥ 1.0 × per-message-ack broker limit {:.0} (ratio {ratio:.2})",
                    summary.rate.median, limit.median
                ),
            ));
        }
        targets.push((
            summary.cpu.median <= 30.0,
            format!(
                "worker CPU, instant: {:.1} µs/job ≤ 30 µs",
                summary.cpu.median
            ),
        ));
        instant = Some(summary);
    }

    // 3. The worker with a Twilio that takes 200 ms per call.
    if wanted("slow") {
        let cycle = Stat::of(
            repeat(runs, || {
                broker_cycle(sizes.slow_jobs, SLOW_PREFETCH, 1, TWILIO_LATENCY)
            })
            .await
            .iter()
            .map(|r| r.0)
            .collect(),
        );
        println!(
            "broker limit, each held 200 ms   {} msg/s  (prefetch {SLOW_PREFETCH}, per-message acks, no work)",
            cycle.show(0)
        );
        let results = repeat(runs, || {
            worker_throughput(sizes.slow_jobs, SLOW_PREFETCH, TWILIO_LATENCY, &[], false)
        })
        .await;
        let slow = Summary::of(&results);
        let bound = f64::from(SLOW_PREFETCH) / TWILIO_LATENCY.as_secs_f64();
        println!(
            "worker, Twilio at 200 ms         {} jobs/s  ({} jobs, prefetch {}; bound {bound:.0}/s; max in flight {})",
            slow.rate.show(0),
            sizes.slow_jobs,
            SLOW_PREFETCH,
            slow.max_in_flight
        );
        println!(
            "  worker CPU                     {} µs/job   peak RSS {} MiB",
            slow.cpu.show(1),
            slow.rss.show(1)
        );
        targets.push((
            slow.rate.median >= 0.95 * bound,
            format!(
                "200 ms Twilio: {:.0} jobs/s ≥ 0.95 × {bound:.0} = {:.0}",
                slow.rate.median,
                0.95 * bound
            ),
        ));
        targets.push((
            slow.cpu.median <= 60.0,
            format!(
                "worker CPU, 200 ms × {SLOW_PREFETCH} in flight: {:.1} µs/job ≤ 60 µs",
                slow.cpu.median
            ),
        ));
        targets.push((
            slow.rss.median <= 32.0,
            format!(
                "peak RSS, 200 ms × {SLOW_PREFETCH} in flight: {:.1} MiB ≤ 32 MiB",
                slow.rss.median
            ),
        ));
    }

    // 4. End-to-end latency at a fixed offered rate.
    if wanted("latency") {
        let broker = repeat(runs, || {
            broker_latency(OFFERED_RATE, sizes.latency_secs, INSTANT_PREFETCH)
        })
        .await;
        println!(
            "latency at {OFFERED_RATE}/s, broker alone     p50 {} ms  p99 {} ms  max {} ms  (publish → a consumer that does no work)",
            Stat::of(broker.iter().map(|l| l.p50_ms).collect()).show(2),
            Stat::of(broker.iter().map(|l| l.p99_ms).collect()).show(2),
            Stat::of(broker.iter().map(|l| l.max_ms).collect()).show(2),
        );
        let results = repeat(runs, || {
            latency_at_rate(OFFERED_RATE, sizes.latency_secs, INSTANT_PREFETCH)
        })
        .await;
        let p50 = Stat::of(results.iter().map(|l| l.p50_ms).collect());
        let p99 = Stat::of(results.iter().map(|l| l.p99_ms).collect());
        let max = Stat::of(results.iter().map(|l| l.max_ms).collect());
        let rss = Stat::of(results.iter().map(|l| l.peak_rss_mib).collect());
        println!(
            "latency at {OFFERED_RATE}/s, publish → Twilio  p50 {} ms  p99 {} ms  max {} ms  ({} jobs each)",
            p50.show(2),
            p99.show(2),
            max.show(2),
            results[0].jobs
        );
        println!("  worker peak RSS                {} MiB", rss.show(1));
        targets.push((
            p99.median <= 2.0 && max.median <= 20.0,
            format!(
                "latency at {OFFERED_RATE}/s: p99 {:.2} ms ≤ 2 ms, max {:.2} ms ≤ 20 ms",
                p99.median, max.median
            ),
        ));
    }

    // 5. What the fleet's Redis costs per job: the instant run with Redis,
    //    against the instant run above as the baseline of this same run.
    if wanted("redis") {
        let results = repeat(runs, || async {
            let env = [
                ("SMS_DISPATCH_REDIS_URL", REDIS_URL.to_owned()),
                (
                    "SMS_DISPATCH_REDIS_PREFIX",
                    format!("sms-dispatch-bench-{}:", fastrand::u64(..)),
                ),
            ];
            worker_throughput(
                sizes.instant_jobs,
                INSTANT_PREFETCH,
                Duration::ZERO,
                &env,
                false,
            )
            .await
        })
        .await;
        let redis = Summary::of(&results);
        println!(
            "worker + Redis, instant          {} jobs/s  {} µs/job worker CPU{}",
            redis.rate.show(0),
            redis.cpu.show(1),
            instant.as_ref().map_or(String::new(), |i| format!(
                "  (+{:.1} µs/job over the run without Redis)",
                redis.cpu.median - i.cpu.median
            ))
        );
    }

    // 6. What outcome events cost per job: events off, and events on with a
    //    service's queue bound to every event (stored, as in production).
    if wanted("events") {
        let off_env = [("SMS_DISPATCH_EVENTS", "off".to_owned())];
        let off = Summary::of(
            &repeat(runs, || {
                worker_throughput(
                    sizes.instant_jobs,
                    INSTANT_PREFETCH,
                    Duration::ZERO,
                    &off_env,
                    false,
                )
            })
            .await,
        );
        let bound = Summary::of(
            &repeat(runs, || {
                worker_throughput(
                    sizes.instant_jobs,
                    INSTANT_PREFETCH,
                    Duration::ZERO,
                    &[],
                    true,
                )
            })
            .await,
        );
        println!(
            "events off, instant              {} jobs/s  {} µs/job worker CPU",
            off.rate.show(0),
            off.cpu.show(1)
        );
        println!(
            "events on, a queue bound         {} jobs/s  {} µs/job worker CPU  (events cost {:+.1} µs/job)",
            bound.rate.show(0),
            bound.cpu.show(1),
            bound.cpu.median - off.cpu.median
        );
    }

    // 7. A fleet: 1, 2 and 4 workers with Twilio at 200 ms and the default
    //    prefetch.
    if wanted("fleet") {
        println!("fleet, Twilio at 200 ms, prefetch {INSTANT_PREFETCH}:");
        let mut one_worker = None;
        for workers in [1usize, 2, 4] {
            let jobs = sizes.fleet_jobs_per_worker * workers;
            let rate = Stat::of(
                repeat(runs, || {
                    fleet_throughput(workers, jobs, INSTANT_PREFETCH, TWILIO_LATENCY)
                })
                .await,
            );
            let base = *one_worker.get_or_insert(rate.median);
            println!(
                "  {workers} worker(s)                    {} jobs/s  {:.2} × ({workers} × one worker)",
                rate.show(0),
                rate.median / (base * workers as f64)
            );
        }
    }

    println!();
    println!("targets (medians):");
    for (ok, what) in &targets {
        println!("  {}  {what}", if *ok { "PASS" } else { "FAIL" });
    }
}

fn rabbitmq_version() -> String {
    Command::new("rabbitmqctl")
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// A private vhost, deleted on drop.
struct Vhost {
    name: String,
    url: String,
}

impl Vhost {
    fn create() -> Vhost {
        let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
        for args in [
            vec!["add_vhost", name.as_str()],
            vec![
                "set_permissions",
                "-p",
                name.as_str(),
                "guest",
                ".*",
                ".*",
                ".*",
            ],
        ] {
            let ok = Command::new("rabbitmqctl")
                .args(&args)
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "rabbitmqctl {args:?} failed");
        }
        Vhost {
            url: format!("amqp://guest:guest@127.0.0.1:5672/{name}"),
            name,
        }
    }

    async fn connect(&self) -> Connection {
        Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("connect to the bench vhost")
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Publishes `bodies` to `exchange`/`routing_key`, pipelining confirms.
async fn publish_all(channel: &Channel, exchange: &str, routing_key: &str, bodies: &[Vec<u8>]) {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut pending = Vec::with_capacity(bodies.len());
    for (i, body) in bodies.iter().enumerate() {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_message_id(format!("bench-{i}").into()),
            )
            .await
            .unwrap();
        pending.push(confirm);
        if pending.len() >= 1_000 {
            for c in pending.drain(..) {
                assert!(c.await.unwrap().is_ack());
            }
        }
    }
    for c in pending {
        assert!(c.await.unwrap().is_ack());
    }
}

/// The broker's limit: messages/s through a consumer that does nothing but
/// ack, each message (`batch` 1) or every `batch` messages with
/// `multiple = true`, and that consumer's CPU per message (this process's,
/// while it consumes: the fake Twilio in it is idle then), the floor of any
/// lapin consumer.
async fn broker_limit(messages: usize, prefetch: u16, batch: usize) -> (f64, f64) {
    broker_cycle(messages, prefetch, batch, Duration::ZERO).await
}

/// [`broker_limit`] with each message held `hold` before its ack, as a
/// worker holds it while Twilio answers: with per-message acks, the best
/// rate the broker allows a consumer at this prefetch and latency.
async fn broker_cycle(messages: usize, prefetch: u16, batch: usize, hold: Duration) -> (f64, f64) {
    let vhost = Vhost::create();
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    declare_quorum(&channel, "bench.limit").await;
    let bodies: Vec<Vec<u8>> = (0..messages)
        .map(|i| job_body(i, "+819000000000"))
        .collect();
    publish_all(&channel, "", "bench.limit", &bodies).await;

    let consume = conn.create_channel().await.unwrap();
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consume
        .basic_consume(
            "bench.limit".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut first = None;
    let mut cpu_at_first = 0.0;
    let mut seen = 0;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.unwrap();
        first.get_or_insert_with(|| {
            cpu_at_first = cpu_secs_of(std::process::id());
            Instant::now()
        });
        seen += 1;
        if !hold.is_zero() {
            let done = done_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                delivery.ack(BasicAckOptions::default()).await.unwrap();
                let _ = done.send(());
            });
        } else if batch <= 1 {
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        } else if seen % batch == 0 || seen == messages {
            delivery
                .ack(BasicAckOptions { multiple: true })
                .await
                .unwrap();
        }
        if seen == messages {
            break;
        }
    }
    if !hold.is_zero() {
        drop(done_tx);
        while done_rx.recv().await.is_some() {}
    }
    let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
    let cpu = cpu_secs_of(std::process::id()) - cpu_at_first;
    let _ = conn.close(200, "done".into()).await;
    let counted = messages.saturating_sub(1) as f64;
    (counted / elapsed.as_secs_f64(), cpu * 1e6 / counted)
}

/// Declares a durable quorum queue `name`, as the worker's queues are.
async fn declare_quorum(channel: &Channel, name: &str) {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap();
}

/// User + system CPU seconds process `pid` has used so far. A figure that cannot be read
/// stops the benchmark: a 0 would print as a PASS.
fn cpu_secs_of(pid: u32) -> f64 {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 2..])
        .unwrap_or_else(|| panic!("{path}: no command name"));
    let field = |n: usize| -> f64 {
        after
            .split_whitespace()
            .nth(n)
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("{path}: field {n} unreadable"))
    };
    // utime and stime, in clock ticks (100 per second on Linux).
    (field(11) + field(12)) / 100.0
}

/// A job body like a producer's.
fn job_body(i: usize, prefix: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "to": format!("{}{:06}", &prefix[..prefix.len() - 6], i % 1_000_000),
        "type": "SignIn",
        "payload": {"code": format!("{:06}", (i * 7919) % 1_000_000), "locale": "en-US"},
        "id": format!("bench-{i}"),
    }))
    .unwrap()
}

struct Connector(std::path::PathBuf);

impl Connector {
    fn write() -> Connector {
        let path = std::env::temp_dir().join(format!(
            "sms-dispatch-bench-{}.json",
            uuid::Uuid::new_v4().simple()
        ));
        let config = json!({
            "accountSID": TEST_ACCOUNT_SID,
            "authToken": TEST_AUTH_TOKEN,
            "fromMessagingServiceSID": TEST_MESSAGING_SERVICE_SID,
            "templates": [
                {"usageType": "SignIn", "content": "Your sign-in code is {{code}}. It expires in 10 minutes."},
                {"usageType": "Generic", "content": "Your code is {{code}}"}
            ]
        });
        std::fs::write(&path, config.to_string()).unwrap();
        Connector(path)
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The worker binary, logging JSON at info to a file of its own (as a
/// deployment's log collector would read it), removed afterwards.
struct Worker {
    child: Child,
    http: String,
    log: std::path::PathBuf,
}

impl Worker {
    async fn start(
        vhost: &Vhost,
        twilio: &FakeTwilio,
        connector: &Connector,
        prefetch: u16,
        env: &[(&str, String)],
    ) -> Worker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let http = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!(
            "sms-dispatch-bench-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let wrapper = std::env::var("BENCH_WRAP").ok();
        let mut cmd = match &wrapper {
            Some(w) => {
                let mut parts = w.split_whitespace();
                let mut c = Command::new(parts.next().unwrap());
                c.args(parts).arg(worker_binary());
                c
            }
            None => Command::new(worker_binary()),
        };
        let child = cmd
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SMS_DISPATCH_CONFIG", &connector.0)
            .env("SMS_DISPATCH_AMQP_URL", &vhost.url)
            .env("SMS_DISPATCH_TWILIO_BASE_URL", twilio.base_url())
            .env("SMS_DISPATCH_HTTP_ADDR", &http)
            .env("SMS_DISPATCH_PREFETCH", prefetch.to_string())
            .env("SMS_DISPATCH_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            // The benchmark sends tens of thousands of codes to one country.
            .env("SMS_DISPATCH_COUNTRY_BUDGET_PER_HOUR", "off")
            .env("SMS_DISPATCH_LIMIT_PER_IP", "off")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            // `BENCH_ENV_NAME=value` sets NAME for the worker: to try a
            // setting (an allocator by `LD_PRELOAD`, a log level) against
            // the same run's baseline.
            .envs(
                std::env::vars()
                    .filter_map(|(k, v)| Some((k.strip_prefix("BENCH_ENV_")?.to_owned(), v))),
            )
            .stdout(Stdio::from(
                std::fs::File::create(&log).expect("the worker's log file"),
            ))
            .stderr(Stdio::null())
            .spawn()
            .expect("the worker starts");
        Worker { child, http, log }
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = client
                .get(format!("http://{}/readyz", self.http))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "the worker did not get ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the worker holds no job (`sms_in_flight` 0: every job
    /// acked, the batched acks flushed).
    async fn wait_idle(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let idle = match client
                .get(format!("http://{}/metrics", self.http))
                .send()
                .await
            {
                Ok(r) => r
                    .text()
                    .await
                    .is_ok_and(|t| t.lines().any(|l| l == "sms_in_flight 0")),
                Err(_) => false,
            };
            if idle {
                return;
            }
            assert!(Instant::now() < deadline, "the worker kept jobs in flight");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// User + system CPU seconds the worker has used so far.
    fn cpu_secs(&self) -> f64 {
        cpu_secs_of(self.child.id())
    }

    /// Peak resident set size, MiB. A figure that cannot be read stops the
    /// benchmark.
    fn peak_rss_mib(&self) -> f64 {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or_else(|| panic!("{path}: no VmHWM line"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // SIGTERM first: the worker stops gracefully (and a profiler it runs
        // under can write its report).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A fresh vhost with the topology declared, a fake Twilio answering after
/// `latency`, a connector file and a producer's channel.
struct Stage {
    vhost: Vhost,
    twilio: FakeTwilio,
    connector: Connector,
    conn: Connection,
    channel: Channel,
}

impl Stage {
    async fn new(latency: Duration) -> Stage {
        let vhost = Vhost::create();
        let twilio = FakeTwilio::start().await;
        twilio.set_latency(latency);
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        sms_dispatch::wire::declare_topology(&channel, sms_dispatch::wire::QueueType::Quorum)
            .await
            .unwrap();
        Stage {
            vhost,
            twilio,
            connector: Connector::write(),
            conn,
            channel,
        }
    }
}

struct Throughput {
    rate: f64,
    cpu_per_job_us: f64,
    peak_rss_mib: f64,
    max_in_flight: usize,
}

/// Pre-publishes `jobs`, starts the worker, and measures from the fake's
/// first request to its last answer; the worker's CPU from its first call
/// until it holds nothing (every job acked). With `bind_events`, a queue
/// bound to every outcome event stores them, as a subscribed service's would.
async fn worker_throughput(
    jobs: usize,
    prefetch: u16,
    latency: Duration,
    env: &[(&str, String)],
    bind_events: bool,
) -> Throughput {
    let Stage {
        vhost,
        twilio,
        connector,
        conn,
        channel,
    } = Stage::new(latency).await;
    if bind_events {
        channel
            .queue_declare(
                "bench.events".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                "bench.events".into(),
                "sms.events".into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let bodies: Vec<Vec<u8>> = (0..jobs).map(|i| job_body(i, "+819000000000")).collect();
    publish_all(&channel, "sms", "send", &bodies).await;

    let worker = Worker::start(&vhost, &twilio, &connector, prefetch, env).await;
    // CPU from the first Twilio call on: the start-up is not the jobs' cost.
    let mut cpu_at_first = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let n = twilio.request_count() + twilio.in_flight();
        if cpu_at_first.is_none() && n > 0 {
            cpu_at_first = Some(worker.cpu_secs());
        }
        if twilio.request_count() >= jobs {
            break;
        }
        assert!(Instant::now() < deadline, "the worker did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.wait_idle().await;
    let cpu = worker.cpu_secs() - cpu_at_first.unwrap_or(0.0);
    let requests = twilio.requests();
    // From the first request's arrival to the last answer: jobs done per second.
    let first = requests.iter().map(|r| r.at).min().unwrap();
    let last = requests.iter().map(|r| r.answered_at).max().unwrap();
    let accepted = requests.iter().filter(|r| r.status == 201).count();
    assert_eq!(accepted, jobs, "every job accepted once");
    let span = last.duration_since(first).as_secs_f64();
    let result = Throughput {
        rate: jobs as f64 / span,
        cpu_per_job_us: cpu * 1e6 / jobs as f64,
        peak_rss_mib: worker.peak_rss_mib(),
        max_in_flight: twilio.max_in_flight(),
    };
    let _ = conn.close(200, "done".into()).await;
    result
}

/// Pre-publishes `jobs`, starts `workers` workers, and measures from the
/// fake's first request to its last answer.
async fn fleet_throughput(workers: usize, jobs: usize, prefetch: u16, latency: Duration) -> f64 {
    let Stage {
        vhost,
        twilio,
        connector,
        conn,
        channel,
    } = Stage::new(latency).await;
    // Every worker consuming before the first job is published, so each
    // gets its share from the start.
    let mut fleet = Vec::with_capacity(workers);
    for _ in 0..workers {
        let worker = Worker::start(&vhost, &twilio, &connector, prefetch, &[]).await;
        worker.wait_ready().await;
        fleet.push(worker);
    }
    let bodies: Vec<Vec<u8>> = (0..jobs).map(|i| job_body(i, "+819100000000")).collect();
    publish_all(&channel, "sms", "send", &bodies).await;
    let deadline = Instant::now() + Duration::from_secs(600);
    while twilio.request_count() < jobs {
        assert!(Instant::now() < deadline, "the fleet did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let requests = twilio.requests();
    let accepted = requests.iter().filter(|r| r.status == 201).count();
    assert_eq!(accepted, jobs, "every job accepted once");
    let first = requests.iter().map(|r| r.at).min().unwrap();
    let last = requests.iter().map(|r| r.answered_at).max().unwrap();
    drop(fleet);
    let _ = conn.close(200, "done".into()).await;
    jobs as f64 / last.duration_since(first).as_secs_f64()
}

struct Latency {
    jobs: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    peak_rss_mib: f64,
}

impl Latency {
    /// The percentiles of `latencies` (ms, one per request seen) of `jobs`
    /// jobs.
    fn of(jobs: usize, mut latencies: Vec<f64>, peak_rss_mib: f64) -> Latency {
        latencies.sort_by(f64::total_cmp);
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        Latency {
            jobs,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: *latencies.last().unwrap(),
            peak_rss_mib,
        }
    }
}

/// The broker's share of the latency: messages published at `rate`/s (with
/// confirms, as the latency run does) to a quorum queue, each timed from
/// publish to its delivery to a consumer that does no work but ack it.
async fn broker_latency(rate: u64, secs: u64, prefetch: u16) -> Latency {
    let vhost = Vhost::create();
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    declare_quorum(&channel, "bench.latency").await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let consumer_conn = vhost.connect().await;
    let consume = consumer_conn.create_channel().await.unwrap();
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consume
        .basic_consume(
            "bench.latency".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let jobs = (rate * secs) as usize;
    let received = tokio::spawn(async move {
        let mut at = vec![None; jobs];
        let mut seen = 0;
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery.unwrap();
            let now = Instant::now();
            let i: usize = delivery
                .properties
                .message_id()
                .as_ref()
                .and_then(|id| id.as_str().parse().ok())
                .unwrap();
            at[i] = Some(now);
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            seen += 1;
            if seen == jobs {
                break;
            }
        }
        at
    });
    let sent_at = publish_paced(&channel, "", "bench.latency", jobs, rate, |i| {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(i.to_string().into())
    })
    .await;
    let at = tokio::time::timeout(Duration::from_secs(120), received)
        .await
        .expect("the consumer did not receive every message")
        .unwrap();
    let latencies: Vec<f64> = at
        .iter()
        .zip(&sent_at)
        .map(|(got, sent)| got.unwrap().duration_since(*sent).as_secs_f64() * 1e3)
        .collect();
    let result = Latency::of(jobs, latencies, 0.0);
    let _ = consumer_conn.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    result
}

/// Publishes `jobs` job bodies at a steady `rate` per second, each with
/// `properties(i)`, waits for every confirm, and returns when each was
/// published (index `i` is job `i`).
async fn publish_paced(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    jobs: usize,
    rate: u64,
    properties: impl Fn(usize) -> BasicProperties,
) -> Vec<Instant> {
    let mut sent_at = Vec::with_capacity(jobs);
    let mut confirms = Vec::with_capacity(jobs);
    let start = tokio::time::Instant::now();
    for i in 0..jobs {
        tokio::time::sleep_until(start + Duration::from_micros(i as u64 * 1_000_000 / rate)).await;
        let body = job_body(i, "+819100000000");
        sent_at.push(Instant::now());
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &body,
                properties(i),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
    sent_at
}

/// Publishes at `rate` jobs/s to a ready worker and measures each job from
/// publish to the fake's receipt.
async fn latency_at_rate(rate: u64, secs: u64, prefetch: u16) -> Latency {
    let Stage {
        vhost,
        twilio,
        connector,
        conn,
        channel,
    } = Stage::new(Duration::ZERO).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let worker = Worker::start(&vhost, &twilio, &connector, prefetch, &[]).await;
    worker.wait_ready().await;

    let jobs = (rate * secs) as usize;
    let sent_at = publish_paced(&channel, "sms", "send", jobs, rate, |_| {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while twilio.request_count() < jobs {
        assert!(Instant::now() < deadline, "the worker did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let latencies: Vec<f64> = twilio
        .requests()
        .iter()
        .map(|r| {
            // The job's index is the number's last six digits.
            let i: usize = r.to()[r.to().len() - 6..].parse().unwrap();
            r.at.duration_since(sent_at[i]).as_secs_f64() * 1e3
        })
        .collect();
    let result = Latency::of(jobs, latencies, worker.peak_rss_mib());
    let _ = conn.close(200, "done".into()).await;
    result
}
