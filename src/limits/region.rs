//! The ISO 3166 region of a phone number, from libphonenumber's metadata.

use crate::phone::PhoneNumber;

use phonenumber::metadata::DATABASE;

/// The region (`US`, `JP`, `JM`, …) of `number`, or `None` when the
/// metadata knows no region for it. A calling code that belongs to one
/// region alone (`+81`: JP) answers from the metadata's index; a shared one
/// (`+1`, `+44`, `+7`) takes libphonenumber's full parse, which matches the
/// national number against each region's patterns (a few microseconds, the
/// worker's largest cost per job before this shortcut).
pub(crate) fn region_of(number: &PhoneNumber) -> Option<String> {
    let digits = number
        .as_e164()
        .strip_prefix('+')
        .unwrap_or(number.as_e164());
    // Calling codes are prefix-free and one to three digits long.
    for len in 1..=3 {
        let Some(code) = digits.get(..len).and_then(|c| c.parse::<u16>().ok()) else {
            break;
        };
        if let Some(regions) = DATABASE.region(&code) {
            if let [only] = regions.as_slice()
                && only.len() == 2
                && only.bytes().all(|b| b.is_ascii_uppercase())
            {
                return Some((*only).to_owned());
            }
            break;
        }
    }
    let parsed = phonenumber::parse(None, number.as_e164()).ok()?;
    parsed.country().id().map(|id| id.as_ref().to_owned())
}

/// Loads libphonenumber's metadata now (about 100 ms of CPU), so that the
/// first job does not pay for it.
pub(crate) fn load_metadata() {
    let _ = DATABASE.region(&1u16);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(e164: &str) -> Option<String> {
        region_of(&PhoneNumber::parse(e164).unwrap())
    }

    #[test]
    fn plus_one_is_not_one_country() {
        assert_eq!(region("+14155550100").as_deref(), Some("US"));
        assert_eq!(region("+16135550100").as_deref(), Some("CA"));
        // Jamaica, a common pumping destination, shares +1.
        assert_eq!(region("+18765550100").as_deref(), Some("JM"));
        assert_eq!(region("+819012345678").as_deref(), Some("JP"));
        assert_eq!(region("+442079460000").as_deref(), Some("GB"));
    }

    #[test]
    fn the_shortcut_agrees_with_the_full_parse() {
        for e164 in [
            "+819012345678",
            "+33612345678",
            "+4915112345678",
            "+8613812345678",
            "+5511912345678",
            "+27821234567",
            "+9779812345678",
            "+35312345678",
            "+79123456789",
            "+77012345678",
            "+447911123456",
            "+441481123456",
            "+12125550100",
            "+18095550100",
        ] {
            let number = PhoneNumber::parse(e164).unwrap();
            let full = phonenumber::parse(None, e164)
                .ok()
                .and_then(|p| p.country().id().map(|id| id.as_ref().to_owned()));
            assert_eq!(region_of(&number), full, "{e164}");
        }
    }
}
