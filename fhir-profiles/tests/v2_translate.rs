//! HL7 v2 translation of messages written for these tests: the key fields of each supported
//! message type, and that every resource produced passes the validator.

use fhir_profiles::Json;
use fhir_profiles::v2::{ErrorCode, Severity, patient_keys, translate};

/// Segments joined with `\r`, as on the wire.
fn message(segments: &[&str]) -> Vec<u8> {
    segments.join("\r").into_bytes()
}

fn entries(bundle: &Json) -> Vec<&Json> {
    bundle
        .as_object()
        .and_then(|o| o.get_unique("entry").ok().flatten())
        .and_then(Json::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn get<'a>(value: &'a Json, path: &str) -> Option<&'a Json> {
    path.split('.')
        .try_fold(value, |v, step| match step.parse::<usize>() {
            Ok(i) => v.as_array().and_then(|a| a.get(i)),
            Err(_) => v
                .as_object()
                .and_then(|o| o.get_unique(step).ok().flatten()),
        })
}

fn text<'a>(value: &'a Json, path: &str) -> &'a str {
    get(value, path).and_then(Json::as_str).unwrap_or("")
}

/// The resources of a type in the Bundle, with their request URLs.
fn resources<'a>(bundle: &'a Json, resource_type: &str) -> Vec<(&'a Json, String)> {
    entries(bundle)
        .into_iter()
        .filter_map(|e| {
            let resource = get(e, "resource")?;
            (text(resource, "resourceType") == resource_type).then(|| {
                let request = format!("{} {}", text(e, "request.method"), text(e, "request.url"));
                (resource, request)
            })
        })
        .collect()
}

fn assert_valid(bundle: &Json) {
    for entry in entries(bundle) {
        let resource = get(entry, "resource").expect("resource");
        let errors: Vec<_> = fhir_profiles::validate::validate_resource(resource)
            .into_iter()
            .filter(|i| i.severity == fhir_profiles::validate::IssueSeverity::Error)
            .collect();
        assert!(
            errors.is_empty(),
            "{}: {errors:?}",
            text(resource, "resourceType")
        );
        let url = text(entry, "fullUrl");
        // a UUID of RFC 9562's version 8 (SHA-256 based), variant 10
        let uuid = url.strip_prefix("urn:uuid:").expect("a urn:uuid");
        let groups: Vec<&str> = uuid.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{url}"
        );
        assert!(groups[2].starts_with('8'), "{url}");
        assert!(groups[3].starts_with(['8', '9', 'a', 'b']), "{url}");
    }
}

const MSH_A01: &str = "MSH|^~\\&|ADT1|GOOD HEALTH HOSPITAL|GHH LAB|GHH|202401011200+0100||ADT^A01^ADT_A01|MSG-A01-1|P|2.5.1";
const PID: &str = "PID|1||PATID1234^^^GHH&2.16.840.1.113883.19.4.6&ISO^MR~123-45-6789^^^SSA^SS||EVERYMAN^ADAM^A^III||19610615|M||2106-3^White^CDCREC|2222 HOME STREET^^GREENSBORO^NC^27401-1020^USA^H||^PRN^PH^^1^555^5551234|||M^Married^HL70002";
const PV1: &str = "PV1|1|I|2000^2012^01||||004777^ATTEND^AARON^A|||SUR||||ADM|A0||||V1234^^^GHH&2.16.840.1.113883.19.4.6&ISO^VN|||||||||||||||||||||||||202401011100+0100";

