//! [FHIRPath Patch](http://hl7.org/fhir/R4/fhirpatch.html): changes to a resource written as
//! a `Parameters` resource whose `operation` parameters add, insert, delete, replace and
//! move elements named by FHIRPath expressions.
//!
//! [`FhirPatch::parse`] reads the Parameters ([`PatchError::Malformed`] when it is not a
//! FHIRPath Patch); [`FhirPatch::apply`] applies the operations, in order, to a resource held
//! as [`Json`], so that whatever the patch does not touch stays exactly as written, number
//! literals included ([`PatchError::Unprocessable`] when an operation does not fit the
//! resource). Whether the result is a valid resource is for the caller to check.
//!
//! # Rules
//!
//! From the specification:
//! - each path is evaluated on the result of the previous operation;
//! - a path must select exactly one element of the resource; only `delete` accepts a path
//!   that selects nothing (and then does nothing);
//! - `add` appends to a repeating element, and sets a single-valued element only when it is
//!   absent;
//! - `insert` and `move` name a list by a path that ends in the list's element name
//!   (`Patient.identifier`); what precedes that name must select exactly one element. An
//!   `index` may be at most the list's length; `move` takes the item out at `source` and puts
//!   it back at `destination`, both less than the length;
//! - the value must fit the element: `value[x]` of the element's type or of a type derived
//!   from it (a primitive may take any primitive of the same JSON kind, so a `valueString`
//!   can set a `code`), `part`s naming the elements of a complex or inline (backbone) value,
//!   or `resource` for an element that holds a resource (`contained`).
//!
//! How that maps to JSON:
//! - a choice element is written under the name its value's type gives (`deceasedBoolean`);
//! - a primitive's `_name` sibling (its id and extensions) travels with it: it is deleted,
//!   replaced and moved with the value, and a value parameter's `_value[x]` becomes it;
//! - an object or array that a delete leaves empty is removed as well, since FHIR JSON has
//!   no empty objects or arrays.
//!
//! Paths are the FHIRPath subset of [`crate::fhirpath`]; `resolve()` is not among it, so a
//! patch cannot reach into another resource (a contained one is reached through
//! `contained`). That subset does not navigate a primitive's `_name` sibling, so a path
//! cannot name the extensions of a primitive (they can still be set with its value).

use json_syntax::Object;

use crate::Json;
use crate::definitions::{Definitions, TypeKind};
use crate::fhirpath::{Child, Expression, Location, Model, Slot, Step, TypeId, capitalize};

/// Why a patch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The Parameters resource is not a well-formed FHIRPath Patch.
    #[error("{0}")]
    Malformed(String),
    /// An operation cannot be applied to the resource as it is.
    #[error("{0}")]
    Unprocessable(String),
}

/// A parsed FHIRPath Patch: its operations in order.
#[derive(Debug)]
pub struct FhirPatch {
    operations: Vec<Operation>,
}

#[derive(Debug)]
struct Operation {
    /// The index of the `operation` parameter, for messages.
    position: usize,
    path: Expression,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Add { name: String, value: NewValue },
    Insert { index: usize, value: NewValue },
    Delete,
    Replace { value: NewValue },
    Move { source: usize, destination: usize },
}

impl Kind {
    fn code(&self) -> &'static str {
        match self {
            Kind::Add { .. } => "add",
            Kind::Insert { .. } => "insert",
            Kind::Delete => "delete",
            Kind::Replace { .. } => "replace",
            Kind::Move { .. } => "move",
        }
    }
}

/// A value carried by the patch.
#[derive(Debug, Clone)]
enum NewValue {
    /// `value[x]`: a data type value; for a primitive, with its `_value[x]` sibling.
    Typed {
        type_name: String,
        value: Json,
        extension: Option<Json>,
    },
    /// `resource`: a resource, for an element that holds one (`contained`).
    Resource(Json),
    /// `part`s: the elements of a complex or inline value, each by its name.
    Parts(Vec<(String, NewValue)>),
}

// ---------------------------------------------------------------------------------------
// Reading the Parameters.
// ---------------------------------------------------------------------------------------

fn member<'a>(object: &'a Object, key: &str) -> Option<&'a Json> {
    object.get(key).next()
}

