//! A shard's side of transactions: routing a transactional id's requests to
//! the shard that coordinates it (the owner of its `__transaction_state`
//! partition), writing each new transaction state to that log before it
//! counts, announcing a transaction's partitions to their owners, writing
//! the markers that end it, aborting transactions that time out, and
//! finishing at start what a crash cut short.

use std::rc::Rc;
use std::time::Duration;

use glommio::sync::Semaphore;
use net::messages::{txn_marker, WriteTxnMarkersRequest};
use net::ErrorCode;
use storage::batch::{self, control, control::Marker, RecordBatchBuilder};

use super::coordinators::Internal;
use super::{Forward, Shard, ShardId, ShardMessage};
use crate::error::BrokerError;
use crate::offsets::{self, OffsetKey, OffsetValue, OFFSETS_TOPIC};
use crate::txn::{self, InitStep, Step, TxnMeta, TxnState, TXN_STATE_TOPIC};

/// How often open transactions are checked against their timeouts.
pub const TXN_TICK: Duration = Duration::from_millis(100);
/// Bytes read at a time while replaying the transaction state log.
const REPLAY_READ_BYTES: usize = 1 << 20;

/// A transactional producer's request, owned so that it can cross to the
/// coordinating shard.
#[derive(Debug)]
pub enum TxnCall {
    Init {
        id: String,
        timeout_ms: i32,
    },
    AddPartitions {
        id: String,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, u32)>,
    },
    AddOffsets {
        id: String,
        producer_id: i64,
        epoch: i16,
        group: String,
    },
    End {
        id: String,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    },
    /// The id's state as its coordinator holds it (DescribeTransactions).
    Describe {
        id: String,
    },
}

impl TxnCall {
    fn id(&self) -> &str {
        match self {
            TxnCall::Init { id, .. }
            | TxnCall::AddPartitions { id, .. }
            | TxnCall::AddOffsets { id, .. }
            | TxnCall::End { id, .. }
            | TxnCall::Describe { id } => id,
        }
    }
}

#[derive(Debug)]
pub enum TxnAnswer {
    Initialized {
        producer_id: i64,
        epoch: i16,
    },
    /// None: the coordinator knows no such id.
    Described(Option<Box<crate::txn::TxnMeta>>),
    Error(ErrorCode),
}

