//! SMS encoding and segment counting: what one message costs.
//!
//! Twilio bills per segment. A body made only of GSM-7 characters fits 160
//! characters in one segment and 153 per segment when split (the rest of each
//! segment holds the concatenation header); the GSM-7 extension characters
//! `^ { } \ [ ~ ] | €` (and form feed) take two septets. Any other character
//! switches the whole message to UCS-2: 70 UTF-16 units in one segment, 67 per
//! segment when split.

use std::fmt;

/// The alphabet a message is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Encoding {
    Gsm7,
    Ucs2,
}

impl Encoding {
    /// The name shown by `check-config` and used as a metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The encoding of a text and what it costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segments {
    pub encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 code units (UCS-2).
    pub units: usize,
    /// Segments Twilio will bill (at least 1).
    pub count: usize,
}

/// The GSM 03.38 basic character set (escape excluded).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The GSM 03.38 extension table: each costs an escape plus itself.
const GSM7_EXTENSION: &str = "^{}\\[~]|€\u{c}";

/// Counts the segments of `text`.
pub(crate) fn segments(text: &str) -> Segments {
    let mut septets = 0usize;
    let mut gsm = true;
    for c in text.chars() {
        if GSM7_BASIC.contains(c) {
            septets += 1;
        } else if GSM7_EXTENSION.contains(c) {
            septets += 2;
        } else {
            gsm = false;
            break;
        }
    }
    let (encoding, units, single, part) = if gsm {
        (Encoding::Gsm7, septets, 160, 153)
    } else {
        (Encoding::Ucs2, text.encode_utf16().count(), 70, 67)
    };
    let count = if units <= single {
        1
    } else {
        units.div_ceil(part)
    };
    Segments {
        encoding,
        units,
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ascii_is_gsm7() {
        let s = segments("Your code is 123456");
        assert_eq!((s.encoding, s.units, s.count), (Encoding::Gsm7, 19, 1));
    }

    #[test]
    fn gsm7_limits_are_160_then_153() {
        assert_eq!(segments(&"a".repeat(160)).count, 1);
        assert_eq!(segments(&"a".repeat(161)).count, 2);
        assert_eq!(segments(&"a".repeat(306)).count, 2);
        assert_eq!(segments(&"a".repeat(307)).count, 3);
    }

    #[test]
    fn extension_characters_count_twice() {
        let s = segments("{code}€");
        assert_eq!((s.encoding, s.units), (Encoding::Gsm7, 10));
        // 80 braces are 160 septets: still one segment; one more is two.
        assert_eq!(segments(&"{".repeat(80)).count, 1);
        assert_eq!(segments(&format!("{}a", "{".repeat(80))).count, 2);
    }

    #[test]
    fn one_non_gsm_character_makes_it_ucs2() {
        let s = segments("認証コードは 123456 です");
        assert_eq!((s.encoding, s.units, s.count), (Encoding::Ucs2, 16, 1));
        assert_eq!(segments(&"é".repeat(70)).encoding, Encoding::Gsm7);
        assert_eq!(segments(&"ć".repeat(70)).count, 1);
        assert_eq!(segments(&"ć".repeat(71)).count, 2);
        assert_eq!(segments(&"ć".repeat(134)).count, 2);
        assert_eq!(segments(&"ć".repeat(135)).count, 3);
    }

    #[test]
    fn emoji_count_as_two_utf16_units() {
        let s = segments("🔐");
        assert_eq!((s.encoding, s.units), (Encoding::Ucs2, 2));
    }

    #[test]
    fn empty_text_is_one_segment() {
        assert_eq!(segments("").count, 1);
    }
}
