//! SMART Backend Services (issue 4, first increment): clients registered through the library
//! sign assertions with real RS384 and ES384 keys (test fixtures in `tests/fixtures/auth/`),
//! get access tokens at `[base]/auth/token` and verify them with the JWKS the gateway serves;
//! every refusal is checked for its OAuth 2.0 error. The discovery document says what works.

use gateway::auth::clients::{self, NewClient};
use gateway::store::Store;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};

use crate::helpers::{Db, TestApp, spawn_app_with};
use crate::{both, on_both};

pub const RS384_PEM: &[u8] = include_bytes!("../fixtures/auth/test-client-rs384.pem");
pub const ES384_PEM: &[u8] = include_bytes!("../fixtures/auth/test-client-es384.pem");
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A registered client and the private key it signs assertions with.
pub struct TestClient {
    pub client_id: String,
    pub key: EncodingKey,
    pub alg: Algorithm,
    pub kid: String,
}

pub fn key_of(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::RS384 => EncodingKey::from_rsa_pem(RS384_PEM).expect("the RSA fixture"),
        _ => EncodingKey::from_ec_pem(ES384_PEM).expect("the P-384 fixture"),
    }
}

/// The public JWKS of the fixture key for `alg`, with `kid`.
pub fn public_jwks(alg: Algorithm, kid: &str) -> String {
    let mut jwk = Jwk::from_encoding_key(&key_of(alg), alg).expect("a public JWK");
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_string(&JwkSet { keys: vec![jwk] }).expect("JSON")
}

async fn register(app: &TestApp, alg: Algorithm, scopes: &str) -> TestClient {
    let kid = format!("test-{alg:?}");
    let store = Store::connect(&app.database).await.expect("the store");
    let client = clients::register(
        &store,
        NewClient::backend(
            &format!("a backend service signing with {alg:?}"),
            public_jwks(alg, &kid),
            scopes,
        ),
    )
    .await
    .expect("registered")
    .client;
    store.close().await;
    TestClient {
        client_id: client.client_id,
        key: key_of(alg),
        alg,
        kid,
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

pub fn token_url(app: &TestApp) -> String {
    format!("{}/auth/token", app.base)
}

impl TestClient {
    /// Claims of a valid assertion for `app` (a fresh jti, exp 4 minutes ahead).
    pub fn claims(&self, app: &TestApp) -> Value {
        json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url(app),
            "exp": now() + 240,
            "jti": uuid::Uuid::new_v4().to_string(),
        })
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("signed")
    }
}

/// POSTs a token request: status, whether the no-cache headers came, body.
async fn request_token(app: &TestApp, form: &[(&str, &str)]) -> (u16, bool, Value) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let response = app
        .client
        .post(token_url(app))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    let no_cache = response
        .headers()
        .get("cache-control")
        .map(|v| v.as_bytes())
        == Some(b"no-store")
        && response.headers().get("pragma").map(|v| v.as_bytes()) == Some(b"no-cache");
    (
        status,
        no_cache,
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn with_assertion(app: &TestApp, assertion: &str, scope: &str) -> (u16, Value) {
    let (status, no_cache, body) = request_token(
        app,
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
            ("scope", scope),
        ],
    )
    .await;
    assert!(
        no_cache,
        "Cache-Control: no-store and Pragma: no-cache: {body}"
    );
    (status, body)
}

/// Asserts an OAuth 2.0 error with its status, code and a description containing `says`.
pub fn assert_error(result: &(u16, Value), status: u16, code: &str, says: &str) {
    let (got, body) = result;
    assert_eq!(*got, status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(description.contains(says), "{says:?} not in {body}");
}

/// Verifies an access token with the JWKS the gateway serves; returns its claims.
async fn verify_with_published_key(app: &TestApp, token: &str) -> Value {
    let (status, jwks) = app.get_json(".well-known/jwks.json").await;
    assert_eq!(status, 200, "{jwks}");
    let jwks: JwkSet = serde_json::from_value(jwks).expect("a JWK Set");
    let header = jsonwebtoken::decode_header(token).expect("a JWT");
    assert_eq!(header.alg, Algorithm::ES256);
    let jwk = jwks
        .find(header.kid.as_deref().expect("a kid"))
        .expect("the token's key is published");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[&app.base]);
    validation.set_issuer(&[&app.base]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_jwk(jwk).expect("a key"),
        &validation,
    )
    .expect("the token verifies")
    .claims
}

