//! The ISO 3166 region of a phone number, from libphonenumber's metadata.

use crate::phone::PhoneNumber;

/// The region (`US`, `JP`, `JM`, …) of `number`, or `None` when the
/// metadata knows no region for it.
pub(crate) fn region_of(number: &PhoneNumber) -> Option<String> {
    let parsed = phonenumber::parse(None, number.as_e164()).ok()?;
    parsed.country().id().map(|id| id.as_ref().to_owned())
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
}
