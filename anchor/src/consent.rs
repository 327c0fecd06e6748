//! The Ethereum client of the `ConsentRegistry` contract (contracts/src/IConsentRegistry.sol):
//! patients' grants of access to their record, recorded on chain (PRODUCT.md, "Consent").
//!
//! - [`ConsentReader`] reads without a key: the registry's `ConsentGranted` and
//!   `ConsentRevoked` events in chain order with where they were emitted (what the gateway's
//!   consent index follows), the head and canonical block hashes (to notice a reorg), and the
//!   views (`nonces`, `getGrant`, optionally at a past block for an auditor, `isAllowed`).
//! - [`ConsentRelayer`] sends a patient's signed grant or revocation (`grantBySig`,
//!   `revokeBySig`) with the gateway's key, through the same sender as the anchor client
//!   (simulated first, nonces, fee bumping, reorgs, confirmations); the registry's custom
//!   errors come back as a typed [`ConsentError`] from the simulation, before any transaction
//!   is sent, so a replayed or forged request costs nothing.
//! - EIP-712: [`typed_data_grant`] and [`typed_data_revoke`] build the JSON a browser wallet
//!   signs (`eth_signTypedData_v4`); [`signing_hash_grant`] and [`signing_hash_revoke`] the
//!   digest the contract checks (alloy's `SolStruct`, from the same struct definitions).
//! - The grantee convention: [`grantee_of_account`], [`grantee_of_client`],
//!   [`grantee_of_user`], as the contract's `granteeOfAccount` and `granteeOfName` compute them.
//!
//! Nothing here is patient data on chain: a patient is a wallet address, a grantee a 32-byte
//! identifier. Error messages name the RPC endpoint by scheme, host and port only.

use alloy::eips::{BlockId, BlockNumberOrTag};
use alloy::primitives::{Address, B256, Bytes, TxKind, U256, keccak256};
use alloy::providers::{DynProvider, Provider as _};
use alloy::rpc::types::{Filter, Log};
use alloy::sol_types::{Eip712Domain, SolEvent as _, SolInterface as _, SolStruct};
use alloy::transports::{RpcError, TransportErrorKind};
use serde_json::{Value, json};

use crate::chain::{
    ChainConfig, ChainError, Deployed, Plan, SignerKey, TxSender, deploy_contract, http_provider,
    missing, rpc_error,
};

/// The bindings generated from the committed artifact (ABI and bytecode).
mod bindings {
    // `grantBySig` takes the eight arguments the contract declares
    #![allow(clippy::too_many_arguments)]
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug, PartialEq, Eq)]
        ConsentRegistry,
        "../contracts/artifacts/ConsentRegistry.json"
    );
}

pub use bindings::ConsentRegistry;
use bindings::ConsentRegistry::ConsentRegistryErrors as Raw;

/// The EIP-712 types the patient signs, as the contract declares them.
mod typed {
    alloy::sol! {
        /// `Grant(address patient,bytes32 grantee,string[] resourceTypes,string purpose,uint64 expiresAt,uint256 nonce,uint256 deadline)`
        struct Grant {
            address patient;
            bytes32 grantee;
            string[] resourceTypes;
            string purpose;
            uint64 expiresAt;
            uint256 nonce;
            uint256 deadline;
        }

        /// `Revoke(address patient,uint64 grantId,uint256 nonce,uint256 deadline)`
        struct Revoke {
            address patient;
            uint64 grantId;
            uint256 nonce;
            uint256 deadline;
        }
    }
}

/// The EIP-712 domain name of the registry.
pub const DOMAIN_NAME: &str = "ConsentRegistry";
/// The EIP-712 domain version of the registry.
pub const DOMAIN_VERSION: &str = "1";

/// The grantee of a person with a wallet: the address zero-extended to 32 bytes
/// (`granteeOfAccount`).
pub fn grantee_of_account(account: Address) -> B256 {
    account.into_word()
}

