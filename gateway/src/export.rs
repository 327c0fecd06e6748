//! FHIR Bulk Data Access 2.0 `$export` (https://hl7.org/fhir/uv/bulkdata/export.html).
//!
//! - Kick-off: `GET [base]/$export`, `[base]/Patient/$export`, `[base]/Group/[id]/$export`
//!   with `Prefer: respond-async`; `_type`, `_since`, `_typeFilter`, `_outputFormat`
//!   (NDJSON only). Answers 202 with `Content-Location` = the status URL. Only Backend
//!   Services clients (no user) and the operator may export; every exported type must be
//!   readable (`r`) by the token's scopes (`system/*.r`, `system/Observation.rs`...).
//! - Status: `GET [base]/$export-status/[job]`: 202 with `X-Progress` and `Retry-After` while
//!   it runs, 200 with the manifest once done, the job's error status with an
//!   OperationOutcome if it failed; `DELETE` cancels (or removes a finished job): 202, then 404.
//! - Files: `GET [base]/$export-file/[job]/[n]` (`application/fhir+ndjson`); the manifest
//!   says `requiresAccessToken: true` when the API needs tokens, and only the client that
//!   asked for the export may poll, cancel or download.
//!
//! **Consent and scopes.** The requester's access (actor, client, scopes, purpose of use) is
//! captured at kick-off and stored with the job; the worker rebuilds it and takes the consent
//! gate *at export time* (`Consent::gate`), then selects every type through
//! `Access::allowed` — the condition a search puts in its query (scopes' restrictions and
//! compartments, and the consent filter for patient data) — with the search machinery
//! (`store::search::page`). Nothing consent does not cover is ever written to a file; a
//! consent index older than its bound fails the job closed.
//!
//! **Durability.** Jobs are rows of `export_job`, output files rows of `export_file` (their
//! NDJSON content in the database, so any replica serves them). A worker in every `serve`
//! process claims a waiting job with a lease it renews while working; a job whose worker
//! died (a restart, a crash) is claimed again when its lease runs out, its partial files are
//! dropped and it starts over, at most [`MAX_ATTEMPTS`] times, then it is marked failed.
//! Jobs and their files are removed [`RETENTION_SECS`] after they finish.
//!
//! What a file holds: the current version of each matching resource, read page by page
//! (each page one query). `transactionTime` is when the worker started the job; a resource
//! updated while the job runs is exported in its newer form (the spec's SHALL is that
//! nothing changed up to `transactionTime` is missed; its SHOULD NOT, newer states, is what
//! a snapshot would cost), and a later `_since` export has it again.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use fhir_profiles::compartment::{patient_compartment_params, patient_compartment_types};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{AnyConnection, Row};

use crate::access::{Access, Actor};
use crate::auth::scopes::{Permission, ScopeSet};
use crate::consent::{Consent, Gate};
use crate::error::{Error, Result};
use crate::interaction::Context;
use crate::interaction::search::parse_filter;
use crate::model::{Instant, ResourceId, ResourceType};
use crate::rest::AppState;
use crate::store::Store;
use crate::store::search::{self as search_sql, Alternative, Filter, TypeCondition};

/// Resources per output file; a type with more is split over several files.
pub const FILE_RESOURCES: usize = 10_000;
/// Resources per query while exporting.
const PAGE: usize = 1_000;
/// How long a claimed job is a worker's without it renewing the claim.
const LEASE_MS: i64 = 60_000;
/// How often a job whose worker died is started again before it is marked failed.
pub const MAX_ATTEMPTS: i64 = 3;
/// How long a finished job and its files are kept.
pub const RETENTION_SECS: i64 = 24 * 3600;
/// How often an idle worker looks for jobs.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// The `Retry-After` of a status request while the job runs.
const RETRY_AFTER_SECS: u32 = 1;
/// Patients a Group may name for an export (bound parameters of one query).
const MAX_GROUP_MEMBERS: usize = 20_000;

/// The routes, mounted under the FHIR base before the `[type]/[id]` routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/$export").route(web::get().to(kick_off_system)))
        .service(web::resource("/Patient/$export").route(web::get().to(kick_off_patient)))
        .service(web::resource("/Group/{id}/$export").route(web::get().to(kick_off_group)))
        .service(
            web::resource("/$export-status/{job}")
                .route(web::get().to(status))
                .route(web::delete().to(cancel)),
        )
        .service(web::resource("/$export-file/{job}/{n}").route(web::get().to(file)));
}

