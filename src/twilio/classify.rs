//! Twilio error classification, as data.
//!
//! Every error answer from `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`
//! (and every delivery code Twilio later reports on the message resource) is
//! turned into exactly one [`Class`]:
//!
//! - [`Class::Transient`]: the same request will succeed later without anyone
//!   changing anything (rate limits, queue overflow, Twilio or carrier outages).
//!   The job is retried with backoff, never past its `expires_at`.
//! - [`Class::Permanent`]: this job can never succeed because of its recipient or
//!   its content. The job is dead-lettered with reason `rejected`.
//! - [`Class::Config`]: the account, the credentials or the sender is
//!   misconfigured in a way that is the same for every recipient. The worker
//!   pauses consuming and keeps the job queued, so a bad credential deploy does
//!   not burn the whole queue into the dead-letter queue.
//!
//! **The recipient rule.** A code that depends on the destination number is
//! `Permanent`, never `Config`, even when the fix is an account setting (21408
//! geo permissions, 21606 sender not valid for this destination, 21219/21608
//! unverified recipient on a trial account, 21703 no sender in the Messaging
//! Service for this destination, 10DLC/toll-free codes that only concern US
//! traffic...). `Config` pauses the whole fleet: one end user must never be able
//! to do that by typing a phone number. The price is that an account problem that
//! shows up only for some destinations dead-letters those jobs instead of pausing;
//! `dlq replay --twilio-code N` brings them back once the setting is fixed.
//! When a code is ambiguous between "the recipient" and "the account", it is
//! `Permanent` for the same reason.
//!
//! The decision is a table rather than `match` arms scattered through the
//! sender so that it can be reviewed code by code against Twilio's error
//! dictionary (`tests/data/twilio-error-codes.json`), printed in docs/classification.md
//! ([`markdown_table`]), shown next to dead letters ([`meaning`]), and checked by
//! a test that walks the whole dictionary: every code there is either in
//! [`TABLE`] or explicitly listed (in the tests) as one the Messages create call
//! cannot return. Twilio adds and changes codes over time, so a code that is not
//! in the table falls back to a rule by HTTP status ([`by_http_status`]).

/// What the worker does with a failed send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Class {
    /// Retry later (backoff with jitter, never past `expires_at`).
    Transient,
    /// This job can never succeed (recipient or content): dead-letter as `rejected`.
    Permanent,
    /// The account/credentials/sender is misconfigured for every recipient: pause.
    Config,
}

