//! `GET` and `POST [base]/auth/authorize` (SMART App Launch 2.2 "Obtain authorization code")
//! and the pages behind it: sign-in (a password, or a patient's wallet: Sign-In with
//! Ethereum, `[base]/auth/siwe/*`), patient picker, approval; and the EHR side of an EHR
//! launch (`[base]/auth/ehr-launch`).
//!
//! Until the client and its `redirect_uri` are verified, an error is a page: nothing is sent
//! to an unverified URI. After, every error goes back to the app as `error`,
//! `error_description` and `state` on its `redirect_uri` (RFC 6749 §4.1.2.1).
//!
//! The browser holds a session cookie (a random id; the database keeps its SHA-256 only;
//! `HttpOnly`, `SameSite=Lax`, `Secure` when the base URL is https). Every form carries the
//! session's CSRF token. A sign-in starts a new session (no session fixation). Codes are
//! random, single use and short-lived, stored hashed ([`crate::store::grants`]).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::chain_consent;
use super::grants::{hash_secret, now_millis, random_secret};
use super::oauth::Form;
use super::pages::{self, Choice};
use super::scopes::{Context, OtherScope, ScopeSet};
use super::{Auth, users::Kind};
use crate::consent::Consent;
use crate::model::ResourceId;
use crate::store::clients::{self, Client};
use crate::store::grants::{self as store, Code, Grant, Launch, Request, Session};
use crate::store::users::{self, User};

/// The path of the authorization endpoint, under the FHIR base URL.
pub const AUTHORIZE_PATH: &str = "/auth/authorize";
/// Where a pending request continues (sign-in, patient, approval).
pub const APPROVE_PATH: &str = "/auth/approve";
pub const SIGN_IN_PATH: &str = "/auth/sign-in";
pub const SIGN_OUT_PATH: &str = "/auth/sign-out";
pub const EHR_LAUNCH_PATH: &str = "/auth/ehr-launch";
/// Sign-In with Ethereum: the message to sign, the signed message, the page's script.
pub const SIWE_MESSAGE_PATH: &str = "/auth/siwe/message";
pub const SIWE_SIGN_IN_PATH: &str = "/auth/siwe/sign-in";
pub const SIWE_SCRIPT_PATH: &str = "/auth/siwe.js";

/// The session cookie's name.
const COOKIE: &str = "fhir_gateway_session";
/// How long a user has to sign in and decide.
const REQUEST_LIFETIME_MILLIS: i64 = 15 * 60 * 1000;
/// How long an anonymous session lives.
const ANONYMOUS_SESSION_MILLIS: i64 = 30 * 60 * 1000;
/// How long a launch value from the EHR launch page or the CLI can be used.
pub const LAUNCH_LIFETIME_SECS: i64 = 5 * 60;

/// An error while handling a request, as the browser sees it.
pub(super) enum Failure {
    /// A page (the redirect URI is not verified, or the problem is the user's session).
    Page(StatusCode, String),
    /// Back to the app.
    Redirect {
        redirect_uri: String,
        error: &'static str,
        description: String,
        state: Option<String>,
    },
    /// The database or another internal failure.
    Internal,
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        tracing::error!(%error, "the authorization endpoint could not reach the database");
        Failure::Internal
    }
}

impl Failure {
    pub(super) fn page(message: impl Into<String>) -> Self {
        Failure::Page(StatusCode::BAD_REQUEST, message.into())
    }

    pub(super) fn response(self) -> HttpResponse {
        match self {
            Failure::Page(status, message) => {
                let mut page = pages::error(status, &message);
                page.extensions_mut().insert(crate::audit::Failure(message));
                page
            }
            Failure::Redirect {
                redirect_uri,
                error,
                description,
                state,
            } => {
                tracing::info!(error, "authorization request refused");
                // a refusal sent back to the app, for the audit record
                let failure = crate::audit::Failure(format!("{error}: {description}"));
                let mut params = vec![
                    ("error", error.to_owned()),
                    ("error_description", description),
                ];
                if let Some(state) = state {
                    params.push(("state", state));
                }
                let mut response = see_other(&with_query(&redirect_uri, &params));
                response.extensions_mut().insert(failure);
                response
            }
            Failure::Internal => pages::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong on our side. Try again later.",
            ),
        }
    }
}

/// `uri` with `params` added to its query.
fn with_query(uri: &str, params: &[(&str, String)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        query.append_pair(name, value);
    }
    let separator = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{separator}{}", query.finish())
}

pub(super) fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header(("Location", location))
        .insert_header(("Cache-Control", "no-store"))
        .finish()
}

/// `GET [base]/auth/authorize`.
pub(super) async fn authorize_get(auth: web::Data<Auth>, req: HttpRequest) -> HttpResponse {
    authorize(&auth, &req, req.query_string().as_bytes()).await
}

/// `POST [base]/auth/authorize` (form-encoded).
pub(super) async fn authorize_post(
    auth: web::Data<Auth>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    authorize(&auth, &req, &body).await
}