/// The grantee of an app or an organization's system registered at a gateway:
/// `keccak256("client:" || client_id)` (UTF-8).
pub fn grantee_of_client(client_id: &str) -> B256 {
    keccak256(format!("client:{client_id}"))
}

/// The grantee of a gateway user without a wallet (a practitioner):
/// `keccak256("user:" || user_id)` (UTF-8).
pub fn grantee_of_user(user_id: &str) -> B256 {
    keccak256(format!("user:{user_id}"))
}

/// A grant a patient signs for a relayer to send (`grantBySig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRequest {
    /// The patient's account (the signer, or an ERC-1271 wallet).
    pub patient: Address,
    /// Who may read.
    pub grantee: B256,
    /// The FHIR resource types opened; empty: every type.
    pub resource_types: Vec<String>,
    /// The purpose of use, e.g. `TREAT`.
    pub purpose: String,
    /// Unix time from which the grant no longer holds; 0: until revoked.
    pub expires_at: u64,
    /// The patient's current nonce (`nonces(patient)`).
    pub nonce: U256,
    /// Unix time after which the signature is refused.
    pub deadline: U256,
}

/// A revocation a patient signs for a relayer to send (`revokeBySig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeRequest {
    /// The patient's account.
    pub patient: Address,
    /// The grant to revoke.
    pub grant_id: u64,
    /// The patient's current nonce.
    pub nonce: U256,
    /// Unix time after which the signature is refused.
    pub deadline: U256,
}

impl GrantRequest {
    fn typed(&self) -> typed::Grant {
        typed::Grant {
            patient: self.patient,
            grantee: self.grantee,
            resourceTypes: self.resource_types.clone(),
            purpose: self.purpose.clone(),
            expiresAt: self.expires_at,
            nonce: self.nonce,
            deadline: self.deadline,
        }
    }
}

impl RevokeRequest {
    fn typed(&self) -> typed::Revoke {
        typed::Revoke {
            patient: self.patient,
            grantId: self.grant_id,
            nonce: self.nonce,
            deadline: self.deadline,
        }
    }
}

/// The registry's EIP-712 domain on chain `chain_id` at `registry`.
pub fn domain(chain_id: u64, registry: Address) -> Eip712Domain {
    Eip712Domain::new(
        Some(DOMAIN_NAME.into()),
        Some(DOMAIN_VERSION.into()),
        Some(U256::from(chain_id)),
        Some(registry),
        None,
    )
}

/// The digest the patient signs for `request` (EIP-712 `\x19\x01 || domainSeparator || hashStruct`).
pub fn signing_hash_grant(chain_id: u64, registry: Address, request: &GrantRequest) -> B256 {
    request
        .typed()
        .eip712_signing_hash(&domain(chain_id, registry))
}

/// The digest the patient signs for `request`.
pub fn signing_hash_revoke(chain_id: u64, registry: Address, request: &RevokeRequest) -> B256 {
    request
        .typed()
        .eip712_signing_hash(&domain(chain_id, registry))
}

/// The typed data of `request` as a browser wallet takes it in `eth_signTypedData_v4`: `types`
/// (with `EIP712Domain`), `primaryType`, `domain` and `message`; the message's integers as
/// decimal strings (a `uint256` does not fit a JavaScript number), addresses (checksummed) and
/// `bytes32` as 0x-hex; the domain's `chainId` as a JSON number, the form wallets compare with
/// the chain they are connected to.
pub fn typed_data_grant(chain_id: u64, registry: Address, request: &GrantRequest) -> Value {
    let message = json!({
        "patient": request.patient.to_checksum(None),
        "grantee": request.grantee.to_string(),
        "resourceTypes": request.resource_types,
        "purpose": request.purpose,
        "expiresAt": request.expires_at.to_string(),
        "nonce": request.nonce.to_string(),
        "deadline": request.deadline.to_string(),
    });
    typed_data::<typed::Grant>(chain_id, registry, &message)
}