impl Class {
    /// Stable lower-case name used in metrics labels and logs: "transient" | "permanent" | "config".
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Class::Transient => "transient",
            Class::Permanent => "permanent",
            Class::Config => "config",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rule {
    pub code: u32,
    pub class: Class,
    /// Short meaning for humans (an operator's terminal, ≤ 60 chars), based on the dictionary's `message`.
    pub meaning: &'static str,
}

const fn rule(code: u32, class: Class, meaning: &'static str) -> Rule {
    Rule {
        code,
        class,
        meaning,
    }
}

use Class::{Config, Permanent, Transient};

/// The table, sorted by code, one row per code.
pub(crate) static TABLE: &[Rule] = &[
    // Rate of messages to the same number or a runaway sender; Twilio lifts it by itself.
    rule(14107, Transient, "SMS send rate limit exceeded"),
    // --- 20xxx: platform codes any REST call can return ---
    // The worker's own request shape (the job only supplies To and Body): same for every send.
    rule(20001, Config, "Unknown parameters"),
    rule(
        20003,
        Config,
        "Permission denied (wrong or revoked credentials)",
    ),
    // We always POST the same path: a wrong method means a wrong base URL or a proxy.
    rule(20004, Config, "Method not allowed"),
    rule(20005, Config, "Account not active"),
    rule(20006, Config, "Access denied"),
    rule(20008, Config, "Test credentials used"),
    rule(20010, Config, "Action disabled for account"),
    // The worker's TLS stack, the same for every send.
    rule(20011, Config, "Invalid TLS version"),
    rule(20012, Config, "Invalid TLS 1.2 cipher suite"),
    rule(20403, Config, "Forbidden"),
    // The account SID in the URL does not exist.
    rule(20404, Config, "Not found (account SID)"),
    // A discontinued endpoint: the base URL/path configuration.
    rule(20410, Config, "Gone: discontinued API"),
    // Only a job's content can make the form this large.
    rule(20413, Permanent, "Request entity too large"),
    // Generic: may be a job field; ambiguous codes are Permanent (recipient rule).
    rule(20422, Permanent, "Invalid parameter"),
    // The SIDs we send (account in the URL, MessagingServiceSid) are configuration.
    rule(20423, Config, "Invalid SID"),
    rule(20426, Config, "Upgrade required"),
    // Never processed, always safe to retry.
    rule(
        20429,
        Transient,
        "Too many requests (account concurrency limit)",
    ),
    rule(20500, Transient, "Internal server error"),
    rule(20503, Transient, "Service unavailable"),
    // --- 21xxx: the request's To / From / Body / Messaging Service ---
    rule(21211, Permanent, "Invalid 'To' phone number"),
    rule(21212, Config, "Invalid 'From' number (caller ID)"),
    rule(21214, Permanent, "'To' phone number cannot be reached"),
    rule(21217, Permanent, "Phone number does not appear to be valid"),
    // Trial account: the fix is on the account, but it depends on the recipient.
    rule(
        21219,
        Permanent,
        "'To' phone number not verified (trial account)",
    ),
    // Ambiguous between To and From: Permanent (recipient rule).
    rule(21401, Permanent, "Invalid phone number"),
    // Ambiguous between To (cannot receive SMS) and From: Permanent (recipient rule).
    rule(21407, Permanent, "Phone number type does not support SMS"),
    // Geo permissions are an account setting, but chosen by the recipient's country.
    rule(
        21408,
        Permanent,
        "SMS not enabled for the 'To' region (geo permissions)",
    ),
    rule(21601, Config, "'From' is not an SMS-capable Twilio number"),
    rule(21602, Permanent, "Message body is required"),
    rule(21603, Config, "'From' or 'MessagingServiceSid' is required"),
    rule(21604, Permanent, "'To' phone number is required"),
    // "not valid ... for this destination": depends on the recipient.
    rule(21606, Permanent, "'From' cannot send to this destination"),
    rule(
        21607,
        Config,
        "Trial account must send from its sandbox number",
    ),
    rule(21608, Permanent, "'To' number not verified (trial account)"),
    rule(21609, Config, "Invalid 'StatusCallback'"),
    rule(21610, Permanent, "Recipient unsubscribed (replied STOP)"),
    // The sender's queue (4 h of its rate) is full; it drains by itself.
    rule(21611, Transient, "'From' number queue is full"),
    rule(21612, Permanent, "'To' not currently reachable via SMS"),
    rule(21614, Permanent, "'To' is not a valid mobile number"),
    rule(
        21616,
        Config,
        "'From' matches several numbers on the account",
    ),
    rule(21617, Permanent, "Body exceeds the 1600 character limit"),
    rule(21618, Permanent, "Message body cannot be sent"),
    // Seen for a message without body or media: content.
    rule(21619, Permanent, "Unable to create record"),
    // ValidityPeriod is computed by the worker (1-36000 s): a worker bug, same for every send.
    rule(21624, Config, "Invalid validity period"),
    // The 'To' field (from the job) lists too many recipients.
    rule(21653, Permanent, "More recipient addresses than allowed"),
    // "not supported in the specific destination": depends on the recipient.
    rule(
        21657,
        Permanent,
        "Sender ID not supported for this destination",
    ),
    rule(21701, Config, "Messaging Service does not exist"),
    rule(21702, Config, "Messaging Service cannot send new messages"),
    // Per the dictionary: the service has senders, but none that can reach THIS
    // destination (e.g. no US/CA number for a US/CA recipient): recipient rule.
    rule(
        21703,
        Permanent,
        "No sender in the Messaging Service for this 'To'",
    ),
    // Per the dictionary: the service has no senders at all: same for everyone.
    rule(21704, Config, "Messaging Service contains no senders"),
    rule(21705, Config, "Invalid Messaging Service SID"),
    rule(
        21709,
        Config,
        "Alpha sender ID invalid or not allowed for service",
    ),
    rule(
        21711,
        Config,
        "Sender not in the specified Messaging Service",
    ),
    rule(21712, Config, "Sender belongs to another Messaging Service"),
    rule(21730, Transient, "System under maintenance"),
    // The 'To' (from the job) has a channel prefix that the sender does not match.
    rule(
        21910,
        Permanent,
        "'From' and 'To' are on different channels",
    ),
    // --- 30xxx: delivery outcomes (later, on the message resource) ---
    rule(30001, Transient, "Queue overflow"),
    rule(30002, Config, "Account suspended"),
    rule(30003, Permanent, "Unreachable destination handset"),
    rule(30004, Permanent, "Message blocked"),
    rule(30005, Permanent, "Unknown destination handset"),
    rule(30006, Permanent, "Landline or unreachable carrier"),
    rule(30007, Permanent, "Message filtered (spam or carrier block)"),
    rule(30008, Transient, "Unknown error"),
    // Only a job with seconds left can be near the floor; it is stale anyway,
    // and pausing the fleet for one nearly expired job would be wrong.
    rule(30012, Permanent, "TTL (validity period) too small"),
    // The upper bound is the worker's clamp: the same for every job.
    rule(30013, Config, "TTL (validity period) too big"),
    rule(30014, Permanent, "'To' attributes are invalid"),
    rule(30015, Permanent, "Channel type not supported"),
    rule(
        30016,
        Permanent,
        "'To' and 'From' channel types incompatible",
    ),
    rule(30017, Transient, "Carrier network congestion"),
    // Only recipients on networks that require pre-registration.
    rule(
        30018,
        Permanent,
        "Destination carrier requires sender ID registration",
    ),
    rule(30019, Permanent, "Content size exceeds carrier limit"),
    rule(
        30021,
        Transient,
        "Internal failure in Messaging Service orchestrator",
    ),
    rule(30022, Transient, "US A2P 10DLC rate limit exceeded"),
    // Daily caps (30023, 30027): Transient, not Config. The cap lifts by itself at
    // 00:00 Pacific with no operator action, and it only concerns US 10DLC traffic:
    // pausing would also stop every other destination, and whoever pumps US numbers
    // to exhaust the cap would get a fleet-wide pause for free (the recipient rule).
    // Retries stay bounded by `expires_at`. Contrast 63038 (whole account): Config.
    rule(30023, Transient, "US A2P 10DLC daily message cap reached"),
    // Towards one carrier or a recently ported destination: depends on the recipient.
    rule(
        30024,
        Permanent,
        "Numeric sender ID not provisioned on carrier",
    ),
    rule(
        30027,
        Transient,
        "US A2P 10DLC T-Mobile daily limit reached",
    ),
    // We always use 2010-04-01: a wrong version means a wrong base URL.
    rule(30028, Config, "Invalid API version"),
    // 30032-30034 need an operator, but only US/Canada-bound traffic is affected:
    // with a global Messaging Service, Config would let anyone typing a US number
    // pause the fleet. Recipient rule.
    rule(
        30032,
        Permanent,
        "Toll-free number not verified (US/Canada)",
    ),
    rule(30033, Permanent, "US A2P 10DLC campaign suspended"),
    rule(
        30034,
        Permanent,
        "US A2P 10DLC: message from unregistered number",
    ),
    // Registration in progress: will succeed later with nobody changing anything.
    rule(
        30035,
        Transient,
        "US A2P 10DLC: number still being configured",
    ),
    // "Confirm that the AccountSid and MessagingServiceSid is correct".
    rule(30404, Config, "Not found (account or Messaging Service)"),
    rule(30410, Transient, "Provider timeout"),
    // SMS pumping protection flagged this destination: never retry towards it.
    rule(
        30450,
        Permanent,
        "Delivery blocked (SMS pumping protection)",
    ),
    // --- 63xxx / 90xxx: account limits and the newer messaging backend ---
    rule(63017, Transient, "Rate limit exceeded"),
    rule(63018, Transient, "Rate limit exceeded for channel"),
    // The whole account, every destination: nothing can be sent, so pause (the probe
    // resumes by itself when the day rolls over or support raises the limit).
    rule(63038, Config, "Account exceeded the daily messages limit"),
    rule(90007, Config, "Invalid validity period"),
    // A SID collision on Twilio's side: the message was not created.
    rule(90009, Transient, "Message SID already exists (conflict)"),
    rule(90014, Config, "Validity period must be a positive integer"),
];

/// The row for a Twilio code, if the table has one (binary search).
pub(crate) fn lookup(code: u32) -> Option<&'static Rule> {
    TABLE
        .binary_search_by_key(&code, |r| r.code)
        .ok()
        .and_then(|i| TABLE.get(i))
}

