//! HL7 v2 intake (issue 6): messages from MLLP ([`mllp`]) and `POST [base]/$hl7v2` are
//! translated to a FHIR transaction Bundle by `fhir_profiles::v2` and applied with the
//! gateway's own transaction interaction, in ONE database transaction together with the
//! message's idempotency record. Only after that transaction has committed (the resources
//! and their log leaves with it) does the sender get `AA`; a message that fails anywhere gets
//! `AE`/`AR` with an ERR segment saying what was wrong, and nothing of it is written.
//!
//! - Idempotency: a message whose sender (MSH-3, MSH-4) and control id (MSH-10) were
//!   accepted before is answered with the recorded ACK code, and nothing is written again
//!   (`store::hl7v2`). The record is looked for and written inside the transaction, behind a
//!   lock on the pair, so two copies racing on two connections are applied once.
//! - Patients: the translator matches them on their PID-3 identifiers with conditional
//!   updates, which the transaction serializes per criteria (`store::lock`), so a patient is
//!   never created twice.
//! - A40 merge: after the Bundle (which links the two Patients), the merged patient's
//!   resources are moved to the survivor in the same transaction ([`merge`]).
//! - Order: messages about one patient are applied in the order they ask for the patient's
//!   turn, one at a time; other patients in parallel ([`order`]).

pub mod ack;
mod merge;
pub mod mllp;
pub mod order;
mod translate;

use serde_json::{Value, json};
use sqlx::AnyConnection;

use self::ack::{AckCode, ErrorCode, ErrorDetail, Header};
use self::order::PatientOrder;
use crate::access::{Access, Actor};
use crate::auth::scopes::ScopeSet;
use crate::bundle::BundleWriter;
use crate::config::MllpConfig;
use crate::error::Error;
use crate::interaction::transaction::{
    PreparedTransaction, ReturnPreference, prepare_transaction, run_transaction,
    transaction_response,
};
use crate::interaction::{Context, Outcome};
use crate::model::Instant;
use crate::store::{self, Store};

/// The client id the MLLP listener acts as (in `Access`, and so in audit records).
pub const MLLP_CLIENT_ID: &str = "mllp";

/// A message that was applied (or had been, for a re-send).
#[derive(Debug)]
pub struct Accepted {
    /// The `transaction-response` Bundle: of this run, or rebuilt from what was recorded for
    /// a re-send (entry responses only, no resources).
    pub response: Outcome,
    /// A re-send of a message accepted before: nothing was written.
    pub duplicate: bool,
    /// The ACK code answered (the recorded one for a re-send).
    pub code: AckCode,
}

/// A message that was not applied: nothing of it was written.
#[derive(Debug)]
pub struct Refusal {
    /// `AE` (the content cannot be applied) or `AR` (not processed).
    pub code: AckCode,
    /// What ERR says.
    pub detail: ErrorDetail,
    /// The same, as the FHIR API answers it (`$hl7v2`); boxed, as errors are large.
    pub error: Box<Error>,
}

impl Refusal {
    fn new(code: AckCode, hl7_code: ErrorCode, error: Error) -> Refusal {
        Refusal {
            code,
            detail: ErrorDetail {
                code: hl7_code,
                location: None,
                message: error_text(&error),
            },
            error: Box::new(error),
        }
    }
}

/// What the sender is told about an error of the transaction: a client-side error says what
/// was wrong; a server-side one says only that it failed (details go to the log).
fn error_text(error: &Error) -> String {
    match error {
        Error::InvalidResource(issues)
        | Error::ProfileViolation(issues)
        | Error::InvalidPatchResult(issues) => {
            let issues: Vec<String> = issues
                .iter()
                .filter(|i| {
                    matches!(
                        i.severity,
                        fhir_profiles::validate::IssueSeverity::Error
                            | fhir_profiles::validate::IssueSeverity::Fatal
                    )
                })
                .map(|i| format!("{}: {}", i.expression, i.diagnostics))
                .collect();
            format!(
                "the translated resources are not valid FHIR R4: {}",
                issues.join("; ")
            )
        }
        Error::Database(_) | Error::Internal(_) => {
            "the gateway failed to store the message; nothing was written; send it again".to_owned()
        }
        other => other.to_string(),
    }
}

