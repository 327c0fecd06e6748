//! A second opinion on a FHIR resource: does the typed R4B model of
//! [fhir-sdk](https://crates.io/crates/fhir-sdk) accept it?
//!
//! The gateway's own validator (`fhir_profiles::validate`) checks resources against the
//! R4 (4.0.1) definitions exactly. fhir-sdk has no R4 model, only R4B (4.3.0), which is R4
//! plus new resource types, minus a few R4 types, with some definitions changed; its
//! verdict is therefore advisory: a refusal here names something to look at, not proof
//! that the resource is invalid R4.
//!
//! Only the verdict is used. The typed value is dropped at once: fhir-sdk drops unknown
//! elements and `null`s, stores decimals as `f64` and normalizes date-times, so its output
//! must never be stored or served. Nor does it see everything: besides unknown elements and
//! nulls, it accepts any bad value inside a choice element (`valueBoolean: "yes"`), because
//! serde reads a flattened `Option` that fails as absent. What it does catch that the R4
//! validator does not: base64 that matches R4's pattern but does not decode (`AA=A`), and
//! times with a second of 60 anywhere but at 23:59:60 UTC (where leap seconds go).
//!
//! **Architecture Invariant:** this crate is the only place that instantiates serde for the
//! fhir-sdk models, and it does so once: `Resource` from `serde_json` (text and
//! `serde_json::Value` share the expensive part, because `Resource` is internally tagged
//! and every variant is read from serde's buffered content whatever the source). Keep it
//! that way: each further instantiation costs minutes of compile time.

use std::str::FromStr;

use fhir_sdk::r4b::resources::{Resource, ResourceType};
use serde_json::Value;

/// What the R4B model made of a resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Why the model refused the resource, if it did.
    pub refusal: Option<Refusal>,
    /// Resources set aside because R4B lacks or redefined their type, found when the model
    /// refuses the whole (a resource of such a type that the model accepts is not listed);
    /// when the root is one of them nothing was checked.
    pub not_checked: Vec<NotChecked>,
}

/// The model's reason for refusing a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// A FHIRPath location such as `Patient.contact[0]` or `Bundle.entry[2].resource.status`:
    /// the smallest part of the resource whose removal makes this refusal go away (the
    /// element that holds a bad value, or the object that lacks a member R4B requires).
    pub expression: String,
    /// What the model said, e.g. ``unknown variant `x`, expected one of ...`` or
    /// ``missing field `status` ``; at most [`MAX_MESSAGE_CHARS`] characters.
    pub message: String,
}

impl Refusal {
    /// The R4 `IssueType` code that fits the model's message: `required` for a missing
    /// member, `code-invalid` for a code outside the model's list, `structure` for a JSON
    /// value of the wrong type, `value` otherwise.
    pub fn issue_type(&self) -> &'static str {
        let message = self.message.as_str();
        if message.starts_with("missing field") {
            "required"
        } else if message.starts_with("Unknown value") || message.starts_with("unknown variant") {
            "code-invalid"
        } else if message.starts_with("invalid type") {
            "structure"
        } else {
            "value"
        }
    }
}

/// A resource left out of the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotChecked {
    /// Where it is, e.g. `Bundle.entry[0].resource`, or just its type name for the root.
    pub expression: String,
    pub resource_type: String,
    pub why: Unchecked,
}

/// Why R4B's opinion on a resource type means nothing for R4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unchecked {
    /// An R4 type that R4B removed (the `MedicinalProduct` family, `SubstanceSpecification`,
    /// `EffectEvidenceSynthesis`, `RiskEvidenceSynthesis`).
    RemovedInR4b,
    /// A type that R4B reworked incompatibly ([`REDEFINED_IN_R4B`]).
    RedefinedInR4b,
}

/// R4 resource types that R4B kept under the same name but reworked, so that valid R4
/// instances need not be valid R4B ([R4B version history](http://hl7.org/fhir/R4B/history.html):
/// "Rework Evidence and EvidenceVariable Resources"). The official R4 `Evidence` example,
/// for one, lacks R4B's required `variableDefinition`. No other resource type kept by R4B
/// requires an element that R4 lacks or allows optional.
pub const REDEFINED_IN_R4B: &[&str] = &["Evidence", "EvidenceVariable"];

/// How much of the model's message a [`Refusal`] keeps (serde lists every allowed code).
pub const MAX_MESSAGE_CHARS: usize = 300;

