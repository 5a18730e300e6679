//! The retry policy: when a transient failure is tried again, and where it waits.
//!
//! Delays grow exponentially with jitter (backon's `ExponentialBuilder`: after
//! the n-th failed attempt the wait is drawn from `[base·2ⁿ⁻¹, base·2ⁿ)`,
//! capped at `max_delay`); a `Retry-After` from Twilio is honoured when it asks
//! for longer. A short wait is spent in the process, holding the delivery; a
//! longer one is parked in a durable delay queue so that no worker memory holds
//! the job (see [`crate::amqp::topology`]). The attempt count travels with the
//! message, so a restart forgets nothing. A retry that would come after the
//! code expires is never scheduled: the job is dead-lettered `expired` instead.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How transient failures are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Twilio calls in all, across every process, before `retries_exhausted`.
    pub max_attempts: u32,
    /// The first delay.
    pub base_delay: Duration,
    /// No computed delay is longer (a `Retry-After` may be, up to the longest
    /// delay queue).
    pub max_delay: Duration,
    /// Waits up to this long happen in the process; longer ones are parked.
    pub in_process_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            in_process_wait: Duration::from_secs(2),
        }
    }
}

/// The delay queues' lengths. A parked retry goes to the shortest tier at
/// least as long as its delay and carries its own delay as the message TTL, so
/// it comes back no sooner than its delay and no later than its tier.
pub(crate) const DELAY_TIERS: [Duration; 8] = [
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
    Duration::from_secs(32),
    Duration::from_secs(64),
    Duration::from_secs(128),
    Duration::from_secs(256),
    Duration::from_secs(512),
];

/// The longest a retry can be parked.
pub(crate) const LONGEST_DELAY: Duration = DELAY_TIERS[DELAY_TIERS.len() - 1];

/// What to do after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryDecision {
    /// Wait this long in the process, then try again.
    Wait(Duration),
    /// Park the job in the delay queue of this tier for this long.
    Park { delay: Duration, tier: Duration },
    /// Every attempt is spent: dead-letter `retries_exhausted`.
    Exhausted,
    /// The next attempt would come after the code expires: dead-letter `expired`.
    WouldExpire { delay: Duration },
}

impl RetryPolicy {
    /// The wait after `failed_attempts` failures (1 for the first), with
    /// jitter, at least `retry_after` when Twilio gave one.
    pub(crate) fn delay_after(
        &self,
        failed_attempts: u32,
        retry_after: Option<Duration>,
    ) -> Duration {
        let n = failed_attempts.max(1) as usize;
        let computed = ExponentialBuilder::default()
            .with_min_delay(self.base_delay)
            .with_factor(2.0)
            .with_max_delay(self.max_delay)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(n - 1)
            .unwrap_or(self.max_delay)
            .min(self.max_delay);
        retry_after
            .map_or(computed, |ra| computed.max(ra))
            .min(LONGEST_DELAY)
    }

    /// Decides the next step after `failed_attempts` failed Twilio calls,
    /// given the code's remaining life.
    pub(crate) fn decide(
        &self,
        failed_attempts: u32,
        retry_after: Option<Duration>,
        time_left: Duration,
    ) -> RetryDecision {
        if failed_attempts >= self.max_attempts {
            return RetryDecision::Exhausted;
        }
        let delay = self.delay_after(failed_attempts, retry_after);
        if delay >= time_left {
            RetryDecision::WouldExpire { delay }
        } else if delay <= self.in_process_wait {
            RetryDecision::Wait(delay)
        } else {
            RetryDecision::Park {
                delay,
                tier: tier_for(delay),
            }
        }
    }
}

/// The shortest delay tier that is at least `delay` long.
pub(crate) fn tier_for(delay: Duration) -> Duration {
    DELAY_TIERS
        .into_iter()
        .find(|t| *t >= delay)
        .unwrap_or(LONGEST_DELAY)
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date, capped at
/// [`LONGEST_DELAY`] (a proxy may send anything).
pub(crate) fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs.min(LONGEST_DELAY.as_secs()))
    } else if let Ok(secs) = value.parse::<f64>() {
        Duration::try_from_secs_f64(secs).ok()?
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    // Whatever a proxy says, no wait is longer than the longest delay queue.
    Some(wait.min(LONGEST_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn delays_grow_exponentially_with_jitter_inside_their_band() {
        let policy = RetryPolicy::default();
        for n in 1..=8u32 {
            let low = Duration::from_secs(1 << (n - 1)).min(policy.max_delay);
            let high = (low * 2).min(policy.max_delay);
            for _ in 0..50 {
                let d = policy.delay_after(n, None);
                assert!(
                    d >= low && d <= high,
                    "attempt {n}: {d:?} outside {low:?}..{high:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let policy = RetryPolicy::default();
        let delays: std::collections::HashSet<Duration> =
            (0..20).map(|_| policy.delay_after(3, None)).collect();
        assert!(delays.len() > 1, "twenty draws gave one delay");
    }

    #[test]
    fn retry_after_wins_when_longer() {
        let policy = RetryPolicy::default();
        assert!(policy.delay_after(1, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
        assert!(policy.delay_after(1, Some(Duration::ZERO)) >= Duration::from_secs(1));
        assert_eq!(policy.delay_after(1, Some(10 * HOUR)), LONGEST_DELAY);
    }

    #[test]
    fn short_waits_stay_in_process_and_long_ones_are_parked() {
        let policy = RetryPolicy::default();
        assert!(
            matches!(policy.decide(1, None, HOUR), RetryDecision::Wait(d) if d <= Duration::from_secs(2))
        );
        match policy.decide(4, None, HOUR) {
            RetryDecision::Park { delay, tier } => {
                assert!(delay <= tier && tier == tier_for(delay));
                assert_eq!(tier, Duration::from_secs(16));
            }
            other => panic!("{other:?}"),
        }
        match policy.decide(1, Some(Duration::from_secs(5)), HOUR) {
            RetryDecision::Park { delay, tier } => {
                assert!(delay >= Duration::from_secs(5));
                assert_eq!(tier, Duration::from_secs(8));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_retry_past_the_expiry_or_the_last_attempt() {
        let policy = RetryPolicy::default();
        assert!(matches!(
            policy.decide(1, Some(Duration::from_secs(60)), Duration::from_secs(30)),
            RetryDecision::WouldExpire { .. }
        ));
        assert_eq!(policy.decide(8, None, HOUR), RetryDecision::Exhausted);
    }

    #[test]
    fn tiers_cover_every_delay() {
        assert_eq!(tier_for(Duration::from_millis(1)), Duration::from_secs(4));
        assert_eq!(tier_for(Duration::from_secs(4)), Duration::from_secs(4));
        assert_eq!(
            tier_for(Duration::from_millis(4001)),
            Duration::from_secs(8)
        );
        assert_eq!(tier_for(Duration::from_secs(300)), Duration::from_secs(512));
        assert_eq!(tier_for(HOUR), LONGEST_DELAY);
    }

    #[test]
    fn parses_both_retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("86400", now), Some(LONGEST_DELAY));
        assert_eq!(parse_retry_after("1e20", now), None);
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            Some(LONGEST_DELAY)
        );
    }
}
