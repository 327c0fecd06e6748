//! The FHIR RESTful interactions (http.html), one module each, independent of HTTP so that
//! the REST handlers and the entries of a batch or transaction Bundle run the same code.
//!
//! Each interaction takes a database connection (a transaction for writes) and typed
//! inputs, and returns an [`Outcome`]: status, headers and body, which the REST layer turns
//! into an HTTP response and the Bundle layer into an entry's `response`.

pub mod capabilities;
pub mod create;
pub mod delete;
pub mod history;
pub mod patch;
pub mod proof;
pub mod read;
pub mod search;
pub mod transaction;
pub mod update;

use fhir_profiles::Json;
use fhir_profiles::search::{IndexEntry, index_entries_where};
use fhir_profiles::text::{Word, resource_words};
use fhir_profiles::validate::Issue;
use sqlx::AnyConnection;

use crate::audit::Touched;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::{Instant, ResourceId, ResourceType, VersionId};
use crate::resource;
use crate::store::{self, Current, StoredVersion, VersionWrite};

/// What every interaction needs to know about the server.
#[derive(Debug, Clone)]
pub struct Context {
    /// The FHIR base URL, without a trailing slash.
    pub base_url: String,
    pub config: Config,
}

impl Context {
    /// `[base]/[type]/[id]`
    pub fn resource_url(&self, resource_type: &str, id: &str) -> String {
        format!("{}/{resource_type}/{id}", self.base_url)
    }

    /// `[base]/[type]/[id]/_history/[vid]`
    pub fn version_url(&self, resource_type: &str, id: &str, version: VersionId) -> String {
        format!("{}/{resource_type}/{id}/_history/{version}", self.base_url)
    }
}

/// The body an interaction answers with.
#[derive(Debug, Clone)]
pub enum Body {
    None,
    /// A resource as stored (compact JSON text).
    Resource(String),
    /// A Bundle built as JSON text.
    Bundle(String),
    /// Any other JSON (an OperationOutcome, a CapabilityStatement).
    Json(serde_json::Value),
}

/// The result of an interaction.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: u16,
    pub location: Option<String>,
    pub version: Option<VersionId>,
    pub last_modified: Option<Instant>,
    pub body: Body,
    /// Warnings and information about the resource written (the second opinion of
    /// `resource::validate`), shown when the client asks for an OperationOutcome and in
    /// Bundle `entry.response.outcome`.
    pub issues: Vec<Issue>,
    /// The resources the interaction read or wrote, for its audit record
    /// ([`crate::audit`]).
    pub touched: Vec<Touched>,
    /// Whether the interaction's audit record was stored in its own transaction (so the
    /// audit middleware stores none).
    pub recorded: bool,
}

impl Outcome {
    pub fn json(status: u16, body: serde_json::Value) -> Outcome {
        Outcome {
            status,
            location: None,
            version: None,
            last_modified: None,
            body: Body::Json(body),
            issues: Vec::new(),
            touched: Vec::new(),
            recorded: false,
        }
    }

    /// A Bundle the server made (a search set, history, a transaction response): 200.
    pub fn bundle(bundle: String) -> Outcome {
        Outcome {
            status: 200,
            location: None,
            version: None,
            last_modified: None,
            body: Body::Bundle(bundle),
            issues: Vec::new(),
            touched: Vec::new(),
            recorded: false,
        }
    }

    /// A stored version as the answer to a read (200 with ETag and Last-Modified).
    pub fn version(stored: StoredVersion) -> Outcome {
        Outcome {
            status: 200,
            location: None,
            version: Some(stored.version_id),
            last_modified: Some(stored.last_updated),
            touched: vec![Touched::version(
                &stored.resource_type,
                &stored.id,
                stored.version_id,
            )],
            body: stored.body.map_or(Body::None, Body::Resource),
            issues: Vec::new(),
            recorded: false,
        }
    }

    /// This outcome, recording that it touched `touched` too.
    pub fn touching(mut self, touched: impl IntoIterator<Item = Touched>) -> Outcome {
        self.touched.extend(touched);
        self
    }

    /// This outcome with the issues found while checking the resource.
    pub fn with_issues(self, issues: Vec<Issue>) -> Outcome {
        Outcome { issues, ..self }
    }
}

/// How a version came to be, recorded with it (and shown in history as `request.method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// A new version, ready to be written: `id` and `meta` stamped, indexed, printed.
#[derive(Debug)]
pub(crate) struct PreparedVersion {
    resource_type: ResourceType,
    id: ResourceId,
    version: VersionId,
    last_updated: Instant,
    method: Method,
    text: String,
    index: Vec<IndexEntry>,
    words: Vec<Word>,
    leaf: anchor::Leaf,
    created: bool,
}

