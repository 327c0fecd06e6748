//! `fhir-gateway import` (issue 6, Bulk Data import) through the binary, on both backends:
//! valid lines stored with their ids, each version with its log leaf; invalid lines, dangling
//! and conditional references rejected into the error file with their line and outcome (exit
//! status 2); references across files resolved; the same files again change nothing; a new
//! version for an id that exists; and an import killed (SIGKILL) after its first committed
//! batch, run again, ends with every resource exactly once.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use sqlx::{AnyConnection, Row};

use crate::both;
use crate::helpers::TestApp;

const BINARY: &str = env!("CARGO_BIN_EXE_fhir-gateway");

/// The import command on the app's database, with `args` after `import`.
fn import_command(app: &TestApp, args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .arg("import")
        .args(args)
        .arg("--no-progress")
        .env_remove("FHIR_GATEWAY_CONFIG")
        .env_remove("FHIR_GATEWAY_DATABASE__URL")
        .env("FHIR_GATEWAY_DATABASE__DATA_DIR", &app.database.data_dir)
        .env("FHIR_GATEWAY_LOG__FILTER", "warn")
        // counted versions are the imported ones (an_import_is_on_record has the audit trail)
        .env("FHIR_GATEWAY_AUDIT__ENABLED", "false")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = &app.database.url {
        command.env("FHIR_GATEWAY_DATABASE__URL", url.expose_secret());
    }
    command
}

/// Runs an import to its end: exit code, the summary it printed, standard error.
async fn import(app: &TestApp, args: &[&str]) -> (i32, Value, String) {
    let mut command = import_command(app, args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("waited for")
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let summary = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (output.status.code().unwrap_or(-1), summary, stderr)
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("written");
}

async fn count(conn: &mut AnyConnection, sql: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .try_get(0)
        .expect("a number")
}

/// Versions, leaves, and versions without a leaf.
async fn versions_and_leaves(app: &TestApp) -> (i64, i64, i64) {
    let mut conn = app.database_connection().await;
    (
        count(&mut conn, "SELECT COUNT(*) FROM resource_version").await,
        count(&mut conn, "SELECT COUNT(*) FROM log_leaf").await,
        count(
            &mut conn,
            "SELECT COUNT(*) FROM resource_version v WHERE NOT EXISTS \
             (SELECT 1 FROM log_leaf l WHERE l.vkey = v.vkey)",
        )
        .await,
    )
}

fn patient(id: &str, family: &str) -> String {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": family}], "gender": "female"})
        .to_string()
}

fn observation(id: &str, subject: &str) -> String {
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
           "subject": {"reference": subject},
           "valueQuantity": {"value": 6.5, "unit": "%"}})
    .to_string()
    // the decimal as a sender writes it (serde_json would print 6.5)
    .replace("6.5", "6.50")
}

/// The rejections of an error file: (file name, line) → diagnostics.
fn rejections(path: &Path) -> Vec<(String, u64, String)> {
    std::fs::read_to_string(path)
        .expect("the error file")
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).expect("an NDJSON line");
            assert_eq!(
                record["outcome"]["resourceType"], "OperationOutcome",
                "{record}"
            );
            let file = Path::new(record["file"].as_str().expect("file"))
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            (
                file,
                record["line"].as_u64().expect("line"),
                record["outcome"]["issue"].to_string(),
            )
        })
        .collect()
}

