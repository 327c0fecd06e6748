//! The anchoring worker: puts the roots of sealed batches on chain, in number order, and
//! follows them until they are confirmed.
//!
//! One worker leads at a time: on PostgreSQL it holds a session-level advisory lock on a
//! connection of its own for as long as it leads (several replicas may run; the others wait);
//! on SQLite the single process leads.
//!
//! The chain is the truth, the database its record. Every round reads the registry's batch
//! count for the gateway's account and reconciles the batches not yet confirmed
//! (`sealed` or `submitted` in `log_batch`) with it, in number order:
//!
//! - a batch the registry already holds is checked against it (root, first index, size: a
//!   difference stops anchoring, since the chain then holds another log than the database),
//!   its transaction and block are recorded (`submitted`), and it becomes `confirmed` once
//!   its block is `chain.confirmations` deep in the canonical chain;
//! - the next batch (number = the registry's count) is anchored: the transaction is sent and
//!   followed by the chain client (fee bumping, reorgs) until mined, then recorded;
//! - batches the database holds as anchored but the registry no longer has (a reorg deeper
//!   than the confirmations, or a development chain that lost its state) return to `sealed`
//!   and go out again.
//!
//! So a crash anywhere resumes without loss or double anchoring: a batch sealed but never
//! sent is sent; one sent but not recorded is found on chain and recorded; one recorded but
//! not confirmed is confirmed. The registry refuses a batch that does not continue the log,
//! so even two workers, or a worker that resends a batch whose first transaction is still
//! pending, cannot anchor a batch twice. Before sending, the worker waits while the account
//! has unmined transactions (sent by a process that crashed), so it does not race them.
//!
//! A chain that cannot be reached leaves writes untouched: batches wait in `log_batch`
//! (`/health/ready` shows the backlog and the last error) and go out in order once it answers.

pub mod anvil;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anchor::chain::{
    Address, AnchorClient, ChainConfig as ClientConfig, ChainError, RegistryError, SignerKey, U256,
};
use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ChainConfig, ChainMode};
use crate::model::Instant;
use crate::store::Store;
use crate::store::log::{self, AnchorRecord, LogChain, StoredBatch};

/// Most unconfirmed batches looked at in one round.
const BATCHES_PER_ROUND: i64 = 1000;

/// Where and as whom the gateway anchors: resolved at start-up, connected by the worker.
pub struct Target {
    rpc_url: String,
    key: SignerKey,
    /// The configured registry, if any (else the recorded one, else a new deployment).
    registry: Option<Address>,
    /// The embedded chain may be redeployed when its state was lost.
    embedded: bool,
    client_config: ClientConfig,
    confirmations: u64,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the URL (it may hold an API key) nor the key
        f.debug_struct("Target")
            .field("anchorer", &self.key.address())
            .field("registry", &self.registry)
            .field("embedded", &self.embedded)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// The target of a configuration: for `embedded`, `anvil` is the running chain.
    pub fn new(
        config: &ChainConfig,
        data_dir: &Path,
        anvil: Option<&anvil::Anvil>,
    ) -> anyhow::Result<Option<Target>> {
        let (rpc_url, key, embedded) = match (config.mode, anvil) {
            (ChainMode::Off, _) => return Ok(None),
            (ChainMode::Embedded, Some(anvil)) => (
                anvil.url().to_owned(),
                embedded_key(data_dir, "anchor-signer.key")?,
                true,
            ),
            (ChainMode::Embedded, None) => anyhow::bail!("the embedded chain is not running"),
            (ChainMode::Rpc, _) => {
                let url = config
                    .rpc_url
                    .as_ref()
                    .context("chain.rpc_url is not set")?
                    .expose_secret()
                    .to_owned();
                (url, configured_key(config)?, false)
            }
        };
        let registry = config
            .registry
            .as_deref()
            .map(str::parse::<Address>)
            .transpose()
            .context("chain.registry is not an address")?;
        Ok(Some(Target {
            rpc_url,
            key,
            registry,
            embedded,
            client_config: ClientConfig {
                // the worker counts confirmations itself, so the client returns once mined
                confirmations: 1,
                poll_interval: Duration::from_millis(config.poll_interval_ms),
                bump_after: Duration::from_secs(config.bump_after_secs),
                bump_percent: config.bump_percent,
                max_fee_per_gas: config
                    .max_fee_per_gas_gwei
                    .map(|gwei| u128::from(gwei) * 1_000_000_000),
            },
            confirmations: config.confirmations,
        }))
    }

