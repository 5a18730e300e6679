//! Shared test support: a private vhost on the real broker, the real worker
//! binary as a child process, the commands as an operator runs them, test
//! jobs, and the log scan every integration test runs.
//!
//! Every test creates its own vhost, so tests run in parallel without seeing
//! each other's queues. Every worker's stdout is captured; when the worker
//! handle is dropped (or `finish` is called) its logs are scanned: each line
//! must be JSON and none may contain a verification code, a secret or an
//! unmasked phone number.
//!
//! Tests wait on conditions with a deadline ([`eventually`], the fake
//! Twilio's `wait_until` and `wait_held`), never on a sleep, and each runs
//! [`within`] a deadline of its own.

mod broker;
mod cli;
mod cluster;
mod config;
mod jobs;
mod logs;
mod worker;

use std::future::Future;
use std::time::Duration;

pub(crate) use broker::*;
pub(crate) use cli::*;
pub(crate) use cluster::*;
pub(crate) use config::*;
pub(crate) use fake_twilio::{
    FakeTwilio, Received, Reply, TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, TEST_MESSAGING_SERVICE_SID,
};
pub(crate) use jobs::*;
pub(crate) use logs::{code, scan_logs};
pub(crate) use worker::*;

/// The worker binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_sms-dispatch");

/// Runs `fut` and fails the test if it takes longer than `secs`.
pub(crate) async fn within<F: Future>(secs: u64, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(out) => out,
        Err(_) => panic!("test deadline of {secs} s passed"),
    }
}

/// Checks `check` every 50 ms until it yields a value; panics with `what`
/// when `deadline` passes. A wait on a condition, not a sleep.
pub(crate) async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > deadline {
            panic!("waited {deadline:?} for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
