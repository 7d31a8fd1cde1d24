//! One node's replica of a partition's Raft group: a raft-rs `RawNode`
//! whose log is the partition log itself (`LogStorage` over it, Raft's own
//! entries and hard state in the `raft-state` file), the high watermark it
//! applies, and the produce requests it leads that wait to be committed.
//!
//! The leader stamps a batch before proposing it (base offset, append
//! time, its term as the leader epoch, its Raft index), so every replica
//! stores the same bytes at the same offsets: each appends the entries of a
//! `Ready` as `Stamp::Replica`, the leader included.
//!
//! Sans-IO towards the network, as raft-rs is: the owner ticks it, steps
//! peers' messages, and calls `handle_ready`, which persists a `Ready` in
//! raft-rs's order and hands out the messages (a leader's appends before
//! its own sync, the rest after). One task owns a replica, so nothing steps
//! or proposes while a `Ready` is being persisted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::oneshot;
use net::cluster::node_of;
use raft::prelude::{ConfState, Config, Entry, EntryType, Message, MessageType, RawNode};
use raft::StateRole;
use storage::batch::{self, Stamps};
use storage::log::Clock;
use storage::{Offset, PartitionLog, Stamp};

use super::log_storage::{Located, LogStart, LogStorage, SnapshotData};
use super::state_file::{self, ReplicaState, StateBatch};
use crate::error::BrokerError;

/// A leader's heartbeat every tick (the election timeout and the tick are
/// configured: `RaftTiming`).
const HEARTBEAT_TICKS: usize = 1;
/// Bytes of entries in one append message, and append messages in flight
/// to one follower.
const MESSAGE_BYTES_MAX: u64 = 1 << 20;
const MESSAGES_IN_FLIGHT_MAX: usize = 64;
/// Bytes of proposed entries not yet committed: past it, a leader refuses
/// proposals (a follower that stops answering cannot make it hold more).
const UNCOMMITTED_BYTES_MAX: u64 = 64 << 20;
/// Produce requests waiting for their batch to commit.
pub const PENDING_MAX: usize = 4096;
/// Entries applied between checkpoints of the applied index: a restart
/// reads back the partition log from the last one.
const CHECKPOINT_ENTRIES: u64 = 1024;
/// Or this many bytes of batches appended, whichever comes first.
const CHECKPOINT_BYTES: u64 = 4 << 20;
/// Past this size the state file is written again whole.
const STATE_FILE_BYTES_MAX: usize = 1 << 20;
/// Ticks a leader's group stays idle (every follower holding its whole log
/// and told its commit, nothing waiting) before it is quiesced.
const QUIESCE_AFTER_TICKS: u64 = 3;
/// The context of the heartbeat by which a leader quiesces its group.
pub const QUIESCE: &[u8] = b"quiesce";
/// The context of an entry that moves the partition's log start (Kafka's
/// DeleteRecords); its data is the offset, 8 bytes little endian.
pub const LOG_START: &[u8] = b"log-start";

/// A committed batch: where the leader put it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub append_time_ms: i64,
}

pub type Reply = oneshot::Receiver<Result<Appended, BrokerError>>;

/// When a produce is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// acks=1: once the batch is in the leader's log (lost if a new leader
    /// never had it, as in Kafka).
    Leader,
    /// acks=all: once committed (persisted by a majority) in its term.
    All,
}

/// A `Ready` between `begin_ready` and `end_ready`.
pub struct ReadyWork {
    ready: raft::Ready,
    entries: Vec<Entry>,
}

/// A `Ready` written and handed back to raft-rs, not yet durable: what it
/// may say once it is, and the last offset it appended (None: nothing, so
/// it is durable once those before it are).
struct Syncing {
    number: u64,
    messages: Vec<Message>,
    last_offset: Option<Offset>,
}

/// `Ready`s written and waiting for their fdatasync at once: past it the
/// replica takes no new `Ready` until the oldest is durable.
const SYNCING_MAX: usize = 64;

struct Pending {
    term: u64,
    appended: Appended,
    acks: Acks,
    reply: oneshot::Sender<Result<Appended, BrokerError>>,
}

/// The partition's `raft-state` file, appended to off the shard.
struct StateFile {
    path: PathBuf,
    file: Arc<std::fs::File>,
    bytes: usize,
}

pub struct PartitionReplica {
    topic: String,
    partition: u32,
    id: u64,
    node: RawNode<LogStorage>,
    log: Rc<PartitionLog>,
    clock: Clock,
    state_file: StateFile,
    high_watermark: Offset,
    /// The term this replica last proposed in and the Kafka offset after
    /// the last batch of its Raft log, persisted or not.
    proposed: Option<(u64, Offset)>,
    pending: BTreeMap<u64, Pending>,
    last_checkpoint: u64,
    /// Bytes of batches appended since this replica opened, and each batch
    /// appended since the last checkpoint with the total through it: a
    /// checkpoint is due once enough of them are applied (they are applied
    /// a turn or more after they are written).
    appended_bytes: u64,
    unchecked: std::collections::VecDeque<(u64, u64)>,
    /// `appended_bytes` as of the last checkpoint.
    checkpointed_bytes: u64,
    /// Where the last open read the log back from.
    recovered_from: Offset,
    /// Reads from the partition log served for lagging followers.
    fetches_served: u64,
    /// Ticks so far, and the leader's last index at the last one.
    ticks: u64,
    last_index_at_tick: u64,
    /// The term this replica leads and the tick it began leading at.
    leading_since: Option<(u64, u64)>,
    /// Each follower's last tick caught up with the leader's log.
    caught_up: BTreeMap<u64, u64>,
    /// A follower is in sync while it has caught up with the leader's log
    /// within this many ticks (Kafka's `replica.lag.time.max.ms`).
    lag_ticks: u64,
    /// Followers sent a snapshot in this turn's messages.
    snapshots_sent: Vec<u64>,
    /// An idle group stops ticking (no heartbeats, no election timer)
    /// until a message, a proposal or its leader's silence wakes it.
    quiesced: bool,
    /// Ticks this leader's group has been idle.
    idle_ticks: u64,
    /// Messages of this replica's own making (the quiescing heartbeats),
    /// sent with the next turn's.
    outgoing: Vec<Message>,
    /// `Ready`s written, oldest first, waiting to be durable: their
    /// persisted messages go, in order, once they are (raft-rs's
    /// asynchronous persistence), so the next turn need not wait.
    syncing: std::collections::VecDeque<Syncing>,
    /// Persisted messages released while a `Ready` was written (a cut
    /// waits for every earlier write first), sent before its own.
    released: Vec<Message>,
    /// Configurations applied since the last write, to record with it.
    confs_applied: Vec<(u64, ConfState)>,
    /// DeleteRecords proposed here and not yet applied, by index: the
    /// term proposed in and who waits.
    deletes_pending: BTreeMap<u64, (u64, oneshot::Sender<Result<Offset, BrokerError>>)>,
    /// A log start entry applied, to carry out before the next checkpoint
    /// (`move_log_start`): its index, offset and who waits for it here.
    log_start_due: Option<LogStartDue>,
}

/// A committed move of the log start (DeleteRecords), not yet made.
struct LogStartDue {
    index: u64,
    offset: Offset,
    /// The high watermark at `index`.
    high_watermark: Offset,
    replies: Vec<oneshot::Sender<Result<Offset, BrokerError>>>,
}

