//! `batch` and `transaction` (http.html#transaction).
//!
//! A transaction is all or nothing, in one database transaction. Its entries are processed
//! in the order the spec gives (DELETE, POST, PUT and PATCH, then GET), after the server has
//! assigned ids to every created resource and rewritten every reference to another entry
//! (`urn:uuid:...` or any `fullUrl`) and every conditional reference (`Patient?identifier=...`)
//! to the id it resolves to. A failing entry fails the whole transaction, and the error says
//! which entry it was.
//!
//! A batch runs each entry on its own; a failing entry gets an OperationOutcome in its
//! response and the others still apply.
//!
//! A PATCH entry carries its patch as the entry's resource: a Parameters resource for a
//! FHIRPath Patch (whose values take part in reference rewriting like any resource), or a
//! Binary whose base64 `data` is a JSON Patch.

use std::collections::HashMap;

use fhir_profiles::Json;
use fhir_profiles::validate::Issue;
use serde_json::json;
use sqlx::AnyConnection;

use super::patch::PatchDocument;
use super::{
    Body, Checked, Context, Method, Outcome, PreparedVersion, check_body, create, delete, patch,
    read, search, store_new_versions, store_version, update,
};
use crate::access::Access;
use crate::auth::scopes::Permission;
use crate::bundle::BundleWriter;
use crate::error::{Error, Result, validation_outcome};
use crate::model::{ResourceId, ResourceType, VersionId};
use crate::store::{self, Store};

/// What `Prefer: return=` asks for in each entry's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnPreference {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

#[derive(Debug, Clone)]
enum Request {
    Create {
        resource_type: ResourceType,
        if_none_exist: Option<String>,
    },
    Update {
        resource_type: ResourceType,
        id: ResourceId,
        if_match: Option<VersionId>,
    },
    ConditionalUpdate {
        resource_type: ResourceType,
        criteria: String,
        if_match: Option<VersionId>,
    },
    Patch {
        resource_type: ResourceType,
        id: ResourceId,
        if_match: Option<VersionId>,
    },
    ConditionalPatch {
        resource_type: ResourceType,
        criteria: String,
        if_match: Option<VersionId>,
    },
    Delete {
        resource_type: ResourceType,
        id: ResourceId,
    },
    ConditionalDelete {
        resource_type: ResourceType,
        criteria: String,
    },
    Read {
        resource_type: ResourceType,
        id: ResourceId,
    },
    VRead {
        resource_type: ResourceType,
        id: ResourceId,
        version: VersionId,
    },
    Search {
        resource_type: ResourceType,
        query: String,
    },
}

impl Request {
    /// The restful interaction of a request that writes; `None` for reads and searches.
    fn writes(&self) -> Option<&'static str> {
        match self {
            Request::Create { .. } => Some("create"),
            Request::Update { .. } | Request::ConditionalUpdate { .. } => Some("update"),
            Request::Patch { .. } | Request::ConditionalPatch { .. } => Some("patch"),
            Request::Delete { .. } | Request::ConditionalDelete { .. } => Some("delete"),
            Request::Read { .. } | Request::VRead { .. } | Request::Search { .. } => None,
        }
    }

    /// The processing order of a transaction (http.html#trules).
    fn rank(&self) -> u8 {
        match self {
            Request::Delete { .. } | Request::ConditionalDelete { .. } => 0,
            Request::Create { .. } => 1,
            Request::Update { .. }
            | Request::ConditionalUpdate { .. }
            | Request::Patch { .. }
            | Request::ConditionalPatch { .. } => 2,
            Request::Read { .. } | Request::VRead { .. } | Request::Search { .. } => 3,
        }
    }
}

/// The id a creating entry ends up with.
#[derive(Debug)]
enum Assigned {
    /// A new resource gets this id.
    New(ResourceId),
    /// `ifNoneExist` matched this existing resource: nothing is written.
    Existing(ResourceId),
    /// A conditional update's criteria matched this resource, locked in this state: it is
    /// updated.
    Matched(ResourceId, store::Current),
}

#[derive(Debug, Clone)]
struct Entry {
    index: usize,
    full_url: Option<String>,
    resource: Option<Json>,
    request: Request,
}