async fn authorize(auth: &Auth, req: &HttpRequest, params: &[u8]) -> HttpResponse {
    match start(auth, req, params).await {
        Ok(response) => response,
        Err(failure) => failure.response(),
    }
}

/// Checks an authorization request, records it, and sends the browser on to sign-in or
/// approval.
async fn start(auth: &Auth, req: &HttpRequest, params: &[u8]) -> Result<HttpResponse, Failure> {
    let form = Form::parse(params).map_err(|e| Failure::page(e.description))?;
    let get = |name: &str| {
        form.get(name)
            .map(|v| v.map(str::to_owned))
            .map_err(|e| Failure::page(e.description))
    };
    let client_id = get("client_id")?.ok_or_else(|| Failure::page("client_id is missing"))?;
    let client = find_client(auth, &client_id)
        .await?
        .filter(|c| !c.redirect_uris.is_empty())
        .ok_or_else(|| Failure::page("the app (client_id) is not registered for this server"))?;
    let redirect_uri =
        get("redirect_uri")?.ok_or_else(|| Failure::page("redirect_uri is missing"))?;
    if !client.has_redirect_uri(&redirect_uri) {
        return Err(Failure::page(
            "redirect_uri is not one of the app's registered redirect URIs",
        ));
    }
    // from here on, errors go back to the app
    let state = get("state").unwrap_or(None);
    let refuse = |error: &'static str, description: &str| Failure::Redirect {
        redirect_uri: redirect_uri.clone(),
        error,
        description: description.to_owned(),
        state: state.clone(),
    };
    let checked = |result: Result<Option<String>, Failure>| {
        result.map_err(|_| refuse("invalid_request", "a parameter is given more than once"))
    };
    match checked(get("response_type"))?.as_deref() {
        Some("code") => {}
        None => return Err(refuse("invalid_request", "response_type is missing")),
        Some(_) => {
            return Err(refuse(
                "unsupported_response_type",
                "response_type must be code",
            ));
        }
    }
    let state = state
        .clone()
        .ok_or_else(|| refuse("invalid_request", "state is missing"))?;
    match checked(get("code_challenge_method"))?.as_deref() {
        Some("S256") => {}
        None => {
            return Err(refuse(
                "invalid_request",
                "code_challenge_method is missing; PKCE with S256 is required",
            ));
        }
        Some("plain") => {
            return Err(refuse(
                "invalid_request",
                "code_challenge_method plain is not supported; use S256",
            ));
        }
        Some(_) => {
            return Err(refuse(
                "invalid_request",
                "code_challenge_method must be S256",
            ));
        }
    }
    let code_challenge = checked(get("code_challenge"))?
        .filter(|c| is_s256_challenge(c))
        .ok_or_else(|| {
            refuse(
                "invalid_request",
                "code_challenge is missing or not a base64url SHA-256 (43 characters)",
            )
        })?;
    match checked(get("aud"))? {
        Some(aud) if aud.trim_end_matches('/') == auth.fhir_base_url => {}
        Some(_) => {
            return Err(refuse(
                "invalid_request",
                &format!(
                    "aud must be this server's FHIR base URL, {}",
                    auth.fhir_base_url
                ),
            ));
        }
        None => {
            return Err(refuse(
                "invalid_request",
                &format!("aud is missing; it must be {}", auth.fhir_base_url),
            ));
        }
    }
    let requested = checked(get("scope"))?
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| refuse("invalid_scope", "scope is missing"))?;
    let nonce = checked(get("nonce"))?;
    let allowed = ScopeSet::parse(&client.scopes)
        .map_err(|_| refuse("server_error", "the app's registered scopes are not valid"))?;
    let mut granted = allowed.narrow(&requested);
    granted.resources.retain(|s| s.context != Context::System);
    let now = now_millis();
    // an EHR launch brings its context; a standalone launch gets it from the user
    let launch = match checked(get("launch"))? {
        Some(value) => {
            let mut tx = auth.store.begin().await?;
            let launch = store::take_launch(&mut tx, &hash_secret(&value), now).await?;
            tx.commit().await?;
            let launch = launch
                .filter(|l| l.client_id.as_ref().is_none_or(|c| *c == client.client_id))
                .ok_or_else(|| {
                    refuse(
                        "invalid_request",
                        "the launch value is unknown, used, expired or for another app",
                    )
                })?;
            Some(launch)
        }
        None => None,
    };
    match &launch {
        Some(launch) => {
            if launch.encounter.is_none() {
                granted.others.retain(|s| *s != OtherScope::LaunchEncounter);
            }
        }
        None => granted
            .others
            .retain(|s| !matches!(s, OtherScope::Launch | OtherScope::LaunchEncounter)),
    }
    if granted.is_empty() {
        return Err(refuse(
            "invalid_scope",
            "none of the requested scopes is allowed for this app",
        ));
    }
    let (session, new_cookie) = session_or_new(auth, req).await?;
    let request = Request {
        request_id: random_secret(),
        session_hash: session.session_hash.clone(),
        client_id: client.client_id.clone(),
        redirect_uri,
        scope: granted.to_string(),
        state,
        code_challenge,
        nonce,
        patient: launch.as_ref().map(|l| l.patient.clone()),
        encounter: launch.as_ref().and_then(|l| l.encounter.clone()),
        ehr_launch: launch.is_some(),
        expires_at: now + REQUEST_LIFETIME_MILLIS,
        consent_offer: None,
    };
    let mut tx = auth.store.begin().await?;
    store::insert_request(&mut tx, &request).await?;
    tx.commit().await?;
    let mut response = see_other(&with_query(
        &auth.url(APPROVE_PATH),
        &[("request", request.request_id)],
    ));
    if let Some(cookie) = new_cookie {
        set_cookie(&mut response, auth, &cookie);
    }
    Ok(response)
}

