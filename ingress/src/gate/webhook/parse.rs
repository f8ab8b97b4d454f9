//! Parsers for the signature headers and signed fields providers send.
//!
//! Everything here reads untrusted input: nothing panics, every failure is a typed
//! [`ParseError`]. The fuzz target `signature_headers` (`fuzz/`) drives these functions
//! with arbitrary bytes.

use base64::Engine as _;

/// What was wrong with a signature header, timestamp or form body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The header is empty.
    #[error("the header is empty")]
    Empty,
    /// An element has no `=` (or `,` for versioned lists) between its name and value.
    #[error("element {0} has no separator between its name and its value")]
    NoSeparator(usize),
    /// The element that carries the timestamp (`t=`, `ts=`) is absent.
    #[error("the header has no `{0}=` timestamp element")]
    NoTimestamp(&'static str),
    /// The timestamp element appears more than once.
    #[error("the header has more than one `{0}=` timestamp element")]
    RepeatedTimestamp(&'static str),
    /// No element carries a signature of the expected version.
    #[error("the header has no `{0}` signature")]
    NoSignature(&'static str),
    /// The header holds more elements than any provider sends.
    #[error("the header has more than {0} elements")]
    TooManyElements(usize),
    /// A timestamp is not a plain decimal number of seconds (or milliseconds).
    #[error("the timestamp is not a decimal number of seconds")]
    TimestampNotDecimal,
    /// An RFC 3339 timestamp could not be parsed.
    #[error("the timestamp is not an RFC 3339 date-time")]
    TimestampNotRfc3339,
    /// A signature is not valid hexadecimal.
    #[error("the signature is not hexadecimal")]
    NotHex,
    /// A signature is not valid base64.
    #[error("the signature is not base64")]
    NotBase64,
    /// A form body or query string has a bad `%` escape.
    #[error("the form data has an invalid percent escape at byte {0}")]
    BadPercentEscape(usize),
    /// A decoded form name or value is not UTF-8.
    #[error("the form data is not UTF-8 after decoding")]
    NotUtf8,
}

/// At most this many elements are read from one signature header: real providers send a
/// handful (a few during secret rotation).
pub const MAX_HEADER_ELEMENTS: usize = 32;

/// A timestamped signature header such as Stripe's `t=1492774577,v1=5257a8...,v0=...` or
/// Paddle's `ts=1671552777;h1=eb4d0d...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StampedSignatures<'a> {
    /// The timestamp text (not yet checked to be a number).
    pub timestamp: &'a str,
    /// Every signature with the expected scheme, in header order (several during rotation).
    pub signatures: Vec<&'a str>,
}

/// Parses a header of `name=value` pairs separated by `pair_separator`, taking the
/// timestamp from `timestamp_key` and every signature under `signature_key`; other keys
/// (Stripe's `v0`, future schemes) are ignored.
///
/// Stripe: `parse_stamped(h, ',', "t", "v1")`; Paddle: `parse_stamped(h, ';', "ts", "h1")`.
pub fn parse_stamped<'a>(
    header: &'a str,
    pair_separator: char,
    timestamp_key: &'static str,
    signature_key: &'static str,
) -> Result<StampedSignatures<'a>, ParseError> {
    if header.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for (index, element) in header.split(pair_separator).enumerate() {
        if index >= MAX_HEADER_ELEMENTS {
            return Err(ParseError::TooManyElements(MAX_HEADER_ELEMENTS));
        }
        let element = element.trim();
        if element.is_empty() {
            continue;
        }
        let (key, value) = element
            .split_once('=')
            .ok_or(ParseError::NoSeparator(index))?;
        let (key, value) = (key.trim(), value.trim());
        if key == timestamp_key {
            if timestamp.replace(value).is_some() {
                return Err(ParseError::RepeatedTimestamp(timestamp_key));
            }
        } else if key == signature_key {
            signatures.push(value);
        }
    }
    let timestamp = timestamp.ok_or(ParseError::NoTimestamp(timestamp_key))?;
    if signatures.is_empty() {
        return Err(ParseError::NoSignature(signature_key));
    }
    Ok(StampedSignatures {
        timestamp,
        signatures,
    })
}

/// Parses a Standard Webhooks (Svix) signature list: space-separated `version,signature`
/// entries such as `v1,g0hM9SsE... v1a,hnO3f9T8...`, returning the signatures whose version
/// is `version`. Entries of other versions are ignored; an entry without a comma is an
/// error.
pub fn parse_versioned_list<'a>(
    header: &'a str,
    version: &'static str,
) -> Result<Vec<&'a str>, ParseError> {
    if header.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let mut signatures = Vec::new();
    for (index, entry) in header.split_ascii_whitespace().enumerate() {
        if index >= MAX_HEADER_ELEMENTS {
            return Err(ParseError::TooManyElements(MAX_HEADER_ELEMENTS));
        }
        let (entry_version, signature) = entry
            .split_once(',')
            .ok_or(ParseError::NoSeparator(index))?;
        if entry_version == version {
            signatures.push(signature);
        }
    }
    if signatures.is_empty() {
        return Err(ParseError::NoSignature(version));
    }
    Ok(signatures)
}

