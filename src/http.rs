//! The HTTP listener: metrics, liveness, readiness and the Logto ingest
//! (contract section 6).
//!
//! One `axum` server on `SMS_DISPATCH_HTTP_ADDR`. It stops with the worker
//! (the same [`Shutdown`] token). `POST /v1/send` exists only when an ingest
//! token is configured: Logto's HTTP SMS connector posts its
//! `SendMessageData` there, the job is checked by the same decoder the worker
//! uses, published with a confirm, and only then answered 202.

use std::net::SocketAddr;

use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lapin::types::FieldTable;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::amqp::headers::{self, HEADER_ADMITTED, HEADER_TRACEPARENT};
use crate::amqp::{SharedPublisher, source_word};
use crate::encoding;
use crate::fleet::RedisStore;
use crate::job::format_rfc3339;
use crate::job::{Envelope, Job, JobId};
use crate::limits::Limiter;
use crate::observe::health::Health;
use crate::observe::metrics::Metrics;
use crate::phone::PhoneNumber;
use crate::shutdown::Shutdown;
use crate::templates::Templates;
use crate::twilio::signature;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use subtle::ConstantTimeEq;

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
}

/// What `POST /v1/send` needs.
#[derive(Clone)]
pub(crate) struct Ingest {
    /// The bearer token callers must present.
    pub token: SecretString,
    /// The worker's current publisher.
    pub publisher: SharedPublisher,
    /// The life of a job without `expires_at`.
    pub default_ttl: Duration,
    /// The abuse limits (shared with the worker).
    pub limiter: Arc<Limiter>,
    /// The templates, to count what a job will cost against the country
    /// budget.
    pub templates: Templates,
}

/// How long the ingest waits for the broker's confirm before answering 503:
/// a sign-in request is waiting.
const INGEST_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest request body read (a job is at most 8 KiB; the decoder says
/// so for anything between).
const INGEST_BODY_LIMIT: usize = 64 * 1024;

/// The routes; `/v1/send` only with `ingest`.
pub(crate) fn router(
    metrics: Metrics,
    health: Health,
    ingest: Option<Ingest>,
    callbacks: Option<StatusCallbacks>,
) -> Router {
    let mut router = Router::new()
        .route("/metrics", get(metrics_route))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health });
    if let Some(ingest) = ingest {
        router = router.merge(
            Router::new()
                .route("/v1/send", post(send_route))
                .layer(DefaultBodyLimit::max(INGEST_BODY_LIMIT))
                .with_state(ingest),
        );
    }
    if let Some(callbacks) = callbacks {
        router = router.merge(
            Router::new()
                .route("/v1/twilio/status", post(status_route))
                .layer(DefaultBodyLimit::max(INGEST_BODY_LIMIT))
                .with_state(callbacks),
        );
    }
    router
}

/// What `POST /v1/twilio/status` needs.
#[derive(Clone)]
pub(crate) struct StatusCallbacks {
    /// The URL Twilio is given (`{public URL}/v1/twilio/status`): the one it
    /// signs, never one rebuilt from the Host header (the worker sits
    /// behind an ingress).
    pub(crate) url: String,
    /// The auth token, and the previous one while it is rotated.
    pub(crate) tokens: Vec<SecretString>,
    pub(crate) metrics: Metrics,
    /// For the status events.
    pub(crate) publisher: SharedPublisher,
    /// Counts each message's final status once across the fleet.
    pub(crate) fleet: Option<RedisStore>,
    /// The same in this process (without Redis, or while it is down).
    pub(crate) seen: Arc<Mutex<HashSet<String>>>,
}

/// How long a message's final status is remembered (Twilio retries a
/// callback for hours at most).
const STATUS_MEMORY: Duration = Duration::from_secs(2 * 86_400);

/// The most final statuses one process remembers without Redis.
const STATUS_MEMORY_SIZE: usize = 100_000;

