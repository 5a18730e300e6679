//! The load benchmark: the real worker binary against the real RabbitMQ and
//! an in-process fake Twilio, side by side with the broker's own limit,
//! measured in one run on this machine. It prints figures and PASS/FAIL
//! against the targets; it never fails a build on a figure.
//!
//! `cargo bench --bench load` runs the full benchmark; `-- --quick` runs a few
//! hundred jobs only to prove it still works (CI does that). To profile the
//! worker, set `BENCH_WRAP` to a command to run it under, e.g.
//! `BENCH_WRAP="valgrind --tool=massif"` (it is stopped with SIGTERM, so the
//! profiler writes its report).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use fake_twilio::{FakeTwilio, TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, TEST_MESSAGING_SERVICE_SID};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::json;

const WORKER: &str = env!("CARGO_BIN_EXE_sms-dispatch");

/// How big each measurement is.
struct Sizes {
    /// Jobs for the instant-Twilio run and the broker-limit run.
    instant_jobs: usize,
    /// Jobs for the 200 ms run.
    slow_jobs: usize,
    /// Seconds of 1,000 jobs/s for the latency run.
    latency_secs: u64,
    /// Jobs per worker for each fleet run.
    fleet_jobs_per_worker: usize,
    /// Runs per fleet size (the median is reported).
    fleet_runs: usize,
}

