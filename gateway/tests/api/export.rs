//! FHIR Bulk Data `$export` (issue 6) on both backends, with SMART Backend Services tokens
//! signed by the gateway's key: kick-off (`Prefer: respond-async`), status polling, the
//! manifest and the NDJSON files at system, Patient and Group level, `_type`, `_since` and
//! `_typeFilter`; refusals: no `Prefer`, a user's token, a type the scopes do not cover,
//! another client polling or downloading, no token; cancellation. (Consent:
//! `tests/api/consent.rs`, `an_export_holds_exactly_the_consented_resources`.)

use std::time::{Duration, Instant};

use gateway::auth::keys::{SigningKey, generate_key_file};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Db, FHIR_JSON, TestApp, diagnostics, spawn_app_with};
use crate::on_both;

struct Secured {
    app: TestApp,
    key: SigningKey,
    _keys: tempfile::TempDir,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

async fn secured(db: Db) -> Secured {
    secured_with(db, false).await
}

async fn secured_with(db: Db, audited: bool) -> Secured {
    let keys = tempfile::tempdir().expect("temporary directory");
    let path = keys.path().join("signing.pem");
    generate_key_file(&path).expect("a key");
    let key = SigningKey::load(&path).expect("the key");
    let app = spawn_app_with(db, |config| {
        config.auth.required = true;
        config.auth.signing_key_file = Some(path);
        config.audit.enabled = audited;
    })
    .await;
    Secured {
        app,
        key,
        _keys: keys,
    }
}

impl Secured {
    /// A Backend Services token of `client` (no user) with `scope`, `extra` claims merged in.
    fn token(&self, client: &str, scope: &str, extra: Value) -> String {
        let mut claims = json!({
            "iss": self.app.base, "aud": self.app.base, "sub": client, "client_id": client,
            "scope": scope, "iat": now(), "nbf": now(), "exp": now() + 600,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            claims.extend(extra);
        }
        self.key.sign(&claims).expect("signed")
    }

    async fn put(&self, resource: Value) {
        let path = format!(
            "{}/{}",
            resource["resourceType"].as_str().expect("a type"),
            resource["id"].as_str().expect("an id")
        );
        let response = self
            .app
            .client
            .put(self.app.url(&path))
            .bearer_auth(self.token("loader", "system/*.cu", json!({})))
            .header("content-type", FHIR_JSON)
            .body(resource.to_string())
            .send()
            .await
            .expect("sent");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
    }
}

/// A request to `url` (absolute, or relative to the base) with `token`.
pub(crate) async fn call(
    app: &TestApp,
    method: Method,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let url = if url.starts_with("http") {
        url.to_owned()
    } else {
        app.url(url)
    };
    let mut request = app.client.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.expect("a body"))
}

/// Kicks off `path` and polls until the manifest comes: the status URL and the manifest.
pub(crate) async fn export(app: &TestApp, path: &str, token: &str) -> (String, Value) {
    let (status, headers, body) = call(
        app,
        Method::GET,
        path,
        Some(token),
        &[("Prefer", "respond-async"), ("Accept", FHIR_JSON)],
    )
    .await;
    assert_eq!(status, 202, "{path}: {body}");
    let status_url = headers["content-location"]
        .to_str()
        .expect("text")
        .to_owned();
    let started = Instant::now();
    loop {
        let (status, headers, body) = call(app, Method::GET, &status_url, Some(token), &[]).await;
        match status {
            202 => {
                assert!(headers.contains_key("x-progress"), "{headers:?}");
                assert!(headers.contains_key("retry-after"), "{headers:?}");
            }
            200 => return (status_url, serde_json::from_str(&body).expect("a manifest")),
            other => panic!("{path}: status {other}: {body}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{path} never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every output file of a manifest: (type, ids in the file), sorted; checks each file's count.
pub(crate) async fn contents(
    app: &TestApp,
    manifest: &Value,
    token: &str,
) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for output in manifest["output"].as_array().expect("output") {
        let url = output["url"].as_str().expect("a URL");
        let (status, headers, body) = call(app, Method::GET, url, Some(token), &[]).await;
        assert_eq!(status, 200, "{url}: {body}");
        assert_eq!(headers["content-type"], "application/fhir+ndjson");
        let lines: Vec<Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).expect("one resource per line"))
            .collect();
        assert_eq!(Some(lines.len() as u64), output["count"].as_u64(), "{url}");
        for resource in lines {
            assert_eq!(resource["resourceType"], output["type"]);
            all.push((
                output["type"].as_str().expect("a type").to_owned(),
                resource["id"].as_str().expect("an id").to_owned(),
            ));
        }
    }
    all.sort();
    all
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = list
        .iter()
        .map(|(t, id)| ((*t).to_owned(), (*id).to_owned()))
        .collect();
    pairs.sort();
    pairs
}

fn observation(id: &str, patient: &str, code: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
           "subject": {"reference": format!("Patient/{patient}")}})
}