#[test]
fn adt_a01_patient_and_encounter() {
    let t = translate(&message(&[
        MSH_A01,
        "EVN|A01|202401011200+0100",
        PID,
        "NK1|1|EVERYMAN^EVE|SPO^Spouse^HL70063|2222 HOME STREET^^GREENSBORO^NC^27401-1020",
        PV1,
        "AL1|1|DA|1605^Penicillin^RXNORM|SV|Hives",
        "DG1|1||I63.9^Cerebral infarction^I10||202401011130+0100|A",
    ]))
    .expect("translates");
    assert_eq!(t.header.message_type, "ADT");
    assert_eq!(t.header.trigger, "A01");
    assert_eq!(t.header.structure, "ADT_A01");
    assert_eq!(t.header.control_id, "MSG-A01-1");
    assert_eq!(t.header.sending_application, "ADT1");
    assert_eq!(t.header.sending_facility, "GOOD HEALTH HOSPITAL");
    assert_eq!(t.header.version, "2.5.1");
    assert_eq!(t.header.processing_id, "P");
    assert_eq!(
        t.patient_keys,
        [
            "urn:oid:2.16.840.1.113883.19.4.6|PATID1234",
            "SSA|123-45-6789"
        ]
    );
    assert!(t.merge.is_none());
    assert_eq!(text(&t.bundle, "type"), "transaction");
    assert_valid(&t.bundle);

    let patients = resources(&t.bundle, "Patient");
    assert_eq!(patients.len(), 1);
    let (patient, request) = &patients[0];
    assert_eq!(
        request,
        "PUT Patient?identifier=urn:oid:2.16.840.1.113883.19.4.6%7CPATID1234"
            .replace("%7C", "|")
            .as_str()
    );
    assert_eq!(text(patient, "identifier.0.value"), "PATID1234");
    assert_eq!(
        text(patient, "identifier.0.system"),
        "urn:oid:2.16.840.1.113883.19.4.6"
    );
    assert_eq!(text(patient, "identifier.0.type.coding.0.code"), "MR");
    assert_eq!(text(patient, "name.0.family"), "EVERYMAN");
    assert_eq!(text(patient, "name.0.given.0"), "ADAM");
    assert_eq!(text(patient, "birthDate"), "1961-06-15");
    assert_eq!(text(patient, "gender"), "male");
    assert_eq!(text(patient, "address.0.city"), "GREENSBORO");
    assert_eq!(text(patient, "address.0.postalCode"), "27401-1020");
    assert_eq!(text(patient, "maritalStatus.coding.0.code"), "M");

    let encounters = resources(&t.bundle, "Encounter");
    assert_eq!(encounters.len(), 1);
    let (encounter, request) = &encounters[0];
    assert_eq!(
        request,
        "PUT Encounter?identifier=urn:oid:2.16.840.1.113883.19.4.6|V1234"
    );
    assert_eq!(text(encounter, "class.code"), "IMP");
    assert_eq!(text(encounter, "status"), "in-progress");
    assert_eq!(text(encounter, "period.start"), "2024-01-01T11:00:00+01:00");
    let patient_url = text(entries(&t.bundle)[0], "fullUrl");
    assert_eq!(text(encounter, "subject.reference"), patient_url);

    let allergies = resources(&t.bundle, "AllergyIntolerance");
    assert_eq!(allergies.len(), 1);
    assert_eq!(text(allergies[0].0, "patient.reference"), patient_url);
    assert_eq!(text(allergies[0].0, "code.coding.0.code"), "1605");
    let conditions = resources(&t.bundle, "Condition");
    assert_eq!(conditions.len(), 1);
    assert_eq!(text(conditions[0].0, "code.coding.0.code"), "I63.9");
    let related = resources(&t.bundle, "RelatedPerson");
    assert_eq!(related.len(), 1);
    assert_eq!(text(related[0].0, "name.0.family"), "EVERYMAN");
    assert_eq!(text(related[0].0, "patient.reference"), patient_url);
}

#[test]
fn translation_is_deterministic() {
    let bytes = message(&[MSH_A01, "EVN|A01|202401011200+0100", PID, PV1]);
    let a = translate(&bytes).expect("translates");
    let b = translate(&bytes).expect("translates");
    assert_eq!(a.bundle, b.bundle);
}

#[test]
fn unsupported_message_type_is_rejected() {
    let err = translate(&message(&[
        "MSH|^~\\&|A|B|C|D|20240101||SIU^S12^SIU_S12|X1|P|2.5",
        PID,
    ]))
    .expect_err("rejected");
    assert_eq!(err.severity, Severity::Rejected);
    assert_eq!(err.severity.ack_code(), "AR");
    assert_eq!(err.location.segment, "MSH");
    assert_eq!(err.location.field, Some(9));
}

#[test]
fn missing_patient_identifier_is_an_application_error() {
    let err = translate(&message(&[
        MSH_A01,
        "EVN|A01|202401011200",
        "PID|1||^^^GHH^MR||EVERYMAN^ADAM",
        PV1,
    ]))
    .expect_err("AE");
    assert_eq!(err.severity, Severity::Error);
    assert_eq!(err.severity.ack_code(), "AE");
    assert_eq!(err.location.segment, "PID");
    assert_eq!(err.location.field, Some(3));
}

/// A segment with the given fields at their positions (the rest empty).
fn seg(id: &str, fields: &[(usize, &str)]) -> String {
    let last = fields.iter().map(|(n, _)| *n).max().unwrap_or(0);
    let mut parts = vec![String::new(); last + 1];
    parts[0] = id.to_owned();
    for (n, value) in fields {
        parts[*n] = (*value).to_owned();
    }
    parts.join("|")
}

fn msh(kind: &str, control_id: &str) -> String {
    format!("MSH|^~\\&|LAB|HOSP|GW|GWF|202401011200+0000||{kind}|{control_id}|P|2.5.1")
}

