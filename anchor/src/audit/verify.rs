//! `fhir-anchor verify`: checks one resource version against its `$proof` and the chain.
//!
//! The checks run in a fixed order and stop at the first that fails, each with its own
//! [`Failure`]. First from the files alone ([`check_offline`]): the proof is anchored, it is
//! of this version, the content hash, the leaf hash, the indexes, the path to the root. Then
//! on chain ([`check_on_chain`]), where the gateway's word counts for nothing: the chain, the
//! registry's code, its record of the batch, the block, the transaction and its event, and
//! the depth of the block.

use alloy::primitives::{Address, B256};
use json_syntax::{Parse as _, Value};

use super::proof::{AnchorPart, ProofDocument, ProofError, ProofStatus, VersionRef};
use crate::chain::{ChainError, RegistryError, RegistryReader};
use crate::error::{CanonicalError, VerifyError};
use crate::{ContentHash, Leaf, LeafHash, NodeHash, content_hash, root_from_inclusion_proof};

/// Why a proof does not verify, or could not be checked. Each check has its own variant;
/// the message says which and, where it helps, the two values that disagree (hashes,
/// numbers, addresses: never a salt, never the resource's content).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A file could not be read or is not what it should be.
    #[error("cannot read {path}: {reason}")]
    Input {
        /// The file, as given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The proof document does not follow the `$proof` layout.
    #[error("malformed proof: {0}")]
    Proof(#[from] ProofError),
    /// `status` is `pending`: the version is not on chain yet.
    #[error("the proof is not anchored yet: its status is pending")]
    Pending,
    /// A part that an anchored proof has is absent.
    #[error("the proof is not anchored yet: it has no `{0}` part")]
    MissingPart(&'static str),
    /// No resource was given and the proof is not of a deletion.
    #[error("no resource to check: --resource is needed for a proof that is not of a deletion")]
    NoResource,
    /// The resource lacks a member that names its version.
    #[error("the resource has no {0}: it cannot be matched with the proof's version")]
    Unidentified(&'static str),
    /// The resource is another version than the one proved.
    #[error("the proof is of {proof}, but the resource is {resource}")]
    OtherVersion {
        /// The proof's `version`.
        proof: String,
        /// What the resource says it is, as a version reference.
        resource: String,
    },
    /// The resource has no RFC 8785 form, so no content hash.
    #[error("the resource has no RFC 8785 canonical form: {0}")]
    NotCanonical(#[from] CanonicalError),
    /// The resource's content hash is not the proof's: it is not the version proved.
    #[error(
        "the resource changed: its content hash is {computed}, the proof's contentHash is {proved}"
    )]
    ContentChanged {
        /// Recomputed from the resource.
        computed: ContentHash,
        /// The proof's `contentHash`.
        proved: ContentHash,
    },
    /// The proof has no salt (or no content hash): the version was erased (crypto-shredded).
    #[error(
        "the proof has no salt: the version was erased{} and its leaf can no longer be tied to any content",
        .at.as_deref().map(|at| format!(" at {at}")).unwrap_or_default()
    )]
    Erased {
        /// The proof's `erased` instant, if given.
        at: Option<String>,
    },
    /// Salt and content hash do not give the proof's leaf hash.
    #[error(
        "the salt and the content hash give leaf hash {computed}, the proof's leafHash is {proved}"
    )]
    LeafChanged {
        /// `SHA-256(0x00 || salt || content_hash)`.
        computed: LeafHash,
        /// The proof's `leafHash`.
        proved: LeafHash,
    },
    /// `logIndex - firstIndex` is not the path's `leafIndex`.
    #[error(
        "logIndex {log_index} minus the batch's firstIndex {first_index} is not the path's leafIndex {leaf_index}"
    )]
    LeafIndexMismatch {
        /// The proof's `logIndex`.
        log_index: u64,
        /// The proof's `batch.firstIndex`.
        first_index: u64,
        /// The proof's `inclusionPath.leafIndex`.
        leaf_index: u64,
    },
    /// The path's `treeSize` is not the batch's `size`.
    #[error("the path's treeSize {tree_size} is not the batch's size {size}")]
    TreeSizeMismatch {
        /// The proof's `inclusionPath.treeSize`.
        tree_size: u64,
        /// The proof's `batch.size`.
        size: u64,
    },
    /// The path cannot be walked (RFC 9162 section 2.1.3.2): index out of range, wrong length.
    #[error("the inclusion path is wrong: {0}")]
    Path(VerifyError),
    /// The path leads to another root than the batch's.
    #[error("the inclusion path leads to root {computed}, not to the batch's root {proved}")]
    RootMismatch {
        /// Where leaf and path lead.
        computed: NodeHash,
        /// The proof's `batch.root`.
        proved: NodeHash,
    },
    /// The chain could not be read (the endpoint is named by scheme, host and port only).
    #[error("cannot read the chain: {0}")]
    Chain(#[from] ChainError),
    /// The RPC endpoint serves another chain than the proof's.
    #[error("the RPC endpoint serves chain {rpc}, the proof's anchor is on chain {proved}")]
    WrongChain {
        /// The endpoint's `eth_chainId`.
        rpc: u64,
        /// The proof's `anchor.chainId`.
        proved: u64,
    },
    /// No code at the proof's registry address.
    #[error("no contract code at the proof's registry {0}")]
    NoContract(Address),
    /// The registry does not know the batch.
    #[error("the registry has no batch {number} in the log of {anchorer}")]
    BatchNotOnChain {
        /// The proof's `batch.number`.
        number: u64,
        /// The proof's `anchor.anchorer`.
        anchorer: Address,
    },
    /// The registry's record of the batch disagrees with the proof.
    #[error(
        "the registry's batch {number} of {anchorer} has {what} {on_chain}, but the proof gives {proved}"
    )]
    BatchDiffers {
        /// The batch.
        number: u64,
        /// Its log.
        anchorer: Address,
        /// `root`, `firstIndex` or `size`.
        what: &'static str,
        /// The registry's value.
        on_chain: String,
        /// What the proof's path and indexes give.
        proved: String,
    },
    /// The registry recorded the batch in another block than the proof's.
    #[error(
        "the registry recorded batch {number} in block {on_chain}, the proof's blockNumber is {proved}"
    )]
    BlockNumberMismatch {
        /// The batch.
        number: u64,
        /// The registry's `blockNumber`.
        on_chain: u64,
        /// The proof's `anchor.blockNumber`.
        proved: u64,
    },
    /// The proof's block is not the canonical block at its height (a reorg replaced it).
    #[error(
        "block {number} {proved} is not canonical: the chain's block {number} is {canonical} (a reorg replaced it)"
    )]
    BlockNotCanonical {
        /// The height.
        number: u64,
        /// The proof's `anchor.blockHash`.
        proved: B256,
        /// The canonical block's hash, or "missing".
        canonical: String,
    },
    /// The node has no mined receipt of the proof's transaction.
    #[error("the node has no receipt of transaction {0}")]
    NoReceipt(B256),
    /// The transaction reverted.
    #[error("transaction {0} failed (reverted)")]
    TransactionFailed(B256),
    /// The transaction's receipt is in another block than the proof's.
    #[error("transaction {tx} is in block {number} {hash}, not in the proof's block")]
    TransactionElsewhere {
        /// The transaction.
        tx: B256,
        /// Its receipt's block number.
        number: u64,
        /// Its receipt's block hash.
        hash: B256,
    },
    /// The transaction carries no `BatchAnchored` event of the registry for this batch.
    #[error(
        "transaction {tx} carries no BatchAnchored event of the registry for batch {number} of {anchorer} with root {root}"
    )]
    NoEvent {
        /// The transaction.
        tx: B256,
        /// The batch.
        number: u64,
        /// Its log.
        anchorer: Address,
        /// Its root.
        root: NodeHash,
    },
    /// The block is not deep enough yet.
    #[error("block {block} has {confirmations} confirmations, {required} required")]
    TooFewConfirmations {
        /// The anchoring block.
        block: u64,
        /// `head - block + 1`.
        confirmations: u64,
        /// `--confirmations`.
        required: u64,
    },
}

