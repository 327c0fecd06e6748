//! The chain client: deploys the `AnchorRegistry`, anchors batch roots in it, and reads
//! batches and `BatchAnchored` events back (alloy over JSON-RPC on `http://` or `https://`:
//! rustls on ring, certificates checked by the platform's verifier). The
//! contract's ABI and bytecode come from the committed `contracts/artifacts/AnchorRegistry.json`,
//! so building needs no node toolchain.
//!
//! One [`AnchorClient`] owns one signer and sends its transactions one at a time:
//!
//! - **nonces** are kept locally and sequentially; any error that may have left the local
//!   counter wrong (a refused send, a dropped transaction) makes the next send read it again
//!   from the chain (`eth_getTransactionCount`, pending);
//! - **fee bumping**: a transaction not mined after [`ChainConfig::bump_after`] is replaced by
//!   the same transaction with the same nonce and fees raised by
//!   [`ChainConfig::bump_percent`] (at least the 10% nodes require of a replacement), up to
//!   [`ChainConfig::max_fee_per_gas`]; whichever of the versions is mined is the anchor;
//! - **confirmations**: [`AnchorClient::anchor`] returns once the anchoring block is
//!   [`ChainConfig::confirmations`] deep in the canonical chain (1 = the block itself);
//! - **reorgs**: while it waits, the client compares the receipt's block hash with the canonical
//!   block at that height. A receipt that moved to another block is followed; a transaction that
//!   vanished (no receipt, unknown to the node) is sent again, after a fresh simulation. The
//!   contract refuses a batch that does not continue the log, so a re-sent anchor can never
//!   anchor a batch twice: if the first one comes back, the second one reverts. A transaction
//!   that vanishes from the node before it is mined (evicted from the pool) is sent again too.
//! - the contract's custom errors (`AnchorRegistryNotContiguous` and the others) come back as a
//!   typed [`RegistryError`], from the simulation that precedes every send.
//!
//! The signer key is given by the caller as a [`SignerKey`] (read from the environment or a
//! file by the caller); its `Debug` shows the address only, and no error or log line carries
//! it. Error and log lines name the RPC endpoint by scheme, host and port only, since a path or
//! query often holds an API key.
//!
//! The sending (nonces, simulation, fees, replacements, reorgs, confirmations) is the crate's
//! `TxSender` (`chain/sender.rs`), which the consent relayer ([`crate::consent`]) shares: each
//! transaction's plan carries the decoder of its contract's custom errors.
//!
//! A [`RegistryReader`] reads without a key: the registry's views and events, the head,
//! canonical block hashes and receipts, what an auditor checks a proof against (the
//! `fhir-anchor` command, [`crate::audit`]). The client's read methods go through one.

use std::str::FromStr as _;
use std::time::Duration;

use alloy::primitives::{Bytes, TxKind};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolInterface as _;
use alloy::transports::{RpcError, TransportErrorKind};

use crate::NodeHash;

pub use alloy::primitives::{Address, B256, U256};

mod reader;
mod sender;
pub use reader::{AnchorReceipt, RegistryReader};
pub(crate) use sender::{Plan, TxSender};

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    AnchorRegistry,
    "../contracts/artifacts/AnchorRegistry.json"
);

use AnchorRegistry::AnchorRegistryErrors as Raw;

/// The signing key of the anchoring account (secp256k1).
///
/// Its `Debug` shows the account's address, never the key.
#[derive(Clone)]
pub struct SignerKey(PrivateKeySigner);

impl SignerKey {
    /// Reads a key written as 64 hexadecimal digits, with or without `0x`, surrounding
    /// whitespace ignored (as read from a file or an environment variable).
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let digits = text.strip_prefix("0x").unwrap_or(text);
        if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyError);
        }
        PrivateKeySigner::from_str(digits)
            .map(Self)
            .map_err(|_| KeyError)
    }

    /// A fresh key from the operating system's random source (for an account on a
    /// development chain that the gateway creates and funds itself).
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; 32];
        loop {
            getrandom::fill(&mut bytes).map_err(|_| KeyError)?;
            // fails only for zero or a value past the curve order: draw again
            if let Ok(signer) = PrivateKeySigner::from_slice(&bytes) {
                return Ok(Self(signer));
            }
        }
    }

    /// The key as 64 hexadecimal digits: only for writing it to a key file readable by its
    /// owner alone. Never log it.
    pub fn expose_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    /// The account this key signs for: the log it anchors into.
    pub fn address(&self) -> Address {
        self.0.address()
    }
}