both!(
    import_stores_valid_lines_and_rejects_the_others,
    |app: TestApp| async move {
        // a resource the store already holds, referred to by the import
        let (status, _) = app
            .put(
                "Organization/clinic",
                &json!({"resourceType": "Organization", "id": "clinic", "name": "Clinic"}),
            )
            .await;
        assert_eq!(status, 201);
        let dir = tempfile::tempdir().expect("a directory");
        let (observations, patients, errors) = (
            dir.path().join("observations.ndjson"),
            dir.path().join("patients.ndjson"),
            dir.path().join("errors.ndjson"),
        );
        // observations first: their patients are in the next file
        write_lines(
            &observations,
            &[
                observation("o1", "Patient/p1"),
                observation("o2", "Patient/nobody"),
                observation("o3", "Patient/p2"),
                json!({"resourceType": "Observation", "id": "o4", "status": "final",
                       "code": {"text": "x"}, "performer": [{"reference": "Organization/clinic"}]})
                .to_string(),
                json!({"resourceType": "Observation", "id": "o5", "status": "final",
                       "code": {"text": "x"}, "subject": {"reference": "Patient?identifier=urn:x|1"}})
                .to_string(),
            ],
        );
        write_lines(
            &patients,
            &[
                patient("p1", "Ann"),
                String::new(),
                "{not json".to_owned(),
                json!({"resourceType": "Patient", "name": [{"family": "No id"}]}).to_string(),
                json!({"resourceType": "Patient", "id": "p3", "gender": "sometimes"}).to_string(),
                patient("p2", "Bob"),
            ],
        );
        let files = [
            observations.to_str().expect("a path"),
            patients.to_str().expect("a path"),
        ];
        let (before, _, _) = versions_and_leaves(&app).await;
        let args = [
            files[0],
            files[1],
            "--errors",
            errors.to_str().expect("a path"),
        ];
        let (code, summary, stderr) = import(&app, &args).await;
        assert_eq!(
            code, 2,
            "rejections make the exit status 2: {summary} {stderr}"
        );
        assert_eq!(summary["accepted"], 5, "{summary}");
        assert_eq!(summary["rejected"], 5, "{summary}");
        let rejected = rejections(&errors);
        let where_: Vec<(&str, u64)> = rejected.iter().map(|(f, l, _)| (f.as_str(), *l)).collect();
        assert_eq!(
            where_,
            [
                ("observations.ndjson", 2),
                ("observations.ndjson", 5),
                ("patients.ndjson", 3),
                ("patients.ndjson", 4),
                ("patients.ndjson", 5),
            ]
        );
        assert!(rejected[0].2.contains("Patient/nobody"), "{rejected:?}");
        assert!(
            rejected[1].2.contains("conditional reference"),
            "{rejected:?}"
        );
        assert!(rejected[3].2.contains("no id"), "{rejected:?}");
        assert!(rejected[4].2.contains("gender"), "{rejected:?}");

        // stored with their ids, as first versions, each with its leaf
        for (path, version) in [
            ("Patient/p1", "1"),
            ("Patient/p2", "1"),
            ("Observation/o1", "1"),
        ] {
            let (status, body) = app.get_json(path).await;
            assert_eq!(status, 200, "{path}: {body}");
            assert_eq!(body["meta"]["versionId"], version, "{path}");
        }
        let o1 = app
            .get("Observation/o1")
            .await
            .text()
            .await
            .expect("a body");
        assert!(o1.contains("6.50"), "numbers as written: {o1}");
        for path in ["Observation/o2", "Observation/o5", "Patient/p3"] {
            assert_eq!(app.get_json(path).await.0, 404, "{path}");
        }
        assert_eq!(
            app.search_ids("Observation?subject=Patient/p1").await,
            ["o1"]
        );
        let (versions, leaves, without) = versions_and_leaves(&app).await;
        assert_eq!((versions - before, without), (5, 0));
        assert_eq!(leaves, versions);

        // the same files again: nothing is written, the error file is complete again
        let (code, summary, _) = import(&app, &args).await;
        assert_eq!(code, 2, "{summary}");
        assert_eq!(
            (
                summary["accepted"].as_u64(),
                summary["skipped_files"].as_u64()
            ),
            (Some(0), Some(2)),
            "{summary}"
        );
        assert_eq!(rejections(&errors).len(), 5);
        assert_eq!(versions_and_leaves(&app).await.0, versions);

        // new content for an id that exists: its next version; a dangling reference accepted
        // when asked for
        let update = dir.path().join("update.ndjson");
        write_lines(
            &update,
            &[
                patient("p1", "Ann-Marie"),
                observation("o2", "Patient/nobody"),
            ],
        );
        let errors2 = dir.path().join("errors2.ndjson");
        let (code, summary, stderr) = import(
            &app,
            &[
                update.to_str().expect("a path"),
                "--allow-dangling",
                "--errors",
                errors2.to_str().expect("a path"),
            ],
        )
        .await;
        assert_eq!(code, 0, "{summary} {stderr}");
        assert_eq!(summary["accepted"], 2, "{summary}");
        assert_eq!(std::fs::read_to_string(&errors2).expect("written"), "");
        let (_, p1) = app.get_json("Patient/p1").await;
        assert_eq!(p1["meta"]["versionId"], "2");
        assert_eq!(p1["name"][0]["family"], "Ann-Marie");
        let (versions, leaves, without) = versions_and_leaves(&app).await;
        assert_eq!((leaves, without), (versions, 0));
    }
);

