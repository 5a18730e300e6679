//! RabbitMQ: the connection, the topology, the job's headers, dead letters,
//! and the one confirmed way to publish.
//!
//! Everything that crosses the broker is named in [`topology`] and
//! [`headers`]; everything published goes through [`Publisher`], which returns
//! only when the broker has confirmed and routed the message.

mod connection;
pub(crate) mod dead_letter;
pub(crate) mod headers;
mod publisher;
mod received;
pub(crate) mod topology;

pub use connection::QueueType;
pub(crate) use connection::{
    BrokerSettings, CommandConnectError, DEFAULT_AMQP_URL, Recovery, connect, connect_for_command,
    redact_url_password,
};
pub use publisher::Publisher;
pub(crate) use publisher::{CONFIRM_TIMEOUT, PublishError, SharedPublisher};
pub(crate) use received::{Received, source_word};
