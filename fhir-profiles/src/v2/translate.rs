//! The interpreter of the mapping tables, and the few things the tables cannot say.
//!
//! From the tables: which segment fills which resource (message maps, with their
//! conditions), every field's FHIR path, the data type map applied to it, its condition, its
//! constant and its vocabulary map (segment, data type and code system maps).
//!
//! Written here, because the tables leave them as prose or as references to resources we do
//! not create:
//! - references between the resources of a message (`subject`/`patient` to the Patient of
//!   its PID, `encounter` to the Encounter of its PV1, `DiagnosticReport.result` and
//!   `.specimen` to the Observations and Specimens of its order, `Observation.partOf` to the
//!   Immunization of its order), by `urn:uuid:` fullUrls;
//! - fields the maps send to Practitioner, Organization, Location and other resources the
//!   translator does not write become logical references (`identifier` and `display`);
//! - which segment starts a resource and which only adds to one ([`creates`]); one that adds
//!   to a resource a later segment starts (A11's MSH) is applied after it;
//! - an identifier's system from its assigning authority, coding systems named by their
//!   table 0396 mnemonic as URIs ([`coding_system_uri`]);
//! - the conditional-update key of each entry: a Patient's PID-3, else the filler's then the
//!   first identifier, an Observation's order number and set id, an accession number, or an
//!   identifier derived from patient, code and time;
//! - v2 date/times to FHIR (a time without a UTC offset keeps only its date: FHIR requires
//!   an offset with a time, and a pure function cannot know the sender's zone);
//! - A40: the surviving Patient's `link`, and a FHIRPath Patch linking the merged one;
//! - an element the validator refuses (a code outside a required value set, a value of the
//!   wrong form, part of an element without its required rest) is dropped rather than failing
//!   the message; a required code the message leaves empty or the vocabulary map does not
//!   translate is `unknown` where the value set has it; any other missing required element
//!   fails the message (AE) naming the field that fills it.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use super::parse::{Component, Field, Message, NULL, Repetition, Segment, parse};
use super::tables::{Cond, MessageEntry, Row, tables};
use super::{ErrorCode, Header, Merge, Translation, V2Error};
use crate::Json;
use crate::definitions::{Definitions, ElementDefinition};

/// The message types and triggers translated.
const SUPPORTED: &[&str] = &[
    "ADT^A01", "ADT^A02", "ADT^A03", "ADT^A04", "ADT^A05", "ADT^A08", "ADT^A11", "ADT^A13",
    "ADT^A28", "ADT^A31", "ADT^A40", "ORU^R01", "VXU^V04",
];

/// Resource types whose maps produce a logical reference rather than a resource.
const REFERENCED_ONLY: &[&str] = &[
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Device",
    "RelatedPerson",
];

// ------------------------------------------------------------------ a small JSON tree

/// A JSON value under construction: members keep their order, numbers their text.
#[derive(Debug, Clone)]
enum J {
    Obj(Vec<(String, J)>),
    Arr(Vec<J>),
    Str(String),
    Num(String),
    Bool(bool),
}

impl J {
    fn obj() -> J {
        J::Obj(Vec::new())
    }

    fn member(&mut self, key: &str) -> Option<&mut J> {
        match self {
            J::Obj(members) => members.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn get(&self, key: &str) -> Option<&J> {
        match self {
            J::Obj(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn set(&mut self, key: &str, value: J) {
        if let J::Obj(members) = self {
            match members.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => members.push((key.to_owned(), value)),
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if let J::Obj(members) = self {
            members.retain(|(k, _)| k != key);
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            J::Str(s) => Some(s),
            _ => None,
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            J::Obj(m) => m.is_empty(),
            J::Arr(a) => a.is_empty(),
            J::Str(s) => s.is_empty(),
            _ => false,
        }
    }

    /// Drops empty objects, arrays and strings, recursively.
    fn prune(&mut self) {
        match self {
            J::Obj(members) => {
                for (_, v) in members.iter_mut() {
                    v.prune();
                }
                members.retain(|(_, v)| !v.is_empty());
            }
            J::Arr(items) => {
                for v in items.iter_mut() {
                    v.prune();
                }
                items.retain(|v| !v.is_empty());
            }
            _ => {}
        }
    }

    /// The value as JSON (numbers keep their text).
    fn to_json(&self) -> Json {
        match self {
            J::Obj(members) => Json::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.as_str().into(), v.to_json()))
                    .collect(),
            ),
            J::Arr(items) => Json::Array(items.iter().map(J::to_json).collect()),
            J::Str(s) => Json::String(s.as_str().into()),
            // `primitive` only makes numbers of checked digits
            J::Num(n) => n
                .parse::<json_syntax::NumberBuf>()
                .map_or_else(|_| Json::String(n.as_str().into()), Json::Number),
            J::Bool(b) => Json::Boolean(*b),
        }
    }
}

// ------------------------------------------------------------------ v2 values

/// A v2 value at some level: a whole field, one repetition, a component or a subcomponent.
#[derive(Debug, Clone, Copy)]
enum Node<'a> {
    Field(&'a Field),
    Rep(&'a Repetition),
    Comp(&'a Component),
    Text(&'a str),
    Empty,
}

impl<'a> Node<'a> {
    fn child(self, n: usize) -> Node<'a> {
        let i = n.saturating_sub(1);
        match self {
            Node::Field(f) => f
                .repetitions
                .first()
                .map_or(Node::Empty, |r| Node::Rep(r).child(n)),
            Node::Rep(r) => r.components.get(i).map_or(Node::Empty, Node::Comp),
            Node::Comp(c) => c
                .subcomponents
                .get(i)
                .map_or(Node::Empty, |s| Node::Text(s)),
            Node::Text(t) if n == 1 => Node::Text(t),
            _ => Node::Empty,
        }
    }

    fn descend(self, path: &[usize]) -> Node<'a> {
        path.iter().fold(self, |node, &n| node.child(n))
    }

    /// The first leaf, trimmed; `""` (the explicit null) reads as empty.
    fn text(self) -> &'a str {
        let text = match self {
            Node::Field(f) => f.repetitions.first().map_or("", |r| Node::Rep(r).text()),
            Node::Rep(r) => r
                .components
                .first()
                .and_then(|c| c.subcomponents.first())
                .map_or("", String::as_str),
            Node::Comp(c) => c.subcomponents.first().map_or("", String::as_str),
            Node::Text(t) => t,
            Node::Empty => "",
        };
        let text = text.trim();
        if text == NULL { "" } else { text }
    }

    /// Whether any leaf has a value.
    fn valued(self) -> bool {
        match self {
            Node::Field(f) => f.repetitions.iter().any(|r| Node::Rep(r).valued()),
            Node::Rep(r) => r.components.iter().any(|c| Node::Comp(c).valued()),
            Node::Comp(c) => c
                .subcomponents
                .iter()
                .any(|s| !s.trim().is_empty() && s != NULL),
            Node::Text(t) => !t.trim().is_empty() && t != NULL,
            Node::Empty => false,
        }
    }

    fn count(self) -> usize {
        match self {
            Node::Field(f) => f
                .repetitions
                .iter()
                .filter(|r| Node::Rep(r).valued())
                .count(),
            other => usize::from(other.valued()),
        }
    }
}

/// Where a row's field references are resolved: a segment (with the repetition of the field
/// being mapped) or a value a data type map is applied to.
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    Segment {
        segment: &'a Segment,
        current: Option<(usize, &'a Repetition)>,
    },
    Value(Node<'a>),
}

impl<'a> Scope<'a> {
    fn resolve(self, path: &[usize], whole_field: bool) -> Node<'a> {
        match self {
            Scope::Value(node) => node.descend(path),
            Scope::Segment { segment, current } => {
                let Some((&field, rest)) = path.split_first() else {
                    return Node::Empty;
                };
                let Some(f) = segment.field(field) else {
                    return Node::Empty;
                };
                if whole_field && rest.is_empty() {
                    return Node::Field(f);
                }
                let rep = match current {
                    Some((n, rep)) if n == field => Some(rep),
                    _ => f.repetitions.first(),
                };
                rep.map_or(Node::Empty, |r| Node::Rep(r).descend(rest))
            }
        }
    }

    fn holds(self, cond: &Cond) -> bool {
        match cond {
            Cond::All(items) => items.iter().all(|c| self.holds(c)),
            Cond::Any(items) => items.iter().any(|c| self.holds(c)),
            Cond::Not(c) => !self.holds(c),
            Cond::Valued(path) => self.resolve(path, true).valued(),
            Cond::Eq(path, value) => self.resolve(path, false).text() == value,
            Cond::In(path, values) => {
                let text = self.resolve(path, false).text();
                values.iter().any(|v| v == text)
            }
            Cond::Count(path, op, n) => compare(self.resolve(path, true).count(), op, *n),
            Cond::Length(path, op, n) => {
                compare(self.resolve(path, false).text().chars().count(), op, *n)
            }
        }
    }
}

fn compare(value: usize, op: &str, n: usize) -> bool {
    match op {
        "eq" => value == n,
        "gt" => value > n,
        "ge" => value >= n,
        "lt" => value < n,
        "le" => value <= n,
        _ => false,
    }
}

// ------------------------------------------------------------------ applying maps

/// One step of a FHIR path of the maps: `identifier[2]`, `individual(Practitioner)`.
#[derive(Debug)]
struct Step<'p> {
    name: &'p str,
    label: &'p str,
}

fn steps(path: &str) -> Vec<Step<'_>> {
    // `[1].given[2]`: the leading index names the element the data type map fills
    let path = path.strip_prefix("[1]").unwrap_or(path);
    path.split('.')
        .filter(|s| !s.is_empty())
        .enumerate()
        // `Quantity.code` in a data type map: the leading type name is the element itself
        .filter(|(i, s)| !(*i == 0 && s.starts_with(|c: char| c.is_ascii_uppercase())))
        .map(|(_, s)| s)
        .map(|s| {
            let s = s.split('(').next().unwrap_or(s);
            match s.find('[') {
                Some(i) => Step {
                    name: &s[..i],
                    label: s[i + 1..].trim_end_matches(']'),
                },
                None => Step { name: s, label: "" },
            }
        })
        .collect()
}

/// The element a step names under a type path, with the type of its value.
#[derive(Debug, Clone)]
struct Resolved<'d> {
    element: &'d ElementDefinition,
    /// The path of the value's type for the next step: a type name (`HumanName`) or a
    /// backbone element path (`Patient.contact`).
    type_path: String,
    /// The type code (`string`, `CodeableConcept`, `BackboneElement`).
    type_code: String,
}