both!(
    existing_resources_are_told_apart_by_type_not_only_by_id,
    |app: TestApp| async move {
        // stored: a Patient and a deleted Organization, both with the id `same`
        for (path, body) in [
            (
                "Patient/same",
                json!({"resourceType": "Patient", "id": "same", "gender": "male"}),
            ),
            (
                "Organization/same",
                json!({"resourceType": "Organization", "id": "same", "name": "Gone"}),
            ),
        ] {
            assert_eq!(app.put(path, &body).await.0, 201, "{path}");
        }
        let deleted = app
            .client
            .delete(app.url("Organization/same"))
            .send()
            .await
            .expect("delete");
        assert!(deleted.status().is_success(), "{}", deleted.status());
        let dir = tempfile::tempdir().expect("a directory");
        let (file, errors) = (
            dir.path().join("same.ndjson"),
            dir.path().join("errors.ndjson"),
        );
        write_lines(
            &file,
            &[
                // new, although a Patient has its id
                observation("same", "Patient/same"),
                // the stored Patient: its next version
                patient("same", "Same"),
                // refers to the deleted Organization (the stored Patient `same` is no target)
                json!({"resourceType": "Observation", "id": "other", "status": "final",
                       "code": {"text": "x"}, "performer": [{"reference": "Organization/same"}]})
                .to_string(),
                // refers to an Encounter nobody has, with an id the import does use
                json!({"resourceType": "Observation", "id": "third", "status": "final",
                       "code": {"text": "x"}, "encounter": {"reference": "Encounter/same"}})
                .to_string(),
            ],
        );
        let (code, summary, stderr) = import(
            &app,
            &[
                file.to_str().expect("a path"),
                "--errors",
                errors.to_str().expect("a path"),
            ],
        )
        .await;
        assert_eq!(code, 2, "{summary} {stderr}");
        assert_eq!(
            (summary["accepted"].as_u64(), summary["rejected"].as_u64()),
            (Some(2), Some(2)),
            "{summary}"
        );
        let rejected = rejections(&errors);
        assert_eq!(rejected.len(), 2, "{rejected:?}");
        assert_eq!(rejected[0].1, 3);
        assert!(rejected[0].2.contains("Organization/same"), "{rejected:?}");
        assert_eq!(rejected[1].1, 4);
        assert!(rejected[1].2.contains("Encounter/same"), "{rejected:?}");
        let (_, observation) = app.get_json("Observation/same").await;
        assert_eq!(observation["meta"]["versionId"], "1", "{observation}");
        let (_, patient) = app.get_json("Patient/same").await;
        assert_eq!(patient["meta"]["versionId"], "2", "{patient}");
        assert_eq!(patient["name"][0]["family"], "Same");
        for path in ["Observation/other", "Observation/third"] {
            assert_eq!(app.get_json(path).await.0, 404, "{path}");
        }
        let (versions, leaves, without) = versions_and_leaves(&app).await;
        assert_eq!((leaves, without), (versions, 0));
    }
);

/// Lines of the resumption test: a Patient, then Observations of it.
const RESUMED_LINES: usize = 12_000;

