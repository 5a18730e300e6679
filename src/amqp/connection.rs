//! The broker connection: its settings, how it is opened, and how a command
//! (not the worker) gets a connection with the topology declared.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backon::ExponentialBuilder;
use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

use super::publisher::Publisher;
use super::topology;

/// The broker used when nothing else is configured.
pub(crate) const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Where the work queue lives and how it is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated and, on one node, the faster consumer: the default.
    Quorum,
    /// For brokers without quorum queues.
    Classic,
}

impl QueueType {
    /// The `x-queue-type` argument's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// The broker connection.
#[derive(Clone)]
pub(crate) struct BrokerSettings {
    /// One AMQP URL per cluster node (they may hold a password).
    urls: Vec<SecretString>,
    /// The node tried first: a random one at start, so a fleet spreads its
    /// connections; the one that last answered after that.
    next_node: Arc<AtomicUsize>,
    /// The most jobs one worker holds in flight.
    pub prefetch: u16,
    /// How the work and delay queues are declared.
    pub queue_type: QueueType,
    /// How long the worker waits for lapin to reconnect before it exits with
    /// code 1 so that the orchestrator restarts it.
    pub reconnect_deadline: Duration,
}

impl BrokerSettings {
    /// Settings for the cluster nodes at `urls` (at least one).
    pub(crate) fn new(
        urls: Vec<SecretString>,
        prefetch: u16,
        queue_type: QueueType,
        reconnect_deadline: Duration,
    ) -> BrokerSettings {
        let start = fastrand::usize(..urls.len().max(1));
        BrokerSettings {
            urls,
            next_node: Arc::new(AtomicUsize::new(start)),
            prefetch,
            queue_type,
            reconnect_deadline,
        }
    }

    /// The URLs with any password replaced by `***`, for logs.
    pub(crate) fn url_for_logs(&self) -> String {
        self.urls
            .iter()
            .map(|u| redact_url_password(u.expose_secret()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// After giving up on a connection: start with the next node next time.
    pub(crate) fn move_on(&self) {
        self.next_node.fetch_add(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("urls", &self.url_for_logs())
            .field("prefetch", &self.prefetch)
            .field("queue_type", &self.queue_type)
            .field("reconnect_deadline", &self.reconnect_deadline)
            .finish()
    }
}

/// `amqp://user:secret@host/vhost` → `amqp://user:***@host/vhost`.
pub(crate) fn redact_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_owned(),
    }
}

/// Whether a connection rides out broker outages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// The worker: lapin's automatic recovery (reconnect, then re-declare
    /// channels, QoS, topology and consumers), retrying for about ten minutes
    /// with delays from 250 ms growing to 5 s.
    Automatic,
    /// Commands (`send`, `dlq`): fail at once so the operator sees it.
    None,
}

/// How long one node may take to accept a connection before the next is
/// tried.
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection to the first node that answers, starting with the one
/// that answered last (at start, a random one), in the order given.
pub(crate) async fn connect(
    settings: &BrokerSettings,
    name: &str,
    recovery: Recovery,
) -> Result<Connection, lapin::Error> {
    let nodes = settings.urls.len();
    let start = settings.next_node.load(Ordering::Relaxed);
    let mut last_error = None;
    for step in 0..nodes {
        let index = (start + step) % nodes;
        let url = &settings.urls[index];
        let attempt = connect_node(url, name, recovery);
        let error = match tokio::time::timeout(NODE_CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(connection)) => {
                settings.next_node.store(index, Ordering::Relaxed);
                if nodes > 1 {
                    tracing::info!(
                        node = %redact_url_password(url.expose_secret()),
                        "connected to broker node {} of {nodes}",
                        index + 1
                    );
                }
                return Ok(connection);
            }
            Ok(Err(e)) => e,
            Err(_) => lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", NODE_CONNECT_TIMEOUT.as_secs()),
            )),
        };
        if nodes > 1 {
            tracing::warn!(
                node = %redact_url_password(url.expose_secret()),
                error = %error,
                "broker node did not answer; trying the next"
            );
        }
        last_error = Some(error);
    }
    Err(last_error.unwrap_or_else(|| {
        lapin::Error::from(std::io::Error::other("no broker URL is configured"))
    }))
}

/// Opens a connection to one node.
async fn connect_node(
    url: &SecretString,
    name: &str,
    recovery: Recovery,
) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let properties = match recovery {
        Recovery::Automatic => properties.enable_auto_recover().with_backoff(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(250))
                .with_factor(2.0)
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .with_max_times(120),
        ),
        Recovery::None => properties,
    };
    let mut uri: lapin::uri::AMQPUri = url
        .expose_secret()
        .parse()
        .map_err(|e: String| lapin::Error::from(std::io::Error::other(e)))?;
    // lapin keeps two buffers of 32 frames each per connection; with
    // RabbitMQ's default frame_max (128 KiB) that is 8 MiB of memory for
    // jobs of at most 8 KiB. A URL that sets frame_max keeps its own.
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    Connection::connect_uri(uri, properties).await
}

/// The frame size the worker asks for unless the URL says otherwise.
pub(super) const FRAME_MAX: u32 = 16 * 1024;

/// A command could not reach the broker or declare the topology.
#[derive(Debug, thiserror::Error)]
pub enum CommandConnectError {
    /// The connection could not be opened.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL, password hidden.
        url: String,
        /// lapin's error.
        source: lapin::Error,
    },
    /// The publishing channel could not be opened.
    #[error("opening a channel: {0}")]
    Channel(lapin::Error),
    /// Declaring the topology failed (the text says what to do).
    #[error("declaring the topology: {0}")]
    Topology(String),
}

/// Connects a command (`send`, `dlq`) to the broker: no automatic recovery,
/// so the operator sees a failure at once; a confirming publisher; the
/// topology declared.
pub(crate) async fn connect_for_command(
    settings: &BrokerSettings,
    name: &str,
) -> Result<(Connection, Publisher), CommandConnectError> {
    let connection = connect(settings, name, Recovery::None)
        .await
        .map_err(|source| CommandConnectError::Connect {
            url: settings.url_for_logs(),
            source,
        })?;
    let publisher = Publisher::open(&connection)
        .await
        .map_err(CommandConnectError::Channel)?;
    topology::declare(publisher.channel(), settings.queue_type)
        .await
        .map_err(|e| CommandConnectError::Topology(topology::explain(&e)))?;
    Ok((connection, publisher))
}