/// How many parses with parts removed locating a refusal may take; beyond it, the deepest
/// location found so far is reported.
const MAX_LOCATE_PARSES: usize = 256;

/// Whether the R4B model's opinion on a resource of this type is worth asking for: `None`
/// if R4B defines the type as R4 does, else why not.
pub fn unchecked(resource_type: &str) -> Option<Unchecked> {
    if ResourceType::from_str(resource_type).is_err() {
        Some(Unchecked::RemovedInR4b)
    } else if REDEFINED_IN_R4B.contains(&resource_type) {
        Some(Unchecked::RedefinedInR4b)
    } else {
        None
    }
}

/// Asks the R4B model whether it accepts `text`, the JSON of one resource.
///
/// The common case, acceptance, costs one typed parse. Anything else costs more: the text
/// is parsed again as `serde_json::Value`, resources of types R4B lacks are set aside, and a
/// refusal is located by parsing copies with parts removed.
pub fn check(text: &str) -> Report {
    let first_error = match serde_json::from_str::<Resource>(text) {
        Ok(_) => return Report::default(),
        Err(error) => error,
    };
    let refused_whole = || Report {
        refusal: Some(Refusal {
            expression: root_type_of(text).unwrap_or_else(|| "Resource".to_owned()),
            message: clip(&message_of(&first_error)),
        }),
        not_checked: Vec::new(),
    };
    // serde_json refuses some JSON as a `Value` too (a number beyond `f64`): nothing to locate.
    let Ok(mut value) = serde_json::from_str::<Value>(text) else {
        return refused_whole();
    };
    let Some(root_type) = value
        .get("resourceType")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return refused_whole();
    };
    if let Some(why) = unchecked(&root_type) {
        return Report {
            refusal: None,
            not_checked: vec![NotChecked {
                expression: root_type.clone(),
                resource_type: root_type,
                why,
            }],
        };
    }
    let mut not_checked = Vec::new();
    let mut path = Vec::new();
    set_aside_unchecked_resources(&mut value, &mut path, &root_type, &mut not_checked);
    let message = match parse(value.clone()) {
        None => {
            return Report {
                refusal: None,
                not_checked,
            };
        }
        Some(message) => message,
    };
    let (path, message) = Locator { parses: 0 }.locate(&value, message);
    Report {
        refusal: Some(Refusal {
            expression: render(&root_type, &path),
            message: clip(&message),
        }),
        not_checked,
    }
}

/// The `resourceType` of a resource that serde_json cannot hold as a `Value` (numbers are
/// skipped here, not converted).
fn root_type_of(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Root {
        #[serde(rename = "resourceType")]
        resource_type: String,
    }
    serde_json::from_str::<Root>(text)
        .ok()
        .map(|root| root.resource_type)
}

/// Parses a resource held as a `serde_json::Value`: `None` if the model accepts it,
/// otherwise its message. (The same instantiation as the parse from text, see the crate
/// documentation.)
fn parse(value: Value) -> Option<String> {
    serde_json::from_value::<Resource>(value)
        .err()
        .map(|error| message_of(&error))
}

/// The message of a serde_json error without its position (which, for the buffered
/// content of an internally tagged enum, is only where the resource ends).
fn message_of(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    match text.strip_suffix(&suffix) {
        Some(message) => message.to_owned(),
        None => text,
    }
}

fn clip(message: &str) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}...", &message[..end]),
        None => message.to_owned(),
    }
}

/// One step from a value to a child: a member of an object or an item of an array.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Member(String),
    Item(usize),
}

impl Step {
    fn render(&self, expression: &mut String) {
        match self {
            Step::Member(name) => {
                expression.push('.');
                expression.push_str(name);
            }
            Step::Item(index) => {
                expression.push('[');
                expression.push_str(&index.to_string());
                expression.push(']');
            }
        }
    }
}

fn render(root: &str, path: &[Step]) -> String {
    let mut expression = root.to_owned();
    for step in path {
        step.render(&mut expression);
    }
    expression
}

