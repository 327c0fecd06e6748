//! The anchored log in the gateway: every write's leaf, contiguous indexes in commit order,
//! sealed batches and `$proof`, checked as an auditor would (with the anchor crate only).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anchor::{
    Batch, ContentHash, InclusionProof, Leaf, LeafHash, NodeHash, Salt, TreeHead, content_hash,
    verify_inclusion,
};
use json_syntax::Parse as _;
use serde_json::{Value, json};

use crate::helpers::{Db, TestApp, spawn_app_with};
use crate::on_both;

/// An app whose sequencer runs every 10 ms and seals batches of at most `max_size` leaves
/// after `max_age_secs`.
pub(crate) async fn app(db: Db, max_size: u64, max_age_secs: u64) -> TestApp {
    spawn_app_with(db, |config| {
        config.ledger.interval_ms = 10;
        config.ledger.batch_max_size = max_size;
        config.ledger.batch_max_age_secs = max_age_secs;
    })
    .await
}

/// A `$proof` Parameters, read.
#[derive(Debug)]
pub(crate) struct Proof {
    pub status: String,
    pub deletion: Option<String>,
    /// When the version was erased (`erased`); then there is no content hash and no salt.
    pub erased: Option<String>,
    pub content_hash: Option<ContentHash>,
    pub salt: Option<Salt>,
    pub leaf_hash: LeafHash,
    pub log_index: Option<u64>,
    /// number, first index, size, root
    pub batch: Option<(u64, u64, u64, NodeHash)>,
    pub path: Option<InclusionProof>,
    pub anchored: bool,
}

pub(crate) fn part<'a>(parameters: &'a [Value], name: &str) -> Option<&'a Value> {
    parameters.iter().find(|p| p["name"] == name)
}

pub(crate) fn read_proof(body: &Value) -> Proof {
    assert_eq!(body["resourceType"], "Parameters", "{body}");
    let parameters = body["parameter"].as_array().expect("parameter");
    let string = |p: &[Value], name: &str| {
        part(p, name).map(|v| v["valueString"].as_str().expect("valueString").to_owned())
    };
    let number = |p: &[Value], name: &str| {
        part(p, name).map(|v| v["valueDecimal"].as_u64().expect("valueDecimal"))
    };
    let batch = part(parameters, "batch").map(|b| {
        let p = b["part"].as_array().expect("batch parts");
        (
            number(p, "number").expect("number"),
            number(p, "firstIndex").expect("firstIndex"),
            number(p, "size").expect("size"),
            NodeHash::from_hex(&string(p, "root").expect("root")).expect("root hex"),
        )
    });
    let path = part(parameters, "inclusionPath").map(|b| {
        let p = b["part"].as_array().expect("path parts");
        InclusionProof {
            index: number(p, "leafIndex").expect("leafIndex"),
            tree_size: number(p, "treeSize").expect("treeSize"),
            path: p
                .iter()
                .filter(|h| h["name"] == "hash")
                .map(|h| {
                    NodeHash::from_hex(h["valueString"].as_str().expect("as the test set up"))
                        .expect("as the test set up")
                })
                .collect(),
        }
    });
    Proof {
        status: part(parameters, "status").expect("status")["valueCode"]
            .as_str()
            .expect("as the test set up")
            .to_owned(),
        deletion: string(parameters, "deletion"),
        erased: part(parameters, "erased")
            .map(|v| v["valueInstant"].as_str().expect("valueInstant").to_owned()),
        content_hash: string(parameters, "contentHash")
            .map(|hex| ContentHash::from_hex(&hex).expect("contentHash hex")),
        salt: string(parameters, "salt").map(|hex| Salt::from_hex(&hex).expect("salt hex")),
        leaf_hash: LeafHash::from_hex(&string(parameters, "leafHash").expect("as the test set up"))
            .expect("as the test set up"),
        log_index: number(parameters, "logIndex"),
        batch,
        path,
        anchored: part(parameters, "anchor").is_some(),
    }
}

pub(crate) async fn proof_of(app: &TestApp, version_path: &str) -> Proof {
    let (status, body) = app.get_json(&format!("{version_path}/$proof")).await;
    assert_eq!(status, 200, "{version_path}/$proof: {body}");
    read_proof(&body)
}