/// Which resources an export covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "level", rename_all = "lowercase")]
enum Level {
    System,
    Patient,
    Group { id: String },
}

/// What a kick-off asked for, stored with the job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Request {
    level: Level,
    /// The kick-off URL (the manifest's `request`).
    url: String,
    types: Vec<String>,
    /// `_since`, in milliseconds since the epoch.
    since: Option<i64>,
    /// `_typeFilter` queries (`Type?params`), checked at kick-off.
    type_filters: Vec<String>,
}

/// The requester's access, as captured at kick-off (no token: what it granted).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Captured {
    actor: CapturedActor,
    client_id: Option<String>,
    scope: String,
    patient: Option<String>,
    encounter: Option<String>,
    purpose_of_use: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum CapturedActor {
    Operator,
    Client,
}

impl Captured {
    fn of(access: &Access) -> Result<Captured> {
        let actor = match &access.actor {
            Actor::Operator => CapturedActor::Operator,
            Actor::Client => CapturedActor::Client,
            Actor::User { .. } => {
                return Err(Error::Forbidden(
                    "$export is for Backend Services: a client acting for itself with system/ scopes \
                     (client_credentials), not a user's app"
                        .to_owned(),
                ));
            }
        };
        Ok(Captured {
            actor,
            client_id: access.client_id.clone(),
            scope: access.scopes.to_string(),
            patient: access.patient.clone(),
            encounter: access.encounter.clone(),
            purpose_of_use: access.purpose_of_use.clone(),
        })
    }

    /// The access again, with its consent gate to be taken now.
    fn restore(&self) -> Access {
        let mut access = Access::operator(Some(&self.purpose_of_use));
        if let CapturedActor::Client = self.actor {
            access.actor = Actor::Client;
            access.client_id = self.client_id.clone();
            access.scopes = ScopeSet::parse_lenient(&self.scope);
            access.patient = self.patient.clone();
            access.encounter = self.encounter.clone();
        }
        access
    }
}

/// Whether `access` is the requester of a job with `client_id` (the operator's jobs have none).
fn is_requester(access: &Access, client_id: Option<&str>) -> bool {
    match &access.actor {
        Actor::Operator => client_id.is_none(),
        Actor::Client => access.client_id.as_deref() == client_id && client_id.is_some(),
        Actor::User { kind: _, .. } => false,
    }
}

async fn kick_off_system(
    req: HttpRequest,
    state: web::Data<AppState>,
    access: Access,
) -> Result<HttpResponse> {
    kick_off(&req, &state, &access, Level::System).await
}

async fn kick_off_patient(
    req: HttpRequest,
    state: web::Data<AppState>,
    access: Access,
) -> Result<HttpResponse> {
    kick_off(&req, &state, &access, Level::Patient).await
}

async fn kick_off_group(
    req: HttpRequest,
    state: web::Data<AppState>,
    access: Access,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let id = ResourceId::parse(&path.into_inner())?;
    kick_off(
        &req,
        &state,
        &access,
        Level::Group {
            id: id.as_str().to_owned(),
        },
    )
    .await
}

/// The types an export at `level` may hold.
fn level_types(level: &Level) -> Vec<String> {
    let mut types: Vec<String> = match level {
        Level::System => fhir_profiles::Definitions::r4()
            .resource_types()
            .into_iter()
            .filter(|t| *t != "Consent") // a projection of the consent index, not stored
            .map(str::to_owned)
            .collect(),
        Level::Patient | Level::Group { .. } => std::iter::once("Patient")
            .chain(patient_compartment_types())
            .filter(|t| *t != "Consent")
            .map(str::to_owned)
            .collect(),
    };
    types.sort();
    types.dedup();
    types
}

