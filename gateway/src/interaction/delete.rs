//! `delete` and conditional delete (http.html#delete, http.html#cdelete).
//!
//! A delete writes a new version that is a tombstone; history keeps every earlier version.
//! Deleting a deleted or unknown resource succeeds without writing anything. The tombstone's
//! log leaf hashes [`proof::deletion_record`].

use sqlx::AnyConnection;

use super::{Body, Context, Method, Outcome, proof, search};
use crate::access::Access;
use crate::auth::scopes::Permission;
use crate::error::{Error, Result, information_outcome};
use crate::model::{Instant, ResourceId, ResourceType, VersionId};
use crate::store::{self, Current, VersionWrite};

/// `DELETE [base]/[type]/[id]`
pub async fn delete(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    resource_type: &ResourceType,
    id: &ResourceId,
) -> Result<Outcome> {
    crate::audit::refuse_client_write(resource_type, "delete")?;
    access.allowed(Permission::Delete, resource_type.as_str())?;
    let current = store::current_for_update(conn, resource_type.as_str(), id.as_str()).await?;
    let Some(current) = current.filter(|c| !c.deleted) else {
        return Ok(Outcome::json(
            200,
            information_outcome(&format!(
                "{resource_type}/{id} does not exist; nothing to delete"
            )),
        ));
    };
    // checked before the deletion, which removes the index rows a compartment is read from
    access
        .check(
            conn,
            &ctx.base_url,
            Permission::Delete,
            resource_type.as_str(),
            id.as_str(),
        )
        .await?;
    let (version, last_updated) = write_deletion(conn, &current, resource_type, id).await?;
    Ok(Outcome {
        status: 200,
        location: None,
        version: Some(version),
        last_modified: Some(last_updated),
        body: Body::Json(information_outcome(&format!(
            "deleted {resource_type}/{id} (version {version})"
        ))),
        issues: Vec::new(),
        touched: vec![crate::audit::Touched::version(
            resource_type.as_str(),
            id.as_str(),
            version,
        )],
        recorded: false,
    })
}

/// Writes the deletion tombstone of a resource that is not deleted (`current`, locked by
/// [`store::current_for_update`] in the same transaction) with its log leaf, and removes its
/// search index rows. Returns the tombstone's version and time. Erasure writes its deletion
/// through here too, so that it is in the log exactly as a `DELETE` is.
pub(crate) async fn write_deletion(
    conn: &mut AnyConnection,
    current: &Current,
    resource_type: &ResourceType,
    id: &ResourceId,
) -> Result<(VersionId, Instant)> {
    let version = current.version_id.next();
    let last_updated = Instant::now();
    let leaf = proof::leaf_of(&proof::deletion_record(
        resource_type,
        id,
        version,
        last_updated,
    ))?;
    store::write_version(
        conn,
        Some(current),
        &VersionWrite {
            resource_type: resource_type.as_str(),
            id: id.as_str(),
            version_id: version,
            last_updated,
            method: Method::Delete.as_str(),
            body: None,
            index: &[],
            words: &[],
            leaf: &leaf,
        },
    )
    .await?;
    Ok((version, last_updated))
}

/// `DELETE [base]/[type]?[search parameters]`: deletes the single match, if any.
pub async fn conditional_delete(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    resource_type: &ResourceType,
    criteria: &str,
) -> Result<Outcome> {
    crate::audit::refuse_client_write(resource_type, "delete")?;
    access.allowed(Permission::Delete, resource_type.as_str())?;
    let matches = search::matching_ids(conn, ctx, access, resource_type, criteria, 2).await?;
    match matches.as_slice() {
        [] => Ok(Outcome::json(
            200,
            information_outcome(&format!(
                "no {resource_type} matches {criteria}; nothing to delete"
            )),
        )),
        [id] => delete(conn, ctx, access, resource_type, id).await,
        _ => Err(Error::PreconditionFailed(format!(
            "{criteria} matches more than one {resource_type}; conditional delete removes one resource at a time"
        ))),
    }
}
