//! The audit trail (issue 7; PRODUCT.md promise 7): an `AuditEvent` for every interaction
//! with the FHIR API, stored as a resource like any other, so that each is a leaf of the
//! anchored log and `$proof` proves it was neither changed nor removed.
//!
//! - **What is recorded**, after IHE Basic Audit Log Patterns (BALP): the interaction
//!   (`subtype`, a FHIR restful-interaction code or the operation's name, and `action`), when,
//!   the outcome (with the OperationOutcome's text when it failed), the user and the app as
//!   agents (the requestor first), the gateway as the source, the purpose of use (flagged
//!   `BTG` for break-the-glass), an entity for every resource read or written (by id and
//!   version, a search's matches and includes among them), one for every patient whose
//!   compartment holds them (for a version written, also those of the version it
//!   replaced: an update can move a resource from one patient's record to another's), and a
//!   search's query. For a decision consent made
//!   ([`crate::consent::Gate::Grants`]) about what is served (not a write), the basis: the
//!   chain block whose state the index held and, per patient, the grants (`ConsentRegistry`
//!   ids) that covered the access, with what an auditor needs to check them on chain alone
//!   (`fhir-anchor consent-basis`): the patient's wallet and the types served.
//! - **Durable before the answer**: the middleware ([`crate::startup`]) hands each record to
//!   the [`AuditLog`], a group-commit writer that stores whatever has queued up in one
//!   transaction and only then lets the responses go out (`audit.writers` such
//!   transactions at once, so that a batch waiting for its commit does not hold up the
//!   next). An interaction whose record cannot be stored is answered 503, not served (fail
//!   closed). A crash loses only requests that were never answered.
//! - **Written by the gateway only**: clients cannot create, update, patch or delete an
//!   AuditEvent (405, [`refuse_client_write`]).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use sqlx::{AnyConnection, Row as _};
use tokio::sync::{mpsc, oneshot};

use crate::access::{Access, Actor};
use crate::consent::Gate;
use crate::error::{Error, Result};
use crate::interaction::{Context, Method, PreparedVersion, store_new_versions};
use crate::model::{Instant, ResourceId, ResourceType, VersionId};
use crate::store::Store;
use crate::store::bulk;
use crate::store::search::{Bind, Sql};

/// The resource type of audit records.
pub const AUDIT_EVENT: &str = "AuditEvent";

/// Most records stored in one transaction.
const MAX_BATCH: usize = 256;

/// Most resources one record names when an interaction touches very many (a Bulk Data
/// export's file is recorded in several).
const MAX_ENTITIES: usize = 1_000;

/// Pairs (type, id) per statement when looking up the patients of touched resources.
const PAIRS_PER_LOOKUP: usize = 250;

/// A resource an interaction read or wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    pub resource_type: String,
    pub id: String,
    pub version: Option<i64>,
    /// The interaction wrote `version`: the version before it (if any) was the resource
    /// too, so the patients it was about are named as well (an update can move a resource
    /// from one patient's record to another's).
    pub written: bool,
}

impl Touched {
    pub fn version(resource_type: &str, id: &str, version: VersionId) -> Touched {
        Touched::row(resource_type, id, version.get())
    }

    pub fn row(resource_type: &str, id: &str, version: i64) -> Touched {
        Touched {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
            version: Some(version),
            written: false,
        }
    }

    /// `version` of `resource_type/id`, written by the interaction.
    pub fn written(resource_type: &str, id: &str, version: VersionId) -> Touched {
        Touched {
            written: true,
            ..Touched::version(resource_type, id, version)
        }
    }
}

/// The resources a response served or wrote (a response extension set by
/// [`crate::rest::respond`], read by the audit middleware).
#[derive(Debug, Clone)]
pub struct TouchedList(pub Vec<Touched>);

/// What went wrong, as the client was told (a response extension set by the error
/// response).
#[derive(Debug, Clone)]
pub struct Failure(pub String);

/// What the audit middleware knows of a request before it is served (a request extension):
/// a write's handler builds its record from it and stores it in the write's own transaction
/// ([`store_in`]), then marks the response [`Recorded`].
#[derive(Debug, Clone)]
pub struct Pending {
    pub interaction: Interaction,
    /// A search's query string.
    pub query: Option<String>,
    /// The client's network address.
    pub address: Option<String>,
}

impl Pending {
    /// The record of the request served to `access`, answered `status` having touched
    /// `touched`.
    pub fn record(&self, access: &Access, status: u16, touched: Vec<Touched>) -> Record {
        self.record_as(self.interaction.clone(), access, status, touched)
    }

    /// The same, as another interaction (a batch's entry).
    pub fn record_as(
        &self,
        interaction: Interaction,
        access: &Access,
        status: u16,
        touched: Vec<Touched>,
    ) -> Record {
        Record {
            recorded: Instant::now(),
            interaction,
            status,
            failure: None,
            who: Some(Who::of(access)),
            touched,
            query: self.query.clone(),
            address: self.address.clone(),
        }
    }
}

/// A response whose record was stored in its write's transaction, so the middleware stores
/// none (a response extension).
#[derive(Debug, Clone, Copy)]
pub struct Recorded;

/// Who made a request (a request extension set by the [`Access`] extractor).
#[derive(Debug, Clone)]
pub struct Who {
    actor: Actor,
    client_id: Option<String>,
    jti: Option<String>,
    purpose_of_use: String,
    break_glass: bool,
    /// For a consent-gated request: the grantee ids it acts as, the index's block and the
    /// last block whose grants counted.
    consent: Option<ConsentBasis>,
    /// For a consent change read from the chain: the wallet that made it (the patient's),
    /// with its transaction and block.
    wallet: Option<OnChain>,
}

/// Where a change read from the chain was made.
#[derive(Debug, Clone)]
struct OnChain {
    wallet: String,
    tx: String,
    block: i64,
}

#[derive(Debug, Clone)]
struct ConsentBasis {
    grantees: Vec<String>,
    block: i64,
    block_hash: String,
    chain_id: i64,
    registry: String,
    confirmed_through: i64,
    now_secs: i64,
}

impl Who {
    /// The party a token was issued to (the token endpoint's record).
    pub fn of_token(claims: &crate::auth::claims::AccessClaims) -> Who {
        let access =
            Access::from_claims(claims.clone(), None).unwrap_or_else(|_| Access::operator(None));
        Who {
            purpose_of_use: String::new(),
            ..Who::of(&access)
        }
    }