/// An offset committed inside a transaction, applied when it commits.
#[derive(Debug)]
pub struct PendingOffset {
    pub key: OffsetKey,
    pub value: OffsetValue,
    pub log_offset: u64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Shard {
    pub(super) fn txn_partitions(&self) -> Result<u32, BrokerError> {
        let table = self.metadata.snapshot();
        let topic = table
            .topics
            .get(TXN_STATE_TOPIC)
            .ok_or_else(|| BrokerError::Config(format!("the internal topic {TXN_STATE_TOPIC} is missing")))?;
        Ok(topic.shards.len() as u32)
    }

    fn txn_partition(&self, id: &str) -> Result<u32, BrokerError> {
        Ok(offsets::partition_for_group(id, self.txn_partitions()?))
    }

    fn txn_turn(&self, partition: u32) -> Rc<Semaphore> {
        self.txn_turns
            .borrow_mut()
            .entry(partition)
            .or_insert_with(|| Rc::new(Semaphore::new(1)))
            .clone()
    }

    /// The shard that coordinates transactional id `id`: the owner of its
    /// transaction state partition.
    pub fn txn_coordinator(&self, id: &str) -> Result<ShardId, BrokerError> {
        self.owner(TXN_STATE_TOPIC, self.txn_partition(id)?)
    }

    /// Where transactional id `id`'s coordinator is (as `group_coordinator_at`).
    pub fn txn_coordinator_at(&self, id: &str) -> Result<(u64, ShardId), BrokerError> {
        let partition = self.txn_partition(id)?;
        self.internal_leader(TXN_STATE_TOPIC, partition)
    }

    /// Serves a transactional request on the shard that coordinates its id.
    pub async fn txn_call(&self, call: TxnCall) -> Result<TxnAnswer, BrokerError> {
        let owner = self.txn_coordinator(call.id())?;
        if owner == self.id {
            return self.txn_call_local(call).await;
        }
        self.ask(owner, |reply| ShardMessage::Txn { call, reply }).await
    }

    pub(super) async fn txn_call_local(&self, call: TxnCall) -> Result<TxnAnswer, BrokerError> {
        let partition = self.txn_partition(call.id())?;
        let turn = self.txn_turn(partition);
        let _turn = turn
            .acquire_permit(1)
            .await
            .map_err(|_| BrokerError::ShardGone(self.id))?;
        self.coordinating(Internal::TxnState, partition).await?;
        let error = |code| Ok(TxnAnswer::Error(code));
        match call {
            TxnCall::Init { id, timeout_ms } => loop {
                let step = self.txn_coordinator.borrow().init(&id, timeout_ms);
                match step {
                    InitStep::Refuse(code) => return error(code),
                    InitStep::AbortFirst(aborting) => self.end_transaction(partition, &id, aborting, true).await?,
                    InitStep::NewId { timeout_ms } => {
                        let producer_id = self.allocate_producer_id().await?;
                        let meta = TxnMeta {
                            producer_id,
                            epoch: 0,
                            timeout_ms,
                            state: TxnState::Empty,
                            partitions: Default::default(),
                            started_ms: 0,
                        };
                        self.write_txn_state(partition, &id, &meta).await?;
                        return Ok(TxnAnswer::Initialized { producer_id, epoch: 0 });
                    }
                    InitStep::Write(meta) => {
                        self.write_txn_state(partition, &id, &meta).await?;
                        return Ok(TxnAnswer::Initialized {
                            producer_id: meta.producer_id,
                            epoch: meta.epoch,
                        });
                    }
                }
            },
            TxnCall::AddPartitions {
                id,
                producer_id,
                epoch,
                partitions,
            } => {
                let table = self.metadata.snapshot();
                if partitions
                    .iter()
                    .any(|(topic, p)| topic.starts_with("__") || table.owner(topic, *p).is_none())
                {
                    return error(ErrorCode::UnknownTopicOrPartition);
                }
                self.add_to_transaction(partition, &id, producer_id, epoch, partitions)
                    .await
            }
            TxnCall::AddOffsets {
                id,
                producer_id,
                epoch,
                group,
            } => {
                if group.is_empty() {
                    return error(ErrorCode::InvalidGroupId);
                }
                let offsets_partition = offsets::partition_for_group(&group, self.offsets_partitions()?);
                let partitions = vec![(OFFSETS_TOPIC.to_string(), offsets_partition)];
                self.add_to_transaction(partition, &id, producer_id, epoch, partitions)
                    .await
            }
            TxnCall::End {
                id,
                producer_id,
                epoch,
                commit,
            } => {
                let step = self.txn_coordinator.borrow().end(&id, producer_id, epoch, commit);
                match step {
                    Step::Refuse(code) => error(code),
                    Step::Done => error(ErrorCode::None),
                    Step::Write(prepared) => {
                        self.end_transaction(partition, &id, prepared, true).await?;
                        error(ErrorCode::None)
                    }
                }
            }
            TxnCall::Describe { id } => Ok(TxnAnswer::Described(
                self.txn_coordinator.borrow().get(&id).cloned().map(Box::new),
            )),
        }
    }

    /// A fresh producer id. Reserving a block of them writes and syncs a
    /// file under a lock all shards share: done off the shard.
    pub async fn allocate_producer_id(&self) -> Result<i64, BrokerError> {
        let ids = self.producer_ids.clone();
        storage::blocking::off_shard(move || ids.lock().unwrap_or_else(|p| p.into_inner()).allocate())
            .await
            .map_err(|source| BrokerError::Io {
                op: "reserve producer ids in",
                path: self.config.data_dir.clone(),
                source,
            })
    }

    async fn add_to_transaction(
        &self,
        partition: u32,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, u32)>,
    ) -> Result<TxnAnswer, BrokerError> {
        let step = self
            .txn_coordinator
            .borrow()
            .add_partitions(id, producer_id, epoch, &partitions, now_ms());
        match step {
            Step::Refuse(code) => Ok(TxnAnswer::Error(code)),
            Step::Done => Ok(TxnAnswer::Error(ErrorCode::None)),
            Step::Write(meta) => {
                // Written first: after a crash the coordinator knows every
                // partition that may hold the transaction's records.
                self.write_txn_state(partition, id, &meta).await?;
                for (topic, p) in &partitions {
                    self.expect_txn(topic, *p, producer_id, epoch).await?;
                }
                Ok(TxnAnswer::Error(ErrorCode::None))
            }
        }
    }