/// What the proof's own parts give, once they agree with the resource and with each other:
/// the batch as the leaf and the path make it, and where the gateway says it is anchored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recomputed {
    /// The version proved.
    pub version: VersionRef,
    /// The leaf's index in the log.
    pub log_index: u64,
    /// The batch's number in its log.
    pub batch_number: u64,
    /// `logIndex - leafIndex`.
    pub first_index: u64,
    /// The leaf's index in the batch.
    pub leaf_index: u64,
    /// The batch's size (`treeSize`).
    pub size: u64,
    /// The root the leaf and the path lead to.
    pub root: NodeHash,
    /// The proof's `anchor` part.
    pub anchor: AnchorPart,
}

/// A verified proof: what the `VERIFIED` line names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The proof's parts, checked.
    pub proved: Recomputed,
    /// `head - block + 1` when checked.
    pub confirmations: u64,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.proved;
        write!(
            f,
            "{} at log index {} (leaf {} of {}) in batch {} of log {} (root {}), registry {} on chain {}, block {} {}, {} confirmations",
            p.version,
            p.log_index,
            p.leaf_index,
            p.size,
            p.batch_number,
            p.anchor.anchorer,
            p.root,
            p.anchor.contract,
            p.anchor.chain_id,
            p.anchor.block_number,
            p.anchor.block_hash,
            self.confirmations
        )
    }
}

