//! Route table and handlers. Each handler parses the HTTP request into typed inputs,
//! runs one interaction (in a transaction for writes) and answers through [`respond`].

use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, Scope, web};
use fhir_profiles::profile::Profiles;
use sqlx::AnyConnection;

use super::format::PatchFormat;
use super::{
    AppState, format, if_match, if_none_exist, not_modified, preferences, read_body, respond,
};
use crate::access::Access;
use crate::auth::scopes::Permission;
use crate::error::{Error, Result, validation_outcome};
use crate::interaction::patch::PatchDocument;
use crate::interaction::search::{Scope as SearchScope, SearchRequest};
use crate::interaction::transaction::ReturnPreference;
use crate::interaction::{
    Checked, Outcome, capabilities, create, delete, history, patch, proof, read, search,
    transaction, update,
};
use crate::model::{ResourceId, ResourceType, VersionId};
use crate::resource;
use crate::store::HistoryScope;
use crate::subset;

type State = web::Data<AppState>;

pub(super) fn scope(base_path: &str) -> Scope {
    let not_allowed = || web::to(method_not_allowed);
    web::scope(base_path)
        .service(
            web::resource("/metadata")
                .route(web::get().to(metadata))
                .default_service(not_allowed()),
        )
        .service(
            web::resource(["", "/"])
                .route(web::post().to(bundle))
                .route(web::get().to(search_system))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/_search")
                .route(web::post().to(search_system_post))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/_history")
                .route(web::get().to(history_system))
                .default_service(not_allowed()),
        )
        // Bulk Data $export, before the [type] and [type]/[id] patterns that would take it
        .configure(crate::export::routes)
        .service(
            web::resource("/$hl7v2")
                .route(web::post().to(hl7v2_message))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/{type}")
                .route(web::get().to(search_type))
                .route(web::post().to(create_resource))
                .route(web::put().to(conditional_update))
                .route(web::delete().to(conditional_delete))
                .route(web::patch().to(conditional_patch))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/{type}/_search")
                .route(web::post().to(search_type_post))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/{type}/_history")
                .route(web::get().to(history_type))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/{type}/$validate")
                .route(web::post().to(validate_type))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/{type}/{id}")
                .route(web::get().to(read_resource))
                .route(web::put().to(update_resource))
                .route(web::delete().to(delete_resource))
                .route(web::patch().to(patch_resource))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/{type}/{id}/$validate")
                .route(web::post().to(validate_instance))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/Patient/{id}/$everything")
                .route(web::get().to(patient_everything))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/{type}/{id}/$proof")
                .route(web::get().to(proof_current))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/{type}/{id}/_history")
                .route(web::get().to(history_instance))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/{type}/{id}/_history/{vid}")
                .route(web::get().to(vread_resource))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/{type}/{id}/_history/{vid}/$proof")
                .route(web::get().to(proof_version))
                .default_service(not_allowed()),
        )
        .service(
            web::resource("/{type}/{id}/{compartment_type}")
                .route(web::get().to(search_compartment))
                .default_service(not_allowed()),
        )
        .default_service(web::to(unknown_route))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse> {
    Err(Error::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.path()
    )))
}

async fn unknown_route(req: HttpRequest) -> Result<HttpResponse> {
    Err(Error::UnknownRoute(format!(
        "{} {}",
        req.method(),
        req.path()
    )))
}

fn format_param(req: &HttpRequest) -> Option<String> {
    form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "_format")
        .map(|(_, v)| v.into_owned())
}

fn negotiate(req: &HttpRequest) -> Result<()> {
    format::negotiate(req, format_param(req).as_deref())
}

/// Reads and parses a resource body after checking the content type.
async fn resource_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<fhir_profiles::Json> {
    let body = read_resource_bytes(req, payload, state).await?;
    let max_depth = state.ctx.config.limits.max_json_depth;
    if body.len() < LARGE_BODY_BYTES {
        return resource::parse_json(&body, max_depth);
    }
    on_blocking_pool(move || resource::parse_json(&body, max_depth)).await
}