/// Replaces, below the root, every resource of a type R4B lacks or redefined (in
/// `contained`, `Bundle.entry.resource` or `Parameters.parameter.resource`) with a minimal
/// resource the model accepts, so that the rest keeps its locations; records where it was.
fn set_aside_unchecked_resources(
    value: &mut Value,
    path: &mut Vec<Step>,
    root: &str,
    not_checked: &mut Vec<NotChecked>,
) {
    let children: Vec<(Step, &mut Value)> = match value {
        Value::Object(object) => object
            .iter_mut()
            .map(|(key, child)| (Step::Member(key.clone()), child))
            .collect(),
        Value::Array(items) => items
            .iter_mut()
            .enumerate()
            .map(|(index, child)| (Step::Item(index), child))
            .collect(),
        _ => return,
    };
    for (step, child) in children {
        path.push(step);
        if let Some((name, why)) = unchecked_resource(child) {
            not_checked.push(NotChecked {
                expression: render(root, path),
                resource_type: name,
                why,
            });
            *child = serde_json::json!({"resourceType": "Basic", "code": {}});
        } else {
            set_aside_unchecked_resources(child, path, root, not_checked);
        }
        path.pop();
    }
}

fn unchecked_resource(value: &Value) -> Option<(String, Unchecked)> {
    let name = value.as_object()?.get("resourceType")?.as_str()?;
    Some((name.to_owned(), unchecked(name)?))
}

/// Finds where a refusal comes from, by parsing copies with parts removed (a small delta
/// debugging): descend into the first child whose removal changes the message.
struct Locator {
    parses: usize,
}

impl Locator {
    /// The path from `root` to the culprit and the model's message about it: inside the
    /// innermost nested resource that fails on its own if there is one (a smaller place to
    /// look, found in one pass over the nested resources), else found by removing parts of
    /// `root`.
    fn locate(&mut self, root: &Value, message: String) -> (Vec<Step>, String) {
        let mut path = Vec::new();
        if let Some((mut nested_path, nested_message)) =
            Self::failing_nested_resource(root, &mut path)
            && let Some(nested) = at(root, &nested_path)
        {
            let (rest, message) = self.locate(nested, nested_message);
            nested_path.extend(rest);
            return (nested_path, message);
        }
        self.find(root, &mut path, &message);
        (path, message)
    }

    /// The first nested resource (in document order, outermost first) that the model
    /// refuses on its own, with its message.
    fn failing_nested_resource(value: &Value, path: &mut Vec<Step>) -> Option<(Vec<Step>, String)> {
        let children: Vec<(Step, &Value)> = match value {
            Value::Object(object) => object
                .iter()
                .map(|(key, child)| (Step::Member(key.clone()), child))
                .collect(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(index, child)| (Step::Item(index), child))
                .collect(),
            _ => return None,
        };
        for (step, child) in children {
            path.push(step);
            let is_resource = child
                .as_object()
                .is_some_and(|object| object.contains_key("resourceType"));
            if is_resource {
                // Not counted against the budget: these parses add up to one pass over
                // the resource per level of nesting.
                if let Some(message) = parse(child.clone()) {
                    return Some((path.clone(), message));
                }
            } else if let Some(found) = Self::failing_nested_resource(child, path) {
                return Some(found);
            }
            path.pop();
        }
        None
    }

    /// Narrows the culprit below `path` in `root`, extending `path` to it. Returns whether
    /// anything below `path` was found.
    fn find(&mut self, root: &Value, path: &mut Vec<Step>, message: &str) -> bool {
        let Some(node) = at(root, path) else {
            return false;
        };
        match node {
            Value::Object(object) => {
                let keys: Vec<String> = object
                    .keys()
                    .filter(|key| *key != "resourceType")
                    .cloned()
                    .collect();
                let mut required = Vec::new();
                for key in keys {
                    match self.try_without_member(root, path, &key, message) {
                        Some(Change::Cleared) => {
                            path.push(Step::Member(key));
                            self.find(root, path, message);
                            return true;
                        }
                        Some(Change::Required) => required.push(key),
                        Some(Change::Same) => {}
                        None => return false,
                    }
                }
                // A member that cannot be left out may still hold the culprit.
                for key in &required {
                    path.push(Step::Member(key.clone()));
                    if self.find(root, path, message) {
                        return true;
                    }
                    path.pop();
                }
                // Nothing below changes the message. Unless it says that this object lacks
                // a member, the one required primitive member, if there is one, holds the
                // bad value.
                let primitives: Vec<&String> = required
                    .iter()
                    .filter(|key| {
                        at(root, path)
                            .and_then(|node| node.get(key.as_str()))
                            .is_some_and(|value| !value.is_object() && !value.is_array())
                    })
                    .collect();
                if let [key] = primitives.as_slice()
                    && !message.starts_with("missing field")
                {
                    path.push(Step::Member((*key).clone()));
                    return true;
                }
                false
            }
            Value::Array(items) => {
                let (mut low, mut high) = (0, items.len());
                // Halve the range of items that holds the culprit: removing items never
                // makes a member missing, so a changed message means the culprit was among them.
                while high - low > 1 {
                    let middle = low + (high - low) / 2;
                    match self.try_without_items(root, path, low..middle, message) {
                        Some(true) => high = middle,
                        Some(false) => low = middle,
                        None => return false,
                    }
                }
                if high - low == 1
                    && self.try_without_items(root, path, low..high, message) == Some(true)
                {
                    path.push(Step::Item(low));
                    self.find(root, path, message);
                    return true;
                }
                false
            }
            _ => false,
        }
    }