impl FhirPatch {
    /// Reads a FHIRPath Patch from a `Parameters` resource.
    ///
    /// The Parameters should already have passed validation; this checks what makes it a
    /// patch: every parameter is an `operation` whose parts fit its `type`.
    pub fn parse(parameters: &Json) -> Result<FhirPatch, PatchError> {
        let malformed = |message: &str| PatchError::Malformed(message.to_owned());
        let object = parameters
            .as_object()
            .ok_or_else(|| malformed("a FHIRPath Patch is a Parameters resource"))?;
        if member(object, "resourceType").and_then(Json::as_str) != Some("Parameters") {
            return Err(malformed("a FHIRPath Patch is a Parameters resource"));
        }
        let parameters = match member(object, "parameter") {
            None => &[][..],
            Some(Json::Array(items)) => items.as_slice(),
            Some(_) => return Err(malformed("Parameters.parameter must be an array")),
        };
        let operations = parameters
            .iter()
            .enumerate()
            .map(|(position, parameter)| {
                Operation::parse(position, parameter).map_err(|message| {
                    PatchError::Malformed(format!("Parameters.parameter[{position}]: {message}"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(FhirPatch { operations })
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    /// Whether the patch has no operations (it then changes nothing).
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// Applies the operations in order. On an error the resource may be partly patched and
    /// should be dropped.
    pub fn apply(&self, resource: &mut Json) -> Result<(), PatchError> {
        for operation in &self.operations {
            operation.apply(resource).map_err(|message| {
                PatchError::Unprocessable(format!(
                    "operation {} ({} {}): {message}",
                    operation.position,
                    operation.kind.code(),
                    operation.path.text()
                ))
            })?;
        }
        Ok(())
    }
}

impl Operation {
    fn parse(position: usize, parameter: &Json) -> Result<Operation, String> {
        let parameter = parameter
            .as_object()
            .ok_or("a parameter must be an object")?;
        if member(parameter, "name").and_then(Json::as_str) != Some("operation") {
            return Err("every parameter of a FHIRPath Patch must be named operation".to_owned());
        }
        let parts = match member(parameter, "part") {
            Some(Json::Array(parts)) => parts.as_slice(),
            _ => return Err("an operation needs its parts (type, path, ...)".to_owned()),
        };
        let mut type_code = None;
        let mut path = None;
        let mut name = None;
        let mut value = None;
        let (mut index, mut source, mut destination) = (None, None, None);
        for part in parts {
            let part = part.as_object().ok_or("a part must be an object")?;
            let part_name = member(part, "name")
                .and_then(Json::as_str)
                .ok_or("a part has no name")?;
            let duplicate = match part_name {
                "type" => type_code.replace(primitive(part, "valueCode")?).is_some(),
                "path" => path.replace(primitive(part, "valueString")?).is_some(),
                "name" => name.replace(primitive(part, "valueString")?).is_some(),
                "value" => value.replace(new_value(part)?).is_some(),
                "index" => index.replace(count(part)?).is_some(),
                "source" => source.replace(count(part)?).is_some(),
                "destination" => destination.replace(count(part)?).is_some(),
                other => {
                    return Err(format!(
                        "unknown part {other:?} (expected type, path, name, value, index, source or destination)"
                    ));
                }
            };
            if duplicate {
                return Err(format!("the part {part_name} appears more than once"));
            }
        }
        let type_code = type_code.ok_or("the operation has no type")?;
        let path_text = path.ok_or("the operation has no path")?;
        let path = Expression::parse(path_text).map_err(|e| format!("path: {e}"))?;
        let required = |what: &str, present: bool| {
            if present {
                Ok(())
            } else {
                Err(format!("a {type_code} operation needs a {what}"))
            }
        };
        let unused = |what: &str, present: bool| {
            if present {
                Err(format!("a {type_code} operation takes no {what}"))
            } else {
                Ok(())
            }
        };
        let kind = match type_code {
            "add" => {
                unused("index", index.is_some())?;
                unused("source", source.is_some())?;
                unused("destination", destination.is_some())?;
                Kind::Add {
                    name: name.ok_or("an add operation needs a name")?.to_owned(),
                    value: value.ok_or("an add operation needs a value")?,
                }
            }
            "insert" => {
                unused("name", name.is_some())?;
                unused("source", source.is_some())?;
                unused("destination", destination.is_some())?;
                Kind::Insert {
                    index: index.ok_or("an insert operation needs an index")?,
                    value: value.ok_or("an insert operation needs a value")?,
                }
            }
            "delete" => {
                unused("name", name.is_some())?;
                unused("value", value.is_some())?;
                unused("index", index.is_some())?;
                unused("source", source.is_some())?;
                unused("destination", destination.is_some())?;
                Kind::Delete
            }
            "replace" => {
                unused("name", name.is_some())?;
                unused("index", index.is_some())?;
                unused("source", source.is_some())?;
                unused("destination", destination.is_some())?;
                Kind::Replace {
                    value: value.ok_or("a replace operation needs a value")?,
                }
            }
            "move" => {
                unused("name", name.is_some())?;
                unused("value", value.is_some())?;
                unused("index", index.is_some())?;
                required("source", source.is_some())?;
                required("destination", destination.is_some())?;
                Kind::Move {
                    source: source.unwrap_or_default(),
                    destination: destination.unwrap_or_default(),
                }
            }
            other => {
                return Err(format!(
                    "unknown operation type {other:?} (expected add, insert, delete, replace or move)"
                ));
            }
        };
        Ok(Operation {
            position,
            path,
            kind,
        })
    }
}

/// The string of a part's `value[x]` of the one allowed type (`valueCode`, `valueString`).
fn primitive<'a>(part: &'a Object, key: &str) -> Result<&'a str, String> {
    let name = member(part, "name").and_then(Json::as_str).unwrap_or("");
    member(part, key)
        .and_then(Json::as_str)
        .ok_or_else(|| format!("the part {name} must have a {key}"))
}

/// A part's `valueInteger`, which must not be negative.
fn count(part: &Object) -> Result<usize, String> {
    let name = member(part, "name").and_then(Json::as_str).unwrap_or("");
    let number = member(part, "valueInteger")
        .and_then(Json::as_number)
        .ok_or_else(|| format!("the part {name} must have a valueInteger"))?;
    number
        .as_str()
        .parse::<usize>()
        .map_err(|_| format!("the part {name} must be an integer of 0 or more"))
}

/// The value a parameter or part carries: `value[x]`, `resource` or `part`.
fn new_value(part: &Object) -> Result<NewValue, String> {
    let name = member(part, "name").and_then(Json::as_str).unwrap_or("");
    let mut found = Vec::new();
    for entry in part.entries() {
        let key = entry.key.as_str();
        match key {
            "name" | "id" | "extension" | "modifierExtension" => {}
            "resource" => found.push(NewValue::Resource(entry.value.clone())),
            "part" => {
                let items = entry
                    .value
                    .as_array()
                    .ok_or_else(|| format!("the parts of {name} must be an array"))?;
                let mut parts = Vec::with_capacity(items.len());
                for item in items {
                    let item = item
                        .as_object()
                        .ok_or_else(|| format!("a part of {name} must be an object"))?;
                    let item_name = member(item, "name")
                        .and_then(Json::as_str)
                        .ok_or_else(|| format!("a part of {name} has no name"))?;
                    parts.push((item_name.to_owned(), new_value(item)?));
                }
                if parts.is_empty() {
                    return Err(format!("{name} has an empty list of parts"));
                }
                found.push(NewValue::Parts(parts));
            }
            _ if key.starts_with("_value") => {}
            _ if key.len() > "value".len() && key.starts_with("value") => {
                let type_name = value_type(&key["value".len()..])
                    .ok_or_else(|| format!("{key} does not name a FHIR data type"))?;
                found.push(NewValue::Typed {
                    type_name,
                    value: entry.value.clone(),
                    extension: member(part, &format!("_{key}")).cloned(),
                });
            }
            other => {
                return Err(format!(
                    "the part {name} has an unexpected member {other:?}"
                ));
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!("the part {name} has no value[x], resource or part")),
        _ => Err(format!(
            "the part {name} has more than one value (value[x], resource, part)"
        )),
    }
}

/// The data type a `value[x]` suffix names: `HumanName` for `valueHumanName`, `dateTime`
/// for `valueDateTime`.
fn value_type(suffix: &str) -> Option<String> {
    let defs = Definitions::r4();
    if defs
        .type_definition(suffix)
        .is_some_and(|t| t.kind == TypeKind::ComplexType)
    {
        return Some(suffix.to_owned());
    }
    let mut chars = suffix.chars();
    let primitive: String = chars
        .next()?
        .to_lowercase()
        .chain(chars)
        .collect::<String>();
    defs.type_definition(&primitive)
        .is_some_and(|t| t.kind == TypeKind::PrimitiveType)
        .then_some(primitive)
}

// ---------------------------------------------------------------------------------------
// Applying the operations.
// ---------------------------------------------------------------------------------------

impl Operation {
    fn apply(&self, resource: &mut Json) -> Result<(), String> {
        let model = Model::r4();
        match &self.kind {
            Kind::Delete => {
                let Some(location) = self.at_most_one(resource)? else {
                    return Ok(());
                };
                let site = Site::of(&location)?;
                site.element(model, resource)?;
                site.delete(resource)?;
                prune(resource, &site.holder);
                Ok(())
            }
            Kind::Replace { value } => {
                let location = self.exactly_one(resource)?;
                let site = Site::of(&location)?;
                let (element, _) = site.element(model, resource)?;
                let fitted = fit(model, &element, value)?;
                site.replace(resource, fitted)
            }
            Kind::Add { name, value } => {
                let (location, parent) = self.container(resource)?;
                let element = Element::named(model, parent, name).ok_or_else(|| {
                    format!("a {} has no element {name}", model.info(parent).name)
                })?;
                let fitted = fit(model, &element, value)?;
                let holder = holder_mut(resource, location.steps())?;
                add(holder, &element, fitted)
            }
            Kind::Insert { index, value } => {
                let (holder_steps, element) = self.list(resource)?;
                let fitted = fit(model, &element, value)?;
                let holder = holder_mut(resource, &holder_steps)?;
                insert(holder, element.name, *index, fitted)
            }
            Kind::Move {
                source,
                destination,
            } => {
                let (holder_steps, element) = self.list(resource)?;
                let holder = holder_mut(resource, &holder_steps)?;
                move_item(holder, element.name, *source, *destination)
            }
        }
    }

    /// The location of the single element the path selects, if any.
    fn at_most_one(&self, resource: &Json) -> Result<Option<Location>, String> {
        let mut selected = self.path.select(resource);
        match selected.len() {
            0 => Ok(None),
            1 => match selected.pop() {
                Some((_, Some(location))) => Ok(Some(location)),
                _ => Err("the path does not select an element of the resource".to_owned()),
            },
            n => Err(format!(
                "the path selects {n} elements; it must select at most one"
            )),
        }
    }

    fn exactly_one(&self, resource: &Json) -> Result<Location, String> {
        self.at_most_one(resource)?
            .ok_or_else(|| "the path selects nothing".to_owned())
    }

    /// The single element the path selects, with its type, for `add`.
    fn container(&self, resource: &Json) -> Result<(Location, TypeId), String> {
        let mut selected = self.path.select(resource);
        match selected.len() {
            0 => Err("the path selects nothing".to_owned()),
            1 => match selected.pop() {
                Some((node, Some(location))) if node.value().is_object() => {
                    let ty = node
                        .ty
                        .ok_or("the path selects an element of unknown type")?;
                    Ok((location, ty))
                }
                Some((_, Some(_))) => Err(
                    "the path selects a primitive value, which has no elements to add to"
                        .to_owned(),
                ),
                _ => Err("the path does not select an element of the resource".to_owned()),
            },
            n => Err(format!("the path selects {n} elements; it must select one")),
        }
    }

    /// The list an `insert` or `move` works on: where its holder is, and its element.
    fn list(&self, resource: &Json) -> Result<(Vec<Step>, Element), String> {
        let (holders, name) = self.path.evaluate_parent(resource).ok_or(
            "the path must end in the name of a list element (such as Patient.identifier)",
        )?;
        let holder = match holders.as_slice() {
            [holder] => *holder,
            [] => return Err(format!("nothing holds the list {name}")),
            many => {
                return Err(format!(
                    "the path before {name} selects {} elements; it must select one",
                    many.len()
                ));
            }
        };
        let location = crate::fhirpath::locate(resource, &[holder])
            .pop()
            .flatten()
            .filter(|_| holder.value().is_object())
            .ok_or_else(|| format!("the path before {name} does not select an element"))?;
        let model = Model::r4();
        let ty = holder
            .ty
            .ok_or_else(|| format!("the path before {name} selects an element of unknown type"))?;
        let element = Element::named(model, ty, name)
            .ok_or_else(|| format!("a {} has no element {name}", model.info(ty).name))?;
        if !element.repeating || matches!(element.child, Child::Choice(_)) {
            return Err(format!("{name} is not a list"));
        }
        Ok((location.steps().to_vec(), element))
    }
}

/// An element of a type, as the model and the definitions describe it.
#[derive(Debug, Clone, Copy)]
struct Element {
    /// The FHIRPath name (`deceased` for `deceased[x]`).
    name: &'static str,
    child: &'static Child,
    repeating: bool,
}

impl Element {
    /// The element `name` (a FHIRPath name) of `parent`.
    fn named(model: &'static Model, parent: TypeId, name: &str) -> Option<Element> {
        let (name, child) = model.info(parent).children.get_key_value(name)?;
        Some(Element::new(model, parent, name, child))
    }

    /// The element stored under the JSON `key` of a `parent` object, and the slot of that
    /// key (for a choice element, the slot of the key's type).
    fn of_key(model: &'static Model, parent: TypeId, key: &str) -> Option<(Element, Slot)> {
        let info = model.info(parent);
        if let Some((name, child @ Child::Single(slot))) = info.children.get_key_value(key) {
            return Some((Element::new(model, parent, name, child), *slot));
        }
        info.children.iter().find_map(|(name, child)| {
            let Child::Choice(options) = child else {
                return None;
            };
            let suffix = key.strip_prefix(name.as_ref())?;
            let (_, slot) = options.iter().find(|(s, _)| s.as_ref() == suffix)?;
            Some((Element::new(model, parent, name, child), *slot))
        })
    }

    fn new(model: &Model, parent: TypeId, name: &'static str, child: &'static Child) -> Element {
        let choice = if matches!(child, Child::Choice(_)) {
            "[x]"
        } else {
            ""
        };
        let path = format!("{}.{name}{choice}", model.info(parent).path);
        let repeating = Definitions::r4()
            .element(&path)
            .is_some_and(|e| e.max.is_repeating());
        Element {
            name,
            child,
            repeating,
        }
    }
}

/// Where a selected element sits: the object holding it, its JSON key, and for an item of
/// a list, its position.
#[derive(Debug)]
struct Site {
    holder: Vec<Step>,
    key: Box<str>,
    item: Option<usize>,
}

impl Site {
    fn of(location: &Location) -> Result<Site, String> {
        let steps = location.steps();
        match steps {
            [] => Err("the path selects the resource itself".to_owned()),
            [holder @ .., Step::Member(key), Step::Item(item)] => Ok(Site {
                holder: holder.to_vec(),
                key: key.clone(),
                item: Some(*item),
            }),
            [holder @ .., Step::Member(key)] => Ok(Site {
                holder: holder.to_vec(),
                key: key.clone(),
                item: None,
            }),
            _ => Err(format!("{location} is not an element")),
        }
    }

    /// The element at this site, which must be one the definitions know.
    fn element(&self, model: &'static Model, resource: &Json) -> Result<(Element, Slot), String> {
        let parent = type_at(model, resource, &self.holder)
            .ok_or_else(|| format!("{} is not inside a known FHIR element", self.key))?;
        Element::of_key(model, parent, &self.key).ok_or_else(|| {
            format!(
                "{} is not an element of {}",
                self.key,
                model.info(parent).name
            )
        })
    }

    fn delete(&self, resource: &mut Json) -> Result<(), String> {
        let holder = holder_mut(resource, &self.holder)?;
        let shadow = shadow_key(&self.key);
        match self.item {
            None => {
                holder.remove(self.key.as_ref()).for_each(drop);
                holder.remove(shadow.as_str()).for_each(drop);
            }
            Some(item) => {
                if let Some(items) = array_mut(holder, &self.key)
                    && item < items.len()
                {
                    items.remove(item);
                }
                if let Some(shadows) = array_mut(holder, &shadow)
                    && item < shadows.len()
                {
                    shadows.remove(item);
                }
                tidy_list(holder, &self.key);
            }
        }
        Ok(())
    }

    fn replace(&self, resource: &mut Json, fitted: Fitted) -> Result<(), String> {
        let holder = holder_mut(resource, &self.holder)?;
        match self.item {
            None => {
                let shadow = shadow_key(&self.key);
                let new_shadow = shadow_key(&fitted.key);
                // rebuild the members to keep their order when a choice element changes its key
                let mut replaced = false;
                for entry in std::mem::take(holder) {
                    let key = entry.key.as_str();
                    if key == self.key.as_ref() && !replaced {
                        replaced = true;
                        holder.push(fitted.key.as_str().into(), fitted.value.clone());
                        if let Some(extension) = &fitted.extension {
                            holder.push(new_shadow.as_str().into(), extension.clone());
                        }
                    } else if key != shadow && key != new_shadow {
                        holder.push_entry(entry);
                    }
                }
                if replaced {
                    Ok(())
                } else {
                    Err("the element is no longer there".to_owned())
                }
            }
            Some(item) => {
                let items = array_mut(holder, &self.key)
                    .filter(|items| item < items.len())
                    .ok_or("the element is no longer there")?;
                items[item] = fitted.value;
                set_shadow_item(holder, &self.key, item, fitted.extension, false);
                Ok(())
            }
        }
    }
}

/// A value fitted to an element: the JSON key it goes under, and its JSON and `_` sibling.
#[derive(Debug)]
struct Fitted {
    key: String,
    value: Json,
    extension: Option<Json>,
}

/// Checks that `value` fits `element` and builds its JSON.
fn fit(model: &'static Model, element: &Element, value: &NewValue) -> Result<Fitted, String> {
    let name = element.name;
    match element.child {
        Child::Single(slot) => {
            let (json, extension) = fit_slot(model, *slot, value, name)?;
            Ok(Fitted {
                key: name.to_owned(),
                value: json,
                extension,
            })
        }
        Child::Choice(options) => {
            let NewValue::Typed { type_name, .. } = value else {
                return Err(format!(
                    "{name}[x] is a choice of types: give its value as value[x] so that its type is known"
                ));
            };
            // the type names the JSON key, so a primitive must be one of the choices; a
            // complex value may be of a type derived from one (an Age for a Quantity)
            let wanted = capitalize(type_name);
            let complex = !type_name.starts_with(|c: char| c.is_ascii_lowercase());
            let (suffix, slot) = options
                .iter()
                .find(|(suffix, _)| suffix.as_ref() == wanted)
                .or_else(|| {
                    options.iter().find(|(_, slot)| match slot {
                        Slot::Typed(ty) => complex && fits(model, type_name, *ty),
                        Slot::AnyResource => false,
                    })
                })
                .ok_or_else(|| format!("a {type_name} cannot be the value of {name}[x]"))?;
            let (json, extension) = fit_slot(model, *slot, value, name)?;
            Ok(Fitted {
                key: format!("{name}{suffix}"),
                value: json,
                extension,
            })
        }
    }
}

fn fit_slot(
    model: &'static Model,
    slot: Slot,
    value: &NewValue,
    name: &str,
) -> Result<(Json, Option<Json>), String> {
    match (slot, value) {
        (Slot::AnyResource, NewValue::Resource(resource)) => Ok((resource.clone(), None)),
        (Slot::AnyResource, _) => Err(format!(
            "{name} holds a resource: give it as the resource of the value part"
        )),
        (Slot::Typed(_), NewValue::Resource(_)) => Err(format!("{name} does not hold a resource")),
        (
            Slot::Typed(ty),
            NewValue::Typed {
                type_name,
                value,
                extension,
            },
        ) => {
            if !fits(model, type_name, ty) {
                return Err(format!(
                    "a {type_name} cannot be the value of {name}, which is a {}",
                    describe(model, ty)
                ));
            }
            Ok((value.clone(), extension.clone()))
        }
        (Slot::Typed(ty), NewValue::Parts(parts)) => {
            if is_primitive(model, ty) {
                return Err(format!(
                    "{name} is a {}: give its value as value[x], not as parts",
                    describe(model, ty)
                ));
            }
            Ok((build_object(model, ty, parts)?, None))
        }
    }
}

/// Builds a complex value from its parts, each naming one of its elements.
fn build_object(
    model: &'static Model,
    ty: TypeId,
    parts: &[(String, NewValue)],
) -> Result<Json, String> {
    struct Group {
        element: Element,
        key: String,
        items: Vec<(Json, Option<Json>)>,
    }
    let mut groups: Vec<Group> = Vec::new();
    for (name, value) in parts {
        let element = Element::named(model, ty, name)
            .ok_or_else(|| format!("a {} has no element {name}", describe(model, ty)))?;
        let fitted = fit(model, &element, value)?;
        match groups.iter_mut().find(|g| g.element.name == element.name) {
            Some(group) if element.repeating && group.key == fitted.key => {
                group.items.push((fitted.value, fitted.extension));
            }
            Some(_) => {
                return Err(format!(
                    "{name} is given more than once but holds one value"
                ));
            }
            None => groups.push(Group {
                element,
                key: fitted.key,
                items: vec![(fitted.value, fitted.extension)],
            }),
        }
    }
    let mut object = Object::new();
    for group in groups {
        let has_shadow = group.items.iter().any(|(_, e)| e.is_some());
        let shadow = shadow_key(&group.key);
        if group.element.repeating {
            let (values, shadows): (Vec<Json>, Vec<Json>) = group
                .items
                .into_iter()
                .map(|(value, extension)| (value, extension.unwrap_or(Json::Null)))
                .unzip();
            object.push(group.key.as_str().into(), Json::Array(values));
            if has_shadow {
                object.push(shadow.as_str().into(), Json::Array(shadows));
            }
        } else if let Some((value, extension)) = group.items.into_iter().next() {
            object.push(group.key.as_str().into(), value);
            if let Some(extension) = extension {
                object.push(shadow.as_str().into(), extension);
            }
        }
    }
    Ok(Json::Object(object))
}

/// Whether a value of `value_type` can be the value of an element of type `target`.
fn fits(model: &Model, value_type: &str, target: TypeId) -> bool {
    let info = model.info(target);
    if is_inline(model, target) {
        return false;
    }
    let target_name = info.name.as_ref();
    if value_type == target_name {
        return true;
    }
    let defs = Definitions::r4();
    let kind = |name: &str| defs.type_definition(name).map(|t| t.kind);
    match (kind(value_type), kind(target_name)) {
        (Some(TypeKind::PrimitiveType), Some(TypeKind::PrimitiveType)) => {
            json_kind(value_type) == json_kind(target_name)
        }
        (Some(TypeKind::ComplexType), Some(TypeKind::ComplexType)) => {
            // a type derived from the element's type (an Age is a Quantity)
            let mut next = Some(value_type);
            while let Some(name) = next {
                if name == target_name {
                    return true;
                }
                next = defs.type_definition(name).and_then(|t| t.base.as_deref());
            }
            false
        }
        _ => false,
    }
}

/// How a primitive type is written in JSON.
fn json_kind(primitive: &str) -> u8 {
    match primitive {
        "boolean" => 0,
        "integer" | "positiveInt" | "unsignedInt" | "decimal" => 1,
        _ => 2,
    }
}

/// Whether a type is an element defined inline (a backbone element), not a named type.
fn is_inline(model: &Model, ty: TypeId) -> bool {
    let info = model.info(ty);
    info.path != info.name
}

fn is_primitive(model: &Model, ty: TypeId) -> bool {
    !is_inline(model, ty)
        && Definitions::r4()
            .type_definition(&model.info(ty).name)
            .is_some_and(|t| t.kind == TypeKind::PrimitiveType)
}

fn describe(model: &Model, ty: TypeId) -> String {
    let info = model.info(ty);
    if is_inline(model, ty) {
        format!("{} (an inline element)", info.path)
    } else {
        info.name.to_string()
    }
}

/// The type of the value at `steps` in the resource, walking the model from its root.
fn type_at(model: &'static Model, resource: &Json, steps: &[Step]) -> Option<TypeId> {
    let mut value = resource;
    let mut slot = Slot::AnyResource;
    for step in steps {
        match step {
            Step::Member(key) => {
                let parent = model.slot_type(slot, value)?;
                let (_, key_slot) = Element::of_key(model, parent, key)?;
                value = member(value.as_object()?, key)?;
                slot = key_slot;
            }
            Step::Item(index) => value = value.as_array()?.get(*index)?,
        }
    }
    model.slot_type(slot, value)
}

// ---------------------------------------------------------------------------------------
// JSON surgery.
// ---------------------------------------------------------------------------------------

/// The `_name` sibling that holds a primitive's id and extensions.
fn shadow_key(key: &str) -> String {
    format!("_{key}")
}

fn value_mut<'a>(resource: &'a mut Json, steps: &[Step]) -> Option<&'a mut Json> {
    let mut value = resource;
    for step in steps {
        value = match step {
            Step::Member(key) => value.as_object_mut()?.get_mut(key.as_ref()).next()?,
            Step::Item(index) => value.as_array_mut()?.get_mut(*index)?,
        };
    }
    Some(value)
}

fn holder_mut<'a>(resource: &'a mut Json, steps: &[Step]) -> Result<&'a mut Object, String> {
    value_mut(resource, steps)
        .and_then(Json::as_object_mut)
        .ok_or_else(|| "the element is no longer there".to_owned())
}

fn array_mut<'a>(holder: &'a mut Object, key: &str) -> Option<&'a mut Vec<Json>> {
    holder.get_mut(key).next().and_then(Json::as_array_mut)
}