/// The fleet's Redis for the Redis run (CI and this machine run one here).
const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// The targets of the issue, and the settings they are measured with.
const INSTANT_PREFETCH: u16 = 64;
const SLOW_PREFETCH: u16 = 500;
const TWILIO_LATENCY: Duration = Duration::from_millis(200);
const OFFERED_RATE: u64 = 1_000;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = if quick {
        Sizes {
            instant_jobs: 300,
            slow_jobs: 300,
            latency_secs: 1,
            fleet_jobs_per_worker: 100,
            fleet_runs: 1,
        }
    } else {
        Sizes {
            instant_jobs: 20_000,
            slow_jobs: 12_000,
            latency_secs: 10,
            fleet_jobs_per_worker: 1_600,
            fleet_runs: 3,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(sizes, quick));
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
    println!();

    // 1. The broker's own limit: publish, then consume with per-message acks,
    //    the same prefetch and queue type, doing no work.
    let limit = broker_limit(sizes.instant_jobs, INSTANT_PREFETCH).await;
    println!(
        "broker limit      {:>8.0} msg/s   ({} messages, prefetch {}, per-message acks)",
        limit, sizes.instant_jobs, INSTANT_PREFETCH
    );

    // 2. The worker with a Twilio that answers at once.
    let instant =
        worker_throughput(sizes.instant_jobs, INSTANT_PREFETCH, Duration::ZERO, &[]).await;
    println!(
        "worker, instant   {:>8.0} jobs/s  ({} jobs, prefetch {}; {:.0}% of the broker limit)",
        instant.rate,
        sizes.instant_jobs,
        INSTANT_PREFETCH,
        100.0 * instant.rate / limit
    );
    println!(
        "  worker CPU      {:>8.1} µs/job   peak RSS {:.1} MiB",
        instant.cpu_per_job_us, instant.peak_rss_mib
    );

    // 3. The worker with a Twilio that takes 200 ms per call.
    let slow = worker_throughput(sizes.slow_jobs, SLOW_PREFETCH, TWILIO_LATENCY, &[]).await;
    let slow_target = 0.9 * f64::from(SLOW_PREFETCH) / TWILIO_LATENCY.as_secs_f64();
    println!(
        "worker, 200 ms    {:>8.0} jobs/s  ({} jobs, prefetch {}; bound {:.0}/s; max in flight {})",
        slow.rate,
        sizes.slow_jobs,
        SLOW_PREFETCH,
        f64::from(SLOW_PREFETCH) / TWILIO_LATENCY.as_secs_f64(),
        slow.max_in_flight
    );
    println!(
        "  worker CPU      {:>8.1} µs/job   peak RSS {:.1} MiB",
        slow.cpu_per_job_us, slow.peak_rss_mib
    );

    // 4. End-to-end latency at a fixed offered rate.
    let latency = latency_at_rate(OFFERED_RATE, sizes.latency_secs, INSTANT_PREFETCH).await;
    println!(
        "latency at {}/s  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} jobs, publish → Twilio receives)",
        OFFERED_RATE, latency.p50_ms, latency.p99_ms, latency.max_ms, latency.jobs
    );
    println!("  worker peak RSS {:.1} MiB", latency.peak_rss_mib);
    let peak_rss = instant
        .peak_rss_mib
        .max(slow.peak_rss_mib)
        .max(latency.peak_rss_mib);

    // 5. What the fleet's Redis costs per job: the instant run again with
    //    Redis, against the run above as the baseline of this same run.
    let redis_env = [
        ("SMS_DISPATCH_REDIS_URL", REDIS_URL.to_owned()),
        (
            "SMS_DISPATCH_REDIS_PREFIX",
            format!("sms-dispatch-bench-{}:", fastrand::u64(..)),
        ),
    ];
    let with_redis = worker_throughput(
        sizes.instant_jobs,
        INSTANT_PREFETCH,
        Duration::ZERO,
        &redis_env,
    )
    .await;
    println!(
        "worker + Redis    {:>8.0} jobs/s  ({:.1} µs/job worker CPU; without Redis {:.0} jobs/s, {:.1} µs/job)",
        with_redis.rate, with_redis.cpu_per_job_us, instant.rate, instant.cpu_per_job_us
    );

    // 6. A fleet: 1, 2 and 4 workers with Twilio at 200 ms and the default
    //    prefetch, the median of several runs each.
    println!(
        "fleet, 200 ms, prefetch {}, median of {} run(s) [min–max]:",
        INSTANT_PREFETCH, sizes.fleet_runs
    );
    let mut one_worker = None;
    for workers in [1usize, 2, 4] {
        let mut rates = Vec::new();
        for _ in 0..sizes.fleet_runs {
            let jobs = sizes.fleet_jobs_per_worker * workers;
            rates.push(fleet_throughput(workers, jobs, INSTANT_PREFETCH, TWILIO_LATENCY).await);
        }
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        let base = *one_worker.get_or_insert(median);
        println!(
            "  {workers} worker(s)   {:>8.0} jobs/s  [{:.0}–{:.0}]  {:.2} × ({workers} × one worker)",
            median,
            rates[0],
            rates[rates.len() - 1],
            median / (base * workers as f64)
        );
    }

    println!();
    println!("targets:");
    let check = |ok: bool, what: String| {
        println!("  {}  {what}", if ok { "PASS" } else { "FAIL" });
    };
    check(
        instant.rate >= 0.6 * limit,
        format!(
            "instant Twilio: {:.0} jobs/s ≥ 0.6 × broker limit {:.0} = {:.0} (ratio {:.2})",
            instant.rate,
            limit,
            0.6 * limit,
            instant.rate / limit
        ),
    );
    check(
        slow.rate >= slow_target,
        format!(
            "200 ms Twilio: {:.0} jobs/s ≥ 0.9 × ({} ÷ 0.2 s) = {:.0}",
            slow.rate, SLOW_PREFETCH, slow_target
        ),
    );
    check(
        latency.p99_ms <= 5.0,
        format!(
            "p99 latency at {OFFERED_RATE}/s: {:.2} ms ≤ 5 ms",
            latency.p99_ms
        ),
    );
    check(
        instant.cpu_per_job_us <= 60.0,
        format!("worker CPU: {:.1} µs/job ≤ 60 µs", instant.cpu_per_job_us),
    );
    check(
        peak_rss <= 40.0,
        format!("worker peak RSS: {peak_rss:.1} MiB ≤ 40 MiB"),
    );
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

async fn broker_limit(messages: usize, prefetch: u16) -> f64 {
    let vhost = Vhost::create();
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            "bench.limit".into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap();
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
    let mut first = None;
    let mut seen = 0;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.unwrap();
        first.get_or_insert_with(Instant::now);
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        seen += 1;
        if seen == messages {
            break;
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
    let _ = conn.close(200, "done".into()).await;
    (messages.saturating_sub(1)) as f64 / elapsed.as_secs_f64()
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

/// The worker binary, its output discarded.
struct Worker {
    child: Child,
    http: String,
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
        let wrapper = std::env::var("BENCH_WRAP").ok();
        let mut cmd = match &wrapper {
            Some(w) => {
                let mut parts = w.split_whitespace();
                let mut c = Command::new(parts.next().unwrap());
                c.args(parts).arg(WORKER);
                c
            }
            None => Command::new(WORKER),
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
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the worker starts");
        Worker { child, http }
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

    /// User + system CPU seconds so far. A figure that cannot be read
    /// stops the benchmark: a 0 would print as a PASS.
    fn cpu_secs(&self) -> f64 {
        let path = format!("/proc/{}/stat", self.child.id());
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
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
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
/// first request to its last.
async fn worker_throughput(
    jobs: usize,
    prefetch: u16,
    latency: Duration,
    env: &[(&str, String)],
) -> Throughput {
    let Stage {
        vhost,
        twilio,
        connector,
        conn,
        channel,
    } = Stage::new(latency).await;
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
    let mut sent_at = Vec::with_capacity(jobs);
    let mut confirms = Vec::with_capacity(jobs);
    let start = tokio::time::Instant::now();
    for i in 0..jobs {
        tokio::time::sleep_until(start + Duration::from_micros(i as u64 * 1_000_000 / rate)).await;
        let body = job_body(i, "+819100000000");
        sent_at.push(Instant::now());
        let confirm = channel
            .basic_publish(
                "sms".into(),
                "send".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while twilio.request_count() < jobs {
        assert!(Instant::now() < deadline, "the worker did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut latencies: Vec<f64> = twilio
        .requests()
        .iter()
        .map(|r| {
            // The job's index is the number's last six digits.
            let i: usize = r.to()[r.to().len() - 6..].parse().unwrap();
            r.at.duration_since(sent_at[i]).as_secs_f64() * 1e3
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let result = Latency {
        jobs,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: *latencies.last().unwrap(),
        peak_rss_mib: worker.peak_rss_mib(),
    };
    let _ = conn.close(200, "done".into()).await;
    result
}
