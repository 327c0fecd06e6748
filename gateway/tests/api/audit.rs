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

/// Makes every AuditEvent version fail to store (a trigger the test adds), or lets them be.
async fn refuse_audit_records(app: &TestApp, refuse: bool) {
    let mut db = app.database_connection().await;
    let postgres = app.database.url.is_some();
    let statements: Vec<&str> = match (postgres, refuse) {
        (true, true) => vec![
            "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'audit records refused by the test'; END $$",
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON resource_version FOR EACH ROW \
             WHEN (NEW.resource_type = 'AuditEvent') EXECUTE FUNCTION refuse_audit()",
        ],
        (true, false) => vec![
            "DROP TRIGGER refuse_audit ON resource_version",
            "DROP FUNCTION refuse_audit",
        ],
        (false, true) => vec![
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON resource_version \
             WHEN NEW.resource_type = 'AuditEvent' \
             BEGIN SELECT RAISE(ABORT, 'audit records refused by the test'); END",
        ],
        (false, false) => vec!["DROP TRIGGER refuse_audit"],
    };
    for statement in statements {
        sqlx::query(statement)
            .execute(&mut db)
            .await
            .expect("as the test set up");
    }
}

async fn count_of(app: &TestApp, resource_type: &str) -> i64 {
    let mut db = app.database_connection().await;
    sqlx::query_scalar("SELECT COUNT(*) FROM resource WHERE resource_type = $1")
        .bind(resource_type)
        .fetch_one(&mut db)
        .await
        .expect("as the test set up")
}

on_both!(
    a_write_commits_with_its_audit_record_or_not_at_all,
    |db: Db| async move {
        let app = audited(db).await;
        refuse_audit_records(&app, true).await;
        // a create, an update and a transaction whose record cannot be stored: refused, and
        // nothing of them stays
        let (status, body) = app
            .post(
                "Patient",
                &json!({"resourceType": "Patient", "name": [{"family": "Unrecorded"}]}),
            )
            .await;
        assert_eq!(status, 503, "{body}");
        let (status, body) = app
            .put(
                "Patient/fixed-id",
                &json!({"resourceType": "Patient", "id": "fixed-id"}),
            )
            .await;
        assert_eq!(status, 503, "{body}");
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}
        ]});
        let (status, body) = app.post("", &bundle).await;
        assert_eq!(status, 503, "{body}");
        // a batch's entry
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}
        ]});
        let (status, _) = app.post("", &batch).await;
        assert_eq!(status, 503);
        refuse_audit_records(&app, false).await;
        assert_eq!(count_of(&app, "Patient").await, 0);
        assert_eq!(count_of(&app, "AuditEvent").await, 0);

        // once records can be stored: each write has its record, the transaction one for the
        // whole Bundle, the batch one per entry that writes (and one for the batch)
        let created = app
            .create(&json!({"resourceType": "Patient", "name": [{"family": "Recorded"}]}))
            .await;
        let (status, body) = app.post("", &bundle).await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = app.post("", &batch).await;
        assert_eq!(status, 200, "{body}");
        let events = events_about(&app, &format!("Patient/{created}")).await;
        let kinds: Vec<&str> = events.iter().map(subtype).collect();
        assert_eq!(kinds, vec!["create"], "{events:?}");
        let (_, bundle) = app
            .get_json("AuditEvent?subtype=transaction,batch,create&_count=100")
            .await;
        let mut kinds: Vec<String> = bundle["entry"]
            .as_array()
            .expect("as the test set up")
            .iter()
            .map(|e| subtype(&e["resource"]).to_owned())
            .collect();
        kinds.sort();
        assert_eq!(
            kinds,
            vec!["batch", "create", "create", "transaction"],
            "{bundle}"
        );
    }
);

fn ids(bundle: &Value) -> std::collections::BTreeSet<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect()
}

fn by_user<'a>(bundle: &'a Value, user: &str) -> Vec<&'a Value> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(|event| {
            event["agent"].as_array().into_iter().flatten().any(|a| {
                a["who"]["identifier"]["system"] == "urn:fhir-gateway:user"
                    && a["who"]["identifier"]["value"] == user
            })
        })
        .collect()
}

