//! Content negotiation (http.html#mime-type): `Accept` and `_format`, and `_pretty`.
//! The gateway speaks FHIR JSON; XML and other formats answer 406 with an OperationOutcome.

use actix_web::HttpRequest;
use actix_web::http::header;

use crate::error::{Error, Result};

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

const JSON_TYPES: [&str; 4] = [
    "application/fhir+json",
    "application/json",
    "application/json+fhir",
    "json",
];
const XML_TYPES: [&str; 5] = [
    "application/fhir+xml",
    "application/xml",
    "application/xml+fhir",
    "xml",
    "text/xml",
];

fn is_json(media: &str) -> bool {
    let media = media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    JSON_TYPES.contains(&media.as_str())
        || media == "*/*"
        || media == "application/*"
        || media.is_empty()
}

/// Checks that the client accepts FHIR JSON (from `_format`, else `Accept`).
pub fn negotiate(req: &HttpRequest, format_param: Option<&str>) -> Result<()> {
    if let Some(format) = format_param {
        if is_json(format) {
            return Ok(());
        }
        let format_lower = format.to_ascii_lowercase();
        let what = if XML_TYPES.iter().any(|x| format_lower.starts_with(x)) {
            "XML is"
        } else {
            "that format is"
        };
        return Err(Error::NotAcceptable(format!(
            "_format={format}: {what} not supported; this server speaks application/fhir+json"
        )));
    }
    let Some(accept) = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    if accept.split(',').any(is_json) {
        Ok(())
    } else {
        Err(Error::NotAcceptable(format!(
            "Accept: {accept} is not supported; this server speaks application/fhir+json"
        )))
    }
}

/// Checks the `Content-Type` of a request that carries a resource.
pub fn check_content_type(req: &HttpRequest) -> Result<()> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media == "application/fhir+json"
        || media == "application/json"
        || media == "application/json+fhir"
    {
        Ok(())
    } else if media.is_empty() {
        Err(Error::UnsupportedMediaType(
            "Content-Type is missing; send application/fhir+json".to_owned(),
        ))
    } else {
        Err(Error::UnsupportedMediaType(format!(
            "Content-Type {content_type} is not supported; send application/fhir+json"
        )))
    }
}

/// The format of a PATCH body, told by its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchFormat {
    /// `application/json-patch+json`
    JsonPatch,
    /// `application/fhir+json` (or `application/json`): a Parameters resource of FHIRPath
    /// Patch operations.
    FhirPath,
}

/// The format of a PATCH body: JSON Patch or FHIRPath Patch (415 for anything else).
pub fn patch_format(req: &HttpRequest) -> Result<PatchFormat> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json-patch+json" => Ok(PatchFormat::JsonPatch),
        "application/fhir+json" | "application/json" | "application/json+fhir" => {
            Ok(PatchFormat::FhirPath)
        }
        "" => Err(Error::UnsupportedMediaType(
            "Content-Type is missing; send application/json-patch+json (JSON Patch) or application/fhir+json (FHIRPath Patch)".to_owned(),
        )),
        _ => Err(Error::UnsupportedMediaType(format!(
            "Content-Type {content_type:?} is not supported for PATCH; send application/json-patch+json (JSON Patch) or application/fhir+json (FHIRPath Patch)"
        ))),
    }
}
