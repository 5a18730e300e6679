//! A RabbitMQ cluster of the test's own (three nodes on one machine, as in
//! ../shared/reference/rabbitmq.md), and what fleet tests need around it:
//! many jobs with numbers unique to the run, published concurrently, and a
//! wait until nothing is left anywhere.

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use fake_twilio::{FakeTwilio, FakeTwilioConfig, TEST_ACCOUNT_SID, TEST_MESSAGING_SERVICE_SID};

use super::broker::{BrokerNode, Vhost, publish, rabbitmqctl, ready};
use super::config::ConfigFile;
use super::jobs::TestJob;
use super::logs::forbid;
use super::worker::{WorkerProcess, metric};

/// Three clustered nodes, stopped and removed on drop.
pub(crate) struct Cluster {
    pub nodes: Vec<BrokerNode>,
}

impl Cluster {
    /// Starts `{name}1@localhost` … `{name}3@localhost` on the given AMQP
    /// and distribution ports (all three at once) and joins the second and
    /// third to the first. Blocking: about half a minute.
    pub(crate) fn start(name: &str, ports: [u16; 3], dist_ports: [u16; 3]) -> Cluster {
        let nodes: Vec<BrokerNode> = std::thread::scope(|scope| {
            let starting: Vec<_> = (0..3)
                .map(|i| {
                    let name = format!("{name}{}", i + 1);
                    scope.spawn(move || BrokerNode::start(&name, ports[i], dist_ports[i]))
                })
                .collect();
            starting
                .into_iter()
                .map(|s| s.join().expect("a cluster node starts"))
                .collect()
        });
        for node in &nodes[1..] {
            rabbitmqctl(Some(&node.node), &["stop_app"]);
            rabbitmqctl(Some(&node.node), &["join_cluster", &nodes[0].node]);
            rabbitmqctl(Some(&node.node), &["start_app"]);
            node.wait_running(Duration::from_secs(90));
        }
        let cluster = Cluster { nodes };
        let status: Value = serde_json::from_str(&rabbitmqctl(
            Some(&cluster.nodes[0].node),
            &["cluster_status", "--formatter", "json"],
        ))
        .expect("cluster_status prints JSON");
        let running = status["running_nodes"].as_array().map_or(0, Vec::len);
        assert_eq!(
            running, 3,
            "three running nodes: {}",
            status["running_nodes"]
        );
        cluster
    }

    /// A private vhost, created through node `via` (which must be running).
    /// It is not deleted on drop but with the cluster: deleting quorum
    /// queues that have a member on a killed node waits about 45 s for it.
    pub(crate) fn vhost(&self, via: usize) -> ManuallyDrop<Vhost> {
        ManuallyDrop::new(Vhost::create_on(
            Some(&self.nodes[via].node),
            self.nodes[via].port,
        ))
    }

    /// `SMS_DISPATCH_AMQP_URL` for `vhost`: every node's URL, comma-separated.
    pub(crate) fn urls(&self, vhost: &Vhost) -> String {
        self.nodes
            .iter()
            .map(|n| format!("amqp://guest:guest@127.0.0.1:{}/{}", n.port, vhost.name))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A connection to node `node`, on `vhost`.
    pub(crate) async fn connect(&self, node: usize, vhost: &Vhost) -> lapin::Connection {
        let url = format!(
            "amqp://guest:guest@127.0.0.1:{}/{}",
            self.nodes[node].port, vhost.name
        );
        lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.nodes[node].node))
    }

    /// The node whose AMQP port is `port`.
    pub(crate) fn node_on_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port == port)
    }

    /// A quorum queue's members and leader, as node `via` reports them.
    pub(crate) fn quorum_queue(&self, via: usize, vhost: &Vhost, queue: &str) -> QuorumQueue {
        let out = rabbitmqctl(
            Some(&self.nodes[via].node),
            &[
                "list_queues",
                "-p",
                &vhost.name,
                "name",
                "type",
                "members",
                "leader",
                "--formatter",
                "json",
            ],
        );
        let queues: Vec<Value> = serde_json::from_str(&out).expect("list_queues prints JSON");
        let q = queues
            .iter()
            .find(|q| q["name"] == queue)
            .unwrap_or_else(|| panic!("{queue} is not in {out}"));
        assert_eq!(q["type"], "quorum", "{queue} is a quorum queue: {q}");
        let members = q["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let leader = q["leader"].as_str().unwrap_or_default().to_owned();
        let leader = self
            .nodes
            .iter()
            .position(|n| n.node == leader)
            .unwrap_or_else(|| panic!("the leader of {queue} ({leader}) is not a cluster node"));
        QuorumQueue { members, leader }
    }
}

/// Where a quorum queue lives.
#[derive(Debug)]
pub(crate) struct QuorumQueue {
    /// Node names.
    pub members: Vec<String>,
    /// The leader's index in [`Cluster::nodes`].
    pub leader: usize,
}

/// The AMQP port of the node a worker consumes from: its first "connected
/// to broker node" line since `skip` such lines (a worker given several URLs
/// logs one per connection, the consuming one first).
pub(crate) fn consuming_port(worker: &WorkerProcess, skip: usize) -> Option<u16> {
    worker
        .json_logs()
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("connected to broker node"))
        })
        .nth(skip)
        .and_then(|l| l["node"].as_str().and_then(port_of))
}

/// The port of `amqp://user:***@host:port/vhost`.
fn port_of(url: &str) -> Option<u16> {
    let authority = url.split('/').nth(2)?;
    authority.rsplit(':').next()?.parse().ok()
}

