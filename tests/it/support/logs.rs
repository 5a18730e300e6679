//! What no log line may contain: every code, number and secret a test used,
//! and the scan every captured log goes through.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use fake_twilio::{TEST_API_SECRET, TEST_AUTH_TOKEN};
use serde_json::Value;

/// Every code and number a test job used, and every secret a test used
/// (Twilio's test auth token and API secret from the start, ingest tokens
/// and the like as tests hand them over): no log line may contain them.
fn forbidden() -> &'static Mutex<HashSet<String>> {
    static FORBIDDEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    FORBIDDEN.get_or_init(|| {
        let mut set = HashSet::new();
        set.insert(TEST_AUTH_TOKEN.to_owned());
        set.insert(TEST_API_SECRET.to_owned());
        Mutex::new(set)
    })
}

pub(super) fn forbid(value: &str) {
    forbidden().lock().unwrap().insert(value.to_owned());
}

/// A fresh six-digit code, remembered as forbidden in logs.
pub(crate) fn code() -> String {
    loop {
        let c = format!("{:06}", fastrand::u32(100_000..1_000_000));
        if !forbidden().lock().unwrap().contains(&c) {
            forbid(&c);
            return c;
        }
    }
}

/// Scans log lines (every one: a line that was not UTF-8 comes lossily, see
/// `read_lines`): JSON when `json`, and no code, secret or unmasked number.
/// Returns the problems found.
pub(crate) fn scan_logs(lines: &[String], json_lines: bool) -> Vec<String> {
    let forbidden = forbidden().lock().unwrap().clone();
    let mut problems = Vec::new();
    for line in lines {
        if json_lines && serde_json::from_str::<Value>(line).is_err() {
            problems.push(format!("not JSON: {line}"));
        }
        for secret in &forbidden {
            if contains_token(line, secret) {
                problems.push(format!("contains a code, secret or number: {line}"));
            }
        }
        if has_unmasked_number(line) {
            problems.push(format!("contains an unmasked phone number: {line}"));
        }
    }
    problems
}

/// Whether `needle` occurs in `line` as a token of its own, not glued to
/// letters, digits or a decimal point: a code's six digits occur by chance
/// inside a UUID, a timestamp's fraction or a longer number, and that is not
/// the code. (A leak looks like `is 123456`, `"123456"`, `=123456&`.)
fn contains_token(line: &str, needle: &str) -> bool {
    let numeric = needle.bytes().all(|b| b.is_ascii_digit());
    line.match_indices(needle).any(|(i, _)| {
        if !numeric {
            return true;
        }
        let before = line[..i].bytes().next_back();
        let after = line[i + needle.len()..].bytes().next();
        !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'.')
            && !after.is_some_and(|b| b.is_ascii_alphanumeric())
    })
}

/// `+` followed by seven or more digits: an E.164 number that was not masked.
fn has_unmasked_number(line: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.iter().enumerate().any(|(i, b)| {
        *b == b'+'
            && bytes[i + 1..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count()
                >= 7
    })
}
