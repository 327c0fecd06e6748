//! Erasure (crypto-shredding, PRODUCT.md promise 8) through the `fhir-gateway erase` binary
//! and the library function it calls: the record's content and salts leave the database,
//! reads answer 410, search never finds it, its proofs say it was erased, and every other
//! version of its batch still proves its way to the same root.

use std::collections::HashMap;
use std::process::Command;

use anchor::{Batch, LeafHash, TreeHead, verify_inclusion};
use gateway::erasure::{self, Erasure};
use gateway::model::{ResourceId, ResourceType};
use gateway::store::Store;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use sqlx::{AnyConnection, Row};

use crate::helpers::{TestApp, diagnostics};
use crate::log::{Proof, app, check_as_auditor, proof_of, proof_when};
use crate::on_both;

const BINARY: &str = env!("CARGO_BIN_EXE_fhir-gateway");

/// Runs `fhir-gateway erase <resource> --reason <reason>` on the app's database, with
/// `audit.enabled = audit` (an audited erasure adds its AuditEvent's leaf to the log): whether
/// it succeeded, its standard output and its standard error.
async fn erase_with_binary(
    app: &TestApp,
    audit: bool,
    resource: &str,
    reason: &str,
) -> (bool, String, String) {
    let mut command = Command::new(BINARY);
    command
        .args(["erase", resource, "--reason", reason])
        .env_remove("FHIR_GATEWAY_CONFIG")
        .env_remove("FHIR_GATEWAY_DATABASE__URL")
        .env("FHIR_GATEWAY_AUDIT__ENABLED", audit.to_string())
        .env("FHIR_GATEWAY_DATABASE__DATA_DIR", &app.database.data_dir)
        .env("FHIR_GATEWAY_LOG__FILTER", "info");
    if let Some(url) = &app.database.url {
        command.env("FHIR_GATEWAY_DATABASE__URL", url.expose_secret());
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the command was waited for")
        .expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One number from the database.
async fn number(conn: &mut AnyConnection, sql: &str, rkey: i64) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(rkey)
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .try_get(0)
        .expect("a number")
}

/// What the database holds, counted, to show that a command wrote nothing.
async fn totals(conn: &mut AnyConnection) -> Vec<i64> {
    let mut totals = Vec::new();
    for sql in [
        "SELECT COUNT(*) FROM resource",
        "SELECT COUNT(*) FROM resource_version",
        "SELECT COUNT(*) FROM resource_version WHERE body IS NOT NULL",
        "SELECT COUNT(*) FROM resource_version WHERE erased_at IS NOT NULL",
        "SELECT COUNT(*) FROM log_leaf",
        "SELECT COUNT(*) FROM log_leaf WHERE salt IS NOT NULL",
        "SELECT COUNT(*) FROM log_leaf WHERE content_hash IS NOT NULL",
        "SELECT COUNT(*) FROM erasure",
        "SELECT COUNT(*) FROM idx_string",
        "SELECT COUNT(*) FROM idx_word",
    ] {
        let count: i64 = sqlx::query_scalar(sql)
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        totals.push(count);
    }
    totals
}

const INDEX_TABLES: [&str; 8] = [
    "idx_string",
    "idx_token",
    "idx_reference",
    "idx_date",
    "idx_number",
    "idx_quantity",
    "idx_uri",
    "idx_word",
];

fn erasable(active: bool) -> Value {
    json!({
        "resourceType": "Patient",
        "id": "erase-me",
        "text": {"status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Quetzalcoatl</div>"},
        "name": [{"family": "Zyxwvut"}],
        "birthDate": "1970-01-01",
        "active": active,
    })
}

on_both!(
    an_erased_record_is_gone_and_its_batch_still_proves,
    |db| async move {
        // one batch of exactly the 7 versions written below, sealed once they are all there
        let app = app(db, 7, 3600).await;
        let mut versions = Vec::new();
        for active in [true, false] {
            let (status, body) = app.put("Patient/erase-me", &erasable(active)).await;
            assert!(status == 200 || status == 201, "{body}");
        }
        versions.extend(
            ["Patient/erase-me/_history/1", "Patient/erase-me/_history/2"].map(String::from),
        );
        for family in ["Keep", "Kept"] {
            let (status, body) = app
                .put(
                    "Patient/keep",
                    &json!({"resourceType": "Patient", "id": "keep", "name": [{"family": family}]}),
                )
                .await;
            assert!(status == 200 || status == 201, "{body}");
        }
        versions.extend(["Patient/keep/_history/1", "Patient/keep/_history/2"].map(String::from));
        let observation = app
            .create(&json!({"resourceType": "Observation", "status": "final",
                "code": {"text": "weight"}, "subject": {"reference": "Patient/keep"}}))
            .await;
        versions.push(format!("Observation/{observation}/_history/1"));
        let (status, body) = app
            .put(
                "Patient/deleted-first",
                &json!({"resourceType": "Patient", "id": "deleted-first", "active": true}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let deleted = app
            .send(
                reqwest::Method::DELETE,
                "Patient/deleted-first",
                &Value::Null,
            )
            .await;
        assert_eq!(deleted.status(), 200);
        versions.extend(
            [
                "Patient/deleted-first/_history/1",
                "Patient/deleted-first/_history/2",
            ]
            .map(String::from),
        );

        let mut before: HashMap<&str, Proof> = HashMap::new();
        for version in &versions {
            let proof = proof_when(&app, version, |p| p.batch.is_some()).await;
            check_as_auditor(&app, version, &proof).await;
            before.insert(version.as_str(), proof);
        }
        let batch = before[versions[0].as_str()].batch.expect("sealed");
        assert_eq!((batch.0, batch.1, batch.2), (0, 0, 7), "one batch of all 7");
        for query in [
            "Patient?family=Zyxwvut",
            "Patient?_text=Quetzalcoatl",
            "Patient?_content=Zyxwvut",
            "Patient?_id=erase-me",
            "Patient?birthdate=1970-01-01",
        ] {
            assert_eq!(app.search_ids(query).await, ["erase-me"], "{query} before");
        }

        let mut conn = app.database_connection().await;
        let rkey: i64 = sqlx::query_scalar(
            "SELECT rkey FROM resource WHERE resource_type = 'Patient' AND id = 'erase-me'",
        )
        .fetch_one(&mut conn)
        .await
        .expect("the record's key");

        // a resource that does not exist: an error, and nothing written
        let unchanged = totals(&mut conn).await;
        let (ok, out, err) = erase_with_binary(&app, true, "Patient/never-was", "ticket 1").await;
        assert!(!ok, "erasing a missing resource fails: {out}");
        assert!(err.contains("Patient/never-was is not known"), "{err}");
        assert_eq!(totals(&mut conn).await, unchanged);

        // the erasure, through the binary
        let (ok, out, err) = erase_with_binary(
            &app,
            true,
            "Patient/erase-me",
            "request 4711 of the patient",
        )
        .await;
        assert!(ok, "{out}{err}");
        assert_eq!(
            out.trim(),
            "erased Patient/erase-me: 2 version(s); its deletion is version 3"
        );
        assert!(
            !out.contains("4711") && !err.contains("4711"),
            "the reason is never printed: {out}{err}"
        );
        // on record (audited): the operator erased the record of the
        // patient; the reason stays in the erasure table
        let events: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM resource_version WHERE resource_type = 'AuditEvent' \
             AND body IS NOT NULL",
        )
        .fetch_all(&mut conn)
        .await
        .expect("the AuditEvents");
        let erasures: Vec<Value> = events
            .iter()
            .map(|body| serde_json::from_str::<Value>(body).expect("JSON"))
            .filter(|event| event["subtype"][0]["code"] == "erase")
            .collect();
        assert_eq!(erasures.len(), 1, "{events:?}");
        let erasure = &erasures[0];
        assert_eq!(erasure["action"], "D", "{erasure}");
        assert_eq!(
            erasure["subtype"][0]["system"], "urn:fhir-gateway:command",
            "{erasure}"
        );
        let entities: Vec<&str> = erasure["entity"]
            .as_array()
            .expect("entities")
            .iter()
            .filter_map(|e| e["what"]["reference"].as_str())
            .collect();
        assert_eq!(
            entities,
            ["Patient/erase-me", "Patient/erase-me"],
            "{erasure}"
        );
        assert!(!erasure.to_string().contains("4711"), "{erasure}");
        // an already deleted record, through the library function the binary calls
        let store = Store::connect(&app.database).await.expect("the store");
        let patient = ResourceType::parse("Patient").expect("a type");
        let deleted_first = ResourceId::parse("deleted-first").expect("an id");
        assert_eq!(
            erasure::erase(&store, None, &patient, &deleted_first, "ticket 2")
                .await
                .expect("erased"),
            Erasure::Erased {
                versions: 1,
                deletion: None
            }
        );

        // twice is a no-op
        let unchanged = totals(&mut conn).await;
        let (ok, out, err) = erase_with_binary(&app, true, "Patient/erase-me", "again").await;
        assert!(ok, "{err}");
        assert_eq!(
            out.trim(),
            "Patient/erase-me is already erased; nothing changed"
        );
        assert_eq!(
            erasure::erase(&store, None, &patient, &deleted_first, "again")
                .await
                .expect("a no-op"),
            Erasure::AlreadyErased
        );
        assert_eq!(totals(&mut conn).await, unchanged);
        store.close().await;

        // the database: no content, no salt, no content hash, no index rows; the rows stay
        let of_record =
            |what: &str| format!("SELECT COUNT(*) FROM resource_version v {what} AND v.rkey = $1");
        for (sql, expected, what) in [
            (
                of_record("WHERE v.body IS NOT NULL"),
                0,
                "versions with a body",
            ),
            (
                of_record("WHERE v.erased_at IS NOT NULL"),
                2,
                "erased versions",
            ),
            (of_record("WHERE 1 = 1"), 3, "versions kept"),
            (
                of_record(
                    "JOIN log_leaf l ON l.vkey = v.vkey WHERE v.erased_at IS NOT NULL AND (l.salt IS NOT NULL OR l.content_hash IS NOT NULL)",
                ),
                0,
                "erased leaves with a salt or content hash",
            ),
            (
                of_record("JOIN log_leaf l ON l.vkey = v.vkey WHERE 1 = 1"),
                3,
                "leaves kept",
            ),
            (
                of_record(
                    "JOIN log_leaf l ON l.vkey = v.vkey WHERE v.method = 'DELETE' AND l.salt IS NOT NULL",
                ),
                1,
                "the deletion's leaf, salt and all",
            ),
            (
                "SELECT COUNT(*) FROM erasure WHERE rkey = $1 AND versions = 2 \
                 AND reason = 'request 4711 of the patient'"
                    .to_owned(),
                1,
                "the erasure's record",
            ),
        ] {
            assert_eq!(number(&mut conn, &sql, rkey).await, expected, "{what}");
        }
        for table in INDEX_TABLES {
            let sql = format!("SELECT COUNT(*) FROM {table} WHERE rkey = $1");
            assert_eq!(number(&mut conn, &sql, rkey).await, 0, "{table}");
        }

        // reads, history, search
        let (status, outcome) = app.get_json("Patient/erase-me").await;
        assert_eq!(status, 410, "{outcome}");
        for version in [1, 2] {
            let (status, outcome) = app
                .get_json(&format!("Patient/erase-me/_history/{version}"))
                .await;
            assert_eq!(status, 410, "{outcome}");
            assert!(
                diagnostics(&outcome).contains(&format!(
                    "Patient/erase-me/_history/{version} was erased at"
                )),
                "{outcome}"
            );
        }
        let (status, outcome) = app.get_json("Patient/erase-me/_history/3").await;
        assert_eq!(status, 410);
        assert!(diagnostics(&outcome).contains("was deleted"), "{outcome}");
        let (status, history) = app.get_json("Patient/erase-me/_history").await;
        assert_eq!(status, 200, "{history}");
        let entries = history["entry"].as_array().expect("entries");
        let described: Vec<(&str, &str, bool, bool)> = entries
            .iter()
            .map(|e| {
                (
                    e["request"]["method"].as_str().unwrap_or_default(),
                    e["response"]["etag"].as_str().unwrap_or_default(),
                    e.get("resource").is_some(),
                    e["response"]["outcome"]["issue"][0]["diagnostics"]
                        .as_str()
                        .is_some_and(|d| d.contains("was erased at")),
                )
            })
            .collect();
        assert_eq!(
            described,
            [
                ("DELETE", "W/\"3\"", false, false),
                ("PUT", "W/\"2\"", false, true),
                ("PUT", "W/\"1\"", false, true),
            ],
            "{history}"
        );
        for query in [
            "Patient?family=Zyxwvut",
            "Patient?_text=Quetzalcoatl",
            "Patient?_content=Zyxwvut",
            "Patient?_id=erase-me",
            "Patient?birthdate=1970-01-01",
        ] {
            assert!(app.search_ids(query).await.is_empty(), "{query} after");
        }

        // proofs: the erased versions still have their place, and nothing to check content with
        let mut leaves: HashMap<u64, LeafHash> = HashMap::new();
        let (_, first, size, root) = batch;
        let head = TreeHead {
            tree_size: size,
            root,
        };
        for version in &versions {
            let proof = proof_of(&app, version).await;
            let was = &before[version.as_str()];
            assert_eq!(proof.leaf_hash, was.leaf_hash, "{version} keeps its leaf");
            assert_eq!(proof.batch, was.batch, "{version} keeps its batch");
            let path = proof.path.as_ref().expect("a path");
            assert_eq!(path.index, proof.log_index.expect("an index") - first);
            leaves.insert(proof.log_index.expect("an index"), proof.leaf_hash);
            let erased = version.starts_with("Patient/erase-me/")
                || *version == "Patient/deleted-first/_history/1";
            if erased {
                assert!(
                    proof.salt.is_none() && proof.content_hash.is_none(),
                    "{version}: {proof:?}"
                );
                assert!(proof.erased.is_some(), "{version} says it was erased");
                assert!(proof.deletion.is_none());
                // the leaf is still in the tree, but nothing left can recompute it
                verify_inclusion(&proof.leaf_hash, path, &head)
                    .expect("the erased leaf is still where it was");
            } else {
                assert!(proof.erased.is_none() && proof.salt.is_some(), "{version}");
                // recomputes the leaf from the version served and the salt, and walks the path
                // to the batch root
                check_as_auditor(&app, version, &proof).await;
            }
        }
        let hashes: Vec<LeafHash> = (first..first + size).map(|i| leaves[&i]).collect();
        assert_eq!(
            Batch::new(&hashes).expect("a batch").root(),
            root,
            "same root"
        );

        // the erasure's own deletion is in the log like any other
        let deletion = proof_when(&app, "Patient/erase-me/_history/3", |p| {
            p.log_index.is_some()
        })
        .await;
        assert!(deletion.deletion.is_some() && deletion.erased.is_none());
        check_as_auditor(&app, "Patient/erase-me/_history/3", &deletion).await;
        let current = proof_of(&app, "Patient/erase-me").await;
        assert_eq!(current.leaf_hash, deletion.leaf_hash);
    }
);

/// `log_leaf` as stored: vkey, log index, salt, content hash, leaf hash.
type StoredLeafRow = (i64, Option<i64>, Vec<u8>, Vec<u8>, Vec<u8>);

/// Migration 0006 rebuilds SQLite's `log_leaf` (to let an erased leaf lose its content
/// hash): the leaves of a database made before it keep every byte, the unsequenced index
/// comes back, and only an erased leaf may lack its content hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_0006_keeps_the_leaves_of_an_existing_sqlite_database() {
    use sqlx::Connection as _;
    let data = tempfile::tempdir().expect("a temporary directory");
    let before_0006 = tempfile::tempdir().expect("a temporary directory");
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for entry in std::fs::read_dir(&migrations).expect("the SQLite migrations") {
        let path = entry.expect("a migration").path();
        let name = path.file_name().expect("a file name").to_owned();
        if name.to_string_lossy().as_ref() < "0006" {
            std::fs::copy(&path, before_0006.path().join(name)).expect("copied");
        }
    }
    let url = format!(
        "sqlite://{}?mode=rwc",
        data.path().join("gateway.db").display()
    );
    let mut db = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("a new SQLite file");
    sqlx::migrate::Migrator::new(before_0006.path())
        .await
        .expect("migrations 0001 to 0005")
        .run(&mut db)
        .await
        .expect("migrated to 0005");
    sqlx::raw_sql(
        "INSERT INTO resource (rkey, resource_type, id, version_id, last_updated, deleted) \
             VALUES (1, 'Patient', 'p', 2, 1000, 0); \
         INSERT INTO resource_version (vkey, rkey, resource_type, version_id, last_updated, method, body) \
             VALUES (1, 1, 'Patient', 1, 500, 'PUT', '{}'), (2, 1, 'Patient', 2, 1000, 'PUT', '{}'); \
         INSERT INTO log_leaf (vkey, log_index, salt, content_hash, leaf_hash) \
             VALUES (1, 0, x'01', x'02', x'03'), (2, NULL, x'04', x'05', x'06');",
    )
    .execute(&mut db)
    .await
    .expect("a resource with two leaves");
    db.close().await.expect("closed");

    let store = Store::connect(&gateway::config::DatabaseConfig {
        url: None,
        data_dir: data.path().to_path_buf(),
        max_connections: 1,
        sqlite_synchronous: gateway::config::SqliteSynchronous::Normal,
    })
    .await
    .expect("migrated to 0006");
    store.close().await;

    let mut db = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("the migrated file");
    let leaves: Vec<StoredLeafRow> = sqlx::query_as(
        "SELECT vkey, log_index, salt, content_hash, leaf_hash FROM log_leaf ORDER BY vkey",
    )
    .fetch_all(&mut db)
    .await
    .expect("the leaves");
    assert_eq!(
        leaves,
        [
            (1, Some(0), vec![1], vec![2], vec![3]),
            (2, None, vec![4], vec![5], vec![6]),
        ]
    );
    let unsequenced: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'log_leaf' \
         AND sql LIKE '%log_index IS NULL%'",
    )
    .fetch_all(&mut db)
    .await
    .expect("the indexes");
    assert_eq!(unsequenced, ["log_leaf_unsequenced"]);
    let unerased = sqlx::query("UPDATE log_leaf SET content_hash = NULL WHERE vkey = 1")
        .execute(&mut db)
        .await;
    assert!(
        unerased.is_err(),
        "a leaf with a salt must keep its content hash"
    );
    sqlx::query("UPDATE log_leaf SET salt = NULL, content_hash = NULL WHERE vkey = 1")
        .execute(&mut db)
        .await
        .expect("an erased leaf has neither");
}

