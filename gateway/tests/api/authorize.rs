//! SMART App Launch 2.2: the authorization code flow driven as a browser would (reqwest,
//! redirects followed by hand, the session cookie kept), against both backends: standalone
//! launch by a practitioner who picks a patient and by a patient user, EHR launch, the
//! `id_token` verified with the served JWKS, refresh rotation and reuse detection,
//! revocation, introspection, and every refusal the SHALL list names.

use base64::Engine as _;
use gateway::auth::clients::{self, ClientKind, NewClient};
use gateway::auth::users::{self, Credential, Kind};
use gateway::store::Store;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::both;
use crate::helpers::TestApp;

pub(crate) const REDIRECT_URI: &str = "https://app.example/callback";
const LAUNCH_URI: &str = "https://app.example/launch";
const PASSWORD: &str = "correct horse battery staple";
const ALL_SCOPES: &str = "openid fhirUser launch launch/patient launch/encounter \
                          offline_access online_access patient/*.rs user/*.rs";

/// What a test sets up: a public app, a practitioner, a patient user and their Patient.
pub(crate) struct Setup {
    pub(crate) client_id: String,
    pub(crate) patient_id: String,
    pub(crate) patient_user_id: String,
}

pub(crate) async fn setup(app: &TestApp) -> Setup {
    setup_at(app, &app.base).await
}

/// [`setup`], the FHIR API reached at `fhir_base` (the app's own when it is behind a proxy).
async fn setup_at(app: &TestApp, fhir_base: &str) -> Setup {
    let response = app
        .client
        .post(format!("{fhir_base}/Patient"))
        .header("content-type", crate::helpers::FHIR_JSON)
        .body(json!({"resourceType": "Patient", "name": [{"family": "Chalmers"}]}).to_string())
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.expect("JSON");
    let patient_id = created["id"].as_str().expect("an id").to_owned();
    let store = Store::connect(&app.database).await.expect("the store");
    let client = clients::register(
        &store,
        NewClient {
            launch_uri: Some(LAUNCH_URI.to_owned()),
            ..NewClient::app("Growth Chart", ClientKind::Public, REDIRECT_URI, ALL_SCOPES)
        },
    )
    .await
    .expect("registered")
    .client;
    users::add(
        &store,
        Kind::Practitioner,
        Credential::Password {
            username: "dr.who".to_owned(),
            password: PASSWORD.to_owned().into(),
        },
        "Practitioner/7",
    )
    .await
    .expect("practitioner added");
    let patient_user = users::add(
        &store,
        Kind::Patient,
        Credential::Wallet("0x00000000000000000000000000000000000000Aa".to_owned()),
        &format!("Patient/{patient_id}"),
    )
    .await
    .expect("patient added");
    store.close().await;
    Setup {
        client_id: client.client_id,
        patient_id,
        patient_user_id: patient_user.user_id,
    }
}

/// A browser: no automatic redirects, one session cookie.
pub(crate) struct Browser {
    http: reqwest::Client,
    cookie: Option<String>,
}

impl Browser {
    pub(crate) fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a client"),
            cookie: None,
        }
    }

    fn keep_cookie(&mut self, response: &reqwest::Response) {
        if let Some(set) = response.headers().get("set-cookie") {
            let set = set.to_str().expect("ASCII");
            assert!(
                set.contains("HttpOnly") && set.contains("SameSite=Lax"),
                "cookie attributes: {set}"
            );
            self.cookie = set.split(';').next().map(str::to_owned);
        }
    }

    pub(crate) async fn get(&mut self, url: &str) -> reqwest::Response {
        let mut request = self.http.get(url);
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.expect("request sent");
        self.keep_cookie(&response);
        response
    }

    pub(crate) async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.http.post(url).form(form);
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.expect("request sent");
        self.keep_cookie(&response);
        response
    }

    /// The page at `url` (200), as text.
    pub(crate) async fn page(&mut self, url: &str) -> String {
        let response = self.get(url).await;
        assert_eq!(response.status(), 200, "GET {url}");
        response.text().await.expect("text")
    }

    /// The SHA-256 of the session id, as the database keys it.
    fn session_hash(&self) -> String {
        let id = self
            .cookie
            .as_deref()
            .and_then(|c| c.split_once('='))
            .expect("a session cookie")
            .1;
        hex::encode(Sha256::digest(id.as_bytes()))
    }
}

pub(crate) fn location(response: &reqwest::Response) -> String {
    assert_eq!(response.status(), 303, "a redirect");
    response.headers()["location"]
        .to_str()
        .expect("ASCII")
        .to_owned()
}

/// The value of the form field `name` on a page.
pub(crate) fn field(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} on {page}"))
        + marker.len();
    page[start..].split('"').next().expect("a value").to_owned()
}