/// Parses a list of prefixed signatures separated by commas, such as PagerDuty's
/// `v1=abc...,v1=def...`, returning the values with `prefix` (other prefixes ignored).
pub fn parse_prefixed_list<'a>(
    header: &'a str,
    prefix: &'static str,
) -> Result<Vec<&'a str>, ParseError> {
    if header.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let mut signatures = Vec::new();
    for (index, element) in header.split(',').enumerate() {
        if index >= MAX_HEADER_ELEMENTS {
            return Err(ParseError::TooManyElements(MAX_HEADER_ELEMENTS));
        }
        if let Some(signature) = element.trim().strip_prefix(prefix) {
            signatures.push(signature);
        }
    }
    if signatures.is_empty() {
        return Err(ParseError::NoSignature(prefix));
    }
    Ok(signatures)
}

/// Parses a decimal count of seconds (or milliseconds) since the Unix epoch. Only ASCII
/// digits are accepted (no sign, no spaces, at most 16 digits).
pub fn parse_unix(text: &str) -> Result<u64, ParseError> {
    if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::TimestampNotDecimal);
    }
    text.parse().map_err(|_| ParseError::TimestampNotDecimal)
}

/// Parses an RFC 3339 date-time (Twitch's `2023-07-19T10:11:12.123456789Z`) into Unix
/// seconds. Times before the epoch are refused.
pub fn parse_rfc3339(text: &str) -> Result<u64, ParseError> {
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| ParseError::TimestampNotRfc3339)?;
    u64::try_from(parsed.unix_timestamp()).map_err(|_| ParseError::TimestampNotRfc3339)
}

/// Decodes a hexadecimal signature (either case).
pub fn decode_hex(text: &str) -> Result<Vec<u8>, ParseError> {
    // Into a buffer of the right size at once: `hex::decode` collects through an iterator
    // of results, which cost more than the decoding itself.
    if !text.len().is_multiple_of(2) {
        return Err(ParseError::NotHex);
    }
    let mut bytes = vec![0; text.len() / 2];
    hex::decode_to_slice(text, &mut bytes).map_err(|_| ParseError::NotHex)?;
    Ok(bytes)
}

/// Decodes hex text into the front of `buffer` and returns the decoded bytes: the
/// allocation-free form of [`decode_hex`], for text of at most twice `buffer`'s length
/// (longer text is [`ParseError::NotHex`] here; use [`decode_hex`] for it).
pub fn decode_hex_into<'b>(text: &str, buffer: &'b mut [u8]) -> Result<&'b [u8], ParseError> {
    if !text.len().is_multiple_of(2) {
        return Err(ParseError::NotHex);
    }
    let out = buffer.get_mut(..text.len() / 2).ok_or(ParseError::NotHex)?;
    hex::decode_to_slice(text, &mut *out).map_err(|_| ParseError::NotHex)?;
    Ok(out)
}

/// Decodes a standard-alphabet, padded base64 signature.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, ParseError> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| ParseError::NotBase64)
}

/// Decodes an `application/x-www-form-urlencoded` body or a URL query string into
/// name/value pairs, in order (`+` is a space, `%XX` a byte). Empty segments are skipped;
/// a segment without `=` is a name with an empty value.
pub fn parse_form(data: &[u8]) -> Result<Vec<(String, String)>, ParseError> {
    let mut pairs = Vec::new();
    let mut offset = 0;
    for segment in data.split(|b| *b == b'&') {
        let start = offset;
        offset += segment.len() + 1;
        if segment.is_empty() {
            continue;
        }
        let (name, value) = match segment.iter().position(|b| *b == b'=') {
            Some(at) => (
                segment.get(..at).unwrap_or_default(),
                segment.get(at + 1..).unwrap_or_default(),
            ),
            None => (segment, &b""[..]),
        };
        let name_start = start;
        let value_start = start + name.len() + 1;
        pairs.push((
            percent_decode(name, name_start)?,
            percent_decode(value, value_start)?,
        ));
    }
    Ok(pairs)
}

/// The query string of a URL (the part after `?`, before any `#`), or `""`.
pub fn url_query(url: &str) -> &str {
    let without_fragment = url.split_once('#').map_or(url, |(before, _)| before);
    without_fragment
        .split_once('?')
        .map_or("", |(_, query)| query)
}