both!(
    an_import_killed_after_a_commit_resumes_without_duplicates_or_loss,
    |app: TestApp| async move {
        let dir = tempfile::tempdir().expect("a directory");
        let file = dir.path().join("big.ndjson");
        let lines: Vec<String> = std::iter::once(patient("big", "Big"))
            .chain((1..RESUMED_LINES).map(|n| observation(&format!("big-{n}"), "Patient/big")))
            .collect();
        write_lines(&file, &lines);
        let errors = dir.path().join("errors.ndjson");
        let args = [
            file.to_str().expect("a path"),
            "--batch-size",
            "100",
            "--errors",
            errors.to_str().expect("a path"),
        ];
        let mut child = import_command(&app, &args).spawn().expect("started");
        // SIGKILL once the first batch has committed
        let mut conn = app.database_connection().await;
        let started = Instant::now();
        // the last failure to read the progress (before the import made its table, or a
        // busy database), to say why if the import ends unseen
        let mut last_error = None;
        loop {
            let done: Option<i64> =
                match sqlx::query_scalar("SELECT MAX(next_line) FROM import_file")
                    .fetch_one(&mut conn)
                    .await
                {
                    Ok(done) => done,
                    Err(error) => {
                        last_error = Some(error.to_string());
                        None
                    }
                };
            if done.is_some_and(|n| n > 0) {
                break;
            }
            assert!(
                child.try_wait().expect("the child").is_none(),
                "the import ended before it was killed (last progress read: {done:?}, last error: {last_error:?})"
            );
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no batch committed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().expect("killed"); // SIGKILL
        child.wait().expect("reaped");
        let committed: i64 = sqlx::query_scalar("SELECT next_line FROM import_file")
            .fetch_one(&mut conn)
            .await
            .expect("the progress");
        let stored = count(&mut conn, "SELECT COUNT(*) FROM resource").await;
        assert!(
            committed > 0 && (committed as usize) < RESUMED_LINES,
            "killed mid-way: {committed} lines committed"
        );
        // what is stored is exactly what the progress says was committed
        assert_eq!(stored, committed);

        let (code, summary, stderr) = import(&app, &args).await;
        assert_eq!(code, 0, "{summary} {stderr}");
        assert_eq!(
            summary["accepted"].as_u64(),
            Some((RESUMED_LINES as i64 - committed) as u64),
            "{summary}"
        );
        let expected = RESUMED_LINES as i64;
        assert_eq!(
            count(&mut conn, "SELECT COUNT(*) FROM resource").await,
            expected
        );
        assert_eq!(
            count(&mut conn, "SELECT COUNT(DISTINCT id) FROM resource").await,
            expected
        );
        let (versions, leaves, without) = versions_and_leaves(&app).await;
        assert_eq!((versions, leaves, without), (expected, expected, 0));
        assert_eq!(
            count(&mut conn, "SELECT accepted FROM import_file WHERE done = 1").await,
            expected
        );
        let (_, bundle) = app
            .get_json("Observation?subject=Patient/big&_summary=count")
            .await;
        assert_eq!(bundle["total"], expected - 1, "{bundle}");
    }
);

both!(an_import_is_on_record, |app: TestApp| async move {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("records.ndjson");
    write_lines(
        &file,
        &[patient("p1", "Ann"), observation("o1", "Patient/p1")],
    );
    let mut command = import_command(&app, &[file.to_str().expect("a path")]);
    command.env("FHIR_GATEWAY_AUDIT__ENABLED", "true");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("waited for")
        .expect("the binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut conn = app.database_connection().await;
    let bodies: Vec<String> =
        sqlx::query_scalar("SELECT body FROM resource_version WHERE resource_type = 'AuditEvent'")
            .fetch_all(&mut conn)
            .await
            .expect("the records");
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let event: Value = serde_json::from_str(&bodies[0]).expect("JSON");
    assert_eq!(event["type"]["code"], "110107", "{event}");
    assert_eq!(event["subtype"][0]["code"], "import", "{event}");
    assert_eq!(event["action"], "C");
    let mut references: Vec<&str> = event["entity"]
        .as_array()
        .expect("entities")
        .iter()
        .filter_map(|e| e["what"]["reference"].as_str())
        .collect();
    references.sort_unstable();
    assert_eq!(
        references,
        vec![
            "Observation/o1/_history/1",
            "Patient/p1",
            "Patient/p1/_history/1"
        ],
        "{event}"
    );
});

both!(
    imported_values_arrive_exactly_as_written,
    |app: TestApp| async move {
        fn encode(value: &str) -> String {
            form_urlencoded::byte_serialize(value.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        }
        // -0.00125, -0.00225, …: numbers that print as written
        fn quantity(n: usize) -> f64 {
            format!("-0.00{}25", n + 1).parse().expect("a number")
        }
        // enough resources for one batch to take the many-rows path (on PostgreSQL, each
        // column bound as one array literal), with the characters that literal quotes or
        // escapes, in names (idx_string, idx_word), codes (idx_token), references, numbers and
        // dates
        let awkward = [
            r#"quote " and backslash \ end\"#,
            "{braces}, commas, NULL",
            "NULL",
            "Jos\u{e9} M\u{fc}ller \u{674e} \u{1F600}",
            "tab\there, new\nline",
        ];
        let dir = tempfile::tempdir().expect("a directory");
        let (file, errors) = (
            dir.path().join("resources.ndjson"),
            dir.path().join("errors.ndjson"),
        );
        let mut lines = Vec::new();
        for (n, text) in awkward.iter().enumerate() {
            lines.push(
                json!({"resourceType": "Patient", "id": format!("w{n}"), "name": [{"family": text}],
                       "identifier": [{"system": format!("urn:{n}"), "value": text.replace(' ', "_")}],
                       "birthDate": "1970-01-0".to_owned() + &(n + 1).to_string()})
                .to_string(),
            );
            lines.push(
                json!({"resourceType": "Observation", "id": format!("v{n}"), "status": "final",
                       "code": {"coding": [{"code": format!("c\"{n}\\")}], "text": text},
                       "subject": {"reference": format!("Patient/w{n}")},
                       "valueQuantity": {"value": quantity(n), "unit": "mg",
                                         "system": "http://unitsofmeasure.org", "code": "mg"}})
                .to_string(),
            );
        }
        write_lines(&file, &lines);
        let args = [
            file.to_str().expect("a path"),
            "--errors",
            errors.to_str().expect("a path"),
        ];
        let (code, summary, stderr) = import(&app, &args).await;
        assert_eq!(code, 0, "{summary} {stderr}");
        assert_eq!(summary["accepted"], 10, "{summary}");
        for (n, text) in awkward.iter().enumerate() {
            let (status, patient) = app.get_json(&format!("Patient/w{n}")).await;
            assert_eq!(status, 200, "{patient}");
            let written = serde_json::from_str::<Value>(&lines[2 * n]).expect("JSON");
            assert_eq!(patient["name"], written["name"]);
            assert_eq!(patient["identifier"], written["identifier"]);
            // found through each kind of index row the batch wrote
            let mut by_value = vec![
                format!("Patient?birthdate=1970-01-0{}", n + 1),
                format!(
                    "Patient?identifier={}",
                    encode(&format!(
                        "urn:{n}|{}",
                        text.replace(' ', "_")
                            .replace('\\', "\\\\")
                            .replace(',', "\\,")
                            .replace('|', "\\|")
                    ))
                ),
                format!("Observation?code={}", encode(&format!("c\"{n}\\\\"))),
                format!("Observation?subject=Patient/w{n}"),
                format!(
                    "Observation?value-quantity={}",
                    encode(&format!("{}|http://unitsofmeasure.org|mg", quantity(n)))
                ),
            ];
            let exact = text.replace('\\', "\\\\").replace(',', "\\,");
            by_value.push(format!("Patient?family:exact={}", encode(&exact)));
            for query in by_value {
                let ids = app.search_ids(&query).await;
                let expected = if query.starts_with("Patient") {
                    format!("w{n}")
                } else {
                    format!("v{n}")
                };
                assert_eq!(ids, [expected], "{query}");
            }
        }
        // and through the words of the names
        assert_eq!(app.search_ids("Patient?_content=m%C3%BCller").await, ["w3"]);
    }
);
