//! `fhir-anchor consent-basis`: checks the consent basis an AuditEvent records against the
//! `ConsentRegistry` on chain, without the gateway.
//!
//! For an access that on-chain consent decided, the gateway records (README, "The audit
//! trail") the block its consent index had read and, per patient, the grants that covered the
//! access, the patient's wallet and the types served; the agents name the user and the app;
//! `purposeOfEvent` the purpose of use. Each named grant is read as of that block (`getGrant`,
//! an `eth_call` at the block) and must then have been active (granted no later than the last
//! block whose grants counted, not revoked, not expired at the block's time), the patient's
//! (its grantor is the recorded wallet), to one of the agents (by the grantee convention,
//! [`grantee_of_user`], [`grantee_of_client`]), for the recorded purpose, and open at least one
//! type served; together, a patient's grants must open every type served of their record.
//! A patient's own record needs no grant; break-the-glass is reported as such; a patient whose
//! access has none of these bases fails. The chain id, registry and block hash the gateway
//! recorded must be those of the chain read: a block hash that differs means a
//! reorganization replaced the block the decision rested on. Every problem is reported, per
//! patient and grant.
//!
//! The AuditEvent is read as plain JSON (no FHIR model): the members named above and nothing
//! else. The gateway's word is what is checked; only the chain is believed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use alloy::primitives::{Address, B256};
use serde_json::Value;

use crate::chain::ChainError;
use crate::consent::{
    ConsentError, ConsentGrant, ConsentReader, grantee_of_client, grantee_of_user,
};

/// The extension of an AuditEvent that carries a consent decision's basis.
pub const CONSENT_BASIS_EXTENSION: &str = "urn:fhir-gateway:consent-basis";
/// The identifier system of a gateway user in an agent.
const USER_SYSTEM: &str = "urn:fhir-gateway:user";
/// The identifier system of an app or system (a SMART client) in an agent.
const CLIENT_SYSTEM: &str = "urn:fhir-gateway:client";
/// The purpose of use that flags break-the-glass (v3 ActReason).
const BREAK_THE_GLASS: &str = "BTG";
/// The `entity.role` of a patient (object-role `1`).
const PATIENT_ROLE: &str = "1";
/// The AuditEvent `type` of an HL7 v2 message over MLLP (DICOM `110107` Import): a write.
const IMPORT_TYPE: &str = "110107";
/// How the `subtype` of `$hl7v2` (HL7 v2 messages over HTTP, a write) ends.
const HL7V2_OPERATION: &str = "/OperationDefinition/hl7v2";

/// Why an AuditEvent cannot be read as a consent basis (the message names the member; values
/// quoted are numbers, ids and addresses of the consent record, never resource content).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BasisError {
    /// The document is not an AuditEvent.
    #[error("not an AuditEvent (resourceType {0:?})")]
    NotAuditEvent(String),
    /// A member of the consent basis does not hold what it should.
    #[error("{member} is not {expected}: {value:?}")]
    Malformed {
        /// Where in the AuditEvent.
        member: String,
        /// What it should be.
        expected: &'static str,
        /// What it is.
        value: String,
    },
}

/// An agent of the access, as a grantee could name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Agent {
    /// A user of the gateway (`urn:fhir-gateway:user`).
    User(String),
    /// An app or an organization's system (`urn:fhir-gateway:client`).
    Client(String),
}

impl Agent {
    /// Its grantee id on chain.
    pub fn grantee(&self) -> B256 {
        match self {
            Agent::User(id) => grantee_of_user(id),
            Agent::Client(id) => grantee_of_client(id),
        }
    }
}

impl fmt::Display for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Agent::User(id) => write!(f, "user {id}"),
            Agent::Client(id) => write!(f, "client {id}"),
        }
    }
}

/// What an AuditEvent records of one patient's consent basis (a patient entity and its
/// `detail`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientBasis {
    /// `Patient/[id]`.
    pub patient: String,
    /// Whether the entity has a consent basis at all (`consentBlock`).
    pub recorded: bool,
    /// `consentBlock`: the block of the consent index at the decision.
    pub block: Option<u64>,
    /// `consentWallet`: the patient's wallet, the grantor of their grants.
    pub wallet: Option<Address>,
    /// `consentType`: the types served of this patient's record.
    pub resource_types: Vec<String>,
    /// `consentBasis = own record`: the requestor is this patient.
    pub own_record: bool,
    /// `consentGrant`: the grants that covered the access.
    pub grants: Vec<u64>,
}

