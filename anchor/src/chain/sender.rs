//! The transaction sender the chain clients share: one signer, its transactions sent one at
//! a time, each simulated first, then sent, replaced with higher fees while it stays unmined,
//! followed across reorgs (and sent again if a reorg or the pool dropped it) until its block is
//! deep enough. See [the module documentation](super) for the rules.
//!
//! The sender knows no contract: a [`Plan`] carries the decoder of its contract's custom
//! errors, which the simulation hands the revert data to, so that the
//! [`AnchorClient`](super::AnchorClient) gets [`RegistryError`](super::RegistryError)s and the
//! [`ConsentRelayer`](crate::consent::ConsentRelayer) gets
//! [`ConsentError`](crate::consent::ConsentError)s.

use std::time::Instant;

use alloy::eips::BlockNumberOrTag;
use alloy::eips::eip2718::Encodable2718 as _;
use alloy::network::{EthereumWallet, NetworkTransactionBuilder as _, TransactionBuilder as _};
use alloy::primitives::{Address, B256, Bytes, TxKind};
use alloy::providers::{DynProvider, Provider as _};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::transports::{RpcError, TransportErrorKind};

use super::{ChainConfig, ChainError, SignerKey, http_provider, missing, rpc_error};

/// A transaction to send: where to and what, and how its contract's custom errors read.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) kind: TxKind,
    pub(crate) input: Bytes,
    /// The contract's typed error for the revert data of a failed simulation; `None` if the
    /// data is none of its errors (the node's error is reported as it is).
    pub(crate) decode_revert: fn(&[u8]) -> Option<ChainError>,
}

/// The versions of one transaction sent with one nonce.
#[derive(Debug)]
struct InFlight {
    nonce: u64,
    gas_limit: u64,
    max_fee: u128,
    priority_fee: u128,
    hashes: Vec<B256>,
    last_sent: Instant,
}

/// How waiting for a sent transaction ended.
#[derive(Debug)]
enum Outcome {
    /// One version was mined.
    Mined {
        receipt: Box<TransactionReceipt>,
        replacements: u32,
        flight: InFlight,
    },
    /// No version was mined and the node knows none of them any more.
    Vanished { replacements: u32 },
}

/// What a confirmed transaction left.
#[derive(Debug)]
pub(crate) struct Confirmed {
    pub(crate) receipt: TransactionReceipt,
    /// How many times a transaction was replaced with higher fees.
    pub(crate) replacements: u32,
    /// How many times a reorg took the transaction out of the block it was seen in.
    pub(crate) reorgs: u32,
    /// How many times it vanished before it was seen mined and was sent again.
    pub(crate) dropped: u32,
}

/// Sends the transactions of one signer over one connection, one at a time.
pub(crate) struct TxSender {
    provider: DynProvider,
    wallet: EthereumWallet,
    signer: Address,
    chain_id: u64,
    endpoint: String,
    config: ChainConfig,
    /// The next nonce to use, or `None` to read it from the chain first. Held for the whole of
    /// a send, so the transactions go out one at a time.
    nonce: tokio::sync::Mutex<Option<u64>>,
}