/// Names the failing entry in an error. Conflicts with concurrent transactions stay as they
/// are, so that the whole Bundle is run again (`Store::write`).
fn entry_error(index: usize, error: Error) -> Error {
    match &error {
        Error::Database(_) if error.is_transient() => error,
        Error::Database(_) | Error::Internal(_) => {
            Error::Internal(anyhow::anyhow!("bundle entry {index}: {error}"))
        }
        Error::InvalidResource(issues) | Error::ProfileViolation(issues) => {
            let mut issues = issues.clone();
            for issue in &mut issues {
                issue.expression = format!("Bundle.entry[{index}].resource.{}", issue.expression);
            }
            if matches!(error, Error::InvalidResource(_)) {
                Error::InvalidResource(issues)
            } else {
                Error::ProfileViolation(issues)
            }
        }
        Error::Invalid(m) => Error::Invalid(format!("Bundle.entry[{index}]: {m}")),
        Error::NotSupported(m) => Error::NotSupported(format!("Bundle.entry[{index}]: {m}")),
        Error::UnknownResourceType(t) => Error::Invalid(format!(
            "Bundle.entry[{index}]: unknown resource type {t:?}"
        )),
        Error::NotFound { resource_type, id } => Error::NotFound {
            resource_type: resource_type.clone(),
            id: format!("{id} (Bundle.entry[{index}])"),
        },
        Error::Gone { resource_type, id } => Error::Gone {
            resource_type: resource_type.clone(),
            id: format!("{id} (Bundle.entry[{index}])"),
        },
        Error::Erased {
            resource_type,
            id,
            erased_at,
        } => Error::Erased {
            resource_type: resource_type.clone(),
            id: format!("{id} (Bundle.entry[{index}])"),
            erased_at: *erased_at,
        },
        Error::Conflict(m) => Error::Conflict(format!("Bundle.entry[{index}]: {m}")),
        Error::PreconditionFailed(m) => {
            Error::PreconditionFailed(format!("Bundle.entry[{index}]: {m}"))
        }
        Error::Unprocessable(m) => Error::Unprocessable(format!("Bundle.entry[{index}]: {m}")),
        Error::Forbidden(m) => Error::Forbidden(format!("Bundle.entry[{index}]: {m}")),
        Error::NoConsent(m) => Error::NoConsent(format!("Bundle.entry[{index}]: {m}")),
        Error::MethodNotAllowed(m) => {
            Error::MethodNotAllowed(format!("Bundle.entry[{index}]: {m}"))
        }
        Error::Unavailable(m) => Error::Unavailable(format!("Bundle.entry[{index}]: {m}")),
        Error::InvalidPatchResult(issues) => {
            let mut issues = issues.clone();
            for issue in &mut issues {
                issue.diagnostics = format!(
                    "Bundle.entry[{index}]: the patched resource: {}",
                    issue.diagnostics
                );
            }
            Error::InvalidPatchResult(issues)
        }
        other => Error::Invalid(format!("Bundle.entry[{index}]: {other}")),
    }
}

fn get_str<'a>(object: &'a json_syntax::Object, key: &str) -> Option<&'a str> {
    object.get_unique(key).ok().flatten().and_then(Json::as_str)
}

fn parse_entries(bundle: &Json, ctx: &Context) -> Result<(bool, Vec<Entry>)> {
    let object = bundle
        .as_object()
        .ok_or_else(|| Error::Invalid("the Bundle must be a JSON object".to_owned()))?;
    if get_str(object, "resourceType") != Some("Bundle") {
        return Err(Error::Invalid(
            "POST to the base URL takes a Bundle of type batch or transaction".to_owned(),
        ));
    }
    let is_transaction = match get_str(object, "type") {
        Some("transaction") => true,
        Some("batch") => false,
        Some(other) => {
            return Err(Error::Invalid(format!(
                "a Bundle of type {other:?} cannot be processed; send batch or transaction"
            )));
        }
        None => return Err(Error::Invalid("the Bundle has no type".to_owned())),
    };
    let entries = match object.get_unique("entry").ok().flatten() {
        Some(Json::Array(entries)) => entries.as_slice(),
        None => &[],
        Some(_) => return Err(Error::Invalid("Bundle.entry must be an array".to_owned())),
    };
    if entries.len() > ctx.config.limits.max_bundle_entries {
        return Err(Error::PayloadTooLarge(format!(
            "the Bundle has {} entries; the limit is {}",
            entries.len(),
            ctx.config.limits.max_bundle_entries
        )));
    }
    let mut parsed = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        parsed.push(parse_entry(index, entry, ctx).map_err(|e| entry_error(index, e))?);
    }
    Ok((is_transaction, parsed))
}