/// Sets the `_key` sibling of item `item` of the list `key`, keeping the two lists aligned;
/// `inserted` says whether the item was just inserted (then the sibling list gets a new
/// slot too). A sibling list left with only `null`s is removed.
fn set_shadow_item(
    holder: &mut Object,
    key: &str,
    item: usize,
    extension: Option<Json>,
    inserted: bool,
) {
    let shadow = shadow_key(key);
    let length = array_mut(holder, key).map_or(0, |items| items.len());
    let has_shadow = array_mut(holder, &shadow).is_some();
    if extension.is_none() && !has_shadow {
        return;
    }
    if !has_shadow {
        holder.remove(shadow.as_str()).for_each(drop);
        holder.push(
            shadow.as_str().into(),
            Json::Array(vec![
                Json::Null;
                length.saturating_sub(usize::from(inserted))
            ]),
        );
    }
    if let Some(shadows) = array_mut(holder, &shadow) {
        let slot = extension.unwrap_or(Json::Null);
        if inserted {
            if shadows.len() < item {
                shadows.resize(item, Json::Null);
            }
            shadows.insert(item, slot);
        } else {
            if shadows.len() <= item {
                shadows.resize(item + 1, Json::Null);
            }
            shadows[item] = slot;
        }
        shadows.truncate(length);
    }
    tidy_list(holder, key);
}