/// The typed data of `request` for `eth_signTypedData_v4`.
pub fn typed_data_revoke(chain_id: u64, registry: Address, request: &RevokeRequest) -> Value {
    let message = json!({
        "patient": request.patient.to_checksum(None),
        "grantId": request.grant_id.to_string(),
        "nonce": request.nonce.to_string(),
        "deadline": request.deadline.to_string(),
    });
    typed_data::<typed::Revoke>(chain_id, registry, &message)
}

/// The `eth_signTypedData_v4` document of a message of type `T`; the type's members are read
/// from its EIP-712 encoding (`Name(type name,...)`), the one the signing hash uses.
fn typed_data<T: SolStruct>(chain_id: u64, registry: Address, message: &Value) -> Value {
    let encoded = T::eip712_root_type();
    let members: Vec<Value> = encoded
        .trim_start_matches(T::NAME)
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .filter_map(|member| member.split_once(' '))
        .map(|(kind, name)| json!({ "name": name, "type": kind }))
        .collect();
    json!({
        "types": {
            "EIP712Domain": [
                { "name": "name", "type": "string" },
                { "name": "version", "type": "string" },
                { "name": "chainId", "type": "uint256" },
                { "name": "verifyingContract", "type": "address" },
            ],
            T::NAME: members,
        },
        "primaryType": T::NAME,
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": chain_id,
            "verifyingContract": registry.to_checksum(None),
        },
        "message": message,
    })
}

/// A custom error of the `ConsentRegistry` contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsentError {
    /// `ConsentRegistryDeadlinePassed`.
    #[error("the signed request's deadline {deadline} has passed")]
    DeadlinePassed {
        /// The deadline (unix time).
        deadline: U256,
    },
    /// `ConsentRegistryInvalidSignature`.
    #[error("the signature is not the one of {patient}")]
    InvalidSignature {
        /// The patient the request names.
        patient: Address,
    },
    /// `ConsentRegistryInvalidNonce`: a replay, or a request signed before another was relayed.
    #[error("the signed nonce is not the current one of {patient}, {expected}")]
    InvalidNonce {
        /// The patient.
        patient: Address,
        /// The nonce the next request must carry.
        expected: U256,
    },
    /// `ConsentRegistryUnknownGrant`.
    #[error("there is no grant {grant_id}")]
    UnknownGrant {
        /// The id asked for.
        grant_id: u64,
    },
    /// `ConsentRegistryNotGrantor`.
    #[error("grant {grant_id} is not one of {account}")]
    NotGrantor {
        /// The grant.
        grant_id: u64,
        /// The account that tried to revoke it.
        account: Address,
    },
    /// `ConsentRegistryAlreadyRevoked`.
    #[error("grant {grant_id} is revoked already")]
    AlreadyRevoked {
        /// The grant.
        grant_id: u64,
    },
    /// `ConsentRegistryAlreadyExpired`.
    #[error("a grant expiring at {expires_at} is expired already")]
    AlreadyExpired {
        /// The refused expiry (unix time).
        expires_at: u64,
    },
    /// `ConsentRegistryZeroGrantee`.
    #[error("the grantee must not be zero")]
    ZeroGrantee,
    /// `ConsentRegistryInvalidPurpose`.
    #[error("the purpose must hold 1 to 32 bytes")]
    InvalidPurpose,
    /// `ConsentRegistryInvalidResourceType`.
    #[error("resource type {index} is not 1 to 64 ASCII letters, or there are more than 64 types")]
    InvalidResourceType {
        /// The position of the refused type (64 when there are too many).
        index: U256,
    },
}