impl std::fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerKey")
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

/// Sets the balance of `account` on a development node (anvil's `anvil_setBalance`): how a
/// gateway funds the account it anchors with on its embedded chain.
#[tracing::instrument(name = "chain.anchor_registry.set_dev_balance", skip_all)]
pub async fn set_dev_balance(rpc_url: &str, account: Address, wei: U256) -> Result<(), ChainError> {
    let (provider, endpoint) = http_provider(rpc_url)?;
    provider
        .raw_request::<_, ()>("anvil_setBalance".into(), (account, wei))
        .await
        .map_err(|e| rpc_error(&endpoint, &e))?;
    Ok(())
}

/// The text given as a signer key is not a secp256k1 private key (the message never repeats it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the signer key is not a secp256k1 private key written as 64 hexadecimal digits")]
pub struct KeyError;

/// How the client sends and waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainConfig {
    /// How deep the anchoring block must be in the canonical chain (1 = included). At least 1.
    pub confirmations: u64,
    /// How often receipts and the head are polled.
    pub poll_interval: Duration,
    /// How long a sent transaction may stay unmined before it is replaced with higher fees.
    pub bump_after: Duration,
    /// By how much a replacement raises both fees, in percent (at least 10, what nodes require).
    pub bump_percent: u32,
    /// The highest `maxFeePerGas` the client ever offers (wei); `None` for no cap. Once the cap
    /// is reached the transaction is no longer replaced, only waited for.
    pub max_fee_per_gas: Option<u128>,
}

impl Default for ChainConfig {
    /// Defaults for a public chain with 12-second blocks: 3 confirmations, polled every 2
    /// seconds, replaced with 25% higher fees after 60 seconds (five blocks missed), no cap.
    fn default() -> Self {
        Self {
            confirmations: 3,
            poll_interval: Duration::from_secs(2),
            bump_after: Duration::from_secs(60),
            bump_percent: 25,
            max_fee_per_gas: None,
        }
    }
}

/// A custom error of the `AnchorRegistry` contract (contracts/src/IAnchorRegistry.sol).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// `AnchorRegistryNotContiguous`: the batch does not start where the log ends.
    #[error("the batch starts at log index {first_index}, the log ends at {expected_first_index}")]
    NotContiguous {
        /// The log's current size, where the next batch must start.
        expected_first_index: u64,
        /// Where the refused batch starts.
        first_index: u64,
    },
    /// `AnchorRegistryEmptyBatch`.
    #[error("a batch must hold at least one leaf")]
    EmptyBatch,
    /// `AnchorRegistryZeroRoot`.
    #[error("the zero root is refused")]
    ZeroRoot,
    /// `AnchorRegistryLogOverflow`.
    #[error("a batch of {size} leaves at {first_index} overflows the log's 64-bit indexes")]
    LogOverflow {
        /// Where the batch starts.
        first_index: u64,
        /// Its size.
        size: u64,
    },
    /// `AnchorRegistryUnknownBatch`.
    #[error("the log of {anchorer} has no batch {batch_number}")]
    UnknownBatch {
        /// The log's account.
        anchorer: Address,
        /// The batch number asked for.
        batch_number: u64,
    },
    /// `AnchorRegistryLeafNotInBatch`.
    #[error("log index {log_index} is not in the batch of {size} leaves at {first_index}")]
    LeafNotInBatch {
        /// The log index asked for.
        log_index: u64,
        /// The batch's first index.
        first_index: u64,
        /// The batch's size.
        size: u64,
    },
    /// `AnchorRegistryIndexOutOfRange`.
    #[error("leaf index {index} is not below the tree size {tree_size}")]
    IndexOutOfRange {
        /// The leaf index.
        index: U256,
        /// The tree size.
        tree_size: U256,
    },
    /// `AnchorRegistryWrongPathLength`.
    #[error("the inclusion path holds {actual} hashes, {expected} expected")]
    WrongPathLength {
        /// The length the index and size require.
        expected: U256,
        /// The length given.
        actual: U256,
    },
}

