//! Moving a replicated partition's leadership on request (`corelog topic
//! transfer-leader`): the request goes to the node that should lead, whose
//! replica asks the leader for it (raft-rs's leader transfer: the leader
//! brings it up to date, then tells it to campaign at once) and answers
//! once it leads.

use std::time::{Duration, Instant};

use net::messages::TransferLeaderRequest;

use super::{Forward, Shard, ShardMessage};
use crate::error::BrokerError;

/// Longest a transfer waits for the new leader: a leader transfer takes a
/// round trip once the transferee is caught up, and raft-rs gives it up
/// after an election timeout (at most 2 s at the default tick).
pub const TRANSFER_WAIT: Duration = Duration::from_secs(5);

impl Shard {
    /// Makes the replica on node `to` lead `topic`/`partition`: done here
    /// if `to` is this node, else sent there (`Forward::ToLeader`) or
    /// refused (`Forward::No`). Answers once it leads; REQUEST_TIMED_OUT if
    /// it did not within `TRANSFER_WAIT` (a replica far behind, or down).
    pub async fn transfer_leader(
        &self,
        topic: &str,
        partition: u32,
        to: u64,
        forward: Forward,
    ) -> Result<(), BrokerError> {
        let table = self.metadata.snapshot();
        if !table.exists(topic, partition) {
            return Err(super::unknown(topic, partition));
        }
        if table.group(topic, partition).is_none() {
            return Err(BrokerError::InvalidRequest(format!(
                "{topic}/{partition} has one replica: there is no leadership to move"
            )));
        }
        let replicas = &table.topics[topic].replicas[partition as usize];
        if !replicas.iter().any(|(node, _)| *node == to) {
            return Err(BrokerError::InvalidRequest(format!(
                "{topic}/{partition} has no replica on node {to}"
            )));
        }
        if to != self.config.node_id {
            if forward == Forward::No {
                return Err(BrokerError::InvalidRequest(format!(
                    "{topic}/{partition}: a transfer to node {to} reached node {}",
                    self.config.node_id
                )));
            }
            let request = TransferLeaderRequest {
                topic: topic.to_string(),
                partition,
                to,
                forwarded: true,
            };
            let unknown = BrokerError::TimedOut(format!("node {to}'s address is not known"));
            return self
                .call_node(to, unknown, async |c| c.transfer_leader(&request).await)
                .await;
        }
        let owner = self.owner(topic, partition)?;
        if owner != self.id {
            let topic = topic.to_string();
            return self
                .ask(owner, |reply| ShardMessage::TransferLeader {
                    topic,
                    partition,
                    to,
                    reply,
                })
                .await;
        }
        self.transfer_leader_here(topic, partition).await
    }

    /// On the shard that owns the partition on the node that should lead.
    pub(super) async fn transfer_leader_here(&self, topic: &str, partition: u32) -> Result<(), BrokerError> {
        use futures::SinkExt;
        let (Some(view), Some(mut handle)) = (self.replica_view(topic, partition), self.replication.clone()) else {
            return Err(super::unknown(topic, partition));
        };
        if view.is_leader() {
            return Ok(());
        }
        let to = self.config.node_id;
        handle
            .send(crate::replication::driver::Command::Transfer { group: view.group, to })
            .await
            .map_err(|_| BrokerError::ShardGone(self.id))?;
        if view.wait_for_leadership(Instant::now() + TRANSFER_WAIT).await {
            tracing::info!(
                topic,
                partition,
                node = to,
                term = view.term(),
                "leadership transferred"
            );
            return Ok(());
        }
        Err(BrokerError::TimedOut(format!(
            "{topic}/{partition}: node {to} did not take the leadership within {TRANSFER_WAIT:?} (leader now: {:?})",
            view.leader()
        )))
    }
}