/// How often `marker` occurs, in any case, in the SQLite files of an app (database and
/// write-ahead log).
fn occurrences_in_files(app: &TestApp, marker: &str) -> usize {
    let marker = marker.to_lowercase().into_bytes();
    ["gateway.db", "gateway.db-wal"]
        .iter()
        .map(|name| app.database.data_dir.join(name))
        .filter(|path| path.exists())
        .map(|path| {
            let bytes = std::fs::read(&path)
                .expect("a readable file")
                .to_ascii_lowercase();
            bytes
                .windows(marker.len())
                .filter(|window| *window == marker.as_slice())
                .count()
        })
        .sum()
}

/// On SQLite the erased content leaves the files too: what the erasure deletes is
/// overwritten with zeros and the write-ahead log is emptied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_erased_content_leaves_the_files() {
    let app = app(crate::helpers::Db::Sqlite, 100, 3600).await;
    app.create(&json!({
        "resourceType": "Patient",
        "text": {"status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Xylophonist</div>"},
        "identifier": [{"system": "urn:example:mrn", "value": "Xylophonist"}],
        "name": [{"family": "Xylophonist"}],
    }))
    .await;
    let id = app.search_ids("Patient?family=Xylophonist").await;
    assert_eq!(id.len(), 1);
    assert!(
        occurrences_in_files(&app, "Xylophonist") > 0,
        "the content is in the files before"
    );

    let (ok, out, err) =
        erase_with_binary(&app, false, &format!("Patient/{}", id[0]), "ticket 3").await;
    assert!(ok, "{out}{err}");
    assert!(
        !err.contains("write-ahead log"),
        "the log was emptied: {err}"
    );
    assert_eq!(occurrences_in_files(&app, "Xylophonist"), 0);
}

