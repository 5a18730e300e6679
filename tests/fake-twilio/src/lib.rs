//! A fake of Twilio's Messages API (`POST /2010-04-01/Accounts/{AccountSid}/Messages.json`)
//! that answers like Twilio: basic auth, form validation, the test credentials' magic
//! numbers, Twilio's JSON error body, a 201 message resource, plus scripted failures
//! (JSON errors, a proxy's HTML page, a hang-up without an answer), latency, and a gate
//! that holds calls until the test opens it; and, when a create call names a
//! `StatusCallback`, the status callbacks Twilio would post, signed like Twilio's,
//! optionally late, repeated or with the final status before `sent`.
//!
//! The gate is how a test controls its own pace: closed, every call the worker makes
//! stays in flight (read, unanswered), so a fault injected then lands while the worker
//! holds what its limits allow, however fast or slow the machine is.
//!
//! Built on hyper's HTTP/1 server directly, so that it can hang up without answering.
//! It is fast enough for a load benchmark: no logging, short critical sections, and the
//! only per-request work that grows with the history is the append to the record.
//!
//! Shared by sms-dispatch's integration tests (`tests/it`) and its load benchmark.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

/// The account the fake serves by default (the path's `{AccountSid}`, the basic-auth user).
pub const TEST_ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
/// The default account's auth token (the basic-auth password).
pub const TEST_AUTH_TOKEN: &str = "f0e1d2c3b4a5968778695a4b3c2d1e0f";
/// An API key sid accepted as the basic-auth user by default.
pub const TEST_API_KEY: &str = "SK00112233445566778899aabbccddeeff";
/// The secret of [`TEST_API_KEY`].
pub const TEST_API_SECRET: &str = "fake-api-secret-0123456789abcdefXYZ";
/// A Messaging Service sid for the `MessagingServiceSid` parameter.
pub const TEST_MESSAGING_SERVICE_SID: &str = "MG89abcdef0123456789abcdef01234567";

/// Twilio rejects a `Body` longer than this many characters (21617).
const MAX_BODY_CHARS: usize = 1600;
/// A request body larger than this is refused with 413 before it is parsed.
const MAX_REQUEST_BYTES: usize = 256 * 1024;
const API_VERSION: &str = "2010-04-01";
const TWILIO_REQUEST_ID: HeaderName = HeaderName::from_static("twilio-request-id");
const TWILIO_CONCURRENT_REQUESTS: HeaderName =
    HeaderName::from_static("twilio-concurrent-requests");

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// How to start a fake: the account it serves, the credentials it accepts, its latency.
pub struct FakeTwilioConfig {
    /// The only account the path may name (any other gives 404 / 20404).
    pub account_sid: String,
    /// Accepted basic-auth (user, password) pairs.
    pub credentials: Vec<(String, String)>,
    /// Default latency before every answer.
    pub latency: Duration,
}

