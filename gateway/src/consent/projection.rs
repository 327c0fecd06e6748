//! The FHIR `Consent` resources of this server: a read-only projection of the on-chain grants
//! as the consent index holds them (`GET [base]/Consent?patient=...`, `GET [base]/Consent/[id]`).
//! The chain is where consent is given and taken back, so `Consent` cannot be created,
//! updated or deleted here (405); its id is the registry's grant id.
//!
//! Each grant becomes a Consent (R4): `status` `active`, `proposed` (not yet
//! `consent.confirmations` deep) or `inactive` (revoked or expired); `scope`
//! `patient-privacy`; `category` LOINC 59284-0 (patient consent); `patient` the Patient the
//! granting wallet is bound to; `policy` the registry (`urn:fhir-gateway:consent-registry:`
//! chain id `:` address); `provision` a `permit` of `access` to the grantee (an identifier
//! in `urn:fhir-gateway:grantee`), for the purpose of use and the resource types granted
//! (every type when none), until the expiry; identifiers name the granting and revoking
//! transactions.
//!
//! Who may read them: the operator; the patient, their own; anyone else who may read the
//! Patient (scopes and consent, as a read of `Patient/[id]` checks) and whose scopes grant
//! reading `Consent`.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::Consent;
use crate::access::{Access, Actor};
use crate::auth::claims::UserKind;
use crate::auth::scopes::Permission;
use crate::bundle::BundleWriter;
use crate::error::{Error, Result};
use crate::rest::AppState;
use crate::store::consent::{self as index, Cursor, GrantState, IndexedGrant};

/// Mounts the projection's routes under `base_path` (before the FHIR routes).
pub fn configure(cfg: &mut web::ServiceConfig, base_path: &str) {
    cfg.service(
        web::resource(format!("{base_path}/Consent"))
            .route(web::get().to(search))
            .default_service(web::to(read_only)),
    )
    .service(
        // ids only: `$validate` and `_search` go on to the FHIR routes
        web::resource(format!("{base_path}/Consent/{{id:[A-Za-z0-9.-]{{1,64}}}}"))
            .route(web::get().to(read))
            .default_service(web::to(read_only)),
    );
}

/// 405 for any change: consent is given and revoked on chain.
pub fn read_only_error() -> Error {
    Error::MethodNotAllowed(
        "Consent resources here are a read-only projection of the grants on chain (the ConsentRegistry): grant and revoke there, or through the gateway's consent API"
            .to_owned(),
    )
}

async fn read_only() -> Result<HttpResponse> {
    Err(read_only_error())
}

/// Whether `access` may read the Consents of `patient`.
async fn may_read(state: &AppState, access: &Access, patient: &str) -> Result<()> {
    match &access.actor {
        Actor::Operator => return Ok(()),
        Actor::User {
            kind: UserKind::Patient,
            fhir_user,
            ..
        } if fhir_user.as_deref() == Some(&format!("Patient/{patient}")) => return Ok(()),
        _ => {}
    }
    access.allowed(Permission::Read, "Consent")?;
    let mut conn = state.store.reader().await?;
    access
        .check(
            &mut conn,
            &state.ctx.base_url,
            Permission::Read,
            "Patient",
            patient,
        )
        .await
}

/// A grant's Consent resource, for `patient` (its bound Patient, if any).
pub fn resource(
    grant: &IndexedGrant,
    patient: Option<&str>,
    cursor: &Cursor,
    confirmations: u64,
    now_secs: i64,
) -> Value {
    let g = &grant.record;
    let status = match grant.state(Some(cursor.confirmed_through(confirmations)), now_secs) {
        GrantState::Active => "active",
        GrantState::Pending => "proposed",
        GrantState::Revoked | GrantState::Expired => "inactive",
    };
    let registry = format!(
        "urn:fhir-gateway:consent-registry:{}:{}",
        cursor.chain_id, cursor.registry
    );
    let mut identifiers = vec![
        json!({"system": registry, "value": g.grant_id.to_string()}),
        json!({"system": "urn:fhir-gateway:consent-grant-tx", "value": g.tx}),
    ];
    if let Some((_, tx)) = &grant.revoked {
        identifiers.push(json!({"system": "urn:fhir-gateway:consent-revoke-tx", "value": tx}));
    }
    let mut provision = json!({
        "type": "permit",
        "actor": [{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
            "reference": {"identifier": {"system": "urn:fhir-gateway:grantee", "value": g.grantee}}
        }],
        "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}],
        "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": g.purpose}],
    });
    if !g.resource_types.is_empty() {
        provision["class"] = Value::Array(
            g.resource_types
                .iter()
                .map(|t| json!({"system": "http://hl7.org/fhir/resource-types", "code": t}))
                .collect(),
        );
    }
    if g.expires_at != 0
        && let Ok(end) = time::OffsetDateTime::from_unix_timestamp(g.expires_at)
        && let Ok(end) = end.format(&time::format_description::well_known::Rfc3339)
    {
        provision["period"] = json!({"end": end});
    }
    let mut consent = json!({
        "resourceType": "Consent",
        "id": g.grant_id.to_string(),
        "identifier": identifiers,
        "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "policy": [{"uri": registry}],
        "provision": provision,
    });
    if let Some(patient) = patient {
        consent["patient"] = json!({"reference": format!("Patient/{patient}")});
    }
    consent
}

