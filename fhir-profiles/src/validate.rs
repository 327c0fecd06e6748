//! Structural validation of a FHIR R4 resource in its JSON form, reporting every problem
//! found rather than the first.
//!
//! The rules are those of the [JSON representation](http://hl7.org/fhir/R4/json.html) and of
//! the [data types](http://hl7.org/fhir/R4/datatypes.html), driven by the R4
//! StructureDefinitions in [`Definitions`]:
//!
//! - the root is an object whose `resourceType` names a concrete R4 resource type;
//! - every member is an element of the type at that place: choice elements appear as
//!   `valueQuantity` with one of the element's types and at most one type present, primitive
//!   elements may have a `_name` companion holding `id`/`extension`, `resourceType` appears
//!   only at the root of a resource, `fhir_comments` not at all;
//! - no `null` (except to align a repeating primitive with its `_name` companion), no empty
//!   object, array or string, no duplicate keys;
//! - cardinality: repeating elements are arrays, others are not, required elements are present;
//! - primitive values have the right JSON type and match their type's regular expression,
//!   integers are in range, dates exist in the calendar, strings are at most 1 MiB;
//! - `code` elements bound `required` to a value set that the package enumerates hold one of
//!   its codes;
//! - the [invariants](http://hl7.org/fhir/R4/extensibility.html#Extension) `ext-1` (an
//!   extension has a value or nested extensions, not both) and the
//!   [DomainResource](http://hl7.org/fhir/R4/domainresource.html#invs) invariants `dom-2`,
//!   `dom-4` and `dom-5` on contained resources.
//!
//! **Architecture Invariant:** no other invariant (FHIRPath constraints), no binding other
//! than required bindings of `code` elements (not `Coding`, not `CodeableConcept`), no profile
//! (`SimpleQuantity` is checked as `Quantity`), no reference resolution (`dom-3`) and no check
//! of the XHTML narrative beyond its starting with `<div`.
//!
//! Profiles are checked separately, by [`validate_profiles`]: each resource (the root, a
//! contained resource, a Bundle entry) against the profiles of [`crate::profile`] it claims in
//! `meta.profile`, so that a caller can tell a malformed resource from one that breaks a
//! profile it claims.
//!
//! The definitions are compiled once, on first use, into a `Schema`: per type and backbone element, a
//! hash map from JSON member name (`valueQuantity`, `_birthDate`) to what to check. The
//! location of an issue is kept as a stack of borrowed path segments and only rendered to a
//! string when an issue is reported.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::LazyLock;

use json_syntax::Value as Json;
use json_syntax::object::Object;
use regex::Regex;

use crate::definitions::{Definitions, ElementDefinition, Max, TypeKind};
use crate::profile::{Profile, Profiles, Resolution};

/// How bad an issue is (R4 `IssueSeverity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueSeverity {
    Fatal,
    Error,
    Warning,
    Information,
}

/// One problem found in a resource, ready to become an `OperationOutcome.issue`.
///
/// `code` is an R4 `IssueType` code; the ones used here are `structure` (JSON shape, unknown
/// or duplicate elements), `required` (a missing element), `value` (a primitive that does not
/// parse), `code-invalid` (a code outside its required value set), `invariant` (`ext-1`,
/// `dom-*`), `not-supported` (an unknown resource type), `too-long` (a string over 1 MiB)
/// and `too-costly` (nesting too deep to check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: IssueSeverity,
    pub code: &'static str,
    /// A FHIRPath location such as `Patient.name[0].given[1]` or `Observation.valueQuantity`;
    /// `Resource` when the root itself is not a resource.
    pub expression: String,
    /// Lowercase, without a trailing period: what was wrong and what was expected.
    pub diagnostics: String,
}

/// Validates a resource; an empty list means it is valid.
pub fn validate_resource(resource: &Json) -> Vec<Issue> {
    let mut validator = Validator {
        schema: &SCHEMA,
        issues: Vec::new(),
        path: Vec::with_capacity(16),
        depth: 0,
        too_deep_reported: false,
    };
    validator.resource(resource, false);
    validator.issues
}

/// What to do with a profile claimed in `meta.profile` that is not shipped in
/// `r4/profiles.json` (or is asked for in another version than the shipped one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownProfile {
    /// Say nothing: the claim is the client's business (what most servers do).
    Ignore,
    /// Report a warning issue, which does not make the resource invalid.
    #[default]
    Warn,
    /// Report an error issue: only resources whose every claim can be checked are valid.
    Reject,
}

/// Checks a resource, and every resource inside it (contained resources, Bundle entries,
/// Parameters), against the profiles each claims in `meta.profile`, and the root also against
/// `nominated` (the `profile` of `$validate`). A claim of an unknown profile is treated as
/// `unknown` says. An empty list means every claim holds.
pub fn validate_profiles(
    resource: &Json,
    unknown: UnknownProfile,
    nominated: Option<&Profile>,
) -> Vec<Issue> {
    let mut issues = Vec::new();
    let root = resource
        .as_object()
        .and_then(|object| object.get("resourceType").next())
        .and_then(Json::as_str)
        .unwrap_or("Resource");
    if let Some(profile) = nominated {
        profile.check(resource, root, &mut issues);
    }
    let mut claims = ProfileClaims {
        profiles: Profiles::r4(),
        unknown,
        issues,
        path: vec![Segment::Name(root)],
    };
    claims.resource(resource, root, nominated.map(Profile::url));
    claims.issues
}

/// The walk of [`validate_profiles`] through a resource and the resources inside it.
struct ProfileClaims<'a> {
    profiles: &'static Profiles,
    unknown: UnknownProfile,
    issues: Vec<Issue>,
    /// Where the walk is, below the root resource; rendered only where a resource is found.
    path: Vec<Segment<'a>>,
}

impl<'a> ProfileClaims<'a> {
    /// A resource at `expression`: its claims, then the resources inside it. `checked` is a
    /// profile it was already checked against.
    fn resource(&mut self, resource: &'a Json, expression: &str, checked: Option<&str>) {
        let Json::Object(object) = resource else {
            return;
        };
        let claims = object
            .get("meta")
            .next()
            .and_then(Json::as_object)
            .and_then(|meta| meta.get("profile").next())
            .and_then(Json::as_array)
            .unwrap_or_default();
        let mut seen: Vec<&str> = checked.into_iter().collect();
        for (index, claim) in claims.iter().enumerate() {
            let Some(claim) = claim.as_str() else {
                continue; // not a canonical: the structural check reports it
            };
            match self.profiles.resolve(claim) {
                Resolution::Known(profile) => {
                    if !seen.contains(&profile.url()) {
                        seen.push(profile.url());
                        profile.check(resource, expression, &mut self.issues);
                    }
                }
                Resolution::OtherVersion(profile) => self.unknown_claim(
                    expression,
                    index,
                    &format!(
                        "profile {claim} is not known to this server, which has version {} of {}",
                        profile.version(),
                        profile.url()
                    ),
                ),
                Resolution::Unknown => self.unknown_claim(
                    expression,
                    index,
                    &format!("profile {claim} is not known to this server"),
                ),
            }
        }
        self.inside(resource);
    }

    /// The resources nested anywhere in a value.
    fn inside(&mut self, value: &'a Json) {
        if self.path.len() >= MAX_DEPTH as usize {
            return; // reported by the structural check
        }
        match value {
            Json::Object(object) => {
                for entry in object.entries() {
                    if matches!(entry.value, Json::Object(_) | Json::Array(_)) {
                        self.path.push(Segment::Name(entry.key.as_str()));
                        self.nested(&entry.value);
                        self.path.pop();
                    }
                }
            }
            Json::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    if matches!(item, Json::Object(_) | Json::Array(_)) {
                        self.path.push(Segment::Index(index));
                        self.nested(item);
                        self.path.pop();
                    }
                }
            }
            _ => {}
        }
    }

    fn nested(&mut self, value: &'a Json) {
        let is_resource = value.as_object().is_some_and(|object| {
            object
                .get("resourceType")
                .next()
                .is_some_and(Json::is_string)
        });
        if is_resource {
            let expression = render(&self.path);
            self.resource(value, &expression, None);
        } else {
            self.inside(value);
        }
    }

    fn unknown_claim(&mut self, expression: &str, index: usize, why: &str) {
        let (severity, consequence) = match self.unknown {
            UnknownProfile::Ignore => return,
            UnknownProfile::Warn => (
                IssueSeverity::Warning,
                "the resource was not checked against it",
            ),
            UnknownProfile::Reject => (
                IssueSeverity::Error,
                "this server accepts only profiles it can check",
            ),
        };
        self.issues.push(Issue {
            severity,
            code: "not-supported",
            expression: format!("{expression}.meta.profile[{index}]"),
            diagnostics: format!("{why}; {consequence}"),
        });
    }
}

