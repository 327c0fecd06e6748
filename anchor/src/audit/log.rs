//! `fhir-anchor audit-log`: replays one log's `BatchAnchored` events from the chain and
//! checks that they make one append-only log.
//!
//! The events are read with `eth_getLogs` in windows of blocks (public endpoints cap the
//! range of one query), and the registry's views are read at the last block of the range, so
//! that events and views describe the same state of the chain. Every problem is reported,
//! not only the first.

use alloy::primitives::Address;

use crate::NodeHash;
use crate::chain::{BatchAnchoredEvent, ChainError, RegistryError, RegistryReader};

/// The block range of one `eth_getLogs` query unless told otherwise: within what public
/// endpoints accept.
pub const DEFAULT_BLOCKS_PER_QUERY: u64 = 10_000;

/// What to audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogAuditRequest {
    /// The registry's address.
    pub registry: Address,
    /// The log: the account that anchors it.
    pub anchorer: Address,
    /// The first block to read events from (the registry's deployment block or earlier).
    pub from_block: u64,
    /// The last block to read events from; `None` for the head when the audit starts.
    pub to_block: Option<u64>,
    /// The block range of one `eth_getLogs` query (at least 1).
    pub blocks_per_query: u64,
}

/// One way the events and the registry fail to make one append-only log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogProblem {
    /// The range is empty.
    #[error("the block range is empty: from block {from} is after to block {to}")]
    EmptyRange {
        /// `--from-block`.
        from: u64,
        /// `--to-block`, or the head.
        to: u64,
    },
    /// No code at the registry's address.
    #[error("no contract code at the registry {0} (at the last block of the range)")]
    NoRegistry(Address),
    /// The log has no batch at all.
    #[error("the log has no batch: no BatchAnchored event in the range and batchCount is 0")]
    NoBatch,
    /// Batches are missing between two events (or before the first).
    #[error("batch {found} comes where batch {expected} was expected: batches {expected} to {} have no event", found - 1)]
    Gap {
        /// The number expected next.
        expected: u64,
        /// The number found.
        found: u64,
    },
    /// A batch number comes again.
    #[error("batch {found} comes again after batch {previous}")]
    Repeat {
        /// The number found.
        found: u64,
        /// The number of the event before it.
        previous: u64,
    },
    /// A batch does not start where the previous one ended.
    #[error(
        "batch {number} starts at log index {first_index}, the batches before it end at {expected}"
    )]
    NotContiguous {
        /// The batch.
        number: u64,
        /// Its first index.
        first_index: u64,
        /// Where the previous batches end.
        expected: u64,
    },
    /// A batch of no leaves.
    #[error("batch {0} has no leaves")]
    EmptyBatch(u64),
    /// The registry's view does not know a batch that has an event.
    #[error("batch {0} has an event but the registry's batch view does not know it")]
    UnknownToView(u64),
    /// The registry's view of a batch disagrees with its event.
    #[error("batch {number}: the event's {what} is {event}, the registry's batch view has {view}")]
    ViewDiffers {
        /// The batch.
        number: u64,
        /// `root`, `firstIndex`, `size` or `blockNumber`.
        what: &'static str,
        /// The event's value.
        event: String,
        /// The view's value.
        view: String,
    },
    /// `batchCount` disagrees with the events.
    #[error("the events make {events} batches, the registry's batchCount is {batch_count}")]
    BatchCount {
        /// Batches replayed from the events.
        events: u64,
        /// The view.
        batch_count: u64,
    },
    /// `logSize` disagrees with the events.
    #[error("the events make {events} leaves, the registry's logSize is {log_size}")]
    LogSize {
        /// Leaves replayed from the events.
        events: u64,
        /// The view.
        log_size: u64,
    },
}

/// The outcome of an audit: the summary and every problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogAudit {
    /// What was audited.
    pub request: LogAuditRequest,
    /// The endpoint's chain id.
    pub chain_id: u64,
    /// The last block read (`to_block`, or the head when the audit started).
    pub to_block: u64,
    /// Number of `BatchAnchored` events replayed.
    pub batches: u64,
    /// Sum of their sizes.
    pub leaves: u64,
    /// The block of the first event.
    pub first_block: Option<u64>,
    /// The block of the last event.
    pub last_block: Option<u64>,
    /// The registry's `batchCount` at `to_block`.
    pub batch_count: u64,
    /// The registry's `logSize` at `to_block`.
    pub log_size: u64,
    /// Every problem found, in the order found.
    pub problems: Vec<LogProblem>,
}

