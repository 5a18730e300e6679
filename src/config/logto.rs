//! Logto's Twilio connector config (`@logto/connector-twilio-sms`), read
//! verbatim. Unknown keys are ignored: Logto may add some.

use secrecy::SecretString;
use serde::Deserialize;

use super::error::ConfigError;
use super::raw::{Raw, RawTemplate, sourced, without_quoted};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogtoConnector {
    #[serde(rename = "accountSID")]
    account_sid: Option<String>,
    auth_token: Option<SecretString>,
    #[serde(rename = "fromMessagingServiceSID")]
    from_messaging_service_sid: Option<String>,
    disable_risk_check: Option<bool>,
    #[serde(default)]
    templates: Vec<LogtoTemplate>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogtoTemplate {
    usage_type: String,
    content: String,
    locale: Option<String>,
}

/// Reads the JSON text of the file `source`.
pub(crate) fn read(source: &str, text: &str) -> Result<Raw, ConfigError> {
    let file: LogtoConnector = serde_json::from_str(text).map_err(|e| {
        ConfigError::new(
            source,
            format!("line {}, column {}", e.line(), e.column()),
            format!("is not a valid Logto connector config ({})", without_quoted(&e.to_string())),
            "fix the JSON; the shape is {accountSID, authToken, fromMessagingServiceSID, templates: [{usageType, content}]}",
        )
    })?;
    let mut raw = Raw {
        account_sid: sourced("accountSID", file.account_sid),
        auth_token: sourced("authToken", file.auth_token),
        risk_check: file.disable_risk_check.map(|d| !d),
        ..Raw::default()
    };
    // Logto's field is named for a Messaging Service but people put a phone
    // number there too: take either, by its shape.
    if let Some(sender) = file.from_messaging_service_sid {
        if sender.starts_with("MG") {
            raw.messaging_service_sid = sourced("fromMessagingServiceSID", Some(sender));
        } else {
            raw.from = sourced("fromMessagingServiceSID", Some(sender));
        }
    }
    raw.templates = RawTemplate::numbered(
        file.templates
            .into_iter()
            .map(|t| (t.usage_type, t.locale, t.content)),
    );
    Ok(raw)
}
