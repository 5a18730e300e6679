//! Configuration files the worker and the commands read.

use std::io::Write;
use std::path::PathBuf;

use fake_twilio::{TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, TEST_MESSAGING_SERVICE_SID};
use serde_json::{Value, json};

use super::logs::forbid;

/// A config file in the temp dir, removed on drop.
pub(crate) struct ConfigFile(pub PathBuf);

impl ConfigFile {
    pub(crate) fn write(ext: &str, text: &str) -> ConfigFile {
        let path = std::env::temp_dir().join(format!(
            "sms-dispatch-test-{}.{ext}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        ConfigFile(path)
    }

    /// Logto's Twilio connector JSON with the fake's credentials and these
    /// templates (type, locale, content).
    pub(crate) fn logto(templates: &[(&str, Option<&str>, &str)]) -> ConfigFile {
        let templates: Vec<Value> = templates
            .iter()
            .map(|(kind, locale, content)| {
                let mut t = json!({"usageType": kind, "content": content});
                if let Some(l) = locale {
                    t["locale"] = json!(l);
                }
                t
            })
            .collect();
        let config = json!({
            "accountSID": TEST_ACCOUNT_SID,
            "authToken": TEST_AUTH_TOKEN,
            "fromMessagingServiceSID": TEST_MESSAGING_SERVICE_SID,
            "templates": templates,
        });
        ConfigFile::write("json", &config.to_string())
    }

    /// A Logto config with one template per type.
    pub(crate) fn full() -> ConfigFile {
        let templates: Vec<_> = FULL_TEMPLATES
            .iter()
            .map(|(kind, content)| (*kind, None, *content))
            .collect();
        ConfigFile::logto(&templates)
    }

    /// The templates of [`ConfigFile::full`] in the project's TOML, with a
    /// Twilio request timeout (120 s, the most there is) longer than any test
    /// holds calls at the fake's gate: a held call is never a timeout, only
    /// a call in flight.
    pub(crate) fn patient() -> ConfigFile {
        let mut text = format!(
            "[twilio]\naccount_sid = \"{TEST_ACCOUNT_SID}\"\nauth_token = \"{TEST_AUTH_TOKEN}\"\n\
             messaging_service_sid = \"{TEST_MESSAGING_SERVICE_SID}\"\nrequest_timeout_ms = 120000\n"
        );
        for (kind, content) in FULL_TEMPLATES {
            text.push_str(&format!(
                "\n[[templates]]\ntype = \"{kind}\"\ncontent = \"{content}\"\n"
            ));
        }
        ConfigFile::write("toml", &text)
    }
}

/// A secret a test hands the worker or a command (an ingest token, an API
/// secret), returned as given and remembered as forbidden in logs, as
/// Twilio's test auth token and API secret are from the start.
pub(crate) fn secret(value: &str) -> String {
    forbid(value);
    value.to_owned()
}

/// One template per type a full Logto sign-in flow needs: (type, content).
const FULL_TEMPLATES: [(&str, &str); 4] = [
    ("SignIn", "Your sign-in code is {{code}}"),
    ("Register", "Welcome! Your code is {{code}}"),
    ("ForgotPassword", "Reset code: {{code}}"),
    ("Generic", "Your code is {{code}}"),
];

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