on_both!(
    patients_see_exactly_the_accesses_to_their_record_and_auditors_see_all,
    |db: Db| async move {
        let s = crate::access::secured_adjusted(db, |config| config.audit.enabled = true).await;
        let ayers = s
            .create(json!({"resourceType": "Patient", "name": [{"family": "Ayers"}]}))
            .await;
        let byrne = s
            .create(json!({"resourceType": "Patient", "name": [{"family": "Byrne"}]}))
            .await;
        let observation = s
            .create(json!({
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
                "subject": {"reference": format!("Patient/{ayers}")}
            }))
            .await;
        let doctor = s.token(
            "user/*.rs",
            json!({"sub": "dr-1", "user_kind": "practitioner", "fhirUser": "Practitioner/1", "btg": true}),
        );
        // a doctor reads Ayers' observation, Byrne's record, and Ayers' record breaking the glass
        let (status, _) = s.get(&format!("Observation/{observation}"), &doctor).await;
        assert_eq!(status, 200);
        let (status, _) = s.get(&format!("Patient/{byrne}"), &doctor).await;
        assert_eq!(status, 200);
        let response = s
            .app
            .client
            .get(s.app.url(&format!("Patient/{ayers}")))
            .bearer_auth(&doctor)
            .header("X-Purpose-Of-Use", "ETREAT")
            .send()
            .await
            .expect("as the test set up");
        assert_eq!(response.status(), 200);

        // the audit trail is not the doctor's (nor other staff's) to read, and $everything
        // is the record without it
        let (status, body) = s.get("AuditEvent", &doctor).await;
        assert_eq!(status, 403, "{body}");
        assert!(diagnostics(&body).contains("auditors"), "{body}");
        let clerk = s.token(
            "user/*.rs",
            json!({"sub": "clerk-1", "user_kind": "staff", "fhirUser": "Practitioner/2"}),
        );
        let (status, _) = s.get(&format!("AuditEvent?patient={ayers}"), &clerk).await;
        assert_eq!(status, 403);
        let (status, everything) = s
            .get(&format!("Patient/{ayers}/$everything"), &doctor)
            .await;
        assert_eq!(status, 200, "{everything}");
        assert!(
            everything["entry"]
                .as_array()
                .expect("as the test set up")
                .iter()
                .all(|e| e["resource"]["resourceType"] != "AuditEvent"),
            "{everything}"
        );
        let (status, searched) = s.get("?_type=Patient,AuditEvent", &doctor).await;
        assert_eq!(status, 403, "{searched}");

        // an auditor reads everyone's trail
        let auditor = s.token(
            "user/AuditEvent.rs",
            json!({"sub": "auditor-1", "user_kind": "staff", "fhirUser": "Practitioner/3", "auditor": true}),
        );
        let (status, of_ayers) = s
            .get(&format!("AuditEvent?patient={ayers}&_count=500"), &auditor)
            .await;
        assert_eq!(status, 200, "{of_ayers}");
        let (status, of_byrne) = s
            .get(&format!("AuditEvent?patient={byrne}&_count=500"), &auditor)
            .await;
        assert_eq!(status, 200, "{of_byrne}");
        assert_eq!(by_user(&of_byrne, "dr-1").len(), 1, "{of_byrne}");

        // Ayers reads the accesses to her record: exactly those the auditor saw, and the
        // auditor's own search of them (an access to her record too)
        let ayers_token = s.token(
            "user/*.rs",
            json!({"sub": "ayers", "user_kind": "patient", "fhirUser": format!("Patient/{ayers}")}),
        );
        let (status, own) = s
            .get(
                &format!("AuditEvent?patient={ayers}&_count=500"),
                &ayers_token,
            )
            .await;
        assert_eq!(status, 200, "{own}");
        let (seen, own_ids) = (ids(&of_ayers), ids(&own));
        assert!(own_ids.is_superset(&seen), "{own}");
        let extra: Vec<&String> = own_ids.difference(&seen).collect();
        assert_eq!(extra.len(), 1, "{extra:?}");
        assert_eq!(by_user(&own, "auditor-1").len(), 1, "{own}");
        for entry in own["entry"].as_array().expect("as the test set up") {
            let event = &entry["resource"];
            let references = entity_references(event);
            let agents = event["agent"].to_string();
            assert!(
                references.iter().any(|r| r == &format!("Patient/{ayers}"))
                    || agents.contains(&format!("Patient/{ayers}")),
                "{event}"
            );
        }
        // the doctor's three accesses (the observation, the record breaking the glass,
        // $everything), the one breaking the glass flagged
        let doctors = by_user(&own, "dr-1");
        assert_eq!(doctors.len(), 3, "{own}");
        let flagged: Vec<&&Value> = doctors
            .iter()
            .filter(|event| {
                event["purposeOfEvent"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["coding"][0]["code"] == "BTG")
            })
            .collect();
        assert_eq!(flagged.len(), 1, "{doctors:?}");
        assert!(entity_references(flagged[0]).contains(&format!("Patient/{ayers}/_history/1")));
        // the doctor's read of Byrne's record is not hers to see
        let byrne_read = by_user(&of_byrne, "dr-1")[0]["id"].clone();
        assert!(!own_ids.contains(byrne_read.as_str().expect("an id")));
        let (status, other) = s
            .get(&format!("AuditEvent?patient={byrne}"), &ayers_token)
            .await;
        assert_eq!(status, 200);
        assert!(ids(&other).is_empty(), "{other}");
        let (status, _) = s
            .get(
                &format!("AuditEvent/{}", byrne_read.as_str().unwrap_or_default()),
                &ayers_token,
            )
            .await;
        assert_ne!(status, 200);
    }
);

