//! SMART client kinds (issue 4): confidential-symmetric (client_secret_basic and
//! client_secret_post), confidential-asymmetric (a JWKS or a JWKS URL served by a local HTTP
//! server here), public clients; every failure of client authentication; dynamic registration
//! (RFC 7591); CORS; the CapabilityStatement's `rest.security`.
//!
//! The only grant the token endpoint has so far is client_credentials, for backend clients:
//! an app that authenticates there gets `unauthorized_client` (400), one that fails to
//! authenticate `invalid_client` (401), which tells the two apart.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use gateway::auth::clients::{self, AuthMethod, ClientKind, NewClient, Registered};
use gateway::store::Store;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Value, json};

use crate::auth::{JWT_BEARER, TestClient, assert_error, key_of, public_jwks, token_url};
use crate::helpers::{Db, TestApp, spawn_app_with};
use crate::{both, on_both};

async fn register(app: &TestApp, new: NewClient) -> Registered {
    let store = Store::connect(&app.database).await.expect("the store");
    let registered = clients::register(&store, new).await.expect("registered");
    store.close().await;
    registered
}

const APP_SCOPES: &str = "openid fhirUser launch/patient offline_access patient/*.rs";

/// A token request with `form` and an optional Basic header: status, body, WWW-Authenticate.
async fn token_request(
    app: &TestApp,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (u16, Value, Option<String>) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut request = app
        .client
        .post(token_url(app))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some((id, secret)) = basic {
        let encode =
            |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            encode(id),
            encode(secret)
        ));
        request = request.header("authorization", format!("Basic {credentials}"));
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().expect("text").to_owned());
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        challenge,
    )
}

const CC: (&str, &str) = ("grant_type", "client_credentials");
const SCOPE: (&str, &str) = ("scope", "patient/*.rs");

/// Authenticated, but an app: client_credentials is not for it.
fn assert_authenticated(result: &(u16, Value, Option<String>)) {
    assert_error(
        &(result.0, result.1.clone()),
        400,
        "unauthorized_client",
        "client_credentials is for backend-services clients",
    );
}

fn assert_refused(result: &(u16, Value, Option<String>), says: &str, challenge: bool) {
    assert_error(&(result.0, result.1.clone()), 401, "invalid_client", says);
    assert_eq!(
        result.2.as_deref().is_some_and(|c| c.starts_with("Basic")),
        challenge,
        "WWW-Authenticate: {:?}",
        result.2
    );
}

