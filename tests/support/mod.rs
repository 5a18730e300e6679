//! Shared test support: a private vhost on the real broker, the real worker
//! binary as a child process, test jobs, and the log scan every integration
//! test runs.
//!
//! Every test creates its own vhost, so tests run in parallel without seeing
//! each other's queues. Every worker's stdout is captured; when the worker
//! handle is dropped (or `finish` is called) its logs are scanned: each line
//! must be JSON and none may contain a verification code, a secret or an
//! unmasked phone number.
#![allow(dead_code)]

pub(crate) mod fake_twilio;

use std::collections::HashSet;
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};

pub(crate) use fake_twilio::*;

/// The worker binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_sms-dispatch");

/// Runs `fut` and fails the test if it takes longer than `secs`.
pub(crate) async fn within<F: Future>(secs: u64, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(out) => out,
        Err(_) => panic!("test deadline of {secs} s passed"),
    }
}

/// Checks `check` every 50 ms until it yields a value; panics with `what`
/// when `deadline` passes. A wait on a condition, not a sleep.
pub(crate) async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > deadline {
            panic!("waited {deadline:?} for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- secrets

/// Every code and number a test job used: no log line may contain them.
fn forbidden() -> &'static Mutex<HashSet<String>> {
    static FORBIDDEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    FORBIDDEN.get_or_init(|| {
        let mut set = HashSet::new();
        set.insert(TEST_AUTH_TOKEN.to_owned());
        set.insert(TEST_API_SECRET.to_owned());
        Mutex::new(set)
    })
}

fn forbid(value: &str) {
    forbidden().lock().unwrap().insert(value.to_owned());
}

/// A fresh six-digit code, remembered as forbidden in logs.
pub(crate) fn code() -> String {
    loop {
        let c = format!("{:06}", fastrand::u32(100_000..1_000_000));
        if !forbidden().lock().unwrap().contains(&c) {
            forbid(&c);
            return c;
        }
    }
}

/// Scans log lines: JSON when `json`, and no code, secret or unmasked
/// number. Returns the problems found.
pub(crate) fn scan_logs(lines: &[String], json_lines: bool) -> Vec<String> {
    let forbidden = forbidden().lock().unwrap().clone();
    let mut problems = Vec::new();
    for line in lines {
        if json_lines && serde_json::from_str::<Value>(line).is_err() {
            problems.push(format!("not JSON: {line}"));
        }
        for secret in &forbidden {
            if contains_token(line, secret) {
                problems.push(format!("contains a code, secret or number: {line}"));
            }
        }
        if has_unmasked_number(line) {
            problems.push(format!("contains an unmasked phone number: {line}"));
        }
    }
    problems
}

/// Whether `needle` occurs in `line` as a token of its own, not glued to
/// letters, digits or a decimal point: a code's six digits occur by chance
/// inside a UUID, a timestamp's fraction or a longer number, and that is not
/// the code. (A leak looks like `is 123456`, `"123456"`, `=123456&`.)
fn contains_token(line: &str, needle: &str) -> bool {
    let numeric = needle.bytes().all(|b| b.is_ascii_digit());
    line.match_indices(needle).any(|(i, _)| {
        if !numeric {
            return true;
        }
        let before = line[..i].bytes().next_back();
        let after = line[i + needle.len()..].bytes().next();
        !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'.')
            && !after.is_some_and(|b| b.is_ascii_alphanumeric())
    })
}

/// `+` followed by seven or more digits: an E.164 number that was not masked.
fn has_unmasked_number(line: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.iter().enumerate().any(|(i, b)| {
        *b == b'+'
            && bytes[i + 1..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count()
                >= 7
    })
}

// ---------------------------------------------------------------- jobs

/// A test job: a number, a type, a fresh code.
#[derive(Debug, Clone)]
pub(crate) struct TestJob {
    pub id: String,
    pub to: String,
    pub kind: String,
    pub code: String,
    pub payload: serde_json::Map<String, Value>,
    pub expires_at: Option<SystemTime>,
}

impl TestJob {
    pub(crate) fn new(to: &str, kind: &str) -> TestJob {
        forbid(to);
        forbid(to.trim_start_matches('+'));
        let code = code();
        let mut payload = serde_json::Map::new();
        payload.insert("code".to_owned(), json!(code));
        TestJob {
            id: uuid::Uuid::new_v4().to_string(),
            to: to.to_owned(),
            kind: kind.to_owned(),
            code,
            payload,
            expires_at: Some(SystemTime::now() + Duration::from_secs(600)),
        }
    }

    pub(crate) fn locale(mut self, locale: &str) -> TestJob {
        self.payload.insert("locale".to_owned(), json!(locale));
        self
    }

    pub(crate) fn var(mut self, key: &str, value: Value) -> TestJob {
        self.payload.insert(key.to_owned(), value);
        self
    }

    pub(crate) fn expires_in(mut self, d: Duration) -> TestJob {
        self.expires_at = Some(SystemTime::now() + d);
        self
    }

    pub(crate) fn expired(mut self) -> TestJob {
        self.expires_at = Some(SystemTime::now() - Duration::from_secs(1));
        self
    }

    pub(crate) fn body(&self) -> Vec<u8> {
        let mut job = json!({
            "to": self.to,
            "type": self.kind,
            "payload": self.payload,
            "id": self.id,
        });
        if let Some(at) = self.expires_at {
            job["expires_at"] = json!(sms_dispatch::wire::format_rfc3339(at));
        }
        serde_json::to_vec(&job).unwrap()
    }
}

/// A test phone number: +1 555 0100 xxxx style, unique per call.
pub(crate) fn number() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let unique = fastrand::u32(0..10_000);
    format!("+8190{:04}{:04}", unique, n % 10_000)
}

