//! The admin API for Patient <-> wallet bindings ([`super::binding`]), under
//! `[base]/auth/patients/{id}`: issue a link code (`POST /link-codes`), show the binding and
//! its history (`GET /binding`), unbind (`DELETE /binding`), as the `fhir-gateway patient`
//! command does. Like the client admin API ([`super::admin`]) it takes a bearer token of an
//! admin client (401 without a valid one, 403 with another client's) and answers errors as
//! JSON `{"error", "error_description"}`. The history names the admin client as the actor.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::Auth;
use super::admin::{admin_only, error, unavailable};
use super::binding::{self, Refused};

/// The path of a Patient's link codes, under the FHIR base URL (`{id}`: the Patient's id).
pub(super) const LINK_CODES_PATH: &str = "/auth/patients/{id}/link-codes";
/// The path of a Patient's binding, under the FHIR base URL.
pub(super) const BINDING_PATH: &str = "/auth/patients/{id}/binding";

fn refusal(refused: Refused) -> HttpResponse {
    let status = match refused {
        Refused::NoSuchPatient | Refused::NotBound => StatusCode::NOT_FOUND,
        _ => StatusCode::CONFLICT,
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        _ => "conflict",
    };
    error(status, code, &refused.to_string())
}

fn failed(error: &anyhow::Error) -> HttpResponse {
    tracing::error!(%error, "the binding admin API could not reach the database");
    unavailable()
}

/// `POST [base]/auth/patients/{id}/link-codes`: 201 with the code (shown once), its expiry
/// and the URL that redeems it; the Patient's earlier unused codes stop working.
pub(super) async fn issue_code(
    auth: web::Data<Auth>,
    request: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    let admin = match admin_only(&auth, &request).await {
        Ok(admin) => admin,
        Err(refusal) => return refusal,
    };
    match binding::issue_code(
        &auth.store,
        &id,
        &admin,
        auth.link_code_lifetime_secs,
        &auth.fhir_base_url,
    )
    .await
    {
        Ok(Ok(issued)) => HttpResponse::Created()
            .insert_header(("Cache-Control", "no-store"))
            .json(issued),
        Ok(Err(refused)) => refusal(refused),
        Err(e) => failed(&e),
    }
}

/// `GET [base]/auth/patients/{id}/binding`: the wallet bound now (or `null`) and every bind
/// and unbind.
pub(super) async fn show(
    auth: web::Data<Auth>,
    request: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    if let Err(refusal) = admin_only(&auth, &request).await {
        return refusal;
    }
    match binding::status(&auth.store, &id).await {
        Ok(Ok(status)) => HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .json(status),
        Ok(Err(refused)) => refusal(refused),
        Err(e) => failed(&e),
    }
}

/// `DELETE [base]/auth/patients/{id}/binding`: unbinds (the patient user goes, with its
/// sessions and tokens); 200 with the binding that was removed.
pub(super) async fn unbind(
    auth: web::Data<Auth>,
    request: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    let admin = match admin_only(&auth, &request).await {
        Ok(admin) => admin,
        Err(refusal) => return refusal,
    };
    match binding::unbind(&auth.store, &id, &admin).await {
        Ok(Ok(removed)) => HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .json(serde_json::json!({ "unbound": removed })),
        Ok(Err(refused)) => refusal(refused),
        Err(e) => failed(&e),
    }
}