fn resolve<'d>(defs: &'d Definitions, type_path: &str, name: &str) -> Option<Resolved<'d>> {
    if let Some(element) = defs.element(&format!("{type_path}.{name}")) {
        if element.content_reference.is_some() {
            return None;
        }
        let type_code = element.types.first()?.code.clone();
        let next = if element.is_backbone() {
            format!("{type_path}.{name}")
        } else {
            type_code.clone()
        };
        return Some(Resolved {
            element,
            type_path: next,
            type_code,
        });
    }
    // a choice element: `valueString` is `value[x]` of type `string`
    for (i, _) in name.char_indices().skip(1) {
        let (prefix, suffix) = name.split_at(i);
        if !suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
            continue;
        }
        if let Some(element) = defs.element(&format!("{type_path}.{prefix}[x]")) {
            let ty = element
                .types
                .iter()
                .find(|t| t.code == suffix || lower_first(suffix) == t.code)?;
            return Some(Resolved {
                element,
                type_path: ty.code.clone(),
                type_code: ty.code.clone(),
            });
        }
    }
    None
}

/// [`resolve`] against the R4 definitions, remembered per thread: a message resolves the same
/// few hundred paths again and again.
fn resolve_cached(type_path: &str, name: &str) -> Option<Resolved<'static>> {
    thread_local! {
        static CACHE: std::cell::RefCell<HashMap<(String, String), Option<Resolved<'static>>>> =
            std::cell::RefCell::new(HashMap::new());
    }
    CACHE.with(|cache| {
        let key = (type_path.to_owned(), name.to_owned());
        if let Some(hit) = cache.borrow().get(&key) {
            return hit.clone();
        }
        let resolved = resolve(Definitions::r4(), type_path, name);
        cache.borrow_mut().insert(key, resolved.clone());
        resolved
    })
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_ascii_lowercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

fn is_primitive(type_code: &str) -> bool {
    type_code.starts_with(|c: char| c.is_ascii_lowercase())
}

/// The state of one translation: element slots of repeating elements, so that rows naming
/// the same `identifier[2]` of the same repetition fill one element.
struct Mapper<'t> {
    defs: &'t Definitions,
    slots: HashMap<String, usize>,
}

impl<'t> Mapper<'t> {
    /// Applies the rows of a segment map to `target` (a resource).
    fn apply_segment(
        &mut self,
        rows: &[Row],
        segment: &Segment,
        scope_key: &str,
        target: &mut J,
        resource_type: &str,
    ) {
        // `component[each]`: one item per repetition of the repeating field the rows name
        // (OBX-5), rows of other fields (OBX-3) filling every item
        let each = rows
            .iter()
            .filter(|r| r.path.contains("[each]"))
            .filter_map(|r| r.field.first().and_then(|&f| segment.field(f)))
            .map(|f| f.repetitions.len())
            .max()
            .unwrap_or(0);
        for row in rows {
            let Some(&field) = row.field.first() else {
                // a row of no field (one the script adds, as Coverage.status): its constant,
                // once per segment
                if row.value.is_some() {
                    self.apply_row(row, Node::Empty, target, resource_type, scope_key, "#0");
                }
                continue;
            };
            let Some(f) = segment.field(field) else {
                continue;
            };
            let repetitions: Vec<(usize, &Repetition)> =
                if row.path.contains("[each]") && f.repetitions.len() == 1 {
                    (0..each).map(|i| (i, &f.repetitions[0])).collect()
                } else {
                    f.repetitions.iter().enumerate().collect()
                };
            for (rep_index, rep) in repetitions {
                let scope = Scope::Segment {
                    segment,
                    current: Some((field, rep)),
                };
                if let Some(cond) = &row.cond
                    && !scope.holds(cond)
                {
                    continue;
                }
                let node = Node::Rep(rep).descend(&row.field[1..]);
                if !node.valued() {
                    continue;
                }
                let key = format!("#{rep_index}");
                self.apply_row(row, node, target, resource_type, scope_key, &key);
            }
        }
    }

    /// Applies one row: walks (creating) the path and sets the value.
    fn apply_row(
        &mut self,
        row: &Row,
        node: Node<'_>,
        target: &mut J,
        type_path: &str,
        pointer: &str,
        key: &str,
    ) {
        if row.path == "$value" || row.path == "$this" {
            return; // primitive-valued maps are read by `primitive_of_map`
        }
        let steps = steps(&row.path);
        let Some((last, parents)) = steps.split_last() else {
            return;
        };
        let mut current = target;
        let mut type_path = type_path.to_owned();
        let mut pointer = pointer.to_owned();
        for step in parents {
            let Some(resolved) = resolve_cached(&type_path, step.name) else {
                return;
            };
            if is_primitive(&resolved.type_code) {
                // `birthDate.extension`: extensions of primitives are not written
                return;
            }
            let Some((child, child_pointer)) = self.slot(
                current,
                &pointer,
                step,
                resolved.element.max.is_repeating(),
                key,
            ) else {
                return;
            };
            current = child;
            pointer = child_pointer;
            type_path = resolved.type_path;
        }
        let Some(resolved) = resolve_cached(&type_path, last.name) else {
            return;
        };
        if last.name == "url" && row.value.is_none() {
            // an extension's url comes from the map, never from the message
            return;
        }
        let Some(value) = self.value_of(row, node, &resolved) else {
            return;
        };
        let value = match value {
            // a coding system named as v2 names it (CWE.3 `LN`) as the URI FHIR uses
            Value::Primitive(J::Str(name))
                if last.name == "system"
                    && row.value.is_none()
                    && matches!(type_path.as_str(), "Coding" | "Quantity") =>
            {
                Value::Primitive(J::Str(coding_system_uri(&name)))
            }
            other => other,
        };
        if type_path == "Coding"
            && last.name == "code"
            && let Some(vocab) = &row.vocab
            && let Some(c) = concept(vocab, node.text())
        {
            // a code translated by a vocabulary map brings its system and display
            if !c.system.is_empty() {
                current.set("system", J::Str(c.system.clone()));
            }
            if !c.display.is_empty() && current.get("display").is_none() {
                current.set("display", J::Str(c.display.clone()));
            }
        }
        let repeating = resolved.element.max.is_repeating();
        match value {
            Value::Primitive(v) => {
                if repeating {
                    let Some((slot, _)) = self.slot(current, &pointer, last, true, key) else {
                        return;
                    };
                    *slot = v;
                } else {
                    current.set(last.name, v);
                }
            }
            Value::Complex(map) => {
                let Some((slot, slot_pointer)) = self.slot(current, &pointer, last, repeating, key)
                else {
                    return;
                };
                let rows = tables()
                    .datatypes
                    .get(map)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                if rows.iter().any(|r| r.path == "$value" || r.path == "$this")
                    && let Some(text) = primitive_of_map(map, node)
                    && let Some(element) = resolve_cached(&resolved.type_path, "value")
                    && let Some(value) = primitive(&text, &element.type_code)
                {
                    // a primitive map (`NM[Quantity]`: NM.1 is the value) applied to a
                    // complex element: its value
                    slot.set("value", value);
                }
                let scope = Scope::Value(node);
                for inner in rows {
                    if let Some(cond) = &inner.cond
                        && !scope.holds(cond)
                    {
                        continue;
                    }
                    let inner_node = node.descend(&inner.field);
                    if !inner_node.valued() && inner.value.is_none() {
                        continue;
                    }
                    if inner.value.is_some() && !node.valued() {
                        continue;
                    }
                    self.apply_row(
                        inner,
                        inner_node,
                        slot,
                        &resolved.type_path,
                        &slot_pointer,
                        "0",
                    );
                }
                if let Some(vocab) = &row.vocab {
                    translate_codes(slot, vocab, &resolved.type_code);
                }
                if resolved.type_code == "Identifier" && slot.get("system").is_none() {
                    // the assigning authority as the identifier's system (the maps say
                    // "system if the authority is in the identifier registry, else assigner"
                    // in prose): CX.4 is an HD, EI.2-4 are an HD's components
                    let system = if map.starts_with("CX") {
                        identifier_system(node.child(4))
                    } else if map.starts_with("EI") {
                        identifier_system_flat(node)
                    } else {
                        String::new()
                    };
                    if !system.is_empty() && slot.get("value").is_some() {
                        slot.set("system", J::Str(system));
                    }
                }
            }
            Value::Set(v) => {
                let Some((slot, _)) = self.slot(current, &pointer, last, repeating, key) else {
                    return;
                };
                *slot = v;
            }
        }
    }

