//! The `fhir-anchor` binary, run as an auditor runs it, against a real anvil: the proofs are
//! written in the `$proof` layout of README.md ("The anchored log and `$proof`") for batches
//! anchored with [`AnchorClient`], then broken one part at a time.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use alloy::primitives::{Address, B256};
use alloy::providers::Provider as _;
use anchor::chain::{AnchorClient, Anchored, ChainConfig, SignerKey};
use anchor::{Batch, ContentHash, Leaf, LeafHash, Salt, content_hash};
use common::{Anvil, KEY};
use json_syntax::Parse as _;
use serde_json::{Value, json};

const PATIENT: &str = r#"{
  "resourceType": "Patient",
  "id": "p1",
  "meta": {"versionId": "2", "lastUpdated": "2026-01-02T03:04:05.678Z"},
  "name": [{"family": "Smith", "given": ["Ann"]}],
  "birthDate": "1970-01-01"
}"#;

/// The same version as [`PATIENT`], written with other whitespace and member order.
const PATIENT_REFORMATTED: &str = r#"{"birthDate":"1970-01-01","name":[{"given":["Ann"],
    "family":"Smith"}],"meta":{"lastUpdated":"2026-01-02T03:04:05.678Z","versionId":"2"},
    "id":"p1","resourceType":"Patient"}"#;

/// Numbers as written by someone else's client: their canonical forms are `72.5` and `100`.
const OBSERVATION: &str = r#"{"resourceType":"Observation","id":"o1","meta":{"versionId":"1"},
  "status":"final","code":{"text":"weight"},"valueQuantity":{"value":72.50,"unit":"kg"},
  "component":[{"code":{"text":"scale"},"valueQuantity":{"value":1E2}}]}"#;

/// The canonical record of the deletion of Patient/d1 (version 3), as `$proof` returns it.
const DELETION: &str = r#"{"deleted":{"id":"d1","lastUpdated":"2026-01-02T03:04:05.678Z","resourceType":"Patient","versionId":"3"}}"#;

fn key() -> SignerKey {
    SignerKey::from_hex(KEY).expect("the test key")
}

fn fast() -> ChainConfig {
    ChainConfig {
        confirmations: 1,
        poll_interval: Duration::from_millis(10),
        bump_after: Duration::from_secs(3600),
        ..ChainConfig::default()
    }
}

/// Runs `fhir-anchor` with `args`: its exit code and standard output.
fn fhir_anchor(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_fhir-anchor"))
        .args(args)
        .env_remove("FHIR_ANCHOR_RPC")
        .output()
        .expect("fhir-anchor runs");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    (output.status.code().expect("an exit code"), stdout)
}

/// A fresh directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("fhir-anchor")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("a file written");
    path.to_str().expect("a UTF-8 path").to_owned()
}

fn hashed(json: &str) -> ContentHash {
    let (value, _) = json_syntax::Value::parse_str(json).expect("JSON");
    content_hash(&value).expect("a canonical form")
}

fn leaf(json: &str) -> Leaf {
    Leaf::new(Salt::generate().expect("a salt"), hashed(json))
}