/// The consent basis of an access, read from its AuditEvent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentBasis {
    /// The AuditEvent's id, if it has one.
    pub id: Option<String>,
    /// `subtype[0].code`: the interaction or operation.
    pub subtype: Option<String>,
    /// `action`.
    pub action: Option<String>,
    /// `outcome` (`0`: success).
    pub outcome: String,
    /// `recorded`.
    pub recorded: Option<String>,
    /// A write (action C, U or D, or HL7 v2 messages, over MLLP or `$hl7v2`): consent gates
    /// what is served, not what is written.
    pub write: bool,
    /// The purpose of use (`purposeOfEvent`, the code that is not `BTG`).
    pub purpose: Option<String>,
    /// Flagged `BTG`: served under break-the-glass.
    pub break_glass: bool,
    /// The extension's `block`.
    pub block: Option<u64>,
    /// The extension's `confirmedThrough`: the last block whose grants counted.
    pub confirmed_through: Option<u64>,
    /// The extension's `blockHash`: the hash of `block` as the gateway read it.
    pub block_hash: Option<B256>,
    /// The extension's `chainId`: the chain the gateway followed.
    pub chain_id: Option<u64>,
    /// The extension's `registry`: the registry the gateway followed.
    pub registry: Option<Address>,
    /// The user and the app.
    pub agents: Vec<Agent>,
    /// The requestor's `who.reference` (a patient user's `Patient/[id]`).
    pub requestor: Option<String>,
    /// Each patient entity.
    pub patients: Vec<PatientBasis>,
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn number(member: String, value: &Value) -> Result<u64, BasisError> {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| BasisError::Malformed {
            member,
            expected: "a decimal string",
            value: value.to_string(),
        })
}

fn parsed<T: std::str::FromStr>(
    member: String,
    expected: &'static str,
    value: &Value,
) -> Result<T, BasisError> {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| BasisError::Malformed {
            member,
            expected,
            value: value.to_string(),
        })
}

impl ConsentBasis {
    /// Reads the consent basis of `event`, an AuditEvent as JSON.
    pub fn from_json(event: &Value) -> Result<Self, BasisError> {
        let kind = text(event, "/resourceType").unwrap_or_default();
        if kind != "AuditEvent" {
            return Err(BasisError::NotAuditEvent(kind.to_owned()));
        }
        let action = text(event, "/action").map(str::to_owned);
        let subtype = text(event, "/subtype/0/code").map(str::to_owned);
        let write = matches!(action.as_deref(), Some("C" | "U" | "D"))
            || text(event, "/type/code") == Some(IMPORT_TYPE)
            || subtype
                .as_deref()
                .is_some_and(|s| s.ends_with(HL7V2_OPERATION));
        let mut purpose = None;
        let mut break_glass = false;
        for coding in event["purposeOfEvent"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|p| p["coding"].as_array().into_iter().flatten())
        {
            match coding["code"].as_str() {
                Some(BREAK_THE_GLASS) => break_glass = true,
                Some(code) if purpose.is_none() => purpose = Some(code.to_owned()),
                _ => {}
            }
        }
        let (mut block, mut confirmed_through) = (None, None);
        let (mut block_hash, mut chain_id, mut registry) = (None, None, None);
        for extension in event["extension"].as_array().into_iter().flatten() {
            if extension["url"] != CONSENT_BASIS_EXTENSION {
                continue;
            }
            for part in extension["extension"].as_array().into_iter().flatten() {
                let member = |name: &str| format!("the consent-basis extension's {name}");
                match part["url"].as_str() {
                    Some("block") => block = Some(number(member("block"), &part["valueString"])?),
                    Some("confirmedThrough") => {
                        confirmed_through =
                            Some(number(member("confirmedThrough"), &part["valueString"])?);
                    }
                    Some("chainId") => {
                        chain_id = Some(number(member("chainId"), &part["valueString"])?);
                    }
                    Some("blockHash") => {
                        block_hash = Some(parsed(
                            member("blockHash"),
                            "a block hash (0x and 64 hex digits)",
                            &part["valueString"],
                        )?);
                    }
                    Some("registry") => {
                        registry = Some(parsed(
                            member("registry"),
                            "an address (0x and 40 hex digits)",
                            &part["valueString"],
                        )?);
                    }
                    _ => {}
                }
            }
        }
        let mut agents = BTreeSet::new();
        let mut requestor = None;
        for agent in event["agent"].as_array().into_iter().flatten() {
            let value = text(agent, "/who/identifier/value").map(str::to_owned);
            match (text(agent, "/who/identifier/system"), value) {
                (Some(USER_SYSTEM), Some(id)) => {
                    agents.insert(Agent::User(id));
                }
                (Some(CLIENT_SYSTEM), Some(id)) => {
                    agents.insert(Agent::Client(id));
                }
                _ => {}
            }
            if agent["requestor"] == true {
                requestor = text(agent, "/who/reference").map(str::to_owned);
            }
        }
        let mut patients = Vec::new();
        for entity in event["entity"].as_array().into_iter().flatten() {
            let Some(patient) =
                text(entity, "/what/reference").filter(|r| r.starts_with("Patient/"))
            else {
                continue;
            };
            if text(entity, "/role/code") != Some(PATIENT_ROLE) {
                continue;
            }
            patients.push(patient_basis(patient, entity)?);
        }
        Ok(ConsentBasis {
            id: text(event, "/id").map(str::to_owned),
            subtype,
            action,
            outcome: text(event, "/outcome").unwrap_or_default().to_owned(),
            recorded: text(event, "/recorded").map(str::to_owned),
            write,
            purpose,
            break_glass,
            block,
            confirmed_through,
            block_hash,
            chain_id,
            registry,
            agents: agents.into_iter().collect(),
            requestor,
            patients,
        })
    }

