//! CORS for browser SMART apps (SMART App Launch 2.2: the FHIR API, the token endpoint and the
//! discovery documents are called cross-origin). Any origin, no credentials (apps send bearer
//! tokens, never cookies). The authorization server's own pages (sign-in, approval: cookie
//! based, navigated to, never fetched) get no CORS: of the paths under `[base]/auth/` only
//! the endpoints apps call from scripts have it.

use actix_cors::Cors;
use actix_web::http::{Method, header};

/// The endpoints under `[base]/auth/` browser apps call from scripts.
const SCRIPT_ENDPOINTS: [&str; 6] = [
    "token",
    "register",
    "revoke",
    "introspect",
    "clients",
    "patients",
];

/// The CORS middleware for the gateway mounted at `base_path` (the FHIR base URL's path).
pub fn middleware(base_path: &str) -> Cors {
    let auth_prefix = format!("{base_path}/auth/");
    Cors::default()
        .allowed_origin_fn(move |_origin, head| {
            head.uri
                .path()
                .strip_prefix(&auth_prefix)
                .is_none_or(|rest| {
                    let first = rest.split('/').next().unwrap_or_default();
                    SCRIPT_ENDPOINTS.contains(&first)
                })
        })
        .allowed_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::HeaderName::from_static("if-none-exist"),
            header::HeaderName::from_static("prefer"),
        ])
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            header::CONTENT_LOCATION,
            header::LAST_MODIFIED,
            header::WWW_AUTHENTICATE,
        ])
        .max_age(3600)
}