/// Checks `proof` against `resource` (or, for a deletion, against the proof's own `deletion`
/// record when `resource` is `None`), then against the chain at `rpc_url`, which must show
/// the anchoring block at least `confirmations` deep.
pub async fn verify_proof(
    resource: Option<&Value>,
    proof: &ProofDocument,
    rpc_url: &str,
    confirmations: u64,
) -> Result<Verified, Failure> {
    let proved = check_offline(resource, proof)?;
    check_on_chain(proved, rpc_url, confirmations).await
}

/// The checks that need no chain, in order: anchored (status and parts), version, content
/// hash, salt, leaf hash, indexes, path and root.
pub fn check_offline(
    resource: Option<&Value>,
    proof: &ProofDocument,
) -> Result<Recomputed, Failure> {
    if proof.status == ProofStatus::Pending {
        return Err(Failure::Pending);
    }
    let log_index = proof.log_index.ok_or(Failure::MissingPart("logIndex"))?;
    let batch = proof.batch.as_ref().ok_or(Failure::MissingPart("batch"))?;
    let path = (proof.inclusion_path.as_ref()).ok_or(Failure::MissingPart("inclusionPath"))?;
    let anchor = proof
        .anchor
        .as_ref()
        .ok_or(Failure::MissingPart("anchor"))?;

    let deletion;
    let content = match (resource, &proof.deletion) {
        (Some(resource), _) => resource,
        (None, Some(record)) => {
            deletion = Value::parse_str(record)
                .map_err(|_| ProofError::Malformed {
                    name: "deletion".into(),
                    expected: "JSON",
                })?
                .0;
            &deletion
        }
        (None, None) => return Err(Failure::NoResource),
    };
    let resource_version = version_of(content)?;
    if resource_version != proof.version {
        return Err(Failure::OtherVersion {
            proof: proof.version.to_string(),
            resource: resource_version.to_string(),
        });
    }

    let computed = content_hash(content)?;
    let erased = || Failure::Erased {
        at: proof.erased.clone(),
    };
    let proved = proof.content_hash.ok_or_else(erased)?;
    if computed != proved {
        return Err(Failure::ContentChanged { computed, proved });
    }
    let salt = proof.salt.clone().ok_or_else(erased)?;
    let leaf = Leaf::new(salt, computed).hash();
    if leaf != proof.leaf_hash {
        return Err(Failure::LeafChanged {
            computed: leaf,
            proved: proof.leaf_hash,
        });
    }

    if log_index.checked_sub(batch.first_index) != Some(path.index) {
        return Err(Failure::LeafIndexMismatch {
            log_index,
            first_index: batch.first_index,
            leaf_index: path.index,
        });
    }
    if path.tree_size != batch.size {
        return Err(Failure::TreeSizeMismatch {
            tree_size: path.tree_size,
            size: batch.size,
        });
    }
    let root = root_from_inclusion_proof(&leaf, path).map_err(Failure::Path)?;
    if root != batch.root {
        return Err(Failure::RootMismatch {
            computed: root,
            proved: batch.root,
        });
    }
    Ok(Recomputed {
        version: proof.version.clone(),
        log_index,
        batch_number: batch.number,
        first_index: batch.first_index,
        leaf_index: path.index,
        size: path.tree_size,
        root,
        anchor: anchor.clone(),
    })
}

