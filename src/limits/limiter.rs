//! Applying the rules: fixed windows counted in Redis (one atomic script
//! for all of a job's counters, so a refused job takes nothing) or, without
//! Redis or while it is down, in this process's memory (N processes are
//! then N times looser).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::region::region_of;
use super::rules::LimitRules;
use crate::fleet::{Quota, RedisStore};
use crate::observe::metrics::Metrics;
use crate::phone::PhoneNumber;

/// A job a limit refused, and which one (never the number or the IP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// `per_number`, `per_ip`, `country` or `country_budget`.
    pub(crate) rule: &'static str,
}

/// The rules, applied fleet-wide (Redis) or per process.
pub(crate) struct Limiter {
    rules: LimitRules,
    fleet: Option<RedisStore>,
    /// Counters of this process.
    local: Mutex<LocalCounters>,
    metrics: Metrics,
}

/// What a counter is for, in the order refusals are reported.
struct Counter {
    rule: &'static str,
    quota: Quota,
}

impl Limiter {
    /// A limiter for `rules`, sharing counters through `fleet` when given.
    pub(crate) fn new(rules: LimitRules, fleet: Option<RedisStore>, metrics: Metrics) -> Limiter {
        Limiter {
            rules,
            fleet,
            local: Mutex::new(LocalCounters::default()),
            metrics,
        }
    }

    /// Admits a send of `segments` to `to` asked for from `ip`, taking its
    /// share of every limit, or refuses it (counted in `sms_blocked_total`).
    pub(crate) async fn admit(
        &self,
        to: &PhoneNumber,
        ip: Option<&str>,
        segments: u64,
    ) -> Result<(), Refusal> {
        let result = self.check(to, ip, segments).await;
        if let Err(refusal) = result {
            self.metrics.blocked(refusal.rule);
        }
        result
    }

    async fn check(
        &self,
        to: &PhoneNumber,
        ip: Option<&str>,
        segments: u64,
    ) -> Result<(), Refusal> {
        let region = region_of(to);
        if !self.rules.countries.admits(region.as_deref()) {
            return Err(Refusal { rule: "country" });
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut counters = Vec::new();
        let window_key = |what: &str, subject: &str, per: Duration| {
            let secs = per.as_secs().max(1);
            format!("limit:{what}:{subject}:{secs}:{}", now.as_secs() / secs)
        };
        for window in &self.rules.per_number {
            counters.push(Counter {
                rule: "per_number",
                quota: Quota {
                    key: window_key("number", to.as_e164(), window.per),
                    limit: window.count,
                    cost: 1,
                    ttl: window.per,
                },
            });
        }
        if let Some(client) = ip.and_then(client_key) {
            for window in &self.rules.per_ip {
                counters.push(Counter {
                    rule: "per_ip",
                    quota: Quota {
                        key: window_key("ip", &client, window.per),
                        limit: window.count,
                        cost: 1,
                        ttl: window.per,
                    },
                });
            }
        }
        if let Some(budget) = self.rules.country_budget_per_hour {
            let hour = Duration::from_secs(3_600);
            counters.push(Counter {
                rule: "country_budget",
                quota: Quota {
                    key: window_key("country", region.as_deref().unwrap_or("unknown"), hour),
                    limit: budget,
                    cost: segments.max(1),
                    ttl: hour,
                },
            });
        }
        if counters.is_empty() {
            return Ok(());
        }
        let quotas: Vec<Quota> = counters.iter().map(|c| c.quota.clone()).collect();
        let full = match &self.fleet {
            Some(fleet) => match fleet.take_quotas(&quotas).await {
                Some(full) => full,
                // Redis is down (logged once by the store): this process
                // counts alone until it is back.
                None => self.take_locally(&quotas),
            },
            None => self.take_locally(&quotas),
        };
        match full {
            None => Ok(()),
            Some(i) => Err(Refusal {
                rule: counters[i].rule,
            }),
        }
    }

    /// The same all-or-nothing take, in this process's memory.
    fn take_locally(&self, quotas: &[Quota]) -> Option<usize> {
        let now = Instant::now();
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        local.sweep(now);
        for (i, quota) in quotas.iter().enumerate() {
            if local.used(&quota.key, now) + quota.cost > quota.limit {
                return Some(i);
            }
        }
        for quota in quotas {
            local.add(quota, now);
        }
        None
    }
}

/// This process's counters: key → (used, window ends). An ended window
/// counts as empty; ended ones are removed at most once a
/// [`LocalCounters::SWEEP_EVERY`], not on every take (a scan of every number
/// seen in the last day, per job, was the worker's biggest cost).
#[derive(Default)]
struct LocalCounters {
    counters: HashMap<String, (u64, Instant)>,
    next_sweep: Option<Instant>,
}

impl LocalCounters {
    const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|at| now < at) {
            return;
        }
        self.counters.retain(|_, (_, ends)| *ends > now);
        self.next_sweep = Some(now + Self::SWEEP_EVERY);
    }

    fn used(&self, key: &str, now: Instant) -> u64 {
        self.counters
            .get(key)
            .filter(|(_, ends)| *ends > now)
            .map_or(0, |(used, _)| *used)
    }

    fn add(&mut self, quota: &Quota, now: Instant) {
        let entry = self
            .counters
            .entry(quota.key.clone())
            .or_insert((0, now + quota.ttl));
        if entry.1 <= now {
            *entry = (0, now + quota.ttl);
        }
        entry.0 += quota.cost;
    }
}