fn pid() -> String {
    seg(
        "PID",
        &[
            (1, "1"),
            (3, "PAT1^^^HOSP&1.2.3&ISO^MR"),
            (5, "DOE^JANE^Q"),
            (7, "19800101"),
            (8, "F"),
            (11, "1 MAIN ST^^SPRINGFIELD^IL^62701^USA^H"),
        ],
    )
}

fn pv1(class: &str, discharge: &str) -> String {
    seg(
        "PV1",
        &[
            (1, "1"),
            (2, class),
            (3, "W1^R1^B1"),
            (19, "V100^^^HOSP&1.2.3&ISO^VN"),
            (44, "202401011000+0000"),
            (45, discharge),
        ],
    )
}

fn one<'a>(bundle: &'a Json, resource_type: &str) -> (&'a Json, String) {
    let mut found = resources(bundle, resource_type);
    assert_eq!(found.len(), 1, "one {resource_type}");
    found.remove(0)
}

fn full_url_of(bundle: &Json, resource_type: &str) -> Vec<String> {
    entries(bundle)
        .into_iter()
        .filter(|e| get(e, "resource").is_some_and(|r| text(r, "resourceType") == resource_type))
        .map(|e| text(e, "fullUrl").to_owned())
        .collect()
}

#[test]
fn every_adt_trigger() {
    // trigger, PV1-2, PV1-45, structure, Encounter.status
    let cases = [
        ("A01", "I", "", "ADT_A01", "in-progress"),
        ("A02", "I", "", "ADT_A02", "in-progress"),
        ("A03", "I", "202401051000+0000", "ADT_A03", "finished"),
        ("A04", "O", "", "ADT_A01", "in-progress"),
        ("A05", "P", "", "ADT_A05", "planned"),
        ("A08", "I", "", "ADT_A01", "in-progress"),
        ("A11", "I", "", "ADT_A09", "cancelled"),
        ("A13", "I", "", "ADT_A01", "in-progress"),
        ("A28", "O", "", "ADT_A05", "in-progress"),
        ("A31", "O", "", "ADT_A05", "in-progress"),
    ];
    for (trigger, class, discharge, structure, status) in cases {
        let bytes = [
            msh(&format!("ADT^{trigger}"), &format!("C-{trigger}")),
            seg("EVN", &[(1, trigger), (2, "202401011200+0000")]),
            pid(),
            pv1(class, discharge),
        ]
        .join("\r");
        let t = translate(bytes.as_bytes()).unwrap_or_else(|e| panic!("{trigger}: {e}"));
        assert_eq!(t.header.structure, structure, "{trigger}");
        assert_eq!(t.patient_keys, ["urn:oid:1.2.3|PAT1"], "{trigger}");
        assert_valid(&t.bundle);
        let (patient, request) = one(&t.bundle, "Patient");
        assert_eq!(
            request, "PUT Patient?identifier=urn:oid:1.2.3|PAT1",
            "{trigger}"
        );
        assert_eq!(text(patient, "name.0.family"), "DOE");
        assert_eq!(text(patient, "name.0.given.0"), "JANE");
        assert_eq!(text(patient, "birthDate"), "1980-01-01");
        assert_eq!(text(patient, "gender"), "female");
        let (encounter, request) = one(&t.bundle, "Encounter");
        assert_eq!(
            request, "PUT Encounter?identifier=urn:oid:1.2.3|V100",
            "{trigger}"
        );
        assert_eq!(text(encounter, "status"), status, "{trigger}");
        assert_eq!(text(encounter, "period.start"), "2024-01-01T10:00:00+00:00");
        if !discharge.is_empty() {
            assert_eq!(text(encounter, "period.end"), "2024-01-05T10:00:00+00:00");
        }
        assert_eq!(
            text(encounter, "subject.reference"),
            full_url_of(&t.bundle, "Patient")[0]
        );
    }
}