/// A transaction error as a refusal: the gateway's own failures (and conflicts that
/// retrying did not resolve) are `AR`, so the sender sends again; the rest is `AE`. The HL7
/// error code says which: a conditional key matching several records (205), a record the
/// message names that does not exist (204: an A40's merged patient), resources that are not
/// valid FHIR (102), a conflict (206), else 207.
fn refusal_of(error: Error) -> Refusal {
    use actix_web::ResponseError as _;
    let status = error.status_code();
    let hl7_code = match &error {
        Error::PreconditionFailed(_) => ErrorCode::DuplicateKeyIdentifier,
        Error::NotFound { .. } => ErrorCode::UnknownKeyIdentifier,
        Error::InvalidResource(_) | Error::ProfileViolation(_) | Error::InvalidPatchResult(_) => {
            ErrorCode::DataType
        }
        Error::Conflict(_) => ErrorCode::ApplicationRecordLocked,
        _ => ErrorCode::ApplicationInternalError,
    };
    if status.is_server_error() || matches!(error, Error::Conflict(_)) {
        if status.is_server_error() {
            tracing::error!(error = %format!("{error:#}"), "an HL7 v2 message could not be stored");
        }
        Refusal::new(AckCode::Reject, hl7_code, error)
    } else {
        Refusal::new(AckCode::Error, hl7_code, error)
    }
}

/// The intake: what MLLP connections and `$hl7v2` share.
#[derive(Debug, Clone)]
pub struct Intake {
    store: Store,
    ctx: Context,
    order: PatientOrder,
    /// Where MLLP messages are recorded before they are acknowledged (`$hl7v2` is recorded
    /// by the FHIR API's audit middleware).
    audit: Option<crate::audit::AuditLog>,
}

impl Intake {
    pub fn new(store: Store, mut ctx: Context) -> Intake {
        // The R4B second opinion (`validation.r4b_check`) warns a client that software
        // reading what it sent as R4B may refuse it. A translation is the gateway's own
        // output, which nobody who sent the v2 message can change; r4b-check's tests check
        // the translator's output instead, and the check was 8% of the gateway's CPU per
        // message (BENCHMARKS.md, "HL7 v2 over MLLP").
        ctx.config.validation.r4b_check = false;
        Intake {
            store,
            ctx,
            order: PatientOrder::default(),
            audit: None,
        }
    }

    /// This intake, recording every MLLP message in `audit` before acknowledging it.
    pub fn with_audit(self, audit: Option<crate::audit::AuditLog>) -> Intake {
        Intake { audit, ..self }
    }

    /// The actor MLLP messages are written as: the system client `mllp` with the configured
    /// scopes (MLLP carries no credentials; see [`MllpConfig`]). Consent does not gate its
    /// conditional matches: a feed must find every existing patient to avoid duplicates.
    pub fn mllp_access(config: &MllpConfig) -> anyhow::Result<Access> {
        let scopes =
            ScopeSet::parse(&config.scopes).map_err(|e| anyhow::anyhow!("mllp.scopes: {e}"))?;
        let mut access = Access::operator(None);
        access.actor = Actor::Client;
        access.client_id = Some(MLLP_CLIENT_ID.to_owned());
        access.scopes = scopes;
        Ok(access)
    }

    /// Translates and applies one message (the bytes between the MLLP frame's delimiters, or
    /// a `$hl7v2` body). Returns the message's header, when it has a readable one, and what
    /// became of it.
    #[tracing::instrument(name = "hl7v2.message", skip_all, fields(hl7.ack = tracing::field::Empty))]
    pub async fn process(
        &self,
        access: &Access,
        allowed_facilities: &[String],
        message: &[u8],
    ) -> (Option<Header>, Result<Accepted, Refusal>) {
        let header = Header::read(message);
        let result = match &header {
            Some(header) => self.apply(access, allowed_facilities, header, message).await,
            None => Err(Refusal::new(
                AckCode::Reject,
                ErrorCode::SegmentSequence,
                Error::Invalid(
                    "the message does not begin with an MSH segment (MSH, a field separator and the encoding characters)"
                        .to_owned(),
                ),
            )),
        };
        let code = match &result {
            Ok(accepted) => accepted.code,
            Err(refusal) => refusal.code,
        };
        tracing::Span::current().record("hl7.ack", code.as_str());
        crate::telemetry::metrics()
            .hl7v2_messages
            .add(1, &[opentelemetry::KeyValue::new("ack", code.as_str())]);
        (header, result)
    }

