//! The proof document: the `Parameters` that the gateway's `$proof` returns (README, "The
//! anchored log and `$proof`"), read as plain JSON into typed parts.
//!
//! Reading checks the form of each part (hashes are 64 hexadecimal digits, numbers are
//! non-negative integers, addresses are 20 bytes) and nothing else: a part the gateway adds
//! only later (`logIndex`, `batch`, `inclusionPath`, `anchor`) may be absent, and whether the
//! parts agree with each other, with the resource and with the chain is
//! [`verify_proof`](super::verify_proof)'s business. Parameters this version does not know
//! are ignored.

use std::str::FromStr as _;

use alloy::primitives::{Address, B256};
use serde_json::Value;

use crate::{ContentHash, InclusionProof, LeafHash, NodeHash, Salt};

/// Why a proof document could not be read. The message names the parameter, never its value
/// (it may be a salt).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The document is not a FHIR `Parameters` resource with a `parameter` array.
    #[error("the proof is not a FHIR Parameters resource with a `parameter` array")]
    NotParameters,
    /// A parameter the layout requires in every proof is absent.
    #[error("the proof has no `{0}` parameter")]
    Missing(&'static str),
    /// A parameter or part appears twice.
    #[error("the proof has the `{0}` parameter twice")]
    Repeated(String),
    /// A parameter or part does not have the form the layout gives it.
    #[error("the proof's `{name}` is not {expected}")]
    Malformed {
        /// The parameter, or `parameter.part`.
        name: String,
        /// What it should be.
        expected: &'static str,
    },
}

/// `status`: how far the version has come along the log, as the gateway says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofStatus {
    /// Not on chain yet.
    Pending,
    /// The anchor transaction was sent.
    Submitted,
    /// The gateway saw the anchor confirmed.
    Anchored,
}

impl std::fmt::Display for ProofStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Submitted => "submitted",
            Self::Anchored => "anchored",
        })
    }
}

/// `version`: `[type]/[id]/_history/[vid]`, the version proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRef {
    /// The resource type.
    pub resource_type: String,
    /// The logical id.
    pub id: String,
    /// The version id.
    pub version_id: String,
}

impl VersionRef {
    /// Reads `[type]/[id]/_history/[vid]` (each segment non-empty).
    pub fn parse(reference: &str) -> Option<Self> {
        let mut segments = reference.split('/');
        let (Some(resource_type), Some(id), Some("_history"), Some(version_id), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return None;
        };
        if [resource_type, id, version_id].iter().any(|s| s.is_empty()) {
            return None;
        }
        Some(Self {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
            version_id: version_id.to_owned(),
        })
    }
}

impl std::fmt::Display for VersionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/_history/{}",
            self.resource_type, self.id, self.version_id
        )
    }
}

/// `batch`: the batch holding the leaf, as the gateway sealed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPart {
    /// The batch's number in its log.
    pub number: u64,
    /// Log index of its first leaf.
    pub first_index: u64,
    /// Number of leaves.
    pub size: u64,
    /// Its RFC 9162 root.
    pub root: NodeHash,
    /// `sealed`, `submitted` or `confirmed`, as the gateway says.
    pub state: String,
}

/// `anchor`: where the gateway says the batch's root was anchored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorPart {
    /// The chain's id.
    pub chain_id: u64,
    /// The registry's address.
    pub contract: Address,
    /// The account whose log holds the batch.
    pub anchorer: Address,
    /// The anchoring transaction.
    pub transaction_hash: B256,
    /// Its block's number.
    pub block_number: u64,
    /// Its block's hash.
    pub block_hash: B256,
}

/// A `$proof` document, part by part. The parts every proof has are plain fields; the others
/// are `None` until the gateway adds them (or, for `salt`, after erasure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofDocument {
    /// `status`.
    pub status: ProofStatus,
    /// `version`.
    pub version: VersionRef,
    /// `deletion`: the canonical JSON a deletion's content hash covers.
    pub deletion: Option<String>,
    /// `erased`: when the version was erased (crypto-shredded), if it was.
    pub erased: Option<String>,
    /// `contentHash`; `None` once the version was erased.
    pub content_hash: Option<ContentHash>,
    /// `salt`; `None` once the version was erased.
    pub salt: Option<Salt>,
    /// `leafHash`.
    pub leaf_hash: LeafHash,
    /// `logIndex`.
    pub log_index: Option<u64>,
    /// `batch`.
    pub batch: Option<BatchPart>,
    /// `inclusionPath`: `leafIndex`, `treeSize` and the hashes.
    pub inclusion_path: Option<InclusionProof>,
    /// `anchor`.
    pub anchor: Option<AnchorPart>,
}