impl LogAudit {
    /// Whether the log checked out.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for LogAudit {
    /// The summary, then `OK` or `FAILED: n problems` and one line per problem.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.request;
        writeln!(
            f,
            "log {} in registry {} on chain {}, blocks {} to {}",
            r.anchorer, r.registry, self.chain_id, r.from_block, self.to_block
        )?;
        writeln!(
            f,
            "batches: {} replayed from events (batchCount {}), leaves: {} (logSize {})",
            self.batches, self.batch_count, self.leaves, self.log_size
        )?;
        match (self.first_block, self.last_block) {
            (Some(first), Some(last)) => writeln!(
                f,
                "first batch in block {first}, last batch in block {last}"
            )?,
            _ => writeln!(f, "no batch in the range")?,
        }
        if self.is_ok() {
            write!(f, "OK")
        } else {
            write!(f, "FAILED: {} problem(s)", self.problems.len())?;
            for problem in &self.problems {
                write!(f, "\n- {problem}")?;
            }
            Ok(())
        }
    }
}

/// Audits the log `request.anchorer` of the registry `request.registry` through the node at
/// `rpc_url`. Problems of the log are in the returned [`LogAudit`]; an `Err` means the chain
/// could not be read.
pub async fn audit_log(rpc_url: &str, request: LogAuditRequest) -> Result<LogAudit, ChainError> {
    let reader = RegistryReader::connect(rpc_url, request.registry).await?;
    let to_block = match request.to_block {
        Some(block) => block,
        None => reader.head().await?,
    };
    let mut audit = LogAudit {
        request: request.clone(),
        chain_id: reader.chain_id(),
        to_block,
        batches: 0,
        leaves: 0,
        first_block: None,
        last_block: None,
        batch_count: 0,
        log_size: 0,
        problems: Vec::new(),
    };
    if request.from_block > to_block {
        audit.problems.push(LogProblem::EmptyRange {
            from: request.from_block,
            to: to_block,
        });
        return Ok(audit);
    }
    // Views as of the last block of the range, so that they match the events read.
    let views = reader.at_block(to_block);
    if !views.has_code().await? {
        audit
            .problems
            .push(LogProblem::NoRegistry(request.registry));
        return Ok(audit);
    }

    let events = events_in_windows(&reader, &request, to_block).await?;
    // The previous event's number, and where the previous batch ended.
    let (mut previous, mut ended) = (None, 0);
    for event in &events {
        check_sequence(event, previous, ended, &mut audit.problems);
        check_view(&views, event, &mut audit.problems).await?;
        previous = Some(event.batch_number);
        ended = event.first_index.saturating_add(event.size);
        audit.batches += 1;
        audit.leaves = audit.leaves.saturating_add(event.size);
    }
    audit.first_block = events.first().map(|event| event.block_number);
    audit.last_block = events.last().map(|event| event.block_number);

    audit.batch_count = views.batch_count(request.anchorer).await?;
    audit.log_size = views.log_size(request.anchorer).await?;
    if events.is_empty() && audit.batch_count == 0 {
        audit.problems.push(LogProblem::NoBatch);
    }
    if audit.batch_count != audit.batches {
        audit.problems.push(LogProblem::BatchCount {
            events: audit.batches,
            batch_count: audit.batch_count,
        });
    }
    if audit.log_size != audit.leaves {
        audit.problems.push(LogProblem::LogSize {
            events: audit.leaves,
            log_size: audit.log_size,
        });
    }
    Ok(audit)
}

/// The log's events in `from_block ..= to_block`, one `eth_getLogs` per window.
async fn events_in_windows(
    reader: &RegistryReader,
    request: &LogAuditRequest,
    to_block: u64,
) -> Result<Vec<BatchAnchoredEvent>, ChainError> {
    let window = request.blocks_per_query.max(1);
    let mut events = Vec::new();
    let mut start = request.from_block;
    loop {
        let end = start.saturating_add(window - 1).min(to_block);
        events.extend(
            reader
                .batch_anchored_events(request.anchorer, start, Some(end))
                .await?,
        );
        if end == to_block {
            return Ok(events);
        }
        start = end + 1;
    }
}