/// How many JSON objects deep a resource may nest; deeper content is reported once and not
/// checked, so that recursion stays bounded whatever the input.
const MAX_DEPTH: u32 = 100;

/// R4: "strings SHALL NOT exceed 1MB in size" (1024 * 1024 characters).
const MAX_STRING_CHARS: usize = 1024 * 1024;

/// How much of an offending value a diagnostic quotes.
const QUOTE_CHARS: usize = 80;

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema::build(Definitions::r4()));

// ---------------------------------------------------------------------------------------------
// The compiled schema
// ---------------------------------------------------------------------------------------------

type NodeId = usize;
type PrimitiveId = usize;

/// The definitions compiled for walking JSON.
#[derive(Debug)]
struct Schema {
    nodes: Vec<Node>,
    primitives: Vec<Primitive>,
    /// Concrete resource type name -> its node.
    resources: HashMap<&'static str, NodeId>,
    /// `Element` (`id`, `extension`): the content of a `_name` primitive companion.
    element: NodeId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeKind {
    Resource,
    Extension,
    Element,
}

/// A resource type, a complex data type or a backbone element: what its JSON object holds.
#[derive(Debug)]
struct Node {
    kind: NodeKind,
    /// JSON member name (`given`, `_given`, `valueQuantity`) -> what it is.
    members: HashMap<Box<str>, Member>,
    /// The elements of the node; a member's `slot` indexes this (at most 64, checked when built).
    slots: Vec<&'static ElementDefinition>,
    /// Bit `slot` is set when the element is required (`min` > 0).
    required: u64,
    /// Choice element names (`value` for `value[x]`), to explain an unknown `valueFoo`.
    choices: Vec<&'static str>,
    /// For `Extension`: the slots of `value[x]` and `extension` (for `ext-1`).
    extension_slots: Option<(u8, u8)>,
}

/// One JSON member name of a node.
#[derive(Debug)]
struct Member {
    slot: u8,
    /// `_name`: the `id`/`extension` companion of a primitive element.
    companion: bool,
    /// The index of the type within a choice element (0 otherwise).
    choice_type: u8,
    target: Target,
    /// For primitives: the other member of the pair (`_given` for `given`, and back).
    pair: Option<Box<str>>,
    /// For `code` elements bound `required` to an enumerable value set.
    binding: Option<Binding>,
}

#[derive(Debug)]
struct Binding {
    url: &'static str,
    codes: &'static HashSet<String>,
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Primitive(PrimitiveId),
    Complex(NodeId),
    Resource { contained: bool },
}

/// A primitive type: its JSON form and its regular expression.
#[derive(Debug)]
struct Primitive {
    code: &'static str,
    kind: PrimitiveKind,
    /// Anchored; `None` for `boolean`, `decimal` (any JSON number is one) and `xhtml`.
    regex: Option<Regex>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PrimitiveKind {
    Boolean,
    /// `integer`, `unsignedInt`, `positiveInt`: at most 2^31 - 1, at least `min`.
    Integer {
        min: i64,
    },
    Decimal,
    /// A string-valued type.
    Text,
    /// `string` and `markdown`: also limited to 1 MiB.
    LongText,
    /// `date`, `dateTime`, `instant`: also a day that exists.
    Temporal,
    /// `base64Binary`: also decodes (the R4 regex admits `AA=A`).
    Base64,
    Xhtml,
}

impl PrimitiveKind {
    fn expected(self) -> &'static str {
        match self {
            PrimitiveKind::Boolean => "a boolean",
            PrimitiveKind::Integer { .. } => "an integer number",
            PrimitiveKind::Decimal => "a number",
            PrimitiveKind::Text
            | PrimitiveKind::LongText
            | PrimitiveKind::Temporal
            | PrimitiveKind::Base64
            | PrimitiveKind::Xhtml => "a string",
        }
    }
}

impl Schema {
    fn build(definitions: &'static Definitions) -> Schema {
        let mut builder = Builder {
            definitions,
            nodes: Vec::new(),
            by_path: HashMap::new(),
            primitives: Vec::new(),
            primitive_ids: HashMap::new(),
        };
        let element = builder.node("Element");
        let resources = definitions
            .resource_types()
            .into_iter()
            .map(|name| (name, builder.node(name)))
            .collect();
        Schema {
            nodes: builder.nodes,
            primitives: builder.primitives,
            resources,
            element,
        }
    }
}

struct Builder {
    definitions: &'static Definitions,
    nodes: Vec<Node>,
    /// Type name or backbone element path -> node.
    by_path: HashMap<&'static str, NodeId>,
    primitives: Vec<Primitive>,
    primitive_ids: HashMap<&'static str, PrimitiveId>,
}

impl Builder {
    /// The node of a type (`HumanName`, `Patient`) or backbone element (`Patient.contact`),
    /// built on first use. Recursive types (`Extension.extension`, content references) work
    /// because a node is registered before its members are built.
    fn node(&mut self, path: &'static str) -> NodeId {
        if let Some(&id) = self.by_path.get(path) {
            return id;
        }
        let kind = if self.definitions.is_resource_type(path) {
            NodeKind::Resource
        } else if path == "Extension" {
            NodeKind::Extension
        } else {
            NodeKind::Element
        };
        let id = self.nodes.len();
        self.by_path.insert(path, id);
        self.nodes.push(Node {
            kind,
            members: HashMap::new(),
            slots: Vec::new(),
            required: 0,
            choices: Vec::new(),
            extension_slots: None,
        });

        let mut members = HashMap::new();
        let mut slots = Vec::new();
        let mut required = 0u64;
        let mut choices = Vec::new();
        let mut value_slot = None;
        let mut extension_slot = None;
        let definitions = self.definitions;
        for element in definitions.children(path) {
            let slot = u8::try_from(slots.len())
                .ok()
                .filter(|&slot| slot < 64)
                .unwrap_or_else(|| panic!("{path} has more than 64 elements"));
            slots.push(element);
            if element.min > 0 {
                required |= 1 << slot;
            }
            let name = element.name();
            match name {
                "value" => value_slot = Some(slot),
                "extension" => extension_slot = Some(slot),
                _ => {}
            }
            if element.is_choice() {
                choices.push(name);
            }
            if let Some(target) = element.content_reference.as_deref() {
                let target = Target::Complex(self.node(target));
                members.insert(name.into(), Member::new(slot, 0, target));
                continue;
            }
            for (choice_type, element_type) in element.types.iter().enumerate() {
                let key = if element.is_choice() {
                    format!("{name}{}", upper_first(&element_type.code))
                } else {
                    name.to_owned()
                };
                let target = self.target(kind, element, &element_type.code);
                let choice_type = u8::try_from(choice_type)
                    .unwrap_or_else(|_| panic!("{} has too many types", element.path));
                let mut member = Member::new(slot, choice_type, target);
                if let Target::Primitive(primitive) = target
                    && self.primitives[primitive].kind != PrimitiveKind::Xhtml
                {
                    let companion_key = format!("_{key}");
                    let element_node = self.node("Element");
                    members.insert(
                        companion_key.clone().into(),
                        Member {
                            companion: true,
                            pair: Some(key.clone().into()),
                            ..Member::new(slot, choice_type, Target::Complex(element_node))
                        },
                    );
                    member.pair = Some(companion_key.into());
                    if self.primitives[primitive].code == "code" {
                        member.binding = element.required_binding.as_deref().and_then(|url| {
                            let codes = definitions.value_set_codes(url)?;
                            Some(Binding { url, codes })
                        });
                    }
                }
                members.insert(key.into(), member);
            }
        }
        let node = &mut self.nodes[id];
        node.members = members;
        node.slots = slots;
        node.required = required;
        node.choices = choices;
        if kind == NodeKind::Extension {
            node.extension_slots = value_slot.zip(extension_slot);
        }
        id
    }