    /// Whether the access succeeded (`outcome` 0): something was served.
    pub fn served(&self) -> bool {
        self.outcome == "0"
    }
}

fn patient_basis(patient: &str, entity: &Value) -> Result<PatientBasis, BasisError> {
    let mut basis = PatientBasis {
        patient: patient.to_owned(),
        recorded: false,
        block: None,
        wallet: None,
        resource_types: Vec::new(),
        own_record: false,
        grants: Vec::new(),
    };
    for detail in entity["detail"].as_array().into_iter().flatten() {
        let member = |name: &str| format!("{patient}'s {name}");
        let value = &detail["valueString"];
        match detail["type"].as_str() {
            Some("consentBlock") => {
                basis.recorded = true;
                basis.block = Some(number(member("consentBlock"), value)?);
            }
            Some("consentWallet") => {
                let wallet = value.as_str().and_then(|s| s.parse().ok());
                basis.wallet = Some(wallet.ok_or_else(|| BasisError::Malformed {
                    member: member("consentWallet"),
                    expected: "an address",
                    value: value.to_string(),
                })?);
            }
            Some("consentType") => {
                if let Some(resource_type) = value.as_str() {
                    basis.resource_types.push(resource_type.to_owned());
                }
            }
            Some("consentBasis") => basis.own_record |= value == "own record",
            Some("consentGrant") => basis.grants.push(number(member("consentGrant"), value)?),
            _ => {}
        }
    }
    Ok(basis)
}

/// What made a patient's access allowed, as the check found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Grants valid on chain open every type served.
    Covered,
    /// The requestor is the patient.
    OwnRecord,
    /// Served under break-the-glass (flagged `BTG`): no grant needed, always reported.
    BreakTheGlass,
    /// A write: consent gates what is served, not what is written.
    Write,
    /// The access did not succeed: nothing was served.
    NotServed,
    /// No basis holds.
    NotCovered,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Covered => "COVERED",
            Verdict::OwnRecord => "OWN RECORD",
            Verdict::BreakTheGlass => "BREAK-THE-GLASS",
            Verdict::Write => "WRITE (consent gates reads)",
            Verdict::NotServed => "NOT SERVED",
            Verdict::NotCovered => "NOT COVERED",
        })
    }
}

