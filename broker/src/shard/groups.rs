//! A shard's side of consumer groups: routing a group's requests to the
//! shard that coordinates it (the owner of the group's `__consumer_offsets`
//! partition), writing commits to that partition's log before they count,
//! replaying the log into the coordinator when the shard starts, and the
//! coordinator's clock (session timeouts, rebalance deadlines, expiry).

use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::sync::Semaphore;

use net::error::ErrorCode;
use storage::batch::{self, RecordBatchBuilder};

use super::coordinators::Internal;
use super::{Appending, Shard, ShardId, ShardMessage};
use crate::error::BrokerError;
use crate::group::{Committed, GroupDescription, GroupState, JoinOutcome, JoinRequest, SyncOutcome};
use crate::offsets::{self, OffsetKey, OffsetValue, OFFSETS_TOPIC};

/// How often the coordinator's clock advances.
pub const GROUP_TICK: Duration = Duration::from_millis(100);
/// Bytes read at a time while replaying the offsets log.
const REPLAY_READ_BYTES: usize = 1 << 20;
/// Bytes of records per offsets batch, well under the offsets topic's
/// batch limit (1 MiB): a commit with the largest metadata is ~4.6 KB.
const OFFSETS_BATCH_BYTES: usize = 256 << 10;

#[derive(Clone, Copy, PartialEq, Eq)]
enum AppendMode {
    /// Commits, appended as they come.
    Commit,
    /// Tombstones of expired offsets, appended only for offsets still
    /// expired once every earlier commit is applied.
    Expire,
}

