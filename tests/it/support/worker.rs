//! The worker binary as a child process: started on a vhost with a fake
//! Twilio, its logs captured and scanned, its health and metrics read over
//! HTTP.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_twilio::FakeTwilio;
use lapin::{Channel, Connection};
use serde_json::Value;

use super::broker::{Taken, Vhost, publish, ready, take_at_least};
use super::config::{ConfigFile, secret};
use super::jobs::TestJob;
use super::logs::scan_logs;
use super::{BIN, eventually};

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
            // Abuse limits off unless a test is about them (it sets its own):
            // other tests send thousands of codes to one country.
            .env("SMS_DISPATCH_LIMIT_PER_NUMBER", "off")
            .env("SMS_DISPATCH_LIMIT_PER_IP", "off")
            .env("SMS_DISPATCH_COUNTRY_BUDGET_PER_HOUR", "off")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(twilio) = options.twilio {
            cmd.env("SMS_DISPATCH_TWILIO_BASE_URL", twilio.base_url());
        }
        for (k, v) in &options.env {
            if SECRET_VARS.contains(k) {
                secret(v);
            }
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
            readers.push(std::thread::spawn(move || read_lines(stream, &lines)));
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
                // Read before the panic: a panic while the lock is held would
                // poison it, and the handle's drop, which reads the lines
                // again, would then abort the whole test binary.
                let output = lines.lock().unwrap().join("\n");
                panic!(
                    "the worker exited ({status}) while waiting for {what}; its output:\n{output}"
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

    /// Sends SIGINT (Ctrl-C).
    pub(crate) fn interrupt(&self) {
        signal(self.child.id(), "INT");
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

/// The environment variables that hold a secret: whatever a test gives the
/// worker in them is a secret the log scan looks for.
const SECRET_VARS: [&str; 3] = [
    "TWILIO_AUTH_TOKEN",
    "TWILIO_API_SECRET",
    "SMS_DISPATCH_INGEST_TOKEN",
];

/// Reads `stream` to its end into `lines`, a line at a time. Each line is
/// read as bytes and kept lossily when it is not UTF-8: every line after it
/// is still captured and scanned, and the pipe is read to the end, so the
/// worker never blocks on a full one.
pub(crate) fn read_lines(stream: impl Read, lines: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                let text = String::from_utf8_lossy(&line).into_owned();
                lines.lock().unwrap().push(text);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// A worker on its own vhost with a fake Twilio, and a producer's connection.
/// Fields drop in order: the worker stops before its vhost goes. The last
/// three only live as long as the bed.
pub(crate) struct TestBed {
    pub worker: WorkerProcess,
    pub publisher: sms_dispatch::wire::Publisher,
    pub channel: Channel,
    pub twilio: FakeTwilio,
    _conn: Connection,
    _config: ConfigFile,
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
            twilio,
            _conn: conn,
            _config: config,
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