/// Why a named grant does not support the access.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantProblem {
    /// `getGrant` at the block says there is no such grant (never made, or made later).
    #[error("the registry has no such grant as of block {block}")]
    Unknown {
        /// The decision's block.
        block: u64,
    },
    /// Granted after the last block whose grants counted.
    #[error(
        "granted in block {granted_block}, after block {confirmed_through}, the last whose grants counted at the decision"
    )]
    NotConfirmed {
        /// The grant's block.
        granted_block: u64,
        /// The AuditEvent's `confirmedThrough`.
        confirmed_through: u64,
    },
    /// Revoked at or before the block.
    #[error("revoked in block {revoked_block}, at or before block {block}")]
    Revoked {
        /// The revoking block.
        revoked_block: u64,
        /// The decision's block.
        block: u64,
    },
    /// Expired at or before the block's time.
    #[error("expired at {expires_at}, at or before the time of block {block} ({time})")]
    Expired {
        /// The grant's expiry (seconds since the epoch).
        expires_at: u64,
        /// The decision's block.
        block: u64,
        /// Its timestamp.
        time: u64,
    },
    /// Granted by another wallet than the patient's.
    #[error("granted by {grantor}, not by the patient's wallet {wallet}")]
    OtherPatient {
        /// The grant's `patient`.
        grantor: Address,
        /// The AuditEvent's `consentWallet`.
        wallet: Address,
    },
    /// The AuditEvent names no wallet to compare the grantor with.
    #[error(
        "granted by {grantor}, and the AuditEvent records no wallet (consentWallet) for the patient"
    )]
    NoWallet {
        /// The grant's `patient`.
        grantor: Address,
    },
    /// The grantee is none of the agents.
    #[error("its grantee {grantee} is none of the agents' ({agents})")]
    OtherGrantee {
        /// The grant's grantee.
        grantee: B256,
        /// The agents, with their grantee ids.
        agents: String,
    },
    /// Another purpose of use.
    #[error("its purpose is {grant}, the access's {}", .recorded.as_deref().unwrap_or("not recorded"))]
    OtherPurpose {
        /// The grant's purpose.
        grant: String,
        /// The AuditEvent's.
        recorded: Option<String>,
    },
    /// It opens none of the types served.
    #[error("it opens {}, none of the types served ({})", .opens.join(", "), .served.join(", "))]
    NoTypeServed {
        /// The grant's types.
        opens: Vec<String>,
        /// The types served of the patient's record.
        served: Vec<String>,
    },
}

/// Where the chain read differs from the chain the AuditEvent says the decision was made on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainProblem {
    /// Another chain.
    #[error("the decision was made on chain {recorded}; the endpoint serves chain {endpoint}")]
    ChainId {
        /// The AuditEvent's `chainId`.
        recorded: u64,
        /// The endpoint's.
        endpoint: u64,
    },
    /// Another registry.
    #[error("the decision read the registry at {recorded}, not the one checked ({checked})")]
    Registry {
        /// The AuditEvent's `registry`.
        recorded: Address,
        /// The one given to the check.
        checked: Address,
    },
    /// The decision's block is no longer the chain's block of that number.
    #[error(
        "block {block} is {on_chain} on this chain, not {recorded} as recorded: a reorganization replaced the block the decision rested on"
    )]
    BlockHash {
        /// The decision's block.
        block: u64,
        /// The AuditEvent's `blockHash`.
        recorded: B256,
        /// The chain's.
        on_chain: B256,
    },
}

/// Why a patient's access has no basis, beside the problems of its grants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatientProblem {
    /// No consent decision is recorded for a successful read.
    #[error(
        "served without a recorded consent decision (no consent basis: the operator, or consent not enforced) and not under break-the-glass"
    )]
    NoBasis,
    /// No block to read the grants at.
    #[error("the AuditEvent records no consent block")]
    NoBlock,
    /// The block is beyond the chain's head.
    #[error("block {0} is not on this chain (beyond its head): another chain or registry?")]
    BlockNotOnChain(u64),
    /// Recorded as the requestor's own record, but the requestor is someone else.
    #[error("recorded as the requestor's own record, but the requestor is {}", .0.as_deref().unwrap_or("not a patient"))]
    NotOwnRecord(Option<String>),
    /// No grant named and no other basis.
    #[error("no grant is named, and it is not the requestor's own record")]
    NoGrant,
    /// The types served are not recorded.
    #[error("the AuditEvent does not record the types served (consentType)")]
    NoTypes,
    /// Types served that no valid grant opens.
    #[error("no valid grant opens {}", .0.join(", "))]
    Uncovered(Vec<String>),
}

