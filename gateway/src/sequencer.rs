//! The anchored log's background worker: every `ledger.interval_ms` it takes the log's
//! leadership (a PostgreSQL advisory lock, so one replica at a time; SQLite's single
//! process always leads), gives committed leaves their log indexes and seals batches by size
//! or age, in one transaction (see [`crate::store::log`]).
//!
//! Sealed batches wait in `log_batch` with state `sealed`: submitting them to a chain, in
//! number order, is the chain client's part.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::LedgerConfig;
use crate::model::Instant;
use crate::store::Store;
use crate::store::log::{self, SealRule};

/// Most leaves sequenced per run (keeps one transaction short after a long outage).
const SEQUENCE_PER_RUN: i64 = 100_000;

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Run {
    /// Whether this process held the leadership for the run.
    pub led: bool,
    pub sequenced: u64,
    pub sealed: usize,
}

/// Sequences and seals once (if this process can lead now).
pub async fn run_once(store: &Store, config: &LedgerConfig) -> crate::error::Result<Run> {
    let rule = SealRule {
        max_size: i64::try_from(config.batch_max_size).unwrap_or(i64::MAX),
        max_age_millis: i64::try_from(config.batch_max_age_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX),
    };
    // a conflict or an outage fails this run only: the next one starts over
    let mut tx = store.begin().await?;
    if !log::try_lead(&mut tx).await? {
        return Ok(Run::default());
    }
    let sequenced = log::sequence(&mut tx, SEQUENCE_PER_RUN).await?;
    let sealed = log::seal(&mut tx, rule, Instant::now()).await?;
    tx.commit().await?;
    let metrics = crate::telemetry::metrics();
    for batch in &sealed {
        metrics
            .log_batch_size
            .record(u64::try_from(batch.size).unwrap_or(0), &[]);
    }
    record_backlog(store).await;
    Ok(Run {
        led: true,
        sequenced,
        sealed: sealed.len(),
    })
}

/// Records the anchored log's backlog in the metrics (leaves waiting for a batch, batches
/// waiting for the chain, the age of the oldest); a failure to read it only skips this round.
async fn record_backlog(store: &Store) {
    let backlog = match store.reader().await {
        Ok(mut conn) => log::backlog(&mut conn).await,
        Err(error) => Err(error),
    };
    let Ok(backlog) = backlog else {
        return;
    };
    let metrics = crate::telemetry::metrics();
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    metrics
        .log_unsealed_leaves
        .record(count(backlog.unsealed_leaves), &[]);
    metrics.log_waiting_batches.record(
        count(backlog.sealed_batches),
        &[opentelemetry::KeyValue::new("state", "sealed")],
    );
    metrics.log_waiting_batches.record(
        count(backlog.submitted_batches),
        &[opentelemetry::KeyValue::new("state", "submitted")],
    );
    let age_secs = backlog.oldest_sealed_at.map_or(0, |at| {
        (Instant::now().millis() - at.millis()).max(0) / 1000
    });
    metrics.log_oldest_batch_age.record(count(age_secs), &[]);
}

/// The running worker.
#[derive(Debug)]
pub struct Sequencer {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Sequencer {
    /// Starts the worker on the current tokio runtime.
    pub fn spawn(store: Store, config: LedgerConfig) -> Sequencer {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(config.interval_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                match run_once(&store, &config).await {
                    Ok(run) if run.sequenced > 0 || run.sealed > 0 => tracing::debug!(
                        sequenced = run.sequenced,
                        sealed = run.sealed,
                        "anchored log advanced"
                    ),
                    Ok(_) => {}
                    // the next tick tries again; leaves wait, none is lost
                    Err(error) => tracing::warn!(%error, "the log sequencer failed"),
                }
            }
        });
        Sequencer { stop, task }
    }

    /// Stops the worker after its current run, if any.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "the log sequencer ended abnormally");
        }
    }
}