impl ProofDocument {
    /// Reads a proof document from the JSON of a `Parameters` resource.
    pub fn from_json(document: &Value) -> Result<Self, ProofError> {
        if document.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
            return Err(ProofError::NotParameters);
        }
        let parameters = document
            .get("parameter")
            .and_then(Value::as_array)
            .ok_or(ProofError::NotParameters)?;
        let parts = Parts::of(String::new(), parameters)?;

        let status = match parts.string("status", "valueCode")? {
            None => return Err(ProofError::Missing("status")),
            Some("pending") => ProofStatus::Pending,
            Some("submitted") => ProofStatus::Submitted,
            Some("anchored") => ProofStatus::Anchored,
            Some(_) => return Err(parts.malformed("status", "pending, submitted or anchored")),
        };
        let version = parts
            .get("version")
            .map(|value| {
                value
                    .get("valueReference")
                    .and_then(|reference| reference.get("reference"))
                    .and_then(Value::as_str)
                    .and_then(VersionRef::parse)
                    .ok_or_else(|| {
                        parts.malformed("version", "a valueReference to [type]/[id]/_history/[vid]")
                    })
            })
            .transpose()?
            .ok_or(ProofError::Missing("version"))?;
        Ok(Self {
            status,
            version,
            deletion: parts.string("deletion", "valueString")?.map(str::to_owned),
            erased: parts.string("erased", "valueInstant")?.map(str::to_owned),
            content_hash: parts.hash("contentHash", ContentHash::from_hex)?,
            salt: parts.hash("salt", Salt::from_hex)?,
            leaf_hash: parts
                .hash("leafHash", LeafHash::from_hex)?
                .ok_or(ProofError::Missing("leafHash"))?,
            log_index: parts.decimal("logIndex")?,
            batch: parts.nested("batch")?.map(|p| p.batch()).transpose()?,
            inclusion_path: parts
                .nested("inclusionPath")?
                .map(|p| p.inclusion_path())
                .transpose()?,
            anchor: parts.nested("anchor")?.map(|p| p.anchor()).transpose()?,
        })
    }
}

/// The named entries of a `parameter` or `part` array, each name once.
struct Parts<'a> {
    /// `""` for the top level, `"batch."` and so on for parts, to name them in errors.
    prefix: String,
    entries: Vec<(&'a str, &'a Value)>,
    /// The hashes of `inclusionPath`, the one repeated part, in order.
    hashes: Vec<&'a Value>,
}

impl<'a> Parts<'a> {
    fn of(prefix: String, array: &'a [Value]) -> Result<Self, ProofError> {
        let mut parts = Self {
            prefix,
            entries: Vec::new(),
            hashes: Vec::new(),
        };
        for entry in array {
            let name = entry
                .get("name")
                .and_then(Value::as_str)
                .ok_or(ProofError::NotParameters)?;
            if parts.prefix == "inclusionPath." && name == "hash" {
                parts.hashes.push(entry);
            } else if parts.entries.iter().any(|(seen, _)| *seen == name) {
                return Err(ProofError::Repeated(format!("{}{name}", parts.prefix)));
            } else {
                parts.entries.push((name, entry));
            }
        }
        Ok(parts)
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.entries
            .iter()
            .find(|(seen, _)| *seen == name)
            .map(|(_, entry)| *entry)
    }

    fn malformed(&self, name: &str, expected: &'static str) -> ProofError {
        ProofError::Malformed {
            name: format!("{}{name}", self.prefix),
            expected,
        }
    }