impl Default for FakeTwilioConfig {
    fn default() -> Self {
        FakeTwilioConfig {
            account_sid: TEST_ACCOUNT_SID.to_string(),
            credentials: vec![
                (TEST_ACCOUNT_SID.to_string(), TEST_AUTH_TOKEN.to_string()),
                (TEST_API_KEY.to_string(), TEST_API_SECRET.to_string()),
            ],
            latency: Duration::ZERO,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum ReplyKind {
    /// 201 with a message resource.
    Created,
    /// Twilio's JSON error body.
    Json,
    /// A proxy's HTML error page.
    Html,
    /// The status alone, with an empty body (as a load balancer or an edge
    /// in front of Twilio may answer 401, 403 or 502).
    Bare,
    /// The message is created (and will be listed), but the answer is
    /// Twilio's JSON error for `status`: the ambiguous case.
    CreatedThenError,
    /// Read the request, then close the connection without any HTTP answer.
    HangUp,
}

/// What the fake answers to one request.
#[derive(Clone, Debug)]
pub struct Reply {
    kind: ReplyKind,
    status: u16,
    code: Option<u32>,
    /// Overrides the built-in message text for `code`.
    message: Option<String>,
    retry_after: Option<String>,
    latency: Option<Duration>,
}

fn checked_status(status: u16) -> u16 {
    assert!(
        StatusCode::from_u16(status).is_ok(),
        "fake_twilio: {status} is not a valid HTTP status"
    );
    status
}

impl Reply {
    /// 201 with a message resource.
    pub fn created() -> Reply {
        Reply {
            kind: ReplyKind::Created,
            status: 201,
            code: None,
            message: None,
            retry_after: None,
            latency: None,
        }
    }

    /// Twilio's JSON error body `{code, message, more_info, status}`; the message is
    /// Twilio's own text for the codes this fake knows, else "Error {code}".
    pub fn error(status: u16, code: u32) -> Reply {
        Reply {
            kind: ReplyKind::Json,
            status: checked_status(status),
            code: Some(code),
            message: None,
            retry_after: None,
            latency: None,
        }
    }

    /// 429 / 20429 "Too Many Requests" (Twilio's concurrency limit), no Retry-After.
    pub fn too_many_requests() -> Reply {
        Reply::error(429, 20429)
    }

    /// 500 → 20500 "Internal Server Error", 503 → 20503 "Service Unavailable",
    /// any other status → code 20000 + status.
    pub fn server_error(status: u16) -> Reply {
        let code = match status {
            500 => 20500,
            503 => 20503,
            other => 20000 + u32::from(other),
        };
        Reply::error(status, code)
    }

    /// A proxy's HTML error page (nginx style), `text/html`, not JSON.
    /// Creates the message, then answers a 5xx error as if it had failed:
    /// the client cannot tell whether the code went out.
    pub fn created_then_error(status: u16) -> Reply {
        Reply {
            kind: ReplyKind::CreatedThenError,
            ..Reply::server_error(status)
        }
    }

    /// `status` with no body at all.
    pub fn bare(status: u16) -> Reply {
        Reply {
            kind: ReplyKind::Bare,
            ..Reply::html(status)
        }
    }

    /// A proxy's HTML error page with `status`.
    pub fn html(status: u16) -> Reply {
        Reply {
            kind: ReplyKind::Html,
            status: checked_status(status),
            code: None,
            message: None,
            retry_after: None,
            latency: None,
        }
    }

    /// Read the request, then close the connection without any HTTP answer.
    /// Recorded with status 0.
    pub fn hang_up() -> Reply {
        Reply {
            kind: ReplyKind::HangUp,
            status: 0,
            code: None,
            message: None,
            retry_after: None,
            latency: None,
        }
    }

    /// Adds a `Retry-After` header (seconds or HTTP-date), sent verbatim.
    pub fn with_retry_after(mut self, value: &str) -> Reply {
        assert!(
            HeaderValue::from_str(value).is_ok(),
            "fake_twilio: {value:?} is not a valid header value"
        );
        self.retry_after = Some(value.to_string());
        self
    }

    /// Overrides the default latency for this answer.
    pub fn with_latency(mut self, latency: Duration) -> Reply {
        self.latency = Some(latency);
        self
    }

    /// Overrides the `message` of a JSON error body.
    fn with_message(mut self, message: &str) -> Reply {
        self.message = Some(message.to_string());
        self
    }
}

/// Twilio's message for `code`, with the numbers filled in the way the real API does.
fn twilio_message(code: u32, to: &str, from: &str) -> String {
    match code {
        20003 => "Authenticate".to_string(),
        20404 => "The requested resource was not found".to_string(),
        20429 => "Too Many Requests".to_string(),
        20500 => "Internal Server Error".to_string(),
        20503 => "Service Unavailable".to_string(),
        21211 => format!("The 'To' number {to} is not a valid phone number."),
        21212 => format!(
            "The 'From' number {from} is not a valid phone number, shortcode, or alphanumeric sender ID."
        ),
        21408 => format!(
            "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: {to}."
        ),
        21602 => "Message body is required.".to_string(),
        21603 => {
            "A 'From' or 'MessagingServiceSid' parameter is required to send a message.".to_string()
        }
        21604 => "A 'To' phone number is required.".to_string(),
        21606 => format!(
            "The From phone number {from} is not a valid, SMS-capable inbound phone number or short code for your account."
        ),
        21610 => "Attempt to send to unsubscribed recipient".to_string(),
        21611 => {
            "This 'From' number has exceeded the maximum number of queued messages".to_string()
        }
        21612 => format!("The 'To' phone number: {to}, is not currently reachable via SMS."),
        21614 => format!("To number: {to}, is not a mobile number"),
        21617 => "The concatenated message body exceeds the 1600 character limit.".to_string(),
        21624 => "Invalid validity period value".to_string(),
        other => format!("Error {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// Record
// ---------------------------------------------------------------------------------------

/// One request that reached the fake, with what it was answered.
#[derive(Clone, Debug)]
pub struct Received {
    /// When the request (head and body) had arrived, before the latency.
    pub at: Instant,
    /// When the answer was sent (or the connection closed), after the latency.
    pub answered_at: Instant,
    /// From the path ("" if the path did not have the Messages shape).
    pub account_sid: String,
    /// Basic-auth user ("" if none or undecodable).
    pub username: String,
    /// The form parameters (none unless the body was `application/x-www-form-urlencoded`).
    pub form: BTreeMap<String, String>,
    /// What the fake answered (0 for a hang-up).
    pub status: u16,
    /// The `code` of a JSON error answer.
    pub twilio_code: Option<u32>,
    /// The SM… sid when answered 201.
    pub sid: Option<String>,
}

impl Received {
    /// The `To` parameter ("" if absent).
    pub fn to(&self) -> &str {
        self.field("To").unwrap_or("")
    }

    /// The `Body` parameter ("" if absent).
    pub fn body(&self) -> &str {
        self.field("Body").unwrap_or("")
    }

    /// A form parameter.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form.get(name).map(String::as_str)
    }
}

// ---------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------

/// A message the account holds, as the list endpoint shows it.
#[derive(Clone, Debug)]
struct Message {
    sid: String,
    to: String,
    from: Option<String>,
    service: Option<String>,
    body: String,
    created: SystemTime,
    /// When it starts to show in lists (creation + the listing delay).
    listed_from: Instant,
}

struct State {
    scripts: HashMap<String, VecDeque<Reply>>,
    default: Reply,
    latency: Duration,
    /// Every message created (or injected), oldest first.
    messages: Vec<Message>,
    /// How long a created message takes to show in lists.
    listing_delay: Duration,
    /// When set, list calls get this answer instead.
    list_reply: Option<Reply>,
    /// List calls made.
    list_calls: usize,
    /// The final status a number's messages get in status callbacks
    /// (`delivered` unless set), with Twilio's 30xxx code.
    final_status: HashMap<String, (String, Option<u32>)>,
    /// How many times the final status is posted (Twilio may repeat one).
    callback_repeats: usize,
    /// How long after creating a message its callbacks start (Twilio's
    /// come seconds or minutes later).
    callback_delay: Duration,
    /// Whether the final status is posted before `sent` (Twilio does not
    /// promise their order).
    callbacks_out_of_order: bool,
    /// The gate: `None` when open; `Some(n)` when closed after `n` more requests.
    passes: Option<usize>,
}

struct Shared {
    account_sid: String,
    credentials: Vec<(String, String)>,
    state: Mutex<State>,
    records: Mutex<Vec<Received>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Requests waiting at the closed gate.
    held: AtomicUsize,
    /// Whether the gate is open; held requests wait for `true`.
    open: watch::Sender<bool>,
    /// Woken when a request is recorded or held.
    recorded: Notify,
    /// Status callback posts made (answered or not).
    callbacks_posted: Arc<AtomicUsize>,
    /// How the callback posts were answered: HTTP status (0 for none) → count.
    callback_answers: Arc<Mutex<BTreeMap<u16, usize>>>,
    /// Random per instance, so sids from two fakes in one process never collide.
    sid_prefix: u64,
}

/// A poisoned lock only means a test panicked while holding it; the data is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Server {
    shared: Arc<Shared>,
    base_url: String,
    accept: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connection tasks: aborting it closes the
        // listener and every open connection.
        self.accept.abort();
        // Held requests finish (into closed connections) instead of waiting forever.
        set_gate(&self.shared, None);
    }
}

/// Opens the gate (`None`) or closes it after `passes` more requests.
fn set_gate(shared: &Shared, passes: Option<usize>) {
    lock(&shared.state).passes = passes;
    shared.open.send_replace(passes.is_none());
}

/// Handle on a running fake; clones share it. Dropping the last one stops the server.
#[derive(Clone)]
pub struct FakeTwilio {
    server: Arc<Server>,
}

impl FakeTwilio {
    /// Default config, bound to 127.0.0.1:0.
    pub async fn start() -> FakeTwilio {
        FakeTwilio::start_with(FakeTwilioConfig::default()).await
    }

    /// A fake with `config`, bound to 127.0.0.1:0.
    pub async fn start_with(config: FakeTwilioConfig) -> FakeTwilio {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake_twilio: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake_twilio: local_addr");
        let shared = Arc::new(Shared {
            account_sid: config.account_sid,
            credentials: config.credentials,
            state: Mutex::new(State {
                scripts: HashMap::new(),
                default: Reply::created(),
                latency: config.latency,
                passes: None,
                messages: Vec::new(),
                listing_delay: Duration::ZERO,
                list_reply: None,
                list_calls: 0,
                final_status: HashMap::new(),
                callback_repeats: 1,
                callback_delay: Duration::ZERO,
                callbacks_out_of_order: false,
            }),
            records: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            open: watch::Sender::new(true),
            recorded: Notify::new(),
            callbacks_posted: Arc::new(AtomicUsize::new(0)),
            callback_answers: Arc::new(Mutex::new(BTreeMap::new())),
            sid_prefix: fastrand::u64(..),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        FakeTwilio {
            server: Arc::new(Server {
                shared,
                base_url: format!("http://{addr}"),
                accept,
            }),
        }
    }

    fn shared(&self) -> &Shared {
        &self.server.shared
    }

    /// How long a created message takes to show in `GET …/Messages.json`
    /// (Twilio promises no immediate listing).
    pub fn set_listing_delay(&self, delay: Duration) {
        lock(&self.shared().state).listing_delay = delay;
    }

    /// Makes every list call answer `reply` (e.g. a 500 or a 429); `None`
    /// lists again.
    pub fn set_list_reply(&self, reply: Option<Reply>) {
        lock(&self.shared().state).list_reply = reply;
    }

    /// The final status that status callbacks report for messages to `to`
    /// (`delivered`, `undelivered` or `failed`, with Twilio's 30xxx code).
    pub fn set_final_status(&self, to: &str, status: &str, error_code: Option<u32>) {
        lock(&self.shared().state)
            .final_status
            .insert(to.to_string(), (status.to_string(), error_code));
    }

    /// Status callback posts made so far.
    pub fn callbacks_posted(&self) -> usize {
        self.shared().callbacks_posted.load(Ordering::SeqCst)
    }

    /// How the status callback posts made so far were answered: HTTP status
    /// (0 when there was no answer) → how many.
    pub fn callback_answers(&self) -> BTreeMap<u16, usize> {
        lock(&self.shared().callback_answers).clone()
    }

    /// Posts each final status `n` times (Twilio may repeat a callback).
    pub fn set_callback_repeats(&self, n: usize) {
        lock(&self.shared().state).callback_repeats = n;
    }

    /// Waits `delay` after creating a message before posting its callbacks
    /// (late receipts: the job was acked long before). Initially none.
    pub fn set_callback_delay(&self, delay: Duration) {
        lock(&self.shared().state).callback_delay = delay;
    }

    /// Posts the final status first, then `sent`, then the final status's
    /// repeats, instead of `sent` first: an intermediate status that
    /// arrives after the final one.
    pub fn set_callbacks_out_of_order(&self, out_of_order: bool) {
        lock(&self.shared().state).callbacks_out_of_order = out_of_order;
    }

    /// List calls made so far.
    pub fn list_calls(&self) -> usize {
        lock(&self.shared().state).list_calls
    }

    /// Messages the account created for `to` (by any answer, including a
    /// 5xx after creating, and injected ones).
    pub fn messages_to(&self, to: &str) -> usize {
        lock(&self.shared().state)
            .messages
            .iter()
            .filter(|m| m.to == to)
            .count()
    }

    /// Adds a message the account sent otherwise (another service, an
    /// earlier sign-in), created at `created`: from the Messaging Service
    /// `service` or the number `from`.
    pub fn inject_message(
        &self,
        to: &str,
        service: Option<&str>,
        from: Option<&str>,
        body: &str,
        created: SystemTime,
    ) {
        let mut state = lock(&self.shared().state);
        let sid = next_message_sid(self.shared().sid_prefix);
        state.messages.push(Message {
            sid,
            to: to.to_string(),
            from: from.map(str::to_string),
            service: service.map(str::to_string),
            body: body.to_string(),
            created,
            listed_from: Instant::now(),
        });
    }

    /// "http://127.0.0.1:PORT"
    pub fn base_url(&self) -> String {
        self.server.base_url.clone()
    }

    /// Replies for one `To` (E.164 as sent), used in order before the default.
    /// Calling it again for the same `To` appends. A script wins over the magic numbers.
    pub fn script(&self, to: &str, replies: impl IntoIterator<Item = Reply>) {
        let mut state = lock(&self.shared().state);
        let queue = state.scripts.entry(to.to_string()).or_default();
        queue.extend(replies);
        if queue.is_empty() {
            state.scripts.remove(to);
        }
    }

    /// The answer for every request without a scripted reply (initially `Reply::created()`).
    pub fn set_default(&self, reply: Reply) {
        lock(&self.shared().state).default = reply;
    }

    /// The wait before every answer without a latency of its own (initially the config's).
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared().state).latency = latency;
    }

    /// Closes the gate: every request that arrives from now on is held (read, counted in
    /// flight, unanswered) until [`FakeTwilio::release`]. A worker's calls then pile up to
    /// what its own limits allow, and stay there while the test does what it must.
    pub fn hold(&self) {
        self.hold_after(0);
    }

    /// Answers the next `n` requests as usual, then holds every later one until
    /// [`FakeTwilio::release`]: the test decides how far a run gets before it stalls.
    pub fn hold_after(&self, n: usize) {
        set_gate(self.shared(), Some(n));
    }

    /// Opens the gate: every held request is answered (after its latency) and recorded,
    /// even one whose client has gone away, as Twilio would.
    pub fn release(&self) {
        set_gate(self.shared(), None);
    }

    /// Requests waiting at the closed gate now.
    pub fn held(&self) -> usize {
        self.shared().held.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests are held at the gate and returns how many are.
    /// Panics with `what` and a summary of the record when `deadline` passes.
    pub async fn wait_held(&self, n: usize, deadline: Duration, what: &str) -> usize {
        self.wait_for(deadline, what, |shared| {
            let held = shared.held.load(Ordering::SeqCst);
            (held >= n).then_some(held)
        })
        .await
    }

    /// Every request that reached the fake (even ones answered with an error or hung up
    /// on), in arrival order. A request appears once it has been answered.
    pub fn requests(&self) -> Vec<Received> {
        lock(&self.shared().records).clone()
    }

    /// Only those answered 201.
    pub fn accepted(&self) -> Vec<Received> {
        lock(&self.shared().records)
            .iter()
            .filter(|r| r.status == 201)
            .cloned()
            .collect()
    }

    /// Number of recorded (answered) requests: `requests().len()`.
    pub fn request_count(&self) -> usize {
        lock(&self.shared().records).len()
    }

    /// Requests being answered right now (read, inside the latency wait).
    pub fn in_flight(&self) -> usize {
        self.shared().in_flight.load(Ordering::SeqCst)
    }

    /// High-water mark of `in_flight` since start.
    pub fn max_in_flight(&self) -> usize {
        self.shared().max_in_flight.load(Ordering::SeqCst)
    }

    /// Waits until `pred(&requests)` holds and returns the requests then. Wakes on every
    /// recorded request (no polling). `pred` runs under the record's lock: keep it cheap.
    /// Panics with `what` and a summary (count per status and code, never bodies) when
    /// `deadline` passes.
    pub async fn wait_until(
        &self,
        deadline: Duration,
        what: &str,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        self.wait_for(deadline, what, |shared| {
            let records = lock(&shared.records);
            pred(&records).then(|| records.clone())
        })
        .await
    }

    /// Checks `check` on every request recorded or held until it yields a value; panics
    /// with `what` and a summary when `deadline` passes.
    async fn wait_for<T>(
        &self,
        deadline: Duration,
        what: &str,
        check: impl Fn(&Shared) -> Option<T>,
    ) -> T {
        let shared = self.shared();
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = shared.recorded.notified();
            tokio::pin!(notified);
            // Register before checking, so a request recorded in between still wakes us.
            notified.as_mut().enable();
            if let Some(found) = check(shared) {
                return found;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                if let Some(found) = check(shared) {
                    return found;
                }
                let summary = summarize(&lock(&shared.records));
                panic!(
                    "fake_twilio: timed out after {deadline:?} waiting for {what}; seen {summary}; in flight now {}, held {}",
                    self.in_flight(),
                    self.held()
                );
            }
        }
    }
}

/// "3 requests: 201 ×2, 400/21211 ×1" — statuses and codes only, never bodies.
fn summarize(records: &[Received]) -> String {
    let mut counts: BTreeMap<(u16, Option<u32>), usize> = BTreeMap::new();
    for r in records {
        *counts.entry((r.status, r.twilio_code)).or_default() += 1;
    }
    let mut out = format!("{} requests", records.len());
    let mut sep = ": ";
    for ((status, code), n) in counts {
        out.push_str(sep);
        sep = ", ";
        match (status, code) {
            (0, _) => {
                let _ = write!(out, "hang-up ×{n}");
            }
            (s, Some(c)) => {
                let _ = write!(out, "{s}/{c} ×{n}");
            }
            (s, None) => {
                let _ = write!(out, "{s} ×{n}");
            }
        }
    }
    out
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, shared.clone()));
                }
                // E.g. out of file descriptors under load: back off a little, keep serving.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| handle(shared.clone(), req));
    // An error here is a client going away, or a hang-up: nothing to do either way.
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Returned by the service to make hyper close the connection without writing an answer.
#[derive(Debug)]
struct HangUp;

impl std::fmt::Display for HangUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fake_twilio hangs up")
    }
}