/// The query parameters of a URL.
fn query(url: &str) -> Vec<(String, String)> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub(crate) fn param(url: &str, name: &str) -> Option<String> {
    query(url)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// A PKCE verifier and its S256 challenge.
pub(crate) fn pkce() -> (String, String) {
    let verifier = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// An authorization request URL: the defaults, with `changes` (a `None` leaves it out).
fn authorize_url(app: &TestApp, client_id: &str, changes: &[(&str, Option<&str>)]) -> String {
    let (_, challenge) = pkce();
    authorize_url_with(app, client_id, &challenge, changes)
}

pub(crate) fn authorize_url_with(
    app: &TestApp,
    client_id: &str,
    challenge: &str,
    changes: &[(&str, Option<&str>)],
) -> String {
    let mut params: Vec<(&str, Option<&str>)> = vec![
        ("response_type", Some("code")),
        ("client_id", Some(client_id)),
        ("redirect_uri", Some(REDIRECT_URI)),
        ("scope", Some(ALL_SCOPES)),
        ("state", Some("st4te")),
        ("aud", Some(&app.base)),
        ("code_challenge", Some(challenge)),
        ("code_challenge_method", Some("S256")),
        ("nonce", Some("n0nce")),
    ];
    for (name, value) in changes {
        match params.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = *value,
            None => params.push((name, *value)),
        }
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    format!("{}/auth/authorize?{}", app.base, query.finish())
}

/// Signs in the practitioner on the sign-in page at `approve_url`; returns the next page.
async fn sign_in_practitioner(browser: &mut Browser, app: &TestApp, sign_in_page: &str) -> String {
    let response = browser
        .post(
            &format!("{}/auth/sign-in", app.base),
            &[
                ("csrf_token", &field(sign_in_page, "csrf_token")),
                ("request", &field(sign_in_page, "request")),
                ("next", &field(sign_in_page, "next")),
                ("username", "dr.who"),
                ("password", PASSWORD),
            ],
        )
        .await;
    let next = location(&response);
    browser.page(&next).await
}

/// Approves every scope on the approval page; the redirect back to the app.
async fn approve_all(browser: &mut Browser, app: &TestApp, page: &str) -> String {
    approve_except(browser, app, page, &[]).await
}

/// Approves the scopes on the approval page but `unticked`; the redirect back to the app.
pub(crate) async fn approve_except(
    browser: &mut Browser,
    app: &TestApp,
    page: &str,
    unticked: &[&str],
) -> String {
    assert!(
        page.contains("Allow Growth Chart"),
        "the approval page: {page}"
    );
    let scopes: Vec<String> = page
        .split("name=\"scope\" value=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap_or_default().to_owned())
        .filter(|scope| !unticked.contains(&scope.as_str()))
        .collect();
    let csrf = field(page, "csrf_token");
    let request = field(page, "request");
    let mut form = vec![
        ("csrf_token", csrf.as_str()),
        ("request", request.as_str()),
        ("decision", "approve"),
    ];
    form.extend(scopes.iter().map(|s| ("scope", s.as_str())));
    let response = browser
        .post(&format!("{}/auth/approve", app.base), &form)
        .await;
    location(&response)
}

/// A practitioner's standalone launch, picking the patient; the code and its verifier.
async fn practitioner_code(app: &TestApp, setup: &Setup, scope: &str) -> (String, String) {
    practitioner_code_in(&mut Browser::new(), app, setup, scope).await
}

async fn practitioner_code_in(
    browser: &mut Browser,
    app: &TestApp,
    setup: &Setup,
    scope: &str,
) -> (String, String) {
    let (verifier, challenge) = pkce();
    let url = authorize_url_with(app, &setup.client_id, &challenge, &[("scope", Some(scope))]);
    let next = location(&browser.get(&url).await);
    let sign_in = browser.page(&next).await;
    assert!(sign_in.contains("<h1>Sign in</h1>"), "{sign_in}");
    let mut page = sign_in_practitioner(browser, app, &sign_in).await;
    if page.contains("Choose a patient") {
        let response = browser
            .post(
                &format!("{}/auth/approve", app.base),
                &[
                    ("csrf_token", &field(&page, "csrf_token")),
                    ("request", &field(&page, "request")),
                    ("patient", &setup.patient_id),
                ],
            )
            .await;
        page = browser.page(&location(&response)).await;
    }
    let back = approve_all(browser, app, &page).await;
    assert!(back.starts_with(REDIRECT_URI), "{back}");
    assert_eq!(param(&back, "state").as_deref(), Some("st4te"));
    (param(&back, "code").expect("a code"), verifier)
}

async fn token(app: &TestApp, form: &[(&str, &str)]) -> (u16, Value) {
    let response = app
        .client
        .post(format!("{}/auth/token", app.base))
        .form(form)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    if status == 200 {
        assert_eq!(response.headers()["cache-control"], "no-store");
        assert_eq!(response.headers()["pragma"], "no-cache");
    }
    (status, response.json().await.expect("JSON"))
}

pub(crate) async fn exchange(
    app: &TestApp,
    setup: &Setup,
    code: &str,
    verifier: &str,
) -> (u16, Value) {
    token(
        app,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", verifier),
            ("client_id", &setup.client_id),
        ],
    )
    .await
}

async fn refresh(
    app: &TestApp,
    setup: &Setup,
    token_value: &str,
    scope: Option<&str>,
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", token_value),
        ("client_id", setup.client_id.as_str()),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    token(app, &form).await
}

/// Introspects `token_value`, authorized by the bearer token `caller`.
async fn introspect(app: &TestApp, caller: &str, token_value: &str) -> Value {
    let response = app
        .client
        .post(format!("{}/auth/introspect", app.base))
        .bearer_auth(caller)
        .form(&[("token", token_value)])
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 200);
    response.json().await.expect("JSON")
}

/// Verifies an ES256 JWT of the gateway with the JWKS it serves.
async fn verify_with_jwks(app: &TestApp, jwt: &str, audience: &str) -> Value {
    let (_, jwks) = app.get_json(".well-known/jwks.json").await;
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).expect("a JWKS");
    let header = jsonwebtoken::decode_header(jwt).expect("a JWT");
    let kid = header.kid.expect("a kid");
    let key =
        jsonwebtoken::DecodingKey::from_jwk(jwks.find(&kid).expect("the key")).expect("a key");
    // access tokens are ES256; ID tokens RS256 (SMART sso-openid-connect)
    let expected = if audience == app.base {
        jsonwebtoken::Algorithm::ES256
    } else {
        jsonwebtoken::Algorithm::RS256
    };
    assert_eq!(header.alg, expected);
    let mut validation = jsonwebtoken::Validation::new(expected);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[&app.base]);
    jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .expect("the JWT verifies")
        .claims
}

