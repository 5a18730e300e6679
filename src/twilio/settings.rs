//! What the Twilio client needs: the account, how to authenticate, who the
//! message comes from and where Twilio is. Built by [`crate::config`]; the
//! client takes these plain values, never the configuration itself.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;

/// Twilio's API when nothing else is configured.
pub(crate) const DEFAULT_TWILIO_BASE_URL: &str = "https://api.twilio.com";

/// How the worker authenticates to Twilio.
#[derive(Clone)]
pub(crate) enum TwilioAuth {
    /// The account's auth token (Logto's connector uses this).
    AuthToken(SecretString),
    /// An API key (`SK…`) and its secret: Twilio's advice for production, and
    /// preferred when both are configured.
    ApiKey {
        /// The key's SID, `SK…`.
        sid: String,
        /// The key's secret.
        secret: SecretString,
    },
}

impl fmt::Debug for TwilioAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TwilioAuth::AuthToken(_) => f.write_str("AuthToken(***)"),
            TwilioAuth::ApiKey { sid, .. } => write!(f, "ApiKey({sid}, ***)"),
        }
    }
}

/// Who the message comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sender {
    /// A Messaging Service (`MG…`): Twilio picks the number.
    MessagingService(String),
    /// One phone number or alphanumeric sender ID.
    From(String),
}

/// Everything needed to call Twilio.
#[derive(Debug, Clone)]
pub(crate) struct TwilioSettings {
    /// The account the messages are created in, `AC…`.
    pub account_sid: String,
    /// The credentials for HTTP basic auth.
    pub auth: TwilioAuth,
    /// Who the message comes from.
    pub sender: Sender,
    /// `https://api.twilio.com`, or a fake's address in tests.
    pub base_url: String,
    /// How long connecting to Twilio may take.
    pub connect_timeout: Duration,
    /// How long one call may take in all.
    pub request_timeout: Duration,
    /// `Some(false)` sends `RiskCheck=disable` (Logto's `disableRiskCheck`).
    pub risk_check: Option<bool>,
    /// Where Twilio posts status callbacks (`{public URL}/v1/twilio/status`),
    /// when a public URL is configured.
    pub status_callback: Option<String>,
    /// The tokens a callback's signature may be made with: the account's
    /// auth token and, while it is rotated, the previous one. Twilio signs
    /// with the auth token even when the worker sends with an API key.
    pub callback_tokens: Vec<SecretString>,
}
