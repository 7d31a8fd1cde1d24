//! A shard's replicas of partition groups, driven together so that what
//! they say to other nodes travels coalesced: every group's messages to one
//! node in a turn go in one peer frame (or a few, past a frame's limits)
//! (CockroachDB's and TiKV's batching).
//!
//! An idle group says nothing at all: its leader quiesces it (no ticks, no
//! heartbeats, on every replica; CockroachDB's quiescence, TiKV's
//! hibernating regions). What stands for its heartbeats is one beat a tick
//! from each shard to each peer node, an empty frame when nothing else
//! went: a quiesced follower wakes, and may elect a leader, once its
//! leader's node has not been heard from for an election timeout. So
//! 1,000 idle partitions cost each pair of nodes a frame a tick, with no
//! message in it.
//!
//! A turn runs each group's `Ready` in three steps over all groups at
//! once: the messages that may go before a sync (a leader's appends) leave
//! in one frame per node, then every group's entries are persisted
//! concurrently (their fdatasyncs overlap), then what waited for the
//! syncs leaves in one more frame per node.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;
use net::cluster::{node_of, PeerMessage, CONTROLLER_GROUP, PEER_FRAME_BYTES_MAX, PEER_FRAME_MESSAGES_MAX};
use protobuf::Message as _;
use raft::prelude::Message;

use super::replica::PartitionReplica;
use crate::error::BrokerError;

/// Groups one shard may hold a replica of.
pub const GROUPS_MAX: usize = 1 << 16;
/// Room kept in a frame for its envelope and each message's group id.
const FRAME_OVERHEAD_BYTES: usize = 64 << 10;

#[derive(Default)]
struct Outgoing {
    messages: Vec<(u64, Vec<u8>)>,
    bytes: usize,
}

/// Messages waiting for the end of a step, by the node they go to.
#[derive(Default)]
struct Outbox {
    nodes: BTreeMap<u64, Outgoing>,
    frames_sent: u64,
    messages_sent: u64,
    /// Nodes sent a frame since the last tick (they need no beat).
    sent_since_tick: BTreeSet<u64>,
}

impl Outbox {
    fn queue(&mut self, group: u64, messages: Vec<Message>, send: &mut impl FnMut(u64, PeerMessage)) {
        for message in messages {
            let bytes = message.write_to_bytes().expect("a message encodes");
            let to = node_of(message.to);
            let outgoing = self.nodes.entry(to).or_default();
            if outgoing.messages.len() == PEER_FRAME_MESSAGES_MAX
                || outgoing.bytes + bytes.len() > PEER_FRAME_BYTES_MAX - FRAME_OVERHEAD_BYTES
            {
                let full = std::mem::take(outgoing);
                self.frames_sent += 1;
                self.sent_since_tick.insert(to);
                send(
                    to,
                    PeerMessage::Raft {
                        messages: full.messages,
                    },
                );
            }
            outgoing.bytes += bytes.len();
            outgoing.messages.push((group, bytes));
            self.messages_sent += 1;
        }
    }

    fn flush(&mut self, send: &mut impl FnMut(u64, PeerMessage)) {
        for (node, outgoing) in std::mem::take(&mut self.nodes) {
            if !outgoing.messages.is_empty() {
                self.frames_sent += 1;
                self.sent_since_tick.insert(node);
                send(
                    node,
                    PeerMessage::Raft {
                        messages: outgoing.messages,
                    },
                );
            }
        }
    }
}

pub struct ReplicaSet {
    node: u64,
    /// The other nodes of the cluster: each is sent a beat a tick.
    peers: Vec<u64>,
    replicas: BTreeMap<u64, PartitionReplica>,
    outbox: Outbox,
    ticks: u64,
    /// The tick each peer node was last heard from at (a frame of any
    /// shard of it, a beat included).
    heard: BTreeMap<u64, u64>,
    /// A node not heard from for this many ticks (an election timeout)
    /// counts as gone: the groups it led quiesced wake.
    silent_ticks: u64,
}

/// A group whose replica stopped: its `Ready` could not be persisted (a
/// failed disk), so it was taken out of the set.
#[derive(Debug)]
pub struct Stopped {
    pub group: u64,
    pub error: BrokerError,
}

impl ReplicaSet {
    pub fn new(node: u64, peers: Vec<u64>, election_ticks: usize) -> ReplicaSet {
        ReplicaSet {
            node,
            peers: peers.into_iter().filter(|peer| *peer != node).collect(),
            replicas: BTreeMap::new(),
            outbox: Outbox::default(),
            ticks: 0,
            heard: BTreeMap::new(),
            silent_ticks: election_ticks as u64,
        }
    }

