//! What enforcing SMART costs per request: verifying an access token (ES256 signature,
//! `kid`, `iss`, `aud`, `exp`, `nbf`; the first time, and again from the cache), building the request's `Access` from its claims, and
//! deciding what a scope allows for a type (unrestricted, and confined to a patient's
//! compartment with a restriction).
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
    runtime.block_on(async {
        drop(auth);
    });
}

criterion_group!(benches, access);
criterion_main!(benches);