    /// Ends a transaction from its prepared state: the state is written
    /// (unless replayed from the log), every partition gets the marker,
    /// then the completed state is written. A marker that cannot be written
    /// leaves the transaction prepared, to be finished by the clock.
    async fn end_transaction(
        &self,
        partition: u32,
        id: &str,
        prepared: TxnMeta,
        write_prepared: bool,
    ) -> Result<(), BrokerError> {
        if write_prepared {
            self.write_txn_state(partition, id, &prepared).await?;
        }
        let commit = prepared.state == TxnState::PrepareCommit;
        let markers = prepared
            .partitions
            .iter()
            .map(|(topic, p)| self.write_marker(topic, *p, prepared.producer_id, prepared.epoch, commit));
        for (result, (topic, p)) in futures::future::join_all(markers)
            .await
            .into_iter()
            .zip(&prepared.partitions)
        {
            match result {
                Ok(()) => {}
                // A deleted topic holds nothing to end.
                Err(BrokerError::UnknownTopicOrPartition { .. }) => {
                    tracing::warn!(transactional_id = id, %topic, partition = p, "marker for a partition that is gone: skipped");
                }
                Err(error) => return Err(error),
            }
        }
        let completed = txn::TxnCoordinator::completed(&prepared);
        self.write_txn_state(partition, id, &completed).await?;
        tracing::info!(
            transactional_id = id,
            producer_id = prepared.producer_id,
            epoch = prepared.epoch,
            state = completed.state.name(),
            partitions = prepared.partitions.len(),
            "transaction ended"
        );
        Ok(())
    }

    /// Appends a transaction state to the log, waits until it is durable,
    /// then makes it current.
    async fn write_txn_state(&self, partition: u32, id: &str, meta: &TxnMeta) -> Result<(), BrokerError> {
        let log = self.log(TXN_STATE_TOPIC, partition)?;
        let mut builder = RecordBatchBuilder::new();
        builder.push(now_ms(), Some(id.as_bytes()), Some(&txn::encode(meta)), vec![]);
        self.append_durable(TXN_STATE_TOPIC, partition, &log, &builder.build())
            .await?;
        // Let go meanwhile (led elsewhere now): the new leader replays it.
        if self.coordinates(Internal::TxnState, partition) {
            self.txn_coordinator.borrow_mut().apply(id, meta.clone());
        }
        Ok(())
    }

    async fn expect_txn(&self, topic: &str, partition: u32, producer_id: i64, epoch: i16) -> Result<(), BrokerError> {
        self.txn_partition_call(
            topic,
            partition,
            producer_id,
            epoch,
            txn_marker::EXPECT,
            Forward::ToLeader,
        )
        .await
    }

    async fn write_marker(
        &self,
        topic: &str,
        partition: u32,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), BrokerError> {
        let marker = if commit { txn_marker::COMMIT } else { txn_marker::ABORT };
        self.txn_partition_call(topic, partition, producer_id, epoch, marker, Forward::ToLeader)
            .await
    }

