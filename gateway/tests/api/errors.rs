//! Every error is an OperationOutcome with the right status, saying what was wrong.

use reqwest::Method;
use serde_json::json;

use crate::both;
use crate::helpers::{Db, TestApp, diagnostics, spawn_app_with};

both!(
    bad_requests_answer_operation_outcomes,
    |app: TestApp| async move {
        // (method, path, content type, body, expected status, expected words in the diagnostics)
        let cases: Vec<(Method, &str, &str, String, u16, &str)> = vec![
            (
                Method::POST,
                "Patient",
                "application/fhir+json",
                "{\"resourceType\":".into(),
                400,
                "not valid JSON",
            ),
            (
                Method::POST,
                "Patient",
                "application/fhir+json",
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
                    .to_string(),
                400,
                "is a Observation but the request is for Patient",
            ),
            (
                Method::PUT,
                "Patient/abc",
                "application/fhir+json",
                json!({"resourceType": "Patient", "id": "xyz"}).to_string(),
                400,
                "differs from the id in the body",
            ),
            (
                Method::POST,
                "Spaceship",
                "application/fhir+json",
                json!({"resourceType": "Spaceship"}).to_string(),
                404,
                "unknown resource type",
            ),
            (
                Method::POST,
                "Patient",
                "application/fhir+json",
                json!({"resourceType": "Patient", "colour": "blue"}).to_string(),
                400,
                "colour",
            ),
            (
                Method::POST,
                "Patient",
                "application/fhir+json",
                json!({"resourceType": "Patient", "birthDate": "1980-13-45"}).to_string(),
                400,
                "birthDate",
            ),
            (
                Method::POST,
                "Patient",
                "application/fhir+json",
                json!({"resourceType": "Patient", "multipleBirthInteger": "two"}).to_string(),
                400,
                "multipleBirth",
            ),
            (
                Method::POST,
                "Patient",
                "text/plain",
                "hello".into(),
                415,
                "Content-Type",
            ),
            (
                Method::POST,
                "Patient",
                "application/fhir+json",
                "".into(),
                400,
                "no body",
            ),
            (
                Method::POST,
                "Patient",
                "application/fhir+json",
                json!({"resourceType": "Patient", "active": null}).to_string(),
                400,
                "null",
            ),
            (
                Method::DELETE,
                "metadata",
                "application/fhir+json",
                "".into(),
                405,
                "not allowed",
            ),
            (
                Method::GET,
                "Patient/a/b/c/d/e",
                "application/fhir+json",
                "".into(),
                404,
                "no route",
            ),
            (
                Method::GET,
                "Patient/not_an_id!",
                "application/fhir+json",
                "".into(),
                400,
                "not a valid resource id",
            ),
            (
                Method::GET,
                "Patient?birthdate=notadate",
                "application/fhir+json",
                "".into(),
                400,
                "expected a date",
            ),
            (
                Method::GET,
                "Observation?value-quantity=abc",
                "application/fhir+json",
                "".into(),
                400,
                "expected",
            ),
        ];
        for (method, path, content_type, body, status, words) in cases {
            let response = app
                .client
                .request(method.clone(), app.url(path))
                .header("content-type", content_type)
                .body(body.clone())
                .send()
                .await
                .expect("sent");
            let actual = response.status().as_u16();
            let content = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let outcome: serde_json::Value =
                response.json().await.unwrap_or(serde_json::Value::Null);
            assert_eq!(
                actual, status,
                "{method} {path} with {body:?}: expected {status}, got {actual}: {outcome}"
            );
            assert!(
                content.starts_with("application/fhir+json"),
                "{method} {path}: content type {content}"
            );
            let text = diagnostics(&outcome);
            assert!(
                text.contains(words),
                "{method} {path}: expected {words:?} in {text:?}"
            );
        }

        // an unknown search parameter: ignored with a warning (lenient), refused (strict)
        let (status, bundle) = app.get_json("Patient?shoe-size=42").await;
        assert_eq!(status, 200);
        let outcome = bundle["entry"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["search"]["mode"] == "outcome"))
            .expect("an outcome entry");
        assert!(diagnostics(&outcome["resource"]).contains("shoe-size"));
        let strict = app
            .client
            .get(app.url("Patient?shoe-size=42"))
            .header("prefer", "handling=strict")
            .send()
            .await
            .expect("get");
        assert_eq!(strict.status().as_u16(), 400);

        // XML is not spoken
        let xml = app
            .client
            .get(app.url("metadata"))
            .header("accept", "application/fhir+xml")
            .send()
            .await
            .expect("get");
        assert_eq!(xml.status().as_u16(), 406);
        let xml = app
            .client
            .get(app.url("metadata?_format=xml"))
            .send()
            .await
            .expect("get");
        assert_eq!(xml.status().as_u16(), 406);

        // several problems are all reported at once
        let (status, outcome) = app.post("Patient", &json!({"resourceType": "Patient", "gender": "robot", "birthDate": "soon", "nickname": "x"})).await;
        assert_eq!(status, 400);
        assert!(
            outcome["issue"].as_array().map(Vec::len).unwrap_or(0) >= 3,
            "every issue is listed: {outcome}"
        );
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_body_size_nesting_and_bundle_entries() {
    let app = spawn_app_with(Db::Sqlite, |config| {
        config.limits.max_body_bytes = 2_000;
        config.limits.max_bundle_entries = 2;
    })
    .await;
    let big = json!({"resourceType": "Patient", "name": [{"text": "x".repeat(5_000)}]});
    let (status, outcome) = app.post("Patient", &big).await;
    assert_eq!(status, 413, "{outcome}");
    assert!(diagnostics(&outcome).contains("limit"));

    let deep = format!(
        "{{\"resourceType\":\"Patient\",\"extension\":{}1{}}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    let response = app
        .client
        .post(app.url("Patient"))
        .header("content-type", "application/fhir+json")
        .body(deep)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 400);
    let outcome: serde_json::Value = response.json().await.expect("json");
    assert!(diagnostics(&outcome).contains("nested deeper"));

    let entry = json!({"request": {"method": "GET", "url": "Patient"}});
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [entry.clone(), entry.clone(), entry]});
    let (status, outcome) = app.post("", &bundle).await;
    assert_eq!(status, 413, "{outcome}");
}
