//! `patch` and conditional patch (http.html#patch), with JSON Patch (RFC 6902) or FHIRPath
//! Patch (fhirpatch.html: a Parameters resource of operations).
//!
//! The patched resource is checked like any update; a result that is not valid answers 422
//! with every issue. The id and `resourceType` cannot be changed by a patch. `If-Match`
//! makes it version-aware.
//!
//! FHIRPath Patch works on the stored JSON as it is, so everything it does not touch stays
//! exactly as written. JSON Patch is applied to a `serde_json` rendering of the resource,
//! so decimal literals in a resource patched that way are rewritten in their shortest form
//! (`1.50` becomes `1.5`).

use fhir_profiles::Json;
use fhir_profiles::fhirpatch::{FhirPatch, PatchError};
use fhir_profiles::validate::UnknownProfile;
use json_syntax::Parse;
use sqlx::AnyConnection;

use super::{Context, Method, Outcome, check_body, search, store_version};
use crate::access::Access;
use crate::auth::scopes::Permission;
use crate::config::ValidationConfig;
use crate::error::{Error, Result};
use crate::model::{ResourceId, ResourceType, VersionId};
use crate::{resource, store};

/// The changes a PATCH asks for, in one of the two formats.
#[derive(Debug)]
pub enum PatchDocument {
    /// `application/json-patch+json`.
    JsonPatch(json_patch::Patch),
    /// `application/fhir+json`: a Parameters resource of FHIRPath Patch operations.
    FhirPath(FhirPatch),
}

impl PatchDocument {
    /// Reads a JSON Patch document.
    pub fn json_patch(body: &[u8]) -> Result<PatchDocument> {
        serde_json::from_slice(body)
            .map(PatchDocument::JsonPatch)
            .map_err(|e| Error::Invalid(format!("the body is not a JSON Patch document: {e}")))
    }

    /// Reads a FHIRPath Patch from a Parameters resource, which must be valid as a resource
    /// and as a patch (400 otherwise).
    pub fn fhirpath(parameters: &Json) -> Result<PatchDocument> {
        if resource::resource_type_of(parameters)?.as_str() != "Parameters" {
            return Err(Error::Invalid(
                "a FHIRPath Patch is a Parameters resource".to_owned(),
            ));
        }
        // the patch document itself: its structure only (profiles it may claim do not matter)
        let structure_only = ValidationConfig {
            unknown_profile: UnknownProfile::Ignore,
            r4b_check: false,
        };
        resource::validate(parameters, &structure_only, None)?;
        FhirPatch::parse(parameters)
            .map(PatchDocument::FhirPath)
            .map_err(|e| Error::Invalid(e.to_string()))
    }
}

/// `PATCH [base]/[type]/[id]`
pub async fn patch(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    resource_type: &ResourceType,
    id: &ResourceId,
    document: &PatchDocument,
    if_match: Option<VersionId>,
) -> Result<Outcome> {
    crate::audit::refuse_client_write(resource_type, "patch")?;
    let found =
        store::current_with_body_for_update(conn, resource_type.as_str(), id.as_str()).await?;
    let Some((current, stored)) = found else {
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
    access
        .check(
            conn,
            &ctx.base_url,
            Permission::Update,
            resource_type.as_str(),
            id.as_str(),
        )
        .await?;
    if let Some(expected) = if_match
        && expected != current.version_id
    {
        return Err(Error::PreconditionFailed(format!(
            "If-Match names version {expected} of {resource_type}/{id}, but the current version is {}",
            current.version_id
        )));
    }
    let stored = stored.ok_or_else(|| {
        Error::Internal(anyhow::anyhow!(
            "the current version of a resource that is not deleted has no body"
        ))
    })?;
    let body = match document {
        PatchDocument::JsonPatch(operations) => {
            let mut document: serde_json::Value = serde_json::from_str(&stored)
                .map_err(|e| Error::Internal(anyhow::Error::new(e).context("stored JSON")))?;
            json_patch::patch(&mut document, operations)
                .map_err(|e| Error::Unprocessable(format!("the patch cannot be applied: {e}")))?;
            resource::parse_json(
                document.to_string().as_bytes(),
                ctx.config.limits.max_json_depth,
            )?
        }
        PatchDocument::FhirPath(operations) => {
            let (mut document, _) = Json::parse_str(&stored)
                .map_err(|e| Error::Internal(anyhow::anyhow!("stored JSON does not parse: {e}")))?;
            operations.apply(&mut document).map_err(|e| match e {
                PatchError::Malformed(message) => Error::Invalid(message),
                PatchError::Unprocessable(message) => Error::Unprocessable(message),
            })?;
            document
        }
    };
    if resource::id_of(&body) != Some(id.as_str()) {
        return Err(Error::Unprocessable(
            "a patch must not change or remove the resource id".to_owned(),
        ));
    }
    let issues = check_body(ctx, &body, resource_type).map_err(|e| match e {
        Error::InvalidResource(issues) => Error::InvalidPatchResult(issues),
        Error::Invalid(message) => Error::Unprocessable(message),
        other => other,
    })?;
    let outcome = store_version(
        conn,
        ctx,
        resource_type,
        id,
        Some(&current),
        body,
        Method::Patch,
    )
    .await?;
    // the patched resource must stay within the scope (else the transaction rolls back)
    access
        .check(
            conn,
            &ctx.base_url,
            Permission::Update,
            resource_type.as_str(),
            id.as_str(),
        )
        .await?;
    Ok(outcome.with_issues(issues))
}

/// `PATCH [base]/[type]?[search parameters]`: patches the single match.
pub async fn conditional_patch(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    resource_type: &ResourceType,
    criteria: &str,
    document: &PatchDocument,
    if_match: Option<VersionId>,
) -> Result<Outcome> {
    crate::audit::refuse_client_write(resource_type, "patch")?;
    access.allowed(Permission::Update, resource_type.as_str())?;
    let matches = search::matching_ids(conn, ctx, access, resource_type, criteria, 2).await?;
    match matches.as_slice() {
        [] => Err(Error::NotFound {
            resource_type: resource_type.to_string(),
            id: format!("?{criteria}"),
        }),
        [id] => patch(conn, ctx, access, resource_type, id, document, if_match).await,
        _ => Err(Error::PreconditionFailed(format!(
            "{criteria} matches more than one {resource_type}"
        ))),
    }
}
