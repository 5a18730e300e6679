//! Prometheus metrics: the contract's names (section 7), process metrics and
//! build info, in one registry.
//!
//! Labels are bounded sets: a template type, an outcome class, a Twilio error
//! code (five digits, from Twilio), a dead-letter reason, an encoding. Never a
//! phone number, a code, an IP or free text. The worker moves each counter in
//! the same branch that decides the outcome, so a job counted as sent was sent.
//!
//! `/metrics` answers in OpenMetrics when the scraper asks for it (Prometheus
//! does) and in the classic text format (0.0.4) otherwise, which is what
//! `curl` and `promtool check metrics` read.

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::amqp::dead_letter::Reason;
use crate::encoding::Encoding;
use crate::job::TemplateType;

/// `{type}`: a Logto template type, or `unknown` for a job that did not decode.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TypeLabel {
    pub r#type: &'static str,
}

/// `{class, twilio_code}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FailureLabels {
    /// `transient`, `permanent`, `config` or `network`.
    pub class: &'static str,
    /// Twilio's five-digit code, or `none`.
    pub twilio_code: String,
}

/// `{reason}`: a dead-letter reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub reason: &'static str,
}

/// `{encoding, country}`: `gsm7` or `ucs2`, and the destination's ISO 3166
/// region (or `unknown`): a bounded set, for cost and pumping dashboards.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EncodingLabel {
    pub encoding: &'static str,
    pub country: String,
}

/// `{result}` of a reconciliation: `found`, `not_found` or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub(crate) result: &'static str,
}

/// `{outcome}` of an outcome event: `sent`, `dead_lettered`, or `failed`
/// (it could not be published).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub(crate) outcome: &'static str,
}

/// `{status, error_code}` of a final delivery status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabels {
    /// `delivered`, `undelivered` or `failed`.
    pub(crate) status: &'static str,
    /// Twilio's five-digit code (30xxx), or `none`.
    pub(crate) error_code: String,
}

/// `{rule}`: the abuse limit that refused a job.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RuleLabel {
    pub(crate) rule: &'static str,
}

/// `{store}`: where a duplicate was recognised, `memory` or `redis`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StoreLabel {
    pub(crate) store: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// Every metric the worker moves. Clones share the same values.
#[derive(Clone)]
pub(crate) struct Metrics {
    registry: std::sync::Arc<Registry>,
    pub jobs_received: Family<TypeLabel, Counter>,
    pub sent: Family<TypeLabel, Counter>,
    pub send_failures: Family<FailureLabels, Counter>,
    pub retries: Counter,
    pub dead_lettered: Family<ReasonLabel, Counter>,
    pub twilio_request_duration: Histogram,
    pub job_age: Histogram,
    pub in_flight: Gauge,
    pub worker_paused: Gauge,
    pub amqp_connected: Gauge,
    pub segments: Family<EncodingLabel, Counter>,
    pub(crate) duplicates_suppressed: Family<StoreLabel, Counter>,
    pub(crate) redis_connected: Gauge,
    pub(crate) reconciled: Family<ResultLabel, Counter>,
    pub(crate) blocked: Family<RuleLabel, Counter>,
    pub(crate) events_published: Family<OutcomeLabel, Counter>,
    pub(crate) delivery_status: Family<StatusLabels, Counter>,
    pub(crate) delivery_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        let jobs_received = Family::<TypeLabel, Counter>::default();
        let sent = Family::<TypeLabel, Counter>::default();
        let send_failures = Family::<FailureLabels, Counter>::default();
        let retries = Counter::default();
        let dead_lettered = Family::<ReasonLabel, Counter>::default();
        // 10 ms to ~30 s: a healthy Twilio answers in 100–500 ms; the top
        // buckets catch the timeouts.
        let twilio_request_duration = Histogram::new([
            0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0, 30.0,
        ]);
        // 100 ms to 15 min: a code older than a minute or two is useless to
        // the person waiting for it.
        let job_age = Histogram::new([
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0,
        ]);
        let in_flight = Gauge::default();
        let worker_paused = Gauge::default();
        let amqp_connected = Gauge::default();
        let segments = Family::<EncodingLabel, Counter>::default();
        let duplicates_suppressed = Family::<StoreLabel, Counter>::default();
        let redis_connected = Gauge::default();
        let reconciled = Family::<ResultLabel, Counter>::default();
        let blocked = Family::<RuleLabel, Counter>::default();
        let events_published = Family::<OutcomeLabel, Counter>::default();
        let delivery_status = Family::<StatusLabels, Counter>::default();
        // 1 s to 30 min: a code is useful for a minute or two; carriers
        // sometimes take far longer.
        let delivery_seconds = Histogram::new([
            1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
        ]);