impl From<Raw> for RegistryError {
    fn from(raw: Raw) -> Self {
        match raw {
            Raw::AnchorRegistryNotContiguous(e) => Self::NotContiguous {
                expected_first_index: e.expectedFirstIndex,
                first_index: e.firstIndex,
            },
            Raw::AnchorRegistryEmptyBatch(_) => Self::EmptyBatch,
            Raw::AnchorRegistryZeroRoot(_) => Self::ZeroRoot,
            Raw::AnchorRegistryLogOverflow(e) => Self::LogOverflow {
                first_index: e.firstIndex,
                size: e.size,
            },
            Raw::AnchorRegistryUnknownBatch(e) => Self::UnknownBatch {
                anchorer: e.anchorer,
                batch_number: e.batchNumber,
            },
            Raw::AnchorRegistryLeafNotInBatch(e) => Self::LeafNotInBatch {
                log_index: e.logIndex,
                first_index: e.firstIndex,
                size: e.size,
            },
            Raw::AnchorRegistryIndexOutOfRange(e) => Self::IndexOutOfRange {
                index: e.index,
                tree_size: e.treeSize,
            },
            Raw::AnchorRegistryWrongPathLength(e) => Self::WrongPathLength {
                expected: e.expected,
                actual: e.actual,
            },
        }
    }
}

/// Why a chain operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The registry refused the call with one of its custom errors.
    #[error("the registry refused: {0}")]
    Registry(#[from] RegistryError),
    /// The consent registry refused the call with one of its custom errors.
    #[error("the consent registry refused: {0}")]
    Consent(#[from] crate::consent::ConsentError),
    /// The RPC endpoint failed or answered with an error (the message names the endpoint by
    /// scheme, host and port only).
    #[error("RPC error from {endpoint}: {message}")]
    Rpc {
        /// Scheme, host and port of the endpoint.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// A mined transaction reverted for a reason the simulation before it did not show.
    #[error("transaction {tx_hash} reverted")]
    Reverted {
        /// The reverted transaction.
        tx_hash: B256,
    },
    /// There is no contract code at the registry address.
    #[error("no contract code at the registry address {0}")]
    NoRegistry(Address),
    /// The node answered something the client cannot use.
    #[error("unexpected answer from the node: {0}")]
    Unexpected(String),
    /// The RPC URL cannot be parsed.
    #[error("the RPC URL is not a valid URL")]
    InvalidUrl,
    /// The RPC URL is neither `http://` nor `https://`.
    #[error("the RPC URL scheme {0:?} is not supported (http or https)")]
    UnsupportedScheme(String),
}

/// A batch as the registry keeps it (`IAnchorRegistry.Batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnchoredBatch {
    /// RFC 9162 root of the batch's leaves.
    pub root: NodeHash,
    /// Log index of its first leaf.
    pub first_index: u64,
    /// Number of leaves.
    pub size: u64,
    /// Number of the anchoring block.
    pub block_number: u64,
    /// Timestamp of the anchoring block (seconds since the epoch).
    pub timestamp: u64,
}

/// One `BatchAnchored` event, with where it was emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchAnchoredEvent {
    /// The log's account.
    pub anchorer: Address,
    /// The batch's number in that log.
    pub batch_number: u64,
    /// Log index of its first leaf.
    pub first_index: u64,
    /// Number of leaves.
    pub size: u64,
    /// RFC 9162 root of the batch.
    pub root: NodeHash,
    /// The emitting block's number.
    pub block_number: u64,
    /// The emitting block's hash.
    pub block_hash: B256,
    /// The emitting transaction.
    pub tx_hash: B256,
}

/// A confirmed anchor: where the batch went and what it took to get it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchored {
    /// The batch's number in the log.
    pub batch_number: u64,
    /// The transaction that was mined (the last replacement, if one was mined).
    pub tx_hash: B256,
    /// The anchoring block's number.
    pub block_number: u64,
    /// The anchoring block's hash (canonical, [`ChainConfig::confirmations`] deep, when returned).
    pub block_hash: B256,
    /// Gas the transaction used.
    pub gas_used: u64,
    /// How many times a transaction was replaced with higher fees.
    pub replacements: u32,
    /// How many times a reorg took the transaction out of the block it was seen in.
    pub reorgs: u32,
    /// How many times the transaction vanished from the node before it was seen mined
    /// (evicted from the pool, or its block undone before the receipt was read) and was sent
    /// again.
    pub dropped: u32,
}