/// The decision for an error answer: the table when the code is in it, else the rule by HTTP status.
/// `http_status` is the HTTP status Twilio (or a proxy) answered; `code` is Twilio's `code` from the JSON error body, when there was one.
pub(crate) fn classify(http_status: u16, code: Option<u32>) -> Class {
    match code.and_then(lookup) {
        Some(row) => row.class,
        None => by_http_status(http_status),
    }
}

/// The rule for codes not in the table (and for bodies without a code): 429 and 5xx → Transient,
/// 401 and 403 → Config (credentials/permissions are the same for every recipient), 404 → Config (the account SID in the URL does not exist),
/// 408 → Transient, other 4xx → Permanent, anything else (1xx/2xx/3xx answered as an error) → Transient.
pub(crate) fn by_http_status(http_status: u16) -> Class {
    match http_status {
        408 | 429 => Transient,
        401 | 403 | 404 => Config,
        400..=499 => Permanent,
        _ => Transient,
    }
}

/// The short meaning of a code, for display (`dlq list`): lookup(code).map(|r| r.meaning).
pub(crate) fn meaning(code: u32) -> Option<&'static str> {
    lookup(code).map(|r| r.meaning)
}

/// The table as a Markdown table (columns: code | class | meaning), for docs/classification.md; plus the rule for unknown codes as a sentence after it.
#[cfg(test)]
pub(crate) fn markdown_table() -> String {
    let mut out = String::from("| code | class | meaning |\n| ---: | --- | --- |\n");
    for row in TABLE {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            row.code,
            row.class.as_str(),
            row.meaning.replace('|', "\\|")
        ));
    }
    out.push_str(
        "\nA code that is not in this table, and an error answer without a Twilio code \
         (a proxy's HTML page, an empty body), is classified by HTTP status: 408, 429 and \
         5xx are transient; 401, 403 and 404 are config (credentials, permissions and the \
         account SID are the same for every recipient); any other 4xx is permanent; \
         anything else is transient.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const DICTIONARY: &str = include_str!("../../tests/data/twilio-error-codes.json");

    /// Dictionary codes the Messages create call cannot return (inclusive ranges),
    /// with the reason. Every dictionary code is either in `TABLE` or here.
    const NOT_FROM_MESSAGES_CREATE: &[(u32, u32, &str)] = &[
        (
            11751,
            11751,
            "MMS media size: the request never sends MediaUrl",
        ),
        (14109, 14109, "TwiML <Message> replies, not the REST API"),
        (
            20002,
            20002,
            "FriendlyName: not a Messages create parameter",
        ),
        (20007, 20007, "list paging"),
        (20009, 20009, "DELETE of a call or message"),
        (20020, 20023, "T-Mobile SDG provisioning API"),
        (
            20101,
            20160,
            "Access Tokens / JWT (the worker uses basic auth)",
        ),
        (20161, 20161, "Programmable Chat"),
        (20162, 20162, "concurrent updates of an existing resource"),
        (
            20409,
            20409,
            "state conflict when modifying an existing resource",
        ),
        (21200, 21210, "voice calls"),
        (21213, 21213, "voice calls: caller number"),
        (
            21215,
            21216,
            "voice calls: geo permissions and blocklist for calls",
        ),
        (21218, 21218, "voice calls: ApplicationSid"),
        (
            21220,
            21263,
            "voice calls, SIP domains and Elastic SIP Trunking",
        ),
        (21300, 21302, "voice: BYOC trunks and applications"),
        (
            21402,
            21406,
            "phone-number provisioning: webhook URLs, trial numbers",
        ),
        (
            21409,
            21458,
            "phone-number provisioning and caller-ID validation",
        ),
        (21470, 21481, "subaccount management and list paging"),
        (21501, 21504, "recordings and transcriptions"),
        (
            21605,
            21605,
            "legacy /SMS/Messages endpoint (we use Messages.json)",
        ),
        (21613, 21613, "phone-number provisioning: certification"),
        (21615, 21615, "phone-number provisioning: local address"),
        (21620, 21623, "MMS: the request never sends MediaUrl"),
        (21626, 21626, "voice calls: StatusCallbackEvent"),
        (21627, 21627, "MaxPrice: never sent"),
        (
            21628,
            21651,
            "addresses, regulatory bundles, SIP trunks (provisioning)",
        ),
        (21652, 21652, "MMS subject"),
        (
            21654,
            21656,
            "Content API: ContentSid/ContentVariables never sent",
        ),
        (21658, 21658, "Content API: template creation"),
        (
            21708,
            21708,
            "Messaging Service sender pool: adding alpha senders",
        ),
        (
            21710,
            21710,
            "Messaging Service sender pool: adding senders",
        ),
        (
            21713,
            21715,
            "Messaging Service management: use case, pool, capabilities",
        ),
        (21717, 21729, "US A2P 10DLC brand and campaign registration"),
        (
            21900,
            21902,
            "India DLT and InvoiceTag parameters: never sent",
        ),
        (23001, 23006, "message redaction account settings"),
        (30009, 30009, "inbound messages"),
        (30010, 30011, "MaxPrice and MMS: never sent"),
        (
            30020,
            30020,
            "message scheduling: the worker never schedules",
        ),
        (
            30025,
            30026,
            "warnings (share of the daily limit consumed), not failures",
        ),
        (
            30029,
            30031,
            "ContentRetention/AddressRetention/MaxRate: never sent",
        ),
        (30100, 30133, "link shortening domains and certificates"),
        (30400, 30400, "message update: cancel or redact"),
        (30409, 30409, "message update: cancel"),
        (30436, 30449, "toll-free verification API"),
        (30880, 30898, "A2P campaign vetting"),
        (
            35111,
            35126,
            "message scheduling: the worker never schedules",
        ),
        (57001, 57020, "partner event ingestion"),
        (
            63001,
            63016,
            "WhatsApp/Messenger/RCS channels: the worker sends SMS",
        ),
        (
            63019,
            63037,
            "WhatsApp/Messenger/RCS channels: the worker sends SMS",
        ),
        (63039, 63039, "Facebook Messenger warning"),
        (63040, 63051, "WhatsApp templates"),
        (90001, 90001, "fetch or update by message SID"),
        (90006, 90006, "message list/fetch: direction"),
        (92001, 92008, "Content API templates"),
    ];

    /// code → message, from the dictionary.
    fn dictionary() -> BTreeMap<u32, String> {
        let entries: Vec<serde_json::Value> =
            serde_json::from_str(DICTIONARY).expect("dictionary is a JSON array");
        let mut out = BTreeMap::new();
        for e in &entries {
            let code = e["code"].as_u64().expect("numeric code");
            let message = e["message"].as_str().unwrap_or("").trim().to_string();
            out.insert(u32::try_from(code).expect("code fits u32"), message);
        }
        out
    }

    fn excluded(code: u32) -> Option<&'static str> {
        NOT_FROM_MESSAGES_CREATE
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&code))
            .map(|(_, _, reason)| *reason)
    }

    #[test]
    fn table_is_sorted_and_unique() {
        for pair in TABLE.windows(2) {
            assert!(
                pair[0].code < pair[1].code,
                "TABLE out of order or duplicated at {} / {}",
                pair[0].code,
                pair[1].code
            );
        }
        for row in TABLE {
            assert_eq!(lookup(row.code).map(|r| r.code), Some(row.code));
        }
    }

    #[test]
    fn every_code_is_in_the_dictionary() {
        let dict = dictionary();
        assert_eq!(dict.len(), 419, "dictionary snapshot changed");
        let missing: Vec<u32> = TABLE
            .iter()
            .map(|r| r.code)
            .filter(|c| !dict.contains_key(c))
            .collect();
        assert!(missing.is_empty(), "not in the dictionary: {missing:?}");
    }

    #[test]
    fn every_messaging_code_is_decided() {
        let dict = dictionary();
        let undecided: Vec<String> = dict
            .iter()
            .filter(|(code, _)| lookup(**code).is_none() && excluded(**code).is_none())
            .map(|(code, message)| format!("{code} {message}"))
            .collect();
        assert!(
            undecided.is_empty(),
            "dictionary codes neither in TABLE nor in NOT_FROM_MESSAGES_CREATE:\n{}",
            undecided.join("\n")
        );
    }

    #[test]
    fn exclusions_are_well_formed_and_disjoint_from_the_table() {
        let dict = dictionary();
        for &(lo, hi, reason) in NOT_FROM_MESSAGES_CREATE {
            assert!(lo <= hi, "bad range {lo}-{hi}");
            assert!(!reason.trim().is_empty(), "range {lo}-{hi} has no reason");
            assert!(
                dict.range(lo..=hi).next().is_some(),
                "range {lo}-{hi} covers no dictionary code"
            );
        }
        for pair in NOT_FROM_MESSAGES_CREATE.windows(2) {
            assert!(pair[0].1 < pair[1].0, "ranges overlap or are unsorted");
        }
        for row in TABLE {
            assert_eq!(
                excluded(row.code),
                None,
                "{} is both in TABLE and excluded",
                row.code
            );
        }
    }

    #[test]
    fn recipient_dependent_codes_never_pause() {
        // 21703 here, not 21704: in the dictionary 21703 is "no sender in the
        // service that can reach this destination", 21704 "the service has no senders".
        for code in [
            21408, 21606, 21608, 21219, 21703, 21211, 21612, 21614, 21610, 21657, 30032, 30034,
        ] {
            assert_eq!(classify(400, Some(code)), Permanent, "{code}");
        }
    }

    #[test]
    fn account_faults_pause() {
        for code in [
            20003, 20005, 20404, 21212, 21704, 21701, 21601, 30002, 63038,
        ] {
            assert_eq!(classify(400, Some(code)), Config, "{code}");
        }
    }

    #[test]
    fn transient_codes_retry() {
        for code in [
            20429, 20500, 20503, 21611, 14107, 30001, 30017, 30022, 30410, 30008,
        ] {
            assert_eq!(classify(400, Some(code)), Transient, "{code}");
        }
    }

    #[test]
    fn unknown_codes_fall_back_to_http_status() {
        assert_eq!(lookup(99999).map(|r| r.code), None);
        assert_eq!(classify(503, Some(99999)), Transient);
        assert_eq!(classify(400, Some(99999)), Permanent);
        assert_eq!(classify(401, None), Config);
        assert_eq!(classify(403, None), Config);
        assert_eq!(classify(404, None), Config);
        assert_eq!(classify(502, None), Transient); // a proxy's HTML 502 has no code
        assert_eq!(classify(429, None), Transient);
        assert_eq!(classify(408, None), Transient);
        assert_eq!(classify(422, None), Permanent);
        assert_eq!(classify(200, None), Transient);
        assert_eq!(classify(302, None), Transient);
        // Codes not in the table, even ones the dictionary knows.
        assert_eq!(classify(400, Some(21265)), Permanent);
        assert_eq!(classify(500, Some(30500)), Transient);
        // The table wins over the status.
        assert_eq!(classify(401, Some(20003)), Config);
        assert_eq!(classify(400, Some(20429)), Transient);
    }

    #[test]
    fn meanings_are_short() {
        for row in TABLE {
            let m = row.meaning;
            assert!(!m.trim().is_empty(), "{} has no meaning", row.code);
            assert!(m.chars().count() <= 60, "{} meaning too long", row.code);
            assert_eq!(m, m.trim(), "{} meaning has stray spaces", row.code);
            assert_eq!(meaning(row.code), Some(m));
        }
        assert_eq!(meaning(99999), None);
    }

    #[test]
    fn class_names_are_stable() {
        assert_eq!(Transient.as_str(), "transient");
        assert_eq!(Permanent.as_str(), "permanent");
        assert_eq!(Config.as_str(), "config");
    }

    #[test]
    fn markdown_table_lists_every_row() {
        let md = markdown_table();
        let rows: Vec<&str> = md
            .lines()
            .filter(|l| l.starts_with("| ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit()))
            .collect();
        assert_eq!(rows.len(), TABLE.len());
        for (line, row) in rows.iter().zip(TABLE) {
            assert_eq!(
                *line,
                format!(
                    "| {} | {} | {} |",
                    row.code,
                    row.class.as_str(),
                    row.meaning
                )
            );
        }
        assert!(md.starts_with("| code | class | meaning |\n"));
        assert!(md.contains("classified by HTTP status"));
    }
}

#[cfg(test)]
mod readme {
    #[test]
    fn the_readme_shows_the_table_as_it_is() {
        let readme = include_str!("../../docs/classification.md");
        assert!(
            readme.contains(&super::markdown_table()),
            "docs/classification.md's table differs from classify::markdown_table(); regenerate it"
        );
    }
}