    /// What a transaction's coordinator asks of one of its partitions (one
    /// of `txn_marker`): done by the shard that owns it here if this node
    /// leads it; else, with `Forward::ToLeader`, sent to the node that
    /// leads it (`WriteTxnMarkers` on its native listener), as Kafka's
    /// coordinator sends its markers to each partition's leader.
    pub async fn txn_partition_call(
        &self,
        topic: &str,
        partition: u32,
        producer_id: i64,
        epoch: i16,
        marker: u8,
        forward: Forward,
    ) -> Result<(), BrokerError> {
        let here = match marker {
            txn_marker::EXPECT => self.expect_txn_here(topic, partition, producer_id, epoch).await,
            txn_marker::COMMIT | txn_marker::ABORT => {
                self.write_marker_here(topic, partition, producer_id, epoch, marker == txn_marker::COMMIT)
                    .await
            }
            other => {
                return Err(BrokerError::InvalidRequest(format!(
                    "{topic}/{partition}: transaction marker {other} is none of expect, commit, abort"
                )))
            }
        };
        let leader = match &here {
            Err(BrokerError::NotLeaderOrFollower { .. }) if forward == Forward::ToLeader => {
                let table = self.metadata.snapshot();
                self.metadata
                    .leader(&table, topic, partition)
                    .map(|l| l.node)
                    .filter(|node| *node != self.config.node_id)
            }
            _ => None,
        };
        let Some(leader) = leader else {
            return here;
        };
        let request = WriteTxnMarkersRequest {
            topic: topic.to_string(),
            partition,
            producer_id,
            producer_epoch: epoch,
            marker,
        };
        let unknown = BrokerError::NotLeaderOrFollower {
            topic: topic.to_string(),
            partition,
            leader: Some(leader),
        };
        self.call_node(leader, unknown, async |c| c.write_txn_markers(&request).await)
            .await
            .map_err(|error| match error {
                // As if it were here: the callers treat these by kind.
                BrokerError::Remote {
                    code: net::ErrorCode::UnknownTopicOrPartition,
                    ..
                } => super::unknown(topic, partition),
                BrokerError::Remote {
                    code: net::ErrorCode::NotLeaderOrFollower,
                    ..
                } => BrokerError::NotLeaderOrFollower {
                    topic: topic.to_string(),
                    partition,
                    leader: None,
                },
                other => other,
            })
    }

    async fn expect_txn_here(
        &self,
        topic: &str,
        partition: u32,
        producer_id: i64,
        epoch: i16,
    ) -> Result<(), BrokerError> {
        let owner = self.owner(topic, partition)?;
        if owner == self.id {
            return self.expect_txn_local(topic, partition, producer_id, epoch).await;
        }
        let topic = topic.to_string();
        self.ask(owner, |reply| ShardMessage::ExpectTxn {
            topic,
            partition,
            producer_id,
            epoch,
            reply,
        })
        .await
    }

    pub(super) async fn expect_txn_local(
        &self,
        topic: &str,
        partition: u32,
        producer_id: i64,
        epoch: i16,
    ) -> Result<(), BrokerError> {
        let key = (topic.to_string(), partition);
        if let Some(view) = self.leading(topic, partition)? {
            // Under the turn, so that no rebuild replaces what is marked.
            let turn = self.idempotent_turn(&key);
            let _turn = turn
                .acquire_permit(1)
                .await
                .map_err(|_| BrokerError::ShardGone(self.id))?;
            let log = self.log(topic, partition)?;
            self.refresh_producer_states(&key, &log, &view).await?;
            return self.mark_expected(topic, partition, producer_id, epoch);
        }
        self.mark_expected(topic, partition, producer_id, epoch)
    }

    fn mark_expected(&self, topic: &str, partition: u32, producer_id: i64, epoch: i16) -> Result<(), BrokerError> {
        let mut states = self.producer_states.borrow_mut();
        let states = states
            .get_mut(&(topic.to_string(), partition))
            .ok_or_else(|| super::unknown(topic, partition))?;
        states.expect(producer_id, epoch);
        Ok(())
    }

    async fn write_marker_here(
        &self,
        topic: &str,
        partition: u32,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), BrokerError> {
        let owner = self.owner(topic, partition)?;
        let marker = if commit { Marker::Commit } else { Marker::Abort };
        if owner == self.id {
            return self
                .write_marker_local(topic, partition, producer_id, epoch, marker)
                .await;
        }
        let topic = topic.to_string();
        self.ask(owner, |reply| ShardMessage::WriteMarker {
            topic,
            partition,
            producer_id,
            epoch,
            commit,
            reply,
        })
        .await
    }