/// A confirmed deployment of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    /// The registry's address.
    pub registry: Address,
    /// The deployment transaction.
    pub tx_hash: B256,
    /// Its block.
    pub block_number: u64,
}

/// The client of one registry, signing with one key.
pub struct AnchorClient {
    sender: TxSender,
    registry: Address,
}

impl std::fmt::Debug for AnchorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnchorClient")
            .field("registry", &self.registry)
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

/// Scheme, host and port of a URL: what may be logged of it.
fn endpoint_of(url: &reqwest_url::Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
        (Some(host), None) => format!("{}://{host}", url.scheme()),
        _ => url.scheme().to_owned(),
    }
}

mod reqwest_url {
    pub(super) use alloy::transports::http::reqwest::Url;
}

/// The registry's custom error in the revert data of a failed simulation.
fn registry_revert(data: &[u8]) -> Option<ChainError> {
    Raw::abi_decode(data)
        .ok()
        .map(|raw| ChainError::Registry(raw.into()))
}

impl AnchorClient {
    /// Connects to the registry at `registry`, checking that it holds code.
    #[tracing::instrument(name = "chain.anchor_registry.connect", skip_all)]
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

    /// Deploys a new registry with `key` and returns the client of it, once the deployment is
    /// confirmed.
    #[tracing::instrument(name = "chain.anchor_registry.deploy", skip_all)]
    pub async fn deploy(
        rpc_url: &str,
        key: SignerKey,
        config: ChainConfig,
    ) -> Result<(Self, Deployed), ChainError> {
        let sender = TxSender::connect(rpc_url, key, config).await?;
        let deployed =
            deploy_contract(&sender, AnchorRegistry::BYTECODE.clone(), registry_revert).await?;
        tracing::info!(registry = %deployed.registry, tx = %deployed.tx_hash, "deployed the AnchorRegistry");
        Ok((
            Self {
                sender,
                registry: deployed.registry,
            },
            deployed,
        ))
    }

    /// The registry's address.
    pub fn registry(&self) -> Address {
        self.registry
    }

    /// The anchoring account: the log this client appends to.
    pub fn anchorer(&self) -> Address {
        self.sender.signer()
    }

    /// The chain's id.
    pub fn chain_id(&self) -> u64 {
        self.sender.chain_id()
    }

    /// The provider, for reads this client does not wrap.
    pub fn provider(&self) -> &DynProvider {
        self.sender.provider()
    }

    /// A read-only client of the same registry over the same connection.
    pub fn reader(&self) -> RegistryReader {
        RegistryReader::from_parts(
            self.sender.provider().clone(),
            self.registry,
            self.sender.chain_id(),
            self.sender.endpoint().to_owned(),
        )
    }

    fn contract(&self) -> AnchorRegistry::AnchorRegistryInstance<&DynProvider> {
        AnchorRegistry::new(self.registry, self.sender.provider())
    }