/// Splits records into batches of at most `OFFSETS_BATCH_BYTES`.
fn offsets_chunks(records: Vec<(OffsetKey, Option<OffsetValue>)>) -> Vec<Vec<(OffsetKey, Option<OffsetValue>)>> {
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for record in records {
        let (key, value) = &record;
        let size = 64 + key.group.len() + key.topic.len() + value.as_ref().map_or(0, |v| 32 + v.metadata.len());
        if !chunk.is_empty() && bytes + size > OFFSETS_BATCH_BYTES {
            chunks.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += size;
        chunk.push(record);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// One batch of offsets records.
fn offsets_batch(records: &[(OffsetKey, Option<OffsetValue>)]) -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new();
    for (key, value) in records {
        let value = value.as_ref().map(offsets::encode_value);
        builder.push(now_ms(), Some(&offsets::encode_key(key)), value.as_deref(), vec![]);
    }
    builder.build()
}

/// Counts an offsets write as appended but not yet applied until dropped.
/// Offsets writes of one partition appended but not yet applied, at most:
/// each holds a unit of the partition's `offsets_writes` semaphore from its
/// append until it is applied, and an expiry takes all of them to wait for
/// every one in flight, woken by the last one's release.
const OFFSETS_WRITES_MAX: u64 = 1 << 20;

/// A group request, owned so that it can cross to the coordinating shard.
#[derive(Debug)]
pub enum GroupCall {
    Join(JoinRequest),
    Sync {
        group: String,
        generation: i32,
        member_id: String,
        assignments: Vec<(String, Vec<u8>)>,
    },
    Heartbeat {
        group: String,
        generation: i32,
        member_id: String,
    },
    Leave {
        group: String,
        member_id: String,
    },
    Commit {
        group: String,
        generation: i32,
        member_id: String,
        /// (topic, partition, next offset, metadata)
        offsets: Vec<(String, u32, u64, String)>,
    },
    /// Offsets committed inside a transaction (TxnOffsetCommit).
    TxnCommit {
        group: String,
        producer_id: i64,
        epoch: i16,
        /// (topic, partition, next offset, metadata)
        offsets: Vec<(String, u32, u64, String)>,
    },
    FetchOffsets {
        group: String,
        only: Option<Vec<(String, u32)>>,
    },
    Describe {
        group: String,
    },
    /// The groups this shard coordinates.
    List,
    /// OffsetDelete: the group's commits of these partitions, unless its
    /// members consume their topics.
    DeleteOffsets {
        group: String,
        partitions: Vec<(String, u32)>,
    },
}

impl GroupCall {
    fn group(&self) -> Option<&str> {
        match self {
            GroupCall::Join(request) => Some(&request.group),
            GroupCall::Sync { group, .. }
            | GroupCall::Heartbeat { group, .. }
            | GroupCall::Leave { group, .. }
            | GroupCall::Commit { group, .. }
            | GroupCall::TxnCommit { group, .. }
            | GroupCall::FetchOffsets { group, .. }
            | GroupCall::DeleteOffsets { group, .. }
            | GroupCall::Describe { group } => Some(group),
            GroupCall::List => None,
        }
    }
}

#[derive(Debug)]
pub enum GroupAnswer {
    Join(JoinOutcome),
    Sync(SyncOutcome),
    Error(ErrorCode),
    /// Per (topic, partition) of a commit.
    Committed(Vec<(String, u32, ErrorCode)>),
    Offsets(Vec<((String, u32), Option<Committed>)>),
    Described(Option<GroupDescription>),
    Listed(Vec<(String, GroupState, String)>),
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Shard {
    /// Partitions of the offsets topic.
    pub(super) fn offsets_partitions(&self) -> Result<u32, BrokerError> {
        let table = self.metadata.snapshot();
        let topic = table
            .topics
            .get(OFFSETS_TOPIC)
            .ok_or_else(|| BrokerError::Config(format!("the internal topic {OFFSETS_TOPIC} is missing")))?;
        Ok(topic.shards.len() as u32)
    }

    /// The shard that coordinates `group`: the owner of its offsets partition.
    pub fn group_coordinator(&self, group: &str) -> Result<ShardId, BrokerError> {
        let partition = offsets::partition_for_group(group, self.offsets_partitions()?);
        self.owner(OFFSETS_TOPIC, partition)
    }

    /// Where `group`'s coordinator is: the (node, shard) leading its
    /// offsets partition (node ignored on one node).
    pub fn group_coordinator_at(&self, group: &str) -> Result<(u64, ShardId), BrokerError> {
        let partition = offsets::partition_for_group(group, self.offsets_partitions()?);
        self.internal_leader(OFFSETS_TOPIC, partition)
    }

    /// The (node, shard) leading an internal partition now: where its
    /// coordinator is.
    pub(super) fn internal_leader(&self, topic: &str, partition: u32) -> Result<(u64, ShardId), BrokerError> {
        let table = self.metadata.snapshot();
        self.metadata
            .leader(&table, topic, partition)
            .map(|leader| (leader.node, leader.shard))
            .ok_or_else(|| BrokerError::NotLeaderOrFollower {
                topic: topic.to_string(),
                partition,
                leader: None,
            })
    }

    /// Serves a group request on the shard that coordinates the group.
    pub async fn group_call(&self, call: GroupCall) -> Result<GroupAnswer, BrokerError> {
        let Some(group) = call.group() else {
            return self.group_call_local(call).await;
        };
        let owner = self.group_coordinator(group)?;
        if owner == self.id {
            return self.group_call_local(call).await;
        }
        self.ask(owner, |reply| ShardMessage::Group { call, reply }).await
    }

    /// Every group of every shard: ListGroups.
    pub async fn list_all_groups(&self) -> Result<Vec<(String, GroupState, String)>, BrokerError> {
        let mut all = Vec::new();
        for shard in 0..self.inboxes.len() as u16 {
            let answer = if shard == self.id {
                self.group_call_local(GroupCall::List).await?
            } else {
                self.ask(shard, |reply| ShardMessage::Group {
                    call: GroupCall::List,
                    reply,
                })
                .await?
            };
            if let GroupAnswer::Listed(groups) = answer {
                all.extend(groups);
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    pub(super) async fn group_call_local(&self, call: GroupCall) -> Result<GroupAnswer, BrokerError> {
        if let Some(group) = call.group() {
            let partition = offsets::partition_for_group(group, self.offsets_partitions()?);
            self.coordinating(Internal::Offsets, partition).await?;
        }
        let now = Instant::now();
        Ok(match call {
            GroupCall::Join(request) => {
                let member_id = request.member_id.clone();
                // The borrow ends with the statement: the wait is outside it.
                let pending = self.coordinator.borrow_mut().join(request, now);
                GroupAnswer::Join(
                    pending
                        .get(JoinOutcome {
                            error: ErrorCode::CoordinatorNotAvailable,
                            generation: -1,
                            protocol: String::new(),
                            leader: String::new(),
                            member_id,
                            members: Vec::new(),
                        })
                        .await,
                )
            }
            GroupCall::Sync {
                group,
                generation,
                member_id,
                assignments,
            } => {
                let pending = self
                    .coordinator
                    .borrow_mut()
                    .sync(&group, generation, &member_id, assignments, now);
                let settled = self.coordinator.borrow().settled(&group, generation, &member_id);
                if let Some(settled) = settled {
                    self.write_group_record(&group, Some(settled)).await;
                }
                GroupAnswer::Sync(
                    pending
                        .get(SyncOutcome {
                            error: ErrorCode::CoordinatorNotAvailable,
                            assignment: Vec::new(),
                        })
                        .await,
                )
            }
            GroupCall::Heartbeat {
                group,
                generation,
                member_id,
            } => GroupAnswer::Error(
                self.coordinator
                    .borrow_mut()
                    .heartbeat(&group, generation, &member_id, now),
            ),
            GroupCall::Leave { group, member_id } => {
                let left = self.coordinator.borrow_mut().leave(&group, &member_id, now);
                if left == ErrorCode::None && self.coordinator.borrow().is_empty(&group) {
                    self.write_group_record(&group, None).await;
                }
                GroupAnswer::Error(left)
            }
            GroupCall::Commit {
                group,
                generation,
                member_id,
                offsets,
            } => self.commit(&group, generation, &member_id, offsets).await?,
            GroupCall::TxnCommit {
                group,
                producer_id,
                epoch,
                offsets,
            } => self.txn_commit(&group, producer_id, epoch, offsets).await?,
            GroupCall::FetchOffsets { group, only } => {
                GroupAnswer::Offsets(self.coordinator.borrow().offsets(&group, only.as_deref()))
            }
            GroupCall::Describe { group } => GroupAnswer::Described(self.coordinator.borrow().describe(&group)),
            GroupCall::List => GroupAnswer::Listed(self.coordinator.borrow().list()),
            GroupCall::DeleteOffsets { group, partitions } => self.delete_offsets(&group, partitions).await?,
        })
    }

    /// OffsetDelete: tombstones for the group's commits of `partitions`,
    /// durable in the offsets log before they apply; a partition of a topic
    /// the group's members consume is refused with
    /// GROUP_SUBSCRIBED_TO_TOPIC, an unknown group with GROUP_ID_NOT_FOUND.
    async fn delete_offsets(&self, group: &str, partitions: Vec<(String, u32)>) -> Result<GroupAnswer, BrokerError> {
        /// Kafka's GROUP_SUBSCRIBED_TO_TOPIC.
        const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
        let Some(subscribed) = self.coordinator.borrow().subscribed_topics(group) else {
            return Ok(GroupAnswer::Error(ErrorCode::GroupIdNotFound));
        };
        let mut results = Vec::with_capacity(partitions.len());
        let mut tombstones = Vec::new();
        for (topic, partition) in partitions {
            let consumed = match &subscribed {
                crate::group::Subscribed::All => true,
                crate::group::Subscribed::Topics(topics) => topics.contains(&topic),
            };
            if consumed {
                results.push((topic, partition, ErrorCode::from_code(GROUP_SUBSCRIBED_TO_TOPIC)));
                continue;
            }
            tombstones.push((
                OffsetKey {
                    group: group.to_string(),
                    topic: topic.clone(),
                    partition,
                },
                None,
            ));
            results.push((topic, partition, ErrorCode::None));
        }
        if !tombstones.is_empty() {
            self.append_offsets(group, tombstones, AppendMode::Commit).await?;
        }
        Ok(GroupAnswer::Committed(results))
    }

    /// A commit: checked against the group's generation, written to the
    /// offsets log and made durable, then applied. Partitions of unknown
    /// topics, or metadata over the limit, are refused one by one.
    async fn commit(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        offsets: Vec<(String, u32, u64, String)>,
    ) -> Result<GroupAnswer, BrokerError> {
        let check = self.coordinator.borrow().check_commit(group, generation, member_id);
        if check != ErrorCode::None {
            return Ok(GroupAnswer::Committed(
                offsets.into_iter().map(|(t, p, _, _)| (t, p, check)).collect(),
            ));
        }
        let metadata_max = self.coordinator.borrow().limits().offset_metadata_bytes_max;
        let table = self.metadata.snapshot();
        let mut results = Vec::with_capacity(offsets.len());
        let mut accepted = Vec::new();
        for (topic, partition, offset, metadata) in offsets {
            // A group commits offsets of partitions on any node.
            let error = if !table.exists(&topic, partition) {
                ErrorCode::UnknownTopicOrPartition
            } else if metadata.len() > metadata_max {
                ErrorCode::OffsetMetadataTooLarge
            } else {
                ErrorCode::None
            };
            if error == ErrorCode::None {
                accepted.push((topic.clone(), partition, offset, metadata));
            }
            results.push((topic, partition, error));
        }
        if accepted.is_empty() {
            return Ok(GroupAnswer::Committed(results));
        }
        let time = now_ms();
        let records: Vec<(OffsetKey, Option<OffsetValue>)> = accepted
            .into_iter()
            .map(|(topic, partition, offset, metadata)| {
                (
                    OffsetKey {
                        group: group.to_string(),
                        topic,
                        partition,
                    },
                    Some(OffsetValue {
                        offset,
                        commit_time_ms: time,
                        metadata,
                    }),
                )
            })
            .collect();
        if let Err(error) = self.write_offsets(group, records).await {
            tracing::error!(group, %error, "writing committed offsets failed");
            for result in results.iter_mut().filter(|r| r.2 == ErrorCode::None) {
                result.2 = ErrorCode::CoordinatorNotAvailable;
            }
        }
        Ok(GroupAnswer::Committed(results))
    }

    /// Offsets committed inside a transaction: written to the offsets log as
    /// a transactional batch of the producer and made durable, then held
    /// until the transaction's marker applies them (commit) or drops them.
    /// The coordinator must have added the group to the transaction.
    async fn txn_commit(
        &self,
        group: &str,
        producer_id: i64,
        epoch: i16,
        offsets: Vec<(String, u32, u64, String)>,
    ) -> Result<GroupAnswer, BrokerError> {
        let partition = offsets::partition_for_group(group, self.offsets_partitions()?);
        let key = (OFFSETS_TOPIC.to_string(), partition);
        let refuse_all = |offsets: Vec<(String, u32, u64, String)>, code| {
            GroupAnswer::Committed(offsets.into_iter().map(|(t, p, _, _)| (t, p, code)).collect())
        };
        let metadata_max = self.coordinator.borrow().limits().offset_metadata_bytes_max;
        let table = self.metadata.snapshot();
        if offsets
            .iter()
            .any(|(t, p, _, m)| !table.exists(t, *p) || m.len() > metadata_max)
        {
            return Ok(refuse_all(offsets, ErrorCode::UnknownTopicOrPartition));
        }
        if offsets.is_empty() {
            return Ok(GroupAnswer::Committed(Vec::new()));
        }
        let time = now_ms();
        let records: Vec<(OffsetKey, OffsetValue)> = offsets
            .iter()
            .map(|(topic, p, offset, metadata)| {
                (
                    OffsetKey {
                        group: group.to_string(),
                        topic: topic.clone(),
                        partition: *p,
                    },
                    OffsetValue {
                        offset: *offset,
                        commit_time_ms: time,
                        metadata: metadata.clone(),
                    },
                )
            })
            .collect();
        let mut builder = RecordBatchBuilder::new()
            .producer(producer_id, epoch, batch::NO_SEQUENCE)
            .attributes(batch::attributes::TRANSACTIONAL);
        for (k, v) in &records {
            builder.push(
                time,
                Some(&offsets::encode_key(k)),
                Some(&offsets::encode_value(v)),
                vec![],
            );
        }
        let frame = builder.build();
        let log = self.log(OFFSETS_TOPIC, partition)?;
        let storage = |source| BrokerError::Storage {
            topic: OFFSETS_TOPIC.to_string(),
            partition,
            source,
        };
        // The partition's idempotent turn, then its append turn, as a marker
        // takes them: the check that the transaction is open, the append,
        // and holding the offsets as pending happen with no marker and no
        // compaction between them.
        let idempotent_turn = self.idempotent_turn(&key);
        let offsets_turn = self.offsets_turn(partition);
        let appending = {
            let _idempotent = idempotent_turn
                .acquire_permit(1)
                .await
                .map_err(|_| BrokerError::ShardGone(self.id))?;
            let _append = offsets_turn
                .acquire_permit(1)
                .await
                .map_err(|_| BrokerError::ShardGone(self.id))?;
            if let Some(view) = self.leading(OFFSETS_TOPIC, partition)? {
                self.refresh_producer_states(&key, &log, &view).await?;
            }
            let expected = self
                .producer_states
                .borrow()
                .get(&key)
                .is_some_and(|s| s.expects(producer_id, epoch));
            if !expected {
                return Ok(refuse_all(offsets, ErrorCode::InvalidTxnState));
            }
            // A proposal's offsets are known once it commits: it is waited
            // for under the turns, so the states record it in order.
            let mut appending = self.begin_append(OFFSETS_TOPIC, partition, &log, &frame).await?;
            if let Appending::Proposed(_) = appending {
                appending = Appending::Settled(self.settle(OFFSETS_TOPIC, partition, &log, appending).await?);
            }
            let base_offset = appending.base_offset().expect("a local or committed batch");
            let mut info = batch::peek_header(&frame).map_err(storage)?;
            info.base_offset = base_offset;
            if let Some(states) = self.producer_states.borrow_mut().get_mut(&key) {
                states.record(&info, None);
            }
            let mut pending = self.txn_offsets.borrow_mut();
            let pending = pending.entry((partition, producer_id)).or_default();
            for (i, (key, value)) in records.into_iter().enumerate() {
                pending.push(super::txns::PendingOffset {
                    key,
                    value,
                    log_offset: base_offset.0 + i as u64,
                });
            }
            appending
        };
        self.settle(OFFSETS_TOPIC, partition, &log, appending).await?;
        Ok(GroupAnswer::Committed(
            offsets
                .into_iter()
                .map(|(t, p, _, _)| (t, p, ErrorCode::None))
                .collect(),
        ))
    }

    /// Whether a transaction with commits in this offsets partition is open.
    fn offsets_transactions_open(&self, partition: u32) -> bool {
        self.producer_states
            .borrow()
            .get(&(OFFSETS_TOPIC.to_string(), partition))
            .is_some_and(|s| s.has_open_transactions())
            || self.txn_offsets.borrow().keys().any(|(p, _)| *p == partition)
    }

    /// The turn of an offsets partition's appends: a compaction holds it
    /// while it rewrites the live commits, so no commit lands among them.
    pub(super) fn offsets_turn(&self, partition: u32) -> Rc<Semaphore> {
        self.offsets_turns
            .borrow_mut()
            .entry(partition)
            .or_insert_with(|| Rc::new(Semaphore::new(1)))
            .clone()
    }

    /// Appends records to their offsets partition, waits until they are
    /// durable, then applies them to the coordinator (in log order: a
    /// record applied late loses to a later one already applied). Records
    /// go in batches of at most `OFFSETS_BATCH_BYTES`.
    async fn write_offsets(
        &self,
        group: &str,
        records: Vec<(OffsetKey, Option<OffsetValue>)>,
    ) -> Result<(), BrokerError> {
        self.append_offsets(group, records, AppendMode::Commit).await
    }

    async fn append_offsets(
        &self,
        group: &str,
        mut records: Vec<(OffsetKey, Option<OffsetValue>)>,
        mode: AppendMode,
    ) -> Result<(), BrokerError> {
        let partition = offsets::partition_for_group(group, self.offsets_partitions()?);
        let log = self.log(OFFSETS_TOPIC, partition)?;
        let turn = self.offsets_turn(partition);
        let (appended, _writing) = {
            let _turn = turn
                .acquire_permit(1)
                .await
                .map_err(|_| BrokerError::ShardGone(self.id))?;
            if mode == AppendMode::Expire {
                // Every commit appended before the tombstones must be applied
                // first, and the offsets still expired then: a commit that
                // arrived meanwhile must not be deleted by them.
                self.drain_offsets_writes(partition).await;
                let (now, now_ms) = (Instant::now(), now_ms());
                let coordinator = self.coordinator.borrow();
                records.retain(|(key, _)| coordinator.is_expired(&key.group, &key.topic, key.partition, now, now_ms));
            }
            // Under the partition's turn an expiry is not draining, so a unit
            // is free (in flight are fewer writes than the limit).
            let writing = self
                .offsets_writes_of(partition)
                .try_acquire_static_permit(1)
                .map_err(|_| BrokerError::ShardGone(self.id))?;
            let mut appended = Vec::new();
            for chunk in offsets_chunks(records) {
                let appending = self
                    .begin_append(OFFSETS_TOPIC, partition, &log, &offsets_batch(&chunk))
                    .await?;
                appended.push((chunk, appending));
            }
            (appended, writing)
        };
        let mut durable = Vec::with_capacity(appended.len());
        for (chunk, appending) in appended {
            durable.push((chunk, self.settle(OFFSETS_TOPIC, partition, &log, appending).await?));
        }
        // Let go meanwhile (led elsewhere now): the new leader replays them.
        if !self.coordinates(Internal::Offsets, partition) {
            return Ok(());
        }
        for (chunk, stored) in durable {
            self.apply_offsets(chunk, stored.base_offset.0);
        }
        Ok(())
    }

    /// Writes a group's settled membership (None: it emptied), as Kafka's
    /// coordinator does: the coordinator taking over (on another node, or
    /// after a restart) knows its members and their generation, and tools
    /// reading the offsets topic (Burrow) see who owns what. A write that
    /// fails costs only a rebalance after a failover: logged, not
    /// answered.
    async fn write_group_record(&self, group: &str, record: Option<offsets::GroupRecord>) {
        let Ok(partitions) = self.offsets_partitions() else {
            return;
        };
        let partition = offsets::partition_for_group(group, partitions);
        if record.as_ref().is_some_and(|r| r.size() > OFFSETS_BATCH_BYTES) {
            tracing::warn!(group, "group membership over {OFFSETS_BATCH_BYTES} bytes: not written");
            return;
        }
        let mut builder = RecordBatchBuilder::new();
        let value = record.as_ref().map(offsets::encode_group);
        builder.push(
            now_ms(),
            Some(&offsets::encode_group_key(group)),
            value.as_deref(),
            vec![],
        );
        let frame = builder.build();
        let written = async {
            let log = self.log(OFFSETS_TOPIC, partition)?;
            let turn = self.offsets_turn(partition);
            let appending = {
                let _turn = turn
                    .acquire_permit(1)
                    .await
                    .map_err(|_| BrokerError::ShardGone(self.id))?;
                self.begin_append(OFFSETS_TOPIC, partition, &log, &frame).await?
            };
            self.settle(OFFSETS_TOPIC, partition, &log, appending).await
        };
        if let Err(error) = written.await {
            tracing::warn!(group, %error, "group membership not written");
        }
    }

    /// The semaphore counting `partition`'s offsets writes in flight.
    fn offsets_writes_of(&self, partition: u32) -> Rc<Semaphore> {
        self.offsets_writes
            .borrow_mut()
            .entry(partition)
            .or_insert_with(|| Rc::new(Semaphore::new(OFFSETS_WRITES_MAX)))
            .clone()
    }

    /// Waits until every offsets write appended to `partition` is applied.
    /// Called under the partition's turn, so no new write begins meanwhile.
    async fn drain_offsets_writes(&self, partition: u32) {
        let writes = self.offsets_writes_of(partition);
        if writes.acquire(OFFSETS_WRITES_MAX).await.is_ok() {
            writes.signal(OFFSETS_WRITES_MAX);
        }
    }

    fn apply_offsets(&self, records: Vec<(OffsetKey, Option<OffsetValue>)>, base_offset: u64) {
        let now = Instant::now();
        let mut coordinator = self.coordinator.borrow_mut();
        for (i, (key, value)) in records.into_iter().enumerate() {
            let log_offset = base_offset + i as u64;
            let committed = value.map(|v| Committed {
                offset: v.offset,
                metadata: v.metadata,
                commit_time_ms: v.commit_time_ms,
                log_offset,
            });
            coordinator.apply_commit(&key.group, &key.topic, key.partition, log_offset, committed, now);
        }
    }

    /// Replays this shard's partitions of the offsets topic into its
    /// coordinator: the last record of each key wins. A replicated one is
    /// loaded when its replica here begins to lead it (`coordinators`).
    pub async fn load_offsets(&self) -> Result<usize, BrokerError> {
        let table = self.metadata.snapshot();
        let Some(topic) = table.topics.get(OFFSETS_TOPIC) else {
            return Ok(0);
        };
        let mut loaded = 0;
        for (partition, &owner) in topic.shards.iter().enumerate() {
            let partition = partition as u32;
            if owner != self.id || self.replica_view(OFFSETS_TOPIC, partition).is_some() {
                continue;
            }
            loaded += self.load_offsets_partition(partition).await?;
        }
        Ok(loaded)
    }

    /// Replays one offsets partition into the coordinator; answers how
    /// many commits it applied.
    pub(super) async fn load_offsets_partition(&self, partition: u32) -> Result<usize, BrokerError> {
        let mut loaded = 0;
        let log = self.log(OFFSETS_TOPIC, partition)?;
        let storage = |source| BrokerError::Storage {
            topic: OFFSETS_TOPIC.to_string(),
            partition,
            source,
        };
        let mut next = log.log_start_offset();
        while next < log.log_end_offset() {
            let read = log.read(next, REPLAY_READ_BYTES).await.map_err(storage)?;
            let now = Instant::now();
            for frame in batch::frames(&read.bytes) {
                let info = batch::verify_crc(frame).map_err(storage)?;
                let archived = batch::access(frame).map_err(storage)?;
                if info.is_control() {
                    if let Some(marker) = batch::control::marker_of(frame) {
                        self.end_txn_offsets(partition, info.producer_id, marker);
                    }
                    next = info.next_offset();
                    continue;
                }
                let transactional = info.is_transactional();
                let mut coordinator = self.coordinator.borrow_mut();
                for record in archived.records.iter() {
                    let log_offset = info.base_offset.0 + u64::from(record.offset_delta.to_native());
                    let decoded = record
                        .key
                        .as_ref()
                        .and_then(|key| offsets::decode_record(key, record.value.as_deref()));
                    let (key, value) = match decoded {
                        Some(offsets::OffsetsRecord::Group(group, value)) => {
                            coordinator.restore(&group, value, now);
                            continue;
                        }
                        Some(offsets::OffsetsRecord::Offset(key, value)) => (key, value),
                        None => {
                            tracing::warn!(
                                partition,
                                log_offset,
                                "offsets record with an unreadable key or value; skipped"
                            );
                            continue;
                        }
                    };
                    let committed = value.map(|v| Committed {
                        offset: v.offset,
                        metadata: v.metadata,
                        commit_time_ms: v.commit_time_ms,
                        log_offset,
                    });
                    if transactional {
                        // Counts only if the transaction's marker commits.
                        if let Some(c) = committed {
                            self.txn_offsets
                                .borrow_mut()
                                .entry((partition, info.producer_id))
                                .or_default()
                                .push(super::txns::PendingOffset {
                                    key,
                                    value: OffsetValue {
                                        offset: c.offset,
                                        commit_time_ms: c.commit_time_ms,
                                        metadata: c.metadata,
                                    },
                                    log_offset,
                                });
                        }
                        continue;
                    }
                    coordinator.apply_commit(&key.group, &key.topic, key.partition, log_offset, committed, now);
                    loaded += 1;
                }
                next = info.next_offset();
            }
            if read.bytes.is_empty() {
                break;
            }
        }
        Ok(loaded)
    }

    /// Compacts each offsets partition this shard owns that has grown past
    /// `offsets_compact_bytes`: the live commits of its groups are written
    /// again at the log's end, then everything before them is deleted. The
    /// compaction holds the partition's append turn and first lets every
    /// commit already appended be applied, so the rewrite holds every
    /// acknowledged commit and no commit lands among the rewritten ones.
    async fn compact_offsets(&self) {
        let table = self.metadata.snapshot();
        let Some(topic) = table.topics.get(OFFSETS_TOPIC) else {
            return;
        };
        let partitions = topic.shards.len() as u32;
        for (partition, &owner) in topic.shards.iter().enumerate() {
            let partition = partition as u32;
            // A replicated partition's rewrite would move its log start
            // past what a lagging follower still needs, with no snapshot
            // to catch it up: not compacted yet.
            if owner != self.id || self.replica_view(OFFSETS_TOPIC, partition).is_some() {
                continue;
            }
            let Ok(log) = self.log(OFFSETS_TOPIC, partition) else {
                continue;
            };
            if log.size_bytes() <= self.config.offsets_compact_bytes {
                continue;
            }
            // A rewrite would drop the records of a transaction still open.
            if self.offsets_transactions_open(partition) {
                continue;
            }
            if let Err(error) = self.compact_offsets_partition(&log, partition, partitions).await {
                tracing::error!(partition, %error, "compacting offsets failed");
            }
        }
    }

    async fn compact_offsets_partition(
        &self,
        log: &storage::PartitionLog,
        partition: u32,
        partitions: u32,
    ) -> Result<(), BrokerError> {
        let storage = |source| BrokerError::Storage {
            topic: OFFSETS_TOPIC.to_string(),
            partition,
            source,
        };
        let turn = self.offsets_turn(partition);
        let rewritten = {
            let _turn = turn
                .acquire_permit(1)
                .await
                .map_err(|_| BrokerError::ShardGone(self.id))?;
            self.drain_offsets_writes(partition).await;
            // Checked again under the turn: a transactional commit may have
            // landed while this waited for it.
            if self.offsets_transactions_open(partition) {
                return Ok(());
            }
            let live: Vec<(OffsetKey, Option<OffsetValue>)> = self
                .coordinator
                .borrow()
                .commits(|group| offsets::partition_for_group(group, partitions) == partition)
                .into_iter()
                .map(|(group, topic, p, c)| {
                    (
                        OffsetKey {
                            group,
                            topic,
                            partition: p,
                        },
                        Some(OffsetValue {
                            offset: c.offset,
                            commit_time_ms: c.commit_time_ms,
                            metadata: c.metadata,
                        }),
                    )
                })
                .collect();
            let from = log.log_end_offset();
            let mut rewritten = Vec::new();
            for chunk in offsets_chunks(live) {
                let appended = log.append(&offsets_batch(&chunk)).await.map_err(storage)?;
                rewritten.push((chunk, appended));
            }
            (from, rewritten)
        };
        let (from, rewritten) = rewritten;
        if let Some((_, last)) = rewritten.last() {
            log.wait_durable(last.last_offset).await.map_err(storage)?;
        }
        for (records, appended) in rewritten {
            self.apply_offsets(records, appended.base_offset.0);
        }
        let before = log.size_bytes();
        log.delete_records_before(from).await.map_err(storage)?;
        tracing::info!(
            partition,
            log_start_offset = from.0,
            before,
            after = log.size_bytes(),
            "compacted offsets"
        );
        Ok(())
    }

    /// The coordinator's clock: runs for the shard's life.
    pub async fn run_group_clock(&self) {
        let mut last_compaction = Instant::now();
        loop {
            glommio::timer::sleep(GROUP_TICK).await;
            self.follow_coordinator_leadership().await;
            if last_compaction.elapsed() >= Duration::from_millis(self.config.offsets_compact_interval_ms) {
                last_compaction = Instant::now();
                self.compact_offsets().await;
            }
            let expired = self.coordinator.borrow_mut().tick(Instant::now(), now_ms());
            if expired.is_empty() {
                continue;
            }
            let mut by_group: std::collections::BTreeMap<String, Vec<(OffsetKey, Option<OffsetValue>)>> =
                std::collections::BTreeMap::new();
            for (group, topic, partition) in expired {
                by_group.entry(group.clone()).or_default().push((
                    OffsetKey {
                        group,
                        topic,
                        partition,
                    },
                    None,
                ));
            }
            for (group, tombstones) in by_group {
                tracing::info!(group = %group, offsets = tombstones.len(), "offsets of an empty group expired");
                if let Err(error) = self.append_offsets(&group, tombstones, AppendMode::Expire).await {
                    tracing::error!(group = %group, %error, "writing expired offsets failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_batches_stay_under_the_batch_limit_whatever_the_metadata() {
        let records: Vec<(OffsetKey, Option<OffsetValue>)> = (0..1_000u32)
            .map(|p| {
                (
                    OffsetKey {
                        group: "g".repeat(255),
                        topic: "t".repeat(249),
                        partition: p,
                    },
                    Some(OffsetValue {
                        offset: u64::from(p),
                        commit_time_ms: 0,
                        metadata: "m".repeat(4096),
                    }),
                )
            })
            .collect();
        let chunks = offsets_chunks(records.clone());
        assert!(chunks.len() > 1);
        let limit = storage::LogConfig::default().batch_bytes_max;
        for chunk in &chunks {
            let batch = offsets_batch(chunk);
            assert!(batch.len() < limit, "{} bytes", batch.len());
        }
        let rejoined: Vec<_> = chunks.into_iter().flatten().collect();
        assert_eq!(rejoined, records, "every record, in order");
    }
}