async fn kick_off(
    req: &HttpRequest,
    state: &AppState,
    access: &Access,
    level: Level,
) -> Result<HttpResponse> {
    let captured = Captured::of(access)?;
    let async_preferred = req
        .headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "respond-async");
    if !async_preferred {
        return Err(Error::Invalid(
            "a Bulk Data kick-off needs the header Prefer: respond-async".to_owned(),
        ));
    }
    let allowed = level_types(&level);
    let mut types: Option<Vec<String>> = None;
    let mut since = None;
    let mut type_filters = Vec::new();
    for pair in req.query_string().split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(raw_name);
        match name.as_str() {
            "_outputFormat" => {
                let format = decode(raw_value);
                if !matches!(
                    format.as_str(),
                    "application/fhir+ndjson" | "application/ndjson" | "ndjson"
                ) {
                    return Err(Error::Invalid(format!(
                        "_outputFormat={format}: this server exports application/fhir+ndjson only"
                    )));
                }
            }
            "_type" => {
                let list = types.get_or_insert_with(Vec::new);
                for t in decode(raw_value).split(',').map(str::trim) {
                    let t = ResourceType::parse(t)?.to_string();
                    if !allowed.contains(&t) {
                        return Err(Error::Invalid(format!(
                            "_type={t}: an export at this level holds the Patient and the types \
                             of the Patient compartment; {t} is not one of them"
                        )));
                    }
                    if !list.contains(&t) {
                        list.push(t);
                    }
                }
            }
            "_since" => {
                let value = decode(raw_value);
                since = Some(
                    Instant::parse_fhir(&value)
                        .ok_or_else(|| {
                            Error::Invalid(format!("_since={value} is not a FHIR instant"))
                        })?
                        .millis(),
                );
            }
            // a comma-separated list of queries: split before decoding, so that an encoded
            // comma inside a query stays in it
            "_typeFilter" => type_filters.extend(raw_value.split(',').map(decode)),
            other => {
                return Err(Error::NotSupported(format!(
                    "the export parameter {other} is not supported (supported: _outputFormat, \
                     _type, _since, _typeFilter)"
                )));
            }
        }
    }
    // every type asked for must be readable; without _type, those the token can read
    let types = match types {
        Some(types) => {
            for t in &types {
                access.allowed(Permission::Read, t)?;
            }
            types
        }
        None => {
            let mut readable = Vec::new();
            for t in allowed {
                match access.allowed(Permission::Read, &t) {
                    Ok(_) => readable.push(t),
                    Err(Error::Forbidden(_)) => {}
                    Err(other) => return Err(other),
                }
            }
            if readable.is_empty() {
                return Err(Error::Forbidden(
                    "the token's scopes let it read none of the types of this export (system/*.r \
                     or system/[type].r)"
                        .to_owned(),
                ));
            }
            readable
        }
    };
    for query in &type_filters {
        type_filter(query, &types)?;
    }
    if let Level::Group { id } = &level {
        let mut conn = state.store.reader().await?;
        access
            .check(
                &mut conn,
                &state.ctx.base_url,
                Permission::Read,
                "Group",
                id,
            )
            .await?;
        group_members(&mut conn, id).await?;
    }
    let base = &state.ctx.base_url;
    let origin = &base[..base.len() - base_path(base).len()];
    let url = format!(
        "{origin}{}",
        req.uri()
            .path_and_query()
            .map_or_else(|| req.path().to_owned(), |p| p.as_str().to_owned())
    );
    let request = Request {
        level,
        url,
        types,
        since,
        type_filters,
    };
    let job = uuid::Uuid::new_v4().simple().to_string();
    let now = Instant::now().millis();
    let access_json = serde_json::to_string(&captured).map_err(anyhow::Error::from)?;
    let request_json = serde_json::to_string(&request).map_err(anyhow::Error::from)?;
    state
        .store
        .write(async |conn| {
            sqlx::query(
                "INSERT INTO export_job (id, client_id, access, request, state, attempts, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, 'accepted', 0, $5, $5)",
            )
            .bind(&job)
            .bind(captured.client_id.as_deref())
            .bind(&access_json)
            .bind(&request_json)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok(())
        })
        .await?;
    tracing::info!(job = %job, "bulk export accepted");
    Ok(HttpResponse::Accepted()
        .insert_header((
            "Content-Location",
            format!("{}/$export-status/{job}", state.ctx.base_url),
        ))
        .content_type(crate::rest::format::FHIR_JSON)
        .body(
            crate::error::information_outcome("the export was accepted; poll Content-Location")
                .to_string(),
        ))
}

/// The path part of the base URL (`/fhir`), which the request's path already starts with.
fn base_path(base_url: &str) -> String {
    let rest = base_url.split_once("://").map_or(base_url, |(_, r)| r);
    rest.find('/').map_or(String::new(), |i| {
        rest[i..].trim_end_matches('/').to_owned()
    })
}

