//! read, vread, create, update, delete, history, conditional interactions, PATCH, headers.

use reqwest::Method;
use serde_json::json;

use crate::both;
use crate::helpers::{FHIR_JSON, TestApp};

fn patient(family: &str) -> serde_json::Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Ann"]}], "birthDate": "1980-05-01",
           "identifier": [{"system": "urn:mrn", "value": family}],
           "extension": [{"url": "http://example.org/weight", "valueDecimal": 70.50}]})
}

both!(
    create_read_update_delete_and_history,
    |app: TestApp| async move {
        let response = app.send(Method::POST, "Patient", &patient("Alpha")).await;
        assert_eq!(response.status().as_u16(), 201);
        let location = response.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned();
        assert_eq!(response.headers()["etag"], "W/\"1\"");
        assert!(response.headers().contains_key("last-modified"));
        let created: serde_json::Value = response.json().await.expect("json");
        let id = created["id"].as_str().expect("id").to_owned();
        assert_eq!(location, app.url(&format!("Patient/{id}/_history/1")));
        assert_eq!(created["meta"]["versionId"], "1");

        // the stored JSON is the client's: decimal precision kept (sent as text: serde_json
        // itself would write 70.5)
        let raw = r#"{"resourceType":"Observation","status":"final","code":{"text":"w"},"valueQuantity":{"value":70.50,"unit":"kg"}}"#;
        let response = app
            .client
            .post(app.url("Observation"))
            .header("content-type", FHIR_JSON)
            .body(raw)
            .send()
            .await
            .expect("post");
        let observation_url = response.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned();
        let text = app
            .client
            .get(observation_url)
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("body");
        assert!(
            text.contains(r#""value":70.50"#),
            "decimal written as 70.50 must be served as 70.50: {text}"
        );

        let mut changed = created.clone();
        changed["birthDate"] = json!("1980-05-02");
        let (status, updated) = app.put(&format!("Patient/{id}"), &changed).await;
        assert_eq!(status, 200, "{updated}");
        assert_eq!(updated["meta"]["versionId"], "2");

        let (status, v1) = app.get_json(&format!("Patient/{id}/_history/1")).await;
        assert_eq!(
            (status, v1["birthDate"].as_str()),
            (200, Some("1980-05-01"))
        );

        let response = app
            .client
            .delete(app.url(&format!("Patient/{id}")))
            .send()
            .await
            .expect("delete");
        assert_eq!(response.status().as_u16(), 200);
        let (status, outcome) = app.get_json(&format!("Patient/{id}")).await;
        assert_eq!(status, 410, "a deleted resource answers 410: {outcome}");
        let (status, _) = app.get_json(&format!("Patient/{id}/_history/2")).await;
        assert_eq!(status, 200, "history keeps every version");

        let (status, history) = app.get_json(&format!("Patient/{id}/_history")).await;
        assert_eq!(status, 200);
        assert_eq!(history["type"], "history");
        let methods: Vec<&str> = history["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e["request"]["method"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(methods, ["DELETE", "PUT", "POST"], "newest first");

        // deleting again is fine and writes nothing
        let response = app
            .client
            .delete(app.url(&format!("Patient/{id}")))
            .send()
            .await
            .expect("delete");
        assert_eq!(response.status().as_u16(), 200);
        let (_, history) = app.get_json(&format!("Patient/{id}/_history")).await;
        assert_eq!(history["entry"].as_array().map(Vec::len), Some(3));

        // update after delete brings it back as a new version
        let (status, revived) = app.put(&format!("Patient/{id}"), &changed).await;
        assert_eq!(
            (status, revived["meta"]["versionId"].as_str()),
            (201, Some("4"))
        );
    }
);

both!(
    update_as_create_and_version_aware_updates,
    |app: TestApp| async move {
        let mut resource = patient("Beta");
        resource["id"] = json!("client-chosen-1");
        let (status, created) = app.put("Patient/client-chosen-1", &resource).await;
        assert_eq!(status, 201, "update of an unknown id creates it: {created}");

        let stale = app
            .client
            .put(app.url("Patient/client-chosen-1"))
            .header("content-type", FHIR_JSON)
            .header("if-match", "W/\"7\"")
            .body(resource.to_string())
            .send()
            .await
            .expect("put");
        assert_eq!(
            stale.status().as_u16(),
            412,
            "If-Match with a stale version is refused"
        );
        let current = app
            .client
            .put(app.url("Patient/client-chosen-1"))
            .header("content-type", FHIR_JSON)
            .header("if-match", "W/\"1\"")
            .body(resource.to_string())
            .send()
            .await
            .expect("put");
        assert_eq!(current.status().as_u16(), 200);

        let not_modified = app
            .client
            .get(app.url("Patient/client-chosen-1"))
            .header("if-none-match", "W/\"2\"")
            .send()
            .await
            .expect("get");
        assert_eq!(not_modified.status().as_u16(), 304);
        let modified = app
            .client
            .get(app.url("Patient/client-chosen-1"))
            .header("if-none-match", "W/\"1\"")
            .send()
            .await
            .expect("get");
        assert_eq!(modified.status().as_u16(), 200);
        let since = app
            .client
            .get(app.url("Patient/client-chosen-1"))
            .header("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT")
            .send()
            .await
            .expect("get");
        assert_eq!(since.status().as_u16(), 304);
    }
);

both!(
    conditional_create_update_delete_and_patch,
    |app: TestApp| async move {
        let first = app
            .client
            .post(app.url("Patient"))
            .header("content-type", FHIR_JSON)
            .header("if-none-exist", "identifier=urn:mrn|Gamma")
            .body(patient("Gamma").to_string())
            .send()
            .await
            .expect("post");
        assert_eq!(first.status().as_u16(), 201);
        let id = first.json::<serde_json::Value>().await.expect("json")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let again = app
            .client
            .post(app.url("Patient"))
            .header("content-type", FHIR_JSON)
            .header("if-none-exist", "identifier=urn:mrn|Gamma")
            .body(patient("Gamma").to_string())
            .send()
            .await
            .expect("post");
        assert_eq!(
            again.status().as_u16(),
            200,
            "an existing match is returned, not duplicated"
        );
        assert_eq!(
            again.json::<serde_json::Value>().await.expect("json")["id"],
            id.as_str()
        );

        // conditional update: one match updates it
        let mut changed = patient("Gamma");
        changed["gender"] = json!("female");
        let (status, updated) = app.put("Patient?identifier=urn:mrn|Gamma", &changed).await;
        assert_eq!(
            (
                status,
                updated["id"].as_str(),
                updated["meta"]["versionId"].as_str()
            ),
            (200, Some(id.as_str()), Some("2"))
        );
        // no match creates
        let (status, created) = app
            .put("Patient?identifier=urn:mrn|Delta", &patient("Delta"))
            .await;
        assert_eq!(status, 201, "{created}");
        // two matches: 412
        app.create(&patient("Gamma")).await;
        let (status, outcome) = app.put("Patient?identifier=urn:mrn|Gamma", &changed).await;
        assert_eq!(status, 412, "{outcome}");

        // JSON Patch
        let delta_id = created["id"].as_str().expect("id");
        let patched = app
            .client
            .patch(app.url(&format!("Patient/{delta_id}")))
            .header("content-type", "application/json-patch+json")
            .body(
                json!([{"op": "replace", "path": "/birthDate", "value": "1999-09-09"}]).to_string(),
            )
            .send()
            .await
            .expect("patch");
        assert_eq!(patched.status().as_u16(), 200);
        let (_, read) = app.get_json(&format!("Patient/{delta_id}")).await;
        assert_eq!(read["birthDate"], "1999-09-09");
        let bad = app
            .client
            .patch(app.url(&format!("Patient/{delta_id}")))
            .header("content-type", "application/json-patch+json")
            .body(json!([{"op": "add", "path": "/gender", "value": "robot"}]).to_string())
            .send()
            .await
            .expect("patch");
        assert_eq!(
            bad.status().as_u16(),
            422,
            "a patch that makes the resource invalid is refused"
        );

        // conditional delete of a single match
        let response = app
            .client
            .delete(app.url("Patient?identifier=urn:mrn|Delta"))
            .send()
            .await
            .expect("delete");
        assert_eq!(response.status().as_u16(), 200);
        let (status, _) = app.get_json(&format!("Patient/{delta_id}")).await;
        assert_eq!(status, 410);
    }
);

both!(prefer_return_and_metadata, |app: TestApp| async move {
    let minimal = app
        .client
        .post(app.url("Patient"))
        .header("content-type", FHIR_JSON)
        .header("prefer", "return=minimal")
        .body(patient("Eps").to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(minimal.status().as_u16(), 201);
    assert!(minimal.headers().contains_key("location"));
    assert!(
        minimal.text().await.expect("body").is_empty(),
        "return=minimal sends no body"
    );
    let outcome = app
        .client
        .post(app.url("Patient"))
        .header("content-type", FHIR_JSON)
        .header("prefer", "return=OperationOutcome")
        .body(patient("Eps").to_string())
        .send()
        .await
        .expect("post");
    let body: serde_json::Value = outcome.json().await.expect("json");
    assert_eq!(body["resourceType"], "OperationOutcome");

    let (status, capabilities) = app.get_json("metadata").await;
    assert_eq!(status, 200);
    assert_eq!(capabilities["fhirVersion"], "4.0.1");
    let patient = capabilities["rest"][0]["resource"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["type"] == "Patient")
        .cloned()
        .expect("Patient");
    assert!(
        patient["searchParam"]
            .as_array()
            .expect("params")
            .iter()
            .any(|p| p["name"] == "birthdate")
    );

    let (status, ready) = app.get_json("../health/ready").await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("pass")));
});