    fn target(
        &mut self,
        owner: NodeKind,
        element: &'static ElementDefinition,
        code: &'static str,
    ) -> Target {
        // The definitions type these with FHIRPath System.String; the spec gives them
        // the regex of `id` and `uri` (http://hl7.org/fhir/R4/resource.html#id).
        match (owner, element.name()) {
            (NodeKind::Resource, "id") => return Target::Primitive(self.primitive("id")),
            (NodeKind::Extension, "url") => return Target::Primitive(self.primitive("uri")),
            _ => {}
        }
        if code == "Resource" {
            return Target::Resource {
                contained: owner == NodeKind::Resource && element.name() == "contained",
            };
        }
        if element.is_backbone() {
            return Target::Complex(self.node(&element.path));
        }
        match self.definitions.type_definition(code) {
            Some(definition) if definition.kind == TypeKind::PrimitiveType => {
                Target::Primitive(self.primitive(code))
            }
            _ => Target::Complex(self.node(code)),
        }
    }

    fn primitive(&mut self, code: &'static str) -> PrimitiveId {
        if let Some(&id) = self.primitive_ids.get(code) {
            return id;
        }
        let kind = match code {
            "boolean" => PrimitiveKind::Boolean,
            "integer" => PrimitiveKind::Integer {
                min: i32::MIN.into(),
            },
            "unsignedInt" => PrimitiveKind::Integer { min: 0 },
            "positiveInt" => PrimitiveKind::Integer { min: 1 },
            "decimal" => PrimitiveKind::Decimal,
            "string" | "markdown" => PrimitiveKind::LongText,
            "date" | "dateTime" | "instant" => PrimitiveKind::Temporal,
            "xhtml" => PrimitiveKind::Xhtml,
            "base64Binary" => PrimitiveKind::Base64,
            _ => PrimitiveKind::Text,
        };
        let regex = match kind {
            PrimitiveKind::Boolean | PrimitiveKind::Decimal | PrimitiveKind::Xhtml => None,
            _ => self
                .definitions
                .type_definition(code)
                .and_then(|definition| definition.regex.as_deref())
                .map(|java| {
                    Regex::new(&format!("^(?:{})$", rust_regex(java))).unwrap_or_else(|error| {
                        panic!("the R4 regex of {code} does not compile: {error}")
                    })
                }),
        };
        let id = self.primitives.len();
        self.primitives.push(Primitive { code, kind, regex });
        self.primitive_ids.insert(code, id);
        id
    }
}

impl Member {
    fn new(slot: u8, choice_type: u8, target: Target) -> Member {
        Member {
            slot,
            companion: false,
            choice_type,
            target,
            pair: None,
            binding: None,
        }
    }
}

/// `quantity` -> `Quantity`: the suffix of a choice element's JSON name.
fn upper_first(code: &str) -> String {
    let mut chars = code.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Whether a `base64Binary` value (whitespace allowed between groups) decodes.
fn decodes_as_base64(text: &str) -> bool {
    use base64::Engine;
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .is_ok()
}

/// The regexes of the definitions are written for Java (and XML Schema), where `\s` is ASCII
/// whitespace only; in the `regex` crate it is Unicode whitespace, which would reject a
/// no-break space in a `string`. Spell the Java classes out.
fn rust_regex(java: &str) -> String {
    let mut rust = String::with_capacity(java.len() + 32);
    let mut chars = java.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            rust.push(c);
            continue;
        }
        match chars.next() {
            Some('s') => rust.push_str(r"[\t\n\x0B\x0C\r ]"),
            Some('S') => rust.push_str(r"[^\t\n\x0B\x0C\r ]"),
            Some(escaped) => {
                rust.push('\\');
                rust.push(escaped);
            }
            None => rust.push('\\'),
        }
    }
    rust
}

// ---------------------------------------------------------------------------------------------
// The walk
// ---------------------------------------------------------------------------------------------

/// One step of the location of the value being checked.
#[derive(Debug, Clone, Copy)]
enum Segment<'a> {
    Name(&'a str),
    Index(usize),
}

struct Validator<'a> {
    schema: &'static Schema,
    issues: Vec<Issue>,
    path: Vec<Segment<'a>>,
    /// How many objects deep the walk is.
    depth: u32,
    too_deep_reported: bool,
}

impl<'a> Validator<'a> {
    /// A resource: the root, a contained resource or one inside an element typed `Resource`.
    fn resource(&mut self, value: &'a Json, contained: bool) {
        let Json::Object(object) = value else {
            self.report_unreadable("structure", None, |at| {
                format!(
                    "expected a resource (an object with resourceType) at {at}, found {}",
                    describe(value)
                )
            });
            return;
        };
        let resource_type = match object.get_unique("resourceType") {
            Ok(resource_type) => resource_type,
            Err(_) => {
                self.report_child("structure", "resourceType", |at| {
                    format!("duplicate key \"resourceType\" at {at}")
                });
                object.get("resourceType").next()
            }
        };
        let Some(resource_type) = resource_type else {
            self.report_unreadable("required", None, |at| {
                format!("missing resourceType in {at}")
            });
            return;
        };
        let Json::String(name) = resource_type else {
            self.report_unreadable("structure", Some("resourceType"), |at| {
                format!(
                    "expected a string for {at}, found {}",
                    describe(resource_type)
                )
            });
            return;
        };
        let Some(&node) = self.schema.resources.get(name.as_str()) else {
            self.report_unreadable("not-supported", None, |_| {
                format!("{} is not an R4 resource type", quoted(name))
            });
            return;
        };
        let root = self.path.is_empty();
        if root {
            self.path.push(Segment::Name(name.as_str()));
        }
        self.object(node, object);
        if contained {
            self.contained_invariants(object);
        }
        if root {
            self.path.pop();
        }
    }

    /// `dom-2`, `dom-4` and `dom-5`: what a contained resource must not have.
    fn contained_invariants(&mut self, resource: &'a Object) {
        if resource.contains_key("contained") {
            self.report_child("invariant", "contained", |_| {
                "a contained resource must not contain other resources (dom-2)".to_owned()
            });
        }
        let Some(Json::Object(meta)) = resource.get("meta").next() else {
            return;
        };
        for (name, companion, rule, what) in [
            ("versionId", "_versionId", "dom-4", "meta.versionId"),
            ("lastUpdated", "_lastUpdated", "dom-4", "meta.lastUpdated"),
            ("security", "_security", "dom-5", "security labels"),
        ] {
            if meta.contains_key(name) || meta.contains_key(companion) {
                let expression = format!("{}.meta.{name}", self.expression());
                self.push_issue(
                    "invariant",
                    expression,
                    format!("a contained resource must not have {what} ({rule})"),
                );
            }
        }
    }

    /// The members of an object of type `node`, then what it lacks.
    fn object(&mut self, node_id: NodeId, object: &'a Object) {
        if object.is_empty() {
            self.report("structure", |_| "empty objects are not allowed".to_owned());
            return;
        }
        if self.depth >= MAX_DEPTH {
            if !self.too_deep_reported {
                self.too_deep_reported = true;
                self.report("too-costly", |_| {
                    format!("nesting deeper than {MAX_DEPTH} objects is not supported")
                });
            }
            return;
        }
        self.depth += 1;
        let schema = self.schema;
        let node = &schema.nodes[node_id];
        // Which elements have been seen, as a value and as a `_name` companion.
        let mut values = 0u64;
        let mut companions = 0u64;
        for (position, entry) in object.entries().iter().enumerate() {
            let key = entry.key.as_str();
            let Some(member) = node.members.get(key) else {
                self.unknown_member(node, key);
                continue;
            };
            let bit = 1u64 << member.slot;
            let element = node.slots[usize::from(member.slot)];
            if (values | companions) & bit != 0 {
                let same_kind = if member.companion { companions } else { values };
                if self.repeated_element(node, object, position, member, key, same_kind & bit != 0)
                {
                    continue;
                }
            }
            if member.companion {
                companions |= bit;
            } else {
                values |= bit;
            }
            self.member(member, element, key, &entry.value, object);
        }

        let mut missing = node.required & !(values | companions);
        while missing != 0 {
            let slot = missing.trailing_zeros() as usize;
            missing &= missing - 1;
            let element = node.slots[slot];
            let choice = if element.is_choice() { "[x]" } else { "" };
            self.report_child("required", element.name(), |at| {
                format!("missing required element {at}{choice}")
            });
        }

        if let Some((value_slot, extension_slot)) = node.extension_slots {
            let has_value = (values | companions) & (1 << value_slot) != 0;
            let has_extensions = values & (1 << extension_slot) != 0;
            if has_value && has_extensions {
                self.report("invariant", |at| {
                    format!("extension {at} must have either a value or nested extensions, not both (ext-1)")
                });
            } else if !has_value && !has_extensions {
                self.report("invariant", |at| {
                    format!("extension {at} must have either a value or nested extensions (ext-1)")
                });
            }
        }
        self.depth -= 1;
    }