    /// Appends a marker under the partition's idempotent turn (no batch of
    /// the producer interleaves), waits until it is durable, and records it:
    /// the transaction's records become stable (or aborted). In an offsets
    /// partition the transaction's commits are applied or dropped.
    pub(super) async fn write_marker_local(
        &self,
        topic: &str,
        partition: u32,
        producer_id: i64,
        epoch: i16,
        marker: Marker,
    ) -> Result<(), BrokerError> {
        let log = self.log(topic, partition)?;
        let storage = |source| BrokerError::Storage {
            topic: topic.to_string(),
            partition,
            source,
        };
        let key = (topic.to_string(), partition);
        let turn = self.idempotent_turn(&key);
        let _turn = turn
            .acquire_permit(1)
            .await
            .map_err(|_| BrokerError::ShardGone(self.id))?;
        // In an offsets partition the marker takes the append turn too, so
        // it never lands amid a compaction's rewrite.
        let offsets_turn = (topic == OFFSETS_TOPIC).then(|| self.offsets_turn(partition));
        let _offsets_turn = match &offsets_turn {
            Some(turn) => Some(
                turn.acquire_permit(1)
                    .await
                    .map_err(|_| BrokerError::ShardGone(self.id))?,
            ),
            None => None,
        };
        if let Some(view) = self.leading(topic, partition)? {
            self.refresh_producer_states(&key, &log, &view).await?;
        }
        let epoch_ok = self
            .producer_states
            .borrow()
            .get(&key)
            .is_none_or(|s| s.marker_epoch_ok(producer_id, epoch));
        if !epoch_ok {
            // A newer epoch's marker is already there: this one is stale.
            return Ok(());
        }
        let frame = control::batch(producer_id, epoch, marker, now_ms());
        let appended = self.append_durable(topic, partition, &log, &frame).await?;
        let mut info = batch::peek_header(&frame).map_err(storage)?;
        info.base_offset = appended.base_offset;
        if let Some(states) = self.producer_states.borrow_mut().get_mut(&key) {
            states.record(&info, Some(marker));
        }
        if topic == OFFSETS_TOPIC {
            self.end_txn_offsets(partition, producer_id, marker);
        }
        Ok(())
    }

    /// A transaction's commits in an offsets partition count (commit) or
    /// are forgotten (abort).
    pub(super) fn end_txn_offsets(&self, partition: u32, producer_id: i64, marker: Marker) {
        let pending = self.txn_offsets.borrow_mut().remove(&(partition, producer_id));
        if marker == Marker::Abort {
            return;
        }
        let now = std::time::Instant::now();
        let mut coordinator = self.coordinator.borrow_mut();
        for offset in pending.into_iter().flatten() {
            let committed = crate::group::Committed {
                offset: offset.value.offset,
                metadata: offset.value.metadata,
                commit_time_ms: offset.value.commit_time_ms,
                log_offset: offset.log_offset,
            };
            coordinator.apply_commit(
                &offset.key.group,
                &offset.key.topic,
                offset.key.partition,
                offset.log_offset,
                Some(committed),
                now,
            );
        }
    }

    /// Replays this shard's partitions of the transaction state log into
    /// its coordinator: the last state of each id wins. A replicated one is
    /// loaded when its replica here begins to lead it (`coordinators`).
    pub async fn load_txns(&self) -> Result<usize, BrokerError> {
        let table = self.metadata.snapshot();
        let Some(topic) = table.topics.get(TXN_STATE_TOPIC) else {
            return Ok(0);
        };
        let mut loaded = 0;
        for (partition, &owner) in topic.shards.iter().enumerate() {
            let partition = partition as u32;
            if owner != self.id || self.replica_view(TXN_STATE_TOPIC, partition).is_some() {
                continue;
            }
            loaded += self.load_txns_partition(partition).await?;
        }
        Ok(loaded)
    }

