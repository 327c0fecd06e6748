//! The translator's side (`fhir_profiles::v2`, data-driven by the HL7 v2-to-FHIR maps) as
//! the intake uses it: a transaction Bundle and an A40's merge, or a refusal with the ACK
//! code, the HL7 error code (table 0357) and location the translator gave its error.

use fhir_profiles::Json;
use fhir_profiles::v2::{Severity, V2Error};

use super::Refusal;
use super::ack::{AckCode, ErrorDetail, ErrorLocation};
use crate::error::Error;

/// What the intake applies.
#[derive(Debug)]
pub(crate) struct Translated {
    /// The `transaction` Bundle.
    pub bundle: Json,
    /// An A40 merge: the patient keys of the merged patient and of the survivor.
    pub merge: Option<fhir_profiles::v2::Merge>,
}

pub(crate) fn translate(message: &[u8]) -> Result<Translated, Refusal> {
    let translation = fhir_profiles::v2::translate(message).map_err(refusal)?;
    Ok(Translated {
        bundle: translation.bundle,
        merge: translation.merge,
    })
}

fn refusal(error: V2Error) -> Refusal {
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
            code: error.code,
            location: Some(location),
            message: error.message,
        },
        error: Box::new(fhir),
    }
}
