//! `update`, update-as-create and conditional update (http.html#update, http.html#cond-update).
//!
//! - The id in the URL must equal the id in the body.
//! - Update of an unknown id creates the resource with that id (201).
//! - `If-Match: W/"n"` makes the update version-aware: 412 unless `n` is current.
//! - Conditional update (`PUT [base]/[type]?criteria`): no match creates (with the body's
//!   id if it has one), one match updates it, more than one is 412.

use fhir_profiles::Json;
use sqlx::AnyConnection;

use super::{Checked, Context, Method, Outcome, search, store_version};
use crate::access::Access;
use crate::auth::scopes::Permission;
use crate::error::{Error, Result};
use crate::model::{ResourceId, ResourceType, VersionId};
use crate::{resource, store};

/// `PUT [base]/[type]/[id]`
pub async fn update(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    resource_type: &ResourceType,
    id: &ResourceId,
    checked: Checked,
    if_match: Option<VersionId>,
) -> Result<Outcome> {
    crate::audit::refuse_client_write(resource_type, "update")?;
    let Checked { body, issues } = checked;
    match resource::id_of(&body) {
        Some(body_id) if body_id == id.as_str() => {}
        Some(body_id) => {
            return Err(Error::Invalid(format!(
                "the id in the URL ({id}) differs from the id in the body ({body_id})"
            )));
        }
        None => {
            return Err(Error::Invalid(format!(
                "the body has no id; an update must carry the id of the URL ({id})"
            )));
        }
    }
    let current = store::current_for_update(conn, resource_type.as_str(), id.as_str()).await?;
    update_locked(
        conn,
        ctx,
        access,
        resource_type,
        id,
        body,
        issues,
        if_match,
        current,
    )
    .await
}

/// [`update`] of a resource whose state `current` was locked in this transaction.
#[allow(clippy::too_many_arguments)]
async fn update_locked(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    resource_type: &ResourceType,
    id: &ResourceId,
    body: Json,
    issues: Vec<fhir_profiles::validate::Issue>,
    if_match: Option<VersionId>,
    current: Option<store::Current>,
) -> Result<Outcome> {
    let permission = write_permission(current.as_ref());
    // the resource as it is must be within the scope, and so must what replaces it
    if permission == Permission::Update {
        access
            .check(
                conn,
                &ctx.base_url,
                permission,
                resource_type.as_str(),
                id.as_str(),
            )
            .await?;
    } else {
        access.allowed(permission, resource_type.as_str())?;
    }
    if let Some(expected) = if_match {
        match &current {
            Some(current) if !current.deleted && current.version_id == expected => {}
            Some(current) if !current.deleted => {
                return Err(Error::PreconditionFailed(format!(
                    "If-Match names version {expected} of {resource_type}/{id}, but the current version is {}",
                    current.version_id
                )));
            }
            _ => {
                return Err(Error::PreconditionFailed(format!(
                    "If-Match names version {expected} of {resource_type}/{id}, which does not exist"
                )));
            }
        }
    }
    let outcome = store_version(
        conn,
        ctx,
        resource_type,
        id,
        current.as_ref(),
        body,
        Method::Put,
    )
    .await?;
    access
        .check(
            conn,
            &ctx.base_url,
            permission,
            resource_type.as_str(),
            id.as_str(),
        )
        .await?;
    Ok(outcome.with_issues(issues))
}

/// An update of a resource that exists needs `u`; one that creates it (update as create) `c`.
pub(crate) fn write_permission(current: Option<&store::Current>) -> Permission {
    if current.is_some_and(|c| !c.deleted) {
        Permission::Update
    } else {
        Permission::Create
    }
}

/// `PUT [base]/[type]?[search parameters]`
pub async fn conditional_update(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    resource_type: &ResourceType,
    criteria: &str,
    checked: Checked,
    if_match: Option<VersionId>,
) -> Result<Outcome> {
    crate::audit::refuse_client_write(resource_type, "update")?;
    let Checked { body, issues } = checked;
    store::lock(conn, &format!("{resource_type}?{criteria}")).await?;
    let mut matches =
        search::matching_for_update(conn, ctx, access, resource_type, criteria, 2).await?;
    match (matches.pop(), matches.is_empty()) {
        (Some((id, current)), true) => {
            let checked = Checked { body, issues };
            update_matched(
                conn,
                ctx,
                access,
                resource_type,
                criteria,
                &id,
                current,
                checked,
                if_match,
            )
            .await
        }
        (None, _) => {
            let (id, current) = match resource::id_of(&body) {
                Some(body_id) => {
                    let id = ResourceId::parse(body_id)?;
                    let current =
                        store::current_for_update(conn, resource_type.as_str(), id.as_str())
                            .await?;
                    if current.as_ref().is_some_and(|c| !c.deleted) {
                        return Err(Error::Conflict(format!(
                            "no {resource_type} matches {criteria}, but the body's id {id} is taken by another resource"
                        )));
                    }
                    (id, current)
                }
                None => (ResourceId::generate(), None),
            };
            access.allowed(Permission::Create, resource_type.as_str())?;
            let outcome = store_version(
                conn,
                ctx,
                resource_type,
                &id,
                current.as_ref(),
                body,
                Method::Put,
            )
            .await?;
            access
                .check(
                    conn,
                    &ctx.base_url,
                    Permission::Create,
                    resource_type.as_str(),
                    id.as_str(),
                )
                .await?;
            Ok(outcome.with_issues(issues))
        }
        _ => Err(Error::PreconditionFailed(format!(
            "{criteria} matches more than one {resource_type}"
        ))),
    }
}

/// The update of a conditional update whose criteria matched exactly the resource `id`,
/// whose state `current` the match locked (under the lock on the criteria, in this
/// transaction): a transaction Bundle resolves its conditional updates before running them,
/// and does not search again.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn update_matched(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    resource_type: &ResourceType,
    criteria: &str,
    id: &ResourceId,
    current: store::Current,
    checked: Checked,
    if_match: Option<VersionId>,
) -> Result<Outcome> {
    let Checked { mut body, issues } = checked;
    if let Some(body_id) = resource::id_of(&body)
        && body_id != id.as_str()
    {
        return Err(Error::Invalid(format!(
            "the body's id ({body_id}) differs from the id of the resource matching {criteria} ({id})"
        )));
    }
    set_id(&mut body, id);
    crate::audit::refuse_client_write(resource_type, "update")?;
    update_locked(
        conn,
        ctx,
        access,
        resource_type,
        id,
        body,
        issues,
        if_match,
        Some(current),
    )
    .await
}

fn set_id(body: &mut Json, id: &ResourceId) {
    if let Some(object) = body.as_object_mut()
        && object.get_unique("id").ok().flatten().is_none()
    {
        object.insert("id".into(), Json::String(id.as_str().into()));
    }
}