both!(
    practitioner_standalone_launch_picks_a_patient,
    |app: TestApp| async move {
        let setup = setup(&app).await;
        let (code, verifier) = practitioner_code(&app, &setup, ALL_SCOPES).await;
        let (status, body) = exchange(&app, &setup, &code, &verifier).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["patient"], setup.patient_id.as_str());
        assert_eq!(body["need_patient_banner"], true);
        assert!(body["expires_in"].as_i64().is_some_and(|s| s > 0), "{body}");
        assert!(body["refresh_token"].is_string(), "{body}");
        let scope = body["scope"].as_str().expect("scope");
        assert!(
            scope.contains("patient/*.rs") && scope.contains("openid"),
            "{scope}"
        );
        assert!(
            !scope.contains("launch/encounter"),
            "no encounter in a standalone launch: {scope}"
        );
        // the id_token, verified with the JWKS the gateway serves
        let id_token = verify_with_jwks(
            &app,
            body["id_token"].as_str().expect("an id_token"),
            &setup.client_id,
        )
        .await;
        assert_eq!(id_token["fhirUser"], "Practitioner/7");
        assert_eq!(id_token["nonce"], "n0nce");
        // the access token, for the FHIR base URL, with the launch context
        let access = body["access_token"].as_str().expect("an access token");
        let claims = verify_with_jwks(&app, access, &app.base).await;
        assert_eq!(claims["patient"], setup.patient_id.as_str());
        assert_eq!(claims["client_id"], setup.client_id.as_str());
        assert_eq!(claims["user_kind"], "practitioner");
        let info = introspect(&app, access, access).await;
        assert_eq!(info["active"], true, "{info}");
        assert_eq!(info["patient"], setup.patient_id.as_str());
        assert_eq!(info["fhirUser"], "Practitioner/7");
        assert_eq!(info["scope"], body["scope"]);
        assert_eq!(info["exp"], claims["exp"]);
    }
);

both!(
    patient_user_gets_their_own_record,
    |app: TestApp| async move {
        let setup = setup(&app).await;
        let mut browser = Browser::new();
        let (verifier, challenge) = pkce();
        let url = authorize_url_with(
            &app,
            &setup.client_id,
            &challenge,
            &[(
                "scope",
                Some("openid fhirUser launch/patient patient/*.rs offline_access"),
            )],
        );
        let next = location(&browser.get(&url).await);
        let sign_in = browser.page(&next).await;
        assert!(
            sign_in.contains("sign-in-with-ethereum"),
            "the wallet hook: {sign_in}"
        );
        // the session is given the patient user as a verified wallet signature would (the
        // wallet sign-in itself is tested in tests/api/siwe.rs)
        let mut db = app.database_connection().await;
        sqlx::query("UPDATE auth_session SET user_id = $1 WHERE session_hash = $2")
            .bind(&setup.patient_user_id)
            .bind(browser.session_hash())
            .execute(&mut db)
            .await
            .expect("the session signed in");
        let page = browser.page(&next).await;
        assert!(
            !page.contains("Choose a patient"),
            "a patient picks no one: {page}"
        );
        // the user narrows the grant: no offline access
        let back = approve_except(&mut browser, &app, &page, &["offline_access"]).await;
        let code = param(&back, "code").expect("a code");
        let (status, body) = exchange(&app, &setup, &code, &verifier).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["patient"], setup.patient_id.as_str());
        assert_eq!(body["scope"], "openid fhirUser launch/patient patient/*.rs");
        assert!(
            body.get("refresh_token").is_none(),
            "offline access was not approved: {body}"
        );
        let id_token = verify_with_jwks(
            &app,
            body["id_token"].as_str().expect("id_token"),
            &setup.client_id,
        )
        .await;
        assert_eq!(
            id_token["fhirUser"],
            format!("Patient/{}", setup.patient_id)
        );
    }
);

both!(
    ehr_launch_brings_patient_and_encounter,
    |app: TestApp| async move {
        let setup = setup(&app).await;
        let encounter = app
            .create(
                &json!({"resourceType": "Encounter", "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{}", setup.patient_id)}}),
            )
            .await;
        let mut browser = Browser::new();
        let launch_page = format!("{}/auth/ehr-launch", app.base);
        let sign_in = browser.page(&launch_page).await;
        assert_eq!(field(&sign_in, "next"), "ehr-launch");
        let page = sign_in_practitioner(&mut browser, &app, &sign_in).await;
        assert!(page.contains("Launch an app"), "{page}");
        let response = browser
            .post(
                &launch_page,
                &[
                    ("csrf_token", &field(&page, "csrf_token")),
                    ("client_id", &setup.client_id),
                    ("patient", &setup.patient_id),
                    ("encounter", &encounter),
                ],
            )
            .await;
        let opened = location(&response);
        assert!(opened.starts_with(LAUNCH_URI), "{opened}");
        assert_eq!(param(&opened, "iss").as_deref(), Some(app.base.as_str()));
        let launch = param(&opened, "launch").expect("a launch value");
        // the app's authorization request with the launch value; the user is signed in already
        let (verifier, challenge) = pkce();
        let scope = "launch openid fhirUser patient/*.rs launch/encounter";
        let url = authorize_url_with(
            &app,
            &setup.client_id,
            &challenge,
            &[("scope", Some(scope)), ("launch", Some(&launch))],
        );
        let next = location(&browser.get(&url).await);
        let page = browser.page(&next).await;
        assert!(
            !page.contains("Choose a patient"),
            "the launch names the patient: {page}"
        );
        let back = approve_all(&mut browser, &app, &page).await;
        let code = param(&back, "code").expect("a code");
        let (status, body) = exchange(&app, &setup, &code, &verifier).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["patient"], setup.patient_id.as_str());
        assert_eq!(body["encounter"], encounter.as_str());
        // a launch value is single use
        let again = location(&browser.get(&url).await);
        assert!(again.starts_with(REDIRECT_URI), "{again}");
        assert_eq!(param(&again, "error").as_deref(), Some("invalid_request"));
        assert_eq!(param(&again, "state").as_deref(), Some("st4te"));
    }
);