/// A PKCE S256 challenge: the base64url (no padding) of a SHA-256, 43 characters.
fn is_s256_challenge(text: &str) -> bool {
    text.len() == 43
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn find_client(auth: &Auth, client_id: &str) -> Result<Option<Client>, Failure> {
    Ok(clients::find(&mut *auth.store.reader().await?, client_id).await?)
}

/// The session id in the request's cookie, if any.
fn cookie_value(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all("cookie")
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// The live session of the request's cookie.
pub(super) async fn current_session(
    auth: &Auth,
    req: &HttpRequest,
) -> Result<Option<Session>, Failure> {
    let Some(id) = cookie_value(req) else {
        return Ok(None);
    };
    Ok(store::live_session(
        &mut *auth.store.reader().await?,
        &hash_secret(&id),
        now_millis(),
    )
    .await?)
}

/// Starts a session (anonymous when `user_id` is none); returns it and its cookie value.
async fn new_session(auth: &Auth, user_id: Option<String>) -> Result<(Session, String), Failure> {
    let id = random_secret();
    let now = now_millis();
    let lifetime = match user_id {
        Some(_) => auth.session_lifetime_millis(),
        None => ANONYMOUS_SESSION_MILLIS,
    };
    let session = Session {
        session_hash: hash_secret(&id),
        user_id,
        csrf_token: random_secret(),
        expires_at: now + lifetime,
        ended_at: None,
    };
    let mut tx = auth.store.begin().await?;
    if auth.housekeeping_due(now) {
        store::remove_expired(&mut tx, now).await?;
    }
    store::insert_session(&mut tx, &session, now).await?;
    tx.commit().await?;
    Ok((session, id))
}

/// The request's session, or a new anonymous one (with the cookie to set).
pub(super) async fn session_or_new(
    auth: &Auth,
    req: &HttpRequest,
) -> Result<(Session, Option<String>), Failure> {
    match current_session(auth, req).await? {
        Some(session) => Ok((session, None)),
        None => {
            let (session, cookie) = new_session(auth, None).await?;
            Ok((session, Some(cookie)))
        }
    }
}

pub(super) fn set_cookie(response: &mut HttpResponse, auth: &Auth, id: &str) {
    let secure = if auth.fhir_base_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={id}; Path={}/auth; HttpOnly; SameSite=Lax{secure}",
        auth.base_path
    );
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&cookie) {
        response
            .headers_mut()
            .append(actix_web::http::header::SET_COOKIE, value);
    }
}

/// The fields of a page's form, each name possibly more than once (the scope checkboxes).
pub(super) struct PageForm(Vec<(String, String)>);

