//! The salted leaf: `leaf_input = salt || content_hash`, `leaf_hash = SHA-256(0x00 || leaf_input)`.
//!
//! The salt keeps a leaf hash from revealing anything: without it, anyone holding a guess of
//! a resource could confirm the guess against a public leaf. Deleting the salt (with the
//! content) makes the leaf unverifiable forever while the tree and every other proof stay
//! intact: that is crypto-shredding, how the log honours erasure.

use sha2::{Digest as _, Sha256};

use crate::error::RandomError;
use crate::{ContentHash, LeafHash};

/// The RFC 9162 domain separation prefix of a leaf hash.
pub const LEAF_PREFIX: u8 = 0x00;

/// 32 random bytes that hide a content hash inside its leaf. Kept off chain, deleted on
/// erasure.
///
/// `Debug` does not print the bytes, and there is no `Display`: a salt reaches text only
/// through [`to_hex`](Self::to_hex) or [`to_base64`](Self::to_base64), on purpose.
#[derive(Clone, PartialEq, Eq)]
pub struct Salt([u8; 32]);

impl Salt {
    /// Draws a fresh salt from the operating system's cryptographically secure random
    /// number generator (`getrandom`).
    pub fn generate() -> Result<Self, RandomError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(RandomError)?;
        Ok(Self(bytes))
    }
}

crate::bytes::bytes32_codecs!(Salt);

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salt(<redacted>)")
    }
}

/// One entry of the log: a resource version's content hash and its salt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// The salt, drawn once when the version is written.
    pub salt: Salt,
    /// `SHA-256` of the version's RFC 8785 canonical JSON.
    pub content_hash: ContentHash,
}

impl Leaf {
    /// A leaf from its two parts.
    pub fn new(salt: Salt, content_hash: ContentHash) -> Self {
        Self { salt, content_hash }
    }

    /// `salt || content_hash`, the 64 bytes the leaf hash covers.
    pub fn input(&self) -> [u8; 64] {
        let mut input = [0u8; 64];
        input[..32].copy_from_slice(self.salt.as_bytes());
        input[32..].copy_from_slice(self.content_hash.as_bytes());
        input
    }

    /// `SHA-256(0x00 || salt || content_hash)`.
    pub fn hash(&self) -> LeafHash {
        let mut hasher = Sha256::new();
        hasher.update([LEAF_PREFIX]);
        hasher.update(self.salt.as_bytes());
        hasher.update(self.content_hash.as_bytes());
        LeafHash::from_bytes(hasher.finalize().into())
    }
}

impl LeafHash {
    /// The RFC 9162 hash of any leaf input, `SHA-256(0x00 || input)`. The log's leaves
    /// are 64-byte [`Leaf`] inputs; other lengths serve test vectors and other logs.
    pub fn of_input(input: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update([LEAF_PREFIX]);
        hasher.update(input);
        Self::from_bytes(hasher.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DecodeError;

    #[test]
    fn the_leaf_hash_covers_salt_then_content_hash_with_the_leaf_prefix() {
        let leaf = Leaf::new(
            Salt::from_bytes([0x11; 32]),
            ContentHash::from_bytes([0x22; 32]),
        );
        let mut expected_input = vec![0x11; 32];
        expected_input.extend([0x22; 32]);
        assert_eq!(leaf.input().to_vec(), expected_input);

        let mut prefixed = vec![0x00];
        prefixed.extend(&expected_input);
        let expected: [u8; 32] = Sha256::digest(&prefixed).into();
        assert_eq!(leaf.hash().as_bytes(), &expected);
        assert_eq!(leaf.hash(), LeafHash::of_input(&leaf.input()));
    }

    #[test]
    fn salts_are_fresh_and_never_printed() {
        let a = Salt::generate().expect("the OS generator works");
        let b = Salt::generate().expect("the OS generator works");
        assert_ne!(a, b, "two draws of 256 bits never collide");
        let printed = format!(
            "{a:?} {:?}",
            Leaf::new(a.clone(), ContentHash::from_bytes([0; 32]))
        );
        assert!(!printed.contains(&a.to_hex()), "{printed}");
        assert!(printed.contains("Salt(<redacted>)"), "{printed}");
    }

    #[test]
    fn salt_codecs_round_trip() {
        let salt = Salt::from_bytes(std::array::from_fn(|i| 255 - i as u8));
        assert_eq!(Salt::from_hex(&salt.to_hex()), Ok(salt.clone()));
        assert_eq!(Salt::from_base64(&salt.to_base64()), Ok(salt));
        assert_eq!(
            Salt::from_hex("00"),
            Err(DecodeError::WrongLength { actual: 1 })
        );
    }

    #[test]
    fn changing_any_byte_of_the_salt_or_content_changes_the_leaf() {
        let leaf = Leaf::new(Salt::from_bytes([7; 32]), ContentHash::from_bytes([9; 32]));
        for position in 0..32 {
            let mut salt = *leaf.salt.as_bytes();
            salt[position] ^= 1;
            let mut content = *leaf.content_hash.as_bytes();
            content[position] ^= 1;
            assert_ne!(
                Leaf::new(Salt::from_bytes(salt), leaf.content_hash).hash(),
                leaf.hash()
            );
            assert_ne!(
                Leaf::new(leaf.salt.clone(), ContentHash::from_bytes(content)).hash(),
                leaf.hash()
            );
        }
    }
}
