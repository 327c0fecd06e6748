//! The official R4 examples round-trip: every example the gateway accepts is served back
//! unchanged apart from `id` and `meta.versionId`/`meta.lastUpdated`; the ones it rejects
//! are listed with the reason.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use gateway::config::SqliteSynchronous;
use serde_json::Value;

use crate::helpers::{Db, TestApp, diagnostics, spawn_app_with};

fn examples_dir() -> PathBuf {
    match std::env::var("FHIR_R4_EXAMPLES_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/hl7.fhir.r4.examples/package")
        }
    }
}

fn comparable(mut resource: Value) -> Value {
    if let Some(object) = resource.as_object_mut() {
        object.remove("id");
        if let Some(meta) = object.get_mut("meta").and_then(Value::as_object_mut) {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            if meta.is_empty() {
                object.remove("meta");
            }
        }
    }
    resource
}

/// Creates one example and reads it back: `Err` with the reason when the gateway refuses it;
/// a panic when an accepted example does not come back unchanged.
async fn round_trip(app: &TestApp, file: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(file).expect("example");
    let original: Value = serde_json::from_str(&text).expect("examples are JSON");
    let Some(resource_type) = original["resourceType"].as_str() else {
        return Err(format!("{}: not a resource", file.display()));
    };
    let response = app
        .client
        .post(app.url(resource_type))
        .header("content-type", "application/fhir+json")
        .body(text.clone())
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status != 201 {
        return Err(format!(
            "{}: {status} {}",
            file.file_name().unwrap_or_default().to_string_lossy(),
            diagnostics(&body)
        ));
    }
    let id = body["id"].as_str().expect("id");
    let (status, read) = app.get_json(&format!("{resource_type}/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        comparable(read),
        comparable(original),
        "{} changed in the round trip",
        file.display()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_r4_examples_round_trip() {
    let dir = examples_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run fhir-profiles/scripts/fetch-examples.sh",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(['.', 'p']))
        })
        .collect();
    files.sort();
    // every example is its own commit: on a slow disk, waiting for each one to reach the
    // disk would dominate the test, and durability is not what it checks
    let app = spawn_app_with(Db::Sqlite, |config| {
        config.database.sqlite_synchronous = SqliteSynchronous::Normal;
    })
    .await;
    let app = &app;
    let results: Vec<Result<(), String>> = futures_util::stream::iter(&files)
        .map(|file| async move { round_trip(app, file).await })
        .buffer_unordered(4)
        .collect()
        .await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    let mut rejected: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    rejected.sort();
    println!(
        "official R4 examples: {accepted} of {} round-tripped unchanged; {} rejected:",
        accepted + rejected.len(),
        rejected.len()
    );
    for reason in &rejected {
        println!("  {reason}");
    }
    assert!(files.len() > 5000, "the package holds over 5,000 examples");
    assert!(
        accepted * 100 >= (accepted + rejected.len()) * 95,
        "at least 95% of the official examples are accepted"
    );
}
