//! The anchoring worker against a real anvil: batches anchored in order and confirmed, proofs
//! checked against the registry (never the gateway's word), a chain that goes away and comes
//! back, a reorg that drops an anchor, and gateways killed (SIGKILL) between sealing and
//! sending, between sending and mining, and between mining and confirmation.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anchor::chain::{Address, AnchorClient, ChainConfig as ClientConfig, SignerKey};
use anchor::{Leaf, TreeHead, verify_inclusion};
use gateway::config::{ChainMode, Config};
use serde_json::{Value, json};

use crate::helpers::{Db, TestApp, new_postgres_database, spawn_app_with};
use crate::log::{check_as_auditor, part, proof_of, read_proof, version_path};

/// anvil's first dev account (a published test key, never a secret).
pub(crate) const KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// An anvil process, stopped on drop.
pub(crate) struct Anvil {
    child: Child,
    pub(crate) url: String,
}

impl Anvil {
    /// Starts anvil on `port` (0: a free one) with `args`.
    pub(crate) fn start(port: u16, args: &[&str]) -> Anvil {
        let binary = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
        assert!(
            binary.is_file(),
            "anvil is missing at {}: run `npm ci` in the repository root",
            binary.display()
        );
        let mut child = Command::new(&binary)
            .args(["--port", &port.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("anvil starts");
        let stdout = child.stdout.take().expect("anvil's stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = line.strip_prefix("Listening on ") {
                    let _ = tx.send(address.trim().to_owned());
                }
            }
        });
        let address = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("anvil prints its address");
        Anvil {
            child,
            url: format!("http://{address}"),
        }
    }

    /// Stops anvil with SIGINT, so that it writes its `--state`.
    pub(crate) fn stop(&mut self) {
        signal(self.child.id(), "INT");
        let _ = self.child.wait();
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port()
}

pub(crate) async fn rpc(url: &str, method: &str, params: Value) -> Value {
    let response: Value = reqwest::Client::new()
        .post(url)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method}: {e}"))
        .json()
        .await
        .expect("a JSON-RPC answer");
    assert!(response["error"].is_null(), "{method}: {response}");
    response["result"].clone()
}

fn quantity(value: &Value) -> u64 {
    u64::from_str_radix(
        value.as_str().expect("a quantity").trim_start_matches("0x"),
        16,
    )
    .expect("a hexadecimal quantity")
}

fn anchorer() -> Address {
    SignerKey::from_hex(KEY).expect("the test key").address()
}

/// The chain settings of a test gateway anchoring at `url` with the test key.
fn use_chain(config: &mut Config, url: &str, confirmations: u64) {
    config.ledger.interval_ms = 10;
    config.ledger.batch_max_size = 3;
    config.ledger.batch_max_age_secs = 0;
    config.chain.mode = ChainMode::Rpc;
    config.chain.rpc_url = Some(url.to_owned().into());
    config.chain.signer_key = Some(KEY.to_owned().into());
    config.chain.confirmations = confirmations;
    config.chain.poll_interval_ms = 20;
}

/// The anchoring check of `/health/ready`.
async fn anchoring_health(app: &TestApp) -> Value {
    let ready: Value = app
        .client
        .get(format!(
            "{}/health/ready",
            app.base.trim_end_matches("/fhir")
        ))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("health JSON");
    json!({
        "anchoring": ready["checks"]["log:anchoring"][0],
        "backlog": ready["checks"]["log:backlog"][0],
    })
}

