//! Phone numbers: parsed once into E.164, masked whenever a human or a log sees one.
//!
//! A [`PhoneNumber`] can only be built by [`PhoneNumber::parse`], so an invalid
//! number never travels past the decoder. Its `Debug` and `Display` print the
//! masked form (`+81********78`: country code and last two digits), so a number
//! cannot reach a log line by accident; [`PhoneNumber::as_e164`] is the one way
//! to the full number, and only the Twilio client calls it.

use std::fmt;

/// A phone number in E.164 form: `+`, a non-zero digit, then 6 to 14 digits.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct PhoneNumber(String);

/// Why a string is not an E.164 number. The text never repeats the number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PhoneError {
    #[error("is empty")]
    Empty,
    #[error("must be an E.164 number: '+', a country code and 7 to 15 digits in all")]
    NotE164,
}

impl PhoneNumber {
    /// Parses `raw` as Logto's Twilio connector does: surrounding white space is
    /// dropped and a missing leading `+` is added; then it must be E.164
    /// (`+[1-9][0-9]{6,14}`). Spaces, dashes and brackets inside are refused
    /// rather than guessed at.
    pub(crate) fn parse(raw: &str) -> Result<PhoneNumber, PhoneError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(PhoneError::Empty);
        }
        let digits = raw.strip_prefix('+').unwrap_or(raw);
        let valid = (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if !valid {
            return Err(PhoneError::NotE164);
        }
        Ok(PhoneNumber(format!("+{digits}")))
    }

    /// The full number, for the Twilio request and nothing else.
    pub(crate) fn as_e164(&self) -> &str {
        &self.0
    }

    /// The number as logs and operators see it: `+`, the country code, a star
    /// for every hidden digit, and the last two digits.
    pub(crate) fn masked(&self) -> String {
        mask_digits(&self.0[1..])
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.masked())
    }
}

/// Masks a run of digits that is (or may be) an international number without
/// its `+`: the country code and the last two digits stay.
fn mask_digits(digits: &str) -> String {
    let cc = country_code_len(digits).min(digits.len().saturating_sub(2));
    let hidden = digits.len().saturating_sub(cc + 2);
    let mut out = String::with_capacity(digits.len() + 1);
    out.push('+');
    out.push_str(&digits[..cc]);
    out.extend(std::iter::repeat_n('*', hidden));
    out.push_str(&digits[cc + hidden..]);
    out
}

/// The length of the ITU country calling code at the start of `digits`:
/// 1 and 7 are one digit, the codes listed here two, every other code three.
fn country_code_len(digits: &str) -> usize {
    const TWO_DIGIT: &[&str] = &[
        "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46",
        "47", "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63",
        "64", "65", "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
    ];
    match digits.as_bytes().first() {
        Some(b'1' | b'7') => 1,
        _ if digits.len() >= 2 && TWO_DIGIT.contains(&&digits[..2]) => 2,
        _ => 3,
    }
}

/// Masks every phone-number-like run (7 to 15 digits, with or without a
/// leading `+`) in free text such as a Twilio error message, which may quote
/// the recipient ("The 'To' number +15005550001 is not a valid phone number").
/// Shorter runs (error codes, counts) are left alone.
pub(crate) fn mask_numbers_in(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let plus = bytes[i] == b'+';
        let digits_from = if plus { i + 1 } else { i };
        let mut end = digits_from;
        while end < bytes.len() && bytes[end].is_ascii_digit() {
            end += 1;
        }
        let run = end - digits_from;
        let at_word_start = start == 0 || !bytes[start - 1].is_ascii_digit();
        if at_word_start && (7..=15).contains(&run) {
            out.push_str(&mask_digits(&text[digits_from..end]));
            i = end;
        } else if run > 0 {
            out.push_str(&text[start..end]);
            i = end;
        } else {
            // Copy one whole UTF-8 character.
            let ch_len = text[start..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&text[start..start + ch_len]);
            i = start + ch_len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_e164_and_adds_a_missing_plus() {
        assert_eq!(
            PhoneNumber::parse("+819012345678").unwrap().as_e164(),
            "+819012345678"
        );
        assert_eq!(
            PhoneNumber::parse(" 15005550006 ").unwrap().as_e164(),
            "+15005550006"
        );
    }

    #[test]
    fn refuses_what_is_not_e164() {
        for bad in [
            "",
            "+",
            "+0123456789",
            "+12345",
            "+1234567890123456",
            "+1 500 555 0006",
            "+1-500-555-0006",
            "tel:+15005550006",
            "++15005550006",
        ] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn masks_to_country_code_and_last_two_digits() {
        let cases = [
            ("+819012345678", "+81********78"),
            ("+15005550006", "+1********06"),
            ("+447700900123", "+44********23"),
            ("+35312345678", "+353******78"),
            ("+79161234567", "+7********67"),
        ];
        for (number, masked) in cases {
            let phone = PhoneNumber::parse(number).unwrap();
            assert_eq!(phone.masked(), masked);
            assert_eq!(phone.to_string(), masked);
            assert_eq!(format!("{phone:?}"), format!("PhoneNumber({masked})"));
        }
    }

    #[test]
    fn masks_numbers_inside_free_text() {
        assert_eq!(
            mask_numbers_in("The 'To' number +15005550001 is not a valid phone number."),
            "The 'To' number +1********01 is not a valid phone number."
        );
        assert_eq!(
            mask_numbers_in("to 819012345678, code 21211 (HTTP 400)"),
            "to +81********78, code 21211 (HTTP 400)"
        );
        assert_eq!(mask_numbers_in("Ünïcode ok 123"), "Ünïcode ok 123");
    }
}