/// One named grant, as the chain has it at the decision's block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantVerdict {
    /// The grant's id.
    pub grant_id: u64,
    /// The grant as of the block (`None`: unknown then).
    pub on_chain: Option<ConsentGrant>,
    /// The agent it was given to.
    pub agent: Option<Agent>,
    /// The types served it opens.
    pub opens: Vec<String>,
    /// Every problem; none when it supports the access.
    pub problems: Vec<GrantProblem>,
}

/// One patient of the access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientVerdict {
    /// What the AuditEvent records.
    pub basis: PatientBasis,
    /// The block the grants were read at.
    pub block: Option<u64>,
    /// What made the access allowed.
    pub verdict: Verdict,
    /// Each named grant.
    pub grants: Vec<GrantVerdict>,
    /// Problems beside the grants'.
    pub problems: Vec<PatientProblem>,
}

impl PatientVerdict {
    /// Whether this patient's access checked out.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.grants.iter().all(|g| g.problems.is_empty())
    }
}

/// The outcome of a check: the basis, and a verdict per patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentAudit {
    /// What the AuditEvent records.
    pub basis: ConsentBasis,
    /// The registry read.
    pub registry: Address,
    /// The endpoint's chain id.
    pub chain_id: u64,
    /// The time of each block the grants were read at.
    pub block_times: BTreeMap<u64, u64>,
    /// Where the chain read is not the one the decision was made on.
    pub chain: Vec<ChainProblem>,
    /// One per patient entity.
    pub patients: Vec<PatientVerdict>,
}

impl ConsentAudit {
    /// Whether every patient's access checked out, on the chain the decision was made on.
    pub fn is_ok(&self) -> bool {
        self.chain.is_empty() && self.patients.iter().all(PatientVerdict::is_ok)
    }

    /// The number of problems found.
    pub fn problem_count(&self) -> usize {
        self.chain.len()
            + self
                .patients
                .iter()
                .map(|p| {
                    p.problems.len() + p.grants.iter().map(|g| g.problems.len()).sum::<usize>()
                })
                .sum::<usize>()
    }
}

/// Checks `basis` against the `ConsentRegistry` at `registry` through the node at `rpc_url`.
/// Problems of the basis are in the returned [`ConsentAudit`]; an `Err` means the chain could
/// not be read (or holds no registry at that address).
pub async fn check_consent_basis(
    rpc_url: &str,
    registry: Address,
    basis: &ConsentBasis,
) -> Result<ConsentAudit, ChainError> {
    let reader = ConsentReader::connect(rpc_url, registry).await?;
    let mut chain = Vec::new();
    if let Some(recorded) = basis.chain_id.filter(|id| *id != reader.chain_id()) {
        chain.push(ChainProblem::ChainId {
            recorded,
            endpoint: reader.chain_id(),
        });
    }
    if let Some(recorded) = basis.registry.filter(|r| *r != registry) {
        chain.push(ChainProblem::Registry {
            recorded,
            checked: registry,
        });
    }
    // a block beyond the head is each patient's BlockNotOnChain
    if let (Some(block), Some(recorded)) = (basis.block, basis.block_hash)
        && let Some(on_chain) = reader.block_hash(block).await?
        && on_chain != recorded
    {
        chain.push(ChainProblem::BlockHash {
            block,
            recorded,
            on_chain,
        });
    }
    let mut block_times = BTreeMap::new();
    let mut patients = Vec::new();
    for patient in &basis.patients {
        let block = patient.block.or(basis.block);
        let time = match block {
            Some(block) => match block_times.get(&block) {
                Some(time) => Some(*time),
                None => {
                    let time = reader.block_timestamp(block).await?;
                    if let Some(time) = time {
                        block_times.insert(block, time);
                    }
                    time
                }
            },
            None => None,
        };
        patients.push(check_patient(&reader, basis, patient, block, time).await?);
    }
    Ok(ConsentAudit {
        basis: basis.clone(),
        registry,
        chain_id: reader.chain_id(),
        block_times,
        chain,
        patients,
    })
}

