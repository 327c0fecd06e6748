//! The auditor's side: what the `fhir-anchor` command does (README, "The auditor's CLI,
//! `fhir-anchor`"), as functions that tests call too.
//!
//! - [`ProofDocument`]: the `$proof` `Parameters` read as plain JSON into typed parts
//!   (the layout of README, "The anchored log and `$proof`"; no FHIR model is involved);
//! - [`verify_proof`]: one resource version against its proof and the chain, every check in
//!   a fixed order, the first that fails as a [`Failure`];
//! - [`audit_log`]: one log replayed from its `BatchAnchored` events and compared with the
//!   registry's views, every [`LogProblem`] reported;
//! - [`check_consent_basis`]: the consent basis an AuditEvent records ([`ConsentBasis`], read
//!   as plain JSON) checked against the `ConsentRegistry` as of the decision's block, a
//!   [`Verdict`] per patient and every [`GrantProblem`], [`PatientProblem`] and
//!   [`ChainProblem`] (another chain, registry or block than the decision's) reported.
//!
//! Only files and an Ethereum JSON-RPC endpoint are read (through a
//! [`RegistryReader`](crate::chain::RegistryReader)); never the gateway. The gateway's word is
//! checked, never trusted: every value a proof names is compared with what the chain says.

mod consent;
mod log;
mod proof;
mod verify;

use std::path::Path;

use json_syntax::Parse as _;

pub use consent::{
    Agent, BasisError, CONSENT_BASIS_EXTENSION, ChainProblem, ConsentAudit, ConsentBasis,
    GrantProblem, GrantVerdict, PatientBasis, PatientProblem, PatientVerdict, Verdict,
    check_consent_basis,
};
pub use log::{DEFAULT_BLOCKS_PER_QUERY, LogAudit, LogAuditRequest, LogProblem, audit_log};
pub use proof::{AnchorPart, BatchPart, ProofDocument, ProofError, ProofStatus, VersionRef};
pub use verify::{Failure, Recomputed, Verified, check_offline, check_on_chain, verify_proof};

/// Reads a resource (or a deletion record) in any JSON formatting, keeping each number
/// literal as written, as [`content_hash`](crate::content_hash) expects.
pub fn read_resource(path: &Path) -> Result<json_syntax::Value, Failure> {
    let text = read_text(path)?;
    json_syntax::Value::parse_str(&text)
        .map(|(value, _)| value)
        .map_err(|e| input_error(path, format!("not JSON: {e}")))
}

/// Reads a `$proof` document.
pub fn read_proof(path: &Path) -> Result<ProofDocument, Failure> {
    let text = read_text(path)?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| input_error(path, format!("not JSON: {e}")))?;
    Ok(ProofDocument::from_json(&json)?)
}

/// Reads the consent basis of an AuditEvent (JSON, as the gateway serves it).
pub fn read_audit_event(path: &Path) -> Result<ConsentBasis, Failure> {
    let text = read_text(path)?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| input_error(path, format!("not JSON: {e}")))?;
    ConsentBasis::from_json(&json).map_err(|e| input_error(path, e.to_string()))
}

fn read_text(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| input_error(path, e.to_string()))
}

fn input_error(path: &Path, reason: String) -> Failure {
    Failure::Input {
        path: path.display().to_string(),
        reason,
    }
}