impl ConsentError {
    /// The registry's own error; `None` for the errors the ABI lists from OpenZeppelin's code
    /// (`InvalidAccountNonce`, `InvalidShortString`, `StringTooLong`), which the registry's
    /// calls never raise (they belong to functions it does not use or to its constructor).
    fn from_raw(raw: Raw) -> Option<Self> {
        Some(match raw {
            Raw::ConsentRegistryDeadlinePassed(e) => Self::DeadlinePassed {
                deadline: e.deadline,
            },
            Raw::ConsentRegistryInvalidSignature(e) => {
                Self::InvalidSignature { patient: e.patient }
            }
            Raw::ConsentRegistryInvalidNonce(e) => Self::InvalidNonce {
                patient: e.patient,
                expected: e.expected,
            },
            Raw::ConsentRegistryUnknownGrant(e) => Self::UnknownGrant {
                grant_id: e.grantId,
            },
            Raw::ConsentRegistryNotGrantor(e) => Self::NotGrantor {
                grant_id: e.grantId,
                account: e.account,
            },
            Raw::ConsentRegistryAlreadyRevoked(e) => Self::AlreadyRevoked {
                grant_id: e.grantId,
            },
            Raw::ConsentRegistryAlreadyExpired(e) => Self::AlreadyExpired {
                expires_at: e.expiresAt,
            },
            Raw::ConsentRegistryZeroGrantee(_) => Self::ZeroGrantee,
            Raw::ConsentRegistryInvalidPurpose(_) => Self::InvalidPurpose,
            Raw::ConsentRegistryInvalidResourceType(e) => {
                Self::InvalidResourceType { index: e.index }
            }
            Raw::InvalidAccountNonce(_) | Raw::InvalidShortString(_) | Raw::StringTooLong(_) => {
                return None;
            }
        })
    }
}

/// The registry's custom error in the revert data of a failed simulation.
fn consent_revert(data: &[u8]) -> Option<ChainError> {
    Raw::abi_decode(data)
        .ok()
        .and_then(ConsentError::from_raw)
        .map(ChainError::Consent)
}

/// A failed view call as a [`ChainError`]: the registry's custom errors typed.
fn call_error(endpoint: &str, error: &alloy::contract::Error) -> ChainError {
    if let Some(typed) = error
        .as_decoded_interface_error::<Raw>()
        .and_then(ConsentError::from_raw)
    {
        return ChainError::Consent(typed);
    }
    match error {
        alloy::contract::Error::TransportError(e) => rpc_error(endpoint, e),
        other => ChainError::Unexpected(crate::chain::redact(&other.to_string(), endpoint)),
    }
}

/// One grant as the registry keeps it (`IConsentRegistry.Grant`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentGrant {
    /// The granting patient's account.
    pub patient: Address,
    /// Who may read.
    pub grantee: B256,
    /// Unix time from which the grant no longer holds; 0: until revoked.
    pub expires_at: u64,
    /// The block that recorded the grant.
    pub granted_block: u64,
    /// The block that revoked it; `None` while it is not revoked.
    pub revoked_block: Option<u64>,
    /// The purpose of use.
    pub purpose: String,
    /// The resource types opened; empty: every type.
    pub resource_types: Vec<String>,
}

/// What a registry event recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentChange {
    /// `ConsentGranted`.
    Granted {
        /// The new grant's id.
        grant_id: u64,
        /// The granting patient's account.
        patient: Address,
        /// Who may read.
        grantee: B256,
        /// The resource types opened; empty: every type.
        resource_types: Vec<String>,
        /// The purpose of use.
        purpose: String,
        /// Unix time from which the grant no longer holds; 0: until revoked.
        expires_at: u64,
    },
    /// `ConsentRevoked`.
    Revoked {
        /// The revoked grant.
        grant_id: u64,
        /// The patient who had granted it.
        patient: Address,
        /// Who may no longer read under it.
        grantee: B256,
    },
}

/// A registry event with where it was emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentEvent {
    /// The emitting block's number.
    pub block_number: u64,
    /// The emitting block's hash.
    pub block_hash: B256,
    /// The emitting transaction.
    pub tx_hash: B256,
    /// The log's index in its block.
    pub log_index: u64,
    /// What changed.
    pub change: ConsentChange,
}

