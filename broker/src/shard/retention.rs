//! Retention: each shard deletes the whole sealed segments its partitions'
//! `retention.ms` and `retention.bytes` no longer keep, every
//! `log_retention_check_interval_ms` (Kafka's retention check).
//!
//! Left alone: the internal topics, whose coordinators compact them
//! (`compact_offsets`, `compact_txn_states`). A replicated partition's
//! segments are its Raft log, so its replica applies retention itself, in
//! the replication task (`PartitionReplica::apply_retention`): each replica
//! to its own log, and a follower that falls behind the leader's log start
//! is sent a snapshot.

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
        let mut replicated = false;
        for ((topic, partition), log) in logs {
            if self.replica_view(&topic, partition).is_some() {
                replicated = true;
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
        if let Some(mut handle) = self.replication.clone().filter(|_| replicated) {
            use futures::SinkExt;
            if handle
                .send(crate::replication::driver::Command::Retention)
                .await
                .is_err()
            {
                tracing::debug!(shard = self.id, "retention: the replication task is gone");
            }
        }
    }
}