    pub fn insert(&mut self, group: u64, replica: PartitionReplica) -> Result<(), BrokerError> {
        let refuse = |reason: String| BrokerError::Controller(format!("node {}: group {group}: {reason}", self.node));
        if group == CONTROLLER_GROUP {
            return Err(refuse("the controller's group is not a partition's".into()));
        }
        if self.replicas.len() >= GROUPS_MAX {
            return Err(refuse(format!("this shard already holds {GROUPS_MAX} groups")));
        }
        if self.replicas.contains_key(&group) {
            return Err(refuse("already held".into()));
        }
        self.replicas.insert(group, replica);
        Ok(())
    }

    pub fn get_mut(&mut self, group: u64) -> Option<&mut PartitionReplica> {
        self.replicas.get_mut(&group)
    }

    pub fn remove(&mut self, group: u64) -> Option<PartitionReplica> {
        self.replicas.remove(&group)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut PartitionReplica)> {
        self.replicas.iter_mut().map(|(group, replica)| (*group, replica))
    }

    /// Whether any group has work for a turn now.
    pub fn has_ready(&self) -> bool {
        self.replicas.values().any(|r| r.has_ready())
    }

    /// Frames and Raft messages sent so far.
    #[cfg(test)]
    pub fn sent(&self) -> (u64, u64) {
        (self.outbox.frames_sent, self.outbox.messages_sent)
    }

    /// Groups quiesced now.
    #[cfg(test)]
    pub fn quiesced(&self) -> usize {
        self.replicas.values().filter(|r| r.is_quiesced()).count()
    }

    /// Has every group this shard leads swap in the members of nodes back
    /// in a new incarnation (`current`: a node's member now), and every
    /// quiesced group whose leader was a former incarnation wake.
    pub fn reconfigure(&mut self, current: &impl Fn(u64) -> Option<u64>) {
        for replica in self.replicas.values_mut() {
            replica.reconfigure(current);
        }
    }

    /// Ticks every group (a quiesced one only counts the tick), and beats
    /// to each peer node this shard sent nothing since the last tick.
    pub fn tick(&mut self, send: &mut impl FnMut(u64, PeerMessage)) {
        self.ticks += 1;
        let (ticks, heard, silent) = (self.ticks, &self.heard, self.silent_ticks);
        let alive = |node: u64| heard.get(&node).is_some_and(|at| ticks - at <= silent);
        for replica in self.replicas.values_mut() {
            replica.tick(&alive);
        }
        for peer in &self.peers {
            if !self.outbox.sent_since_tick.contains(peer) {
                self.outbox.frames_sent += 1;
                send(*peer, PeerMessage::Raft { messages: Vec::new() });
            }
        }
        self.outbox.sent_since_tick.clear();
    }