/// Checks that `event` continues the log: the next batch number after `previous` (0 first),
/// starting where the batches before it end (`ended`), with at least one leaf.
fn check_sequence(
    event: &BatchAnchoredEvent,
    previous: Option<u64>,
    ended: u64,
    problems: &mut Vec<LogProblem>,
) {
    let expected = previous.map_or(0, |number| number + 1);
    let found = event.batch_number;
    if found > expected {
        problems.push(LogProblem::Gap { expected, found });
    } else if let (true, Some(previous)) = (found < expected, previous) {
        problems.push(LogProblem::Repeat { found, previous });
    }
    if event.first_index != ended {
        problems.push(LogProblem::NotContiguous {
            number: found,
            first_index: event.first_index,
            expected: ended,
        });
    }
    if event.size == 0 {
        problems.push(LogProblem::EmptyBatch(found));
    }
}

/// Checks that the registry's `batch(anchorer, number)` view says what the event said.
async fn check_view(
    views: &RegistryReader,
    event: &BatchAnchoredEvent,
    problems: &mut Vec<LogProblem>,
) -> Result<(), ChainError> {
    let number = event.batch_number;
    let view = match views.batch(event.anchorer, number).await {
        Ok(view) => view,
        Err(ChainError::Registry(RegistryError::UnknownBatch { .. })) => {
            problems.push(LogProblem::UnknownToView(number));
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    let mut differs = |what, event: String, view: String| {
        if event != view {
            problems.push(LogProblem::ViewDiffers {
                number,
                what,
                event,
                view,
            });
        }
    };
    let hex = |root: NodeHash| root.to_hex();
    differs("root", hex(event.root), hex(view.root));
    differs(
        "firstIndex",
        event.first_index.to_string(),
        view.first_index.to_string(),
    );
    differs("size", event.size.to_string(), view.size.to_string());
    differs(
        "blockNumber",
        event.block_number.to_string(),
        view.block_number.to_string(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::B256;

    fn event(batch_number: u64, first_index: u64, size: u64) -> BatchAnchoredEvent {
        BatchAnchoredEvent {
            anchorer: Address::ZERO,
            batch_number,
            first_index,
            size,
            root: NodeHash::from_bytes([1; 32]),
            block_number: 1,
            block_hash: B256::ZERO,
            tx_hash: B256::ZERO,
        }
    }

    /// Replays `events` through [`check_sequence`] as [`audit_log`] does.
    fn replay(events: &[BatchAnchoredEvent]) -> Vec<LogProblem> {
        let (mut problems, mut previous, mut ended) = (Vec::new(), None, 0);
        for event in events {
            check_sequence(event, previous, ended, &mut problems);
            previous = Some(event.batch_number);
            ended = event.first_index + event.size;
        }
        problems
    }

    #[test]
    fn a_contiguous_log_has_no_problem() {
        assert_eq!(
            replay(&[event(0, 0, 3), event(1, 3, 1), event(2, 4, 5)]),
            []
        );
    }

    #[test]
    fn gaps_repeats_and_holes_are_each_reported() {
        assert_eq!(
            replay(&[event(1, 0, 2)]),
            [LogProblem::Gap {
                expected: 0,
                found: 1
            }]
        );
        assert_eq!(
            replay(&[event(0, 0, 2), event(0, 2, 2)]),
            [LogProblem::Repeat {
                found: 0,
                previous: 0
            }]
        );
        assert_eq!(
            replay(&[event(0, 0, 2), event(1, 3, 2), event(2, 5, 0)]),
            [
                LogProblem::NotContiguous {
                    number: 1,
                    first_index: 3,
                    expected: 2
                },
                LogProblem::EmptyBatch(2)
            ]
        );
        assert_eq!(
            LogProblem::Gap {
                expected: 2,
                found: 5
            }
            .to_string(),
            "batch 5 comes where batch 2 was expected: batches 2 to 4 have no event"
        );
    }
}
