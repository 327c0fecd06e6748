//! The transaction Bundles of `fhir_profiles::v2::translate` run as they are through the
//! transaction interaction: patients are matched on PID-3 (never duplicated), a message
//! translated again updates instead of adding, references between entries resolve, and an
//! A40 links the merged patient to the survivor.

use serde_json::Value;

use crate::both;
use crate::helpers::TestApp;

fn segments(segments: &[&str]) -> String {
    segments.join("\r")
}

const PID: &str = "PID|1||PAT1^^^HOSP&1.2.3&ISO^MR||DOE^JANE^Q||19800101|F|||1 MAIN ST^^SPRINGFIELD^IL^62701^USA^H";
const PV1: &str = "PV1|1|I|W1^R1^B1||||||||||||||||V100^^^HOSP&1.2.3&ISO^VN|||||||||||||||||||||||||202401011000+0000";

fn adt(trigger: &str, control_id: &str, pid: &str) -> String {
    segments(&[
        &format!("MSH|^~\\&|ADT|HOSP|GW|GWF|202401011200+0000||ADT^{trigger}|{control_id}|P|2.5.1"),
        &format!("EVN|{trigger}|202401011200+0000"),
        pid,
        PV1,
        "AL1|1|DA|1605^Penicillin^RXNORM|SV|Hives",
        "DG1|1||I10^Essential hypertension^I10||202401011000+0000|F",
    ])
}

fn oru(control_id: &str) -> String {
    segments(&[
        &format!(
            "MSH|^~\\&|LAB|HOSP|GW|GWF|202401011200+0000||ORU^R01^ORU_R01|{control_id}|P|2.5.1"
        ),
        PID,
        "ORC|RE|P1^EHR|F1^LAB^2.16.1^ISO",
        "OBR|1|P1^EHR|F1^LAB^2.16.1^ISO|24331-1^Lipid panel^LN|||202401011000+0000||||||||||||||||||F",
        "OBX|1|NM|2093-3^Cholesterol^LN||182|mg/dL^^UCUM|<200|N|||F|||202401011000+0000",
        "OBX|2|NM|2085-9^HDL^LN||50|mg/dL^^UCUM|>40|N|||F|||202401011000+0000",
        "SPM|1|S1&LAB&2.16.1&ISO||BLD^Blood^HL70487",
    ])
}

/// Translates a message and runs its Bundle; returns the transaction-response.
async fn run(app: &TestApp, message: &str) -> Value {
    use json_syntax::Print as _;
    let translation = fhir_profiles::v2::translate(message.as_bytes()).expect("translates");
    let bundle: Value = serde_json::from_str(&translation.bundle.compact_print().to_string())
        .expect("the Bundle as JSON");
    let (status, response) = app.post("", &bundle).await;
    assert_eq!(status, 200, "{response}");
    response
}

async fn count(app: &TestApp, query: &str) -> usize {
    app.search_ids(query).await.len()
}

both!(
    adt_messages_update_instead_of_duplicating,
    |app: TestApp| async move {
        run(&app, &adt("A01", "C-1", PID)).await;
        assert_eq!(
            count(&app, "Patient?identifier=urn:oid:1.2.3|PAT1").await,
            1
        );
        assert_eq!(
            count(&app, "Encounter?identifier=urn:oid:1.2.3|V100").await,
            1
        );

        // the same patient again, with another name, in another message
        let renamed = PID.replace("DOE^JANE^Q", "DOE-SMITH^JANE^Q");
        run(&app, &adt("A08", "C-2", &renamed)).await;
        let patients = app.search_ids("Patient").await;
        assert_eq!(patients.len(), 1, "the patient is matched on PID-3");
        let (_, patient) = app.get_json(&format!("Patient/{}", patients[0])).await;
        assert_eq!(patient["name"][0]["family"], "DOE-SMITH");
        assert_eq!(count(&app, "Encounter").await, 1);
        assert_eq!(count(&app, "AllergyIntolerance").await, 1);
        assert_eq!(count(&app, "Condition").await, 1);

        // what was written points at the stored Patient and Encounter
        let encounter_ids = app.search_ids("Encounter").await;
        let conditions = app
            .search_ids(&format!("Condition?subject=Patient/{}", patients[0]))
            .await;
        assert_eq!(conditions.len(), 1);
        let (_, condition) = app.get_json(&format!("Condition/{}", conditions[0])).await;
        assert_eq!(
            condition["encounter"]["reference"],
            format!("Encounter/{}", encounter_ids[0])
        );
    }
);

both!(
    oru_results_resolve_and_translate_idempotently,
    |app: TestApp| async move {
        run(&app, &oru("L-1")).await;
        run(&app, &oru("L-2")).await;
        assert_eq!(count(&app, "Patient").await, 1);
        assert_eq!(count(&app, "DiagnosticReport").await, 1);
        assert_eq!(count(&app, "Observation").await, 2);
        let reports = app.search_ids("DiagnosticReport").await;
        let (_, report) = app
            .get_json(&format!("DiagnosticReport/{}", reports[0]))
            .await;
        let observations = app.search_ids("Observation?_sort=_id").await;
        let mut results: Vec<String> = report["result"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| r["reference"].as_str().expect("reference").to_owned())
            .collect();
        results.sort();
        let mut expected: Vec<String> = observations
            .iter()
            .map(|id| format!("Observation/{id}"))
            .collect();
        expected.sort();
        assert_eq!(results, expected);
        let specimens = app.search_ids("Specimen").await;
        assert!(!specimens.is_empty());
        let (_, observation) = app
            .get_json(&format!("Observation/{}", observations[0]))
            .await;
        assert_eq!(
            observation["subject"]["reference"],
            format!("Patient/{}", app.search_ids("Patient").await[0])
        );
    }
);

both!(a40_links_the_merged_patient, |app: TestApp| async move {
    let old_pid = PID.replace("PAT1^^^", "OLD9^^^");
    run(&app, &adt("A01", "C-OLD", &old_pid)).await;
    run(&app, &adt("A01", "C-NEW", PID)).await;
    let merge = segments(&[
        "MSH|^~\\&|ADT|HOSP|GW|GWF|202401021200+0000||ADT^A40^ADT_A39|C-MERGE|P|2.5.1",
        "EVN|A40|202401021200+0000",
        PID,
        "MRG|OLD9^^^HOSP&1.2.3&ISO^MR",
    ]);
    run(&app, &merge).await;
    let survivor = app
        .search_ids("Patient?identifier=urn:oid:1.2.3|PAT1")
        .await;
    let merged = app
        .search_ids("Patient?identifier=urn:oid:1.2.3|OLD9")
        .await;
    assert_eq!((survivor.len(), merged.len()), (1, 1));
    let (_, old) = app.get_json(&format!("Patient/{}", merged[0])).await;
    assert_eq!(old["link"][0]["type"], "replaced-by");
    assert_eq!(
        old["link"][0]["other"]["reference"],
        format!("Patient/{}", survivor[0])
    );
    assert_eq!(old["name"][0]["family"], "DOE", "the rest of it is kept");
    let (_, new) = app.get_json(&format!("Patient/{}", survivor[0])).await;
    assert_eq!(new["link"][0]["type"], "replaces");
    assert_eq!(new["link"][0]["other"]["identifier"]["value"], "OLD9");
});