fn decode(raw: &str) -> String {
    form_urlencoded::parse(format!("x={raw}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A `_typeFilter` query (`Type?name=value&...`) as a filter on its type.
fn type_filter(query: &str, types: &[String]) -> Result<(String, Vec<Filter>)> {
    let (t, params) = query.split_once('?').ok_or_else(|| {
        Error::Invalid(format!(
            "_typeFilter={query}: expected [type]?[search parameters]"
        ))
    })?;
    let t = ResourceType::parse(t)?.to_string();
    if !types.contains(&t) {
        return Err(Error::Invalid(format!(
            "_typeFilter={query}: {t} is not among the exported types"
        )));
    }
    let mut filters = Vec::new();
    for (name, value) in form_urlencoded::parse(params.as_bytes()) {
        filters.push(parse_filter(&t, &name, &value)?);
    }
    if filters.is_empty() {
        return Err(Error::Invalid(format!(
            "_typeFilter={query}: no search parameter"
        )));
    }
    Ok((t, filters))
}

/// The Patient ids a Group names as (active) members.
async fn group_members(conn: &mut AnyConnection, id: &str) -> Result<Vec<String>> {
    let group = crate::store::read_current(conn, "Group", id)
        .await?
        .filter(|v| v.body.is_some())
        .ok_or_else(|| Error::NotFound {
            resource_type: "Group".to_owned(),
            id: id.to_owned(),
        })?;
    let body: serde_json::Value =
        serde_json::from_str(group.body.as_deref().unwrap_or("{}")).map_err(anyhow::Error::from)?;
    let mut members: Vec<String> = body["member"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["inactive"] != json!(true))
        .filter_map(|m| m["entity"]["reference"].as_str())
        .filter_map(|r| r.strip_prefix("Patient/"))
        .map(str::to_owned)
        .collect();
    members.sort();
    members.dedup();
    if members.len() > MAX_GROUP_MEMBERS {
        return Err(Error::Unprocessable(format!(
            "Group/{id} has {} patients; an export covers at most {MAX_GROUP_MEMBERS}",
            members.len()
        )));
    }
    Ok(members)
}

/// A job as the status and file endpoints see it.
struct Job {
    client_id: Option<String>,
    request: Request,
    state: String,
    progress: Option<String>,
    error: Option<String>,
    error_status: Option<i64>,
    transaction_time: Option<i64>,
}

async fn load_job(store: &Store, access: &Access, job: &str) -> Result<Job> {
    let mut conn = store.reader().await?;
    let row = sqlx::query(
        "SELECT client_id, request, state, progress, error, error_status, transaction_time \
         FROM export_job WHERE id = $1",
    )
    .bind(job)
    .fetch_optional(&mut *conn)
    .await?;
    let not_found = || Error::NotFound {
        resource_type: "$export job".to_owned(),
        id: job.to_owned(),
    };
    let row = row.ok_or_else(not_found)?;
    let client_id: Option<String> = row.try_get("client_id")?;
    if !is_requester(access, client_id.as_deref()) {
        return Err(Error::Forbidden(
            "only the client that requested this export may see it".to_owned(),
        ));
    }
    let request: String = row.try_get("request")?;
    Ok(Job {
        client_id,
        request: serde_json::from_str(&request).map_err(anyhow::Error::from)?,
        state: row.try_get("state")?,
        progress: row.try_get("progress")?,
        error: row.try_get("error")?,
        error_status: row.try_get("error_status")?,
        transaction_time: row.try_get("transaction_time")?,
    })
}

async fn status(
    state: web::Data<AppState>,
    access: Access,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let id = path.into_inner();
    let job = load_job(&state.store, &access, &id).await?;
    match job.state.as_str() {
        "completed" => {
            let mut conn = state.store.reader().await?;
            let rows = sqlx::query(
                "SELECT seq, resource_type, count FROM export_file WHERE job_id = $1 ORDER BY seq",
            )
            .bind(&id)
            .fetch_all(&mut *conn)
            .await?;
            let mut output = Vec::with_capacity(rows.len());
            for row in rows {
                let seq: i64 = row.try_get("seq")?;
                let resource_type: String = row.try_get("resource_type")?;
                let count: i64 = row.try_get("count")?;
                output.push(json!({
                    "type": resource_type,
                    "url": format!("{}/$export-file/{id}/{seq}", state.ctx.base_url),
                    "count": count,
                }));
            }
            let manifest = json!({
                "transactionTime": Instant::from_millis(job.transaction_time.unwrap_or(0)).to_fhir(),
                "request": job.request.url,
                "requiresAccessToken": job.client_id.is_some(),
                "output": output,
                "error": [],
            });
            Ok(HttpResponse::Ok()
                .content_type("application/json")
                .body(manifest.to_string()))
        }
        "failed" => {
            let status = job
                .error_status
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| actix_web::http::StatusCode::from_u16(s).ok())
                .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
            Ok(HttpResponse::build(status)
                .content_type(crate::rest::format::FHIR_JSON)
                .body(job.error.unwrap_or_else(|| {
                    crate::error::information_outcome("the export failed").to_string()
                })))
        }
        _ => Ok(HttpResponse::Accepted()
            .insert_header((
                "X-Progress",
                job.progress
                    .unwrap_or_else(|| "waiting for a worker".to_owned()),
            ))
            .insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()))
            .finish()),
    }
}