/// Polls `done` every 50 ms, mining a block on `chain` each time (so confirmations accrue),
/// for up to 60 s.
async fn until<F: Future<Output = bool>>(
    what: &str,
    chain: Option<&str>,
    mut done: impl FnMut() -> F,
) {
    let started = Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        if let Some(url) = chain {
            rpc(url, "anvil_mine", json!([1])).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `count` Patients and returns their version paths.
async fn write(app: &TestApp, count: usize) -> Vec<String> {
    let mut versions = Vec::new();
    for i in 0..count {
        let (status, body) = app
            .post(
                "Patient",
                &json!({"resourceType": "Patient", "active": i % 2 == 0, "name": [{"family": format!("Anchor{i}")}]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        versions.push(version_path(&body));
    }
    versions
}

/// The `anchor` part of a `$proof`, by name.
async fn anchor_part(app: &TestApp, version: &str) -> Option<Value> {
    let (_, body) = app.get_json(&format!("{version}/$proof")).await;
    let anchor = part(body["parameter"].as_array()?, "anchor")?;
    let mut fields = serde_json::Map::new();
    for p in anchor["part"].as_array()? {
        let value = p
            .get("valueString")
            .or_else(|| p.get("valueDecimal"))
            .cloned()
            .unwrap_or(Value::Null);
        fields.insert(p["name"].as_str()?.to_owned(), value);
    }
    Some(Value::Object(fields))
}

async fn status_of(app: &TestApp, version: &str) -> String {
    proof_of(app, version).await.status
}

/// Whether every one of `versions` is anchored (confirmed).
async fn all_anchored(app: &TestApp, versions: &[String]) -> bool {
    for version in versions {
        if status_of(app, version).await != "anchored" {
            return false;
        }
    }
    true
}

/// Checks every version as an auditor does against the chain at `url`: content, salt and
/// path lead to a root, and that root, the first index and the size are the registry's
/// batch; the anchoring block is canonical. Then the whole log: the registry's events are
/// batches 0, 1, 2, ... each once, contiguous, and hold every leaf.
async fn check_against_chain(app: &TestApp, url: &str, versions: &[String]) {
    let reader = AnchorClient::connect(
        url,
        SignerKey::from_hex(KEY).expect("the test key"),
        registry_of(app, &versions[0]).await,
        ClientConfig::default(),
    )
    .await
    .expect("the registry");
    for version in versions {
        let proof = proof_of(app, version).await;
        assert_eq!(proof.status, "anchored", "{version}");
        check_as_auditor(app, version, &proof).await;
        let (number, first, size, root) = proof.batch.expect("a batch");
        let on_chain = reader
            .batch(anchorer(), number)
            .await
            .expect("the batch on chain");
        assert_eq!(
            (on_chain.root, on_chain.first_index, on_chain.size),
            (root, first, size),
            "{version}: the registry's batch {number}"
        );
        let leaf = Leaf::new(
            proof.salt.clone().expect("a salt"),
            proof.content_hash.expect("a content hash"),
        );
        let head = TreeHead {
            tree_size: on_chain.size,
            root: on_chain.root,
        };
        verify_inclusion(&leaf.hash(), proof.path.as_ref().expect("a path"), &head)
            .expect("the path leads to the root on chain");
        let anchor = anchor_part(app, version).await.expect("an anchor part");
        assert_eq!(anchor["chainId"], 31337);
        assert_eq!(anchor["anchorer"], format!("0x{}", hex::encode(anchorer())));
        assert_eq!(anchor["blockNumber"], on_chain.block_number);
        let block = rpc(
            url,
            "eth_getBlockByNumber",
            json!([format!("0x{:x}", on_chain.block_number), false]),
        )
        .await;
        assert_eq!(block["hash"], anchor["blockHash"], "{version}: canonical");
        let receipt = rpc(
            url,
            "eth_getTransactionReceipt",
            json!([anchor["transactionHash"]]),
        )
        .await;
        assert_eq!(receipt["status"], "0x1");
        assert_eq!(receipt["blockHash"], anchor["blockHash"]);
    }
    let events = reader
        .batch_anchored_events(anchorer(), 0, None)
        .await
        .expect("the registry's events");
    let mut next = 0;
    for (number, event) in events.iter().enumerate() {
        assert_eq!(
            event.batch_number, number as u64,
            "each batch once, in order"
        );
        assert_eq!(event.first_index, next, "contiguous");
        next += event.size;
    }
    assert_eq!(reader.log_size(anchorer()).await.expect("log size"), next);
    assert!(next >= versions.len() as u64);
}

async fn registry_of(app: &TestApp, version: &str) -> Address {
    anchor_part(app, version).await.expect("anchored")["contract"]
        .as_str()
        .expect("the contract")
        .parse()
        .expect("an address")
}

macro_rules! on_both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)(Db::Postgres).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)(Db::Sqlite).await;
            }
        }
    };
}