both!(
    a_public_app_refreshes_without_naming_itself,
    |app: TestApp| async move {
        // RFC 6749 §6 asks public clients for nothing but the refresh token, and SMART's
        // refresh request has no client_id: the SMART JS client sends none by default
        let setup = setup(&app).await;
        let (code, verifier) =
            practitioner_code(&app, &setup, "offline_access launch/patient patient/*.rs").await;
        let (status, first) = exchange(&app, &setup, &code, &verifier).await;
        assert_eq!(status, 200, "{first}");
        let first_refresh = first["refresh_token"].as_str().expect("a refresh token");
        let (status, second) = token(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", first_refresh),
            ],
        )
        .await;
        assert_eq!(status, 200, "{second}");
        assert_eq!(second["patient"], setup.patient_id.as_str());
        let second_refresh = second["refresh_token"].as_str().expect("rotated");
        assert_ne!(second_refresh, first_refresh);
        // rotation and reuse detection hold the same
        let (status, error) = token(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", first_refresh),
            ],
        )
        .await;
        assert_eq!(
            (status, error["error"].as_str()),
            (400, Some("invalid_grant")),
            "{error}"
        );
        // an unknown token names no client: invalid_client
        let (status, error) = token(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", "nonsense"),
            ],
        )
        .await;
        assert_eq!(
            (status, error["error"].as_str()),
            (401, Some("invalid_client")),
            "{error}"
        );
        // a confidential client's refresh token needs the client's authentication still
        let (code, verifier) =
            practitioner_code(&app, &setup, "offline_access launch/patient patient/*.rs").await;
        let (status, third) = exchange(&app, &setup, &code, &verifier).await;
        assert_eq!(status, 200, "{third}");
        let mut conn = app.database_connection().await;
        sqlx::query(
            "UPDATE auth_client SET kind = 'confidential-symmetric', \
             auth_method = 'client_secret_basic', secret_hash = 'not a secret' \
             WHERE client_id = $1",
        )
        .bind(&setup.client_id)
        .execute(&mut conn)
        .await
        .expect("the client made confidential");
        let (status, error) = token(
            &app,
            &[
                ("grant_type", "refresh_token"),
                (
                    "refresh_token",
                    third["refresh_token"].as_str().expect("a refresh token"),
                ),
            ],
        )
        .await;
        assert_eq!(
            (status, error["error"].as_str()),
            (401, Some("invalid_client")),
            "{error}"
        );
    }
);

both!(
    refresh_tokens_rotate_and_reuse_revokes_the_family,
    |app: TestApp| async move {
        let setup = setup(&app).await;
        let (code, verifier) =
            practitioner_code(&app, &setup, "offline_access launch/patient patient/*.rs").await;
        let (status, first) = exchange(&app, &setup, &code, &verifier).await;
        assert_eq!(status, 200, "{first}");
        let first_refresh = first["refresh_token"].as_str().expect("a refresh token");
        // narrowing is allowed, and the refresh token rotates
        let (status, second) = refresh(
            &app,
            &setup,
            first_refresh,
            Some("offline_access patient/Observation.rs"),
        )
        .await;
        assert_eq!(status, 200, "{second}");
        assert_eq!(second["scope"], "offline_access patient/Observation.rs");
        assert_eq!(second["patient"], setup.patient_id.as_str());
        let second_refresh = second["refresh_token"]
            .as_str()
            .expect("a new refresh token");
        assert_ne!(second_refresh, first_refresh);
        // escalation is refused
        let (status, error) = refresh(
            &app,
            &setup,
            second_refresh,
            Some("offline_access patient/*.cruds"),
        )
        .await;
        assert_eq!(
            (status, error["error"].as_str()),
            (400, Some("invalid_scope")),
            "{error}"
        );
        // without scope: the same scopes again
        let (status, third) = refresh(&app, &setup, second_refresh, None).await;
        assert_eq!(status, 200, "{third}");
        assert_eq!(third["scope"], second["scope"]);
        let third_refresh = third["refresh_token"].as_str().expect("a refresh token");
        let third_access = third["access_token"].as_str().expect("an access token");
        // another client cannot use it
        let (status, error) = token(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", third_refresh),
                ("client_id", "someone-else"),
            ],
        )
        .await;
        assert_eq!(
            (status, error["error"].as_str()),
            (401, Some("invalid_client")),
            "{error}"
        );
        // the first refresh token again: reuse; the whole family is revoked
        let (status, error) = refresh(&app, &setup, first_refresh, None).await;
        assert_eq!(
            (status, error["error"].as_str()),
            (400, Some("invalid_grant")),
            "{error}"
        );
        let (status, error) = refresh(&app, &setup, third_refresh, None).await;
        assert_eq!(
            (status, error["error"].as_str()),
            (400, Some("invalid_grant")),
            "{error}"
        );
        let first_access = first["access_token"].as_str().expect("an access token");
        let (_, other) = exchange_fresh(&app, &setup).await;
        let caller = other["access_token"].as_str().expect("a caller token");
        assert_eq!(
            introspect(&app, caller, third_access).await,
            json!({"active": false})
        );
        assert_eq!(
            introspect(&app, caller, first_access).await,
            json!({"active": false})
        );
        assert_eq!(
            introspect(&app, caller, third_refresh).await,
            json!({"active": false})
        );
    }
);

