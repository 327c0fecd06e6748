//! What enforcing SMART costs per request: verifying an access token (ES256 signature,
//! `kid`, `iss`, `aud`, `exp`, `nbf`; the first time, and again from the cache), building the request's `Access` from its claims, and
//! deciding what a scope allows for a type (unrestricted, and confined to a patient's
//! compartment with a restriction); and what issuing a token costs the token endpoint's CPU:
//! verifying a client's ES384 assertion, signing the access token (ES256) and an ID token
//! (RS256).
//!
//! And what on-chain consent costs a request (issue 5): the request's gate (the index's
//! cursor, cached, and the grantee ids), and a read's check on the resource row with the
//! consent condition against one without (SQLite, one consented patient).
//!
//! `cargo bench -p gateway --bench access`; the figures are in BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::access::Access;
use gateway::auth::scopes::Permission;
use gateway::auth::{Auth, operator_token};
use gateway::config::Config;
use gateway::store::Store;

const BASE: &str = "http://127.0.0.1:8080/fhir";

fn access(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::default();
    config.database.data_dir = dir.path().to_path_buf();
    let store = runtime
        .block_on(Store::connect(&config.database))
        .expect("the store");
    let auth = Auth::new(&config.auth, dir.path(), BASE, store).expect("the auth server");
    let system =
        operator_token(&config.auth, dir.path(), BASE, "system/*.rs", None, 3600).expect("a token");
    let patient = operator_token(
        &config.auth,
        dir.path(),
        BASE,
        "patient/Observation.rs?category=laboratory patient/Patient.rs",
        Some("123".to_owned()),
        3600,
    )
    .expect("a token");

    c.bench_function("verify an access token (ES256, first time)", |b| {
        b.iter(|| auth.verify_uncached(black_box(&system)).expect("valid"));
    });
    c.bench_function("verify an access token seen before", |b| {
        b.iter(|| auth.verify(black_box(&system)).expect("valid"));
    });
    c.bench_function("verify and build the request's Access", |b| {
        b.iter(|| {
            Access::from_claims(auth.verify(black_box(&system)).expect("valid"), None)
                .expect("granted")
        });
    });
    let unrestricted =
        Access::from_claims(auth.verify(&system).expect("valid"), None).expect("granted");
    c.bench_function("allowed: system/*.rs, read Observation", |b| {
        b.iter(|| {
            unrestricted
                .allowed(Permission::Read, black_box("Observation"))
                .expect("allowed")
        });
    });
    let confined =
        Access::from_claims(auth.verify(&patient).expect("valid"), None).expect("granted");
    c.bench_function(
        "allowed: patient/Observation.rs?category=laboratory, read Observation",
        |b| {
            b.iter(|| {
                confined
                    .allowed(Permission::Read, black_box("Observation"))
                    .expect("allowed")
            });
        },
    );
    issuing(c, dir.path());
    runtime.block_on(async {
        drop(auth);
    });
}

/// The CPU of issuing one token: what bounds tokens issued per second.
fn issuing(c: &mut Criterion, data_dir: &std::path::Path) {
    let key = gateway::auth::keys::SigningKey::load_or_generate(None, data_dir).expect("the key");
    let id_key = gateway::auth::id_token_key::IdTokenKey::from_pem(include_bytes!(
        "../tests/fixtures/auth/test-id-token-rs256.pem"
    ))
    .expect("the ID-token key");
    let claims = serde_json::json!({
        "iss": BASE, "aud": BASE, "sub": "c", "client_id": "c", "scope": "system/*.rs",
        "iat": 1, "nbf": 1, "exp": 4_000_000_000u64, "jti": "00000000-0000-4000-8000-000000000000",
    });
    c.bench_function("sign an access token (ES256)", |b| {
        b.iter(|| key.sign(black_box(&claims)).expect("signed"));
    });
    c.bench_function("sign an ID token (RS256, 2048 bits)", |b| {
        b.iter(|| id_key.sign(black_box(&claims)).expect("signed"));
    });
    // a Backend Services client's assertion, as the token endpoint checks it
    let client_key = jsonwebtoken::EncodingKey::from_ec_pem(include_bytes!(
        "../tests/fixtures/auth/test-client-es384.pem"
    ))
    .expect("the client key");
    let public =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&client_key, jsonwebtoken::Algorithm::ES384)
            .expect("a public key");
    let decoding = jsonwebtoken::DecodingKey::from_jwk(&public).expect("a decoding key");
    let token_url = format!("{BASE}/auth/token");
    let assertion = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384),
        &serde_json::json!({"iss": "c", "sub": "c", "aud": token_url, "exp": 4_000_000_000u64, "jti": "j"}),
        &client_key,
    )
    .expect("an assertion");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES384);
    validation.set_audience(&[&token_url]);
    c.bench_function("verify a client assertion (ES384)", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<serde_json::Value>(black_box(&assertion), &decoding, &validation)
                .expect("valid")
        });
    });
}