    /// A user who signed in or out (no app, no token).
    pub fn user(kind: crate::auth::claims::UserKind, id: &str, fhir_user: Option<&str>) -> Who {
        Who {
            actor: Actor::User {
                kind,
                id: id.to_owned(),
                fhir_user: fhir_user.map(str::to_owned),
            },
            client_id: None,
            jti: None,
            purpose_of_use: String::new(),
            break_glass: false,
            consent: None,
            wallet: None,
        }
    }

    pub fn of(access: &Access) -> Who {
        Who {
            actor: access.actor.clone(),
            client_id: access.client_id.clone(),
            jti: access.jti.clone(),
            purpose_of_use: access.purpose_of_use.clone(),
            break_glass: access.break_glass,
            consent: match &access.consent {
                Gate::Grants(grants) => Some(ConsentBasis {
                    grantees: grants.grantees.clone(),
                    block: grants.block,
                    block_hash: grants.block_hash.clone(),
                    chain_id: grants.chain_id,
                    registry: grants.registry.clone(),
                    confirmed_through: grants.confirmed_through,
                    now_secs: grants.now_secs,
                }),
                Gate::Open | Gate::Stale(_) => None,
            },
            wallet: None,
        }
    }

    /// The wallet that made a consent change on chain, in transaction `tx` of `block`.
    fn on_chain(wallet: &str, tx: &str, block: i64) -> Who {
        Who {
            actor: Actor::Client,
            client_id: None,
            jti: None,
            purpose_of_use: String::new(),
            break_glass: false,
            consent: None,
            wallet: Some(OnChain {
                wallet: wallet.to_owned(),
                tx: tx.to_owned(),
                block,
            }),
        }
    }
}

/// One interaction to record.
#[derive(Debug, Clone)]
pub struct Record {
    pub recorded: Instant,
    /// The interaction: a restful-interaction code, or an operation's name (`$export`).
    pub interaction: Interaction,
    pub status: u16,
    /// The OperationOutcome's text, when the interaction failed.
    pub failure: Option<String>,
    /// `None` when the request was refused before its token was accepted.
    pub who: Option<Who>,
    pub touched: Vec<Touched>,
    /// A search's query string (`entity.query`).
    pub query: Option<String>,
    /// The client's network address.
    pub address: Option<String>,
}

/// What kind of interaction a request was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interaction {
    /// A FHIR restful interaction (`read`, `search-type`, `create`, ...).
    Rest(&'static str),
    /// An operation (`$export`, `$proof`, ...).
    Operation(String),
    /// An HL7 v2 message received over MLLP: its trigger event (table 0003, e.g. `A01`).
    Message(String),
    /// A request to the authorization server: a sign-in or sign-out, a token asked for
    /// (issued or refused), revoked or introspected, an app authorized, a client registered,
    /// a wallet bound (the endpoint, as [`Interaction::of`] names it).
    Auth(&'static str),
    /// The files of a Bulk Data export, as they are written (each file's resources).
    Export,
    /// A batch of `fhir-gateway import` (NDJSON), as it is written.
    Import,
    /// `fhir-gateway erase` of a resource (crypto-shredding), as it is done.
    Erase,
    /// A consent grant or revocation relayed to the chain (`grant`, `revoke`), or a read of
    /// the consent index (`grants`, `break-glass`).
    Consent(&'static str),
}

impl Interaction {
    /// The interaction of a request to the FHIR API, from its method and route pattern
    /// (relative to the FHIR base); `None` for what is not audited (`metadata`, CORS
    /// preflight).
    pub fn of(method: &str, route: &str, path: &str) -> Option<Interaction> {
        use Interaction::{Operation, Rest};
        if method == "OPTIONS" {
            return None;
        }
        let segments: Vec<&str> = route.split('/').filter(|s| !s.is_empty()).collect();
        if let Some(interaction) = Interaction::of_auth(method, &segments) {
            return interaction;
        }
        if let Some(operation) = path.rsplit('/').next().filter(|last| last.starts_with('$')) {
            return Some(Operation(operation.to_owned()));
        }
        Some(match (method, segments.as_slice()) {
            (_, ["metadata"]) => return None,
            ("GET", []) | ("POST", ["_search"]) => Rest("search-system"),
            ("POST", []) => Rest("batch"),
            ("GET", ["_history"]) => Rest("history-system"),
            ("GET", ["{type}"]) | ("POST", ["{type}", "_search"]) => Rest("search-type"),
            ("GET", ["{type}", "_history"]) => Rest("history-type"),
            ("GET", ["{type}", "{id}"]) => Rest("read"),
            ("GET", ["{type}", "{id}", "_history"]) => Rest("history-instance"),
            ("GET", ["{type}", "{id}", "_history", "{vid}"]) => Rest("vread"),
            ("GET", ["{type}", "{id}", "{compartment_type}"]) => Rest("search-type"),
            ("POST", ["{type}"]) => Rest("create"),
            ("PUT", _) => Rest("update"),
            ("PATCH", _) => Rest("patch"),
            ("DELETE", _) => Rest("delete"),
            _ => Rest("operation"),
        })
    }

    /// The interaction of a request to the authorization server or the consent API
    /// (`Some(None)`: not recorded: discovery documents, scripts and the pages of the
    /// sign-in flow, whose decisions are recorded when they are posted); `None` for the
    /// FHIR API.
    fn of_auth(method: &str, segments: &[&str]) -> Option<Option<Interaction>> {
        use Interaction::{Auth, Consent};
        let interaction = match (method, segments) {
            (_, [".well-known", ..]) => None,
            (
                "GET",
                [
                    "auth",
                    "siwe.js" | "consent.js" | "authorize" | "approve" | "ehr-launch" | "link",
                ],
            ) => None,
            ("POST", ["auth", "sign-in"] | ["auth", "siwe", "sign-in"]) => Some(Auth("login")),
            ("POST", ["auth", "sign-out"]) => Some(Auth("logout")),
            ("POST", ["auth", "token"]) => Some(Auth("token")),
            ("POST", ["auth", "revoke"]) => Some(Auth("revoke")),
            ("POST", ["auth", "introspect"]) => Some(Auth("introspect")),
            ("POST", ["auth", "authorize"]) => Some(Auth("authorize")),
            ("POST", ["auth", "approve"]) => Some(Auth("approve")),
            ("POST", ["auth", "approve", "consent"]) => Some(Auth("consent-request")),
            ("POST", ["auth", "ehr-launch"]) => Some(Auth("ehr-launch")),
            ("POST", ["auth", "siwe", "message"]) => Some(Auth("siwe-message")),
            ("POST", ["auth", "register"]) => Some(Auth("register")),
            (_, ["auth", "clients", ..]) => Some(Auth("clients")),
            ("POST", ["auth", "link"]) => Some(Auth("link")),
            (_, ["auth", "patients", _, "link-codes"]) => Some(Auth("link-code")),
            (_, ["auth", "patients", _, "binding"]) => Some(Auth("binding")),
            (_, ["auth", ..]) => Some(Auth("auth")),
            ("POST", ["consent", "grants"]) => Some(Consent("grant")),
            ("POST", ["consent", "revocations"]) => Some(Consent("revoke")),
            ("POST", ["consent", "grant-request"]) => Some(Consent("grant-request")),
            ("POST", ["consent", "revoke-request"]) => Some(Consent("revoke-request")),
            (_, ["consent", "grants"]) => Some(Consent("grants")),
            (_, ["consent", "break-glass"]) => Some(Consent("break-glass")),
            (_, ["consent", ..]) => Some(Consent("consent")),
            _ => return None,
        };
        Some(interaction)
    }

    /// The BALP `action`: C, R, U, D or E (execute: searches, operations, Bundles).
    fn action(&self) -> &'static str {
        match self {
            Interaction::Rest("create") => "C",
            Interaction::Rest("read" | "vread" | "history-instance" | "history-type")
            | Interaction::Rest("history-system") => "R",
            Interaction::Rest("update" | "patch") => "U",
            Interaction::Rest("delete") => "D",
            Interaction::Consent("grants" | "break-glass") => "R",
            Interaction::Consent("grant" | "chain-grant") => "C",
            Interaction::Consent("revoke" | "chain-revoke") => "D",
            Interaction::Export => "R",
            Interaction::Import => "C",
            Interaction::Erase => "D",
            _ => "E",
        }
    }
}

/// The resource an instance-level request names (`{type}/{id}...` after the FHIR base), for
/// the record of a request that failed before touching it.
pub fn requested(route: &str, path: &str) -> Option<Touched> {
    let route: Vec<&str> = route.split('/').filter(|s| !s.is_empty()).collect();
    let path: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // a pattern's variables are whole segments, so the two line up
    let at = route.iter().position(|s| *s == "{type}")?;
    let (resource_type, id) = (path.get(at)?, path.get(at + 1)?);
    (route.get(at + 1) == Some(&"{id}")).then(|| Touched {
        resource_type: (*resource_type).to_owned(),
        id: (*id).to_owned(),
        version: None,
        written: false,
    })
}

/// Refuses a client's write of an AuditEvent: the trail is the gateway's own.
pub fn refuse_client_write(resource_type: &ResourceType, verb: &str) -> Result<()> {
    if resource_type.as_str() == AUDIT_EVENT {
        return Err(Error::MethodNotAllowed(format!(
            "AuditEvents are written by the gateway alone, one for every access; no client may {verb} one"
        )));
    }
    Ok(())
}

/// The group-commit writer of audit records (module documentation).
#[derive(Debug, Clone)]
pub struct AuditLog {
    sender: mpsc::Sender<Job>,
}

#[derive(Debug)]
struct Job {
    record: Record,
    done: oneshot::Sender<std::result::Result<(), String>>,
}

impl AuditLog {
    /// Starts the writer on the current runtime, storing up to `writers` batches at once;
    /// it stops when every [`AuditLog`] is dropped, after the batches it started.
    pub fn spawn(store: Store, ctx: Context, writers: usize) -> AuditLog {
        let (sender, receiver) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_batches(store, ctx, writers.max(1), receiver));
        AuditLog { sender }
    }

    /// Stores `record`; returns once it is committed.
    pub async fn record(&self, record: Record) -> anyhow::Result<()> {
        let (done, stored) = oneshot::channel();
        self.sender
            .send(Job { record, done })
            .await
            .map_err(|_| anyhow::anyhow!("the audit writer has stopped"))?;
        stored
            .await
            .map_err(|_| anyhow::anyhow!("the audit writer stopped before storing the record"))?
            .map_err(|e| anyhow::anyhow!(e))
    }
}

