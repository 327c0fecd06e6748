//! FHIRPath Patch (a Parameters resource of operations): each operation type, the errors,
//! `If-Match`, conditional patch, and PATCH entries in transaction and batch Bundles.

use base64::Engine;
use serde_json::{Value, json};

use crate::both;
use crate::helpers::{FHIR_JSON, TestApp, diagnostics};

/// One `operation` parameter: its type, path and further parts.
fn operation(type_code: &str, path: &str, more: &[Value]) -> Value {
    let mut parts = vec![
        json!({"name": "type", "valueCode": type_code}),
        json!({"name": "path", "valueString": path}),
    ];
    parts.extend_from_slice(more);
    json!({"name": "operation", "part": parts})
}

fn parameters(operations: &[Value]) -> Value {
    json!({"resourceType": "Parameters", "parameter": operations})
}

/// Sends a FHIRPath Patch; answers the status, the ETag and the body.
async fn fhirpath_patch(
    app: &TestApp,
    path: &str,
    body: &Value,
    if_match: Option<&str>,
) -> (u16, String, Value) {
    let mut request = app
        .client
        .patch(app.url(path))
        .header("content-type", FHIR_JSON)
        .body(body.to_string());
    if let Some(tag) = if_match {
        request = request.header("if-match", tag);
    }
    let response = request.send().await.expect("patch sent");
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, etag, response.json().await.unwrap_or(Value::Null))
}

fn patient() -> Value {
    json!({"resourceType": "Patient", "active": true, "birthDate": "1970-01-01", "gender": "female",
           "name": [{"family": "Patch", "given": ["Ann"]}],
           "identifier": [{"system": "urn:mrn", "value": "P1"}, {"system": "urn:mrn", "value": "P2"}],
           "telecom": [{"system": "phone", "value": "555"}, {"system": "email", "value": "a@b.org"}]})
}

