//! Search: `_text` and `_content`, and the terminology modifiers `:in`, `:not-in`,
//! `:above`, `:below` (tokens and uris) and `:of-type`.

use serde_json::{Value, json};

use crate::both;
use crate::helpers::{TestApp, diagnostics};

/// Runs each query and compares the matches with the expected ids (order ignored).
async fn expect_matches(app: &TestApp, cases: &[(&str, Vec<&String>)]) {
    for (query, expected) in cases {
        let mut ids = app.search_ids(query).await;
        ids.sort();
        let mut expected: Vec<String> = expected.iter().map(|id| (*id).clone()).collect();
        expected.sort();
        assert_eq!(ids, expected, "{query}");
    }
}

/// Each query must be refused with 400 and an OperationOutcome whose diagnostics contain
/// the given text.
async fn expect_refused(app: &TestApp, cases: &[(&str, &str)]) {
    for (query, expected) in cases {
        let (status, outcome) = app.get_json(query).await;
        assert_eq!(status, 400, "{query}: expected 400, got {outcome}");
        let text = diagnostics(&outcome);
        assert!(
            text.contains(expected),
            "{query}: expected {expected:?} in {text:?}"
        );
    }
}

fn narrative(text: &str) -> Value {
    json!({"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{text}</div>")})
}

both!(text_and_content, |app: TestApp| async move {
    let patient = app
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Bonebreak"}]}))
        .await;
    let subject = json!({"reference": format!("Patient/{patient}")});
    let bone = app
        .create(&json!({"resourceType": "Condition", "subject": subject,
            "text": narrative("<p>Metastases to the <b>bone</b> &amp; spine</p>"),
            "code": {"text": "Secondary malignant neoplasm"}}))
        .await;
    let liver = app
        .create(&json!({"resourceType": "Condition", "subject": subject,
            "text": narrative("Liver metastases"),
            "note": [{"text": "Patient reports *fatigue*"}]}))
        .await;
    let fracture = app
        .create(&json!({"resourceType": "Condition", "subject": subject,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "125605004", "display": "Bone fracture"}]}}))
        .await;
    expect_matches(
        &app,
        &[
            ("Condition?_text=metastases", vec![&bone, &liver]),
            ("Condition?_text=METAST", vec![&bone, &liver]),
            ("Condition?_text=bone", vec![&bone]),
            ("Condition?_content=bone", vec![&bone, &fracture]),
            ("Condition?_content=spine", vec![&bone]),
            ("Condition?_text=bone metastases", vec![&bone]),
            ("Condition?_text=bone AND metastases", vec![&bone]),
            ("Condition?_text=bone OR liver", vec![&bone, &liver]),
            (
                "Condition?_text=(bone OR liver) and metastases",
                vec![&bone, &liver],
            ),
            ("Condition?_text=(bone OR liver) fatigue", vec![]),
            ("Condition?_content=(bone OR liver) fatigue", vec![&liver]),
            (
                "Condition?_content=bone,fatigue",
                vec![&bone, &liver, &fracture],
            ),
            ("Condition?_text=metastases&_text=liver", vec![&liver]),
            ("Condition?_content=\"bone fracture\"", vec![&fracture]),
            ("Condition?_content=\"bone fract\"", vec![]),
            ("Condition?_content=bone fract", vec![&fracture]),
            ("Condition?_content=malignant neoplasm", vec![&bone]),
            ("Condition?_content=osteoporosis", vec![]),
            ("Condition?_text=fatigue", vec![]),
            // no codes, systems, ids or references
            ("Condition?_content=125605004", vec![]),
            ("Condition?_content=snomed", vec![]),
            (&format!("Condition?_content={patient}"), vec![]),
            // every type, chains and _has
            ("?_content=bone", vec![&bone, &fracture, &patient]),
            ("?_type=Patient&_content=bone", vec![&patient]),
            ("Patient?_has:Condition:subject:_text=liver", vec![&patient]),
            (
                "Condition?subject._content=bonebreak",
                vec![&bone, &liver, &fracture],
            ),
        ],
    )
    .await;

    // the words follow the current version: an update replaces them, a delete removes them
    let (status, _) = app
        .put(
            &format!("Condition/{fracture}"),
            &json!({"resourceType": "Condition", "id": fracture, "subject": subject,
                "code": {"text": "Wrist sprain"}}),
        )
        .await;
    assert_eq!(status, 200);
    let response = app
        .client
        .delete(app.url(&format!("Condition/{liver}")))
        .send()
        .await
        .expect("delete");
    assert!(response.status().is_success());
    expect_matches(
        &app,
        &[
            ("Condition?_content=bone", vec![&bone]),
            ("Condition?_content=sprain", vec![&fracture]),
            ("Condition?_text=liver", vec![]),
            ("Condition?_text=metastases", vec![&bone]),
        ],
    )
    .await;

    expect_refused(
        &app,
        &[
            ("Condition?_text=(bone", "parenthesis is not closed"),
            ("Condition?_text=bone OR", "ends too early"),
            ("Condition?_text=OR bone", "unexpected OR"),
            ("Condition?_content=-", "no word"),
        ],
    )
    .await;
    // _text is a DomainResource parameter: a Bundle has no narrative
    let response = app
        .client
        .get(app.url("Bundle?_text=x"))
        .header("prefer", "handling=strict")
        .send()
        .await
        .expect("search");
    assert_eq!(response.status().as_u16(), 400, "Bundle?_text (strict)");
    let too_many: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
    expect_refused(
        &app,
        &[(
            &format!("Condition?_content={}", too_many.join("+")),
            "more than 32 words",
        )],
    )
    .await;
});