/// Collects the records queued meanwhile into a batch as soon as one of the `writers` is
/// free, and stores it on that writer: a batch waiting for its commit (the disk's flush)
/// does not hold up the next one, and the records that queue up while every writer is busy
/// make the next batch larger rather than wait one batch each.
async fn write_batches(
    store: Store,
    ctx: Context,
    writers: usize,
    mut receiver: mpsc::Receiver<Job>,
) {
    let free = std::sync::Arc::new(tokio::sync::Semaphore::new(writers));
    while let Some(first) = receiver.recv().await {
        let Ok(writer) = free.clone().acquire_owned().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (store, ctx) = (store.clone(), ctx.clone());
        tokio::spawn(async move {
            let records: Vec<&Record> = jobs.iter().map(|job| &job.record).collect();
            let result = store_records(&store, &ctx, &records)
                .await
                .map_err(|e| format!("{e:#}"));
            drop(writer);
            if let Err(error) = &result {
                tracing::error!(error = %error, records = jobs.len(), "audit records could not be stored");
            }
            for job in jobs {
                let _ = job.done.send(result.clone());
            }
        });
    }
}

/// Stores `records` as AuditEvents in one transaction.
pub async fn store_records(
    store: &Store,
    ctx: &Context,
    records: &[&Record],
) -> anyhow::Result<()> {
    let mut tx = store.begin().await?;
    store_in(&mut tx, ctx, records).await?;
    tx.commit().await?;
    Ok(())
}

/// Stores the records of resources written by `fhir-gateway import` (the operator's
/// command), at most [`MAX_ENTITIES`] to a record, in the caller's transaction.
pub async fn store_import(
    conn: &mut AnyConnection,
    ctx: &Context,
    touched: &[Touched],
) -> anyhow::Result<()> {
    let who = Who::of(&Access::operator(None));
    store_bulk(conn, ctx, Interaction::Import, &who, touched).await
}

/// Stores the record of `fhir-gateway erase` of `resource_type/id` (the operator's command)
/// in the erasure's transaction, before the content of its versions is removed (which is
/// where the patients it was about are read from).
pub async fn store_erasure(
    conn: &mut AnyConnection,
    ctx: &Context,
    resource_type: &str,
    id: &str,
) -> anyhow::Result<()> {
    let touched = Touched {
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
        version: None,
        written: false,
    };
    let who = Who::of(&Access::operator(None));
    store_bulk(conn, ctx, Interaction::Erase, &who, &[touched]).await
}

