//! The log cleaner's schedule on each shard: every `log_cleaner_backoff_ms`
//! it looks at the compacted partitions the shard owns (`cleanup.policy`
//! with `compact`) and cleans those worth it (`PartitionLog::clean`), in a
//! glommio task queue of its own (`log_cleaner_shares` against the
//! requests') and within `log_cleaner_io_bytes_per_second` of reads.
//!
//! A partition is cleaned up to its first offset younger than
//! `min.compaction.lag.ms` (and below its active segment), once the bytes
//! not yet cleaned below that point are `min.cleanable.dirty.ratio` of the
//! log, or their oldest is older than `max.compaction.lag.ms`. Where each
//! log is clean to is kept in memory: after a restart the first pass
//! cleans everything once more, which finds little to drop.
//!
//! Left alone for now: the internal topics, whose coordinators compact
//! them, and replicated partitions, whose replicas must clean at the same
//! point of their Raft log to hold the same batches.

use std::time::Duration;

use storage::{Offset, PartitionLog};

use super::Shard;
use crate::offsets::OFFSETS_TOPIC;
use crate::txn::TXN_STATE_TOPIC;

/// The file in a partition's directory saying where it is clean to.
const CLEANER_OFFSET_FILE: &str = "cleaner-offset";

/// Where a log is clean to as its file says; 0 if it says nothing usable.
fn read_cleaner_offset(path: &std::path::Path) -> Offset {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .map_or(Offset(0), Offset)
}

fn write_cleaner_offset(path: &std::path::Path, offset: Offset) -> std::io::Result<()> {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, offset.0.to_string())?;
    std::fs::rename(&temp, path)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Shard {
    pub async fn run_cleaner_clock(&self) {
        let interval = Duration::from_millis(self.config.log_cleaner_backoff_ms);
        loop {
            glommio::timer::sleep(interval).await;
            self.clean_logs().await;
        }
    }

    /// One pass over the compacted partitions this shard owns.
    pub async fn clean_logs(&self) {
        let logs: Vec<((String, u32), PartitionLog)> = self
            .logs
            .borrow()
            .iter()
            .filter(|((topic, _), log)| {
                topic != OFFSETS_TOPIC && topic != TXN_STATE_TOPIC && log.config().cleanup.compact
            })
            .map(|(key, log)| (key.clone(), log.clone()))
            .collect();
        for ((topic, partition), log) in logs {
            if self.replica_view(&topic, partition).is_some() {
                continue;
            }
            let key = (topic.clone(), partition);
            let known = self.cleaner_offsets.borrow().get(&key).copied();
            let clean_to = match known {
                Some(offset) => offset,
                None => {
                    let path = log.dir().join(CLEANER_OFFSET_FILE);
                    storage::blocking::off_shard(move || read_cleaner_offset(&path)).await
                }
            };
            // A position past the log's end (the log cut below it) says
            // nothing: clean from the start.
            let clean_to = if clean_to > log.log_end_offset() {
                Offset(0)
            } else {
                clean_to
            };
            let now = now_ms();
            let Some(up_to) = cleanable(&log, clean_to, now).await else {
                continue;
            };
            match log.clean(up_to, now, self.config.log_cleaner_io_bytes_per_second).await {
                Ok(stats) => {
                    let cleaned_to = stats.cleaned_to.max(clean_to);
                    self.cleaner_offsets.borrow_mut().insert(key, cleaned_to);
                    if cleaned_to > clean_to {
                        let path = log.dir().join(CLEANER_OFFSET_FILE);
                        let written =
                            storage::blocking::off_shard(move || write_cleaner_offset(&path, cleaned_to)).await;
                        if let Err(error) = written {
                            tracing::warn!(%topic, partition, %error, "the cleaner's position not written");
                        }
                    }
                    self.stats.add_clean(&stats);
                    if stats.segments > 0 {
                        tracing::debug!(
                            %topic, partition, segments = stats.segments, removed = stats.records_removed,
                            bytes_before = stats.bytes_before, bytes_after = stats.bytes_after, "cleaned"
                        );
                    }
                }
                Err(error) => tracing::error!(%topic, partition, %error, "cleaning failed"),
            }
        }
    }
}

/// Where `log`, clean up to `clean_to`, is worth cleaning to now: its
/// first offset younger than `min.compaction.lag.ms`, bounded by the
/// active segment; None while what is not clean below that is under
/// `min.cleanable.dirty.ratio` of the log and younger than
/// `max.compaction.lag.ms`.
async fn cleanable(log: &PartitionLog, clean_to: Offset, now: i64) -> Option<Offset> {
    let config = log.config();
    let lag = i64::try_from(config.compaction.min_compaction_lag_ms).unwrap_or(i64::MAX);
    let young_from = match lag {
        0 => None,
        lag => log.offset_for_timestamp(now.saturating_sub(lag)).await.ok().flatten(),
    };
    let segments = log.segment_stats();
    let active = segments.last()?.base_offset;
    let up_to = young_from.map_or(active, |young| young.min(active));
    let total: u64 = segments.iter().map(|s| s.size).sum();
    let dirty: Vec<_> = segments
        .iter()
        .filter(|s| s.base_offset >= clean_to && s.next_offset <= up_to)
        .collect();
    let dirty_bytes: u64 = dirty.iter().map(|s| s.size).sum();
    if dirty.is_empty() || total == 0 {
        return None;
    }
    let ratio = dirty_bytes as f64 / total as f64;
    let overdue = config.compaction.max_compaction_lag_ms.is_some_and(|max| {
        dirty
            .iter()
            .any(|s| s.max_timestamp_ms < now.saturating_sub(i64::try_from(max).unwrap_or(i64::MAX)))
    });
    (ratio >= config.compaction.min_cleanable_dirty_ratio || overdue).then_some(up_to)
}