/// `count` leaves of other versions.
fn others(count: usize) -> Vec<Leaf> {
    (0..count)
        .map(|i| leaf(&format!(r#"{{"resourceType":"Basic","id":"b{i}"}}"#)))
        .collect()
}

fn batch_of(leaves: &[Leaf]) -> Batch {
    Batch::new(&leaves.iter().map(Leaf::hash).collect::<Vec<LeafHash>>()).expect("a batch")
}

async fn rpc(client: &AnchorClient, method: &'static str, params: Value) -> Value {
    client
        .provider()
        .raw_request(method.into(), params)
        .await
        .unwrap_or_else(|e| panic!("{method}: {e}"))
}

async fn mine(client: &AnchorClient, blocks: u64) {
    rpc(client, "anvil_mine", json!([blocks])).await;
}

/// Where a batch was anchored: the proof's `anchor` part.
#[derive(Debug, Clone)]
struct Anchoring {
    chain_id: u64,
    contract: Address,
    anchorer: Address,
    tx: B256,
    block_number: u64,
    block_hash: B256,
}

impl Anchoring {
    fn of(client: &AnchorClient, anchored: &Anchored) -> Self {
        Self {
            chain_id: client.chain_id(),
            contract: client.registry(),
            anchorer: client.anchorer(),
            tx: anchored.tx_hash,
            block_number: anchored.block_number,
            block_hash: anchored.block_hash,
        }
    }
}

/// The leaf at `leaf_index` of `batch` (number `number`, starting at log index
/// `first_index`), proving `version`.
struct ProofOf<'a> {
    version: &'a str,
    deletion: Option<&'a str>,
    leaf: &'a Leaf,
    number: u64,
    first_index: u64,
    leaf_index: u64,
    batch: &'a Batch,
    anchoring: &'a Anchoring,
}

/// The proof's `Parameters`, exactly in the layout of the README's table.
fn parameters(p: &ProofOf<'_>) -> Value {
    let path = p.batch.proof(p.leaf_index).expect("a path");
    let mut parameter = vec![
        json!({"name": "status", "valueCode": "anchored"}),
        json!({"name": "version", "valueReference": {"reference": p.version}}),
    ];
    if let Some(record) = p.deletion {
        parameter.push(json!({"name": "deletion", "valueString": record}));
    }
    let mut inclusion = vec![
        json!({"name": "leafIndex", "valueDecimal": path.index}),
        json!({"name": "treeSize", "valueDecimal": path.tree_size}),
    ];
    inclusion.extend(
        path.path
            .iter()
            .map(|hash| json!({"name": "hash", "valueString": hash.to_hex()})),
    );
    let a = p.anchoring;
    parameter.extend([
        json!({"name": "contentHash", "valueString": p.leaf.content_hash.to_hex()}),
        json!({"name": "salt", "valueString": p.leaf.salt.to_hex()}),
        json!({"name": "leafHash", "valueString": p.leaf.hash().to_hex()}),
        json!({"name": "logIndex", "valueDecimal": p.first_index + p.leaf_index}),
        json!({"name": "batch", "part": [
            {"name": "number", "valueDecimal": p.number},
            {"name": "firstIndex", "valueDecimal": p.first_index},
            {"name": "size", "valueDecimal": p.batch.size()},
            {"name": "root", "valueString": p.batch.root().to_hex()},
            {"name": "state", "valueCode": "confirmed"},
        ]}),
        json!({"name": "inclusionPath", "part": inclusion}),
        json!({"name": "anchor", "part": [
            {"name": "chainId", "valueDecimal": a.chain_id},
            {"name": "contract", "valueString": format!("0x{}", hex::encode(a.contract))},
            {"name": "anchorer", "valueString": format!("0x{}", hex::encode(a.anchorer))},
            {"name": "transactionHash", "valueString": a.tx.to_string()},
            {"name": "blockNumber", "valueDecimal": a.block_number},
            {"name": "blockHash", "valueString": a.block_hash.to_string()},
        ]}),
    ]);
    json!({"resourceType": "Parameters", "parameter": parameter})
}

/// The parameter `name` of a proof.
fn parameter<'a>(proof: &'a mut Value, name: &str) -> &'a mut Value {
    proof["parameter"]
        .as_array_mut()
        .expect("parameters")
        .iter_mut()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

/// The first part `name` of the parameter `of`.
fn part<'a>(proof: &'a mut Value, of: &str, name: &str) -> &'a mut Value {
    parameter(proof, of)["part"]
        .as_array_mut()
        .expect("parts")
        .iter_mut()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no {of}.{name}"))
}

fn remove(proof: &mut Value, name: &str) {
    proof["parameter"]
        .as_array_mut()
        .expect("parameters")
        .retain(|p| p["name"] != name);
}

