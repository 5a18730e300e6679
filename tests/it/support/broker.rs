//! The real broker: a private vhost per test on the shared node, publishing
//! and taking messages, and a RabbitMQ node of the test's own for tests that
//! stop and start it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;

use super::jobs::TestJob;

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

/// Publishes a test job to `sms`/`send` as the service `source` would (its
/// name in the AMQP `app_id`, which routes the job's outcome events).
pub(crate) async fn publish_from(channel: &Channel, job: &TestJob, source: &str) {
    let properties = BasicProperties::default()
        .with_message_id(job.id.as_str().into())
        .with_app_id(source.into());
    publish_raw(channel, &job.body(), properties).await;
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

/// Declares `queue` (durable or not) and binds it to the outcome events'
/// exchange `sms.events` with `pattern`, as a service that subscribes does.
pub(crate) async fn bind_to_events(channel: &Channel, queue: &str, pattern: &str, durable: bool) {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("declaring {queue}: {e}"));
    channel
        .queue_bind(
            queue.into(),
            "sms.events".into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("binding {queue} to sms.events with {pattern}: {e}"));
}

/// A queue of the test's own (not durable) bound to `sms.events` with
/// `pattern`; returns its name.
pub(crate) async fn bind_events(channel: &Channel, pattern: &str) -> String {
    let queue = format!("events-test-{:08x}", fastrand::u32(..));
    bind_to_events(channel, &queue, pattern, false).await;
    queue
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

/// A RabbitMQ node of the test's own (its own ports, data and logs under
/// /tmp), for tests that stop and start the broker without disturbing the
/// shared one. Stopped and removed on drop.
pub(crate) struct BrokerNode {
    pub node: String,
    pub port: u16,
    dist_port: u16,
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
        let broker = BrokerNode {
            node,
            port,
            dist_port,
            base,
        };
        broker.launch();
        broker.wait_running(Duration::from_secs(90));
        broker
    }

    /// Runs `rabbitmq-server -detached` on the node's files (its data kept).
    fn launch(&self) {
        let path = |p: &str| self.base.join(p).display().to_string();
        let started = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_PID_FILE", path("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf"))
            .status()
            .expect("rabbitmq-server runs");
        assert!(started.success(), "rabbitmq-server -detached failed");
    }

    /// Starts the node again on the data it had (after [`BrokerNode::kill9`]:
    /// a cluster member rejoins its cluster) and waits until it runs.
    pub(crate) fn restart(&self) {
        self.launch();
        self.wait_running(Duration::from_secs(90));
    }

    /// Stops the node cleanly, its whole Erlang VM (as a machine's shutdown
    /// does), and returns once the process is gone; [`BrokerNode::restart`]
    /// starts it again on its data.
    pub(crate) fn stop(&self) {
        let pid = self.base.join("pid").display().to_string();
        // With the pid file, rabbitmqctl waits for that process to end.
        rabbitmqctl(Some(&self.node), &["stop", &pid]);
    }

    /// `kill -9` of the node's Erlang VM (the pid its boot wrote to its pid
    /// file), as a machine that dies; returns once the process is gone.
    pub(crate) fn kill9(&self) {
        let pid = std::fs::read_to_string(self.base.join("pid"))
            .unwrap_or_else(|e| panic!("the pid file of {}: {e}", self.node));
        let pid = pid.trim();
        let killed = Command::new("kill")
            .args(["-KILL", pid])
            .status()
            .expect("kill runs");
        assert!(killed.success(), "kill -9 {pid} ({}) failed", self.node);
        // Gone, or a zombie waiting for init to reap it: dead either way.
        let stat = format!("/proc/{pid}/stat");
        let start = std::time::Instant::now();
        while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} (pid {pid}) outlived kill -9",
                self.node
            );
            std::thread::sleep(Duration::from_millis(10));
        }
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