/// A version stored before the anchored log (simulated by removing its leaf) and erased
/// before the gateway gave it a leaf never gets one: there is no content left to hash, and
/// hashing its empty body would put a false deletion in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_version_without_a_leaf_never_gets_one() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data_dir = dir.path().to_path_buf();
    let first = crate::helpers::spawn_app_with(crate::helpers::Db::Sqlite, |config| {
        config.database.data_dir = data_dir.clone();
        config.ledger.interval_ms = 3_600_000;
    })
    .await;
    let erased = first
        .create(&json!({"resourceType": "Patient", "active": true}))
        .await;
    let kept = first
        .create(&json!({"resourceType": "Patient", "active": false}))
        .await;
    let mut conn = first.database_connection().await;
    sqlx::query("DELETE FROM log_leaf")
        .execute(&mut conn)
        .await
        .expect("leaves removed");
    let (ok, out, err) =
        erase_with_binary(&first, false, &format!("Patient/{erased}"), "ticket 4").await;
    assert!(ok, "{out}{err}");

    let second = crate::helpers::spawn_app_with(crate::helpers::Db::Sqlite, |config| {
        config.database.data_dir = data_dir.clone();
        config.ledger.interval_ms = 10;
        config.ledger.batch_max_size = 10;
        config.ledger.batch_max_age_secs = 0;
    })
    .await;
    let (status, outcome) = second
        .get_json(&format!("Patient/{erased}/_history/1/$proof"))
        .await;
    assert_eq!(status, 404, "no leaf for the erased version: {outcome}");
    let version = format!("Patient/{kept}/_history/1");
    let proof = proof_when(&second, &version, |p| p.batch.is_some()).await;
    check_as_auditor(&second, &version, &proof).await;
    let deletion = format!("Patient/{erased}/_history/2");
    let proof = proof_when(&second, &deletion, |p| p.batch.is_some()).await;
    check_as_auditor(&second, &deletion, &proof).await;
    drop(first);
}