impl std::error::Error for HangUp {}

type Answer = Result<Response<Full<Bytes>>, HangUp>;

/// What was decided for one request when it arrived; answered after the gate and the
/// latency.
struct Decided {
    received: Received,
    reply: Reply,
    /// Waits at the gate until it opens.
    held: bool,
    latency: Duration,
    /// Extra error details: the path for 20404.
    path: String,
    /// `date_created` of a 201 (when the request arrived).
    date: Option<String>,
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Answer {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => Some(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => None,
        // The client went away in the middle of the body: the request never reached us.
        Err(_) => return Err(HangUp),
    };
    if parts.method == Method::GET {
        return list(&shared, &parts);
    }
    let decided = decide(&shared, &parts, body.as_deref());
    if !decided.held && decided.latency.is_zero() {
        return answer(&shared, decided);
    }
    // Wait and answer in a task of its own: if the client gives up first (hyper then drops
    // this future), the request is still processed and recorded, as Twilio would.
    let task_shared = shared.clone();
    let task = tokio::spawn(async move {
        if decided.held {
            let mut open = task_shared.open.subscribe();
            // The sender lives in `task_shared`: this ends only when the gate opens.
            let _ = open.wait_for(|open| *open).await;
            task_shared.held.fetch_sub(1, Ordering::SeqCst);
        }
        if !decided.latency.is_zero() {
            tokio::time::sleep(decided.latency).await;
        }
        answer(&task_shared, decided)
    });
    task.await.unwrap_or(Err(HangUp))
}

fn decide(shared: &Shared, parts: &hyper::http::request::Parts, body: Option<&[u8]>) -> Decided {
    let at = Instant::now();
    let now_in_flight = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared
        .max_in_flight
        .fetch_max(now_in_flight, Ordering::SeqCst);
    let held = match &mut lock(&shared.state).passes {
        None => false,
        Some(0) => true,
        Some(passes) => {
            *passes -= 1;
            false
        }
    };
    if held {
        shared.held.fetch_add(1, Ordering::SeqCst);
        shared.recorded.notify_waiters();
    }

    let path = parts.uri.path();
    let account_sid = path
        .strip_prefix("/2010-04-01/Accounts/")
        .and_then(|rest| rest.strip_suffix("/Messages.json"))
        .filter(|sid| !sid.is_empty() && !sid.contains('/'));
    let (username, authenticated) = check_auth(&parts.headers, &shared.credentials);
    let form = match body {
        Some(bytes) if is_form(&parts.headers) => parse_form(bytes),
        // Twilio only reads form parameters: any other body means no parameters at all.
        _ => BTreeMap::new(),
    };

    let mut latency = None;
    // Twilio authenticates before it looks at the path: bad credentials get
    // 401 whatever the URL.
    let reply = if !authenticated {
        Reply::error(401, 20003)
    } else if parts.method != Method::POST
        || account_sid.is_none_or(|sid| sid != shared.account_sid)
    {
        Reply::error(404, 20404)
    } else if body.is_none() {
        Reply::error(413, 20413).with_message("Request entity too large")
    } else if let Some(code) = validate(&form) {
        Reply::error(400, code)
    } else {
        let to = form.get("To").map(String::as_str).unwrap_or("");
        let from = form.get("From").map(String::as_str);
        let mut state = lock(&shared.state);
        latency = Some(state.latency);
        let scripted = match state.scripts.get_mut(to) {
            Some(queue) => {
                let reply = queue.pop_front();
                if queue.is_empty() {
                    state.scripts.remove(to);
                }
                reply
            }
            None => None,
        };
        match scripted {
            Some(reply) => reply,
            None => match magic_number_code(to, from) {
                Some(code) => Reply::error(400, code),
                None => state.default.clone(),
            },
        }
    };
    let latency = reply
        .latency
        .or(latency)
        .unwrap_or_else(|| lock(&shared.state).latency);

    Decided {
        received: Received {
            at,
            answered_at: at,
            account_sid: account_sid.unwrap_or("").to_string(),
            username,
            form,
            status: 0,
            twilio_code: None,
            sid: None,
        },
        held,
        latency,
        path: path.to_string(),
        date: (reply.kind == ReplyKind::Created).then(|| format_rfc2822(SystemTime::now())),
        reply,
    }
}

/// Builds the answer, records the request, and wakes `wait_until`.
fn answer(shared: &Shared, decided: Decided) -> Answer {
    let Decided {
        mut received,
        reply,
        path,
        date,
        ..
    } = decided;
    let concurrent = shared.in_flight.load(Ordering::SeqCst);

    if matches!(reply.kind, ReplyKind::Created | ReplyKind::CreatedThenError) {
        let sid = next_message_sid(shared.sid_prefix);
        let mut state = lock(&shared.state);
        let listed_from = Instant::now() + state.listing_delay;
        state.messages.push(Message {
            sid: sid.clone(),
            to: received.to().to_string(),
            from: received
                .field("From")
                .filter(|f| !f.is_empty())
                .map(str::to_string),
            service: received
                .field("MessagingServiceSid")
                .filter(|f| !f.is_empty())
                .map(str::to_string),
            body: received.body().to_string(),
            created: SystemTime::now(),
            listed_from,
        });
        received.sid = Some(sid.clone());
        if let Some(callback) = received.field("StatusCallback").filter(|c| !c.is_empty()) {
            let (final_status, code) = state
                .final_status
                .get(received.to())
                .cloned()
                .unwrap_or_else(|| ("delivered".to_string(), None));
            let token = shared
                .credentials
                .iter()
                .find(|(user, _)| *user == shared.account_sid)
                .map(|(_, token)| token.clone())
                .unwrap_or_default();
            let posts = status_posts(
                &sid,
                &shared.account_sid,
                &received,
                &final_status,
                code,
                state.callback_repeats,
                state.callbacks_out_of_order,
            );
            tokio::spawn(post_callbacks(
                callback.to_string(),
                token,
                posts,
                state.callback_delay,
                Arc::clone(&shared.callbacks_posted),
                Arc::clone(&shared.callback_answers),
            ));
        }
    }
    let (status, content_type, body) = match reply.kind {
        ReplyKind::HangUp => (0, "", String::new()),
        ReplyKind::Created => {
            let sid = received.sid.clone().unwrap_or_default();
            let date = date.unwrap_or_else(|| format_rfc2822(SystemTime::now()));
            let body = message_resource(&received, &sid, &date);
            (reply.status, "application/json; charset=utf-8", body)
        }
        ReplyKind::Json | ReplyKind::CreatedThenError => {
            let code = reply.code.unwrap_or(20000 + u32::from(reply.status));
            received.twilio_code = Some(code);
            let message = match (&reply.message, code) {
                (Some(message), _) => message.clone(),
                (None, 20404) => format!("The requested resource {path} was not found"),
                (None, _) => twilio_message(
                    code,
                    received.field("To").unwrap_or(""),
                    received.field("From").unwrap_or(""),
                ),
            };
            let body = serde_json::json!({
                "code": code,
                "message": message,
                "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
                "status": reply.status,
            })
            .to_string();
            (reply.status, "application/json; charset=utf-8", body)
        }
        ReplyKind::Html => (reply.status, "text/html", html_page(reply.status)),
        ReplyKind::Bare => (reply.status, "text/plain", String::new()),
    };

    let answer = if reply.kind == ReplyKind::HangUp {
        Err(HangUp)
    } else {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Ok(id) = HeaderValue::from_str(&format!("RQ{:032x}", fastrand::u128(..))) {
            headers.insert(TWILIO_REQUEST_ID, id);
        }
        headers.insert(TWILIO_CONCURRENT_REQUESTS, HeaderValue::from(concurrent));
        if status == 401 {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Twilio API\""),
            );
        }
        if let Some(value) = reply
            .retry_after
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        Ok(response)
    };

    received.status = status;
    received.answered_at = Instant::now();
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    lock(&shared.records).push(received);
    shared.recorded.notify_waiters();
    answer
}

