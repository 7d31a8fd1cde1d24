//! Replicated partitions: each partition's Raft group (raft-rs), with the
//! partition log as its Raft log. `log_storage` is raft-rs's view of that
//! log, `state_file` what of the Raft log is not a record batch (Raft's own
//! entries, the hard state, applied checkpoints), and `replica` one node's
//! replica of a group: proposals, the high watermark, and each `Ready`
//! persisted in raft-rs's order.
//!
//! `set` drives a shard's replicas together, `driver` is the shard's task
//! that owns them (ticks, peers' messages, proposals), and `ReplicaView`
//! is what the rest of the shard sees of one: its leader, term and high
//! watermark, without touching the replica. `leaders` tells the other
//! nodes which groups this one leads.

pub mod driver;
pub mod leaders;
pub mod log_storage;
pub mod replica;
pub mod set;
pub mod state_file;

#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::time::Instant;

use futures::channel::oneshot;
use futures::FutureExt;
use raft::prelude::RawNode;
use raft::StateRole;
use storage::Offset;

use net::cluster::PARTITIONS_MAX;

/// Bits of a group id below the topic's id: room for every partition.
const PARTITION_BITS: u32 = 16;
const _: () = assert!(PARTITIONS_MAX <= 1 << PARTITION_BITS);

/// The Raft group of a topic's partition: its topic id (the controller's,
/// from 1, never reused) above the partition number, so that a topic
/// deleted and created again has other groups, and none is the
/// controller's group 0.
pub fn group_id(topic_id: u64, partition: u32) -> u64 {
    assert!(topic_id > 0, "a replicated topic has a controller's id");
    assert!(partition < PARTITIONS_MAX);
    (topic_id << PARTITION_BITS) | u64::from(partition)
}

/// The topic id and partition of a group.
pub fn group_partition(group: u64) -> (u64, u32) {
    (group >> PARTITION_BITS, (group & ((1 << PARTITION_BITS) - 1)) as u32)
}

/// Who leads a group, as one node knows it: published to the node's
/// metadata for clients (leader, leader epoch, ISR).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    pub leader: Option<u64>,
    pub term: u64,
    /// Known on the leader only; empty elsewhere.
    pub in_sync: Vec<u64>,
}

/// What the shard's request handlers see of a replica the driver owns,
/// updated by the driver after every turn: no handler touches the replica,
/// so none holds it across an await.
pub struct ReplicaView {
    pub group: u64,
    leadership: RefCell<Leadership>,
    is_leader: Cell<bool>,
    high_watermark: Cell<Offset>,
    /// Long polls waiting for the high watermark to move, and transfers
    /// waiting for the leadership to change.
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
    /// Set when the driver let the replica go (deleted, failed, stopping):
    /// waiters are told, and nothing more is asked of it.
    closed: Cell<bool>,
    /// Changes of leader, term or in-sync replicas seen.
    changes: Cell<u64>,
    /// On the leader, the most entries a follower lacks, as of the last turn.
    follower_lag: Cell<u64>,
}

