//! `_summary` and `_elements` in requests ([search.html#summary](http://hl7.org/fhir/R4/search.html#summary),
//! [search.html#elements](http://hl7.org/fhir/R4/search.html#elements)): read from the query
//! of a read, vread, search or history, and applied to stored resources on the way out.
//! What a subset keeps is decided by [`fhir_profiles::subset`]; a stored version is never
//! changed, and a subset is tagged `SUBSETTED` (writes of such a resource are refused, see
//! `interaction::check_body`).
//!
//! - a bad value (`_summary=maybe`, an empty `_elements` item) answers 400;
//! - an `_elements` item that names no top-level element of the request's types follows
//!   `Prefer: handling`: strict answers 400, lenient ignores the item (a search says so in
//!   its OperationOutcome entry);
//! - `_summary` (other than `false`) together with `_elements` answers 400: R4 does not say
//!   which one wins, and HAPI and Microsoft's FHIR server refuse the combination too
//!   (`_count=0` with `_elements` is a count);
//! - `_summary=count` is for search only.

use std::borrow::Cow;

use fhir_profiles::Json;
use fhir_profiles::subset::Elements;
pub use fhir_profiles::subset::{SearchMode, Subset};
use json_syntax::Parse;

use crate::error::{Error, Result};
use crate::interaction::search::Handling;
use crate::interaction::{Body, Outcome};
use crate::resource;

/// The value of `_summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    True,
    Text,
    Data,
    Count,
    False,
}

