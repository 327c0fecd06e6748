//! The anchored log's algorithms: what an auditor recomputes to check a resource version
//! against a root anchored on chain (PRODUCT.md, "The log format").
//!
//! ```text
//! content_hash = SHA-256(RFC 8785 canonical JSON of the resource version)
//! leaf_input   = salt (32 random bytes, kept off chain) || content_hash      (64 bytes)
//! leaf_hash    = SHA-256(0x00 || leaf_input)
//! node_hash    = SHA-256(0x01 || left || right)                        (RFC 9162 trees)
//! ```
//!
//! - [`canonical_json`], [`content_hash`]: RFC 8785 over a [`json_syntax::Value`];
//! - [`Salt`], [`Leaf`]: the salted leaf and its [`LeafHash`];
//! - [`Batch`]: the RFC 9162 tree over a batch of leaf hashes (built with `rs_merkle`), its
//!   root and the [`InclusionProof`] of each leaf;
//! - [`verify_inclusion`]: RFC 9162 section 2.1.3.2, written here, for proofs from anyone,
//!   checked against a [`TreeHead`] (size and root) taken from a trusted record.
//!
//! ```
//! use anchor::{Batch, Leaf, Salt, content_hash, verify_inclusion};
//! use json_syntax::{Parse as _, Value};
//!
//! // The gateway: one leaf per resource version, a batch sealed over them.
//! let (patient, _) = Value::parse_str(r#"{"resourceType":"Patient","id":"1"}"#)?;
//! let (observation, _) = Value::parse_str(r#"{"resourceType":"Observation","id":"2"}"#)?;
//! let leaves = [
//!     Leaf::new(Salt::generate()?, content_hash(&patient)?),
//!     Leaf::new(Salt::generate()?, content_hash(&observation)?),
//! ];
//! let batch = Batch::new(&leaves.iter().map(Leaf::hash).collect::<Vec<_>>())?;
//! let (proof, anchored) = (batch.proof(1)?, batch.tree_head());
//!
//! // The auditor: the resource in any formatting, its salt, the proof, and the size and
//! // root read from the chain.
//! let (held, _) = Value::parse_str("{ \"id\": \"2\", \"resourceType\": \"Observation\" }")?;
//! let leaf = Leaf::new(leaves[1].salt.clone(), content_hash(&held)?);
//! verify_inclusion(&leaf.hash(), &proof, &anchored)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - [`chain`]: the Ethereum client of the `AnchorRegistry` contract (alloy): deploy, anchor a
//!   batch (local nonces resynced from the chain on error, fee bumping of a stuck transaction,
//!   N confirmations, re-sending an anchor a reorg dropped), read batches and `BatchAnchored`
//!   events back, the contract's custom errors as a typed [`chain::RegistryError`];
//!   [`chain::RegistryReader`] reads the registry and the chain without a key.
//! - [`consent`]: the Ethereum client of the `ConsentRegistry` (issue 5): patients' grants
//!   read back as events and views ([`consent::ConsentReader`]), their EIP-712-signed grants
//!   and revocations relayed ([`consent::ConsentRelayer`], the same sender as the anchor
//!   client), the typed data a wallet signs and its hash, and the grantee convention.
//! - [`audit`]: the auditor's checks behind the `fhir-anchor` command (`src/bin`): a resource
//!   version against its `$proof` document and the chain, a whole log replayed from its
//!   `BatchAnchored` events, and the consent basis an AuditEvent records checked against the
//!   `ConsentRegistry` as of the decision's block.
//!
//! **Invariant:** this crate knows nothing of HTTP servers, FHIR models or SQL. It hashes JSON
//! values, builds and checks trees and anchors roots as a JSON-RPC client; the gateway decides
//! what a resource version is and stores leaves. The FHIR shapes it reads are the `$proof`
//! `Parameters` document and the consent basis of an AuditEvent, as plain JSON in [`audit`],
//! and of a resource only the members that name a version (`resourceType`, `id`,
//! `meta.versionId`).

pub mod audit;
mod bytes;
mod canonical;
pub mod chain;
pub mod consent;
pub mod error;
mod leaf;
mod tree;
mod verify;

pub use bytes::{ContentHash, LeafHash, NodeHash};
pub use canonical::{canonical_json, content_hash, write_canonical_json};
pub use error::{BatchError, CanonicalError, DecodeError, RandomError, VerifyError};
pub use leaf::{LEAF_PREFIX, Leaf, Salt};
pub use tree::{Batch, InclusionProof, NODE_PREFIX, TreeHead};
pub use verify::{inclusion_path_length, root_from_inclusion_proof, verify_inclusion};