impl PartitionReplica {
    /// Raft member `id`'s replica (a node in its incarnation) of
    /// `topic`/`partition`, over `log` (opened, maybe empty) and its
    /// directory's state file. `members` are those the group was formed
    /// with: its configuration until its log or state file says otherwise.
    pub async fn open(
        topic: &str,
        partition: u32,
        id: u64,
        members: &[u64],
        log: Rc<PartitionLog>,
        clock: Clock,
        timing: &crate::config::RaftTiming,
    ) -> Result<PartitionReplica, BrokerError> {
        let fail = |reason: String| BrokerError::Replication {
            topic: topic.to_string(),
            partition,
            reason,
        };
        if !members.iter().any(|member| node_of(*member) == node_of(id)) {
            return Err(fail(format!(
                "node {} is not among the replicas {members:?}",
                node_of(id)
            )));
        }
        let (file, bytes) = open_state_file(&log.dir().join(state_file::FILE_NAME))
            .await
            .map_err(|e| storage_error(topic, partition, e))?;
        let mut state = state_file::replay(&bytes).map_err(&fail)?;
        let mut state_file = StateFile {
            path: log.dir().join(state_file::FILE_NAME),
            file,
            bytes: state.valid_bytes,
        };
        let log_start = state.log_start.unwrap_or(LogStart {
            index: 0,
            term: 0,
            offset: log.log_start_offset(),
        });
        if let Some(start) = state.installing.take() {
            // A snapshot's install a crash interrupted: the partition log
            // may still hold what it replaced.
            log.reset_to(start.offset)
                .await
                .map_err(|e| storage_error(topic, partition, e))?;
            let mut batch = StateBatch::default();
            batch.log_start(start);
            batch.applied(start.index, start.offset);
            state_file
                .append(batch)
                .await
                .map_err(|e| storage_error(topic, partition, e))?;
            state.applied = Some((start.index, start.offset));
        } else if log.log_start_offset() < log_start.offset {
            // Retention's deletion a crash interrupted.
            log.delete_records_before(log_start.offset)
                .await
                .map_err(|e| storage_error(topic, partition, e))?;
        }
        let (applied, high_watermark) = state
            .applied
            .filter(|(index, _)| *index >= log_start.index)
            .unwrap_or((log_start.index, log_start.offset));
        if high_watermark < log.log_start_offset() || high_watermark > log.log_end_offset() {
            return Err(fail(format!(
                "the applied checkpoint's offset {high_watermark} is outside the log {}..{}",
                log.log_start_offset(),
                log.log_end_offset()
            )));
        }
        let mut above = state.internal.split_off(&(applied + 1));
        let below = std::mem::take(&mut state.internal);
        // The last configuration recorded: a change applied (committed) or
        // a snapshot's, maybe past the checkpoint, in which case its entry
        // is skipped when applied again. None: the one it was formed with.
        let conf = state.confs.last_key_value().map_or_else(
            || (log_start.index, ConfState::from((members.to_vec(), vec![]))),
            |(index, conf)| (*index, conf.clone()),
        );
        let mut storage = LogStorage::new(
            state.hard_state.clone(),
            conf,
            log_start,
            applied + 1,
            high_watermark,
            below,
            applied,
        );
        // Read the log back from the checkpoint: every entry above it must
        // be known without waiting. A batch whose term goes back, or that
        // does not follow the entries before it, is the tail of a cut a
        // crash interrupted: the log is cut there again.
        let mut from = high_watermark;
        let mut cut_at: Option<Offset> = None;
        'read: while from < log.log_end_offset() {
            let read = log
                .read(from, MESSAGE_BYTES_MAX as usize)
                .await
                .map_err(|e| storage_error(topic, partition, e))?;
            for frame in batch::frames(&read.bytes) {
                let info = batch::peek_header(frame).map_err(|e| storage_error(topic, partition, e))?;
                if info.base_offset < from {
                    continue;
                }
                while let Some(entry) = above.first_entry().filter(|e| *e.key() == storage.last_index() + 1) {
                    storage.append(&entry.remove(), None);
                }
                let last_term = raft::Storage::term(&storage, storage.last_index()).expect("the last entry's term");
                if info.raft_index != storage.last_index() + 1 || (info.leader_epoch as u64) < last_term {
                    if info.raft_index == 0 {
                        return Err(fail(format!(
                            "the batch at offset {} has no Raft index: the log was not written replicated",
                            info.base_offset
                        )));
                    }
                    tracing::warn!(
                        topic,
                        partition,
                        offset = info.base_offset.0,
                        raft_index = info.raft_index,
                        last_index = storage.last_index(),
                        "replica: the log's tail does not follow its Raft log; cut"
                    );
                    cut_at = Some(info.base_offset);
                    break 'read;
                }
                let entry = Entry {
                    index: info.raft_index,
                    term: info.leader_epoch as u64,
                    ..Default::default()
                };
                storage.append(&entry, Some(info.next_offset()));
                from = info.next_offset();
            }
            from = from.max(read.next_offset);
        }
        if let Some(offset) = cut_at {
            log.truncate_to(offset)
                .await
                .map_err(|e| storage_error(topic, partition, e))?;
        }
        while let Some(entry) = above.first_entry().filter(|e| *e.key() == storage.last_index() + 1) {
            storage.append(&entry.remove(), None);
        }
        if let Some((&index, _)) = above.first_key_value() {
            // Raft's own entries past a gap were written ahead of batches a
            // crash lost: they go, in the file too.
            let mut batch = StateBatch::default();
            batch.cut(index);
            state_file
                .append(batch)
                .await
                .map_err(|e| storage_error(topic, partition, e))?;
        }
        let mut hard_state = state.hard_state.clone();
        hard_state.commit = hard_state.commit.max(applied).min(storage.last_index());
        storage.set_hard_state(hard_state);
        let config = Config {
            id,
            election_tick: timing.election_ticks,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied,
            max_size_per_msg: MESSAGE_BYTES_MAX,
            max_inflight_msgs: MESSAGES_IN_FLIGHT_MAX,
            max_uncommitted_size: UNCOMMITTED_BYTES_MAX,
            check_quorum: true,
            pre_vote: true,
            ..Config::default()
        };
        config.validate().map_err(|e| fail(e.to_string()))?;
        let logger = slog::Logger::root(
            crate::controller::replica::TracingDrain,
            slog::o!("raft" => format!("{topic}/{partition}"), "node" => id),
        );
        let node = RawNode::new(&config, storage, &logger).map_err(|e| fail(e.to_string()))?;
        Ok(PartitionReplica {
            topic: topic.to_string(),
            partition,
            id,
            node,
            log,
            clock,
            state_file,
            high_watermark,
            proposed: None,
            pending: BTreeMap::new(),
            last_checkpoint: applied,
            appended_bytes: 0,
            unchecked: std::collections::VecDeque::new(),
            checkpointed_bytes: 0,
            recovered_from: high_watermark,
            fetches_served: 0,
            ticks: 0,
            last_index_at_tick: 0,
            leading_since: None,
            caught_up: BTreeMap::new(),
            lag_ticks: timing.replica_lag_ticks,
            snapshots_sent: Vec::new(),
            quiesced: false,
            idle_ticks: 0,
            outgoing: Vec::new(),
            syncing: std::collections::VecDeque::new(),
            released: Vec::new(),
            confs_applied: Vec::new(),
            deletes_pending: BTreeMap::new(),
            log_start_due: None,
        })
    }

    fn fail(&self, reason: String) -> BrokerError {
        BrokerError::Replication {
            topic: self.topic.clone(),
            partition: self.partition,
            reason,
        }
    }

    fn not_leader(&self) -> BrokerError {
        BrokerError::NotLeaderOrFollower {
            topic: self.topic.clone(),
            partition: self.partition,
            leader: self.leader(),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    #[cfg(test)]
    pub fn log(&self) -> &Rc<PartitionLog> {
        &self.log
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// The node of the leader this replica knows of, if any.
    pub fn leader(&self) -> Option<u64> {
        Some(self.node.raft.leader_id).filter(|id| *id != 0).map(node_of)
    }

    /// The term: the leader epoch of the batches its leader appends.
    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// Consumers read below it; it never moves back.
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// The offset the last open read the partition log back from: its
    /// applied checkpoint.
    pub fn recovered_from(&self) -> Offset {
        self.recovered_from
    }

    /// The commit index and its term.
    #[cfg(test)]
    pub fn committed(&self) -> (u64, u64) {
        self.node.raft.raft_log.commit_info()
    }

    /// The group's voters as this replica has them (a joint
    /// configuration's incoming and outgoing both).
    #[cfg(test)]
    pub fn voters(&self) -> (Vec<u64>, Vec<u64>) {
        let conf = self.node.raft.prs().conf().to_conf_state();
        let sorted = |mut ids: Vec<u64>| {
            ids.sort_unstable();
            ids
        };
        (sorted(conf.voters), sorted(conf.voters_outgoing))
    }

    #[cfg(test)]
    pub fn fetches_served(&self) -> u64 {
        self.fetches_served
    }

    /// Whether a turn has work: a `Ready`, or entries to read back for a
    /// lagging follower.
    pub fn has_ready(&self) -> bool {
        self.syncing.len() < SYNCING_MAX && (self.node.has_ready() || self.node.store().has_fetch())
    }

    /// Whether raft-rs waits for entries to be read back from the
    /// partition log (for a lagging follower).
    pub fn has_fetch(&self) -> bool {
        self.node.store().has_fetch()
    }

    /// The partition log, for the wait on a written `Ready`'s durability.
    pub fn partition_log(&self) -> &Rc<PartitionLog> {
        &self.log
    }

    /// A tick of Raft's clock; `alive` says which nodes were heard from
    /// within an election timeout. A quiesced group does not tick: a
    /// follower wakes once its leader's node goes silent (it may have to
    /// elect another), and a quiesced leader counts the followers whose
    /// nodes it hears as caught up (they held its whole log when it
    /// quiesced, and nothing was appended since).
    pub fn tick(&mut self, alive: &impl Fn(u64) -> bool) {
        self.ticks += 1;
        if self.quiesced && !self.is_leader() && !self.leader().is_some_and(alive) {
            self.wake();
        }
        if self.quiesced {
            if self.is_leader() {
                let (id, ticks) = (self.id, self.ticks);
                for peer in self.node.raft.prs().conf().voters().ids().iter() {
                    if peer != id && alive(node_of(peer)) {
                        self.caught_up.insert(peer, ticks);
                    }
                }
            }
            return;
        }
        self.node.tick();
        if !self.is_leader() {
            return;
        }
        self.note_leading();
        // Caught up: holding what the leader held a tick ago (an append in
        // flight is not lag).
        let (id, ticks, reached) = (self.id, self.ticks, self.last_index_at_tick);
        for (peer, progress) in self.node.raft.prs().iter() {
            if *peer != id && progress.matched >= reached {
                self.caught_up.insert(*peer, ticks);
            }
        }
        self.last_index_at_tick = self.node.raft.raft_log.last_index();
        if self.is_idle() {
            self.idle_ticks += 1;
        } else {
            self.idle_ticks = 0;
        }
        if self.idle_ticks >= QUIESCE_AFTER_TICKS {
            self.quiesce();
        }
    }

    #[cfg(test)]
    pub fn is_quiesced(&self) -> bool {
        self.quiesced
    }

    /// Whether this leader's group has nothing to do: every entry
    /// committed in its term and applied, nothing waiting, and every
    /// follower holding the whole log and told its commit.
    fn is_idle(&self) -> bool {
        let raft = &self.node.raft;
        let log = &raft.raft_log;
        let committed = log.committed;
        self.pending.is_empty()
            && self.syncing.is_empty()
            && raft.lead_transferee.is_none()
            && !self.node.store().has_fetch()
            && committed == log.last_index()
            && log.applied == committed
            && log.term(committed).is_ok_and(|term| term == raft.term)
            && raft.prs().iter().all(|(peer, progress)| {
                *peer == self.id
                    || (progress.matched == committed
                        && progress.committed_index == committed
                        && progress.state == raft::ProgressState::Replicate)
            })
    }

    /// Stops ticking this leader's group, and tells each follower to stop
    /// too: a heartbeat (it resets their election timers, as any does)
    /// marked `QUIESCE`, naming the last index, which a follower must hold
    /// to quiesce. One lost leaves that follower ticking: it campaigns, and
    /// its vote request wakes the group.
    fn quiesce(&mut self) {
        let raft = &self.node.raft;
        let (term, committed, last_index) = (raft.term, raft.raft_log.committed, raft.raft_log.last_index());
        for peer in raft.prs().conf().voters().ids().iter().filter(|peer| *peer != self.id) {
            let mut heartbeat = Message::default();
            heartbeat.set_msg_type(MessageType::MsgHeartbeat);
            heartbeat.from = self.id;
            heartbeat.to = peer;
            heartbeat.term = term;
            heartbeat.commit = committed;
            heartbeat.index = last_index;
            heartbeat.context = bytes::Bytes::from_static(QUIESCE);
            self.outgoing.push(heartbeat);
        }
        self.quiesced = true;
        self.idle_ticks = 0;
    }

    /// Ticks the group again. A leader's check-quorum clock starts over:
    /// its followers said nothing while quiet, and have a full election
    /// timeout to answer now.
    fn wake(&mut self) {
        if !self.quiesced {
            return;
        }
        self.quiesced = false;
        self.idle_ticks = 0;
        if self.is_leader() {
            self.node.raft.election_elapsed = 0;
        }
    }

    /// The messages of this replica's own making since the last turn.
    pub fn take_outgoing(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.outgoing)
    }

    /// A new term led: every follower counts as in sync from its start
    /// (a majority just voted for this log), until it lags.
    fn note_leading(&mut self) {
        let term = self.term();
        if self.leading_since.is_some_and(|(t, _)| t == term) {
            return;
        }
        self.leading_since = Some((term, self.ticks));
        self.caught_up.clear();
        self.last_index_at_tick = self.node.raft.raft_log.last_index();
    }

    /// On the leader, the most Raft entries a follower lacks (0 elsewhere).
    pub fn follower_lag_max(&self) -> u64 {
        if !self.is_leader() {
            return 0;
        }
        let raft = &self.node.raft;
        let last = raft.raft_log.last_index();
        raft.prs()
            .iter()
            .filter(|(peer, _)| **peer != self.id)
            .map(|(_, progress)| last.saturating_sub(progress.matched))
            .max()
            .unwrap_or(0)
    }

    /// The nodes of the replicas in sync (this leader among them): Kafka's
    /// ISR. Empty on a follower.
    pub fn in_sync_replicas(&mut self) -> Vec<u64> {
        if !self.is_leader() {
            return Vec::new();
        }
        self.note_leading();
        let since = self.leading_since.map_or(0, |(_, tick)| tick);
        let (id, ticks, lag_ticks) = (self.id, self.ticks, self.lag_ticks);
        self.node
            .raft
            .prs()
            .iter()
            .map(|(peer, _)| *peer)
            .filter(|peer| {
                *peer == id || ticks - self.caught_up.get(peer).copied().unwrap_or(since).max(since) <= lag_ticks
            })
            .map(node_of)
            // While a node's old and new members are both in a joint
            // configuration, it counts once.
            .fold(Vec::new(), |mut nodes, node| {
                if !nodes.contains(&node) {
                    nodes.push(node);
                }
                nodes
            })
    }

    /// A message from a peer. One that raft-rs refuses, or whose entries do
    /// not pass as record batches, changes nothing and is only logged:
    /// peers' bytes are not trusted.
    pub fn step(&mut self, mut message: Message) {
        let (from, kind) = (message.from, message.get_msg_type());
        if message.to != self.id {
            // For this node's earlier incarnation, whose votes and log were
            // not this one's.
            tracing::debug!(topic = %self.topic, partition = self.partition, from, to = message.to, "replica: a message for another member, dropped");
            return;
        }
        if kind == MessageType::MsgSnapshot {
            if let Err(reason) = self.check_snapshot(&message) {
                tracing::warn!(topic = %self.topic, partition = self.partition, from, %reason, "replica: a snapshot, refused");
                return;
            }
        }
        let last_index = self.node.raft.raft_log.last_index();
        if kind == MessageType::MsgHeartbeat && message.commit > last_index {
            // A leader sends a commit index only up to what it knows this
            // replica holds: a higher one means this node lost entries it
            // once acknowledged; its next append is refused and the leader
            // sends the log again.
            message.commit = last_index;
        }
        if kind == MessageType::MsgAppend {
            for entry in &message.entries {
                if is_internal(entry) {
                    continue;
                }
                // A lagging follower is sent batches the leader's cleaner
                // rewrote; its own limits are the leader's to enforce.
                let limits = storage::batch::BatchLimits {
                    compacted_allowed: true,
                    ..self.log.config().batch_limits()
                };
                let checked = batch::check_frame(&entry.data, &limits).and_then(|info| {
                    if info.raft_index == entry.index && info.leader_epoch as u64 == entry.term {
                        Ok(())
                    } else {
                        Err(storage::StorageError::BatchMalformed {
                            reason: format!(
                                "entry {} of term {} holds a batch stamped index {} epoch {}",
                                entry.index, entry.term, info.raft_index, info.leader_epoch
                            ),
                        })
                    }
                });
                if let Err(e) = checked {
                    tracing::warn!(
                        topic = %self.topic,
                        partition = self.partition,
                        from,
                        index = entry.index,
                        error = %e,
                        "replica: an append whose batch does not pass, refused"
                    );
                    return;
                }
            }
        }
        // Every message wakes a quiesced group but the quiescing heartbeat,
        // and, on the leader, followers' answers that ask for nothing more
        // (the last heartbeats' answers come after it quiesced). A
        // follower quiesces on the heartbeat only if it holds its leader's
        // whole log and commit.
        let quiescing = kind == MessageType::MsgHeartbeat && message.context.as_ref() == QUIESCE;
        let answer = matches!(kind, MessageType::MsgHeartbeatResponse | MessageType::MsgAppendResponse);
        let (term, commit, last_index) = (message.term, message.commit, message.index);
        let asks_nothing = quiescing || (answer && self.is_leader());
        if !asks_nothing {
            self.wake();
        }
        if let Err(e) = self.node.step(message) {
            tracing::debug!(topic = %self.topic, partition = self.partition, from, ?kind, error = %e, "replica: message refused");
        }
        if quiescing {
            let raft = &self.node.raft;
            self.quiesced = raft.leader_id == from
                && raft.term == term
                && raft.raft_log.last_index() == last_index
                && raft.raft_log.committed == commit;
        }
        if self.is_leader() && self.node.has_ready() {
            // The answer showed a follower lagging: the leader sends again.
            self.wake();
        }
    }

    /// Whether a leader's snapshot may replace this replica's log: it says
    /// where the log starts (`LogStart`, the entry it names the one the
    /// metadata names), over the replicas this one has, and, if it is past
    /// what this replica committed, no lower than its high watermark.
    fn check_snapshot(&self, message: &Message) -> Result<(), String> {
        let snapshot = message.get_snapshot();
        let metadata = snapshot.get_metadata();
        let start = SnapshotData::decode(&snapshot.data)?.start;
        if (start.index, start.term) != (metadata.index, metadata.term) || start.index == 0 {
            return Err(format!(
                "it starts the log after entry {} of term {}, its metadata after {} of term {}",
                start.index, start.term, metadata.index, metadata.term
            ));
        }
        // The nodes, not the members: a snapshot from before a node came
        // back in a new incarnation names its old member.
        let nodes = |conf: &ConfState| {
            let mut nodes: Vec<u64> = conf
                .voters
                .iter()
                .chain(&conf.voters_outgoing)
                .map(|m| node_of(*m))
                .collect();
            nodes.sort_unstable();
            nodes.dedup();
            (nodes, conf.learners.is_empty())
        };
        let ours = &self.node.raft.prs().conf().to_conf_state();
        if nodes(metadata.get_conf_state()) != nodes(ours) {
            return Err(format!(
                "its replicas {:?} are not this group's {:?}",
                metadata.get_conf_state().voters,
                ours.voters
            ));
        }
        if start.index > self.node.raft.raft_log.committed && start.offset < self.high_watermark {
            return Err(format!(
                "it starts the log at offset {}, below the high watermark {}",
                start.offset, self.high_watermark
            ));
        }
        Ok(())
    }

    /// Proposes a record batch (a frame that passes `check_frame`). Its
    /// reply (where the leader put it) comes, for acks=all, once it is
    /// committed in the term it was proposed in, and for acks=1 once it is
    /// in this leader's log; or NOT_LEADER_OR_FOLLOWER once a leader's
    /// entry replaced it. A replica that loses the leadership keeps the
    /// request: the batch may still be committed by the next leader.
    /// acks=all is refused with NOT_ENOUGH_REPLICAS while fewer than
    /// `min_insync` replicas are in sync.
    pub fn propose(&mut self, mut frame: Vec<u8>, acks: Acks, min_insync: usize) -> Result<Reply, BrokerError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        self.wake();
        if acks == Acks::All {
            let in_sync = self.in_sync_replicas().len();
            if in_sync < min_insync {
                return Err(BrokerError::NotEnoughReplicas {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    in_sync,
                    min: min_insync,
                });
            }
        }
        if self.pending.len() >= PENDING_MAX {
            return Err(self.fail(format!("{PENDING_MAX} batches already wait to be committed")));
        }
        let term = self.term();
        let leader_epoch = i32::try_from(term).map_err(|_| self.fail(format!("term {term} is past a leader epoch")))?;
        let info = batch::check_frame(&frame, &self.log.config().batch_limits())
            .map_err(|e| storage_error(&self.topic, self.partition, e))?;
        let base_offset = match self.proposed {
            Some((proposed_term, end)) if proposed_term == term => end,
            _ => self.raft_log_end_offset(),
        };
        let index = self.node.raft.raft_log.last_index() + 1;
        let append_time_ms = (self.clock)();
        let stamps = Stamps {
            base_offset,
            append_time_ms,
            leader_epoch,
            raft_index: index,
        };
        batch::stamp(&mut frame, &info, stamps);
        if self.node.propose(Vec::new(), frame).is_err() || self.node.raft.raft_log.last_index() != index {
            // Dropped: a leadership transfer, or the uncommitted bytes full.
            return Err(self.not_leader());
        }
        let appended = Appended {
            base_offset,
            last_offset: base_offset.plus(u64::from(info.last_offset_delta)),
            append_time_ms,
        };
        self.proposed = Some((term, appended.last_offset.next()));
        let (reply, rx) = oneshot::channel();
        self.pending.insert(
            index,
            Pending {
                term,
                appended,
                acks,
                reply,
            },
        );
        Ok(rx)
    }

    /// Proposes moving the partition's log start to `offset` (Kafka's
    /// DeleteRecords), at most the high watermark: a Raft entry of its own
    /// (`LOG_START`), so that every replica moves its log start at the same
    /// point of the log, and a replica that was away moves it when it
    /// applies the entry. Answered once this replica has moved its own.
    pub fn propose_log_start(
        &mut self,
        offset: Offset,
    ) -> Result<oneshot::Receiver<Result<Offset, BrokerError>>, BrokerError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        if offset > self.high_watermark {
            return Err(storage_error(
                &self.topic,
                self.partition,
                storage::StorageError::OffsetOutOfRange {
                    offset,
                    log_start: self.log.log_start_offset(),
                    log_end: self.high_watermark,
                },
            ));
        }
        if self.deletes_pending.len() >= PENDING_MAX {
            return Err(self.fail(format!("{PENDING_MAX} log start moves already wait to be committed")));
        }
        self.wake();
        let index = self.node.raft.raft_log.last_index() + 1;
        let proposed = self.node.propose(LOG_START.to_vec(), offset.0.to_le_bytes().to_vec());
        if proposed.is_err() || self.node.raft.raft_log.last_index() != index {
            return Err(self.not_leader());
        }
        let (reply, rx) = oneshot::channel();
        self.deletes_pending.insert(index, (self.term(), reply));
        Ok(rx)
    }

    /// The Kafka offset after the last batch of the Raft log, the entries
    /// not yet persisted included.
    fn raft_log_end_offset(&self) -> Offset {
        let unstable = &self.node.raft.raft_log.unstable.entries;
        unstable
            .iter()
            .rev()
            .find(|entry| !is_internal(entry))
            .map(|entry| {
                batch::peek_header(&entry.data)
                    .expect("an unstable batch passed when it was proposed or stepped")
                    .next_offset()
            })
            .unwrap_or_else(|| self.node.store().end_offset())
    }

    /// Persists a `Ready` if there is one, handing the messages to `send` as
    /// soon as each may go; answers whether there was one. (`ReplicaSet`
    /// runs the steps itself, for many replicas at once, and does not wait
    /// for the fdatasync in its turn.)
    #[cfg(test)]
    pub async fn handle_ready(&mut self, send: &mut impl FnMut(Vec<Message>)) -> Result<bool, BrokerError> {
        self.serve_fetches().await?;
        let Some((messages, mut work)) = self.begin_ready() else {
            send(self.take_outgoing());
            return Ok(false);
        };
        send(messages);
        send(self.take_outgoing());
        let last_offset = self.write(&mut work).await?;
        if let Some(last) = last_offset {
            self.log
                .wait_durable(last)
                .await
                .map_err(|e| storage_error(&self.topic, self.partition, e))?;
        }
        send(self.end_ready(work, last_offset));
        self.checkpoint().await?;
        Ok(true)
    }

    /// The first step of a `Ready`: the messages that may go at once (a
    /// leader's appends go out while it persists its own) and the
    /// committed entries applied. Nothing may step or propose until
    /// `end_ready` has taken the work back.
    pub fn begin_ready(&mut self) -> Option<(Vec<Message>, ReadyWork)> {
        if !self.node.has_ready() {
            return None;
        }
        let mut ready = self.node.ready();
        let messages = ready.take_messages();
        self.note_snapshots_sent(&messages);
        let committed = ready.take_committed_entries();
        self.apply(committed);
        let entries = ready.take_entries();
        Some((messages, ReadyWork { ready, entries }))
    }

    /// The second: the entries written, Raft's own entries and the term and
    /// vote made durable; answers the last offset appended, durable once
    /// the log's fdatasync passes it (`release_durable`). A cut or a
    /// snapshot first waits for every earlier write to be durable and
    /// releases their messages: none may go for entries the cut replaces.
    pub async fn write(&mut self, work: &mut ReadyWork) -> Result<Option<Offset>, BrokerError> {
        let ReadyWork { ready, entries } = work;
        let cuts = entries
            .first()
            .is_some_and(|e| e.index <= self.node.store().last_index());
        if (cuts || !ready.snapshot().is_empty()) && !self.syncing.is_empty() {
            if let Some(last) = self.syncing.iter().rev().find_map(|s| s.last_offset) {
                self.log
                    .wait_durable(last)
                    .await
                    .map_err(|e| storage_error(&self.topic, self.partition, e))?;
            }
            let released = self.release_durable();
            self.released.extend(released);
            assert!(self.syncing.is_empty(), "every earlier write is durable");
        }
        let mut batch = StateBatch::default();
        for (index, conf_state) in std::mem::take(&mut self.confs_applied) {
            batch.conf(index, &conf_state);
        }
        if !ready.snapshot().is_empty() {
            let start = self.install(ready.snapshot()).await?;
            batch.log_start(start);
            batch.applied(start.index, start.offset);
        }
        if let Some(first) = entries.first().map(|e| e.index) {
            if first <= self.node.store().last_index() {
                let Located::At(offset) = self.node.store().locate(first) else {
                    unreachable!("an uncommitted entry is in the window");
                };
                self.log
                    .truncate_to(offset)
                    .await
                    .map_err(|e| storage_error(&self.topic, self.partition, e))?;
                batch.cut(first);
                while self.unchecked.back().is_some_and(|(index, _)| *index >= first) {
                    self.unchecked.pop_back();
                }
            }
            self.fail_replaced(first, entries);
            for entry in entries.iter().filter(|e| is_internal(e)) {
                batch.entry(entry);
            }
        }
        if let Some(hard_state) = ready.hs() {
            let stored = self.node.store().hard_state();
            if hard_state.term != stored.term || hard_state.vote != stored.vote {
                batch.hard_state(hard_state);
            }
        }
        // Raft's own entries and the term and vote first: a batch of the
        // log is never on disk ahead of an entry before it.
        self.state_file
            .append(batch)
            .await
            .map_err(|e| storage_error(&self.topic, self.partition, e))?;
        let mut last_appended = None;
        for entry in entries.iter() {
            if is_internal(entry) {
                self.node.mut_store().append(entry, None);
                continue;
            }
            let info = self
                .log
                .append_stamped(&entry.data, Stamp::Replica)
                .await
                .map_err(|e| storage_error(&self.topic, self.partition, e))?;
            self.node.mut_store().append(entry, Some(info.last_offset.next()));
            self.appended_bytes += entry.data.len() as u64;
            self.unchecked.push_back((entry.index, self.appended_bytes));
            last_appended = Some(info.last_offset);
            if self
                .pending
                .get(&entry.index)
                .is_some_and(|p| p.acks == Acks::Leader && p.term == entry.term)
            {
                let pending = self.pending.remove(&entry.index).expect("just seen");
                let _ = pending.reply.send(Ok(pending.appended));
            }
        }
        // After the entries: its commit may count the ones just appended,
        // and the entries they replaced were not committed.
        if let Some(hard_state) = ready.hs() {
            self.node.mut_store().set_hard_state(hard_state.clone());
        }
        Ok(last_appended)
    }

    /// The third, once `write` returned: the `Ready` handed back to raft-rs
    /// (its entries readable from the storage, not yet durable), and the
    /// messages that may go now: those an earlier cut released, and any
    /// whose `Ready`s are durable already.
    pub fn end_ready(&mut self, work: ReadyWork, last_offset: Option<Offset>) -> Vec<Message> {
        let ReadyWork { mut ready, .. } = work;
        let number = ready.number();
        let messages = ready.take_persisted_messages();
        self.node.advance_append_async(ready);
        self.syncing.push_back(Syncing {
            number,
            messages,
            last_offset,
        });
        let mut out = std::mem::take(&mut self.released);
        out.extend(self.release_durable());
        // After the release: a snapshot installed (durable as it was
        // written) counts as applied only once raft-rs knows it persisted.
        self.node.advance_apply();
        // A snapshot is where the log starts, a few bytes in the frame with
        // the rest: once it is handed to the link it counts as sent, and
        // the follower is probed from after it. One that was lost shows as
        // the probe's refusal, and raft-rs sends another.
        for to in std::mem::take(&mut self.snapshots_sent) {
            self.node.report_snapshot(to, raft::SnapshotStatus::Finish);
        }
        out
    }

    /// Tells raft-rs which written `Ready`s the log's fdatasync has made
    /// durable (in order: one waits for those before it), and answers
    /// their persisted messages (a follower's acknowledgements, votes),
    /// which may go now. A leader counts its own entries for the commit
    /// from here.
    pub fn release_durable(&mut self) -> Vec<Message> {
        let durable = self.log.durable_offset();
        let mut messages = Vec::new();
        let mut last = None;
        while self
            .syncing
            .front()
            .is_some_and(|s| s.last_offset.is_none_or(|offset| offset < durable))
        {
            let syncing = self.syncing.pop_front().expect("just seen");
            last = Some(syncing.number);
            messages.extend(syncing.messages);
        }
        if let Some(number) = last {
            self.node.on_persist_ready(number);
        }
        messages
    }

    fn note_snapshots_sent(&mut self, messages: &[Message]) {
        for message in messages {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                tracing::info!(
                    topic = %self.topic,
                    partition = self.partition,
                    to = message.to,
                    index = message.get_snapshot().get_metadata().index,
                    "replica: a follower behind the log start is sent a snapshot"
                );
                self.snapshots_sent.push(message.to);
            }
        }
    }

    /// Replaces this replica's log with a leader's snapshot (checked when
    /// stepped): the install is recorded first, then the partition log is
    /// emptied and started at the snapshot's offset. Produce requests still
    /// waiting here have an outcome this replica cannot tell.
    async fn install(&mut self, snapshot: &raft::prelude::Snapshot) -> Result<LogStart, BrokerError> {
        let SnapshotData { start, conf_index } =
            SnapshotData::decode(&snapshot.data).map_err(|e| self.fail(format!("a snapshot stepped: {e}")))?;
        assert!(
            start.offset >= self.high_watermark,
            "a snapshot at offset {} below the high watermark {}",
            start.offset,
            self.high_watermark
        );
        let conf_state = snapshot.get_metadata().get_conf_state().clone();
        let mut batch = StateBatch::default();
        batch.install(start);
        batch.conf(conf_index, &conf_state);
        self.state_file
            .append(batch)
            .await
            .map_err(|e| storage_error(&self.topic, self.partition, e))?;
        self.log
            .reset_to(start.offset)
            .await
            .map_err(|e| storage_error(&self.topic, self.partition, e))?;
        self.node.mut_store().install(start, (conf_index, conf_state));
        tracing::info!(
            topic = %self.topic,
            partition = self.partition,
            index = start.index,
            offset = start.offset.0,
            "replica: the log starts afresh at the leader's snapshot"
        );
        for (_, pending) in std::mem::take(&mut self.pending) {
            let _ = pending.reply.send(Err(BrokerError::TimedOut(format!(
                "{}/{}: the outcome of the batch at offset {} is unknown here: a leader's snapshot replaced this replica's log",
                self.topic, self.partition, pending.appended.base_offset
            ))));
        }
        self.high_watermark = start.offset;
        self.proposed = None;
        self.unchecked.clear();
        self.checkpointed(start.index);
        Ok(start)
    }

    /// Deletes the segments retention no longer keeps, as far as this
    /// replica's Raft log may forget them: only what it applied, below the
    /// high watermark. The log start is recorded (with an applied
    /// checkpoint at or past it) before a segment goes. Answers where the
    /// log starts now, if it moved.
    pub async fn apply_retention(&mut self) -> Result<Option<LogStart>, BrokerError> {
        let storage_error = |e| storage_error(&self.topic, self.partition, e);
        let point = self.log.retention_point().min(self.high_watermark);
        let Some(offset) = self.log.segment_base_offsets().into_iter().rfind(|base| *base <= point) else {
            return Ok(None);
        };
        let store = self.node.store();
        let (applied, before) = (store.applied(), store.log_start());
        if offset <= self.log.log_start_offset() || offset <= before.offset {
            return Ok(None);
        }
        // The entry before the batch at `offset` (Raft's own entries
        // between them take no offset, so any up to the applied one will
        // do): the log then holds every entry after it from `offset` on.
        let mut index = applied;
        if offset < self.log.log_end_offset() {
            let read = self.log.read(offset, 1).await.map_err(storage_error)?;
            let frame = batch::frames(&read.bytes)
                .next()
                .ok_or_else(|| self.fail(format!("no batch at offset {offset}, a segment's base")))?;
            let info = batch::peek_header(frame).map_err(storage_error)?;
            index = index.min(info.raft_index.saturating_sub(1));
        }
        if index <= before.index {
            return Ok(None);
        }
        let term = raft::Storage::term(store, index).map_err(|e| self.fail(format!("entry {index}'s term: {e}")))?;
        let start = LogStart { index, term, offset };
        let mut batch = StateBatch::default();
        batch.applied(applied, self.high_watermark);
        batch.log_start(start);
        self.state_file.append(batch).await.map_err(storage_error)?;
        self.log.delete_records_before(offset).await.map_err(storage_error)?;
        self.checkpointed(applied);
        self.node.mut_store().compact(start);
        Ok(Some(start))
    }

    /// Carries out a log start entry applied: the partition log starts at
    /// its offset (made durable by the log), and the Raft log
    /// forgets every entry before the batch holding it. The state file
    /// records that start first, with an applied checkpoint just before
    /// the entry: a crash before the log's own move applies it again.
    /// Answers where the log starts.
    async fn move_log_start(&mut self, due: &LogStartDue) -> Result<Offset, BrokerError> {
        let storage_error = |e| storage_error(&self.topic, self.partition, e);
        let (index, offset) = (due.index, due.offset.min(due.high_watermark));
        if offset <= self.log.log_start_offset() {
            return Ok(self.log.log_start_offset());
        }
        let store = self.node.store();
        let before = store.log_start();
        // The entry before the batch holding `offset`, and where that batch
        // starts: the Raft log keeps it whole.
        let (forget, batch_start) = if offset < self.log.log_end_offset() {
            let read = self.log.read(offset, 1).await.map_err(storage_error)?;
            let frame = batch::frames(&read.bytes)
                .next()
                .ok_or_else(|| self.fail(format!("no batch holds offset {offset}, below the high watermark")))?;
            let info = batch::peek_header(frame).map_err(storage_error)?;
            (info.raft_index.saturating_sub(1), info.base_offset)
        } else {
            (index - 1, offset)
        };
        let store = self.node.store();
        if forget > before.index && batch_start > before.offset {
            let term =
                raft::Storage::term(store, forget).map_err(|e| self.fail(format!("entry {forget}'s term: {e}")))?;
            let start = LogStart {
                index: forget,
                term,
                offset: batch_start,
            };
            let mut batch = StateBatch::default();
            batch.applied(index - 1, due.high_watermark);
            batch.log_start(start);
            self.state_file.append(batch).await.map_err(storage_error)?;
            self.log.delete_records_before(offset).await.map_err(storage_error)?;
            self.checkpointed(index - 1);
            self.node.mut_store().compact(start);
        } else {
            self.log.delete_records_before(offset).await.map_err(storage_error)?;
        }
        tracing::info!(topic = %self.topic, partition = self.partition, index, log_start_offset = %offset, "replica: log start moved");
        Ok(offset)
    }

    /// Moves the high watermark over committed entries and answers the
    /// produce requests they commit.
    fn apply(&mut self, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        for entry in &entries {
            if entry.get_entry_type() != EntryType::EntryNormal {
                self.apply_conf_change(entry);
            }
            let waiting = self.deletes_pending.remove(&entry.index);
            if let Some(offset) = log_start_entry(entry) {
                let high_watermark = self
                    .node
                    .store()
                    .end_offset_of(entry.index)
                    .expect("the window holds every entry above the applied index");
                let due = self.log_start_due.get_or_insert_with(|| LogStartDue {
                    index: entry.index,
                    offset,
                    high_watermark,
                    replies: Vec::new(),
                });
                (due.index, due.offset, due.high_watermark) = (entry.index, due.offset.max(offset), high_watermark);
                if let Some((term, reply)) = waiting.filter(|(term, _)| *term == entry.term) {
                    debug_assert_eq!(term, entry.term);
                    due.replies.push(reply);
                }
            } else if let Some((_, reply)) = waiting {
                // Another leader's entry took its index.
                let _ = reply.send(Err(self.not_leader()));
            }
            if let Some(pending) = self.pending.remove(&entry.index) {
                let outcome = if pending.term == entry.term {
                    Ok(pending.appended)
                } else {
                    Err(self.not_leader())
                };
                let _ = pending.reply.send(outcome);
            }
        }
        let high_watermark = self
            .node
            .store()
            .end_offset_of(last)
            .expect("the window holds every entry above the applied index");
        assert!(
            high_watermark >= self.high_watermark,
            "the high watermark never moves back"
        );
        self.high_watermark = high_watermark;
        self.node.mut_store().set_applied(last);
    }

    /// Applies a configuration change committed at `entry`, to be recorded
    /// with the next write (a crash before it applies it again). One that
    /// does not decode or apply is skipped, the same on every replica.
    fn apply_conf_change(&mut self, entry: &Entry) {
        if entry.index <= self.node.store().conf().0 {
            // In the configuration already: a snapshot's (which names the
            // one in force when it was sent), or recorded before a crash
            // that came ahead of the next checkpoint.
            return;
        }
        let applied = super::conf_change(entry).and_then(|change| {
            self.node
                .apply_conf_change(&change)
                .map_err(|e| format!("entry {}: {e}", entry.index))
        });
        match applied {
            Ok(conf_state) => {
                tracing::info!(
                    topic = %self.topic,
                    partition = self.partition,
                    index = entry.index,
                    voters = ?conf_state.voters,
                    outgoing = ?conf_state.voters_outgoing,
                    "replica: configuration applied"
                );
                self.confs_applied.push((entry.index, conf_state.clone()));
                self.node.mut_store().set_conf(entry.index, conf_state);
                // Followers added learn of it from their leader's appends.
                self.wake();
            }
            Err(reason) => tracing::error!(
                topic = %self.topic,
                partition = self.partition,
                %reason,
                "replica: a configuration change skipped"
            ),
        }
    }

    /// On the leader: swaps a replica whose node came back in a new
    /// incarnation for its new member (`replication::reconfigure`);
    /// `current` names each node's member now. On a quiesced follower whose
    /// leader is such a former member: wakes it. That member is gone, but
    /// its node beats again as the new one, so the silence that wakes a
    /// quiesced follower never comes.
    pub fn reconfigure(&mut self, current: &impl Fn(u64) -> Option<u64>) {
        if !self.is_leader() {
            let leader = self.node.raft.leader_id;
            if self.quiesced && leader != 0 && current(node_of(leader)).is_some_and(|member| member != leader) {
                tracing::info!(
                    topic = %self.topic,
                    partition = self.partition,
                    leader,
                    "replica: the quiesced group's leader is a node's former incarnation; waking"
                );
                self.wake();
            }
            return;
        }
        let due = {
            let conf = self.node.raft.prs().conf().to_conf_state();
            !conf.voters_outgoing.is_empty()
                || conf
                    .voters
                    .iter()
                    .any(|voter| current(node_of(*voter)).is_some_and(|member| member != *voter))
        };
        if due {
            self.wake();
            super::reconfigure(&mut self.node, current);
        }
    }

    /// Answers the produce requests whose entries a leader's entries
    /// replaced: from `first` on, the Raft log is now `entries`, so a
    /// waiting batch not among them (another term at its index, or past
    /// their end) is gone, whether it was persisted (a cut) or only in
    /// raft-rs's memory when the new leader's entries arrived.
    fn fail_replaced(&mut self, first: u64, entries: &[Entry]) {
        let replaced: Vec<u64> = self
            .pending
            .range(first..)
            .filter(|(index, pending)| {
                entries
                    .get((**index - first) as usize)
                    .is_none_or(|entry| entry.term != pending.term)
            })
            .map(|(index, _)| *index)
            .collect();
        for index in replaced {
            let pending = self.pending.remove(&index).expect("just seen");
            let _ = pending.reply.send(Err(self.not_leader()));
        }
    }

    /// Bytes appended through the last batch applied (`applied` or
    /// before), of those counted since the last checkpoint.
    fn applied_bytes(&self, applied: u64) -> u64 {
        let through = self.unchecked.partition_point(|(index, _)| *index <= applied);
        through
            .checked_sub(1)
            .map_or(self.checkpointed_bytes, |at| self.unchecked[at].1)
    }

    /// A checkpoint of `applied` was written.
    fn checkpointed(&mut self, applied: u64) {
        self.checkpointed_bytes = self.applied_bytes(applied);
        let through = self.unchecked.partition_point(|(index, _)| *index <= applied);
        self.unchecked.drain(..through);
        self.last_checkpoint = applied;
    }

    /// Writes the applied index every `CHECKPOINT_ENTRIES` or
    /// `CHECKPOINT_BYTES`, and the whole state file again once it has grown
    /// past `STATE_FILE_BYTES_MAX`.
    pub async fn checkpoint(&mut self) -> Result<(), BrokerError> {
        // Before any checkpoint past its entry: a crash before the move is
        // made applies the entry again.
        if let Some(due) = self.log_start_due.take() {
            let moved = self.move_log_start(&due).await;
            for reply in due.replies {
                let _ = reply.send(match &moved {
                    Ok(start) => Ok(*start),
                    Err(error) => Err(self.fail(format!("the log start not moved: {error}"))),
                });
            }
            moved?;
        }
        let applied = self.node.raft.raft_log.applied;
        if applied == self.last_checkpoint
            || (applied < self.last_checkpoint + CHECKPOINT_ENTRIES
                && self.applied_bytes(applied) - self.checkpointed_bytes < CHECKPOINT_BYTES)
        {
            return Ok(());
        }
        self.checkpointed(applied);
        if self.state_file.bytes > STATE_FILE_BYTES_MAX {
            let store = self.node.store();
            let state = ReplicaState {
                log_start: Some(store.log_start()).filter(|start| start.index > 0),
                installing: None,
                internal: store
                    .internal_entries(store.first_index(), store.last_index() + 1)
                    .into_iter()
                    .map(|e| (e.index, e))
                    .collect(),
                hard_state: store.hard_state().clone(),
                applied: Some((applied, self.high_watermark)),
                confs: BTreeMap::from([(store.conf().0, store.conf().1.clone())]),
                valid_bytes: 0,
            };
            return self
                .state_file
                .rewrite(&state)
                .await
                .map_err(|e| storage_error(&self.topic, self.partition, e));
        }
        let mut batch = StateBatch::default();
        batch.applied(applied, self.high_watermark);
        self.state_file
            .append(batch)
            .await
            .map_err(|e| storage_error(&self.topic, self.partition, e))
    }

    /// Reads back from the partition log what raft-rs waits for to send to
    /// a lagging follower.
    pub async fn serve_fetches(&mut self) -> Result<(), BrokerError> {
        while let Some(fetch) = self.node.store().take_fetch() {
            let entries = self.read_entries(fetch.low, fetch.high, fetch.max_size).await?;
            self.fetches_served += 1;
            self.node.mut_store().fetched(entries);
            self.node.on_entries_fetched(fetch.context);
        }
        Ok(())
    }

    /// Entries `low..high` (at least one, then up to `max_size` bytes), the
    /// batches read from the partition log.
    async fn read_entries(&self, low: u64, high: u64, max_size: u64) -> Result<Vec<Entry>, BrokerError> {
        let mut from = match self.node.store().locate(low) {
            Located::At(offset) => offset,
            Located::Below => self.find_raft_index(low).await?,
        };
        let mut internal = self.node.store().internal_entries(low, high).into_iter().peekable();
        let mut entries: Vec<Entry> = Vec::new();
        let mut size = 0u64;
        let mut next = low;
        let full = |size: u64, entries: &Vec<Entry>| !entries.is_empty() && size > max_size;
        'read: while next < high && from < self.log.log_end_offset() {
            let read = self
                .log
                .read(from, MESSAGE_BYTES_MAX as usize)
                .await
                .map_err(|e| storage_error(&self.topic, self.partition, e))?;
            for frame in batch::frames(&read.bytes) {
                let info = batch::peek_header(frame).map_err(|e| storage_error(&self.topic, self.partition, e))?;
                if info.raft_index < next {
                    continue;
                }
                while let Some(entry) = internal.next_if(|e| e.index < info.raft_index) {
                    size += 1;
                    entries.push(entry);
                    next += 1;
                }
                if next >= high || full(size + frame.len() as u64, &entries) {
                    break 'read;
                }
                if info.raft_index != next {
                    return Err(self.fail(format!(
                        "the batch at offset {} holds Raft entry {}, where entry {next} was expected",
                        info.base_offset, info.raft_index
                    )));
                }
                size += frame.len() as u64;
                entries.push(Entry {
                    index: next,
                    term: info.leader_epoch as u64,
                    data: bytes::Bytes::copy_from_slice(frame),
                    ..Default::default()
                });
                next += 1;
            }
            from = read.next_offset;
        }
        while let Some(entry) = internal.next_if(|e| e.index == next) {
            entries.push(entry);
            next += 1;
        }
        Ok(entries)
    }

    /// The offset of the batch holding Raft entry `index` (or of the first
    /// after it), below the window: a search of the partition log by
    /// offset, as the batches' Raft indexes ascend with their offsets.
    async fn find_raft_index(&self, index: u64) -> Result<Offset, BrokerError> {
        let (mut low, mut high) = (self.log.log_start_offset(), self.log.log_end_offset());
        while low < high {
            let middle = Offset(low.0 + (high.0 - low.0) / 2);
            let read = self
                .log
                .read(middle, 1)
                .await
                .map_err(|e| storage_error(&self.topic, self.partition, e))?;
            let Some(frame) = batch::frames(&read.bytes).next() else {
                break;
            };
            let info = batch::peek_header(frame).map_err(|e| storage_error(&self.topic, self.partition, e))?;
            if info.raft_index < index {
                low = info.next_offset();
            } else {
                high = info.base_offset;
            }
        }
        Ok(low)
    }

    /// What a leader let go on a failure says last: its leadership handed
    /// to the follower furthest along, and a heartbeat to each follower
    /// that wakes it if quiesced, so that it elects a leader within an
    /// election timeout if the hand-over does not reach it. Nothing from a
    /// follower.
    pub fn farewell(&mut self) -> Vec<Message> {
        if !self.is_leader() {
            return Vec::new();
        }
        self.hand_over();
        let mut messages = std::mem::take(&mut self.node.raft.msgs);
        let raft = &self.node.raft;
        for (peer, progress) in raft.prs().iter().filter(|(peer, _)| **peer != self.id) {
            let mut heartbeat = Message::default();
            heartbeat.set_msg_type(MessageType::MsgHeartbeat);
            heartbeat.from = self.id;
            heartbeat.to = *peer;
            heartbeat.term = raft.term;
            heartbeat.commit = progress.matched.min(raft.raft_log.committed);
            messages.push(heartbeat);
        }
        messages
    }

    /// Hands this replica's leadership to the follower furthest along
    /// (`replication::hand_over`).
    pub fn hand_over(&mut self) -> Option<u64> {
        self.wake();
        super::hand_over(&mut self.node)
    }

    /// Asks for the leadership to move to `to`: a leader sends it its log's
    /// tail and then tells it to campaign at once; a follower passes the
    /// request to the leader it knows (raft-rs's MsgTransferLeader).
    pub fn transfer_leader(&mut self, to: u64) {
        self.wake();
        // The incoming configuration's: mid-swap, the node's former member
        // is still an outgoing voter, and gone.
        // This node's own is this replica's member, not a former one this
        // replica (not yet swapped in) still has as a voter.
        let incoming = self.node.raft.prs().conf().to_conf_state().voters;
        let member = match to == node_of(self.id) {
            true => incoming.contains(&self.id).then_some(self.id),
            false => incoming.into_iter().find(|m| node_of(*m) == to),
        };
        match member {
            Some(member) => self.node.transfer_leader(member),
            None => {
                tracing::warn!(topic = %self.topic, partition = self.partition, to, "replica: a transfer to a node with no replica here, ignored")
            }
        }
    }
}