/// Stores a record of each consent change read from the chain (`chain-grant`,
/// `chain-revoke`), in the transaction that applies them to the index: the patient's
/// wallet as the agent, the grant as `Consent/[grant id]` and the Patient bound to the
/// wallet (if any), so a patient finds every change to their consent on their record,
/// whoever relayed it. Only the replica whose round applies the changes records them.
pub async fn store_chain_consent(
    conn: &mut AnyConnection,
    ctx: &Context,
    changes: &crate::store::consent::Changes,
) -> anyhow::Result<()> {
    // (what, grant id, transaction, block); the grant's wallet and the Patient bound to it
    // are read from the index, which this transaction has just brought up to date
    let made: Vec<(&'static str, i64, &str, i64)> = changes
        .grants
        .iter()
        .map(|g| ("chain-grant", g.grant_id, g.tx.as_str(), g.block))
        .chain(
            changes
                .revocations
                .iter()
                .map(|(id, block, tx)| ("chain-revoke", *id, tx.as_str(), *block)),
        )
        .collect();
    let postgres = crate::store::Backend::of(conn) == crate::store::Backend::Postgres;
    let mut sql = Sql::default();
    let ids = bulk::among(
        &mut sql,
        postgres,
        "g.grant_id",
        bulk::Kind::BigInt,
        made.iter().map(|(_, id, _, _)| Bind::Int(*id)),
    );
    sql.text = format!(
        "SELECT g.grant_id, g.patient_wallet, b.patient_id FROM consent_grant g \
         LEFT JOIN patient_wallet b ON b.wallet_address = g.patient_wallet WHERE {ids}"
    );
    let mut wallets: BTreeMap<i64, (String, Option<String>)> = BTreeMap::new();
    for row in sql.query().fetch_all(&mut *conn).await? {
        wallets.insert(
            row.try_get("grant_id")?,
            (row.try_get("patient_wallet")?, row.try_get("patient_id")?),
        );
    }
    let mut records = Vec::with_capacity(made.len());
    for (what, grant_id, tx, block) in made {
        let Some((wallet, patient)) = wallets.get(&grant_id) else {
            continue;
        };
        let mut touched = vec![Touched {
            resource_type: "Consent".to_owned(),
            id: grant_id.to_string(),
            version: None,
            written: false,
        }];
        touched.extend(patient.iter().map(|id| Touched {
            resource_type: "Patient".to_owned(),
            id: id.clone(),
            version: None,
            written: false,
        }));
        records.push(Record {
            recorded: Instant::now(),
            interaction: Interaction::Consent(what),
            status: 200,
            failure: None,
            who: Some(Who::on_chain(wallet, tx, block)),
            touched,
            query: None,
            address: None,
        });
    }
    let records: Vec<&Record> = records.iter().collect();
    store_in(conn, ctx, &records).await
}

/// Stores the records of a bulk interaction (an export's file, an import's batch) that
/// touched `touched`, at most [`MAX_ENTITIES`] to a record, in the caller's transaction.
pub async fn store_bulk(
    conn: &mut AnyConnection,
    ctx: &Context,
    interaction: Interaction,
    who: &Who,
    touched: &[Touched],
) -> anyhow::Result<()> {
    let records: Vec<Record> = touched
        .chunks(MAX_ENTITIES)
        .map(|chunk| Record {
            recorded: Instant::now(),
            interaction: interaction.clone(),
            status: 200,
            failure: None,
            who: Some(who.clone()),
            touched: chunk.to_vec(),
            query: None,
            address: None,
        })
        .collect();
    let records: Vec<&Record> = records.iter().collect();
    store_in(conn, ctx, &records).await
}

/// Stores `records` as AuditEvents in the caller's transaction: a write stores its own
/// record this way, so that the two commit together or not at all.
pub async fn store_in(
    conn: &mut AnyConnection,
    ctx: &Context,
    records: &[&Record],
) -> anyhow::Result<()> {
    let touched: Vec<&Touched> = records.iter().flat_map(|r| &r.touched).collect();
    let mut patients = patients_of(conn, &touched).await?;
    add_previous_patients(conn, &touched, &mut patients).await?;
    let grants = grants_of(conn, records, &patients).await?;
    let audit_event = ResourceType::parse(AUDIT_EVENT)?;
    let mut prepared = Vec::with_capacity(records.len());
    for record in records {
        let event = audit_event_of(record, &patients, &grants, &ctx.base_url);
        // the tree converted as it is, not printed and parsed again
        let body = fhir_profiles::Json::from_serde_json(event);
        prepared.push(PreparedVersion::new(
            &audit_event,
            &ResourceId::generate(),
            None,
            body,
            Method::Post,
        )?);
    }
    store_new_versions(conn, &prepared).await?;
    Ok(())
}

/// `(type, id)` → the patients whose compartment holds it.
type Patients = BTreeMap<(String, String), BTreeSet<String>>;

/// The patients of each touched resource: a Patient is its own; a resource of a
/// compartment type is in the compartment of the Patients its compartment parameters
/// reference (as its row records them, or else its current index rows have them).
async fn patients_of(conn: &mut AnyConnection, touched: &[&Touched]) -> anyhow::Result<Patients> {
    let mut patients = Patients::new();
    let mut lookup: BTreeSet<(&str, &str)> = BTreeSet::new();
    for t in touched {
        if t.resource_type == "Patient" {
            patients
                .entry((t.resource_type.clone(), t.id.clone()))
                .or_default()
                .insert(t.id.clone());
        } else if !fhir_profiles::compartment::patient_compartment_params(&t.resource_type)
            .is_empty()
        {
            lookup.insert((&t.resource_type, &t.id));
        }
    }
    let lookup: Vec<(&str, &str)> = lookup.into_iter().collect();
    let postgres = crate::store::Backend::of(conn) == crate::store::Backend::Postgres;
    let per_statement = if postgres {
        lookup.len().max(1)
    } else {
        PAIRS_PER_LOOKUP
    };
    for chunk in lookup.chunks(per_statement) {
        let mut sql = Sql::default();
        // the compartment the row records (migration 0034), else its reference rows
        sql.text = format!(
            "WITH {} SELECT r.resource_type, r.id, r.compartment, x.param, x.target_id FROM k \
             JOIN resource r ON r.resource_type = k.t AND r.id = k.i \
             LEFT JOIN idx_reference x ON r.compartment IS NULL AND x.rkey = r.rkey \
             AND x.target_type = 'Patient' WHERE r.compartment <> '' OR x.rkey IS NOT NULL",
            keys_cte(&mut sql, postgres, chunk)
        );
        for row in sql.query().fetch_all(&mut *conn).await? {
            let resource_type: String = row.try_get("resource_type")?;
            if let Some(patient) = row.try_get::<Option<String>, _>("compartment")? {
                patients
                    .entry((resource_type, row.try_get("id")?))
                    .or_default()
                    .insert(patient);
                continue;
            }
            let param: String = row.try_get("param")?;
            let params = fhir_profiles::compartment::patient_compartment_params(&resource_type);
            if !params.contains(&param) {
                continue;
            }
            let Some(patient) = row.try_get::<Option<String>, _>("target_id")? else {
                continue;
            };
            patients
                .entry((resource_type, row.try_get("id")?))
                .or_default()
                .insert(patient);
        }
    }
    // a deleted resource has no index rows: its patients are those of its last version
    // with content (a deletion's record, an erasure's before the content goes)
    let unresolved: Vec<(&str, &str)> = lookup
        .into_iter()
        .filter(|(t, i)| !patients.contains_key(&((*t).to_owned(), (*i).to_owned())))
        .collect();
    for chunk in unresolved.chunks(per_statement) {
        let mut sql = Sql::default();
        sql.text = format!(
            "WITH {} SELECT r.resource_type, r.id, (SELECT v.body FROM resource_version v \
             WHERE v.rkey = r.rkey AND v.body IS NOT NULL ORDER BY v.version_id DESC LIMIT 1) \
             AS body FROM k JOIN resource r ON r.resource_type = k.t AND r.id = k.i \
             WHERE r.deleted = 1",
            keys_cte(&mut sql, postgres, chunk)
        );
        for row in sql.query().fetch_all(&mut *conn).await? {
            let (resource_type, id): (String, String) =
                (row.try_get("resource_type")?, row.try_get("id")?);
            let Some(body) = row.try_get::<Option<String>, _>("body")? else {
                continue;
            };
            let body = crate::resource::parse_json(body.as_bytes(), usize::MAX)?;
            let of = compartment_patients(&resource_type, &body);
            patients.entry((resource_type, id)).or_default().extend(of);
        }
    }
    Ok(patients)
}

/// Adds to `patients` those of the version before each version `touched` wrote: an update
/// that moves a resource from one patient's record to another's is on both records.
async fn add_previous_patients(
    conn: &mut AnyConnection,
    touched: &[&Touched],
    patients: &mut Patients,
) -> anyhow::Result<()> {
    let replaced: BTreeSet<(&str, &str, i64)> = touched
        .iter()
        .filter(|t| t.written && t.resource_type != "Patient")
        .filter(|t| {
            !fhir_profiles::compartment::patient_compartment_params(&t.resource_type).is_empty()
        })
        .filter_map(|t| match t.version {
            Some(v) if v > 1 => Some((t.resource_type.as_str(), t.id.as_str(), v - 1)),
            _ => None,
        })
        .collect();
    if replaced.is_empty() {
        return Ok(());
    }
    let postgres = crate::store::Backend::of(conn) == crate::store::Backend::Postgres;
    let replaced: Vec<(&str, &str, i64)> = replaced.into_iter().collect();
    let per_statement = if postgres {
        replaced.len()
    } else {
        PAIRS_PER_LOOKUP
    };
    for chunk in replaced.chunks(per_statement) {
        let mut sql = Sql::default();
        let rows = chunk.iter().map(|(t, i, v)| {
            [
                Bind::Text((*t).to_owned()),
                Bind::Text((*i).to_owned()),
                Bind::Int(*v),
            ]
        });
        let keys = bulk::rows_source(
            &mut sql,
            postgres,
            &[
                ("t", bulk::Kind::Text),
                ("i", bulk::Kind::Text),
                ("n", bulk::Kind::BigInt),
            ],
            rows,
        );
        sql.text = format!(
            "WITH k (t, i, n) AS ({keys}) SELECT r.resource_type, r.id, v.body FROM k \
             JOIN resource r ON r.resource_type = k.t AND r.id = k.i \
             JOIN resource_version v ON v.rkey = r.rkey AND v.version_id = k.n \
             WHERE v.body IS NOT NULL"
        );
        for row in sql.query().fetch_all(&mut *conn).await? {
            let (resource_type, id, body): (String, String, String) = (
                row.try_get("resource_type")?,
                row.try_get("id")?,
                row.try_get("body")?,
            );
            let body = crate::resource::parse_json(body.as_bytes(), usize::MAX)?;
            let of = compartment_patients(&resource_type, &body);
            patients.entry((resource_type, id)).or_default().extend(of);
        }
    }
    Ok(())
}

/// The patients whose compartment holds `body`, a resource of `resource_type`, read from its
/// content (a version whose index rows are gone).
fn compartment_patients(resource_type: &str, body: &fhir_profiles::Json) -> Vec<String> {
    let params = fhir_profiles::compartment::patient_compartment_params(resource_type);
    fhir_profiles::search::index_entries(resource_type, body)
        .into_iter()
        .filter_map(|entry| match entry.value {
            fhir_profiles::search::IndexValue::Reference {
                target_type: Some(target_type),
                target_id: Some(target_id),
                ..
            } if target_type == "Patient" && params.contains(&entry.param) => Some(target_id),
            _ => None,
        })
        .collect()
}

/// `k (t, i) AS (…)`: a CTE of resource keys (type, id), its values bound in `sql`: on
/// PostgreSQL one array per column (a statement of constant text, whose join with
/// `UNIQUE (resource_type, id)` the planner gets right, where a row-value `IN` list was
/// planned as a hash join over every Patient reference); on SQLite a `VALUES` list.
fn keys_cte(sql: &mut Sql, postgres: bool, keys: &[(&str, &str)]) -> String {
    let rows = keys
        .iter()
        .map(|(t, i)| [Bind::Text((*t).to_owned()), Bind::Text((*i).to_owned())]);
    let source = bulk::rows_source(
        sql,
        postgres,
        &[("t", bulk::Kind::Text), ("i", bulk::Kind::Text)],
        rows,
    );
    format!("k (t, i) AS ({source})")
}

/// One row of `consent_access`: a grant covering a patient's data of a type (or `*`), with
/// the wallet that signed it (the patient's on-chain identity, which an auditor compares with
/// the grant's `patient` on chain).
#[derive(Debug, Clone)]
struct GrantRow {
    patient_id: String,
    patient_wallet: String,
    grantee: String,
    purpose: String,
    resource_type: String,
    grant_id: i64,
    granted_block: i64,
    expires_at: i64,
}

/// The grants of the patients touched by consent-gated records.
async fn grants_of(
    conn: &mut AnyConnection,
    records: &[&Record],
    patients: &Patients,
) -> anyhow::Result<Vec<GrantRow>> {
    let mut wanted: BTreeSet<&str> = BTreeSet::new();
    for record in records {
        if record.who.as_ref().is_some_and(|w| w.consent.is_some()) {
            for t in &record.touched {
                if let Some(ids) = patients.get(&(t.resource_type.clone(), t.id.clone())) {
                    wanted.extend(ids.iter().map(String::as_str));
                }
            }
        }
    }
    let wanted: Vec<&str> = wanted.into_iter().collect();
    let mut rows = Vec::new();
    for chunk in wanted.chunks(PAIRS_PER_LOOKUP) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
        // audited: only placeholders are formatted in
        let sql = format!(
            "SELECT a.patient_id, g.patient_wallet, a.grantee, a.purpose, a.resource_type, a.grant_id, \
             a.granted_block, a.expires_at \
             FROM consent_access a JOIN consent_grant g ON g.grant_id = a.grant_id \
             WHERE a.patient_id IN ({}) ORDER BY a.grant_id",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *conn).await? {
            rows.push(GrantRow {
                patient_id: row.try_get("patient_id")?,
                patient_wallet: row.try_get("patient_wallet")?,
                grantee: row.try_get("grantee")?,
                purpose: row.try_get("purpose")?,
                resource_type: row.try_get("resource_type")?,
                grant_id: row.try_get("grant_id")?,
                granted_block: row.try_get("granted_block")?,
                expires_at: row.try_get("expires_at")?,
            });
        }
    }
    Ok(rows)
}

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// IHE's transaction codes (ITI-71: Get Access Token, ITI-102: Introspect Token).
const IHE_EVENT: &str = "urn:ihe:event-type-code";
/// The authorization server's other endpoints, by name.
const AUTH_ENDPOINT: &str = "urn:fhir-gateway:auth";
/// The operator's commands (`fhir-gateway import`).
const COMMAND: &str = "urn:fhir-gateway:command";
/// The consent API's actions.
const CONSENT_ACTION: &str = "urn:fhir-gateway:consent";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
/// The extension carrying a consent decision's basis (documented in README, "Audit").
pub const CONSENT_BASIS_EXTENSION: &str = "urn:fhir-gateway:consent-basis";