/// `GET /2010-04-01/Accounts/{sid}/Messages.json?To=…&PageSize=…&Page=…`:
/// the account's messages to `To`, newest first, a page at a time, with
/// `next_page_uri` while there are more; only messages past the listing
/// delay show.
fn list(shared: &Shared, parts: &hyper::http::request::Parts) -> Answer {
    let (_, authenticated) = check_auth(&parts.headers, &shared.credentials);
    let path = parts.uri.path();
    let prefix = format!(
        "/{API_VERSION}/Accounts/{}/Messages.json",
        shared.account_sid
    );
    let json = |status: u16, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        Ok(response)
    };
    let error = |status: u16, code: u32| {
        json(
            status,
            serde_json::json!({"code": code, "message": twilio_message(code, "", ""),
                "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status})
            .to_string(),
        )
    };
    if !authenticated {
        return error(401, 20003);
    }
    if path != prefix {
        return error(404, 20404);
    }
    let query: BTreeMap<String, String> = parts
        .uri
        .query()
        .map(|q| parse_form(q.as_bytes()))
        .unwrap_or_default();
    let mut state = lock(&shared.state);
    state.list_calls += 1;
    if let Some(reply) = state.list_reply.clone() {
        let code = reply.code.unwrap_or(20000 + u32::from(reply.status));
        return error(reply.status, code);
    }
    let to = query.get("To").cloned().unwrap_or_default();
    let page_size: usize = query
        .get("PageSize")
        .and_then(|p| p.parse().ok())
        .unwrap_or(50)
        .clamp(1, 1000);
    let page: usize = query.get("Page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let now = Instant::now();
    let mut matching: Vec<&Message> = state
        .messages
        .iter()
        .filter(|m| (to.is_empty() || m.to == to) && m.listed_from <= now)
        .collect();
    matching.sort_by_key(|m| std::cmp::Reverse(m.created));
    let start = page * page_size;
    let shown: Vec<serde_json::Value> = matching
        .iter()
        .skip(start)
        .take(page_size)
        .map(|m| {
            let date = format_rfc2822(m.created);
            serde_json::json!({
                "account_sid": shared.account_sid,
                "sid": m.sid,
                "to": m.to,
                "from": m.from,
                "messaging_service_sid": m.service,
                "body": m.body,
                "status": "delivered",
                "date_created": date,
                "date_updated": date,
                "date_sent": date,
                "error_code": null,
                "num_segments": num_segments(&m.body).to_string(),
                "direction": "outbound-api",
            })
        })
        .collect();
    let next = (start + page_size < matching.len()).then(|| {
        format!(
            "{prefix}?To={}&PageSize={page_size}&Page={}",
            to.replace('+', "%2B"),
            page + 1
        )
    });
    json(
        200,
        serde_json::json!({
            "messages": shown,
            "next_page_uri": next,
            "page": page,
            "page_size": page_size,
            "uri": format!("{prefix}?To={}&PageSize={page_size}&Page={page}", to.replace('+', "%2B")),
        })
        .to_string(),
    )
}

/// (username, whether user:password is one of the accepted pairs).
fn check_auth(headers: &HeaderMap, credentials: &[(String, String)]) -> (String, bool) {
    let decoded = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("basic")
                .then(|| rest.trim().to_string())
        })
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok());
    let Some(decoded) = decoded else {
        return (String::new(), false);
    };
    let (user, password) = decoded.split_once(':').unwrap_or((decoded.as_str(), ""));
    let ok = credentials.iter().any(|(u, p)| u == user && p == password);
    (user.to_string(), ok)
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