/// The proof of a version once `ready` says it is far enough along (10 s at most).
pub(crate) async fn proof_when(
    app: &TestApp,
    version_path: &str,
    ready: impl Fn(&Proof) -> bool,
) -> Proof {
    let started = Instant::now();
    loop {
        let proof = proof_of(app, version_path).await;
        if ready(&proof) {
            return proof;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{version_path} did not get there: {proof:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What an auditor checks: the version as served (or the deletion record) hashes to the
/// proof's content hash, salt and content hash give the leaf hash, and, once sealed, the
/// path leads from the leaf to the batch root.
pub(crate) async fn check_as_auditor(app: &TestApp, version_path: &str, proof: &Proof) {
    let served = match &proof.deletion {
        Some(record) => record.clone(),
        None => {
            let response = app.get(version_path).await;
            assert_eq!(response.status(), 200, "{version_path}");
            response.text().await.expect("as the test set up")
        }
    };
    // any formatting of the same JSON hashes the same
    let reformatted = serde_json::to_string_pretty(
        &serde_json::from_str::<Value>(&served).expect("as the test set up"),
    )
    .expect("as the test set up");
    let (value, _) = json_syntax::Value::parse_str(&reformatted).expect("as the test set up");
    let proof_content_hash = proof.content_hash.expect("a content hash (not erased)");
    assert_eq!(
        content_hash(&value).expect("as the test set up"),
        proof_content_hash,
        "{version_path}"
    );
    let leaf = Leaf::new(
        proof.salt.clone().expect("a salt (not erased)"),
        proof_content_hash,
    );
    assert_eq!(leaf.hash(), proof.leaf_hash, "{version_path}");
    if let (Some((_, first, size, root)), Some(path)) = (proof.batch, &proof.path) {
        assert_eq!(
            path.index,
            proof.log_index.expect("as the test set up") - first
        );
        let head = TreeHead {
            tree_size: size,
            root,
        };
        verify_inclusion(&leaf.hash(), path, &head).expect("the inclusion proof verifies");
        // a wrong salt fails
        let forged = Leaf::new(Salt::from_bytes([7; 32]), proof_content_hash);
        assert!(verify_inclusion(&forged.hash(), path, &head).is_err());
    }
}

/// Checks the whole log as seen through the proofs of `versions` (every version written):
/// indexes 0..n, each once; every batch's root is the RFC 9162 root of its leaves; every
/// proof verifies. Returns each version's log index.
async fn check_log(app: &TestApp, versions: &[String]) -> HashMap<String, u64> {
    let mut indexes = HashMap::new();
    let mut leaves: HashMap<u64, LeafHash> = HashMap::new();
    let mut batches = HashMap::new();
    for version in versions {
        let proof = proof_when(app, version, |p| p.batch.is_some()).await;
        assert_eq!(proof.status, "pending", "no chain yet");
        assert!(!proof.anchored);
        check_as_auditor(app, version, &proof).await;
        let index = proof.log_index.expect("as the test set up");
        assert!(
            leaves.insert(index, proof.leaf_hash).is_none(),
            "index {index} twice"
        );
        indexes.insert(version.clone(), index);
        let (number, first, size, root) = proof.batch.expect("as the test set up");
        batches.insert(number, (first, size, root));
    }
    let mut sorted: Vec<u64> = leaves.keys().copied().collect();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..versions.len() as u64).collect::<Vec<_>>(),
        "contiguous from 0"
    );
    let mut next = 0;
    for number in 0..batches.len() as u64 {
        let (first, size, root) = batches[&number];
        assert_eq!(first, next, "batch {number} continues the log");
        let hashes: Vec<LeafHash> = (first..first + size).map(|i| leaves[&i]).collect();
        assert_eq!(
            Batch::new(&hashes).expect("as the test set up").root(),
            root,
            "batch {number}"
        );
        next = first + size;
    }
    indexes
}

pub(crate) fn version_path(body: &Value) -> String {
    format!(
        "{}/{}/_history/{}",
        body["resourceType"].as_str().expect("as the test set up"),
        body["id"].as_str().expect("as the test set up"),
        body["meta"]["versionId"]
            .as_str()
            .expect("as the test set up")
    )
}

on_both!(every_write_gets_exactly_one_leaf, |db| async move {
    let app = app(db, 3, 0).await;
    let mut versions = Vec::new();
    let (status, patient) = app
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "active": true, "multipleBirthInteger": 2}),
        )
        .await;
    assert_eq!(status, 201);
    versions.push(version_path(&patient));
    let id = patient["id"]
        .as_str()
        .expect("as the test set up")
        .to_owned();
    let (status, updated) = app
        .put(
            &format!("Patient/{id}"),
            &json!({"resourceType": "Patient", "id": id, "active": false}),
        )
        .await;
    assert_eq!(status, 200);
    versions.push(version_path(&updated));
    let deleted = app
        .send(
            reqwest::Method::DELETE,
            &format!("Patient/{id}"),
            &Value::Null,
        )
        .await;
    assert_eq!(deleted.status(), 200);
    versions.push(format!("Patient/{id}/_history/3"));
    let (status, bundle) = app
        .post(
            "",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": {"resourceType": "Observation", "status": "final",
                    "code": {"text": "weight"}, "valueQuantity": {"value": 72.50}},
                 "request": {"method": "POST", "url": "Observation"}},
                {"resource": {"resourceType": "Organization", "name": "Clinic"},
                 "request": {"method": "POST", "url": "Organization"}},
                {"resource": {"resourceType": "Patient", "id": "tx1", "active": true},
                 "request": {"method": "PUT", "url": "Patient/tx1"}},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{bundle}");
    for entry in bundle["entry"].as_array().expect("as the test set up") {
        let location = entry["response"]["location"]
            .as_str()
            .expect("as the test set up");
        versions.push(
            location
                .trim_start_matches(&format!("{}/", app.base))
                .to_owned(),
        );
    }
    assert_eq!(versions.len(), 6);

    let indexes = check_log(&app, &versions).await;
    // one resource's versions in version order
    assert!(indexes[&versions[0]] < indexes[&versions[1]]);
    assert!(indexes[&versions[1]] < indexes[&versions[2]]);
    // the deletion's leaf hashes the documented record
    let tombstone = proof_of(&app, &versions[2]).await;
    let record: Value =
        serde_json::from_str(tombstone.deletion.as_deref().expect("as the test set up"))
            .expect("as the test set up");
    assert_eq!(record["deleted"]["resourceType"], "Patient");
    assert_eq!(record["deleted"]["id"], id.as_str());
    assert_eq!(record["deleted"]["versionId"], "3");
    // [base]/[type]/[id]/$proof is the current version's
    let current = proof_of(&app, &format!("Patient/{id}")).await;
    assert_eq!(current.leaf_hash, tombstone.leaf_hash);
    // 3 leaves per batch at most: 6 leaves make at least 2 batches
    assert!(current.batch.expect("as the test set up").2 <= 3);
    // unknown versions have no proof
    let (status, outcome) = app
        .get_json(&format!("Patient/{id}/_history/9/$proof"))
        .await;
    assert_eq!(
        (status, outcome["resourceType"].as_str()),
        (404, Some("OperationOutcome"))
    );
});