    /// The element a step names, created if missing; for a repeating element, the item of
    /// this step's label and `key` (the repetition being mapped). `None` when `parent` is not
    /// an object (the definitions make that impossible; a malformed map must not panic).
    fn slot<'j>(
        &mut self,
        parent: &'j mut J,
        pointer: &str,
        step: &Step<'_>,
        repeating: bool,
        key: &str,
    ) -> Option<(&'j mut J, String)> {
        let name = step.name;
        let J::Obj(members) = parent else {
            return None;
        };
        let position = match members.iter().position(|(k, _)| k == name) {
            Some(i) => i,
            None => {
                let empty = if repeating {
                    J::Arr(Vec::new())
                } else {
                    J::obj()
                };
                members.push((name.to_owned(), empty));
                members.len() - 1
            }
        };
        let member = &mut members.get_mut(position)?.1;
        if !repeating {
            return Some((member, format!("{pointer}/{name}")));
        }
        if !matches!(member, J::Arr(_)) {
            *member = J::Arr(Vec::new());
        }
        let J::Arr(items) = member else {
            return None;
        };
        let slot_key = format!("{pointer}/{name}[{}]{key}", step.label);
        let index = match self.slots.get(&slot_key) {
            Some(&i) if i < items.len() => i,
            _ => {
                items.push(J::obj());
                self.slots.insert(slot_key, items.len() - 1);
                items.len() - 1
            }
        };
        let child_pointer = format!("{pointer}/{name}/{index}");
        Some((items.get_mut(index)?, child_pointer))
    }

    fn value_of<'r>(
        &self,
        row: &'r Row,
        node: Node<'_>,
        resolved: &Resolved<'_>,
    ) -> Option<Value<'r>> {
        let type_code = resolved.type_code.as_str();
        if let Some(constant) = &row.value {
            return primitive(constant, type_code).map(Value::Primitive);
        }
        if let Some(map) = &row.map {
            let map_target = map.split('[').nth(1).unwrap_or("").trim_end_matches(']');
            let map_target = map_target.split('-').next().unwrap_or(map_target);
            if type_code == "Reference" {
                if REFERENCED_ONLY.contains(&map_target) {
                    return self
                        .logical_reference(map, map_target, node)
                        .map(Value::Set);
                }
                return None;
            }
            if is_primitive(type_code) {
                let text = primitive_of_map(map, node)?;
                let text = match &row.vocab {
                    Some(vocab) => concept(vocab, &text).map_or(text, |c| c.code.clone()),
                    None => text,
                };
                return primitive(&text, type_code).map(Value::Primitive);
            }
            if (type_code == "Coding" || type_code == "CodeableConcept")
                && let Some(vocab) = &row.vocab
                && let Some(c) = concept(vocab, node.text())
            {
                let coding = coding(c);
                return Some(Value::Set(if type_code == "Coding" {
                    coding
                } else {
                    J::Obj(vec![("coding".into(), J::Arr(vec![coding]))])
                }));
            }
            if tables().datatypes.contains_key(map) {
                return Some(Value::Complex(map));
            }
            return None;
        }
        if !is_primitive(type_code) {
            return None;
        }
        let text = node.text();
        let text = match &row.vocab {
            Some(vocab) => match concept(vocab, text) {
                Some(c) => c.code.clone(),
                None if type_code == "code" => match &resolved.element.required_binding {
                    // a code the vocabulary map does not translate, for an element bound to
                    // a required value set: `unknown` where the value set has it
                    // (Observation.status for OBX-11 `S`), else nothing
                    Some(value_set) => {
                        let has_unknown = self
                            .defs
                            .value_set_codes(value_set)
                            .is_some_and(|codes| codes.contains("unknown"));
                        if has_unknown {
                            "unknown".to_owned()
                        } else {
                            return None;
                        }
                    }
                    None => text.to_owned(),
                },
                None => text.to_owned(),
            },
            None => text.to_owned(),
        };
        primitive(&text, type_code).map(Value::Primitive)
    }

    /// A Reference with the identifier and display the map would give the referenced
    /// resource (which is not written).
    fn logical_reference(&self, map: &str, resource_type: &str, node: Node<'_>) -> Option<J> {
        let mut scratch = J::obj();
        let mut mapper = Mapper {
            defs: self.defs,
            slots: HashMap::new(),
        };
        let rows = tables().datatypes.get(map)?;
        let scope = Scope::Value(node);
        for row in rows {
            if let Some(cond) = &row.cond
                && !scope.holds(cond)
            {
                continue;
            }
            let inner = node.descend(&row.field);
            if !inner.valued() {
                continue;
            }
            mapper.apply_row(row, inner, &mut scratch, resource_type, "", "0");
        }
        scratch.prune();
        let mut reference = J::obj();
        if let Some(J::Arr(ids)) = scratch.get("identifier")
            && let Some(id) = ids.iter().find(|i| i.get("value").is_some())
        {
            let mut id = id.clone();
            id.remove("assigner");
            reference.set("identifier", id);
        }
        let display = display_of(&scratch);
        if let Some(display) = display {
            reference.set("display", J::Str(display));
        }
        if reference.is_empty() {
            return None;
        }
        reference.set("type", J::Str(resource_type.to_owned()));
        Some(reference)
    }
}

enum Value<'r> {
    Primitive(J),
    Complex(&'r str),
    Set(J),
}

/// A name or text for a logical reference's display.
fn display_of(resource: &J) -> Option<String> {
    match resource.get("name") {
        Some(J::Str(s)) => return Some(s.clone()),
        Some(J::Arr(names)) => {
            let name = names.first()?;
            let mut parts: Vec<String> = Vec::new();
            if let Some(J::Arr(given)) = name.get("given") {
                parts.extend(given.iter().filter_map(|g| g.as_str().map(str::to_owned)));
            }
            if let Some(family) = name.get("family").and_then(J::as_str) {
                parts.push(family.to_owned());
            }
            if let Some(text) = name.get("text").and_then(J::as_str) {
                return Some(text.to_owned());
            }
            if !parts.is_empty() {
                return Some(parts.join(" "));
            }
        }
        _ => {}
    }
    None
}

/// The value of a map whose FHIR type is a primitive (`HD[uri]`, `CWE[code]`): its `$value`
/// rows, or else its first component.
fn primitive_of_map(map: &str, node: Node<'_>) -> Option<String> {
    let rows = tables().datatypes.get(map)?;
    let scope = Scope::Value(node);
    for row in rows
        .iter()
        .filter(|r| matches!(r.path.as_str(), "$value" | "$this" | ""))
    {
        if let Some(cond) = &row.cond
            && !scope.holds(cond)
        {
            continue;
        }
        let text = node.descend(&row.field).text();
        if !text.is_empty() {
            return Some(text.to_owned());
        }
    }
    let text = node.text();
    (!text.is_empty()).then(|| text.to_owned())
}

