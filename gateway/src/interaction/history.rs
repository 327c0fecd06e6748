//! `history` at instance, type and system level (http.html#history).
//!
//! Newest first, with `_since`, `_at` and `_count`; the `next` link carries a keyset cursor
//! (the position of the last version served), so pages stay stable while writes go on.
//! `_summary` and `_elements` subset every resource in the Bundle ([`crate::subset`]).
//!
//! A deletion appears as an entry without a resource (`DELETE`, `204 No Content`). A version
//! whose content was erased ([`crate::erasure`]) appears as it was written (its method and
//! status), without a resource, its `response.outcome` an OperationOutcome saying when it
//! was erased.

use serde_json::json;
use sqlx::AnyConnection;

use super::search::Handling;
use super::{Context, Outcome};
use crate::access::Access;
use crate::auth::scopes::Permission;
use crate::bundle::BundleWriter;
use crate::error::{Error, Result, information_outcome};
use crate::model::Instant;
use crate::store::{self, HistoryScope};
use crate::subset::{self, ResultParams, SearchMode, Subset};

/// Parameters of a history request.
#[derive(Debug, Default)]
pub struct HistoryParams {
    pub since: Option<Instant>,
    pub at: Option<Instant>,
    pub count: Option<usize>,
    pub before: Option<i64>,
    /// `_summary=true|text|data` or `_elements`.
    pub subset: Option<Subset>,
    /// `_summary` and `_elements` as applied, for the links.
    pub result_params: Vec<(String, String)>,
}

impl HistoryParams {
    /// Parses the query of a history of `resource_types` (empty: the system history).
    pub fn parse(
        query: &str,
        resource_types: &[&str],
        handling: Handling,
    ) -> Result<HistoryParams> {
        let mut params = HistoryParams::default();
        let mut result_params = ResultParams::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if result_params.take(&name, &value, resource_types, handling)? {
                continue;
            }
            let instant = || {
                Instant::parse_fhir(&value).ok_or_else(|| {
                    Error::Invalid(format!(
                        "{name}={value}: expected an instant with a time zone"
                    ))
                })
            };
            match name.as_ref() {
                "_since" => params.since = Some(instant()?),
                "_at" => params.at = Some(instant()?),
                "_count" => {
                    params.count = Some(value.parse().map_err(|_| {
                        Error::Invalid(format!("_count={value}: expected an integer"))
                    })?);
                }
                "_page" => {
                    params.before = Some(value.parse().map_err(|_| {
                        Error::Invalid("_page is not a paging cursor of this server".to_owned())
                    })?);
                }
                "_format" | "_pretty" => {}
                other => {
                    return Err(Error::Invalid(format!(
                        "{other} is not a parameter of the history interaction"
                    )));
                }
            }
        }
        params.subset = result_params.subset_outside_search()?;
        params.result_params = result_params.applied();
        Ok(params)
    }
}

/// `GET [base]/_history`, `GET [base]/[type]/_history`, `GET [base]/[type]/[id]/_history`
pub async fn history(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    scope: HistoryScope<'_>,
    params: HistoryParams,
) -> Result<Outcome> {
    match scope {
        HistoryScope::Instance(resource_type, id) => {
            access.allowed(Permission::Read, resource_type)?;
            if store::read_current(conn, resource_type, id)
                .await?
                .is_none()
            {
                return Err(Error::NotFound {
                    resource_type: resource_type.to_owned(),
                    id: id.to_owned(),
                });
            }
            access
                .check(conn, &ctx.base_url, Permission::Read, resource_type, id)
                .await?;
        }
        // past versions cannot be filtered by what a resource is now: type and system
        // history need a grant without restriction or compartment
        HistoryScope::Type(resource_type) => {
            if access.allowed(Permission::Read, resource_type)?.is_some() {
                return Err(Error::Forbidden(format!(
                    "the history of every {resource_type} is served only to tokens that may read every {resource_type} (a scope without restriction, outside a patient compartment); read the history of single resources instead"
                )));
            }
        }
        HistoryScope::System => {
            if access.allowed_types(Permission::Read, &[])?.is_some() {
                return Err(Error::Forbidden(
                    "the history of the whole server is served only to tokens that may read every resource, the audit trail among them (the operator's, or an auditor's with user/*.r without restriction); read the history of a type instead"
                        .to_owned(),
                ));
            }
        }
    }
    let count = params
        .count
        .unwrap_or(ctx.config.search.default_count)
        .clamp(1, ctx.config.search.max_count);
    let mut versions = store::history(
        conn,
        &scope,
        params.since,
        params.at,
        params.before,
        count + 1,
    )
    .await?;
    let next = if versions.len() > count {
        versions.truncate(count);
        versions.last().map(|v| v.vkey)
    } else {
        None
    };
    let path = match scope {
        HistoryScope::System => "/_history".to_owned(),
        HistoryScope::Type(t) => format!("/{t}/_history"),
        HistoryScope::Instance(t, id) => format!("/{t}/{id}/_history"),
    };
    let link = |before: Option<i64>| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(since) = params.since {
            query.append_pair("_since", &since.to_fhir());
        }
        if let Some(at) = params.at {
            query.append_pair("_at", &at.to_fhir());
        }
        for (name, value) in &params.result_params {
            query.append_pair(name, value);
        }
        query.append_pair("_count", &count.to_string());
        if let Some(before) = before.or(params.before) {
            query.append_pair("_page", &before.to_string());
        }
        format!("{}{path}?{}", ctx.base_url, query.finish())
    };
    let mut bundle = BundleWriter::new("history");
    bundle.link("self", &link(None));
    if let Some(before) = next {
        bundle.link("next", &link(Some(before)));
    }
    for version in &versions {
        let url = ctx.resource_url(&version.resource_type, &version.id);
        let request_url = match version.method.as_str() {
            "POST" => version.resource_type.clone(),
            _ => format!("{}/{}", version.resource_type, version.id),
        };
        let status = match (version.method.as_str(), version.version_id.get()) {
            ("DELETE", _) => "204 No Content",
            (_, 1) => "201 Created",
            _ => "200 OK",
        };
        let mut members = json!({
            "request": {"method": version.method, "url": request_url},
            "response": {"status": status, "etag": version.version_id.etag(), "lastModified": version.last_updated.to_fhir()},
        });
        if let Some(erased_at) = version.erased_at {
            members["response"]["outcome"] = information_outcome(&format!(
                "the content of this version was erased at {}",
                erased_at.to_fhir()
            ));
        }
        let body = version
            .body
            .as_deref()
            .map(|text| {
                subset::serve(
                    text,
                    params.subset.as_ref(),
                    &version.resource_type,
                    SearchMode::Match,
                )
            })
            .transpose()?;
        bundle.entry_with(Some(&url), body.as_deref(), &members);
    }
    let touched = versions.iter().map(|version| {
        crate::audit::Touched::version(&version.resource_type, &version.id, version.version_id)
    });
    Ok(Outcome::bundle(bundle.finish()).touching(touched))
}
