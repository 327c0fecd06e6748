//! The subset of [FHIRPath](http://hl7.org/fhirpath/N1/) that the R4 search parameter
//! expressions use, evaluated over JSON resources.
//!
//! An [`Expression`] is parsed once and evaluated many times. Evaluation yields a
//! collection of [`Node`]s: a borrowed JSON value together with its FHIR type when known.
//! Types come from the R4 structure definitions ([`Definitions::r4`]), so the step `value`
//! on an Observation finds `valueQuantity` (type `Quantity`) or `valueString` (type
//! `string`), and `as Quantity` keeps only the former.
//!
//! # Supported constructs
//!
//! | construct | example |
//! |---|---|
//! | member path (a leading type name filters the context) | `Observation.code.coding` |
//! | choice element by its base name | `Observation.value` → `valueQuantity`, `valueString`, ... |
//! | union | `Patient.name \| Patient.alias` |
//! | parentheses | `(Observation.value as CodeableConcept).text` |
//! | type operators | `value as Quantity`, `x is Period` |
//! | type functions | `.as(Age)`, `.is(Period)`, `.ofType(Range)` |
//! | type names | FHIR types (`dateTime`, `Quantity`, `FHIR.Quantity`), System types (`DateTime`, `System.String`) |
//! | filtering | `.where(system = 'phone')`, `.where(resolve() is Patient)` |
//! | `resolve() is Type` | decided from the reference string or `Reference.type`; `#id` looks in `contained` |
//! | existence | `.exists()`, `.exists(criteria)`, `.empty()` |
//! | equality | `=`, `!=` against literals or paths |
//! | boolean logic | `and`, `or` (three-valued, as in FHIRPath) |
//! | indexer and `first()` | `Bundle.entry[0].resource`, `.first()` |
//! | extensions | `.extension('http://...')` |
//! | environment and context | `%resource`, `$this` |
//! | literals | `'string'`, `true`, `false`, integers and decimals, `{}` |
//!
//! Anything else (arithmetic, ordering comparisons, other functions, `resolve()` outside
//! `resolve() is Type`) is a [`ParseError`], never a silently empty result.
//!
//! # Deliberate simplifications
//!
//! - `as` and `is` on a collection of several items do not raise an error: `as` filters
//!   (like `ofType`), `is` yields an empty collection. The R4 expressions rely on the former
//!   (`Observation.component.value as Quantity`).
//! - Primitive extensions (`_given`) are not merged into their primitives; only values are
//!   navigated.
//! - Members the definitions do not know are still looked up in the JSON, without a type.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use crate::Json;
use crate::definitions::Definitions;

/// A parse failure, naming where in the expression it happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at offset {offset} of fhirpath `{expression}`")]
pub struct ParseError {
    /// The expression as given.
    pub expression: String,
    /// The byte offset of the offending token.
    pub offset: usize,
    /// What was wrong, in lower case.
    pub message: String,
}

/// A compiled FHIRPath expression.
pub struct Expression {
    text: Box<str>,
    root: Expr,
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expression").field(&self.text).finish()
    }
}

impl Expression {
    /// Parses an expression of the supported subset.
    pub fn parse(text: &str) -> Result<Expression, ParseError> {
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            text,
            tokens,
            position: 0,
            model: Model::r4(),
        };
        let mut root = parser.expression()?;
        annotate(&mut root, None, parser.model);
        if let Some(token) = parser.peek() {
            return Err(parser.error_at(token.offset, format!("unexpected {}", token.kind)));
        }
        if let Some(offset) = find_bare_resolve(&root) {
            return Err(parser.error_at(
                offset,
                "resolve() is only supported as `resolve() is Type`".to_owned(),
            ));
        }
        Ok(Expression {
            text: text.into(),
            root,
        })
    }

    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Evaluates the expression with the resource as both context and `%resource`.
    ///
    /// The nodes borrow from the resource and, for literals, from the expression.
    pub fn evaluate<'a>(&'a self, resource: &'a Json) -> Vec<Node<'a>> {
        let root = Node::resource(resource);
        let mut out = Vec::new();
        self.evaluate_into(root, root, &mut out);
        out
    }

    /// Evaluates the expression and finds where in the resource each resulting node sits.
    ///
    /// A node that is not part of the resource (a literal, or the boolean of `exists()`)
    /// has no location.
    pub fn select<'a>(&'a self, resource: &'a Json) -> Vec<(Node<'a>, Option<Location>)> {
        let nodes = self.evaluate(resource);
        let locations = locate(resource, &nodes);
        nodes.into_iter().zip(locations).collect()
    }

    /// For an expression that ends in a member step (`Patient.name.given`), evaluates what
    /// precedes that step (`Patient.name`) and returns it with the member's name (`given`).
    /// A list that is still empty is found this way through the element that will hold it.
    pub fn evaluate_parent<'a>(&'a self, resource: &'a Json) -> Option<(Vec<Node<'a>>, &'a str)> {
        let Expr::Member(receiver, name, _) = &self.root else {
            return None;
        };
        let root = Node::resource(resource);
        let cx = Context {
            resource: root,
            model: Model::r4(),
        };
        let mut out = Vec::new();
        cx.eval(receiver, std::slice::from_ref(&root), &mut out);
        Some((out, name))
    }

    /// Evaluates the expression on `context` (`$this`) within `resource` (`%resource`),
    /// appending the result to `out`. A composite search parameter's components are
    /// evaluated this way, relative to each node of the composite's base expression.
    pub fn evaluate_into<'a>(
        &'a self,
        resource: Node<'a>,
        context: Node<'a>,
        out: &mut Vec<Node<'a>>,
    ) {
        let cx = Context {
            resource,
            model: Model::r4(),
        };
        cx.eval(&self.root, std::slice::from_ref(&context), out);
    }
}

/// One item of a FHIRPath collection: a JSON value and its FHIR type, when known.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    value: &'a Json,
    pub(crate) ty: Option<TypeId>,
}

impl fmt::Debug for Node<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("type", &self.type_name())
            .field("value", self.value)
            .finish()
    }
}

impl<'a> Node<'a> {
    /// A resource as the root of an evaluation; its type comes from `resourceType`.
    pub fn resource(value: &'a Json) -> Node<'a> {
        Node {
            value,
            ty: Model::r4().resource_type_of(value),
        }
    }

    /// The JSON value (never an array: FHIRPath collections are flattened).
    pub fn value(&self) -> &'a Json {
        self.value
    }

    /// The FHIR type: a resource type, a data type (`Quantity`, `dateTime`), or
    /// `BackboneElement`/`Element` for elements defined inline. `None` when unknown.
    pub fn type_name(&self) -> Option<&'static str> {
        self.ty.map(|ty| Model::r4().info(ty).name.as_ref())
    }

    /// Whether the node's type is `type_name` or derives from it (`Age` is a `Quantity`,
    /// `code` is a `string`, `Patient` is a `Resource`).
    pub fn is_a(&self, type_name: &str) -> bool {
        let model = Model::r4();
        match (self.ty, model.by_name.get(type_name)) {
            (Some(ty), Some(target)) => model.info(ty).ancestors.contains(target),
            _ => false,
        }
    }

    /// Calls `visit` with the name and node of each member of this node's JSON object, in
    /// order, repeating members once per item. Types come from the definitions: a choice
    /// member (`valueString`) gets the type its suffix names, a primitive's extension
    /// member (`_given`) is an `Element`, and an unknown member has no type.
    pub fn for_each_child(&self, mut visit: impl FnMut(&'a str, Node<'a>)) {
        let Some(object) = self.value.as_object() else {
            return;
        };
        let model = Model::r4();
        let info = self.ty.map(|ty| model.info(ty));
        for entry in object.entries() {
            let key = entry.key.as_str();
            let slot = match key.strip_prefix('_') {
                Some(_) => model.by_name.get("Element").copied().map(Slot::Typed),
                None => info.and_then(|info| child_slot(info, key)),
            };
            let typed = |value: &'a Json| Node {
                value,
                ty: slot.and_then(|slot| model.slot_type(slot, value)),
            };
            match &entry.value {
                Json::Null => {}
                Json::Array(items) => {
                    for item in items.iter().filter(|i| !matches!(i, Json::Null)) {
                        visit(key, typed(item));
                    }
                }
                single => visit(key, typed(single)),
            }
        }
    }

    fn boolean(value: bool) -> Node<'static> {
        static TRUE: Json = Json::Boolean(true);
        static FALSE: Json = Json::Boolean(false);
        Node {
            value: if value { &TRUE } else { &FALSE },
            ty: Some(Model::r4().boolean),
        }
    }

    fn same(&self, other: &Node<'_>) -> bool {
        std::ptr::eq(self.value, other.value) && self.ty == other.ty
    }
}