/// `hex` with its last digit changed: one byte of the value differs.
fn flipped(hex: &str) -> String {
    let (head, last) = hex.split_at(hex.len() - 1);
    format!("{head}{}", if last == "0" { "1" } else { "0" })
}

/// A case of `verify`: its name, the proof, the resource file, more arguments, and the
/// output line's expected start.
type Case<'a> = (&'a str, Value, Option<&'a str>, Vec<&'a str>, String);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_every_part_against_the_resource_and_the_chain() {
    let anvil = Anvil::start(&[]);
    let (client, _) = AnchorClient::deploy(&anvil.url, key(), fast())
        .await
        .expect("deploy");
    let dir = scratch("verify");

    // Batch 0: three other versions. Batch 1: the Patient (log index 3), the Observation (4),
    // the deletion (5) and two others.
    let batch0 = batch_of(&others(3));
    let anchored0 = client.anchor(0, 3, &batch0.root()).await.expect("batch 0");
    let (patient, observation, deletion) = (leaf(PATIENT), leaf(OBSERVATION), leaf(DELETION));
    let mut leaves1 = vec![patient.clone(), observation.clone(), deletion.clone()];
    leaves1.extend(others(2));
    let batch1 = batch_of(&leaves1);
    let anchored1 = client.anchor(3, 5, &batch1.root()).await.expect("batch 1");
    mine(&client, 2).await;
    let anchoring = Anchoring::of(&client, &anchored1);
    let (anchorer, block) = (client.anchorer(), anchored1.block_number);

    let proof_of = |version, deletion, leaf, leaf_index| {
        parameters(&ProofOf {
            version,
            deletion,
            leaf,
            number: 1,
            first_index: 3,
            leaf_index,
            batch: &batch1,
            anchoring: &anchoring,
        })
    };
    let patient_proof = proof_of("Patient/p1/_history/2", None, &patient, 0);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut proof = patient_proof.clone();
        change(&mut proof);
        proof
    };
    // A tree the gateway could have made up: consistent in itself, never anchored.
    let mut forged_leaves = vec![patient.clone()];
    forged_leaves.extend(others(4));
    let forged_batch = batch_of(&forged_leaves);
    let forged = parameters(&ProofOf {
        version: "Patient/p1/_history/2",
        deletion: None,
        leaf: &patient,
        number: 1,
        first_index: 3,
        leaf_index: 0,
        batch: &forged_batch,
        anchoring: &anchoring,
    });

    let resource = write(&dir, "patient.json", PATIENT);
    let reformatted = write(&dir, "patient-reformatted.json", PATIENT_REFORMATTED);
    let changed = write(
        &dir,
        "patient-changed.json",
        &PATIENT.replace("Smith", "Smyth"),
    );
    let observation_file = write(&dir, "observation.json", OBSERVATION);
    let root = batch1.root();
    let bad_root = flipped(&root.to_hex());
    let bad_block_hash = flipped(&anchored1.block_hash.to_string());
    let content = hashed(PATIENT);
    let other_tx = B256::repeat_byte(0x42);

    let verified = format!(
        "VERIFIED Patient/p1/_history/2 at log index 3 (leaf 0 of 5) in batch 1 of log {anchorer} (root {root}), registry {} on chain 31337, block {block} {}, 3 confirmations",
        anchoring.contract, anchoring.block_hash
    );
    let cases: Vec<Case<'_>> = vec![
        ("as written", patient_proof.clone(), Some(&resource), vec![], verified.clone()),
        ("reformatted", patient_proof.clone(), Some(&reformatted), vec![], verified.clone()),
        (
            "numbers as written",
            proof_of("Observation/o1/_history/1", None, &observation, 1),
            Some(&observation_file),
            vec![],
            "VERIFIED Observation/o1/_history/1 at log index 4 (leaf 1 of 5) in batch 1".into(),
        ),
        (
            "a deletion, no resource",
            proof_of("Patient/d1/_history/3", Some(DELETION), &deletion, 2),
            None,
            vec![],
            "VERIFIED Patient/d1/_history/3 at log index 5 (leaf 2 of 5) in batch 1".into(),
        ),
        (
            "pending",
            with(&|p| parameter(p, "status")["valueCode"] = json!("pending")),
            Some(&resource),
            vec![],
            "FAILED: the proof is not anchored yet: its status is pending".into(),
        ),
        (
            "submitted, no anchor part",
            with(&|p| {
                parameter(p, "status")["valueCode"] = json!("submitted");
                remove(p, "anchor");
            }),
            Some(&resource),
            vec![],
            "FAILED: the proof is not anchored yet: it has no `anchor` part".into(),
        ),
        (
            "no resource for a version",
            patient_proof.clone(),
            None,
            vec![],
            "FAILED: no resource to check: --resource is needed".into(),
        ),
        (
            "another version",
            with(&|p| {
                parameter(p, "version")["valueReference"]["reference"] =
                    json!("Patient/p1/_history/3");
            }),
            Some(&resource),
            vec![],
            "FAILED: the proof is of Patient/p1/_history/3, but the resource is Patient/p1/_history/2".into(),
        ),
        (
            "one byte of the resource changed",
            patient_proof.clone(),
            Some(&changed),
            vec![],
            format!(
                "FAILED: the resource changed: its content hash is {}, the proof's contentHash is {content}",
                hashed(&PATIENT.replace("Smith", "Smyth"))
            ),
        ),
        (
            "salt erased",
            with(&|p| remove(p, "salt")),
            Some(&resource),
            vec![],
            "FAILED: the proof has no salt: the version was erased".into(),
        ),
        (
            "one byte of the salt changed",
            with(&|p| {
                let salt = parameter(p, "salt")["valueString"].as_str().expect("salt").to_owned();
                parameter(p, "salt")["valueString"] = json!(flipped(&salt));
            }),
            Some(&resource),
            vec![],
            format!(
                "FAILED: the salt and the content hash give leaf hash {}",
                Leaf::new(
                    Salt::from_hex(&flipped(&patient.salt.to_hex())).expect("a salt"),
                    content
                )
                .hash()
            ),
        ),
        (
            "one byte of a path element changed",
            with(&|p| {
                let hash = part(p, "inclusionPath", "hash")["valueString"]
                    .as_str()
                    .expect("a hash")
                    .to_owned();
                part(p, "inclusionPath", "hash")["valueString"] = json!(flipped(&hash));
            }),
            Some(&resource),
            vec![],
            "FAILED: the inclusion path leads to root ".into(),
        ),
        (
            "one byte of the root changed",
            with(&|p| part(p, "batch", "root")["valueString"] = json!(bad_root)),
            Some(&resource),
            vec![],
            format!("FAILED: the inclusion path leads to root {root}, not to the batch's root {bad_root}"),
        ),
        (
            "a path element missing",
            with(&|p| {
                let parts = parameter(p, "inclusionPath")["part"].as_array_mut().expect("parts");
                parts.pop();
            }),
            Some(&resource),
            vec![],
            "FAILED: the inclusion path is wrong: the inclusion path has 2 hashes, but leaf 0 of a tree of size 5 needs 3".into(),
        ),
        (
            "another log index",
            with(&|p| parameter(p, "logIndex")["valueDecimal"] = json!(4)),
            Some(&resource),
            vec![],
            "FAILED: logIndex 4 minus the batch's firstIndex 3 is not the path's leafIndex 0".into(),
        ),
        (
            "another batch size",
            with(&|p| part(p, "batch", "size")["valueDecimal"] = json!(6)),
            Some(&resource),
            vec![],
            "FAILED: the path's treeSize 5 is not the batch's size 6".into(),
        ),
        (
            // The path of leaf 0 has the same shape in trees of 5 and 6 leaves: only the
            // registry's record of the size catches this one.
            "another size in the batch and the path",
            with(&|p| {
                part(p, "batch", "size")["valueDecimal"] = json!(6);
                part(p, "inclusionPath", "treeSize")["valueDecimal"] = json!(6);
            }),
            Some(&resource),
            vec![],
            format!("FAILED: the registry's batch 1 of {anchorer} has size 5, but the proof gives 6"),
        ),
        (
            "a tree never anchored",
            forged,
            Some(&resource),
            vec![],
            format!(
                "FAILED: the registry's batch 1 of {anchorer} has root {root}, but the proof gives {}",
                forged_batch.root()
            ),
        ),
        (
            "another chain",
            with(&|p| part(p, "anchor", "chainId")["valueDecimal"] = json!(1)),
            Some(&resource),
            vec![],
            "FAILED: the RPC endpoint serves chain 31337, the proof's anchor is on chain 1".into(),
        ),
        (
            "a registry address without code",
            with(&|p| {
                part(p, "anchor", "contract")["valueString"] =
                    json!(format!("0x{}", hex::encode(anchorer)));
            }),
            Some(&resource),
            vec![],
            format!("FAILED: no contract code at the proof's registry {anchorer}"),
        ),
        (
            "a batch the registry does not have",
            with(&|p| part(p, "batch", "number")["valueDecimal"] = json!(2)),
            Some(&resource),
            vec![],
            format!("FAILED: the registry has no batch 2 in the log of {anchorer}"),
        ),
        (
            "another block number",
            with(&|p| part(p, "anchor", "blockNumber")["valueDecimal"] = json!(block - 1)),
            Some(&resource),
            vec![],
            format!(
                "FAILED: the registry recorded batch 1 in block {block}, the proof's blockNumber is {}",
                block - 1
            ),
        ),
        (
            "another block hash",
            with(&|p| part(p, "anchor", "blockHash")["valueString"] = json!(bad_block_hash)),
            Some(&resource),
            vec![],
            format!(
                "FAILED: block {block} {bad_block_hash} is not canonical: the chain's block {block} is {}",
                anchored1.block_hash
            ),
        ),
        (
            "a transaction the node does not know",
            with(&|p| part(p, "anchor", "transactionHash")["valueString"] = json!(other_tx.to_string())),
            Some(&resource),
            vec![],
            format!("FAILED: the node has no receipt of transaction {other_tx}"),
        ),
        (
            "the transaction of another batch",
            with(&|p| {
                part(p, "anchor", "transactionHash")["valueString"] =
                    json!(anchored0.tx_hash.to_string());
            }),
            Some(&resource),
            vec![],
            format!(
                "FAILED: transaction {} is in block {} {}, not in the proof's block",
                anchored0.tx_hash, anchored0.block_number, anchored0.block_hash
            ),
        ),
        (
            "not deep enough",
            patient_proof.clone(),
            Some(&resource),
            vec!["--confirmations", "4"],
            format!("FAILED: block {block} has 3 confirmations, 4 required"),
        ),
        (
            "deep enough",
            patient_proof.clone(),
            Some(&resource),
            vec!["--confirmations", "3"],
            verified,
        ),
    ];

    for (number, (case, proof, resource, extra, expected)) in cases.into_iter().enumerate() {
        let proof_file = write(
            &dir,
            &format!("proof-{number}.json"),
            &serde_json::to_string_pretty(&proof).expect("JSON"),
        );
        let mut args = vec!["verify", "--proof", &proof_file, "--rpc", &anvil.url];
        if let Some(resource) = resource {
            args.extend(["--resource", resource]);
        }
        args.extend(extra);
        let (code, stdout) = fhir_anchor(&args);
        let expected_code = if expected.starts_with("VERIFIED") {
            0
        } else {
            1
        };
        assert!(
            stdout.starts_with(&expected) && stdout.lines().count() == 1,
            "{case}: expected {expected:?}, got {stdout:?}"
        );
        assert_eq!(code, expected_code, "{case}: {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_fails_once_a_reorg_replaced_the_anchoring_block() {
    let anvil = Anvil::start(&[]);
    let (client, deployed) = AnchorClient::deploy(&anvil.url, key(), fast())
        .await
        .expect("deploy");
    let dir = scratch("reorg");
    let snapshot = rpc(&client, "evm_snapshot", json!([])).await;

    let patient = leaf(PATIENT);
    let mut leaves = vec![patient.clone()];
    leaves.extend(others(1));
    let batch = batch_of(&leaves);
    let anchored = client.anchor(0, 2, &batch.root()).await.expect("batch 0");
    let anchoring = Anchoring::of(&client, &anchored);
    let proof = parameters(&ProofOf {
        version: "Patient/p1/_history/2",
        deletion: None,
        leaf: &patient,
        number: 0,
        first_index: 0,
        leaf_index: 0,
        batch: &batch,
        anchoring: &anchoring,
    });
    let proof_file = write(&dir, "proof.json", &proof.to_string());
    let resource = write(&dir, "patient.json", PATIENT);
    let verify = [
        "verify",
        "--resource",
        &resource,
        "--proof",
        &proof_file,
        "--rpc",
        &anvil.url,
        "--confirmations",
        "1",
    ];
    let (code, stdout) = fhir_anchor(&verify);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.starts_with("VERIFIED Patient/p1/_history/2"),
        "{stdout}"
    );

    // The chain goes back to before the anchor; the same batch is anchored again at the same
    // height, in a block with another timestamp, so another hash.
    let timestamp = client
        .provider()
        .get_block_by_number(anchored.block_number.into())
        .await
        .expect("eth_getBlockByNumber")
        .expect("the anchoring block")
        .header
        .timestamp;
    assert_eq!(
        rpc(&client, "evm_revert", json!([snapshot])).await,
        json!(true)
    );
    rpc(
        &client,
        "evm_setNextBlockTimestamp",
        json!([timestamp + 100]),
    )
    .await;
    let again = AnchorClient::connect(&anvil.url, key(), deployed.registry, fast())
        .await
        .expect("connect")
        .anchor(0, 2, &batch.root())
        .await
        .expect("batch 0 again");
    assert_eq!(again.block_number, anchored.block_number);
    assert_ne!(again.block_hash, anchored.block_hash);

    let (code, stdout) = fhir_anchor(&verify);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(
        stdout.trim_end(),
        format!(
            "FAILED: block {} {} is not canonical: the chain's block {} is {} (a reorg replaced it)",
            anchored.block_number, anchored.block_hash, anchored.block_number, again.block_hash
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_replays_a_log_of_several_batches() {
    let anvil = Anvil::start(&[]);
    let (client, deployed) = AnchorClient::deploy(&anvil.url, key(), fast())
        .await
        .expect("deploy");
    let mut blocks = Vec::new();
    for (first_index, size) in [(0, 3), (3, 2), (5, 4)] {
        let batch = batch_of(&others(size));
        let anchored = client
            .anchor(first_index, size as u64, &batch.root())
            .await
            .expect("a batch");
        blocks.push(anchored.block_number);
        mine(&client, 3).await;
    }
    let registry = deployed.registry.to_string();
    let log = client.anchorer().to_string();
    let audit = |extra: &[&str]| {
        let mut args = vec![
            "audit-log",
            "--rpc",
            &anvil.url,
            "--registry",
            &registry,
            "--log",
            &log,
        ];
        args.extend(extra);
        fhir_anchor(&args)
    };

    // Windows of 2 blocks and of the default size read the same events.
    for window in ["2", "10000"] {
        let (code, stdout) = audit(&["--blocks-per-query", window]);
        assert_eq!(code, 0, "{stdout}");
        assert!(
            stdout
                .contains("batches: 3 replayed from events (batchCount 3), leaves: 9 (logSize 9)"),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "first batch in block {}, last batch in block {}",
                blocks[0], blocks[2]
            )),
            "{stdout}"
        );
        assert_eq!(stdout.lines().last(), Some("OK"), "{stdout}");
    }

    // Up to the block of batch 1: the views as of that block agree.
    let (code, stdout) = audit(&["--to-block", &blocks[1].to_string()]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("batches: 2 replayed from events (batchCount 2), leaves: 5 (logSize 5)"),
        "{stdout}"
    );

    // Starting after batch 0: batch 0 is missing, and every consequence is reported.
    let (code, stdout) = audit(&["--from-block", &(blocks[0] + 1).to_string()]);
    assert_eq!(code, 1, "{stdout}");
    for problem in [
        "FAILED: 4 problem(s)",
        "- batch 1 comes where batch 0 was expected: batches 0 to 0 have no event",
        "- batch 1 starts at log index 3, the batches before it end at 0",
        "- the events make 2 batches, the registry's batchCount is 3",
        "- the events make 6 leaves, the registry's logSize is 9",
    ] {
        assert!(
            stdout.lines().any(|line| line == problem),
            "{problem}: {stdout}"
        );
    }

    // Another account's log is empty; an address without code is no registry.
    let (code, stdout) = fhir_anchor(&[
        "audit-log",
        "--rpc",
        &anvil.url,
        "--registry",
        &registry,
        "--log",
        &Address::repeat_byte(7).to_string(),
    ]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("- the log has no batch"), "{stdout}");
    let (code, stdout) = fhir_anchor(&[
        "audit-log",
        "--rpc",
        &anvil.url,
        "--registry",
        &log,
        "--log",
        &log,
    ]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(&format!("- no contract code at the registry {log}")),
        "{stdout}"
    );
}

#[test]
fn an_unreachable_endpoint_fails_without_printing_its_path() {
    // A port nothing listens on any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port();
    let url = format!("http://127.0.0.1:{port}/v3/SECRET-API-KEY");
    let endpoint = format!("FAILED: cannot read the chain: RPC error from http://127.0.0.1:{port}");

    // A proof that passes every check but the chain's.
    let dir = scratch("unreachable");
    let patient = leaf(PATIENT);
    let batch = batch_of(std::slice::from_ref(&patient));
    let anchoring = Anchoring {
        chain_id: 1,
        contract: Address::repeat_byte(1),
        anchorer: Address::repeat_byte(2),
        tx: B256::repeat_byte(3),
        block_number: 10,
        block_hash: B256::repeat_byte(4),
    };
    let proof = parameters(&ProofOf {
        version: "Patient/p1/_history/2",
        deletion: None,
        leaf: &patient,
        number: 0,
        first_index: 0,
        leaf_index: 0,
        batch: &batch,
        anchoring: &anchoring,
    });
    let proof_file = write(&dir, "proof.json", &proof.to_string());
    let resource = write(&dir, "patient.json", PATIENT);
    let registry = Address::repeat_byte(1).to_string();

    for args in [
        vec![
            "verify",
            "--resource",
            &resource,
            "--proof",
            &proof_file,
            "--rpc",
            &url,
        ],
        vec![
            "audit-log",
            "--rpc",
            &url,
            "--registry",
            &registry,
            "--log",
            &registry,
        ],
    ] {
        let (code, stdout) = fhir_anchor(&args);
        assert_eq!(code, 1, "{stdout}");
        assert!(stdout.starts_with(&endpoint), "{stdout}");
        assert!(
            !stdout.contains("SECRET") && !stdout.contains("/v3"),
            "{stdout}"
        );
    }
}

alloy::sol! {
    function anchor(uint64 firstIndex, uint64 size, bytes32 root) external returns (uint64 batchNumber);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_needs_the_named_transaction_to_succeed_with_the_batch_event() {
    use alloy::sol_types::SolCall as _;

    let anvil = Anvil::start(&[]);
    let (client, _) = AnchorClient::deploy(&anvil.url, key(), fast())
        .await
        .expect("deploy");
    let client = std::sync::Arc::new(client);
    let dir = scratch("receipt");
    let patient = leaf(PATIENT);
    let mut leaves = vec![patient.clone()];
    leaves.extend(others(1));
    let batch = batch_of(&leaves);

    // One block holds three transactions of which only the last anchors the batch: a transfer
    // (no event), and an anchor by another account that reverts (its log is empty, so a batch
    // at log index 5 does not continue it).
    rpc(&client, "evm_setAutomine", json!([false])).await;
    let other_account = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
    let send = |request: Value| {
        let client = std::sync::Arc::clone(&client);
        async move {
            let hash = rpc(&client, "eth_sendTransaction", json!([request])).await;
            hash.as_str()
                .and_then(|hash| hash.parse::<B256>().ok())
                .expect("a transaction hash")
        }
    };
    let transfer = send(json!({"from": other_account, "to": other_account, "value": "0x1"})).await;
    let calldata = anchorCall {
        firstIndex: 5,
        size: 1,
        root: B256::repeat_byte(9),
    }
    .abi_encode();
    let reverting = send(json!({
        "from": other_account,
        "to": client.registry().to_string(),
        "gas": "0x30000",
        "input": format!("0x{}", hex::encode(calldata)),
    }))
    .await;
    let task = tokio::spawn({
        let client = std::sync::Arc::clone(&client);
        let root = batch.root();
        async move { client.anchor(0, 2, &root).await }
    });
    let mut polls = 0;
    while rpc(&client, "txpool_status", json!([])).await["pending"] != json!("0x3") {
        polls += 1;
        assert!(polls < 2000, "timed out waiting for the anchor in the pool");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rpc(&client, "evm_mine", json!([])).await;
    let anchored = task.await.expect("the task").expect("anchored");
    mine(&client, 2).await;
    for tx in [transfer, reverting] {
        let receipt = client
            .provider()
            .get_transaction_receipt(tx)
            .await
            .expect("eth_getTransactionReceipt")
            .expect("mined");
        assert_eq!(receipt.block_hash, Some(anchored.block_hash));
    }

    let anchoring = Anchoring::of(&client, &anchored);
    let resource = write(&dir, "patient.json", PATIENT);
    let anchorer = client.anchorer();
    for (name, tx, expected) in [
        (
            "the anchor",
            anchored.tx_hash,
            "VERIFIED Patient/p1/_history/2 at log index 0 (leaf 0 of 2) in batch 0".to_owned(),
        ),
        (
            "a transfer",
            transfer,
            format!(
                "FAILED: transaction {transfer} carries no BatchAnchored event of the registry for batch 0 of {anchorer} with root {}",
                batch.root()
            ),
        ),
        (
            "a reverted anchor",
            reverting,
            format!("FAILED: transaction {reverting} failed (reverted)"),
        ),
    ] {
        let proof = parameters(&ProofOf {
            version: "Patient/p1/_history/2",
            deletion: None,
            leaf: &patient,
            number: 0,
            first_index: 0,
            leaf_index: 0,
            batch: &batch,
            anchoring: &Anchoring {
                tx,
                ..anchoring.clone()
            },
        });
        let proof_file = write(&dir, &format!("{name}.json"), &proof.to_string());
        let (code, stdout) = fhir_anchor(&[
            "verify",
            "--resource",
            &resource,
            "--proof",
            &proof_file,
            "--rpc",
            &anvil.url,
        ]);
        assert!(stdout.starts_with(&expected), "{name}: {stdout}");
        assert_eq!(code, i32::from(!expected.starts_with("VERIFIED")), "{name}");
    }
}
