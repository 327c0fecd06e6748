//! The translator's side (`fhir_profiles::v2`, data-driven by the HL7 v2-to-FHIR maps) as
//! the intake uses it: a transaction Bundle and the patient keys, or a refusal with the ACK
//! code, the HL7 error code (table 0357) and location the translator found.

use fhir_profiles::Json;
use fhir_profiles::v2::{Severity, V2Error};

use super::Refusal;
use super::ack::{AckCode, ErrorDetail, ErrorLocation};
use crate::error::Error;

/// What the intake applies.
#[derive(Debug)]
pub(crate) struct Translated {
    /// The PID-3 identifiers of the message's patients (`system|value`): their turns.
    pub patient_keys: Vec<String>,
    /// The `transaction` Bundle.
    pub bundle: Json,
    /// An A40 merge: the patient keys of the merged patient and of the survivor.
    pub merge: Option<fhir_profiles::v2::Merge>,
}

pub(crate) fn translate(message: &[u8]) -> Result<Translated, Refusal> {
    let translation = fhir_profiles::v2::translate(message).map_err(refusal)?;
    Ok(Translated {
        patient_keys: translation.patient_keys,
        bundle: translation.bundle,
        merge: translation.merge,
    })
}

/// The HL7 error code (table 0357) of a translator's error: what the location in MSH says
/// (9 message type, 11 processing id, 12 version), else a message that cannot be read (100)
/// when refused and a data error (102, 101 for a missing value) when its content is wrong.
fn hl7_code(error: &V2Error) -> u16 {
    let in_msh = error.location.segment == "MSH";
    match (in_msh, error.location.field, error.severity) {
        (true, Some(9), _) => 200,
        (true, Some(11), _) => 202,
        (true, Some(12), _) => 203,
        (_, _, Severity::Rejected) => 100,
        (_, _, Severity::Error)
            if error.message.contains("required") || error.message.contains("missing") =>
        {
            101
        }
        (_, _, Severity::Error) => 102,
    }
}

fn refusal(error: V2Error) -> Refusal {
    let code = hl7_code(&error);
    let location = ErrorLocation {
        segment: error.location.segment.clone(),
        sequence: Some(error.location.sequence),
        field: error.location.field,
        component: error.location.component,
    };
    let text = error.to_string();
    let (ack, fhir) = match error.severity {
        Severity::Rejected => (
            AckCode::Reject,
            Error::Invalid(format!("the HL7 v2 message is refused: {text}")),
        ),
        Severity::Error => (
            AckCode::Error,
            Error::Unprocessable(format!("the HL7 v2 message cannot be applied: {text}")),
        ),
    };
    Refusal {
        code: ack,
        detail: ErrorDetail {
            code,
            location: Some(location),
            message: error.message,
        },
        error: Box::new(fhir),
    }
}
