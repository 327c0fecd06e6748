//! The consent follower: reads the ConsentRegistry's events into the index, block range by
//! block range, and keeps the index on the canonical chain.
//!
//! Every round:
//!
//! 1. the block the index has read through must still be canonical (its hash unchanged). If
//!    not, a reorg replaced it: the newest remembered block that is still canonical is where
//!    the chains forked, and everything recorded after it is undone (grants removed,
//!    revocations lifted) before reading on from there. Block hashes chain, so any reorg at or
//!    below the cursor changes the cursor's hash: none goes unnoticed;
//! 2. the events of the next blocks (up to [`WINDOW`] at a time, up to the head) are read
//!    between two reads of the last block's hash, which must agree (else the round is
//!    retried), and recorded with the cursor's move in one transaction;
//! 3. once the index has read through the head it saw, it is current as of that moment
//!    (`synced_at`): requests compare that with `consent.max_lag_secs`.
//!
//! Grants and revocations are all recorded as soon as they are seen; a grant only counts once
//! its block is `consent.confirmations` deep (the query compares its block with the head),
//! a revocation at once. A round that fails (the chain unreachable) changes nothing; if
//! rounds keep failing, `synced_at` ages and consent-gated reads are refused (fail closed).
//!
//! Several replicas may run the follower against one database: each round's writes are one
//! transaction that re-reads the cursor, so they never interleave badly, and the index they
//! build is the chain's either way.

use std::sync::Arc;
use std::time::Duration;