/// The AuditEvent of `record` (BALP's RESTful patterns; module documentation).
fn audit_event_of(
    record: &Record,
    patients: &Patients,
    grants: &[GrantRow],
    base_url: &str,
) -> Value {
    let (subtype_system, subtype_code) = match &record.interaction {
        Interaction::Rest(code) => (
            "http://hl7.org/fhir/restful-interaction",
            (*code).to_owned(),
        ),
        Interaction::Operation(name) => (
            "urn:ietf:rfc:3986",
            format!(
                "{base_url}/OperationDefinition/{}",
                name.trim_start_matches('$')
            ),
        ),
        Interaction::Message(event) => (
            "http://terminology.hl7.org/CodeSystem/v2-0003",
            event.clone(),
        ),
        Interaction::Auth("login") => (DCM, "110122".to_owned()),
        Interaction::Auth("logout") => (DCM, "110123".to_owned()),
        Interaction::Auth("token") => (IHE_EVENT, "ITI-71".to_owned()),
        Interaction::Auth("introspect") => (IHE_EVENT, "ITI-102".to_owned()),
        Interaction::Auth(endpoint) => (AUTH_ENDPOINT, (*endpoint).to_owned()),
        Interaction::Consent(what) => (CONSENT_ACTION, (*what).to_owned()),
        Interaction::Export => (
            "urn:ietf:rfc:3986",
            format!("{base_url}/OperationDefinition/export"),
        ),
        Interaction::Import => (COMMAND, "import".to_owned()),
        Interaction::Erase => (COMMAND, "erase".to_owned()),
    };
    let (outcome, description) = match record.status {
        // a refusal answered with a page (a sign-in form shown again with its error)
        200..=399 if record.failure.is_some() => ("4", record.failure.clone()),
        200..=399 => ("0", None),
        400..=499 => (
            "4",
            record
                .failure
                .clone()
                .or_else(|| Some(format!("refused ({})", record.status))),
        ),
        _ => (
            "8",
            record
                .failure
                .clone()
                .or_else(|| Some(format!("failed ({})", record.status))),
        ),
    };
    let mut event = json!({
        "resourceType": AUDIT_EVENT,
        "type": {"system": DCM, "code": "110112", "display": "Query"},
        "subtype": [{"system": subtype_system, "code": subtype_code}],
        "action": record.interaction.action(),
        "recorded": record.recorded.to_fhir(),
        "outcome": outcome,
        "source": {
            "observer": {"display": format!("FHIR gateway at {base_url}")},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}],
        },
    });
    if matches!(record.interaction, Interaction::Rest(code) if !code.starts_with("search")) {
        event["type"] = json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"});
    }
    match record.interaction {
        Interaction::Message(_) | Interaction::Import => {
            event["type"] = json!({"system": DCM, "code": "110107", "display": "Import"});
        }
        Interaction::Auth(_) => {
            event["type"] =
                json!({"system": DCM, "code": "110114", "display": "User Authentication"});
        }
        Interaction::Consent(_) => {
            event["type"] =
                json!({"system": CONSENT_ACTION, "code": "consent", "display": "Patient consent"});
        }
        Interaction::Export => {
            event["type"] = json!({"system": DCM, "code": "110106", "display": "Export"});
        }
        Interaction::Erase => {
            event["type"] = json!({"system": COMMAND, "code": "erase", "display": "Erasure (crypto-shredding)"});
        }
        Interaction::Rest(_) | Interaction::Operation(_) => {}
    }
    if let Some(description) = description {
        event["outcomeDesc"] = json!(description);
    }
    let who = record.who.as_ref();
    if let Some(who) = who.filter(|w| !w.purpose_of_use.is_empty()) {
        let mut purpose =
            vec![json!({"coding": [{"system": ACT_REASON, "code": who.purpose_of_use}]})];
        if who.break_glass {
            purpose.push(json!({"coding": [{"system": ACT_REASON, "code": "BTG", "display": "break the glass"}]}));
        }
        event["purposeOfEvent"] = json!(purpose);
    }
    event["agent"] = json!(agents(record, who));
    let mut entities = Vec::new();
    let mut record_patients: BTreeSet<&str> = BTreeSet::new();
    for t in &record.touched {
        let reference = match t.version {
            Some(v) => format!("{}/{}/_history/{v}", t.resource_type, t.id),
            None => format!("{}/{}", t.resource_type, t.id),
        };
        entities.push(json!({
            "what": {"reference": reference},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4", "display": "Domain Resource"},
        }));
        if let Some(ids) = patients.get(&(t.resource_type.clone(), t.id.clone())) {
            record_patients.extend(ids.iter().map(String::as_str));
        }
    }
    // consent gates what is served, not what is written: a write's record carries no basis
    let writes = match &record.interaction {
        Interaction::Message(_) | Interaction::Import | Interaction::Erase => true,
        Interaction::Operation(name) => name == "$hl7v2",
        Interaction::Rest(_) => matches!(record.interaction.action(), "C" | "U" | "D"),
        // an export discloses what consent let through; the authorization server and the
        // consent API serve no patient data
        Interaction::Export => false,
        Interaction::Auth(_) | Interaction::Consent(_) => true,
    };
    let basis = who.and_then(|w| w.consent.as_ref()).filter(|_| !writes);
    for patient in &record_patients {
        let mut entity = json!({
            "what": {"reference": format!("Patient/{patient}")},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
        });
        if let (Some(basis), Some(who)) = (basis, who) {
            let own = matches!(&who.actor, Actor::User { fhir_user: Some(u), .. } if u == &format!("Patient/{patient}"));
            let types: BTreeSet<&str> = record
                .touched
                .iter()
                .filter(|t| {
                    patients
                        .get(&(t.resource_type.clone(), t.id.clone()))
                        .is_some_and(|p| p.contains(*patient))
                })
                .map(|t| t.resource_type.as_str())
                .collect();
            let covering: BTreeSet<i64> = grants
                .iter()
                .filter(|g| {
                    g.patient_id == *patient
                        && basis.grantees.contains(&g.grantee)
                        && g.purpose == who.purpose_of_use
                        && (g.resource_type == "*" || types.contains(g.resource_type.as_str()))
                        && g.granted_block <= basis.confirmed_through
                        && (g.expires_at == 0 || g.expires_at > basis.now_secs)
                })
                .map(|g| g.grant_id)
                .collect();
            // what an auditor needs to check the grants on chain without the gateway
            // (`fhir-anchor consent-basis`): the patient's wallet (the grantor the grants
            // must name) and the types the access was about (the grants must open them)
            let mut detail =
                vec![json!({"type": "consentBlock", "valueString": basis.block.to_string()})];
            if let Some(grant) = grants.iter().find(|g| g.patient_id == *patient) {
                detail.push(json!({"type": "consentWallet", "valueString": grant.patient_wallet}));
            }
            for resource_type in &types {
                detail.push(json!({"type": "consentType", "valueString": resource_type}));
            }
            if own {
                detail.push(json!({"type": "consentBasis", "valueString": "own record"}));
            }
            for grant in &covering {
                detail.push(json!({"type": "consentGrant", "valueString": grant.to_string()}));
            }
            entity["detail"] = json!(detail);
        }
        entities.push(entity);
    }
    if let Some(query) = &record.query {
        use base64::Engine as _;
        entities.push(json!({
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
            "query": base64::engine::general_purpose::STANDARD.encode(query),
        }));
    }
    if !entities.is_empty() {
        event["entity"] = json!(entities);
    }
    if let Some(basis) = basis {
        event["extension"] = json!([{
            "url": CONSENT_BASIS_EXTENSION,
            "extension": [
                {"url": "block", "valueString": basis.block.to_string()},
                {"url": "blockHash", "valueString": basis.block_hash},
                {"url": "confirmedThrough", "valueString": basis.confirmed_through.to_string()},
                {"url": "chainId", "valueString": basis.chain_id.to_string()},
                {"url": "registry", "valueString": basis.registry},
            ],
        }]);
    }
    event
}

