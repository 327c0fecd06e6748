//! The `fhir-gateway` binary: help on every subcommand, the effective configuration, a
//! graceful shutdown on SIGTERM that lets an in-flight request finish, the embedded chain
//! (anvil started, anchored into, stopped and resumed with the gateway), `client add`, `list`
//! and `remove` (SMART clients; their tokens: `tests/api/auth.rs`), `user` and `launch`
//! (the authorization code flow: `tests/api/authorize.rs`), and `erase` refusing
//! what it cannot parse. (`erase` on real data: `tests/api/erasure.rs`, on both backends.)

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_fhir-gateway");

fn run(args: &[&str]) -> (bool, String) {
    let output = Command::new(BINARY)
        .args(args)
        .env_remove("FHIR_GATEWAY_CONFIG")
        .output()
        .expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["config", "--help"],
        &["erase", "--help"],
        &["client", "--help"],
        &["client", "add", "--help"],
        &["client", "list", "--help"],
        &["client", "remove", "--help"],
        &["auth-key", "generate", "--help"],
        &["token", "issue", "--help"],
        &["user", "add", "--help"],
        &["user", "list", "--help"],
        &["user", "disable", "--help"],
        &["launch", "--help"],
        &["import", "--help"],
        &["patient", "--help"],
        &["user", "break-glass", "--help"],
    ] {
        let (ok, out) = run(args);
        assert!(ok, "{args:?} fails");
        assert!(out.contains("Usage: fhir-gateway"), "{args:?}: {out}");
        assert!(out.contains("--help"), "{args:?}: {out}");
    }
    let (_, top) = run(&["--help"]);
    assert!(
        top.contains("serve") && top.contains("config") && top.contains("erase"),
        "{top}"
    );
}

