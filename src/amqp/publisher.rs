//! The one way this crate publishes: confirmed.
//!
//! Every publish here (a job from `send` or the HTTP ingest, a dead letter, a
//! parked retry, a replayed dead letter) is `mandatory` on a confirm-mode
//! channel and is done only when the broker has confirmed it *and* routed it to
//! a queue. Callers ack or remove the original only after that, which is what
//! makes "move a message" lossless: publish, confirm, then ack.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection};

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
pub(super) const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);

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
        let options = BasicPublishOptions {
            mandatory: true,
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
        let now = crate::job::unix_seconds(std::time::SystemTime::now());
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(id.into())
            .with_timestamp(now)
            .with_headers(headers);
        self.publish(topology::EXCHANGE, topology::ROUTING_KEY, body, properties)
            .await
    }
}

/// The current connection's publisher, shared by everything that publishes
/// in the worker process (the jobs' dead letters and retries, the HTTP
/// ingest). The consumer loop sets it whenever it opens a connection; `None`
/// until the first one is up.
#[derive(Clone, Default)]
pub(crate) struct SharedPublisher(std::sync::Arc<std::sync::RwLock<Option<Publisher>>>);

impl SharedPublisher {
    pub(crate) fn new() -> SharedPublisher {
        SharedPublisher::default()
    }

    /// Publishes from now on with `publisher` (a new connection's).
    pub(crate) fn set(&self, publisher: Publisher) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(publisher);
    }

    /// The current publisher, if a connection has been opened.
    pub(crate) fn get(&self) -> Option<Publisher> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