fn concept<'a>(vocab: &str, code: &str) -> Option<&'a super::tables::Concept> {
    tables().codesystems.get(vocab)?.get(code)
}

fn coding(c: &super::tables::Concept) -> J {
    let mut coding = J::obj();
    if !c.system.is_empty() {
        coding.set("system", J::Str(c.system.clone()));
    }
    coding.set("code", J::Str(c.code.clone()));
    if !c.display.is_empty() {
        coding.set("display", J::Str(c.display.clone()));
    }
    coding
}

/// Translates the codes of a Coding or CodeableConcept filled from a data type map with a
/// vocabulary map: a code the map knows is replaced by its FHIR coding.
fn translate_codes(value: &mut J, vocab: &str, type_code: &str) {
    let translate = |coding: &mut J| {
        let Some(code) = coding.get("code").and_then(J::as_str) else {
            return;
        };
        if let Some(c) = concept(vocab, code) {
            *coding = self::coding(c);
        }
    };
    match type_code {
        "Coding" => translate(value),
        "CodeableConcept" => {
            if let Some(J::Arr(codings)) = value.member("coding")
                && let Some(first) = codings.first_mut()
            {
                translate(first);
            }
        }
        _ => {}
    }
}

/// A v2 value as a FHIR primitive of `type_code`, or `None` if it is not one.
fn primitive(text: &str, type_code: &str) -> Option<J> {
    let text = text.trim();
    if text.is_empty() || text == NULL {
        return None;
    }
    match type_code {
        "date" => fhir_date(text, true).map(J::Str),
        "dateTime" | "instant" => fhir_date(text, false).map(J::Str),
        "decimal" => is_decimal(text).then(|| J::Num(normalize_decimal(text))),
        "integer" | "positiveInt" | "unsignedInt" => text
            .parse::<i64>()
            .ok()
            .filter(|n| match type_code {
                "positiveInt" => *n > 0,
                "unsignedInt" => *n >= 0,
                _ => true,
            })
            .map(|n| J::Num(n.to_string())),
        "boolean" => match text.to_ascii_uppercase().as_str() {
            "Y" | "TRUE" | "T" => Some(J::Bool(true)),
            "N" | "FALSE" | "F" => Some(J::Bool(false)),
            _ => None,
        },
        "code" | "id" | "uri" | "url" | "canonical" | "oid" | "uuid" => {
            (!text.contains(char::is_whitespace)).then(|| J::Str(text.to_owned()))
        }
        _ => Some(J::Str(text.to_owned())),
    }
}

fn is_decimal(text: &str) -> bool {
    let t = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    !(int.is_empty() && frac.is_empty())
        && int.chars().all(|c| c.is_ascii_digit())
        && frac.chars().all(|c| c.is_ascii_digit())
        && t.matches('.').count() <= 1
}