both!(each_operation_type, |app: TestApp| async move {
    let id = app.create(&patient()).await;
    let path = format!("Patient/{id}");
    let value_identifier =
        json!({"name": "value", "valueIdentifier": {"system": "urn:mrn", "value": "P0"}});
    let identifier = |value: &str| json!({"system": "urn:mrn", "value": value});
    // (operation, a JSON Pointer into the resource, what is there afterwards; None: nothing)
    let steps: Vec<(Value, &str, Option<Value>)> = vec![
        (
            operation(
                "replace",
                "Patient.birthDate",
                &[json!({"name": "value", "valueDate": "1971-02-03"})],
            ),
            "/birthDate",
            Some(json!("1971-02-03")),
        ),
        (
            operation(
                "add",
                "Patient",
                &[
                    json!({"name": "name", "valueString": "deceased"}),
                    json!({"name": "value", "valueBoolean": false}),
                ],
            ),
            "/deceasedBoolean",
            Some(json!(false)),
        ),
        (
            operation(
                "insert",
                "Patient.identifier",
                &[
                    json!({"name": "index", "valueInteger": 0}),
                    value_identifier,
                ],
            ),
            "/identifier",
            Some(json!([
                identifier("P0"),
                identifier("P1"),
                identifier("P2")
            ])),
        ),
        (
            operation(
                "move",
                "Patient.identifier",
                &[
                    json!({"name": "source", "valueInteger": 2}),
                    json!({"name": "destination", "valueInteger": 0}),
                ],
            ),
            "/identifier",
            Some(json!([
                identifier("P2"),
                identifier("P0"),
                identifier("P1")
            ])),
        ),
        (
            operation("delete", "Patient.telecom.where(system = 'phone')", &[]),
            "/telecom",
            Some(json!([{"system": "email", "value": "a@b.org"}])),
        ),
        (
            operation(
                "add",
                "Patient",
                &[
                    json!({"name": "name", "valueString": "contact"}),
                    json!({"name": "value", "part": [
                        {"name": "name", "valueHumanName": {"family": "Kin"}},
                        {"name": "gender", "valueCode": "male"}
                    ]}),
                ],
            ),
            "/contact",
            Some(json!([{"name": {"family": "Kin"}, "gender": "male"}])),
        ),
        (
            operation("delete", "Patient.birthDate", &[]),
            "/birthDate",
            None,
        ),
    ];
    for (version, (step, pointer, expected)) in steps.into_iter().enumerate() {
        let version = version + 2;
        let (status, etag, patched) =
            fhirpath_patch(&app, &path, &parameters(std::slice::from_ref(&step)), None).await;
        assert_eq!(status, 200, "{step}: {patched}");
        assert_eq!(etag, format!("W/\"{version}\""), "{step}: a new version");
        assert_eq!(
            patched.pointer(pointer),
            expected.as_ref(),
            "{step}: the answer shows the change: {patched}"
        );
        let (_, read) = app.get_json(&path).await;
        assert_eq!(
            read.pointer(pointer),
            expected.as_ref(),
            "{step}: the stored resource has the change: {read}"
        );
        assert_eq!(read["meta"]["versionId"], version.to_string());
    }
    let (_, history) = app.get_json(&format!("{path}/_history")).await;
    assert_eq!(
        history["entry"][0]["request"]["method"], "PATCH",
        "the version is recorded as made by PATCH: {history}"
    );

    // several operations at once apply in order, and untouched number literals stay as sent
    let raw = r#"{"resourceType":"Observation","status":"preliminary","code":{"text":"w"},"valueQuantity":{"value":70.50,"unit":"kg"}}"#;
    let created = app
        .client
        .post(app.url("Observation"))
        .header("content-type", FHIR_JSON)
        .body(raw)
        .send()
        .await
        .expect("post");
    assert_eq!(created.status().as_u16(), 201);
    let observation: Value = created.json().await.expect("json");
    let observation = format!("Observation/{}", observation["id"].as_str().expect("id"));
    let body = parameters(&[
        operation(
            "replace",
            "Observation.status",
            &[json!({"name": "value", "valueCode": "final"})],
        ),
        operation(
            "add",
            "Observation",
            &[
                json!({"name": "name", "valueString": "note"}),
                json!({"name": "value", "valueAnnotation": {"text": "checked"}}),
            ],
        ),
        operation(
            "replace",
            "Observation.note[0].text",
            &[json!({"name": "value", "valueString": "checked twice"})],
        ),
    ]);
    let (status, _, patched) = fhirpath_patch(&app, &observation, &body, None).await;
    assert_eq!(status, 200, "{patched}");
    let text = app.get(&observation).await.text().await.expect("body");
    assert!(
        text.contains(r#""status":"final""#)
            && text.contains(r#""note":[{"text":"checked twice"}]"#),
        "{text}"
    );
    assert!(
        text.contains(r#""valueQuantity":{"value":70.50,"unit":"kg"}"#),
        "the decimal keeps its literal: {text}"
    );
});

both!(
    errors_if_match_and_conditional_patch,
    |app: TestApp| async move {
        let id = app.create(&patient()).await;
        let path = format!("Patient/{id}");
        let cases: Vec<(&str, Value, u16, &str)> = vec![
            (
                "a path that selects two elements",
                parameters(&[operation("delete", "Patient.identifier", &[])]),
                422,
                "selects 2 elements",
            ),
            (
                "a replace of nothing",
                parameters(&[operation(
                    "replace",
                    "Patient.deceased",
                    &[json!({"name": "value", "valueBoolean": true})],
                )]),
                422,
                "selects nothing",
            ),
            (
                "a value of the wrong type",
                parameters(&[operation(
                    "replace",
                    "Patient.active",
                    &[json!({"name": "value", "valueHumanName": {"text": "x"}})],
                )]),
                422,
                "a HumanName cannot be the value of active",
            ),
            (
                "a result that fails validation",
                parameters(&[operation(
                    "replace",
                    "Patient.gender",
                    &[json!({"name": "value", "valueCode": "robot"})],
                )]),
                422,
                "Patient.gender",
            ),
            (
                "a change of the id",
                parameters(&[operation(
                    "replace",
                    "Patient.id",
                    &[json!({"name": "value", "valueId": "other"})],
                )]),
                422,
                "must not change or remove the resource id",
            ),
            (
                "an unknown operation type",
                parameters(&[operation("remove", "Patient.active", &[])]),
                400,
                "unknown operation type",
            ),
            (
                "a path that is not FHIRPath",
                parameters(&[operation("delete", "Patient.name.(", &[])]),
                400,
                "path: ",
            ),
            (
                "a Parameters that is not valid",
                json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "valueNonsense": 1}]}),
                400,
                "Parameters.parameter[0]",
            ),
            (
                "a body that is not a Parameters",
                json!({"resourceType": "Patient", "active": false}),
                400,
                "a FHIRPath Patch is a Parameters resource",
            ),
        ];
        for (what, body, expected, message) in cases {
            let (status, _, outcome) = fhirpath_patch(&app, &path, &body, None).await;
            assert_eq!(status, expected, "{what}: {outcome}");
            let text = diagnostics(&outcome);
            assert!(
                text.contains(message),
                "{what}: expected {message:?} in {text}"
            );
        }
        let (_, unchanged) = app.get_json(&path).await;
        assert_eq!(
            unchanged["meta"]["versionId"], "1",
            "refused patches change nothing"
        );

        let response = app
            .client
            .patch(app.url(&path))
            .header("content-type", FHIR_JSON)
            .body(json!([{"op": "remove", "path": "/active"}]).to_string())
            .send()
            .await
            .expect("patch");
        assert_eq!(response.status().as_u16(), 400);
        let outcome: Value = response.json().await.expect("json");
        assert!(
            diagnostics(&outcome).contains("application/json-patch+json"),
            "a JSON Patch sent as FHIR JSON is pointed to its media type: {outcome}"
        );
        let response = app
            .client
            .patch(app.url(&path))
            .header("content-type", "text/plain")
            .body("delete Patient.active")
            .send()
            .await
            .expect("patch");
        assert_eq!(response.status().as_u16(), 415);

        let (_, metadata) = app.get_json("metadata").await;
        assert_eq!(
            metadata["patchFormat"],
            json!(["application/json-patch+json", "application/fhir+json"]),
            "the CapabilityStatement lists both patch formats"
        );

        // If-Match
        let deactivate = parameters(&[operation(
            "replace",
            "Patient.active",
            &[json!({"name": "value", "valueBoolean": false})],
        )]);
        let (status, _, outcome) = fhirpath_patch(&app, &path, &deactivate, Some("W/\"7\"")).await;
        assert_eq!(status, 412, "a stale If-Match: {outcome}");
        let (status, etag, patched) =
            fhirpath_patch(&app, &path, &deactivate, Some("W/\"1\"")).await;
        assert_eq!(
            (status, etag.as_str(), &patched["active"]),
            (200, "W/\"2\"", &json!(false)),
            "{patched}"
        );
        let (status, _, _) = fhirpath_patch(&app, "Patient/nobody", &deactivate, None).await;
        assert_eq!(status, 404);

        // conditional patch of the single match
        let (status, _, patched) = fhirpath_patch(
            &app,
            "Patient?identifier=urn:mrn|P1",
            &parameters(&[operation(
                "replace",
                "Patient.name[0].family",
                &[json!({"name": "value", "valueString": "Conditional"})],
            )]),
            None,
        )
        .await;
        assert_eq!(status, 200, "{patched}");
        assert_eq!(
            (patched["id"].as_str(), &patched["name"][0]["family"]),
            (Some(id.as_str()), &json!("Conditional"))
        );
    }
);