    fn string(&self, name: &str, value_kind: &str) -> Result<Option<&'a str>, ProofError> {
        self.get(name)
            .map(|entry| {
                entry
                    .get(value_kind)
                    .and_then(Value::as_str)
                    .ok_or_else(|| self.malformed(name, "a string"))
            })
            .transpose()
    }

    fn hash<T, E>(
        &self,
        name: &str,
        decode: impl Fn(&str) -> Result<T, E>,
    ) -> Result<Option<T>, ProofError> {
        self.string(name, "valueString")?
            .map(|text| decode(text).map_err(|_| self.malformed(name, "64 hexadecimal digits")))
            .transpose()
    }

    fn decimal(&self, name: &str) -> Result<Option<u64>, ProofError> {
        self.get(name)
            .map(|entry| {
                entry
                    .get("valueDecimal")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| self.malformed(name, "a non-negative integer valueDecimal"))
            })
            .transpose()
    }

    fn nested(&self, name: &'static str) -> Result<Option<Parts<'a>>, ProofError> {
        self.get(name)
            .map(|entry| {
                let array = entry
                    .get("part")
                    .and_then(Value::as_array)
                    .ok_or_else(|| self.malformed(name, "a parameter with parts"))?;
                Parts::of(format!("{name}."), array)
            })
            .transpose()
    }

    fn required<T>(&self, name: &str, value: Option<T>) -> Result<T, ProofError> {
        value.ok_or_else(|| self.malformed(name, "present"))
    }

    fn batch(&self) -> Result<BatchPart, ProofError> {
        Ok(BatchPart {
            number: self.required("number", self.decimal("number")?)?,
            first_index: self.required("firstIndex", self.decimal("firstIndex")?)?,
            size: self.required("size", self.decimal("size")?)?,
            root: self.required("root", self.hash("root", NodeHash::from_hex)?)?,
            state: self
                .required("state", self.string("state", "valueCode")?)?
                .to_owned(),
        })
    }

    fn inclusion_path(&self) -> Result<InclusionProof, ProofError> {
        let path = self
            .hashes
            .iter()
            .map(|entry| {
                entry
                    .get("valueString")
                    .and_then(Value::as_str)
                    .and_then(|text| NodeHash::from_hex(text).ok())
                    .ok_or_else(|| self.malformed("hash", "64 hexadecimal digits"))
            })
            .collect::<Result<_, _>>()?;
        Ok(InclusionProof {
            index: self.required("leafIndex", self.decimal("leafIndex")?)?,
            tree_size: self.required("treeSize", self.decimal("treeSize")?)?,
            path,
        })
    }

    fn anchor(&self) -> Result<AnchorPart, ProofError> {
        let address = |name: &str| {
            let text = self.required(name, self.string(name, "valueString")?)?;
            Address::from_str(text).map_err(|_| self.malformed(name, "a 0x-prefixed address"))
        };
        let b256 = |name: &str| {
            let text = self.required(name, self.string(name, "valueString")?)?;
            B256::from_str(text)
                .map_err(|_| self.malformed(name, "a 0x-prefixed 64-digit hexadecimal hash"))
        };
        Ok(AnchorPart {
            chain_id: self.required("chainId", self.decimal("chainId")?)?,
            contract: address("contract")?,
            anchorer: address("anchorer")?,
            transaction_hash: b256("transactionHash")?,
            block_number: self.required("blockNumber", self.decimal("blockNumber")?)?,
            block_hash: b256("blockHash")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> Value {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "status", "valueCode": "pending"},
            {"name": "version", "valueReference": {"reference": "Patient/p1/_history/2"}},
            {"name": "contentHash", "valueString": "11".repeat(32)},
            {"name": "salt", "valueString": "22".repeat(32)},
            {"name": "leafHash", "valueString": "33".repeat(32)},
        ]})
    }

    #[test]
    fn a_pending_proof_has_only_the_first_parts() {
        let proof = ProofDocument::from_json(&minimal()).expect("a pending proof");
        assert_eq!(proof.status, ProofStatus::Pending);
        assert_eq!(proof.version.to_string(), "Patient/p1/_history/2");
        assert_eq!(proof.leaf_hash, LeafHash::from_bytes([0x33; 32]));
        assert!(proof.salt.is_some());
        assert_eq!(
            (
                proof.log_index,
                proof.batch,
                proof.inclusion_path,
                proof.anchor
            ),
            (None, None, None, None)
        );
    }

    #[test]
    fn bad_documents_are_refused_by_name_without_their_values() {
        let salt = "zz".repeat(32);
        let mut bad_salt = minimal();
        bad_salt["parameter"][3]["valueString"] = json!(salt);
        let mut no_leaf = minimal();
        no_leaf["parameter"]
            .as_array_mut()
            .expect("array")
            .remove(4);
        let mut twice = minimal();
        twice["parameter"]
            .as_array_mut()
            .expect("array")
            .push(json!({"name": "salt", "valueString": "22".repeat(32)}));
        let mut bad_version = minimal();
        bad_version["parameter"][1]["valueReference"]["reference"] = json!("Patient/p1");
        let cases = [
            (json!({"resourceType": "Bundle"}), ProofError::NotParameters),
            (no_leaf, ProofError::Missing("leafHash")),
            (twice, ProofError::Repeated("salt".into())),
            (
                bad_salt,
                ProofError::Malformed {
                    name: "salt".into(),
                    expected: "64 hexadecimal digits",
                },
            ),
            (
                bad_version,
                ProofError::Malformed {
                    name: "version".into(),
                    expected: "a valueReference to [type]/[id]/_history/[vid]",
                },
            ),
        ];
        for (document, expected) in cases {
            let error = ProofDocument::from_json(&document).expect_err("refused");
            assert_eq!(error, expected);
            assert!(!error.to_string().contains(&salt));
        }
    }

    #[test]
    fn version_references_need_four_segments() {
        assert!(VersionRef::parse("Patient/1/_history/1").is_some());
        for bad in [
            "Patient/1",
            "Patient/1/_history/",
            "Patient/1/history/1",
            "Patient/1/_history/1/x",
        ] {
            assert_eq!(VersionRef::parse(bad), None, "{bad}");
        }
    }
}