        registry.register(
            "sms_jobs_received",
            "Jobs taken from the queue, by template type (unknown: the job did not decode)",
            jobs_received.clone(),
        );
        registry.register(
            "sms_sent",
            "Jobs Twilio accepted (HTTP 201), by template type",
            sent.clone(),
        );
        registry.register(
            "sms_send_failures",
            "Twilio calls that failed, by class (transient, permanent, config, network) and Twilio error code",
            send_failures.clone(),
        );
        registry.register(
            "sms_retries",
            "Retries scheduled after a transient failure (in the process or in a delay queue)",
            retries.clone(),
        );
        registry.register(
            "sms_dead_lettered",
            "Jobs moved to the dead-letter queue, by reason",
            dead_lettered.clone(),
        );
        registry.register(
            "sms_twilio_request_duration_seconds",
            "Time from sending a request to Twilio to its answer",
            twilio_request_duration.clone(),
        );
        registry.register(
            "sms_job_age_seconds",
            "Time from a job's publication to Twilio accepting it",
            job_age.clone(),
        );
        registry.register(
            "sms_in_flight",
            "Jobs this worker holds right now",
            in_flight.clone(),
        );
        registry.register(
            "sms_worker_paused",
            "1 while the worker is paused on an account or configuration fault",
            worker_paused.clone(),
        );
        registry.register(
            "sms_amqp_connected",
            "1 while the worker is connected to the broker",
            amqp_connected.clone(),
        );
        registry.register(
            "sms_segments",
            "SMS segments sent, by encoding (gsm7, ucs2): what Twilio bills",
            segments.clone(),
        );
        registry.register(
            "sms_duplicates_suppressed",
            "Jobs acked without a send because they were sent already, by where that was known (memory: this worker; redis: the fleet)",
            duplicates_suppressed.clone(),
        );
        registry.register(
            "sms_redis_connected",
            "1 while the fleet's Redis answers (0 without one, or while it is down: duplicate protection is then per worker)",
            redis_connected.clone(),
        );
        registry.register(
            "sms_reconciled",
            "Ambiguous attempts settled against Twilio's message list, by result (found: sent already, acked without a send; not_found: sent now; failed: the list could not be read, sent now)",
            reconciled.clone(),
        );
        registry.register(
            "sms_blocked",
            "Jobs an abuse limit refused (never sent), by rule: per_number, per_ip, country, country_budget",
            blocked.clone(),
        );
        registry.register(
            "sms_events_published",
            "Outcome events published to sms.events, by outcome (sent, dead_lettered); failed: an event that could not be published (it is lost; the job's outcome stands)",
            events_published.clone(),
        );
        registry.register(
            "sms_delivery_status",
            "Final delivery statuses Twilio reported (status callbacks), once per message, by status and Twilio error code",
            delivery_status.clone(),
        );
        registry.register(
            "sms_delivery_seconds",
            "Time from a job's publication to Twilio reporting it delivered: the wait the user feels",
            delivery_seconds.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "sms_build_info",
            "The running version (the value is always 1)",
            build_info,
        );
        registry.register_collector(Box::new(ProcessCollector::new()));

        // Every series with a known label value exists from the start, at
        // zero, so dashboards and `rate()` see the first event.
        for kind in TemplateType::ALL {
            let label = TypeLabel {
                r#type: kind.as_str(),
            };
            let _ = jobs_received.get_or_create(&label);
            let _ = sent.get_or_create(&label);
        }
        let _ = jobs_received.get_or_create(&TypeLabel { r#type: "unknown" });
        for reason in Reason::ALL {
            let _ = dead_lettered.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            });
        }
        for encoding in ["gsm7", "ucs2"] {
            let _ = segments.get_or_create(&EncodingLabel {
                encoding,
                country: "unknown".to_owned(),
            });
        }
        for status in ["delivered", "undelivered", "failed"] {
            let _ = delivery_status.get_or_create(&StatusLabels {
                status,
                error_code: "none".to_owned(),
            });
        }
        for outcome in ["sent", "dead_lettered", "status", "failed"] {
            let _ = events_published.get_or_create(&OutcomeLabel { outcome });
        }
        for rule in ["per_number", "per_ip", "country", "country_budget"] {
            let _ = blocked.get_or_create(&RuleLabel { rule });
        }
        for result in ["found", "not_found", "failed"] {
            let _ = reconciled.get_or_create(&ResultLabel { result });
        }
        for store in ["memory", "redis"] {
            let _ = duplicates_suppressed.get_or_create(&StoreLabel { store });
        }
        for class in ["transient", "permanent", "config", "network"] {
            let _ = send_failures.get_or_create(&FailureLabels {
                class,
                twilio_code: "none".to_owned(),
            });
        }