/// Raft's own entry (a new leader's empty one, a configuration change): no
/// record batch, no Kafka offset.
pub fn is_internal(entry: &Entry) -> bool {
    entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() || entry.context.as_ref() == LOG_START
}

/// The offset a log start entry (`propose_log_start`) moves the log start
/// to; None for any other entry. One whose data is not an offset is
/// refused by the replicas that step it.
pub fn log_start_entry(entry: &Entry) -> Option<Offset> {
    if entry.get_entry_type() != EntryType::EntryNormal || entry.context.as_ref() != LOG_START {
        return None;
    }
    let bytes: [u8; 8] = entry.data.as_ref().try_into().ok()?;
    Some(Offset(u64::from_le_bytes(bytes)))
}

fn storage_error(topic: &str, partition: u32, source: storage::StorageError) -> BrokerError {
    BrokerError::Storage {
        topic: topic.to_string(),
        partition,
        source,
    }
}

/// Opens the state file (created empty if new), cutting a torn last batch.
async fn open_state_file(path: &Path) -> storage::Result<(Arc<std::fs::File>, Vec<u8>)> {
    let path = path.to_path_buf();
    let (file, bytes) = storage::blocking::off_shard(move || storage::record_file::open(&path)).await?;
    Ok((Arc::new(file), bytes))
}