/// A gateway binary with the audit trail on, no chain, on `data_dir` (and `database`).
fn start_audited_gateway(
    data_dir: &std::path::Path,
    database: Option<&str>,
    port: u16,
) -> std::process::Child {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fhir-gateway"));
    command
        .arg("serve")
        .env("FHIR_GATEWAY_SERVER__PORT", port.to_string())
        .env("FHIR_GATEWAY_AUTH__REQUIRED", "false")
        .env("FHIR_GATEWAY_CONSENT__ENFORCE", "false")
        .env("FHIR_GATEWAY_AUDIT__ENABLED", "true")
        .env("FHIR_GATEWAY_CHAIN__MODE", "off")
        .env("FHIR_GATEWAY_DATABASE__DATA_DIR", data_dir)
        .env("FHIR_GATEWAY_LOG__FILTER", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(database) = database {
        command.env("FHIR_GATEWAY_DATABASE__URL", database);
    }
    let child = command.spawn().expect("the gateway starts");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the gateway did not start listening"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

/// What a client was answered with success: (interaction, the resource version).
type Acknowledged = std::sync::Arc<std::sync::Mutex<Vec<(&'static str, String)>>>;

/// Creates, reads and updates Patients until the gateway stops answering.
async fn load(base: String, acknowledged: Acknowledged) {
    let client = reqwest::Client::new();
    let ack = |interaction: &'static str, reference: String| {
        acknowledged
            .lock()
            .expect("not poisoned")
            .push((interaction, reference));
    };
    loop {
        let Ok(response) = client
            .post(format!("{base}/Patient"))
            .header("content-type", crate::helpers::FHIR_JSON)
            .body(json!({"resourceType": "Patient", "name": [{"family": "Load"}]}).to_string())
            .send()
            .await
        else {
            return;
        };
        if response.status() != 201 {
            return;
        }
        let Ok(created) = response.json::<Value>().await else {
            return;
        };
        let id = created["id"].as_str().expect("an id").to_owned();
        ack("create", format!("Patient/{id}/_history/1"));
        let Ok(read) = client.get(format!("{base}/Patient/{id}")).send().await else {
            return;
        };
        if read.status() != 200 || read.bytes().await.is_err() {
            return;
        }
        ack("read", format!("Patient/{id}/_history/1"));
        let Ok(updated) = client
            .put(format!("{base}/Patient/{id}"))
            .header("content-type", crate::helpers::FHIR_JSON)
            .body(json!({"resourceType": "Patient", "id": id, "active": true}).to_string())
            .send()
            .await
        else {
            return;
        };
        if updated.status() != 200 || updated.bytes().await.is_err() {
            return;
        }
        ack("update", format!("Patient/{id}/_history/2"));
    }
}

on_both!(
    every_answered_interaction_has_its_record_after_a_sigkill,
    |db: Db| async move {
        let data = tempfile::tempdir().expect("a directory");
        let database = match db {
            Db::Postgres => Some(crate::helpers::new_postgres_database().await),
            Db::Sqlite => None,
        };
        let port = crate::anchoring::free_port();
        let mut settings = gateway::config::Config::default().database;
        settings.data_dir = data.path().to_owned();
        settings.url = database.clone().map(Into::into);
        let app = TestApp::at(format!("http://127.0.0.1:{port}/fhir"), settings);
        let mut gateway = start_audited_gateway(data.path(), database.as_deref(), port);
        let acknowledged = Acknowledged::default();
        let clients: Vec<_> = (0..8)
            .map(|_| tokio::spawn(load(app.base.clone(), acknowledged.clone())))
            .collect();
        // killed under load, once a good number of interactions were answered
        let started = std::time::Instant::now();
        while acknowledged.lock().expect("not poisoned").len() < 300 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(120),
                "the load did not get going"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let _ = gateway.kill(); // SIGKILL: no shutdown of any kind
        let _ = gateway.wait();
        for client in clients {
            client
                .await
                .expect("the load ends when the gateway is gone");
        }
        let acknowledged = acknowledged.lock().expect("not poisoned").clone();

        // every answered interaction has its AuditEvent in the database
        let mut db = app.database_connection().await;
        let bodies: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM resource_version WHERE resource_type = 'AuditEvent'",
        )
        .fetch_all(&mut db)
        .await
        .expect("as the test set up");
        let mut recorded: std::collections::HashMap<(String, String), usize> =
            std::collections::HashMap::new();
        for body in &bodies {
            let event: Value = serde_json::from_str(body).expect("JSON");
            if event["outcome"] != "0" {
                continue;
            }
            for reference in entity_references(&event) {
                *recorded
                    .entry((subtype(&event).to_owned(), reference))
                    .or_default() += 1;
            }
        }
        let mut answered: std::collections::HashMap<(String, String), usize> =
            std::collections::HashMap::new();
        for (interaction, reference) in &acknowledged {
            *answered
                .entry(((*interaction).to_owned(), reference.clone()))
                .or_default() += 1;
        }
        let missing: Vec<_> = answered
            .iter()
            .filter(|(key, n)| recorded.get(*key).copied().unwrap_or(0) < **n)
            .collect();
        assert!(
            missing.is_empty(),
            "{} of {} answered interactions have no AuditEvent: {missing:?}",
            missing.len(),
            acknowledged.len()
        );
        assert!(acknowledged.len() >= 300);
        // and no write is without its record, answered or not: a version and its
        // AuditEvent commit together
        let versions: Vec<(String, i64)> = sqlx::query_as(
            "SELECT r.id, v.version_id FROM resource_version v JOIN resource r ON r.rkey = v.rkey \
             WHERE v.resource_type = 'Patient'",
        )
        .fetch_all(&mut db)
        .await
        .expect("as the test set up");
        let unrecorded: Vec<&(String, i64)> = versions
            .iter()
            .filter(|(id, version)| {
                let reference = format!("Patient/{id}/_history/{version}");
                !["create", "update"]
                    .iter()
                    .any(|s| recorded.contains_key(&((*s).to_owned(), reference.clone())))
            })
            .collect();
        assert!(
            unrecorded.is_empty(),
            "versions written without their AuditEvent: {unrecorded:?}"
        );
    }
);

on_both!(
    a_deletion_is_on_the_record_of_the_patient_it_was_about,
    |db: Db| async move {
        let s = crate::access::secured_adjusted(db, |config| config.audit.enabled = true).await;
        let patient = s
            .create(json!({"resourceType": "Patient", "name": [{"family": "Deleted-From"}]}))
            .await;
        let observation = s
            .create(json!({
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
                "subject": {"reference": format!("Patient/{patient}")}
            }))
            .await;
        let doctor = s.token(
            "user/*.cruds",
            json!({"sub": "dr-2", "user_kind": "practitioner", "fhirUser": "Practitioner/9"}),
        );
        let (status, body) = s
            .call(
                reqwest::Method::DELETE,
                &format!("Observation/{observation}"),
                &doctor,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        // the deletion left the observation without index rows; its record still names the
        // patient, so the patient sees it
        let patient_token = s.token(
            "user/*.rs",
            json!({"sub": "deleted-from", "user_kind": "patient", "fhirUser": format!("Patient/{patient}")}),
        );
        let (status, own) = s
            .get(
                &format!("AuditEvent?patient={patient}&subtype=delete"),
                &patient_token,
            )
            .await;
        assert_eq!(status, 200, "{own}");
        let deletions = by_user(&own, "dr-2");
        assert_eq!(deletions.len(), 1, "{own}");
        let references = entity_references(deletions[0]);
        assert!(
            references.contains(&format!("Patient/{patient}"))
                && references
                    .iter()
                    .any(|r| r.starts_with(&format!("Observation/{observation}"))),
            "{references:?}"
        );
    }
);

on_both!(
    an_update_that_moves_a_resource_is_on_both_patients_records,
    |db: Db| async move {
        let s = crate::access::secured_adjusted(db, |config| config.audit.enabled = true).await;
        let from = s
            .create(json!({"resourceType": "Patient", "name": [{"family": "Moved-From"}]}))
            .await;
        let to = s
            .create(json!({"resourceType": "Patient", "name": [{"family": "Moved-To"}]}))
            .await;
        let observation = |patient: &str, id: Option<&str>| {
            let mut o = json!({
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
                "subject": {"reference": format!("Patient/{patient}")}
            });
            if let Some(id) = id {
                o["id"] = json!(id);
            }
            o
        };
        let id = s.create(observation(&from, None)).await;
        let doctor = s.token(
            "user/*.cruds",
            json!({"sub": "dr-3", "user_kind": "practitioner", "fhirUser": "Practitioner/3"}),
        );
        // filed under the wrong patient, then moved to the right one
        let (status, body) = s
            .call(
                reqwest::Method::PUT,
                &format!("Observation/{id}"),
                &doctor,
                Some(&observation(&to, Some(&id))),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        // a later update that does not move it is on the new patient's record only
        let mut amended = observation(&to, Some(&id));
        amended["status"] = json!("amended");
        let (status, body) = s
            .call(
                reqwest::Method::PUT,
                &format!("Observation/{id}"),
                &doctor,
                Some(&amended),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            updates_seen_by(&s, &from, &id).await,
            vec![format!("Observation/{id}/_history/2")],
            "the patient it was moved from sees the move, and only that"
        );
        assert_eq!(
            updates_seen_by(&s, &to, &id).await,
            vec![
                format!("Observation/{id}/_history/2"),
                format!("Observation/{id}/_history/3")
            ]
        );
    }
);

/// The versions of `Observation/{id}` among the updates by `dr-3` that `patient` sees on
/// their record.
async fn updates_seen_by(s: &crate::access::Secured, patient: &str, id: &str) -> Vec<String> {
    let token = s.token(
        "user/*.rs",
        json!({"sub": format!("user-{patient}"), "user_kind": "patient", "fhirUser": format!("Patient/{patient}")}),
    );
    let (status, own) = s
        .get(
            &format!("AuditEvent?patient={patient}&subtype=update"),
            &token,
        )
        .await;
    assert_eq!(status, 200, "{own}");
    let mut versions: Vec<String> = by_user(&own, "dr-3")
        .iter()
        .flat_map(|e| entity_references(e))
        .filter(|r| r.starts_with(&format!("Observation/{id}")))
        .collect();
    versions.sort();
    versions
}