/// Removes a list, or its `_` sibling, that is empty or has only `null`s.
fn tidy_list(holder: &mut Object, key: &str) {
    let shadow = shadow_key(key);
    if array_mut(holder, &shadow).is_some_and(|s| s.iter().all(Json::is_null)) {
        holder.remove(shadow.as_str()).for_each(drop);
    }
    if array_mut(holder, key).is_some_and(|items| items.is_empty()) {
        holder.remove(key).for_each(drop);
    }
}

/// Removes the objects and arrays along `steps` that a delete left empty, deepest first
/// (never the resource itself).
fn prune(resource: &mut Json, steps: &[Step]) {
    for depth in (1..=steps.len()).rev() {
        let empty = value_mut(resource, &steps[..depth])
            .is_some_and(|value| value.is_empty_array_or_object());
        if !empty {
            return;
        }
        let Some(parent) = value_mut(resource, &steps[..depth - 1]) else {
            return;
        };
        match (&steps[depth - 1], parent) {
            (Step::Member(key), Json::Object(object)) => {
                object.remove(key.as_ref()).for_each(drop);
            }
            (Step::Item(index), Json::Array(items)) => {
                items.remove(*index);
            }
            _ => return,
        }
    }
}

/// `add`: appends to a list, or sets an absent single element.
fn add(holder: &mut Object, element: &Element, fitted: Fitted) -> Result<(), String> {
    let name = element.name;
    if element.repeating {
        let length = match holder.get_mut(fitted.key.as_str()).next() {
            Some(Json::Array(items)) => {
                items.push(fitted.value);
                items.len()
            }
            Some(_) => return Err(format!("{name} is not held as a list")),
            None => {
                holder.push(fitted.key.as_str().into(), Json::Array(vec![fitted.value]));
                1
            }
        };
        set_shadow_item(holder, &fitted.key, length - 1, fitted.extension, true);
        return Ok(());
    }
    let present = holder.entries().iter().any(|entry| {
        let key = entry.key.as_str();
        let key = key.strip_prefix('_').unwrap_or(key);
        match element.child {
            Child::Single(_) => key == name,
            Child::Choice(options) => key
                .strip_prefix(name)
                .is_some_and(|suffix| options.iter().any(|(s, _)| s.as_ref() == suffix)),
        }
    });
    if present {
        return Err(format!(
            "{name} already has a value and does not repeat; use replace"
        ));
    }
    holder.push(fitted.key.as_str().into(), fitted.value);
    if let Some(extension) = fitted.extension {
        holder.push(shadow_key(&fitted.key).as_str().into(), extension);
    }
    Ok(())
}