/// The request's resource, parsed and checked for a write of `resource_type`
/// ([`Checked`]).
async fn checked_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    resource_type: &ResourceType,
) -> Result<Checked> {
    crate::audit::refuse_client_write(resource_type, "write")?;
    let body = read_resource_bytes(req, payload, state).await?;
    let max_depth = state.ctx.config.limits.max_json_depth;
    if body.len() < LARGE_BODY_BYTES {
        return Checked::new(
            &state.ctx,
            resource::parse_json(&body, max_depth)?,
            resource_type,
        );
    }
    let (ctx, resource_type) = (state.ctx.clone(), resource_type.clone());
    on_blocking_pool(move || {
        Checked::new(
            &ctx,
            resource::parse_json(&body, max_depth)?,
            &resource_type,
        )
    })
    .await
}

async fn read_resource_bytes(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<web::Bytes> {
    format::check_content_type(req)?;
    let body = read_body(payload, state.ctx.config.limits.max_body_bytes).await?;
    if body.is_empty() {
        return Err(Error::Invalid(
            "the request has no body; send a resource".to_owned(),
        ));
    }
    Ok(body)
}

/// Bodies from this size on are parsed and validated on the blocking pool: a large Bundle
/// takes hundreds of milliseconds (seconds in a debug build), during which an async worker
/// would serve none of its other connections, and actix closes those whose keep-alive ran
/// out meanwhile even if their next request is already waiting.
const LARGE_BODY_BYTES: usize = 256 * 1024;

async fn on_blocking_pool<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!("checking a request body: {e}")))?
}

async fn metadata(req: HttpRequest, state: State) -> Result<HttpResponse> {
    negotiate(&req)?;
    Ok(respond(
        Outcome::json(200, capabilities::capability_statement(&state.ctx)),
        ReturnPreference::Representation,
    ))
}

/// `GET [base]/[type]/[id]` (read)
async fn read_resource(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let (resource_type, id) = (ResourceType::parse(&path.0)?, ResourceId::parse(&path.1)?);
    let (_, handling) = preferences(req.headers());
    let subset = subset::from_read_query(req.query_string(), resource_type.as_str(), handling)?;
    let mut conn = state.store.reader().await?;
    let outcome = read::read(&mut conn, &state.ctx, &access, &resource_type, &id).await?;
    Ok(if not_modified(&req, &outcome) {
        not_modified_response(&outcome)
    } else {
        let outcome = subset::outcome(outcome, subset.as_ref(), resource_type.as_str())?;
        respond(outcome, ReturnPreference::Representation)
    })
}

fn not_modified_response(outcome: &Outcome) -> HttpResponse {
    let mut response = HttpResponse::NotModified();
    if let Some(version) = outcome.version {
        response.insert_header((actix_web::http::header::ETAG, version.etag()));
    }
    let mut response = response.finish();
    response
        .extensions_mut()
        .insert(crate::audit::TouchedList(outcome.touched.clone()));
    response
}

/// `GET [base]/[type]/[id]/_history/[vid]` (vread)
async fn vread_resource(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let (resource_type, id, version) = (
        ResourceType::parse(&path.0)?,
        ResourceId::parse(&path.1)?,
        VersionId::parse(&path.2)?,
    );
    let (_, handling) = preferences(req.headers());
    let subset = subset::from_read_query(req.query_string(), resource_type.as_str(), handling)?;
    let mut conn = state.store.reader().await?;
    let outcome = read::vread(&mut conn, &state.ctx, &access, &resource_type, &id, version).await?;
    Ok(if not_modified(&req, &outcome) {
        not_modified_response(&outcome)
    } else {
        let outcome = subset::outcome(outcome, subset.as_ref(), resource_type.as_str())?;
        respond(outcome, ReturnPreference::Representation)
    })
}