    /// Replays one transaction state partition into the coordinator;
    /// answers how many states it applied.
    pub(super) async fn load_txns_partition(&self, partition: u32) -> Result<usize, BrokerError> {
        let mut loaded = 0;
        let log = self.log(TXN_STATE_TOPIC, partition)?;
        let storage = |source| BrokerError::Storage {
            topic: TXN_STATE_TOPIC.to_string(),
            partition,
            source,
        };
        let mut next = log.log_start_offset();
        while next < log.log_end_offset() {
            let read = log.read(next, REPLAY_READ_BYTES).await.map_err(storage)?;
            if read.bytes.is_empty() {
                break;
            }
            for frame in batch::frames(&read.bytes) {
                let info = batch::verify_crc(frame).map_err(storage)?;
                let archived = batch::access(frame).map_err(storage)?;
                for record in archived.records.iter() {
                    let id = record.key.as_ref().and_then(|k| std::str::from_utf8(k).ok());
                    let meta = record.value.as_ref().and_then(|v| txn::decode(v));
                    match (id, meta) {
                        (Some(id), Some(meta)) => {
                            self.txn_coordinator.borrow_mut().apply(id, meta);
                            loaded += 1;
                        }
                        _ => {
                            tracing::warn!(partition, base_offset = %info.base_offset, "unreadable transaction state record; skipped")
                        }
                    }
                }
                next = info.next_offset();
            }
        }
        Ok(loaded)
    }

    /// What a restart left: prepared transactions get their markers and
    /// complete; open ones are announced again to their partitions (so the
    /// producer may go on) and time out as usual.
    pub async fn recover_txns(&self) {
        let unfinished = self.txn_coordinator.borrow().unfinished();
        for (id, meta) in unfinished {
            let Ok(partition) = self.txn_partition(&id) else {
                continue;
            };
            let turn = self.txn_turn(partition);
            let Ok(_turn) = turn.acquire_permit(1).await else {
                return;
            };
            // The state may have moved while this waited for the turn.
            let current = self.txn_coordinator.borrow().get(&id).cloned();
            let Some(current) = current.filter(|c| *c == meta) else {
                continue;
            };
            if current.state != TxnState::Ongoing {
                tracing::warn!(
                    transactional_id = %id,
                    state = current.state.name(),
                    "finishing a transaction a restart or a failed marker left prepared"
                );
            }
            let result = if current.state == TxnState::Ongoing {
                let mut result = Ok(());
                for (topic, p) in &current.partitions {
                    if let Err(error) = self.expect_txn(topic, *p, current.producer_id, current.epoch).await {
                        result = Err(error);
                    }
                }
                result
            } else {
                self.end_transaction(partition, &id, current, false).await
            };
            if let Err(error) = result {
                tracing::warn!(transactional_id = %id, %error, "recovering a transaction failed; retried later");
            }
        }
    }

    /// The transaction clock: aborts transactions past their timeout
    /// (fencing their producers) and retries prepared ones whose markers
    /// failed. What a restart left is finished before the shard accepts
    /// (`recover_txns`, from the runtime).
    pub async fn run_txn_clock(&self) {
        let mut last_retry = std::time::Instant::now();
        let mut last_compaction = std::time::Instant::now();
        let mut last_snapshot = std::time::Instant::now();
        loop {
            glommio::timer::sleep(TXN_TICK).await;
            if last_snapshot.elapsed() >= Duration::from_millis(self.config.producer_snapshot_interval_ms) {
                last_snapshot = std::time::Instant::now();
                self.snapshot_producer_states().await;
            }
            if last_compaction.elapsed() >= Duration::from_millis(self.config.offsets_compact_interval_ms) {
                last_compaction = std::time::Instant::now();
                self.compact_txn_states().await;
            }
            let expired = self.txn_coordinator.borrow().timed_out(now_ms());
            for (id, _) in expired {
                let Ok(partition) = self.txn_partition(&id) else {
                    continue;
                };
                let turn = self.txn_turn(partition);
                let Ok(_turn) = turn.acquire_permit(1).await else {
                    return;
                };
                // Still open and still expired once the turn is ours?
                let aborting = self
                    .txn_coordinator
                    .borrow()
                    .timed_out(now_ms())
                    .into_iter()
                    .find(|(expired, _)| *expired == id)
                    .map(|(_, meta)| meta);
                let Some(aborting) = aborting else {
                    continue;
                };
                tracing::info!(transactional_id = %id, producer_id = aborting.producer_id, "transaction timed out; aborting");
                if let Err(error) = self.end_transaction(partition, &id, aborting, true).await {
                    tracing::warn!(transactional_id = %id, %error, "aborting a timed out transaction failed; retried later");
                }
            }
            if last_retry.elapsed() >= RETRY_PREPARED {
                last_retry = std::time::Instant::now();
                // Prepared transactions whose markers failed are finished;
                // open ones are announced again (an announcement that failed
                // at start would refuse their producer's next partition).
                let unfinished = !self.txn_coordinator.borrow().unfinished().is_empty();
                if unfinished {
                    self.recover_txns().await;
                }
            }
        }
    }
}

