//! 32-byte values: the three kinds of SHA-256 hash in the log, and their text forms.
//!
//! Each kind has its own type so that a content hash can never be passed where a leaf hash
//! is expected. Text forms: lowercase hexadecimal (`Display`, `FromStr`, [`to_hex`]) and
//! standard padded base64 (what FHIR's `base64Binary` holds).
//!
//! [`to_hex`]: ContentHash::to_hex

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::error::DecodeError;

pub(crate) fn decode_hex(text: &str) -> Result<[u8; 32], DecodeError> {
    let bytes = hex::decode(text).map_err(|_| DecodeError::InvalidHex)?;
    exactly_32(&bytes)
}

pub(crate) fn decode_base64(text: &str) -> Result<[u8; 32], DecodeError> {
    let bytes = BASE64
        .decode(text)
        .map_err(|_| DecodeError::InvalidBase64)?;
    exactly_32(&bytes)
}

pub(crate) fn encode_base64(bytes: &[u8; 32]) -> String {
    BASE64.encode(bytes)
}

fn exactly_32(bytes: &[u8]) -> Result<[u8; 32], DecodeError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| DecodeError::WrongLength {
        actual: bytes.len(),
    })
}

/// The constructors and text codecs of a 32-byte newtype (`struct $name([u8; 32])`): the
/// hash types below and `Salt`.
macro_rules! bytes32_codecs {
    ($name:ident) => {
        impl $name {
            /// Wraps 32 bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The 32 bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Reads 64 hexadecimal digits (either case).
            pub fn from_hex(text: &str) -> Result<Self, $crate::error::DecodeError> {
                $crate::bytes::decode_hex(text).map(Self)
            }

            /// 64 lowercase hexadecimal digits.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Reads standard padded base64 (RFC 4648 section 4).
            pub fn from_base64(text: &str) -> Result<Self, $crate::error::DecodeError> {
                $crate::bytes::decode_base64(text).map(Self)
            }

            /// Standard padded base64 (RFC 4648 section 4), as FHIR's `base64Binary` holds it.
            pub fn to_base64(&self) -> String {
                $crate::bytes::encode_base64(&self.0)
            }
        }
    };
}
pub(crate) use bytes32_codecs;

/// Defines a public 32-byte hash type with its codecs.
macro_rules! hash_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        $crate::bytes::bytes32_codecs!($name);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }

        impl std::str::FromStr for $name {
            type Err = DecodeError;

            fn from_str(text: &str) -> Result<Self, DecodeError> {
                Self::from_hex(text)
            }
        }

        impl From<[u8; 32]> for $name {
            fn from(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
    };
}

hash_type! {
    /// `SHA-256` of the RFC 8785 canonical JSON of a resource version.
    ContentHash
}

hash_type! {
    /// A leaf of an RFC 9162 tree: `SHA-256(0x00 || leaf_input)`.
    LeafHash
}

hash_type! {
    /// A node of an RFC 9162 tree: an element of an inclusion path, or a root.
    ///
    /// Inner nodes are `SHA-256(0x01 || left || right)`; a path element or the root can
    /// also be a leaf hash (the sibling of a leaf, or the root of a one-leaf tree), which
    /// `From<LeafHash>` expresses.
    NodeHash
}

impl From<LeafHash> for NodeHash {
    fn from(leaf: LeafHash) -> Self {
        Self(leaf.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base64_round_trip() {
        let hash = ContentHash::from_bytes(std::array::from_fn(|i| i as u8 * 7));
        assert_eq!(ContentHash::from_hex(&hash.to_hex()), Ok(hash));
        assert_eq!(hash.to_string().parse::<ContentHash>(), Ok(hash));
        assert_eq!(ContentHash::from_base64(&hash.to_base64()), Ok(hash));
        assert_eq!(
            ContentHash::from_hex(&hash.to_hex().to_uppercase()),
            Ok(hash),
            "upper case hex is read too"
        );
    }

    #[test]
    fn bad_text_is_refused_without_echoing_it() {
        let cases = [
            ("zz", DecodeError::InvalidHex),
            ("abc", DecodeError::InvalidHex),
            ("abcd", DecodeError::WrongLength { actual: 2 }),
            (&"00".repeat(33), DecodeError::WrongLength { actual: 33 }),
        ];
        for (text, expected) in cases {
            assert_eq!(LeafHash::from_hex(text), Err(expected.clone()), "{text}");
            assert!(!expected.to_string().contains(text));
        }
        assert_eq!(
            NodeHash::from_base64("not base64!"),
            Err(DecodeError::InvalidBase64)
        );
        assert_eq!(
            NodeHash::from_base64("AAAA"),
            Err(DecodeError::WrongLength { actual: 3 })
        );
    }

    #[test]
    fn debug_names_the_kind() {
        let hash = LeafHash::from_bytes([0xab; 32]);
        assert_eq!(
            format!("{hash:?}"),
            format!("LeafHash({})", "ab".repeat(32))
        );
    }
}