    /// The Raft messages of a frame node `from` sent. One that does not
    /// decode, names another sender or receiver, or belongs to a group not
    /// held here (deleted, or not yet created here) is dropped and logged:
    /// Raft sends again what was not answered.
    pub fn step(&mut self, from: u64, messages: Vec<(u64, Vec<u8>)>) {
        self.heard.insert(from, self.ticks);
        for (group, bytes) in messages {
            let message = match Message::parse_from_bytes(&bytes) {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(node = self.node, from, group, error = %e, "replication: a message that does not decode, dropped");
                    continue;
                }
            };
            if node_of(message.from) != from || node_of(message.to) != self.node {
                tracing::warn!(
                    node = self.node,
                    from,
                    group,
                    message_from = message.from,
                    message_to = message.to,
                    "replication: a message for another pair of nodes, dropped"
                );
                continue;
            }
            match self.replicas.get_mut(&group) {
                Some(replica) => replica.step(message),
                None => tracing::debug!(
                    node = self.node,
                    from,
                    group,
                    "replication: a message for a group not held here"
                ),
            }
        }
    }

    /// A retention pass: each replica forgets the head of its log that
    /// retention no longer keeps, one after another (each deletes files).
    /// Answers the groups that stopped (their state file or log failed).
    pub async fn apply_retention(&mut self, send: &mut impl FnMut(u64, PeerMessage)) -> Vec<Stopped> {
        let mut stopped = Vec::new();
        for (group, replica) in self.replicas.iter_mut() {
            match replica.apply_retention().await {
                Ok(None) => {}
                Ok(Some(start)) => tracing::info!(
                    topic = replica.topic(),
                    partition = replica.partition(),
                    log_start_offset = start.offset.0,
                    raft_index = start.index,
                    "retention deleted segments"
                ),
                Err(error) => stopped.push(Stopped { group: *group, error }),
            }
        }
        for Stopped { group, error } in &stopped {
            tracing::error!(node = self.node, group, %error, "replication: a replica stopped");
            self.let_go(*group, send);
        }
        stopped
    }

    /// Takes a replica that failed out of the set. One that led first
    /// hands its leadership over (raft-rs's MsgTimeoutNow needs no disk)
    /// and wakes its followers: quiesced, they would otherwise wait on a
    /// node that is up, beating, and no longer holds the group.
    pub fn let_go(&mut self, group: u64, send: &mut impl FnMut(u64, PeerMessage)) {
        if let Some(mut replica) = self.replicas.remove(&group) {
            let farewell = replica.farewell();
            if !farewell.is_empty() {
                self.outbox.queue(group, farewell, send);
                self.outbox.flush(send);
            }
        }
    }

    /// One turn: every group's `Ready`, its messages handed to `send` as
    /// one `PeerMessage::Raft` per node and step. The entries are written
    /// but the turn does not wait for their fdatasync: it answers the
    /// writes to wait for (`Sync`), and `synced` hands on what each one's
    /// durability releases. Answers the groups that stopped too.
    pub async fn drive(&mut self, send: &mut impl FnMut(u64, PeerMessage)) -> Turn {
        let mut stopped = Vec::new();
        let ReplicaSet { replicas, outbox, .. } = self;
        let fetches = join_all(
            replicas
                .iter_mut()
                .filter(|(_, replica)| replica.has_fetch())
                .map(|(group, replica)| async move { (*group, replica.serve_fetches().await) }),
        )
        .await;
        stopped.extend(
            fetches
                .into_iter()
                .filter_map(|(group, result)| result.err().map(|error| Stopped { group, error })),
        );
        let mut works = BTreeMap::new();
        for (group, replica) in replicas.iter_mut() {
            if let Some((messages, work)) = replica.begin_ready() {
                outbox.queue(*group, messages, send);
                works.insert(*group, work);
            }
            // After the tick's heartbeats: a follower quiesces on the last.
            outbox.queue(*group, replica.take_outgoing(), send);
        }
        outbox.flush(send);
        let written = join_all(
            replicas
                .iter_mut()
                .filter_map(|(group, replica)| Some((*group, replica, works.remove(group)?)))
                .map(|(group, replica, mut work)| async move {
                    let result = replica.write(&mut work).await;
                    (group, work, result)
                }),
        )
        .await;
        let mut ended = Vec::new();
        let mut syncs = Vec::new();
        for (group, work, result) in written {
            match result {
                Ok(last_offset) => {
                    let replica = replicas.get_mut(&group).expect("held while writing");
                    outbox.queue(group, replica.end_ready(work, last_offset), send);
                    if let Some(last_offset) = last_offset {
                        syncs.push(Sync {
                            group,
                            log: replica.partition_log().clone(),
                            last_offset,
                        });
                    }
                    ended.push(group);
                }
                Err(error) => stopped.push(Stopped { group, error }),
            }
        }
        outbox.flush(send);
        let checkpoints = join_all(
            replicas
                .iter_mut()
                .filter(|(group, _)| ended.binary_search(group).is_ok())
                .map(|(group, replica)| async move { (*group, replica.checkpoint().await) }),
        )
        .await;
        stopped.extend(
            checkpoints
                .into_iter()
                .filter_map(|(group, result)| result.err().map(|error| Stopped { group, error })),
        );
        for Stopped { group, error } in &stopped {
            tracing::error!(node = self.node, group, %error, "replication: a replica stopped");
            self.let_go(*group, send);
        }
        Turn { stopped, syncs }
    }

    /// A write `drive` answered is durable (or failed): the messages it
    /// and the writes before it held back are queued, to go at the next
    /// `flush` or turn. A group no longer held (let go meanwhile) is
    /// passed over.
    pub fn synced(
        &mut self,
        group: u64,
        result: Result<(), storage::StorageError>,
        send: &mut impl FnMut(u64, PeerMessage),
    ) -> Option<Stopped> {
        let replica = self.replicas.get_mut(&group)?;
        if let Err(source) = result {
            let error = BrokerError::Storage {
                topic: replica.topic().to_string(),
                partition: replica.partition(),
                source,
            };
            tracing::error!(node = self.node, group, %error, "replication: a replica stopped");
            self.let_go(group, send);
            return Some(Stopped { group, error });
        }
        let messages = replica.release_durable();
        self.outbox.queue(group, messages, send);
        None
    }

    /// Sends what `synced` released, one frame per node: the syncs that
    /// ended together go together.
    pub fn flush(&mut self, send: &mut impl FnMut(u64, PeerMessage)) {
        self.outbox.flush(send);
    }
}

/// What a turn did.
pub struct Turn {
    pub stopped: Vec<Stopped>,
    /// Writes to wait for, each then handed to `synced`.
    pub syncs: Vec<Sync>,
}

/// A group's write whose durability its messages wait for.
pub struct Sync {
    pub group: u64,
    pub log: std::rc::Rc<storage::PartitionLog>,
    pub last_offset: storage::Offset,
}

impl Sync {
    /// Waits until the write is durable (the log's group commit).
    pub async fn wait(self) -> (u64, Result<(), storage::StorageError>) {
        (self.group, self.log.wait_durable(self.last_offset).await)
    }
}