async fn check_patient(
    reader: &ConsentReader,
    basis: &ConsentBasis,
    patient: &PatientBasis,
    block: Option<u64>,
    time: Option<u64>,
) -> Result<PatientVerdict, ChainError> {
    let mut problems = Vec::new();
    let mut grants = Vec::new();
    let needs_grant = basis.served() && !basis.break_glass && !basis.write;
    if !patient.grants.is_empty() || (needs_grant && !patient.own_record && patient.recorded) {
        match (block, time) {
            (None, _) => problems.push(PatientProblem::NoBlock),
            (Some(block), None) => problems.push(PatientProblem::BlockNotOnChain(block)),
            (Some(block), Some(time)) => {
                for grant_id in &patient.grants {
                    grants.push(check_grant(reader, basis, patient, *grant_id, block, time).await?);
                }
            }
        }
    }
    let verdict = if !basis.served() {
        Verdict::NotServed
    } else if basis.break_glass {
        Verdict::BreakTheGlass
    } else if basis.write {
        Verdict::Write
    } else if !patient.recorded {
        problems.push(PatientProblem::NoBasis);
        Verdict::NotCovered
    } else if patient.own_record {
        if basis.requestor.as_deref() != Some(patient.patient.as_str()) {
            problems.push(PatientProblem::NotOwnRecord(basis.requestor.clone()));
        }
        Verdict::OwnRecord
    } else {
        if patient.grants.is_empty() {
            problems.push(PatientProblem::NoGrant);
        } else if patient.resource_types.is_empty() {
            problems.push(PatientProblem::NoTypes);
        } else {
            let opened: BTreeSet<&str> = grants
                .iter()
                .filter(|g| g.problems.is_empty())
                .flat_map(|g| g.opens.iter().map(String::as_str))
                .collect();
            let uncovered: Vec<String> = patient
                .resource_types
                .iter()
                .filter(|t| !opened.contains(t.as_str()))
                .cloned()
                .collect();
            if !uncovered.is_empty() {
                problems.push(PatientProblem::Uncovered(uncovered));
            }
        }
        if problems.is_empty() && grants.iter().all(|g| g.problems.is_empty()) {
            Verdict::Covered
        } else {
            Verdict::NotCovered
        }
    };
    Ok(PatientVerdict {
        basis: patient.clone(),
        block,
        verdict,
        grants,
        problems,
    })
}

async fn check_grant(
    reader: &ConsentReader,
    basis: &ConsentBasis,
    patient: &PatientBasis,
    grant_id: u64,
    block: u64,
    time: u64,
) -> Result<GrantVerdict, ChainError> {
    let mut verdict = GrantVerdict {
        grant_id,
        on_chain: None,
        agent: None,
        opens: Vec::new(),
        problems: Vec::new(),
    };
    let grant = match reader.grant(grant_id, Some(block)).await {
        Ok(grant) => grant,
        Err(ChainError::Consent(ConsentError::UnknownGrant { .. })) => {
            verdict.problems.push(GrantProblem::Unknown { block });
            return Ok(verdict);
        }
        Err(other) => return Err(other),
    };
    let problems = &mut verdict.problems;
    if let Some(confirmed_through) = basis.confirmed_through
        && grant.granted_block > confirmed_through
    {
        problems.push(GrantProblem::NotConfirmed {
            granted_block: grant.granted_block,
            confirmed_through,
        });
    }
    if let Some(revoked_block) = grant.revoked_block.filter(|revoked| *revoked <= block) {
        problems.push(GrantProblem::Revoked {
            revoked_block,
            block,
        });
    }
    if grant.expires_at != 0 && grant.expires_at <= time {
        problems.push(GrantProblem::Expired {
            expires_at: grant.expires_at,
            block,
            time,
        });
    }
    match patient.wallet {
        Some(wallet) if wallet != grant.patient => problems.push(GrantProblem::OtherPatient {
            grantor: grant.patient,
            wallet,
        }),
        Some(_) => {}
        None => problems.push(GrantProblem::NoWallet {
            grantor: grant.patient,
        }),
    }
    verdict.agent = basis
        .agents
        .iter()
        .find(|agent| agent.grantee() == grant.grantee)
        .cloned();
    if verdict.agent.is_none() {
        let agents: Vec<String> = basis
            .agents
            .iter()
            .map(|agent| format!("{agent} {}", agent.grantee()))
            .collect();
        problems.push(GrantProblem::OtherGrantee {
            grantee: grant.grantee,
            agents: if agents.is_empty() {
                "none named".to_owned()
            } else {
                agents.join(", ")
            },
        });
    }
    if basis.purpose.as_deref() != Some(grant.purpose.as_str()) {
        problems.push(GrantProblem::OtherPurpose {
            grant: grant.purpose.clone(),
            recorded: basis.purpose.clone(),
        });
    }
    verdict.opens = patient
        .resource_types
        .iter()
        .filter(|t| grant.resource_types.is_empty() || grant.resource_types.contains(t))
        .cloned()
        .collect();
    if verdict.opens.is_empty() && !patient.resource_types.is_empty() {
        problems.push(GrantProblem::NoTypeServed {
            opens: grant.resource_types.clone(),
            served: patient.resource_types.clone(),
        });
    }
    verdict.on_chain = Some(grant);
    Ok(verdict)
}