use anchor::chain::ChainError;
use anchor::consent::{ConsentChange, ConsentEvent, ConsentReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Consent;
use crate::anchoring::hex_address;
use crate::interaction::Context;
use crate::model::Instant;
use crate::store::Store;
use crate::store::consent::{self as index, Changes, GrantRecord};

/// Most blocks whose events one query asks for (providers cap `eth_getLogs` ranges).
pub const WINDOW: u64 = 2000;

/// A running follower; stopped with [`Follower::stop`].
#[derive(Debug)]
pub struct Follower {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What the follower reports (for `/health/ready`).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FollowerStatus {
    /// The last round's error, while rounds fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Reorgs seen since start.
    pub reorgs: u64,
}

pub type SharedFollowerStatus = Arc<std::sync::Mutex<FollowerStatus>>;

impl Follower {
    /// Follows the registry `reader` reads, from `start_block` (its deployment block) on;
    /// with `audit` (the audit trail on), each change read is recorded
    /// ([`crate::audit::store_chain_consent`]).
    pub fn spawn(
        store: Store,
        reader: ConsentReader,
        start_block: u64,
        consent: Arc<Consent>,
        status: SharedFollowerStatus,
        audit: Option<Context>,
    ) -> Follower {
        let (stop, mut stopped) = watch::channel(false);
        let poll = Duration::from_millis(consent.config().poll_interval_ms);
        let task = tokio::spawn(async move {
            loop {
                match round(&store, &reader, start_block, audit.as_ref()).await {
                    Ok(outcome) => {
                        let mut status = status.lock().unwrap_or_else(|e| e.into_inner());
                        status.last_error = None;
                        status.reorgs += outcome.reorgs;
                        drop(status);
                        consent.invalidate();
                        if outcome.more {
                            continue;
                        }
                    }
                    Err(error) => {
                        let text = error.to_string();
                        let mut status = status.lock().unwrap_or_else(|e| e.into_inner());
                        if status.last_error.as_deref() != Some(text.as_str()) {
                            tracing::warn!(error = %text, "reading the consent registry failed; consent-gated reads are refused once the index is older than consent.max_lag_secs");
                        }
                        status.last_error = Some(text);
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = stopped.changed() => return,
                }
            }
        });
        Follower { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// What one round did.
#[derive(Debug, Default)]
struct Round {
    /// More blocks wait to be read (the round stopped at [`WINDOW`]).
    more: bool,
    reorgs: u64,
}

#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("the consent index: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Inconsistent(String),
    #[error("recording the consent changes in the audit trail: {0}")]
    Audit(String),
}

/// One round: reorg check, then the next window of events.
#[tracing::instrument(name = "consent.follow_round", skip_all)]
async fn round(
    store: &Store,
    reader: &ConsentReader,
    start_block: u64,
    audit: Option<&Context>,
) -> Result<Round, RoundError> {
    let registry = hex_address(reader.registry());
    let chain_id = reader.chain_id() as i64;
    let mut outcome = Round::default();
    let cursor = {
        let mut conn = store.reader().await?;
        index::cursor(&mut conn).await?
    };
    let cursor = match cursor {
        Some(cursor) if cursor.registry == registry && cursor.chain_id == chain_id => cursor,
        other => {
            if other.is_some() {
                tracing::warn!(%registry, "the consent registry changed: the index is read again from its deployment");
            }
            let before = start_block.saturating_sub(1);
            let hash = reader.block_hash(before).await?.ok_or_else(|| {
                RoundError::Inconsistent(format!("block {before} is not on the chain"))
            })?;
            let mut tx = store.begin().await?;
            index::reset(
                &mut tx,
                chain_id,
                &registry,
                start_block as i64,
                &hex32(hash),
            )
            .await?;
            tx.commit().await?;
            outcome.more = true;
            return Ok(outcome);
        }
    };
    let head = reader.head().await?;
    crate::telemetry::metrics()
        .consent_chain_lag
        .record(head.saturating_sub(cursor.block_number as u64), &[]);
    // 1. is what the index read still the canonical chain?
    let at_cursor = reader
        .block_hash(cursor.block_number as u64)
        .await?
        .map(hex32);
    if at_cursor.as_deref() != Some(cursor.block_hash.as_str()) {
        let known = {
            let mut conn = store.reader().await?;
            index::known_blocks(&mut conn).await?
        };
        let mut fork = None;
        for (number, hash) in known {
            if number >= cursor.block_number {
                continue;
            }
            if reader
                .block_hash(number as u64)
                .await?
                .map(hex32)
                .as_deref()
                == Some(hash.as_str())
            {
                fork = Some((number, hash));
                break;
            }
        }
        let mut tx = store.begin().await?;
        match fork {
            Some((number, hash)) => {
                tracing::warn!(
                    from_block = number + 1,
                    to_block = cursor.block_number,
                    "a reorg replaced blocks the consent index had read; undoing what they recorded"
                );
                index::roll_back(&mut tx, (number, &hash)).await?;
            }
            None => {
                tracing::warn!(
                    "a reorg deeper than the remembered blocks: the consent index is read again from the registry's deployment"
                );
                let before = start_block.saturating_sub(1);
                let hash = reader.block_hash(before).await?.ok_or_else(|| {
                    RoundError::Inconsistent(format!("block {before} is not on the chain"))
                })?;
                index::reset(
                    &mut tx,
                    chain_id,
                    &registry,
                    start_block as i64,
                    &hex32(hash),
                )
                .await?;
            }
        }
        tx.commit().await?;
        outcome.reorgs = 1;
        outcome.more = true;
        return Ok(outcome);
    }
    // 2. the next window
    let from = cursor.block_number as u64 + 1;
    if from > head {
        let mut conn = store.begin().await?;
        index::touch(&mut conn, head as i64, Instant::now().millis()).await?;
        conn.commit().await?;
        return Ok(outcome);
    }
    let to = head.min(from + WINDOW - 1);
    let before = reader.block_hash(to).await?;
    let events = reader.events(from, to).await?;
    let after = reader.block_hash(to).await?;
    let Some(to_hash) = after.filter(|_| before == after) else {
        // the chain moved under the query: read again next round
        outcome.more = true;
        return Ok(outcome);
    };
    let changes = changes_of(&events);
    let caught_up = (to == head).then(|| Instant::now().millis());
    let mut tx = store.begin().await?;
    // another replica may have moved the cursor meanwhile: only the one that finds it where
    // it read from writes
    let now = index::cursor(&mut tx).await?;
    if now
        .as_ref()
        .map(|c| (c.block_number, c.block_hash.as_str()))
        != Some((cursor.block_number, cursor.block_hash.as_str()))
    {
        outcome.more = true;
        return Ok(outcome);
    }
    index::apply(
        &mut tx,
        &changes,
        (to as i64, &hex32(to_hash)),
        head as i64,
        caught_up,
    )
    .await?;
    if let Some(ctx) = audit
        && (!changes.grants.is_empty() || !changes.revocations.is_empty())
    {
        crate::audit::store_chain_consent(&mut tx, ctx, &changes)
            .await
            .map_err(|e| RoundError::Audit(format!("{e:#}")))?;
    }
    tx.commit().await?;
    crate::telemetry::metrics()
        .consent_chain_lag
        .record(head - to, &[]);
    if !changes.grants.is_empty() || !changes.revocations.is_empty() {
        tracing::info!(
            from_block = from,
            to_block = to,
            grants = changes.grants.len(),
            revocations = changes.revocations.len(),
            "consent index updated"
        );
    }
    outcome.more = to < head;
    Ok(outcome)
}

/// The index changes of `events`.
fn changes_of(events: &[ConsentEvent]) -> Changes {
    let mut changes = Changes::default();
    for event in events {
        let block = event.block_number as i64;
        let tx = hex32(event.tx_hash);
        match &event.change {
            ConsentChange::Granted {
                grant_id,
                patient,
                grantee,
                resource_types,
                purpose,
                expires_at,
            } => changes.grants.push(GrantRecord {
                grant_id: *grant_id as i64,
                patient_wallet: hex_address(*patient),
                grantee: hex32(*grantee),
                purpose: purpose.clone(),
                resource_types: resource_types.clone(),
                // a uint64 beyond i64 is as good as never expiring
                expires_at: i64::try_from(*expires_at).unwrap_or(i64::MAX),
                block,
                tx,
            }),
            ConsentChange::Revoked { grant_id, .. } => {
                changes.revocations.push((*grant_id as i64, block, tx))
            }
        }
        let hash = hex32(event.block_hash);
        if changes.blocks.last().map(|(n, _)| *n) != Some(block) {
            changes.blocks.push((block, hash));
        }
    }
    changes
}

/// `0x` + 64 lowercase hex digits.
pub fn hex32(hash: anchor::chain::B256) -> String {
    format!("0x{}", hex::encode(hash.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use anchor::chain::{Address, B256};

    fn granted(expires_at: u64) -> ConsentEvent {
        ConsentEvent {
            block_number: 7,
            block_hash: B256::repeat_byte(7),
            tx_hash: B256::repeat_byte(1),
            log_index: 0,
            change: ConsentChange::Granted {
                grant_id: 3,
                patient: Address::repeat_byte(0xaa),
                grantee: B256::repeat_byte(0xbb),
                resource_types: vec!["Observation".to_owned()],
                purpose: "TREAT".to_owned(),
                expires_at,
            },
        }
    }

    #[test]
    fn an_expiry_beyond_i64_never_comes_rather_than_wrapping_into_the_past() {
        let changes = changes_of(&[granted(u64::MAX)]);
        assert_eq!(changes.grants[0].expires_at, i64::MAX);
        let changes = changes_of(&[granted(1_900_000_000)]);
        assert_eq!(changes.grants[0].expires_at, 1_900_000_000);
        assert_eq!(changes.blocks, vec![(7, hex32(B256::repeat_byte(7)))]);
    }
}
