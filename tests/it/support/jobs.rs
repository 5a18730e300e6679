//! Test jobs as a producer would publish them, with fresh codes and numbers
//! that the log scan then looks for.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::logs::{code, forbid};

/// A test job: a number, a type, a fresh code.
#[derive(Debug, Clone)]
pub(crate) struct TestJob {
    pub id: String,
    pub to: String,
    pub kind: String,
    pub code: String,
    pub payload: serde_json::Map<String, Value>,
    pub expires_at: Option<SystemTime>,
}

impl TestJob {
    pub(crate) fn new(to: &str, kind: &str) -> TestJob {
        forbid(to);
        forbid(to.trim_start_matches('+'));
        let code = code();
        let mut payload = serde_json::Map::new();
        payload.insert("code".to_owned(), json!(code));
        TestJob {
            id: uuid::Uuid::new_v4().to_string(),
            to: to.to_owned(),
            kind: kind.to_owned(),
            code,
            payload,
            expires_at: Some(SystemTime::now() + Duration::from_secs(600)),
        }
    }

    pub(crate) fn locale(mut self, locale: &str) -> TestJob {
        self.payload.insert("locale".to_owned(), json!(locale));
        self
    }

    pub(crate) fn var(mut self, key: &str, value: Value) -> TestJob {
        self.payload.insert(key.to_owned(), value);
        self
    }

    pub(crate) fn expires_in(mut self, d: Duration) -> TestJob {
        self.expires_at = Some(SystemTime::now() + d);
        self
    }

    pub(crate) fn expired(mut self) -> TestJob {
        self.expires_at = Some(SystemTime::now() - Duration::from_secs(1));
        self
    }

    pub(crate) fn body(&self) -> Vec<u8> {
        let mut job = json!({
            "to": self.to,
            "type": self.kind,
            "payload": self.payload,
            "id": self.id,
        });
        if let Some(at) = self.expires_at {
            job["expires_at"] = json!(sms_dispatch::wire::format_rfc3339(at));
        }
        serde_json::to_vec(&job).unwrap()
    }
}

/// A test phone number: +1 555 0100 xxxx style, unique per call.
pub(crate) fn number() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let unique = fastrand::u32(0..10_000);
    format!("+8190{:04}{:04}", unique, n % 10_000)
}