on_both!(
    a_leaf_erased_before_its_batch_is_sealed_is_sealed_all_the_same,
    |db| async move {
        // batches of 3 that never age: the erased version, the erasure's deletion and one more
        let app = app(db, 3, 3600).await;
        let erased = app
            .create(&json!({"resourceType": "Patient", "active": true}))
            .await;
        let (ok, out, err) =
            erase_with_binary(&app, false, &format!("Patient/{erased}"), "ticket 5").await;
        assert!(ok, "{out}{err}");
        let erased_version = format!("Patient/{erased}/_history/1");
        assert!(
            proof_of(&app, &erased_version).await.batch.is_none(),
            "two leaves do not fill a batch of 3"
        );
        let kept = app
            .create(&json!({"resourceType": "Patient", "active": false}))
            .await;
        let kept_version = format!("Patient/{kept}/_history/1");
        let proof = proof_when(&app, &kept_version, |p| p.batch.is_some()).await;
        check_as_auditor(&app, &kept_version, &proof).await;
        let (_, first, size, root) = proof.batch.expect("sealed");
        assert_eq!((first, size), (0, 3));
        let erased_proof = proof_when(&app, &erased_version, |p| p.batch.is_some()).await;
        assert!(erased_proof.erased.is_some() && erased_proof.salt.is_none());
        verify_inclusion(
            &erased_proof.leaf_hash,
            erased_proof.path.as_ref().expect("a path"),
            &TreeHead {
                tree_size: size,
                root,
            },
        )
        .expect("the erased leaf is in the batch");
    }
);