#[test]
fn a40_merges_the_prior_patient_into_the_survivor() {
    let bytes = [
        msh("ADT^A40^ADT_A39", "C-A40"),
        seg("EVN", &[(1, "A40"), (2, "202401011200+0000")]),
        pid(),
        seg("MRG", &[(1, "OLD9^^^HOSP&1.2.3&ISO^MR")]),
    ]
    .join("\r");
    let t = translate(bytes.as_bytes()).expect("translates");
    let merge = t.merge.as_ref().expect("a merge");
    assert_eq!(merge.survivor, "urn:oid:1.2.3|PAT1");
    assert_eq!(merge.merged, "urn:oid:1.2.3|OLD9");
    assert_valid(&t.bundle);
    let (patient, _) = one(&t.bundle, "Patient");
    assert_eq!(text(patient, "link.0.type"), "replaces");
    assert_eq!(text(patient, "link.0.other.identifier.value"), "OLD9");
    let (patch, request) = one(&t.bundle, "Parameters");
    assert_eq!(request, "PATCH Patient?identifier=urn:oid:1.2.3|OLD9");
    let survivor = &full_url_of(&t.bundle, "Patient")[0];
    assert_eq!(
        text(patch, "parameter.0.part.3.part.0.valueReference.reference"),
        survivor
    );
    assert_eq!(
        text(patch, "parameter.0.part.3.part.1.valueCode"),
        "replaced-by"
    );
    fhir_profiles::fhirpatch::FhirPatch::parse(patch).expect("a FHIRPath Patch");
}

fn oru() -> String {
    [
        msh("ORU^R01^ORU_R01", "C-ORU"),
        pid(),
        pv1("O", ""),
        seg("ORC", &[(1, "RE"), (2, "P1^EHR"), (3, "F1^LAB^2.16.1^ISO")]),
        seg(
            "OBR",
            &[
                (1, "1"),
                (2, "P1^EHR"),
                (3, "F1^LAB^2.16.1^ISO"),
                (4, "24331-1^Lipid panel^LN"),
                (7, "202401011000+0000"),
                (22, "202401011130+0000"),
                (25, "F"),
            ],
        ),
        seg(
            "OBX",
            &[
                (1, "1"),
                (2, "NM"),
                (3, "2093-3^Cholesterol^LN"),
                (5, "182"),
                (6, "mg/dL^^UCUM"),
                (7, "<200"),
                (8, "N"),
                (11, "F"),
                (14, "202401011000+0000"),
            ],
        ),
        seg("NTE", &[(1, "1"), (3, "Fasting sample")]),
        seg(
            "OBX",
            &[
                (1, "2"),
                (2, "ST"),
                (3, "8251-1^Service comment^LN"),
                (5, "See note"),
                (11, "C"),
            ],
        ),
        seg(
            "OBX",
            &[
                (1, "3"),
                (2, "CWE"),
                (3, "600-7^Bacteria identified^LN"),
                (5, "260373001^Detected^SCT"),
                (8, "A"),
                (11, "P"),
            ],
        ),
        seg(
            "SPM",
            &[(1, "1"), (2, "S1&LAB&2.16.1&ISO"), (4, "BLD^Blood^HL70487")],
        ),
    ]
    .join("\r")
}

#[test]
fn oru_r01_report_observations_and_specimen() {
    let t = translate(oru().as_bytes()).expect("translates");
    assert_valid(&t.bundle);
    let (report, request) = one(&t.bundle, "DiagnosticReport");
    assert_eq!(request, "PUT DiagnosticReport?identifier=urn:oid:2.16.1|F1");
    assert_eq!(text(report, "status"), "final");
    assert_eq!(text(report, "code.coding.0.code"), "24331-1");
    assert_eq!(text(report, "code.coding.0.system"), "http://loinc.org");
    let patient = &full_url_of(&t.bundle, "Patient")[0];
    assert_eq!(text(report, "subject.reference"), patient);

    let observations = resources(&t.bundle, "Observation");
    assert_eq!(observations.len(), 3);
    let urls = full_url_of(&t.bundle, "Observation");
    let results: Vec<&str> = (0..3)
        .map(|i| text(report, &format!("result.{i}.reference")))
        .collect();
    assert_eq!(results, urls.iter().map(String::as_str).collect::<Vec<_>>());

    let (nm, request) = &observations[0];
    assert_eq!(request, "PUT Observation?identifier=urn:oid:2.16.1|F1-1");
    assert_eq!(text(nm, "status"), "final");
    assert_eq!(text(nm, "code.coding.0.code"), "2093-3");
    assert_eq!(
        get(nm, "valueQuantity.value")
            .and_then(|v| v.as_number())
            .map(|n| n.as_str()),
        Some("182")
    );
    assert_eq!(text(nm, "valueQuantity.unit"), "mg/dL");
    assert_eq!(text(nm, "referenceRange.0.text"), "<200");
    assert_eq!(text(nm, "interpretation.0.coding.0.code"), "N");
    assert_eq!(text(nm, "effectiveDateTime"), "2024-01-01T10:00:00+00:00");
    assert_eq!(text(nm, "subject.reference"), patient);

    let (st, _) = &observations[1];
    assert_eq!(text(st, "status"), "corrected");
    assert_eq!(text(st, "valueString"), "See note");

    let (cwe, _) = &observations[2];
    assert_eq!(text(cwe, "status"), "preliminary");
    assert_eq!(text(cwe, "valueCodeableConcept.coding.0.code"), "260373001");
    assert_eq!(
        text(cwe, "valueCodeableConcept.coding.0.system"),
        "http://snomed.info/sct"
    );
    assert_eq!(text(cwe, "interpretation.0.coding.0.code"), "A");

    let specimens = resources(&t.bundle, "Specimen");
    let spm = specimens
        .iter()
        .find(|(s, _)| text(s, "type.coding.0.code") == "BLD")
        .expect("the SPM's Specimen");
    assert!(spm.1.starts_with("PUT Specimen?identifier="), "{}", spm.1);
    let specimen_refs: Vec<&str> = (0..specimens.len())
        .map(|i| text(report, &format!("specimen.{i}.reference")))
        .collect();
    for url in full_url_of(&t.bundle, "Specimen") {
        assert!(
            specimen_refs.contains(&url.as_str()),
            "{url} in DiagnosticReport.specimen"
        );
    }
}

