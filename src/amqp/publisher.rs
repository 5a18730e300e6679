//! The one way this crate publishes: confirmed.
//!
//! Every publish here (a job from `send` or the HTTP ingest, a dead letter, a
//! parked retry, a replayed dead letter) is `mandatory` on a confirm-mode
//! channel and is done only when the broker has confirmed it *and* routed it to
//! a queue. Callers ack or remove the original only after that, which is what
//! makes "move a message" lossless: publish, confirm, then ack.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use tokio::sync::watch;

use super::connection::QueueType;
use super::topology;

/// Why a publish is not known to be safe with the broker.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for {exchange}/{routing_key}: the message was returned")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("the broker did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
}

/// How long a publish may wait for its confirm before it counts as failed
/// (the caller then leaves the original unacked, so nothing is lost).
pub(crate) const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);

/// A confirm-mode channel for publishing.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    /// Opens a channel on `connection` and puts it in confirm mode.
    pub async fn open(connection: &Connection) -> Result<Publisher, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher { channel })
    }

    /// The underlying channel (to declare topology on).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes and waits until the broker confirmed and routed the message.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        self.publish_with(exchange, routing_key, body, properties, true)
            .await
    }

    /// Publishes an outcome event and waits for the broker's confirm. Not
    /// mandatory: an event nobody has bound a queue for is not an error.
    pub(crate) async fn publish_event(
        &self,
        routing_key: &str,
        body: &[u8],
    ) -> Result<(), PublishError> {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        self.publish_with(
            topology::EVENTS_EXCHANGE,
            routing_key,
            body,
            properties,
            false,
        )
        .await
    }

    async fn publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let confirm = async {
            self.channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    body,
                    properties,
                )
                .await?
                .await
        };
        let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| PublishError::Timeout(CONFIRM_TIMEOUT))??;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
                Err(PublishError::Unroutable {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                })
            }
            Confirmation::Nack(None) => Err(PublishError::Nacked),
            // The channel is in confirm mode; this would be a bug in lapin.
            Confirmation::NotRequested => Err(PublishError::Nacked),
        }
    }

    /// Publishes a new job to `sms`/`send` (persistent, JSON, with its id as
    /// the AMQP message id and the publish time as its timestamp).
    pub async fn publish_job(
        &self,
        id: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), PublishError> {
        self.publish(
            topology::EXCHANGE,
            topology::ROUTING_KEY,
            body,
            job_properties(id, headers),
        )
        .await
    }

    /// [`Publisher::publish_job`] for a source that names itself in the
    /// AMQP `app_id` (outcome events are routed by it): `ingest` for
    /// `POST /v1/send`.
    pub(crate) async fn publish_job_from(
        &self,
        source: &str,
        id: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), PublishError> {
        let properties = job_properties(id, headers).with_app_id(source.into());
        self.publish(topology::EXCHANGE, topology::ROUTING_KEY, body, properties)
            .await
    }
}

/// A new job's properties: persistent JSON, its id as the message id, the
/// publish time as its timestamp.
fn job_properties(id: &str, headers: FieldTable) -> BasicProperties {
    let now = crate::job::unix_seconds(std::time::SystemTime::now());
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(id.into())
        .with_timestamp(now)
        .with_headers(headers)
}

/// The worker's publishing side, shared by everything that publishes in the
/// worker process (the jobs' dead letters, retries and put-backs, the HTTP
/// ingest). It has a connection of its own, so that a broker alarm, which
/// blocks connections that publish, never stops the consuming connection's
/// acks. The consumer loop sets it whenever it opens a session; `None` until
/// the first one is up. A channel the broker closed (an operator deleted
/// `sms.dlx`, a length limit rejected a publish) is reopened on demand with
/// the topology declared again: lapin recovers lost connections, not channels
/// the broker closed.
#[derive(Clone, Default)]
pub(crate) struct SharedPublisher {
    current: Arc<RwLock<Option<Current>>>,
    /// The broker's reason while it blocks the publishing connection.
    blocked: Arc<watch::Sender<Option<String>>>,
}

#[derive(Clone)]
struct Current {
    connection: Arc<Connection>,
    publisher: Publisher,
    queue_type: QueueType,
}

impl SharedPublisher {
    pub(crate) fn new() -> SharedPublisher {
        SharedPublisher::default()
    }

    /// Publishes from now on on `connection` with `publisher` (a new
    /// session's), declaring `queue_type` queues when a channel is reopened.
    pub(crate) fn set(
        &self,
        connection: Arc<Connection>,
        publisher: Publisher,
        queue_type: QueueType,
    ) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Current {
            connection,
            publisher,
            queue_type,
        });
        self.set_blocked(None);
    }

    /// The current publisher, if a session has been opened.
    pub(crate) fn get(&self) -> Option<Publisher> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.publisher.clone())
    }

    /// Opens a new channel when the broker closed the current one (and the
    /// connection is up), declaring the topology on it. Returns whether the
    /// publisher is usable now.
    pub(crate) async fn repair(&self) -> bool {
        self.reopen(false).await
    }

    /// Opens a new publishing channel even though the current one looks
    /// healthy: RabbitMQ can refuse every publish on a channel that first
    /// published to a quorum queue just after its leader died, while a new
    /// channel is served.
    pub(crate) async fn renew_channel(&self) -> bool {
        self.reopen(true).await
    }

    async fn reopen(&self, even_if_connected: bool) -> bool {
        let Some(current) = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return false;
        };
        let channel = current.publisher.channel().status();
        if channel.connected() && !even_if_connected {
            return true;
        }
        if !current.connection.status().connected() || channel.reconnecting() {
            // lapin is recovering the connection and its channels itself.
            return false;
        }
        let reopened = async {
            let publisher = Publisher::open(&current.connection).await?;
            topology::declare(publisher.channel(), current.queue_type).await?;
            Ok::<_, lapin::Error>(publisher)
        };
        match tokio::time::timeout(CONFIRM_TIMEOUT, reopened).await {
            Ok(Ok(publisher)) => {
                let mut slot = self.current.write().unwrap_or_else(|e| e.into_inner());
                if let Some(slot) = slot.as_mut()
                    && Arc::ptr_eq(&slot.connection, &current.connection)
                {
                    slot.publisher = publisher;
                }
                drop(slot);
                if even_if_connected {
                    // The refused channel goes; a publish still on it fails
                    // and is tried again on the new one.
                    let old = current.publisher.channel().clone();
                    tokio::spawn(async move {
                        let _ = old.close(200, "renewed".into()).await;
                    });
                }
                tracing::info!("opened a new publishing channel");
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reopening the publishing channel failed");
                false
            }
            Err(_) => false,
        }
    }

    /// Records whether the broker blocks the publishing connection (a
    /// memory or disk alarm), with its reason.
    pub(crate) fn set_blocked(&self, reason: Option<String>) {
        self.blocked.send_replace(reason);
    }

    /// The broker's reason, while it blocks publishing.
    pub(crate) fn blocked(&self) -> Option<String> {
        self.blocked.borrow().clone()
    }

    /// Waits until publishing is not blocked, for at most `limit`; returns
    /// whether it is unblocked.
    pub(crate) async fn wait_unblocked(&self, limit: Duration) -> bool {
        let mut watching = self.blocked.subscribe();
        tokio::time::timeout(limit, watching.wait_for(Option::is_none))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}
