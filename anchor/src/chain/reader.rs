//! The read-only client of a registry: what an auditor needs, with no key.
//!
//! A [`RegistryReader`] reads the registry's views (`batch`, `batchCount`, `logSize`), its
//! `BatchAnchored` events, and the chain around them (head, canonical block hashes, receipts).
//! It signs nothing and sends nothing. [`AnchorClient`](super::AnchorClient)'s read methods go
//! through one (its [`reader`](super::AnchorClient::reader)).

use alloy::eips::{BlockId, BlockNumberOrTag};
use alloy::primitives::{Address, B256};
use alloy::providers::{DynProvider, Provider as _};
use alloy::rpc::types::Log;
use alloy::transports::{RpcError, TransportErrorKind};

use super::{
    AnchorRegistry, AnchoredBatch, BatchAnchoredEvent, ChainError, contract_error, http_provider,
    missing, rpc_error,
};
use crate::NodeHash;

/// A read-only client of the registry at one address.
///
/// View calls read the latest block unless the reader is pinned to one with
/// [`at_block`](Self::at_block), so that several reads see one state of the chain.
#[derive(Clone)]
pub struct RegistryReader {
    provider: DynProvider,
    registry: Address,
    chain_id: u64,
    endpoint: String,
    block: BlockId,
}

impl std::fmt::Debug for RegistryReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryReader")
            .field("endpoint", &self.endpoint)
            .field("chain_id", &self.chain_id)
            .field("registry", &self.registry)
            .field("block", &self.block)
            .finish_non_exhaustive()
    }
}

/// A mined transaction as an auditor checks it: did it succeed, where is it, and which
/// `BatchAnchored` events did the registry emit in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorReceipt {
    /// The transaction.
    pub tx_hash: B256,
    /// Whether it succeeded (status 1).
    pub succeeded: bool,
    /// The number of the block the receipt names.
    pub block_number: u64,
    /// The hash of that block.
    pub block_hash: B256,
    /// The `BatchAnchored` events emitted by the registry in this transaction, in order
    /// (events of other contracts with the same signature are left out).
    pub events: Vec<BatchAnchoredEvent>,
}

impl RegistryReader {
    /// Connects to the node at `rpc_url` (plain `http://`) and reads its chain id. It does not
    /// check that `registry` holds code: [`has_code`](Self::has_code) does, so that a caller
    /// can first check that it is on the right chain.
    pub async fn connect(rpc_url: &str, registry: Address) -> Result<Self, ChainError> {
        let (provider, endpoint) = http_provider(rpc_url)?;
        let chain_id = provider
            .get_chain_id()
            .await
            .map_err(|e| rpc_error(&endpoint, &e))?;
        Ok(Self::from_parts(provider, registry, chain_id, endpoint))
    }

    /// A reader sharing a connection already made.
    pub(super) fn from_parts(
        provider: DynProvider,
        registry: Address,
        chain_id: u64,
        endpoint: String,
    ) -> Self {
        Self {
            provider,
            registry,
            chain_id,
            endpoint,
            block: BlockId::Number(BlockNumberOrTag::Latest),
        }
    }