/// A read-only client of the consent registry at one address.
#[derive(Clone)]
pub struct ConsentReader {
    provider: DynProvider,
    registry: Address,
    chain_id: u64,
    endpoint: String,
}

impl std::fmt::Debug for ConsentReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsentReader")
            .field("endpoint", &self.endpoint)
            .field("chain_id", &self.chain_id)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl ConsentReader {
    /// Connects to the node at `rpc_url` (`http://` or `https://`), reads its chain id and
    /// checks that `registry` holds code ([`ChainError::NoRegistry`] if not).
    #[tracing::instrument(name = "chain.consent_registry.connect", skip_all)]
    pub async fn connect(rpc_url: &str, registry: Address) -> Result<Self, ChainError> {
        let (provider, endpoint) = http_provider(rpc_url)?;
        let chain_id = provider
            .get_chain_id()
            .await
            .map_err(|e| rpc_error(&endpoint, &e))?;
        let reader = Self {
            provider,
            registry,
            chain_id,
            endpoint,
        };
        let code = reader
            .provider
            .get_code_at(registry)
            .await
            .map_err(|e| reader.rpc(&e))?;
        if code.is_empty() {
            return Err(ChainError::NoRegistry(registry));
        }
        Ok(reader)
    }

    /// The registry's address.
    pub fn registry(&self) -> Address {
        self.registry
    }

    /// The chain id the node reported when the reader connected.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The node's scheme, host and port: what may be printed of its URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn rpc(&self, error: &RpcError<TransportErrorKind>) -> ChainError {
        rpc_error(&self.endpoint, error)
    }

    fn contract(&self) -> ConsentRegistry::ConsentRegistryInstance<&DynProvider> {
        ConsentRegistry::new(self.registry, &self.provider)
    }

    /// The number of the latest block.
    #[tracing::instrument(name = "chain.consent_registry.head", skip_all)]
    pub async fn head(&self) -> Result<u64, ChainError> {
        self.provider
            .get_block_number()
            .await
            .map_err(|e| self.rpc(&e))
    }

    /// The hash of the canonical block at height `number`, or `None` if the chain is not that long.
    #[tracing::instrument(name = "chain.consent_registry.block_hash", skip_all)]
    pub async fn block_hash(&self, number: u64) -> Result<Option<B256>, ChainError> {
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .await
            .map_err(|e| self.rpc(&e))?;
        Ok(block.map(|block| block.header.hash))
    }

    /// The time (seconds since the epoch) of the canonical block at height `number`, or
    /// `None` if the chain is not that long.
    #[tracing::instrument(name = "chain.consent_registry.block_timestamp", skip_all)]
    pub async fn block_timestamp(&self, number: u64) -> Result<Option<u64>, ChainError> {
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .await
            .map_err(|e| self.rpc(&e))?;
        Ok(block.map(|block| block.header.timestamp))
    }

    /// The registry's `ConsentGranted` and `ConsentRevoked` events in blocks
    /// `from_block ..= to_block`, in chain order (block, then log index), in one `eth_getLogs`.
    /// Providers cap the range one query may span; a follower asks in windows.
    #[tracing::instrument(name = "chain.consent_registry.events", skip_all)]
    pub async fn events(
        &self,
        from_block: u64,
        to_block: u64,
    ) -> Result<Vec<ConsentEvent>, ChainError> {
        let filter = Filter::new()
            .address(self.registry)
            .event_signature(vec![
                ConsentRegistry::ConsentGranted::SIGNATURE_HASH,
                ConsentRegistry::ConsentRevoked::SIGNATURE_HASH,
            ])
            .from_block(from_block)
            .to_block(to_block);
        let logs = self
            .provider
            .get_logs(&filter)
            .await
            .map_err(|e| self.rpc(&e))?;
        let mut events = logs
            .iter()
            .filter(|log| log.address() == self.registry && !log.removed)
            .map(event_of)
            .collect::<Result<Vec<_>, _>>()?;
        events.sort_by_key(|event| (event.block_number, event.log_index));
        Ok(events)
    }

    /// The nonce the next signed request of `patient` must carry.
    #[tracing::instrument(name = "chain.consent_registry.nonce", skip_all)]
    pub async fn nonce(&self, patient: Address) -> Result<U256, ChainError> {
        self.contract()
            .nonces(patient)
            .call()
            .await
            .map_err(|e| call_error(&self.endpoint, &e))
    }

    /// The id of the last grant (0 before the first).
    #[tracing::instrument(name = "chain.consent_registry.grant_count", skip_all)]
    pub async fn grant_count(&self) -> Result<u64, ChainError> {
        self.contract()
            .grantCount()
            .call()
            .await
            .map_err(|e| call_error(&self.endpoint, &e))
    }

    /// Grant `grant_id` as of the latest block, or as of block `at` (an `eth_call` at that
    /// block, for an auditor); [`ConsentError::UnknownGrant`] if there is none.
    #[tracing::instrument(name = "chain.consent_registry.grant", skip_all)]
    pub async fn grant(&self, grant_id: u64, at: Option<u64>) -> Result<ConsentGrant, ChainError> {
        let block = at.map_or(BlockId::Number(BlockNumberOrTag::Latest), |number| {
            BlockId::Number(BlockNumberOrTag::Number(number))
        });
        let grant = self
            .contract()
            .getGrant(grant_id)
            .block(block)
            .call()
            .await
            .map_err(|e| call_error(&self.endpoint, &e))?;
        Ok(ConsentGrant {
            patient: grant.patient,
            grantee: grant.grantee,
            expires_at: grant.expiresAt,
            granted_block: grant.grantedBlock,
            revoked_block: (grant.revokedBlock != 0).then_some(grant.revokedBlock),
            purpose: grant.purpose,
            resource_types: grant.resourceTypes,
        })
    }

    /// Whether `patient` lets `grantee` read `resource_type` for `purpose` now, and the newest
    /// grant that does (the registry's `isAllowed`).
    #[tracing::instrument(name = "chain.consent_registry.is_allowed", skip_all)]
    pub async fn is_allowed(
        &self,
        patient: Address,
        grantee: B256,
        resource_type: &str,
        purpose: &str,
    ) -> Result<Option<u64>, ChainError> {
        let answer = self
            .contract()
            .isAllowed(
                patient,
                grantee,
                resource_type.to_owned(),
                purpose.to_owned(),
            )
            .call()
            .await
            .map_err(|e| call_error(&self.endpoint, &e))?;
        Ok(answer.allowed.then_some(answer.grantId))
    }
}

