//! A shard's replication task: it owns the shard's `ReplicaSet` and is the
//! only one to touch it, so nothing steps or proposes between a `Ready`'s
//! steps and no borrow is held across their awaits. It ticks the groups
//! (the controller's 100 ms tick), steps what peers sent (routed here by
//! the node's internal listener), proposes the shard's produce requests,
//! and after every turn publishes each group's high watermark and
//! leadership to its `ReplicaView` and to the node's leaders table.
//!
//! Its frames go out on connections of its own, one per peer, so that no
//! shard's traffic waits behind another's; a peer routes what arrives to
//! the shard that owns each group there.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt};
use net::cluster::{PeerFrame, PeerMessage};

use super::replica::{Acks, PartitionReplica, Reply};
use super::set::ReplicaSet;
use super::ReplicaView;
use crate::config::Peer;
use crate::error::BrokerError;
use crate::topics::Metadata;

/// Commands waiting for the task: past it, a proposer waits (backpressure)
/// and a peer's messages are dropped (Raft sends again).
pub const COMMANDS_DEPTH: usize = 4096;
/// Frames queued to one peer; past it, new ones are dropped.
const PEER_QUEUE_DEPTH: usize = 1024;

pub enum Command {
    /// A replica the shard opened, with the view it reads it through.
    Open {
        group: u64,
        replica: Box<PartitionReplica>,
        view: Rc<ReplicaView>,
    },
    /// Lets a replica go (its topic deleted here): answered once it is out.
    Close { group: u64, reply: oneshot::Sender<()> },
    Propose {
        group: u64,
        frame: Vec<u8>,
        acks: Acks,
        min_insync: usize,
        reply: oneshot::Sender<Result<Reply, BrokerError>>,
    },
    /// Moves a group's log start (DeleteRecords): answered with the
    /// receiver of the outcome once proposed.
    DeleteRecords {
        group: u64,
        offset: storage::Offset,
        reply: oneshot::Sender<Result<oneshot::Receiver<Result<storage::Offset, BrokerError>>, BrokerError>>,
    },
    /// A peer's Raft messages for groups of this shard.
    Step { from: u64, messages: Vec<(u64, Vec<u8>)> },
    /// Moves a group's leadership to node `to` (`corelog topic
    /// transfer-leader`); the asker watches the group's view for it.
    Transfer { group: u64, to: u64 },
    /// A retention pass over the shard's replicas (each forgets the head of
    /// its log that retention no longer keeps), run after the turn.
    Retention,
    /// A clean stop: every group this shard leads is handed to a follower,
    /// and the task ends once none is led here, or at `until`.
    Stop { until: Instant, reply: oneshot::Sender<()> },
}

/// How the shard reaches its task.
pub type Handle = mpsc::Sender<Command>;

pub fn channel() -> (Handle, mpsc::Receiver<Command>) {
    mpsc::channel(COMMANDS_DEPTH)
}

/// Runs until every handle is gone, or a `Stop` has done its work.
pub async fn run(
    node: u64,
    shard: u16,
    peers: Vec<Peer>,
    mut commands: mpsc::Receiver<Command>,
    metadata: Arc<Metadata>,
    timing: crate::config::RaftTiming,
) {
    let mut links = crate::controller::driver::open_peer_links(node, &peers, PEER_QUEUE_DEPTH);
    let mut send = |to: u64, message: PeerMessage| {
        let Some(link) = links.get_mut(&to) else {
            tracing::warn!(node, shard, to, "replication: a message to a node not among the peers");
            return;
        };
        match (PeerFrame { from: node, message }).encode() {
            Ok(bytes) => {
                if link.try_send(bytes).is_err() {
                    tracing::debug!(node, shard, to, "replication: peer queue full, frame dropped");
                }
            }
            Err(error) => tracing::error!(node, shard, to, %error, "replication: frame not sent"),
        }
    };
    let tick = timing.tick;
    let mut set = ReplicaSet::new(node, peers.iter().map(|peer| peer.id).collect(), timing.election_ticks);
    let mut views: BTreeMap<u64, Rc<ReplicaView>> = BTreeMap::new();
    let mut next_tick = Instant::now() + tick;
    let mut stopping: Option<(Instant, oneshot::Sender<()>)> = None;
    let mut retention_due = false;
    // Each turn's writes wait for their fdatasync in tasks of their own
    // (the log's group commit), so the next turn goes on meanwhile; each
    // says here when it is done.
    let (synced_tx, mut synced) = mpsc::unbounded::<(u64, Result<(), storage::StorageError>)>();
    let mut stopped: Vec<super::set::Stopped> = Vec::new();
    loop {
        if !set.has_ready() {
            let wait = next_tick.saturating_duration_since(Instant::now());
            futures::select! {
                command = commands.next() => match command {
                    Some(command) => take(command, &mut set, &mut views, &mut stopping, &mut retention_due, &metadata),
                    None => break,
                },
                done = synced.next() => if let Some((group, result)) = done {
                    stopped.extend(set.synced(group, result, &mut send));
                },
                _ = glommio::timer::sleep(wait).fuse() => {}
            }
        }
        while let Ok((group, result)) = synced.try_recv() {
            stopped.extend(set.synced(group, result, &mut send));
        }
        set.flush(&mut send);
        // What else has arrived goes into the same turn.
        while let Ok(command) = commands.try_recv() {
            take(
                command,
                &mut set,
                &mut views,
                &mut stopping,
                &mut retention_due,
                &metadata,
            );
        }
        let now = Instant::now();
        if now >= next_tick {
            // A node back in a new incarnation is swapped into the groups
            // led here (a check of each led group's voters).
            if let Some(cluster) = metadata.snapshot().cluster.clone() {
                let nodes = &cluster.nodes;
                set.reconfigure(&|node| {
                    nodes
                        .get(&node)
                        .map(|info| net::cluster::member_id(node, info.incarnation))
                });
            }
            set.tick(&mut send);
            next_tick += tick;
            if next_tick < now {
                next_tick = now + tick;
            }
        }
        let turn = set.drive(&mut send).await;
        for sync in turn.syncs {
            let synced_tx = synced_tx.clone();
            glommio::spawn_local(async move {
                let _ = synced_tx.unbounded_send(sync.wait().await);
            })
            .detach();
        }
        for stopped in turn.stopped.into_iter().chain(stopped.drain(..)) {
            forget(stopped.group, &mut views, &metadata);
        }
        for (group, replica) in set.iter_mut() {
            let view = views.get(&group).expect("every replica has its view");
            if view.update(replica) {
                metadata.set_leadership(group, Some(view.leadership()));
            }
        }
        if std::mem::take(&mut retention_due) {
            for stopped in set.apply_retention(&mut send).await {
                forget(stopped.group, &mut views, &metadata);
            }
        }
        if let Some((until, _)) = &stopping {
            let led = views.values().filter(|v| v.is_leader()).count();
            if led == 0 || Instant::now() >= *until {
                if led > 0 {
                    tracing::warn!(
                        node,
                        shard,
                        led,
                        "stopping: groups still led here after the hand-over wait"
                    );
                }
                let (_, reply) = stopping.take().expect("stopping");
                let _ = reply.send(());
                break;
            }
        }
    }
    for view in views.values() {
        view.close();
    }
}

