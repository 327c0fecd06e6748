//! `read` and `vread` (http.html#read, http.html#vread).
//!
//! A deleted resource answers 410 Gone; an unknown one 404. A version that is a deletion
//! answers 410 on vread too, and so does a version whose content was erased
//! ([`crate::erasure`]), with an OperationOutcome saying so.

use sqlx::AnyConnection;

use super::{Context, Outcome};
use crate::access::Access;
use crate::auth::scopes::Permission;
use crate::error::{Error, Result};
use crate::model::{ResourceId, ResourceType, VersionId};
use crate::store;

/// `GET [base]/[type]/[id]`
pub async fn read(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    resource_type: &ResourceType,
    id: &ResourceId,
) -> Result<Outcome> {
    // a token that may not read the type learns nothing, not even whether the id exists
    access.allowed(Permission::Read, resource_type.as_str())?;
    // the version and its consent check in one query
    let (stored, consented) = access
        .read_current(conn, &ctx.base_url, resource_type.as_str(), id.as_str())
        .await?
        .ok_or_else(|| not_found(resource_type, id))?;
    // an erased resource's current version is the deletion its erasure wrote
    if stored.is_deleted() || stored.erased_at.is_some() {
        return Err(Error::Gone {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
        });
    }
    access
        .check_scope(
            conn,
            &ctx.base_url,
            Permission::Read,
            resource_type.as_str(),
            id.as_str(),
        )
        .await?;
    if !consented {
        return Err(access.consent_refusal(resource_type.as_str(), id.as_str()));
    }
    Ok(Outcome::version(stored))
}

/// `GET [base]/[type]/[id]/_history/[vid]`: within the token's scopes when the resource is
/// as it is now (a restriction or compartment is checked on the current version).
pub async fn vread(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    resource_type: &ResourceType,
    id: &ResourceId,
    version: VersionId,
) -> Result<Outcome> {
    access.allowed(Permission::Read, resource_type.as_str())?;
    let Some(stored) =
        store::read_version(conn, resource_type.as_str(), id.as_str(), version).await?
    else {
        return Err(Error::NotFound {
            resource_type: resource_type.to_string(),
            id: format!("{id}/_history/{version}"),
        });
    };
    if let Some(erased_at) = stored.erased_at {
        return Err(Error::Erased {
            resource_type: resource_type.to_string(),
            id: format!("{id}/_history/{version}"),
            erased_at,
        });
    }
    if stored.is_deleted() {
        return Err(Error::Gone {
            resource_type: resource_type.to_string(),
            id: format!("{id}/_history/{version}"),
        });
    }
    access
        .check(
            conn,
            &ctx.base_url,
            Permission::Read,
            resource_type.as_str(),
            id.as_str(),
        )
        .await?;
    Ok(Outcome::version(stored))
}

fn not_found(resource_type: &ResourceType, id: &ResourceId) -> Error {
    Error::NotFound {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
    }
}
