//! The audit trail (issue 7): every interaction with the FHIR API leaves an AuditEvent,
//! stored before the response goes out, as a resource of the anchored log; clients cannot
//! write, change or delete one.

use serde_json::{Value, json};

use crate::helpers::{Db, TestApp, diagnostics, spawn_app_with};
use crate::log::{check_as_auditor, proof_when};
use crate::on_both;

async fn audited(db: Db) -> TestApp {
    spawn_app_with(db, |config| config.audit.enabled = true).await
}

/// The AuditEvents whose entity is `reference` (`Type/id`), newest first.
async fn events_about(app: &TestApp, reference: &str) -> Vec<Value> {
    let (status, bundle) = app
        .get_json(&format!(
            "AuditEvent?entity={reference}&_sort=-_lastUpdated&_count=100"
        ))
        .await;
    assert_eq!(status, 200, "{bundle}");
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .collect()
}

fn subtype(event: &Value) -> &str {
    event["subtype"][0]["code"].as_str().unwrap_or_default()
}

fn entity_references(event: &Value) -> Vec<String> {
    event["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["what"]["reference"].as_str().map(str::to_owned))
        .collect()
}

async fn patient_and_observation(app: &TestApp) -> (String, String) {
    let patient = app
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Auditee"}]}))
        .await;
    let observation = app
        .create(&json!({
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
            "subject": {"reference": format!("Patient/{patient}")}
        }))
        .await;
    (patient, observation)
}

on_both!(
    reads_writes_and_searches_are_recorded_with_what_they_touched,
    |db: Db| async move {
        // every leaf sealed in a batch of its own at once
        let app = spawn_app_with(db, |config| {
            config.audit.enabled = true;
            config.ledger.interval_ms = 10;
            config.ledger.batch_max_size = 1;
        })
        .await;
        let (patient, observation) = patient_and_observation(&app).await;
        let (status, _) = app.get_json(&format!("Observation/{observation}")).await;
        assert_eq!(status, 200);
        let found = app
            .search_ids(&format!("Observation?subject=Patient/{patient}"))
            .await;
        assert_eq!(found, vec![observation.clone()]);

        let events = events_about(&app, &format!("Observation/{observation}")).await;
        let kinds: Vec<&str> = events.iter().map(subtype).collect();
        // newest first: the search, the read, the create
        assert_eq!(kinds, vec!["search-type", "read", "create"], "{events:?}");
        let (search, read, create) = (&events[0], &events[1], &events[2]);
        assert_eq!(read["action"], "R");
        assert_eq!(create["action"], "C");
        assert_eq!(search["action"], "E");
        for event in &events {
            assert_eq!(event["outcome"], "0", "{event}");
            // the resource by version, and the patient whose record it is
            let references = entity_references(event);
            assert!(
                references.contains(&format!("Observation/{observation}/_history/1")),
                "{event}"
            );
            assert!(
                references.contains(&format!("Patient/{patient}")),
                "{event}"
            );
            assert_eq!(event["agent"][0]["requestor"], true);
        }
        // the search's query, as sent
        let query = search["entity"]
            .as_array()
            .expect("as the test set up")
            .iter()
            .find_map(|e| e["query"].as_str())
            .expect("a query entity");
        use base64::Engine as _;
        let query = base64::engine::general_purpose::STANDARD
            .decode(query)
            .expect("as the test set up");
        assert_eq!(
            String::from_utf8(query).expect("as the test set up"),
            format!("subject=Patient/{patient}")
        );

        // a patient's record: every access to it, found by the patient
        let (status, bundle) = app
            .get_json(&format!("AuditEvent?patient={patient}&_count=100"))
            .await;
        assert_eq!(status, 200);
        let about_patient = bundle["entry"]
            .as_array()
            .expect("as the test set up")
            .len();
        // the Patient's create, the Observation's create, its read and the search
        assert!(about_patient >= 4, "{bundle}");

        // an AuditEvent is a leaf of the log like any resource: its proof verifies
        let id = read["id"].as_str().expect("as the test set up");
        let path = format!("AuditEvent/{id}/_history/1");
        let proof = proof_when(&app, &path, |p| p.path.is_some()).await;
        check_as_auditor(&app, &path, &proof).await;
    }
);

on_both!(refusals_are_recorded_with_why, |db: Db| async move {
    let app = audited(db).await;
    let (status, body) = app.get_json("Observation/not-there").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = app
        .post("Observation", &json!({"resourceType": "Observation"}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, bundle) = app
        .get_json("AuditEvent?outcome=4&_sort=_lastUpdated&_count=100")
        .await;
    assert_eq!(status, 200);
    let events: Vec<&Value> = bundle["entry"]
        .as_array()
        .expect("as the test set up")
        .iter()
        .map(|e| &e["resource"])
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| subtype(e)).collect();
    assert_eq!(kinds, vec!["read", "create"], "{bundle}");
    assert!(
        events[0]["outcomeDesc"]
            .as_str()
            .expect("as the test set up")
            .contains("Observation/not-there"),
        "{}",
        events[0]
    );
    assert!(
        events[1]["outcomeDesc"]
            .as_str()
            .expect("as the test set up")
            .contains("status"),
        "{}",
        events[1]
    );
});

on_both!(clients_cannot_write_audit_events, |db: Db| async move {
    let app = audited(db).await;
    let (patient, _) = patient_and_observation(&app).await;
    let event = events_about(&app, &format!("Patient/{patient}"))
        .await
        .into_iter()
        .next()
        .expect("the create's AuditEvent");
    let id = event["id"].as_str().expect("as the test set up").to_owned();
    let mut changed = event.clone();
    changed["outcome"] = json!("8");
    let (status, body) = app.put(&format!("AuditEvent/{id}"), &changed).await;
    assert_eq!(status, 405, "{body}");
    assert!(diagnostics(&body).contains("AuditEvents are written by the gateway"));
    let response = app
        .client
        .delete(app.url(&format!("AuditEvent/{id}")))
        .send()
        .await
        .expect("as the test set up");
    assert_eq!(response.status(), 405);
    let forged = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2026-01-01T00:00:00Z",
        "agent": [{"requestor": true, "who": {"display": "someone"}}],
        "source": {"observer": {"display": "elsewhere"}}
    });
    let (status, body) = app.post("AuditEvent", &forged).await;
    assert_eq!(status, 405, "{body}");
    // also not through a transaction
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": format!("AuditEvent/{id}")}}
    ]});
    let (status, body) = app.post("", &bundle).await;
    assert_eq!(status, 405, "{body}");
    // the record is as it was, and the refusals are on record too
    let (status, stored) = app.get_json(&format!("AuditEvent/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(stored["meta"]["versionId"], "1");
    assert_eq!(stored["outcome"], event["outcome"]);
    // (the searches that returned it are about it too: only the refusals count here)
    let refused: Vec<String> = events_about(&app, &format!("AuditEvent/{id}"))
        .await
        .iter()
        .filter(|event| event["outcome"] == "4")
        .map(|event| subtype(event).to_owned())
        .collect();
    assert!(
        refused.contains(&"update".to_owned()) && refused.contains(&"delete".to_owned()),
        "{refused:?}"
    );
});
