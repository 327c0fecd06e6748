//! Concurrent writes: conditional creates do not duplicate, creates of one client-chosen id do
//! not fail, and concurrent transaction Bundles sharing conditional entries all succeed.

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::json;

use crate::both;
use crate::helpers::{TestApp, match_ids};

const CLIENTS: usize = 8;

both!(
    concurrent_conditional_creates_make_one_resource,
    |app: TestApp| async move {
        let org = json!({"resourceType": "Organization", "name": "General",
                         "identifier": [{"system": "urn:org", "value": "g1"}]});
        let requests = (0..CLIENTS).map(|_| {
            app.client
                .post(app.url("Organization"))
                .header("content-type", crate::helpers::FHIR_JSON)
                .header("if-none-exist", "identifier=urn:org|g1")
                .body(org.to_string())
                .send()
        });
        let statuses: Vec<u16> = join_all(requests)
            .await
            .into_iter()
            .map(|r| r.expect("response").status().as_u16())
            .collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 201).count(),
            1,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            CLIENTS - 1,
            "{statuses:?}"
        );
        let (_, bundle) = app.get_json("Organization?identifier=urn:org|g1").await;
        assert_eq!(match_ids(&bundle).len(), 1);
    }
);

both!(
    concurrent_update_as_create_of_one_id_all_succeed,
    |app: TestApp| async move {
        let app = &app;
        let requests = (0..CLIENTS).map(|i| {
            let body = json!({"resourceType": "Patient", "id": "same", "gender": "other",
                              "name": [{"family": format!("F{i}")}]});
            async move { app.send(Method::PUT, "Patient/same", &body).await }
        });
        let statuses: Vec<u16> = join_all(requests)
            .await
            .into_iter()
            .map(|r| r.status().as_u16())
            .collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 201).count(),
            1,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            CLIENTS - 1,
            "{statuses:?}"
        );
        let (status, history) = app.get_json("Patient/same/_history").await;
        assert_eq!(status, 200);
        assert_eq!(history["entry"].as_array().map(Vec::len), Some(CLIENTS));
    }
);

both!(
    concurrent_transactions_share_conditional_entries,
    |app: TestApp| async move {
        let bundle = |i: usize| {
            json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"fullUrl": "urn:uuid:0d4cc2d6-0000-4000-8000-000000000001",
                 "resource": {"resourceType": "Organization", "name": "Shared",
                              "identifier": [{"system": "urn:org", "value": "shared"}]},
                 "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=urn:org|shared"}},
                {"fullUrl": "urn:uuid:0d4cc2d6-0000-4000-8000-000000000002",
                 "resource": {"resourceType": "Practitioner", "name": [{"family": "Shared"}],
                              "identifier": [{"system": "urn:npi", "value": "p1"}]},
                 "request": {"method": "POST", "url": "Practitioner", "ifNoneExist": "identifier=urn:npi|p1"}},
                {"resource": {"resourceType": "Patient", "name": [{"family": format!("P{i}")}],
                              "managingOrganization": {"reference": "urn:uuid:0d4cc2d6-0000-4000-8000-000000000001"},
                              "generalPractitioner": [{"reference": "urn:uuid:0d4cc2d6-0000-4000-8000-000000000002"}]},
                 "request": {"method": "POST", "url": "Patient"}}
            ]})
        };
        let app = &app;
        let results = join_all((0..CLIENTS).map(|i| {
            let body = bundle(i);
            async move { app.post("", &body).await }
        }))
        .await;
        for (status, response) in &results {
            assert_eq!(*status, 200, "{response}");
        }
        let (_, orgs) = app.get_json("Organization?identifier=urn:org|shared").await;
        let (_, practitioners) = app.get_json("Practitioner?identifier=urn:npi|p1").await;
        assert_eq!(match_ids(&orgs).len(), 1);
        assert_eq!(match_ids(&practitioners).len(), 1);
        let org = &match_ids(&orgs)[0];
        let (_, patients) = app
            .get_json(&format!(
                "Patient?organization=Organization/{org}&_count=50"
            ))
            .await;
        assert_eq!(match_ids(&patients).len(), CLIENTS);
    }
);