#[test]
fn an_obx_without_a_code_is_an_application_error_naming_it() {
    let bytes = [
        msh("ORU^R01^ORU_R01", "C-BAD"),
        pid(),
        seg(
            "OBR",
            &[
                (1, "1"),
                (3, "F1^LAB"),
                (4, "24331-1^Lipid panel^LN"),
                (25, "F"),
            ],
        ),
        seg(
            "OBX",
            &[
                (1, "1"),
                (2, "NM"),
                (3, "2093-3^Cholesterol^LN"),
                (5, "182"),
                (11, "F"),
            ],
        ),
        seg("OBX", &[(1, "2"), (2, "NM"), (5, "5"), (11, "F")]),
    ]
    .join("\r");
    let err = translate(bytes.as_bytes()).expect_err("AE");
    assert_eq!(err.severity, Severity::Error);
    assert_eq!(err.location.segment, "OBX");
    assert_eq!(err.location.sequence, 2);
    assert_eq!(err.location.field, Some(3));
}

#[test]
fn vxu_v04_immunization() {
    let bytes = [
        msh("VXU^V04^VXU_V04", "C-VXU"),
        pid(),
        seg(
            "ORC",
            &[(1, "RE"), (2, "PL1^EHR"), (3, "FI1^IIS^2.16.9^ISO")],
        ),
        seg(
            "RXA",
            &[
                (1, "0"),
                (2, "1"),
                (3, "20240115"),
                (5, "08^HEPB-ADOLESCENT OR PEDIATRIC^CVX"),
                (6, "0.5"),
                (7, "mL^mL^UCUM"),
                (15, "LOT1"),
                (16, "20250101"),
                (17, "MSD^Merck^MVX"),
                (20, "CP"),
                (21, "A"),
            ],
        ),
        seg(
            "RXR",
            &[
                (1, "C28161^Intramuscular^NCIT"),
                (2, "LD^Left Deltoid^HL70163"),
            ],
        ),
        seg(
            "OBX",
            &[
                (1, "1"),
                (2, "CE"),
                (3, "64994-7^Vaccine funding program eligibility^LN"),
                (4, "1"),
                (5, "V02^VFC eligible^HL70064"),
                (11, "F"),
            ],
        ),
    ]
    .join("\r");
    let t = translate(bytes.as_bytes()).expect("translates");
    assert_valid(&t.bundle);
    let (immunization, request) = one(&t.bundle, "Immunization");
    assert!(
        request.starts_with("PUT Immunization?identifier="),
        "{request}"
    );
    assert_eq!(text(immunization, "status"), "completed");
    assert_eq!(text(immunization, "vaccineCode.coding.0.code"), "08");
    assert_eq!(
        text(immunization, "vaccineCode.coding.0.system"),
        "http://hl7.org/fhir/sid/cvx"
    );
    assert_eq!(text(immunization, "occurrenceDateTime"), "2024-01-15");
    assert_eq!(text(immunization, "lotNumber"), "LOT1");
    let patient = &full_url_of(&t.bundle, "Patient")[0];
    assert_eq!(text(immunization, "patient.reference"), patient);
    let (observation, _) = one(&t.bundle, "Observation");
    assert_eq!(text(observation, "code.coding.0.code"), "64994-7");
    assert_eq!(
        text(observation, "partOf.0.reference"),
        full_url_of(&t.bundle, "Immunization")[0]
    );
}