impl PreparedVersion {
    /// Assigns the version, stamps `id` and `meta`, indexes a checked resource and makes its
    /// log leaf (the content hash of the version exactly as it will be served).
    pub(crate) fn new(
        resource_type: &ResourceType,
        id: &ResourceId,
        current: Option<&Current>,
        mut body: Json,
        method: Method,
    ) -> Result<PreparedVersion> {
        let version = current.map_or(VersionId::FIRST, |c| c.version_id.next());
        let last_updated = Instant::now();
        resource::stamp(&mut body, id, version, last_updated);
        Ok(PreparedVersion {
            leaf: proof::leaf_of(&body)?,
            resource_type: resource_type.clone(),
            id: id.clone(),
            version,
            last_updated,
            method,
            index: index_entries_where(resource_type.as_str(), &body, |p| {
                crate::store::is_indexed(resource_type.as_str(), &p.code)
            }),
            // AuditEvents are found by their search parameters; `_text` and `_content`
            // over the access log are not a use case worth a row per word of every record
            words: if resource_type.as_str() == crate::audit::AUDIT_EVENT {
                Vec::new()
            } else {
                resource_words(&body)
            },
            text: resource::to_text(&body),
            created: current.is_none_or(|c| c.deleted),
        })
    }

    pub(crate) fn write(&self) -> VersionWrite<'_> {
        VersionWrite {
            resource_type: self.resource_type.as_str(),
            id: self.id.as_str(),
            version_id: self.version,
            last_updated: self.last_updated,
            method: self.method.as_str(),
            body: Some(&self.text),
            index: &self.index,
            words: &self.words,
            leaf: &self.leaf,
        }
    }

    /// The outcome of the write (201 for a new resource, 200 otherwise) with `Location` and
    /// `ETag`.
    pub(crate) fn outcome(self, ctx: &Context) -> Outcome {
        Outcome {
            status: if self.created { 201 } else { 200 },
            location: Some(ctx.version_url(
                self.resource_type.as_str(),
                self.id.as_str(),
                self.version,
            )),
            version: Some(self.version),
            last_modified: Some(self.last_updated),
            touched: vec![Touched::written(
                self.resource_type.as_str(),
                self.id.as_str(),
                self.version,
            )],
            body: Body::Resource(self.text),
            issues: Vec::new(),
            recorded: false,
        }
    }
}

/// Stores a new version of a checked resource: assigns the version, stamps `id` and `meta`,
/// indexes it and writes it, all inside the caller's transaction. Returns the outcome of a
/// write (201 for a new resource, 200 otherwise) with `Location` and `ETag`.
pub(crate) async fn store_version(
    conn: &mut AnyConnection,
    ctx: &Context,
    resource_type: &ResourceType,
    id: &ResourceId,
    current: Option<&Current>,
    body: Json,
    method: Method,
) -> Result<Outcome> {
    let prepared = PreparedVersion::new(resource_type, id, current, body, method)?;
    store::write_version(conn, current, &prepared.write()).await?;
    Ok(prepared.outcome(ctx))
}

/// Stores the first versions of new resources (ids that do not exist) in a few statements.
pub(crate) async fn store_new_versions(
    conn: &mut AnyConnection,
    prepared: &[PreparedVersion],
) -> Result<()> {
    let writes: Vec<VersionWrite<'_>> = prepared.iter().map(PreparedVersion::write).collect();
    store::write_new_versions(conn, &writes).await?;
    Ok(())
}

/// A resource body that passed [`check_body`] for its type, with the issues that were not
/// errors. Checked once, before the write's transaction: a retried transaction does not
/// check again, and a large body is checked off the async workers ([`crate::rest`]).
#[derive(Debug, Clone)]
pub struct Checked {
    pub body: Json,
    pub issues: Vec<Issue>,
}

impl Checked {
    pub fn new(ctx: &Context, body: Json, expected: &ResourceType) -> Result<Checked> {
        let issues = check_body(ctx, &body, expected)?;
        Ok(Checked { body, issues })
    }
}

/// Checks a resource body for a write: the right type, structurally valid, conforming to
/// the profiles it claims, and not a subset (`SUBSETTED` in `meta.tag`), which would
/// overwrite what it left out. Returns the issues that are not errors.
pub(crate) fn check_body(
    ctx: &Context,
    body: &Json,
    expected: &ResourceType,
) -> Result<Vec<Issue>> {
    let actual = resource::resource_type_of(body)?;
    if &actual != expected {
        return Err(Error::Invalid(format!(
            "the body is a {actual} but the request is for {expected}"
        )));
    }
    let issues = resource::validate(body, &ctx.config.validation, None)?;
    if fhir_profiles::subset::is_subsetted(body) {
        return Err(Error::Unprocessable(
            "the resource is tagged SUBSETTED: a subset of a resource cannot be stored".to_owned(),
        ));
    }
    Ok(issues)
}