    /// The same reader, its view calls and code reads made at block `number`.
    pub fn at_block(&self, number: u64) -> Self {
        Self {
            block: BlockId::Number(BlockNumberOrTag::Number(number)),
            ..self.clone()
        }
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

    /// The provider, for reads this reader does not wrap.
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    fn contract(&self) -> AnchorRegistry::AnchorRegistryInstance<&DynProvider> {
        AnchorRegistry::new(self.registry, &self.provider)
    }

    fn rpc(&self, error: &RpcError<TransportErrorKind>) -> ChainError {
        rpc_error(&self.endpoint, error)
    }

    /// Whether the registry's address holds contract code.
    pub async fn has_code(&self) -> Result<bool, ChainError> {
        let code = self
            .provider
            .get_code_at(self.registry)
            .block_id(self.block)
            .await
            .map_err(|e| self.rpc(&e))?;
        Ok(!code.is_empty())
    }

    /// Number of leaves in the log of `anchorer` (where its next batch must start).
    pub async fn log_size(&self, anchorer: Address) -> Result<u64, ChainError> {
        self.contract()
            .logSize(anchorer)
            .block(self.block)
            .call()
            .await
            .map_err(|e| contract_error(&self.endpoint, &e))
    }

    /// Number of batches in the log of `anchorer`.
    pub async fn batch_count(&self, anchorer: Address) -> Result<u64, ChainError> {
        self.contract()
            .batchCount(anchorer)
            .block(self.block)
            .call()
            .await
            .map_err(|e| contract_error(&self.endpoint, &e))
    }

    /// Batch `batch_number` of the log of `anchorer`;
    /// [`RegistryError::UnknownBatch`](super::RegistryError::UnknownBatch) if none.
    pub async fn batch(
        &self,
        anchorer: Address,
        batch_number: u64,
    ) -> Result<AnchoredBatch, ChainError> {
        let batch = self
            .contract()
            .batch(anchorer, batch_number)
            .block(self.block)
            .call()
            .await
            .map_err(|e| contract_error(&self.endpoint, &e))?;
        Ok(AnchoredBatch {
            root: NodeHash::from_bytes(batch.root.0),
            first_index: batch.firstIndex,
            size: batch.size,
            block_number: batch.blockNumber,
            timestamp: batch.timestamp,
        })
    }

    /// The `BatchAnchored` events of the log of `anchorer` in blocks `from_block ..= to_block`
    /// (`None`: the latest block), in chain order, in one `eth_getLogs`. Providers cap the
    /// range one query may span; a caller replaying a long chain asks in windows.
    pub async fn batch_anchored_events(
        &self,
        anchorer: Address,
        from_block: u64,
        to_block: Option<u64>,
    ) -> Result<Vec<BatchAnchoredEvent>, ChainError> {
        let contract = self.contract();
        let filter = contract
            .BatchAnchored_filter()
            .topic1(anchorer)
            .from_block(from_block)
            .to_block(to_block.map_or(BlockNumberOrTag::Latest, BlockNumberOrTag::Number));
        let events = filter
            .query()
            .await
            .map_err(|e| contract_error(&self.endpoint, &e))?;
        events
            .iter()
            .map(|(event, log)| event_of(event, log))
            .collect()
    }

    /// The number of the latest block.
    pub async fn head(&self) -> Result<u64, ChainError> {
        self.provider
            .get_block_number()
            .await
            .map_err(|e| self.rpc(&e))
    }

    /// The hash of the canonical block at height `number`, or `None` if the chain is not
    /// that long.
    pub async fn block_hash(&self, number: u64) -> Result<Option<B256>, ChainError> {
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .await
            .map_err(|e| self.rpc(&e))?;
        Ok(block.map(|block| block.header.hash))
    }

    /// The receipt of transaction `tx_hash`, or `None` if the node has no mined receipt of it.
    pub async fn receipt(&self, tx_hash: B256) -> Result<Option<AnchorReceipt>, ChainError> {
        let Some(receipt) = self
            .provider
            .get_transaction_receipt(tx_hash)
            .await
            .map_err(|e| self.rpc(&e))?
        else {
            return Ok(None);
        };
        let (Some(block_number), Some(block_hash)) = (receipt.block_number, receipt.block_hash)
        else {
            return Ok(None);
        };
        let events = receipt
            .inner
            .logs()
            .iter()
            .filter(|log| log.address() == self.registry)
            .filter_map(|log| log.log_decode::<AnchorRegistry::BatchAnchored>().ok())
            .map(|decoded| event_of(&decoded.inner.data, &decoded))
            .collect::<Result<_, _>>()?;
        Ok(Some(AnchorReceipt {
            tx_hash: receipt.transaction_hash,
            succeeded: receipt.status(),
            block_number,
            block_hash,
            events,
        }))
    }
}

/// A `BatchAnchored` event with where it was emitted.
fn event_of<T>(
    event: &AnchorRegistry::BatchAnchored,
    log: &Log<T>,
) -> Result<BatchAnchoredEvent, ChainError> {
    Ok(BatchAnchoredEvent {
        anchorer: event.anchorer,
        batch_number: event.batchNumber,
        first_index: event.firstIndex,
        size: event.size,
        root: NodeHash::from_bytes(event.root.0),
        block_number: log.block_number.ok_or_else(|| missing("block number"))?,
        block_hash: log.block_hash.ok_or_else(|| missing("block hash"))?,
        tx_hash: log
            .transaction_hash
            .ok_or_else(|| missing("transaction hash"))?,
    })
}