fn parse_entry(index: usize, entry: &Json, ctx: &Context) -> Result<Entry> {
    let object = entry
        .as_object()
        .ok_or_else(|| Error::Invalid("an entry must be a JSON object".to_owned()))?;
    let request = match object.get_unique("request").ok().flatten() {
        Some(Json::Object(request)) => request,
        _ => return Err(Error::Invalid("the entry has no request".to_owned())),
    };
    let method = get_str(request, "method")
        .ok_or_else(|| Error::Invalid("request.method is missing".to_owned()))?;
    let url = get_str(request, "url")
        .ok_or_else(|| Error::Invalid("request.url is missing".to_owned()))?;
    let if_match = get_str(request, "ifMatch")
        .map(VersionId::from_etag)
        .transpose()?;
    let url = url
        .strip_prefix(ctx.base_url.as_str())
        .map(|u| u.trim_start_matches('/'))
        .unwrap_or(url);
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (url, None),
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let resource_type = |s: &str| ResourceType::parse(s);
    let request = match (method, segments.as_slice(), query) {
        ("POST", [t], None) => Request::Create {
            resource_type: resource_type(t)?,
            if_none_exist: get_str(request, "ifNoneExist")
                .map(|s| s.trim_start_matches('?').to_owned()),
        },
        ("PUT", [t, id], None) => Request::Update {
            resource_type: resource_type(t)?,
            id: ResourceId::parse(id)?,
            if_match,
        },
        ("PUT", [t], Some(q)) => Request::ConditionalUpdate {
            resource_type: resource_type(t)?,
            criteria: q.to_owned(),
            if_match,
        },
        ("PATCH", [t, id], None) => Request::Patch {
            resource_type: resource_type(t)?,
            id: ResourceId::parse(id)?,
            if_match,
        },
        ("PATCH", [t], Some(q)) => Request::ConditionalPatch {
            resource_type: resource_type(t)?,
            criteria: q.to_owned(),
            if_match,
        },
        ("DELETE", [t, id], None) => Request::Delete {
            resource_type: resource_type(t)?,
            id: ResourceId::parse(id)?,
        },
        ("DELETE", [t], Some(q)) => Request::ConditionalDelete {
            resource_type: resource_type(t)?,
            criteria: q.to_owned(),
        },
        ("GET", [t, id], None) => Request::Read {
            resource_type: resource_type(t)?,
            id: ResourceId::parse(id)?,
        },
        ("GET", [t, id, "_history", v], None) => Request::VRead {
            resource_type: resource_type(t)?,
            id: ResourceId::parse(id)?,
            version: VersionId::parse(v)?,
        },
        ("GET", [t], q) => Request::Search {
            resource_type: resource_type(t)?,
            query: q.unwrap_or("").to_owned(),
        },
        _ => {
            return Err(Error::NotSupported(format!(
                "{method} {url} is not supported in a Bundle"
            )));
        }
    };
    let resource = object.get_unique("resource").ok().flatten().cloned();
    let needs_resource = matches!(
        request,
        Request::Create { .. }
            | Request::Update { .. }
            | Request::ConditionalUpdate { .. }
            | Request::Patch { .. }
            | Request::ConditionalPatch { .. }
    );
    if needs_resource && resource.is_none() {
        return Err(Error::Invalid(format!("{method} {url} needs a resource")));
    }
    Ok(Entry {
        index,
        full_url: get_str(object, "fullUrl").map(str::to_owned),
        resource,
        request,
    })
}

/// Processes a batch or transaction Bundle (already parsed).
pub async fn process(
    store: &Store,
    ctx: &Context,
    access: &Access,
    bundle: Json,
    preference: ReturnPreference,
    audit: Option<&crate::audit::Pending>,
) -> Result<Outcome> {
    let (is_transaction, entries) = parse_entries(&bundle, ctx)?;
    drop(bundle);
    if is_transaction {
        // the Bundle's audit record commits with its writes
        let responses = store
            .write(async |tx| {
                store::lock_all(tx, &lock_keys(&entries)).await?;
                let responses = transaction(tx, ctx, access, entries.clone()).await?;
                if let Some(pending) = audit {
                    let touched = responses
                        .iter()
                        .filter_map(|(_, r)| r.as_ref().ok())
                        .flat_map(|o| o.touched.iter().cloned())
                        .collect();
                    let record = pending.record_as(
                        crate::audit::Interaction::Rest("transaction"),
                        access,
                        200,
                        touched,
                    );
                    crate::audit::store_in(tx, ctx, &[&record])
                        .await
                        .map_err(Error::Internal)?;
                }
                Ok(responses)
            })
            .await?;
        let mut outcome = response_bundle("transaction-response", responses, preference);
        outcome.recorded = audit.is_some();
        Ok(outcome)
    } else {
        // each entry that writes commits with a record of its own; the middleware records
        // the batch as a whole (its reads among it)
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            let index = entry.index;
            let writes = entry.request.writes();
            let result = store
                .write(async |tx| {
                    let outcome = run(tx, ctx, access, entry.clone()).await?;
                    if let (Some(pending), Some(interaction)) = (audit, writes) {
                        let record = pending.record_as(
                            crate::audit::Interaction::Rest(interaction),
                            access,
                            outcome.status,
                            outcome.touched.clone(),
                        );
                        crate::audit::store_in(tx, ctx, &[&record])
                            .await
                            .map_err(Error::Internal)?;
                    }
                    Ok(outcome)
                })
                .await;
            responses.push((index, result.map_err(|e| entry_error(index, e))));
        }
        responses.sort_by_key(|(index, _)| *index);
        Ok(response_bundle("batch-response", responses, preference))
    }
}

