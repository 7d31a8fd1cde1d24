//! Replicated partitions: each partition's Raft group (raft-rs), with the
//! partition log as its Raft log. `log_storage` is raft-rs's view of that
//! log, `state_file` what of the Raft log is not a record batch (Raft's own
//! entries, the hard state, applied checkpoints), and `replica` one node's
//! replica of a group: proposals, the high watermark, and each `Ready`
//! persisted in raft-rs's order.
//!
//! Driving groups from the shards over the peer connections comes next;
//! until it lands only the tests run a replica.
#![cfg_attr(not(test), allow(dead_code))]

pub mod log_storage;
pub mod replica;
pub mod set;
pub mod state_file;

#[cfg(test)]
mod tests;

use raft::prelude::RawNode;
use raft::StateRole;

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
    let (transferee, _) = node
        .raft
        .prs()
        .iter()
        .filter(|(peer, _)| **peer != id)
        .map(|(peer, progress)| (*peer, progress.matched))
        .max_by_key(|(peer, matched)| (*matched, std::cmp::Reverse(*peer)))?;
    node.transfer_leader(transferee);
    Some(transferee)
}
