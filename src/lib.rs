//! sms-dispatch: sends SMS verification codes from RabbitMQ jobs through
//! Twilio, retries what Twilio says is worth retrying, parks the rest in a
//! dead-letter queue operators can read and replay, and exports Prometheus
//! metrics.
//!
//! # A map of the crate
//!
//! The life of one job is in `worker/mod.rs` (`Worker::handle`):
//!
//! 1. `job` decodes the message into a `Job` that cannot hold invalid data
//!    (an E.164 number via `phone`, a known type, an expiry).
//! 2. `templates` chooses the text by type and locale and fills it in;
//!    `encoding` counts what it costs.
//! 3. `twilio` sends it and returns a typed outcome; its `classify` table
//!    (Twilio code → decision) says whether a failure is transient,
//!    permanent or an account fault.
//! 4. `retry` decides when a transient failure is tried again and whether
//!    the wait happens in the process or in a delay queue; the worker's
//!    throttle slows every call after a rate limit, and its pause stops
//!    consuming on an account fault.
//! 5. The worker settles the delivery: ack, or publish the dead letter or
//!    the parked retry through `amqp` with a confirm, then ack.
//!
//! The folders, one family each:
//!
//! | folder | what is in it |
//! | --- | --- |
//! | `twilio/` | the Messages API client, its settings, the classification table |
//! | `amqp/` | the connection, the topology, the job's headers, dead letters, confirmed publishing |
//! | `worker/` | the job's life, sending, settlement, the consumer loop, throttle, pause, recent ids |
//! | `fleet/` | what the workers share through Redis: sent records and in-flight leases |
//! | `observe/` | metrics, health, logs and traces |
//! | `limits/` | abuse limits: rules, regions, the limiter |
//! | `http.rs` | the one HTTP listener: `/metrics`, `/healthz`, `/readyz`, the Logto ingest |
//! | `config/` | reading TOML, Logto's JSON and the environment; assembling the settings |
//! | `cli/` | one file per command |
//!
//! Modules are private: the binary uses [`Cli`] and [`execute`]; the tests
//! and the benchmark use the few broker names re-exported below.

#![warn(missing_docs, unreachable_pub)]

mod amqp;
mod cli;
mod config;
mod encoding;
mod fleet;
mod http;
mod job;
mod limits;
mod observe;
mod phone;
mod retry;
mod shutdown;
mod templates;
mod trace_context;
mod twilio;
mod worker;

pub use cli::{Cli, CliError, execute};

/// The wire: what crosses the broker, for programs that talk to it as the
/// worker does (the black-box tests and the benchmark): the confirmed
/// publisher, the topology, dead letters, the header readers and the job's
/// time format.
pub mod wire {
    pub use crate::amqp::Publisher;
    pub use crate::amqp::QueueType;
    pub use crate::amqp::dead_letter::{DeadLetter, Reason};
    pub use crate::amqp::headers::{header_i64, header_str, set_str};
    pub use crate::amqp::topology::declare as declare_topology;
    pub use crate::job::{format_rfc3339, parse_rfc3339, unix_seconds};
}
