//! Observability against a real broker: the metrics follow what the fake
//! Twilio saw and pass `promtool check metrics`; logs carry the job span and
//! the producer's trace id (from the `traceparent` header or from
//! `payload.traceparent`); spans are exported over OTLP when configured.
//! (`/readyz` across a broker outage is checked in `tests/it/broker_restart.rs`,
//! on a broker node of its own.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use lapin::BasicProperties;
use lapin::types::FieldTable;
use serde_json::Value;

const SECS: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn metrics_match_what_twilio_saw_and_pass_promtool() {
    within(90, async {
        let bed = TestBed::start(ConfigFile::full()).await;
        let good: Vec<TestJob> = (0..5)
            .map(|_| TestJob::new(&number(), "SignIn"))
            .chain((0..2).map(|_| TestJob::new(&number(), "Register")))
            .collect();
        let flaky = TestJob::new(&number(), "ForgotPassword");
        bed.twilio.script(&flaky.to, [Reply::server_error(503)]);
        let rejected: Vec<TestJob> = (0..2)
            .map(|_| TestJob::new("+15005550001", "SignIn"))
            .collect();
        for job in good.iter().chain([&flaky]).chain(&rejected) {
            bed.publish(job).await;
        }
        publish_raw(&bed.channel, b"{not json", BasicProperties::default()).await;

        bed.dead_letters(3, SECS).await;
        bed.twilio
            .wait_until(SECS, "every good job accepted", |r| {
                r.iter().filter(|r| r.status == 201).count() == good.len() + 1
            })
            .await;
        bed.wait_drained(SECS).await;

        let text = bed.worker.metrics().await;
        let m = |name: &str, labels: &str| {
            metric(&text, name, labels)
                .unwrap_or_else(|| panic!("{name}{{{labels}}} missing:\n{text}"))
        };
        let seen = bed.twilio.requests();
        let accepted = seen.iter().filter(|r| r.status == 201).count() as f64;
        assert_eq!(m("sms_jobs_received_total", r#"type="SignIn""#), 7.0);
        assert_eq!(m("sms_jobs_received_total", r#"type="Register""#), 2.0);
        assert_eq!(
            m("sms_jobs_received_total", r#"type="ForgotPassword""#),
            1.0
        );
        assert_eq!(m("sms_jobs_received_total", r#"type="unknown""#), 1.0);
        assert_eq!(m("sms_sent_total", r#"type="SignIn""#), 5.0);
        assert_eq!(m("sms_sent_total", r#"type="Register""#), 2.0);
        assert_eq!(m("sms_sent_total", r#"type="ForgotPassword""#), 1.0);
        let sent_total: f64 = ["SignIn", "Register", "ForgotPassword"]
            .iter()
            .map(|t| m("sms_sent_total", &format!(r#"type="{t}""#)))
            .sum();
        assert_eq!(sent_total, accepted, "sent equals what Twilio accepted");
        assert_eq!(
            m(
                "sms_send_failures_total",
                r#"class="permanent",twilio_code="21211""#
            ),
            2.0
        );
        assert_eq!(
            m(
                "sms_send_failures_total",
                r#"class="transient",twilio_code="20503""#
            ),
            1.0
        );
        assert_eq!(m("sms_retries_total", ""), 1.0);
        assert_eq!(m("sms_dead_lettered_total", r#"reason="rejected""#), 2.0);
        assert_eq!(m("sms_dead_lettered_total", r#"reason="invalid_job""#), 1.0);
        assert_eq!(m("sms_dead_lettered_total", r#"reason="expired""#), 0.0);
        assert_eq!(
            m("sms_twilio_request_duration_seconds_count", ""),
            seen.len() as f64,
            "one observation per Twilio call"
        );
        assert_eq!(m("sms_job_age_seconds_count", ""), accepted);
        // Every test number is Japanese (+81): the region label says so.
        assert_eq!(
            m("sms_segments_total", r#"encoding="gsm7",country="JP""#),
            accepted
        );
        assert_eq!(m("sms_in_flight", ""), 0.0);
        assert_eq!(m("sms_worker_paused", ""), 0.0);
        assert_eq!(m("sms_amqp_connected", ""), 1.0);
        assert!(text.contains("sms_build_info{version=\""));
        assert!(m("process_resident_memory_bytes", "") > 0.0);
        assert!(m("process_open_fds", "") > 0.0);
        assert!(text.contains("process_cpu_seconds_total"));
        for series in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                !series.contains("+81") && !series.contains("+1500"),
                "a number in a label: {series}"
            );
        }

        let promtool = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (Debian's prometheus package; .ci/run installs it)");
        use std::io::Write;
        promtool
            .stdin
            .as_ref()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = promtool.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        bed.worker.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_log_line_of_a_job_carries_its_span_and_the_producers_trace_id() {
    within(60, async {
        let bed = TestBed::start(ConfigFile::full()).await;
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let job = TestJob::new(&number(), "SignIn");
        bed.twilio.script(&job.to, [Reply::server_error(500)]);
        let mut headers = FieldTable::default();
        sms_dispatch::wire::set_str(
            &mut headers,
            "traceparent",
            &format!("00-{trace_id}-00f067aa0ba902b7-01"),
        );
        bed.publisher
            .publish_job(&job.id, &job.body(), headers)
            .await
            .unwrap();
        bed.twilio
            .wait_until(SECS, "the job sent after a retry", |r| {
                r.iter().any(|r| r.status == 201)
            })
            .await;
        bed.wait_drained(SECS).await;
        let sid = bed.twilio.accepted()[0].sid.clone().unwrap();
        let logs = bed.worker.finish().await;
        let lines = retried_then_sent(&logs, &job);
        for line in &lines {
            assert_eq!(line["span"]["trace_id"], trace_id, "{line}");
            assert_eq!(line["span"]["type"], "SignIn");
            assert!(line["span"]["to"].as_str().unwrap().contains('*'));
        }
        let retry = lines.iter().find(|l| l["outcome"] == "retry").unwrap();
        assert_eq!(retry["twilio_code"], 20500);
        assert!(retry["delay_ms"].as_u64().is_some());
        let sent = lines.iter().find(|l| l["outcome"] == "sent").unwrap();
        assert_eq!(sent["span"]["message_sid"], sid.as_str());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_traceparent_in_the_payload_gives_the_jobs_lines_its_trace_id() {
    within(60, async {
        let bed = TestBed::start(ConfigFile::full()).await;
        let trace_id = "5c1c63257de34c67a3e8b5f2f6a0d4e1";
        // In the job, not in a header (a producer that cannot set headers).
        let job = TestJob::new(&number(), "SignIn").var(
            "traceparent",
            serde_json::json!(format!("00-{trace_id}-a3ce929d0e0e4736-01")),
        );
        bed.twilio.script(&job.to, [Reply::server_error(500)]);
        bed.publish(&job).await;
        bed.twilio
            .wait_until(SECS, "the job sent after a retry", |r| {
                r.iter().any(|r| r.status == 201)
            })
            .await;
        bed.wait_drained(SECS).await;
        let logs = bed.worker.finish().await;
        for line in retried_then_sent(&logs, &job) {
            assert_eq!(line["span"]["trace_id"], trace_id, "{line}");
        }
    })
    .await;
}

/// The log lines of `job` (by `span.job_id`), checked to be one line per
/// outcome: a retry, then the send.
fn retried_then_sent<'a>(logs: &'a [Value], job: &TestJob) -> Vec<&'a Value> {
    let lines: Vec<_> = logs
        .iter()
        .filter(|l| l["span"]["job_id"] == job.id.as_str())
        .collect();
    let outcomes: Vec<&str> = lines.iter().filter_map(|l| l["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["retry", "sent"], "one line per outcome");
    lines
}

/// A minimal OTLP/HTTP collector: records the bodies POSTed to /v1/traces.
async fn collector() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    use axum::routing::post;
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&bodies);
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let store = Arc::clone(&store);
            async move {
                store.lock().unwrap().push(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, bodies)
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn job_spans_are_exported_over_otlp_as_children_of_the_traceparent() {
    within(60, async {
        let (endpoint, bodies) = collector().await;
        let twilio = FakeTwilio::start().await;
        let bed = TestBed::start_with(ConfigFile::full(), twilio, |o| {
            o.env
                .push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()));
            o.env.push(("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()));
        })
        .await;
        let trace_id = "0af7651916cd43dd8448eb211c80319c";
        let parent = "b7ad6b7169203331";
        let job = TestJob::new(&number(), "Register");
        let mut headers = FieldTable::default();
        sms_dispatch::wire::set_str(
            &mut headers,
            "traceparent",
            &format!("00-{trace_id}-{parent}-01"),
        );
        bed.publisher
            .publish_job(&job.id, &job.body(), headers)
            .await
            .unwrap();
        let (trace, parent) = (hex_bytes(trace_id), hex_bytes(parent));
        eventually(SECS, "a span of the producer's trace exported", || {
            let found = bodies.lock().unwrap().iter().any(|b| {
                b.windows(16).any(|w| w == trace.as_slice())
                    && b.windows(8).any(|w| w == parent.as_slice())
            });
            std::future::ready(found.then_some(()))
        })
        .await;
        bed.worker.finish().await;
    })
    .await;
}