    /// A second member for an element already seen in this object: a duplicate key or a
    /// second type of a choice element (a value and its `_name` companion are fine).
    /// Returns whether to skip the member.
    fn repeated_element(
        &mut self,
        node: &'static Node,
        object: &'a Object,
        position: usize,
        member: &'static Member,
        key: &'a str,
        same_kind_seen: bool,
    ) -> bool {
        let element = node.slots[usize::from(member.slot)];
        if element.is_choice() {
            let earlier_type = object.entries()[..position]
                .iter()
                .rev()
                .find_map(|earlier| {
                    let other = node.members.get(earlier.key.as_str())?;
                    (other.slot == member.slot && other.choice_type != member.choice_type)
                        .then_some(earlier.key.as_str())
                });
            if let Some(earlier) = earlier_type {
                let name = element.name();
                self.report_child("structure", key.trim_start_matches('_'), |at| {
                    let parent = at.rsplit_once('.').map_or(at, |(parent, _)| parent);
                    format!(
                        "{parent}.{name}[x] may have one type only, found \"{earlier}\" and \"{key}\""
                    )
                });
                return false;
            }
        }
        if same_kind_seen {
            self.report_child("structure", key.trim_start_matches('_'), |at| {
                format!("duplicate key \"{key}\" at {at}")
            });
            return true;
        }
        false
    }

    fn unknown_member(&mut self, node: &'static Node, key: &'a str) {
        if key == "resourceType" && node.kind == NodeKind::Resource {
            return; // checked by `resource`
        }
        let parent = self.expression();
        let expression = format!("{parent}.{key}");
        let diagnostics = match key {
            "resourceType" => "resourceType is only allowed at the root of a resource".to_owned(),
            "fhir_comments" => "fhir_comments is not allowed in R4".to_owned(),
            _ => {
                let bare = key.strip_prefix('_').unwrap_or(key);
                let choice = node.choices.iter().find(|choice| {
                    bare.strip_prefix(**choice)
                        .is_some_and(|suffix| suffix.starts_with(|c: char| c.is_ascii_uppercase()))
                });
                match choice {
                    Some(choice) => format!(
                        "unknown element \"{key}\" in {parent}: {choice}[x] does not allow type {}",
                        &bare[choice.len()..]
                    ),
                    None => format!("unknown element \"{key}\" in {parent}"),
                }
            }
        };
        self.push_issue("structure", expression, diagnostics);
    }

    /// One member: cardinality, then each value.
    fn member(
        &mut self,
        member: &'static Member,
        element: &'static ElementDefinition,
        key: &'a str,
        value: &'a Json,
        object: &'a Object,
    ) {
        let name = if member.companion { &key[1..] } else { key };
        self.path.push(Segment::Name(name));
        let repeating = element.max.is_repeating();
        match value {
            Json::Null => self.item(member, value),
            Json::Array(items) if repeating => self.items(member, element, items, object),
            Json::Array(items) => {
                self.report("structure", |at| {
                    format!("expected a single value for {at}, found an array")
                });
                for (index, item) in items.iter().enumerate() {
                    self.path.push(Segment::Index(index));
                    self.item(member, item);
                    self.path.pop();
                }
            }
            _ if repeating => {
                self.report("structure", |at| {
                    format!("expected an array for {at}, found {}", describe(value))
                });
                self.item(member, value);
            }
            _ => self.item(member, value),
        }
        self.path.pop();
    }

    /// The array of a repeating element.
    fn items(
        &mut self,
        member: &'static Member,
        element: &'static ElementDefinition,
        items: &'a [Json],
        object: &'a Object,
    ) {
        if items.is_empty() {
            self.report("structure", |_| "empty arrays are not allowed".to_owned());
            return;
        }
        if let Max::Bounded(max) = element.max
            && items.len() > max as usize
        {
            self.report("structure", |at| {
                format!("{at} allows at most {max} items, found {}", items.len())
            });
        }
        if items.len() < element.min as usize {
            self.report("required", |at| {
                format!(
                    "{at} requires at least {} items, found {}",
                    element.min,
                    items.len()
                )
            });
        }
        for (index, item) in items.iter().enumerate() {
            self.path.push(Segment::Index(index));
            if item.is_null() && member.pair.is_some() {
                self.aligning_null(member, object, index);
            } else {
                self.item(member, item);
            }
            self.path.pop();
        }
        if member.companion
            && let Some(Json::Array(values)) = pair_value(member, object)
            && values.len() != items.len()
        {
            self.report("structure", |at| {
                format!(
                    "{at} has {} values but {} _{} companions; the arrays must align",
                    values.len(),
                    items.len(),
                    element.name()
                )
            });
        }
    }

    /// A `null` in `given` or `_given`: allowed when the other array has something there.
    fn aligning_null(&mut self, member: &'static Member, object: &'a Object, index: usize) {
        let other = match pair_value(member, object) {
            Some(Json::Array(other)) => other.get(index),
            _ => None,
        };
        match other {
            Some(other) if !other.is_null() => {}
            // null on both sides: reported once, for the value
            Some(_) if member.companion => {}
            _ => self.report("structure", |_| "null is not allowed".to_owned()),
        }
    }

    /// One value of an element.
    fn item(&mut self, member: &'static Member, value: &'a Json) {
        if value.is_null() {
            self.report("structure", |_| "null is not allowed".to_owned());
            return;
        }
        let target = if member.companion {
            Target::Complex(self.schema.element)
        } else {
            member.target
        };
        match target {
            Target::Primitive(primitive) => self.primitive(primitive, member, value),
            Target::Complex(node) => match value {
                Json::Object(object) => self.object(node, object),
                _ => self.report("structure", |at| {
                    format!("expected an object for {at}, found {}", describe(value))
                }),
            },
            Target::Resource { contained } => self.resource(value, contained),
        }
    }

    fn primitive(&mut self, id: PrimitiveId, member: &'static Member, value: &'a Json) {
        let schema = self.schema;
        let primitive = &schema.primitives[id];
        match (primitive.kind, value) {
            (PrimitiveKind::Boolean, Json::Boolean(_))
            | (PrimitiveKind::Decimal, Json::Number(_)) => {}
            (PrimitiveKind::Integer { min }, Json::Number(number)) => {
                self.integer(primitive, min, number.as_str());
            }
            (
                PrimitiveKind::Text
                | PrimitiveKind::LongText
                | PrimitiveKind::Temporal
                | PrimitiveKind::Base64
                | PrimitiveKind::Xhtml,
                Json::String(text),
            ) => self.text(primitive, member, text.as_str()),
            (kind, _) => self.report("structure", |at| {
                format!(
                    "expected {} for {at}, found {}",
                    kind.expected(),
                    describe(value)
                )
            }),
        }
    }

    fn integer(&mut self, primitive: &'static Primitive, min: i64, literal: &str) {
        let max = i64::from(i32::MAX);
        let is_integer = !literal.contains(['.', 'e', 'E']);
        if is_integer
            && !literal
                .parse::<i64>()
                .is_ok_and(|number| (min..=max).contains(&number))
        {
            self.report("value", |_| {
                format!(
                    "{literal} is out of range for {} ({min} to {max})",
                    primitive.code
                )
            });
        } else if !is_integer
            || primitive
                .regex
                .as_ref()
                .is_some_and(|regex| !regex.is_match(literal))
        {
            // a fraction or exponent, or `-0` for an unsignedInt
            self.report("value", |_| {
                format!("{literal} is not a valid {}", primitive.code)
            });
        }
    }

