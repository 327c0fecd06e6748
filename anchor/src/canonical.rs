//! RFC 8785, the JSON Canonicalization Scheme (JCS), and the content hash built on it.
//!
//! The canonical form of a JSON value (RFC 8785 section 3.2):
//!
//! - no whitespace;
//! - `null`, `true`, `false` as themselves;
//! - strings with the shortest escaping: `\"`, `\\`, `\b`, `\t`, `\n`, `\f`, `\r`, other
//!   controls below U+0020 as `\u00xx` (lowercase hex), every other character as its UTF-8
//!   bytes, without Unicode normalization (section 3.2.2.2);
//! - numbers read as IEEE 754 doubles and written as ECMAScript's `Number.prototype.toString`
//!   writes them (`4.50` is `4.5`, `1E30` is `1e+30`, `-0` is `0`; section 3.2.2.3);
//! - object members sorted by their names compared as arrays of UTF-16 code units, which
//!   differs from UTF-8 byte order for characters beyond U+FFFF (section 3.2.3);
//! - array elements in their order.
//!
//! Why not `json_syntax`'s own `canonicalize`: it sorts member names by their UTF-8 bytes
//! (wrong for `"\u{1F600}"` against `"\u{FB33}"`, the RFC's own example), reads number
//! literals with a lossy float parser (off by one unit in the last place on some inputs),
//! keeps duplicate member names, and writes a number too large for a double as an
//! unspecified value. This module parses number literals with Rust's correctly rounded
//! `f64` parser and formats them with `ryu-js` (Ryū with ECMAScript's layout rules); the
//! crate's tests check RFC 8785's own vectors and compare the number formatting with an
//! independent implementation over random doubles.
//!
//! A consequence of the scheme worth knowing: numbers keep only double precision, so two
//! decimal literals that round to the same double (`0.1000000000000000000001` and `0.1`)
//! have the same canonical form and the same content hash.

use json_syntax::Value;
use sha2::{Digest as _, Sha256};

use crate::ContentHash;
use crate::error::CanonicalError;

/// The RFC 8785 canonical JSON of `value`, as UTF-8 bytes.
///
/// Fails when the value is outside I-JSON: a repeated member name in an object, or a number
/// beyond the range of a double.
pub fn canonical_json(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write_canonical_json(value, &mut out)?;
    Ok(out)
}

/// Appends the RFC 8785 canonical JSON of `value` to `out`.
///
/// On error, `out` holds a partial document that should be thrown away.
pub fn write_canonical_json(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    Writer {
        out,
        numbers: ryu_js::Buffer::new(),
    }
    .value(value)
}

/// `SHA-256` of the RFC 8785 canonical JSON of `value`: the content hash of a resource
/// version (PRODUCT.md, "The log format").
pub fn content_hash(value: &Value) -> Result<ContentHash, CanonicalError> {
    Ok(ContentHash::of_canonical_json(&canonical_json(value)?))
}

impl ContentHash {
    /// `SHA-256` of bytes that are already canonical JSON.
    pub fn of_canonical_json(canonical: &[u8]) -> Self {
        Self::from_bytes(Sha256::digest(canonical).into())
    }
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
    numbers: ryu_js::Buffer,
}

impl Writer<'_> {
    fn value(&mut self, value: &Value) -> Result<(), CanonicalError> {
        match value {
            Value::Null => self.out.extend_from_slice(b"null"),
            Value::Boolean(true) => self.out.extend_from_slice(b"true"),
            Value::Boolean(false) => self.out.extend_from_slice(b"false"),
            Value::Number(number) => self.number(number.as_str())?,
            Value::String(string) => self.string(string.as_str()),
            Value::Array(items) => {
                self.out.push(b'[');
                for (position, item) in items.iter().enumerate() {
                    if position > 0 {
                        self.out.push(b',');
                    }
                    self.value(item)?;
                }
                self.out.push(b']');
            }
            Value::Object(object) => {
                let mut members: Vec<(&str, &Value)> = object
                    .iter()
                    .map(|entry| (entry.key.as_str(), &entry.value))
                    .collect();
                members.sort_by(|(a, _), (b, _)| compare_utf16(a, b));
                if let Some(pair) = members.windows(2).find(|pair| pair[0].0 == pair[1].0) {
                    return Err(CanonicalError::DuplicateMemberName {
                        name: pair[0].0.to_owned(),
                    });
                }
                self.out.push(b'{');
                for (position, (name, member)) in members.into_iter().enumerate() {
                    if position > 0 {
                        self.out.push(b',');
                    }
                    self.string(name);
                    self.out.push(b':');
                    self.value(member)?;
                }
                self.out.push(b'}');
            }
        }
        Ok(())
    }

    /// RFC 8785 section 3.2.2.3: the literal's value as a double, written by ECMAScript's
    /// rules. Rust's `f64` parser rounds correctly (to nearest, ties to even), as RFC 8785
    /// requires of a JSON parser.
    fn number(&mut self, literal: &str) -> Result<(), CanonicalError> {
        let double: f64 = literal.parse().map_err(|_| CanonicalError::InvalidNumber)?;
        if !double.is_finite() {
            return Err(CanonicalError::NumberOutOfRange);
        }
        self.out
            .extend_from_slice(self.numbers.format_finite(double).as_bytes());
        Ok(())
    }

    /// RFC 8785 section 3.2.2.2.
    fn string(&mut self, string: &str) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.out.push(b'"');
        let bytes = string.as_bytes();
        let mut plain_from = 0;
        let mut control = *b"\\u0000";
        for (position, &byte) in bytes.iter().enumerate() {
            let escape: &[u8] = match byte {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                0x08 => b"\\b",
                b'\t' => b"\\t",
                b'\n' => b"\\n",
                0x0c => b"\\f",
                b'\r' => b"\\r",
                0x00..=0x1f => {
                    control[4] = HEX[usize::from(byte >> 4)];
                    control[5] = HEX[usize::from(byte & 0x0f)];
                    &control
                }
                _ => continue,
            };
            self.out.extend_from_slice(&bytes[plain_from..position]);
            self.out.extend_from_slice(escape);
            plain_from = position + 1;
        }
        self.out.extend_from_slice(&bytes[plain_from..]);
        self.out.push(b'"');
    }
}