async fn cancel(
    state: web::Data<AppState>,
    access: Access,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let id = path.into_inner();
    load_job(&state.store, &access, &id).await?;
    state
        .store
        .write(async |conn| delete_job(conn, &id).await)
        .await?;
    tracing::info!(job = %id, "bulk export cancelled or removed");
    Ok(HttpResponse::Accepted()
        .content_type(crate::rest::format::FHIR_JSON)
        .body(
            crate::error::information_outcome("the export is cancelled and its files removed")
                .to_string(),
        ))
}

async fn delete_job(conn: &mut AnyConnection, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM export_file WHERE job_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM export_job WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn file(
    state: web::Data<AppState>,
    access: Access,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (id, n) = path.into_inner();
    let job = load_job(&state.store, &access, &id).await?;
    let not_found = || Error::NotFound {
        resource_type: "$export file".to_owned(),
        id: format!("{id}/{n}"),
    };
    let seq: i64 = n.parse().map_err(|_| not_found())?;
    if job.state != "completed" {
        return Err(not_found());
    }
    let mut conn = state.store.reader().await?;
    let content: Option<String> =
        sqlx::query_scalar("SELECT content FROM export_file WHERE job_id = $1 AND seq = $2")
            .bind(&id)
            .bind(seq)
            .fetch_optional(&mut *conn)
            .await?;
    let content = content.ok_or_else(not_found)?;
    Ok(HttpResponse::Ok()
        .content_type("application/fhir+ndjson")
        .body(content))
}

/// The background worker of a `serve` process: runs export jobs one at a time.
#[derive(Debug)]
pub struct Exporter {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Exporter {
    pub fn spawn(store: Store, ctx: Context, consent: Option<Arc<Consent>>) -> Exporter {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let worker = uuid::Uuid::new_v4().simple().to_string();
        let task = tokio::spawn(async move {
            let mut last_cleanup = 0;
            loop {
                if *stopped.borrow() {
                    return;
                }
                let now = Instant::now().millis();
                if now - last_cleanup > 60_000 {
                    last_cleanup = now;
                    if let Err(error) = remove_expired(&store).await {
                        tracing::warn!(error = %error, "removing expired exports failed");
                    }
                }
                let claimed = match claim(&store, &worker).await {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        tracing::warn!(error = %error, "looking for export jobs failed");
                        None
                    }
                };
                match claimed {
                    Some(job) => {
                        let work = run_job(&store, &ctx, consent.as_deref(), &worker, &job);
                        tokio::select! {
                            () = work => {}
                            _ = stopped.changed() => return, // the lease runs out; another worker resumes
                        }
                    }
                    None => {
                        tokio::select! {
                            () = tokio::time::sleep(IDLE_POLL) => {}
                            _ = stopped.changed() => return,
                        }
                    }
                }
            }
        });
        Exporter { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// A job this worker claimed.
struct Claimed {
    id: String,
    access: Captured,
    request: Request,
    attempts: i64,
}

/// Claims the oldest waiting job, or one whose worker's lease ran out.
async fn claim(store: &Store, worker: &str) -> Result<Option<Claimed>> {
    // explicit transactions in the worker (not `Store::write`'s closures): its future must be
    // `Send` for `tokio::spawn`, which those closures' borrowed captures defeat
    let mut tx = store.begin().await?;
    let now = Instant::now().millis();
    let id: Option<String> = sqlx::query_scalar(
        "SELECT id FROM export_job WHERE state = 'accepted' \
         OR (state = 'running' AND lease_until < $1) ORDER BY created_at LIMIT 1",
    )
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else { return Ok(None) };
    // the state is checked again by the UPDATE itself: one claimant wins
    let row = sqlx::query(
        "UPDATE export_job SET state = 'running', worker = $1, lease_until = $2, \
         attempts = attempts + 1, updated_at = $3 WHERE id = $4 \
         AND (state = 'accepted' OR (state = 'running' AND lease_until < $3)) \
         RETURNING access, request, attempts",
    )
    .bind(worker)
    .bind(now + LEASE_MS)
    .bind(now)
    .bind(&id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    // a job started before by a worker that died starts over
    sqlx::query("DELETE FROM export_file WHERE job_id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    let access: String = row.try_get("access")?;
    let request: String = row.try_get("request")?;
    let attempts: i64 = row.try_get("attempts")?;
    tx.commit().await?;
    Ok(Some(Claimed {
        id,
        access: serde_json::from_str(&access).map_err(anyhow::Error::from)?,
        request: serde_json::from_str(&request).map_err(anyhow::Error::from)?,
        attempts,
    }))
}

async fn remove_expired(store: &Store) -> Result<()> {
    let before = Instant::now().millis() - RETENTION_SECS * 1000;
    let mut tx = store.begin().await?;
    sqlx::query(
        "DELETE FROM export_file WHERE job_id IN (SELECT id FROM export_job \
         WHERE state IN ('completed', 'failed') AND updated_at < $1)",
    )
    .bind(before)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM export_job WHERE state IN ('completed', 'failed') AND updated_at < $1",
    )
    .bind(before)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Why a job stopped without finishing.
enum Stop {
    /// The job was cancelled (deleted) or claimed by another worker: nothing more to do.
    Lost,
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(error: Error) -> Stop {
        Stop::Failed(error)
    }
}

impl From<sqlx::Error> for Stop {
    fn from(error: sqlx::Error) -> Stop {
        Stop::Failed(error.into())
    }
}

async fn run_job(
    store: &Store,
    ctx: &Context,
    consent: Option<&Consent>,
    worker: &str,
    job: &Claimed,
) {
    if job.attempts > MAX_ATTEMPTS {
        let error = Error::Internal(anyhow::anyhow!(
            "the export was interrupted {MAX_ATTEMPTS} times"
        ));
        finish(store, worker, &job.id, Err(&error)).await;
        return;
    }
    tracing::info!(job = %job.id, attempt = job.attempts, "bulk export started");
    match export(store, ctx, consent, worker, job).await {
        Ok(()) => {
            finish(store, worker, &job.id, Ok(())).await;
            tracing::info!(job = %job.id, "bulk export completed");
        }
        Err(Stop::Lost) => {
            tracing::info!(job = %job.id, "bulk export cancelled or taken over");
        }
        Err(Stop::Failed(error)) => {
            tracing::warn!(job = %job.id, error = %error, "bulk export failed");
            finish(store, worker, &job.id, Err(&error)).await;
        }
    }
}

/// Records the end of a job this worker holds.
async fn finish(store: &Store, worker: &str, id: &str, result: std::result::Result<(), &Error>) {
    let (state, error, status) = match result {
        Ok(()) => ("completed", None, None),
        Err(error) => {
            let status = actix_web::ResponseError::status_code(error).as_u16();
            let outcome = if status >= 500 && !matches!(error, Error::Unavailable(_)) {
                crate::error::Error::Internal(anyhow::anyhow!("the export failed"))
                    .operation_outcome()
            } else {
                error.operation_outcome()
            };
            ("failed", Some(outcome.to_string()), Some(i64::from(status)))
        }
    };
    let written: std::result::Result<(), sqlx::Error> = async {
        let mut tx = store.begin().await?;
        sqlx::query(
            "UPDATE export_job SET state = $1, error = $2, error_status = $3, updated_at = $4, \
             progress = NULL WHERE id = $5 AND worker = $6 AND state = 'running'",
        )
        .bind(state)
        .bind(error.as_deref())
        .bind(status)
        .bind(Instant::now().millis())
        .bind(id)
        .bind(worker)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
    .await;
    if let Err(error) = written {
        tracing::warn!(job = %id, error = %error, "recording the end of an export failed");
    }
}

/// The output of one type being written: resources are appended, files stored when full.
struct Output<'a> {
    store: &'a Store,
    worker: &'a str,
    job: &'a str,
    seq: i64,
    resource_type: String,
    content: String,
    count: usize,
    /// When the lease was last renewed.
    renewed_at: std::time::Instant,
    /// The resources in `content`, for the file's audit record.
    touched: Vec<crate::audit::Touched>,
    /// The requester, when the audit trail is on: each file is stored with the AuditEvents
    /// of the resources it holds.
    audit: Option<(&'a Context, &'a crate::audit::Who)>,
}

impl Output<'_> {
    fn push(&mut self, row: &search_sql::MatchRow) {
        self.content.push_str(&row.body);
        self.content.push('\n');
        self.count += 1;
        if self.audit.is_some() {
            self.touched.push(crate::audit::Touched::row(
                &row.resource_type,
                &row.id,
                row.version_id,
            ));
        }
    }

    /// Stores the file so far (if any) and renews the lease; `Lost` if the job is no
    /// longer this worker's.
    async fn flush(&mut self, progress: &str) -> std::result::Result<(), Stop> {
        let (content, count) = (std::mem::take(&mut self.content), self.count);
        let touched = std::mem::take(&mut self.touched);
        self.count = 0;
        let seq = self.seq;
        if count > 0 {
            self.seq += 1;
        }
        let mut tx = self.store.begin().await?;
        let held = self.renew(&mut tx, progress).await?;
        if held && count > 0 {
            sqlx::query(
                "INSERT INTO export_file (job_id, seq, resource_type, count, content) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(self.job)
            .bind(seq)
            .bind(&self.resource_type)
            .bind(i64::try_from(count).unwrap_or(i64::MAX))
            .bind(&content)
            .execute(&mut *tx)
            .await?;
            // the file and the record of what it discloses commit together
            if let Some((ctx, who)) = self.audit {
                let export = crate::audit::Interaction::Export;
                crate::audit::store_bulk(&mut tx, ctx, export, who, &touched)
                    .await
                    .map_err(|e| Stop::Failed(Error::Internal(e)))?;
            }
        }
        tx.commit().await?;
        if held { Ok(()) } else { Err(Stop::Lost) }
    }

    /// Renews the lease alone once a third of it has passed since the last renewal: a type
    /// whose pages come slowly (a selective `_typeFilter` over a large table) must not lose
    /// its job between two files.
    async fn keep_lease(&mut self, progress: &str) -> std::result::Result<(), Stop> {
        if self.renewed_at.elapsed() < Duration::from_millis(LEASE_MS as u64 / 3) {
            return Ok(());
        }
        let mut tx = self.store.begin().await?;
        let held = self.renew(&mut tx, progress).await?;
        tx.commit().await?;
        if held { Ok(()) } else { Err(Stop::Lost) }
    }

    /// Moves the lease's end on and records the progress; `false` if the job is no longer
    /// this worker's.
    async fn renew(
        &mut self,
        conn: &mut sqlx::AnyConnection,
        progress: &str,
    ) -> std::result::Result<bool, sqlx::Error> {
        let now = Instant::now().millis();
        let renewed = sqlx::query(
            "UPDATE export_job SET lease_until = $1, progress = $2, updated_at = $3 \
             WHERE id = $4 AND worker = $5 AND state = 'running'",
        )
        .bind(now + LEASE_MS)
        .bind(progress)
        .bind(now)
        .bind(self.job)
        .bind(self.worker)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        self.renewed_at = std::time::Instant::now();
        Ok(renewed > 0)
    }
}

async fn export(
    store: &Store,
    ctx: &Context,
    consent: Option<&Consent>,
    worker: &str,
    job: &Claimed,
) -> std::result::Result<(), Stop> {
    let transaction_time = Instant::now();
    let mut tx = store.begin().await?;
    sqlx::query("UPDATE export_job SET transaction_time = $1 WHERE id = $2 AND worker = $3")
        .bind(transaction_time.millis())
        .bind(&job.id)
        .bind(worker)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    // the requester's access of the kick-off, with the consent state of now
    let mut access = job.access.restore();
    if let Some(consent) = consent {
        access.consent = consent.gate(&access).await?;
    }
    if let Gate::Stale(reason) = &access.consent {
        return Err(Stop::Failed(Error::Unavailable(reason.clone())));
    }
    let who = crate::audit::Who::of(&access);
    let audit = ctx.config.audit.enabled.then_some((ctx, &who));
    let patients = match &job.request.level {
        Level::System => None,
        Level::Patient => Some(None),
        Level::Group { id } => {
            let mut conn = store.reader().await?;
            access
                .check(&mut conn, &ctx.base_url, Permission::Read, "Group", id)
                .await?;
            Some(Some(group_members(&mut conn, id).await?))
        }
    };
    let mut seq = 0;
    let total = job.request.types.len();
    for (n, t) in job.request.types.iter().enumerate() {
        let mut filters = Vec::new();
        if let Some(filter) = access.allowed(Permission::Read, t)? {
            filters.push(filter);
        }
        if let Some(since) = job.request.since {
            filters.push(Filter::LastUpdated(vec![format!(
                "gt{}",
                Instant::from_millis(since).to_fhir()
            )]));
        }
        if let Some(patients) = &patients {
            filters.push(Filter::PatientsCompartment {
                patient_ids: patients.clone(),
                params: patient_compartment_params(t).to_vec(),
            });
        }
        let mut alternatives = Vec::new();
        for query in &job.request.type_filters {
            let (filter_type, type_filters) = type_filter(query, &job.request.types)?;
            if &filter_type == t {
                let mut confined = Vec::with_capacity(type_filters.len());
                for f in type_filters {
                    confined.push(access.confine(f)?);
                }
                alternatives.push(Alternative {
                    types: TypeCondition::Any,
                    filters: confined,
                });
            }
        }
        if !alternatives.is_empty() {
            filters.push(Filter::AnyOf(alternatives));
        }
        let mut output = Output {
            store,
            worker,
            job: &job.id,
            seq,
            resource_type: t.clone(),
            content: String::new(),
            count: 0,
            renewed_at: std::time::Instant::now(),
            touched: Vec::new(),
            audit,
        };
        let types = [t.clone()];
        let query = search_sql::Query {
            types: &types,
            filters: &filters,
            sort: &[],
            base_url: &ctx.base_url,
        };
        let mut cursor = None;
        loop {
            let page = {
                let mut conn = store.reader().await?;
                search_sql::page(&mut conn, &query, cursor.as_ref(), PAGE).await?
            };
            for row in &page.rows {
                output.push(row);
            }
            let progress = format!("{t}: {n} of {total} types done");
            if output.count >= FILE_RESOURCES {
                output.flush(&progress).await?;
            } else {
                output.keep_lease(&progress).await?;
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        output
            .flush(&format!("{} of {total} types done", n + 1))
            .await?;
        seq = output.seq;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::claims::UserKind;

    #[test]
    fn a_type_filter_is_a_type_and_its_search_parameters() {
        let types = vec!["Observation".to_owned()];
        let (t, filters) = type_filter(
            "Observation?status=final&code=http://loinc.org|4548-4",
            &types,
        )
        .expect("parsed");
        assert_eq!((t.as_str(), filters.len()), ("Observation", 2));
        assert!(type_filter("Condition?code=x", &types).is_err());
        assert!(type_filter("Observation", &types).is_err());
        assert!(type_filter("Observation?nonsense=1", &types).is_err());
    }

    #[test]
    fn query_values_are_decoded_after_splitting_on_commas() {
        assert_eq!(decode("Observation%3Fcode%3Da%2Cb"), "Observation?code=a,b");
        assert_eq!(base_path("http://h:1/fhir/"), "/fhir");
        assert_eq!(base_path("http://h:1"), "");
    }

    #[test]
    fn users_cannot_export_and_clients_see_only_their_jobs() {
        let mut access = Access::operator(None);
        assert!(is_requester(&access, None));
        assert!(!is_requester(&access, Some("a")));
        access.actor = Actor::Client;
        access.client_id = Some("a".to_owned());
        assert!(is_requester(&access, Some("a")));
        assert!(!is_requester(&access, Some("b")));
        assert!(!is_requester(&access, None));
        access.actor = Actor::User {
            kind: UserKind::Practitioner,
            id: "u".to_owned(),
            fhir_user: None,
        };
        assert!(Captured::of(&access).is_err());
    }
}
