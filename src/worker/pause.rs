//! The pause switch: an account or configuration fault stops this worker from
//! consuming until a probe send proves the fault is gone.
//!
//! A `config` error (bad credentials, suspended account, a sender that does
//! not exist) is the same for every recipient, so sending the next job would
//! fail the same way and dead-lettering them would empty the queue into
//! `sms.dead`. Instead the job goes back to the queue unchanged, the switch
//! trips, `/readyz` reports the reason and the worker loop stops consuming and
//! probes with backoff. The fault is logged once per pause, not once per job.

use tokio::sync::watch;

use crate::observe::health::Health;

/// The worker's pause state. Clones share it.
#[derive(Clone)]
pub(crate) struct Pause {
    reason: watch::Sender<Option<String>>,
    health: Health,
}

impl Pause {
    pub(crate) fn new(health: Health) -> Pause {
        Pause {
            reason: watch::Sender::new(None),
            health,
        }
    }

    /// Pauses for `reason` (text an operator can act on, no personal data).
    /// Returns true when this call paused the worker, false when it already
    /// was: only the first caller logs.
    pub(crate) fn trip(&self, reason: &str) -> bool {
        let tripped = self.reason.send_if_modified(|current| {
            if current.is_some() {
                false
            } else {
                *current = Some(reason.to_owned());
                true
            }
        });
        if tripped {
            self.health.set_paused(Some(format!(
                "paused on an account or configuration fault: {reason}; probing until a send succeeds"
            )));
        }
        tripped
    }

    /// Resumes. Returns true when the worker was paused.
    pub(crate) fn resume(&self) -> bool {
        let resumed = self
            .reason
            .send_if_modified(|current| current.take().is_some());
        if resumed {
            self.health.set_paused(None);
        }
        resumed
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.reason.borrow().is_some()
    }

    /// The reason, while paused.
    pub(crate) fn reason(&self) -> Option<String> {
        self.reason.borrow().clone()
    }

    /// Resolves when the worker is (or becomes) paused.
    pub(crate) async fn tripped(&self) {
        let mut rx = self.reason.subscribe();
        // The sender lives in `self`, so this cannot fail while we wait.
        let _ = rx.wait_for(Option::is_some).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::Metrics;
    use std::time::Duration;

    #[tokio::test]
    async fn trips_once_and_resumes() {
        let health = Health::new(Metrics::new(), true);
        health.set_connected(true);
        health.set_consuming(true);
        let pause = Pause::new(health.clone());
        assert!(!pause.is_paused());
        assert!(pause.trip("Twilio 20003"));
        assert!(
            !pause.trip("Twilio 20003"),
            "a second fault does not log again"
        );
        assert_eq!(health.readiness().unwrap_err().reason, "paused");
        tokio::time::timeout(Duration::from_secs(1), pause.tripped())
            .await
            .unwrap();
        assert!(pause.resume());
        assert!(!pause.resume());
        assert!(health.readiness().is_ok());
    }
}
