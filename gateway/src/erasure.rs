//! Erasure (crypto-shredding, PRODUCT.md promise 8): removing a record for good while the
//! anchored log stays whole.
//!
//! [`erase`] takes a resource and, in one transaction:
//! 1. if it is not deleted, deletes it exactly as `DELETE` does: a tombstone version with its
//!    own log leaf, so the erasure itself is in the log and visible to auditors;
//! 2. removes the content of every earlier version that has some (deletion tombstones have
//!    none), and the salt and content hash of their log leaves; each version keeps its row
//!    (history lists it, `erased_at` set) and each leaf its `leaf_hash`, so the batch roots
//!    on chain and the proofs of every other version are unchanged, while the erased leaf can
//!    never again be linked to any content;
//! 3. removes the resource's search index rows and records the erasure (when, how many
//!    versions, the operator's reason) in the `erasure` table, and (when the gateway audits)
//!    stores its AuditEvent (subtype `urn:fhir-gateway:command|erase`), without the reason.
//!
//! On SQLite the transaction overwrites what it deletes with zeros (`secure_delete`), and the
//! `erase` command then empties the write-ahead log, so the erased content leaves the files.
//! What earlier updates freed, and what PostgreSQL keeps (dead rows until `VACUUM`, its WAL,
//! backups), is the operator's part (README, "Erasure").
//!
//! Erasing an erased resource changes nothing. There is no HTTP route (no SMART scope grants
//! erasure): it is an operator's command, `fhir-gateway erase` ([`crate::cli`]). Nothing here
//! logs the reason or any content.

use crate::error::{Error, Result};
use crate::interaction::Context;
use crate::interaction::delete::write_deletion;
use crate::model::{Instant, ResourceId, ResourceType, VersionId};
use crate::store::{self, Store};

/// What [`erase`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Erasure {
    /// Content was removed from `versions` versions; `deletion` is the tombstone written
    /// first when the resource was not deleted yet.
    Erased {
        versions: u64,
        deletion: Option<VersionId>,
    },
    /// The resource was already erased: nothing was written.
    AlreadyErased,
}

/// Erases every version of `resource_type/id` (see the module documentation), giving
/// `reason` for the record. With `audit` (the context of an audited gateway), the erasure's
/// AuditEvent commits with it (the operator, the resource and its patients; never the
/// reason). A resource the store does not know is an [`Error::NotFound`], and nothing is
/// written.
pub async fn erase(
    store: &Store,
    audit: Option<&Context>,
    resource_type: &ResourceType,
    id: &ResourceId,
    reason: &str,
) -> Result<Erasure> {
    store
        .write(async |conn| {
            store::erasure::overwrite_deleted_content(conn).await?;
            let current = store::current_for_update(conn, resource_type.as_str(), id.as_str())
                .await?
                .ok_or_else(|| Error::NotFound {
                    resource_type: resource_type.to_string(),
                    id: id.to_string(),
                })?;
            let deletion = if current.deleted {
                None
            } else {
                Some(write_deletion(conn, &current, resource_type, id).await?.0)
            };
            // on record before the content goes: the record's patients are read from it
            if let Some(ctx) = audit
                && (deletion.is_some() || store::erasure::has_content(conn, current.rkey).await?)
            {
                crate::audit::store_erasure(conn, ctx, resource_type.as_str(), id.as_str())
                    .await
                    .map_err(Error::Internal)?;
            }
            let now = Instant::now();
            let versions = store::erasure::erase_versions(conn, current.rkey, now).await?;
            if deletion.is_none() && versions == 0 {
                return Ok(Erasure::AlreadyErased);
            }
            store::erasure::record_erasure(conn, current.rkey, now, versions, reason).await?;
            Ok(Erasure::Erased { versions, deletion })
        })
        .await
}
