//! The anchored log seen from a resource version: its leaf (made on every write) and
//! `$proof`, the Parameters an auditor checks it with (README, "`$proof`").
//!
//! A version's leaf hashes the version exactly as served (RFC 8785 canonical JSON, `meta`
//! included); a deletion, which serves no resource, hashes its [`deletion_record`]. An
//! erased version's proof has no salt and no content hash any more, only its leaf hash and
//! path: it shows that the version existed and was erased, and can no longer be checked
//! against any content.

use fhir_profiles::Json;
use json_syntax::Parse;
use serde_json::{Value, json};
use sqlx::AnyConnection;

use super::Outcome;
use crate::error::{Error, Result};
use crate::model::{Instant, ResourceId, ResourceType, VersionId};
use crate::store::log::{self, StoredLeaf};
use crate::store::{self, Store};

/// The leaf of a version: a fresh salt and the content hash of `served`.
pub(crate) fn leaf_of(served: &Json) -> Result<anchor::Leaf> {
    let content_hash = anchor::content_hash(served).map_err(|e| {
        Error::Unprocessable(format!(
            "the resource cannot be put in canonical form (RFC 8785) for the anchored log: {e}"
        ))
    })?;
    let salt = anchor::Salt::generate()
        .map_err(|e| Error::Internal(anyhow::anyhow!("drawing a salt for the log: {e}")))?;
    Ok(anchor::Leaf::new(salt, content_hash))
}

/// What the log records for a deletion (a tombstone version, which has no resource):
/// `{"deleted":{"id":…,"lastUpdated":…,"resourceType":…,"versionId":…}}`, the same four
/// facts a version's `meta` and `id` carry, under a member no FHIR resource has.
pub fn deletion_record(
    resource_type: &ResourceType,
    id: &ResourceId,
    version: VersionId,
    last_updated: Instant,
) -> Json {
    let mut deleted = json_syntax::Object::new();
    deleted.push(
        "resourceType".into(),
        Json::String(resource_type.as_str().into()),
    );
    deleted.push("id".into(), Json::String(id.as_str().into()));
    deleted.push("versionId".into(), Json::String(version.to_string().into()));
    deleted.push(
        "lastUpdated".into(),
        Json::String(last_updated.to_fhir().into()),
    );
    let mut record = json_syntax::Object::new();
    record.push("deleted".into(), Json::Object(deleted));
    Json::Object(record)
}

/// Gives a log leaf to every stored version that has none: the versions written before the
/// anchored log existed (migration 0004). Run once at start-up, before the server accepts
/// writes, in transactions of 1,000 versions; the sequencer then numbers these leaves first
/// (they have the lowest `vkey`s). A version with no RFC 8785 form cannot be hashed and is
/// left out, counted in the log line (its key only: no patient data).
pub async fn backfill(store: &Store) -> Result<u64> {
    let mut total = 0;
    let mut unhashable = 0u64;
    let mut after = 0i64;
    loop {
        let done = store
            .write(async |conn| {
                let versions = store::versions_without_leaf(conn, after, 1000).await?;
                let mut skipped = unhashable;
                let mut leaves = Vec::with_capacity(versions.len());
                for version in &versions {
                    let served = match &version.body {
                        Some(body) => Json::parse_str(body)
                            .map(|(json, _)| json)
                            .map_err(|e| Error::Internal(anyhow::anyhow!("stored JSON: {e}")))?,
                        None => deletion_record(
                            &ResourceType::parse(&version.resource_type)?,
                            &ResourceId::parse(&version.id)?,
                            version.version_id,
                            version.last_updated,
                        ),
                    };
                    match leaf_of(&served) {
                        Ok(leaf) => leaves.push((version.vkey, leaf)),
                        Err(_) => {
                            tracing::warn!(
                                vkey = version.vkey,
                                "a stored version has no RFC 8785 form: no log leaf"
                            );
                            skipped += 1;
                        }
                    }
                }
                let rows: Vec<(i64, &anchor::Leaf)> = leaves.iter().map(|(k, l)| (*k, l)).collect();
                log::insert_leaves(conn, &rows).await?;
                let last = versions.last().map(|v| v.vkey);
                Ok((versions.len(), leaves.len(), last, skipped))
            })
            .await?;
        total += done.1 as u64;
        unhashable = done.3;
        match done.2 {
            Some(last) if done.0 == 1000 => after = last,
            _ => break,
        }
    }
    if total > 0 || unhashable > 0 {
        tracing::info!(
            leaves = total,
            unhashable,
            "log leaves given to versions stored before the anchored log"
        );
    }
    Ok(total)
}

