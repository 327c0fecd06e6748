//! Search: parameter types, modifiers, prefixes, chains, _has, includes, sorting, paging.

use serde_json::json;

use crate::both;
use crate::helpers::{TestApp, match_ids};

async fn fixture(app: &TestApp) -> (String, String, String, String) {
    let ann = app.create(&json!({"resourceType": "Patient", "name": [{"family": "Müller", "given": ["Ann"]}], "gender": "female",
        "birthDate": "1970-03-04", "identifier": [{"system": "urn:mrn", "value": "1"}]})).await;
    let bob = app.create(&json!({"resourceType": "Patient", "name": [{"family": "Miller", "given": ["Bob"]}], "gender": "male",
        "birthDate": "1985", "identifier": [{"system": "urn:mrn", "value": "2"}]})).await;
    let hba1c = app.create(&json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}], "text": "Hemoglobin A1c"},
        "subject": {"reference": format!("Patient/{ann}")}, "effectiveDateTime": "2020-06-01T10:00:00Z",
        "valueQuantity": {"value": 7.20, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}})).await;
    let bp = app.create(&json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": format!("Patient/{bob}")}, "effectivePeriod": {"start": "2021-01-01", "end": "2021-01-02"},
        "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                       "valueQuantity": {"value": 140, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]})).await;
    (ann, bob, hba1c, bp)
}

both!(
    parameter_types_modifiers_and_prefixes,
    |app: TestApp| async move {
        let (ann, bob, hba1c, bp) = fixture(&app).await;
        let cases: Vec<(&str, Vec<&String>)> = vec![
            ("Patient?name=mull", vec![&ann]),
            ("Patient?name=muller", vec![&ann]),
            ("Patient?family:exact=Müller", vec![&ann]),
            ("Patient?family:exact=müller", vec![]),
            ("Patient?name:contains=ill", vec![&bob]),
            ("Patient?gender=female", vec![&ann]),
            ("Patient?gender:not=female", vec![&bob]),
            ("Patient?identifier=urn:mrn|2", vec![&bob]),
            ("Patient?identifier=|2", vec![]),
            ("Patient?birthdate=1970", vec![&ann]),
            ("Patient?birthdate=ge1980", vec![&bob]),
            ("Patient?birthdate=lt1980-01-01", vec![&ann]),
            ("Patient?birthdate=1985-06-01", vec![]),
            ("Patient?birthdate=1970-03-04,1985", vec![&ann, &bob]),
            ("Patient?name=ann&gender=male", vec![]),
            ("Observation?code=http://loinc.org|4548-4", vec![&hba1c]),
            ("Observation?code:text=hemoglobin", vec![&hba1c]),
            ("Observation?subject=Patient/unknown", vec![]),
            ("Observation?value-quantity=7.2", vec![&hba1c]),
            (
                "Observation?value-quantity=gt7|http://unitsofmeasure.org|%",
                vec![&hba1c],
            ),
            ("Observation?value-quantity=lt7", vec![]),
            ("Observation?date=2020-06", vec![&hba1c]),
            ("Observation?date=ge2021-01-01", vec![&bp]),
            (
                "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt130",
                vec![&bp],
            ),
            (
                "Observation?component-code-value-quantity=http://loinc.org|8480-6$lt130",
                vec![],
            ),
            ("Observation?subject:missing=false", vec![&hba1c, &bp]),
            ("Observation?subject.name=miller", vec![&bp]),
            ("Observation?subject:Patient.gender=female", vec![&hba1c]),
            ("Patient?_has:Observation:subject:code=4548-4", vec![&ann]),
        ];
        for (query, expected) in cases {
            let mut ids = app.search_ids(query).await;
            ids.sort();
            let mut expected: Vec<String> = expected.into_iter().cloned().collect();
            expected.sort();
            assert_eq!(ids, expected, "{query}");
        }
        let ids = app.search_ids(&format!("Observation?subject={ann}")).await;
        assert_eq!(ids, vec![hba1c.clone()]);
        let ids = app
            .search_ids(&format!("Observation?patient=Patient/{bob}"))
            .await;
        assert_eq!(ids, vec![bp.clone()]);
        let ids = app
            .search_ids(&format!("Observation?_id={hba1c},{bp}"))
            .await;
        assert_eq!(ids.len(), 2);
        let ids = app.search_ids(&format!("Patient/{ann}/Observation")).await;
        assert_eq!(ids, vec![hba1c.clone()], "Patient compartment search");
    }
);