impl Shard {
    /// Compacts each transaction state partition this shard owns that has
    /// grown past `offsets_compact_bytes`: under the partition's turn (no
    /// state changes meanwhile) the current state of each of its ids is
    /// written again, then everything before is deleted.
    async fn compact_txn_states(&self) {
        let Ok(partitions) = self.txn_partitions() else {
            return;
        };
        for partition in 0..partitions {
            // Not a replicated one yet (as `compact_offsets`).
            if self.owner(TXN_STATE_TOPIC, partition).ok() != Some(self.id)
                || self.replica_view(TXN_STATE_TOPIC, partition).is_some()
            {
                continue;
            }
            let Ok(log) = self.log(TXN_STATE_TOPIC, partition) else {
                continue;
            };
            if log.size_bytes() <= self.config.offsets_compact_bytes {
                continue;
            }
            if let Err(error) = self.compact_txn_partition(&log, partition, partitions).await {
                tracing::error!(partition, %error, "compacting transaction states failed");
            }
        }
    }

    async fn compact_txn_partition(
        &self,
        log: &storage::PartitionLog,
        partition: u32,
        partitions: u32,
    ) -> Result<(), BrokerError> {
        let storage = |source| BrokerError::Storage {
            topic: TXN_STATE_TOPIC.to_string(),
            partition,
            source,
        };
        let turn = self.txn_turn(partition);
        let _turn = turn
            .acquire_permit(1)
            .await
            .map_err(|_| BrokerError::ShardGone(self.id))?;
        let live = self
            .txn_coordinator
            .borrow()
            .states(|id| offsets::partition_for_group(id, partitions) == partition);
        let from = log.log_end_offset();
        let mut last = None;
        let mut builder = RecordBatchBuilder::new();
        for (id, meta) in live {
            let value = txn::encode(&meta);
            if !builder.is_empty() && builder.payload_bytes() + id.len() + value.len() > COMPACT_BATCH_BYTES {
                let full = std::mem::take(&mut builder);
                last = Some(log.append(&full.build()).await.map_err(storage)?.last_offset);
            }
            builder.push(now_ms(), Some(id.as_bytes()), Some(&value), vec![]);
        }
        if !builder.is_empty() {
            last = Some(log.append(&builder.build()).await.map_err(storage)?.last_offset);
        }
        if let Some(last) = last {
            log.wait_durable(last).await.map_err(storage)?;
        }
        let before = log.size_bytes();
        log.delete_records_before(from).await.map_err(storage)?;
        tracing::info!(
            partition,
            log_start_offset = from.0,
            before,
            after = log.size_bytes(),
            "compacted transaction states"
        );
        Ok(())
    }
}

/// Bytes of states per batch in a compaction's rewrite: with one state at
/// most `TXN_STATE_BYTES_MAX`, a batch stays under the log's 1 MiB limit.
const COMPACT_BATCH_BYTES: usize = 512 << 10;

/// How often prepared transactions whose markers failed are tried again, and
/// open ones announced again.
const RETRY_PREPARED: Duration = Duration::from_secs(5);