both!(
    symmetric_clients_authenticate_with_their_secret_and_method,
    |app: TestApp| async move {
        let basic = register(
            &app,
            NewClient::app(
                "basic app",
                ClientKind::ConfidentialSymmetric,
                "https://app.example.org/cb",
                APP_SCOPES,
            ),
        )
        .await;
        let id = basic.client.client_id.as_str();
        let secret = basic.client_secret.clone().expect("a secret, shown once");
        assert_eq!(secret.len(), 43, "32 random bytes, base64url");
        assert_eq!(
            basic.client.token_endpoint_auth_method,
            "client_secret_basic"
        );
        // the secret is not shown again, and only its argon2 hash is stored
        let listed = serde_json::to_value(
            register_list(&app)
                .await
                .into_iter()
                .find(|c| c.client_id == id)
                .expect("listed"),
        )
        .expect("JSON");
        assert!(listed.get("client_secret").is_none() && listed.get("secret_hash").is_none());
        let mut conn = app.database_connection().await;
        let stored: String =
            sqlx::query_scalar("SELECT secret_hash FROM auth_client WHERE client_id = $1")
                .bind(id)
                .fetch_one(&mut conn)
                .await
                .expect("the row");
        assert!(
            stored.starts_with("$argon2id$") && !stored.contains(&secret),
            "{stored}"
        );

        assert_authenticated(&token_request(&app, &[CC, SCOPE], Some((id, &secret))).await);
        assert_authenticated(
            &token_request(&app, &[CC, SCOPE, ("client_id", id)], Some((id, &secret))).await,
        );
        assert_refused(
            &token_request(&app, &[CC, SCOPE], Some((id, "wrong"))).await,
            "the client secret is not valid",
            true,
        );
        assert_refused(
            &token_request(
                &app,
                &[CC, SCOPE, ("client_id", id), ("client_secret", &secret)],
                None,
            )
            .await,
            "registered to authenticate with client_secret_basic, not client_secret_post",
            false,
        );
        assert_refused(
            &token_request(
                &app,
                &[CC, SCOPE, ("client_secret", &secret)],
                Some((id, &secret)),
            )
            .await,
            "more than one client authentication method",
            true,
        );
        assert_refused(
            &token_request(
                &app,
                &[CC, SCOPE, ("client_id", "other")],
                Some((id, &secret)),
            )
            .await,
            "client_id does not match",
            true,
        );
        assert_refused(
            &token_request(&app, &[CC, SCOPE], Some(("nobody", &secret))).await,
            "no client \"nobody\" is registered",
            true,
        );
        assert_refused(
            &token_request(&app, &[CC, SCOPE, ("client_id", id)], None).await,
            "registered to authenticate with client_secret_basic, not none",
            false,
        );

        let mut post = NewClient::app(
            "post app",
            ClientKind::ConfidentialSymmetric,
            "http://localhost:3000/cb",
            APP_SCOPES,
        );
        post.auth_method = Some(AuthMethod::ClientSecretPost);
        let post = register(&app, post).await;
        let id = post.client.client_id.as_str();
        let secret = post.client_secret.clone().expect("a secret");
        assert_authenticated(
            &token_request(
                &app,
                &[CC, SCOPE, ("client_id", id), ("client_secret", &secret)],
                None,
            )
            .await,
        );
        assert_refused(
            &token_request(
                &app,
                &[CC, SCOPE, ("client_id", id), ("client_secret", "x")],
                None,
            )
            .await,
            "the client secret is not valid",
            false,
        );
        assert_refused(
            &token_request(&app, &[CC, SCOPE], Some((id, &secret))).await,
            "not client_secret_basic",
            true,
        );
        assert_refused(
            &token_request(&app, &[CC, SCOPE, ("client_secret", &secret)], None).await,
            "client_secret without client_id",
            false,
        );
        assert_refused(
            &token_request(&app, &[CC, SCOPE], None).await,
            "no client authentication",
            false,
        );
    }
);

async fn register_list(app: &TestApp) -> Vec<gateway::store::clients::Client> {
    let store = Store::connect(&app.database).await.expect("the store");
    let list = clients::list(&store).await.expect("listed");
    store.close().await;
    list
}

both!(
    public_and_asymmetric_apps_authenticate_with_their_method,
    |app: TestApp| async move {
        let public = register(
            &app,
            NewClient::app(
                "public app",
                ClientKind::Public,
                "https://app.example.org/cb",
                APP_SCOPES,
            ),
        )
        .await;
        assert!(public.client_secret.is_none());
        let id = public.client.client_id.as_str();
        assert_authenticated(&token_request(&app, &[CC, SCOPE, ("client_id", id)], None).await);
        assert_refused(
            &token_request(
                &app,
                &[CC, SCOPE, ("client_id", id), ("client_secret", "x")],
                None,
            )
            .await,
            "registered to authenticate with none, not client_secret_post",
            false,
        );
        assert_refused(
            &token_request(&app, &[CC, SCOPE, ("client_id", "nobody")], None).await,
            "no client \"nobody\" is registered",
            false,
        );

        let mut asymmetric = NewClient::app(
            "asymmetric app",
            ClientKind::ConfidentialAsymmetric,
            "https://app.example.org/cb",
            APP_SCOPES,
        );
        asymmetric.jwks = Some(public_jwks(Algorithm::ES384, "app-key"));
        let asymmetric = register(&app, asymmetric).await;
        let signer = TestClient {
            client_id: asymmetric.client.client_id.clone(),
            key: key_of(Algorithm::ES384),
            alg: Algorithm::ES384,
            kid: "app-key".to_owned(),
        };
        let assertion = signer.sign(&signer.claims(&app));
        let with_assertion = [
            CC,
            SCOPE,
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion.as_str()),
        ];
        assert_authenticated(&token_request(&app, &with_assertion, None).await);
        // an assertion and a secret together
        let fresh = signer.sign(&signer.claims(&app));
        assert_refused(
            &token_request(
                &app,
                &[
                    CC,
                    SCOPE,
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", fresh.as_str()),
                    ("client_secret", "x"),
                ],
                None,
            )
            .await,
            "more than one client authentication method",
            false,
        );
    }
);