impl StateFile {
    /// Appends a batch (nothing if empty), synced if it must be, off the
    /// shard's thread.
    async fn append(&mut self, batch: StateBatch) -> storage::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let sync = batch.needs_sync;
        let bytes = self.finish(batch)?;
        self.bytes += bytes.len();
        let (file, path) = (self.file.clone(), self.path.clone());
        storage::blocking::off_shard(move || storage::record_file::append(&file, &path, &bytes, sync)).await
    }

    /// Writes `state` as the whole file (a temporary file synced, renamed
    /// over it, the directory synced), and appends to the new one.
    async fn rewrite(&mut self, state: &ReplicaState) -> storage::Result<()> {
        let bytes = self.finish(state.rewrite())?;
        let len = bytes.len();
        let path = self.path.clone();
        self.file = storage::blocking::off_shard(move || {
            let temp = path.with_extension("tmp");
            let io = |op: &'static str, path: &Path| {
                let path = path.to_path_buf();
                move |source| storage::StorageError::Io { op, path, source }
            };
            std::fs::write(&temp, &bytes).map_err(io("write", &temp))?;
            std::fs::File::open(&temp)
                .and_then(|f| f.sync_all())
                .map_err(io("fsync", &temp))?;
            std::fs::rename(&temp, &path).map_err(io("rename", &temp))?;
            let (file, _) = storage::record_file::open(&path)?;
            Ok::<_, storage::StorageError>(Arc::new(file))
        })
        .await?;
        self.bytes = len;
        Ok(())
    }

    fn finish(&self, batch: StateBatch) -> storage::Result<Vec<u8>> {
        batch.finish().map_err(|reason| storage::StorageError::RecordFile {
            path: self.path.clone(),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use raft::prelude::HardState;

    use super::*;

    #[test]
    fn a_state_file_written_again_whole_replays_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(state_file::FILE_NAME);
        glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
            let (file, bytes) = open_state_file(&path).await.unwrap();
            assert!(bytes.is_empty());
            let mut state_file = StateFile {
                path: path.clone(),
                file,
                bytes: 0,
            };
            for term in 1..=50u64 {
                let mut batch = StateBatch::default();
                batch.entry(&Entry {
                    index: term * 10,
                    term,
                    ..Default::default()
                });
                batch.hard_state(&HardState {
                    term,
                    vote: 1,
                    ..Default::default()
                });
                batch.applied(term * 10, Offset(term * 100));
                state_file.append(batch).await.unwrap();
            }
            let before = state_file::replay(&std::fs::read(&path).unwrap()).unwrap();
            assert_eq!(before.internal.len(), 50);
            state_file.rewrite(&before).await.unwrap();
            assert!(
                state_file.bytes < before.valid_bytes,
                "the rewrite drops what was replaced"
            );
            let mut batch = StateBatch::default();
            batch.applied(600, Offset(6000));
            state_file.append(batch).await.unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len(), state_file.bytes, "appends go on after the rewrite");
            let after = state_file::replay(&bytes).unwrap();
            assert_eq!(
                (&after.internal, &after.hard_state),
                (&before.internal, &before.hard_state)
            );
            assert_eq!(after.applied, Some((600, Offset(6000))));
            // A torn last batch is cut at open.
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &[9, 0, 0]))
                .unwrap();
            let (_, reopened) = open_state_file(&path).await.unwrap();
            assert_eq!(reopened, bytes);
            assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, bytes.len());
        });
    }
}