const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const CONDITION_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";

both!(value_set_membership, |app: TestApp| async move {
    let observation = |status: &str, category: Option<(&str, &str)>| {
        let mut resource =
            json!({"resourceType": "Observation", "status": status, "code": {"text": "x"}});
        if let Some((system, code)) = category {
            resource["category"] = json!([{"coding": [{"system": system, "code": code}]}]);
        }
        resource
    };
    let vitals = app
        .create(&observation(
            "final",
            Some((OBSERVATION_CATEGORY, "vital-signs")),
        ))
        .await;
    let lab = app
        .create(&observation(
            "amended",
            Some((OBSERVATION_CATEGORY, "laboratory")),
        ))
        .await;
    let foreign = app
        .create(&observation(
            "preliminary",
            Some(("http://example.org/categories", "vital-signs")),
        ))
        .await;
    let none = app.create(&observation("final", None)).await;
    let encounter = |code: &str| {
        json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code}})
    };
    let ambulatory = app.create(&encounter("AMB")).await;
    let account = app.create(&encounter("ACCTRECEIVABLE")).await;

    let categories = "http://hl7.org/fhir/ValueSet/observation-category";
    expect_matches(
        &app,
        &[
            (
                &format!("Observation?category:in={categories}"),
                vec![&vitals, &lab],
            ),
            (
                &format!("Observation?category:in={categories}|4.0.1"),
                vec![&vitals, &lab],
            ),
            (
                &format!("Observation?category:not-in={categories}"),
                vec![&foreign, &none],
            ),
            // a code element has no system: it matches by its code
            (
                "Observation?status:in=http://hl7.org/fhir/ValueSet/observation-status",
                vec![&vitals, &lab, &foreign, &none],
            ),
            (
                "Observation?status:not-in=http://hl7.org/fhir/ValueSet/observation-status",
                vec![],
            ),
            // a value set defined by an is-a filter on a v3 code system
            (
                "Encounter?class:in=http://terminology.hl7.org/ValueSet/v3-ActEncounterCode",
                vec![&ambulatory],
            ),
            (
                "Encounter?class:not-in=http://terminology.hl7.org/ValueSet/v3-ActEncounterCode",
                vec![&account],
            ),
            // OR of value sets
            (
                "Encounter?class:in=http://terminology.hl7.org/ValueSet/v3-ActEncounterCode,http://hl7.org/fhir/ValueSet/observation-status",
                vec![&ambulatory],
            ),
        ],
    )
    .await;
    expect_refused(
        &app,
        &[
            (
                "Observation?category:in=http://example.org/ValueSet/unknown",
                "unknown value set http://example.org/ValueSet/unknown",
            ),
            (
                "Observation?code:not-in=http://hl7.org/fhir/ValueSet/observation-codes",
                "unknown value set http://hl7.org/fhir/ValueSet/observation-codes",
            ),
        ],
    )
    .await;
    // an unknown value set is refused whatever the handling
    let response = app
        .client
        .get(app.url("Observation?category:in=http://example.org/ValueSet/unknown"))
        .header("prefer", "handling=lenient")
        .send()
        .await
        .expect("search");
    assert_eq!(response.status().as_u16(), 400);
});

