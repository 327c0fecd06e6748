//! batch and transaction Bundles.

use serde_json::json;

use crate::both;
use crate::helpers::{TestApp, diagnostics};

fn transaction(entries: &[serde_json::Value]) -> serde_json::Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

both!(
    transactions_resolve_references_and_are_atomic,
    |app: TestApp| async move {
        let existing = app.create(&json!({"resourceType": "Practitioner", "identifier": [{"system": "urn:npi", "value": "99"}]})).await;
        let bundle = transaction(&[
            json!({"fullUrl": "urn:uuid:0b9d5a8e-0000-4000-8000-000000000001",
               "resource": {"resourceType": "Patient", "name": [{"family": "Tx"}], "generalPractitioner": [{"reference": "Practitioner?identifier=urn:npi|99"}]},
               "request": {"method": "POST", "url": "Patient"}}),
            json!({"fullUrl": "urn:uuid:0b9d5a8e-0000-4000-8000-000000000002",
               "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                            "subject": {"reference": "urn:uuid:0b9d5a8e-0000-4000-8000-000000000001"}},
               "request": {"method": "POST", "url": "Observation"}}),
            json!({"resource": {"resourceType": "Organization", "id": "org-1", "name": "Clinic"}, "request": {"method": "PUT", "url": "Organization/org-1"}}),
            json!({"request": {"method": "GET", "url": "Organization/org-1"}}),
        ]);
        let (status, response) = app.post("", &bundle).await;
        assert_eq!(status, 200, "{response}");
        assert_eq!(response["type"], "transaction-response");
        let entries = response["entry"].as_array().expect("entries");
        assert_eq!(entries.len(), 4, "one response per entry, in order");
        assert_eq!(entries[0]["response"]["status"], "201 Created");
        assert_eq!(
            entries[3]["response"]["status"], "200 OK",
            "GET runs after the PUT"
        );
        let patient_id = entries[0]["resource"]["id"].as_str().expect("patient id");
        assert_eq!(
            entries[0]["resource"]["generalPractitioner"][0]["reference"],
            format!("Practitioner/{existing}")
        );
        let observation_id = entries[1]["resource"]["id"]
            .as_str()
            .expect("observation id");
        let (_, observation) = app.get_json(&format!("Observation/{observation_id}")).await;
        assert_eq!(
            observation["subject"]["reference"],
            format!("Patient/{patient_id}"),
            "urn:uuid rewritten to the new id"
        );

        // a failing entry rolls everything back
        let before = app.get_json("Patient?_summary=count").await.1["total"].clone();
        let failing = transaction(&[
            json!({"resource": {"resourceType": "Patient", "name": [{"family": "Lost"}]}, "request": {"method": "POST", "url": "Patient"}}),
            json!({"resource": {"resourceType": "Patient", "gender": "robot"}, "request": {"method": "POST", "url": "Patient"}}),
        ]);
        let (status, outcome) = app.post("", &failing).await;
        assert_eq!(status, 400, "{outcome}");
        assert!(
            outcome.to_string().contains("Bundle.entry[1]"),
            "the error names the entry: {outcome}"
        );
        let after = app.get_json("Patient?_summary=count").await.1["total"].clone();
        assert_eq!(before, after, "nothing of a failed transaction is written");
    }
);

both!(
    batches_run_entries_independently,
    |app: TestApp| async move {
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": {"resourceType": "Patient", "name": [{"family": "Kept"}]}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "gender": "robot"}, "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": "Patient?family=kept"}}
        ]});
        let (status, response) = app.post("", &bundle).await;
        assert_eq!(status, 200, "{response}");
        let entries = response["entry"].as_array().expect("entries");
        assert_eq!(entries[0]["response"]["status"], "201 Created");
        assert!(
            entries[1]["response"]["status"]
                .as_str()
                .unwrap_or("")
                .starts_with("400")
        );
        assert!(diagnostics(&entries[1]["response"]["outcome"]).contains("gender"));
        assert_eq!(entries[2]["resource"]["total"], 1);

        let (status, outcome) = app
            .post("", &json!({"resourceType": "Bundle", "type": "collection"}))
            .await;
        assert_eq!(status, 400, "{outcome}");
    }
);

/// A Synthea patient bundle (from ../shared, where it exists) loads in one request with
/// every reference pointing at a stored resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthea_bundle_loads_with_references_rewritten() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/synthea-r4");
    let Some(file) = std::fs::read_dir(&dir)
        .ok()
        .and_then(|mut d| d.next())
        .and_then(Result::ok)
    else {
        eprintln!(
            "skipped: {} is not present (it exists on development and CI machines)",
            dir.display()
        );
        return;
    };
    for db in [crate::helpers::Db::Postgres, crate::helpers::Db::Sqlite] {
        let app = crate::helpers::spawn_app(db).await;
        let text = std::fs::read_to_string(file.path()).expect("bundle");
        let bundle: serde_json::Value = serde_json::from_str(&text).expect("json");
        let (status, response) = app.post("", &bundle).await;
        assert_eq!(status, 200, "{:?}: {}", db, diagnostics(&response));
        let entries = response["entry"].as_array().expect("entries");
        assert_eq!(
            entries.len(),
            bundle["entry"].as_array().map(Vec::len).unwrap_or(0)
        );
        let mut references = 0;
        for entry in entries {
            collect_references(&entry["resource"], &mut |reference: &str| {
                assert!(
                    !reference.starts_with("urn:uuid:"),
                    "unresolved reference {reference}"
                );
                references += 1;
            });
        }
        assert!(references > 100, "a Synthea bundle is full of references");
        let patient = entries[0]["resource"]["id"].as_str().expect("patient id");
        let (_, everything) = app
            .get_json(&format!("Patient/{patient}/Encounter?_summary=count"))
            .await;
        assert!(
            everything["total"].as_i64().unwrap_or(0) > 0,
            "encounters are linked to the patient"
        );
    }
}

fn collect_references(value: &serde_json::Value, found: &mut impl FnMut(&str)) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                if key == "reference"
                    && let Some(reference) = value.as_str()
                {
                    found(reference);
                }
                collect_references(value, found);
            }
        }
        serde_json::Value::Array(items) => items
            .iter()
            .for_each(|item| collect_references(item, found)),
        _ => {}
    }
}