/// `POST /v1/twilio/status`: a message's status, from Twilio. Checked
/// against `X-Twilio-Signature` (403 otherwise); each final status counted
/// once per message and told to the job's source as an event; 204.
async fn status_route(
    State(callbacks): State<StatusCallbacks>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let url = match uri.query() {
        Some(query) => format!("{}?{query}", callbacks.url),
        None => callbacks.url.clone(),
    };
    let params: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let presented = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !signature::verify(&callbacks.tokens, &url, &params, presented) {
        warn!("a status callback with a wrong or missing signature was refused");
        return StatusCode::FORBIDDEN.into_response();
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let job = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let status = match param("MessageStatus").or(param("SmsStatus")) {
        Some("delivered") => "delivered",
        Some("undelivered") => "undelivered",
        Some("failed") => "failed",
        // queued, sent, accepted, …: not final; nothing to count.
        _ => return StatusCode::NO_CONTENT.into_response(),
    };
    let Some(sid) = param("MessageSid").or(param("SmsSid")) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    // Twilio may post a final status twice, to any pod: count it once.
    let key = format!("status:{sid}");
    let first = match &callbacks.fleet {
        Some(fleet) => fleet.first_time(&key, STATUS_MEMORY).await,
        None => None,
    }
    .unwrap_or_else(|| {
        let mut seen = callbacks.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= STATUS_MEMORY_SIZE {
            seen.clear();
        }
        seen.insert(key)
    });
    if !first {
        return StatusCode::NO_CONTENT.into_response();
    }
    let error_code = param("ErrorCode").and_then(|c| c.parse::<u32>().ok());
    let waited = (status == "delivered")
        .then(|| job("published").and_then(|p| p.parse::<u64>().ok()))
        .flatten()
        .and_then(|ms| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                .ok()
        });
    callbacks.metrics.delivery(status, error_code, waited);
    info!(
        outcome = status,
        message_sid = sid,
        twilio_code = error_code,
        job_id = job("id"),
        "delivery status from Twilio"
    );
    // Tell the job's source, in the background: Twilio is waiting.
    let source = job("source").unwrap_or("default").to_owned();
    let mut event = json!({
        "id": job("id"),
        "type": job("type"),
        "to": param("To").and_then(|t| PhoneNumber::parse(t).ok()).map(|p| p.masked()),
        "outcome": status,
        "message_sid": sid,
        "at": format_rfc3339(SystemTime::now()),
    });
    if let Some(code) = error_code {
        event["twilio_code"] = json!(code);
    }
    let publisher = callbacks.publisher.clone();
    let metrics = callbacks.metrics.clone();
    tokio::spawn(async move {
        let key = format!("{}.status.{status}", source_word(Some(&source)));
        let published = match publisher.get() {
            Some(p) if publisher.blocked().is_none() => p
                .publish_event(&key, event.to_string().as_bytes())
                .await
                .is_ok(),
            _ => false,
        };
        metrics.event_published(if published { "status" } else { "failed" });
    });
    StatusCode::NO_CONTENT.into_response()
}

/// Binds `addr` and serves until `shutdown`. Returns the bound address (the
/// real port when `addr` has port 0) and the server task.
pub(crate) async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    info!(addr = %local, "http listening");
    let task = tokio::spawn(async move {
        let stop = async move { shutdown.requested().await };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            warn!(error = %e, "http server stopped with an error");
        }
    });
    Ok((local, task))
}

async fn metrics_route(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = state.metrics.render(accept);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, axum::Json(json!({"status": "ready"}))).into_response(),
        Err(not_ready) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "not_ready",
                "reason": not_ready.reason,
                "detail": not_ready.detail,
            })),
        )
            .into_response(),
    }
}

/// `POST /v1/send`: Logto's HTTP SMS connector.
async fn send_route(State(ingest): State<Ingest>, headers: HeaderMap, body: Bytes) -> Response {
    let error = |status: StatusCode, message: String| {
        (status, axum::Json(json!({"error": message}))).into_response()
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let matches: bool = presented
        .as_bytes()
        .ct_eq(ingest.token.expose_secret().as_bytes())
        .into();
    if !matches {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".to_owned(),
        );
    }
    // The worker's own decoder: what it would dead-letter is refused here,
    // while the caller can still tell the user.
    let now = SystemTime::now();
    let job = match Job::decode(&body, &Envelope::default(), ingest.default_ttl, now) {
        Ok(job) => job,
        Err(invalid) => return error(StatusCode::BAD_REQUEST, invalid.to_string()),
    };
    if job.is_expired(now) {
        return error(
            StatusCode::BAD_REQUEST,
            "`expires_at` has passed: the code would never be sent".to_owned(),
        );
    }
    // A job without its own id gets a fresh one (not the one derived from
    // the body: two sign-ins may ask for the same code twice on purpose).
    let has_id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .is_some_and(|id| !id.is_null());
    let id = if has_id {
        job.id.clone()
    } else {
        JobId::generate()
    };
    // While the broker blocks publishing, a publish would wait in lapin's
    // buffer and land after the caller gave up and retried: say so at once.
    if ingest.publisher.blocked().is_some() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker is not taking new jobs (a resource alarm); try again shortly".to_owned(),
        );
    }
    let Some(publisher) = ingest.publisher.get() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker".to_owned(),
        );
    };
    // Abuse limits: refused here, nothing is published, and the caller can
    // tell the user. An admitted job is marked so the worker does not count
    // it twice.
    let segments = ingest
        .templates
        .select(job.kind, job.payload.locale())
        .map_or(1, |t| {
            encoding::segments(&t.render(&job.payload)).count as u64
        });
    if let Err(refusal) = ingest.limiter.admit(&job.to, job.ip(), segments).await {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({
                "error": "too many verification codes were requested; try again later",
                "rule": refusal.rule,
            })),
        )
            .into_response();
    }
    let mut job_headers = FieldTable::default();
    headers::set_i64(&mut job_headers, HEADER_ADMITTED, 1);
    if let Some(traceparent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        headers::set_str(&mut job_headers, HEADER_TRACEPARENT, traceparent);
    }
    let published = tokio::time::timeout(
        INGEST_CONFIRM_TIMEOUT,
        publisher.publish_job_from("ingest", id.as_str(), &body, job_headers),
    )
    .await;
    match published {
        Ok(Ok(())) => {
            (StatusCode::ACCEPTED, axum::Json(json!({"id": id.as_str()}))).into_response()
        }
        Ok(Err(e)) => {
            warn!(error = %e, "ingest: publishing failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the broker did not take the job; try again".to_owned(),
            )
        }
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker did not confirm the job in time; try again".to_owned(),
        ),
    }
}