    fn try_without_member(
        &mut self,
        root: &Value,
        path: &[Step],
        key: &str,
        message: &str,
    ) -> Option<Change> {
        if self.parses >= MAX_LOCATE_PARSES {
            return None;
        }
        self.parses += 1;
        let mut copy = root.clone();
        at_mut(&mut copy, path)?.as_object_mut()?.remove(key);
        Some(match parse(copy) {
            Some(new) if new == message => Change::Same,
            Some(new) if is_missing(&new, key) => Change::Required,
            _ => Change::Cleared,
        })
    }

    /// Whether removing the items in `range` changes the message.
    fn try_without_items(
        &mut self,
        root: &Value,
        path: &[Step],
        range: std::ops::Range<usize>,
        message: &str,
    ) -> Option<bool> {
        if self.parses >= MAX_LOCATE_PARSES {
            return None;
        }
        self.parses += 1;
        let mut copy = root.clone();
        at_mut(&mut copy, path)?.as_array_mut()?.drain(range);
        Some(parse(copy).as_deref() != Some(message))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// The message went away or became another: the culprit is in what was removed.
    Cleared,
    /// The model now misses what was removed: a required member, which says nothing.
    Required,
    /// The same message: the culprit is elsewhere.
    Same,
}

/// Whether `message` says that the member `key` is missing (serde's wording).
fn is_missing(message: &str, key: &str) -> bool {
    message == format!("missing field `{key}`")
}

fn at<'a>(value: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(value, |value, step| match step {
        Step::Member(key) => value.get(key),
        Step::Item(index) => value.get(index),
    })
}

