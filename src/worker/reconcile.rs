//! Reconciliation: before calling Twilio again for a job whose earlier call
//! may have created the message (a timeout, a 5xx, a worker killed
//! mid-call), ask Twilio what the account created for that number, and take
//! a message from this sender with this text, created since that call, as
//! the job's. Twilio's create call has no idempotency key; this is the next
//! best thing. When the list cannot be read, the job is sent: a possible
//! duplicate beats a locked-out user.

use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::Worker;
use crate::job::Job;
use crate::twilio::{Listed, Sender, TwilioClient};

/// How long after the ambiguous call the list is read: Twilio does not
/// promise to list a message the moment it is created.
pub(super) const LIST_DELAY: Duration = Duration::from_secs(5);

/// How far before the ambiguous call a message may have been created and
/// still be the job's (the two clocks may disagree).
const CLOCK_MARGIN: Duration = Duration::from_secs(60);

/// List calls one worker makes at once, so reconciling never eats the
/// account's concurrency.
pub(super) const LIST_CALLS: usize = 2;

/// What the list said.
pub(super) enum Reconciled {
    /// Twilio holds the job's message: this SID.
    Found(String),
    /// Nothing of the job's: the earlier call created no message.
    NotFound,
    /// The list could not be read: send anyway.
    Failed,
}

impl Worker {
    /// Looks for the message an ambiguous call at `since` may have created.
    pub(super) async fn reconcile(
        &self,
        client: &TwilioClient,
        job: &Job,
        body: &str,
        since: SystemTime,
    ) -> Reconciled {
        if let Ok(age) = SystemTime::now().duration_since(since)
            && age < LIST_DELAY
        {
            tokio::time::sleep(LIST_DELAY - age).await;
        }
        let Ok(_permit) = self.list_calls.acquire().await else {
            return Reconciled::Failed;
        };
        let window = since.checked_sub(CLOCK_MARGIN).unwrap_or(since);
        // Bodies of other sign-ins come back too: compared here, dropped
        // with `listed`, never logged.
        let result = match client.messages_to(&job.to, window).await {
            Ok(listed) => match listed
                .iter()
                .find(|m| sent_by(m, client.sender()) && same_text(&m.body, body))
            {
                Some(message) => Reconciled::Found(message.sid.clone()),
                None => Reconciled::NotFound,
            },
            Err(error) => {
                warn!(
                    error = %error,
                    "could not read Twilio's message list to settle an earlier attempt; sending (a duplicate is possible)"
                );
                Reconciled::Failed
            }
        };
        let label = match &result {
            Reconciled::Found(_) => "found",
            Reconciled::NotFound => {
                info!("an earlier attempt created no message; sending");
                "not_found"
            }
            Reconciled::Failed => "failed",
        };
        self.metrics.reconciled(label);
        result
    }
}

/// Whether `message` came from this worker's sender.
fn sent_by(message: &Listed, sender: &Sender) -> bool {
    match sender {
        Sender::MessagingService(sid) => message.messaging_service_sid.as_deref() == Some(sid),
        Sender::From(from) => message.from.as_deref() == Some(from),
    }
}

/// Whether two texts are the same message once what Twilio may rewrite is
/// set aside: Smart Encoding swaps typographic characters (quotes, dashes,
/// spaces) for GSM-7 ones, so only letters and digits are compared.
fn same_text(listed: &str, sent: &str) -> bool {
    let fold = |s: &str| -> Vec<char> { s.chars().filter(|c| c.is_alphanumeric()).collect() };
    fold(listed) == fold(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_encoding_does_not_hide_the_job_but_another_code_does() {
        let sent = "Your code is 123456 \u{2014} don\u{2019}t share it";
        assert!(same_text("Your code is 123456 - don't share it", sent));
        assert!(!same_text("Your code is 654321 - don't share it", sent));
        assert!(!same_text("Your code is 123456", sent));
    }

    #[test]
    fn only_this_workers_sender_counts() {
        let listed = Listed {
            sid: "SM1".to_owned(),
            from: None,
            messaging_service_sid: Some("MG1".to_owned()),
            body: String::new(),
        };
        assert!(sent_by(
            &listed,
            &Sender::MessagingService("MG1".to_owned())
        ));
        assert!(!sent_by(
            &listed,
            &Sender::MessagingService("MG2".to_owned())
        ));
        assert!(!sent_by(&listed, &Sender::From("+15005550006".to_owned())));
    }
}