/// The JSON positions of the items FHIRPath counts (a `null` item, which only holds the
/// place of a `_` sibling, is not one).
fn positions(items: &[Json]) -> Vec<usize> {
    items
        .iter()
        .enumerate()
        .filter(|(_, item)| !item.is_null())
        .map(|(position, _)| position)
        .collect()
}

/// `insert`: puts a value into a list at an index (0 to the list's length).
fn insert(holder: &mut Object, name: &str, index: usize, fitted: Fitted) -> Result<(), String> {
    let present = holder.get(name).next().is_some();
    let (length, position) = match array_mut(holder, name) {
        Some(items) => {
            let positions = positions(items);
            if index > positions.len() {
                return Err(format!(
                    "index {index} is beyond the end of {name}, which has {} items",
                    positions.len()
                ));
            }
            let position = positions.get(index).copied().unwrap_or(items.len());
            items.insert(position, fitted.value);
            (items.len(), position)
        }
        None if present => {
            return Err(format!("{name} is not held as a list"));
        }
        None if index > 0 => {
            return Err(format!(
                "index {index} is beyond the end of {name}, which is empty"
            ));
        }
        None => {
            holder.push(name.into(), Json::Array(vec![fitted.value]));
            (1, 0)
        }
    };
    debug_assert!(position < length);
    set_shadow_item(holder, name, position, fitted.extension, true);
    Ok(())
}