both!(
    rs384_and_es384_clients_get_tokens_that_verify_with_the_published_key,
    |app: TestApp| async move {
        for alg in [Algorithm::RS384, Algorithm::ES384] {
            let client = register(&app, alg, "system/*.rs system/Observation.cruds").await;
            let assertion = client.sign(&client.claims(&app));
            let (status, body) = with_assertion(
                &app,
                &assertion,
                "system/Observation.cruds system/Patient.read",
            )
            .await;
            assert_eq!(status, 200, "{alg:?}: {body}");
            assert_eq!(body["token_type"], "Bearer");
            assert_eq!(
                body["scope"],
                "system/Observation.cruds system/Patient.read"
            );
            let expires_in = body["expires_in"].as_i64().expect("expires_in");
            assert!((1..=300).contains(&expires_in), "{body}");
            let claims =
                verify_with_published_key(&app, body["access_token"].as_str().expect("a token"))
                    .await;
            assert_eq!(claims["sub"], client.client_id.as_str());
            assert_eq!(claims["scope"], body["scope"]);
            assert!(
                claims["jti"].is_string() && claims["iat"].is_i64(),
                "{claims}"
            );
            assert_eq!(
                claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
                expires_in
            );
        }
    }
);

both!(
    scopes_are_narrowed_to_what_the_client_may_have,
    |app: TestApp| async move {
        let client = register(
            &app,
            Algorithm::ES384,
            "system/Observation.rs system/Patient.r",
        )
        .await;
        let narrowed = with_assertion(
            &app,
            &client.sign(&client.claims(&app)),
            "system/*.cruds patient/*.rs",
        )
        .await;
        assert_eq!(narrowed.0, 200, "{}", narrowed.1);
        assert_eq!(
            narrowed.1["scope"],
            "system/Observation.rs system/Patient.r"
        );
        let refused = with_assertion(
            &app,
            &client.sign(&client.claims(&app)),
            "system/Encounter.read",
        )
        .await;
        assert_error(
            &refused,
            400,
            "invalid_scope",
            "none of the requested scopes",
        );
    }
);