both!(patch_entries_in_bundles, |app: TestApp| async move {
    let observation = app
        .create(
            &json!({"resourceType": "Observation", "status": "preliminary", "code": {"text": "x"}}),
        )
        .await;
    let patient = app.create(&patient()).await;
    let json_patch = base64::engine::general_purpose::STANDARD
        .encode(json!([{"op": "replace", "path": "/active", "value": false}]).to_string());
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:4f6a3c1e-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Patient", "name": [{"family": "New"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": parameters(&[
            operation("replace", "Observation.status", &[json!({"name": "value", "valueCode": "final"})]),
            operation("add", "Observation", &[
                json!({"name": "name", "valueString": "subject"}),
                json!({"name": "value", "valueReference": {"reference": "urn:uuid:4f6a3c1e-0000-4000-8000-000000000001"}}),
            ]),
         ]),
         "request": {"method": "PATCH", "url": format!("Observation/{observation}"), "ifMatch": "W/\"1\""}},
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": json_patch},
         "request": {"method": "PATCH", "url": format!("Patient/{patient}")}}
    ]});
    let (status, response) = app.post("", &bundle).await;
    assert_eq!(status, 200, "{response}");
    let entries = response["entry"].as_array().expect("entries");
    assert_eq!(entries[1]["response"]["status"], "200 OK", "{response}");
    assert_eq!(entries[2]["response"]["status"], "200 OK", "{response}");
    let new_patient = entries[0]["resource"]["id"]
        .as_str()
        .expect("new patient id");
    let (_, patched) = app.get_json(&format!("Observation/{observation}")).await;
    assert_eq!(patched["status"], "final");
    assert_eq!(
        patched["subject"]["reference"],
        format!("Patient/{new_patient}"),
        "a reference in a FHIRPath Patch value is rewritten like any other"
    );
    let (_, json_patched) = app.get_json(&format!("Patient/{patient}")).await;
    assert_eq!(
        json_patched["active"], false,
        "the JSON Patch entry applied"
    );

    // a failing patch entry rolls the whole transaction back
    let before = app.get_json("Patient?_summary=count").await.1["total"].clone();
    let failing = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "name": [{"family": "Lost"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": parameters(&[operation("delete", "Patient.identifier", &[])]),
         "request": {"method": "PATCH", "url": format!("Patient/{patient}")}}
    ]});
    let (status, outcome) = app.post("", &failing).await;
    assert_eq!(status, 422, "{outcome}");
    assert!(
        diagnostics(&outcome).contains("Bundle.entry[1]"),
        "the error names the entry: {outcome}"
    );
    let after = app.get_json("Patient?_summary=count").await.1["total"].clone();
    assert_eq!(before, after, "nothing of the failed transaction remains");

    // in a batch, a failing patch entry fails alone
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": parameters(&[operation("replace", "Patient.gender", &[json!({"name": "value", "valueCode": "robot"})])]),
         "request": {"method": "PATCH", "url": format!("Patient/{patient}")}},
        {"resource": parameters(&[operation("replace", "Patient.gender", &[json!({"name": "value", "valueCode": "male"})])]),
         "request": {"method": "PATCH", "url": format!("Patient?identifier=urn:mrn|P2")}}
    ]});
    let (status, response) = app.post("", &batch).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(
        response["entry"][0]["response"]["status"], "422 Unprocessable Entity",
        "{response}"
    );
    assert_eq!(
        response["entry"][1]["response"]["status"], "200 OK",
        "a conditional PATCH entry: {response}"
    );
    let (_, read) = app.get_json(&format!("Patient/{patient}")).await;
    assert_eq!(read["gender"], "male");
});