on_both!(a_proof_is_pending_until_sealed, |db| async move {
    // batches of 2 that never age: the first leaf waits for a second
    let app = app(db, 2, 3600).await;
    let (_, first) = app
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "active": true}),
        )
        .await;
    let first = version_path(&first);
    let proof = proof_when(&app, &first, |p| p.log_index.is_some()).await;
    assert_eq!(proof.status, "pending");
    assert_eq!(proof.log_index, Some(0));
    assert!(proof.batch.is_none() && proof.path.is_none() && !proof.anchored);
    check_as_auditor(&app, &first, &proof).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        proof_of(&app, &first).await.batch.is_none(),
        "not sealed alone"
    );

    let (_, second) = app
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "active": false}),
        )
        .await;
    let second = version_path(&second);
    let sealed = proof_when(&app, &first, |p| p.batch.is_some()).await;
    assert_eq!(sealed.batch.map(|b| (b.0, b.1, b.2)), Some((0, 0, 2)));
    assert_eq!(sealed.leaf_hash, proof.leaf_hash, "sealing keeps the leaf");
    check_as_auditor(&app, &first, &sealed).await;
    let other = proof_when(&app, &second, |p| p.batch.is_some()).await;
    assert_eq!(other.batch, sealed.batch);
    check_as_auditor(&app, &second, &other).await;

    let (_, ready) = app.get_json("../health/ready").await;
    assert_eq!(
        ready["checks"]["log:backlog"][0]["unsealedLeaves"], 0,
        "{ready}"
    );
    assert_eq!(
        ready["checks"]["log:backlog"][0]["sealedBatchesAwaitingSubmission"],
        1
    );
    assert!(ready["checks"]["log:backlog"][0]["oldestSealedBatchAgeSecs"].is_u64());
});

