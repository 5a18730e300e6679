//! Graceful shutdown: one token, cancelled by SIGTERM or SIGINT.
//!
//! Everything that must stop when the process stops (the consumer loop, the
//! HTTP listener) holds a clone of [`Shutdown`] and selects on
//! [`Shutdown::requested`]. The worker then stops taking deliveries, lets the
//! jobs in flight finish within the configured grace period and closes its
//! connection; whatever did not finish goes back to the queue untouched.

use tokio_util::sync::CancellationToken;

/// The process-wide stop signal. Clones share it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub(crate) fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Cancels the token on the first SIGTERM or SIGINT (Ctrl-C).
    pub(crate) fn on_signals(&self) {
        let token = self.token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested by signal");
            token.cancel();
        });
    }

    /// Asks everything to stop.
    pub(crate) fn trigger(&self) {
        self.token.cancel();
    }

    /// Resolves once a stop was asked for.
    pub(crate) async fn requested(&self) {
        self.token.cancelled().await;
    }

    pub(crate) fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the process still stops on SIGTERM,
            // just not gracefully; Ctrl-C may still work.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