impl ReplicaView {
    pub fn new(group: u64, high_watermark: Offset) -> ReplicaView {
        ReplicaView {
            group,
            leadership: RefCell::new(Leadership::default()),
            is_leader: Cell::new(false),
            high_watermark: Cell::new(high_watermark),
            waiters: RefCell::new(Vec::new()),
            changes: Cell::new(0),
            follower_lag: Cell::new(0),
            closed: Cell::new(false),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.is_leader.get() && !self.closed.get()
    }

    pub fn leadership(&self) -> Leadership {
        self.leadership.borrow().clone()
    }

    pub fn term(&self) -> u64 {
        self.leadership.borrow().term
    }

    pub fn leader(&self) -> Option<u64> {
        self.leadership.borrow().leader
    }

    pub fn high_watermark(&self) -> Offset {
        self.high_watermark.get()
    }

    /// The replicas in sync, as the leader knows them (0 elsewhere).
    pub fn in_sync_count(&self) -> usize {
        self.leadership.borrow().in_sync.len()
    }

    /// On the leader, the most entries a follower lacks.
    pub fn follower_lag(&self) -> u64 {
        self.follower_lag.get()
    }

    /// Changes of leader, term or in-sync replicas this replica saw.
    pub fn leadership_changes(&self) -> u64 {
        self.changes.get()
    }

    /// Takes the replica's state after a turn; answers whether its
    /// leadership changed (for the node's metadata).
    pub fn update(&self, replica: &mut replica::PartitionReplica) -> bool {
        let high_watermark = replica.high_watermark();
        assert!(
            high_watermark >= self.high_watermark.get(),
            "group {}: the high watermark moved back from {} to {high_watermark}",
            self.group,
            self.high_watermark.get()
        );
        if high_watermark > self.high_watermark.get() {
            self.high_watermark.set(high_watermark);
            for waiter in self.waiters.borrow_mut().drain(..) {
                let _ = waiter.send(());
            }
        }
        self.is_leader.set(replica.is_leader());
        self.follower_lag.set(replica.follower_lag_max());
        let leadership = Leadership {
            leader: replica.leader(),
            term: replica.term(),
            in_sync: replica.in_sync_replicas(),
        };
        let changed = *self.leadership.borrow() != leadership;
        if changed {
            self.changes.set(self.changes.get() + 1);
            *self.leadership.borrow_mut() = leadership;
            for waiter in self.waiters.borrow_mut().drain(..) {
                let _ = waiter.send(());
            }
        }
        changed
    }

    pub fn close(&self) {
        self.closed.set(true);
        self.is_leader.set(false);
        self.waiters.borrow_mut().clear();
    }

    /// Waits until the high watermark passes `offset` or `deadline` comes;
    /// answers whether it did.
    pub async fn wait_for_data(&self, offset: Offset, deadline: Instant) -> bool {
        self.wait_until(deadline, || self.high_watermark.get() > offset).await
    }

    /// Waits until this replica leads or `deadline` comes; answers whether
    /// it does.
    pub async fn wait_for_leadership(&self, deadline: Instant) -> bool {
        self.wait_until(deadline, || self.is_leader()).await
    }

    /// Waits, woken by each change of the high watermark or leadership,
    /// until `done` or `deadline`; answers `done`.
    async fn wait_until(&self, deadline: Instant, done: impl Fn() -> bool) -> bool {
        loop {
            if done() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.closed.get() {
                return false;
            }
            let (tx, rx) = oneshot::channel();
            {
                let mut waiters = self.waiters.borrow_mut();
                // Polls that gave up (their deadline came) leave their end.
                waiters.retain(|w| !w.is_canceled());
                waiters.push(tx);
            }
            futures::select! {
                _ = rx.fuse() => {}
                _ = glommio::timer::sleep(left).fuse() => {}
            }
        }
    }
}

/// A leader stopping cleanly hands its leadership to the follower furthest
/// along (as Kafka's controlled shutdown does), so the group has a leader
/// again at once rather than after an election timeout. Returns the
/// follower asked; None if `node` does not lead or has no follower. The
/// controller's group and every partition's do it alike.
pub fn hand_over<S: raft::Storage>(node: &mut RawNode<S>) -> Option<u64> {
    if node.raft.state != StateRole::Leader {
        return None;
    }
    let id = node.raft.id;
    // Not a member a configuration change is taking out (a node's former
    // incarnation, gone with its directory).
    let incoming = node.raft.prs().conf().to_conf_state().voters;
    let (transferee, _) = node
        .raft
        .prs()
        .iter()
        .filter(|(peer, _)| **peer != id && incoming.contains(peer))
        .map(|(peer, progress)| (*peer, progress.matched))
        .max_by_key(|(peer, matched)| (*matched, std::cmp::Reverse(*peer)))?;
    node.transfer_leader(transferee);
    Some(transferee)
}

/// The configuration change an entry of type `EntryConfChange` or
/// `EntryConfChangeV2` carries. A peer's bytes: one that does not decode
/// is refused by name, the same on every replica.
pub fn conf_change(entry: &raft::prelude::Entry) -> Result<raft::prelude::ConfChangeV2, String> {
    use protobuf::Message as _;
    use raft::prelude::{ConfChange, ConfChangeSingle, ConfChangeV2, EntryType};
    match entry.get_entry_type() {
        EntryType::EntryConfChangeV2 => ConfChangeV2::parse_from_bytes(&entry.data)
            .map_err(|e| format!("entry {}: a configuration change: {e}", entry.index)),
        EntryType::EntryConfChange => ConfChange::parse_from_bytes(&entry.data)
            .map(|change| {
                let mut single = ConfChangeSingle {
                    node_id: change.node_id,
                    ..Default::default()
                };
                single.set_change_type(change.get_change_type());
                let mut v2 = ConfChangeV2::default();
                v2.set_changes(vec![single].into());
                v2
            })
            .map_err(|e| format!("entry {}: a configuration change: {e}", entry.index)),
        EntryType::EntryNormal => Err(format!("entry {} is no configuration change", entry.index)),
    }
}

/// Swapping a node's earlier incarnation out of a group (KIP-853's
/// directory ids). A node that lost its data directory forgot the votes it
/// gave and the entries it acknowledged: back under the same member id it
/// could help elect a leader missing committed entries, or vote twice in a
/// term. So it comes back as a new member (`member_id(node, incarnation)`),
/// and the group's leader replaces the old member by it with one joint
/// configuration change: old and new majorities both commit it, which the
/// other replicas make without it, and the new member then catches up as a
/// new follower does (entries, or a snapshot past the log start).
///
/// On the leader: if the configuration is joint with no change pending (a
/// leader that took over mid-change), proposes leaving it; otherwise swaps
/// the first voter whose node's member is now another (`current`: a node's
/// member, None if the node is unknown). Answers whether it proposed.
pub fn reconfigure<S: raft::Storage>(node: &mut RawNode<S>, current: impl Fn(u64) -> Option<u64>) -> bool {
    use raft::prelude::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};
    let raft = &node.raft;
    if raft.state != StateRole::Leader || raft.pending_conf_index > raft.raft_log.applied {
        return false;
    }
    let conf = raft.prs().conf().to_conf_state();
    let mut change = ConfChangeV2::default();
    change.set_transition(ConfChangeTransition::Auto);
    if conf.voters_outgoing.is_empty() {
        let Some((old, new)) = conf.voters.iter().find_map(|voter| {
            let member = current(net::cluster::node_of(*voter))?;
            (member != *voter && !conf.voters.contains(&member)).then_some((*voter, member))
        }) else {
            return false;
        };
        let single = |node_id: u64, change_type: ConfChangeType| {
            let mut single = ConfChangeSingle {
                node_id,
                ..Default::default()
            };
            single.set_change_type(change_type);
            single
        };
        change.set_changes(
            vec![
                single(new, ConfChangeType::AddNode),
                single(old, ConfChangeType::RemoveNode),
            ]
            .into(),
        );
        tracing::info!(
            raft_id = raft.id,
            old,
            new,
            "replacing a member by its node's new incarnation"
        );
    }
    // An empty change leaves a joint configuration.
    node.propose_conf_change(Vec::new(), change).is_ok()
}