/// `GET [base]/[type]/[id]/$proof`: the log entry of the current version
async fn proof_current(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let (resource_type, id) = (ResourceType::parse(&path.0)?, ResourceId::parse(&path.1)?);
    let mut conn = state.store.reader().await?;
    let outcome = proof::proof(&mut conn, &state.ctx, &access, &resource_type, &id, None).await?;
    Ok(respond(outcome, ReturnPreference::Representation))
}

/// `GET [base]/[type]/[id]/_history/[vid]/$proof`: the log entry of one version
async fn proof_version(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let (resource_type, id, version) = (
        ResourceType::parse(&path.0)?,
        ResourceId::parse(&path.1)?,
        VersionId::parse(&path.2)?,
    );
    let mut conn = state.store.reader().await?;
    let outcome = proof::proof(
        &mut conn,
        &state.ctx,
        &access,
        &resource_type,
        &id,
        Some(version),
    )
    .await?;
    Ok(respond(outcome, ReturnPreference::Representation))
}

/// Runs a write interaction in a transaction that also stores its audit record
/// ([`crate::audit::store_in`]): the write and its record commit together or not at all.
/// The record is built from the audit middleware's [`crate::audit::Pending`], which is
/// absent when auditing is off.
async fn write_recorded(
    req: &HttpRequest,
    state: &AppState,
    access: &Access,
    mut work: impl AsyncFnMut(&mut AnyConnection) -> Result<Outcome>,
) -> Result<Outcome> {
    let pending = req.extensions().get::<crate::audit::Pending>().cloned();
    let mut outcome = state
        .store
        .write(async |tx| {
            let outcome = work(tx).await?;
            if let Some(pending) = &pending {
                let record = pending.record(access, outcome.status, outcome.touched.clone());
                crate::audit::store_in(tx, &state.ctx, &[&record])
                    .await
                    .map_err(Error::Internal)?;
            }
            Ok(outcome)
        })
        .await?;
    outcome.recorded = pending.is_some();
    Ok(outcome)
}

/// `POST [base]/[type]` (create, conditional create)
async fn create_resource(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let resource_type = ResourceType::parse(&path)?;
    let (preference, _) = preferences(req.headers());
    let criteria = if_none_exist(req.headers())?;
    access.allowed(Permission::Create, resource_type.as_str())?;
    let body = checked_body(&req, payload, &state, &resource_type).await?;
    let outcome = write_recorded(&req, &state, &access, async |tx| {
        let body = body.clone();
        create::create(
            tx,
            &state.ctx,
            &access,
            &resource_type,
            body,
            criteria.as_deref(),
        )
        .await
    })
    .await?;
    Ok(respond(outcome, preference))
}

/// `PUT [base]/[type]/[id]` (update, update as create)
async fn update_resource(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let (resource_type, id) = (ResourceType::parse(&path.0)?, ResourceId::parse(&path.1)?);
    let (preference, _) = preferences(req.headers());
    let expected = if_match(req.headers())?;
    let body = checked_body(&req, payload, &state, &resource_type).await?;
    let outcome = write_recorded(&req, &state, &access, async |tx| {
        let body = body.clone();
        update::update(tx, &state.ctx, &access, &resource_type, &id, body, expected).await
    })
    .await?;
    Ok(respond(outcome, preference))
}

/// `PUT [base]/[type]?[criteria]` (conditional update)
async fn conditional_update(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let resource_type = ResourceType::parse(&path)?;
    let criteria = conditional_criteria(&req, "update")?;
    let (preference, _) = preferences(req.headers());
    let expected = if_match(req.headers())?;
    let body = checked_body(&req, payload, &state, &resource_type).await?;
    let outcome = write_recorded(&req, &state, &access, async |tx| {
        let body = body.clone();
        update::conditional_update(
            tx,
            &state.ctx,
            &access,
            &resource_type,
            &criteria,
            body,
            expected,
        )
        .await
    })
    .await?;
    Ok(respond(outcome, preference))
}