fn at_mut<'a>(value: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |value, step| match step {
        Step::Member(key) => value.get_mut(key),
        Step::Item(index) => value.get_mut(index),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(text: &str) -> Option<(String, String)> {
        check(text)
            .refusal
            .map(|refusal| (refusal.expression, refusal.message))
    }

    /// What a case is, the resource, and the expected (expression, message) of the refusal.
    type Case = (
        &'static str,
        &'static str,
        Option<(&'static str, &'static str)>,
    );

    #[test]
    fn refusals_are_located_at_the_element_that_causes_them() {
        let cases: &[Case] = &[
            (
                "a valid resource",
                r#"{"resourceType":"Patient","name":[{"family":"Doe"}],"birthDate":"1970-01-01"}"#,
                None,
            ),
            (
                "a bad code deep in an array (Expression.language is extensible in R4, a closed list in the R4B model)",
                r#"{"resourceType":"PlanDefinition","status":"draft","action":[{"title":"a"},{"condition":[{"kind":"applicability","expression":{"language":"text/x-custom","expression":"x"}}]}]}"#,
                Some((
                    "PlanDefinition.action[1].condition[0].expression.language",
                    "Unknown value: text/x-custom",
                )),
            ),
            (
                "a missing required member is located at the object that lacks it",
                r#"{"resourceType":"Questionnaire","status":"draft","item":[{"linkId":"1","type":"group","item":[{"linkId":"2","type":"display"},{"type":"display","text":"x"}]}]}"#,
                Some(("Questionnaire.item[0].item[1]", "missing field `linkId`")),
            ),
            (
                "base64 that matches R4's pattern but does not decode",
                r#"{"resourceType":"Patient","photo":[{"contentType":"image/png"},{"data":"AA=A"}]}"#,
                Some(("Patient.photo[1].data", "Invalid symbol 61, offset 2.")),
            ),
            (
                "inside a Bundle entry, the nested resource is searched on its own",
                r#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient"}},{"resource":{"resourceType":"Patient","photo":[{"data":"=AAA"}]}}]}"#,
                Some((
                    "Bundle.entry[1].resource.photo[0].data",
                    "Invalid symbol 61, offset 0.",
                )),
            ),
            (
                "a decimal beyond f64 (valid R4) is refused as a whole",
                r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1e400}}"#,
                Some(("Observation", "number out of range")),
            ),
        ];
        for (what, text, expected) in cases {
            let expected = expected.map(|(e, m)| (e.to_owned(), m.to_owned()));
            assert_eq!(refusal(text), expected, "{what}");
        }
    }

    #[test]
    fn resources_of_types_r4b_lacks_or_reworked_are_set_aside() {
        let report = check(r#"{"resourceType":"MedicinalProduct","name":[{"productName":"x"}]}"#);
        assert_eq!(report.refusal, None);
        assert_eq!(
            report.not_checked,
            vec![NotChecked {
                expression: "MedicinalProduct".to_owned(),
                resource_type: "MedicinalProduct".to_owned(),
                why: Unchecked::RemovedInR4b,
            }]
        );

        // A valid R4 Evidence: R4B's reworked Evidence requires `variableDefinition`.
        let evidence = r#"{"resourceType":"Evidence","status":"draft","exposureBackground":{"reference":"EvidenceVariable/x"}}"#;
        assert_eq!(
            parse(serde_json::from_str(evidence).expect("json")),
            Some("missing field `variableDefinition`".to_owned()),
            "the reason Evidence is not checked"
        );
        assert_eq!(check(evidence).refusal, None);
        assert_eq!(
            check(evidence).not_checked[0].why,
            Unchecked::RedefinedInR4b
        );

        // Nested ones are set aside and the rest is still checked.
        let report = check(
            r#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"SubstanceSpecification"}},{"resource":{"resourceType":"Patient","photo":[{"data":"=AAA"}]}}]}"#,
        );
        assert_eq!(
            report.not_checked,
            vec![NotChecked {
                expression: "Bundle.entry[0].resource".to_owned(),
                resource_type: "SubstanceSpecification".to_owned(),
                why: Unchecked::RemovedInR4b,
            }]
        );
        assert_eq!(
            report.refusal.map(|refusal| refusal.expression),
            Some("Bundle.entry[1].resource.photo[0].data".to_owned()),
            "locations keep the original indexes"
        );
        let report = check(
            r#"{"resourceType":"Patient","contained":[{"resourceType":"MedicinalProductIndication"},{"resourceType":"Organization","name":"x"}]}"#,
        );
        assert_eq!(report.refusal, None);
        assert_eq!(report.not_checked[0].expression, "Patient.contained[0]");
        let report = check(
            r#"{"resourceType":"Patient","contained":[{"resourceType":"MedicinalProductIndication"},{"resourceType":"Binary","contentType":"text/plain","data":"A==="}]}"#,
        );
        assert_eq!(
            report.refusal.map(|refusal| refusal.expression),
            Some("Patient.contained[1].data".to_owned())
        );
    }

    #[test]
    fn what_the_r4b_model_does_not_see() {
        // Known blind spots (also why this is a second opinion): unknown elements and nulls
        // are dropped, and serde turns errors inside a choice element into "absent".
        for text in [
            r#"{"resourceType":"Patient","notAnElement":1}"#,
            r#"{"resourceType":"Patient","gender":null}"#,
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueBoolean":"yes"}"#,
        ] {
            assert_eq!(check(text), Report::default(), "{text}");
        }
    }

    #[test]
    fn a_refusal_in_a_large_bundle_is_found() {
        let mut entries: Vec<Value> = (0..2000)
            .map(|i| serde_json::json!({"resource": {"resourceType": "Patient", "id": format!("p{i}")}}))
            .collect();
        entries[1500]["resource"]["photo"] = serde_json::json!([{"data": "A==="}]);
        let bundle =
            serde_json::json!({"resourceType": "Bundle", "type": "collection", "entry": entries});
        assert_eq!(
            refusal(&bundle.to_string()),
            Some((
                "Bundle.entry[1500].resource.photo[0].data".to_owned(),
                "Invalid symbol 61, offset 1.".to_owned()
            ))
        );
    }

    #[test]
    fn long_messages_are_clipped() {
        let message = clip(&"x".repeat(MAX_MESSAGE_CHARS + 10));
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 3);
        assert_eq!(clip("short"), "short");
    }
}