fn consent(c: &mut Criterion) {
    use gateway::consent::{Consent, Gate};
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::default();
    config.database.data_dir = dir.path().to_path_buf();
    let store = runtime
        .block_on(Store::connect(&config.database))
        .expect("the store");
    let ctx = gateway::interaction::Context {
        base_url: BASE.to_owned(),
        config: config.clone(),
    };
    // a patient with an Observation, bound to a wallet that granted Observation to "app"
    let operator = Access::operator(None);
    let create = |json: String| {
        let store = store.clone();
        let ctx = ctx.clone();
        let operator = operator.clone();
        async move {
            let body = gateway::resource::parse_json(json.as_bytes(), 64).expect("json");
            let t = gateway::resource::resource_type_of(&body).expect("a type");
            let body = gateway::interaction::Checked::new(&ctx, body, &t).expect("valid");
            let mut tx = store.begin().await.expect("tx");
            let outcome =
                gateway::interaction::create::create(&mut tx, &ctx, &operator, &t, body, None)
                    .await
                    .expect("created");
            tx.commit().await.expect("committed");
            outcome
                .location
                .expect("a location")
                .split('/')
                .nth_back(2)
                .map(str::to_owned)
                .expect("an id")
        }
    };
    let patient = runtime.block_on(create(r#"{"resourceType":"Patient"}"#.to_owned()));
    let observation = runtime.block_on(create(format!(
        r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"subject":{{"reference":"Patient/{patient}"}}}}"#
    )));
    let wallet = "0x00000000000000000000000000000000000000aa";
    runtime.block_on(async {
        let mut tx = store.begin().await.expect("tx");
        let binding = gateway::store::binding::Binding {
            patient_id: patient.clone(),
            wallet_address: wallet.to_owned(),
            user_id: "u".to_owned(),
            bound_at: 0,
        };
        gateway::store::binding::insert(&mut tx, &binding)
            .await
            .expect("bound");
        let changes = gateway::store::consent::Changes {
            grants: vec![gateway::store::consent::GrantRecord {
                grant_id: 1,
                patient_wallet: wallet.to_owned(),
                grantee: gateway::consent::grantee_of_client("app"),
                purpose: "TREAT".to_owned(),
                resource_types: vec!["Observation".to_owned()],
                expires_at: 0,
                block: 1,
                tx: "0x01".to_owned(),
            }],
            ..Default::default()
        };
        gateway::store::consent::reset(&mut tx, 1, "0x01", 1, "0x00")
            .await
            .expect("reset");
        let now = gateway::model::Instant::now().millis() + 3_600_000;
        gateway::store::consent::apply(&mut tx, &changes, (10, "0x0a"), 10, Some(now))
            .await
            .expect("applied");
        tx.commit().await.expect("committed");
    });
    let consent = Consent::new(config.consent, store.clone(), None);
    let mut access = Access::from_claims(
        serde_json::from_value(serde_json::json!({
            "iss": BASE, "aud": BASE, "sub": "app", "client_id": "app", "scope": "system/*.rs",
            "iat": 0, "nbf": 0, "exp": i64::MAX, "jti": "j"
        }))
        .expect("claims"),
        None,
    )
    .expect("granted");
    c.bench_function("consent: the request's gate (cursor cached)", |b| {
        b.iter(|| {
            runtime
                .block_on(consent.gate(black_box(&access)))
                .expect("a gate")
        });
    });
    access.consent = runtime.block_on(consent.gate(&access)).expect("a gate");
    assert!(
        matches!(access.consent, Gate::Grants(_)),
        "{:?}",
        access.consent
    );
    let check = |access: &Access| {
        let store = store.clone();
        let access = access.clone();
        let observation = observation.clone();
        async move {
            let mut conn = store.reader().await.expect("a connection");
            access
                .check(
                    &mut conn,
                    BASE,
                    Permission::Read,
                    "Observation",
                    &observation,
                )
                .await
                .expect("consented")
        }
    };
    c.bench_function(
        "consent: check a read of a consented Observation (SQLite)",
        |b| {
            b.iter(|| runtime.block_on(check(black_box(&access))));
        },
    );
    let mut open = access.clone();
    open.consent = Gate::Open;
    c.bench_function(
        "consent: the same check with consent not enforced (SQLite)",
        |b| {
            b.iter(|| runtime.block_on(check(black_box(&open))));
        },
    );
}

criterion_group!(benches, access, consent);
criterion_main!(benches);