// ---------------------------------------------------------------------------------------
// Locations: where a node sits in its resource.
// ---------------------------------------------------------------------------------------

/// One step from a JSON value into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The member with this key (`valueQuantity`, `_birthDate`).
    Member(Box<str>),
    /// The item at this position of an array (counting `null` items).
    Item(usize),
}

/// Where a node sits in the resource it was selected from: the steps from the resource to
/// it. Shown as a JSON Pointer (RFC 6901), e.g. `/name/0/given/1`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location(Vec<Step>);

impl Location {
    /// The steps from the resource to the node; empty for the resource itself.
    pub fn steps(&self) -> &[Step] {
        &self.0
    }

    /// The value at this location, if it is still there.
    pub fn resolve<'a>(&self, resource: &'a Json) -> Option<&'a Json> {
        self.0.iter().try_fold(resource, |value, step| match step {
            Step::Member(key) => values(value.as_object()?, key).next(),
            Step::Item(index) => value.as_array()?.get(*index),
        })
    }
}

impl From<Vec<Step>> for Location {
    fn from(steps: Vec<Step>) -> Location {
        Location(steps)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.0 {
            match step {
                Step::Member(key) => write!(f, "/{}", key.replace('~', "~0").replace('/', "~1"))?,
                Step::Item(index) => write!(f, "/{index}")?,
            }
        }
        Ok(())
    }
}

/// Where each node sits in `resource` (found by identity, not by value: two equal strings
/// at different places are told apart). Nodes that are not part of `resource` have none.
pub fn locate(resource: &Json, nodes: &[Node<'_>]) -> Vec<Option<Location>> {
    let mut wanted: HashMap<*const Json, Vec<usize>> = HashMap::new();
    for (index, node) in nodes.iter().enumerate() {
        wanted
            .entry(std::ptr::from_ref(node.value))
            .or_default()
            .push(index);
    }
    let mut found = vec![None; nodes.len()];
    let mut remaining = wanted.len();
    let mut steps = Vec::new();
    locate_in(resource, &mut steps, &wanted, &mut found, &mut remaining);
    found
}

fn locate_in(
    value: &Json,
    steps: &mut Vec<Step>,
    wanted: &HashMap<*const Json, Vec<usize>>,
    found: &mut [Option<Location>],
    remaining: &mut usize,
) {
    if *remaining == 0 {
        return;
    }
    if let Some(indexes) = wanted.get(&std::ptr::from_ref(value)) {
        for index in indexes {
            found[*index] = Some(Location(steps.clone()));
        }
        *remaining -= 1;
    }
    match value {
        Json::Object(object) => {
            for entry in object.entries() {
                steps.push(Step::Member(entry.key.as_str().into()));
                locate_in(&entry.value, steps, wanted, found, remaining);
                steps.pop();
            }
        }
        Json::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                steps.push(Step::Item(index));
                locate_in(item, steps, wanted, found, remaining);
                steps.pop();
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// The type model: every type and inline element reachable from the resource types.
// ---------------------------------------------------------------------------------------

/// An index into [`Model::types`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TypeId(u32);

/// What a member step leads to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Slot {
    Typed(TypeId),
    /// An element of type `Resource` (`contained`, `Bundle.entry.resource`): the type is
    /// read from the value's `resourceType`.
    AnyResource,
}

#[derive(Debug)]
pub(crate) enum Child {
    Single(Slot),
    /// A choice element `value[x]`: JSON key suffix (`Quantity`) -> type.
    Choice(Box<[(Box<str>, Slot)]>),
}

#[derive(Debug)]
pub(crate) struct TypeInfo {
    /// The type code: `Observation`, `Quantity`, `dateTime`, or `BackboneElement`/`Element`.
    pub(crate) name: Box<str>,
    /// Where its elements are defined: the type name, or the path of an inline element
    /// (`Patient.contact`), so that `{path}.{element}` names an element definition.
    pub(crate) path: Box<str>,
    /// The named types this is an instance of, itself first (for a named type).
    pub(crate) ancestors: Vec<TypeId>,
    is_resource: bool,
    pub(crate) children: HashMap<Box<str>, Child>,
}

#[derive(Debug)]
pub(crate) struct Model {
    types: Vec<TypeInfo>,
    /// Named types (resources and data types) by name.
    pub(crate) by_name: HashMap<Box<str>, TypeId>,
    boolean: TypeId,
    string: TypeId,
    integer: TypeId,
    decimal: TypeId,
}

impl Model {
    pub(crate) fn r4() -> &'static Model {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| Model::build(Definitions::r4()))
    }

    fn build(defs: &Definitions) -> Model {
        let mut builder = ModelBuilder {
            defs,
            types: Vec::new(),
            ids: HashMap::new(),
            queue: Vec::new(),
        };
        for name in [
            "Resource",
            "DomainResource",
            "boolean",
            "string",
            "integer",
            "decimal",
        ] {
            builder.intern(name);
        }
        for name in defs.resource_types() {
            builder.intern(name);
        }
        while let Some((id, path)) = builder.queue.pop() {
            builder.complete(id, &path);
        }
        let by_name = builder
            .ids
            .iter()
            .filter(|(path, _)| defs.type_definition(path).is_some())
            .map(|(path, id)| (path.as_str().into(), *id))
            .collect::<HashMap<Box<str>, TypeId>>();
        let named = |name: &str| by_name.get(name).copied().unwrap_or(TypeId(0));
        Model {
            boolean: named("boolean"),
            string: named("string"),
            integer: named("integer"),
            decimal: named("decimal"),
            types: builder.types,
            by_name,
        }
    }

    pub(crate) fn info(&self, ty: TypeId) -> &TypeInfo {
        &self.types[ty.0 as usize]
    }

    pub(crate) fn resource_type_of(&self, value: &Json) -> Option<TypeId> {
        let name = values(value.as_object()?, "resourceType")
            .next()?
            .as_str()?;
        self.by_name
            .get(name)
            .copied()
            .filter(|ty| self.info(*ty).is_resource)
    }

    pub(crate) fn slot_type(&self, slot: Slot, value: &Json) -> Option<TypeId> {
        match slot {
            Slot::Typed(ty) => Some(ty),
            Slot::AnyResource => self.resource_type_of(value),
        }
    }
}

struct ModelBuilder<'d> {
    defs: &'d Definitions,
    types: Vec<TypeInfo>,
    /// Type name or inline element path -> id.
    ids: HashMap<String, TypeId>,
    queue: Vec<(TypeId, String)>,
}

impl ModelBuilder<'_> {
    fn intern(&mut self, path: &str) -> TypeId {
        if let Some(id) = self.ids.get(path) {
            return *id;
        }
        let id = TypeId(u32::try_from(self.types.len()).unwrap_or(u32::MAX));
        let named = self.defs.type_definition(path);
        let name = match named {
            Some(_) => path.to_owned(),
            None => self
                .defs
                .element(path)
                .and_then(|e| e.types.first())
                .map_or_else(|| "Element".to_owned(), |t| t.code.clone()),
        };
        let is_resource = named.is_some_and(|t| t.kind == crate::definitions::TypeKind::Resource);
        self.types.push(TypeInfo {
            name: name.into(),
            path: path.into(),
            ancestors: Vec::new(),
            is_resource,
            children: HashMap::new(),
        });
        self.ids.insert(path.to_owned(), id);
        self.queue.push((id, path.to_owned()));
        id
    }

    fn complete(&mut self, id: TypeId, path: &str) {
        // ancestors: the named type itself (if named) and its base chain
        let mut ancestors = Vec::new();
        let mut next = match self.defs.type_definition(path) {
            Some(_) => Some(path.to_owned()),
            None => Some(self.types[id.0 as usize].name.to_string()),
        };
        while let Some(name) = next {
            let Some(definition) = self.defs.type_definition(&name) else {
                break;
            };
            next = definition.base.clone();
            ancestors.push(self.intern(&name));
        }
        let mut children = HashMap::new();
        let elements: Vec<_> = self.defs.children(path).collect();
        for element in elements {
            let slot_for = |builder: &mut Self, code: &str| -> Slot {
                if code == "Resource" {
                    Slot::AnyResource
                } else {
                    Slot::Typed(builder.intern(code))
                }
            };
            let child = if let Some(target) = element.content_reference.as_deref() {
                Child::Single(Slot::Typed(self.intern(target)))
            } else if element.is_backbone() {
                Child::Single(Slot::Typed(self.intern(&element.path)))
            } else if element.is_choice() {
                let options: Vec<(Box<str>, Slot)> = element
                    .types
                    .iter()
                    .map(|t| (capitalize(&t.code).into(), slot_for(self, &t.code)))
                    .collect();
                Child::Choice(options.into())
            } else if let Some(first) = element.types.first() {
                Child::Single(slot_for(self, &first.code))
            } else {
                continue;
            };
            children.insert(element.name().into(), child);
        }
        let info = &mut self.types[id.0 as usize];
        info.ancestors = ancestors;
        info.children = children;
    }
}