fn percent_decode(raw: &[u8], base: usize) -> Result<String, ParseError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut index = 0;
    while let Some(&byte) = raw.get(index) {
        match byte {
            b'+' => out.push(b' '),
            b'%' => {
                let high = raw.get(index + 1).and_then(|b| hex_value(*b));
                let low = raw.get(index + 2).and_then(|b| hex_value(*b));
                match (high, low) {
                    (Some(high), Some(low)) => out.push(high << 4 | low),
                    _ => return Err(ParseError::BadPercentEscape(base + index)),
                }
                index += 2;
            }
            other => out.push(other),
        }
        index += 1;
    }
    String::from_utf8(out).map_err(|_| ParseError::NotUtf8)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_decodes_onto_the_stack_as_onto_the_heap() {
        let mut buffer = [0u8; 4];
        assert_eq!(decode_hex_into("0aFf", &mut buffer), Ok(&[0x0a, 0xff][..]));
        assert_eq!(decode_hex("0aFf"), Ok(vec![0x0a, 0xff]));
        assert_eq!(decode_hex_into("", &mut buffer), Ok(&[][..]));
        for bad in ["0", "0g", "zz"] {
            assert_eq!(
                decode_hex_into(bad, &mut buffer),
                Err(ParseError::NotHex),
                "{bad}"
            );
            assert_eq!(decode_hex(bad), Err(ParseError::NotHex), "{bad}");
        }
        // Longer than the buffer holds: refused here, for the heap form to take.
        assert_eq!(
            decode_hex_into("0011223344", &mut buffer),
            Err(ParseError::NotHex)
        );
        assert_eq!(decode_hex("0011223344").map(|v| v.len()), Ok(5));
    }

    #[test]
    fn stripe_header_with_rotation_and_v0() {
        let parsed = parse_stamped("t=1492774577,v1=aa,v0=zz,v1=bb", ',', "t", "v1").unwrap();
        assert_eq!(parsed.timestamp, "1492774577");
        assert_eq!(parsed.signatures, vec!["aa", "bb"]);
    }

    #[test]
    fn stamped_header_errors_name_the_problem() {
        assert_eq!(parse_stamped("", ',', "t", "v1"), Err(ParseError::Empty));
        assert_eq!(
            parse_stamped("v1=aa", ',', "t", "v1"),
            Err(ParseError::NoTimestamp("t"))
        );
        assert_eq!(
            parse_stamped("t=1,v0=aa", ',', "t", "v1"),
            Err(ParseError::NoSignature("v1"))
        );
        assert_eq!(
            parse_stamped("t=1,t=2,v1=a", ',', "t", "v1"),
            Err(ParseError::RepeatedTimestamp("t"))
        );
        assert_eq!(
            parse_stamped("t=1;v1", ';', "t", "v1"),
            Err(ParseError::NoSeparator(1))
        );
        let many = "v1=a,".repeat(40);
        assert_eq!(
            parse_stamped(&many, ',', "t", "v1"),
            Err(ParseError::TooManyElements(32))
        );
    }

    #[test]
    fn versioned_list_keeps_the_asked_version() {
        let list = parse_versioned_list("v1,abc= v1a,def v2,ghi  v1,jkl", "v1").unwrap();
        assert_eq!(list, vec!["abc=", "jkl"]);
        assert_eq!(
            parse_versioned_list("v1a,def", "v1"),
            Err(ParseError::NoSignature("v1"))
        );
        assert_eq!(
            parse_versioned_list("v1abc", "v1"),
            Err(ParseError::NoSeparator(0))
        );
    }

    #[test]
    fn prefixed_list_and_numbers() {
        assert_eq!(
            parse_prefixed_list("v1=aa, v1=bb,v2=cc", "v1=").unwrap(),
            vec!["aa", "bb"]
        );
        assert_eq!(parse_unix("1614265330"), Ok(1_614_265_330));
        assert_eq!(parse_unix("-1"), Err(ParseError::TimestampNotDecimal));
        assert_eq!(parse_unix(" 1"), Err(ParseError::TimestampNotDecimal));
        assert_eq!(
            parse_rfc3339("2023-07-19T10:11:12.123456789Z"),
            Ok(1_689_761_472)
        );
    }

    #[test]
    fn form_decoding() {
        let pairs = parse_form(b"To=%2B18005551212&Body=hello+world&&flag&e=").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("To".into(), "+18005551212".into()),
                ("Body".into(), "hello world".into()),
                ("flag".into(), String::new()),
                ("e".into(), String::new()),
            ]
        );
        assert_eq!(
            parse_form(b"a=1&b=%4"),
            Err(ParseError::BadPercentEscape(6))
        );
        assert_eq!(parse_form(b"a=%ff"), Err(ParseError::NotUtf8));
        assert_eq!(url_query("https://h/p?a=1&b=2#frag"), "a=1&b=2");
        assert_eq!(url_query("https://h/p"), "");
    }
}