/// A registry event from its log.
fn event_of(log: &Log) -> Result<ConsentEvent, ChainError> {
    let change = match log.topic0() {
        Some(&ConsentRegistry::ConsentGranted::SIGNATURE_HASH) => {
            let event = log
                .log_decode::<ConsentRegistry::ConsentGranted>()
                .map_err(|e| ChainError::Unexpected(format!("a malformed ConsentGranted: {e}")))?
                .inner
                .data;
            ConsentChange::Granted {
                grant_id: event.grantId,
                patient: event.patient,
                grantee: event.grantee,
                resource_types: event.resourceTypes,
                purpose: event.purpose,
                expires_at: event.expiresAt,
            }
        }
        Some(&ConsentRegistry::ConsentRevoked::SIGNATURE_HASH) => {
            let event = log
                .log_decode::<ConsentRegistry::ConsentRevoked>()
                .map_err(|e| ChainError::Unexpected(format!("a malformed ConsentRevoked: {e}")))?
                .inner
                .data;
            ConsentChange::Revoked {
                grant_id: event.grantId,
                patient: event.patient,
                grantee: event.grantee,
            }
        }
        _ => return Err(ChainError::Unexpected("a log of another event".into())),
    };
    Ok(ConsentEvent {
        block_number: log.block_number.ok_or_else(|| missing("block number"))?,
        block_hash: log.block_hash.ok_or_else(|| missing("block hash"))?,
        tx_hash: log
            .transaction_hash
            .ok_or_else(|| missing("transaction hash"))?,
        log_index: log.log_index.ok_or_else(|| missing("log index"))?,
        change,
    })
}