#[test]
fn config_prints_the_effective_configuration_without_secrets() {
    let output = Command::new(BINARY)
        .arg("config")
        .env("FHIR_GATEWAY_DATABASE__URL", "postgres://u:hunter2@db/fhir")
        .env("FHIR_GATEWAY_SEARCH__DEFAULT_COUNT", "17")
        .env("FHIR_GATEWAY_CHAIN__MODE", "rpc")
        .env(
            "FHIR_GATEWAY_CHAIN__RPC_URL",
            "http://rpc.example/v3/APIKEY42",
        )
        .env(
            "FHIR_GATEWAY_CHAIN__SIGNER_KEY",
            "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
        )
        .env(
            "FHIR_GATEWAY_CONSENT__RELAYER_KEY",
            "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
        )
        .env(
            "FHIR_GATEWAY_TELEMETRY__PROMETHEUS_TOKEN",
            "scrape-token-77",
        )
        .output()
        .expect("the binary runs");
    assert!(output.status.success());
    let out = String::from_utf8_lossy(&output.stdout);
    let config: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(config["search"]["default_count"], 17);
    assert!(
        !out.contains("hunter2"),
        "the database password is printed: {out}"
    );
    assert_eq!(config["chain"]["mode"], "rpc");
    assert!(!out.contains("APIKEY42"), "the RPC URL is printed: {out}");
    assert!(
        !out.contains("59c6995e"),
        "the signer key is printed: {out}"
    );
    assert!(
        !out.contains("5de4111a"),
        "the consent relayer's key is printed: {out}"
    );
    assert!(
        !out.contains("scrape-token-77"),
        "the metrics token is printed: {out}"
    );
    assert_eq!(config["consent"]["relayer_key"], "********");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn start(data_dir: &Path, port: u16) -> Child {
    let child = Command::new(BINARY)
        .arg("serve")
        .env_remove("FHIR_GATEWAY_CONFIG")
        .env_remove("FHIR_GATEWAY_DATABASE__URL")
        .env("FHIR_GATEWAY_SERVER__PORT", port.to_string())
        .env("FHIR_GATEWAY_SERVER__SHUTDOWN_TIMEOUT_SECS", "20")
        .env("FHIR_GATEWAY_DATABASE__DATA_DIR", data_dir)
        .env("FHIR_GATEWAY_LOG__FILTER", "warn")
        .env("FHIR_GATEWAY_AUTH__REQUIRED", "false")
        // the embedded chain, on a port of its own, quick to seal and confirm
        .env_remove("FHIR_GATEWAY_CHAIN__MODE")
        .env("FHIR_GATEWAY_CHAIN__ANVIL_PORT", "0")
        .env("FHIR_GATEWAY_CHAIN__POLL_INTERVAL_MS", "100")
        .env("FHIR_GATEWAY_LEDGER__BATCH_MAX_AGE_SECS", "0")
        .stdout(Stdio::null())
        .spawn()
        .expect("the gateway starts");
    // serving, not only bound: the listener is bound before the keys are loaded (or made), and
    // a connection accepted by the kernel meanwhile waits in the backlog
    let deadline = Instant::now() + Duration::from_secs(60);
    while !is_live(port) {
        assert!(
            Instant::now() < deadline,
            "the gateway did not start serving"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Whether the gateway on `port` answers `/health/live`.
fn is_live(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(
        stream,
        "GET /health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut response = String::new();
    stream.read_to_string(&mut response).is_ok() && response.starts_with("HTTP/1.1 200")
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

fn wait(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_stops_accepting_but_finishes_the_request_in_flight() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let port = free_port();
    let mut gateway = start(dir.path(), port);

    // a create whose body is still arriving when the signal comes
    let body = r#"{"resourceType":"Patient","id":"ignored","name":[{"family":"InFlight"}]}"#;
    let (head, tail) = body.split_at(body.len() / 2);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "POST /fhir/Patient HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/fhir+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{head}",
        body.len()
    )
    .expect("send the first half");
    stream.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(300));
    signal(&gateway, "TERM");
    std::thread::sleep(Duration::from_millis(500));

    // no new connections once stopping
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "a stopping gateway still accepts connections"
    );

    // the request in flight completes
    stream.write_all(tail.as_bytes()).expect("send the rest");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let location = response
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .expect("a Location header")
        .to_owned();

    let status = wait(&mut gateway, Duration::from_secs(30));
    assert!(status.success(), "the gateway exits cleanly: {status}");

    // nothing lost: the resource is there after a restart
    let mut gateway = start(dir.path(), port);
    let path = location
        .split_once(&format!(":{port}"))
        .map(|(_, p)| p)
        .expect("a local Location");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("InFlight"), "{response}");
    signal(&gateway, "INT");
    assert!(wait(&mut gateway, Duration::from_secs(30)).success());
}

#[test]
fn erase_refuses_what_is_not_a_resource_reference_and_needs_a_reason() {
    let dir = tempfile::tempdir().expect("temporary directory");
    for args in [
        &["erase", "Patient", "--reason", "ticket 1"][..],
        &["erase", "Unicorn/1", "--reason", "ticket 1"],
        &["erase", "Patient/a b", "--reason", "ticket 1"],
        &["erase", "Patient/1", "--reason", " "],
        &["erase", "Patient/1"],
    ] {
        let output = Command::new(BINARY)
            .args(args)
            .env_remove("FHIR_GATEWAY_CONFIG")
            .env_remove("FHIR_GATEWAY_DATABASE__URL")
            .env("FHIR_GATEWAY_DATABASE__DATA_DIR", dir.path())
            .output()
            .expect("the binary runs");
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(
            output.stdout.is_empty(),
            "{args:?} printed {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    // refused before the database is opened
    assert!(
        !dir.path().join("gateway.db").exists(),
        "a refused erase created the database"
    );
}

/// One HTTP/1.1 exchange: (status line, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/fhir+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    // the gateway answers with a length or chunks; chunk sizes are lines of hex digits
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.split("\r\n")
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, chunk)| chunk)
            .collect()
    } else {
        body.to_owned()
    };
    (status, body)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn proof_status(port: u16, version: &str) -> String {
    let (_, body) = http(port, "GET", &format!("/fhir/{version}/$proof"), "");
    json(&body)["parameter"][0]["valueCode"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn anchoring(port: u16) -> serde_json::Value {
    let (_, body) = http(port, "GET", "/health/ready", "");
    json(&body)["checks"]["log:anchoring"][0].clone()
}

#[test]
fn the_embedded_chain_starts_anchors_stops_and_resumes_with_the_gateway() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let port = free_port();
    let mut gateway = start(dir.path(), port);
    let (status, body) = http(
        port,
        "POST",
        "/fhir/Patient",
        r#"{"resourceType":"Patient","active":true}"#,
    );
    assert!(status.contains("201"), "{status} {body}");
    let created = json(&body);
    let version = format!(
        "Patient/{}/_history/1",
        created["id"].as_str().expect("an id")
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while proof_status(port, &version) != "anchored" {
        assert!(
            Instant::now() < deadline,
            "not anchored: {}",
            anchoring(port)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = anchoring(port);
    assert_eq!(before["mode"], "embedded");
    assert_eq!(before["chainId"], 31337);
    // the gateway's own key, readable by its owner only
    let key = dir.path().join("anchor-signer.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key)
            .expect("the key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key file is private: {mode:o}");
    }
    let anvil: u32 = std::fs::read_to_string(dir.path().join("anvil.pid"))
        .expect("anvil's pid file")
        .trim()
        .parse()
        .expect("a pid");

    // stopping the gateway stops its chain
    signal(&gateway, "TERM");
    assert!(wait(&mut gateway, Duration::from_secs(30)).success());
    assert!(
        !Path::new(&format!("/proc/{anvil}")).exists(),
        "anvil outlived the gateway"
    );

    // a restart finds the same registry, account and anchors
    let mut gateway = start(dir.path(), port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while anchoring(port)["registry"].is_null() {
        assert!(Instant::now() < deadline, "{}", anchoring(port));
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = anchoring(port);
    assert_eq!(after["registry"], before["registry"]);
    assert_eq!(after["anchorer"], before["anchorer"]);
    assert_eq!(proof_status(port, &version), "anchored");
    signal(&gateway, "TERM");
    assert!(wait(&mut gateway, Duration::from_secs(30)).success());
}

/// `fhir-gateway client` on an embedded SQLite database in `data_dir`: success, stdout, stderr.
fn client_command(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BINARY)
        .arg("client")
        .args(args)
        .env_remove("FHIR_GATEWAY_CONFIG")
        .env_remove("FHIR_GATEWAY_DATABASE__URL")
        .env("FHIR_GATEWAY_DATABASE__DATA_DIR", data_dir)
        .output()
        .expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn clients_are_added_listed_and_removed() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let jwks = dir.path().join("client.jwks.json");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(include_bytes!(
        "fixtures/auth/test-client-es384.pem"
    ))
    .expect("the test key");
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES384)
        .expect("a public JWK");
    jwk.common.key_id = Some("k1".to_owned());
    std::fs::write(&jwks, serde_json::json!({"keys": [jwk]}).to_string()).expect("written");
    let jwks = jwks.to_str().expect("a UTF-8 path");

    let (ok, out, err) = client_command(
        dir.path(),
        &[
            "add",
            "--name",
            "Lab system",
            "--kind",
            "backend",
            "--jwks-file",
            jwks,
            "--scope",
            "system/Observation.cruds",
            "--scope",
            "system/Patient.rs system/*.read",
        ],
    );
    assert!(ok, "{err}");
    let added: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let client_id = added["client_id"].as_str().expect("a client_id").to_owned();
    assert_eq!(
        added["scopes"],
        "system/Observation.cruds system/Patient.rs system/*.read"
    );
    assert_eq!(added["kind"], "backend");
    assert_eq!(
        added["jwks"]["keys"][0]["kid"], "k1",
        "the JWKS shown as JSON"
    );

    let (ok, out, err) = client_command(dir.path(), &["list"]);
    assert!(ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(listed[0]["client_id"], client_id.as_str());
    assert_eq!(listed[0]["name"], "Lab system");

    let (ok, _, err) = client_command(
        dir.path(),
        &[
            "add",
            "--name",
            "x",
            "--kind",
            "backend",
            "--jwks-file",
            jwks,
            "--scope",
            "patient/*.rs",
        ],
    );
    assert!(!ok && err.contains("system/ scopes only"), "{err}");
    let private = dir.path().join("private.jwks.json");
    std::fs::write(
        &private,
        r#"{"keys":[{"kty":"EC","crv":"P-384","kid":"k","x":"a","y":"b","d":"c"}]}"#,
    )
    .expect("written");
    let (ok, _, err) = client_command(
        dir.path(),
        &[
            "add",
            "--name",
            "x",
            "--kind",
            "backend",
            "--jwks-file",
            private.to_str().expect("a UTF-8 path"),
            "--scope",
            "system/*.rs",
        ],
    );
    assert!(!ok && err.contains("private key"), "{err}");

    // apps: a confidential-symmetric one gets its secret once; a public one none
    let (ok, out, err) = client_command(
        dir.path(),
        &[
            "add",
            "--name",
            "Clinic app",
            "--kind",
            "confidential-symmetric",
            "--redirect-uri",
            "https://clinic.example.org/callback",
            "--redirect-uri",
            "http://localhost:3000/callback",
            "--launch-uri",
            "https://clinic.example.org/launch",
            "--scope",
            "openid fhirUser launch user/*.rs offline_access",
        ],
    );
    assert!(ok, "{err}");
    let app: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(app["kind"], "confidential-symmetric");
    assert_eq!(app["token_endpoint_auth_method"], "client_secret_basic");
    assert_eq!(app["redirect_uris"][1], "http://localhost:3000/callback");
    assert_eq!(app["launch_uri"], "https://clinic.example.org/launch");
    let secret = app["client_secret"].as_str().expect("the secret, once");
    let (ok, out, _) = client_command(
        dir.path(),
        &[
            "add",
            "--name",
            "Patient app",
            "--kind",
            "public",
            "--redirect-uri",
            "https://patient.example.org/cb",
            "--scope",
            "launch/patient patient/*.rs",
        ],
    );
    assert!(ok);
    let public: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(public["token_endpoint_auth_method"], "none");
    assert!(public.get("client_secret").is_none());
    let (ok, out, _) = client_command(dir.path(), &["list"]);
    assert!(ok);
    assert!(!out.contains(secret) && !out.contains("argon2"), "{out}");
    let (ok, out, err) = client_command(
        dir.path(),
        &[
            "add",
            "--name",
            "Admin",
            "--kind",
            "backend",
            "--jwks-file",
            jwks,
            "--scope",
            "system/*.rs",
            "--admin",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).expect("JSON")["admin"],
        true
    );
    for (args, says) in [
        (
            vec![
                "--kind",
                "public",
                "--redirect-uri",
                "http://app.example.org/cb",
            ],
            "must be https",
        ),
        (vec!["--kind", "public"], "at least one redirect URI"),
        (
            vec![
                "--kind",
                "public",
                "--redirect-uri",
                "https://a.example/cb",
                "--admin",
            ],
            "only backend clients may be admins",
        ),
        (
            vec![
                "--kind",
                "confidential-symmetric",
                "--redirect-uri",
                "https://a.example/cb",
                "--jwks-file",
                jwks,
            ],
            "has no JWKS",
        ),
    ] {
        let mut full = vec!["add", "--name", "x", "--scope", "patient/*.rs"];
        full.extend(args);
        let (ok, _, err) = client_command(dir.path(), &full);
        assert!(!ok && err.contains(says), "{says}: {err}");
    }

    let (ok, out, err) = client_command(dir.path(), &["remove", &client_id]);
    assert!(ok, "{err}");
    assert!(out.contains(&client_id), "{out}");
    let (ok, out, _) = client_command(dir.path(), &["list"]);
    assert!(ok);
    let left = serde_json::from_str::<serde_json::Value>(&out).expect("JSON");
    assert!(
        left.as_array()
            .is_some_and(|l| l.len() == 3 && l.iter().all(|c| c["client_id"] != client_id.as_str())),
        "{left}"
    );
    let (ok, _, err) = client_command(dir.path(), &["remove", &client_id]);
    assert!(!ok && err.contains("no client"), "{err}");
}

/// `auth-key generate` makes a key file only its owner reads, never overwriting one; `token
/// issue` signs a token with the configured key for the configured base URL.
#[test]
fn auth_keys_are_generated_and_tokens_issued() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let key = dir.path().join("signing.pem");
    let key_arg = key.to_str().expect("a UTF-8 path");
    let (ok, kid) = run(&["auth-key", "generate", "--out", key_arg]);
    assert!(ok);
    let kid = kid.trim().to_owned();
    assert_eq!(kid.len(), 43, "an RFC 7638 SHA-256 thumbprint: {kid}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key)
            .expect("the key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let before = std::fs::read(&key).expect("the key");
    let (ok, _) = run(&["auth-key", "generate", "--out", key_arg]);
    assert!(!ok, "an existing key file is not overwritten");
    assert_eq!(std::fs::read(&key).expect("the key"), before);

    let issue = |args: &[&str]| {
        let output = Command::new(BINARY)
            .args(["token", "issue"])
            .args(args)
            .env_remove("FHIR_GATEWAY_CONFIG")
            .env("FHIR_GATEWAY_AUTH__SIGNING_KEY_FILE", &key)
            .env(
                "FHIR_GATEWAY_SERVER__BASE_URL",
                "https://fhir.example.org/fhir",
            )
            .env("FHIR_GATEWAY_DATABASE__DATA_DIR", dir.path())
            .output()
            .expect("the binary runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        )
    };
    let (ok, token) = issue(&[
        "--scope",
        "patient/*.rs",
        "--patient",
        "123",
        "--lifetime-secs",
        "60",
    ]);
    assert!(ok, "{token}");
    let signing = gateway::auth::keys::SigningKey::load(&key).expect("the key");
    let header = jsonwebtoken::decode_header(&token).expect("a JWT");
    assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
    let decoding = jsonwebtoken::DecodingKey::from_jwk(signing.public_jwk()).expect("public");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["https://fhir.example.org/fhir"]);
    validation.set_issuer(&["https://fhir.example.org/fhir"]);
    let claims =
        jsonwebtoken::decode::<gateway::auth::claims::AccessClaims>(&token, &decoding, &validation)
            .expect("valid")
            .claims;
    assert_eq!(claims.scope, "patient/*.rs");
    assert_eq!(claims.patient.as_deref(), Some("123"));
    assert_eq!(claims.exp - claims.iat, 60);
    let (ok, _) = issue(&["--scope", "patient/*.rs"]);
    assert!(!ok, "patient/ scopes need a patient");
    let (ok, _) = issue(&["--scope", "patient/Nope.rs", "--patient", "1"]);
    assert!(!ok, "an unknown scope is refused");
}

/// `fhir-gateway` with `args` on an embedded SQLite database in `data_dir` and `env`:
/// success, stdout, stderr.
fn command_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let output = Command::new(BINARY)
        .args(args)
        .env_remove("FHIR_GATEWAY_CONFIG")
        .env_remove("FHIR_GATEWAY_DATABASE__URL")
        .env_remove("FHIR_GATEWAY_USER_PASSWORD")
        .env("FHIR_GATEWAY_DATABASE__DATA_DIR", data_dir)
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn users_are_added_listed_and_disabled_and_launches_need_a_patient() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "a password long enough\n").expect("written");
    let password_file = password_file.to_str().expect("a UTF-8 path");
    let (ok, out, err) = command_with(
        dir.path(),
        &[
            "user",
            "add",
            "--kind",
            "practitioner",
            "--username",
            "dr.who",
            "--password-file",
            password_file,
            "--fhir-user",
            "Practitioner/7",
        ],
        &[],
    );
    assert!(ok, "{err}");
    let added: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(added["username"], "dr.who");
    assert!(added.get("password_hash").is_none(), "{added}");
    // the password from the environment: not a setting of the gateway
    let (ok, _, err) = command_with(
        dir.path(),
        &[
            "user",
            "add",
            "--kind",
            "staff",
            "--username",
            "desk",
            "--fhir-user",
            "Practitioner/8",
        ],
        &[("FHIR_GATEWAY_USER_PASSWORD", "another long password")],
    );
    assert!(ok, "{err}");
    for (args, says) in [
        (
            &[
                "user",
                "add",
                "--kind",
                "staff",
                "--username",
                "nopw",
                "--fhir-user",
                "Practitioner/9",
            ][..],
            "FHIR_GATEWAY_USER_PASSWORD",
        ),
        (
            &[
                "user",
                "add",
                "--kind",
                "patient",
                "--wallet",
                "0x12",
                "--fhir-user",
                "Patient/1",
            ],
            "not an Ethereum address",
        ),
        (
            &[
                "user",
                "add",
                "--kind",
                "patient",
                "--wallet",
                "0x52908400098527886E0F7030069857D2E4169EE7",
                "--fhir-user",
                "Practitioner/1",
            ],
            "fhirUser must be",
        ),
        (&["launch", "--patient", "123"], "there is no Patient/123"),
    ] {
        let (ok, _, err) = command_with(dir.path(), args, &[]);
        assert!(!ok && err.contains(says), "{args:?}: {err}");
    }
    // a patient user binds the wallet to the Patient, which must exist (the binding and the
    // user are made together: tests/api/binding.rs)
    let (ok, _, err) = command_with(
        dir.path(),
        &[
            "user",
            "add",
            "--kind",
            "patient",
            "--wallet",
            "0x52908400098527886E0F7030069857D2E4169EE7",
            "--fhir-user",
            "Patient/123",
        ],
        &[],
    );
    assert!(!ok && err.contains("no such Patient"), "{err}");
    let (ok, out, err) = command_with(dir.path(), &["user", "disable", "dr.who"], &[]);
    assert!(ok, "{err}: {out}");
    let (ok, out, err) = command_with(dir.path(), &["user", "list"], &[]);
    assert!(ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert!(listed[0]["disabled_at"].is_i64(), "{listed}");
    assert!(!out.contains("argon2"), "no password hashes: {out}");
}
