//! Ids whose Twilio call is under way in this process.
//!
//! After a reconnect the broker delivers again the jobs this worker still
//! holds, so the same job can be in two tasks at once: the old one (its
//! delivery now unusable, perhaps mid-call or held by a rate limit) and the
//! new one. A task claims the id right before it calls Twilio and keeps the
//! claim until the outcome is recorded; a second task with the same id waits
//! for the claim to end and then looks at what was sent.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::job::JobId;

/// The ids being sent right now.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    ids: Mutex<HashMap<JobId, watch::Receiver<()>>>,
}

/// This task's claim on an id; dropping it ends the claim and wakes the
/// tasks waiting for it.
#[derive(Debug)]
pub(super) struct Claim<'a> {
    owner: &'a InFlight,
    id: JobId,
    // Dropped after `Drop::drop` has removed the id: waiters then find it free.
    _done: watch::Sender<()>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.owner.lock().remove(&self.id);
    }
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, watch::Receiver<()>>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `id`, or waits until whoever holds it lets go and returns
    /// `None`: the caller then looks again at what was sent before it
    /// claims.
    pub(super) async fn claim(&self, id: &JobId) -> Option<Claim<'_>> {
        let mut busy = {
            let mut ids = self.lock();
            match ids.get(id) {
                Some(held) => held.clone(),
                None => {
                    let (done, watching) = watch::channel(());
                    ids.insert(id.clone(), watching);
                    return Some(Claim {
                        owner: self,
                        id: id.clone(),
                        _done: done,
                    });
                }
            }
        };
        // Resolves (with an error) when the holder's sender is dropped.
        let _ = busy.changed().await;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_claim_waits_for_the_first_to_end() {
        let in_flight = InFlight::default();
        let id = JobId::parse("job-1").unwrap();
        let first = in_flight.claim(&id).await.expect("free");
        let second = in_flight.claim(&id);
        tokio::pin!(second);
        // Still held: the second claim cannot complete.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut second)
                .await
                .is_err()
        );
        drop(first);
        let waited = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("woken when the first claim ends");
        assert!(waited.is_none(), "the waiter looks again before claiming");
        assert!(in_flight.claim(&id).await.is_some(), "free again");
    }
}
