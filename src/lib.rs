//! sms-dispatch: sends SMS verification codes from RabbitMQ jobs through
//! Twilio, retries what Twilio says is worth retrying, parks the rest in a
//! dead-letter queue operators can read and replay, and exports Prometheus
//! metrics.
//!
//! # A map of the crate
//!
//! The life of one job, in [`worker::Worker::handle`]:
//!
//! 1. [`job`] decodes the message into a [`job::Job`] that cannot hold invalid
//!    data (E.164 number via [`phone`], known type, expiry).
//! 2. [`templates`] chooses the text by type and locale and fills it in;
//!    [`encoding`] counts what it costs.
//! 3. [`twilio`] sends it and returns a typed outcome; [`classify`] (a table
//!    from Twilio code to decision) says whether a failure is transient,
//!    permanent or an account fault.
//! 4. [`retry`] decides when a transient failure is tried again and whether
//!    the wait happens in the process or in a delay queue; [`throttle`] slows
//!    every call down after a rate limit; [`pause`] stops consuming on an
//!    account fault.
//! 5. [`broker`] publishes dead letters ([`dead_letter`]) and parked retries
//!    with confirms before the job is acked; [`recent`] remembers sent ids so a
//!    redelivery is not sent twice.
//!
//! Around it: [`consumer`] feeds the worker deliveries, pauses and probes,
//! rides out broker outages and stops gracefully; [`topology`] names and
//! declares every exchange, queue and header; [`config`] reads the TOML file or Logto's connector JSON;
//! [`metrics`], [`health`], [`telemetry`] and [`trace_context`] make the worker
//! observable and [`http`] serves them; [`shutdown`] stops it gracefully;
//! [`dlq`] is the operators' dead-letter tools; [`cli`] is the command line.

pub mod broker;
pub mod classify;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod dlq;
pub mod encoding;
pub mod health;
pub mod http;
pub mod job;
pub mod metrics;
pub mod pause;
pub mod phone;
pub mod recent;
pub mod retry;
pub mod shutdown;
pub mod telemetry;
pub mod templates;
pub mod throttle;
pub mod topology;
pub mod trace_context;
pub mod twilio;
pub mod worker;