on_both!(
    writes_are_anchored_confirmed_and_check_against_the_chain,
    |db| async move {
        let anvil = Anvil::start(0, &[]);
        let app = spawn_app_with(db, |config| use_chain(config, &anvil.url, 3)).await;
        let mut versions = write(&app, 7).await;
        let id = versions[0].split('/').nth(1).expect("an id").to_owned();
        let deleted = app
            .send(
                reqwest::Method::DELETE,
                &format!("Patient/{id}"),
                &Value::Null,
            )
            .await;
        assert_eq!(deleted.status(), 200);
        versions.push(format!("Patient/{id}/_history/2"));
        // mined but not yet 3 deep: submitted, with where it went
        until("the first batch on chain", None, || async {
            status_of(&app, &versions[0]).await != "pending"
        })
        .await;
        let first = proof_of(&app, &versions[0]).await;
        assert!(first.anchored, "the anchor part appears once submitted");
        until("every version confirmed", Some(&anvil.url), || {
            all_anchored(&app, &versions)
        })
        .await;
        check_against_chain(&app, &anvil.url, &versions).await;
        let health = anchoring_health(&app).await;
        assert_eq!(health["anchoring"]["status"], "pass", "{health}");
        assert_eq!(health["anchoring"]["chainId"], 31337, "{health}");
        assert_eq!(health["anchoring"]["leading"], true, "{health}");
        assert_eq!(health["backlog"]["sealedBatchesAwaitingSubmission"], 0);
    }
);

on_both!(
    a_chain_that_goes_away_and_returns_gets_the_backlog_in_order,
    |db| async move {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let state_dir = tempfile::tempdir().expect("a directory");
        let state = state_dir.path().join("anvil.json");
        let state_arg = state.to_string_lossy().into_owned();
        let app = spawn_app_with(db, |config| use_chain(config, &url, 1)).await;
        // no chain yet: writes go on, batches wait, the health check says why
        let mut versions = write(&app, 5).await;
        until(
            "sealed batches waiting and the failure shown",
            None,
            || async {
                let health = anchoring_health(&app).await;
                health["anchoring"]["status"] == "warn"
                    && health["anchoring"]["lastError"]
                        .as_str()
                        .is_some_and(|e| e.contains("127.0.0.1"))
                    && health["backlog"]["sealedBatchesAwaitingSubmission"].as_i64() >= Some(2)
            },
        )
        .await;
        assert_eq!(status_of(&app, &versions[4]).await, "pending");
        // the chain comes: the registry is deployed, the backlog goes out in order
        let mut anvil = Anvil::start(port, &["--state", &state_arg]);
        until("the backlog anchored", None, || async {
            status_of(&app, versions.last().expect("versions")).await == "anchored"
        })
        .await;
        // the chain goes away (its state saved), writes go on
        anvil.stop();
        versions.extend(write(&app, 4).await);
        until("the outage noticed", None, || async {
            anchoring_health(&app).await["anchoring"]["status"] == "warn"
        })
        .await;
        assert_eq!(
            status_of(&app, versions.last().expect("versions")).await,
            "pending"
        );
        // and comes back
        let anvil = Anvil::start(port, &["--state", &state_arg]);
        until("the new backlog anchored", None, || {
            all_anchored(&app, &versions)
        })
        .await;
        check_against_chain(&app, &anvil.url, &versions).await;
        assert_eq!(anchoring_health(&app).await["anchoring"]["status"], "pass");
    }
);