#[test]
fn an_oru_with_two_patients_keys_and_links_each() {
    let second_pid = seg(
        "PID",
        &[
            (1, "2"),
            (3, "PAT2^^^HOSP&1.2.3&ISO^MR"),
            (5, "ROE^RICHARD"),
            (8, "M"),
        ],
    );
    let bytes = [
        msh("ORU^R01^ORU_R01", "C-TWO"),
        pid(),
        seg(
            "OBR",
            &[
                (1, "1"),
                (3, "F1^LAB"),
                (4, "24331-1^Lipid panel^LN"),
                (25, "F"),
            ],
        ),
        seg(
            "OBX",
            &[
                (1, "1"),
                (2, "NM"),
                (3, "2093-3^Cholesterol^LN"),
                (5, "182"),
                (11, "F"),
            ],
        ),
        second_pid,
        seg(
            "OBR",
            &[
                (1, "1"),
                (3, "F2^LAB"),
                (4, "24331-1^Lipid panel^LN"),
                (25, "F"),
            ],
        ),
        seg(
            "OBX",
            &[
                (1, "1"),
                (2, "NM"),
                (3, "2093-3^Cholesterol^LN"),
                (5, "250"),
                (11, "F"),
            ],
        ),
    ]
    .join("\r");
    let t = translate(bytes.as_bytes()).expect("translates");
    assert_valid(&t.bundle);
    assert_eq!(t.patient_keys, ["urn:oid:1.2.3|PAT1", "urn:oid:1.2.3|PAT2"]);
    let patients = resources(&t.bundle, "Patient");
    assert_eq!(patients.len(), 2);
    assert_eq!(patients[0].1, "PUT Patient?identifier=urn:oid:1.2.3|PAT1");
    assert_eq!(patients[1].1, "PUT Patient?identifier=urn:oid:1.2.3|PAT2");
    let urls = full_url_of(&t.bundle, "Patient");
    let observations = resources(&t.bundle, "Observation");
    assert_eq!(observations.len(), 2);
    assert_eq!(text(observations[0].0, "subject.reference"), urls[0]);
    assert_eq!(text(observations[1].0, "subject.reference"), urls[1]);
    assert_eq!(observations[0].1, "PUT Observation?identifier=LAB|F1-1");
    assert_eq!(observations[1].1, "PUT Observation?identifier=LAB|F2-1");
    let reports = resources(&t.bundle, "DiagnosticReport");
    assert_eq!(text(reports[1].0, "subject.reference"), urls[1]);
    assert_eq!(
        text(reports[1].0, "result.0.reference"),
        full_url_of(&t.bundle, "Observation")[1]
    );
}

#[test]
fn an_explicit_null_writes_nothing() {
    let bytes = [
        msh("ADT^A08", "C-NULL"),
        seg(
            "PID",
            &[
                (1, "1"),
                (3, "PAT1^^^HOSP&1.2.3&ISO^MR"),
                (5, "DOE^JANE"),
                (8, "\"\""),
            ],
        ),
        pv1("I", ""),
    ]
    .join("\r");
    let t = translate(bytes.as_bytes()).expect("translates");
    let (patient, _) = one(&t.bundle, "Patient");
    assert!(get(patient, "gender").is_none());
    assert_eq!(text(patient, "name.0.family"), "DOE");
}

#[test]
fn what_has_no_identifier_is_keyed_by_patient_and_code() {
    let message = |control_id: &str, reaction: &str| {
        [
            msh("ADT^A08", control_id),
            pid(),
            pv1("I", ""),
            seg(
                "OBX",
                &[
                    (1, "1"),
                    (2, "NM"),
                    (3, "29463-7^Body weight^LN"),
                    (5, "70"),
                    (6, "kg^^UCUM"),
                    (11, "F"),
                    (14, "202401011000+0000"),
                ],
            ),
            seg(
                "AL1",
                &[
                    (1, "1"),
                    (2, "DA"),
                    (3, "1605^Penicillin^RXNORM"),
                    (4, "SV"),
                    (5, reaction),
                ],
            ),
            seg(
                "DG1",
                &[(1, "1"), (3, "I10^Essential hypertension^I10"), (6, "F")],
            ),
        ]
        .join("\r")
    };
    let first = translate(message("C-1", "Hives").as_bytes()).expect("translates");
    let second = translate(message("C-2", "Rash").as_bytes()).expect("translates");
    assert_valid(&first.bundle);
    for resource_type in ["AllergyIntolerance", "Condition", "Observation"] {
        let (_, a) = one(&first.bundle, resource_type);
        let (_, b) = one(&second.bundle, resource_type);
        assert!(
            a.starts_with(&format!(
                "PUT {resource_type}?identifier=urn:fhir-gateway:hl7v2:{resource_type}|"
            )),
            "{a}"
        );
        assert_eq!(a, b, "{resource_type}: the same key in both messages");
    }
    // another patient's allergy to the same drug is another resource
    let other = message("C-3", "Hives").replace("PAT1^^^", "PAT2^^^");
    let other = translate(other.as_bytes()).expect("translates");
    assert_ne!(
        one(&first.bundle, "AllergyIntolerance").1,
        one(&other.bundle, "AllergyIntolerance").1
    );
}