/// The slot of the JSON member `key` of a value of type `info`: a plain element by its
/// name, a choice element (`value[x]`) by its name and type suffix (`valueQuantity`).
fn child_slot(info: &TypeInfo, key: &str) -> Option<Slot> {
    match info.children.get(key) {
        Some(Child::Single(slot)) => return Some(*slot),
        Some(Child::Choice(_)) => return None,
        None => {}
    }
    key.char_indices()
        .filter(|(i, c)| *i > 0 && c.is_ascii_uppercase())
        .find_map(|(i, _)| match info.children.get(&key[..i]) {
            Some(Child::Choice(options)) => options
                .iter()
                .find(|(suffix, _)| suffix.as_ref() == &key[i..])
                .map(|(_, slot)| *slot),
            _ => None,
        })
}

pub(crate) fn capitalize(code: &str) -> String {
    let mut chars = code.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The FHIRPath System types, which FHIR primitives convert to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SystemType {
    Boolean,
    String,
    Integer,
    Decimal,
    Date,
    DateTime,
    Time,
}

impl SystemType {
    fn from_name(name: &str) -> Option<SystemType> {
        Some(match name {
            "Boolean" => SystemType::Boolean,
            "String" => SystemType::String,
            "Integer" => SystemType::Integer,
            "Decimal" => SystemType::Decimal,
            "Date" => SystemType::Date,
            "DateTime" => SystemType::DateTime,
            "Time" => SystemType::Time,
            _ => return None,
        })
    }

    fn includes(self, fhir_type: &str) -> bool {
        match self {
            SystemType::Boolean => fhir_type == "boolean",
            SystemType::String => matches!(
                fhir_type,
                "string"
                    | "code"
                    | "id"
                    | "uri"
                    | "url"
                    | "canonical"
                    | "oid"
                    | "uuid"
                    | "markdown"
                    | "base64Binary"
            ),
            SystemType::Integer => matches!(fhir_type, "integer" | "positiveInt" | "unsignedInt"),
            SystemType::Decimal => fhir_type == "decimal",
            SystemType::Date => fhir_type == "date",
            SystemType::DateTime => matches!(fhir_type, "dateTime" | "instant"),
            SystemType::Time => fhir_type == "time",
        }
    }
}

/// The type named in `as`, `is`, `ofType`.
#[derive(Debug, Clone, Copy)]
enum TypeTarget {
    Fhir(TypeId),
    System(SystemType),
    /// A FHIR type no resource element can have (so nothing matches).
    Unreachable,
}

impl TypeTarget {
    fn matches(self, model: &Model, node: &Node<'_>) -> bool {
        let Some(ty) = node.ty else { return false };
        match self {
            TypeTarget::Fhir(target) => model.info(ty).ancestors.contains(&target),
            TypeTarget::System(system) => system.includes(&model.info(ty).name),
            TypeTarget::Unreachable => false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Syntax tree and evaluation.
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
enum Expr {
    /// `$this`, and the implicit receiver of a leading member or function.
    This,
    /// `%resource`.
    Resource,
    Literal(Json, TypeId),
    Empty,
    /// `receiver.name`; the hint is the receiver's type as inferred at parse time and that
    /// type's child, so that evaluation skips the model lookup when the guess holds.
    Member(Box<Expr>, Box<str>, Option<(TypeId, &'static Child)>),
    /// `as`, `.as()`, `.ofType()`, and a leading type name (`Observation.code`).
    OfType(Box<Expr>, TypeTarget),
    Is(Box<Expr>, TypeTarget),
    /// `resolve()` before it is combined with `is`; rejected if left over after parsing.
    Resolve(Box<Expr>, usize),
    ResolveIs(Box<Expr>, TypeTarget),
    Where(Box<Expr>, Box<Expr>),
    Exists(Box<Expr>, Option<Box<Expr>>),
    IsEmpty(Box<Expr>),
    Index(Box<Expr>, usize),
    Extension(Box<Expr>, Box<str>),
    Union(Vec<Expr>),
    Equals(Box<Expr>, Box<Expr>, bool),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

fn find_bare_resolve(expr: &Expr) -> Option<usize> {
    match expr {
        Expr::Resolve(_, offset) => Some(*offset),
        Expr::This | Expr::Resource | Expr::Literal(..) | Expr::Empty => None,
        Expr::Member(inner, ..)
        | Expr::OfType(inner, _)
        | Expr::Is(inner, _)
        | Expr::ResolveIs(inner, _)
        | Expr::IsEmpty(inner)
        | Expr::Index(inner, _)
        | Expr::Extension(inner, _)
        | Expr::Exists(inner, None) => find_bare_resolve(inner),
        Expr::Where(a, b)
        | Expr::Exists(a, Some(b))
        | Expr::Equals(a, b, _)
        | Expr::And(a, b)
        | Expr::Or(a, b) => find_bare_resolve(a).or_else(|| find_bare_resolve(b)),
        Expr::Union(items) => items.iter().find_map(find_bare_resolve),
    }
}

struct Context<'a> {
    resource: Node<'a>,
    model: &'static Model,
}

impl<'a> Context<'a> {
    /// Evaluates `receiver`, borrowing `this` when the receiver is the context itself.
    fn receiver<'s>(&self, receiver: &'a Expr, this: &'s [Node<'a>]) -> Cow<'s, [Node<'a>]> {
        match receiver {
            Expr::This => Cow::Borrowed(this),
            // a leading type name on a context of that type: nothing to filter
            Expr::OfType(inner, target)
                if matches!(**inner, Expr::This)
                    && this.iter().all(|node| target.matches(self.model, node)) =>
            {
                Cow::Borrowed(this)
            }
            other => {
                let mut items = Vec::new();
                self.eval(other, this, &mut items);
                Cow::Owned(items)
            }
        }
    }

    fn eval(&self, expr: &'a Expr, this: &[Node<'a>], out: &mut Vec<Node<'a>>) {
        match expr {
            Expr::This => out.extend_from_slice(this),
            Expr::Resource => out.push(self.resource),
            Expr::Literal(value, ty) => out.push(Node {
                value,
                ty: Some(*ty),
            }),
            Expr::Empty | Expr::Resolve(..) => {}
            Expr::Member(receiver, name, hint) => {
                for node in self.receiver(receiver, this).iter() {
                    let child = match hint {
                        Some((ty, child)) if node.ty == Some(*ty) => Some(*child),
                        _ => node
                            .ty
                            .and_then(|ty| self.model.info(ty).children.get(name.as_ref())),
                    };
                    self.member(node, name, child, out);
                }
            }
            Expr::OfType(receiver, target) => {
                let items = self.receiver(receiver, this);
                out.extend(items.iter().filter(|node| target.matches(self.model, node)));
            }
            Expr::Is(receiver, target) => {
                if let [node] = self.receiver(receiver, this).as_ref() {
                    out.push(Node::boolean(target.matches(self.model, node)));
                }
            }
            Expr::ResolveIs(receiver, target) => {
                if let [node] = self.receiver(receiver, this).as_ref()
                    && let Some(resolved) = self.resolve_type(node)
                {
                    let resolved = Node {
                        value: node.value,
                        ty: Some(resolved),
                    };
                    out.push(Node::boolean(target.matches(self.model, &resolved)));
                }
            }
            Expr::Where(receiver, criteria) => {
                let items = self.receiver(receiver, this);
                let mut result = Vec::new();
                for node in items.iter() {
                    result.clear();
                    self.eval(criteria, std::slice::from_ref(node), &mut result);
                    if singleton_boolean(&result) == Some(true) {
                        out.push(*node);
                    }
                }
            }
            Expr::Exists(receiver, criteria) => {
                let items = self.receiver(receiver, this);
                let exists = match criteria {
                    None => !items.is_empty(),
                    Some(criteria) => {
                        let mut result = Vec::new();
                        items.iter().any(|node| {
                            result.clear();
                            self.eval(criteria, std::slice::from_ref(node), &mut result);
                            singleton_boolean(&result) == Some(true)
                        })
                    }
                };
                out.push(Node::boolean(exists));
            }
            Expr::IsEmpty(receiver) => {
                let empty = self.receiver(receiver, this).is_empty();
                out.push(Node::boolean(empty));
            }
            Expr::Index(receiver, index) => {
                if let Some(node) = self.receiver(receiver, this).get(*index) {
                    out.push(*node);
                }
            }
            Expr::Extension(receiver, url) => {
                for node in self.receiver(receiver, this).iter() {
                    let start = out.len();
                    let child = node
                        .ty
                        .and_then(|ty| self.model.info(ty).children.get("extension"));
                    self.member(node, "extension", child, out);
                    let mut keep = start;
                    for index in start..out.len() {
                        let extension = out[index];
                        let matches = extension
                            .value
                            .as_object()
                            .and_then(|o| values(o, "url").next())
                            .and_then(Json::as_str)
                            .is_some_and(|u| u == url.as_ref());
                        if matches {
                            out[keep] = extension;
                            keep += 1;
                        }
                    }
                    out.truncate(keep);
                }
            }
            Expr::Union(branches) => {
                let start = out.len();
                for branch in branches {
                    let before = out.len();
                    self.eval(branch, this, out);
                    // a union has no duplicates; compare new items with those of earlier branches
                    let mut index = before;
                    while index < out.len() {
                        if out[start..before].iter().any(|seen| seen.same(&out[index])) {
                            out.remove(index);
                        } else {
                            index += 1;
                        }
                    }
                }
            }
            Expr::Equals(left, right, negate) => {
                let left = self.receiver(left, this);
                let right = self.receiver(right, this);
                if left.is_empty() || right.is_empty() {
                    return;
                }
                let equal = left.len() == right.len()
                    && left
                        .iter()
                        .zip(right.iter())
                        .all(|(a, b)| json_equal(a.value, b.value));
                out.push(Node::boolean(equal != *negate));
            }
            Expr::And(left, right) => {
                let left = singleton_boolean(&self.receiver(left, this));
                if left == Some(false) {
                    out.push(Node::boolean(false));
                    return;
                }
                let right = singleton_boolean(&self.receiver(right, this));
                match (left, right) {
                    (_, Some(false)) => out.push(Node::boolean(false)),
                    (Some(true), Some(true)) => out.push(Node::boolean(true)),
                    _ => {}
                }
            }
            Expr::Or(left, right) => {
                let left = singleton_boolean(&self.receiver(left, this));
                if left == Some(true) {
                    out.push(Node::boolean(true));
                    return;
                }
                let right = singleton_boolean(&self.receiver(right, this));
                match (left, right) {
                    (_, Some(true)) => out.push(Node::boolean(true)),
                    (Some(false), Some(false)) => out.push(Node::boolean(false)),
                    _ => {}
                }
            }
        }
    }

    /// The children of `node` named `name` (whose definition is `child`), flattened, with
    /// their types.
    fn member(&self, node: &Node<'a>, name: &str, child: Option<&Child>, out: &mut Vec<Node<'a>>) {
        let Some(object) = node.value.as_object() else {
            return;
        };
        match child {
            Some(Child::Single(slot)) => {
                for value in values(object, name) {
                    self.push_flattened(value, Some(*slot), out);
                }
            }
            Some(Child::Choice(options)) => {
                for entry in object.entries() {
                    let key = entry.key.as_str();
                    let Some(suffix) = key.strip_prefix(name) else {
                        continue;
                    };
                    if let Some((_, slot)) = options.iter().find(|(s, _)| s.as_ref() == suffix) {
                        self.push_flattened(&entry.value, Some(*slot), out);
                    }
                }
            }
            None => {
                for value in values(object, name) {
                    self.push_flattened(value, None, out);
                }
            }
        }
    }

    fn push_flattened(&self, value: &'a Json, slot: Option<Slot>, out: &mut Vec<Node<'a>>) {
        let typed = |value: &'a Json| Node {
            value,
            ty: slot.and_then(|slot| self.model.slot_type(slot, value)),
        };
        match value {
            Json::Null => {}
            Json::Array(items) => {
                out.extend(
                    items
                        .iter()
                        .filter(|item| !matches!(item, Json::Null | Json::Array(_)))
                        .map(typed),
                );
            }
            single => out.push(typed(single)),
        }
    }

    /// The resource type a Reference points to, as far as it can be told without fetching it.
    fn resolve_type(&self, node: &Node<'a>) -> Option<TypeId> {
        let object = node.value.as_object()?;
        let model = self.model;
        let by_name = |name: &str| {
            model
                .by_name
                .get(name)
                .copied()
                .filter(|ty| model.info(*ty).is_resource)
        };
        if let Some(reference) = values(object, "reference").next().and_then(Json::as_str) {
            match LiteralReference::parse(reference) {
                LiteralReference::Contained(id) => {
                    let container = self.resource.value.as_object()?;
                    if id.is_empty() {
                        return self.resource.ty;
                    }
                    let contained = values(container, "contained")
                        .next()
                        .and_then(Json::as_array)?;
                    let found = contained.iter().find(|resource| {
                        resource
                            .as_object()
                            .and_then(|o| values(o, "id").next())
                            .and_then(Json::as_str)
                            == Some(id)
                    })?;
                    return model.resource_type_of(found);
                }
                LiteralReference::Relative { resource_type, .. }
                | LiteralReference::Absolute {
                    resource_type: Some(resource_type),
                    ..
                } => {
                    return by_name(resource_type);
                }
                LiteralReference::Absolute {
                    resource_type: None,
                    ..
                }
                | LiteralReference::Other(_) => {}
            }
        }
        let declared = values(object, "type").next().and_then(Json::as_str)?;
        by_name(declared.rsplit('/').next().unwrap_or(declared))
    }
}

/// The values of `object` under `key`. Most FHIR objects are small, and comparing a few
/// keys is cheaper than hashing one.
pub(crate) fn values<'o>(
    object: &'o json_syntax::Object,
    key: &str,
) -> impl Iterator<Item = &'o Json> {
    let entries = object.entries();
    let (small, large) = if entries.len() <= 16 {
        (Some(entries), None)
    } else {
        (None, Some(object.get(key)))
    };
    let small = small
        .into_iter()
        .flatten()
        .filter(move |e| e.key.as_str() == key)
        .map(|e| &e.value);
    small.chain(large.into_iter().flatten())
}