fn now_secs() -> i64 {
    crate::model::Instant::now().millis() / 1000
}

async fn read(
    state: web::Data<AppState>,
    consent: web::Data<Consent>,
    access: Access,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let not_found = || Error::NotFound {
        resource_type: "Consent".to_owned(),
        id: path.to_string(),
    };
    let grant_id: i64 = path.parse().map_err(|_| not_found())?;
    let mut conn = state.store.reader().await?;
    let (Some(cursor), Some(grant)) = (
        index::cursor(&mut conn).await?,
        index::grant(&mut conn, grant_id).await?,
    ) else {
        return Err(not_found());
    };
    let patient = index::patient_of_wallet(&mut conn, &grant.record.patient_wallet).await?;
    drop(conn);
    match &patient {
        Some(patient) => may_read(&state, &access, patient).await?,
        None if access.is_operator() => {}
        None => return Err(not_found()),
    }
    let body = resource(
        &grant,
        patient.as_deref(),
        &cursor,
        consent.config().confirmations,
        now_secs(),
    );
    Ok(HttpResponse::Ok()
        .content_type(crate::rest::format::FHIR_JSON)
        .body(body.to_string()))
}

async fn search(
    req: HttpRequest,
    state: web::Data<AppState>,
    consent: web::Data<Consent>,
    access: Access,
) -> Result<HttpResponse> {
    let mut patient = None;
    let mut statuses: Option<Vec<String>> = None;
    for (name, value) in form_urlencoded::parse(req.query_string().as_bytes()) {
        match name.as_ref() {
            "patient" | "subject" => {
                let id = value.strip_prefix("Patient/").unwrap_or(&value).to_owned();
                crate::model::ResourceId::parse(&id)?;
                patient = Some(id);
            }
            "status" => statuses = Some(value.split(',').map(str::to_owned).collect()),
            "_format" | "_pretty" | "_count" => {}
            other => {
                return Err(Error::NotSupported(format!(
                    "Consent (the projection of on-chain grants) is searched by patient and status only, not {other}"
                )));
            }
        }
    }
    let patient = patient.ok_or_else(|| {
        Error::Invalid("search Consent with patient=[id]: the grants of one patient".to_owned())
    })?;
    may_read(&state, &access, &patient).await?;
    let mut conn = state.store.reader().await?;
    let cursor = index::cursor(&mut conn).await?;
    let wallet = index::wallet_of_patient(&mut conn, &patient).await?;
    let grants = match (&cursor, &wallet) {
        (Some(_), Some(wallet)) => index::grants_of_wallet(&mut conn, wallet).await?,
        _ => Vec::new(),
    };
    drop(conn);
    let now = now_secs();
    let resources: Vec<Value> = match &cursor {
        Some(cursor) => grants
            .iter()
            .map(|g| {
                resource(
                    g,
                    Some(&patient),
                    cursor,
                    consent.config().confirmations,
                    now,
                )
            })
            .filter(|c| {
                statuses
                    .as_ref()
                    .is_none_or(|s| s.iter().any(|s| c["status"] == s.as_str()))
            })
            .collect(),
        None => Vec::new(),
    };
    let mut bundle = BundleWriter::new("searchset");
    bundle.total(resources.len() as i64);
    bundle.link(
        "self",
        &format!("{}/Consent?{}", state.ctx.base_url, req.query_string()),
    );
    for resource in &resources {
        bundle.entry(
            &format!(
                "{}/Consent/{}",
                state.ctx.base_url,
                resource["id"].as_str().unwrap_or_default()
            ),
            &resource.to_string(),
            Some("match"),
        );
    }
    Ok(HttpResponse::Ok()
        .content_type(crate::rest::format::FHIR_JSON)
        .body(bundle.finish()))
}