    fn text(&mut self, primitive: &'static Primitive, member: &'static Member, text: &str) {
        if text.is_empty() {
            self.report("value", |_| "empty strings are not allowed".to_owned());
            return;
        }
        if text.trim_matches(is_java_whitespace).is_empty() {
            self.report("value", |_| {
                "whitespace-only strings are not allowed".to_owned()
            });
            return;
        }
        match primitive.kind {
            PrimitiveKind::Xhtml => {
                if !text.trim_start().starts_with("<div") {
                    self.report("value", |at| {
                        format!("{at} must be xhtml starting with <div")
                    });
                }
                return;
            }
            PrimitiveKind::LongText
                if text.len() > MAX_STRING_CHARS && text.chars().count() > MAX_STRING_CHARS =>
            {
                self.report("too-long", |at| {
                    format!(
                        "{at} has {} characters, more than the 1 MiB allowed",
                        text.chars().count()
                    )
                });
                return;
            }
            _ => {}
        }
        if let Some(regex) = &primitive.regex
            && !regex.is_match(text)
        {
            self.report("value", |_| {
                format!("{} is not a valid {}", quoted(text), primitive.code)
            });
            return;
        }
        if primitive.kind == PrimitiveKind::Base64 && !decodes_as_base64(text) {
            self.report("value", |_| {
                format!(
                    "{} is not valid base64 (padding only at the end)",
                    quoted(text)
                )
            });
            return;
        }
        if primitive.kind == PrimitiveKind::Temporal
            && let Some(problem) = calendar_problem(text)
        {
            self.report("value", |_| {
                format!(
                    "{} is not a valid {}: {problem}",
                    quoted(text),
                    primitive.code
                )
            });
            return;
        }
        if let Some(binding) = &member.binding
            && !binding.codes.contains(text)
        {
            self.report("code-invalid", |at| {
                format!(
                    "{at} has code {}, which is not in {}",
                    quoted(text),
                    binding.url
                )
            });
        }
    }

    // --- reporting -----------------------------------------------------------------------

    /// The location being checked, as FHIRPath.
    fn expression(&self) -> String {
        render(&self.path)
    }

    /// Reports an issue at the current location; `diagnostics` receives that location.
    fn report(&mut self, code: &'static str, diagnostics: impl FnOnce(&str) -> String) {
        let expression = self.expression();
        let diagnostics = diagnostics(&expression);
        self.push_issue(code, expression, diagnostics);
    }

    /// Reports an issue at a child (`name`) of the current location.
    fn report_child(
        &mut self,
        code: &'static str,
        name: &str,
        diagnostics: impl FnOnce(&str) -> String,
    ) {
        let expression = format!("{}.{name}", self.expression());
        let diagnostics = diagnostics(&expression);
        self.push_issue(code, expression, diagnostics);
    }

    fn push_issue(&mut self, code: &'static str, expression: String, diagnostics: String) {
        self.issues.push(Issue {
            severity: IssueSeverity::Error,
            code,
            expression,
            diagnostics,
        });
    }

    /// Reports why a resource cannot be checked at all: fatal for the root, an error for a
    /// resource inside another.
    fn report_unreadable(
        &mut self,
        code: &'static str,
        name: Option<&str>,
        diagnostics: impl FnOnce(&str) -> String,
    ) {
        match name {
            Some(name) => self.report_child(code, name, diagnostics),
            None => self.report(code, diagnostics),
        }
        if self.path.is_empty()
            && let Some(issue) = self.issues.last_mut()
        {
            issue.severity = IssueSeverity::Fatal;
        }
    }
}

/// A location as FHIRPath: `Patient.name[0].given`, `Resource` for the root of a non-resource.
fn render(path: &[Segment<'_>]) -> String {
    let mut expression = String::with_capacity(64);
    for segment in path {
        match segment {
            Segment::Name(name) => {
                if !expression.is_empty() {
                    expression.push('.');
                }
                expression.push_str(name);
            }
            Segment::Index(index) => {
                let _ = write!(expression, "[{index}]");
            }
        }
    }
    if expression.is_empty() {
        expression.push_str("Resource");
    }
    expression
}

/// `\s` of the definitions' (Java) regexes; a no-break space is content, as in the HL7
/// validator and the official examples (a v2 table has the code U+00A0).
fn is_java_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}

/// The other member of a primitive pair (`_given` for `given`) in the same object.
fn pair_value<'a>(member: &Member, object: &'a Object) -> Option<&'a Json> {
    object.get(member.pair.as_deref()?).next()
}

