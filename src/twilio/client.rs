//! The Twilio client: one pooled HTTP client, one call, one typed outcome.
//!
//! [`TwilioClient::send`] posts to the Messages API and turns every answer
//! into a [`SendOutcome`]: `Accepted` with the message SID, or a
//! [`SendError`] carrying the HTTP status, Twilio's code and message, and any
//! `Retry-After`. A proxy's HTML page, an empty body or a dropped connection
//! are outcomes too, never a panic. Deciding what an error *means* is
//! [`super::classify`]'s job, not this module's.

use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::classify::{self, Class};
use super::settings::{Sender, TwilioAuth, TwilioSettings};
use crate::phone::{PhoneNumber, mask_numbers_in};
use crate::retry::parse_retry_after;

/// One message to send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outgoing<'a> {
    pub to: &'a PhoneNumber,
    pub body: &'a str,
    /// Seconds left until the code expires; Twilio drops the message if it
    /// cannot be handed to a carrier by then. Clamped to 1–36000.
    pub validity: Duration,
    /// The query the status callback URL carries (the job's id, type,
    /// publish time and source): signed by Twilio with the URL, so what the
    /// callback says about the job needs no lookup and cannot be forged.
    pub callback_query: &'a str,
}

/// Twilio accepted the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    /// The message SID (`SM…`).
    pub sid: String,
    /// Twilio's status: `queued` or `accepted`.
    pub status: String,
    /// Segments as Twilio counted them, when it said.
    pub segments: Option<u32>,
}

/// Twilio, or something between us and Twilio, refused or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SendError {
    /// An HTTP answer other than 201.
    Http {
        status: u16,
        /// Twilio's `code`, when the body was Twilio's JSON error.
        code: Option<u32>,
        /// Twilio's message with phone numbers masked, or a description of a
        /// body that was not Twilio's JSON.
        message: String,
        retry_after: Option<Duration>,
    },
    /// No HTTP answer: connection refused or reset, TLS failure, timeout.
    Network {
        /// True when the request may have reached Twilio (a timeout or a
        /// connection lost after sending): a retry may send a second SMS.
        maybe_sent: bool,
        message: String,
    },
}

impl SendError {
    /// The decision for this error: transient, permanent or config.
    pub(crate) fn class(&self) -> Class {
        match self {
            SendError::Http { status, code, .. } => classify::classify(*status, *code),
            SendError::Network { .. } => Class::Transient,
        }
    }

    /// Twilio's error code, when it gave one.
    pub(crate) fn twilio_code(&self) -> Option<u32> {
        match self {
            SendError::Http { code, .. } => *code,
            SendError::Network { .. } => None,
        }
    }

    /// How long Twilio asked us to wait, when it did.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            SendError::Http { retry_after, .. } => *retry_after,
            SendError::Network { .. } => None,
        }
    }

    /// Whether this is a rate limit (HTTP 429 or code 20429): the whole
    /// worker slows down, not only this job.
    pub(crate) fn is_rate_limit(&self) -> bool {
        matches!(self, SendError::Http { status: 429, .. }) || self.twilio_code() == Some(20429)
    }

    /// Whether Twilio may have created the message despite the error (a
    /// timeout or a lost connection after sending, or a 5xx): a retry may
    /// then send a second SMS. A 429 was never processed.
    pub(crate) fn may_have_sent(&self) -> bool {
        match self {
            SendError::Http { status, .. } => *status >= 500,
            SendError::Network { maybe_sent, .. } => *maybe_sent,
        }
    }

    /// A network failure rather than an answer.
    pub(crate) fn is_network(&self) -> bool {
        matches!(self, SendError::Network { .. })
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Http {
                status,
                code: Some(code),
                message,
                ..
            } => write!(f, "Twilio {code} (HTTP {status}): {message}"),
            SendError::Http {
                status,
                code: None,
                message,
                ..
            } => write!(f, "HTTP {status}: {message}"),
            SendError::Network { message, .. } => write!(f, "network: {message}"),
        }
    }
}

/// What one call came to.
pub(super) type SendOutcome = Result<Accepted, SendError>;

/// Twilio's error body.
#[derive(Deserialize)]
struct ErrorBody {
    code: Option<u32>,
    message: Option<String>,
}