on_both!(
    a_reorg_that_drops_an_anchor_anchors_it_again,
    |db| async move {
        let anvil = Anvil::start(0, &[]);
        let app = spawn_app_with(db, |config| use_chain(config, &anvil.url, 3)).await;
        until("the registry deployed", None, || async {
            anchoring_health(&app).await["anchoring"]["registry"].is_string()
        })
        .await;
        let before = rpc(&anvil.url, "evm_snapshot", json!([])).await;
        let versions = write(&app, 2).await;
        until("the batch mined", None, || async {
            status_of(&app, &versions[0]).await == "submitted"
        })
        .await;
        let first = anchor_part(&app, &versions[0]).await.expect("anchored");
        // the chain goes back to before the anchor: its block is gone
        assert_eq!(rpc(&anvil.url, "evm_revert", json!([before])).await, true);
        until("anchored again and confirmed", Some(&anvil.url), || async {
            status_of(&app, &versions[0]).await == "anchored"
                && status_of(&app, &versions[1]).await == "anchored"
        })
        .await;
        let again = anchor_part(&app, &versions[0]).await.expect("anchored");
        assert_ne!(
            again["blockHash"], first["blockHash"],
            "the proof names the new block"
        );
        check_against_chain(&app, &anvil.url, &versions).await;
    }
);

/// A gateway binary on `data_dir` (and `database`, for PostgreSQL), anchoring at `chain`.
fn start_gateway(
    data_dir: &Path,
    database: Option<&str>,
    port: u16,
    chain: &str,
    registry: &str,
) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fhir-gateway"));
    command
        .arg("serve")
        .env("FHIR_GATEWAY_SERVER__PORT", port.to_string())
        .env("FHIR_GATEWAY_AUTH__REQUIRED", "false")
        // anchoring only: no consent registry to follow (tests/api/consent.rs has those)
        .env("FHIR_GATEWAY_CONSENT__ENFORCE", "false")
        // the test counts the log's leaves: only the writes it makes (tests/api/audit.rs
        // has the audit trail)
        .env("FHIR_GATEWAY_AUDIT__ENABLED", "false")
        .env("FHIR_GATEWAY_DATABASE__DATA_DIR", data_dir)
        .env("FHIR_GATEWAY_DATABASE__SQLITE_SYNCHRONOUS", "normal")
        .env("FHIR_GATEWAY_LEDGER__INTERVAL_MS", "10")
        .env("FHIR_GATEWAY_LEDGER__BATCH_MAX_SIZE", "2")
        .env("FHIR_GATEWAY_LEDGER__BATCH_MAX_AGE_SECS", "0")
        .env("FHIR_GATEWAY_CHAIN__MODE", "rpc")
        .env("FHIR_GATEWAY_CHAIN__RPC_URL", chain)
        .env("FHIR_GATEWAY_CHAIN__SIGNER_KEY", KEY)
        .env("FHIR_GATEWAY_CHAIN__REGISTRY", registry)
        .env("FHIR_GATEWAY_CHAIN__CONFIRMATIONS", "3")
        .env("FHIR_GATEWAY_CHAIN__POLL_INTERVAL_MS", "20")
        .env("FHIR_GATEWAY_LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(database) = database {
        command.env("FHIR_GATEWAY_DATABASE__URL", database);
    }
    let child = command.spawn().expect("the gateway starts");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the gateway did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn kill(mut gateway: Child) {
    let _ = gateway.kill(); // SIGKILL: no shutdown of any kind
    let _ = gateway.wait();
}

/// The anchoring account's transactions: (mined, sent including unmined).
async fn nonces(url: &str) -> (u64, u64) {
    let address = format!("0x{}", hex::encode(anchorer()));
    let latest = quantity(&rpc(url, "eth_getTransactionCount", json!([address, "latest"])).await);
    let pending = quantity(&rpc(url, "eth_getTransactionCount", json!([address, "pending"])).await);
    (latest, pending)
}

