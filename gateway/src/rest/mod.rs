//! The HTTP face of the FHIR API (actix-web): routes, header handling (`Prefer`, `If-Match`,
//! `If-None-Exist`, `If-None-Match`, `If-Modified-Since`), body limits, and turning an
//! interaction's [`Outcome`] into a response. The interactions themselves live in
//! [`crate::interaction`].

pub mod format;
mod handlers;

use actix_web::http::header::{self, HeaderMap};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;

use crate::error::{Error, Result, success_outcome};
use crate::interaction::search::Handling;
use crate::interaction::transaction::ReturnPreference;
use crate::interaction::{Body, Context, Outcome};
use crate::model::{Instant, VersionId};
use crate::store::Store;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub ctx: Context,
    /// What the anchoring worker last reported (for `/health/ready`).
    pub anchoring: crate::anchoring::SharedStatus,
}

/// Mounts the FHIR API at `base_path` (e.g. `/fhir`).
pub fn configure(cfg: &mut web::ServiceConfig, base_path: &str) {
    cfg.service(handlers::scope(base_path));
}

/// Reads a request body up to the configured limit (413 beyond it).
pub(crate) async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::Bytes> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| Error::Invalid(format!("the request body could not be read: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(Error::PayloadTooLarge(format!(
                "the request body is larger than the limit of {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The `Prefer` header's `return` and `handling` preferences.
pub(crate) fn preferences(headers: &HeaderMap) -> (ReturnPreference, Handling) {
    let mut preference = ReturnPreference::default();
    let mut handling = Handling::default();
    for value in headers.get_all("prefer").filter_map(|v| v.to_str().ok()) {
        for item in value.split([',', ';']).map(str::trim) {
            match item
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            {
                Some(("return", "minimal")) => preference = ReturnPreference::Minimal,
                Some(("return", "representation")) => preference = ReturnPreference::Representation,
                Some(("return", "OperationOutcome")) => {
                    preference = ReturnPreference::OperationOutcome
                }
                Some(("handling", "strict")) => handling = Handling::Strict,
                Some(("handling", "lenient")) => handling = Handling::Lenient,
                _ => {}
            }
        }
    }
    (preference, handling)
}

/// The version named by `If-Match`, if any.
pub(crate) fn if_match(headers: &HeaderMap) -> Result<Option<VersionId>> {
    headers
        .get(header::IF_MATCH)
        .map(|v| {
            v.to_str()
                .map_err(|_| Error::Invalid("If-Match is not valid text".to_owned()))
                .and_then(VersionId::from_etag)
        })
        .transpose()
}

/// The criteria of `If-None-Exist`, if any.
pub(crate) fn if_none_exist(headers: &HeaderMap) -> Result<Option<String>> {
    headers
        .get("if-none-exist")
        .map(|v| {
            v.to_str()
                .map(|s| s.trim_start_matches('?').to_owned())
                .map_err(|_| Error::Invalid("If-None-Exist is not valid text".to_owned()))
        })
        .transpose()
}

/// Whether a read can answer 304 Not Modified (`If-None-Match`, `If-Modified-Since`).
pub(crate) fn not_modified(req: &HttpRequest, outcome: &Outcome) -> bool {
    let headers = req.headers();
    if let (Some(tag), Some(version)) = (
        headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok()),
        outcome.version,
    ) {
        return tag
            .split(',')
            .any(|t| t.trim() == "*" || VersionId::from_etag(t).is_ok_and(|v| v == version));
    }
    if let (Some(since), Some(modified)) = (
        headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(Instant::parse_http_date),
        outcome.last_modified,
    ) {
        // HTTP dates have second precision
        return modified.millis() / 1000 <= since.millis() / 1000;
    }
    false
}

/// Turns an outcome into a response, applying `Prefer: return=` to resource bodies.
/// The resources it touched go with the response to the audit middleware
/// ([`crate::audit::Touched`]).
pub(crate) fn respond(mut outcome: Outcome, preference: ReturnPreference) -> HttpResponse {
    let touched = std::mem::take(&mut outcome.touched);
    let recorded = outcome.recorded;
    let mut response = respond_untracked(outcome, preference);
    if recorded {
        response.extensions_mut().insert(crate::audit::Recorded);
    }
    if !touched.is_empty() {
        response
            .extensions_mut()
            .insert(crate::audit::TouchedList(touched));
    }
    response
}

fn respond_untracked(outcome: Outcome, preference: ReturnPreference) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(outcome.status)
        .unwrap_or(actix_web::http::StatusCode::OK);
    let mut response = HttpResponse::build(status);
    if let Some(location) = &outcome.location {
        response.insert_header((header::LOCATION, location.as_str()));
        if outcome.status == 201 {
            response.insert_header(("Content-Location", location.as_str()));
        }
    }
    if let Some(version) = outcome.version {
        response.insert_header((header::ETAG, version.etag()));
    }
    if let Some(modified) = outcome.last_modified {
        response.insert_header((header::LAST_MODIFIED, modified.to_http_date()));
    }
    let body = match (outcome.body, preference) {
        (Body::None, _) => return response.finish(),
        (Body::Resource(_), ReturnPreference::Minimal) => return response.finish(),
        (Body::Resource(_), ReturnPreference::OperationOutcome) => success_outcome(
            &format!("the interaction succeeded ({})", outcome.status),
            &outcome.issues,
        )
        .to_string(),
        (Body::Resource(text) | Body::Bundle(text), _) => text,
        (Body::Json(value), _) => value.to_string(),
    };
    response.content_type(format::FHIR_JSON).body(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn prefer_header_is_read() {
        let req = TestRequest::default()
            .insert_header(("Prefer", "return=minimal, handling=strict"))
            .to_http_request();
        assert_eq!(
            preferences(req.headers()),
            (ReturnPreference::Minimal, Handling::Strict)
        );
        let req = TestRequest::default()
            .insert_header(("Prefer", "return=OperationOutcome"))
            .to_http_request();
        assert_eq!(
            preferences(req.headers()).0,
            ReturnPreference::OperationOutcome
        );
        let req = TestRequest::default().to_http_request();
        assert_eq!(
            preferences(req.headers()),
            (ReturnPreference::Representation, Handling::Lenient)
        );
    }
}
