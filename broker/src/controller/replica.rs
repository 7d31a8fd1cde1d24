//! One node's replica of the controller group: a raft-rs `RawNode` over the
//! voters named by `--peers`, the cluster metadata it applies, and the
//! proposals this node made that wait for their outcome.
//!
//! Sans-IO, as raft-rs is: the owner ticks it, steps the messages peers
//! send, and handles each `Ready` in two halves, in raft-rs's order:
//! `begin_ready` hands over the messages that may go at once, applies the
//! committed entries and gives the bytes to persist; the owner syncs them
//! and only then calls `end_ready`, which gives the messages that depended
//! on them. Nothing else may touch the replica between the two, which the
//! `&mut` on `ReadyWork`'s owner enforces in one task.

use std::collections::BTreeMap;

use net::cluster::{node_of, ControllerCommand};
use raft::prelude::{ConfState, Config, Entry, EntryType, Message, RawNode};
use raft::storage::MemStorage;
use raft::StateRole;

use super::store::{self, ReadyBatch, BATCH_BYTES_MAX};
use super::{Applied, ClusterMetadata};
use crate::error::BrokerError;

/// The default election timeout in ticks, for the tests' clocks (the
/// broker's is configured: `RaftTiming`).
#[cfg(test)]
const ELECTION_TICKS: usize = 10;
/// A leader's heartbeat every tick.
pub const HEARTBEAT_TICKS: usize = 1;
/// Bytes of entries in one append message, and append messages in flight
/// to one follower.
const MESSAGE_BYTES_MAX: u64 = 1 << 20;
const MESSAGES_IN_FLIGHT_MAX: usize = 64;
/// Proposals of this node waiting for their outcome.
pub const PROPOSALS_PENDING_MAX: usize = 1024;

/// A proposal's name: the node that made it and its number there, written
/// as the entry's context so the proposer knows its own entry when it
/// applies.
const CONTEXT_BYTES: usize = 16;

/// What `begin_ready` hands over.
pub struct ReadyWork {
    /// May go now (a leader's appends go out while it persists its own).
    pub messages: Vec<Message>,
    /// To append to the replica's log file and sync before `end_ready`.
    pub batch: Option<Vec<u8>>,
    persisted_messages: Vec<Message>,
    ready: raft::Ready,
}

pub struct ControllerReplica {
    id: u64,
    node: RawNode<MemStorage>,
    metadata: ClusterMetadata,
    next_proposal: u64,
    /// This node's proposals not yet applied (None) or with their outcome.
    pending: BTreeMap<u64, Option<Result<(), BrokerError>>>,
}

impl ControllerReplica {
    /// The replica of Raft member `id` (a node in one incarnation) in a
    /// group formed of `voters` (the nodes of `--peers` in their first
    /// incarnation), from the bytes of its log file (empty for a new node).
    /// Every node starts the group with the same voters, so no
    /// configuration entry is needed to form it; the changes since (a node
    /// back with its directory lost, swapped in) are in the log, applied
    /// again as it is replayed.
    pub fn open(
        id: u64,
        voters: &[u64],
        log: &[u8],
        timing: &crate::config::RaftTiming,
    ) -> Result<ControllerReplica, BrokerError> {
        let raft_error = |e: raft::Error| BrokerError::Controller(format!("node {id}: {e}"));
        if !voters.contains(&node_of(id)) {
            return Err(BrokerError::Controller(format!(
                "node {} is not among the voters {voters:?}",
                node_of(id)
            )));
        }
        let replayed = store::replay(log).map_err(|e| BrokerError::Controller(format!("node {id}: {e}")))?;
        let storage = MemStorage::new_with_conf_state(ConfState::from((voters.to_vec(), vec![])));
        {
            let mut core = storage.wl();
            // Appending an entry cuts what followed it: the last index is its.
            let mut last = 0;
            for entry in &replayed.entries {
                // raft-rs panics on a gap; a file with one is refused.
                if entry.index == 0 || entry.index > last + 1 {
                    return Err(BrokerError::Controller(format!(
                        "node {id}: controller log entry {} follows entry {last}",
                        entry.index
                    )));
                }
                core.append(std::slice::from_ref(entry)).map_err(raft_error)?;
                last = entry.index;
            }
            if let Some(hard_state) = replayed.hard_state {
                core.set_hardstate(hard_state);
            }
        }
        let config = Config {
            id,
            election_tick: timing.election_ticks,
            heartbeat_tick: HEARTBEAT_TICKS,
            // The metadata lives in memory and is built again from the log
            // at every start: everything committed is applied anew.
            applied: 0,
            max_size_per_msg: MESSAGE_BYTES_MAX,
            max_inflight_msgs: MESSAGES_IN_FLIGHT_MAX,
            check_quorum: true,
            pre_vote: true,
            ..Config::default()
        };
        config.validate().map_err(raft_error)?;
        let logger = slog::Logger::root(TracingDrain, slog::o!("raft" => "controller", "node" => id));
        let node = RawNode::new(&config, storage, &logger).map_err(raft_error)?;
        Ok(ControllerReplica {
            id,
            node,
            metadata: ClusterMetadata::default(),
            next_proposal: 0,
            pending: BTreeMap::new(),
        })
    }