impl fmt::Display for ConsentAudit {
    /// The access, then per patient its verdict and per grant what the chain says, then `OK`
    /// or `FAILED: n problem(s)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.basis;
        writeln!(
            f,
            "AuditEvent {}: {} (action {}), outcome {}, recorded {}",
            b.id.as_deref().unwrap_or("(no id)"),
            b.subtype.as_deref().unwrap_or("?"),
            b.action.as_deref().unwrap_or("?"),
            b.outcome,
            b.recorded.as_deref().unwrap_or("?"),
        )?;
        let agents: Vec<String> = b
            .agents
            .iter()
            .map(|agent| format!("{agent} (grantee {})", agent.grantee()))
            .collect();
        writeln!(
            f,
            "purpose of use {}{}; agents: {}",
            b.purpose.as_deref().unwrap_or("(none)"),
            if b.break_glass {
                ", flagged BTG (break-the-glass)"
            } else {
                ""
            },
            if agents.is_empty() {
                "none named".to_owned()
            } else {
                agents.join(", ")
            }
        )?;
        write!(
            f,
            "consent registry {} on chain {}",
            self.registry, self.chain_id
        )?;
        match b.block {
            Some(block) => {
                write!(f, ": decision at block {block}")?;
                if let Some(time) = self.block_times.get(&block) {
                    write!(f, " (time {time})")?;
                }
                if let Some(confirmed) = b.confirmed_through {
                    write!(f, ", grants counted through block {confirmed}")?;
                }
                writeln!(f)?;
            }
            None => writeln!(f, ": no consent decision recorded")?,
        }
        for problem in &self.chain {
            writeln!(f, "  - {problem}")?;
        }
        if self.patients.is_empty() {
            writeln!(f, "no patient entity: nothing consent-gated")?;
        }
        for patient in &self.patients {
            let p = &patient.basis;
            let mut about = Vec::new();
            if let Some(wallet) = p.wallet {
                about.push(format!("wallet {wallet}"));
            }
            if !p.resource_types.is_empty() {
                about.push(format!("types {}", p.resource_types.join(", ")));
            }
            if about.is_empty() {
                writeln!(f, "{}: {}", p.patient, patient.verdict)?;
            } else {
                writeln!(
                    f,
                    "{} ({}): {}",
                    p.patient,
                    about.join("; "),
                    patient.verdict
                )?;
            }
            for grant in &patient.grants {
                write_grant(f, grant, patient.block)?;
            }
            for problem in &patient.problems {
                writeln!(f, "  - {problem}")?;
            }
        }
        if self.is_ok() {
            write!(f, "OK")
        } else {
            write!(f, "FAILED: {} problem(s)", self.problem_count())
        }
    }
}

