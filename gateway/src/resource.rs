//! A resource as it arrives and as it is stored: parsed without losing anything the client
//! wrote (number literals stay as written, members keep their order), checked, and stamped
//! with the server's `id` and `meta`.

use fhir_profiles::Json;
use fhir_profiles::profile::Profile;
use fhir_profiles::validate::{Issue, IssueSeverity, validate_profiles, validate_resource};
use json_syntax::Parse;

use crate::config::ValidationConfig;
use crate::error::{Error, Result};
use crate::model::{Instant, ResourceId, ResourceType, VersionId};

/// Parses a request body as one JSON object, refusing nesting deeper than `max_depth`
/// before building anything.
pub fn parse_json(body: &[u8], max_depth: usize) -> Result<Json> {
    let text = std::str::from_utf8(body)
        .map_err(|e| Error::Invalid(format!("the body is not valid UTF-8: {e}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    check_depth(text, max_depth)?;
    let (value, _) = Json::parse_str(text)
        .map_err(|e| Error::Invalid(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(Error::Invalid("the body must be a JSON object".to_owned()));
    }
    Ok(value)
}

fn check_depth(text: &str, max_depth: usize) -> Result<()> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(Error::Invalid(format!(
                        "the JSON is nested deeper than the limit of {max_depth} levels"
                    )));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The `resourceType` of a parsed resource, which must be a known R4 type.
pub fn resource_type_of(resource: &Json) -> Result<ResourceType> {
    let object = resource
        .as_object()
        .ok_or_else(|| Error::Invalid("a resource must be a JSON object".to_owned()))?;
    match object.get_unique("resourceType") {
        Ok(Some(Json::String(name))) => ResourceType::parse(name).map_err(|_| {
            Error::Invalid(format!(
                "resourceType {:?} is not a FHIR R4 resource type",
                name.as_str()
            ))
        }),
        Ok(Some(_)) => Err(Error::Invalid("resourceType must be a string".to_owned())),
        Ok(None) => Err(Error::Invalid(
            "the resource has no resourceType".to_owned(),
        )),
        Err(_) => Err(Error::Invalid(
            "resourceType appears more than once".to_owned(),
        )),
    }
}

/// The `id` element of a resource, if any.
pub fn id_of(resource: &Json) -> Option<&str> {
    resource
        .as_object()?
        .get_unique("id")
        .ok()
        .flatten()?
        .as_str()
}

/// Checks a resource against the R4 structure definitions and against the profiles it (or a
/// resource inside it) claims in `meta.profile`, and `nominated` if given, reporting every
/// issue at once: a malformed resource is [`Error::InvalidResource`] (400, its profile issues
/// included), a well-formed one that breaks a profile [`Error::ProfileViolation`] (422).
/// Then, if `config.r4b_check` is on and the resource passed, asks the fhir-sdk R4B model for
/// a second opinion. Returns the issues that are not errors (a profile the server does not
/// ship, the second opinion's warnings), for the client to see in an OperationOutcome.
///
/// The second opinion never rejects: on the official R4 examples its only refusal of a
/// resource that passed R4 validation was a valid R4 `Evidence` (R4B reworked that type),
/// and the R4B model also refuses valid R4 such as an `Expression.language` outside its
/// closed list (extensible in R4) or a decimal beyond `f64`. See `r4b_check`.
pub fn validate(
    resource: &Json,
    config: &ValidationConfig,
    nominated: Option<&Profile>,
) -> Result<Vec<Issue>> {
    let is_error = |i: &Issue| matches!(i.severity, IssueSeverity::Error | IssueSeverity::Fatal);
    let mut issues = validate_resource(resource);
    let malformed = issues.iter().any(is_error);
    let profile_issues = validate_profiles(resource, config.unknown_profile, nominated);
    let breaks_profile = profile_issues.iter().any(is_error);
    issues.extend(profile_issues);
    if malformed {
        return Err(Error::InvalidResource(issues));
    }
    if breaks_profile {
        return Err(Error::ProfileViolation(issues));
    }
    if !config.r4b_check {
        return Ok(issues);
    }
    let report = r4b_check::check(&to_text(resource));
    if let Some(refusal) = &report.refusal {
        // The location only: the model's message may quote the resource's values.
        tracing::info!(
            expression = %refusal.expression,
            "the fhir-sdk R4B model refuses a resource that passed R4 validation"
        );
    }
    Ok(issues.into_iter().chain(second_opinion(report)).collect())
}

/// The R4B model's report as OperationOutcome issues: a warning for a refusal, information
/// for each resource it could not judge.
fn second_opinion(report: r4b_check::Report) -> Vec<Issue> {
    let refusal = report.refusal.map(|refusal| Issue {
        severity: IssueSeverity::Warning,
        code: refusal.issue_type(),
        diagnostics: format!(
            "the fhir-sdk R4B model refuses this ({}); the resource passed R4 validation and is \
             accepted as sent, but software reading it as R4B may refuse it",
            refusal.message
        ),
        expression: refusal.expression,
    });
    let not_checked = report.not_checked.into_iter().map(|skipped| Issue {
        severity: IssueSeverity::Information,
        code: "informational",
        diagnostics: match skipped.why {
            r4b_check::Unchecked::RemovedInR4b => format!(
                "not checked against the fhir-sdk R4B model: R4B has no {}",
                skipped.resource_type
            ),
            r4b_check::Unchecked::RedefinedInR4b => format!(
                "not checked against the fhir-sdk R4B model: R4B redefined {}",
                skipped.resource_type
            ),
        },
        expression: skipped.expression,
    });
    refusal.into_iter().chain(not_checked).collect()
}

/// Sets the server-assigned `id`, `meta.versionId` and `meta.lastUpdated`, keeping every
/// other member (and every other `meta` element) as the client sent it. The result starts
/// with `resourceType`, `id` and `meta`, then the rest in the client's order.
pub fn stamp(resource: &mut Json, id: &ResourceId, version: VersionId, last_updated: Instant) {
    let Some(object) = resource.as_object_mut() else {
        return;
    };
    let mut resource_type = None;
    let mut old_meta = None;
    let mut rest = Vec::with_capacity(object.len());
    for entry in std::mem::take(object) {
        match entry.key.as_str() {
            "resourceType" => resource_type = Some(entry.value),
            "meta" => old_meta = Some(entry.value),
            "id" => {}
            _ => rest.push(entry),
        }
    }
    let mut meta = json_syntax::Object::new();
    meta.push("versionId".into(), Json::String(version.to_string().into()));
    meta.push(
        "lastUpdated".into(),
        Json::String(last_updated.to_fhir().into()),
    );
    if let Some(Json::Object(old)) = old_meta {
        for entry in old {
            if !matches!(entry.key.as_str(), "versionId" | "lastUpdated") {
                meta.push_entry(entry);
            }
        }
    }
    if let Some(resource_type) = resource_type {
        object.push("resourceType".into(), resource_type);
    }
    object.push("id".into(), Json::String(id.as_str().into()));
    object.push("meta".into(), Json::Object(meta));
    for entry in rest {
        object.push_entry(entry);
    }
}

/// The compact JSON text of a resource, as stored and served: the text json_syntax's
/// `compact_print` gives, written without its per-character formatter calls (a string is
/// copied in runs between the characters it escapes), which made printing a visible share
/// of every write and read.
pub fn to_text(resource: &Json) -> String {
    let mut out = String::with_capacity(1024);
    write_json(&mut out, resource);
    out
}

fn write_json(out: &mut String, value: &Json) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Boolean(true) => out.push_str("true"),
        Json::Boolean(false) => out.push_str("false"),
        Json::Number(number) => out.push_str(number.as_str()),
        Json::String(text) => write_json_string(out, text),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item);
            }
            out.push(']');
        }
        Json::Object(object) => {
            out.push('{');
            for (i, entry) in object.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(out, &entry.key);
                out.push(':');
                write_json(out, &entry.value);
            }
            out.push('}');
        }
    }
}