on_both!(
    concurrent_writers_get_contiguous_indexes_in_commit_order,
    |db| async move {
        let app = std::sync::Arc::new(app(db, 7, 0).await);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for writer in 0..6 {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let id = format!("w{writer}");
            for round in 0..8 {
                let begin = started.elapsed();
                let (status, body) = app
                    .put(
                        &format!("Patient/{id}"),
                        &json!({"resourceType": "Patient", "id": id, "birthDate": format!("2000-01-{:02}", round + 1)}),
                    )
                    .await;
                assert!(status == 200 || status == 201, "{body}");
                done.push((version_path(&body), begin, started.elapsed()));
            }
            done
        }));
        }
        let mut writes = Vec::new();
        for task in tasks {
            writes.extend(task.await.expect("as the test set up"));
        }
        let versions: Vec<String> = writes.iter().map(|(v, _, _)| v.clone()).collect();
        let indexes = check_log(&app, &versions).await;
        // a write acknowledged before another was sent comes first in the log
        for (a, _, a_end) in &writes {
            for (b, b_begin, _) in &writes {
                if a_end < b_begin {
                    assert!(indexes[a] < indexes[b], "{a} committed before {b} started");
                }
            }
        }
    }
);

on_both!(
    a_version_without_a_content_hash_is_not_stored,
    |db| async move {
        // RFC 8785 has no form for a number beyond a double: no leaf, so no version and no 2xx
        let app = app(db, 10, 3600).await;
        let response = app
        .client
        .post(app.url("Observation"))
        .header("content-type", crate::helpers::FHIR_JSON)
        .body(r#"{"resourceType":"Observation","id":"x","status":"final","code":{"text":"big"},"valueQuantity":{"value":1e400}}"#)
        .send()
        .await
        .expect("request sent");
        let status = response.status().as_u16();
        let outcome: Value = response.json().await.expect("an OperationOutcome");
        assert_eq!(status, 422, "{outcome}");
        assert!(
            crate::helpers::diagnostics(&outcome).contains("RFC 8785"),
            "{outcome}"
        );
        let (status, bundle) = app.get_json("Observation?_summary=count").await;
        assert_eq!((status, bundle["total"].as_u64()), (200, Some(0)));
    }
);

/// Versions stored before the anchored log existed (simulated by removing their leaves) get
/// leaves when the gateway starts, and their proofs verify once sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_without_leaves_get_them_at_start_up() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data_dir = dir.path().to_path_buf();
    // the first gateway's sequencer runs once at start, then not for an hour
    let first = spawn_app_with(Db::Sqlite, |config| {
        config.database.data_dir = data_dir.clone();
        config.ledger.interval_ms = 3_600_000;
    })
    .await;
    let mut versions = Vec::new();
    for family in ["Before", "Earlier"] {
        let (status, body) = first
            .post(
                "Patient",
                &json!({"resourceType": "Patient", "name": [{"family": family}]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        versions.push(version_path(&body));
    }
    let url = format!("sqlite://{}", data_dir.join("gateway.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("the gateway's SQLite file");
    let removed = sqlx::query("DELETE FROM log_leaf")
        .execute(&mut db)
        .await
        .expect("leaves removed");
    assert_eq!(removed.rows_affected(), 2);
    db.close().await.expect("closed");

    let second = spawn_app_with(Db::Sqlite, |config| {
        config.database.data_dir = data_dir.clone();
        config.ledger.interval_ms = 10;
        config.ledger.batch_max_size = 10;
        config.ledger.batch_max_age_secs = 0;
    })
    .await;
    for version in &versions {
        let proof = proof_when(&second, version, |p| p.batch.is_some()).await;
        check_as_auditor(&second, version, &proof).await;
    }
    drop(first);
}