/// Infers the type of each subexpression where it is a single known type, and records it
/// in the member steps. Returns the type of `expr` given the type of `$this`.
fn annotate(expr: &mut Expr, this: Option<TypeId>, model: &'static Model) -> Option<TypeId> {
    match expr {
        Expr::This => this,
        Expr::Resource | Expr::Empty | Expr::Resolve(..) => None,
        Expr::Literal(_, ty) => Some(*ty),
        Expr::Member(receiver, name, hint) => {
            let receiver_type = annotate(receiver, this, model)?;
            let child = model.info(receiver_type).children.get(name.as_ref())?;
            *hint = Some((receiver_type, child));
            match child {
                Child::Single(Slot::Typed(ty)) => Some(*ty),
                Child::Single(Slot::AnyResource) | Child::Choice(_) => None,
            }
        }
        Expr::OfType(receiver, target) => {
            annotate(receiver, this, model);
            match target {
                TypeTarget::Fhir(ty) => Some(*ty),
                TypeTarget::System(_) | TypeTarget::Unreachable => None,
            }
        }
        Expr::Where(receiver, criteria) => {
            let receiver_type = annotate(receiver, this, model);
            annotate(criteria, receiver_type, model);
            receiver_type
        }
        Expr::Exists(receiver, criteria) => {
            let receiver_type = annotate(receiver, this, model);
            if let Some(criteria) = criteria {
                annotate(criteria, receiver_type, model);
            }
            Some(model.boolean)
        }
        Expr::Is(receiver, _) | Expr::ResolveIs(receiver, _) | Expr::IsEmpty(receiver) => {
            annotate(receiver, this, model);
            Some(model.boolean)
        }
        Expr::Index(receiver, _) => annotate(receiver, this, model),
        Expr::Extension(receiver, _) => {
            annotate(receiver, this, model);
            model.by_name.get("Extension").copied()
        }
        Expr::Union(branches) => {
            let types: Vec<Option<TypeId>> = branches
                .iter_mut()
                .map(|b| annotate(b, this, model))
                .collect();
            let first = *types.first()?;
            types.iter().all(|t| *t == first).then_some(first).flatten()
        }
        Expr::Equals(left, right, _) | Expr::And(left, right) | Expr::Or(left, right) => {
            annotate(left, this, model);
            annotate(right, this, model);
            Some(model.boolean)
        }
    }
}

