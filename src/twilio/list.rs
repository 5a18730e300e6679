//! Reading what the account created: Twilio's Message list, filtered by
//! `To`, newest first, a small page at a time. Used only to settle an
//! ambiguous attempt (a timeout, a 5xx, a crash mid-call). The bodies it
//! returns are other people's codes too: they are compared and dropped,
//! never logged or kept.

use std::time::{Duration, SystemTime};

use secrecy::ExposeSecret;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use super::client::{SendError, TwilioClient};
use crate::phone::PhoneNumber;

/// Messages per page: a number gets few codes in the window looked at.
const PAGE_SIZE: usize = 20;

/// Pages read at most: a number flooded with messages is not worth more.
const MAX_PAGES: usize = 5;

/// One message of the list, as far as matching needs it.
pub(crate) struct Listed {
    /// `SM…`
    pub(crate) sid: String,
    /// The sending number, for a `From` sender.
    pub(crate) from: Option<String>,
    /// The Messaging Service, for a service sender.
    pub(crate) messaging_service_sid: Option<String>,
    /// The text as Twilio stored it (after any Smart Encoding).
    pub(crate) body: String,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    messages: Vec<RawMessage>,
    next_page_uri: Option<String>,
}

#[derive(Deserialize)]
struct RawMessage {
    sid: String,
    from: Option<String>,
    messaging_service_sid: Option<String>,
    body: Option<String>,
    date_created: Option<String>,
}

impl TwilioClient {
    /// The messages to `to` created at or after `since`, newest first,
    /// reading pages until one holds a message created before `since`.
    pub(crate) async fn messages_to(
        &self,
        to: &PhoneNumber,
        since: SystemTime,
    ) -> Result<Vec<Listed>, SendError> {
        let mut found = Vec::new();
        let mut url = format!(
            "{}?To={}&PageSize={PAGE_SIZE}",
            self.messages_url(),
            to.as_e164().replace('+', "%2B")
        );
        for _ in 0..MAX_PAGES {
            let page: Page = self.get_json(&url).await?;
            let mut older_seen = false;
            for raw in page.messages {
                let created = raw
                    .date_created
                    .as_deref()
                    .and_then(|d| OffsetDateTime::parse(d, &Rfc2822).ok())
                    .map(|t| {
                        SystemTime::UNIX_EPOCH
                            + Duration::from_secs(u64::try_from(t.unix_timestamp()).unwrap_or(0))
                    });
                let Some(created) = created else { continue };
                if created < since {
                    older_seen = true;
                    continue;
                }
                found.push(Listed {
                    sid: raw.sid,
                    from: raw.from,
                    messaging_service_sid: raw.messaging_service_sid,
                    body: raw.body.unwrap_or_default(),
                });
            }
            match page.next_page_uri {
                Some(next) if !older_seen => url = format!("{}{next}", self.base_url()),
                _ => break,
            }
        }
        Ok(found)
    }

    /// GETs `url` with the client's credentials and reads its JSON.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, SendError> {
        let (username, password) = self.credentials();
        let response = self
            .http()
            .get(url)
            .basic_auth(username, Some(password.expose_secret()))
            .send()
            .await
            .map_err(|e| SendError::Network {
                maybe_sent: false,
                message: e.to_string(),
            })?;
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap_or_default();
        if status != 200 {
            return Err(SendError::Http {
                status,
                code: serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("code").and_then(serde_json::Value::as_u64))
                    .and_then(|c| u32::try_from(c).ok()),
                message: "the message list was refused".to_owned(),
                retry_after: None,
            });
        }
        serde_json::from_slice(&body).map_err(|_| SendError::Http {
            status,
            code: None,
            message: "the message list was not Twilio's JSON".to_owned(),
            retry_after: None,
        })
    }
}
