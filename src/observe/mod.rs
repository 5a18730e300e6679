//! Observability: what an operator sees of a running worker. Metrics with
//! the contract's names, liveness and readiness, logs and traces. The HTTP
//! listener that serves them is [`crate::http`].

pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod telemetry;
