//! Retention: each shard deletes the whole sealed segments its partitions'
//! `retention.ms` and `retention.bytes` no longer keep, every
//! `log_retention_check_interval_ms` (Kafka's retention check).
//!
//! Left alone: the internal topics, whose coordinators compact them
//! (`compact_offsets`, `compact_txn_states`), and replicated partitions,
//! whose segments are their Raft log: deleting them needs the snapshot a
//! follower behind the new log start would be sent, which is not built.

use std::time::Duration;

use super::Shard;
use crate::offsets::OFFSETS_TOPIC;
use crate::txn::TXN_STATE_TOPIC;

impl Shard {
    pub async fn run_retention_clock(&self) {
        let interval = Duration::from_millis(self.config.log_retention_check_interval_ms);
        loop {
            glommio::timer::sleep(interval).await;
            self.apply_retention().await;
        }
    }

    /// One pass over the partitions this shard owns.
    pub async fn apply_retention(&self) {
        let logs: Vec<((String, u32), storage::PartitionLog)> = self
            .logs
            .borrow()
            .iter()
            .filter(|((topic, _), _)| topic != OFFSETS_TOPIC && topic != TXN_STATE_TOPIC)
            .map(|(key, log)| (key.clone(), log.clone()))
            .collect();
        for ((topic, partition), log) in logs {
            if self.replica_view(&topic, partition).is_some() {
                continue;
            }
            match log.apply_retention().await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(
                    %topic,
                    partition,
                    deleted,
                    log_start_offset = log.log_start_offset().0,
                    "retention deleted segments"
                ),
                Err(error) => tracing::error!(%topic, partition, %error, "applying retention failed"),
            }
        }
    }
}