/// The version a content names: `resourceType`, `id` and `meta.versionId` of a resource, or
/// the same members of the `deleted` object of a deletion record.
fn version_of(content: &Value) -> Result<VersionRef, Failure> {
    if let Some(deleted) = member(content, "deleted") {
        return Ok(VersionRef {
            resource_type: text(Some(deleted), "resourceType", "deleted.resourceType")?,
            id: text(Some(deleted), "id", "deleted.id")?,
            version_id: text(Some(deleted), "versionId", "deleted.versionId")?,
        });
    }
    Ok(VersionRef {
        resource_type: text(Some(content), "resourceType", "resourceType")?,
        id: text(Some(content), "id", "id")?,
        version_id: text(member(content, "meta"), "versionId", "meta.versionId")?,
    })
}

/// The member `name` of `value` if it is an object that has it once.
fn member<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    value.as_object()?.get_unique(name).ok()?
}

/// The string member `name` of `object`, or [`Failure::Unidentified`] naming it as `path`.
fn text(object: Option<&Value>, name: &str, path: &'static str) -> Result<String, Failure> {
    object
        .and_then(|object| member(object, name))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(Failure::Unidentified(path))
}

/// The checks on chain, in order: chain id, registry code, the registry's batch (root, first
/// index, size, block number), the block is canonical, the transaction succeeded in that block
/// with the batch's event, and the block's depth.
pub async fn check_on_chain(
    proved: Recomputed,
    rpc_url: &str,
    confirmations: u64,
) -> Result<Verified, Failure> {
    let anchor = &proved.anchor;
    let reader = RegistryReader::connect(rpc_url, anchor.contract).await?;
    if reader.chain_id() != anchor.chain_id {
        return Err(Failure::WrongChain {
            rpc: reader.chain_id(),
            proved: anchor.chain_id,
        });
    }
    if !reader.has_code().await? {
        return Err(Failure::NoContract(anchor.contract));
    }

    let number = proved.batch_number;
    let batch = match reader.batch(anchor.anchorer, number).await {
        Err(ChainError::Registry(RegistryError::UnknownBatch { .. })) => {
            return Err(Failure::BatchNotOnChain {
                number,
                anchorer: anchor.anchorer,
            });
        }
        other => other?,
    };
    let differs = |what, on_chain: String, proved: String| Failure::BatchDiffers {
        number,
        anchorer: anchor.anchorer,
        what,
        on_chain,
        proved,
    };
    if batch.root != proved.root {
        return Err(differs(
            "root",
            batch.root.to_string(),
            proved.root.to_string(),
        ));
    }
    if batch.first_index != proved.first_index {
        return Err(differs(
            "firstIndex",
            batch.first_index.to_string(),
            proved.first_index.to_string(),
        ));
    }
    if batch.size != proved.size {
        return Err(differs(
            "size",
            batch.size.to_string(),
            proved.size.to_string(),
        ));
    }
    if batch.block_number != anchor.block_number {
        return Err(Failure::BlockNumberMismatch {
            number,
            on_chain: batch.block_number,
            proved: anchor.block_number,
        });
    }

    let canonical = reader.block_hash(anchor.block_number).await?;
    if canonical != Some(anchor.block_hash) {
        return Err(Failure::BlockNotCanonical {
            number: anchor.block_number,
            proved: anchor.block_hash,
            canonical: canonical.map_or_else(|| "missing".to_owned(), |hash| hash.to_string()),
        });
    }

    let tx = anchor.transaction_hash;
    let receipt = reader.receipt(tx).await?.ok_or(Failure::NoReceipt(tx))?;
    if !receipt.succeeded {
        return Err(Failure::TransactionFailed(tx));
    }
    if (receipt.block_number, receipt.block_hash) != (anchor.block_number, anchor.block_hash) {
        return Err(Failure::TransactionElsewhere {
            tx,
            number: receipt.block_number,
            hash: receipt.block_hash,
        });
    }
    let announced = receipt.events.iter().any(|event| {
        event.anchorer == anchor.anchorer
            && event.batch_number == number
            && event.root == proved.root
            && event.first_index == proved.first_index
            && event.size == proved.size
    });
    if !announced {
        return Err(Failure::NoEvent {
            tx,
            number,
            anchorer: anchor.anchorer,
            root: proved.root,
        });
    }

    let head = reader.head().await?;
    let depth = head.saturating_sub(anchor.block_number) + 1;
    if depth < confirmations {
        return Err(Failure::TooFewConfirmations {
            block: anchor.block_number,
            confirmations: depth,
            required: confirmations,
        });
    }
    Ok(Verified {
        proved,
        confirmations: depth,
    })
}