/// The key a client IP counts under: the address, or its /64 for IPv6 (one
/// subscriber's devices share a /64). `None` for text that is no address.
fn client_key(ip: &str) -> Option<String> {
    match ip.trim().parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) => Some(v4.to_string()),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            Some(format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{CountryRule, Window};

    fn rules() -> LimitRules {
        LimitRules {
            per_number: vec![Window {
                count: 2,
                per: Duration::from_secs(600),
            }],
            per_ip: vec![Window {
                count: 3,
                per: Duration::from_secs(600),
            }],
            countries: CountryRule::Deny(["JM".to_owned()].into()),
            country_budget_per_hour: Some(4),
        }
    }

    fn number(e164: &str) -> PhoneNumber {
        PhoneNumber::parse(e164).unwrap()
    }

    #[tokio::test]
    async fn each_rule_refuses_by_name_and_a_refused_job_takes_nothing() {
        let limiter = Limiter::new(rules(), None, Metrics::new());
        let a = number("+819012345601");
        assert!(limiter.admit(&a, Some("203.0.113.7"), 1).await.is_ok());
        assert!(limiter.admit(&a, Some("203.0.113.8"), 1).await.is_ok());
        assert_eq!(
            limiter.admit(&a, Some("203.0.113.9"), 1).await,
            Err(Refusal { rule: "per_number" })
        );
        // The refused send took no IP quota: 203.0.113.9 still has 3.
        let b = number("+819012345602");
        assert!(limiter.admit(&b, Some("203.0.113.9"), 1).await.is_ok());
        // The country budget (4 segments an hour) is spent: 3 so far.
        let c = number("+819012345603");
        assert_eq!(
            limiter.admit(&c, Some("203.0.113.10"), 2).await,
            Err(Refusal {
                rule: "country_budget"
            })
        );
        assert_eq!(
            limiter.admit(&number("+18765550100"), None, 1).await,
            Err(Refusal { rule: "country" })
        );
    }

    #[tokio::test]
    async fn ipv6_clients_count_by_64() {
        let limiter = Limiter::new(
            LimitRules {
                per_number: vec![],
                countries: CountryRule::Any,
                country_budget_per_hour: None,
                ..rules()
            },
            None,
            Metrics::new(),
        );
        for (i, ip) in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9"]
            .iter()
            .enumerate()
        {
            let to = number(&format!("+8190123456{i:02}"));
            assert!(limiter.admit(&to, Some(ip), 1).await.is_ok());
        }
        assert_eq!(
            limiter
                .admit(&number("+819012345699"), Some("2001:db8:1:2::77"), 1)
                .await,
            Err(Refusal { rule: "per_ip" })
        );
        assert!(
            limiter
                .admit(&number("+819012345698"), Some("2001:db8:1:3::1"), 1)
                .await
                .is_ok(),
            "another /64 counts apart"
        );
    }

    #[test]
    fn an_ended_window_counts_as_empty_before_and_after_the_sweep() {
        let quota = Quota {
            key: "n:+819012345601".to_owned(),
            limit: 2,
            cost: 1,
            ttl: Duration::from_secs(600),
        };
        let start = Instant::now();
        let mut counters = LocalCounters::default();
        counters.sweep(start);
        counters.add(&quota, start);
        counters.add(&quota, start);
        assert_eq!(counters.used(&quota.key, start), 2);
        // The window has ended, but the next sweep is not due: the stale
        // counter must not count, and a new take starts a new window.
        let later = start + Duration::from_secs(601);
        counters.sweep(start + Duration::from_secs(1));
        assert_eq!(counters.used(&quota.key, later), 0);
        counters.add(&quota, later);
        assert_eq!(counters.used(&quota.key, later), 1);
        assert_eq!(
            counters.used(&quota.key, later + Duration::from_secs(599)),
            1
        );
        // A due sweep removes what has ended.
        counters.sweep(later + Duration::from_secs(601));
        assert!(counters.counters.is_empty());
    }
}