both!(
    bad_assertions_are_refused_with_invalid_client,
    |app: TestApp| async move {
        let client = register(&app, Algorithm::ES384, "system/*.rs").await;
        let scope = "system/*.rs";
        let with = |change: Value| {
            let mut claims = client.claims(&app);
            for (k, v) in change.as_object().expect("an object") {
                claims[k] = v.clone();
            }
            claims
        };

        let wrong_aud = client.sign(&with(json!({"aud": format!("{}/token", app.base)})));
        assert_error(
            &with_assertion(&app, &wrong_aud, scope).await,
            401,
            "invalid_client",
            "aud must be the token endpoint",
        );

        let too_long = client.sign(&with(json!({"exp": now() + 600})));
        assert_error(
            &with_assertion(&app, &too_long, scope).await,
            401,
            "invalid_client",
            "more than 300 seconds ahead",
        );

        let expired = client.sign(&with(json!({"exp": now() - 120})));
        assert_error(
            &with_assertion(&app, &expired, scope).await,
            401,
            "invalid_client",
            "has expired",
        );

        let sub_not_iss = client.sign(&with(json!({"sub": "someone-else"})));
        assert_error(
            &with_assertion(&app, &sub_not_iss, scope).await,
            401,
            "invalid_client",
            "sub must equal its iss",
        );

        let no_jti = {
            let mut claims = client.claims(&app);
            claims.as_object_mut().expect("an object").remove("jti");
            client.sign(&claims)
        };
        assert_error(
            &with_assertion(&app, &no_jti, scope).await,
            401,
            "invalid_client",
            "no jti",
        );

        let unknown_kid = {
            let mut header = Header::new(Algorithm::ES384);
            header.kid = Some("not-registered".to_owned());
            jsonwebtoken::encode(&header, &client.claims(&app), &client.key).expect("signed")
        };
        assert_error(
            &with_assertion(&app, &unknown_kid, scope).await,
            401,
            "invalid_client",
            "no key with kid \"not-registered\" for the assertion's algorithm ES384",
        );

        // a valid header and signature of one assertion on the claims of another
        let forged = {
            let first = client.sign(&client.claims(&app));
            let second = client.sign(&client.claims(&app));
            let parts: Vec<&str> = first.split('.').collect();
            let other: Vec<&str> = second.split('.').collect();
            format!("{}.{}.{}", parts[0], other[1], parts[2])
        };
        assert_error(
            &with_assertion(&app, &forged, scope).await,
            401,
            "invalid_client",
            "signature is not valid",
        );

        let b64 = |value: &Value| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
        };
        let alg_none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "kid": client.kid})),
            b64(&client.claims(&app))
        );
        assert_error(
            &with_assertion(&app, &alg_none, scope).await,
            401,
            "invalid_client",
            "algorithm \"none\" is not allowed",
        );

        // the classic confusion: an HMAC keyed with the client's public key
        let hs256 = {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(client.kid.clone());
            let secret = public_jwks(Algorithm::ES384, &client.kid);
            jsonwebtoken::encode(
                &header,
                &client.claims(&app),
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .expect("signed")
        };
        assert_error(
            &with_assertion(&app, &hs256, scope).await,
            401,
            "invalid_client",
            "algorithm \"HS256\" is not allowed",
        );

        // an RS384 header on the client's P-384 key
        let wrong_family = {
            let rsa = TestClient {
                client_id: client.client_id.clone(),
                key: key_of(Algorithm::RS384),
                alg: Algorithm::RS384,
                kid: client.kid.clone(),
            };
            rsa.sign(&rsa.claims(&app))
        };
        assert_error(
            &with_assertion(&app, &wrong_family, scope).await,
            401,
            "invalid_client",
            "no key with kid \"test-ES384\" for the assertion's algorithm RS384",
        );

        let unknown_client = client.sign(&with(json!({"iss": "nobody", "sub": "nobody"})));
        assert_error(
            &with_assertion(&app, &unknown_client, scope).await,
            401,
            "invalid_client",
            "no client \"nobody\" is registered",
        );

        let replayed = client.sign(&client.claims(&app));
        assert_eq!(with_assertion(&app, &replayed, scope).await.0, 200);
        assert_error(
            &with_assertion(&app, &replayed, scope).await,
            401,
            "invalid_client",
            "used before",
        );
    }
);

both!(
    requests_that_are_not_client_credentials_are_refused,
    |app: TestApp| async move {
        let client = register(&app, Algorithm::RS384, "system/*.rs").await;
        let assertion = client.sign(&client.claims(&app));
        let result = |r: (u16, bool, Value)| {
            assert!(r.1, "no-cache headers on errors too: {}", r.2);
            (r.0, r.2)
        };
        let code =
            result(request_token(&app, &[("grant_type", "password"), ("username", "x")]).await);
        assert_error(&code, 400, "unsupported_grant_type", "client_credentials");
        // authorization_code needs client authentication (tests/api/authorize.rs)
        let code = result(
            request_token(&app, &[("grant_type", "authorization_code"), ("code", "x")]).await,
        );
        assert_error(&code, 401, "invalid_client", "client_id");
        let missing = result(request_token(&app, &[("scope", "system/*.rs")]).await);
        assert_error(&missing, 400, "invalid_request", "grant_type is missing");
        let secret = result(
            request_token(
                &app,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", &client.client_id),
                    ("client_secret", "s3cret"),
                    ("scope", "system/*.rs"),
                ],
            )
            .await,
        );
        assert_error(
            &secret,
            401,
            "invalid_client",
            "registered to authenticate with private_key_jwt, not client_secret_post",
        );
        let twice = result(
            request_token(
                &app,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", &assertion),
                    ("scope", "system/*.rs"),
                    ("scope", "system/*.cruds"),
                ],
            )
            .await,
        );
        assert_error(
            &twice,
            400,
            "invalid_request",
            "scope is given more than once",
        );
        let other_id = result(
            request_token(
                &app,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", "someone-else"),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", &assertion),
                    ("scope", "system/*.rs"),
                ],
            )
            .await,
        );
        assert_error(&other_id, 401, "invalid_client", "client_id does not match");
    }
);