on_both!(
    a_gateway_killed_at_any_step_resumes_without_loss_or_double_anchoring,
    |db| async move {
        let data = tempfile::tempdir().expect("a directory");
        let database = match db {
            Db::Postgres => Some(new_postgres_database().await),
            Db::Sqlite => None,
        };
        let database = database.as_deref();
        let port = free_port();
        let mut settings = Config::default().database;
        settings.data_dir = data.path().to_owned();
        settings.url = database.map(|url| url.to_owned().into());
        let app = TestApp::at(format!("http://127.0.0.1:{port}/fhir"), settings);
        let anvil = Anvil::start(0, &[]);
        // the registry, deployed by the same account (its nonce 0)
        let (_, deployed) = AnchorClient::deploy(
            &anvil.url,
            SignerKey::from_hex(KEY).expect("the test key"),
            ClientConfig {
                confirmations: 1,
                ..ClientConfig::default()
            },
        )
        .await
        .expect("deployed");
        let registry = format!("0x{}", hex::encode(deployed.registry));

        // 1. killed between sealing and sending: the chain is unreachable, batches are sealed
        let nowhere = format!("http://127.0.0.1:{}", free_port());
        let gateway = start_gateway(data.path(), database, port, &nowhere, &registry);
        let mut versions = write(&app, 4).await;
        until("every leaf sealed, nothing sent", None, || async {
            let backlog = anchoring_health(&app).await["backlog"].clone();
            backlog["unsealedLeaves"] == 0
                && backlog["sealedBatchesAwaitingSubmission"].as_i64() >= Some(1)
        })
        .await;
        kill(gateway);

        // 2. killed between sending and mining: anvil stops mining, the first anchor waits
        rpc(&anvil.url, "evm_setAutomine", json!([false])).await;
        let gateway = start_gateway(data.path(), database, port, &anvil.url, &registry);
        until("an anchor transaction sent", None, || async {
            let (latest, pending) = nonces(&anvil.url).await;
            pending > latest
        })
        .await;
        assert_eq!(status_of(&app, &versions[0]).await, "pending");
        kill(gateway);

        // 3. killed between mining and confirmation: everything mined, nothing 3 deep
        rpc(&anvil.url, "evm_setAutomine", json!([true])).await;
        let gateway = start_gateway(data.path(), database, port, &anvil.url, &registry);
        rpc(&anvil.url, "anvil_mine", json!([1])).await; // the transaction left pending
        versions.extend(write(&app, 2).await);
        until(
            "every batch mined, the last one not yet confirmed",
            None,
            || async {
                for version in &versions {
                    if status_of(&app, version).await == "pending" {
                        return false;
                    }
                }
                true
            },
        )
        .await;
        assert_eq!(
            status_of(&app, versions.last().expect("versions")).await,
            "submitted",
            "no block since the last anchor: it is 1 deep of 3"
        );
        kill(gateway);

        // 4. confirmed after a restart
        let gateway = start_gateway(data.path(), database, port, &anvil.url, &registry);
        until("every batch confirmed", Some(&anvil.url), || {
            all_anchored(&app, &versions)
        })
        .await;
        assert_eq!(
            registry_of(&app, &versions[0])
                .await
                .to_string()
                .to_lowercase(),
            registry
        );
        check_against_chain(&app, &anvil.url, &versions).await;
        // exactly one transaction per batch (plus the deployment): none sent twice
        let mut batches = 0;
        for version in &versions {
            let proof = read_proof(&app.get_json(&format!("{version}/$proof")).await.1);
            batches = batches.max(proof.batch.expect("a batch").0 + 1);
        }
        assert_eq!(nonces(&anvil.url).await, (1 + batches, 1 + batches));
        kill(gateway);
    }
);

/// The `fhir-anchor` binary: the one a workspace build put beside this test's executable
/// (`cargo nextest run --workspace` builds it for the anchor crate's own tests), else built
/// from the anchor crate on first use.
fn fhir_anchor() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            let beside = std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.parent()?.join("fhir-anchor")));
            if let Some(binary) = beside.filter(|b| b.is_file()) {
                return binary;
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let output = Command::new(cargo)
                .args(["build", "-p", "anchor", "--bin", "fhir-anchor"])
                .args(["--message-format", "json"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stderr(Stdio::inherit())
                .output()
                .expect("cargo builds fhir-anchor");
            assert!(output.status.success(), "building fhir-anchor failed");
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find_map(|message| message["executable"].as_str().map(PathBuf::from))
                .expect("cargo names the fhir-anchor executable")
        })
        .clone()
}

