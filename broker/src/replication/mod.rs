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