/// A relayed request, confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// The transaction that was mined.
    pub tx_hash: B256,
    /// Its block's number.
    pub block_number: u64,
    /// Its block's hash (canonical, [`ChainConfig::confirmations`] deep, when returned).
    pub block_hash: B256,
    /// The new grant's id, or the revoked one's.
    pub grant_id: u64,
}

/// Sends patients' signed grants and revocations to one registry, paying the gas with one key.
#[derive(Debug)]
pub struct ConsentRelayer {
    sender: TxSender,
    registry: Address,
}

impl ConsentRelayer {
    /// Deploys a new registry with `key` and returns its relayer, once the deployment is confirmed.
    #[tracing::instrument(name = "chain.consent_registry.deploy", skip_all)]
    pub async fn deploy(
        rpc_url: &str,
        key: SignerKey,
        config: ChainConfig,
    ) -> Result<(Self, Deployed), ChainError> {
        let sender = TxSender::connect(rpc_url, key, config).await?;
        let deployed =
            deploy_contract(&sender, ConsentRegistry::BYTECODE.clone(), consent_revert).await?;
        tracing::info!(registry = %deployed.registry, tx = %deployed.tx_hash, "deployed the ConsentRegistry");
        Ok((
            Self {
                sender,
                registry: deployed.registry,
            },
            deployed,
        ))
    }

    /// Connects to the registry at `registry`, checking that it holds code.
    #[tracing::instrument(name = "chain.consent_registry.connect", skip_all)]
    pub async fn connect(
        rpc_url: &str,
        key: SignerKey,
        registry: Address,
        config: ChainConfig,
    ) -> Result<Self, ChainError> {
        let sender = TxSender::connect(rpc_url, key, config).await?;
        if !sender.has_code(registry).await? {
            return Err(ChainError::NoRegistry(registry));
        }
        Ok(Self { sender, registry })
    }

    /// The registry's address.
    pub fn registry(&self) -> Address {
        self.registry
    }

    /// The chain's id.
    pub fn chain_id(&self) -> u64 {
        self.sender.chain_id()
    }

    /// The account that pays for the relayed transactions.
    pub fn relayer(&self) -> Address {
        self.sender.signer()
    }

    /// A reader of the same registry over the same connection.
    pub fn reader(&self) -> ConsentReader {
        ConsentReader {
            provider: self.sender.provider().clone(),
            registry: self.registry,
            chain_id: self.sender.chain_id(),
            endpoint: self.sender.endpoint().to_owned(),
        }
    }

    fn contract(&self) -> ConsentRegistry::ConsentRegistryInstance<&DynProvider> {
        ConsentRegistry::new(self.registry, self.sender.provider())
    }

    /// Sends the grant the patient signed (`signature`: 65 bytes r || s || v, or what the
    /// patient's ERC-1271 wallet accepts) and returns once it is confirmed, with the new
    /// grant's id. A request the registry refuses (a replay, another signer, a passed deadline,
    /// an invalid grant) comes back as [`ChainError::Consent`] without a transaction.
    #[tracing::instrument(name = "chain.consent_registry.relay_grant", skip_all)]
    pub async fn relay_grant(
        &self,
        request: &GrantRequest,
        signature: Bytes,
    ) -> Result<Relayed, ChainError> {
        let contract = self.contract();
        let call = contract.grantBySig(
            request.patient,
            request.grantee,
            request.resource_types.clone(),
            request.purpose.clone(),
            request.expires_at,
            request.nonce,
            request.deadline,
            signature,
        );
        let receipt = self.send(call.calldata().clone()).await?;
        let grant_id = receipt
            .inner
            .logs()
            .iter()
            .filter(|log| log.address() == self.registry)
            .find_map(|log| log.log_decode::<ConsentRegistry::ConsentGranted>().ok())
            .map(|log| log.inner.data.grantId)
            .ok_or_else(|| {
                ChainError::Unexpected("a grant receipt without a ConsentGranted event".into())
            })?;
        let relayed = relayed(&receipt, grant_id);
        tracing::info!(grant = grant_id, tx = %relayed.tx_hash, block = relayed.block_number, "relayed a signed grant");
        Ok(relayed)
    }

