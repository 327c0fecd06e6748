//! Revocation-to-effect latency (issue 5, BENCHMARKS.md "Consent"): on a local anvil (one
//! block per transaction) with the gateway following the ConsentRegistry, a patient's grant
//! lets an app read; then, again and again, the patient's signed revocation is relayed and
//! the app reads (a real request with its token) until it is refused. Measured: the time from the revoking transaction's
//! receipt to the first refused read, and how many blocks past the revoking block the
//! gateway's index stood then (0: refused as soon as the index read that block). Run with
//! the default `consent.poll_interval_ms` (500) and with 50.
//!
//! `cargo bench -p gateway --bench consent_latency` (needs `npm ci` for anvil).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::{Bytes, U256};
use alloy::signers::SignerSync as _;
use alloy::signers::local::PrivateKeySigner;
use anchor::chain::{ChainConfig, SignerKey};
use anchor::consent::{
    ConsentRelayer, GrantRequest, RevokeRequest, grantee_of_client, signing_hash_grant,
    signing_hash_revoke,
};
use gateway::config::{ChainMode, Config};
use gateway::startup::Application;
use serde_json::{Value, json};

const ROUNDS: usize = 30;

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    for poll in [500, 50] {
        runtime.block_on(measure(poll));
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

async fn measure(poll_ms: u64) {
    let anvil_binary = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    let mut anvil = Command::new(anvil_binary)
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("anvil starts (npm ci)");
    let stdout = anvil.stdout.take().expect("stdout");
    let mut url = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("a line");
        if let Some(address) = line.strip_prefix("Listening on ") {
            url = format!("http://{}", address.trim());
            break;
        }
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::default();
    config.server.port = 0;
    config.database.data_dir = dir.path().to_path_buf();
    config.chain.mode = ChainMode::Rpc;
    config.chain.rpc_url = Some(url.clone().into());
    // anvil's first two dev accounts (published test keys)
    config.chain.signer_key = Some(
        "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
            .to_owned()
            .into(),
    );
    config.consent.relayer_key = Some(
        "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
            .to_owned()
            .into(),
    );
    config.consent.poll_interval_ms = poll_ms;
    config.consent.confirmations = 1;
    config.log.filter = "warn".to_owned();
    let auth_config = config.auth.clone();
    let app = Application::build(config)
        .await
        .expect("the gateway builds");
    let base = app.base_url().to_owned();
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    // the app is the operator's client ("operator"): one token to write, one to read
    let token = |scope: &str| {
        gateway::auth::operator_token(&auth_config, dir.path(), &base, scope, None, 3600)
            .expect("a token")
    };
    let (writer, app_token) = (token("system/*.cruds"), token("system/*.rs"));
    let health = || async {
        let ready: Value = client
            .get(base.replace("/fhir", "/health/ready"))
            .send()
            .await
            .expect("ready")
            .json()
            .await
            .expect("json");
        ready["checks"]["consent:index"][0].clone()
    };
    let mut registry = None;
    while registry.is_none() {
        let check = health().await;
        if check["status"] == "pass" {
            registry = check["registry"].as_str().map(str::to_owned);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // a patient with an Observation, bound to a wallet
    let post = |body: Value| {
        let client = client.clone();
        let base = base.clone();
        let writer = writer.clone();
        async move {
            let created: Value = client
                .post(format!(
                    "{base}/{}",
                    body["resourceType"].as_str().expect("type")
                ))
                .bearer_auth(&writer)
                .header("content-type", "application/fhir+json")
                .body(body.to_string())
                .send()
                .await
                .expect("created")
                .json()
                .await
                .expect("json");
            created["id"].as_str().expect("an id").to_owned()
        }
    };
    let patient = post(json!({"resourceType": "Patient"})).await;
    let observation = post(json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": format!("Patient/{patient}")}}))
    .await;
    let wallet = PrivateKeySigner::random();
    let store_config = gateway::config::DatabaseConfig {
        data_dir: dir.path().to_path_buf(),
        ..Config::default().database
    };
    let store = gateway::store::Store::connect(&store_config)
        .await
        .expect("the store");
    let mut tx = store.begin().await.expect("tx");
    gateway::auth::binding::bind(
        &mut tx,
        &patient,
        &format!("{:#x}", wallet.address()),
        "bench",
        0,
    )
    .await
    .expect("bound")
    .expect("bound");
    tx.commit().await.expect("committed");
    let key = SignerKey::generate().expect("a key");
    anchor::chain::set_dev_balance(
        &url,
        key.address(),
        U256::from(10u64).pow(U256::from(21u64)),
    )
    .await
    .expect("funded");
    let relayer = ConsentRelayer::connect(
        &url,
        key,
        registry.expect("a registry").parse().expect("an address"),
        ChainConfig {
            confirmations: 1,
            poll_interval: Duration::from_millis(5),
            ..ChainConfig::default()
        },
    )
    .await
    .expect("the relayer");
    let reader = relayer.reader();
    let (chain_id, address) = (reader.chain_id(), reader.registry());
    let read = || async {
        client
            .get(format!("{base}/Observation/{observation}"))
            .bearer_auth(&app_token)
            .send()
            .await
            .expect("read")
            .status()
            .as_u16()
    };
    let mut latencies = Vec::new();
    let mut blocks_past = Vec::new();
    for _ in 0..ROUNDS {
        let nonce = reader.nonce(wallet.address()).await.expect("nonce");
        let grant = GrantRequest {
            patient: wallet.address(),
            grantee: grantee_of_client("operator"),
            resource_types: Vec::new(),
            purpose: "TREAT".to_owned(),
            expires_at: 0,
            nonce,
            deadline: U256::from(now() + 600),
        };
        let sig = wallet
            .sign_hash_sync(&signing_hash_grant(chain_id, address, &grant))
            .expect("signed");
        let granted = relayer
            .relay_grant(&grant, Bytes::from(sig.as_bytes().to_vec()))
            .await
            .expect("granted");
        while read().await != 200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(health().await["block"].as_u64().unwrap_or(0) >= granted.block_number);
        let revoke = RevokeRequest {
            patient: wallet.address(),
            grant_id: granted.grant_id,
            nonce: nonce + U256::from(1u64),
            deadline: U256::from(now() + 600),
        };
        let sig = wallet
            .sign_hash_sync(&signing_hash_revoke(chain_id, address, &revoke))
            .expect("signed");
        let revoked = relayer
            .relay_revoke(&revoke, Bytes::from(sig.as_bytes().to_vec()))
            .await
            .expect("revoked");
        let mined = Instant::now();
        loop {
            let status = read().await;
            if status == 403 {
                latencies.push(mined.elapsed());
                let block = health().await["block"].as_u64().unwrap_or(0);
                blocks_past.push(block.saturating_sub(revoked.block_number));
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    latencies.sort();
    blocks_past.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "consent.poll_interval_ms = {poll_ms}: revocation to effect over {ROUNDS} revocations: median {:.0} ms, p95 {:.0} ms, max {:.0} ms; index past the revoking block: median {} blocks, max {}",
        ms(latencies[ROUNDS / 2]),
        ms(latencies[ROUNDS * 95 / 100]),
        ms(latencies[ROUNDS - 1]),
        blocks_past[ROUNDS / 2],
        blocks_past[ROUNDS - 1]
    );
    let _ = anvil.kill();
    let _ = anvil.wait();
}
