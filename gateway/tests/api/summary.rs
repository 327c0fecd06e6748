//! `_summary` and `_elements` on read, vread, search and history.

use serde_json::{Value, json};

use crate::both;
use crate::helpers::{FHIR_JSON, TestApp, diagnostics, match_ids};

const SUBSETTED: &str = r#"{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"SUBSETTED","display":"subsetted"}"#;

const PATIENT_TEXT: &str = r#""text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">Ann Müller</div>"}"#;

fn patient_body() -> String {
    format!(
        r#"{{"resourceType":"Patient",{PATIENT_TEXT},"extension":[{{"url":"http://example.org/score","valueDecimal":1.50}}],"modifierExtension":[{{"url":"http://example.org/test-only","valueBoolean":true}}],"identifier":[{{"system":"urn:mrn","value":"1"}}],"active":true,"name":[{{"family":"Müller","given":["Ann"]}}],"gender":"female","birthDate":"1970-03-04","_birthDate":{{"extension":[{{"url":"http://hl7.org/fhir/StructureDefinition/patient-birthTime","valueDateTime":"1970-03-04T10:00:00+01:00"}}]}},"contact":[{{"name":{{"family":"Roe"}}}}]}}"#
    )
}

fn observation_body(patient: &str) -> String {
    format!(
        r#"{{"resourceType":"Observation","text":{{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">HbA1c</div>"}},"status":"final","category":[{{"text":"laboratory"}}],"code":{{"coding":[{{"system":"http://loinc.org","code":"4548-4"}}],"text":"Hemoglobin A1c"}},"subject":{{"reference":"Patient/{patient}"}},"effectiveDateTime":"2020-06-01T10:00:00Z","valueQuantity":{{"value":7.20,"unit":"%","system":"http://unitsofmeasure.org","code":"%"}},"note":[{{"text":"fasting"}}]}}"#
    )
}

/// Creates a resource from its exact JSON text; returns its id and the stored text.
async fn create_raw(app: &TestApp, resource_type: &str, body: &str) -> (String, String) {
    let response = app
        .client
        .post(app.url(resource_type))
        .header("content-type", FHIR_JSON)
        .body(body.to_owned())
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status().as_u16(), 201, "creating {body}");
    let text = response.text().await.expect("body");
    let value: Value = serde_json::from_str(&text).expect("json");
    (value["id"].as_str().expect("id").to_owned(), text)
}

/// GET with optional `Prefer`; returns status, `ETag` and the body text.
async fn get_text(app: &TestApp, path: &str, prefer: Option<&str>) -> (u16, String, String) {
    let mut request = app.client.get(app.url(path));
    if let Some(prefer) = prefer {
        request = request.header("prefer", prefer);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, etag, response.text().await.expect("body"))
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn is_subsetted(resource: &Value) -> bool {
    resource["meta"]["tag"]
        .as_array()
        .is_some_and(|tags| tags.iter().any(|t| t["code"] == "SUBSETTED"))
}

/// The top-level member names of a resource, without `resourceType`, sorted.
fn members(resource: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = resource
        .as_object()
        .map(|o| {
            o.keys()
                .map(String::as_str)
                .filter(|k| *k != "resourceType")
                .collect()
        })
        .unwrap_or_default();
    names.sort_unstable();
    names
}

fn sorted<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut names = names.to_vec();
    names.sort_unstable();
    names
}

fn entries<'a>(bundle: &'a Value, mode: &str) -> Vec<&'a Value> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == mode)
                .map(|e| &e["resource"])
                .collect()
        })
        .unwrap_or_default()
}