    /// Sends the revocation the patient signed and returns once it is confirmed; refusals
    /// come back like [`relay_grant`](Self::relay_grant)'s.
    #[tracing::instrument(name = "chain.consent_registry.relay_revoke", skip_all)]
    pub async fn relay_revoke(
        &self,
        request: &RevokeRequest,
        signature: Bytes,
    ) -> Result<Relayed, ChainError> {
        let contract = self.contract();
        let call = contract.revokeBySig(
            request.patient,
            request.grant_id,
            request.nonce,
            request.deadline,
            signature,
        );
        let receipt = self.send(call.calldata().clone()).await?;
        let relayed = relayed(&receipt, request.grant_id);
        tracing::info!(grant = request.grant_id, tx = %relayed.tx_hash, block = relayed.block_number, "relayed a signed revocation");
        Ok(relayed)
    }

    async fn send(
        &self,
        input: Bytes,
    ) -> Result<alloy::rpc::types::TransactionReceipt, ChainError> {
        let plan = Plan {
            kind: TxKind::Call(self.registry),
            input,
            decode_revert: consent_revert,
        };
        Ok(self.sender.send_confirmed(&plan).await?.receipt)
    }
}

fn relayed(receipt: &alloy::rpc::types::TransactionReceipt, grant_id: u64) -> Relayed {
    Relayed {
        tx_hash: receipt.transaction_hash,
        block_number: receipt.block_number.unwrap_or_default(),
        block_hash: receipt.block_hash.unwrap_or_default(),
        grant_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_data_lists_the_members_the_hash_uses() {
        let request = GrantRequest {
            patient: Address::repeat_byte(0x11),
            grantee: grantee_of_client("app"),
            resource_types: vec!["Observation".into()],
            purpose: "TREAT".into(),
            expires_at: 0,
            nonce: U256::from(3),
            deadline: U256::from(1_700_000_000u64),
        };
        let data = typed_data_grant(31337, Address::repeat_byte(0x22), &request);
        let members: Vec<String> = data["types"]["Grant"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| {
                format!(
                    "{} {}",
                    m["type"].as_str().expect("a type"),
                    m["name"].as_str().expect("a name")
                )
            })
            .collect();
        assert_eq!(
            format!("Grant({})", members.join(",")),
            "Grant(address patient,bytes32 grantee,string[] resourceTypes,string purpose,uint64 expiresAt,uint256 nonce,uint256 deadline)"
        );
        assert_eq!(data["primaryType"], "Grant");
        assert_eq!(data["message"]["nonce"], "3");
        assert_eq!(data["message"]["deadline"], "1700000000");
        let revoke = typed_data_revoke(
            1,
            Address::ZERO,
            &RevokeRequest {
                patient: Address::ZERO,
                grant_id: 7,
                nonce: U256::ZERO,
                deadline: U256::ZERO,
            },
        );
        assert_eq!(revoke["types"]["Revoke"].as_array().map(Vec::len), Some(4));
        assert_eq!(revoke["message"]["grantId"], "7");
    }

    #[test]
    fn grantees_follow_the_convention() {
        assert_eq!(
            grantee_of_account(Address::repeat_byte(0xab)).0[..12],
            [0u8; 12]
        );
        assert_eq!(grantee_of_client("x"), keccak256(b"client:x"));
        assert_eq!(grantee_of_user("Zoë"), keccak256("user:Zoë".as_bytes()));
    }
}