/// Orders two member names as arrays of UTF-16 code units (RFC 8785 section 3.2.3).
///
/// UTF-8 byte order equals code point order, and the two orders differ only where a
/// character beyond U+FFFF (a surrogate pair, code units D800 to DFFF) meets one from
/// U+E000 to U+FFFF; names made of ASCII (nearly all in practice) compare as bytes.
fn compare_utf16(a: &str, b: &str) -> std::cmp::Ordering {
    if a.is_ascii() && b.is_ascii() {
        a.cmp(b)
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use json_syntax::Parse as _;

    fn canonical(text: &str) -> Result<String, CanonicalError> {
        let (value, _) = Value::parse_str(text).expect("test JSON parses");
        canonical_json(&value).map(|bytes| String::from_utf8(bytes).expect("UTF-8"))
    }

    #[test]
    fn literals_and_whitespace() {
        assert_eq!(
            canonical(" [ null , true,\n false ,{ } ,[ ] ] ").as_deref(),
            Ok("[null,true,false,{},[]]")
        );
    }

    #[test]
    fn every_control_character_is_escaped_and_nothing_else() {
        let input: String = (0u32..0x80)
            .chain([0x7f, 0x80, 0x2028, 0x2029, 0xfeff, 0x1f600])
            .filter_map(char::from_u32)
            .collect();
        let value = Value::String(input.as_str().into());
        let out = String::from_utf8(canonical_json(&value).expect("canonical")).expect("UTF-8");
        let mut expected = String::from("\"");
        for c in input.chars() {
            match c {
                '"' => expected.push_str("\\\""),
                '\\' => expected.push_str("\\\\"),
                '\u{8}' => expected.push_str("\\b"),
                '\t' => expected.push_str("\\t"),
                '\n' => expected.push_str("\\n"),
                '\u{c}' => expected.push_str("\\f"),
                '\r' => expected.push_str("\\r"),
                c if u32::from(c) < 0x20 => expected.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => expected.push(c),
            }
        }
        expected.push('"');
        assert_eq!(out, expected);
    }

    #[test]
    fn utf16_order_differs_from_utf8_order() {
        // U+FB33 is EF AC B3 in UTF-8 and FB33 in UTF-16; U+1F600 is F0 9F 98 80 in UTF-8
        // and D83D DE00 in UTF-16: byte order puts U+FB33 first, RFC 8785 the emoji.
        assert_eq!(
            canonical("{\"\u{fb33}\":1,\"\u{1f600}\":2}").as_deref(),
            Ok("{\"\u{1f600}\":2,\"\u{fb33}\":1}")
        );
        assert_eq!(
            canonical("{\"b\":1,\"a\":2,\"\":3}").as_deref(),
            Ok("{\"\":3,\"a\":2,\"b\":1}")
        );
    }

    #[test]
    fn a_repeated_member_name_is_refused() {
        assert_eq!(
            canonical("{\"a\":1,\"b\":{\"x\":1,\"x\":1}}"),
            Err(CanonicalError::DuplicateMemberName { name: "x".into() })
        );
    }

    #[test]
    fn numbers_beyond_a_double_are_refused_and_tiny_ones_are_zero() {
        assert_eq!(canonical("1e400"), Err(CanonicalError::NumberOutOfRange));
        assert_eq!(canonical("-1e400"), Err(CanonicalError::NumberOutOfRange));
        assert_eq!(canonical("[1e-400,-0,-0.0e5]").as_deref(), Ok("[0,0,0]"));
    }

    #[test]
    fn numbers_are_read_with_correct_rounding() {
        // 2^53 + 1 is a tie between 2^53 and 2^53 + 2: round to even, 2^53.
        assert_eq!(
            canonical("9007199254740993").as_deref(),
            Ok("9007199254740992")
        );
        // Just above the tie, so it rounds up.
        assert_eq!(
            canonical("9007199254740993.0000000001").as_deref(),
            Ok("9007199254740994")
        );
        assert_eq!(
            canonical("[1.50,100,1E2,0.1e1]").as_deref(),
            Ok("[1.5,100,100,1]")
        );
    }

    #[test]
    fn the_content_hash_ignores_formatting() {
        let (a, _) = Value::parse_str(
            "{\"resourceType\":\"Observation\",\"valueQuantity\":{\"value\":1.50}}",
        )
        .expect("parses");
        let (b, _) = Value::parse_str(
            "{ \"valueQuantity\" : { \"value\" : 15e-1 },\n \"resourceType\" : \"Observation\" }",
        )
        .expect("parses");
        assert_eq!(content_hash(&a), content_hash(&b));
        let (c, _) = Value::parse_str(
            "{\"resourceType\":\"Observation\",\"valueQuantity\":{\"value\":1.51}}",
        )
        .expect("parses");
        assert_ne!(content_hash(&a), content_hash(&c));
    }
}