/// An IN1 as a feed sends it: plan (IN1-2), insurer's id and name (IN1-3, IN1-4), group
/// number, the plan's dates (IN1-12, IN1-13), plan type (IN1-15), the insured's relationship
/// (IN1-17) and id (IN1-49).
fn in1(plan: &str, insurer: &str, end: &str) -> String {
    seg(
        "IN1",
        &[
            (1, "1"),
            (2, plan),
            (3, "BCBS-1^^^NAIC&2.16.840.1.113883.6.300&ISO"),
            (4, insurer),
            (8, "GRP-77"),
            (12, "20240101"),
            (13, end),
            (15, "HMO^health maintenance organization policy"),
            (17, "SEL^Self^HL70063"),
            (49, "MEM-555^^^BCBS^SN"),
        ],
    )
}

#[test]
fn an_in1_is_a_coverage_of_the_patient_keyed_by_patient_payor_and_plan() {
    let message = |control_id: &str, insurer: &str, end: &str| {
        [
            msh("ADT^A04^ADT_A01", control_id),
            "EVN|A04|202401011200+0000".to_owned(),
            pid(),
            pv1("O", ""),
            in1("BAV^Blue Advantage HMO^L", insurer, end),
        ]
        .join("\r")
    };
    let t = translate(message("C-IN1", "Blue Cross of Texas", "20241231").as_bytes())
        .expect("translates");
    assert_valid(&t.bundle);
    let (coverage, request) = one(&t.bundle, "Coverage");
    // R4 requires a status the map does not give: `active` (see README)
    assert_eq!(text(coverage, "status"), "active");
    assert_eq!(
        text(coverage, "beneficiary.reference"),
        full_url_of(&t.bundle, "Patient")[0]
    );
    // the insurer as a logical reference (no Organization is written)
    assert_eq!(text(coverage, "payor.0.type"), "Organization");
    assert_eq!(text(coverage, "payor.0.display"), "Blue Cross of Texas");
    assert!(resources(&t.bundle, "Organization").is_empty());
    assert_eq!(text(coverage, "period.start"), "2024-01-01");
    assert_eq!(text(coverage, "period.end"), "2024-12-31");
    // the plan's identifier as the map gives it, after the key
    assert_eq!(
        text(coverage, "identifier.0.system"),
        "urn:fhir-gateway:hl7v2:Coverage"
    );
    assert_eq!(text(coverage, "identifier.1.value"), "BAV");
    assert!(
        request.starts_with("PUT Coverage?identifier=urn:fhir-gateway:hl7v2:Coverage|"),
        "{request}"
    );

    // the same insurance sent again (another control id, a new end date): the same key
    let again = translate(message("C-IN1-2", "Blue Cross of Texas", "20251231").as_bytes())
        .expect("translates");
    assert_eq!(one(&again.bundle, "Coverage").1, request);
    // another insurer, or the same plan of another patient: another Coverage
    let other_payor =
        translate(message("C-IN1-3", "Aetna", "20241231").as_bytes()).expect("translates");
    assert_ne!(one(&other_payor.bundle, "Coverage").1, request);
    let other_patient =
        message("C-IN1-4", "Blue Cross of Texas", "20241231").replace("PAT1^^^", "PAT2^^^");
    let other_patient = translate(other_patient.as_bytes()).expect("translates");
    assert_ne!(one(&other_patient.bundle, "Coverage").1, request);

    // two IN1 segments: two Coverages
    let two = [
        message("C-IN1-5", "Blue Cross of Texas", "20241231"),
        in1("DEN^Dental plan^L", "Delta Dental", ""),
    ]
    .join("\r");
    let two = translate(two.as_bytes()).expect("translates");
    let coverages = resources(&two.bundle, "Coverage");
    assert_eq!(coverages.len(), 2);
    assert_ne!(coverages[0].1, coverages[1].1);
    assert_eq!(text(coverages[1].0, "payor.0.display"), "Delta Dental");

    // without the insurer's name there is no payor, which R4 requires: AE naming IN1-4
    let err = translate(message("C-IN1-6", "", "20241231").as_bytes()).expect_err("AE");
    assert_eq!(err.severity, Severity::Error);
    assert_eq!(err.location.segment, "IN1");
    assert_eq!(err.location.field, Some(4));
}