both!(read_and_vread_serve_subsets, |app: TestApp| async move {
    let (id, stored) = create_raw(&app, "Patient", &patient_body()).await;
    let path = format!("Patient/{id}");

    // a plain read is the stored text, untouched and untagged
    let (status, etag, plain) = get_text(&app, &path, None).await;
    assert_eq!((status, plain.as_str()), (200, stored.as_str()));
    assert!(!plain.contains("SUBSETTED"));
    let (_, _, explicit_false) = get_text(&app, &format!("{path}?_summary=false"), None).await;
    assert_eq!(
        explicit_false, stored,
        "_summary=false is the whole resource"
    );

    // _summary=data: byte for byte the stored text without `text`, tag appended to meta
    let last_updated = parse(&stored)["meta"]["lastUpdated"]
        .as_str()
        .expect("lastUpdated")
        .to_owned();
    let expected = stored.replace(&format!("{PATIENT_TEXT},"), "").replace(
        &format!(r#""lastUpdated":"{last_updated}"}}"#),
        &format!(r#""lastUpdated":"{last_updated}","tag":[{SUBSETTED}]}}"#),
    );
    let (status, data_etag, data) = get_text(&app, &format!("{path}?_summary=data"), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        data, expected,
        "_summary=data removes text and nothing else"
    );
    assert!(
        data.contains(r#""valueDecimal":1.50"#),
        "number literals kept"
    );
    assert_eq!(data_etag, etag, "the version is the same");

    // _summary=true: summary elements at every depth, modifiers, _birthDate with birthDate
    let (status, _, summary) = get_text(&app, &format!("{path}?_summary=true"), None).await;
    assert_eq!(status, 200);
    let summary = parse(&summary);
    assert!(is_subsetted(&summary), "{summary}");
    assert_eq!(
        members(&summary),
        sorted(&[
            "id",
            "meta",
            "modifierExtension",
            "identifier",
            "active",
            "name",
            "gender",
            "birthDate",
            "_birthDate"
        ]),
        "text, extension and contact are not summary elements: {summary}"
    );
    assert_eq!(summary["meta"]["versionId"], "1");

    // _summary=text: text, id, meta, mandatory and modifier top-level elements
    let (_, _, text) = get_text(&app, &format!("{path}?_summary=text"), None).await;
    let text = parse(&text);
    assert_eq!(
        members(&text),
        sorted(&["id", "meta", "text", "modifierExtension", "active"])
    );
    assert!(is_subsetted(&text));

    // _elements: the listed elements (a primitive with its _name companion)
    let (_, _, elements) =
        get_text(&app, &format!("{path}?_elements=birthDate,gender"), None).await;
    let elements = parse(&elements);
    assert_eq!(
        members(&elements),
        sorted(&[
            "id",
            "meta",
            "modifierExtension",
            "active",
            "gender",
            "birthDate",
            "_birthDate"
        ])
    );
    assert!(is_subsetted(&elements));

    // vread serves subsets too
    let (status, _, vread) = get_text(
        &app,
        &format!("{path}/_history/1?_summary=true&_format=json"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(parse(&vread), summary, "vread and read agree");

    // a subset cannot be stored over the resource
    let (status, outcome) = app.put(&path, &summary).await;
    assert_eq!(status, 422, "{outcome}");
    assert!(diagnostics(&outcome).contains("SUBSETTED"));
    let (_, _, after) = get_text(&app, &path, None).await;
    assert_eq!(after, stored, "the stored version is unchanged");
});

both!(
    bad_result_parameters_answer_400,
    |app: TestApp| async move {
        let (id, stored) = create_raw(&app, "Patient", &patient_body()).await;
        let cases: [(String, Option<&str>, &str); 7] = [
            (
                format!("Patient/{id}?_summary=maybe"),
                None,
                "expected true, text",
            ),
            (format!("Patient/{id}?_summary=count"), None, "search only"),
            (format!("Patient/{id}?_elements="), None, "comma-separated"),
            (
                format!("Patient/{id}?_summary=true&_elements=name"),
                None,
                "cannot be combined",
            ),
            (
                format!("Patient/{id}?_elements=name,nope"),
                Some("handling=strict"),
                "\"nope\" is not a top-level element of Patient",
            ),
            (
                "Patient?_summary=text&_elements=name".to_owned(),
                None,
                "cannot be combined",
            ),
            (
                "Patient?_elements=name.family".to_owned(),
                Some("handling=strict"),
                "only top-level elements",
            ),
        ];
        for (path, prefer, expected) in cases {
            let (status, _, body) = get_text(&app, &path, prefer).await;
            assert_eq!(status, 400, "{path}: {body}");
            let message = diagnostics(&parse(&body));
            assert!(
                message.contains(expected),
                "{path}: expected {expected:?} in {message:?}"
            );
        }
        let (status, _, body) =
            get_text(&app, &format!("Patient/{id}/_history?_summary=count"), None).await;
        assert_eq!(status, 400, "{body}");

        // lenient handling ignores what it cannot select
        let (status, _, body) = get_text(&app, &format!("Patient/{id}?_elements=nope"), None).await;
        assert_eq!(
            (status, body.as_str()),
            (200, stored.as_str()),
            "nothing selectable: the whole resource"
        );
        let (status, _, body) = get_text(&app, "Patient?_elements=nope,gender", None).await;
        assert_eq!(status, 200, "{body}");
        let bundle = parse(&body);
        assert_eq!(
            members(entries(&bundle, "match")[0]),
            sorted(&["id", "meta", "modifierExtension", "active", "gender"])
        );
        let outcome = entries(&bundle, "outcome");
        assert!(
            outcome[0].to_string().contains("nope"),
            "the ignored item is reported: {bundle}"
        );
        let self_link = bundle["link"][0]["url"].as_str().unwrap_or_default();
        assert!(
            self_link.contains("_elements=gender") && !self_link.contains("nope"),
            "the self link shows what was applied: {self_link}"
        );
    }
);

both!(search_serves_subsets, |app: TestApp| async move {
    let (patient, _) = create_raw(&app, "Patient", &patient_body()).await;
    let (observation, stored_observation) =
        create_raw(&app, "Observation", &observation_body(&patient)).await;
    let (_, _, stored_patient) = get_text(&app, &format!("Patient/{patient}"), None).await;

    // _summary applies to matches and included resources
    let (status, _, body) = get_text(
        &app,
        "Observation?_summary=true&_include=Observation:subject",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""value":7.20"#),
        "number literals kept: {body}"
    );
    let bundle = parse(&body);
    let matched = entries(&bundle, "match");
    assert_eq!(
        members(matched[0]),
        sorted(&[
            "id",
            "meta",
            "status",
            "code",
            "subject",
            "effectiveDateTime",
            "valueQuantity"
        ]),
        "category, note and text are not summary elements"
    );
    let included = entries(&bundle, "include");
    assert_eq!(included.len(), 1);
    assert!(is_subsetted(matched[0]) && is_subsetted(included[0]));
    assert!(included[0].get("text").is_none() && included[0].get("contact").is_none());

    // _elements applies to the matches only, unless an item names the included type
    let (_, _, body) = get_text(
        &app,
        "Observation?_elements=valueQuantity&_include=Observation:subject",
        None,
    )
    .await;
    let bundle = parse(&body);
    assert_eq!(
        members(entries(&bundle, "match")[0]),
        sorted(&["id", "meta", "status", "code", "valueQuantity"]),
        "the listed element and the mandatory ones (status is also a modifier)"
    );
    assert_eq!(
        entries(&bundle, "include")[0],
        &parse(&stored_patient),
        "R4: _elements does not apply to included resources"
    );
    let (_, _, body) = get_text(
        &app,
        "Observation?_elements=code,Patient.gender&_include=Observation:subject",
        None,
    )
    .await;
    let bundle = parse(&body);
    assert_eq!(
        members(entries(&bundle, "include")[0]),
        sorted(&["id", "meta", "modifierExtension", "active", "gender"]),
        "a typed item applies to included resources of its type"
    );

    // _summary=text and _summary=data
    let (_, _, body) = get_text(&app, "Observation?_summary=text", None).await;
    let bundle = parse(&body);
    assert_eq!(
        members(entries(&bundle, "match")[0]),
        sorted(&["id", "meta", "text", "status", "code"])
    );
    let (_, _, body) = get_text(
        &app,
        &format!("Observation?_id={observation}&_summary=data"),
        None,
    )
    .await;
    let bundle = parse(&body);
    let data = entries(&bundle, "match")[0];
    let mut expected = parse(&stored_observation);
    expected.as_object_mut().expect("object").remove("text");
    expected["meta"]["tag"] = json!([parse(SUBSETTED)]);
    assert_eq!(data, &expected);

    // _summary=count and _count=0 still count, with _elements too
    for query in [
        "Observation?_summary=count",
        "Observation?_count=0",
        "Observation?_count=0&_elements=status",
    ] {
        let (status, _, body) = get_text(&app, query, None).await;
        let bundle = parse(&body);
        assert_eq!((status, &bundle["total"]), (200, &json!(1)), "{query}");
        assert!(bundle.get("entry").is_none(), "{query}: no entries");
    }

    // POST _search, the Patient compartment and the system level
    let response = app
        .client
        .post(app.url("Observation/_search"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("_summary=true&status=final")
        .send()
        .await
        .expect("post search");
    let bundle: Value = response.json().await.expect("json");
    assert_eq!(match_ids(&bundle), vec![observation.clone()]);
    assert!(entries(&bundle, "match")[0].get("note").is_none());
    let (_, _, body) = get_text(
        &app,
        &format!("Patient/{patient}/Observation?_elements=subject"),
        None,
    )
    .await;
    let bundle = parse(&body);
    assert_eq!(
        members(entries(&bundle, "match")[0]),
        sorted(&["id", "meta", "status", "code", "subject"])
    );
    let (_, _, body) = get_text(
        &app,
        "?_type=Patient,Observation&_elements=gender,code&_sort=_id",
        None,
    )
    .await;
    let bundle = parse(&body);
    for resource in entries(&bundle, "match") {
        assert!(is_subsetted(resource));
        match resource["resourceType"].as_str() {
            Some("Patient") => {
                assert!(resource.get("gender").is_some() && resource.get("name").is_none())
            }
            _ => assert!(resource.get("code").is_some() && resource.get("subject").is_none()),
        }
    }

    // the next links keep the subset
    app.create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "second"}, "note": [{"text": "n"}]}))
        .await;
    let (_, _, body) = get_text(&app, "Observation?_summary=true&_count=1", None).await;
    let first = parse(&body);
    let next = first["link"]
        .as_array()
        .and_then(|links| links.iter().find(|l| l["relation"] == "next"))
        .and_then(|l| l["url"].as_str())
        .expect("a next link")
        .to_owned();
    assert!(next.contains("_summary=true"), "{next}");
    let second: Value = app
        .client
        .get(next)
        .send()
        .await
        .expect("next")
        .json()
        .await
        .expect("json");
    let resource = entries(&second, "match")[0];
    assert!(
        is_subsetted(resource) && resource.get("note").is_none(),
        "{second}"
    );
});

both!(history_serves_subsets, |app: TestApp| async move {
    let (id, _) = create_raw(&app, "Patient", &patient_body()).await;
    let mut updated = parse(&patient_body());
    updated["id"] = json!(id);
    updated["gender"] = json!("other");
    let (status, _) = app.put(&format!("Patient/{id}"), &updated).await;
    assert_eq!(status, 200);

    for path in [
        format!("Patient/{id}/_history?_summary=true"),
        "Patient/_history?_summary=true".to_owned(),
        "_history?_summary=true".to_owned(),
    ] {
        let (status, _, body) = get_text(&app, &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        let bundle = parse(&body);
        let resources: Vec<&Value> = bundle["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| &e["resource"])
            .collect();
        assert_eq!(resources.len(), 2, "{path}");
        for resource in resources {
            assert!(is_subsetted(resource), "{path}");
            assert!(
                resource.get("text").is_none() && resource.get("contact").is_none(),
                "{path}"
            );
            assert!(resource.get("name").is_some(), "{path}");
        }
    }
    let (_, _, body) = get_text(
        &app,
        &format!("Patient/{id}/_history?_elements=gender&_count=1"),
        None,
    )
    .await;
    let bundle = parse(&body);
    let entry = &bundle["entry"][0]["resource"];
    assert_eq!(
        members(entry),
        sorted(&["id", "meta", "modifierExtension", "active", "gender"])
    );
    assert_eq!(entry["gender"], "other", "newest first");
    let next = bundle["link"]
        .as_array()
        .and_then(|links| links.iter().find(|l| l["relation"] == "next"))
        .and_then(|l| l["url"].as_str())
        .expect("a next link");
    assert!(next.contains("_elements=gender"), "{next}");
});