fn conditional_criteria(req: &HttpRequest, what: &str) -> Result<String> {
    let criteria: String = form_urlencoded::parse(req.query_string().as_bytes())
        .filter(|(k, _)| k != "_format")
        .fold(
            form_urlencoded::Serializer::new(String::new()),
            |mut s, (k, v)| {
                s.append_pair(&k, &v);
                s
            },
        )
        .finish();
    if criteria.is_empty() {
        return Err(Error::MethodNotAllowed(format!(
            "conditional {what} needs search criteria in the URL"
        )));
    }
    Ok(criteria)
}

/// `DELETE [base]/[type]/[id]`
async fn delete_resource(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    let (resource_type, id) = (ResourceType::parse(&path.0)?, ResourceId::parse(&path.1)?);
    let (preference, _) = preferences(req.headers());
    let outcome = write_recorded(&req, &state, &access, async |tx| {
        delete::delete(tx, &state.ctx, &access, &resource_type, &id).await
    })
    .await?;
    Ok(respond(outcome, preference))
}

/// `DELETE [base]/[type]?[criteria]`
async fn conditional_delete(
    req: HttpRequest,
    path: web::Path<String>,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    let resource_type = ResourceType::parse(&path)?;
    let criteria = conditional_criteria(&req, "delete")?;
    let (preference, _) = preferences(req.headers());
    let outcome = write_recorded(&req, &state, &access, async |tx| {
        delete::conditional_delete(tx, &state.ctx, &access, &resource_type, &criteria).await
    })
    .await?;
    Ok(respond(outcome, preference))
}