#[test]
fn every_refusal_carries_its_table_0357_code() {
    let adt = |msh: &str, rest: &[String]| {
        std::iter::once(msh.to_owned())
            .chain(rest.iter().cloned())
            .collect::<Vec<_>>()
            .join("\r")
    };
    let a01 = msh("ADT^A01", "C-ERR");
    let with_pid = [pid(), pv1("I", "")];
    // what, the message, the severity, the code, where (segment, field)
    type Case<'a> = (&'a str, String, Severity, u16, (&'a str, Option<usize>));
    let cases: Vec<Case<'_>> = vec![
        (
            "a message type not translated",
            adt(&msh("SIU^S12", "C-ERR"), &with_pid),
            Severity::Rejected,
            200,
            ("MSH", Some(9)),
        ),
        (
            "a trigger event not translated",
            adt(&msh("ADT^A17", "C-ERR"), &with_pid),
            Severity::Rejected,
            201,
            ("MSH", Some(9)),
        ),
        (
            "a processing id outside table 0103",
            adt(&a01.replace("|P|2.5.1", "|X|2.5.1"), &with_pid),
            Severity::Rejected,
            202,
            ("MSH", Some(11)),
        ),
        (
            "a version outside 2.3 to 2.8",
            adt(&a01.replace("|2.5.1", "|3.0"), &with_pid),
            Severity::Rejected,
            203,
            ("MSH", Some(12)),
        ),
        (
            "no MSH-10",
            adt(&a01.replace("|C-ERR|", "||"), &with_pid),
            Severity::Rejected,
            101,
            ("MSH", Some(10)),
        ),
        (
            "no PID",
            adt(&a01, &[pv1("I", "")]),
            Severity::Error,
            100,
            ("PID", Some(3)),
        ),
        (
            "no PID-3",
            adt(&a01, &[seg("PID", &[(1, "1"), (5, "DOE^JANE")])]),
            Severity::Error,
            101,
            ("PID", Some(3)),
        ),
        (
            "an OBX without OBX-3 (Observation.code)",
            adt(
                &a01,
                &[
                    pid(),
                    seg("OBX", &[(1, "1"), (2, "NM"), (5, "70"), (11, "F")]),
                ],
            ),
            Severity::Error,
            101,
            ("OBX", Some(3)),
        ),
        (
            "an A40 without MRG",
            adt(&msh("ADT^A40^ADT_A39", "C-ERR"), &[pid()]),
            Severity::Error,
            100,
            ("MRG", Some(1)),
        ),
    ];
    for (what, message, severity, code, (segment, field)) in cases {
        let err = translate(message.as_bytes()).expect_err(what);
        assert_eq!(err.severity, severity, "{what}: {err}");
        assert_eq!(err.code.code(), code, "{what}: {err}");
        assert_eq!(
            (err.location.segment.as_str(), err.location.field),
            (segment, field),
            "{what}: {err}"
        );
    }
    // the code's text is table 0357's
    let err = translate(adt(&msh("ADT^A17", "C-ERR"), &with_pid).as_bytes()).expect_err("AR");
    assert_eq!(err.code, ErrorCode::UnsupportedEventCode);
    assert_eq!(err.code.text(), "Unsupported event code");
    // training and debugging messages are translated as production ones
    for processing_id in ["T", "D"] {
        let message = adt(
            &a01.replace("|P|2.5.1", &format!("|{processing_id}|2.5.1")),
            &with_pid,
        );
        translate(message.as_bytes()).unwrap_or_else(|e| panic!("{processing_id}: {e}"));
    }
}

#[test]
fn the_patient_keys_are_read_without_translating() {
    // those the translation gives, and an A40's merged patient
    let a01 = message(&[MSH_A01, "EVN|A01|202401011200+0100", PID, PV1]);
    assert_eq!(
        patient_keys(&a01),
        translate(&a01).expect("translates").patient_keys
    );
    let a40 = [
        msh("ADT^A40^ADT_A39", "C-KEYS"),
        pid(),
        seg("MRG", &[(1, "OLD1^^^HOSP&1.2.3&ISO^MR")]),
    ]
    .join("\r");
    let merge = translate(a40.as_bytes())
        .expect("translates")
        .merge
        .expect("a merge");
    assert_eq!(
        patient_keys(a40.as_bytes()),
        [merge.survivor.as_str(), merge.merged.as_str()]
    );
    // also of a message the translation refuses (an unsupported trigger); none of what
    // does not parse
    let a17 = a40.replace("ADT^A40^ADT_A39", "ADT^A17");
    assert_eq!(patient_keys(a17.as_bytes()).len(), 2);
    assert!(patient_keys(b"hello").is_empty());
}