/// A transaction Bundle checked and split into its entries, to run inside a database
/// transaction of the caller's (the HL7 v2 intake writes its idempotency record in the same
/// one). Cloned for each run, since [`Store::write`] may run a conflicting transaction again.
#[derive(Debug, Clone)]
pub(crate) struct PreparedTransaction(Vec<Entry>);

/// Checks a Bundle of type `transaction` and prepares its entries.
pub(crate) fn prepare_transaction(bundle: &Json, ctx: &Context) -> Result<PreparedTransaction> {
    match parse_entries(bundle, ctx)? {
        (true, entries) => Ok(PreparedTransaction(entries)),
        (false, _) => Err(Error::Invalid(
            "a Bundle of type transaction is needed here".to_owned(),
        )),
    }
}

impl PreparedTransaction {
    /// The advisory locks [`run_transaction`] needs held (PostgreSQL), in the order to take
    /// them: its caller takes them in its own first statement, with its own locks before them.
    pub(crate) fn lock_keys(&self) -> Vec<String> {
        lock_keys(&self.0)
    }
}

/// Runs a prepared transaction on the caller's connection (all or nothing with whatever else
/// the caller's transaction holds); the responses in entry order. The caller holds the
/// locks of [`PreparedTransaction::lock_keys`], taken in this transaction before it.
pub(crate) async fn run_transaction(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    prepared: &PreparedTransaction,
) -> Result<Vec<(usize, Result<Outcome>)>> {
    transaction(conn, ctx, access, prepared.0.clone()).await
}

/// The `transaction-response` Bundle of a run.
pub(crate) fn transaction_response(
    responses: Vec<(usize, Result<Outcome>)>,
    preference: ReturnPreference,
) -> Outcome {
    response_bundle("transaction-response", responses, preference)
}

