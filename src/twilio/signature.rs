//! `X-Twilio-Signature`, exactly as Twilio specifies it: base64 of the
//! HMAC-SHA1, keyed by the account's auth token, of the full URL Twilio
//! requested (query included) followed by every POST parameter's name and
//! value, sorted by name. RustCrypto's `hmac` and `sha1`; the comparison is
//! constant-time (`subtle`).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// The signature Twilio sends for a POST of `params` to `url`, keyed by
/// `token`.
pub(crate) fn sign(token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac =
        Hmac::<Sha1>::new_from_slice(token.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `presented` is the signature of the request under any of
/// `tokens` (the current auth token, and the previous one while it is being
/// rotated).
pub(crate) fn verify(
    tokens: &[SecretString],
    url: &str,
    params: &[(String, String)],
    presented: &str,
) -> bool {
    let mut ok = subtle::Choice::from(0);
    for token in tokens {
        let expected = sign(token.expose_secret(), url, params);
        ok |= expected.as_bytes().ct_eq(presented.as_bytes());
    }
    ok.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(caller: &str) -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", caller),
            ("Digits", "1234"),
            ("From", caller),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    /// The example in Twilio's security documentation (and its SDKs' tests).
    #[test]
    fn twilios_own_test_vector() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            sign("12345", url, &params("+14158675309")),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert_eq!(
            sign("12345", url, &params("+12349013030")),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }

    #[test]
    fn the_previous_token_is_accepted_and_anything_else_refused() {
        let url = "https://sms.example.com/v1/twilio/status?id=job-1";
        let p = params("+14158675309");
        let old = sign("old-token", url, &p);
        let tokens = [
            SecretString::from("new-token"),
            SecretString::from("old-token"),
        ];
        assert!(verify(&tokens, url, &p, &old));
        assert!(!verify(&tokens[..1], url, &p, &old));
        assert!(!verify(
            &tokens,
            "https://evil.example/v1/twilio/status?id=job-1",
            &p,
            &old
        ));
        assert!(!verify(&tokens, url, &p, ""));
    }
}
