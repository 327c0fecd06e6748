//! The fhir-sdk R4B model's second opinion (`validation.r4b_check`): a resource that passes
//! R4 validation but that the R4B model refuses is accepted and stored as sent, with a
//! warning where the client can see one.

use serde_json::{Value, json};

use crate::both;
use crate::helpers::{Db, FHIR_JSON, TestApp, spawn_app_with};

/// Valid R4 (`Expression.language` has an extensible binding in R4) that the R4B model
/// refuses (its list of expression languages is closed).
fn plan_definition() -> Value {
    json!({
        "resourceType": "PlanDefinition",
        "status": "draft",
        "action": [{"condition": [{
            "kind": "applicability",
            "expression": {"language": "text/x-custom", "expression": "age > 18"}
        }]}]
    })
}

const LOCATION: &str = "PlanDefinition.action[0].condition[0].expression.language";

/// The one warning of the second opinion in an OperationOutcome, if it is there.
fn r4b_warning(outcome: &Value) -> Option<&Value> {
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    outcome["issue"].as_array()?.iter().find(|issue| {
        issue["severity"] == "warning"
            && issue["code"] == "code-invalid"
            && issue["expression"] == json!([LOCATION])
            && issue["diagnostics"]
                .as_str()
                .is_some_and(|d| d.contains("R4B model") && d.contains("text/x-custom"))
    })
}

both!(
    a_resource_the_r4b_model_refuses_is_stored_as_sent_with_a_warning,
    |app: TestApp| async move {
        let (status, outcome) = app
            .post("PlanDefinition/$validate", &plan_definition())
            .await;
        assert_eq!(status, 200, "a warning does not make it invalid: {outcome}");
        assert!(
            r4b_warning(&outcome).is_some(),
            "$validate shows the warning: {outcome}"
        );

        let response = app
            .client
            .post(app.url("PlanDefinition"))
            .header("content-type", FHIR_JSON)
            .header("prefer", "return=OperationOutcome")
            .body(plan_definition().to_string())
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status().as_u16(), 201);
        let location = response
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .expect("a Location header")
            .to_owned();
        let outcome: Value = response.json().await.expect("an OperationOutcome");
        assert!(
            r4b_warning(&outcome).is_some(),
            "create shows the warning: {outcome}"
        );
        assert!(
            outcome["issue"]
                .as_array()
                .is_some_and(|issues| issues.iter().any(|i| i["severity"] == "information")),
            "and says that it succeeded: {outcome}"
        );

        let path = location
            .strip_prefix(&app.base)
            .and_then(|path| path.split("/_history").next())
            .expect("Location under the base URL");
        let (status, stored) = app.get_json(path).await;
        assert_eq!(status, 200);
        assert_eq!(
            stored["action"],
            plan_definition()["action"],
            "stored as the client sent it"
        );

        let (status, bundle) = app
            .post(
                "",
                &json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
                    "fullUrl": "urn:uuid:0c3f6d7e-8a9b-4c1d-9e2f-3a4b5c6d7e8f",
                    "resource": plan_definition(),
                    "request": {"method": "POST", "url": "PlanDefinition"}
                }]}),
            )
            .await;
        assert_eq!(status, 200, "{bundle}");
        let response = &bundle["entry"][0]["response"];
        assert!(
            response["status"]
                .as_str()
                .is_some_and(|s| s.starts_with("201")),
            "{bundle}"
        );
        assert!(
            r4b_warning(&response["outcome"]).is_some(),
            "the entry's response.outcome carries the warning: {bundle}"
        );

        // Valid for both: no warning.
        let (status, outcome) = app
            .post(
                "PlanDefinition/$validate",
                &json!({"resourceType": "PlanDefinition", "status": "draft"}),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(outcome["issue"][0]["severity"], "information", "{outcome}");
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_opinion_can_be_switched_off() {
    let app = spawn_app_with(Db::Sqlite, |config| config.validation.r4b_check = false).await;
    let (status, outcome) = app
        .post("PlanDefinition/$validate", &plan_definition())
        .await;
    assert_eq!(status, 200, "{outcome}");
    assert!(r4b_warning(&outcome).is_none(), "{outcome}");
    assert_eq!(outcome["issue"][0]["diagnostics"], "the resource is valid");
}