/// The part of the message resource we read.
#[derive(Deserialize)]
struct MessageResource {
    sid: String,
    status: Option<String>,
    num_segments: Option<serde_json::Value>,
}

/// A Twilio Messages API client. Cheap to clone; clones share one
/// connection pool.
#[derive(Clone)]
pub(crate) struct TwilioClient {
    http: reqwest::Client,
    /// Parsed once: a `&str` would be parsed again on every request.
    url: reqwest::Url,
    /// The `Authorization` header, built once and marked sensitive (it is
    /// never printed).
    authorization: reqwest::header::HeaderValue,
    username: String,
    password: SecretString,
    sender: Sender,
    risk_check: Option<bool>,
    request_timeout: Duration,
    base_url: String,
    status_callback: Option<String>,
}

impl std::fmt::Debug for TwilioClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioClient")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

/// The client could not be built (a TLS backend failed to initialise).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub(crate) struct ClientBuildError(String);

impl TwilioClient {
    /// Builds the client once, at start-up: pooled connections, connect and
    /// total timeouts from the settings.
    pub(crate) fn new(settings: &TwilioSettings) -> Result<TwilioClient, ClientBuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("sms-dispatch/", env!("CARGO_PKG_VERSION")))
            // No retries below ours: every failure is classified by
            // `classify` (a hidden retry of a POST could send twice), and
            // with none allowed reqwest need not copy each request in case
            // it retries. (Its default retries only HTTP/2 refusals; this
            // client speaks HTTP/1.1.)
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .build()
            .map_err(|e| ClientBuildError(e.to_string()))?;
        let (username, password) = match &settings.auth {
            TwilioAuth::AuthToken(token) => (settings.account_sid.clone(), token.clone()),
            TwilioAuth::ApiKey { sid, secret } => (sid.clone(), secret.clone()),
        };
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            settings.base_url, settings.account_sid
        );
        let url = reqwest::Url::parse(&url).map_err(|e| {
            ClientBuildError(format!("the Twilio base URL is not a valid URL: {e}"))
        })?;
        let authorization = basic_authorization(&username, &password);
        Ok(TwilioClient {
            http,
            url,
            authorization,
            username,
            password,
            sender: settings.sender.clone(),
            risk_check: settings.risk_check,
            request_timeout: settings.request_timeout,
            base_url: settings.base_url.clone(),
            status_callback: settings.status_callback.clone(),
        })
    }

    /// The Messages resource's URL (create and list).
    pub(super) fn messages_url(&self) -> &str {
        self.url.as_str()
    }

    /// Twilio's API root, for the list's `next_page_uri`.
    pub(super) fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The pooled HTTP client.
    pub(super) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The basic-auth user and password.
    pub(super) fn credentials(&self) -> (&str, &SecretString) {
        (&self.username, &self.password)
    }

    /// Who the messages come from.
    pub(crate) fn sender(&self) -> &Sender {
        &self.sender
    }

    /// The longest one call may take (after it, the call counts as failed,
    /// though Twilio may still have created the message).
    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sends one message and classifies nothing: see [`SendError::class`].
    pub(crate) async fn send(&self, message: Outgoing<'_>) -> SendOutcome {
        let validity = message.validity.as_secs().clamp(1, 36_000).to_string();
        let (sender_field, sender) = match &self.sender {
            Sender::MessagingService(sid) => ("MessagingServiceSid", sid.as_str()),
            Sender::From(from) => ("From", from.as_str()),
        };
        let mut form: Vec<(&str, &str)> = vec![
            ("To", message.to.as_e164()),
            ("Body", message.body),
            (sender_field, sender),
            ("ValidityPeriod", &validity),
        ];
        if let Some(enabled) = self.risk_check {
            form.push(("RiskCheck", if enabled { "enable" } else { "disable" }));
        }
        let callback = self
            .status_callback
            .as_ref()
            .map(|base| format!("{base}?{}", message.callback_query));
        if let Some(callback) = &callback {
            form.push(("StatusCallback", callback));
        }
        let response = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .form(&form)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return Err(network_error(&e)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let is_json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.contains("json"));
        // A body that cannot be read is an empty one: for a 201 that still
        // means Twilio created the message (below).
        let body = response.bytes().await.unwrap_or_default();
        if status == 201 {
            return match serde_json::from_slice::<MessageResource>(&body) {
                Ok(m) => Ok(Accepted {
                    sid: m.sid,
                    status: m.status.unwrap_or_default(),
                    segments: m.num_segments.and_then(|v| match v {
                        serde_json::Value::String(s) => s.parse().ok(),
                        serde_json::Value::Number(n) => {
                            n.as_u64().and_then(|n| u32::try_from(n).ok())
                        }
                        _ => None,
                    }),
                }),
                // A 201 is Twilio's word that the message exists, whatever
                // the body: treating it as a failure would send it twice.
                Err(_) => Ok(Accepted {
                    sid: String::from("unknown"),
                    status: String::from("unknown"),
                    segments: None,
                }),
            };
        }
        let parsed = serde_json::from_slice::<ErrorBody>(&body).ok();
        let (code, message) = match parsed {
            Some(ErrorBody { code, message }) if code.is_some() || message.is_some() => (
                code,
                mask_numbers_in(message.as_deref().unwrap_or("no message")),
            ),
            _ => (
                None,
                if body.is_empty() {
                    "empty body".to_owned()
                } else if is_json {
                    "a JSON body that is not Twilio's error".to_owned()
                } else {
                    format!("a non-JSON body of {} bytes (a proxy's page?)", body.len())
                },
            ),
        };
        Err(SendError::Http {
            status,
            code,
            message,
            retry_after,
        })
    }
}