/// `move`: takes the item at `source` out of a list and puts it back at `destination`.
fn move_item(
    holder: &mut Object,
    name: &str,
    source: usize,
    destination: usize,
) -> Result<(), String> {
    let shadow = shadow_key(name);
    let items = array_mut(holder, name).ok_or_else(|| format!("{name} is empty"))?;
    let counted = positions(items);
    let count = counted.len();
    if source >= count || destination >= count {
        return Err(format!(
            "source {source} and destination {destination} must both be less than the {count} items of {name}"
        ));
    }
    let from = counted[source];
    let item = items.remove(from);
    let rest = positions(items);
    let to = rest.get(destination).copied().unwrap_or(items.len());
    items.insert(to, item);
    if let Some(shadows) = array_mut(holder, &shadow) {
        let slot = if from < shadows.len() {
            shadows.remove(from)
        } else {
            Json::Null
        };
        if shadows.len() < to {
            shadows.resize(to, Json::Null);
        }
        shadows.insert(to, slot);
    }
    tidy_list(holder, name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use json_syntax::Print;
    use serde_json::{Value, json};

    use super::*;

    fn parse(text: &str) -> Json {
        <Json as json_syntax::Parse>::parse_str(text)
            .expect("test json parses")
            .0
    }

    /// A Parameters resource with one `operation` per item, each given as its parts.
    fn parameters(operations: &[Value]) -> Json {
        let parameter: Vec<Value> = operations
            .iter()
            .map(|parts| json!({"name": "operation", "part": parts}))
            .collect();
        parse(&json!({"resourceType": "Parameters", "parameter": parameter}).to_string())
    }

    fn apply(resource: &str, operations: &[Value]) -> Result<String, PatchError> {
        let patch = FhirPatch::parse(&parameters(operations))?;
        let mut resource = parse(resource);
        patch.apply(&mut resource)?;
        Ok(resource.compact_print().to_string())
    }

    fn op(type_code: &str, path: &str) -> Vec<Value> {
        vec![
            json!({"name": "type", "valueCode": type_code}),
            json!({"name": "path", "valueString": path}),
        ]
    }

    fn with(mut parts: Vec<Value>, more: &[Value]) -> Value {
        parts.extend_from_slice(more);
        Value::Array(parts)
    }

    fn name(text: &str) -> Value {
        json!({"name": "name", "valueString": text})
    }

    fn index(n: i64) -> Value {
        json!({"name": "index", "valueInteger": n})
    }

    fn identifiers(values: &[&str]) -> String {
        let items: Vec<String> = values
            .iter()
            .map(|v| format!(r#"{{"system":"http://example.org","value":"{v}"}}"#))
            .collect();
        format!(
            r#"{{"resourceType":"Patient","identifier":[{}]}}"#,
            items.join(",")
        )
    }

    #[test]
    fn each_operation_type_changes_the_resource() {
        let cases: Vec<(&str, String, Vec<Value>, String)> = vec![
            (
                "replace a primitive",
                r#"{"resourceType":"Patient","birthDate":"1920-01-01"}"#.into(),
                vec![with(
                    op("replace", "Patient.birthDate"),
                    &[json!({"name": "value", "valueDate": "1930-01-01"})],
                )],
                r#"{"resourceType":"Patient","birthDate":"1930-01-01"}"#.into(),
            ),
            (
                "delete a primitive and its extensions",
                r#"{"resourceType":"Patient","birthDate":"1920-01-01","_birthDate":{"id":"b"},"active":true}"#
                    .into(),
                vec![Value::Array(op("delete", "Patient.birthDate"))],
                r#"{"resourceType":"Patient","active":true}"#.into(),
            ),
            (
                "delete what is not there",
                r#"{"resourceType":"Patient","active":true}"#.into(),
                vec![Value::Array(op("delete", "Patient.birthDate"))],
                r#"{"resourceType":"Patient","active":true}"#.into(),
            ),
            (
                "add a primitive",
                r#"{"resourceType":"Patient"}"#.into(),
                vec![with(
                    op("add", "Patient"),
                    &[
                        name("birthDate"),
                        json!({"name": "value", "valueDate": "1930-01-01"}),
                    ],
                )],
                r#"{"resourceType":"Patient","birthDate":"1930-01-01"}"#.into(),
            ),
            (
                "replace a nested primitive with a code",
                r#"{"resourceType":"Patient","contact":[{"name":{"text":"a name"},"gender":"male"}]}"#
                    .into(),
                vec![with(
                    op("replace", "Patient.contact[0].gender"),
                    &[json!({"name": "value", "valueCode": "female"})],
                )],
                r#"{"resourceType":"Patient","contact":[{"name":{"text":"a name"},"gender":"female"}]}"#
                    .into(),
            ),
            (
                "delete a nested primitive: emptied parents go too",
                r#"{"resourceType":"Patient","contact":[{"name":{"text":"a name"},"gender":"male"}]}"#
                    .into(),
                vec![Value::Array(op("delete", "Patient.contact[0].name.text"))],
                r#"{"resourceType":"Patient","contact":[{"gender":"male"}]}"#.into(),
            ),
            (
                "delete the last item of a list",
                r#"{"resourceType":"Patient","contact":[{"gender":"male"}],"active":true}"#.into(),
                vec![Value::Array(op("delete", "Patient.contact[0]"))],
                r#"{"resourceType":"Patient","active":true}"#.into(),
            ),
            (
                "add a complex value",
                r#"{"resourceType":"Patient"}"#.into(),
                vec![with(
                    op("add", "Patient"),
                    &[
                        name("maritalStatus"),
                        json!({"name": "value", "valueCodeableConcept": {"text": "married"}}),
                    ],
                )],
                r#"{"resourceType":"Patient","maritalStatus":{"text":"married"}}"#.into(),
            ),
            (
                "add an inline (backbone) element from parts",
                r#"{"resourceType":"Patient"}"#.into(),
                vec![with(
                    op("add", "Patient"),
                    &[
                        name("contact"),
                        json!({"name": "value", "part": [
                            {"name": "name", "valueHumanName": {"text": "a name"}},
                            {"name": "telecom", "valueContactPoint": {"system": "phone", "value": "1"}},
                            {"name": "telecom", "valueContactPoint": {"system": "email", "value": "a@b"}}
                        ]}),
                    ],
                )],
                r#"{"resourceType":"Patient","contact":[{"name":{"text":"a name"},"telecom":[{"system":"phone","value":"1"},{"system":"email","value":"a@b"}]}]}"#
                    .into(),
            ),
            (
                "add an extension from parts, its value a choice",
                r#"{"resourceType":"Patient","active":true}"#.into(),
                vec![with(
                    op("add", "Patient"),
                    &[
                        name("extension"),
                        json!({"name": "value", "part": [
                            {"name": "url", "valueUri": "http://example.org/x"},
                            {"name": "value", "valueString": "y"}
                        ]}),
                    ],
                )],
                r#"{"resourceType":"Patient","active":true,"extension":[{"url":"http://example.org/x","valueString":"y"}]}"#
                    .into(),
            ),
            (
                "add to a choice element names it by the value's type",
                r#"{"resourceType":"Patient"}"#.into(),
                vec![with(
                    op("add", "Patient"),
                    &[
                        name("deceased"),
                        json!({"name": "value", "valueBoolean": false}),
                    ],
                )],
                r#"{"resourceType":"Patient","deceasedBoolean":false}"#.into(),
            ),
            (
                "add appends to a list",
                identifiers(&["1"]),
                vec![with(
                    op("add", "Patient"),
                    &[
                        name("identifier"),
                        json!({"name": "value", "valueIdentifier": {"value": "2"}}),
                    ],
                )],
                r#"{"resourceType":"Patient","identifier":[{"system":"http://example.org","value":"1"},{"value":"2"}]}"#
                    .into(),
            ),
            (
                "add a contained resource",
                r#"{"resourceType":"Patient"}"#.into(),
                vec![with(
                    op("add", "Patient"),
                    &[
                        name("contained"),
                        json!({"name": "value", "resource": {"resourceType": "Organization", "id": "o"}}),
                    ],
                )],
                // (json! sorts the members of the value it builds)
                r#"{"resourceType":"Patient","contained":[{"id":"o","resourceType":"Organization"}]}"#
                    .into(),
            ),
            (
                "insert in the middle of a list",
                identifiers(&["1", "3"]),
                vec![with(
                    op("insert", "Patient.identifier"),
                    &[
                        index(1),
                        json!({"name": "value", "valueIdentifier": {"value": "2"}}),
                    ],
                )],
                r#"{"resourceType":"Patient","identifier":[{"system":"http://example.org","value":"1"},{"value":"2"},{"system":"http://example.org","value":"3"}]}"#
                    .into(),
            ),
            (
                "insert at the end of a list",
                identifiers(&["1"]),
                vec![with(
                    op("insert", "Patient.identifier"),
                    &[
                        index(1),
                        json!({"name": "value", "valueIdentifier": {"value": "2"}}),
                    ],
                )],
                r#"{"resourceType":"Patient","identifier":[{"system":"http://example.org","value":"1"},{"value":"2"}]}"#
                    .into(),
            ),
            (
                "insert into a list that is not there yet",
                r#"{"resourceType":"Patient","name":[{"family":"F"}]}"#.into(),
                vec![with(
                    op("insert", "Patient.name[0].given"),
                    &[index(0), json!({"name": "value", "valueString": "G"})],
                )],
                r#"{"resourceType":"Patient","name":[{"family":"F","given":["G"]}]}"#.into(),
            ),
            (
                "move the first item to the end",
                identifiers(&["1", "2", "3", "4"]),
                vec![with(
                    op("move", "Patient.identifier"),
                    &[
                        json!({"name": "source", "valueInteger": 0}),
                        json!({"name": "destination", "valueInteger": 3}),
                    ],
                )],
                identifiers(&["2", "3", "4", "1"]),
            ),
            (
                "moves apply one after another",
                identifiers(&["1", "2", "3", "4"]),
                vec![
                    with(
                        op("move", "Patient.identifier"),
                        &[
                            json!({"name": "source", "valueInteger": 3}),
                            json!({"name": "destination", "valueInteger": 0}),
                        ],
                    ),
                    with(
                        op("move", "Patient.identifier"),
                        &[
                            json!({"name": "source", "valueInteger": 3}),
                            json!({"name": "destination", "valueInteger": 1}),
                        ],
                    ),
                    with(
                        op("move", "Patient.identifier"),
                        &[
                            json!({"name": "source", "valueInteger": 3}),
                            json!({"name": "destination", "valueInteger": 2}),
                        ],
                    ),
                ],
                identifiers(&["4", "3", "2", "1"]),
            ),
            (
                "operations see what the earlier ones did",
                r#"{"resourceType":"Patient"}"#.into(),
                vec![
                    with(
                        op("add", "Patient"),
                        &[
                            name("identifier"),
                            json!({"name": "value", "valueIdentifier": {"value": "1"}}),
                        ],
                    ),
                    with(
                        op("replace", "Patient.identifier.where(value = '1').value"),
                        &[json!({"name": "value", "valueString": "2"})],
                    ),
                ],
                r#"{"resourceType":"Patient","identifier":[{"value":"2"}]}"#.into(),
            ),
            (
                "replace a choice element with another type keeps its place",
                r#"{"resourceType":"Observation","status":"final","code":{"text":"c"},"valueQuantity":{"value":1},"note":[{"text":"n"}]}"#
                    .into(),
                vec![with(
                    op("replace", "Observation.value"),
                    &[json!({"name": "value", "valueString": "high"})],
                )],
                r#"{"resourceType":"Observation","status":"final","code":{"text":"c"},"valueString":"high","note":[{"text":"n"}]}"#
                    .into(),
            ),
            (
                "an element selected by where()",
                r#"{"resourceType":"Patient","telecom":[{"system":"phone","value":"1"},{"system":"email","value":"a@b"}]}"#
                    .into(),
                vec![Value::Array(op(
                    "delete",
                    "Patient.telecom.where(system = 'phone')",
                ))],
                r#"{"resourceType":"Patient","telecom":[{"system":"email","value":"a@b"}]}"#.into(),
            ),
            (
                "replace the narrative div with a string",
                r#"{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">a</div>"}}"#
                    .into(),
                vec![with(
                    op("replace", "Patient.text.div"),
                    &[json!({"name": "value", "valueString": "<div xmlns=\"http://www.w3.org/1999/xhtml\">b</div>"})],
                )],
                r#"{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">b</div>"}}"#
                    .into(),
            ),
        ];
        for (what, input, operations, expected) in cases {
            match apply(&input, &operations) {
                Ok(output) => assert_eq!(output, expected, "{what}"),
                Err(error) => panic!("{what}: expected success, got {error}"),
            }
        }
    }

    #[test]
    fn number_literals_and_member_order_are_kept() {
        let mut resource = parse(
            r#"{"resourceType":"Observation","status":"preliminary","code":{"text":"c"},"valueQuantity":{"value":1.50,"unit":"mg"},"referenceRange":[{"low":{"value":1.0E2}}]}"#,
        );
        let patch = FhirPatch::parse(&parse(
            r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[
                {"name":"type","valueCode":"replace"},{"name":"path","valueString":"Observation.status"},
                {"name":"value","valueCode":"final"}]},
              {"name":"operation","part":[
                {"name":"type","valueCode":"add"},{"name":"path","valueString":"Observation.referenceRange[0]"},
                {"name":"name","valueString":"high"},{"name":"value","valueQuantity":{"value":2.50}}]}]}"#,
        ))
        .expect("a patch");
        patch.apply(&mut resource).expect("applies");
        assert_eq!(
            resource.compact_print().to_string(),
            r#"{"resourceType":"Observation","status":"final","code":{"text":"c"},"valueQuantity":{"value":1.50,"unit":"mg"},"referenceRange":[{"low":{"value":1.0E2},"high":{"value":2.50}}]}"#
        );
    }

    #[test]
    fn primitive_extensions_travel_with_their_values() {
        let input =
            r#"{"resourceType":"Patient","name":[{"given":["a","b"],"_given":[null,{"id":"x"}]}]}"#;
        let cases: Vec<(&str, Vec<Value>, &str)> = vec![
            (
                "delete the item before the extended one",
                vec![Value::Array(op("delete", "Patient.name.given[0]"))],
                r#"{"resourceType":"Patient","name":[{"given":["b"],"_given":[{"id":"x"}]}]}"#,
            ),
            (
                "delete the extended item",
                vec![Value::Array(op("delete", "Patient.name.given[1]"))],
                r#"{"resourceType":"Patient","name":[{"given":["a"]}]}"#,
            ),
            (
                "replace the extended item drops its extensions",
                vec![with(
                    op("replace", "Patient.name.given[1]"),
                    &[json!({"name": "value", "valueString": "c"})],
                )],
                r#"{"resourceType":"Patient","name":[{"given":["a","c"]}]}"#,
            ),
            (
                "insert first shifts the extensions along",
                vec![with(
                    op("insert", "Patient.name.given"),
                    &[index(0), json!({"name": "value", "valueString": "z"})],
                )],
                r#"{"resourceType":"Patient","name":[{"given":["z","a","b"],"_given":[null,null,{"id":"x"}]}]}"#,
            ),
            (
                "insert with its own extension",
                vec![with(
                    op("insert", "Patient.name.given"),
                    &[
                        index(1),
                        json!({"name": "value", "valueString": "z", "_valueString": {"id": "y"}}),
                    ],
                )],
                r#"{"resourceType":"Patient","name":[{"given":["a","z","b"],"_given":[null,{"id":"y"},{"id":"x"}]}]}"#,
            ),
            (
                "move the extended item first",
                vec![with(
                    op("move", "Patient.name.given"),
                    &[
                        json!({"name": "source", "valueInteger": 1}),
                        json!({"name": "destination", "valueInteger": 0}),
                    ],
                )],
                r#"{"resourceType":"Patient","name":[{"given":["b","a"],"_given":[{"id":"x"},null]}]}"#,
            ),
        ];
        for (what, operations, expected) in cases {
            match apply(input, &operations) {
                Ok(output) => assert_eq!(output, expected, "{what}"),
                Err(error) => panic!("{what}: expected success, got {error}"),
            }
        }
        let added = apply(
            r#"{"resourceType":"Patient"}"#,
            &[with(
                op("add", "Patient"),
                &[
                    name("birthDate"),
                    json!({"name": "value", "valueDate": "1970", "_valueDate": {"extension": [{"url": "http://x", "valueString": "s"}]}}),
                ],
            )],
        )
        .expect("add with an extension");
        assert_eq!(
            added,
            r#"{"resourceType":"Patient","birthDate":"1970","_birthDate":{"extension":[{"url":"http://x","valueString":"s"}]}}"#
        );
    }

    #[test]
    fn operations_that_do_not_fit_the_resource_are_unprocessable() {
        let patient = r#"{"resourceType":"Patient","birthDate":"1920-01-01","name":[{"given":["a","b"]}],"identifier":[{"value":"1"}]}"#;
        let value_date = || json!({"name": "value", "valueDate": "2000-01-01"});
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "delete of several elements",
                Value::Array(op("delete", "Patient.name.given")),
                "selects 2 elements",
            ),
            (
                "replace of nothing",
                with(op("replace", "Patient.deceased"), &[value_date()]),
                "selects nothing",
            ),
            (
                "replace of several elements",
                with(
                    op("replace", "Patient.name.given"),
                    &[json!({"name": "value", "valueString": "c"})],
                ),
                "selects 2 elements",
            ),
            (
                "replace of the resource itself",
                with(op("replace", "Patient"), &[value_date()]),
                "the resource itself",
            ),
            (
                "replace of a literal",
                with(op("replace", "'x'"), &[value_date()]),
                "does not select an element",
            ),
            (
                "replace with a value of the wrong type",
                with(
                    op("replace", "Patient.birthDate"),
                    &[json!({"name": "value", "valueHumanName": {"text": "x"}})],
                ),
                "a HumanName cannot be the value of birthDate",
            ),
            (
                "replace of a primitive with parts",
                with(
                    op("replace", "Patient.birthDate"),
                    &[json!({"name": "value", "part": [{"name": "x", "valueString": "y"}]})],
                ),
                "not as parts",
            ),
            (
                "add where nothing is selected",
                with(
                    op("add", "Patient.identifier.where(use = 'official').period"),
                    &[name("end"), value_date()],
                ),
                "selects nothing",
            ),
            (
                "add to a single element that is set",
                with(op("add", "Patient"), &[name("birthDate"), value_date()]),
                "already has a value",
            ),
            (
                "add of an unknown element",
                with(op("add", "Patient"), &[name("nickname"), value_date()]),
                "a Patient has no element nickname",
            ),
            (
                "add to a primitive",
                with(
                    op("add", "Patient.birthDate"),
                    &[name("id"), json!({"name": "value", "valueString": "x"})],
                ),
                "primitive value",
            ),
            (
                "add to several elements",
                with(
                    op("add", "Patient.name.given"),
                    &[name("id"), json!({"name": "value", "valueString": "x"})],
                ),
                "selects 2 elements",
            ),
            (
                "a choice element given by parts",
                with(
                    op("add", "Patient"),
                    &[
                        name("deceased"),
                        json!({"name": "value", "part": [{"name": "x", "valueString": "y"}]}),
                    ],
                ),
                "choice of types",
            ),
            (
                "a choice element of a type it does not allow",
                with(
                    op("add", "Patient"),
                    &[
                        name("deceased"),
                        json!({"name": "value", "valueString": "y"}),
                    ],
                ),
                "a string cannot be the value of deceased[x]",
            ),
            (
                "an unknown element among the parts",
                with(
                    op("add", "Patient"),
                    &[
                        name("contact"),
                        json!({"name": "value", "part": [{"name": "nickname", "valueString": "y"}]}),
                    ],
                ),
                "has no element nickname",
            ),
            (
                "a single element given twice among the parts",
                with(
                    op("add", "Patient"),
                    &[
                        name("contact"),
                        json!({"name": "value", "part": [
                            {"name": "gender", "valueCode": "male"},
                            {"name": "gender", "valueCode": "female"}
                        ]}),
                    ],
                ),
                "more than once",
            ),
            (
                "insert beyond the end",
                with(
                    op("insert", "Patient.identifier"),
                    &[
                        index(2),
                        json!({"name": "value", "valueIdentifier": {"value": "2"}}),
                    ],
                ),
                "beyond the end",
            ),
            (
                "insert into an element that is not a list",
                with(op("insert", "Patient.birthDate"), &[index(0), value_date()]),
                "not a list",
            ),
            (
                "insert into a path that does not end in a list name",
                with(
                    op("insert", "Patient.identifier.first()"),
                    &[
                        index(0),
                        json!({"name": "value", "valueIdentifier": {"value": "2"}}),
                    ],
                ),
                "must end in the name of a list",
            ),
            (
                "move from beyond the end",
                with(
                    op("move", "Patient.name[0].given"),
                    &[
                        json!({"name": "source", "valueInteger": 2}),
                        json!({"name": "destination", "valueInteger": 0}),
                    ],
                ),
                "must both be less than the 2 items",
            ),
            (
                "a resource where a data type belongs",
                with(
                    op("add", "Patient"),
                    &[
                        name("photo"),
                        json!({"name": "value", "resource": {"resourceType": "Binary"}}),
                    ],
                ),
                "does not hold a resource",
            ),
        ];
        for (what, operation, expected) in cases {
            match apply(patient, &[operation]) {
                Err(PatchError::Unprocessable(message)) => assert!(
                    message.contains(expected) && message.starts_with("operation 0 ("),
                    "{what}: expected {expected:?} in {message:?}"
                ),
                other => panic!("{what}: expected an unprocessable operation, got {other:?}"),
            }
        }
    }

    #[test]
    fn parameters_that_are_not_a_patch_are_malformed() {
        let raw = |text: &str| FhirPatch::parse(&parse(text)).map(|_| ());
        let operation =
            |parts: Value| FhirPatch::parse(&parameters(&[parts])).map(|p| assert_eq!(p.len(), 1));
        let cases: Vec<(&str, Result<(), PatchError>, &str)> = vec![
            (
                "another resource",
                raw(r#"{"resourceType":"Patient"}"#),
                "a Parameters resource",
            ),
            (
                "a parameter that is not an operation",
                raw(
                    r#"{"resourceType":"Parameters","parameter":[{"name":"op","part":[{"name":"type","valueCode":"delete"}]}]}"#,
                ),
                "named operation",
            ),
            (
                "an operation without parts",
                raw(
                    r#"{"resourceType":"Parameters","parameter":[{"name":"operation","valueString":"x"}]}"#,
                ),
                "needs its parts",
            ),
            (
                "an unknown operation type",
                operation(Value::Array(op("remove", "Patient.birthDate"))),
                "unknown operation type \"remove\"",
            ),
            (
                "no path",
                operation(json!([{"name": "type", "valueCode": "delete"}])),
                "has no path",
            ),
            (
                "a path that is not FHIRPath",
                operation(Value::Array(op("delete", "Patient.name.("))),
                "path: ",
            ),
            (
                "a delete with a value",
                operation(with(
                    op("delete", "Patient.birthDate"),
                    &[json!({"name": "value", "valueDate": "2000"})],
                )),
                "a delete operation takes no value",
            ),
            (
                "a replace without a value",
                operation(Value::Array(op("replace", "Patient.birthDate"))),
                "needs a value",
            ),
            (
                "an add without a name",
                operation(with(
                    op("add", "Patient"),
                    &[json!({"name": "value", "valueDate": "2000"})],
                )),
                "needs a name",
            ),
            (
                "an insert without an index",
                operation(with(
                    op("insert", "Patient.name"),
                    &[json!({"name": "value", "valueHumanName": {"text": "x"}})],
                )),
                "needs an index",
            ),
            (
                "a move without a destination",
                operation(with(
                    op("move", "Patient.name"),
                    &[json!({"name": "source", "valueInteger": 0})],
                )),
                "needs a destination",
            ),
            (
                "a negative index",
                operation(with(
                    op("insert", "Patient.name"),
                    &[
                        index(-1),
                        json!({"name": "value", "valueHumanName": {"text": "x"}}),
                    ],
                )),
                "an integer of 0 or more",
            ),
            (
                "a part given twice",
                operation(with(
                    op("delete", "Patient.birthDate"),
                    &[json!({"name": "path", "valueString": "Patient.gender"})],
                )),
                "the part path appears more than once",
            ),
            (
                "an unknown part",
                operation(with(
                    op("delete", "Patient.birthDate"),
                    &[json!({"name": "where", "valueString": "x"})],
                )),
                "unknown part \"where\"",
            ),
            (
                "a type of the wrong kind",
                operation(json!([
                    {"name": "type", "valueString": "delete"},
                    {"name": "path", "valueString": "Patient.birthDate"}
                ])),
                "must have a valueCode",
            ),
            (
                "a value of two kinds",
                operation(with(
                    op("replace", "Patient.birthDate"),
                    &[
                        json!({"name": "value", "valueDate": "2000", "part": [{"name": "x", "valueString": "y"}]}),
                    ],
                )),
                "more than one value",
            ),
            (
                "a value of no FHIR type",
                operation(with(
                    op("replace", "Patient.birthDate"),
                    &[json!({"name": "value", "valueWhatever": "2000"})],
                )),
                "valueWhatever does not name a FHIR data type",
            ),
        ];
        for (what, result, expected) in cases {
            match result {
                Err(PatchError::Malformed(message)) => assert!(
                    message.contains(expected),
                    "{what}: expected {expected:?} in {message:?}"
                ),
                other => panic!("{what}: expected a malformed patch, got {other:?}"),
            }
        }
        let empty = FhirPatch::parse(&parse(r#"{"resourceType":"Parameters"}"#)).expect("empty");
        assert!(
            empty.is_empty(),
            "a Parameters without operations changes nothing"
        );
    }
}