/// A JSON string literal, escaped as json_syntax escapes it (`\"`, `\\`, the short forms
/// of `\b \t \n \f \r`, `\u00xx` for the other control characters, everything else as is).
fn write_json_string(out: &mut String, text: &str) {
    out.push('"');
    let mut run = 0;
    for (at, byte) in text.bytes().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0c => "\\f",
            b'\r' => "\\r",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&text[run..at]);
        if escaped.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
        } else {
            out.push_str(escaped);
        }
        run = at + 1;
    }
    out.push_str(&text[run..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_text_prints_what_json_syntax_prints() {
        let texts = [
            r#"{"resourceType":"Patient","id":"a","active":true,"deceasedBoolean":false,"x":null}"#,
            r#"{"n":[1,-2.50,3e10,0.1E-3,[],{}],"s":"quote \" backslash \\ slash / tab \t nl \n cr \r bs \b ff \f nul \u0000 us \u001f del \u007f"}"#,
            r#"{"unicode":"Jos\u00e9 Müller 李 😀","empty":"","o":{"a":{"b":[{"c":"d"}]}}}"#,
        ];
        for text in texts {
            let value = parse_json(text.as_bytes(), 100).expect("valid JSON");
            assert_eq!(to_text(&value), value.compact_print().to_string(), "{text}");
        }
    }
    use fhir_profiles::validate::UnknownProfile;
    use json_syntax::Print;

    fn checks(r4b_check: bool) -> ValidationConfig {
        ValidationConfig {
            unknown_profile: UnknownProfile::Warn,
            r4b_check,
        }
    }

    #[test]
    fn stamping_keeps_what_the_client_wrote() {
        let mut resource = parse_json(
            br#"{"resourceType":"Observation","status":"final","meta":{"profile":["x"],"versionId":"9"},"valueQuantity":{"value":1.50},"id":"old"}"#,
            64,
        )
        .expect("valid JSON");
        let id = ResourceId::parse("abc").expect("id");
        stamp(
            &mut resource,
            &id,
            VersionId::from_db(2),
            Instant::from_millis(0),
        );
        assert_eq!(
            to_text(&resource),
            r#"{"resourceType":"Observation","id":"abc","meta":{"versionId":"2","lastUpdated":"1970-01-01T00:00:00.000Z","profile":["x"]},"status":"final","valueQuantity":{"value":1.50}}"#
        );
    }

    #[test]
    fn the_r4b_model_gives_a_second_opinion() {
        // Valid R4 (Expression.language has an extensible binding), outside the R4B model's list.
        let resource = parse_json(
            br#"{"resourceType":"PlanDefinition","status":"draft","action":[{"condition":[{"kind":"applicability","expression":{"language":"text/x-custom","expression":"x"}}]}]}"#,
            64,
        )
        .expect("valid JSON");
        let issues = validate(&resource, &checks(true), None).expect("a warning, not an error");
        assert!(
            matches!(issues.as_slice(), [issue] if issue.severity == IssueSeverity::Warning
                && issue.code == "code-invalid"
                && issue.expression == "PlanDefinition.action[0].condition[0].expression.language"
                && issue.diagnostics.contains("text/x-custom")),
            "{issues:?}"
        );
        assert_eq!(
            validate(&resource, &checks(false), None).expect("valid"),
            Vec::new()
        );

        let removed = parse_json(
            br#"{"resourceType":"MedicinalProduct","name":[{"productName":"x"}]}"#,
            64,
        )
        .expect("valid JSON");
        let issues = validate(&removed, &checks(true), None).expect("valid R4");
        assert!(
            matches!(issues.as_slice(), [issue] if issue.severity == IssueSeverity::Information
                && issue.diagnostics.contains("R4B has no MedicinalProduct")),
            "{issues:?}"
        );

        let invalid = parse_json(br#"{"resourceType":"Patient","gender":"x"}"#, 64).expect("JSON");
        assert!(
            matches!(validate(&invalid, &checks(true), None), Err(Error::InvalidResource(issues)) if issues.len() == 1),
            "R4 errors come from the R4 validator alone"
        );
    }

    #[test]
    fn bodies_are_checked_before_they_are_built() {
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let cases: [(&[u8], &str); 5] = [
            (b"{", "not valid JSON"),
            (b"[]", "must be a JSON object"),
            (b"\xff", "not valid UTF-8"),
            (deep.as_bytes(), "nested deeper"),
            (br#"{"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}"#, ""),
        ];
        for (body, expected) in cases {
            let result = parse_json(body, 64);
            if expected.is_empty() {
                assert!(
                    result.is_ok(),
                    "brackets inside strings do not count as nesting"
                );
            } else {
                let message = result.expect_err("should be refused").to_string();
                assert!(
                    message.contains(expected),
                    "expected {expected:?} in {message:?}"
                );
            }
        }
    }
}