fn normalize_decimal(text: &str) -> String {
    let t = text.strip_prefix('+').unwrap_or(text);
    let (sign, t) = t.strip_prefix('-').map_or(("", t), |r| ("-", r));
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

/// A v2 DTM/DT (`YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]`) as a FHIR date or dateTime. A time
/// without an offset is dropped (FHIR requires one with a time).
pub(super) fn fhir_date(text: &str, date_only: bool) -> Option<String> {
    let (body, offset) = match text.find(['+', '-']) {
        Some(i) => (&text[..i], Some(&text[i..])),
        None => (text, None),
    };
    let (digits, fraction) = body.split_once('.').unwrap_or((body, ""));
    if !digits.chars().all(|c| c.is_ascii_digit()) || !fraction.chars().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let part = |from: usize, to: usize| digits.get(from..to);
    let year = part(0, 4)?;
    let mut out = year.to_owned();
    let month = part(4, 6);
    let day = part(6, 8);
    if let Some(m) = month {
        if !matches!(m.parse::<u8>(), Ok(1..=12)) {
            return None;
        }
        write!(out, "-{m}").ok()?;
        if let Some(d) = day {
            if !matches!(d.parse::<u8>(), Ok(1..=31)) {
                return None;
            }
            write!(out, "-{d}").ok()?;
        }
    }
    if date_only || digits.len() <= 8 {
        return (matches!(digits.len(), 4 | 6 | 8) || (date_only && digits.len() >= 8))
            .then_some(out);
    }
    let Some(offset) =
        offset.filter(|o| o.len() == 5 && o[1..].chars().all(|c| c.is_ascii_digit()))
    else {
        // no offset: the date alone
        return (digits.len() >= 8).then(|| out[..10].to_owned());
    };
    let hour = part(8, 10)?;
    let minute = part(10, 12).unwrap_or("00");
    let second = part(12, 14).unwrap_or("00");
    if hour.parse::<u8>().ok()? > 23
        || minute.parse::<u8>().ok()? > 59
        || second.parse::<u8>().ok()? > 60
    {
        return None;
    }
    write!(out, "T{hour}:{minute}:{second}").ok()?;
    if !fraction.is_empty() && digits.len() >= 14 {
        write!(out, ".{fraction}").ok()?;
    }
    write!(out, "{}:{}", &offset[..3], &offset[3..]).ok()?;
    Some(out)
}

// ------------------------------------------------------------------ the message

/// Reads the MSH facts of a message without translating it (for the ACK of a message that
/// fails translation, even one whose character set is refused). `None` when the message has
/// no readable MSH.
pub fn read_header(bytes: &[u8]) -> Option<Header> {
    let message = parse(bytes)
        .ok()
        .or_else(|| super::parse::parse_header(bytes))?;
    Some(header(&message))
}

fn header(message: &Message) -> Header {
    let Some(msh) = message.segments.first() else {
        return Header::default();
    };
    let joined = |n: usize| {
        msh.field(n)
            .and_then(|f| f.repetitions.first())
            .map(|r| {
                r.components
                    .iter()
                    .map(|c| c.subcomponents.join("&"))
                    .collect::<Vec<_>>()
                    .join("^")
                    .trim_end_matches('^')
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let nine = msh.field(9).and_then(|f| f.repetitions.first());
    let part = |n: usize| {
        nine.map(|r| r.text(n).trim().to_owned())
            .unwrap_or_default()
    };
    let message_type = part(1);
    let trigger = part(2);
    // table 0354 first: senders often put `ADT_A04` in MSH-9.3 where the structure is ADT_A01
    let structure = tables()
        .structures
        .get(&format!("{message_type}^{trigger}"))
        .cloned()
        .unwrap_or_else(|| part(3));
    Header {
        message_type,
        trigger,
        structure,
        control_id: msh.text(10).trim().to_owned(),
        sending_application: joined(3),
        sending_facility: joined(4),
        receiving_application: joined(5),
        receiving_facility: joined(6),
        version: msh.text(12).trim().to_owned(),
        processing_id: msh.text(11).trim().to_owned(),
        charset: message.charset.clone(),
        field_separator: msh.text(1).to_owned(),
        encoding_characters: msh.text(2).to_owned(),
    }
}

/// One resource being built from the message.
struct Instance {
    resource_type: String,
    /// Segment ids that contributed (a second one of the same id starts a new instance).
    contributors: HashSet<String>,
    /// The first segment that contributed, its sequence, and its segment map, for errors.
    origin: (String, usize),
    map: String,
    resource: J,
    /// The DiagnosticReport or Immunization this instance belongs to (an index).
    parent: Option<usize>,
    /// The Patient (its PID's) and Encounter (its PV1's) this instance belongs to: those
    /// the message gave last before it (an ORU may carry several patients).
    patient: Option<usize>,
    encounter: Option<usize>,
    /// A Patient's key, from its PID-3.
    key: Option<String>,
}

/// Translates a message into a transaction Bundle.
pub fn translate(bytes: &[u8]) -> Result<Translation, V2Error> {
    let message = parse(bytes)?;
    let header = header(&message);
    check_header(&header)?;
    let tables = tables();
    let kind = format!("{}^{}", header.message_type, header.trigger);
    let map_name = format!("{}_{}", header.message_type, header.trigger);
    let entries: &[MessageEntry] = if header.trigger == "A40" {
        &[]
    } else {
        // the map of the trigger (ADT_A11), else of the structure table 0354 gives for the
        // trigger (A04, A08, A13 are ADT_A01; A28, A31 ADT_A05; MSH-9.3 is not trusted, senders
        // often fill it with type_trigger); ADT_A03 has no map of its own and shares
        // ADT_A01's segments
        let table_structure = tables.structures.get(&kind).map(String::as_str);
        let structure = match table_structure {
            Some("ADT_A03") => "ADT_A01",
            Some(s) => s,
            None => header.structure.as_str(),
        };
        tables
            .messages
            .get(&map_name)
            .or_else(|| tables.messages.get(structure))
            .ok_or_else(|| {
                V2Error::rejected(
                    ErrorCode::UnsupportedMessageType,
                    format!("no mapping for message {kind} with structure {structure}"),
                    Some(("MSH", 9)),
                    None,
                )
            })?
    };

    let defs = Definitions::r4();
    let mut mapper = Mapper {
        defs,
        slots: HashMap::new(),
    };
    let mut instances: Vec<Instance> = Vec::new();
    let mut current: HashMap<String, usize> = HashMap::new();
    let mut anchor_group = String::new();
    let mut occurrences: HashMap<String, usize> = HashMap::new();
    let mut parent: Option<usize> = None;
    let mut patient_segment: Option<&Segment> = None;
    let mut merge_segment: Option<&Segment> = None;
    let mut pending: Vec<(String, usize, &Segment, &MessageEntry)> = Vec::new();
    let mut patient_keys: Vec<String> = Vec::new();
    let mut pid_key: Option<String> = None;
    let mut current_patient: Option<usize> = None;
    let mut current_encounter: Option<usize> = None;

    for (position, segment) in message.segments.iter().enumerate() {
        let sequence = {
            let n = occurrences.entry(segment.id.clone()).or_insert(0);
            *n += 1;
            *n
        };
        match segment.id.as_str() {
            "PID" => {
                // every identifier keys the ordering; the first is the conditional update's
                let keys = cx_keys(segment.field(3));
                for key in &keys {
                    if !patient_keys.contains(key) {
                        patient_keys.push(key.clone());
                    }
                }
                let key = keys.into_iter().next().ok_or_else(|| {
                    V2Error::error(
                        ErrorCode::RequiredFieldMissing,
                        "PID-3 (patient identifier list) has no identifier",
                        Some(("PID", 3)),
                        Some(1),
                    )
                    .at_sequence(sequence)
                })?;
                if header.trigger == "A40" && sequence > 1 {
                    return Err(V2Error::error(
                        ErrorCode::SegmentSequence,
                        "an A40 with more than one patient: send one merge per message",
                        Some(("PID", 3)),
                        None,
                    )
                    .at_sequence(sequence));
                }
                pid_key = Some(key);
                patient_segment.get_or_insert(segment);
                // a new patient: its orders and visit are its own
                parent = None;
                current_encounter = None;
            }
            "MRG" => merge_segment = Some(segment),
            _ => {}
        }
        if header.trigger == "A40" && segment.id == "PID" {
            // ADT_A39 has no message map: the PID fills the surviving Patient
            let rows = tables
                .segments
                .get("PID[Patient]")
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let mut resource = J::obj();
            resource.set("resourceType", J::Str("Patient".into()));
            mapper.apply_segment(
                rows,
                segment,
                &format!("{}:{position}", instances.len()),
                &mut resource,
                "Patient",
            );
            instances.push(Instance {
                resource_type: "Patient".into(),
                contributors: HashSet::from(["PID".to_owned()]),
                origin: ("PID".into(), sequence),
                map: "PID[Patient]".into(),
                resource,
                parent: None,
                patient: Some(instances.len()),
                encounter: None,
                key: pid_key.clone(),
            });
            current.insert("Patient[1]".into(), instances.len() - 1);
            current_patient = Some(instances.len() - 1);
            continue;
        }
        let candidates: Vec<&MessageEntry> =
            entries.iter().filter(|e| e.segment == segment.id).collect();
        if candidates.is_empty() {
            continue;
        }
        let group = choose_group(&candidates, &anchor_group);
        if candidates.iter().all(|e| e.group == group)
            && entries
                .iter()
                .filter(|e| e.segment == segment.id)
                .map(|e| &e.group)
                .collect::<HashSet<_>>()
                .len()
                == 1
        {
            anchor_group = group.clone();
        }
        let scope = Scope::Segment {
            segment,
            current: None,
        };
        for entry in candidates.iter().filter(|e| e.group == group) {
            if let Some(cond) = &entry.cond
                && !scope.holds(cond)
            {
                continue;
            }
            let Some(rows) = tables.segments.get(&entry.map) else {
                continue;
            };
            let (label, attach_only) = match entry.label.split_once("].") {
                Some((instance, _)) => (format!("{instance}]"), true),
                None => (entry.label.clone(), false),
            };
            let existing = current
                .get(&label)
                .copied()
                .filter(|&i| attach_only || !instances[i].contributors.contains(&segment.id));
            let mut created = false;
            let index = match existing {
                Some(i) => i,
                None if attach_only => continue,
                None if !creates(&entry.segment, &entry.resource) => {
                    // adds to a resource a later segment starts (A11's MSH to the PV1's
                    // Encounter): applied after that segment
                    pending.push((label.clone(), position, segment, *entry));
                    continue;
                }
                None => {
                    created = true;
                    let mut resource = J::obj();
                    resource.set("resourceType", J::Str(entry.resource.clone()));
                    instances.push(Instance {
                        resource_type: entry.resource.clone(),
                        contributors: HashSet::new(),
                        origin: (segment.id.clone(), sequence),
                        map: entry.map.clone(),
                        resource,
                        parent: if matches!(
                            entry.resource.as_str(),
                            "DiagnosticReport" | "Immunization"
                        ) {
                            None
                        } else {
                            parent
                        },
                        patient: if entry.resource == "Patient" {
                            Some(instances.len())
                        } else {
                            current_patient
                        },
                        encounter: current_encounter,
                        key: (entry.resource == "Patient")
                            .then(|| pid_key.clone())
                            .flatten(),
                    });
                    let i = instances.len() - 1;
                    current.insert(label.clone(), i);
                    match entry.resource.as_str() {
                        "Patient" => current_patient = Some(i),
                        "Encounter" => current_encounter = Some(i),
                        _ => {}
                    }
                    if matches!(entry.resource.as_str(), "DiagnosticReport" | "Immunization") {
                        parent = Some(i);
                    }
                    i
                }
            };
            let instance = &mut instances[index];
            instance.contributors.insert(segment.id.clone());
            if segment.id == "OBX" && instance.resource_type == "Observation" {
                let set_id = segment.text(1).trim();
                if !set_id.is_empty() {
                    instance.resource.set("__set_id", J::Str(set_id.to_owned()));
                }
            }
            let resource_type = instance.resource_type.clone();
            mapper.apply_segment(
                rows,
                segment,
                &format!("{index}:{position}"),
                &mut instance.resource,
                &resource_type,
            );
            if created {
                for (_, earlier_position, earlier, earlier_entry) in
                    pending.extract_if(.., |(l, ..)| *l == label)
                {
                    let Some(rows) = tables.segments.get(&earlier_entry.map) else {
                        continue;
                    };
                    let scope = Scope::Segment {
                        segment: earlier,
                        current: None,
                    };
                    if earlier_entry.cond.as_ref().is_some_and(|c| !scope.holds(c)) {
                        continue;
                    }
                    let instance = &mut instances[index];
                    instance.contributors.insert(earlier.id.clone());
                    mapper.apply_segment(
                        rows,
                        earlier,
                        &format!("{index}:{earlier_position}"),
                        &mut instance.resource,
                        &resource_type,
                    );
                }
            }
        }
    }

    if patient_segment.is_none() {
        return Err(V2Error::error(
            ErrorCode::SegmentSequence,
            "the message has no PID segment",
            Some(("PID", 3)),
            None,
        ));
    }
    let merge = match (header.trigger.as_str(), merge_segment) {
        ("A40", Some(mrg)) => {
            let merged = cx_keys(mrg.field(1)).into_iter().next().ok_or_else(|| {
                V2Error::error(
                    ErrorCode::RequiredFieldMissing,
                    "MRG-1 (prior patient identifier list) has no identifier",
                    Some(("MRG", 1)),
                    Some(1),
                )
            })?;
            Some(Merge {
                survivor: patient_keys[0].clone(),
                merged,
            })
        }
        ("A40", None) => {
            return Err(V2Error::error(
                ErrorCode::SegmentSequence,
                "an A40 needs an MRG segment",
                Some(("MRG", 1)),
                None,
            ));
        }
        _ => None,
    };

    let bundle = bundle(&header, &mut instances, merge.as_ref())?;
    Ok(Translation {
        header,
        patient_keys,
        merge,
        bundle,
    })
}

/// Whether a segment starts a new resource of a type, or only adds to one another segment
/// started (PD1, NK1 and ROL add to the PID's Patient, PV2, DG1 and ROL to the PV1's
/// Encounter, OBR to the ORC's DiagnosticReport). The message maps say this in prose.
fn creates(segment: &str, resource: &str) -> bool {
    match resource {
        "Patient" => segment == "PID",
        "Encounter" => segment == "PV1",
        "RelatedPerson" => segment == "NK1",
        "Observation" => matches!(segment, "OBX" | "PD1"),
        "DiagnosticReport" => matches!(segment, "ORC" | "OBR"),
        "Specimen" => matches!(segment, "SPM" | "OBR"),
        "Immunization" => matches!(segment, "ORC" | "RXA"),
        "AllergyIntolerance" => segment == "AL1",
        "Condition" => segment == "DG1",
        "Coverage" => segment == "IN1",
        _ => false,
    }
}

fn check_header(header: &Header) -> Result<(), V2Error> {
    let kind = format!("{}^{}", header.message_type, header.trigger);
    if !SUPPORTED.contains(&kind.as_str()) {
        // a type we translate with a trigger we do not (ADT^A17) is an unsupported event
        let known_type = SUPPORTED
            .iter()
            .any(|k| k.split('^').next() == Some(header.message_type.as_str()));
        return Err(if known_type {
            V2Error::rejected(
                ErrorCode::UnsupportedEventCode,
                format!("unsupported trigger event {kind}"),
                Some(("MSH", 9)),
                Some(2),
            )
        } else {
            V2Error::rejected(
                ErrorCode::UnsupportedMessageType,
                format!("unsupported message type {kind}"),
                Some(("MSH", 9)),
                Some(1),
            )
        });
    }
    // table 0103: production, training, debugging
    if !header.processing_id.is_empty() && !matches!(header.processing_id.as_str(), "P" | "T" | "D")
    {
        return Err(V2Error::rejected(
            ErrorCode::UnsupportedProcessingId,
            "unsupported processing id (MSH-11: P, T or D of table 0103 are)",
            Some(("MSH", 11)),
            Some(1),
        ));
    }
    let version = header.version.as_str();
    let supported_version = ["2.3", "2.4", "2.5", "2.6", "2.7", "2.8"]
        .iter()
        .any(|v| version == *v || version.strip_prefix(v).is_some_and(|r| r.starts_with('.')));
    if !supported_version {
        return Err(V2Error::rejected(
            ErrorCode::UnsupportedVersionId,
            format!("unsupported HL7 version {version:?} (2.3 to 2.8 are)"),
            Some(("MSH", 12)),
            None,
        ));
    }
    if header.control_id.is_empty() {
        return Err(V2Error::rejected(
            ErrorCode::RequiredFieldMissing,
            "MSH-10 (message control id) is empty",
            Some(("MSH", 10)),
            None,
        ));
    }
    Ok(())
}

/// The group of the message map a segment is in: among its candidates, the one sharing the
/// longest group prefix with the last segment whose group was unambiguous (an OBX after an
/// OBR is in the OBR's ORDER_OBSERVATION), the shallower on a tie.
fn choose_group(candidates: &[&MessageEntry], anchor: &str) -> String {
    let depth = |g: &str| {
        if g.is_empty() {
            0
        } else {
            g.split('.').count()
        }
    };
    let common = |g: &str| {
        g.split('.')
            .zip(anchor.split('.'))
            .take_while(|(a, b)| a == b && !a.is_empty())
            .count()
    };
    candidates
        .iter()
        .map(|e| e.group.as_str())
        .max_by(|a, b| common(a).cmp(&common(b)).then(depth(b).cmp(&depth(a))))
        .unwrap_or("")
        .to_owned()
}

/// The patients a message is about, read without translating it: the PID-3 identifiers of
/// its PIDs and, for a merge, MRG-1's, as `system|value` (those of `Translation::patient_keys`
/// and `Merge::merged`). Empty when the message does not parse (its translation says why).
/// Cheap, so that the work on a patient can be ordered as messages arrive, before they are
/// translated.
pub fn patient_keys(bytes: &[u8]) -> Vec<String> {
    let Ok(message) = parse(bytes) else {
        return Vec::new();
    };
    let mut keys: Vec<String> = Vec::new();
    for segment in &message.segments {
        let field = match segment.id.as_str() {
            "PID" => 3,
            "MRG" => 1,
            _ => continue,
        };
        for key in cx_keys(segment.field(field)) {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

/// The identifiers of a CX field as `system|value`.
fn cx_keys(field: Option<&Field>) -> Vec<String> {
    let Some(field) = field else {
        return Vec::new();
    };
    field
        .repetitions
        .iter()
        .filter_map(|rep| {
            let node = Node::Rep(rep);
            let value = node.child(1).text();
            if value.is_empty() {
                return None;
            }
            let system = identifier_system(node.child(4));
            Some(format!("{system}|{value}"))
        })
        .collect()
}

/// The system of an identifier whose assigning authority is `hd` (an HD): the universal id
/// as a URI (`urn:oid:` for ISO, `urn:uuid:` for UUID, as is for URI/DNS), else the
/// namespace id as sent.
fn identifier_system(hd: Node<'_>) -> String {
    let namespace = hd.child(1).text();
    let universal = hd.child(2).text();
    let kind = hd.child(3).text();
    match kind {
        "ISO" if !universal.is_empty() => format!("urn:oid:{universal}"),
        "UUID" if !universal.is_empty() => format!("urn:uuid:{universal}"),
        "URI" | "DNS" if !universal.is_empty() => universal.to_owned(),
        _ if !namespace.is_empty() => namespace.to_owned(),
        _ => universal.to_owned(),
    }
}

/// The URI of a coding system named by its HL7 table 0396 mnemonic (`LN`, `SCT`, `HL70078`),
/// for the systems the HL7 terminology (THO) gives a FHIR URI; other names are kept as sent.
/// The v2-to-FHIR maps copy CWE.3 into `Coding.system` and leave this translation to the
/// implementer.
fn coding_system_uri(name: &str) -> String {
    let known = match name.to_ascii_uppercase().as_str() {
        "LN" | "LOINC" => "http://loinc.org",
        "SCT" | "SNM" | "SNOMED" | "SNOMEDCT" | "SNOMED-CT" => "http://snomed.info/sct",
        "I10" | "ICD10" => "http://hl7.org/fhir/sid/icd-10",
        "I10C" | "ICD10CM" => "http://hl7.org/fhir/sid/icd-10-cm",
        "I9" | "I9C" | "I9CM" | "ICD9" | "ICD9CM" => "http://hl7.org/fhir/sid/icd-9-cm",
        "C4" | "CPT" | "CPT4" => "http://www.ama-assn.org/go/cpt",
        "CVX" => "http://hl7.org/fhir/sid/cvx",
        "MVX" => "http://terminology.hl7.org/CodeSystem/MVX",
        "NDC" => "http://hl7.org/fhir/sid/ndc",
        "UCUM" => "http://unitsofmeasure.org",
        "RXNORM" | "RXN" => "http://www.nlm.nih.gov/research/umls/rxnorm",
        "NCIT" => "http://ncithesaurus.nci.nih.gov",
        "CDCREC" => "urn:oid:2.16.840.1.113883.6.238",
        "NUCC" => "http://nucc.org/provider-taxonomy",
        upper => {
            if let Some(table) = upper.strip_prefix("HL7")
                && table.len() == 4
                && table.chars().all(|c| c.is_ascii_digit())
            {
                return format!("http://terminology.hl7.org/CodeSystem/v2-{table}");
            }
            return name.to_owned();
        }
    };
    known.to_owned()
}

/// The system of an EI (`value^namespace^universal id^type`).
fn identifier_system_flat(ei: Node<'_>) -> String {
    let namespace = ei.child(2).text();
    let universal = ei.child(3).text();
    match ei.child(4).text() {
        "ISO" if !universal.is_empty() => format!("urn:oid:{universal}"),
        "UUID" if !universal.is_empty() => format!("urn:uuid:{universal}"),
        "URI" | "DNS" if !universal.is_empty() => universal.to_owned(),
        _ if !namespace.is_empty() => namespace.to_owned(),
        _ => universal.to_owned(),
    }
}

// ------------------------------------------------------------------ the Bundle

/// A stable `urn:uuid:` for an entry: derived from the message's control id and the
/// instance's position, so that translating a message twice gives the same Bundle.
fn full_url(header: &Header, index: usize) -> String {
    let mut hash = Sha256::new();
    hash.update(header.sending_application.as_bytes());
    hash.update([0]);
    hash.update(header.sending_facility.as_bytes());
    hash.update([0]);
    hash.update(header.control_id.as_bytes());
    hash.update([0]);
    hash.update(index.to_le_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // RFC 9562 version 8 (custom): name-based, but SHA-256 rather than version 5's SHA-1
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Escapes a token search value (`\|`, `\,`, `\$`, `\\`) and percent-encodes it for a URL.
fn search_value(text: &str) -> String {
    let mut escaped = String::new();
    for c in text.chars() {
        if matches!(c, '\\' | '|' | ',' | '$') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    let mut out = String::new();
    for b in escaped.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'/') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `identifier=system|value` for a `system|value` key (`identifier=value` without a system).
fn key_criteria(key: &str) -> String {
    let (system, value) = key.split_once('|').unwrap_or(("", key));
    if system.is_empty() {
        format!("identifier={}", search_value(value))
    } else {
        format!(
            "identifier={}|{}",
            search_value(system),
            search_value(value)
        )
    }
}

/// The identifier a resource is keyed by: the filler's (type `FILL`), which the placer cannot
/// change, else the first with a value.
fn key_identifier(resource: &J) -> Option<&J> {
    let J::Arr(ids) = resource.get("identifier")? else {
        return None;
    };
    let valued = || {
        ids.iter()
            .filter(|i| i.get("value").and_then(J::as_str).is_some())
    };
    let is_filler = |i: &&J| {
        matches!(i.get("type").and_then(|t| t.get("coding")), Some(J::Arr(codings))
            if codings.iter().any(|c| c.get("code").and_then(J::as_str) == Some("FILL")))
    };
    valued().find(is_filler).or_else(|| valued().next())
}

/// `identifier=system|value` for the [`key_identifier`].
fn identifier_criteria(resource: &J) -> Option<String> {
    let id = key_identifier(resource)?;
    let value = id.get("value").and_then(J::as_str)?;
    Some(match id.get("system").and_then(J::as_str) {
        Some(system) => format!(
            "identifier={}|{}",
            search_value(system),
            search_value(value)
        ),
        None => format!("identifier={}", search_value(value)),
    })
}

fn reference(url: &str) -> J {
    J::Obj(vec![("reference".into(), J::Str(url.to_owned()))])
}

fn set_reference(resource: &mut J, element: &str, url: &str, repeating: bool) {
    if repeating {
        match resource.member(element) {
            Some(J::Arr(items)) => items.push(reference(url)),
            _ => resource.set(element, J::Arr(vec![reference(url)])),
        }
    } else {
        resource.set(element, reference(url));
    }
}

/// What a coded resource without an identifier is about, for its derived key: its first
/// coding's system and code, and its time (an Observation's).
fn coded_subject(resource: &J) -> Option<Vec<String>> {
    let coding = match resource.get("code")?.get("coding")? {
        J::Arr(items) => items.first()?,
        _ => return None,
    };
    let code = coding.get("code").and_then(J::as_str)?;
    let system = coding.get("system").and_then(J::as_str).unwrap_or("");
    let time = resource
        .get("effectiveDateTime")
        .and_then(J::as_str)
        .unwrap_or("");
    Some(vec![system.to_owned(), code.to_owned(), time.to_owned()])
}

/// What a Coverage is about, for its derived key: its payor (the logical reference's
/// identifier, else its display) and its plan (the identifier IN1-2 gives, if any). `None`
/// without a payor (the Coverage is then refused: R4 requires one).
fn coverage_subject(resource: &J) -> Option<Vec<String>> {
    let system_value = |identifier: &J| {
        let value = identifier.get("value").and_then(J::as_str)?;
        let system = identifier.get("system").and_then(J::as_str).unwrap_or("");
        Some(format!("{system}|{value}"))
    };
    let payor = match resource.get("payor")? {
        J::Arr(items) => items.first()?,
        _ => return None,
    };
    let payor = payor
        .get("identifier")
        .and_then(system_value)
        .or_else(|| payor.get("display").and_then(J::as_str).map(str::to_owned))?;
    let plan = key_identifier(resource)
        .and_then(system_value)
        .unwrap_or_default();
    Some(vec![payor, plan])
}

fn bundle(
    header: &Header,
    instances: &mut [Instance],
    merge: Option<&Merge>,
) -> Result<Json, V2Error> {
    let urls: Vec<String> = (0..instances.len()).map(|i| full_url(header, i)).collect();
    let patient_url = instances
        .iter()
        .position(|i| i.resource_type == "Patient")
        .map(|i| urls[i].clone());

    // the Patient's identifiers as the message gives them (PID-3 first), so that the
    // conditional key always matches what is stored
    for instance in instances.iter_mut() {
        let resource = &mut instance.resource;
        resource.prune();
        match instance.resource_type.as_str() {
            "Patient" => {
                if let Some(merge) = merge {
                    let (system, value) =
                        merge.merged.split_once('|').unwrap_or(("", &merge.merged));
                    let mut identifier = J::obj();
                    if !system.is_empty() {
                        identifier.set("system", J::Str(system.to_owned()));
                    }
                    identifier.set("value", J::Str(value.to_owned()));
                    let link = J::Obj(vec![
                        (
                            "other".into(),
                            J::Obj(vec![
                                ("type".into(), J::Str("Patient".into())),
                                ("identifier".into(), identifier),
                            ]),
                        ),
                        ("type".into(), J::Str("replaces".into())),
                    ]);
                    resource.set("link", J::Arr(vec![link]));
                }
            }
            "Encounter" | "Observation" | "DiagnosticReport" | "Specimen" | "Condition"
            | "Coverage" | "RelatedPerson" | "AllergyIntolerance" | "Immunization" => {
                let (element, repeating) = match instance.resource_type.as_str() {
                    "Immunization" | "AllergyIntolerance" | "RelatedPerson" => ("patient", false),
                    "Coverage" => ("beneficiary", false),
                    _ => ("subject", false),
                };
                if let Some(p) = instance.patient {
                    set_reference(resource, element, &urls[p], repeating);
                }
                if let Some(e) = instance.encounter
                    && matches!(
                        instance.resource_type.as_str(),
                        "Observation" | "DiagnosticReport" | "Condition" | "Immunization"
                    )
                {
                    set_reference(resource, "encounter", &urls[e], false);
                }
            }
            _ => {}
        }
    }
    // an order's results and specimens; an immunization's observations
    for i in 0..instances.len() {
        let Some(p) = instances[i].parent else {
            continue;
        };
        let child_type = instances[i].resource_type.clone();
        let parent_type = instances[p].resource_type.clone();
        let url = urls[i].clone();
        match (parent_type.as_str(), child_type.as_str()) {
            ("DiagnosticReport", "Observation") => {
                set_reference(&mut instances[p].resource, "result", &url, true);
            }
            ("DiagnosticReport", "Specimen") => {
                set_reference(&mut instances[p].resource, "specimen", &url, true);
            }
            ("Immunization", "Observation") => {
                let parent_url = urls[p].clone();
                set_reference(&mut instances[i].resource, "partOf", &parent_url, true);
            }
            _ => {}
        }
    }
    // an Observation without an identifier of its own (OBX-21) is keyed by its order's
    // filler (else placer) number and its set id (OBX-1)
    for i in 0..instances.len() {
        if instances[i].resource_type != "Observation"
            || instances[i].resource.get("identifier").is_some()
        {
            continue;
        }
        let order = instances[i]
            .parent
            .and_then(|p| key_identifier(&instances[p].resource).cloned());
        let Some(set_id) = instances[i]
            .resource
            .get("__set_id")
            .and_then(J::as_str)
            .map(str::to_owned)
        else {
            continue;
        };
        if let Some(mut id) = order {
            let value = format!(
                "{}-{set_id}",
                id.get("value").and_then(J::as_str).unwrap_or("")
            );
            id.set("value", J::Str(value));
            id.remove("type");
            id.remove("extension");
            id.remove("assigner");
            instances[i].resource.set("identifier", J::Arr(vec![id]));
        }
    }
    // what the message gives no identifier at all (an AL1, a DG1 without DG1-20, an OBX of an
    // ADT) is keyed by what it is about: its patient, its code and, for an Observation, its
    // time; so an A08 repeating the patient's allergies updates them instead of adding more.
    // An IN1's Coverage always is: its identifier (IN1-2) names the health plan, which every
    // patient of the plan shares, so it is keyed by its patient, payor and plan
    for i in 0..instances.len() {
        let instance = &instances[i];
        let about = match instance.resource_type.as_str() {
            "Coverage" => coverage_subject(&instance.resource),
            "AllergyIntolerance" | "Condition" | "Observation"
                if instance.resource.get("identifier").is_none() =>
            {
                coded_subject(&instance.resource)
            }
            _ => None,
        };
        let Some(about) = about else {
            continue;
        };
        let Some(patient_key) = instance.patient.and_then(|p| instances[p].key.as_deref()) else {
            continue;
        };
        let mut hash = Sha256::new();
        for part in std::iter::once(patient_key).chain(about.iter().map(String::as_str)) {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        let value: String = hash.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let identifier = J::Obj(vec![
            (
                "system".into(),
                J::Str(format!("urn:fhir-gateway:hl7v2:{}", instance.resource_type)),
            ),
            ("value".into(), J::Str(value)),
        ]);
        // first, so that it is the key (`key_identifier`)
        let resource = &mut instances[i].resource;
        match resource.member("identifier") {
            Some(J::Arr(identifiers)) => identifiers.insert(0, identifier),
            _ => resource.set("identifier", J::Arr(vec![identifier])),
        }
    }

    let mut entries = Vec::new();
    for (i, instance) in instances.iter_mut().enumerate() {
        instance.resource.remove("__set_id");
        instance.resource.prune();
        let resource = clean(&mut instance.resource, &instance.resource_type)
            .map_err(|problem| missing_element_error(instance, &problem))?;
        let (method, url) = if let Some(key) = &instance.key {
            ("PUT", format!("Patient?{}", key_criteria(key)))
        } else {
            let criteria = identifier_criteria(&instance.resource).or_else(|| {
                // a Specimen the OBR describes has only its accession number
                let accession = instance.resource.get("accessionIdentifier")?;
                let value = accession.get("value").and_then(J::as_str)?;
                Some(match accession.get("system").and_then(J::as_str) {
                    Some(system) => {
                        format!("accession={}|{}", search_value(system), search_value(value))
                    }
                    None => format!("accession={}", search_value(value)),
                })
                .filter(|_| instance.resource_type == "Specimen")
            });
            match criteria {
                Some(criteria) => ("PUT", format!("{}?{criteria}", instance.resource_type)),
                None => ("POST", instance.resource_type.clone()),
            }
        };
        entries.push(J::Obj(vec![
            ("fullUrl".into(), J::Str(urls[i].clone())),
            ("resource".into(), resource),
            (
                "request".into(),
                J::Obj(vec![
                    ("method".into(), J::Str(method.into())),
                    ("url".into(), J::Str(url)),
                ]),
            ),
        ]));
    }
    if let Some(merge) = merge
        && let Some(survivor) = &patient_url
    {
        // the merged patient (MRG-1) gets `link: replaced-by` the survivor, by a conditional
        // FHIRPath Patch that leaves the rest of it as stored; a merge naming a patient the
        // store does not have fails the transaction
        let part = |name: &str, key: &str, value: J| {
            J::Obj(vec![
                ("name".into(), J::Str(name.to_owned())),
                (key.to_owned(), value),
            ])
        };
        let link = J::Obj(vec![
            ("name".into(), J::Str("value".into())),
            (
                "part".into(),
                J::Arr(vec![
                    part("other", "valueReference", reference(survivor)),
                    part("type", "valueCode", J::Str("replaced-by".into())),
                ]),
            ),
        ]);
        let operation = J::Obj(vec![
            ("name".into(), J::Str("operation".into())),
            (
                "part".into(),
                J::Arr(vec![
                    part("type", "valueCode", J::Str("add".into())),
                    part("path", "valueString", J::Str("Patient".into())),
                    part("name", "valueString", J::Str("link".into())),
                    link,
                ]),
            ),
        ]);
        let parameters = J::Obj(vec![
            ("resourceType".into(), J::Str("Parameters".into())),
            ("parameter".into(), J::Arr(vec![operation])),
        ]);
        entries.push(J::Obj(vec![
            ("fullUrl".into(), J::Str(full_url(header, instances.len()))),
            ("resource".into(), parameters),
            (
                "request".into(),
                J::Obj(vec![
                    ("method".into(), J::Str("PATCH".into())),
                    (
                        "url".into(),
                        J::Str(format!("Patient?{}", key_criteria(&merge.merged))),
                    ),
                ]),
            ),
        ]));
    }
    let bundle = J::Obj(vec![
        ("resourceType".into(), J::Str("Bundle".into())),
        ("type".into(), J::Str("transaction".into())),
        ("entry".into(), J::Arr(entries)),
    ]);
    Ok(bundle.to_json())
}

/// The error for a resource that cannot be made valid: `problem` is the FHIRPath of a
/// missing required element (`Observation.code`), or a description. The field is the one
/// whose map row fills that element.
fn missing_element_error(instance: &Instance, problem: &str) -> V2Error {
    let (segment, sequence) = (&instance.origin.0, instance.origin.1);
    let Some(element) = problem.strip_prefix(&format!("{}.", instance.resource_type)) else {
        return V2Error::error(
            ErrorCode::DataType,
            problem.to_owned(),
            Some((segment.as_str(), 0)),
            None,
        )
        .at_sequence(sequence);
    };
    let field = tables()
        .segments
        .get(&instance.map)
        .and_then(|rows| {
            rows.iter().find(|r| {
                steps(&r.path).first().is_some_and(|s| {
                    s.name == element || element.starts_with(&format!("{}[", s.name))
                })
            })
        })
        .and_then(|r| r.field.first().copied())
        .unwrap_or(0);
    V2Error::error(
        ErrorCode::RequiredFieldMissing,
        format!(
            "{segment}-{field} is required: it fills {}.{element}, which FHIR requires",
            instance.resource_type
        ),
        Some((segment.as_str(), field)),
        None,
    )
    .at_sequence(sequence)
}

/// Validates a built resource, dropping the elements the validator refuses (a value of the
/// wrong form, a code outside a required value set, an element the maps name that R4 does
/// not have); a missing required element is an error.
fn clean(resource: &mut J, resource_type: &str) -> Result<J, String> {
    for _ in 0..8 {
        let json = resource.to_json();
        let issues: Vec<_> = crate::validate::validate_resource(&json)
            .into_iter()
            .filter(|i| i.severity == crate::validate::IssueSeverity::Error)
            .collect();
        if issues.is_empty() {
            return Ok(resource.clone());
        }
        let mut removed = false;
        for issue in &issues {
            if issue.code == "required" {
                // an element the maps filled only in part (an extension without its url)
                // is dropped; a resource without a required element of its own is an error
                if let Some((parent, _)) = issue.expression.rsplit_once('.')
                    && parent.contains('.')
                {
                    removed |= remove_at(resource, parent);
                    continue;
                }
                // a required code the message leaves empty: `unknown` where its value set
                // has it (Observation.status for an empty OBX-11)
                let defs = Definitions::r4();
                let unknown_allowed = defs
                    .element(&issue.expression)
                    .and_then(|e| e.required_binding.as_deref())
                    .and_then(|vs| defs.value_set_codes(vs))
                    .is_some_and(|codes| codes.contains("unknown"));
                if let Some(name) = issue.expression.strip_prefix(&format!("{resource_type}."))
                    && unknown_allowed
                {
                    resource.set(name, J::Str("unknown".into()));
                    removed = true;
                    continue;
                }
                return Err(issue.expression.clone());
            }
            removed |= remove_at(resource, &issue.expression);
        }
        resource.prune();
        if !removed {
            let first = &issues[0];
            // the expression only: a validator's diagnostics may quote the value (PHI)
            return Err(format!(
                "the {resource_type} is invalid at {} ({})",
                first.expression, first.code
            ));
        }
    }
    Err(format!("the {resource_type} could not be made valid"))
}

/// Removes the node at a FHIRPath location such as `Patient.name[0].given[1]`.
fn remove_at(resource: &mut J, expression: &str) -> bool {
    let mut parts: Vec<(&str, Option<usize>)> = expression
        .split('.')
        .skip(1)
        .map(|p| match p.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse().ok()),
            None => (p, None),
        })
        .collect();
    let Some((last_name, last_index)) = parts.pop() else {
        return false;
    };
    let mut node = resource;
    for (name, index) in parts {
        let Some(child) = node.member(name) else {
            return false;
        };
        node = match child {
            J::Arr(items) => {
                let i = match index {
                    Some(i) => i,
                    None if items.len() == 1 => 0,
                    None => return false,
                };
                match items.get_mut(i) {
                    Some(item) => item,
                    None => return false,
                }
            }
            other @ J::Obj(_) => other,
            _ => return false,
        };
    }
    match (node.member(last_name), last_index) {
        (Some(J::Arr(items)), Some(i)) if i < items.len() => {
            items.remove(i);
            true
        }
        (Some(_), _) => {
            node.remove(last_name);
            true
        }
        (None, _) => false,
    }
}