    /// The anchoring account.
    pub fn anchorer(&self) -> Address {
        self.key.address()
    }

    /// Checks the target against the chain, registry and account the database's log is
    /// anchored with (what can be checked without the chain): a log is never split across two
    /// registries or accounts.
    pub async fn check_recorded(&self, store: &Store) -> anyhow::Result<()> {
        let mut conn = store.reader().await?;
        let Some(recorded) = log::log_chain(&mut conn).await? else {
            return Ok(());
        };
        let anchorer = hex_address(self.anchorer());
        anyhow::ensure!(
            recorded.anchorer == anchorer,
            "this database's log is anchored by account {}, but the configured signer key is \
             account {anchorer}: configure the key of {} (a log cannot change accounts)",
            recorded.anchorer,
            recorded.anchorer
        );
        if let Some(registry) = self.registry {
            let registry = hex_address(registry);
            anyhow::ensure!(
                recorded.registry == registry,
                "this database's log is anchored in registry {}, but chain.registry is {registry}",
                recorded.registry
            );
        }
        Ok(())
    }

    /// Funds the anchoring account on the embedded chain.
    pub async fn fund_embedded(&self) -> anyhow::Result<()> {
        if self.embedded {
            // 1,000 ether: about ten million anchors at anvil's fees
            let wei = U256::from(1_000u64) * U256::from(10u64).pow(U256::from(18u64));
            anchor::chain::set_dev_balance(&self.rpc_url, self.anchorer(), wei)
                .await
                .context("funding the anchoring account on the embedded chain")?;
        }
        Ok(())
    }
}

/// A key of the embedded chain: `file_name` in the data directory (`anchor-signer.key` for
/// anchoring), made on first use and readable by its owner only.
pub(crate) fn embedded_key(data_dir: &Path, file_name: &str) -> anyhow::Result<SignerKey> {
    let path = data_dir.join(file_name);
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return SignerKey::from_hex(&text).with_context(|| format!("in {}", path.display()));
    }
    let key = SignerKey::generate()?;
    crate::secret_file::create(&path, format!("{}\n", key.expose_hex()).as_bytes())?;
    tracing::info!(account = %key.address(), file = file_name, "made a key for the embedded chain");
    Ok(key)
}

/// The `rpc` mode's key: from `chain.signer_key` (the environment) or `chain.signer_key_file`.
fn configured_key(config: &ChainConfig) -> anyhow::Result<SignerKey> {
    match (&config.signer_key, &config.signer_key_file) {
        (Some(key), None) => {
            SignerKey::from_hex(key.expose_secret()).context("in chain.signer_key")
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading chain.signer_key_file {}", path.display()))?;
            SignerKey::from_hex(&text)
                .with_context(|| format!("in chain.signer_key_file {}", path.display()))
        }
        _ => anyhow::bail!("exactly one of chain.signer_key and chain.signer_key_file is needed"),
    }
}

/// `0x` and 40 lowercase hexadecimal digits (as the database holds addresses).
pub(crate) fn hex_address(address: Address) -> String {
    format!("0x{}", hex::encode(address))
}

/// What `/health/ready` shows of the anchoring.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub mode: Option<&'static str>,
    pub chain_id: Option<u64>,
    pub registry: Option<String>,
    pub anchorer: Option<String>,
    /// Whether this process leads the anchoring now.
    pub leading: bool,
    /// The last round's error, if it failed (no URL, no key).
    pub last_error: Option<String>,
    /// When a round last succeeded (milliseconds since the epoch).
    pub last_success_at: Option<i64>,
    /// Set when anchoring stopped for good (the chain holds another log than the database).
    pub halted: Option<String>,
}

/// The shared view of [`Status`].
pub type SharedStatus = Arc<Mutex<Status>>;

/// Why a round stopped.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Anchoring cannot go on without an operator.
    #[error("{0}")]
    Halt(String),
}