fn parse_form(bytes: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(bytes)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Twilio's parameter validation, in Twilio's order.
fn validate(form: &BTreeMap<String, String>) -> Option<u32> {
    let present = |name: &str| form.get(name).is_some_and(|v| !v.is_empty());
    if !present("To") {
        return Some(21604);
    }
    if !present("From") && !present("MessagingServiceSid") {
        return Some(21603);
    }
    let body = form.get("Body").map(String::as_str).unwrap_or("");
    if body.is_empty() {
        return Some(21602);
    }
    if body.chars().count() > MAX_BODY_CHARS {
        return Some(21617);
    }
    if let Some(validity) = form.get("ValidityPeriod") {
        let valid = validity.bytes().all(|b| b.is_ascii_digit())
            && validity
                .parse::<u32>()
                .is_ok_and(|v| (1..=36_000).contains(&v));
        if !valid {
            return Some(21624);
        }
    }
    None
}

/// Twilio's test credentials' magic numbers.
fn magic_number_code(to: &str, from: Option<&str>) -> Option<u32> {
    let from_code = match from {
        Some("+15005550001") => Some(21212),
        Some("+15005550007") => Some(21606),
        Some("+15005550008") => Some(21611),
        _ => None,
    };
    from_code.or(match to {
        "+15005550001" => Some(21211),
        "+15005550002" => Some(21612),
        "+15005550003" => Some(21408),
        "+15005550004" => Some(21610),
        "+15005550009" => Some(21614),
        _ => None,
    })
}

static MESSAGE_COUNTER: AtomicU64 = AtomicU64::new(1);

fn next_message_sid(prefix: u64) -> String {
    let n = MESSAGE_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("SM{prefix:016x}{n:016x}")
}

/// The message resource of Twilio's OpenAPI schema (`api.v2010.account.message`).
fn message_resource(received: &Received, sid: &str, date: &str) -> String {
    let account = &received.account_sid;
    let service = received
        .field("MessagingServiceSid")
        .filter(|s| !s.is_empty());
    let from = received.field("From").filter(|s| !s.is_empty());
    let body = received.body();
    let uri = format!("/{API_VERSION}/Accounts/{account}/Messages/{sid}.json");
    let media = format!("/{API_VERSION}/Accounts/{account}/Messages/{sid}/Media.json");
    serde_json::json!({
        "account_sid": account,
        "api_version": API_VERSION,
        "body": body,
        "date_created": date,
        "date_sent": null,
        "date_updated": date,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": from,
        "messaging_service_sid": service,
        "num_media": "0",
        // A Messaging Service send is "accepted" before Twilio has chosen a
        // sender and encoded the body: it answers "0" segments at creation.
        "num_segments": if service.is_some() { "0".to_owned() } else { num_segments(body).to_string() },
        "price": null,
        "price_unit": "USD",
        "sid": sid,
        "status": if service.is_some() { "accepted" } else { "queued" },
        "subresource_uris": { "media": media },
        "to": received.to(),
        "uri": uri,
    })
    .to_string()
}

/// Septets a character takes in GSM-7 (basic set 1, extension table 2), None if not GSM-7.
fn gsm7_septets(c: char) -> Option<usize> {
    match c {
        '^' | '{' | '}' | '\\' | '[' | '~' | ']' | '|' | '€' | '\u{0c}' => Some(2),
        '`' => None,
        '\n' | '\r' | ' '..='~' => Some(1),
        '£' | '¥' | 'è' | 'é' | 'ù' | 'ì' | 'ò' | 'Ç' | 'Ø' | 'ø' | 'Å' | 'å' | 'Δ' | 'Φ' | 'Γ'
        | 'Λ' | 'Ω' | 'Π' | 'Ψ' | 'Σ' | 'Θ' | 'Ξ' | 'Æ' | 'æ' | 'ß' | 'É' | '¤' | '¡' | 'Ä'
        | 'Ö' | 'Ñ' | 'Ü' | '§' | '¿' | 'ä' | 'ö' | 'ñ' | 'ü' | 'à' => Some(1),
        _ => None,
    }
}

/// SMS segments for `body`: GSM-7 160 / 153 septets, else UCS-2 70 / 67 UTF-16 units.
pub fn num_segments(body: &str) -> usize {
    let septets: Option<usize> = body.chars().map(gsm7_septets).sum();
    let (units, single, part) = match septets {
        Some(septets) => (septets, 160, 153),
        None => (body.encode_utf16().count(), 70, 67),
    };
    if units <= single {
        1
    } else {
        units.div_ceil(part)
    }
}

/// Twilio's date format: "Thu, 30 Jul 2015 20:12:31 +0000".
pub fn format_rfc2822(time: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[((days + 4).rem_euclid(7)) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// What nginx answers when the upstream fails.
fn html_page(status: u16) -> String {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    format!(
        "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
}

/// The form posts Twilio makes to a status callback: `sent`, then the final
/// status (`repeats` times); `out_of_order`, the final status first, then
/// `sent`, then the final status's repeats.
fn status_posts(
    sid: &str,
    account_sid: &str,
    received: &Received,
    final_status: &str,
    error_code: Option<u32>,
    repeats: usize,
    out_of_order: bool,
) -> Vec<Vec<(String, String)>> {
    let post = |status: &str, code: Option<u32>| {
        let mut form = vec![
            ("AccountSid".to_string(), account_sid.to_string()),
            ("ApiVersion".to_string(), API_VERSION.to_string()),
            ("MessageSid".to_string(), sid.to_string()),
            ("MessageStatus".to_string(), status.to_string()),
            ("SmsSid".to_string(), sid.to_string()),
            ("SmsStatus".to_string(), status.to_string()),
            ("To".to_string(), received.to().to_string()),
        ];
        if let Some(from) = received.field("From").filter(|f| !f.is_empty()) {
            form.push(("From".to_string(), from.to_string()));
        }
        if let Some(code) = code {
            form.push(("ErrorCode".to_string(), code.to_string()));
        }
        form
    };
    let mut posts = vec![post(final_status, error_code); repeats.max(1)];
    let sent_at = if out_of_order { 1 } else { 0 };
    posts.insert(sent_at, post("sent", None));
    posts
}

/// Twilio's `X-Twilio-Signature` for a POST of `form` to `url`.
pub fn twilio_signature(token: &str, url: &str, form: &[(String, String)]) -> String {
    use hmac::Mac;
    let mut sorted: Vec<&(String, String)> = form.iter().collect();
    sorted.sort();
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Posts each form to `url`, signed like Twilio, one after the other, the
/// first after `delay`; counts each post in `posted` once its answer is
/// counted in `answers`.
async fn post_callbacks(
    url: String,
    token: String,
    posts: Vec<Vec<(String, String)>>,
    delay: Duration,
    posted: Arc<AtomicUsize>,
    answers: Arc<Mutex<BTreeMap<u16, usize>>>,
) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let client = reqwest::Client::new();
    for form in posts {
        let signature = twilio_signature(&token, &url, &form);
        let status = client
            .post(&url)
            .header("X-Twilio-Signature", signature)
            .form(&form)
            .send()
            .await
            .map_or(0, |r| r.status().as_u16());
        *lock(&answers).entry(status).or_default() += 1;
        posted.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses(out_of_order: bool, repeats: usize) -> Vec<String> {
        let received = Received {
            at: Instant::now(),
            answered_at: Instant::now(),
            account_sid: TEST_ACCOUNT_SID.to_string(),
            username: TEST_ACCOUNT_SID.to_string(),
            form: BTreeMap::from([("To".to_string(), "+819012345678".to_string())]),
            status: 201,
            twilio_code: None,
            sid: None,
        };
        status_posts(
            "SM1",
            TEST_ACCOUNT_SID,
            &received,
            "undelivered",
            Some(30007),
            repeats,
            out_of_order,
        )
        .iter()
        .map(|form| {
            let field = |name: &str| {
                form.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            format!("{}/{}", field("MessageStatus"), field("ErrorCode"))
        })
        .collect()
    }

    #[test]
    fn callbacks_come_in_order_or_with_the_final_status_first() {
        assert_eq!(statuses(false, 1), ["sent/", "undelivered/30007"]);
        assert_eq!(
            statuses(false, 2),
            ["sent/", "undelivered/30007", "undelivered/30007"]
        );
        assert_eq!(statuses(true, 1), ["undelivered/30007", "sent/"]);
        assert_eq!(
            statuses(true, 2),
            ["undelivered/30007", "sent/", "undelivered/30007"]
        );
    }
}
