//! Observability: what an operator sees of a running worker. Metrics with
//! the contract's names, liveness and readiness, logs and traces, and the
//! one HTTP listener that serves them (plus the Logto ingest).

pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod telemetry;