both!(
    patient_everything_returns_the_patient_and_their_compartment,
    |app: TestApp| async move {
        let (ann, bob, hba1c, bp) = fixture(&app).await;
        let mut ids = app.search_ids(&format!("Patient/{ann}/$everything")).await;
        ids.sort();
        let mut expected = vec![ann.clone(), hba1c.clone()];
        expected.sort();
        assert_eq!(
            ids, expected,
            "ann's record and nothing of bob's ({bob}, {bp})"
        );
        let ids = app
            .search_ids(&format!("Patient/{ann}/$everything?_type=Observation"))
            .await;
        assert_eq!(ids, vec![hba1c.clone()]);
        let ids = app
            .search_ids(&format!("Patient/{ann}/$everything?_since=2999-01-01"))
            .await;
        assert!(ids.is_empty(), "nothing changed since then: {ids:?}");
        // paging: one resource a page, every page linked
        let (status, page) = app
            .get_json(&format!("Patient/{ann}/$everything?_count=1"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(page["total"], 2);
        assert_eq!(page["entry"].as_array().map(Vec::len), Some(1));
        let next = page["link"]
            .as_array()
            .and_then(|links| links.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .expect("a next link")
            .to_owned();
        assert!(
            next.contains("/Patient/") && next.contains("$everything"),
            "{next}"
        );
        let page = app
            .client
            .get(&next)
            .send()
            .await
            .expect("sent")
            .json::<serde_json::Value>()
            .await
            .expect("json");
        assert_eq!(page["entry"].as_array().map(Vec::len), Some(1));
        let (status, outcome) = app
            .get_json(&format!("Patient/{ann}/$everything?_type=Organization"))
            .await;
        assert_eq!(status, 400, "{outcome}");
        let (status, outcome) = app.get_json("Patient/nobody/$everything").await;
        assert_eq!(status, 404, "{outcome}");
    }
);

both!(
    includes_sorting_totals_and_paging,
    |app: TestApp| async move {
        let (ann, bob, hba1c, bp) = fixture(&app).await;
        let (_, bundle) = app
            .get_json("Observation?_include=Observation:subject")
            .await;
        let included: Vec<&str> = bundle["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["search"]["mode"] == "include")
            .map(|e| e["resource"]["id"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(included.len(), 2, "both patients included once: {bundle}");
        assert!(included.contains(&ann.as_str()) && included.contains(&bob.as_str()));
        let (_, bundle) = app
            .get_json(&format!(
                "Patient?_id={ann}&_revinclude=Observation:subject"
            ))
            .await;
        let revincluded: Vec<&str> = bundle["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["search"]["mode"] == "include")
            .map(|e| e["resource"]["id"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(revincluded, vec![hba1c.as_str()]);

        assert_eq!(
            app.search_ids("Patient?_sort=birthdate").await,
            vec![ann.clone(), bob.clone()]
        );
        assert_eq!(
            app.search_ids("Patient?_sort=-birthdate").await,
            vec![bob.clone(), ann.clone()]
        );
        assert_eq!(
            app.search_ids("Patient?_sort=family").await,
            vec![bob.clone(), ann.clone()],
            "miller < muller"
        );
        let _ = bp;

        let (_, count) = app.get_json("Observation?_summary=count").await;
        assert_eq!(count["total"], 2);
        assert!(count.get("entry").is_none());

        // 23 more patients, paged 5 at a time with stable next links and no duplicates
        for n in 0..23 {
            app.create(&json!({"resourceType": "Patient", "name": [{"family": format!("Page{n:02}")}], "birthDate": format!("19{:02}-01-01", 50 + n)})).await;
        }
        for query in [
            "Patient?_count=5",
            "Patient?_count=5&_sort=-birthdate",
            "Patient?_count=5&_sort=family,_id",
        ] {
            let mut seen = Vec::new();
            let (status, mut page) = app.get_json(query).await;
            assert_eq!(status, 200);
            assert_eq!(page["total"], 25, "{query}: the total counts every match");
            loop {
                let ids = match_ids(&page);
                assert!(ids.len() <= 5);
                seen.extend(ids);
                let next = page["link"]
                    .as_array()
                    .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
                    .map(|l| l["url"].as_str().unwrap_or("").to_owned());
                let Some(next) = next else { break };
                let response = app.client.get(next).send().await.expect("next page");
                page = response.json().await.expect("json");
            }
            let unique: std::collections::HashSet<&String> = seen.iter().collect();
            assert_eq!(
                (seen.len(), unique.len()),
                (25, 25),
                "{query}: every match exactly once"
            );
        }
        let sorted = app.search_ids("Patient?_count=100&_sort=-birthdate").await;
        let (_, first) = app.get_json(&format!("Patient/{}", sorted[0])).await;
        assert_eq!(
            first["birthDate"], "1985",
            "descending birthdate puts 1985 first"
        );

        // POST _search with a form body equals GET
        let response = app
            .client
            .post(app.url("Patient/_search"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("gender=female")
            .send()
            .await
            .expect("post search");
        let bundle: serde_json::Value = response.json().await.expect("json");
        assert_eq!(match_ids(&bundle), vec![ann.clone()]);
    }
);

both!(common_parameters_across_types, |app: TestApp| async move {
    let meta = json!({"tag": [{"system": "urn:t", "code": "x"}],
                          "security": [{"system": "urn:s", "code": "R"}],
                          "profile": ["http://example.org/p"]});
    let patient = app
        .create(&json!({"resourceType": "Patient", "meta": meta, "name": [{"family": "Tagged"}]}))
        .await;
    let observation = app
            .create(&json!({"resourceType": "Observation", "meta": {"tag": [{"system": "urn:t", "code": "x"}]},
                            "status": "final", "code": {"text": "t"}}))
            .await;
    let _untagged = app
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Plain"}]}))
        .await;
    let mut both = vec![patient.clone(), observation.clone()];
    both.sort();
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    assert_eq!(sorted(app.search_ids("?_tag=urn:t|x").await), both);
    assert_eq!(
        sorted(
            app.search_ids("?_type=Patient,Observation&_tag=urn:t|x")
                .await
        ),
        both
    );
    assert_eq!(
        app.search_ids("?_type=Patient&_tag=urn:t|x").await,
        vec![patient.clone()]
    );
    assert_eq!(
        app.search_ids("?_security=urn:s|R").await,
        vec![patient.clone()]
    );
    assert_eq!(
        app.search_ids("?_profile=http://example.org/p").await,
        vec![patient.clone()]
    );
    assert_eq!(
        sorted(app.search_ids("?_tag:missing=false").await),
        both,
        ":missing across types"
    );
    // a parameter that is not common to every type is refused across types (strict)
    let response = app
        .client
        .get(app.url("?name=Tagged"))
        .header("prefer", "handling=strict")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 400);
});

/// The index rows of a resource, per table, sorted: what searches see of it.
async fn index_rows(app: &TestApp, id: &str) -> Vec<String> {
    use sqlx::Row as _;
    let mut conn = app.database_connection().await;
    let rkey: i64 =
        sqlx::query("SELECT rkey FROM resource WHERE resource_type = 'Patient' AND id = $1")
            .bind(id)
            .fetch_one(&mut conn)
            .await
            .expect("the resource row")
            .try_get(0)
            .expect("rkey");
    let mut rows = Vec::new();
    for (table, columns) in [
        (
            "idx_string",
            "param || '|' || grp || '|' || norm || '|' || exact",
        ),
        (
            "idx_token",
            "param || '|' || grp || '|' || COALESCE(system, '-') || '|' || COALESCE(code, '-') || '|' || COALESCE(text, '-')",
        ),
        ("idx_date", "param || '|' || grp || '|' || lo || '|' || hi"),
        ("idx_word", "word || '|' || narrative"),
        (
            "idx_reference",
            "param || '|' || grp || '|' || COALESCE(target_type, '-') || '|' || COALESCE(target_id, '-') || '|' || COALESCE(url, '-')",
        ),
        ("idx_uri", "param || '|' || grp || '|' || value"),
    ] {
        // audited: table and columns are constants of this test
        let sql = format!("SELECT {columns} AS r FROM {table} WHERE rkey = $1");
        for row in sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(rkey)
            .fetch_all(&mut conn)
            .await
            .expect("index rows")
        {
            rows.push(format!(
                "{table}:{}",
                row.try_get::<String, _>("r").expect("row")
            ));
        }
    }
    rows.sort();
    rows
}

both!(
    id_and_last_updated_are_answered_from_the_resource_row_and_unindexed_parameters_are_refused,
    |app: TestApp| async move {
        let id = app
            .create(&json!({"resourceType": "Patient", "name": [{"family": "Rowan"}]}))
            .await;
        let rows = index_rows(&app, &id).await;
        assert!(rows.iter().any(|r| r.contains("rowan")), "{rows:?}");
        assert!(
            !rows
                .iter()
                .any(|r| r.starts_with("idx_token:_id|") || r.starts_with("idx_date:_lastUpdated|")),
            "no index rows for what the resource row holds: {rows:?}"
        );
        assert_eq!(
            app.search_ids(&format!("Patient?_id={id}")).await,
            vec![id.clone()]
        );
        assert_eq!(
            app.search_ids(&format!("Patient?_lastUpdated=ge2000-01-01&_id={id}"))
                .await,
            vec![id.clone()]
        );
        assert!(
            app.search_ids(&format!("Patient?_lastUpdated=lt2000-01-01&_id={id}"))
                .await
                .is_empty()
        );
        // chained and reverse-chained `_id` are answered from the row too
        let observation = app
            .create(&json!({"resourceType": "Observation", "status": "final",
                "code": {"text": "x"}, "subject": {"reference": format!("Patient/{id}")}}))
            .await;
        assert_eq!(
            app.search_ids(&format!("Observation?subject._id={id}"))
                .await,
            vec![observation.clone()]
        );
        assert_eq!(
            app.search_ids(&format!(
                "Patient?_has:Observation:subject:_id={observation}"
            ))
            .await,
            vec![id.clone()]
        );
        // what has no index rows cannot be searched with a modifier, nor an AuditEvent's
        // entity type and role: refused (strict handling) or ignored and said so (lenient)
        for (query, named) in [
            (format!("Patient?_id:not={id}"), ":not"),
            ("Patient?_lastUpdated:missing=true".to_owned(), ":missing"),
            ("AuditEvent?entity-type=2".to_owned(), "entity-type"),
            ("AuditEvent?entity-role=1".to_owned(), "entity-role"),
        ] {
            let response = app
                .client
                .get(app.url(&query))
                .header("prefer", "handling=strict")
                .send()
                .await
                .expect("request");
            assert_eq!(response.status().as_u16(), 400, "{query}");
            let outcome: serde_json::Value = response.json().await.expect("an OperationOutcome");
            assert_eq!(outcome["resourceType"], "OperationOutcome", "{query}");
            assert!(outcome.to_string().contains(named), "{query}: {outcome}");
            let (status, bundle) = app.get_json(&query).await;
            assert_eq!(status, 200, "{query}: {bundle}");
            assert!(
                bundle["entry"]
                    .as_array()
                    .is_some_and(|entries| entries.iter().any(|e| {
                        e["search"]["mode"] == "outcome" && e.to_string().contains(named)
                    })),
                "{query}: the searchset says what it ignored: {bundle}"
            );
        }
        // and the CapabilityStatement offers only what is answered
        let (_, capabilities) = app.get_json("metadata").await;
        let audit_params: Vec<&str> = capabilities["rest"][0]["resource"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["type"] == "AuditEvent")
            .expect("AuditEvent")["searchParam"]
            .as_array()
            .expect("its parameters")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for offered in [
            "_id",
            "_lastUpdated",
            "entity",
            "patient",
            "agent",
            "date",
            "outcome",
        ] {
            assert!(
                audit_params.contains(&offered),
                "{offered}: {audit_params:?}"
            );
        }
        for withheld in ["entity-type", "entity-role"] {
            assert!(
                !audit_params.contains(&withheld),
                "{withheld}: {audit_params:?}"
            );
        }
    }
);

both!(
    an_update_leaves_exactly_the_new_versions_index_rows,
    |app: TestApp| async move {
        let first = json!({"resourceType": "Patient", "name": [{"family": "Alpha", "given": ["Ann"]}],
            "gender": "female", "birthDate": "1970-03-04", "identifier": [{"system": "urn:mrn", "value": "I-1"}]});
        let id = app.create(&first).await;
        let created = index_rows(&app, &id).await;
        assert!(created.iter().any(|r| r.contains("alpha")), "{created:?}");
        // a name changed, an address added, the rest unchanged
        let second = json!({"resourceType": "Patient", "id": id, "name": [{"family": "Beta", "given": ["Ann"]}],
            "gender": "female", "birthDate": "1970-03-04", "identifier": [{"system": "urn:mrn", "value": "I-1"}],
            "address": [{"city": "Springfield"}]});
        let (status, _) = app.put(&format!("Patient/{id}"), &second).await;
        assert_eq!(status, 200);
        let updated = index_rows(&app, &id).await;
        // what a fresh create of the same content indexes, row for row
        let mut fresh = second.clone();
        fresh.as_object_mut().expect("an object").remove("id");
        let twin = app.create(&fresh).await;
        let expected = index_rows(&app, &twin).await;
        assert_eq!(
            updated, expected,
            "the updated resource's rows are those of its new content"
        );
        for (query, matches) in [
            ("Patient?family=alpha", 0),
            ("Patient?family=beta", 2),
            ("Patient?address-city=springfield", 2),
            ("Patient?identifier=urn:mrn|I-1", 2),
            ("Patient?birthdate=1970-03-04", 2),
            ("Patient?_content=alpha", 0),
        ] {
            assert_eq!(app.search_ids(query).await.len(), matches, "{query}");
        }
        // the same content again: a new version, the same rows
        let (status, _) = app.put(&format!("Patient/{id}"), &second).await;
        assert_eq!(status, 200);
        assert_eq!(
            index_rows(&app, &id).await,
            expected,
            "an unchanged update keeps the rows"
        );
        // a deletion removes them all
        let status = app
            .client
            .delete(app.url(&format!("Patient/{id}")))
            .send()
            .await
            .expect("a delete")
            .status();
        assert!(status.is_success(), "{status}");
        assert_eq!(index_rows(&app, &id).await, Vec::<String>::new());
        // and an update of the deleted resource brings back the rows of its new content
        let (status, _) = app
            .put(
                &format!("Patient/{id}"),
                &first
                    .as_object()
                    .map(|o| {
                        let mut o = o.clone();
                        o.insert("id".into(), json!(id));
                        serde_json::Value::Object(o)
                    })
                    .expect("an object"),
            )
            .await;
        assert!(status == 200 || status == 201, "{status}");
        assert_eq!(index_rows(&app, &id).await, created);
    }
);

both!(
    an_update_empties_the_index_tables_its_new_content_does_not_use,
    |app: TestApp| async move {
        let organization = app
            .create(&json!({"resourceType": "Organization", "name": "Clinic"}))
            .await;
        let with_links = |id: Option<&str>| {
            let mut patient = json!({"resourceType": "Patient", "name": [{"family": "Linked"}],
                "meta": {"profile": ["http://example.org/p"]},
                "managingOrganization": {"reference": format!("Organization/{organization}")}});
            if let Some(id) = id {
                patient["id"] = json!(id);
            }
            patient
        };
        let without_links =
            |id: &str| json!({"resourceType": "Patient", "id": id, "name": [{"family": "Linked"}]});
        let linked = |rows: &[String]| {
            rows.iter()
                .filter(|r| r.starts_with("idx_reference:") || r.starts_with("idx_uri:"))
                .count()
        };
        // one created alone (its index tables known) and four in one transaction (created
        // together, on PostgreSQL in bulk: their index tables not recorded)
        let alone = app.create(&with_links(None)).await;
        let (status, response) = app
            .post(
                "",
                &json!({"resourceType": "Bundle", "type": "transaction",
                    "entry": (0..4).map(|_| json!({"resource": with_links(None),
                        "request": {"method": "POST", "url": "Patient"}})).collect::<Vec<_>>()}),
            )
            .await;
        assert_eq!(status, 200, "{response}");
        let together: Vec<String> = response["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| {
                e["response"]["location"]
                    .as_str()
                    .and_then(|l| l.split("Patient/").nth(1))
                    .and_then(|l| l.split('/').next())
                    .expect("a location")
                    .to_owned()
            })
            .collect();
        let by_organization = format!("Patient?organization=Organization/{organization}");
        assert_eq!(app.search_ids(&by_organization).await.len(), 5);
        for id in std::iter::once(&alone).chain(&together) {
            assert_eq!(linked(&index_rows(&app, id).await), 2, "{id}");
            let (status, _) = app.put(&format!("Patient/{id}"), &without_links(id)).await;
            assert_eq!(status, 200);
            assert_eq!(
                linked(&index_rows(&app, id).await),
                0,
                "{id}: rows left behind"
            );
            // and back: the tables are used again, then emptied again
            let (status, _) = app
                .put(&format!("Patient/{id}"), &with_links(Some(id)))
                .await;
            assert_eq!(status, 200);
            assert_eq!(linked(&index_rows(&app, id).await), 2, "{id}");
            let (status, _) = app.put(&format!("Patient/{id}"), &without_links(id)).await;
            assert_eq!(status, 200);
            assert_eq!(linked(&index_rows(&app, id).await), 0, "{id}");
        }
        assert_eq!(app.search_ids(&by_organization).await, Vec::<String>::new());
        assert_eq!(
            app.search_ids("Patient?_profile=http://example.org/p")
                .await,
            Vec::<String>::new()
        );
    }
);