/// A fresh grant for the practitioner (its token response).
async fn exchange_fresh(app: &TestApp, setup: &Setup) -> (u16, Value) {
    let (code, verifier) = practitioner_code(app, setup, "user/*.rs offline_access").await;
    exchange(app, setup, &code, &verifier).await
}

both!(codes_are_single_use_and_bound, |app: TestApp| async move {
    let setup = setup(&app).await;
    let (code, verifier) = practitioner_code(&app, &setup, "user/*.rs offline_access").await;
    // a wrong verifier
    let (wrong, _) = pkce();
    let (status, error) = exchange(&app, &setup, &code, &wrong).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("invalid_grant")),
        "{error}"
    );
    // a wrong redirect_uri
    let (status, error) = token(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "https://app.example/other"),
            ("code_verifier", &verifier),
            ("client_id", &setup.client_id),
        ],
    )
    .await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("invalid_grant")),
        "{error}"
    );
    // no verifier
    let (status, error) = token(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT_URI),
            ("client_id", &setup.client_id),
        ],
    )
    .await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("invalid_request")),
        "{error}"
    );
    // the right one
    let (status, body) = exchange(&app, &setup, &code, &verifier).await;
    assert_eq!(status, 200, "{body}");
    let access = body["access_token"].as_str().expect("an access token");
    let refresh_token = body["refresh_token"].as_str().expect("a refresh token");
    assert_eq!(introspect(&app, access, access).await["active"], true);
    // again: refused, and what the code gave is revoked
    let (status, error) = exchange(&app, &setup, &code, &verifier).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("invalid_grant")),
        "{error}"
    );
    let (_, other) = exchange_fresh(&app, &setup).await;
    let caller = other["access_token"].as_str().expect("a caller token");
    assert_eq!(
        introspect(&app, caller, access).await,
        json!({"active": false})
    );
    let (status, error) = refresh(&app, &setup, refresh_token, None).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("invalid_grant")),
        "{error}"
    );
    // an expired code
    let (code, verifier) = practitioner_code(&app, &setup, "user/*.rs").await;
    let mut db = app.database_connection().await;
    sqlx::query("UPDATE auth_code SET expires_at = 0 WHERE code_hash = $1")
        .bind(hex::encode(Sha256::digest(code.as_bytes())))
        .execute(&mut db)
        .await
        .expect("the code expired");
    let (status, error) = exchange(&app, &setup, &code, &verifier).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("invalid_grant")),
        "{error}"
    );
    assert!(
        error["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("expired")),
        "{error}"
    );
});