    /// Anchors the batch of `size` leaves starting at log index `first_index` with `root`, and
    /// returns once it is confirmed.
    ///
    /// The call is simulated first: a batch the registry would refuse comes back as
    /// [`ChainError::Registry`] without a transaction. Then the transaction is sent, replaced
    /// with higher fees while it stays unmined, followed across reorgs (and sent again if a
    /// reorg dropped it) until its block is deep enough.
    ///
    /// An error after the transaction went out (the endpoint failing while the client waits)
    /// does not mean the batch is not anchored: one of its versions may still be mined. A
    /// caller that retries sees [`RegistryError::NotContiguous`] with `expected_first_index`
    /// at or past `first_index + size` if so, and reads the batch back with
    /// [`batch_anchored_events`](Self::batch_anchored_events) or [`batch`](Self::batch).
    #[tracing::instrument(name = "chain.anchor_registry.anchor", skip_all)]
    pub async fn anchor(
        &self,
        first_index: u64,
        size: u64,
        root: &NodeHash,
    ) -> Result<Anchored, ChainError> {
        let contract = self.contract();
        let call = contract.anchor(first_index, size, B256::from(*root.as_bytes()));
        let plan = Plan {
            kind: TxKind::Call(self.registry),
            input: call.calldata().clone(),
            decode_revert: registry_revert,
        };
        let confirmed = self.sender.send_confirmed(&plan).await?;
        let receipt = &confirmed.receipt;
        let event = receipt
            .inner
            .logs()
            .iter()
            .filter(|log| log.address() == self.registry)
            .find_map(|log| log.log_decode::<AnchorRegistry::BatchAnchored>().ok())
            .ok_or_else(|| {
                ChainError::Unexpected("an anchor receipt without a BatchAnchored event".into())
            })?;
        let anchored = Anchored {
            batch_number: event.inner.data.batchNumber,
            tx_hash: receipt.transaction_hash,
            block_number: receipt.block_number.unwrap_or_default(),
            block_hash: receipt.block_hash.unwrap_or_default(),
            gas_used: receipt.gas_used,
            replacements: confirmed.replacements,
            reorgs: confirmed.reorgs,
            dropped: confirmed.dropped,
        };
        tracing::info!(
            first_index,
            size,
            batch = anchored.batch_number,
            tx = %anchored.tx_hash,
            block = anchored.block_number,
            replacements = anchored.replacements,
            reorgs = anchored.reorgs,
            dropped = anchored.dropped,
            "anchored a batch"
        );
        Ok(anchored)
    }

    /// How many transactions of the signer the node holds unmined (its pending nonce minus
    /// its latest one): after a restart, the transactions an earlier process sent and never
    /// saw mined.
    #[tracing::instrument(name = "chain.anchor_registry.unmined_transactions", skip_all)]
    pub async fn unmined_transactions(&self) -> Result<u64, ChainError> {
        let pending = self.sender.chain_nonce().await?;
        let latest = self
            .sender
            .provider()
            .get_transaction_count(self.sender.signer())
            .latest()
            .await
            .map_err(|e| self.sender.rpc(&e))?;
        Ok(pending.saturating_sub(latest))
    }

    /// Number of leaves in the log of `anchorer` (where its next batch must start).
    #[tracing::instrument(name = "chain.anchor_registry.log_size", skip_all)]
    pub async fn log_size(&self, anchorer: Address) -> Result<u64, ChainError> {
        self.reader().log_size(anchorer).await
    }

    /// Number of batches in the log of `anchorer`.
    #[tracing::instrument(name = "chain.anchor_registry.batch_count", skip_all)]
    pub async fn batch_count(&self, anchorer: Address) -> Result<u64, ChainError> {
        self.reader().batch_count(anchorer).await
    }

    /// Batch `batch_number` of the log of `anchorer`; [`RegistryError::UnknownBatch`] if none.
    #[tracing::instrument(name = "chain.anchor_registry.batch", skip_all)]
    pub async fn batch(
        &self,
        anchorer: Address,
        batch_number: u64,
    ) -> Result<AnchoredBatch, ChainError> {
        self.reader().batch(anchorer, batch_number).await
    }

    /// The `BatchAnchored` events of the log of `anchorer` in blocks `from_block ..= to_block`
    /// (`None`: the latest block), in chain order. Providers cap the range one query may span;
    /// a caller replaying a long chain asks in windows.
    #[tracing::instrument(name = "chain.anchor_registry.batch_anchored_events", skip_all)]
    pub async fn batch_anchored_events(
        &self,
        anchorer: Address,
        from_block: u64,
        to_block: Option<u64>,
    ) -> Result<Vec<BatchAnchoredEvent>, ChainError> {
        self.reader()
            .batch_anchored_events(anchorer, from_block, to_block)
            .await
    }
}