both!(subsumption, |app: TestApp| async move {
    let patient = app.create(&json!({"resourceType": "Patient"})).await;
    let condition = |code: &str| {
        json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{patient}")},
            "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": code}]}})
    };
    let active = app.create(&condition("active")).await;
    let relapse = app.create(&condition("relapse")).await;
    let recurrence = app.create(&condition("recurrence")).await;
    let resolved = app.create(&condition("resolved")).await;
    let status = |status: &str| json!({"resourceType": "Observation", "status": status, "code": {"text": "x"}});
    let amended = app.create(&status("amended")).await;
    let corrected = app.create(&status("corrected")).await;
    let final_ = app.create(&status("final")).await;

    expect_matches(
        &app,
        &[
            (
                &format!("Condition?clinical-status:below={CONDITION_CLINICAL}|active"),
                vec![&active, &relapse, &recurrence],
            ),
            (
                &format!("Condition?clinical-status:below={CONDITION_CLINICAL}|relapse"),
                vec![&relapse],
            ),
            (
                &format!("Condition?clinical-status:above={CONDITION_CLINICAL}|relapse"),
                vec![&active, &relapse],
            ),
            (
                &format!("Condition?clinical-status:above={CONDITION_CLINICAL}|active"),
                vec![&active],
            ),
            (
                &format!("Condition?clinical-status:below={CONDITION_CLINICAL}|inactive"),
                vec![&resolved],
            ),
            (
                &format!("Condition?clinical-status:below={CONDITION_CLINICAL}|no-such-code"),
                vec![],
            ),
            // a code element (no system in the resource)
            (
                "Observation?status:below=http://hl7.org/fhir/observation-status|amended",
                vec![&amended, &corrected],
            ),
            (
                "Observation?status:above=http://hl7.org/fhir/observation-status|corrected",
                vec![&amended, &corrected],
            ),
            (
                "Observation?status:below=http://hl7.org/fhir/observation-status|final",
                vec![&final_],
            ),
        ],
    )
    .await;
    expect_refused(
        &app,
        &[
            (
                "Condition?code:below=http://snomed.info/sct|404684003",
                "unknown code system http://snomed.info/sct",
            ),
            ("Condition?clinical-status:below=active", "take system|code"),
        ],
    )
    .await;
});

both!(uri_above_and_below, |app: TestApp| async move {
    let value_set = |url: &str| json!({"resourceType": "ValueSet", "status": "active", "url": url});
    let v123 = app
        .create(&value_set("http://acme.org/fhir/ValueSet/123"))
        .await;
    let v1234 = app
        .create(&value_set("http://acme.org/fhir/ValueSet/1234"))
        .await;
    let root = app.create(&value_set("http://acme.org/fhir")).await;
    let stem = app.create(&value_set("http://acme.org/fh")).await;
    let other = app
        .create(&value_set("http://other.org/fhir/ValueSet/123"))
        .await;
    expect_matches(
        &app,
        &[
            (
                "ValueSet?url:below=http://acme.org/fhir/",
                vec![&v123, &v1234],
            ),
            (
                "ValueSet?url:below=http://acme.org/fhir/ValueSet/123",
                vec![&v123, &v1234],
            ),
            (
                "ValueSet?url:above=http://acme.org/fhir/ValueSet/123/_history/5",
                vec![&v123, &root],
            ),
            (
                "ValueSet?url:above=http://acme.org/fhir/ValueSet/12",
                vec![&root],
            ),
            ("ValueSet?url:above=http://acme.org/fhir/", vec![&root]),
            (
                "ValueSet?url=http://acme.org/fhir/ValueSet/123",
                vec![&v123],
            ),
        ],
    )
    .await;
    let _ = (stem, other);
});

both!(identifier_of_type, |app: TestApp| async move {
    let v2 = "http://terminology.hl7.org/CodeSystem/v2-0203";
    let patient = |code: &str, value: &str| {
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:example:mrn", "value": value,
            "type": {"coding": [{"system": v2, "code": code}]}}]})
    };
    let record = app.create(&patient("MR", "446053")).await;
    let social = app.create(&patient("SS", "446053")).await;
    let other = app.create(&patient("MR", "999")).await;
    let untyped = app
        .create(&json!({"resourceType": "Patient", "identifier": [{"system": "urn:example:mrn", "value": "446053"}]}))
        .await;
    expect_matches(
        &app,
        &[
            (
                &format!("Patient?identifier:of-type={v2}|MR|446053"),
                vec![&record],
            ),
            (
                &format!("Patient?identifier:of-type={v2}|SS|446053"),
                vec![&social],
            ),
            (
                &format!("Patient?identifier:of-type={v2}|MR|446053,{v2}|MR|999"),
                vec![&record, &other],
            ),
            (&format!("Patient?identifier:of-type={v2}|MR|000"), vec![]),
            ("Patient?identifier:of-type=http://other|MR|446053", vec![]),
            (
                "Patient?identifier=446053",
                vec![&record, &social, &untyped],
            ),
        ],
    )
    .await;
    // the type goes with the current version
    let (status, _) = app
        .put(
            &format!("Patient/{record}"),
            &json!({"resourceType": "Patient", "id": record,
                "identifier": [{"system": "urn:example:mrn", "value": "446053"}]}),
        )
        .await;
    assert_eq!(status, 200);
    expect_matches(
        &app,
        &[(
            &format!("Patient?identifier:of-type={v2}|MR|446053"),
            vec![],
        )],
    )
    .await;
    expect_refused(
        &app,
        &[
            ("Patient?identifier:of-type=MR|446053", "all three given"),
            (
                &format!("Patient?identifier:of-type={v2}||446053"),
                "all three given",
            ),
        ],
    )
    .await;
});