both!(
    authorization_requests_are_checked,
    |app: TestApp| async move {
        let setup = setup(&app).await;
        let mut browser = Browser::new();
        // refused back to the app, with the state
        let other_aud = format!("{}/other", app.base);
        for (change, expected) in [
            (
                vec![("code_challenge_method", Some("plain"))],
                "invalid_request",
            ),
            (vec![("code_challenge_method", None)], "invalid_request"),
            (vec![("code_challenge", None)], "invalid_request"),
            (
                vec![("aud", Some("https://elsewhere.example/fhir"))],
                "invalid_request",
            ),
            (vec![("aud", Some(other_aud.as_str()))], "invalid_request"),
            (vec![("aud", None)], "invalid_request"),
            (
                vec![("response_type", Some("token"))],
                "unsupported_response_type",
            ),
            (vec![("scope", Some("system/*.rs"))], "invalid_scope"),
            (vec![("launch", Some("made-up"))], "invalid_request"),
        ] {
            let back = location(
                &browser
                    .get(&authorize_url(&app, &setup.client_id, &change))
                    .await,
            );
            assert!(back.starts_with(REDIRECT_URI), "{change:?}: {back}");
            assert_eq!(
                param(&back, "error").as_deref(),
                Some(expected),
                "{change:?}: {back}"
            );
            assert_eq!(
                param(&back, "state").as_deref(),
                Some("st4te"),
                "{change:?}"
            );
            assert!(param(&back, "error_description").is_some(), "{change:?}");
        }
        // never sent to an unverified redirect URI: an error page
        for change in [
            vec![("redirect_uri", Some("https://evil.example/callback"))],
            vec![("redirect_uri", None)],
            vec![("client_id", Some("unknown"))],
            vec![("client_id", None)],
        ] {
            let response = browser
                .get(&authorize_url(&app, &setup.client_id, &change))
                .await;
            assert_eq!(response.status(), 400, "{change:?}");
            assert!(response.headers().get("location").is_none(), "{change:?}");
            let page = response.text().await.expect("text");
            assert!(
                page.contains("<html lang=\"en\">") && page.contains("cannot continue"),
                "{page}"
            );
        }
        // POST works as GET
        let url = authorize_url(&app, &setup.client_id, &[]);
        let (endpoint, params) = url.split_once('?').expect("a query");
        let response = browser
            .http
            .post(endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(params.to_owned())
            .send()
            .await
            .expect("request sent");
        assert!(location(&response).contains("/auth/approve?request="));
    }
);

both!(
    forms_need_the_csrf_token_and_deny_goes_back,
    |app: TestApp| async move {
        let setup = setup(&app).await;
        let mut browser = Browser::new();
        let next = location(
            &browser
                .get(&authorize_url(&app, &setup.client_id, &[]))
                .await,
        );
        let sign_in = browser.page(&next).await;
        let request = field(&sign_in, "request");
        for csrf in [None, Some("forged")] {
            let mut form = vec![
                ("request", request.as_str()),
                ("username", "dr.who"),
                ("password", PASSWORD),
            ];
            if let Some(csrf) = csrf {
                form.push(("csrf_token", csrf));
            }
            let response = browser
                .post(&format!("{}/auth/sign-in", app.base), &form)
                .await;
            assert_eq!(response.status(), 403, "CSRF token {csrf:?}");
        }
        // a wrong password: the same message as an unknown user, no redirect
        let response = browser
            .post(
                &format!("{}/auth/sign-in", app.base),
                &[
                    ("csrf_token", &field(&sign_in, "csrf_token")),
                    ("request", &request),
                    ("username", "dr.who"),
                    ("password", "not the password"),
                ],
            )
            .await;
        assert_eq!(response.status(), 200);
        let page = response.text().await.expect("text");
        assert!(
            page.contains("There is a problem") && page.contains("username or password"),
            "{page}"
        );
        let page = sign_in_practitioner(&mut browser, &app, &page).await;
        assert!(page.contains("Choose a patient"), "{page}");
        // an unknown patient
        let response = browser
            .post(
                &format!("{}/auth/approve", app.base),
                &[
                    ("csrf_token", &field(&page, "csrf_token")),
                    ("request", &field(&page, "request")),
                    ("patient", "nobody"),
                ],
            )
            .await;
        let page = response.text().await.expect("text");
        assert!(page.contains("No patient has that id"), "{page}");
        let response = browser
            .post(
                &format!("{}/auth/approve", app.base),
                &[
                    ("csrf_token", &field(&page, "csrf_token")),
                    ("request", &field(&page, "request")),
                    ("patient", &setup.patient_id),
                ],
            )
            .await;
        let page = browser.page(&location(&response)).await;
        // the approval form without the token
        let response = browser
            .post(
                &format!("{}/auth/approve", app.base),
                &[
                    ("request", &field(&page, "request")),
                    ("decision", "approve"),
                ],
            )
            .await;
        assert_eq!(response.status(), 403);
        let response = browser
            .post(
                &format!("{}/auth/approve", app.base),
                &[
                    ("csrf_token", &field(&page, "csrf_token")),
                    ("request", &field(&page, "request")),
                    ("decision", "deny"),
                ],
            )
            .await;
        let back = location(&response);
        assert_eq!(
            param(&back, "error").as_deref(),
            Some("access_denied"),
            "{back}"
        );
        assert_eq!(param(&back, "state").as_deref(), Some("st4te"));
    }
);

both!(revocation_and_introspection, |app: TestApp| async move {
    let setup = setup(&app).await;
    let (_, body) = exchange_fresh(&app, &setup).await;
    let access = body["access_token"].as_str().expect("an access token");
    let refresh_token = body["refresh_token"].as_str().expect("a refresh token");
    let (_, caller_body) = exchange_fresh(&app, &setup).await;
    let caller = caller_body["access_token"]
        .as_str()
        .expect("a caller token");
    let revoke = |token_value: String| {
        let app = &app;
        let client_id = setup.client_id.clone();
        async move {
            app.client
                .post(format!("{}/auth/revoke", app.base))
                .form(&[
                    ("token", token_value.as_str()),
                    ("client_id", client_id.as_str()),
                ])
                .send()
                .await
                .expect("request sent")
                .status()
                .as_u16()
        }
    };
    // introspection needs authorization
    let response = app
        .client
        .post(format!("{}/auth/introspect", app.base))
        .form(&[("token", access)])
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 401);
    let info = introspect(&app, caller, refresh_token).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], setup.client_id.as_str());
    // revoking the refresh token revokes its family
    assert_eq!(revoke(refresh_token.to_owned()).await, 200);
    assert_eq!(
        introspect(&app, caller, refresh_token).await,
        json!({"active": false})
    );
    assert_eq!(
        introspect(&app, caller, access).await,
        json!({"active": false})
    );
    let (status, error) = refresh(&app, &setup, refresh_token, None).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("invalid_grant")),
        "{error}"
    );
    // an access token by itself
    let (_, body) = exchange_fresh(&app, &setup).await;
    let access = body["access_token"].as_str().expect("an access token");
    assert_eq!(introspect(&app, caller, access).await["active"], true);
    assert_eq!(revoke(access.to_owned()).await, 200);
    assert_eq!(
        introspect(&app, caller, access).await,
        json!({"active": false})
    );
    // unknown tokens: 200 and inactive
    assert_eq!(revoke("not-a-token".to_owned()).await, 200);
    assert_eq!(
        introspect(&app, caller, "not-a-token").await,
        json!({"active": false})
    );
    // an expired access token, signed with the gateway's own key
    let pem = std::fs::read(app.database.data_dir.join("auth-signing.pem")).expect("the key");
    let key = gateway::auth::keys::SigningKey::from_pem(&pem).expect("a key");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    let expired = key
        .sign(
            &json!({"iss": app.base, "aud": app.base, "sub": "u", "client_id": setup.client_id,
            "scope": "user/*.rs", "iat": now - 600, "nbf": now - 600, "exp": now - 300,
            "jti": "expired-one"}),
        )
        .expect("signed");
    assert_eq!(
        introspect(&app, caller, &expired).await,
        json!({"active": false})
    );
});