on_both!(exports_at_system_patient_and_group_level, |db| async move {
    let s = secured(db).await;
    s.put(json!({"resourceType": "Organization", "id": "org", "name": "Clinic"}))
        .await;
    s.put(json!({"resourceType": "Patient", "id": "ann", "gender": "female"}))
        .await;
    s.put(json!({"resourceType": "Patient", "id": "bob", "gender": "male"}))
        .await;
    s.put(observation("ann-1", "ann", "4548-4")).await;
    s.put(observation("ann-2", "ann", "2345-7")).await;
    s.put(observation("bob-1", "bob", "4548-4")).await;
    s.put(
        json!({"resourceType": "Group", "id": "g", "type": "person", "actual": true,
                     "member": [{"entity": {"reference": "Patient/ann"}}]}),
    )
    .await;
    let token = s.token("exporter", "system/*.rs", json!({}));

    // system level, every type the token reads
    let (_, manifest) = export(&s.app, "$export", &token).await;
    assert_eq!(manifest["requiresAccessToken"], true);
    assert_eq!(manifest["error"], json!([]));
    assert!(
        manifest["request"]
            .as_str()
            .is_some_and(|r| r == s.app.url("$export")),
        "{manifest}"
    );
    assert!(manifest["transactionTime"].is_string());
    assert_eq!(
        contents(&s.app, &manifest, &token).await,
        pairs(&[
            ("Group", "g"),
            ("Observation", "ann-1"),
            ("Observation", "ann-2"),
            ("Observation", "bob-1"),
            ("Organization", "org"),
            ("Patient", "ann"),
            ("Patient", "bob"),
        ])
    );
    // _type
    let (_, manifest) = export(&s.app, "$export?_type=Patient,Organization", &token).await;
    assert_eq!(
        contents(&s.app, &manifest, &token).await,
        pairs(&[
            ("Organization", "org"),
            ("Patient", "ann"),
            ("Patient", "bob")
        ])
    );
    // Patient level: the patients' compartments (the Group is in ann's: she is a member),
    // no Organization
    let (_, manifest) = export(&s.app, "Patient/$export", &token).await;
    assert_eq!(
        contents(&s.app, &manifest, &token).await,
        pairs(&[
            ("Group", "g"),
            ("Observation", "ann-1"),
            ("Observation", "ann-2"),
            ("Observation", "bob-1"),
            ("Patient", "ann"),
            ("Patient", "bob"),
        ])
    );
    // Group level: its members' compartments only
    let (_, manifest) = export(&s.app, "Group/g/$export", &token).await;
    assert_eq!(
        contents(&s.app, &manifest, &token).await,
        pairs(&[
            ("Group", "g"),
            ("Observation", "ann-1"),
            ("Observation", "ann-2"),
            ("Patient", "ann"),
        ])
    );
    // _typeFilter (an encoded comma inside a query stays in it)
    let (_, manifest) = export(
        &s.app,
        "Patient/$export?_type=Observation&_typeFilter=Observation%3Fcode%3D2345-7%2C9999-9",
        &token,
    )
    .await;
    assert_eq!(
        contents(&s.app, &manifest, &token).await,
        pairs(&[("Observation", "ann-2")])
    );
    // _since: only what changed after it
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a time");
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.put(observation("bob-1", "bob", "2345-7")).await;
    let path = format!(
        "$export?_type=Observation,Patient&_since={}",
        since.replace('+', "%2B")
    );
    let (status_url, manifest) = export(&s.app, &path, &token).await;
    assert_eq!(
        contents(&s.app, &manifest, &token).await,
        pairs(&[("Observation", "bob-1")])
    );

    // another client may neither poll nor download; no token is 401
    let other = s.token("someone-else", "system/*.rs", json!({}));
    let (status, _, body) = call(&s.app, Method::GET, &status_url, Some(&other), &[]).await;
    assert_eq!(status, 403, "{body}");
    let file = manifest["output"][0]["url"]
        .as_str()
        .expect("a file")
        .to_owned();
    let (status, _, body) = call(&s.app, Method::GET, &file, Some(&other), &[]).await;
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = call(&s.app, Method::GET, &file, None, &[]).await;
    assert_eq!(status, 401);
    // the requester removes the job: its status and files are gone
    let (status, _, _) = call(&s.app, Method::DELETE, &status_url, Some(&token), &[]).await;
    assert_eq!(status, 202);
    let (status, _, _) = call(&s.app, Method::GET, &status_url, Some(&token), &[]).await;
    assert_eq!(status, 404);
    let (status, _, _) = call(&s.app, Method::GET, &file, Some(&token), &[]).await;
    assert_eq!(status, 404);
});