    /// The ACK of one message (MLLP).
    pub async fn acknowledge(
        &self,
        access: &Access,
        allowed_facilities: &[String],
        message: &[u8],
    ) -> String {
        let started = std::time::Instant::now();
        let (header, result) = self.process(access, allowed_facilities, message).await;
        let (code, detail) = match &result {
            Ok(accepted) => (accepted.code, None),
            Err(refusal) => (refusal.code, Some(&refusal.detail)),
        };
        // the type and the outcome only: never a control id, identifier or any content
        tracing::info!(
            hl7.message_type = header
                .as_ref()
                .map(|h| h.message_type.as_str())
                .unwrap_or(""),
            hl7.ack = code.as_str(),
            hl7.duplicate = result.as_ref().is_ok_and(|a| a.duplicate),
            hl7.error_code = detail.map(|d| d.code.code()),
            elapsed_us = started.elapsed().as_micros() as u64,
            "hl7v2 message"
        );
        // an applied message's record was stored with it; a refusal's or a duplicate's now
        let recorded = result.as_ref().is_ok_and(|a| a.response.recorded);
        if let Some(audit) = self.audit.as_ref().filter(|_| !recorded) {
            let record = crate::audit::Record {
                recorded: crate::model::Instant::now(),
                interaction: crate::audit::Interaction::Message(
                    trigger_event(header.as_ref()).to_owned(),
                ),
                status: match code {
                    AckCode::Accept => 200,
                    AckCode::Error => 422,
                    AckCode::Reject => 400,
                },
                failure: detail.map(|d| d.message.clone()),
                who: Some(crate::audit::Who::of(access)),
                touched: result
                    .as_ref()
                    .map(|accepted| accepted.response.touched.clone())
                    .unwrap_or_default(),
                query: None,
                address: None,
            };
            if let Err(error) = audit.record(record).await {
                tracing::error!(error = %format!("{error:#}"), "an HL7 v2 message's audit record could not be stored; answered AR");
                let detail = ErrorDetail {
                    code: ErrorCode::ApplicationInternalError,
                    location: None,
                    message: "the message's audit record could not be stored; send it again (a message applied before is not applied twice)".to_owned(),
                };
                return ack::build(header.as_ref(), AckCode::Reject, Some(&detail));
            }
        }
        ack::build(header.as_ref(), code, detail)
    }

    async fn apply(
        &self,
        access: &Access,
        allowed_facilities: &[String],
        header: &Header,
        message: &[u8],
    ) -> Result<Accepted, Refusal> {
        if header.control_id.is_empty() {
            let message = "MSH-10 (message control id) is empty".to_owned();
            return Err(Refusal {
                code: AckCode::Reject,
                detail: ErrorDetail {
                    code: ErrorCode::RequiredFieldMissing,
                    location: Some(ack::ErrorLocation {
                        segment: "MSH".to_owned(),
                        sequence: Some(1),
                        field: Some(10),
                        component: None,
                    }),
                    message: message.clone(),
                },
                error: Box::new(Error::Invalid(message)),
            });
        }
        if !allowed_facilities.is_empty() {
            let facility = header
                .sending_facility
                .split(header.component())
                .next()
                .unwrap_or("");
            if !allowed_facilities.iter().any(|f| f == facility) {
                return Err(Refusal::new(
                    AckCode::Reject,
                    ErrorCode::ApplicationInternalError,
                    Error::Forbidden(format!(
                        "messages from the sending facility {facility:?} (MSH-4) are not accepted here"
                    )),
                ));
            }
        }
        // the turns of the patients the message is about (PID-3, an A40's MRG-1 too), asked
        // for as soon as it is read: translating and checking take longer for a longer
        // message, so a turn asked for after them would let a short message overtake a long
        // one that arrived before it. Held until the answer is decided.
        let _turn = self
            .order
            .turn(&fhir_profiles::v2::patient_keys(message))
            .await;
        let translated = translate::translate(message)?;
        let prepared = prepare_transaction(&translated.bundle, &self.ctx).map_err(refusal_of)?;
        let sender = header.sender();
        let idempotency_key = format!("hl7v2:{sender}\u{1f}{}", header.control_id);
        let merge = translated.merge.as_ref();
        let unit = Unit {
            access,
            header,
            sender: &sender,
            idempotency_key: &idempotency_key,
            prepared: &prepared,
            merge,
        };
        let written = self.write(&unit).await.map_err(refusal_of)?;
        Ok(match written {
            Written::Now(responses) => Accepted {
                response: Outcome {
                    recorded: self.audit.is_some(),
                    ..transaction_response(responses, ReturnPreference::Representation)
                },
                duplicate: false,
                code: AckCode::Accept,
            },
            Written::Recorded(recorded) => Accepted {
                response: recorded_response(&recorded.responses),
                duplicate: true,
                code: AckCode::parse(&recorded.ack_code).unwrap_or(AckCode::Accept),
            },
        })
    }
}

/// What one message writes.
struct Unit<'a> {
    access: &'a Access,
    header: &'a Header,
    sender: &'a str,
    idempotency_key: &'a str,
    prepared: &'a PreparedTransaction,
    merge: Option<&'a fhir_profiles::v2::Merge>,
}