fn describe(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Boolean(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// A value for a diagnostic: quoted, escaped, and cut if long.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// For a value that matched the `date`/`dateTime`/`instant` regex: whether its day exists
/// (the regex accepts `2019-02-30`).
fn calendar_problem(text: &str) -> Option<String> {
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<u32>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    (day > days).then(|| format!("{year:04}-{month:02} has {days} days"))
}

#[cfg(test)]
mod tests {
    use json_syntax::Parse;

    use super::*;

    fn parse(text: &str) -> Json {
        Json::parse_str(text)
            .expect("test resources are well-formed JSON")
            .0
    }

    /// (code, expression) of each issue.
    fn found(text: &str) -> Vec<(&'static str, String)> {
        validate_resource(&parse(text))
            .into_iter()
            .map(|issue| (issue.code, issue.expression))
            .collect()
    }

    #[test]
    fn the_schema_covers_every_resource_type() {
        let schema = &*SCHEMA;
        assert_eq!(
            schema.resources.len(),
            146,
            "one node per concrete R4 resource type"
        );
        for node in &schema.nodes {
            assert!(!node.slots.is_empty(), "every node has elements");
        }
        let extension = &schema.nodes[schema.resources["Observation"]];
        assert!(extension.members.contains_key("valueQuantity"));
        assert!(extension.members.contains_key("_valueString"));
        assert!(
            !extension.members.contains_key("_valueQuantity"),
            "no companion for complex types"
        );
    }

    #[test]
    fn java_regexes_are_translated() {
        assert_eq!(
            rust_regex(r"[^\s]+(\s[^\s]+)*"),
            r"[^[\t\n\x0B\x0C\r ]]+([\t\n\x0B\x0C\r ][^[\t\n\x0B\x0C\r ]]+)*"
        );
        assert_eq!(rust_regex(r"\S*"), r"[^\t\n\x0B\x0C\r ]*");
        assert_eq!(rust_regex(r"[0-9a-zA-Z\+/=]"), r"[0-9a-zA-Z\+/=]");
    }

    #[test]
    fn base64_must_decode() {
        let with = |data: &str| {
            format!(r#"{{"resourceType":"Binary","contentType":"text/plain","data":"{data}"}}"#)
        };
        assert_eq!(found(&with("aGVsbG8=")), Vec::new());
        assert_eq!(
            found(&with("aGVs bG8=")),
            Vec::new(),
            "whitespace between groups"
        );
        for bad in ["AA=A", "=AAA"] {
            assert_eq!(
                found(&with(bad)),
                vec![("value", "Binary.data".to_owned())],
                "{bad}"
            );
        }
    }

    #[test]
    fn calendar_days() {
        for (text, ok) in [
            ("2020-02-29", true),
            ("2019-02-29", false),
            ("2000-02-29", true),
            ("1900-02-29", false),
            ("2019-04-31", false),
            ("2019-12-31T23:59:59Z", true),
            ("2019", true),
            ("2019-02", true),
        ] {
            assert_eq!(calendar_problem(text).is_none(), ok, "{text} valid: {ok}");
        }
    }

    const PATIENT_FULL: &str = r#"{
        "resourceType": "Patient",
        "id": "example-1.a",
        "meta": {"versionId": "1", "lastUpdated": "2020-01-01T00:00:00.000+01:00", "profile": ["http://example.org/p"]},
        "text": {"status": "generated", "div": "  <div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
        "extension": [{"url": "http://example.org/e", "valueString": "non\u00a0breaking"}],
        "identifier": [{"system": "urn:oid:1.2.3", "value": "12345"}],
        "active": true,
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", null, "James"],
                  "_given": [null, {"extension": [{"url": "http://example.org/x", "valueCode": "a"}]}, null]}],
        "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1}],
        "gender": "male",
        "birthDate": "1974-12-25",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
        "deceasedBoolean": false,
        "multipleBirthInteger": 2,
        "contact": [{"relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}],
                     "name": {"family": "du Marché", "_family": {"extension": [{"url": "http://example.org/y", "valueString": "VV"}]}}}],
        "managingOrganization": {"reference": "Organization/1"}
    }"#;

    const OBSERVATION: &str = r#"{
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "blood pressure"},
        "subject": {"reference": "Patient/example"},
        "effectiveDateTime": "2012-09-17",
        "valueQuantity": {"value": 107.50, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]", "comparator": "<"},
        "component": [
            {"code": {"text": "systolic"}, "valueQuantity": {"value": 107, "unit": "mmHg"}},
            {"code": {"text": "interpretation"}, "valueCodeableConcept": {"coding": [{"code": "not-in-any-value-set"}]}}
        ],
        "referenceRange": [{"low": {"value": 1e2}, "appliesTo": [{"text": "x"}]}]
    }"#;

    const BUNDLE: &str = r##"{
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
             "resource": {"resourceType": "Patient", "active": true},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "contained": [{"resourceType": "Patient", "id": "p1"}],
                          "subject": {"reference": "#p1"}},
             "request": {"method": "PUT", "url": "Observation/1"}}
        ]
    }"##;

    #[test]
    fn valid_resources_pass() {
        let cases: &[(&str, &str)] = &[
            ("a patient with every kind of element", PATIENT_FULL),
            (
                "an observation with valueQuantity and components",
                OBSERVATION,
            ),
            ("a bundle with entries and a contained resource", BUNDLE),
            (
                "a minimal resource",
                r#"{"resourceType": "Basic", "code": {"text": "x"}}"#,
            ),
            (
                "a required primitive present through its companion only",
                r#"{"resourceType": "Observation", "code": {"text": "x"},
                    "_status": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}}"#,
            ),
            (
                "nested questionnaire items (content reference)",
                r#"{"resourceType": "Questionnaire", "status": "draft",
                    "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string", "item": [{"linkId": "1.1.1", "type": "display"}]}]}]}"#,
            ),
            (
                "parameters with a resource and parts",
                r#"{"resourceType": "Parameters", "parameter": [
                    {"name": "r", "resource": {"resourceType": "Patient", "gender": "other"}},
                    {"name": "p", "part": [{"name": "x", "valuePositiveInt": 3}, {"name": "y", "valueDecimal": -0.5e-3}]}]}"#,
            ),
            (
                "a complex extension and a leap day",
                r#"{"resourceType": "Patient", "birthDate": "2020-02-29",
                    "extension": [{"url": "http://example.org/c", "extension": [{"url": "a", "valueInteger": -2147483648}, {"url": "b", "valueUnsignedInt": 0}]}]}"#,
            ),
            (
                "codes of a Coding and a CodeableConcept are not bound",
                r#"{"resourceType": "Patient", "maritalStatus": {"coding": [{"code": "anything at all"}]}}"#,
            ),
        ];
        for (name, resource) in cases {
            let issues = validate_resource(&parse(resource));
            assert!(
                issues.is_empty(),
                "{name}: expected no issue, found {issues:#?}"
            );
        }
    }

    /// The (code, expression) of every issue expected, in order.
    type Expected = &'static [(&'static str, &'static str)];

    #[test]
    fn each_rule_reports_its_issue_at_its_location() {
        // (what, resource, expected (code, expression) of every issue, in order)
        let cases: &[(&str, &str, Expected)] = &[
            // 1. the root
            ("root not an object", r#"[1]"#, &[("structure", "Resource")]),
            (
                "no resourceType",
                r#"{"id": "x"}"#,
                &[("required", "Resource")],
            ),
            (
                "resourceType not a string",
                r#"{"resourceType": 1}"#,
                &[("structure", "Resource.resourceType")],
            ),
            (
                "unknown resource type",
                r#"{"resourceType": "Foo", "x": 1}"#,
                &[("not-supported", "Resource")],
            ),
            (
                "abstract resource type",
                r#"{"resourceType": "DomainResource"}"#,
                &[("not-supported", "Resource")],
            ),
            // 2. members
            (
                "unknown element",
                r#"{"resourceType": "Patient", "foo": 1}"#,
                &[("structure", "Patient.foo")],
            ),
            (
                "unknown nested element",
                r#"{"resourceType": "Patient", "name": [{"first": "x"}]}"#,
                &[("structure", "Patient.name[0].first")],
            ),
            (
                "choice type not allowed",
                r#"{"resourceType": "Patient", "deceasedString": "x"}"#,
                &[("structure", "Patient.deceasedString")],
            ),
            (
                "choice without type",
                r#"{"resourceType": "Patient", "deceased": true}"#,
                &[("structure", "Patient.deceased")],
            ),
            (
                "two types of one choice",
                r#"{"resourceType": "Patient", "deceasedBoolean": true, "deceasedDateTime": "2020"}"#,
                &[("structure", "Patient.deceasedDateTime")],
            ),
            (
                "choice value and companion of another type",
                r#"{"resourceType": "Patient", "deceasedBoolean": true, "_deceasedDateTime": {"id": "a"}}"#,
                &[("structure", "Patient.deceasedDateTime")],
            ),
            (
                "companion of a complex element",
                r#"{"resourceType": "Patient", "_name": [{"id": "a"}]}"#,
                &[("structure", "Patient._name")],
            ),
            (
                "companion not an object",
                r#"{"resourceType": "Patient", "_gender": "x"}"#,
                &[("structure", "Patient.gender")],
            ),
            (
                "resourceType inside a data type",
                r#"{"resourceType": "Patient", "name": [{"resourceType": "HumanName", "family": "x"}]}"#,
                &[("structure", "Patient.name[0].resourceType")],
            ),
            (
                "fhir_comments",
                r#"{"resourceType": "Patient", "fhir_comments": ["x"]}"#,
                &[("structure", "Patient.fhir_comments")],
            ),
            // 3. null and empty
            (
                "null",
                r#"{"resourceType": "Patient", "gender": null}"#,
                &[("structure", "Patient.gender")],
            ),
            (
                "null in an array",
                r#"{"resourceType": "Patient", "name": [null]}"#,
                &[("structure", "Patient.name[0]")],
            ),
            (
                "null in a primitive array without companion",
                r#"{"resourceType": "Patient", "name": [{"given": ["a", null]}]}"#,
                &[("structure", "Patient.name[0].given[1]")],
            ),
            (
                "null on both sides",
                r#"{"resourceType": "Patient", "name": [{"given": ["a", null], "_given": [{"id": "x"}, null]}]}"#,
                &[("structure", "Patient.name[0].given[1]")],
            ),
            (
                "value and companion arrays of different lengths",
                r#"{"resourceType": "Patient", "name": [{"given": ["a", "b"], "_given": [{"id": "x"}]}]}"#,
                &[("structure", "Patient.name[0].given")],
            ),
            (
                "empty object",
                r#"{"resourceType": "Patient", "maritalStatus": {}}"#,
                &[("structure", "Patient.maritalStatus")],
            ),
            (
                "empty array",
                r#"{"resourceType": "Patient", "name": []}"#,
                &[("structure", "Patient.name")],
            ),
            (
                "empty string",
                r#"{"resourceType": "Patient", "name": [{"family": ""}]}"#,
                &[("value", "Patient.name[0].family")],
            ),
            (
                "whitespace-only string",
                r#"{"resourceType": "Patient", "name": [{"family": " \t"}]}"#,
                &[("value", "Patient.name[0].family")],
            ),
            (
                "vertical tab in a string",
                "{\"resourceType\": \"Patient\", \"name\": [{\"family\": \"a\\u000Bb\"}]}",
                &[("value", "Patient.name[0].family")],
            ),
            // 4. cardinality
            (
                "repeating element not an array",
                r#"{"resourceType": "Patient", "name": {"family": "x"}}"#,
                &[("structure", "Patient.name")],
            ),
            (
                "single element as an array, items still checked",
                r#"{"resourceType": "Patient", "gender": ["male", "x"]}"#,
                &[
                    ("structure", "Patient.gender"),
                    ("code-invalid", "Patient.gender[1]"),
                ],
            ),
            (
                "missing required elements",
                r#"{"resourceType": "Observation", "subject": {"reference": "Patient/1"}}"#,
                &[
                    ("required", "Observation.status"),
                    ("required", "Observation.code"),
                ],
            ),
            (
                "missing required choice",
                r#"{"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": {"reference": "Patient/1"}}"#,
                &[("required", "MedicationRequest.medication")],
            ),
            (
                "missing required element of a backbone element",
                r#"{"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"url": "Patient"}}]}"#,
                &[("required", "Bundle.entry[0].request.method")],
            ),
            // 5. primitives
            (
                "string for a boolean",
                r#"{"resourceType": "Patient", "active": "true"}"#,
                &[("structure", "Patient.active")],
            ),
            (
                "number for a date",
                r#"{"resourceType": "Patient", "birthDate": 1970}"#,
                &[("structure", "Patient.birthDate")],
            ),
            (
                "string for a decimal",
                r#"{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": "1.0"}}"#,
                &[("structure", "Observation.valueQuantity.value")],
            ),
            (
                "fraction for an integer",
                r#"{"resourceType": "Patient", "multipleBirthInteger": 1.5}"#,
                &[("value", "Patient.multipleBirthInteger")],
            ),
            (
                "exponent for an integer",
                r#"{"resourceType": "Patient", "multipleBirthInteger": 1e2}"#,
                &[("value", "Patient.multipleBirthInteger")],
            ),
            (
                "integer out of 32 bits",
                r#"{"resourceType": "Patient", "multipleBirthInteger": 2147483648}"#,
                &[("value", "Patient.multipleBirthInteger")],
            ),
            (
                "zero positiveInt",
                r#"{"resourceType": "Patient", "telecom": [{"value": "1", "rank": 0}]}"#,
                &[("value", "Patient.telecom[0].rank")],
            ),
            (
                "negative unsignedInt",
                r#"{"resourceType": "Bundle", "type": "searchset", "total": -1}"#,
                &[("value", "Bundle.total")],
            ),
            (
                "month 13",
                r#"{"resourceType": "Patient", "birthDate": "1970-13-01"}"#,
                &[("value", "Patient.birthDate")],
            ),
            (
                "february 30",
                r#"{"resourceType": "Patient", "birthDate": "2019-02-30"}"#,
                &[("value", "Patient.birthDate")],
            ),
            (
                "february 29 of a common year",
                r#"{"resourceType": "Patient", "deceasedDateTime": "2019-02-29T10:00:00Z"}"#,
                &[("value", "Patient.deceasedDateTime")],
            ),
            (
                "dateTime with a time but no zone",
                r#"{"resourceType": "Patient", "deceasedDateTime": "2019-02-01T10:00:00"}"#,
                &[("value", "Patient.deceasedDateTime")],
            ),
            (
                "instant without seconds",
                r#"{"resourceType": "Patient", "meta": {"lastUpdated": "2019-02-01T10:00Z"}}"#,
                &[("value", "Patient.meta.lastUpdated")],
            ),
            (
                "bad resource id",
                r#"{"resourceType": "Patient", "id": "a b"}"#,
                &[("value", "Patient.id")],
            ),
            (
                "uri with a space",
                r#"{"resourceType": "Patient", "meta": {"source": "a b"}}"#,
                &[("value", "Patient.meta.source")],
            ),
            (
                "code with a double space",
                r#"{"resourceType": "Patient", "maritalStatus": {"coding": [{"code": "a  b"}]}}"#,
                &[("value", "Patient.maritalStatus.coding[0].code")],
            ),
            (
                "bad uuid",
                r#"{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueString": "s", "extension": [{"url": "u", "valueUuid": "urn:uuid:X"}]}"#,
                &[("value", "Observation.extension[0].valueUuid")],
            ),
            (
                "xhtml that is not a div",
                r#"{"resourceType": "Patient", "text": {"status": "generated", "div": "<p>x</p>"}}"#,
                &[("value", "Patient.text.div")],
            ),
            (
                "extension url that is not a uri",
                r#"{"resourceType": "Patient", "extension": [{"url": "a b", "valueString": "x"}]}"#,
                &[("value", "Patient.extension[0].url")],
            ),
            // 6. required bindings
            (
                "gender outside its value set",
                r#"{"resourceType": "Patient", "gender": "x"}"#,
                &[("code-invalid", "Patient.gender")],
            ),
            (
                "code of a data type outside its value set",
                r#"{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": 1, "comparator": "<<"}}"#,
                &[("code-invalid", "Observation.valueQuantity.comparator")],
            ),
            // 7. extensions
            (
                "extension without url",
                r#"{"resourceType": "Patient", "extension": [{"valueString": "x"}]}"#,
                &[("required", "Patient.extension[0].url")],
            ),
            (
                "extension with value and extensions",
                r#"{"resourceType": "Patient", "extension": [{"url": "u", "valueString": "x", "extension": [{"url": "v", "valueString": "y"}]}]}"#,
                &[("invariant", "Patient.extension[0]")],
            ),
            (
                "extension with neither",
                r#"{"resourceType": "Patient", "extension": [{"url": "u"}]}"#,
                &[("invariant", "Patient.extension[0]")],
            ),
            (
                "problem inside a primitive extension",
                r#"{"resourceType": "Patient", "birthDate": "1970", "_birthDate": {"extension": [{"url": "u", "valueDate": "1970-02-31"}]}}"#,
                &[("value", "Patient.birthDate.extension[0].valueDate")],
            ),
            // 8. resources inside resources
            (
                "contained resource with contained resources",
                r#"{"resourceType": "Patient", "contained": [{"resourceType": "Patient", "contained": [{"resourceType": "Basic", "code": {"text": "x"}}]}]}"#,
                &[("invariant", "Patient.contained[0].contained")],
            ),
            (
                "contained resource with a version",
                r#"{"resourceType": "Patient", "contained": [{"resourceType": "Patient", "meta": {"versionId": "1", "lastUpdated": "2020-01-01T00:00:00Z"}}]}"#,
                &[
                    ("invariant", "Patient.contained[0].meta.versionId"),
                    ("invariant", "Patient.contained[0].meta.lastUpdated"),
                ],
            ),
            (
                "contained resource with security labels",
                r#"{"resourceType": "Patient", "contained": [{"resourceType": "Patient", "meta": {"security": [{"code": "R"}]}}]}"#,
                &[("invariant", "Patient.contained[0].meta.security")],
            ),
            (
                "contained resource of an unknown type",
                r#"{"resourceType": "Patient", "contained": [{"resourceType": "Foo"}]}"#,
                &[("not-supported", "Patient.contained[0]")],
            ),
            (
                "problem inside a bundle entry",
                r#"{"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Patient"}}, {"resource": {"resourceType": "Patient", "foo": true}}]}"#,
                &[("structure", "Bundle.entry[1].resource.foo")],
            ),
            (
                "entry resource that is not a resource",
                r#"{"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"id": "x"}}]}"#,
                &[("required", "Bundle.entry[0].resource")],
            ),
            // 9. duplicate keys
            (
                "duplicate key",
                r#"{"resourceType": "Patient", "gender": "male", "gender": "female"}"#,
                &[("structure", "Patient.gender")],
            ),
            (
                "duplicate companion",
                r#"{"resourceType": "Patient", "_gender": {"id": "a"}, "_gender": {"id": "b"}}"#,
                &[("structure", "Patient.gender")],
            ),
            (
                "duplicate choice",
                r#"{"resourceType": "Patient", "deceasedBoolean": true, "deceasedBoolean": false}"#,
                &[("structure", "Patient.deceasedBoolean")],
            ),
            (
                "duplicate resourceType",
                r#"{"resourceType": "Patient", "resourceType": "Patient"}"#,
                &[("structure", "Resource.resourceType")],
            ),
            // many at once
            (
                "three distinct problems",
                r#"{"resourceType": "Patient", "foo": 1, "birthDate": "1970-13-01", "gender": "x"}"#,
                &[
                    ("structure", "Patient.foo"),
                    ("value", "Patient.birthDate"),
                    ("code-invalid", "Patient.gender"),
                ],
            ),
        ];
        for (what, resource, expected) in cases {
            let issues = found(resource);
            let expected: Vec<(&str, String)> = expected
                .iter()
                .map(|(code, expression)| (*code, (*expression).to_owned()))
                .collect();
            assert_eq!(
                issues, expected,
                "{what}: expected these (code, expression) issues"
            );
        }
    }

    #[test]
    fn diagnostics_say_what_was_wrong_and_what_was_expected() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"resourceType": "Patient", "foo": 1}"#,
                r#"unknown element "foo" in Patient"#,
            ),
            (
                r#"{"resourceType": "Patient", "birthDate": 1}"#,
                "expected a string for Patient.birthDate, found a number",
            ),
            (
                r#"{"resourceType": "Patient", "birthDate": "1970-13-01"}"#,
                r#""1970-13-01" is not a valid date"#,
            ),
            (
                r#"{"resourceType": "Patient", "birthDate": "2019-02-30"}"#,
                r#""2019-02-30" is not a valid date: 2019-02 has 28 days"#,
            ),
            (
                r#"{"resourceType": "Patient", "gender": "x"}"#,
                r#"Patient.gender has code "x", which is not in http://hl7.org/fhir/ValueSet/administrative-gender"#,
            ),
            (
                r#"{"resourceType": "Observation", "code": {"text": "x"}}"#,
                "missing required element Observation.status",
            ),
            (
                r#"{"resourceType": "Patient", "gender": null}"#,
                "null is not allowed",
            ),
            (
                r#"{"resourceType": "Patient", "name": []}"#,
                "empty arrays are not allowed",
            ),
            (
                r#"{"resourceType": "Foo"}"#,
                r#""Foo" is not an R4 resource type"#,
            ),
            (
                r#"{"resourceType": "Patient", "deceasedFoo": 1}"#,
                r#"unknown element "deceasedFoo" in Patient: deceased[x] does not allow type Foo"#,
            ),
            (
                r#"{"resourceType": "Patient", "telecom": [{"rank": 0}]}"#,
                "0 is out of range for positiveInt (1 to 2147483647)",
            ),
            (
                r#"{"resourceType": "Patient", "deceasedBoolean": true, "deceasedDateTime": "2020"}"#,
                r#"Patient.deceased[x] may have one type only, found "deceasedBoolean" and "deceasedDateTime""#,
            ),
        ];
        for (resource, diagnostics) in cases {
            let issues = validate_resource(&parse(resource));
            assert_eq!(
                issues.len(),
                1,
                "{resource}: expected one issue, found {issues:#?}"
            );
            assert_eq!(issues[0].diagnostics, *diagnostics, "{resource}");
        }
        let issues = validate_resource(&parse(r#"{"resourceType": "Patient", "gender": "x"}"#));
        assert_eq!(
            issues[0].severity,
            IssueSeverity::Error,
            "an invalid element is an error"
        );
        let issues = validate_resource(&parse(r#"{"resourceType": "Foo"}"#));
        assert_eq!(
            issues[0].severity,
            IssueSeverity::Fatal,
            "an unreadable root is fatal"
        );
    }

    #[test]
    fn strings_over_one_mebibyte_are_too_long() {
        let resource = format!(
            r#"{{"resourceType": "Patient", "name": [{{"family": "{}"}}]}}"#,
            "a".repeat(MAX_STRING_CHARS + 1)
        );
        assert_eq!(
            found(&resource),
            [("too-long", "Patient.name[0].family".to_owned())],
            "too-long at the string"
        );
        let resource = format!(
            r#"{{"resourceType": "Patient", "name": [{{"family": "{}"}}]}}"#,
            "é".repeat(MAX_STRING_CHARS)
        );
        assert!(
            found(&resource).is_empty(),
            "the limit counts characters, not bytes"
        );
    }

    #[test]
    fn deep_nesting_is_reported_once_and_not_walked() {
        let depth = 1000;
        let mut resource = String::from(r#"{"resourceType": "Patient", "extension": ["#);
        for _ in 0..depth {
            resource.push_str(r#"{"url": "u", "extension": ["#);
        }
        resource.push_str(r#"{"url": "u", "valueString": "x"}"#);
        for _ in 0..depth {
            resource.push_str("]}");
        }
        resource.push_str("]}");
        let issues = found(&resource);
        assert_eq!(issues.len(), 1, "one issue for the whole depth: {issues:?}");
        assert_eq!(issues[0].0, "too-costly");
    }

    const VITALS_MISSING_CATEGORY: &str = r#"{"resourceType": "Observation",
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns|4.0.1"]},
        "status": "final", "code": {"text": "heart rate"}, "subject": {"reference": "Patient/1"},
        "effectiveDateTime": "2020-01-01", "valueQuantity": {"value": 60, "system": "http://unitsofmeasure.org", "code": "/min"}}"#;

    /// (severity, code, expression) of each profile issue.
    fn profile_issues(
        text: &str,
        unknown: UnknownProfile,
        nominated: Option<&str>,
    ) -> Vec<(IssueSeverity, &'static str, String)> {
        let nominated = nominated.map(|url| Profiles::r4().get(url).expect("a shipped profile"));
        validate_profiles(&parse(text), unknown, nominated)
            .into_iter()
            .map(|issue| (issue.severity, issue.code, issue.expression))
            .collect()
    }

    #[test]
    fn claimed_profiles_are_checked_with_or_without_a_version() {
        assert!(
            found(VITALS_MISSING_CATEGORY).is_empty(),
            "structurally valid: the category is only required by the profile"
        );
        assert_eq!(
            profile_issues(VITALS_MISSING_CATEGORY, UnknownProfile::Ignore, None),
            [(
                IssueSeverity::Error,
                "required",
                "Observation.category".to_owned()
            )]
        );
        let unversioned = VITALS_MISSING_CATEGORY.replace("|4.0.1", "");
        assert_eq!(
            profile_issues(&unversioned, UnknownProfile::Ignore, None).len(),
            1
        );
        let twice = VITALS_MISSING_CATEGORY.replace(
            r#"["http://hl7.org/fhir/StructureDefinition/vitalsigns|4.0.1"]"#,
            r#"["http://hl7.org/fhir/StructureDefinition/vitalsigns", "http://hl7.org/fhir/StructureDefinition/vitalsigns|4.0.1"]"#,
        );
        assert_eq!(
            profile_issues(&twice, UnknownProfile::Ignore, None).len(),
            1,
            "a profile claimed twice is checked once"
        );
        let unclaimed = VITALS_MISSING_CATEGORY.replace(
            r#""meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns|4.0.1"]},"#,
            "",
        );
        assert_eq!(
            profile_issues(&unclaimed, UnknownProfile::Reject, None),
            [],
            "without a claim, nothing to check"
        );
    }

    #[test]
    fn unknown_profiles_are_ignored_warned_about_or_rejected() {
        let other_version = VITALS_MISSING_CATEGORY.replace("|4.0.1", "|3.0.2");
        let unknown = VITALS_MISSING_CATEGORY.replace(
            "http://hl7.org/fhir/StructureDefinition/vitalsigns|4.0.1",
            "http://example.org/StructureDefinition/mine",
        );
        for text in [&other_version, &unknown] {
            assert_eq!(profile_issues(text, UnknownProfile::Ignore, None), []);
            assert_eq!(
                profile_issues(text, UnknownProfile::Warn, None),
                [(
                    IssueSeverity::Warning,
                    "not-supported",
                    "Observation.meta.profile[0]".to_owned()
                )]
            );
            assert_eq!(
                profile_issues(text, UnknownProfile::Reject, None),
                [(
                    IssueSeverity::Error,
                    "not-supported",
                    "Observation.meta.profile[0]".to_owned()
                )]
            );
        }
        let issues = validate_profiles(&parse(&other_version), UnknownProfile::Warn, None);
        assert_eq!(
            issues[0].diagnostics,
            "profile http://hl7.org/fhir/StructureDefinition/vitalsigns|3.0.2 is not known to this server, \
             which has version 4.0.1 of http://hl7.org/fhir/StructureDefinition/vitalsigns; \
             the resource was not checked against it"
        );
    }

    #[test]
    fn a_nominated_profile_is_checked_without_a_claim_and_only_once_with_one() {
        let unclaimed = VITALS_MISSING_CATEGORY.replace(
            r#""meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns|4.0.1"]},"#,
            "",
        );
        let vitalsigns = "http://hl7.org/fhir/StructureDefinition/vitalsigns";
        let expected = [(
            IssueSeverity::Error,
            "required",
            "Observation.category".to_owned(),
        )];
        assert_eq!(
            profile_issues(&unclaimed, UnknownProfile::Warn, Some(vitalsigns)),
            expected
        );
        assert_eq!(
            profile_issues(
                VITALS_MISSING_CATEGORY,
                UnknownProfile::Warn,
                Some(vitalsigns)
            ),
            expected
        );
    }

    #[test]
    fn resources_inside_resources_are_checked_against_their_own_claims() {
        let bundle = format!(
            r#"{{"resourceType": "Bundle", "type": "collection", "entry": [
                {{"resource": {{"resourceType": "Patient"}}}},
                {{"resource": {VITALS_MISSING_CATEGORY}}}]}}"#
        );
        assert_eq!(
            profile_issues(&bundle, UnknownProfile::Warn, None),
            [(
                IssueSeverity::Error,
                "required",
                "Bundle.entry[1].resource.category".to_owned()
            )]
        );
        let contained = format!(
            r#"{{"resourceType": "DiagnosticReport", "status": "final", "code": {{"text": "x"}},
                "contained": [{VITALS_MISSING_CATEGORY}],
                "meta": {{"profile": ["http://example.org/unknown"]}}}}"#
        );
        assert_eq!(
            profile_issues(&contained, UnknownProfile::Warn, None),
            [
                (
                    IssueSeverity::Warning,
                    "not-supported",
                    "DiagnosticReport.meta.profile[0]".to_owned()
                ),
                (
                    IssueSeverity::Error,
                    "required",
                    "DiagnosticReport.contained[0].category".to_owned()
                ),
            ]
        );
    }
}
