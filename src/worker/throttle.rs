//! The rate-limit throttle: when Twilio says "too many requests", the whole
//! worker slows down, not only the job that heard it.
//!
//! Twilio's 20429 (HTTP 429) means the account has too many requests in
//! flight. The throttle bounds this worker's concurrent Twilio calls: a rate
//! limit halves the bound (at most once a second, so one burst of 429s is one
//! cut) and, when Twilio sent `Retry-After`, holds every new call until then;
//! each accepted message raises the bound by one, back up to the prefetch. The
//! cut is multiplicative and the recovery additive (AIMD, as in TCP), so a
//! fleet of workers converges on what the account allows.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The longest a rate limit holds every call of the worker.
pub(super) const MAX_HOLD: Duration = Duration::from_secs(30);

/// The shared limit on concurrent Twilio calls.
#[derive(Debug)]
pub(super) struct Throttle {
    state: Mutex<State>,
    notify: Notify,
    max: usize,
}

#[derive(Debug)]
struct State {
    limit: usize,
    in_use: usize,
    hold_until: Option<Instant>,
    last_cut: Option<Instant>,
}

/// One call's place under the limit; released on drop.
#[derive(Debug)]
pub(super) struct Permit<'a> {
    throttle: &'a Throttle,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.throttle.lock().in_use -= 1;
        self.throttle.notify.notify_one();
    }
}

/// What a rate limit did to the throttle, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cut {
    pub limit: usize,
    pub hold: Option<Duration>,
}

impl Throttle {
    /// A throttle that allows up to `max` concurrent calls.
    pub(super) fn new(max: usize) -> Throttle {
        let max = max.max(1);
        Throttle {
            state: Mutex::new(State {
                limit: max,
                in_use: 0,
                hold_until: None,
                last_cut: None,
            }),
            notify: Notify::new(),
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a place under the limit and past any hold.
    pub(super) async fn acquire(&self) -> Permit<'_> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let hold = {
                let mut s = self.lock();
                match s.hold_until {
                    Some(until) if until > Instant::now() => Some(until),
                    _ => {
                        if s.in_use < s.limit {
                            s.in_use += 1;
                            return Permit { throttle: self };
                        }
                        None
                    }
                }
            };
            match hold {
                Some(until) => tokio::time::sleep_until(until).await,
                None => notified.await,
            }
        }
    }

    /// Twilio rate-limited a call. Returns the cut when this call made one.
    pub(super) fn rate_limited(&self, retry_after: Option<Duration>) -> Option<Cut> {
        let now = Instant::now();
        let mut s = self.lock();
        if let Some(ra) = retry_after {
            // One job's Retry-After may park that job for minutes, but the
            // whole worker holds for at most MAX_HOLD.
            let until = now + ra.min(MAX_HOLD);
            s.hold_until = Some(s.hold_until.map_or(until, |h| h.max(until)));
        }
        let recent = s
            .last_cut
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
        if recent {
            return None;
        }
        s.limit = (s.limit / 2).max(1);
        s.last_cut = Some(now);
        Some(Cut {
            limit: s.limit,
            hold: retry_after,
        })
    }

    /// Twilio accepted a call: raise the limit by one, up to the maximum.
    pub(super) fn accepted(&self) {
        let mut s = self.lock();
        if s.limit < self.max {
            s.limit += 1;
            drop(s);
            self.notify.notify_one();
        }
    }

    /// The current limit.
    #[cfg(test)]
    pub(super) fn limit(&self) -> usize {
        self.lock().limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounds_concurrent_calls() {
        let t = Throttle::new(2);
        let a = t.acquire().await;
        let _b = t.acquire().await;
        let third = tokio::time::timeout(Duration::from_millis(50), t.acquire()).await;
        assert!(third.is_err(), "a third call got through a limit of 2");
        drop(a);
        let third = tokio::time::timeout(Duration::from_secs(5), t.acquire()).await;
        assert!(third.is_ok());
    }

    #[tokio::test]
    async fn a_rate_limit_halves_once_per_burst_and_success_recovers() {
        let t = Throttle::new(64);
        assert_eq!(
            t.rate_limited(None),
            Some(Cut {
                limit: 32,
                hold: None
            })
        );
        assert_eq!(t.rate_limited(None), None, "a burst of 429s is one cut");
        assert_eq!(t.limit(), 32);
        for _ in 0..10 {
            t.accepted();
        }
        assert_eq!(t.limit(), 42);
        for _ in 0..100 {
            t.accepted();
        }
        assert_eq!(t.limit(), 64);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_holds_every_new_call() {
        let t = Throttle::new(8);
        t.rate_limited(Some(Duration::from_secs(3)));
        let start = Instant::now();
        let _p = t.acquire().await;
        assert!(Instant::now() - start >= Duration::from_secs(3));
    }
}