/// A local HTTP server serving a JWKS (with a Cache-Control header) that a test can change;
/// counts the requests.
struct JwksServer {
    url: String,
    jwks: Arc<Mutex<String>>,
    cache_control: Arc<Mutex<Option<&'static str>>>,
    hits: Arc<AtomicUsize>,
}

async fn jwks_server(jwks: String) -> JwksServer {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let jwks = Arc::new(Mutex::new(jwks));
    let cache_control = Arc::new(Mutex::new(None));
    let hits = Arc::new(AtomicUsize::new(0));
    let (served, control, counted) = (jwks.clone(), cache_control.clone(), hits.clone());
    let server = HttpServer::new(move || {
        let (served, control, counted) = (served.clone(), control.clone(), counted.clone());
        App::new().route(
            "/jwks.json",
            web::get().to(move || {
                let (served, control, counted) = (served.clone(), control.clone(), counted.clone());
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = served.lock().expect("the JWKS").clone();
                    let mut response = HttpResponse::Ok();
                    if let Some(value) = *control.lock().expect("the header") {
                        response.insert_header(("cache-control", value));
                    }
                    response.content_type("application/json").body(body)
                }
            }),
        )
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .expect("bound");
    let port = server.addrs()[0].port();
    tokio::spawn(server.run());
    JwksServer {
        url: format!("http://127.0.0.1:{port}/jwks.json"),
        jwks,
        cache_control,
        hits,
    }
}

async fn assertion_status(app: &TestApp, assertion: &str) -> (u16, Value) {
    let (status, body, _) = token_request(
        app,
        &[
            CC,
            ("scope", "system/*.rs"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
        ],
        None,
    )
    .await;
    (status, body)
}

on_both!(
    keys_are_fetched_from_a_jwks_url_cached_and_refetched_on_rotation,
    |db: Db| async move {
        let server = jwks_server(public_jwks(Algorithm::ES384, "k1")).await;
        // refetch at once on an unknown kid
        let app = spawn_app_with(db, |c| c.auth.jwks_refetch_secs = 0).await;
        let mut new = NewClient::backend("a backend with a JWKS URL", String::new(), "system/*.rs");
        new.jwks = None;
        new.jwks_url = Some(server.url.clone());
        let client_id = register(&app, new).await.client.client_id;
        let signer = |alg: Algorithm, kid: &str| TestClient {
            client_id: client_id.clone(),
            key: key_of(alg),
            alg,
            kid: kid.to_owned(),
        };
        let k1 = signer(Algorithm::ES384, "k1");
        let first = assertion_status(&app, &k1.sign(&k1.claims(&app))).await;
        assert_eq!(first.0, 200, "{}", first.1);
        let second = assertion_status(&app, &k1.sign(&k1.claims(&app))).await;
        assert_eq!(second.0, 200, "{}", second.1);
        assert_eq!(server.hits.load(Ordering::SeqCst), 1, "the JWKS is cached");

        // the client rotates to a new key: the unknown kid makes the gateway fetch again
        *server.jwks.lock().expect("the JWKS") = public_jwks(Algorithm::RS384, "k2");
        let k2 = signer(Algorithm::RS384, "k2");
        let rotated = assertion_status(&app, &k2.sign(&k2.claims(&app))).await;
        assert_eq!(
            rotated.0, 200,
            "the rotated key is picked up: {}",
            rotated.1
        );
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);

        // jku: only the registered URL
        let with_jku = |jku: &str| {
            let mut header = Header::new(Algorithm::RS384);
            header.kid = Some("k2".to_owned());
            header.jku = Some(jku.to_owned());
            jsonwebtoken::encode(&header, &k2.claims(&app), &k2.key).expect("signed")
        };
        assert_error(
            &assertion_status(&app, &with_jku("https://attacker.example/jwks.json")).await,
            401,
            "invalid_client",
            "jku is not the client's registered JWKS URL",
        );
        let same = assertion_status(&app, &with_jku(&server.url)).await;
        assert_eq!(same.0, 200, "{}", same.1);

        // never cached longer than the client's Cache-Control says: no-store, not at all
        *server.cache_control.lock().expect("the header") = Some("no-store");
        *server.jwks.lock().expect("the JWKS") = public_jwks(Algorithm::ES384, "k1");
        let before = server.hits.load(Ordering::SeqCst);
        for n in 1..=2 {
            let back = assertion_status(&app, &k1.sign(&k1.claims(&app))).await;
            assert_eq!(back.0, 200, "{}", back.1);
            assert_eq!(
                server.hits.load(Ordering::SeqCst),
                before + n,
                "fetched every time"
            );
        }
        *server.cache_control.lock().expect("the header") = Some("public, max-age=3600");
        for _ in 0..2 {
            let cached = assertion_status(&app, &k1.sign(&k1.claims(&app))).await;
            assert_eq!(cached.0, 200, "{}", cached.1);
            assert_eq!(
                server.hits.load(Ordering::SeqCst),
                before + 3,
                "then cached"
            );
        }

        // with a long refetch interval, an unknown kid does not make it fetch again
        *server.cache_control.lock().expect("the header") = None;
        *server.jwks.lock().expect("the JWKS") = public_jwks(Algorithm::RS384, "k2");
        let patient = spawn_app_with(db, |c| c.auth.jwks_refetch_secs = 3600).await;
        let mut new =
            NewClient::backend("the same backend elsewhere", String::new(), "system/*.rs");
        new.jwks = None;
        new.jwks_url = Some(server.url.clone());
        let client_id = register(&patient, new).await.client.client_id;
        let k2 = TestClient {
            client_id: client_id.clone(),
            ..signer(Algorithm::RS384, "k2")
        };
        let ok = assertion_status(&patient, &k2.sign(&k2.claims(&patient))).await;
        assert_eq!(ok.0, 200, "{}", ok.1);
        let hits = server.hits.load(Ordering::SeqCst);
        let unknown = TestClient {
            client_id,
            ..signer(Algorithm::ES384, "k3")
        };
        assert_error(
            &assertion_status(&patient, &unknown.sign(&unknown.claims(&patient))).await,
            401,
            "invalid_client",
            "no key with kid \"k3\"",
        );
        assert_eq!(
            server.hits.load(Ordering::SeqCst),
            hits,
            "not fetched again so soon"
        );
    }
);

async fn register_dynamically(app: &TestApp, request: &Value) -> (u16, Value) {
    let response = app
        .client
        .post(app.url("auth/register"))
        .json(request)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

both!(
    apps_register_themselves_within_the_registration_scopes,
    |app: TestApp| async move {
        let (status, public) = register_dynamically(
            &app,
            &json!({
                "client_name": "a patient app",
                "redirect_uris": ["https://app.example.org/cb", "http://127.0.0.1:8000/cb"],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "scope": "openid fhirUser launch/patient patient/Observation.rs user/*.cruds",
                "some_extension": true,
            }),
        )
        .await;
        assert_eq!(status, 201, "{public}");
        assert_eq!(public["token_endpoint_auth_method"], "none");
        assert!(public.get("client_secret").is_none());
        assert_eq!(
            public["scope"], "openid fhirUser launch/patient patient/Observation.rs",
            "narrowed to the registration scopes"
        );
        assert_eq!(public["redirect_uris"][1], "http://127.0.0.1:8000/cb");
        assert!(public["client_id_issued_at"].is_i64());
        let id = public["client_id"].as_str().expect("a client_id");
        assert_authenticated(&token_request(&app, &[CC, SCOPE, ("client_id", id)], None).await);

        // the default method is client_secret_basic (RFC 7591 §2), with a secret made here
        let (status, symmetric) = register_dynamically(
            &app,
            &json!({"redirect_uris": ["https://app.example.org/cb"]}),
        )
        .await;
        assert_eq!(status, 201, "{symmetric}");
        assert_eq!(
            symmetric["token_endpoint_auth_method"],
            "client_secret_basic"
        );
        assert_eq!(symmetric["client_secret_expires_at"], 0);
        assert_eq!(
            symmetric["scope"],
            "openid fhirUser launch/patient offline_access online_access patient/*.rs"
        );
        let (id, secret) = (
            symmetric["client_id"].as_str().expect("id"),
            symmetric["client_secret"].as_str().expect("a secret"),
        );
        assert_authenticated(&token_request(&app, &[CC, SCOPE], Some((id, secret))).await);

        let (status, asymmetric) = register_dynamically(
            &app,
            &json!({
                "redirect_uris": ["https://app.example.org/cb"],
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": serde_json::from_str::<Value>(&public_jwks(Algorithm::ES384, "dyn")).expect("JSON"),
            }),
        )
        .await;
        assert_eq!(status, 201, "{asymmetric}");
        assert_eq!(asymmetric["jwks"]["keys"][0]["kid"], "dyn");

        let cases = [
            (
                json!({"redirect_uris": ["http://app.example.org/cb"], "token_endpoint_auth_method": "none"}),
                "invalid_redirect_uri",
                "must be https",
            ),
            (
                json!({"redirect_uris": ["https://app.example.org/cb#x"], "token_endpoint_auth_method": "none"}),
                "invalid_redirect_uri",
                "fragment",
            ),
            (
                json!({"token_endpoint_auth_method": "none"}),
                "invalid_redirect_uri",
                "at least one redirect URI",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["client_credentials"]}),
                "invalid_client_metadata",
                "registered by the server's operator",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["implicit"]}),
                "invalid_client_metadata",
                "grant type \"implicit\" is not supported",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb"], "response_types": ["token"]}),
                "invalid_client_metadata",
                "response_types",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb"], "scope": "system/*.rs"}),
                "invalid_client_metadata",
                "system/ scopes",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb"], "scope": "user/*.cruds"}),
                "invalid_client_metadata",
                "none of the requested scopes",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "tls_client_auth"}),
                "invalid_client_metadata",
                "not supported",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"}),
                "invalid_client_metadata",
                "either a JWKS or a JWKS URL",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt",
                    "jwks_uri": "http://keys.example/jwks.json"}),
                "invalid_client_metadata",
                "must be https",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt",
                    "jwks_uri": "https://169.254.169.254/latest/meta-data"}),
                "invalid_client_metadata",
                "must be on a public host",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "none",
                    "jwks": {"keys": []}}),
                "invalid_client_metadata",
                "has no JWKS",
            ),
            (
                json!({"redirect_uris": "https://a.example/cb"}),
                "invalid_client_metadata",
                "array of strings",
            ),
            (
                json!(["not", "an", "object"]),
                "invalid_client_metadata",
                "JSON object",
            ),
        ];
        for (request, code, says) in cases {
            let result = register_dynamically(&app, &request).await;
            assert_error(&result, 400, code, says);
        }
        let (status, body) = {
            let response = app
                .client
                .post(app.url("auth/register"))
                .header("content-type", "application/json")
                .body("{not json")
                .send()
                .await
                .expect("sent");
            (
                response.status().as_u16(),
                response.json::<Value>().await.expect("JSON"),
            )
        };
        assert_error(
            &(status, body),
            400,
            "invalid_client_metadata",
            "JSON object",
        );
    }
);

on_both!(registration_can_be_turned_off, |db: Db| async move {
    let app = spawn_app_with(db, |c| {
        c.auth.registration = gateway::config::RegistrationMode::Off
    })
    .await;
    let (status, body) = register_dynamically(
        &app,
        &json!({"redirect_uris": ["https://app.example.org/cb"], "token_endpoint_auth_method": "none"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("off"))
    );
    let (_, doc) = app.get_json(".well-known/smart-configuration").await;
    assert!(doc.get("registration_endpoint").is_none(), "{doc}");
    let (_, statement) = app.get_json("metadata").await;
    let uris = &statement["rest"][0]["security"]["extension"][0]["extension"];
    assert!(
        uris.as_array()
            .is_some_and(|u| u.iter().all(|e| e["url"] != "register")),
        "{uris}"
    );
});

both!(
    browser_apps_get_cors_on_the_api_and_the_token_endpoint,
    |app: TestApp| async move {
        let origin = "https://app.example.org";
        for path in [
            "Patient",
            "auth/token",
            "auth/register",
            ".well-known/smart-configuration",
        ] {
            let response = app
                .client
                .request(reqwest::Method::OPTIONS, app.url(path))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type, if-match, if-none-exist, prefer",
                )
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status(), 200, "preflight of {path}");
            let headers = response.headers();
            assert_eq!(headers["access-control-allow-origin"], origin, "{path}");
            assert!(headers.get("access-control-allow-credentials").is_none());
            let allowed = headers["access-control-allow-headers"]
                .to_str()
                .expect("text")
                .to_lowercase();
            for header in [
                "authorization",
                "content-type",
                "if-match",
                "if-none-exist",
                "prefer",
            ] {
                assert!(allowed.contains(header), "{header} in {allowed}");
            }
        }
        let response = app
            .client
            .get(app.url("metadata"))
            .header("origin", origin)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert_eq!(headers["access-control-allow-origin"], origin);
        assert!(headers.get("access-control-allow-credentials").is_none());
        let exposed = headers["access-control-expose-headers"]
            .to_str()
            .expect("text")
            .to_lowercase();
        for header in [
            "location",
            "etag",
            "content-location",
            "last-modified",
            "www-authenticate",
        ] {
            assert!(exposed.contains(header), "{header} in {exposed}");
        }
        // the authorization server's own pages (sign-in, approval) get none
        let page = app
            .client
            .request(reqwest::Method::OPTIONS, app.url("auth/authorize"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
            .await
            .expect("sent");
        assert!(page.headers().get("access-control-allow-origin").is_none());
        let page = app
            .client
            .get(app.url("auth/authorize"))
            .header("origin", origin)
            .send()
            .await
            .expect("sent");
        assert!(page.headers().get("access-control-allow-origin").is_none());
    }
);

both!(
    the_capability_statement_names_the_oauth_endpoints_of_the_discovery_document,
    |app: TestApp| async move {
        let (status, statement) = app.get_json("metadata").await;
        assert_eq!(status, 200);
        let security = &statement["rest"][0]["security"];
        assert_eq!(security["cors"], true);
        assert_eq!(
            security["service"][0]["coding"][0],
            json!({
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR"
            })
        );
        let extension = &security["extension"][0];
        assert_eq!(
            extension["url"],
            "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
        );
        let (_, doc) = app.get_json(".well-known/smart-configuration").await;
        let uris: Vec<(String, String)> = extension["extension"]
            .as_array()
            .expect("oauth-uris")
            .iter()
            .map(|e| {
                (
                    e["url"].as_str().expect("a name").to_owned(),
                    e["valueUri"].as_str().expect("a URI").to_owned(),
                )
            })
            .collect();
        let named = |oauth_uris: &str, discovery: &str| {
            (
                oauth_uris.to_owned(),
                doc[discovery].as_str().expect(discovery).to_owned(),
            )
        };
        assert_eq!(
            uris,
            vec![
                named("authorize", "authorization_endpoint"),
                named("token", "token_endpoint"),
                named("revoke", "revocation_endpoint"),
                named("introspect", "introspection_endpoint"),
                named("register", "registration_endpoint"),
            ]
        );
    }
);

/// An access token for a backend client signing with the ES384 fixture key.
pub(crate) async fn backend_token(app: &TestApp, admin: bool) -> (String, String) {
    let mut new = NewClient::backend(
        if admin {
            "operator's admin tool"
        } else {
            "lab system"
        },
        public_jwks(Algorithm::ES384, "k"),
        "system/*.rs",
    );
    new.admin = admin;
    let client_id = register(app, new).await.client.client_id;
    let signer = TestClient {
        client_id: client_id.clone(),
        key: key_of(Algorithm::ES384),
        alg: Algorithm::ES384,
        kid: "k".to_owned(),
    };
    let (status, body) = assertion_status(app, &signer.sign(&signer.claims(app))).await;
    assert_eq!(status, 200, "{body}");
    (
        client_id,
        body["access_token"].as_str().expect("a token").to_owned(),
    )
}

/// A request to the admin API: status, WWW-Authenticate, Location, body.
pub(crate) async fn admin_request(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Option<String>, Option<String>, Value) {
    let mut request = app.client.request(method, app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("sent");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().expect("text").to_owned())
    };
    let (challenge, location) = (header("www-authenticate"), header("location"));
    let status = response.status().as_u16();
    (
        status,
        challenge,
        location,
        response.json().await.unwrap_or(Value::Null),
    )
}

both!(
    the_admin_api_takes_tokens_of_admin_clients_only,
    |app: TestApp| async move {
        use reqwest::Method;
        let (admin_id, admin) = backend_token(&app, true).await;
        let (_, other) = backend_token(&app, false).await;

        let (status, challenge, _, body) =
            admin_request(&app, Method::GET, "auth/clients", None, None).await;
        assert_eq!(status, 401, "{body}");
        assert!(challenge.is_some_and(|c| c.starts_with("Bearer")));
        let (status, challenge, _, body) =
            admin_request(&app, Method::GET, "auth/clients", Some("not-a-token"), None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_token")),
            "{body}"
        );
        assert!(challenge.is_some_and(|c| c.contains("error=\"invalid_token\"")));
        let (status, challenge, _, body) =
            admin_request(&app, Method::GET, "auth/clients", Some(&other), None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("insufficient_scope")),
            "{body}"
        );
        assert!(challenge.is_some_and(|c| c.contains("insufficient_scope")));
        let new_app = json!({
            "name": "Clinic app",
            "kind": "confidential-symmetric",
            "scope": "openid fhirUser launch user/*.rs",
            "redirect_uris": ["https://clinic.example.org/cb"],
        });
        let (status, _, _, body) = admin_request(
            &app,
            Method::POST,
            "auth/clients",
            Some(&other),
            Some(&new_app),
        )
        .await;
        assert_eq!(status, 403, "{body}");

        let (status, _, location, created) = admin_request(
            &app,
            Method::POST,
            "auth/clients",
            Some(&admin),
            Some(&new_app),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let id = created["client_id"]
            .as_str()
            .expect("a client_id")
            .to_owned();
        assert_eq!(location, Some(app.url(&format!("auth/clients/{id}"))));
        assert_eq!(created["token_endpoint_auth_method"], "client_secret_basic");
        let secret = created["client_secret"].as_str().expect("the secret, once");
        assert_authenticated(&token_request(&app, &[CC, SCOPE], Some((&id, secret))).await);

        let (status, _, _, listed) =
            admin_request(&app, Method::GET, "auth/clients", Some(&admin), None).await;
        assert_eq!(status, 200);
        let ids: Vec<&str> = listed
            .as_array()
            .expect("a list")
            .iter()
            .map(|c| c["client_id"].as_str().expect("an id"))
            .collect();
        assert!(
            ids.contains(&id.as_str()) && ids.contains(&admin_id.as_str()),
            "{listed}"
        );
        assert!(
            !listed.to_string().contains(secret),
            "the secret is shown once"
        );
        let path = format!("auth/clients/{id}");
        let (status, _, _, read) =
            admin_request(&app, Method::GET, &path, Some(&admin), None).await;
        assert_eq!(
            (status, read["name"].as_str()),
            (200, Some("Clinic app")),
            "{read}"
        );

        for (bad, code) in [
            (
                json!({"name": "x", "kind": "public", "scope": "patient/*.rs",
                    "redirect_uris": ["http://evil.example/cb"]}),
                "invalid_redirect_uri",
            ),
            (
                json!({"name": "x", "kind": "public", "scope": "system/*.rs",
                    "redirect_uris": ["https://a.example/cb"]}),
                "invalid_client_metadata",
            ),
            (
                json!({"name": "x", "kind": "robot", "scope": "patient/*.rs"}),
                "invalid_client_metadata",
            ),
        ] {
            let (status, _, _, body) =
                admin_request(&app, Method::POST, "auth/clients", Some(&admin), Some(&bad)).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (400, Some(code)),
                "{bad}: {body}"
            );
        }

        let (status, _, _, _) =
            admin_request(&app, Method::DELETE, &path, Some(&other), None).await;
        assert_eq!(status, 403);
        let (status, _, _, _) =
            admin_request(&app, Method::DELETE, &path, Some(&admin), None).await;
        assert_eq!(status, 204);
        let (status, _, _, body) =
            admin_request(&app, Method::GET, &path, Some(&admin), None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("not_found")),
            "{body}"
        );
        let (status, _, _, _) =
            admin_request(&app, Method::DELETE, &path, Some(&admin), None).await;
        assert_eq!(status, 404);

        // an admin removed: its token no longer opens the API
        let own = format!("auth/clients/{admin_id}");
        let (status, _, _, _) = admin_request(&app, Method::DELETE, &own, Some(&admin), None).await;
        assert_eq!(status, 204);
        let (status, _, _, body) =
            admin_request(&app, Method::GET, "auth/clients", Some(&admin), None).await;
        assert_eq!(status, 401, "{body}");
    }
);