/// FHIRPath singleton evaluation of a collection as a boolean: empty (or several items) is
/// unknown, a single boolean is itself, any other single item is true.
fn singleton_boolean(items: &[Node<'_>]) -> Option<bool> {
    match items {
        [node] => Some(node.value.as_boolean().unwrap_or(true)),
        _ => None,
    }
}

fn json_equal(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => {
            x.as_str() == y.as_str() || x.as_str().parse::<f64>().ok() == Some(y.as_f64_lossy())
        }
        _ => a == b,
    }
}

/// The parts of a literal reference string (`Reference.reference`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LiteralReference<'a> {
    /// `#id`: a resource contained in the referring resource (`#` alone: the container).
    Contained(&'a str),
    /// `Patient/123` or `Patient/123/_history/2`.
    Relative {
        resource_type: &'a str,
        id: &'a str,
        version: Option<&'a str>,
    },
    /// A URL; its type and id when the path ends like a RESTful reference.
    Absolute {
        resource_type: Option<&'a str>,
        id: Option<&'a str>,
        version: Option<&'a str>,
    },
    /// Anything else (`urn:uuid:...`, `urn:oid:...`, malformed text).
    Other(&'a str),
}

impl<'a> LiteralReference<'a> {
    pub(crate) fn parse(text: &'a str) -> LiteralReference<'a> {
        if let Some(id) = text.strip_prefix('#') {
            return LiteralReference::Contained(id);
        }
        let is_absolute = text.contains("://");
        let path = if is_absolute {
            text.split(['?', '#']).next().unwrap_or(text)
        } else {
            text
        };
        let mut segments = path.rsplit('/');
        let last = segments.next().unwrap_or_default();
        let (version, id, resource_type) = match segments.next() {
            Some("_history") if !last.is_empty() => (Some(last), segments.next(), segments.next()),
            second => (None, Some(last), second),
        };
        let nothing_before = segments.next().is_none();
        let restful = match (resource_type, id) {
            (Some(resource_type), Some(id))
                if Definitions::r4().is_resource_type(resource_type) && is_fhir_id(id) =>
            {
                Some((resource_type, id))
            }
            _ => None,
        };
        match (is_absolute, restful) {
            (true, restful) => LiteralReference::Absolute {
                resource_type: restful.map(|(t, _)| t),
                id: restful.map(|(_, id)| id),
                version: restful.and(version),
            },
            (false, Some((resource_type, id))) if nothing_before => LiteralReference::Relative {
                resource_type,
                id,
                version,
            },
            (false, _) => LiteralReference::Other(text),
        }
    }
}

/// Whether `text` is a valid FHIR `id` (`[A-Za-z0-9\-\.]{1,64}`).
pub(crate) fn is_fhir_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

// ---------------------------------------------------------------------------------------
// Lexer and parser.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    Identifier(String),
    /// A backtick-delimited identifier: never a keyword.
    Quoted(String),
    String(String),
    Number(String),
    Symbol(&'static str),
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenKind::Identifier(name) => write!(f, "identifier `{name}`"),
            TokenKind::Quoted(name) => write!(f, "identifier `{name}`"),
            TokenKind::String(text) => write!(f, "string '{text}'"),
            TokenKind::Number(text) => write!(f, "number {text}"),
            TokenKind::Symbol(symbol) => write!(f, "`{symbol}`"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: TokenKind,
    offset: usize,
}

fn tokenize(text: &str) -> Result<Vec<Token>, ParseError> {
    let error = |offset: usize, message: String| ParseError {
        expression: text.to_owned(),
        offset,
        message,
    };
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        let offset = index;
        let byte = bytes[index];
        let kind = match byte {
            b' ' | b'\t' | b'\r' | b'\n' => {
                index += 1;
                continue;
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'_' | b'$' | b'%' => {
                // `$this` and `%resource` are lexed as identifiers with their sigil
                index += 1;
                while index < bytes.len()
                    && (bytes[index].is_ascii_alphanumeric() || bytes[index] == b'_')
                {
                    index += 1;
                }
                TokenKind::Identifier(text[offset..index].to_owned())
            }
            b'0'..=b'9' => {
                while index < bytes.len() && bytes[index].is_ascii_digit() {
                    index += 1;
                }
                if index + 1 < bytes.len()
                    && bytes[index] == b'.'
                    && bytes[index + 1].is_ascii_digit()
                {
                    index += 1;
                    while index < bytes.len() && bytes[index].is_ascii_digit() {
                        index += 1;
                    }
                }
                TokenKind::Number(text[offset..index].to_owned())
            }
            b'\'' | b'`' => {
                let (value, end) =
                    lex_quoted(text, index).map_err(|message| error(offset, message))?;
                index = end;
                if byte == b'\'' {
                    TokenKind::String(value)
                } else {
                    TokenKind::Quoted(value)
                }
            }
            _ => {
                const SYMBOLS: [&str; 22] = [
                    "!=", "!~", "<=", ">=", ".", "(", ")", "[", "]", "{", "}", "|", "=", ",", "<",
                    ">", "~", "+", "-", "*", "/", "&",
                ];
                let Some(symbol) = SYMBOLS.iter().find(|s| text[index..].starts_with(**s)) else {
                    let unexpected = text[index..].chars().next().unwrap_or('?');
                    return Err(error(
                        offset,
                        format!("unexpected character {unexpected:?}"),
                    ));
                };
                index += symbol.len();
                TokenKind::Symbol(symbol)
            }
        };
        tokens.push(Token { kind, offset });
    }
    Ok(tokens)
}

/// Lexes a `'string'` or `` `identifier` `` starting at `start`; returns it unescaped and the
/// offset after the closing quote.
fn lex_quoted(text: &str, start: usize) -> Result<(String, usize), String> {
    let quote = text[start..].chars().next().unwrap_or('\'');
    let mut value = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((position, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((value, start + 1 + position + 1)),
            '\\' => {
                let escaped = match chars.next() {
                    Some((_, 'n')) => '\n',
                    Some((_, 't')) => '\t',
                    Some((_, 'r')) => '\r',
                    Some((_, 'f')) => '\u{c}',
                    Some((_, 'u')) => {
                        let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                        u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or_else(|| format!("bad unicode escape \\u{hex}"))?
                    }
                    Some((_, other @ ('\'' | '"' | '`' | '\\' | '/'))) => other,
                    Some((_, other)) => return Err(format!("unknown escape \\{other}")),
                    None => break,
                };
                value.push(escaped);
            }
            c => value.push(c),
        }
    }
    Err("unterminated quoted text".to_owned())
}

struct Parser<'t> {
    text: &'t str,
    tokens: Vec<Token>,
    position: usize,
    model: &'static Model,
}

type Parsed<T> = Result<T, ParseError>;

impl Parser<'_> {
    fn error_at(&self, offset: usize, message: String) -> ParseError {
        ParseError {
            expression: self.text.to_owned(),
            offset,
            message,
        }
    }

    fn error_here(&self, message: &str) -> ParseError {
        match self.peek() {
            Some(token) => self.error_at(token.offset, format!("{message}, found {}", token.kind)),
            None => self.error_at(self.text.len(), format!("{message}, found the end")),
        }
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn peek_symbol(&self, symbol: &str) -> bool {
        matches!(self.peek(), Some(Token { kind: TokenKind::Symbol(s), .. }) if *s == symbol)
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Some(Token { kind: TokenKind::Identifier(name), .. }) if name == keyword)
    }

    fn expect_symbol(&mut self, symbol: &str) -> Parsed<()> {
        if self.peek_symbol(symbol) {
            self.position += 1;
            Ok(())
        } else {
            Err(self.error_here(&format!("expected `{symbol}`")))
        }
    }

    fn identifier(&mut self) -> Parsed<(String, usize)> {
        match self.peek().cloned() {
            Some(Token {
                kind: TokenKind::Identifier(name) | TokenKind::Quoted(name),
                offset,
            }) => {
                self.position += 1;
                Ok((name, offset))
            }
            _ => Err(self.error_here("expected an identifier")),
        }
    }

    fn expression(&mut self) -> Parsed<Expr> {
        let mut left = self.and()?;
        while self.peek_keyword("or") {
            self.position += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        if self.peek_keyword("xor") || self.peek_keyword("implies") {
            return Err(self.error_here("unsupported operator"));
        }
        Ok(left)
    }

    fn and(&mut self) -> Parsed<Expr> {
        let mut left = self.equality()?;
        while self.peek_keyword("and") {
            self.position += 1;
            let right = self.equality()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn equality(&mut self) -> Parsed<Expr> {
        let left = self.union()?;
        let negate = if self.peek_symbol("=") {
            false
        } else if self.peek_symbol("!=") {
            true
        } else {
            for unsupported in ["<", ">", "<=", ">=", "~", "!~"] {
                if self.peek_symbol(unsupported) {
                    return Err(self.error_here("unsupported operator"));
                }
            }
            if self.peek_keyword("in") || self.peek_keyword("contains") {
                return Err(self.error_here("unsupported operator"));
            }
            return Ok(left);
        };
        self.position += 1;
        let right = self.union()?;
        Ok(Expr::Equals(Box::new(left), Box::new(right), negate))
    }

    fn union(&mut self) -> Parsed<Expr> {
        let first = self.type_operation()?;
        if !self.peek_symbol("|") {
            return Ok(first);
        }
        let mut branches = vec![first];
        while self.peek_symbol("|") {
            self.position += 1;
            branches.push(self.type_operation()?);
        }
        Ok(Expr::Union(branches))
    }

    fn type_operation(&mut self) -> Parsed<Expr> {
        let mut left = self.postfix()?;
        loop {
            if self.peek_keyword("as") {
                self.position += 1;
                let target = self.type_specifier()?;
                left = Expr::OfType(Box::new(left), target);
            } else if self.peek_keyword("is") {
                self.position += 1;
                let target = self.type_specifier()?;
                left = match left {
                    Expr::Resolve(receiver, _) => Expr::ResolveIs(receiver, target),
                    other => Expr::Is(Box::new(other), target),
                };
            } else {
                for unsupported in ["+", "-", "*", "/", "&"] {
                    if self.peek_symbol(unsupported) {
                        return Err(self.error_here("unsupported operator"));
                    }
                }
                if self.peek_keyword("div") || self.peek_keyword("mod") {
                    return Err(self.error_here("unsupported operator"));
                }
                return Ok(left);
            }
        }
    }

    fn type_specifier(&mut self) -> Parsed<TypeTarget> {
        let (first, offset) = self.identifier()?;
        let (namespace, name) = if self.peek_symbol(".") {
            self.position += 1;
            let (name, _) = self.identifier()?;
            (Some(first), name)
        } else {
            (None, first)
        };
        let fhir = || match self.model.by_name.get(name.as_str()) {
            Some(ty) => Some(TypeTarget::Fhir(*ty)),
            None => Definitions::r4()
                .type_definition(&name)
                .map(|_| TypeTarget::Unreachable),
        };
        let system = || SystemType::from_name(&name).map(TypeTarget::System);
        let target = match namespace.as_deref() {
            None => fhir().or_else(system),
            Some("FHIR") => fhir(),
            Some("System") => system(),
            Some(_) => None,
        };
        target.ok_or_else(|| self.error_at(offset, format!("unknown type `{name}`")))
    }

    fn postfix(&mut self) -> Parsed<Expr> {
        let mut expr = self.term()?;
        loop {
            if self.peek_symbol(".") {
                self.position += 1;
                expr = self.invocation(expr)?;
            } else if self.peek_symbol("[") {
                self.position += 1;
                let index = match self.peek().cloned() {
                    Some(Token {
                        kind: TokenKind::Number(digits),
                        offset,
                    }) => digits.parse::<usize>().map_err(|_| {
                        self.error_at(offset, "the indexer takes an integer".to_owned())
                    })?,
                    _ => {
                        return Err(self.error_here(
                            "expected an integer index (only literal indexes are supported)",
                        ));
                    }
                };
                self.position += 1;
                self.expect_symbol("]")?;
                expr = Expr::Index(Box::new(expr), index);
            } else {
                return Ok(expr);
            }
        }
    }

    fn term(&mut self) -> Parsed<Expr> {
        let Some(token) = self.peek().cloned() else {
            return Err(self.error_here("expected an expression"));
        };
        match token.kind {
            TokenKind::Symbol("(") => {
                self.position += 1;
                let inner = self.expression()?;
                self.expect_symbol(")")?;
                Ok(inner)
            }
            TokenKind::Symbol("{") => {
                self.position += 1;
                self.expect_symbol("}")?;
                Ok(Expr::Empty)
            }
            TokenKind::String(text) => {
                self.position += 1;
                Ok(Expr::Literal(
                    Json::String(text.as_str().into()),
                    self.model.string,
                ))
            }
            TokenKind::Number(digits) => {
                self.position += 1;
                let ty = if digits.contains('.') {
                    self.model.decimal
                } else {
                    self.model.integer
                };
                let value = <Json as json_syntax::Parse>::parse_str(&digits)
                    .map_err(|_| self.error_at(token.offset, format!("bad number {digits}")))?
                    .0;
                Ok(Expr::Literal(value, ty))
            }
            TokenKind::Identifier(name) if name == "true" || name == "false" => {
                self.position += 1;
                Ok(Expr::Literal(
                    Json::Boolean(name == "true"),
                    self.model.boolean,
                ))
            }
            TokenKind::Identifier(name) if name == "$this" => {
                self.position += 1;
                Ok(Expr::This)
            }
            TokenKind::Identifier(name) if name == "%resource" => {
                self.position += 1;
                Ok(Expr::Resource)
            }
            TokenKind::Identifier(name) if name.starts_with(['$', '%']) => {
                Err(self.error_at(token.offset, format!("unsupported variable {name}")))
            }
            TokenKind::Identifier(name)
                if matches!(
                    name.as_str(),
                    "and" | "or" | "as" | "is" | "xor" | "implies"
                ) =>
            {
                Err(self.error_at(
                    token.offset,
                    format!("expected an expression, found keyword `{name}`"),
                ))
            }
            TokenKind::Identifier(name) | TokenKind::Quoted(name) => {
                // A leading type name filters the context: `Observation.code`, `Resource.id`.
                let leading_type = match self.model.by_name.get(name.as_str()) {
                    Some(ty) if self.model.info(*ty).is_resource && !self.peek_call_follows() => {
                        Some(*ty)
                    }
                    _ => None,
                };
                if let Some(ty) = leading_type {
                    self.position += 1;
                    return Ok(Expr::OfType(Box::new(Expr::This), TypeTarget::Fhir(ty)));
                }
                self.invocation(Expr::This)
            }
            other => Err(self.error_at(
                token.offset,
                format!("expected an expression, found {other}"),
            )),
        }
    }

    fn peek_call_follows(&self) -> bool {
        matches!(
            self.tokens.get(self.position + 1),
            Some(Token {
                kind: TokenKind::Symbol("("),
                ..
            })
        )
    }

    /// A member or a function call on `receiver`.
    fn invocation(&mut self, receiver: Expr) -> Parsed<Expr> {
        let (name, offset) = self.identifier()?;
        if !self.peek_symbol("(") {
            return Ok(Expr::Member(Box::new(receiver), name.into(), None));
        }
        self.position += 1;
        let receiver = Box::new(receiver);
        let expr = match name.as_str() {
            "where" => Expr::Where(receiver, Box::new(self.expression()?)),
            "exists" if self.peek_symbol(")") => Expr::Exists(receiver, None),
            "exists" => Expr::Exists(receiver, Some(Box::new(self.expression()?))),
            "empty" => Expr::IsEmpty(receiver),
            "first" => Expr::Index(receiver, 0),
            "as" | "ofType" => Expr::OfType(receiver, self.type_specifier()?),
            "is" => match *receiver {
                Expr::Resolve(inner, _) => Expr::ResolveIs(inner, self.type_specifier()?),
                other => Expr::Is(Box::new(other), self.type_specifier()?),
            },
            "resolve" => Expr::Resolve(receiver, offset),
            "extension" => match self.peek().cloned() {
                Some(Token {
                    kind: TokenKind::String(url),
                    ..
                }) => {
                    self.position += 1;
                    Expr::Extension(receiver, url.into())
                }
                _ => return Err(self.error_here("extension() takes a string literal url")),
            },
            _ => return Err(self.error_at(offset, format!("unsupported function {name}()"))),
        };
        self.expect_symbol(")")?;
        Ok(expr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Json {
        <Json as json_syntax::Parse>::parse_str(text)
            .expect("test json parses")
            .0
    }

    fn strings(nodes: &[Node<'_>]) -> Vec<String> {
        nodes
            .iter()
            .map(|n| match n.value() {
                Json::String(s) => s.to_string(),
                other => other.to_string(),
            })
            .collect()
    }

    /// Every construct the R4 search parameter expressions use, and where.
    #[test]
    fn parses_every_search_parameter_expression() {
        #[derive(serde::Deserialize)]
        struct Raw {
            code: String,
            base: String,
            expression: Option<String>,
            #[serde(default)]
            component: Vec<RawComponent>,
        }
        #[derive(serde::Deserialize)]
        struct RawComponent {
            expression: String,
        }
        let raw: Vec<Raw> =
            serde_json::from_str(include_str!("../r4/search-parameters.json")).expect("json");
        let mut count = 0;
        for parameter in &raw {
            let expressions = parameter
                .expression
                .iter()
                .map(String::as_str)
                .chain(parameter.component.iter().map(|c| c.expression.as_str()));
            for text in expressions {
                if let Err(error) = Expression::parse(text) {
                    panic!(
                        "{}.{}: expected `{text}` to parse: {error}",
                        parameter.base, parameter.code
                    );
                }
                count += 1;
            }
        }
        assert!(
            count > 1700,
            "expected every expression to be checked, saw {count}"
        );

        // the constructs, each with an expression from the R4 data that uses it
        let constructs = [
            ("member path", "Patient.name.family"),
            ("leading Resource type", "Resource.meta.lastUpdated"),
            (
                "union",
                "AllergyIntolerance.code | AllergyIntolerance.reaction.substance",
            ),
            (
                "parentheses and `as`",
                "(Observation.value as CodeableConcept).text",
            ),
            (
                "function as()",
                "Condition.onset.as(Age) | Condition.onset.as(Range)",
            ),
            ("System type", "value.as(DateTime) | value.as(Period)"),
            (
                "where with equality",
                "Patient.telecom.where(system='phone')",
            ),
            (
                "where resolve() is",
                "Observation.subject.where(resolve() is Patient)",
            ),
            (
                "exists, and, !=, boolean literal",
                "Patient.deceased.exists() and Patient.deceased != false",
            ),
            ("indexer", "Bundle.entry[0].resource"),
            ("%resource", "%resource.referenceSeq.chromosome"),
            (
                "lower-case primitive type",
                "(Group.characteristic.value as boolean)",
            ),
        ];
        for (construct, text) in constructs {
            let used = raw.iter().any(|p| {
                p.expression.as_deref().is_some_and(|e| e.contains(text))
                    || p.component.iter().any(|c| c.expression.contains(text))
            });
            assert!(
                used,
                "{construct}: expected `{text}` to occur in search-parameters.json"
            );
            assert!(
                Expression::parse(text).is_ok(),
                "{construct}: expected `{text}` to parse"
            );
        }
    }

    #[test]
    fn unsupported_constructs_are_parse_errors() {
        let cases = [
            ("Observation.value > 5", "ordering comparison"),
            ("Patient.name.count()", "unknown function"),
            (
                "Observation.subject.resolve()",
                "resolve() outside `resolve() is Type`",
            ),
            (
                "Observation.subject.resolve().name",
                "navigating into a resolved resource",
            ),
            ("Observation.value as Quantityy", "unknown type"),
            ("Patient.name[Patient.x]", "non-literal index"),
            ("Patient.name + 'x'", "arithmetic"),
            ("%context.name", "unsupported variable"),
            ("Patient.name.", "trailing dot"),
            (
                "Patient.telecom.where(system='phone'",
                "unclosed parenthesis",
            ),
            ("'unterminated", "unterminated string"),
            ("Patient.name implies Patient.id", "implies"),
        ];
        for (text, what) in cases {
            assert!(
                Expression::parse(text).is_err(),
                "expected a parse error for {what}: `{text}`"
            );
        }
    }

    #[test]
    fn choice_elements_are_typed_by_their_suffix() {
        let observation = json(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},
                "valueQuantity":{"value":1.50,"unit":"mg"},
                "component":[{"code":{"text":"a"},"valueString":"high"},{"code":{"text":"b"},"valueQuantity":{"value":2}}]}"#,
        );
        let cases: [(&str, &[&str]); 6] = [
            ("Observation.value", &["Quantity"]),
            ("Observation.value as Quantity", &["Quantity"]),
            ("Observation.value as CodeableConcept", &[]),
            ("Observation.component.value", &["string", "Quantity"]),
            (
                "(Observation.component.value as Quantity) | (Observation.component.value as string)",
                &["Quantity", "string"],
            ),
            ("Observation.code", &["CodeableConcept"]),
        ];
        for (text, expected) in cases {
            let expression = Expression::parse(text).expect("parses");
            let types: Vec<_> = expression
                .evaluate(&observation)
                .iter()
                .map(|n| n.type_name().unwrap_or("?"))
                .collect();
            assert_eq!(types, expected, "types of `{text}`");
        }
        let age = json(r#"{"resourceType":"Condition","onsetAge":{"value":40,"unit":"a"}}"#);
        let as_quantity = Expression::parse("Condition.onset.as(Quantity)").expect("parses");
        let nodes = as_quantity.evaluate(&age);
        assert_eq!(nodes.len(), 1, "an Age is a Quantity for `as`");
        assert_eq!(nodes[0].type_name(), Some("Age"));
        assert!(nodes[0].is_a("Quantity") && !nodes[0].is_a("Range"));
    }

    #[test]
    fn where_equality_and_boolean_logic() {
        let patient = json(
            r#"{"resourceType":"Patient","id":"p1","telecom":[{"system":"phone","value":"555"},{"system":"email","value":"a@b.c"}],
                "name":[{"given":["Ann","Marie"],"family":"Smith"}]}"#,
        );
        let cases: [(&str, &[&str]); 8] = [
            ("Patient.telecom.where(system='phone').value", &["555"]),
            ("Patient.telecom.where(system = 'email').value", &["a@b.c"]),
            ("Patient.name.given", &["Ann", "Marie"]),
            ("Patient.name.given[1]", &["Marie"]),
            (
                "Patient.deceased.exists() and Patient.deceased != false",
                &["false"],
            ),
            ("Patient.telecom.exists()", &["true"]),
            ("Patient.name.given | Patient.name.given", &["Ann", "Marie"]),
            ("Observation.code", &[]),
        ];
        for (text, expected) in cases {
            let expression = Expression::parse(text).expect("parses");
            assert_eq!(
                strings(&expression.evaluate(&patient)),
                expected,
                "result of `{text}`"
            );
        }
        let deceased = json(r#"{"resourceType":"Patient","deceasedDateTime":"2020-01-01"}"#);
        let expression =
            Expression::parse("Patient.deceased.exists() and Patient.deceased != false")
                .expect("parses");
        assert_eq!(
            strings(&expression.evaluate(&deceased)),
            ["true"],
            "a deceasedDateTime means deceased"
        );
        let alive = json(r#"{"resourceType":"Patient","deceasedBoolean":false}"#);
        assert_eq!(
            strings(&expression.evaluate(&alive)),
            ["false"],
            "deceasedBoolean false means not deceased"
        );
    }

    #[test]
    fn type_functions_and_logic_beyond_the_r4_expressions() {
        let condition = json(
            r#"{"resourceType":"Condition","id":"c","onsetPeriod":{"start":"2020"},
                "code":{"coding":[{"code":"a"},{"code":"b"}]}}"#,
        );
        let cases: [(&str, &[&str]); 9] = [
            ("Condition.onset.ofType(Period).start", &["2020"]),
            ("Condition.onset.ofType(FHIR.Period).start", &["2020"]),
            ("Condition.onset.is(Period)", &["true"]),
            ("Condition.onset is Age", &["false"]),
            ("Condition.onset.start.is(System.String)", &["false"]),
            ("Condition.onset.start.as(dateTime)", &["2020"]),
            (
                "Condition.abatement.empty() or Condition.abatement.exists()",
                &["true"],
            ),
            ("Condition.code.coding.exists(code = 'b')", &["true"]),
            ("Condition.code.coding.first().code | {}", &["a"]),
        ];
        for (text, expected) in cases {
            let expression = Expression::parse(text).expect("parses");
            assert_eq!(
                strings(&expression.evaluate(&condition)),
                expected,
                "result of `{text}`"
            );
        }
    }

    #[test]
    fn resolve_is_decided_from_the_reference() {
        let expression =
            Expression::parse("Observation.subject.where(resolve() is Patient)").expect("parses");
        let cases = [
            (
                r#"{"reference":"Patient/123"}"#,
                true,
                "relative Patient reference",
            ),
            (
                r#"{"reference":"Patient/123/_history/4"}"#,
                true,
                "versioned relative reference",
            ),
            (r#"{"reference":"Group/7"}"#, false, "Group reference"),
            (
                r#"{"reference":"http://example.org/fhir/Patient/9"}"#,
                true,
                "absolute Patient URL",
            ),
            (
                r#"{"reference":"http://example.org/fhir/Group/9"}"#,
                false,
                "absolute Group URL",
            ),
            (
                r#"{"reference":"urn:uuid:8e2b0a2c-1b5b-4a8e-9a6b-7d6a0e8f9c11","type":"Patient"}"#,
                true,
                "urn with type",
            ),
            (
                r#"{"identifier":{"value":"x"},"type":"Group"}"#,
                false,
                "identifier with type Group",
            ),
            (r##"{"reference":"#p"}"##, true, "contained Patient"),
            (r##"{"reference":"#g"}"##, false, "contained Group"),
            (r#"{"display":"someone"}"#, false, "display only"),
        ];
        for (subject, expected, what) in cases {
            let observation = json(&format!(
                r#"{{"resourceType":"Observation","contained":[{{"resourceType":"Patient","id":"p"}},{{"resourceType":"Group","id":"g"}}],"subject":{subject}}}"#
            ));
            let matched = !expression.evaluate(&observation).is_empty();
            assert_eq!(
                matched, expected,
                "{what}: expected resolve() is Patient to be {expected}"
            );
        }
    }

    #[test]
    fn literal_references_are_split() {
        let cases = [
            (
                "Patient/1",
                LiteralReference::Relative {
                    resource_type: "Patient",
                    id: "1",
                    version: None,
                },
            ),
            (
                "Patient/1/_history/2",
                LiteralReference::Relative {
                    resource_type: "Patient",
                    id: "1",
                    version: Some("2"),
                },
            ),
            ("#c1", LiteralReference::Contained("c1")),
            (
                "https://x.org/fhir/Patient/1",
                LiteralReference::Absolute {
                    resource_type: Some("Patient"),
                    id: Some("1"),
                    version: None,
                },
            ),
            ("urn:uuid:1234", LiteralReference::Other("urn:uuid:1234")),
            ("Nope/1", LiteralReference::Other("Nope/1")),
            ("a/Patient/1", LiteralReference::Other("a/Patient/1")),
        ];
        for (text, expected) in cases {
            assert_eq!(LiteralReference::parse(text), expected, "parts of {text:?}");
        }
    }

    #[test]
    fn selected_nodes_are_located_in_the_resource() {
        let resource = json(
            r#"{"resourceType":"Patient","name":[{"given":["Ann","Ann"]},{"family":"Ann","given":[null,"Bo"],"_given":[{"id":"x"},null]}],
                "a/b~c":"odd","contained":[{"resourceType":"Observation","valueQuantity":{"value":1.50}}]}"#,
        );
        let cases: [(&str, &[Option<&str>]); 9] = [
            ("Patient.name.given[1]", &[Some("/name/0/given/1")]),
            (
                "Patient.name.given",
                &[
                    Some("/name/0/given/0"),
                    Some("/name/0/given/1"),
                    Some("/name/1/given/1"),
                ],
            ),
            ("Patient.name[1].family", &[Some("/name/1/family")]),
            ("Patient", &[Some("")]),
            (
                "Patient.contained.value",
                &[Some("/contained/0/valueQuantity")],
            ),
            (
                "Patient.name.where(family = 'Ann') | Patient.name.first()",
                &[Some("/name/1"), Some("/name/0")],
            ),
            ("Patient.name.exists()", &[None]),
            ("'Ann'", &[None]),
            ("Patient.`a/b~c`", &[Some("/a~1b~0c")]),
        ];
        for (text, expected) in cases {
            let expression = Expression::parse(text).expect("parses");
            let selected = expression.select(&resource);
            let locations: Vec<Option<String>> = selected
                .iter()
                .map(|(_, location)| location.as_ref().map(ToString::to_string))
                .collect();
            let expected: Vec<Option<String>> =
                expected.iter().map(|e| e.map(str::to_owned)).collect();
            assert_eq!(locations, expected, "locations of `{text}`");
            for (node, location) in &selected {
                if let Some(location) = location {
                    assert!(
                        location
                            .resolve(&resource)
                            .is_some_and(|value| std::ptr::eq(value, node.value())),
                        "`{text}`: {location} leads back to the node"
                    );
                }
            }
        }
    }

    #[test]
    fn the_parent_of_a_member_step_is_evaluated() {
        let resource = json(r#"{"resourceType":"Patient","name":[{"family":"A"},{"family":"B"}]}"#);
        let identifier = Expression::parse("Patient.identifier").expect("parses");
        let (parents, name) = identifier
            .evaluate_parent(&resource)
            .expect("ends in a member step");
        assert_eq!(name, "identifier");
        assert_eq!(
            parents.iter().map(|n| n.type_name()).collect::<Vec<_>>(),
            [Some("Patient")],
            "an empty list is found through its holder"
        );
        let given = Expression::parse("Patient.name[1].given").expect("parses");
        let (parents, name) = given.evaluate_parent(&resource).expect("member step");
        assert_eq!((parents.len(), name), (1, "given"));
        assert_eq!(
            locate(&resource, &parents)[0]
                .as_ref()
                .map(ToString::to_string),
            Some("/name/1".to_owned())
        );
        for text in ["Patient.name.first()", "Patient.name[0]", "Patient", "'x'"] {
            let expression = Expression::parse(text).expect("parses");
            assert!(
                expression.evaluate_parent(&resource).is_none(),
                "`{text}` does not end in a member step"
            );
        }
    }

    #[test]
    fn extension_and_percent_resource() {
        let resource = json(
            r#"{"resourceType":"Patient","id":"p","extension":[{"url":"http://a","valueString":"A"},{"url":"http://b","valueCode":"B"}],
                "contact":[{"gender":"male"}]}"#,
        );
        let extension = Expression::parse("Patient.extension('http://b').value").expect("parses");
        assert_eq!(
            strings(&extension.evaluate(&resource)),
            ["B"],
            "extension('url') selects by url"
        );
        let root = Node::resource(&resource);
        let contacts = Expression::parse("Patient.contact").expect("parses");
        let contact = contacts.evaluate(&resource)[0];
        let relative = Expression::parse("gender | %resource.id").expect("parses");
        let mut out = Vec::new();
        relative.evaluate_into(root, contact, &mut out);
        assert_eq!(strings(&out), ["male", "p"], "relative path and %resource");
    }
}