/// Reads the body of a PATCH as the format its `Content-Type` names.
async fn patch_document(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<PatchDocument> {
    let format = format::patch_format(req)?;
    let body = read_body(payload, state.ctx.config.limits.max_body_bytes).await?;
    match format {
        PatchFormat::JsonPatch => PatchDocument::json_patch(&body),
        PatchFormat::FhirPath => {
            if body.is_empty() {
                return Err(Error::Invalid(
                    "the request has no body; send a Parameters resource".to_owned(),
                ));
            }
            if body.trim_ascii_start().starts_with(b"[") {
                return Err(Error::Invalid(
                    "a JSON Patch document is sent as application/json-patch+json; application/fhir+json takes a FHIRPath Patch (a Parameters resource)".to_owned(),
                ));
            }
            let parameters = resource::parse_json(&body, state.ctx.config.limits.max_json_depth)?;
            PatchDocument::fhirpath(&parameters)
        }
    }
}

/// `PATCH [base]/[type]/[id]` (JSON Patch or FHIRPath Patch)
async fn patch_resource(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let (resource_type, id) = (ResourceType::parse(&path.0)?, ResourceId::parse(&path.1)?);
    let (preference, _) = preferences(req.headers());
    let expected = if_match(req.headers())?;
    let document = patch_document(&req, payload, &state).await?;
    let outcome = write_recorded(&req, &state, &access, async |tx| {
        patch::patch(
            tx,
            &state.ctx,
            &access,
            &resource_type,
            &id,
            &document,
            expected,
        )
        .await
    })
    .await?;
    Ok(respond(outcome, preference))
}

/// `PATCH [base]/[type]?[criteria]`
async fn conditional_patch(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let resource_type = ResourceType::parse(&path)?;
    let criteria = conditional_criteria(&req, "patch")?;
    let (preference, _) = preferences(req.headers());
    let expected = if_match(req.headers())?;
    let document = patch_document(&req, payload, &state).await?;
    let outcome = write_recorded(&req, &state, &access, async |tx| {
        patch::conditional_patch(
            tx,
            &state.ctx,
            &access,
            &resource_type,
            &criteria,
            &document,
            expected,
        )
        .await
    })
    .await?;
    Ok(respond(outcome, preference))
}

/// `POST [base]` with a batch or transaction Bundle
async fn bundle(
    req: HttpRequest,
    payload: web::Payload,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let (preference, _) = preferences(req.headers());
    let body = resource_body(&req, payload, &state).await?;
    let pending = req.extensions().get::<crate::audit::Pending>().cloned();
    let outcome = transaction::process(
        &state.store,
        &state.ctx,
        &access,
        body,
        preference,
        pending.as_ref(),
    )
    .await?;
    Ok(respond(outcome, ReturnPreference::Representation))
}

/// `POST [base]/$hl7v2`: one HL7 v2 message as the body (`x-application/hl7-v2+er7`,
/// `application/hl7-v2` or `text/plain`), applied as one received over MLLP is (translated,
/// one transaction, idempotent by sender and control id, in order per patient) with the
/// request's token, so the token needs write scopes for every type the translation produces.
/// Answers with the `transaction-response` Bundle; a re-sent message with the recorded entry
/// responses and `X-HL7v2-Duplicate: true`. A refused message is an OperationOutcome saying
/// what was wrong (400 unreadable or unsupported, 422 content that cannot be applied).
async fn hl7v2_message(
    req: HttpRequest,
    payload: web::Payload,
    state: State,
    access: Access,
    intake: web::Data<crate::hl7v2::Intake>,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match content_type.as_deref() {
        Some("x-application/hl7-v2+er7" | "application/hl7-v2" | "text/plain") => {}
        other => {
            return Err(Error::UnsupportedMediaType(format!(
                "$hl7v2 takes an HL7 v2 message as x-application/hl7-v2+er7 or text/plain, not {}",
                other.unwrap_or("a body without Content-Type")
            )));
        }
    }
    let body = read_body(payload, state.ctx.config.limits.max_body_bytes).await?;
    if body.is_empty() {
        return Err(Error::Invalid(
            "the request has no body; send an HL7 v2 message".to_owned(),
        ));
    }
    // a feed matches its patients by identifier among all records, consented or not: a
    // match confined by consent would create a second Patient for an existing one. What the
    // response shows is what the message itself carried, with ids and versions.
    let mut access = access;
    access.consent = crate::consent::Gate::Open;
    let (_, result) = intake.process(&access, &[], &body).await;
    let accepted = result.map_err(|refusal| *refusal.error)?;
    let mut response = respond(accepted.response, ReturnPreference::Representation);
    if accepted.duplicate {
        response.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("x-hl7v2-duplicate"),
            actix_web::http::header::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

async fn run_search(
    req: &HttpRequest,
    state: &AppState,
    access: &Access,
    scope: SearchScope<'_>,
    query: &str,
) -> Result<HttpResponse> {
    negotiate(req)?;
    let (_, handling) = preferences(req.headers());
    let request = SearchRequest::parse(&state.ctx, &scope, query, handling)?;
    let mut conn = state.store.reader().await?;
    let outcome = search::search(&mut conn, &state.ctx, access, &scope, request).await?;
    Ok(respond(outcome, ReturnPreference::Representation))
}

/// `GET [base]/[type]?...`
async fn search_type(
    req: HttpRequest,
    path: web::Path<String>,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    let resource_type = ResourceType::parse(&path)?;
    run_search(
        &req,
        &state,
        &access,
        SearchScope::Type(&resource_type),
        req.query_string(),
    )
    .await
}

/// `POST [base]/[type]/_search` with form-encoded parameters (and any in the URL)
async fn search_type_post(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    let resource_type = ResourceType::parse(&path)?;
    let query = form_query(&req, payload, &state).await?;
    run_search(
        &req,
        &state,
        &access,
        SearchScope::Type(&resource_type),
        &query,
    )
    .await
}

async fn form_query(req: &HttpRequest, payload: web::Payload, state: &AppState) -> Result<String> {
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body = read_body(payload, state.ctx.config.limits.max_body_bytes).await?;
    if !body.is_empty() && !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(Error::UnsupportedMediaType(format!(
            "_search takes application/x-www-form-urlencoded parameters, not {content_type:?}"
        )));
    }
    let body = std::str::from_utf8(&body)
        .map_err(|_| Error::Invalid("the form body is not UTF-8".to_owned()))?;
    Ok([req.query_string(), body]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("&"))
}

/// `GET [base]?_type=...`
async fn search_system(req: HttpRequest, state: State, access: Access) -> Result<HttpResponse> {
    run_search(
        &req,
        &state,
        &access,
        SearchScope::System,
        req.query_string(),
    )
    .await
}

/// `POST [base]/_search`
async fn search_system_post(
    req: HttpRequest,
    payload: web::Payload,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    let query = form_query(&req, payload, &state).await?;
    run_search(&req, &state, &access, SearchScope::System, &query).await
}

/// `GET [base]/Patient/[id]/$everything?...`: the patient's record, as far as the token's
/// scopes and the patient's consent allow (operation-patient-everything.html).
async fn patient_everything(
    req: HttpRequest,
    path: web::Path<String>,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    let patient = ResourceId::parse(&path)?;
    // the patient must be readable at all: an unknown or hidden patient answers as a read does
    let mut conn = state.store.reader().await?;
    crate::interaction::read::read(
        &mut conn,
        &state.ctx,
        &access,
        &ResourceType::parse("Patient")?,
        &patient,
    )
    .await?;
    drop(conn);
    run_search(
        &req,
        &state,
        &access,
        SearchScope::Everything(&patient),
        req.query_string(),
    )
    .await
}

/// `GET [base]/Patient/[id]/[type]?...` (Patient compartment search)
async fn search_compartment(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    if path.0 != "Patient" {
        return Err(Error::UnknownRoute(format!(
            "GET {}: only the Patient compartment is supported",
            req.path()
        )));
    }
    let (patient, resource_type) = (ResourceId::parse(&path.1)?, ResourceType::parse(&path.2)?);
    run_search(
        &req,
        &state,
        &access,
        SearchScope::PatientCompartment(&patient, &resource_type),
        req.query_string(),
    )
    .await
}

async fn run_history(
    req: &HttpRequest,
    state: &AppState,
    access: &Access,
    scope: HistoryScope<'_>,
) -> Result<HttpResponse> {
    negotiate(req)?;
    let (_, handling) = preferences(req.headers());
    let resource_types = match scope {
        HistoryScope::System => Vec::new(),
        HistoryScope::Type(t) | HistoryScope::Instance(t, _) => vec![t],
    };
    let params = history::HistoryParams::parse(req.query_string(), &resource_types, handling)?;
    let mut conn = state.store.reader().await?;
    let outcome = history::history(&mut conn, &state.ctx, access, scope, params).await?;
    Ok(respond(outcome, ReturnPreference::Representation))
}

async fn history_system(req: HttpRequest, state: State, access: Access) -> Result<HttpResponse> {
    run_history(&req, &state, &access, HistoryScope::System).await
}

async fn history_type(
    req: HttpRequest,
    path: web::Path<String>,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    let resource_type = ResourceType::parse(&path)?;
    run_history(
        &req,
        &state,
        &access,
        HistoryScope::Type(resource_type.as_str()),
    )
    .await
}

async fn history_instance(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: State,
    access: Access,
) -> Result<HttpResponse> {
    let (resource_type, id) = (ResourceType::parse(&path.0)?, ResourceId::parse(&path.1)?);
    run_history(
        &req,
        &state,
        &access,
        HistoryScope::Instance(resource_type.as_str(), id.as_str()),
    )
    .await
}

/// `POST [base]/[type]/$validate` with the resource (or a Parameters with `resource`, and
/// optionally `profile`; `?profile=` works too)
async fn validate_type(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: State,
    // any valid token may validate: nothing is read or written
    _access: Access,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let resource_type = ResourceType::parse(&path)?;
    let body = resource_body(&req, payload, &state).await?;
    validate_operation(&req, &state, &resource_type, None, body)
}

/// `POST [base]/[type]/[id]/$validate`
async fn validate_instance(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: State,
    // any valid token may validate: nothing is read or written
    _access: Access,
) -> Result<HttpResponse> {
    negotiate(&req)?;
    let (resource_type, id) = (ResourceType::parse(&path.0)?, ResourceId::parse(&path.1)?);
    let body = resource_body(&req, payload, &state).await?;
    validate_operation(&req, &state, &resource_type, Some(&id), body)
}

/// [`$validate`](http://hl7.org/fhir/R4/resource-operation-validate.html): 200 with the
/// warnings (or "valid"), else the issues with 400 (malformed) or 422 (breaks a profile).
fn validate_operation(
    req: &HttpRequest,
    state: &AppState,
    resource_type: &ResourceType,
    id: Option<&ResourceId>,
    body: fhir_profiles::Json,
) -> Result<HttpResponse> {
    let ValidateInput { resource, profile } = validate_input(body)?;
    let query_profile = form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "profile")
        .map(|(_, v)| v.into_owned());
    let profile = match (profile, query_profile) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::Invalid(format!(
                "$validate was given two profiles, {a} in the Parameters and {b} in the URL"
            )));
        }
        (profile, query_profile) => profile.or(query_profile),
    };
    let nominated = match profile.as_deref() {
        Some(url) => Some(Profiles::r4().get(url).ok_or_else(|| {
            Error::NotSupported(format!(
                "profile {url} is not known to this server, so it cannot validate against it"
            ))
        })?),
        None => None,
    };
    let actual = resource::resource_type_of(&resource)?;
    if &actual != resource_type {
        return Err(Error::Invalid(format!(
            "$validate on {resource_type} was given a {actual}"
        )));
    }
    if let (Some(id), Some(body_id)) = (id, resource::id_of(&resource))
        && body_id != id.as_str()
    {
        return Err(Error::Invalid(format!(
            "the id in the URL ({id}) differs from the id in the body ({body_id})"
        )));
    }
    let warnings = resource::validate(&resource, &state.ctx.config.validation, nominated)?;
    Ok(respond(
        Outcome::json(200, validation_outcome(&warnings)),
        ReturnPreference::Representation,
    ))
}