fn write_grant(
    f: &mut fmt::Formatter<'_>,
    grant: &GrantVerdict,
    block: Option<u64>,
) -> fmt::Result {
    let verdict = if grant.problems.is_empty() {
        "OK"
    } else {
        "FAILED"
    };
    write!(f, "  grant {}: {verdict}", grant.grant_id)?;
    if let Some(on_chain) = &grant.on_chain {
        let to = grant
            .agent
            .as_ref()
            .map_or_else(|| on_chain.grantee.to_string(), Agent::to_string);
        let types = if on_chain.resource_types.is_empty() {
            "every type".to_owned()
        } else {
            on_chain.resource_types.join(", ")
        };
        write!(
            f,
            ": granted in block {} by {} to {to} for {}, types {types}",
            on_chain.granted_block, on_chain.patient, on_chain.purpose
        )?;
        if let Some(block) = block {
            match on_chain.revoked_block {
                Some(revoked) => write!(f, "; revoked in block {revoked}")?,
                None => write!(f, "; not revoked at block {block}")?,
            }
        }
        match on_chain.expires_at {
            0 => write!(f, ", no expiry")?,
            at => write!(f, ", expires at {at}")?,
        }
    }
    writeln!(f)?;
    for problem in &grant.problems {
        writeln!(f, "    - {problem}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Value {
        json!({
            "resourceType": "AuditEvent", "id": "e1", "action": "R", "outcome": "0",
            "recorded": "2026-11-25T03:00:00Z",
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
            "purposeOfEvent": [{"coding": [{"code": "TREAT"}]}, {"coding": [{"code": "BTG"}]}],
            "agent": [
                {"requestor": true, "who": {"identifier": {"system": USER_SYSTEM, "value": "dr-7"}, "reference": "Practitioner/7"}},
                {"requestor": false, "who": {"identifier": {"system": CLIENT_SYSTEM, "value": "app"}}}
            ],
            "entity": [
                {"what": {"reference": "Observation/o1/_history/1"}, "role": {"code": "4"}},
                {"what": {"reference": "Patient/p1"}, "role": {"code": "1"}, "detail": [
                    {"type": "consentBlock", "valueString": "12"},
                    {"type": "consentWallet", "valueString": "0x00000000000000000000000000000000000000aa"},
                    {"type": "consentType", "valueString": "Observation"},
                    {"type": "consentGrant", "valueString": "3"}
                ]}
            ],
            "extension": [{"url": CONSENT_BASIS_EXTENSION, "extension": [
                {"url": "block", "valueString": "12"}, {"url": "confirmedThrough", "valueString": "11"}
            ]}]
        })
    }

    #[test]
    fn reads_the_basis_the_gateway_records() {
        let basis = ConsentBasis::from_json(&event()).expect("a basis");
        assert_eq!(basis.purpose.as_deref(), Some("TREAT"));
        assert!(basis.break_glass && basis.served() && !basis.write);
        assert_eq!((basis.block, basis.confirmed_through), (Some(12), Some(11)));
        assert_eq!(
            basis.agents,
            vec![Agent::User("dr-7".into()), Agent::Client("app".into())]
        );
        assert_eq!(basis.requestor.as_deref(), Some("Practitioner/7"));
        assert_eq!(basis.patients.len(), 1, "the Observation is no patient");
        let patient = &basis.patients[0];
        assert_eq!(patient.patient, "Patient/p1");
        assert_eq!(patient.block, Some(12));
        assert_eq!(patient.wallet, Some(Address::with_last_byte(0xaa)));
        assert_eq!(patient.resource_types, ["Observation"]);
        assert_eq!(patient.grants, [3]);
        assert!(patient.recorded && !patient.own_record);
    }

    #[test]
    fn refuses_what_is_not_a_basis() {
        let cases = [
            ("/resourceType", json!("Patient"), "not an AuditEvent"),
            (
                "/entity/1/detail/3/valueString",
                json!("three"),
                "consentGrant",
            ),
            (
                "/entity/1/detail/1/valueString",
                json!("0x12"),
                "consentWallet",
            ),
            ("/extension/0/extension/0/valueString", json!(12), "block"),
        ];
        for (pointer, value, expected) in cases {
            let mut event = event();
            *event.pointer_mut(pointer).expect("as the test set up") = value;
            let error = ConsentBasis::from_json(&event).expect_err(pointer);
            assert!(
                error.to_string().contains(expected),
                "{pointer}: expected {expected:?} in {error}"
            );
        }
    }
}