/// `RUST_LOG` for a fleet's workers in a run of thousands of jobs: no line
/// per job (`sms_dispatch::worker`'s own), but the connection, shutdown
/// and park lines, and every warning. The log scan reads each line for
/// every code a test used: a line per job made a run's scan take minutes.
pub(crate) const BULK_LOG_FILTER: &str = "info,sms_dispatch::worker=warn,sms_dispatch::worker::consumer=info,sms_dispatch::worker::settle=info";

/// Jobs for a run of thousands, with numbers unique to the run (the fake
/// Twilio's record tells a duplicate by its `To`).
///
/// Only every 100th job is made with [`TestJob::new`], whose code and number
/// the log scan then looks for in every line: scanning each of a fleet's
/// thousands of lines for thousands of codes takes minutes. A worker that
/// logs codes or numbers does it for every job, so the sample catches it;
/// and any unmasked number fails the scan anyway.
pub(crate) struct BulkJobs {
    tag: u32,
    made: usize,
}

impl BulkJobs {
    pub(crate) fn new() -> BulkJobs {
        BulkJobs {
            tag: fastrand::u32(0..10_000),
            made: 0,
        }
    }

    /// The next job: `+8193TTTTNNNNN` (up to 100,000 per series).
    pub(crate) fn next_job(&mut self) -> TestJob {
        let i = self.made;
        assert!(i < 100_000, "a series has 100,000 numbers");
        self.made += 1;
        let to = format!("+8193{:04}{i:05}", self.tag);
        if i.is_multiple_of(100) {
            return TestJob::new(&to, "SignIn");
        }
        let code = format!("{:06}", fastrand::u32(100_000..1_000_000));
        let mut payload = serde_json::Map::new();
        payload.insert("code".to_owned(), json!(code));
        TestJob {
            id: uuid::Uuid::new_v4().to_string(),
            to,
            kind: "SignIn".to_owned(),
            code,
            payload,
            expires_at: Some(SystemTime::now() + Duration::from_secs(600)),
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Vec<TestJob> {
        (0..n).map(|_| self.next_job()).collect()
    }
}

/// Publishes `jobs` with up to `concurrency` confirms outstanding at once.
pub(crate) async fn publish_concurrently(
    publisher: &sms_dispatch::wire::Publisher,
    jobs: &[TestJob],
    concurrency: usize,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..concurrency {
        let publisher = publisher.clone();
        let jobs: Vec<TestJob> = jobs
            .iter()
            .skip(lane)
            .step_by(concurrency)
            .cloned()
            .collect();
        tasks.spawn(async move {
            for job in &jobs {
                publish(&publisher, job).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a publishing lane");
    }
}

/// One Twilio account for a fleet, with an API key per worker: the fake's
/// record tells whose call each request was by its basic-auth user.
pub(crate) struct FleetAccount {
    pub twilio: FakeTwilio,
    /// Per worker: (API key SID, config file using it).
    pub keys: Vec<(String, ConfigFile)>,
}

impl FleetAccount {
    /// A fake Twilio accepting `workers` API keys, and a config for each
    /// (one SignIn template, the default 10 s request timeout).
    pub(crate) async fn start(workers: usize) -> FleetAccount {
        let keys: Vec<(String, String)> = (0..workers)
            .map(|_| {
                let sid = format!("SK{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
                let secret = format!("fleet-secret-{:016x}", fastrand::u64(..));
                forbid(&secret);
                (sid, secret)
            })
            .collect();
        let mut config = FakeTwilioConfig::default();
        config.credentials.extend(keys.iter().cloned());
        let twilio = FakeTwilio::start_with(config).await;
        let keys = keys
            .into_iter()
            .map(|(sid, secret)| {
                let text = format!(
                    "[twilio]\naccount_sid = \"{TEST_ACCOUNT_SID}\"\napi_key = \"{sid}\"\n\
                     api_secret = \"{secret}\"\nmessaging_service_sid = \"{TEST_MESSAGING_SERVICE_SID}\"\n\n\
                     [[templates]]\ntype = \"SignIn\"\ncontent = \"Your sign-in code is {{{{code}}}}\"\n"
                );
                (sid, ConfigFile::write("toml", &text))
            })
            .collect();
        FleetAccount { twilio, keys }
    }
}

/// How many times each number was accepted, over every fake's record.
pub(crate) fn sends_per_number(records: &[Vec<fake_twilio::Received>]) -> HashMap<String, usize> {
    let mut sent: HashMap<String, usize> = HashMap::new();
    for r in records.iter().flatten().filter(|r| r.status == 201) {
        *sent.entry(r.to().to_owned()).or_default() += 1;
    }
    sent
}

/// Waits until nothing is left anywhere: `sms.send` and `queues` have
/// nothing ready and no worker holds a job, seen so on every check for a
/// whole second (a job moves from a delay queue back to `sms.send`, and from
/// there into a worker, between two looks).
pub(crate) async fn wait_quiet(
    channel: &lapin::Channel,
    queues: &[&str],
    workers: &[&WorkerProcess],
    deadline: Duration,
) {
    let start = tokio::time::Instant::now();
    let mut quiet_since: Option<tokio::time::Instant> = None;
    loop {
        let mut left = Vec::new();
        for queue in std::iter::once(&"sms.send").chain(queues) {
            let n = ready(channel, queue).await;
            if n > 0 {
                left.push(format!("{n} ready in {queue}"));
            }
        }
        for (i, worker) in workers.iter().enumerate() {
            let in_flight = metric(&worker.metrics().await, "sms_in_flight", "");
            if in_flight != Some(0.0) {
                left.push(format!("worker {i}: {in_flight:?} in flight"));
            }
        }
        if left.is_empty() {
            let since = *quiet_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= Duration::from_secs(1) {
                return;
            }
        } else {
            quiet_since = None;
        }
        assert!(
            start.elapsed() < deadline,
            "waited {deadline:?} for the fleet to be quiet: {}",
            left.join(", ")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