    pub fn metadata(&self) -> &ClusterMetadata {
        &self.metadata
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// The node of the leader this replica knows of, if any.
    pub fn leader(&self) -> Option<u64> {
        Some(self.node.raft.leader_id).filter(|id| *id != 0).map(node_of)
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// This replica's view of the group, for `corelog cluster status`.
    pub fn status(&self) -> net::cluster::ControllerStatus {
        net::cluster::ControllerStatus {
            node: node_of(self.id),
            leader: self.leader().unwrap_or(0),
            term: self.term(),
            applied_index: self.metadata.applied_index,
            nodes: self
                .metadata
                .nodes
                .iter()
                .map(|(id, info)| net::cluster::NodeStatus {
                    id: *id,
                    kafka_addr: info.kafka_addr.clone(),
                    incarnation: info.incarnation,
                    directory: info.directory,
                })
                .collect(),
            topics: self.metadata.topics.keys().cloned().collect(),
            frames_sent: super::driver::PEER_FRAMES_SENT.load(std::sync::atomic::Ordering::Relaxed),
            bytes_sent: super::driver::PEER_BYTES_SENT.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// A leader stopping cleanly hands its leadership to the follower
    /// furthest along (as Kafka's controlled shutdown does), so the group
    /// has a leader again at once rather than after an election timeout.
    /// Returns the follower asked, None if this replica does not lead or
    /// has no follower.
    pub fn hand_over(&mut self) -> Option<u64> {
        crate::replication::hand_over(&mut self.node)
    }

    pub fn tick(&mut self) {
        self.node.tick();
    }

    /// A message from a peer. One raft-rs refuses (a stale or foreign one)
    /// changes nothing and is only logged: peers' bytes are not trusted.
    pub fn step(&mut self, mut message: Message) {
        let (from, kind) = (message.from, message.get_msg_type());
        if message.to != self.id {
            // For this node's earlier incarnation, whose votes and log were
            // not this one's.
            tracing::debug!(
                node = self.id,
                from,
                to = message.to,
                "controller: a message for another member, dropped"
            );
            return;
        }
        let last_index = self.node.raft.raft_log.last_index();
        if kind == raft::prelude::MessageType::MsgHeartbeat && message.commit > last_index {
            // A leader sends a commit index only up to what it knows this
            // replica holds: a higher one means this node lost entries it
            // once acknowledged (its data directory wiped). raft-rs would
            // panic on it; taken as "committed up to what is here", the
            // leader's next append is refused and it sends the log again.
            tracing::warn!(
                node = self.id,
                from,
                commit = message.commit,
                last_index,
                "controller: the leader counts entries this node does not hold (was its log lost?)"
            );
            message.commit = last_index;
        }
        if kind == raft::prelude::MessageType::MsgSnapshot {
            // This group takes no snapshots, so no leader sends one: a
            // snapshot would come from a broken or foreign peer.
            tracing::warn!(node = self.id, from, "controller: a snapshot from a peer, refused");
            return;
        }
        if let Err(e) = self.node.step(message) {
            tracing::debug!(node = self.id, from, ?kind, error = %e, "controller: message refused");
        }
    }

    /// Proposes `command`; its outcome comes from `outcome` once the entry
    /// applies here, or as NotController if this replica loses the
    /// leadership first (the command may still have been committed). The
    /// caller must take the outcome: until then it counts against
    /// `PROPOSALS_PENDING_MAX`.
    pub fn propose(&mut self, command: &ControllerCommand) -> Result<u64, BrokerError> {
        if self.pending.len() >= PROPOSALS_PENDING_MAX {
            return Err(BrokerError::Controller(format!(
                "node {}: {PROPOSALS_PENDING_MAX} controller proposals already wait",
                self.id
            )));
        }
        let proposal = self.next_proposal + 1;
        let mut context = Vec::with_capacity(CONTEXT_BYTES);
        context.extend_from_slice(&self.id.to_le_bytes());
        context.extend_from_slice(&proposal.to_le_bytes());
        self.propose_with(context, command)?;
        self.next_proposal = proposal;
        self.pending.insert(proposal, None);
        Ok(proposal)
    }

    /// Proposes `command` with no one to tell its outcome (a node's
    /// registration, which its proposer sees in the metadata): nothing is
    /// kept for it.
    pub fn propose_detached(&mut self, command: &ControllerCommand) -> Result<(), BrokerError> {
        self.propose_with(Vec::new(), command)
    }

    fn propose_with(&mut self, context: Vec<u8>, command: &ControllerCommand) -> Result<(), BrokerError> {
        if !self.is_leader() {
            return Err(BrokerError::NotController { leader: self.leader() });
        }
        let data = command.encode();
        if data.len() > BATCH_BYTES_MAX / 2 {
            return Err(BrokerError::Controller(format!(
                "a controller command of {} bytes, over {}",
                data.len(),
                BATCH_BYTES_MAX / 2
            )));
        }
        self.node
            .propose(context, data)
            .map_err(|_| BrokerError::NotController { leader: self.leader() })
    }

    /// On the leader: swaps one voter whose node came back in a later
    /// incarnation for that incarnation's member (`replication::
    /// reconfiguration`), unless a change is under way. Answers whether it
    /// proposed one.
    pub fn reconfigure(&mut self) -> bool {
        let metadata = &self.metadata;
        crate::replication::reconfigure(&mut self.node, |node| {
            metadata.nodes.contains_key(&node).then(|| metadata.member(node))
        })
    }

    /// The outcome of proposal `proposal`, once it has one (taken: asked
    /// again, None).
    pub fn outcome(&mut self, proposal: u64) -> Option<Result<(), BrokerError>> {
        if self.pending.get(&proposal)?.is_none() {
            return None;
        }
        self.pending.remove(&proposal).flatten()
    }

    /// The first half of handling a `Ready`, if there is one.
    pub fn begin_ready(&mut self) -> Result<Option<ReadyWork>, BrokerError> {
        if !self.node.has_ready() {
            return Ok(None);
        }
        let mut ready = self.node.ready();
        let messages = ready.take_messages();
        // The controller log is never compacted yet, so no replica needs a
        // snapshot to catch up, and `step` refuses one from a peer.
        assert!(ready.snapshot().is_empty(), "controller snapshots are not taken");
        let committed = ready.take_committed_entries();
        self.apply(committed);
        let mut batch = ReadyBatch::default();
        if !ready.entries().is_empty() {
            for entry in ready.entries() {
                batch.entry(entry);
            }
            self.node
                .mut_store()
                .wl()
                .append(ready.entries())
                .map_err(|e| BrokerError::Controller(format!("node {}: append: {e}", self.id)))?;
        }
        if let Some(hard_state) = ready.hs() {
            batch.hard_state(hard_state);
            self.node.mut_store().wl().set_hardstate(hard_state.clone());
        }
        if ready.ss().is_some_and(|ss| ss.raft_state != StateRole::Leader) {
            self.fail_pending();
        }
        let persisted_messages = ready.take_persisted_messages();
        let batch = if batch.is_empty() {
            None
        } else {
            Some(batch.finish().map_err(BrokerError::Controller)?)
        };
        Ok(Some(ReadyWork {
            messages,
            batch,
            persisted_messages,
            ready,
        }))
    }

    /// The second half, once `work.batch` is durable: the messages to send.
    pub fn end_ready(&mut self, work: ReadyWork) -> Vec<Message> {
        let mut messages = work.persisted_messages;
        let mut light = self.node.advance(work.ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().wl().mut_hard_state().commit = commit;
        }
        messages.extend(light.take_messages());
        self.apply(light.take_committed_entries());
        self.node.advance_apply();
        messages
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            if entry.get_entry_type() != EntryType::EntryNormal {
                match crate::replication::conf_change(&entry) {
                    Ok(change) => match self.node.apply_conf_change(&change) {
                        Ok(conf) => {
                            tracing::info!(node = self.id, index = entry.index, voters = ?conf.voters, outgoing = ?conf.voters_outgoing, "controller: configuration applied");
                            self.node.mut_store().wl().set_conf_state(conf);
                        }
                        Err(e) => {
                            tracing::error!(node = self.id, index = entry.index, error = %e, "controller: a configuration change that does not apply")
                        }
                    },
                    // The same on every node: the entry changes nothing.
                    Err(e) => {
                        tracing::error!(node = self.id, index = entry.index, error = %e, "controller: a configuration entry that does not decode")
                    }
                }
                self.metadata.applied_index = self.metadata.applied_index.max(entry.index);
                continue;
            }
            if entry.data.is_empty() {
                // A new leader's empty entry.
                self.metadata.applied_index = self.metadata.applied_index.max(entry.index);
                continue;
            }
            let outcome = match ControllerCommand::decode(&entry.data) {
                Ok(command) => self.metadata.apply(entry.index, &command).map(|applied| {
                    debug_assert_eq!(applied, Applied::Done, "entries are applied once");
                }),
                Err(e) => {
                    // The same on every node: the entry takes its index and
                    // changes nothing.
                    self.metadata.applied_index = self.metadata.applied_index.max(entry.index);
                    Err(BrokerError::Controller(format!("entry {}: {e}", entry.index)))
                }
            };
            if let Some(proposal) = self.own_proposal(&entry.context) {
                if let Some(slot) = self.pending.get_mut(&proposal) {
                    *slot = Some(outcome);
                }
            }
        }
    }

    /// The group's voters, sorted, and None while the configuration is
    /// joint (tests).
    #[cfg(test)]
    fn voters(&self) -> Option<Vec<u64>> {
        let conf = self.node.raft.prs().conf().to_conf_state();
        let mut voters = conf.voters;
        voters.sort_unstable();
        conf.voters_outgoing.is_empty().then_some(voters)
    }

    /// (index, term, data) of every committed entry in the log (tests).
    #[cfg(test)]
    fn committed_log(&self) -> Vec<(u64, u64, Vec<u8>)> {
        use raft::Storage;
        let committed = self.node.raft.raft_log.committed;
        if committed == 0 {
            return Vec::new();
        }
        self.node
            .store()
            .entries(1, committed + 1, None, raft::GetEntriesContext::empty(false))
            .expect("committed entries are stored")
            .into_iter()
            .map(|e| (e.index, e.term, e.data.to_vec()))
            .collect()
    }

    fn own_proposal(&self, context: &[u8]) -> Option<u64> {
        if context.len() != CONTEXT_BYTES {
            return None;
        }
        let node = u64::from_le_bytes(context[..8].try_into().expect("8 bytes"));
        (node == self.id).then(|| u64::from_le_bytes(context[8..].try_into().expect("8 bytes")))
    }

    /// Leadership lost: the proposals not yet applied may or may not commit.
    fn fail_pending(&mut self) {
        let leader = self.leader();
        for slot in self.pending.values_mut().filter(|slot| slot.is_none()) {
            *slot = Some(Err(BrokerError::NotController { leader }));
        }
    }
}

/// raft-rs logs through slog; its lines go to tracing, its info (elections,
/// terms) at debug so that a broker's log stays quiet.
pub(crate) struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let message = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{message}"),
            slog::Level::Warning => tracing::warn!(target: "raft", "{message}"),
            slog::Level::Info | slog::Level::Debug => tracing::debug!(target: "raft", "{message}"),
            slog::Level::Trace => tracing::trace!(target: "raft", "{message}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, VecDeque};

    use super::*;

    /// Three replicas and the messages between them, in one thread: every
    /// batch is "synced" by appending it to the node's disk bytes before its
    /// `end_ready`, as the driver does with a file.
    struct Group {
        voters: Vec<u64>,
        replicas: BTreeMap<u64, Option<ControllerReplica>>,
        disks: BTreeMap<u64, Vec<u8>>,
        /// Links cut, both ways, and the nodes cut from all others.
        cut: BTreeSet<(u64, u64)>,
        isolated: BTreeSet<u64>,
        queue: VecDeque<Message>,
    }

    impl Group {
        fn new(n: u64) -> Group {
            let voters: Vec<u64> = (1..=n).collect();
            let mut group = Group {
                voters: voters.clone(),
                replicas: BTreeMap::new(),
                disks: voters.iter().map(|id| (*id, Vec::new())).collect(),
                cut: BTreeSet::new(),
                isolated: BTreeSet::new(),
                queue: VecDeque::new(),
            };
            for id in voters {
                group.start(id);
            }
            group
        }

        fn start(&mut self, id: u64) {
            let replica = ControllerReplica::open(
                id,
                &self.voters,
                &self.disks[&id],
                &crate::config::RaftTiming::default(),
            )
            .unwrap();
            self.replicas.insert(id, Some(replica));
        }

        fn crash(&mut self, id: u64) {
            self.replicas.insert(id, None);
        }

        fn replica(&mut self, id: u64) -> &mut ControllerReplica {
            self.replicas.get_mut(&id).unwrap().as_mut().unwrap()
        }

        fn isolate(&mut self, id: u64) {
            self.isolated.insert(id);
            for other in self.voters.clone() {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }

        fn heal(&mut self) {
            self.cut.clear();
            self.isolated.clear();
        }

        /// Handles every Ready and delivers every message until none is left.
        fn settle(&mut self) {
            for _ in 0..1000 {
                for (id, replica) in self.replicas.iter_mut() {
                    let Some(replica) = replica else { continue };
                    while let Some(work) = replica.begin_ready().unwrap() {
                        self.queue.extend(work.messages.iter().cloned());
                        if let Some(batch) = &work.batch {
                            self.disks.get_mut(id).unwrap().extend_from_slice(batch);
                        }
                        let after = replica.end_ready(ReadyWork {
                            messages: vec![],
                            ..work
                        });
                        self.queue.extend(after);
                    }
                }
                if self.queue.is_empty() {
                    return;
                }
                while let Some(message) = self.queue.pop_front() {
                    if self.cut.contains(&(message.from, message.to)) {
                        continue;
                    }
                    if let Some(Some(to)) = self.replicas.get_mut(&message.to) {
                        to.step(message);
                    }
                }
            }
            panic!("the group never settled");
        }

        fn ticks(&mut self, n: usize) {
            for _ in 0..n {
                for replica in self.replicas.values_mut().flatten() {
                    replica.tick();
                }
                self.settle();
            }
        }

        /// The one leader among the live replicas not isolated, ticking
        /// until there is one. Election timeouts are random (10 to 19 ticks)
        /// and, with check_quorum, a follower that heard from a leader
        /// within its own timeout refuses votes: an election may take a few
        /// rounds.
        fn leader(&mut self) -> u64 {
            for _ in 0..20 * ELECTION_TICKS {
                self.ticks(1);
                let leaders: Vec<u64> = self
                    .replicas
                    .iter()
                    .filter_map(|(id, r)| r.as_ref().filter(|r| r.is_leader()).map(|_| *id))
                    .filter(|id| !self.isolated.contains(id))
                    .collect();
                assert!(leaders.len() <= 1, "two leaders: {leaders:?}");
                if let [leader] = leaders[..] {
                    return leader;
                }
            }
            panic!("no leader after {} ticks", 20 * ELECTION_TICKS);
        }

        fn metadata(&mut self, id: u64) -> ClusterMetadata {
            self.replica(id).metadata().clone()
        }
    }

    fn register(node: u64) -> ControllerCommand {
        ControllerCommand::RegisterNode {
            node,
            shards: 2,
            kafka_addr: format!("127.0.0.1:{}", 9092 + node),
            native_addr: format!("127.0.0.1:{}", 9400 + node),
            kafka_shard_addrs: Vec::new(),
            native_shard_addrs: Vec::new(),
        }
    }

    fn create(group: &mut Group, leader: u64, name: &str) -> u64 {
        let replica = group.replica(leader);
        let assignment = replica.metadata().assign(name, 3, 3).unwrap();
        replica
            .propose(&ControllerCommand::CreateTopic {
                name: name.into(),
                assignment,
                configs: vec![],
            })
            .unwrap()
    }

    fn registered_group() -> (Group, u64) {
        let mut group = Group::new(3);
        let leader = group.leader();
        for node in 1..=3 {
            let proposal = group.replica(leader).propose(&register(node)).unwrap();
            group.settle();
            assert!(group.replica(leader).outcome(proposal).unwrap().is_ok());
        }
        (group, leader)
    }

    /// Node 3 loses its log and comes back as its next incarnation: the
    /// leader swaps the new member in, which replays the whole log, and
    /// with it the group survives the loss of another node; the swap is in
    /// every replica's log, so a restart keeps it.
    #[test]
    fn a_node_back_with_its_log_lost_is_swapped_in_as_its_next_incarnation() {
        let (mut group, _) = registered_group();
        group.crash(3);
        group.disks.remove(&3);
        let leader = group.leader();
        let before = create(&mut group, leader, "before");
        group.settle();
        assert!(group.replica(leader).outcome(before).unwrap().is_ok());
        let back = ControllerCommand::Reincarnate {
            node: 3,
            incarnation: 1,
            directory: 5,
        };
        let proposal = group.replica(leader).propose(&back).unwrap();
        group.settle();
        assert!(group.replica(leader).outcome(proposal).unwrap().is_ok());
        let new = net::cluster::member_id(3, 1);
        group.disks.insert(new, Vec::new());
        group.start(new);
        let swapped = Some(vec![1, 2, new]);
        for _ in 0..100 {
            group.replica(leader).reconfigure();
            group.ticks(1);
            if group.replicas.values().flatten().all(|r| r.voters() == swapped) {
                break;
            }
        }
        for id in [1, 2, new] {
            assert_eq!(group.replica(id).voters(), swapped, "member {id}'s voters");
        }
        assert!(!group.replica(leader).reconfigure(), "nothing more to swap");
        assert_eq!(
            group.metadata(new),
            group.metadata(leader),
            "the new member replayed the log"
        );
        assert_eq!(
            group.replica(new).status().node,
            3,
            "it is node 3 to the rest of the node"
        );

        group.crash(leader);
        let next = group.leader();
        assert!(next != leader && next != 3);
        let after = create(&mut group, next, "after");
        group.settle();
        assert!(group.replica(next).outcome(after).unwrap().is_ok());
        for id in [1, 2, new] {
            if id != leader {
                group.crash(id);
            }
        }
        for id in [1, 2, new] {
            group.start(id);
        }
        let leader = group.leader();
        for id in [1, 2, new] {
            assert_eq!(
                group.replica(id).voters(),
                swapped,
                "member {id}'s voters after a restart"
            );
        }
        let again = create(&mut group, leader, "again");
        group.settle();
        assert!(group.replica(leader).outcome(again).unwrap().is_ok());
    }

    #[test]
    fn a_command_applies_on_every_replica_and_only_the_leader_takes_one() {
        let (mut group, leader) = registered_group();
        let proposal = create(&mut group, leader, "orders");
        group.settle();
        assert!(group.replica(leader).outcome(proposal).unwrap().is_ok());
        assert!(group.replica(leader).outcome(proposal).is_none(), "taken once");
        let expected = group.metadata(leader);
        assert!(expected.topics.contains_key("orders"));
        for id in 1..=3 {
            assert_eq!(group.metadata(id), expected, "node {id}");
        }
        let follower = (1..=3).find(|id| *id != leader).unwrap();
        let refused = group.replica(follower).propose(&register(follower));
        assert!(
            matches!(refused, Err(BrokerError::NotController { leader: Some(l) }) if l == leader),
            "{refused:?}"
        );
        // A refused command is refused everywhere, the same way.
        let again = create(&mut group, leader, "orders");
        group.settle();
        assert!(matches!(
            group.replica(leader).outcome(again),
            Some(Err(BrokerError::TopicAlreadyExists(_)))
        ));
    }

    #[test]
    fn a_leader_hands_over_without_waiting_for_an_election() {
        let (mut group, leader) = registered_group();
        let term = group.replica(leader).term();
        let transferee = group.replica(leader).hand_over().expect("a follower to take over");
        assert_ne!(transferee, leader);
        // No tick: the transferee campaigns when told to, not on a timeout.
        group.settle();
        assert!(group.replica(transferee).is_leader());
        assert!(!group.replica(leader).is_leader());
        assert_eq!(group.replica(transferee).term(), term + 1);
        let follower = (1..=3).find(|id| *id != leader && *id != transferee).unwrap();
        assert_eq!(group.replica(follower).leader(), Some(transferee));
        assert_eq!(
            group.replica(transferee).hand_over().map(|t| t != transferee),
            Some(true)
        );
        assert_eq!(
            group.replica(follower).hand_over(),
            None,
            "a follower has nothing to hand over"
        );
    }

    #[derive(Clone, Debug)]
    enum Step {
        Propose(u8),
        Crash(u64),
        Restart(u64),
        Isolate(u64),
        Heal,
        Ticks(u8),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            3 => any::<u8>().prop_map(Step::Propose),
            1 => (1u64..=3).prop_map(Step::Crash),
            1 => (1u64..=3).prop_map(Step::Restart),
            1 => (1u64..=3).prop_map(Step::Isolate),
            1 => Just(Step::Heal),
            2 => (1u8..40).prop_map(Step::Ticks),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Random crashes, restarts from the replicas' files, isolations and
        /// heals among proposals: every replica's committed log agrees with
        /// every other's where both have one (log matching), at every step;
        /// and once all are up and healed, every proposal acknowledged as
        /// applied is in every replica's metadata, and all hold the same.
        #[test]
        fn the_group_keeps_what_it_acknowledged_through_faults(steps in proptest::collection::vec(step(), 1..40)) {
            // Every node registered, so that topics on node 1 apply.
            let (mut group, _) = registered_group();
            let mut acknowledged: Vec<String> = Vec::new();
            let mut waiting: Vec<(u64, u64, String)> = Vec::new();
            for (i, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Propose(n) => {
                        let leader = group.replicas.iter().find_map(|(id, r)| {
                            r.as_ref().filter(|r| r.is_leader()).map(|_| *id)
                        });
                        if let Some(leader) = leader {
                            let name = format!("t{i}-{n}");
                            let command = ControllerCommand::CreateTopic {
                                name: name.clone(),
                                assignment: vec![vec![net::cluster::Replica { node: 1, shard: 0 }]],
                                configs: vec![],
                            };
                            if let Ok(proposal) = group.replica(leader).propose(&command) {
                                waiting.push((leader, proposal, name));
                            }
                        }
                    }
                    Step::Crash(id) => group.crash(id),
                    Step::Restart(id) => {
                        if group.replicas[&id].is_none() {
                            group.start(id);
                        }
                    }
                    Step::Isolate(id) => group.isolate(id),
                    Step::Heal => group.heal(),
                    Step::Ticks(n) => group.ticks(n as usize),
                }
                group.settle();
                // A proposer that crashed lost its pending proposals with it.
                waiting.retain(|(proposer, proposal, name)| {
                    let Some(Some(replica)) = group.replicas.get_mut(proposer) else { return false };
                    match replica.outcome(*proposal) {
                        Some(Ok(())) => {
                            acknowledged.push(name.clone());
                            false
                        }
                        Some(Err(_)) => false,
                        None => true,
                    }
                });
                let logs: Vec<Vec<(u64, u64, Vec<u8>)>> =
                    group.replicas.values().flatten().map(|r| r.committed_log()).collect();
                for a in &logs {
                    for b in &logs {
                        let common = a.len().min(b.len());
                        proptest::prop_assert_eq!(&a[..common], &b[..common], "committed logs diverge");
                    }
                }
            }
            // Everyone up and connected: they converge.
            group.heal();
            for id in 1..=3 {
                if group.replicas[&id].is_none() {
                    group.start(id);
                }
            }
            let leader = group.leader();
            let registration = group.replica(leader).propose(&register(1)).unwrap();
            group.settle();
            proptest::prop_assert!(group.replica(leader).outcome(registration).is_some());
            group.ticks(2);
            let expected = group.metadata(leader);
            for name in &acknowledged {
                proptest::prop_assert!(expected.topics.contains_key(name), "acknowledged {} lost", name);
            }
            for id in 1..=3 {
                proptest::prop_assert_eq!(&group.metadata(id), &expected, "node {}", id);
            }
        }
    }

    /// Registrations, proposed with nobody waiting for them, keep nothing
    /// on the leader: far more than `PROPOSALS_PENDING_MAX` of them go
    /// through, as a long-lived cluster's restarts make them.
    #[test]
    fn detached_proposals_keep_nothing_waiting() {
        let (mut group, leader) = registered_group();
        for round in 0..PROPOSALS_PENDING_MAX + 100 {
            group
                .replica(leader)
                .propose_detached(&register(1 + (round % 3) as u64))
                .unwrap();
            if round % 64 == 0 {
                group.settle();
            }
        }
        group.settle();
        assert!(group.replica(leader).pending.is_empty());
        assert!(group.replica(leader).propose(&register(1)).is_ok());
    }

    #[test]
    fn a_snapshot_from_a_peer_is_refused() {
        let (mut group, leader) = registered_group();
        let follower = (1..=3).find(|id| *id != leader).unwrap();
        let mut snapshot = Message::default();
        snapshot.set_msg_type(raft::prelude::MessageType::MsgSnapshot);
        snapshot.from = leader;
        snapshot.to = follower;
        snapshot.term = group.replica(leader).term();
        snapshot.mut_snapshot().mut_metadata().index = 1000;
        snapshot.mut_snapshot().mut_metadata().term = snapshot.term;
        // A snapshot raft-rs would restore: this group's voters.
        snapshot.mut_snapshot().mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        let before = group.metadata(follower);
        group.replica(follower).step(snapshot);
        group.settle();
        assert_eq!(group.metadata(follower), before);
    }

    #[test]
    fn a_leader_lost_loses_nothing_committed_and_rejoins() {
        let (mut group, leader) = registered_group();
        let proposal = create(&mut group, leader, "before");
        group.settle();
        assert!(group.replica(leader).outcome(proposal).unwrap().is_ok());
        group.crash(leader);
        let next = group.leader();
        assert_ne!(next, leader);
        let proposal = create(&mut group, next, "after");
        group.settle();
        assert!(group.replica(next).outcome(proposal).unwrap().is_ok());
        // The old leader starts again from its file and catches up.
        group.start(leader);
        group.ticks(2);
        let expected = group.metadata(next);
        assert!(expected.topics.contains_key("before") && expected.topics.contains_key("after"));
        for id in 1..=3 {
            assert_eq!(group.metadata(id), expected, "node {id}");
        }
    }

    #[test]
    fn an_isolated_leader_commits_nothing_and_its_tail_is_cut() {
        let (mut group, old) = registered_group();
        group.isolate(old);
        // It still believes it leads and takes a proposal nobody hears.
        let lost = create(&mut group, old, "lost");
        let next = group.leader();
        assert_ne!(next, old);
        let kept = create(&mut group, next, "kept");
        group.settle();
        assert!(group.replica(next).outcome(kept).unwrap().is_ok());
        // check_quorum: within an election timeout the isolated one steps
        // down, and says so.
        group.ticks(2 * ELECTION_TICKS);
        assert!(!group.replica(old).is_leader());
        assert!(matches!(
            group.replica(old).outcome(lost),
            Some(Err(BrokerError::NotController { .. }))
        ));
        group.heal();
        group.ticks(3 * ELECTION_TICKS);
        let expected = group.metadata(next);
        assert!(expected.topics.contains_key("kept"));
        assert!(!expected.topics.contains_key("lost"), "never committed");
        for id in 1..=3 {
            assert_eq!(group.metadata(id), expected, "node {id}");
        }
    }

    #[test]
    fn replicas_started_again_from_their_files_hold_the_same_metadata() {
        let (mut group, leader) = registered_group();
        for name in ["a", "b", "c"] {
            create(&mut group, leader, name);
            group.settle();
        }
        let delete = group
            .replica(leader)
            .propose(&ControllerCommand::DeleteTopic { name: "b".into() })
            .unwrap();
        group.settle();
        assert!(group.replica(leader).outcome(delete).unwrap().is_ok());
        let expected = group.metadata(leader);
        for id in 1..=3 {
            group.crash(id);
        }
        // One node's last batch torn by the crash.
        let torn = group.disks.get_mut(&2).unwrap();
        torn.truncate(torn.len() - 3);
        for id in 1..=3 {
            group.start(id);
        }
        let leader = group.leader();
        group.ticks(2);
        for id in 1..=3 {
            assert_eq!(group.metadata(id).topics, expected.topics, "node {id}");
        }
        assert_eq!(group.metadata(leader).topics["c"].replicas[0].len(), 3);
    }
}