/// `GET [base]/[type]/[id]/$proof` (current version) and
/// `GET [base]/[type]/[id]/_history/[vid]/$proof`.
pub async fn proof(
    conn: &mut AnyConnection,
    ctx: &super::Context,
    access: &crate::access::Access,
    resource_type: &ResourceType,
    id: &ResourceId,
    version: Option<VersionId>,
) -> Result<Outcome> {
    access
        .check(
            conn,
            &ctx.base_url,
            crate::auth::scopes::Permission::Read,
            resource_type.as_str(),
            id.as_str(),
        )
        .await?;
    let Some(leaf) = log::leaf_of(conn, resource_type.as_str(), id.as_str(), version).await? else {
        return Err(Error::NotFound {
            resource_type: resource_type.to_string(),
            id: match version {
                Some(version) => format!("{id}/_history/{version}"),
                None => id.to_string(),
            },
        });
    };
    let path = match (&leaf.batch, leaf.log_index) {
        (Some(batch), Some(index)) => {
            let leaves = log::batch_leaves(conn, batch.first_index, batch.size).await?;
            let tree = anchor::Batch::new(&leaves)
                .map_err(|e| Error::Internal(anyhow::anyhow!("rebuilding batch: {e}")))?;
            if tree.root() != batch.root {
                return Err(Error::Internal(anyhow::anyhow!(
                    "batch {} no longer has its sealed root",
                    batch.number
                )));
            }
            let proof = tree
                .proof((index - batch.first_index) as u64)
                .map_err(|e| Error::Internal(anyhow::anyhow!("inclusion proof: {e}")))?;
            Some(proof)
        }
        _ => None,
    };
    let body = parameters(resource_type, id, &leaf, path.as_ref());
    let touched =
        crate::audit::Touched::version(resource_type.as_str(), id.as_str(), leaf.version_id);
    Ok(Outcome::json(200, body).touching([touched]))
}

/// The Parameters of a proof, part by part as the README documents them.
fn parameters(
    resource_type: &ResourceType,
    id: &ResourceId,
    leaf: &StoredLeaf,
    path: Option<&anchor::InclusionProof>,
) -> Value {
    let status = match leaf.batch.as_ref().map(|b| b.state.as_str()) {
        Some("confirmed") => "anchored",
        Some("submitted") => "submitted",
        _ => "pending",
    };
    let mut parameter = vec![
        json!({"name": "status", "valueCode": status}),
        json!({"name": "version", "valueReference": {
            "reference": format!("{resource_type}/{id}/_history/{}", leaf.version_id)
        }}),
    ];
    if leaf.deleted {
        let record = deletion_record(resource_type, id, leaf.version_id, leaf.last_updated);
        let canonical = anchor::canonical_json(&record).unwrap_or_default();
        parameter.push(json!({
            "name": "deletion",
            "valueString": String::from_utf8_lossy(&canonical),
        }));
    }
    if let Some(erased_at) = leaf.erased_at {
        parameter.push(json!({"name": "erased", "valueInstant": erased_at.to_fhir()}));
    }
    if let Some(content_hash) = &leaf.content_hash {
        parameter.push(json!({"name": "contentHash", "valueString": content_hash.to_hex()}));
    }
    if let Some(salt) = &leaf.salt {
        parameter.push(json!({"name": "salt", "valueString": salt.to_hex()}));
    }
    parameter.push(json!({"name": "leafHash", "valueString": leaf.leaf_hash.to_hex()}));
    if let Some(index) = leaf.log_index {
        parameter.push(json!({"name": "logIndex", "valueDecimal": index}));
    }
    if let Some(batch) = &leaf.batch {
        parameter.push(json!({"name": "batch", "part": [
            {"name": "number", "valueDecimal": batch.number},
            {"name": "firstIndex", "valueDecimal": batch.first_index},
            {"name": "size", "valueDecimal": batch.size},
            {"name": "root", "valueString": batch.root.to_hex()},
            {"name": "state", "valueCode": batch.state},
        ]}));
    }
    if let Some(path) = path {
        let mut part = vec![
            json!({"name": "leafIndex", "valueDecimal": path.index}),
            json!({"name": "treeSize", "valueDecimal": path.tree_size}),
        ];
        part.extend(
            path.path
                .iter()
                .map(|hash| json!({"name": "hash", "valueString": hash.to_hex()})),
        );
        parameter.push(json!({"name": "inclusionPath", "part": part}));
    }
    if let Some(batch) = &leaf.batch
        && let (
            Some(chain_id),
            Some(contract),
            Some(anchorer),
            Some(tx_hash),
            Some(block),
            Some(block_hash),
        ) = (
            batch.chain_id,
            &batch.contract,
            &batch.anchorer,
            &batch.tx_hash,
            batch.block_number,
            &batch.block_hash,
        )
    {
        parameter.push(json!({"name": "anchor", "part": [
            {"name": "chainId", "valueDecimal": chain_id},
            {"name": "contract", "valueString": contract},
            {"name": "anchorer", "valueString": anchorer},
            {"name": "transactionHash", "valueString": tx_hash},
            {"name": "blockNumber", "valueDecimal": block},
            {"name": "blockHash", "valueString": block_hash},
        ]}));
    }
    json!({"resourceType": "Parameters", "parameter": parameter})
}