/// A group whose replica is gone from this shard (let go, or stopped by a
/// failed write) is no longer served here: its view's waiters are told,
/// and the node stops naming a leader for it.
fn forget(group: u64, views: &mut BTreeMap<u64, Rc<ReplicaView>>, metadata: &Metadata) {
    if let Some(view) = views.remove(&group) {
        view.close();
    }
    metadata.set_leadership(group, None);
}

fn take(
    command: Command,
    set: &mut ReplicaSet,
    views: &mut BTreeMap<u64, Rc<ReplicaView>>,
    stopping: &mut Option<(Instant, oneshot::Sender<()>)>,
    retention_due: &mut bool,
    metadata: &Metadata,
) {
    match command {
        Command::Open { group, replica, view } => match set.insert(group, *replica) {
            Ok(()) => {
                views.insert(group, view);
            }
            Err(error) => {
                tracing::error!(group, %error, "replication: replica not taken");
                view.close();
            }
        },
        Command::Close { group, reply } => {
            // Its waiting produce requests see their replies dropped.
            set.remove(group);
            forget(group, views, metadata);
            let _ = reply.send(());
        }
        Command::Propose {
            group,
            frame,
            acks,
            min_insync,
            reply,
        } => {
            let proposed = proposing(set, group, stopping.is_some()).and_then(|r| r.propose(frame, acks, min_insync));
            let _ = reply.send(proposed);
        }
        Command::DeleteRecords { group, offset, reply } => {
            let proposed = proposing(set, group, stopping.is_some()).and_then(|r| r.propose_log_start(offset));
            let _ = reply.send(proposed);
        }
        Command::Step { from, messages } => set.step(from, messages),
        Command::Transfer { group, to } => match set.get_mut(group) {
            Some(replica) => replica.transfer_leader(to),
            None => tracing::debug!(group, to, "transfer of a group not held here, dropped"),
        },
        Command::Retention => *retention_due = true,
        Command::Stop { until, reply } => {
            for (group, replica) in set.iter_mut() {
                if let Some(transferee) = replica.hand_over() {
                    tracing::info!(group, transferee, "stopping: handing the partition's leadership over");
                }
            }
            *stopping = Some((until, reply));
        }
    }
}

/// Longest a produce waits for its batch's outcome: past it the answer is
/// REQUEST_TIMED_OUT, the outcome unknown (a leader cut off from its
/// followers commits nothing, and keeps the request while it may still).
pub const COMMIT_WAIT_MAX: Duration = Duration::from_secs(30);

/// The replica of `group` to propose to: none while the task stops (its
/// groups are being handed over), nor for a group this shard does not hold.
fn proposing(set: &mut ReplicaSet, group: u64, stopping: bool) -> Result<&mut PartitionReplica, BrokerError> {
    match set.get_mut(group) {
        Some(replica) if !stopping => Ok(replica),
        Some(replica) => Err(BrokerError::NotLeaderOrFollower {
            topic: replica.topic().to_string(),
            partition: replica.partition(),
            leader: None,
        }),
        None => Err(BrokerError::Replication {
            topic: String::new(),
            partition: super::group_partition(group).1,
            reason: format!("group {group} is not held by this shard"),
        }),
    }
}
