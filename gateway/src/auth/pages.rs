//! The authorization server's pages (templates in `templates/auth/`, checked at compile time
//! and HTML-escaped by askama): sign-in, patient picker, approval, EHR launch, the link page
//! where a patient binds their wallet to their record, and the error page shown when a
//! request cannot be sent back to the app. No JavaScript but the sign-in and link pages'
//! wallet script (`assets/siwe.js`) and the approval page's consent script
//! (`assets/consent.js`), each the only script its page's Content-Security-Policy allows;
//! every form carries the session's CSRF token; every page has a language, a heading, labelled fields
//! and, after a mistake, an error summary linking to the field.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use askama::Template;

/// A value with its words for people (an option, a scope).
#[derive(Debug)]
pub(crate) struct Choice {
    pub(crate) value: String,
    pub(crate) words: String,
}

#[derive(Debug, Template)]
#[template(path = "auth/error.html")]
pub(crate) struct ErrorPage<'a> {
    pub(crate) message: &'a str,
}

#[derive(Debug, Template)]
#[template(path = "auth/sign_in.html")]
pub(crate) struct SignIn<'a> {
    pub(crate) action: &'a str,
    pub(crate) csrf_token: &'a str,
    pub(crate) request_id: &'a str,
    pub(crate) next: &'a str,
    pub(crate) client_name: &'a str,
    pub(crate) error: &'a str,
    /// The field the error is about: `username` or `siwe-button`.
    pub(crate) error_target: &'a str,
    /// Sign-In with Ethereum: where the signed message goes, where the message comes from,
    /// and the script that asks the wallet.
    pub(crate) siwe_action: &'a str,
    pub(crate) siwe_message_url: &'a str,
    pub(crate) siwe_script_url: &'a str,
}

#[derive(Debug, Template)]
#[template(path = "auth/pick_patient.html")]
pub(crate) struct PickPatient<'a> {
    pub(crate) action: &'a str,
    pub(crate) csrf_token: &'a str,
    pub(crate) request_id: &'a str,
    pub(crate) client_name: &'a str,
    pub(crate) error: &'a str,
}

#[derive(Debug, Template)]
#[template(path = "auth/approve.html")]
pub(crate) struct Approve<'a> {
    pub(crate) action: &'a str,
    pub(crate) csrf_token: &'a str,
    pub(crate) request_id: &'a str,
    pub(crate) client_name: &'a str,
    pub(crate) patient: &'a str,
    pub(crate) scopes: Vec<Choice>,
    pub(crate) error: &'a str,
    /// The field the error is about: `scope-0` or `consent-record`.
    pub(crate) error_target: &'a str,
    /// The kinds of data an on-chain grant would open, in words; empty: no grant is offered
    /// (see `chain_consent.rs`).
    pub(crate) consent_kinds: &'a str,
    pub(crate) consent_expiries: Vec<Choice>,
    /// Where the script gets the grant to sign, and the script.
    pub(crate) consent_url: &'a str,
    pub(crate) consent_script_url: &'a str,
}

#[derive(Debug, Template)]
#[template(path = "auth/ehr_launch.html")]
pub(crate) struct EhrLaunch<'a> {
    pub(crate) action: &'a str,
    pub(crate) sign_out_action: &'a str,
    pub(crate) csrf_token: &'a str,
    pub(crate) clients: Vec<Choice>,
    pub(crate) error: &'a str,
}

/// The Content-Security-Policy of pages without a script.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http: https:; frame-ancestors 'none'";

/// A page as a response: HTML, never cached, never framed, no script.
pub(crate) fn render(status: StatusCode, page: &impl Template) -> HttpResponse {
    render_with_csp(status, page, CSP)
}

/// A page with a wallet script (sign-in, link, approval with consent on chain): [`render`],
/// with the script at `script_url` (and nothing else) allowed to run and to fetch
/// `message_url`.
pub(crate) fn render_with_wallet(
    status: StatusCode,
    page: &impl Template,
    script_url: &str,
    message_url: &str,
) -> HttpResponse {
    let csp = format!(
        "default-src 'none'; script-src {script_url}; connect-src {message_url}; style-src 'unsafe-inline'; form-action 'self' http: https:; frame-ancestors 'none'"
    );
    render_with_csp(status, page, &csp)
}

fn render_with_csp(status: StatusCode, page: &impl Template, csp: &str) -> HttpResponse {
    match page.render() {
        Ok(html) => HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .insert_header(("Cache-Control", "no-store"))
            .insert_header(("X-Frame-Options", "DENY"))
            .insert_header(("Content-Security-Policy", csp))
            .body(html),
        Err(error) => {
            tracing::error!(%error, "a page could not be rendered");
            HttpResponse::InternalServerError()
                .content_type("text/plain; charset=utf-8")
                .body("the page could not be shown")
        }
    }
}

/// The error page, for requests that cannot go back to the app.
pub(crate) fn error(status: StatusCode, message: &str) -> HttpResponse {
    render(status, &ErrorPage { message })
}

#[derive(Debug, Template)]
#[template(path = "auth/signed_out.html")]
pub(crate) struct SignedOut {}

/// `[base]/auth/link`: a patient enters the link code from their care provider and signs in
/// with their wallet, which binds it to their record.
#[derive(Debug, Template)]
#[template(path = "auth/link.html")]
pub(crate) struct Link<'a> {
    pub(crate) action: &'a str,
    pub(crate) csrf_token: &'a str,
    pub(crate) code: &'a str,
    /// What is wrong, about the field `error_target` (`code` or `siwe-button`).
    pub(crate) error: &'a str,
    pub(crate) error_target: &'a str,
    pub(crate) siwe_message_url: &'a str,
    pub(crate) siwe_script_url: &'a str,
}

/// The wallet is linked: the patient is signed in.
#[derive(Debug, Template)]
#[template(path = "auth/linked.html")]
pub(crate) struct Linked<'a> {
    pub(crate) wallet_address: &'a str,
}