/// The advisory locks a transaction's entries need before anything else: conditional
/// creates and updates are serialized against concurrent ones on the same criteria; taking
/// every lock first, in one order (sorted), keeps two Bundles from deadlocking.
fn lock_keys(entries: &[Entry]) -> Vec<String> {
    let mut keys: Vec<String> = entries
        .iter()
        .filter_map(|entry| match &entry.request {
            Request::Create {
                resource_type,
                if_none_exist: Some(criteria),
            }
            | Request::ConditionalUpdate {
                resource_type,
                criteria,
                ..
            } => Some(format!("{resource_type}?{criteria}")),
            _ => None,
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

async fn transaction(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    mut entries: Vec<Entry>,
) -> Result<Vec<(usize, Result<Outcome>)>> {
    // 1. the id every entry's fullUrl stands for
    let mut replacements: HashMap<String, String> = HashMap::new();
    let mut assigned: HashMap<usize, Assigned> = HashMap::new();
    for entry in &entries {
        let target = match &entry.request {
            Request::Create {
                resource_type,
                if_none_exist,
            } => {
                let existing = match if_none_exist {
                    Some(criteria) => {
                        let found =
                            search::matching_ids(conn, ctx, access, resource_type, criteria, 2)
                                .await
                                .map_err(|e| entry_error(entry.index, e))?;
                        if found.len() > 1 {
                            return Err(entry_error(
                                entry.index,
                                Error::PreconditionFailed(format!(
                                    "ifNoneExist {criteria} matches more than one {resource_type}"
                                )),
                            ));
                        }
                        found.into_iter().next()
                    }
                    None => None,
                };
                let (id, assignment) = match existing {
                    Some(id) => (id.clone(), Assigned::Existing(id)),
                    None => {
                        let id = ResourceId::generate();
                        (id.clone(), Assigned::New(id))
                    }
                };
                assigned.insert(entry.index, assignment);
                Some(format!("{resource_type}/{id}"))
            }
            Request::Update {
                resource_type, id, ..
            } => Some(format!("{resource_type}/{id}")),
            Request::ConditionalUpdate {
                resource_type,
                criteria,
                ..
            } => {
                let mut found =
                    search::matching_for_update(conn, ctx, access, resource_type, criteria, 2)
                        .await
                        .map_err(|e| entry_error(entry.index, e))?;
                match (found.pop(), found.is_empty()) {
                    (Some((id, current)), true) => {
                        let target = format!("{resource_type}/{id}");
                        assigned.insert(entry.index, Assigned::Matched(id, current));
                        Some(target)
                    }
                    (None, _) => {
                        let id = entry
                            .resource
                            .as_ref()
                            .and_then(crate::resource::id_of)
                            .map(ResourceId::parse)
                            .transpose()?
                            .unwrap_or_else(ResourceId::generate);
                        assigned.insert(entry.index, Assigned::New(id.clone()));
                        Some(format!("{resource_type}/{id}"))
                    }
                    _ => {
                        return Err(entry_error(
                            entry.index,
                            Error::PreconditionFailed(format!(
                                "{criteria} matches more than one {resource_type}"
                            )),
                        ));
                    }
                }
            }
            _ => None,
        };
        if let (Some(full_url), Some(target)) = (&entry.full_url, target)
            && replacements.insert(full_url.clone(), target).is_some()
        {
            return Err(entry_error(
                entry.index,
                Error::Invalid(format!("fullUrl {full_url} appears in more than one entry")),
            ));
        }
    }
    // 2. rewrite references to other entries and conditional references
    let mut conditional: HashMap<String, String> = HashMap::new();
    for entry in &mut entries {
        if let Some(resource) = &mut entry.resource {
            let mut pending = Vec::new();
            collect_conditional_references(resource, &mut pending);
            for reference in pending {
                if conditional.contains_key(&reference) || replacements.contains_key(&reference) {
                    continue;
                }
                let (type_part, criteria) = reference.split_once('?').unwrap_or((&reference, ""));
                let resource_type =
                    ResourceType::parse(type_part).map_err(|e| entry_error(entry.index, e))?;
                let found = search::matching_ids(conn, ctx, access, &resource_type, criteria, 2)
                    .await
                    .map_err(|e| entry_error(entry.index, e))?;
                match found.as_slice() {
                    [id] => {
                        conditional.insert(reference.clone(), format!("{resource_type}/{id}"));
                    }
                    [] => {
                        return Err(entry_error(
                            entry.index,
                            Error::PreconditionFailed(format!(
                                "the conditional reference {reference} matches no resource"
                            )),
                        ));
                    }
                    _ => {
                        return Err(entry_error(
                            entry.index,
                            Error::PreconditionFailed(format!(
                                "the conditional reference {reference} matches more than one resource"
                            )),
                        ));
                    }
                }
            }
            rewrite_references(resource, &replacements, &conditional);
        }
    }
    // 3. run the entries in the prescribed order
    entries.sort_by_key(|e| (e.request.rank(), e.index));
    let mut responses = Vec::with_capacity(entries.len());
    // creates of new resources are written together, in a few statements
    let mut pending: Vec<(usize, PreparedVersion, Vec<Issue>)> = Vec::new();
    for entry in entries {
        let index = entry.index;
        if let (Request::Create { resource_type, .. }, Some(Assigned::New(id))) =
            (&entry.request, assigned.get(&index))
        {
            let resource = entry.resource.ok_or_else(|| {
                entry_error(index, Error::Invalid("POST needs a resource".to_owned()))
            })?;
            access
                .allowed(Permission::Create, resource_type.as_str())
                .map_err(|e| entry_error(index, e))?;
            let issues =
                check_body(ctx, &resource, resource_type).map_err(|e| entry_error(index, e))?;
            pending.push((
                index,
                PreparedVersion::new(resource_type, id, None, resource, Method::Post)
                    .map_err(|e| entry_error(index, e))?,
                issues,
            ));
            continue;
        }
        flush(conn, ctx, access, &mut pending, &mut responses).await?;
        let outcome = match (&entry.request, assigned.get(&index)) {
            (Request::Create { resource_type, .. }, Some(Assigned::Existing(id))) => {
                // ifNoneExist matched: answer with the existing resource
                read::read(conn, ctx, access, resource_type, id).await
            }
            (Request::ConditionalUpdate { resource_type, .. }, Some(Assigned::New(id))) => {
                let mut resource = entry
                    .resource
                    .ok_or_else(|| Error::Invalid("PUT needs a resource".to_owned()))?;
                set_id(&mut resource, id);
                let current =
                    store::current_for_update(conn, resource_type.as_str(), id.as_str()).await?;
                match check_body(ctx, &resource, resource_type) {
                    Ok(issues) => create_checked(
                        conn,
                        ctx,
                        access,
                        resource_type,
                        id,
                        current.as_ref(),
                        resource,
                    )
                    .await
                    .map(|outcome| outcome.with_issues(issues)),
                    Err(e) => Err(e),
                }
            }
            (
                Request::ConditionalUpdate {
                    resource_type,
                    criteria,
                    if_match,
                },
                Some(Assigned::Matched(id, current)),
            ) => {
                // matched and locked in step 1, under the criteria's lock: not searched again
                let resource = entry
                    .resource
                    .ok_or_else(|| Error::Invalid("PUT needs a resource".to_owned()))?;
                let checked = Checked::new(ctx, resource, resource_type)?;
                update::update_matched(
                    conn,
                    ctx,
                    access,
                    resource_type,
                    criteria,
                    id,
                    current.clone(),
                    checked,
                    *if_match,
                )
                .await
            }
            _ => run(conn, ctx, access, entry).await,
        };
        match outcome {
            Ok(outcome) => responses.push((index, Ok(outcome))),
            Err(error) => return Err(entry_error(index, error)),
        }
    }
    flush(conn, ctx, access, &mut pending, &mut responses).await?;
    responses.sort_by_key(|(index, _)| *index);
    Ok(responses)
}

/// Writes a resource a conditional update creates, within the token's scope (else 403 and
/// the transaction rolls back).
async fn create_checked(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    resource_type: &ResourceType,
    id: &ResourceId,
    current: Option<&store::Current>,
    resource: Json,
) -> Result<Outcome> {
    access.allowed(Permission::Create, resource_type.as_str())?;
    let outcome =
        store_version(conn, ctx, resource_type, id, current, resource, Method::Put).await?;
    access
        .check(
            conn,
            &ctx.base_url,
            Permission::Create,
            resource_type.as_str(),
            id.as_str(),
        )
        .await?;
    Ok(outcome)
}

/// Writes the pending creates and records their responses.
async fn flush(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    pending: &mut Vec<(usize, PreparedVersion, Vec<Issue>)>,
    responses: &mut Vec<(usize, Result<Outcome>)>,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let (versions, answers): (Vec<PreparedVersion>, Vec<(usize, Vec<Issue>)>) = pending
        .drain(..)
        .map(|(index, version, issues)| (version, (index, issues)))
        .unzip();
    store_new_versions(conn, &versions).await?;
    // what was written must be within the token's scope (else the transaction rolls back)
    for ((index, _), version) in answers.iter().zip(&versions) {
        access
            .check(
                conn,
                &ctx.base_url,
                Permission::Create,
                version.resource_type.as_str(),
                version.id.as_str(),
            )
            .await
            .map_err(|e| entry_error(*index, e))?;
    }
    responses.extend(
        answers
            .into_iter()
            .zip(versions)
            .map(|((index, issues), version)| {
                (index, Ok(version.outcome(ctx).with_issues(issues)))
            }),
    );
    Ok(())
}

fn set_id(resource: &mut Json, id: &ResourceId) {
    if let Some(object) = resource.as_object_mut() {
        object.insert("id".into(), Json::String(id.as_str().into()));
    }
}

/// Runs one entry on its own (batch entries, and transaction entries without ids to assign).
async fn run(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    entry: Entry,
) -> Result<Outcome> {
    match entry.request {
        Request::Create {
            resource_type,
            if_none_exist,
        } => {
            let resource = entry
                .resource
                .ok_or_else(|| Error::Invalid("POST needs a resource".to_owned()))?;
            create::create(
                conn,
                ctx,
                access,
                &resource_type,
                Checked::new(ctx, resource, &resource_type)?,
                if_none_exist.as_deref(),
            )
            .await
        }
        Request::Update {
            resource_type,
            id,
            if_match,
        } => {
            let resource = entry
                .resource
                .ok_or_else(|| Error::Invalid("PUT needs a resource".to_owned()))?;
            let checked = Checked::new(ctx, resource, &resource_type)?;
            update::update(conn, ctx, access, &resource_type, &id, checked, if_match).await
        }
        Request::ConditionalUpdate {
            resource_type,
            criteria,
            if_match,
        } => {
            let resource = entry
                .resource
                .ok_or_else(|| Error::Invalid("PUT needs a resource".to_owned()))?;
            update::conditional_update(
                conn,
                ctx,
                access,
                &resource_type,
                &criteria,
                Checked::new(ctx, resource, &resource_type)?,
                if_match,
            )
            .await
        }
        Request::Patch {
            resource_type,
            id,
            if_match,
        } => {
            let document = patch_document(entry.resource.as_ref())?;
            patch::patch(conn, ctx, access, &resource_type, &id, &document, if_match).await
        }
        Request::ConditionalPatch {
            resource_type,
            criteria,
            if_match,
        } => {
            let document = patch_document(entry.resource.as_ref())?;
            patch::conditional_patch(
                conn,
                ctx,
                access,
                &resource_type,
                &criteria,
                &document,
                if_match,
            )
            .await
        }
        Request::Delete { resource_type, id } => {
            delete::delete(conn, ctx, access, &resource_type, &id).await
        }
        Request::ConditionalDelete {
            resource_type,
            criteria,
        } => delete::conditional_delete(conn, ctx, access, &resource_type, &criteria).await,
        Request::Read { resource_type, id } => {
            read::read(conn, ctx, access, &resource_type, &id).await
        }
        Request::VRead {
            resource_type,
            id,
            version,
        } => read::vread(conn, ctx, access, &resource_type, &id, version).await,
        Request::Search {
            resource_type,
            query,
        } => {
            let scope = search::Scope::Type(&resource_type);
            let request =
                search::SearchRequest::parse(ctx, &scope, &query, search::Handling::Lenient)?;
            search::search(conn, ctx, access, &scope, request).await
        }
    }
}

/// The patch a PATCH entry carries: a FHIRPath Patch is the entry's Parameters resource; a
/// JSON Patch travels as a Binary resource with base64 `data`.
fn patch_document(resource: Option<&Json>) -> Result<PatchDocument> {
    use base64::Engine;
    let resource = resource.ok_or_else(|| Error::Invalid("PATCH needs a resource".to_owned()))?;
    let object = resource
        .as_object()
        .ok_or_else(|| Error::Invalid("PATCH entry resource must be an object".to_owned()))?;
    match get_str(object, "resourceType") {
        Some("Parameters") => PatchDocument::fhirpath(resource),
        Some("Binary") => {
            if let Some(content_type) = get_str(object, "contentType")
                && content_type.split(';').next().map(str::trim) != Some("application/json-patch+json")
            {
                return Err(Error::NotSupported(format!(
                    "a Binary in a PATCH entry must hold application/json-patch+json, not {content_type}"
                )));
            }
            let data = get_str(object, "data").ok_or_else(|| {
                Error::Invalid("the Binary of a PATCH entry has no data".to_owned())
            })?;
            let body = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| {
                    Error::Invalid(format!(
                        "the Binary data of a PATCH entry is not base64: {e}"
                    ))
                })?;
            PatchDocument::json_patch(&body)
        }
        _ => Err(Error::NotSupported(
            "a PATCH entry must carry a Parameters resource (FHIRPath Patch) or a Binary holding a JSON Patch"
                .to_owned(),
        )),
    }
}

fn collect_conditional_references(value: &Json, out: &mut Vec<String>) {
    match value {
        Json::Object(object) => {
            for entry in object {
                if entry.key.as_str() == "reference"
                    && let Some(reference) = entry.value.as_str()
                    && reference.contains('?')
                    && !reference.contains("://")
                {
                    out.push(reference.to_owned());
                }
                collect_conditional_references(&entry.value, out);
            }
        }
        Json::Array(items) => items
            .iter()
            .for_each(|item| collect_conditional_references(item, out)),
        _ => {}
    }
}

/// Rewrites `reference` values that name another entry's fullUrl or a resolved conditional
/// reference, and any string that is exactly a `urn:uuid:`/`urn:oid:` fullUrl of an entry.
fn rewrite_references(
    value: &mut Json,
    replacements: &HashMap<String, String>,
    conditional: &HashMap<String, String>,
) {
    match value {
        Json::Object(object) => {
            for (key, member) in object.iter_mut() {
                let is_reference = key.as_str() == "reference";
                match member {
                    Json::String(text) => {
                        if let Some(new) =
                            replacement(text.as_str(), is_reference, replacements, conditional)
                        {
                            *text = new.as_str().into();
                        }
                    }
                    other => rewrite_references(other, replacements, conditional),
                }
            }
        }
        Json::Array(items) => {
            for item in items.iter_mut() {
                match item {
                    Json::String(text) => {
                        if let Some(new) =
                            replacement(text.as_str(), false, replacements, conditional)
                        {
                            *text = new.as_str().into();
                        }
                    }
                    other => rewrite_references(other, replacements, conditional),
                }
            }
        }
        _ => {}
    }
}

/// The new value of a string: a `reference` naming an entry or a resolved conditional
/// reference (keeping any `#fragment`), or any string that is a `urn:` fullUrl of an entry.
fn replacement(
    current: &str,
    is_reference: bool,
    replacements: &HashMap<String, String>,
    conditional: &HashMap<String, String>,
) -> Option<String> {
    if !is_reference && !current.starts_with("urn:") {
        return None;
    }
    let (base, fragment) = match current.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (current, None),
    };
    let new = replacements.get(base).or_else(|| {
        if is_reference {
            conditional.get(base)
        } else {
            None
        }
    })?;
    Some(match fragment {
        Some(fragment) => format!("{new}#{fragment}"),
        None => new.clone(),
    })
}

fn status_line(status: u16) -> String {
    let reason = actix_web::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("{status} {reason}")
}

/// An entry's `response` in a batch or transaction response: status line, location, ETag
/// and last-modified of its outcome.
pub(crate) fn entry_response(outcome: &Outcome) -> serde_json::Value {
    let mut response = json!({"status": status_line(outcome.status)});
    if let Some(location) = &outcome.location {
        response["location"] = json!(location);
    }
    if let Some(version) = outcome.version {
        response["etag"] = json!(version.etag());
    }
    if let Some(modified) = outcome.last_modified {
        response["lastModified"] = json!(modified.to_fhir());
    }
    response
}

fn response_bundle(
    bundle_type: &str,
    responses: Vec<(usize, Result<Outcome>)>,
    preference: ReturnPreference,
) -> Outcome {
    let mut bundle = BundleWriter::new(bundle_type);
    let mut touched = Vec::new();
    for (_, result) in responses {
        match result {
            Ok(outcome) => {
                touched.extend(outcome.touched.iter().cloned());
                let mut response = entry_response(&outcome);
                let resource: Option<String> = match (&outcome.body, preference) {
                    (Body::Resource(text), ReturnPreference::Representation) => Some(text.clone()),
                    (Body::Bundle(text), _) => Some(text.clone()),
                    (Body::Json(value), _) if value["resourceType"] != "OperationOutcome" => {
                        Some(value.to_string())
                    }
                    (Body::Json(value), _) => {
                        response["outcome"] = value.clone();
                        None
                    }
                    _ => None,
                };
                if !outcome.issues.is_empty() && response.get("outcome").is_none() {
                    response["outcome"] = validation_outcome(&outcome.issues);
                }
                bundle.entry_with(None, resource.as_deref(), &json!({"response": response}));
            }
            Err(error) => {
                use actix_web::ResponseError;
                let response = json!({"status": status_line(error.status_code().as_u16()), "outcome": error.operation_outcome()});
                bundle.entry_with(None, None, &json!({"response": response}));
            }
        }
    }
    Outcome::bundle(bundle.finish()).touching(touched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use json_syntax::Parse;

    #[test]
    fn references_to_entries_are_rewritten() {
        let (mut resource, _) = Json::parse_str(
            r#"{"resourceType":"Observation","subject":{"reference":"urn:uuid:1"},"performer":[{"reference":"Practitioner?identifier=x|1"}],"focus":[{"reference":"Patient/keep"}],"note":[{"text":"urn:uuid:1"}]}"#,
        )
        .expect("json");
        let replacements = HashMap::from([("urn:uuid:1".to_owned(), "Patient/abc".to_owned())]);
        let conditional = HashMap::from([(
            "Practitioner?identifier=x|1".to_owned(),
            "Practitioner/p1".to_owned(),
        )]);
        let mut pending = Vec::new();
        collect_conditional_references(&resource, &mut pending);
        assert_eq!(pending, vec!["Practitioner?identifier=x|1"]);
        rewrite_references(&mut resource, &replacements, &conditional);
        let text = crate::resource::to_text(&resource);
        assert!(
            text.contains(r#""subject":{"reference":"Patient/abc"}"#),
            "{text}"
        );
        assert!(text.contains(r#""reference":"Practitioner/p1""#), "{text}");
        assert!(text.contains(r#""reference":"Patient/keep""#), "{text}");
    }
}
