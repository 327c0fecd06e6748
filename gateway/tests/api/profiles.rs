//! Profiles a resource claims in `meta.profile` are enforced on writes and by `$validate`,
//! which also checks against a `profile` it is given.

use fhir_profiles::validate::UnknownProfile;
use serde_json::{Value, json};

use crate::both;
use crate::helpers::{Db, TestApp, spawn_app_with};

const VITALSIGNS: &str = "http://hl7.org/fhir/StructureDefinition/vitalsigns";
const BP: &str = "http://hl7.org/fhir/StructureDefinition/bp";

/// A heart rate with everything `vitalsigns` requires except its category.
fn heart_rate_without_category(claims: &[&str]) -> Value {
    let mut resource = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/example"},
        "effectiveDateTime": "2024-05-01T08:30:00Z",
        "valueQuantity": {"value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}
    });
    if !claims.is_empty() {
        resource["meta"] = json!({"profile": claims});
    }
    resource
}

fn with_category(mut resource: Value) -> Value {
    resource["category"] = json!([{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
        "code": "vital-signs"
    }]}]);
    resource
}

/// (severity, code, expression) of each issue of an OperationOutcome.
fn issues(outcome: &Value) -> Vec<(String, String, String)> {
    assert_eq!(
        outcome["resourceType"], "OperationOutcome",
        "expected an OperationOutcome, got {outcome}"
    );
    outcome["issue"]
        .as_array()
        .expect("issues")
        .iter()
        .map(|issue| {
            (
                issue["severity"].as_str().unwrap_or_default().to_owned(),
                issue["code"].as_str().unwrap_or_default().to_owned(),
                issue["expression"][0]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

fn issue(severity: &str, code: &str, expression: &str) -> (String, String, String) {
    (severity.to_owned(), code.to_owned(), expression.to_owned())
}

both!(
    a_claimed_profile_is_enforced_on_create_and_update,
    |app: TestApp| async move {
        for claim in [VITALSIGNS.to_owned(), format!("{VITALSIGNS}|4.0.1")] {
            let (status, outcome) = app
                .post("Observation", &heart_rate_without_category(&[&claim]))
                .await;
            assert_eq!(status, 422, "claiming {claim} without category: {outcome}");
            assert_eq!(
                issues(&outcome),
                [issue("error", "required", "Observation.category")],
                "claiming {claim}"
            );
            let diagnostics = outcome["issue"][0]["diagnostics"]
                .as_str()
                .unwrap_or_default();
            assert!(
                diagnostics.contains(VITALSIGNS) && diagnostics.contains("Observation.category"),
                "the diagnostics name the element and the profile: {diagnostics}"
            );
        }

        let id = app.create(&heart_rate_without_category(&[])).await;
        let id = id.as_str();
        let id_of = |mut resource: Value| {
            resource["id"] = json!(id);
            resource
        };
        let (status, body) = app
            .put(
                &format!("Observation/{id}"),
                &id_of(heart_rate_without_category(&[VITALSIGNS])),
            )
            .await;
        assert_eq!(status, 422, "an update claiming vitalsigns: {body}");
        let (status, body) = app
            .put(
                &format!("Observation/{id}"),
                &id_of(with_category(heart_rate_without_category(&[VITALSIGNS]))),
            )
            .await;
        assert_eq!(status, 200, "a conforming update: {body}");
        assert_eq!(body["meta"]["profile"][0], VITALSIGNS);
    }
);

both!(
    a_chained_profile_enforces_its_base_and_malformed_resources_stay_400,
    |app: TestApp| async move {
        // bp derives from vitalsigns: missing the category breaks bp too, with its own rules
        let blood_pressure = json!({
            "resourceType": "Observation",
            "meta": {"profile": [BP]},
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "subject": {"reference": "Patient/example"},
            "effectiveDateTime": "2024-05-01",
            "component": [{
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
            }]
        });
        let (status, outcome) = app.post("Observation", &blood_pressure).await;
        assert_eq!(status, 422, "{outcome}");
        assert_eq!(
            issues(&outcome),
            [
                issue("error", "required", "Observation.category"),
                issue("error", "required", "Observation.component"),
                issue("error", "required", "Observation.component"),
            ],
            "vitalsigns' category, bp's two components and its diastolic slice"
        );

        // an unknown element and a profile issue: malformed wins (400), every issue listed
        let mut malformed = heart_rate_without_category(&[VITALSIGNS]);
        malformed["colour"] = json!("red");
        let (status, outcome) = app.post("Observation", &malformed).await;
        assert_eq!(status, 400, "{outcome}");
        assert_eq!(
            issues(&outcome),
            [
                issue("error", "structure", "Observation.colour"),
                issue("error", "required", "Observation.category"),
            ]
        );
    }
);

both!(
    a_transaction_entry_that_breaks_its_profile_rolls_back,
    |app: TestApp| async move {
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": {"resourceType": "Patient", "active": true},
                 "request": {"method": "POST", "url": "Patient"}},
                {"resource": heart_rate_without_category(&[VITALSIGNS]),
                 "request": {"method": "POST", "url": "Observation"}}
            ]
        });
        let (status, outcome) = app.post("", &bundle).await;
        assert_eq!(status, 422, "{outcome}");
        assert_eq!(
            issues(&outcome),
            [issue(
                "error",
                "required",
                "Bundle.entry[1].resource.Observation.category"
            )]
        );
        assert_eq!(app.search_ids("Patient").await, Vec::<String>::new());
    }
);