both!(
    discovery_names_the_authorization_code_flow,
    |app: TestApp| async move {
        let (status, doc) = app.get_json(".well-known/smart-configuration").await;
        assert_eq!(status, 200);
        assert_eq!(
            doc["authorization_endpoint"],
            format!("{}/auth/authorize", app.base)
        );
        assert_eq!(
            doc["revocation_endpoint"],
            format!("{}/auth/revoke", app.base)
        );
        assert_eq!(
            doc["introspection_endpoint"],
            format!("{}/auth/introspect", app.base)
        );
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(doc["response_types_supported"], json!(["code"]));
        let capabilities = doc["capabilities"].as_array().expect("capabilities");
        for capability in [
            "launch-ehr",
            "launch-standalone",
            "client-public",
            "context-standalone-patient",
            "permission-offline",
            "permission-online",
            "sso-openid-connect",
        ] {
            assert!(
                capabilities.contains(&json!(capability)),
                "{capability}: {doc}"
            );
        }
        let (status, oidc) = app.get_json(".well-known/openid-configuration").await;
        assert_eq!(status, 200);
        assert_eq!(oidc["issuer"], app.base.as_str());
        assert_eq!(
            oidc["jwks_uri"],
            format!("{}/.well-known/jwks.json", app.base)
        );
    }
);