/// What `$validate` was given: the resource and the profile to check it against.
struct ValidateInput {
    resource: fhir_profiles::Json,
    profile: Option<String>,
}

/// `$validate` takes the resource itself or a Parameters with a `resource` parameter and
/// optionally a `profile` (`valueUri` or `valueCanonical`).
fn validate_input(body: fhir_profiles::Json) -> Result<ValidateInput> {
    let is_parameters = body
        .as_object()
        .and_then(|o| o.get_unique("resourceType").ok().flatten())
        .and_then(|v| v.as_str())
        == Some("Parameters");
    if !is_parameters {
        return Ok(ValidateInput {
            resource: body,
            profile: None,
        });
    }
    let parameters = body
        .as_object()
        .and_then(|o| o.get_unique("parameter").ok().flatten())
        .and_then(|p| p.as_array());
    let (mut resource, mut profile) = (None, None);
    for parameter in parameters.into_iter().flatten() {
        let Some(object) = parameter.as_object() else {
            continue;
        };
        let member = |key: &str| object.get_unique(key).ok().flatten();
        match member("name").and_then(|n| n.as_str()) {
            Some("resource") => resource = resource.or_else(|| member("resource").cloned()),
            Some("profile") => {
                let value = member("valueUri")
                    .or_else(|| member("valueCanonical"))
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| {
                        Error::Invalid(
                            "the profile parameter of $validate needs a valueUri or valueCanonical"
                                .to_owned(),
                        )
                    })?;
                profile = Some(value.to_owned());
            }
            _ => {}
        }
    }
    let resource = resource.ok_or_else(|| {
        Error::Invalid("the Parameters for $validate have no resource parameter".to_owned())
    })?;
    Ok(ValidateInput { resource, profile })
}