impl Intake {
    /// Runs [`Intake::attempt`] in a write transaction and commits it, running it again when
    /// it conflicts with a concurrent one, as `Store::write` does. (A plain async fn rather
    /// than `Store::write`'s async closure: the MLLP connections run on `tokio::spawn`, which
    /// needs a future the compiler can prove `Send`.)
    async fn write(&self, unit: &Unit<'_>) -> crate::error::Result<Written> {
        let mut attempt = 1;
        loop {
            let mut tx = self.store.begin().await?;
            let result = match self.attempt(&mut tx, unit).await {
                Ok(written) => tx.commit().await.map(|()| written).map_err(Into::into),
                Err(error) => Err(error), // dropping `tx` rolls it back
            };
            match result {
                Err(error) if error.is_transient() && attempt < store::ATTEMPTS => {
                    tracing::warn!(
                        attempt,
                        "an HL7 v2 message conflicted with a concurrent transaction; retrying"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(5 << attempt)).await;
                    attempt += 1;
                }
                Err(error) if error.is_transient() => {
                    return Err(Error::Conflict(format!(
                        "the message conflicted with concurrent ones {} times; send it again",
                        store::ATTEMPTS
                    )));
                }
                other => return other,
            }
        }
    }

    /// The message's transaction: the idempotency record looked for (behind a lock on
    /// sender and control id), the Bundle, an A40's moved references, the record written.
    async fn attempt(
        &self,
        conn: &mut AnyConnection,
        unit: &Unit<'_>,
    ) -> crate::error::Result<Written> {
        // the message's own lock first, then its Bundle's (which `run_transaction` needs
        // held), in one statement; no transaction takes a message's lock after others
        let locks: Vec<String> = std::iter::once(unit.idempotency_key.to_owned())
            .chain(unit.prepared.lock_keys())
            .collect();
        if let Some(recorded) =
            store::hl7v2::lock_and_find(conn, &locks, unit.sender, &unit.header.control_id).await?
        {
            return Ok(Written::Recorded(recorded));
        }
        let responses = run_transaction(conn, &self.ctx, unit.access, unit.prepared).await?;
        if let Some(merge) = unit.merge {
            merge::move_references(conn, &self.ctx, unit.access, merge).await?;
        }
        let summaries = summaries(&responses).to_string();
        store::hl7v2::record(
            conn,
            store::hl7v2::Record {
                sender: unit.sender,
                control_id: &unit.header.control_id,
                message_type: &unit.header.message_type,
                ack_code: AckCode::Accept.as_str(),
                responses: &summaries,
                received_at: Instant::now().millis(),
            },
        )
        .await?;
        // the message's audit record commits with what it wrote
        if self.audit.is_some() {
            let record = crate::audit::Record {
                recorded: Instant::now(),
                interaction: crate::audit::Interaction::Message(
                    trigger_event(Some(unit.header)).to_owned(),
                ),
                status: 200,
                failure: None,
                who: Some(crate::audit::Who::of(unit.access)),
                touched: responses
                    .iter()
                    .filter_map(|(_, r)| r.as_ref().ok())
                    .flat_map(|o| o.touched.iter().cloned())
                    .collect(),
                query: None,
                address: None,
            };
            crate::audit::store_in(conn, &self.ctx, &[&record])
                .await
                .map_err(Error::Internal)?;
        }
        Ok(Written::Now(responses))
    }
}

/// The trigger event of a message (MSH-9.2, table 0003), as its audit record names it.
fn trigger_event(header: Option<&Header>) -> &str {
    header
        .and_then(|h| h.message_type.split('^').nth(1))
        .unwrap_or("unknown")
}

enum Written {
    Now(Vec<(usize, crate::error::Result<Outcome>)>),
    Recorded(store::hl7v2::Recorded),
}

/// The entry responses of a run, as recorded: ids, versions and statuses only.
fn summaries(responses: &[(usize, crate::error::Result<Outcome>)]) -> Value {
    Value::Array(
        responses
            .iter()
            .map(|(_, result)| match result {
                Ok(outcome) => crate::interaction::transaction::entry_response(outcome),
                Err(_) => json!({"status": "500"}),
            })
            .collect(),
    )
}

/// The `transaction-response` Bundle of a message accepted before, from its record.
fn recorded_response(recorded: &str) -> Outcome {
    let responses: Vec<Value> = serde_json::from_str(recorded).unwrap_or_default();
    let mut bundle = BundleWriter::new("transaction-response");
    for response in responses {
        bundle.entry_with(None, None, &json!({"response": response}));
    }
    Outcome::bundle(bundle.finish())
}