both!(validate_checks_a_given_profile, |app: TestApp| async move {
    let unclaimed = heart_rate_without_category(&[]);
    let (status, outcome) = app.post("Observation/$validate", &unclaimed).await;
    assert_eq!(status, 200, "nothing claimed, nothing asked: {outcome}");
    assert_eq!(
        issues(&outcome),
        [issue("information", "informational", "")]
    );

    let query = format!("Observation/$validate?profile={VITALSIGNS}");
    let (status, outcome) = app.post(&query, &unclaimed).await;
    assert_eq!(status, 422, "?profile=: {outcome}");
    assert_eq!(
        issues(&outcome),
        [issue("error", "required", "Observation.category")]
    );

    let parameters = |resource: &Value, profile: &str| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": resource},
            {"name": "profile", "valueUri": profile}
        ]})
    };
    let (status, outcome) = app
        .post("Observation/$validate", &parameters(&unclaimed, VITALSIGNS))
        .await;
    assert_eq!(status, 422, "Parameters profile: {outcome}");
    let (status, outcome) = app
        .post(
            "Observation/$validate",
            &parameters(&with_category(unclaimed.clone()), VITALSIGNS),
        )
        .await;
    assert_eq!(status, 200, "a conforming heart rate: {outcome}");

    // instance level, a derived profile: bp wants its code and components
    let id = app.create(&with_category(unclaimed.clone())).await;
    let mut stored = with_category(unclaimed.clone());
    stored["id"] = json!(id);
    let (status, outcome) = app
        .post(
            &format!("Observation/{id}/$validate"),
            &parameters(&stored, &format!("{BP}|4.0.1")),
        )
        .await;
    assert_eq!(status, 422, "a heart rate is no blood pressure: {outcome}");
    let expressions: Vec<String> = issues(&outcome).into_iter().map(|i| i.2).collect();
    assert_eq!(
        expressions,
        [
            "Observation.code.coding",
            "Observation.valueQuantity",
            "Observation.component"
        ]
    );

    for profile in [
        "http://example.org/StructureDefinition/unknown".to_owned(),
        format!("{VITALSIGNS}|3.0.2"),
    ] {
        let (status, outcome) = app
            .post("Observation/$validate", &parameters(&unclaimed, &profile))
            .await;
        assert_eq!(status, 400, "{profile}: {outcome}");
        assert_eq!(
            issues(&outcome),
            [issue("error", "not-supported", "")],
            "an unknown profile cannot be validated against"
        );
    }
});

both!(
    unknown_claims_are_accepted_with_a_warning_by_default,
    |app: TestApp| async move {
        let claimed = with_category(heart_rate_without_category(&[
            "http://example.org/StructureDefinition/my-heart-rate",
        ]));
        let (status, body) = app.post("Observation", &claimed).await;
        assert_eq!(status, 201, "{body}");
        let (status, outcome) = app.post("Observation/$validate", &claimed).await;
        assert_eq!(status, 200, "{outcome}");
        assert_eq!(
            issues(&outcome),
            [issue(
                "warning",
                "not-supported",
                "Observation.meta.profile[0]"
            )]
        );

        let (status, metadata) = app.get_json("metadata").await;
        assert_eq!(status, 200);
        let observation = metadata["rest"][0]["resource"]
            .as_array()
            .and_then(|resources| resources.iter().find(|r| r["type"] == "Observation"))
            .expect("Observation in the CapabilityStatement");
        let supported = observation["supportedProfile"]
            .as_array()
            .expect("supportedProfile");
        assert!(
            supported.contains(&json!(VITALSIGNS)) && supported.contains(&json!(BP)),
            "{supported:?}"
        );
    }
);

async fn unknown_claims_rejected_when_configured(db: Db) {
    let app = spawn_app_with(db, |config| {
        config.validation.unknown_profile = UnknownProfile::Reject;
    })
    .await;
    let claimed = with_category(heart_rate_without_category(&[
        VITALSIGNS,
        "http://example.org/StructureDefinition/my-heart-rate",
    ]));
    let (status, outcome) = app.post("Observation", &claimed).await;
    assert_eq!(status, 422, "{outcome}");
    assert_eq!(
        issues(&outcome),
        [issue(
            "error",
            "not-supported",
            "Observation.meta.profile[1]"
        )]
    );
    let known_only = with_category(heart_rate_without_category(&[VITALSIGNS]));
    let (status, body) = app.post("Observation", &known_only).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_claims_are_rejected_when_configured_postgres() {
    unknown_claims_rejected_when_configured(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_claims_are_rejected_when_configured_sqlite() {
    unknown_claims_rejected_when_configured(Db::Sqlite).await;
}
