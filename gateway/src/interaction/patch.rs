//! `patch` with JSON Patch (http.html#patch, RFC 6902), and conditional patch.
//!
//! The patched resource is checked like any update. The id and `resourceType` cannot be
//! changed by a patch. `If-Match` makes it version-aware.
//!
//! JSON Patch is applied to a `serde_json` rendering of the resource, so decimal literals
//! in a patched resource are rewritten in their shortest form (`1.50` becomes `1.5`).

use sqlx::AnyConnection;

use super::{Context, Method, Outcome, check_body, search, store_version};
use crate::error::{Error, Result};
use crate::model::{ResourceId, ResourceType, VersionId};
use crate::{resource, store};

/// `PATCH [base]/[type]/[id]` with an `application/json-patch+json` body.
pub async fn patch(
    conn: &mut AnyConnection,
    ctx: &Context,
    resource_type: &ResourceType,
    id: &ResourceId,
    patch_body: &[u8],
    if_match: Option<VersionId>,
) -> Result<Outcome> {
    let operations: json_patch::Patch = serde_json::from_slice(patch_body)
        .map_err(|e| Error::Invalid(format!("the body is not a JSON Patch document: {e}")))?;
    let current = store::current_for_update(conn, resource_type.as_str(), id.as_str()).await?;
    let Some(current) = current else {
        return Err(Error::NotFound {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
        });
    };
    if current.deleted {
        return Err(Error::Gone {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
        });
    }
    if let Some(expected) = if_match
        && expected != current.version_id
    {
        return Err(Error::PreconditionFailed(format!(
            "If-Match names version {expected} of {resource_type}/{id}, but the current version is {}",
            current.version_id
        )));
    }
    let stored = store::read_current(conn, resource_type.as_str(), id.as_str())
        .await?
        .and_then(|v| v.body)
        .ok_or_else(|| {
            Error::Internal(anyhow::anyhow!(
                "current version of a locked resource has no body"
            ))
        })?;
    let mut document: serde_json::Value = serde_json::from_str(&stored)
        .map_err(|e| Error::Internal(anyhow::Error::new(e).context("stored JSON")))?;
    json_patch::patch(&mut document, &operations)
        .map_err(|e| Error::Unprocessable(format!("the patch cannot be applied: {e}")))?;
    if document.get("id").and_then(|v| v.as_str()) != Some(id.as_str()) {
        return Err(Error::Unprocessable(
            "a patch must not change or remove the resource id".to_owned(),
        ));
    }
    let body = resource::parse_json(
        document.to_string().as_bytes(),
        ctx.config.limits.max_json_depth,
    )?;
    let issues = check_body(ctx, &body, resource_type)?;
    store_version(
        conn,
        ctx,
        resource_type,
        id,
        Some(&current),
        body,
        Method::Patch,
    )
    .await
    .map(|outcome| outcome.with_issues(issues))
}

/// `PATCH [base]/[type]?[search parameters]`: patches the single match.
pub async fn conditional_patch(
    conn: &mut AnyConnection,
    ctx: &Context,
    resource_type: &ResourceType,
    criteria: &str,
    patch_body: &[u8],
    if_match: Option<VersionId>,
) -> Result<Outcome> {
    let matches = search::matching_ids(conn, ctx, resource_type, criteria, 2).await?;
    match matches.as_slice() {
        [] => Err(Error::NotFound {
            resource_type: resource_type.to_string(),
            id: format!("?{criteria}"),
        }),
        [id] => patch(conn, ctx, resource_type, id, patch_body, if_match).await,
        _ => Err(Error::PreconditionFailed(format!(
            "{criteria} matches more than one {resource_type}"
        ))),
    }
}
