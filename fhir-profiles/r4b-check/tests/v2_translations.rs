//! The HL7 v2 intake does not ask the R4B model about its translations (the gateway's
//! `Intake` switches `validation.r4b_check` off: a warning about the gateway's own output is
//! nothing a v2 sender can act on). This test asks instead: every resource the translator
//! makes from messages of each supported kind is accepted by the R4B model, so that what
//! the intake stores reads as R4B as well as it reads as R4.

use fhir_profiles::Json;
use fhir_profiles::v2::translate;
use json_syntax::Print;

const MSH: &str = "MSH|^~\\&|ADT1|GOOD HEALTH HOSPITAL|GHH LAB|GHH|202401011200+0100";
const PID: &str = "PID|1||PATID1234^^^GHH&2.16.840.1.113883.19.4.6&ISO^MR~123-45-6789^^^SSA^SS||EVERYMAN^ADAM^A^III||19610615|M||2106-3^White^CDCREC|2222 HOME STREET^^GREENSBORO^NC^27401-1020^USA^H||^PRN^PH^^1^555^5551234|||M^Married^HL70002";
const PV1: &str = "PV1|1|I|2000^2012^01||||004777^ATTEND^AARON^A|||SUR||||ADM|A0||||V1234^^^GHH&2.16.840.1.113883.19.4.6&ISO^VN|||||||||||||||||||||||||202401011100+0100|202401051000+0100";

fn message(header: &str, segments: &[&str]) -> Vec<u8> {
    std::iter::once(format!("{MSH}||{header}|P|2.5.1"))
        .chain(segments.iter().map(|s| (*s).to_owned()))
        .collect::<Vec<_>>()
        .join("\r")
        .into_bytes()
}

fn messages() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "ADT^A01",
            message(
                "ADT^A01^ADT_A01|M1",
                &[
                    "EVN|A01|202401011200+0100",
                    PID,
                    "PD1|||GOOD HEALTH CLINIC^^1234",
                    "NK1|1|EVERYMAN^EVE|SPO^Spouse^HL70063|2222 HOME STREET^^GREENSBORO^NC^27401-1020",
                    PV1,
                    "PV2|||CHEST PAIN",
                    "AL1|1|DA|1605^Penicillin^RXNORM|SV|Hives",
                    "DG1|1||I63.9^Cerebral infarction^I10||202401011130+0100|A",
                    "IN1|1|PLAN1^Gold plan|INS1^^^GHH&2.16.840.1.113883.19.4.6&ISO|ACME INSURANCE",
                ],
            ),
        ),
        (
            "ADT^A03",
            message(
                "ADT^A03^ADT_A03|M2",
                &["EVN|A03|202401051000+0100", PID, PV1],
            ),
        ),
        (
            "ORU^R01",
            message(
                "ORU^R01^ORU_R01|M3",
                &[
                    PID,
                    PV1,
                    "ORC|RE|P1^EHR|F1^LAB^2.16.1^ISO",
                    "OBR|1|P1^EHR|F1^LAB^2.16.1^ISO|24331-1^Lipid panel^LN|||202401011000+0000|||||||||||||||202401011130+0000|||F",
                    "OBX|1|NM|2093-3^Cholesterol^LN||182|mg/dL^^UCUM|<200|N|||F|||202401011000+0000",
                    "NTE|1||Fasting sample",
                    "OBX|2|ST|8251-1^Service comment^LN||See note||||||C",
                    "OBX|3|CWE|600-7^Bacteria identified^LN||260373001^Detected^SCT|||A|||P",
                    "SPM|1|S1&LAB&2.16.1&ISO||BLD^Blood^HL70487",
                ],
            ),
        ),
        (
            "VXU^V04",
            message(
                "VXU^V04^VXU_V04|M4",
                &[
                    PID,
                    "ORC|RE|PL1^EHR|FI1^IIS^2.16.9^ISO",
                    "RXA|0|1|20240115||08^HEPB-ADOLESCENT OR PEDIATRIC^CVX|0.5|mL^mL^UCUM||||||||LOT1|20250101|MSD^Merck^MVX|||CP|A",
                ],
            ),
        ),
    ]
}

fn resources(bundle: &Json) -> Vec<&Json> {
    bundle
        .as_object()
        .and_then(|o| o.get_unique("entry").ok().flatten())
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            entry
                .as_object()
                .and_then(|o| o.get_unique("resource").ok().flatten())
        })
        .collect()
}

#[test]
fn the_r4b_model_accepts_every_translated_resource() {
    for (kind, bytes) in messages() {
        let translated = translate(&bytes).unwrap_or_else(|e| panic!("{kind}: {e:?}"));
        let resources = resources(&translated.bundle);
        assert!(
            resources.len() >= 2,
            "{kind}: {} resources",
            resources.len()
        );
        for resource in resources {
            let report = r4b_check::check(&resource.compact_print().to_string());
            assert!(
                report.refusal.is_none() && report.not_checked.is_empty(),
                "{kind}: {report:?} for {}",
                resource.compact_print()
            );
        }
    }
}