        Metrics {
            registry: std::sync::Arc::new(registry),
            jobs_received,
            sent,
            send_failures,
            retries,
            dead_lettered,
            twilio_request_duration,
            job_age,
            in_flight,
            worker_paused,
            amqp_connected,
            segments,
            duplicates_suppressed,
            redis_connected,
            reconciled,
            blocked,
            events_published,
            delivery_status,
            delivery_seconds,
        }
    }

    /// Counts a final delivery status (once per message) and, for
    /// `delivered`, how long the user waited.
    pub(crate) fn delivery(
        &self,
        status: &'static str,
        error_code: Option<u32>,
        waited: Option<Duration>,
    ) {
        let error_code = match error_code {
            Some(code) if (10_000..100_000).contains(&code) => code.to_string(),
            Some(_) => "other".to_owned(),
            None => "none".to_owned(),
        };
        self.delivery_status
            .get_or_create(&StatusLabels { status, error_code })
            .inc();
        if let Some(waited) = waited {
            self.delivery_seconds.observe(waited.as_secs_f64());
        }
    }

    /// Counts an outcome event, published or (`failed`) not.
    pub(crate) fn event_published(&self, outcome: &'static str) {
        self.events_published
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts a job an abuse limit refused.
    pub(crate) fn blocked(&self, rule: &'static str) {
        self.blocked.get_or_create(&RuleLabel { rule }).inc();
    }

    /// Counts a reconciliation by its result.
    pub(crate) fn reconciled(&self, result: &'static str) {
        self.reconciled.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a job acked without a send because it was sent already.
    pub(crate) fn duplicate(&self, store: &'static str) {
        self.duplicates_suppressed
            .get_or_create(&StoreLabel { store })
            .inc();
    }

    /// Counts a job taken from the queue.
    pub(crate) fn received(&self, kind: Option<TemplateType>) {
        let r#type = kind.map_or("unknown", TemplateType::as_str);
        self.jobs_received
            .get_or_create(&TypeLabel { r#type })
            .inc();
    }

    /// Counts a job Twilio accepted, its segments and its age.
    pub(crate) fn sent(
        &self,
        kind: TemplateType,
        encoding: Encoding,
        segments: u64,
        age: Option<Duration>,
        country: Option<&str>,
    ) {
        self.sent
            .get_or_create(&TypeLabel {
                r#type: kind.as_str(),
            })
            .inc();
        let encoding = match encoding {
            Encoding::Gsm7 => "gsm7",
            Encoding::Ucs2 => "ucs2",
        };
        let country = country.unwrap_or("unknown").to_owned();
        self.segments
            .get_or_create(&EncodingLabel { encoding, country })
            .inc_by(segments);
        if let Some(age) = age {
            self.job_age.observe(age.as_secs_f64());
        }
    }

    /// Counts a failed Twilio call.
    pub(crate) fn send_failed(&self, class: &'static str, twilio_code: Option<u32>) {
        let twilio_code = match twilio_code {
            Some(code) if (10_000..100_000).contains(&code) => code.to_string(),
            Some(_) => "other".to_owned(),
            None => "none".to_owned(),
        };
        self.send_failures
            .get_or_create(&FailureLabels { class, twilio_code })
            .inc();
    }

    /// Counts a dead letter.
    pub(crate) fn dead_lettered(&self, reason: &'static str) {
        self.dead_lettered
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The exposition for a scraper that sent `accept`: OpenMetrics when it
    /// asks for it, else the classic text format. Returns the content type and
    /// the body.
    pub(crate) fn render(&self, accept: Option<&str>) -> (&'static str, String) {
        let mut open_metrics = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry);
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            (
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                open_metrics,
            )
        } else {
            (
                "text/plain; version=0.0.4; charset=utf-8",
                to_prometheus_text(&open_metrics),
            )
        }
    }
}

/// Converts OpenMetrics text to the classic Prometheus text format: counter
/// families are named with their `_total` suffix, `# UNIT` and `# EOF` go.
fn to_prometheus_text(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len());
    let mut pending_help: Option<(&str, &str)> = None;
    for line in open_metrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, help)) = pending_help.take() {
                let _ = writeln!(out, "# HELP {name} {help}");
            }
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, help));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            if let Some((_, help)) = pending_help.take() {
                let _ = writeln!(out, "# HELP {name} {help}");
            }
            let kind = match kind {
                "counter" | "gauge" | "histogram" | "summary" => kind,
                _ => "untyped",
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Process metrics read from `/proc/self` on each scrape (Linux; elsewhere
/// they are absent).
#[derive(Debug)]
struct ProcessCollector {
    ticks_per_second: f64,
    page_size: f64,
}

impl ProcessCollector {
    fn new() -> ProcessCollector {
        // The kernel's USER_HZ and page size are 100 and 4096 on every Linux
        // this runs on; reading them needs libc, which this crate avoids.
        ProcessCollector {
            ticks_per_second: 100.0,
            page_size: 4096.0,
        }
    }

    fn stat(&self) -> Option<(f64, f64, f64, f64)> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses.
        let after = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let num = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        // utime 14, stime 15, starttime 22, vsize 23, rss 24 (1-based in
        // proc(5)); `after` starts at field 3.
        let cpu = (num(11)? + num(12)?) / self.ticks_per_second;
        let start_ticks = num(19)?;
        let vsize = num(20)?;
        let rss = num(21)? * self.page_size;
        let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
        let uptime: f64 = uptime.split_whitespace().next()?.parse().ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        let start_time = now - uptime + start_ticks / self.ticks_per_second;
        Some((cpu, rss, vsize, start_time))
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some((cpu, rss, vsize, start_time)) = self.stat() {
            let counter = ConstCounter::new(cpu);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                counter.metric_type(),
            )?)?;
            for (name, help, value) in [
                (
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes",
                    rss,
                ),
                (
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes",
                    vsize,
                ),
                (
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch in seconds",
                    start_time,
                ),
            ] {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let gauge = ConstGauge::new(fds.count() as i64);
            gauge.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                gauge.metric_type(),
            )?)?;
        }
        if let Some(max) = max_fds() {
            let gauge = ConstGauge::new(max);
            gauge.encode(encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

fn max_fds() -> Option<i64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_names_counters_with_total() {
        let m = Metrics::new();
        m.received(Some(TemplateType::SignIn));
        m.sent(
            TemplateType::SignIn,
            Encoding::Gsm7,
            1,
            Some(Duration::from_millis(300)),
            Some("JP"),
        );
        m.send_failed("permanent", Some(21211));
        m.dead_lettered("rejected");
        let (ct, text) = m.render(None);
        assert!(ct.starts_with("text/plain"));
        assert!(text.contains("# TYPE sms_sent_total counter"), "{text}");
        assert!(text.contains("# HELP sms_sent_total "), "{text}");
        assert!(text.contains("sms_sent_total{type=\"SignIn\"} 1"), "{text}");
        assert!(
            text.contains("sms_send_failures_total{class=\"permanent\",twilio_code=\"21211\"} 1")
        );
        assert!(text.contains("sms_dead_lettered_total{reason=\"rejected\"} 1"));
        assert!(text.contains("sms_segments_total{encoding=\"gsm7\",country=\"JP\"} 1"));
        assert!(text.contains("sms_build_info{version=\""));
        assert!(text.contains("process_resident_memory_bytes"));
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn open_metrics_when_asked() {
        let m = Metrics::new();
        let (ct, text) = m.render(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        ));
        assert!(ct.starts_with("application/openmetrics-text"));
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("# TYPE sms_sent counter"));
    }

    #[test]
    fn odd_codes_cannot_grow_the_label_set() {
        let m = Metrics::new();
        m.send_failed("transient", Some(7));
        m.send_failed("transient", Some(1_234_567));
        let (_, text) = m.render(None);
        assert!(text.contains("twilio_code=\"other\"} 2"), "{text}");
    }
}