both!(
    online_access_ends_with_the_session,
    |app: TestApp| async move {
        let setup = setup(&app).await;
        let mut browser = Browser::new();
        let (code, verifier) =
            practitioner_code_in(&mut browser, &app, &setup, "online_access user/*.rs").await;
        let (status, body) = exchange(&app, &setup, &code, &verifier).await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = refresh(
            &app,
            &setup,
            body["refresh_token"].as_str().expect("a refresh token"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let refresh_token = body["refresh_token"]
            .as_str()
            .expect("a rotated refresh token");
        // the user signs out (the EHR launch page has the button)
        let page = browser.page(&format!("{}/auth/ehr-launch", app.base)).await;
        let response = browser
            .post(
                &format!("{}/auth/sign-out", app.base),
                &[("csrf_token", &field(&page, "csrf_token"))],
            )
            .await;
        assert_eq!(response.status(), 200);
        let (status, error) = refresh(&app, &setup, refresh_token, None).await;
        assert_eq!(
            (status, error["error"].as_str()),
            (400, Some("invalid_grant")),
            "{error}"
        );
    }
);

both!(
    failed_sign_ins_lock_password_sign_in,
    |app: TestApp| async move {
        let setup = setup(&app).await;
        let mut browser = Browser::new();
        let next = location(
            &browser
                .get(&authorize_url(&app, &setup.client_id, &[]))
                .await,
        );
        let mut page = browser.page(&next).await;
        for password in [
            "wrong 1", "wrong 2", "wrong 3", "wrong 4", "wrong 5", PASSWORD,
        ] {
            let response = browser
                .post(
                    &format!("{}/auth/sign-in", app.base),
                    &[
                        ("csrf_token", &field(&page, "csrf_token")),
                        ("request", &field(&page, "request")),
                        ("username", "dr.who"),
                        ("password", password),
                    ],
                )
                .await;
            assert_eq!(response.status(), 200, "no sign-in with {password:?}");
            page = response.text().await.expect("text");
            assert!(page.contains("There is a problem"), "{page}");
        }
    }
);

both!(expired_grants_are_removed, |app: TestApp| async move {
    let mut db = app.database_connection().await;
    for (hash, expires_at) in [("expired", 1_i64), ("live", i64::MAX / 2)] {
        sqlx::query(
            "INSERT INTO auth_launch (launch_hash, patient, expires_at) VALUES ($1, 'p', $2)",
        )
        .bind(hash)
        .bind(expires_at)
        .execute(&mut db)
        .await
        .expect("a launch row");
    }
    // the first session a gateway starts removes what has expired
    Browser::new()
        .page(&format!("{}/auth/ehr-launch", app.base))
        .await;
    let left: Vec<String> = sqlx::query_scalar("SELECT launch_hash FROM auth_launch")
        .fetch_all(&mut db)
        .await
        .expect("the launch rows");
    assert_eq!(left, vec!["live".to_owned()]);
});

crate::on_both!(
    an_https_base_url_makes_the_cookie_secure_and_requests_stay_with_their_session,
    |db: crate::helpers::Db| async move {
        // a gateway behind a TLS proxy: its base URL is https, it listens on plain http
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let public_base = format!("https://127.0.0.1:{port}/fhir");
        let base = public_base.clone();
        let app = crate::helpers::spawn_app_with(db, move |config| {
            config.server.port = port;
            config.server.base_url = Some(base);
        })
        .await;
        let setup = setup_at(&app, &format!("http://127.0.0.1:{port}/fhir")).await;
        let plain = format!("http://127.0.0.1:{port}/fhir");
        let url = authorize_url(&app, &setup.client_id, &[("aud", Some(&public_base))]).replacen(
            &public_base,
            &plain,
            1,
        );
        let mut browser = Browser::new();
        let response = browser.get(&url).await;
        let cookie = response.headers()["set-cookie"]
            .to_str()
            .expect("ASCII")
            .to_owned();
        assert!(cookie.ends_with("; Secure"), "{cookie}");
        assert!(cookie.contains("Path=/fhir/auth;"), "{cookie}");
        let next = location(&response).replacen(&public_base, &plain, 1);
        assert!(browser.page(&next).await.contains("<h1>Sign in</h1>"));
        // another browser (another session) cannot take the request over
        let response = Browser::new().get(&next).await;
        assert_eq!(response.status(), 400);
        let page = response.text().await.expect("text");
        assert!(!page.contains("<h1>Sign in</h1>"), "{page}");
    }
);

both!(
    a_disabled_user_s_grants_stop_refreshing,
    |app: TestApp| async move {
        let setup = setup(&app).await;
        let (_, body) = exchange_fresh(&app, &setup).await;
        let refresh_token = body["refresh_token"].as_str().expect("a refresh token");
        let store = Store::connect(&app.database).await.expect("the store");
        assert!(users::disable(&store, "dr.who").await.expect("disabled"));
        store.close().await;
        let (status, error) = refresh(&app, &setup, refresh_token, None).await;
        assert_eq!(
            (status, error["error"].as_str()),
            (400, Some("invalid_grant")),
            "{error}"
        );
    }
);

crate::on_both!(
    sign_ins_and_tokens_issued_and_refused_are_audited,
    |db: crate::helpers::Db| async move {
        let app = crate::helpers::spawn_app_with(db, |config| config.audit.enabled = true).await;
        let setup = setup(&app).await;
        // a sign-in refused: the wrong password
        let mut browser = Browser::new();
        let (_, challenge) = pkce();
        let url = authorize_url_with(&app, &setup.client_id, &challenge, &[]);
        let next = location(&browser.get(&url).await);
        let sign_in = browser.page(&next).await;
        let response = browser
            .post(
                &format!("{}/auth/sign-in", app.base),
                &[
                    ("csrf_token", &field(&sign_in, "csrf_token")),
                    ("request", &field(&sign_in, "request")),
                    ("next", &field(&sign_in, "next")),
                    ("username", "dr.who"),
                    ("password", "not the password"),
                ],
            )
            .await;
        assert_eq!(response.status(), 200);
        // a sign-in, a token issued, a token refused (the code is single-use)
        let (code, verifier) = practitioner_code(&app, &setup, "user/*.rs").await;
        let (status, issued) = exchange(&app, &setup, &code, &verifier).await;
        assert_eq!(status, 200, "{issued}");
        let (status, refused) = exchange(&app, &setup, &code, &verifier).await;
        assert_eq!(status, 400, "{refused}");

        let (status, bundle) = app
            .get_json(
                "AuditEvent?type=http://dicom.nema.org/resources/ontology/DCM|110114&_count=100",
            )
            .await;
        assert_eq!(status, 200, "{bundle}");
        let events: Vec<&Value> = bundle["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| &e["resource"])
            .collect();
        let of = |code: &str, outcome: &str| -> Vec<&Value> {
            events
                .iter()
                .copied()
                .filter(|e| e["subtype"][0]["code"] == code && e["outcome"] == outcome)
                .collect()
        };
        let user_of = |event: &Value| {
            event["agent"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["who"]["identifier"]["system"] == "urn:fhir-gateway:user")
                .map(|a| a["who"]["reference"].clone())
        };
        // the refused sign-in: why, and who tried (never the password)
        let refused_sign_in = of("110122", "4");
        assert_eq!(refused_sign_in.len(), 1, "{events:?}");
        let why = refused_sign_in[0]["outcomeDesc"]
            .as_str()
            .unwrap_or_default();
        assert!(why.contains("dr.who"), "{why}");
        assert!(!why.contains("not the password"), "{why}");
        // the sign-in: the practitioner
        let signed_in = of("110122", "0");
        assert_eq!(signed_in.len(), 1, "{events:?}");
        assert_eq!(user_of(signed_in[0]), Some(json!("Practitioner/7")));
        // the token issued: to the app, for the practitioner, its id in the app's policy
        let issued_events = of("ITI-71", "0");
        assert_eq!(issued_events.len(), 1, "{events:?}");
        let token_event = issued_events[0];
        assert_eq!(user_of(token_event), Some(json!("Practitioner/7")));
        let app_agent = token_event["agent"]
            .as_array()
            .expect("agents")
            .iter()
            .find(|a| a["who"]["identifier"]["system"] == "urn:fhir-gateway:client")
            .expect("the app as an agent");
        assert_eq!(
            app_agent["who"]["identifier"]["value"],
            setup.client_id.as_str()
        );
        assert!(
            app_agent["policy"][0]
                .as_str()
                .is_some_and(|p| p.starts_with("urn:fhir-gateway:token:")),
            "{token_event}"
        );
        // the token refused, with the OAuth error
        let refused_tokens = of("ITI-71", "4");
        assert_eq!(refused_tokens.len(), 1, "{events:?}");
        let why = refused_tokens[0]["outcomeDesc"]
            .as_str()
            .unwrap_or_default();
        assert!(why.starts_with("invalid_grant"), "{why}");
        // discovery documents are not accesses: not recorded (the count's own search is)
        let count = async || {
            let (_, bundle) = app.get_json("AuditEvent?_summary=count").await;
            bundle["total"].as_u64().expect("a total")
        };
        let before = count().await;
        for path in [".well-known/smart-configuration", ".well-known/jwks.json"] {
            let response = app
                .client
                .get(format!("{}/{path}", app.base))
                .send()
                .await
                .expect("request sent");
            assert_eq!(response.status(), 200, "{path}");
        }
        assert_eq!(count().await, before + 1);
    }
);