/// Runs `fhir-anchor verify` on `resource` (None: a deletion) and `proof`; (exit 0, output).
fn verify(dir: &Path, resource: Option<&str>, proof: &str, rpc: &str) -> (bool, String) {
    let proof_file = dir.join("proof.json");
    std::fs::write(&proof_file, proof).expect("writing the proof");
    let mut command = Command::new(fhir_anchor());
    command.arg("verify").arg("--proof").arg(&proof_file).args([
        "--rpc",
        rpc,
        "--confirmations",
        "1",
    ]);
    if let Some(resource) = resource {
        let resource_file = dir.join("resource.json");
        std::fs::write(&resource_file, resource).expect("writing the resource");
        command.arg("--resource").arg(resource_file);
    }
    let output = command.output().expect("fhir-anchor runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "exit 0 or 1: {text}"
    );
    (output.status.success(), text)
}

/// Replaces the first `from` in the `valueString` of the part `name` (searched at any depth).
fn tamper(proof: &Value, name: &str, edit: impl Fn(&str) -> String) -> String {
    fn walk(value: &mut Value, name: &str, edit: &dyn Fn(&str) -> String) -> bool {
        match value {
            Value::Object(map) => {
                if map.get("name").and_then(Value::as_str) == Some(name) {
                    if let Some(Value::String(text)) = map.get_mut("valueString") {
                        *text = edit(text);
                        return true;
                    }
                    if let Some(number) = map.get("valueDecimal").and_then(Value::as_u64) {
                        map.insert(
                            "valueDecimal".into(),
                            json!(edit(&number.to_string()).parse::<u64>().expect("a number")),
                        );
                        return true;
                    }
                }
                map.values_mut().any(|v| walk(v, name, edit))
            }
            Value::Array(items) => items.iter_mut().any(|v| walk(v, name, edit)),
            _ => false,
        }
    }
    let mut proof = proof.clone();
    assert!(walk(&mut proof, name, &edit), "no part {name}");
    proof.to_string()
}

/// One hexadecimal digit changed (one byte of the hash).
fn flip(hex: &str) -> String {
    let mut chars: Vec<char> = hex.chars().collect();
    let last = chars.len() - 1;
    chars[last] = if chars[last] == '0' { '1' } else { '0' };
    chars.into_iter().collect()
}

