//! Readiness: is this worker connected, consuming and not paused?
//!
//! One small shared state that the worker loop writes and `/readyz` reads.
//! Every setter also moves the matching gauge (`sms_amqp_connected`,
//! `sms_worker_paused`), so the metric and the probe can never disagree.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::metrics::Metrics;

/// How long a publishing failure keeps the worker not ready: the job went
/// back to the queue, and if nothing needs publishing afterwards no success
/// would ever clear it; a new failure starts it again.
const PUBLISH_FAILING_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// Why the worker is not ready, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct NotReady {
    /// `disconnected`, `blocked`, `publish_failing`, `paused` or
    /// `not_consuming`.
    pub reason: &'static str,
    /// For a human: what is going on and what clears it.
    pub detail: String,
}

#[derive(Debug, Default)]
struct State {
    connected: bool,
    consuming: bool,
    paused: Option<String>,
    blocked: Option<String>,
    /// What failed, and when: it counts for [`PUBLISH_FAILING_FOR`].
    publish_failing: Option<(String, std::time::Instant)>,
}

/// Shared readiness state. Clones share it.
#[derive(Clone)]
pub(crate) struct Health {
    state: Arc<Mutex<State>>,
    metrics: Metrics,
    /// Whether this process consumes `sms.send` (`run --role http` does
    /// not: it is ready when it can publish, paused or not).
    consumes: bool,
}

impl Health {
    /// Readiness for a process that consumes (`consumes`) or only serves
    /// the HTTP side.
    pub(crate) fn new(metrics: Metrics, consumes: bool) -> Health {
        Health {
            state: Arc::new(Mutex::new(State::default())),
            metrics,
            consumes,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.with(|s| s.connected = connected);
        self.metrics.amqp_connected.set(i64::from(connected));
    }

    pub(crate) fn set_consuming(&self, consuming: bool) {
        self.with(|s| s.consuming = consuming);
    }

    /// Marks publishing blocked by the broker (a memory or disk alarm), with
    /// the broker's reason, or unblocked with `None`.
    pub(crate) fn set_blocked(&self, reason: Option<String>) {
        self.with(|s| s.blocked = reason);
    }

    /// Marks publishing failing (every try of a dead letter or retry failed;
    /// the job went back to the queue), or working again with `None`.
    pub(crate) fn set_publish_failing(&self, detail: Option<String>) {
        let now = std::time::Instant::now();
        self.with(|s| s.publish_failing = detail.map(|d| (d, now)));
    }

    /// Marks the worker paused with a reason an operator can act on, or
    /// resumed with `None`.
    pub(crate) fn set_paused(&self, reason: Option<String>) {
        let paused = reason.is_some();
        self.with(|s| s.paused = reason);
        self.metrics.worker_paused.set(i64::from(paused));
    }

    /// `Ok` when ready; else the first reason that holds, in the order an
    /// operator should look at them.
    pub(crate) fn readiness(&self) -> Result<(), NotReady> {
        self.with(|s| {
            if !s.connected {
                Err(NotReady {
                    reason: "disconnected",
                    detail: "not connected to the broker; reconnecting".to_owned(),
                })
            } else if let Some(blocked) = &s.blocked {
                Err(NotReady {
                    reason: "blocked",
                    detail: format!(
                        "the broker blocks publishing ({blocked}): dead letters, retries and new jobs wait until the alarm clears"
                    ),
                })
            } else if let Some((failing, _)) = s
                .publish_failing
                .as_ref()
                .filter(|(_, at)| at.elapsed() < PUBLISH_FAILING_FOR)
            {
                Err(NotReady {
                    reason: "publish_failing",
                    detail: failing.clone(),
                })
            } else if !self.consumes {
                Ok(())
            } else if let Some(paused) = &s.paused {
                Err(NotReady {
                    reason: "paused",
                    detail: paused.clone(),
                })
            } else if !s.consuming {
                Err(NotReady {
                    reason: "not_consuming",
                    detail: "connected but not consuming sms.send".to_owned(),
                })
            } else {
                Ok(())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_connected_consuming_and_not_paused() {
        let h = Health::new(Metrics::new(), true);
        assert_eq!(h.readiness().unwrap_err().reason, "disconnected");
        h.set_connected(true);
        assert_eq!(h.readiness().unwrap_err().reason, "not_consuming");
        h.set_consuming(true);
        assert!(h.readiness().is_ok());
        h.set_paused(Some("Twilio 20003".to_owned()));
        let e = h.readiness().unwrap_err();
        assert_eq!((e.reason, e.detail.as_str()), ("paused", "Twilio 20003"));
        h.set_paused(None);
        h.set_blocked(Some("low on memory".to_owned()));
        let e = h.readiness().unwrap_err();
        assert_eq!(e.reason, "blocked");
        assert!(e.detail.contains("low on memory"), "{}", e.detail);
        h.set_blocked(None);
        assert!(h.readiness().is_ok());
        h.set_connected(false);
        assert_eq!(h.readiness().unwrap_err().reason, "disconnected");
    }

    #[test]
    fn the_http_role_is_ready_when_it_can_publish_paused_or_not() {
        let h = Health::new(Metrics::new(), false);
        assert_eq!(h.readiness().unwrap_err().reason, "disconnected");
        h.set_connected(true);
        assert!(h.readiness().is_ok(), "the HTTP side consumes nothing");
        h.set_paused(Some("Twilio 20003".to_owned()));
        assert!(h.readiness().is_ok(), "a pause stops sends, not the ingest");
        h.set_blocked(Some("low on memory".to_owned()));
        assert_eq!(h.readiness().unwrap_err().reason, "blocked");
    }
}
