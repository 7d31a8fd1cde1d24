//! Coordinators on replicated internal partitions. A group's coordinator
//! and a transactional id's coordinator keep state replayed from their
//! internal partition (`__consumer_offsets`, `__transaction_state`). Where
//! that partition is replicated, only the replica leading it coordinates,
//! as in Kafka: it loads the state when it begins to lead, forgets it when
//! it stops, and writes through the partition's Raft group. A partition
//! with one replica is loaded when its shard starts and never moves.
//!
//! A new leader loads only once everything its log holds is committed in
//! its term (its log is never cut while it leads), so nothing it replays
//! can be lost; until then a request is answered
//! COORDINATOR_LOAD_IN_PROGRESS and its client retries.

use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::sync::Semaphore;
use storage::Offset;

use super::Shard;
use crate::error::BrokerError;
use crate::offsets::{self, OFFSETS_TOPIC};
use crate::txn::TXN_STATE_TOPIC;

/// How long a request waits for a coordinator that has just begun to lead
/// to see its log committed before it is answered
/// COORDINATOR_LOAD_IN_PROGRESS. A new leader commits its first entry
/// within a round trip to a majority.
const LOAD_WAIT: Duration = Duration::from_secs(1);

/// The internal partitions coordinators live on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Internal {
    Offsets,
    TxnState,
}

impl Internal {
    const ALL: [Internal; 2] = [Internal::Offsets, Internal::TxnState];

    pub fn topic(self) -> &'static str {
        match self {
            Internal::Offsets => OFFSETS_TOPIC,
            Internal::TxnState => TXN_STATE_TOPIC,
        }
    }
}

impl Shard {
    /// Makes sure this shard coordinates what `internal`'s `partition`
    /// holds: Ok where the partition has one replica (loaded at start) or
    /// this replica leads it with its state loaded in the current term
    /// (loading it first if not); NOT_COORDINATOR (naming the leader)
    /// where another replica leads it.
    pub(super) async fn coordinating(&self, internal: Internal, partition: u32) -> Result<(), BrokerError> {
        let topic = internal.topic();
        let Some(view) = self.leading(topic, partition)? else {
            return Ok(());
        };
        let term = view.term();
        let key = (internal, partition);
        if self.coordinator_terms.borrow().get(&key) == Some(&term) {
            return Ok(());
        }
        let turn = self
            .coordinator_loads
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| Rc::new(Semaphore::new(1)))
            .clone();
        let _turn = turn
            .acquire_permit(1)
            .await
            .map_err(|_| BrokerError::ShardGone(self.id))?;
        // Another request may have loaded it while this one waited.
        if self.coordinator_terms.borrow().get(&key) == Some(&term) {
            return Ok(());
        }
        let log = self.log(topic, partition)?;
        let end = log.log_end_offset();
        if end > Offset(0) && !view.wait_for_data(Offset(end.0 - 1), Instant::now() + LOAD_WAIT).await {
            return Err(BrokerError::CoordinatorLoading {
                topic: topic.to_string(),
                partition,
            });
        }
        if !view.is_leader() || view.term() != term {
            return Err(BrokerError::NotLeaderOrFollower {
                topic: topic.to_string(),
                partition,
                leader: view.leader(),
            });
        }
        // What an earlier term here left is stale: replayed afresh.
        self.unload_coordinator(internal, partition)?;
        let loaded = match internal {
            Internal::Offsets => self.load_offsets_partition(partition).await?,
            Internal::TxnState => self.load_txns_partition(partition).await?,
        };
        self.coordinator_terms.borrow_mut().insert(key, term);
        tracing::info!(
            shard = self.id,
            topic,
            partition,
            term,
            records = loaded,
            "coordinator loaded"
        );
        Ok(())
    }

    /// Whether what was just made durable in `internal`'s `partition` is
    /// still this shard's to apply: it has one replica, or this replica's
    /// state for it was loaded and not let go meanwhile.
    pub(super) fn coordinates(&self, internal: Internal, partition: u32) -> bool {
        self.replica_view(internal.topic(), partition).is_none()
            || self.coordinator_terms.borrow().contains_key(&(internal, partition))
    }

    /// Forgets the coordinator state `internal`'s `partition` holds.
    fn unload_coordinator(&self, internal: Internal, partition: u32) -> Result<usize, BrokerError> {
        self.coordinator_terms.borrow_mut().remove(&(internal, partition));
        Ok(match internal {
            Internal::Offsets => {
                let partitions = self.offsets_partitions()?;
                self.txn_offsets.borrow_mut().retain(|(p, _), _| *p != partition);
                self.coordinator
                    .borrow_mut()
                    .unload(|group| offsets::partition_for_group(group, partitions) == partition)
            }
            Internal::TxnState => {
                let partitions = self.txn_partitions()?;
                self.txn_coordinator
                    .borrow_mut()
                    .unload(|id| offsets::partition_for_group(id, partitions) == partition)
            }
        })
    }

    /// On the coordinators' clock: lets go of the state of internal
    /// partitions this replica no longer leads (or leads in a later term,
    /// to be loaded again), and loads those it has begun to lead, so that
    /// their groups' sessions and transactions' timeouts run before any
    /// client asks.
    pub(super) async fn follow_coordinator_leadership(&self) {
        let loaded: Vec<((Internal, u32), u64)> = self
            .coordinator_terms
            .borrow()
            .iter()
            .map(|(key, term)| (*key, *term))
            .collect();
        for ((internal, partition), term) in loaded {
            let current = self
                .replica_view(internal.topic(), partition)
                .filter(|view| view.is_leader())
                .map(|view| view.term());
            if current == Some(term) {
                continue;
            }
            match self.unload_coordinator(internal, partition) {
                Ok(forgotten) => tracing::info!(
                    shard = self.id,
                    topic = internal.topic(),
                    partition,
                    term,
                    forgotten,
                    "no longer coordinating: the partition is led elsewhere"
                ),
                Err(error) => {
                    tracing::warn!(shard = self.id, topic = internal.topic(), partition, %error, "coordinator not let go")
                }
            }
        }
        for internal in Internal::ALL {
            let led: Vec<u32> = self
                .replicas
                .borrow()
                .iter()
                .filter(|((topic, _), view)| topic == internal.topic() && view.is_leader())
                .map(|((_, partition), _)| *partition)
                .filter(|p| !self.coordinator_terms.borrow().contains_key(&(internal, *p)))
                .collect();
            for partition in led {
                if let Err(error) = self.coordinating(internal, partition).await {
                    tracing::debug!(shard = self.id, topic = internal.topic(), partition, %error, "coordinator not loaded yet");
                }
            }
        }
    }
}
