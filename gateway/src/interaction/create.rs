//! `create` and conditional create (http.html#create, http.html#ccreate).
//!
//! The server assigns the id (any `id` in the body is ignored, as the spec says). With
//! `If-None-Exist: [search parameters]`, an existing match is returned instead (200, no new
//! version); more than one match is 412 Precondition Failed. Concurrent conditional creates
//! with the same criteria are serialized (`store::lock`), so they cannot both create.

use sqlx::AnyConnection;

use super::{Checked, Context, Method, Outcome, search, store_version};
use crate::access::Access;
use crate::auth::scopes::Permission;
use crate::error::{Error, Result};
use crate::model::{ResourceId, ResourceType};
use crate::store;

/// `POST [base]/[type]`
pub async fn create(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    resource_type: &ResourceType,
    checked: Checked,
    if_none_exist: Option<&str>,
) -> Result<Outcome> {
    crate::audit::refuse_client_write(resource_type, "create")?;
    access.allowed(Permission::Create, resource_type.as_str())?;
    let Checked { body, issues } = checked;
    if let Some(criteria) = if_none_exist {
        store::lock(conn, &format!("{resource_type}?{criteria}")).await?;
        let matches = search::matching_ids(conn, ctx, access, resource_type, criteria, 2).await?;
        match matches.as_slice() {
            [] => {}
            [id] => {
                let stored = store::read_current(conn, resource_type.as_str(), id.as_str())
                    .await?
                    .ok_or_else(|| {
                        Error::Internal(anyhow::anyhow!(
                            "a search match vanished inside its transaction"
                        ))
                    })?;
                access
                    .check(
                        conn,
                        &ctx.base_url,
                        Permission::Read,
                        resource_type.as_str(),
                        id.as_str(),
                    )
                    .await?;
                let location =
                    ctx.version_url(resource_type.as_str(), id.as_str(), stored.version_id);
                let mut outcome = Outcome::version(stored);
                outcome.location = Some(location);
                return Ok(outcome);
            }
            _ => {
                return Err(Error::PreconditionFailed(format!(
                    "If-None-Exist: {criteria} matches more than one {resource_type}"
                )));
            }
        }
    }
    let id = ResourceId::generate();
    let outcome = store_version(conn, ctx, resource_type, &id, None, body, Method::Post).await?;
    // what was written must be within the scope (the caller's transaction rolls back if not)
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