on_both!(
    an_auditor_verifies_the_gateways_proofs_with_fhir_anchor,
    |db| async move {
        let anvil = Anvil::start(0, &[]);
        let app = spawn_app_with(db, |config| {
            use_chain(config, &anvil.url, 1);
            config.ledger.batch_max_size = 10;
            config.ledger.batch_max_age_secs = 1;
        })
        .await;
        let dir = tempfile::tempdir().expect("a directory");
        let mut versions = write(&app, 3).await;
        let id = versions[2].split('/').nth(1).expect("an id").to_owned();
        let deleted = app
            .send(
                reqwest::Method::DELETE,
                &format!("Patient/{id}"),
                &Value::Null,
            )
            .await;
        assert_eq!(deleted.status(), 200);
        versions.push(format!("Patient/{id}/_history/2"));
        until("every version anchored", None, || {
            all_anchored(&app, &versions)
        })
        .await;
        let (_, proof) = app.get_json(&format!("{}/$proof", versions[0])).await;
        let resource = app
            .get(&versions[0])
            .await
            .text()
            .await
            .expect("the version");
        let (ok, out) = verify(dir.path(), Some(&resource), &proof.to_string(), &anvil.url);
        assert!(ok && out.starts_with("VERIFIED"), "{out}");
        // any formatting of the same version
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<Value>(&resource).expect("JSON"))
                .expect("JSON");
        let (ok, out) = verify(dir.path(), Some(&pretty), &proof.to_string(), &anvil.url);
        assert!(ok, "{out}");
        // the deletion, from its record alone
        let (_, tombstone) = app.get_json(&format!("{}/$proof", versions[3])).await;
        let (ok, out) = verify(dir.path(), None, &tombstone.to_string(), &anvil.url);
        assert!(ok, "{out}");
        // one byte changed anywhere fails, with the reason
        let changed = resource.replacen("Anchor0", "Anchor9", 1);
        assert_ne!(changed, resource);
        let (ok, out) = verify(dir.path(), Some(&changed), &proof.to_string(), &anvil.url);
        assert!(!ok && out.contains("the resource changed"), "{out}");
        let cases = [
            ("salt", "leaf"),
            ("hash", "root"),
            ("root", "root"),
            ("logIndex", "index"),
            ("size", "size"),
        ];
        for (part, reason) in cases {
            let edited = match part {
                "logIndex" | "size" => tamper(&proof, part, |n| {
                    (n.parse::<u64>().expect("a number") + 1).to_string()
                }),
                _ => tamper(&proof, part, flip),
            };
            let (ok, out) = verify(dir.path(), Some(&resource), &edited, &anvil.url);
            assert!(!ok, "{part} changed: {out}");
            assert!(
                out.starts_with("FAILED") && out.to_lowercase().contains(reason),
                "{part} changed: {out}"
            );
        }

        // erasure: the erased versions no longer verify (even with a copy of the content),
        // the others in their batch still do
        let copy = app
            .get(&versions[1])
            .await
            .text()
            .await
            .expect("the version");
        let store = gateway::store::Store::connect(&app.database)
            .await
            .expect("the store");
        let erased_id = versions[1].split('/').nth(1).expect("an id").to_owned();
        gateway::erasure::erase(
            &store,
            None,
            &gateway::model::ResourceType::parse("Patient").expect("a type"),
            &gateway::model::ResourceId::parse(&erased_id).expect("an id"),
            "test",
        )
        .await
        .expect("erased");
        let (_, erased_proof) = app.get_json(&format!("{}/$proof", versions[1])).await;
        let (ok, out) = verify(
            dir.path(),
            Some(&copy),
            &erased_proof.to_string(),
            &anvil.url,
        );
        assert!(!ok && out.contains("erased"), "{out}");
        for version in [&versions[0], &versions[3]] {
            let (_, proof) = app.get_json(&format!("{version}/$proof")).await;
            let resource = if version == &versions[3] {
                None
            } else {
                Some(app.get(version).await.text().await.expect("the version"))
            };
            let (ok, out) = verify(
                dir.path(),
                resource.as_deref(),
                &proof.to_string(),
                &anvil.url,
            );
            assert!(ok, "{version} after the erasure of another: {out}");
        }
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_database_anchor_through_one_leader() {
    let anvil = Anvil::start(0, &[]);
    let database = new_postgres_database().await;
    let replica = |database: String| {
        let url = anvil.url.clone();
        move |config: &mut Config| {
            use_chain(config, &url, 1);
            config.database.url = Some(database.into());
        }
    };
    let first = spawn_app_with(Db::Postgres, replica(database.clone())).await;
    let second = spawn_app_with(Db::Postgres, replica(database)).await;
    let mut versions = Vec::new();
    for _ in 0..3 {
        versions.extend(write(&first, 2).await);
        versions.extend(write(&second, 2).await);
    }
    until("every version anchored", None, || {
        all_anchored(&first, &versions)
    })
    .await;
    check_against_chain(&second, &anvil.url, &versions).await;
    let leading = [
        anchoring_health(&first).await["anchoring"]["leading"].clone(),
        anchoring_health(&second).await["anchoring"]["leading"].clone(),
    ];
    assert!(
        leading == [json!(true), json!(false)] || leading == [json!(false), json!(true)],
        "exactly one replica leads: {leading:?}"
    );
    // one deployment and one transaction per batch: nothing sent twice, nothing reverted
    let mut batches = 0;
    for version in &versions {
        let proof = read_proof(&first.get_json(&format!("{version}/$proof")).await.1);
        batches = batches.max(proof.batch.expect("a batch").0 + 1);
    }
    assert_eq!(nonces(&anvil.url).await, (1 + batches, 1 + batches));
}