/// `Basic base64(user:password)`, marked sensitive so that no debug output
/// of a request shows it.
fn basic_authorization(user: &str, password: &SecretString) -> reqwest::header::HeaderValue {
    use base64::Engine as _;
    let credentials = format!("{user}:{}", password.expose_secret());
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    let mut value = reqwest::header::HeaderValue::try_from(format!("Basic {encoded}"))
        .expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

fn network_error(e: &reqwest::Error) -> SendError {
    // A connect error means nothing was sent; anything after that (timeout,
    // reset while waiting) may have reached Twilio.
    SendError::Network {
        maybe_sent: !e.is_connect(),
        message: describe(e),
    }
}

/// The error and its causes in one line, with no URL (it holds the account
/// SID, which is not secret but not worth repeating on every line).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    mask_numbers_in(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::{basic_auth, body_string_contains, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const SID: &str = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const MG: &str = "MGbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const TOKEN: &str = "token-123";
    const PATH: &str = "/2010-04-01/Accounts/ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/Messages.json";

    fn settings(base_url: String) -> TwilioSettings {
        TwilioSettings {
            account_sid: SID.to_owned(),
            auth: TwilioAuth::AuthToken(SecretString::from(TOKEN)),
            sender: Sender::MessagingService(MG.to_owned()),
            base_url,
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(800),
            risk_check: None,
            status_callback: None,
            callback_tokens: Vec::new(),
        }
    }

    async fn send_to(server: &MockServer, validity: Duration) -> SendOutcome {
        let client = TwilioClient::new(&settings(server.uri())).unwrap();
        let to = PhoneNumber::parse("+819012345678").unwrap();
        client
            .send(Outgoing {
                to: &to,
                body: "Your code is 123456",
                validity,
                callback_query: "",
            })
            .await
    }

    #[tokio::test]
    async fn posts_the_form_with_basic_auth_and_reads_the_sid() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(PATH))
            .and(basic_auth(SID, TOKEN))
            .and(header("content-type", "application/x-www-form-urlencoded"))
            .and(body_string_contains("To=%2B819012345678"))
            .and(body_string_contains("Body=Your+code+is+123456"))
            .and(body_string_contains(
                format!("MessagingServiceSid={MG}").as_str(),
            ))
            .and(body_string_contains("ValidityPeriod=300"))
            .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({
                "sid": "SM0123", "status": "accepted", "num_segments": "1"
            })))
            .expect(1)
            .mount(&server)
            .await;
        let accepted = send_to(&server, Duration::from_secs(300)).await.unwrap();
        assert_eq!(accepted.sid, "SM0123");
        assert_eq!(accepted.status, "accepted");
        assert_eq!(accepted.segments, Some(1));
    }

    #[tokio::test]
    async fn validity_is_clamped_to_twilios_range() {
        let server = MockServer::start().await;
        Mock::given(|req: &wiremock::Request| {
            String::from_utf8_lossy(&req.body).ends_with("ValidityPeriod=1")
        })
        .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({"sid": "SM1"})))
        .mount(&server)
        .await;
        assert!(send_to(&server, Duration::from_millis(200)).await.is_ok());
    }

    #[tokio::test]
    async fn api_keys_authenticate_as_the_key() {
        let server = MockServer::start().await;
        Mock::given(basic_auth("SKcccccccccccccccccccccccccccccccc", "sekret"))
            .and(path(PATH))
            .respond_with(
                ResponseTemplate::new(201).set_body_json(serde_json::json!({"sid": "SM2"})),
            )
            .expect(1)
            .mount(&server)
            .await;
        let mut s = settings(server.uri());
        s.auth = TwilioAuth::ApiKey {
            sid: "SKcccccccccccccccccccccccccccccccc".to_owned(),
            secret: SecretString::from("sekret"),
        };
        s.sender = Sender::From("+15005550006".to_owned());
        s.risk_check = Some(false);
        let client = TwilioClient::new(&s).unwrap();
        let to = PhoneNumber::parse("+15005550006").unwrap();
        let out = client
            .send(Outgoing {
                to: &to,
                body: "x",
                validity: Duration::from_secs(60),
                callback_query: "",
            })
            .await;
        assert!(out.is_ok());
        let requests = server.received_requests().await.unwrap();
        let body = String::from_utf8_lossy(&requests[0].body);
        assert!(body.contains("From=%2B15005550006"), "{body}");
        assert!(body.contains("RiskCheck=disable"), "{body}");
    }

    #[tokio::test]
    async fn a_twilio_error_keeps_status_code_message_and_masks_numbers() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
                "code": 21211, "message": "The 'To' number +819012345678 is not a valid phone number.",
                "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400
            })))
            .mount(&server)
            .await;
        let err = send_to(&server, Duration::from_secs(60)).await.unwrap_err();
        assert_eq!(err.twilio_code(), Some(21211));
        assert_eq!(err.class(), Class::Permanent);
        let text = err.to_string();
        assert!(text.contains("+81********78"), "{text}");
        assert!(!text.contains("9012345678"), "{text}");
    }

    #[tokio::test]
    async fn rate_limits_carry_retry_after() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(429)
                    .insert_header("Retry-After", "3")
                    .set_body_json(serde_json::json!({"code": 20429, "message": "Too Many Requests", "status": 429})),
            )
            .mount(&server)
            .await;
        let err = send_to(&server, Duration::from_secs(60)).await.unwrap_err();
        assert!(err.is_rate_limit());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(err.class(), Class::Transient);
    }

    #[tokio::test]
    async fn a_proxys_html_page_is_an_outcome() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(502)
                    .insert_header("content-type", "text/html")
                    .set_body_string("<html><body><h1>502 Bad Gateway</h1></body></html>"),
            )
            .mount(&server)
            .await;
        let err = send_to(&server, Duration::from_secs(60)).await.unwrap_err();
        assert_eq!(err.twilio_code(), None);
        assert_eq!(err.class(), Class::Transient);
        assert!(err.to_string().contains("non-JSON"), "{err}");
    }

    #[tokio::test]
    async fn bad_credentials_are_a_config_fault() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({
                "code": 20003, "message": "Authenticate", "status": 401
            })))
            .mount(&server)
            .await;
        let err = send_to(&server, Duration::from_secs(60)).await.unwrap_err();
        assert_eq!(err.class(), Class::Config);
    }

    #[tokio::test]
    async fn a_timeout_is_a_network_error_that_may_have_sent() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_secs(5)))
            .mount(&server)
            .await;
        let err = send_to(&server, Duration::from_secs(60)).await.unwrap_err();
        assert!(
            matches!(
                err,
                SendError::Network {
                    maybe_sent: true,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.class(), Class::Transient);
    }

    #[tokio::test]
    async fn a_refused_connection_did_not_send() {
        // Bind and drop a listener to get a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = TwilioClient::new(&settings(format!("http://127.0.0.1:{port}"))).unwrap();
        let to = PhoneNumber::parse("+15005550006").unwrap();
        let err = client
            .send(Outgoing {
                to: &to,
                body: "x",
                validity: Duration::from_secs(60),
                callback_query: "",
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                SendError::Network {
                    maybe_sent: false,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