// ---------------------------------------------------------------- broker

/// A private vhost on the shared broker, deleted on drop.
pub(crate) struct Vhost {
    pub name: String,
    pub url: String,
    node: Option<String>,
}

/// Runs rabbitmqctl (against `node` when given) and returns stdout.
pub(crate) fn rabbitmqctl(node: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("rabbitmqctl");
    if let Some(node) = node {
        cmd.args(["-n", node]);
    }
    let out = cmd.args(args).output().expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Vhost {
    /// A new vhost on the default node (127.0.0.1:5672).
    pub(crate) fn create() -> Vhost {
        Vhost::create_on(None, 5672)
    }

    /// A new vhost on `node`, whose AMQP port is `port`.
    pub(crate) fn create_on(node: Option<&str>, port: u16) -> Vhost {
        let name = format!("t-{}", uuid::Uuid::new_v4().simple());
        rabbitmqctl(node, &["add_vhost", &name]);
        rabbitmqctl(
            node,
            &["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"],
        );
        Vhost {
            url: format!("amqp://guest:guest@127.0.0.1:{port}/{name}"),
            name,
            node: node.map(str::to_owned),
        }
    }

    pub(crate) async fn connect(&self) -> Connection {
        Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("connect to the test vhost")
    }

    /// A confirm-mode publisher, with the topology declared.
    pub(crate) async fn publisher(&self, conn: &Connection) -> sms_dispatch::wire::Publisher {
        let p = sms_dispatch::wire::Publisher::open(conn).await.unwrap();
        sms_dispatch::wire::declare_topology(p.channel(), sms_dispatch::wire::QueueType::Quorum)
            .await
            .unwrap();
        p
    }

    /// Publishes `jobs` on a connection of its own, then closes it.
    pub(crate) async fn publish_all(&self, jobs: &[TestJob]) {
        let conn = self.connect().await;
        let publisher = self.publisher(&conn).await;
        for job in jobs {
            publish(&publisher, job).await;
        }
        let _ = conn.close(200, "published".into()).await;
    }

    /// The number of messages ready in `queue`, exactly (a passive declare;
    /// `rabbitmqctl list_queues` lags a second behind for quorum queues).
    pub(crate) async fn ready(&self, queue: &str) -> u32 {
        let conn = self.connect().await;
        let channel = conn.create_channel().await.unwrap();
        let n = ready(&channel, queue).await;
        let _ = conn.close(200, "counted".into()).await;
        n
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let mut cmd = Command::new("rabbitmqctl");
        if let Some(node) = &self.node {
            cmd.args(["-n", node]);
        }
        let _ = cmd
            .args(["delete_vhost", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Publishes a test job to `sms`/`send` as a producer would.
pub(crate) async fn publish(p: &sms_dispatch::wire::Publisher, job: &TestJob) {
    p.publish_job(&job.id, &job.body(), FieldTable::default())
        .await
        .expect("job published");
}

/// Publishes any bytes to `sms`/`send` (for malformed jobs).
pub(crate) async fn publish_raw(channel: &Channel, body: &[u8], properties: BasicProperties) {
    channel
        .basic_publish(
            "sms".into(),
            "send".into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// A message taken from a queue (and acked).
#[derive(Debug, Clone)]
pub(crate) struct Taken {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl Taken {
    pub(crate) fn header_str(&self, name: &str) -> Option<String> {
        sms_dispatch::wire::header_str(self.properties.headers().as_ref(), name).map(str::to_owned)
    }

    pub(crate) fn header_i64(&self, name: &str) -> Option<i64> {
        sms_dispatch::wire::header_i64(self.properties.headers().as_ref(), name)
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Takes every message from `queue` (acking them).
pub(crate) async fn take_all(channel: &Channel, queue: &str) -> Vec<Taken> {
    let mut out = Vec::new();
    while let Some(m) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
    {
        out.push(Taken {
            body: m.delivery.data.clone(),
            properties: m.delivery.properties.clone(),
        });
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    out
}

/// Takes messages from `queue` until at least `n` arrived; panics after
/// `deadline`.
pub(crate) async fn take_at_least(
    channel: &Channel,
    queue: &str,
    n: usize,
    deadline: Duration,
) -> Vec<Taken> {
    let start = tokio::time::Instant::now();
    let mut got = Vec::new();
    loop {
        got.extend(take_all(channel, queue).await);
        if got.len() >= n {
            return got;
        }
        assert!(
            start.elapsed() < deadline,
            "waited {deadline:?} for {n} messages in {queue}; got {}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ready-message count of a queue, via a passive declare.
pub(crate) async fn ready(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("counting {queue}: {e}"))
        .message_count()
}

// ---------------------------------------------------------------- config

/// A config file in the temp dir, removed on drop.
pub(crate) struct ConfigFile(pub PathBuf);

impl ConfigFile {
    pub(crate) fn write(ext: &str, text: &str) -> ConfigFile {
        let path = std::env::temp_dir().join(format!(
            "sms-dispatch-test-{}.{ext}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        ConfigFile(path)
    }

    /// Logto's Twilio connector JSON with the fake's credentials and these
    /// templates (type, locale, content).
    pub(crate) fn logto(templates: &[(&str, Option<&str>, &str)]) -> ConfigFile {
        let templates: Vec<Value> = templates
            .iter()
            .map(|(kind, locale, content)| {
                let mut t = json!({"usageType": kind, "content": content});
                if let Some(l) = locale {
                    t["locale"] = json!(l);
                }
                t
            })
            .collect();
        let config = json!({
            "accountSID": TEST_ACCOUNT_SID,
            "authToken": TEST_AUTH_TOKEN,
            "fromMessagingServiceSID": TEST_MESSAGING_SERVICE_SID,
            "templates": templates,
        });
        ConfigFile::write("json", &config.to_string())
    }

    /// A Logto config with one template per type.
    pub(crate) fn full() -> ConfigFile {
        ConfigFile::logto(&[
            ("SignIn", None, "Your sign-in code is {{code}}"),
            ("Register", None, "Welcome! Your code is {{code}}"),
            ("ForgotPassword", None, "Reset code: {{code}}"),
            ("Generic", None, "Your code is {{code}}"),
        ])
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------- worker

/// How to start a worker.
pub(crate) struct WorkerOptions<'a> {
    pub amqp_url: &'a str,
    pub config: &'a ConfigFile,
    pub twilio: Option<&'a FakeTwilio>,
    pub prefetch: u16,
    pub args: Vec<&'a str>,
    pub env: Vec<(&'a str, String)>,
}

impl<'a> WorkerOptions<'a> {
    pub(crate) fn new(amqp_url: &'a str, config: &'a ConfigFile, twilio: &'a FakeTwilio) -> Self {
        WorkerOptions {
            amqp_url,
            config,
            twilio: Some(twilio),
            prefetch: 16,
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// The worker binary, running, with its stdout captured.
pub(crate) struct WorkerProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    pub http: SocketAddr,
    client: reqwest::Client,
    scanned: bool,
}

impl WorkerProcess {
    /// Starts `sms-dispatch run` and waits until its HTTP listener is up.
    pub(crate) async fn start(options: WorkerOptions<'_>) -> WorkerProcess {
        let mut cmd = Command::new(BIN);
        // A clean environment: nothing from the developer's shell (an API
        // key, a From number) changes what the worker does.
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .arg("run")
            .args(&options.args)
            .env("SMS_DISPATCH_CONFIG", &options.config.0)
            .env("SMS_DISPATCH_AMQP_URL", options.amqp_url)
            .env("SMS_DISPATCH_HTTP_ADDR", "127.0.0.1:0")
            .env("SMS_DISPATCH_PREFETCH", options.prefetch.to_string())
            .env("SMS_DISPATCH_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(twilio) = options.twilio {
            cmd.env("SMS_DISPATCH_TWILIO_BASE_URL", twilio.base_url());
        }
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the worker binary starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = Arc::clone(&lines);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            }));
        }
        let mut worker = WorkerProcess {
            child,
            lines,
            readers,
            http: "0.0.0.0:0".parse().unwrap(),
            client: reqwest::Client::new(),
            scanned: false,
        };
        let addr = worker
            .wait_log(Duration::from_secs(20), "the HTTP listener", |v| {
                (v["message"] == "http listening")
                    .then(|| v["addr"].as_str().map(str::to_owned))
                    .flatten()
            })
            .await;
        worker.http = addr.parse().unwrap();
        worker
    }

    /// Starts a worker and waits until `/readyz` says ready.
    pub(crate) async fn start_ready(options: WorkerOptions<'_>) -> WorkerProcess {
        let worker = WorkerProcess::start(options).await;
        worker.wait_ready(Duration::from_secs(20)).await;
        worker
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line logged so far.
    pub(crate) fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every JSON log line so far.
    pub(crate) fn json_logs(&self) -> Vec<Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until some log line satisfies `pick`.
    pub(crate) async fn wait_log<T>(
        &mut self,
        deadline: Duration,
        what: &str,
        pick: impl Fn(&Value) -> Option<T>,
    ) -> T {
        let lines = Arc::clone(&self.lines);
        let child = &mut self.child;
        eventually(deadline, what, || {
            let found = lines
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find_map(|v| pick(&v));
            if found.is_none()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "the worker exited ({status}) while waiting for {what}; its output:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
            std::future::ready(found)
        })
        .await
    }

    /// `GET /readyz`: the status code and the JSON body.
    pub(crate) async fn readyz(&self) -> (u16, Value) {
        let r = self
            .client
            .get(format!("http://{}/readyz", self.http))
            .send()
            .await
            .expect("readyz answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn wait_ready(&self, deadline: Duration) {
        eventually(deadline, "the worker to be ready", || async {
            (self.readyz().await.0 == 200).then_some(())
        })
        .await;
    }

    /// The `/metrics` text (classic format).
    pub(crate) async fn metrics(&self) -> String {
        self.client
            .get(format!("http://{}/metrics", self.http))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .unwrap()
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        signal(self.child.id(), "TERM");
    }

    /// Sends SIGKILL.
    pub(crate) fn kill9(&self) {
        signal(self.child.id(), "KILL");
    }

    /// Waits for the process to exit.
    pub(crate) async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let child = &mut self.child;
        eventually(deadline, "the worker to exit", || {
            std::future::ready(child.try_wait().unwrap())
        })
        .await
    }

    /// Stops the worker gracefully (SIGTERM), waits for it to exit and for
    /// all its output, scans every line, and returns the JSON lines.
    pub(crate) async fn finish(mut self) -> Vec<Value> {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
            let status = self.wait_exit(Duration::from_secs(30)).await;
            assert!(
                status.success(),
                "the worker exited with {status} on SIGTERM"
            );
        }
        self.drain_output();
        self.scan();
        self.json_logs()
    }

    /// Waits until the output readers have read everything (the process
    /// has exited, so its pipes are closed).
    fn drain_output(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    fn scan(&mut self) {
        if self.scanned {
            return;
        }
        self.scanned = true;
        let problems = scan_logs(&self.logs(), true);
        assert!(
            problems.is_empty(),
            "the worker's logs broke the rules:\n{}",
            problems.join("\n")
        );
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.drain_output();
        if std::thread::panicking() {
            // Show what the worker said, to explain the failure.
            let lines = self.logs();
            if let Ok(path) = std::env::var("SMS_DISPATCH_TEST_LOG_DUMP") {
                let _ = std::fs::write(path, lines.join("\n"));
            }
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "--- the worker's last {} log lines ---\n{}",
                tail.len(),
                tail.join("\n")
            );
        } else {
            self.scan();
        }
    }
}

/// A worker on its own vhost with a fake Twilio, and a producer's connection.
/// Fields drop in order: the worker stops before its vhost goes.
pub(crate) struct TestBed {
    pub worker: WorkerProcess,
    pub publisher: sms_dispatch::wire::Publisher,
    pub channel: Channel,
    pub conn: Connection,
    pub twilio: FakeTwilio,
    pub config: ConfigFile,
    pub vhost: Vhost,
}

impl TestBed {
    /// Starts everything with the default options and waits until ready.
    pub(crate) async fn start(config: ConfigFile) -> TestBed {
        TestBed::start_with(config, FakeTwilio::start().await, |_| {}).await
    }

    /// Starts everything, letting `tweak` adjust the worker's options.
    pub(crate) async fn start_with(
        config: ConfigFile,
        twilio: FakeTwilio,
        tweak: impl FnOnce(&mut WorkerOptions<'_>),
    ) -> TestBed {
        let vhost = Vhost::create();
        let mut options = WorkerOptions::new(&vhost.url, &config, &twilio);
        tweak(&mut options);
        let worker = WorkerProcess::start_ready(options).await;
        let conn = vhost.connect().await;
        let publisher = vhost.publisher(&conn).await;
        let channel = conn.create_channel().await.unwrap();
        TestBed {
            worker,
            publisher,
            channel,
            conn,
            twilio,
            config,
            vhost,
        }
    }

    pub(crate) async fn publish(&self, job: &TestJob) {
        publish(&self.publisher, job).await;
    }

    /// Takes dead letters until there are `n`.
    pub(crate) async fn dead_letters(&self, n: usize, deadline: Duration) -> Vec<Taken> {
        take_at_least(&self.channel, "sms.dead", n, deadline).await
    }

    /// Waits until sms.send has nothing ready and the worker holds nothing
    /// (`sms_in_flight` is 0: every delivery it took was acked or put back).
    pub(crate) async fn wait_drained(&self, deadline: Duration) {
        wait_drained(&self.channel, &self.worker, deadline).await;
    }
}

/// Waits until `sms.send` has nothing ready and `worker` holds nothing.
pub(crate) async fn wait_drained(channel: &Channel, worker: &WorkerProcess, deadline: Duration) {
    let start = tokio::time::Instant::now();
    loop {
        let in_flight = metric(&worker.metrics().await, "sms_in_flight", "");
        let ready = ready(channel, "sms.send").await;
        if in_flight == Some(0.0) && ready == 0 {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "waited {deadline:?} for sms.send to drain: {ready} ready, {in_flight:?} in flight"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// Reads one sample from classic-format metrics text: `name{labels} value`,
/// with `labels` exactly as printed (empty for none).
pub(crate) fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let series = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines().find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().ok()).flatten()
    })
}

/// Runs the binary with `args` and `env` and returns (exit code, stdout, stderr).
pub(crate) fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("SMS_DISPATCH_CONFIG")
        .env("SMS_DISPATCH_LOG_FORMAT", "json");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------- a broker of its own

/// A RabbitMQ node of the test's own (its own ports, data and logs under
/// /tmp), for tests that stop and start the broker without disturbing the
/// shared one. Stopped and removed on drop.
pub(crate) struct BrokerNode {
    pub node: String,
    pub port: u16,
    base: PathBuf,
}

impl BrokerNode {
    /// Starts `name@localhost` with AMQP on `port` and distribution on
    /// `dist_port`, and waits until it runs (about ten seconds).
    pub(crate) fn start(name: &str, port: u16, dist_port: u16) -> BrokerNode {
        let node = format!("{name}@localhost");
        // A node left over by an aborted run would hold the ports.
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &node, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let base = std::env::temp_dir().join(format!("sms-dispatch-{name}"));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("mnesia")).unwrap();
        std::fs::create_dir_all(base.join("log")).unwrap();
        std::fs::write(
            base.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .unwrap();
        std::fs::write(base.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(base.join("rabbitmq-env.conf"), format!("NODENAME={node}\n")).unwrap();
        // The server drops to the rabbitmq user, which must own its files.
        let chown = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&base)
            .status()
            .expect("chown runs");
        assert!(chown.success(), "chown of {} failed", base.display());
        let path = |p: &str| base.join(p).display().to_string();
        let started = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_PID_FILE", path("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf"))
            .status()
            .expect("rabbitmq-server runs");
        assert!(started.success(), "rabbitmq-server -detached failed");
        let broker = BrokerNode { node, port, base };
        broker.wait_running(Duration::from_secs(90));
        broker
    }

    /// Waits until the node's broker application runs.
    pub(crate) fn wait_running(&self, deadline: Duration) {
        let start = std::time::Instant::now();
        loop {
            let ok = Command::new("rabbitmqctl")
                .args(["-n", &self.node, "await_startup", "--timeout", "10"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                start.elapsed() < deadline,
                "the broker node {} did not start within {deadline:?}",
                self.node
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Stops the broker application (connections drop, durable data stays).
    pub(crate) fn stop_app(&self) {
        rabbitmqctl(Some(&self.node), &["stop_app"]);
    }

    /// Starts the broker application again and waits until it runs.
    pub(crate) fn start_app(&self) {
        rabbitmqctl(Some(&self.node), &["start_app"]);
        self.wait_running(Duration::from_secs(60));
    }

    /// A private vhost on this node.
    pub(crate) fn vhost(&self) -> Vhost {
        Vhost::create_on(Some(&self.node), self.port)
    }
}

impl Drop for BrokerNode {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