impl PageForm {
    pub(super) fn parse(body: &[u8]) -> PageForm {
        PageForm(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

const SESSION_EXPIRED: &str =
    "Your session has expired or cookies are blocked. Go back to the app and start again.";
const FORM_NOT_OURS: &str =
    "This form has expired or did not come from this site. Go back to the app and start again.";

/// The session of a form post whose CSRF token matches it.
pub(super) async fn posted_session(
    auth: &Auth,
    req: &HttpRequest,
    form: &PageForm,
) -> Result<Session, Failure> {
    let session = current_session(auth, req)
        .await?
        .ok_or_else(|| Failure::Page(StatusCode::BAD_REQUEST, SESSION_EXPIRED.to_owned()))?;
    match form.get("csrf_token") {
        Some(token) if constant_time_eq(token.as_bytes(), session.csrf_token.as_bytes()) => {
            Ok(session)
        }
        _ => {
            tracing::info!("a form was posted without the session's CSRF token");
            Err(Failure::Page(
                StatusCode::FORBIDDEN,
                FORM_NOT_OURS.to_owned(),
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The pending request `request_id` of `session`, with its client.
pub(super) async fn pending(
    auth: &Auth,
    session: &Session,
    request_id: Option<&str>,
) -> Result<(Request, Client), Failure> {
    let expired = || Failure::page("This sign-in has expired. Go back to the app and start again.");
    let request_id = request_id.ok_or_else(expired)?;
    let mut conn = auth.store.reader().await?;
    let request = store::find_request(&mut conn, request_id, now_millis())
        .await?
        .filter(|r| r.session_hash == session.session_hash)
        .ok_or_else(expired)?;
    let client = clients::find(&mut conn, &request.client_id)
        .await?
        .ok_or_else(|| Failure::page("The app is no longer registered."))?;
    Ok((request, client))
}

/// The signed-in user of a session (not disabled).
pub(super) async fn session_user(auth: &Auth, session: &Session) -> Result<Option<User>, Failure> {
    let Some(user_id) = &session.user_id else {
        return Ok(None);
    };
    let user = users::find(&mut *auth.store.reader().await?, user_id).await?;
    Ok(user.filter(|u| u.disabled_at.is_none()))
}

fn needs_patient(scopes: &ScopeSet) -> bool {
    scopes.has_context(Context::Patient) || scopes.has(OtherScope::LaunchPatient)
}

/// `GET [base]/auth/approve?request=ID`: the next step of a pending request.
pub(super) async fn approve_get(
    auth: web::Data<Auth>,
    consent: web::Data<Consent>,
    req: HttpRequest,
) -> HttpResponse {
    let query = PageForm::parse(req.query_string().as_bytes());
    let result = async {
        let session = current_session(&auth, &req)
            .await?
            .ok_or_else(|| Failure::page(SESSION_EXPIRED))?;
        let (request, client) = pending(&auth, &session, query.get("request")).await?;
        next_step(&auth, &consent, &session, request, &client, "").await
    }
    .await;
    result.unwrap_or_else(Failure::response)
}

/// Sign-in, then the patient (when the scopes need one), then approval.
async fn next_step(
    auth: &Auth,
    consent: &Consent,
    session: &Session,
    mut request: Request,
    client: &Client,
    error: &str,
) -> Result<HttpResponse, Failure> {
    let Some(user) = session_user(auth, session).await? else {
        return Ok(sign_in_page(
            auth,
            session,
            &request.request_id,
            "",
            &client.name,
            Some(("username", error)),
        ));
    };
    let scopes = ScopeSet::parse_lenient(&request.scope);
    if needs_patient(&scopes) && request.patient.is_none() {
        if user.kind == Kind::Patient.as_str() {
            // a patient's context is their own record
            let own = user
                .fhir_user
                .strip_prefix("Patient/")
                .ok_or(Failure::Internal)?
                .to_owned();
            let mut tx = auth.store.begin().await?;
            store::set_request_patient(&mut tx, &request.request_id, &own).await?;
            tx.commit().await?;
            request.patient = Some(own);
        } else {
            return Ok(pages::render(
                StatusCode::OK,
                &pages::PickPatient {
                    action: &auth.url(APPROVE_PATH),
                    csrf_token: &session.csrf_token,
                    request_id: &request.request_id,
                    client_name: &client.name,
                    error,
                },
            ));
        }
    }
    approval_page(
        auth,
        consent,
        session,
        &request,
        client,
        &user,
        ("scope-0", error),
    )
    .await
}

/// The approval page: the scopes to tick and, for a patient with a bound wallet when the
/// gateway relays grants, the offer to record the consent on chain ([`chain_consent`]);
/// `error` is the field a mistake is about and what is wrong (empty: none).
async fn approval_page(
    auth: &Auth,
    consent: &Consent,
    session: &Session,
    request: &Request,
    client: &Client,
    user: &User,
    (error_target, error): (&str, &str),
) -> Result<HttpResponse, Failure> {
    let scopes = ScopeSet::parse_lenient(&request.scope);
    let choices = scopes
        .others
        .iter()
        .map(|s| Choice {
            value: s.as_str().to_owned(),
            words: s.describe().to_owned(),
        })
        .chain(scopes.resources.iter().map(|s| Choice {
            value: s.to_string(),
            words: s.describe(),
        }))
        .collect();
    let offered = chain_consent::offered(auth, consent, user, &scopes).await?;
    let script_url = auth.url(chain_consent::CONSENT_SCRIPT_PATH);
    let typed_data_url = auth.url(chain_consent::CONSENT_TYPED_DATA_PATH);
    let page = pages::Approve {
        action: &auth.url(APPROVE_PATH),
        csrf_token: &session.csrf_token,
        request_id: &request.request_id,
        client_name: &client.name,
        patient: request.patient.as_deref().unwrap_or_default(),
        scopes: choices,
        error,
        error_target,
        consent_kinds: offered.as_ref().map_or("", |o| o.kinds.as_str()),
        consent_expiries: chain_consent::expiry_choices(),
        consent_url: &typed_data_url,
        consent_script_url: &script_url,
    };
    Ok(match offered {
        Some(_) => pages::render_with_wallet(StatusCode::OK, &page, &script_url, &typed_data_url),
        None => pages::render(StatusCode::OK, &page),
    })
}

/// `POST [base]/auth/sign-in`: username and password; a new session on success.
pub(super) async fn sign_in(
    auth: web::Data<Auth>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let form = PageForm::parse(&body);
    let result = async {
        let session = posted_session(&auth, &req, &form).await?;
        let to_ehr_launch = form.get("next") == Some("ehr-launch");
        let pending_request = match to_ehr_launch {
            true => None,
            false => Some(pending(&auth, &session, form.get("request")).await?),
        };
        let username = form.get("username").unwrap_or_default();
        let password = form.get("password").unwrap_or_default();
        let user = super::users::sign_in_with_password(&auth.store, username, password)
            .await
            .map_err(|error| {
                tracing::error!(%error, "sign-in failed");
                Failure::Internal
            })?;
        let user = match user {
            Ok(user) => user,
            Err(reason) => {
                tracing::info!(?reason, "a sign-in was refused");
                let error =
                    "The username or password is not right, or this account cannot sign in now.";
                let mut page = sign_in_page(
                    &auth,
                    &session,
                    form.get("request").unwrap_or_default(),
                    form.get("next").unwrap_or_default(),
                    pending_request
                        .as_ref()
                        .map_or("", |(_, c)| c.name.as_str()),
                    Some(("username", error)),
                );
                // the attempt and why it failed, for the audit trail (never the password)
                page.extensions_mut().insert(crate::audit::Failure(format!(
                    "sign-in refused for the username {username:?}: {reason:?}"
                )));
                return Ok(page);
            }
        };
        start_signed_in_session(
            &auth,
            &session,
            &user,
            pending_request.as_ref().map(|(r, _)| r),
        )
        .await
    }
    .await;
    result.unwrap_or_else(Failure::response)
}

/// The sign-in page (password form and wallet button); `error` names the field it is about
/// (`username` or `siwe-button`) and says what is wrong.
fn sign_in_page(
    auth: &Auth,
    session: &Session,
    request_id: &str,
    next: &str,
    client_name: &str,
    error: Option<(&str, &str)>,
) -> HttpResponse {
    let (error_target, error) = error.unwrap_or(("username", ""));
    let script_url = auth.url(SIWE_SCRIPT_PATH);
    let message_url = auth.url(SIWE_MESSAGE_PATH);
    pages::render_with_wallet(
        StatusCode::OK,
        &pages::SignIn {
            action: &auth.url(SIGN_IN_PATH),
            csrf_token: &session.csrf_token,
            request_id,
            next,
            client_name,
            error,
            error_target,
            siwe_action: &auth.url(SIWE_SIGN_IN_PATH),
            siwe_message_url: &message_url,
            siwe_script_url: &script_url,
        },
        &script_url,
        &message_url,
    )
}

/// `GET [base]/auth/siwe.js`: the sign-in page's wallet script (EIP-1193: it asks the
/// browser's wallet for the account, gets the message from [`siwe_message`], has the wallet
/// sign it and posts it to [`siwe_sign_in`]).
pub(super) async fn siwe_script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(include_str!("../../assets/siwe.js"))
}

/// `POST [base]/auth/siwe/message` (form: `csrf_token`, `address`): the Sign-In with
/// Ethereum message (EIP-4361) for the address to sign, as JSON `{"message": ...}`; its nonce
/// is bound to this browser's session. A refusal is `{"error": ...}` (400, or 403 without the
/// session's CSRF token), in words for the page's status line.
pub(super) async fn siwe_message(
    auth: web::Data<Auth>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let form = PageForm::parse(&body);
    let refusal = |status: StatusCode, text: &str| {
        HttpResponse::build(status)
            .insert_header(("Cache-Control", "no-store"))
            .json(serde_json::json!({ "error": text }))
    };
    let session = match posted_session(&auth, &req, &form).await {
        Ok(session) => session,
        Err(Failure::Page(status, text)) => return refusal(status, &text),
        Err(_) => return refusal(StatusCode::INTERNAL_SERVER_ERROR, SOMETHING_WRONG),
    };
    let address = form.get("address").unwrap_or_default();
    match super::siwe::new_message(&auth.store, &auth.siwe, address, &session.session_hash).await {
        Ok(Ok(message)) => HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .json(serde_json::json!({ "message": message })),
        Ok(Err(refused)) => refusal(StatusCode::BAD_REQUEST, &refused.0),
        Err(error) => {
            tracing::error!(%error, "a sign-in message could not be made");
            refusal(StatusCode::INTERNAL_SERVER_ERROR, SOMETHING_WRONG)
        }
    }
}

pub(super) const SOMETHING_WRONG: &str = "Something went wrong on our side. Try again later.";

/// `POST [base]/auth/siwe/sign-in` (form: `csrf_token`, `request`, `message`, `signature`):
/// verifies the signed message ([`super::siwe::verify`]: this gateway's message, for this
/// browser, unexpired, signed by its address, once), finds the patient user of the wallet and
/// signs them in as the password form does. Refusals are shown on the sign-in page.
pub(super) async fn siwe_sign_in(
    auth: web::Data<Auth>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let form = PageForm::parse(&body);
    let result = async {
        let session = posted_session(&auth, &req, &form).await?;
        let (request, client) = pending(&auth, &session, form.get("request")).await?;
        let refuse = |text: &str| {
            let mut page = sign_in_page(
                &auth,
                &session,
                &request.request_id,
                "",
                &client.name,
                Some(("siwe-button", text)),
            );
            // why the wallet sign-in failed, for the audit trail
            page.extensions_mut()
                .insert(crate::audit::Failure(format!("wallet sign-in refused: {text}")));
            Ok(page)
        };
        // a browser submits a form's line breaks as CRLF; EIP-4361 messages have LF
        let message = form.get("message").unwrap_or_default().replace("\r\n", "\n");
        let message = message.as_str();
        let signature = form.get("signature").unwrap_or_default();
        if message.is_empty() || signature.is_empty() {
            return refuse("Sign the message with your wallet first.");
        }
        let verified = super::siwe::verify(
            &auth.store,
            &auth.siwe,
            message,
            signature,
            &session.session_hash,
        )
        .await
        .map_err(|error| {
            tracing::error!(%error, "a signed sign-in message could not be checked");
            Failure::Internal
        })?;
        let address = match verified {
            Ok(address) => address,
            Err(refused) => {
                tracing::info!(reason = %refused, "a wallet sign-in was refused");
                let text = format!("Your wallet's signature was not accepted: {refused}.");
                return refuse(&text);
            }
        };
        let user = super::users::find_by_wallet(&auth.store, &address)
            .await
            .map_err(|error| {
                tracing::error!(%error, "the wallet's user could not be looked up");
                Failure::Internal
            })?
            .filter(|u| u.kind == Kind::Patient.as_str());
        let Some(user) = user else {
            tracing::info!("a wallet without a patient account tried to sign in");
            return refuse(
                "This wallet is not registered for a patient who can sign in here. Use the wallet your care provider registered for you.",
            );
        };
        start_signed_in_session(&auth, &session, &user, Some(&request)).await
    }
    .await;
    result.unwrap_or_else(Failure::response)
}

/// After a user proved who they are (a password, or a wallet's signature with
/// [`siwe_sign_in`]): replaces the anonymous `session` by a signed-in one (no session
/// fixation), moves the pending request to it, and sends the browser on (the request's next
/// step, or the EHR launch page).
pub(super) async fn start_signed_in_session(
    auth: &Auth,
    session: &Session,
    user: &User,
    pending_request: Option<&Request>,
) -> Result<HttpResponse, Failure> {
    let location = match pending_request {
        Some(request) => with_query(
            &auth.url(APPROVE_PATH),
            &[("request", request.request_id.clone())],
        ),
        None => auth.url(EHR_LAUNCH_PATH),
    };
    signed_in_to(auth, session, user, pending_request, &location).await
}

/// [`start_signed_in_session`], the browser sent on to `location`.
pub(super) async fn signed_in_to(
    auth: &Auth,
    session: &Session,
    user: &User,
    pending_request: Option<&Request>,
    location: &str,
) -> Result<HttpResponse, Failure> {
    tracing::info!(user_id = %user.user_id, "a user signed in");
    let (signed_in, cookie) = new_session(auth, Some(user.user_id.clone())).await?;
    let mut tx = auth.store.begin().await?;
    store::end_session(&mut tx, &session.session_hash, now_millis()).await?;
    if let Some(request) = pending_request {
        store::move_request(&mut tx, &request.request_id, &signed_in.session_hash).await?;
    }
    tx.commit().await?;
    let mut response = see_other(location);
    set_cookie(&mut response, auth, &cookie);
    // who signed in, for the sign-in's audit record
    response.extensions_mut().insert(crate::audit::Who::user(
        super::claims::UserKind::of_stored(&user.kind),
        &user.user_id,
        Some(user.fhir_user.as_str()),
    ));
    Ok(response)
}

/// `POST [base]/auth/approve`: a patient picked, or the user's decision.
pub(super) async fn approve_post(
    auth: web::Data<Auth>,
    consent: web::Data<Consent>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let form = PageForm::parse(&body);
    let result = async {
        let session = posted_session(&auth, &req, &form).await?;
        let (request, client) = pending(&auth, &session, form.get("request")).await?;
        let Some(user) = session_user(&auth, &session).await? else {
            return next_step(&auth, &consent, &session, request, &client, "").await;
        };
        match (form.get("decision"), form.get("patient")) {
            (None, Some(patient)) => {
                pick_patient(&auth, &consent, &session, request, &client, &user, patient).await
            }
            (Some("deny"), _) => {
                let mut tx = auth.store.begin().await?;
                store::remove_request(&mut tx, &request.request_id, now_millis()).await?;
                tx.commit().await?;
                Err(Failure::Redirect {
                    redirect_uri: request.redirect_uri,
                    error: "access_denied",
                    description: "the user denied access".to_owned(),
                    state: Some(request.state),
                })
            }
            (Some("approve"), _) => {
                approve(&auth, &consent, &session, request, &client, &user, &form).await
            }
            _ => Err(Failure::page("Choose Allow or Deny.")),
        }
    }
    .await;
    result.unwrap_or_else(Failure::response)
}

async fn pick_patient(
    auth: &Auth,
    consent: &Consent,
    session: &Session,
    request: Request,
    client: &Client,
    user: &User,
    patient: &str,
) -> Result<HttpResponse, Failure> {
    if user.kind == Kind::Patient.as_str() || request.patient.is_some() {
        return Err(Failure::page("The patient is already chosen."));
    }
    let patient = patient.trim();
    if !patient_exists(auth, patient).await? {
        return next_step(
            auth,
            consent,
            session,
            request,
            client,
            "No patient has that id.",
        )
        .await;
    }
    let mut tx = auth.store.begin().await?;
    store::set_request_patient(&mut tx, &request.request_id, patient).await?;
    tx.commit().await?;
    Ok(see_other(&with_query(
        &auth.url(APPROVE_PATH),
        &[("request", request.request_id)],
    )))
}

/// Whether `Type/id` exists and is not deleted.
async fn resource_exists(auth: &Auth, resource_type: &str, id: &str) -> Result<bool, Failure> {
    if ResourceId::parse(id).is_err() {
        return Ok(false);
    }
    let found =
        crate::store::read_current(&mut *auth.store.reader().await?, resource_type, id).await?;
    Ok(found.is_some_and(|v| v.body.is_some()))
}

async fn patient_exists(auth: &Auth, id: &str) -> Result<bool, Failure> {
    resource_exists(auth, "Patient", id).await
}

/// The user allowed the app the ticked scopes of `form`: records the consent on chain first
/// when the patient ticked that box ([`chain_consent::record`]; a refusal shows the page
/// again), then issues the authorization code.
async fn approve(
    auth: &Auth,
    consent: &Consent,
    session: &Session,
    request: Request,
    client: &Client,
    user: &User,
    form: &PageForm,
) -> Result<HttpResponse, Failure> {
    let granted = ScopeSet::parse_lenient(&request.scope).keep(&form.all("scope"));
    if granted.is_empty() {
        return next_step(
            auth,
            consent,
            session,
            request,
            client,
            "Choose at least one thing the app may do, or choose Deny.",
        )
        .await;
    }
    if needs_patient(&granted) && request.patient.is_none() {
        return next_step(auth, consent, session, request, client, "").await;
    }
    if form.get("consent") == Some("record") {
        match chain_consent::record(auth, consent, &request, user, &granted, form).await? {
            Ok(relayed) => tracing::info!(
                client_id = %client.client_id,
                grant = relayed.grant_id,
                block = relayed.block_number,
                "recorded the patient's consent on chain with the approval"
            ),
            Err(text) => {
                let error = ("consent-record", text.as_str());
                return approval_page(auth, consent, session, &request, client, user, error).await;
            }
        }
    }
    let code = random_secret();
    let now = now_millis();
    let record = Code {
        grant: Grant {
            family_id: uuid::Uuid::new_v4().to_string(),
            client_id: client.client_id.clone(),
            user_id: user.user_id.clone(),
            scope: granted.to_string(),
            need_patient_banner: request.patient.is_some(),
            patient: request.patient.clone(),
            encounter: request.encounter.clone(),
        },
        redirect_uri: request.redirect_uri.clone(),
        session_hash: session.session_hash.clone(),
        code_challenge: request.code_challenge.clone(),
        nonce: request.nonce.clone(),
        expires_at: now + auth.code_lifetime_millis(),
        used_at: None,
    };
    let mut tx = auth.store.begin().await?;
    store::insert_code(&mut tx, &hash_secret(&code), &record).await?;
    store::remove_request(&mut tx, &request.request_id, now).await?;
    tx.commit().await?;
    tracing::info!(client_id = %client.client_id, user_id = %user.user_id, "issued an authorization code");
    Ok(see_other(&with_query(
        &request.redirect_uri,
        &[("code", code), ("state", request.state)],
    )))
}

/// `POST [base]/auth/sign-out`: ends the session (and the `online_access` refresh tokens
/// bound to it).
pub(super) async fn sign_out(
    auth: web::Data<Auth>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let form = PageForm::parse(&body);
    let result = async {
        let session = posted_session(&auth, &req, &form).await?;
        let user = session_user(&auth, &session).await?;
        let mut tx = auth.store.begin().await?;
        store::end_session(&mut tx, &session.session_hash, now_millis()).await?;
        tx.commit().await?;
        let mut page = pages::render(StatusCode::OK, &pages::SignedOut {});
        // who signed out, for the audit record
        if let Some(user) = user {
            page.extensions_mut().insert(crate::audit::Who::user(
                super::claims::UserKind::of_stored(&user.kind),
                &user.user_id,
                Some(user.fhir_user.as_str()),
            ));
        }
        Ok::<_, Failure>(page)
    }
    .await;
    result.unwrap_or_else(Failure::response)
}

/// `GET [base]/auth/ehr-launch`: the EHR side of an EHR launch, for signed-in practitioners
/// and staff.
pub(super) async fn ehr_launch_get(auth: web::Data<Auth>, req: HttpRequest) -> HttpResponse {
    let result = async {
        let (session, new_cookie) = session_or_new(&auth, &req).await?;
        let mut response = ehr_launch_page(&auth, &session, "").await?;
        if let Some(cookie) = new_cookie {
            set_cookie(&mut response, &auth, &cookie);
        }
        Ok::<_, Failure>(response)
    }
    .await;
    result.unwrap_or_else(Failure::response)
}

async fn ehr_launch_page(
    auth: &Auth,
    session: &Session,
    error: &str,
) -> Result<HttpResponse, Failure> {
    let user = session_user(auth, session)
        .await?
        .filter(|u| u.kind != Kind::Patient.as_str());
    if user.is_none() {
        return Ok(sign_in_page(
            auth,
            session,
            "",
            "ehr-launch",
            "",
            Some(("username", error)),
        ));
    }
    let clients = clients::list(&mut *auth.store.reader().await?)
        .await?
        .into_iter()
        .filter(|c| c.launch_uri.is_some())
        .map(|c| Choice {
            value: c.client_id,
            words: c.name,
        })
        .collect();
    Ok(pages::render(
        StatusCode::OK,
        &pages::EhrLaunch {
            action: &auth.url(EHR_LAUNCH_PATH),
            sign_out_action: &auth.url(SIGN_OUT_PATH),
            csrf_token: &session.csrf_token,
            clients,
            error,
        },
    ))
}

/// `POST [base]/auth/ehr-launch`: issues a launch value and opens the app's launch URI with
/// `iss` and `launch`.
pub(super) async fn ehr_launch_post(
    auth: web::Data<Auth>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let form = PageForm::parse(&body);
    let result = async {
        let session = posted_session(&auth, &req, &form).await?;
        let signed_in = session_user(&auth, &session)
            .await?
            .is_some_and(|u| u.kind != Kind::Patient.as_str());
        if !signed_in {
            return ehr_launch_page(&auth, &session, "").await;
        }
        let client = match form.get("client_id") {
            Some(id) => find_client(&auth, id).await?,
            None => None,
        };
        let Some((client, launch_uri)) =
            client.and_then(|c| c.launch_uri.clone().map(|uri| (c, uri)))
        else {
            return ehr_launch_page(&auth, &session, "Choose an app.").await;
        };
        let patient = form.get("patient").unwrap_or_default().trim();
        if !patient_exists(&auth, patient).await? {
            return ehr_launch_page(&auth, &session, "No patient has that id.").await;
        }
        let encounter = form
            .get("encounter")
            .map(str::trim)
            .filter(|e| !e.is_empty());
        if let Some(encounter) = encounter
            && !resource_exists(&auth, "Encounter", encounter).await?
        {
            return ehr_launch_page(&auth, &session, "No encounter has that id.").await;
        }
        let launch = issue_launch(&auth.store, patient, encounter, Some(&client.client_id))
            .await
            .map_err(|error| {
                tracing::error!(%error, "a launch value could not be stored");
                Failure::Internal
            })?;
        Ok(see_other(&with_query(
            &launch_uri,
            &[("iss", auth.fhir_base_url.clone()), ("launch", launch)],
        )))
    }
    .await;
    result.unwrap_or_else(Failure::response)
}

/// Issues a launch value for an EHR launch: opaque, single use, valid for
/// [`LAUNCH_LIFETIME_SECS`]; it carries the patient (and encounter) context to the token.
/// The caller checks that they exist.
pub async fn issue_launch(
    store: &crate::store::Store,
    patient: &str,
    encounter: Option<&str>,
    client_id: Option<&str>,
) -> anyhow::Result<String> {
    ResourceId::parse(patient)?;
    if let Some(encounter) = encounter {
        ResourceId::parse(encounter)?;
    }
    let value = random_secret();
    let launch = Launch {
        client_id: client_id.map(str::to_owned),
        patient: patient.to_owned(),
        encounter: encounter.map(str::to_owned),
        expires_at: now_millis() + LAUNCH_LIFETIME_SECS * 1000,
    };
    let mut tx = store.begin().await?;
    store::insert_launch(&mut tx, &hash_secret(&value), &launch).await?;
    tx.commit().await?;
    Ok(value)
}