on_both!(export_refusals, |db| async move {
    let s = secured(db).await;
    let token = s.token("exporter", "system/*.rs", json!({}));
    let refused = |path: &'static str, token: String, prefer: bool| {
        let app = &s.app;
        async move {
            let headers: &[(&str, &str)] = if prefer {
                &[("Prefer", "respond-async")]
            } else {
                &[]
            };
            let (status, _, body) = call(app, Method::GET, path, Some(&token), headers).await;
            let outcome: Value = serde_json::from_str(&body).expect("an OperationOutcome");
            (status, diagnostics(&outcome))
        }
    };
    let (status, says) = refused("$export", token.clone(), false).await;
    assert_eq!(status, 400, "{says}");
    assert!(says.contains("respond-async"), "{says}");
    let (status, says) = refused("$export?_outputFormat=text/csv", token.clone(), true).await;
    assert_eq!(status, 400, "{says}");
    let (status, says) = refused("Patient/$export?_type=Organization", token.clone(), true).await;
    assert_eq!(status, 400, "{says}");
    let (status, says) = refused("$export?_since=yesterday", token.clone(), true).await;
    assert_eq!(status, 400, "{says}");
    let (status, says) = refused("Group/none/$export", token.clone(), true).await;
    assert_eq!(status, 404, "{says}");
    // a user's app is not a backend service
    let user = s.token(
        "app",
        "user/*.rs",
        json!({"user_kind": "practitioner", "sub": "u1", "fhirUser": "Practitioner/p"}),
    );
    let (status, says) = refused("$export", user, true).await;
    assert_eq!(status, 403, "{says}");
    // a type the scopes do not cover
    let narrow = s.token("exporter", "system/Observation.rs", json!({}));
    let (status, says) = refused("$export?_type=Patient", narrow, true).await;
    assert_eq!(status, 403, "{says}");
    // no token
    let (status, _, _) = call(
        &s.app,
        Method::GET,
        "$export",
        None,
        &[("Prefer", "respond-async")],
    )
    .await;
    assert_eq!(status, 401);
});

on_both!(
    each_export_file_is_stored_with_the_record_of_what_it_discloses,
    |db| async move {
        let s = secured_with(db, true).await;
        s.put(json!({"resourceType": "Patient", "id": "ann", "gender": "female"}))
            .await;
        s.put(observation("ann-1", "ann", "4548-4")).await;
        s.put(json!({"resourceType": "Patient", "id": "bob", "gender": "male"}))
            .await;
        let token = s.token("exporter", "system/*.rs", json!({}));
        let (_, manifest) = export(&s.app, "Patient/$export", &token).await;
        assert_eq!(manifest["error"], json!([]));

        let auditor = s.token(
            "audit-app",
            "user/AuditEvent.rs",
            json!({"sub": "auditor-1", "user_kind": "staff", "auditor": true}),
        );
        let (status, _, body) = call(
            &s.app,
            Method::GET,
            "AuditEvent?type=http://dicom.nema.org/resources/ontology/DCM|110106&_count=100",
            Some(&auditor),
            &[],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let bundle: Value = serde_json::from_str(&body).expect("a Bundle");
        let events: Vec<&Value> = bundle["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| &e["resource"])
            .collect();
        assert!(!events.is_empty(), "{bundle}");
        let mut disclosed = Vec::new();
        let mut patients = std::collections::BTreeSet::new();
        for event in &events {
            assert_eq!(event["outcome"], "0", "{event}");
            assert_eq!(
                event["agent"][0]["who"]["identifier"]["value"], "exporter",
                "{event}"
            );
            for entity in event["entity"].as_array().expect("entities") {
                let reference = entity["what"]["reference"].as_str().unwrap_or_default();
                if entity["role"]["code"] == "1" {
                    patients.insert(reference.to_owned());
                } else {
                    disclosed.push(reference.to_owned());
                }
            }
        }
        disclosed.sort();
        assert_eq!(
            disclosed,
            vec![
                "Observation/ann-1/_history/1",
                "Patient/ann/_history/1",
                "Patient/bob/_history/1"
            ]
        );
        assert_eq!(
            patients.into_iter().collect::<Vec<_>>(),
            vec!["Patient/ann", "Patient/bob"]
        );
    }
);