/// The agents: the user (the requestor) and the app, or the app alone (Backend Services),
/// or the operator; and the client's network address.
fn agents(record: &Record, who: Option<&Who>) -> Vec<Value> {
    let network = record
        .address
        .as_ref()
        .map(|address| json!({"address": address, "type": "2"}));
    let mut agents = Vec::new();
    if let Some(on_chain) = who.and_then(|w| w.wallet.as_ref()) {
        // a patient's wallet, acting on chain: its transaction is the authority
        agents.push(json!({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "code": "PAT"}]},
            "who": {"identifier": {"system": "urn:fhir-gateway:wallet", "value": on_chain.wallet}},
            "requestor": true,
            "policy": [
                format!("urn:fhir-gateway:chain-tx:{}", on_chain.tx),
                format!("urn:fhir-gateway:chain-block:{}", on_chain.block),
            ],
        }));
        return agents;
    }
    let app = |requestor: bool| {
        who.and_then(|w| w.client_id.as_ref()).map(|client| {
            let mut agent = json!({
                "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
                "who": {"identifier": {"system": "urn:fhir-gateway:client", "value": client}},
                "requestor": requestor,
            });
            if let Some(jti) = who.and_then(|w| w.jti.as_ref()) {
                agent["policy"] = json!([format!("urn:fhir-gateway:token:{jti}")]);
            }
            agent
        })
    };
    match who.map(|w| &w.actor) {
        Some(Actor::User {
            kind,
            id,
            fhir_user,
        }) => {
            let mut user = json!({
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "code": match kind {
                    crate::auth::claims::UserKind::Patient => "PAT",
                    crate::auth::claims::UserKind::Practitioner => "PROV",
                    crate::auth::claims::UserKind::Staff => "EMP",
                }}]},
                "who": {"identifier": {"system": "urn:fhir-gateway:user", "value": id}},
                "requestor": true,
            });
            if let Some(fhir_user) = fhir_user {
                user["who"]["reference"] = json!(fhir_user);
            }
            if let Some(network) = &network {
                user["network"] = network.clone();
            }
            agents.push(user);
            agents.extend(app(false));
        }
        Some(Actor::Client) => {
            let mut agent = app(true).unwrap_or_else(|| json!({"requestor": true}));
            if let Some(network) = &network {
                agent["network"] = network.clone();
            }
            agents.push(agent);
        }
        Some(Actor::Operator) => {
            let mut agent = json!({
                "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
                "who": {"display": "the operator (auth.required = false, or the operator's command line)"},
                "requestor": true,
            });
            if let Some(network) = &network {
                agent["network"] = network.clone();
            }
            agents.push(agent);
        }
        None => {
            let mut agent = json!({
                "who": {"display": "unidentified: the request carried no accepted token"},
                "requestor": true,
            });
            if let Some(network) = &network {
                agent["network"] = network.clone();
            }
            agents.push(agent);
        }
    }
    agents
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::claims::UserKind;

    fn record(who: Option<Who>, status: u16) -> Record {
        Record {
            recorded: Instant::now(),
            interaction: Interaction::Rest("search-type"),
            status,
            failure: (status >= 400).then(|| "Observation/x is not known".to_owned()),
            who,
            touched: vec![
                Touched::row("Observation", "o1", 3),
                Touched::row("Patient", "p1", 1),
            ],
            query: Some("subject=Patient/p1".to_owned()),
            address: Some("127.0.0.1".to_owned()),
        }
    }

    fn consented_user() -> Who {
        Who {
            actor: Actor::User {
                kind: UserKind::Practitioner,
                id: "u1".to_owned(),
                fhir_user: Some("Practitioner/7".to_owned()),
            },
            client_id: Some("app".to_owned()),
            jti: Some("t1".to_owned()),
            purpose_of_use: "TREAT".to_owned(),
            break_glass: true,
            consent: Some(ConsentBasis {
                grantees: vec!["0xg".to_owned()],
                block: 120,
                block_hash: format!("0x{}", "ab".repeat(32)),
                chain_id: 31_337,
                registry: format!("0x{}", "cd".repeat(20)),
                confirmed_through: 118,
                now_secs: 1_000,
            }),
            wallet: None,
        }
    }

    fn grant(id: i64, resource_type: &str, granted_block: i64, expires_at: i64) -> GrantRow {
        GrantRow {
            patient_id: "p1".to_owned(),
            patient_wallet: "0x00000000000000000000000000000000000000aa".to_owned(),
            grantee: "0xg".to_owned(),
            purpose: "TREAT".to_owned(),
            resource_type: resource_type.to_owned(),
            grant_id: id,
            granted_block,
            expires_at,
        }
    }

    #[test]
    fn audit_events_are_valid_r4_for_every_kind_of_agent_and_outcome() {
        let patients: Patients = [
            (
                ("Observation".to_owned(), "o1".to_owned()),
                BTreeSet::from(["p1".to_owned()]),
            ),
            (
                ("Patient".to_owned(), "p1".to_owned()),
                BTreeSet::from(["p1".to_owned()]),
            ),
        ]
        .into();
        let operator = Who::of(&Access::operator(None));
        for (who, status) in [
            (None, 401),
            (Some(operator), 200),
            (Some(consented_user()), 200),
            (Some(consented_user()), 403),
        ] {
            let event = audit_event_of(&record(who, status), &patients, &[], "http://h/fhir");
            let body = crate::resource::parse_json(event.to_string().as_bytes(), 64)
                .expect("as the test set up");
            let issues = crate::resource::validate(
                &body,
                &crate::config::Config::default().validation,
                None,
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
            assert!(
                issues.iter().all(|i| !matches!(
                    i.severity,
                    fhir_profiles::validate::IssueSeverity::Error
                        | fhir_profiles::validate::IssueSeverity::Fatal
                )),
                "{event}: {issues:?}"
            );
        }
    }

    #[test]
    fn the_consent_basis_names_the_grants_that_covered_the_access() {
        let patients: Patients = [(
            ("Observation".to_owned(), "o1".to_owned()),
            BTreeSet::from(["p1".to_owned()]),
        )]
        .into();
        let grants = [
            grant(1, "Observation", 100, 0),
            // not yet confirmed at the decision
            grant(2, "*", 119, 0),
            // expired
            grant(3, "*", 50, 900),
            // another type
            grant(4, "Condition", 50, 0),
            grant(5, "*", 10, 2_000),
        ];
        let mut record = record(Some(consented_user()), 200);
        record.touched.truncate(1);
        let event = audit_event_of(&record, &patients, &grants, "http://h/fhir");
        let patient = event["entity"]
            .as_array()
            .expect("as the test set up")
            .iter()
            .find(|e| e["what"]["reference"] == "Patient/p1")
            .expect("the patient entity");
        let granted: Vec<&str> = patient["detail"]
            .as_array()
            .expect("as the test set up")
            .iter()
            .filter(|d| d["type"] == "consentGrant")
            .map(|d| d["valueString"].as_str().expect("as the test set up"))
            .collect();
        assert_eq!(granted, vec!["1", "5"], "{event}");
        assert_eq!(patient["detail"][0]["valueString"], "120");
        let basis: Vec<(&str, &str)> = event["extension"][0]["extension"]
            .as_array()
            .expect("as the test set up")
            .iter()
            .filter_map(|p| Some((p["url"].as_str()?, p["valueString"].as_str()?)))
            .collect();
        let (hash, registry) = (
            format!("0x{}", "ab".repeat(32)),
            format!("0x{}", "cd".repeat(20)),
        );
        assert_eq!(
            basis,
            [
                ("block", "120"),
                ("blockHash", hash.as_str()),
                ("confirmedThrough", "118"),
                ("chainId", "31337"),
                ("registry", registry.as_str()),
            ],
            "{event}"
        );
        // what an auditor checks the grants against: the wallet, the types served
        let details: Vec<(&str, &str)> = patient["detail"]
            .as_array()
            .expect("as the test set up")
            .iter()
            .filter_map(|d| Some((d["type"].as_str()?, d["valueString"].as_str()?)))
            .filter(|(kind, _)| *kind == "consentWallet" || *kind == "consentType")
            .collect();
        assert_eq!(
            details,
            vec![
                (
                    "consentWallet",
                    "0x00000000000000000000000000000000000000aa"
                ),
                ("consentType", "Observation")
            ],
            "{event}"
        );
        // flagged as break-the-glass
        assert_eq!(event["purposeOfEvent"][1]["coding"][0]["code"], "BTG");

        // consent gates what is served: a write records no basis
        record.interaction = Interaction::Rest("update");
        let event = audit_event_of(&record, &patients, &grants, "http://h/fhir");
        assert!(event.get("extension").is_none(), "{event}");
        assert!(
            event["entity"]
                .as_array()
                .expect("as the test set up")
                .iter()
                .all(|e| e.get("detail").is_none()),
            "{event}"
        );
    }

    #[test]
    fn interactions_follow_the_route() {
        let of = |m, r, p| Interaction::of(m, r, p);
        assert_eq!(
            of("GET", "/{type}/{id}", "/fhir/Patient/1"),
            Some(Interaction::Rest("read"))
        );
        assert_eq!(
            of("GET", "/{type}", "/fhir/Patient"),
            Some(Interaction::Rest("search-type"))
        );
        assert_eq!(of("GET", "/metadata", "/fhir/metadata"), None);
        assert_eq!(
            of("GET", "/{type}/{id}/$proof", "/fhir/Patient/1/$proof"),
            Some(Interaction::Operation("$proof".to_owned()))
        );
        assert_eq!(
            of("DELETE", "/{type}/{id}", "/fhir/Patient/1"),
            Some(Interaction::Rest("delete"))
        );
        assert_eq!(
            requested(
                "/fhir/{type}/{id}/_history/{vid}",
                "/fhir/Patient/1/_history/2"
            ),
            Some(Touched {
                resource_type: "Patient".to_owned(),
                id: "1".to_owned(),
                version: None,
                written: false,
            })
        );
        assert_eq!(requested("/fhir/{type}", "/fhir/Patient"), None);
    }
}