/// Deploys a contract from `bytecode` (constructor arguments appended, if any) and returns
/// where it is once the deployment is confirmed.
pub(crate) async fn deploy_contract(
    sender: &TxSender,
    bytecode: Bytes,
    decode_revert: fn(&[u8]) -> Option<ChainError>,
) -> Result<Deployed, ChainError> {
    let plan = Plan {
        kind: TxKind::Create,
        input: bytecode,
        decode_revert,
    };
    let receipt = sender.send_confirmed(&plan).await?.receipt;
    let registry = receipt
        .contract_address
        .ok_or_else(|| ChainError::Unexpected("a deployment receipt without an address".into()))?;
    Ok(Deployed {
        registry,
        tx_hash: receipt.transaction_hash,
        block_number: receipt.block_number.unwrap_or_default(),
    })
}

/// A provider for `rpc_url` (`http://` or `https://`) and the endpoint's printable name.
pub(crate) fn http_provider(rpc_url: &str) -> Result<(DynProvider, String), ChainError> {
    let url: reqwest_url::Url = rpc_url.parse().map_err(|_| ChainError::InvalidUrl)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ChainError::UnsupportedScheme(url.scheme().to_owned()));
    }
    install_tls_provider();
    let endpoint = endpoint_of(&url);
    let provider = ProviderBuilder::new()
        .disable_recommended_fillers()
        .connect_http(url)
        .erased();
    Ok((provider, endpoint))
}

/// Makes rustls use ring for TLS (once per process; a provider installed before, by the
/// embedding program, is kept). Certificates are checked by the platform's verifier.
fn install_tls_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A failed contract call as a [`ChainError`]: the registry's custom errors typed.
fn contract_error(endpoint: &str, error: &alloy::contract::Error) -> ChainError {
    if let Some(raw) = error.as_decoded_interface_error::<Raw>() {
        return ChainError::Registry(raw.into());
    }
    match error {
        alloy::contract::Error::TransportError(e) => rpc_error(endpoint, e),
        other => ChainError::Unexpected(redact(&other.to_string(), endpoint)),
    }
}

pub(crate) fn missing(what: &str) -> ChainError {
    ChainError::Unexpected(format!("the node's answer lacks the {what}"))
}

pub(crate) fn rpc_error(endpoint: &str, error: &RpcError<TransportErrorKind>) -> ChainError {
    ChainError::Rpc {
        endpoint: endpoint.to_owned(),
        message: redact(&error.to_string(), endpoint),
    }
}

/// Removes URLs from an error message (reqwest names the full URL, API key included); the
/// endpoint is reported separately.
pub(crate) fn redact(message: &str, endpoint: &str) -> String {
    message
        .split(' ')
        .map(|word| {
            let bare = word.trim_matches(|c: char| "()[]<>,;\"'".contains(c));
            if bare.starts_with("http://") || bare.starts_with("https://") {
                word.replace(bare, endpoint)
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    #[test]
    fn signer_key_reads_hex_and_never_shows_it() {
        let key = SignerKey::from_hex(&format!(" 0x{KEY}\n")).expect("a valid key");
        let debug = format!("{key:?}");
        assert!(
            !debug.contains(KEY) && !debug.contains(&KEY[..16]),
            "{debug}"
        );
        assert!(
            debug.contains("f39fd6e51aad88f6f4ce6ab8827279cfffb92266"),
            "{debug}"
        );
        for bad in [
            "",
            "0x",
            &KEY[1..],
            &format!("{KEY}00"),
            &KEY.replace('a', "g"),
        ] {
            let error = SignerKey::from_hex(bad).expect_err("not a key");
            assert!(!bad.is_empty() && !error.to_string().contains(bad) || bad.is_empty());
        }
    }

    #[test]
    fn redact_removes_urls_with_their_keys() {
        let message = "error sending request for url (https://mainnet.example/v3/SECRET): refused";
        let redacted = redact(message, "https://mainnet.example:443");
        assert!(!redacted.contains("SECRET"), "{redacted}");
        assert!(
            redacted.contains("https://mainnet.example:443"),
            "{redacted}"
        );
        assert!(redacted.ends_with("refused"), "{redacted}");
    }

    #[test]
    fn endpoint_keeps_scheme_host_and_port_only() {
        let url: reqwest_url::Url = "https://user:pw@rpc.example/v3/SECRET?k=1"
            .parse()
            .expect("url");
        assert_eq!(endpoint_of(&url), "https://rpc.example:443");
    }
}
