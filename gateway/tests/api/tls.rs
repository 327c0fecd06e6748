//! The HTTPS listener (`server.tls_cert_file`, `server.tls_key_file`): SMART requires TLS 1.2
//! or later for every exchange. A client that trusts the test certificate reads the
//! CapabilityStatement over TLS 1.2 and over TLS 1.3; plain HTTP on the same port gets no
//! HTTP answer, and the base URL says https.

use std::path::PathBuf;

use crate::helpers::{Db, spawn_app_with};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn https_client(version: http_client::tls::Version) -> http_client::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = std::fs::read(fixture("localhost-cert.pem")).expect("the test certificate");
    http_client::Client::builder()
        .tls_certs_only([http_client::Certificate::from_pem(&pem).expect("a certificate")])
        .tls_version_min(version)
        .tls_version_max(version)
        .build()
        .expect("an HTTPS client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_https_with_tls_1_2_and_1_3() {
    let app = spawn_app_with(Db::Sqlite, |config| {
        config.server.tls_cert_file = Some(fixture("localhost-cert.pem"));
        config.server.tls_key_file = Some(fixture("localhost-key.pem"));
    })
    .await;
    assert!(app.base.starts_with("https://127.0.0.1:"), "{}", app.base);

    for version in [
        http_client::tls::Version::TLS_1_2,
        http_client::tls::Version::TLS_1_3,
    ] {
        let response = https_client(version)
            .get(format!("{}/metadata", app.base))
            .send()
            .await
            .expect("an HTTPS answer");
        assert_eq!(response.status(), 200, "{version:?}");
        let statement: serde_json::Value = response.json().await.expect("JSON");
        assert_eq!(statement["resourceType"], "CapabilityStatement");
    }

    // plain HTTP to the TLS port gets no HTTP response
    let plain = app.base.replacen("https://", "http://", 1);
    assert!(
        app.client
            .get(format!("{plain}/metadata"))
            .send()
            .await
            .is_err()
    );
}
