//! The abuse-limit rules, as configured, with defaults that never bother a
//! normal user: a person signing in gets a handful of codes an hour at
//! most.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

/// At most `count` sends per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) count: u64,
    pub(crate) per: Duration,
}

impl Window {
    /// Parses `5/10m`, `10/1d`, `100/1h`, `3/30s`.
    pub(crate) fn parse(text: &str) -> Option<Window> {
        let (count, per) = text.trim().split_once('/')?;
        let count: u64 = count.trim().parse().ok().filter(|&c| c > 0)?;
        let per = per.trim();
        let (number, unit) = per.split_at(per.find(|c: char| c.is_ascii_alphabetic())?);
        let number: u64 = if number.is_empty() {
            1
        } else {
            number.parse().ok()?
        };
        let secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return None,
        };
        let per = Duration::from_secs(number.checked_mul(secs).filter(|&s| s > 0)?);
        Some(Window { count, per })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.per.as_secs();
        let (n, unit) = if secs.is_multiple_of(86_400) {
            (secs / 86_400, "d")
        } else if secs.is_multiple_of(3_600) {
            (secs / 3_600, "h")
        } else if secs.is_multiple_of(60) {
            (secs / 60, "m")
        } else {
            (secs, "s")
        };
        write!(f, "{}/{n}{unit}", self.count)
    }
}

/// Which destination countries may receive codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CountryRule {
    /// Every country (the default).
    Any,
    /// Only these ISO 3166 regions.
    Allow(BTreeSet<String>),
    /// Every region but these.
    Deny(BTreeSet<String>),
}

impl CountryRule {
    /// Whether `region` (None: unknown) may receive codes. An allow list
    /// refuses numbers whose region is unknown.
    pub(crate) fn admits(&self, region: Option<&str>) -> bool {
        match self {
            CountryRule::Any => true,
            CountryRule::Allow(allowed) => region.is_some_and(|r| allowed.contains(r)),
            CountryRule::Deny(denied) => region.is_none_or(|r| !denied.contains(r)),
        }
    }
}

/// Every abuse limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LimitRules {
    /// Sends per destination number.
    pub(crate) per_number: Vec<Window>,
    /// Sends per client IP (IPv6 by /64).
    pub(crate) per_ip: Vec<Window>,
    /// Destination countries.
    pub(crate) countries: CountryRule,
    /// SMS segments per destination country per hour; `None`: no budget.
    pub(crate) country_budget_per_hour: Option<u64>,
}

impl Default for LimitRules {
    fn default() -> Self {
        LimitRules {
            per_number: vec![
                Window {
                    count: 5,
                    per: Duration::from_secs(600),
                },
                Window {
                    count: 10,
                    per: Duration::from_secs(86_400),
                },
            ],
            per_ip: vec![
                Window {
                    count: 30,
                    per: Duration::from_secs(600),
                },
                Window {
                    count: 200,
                    per: Duration::from_secs(86_400),
                },
            ],
            countries: CountryRule::Any,
            country_budget_per_hour: Some(5_000),
        }
    }
}

impl fmt::Display for LimitRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |windows: &[Window]| {
            if windows.is_empty() {
                "none".to_owned()
            } else {
                windows
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        writeln!(f, "per number: {}", list(&self.per_number))?;
        writeln!(f, "per client IP (IPv6 by /64): {}", list(&self.per_ip))?;
        match &self.countries {
            CountryRule::Any => writeln!(f, "countries: any")?,
            CountryRule::Allow(c) => writeln!(
                f,
                "countries: only {}",
                c.iter().cloned().collect::<Vec<_>>().join(", ")
            )?,
            CountryRule::Deny(c) => writeln!(
                f,
                "countries: all but {}",
                c.iter().cloned().collect::<Vec<_>>().join(", ")
            )?,
        }
        match self.country_budget_per_hour {
            Some(n) => write!(f, "budget per country: {n} segments an hour"),
            None => write!(f, "budget per country: none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_as_written() {
        assert_eq!(
            Window::parse("5/10m"),
            Some(Window {
                count: 5,
                per: Duration::from_secs(600)
            })
        );
        assert_eq!(Window::parse("10/1d").unwrap().to_string(), "10/1d");
        assert_eq!(Window::parse("3/h").unwrap().per, Duration::from_secs(3600));
        for bad in ["", "5", "0/1m", "5/0m", "5/10x", "x/1m"] {
            assert_eq!(Window::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_allow_list_refuses_unknown_regions_and_a_deny_list_admits_them() {
        let allow = CountryRule::Allow(["JP".to_owned()].into());
        assert!(allow.admits(Some("JP")));
        assert!(!allow.admits(Some("US")));
        assert!(!allow.admits(None));
        let deny = CountryRule::Deny(["JM".to_owned()].into());
        assert!(!deny.admits(Some("JM")));
        assert!(deny.admits(None));
    }
}