on_both!(
    a_replay_is_refused_by_another_gateway_on_the_same_database,
    |db: Db| async move {
        let first = spawn_app_with(db, |_| {}).await;
        let client = register(&first, Algorithm::ES384, "system/*.rs").await;
        // a second gateway (a restart, or another replica) on the same database, with the same
        // public base URL, so that the assertion's aud is its token endpoint too
        let mut config = gateway::config::Config::default();
        config.server.port = 0;
        config.server.workers = 1;
        config.chain.mode = gateway::config::ChainMode::Off;
        config.database = first.database.clone();
        config.server.base_url = Some(first.base.clone());
        let second = gateway::startup::Application::build(config)
            .await
            .expect("the second gateway builds");
        let second_token_url = format!("http://127.0.0.1:{}/fhir/auth/token", second.port());
        tokio::spawn(second.run_until_stopped());

        let assertion = client.sign(&client.claims(&first));
        assert_eq!(
            with_assertion(&first, &assertion, "system/*.rs").await.0,
            200
        );
        let replayed = post_assertion(&first.client, &second_token_url, &assertion).await;
        assert_error(&replayed, 401, "invalid_client", "used before");
        let fresh = client.sign(&client.claims(&first));
        let accepted = post_assertion(&first.client, &second_token_url, &fresh).await;
        assert_eq!(
            accepted.0, 200,
            "a fresh assertion is accepted there: {}",
            accepted.1
        );
    }
);

async fn post_assertion(client: &reqwest::Client, url: &str, assertion: &str) -> (u16, Value) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
            ("scope", "system/*.rs"),
        ])
        .finish();
    let response = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

both!(
    the_discovery_document_says_what_works,
    |app: TestApp| async move {
        let response = app
            .client
            .get(app.url(".well-known/smart-configuration"))
            .header("accept", "text/html")
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "JSON whatever the Accept header"
        );
        let doc: Value = response.json().await.expect("JSON");
        assert_eq!(doc["token_endpoint"], token_url(&app));
        assert_eq!(
            doc["jwks_uri"],
            format!("{}/.well-known/jwks.json", app.base)
        );
        assert_eq!(doc["issuer"], app.base.as_str());
        assert_eq!(
            doc["grant_types_supported"],
            json!(["authorization_code", "refresh_token", "client_credentials"])
        );
        assert_eq!(
            doc["token_endpoint_auth_methods_supported"],
            json!([
                "private_key_jwt",
                "client_secret_basic",
                "client_secret_post",
                "none"
            ])
        );
        assert_eq!(
            doc["registration_endpoint"],
            format!("{}/auth/register", app.base)
        );
        assert_eq!(
            doc["token_endpoint_auth_signing_alg_values_supported"],
            json!(["RS384", "ES384"])
        );
        assert!(
            doc["scopes_supported"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
        );
        // the authorization code flow's part of the document: tests/api/authorize.rs
        assert!(
            doc["capabilities"]
                .as_array()
                .is_some_and(|c| c.contains(&json!("client-confidential-asymmetric"))),
            "{doc}"
        );
        let (status, jwks) = app.get_json(".well-known/jwks.json").await;
        assert_eq!(status, 200);
        assert_eq!(jwks["keys"][0]["kty"], "EC");
        assert_eq!(jwks["keys"][0]["crv"], "P-256");
        assert!(
            jwks["keys"][0]["kid"].is_string() && jwks["keys"][0].get("d").is_none(),
            "{jwks}"
        );
    }
);
