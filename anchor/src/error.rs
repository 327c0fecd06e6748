//! The errors of this crate, one enum per step that can fail.
//!
//! None of them carries patient data: a canonicalization error names the structural problem,
//! never a string or number from the document, and a decoding error never echoes its input
//! (it may have been a salt).

/// Why a JSON value has no RFC 8785 canonical form.
///
/// RFC 8785 is defined over I-JSON (RFC 7493): member names are unique and numbers are
/// IEEE 754 doubles. A value outside that subset has no canonical form, so it has no content
/// hash either.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// An object has the same member name twice (RFC 7493 section 2.3).
    #[error("an object has the member name {name:?} twice (RFC 8785 needs unique names)")]
    DuplicateMemberName {
        /// The repeated member name: a name from the document's structure, not a value.
        name: String,
    },
    /// A number literal is too large for an IEEE 754 double (it would be infinite).
    #[error("a number is outside the range of an IEEE 754 double (RFC 8785 section 3.2.2.3)")]
    NumberOutOfRange,
    /// A number literal could not be read as a decimal number. `json_syntax` only builds
    /// valid literals, so this means a value was built by hand with a malformed one.
    #[error("a number literal is not a JSON number")]
    InvalidNumber,
}

/// Why 32 bytes (a hash or a salt) could not be decoded from text.
///
/// The message never repeats the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The text is not hexadecimal.
    #[error("not hexadecimal")]
    InvalidHex,
    /// The text is not standard base64 (RFC 4648 section 4, with padding).
    #[error("not base64 (RFC 4648 standard alphabet, padded)")]
    InvalidBase64,
    /// The decoded bytes are not 32 long.
    #[error("expected 32 bytes, found {actual}")]
    WrongLength {
        /// How many bytes the text held.
        actual: usize,
    },
}

/// The operating system's random number generator failed while drawing a salt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomError(pub(crate) getrandom::Error);

/// Why a batch could not be built or a proof could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// A batch needs at least one leaf (the log never anchors an empty tree).
    #[error("a batch needs at least one leaf")]
    Empty,
    /// The leaf index is not inside the batch.
    #[error("leaf index {index} is outside a batch of {size} leaves")]
    IndexOutOfRange {
        /// The index asked for.
        index: u64,
        /// The number of leaves in the batch.
        size: u64,
    },
}

/// Why an inclusion proof does not prove that a leaf is in a tree (RFC 9162 section 2.1.3.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The proof claims another tree size than the trusted record of the tree.
    #[error("the proof is for a tree of {proof} leaves, but the anchored tree has {anchored}")]
    TreeSizeMismatch {
        /// The tree size the proof claims.
        proof: u64,
        /// The tree size of the trusted record.
        anchored: u64,
    },
    /// The leaf index is not below the tree size (step 1 of the algorithm).
    #[error("leaf index {index} is not below the tree size {tree_size}")]
    IndexOutOfRange {
        /// The leaf index the proof claims.
        index: u64,
        /// The tree size the proof claims.
        tree_size: u64,
    },
    /// The path does not have the length that the index and the tree size fix.
    #[error(
        "the inclusion path has {actual} hashes, but leaf {index} of a tree of size {tree_size} needs {expected}"
    )]
    WrongPathLength {
        /// The leaf index the proof claims.
        index: u64,
        /// The tree size the proof claims.
        tree_size: u64,
        /// The length the index and the tree size fix.
        expected: usize,
        /// The length of the path given.
        actual: usize,
    },
    /// The path leads from the leaf to another root than the expected one: the leaf, a path
    /// element, the index or the root is not what was anchored.
    #[error(
        "the root computed from the leaf and its path is {computed}, not the expected root {expected}"
    )]
    RootMismatch {
        /// The root the leaf and the path lead to.
        computed: crate::NodeHash,
        /// The root the proof was checked against.
        expected: crate::NodeHash,
    },
}