impl std::fmt::Debug for TxSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxSender")
            .field("endpoint", &self.endpoint)
            .field("chain_id", &self.chain_id)
            .field("signer", &self.signer)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TxSender {
    /// Connects to the node at `rpc_url` and reads its chain id. The configuration is
    /// clamped: at least 1 confirmation and a 10% bump.
    pub(crate) async fn connect(
        rpc_url: &str,
        key: SignerKey,
        config: ChainConfig,
    ) -> Result<Self, ChainError> {
        let (provider, endpoint) = http_provider(rpc_url)?;
        let chain_id = provider
            .get_chain_id()
            .await
            .map_err(|e| rpc_error(&endpoint, &e))?;
        let signer = key.address();
        Ok(Self {
            provider,
            wallet: EthereumWallet::from(key.0),
            signer,
            chain_id,
            endpoint,
            config: ChainConfig {
                confirmations: config.confirmations.max(1),
                bump_percent: config.bump_percent.max(10),
                ..config
            },
            nonce: tokio::sync::Mutex::new(None),
        })
    }

    /// The signing account.
    pub(crate) fn signer(&self) -> Address {
        self.signer
    }

    /// The chain's id.
    pub(crate) fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The node's scheme, host and port.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The provider.
    pub(crate) fn provider(&self) -> &DynProvider {
        &self.provider
    }

    pub(crate) fn rpc(&self, error: &RpcError<TransportErrorKind>) -> ChainError {
        rpc_error(&self.endpoint, error)
    }

    /// Whether `address` holds contract code.
    pub(crate) async fn has_code(&self, address: Address) -> Result<bool, ChainError> {
        let code = self
            .provider
            .get_code_at(address)
            .await
            .map_err(|e| self.rpc(&e))?;
        Ok(!code.is_empty())
    }

    /// Sends `plan` and waits until it is confirmed, replacing it while it stays unmined and
    /// sending it again if a reorg drops it.
    pub(crate) async fn send_confirmed(&self, plan: &Plan) -> Result<Confirmed, ChainError> {
        let mut replacements = 0;
        let mut reorgs = 0;
        let mut dropped = 0;
        let mut in_flight: Option<InFlight> = None;
        loop {
            let outcome = {
                let mut next_nonce = self.nonce.lock().await;
                let result = self
                    .send_until_mined(plan, &mut next_nonce, in_flight.take())
                    .await;
                if !matches!(result, Ok(Outcome::Mined { .. })) {
                    *next_nonce = None;
                }
                result?
            };
            let (receipt, bumps) = match outcome {
                Outcome::Mined {
                    receipt,
                    replacements: bumps,
                    flight,
                } => (*receipt, (bumps, flight)),
                Outcome::Vanished {
                    replacements: bumps,
                } => {
                    // Neither mined nor known to the node: simulate and send it again, with a
                    // nonce read from the chain.
                    replacements += bumps;
                    dropped += 1;
                    continue;
                }
            };
            replacements += bumps.0;
            if !receipt.status() {
                // The simulation passed and the transaction reverted: the state changed in
                // between. Simulating again names the reason if it is one of the registry's.
                self.simulate(plan).await?;
                return Err(ChainError::Reverted {
                    tx_hash: receipt.transaction_hash,
                });
            }
            match self.wait_confirmations(receipt, &mut reorgs).await? {
                Ok(receipt) => {
                    return Ok(Confirmed {
                        receipt,
                        replacements,
                        reorgs,
                        dropped,
                    });
                }
                // Still in the node's pool: wait for it (or a replacement) again.
                Err(true) => in_flight = Some(bumps.1.restarted()),
                // Gone: simulate and send it again, with a nonce read from the chain.
                Err(false) => {}
            }
        }
    }

    /// Simulates `plan` (`eth_estimateGas` from the signer) and returns its gas estimate, or
    /// the contract's error decoded from the revert data by the plan.
    async fn simulate(&self, plan: &Plan) -> Result<u64, ChainError> {
        let request = TransactionRequest::default()
            .with_from(self.signer)
            .with_kind(plan.kind)
            .with_input(plan.input.clone());
        self.provider.estimate_gas(request).await.map_err(|e| {
            let typed = e
                .as_error_resp()
                .and_then(|resp| resp.as_revert_data())
                .and_then(|data| (plan.decode_revert)(&data));
            typed.unwrap_or_else(|| self.rpc(&e))
        })
    }

    /// Sends `plan` (or keeps waiting for `resume`, a transaction already sent) until one of
    /// its versions is mined; returns its receipt, the number of replacements and the last
    /// in-flight state (to resume if a reorg sends the transaction back to the pool).
    async fn send_until_mined(
        &self,
        plan: &Plan,
        next_nonce: &mut Option<u64>,
        resume: Option<InFlight>,
    ) -> Result<Outcome, ChainError> {
        let mut replacements = 0;
        let mut unknown_polls = 0;
        let mut flight = match resume {
            Some(flight) => flight,
            None => {
                let gas = self.simulate(plan).await?;
                let (max_fee, priority_fee) = self.fees().await?;
                let mut flight = InFlight {
                    nonce: 0,
                    // 20% above the estimate: the state may change between estimate and block.
                    gas_limit: gas.saturating_add(gas / 5),
                    max_fee,
                    priority_fee,
                    hashes: Vec::new(),
                    last_sent: Instant::now(),
                };
                match *next_nonce {
                    Some(nonce) => {
                        flight.nonce = nonce;
                        if let Err(error) = self.send_version(plan, &mut flight).await {
                            // The local nonce may be stale (the key used elsewhere, a
                            // transaction dropped): read it from the chain and try once more.
                            tracing::warn!(%error, nonce, "send refused; reading the nonce from the chain");
                            flight.nonce = self.chain_nonce().await?;
                            self.send_version(plan, &mut flight).await?;
                        }
                    }
                    None => {
                        flight.nonce = self.chain_nonce().await?;
                        self.send_version(plan, &mut flight).await?;
                    }
                }
                *next_nonce = Some(flight.nonce + 1);
                flight
            }
        };
        loop {
            for hash in flight.hashes.iter().rev() {
                let receipt = self
                    .provider
                    .get_transaction_receipt(*hash)
                    .await
                    .map_err(|e| self.rpc(&e))?;
                if let Some(receipt) = receipt.filter(|r| r.block_hash.is_some()) {
                    *next_nonce = Some(flight.nonce + 1);
                    return Ok(Outcome::Mined {
                        receipt: Box::new(receipt),
                        replacements,
                        flight,
                    });
                }
            }
            // Not mined: is any version still known to the node? A transaction can vanish
            // from the pool (evicted, or a reorg undid its block before its receipt was read).
            // Twice in a row, so that one inconsistent answer does not cause a re-send.
            if self.any_known(&flight.hashes).await? {
                unknown_polls = 0;
            } else {
                unknown_polls += 1;
                if unknown_polls >= 2 {
                    tracing::warn!(
                        nonce = flight.nonce,
                        "the transaction vanished before it was mined"
                    );
                    return Ok(Outcome::Vanished { replacements });
                }
            }
            if flight.last_sent.elapsed() >= self.config.bump_after
                && self.bump(&mut flight).await?
            {
                match self.send_version(plan, &mut flight).await {
                    Ok(()) => replacements += 1,
                    // A version may have been mined since the receipts were read: the next
                    // round finds it. Otherwise the node wants more: the next bump offers it.
                    Err(error) => {
                        tracing::warn!(%error, nonce = flight.nonce, "a replacement was refused");
                        flight.last_sent = Instant::now();
                    }
                }
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// Whether the node knows any of `hashes` (pending or mined).
    async fn any_known(&self, hashes: &[B256]) -> Result<bool, ChainError> {
        for hash in hashes.iter().rev() {
            let known = self
                .provider
                .get_transaction_by_hash(*hash)
                .await
                .map_err(|e| self.rpc(&e))?;
            if known.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Raises the fees of `flight` for a replacement; `false` if the cap forbids it.
    async fn bump(&self, flight: &mut InFlight) -> Result<bool, ChainError> {
        let percent = u128::from(self.config.bump_percent);
        let raise = |fee: u128| fee.saturating_mul(100 + percent).div_ceil(100).max(fee + 1);
        let (market_fee, market_priority) = self.fees().await?;
        let priority_fee = raise(flight.priority_fee).max(market_priority);
        let mut max_fee = raise(flight.max_fee).max(market_fee).max(priority_fee);
        if let Some(cap) = self.config.max_fee_per_gas {
            if flight.max_fee >= cap {
                return Ok(false);
            }
            max_fee = max_fee.min(cap);
        }
        flight.max_fee = max_fee;
        flight.priority_fee = priority_fee.min(max_fee);
        Ok(true)
    }

    /// Signs the current version of `flight` and sends it.
    async fn send_version(&self, plan: &Plan, flight: &mut InFlight) -> Result<(), ChainError> {
        let request = TransactionRequest::default()
            .with_from(self.signer)
            .with_kind(plan.kind)
            .with_input(plan.input.clone())
            .with_chain_id(self.chain_id)
            .with_nonce(flight.nonce)
            .with_gas_limit(flight.gas_limit)
            .with_max_fee_per_gas(flight.max_fee)
            .with_max_priority_fee_per_gas(flight.priority_fee);
        let envelope = request
            .build(&self.wallet)
            .await
            .map_err(|e| ChainError::Unexpected(format!("signing failed: {e}")))?;
        let hash = *envelope.tx_hash();
        flight.hashes.push(hash);
        flight.last_sent = Instant::now();
        tracing::debug!(
            tx = %hash,
            nonce = flight.nonce,
            max_fee = flight.max_fee,
            priority_fee = flight.priority_fee,
            "sending a transaction"
        );
        match self
            .provider
            .send_raw_transaction(&envelope.encoded_2718())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("already known") => Ok(()),
            Err(e) => {
                flight.hashes.pop();
                Err(self.rpc(&e))
            }
        }
    }

    /// The signer's next nonce as the node sees it (pending transactions included).
    pub(crate) async fn chain_nonce(&self) -> Result<u64, ChainError> {
        self.provider
            .get_transaction_count(self.signer)
            .pending()
            .await
            .map_err(|e| self.rpc(&e))
    }

    /// The node's EIP-1559 fee estimate, capped by the configuration.
    async fn fees(&self) -> Result<(u128, u128), ChainError> {
        let estimate = self
            .provider
            .estimate_eip1559_fees()
            .await
            .map_err(|e| self.rpc(&e))?;
        let mut max_fee = estimate.max_fee_per_gas;
        if let Some(cap) = self.config.max_fee_per_gas {
            max_fee = max_fee.min(cap);
        }
        Ok((max_fee, estimate.max_priority_fee_per_gas.min(max_fee)))
    }

    /// Waits until the block of `receipt` is deep enough. `Ok(Err(in_pool))` when a reorg took
    /// the transaction out of the chain: `true` if the node still holds it in its pool (wait
    /// for it again), `false` if it is gone (send it again).
    async fn wait_confirmations(
        &self,
        mut receipt: TransactionReceipt,
        reorgs: &mut u32,
    ) -> Result<Result<TransactionReceipt, bool>, ChainError> {
        loop {
            let (Some(number), Some(hash)) = (receipt.block_number, receipt.block_hash) else {
                return Err(missing("block of a receipt"));
            };
            let canonical = self
                .provider
                .get_block_by_number(BlockNumberOrTag::Number(number))
                .await
                .map_err(|e| self.rpc(&e))?
                .map(|block| block.header.hash);
            if canonical != Some(hash) {
                *reorgs += 1;
                let tx = receipt.transaction_hash;
                let again = self
                    .provider
                    .get_transaction_receipt(tx)
                    .await
                    .map_err(|e| self.rpc(&e))?;
                if let Some(moved) = again.filter(|r| r.block_hash.is_some_and(|h| h != hash)) {
                    tracing::warn!(%tx, block = number, "a reorg moved the transaction to another block");
                    receipt = moved;
                    continue;
                }
                let pending = self
                    .provider
                    .get_transaction_by_hash(tx)
                    .await
                    .map_err(|e| self.rpc(&e))?;
                tracing::warn!(
                    %tx,
                    block = number,
                    in_pool = pending.is_some(),
                    "a reorg dropped the transaction from the chain"
                );
                // The local nonce may be ahead of the chain's now.
                *self.nonce.lock().await = None;
                return Ok(Err(pending.is_some()));
            }
            let head = self
                .provider
                .get_block_number()
                .await
                .map_err(|e| self.rpc(&e))?;
            if head.saturating_sub(number) + 1 >= self.config.confirmations {
                return Ok(Ok(receipt));
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }
}

impl InFlight {
    /// The same versions, waited for afresh (their bump timer restarted).
    fn restarted(self) -> Self {
        Self {
            last_sent: Instant::now(),
            ..self
        }
    }
}