/// The running worker.
#[derive(Debug)]
pub struct Anchoring {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Anchoring {
    /// Starts the worker on the current tokio runtime.
    pub fn spawn(store: Store, target: Target, status: SharedStatus) -> Anchoring {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            Worker {
                store,
                target,
                status,
                client: None,
                leader: Mutex::new(None),
            }
            .run(stopped)
            .await;
        });
        Anchoring { stop, task }
    }

    /// Stops the worker (a transaction it is waiting for is left to the chain: the next start
    /// finds it).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "the anchoring worker ended abnormally");
        }
    }
}

struct Worker {
    store: Store,
    target: Target,
    status: SharedStatus,
    client: Option<AnchorClient>,
    /// PostgreSQL: the connection holding the leadership lock (in a mutex only so that the
    /// worker is `Sync`; it is reached through `&mut self`).
    leader: Mutex<Option<sqlx::pool::PoolConnection<sqlx::Any>>>,
}

impl Worker {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.target.client_config.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.changed() => break,
            }
            if self.halted() {
                continue;
            }
            let result = tokio::select! {
                result = self.lead_and_round() => result,
                // a round may wait long for a transaction: stopping abandons the wait only
                _ = stopped.changed() => break,
            };
            if matches!(result, Err(RoundError::Chain(_) | RoundError::Database(_))) {
                // the next round starts over, with a fresh connection to the chain
                self.client = None;
            }
            let mut status = self.lock_status();
            match result {
                Ok(()) => {
                    status.last_error = None;
                    status.last_success_at = Some(Instant::now().millis());
                }
                Err(RoundError::Halt(reason)) => {
                    tracing::error!(%reason, "anchoring halted");
                    status.halted = Some(reason);
                }
                Err(error) => {
                    tracing::warn!(%error, "an anchoring round failed");
                    status.last_error = Some(error.to_string());
                }
            }
        }
        let leader = self
            .leader
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(leader) = leader {
            // closing the connection releases the lock at once
            let _ = sqlx::Connection::close(leader.detach()).await;
        }
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn halted(&self) -> bool {
        self.lock_status().halted.is_some()
    }

    async fn lead_and_round(&mut self) -> Result<(), RoundError> {
        if !self.lead().await? {
            return Ok(());
        }
        if self.client.is_none() {
            self.client = Some(self.connect().await?);
        }
        let reconnect = self.round().await?;
        if reconnect {
            // the chain went back: the client's local nonce may be ahead of it
            self.client = None;
        }
        Ok(())
    }

    /// Whether this process leads (taking the lead if it is free).
    async fn lead(&mut self) -> Result<bool, RoundError> {
        if self.store.backend() == crate::store::Backend::Sqlite {
            self.lock_status().leading = true;
            return Ok(true);
        }
        let leader = self.leader.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(conn) = leader.as_mut() {
            if sqlx::Connection::ping(&mut **conn).await.is_ok() {
                return Ok(true);
            }
            // the connection, and with it the lock, is gone
            tracing::warn!("lost the anchoring lock's connection");
            *leader = None;
        }
        let mut conn = self.store.reader().await?;
        let leading = log::try_lead_anchoring(&mut conn).await?;
        if leading {
            tracing::info!("this gateway now leads the anchoring");
            *self.leader.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(conn);
        }
        self.lock_status().leading = leading;
        Ok(leading)
    }

    /// Connects to the registry (deploying it if none is configured or recorded) and records
    /// the log's chain.
    #[tracing::instrument(name = "anchoring.connect", skip_all)]
    async fn connect(&self) -> Result<AnchorClient, RoundError> {
        let target = &self.target;
        let recorded = {
            let mut conn = self.store.reader().await?;
            log::log_chain(&mut conn).await?
        };
        let recorded_registry = recorded
            .as_ref()
            .and_then(|chain| chain.registry.parse::<Address>().ok());
        let registry = target.registry.or(recorded_registry);
        let client = match registry {
            Some(registry) => {
                match AnchorClient::connect(
                    &target.rpc_url,
                    target.key.clone(),
                    registry,
                    target.client_config.clone(),
                )
                .await
                {
                    Ok(client) => client,
                    // the embedded chain lost its state: deploy again (the same account's
                    // first transaction, so the same address)
                    Err(ChainError::NoRegistry(_)) if target.embedded => {
                        self.deploy(Some(registry)).await?
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            None => self.deploy(None).await?,
        };
        let chain = LogChain {
            chain_id: i64::try_from(client.chain_id())
                .map_err(|_| RoundError::Halt("the chain id does not fit 63 bits".into()))?,
            registry: hex_address(client.registry()),
            anchorer: hex_address(client.anchorer()),
        };
        match &recorded {
            Some(recorded) if *recorded != chain => {
                return Err(RoundError::Halt(format!(
                    "this database's log is anchored on chain {} in registry {} by {}, but the \
                     configured chain is {} (registry {}, account {}): anchoring stopped",
                    recorded.chain_id,
                    recorded.registry,
                    recorded.anchorer,
                    chain.chain_id,
                    chain.registry,
                    chain.anchorer
                )));
            }
            Some(_) => {}
            None => {
                let mut conn = self.store.begin().await?;
                log::record_log_chain(&mut conn, &chain, Instant::now()).await?;
                conn.commit().await?;
            }
        }
        let mut status = self.lock_status();
        status.chain_id = Some(client.chain_id());
        status.registry = Some(chain.registry);
        status.anchorer = Some(chain.anchorer);
        Ok(client)
    }

    /// Deploys the registry; `expected`: the address it must land at (a redeployment).
    #[tracing::instrument(name = "anchoring.deploy", skip_all)]
    async fn deploy(&self, expected: Option<Address>) -> Result<AnchorClient, RoundError> {
        // (the embedded chain's account was funded at start-up)
        let target = &self.target;
        let (client, deployed) = AnchorClient::deploy(
            &target.rpc_url,
            target.key.clone(),
            target.client_config.clone(),
        )
        .await?;
        if let Some(expected) = expected
            && deployed.registry != expected
        {
            return Err(RoundError::Halt(format!(
                "the registry was redeployed at {} instead of {expected}",
                deployed.registry
            )));
        }
        Ok(client)
    }

    /// One pass over the unconfirmed batches (see the module's documentation). `true` when
    /// the chain lost anchors it had (the client must start afresh).
    #[tracing::instrument(name = "anchoring.round", skip_all)]
    async fn round(&self) -> Result<bool, RoundError> {
        let Some(client) = self.client.as_ref() else {
            return Ok(false);
        };
        let anchorer = client.anchorer();
        let mut count = client.batch_count(anchorer).await?;
        {
            let mut conn = self.store.begin().await?;
            let lost = log::unanchor_from(&mut conn, to_i64(count)?).await?;
            conn.commit().await?;
            if lost > 0 {
                tracing::warn!(
                    batches = lost,
                    from = count,
                    "the chain no longer holds batches recorded as anchored: anchoring them again"
                );
                return Ok(true);
            }
        }
        let batches = {
            let mut conn = self.store.reader().await?;
            log::unconfirmed_batches(&mut conn, BATCHES_PER_ROUND).await?
        };
        let head = client.reader().head().await?;
        for batch in batches {
            let number = u64::try_from(batch.number).unwrap_or(u64::MAX);
            if number < count {
                self.follow(client, &batch, head).await?;
            } else if number == count {
                if !self.send(client, &batch).await? {
                    break;
                }
                count += 1;
            } else {
                break;
            }
        }
        Ok(false)
    }

    /// A batch the registry holds: checks it, records where it is, confirms it when deep.
    #[tracing::instrument(name = "anchoring.follow", skip_all)]
    async fn follow(
        &self,
        client: &AnchorClient,
        batch: &StoredBatch,
        head: u64,
    ) -> Result<(), RoundError> {
        let number = u64::try_from(batch.number).unwrap_or(u64::MAX);
        let on_chain = client.batch(client.anchorer(), number).await?;
        if on_chain.root != batch.root
            || to_i64(on_chain.first_index)? != batch.first_index
            || to_i64(on_chain.size)? != batch.size
        {
            return Err(RoundError::Halt(format!(
                "batch {number} differs on chain (first index {}, size {}, root {}) from the \
                 database (first index {}, size {}, root {}): the chain holds another log",
                on_chain.first_index,
                on_chain.size,
                on_chain.root.to_hex(),
                batch.first_index,
                batch.size,
                batch.root.to_hex()
            )));
        }
        let Some(block_hash) = client.reader().block_hash(on_chain.block_number).await? else {
            // the node's head moved back under us: the next round looks again
            return Ok(());
        };
        let block_hash = format!("{block_hash}");
        let known = batch.block_number == Some(to_i64(on_chain.block_number)?)
            && batch.block_hash.as_deref() == Some(block_hash.as_str())
            && batch.tx_hash.is_some();
        let record = if known {
            AnchorRecord {
                chain_id: to_i64(client.chain_id())?,
                contract: hex_address(client.registry()),
                anchorer: hex_address(client.anchorer()),
                tx_hash: batch.tx_hash.clone().unwrap_or_default(),
                block_number: to_i64(on_chain.block_number)?,
                block_hash,
            }
        } else {
            let events = client
                .batch_anchored_events(
                    client.anchorer(),
                    on_chain.block_number,
                    Some(on_chain.block_number),
                )
                .await?;
            let Some(event) = events.into_iter().find(|e| e.batch_number == number) else {
                // the node has not indexed the block's logs yet: look again next round
                return Ok(());
            };
            tracing::info!(
                batch = number,
                tx = %event.tx_hash,
                block = event.block_number,
                "found an anchor on chain that the database had not recorded"
            );
            AnchorRecord {
                chain_id: to_i64(client.chain_id())?,
                contract: hex_address(client.registry()),
                anchorer: hex_address(client.anchorer()),
                tx_hash: format!("{}", event.tx_hash),
                block_number: to_i64(event.block_number)?,
                block_hash: format!("{}", event.block_hash),
            }
        };
        let confirmed = head.saturating_sub(on_chain.block_number) + 1 >= self.target.confirmations;
        if known && !confirmed {
            return Ok(());
        }
        let mut conn = self.store.begin().await?;
        log::record_anchor(&mut conn, batch.number, &record, confirmed, Instant::now()).await?;
        conn.commit().await?;
        if confirmed {
            tracing::debug!(batch = number, "batch confirmed");
        }
        Ok(())
    }

    /// Anchors the next batch; `false` when it cannot go now (transactions of the account
    /// still unmined, or the registry's log moved: the next round looks again).
    #[tracing::instrument(name = "anchoring.send", skip_all)]
    async fn send(&self, client: &AnchorClient, batch: &StoredBatch) -> Result<bool, RoundError> {
        let unmined = client.unmined_transactions().await?;
        if unmined > 0 {
            tracing::warn!(
                transactions = unmined,
                "the anchoring account has unmined transactions (sent before a restart?): waiting for them"
            );
            return Ok(false);
        }
        let size = client.log_size(client.anchorer()).await?;
        if to_i64(size)? > batch.first_index {
            // anchored meanwhile (by a replica that lost the lead without knowing): the next
            // round compares what the registry holds with this batch
            return Ok(false);
        }
        if to_i64(size)? < batch.first_index {
            return Err(RoundError::Halt(format!(
                "batch {} starts at log index {}, but the registry's log for this account has \
                 {size} leaves after {} batches: the chain holds another log",
                batch.number, batch.first_index, batch.number
            )));
        }
        let first_index = u64::try_from(batch.first_index).unwrap_or(u64::MAX);
        let size = u64::try_from(batch.size).unwrap_or(u64::MAX);
        let anchored = match client.anchor(first_index, size, &batch.root).await {
            Ok(anchored) => anchored,
            // another transaction got there first: the next round reconciles
            Err(ChainError::Registry(RegistryError::NotContiguous { .. })) => return Ok(false),
            Err(error) => return Err(error.into()),
        };
        if anchored.batch_number != u64::try_from(batch.number).unwrap_or(u64::MAX) {
            return Err(RoundError::Halt(format!(
                "batch {} was anchored as the registry's batch {}",
                batch.number, anchored.batch_number
            )));
        }
        let record = AnchorRecord {
            chain_id: to_i64(client.chain_id())?,
            contract: hex_address(client.registry()),
            anchorer: hex_address(client.anchorer()),
            tx_hash: format!("{}", anchored.tx_hash),
            block_number: to_i64(anchored.block_number)?,
            block_hash: format!("{}", anchored.block_hash),
        };
        let confirmed = self.target.confirmations <= 1;
        let mut conn = self.store.begin().await?;
        log::record_anchor(&mut conn, batch.number, &record, confirmed, Instant::now()).await?;
        conn.commit().await?;
        Ok(true)
    }
}

fn to_i64(value: u64) -> Result<i64, RoundError> {
    i64::try_from(value).map_err(|_| RoundError::Halt(format!("{value} does not fit 63 bits")))
}