impl Summary {
    pub fn parse(value: &str) -> Result<Summary> {
        Ok(match value {
            "true" => Summary::True,
            "text" => Summary::Text,
            "data" => Summary::Data,
            "count" => Summary::Count,
            "false" => Summary::False,
            _ => {
                return Err(Error::Invalid(format!(
                    "_summary={value}: expected true, text, data, count or false"
                )));
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Summary::True => "true",
            Summary::Text => "text",
            Summary::Data => "data",
            Summary::Count => "count",
            Summary::False => "false",
        }
    }
}

/// The `_summary` and `_elements` parameters of one request.
#[derive(Debug, Default)]
pub struct ResultParams {
    summary: Option<Summary>,
    elements: Option<Elements>,
    /// `_elements` items ignored under lenient handling, one message each.
    pub ignored: Vec<String>,
}

impl ResultParams {
    /// Takes `name=value` when it is `_summary` or `_elements` (and says whether it was), for
    /// a request about `resource_types` (empty: any type). A repeated `_summary` replaces the
    /// earlier one; a repeated `_elements` adds its items.
    pub fn take(
        &mut self,
        name: &str,
        value: &str,
        resource_types: &[&str],
        handling: Handling,
    ) -> Result<bool> {
        match name {
            "_summary" => self.summary = Some(Summary::parse(value)?),
            "_elements" => {
                let parsed = Elements::parse(value, resource_types).map_err(Error::Invalid)?;
                if handling == Handling::Strict
                    && let Some(first) = parsed.unsupported.first()
                {
                    return Err(Error::NotSupported(first.clone()));
                }
                self.ignored.extend(parsed.unsupported);
                if let Some(elements) = parsed.elements {
                    match &mut self.elements {
                        Some(existing) => existing.extend(elements),
                        None => self.elements = Some(elements),
                    }
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The `_summary` given, if any.
    pub fn summary(&self) -> Option<Summary> {
        self.summary
    }

    /// The subset to serve resources in (`None` for whole resources, and for a count, which
    /// serves none).
    pub fn subset(&self) -> Result<Option<Subset>> {
        match (self.summary, &self.elements) {
            (Some(summary), Some(_)) if summary != Summary::False => Err(Error::Invalid(format!(
                "_summary={} and _elements cannot be combined; use one of them",
                summary.as_str()
            ))),
            (_, Some(elements)) => Ok(Some(Subset::Elements(elements.clone()))),
            (Some(Summary::True), None) => Ok(Some(Subset::Summary)),
            (Some(Summary::Text), None) => Ok(Some(Subset::Text)),
            (Some(Summary::Data), None) => Ok(Some(Subset::Data)),
            (Some(Summary::Count | Summary::False) | None, None) => Ok(None),
        }
    }

    /// The parameters as applied, for `self` and `next` links.
    pub fn applied(&self) -> Vec<(String, String)> {
        let mut applied = Vec::new();
        if let Some(summary) = self.summary {
            applied.push(("_summary".to_owned(), summary.as_str().to_owned()));
        }
        if let Some(elements) = &self.elements {
            applied.push(("_elements".to_owned(), elements.to_param()));
        }
        applied
    }

    /// The subset for an interaction other than search, where `_summary=count` means nothing.
    pub fn subset_outside_search(&self) -> Result<Option<Subset>> {
        if self.summary == Some(Summary::Count) {
            return Err(Error::Invalid(
                "_summary=count applies to search only".to_owned(),
            ));
        }
        self.subset()
    }
}

/// The subset asked for in the query of a read or vread of `resource_type`. Other
/// parameters are left alone, as a read has always done.
pub fn from_read_query(
    query: &str,
    resource_type: &str,
    handling: Handling,
) -> Result<Option<Subset>> {
    let mut params = ResultParams::default();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        params.take(&name, &value, &[resource_type], handling)?;
    }
    params.subset_outside_search()
}

/// A stored resource (compact JSON text) as served: the text itself when there is no subset
/// or it does not apply to a resource of `resource_type` served as `mode`, else the subset.
pub fn serve<'a>(
    text: &'a str,
    subset: Option<&Subset>,
    resource_type: &str,
    mode: SearchMode,
) -> Result<Cow<'a, str>> {
    let Some(subset) = subset.filter(|s| s.applies_to(resource_type, mode)) else {
        return Ok(Cow::Borrowed(text));
    };
    let (mut value, _) = Json::parse_str(text).map_err(|e| {
        Error::Internal(anyhow::anyhow!("a stored resource is not valid JSON: {e}"))
    })?;
    subset.apply(&mut value, mode);
    Ok(Cow::Owned(resource::to_text(&value)))
}

/// The outcome of a read or vread with its resource served in `subset`.
pub fn outcome(
    mut outcome: Outcome,
    subset: Option<&Subset>,
    resource_type: &str,
) -> Result<Outcome> {
    if let Body::Resource(text) = &outcome.body
        && let Cow::Owned(served) = serve(text, subset, resource_type, SearchMode::Match)?
    {
        outcome.body = Body::Resource(served);
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(query: &str, handling: Handling) -> Result<ResultParams> {
        let mut params = ResultParams::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            params.take(&name, &value, &["Patient"], handling)?;
        }
        Ok(params)
    }

    #[test]
    fn parameters_parse_into_a_subset() {
        let cases: [(&str, &str); 7] = [
            ("", "whole"),
            ("_summary=false", "whole"),
            ("_summary=count", "whole"),
            ("_summary=true", "summary"),
            ("_summary=text&_summary=data", "data"),
            ("_summary=false&_elements=name", "elements"),
            ("_count=0&_elements=name&_format=json", "elements"),
        ];
        for (query, expected) in cases {
            let subset = params(query, Handling::Strict)
                .and_then(|p| p.subset())
                .expect(query);
            let kind = match subset {
                None => "whole",
                Some(Subset::Summary) => "summary",
                Some(Subset::Text) => "text",
                Some(Subset::Data) => "data",
                Some(Subset::Elements(_)) => "elements",
            };
            assert_eq!(kind, expected, "{query}");
        }
        let p = params("_elements=name&_elements=gender,nope", Handling::Lenient).expect("lenient");
        assert_eq!(
            p.applied(),
            vec![("_elements".to_owned(), "name,gender".to_owned())],
            "repeated _elements add up; unknown items are ignored"
        );
        assert_eq!(p.ignored.len(), 1);
    }

    #[test]
    fn bad_parameters_are_refused() {
        let cases: [(&str, Handling, &str); 5] = [
            ("_summary=maybe", Handling::Lenient, "expected true, text"),
            ("_elements=", Handling::Lenient, "comma-separated"),
            (
                "_elements=nope",
                Handling::Strict,
                "not a top-level element",
            ),
            (
                "_summary=true&_elements=name",
                Handling::Lenient,
                "cannot be combined",
            ),
            (
                "_summary=count&_elements=name",
                Handling::Lenient,
                "cannot be combined",
            ),
        ];
        for (query, handling, expected) in cases {
            let error = params(query, handling)
                .and_then(|p| p.subset())
                .expect_err(query)
                .to_string();
            assert!(
                error.contains(expected),
                "{query}: expected {expected:?} in {error:?}"
            );
        }
        let error = from_read_query("_summary=count", "Patient", Handling::Lenient)
            .expect_err("count on a read")
            .to_string();
        assert!(error.contains("search only"), "{error}");
        assert_eq!(
            from_read_query("_elements=nope&foo=bar", "Patient", Handling::Lenient)
                .expect("lenient"),
            None,
            "nothing understood: whole resources"
        );
    }

    #[test]
    fn serving_without_a_subset_returns_the_stored_text() {
        let text = r#"{"resourceType":"Patient","id":"p","text":{"status":"empty","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"/>"},"gender":"female"}"#;
        assert!(matches!(
            serve(text, None, "Patient", SearchMode::Match).expect("served"),
            Cow::Borrowed(t) if t == text
        ));
        let data = serve(text, Some(&Subset::Data), "Patient", SearchMode::Match).expect("served");
        assert!(
            !data.contains("\"text\"") && data.contains("SUBSETTED"),
            "{data}"
        );
    }
}
