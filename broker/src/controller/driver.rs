//! Runs this node's controller replica on shard 0: its log file, Raft's
//! clock, the internal listener where peers' frames arrive, a connection to
//! each peer, and this node's registration in the cluster metadata.
//!
//! One task owns the replica, so nothing steps or proposes between a
//! `begin_ready` and its `end_ready`; connections hand it what they read
//! through a bounded inbox. Messages to a peer whose queue is full are
//! dropped: Raft sends again what a peer did not acknowledge.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::{mpsc, oneshot};
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, SinkExt, StreamExt};
use glommio::net::{TcpListener, TcpStream};
use net::cluster::{
    ControllerCommand, ControllerStatus, PeerFrame, PeerMessage, CONTROLLER_GROUP, PEER_FRAME_HEADER_BYTES,
};
use protobuf::Message as _;
use raft::prelude::Message;

use super::replica::ControllerReplica;
use super::ClusterMetadata;
use crate::config::{Peer, RaftTiming};
use crate::error::BrokerError;

/// What the connections may hand the replica before they wait.
const INBOX_DEPTH: usize = 1024;
/// Frames queued to one peer; past it, new ones are dropped.
const PEER_QUEUE_DEPTH: usize = 256;
/// Between attempts to reach a peer that is down.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);
/// Between attempts to register this node until the metadata shows it.
const REGISTER_RETRY: Duration = Duration::from_secs(1);
/// Peer connections accepted at once.
const PEER_CONNECTIONS_MAX: usize = 4 * net::cluster::NODES_MAX;
/// The sender id of a frame from a client of the internal port (`corelog
/// cluster status`), not a node.
pub const CLIENT_SENDER: u64 = u64::MAX;

enum Inbound {
    Step(Message),
    Propose(ControllerCommand),
    Status(oneshot::Sender<ControllerStatus>),
}

/// A topic's replicas when its creation names none, at most: fewer on a
/// cluster of fewer voters. Three survive the loss of one node.
pub const DEFAULT_REPLICATION_FACTOR: usize = 3;

/// Longest a stopping leader waits for its follower to take over.
pub const HAND_OVER_WAIT: Duration = Duration::from_secs(2);

/// The controller log file under the data directory.
pub fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("controller").join("raft.log")
}

/// The file under the data directory naming which life of the node the
/// directory is: `incarnation directory-id`.
pub fn incarnation_path(data_dir: &Path) -> PathBuf {
    data_dir.join("controller").join("incarnation")
}

/// A replica opened on its log file, ready to run.
pub struct Opened {
    node: u64,
    /// Which life of the node this data directory is.
    pub incarnation: u32,
    peers: Vec<Peer>,
    path: PathBuf,
    file: Arc<std::fs::File>,
    replica: ControllerReplica,
    timing: RaftTiming,
}

/// Opens node `node`'s replica from its log file and applies what the log
/// says was committed: before the node says it is up (and before its
/// shards start), so that a damaged log stops the start and the shards
/// open the partitions the controller last placed here. A node whose data
/// directory was lost first comes back as a new incarnation
/// (`incarnation`).
pub fn open(node: u64, peers: Vec<Peer>, data_dir: &Path, timing: RaftTiming) -> Result<Opened, BrokerError> {
    let path = log_path(data_dir);
    let (file, log) = open_log(&path)?;
    let incarnation = incarnation(node, &peers, data_dir, log.is_empty())?;
    let voters: Vec<u64> = peers.iter().map(|p| p.id).collect();
    let member = net::cluster::member_id(node, incarnation);
    let mut replica = ControllerReplica::open(member, &voters, &log, &timing)?;
    // Nothing to send yet: no peer is known to be up, and Raft sends again
    // whatever a peer has not acknowledged.
    while let Some(mut work) = replica.begin_ready()? {
        if let Some(batch) = work.batch.take() {
            append_sync(&file, &batch, &path)?;
        }
        replica.end_ready(work);
    }
    tracing::info!(
        node,
        incarnation,
        voters = ?voters,
        applied = replica.metadata().applied_index,
        topics = replica.metadata().topics.len(),
        "controller replica opened"
    );
    Ok(Opened {
        node,
        incarnation,
        peers,
        path,
        file,
        replica,
        timing,
    })
}

impl Opened {
    pub fn metadata(&self) -> &ClusterMetadata {
        self.replica.metadata()
    }
}

/// Which life of node `node` its data directory is: the one its
/// `incarnation` file names; a directory with a controller log and no such
/// file is a first life from before the file (0).
///
/// An empty directory is a node new to its cluster, or one whose data
/// directory was lost. A node that lost it forgot the votes it gave and
/// the entries it acknowledged, and a voter that forgot them can help
/// elect a leader missing committed entries, in the controller's group and
/// in every partition's. So it must not come back as the same Raft member:
/// if a peer's metadata has the node registered, it asks the controller's
/// leader, through every peer, to commit its next incarnation under a
/// directory id it draws (KIP-853), until a peer's metadata shows that
/// incarnation with its directory; then it writes the file, before any
/// Raft state. A node registered nowhere (a new cluster, or every peer
/// silent) starts as its first incarnation.
fn incarnation(node: u64, peers: &[Peer], data_dir: &Path, log_empty: bool) -> Result<u32, BrokerError> {
    let path = incarnation_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return text
                .split_whitespace()
                .next()
                .and_then(|word| word.parse().ok())
                .ok_or_else(|| BrokerError::Config(format!("{}: no incarnation in {text:?}", path.display())));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(BrokerError::Io {
                op: "read",
                path,
                source,
            })
        }
    }
    let (incarnation, directory) = if log_empty { rejoin(node, peers)? } else { (0, 0) };
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let temp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&temp)?;
        writeln!(file, "{incarnation} {directory}")?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        std::fs::File::open(path.parent().expect("under the data directory"))?.sync_all()
    };
    write().map_err(|source| BrokerError::Io {
        op: "write",
        path: path.clone(),
        source,
    })?;
    Ok(incarnation)
}

/// Longest a node back with its data directory lost waits for its new
/// incarnation to be committed (a controller majority must be up).
const REJOIN_WAIT: Duration = Duration::from_secs(60);
/// Between its rounds of asking the peers.
const REJOIN_RETRY: Duration = Duration::from_millis(500);

/// The (incarnation, directory id) an empty data directory starts as:
/// (0, 0) for a node no peer knows; for a registered one, the next
/// incarnation, once committed with a directory id drawn here.
fn rejoin(node: u64, peers: &[Peer]) -> Result<(u32, u64), BrokerError> {
    let others: Vec<&Peer> = peers.iter().filter(|p| p.id != node).collect();
    let registered = |statuses: &[ControllerStatus]| {
        statuses
            .iter()
            .flat_map(|status| status.nodes.iter())
            .filter(|known| known.id == node)
            .max_by_key(|known| known.incarnation)
            .map(|known| (known.incarnation, known.directory))
    };
    let ask = |timeout: Duration| -> Vec<ControllerStatus> {
        others
            .iter()
            .filter_map(|peer| match peer_status(&peer.rpc_addr.to_string(), timeout) {
                Ok(status) => Some(status),
                Err(error) => {
                    tracing::debug!(peer = peer.id, %error, "no status from a peer at start");
                    None
                }
            })
            .collect()
    };
    let Some((mut current, _)) = registered(&ask(LOST_DIRECTORY_ASK)) else {
        return Ok((0, 0));
    };
    let directory = draw_directory_id()?;
    let deadline = Instant::now() + REJOIN_WAIT;
    tracing::warn!(
        node,
        incarnation = current + 1,
        "the data directory is empty, but the cluster has this node registered: its directory was lost. \
         Rejoining as a new incarnation, refilled by the other replicas"
    );
    loop {
        let command = ControllerCommand::Reincarnate {
            node,
            incarnation: current + 1,
            directory,
        };
        for peer in &others {
            if let Err(error) = propose_to(node, &peer.rpc_addr.to_string(), &command, LOST_DIRECTORY_ASK) {
                tracing::debug!(peer = peer.id, %error, "rejoin: proposal not sent");
            }
        }
        std::thread::sleep(REJOIN_RETRY);
        if let Some((incarnation, drawn)) = registered(&ask(LOST_DIRECTORY_ASK)) {
            if (incarnation, drawn) == (current + 1, directory) {
                tracing::info!(node, incarnation, directory, "rejoined as a new incarnation");
                return Ok((incarnation, directory));
            }
            // Another directory's comeback (an attempt that crashed before
            // its file was written, which never ran): the next one.
            current = current.max(incarnation);
        }
        if Instant::now() >= deadline {
            return Err(BrokerError::Config(format!(
                "node {node}: its data directory is empty and the cluster has it registered (its directory was \
                 lost), but no controller leader committed its comeback as incarnation {} within {REJOIN_WAIT:?}: \
                 a majority of the peers must be up",
                current + 1
            )));
        }
    }
}

/// A random id for a new data directory (KIP-853's directory id): how a
/// node tells its own comeback from another's.
fn draw_directory_id() -> Result<u64, BrokerError> {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|source| BrokerError::Io {
            op: "read",
            path: "/dev/urandom".into(),
            source,
        })?;
    Ok(u64::from_le_bytes(bytes).max(1))
}

/// Sends `command` to a peer's internal port for its controller's leader
/// to propose (a follower drops it).
fn propose_to(node: u64, addr: &str, command: &ControllerCommand, timeout: Duration) -> Result<(), String> {
    use std::io::Write;
    let mut stream = connect(addr, timeout)?;
    let frame = PeerFrame {
        from: node,
        message: PeerMessage::Propose {
            command: command.encode(),
        },
    };
    stream
        .write_all(&frame.encode().map_err(|e| e.to_string())?)
        .map_err(|e| format!("send to {addr}: {e}"))
}

/// A blocking connection to a peer's internal port, within `timeout`
/// (before the node's shards run: its start asks its peers).
fn connect(addr: &str, timeout: Duration) -> Result<std::net::TcpStream, String> {
    use std::net::ToSocketAddrs;
    let socket = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} names no address"))?;
    std::net::TcpStream::connect_timeout(&socket, timeout).map_err(|e| format!("connect to {addr}: {e}"))
}

/// Longest a starting node with an empty log waits for each peer's status.
const LOST_DIRECTORY_ASK: Duration = Duration::from_secs(2);

/// A node's view of the controller, asked on its internal port (what
/// `corelog cluster status` prints), within `timeout`.
pub fn peer_status(addr: &str, timeout: Duration) -> Result<ControllerStatus, String> {
    use std::io::{Read, Write};
    let mut stream = connect(addr, timeout)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| format!("{addr}: {e}"))?;
    let request = PeerFrame {
        from: CLIENT_SENDER,
        message: PeerMessage::StatusRequest,
    };
    stream
        .write_all(&request.encode().map_err(|e| e.to_string())?)
        .map_err(|e| format!("ask {addr}: {e}"))?;
    let mut header = [0u8; PEER_FRAME_HEADER_BYTES];
    stream
        .read_exact(&mut header)
        .map_err(|e| format!("read {addr}'s answer: {e}"))?;
    let (len, crc) = PeerFrame::header(header).map_err(|e| format!("{addr}: {e}"))?;
    let mut archive = vec![0u8; len];
    stream
        .read_exact(&mut archive)
        .map_err(|e| format!("read {addr}'s answer: {e}"))?;
    let frame = PeerFrame::decode(crc, &archive).map_err(|e| format!("{addr}: {e}"))?;
    match frame.message {
        PeerMessage::Status(status) => Ok(status),
        _ => Err(format!("{addr} answered something other than its status")),
    }
}

/// What a shard asks of the controller.
pub enum Request {
    CreateTopic {
        name: String,
        partitions: u32,
        /// None: the cluster's default.
        replication_factor: Option<u16>,
        configs: BTreeMap<String, String>,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
    DeleteTopic {
        name: String,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
    AlterTopicConfigs {
        name: String,
        changes: crate::topics::ConfigChanges,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
    CreatePartitions {
        name: String,
        count: u32,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
}

/// Requests from the shards waiting for the controller's task.
pub const REQUESTS_DEPTH: usize = 256;

/// How any shard reaches the controller's task on shard 0.
#[derive(Clone)]
pub struct Handle(flume::Sender<Request>);

impl Handle {
    pub fn new() -> (Handle, flume::Receiver<Request>) {
        let (tx, rx) = flume::bounded(REQUESTS_DEPTH);
        (Handle(tx), rx)
    }

    /// Creates a topic through the controller: answers once this node's
    /// controller replica, as the leader, has applied it (its shards open
    /// their partitions after), or NotController (naming the leader) on a
    /// follower.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: Option<u16>,
        configs: BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        let (reply, answer) = oneshot::channel();
        self.call(
            Request::CreateTopic {
                name: name.to_string(),
                partitions,
                replication_factor,
                configs,
                reply,
            },
            answer,
        )
        .await
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        let (reply, answer) = oneshot::channel();
        self.call(
            Request::DeleteTopic {
                name: name.to_string(),
                reply,
            },
            answer,
        )
        .await
    }

    /// Changes a topic's configs through the controller, checked whole on
    /// the leader against the configs it holds; answered as `create_topic`.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        changes: crate::topics::ConfigChanges,
    ) -> Result<(), BrokerError> {
        let (reply, answer) = oneshot::channel();
        self.call(
            Request::AlterTopicConfigs {
                name: name.to_string(),
                changes,
                reply,
            },
            answer,
        )
        .await
    }

    /// Grows a topic to `count` partitions through the controller, placed
    /// by its leader; answered as `create_topic`.
    pub async fn create_partitions(&self, name: &str, count: u32) -> Result<(), BrokerError> {
        let (reply, answer) = oneshot::channel();
        self.call(
            Request::CreatePartitions {
                name: name.to_string(),
                count,
                reply,
            },
            answer,
        )
        .await
    }

    async fn call(
        &self,
        request: Request,
        answer: oneshot::Receiver<Result<(), BrokerError>>,
    ) -> Result<(), BrokerError> {
        let gone = || BrokerError::Controller("the controller's task has stopped".into());
        self.0.send_async(request).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// An internal topic the controller's leader creates once every voter has
/// registered.
pub struct InternalTopic {
    pub name: String,
    pub partitions: u32,
    pub configs: BTreeMap<String, String>,
}

/// Told on shard 0 of the applied metadata and the known leader.
pub type OnChange = Box<dyn Fn(&ClusterMetadata, Option<u64>)>;

/// A peer's Raft messages for partition groups, each with its group.
pub type GroupMessages = Vec<(u64, Vec<u8>)>;

/// Where the internal listener hands what a peer says of partitions.
#[derive(Clone)]
pub struct Route {
    /// Raft messages for partition groups, to the shards that own them on
    /// this node.
    pub raft: Rc<dyn Fn(u64, GroupMessages)>,
    /// The groups a peer says it leads (`replication::leaders`).
    pub leaders: Rc<dyn Fn(u64, Vec<net::cluster::LeaderNote>)>,
}

/// What the controller's task is wired to beside its peers.
pub struct Wiring {
    pub requests: flume::Receiver<Request>,
    pub internal_topics: Vec<InternalTopic>,
    /// Called on shard 0 whenever the applied metadata or the known leader
    /// changes.
    pub on_change: OnChange,
    pub route: Route,
}

/// A shard's request waiting for its proposal's outcome.
struct Waiting {
    proposal: u64,
    reply: oneshot::Sender<Result<(), BrokerError>>,
}

/// Runs the replica until `stop` fires (or the task is dropped): then a
/// leader hands its leadership over, waits up to `HAND_OVER_WAIT` for the
/// follower to take it, and returns.
pub async fn run(
    opened: Opened,
    listener: TcpListener,
    registration: ControllerCommand,
    wiring: Wiring,
    stop: oneshot::Receiver<()>,
) -> Result<(), BrokerError> {
    let Wiring {
        requests,
        internal_topics,
        on_change,
        route,
    } = wiring;
    let Opened {
        node,
        incarnation: _,
        peers,
        path,
        file,
        mut replica,
        timing,
    } = opened;
    let tick = timing.tick;
    let voters: Vec<u64> = peers.iter().map(|p| p.id).collect();
    let (inbox_tx, mut inbox) = mpsc::channel::<Inbound>(INBOX_DEPTH);
    glommio::spawn_local(accept_loop(listener, inbox_tx, Rc::new(voters.clone()), route)).detach();
    let links = open_peer_links(node, &peers, PEER_QUEUE_DEPTH);
    let mut links = Links { node, links };
    let mut next_tick = Instant::now() + tick;
    let mut registered_at: Option<Instant> = None;
    let mut stop = stop.fuse();
    // Set once stopping: until when to wait for the follower told to lead.
    let mut handing_over: Option<Instant> = None;
    let mut waiting: Vec<Waiting> = Vec::new();
    let mut published = (replica.metadata().applied_index, replica.leader());
    on_change(replica.metadata(), published.1);
    let mut internal_proposed_at: Option<Instant> = None;
    loop {
        if let Some(until) = handing_over {
            if !replica.is_leader() || Instant::now() >= until {
                tracing::info!(node, leader = ?replica.leader(), "controller replica stopped");
                return Ok(());
            }
        }
        let wait = next_tick.saturating_duration_since(Instant::now());
        futures::select! {
            inbound = inbox.next() => match inbound {
                Some(inbound) => handle(&mut replica, inbound),
                None => return Ok(()),
            },
            request = requests.recv_async().fuse() => match request {
                Ok(request) => serve(&mut replica, voters.len(), request, &mut waiting),
                // Every shard has gone: the node is stopping.
                Err(_) => return Ok(()),
            },
            _ = stop => {
                if let Some(transferee) = replica.hand_over() {
                    tracing::info!(node, transferee, "stopping: handing the controller's leadership over");
                }
                handing_over = Some(Instant::now() + HAND_OVER_WAIT);
            }
            _ = glommio::timer::sleep(wait).fuse() => {}
        }
        // What else has arrived goes into the same Ready.
        while let Ok(inbound) = inbox.try_recv() {
            handle(&mut replica, inbound);
        }
        while let Ok(request) = requests.try_recv() {
            serve(&mut replica, voters.len(), request, &mut waiting);
        }
        if Instant::now() >= next_tick {
            replica.tick();
            next_tick += tick;
            if next_tick < Instant::now() {
                next_tick = Instant::now() + tick;
            }
        }
        while let Some(mut work) = replica.begin_ready()? {
            links.send(&work.messages);
            if let Some(batch) = work.batch.take() {
                append(file.clone(), batch, &path).await?;
            }
            let messages = replica.end_ready(work);
            links.send(&messages);
        }
        answer_waiting(&mut replica, &mut waiting);
        let now = (replica.metadata().applied_index, replica.leader());
        if now != published {
            published = now;
            on_change(replica.metadata(), now.1);
        }
        register(&mut replica, &mut links, &registration, &mut registered_at);
        replica.reconfigure();
        create_internal_topics(&mut replica, &voters, &internal_topics, &mut internal_proposed_at);
    }
}

/// Takes a shard's request: proposed on the leader, refused elsewhere
/// with the leader named (the shard forwards it there).
fn serve(replica: &mut ControllerReplica, voters: usize, request: Request, waiting: &mut Vec<Waiting>) {
    let (command, reply) = match request {
        Request::CreateTopic {
            name,
            partitions,
            replication_factor,
            configs,
            reply,
        } => {
            let command = (|| {
                let factor = replication_factor.map_or(DEFAULT_REPLICATION_FACTOR.min(voters), usize::from);
                if replica.metadata().topics.contains_key(&name) {
                    return Err(BrokerError::TopicAlreadyExists(name.clone()));
                }
                let assignment = replica.metadata().assign(&name, partitions, factor)?;
                Ok(ControllerCommand::CreateTopic {
                    name,
                    assignment,
                    configs: configs.into_iter().collect(),
                })
            })();
            (command, reply)
        }
        Request::DeleteTopic { name, reply } => {
            let command = if replica.metadata().topics.contains_key(&name) {
                Ok(ControllerCommand::DeleteTopic { name })
            } else {
                Err(BrokerError::UnknownTopicOrPartition {
                    topic: name,
                    partition: 0,
                })
            };
            (command, reply)
        }
        Request::AlterTopicConfigs { name, changes, reply } => {
            let command = match replica.metadata().topics.get(&name) {
                None => Err(BrokerError::UnknownTopicOrPartition {
                    topic: name,
                    partition: 0,
                }),
                Some(topic) => crate::topics::log_config(&changes.apply(&topic.configs)).map(|_| {
                    ControllerCommand::AlterTopicConfigs {
                        name,
                        replace: changes.replace,
                        set: changes.set,
                        delete: changes.delete,
                    }
                }),
            };
            (command, reply)
        }
        Request::CreatePartitions { name, count, reply } => {
            let command = replica.metadata().assign_more(&name, count).map(|assignment| {
                let first = count - assignment.len() as u32;
                ControllerCommand::CreatePartitions {
                    name,
                    first,
                    assignment,
                }
            });
            (command, reply)
        }
    };
    if !replica.is_leader() {
        let _ = reply.send(Err(BrokerError::NotController {
            leader: replica.leader(),
        }));
        return;
    }
    match command.and_then(|command| replica.propose(&command)) {
        Ok(proposal) => waiting.push(Waiting { proposal, reply }),
        Err(error) => {
            let _ = reply.send(Err(error));
        }
    }
}

/// Answers the shards whose proposals have an outcome.
fn answer_waiting(replica: &mut ControllerReplica, waiting: &mut Vec<Waiting>) {
    let mut i = 0;
    while i < waiting.len() {
        match replica.outcome(waiting[i].proposal) {
            Some(outcome) => {
                let _ = waiting.swap_remove(i).reply.send(outcome);
            }
            None => i += 1,
        }
    }
}

/// On the leader, once every voter has registered: proposes the internal
/// topics the metadata lacks (again after `REGISTER_RETRY` if one did not
/// come through), replicated as any topic is by default, so that their
/// coordinators move with their leaders.
fn create_internal_topics(
    replica: &mut ControllerReplica,
    voters: &[u64],
    topics: &[InternalTopic],
    last: &mut Option<Instant>,
) {
    let metadata = replica.metadata();
    if !replica.is_leader()
        || voters.iter().any(|v| !metadata.nodes.contains_key(v))
        || last.is_some_and(|at| at.elapsed() < REGISTER_RETRY)
    {
        return;
    }
    let missing: Vec<ControllerCommand> = topics
        .iter()
        .filter(|t| !metadata.topics.contains_key(&t.name))
        .filter_map(
            |t| match metadata.assign(&t.name, t.partitions, DEFAULT_REPLICATION_FACTOR.min(voters.len())) {
                Ok(assignment) => Some(ControllerCommand::CreateTopic {
                    name: t.name.clone(),
                    assignment,
                    configs: t.configs.clone().into_iter().collect(),
                }),
                Err(error) => {
                    tracing::error!(topic = %t.name, %error, "controller: internal topic not assigned");
                    None
                }
            },
        )
        .collect();
    if missing.is_empty() {
        return;
    }
    *last = Some(Instant::now());
    for command in missing {
        if let Err(error) = replica.propose_detached(&command) {
            tracing::debug!(%error, "controller: internal topic not proposed");
        }
    }
}

fn handle(replica: &mut ControllerReplica, inbound: Inbound) {
    match inbound {
        Inbound::Step(message) => replica.step(message),
        Inbound::Propose(command) => {
            if let Err(error) = replica.propose_detached(&command) {
                tracing::debug!(%error, "controller: a peer's proposal not taken");
            }
        }
        Inbound::Status(reply) => {
            let _ = reply.send(replica.status());
        }
    }
}

/// Proposes this node's registration (on the leader, or through it) until
/// the metadata holds it as it is now.
fn register(
    replica: &mut ControllerReplica,
    links: &mut Links,
    registration: &ControllerCommand,
    last: &mut Option<Instant>,
) {
    let ControllerCommand::RegisterNode {
        node,
        shards,
        kafka_addr,
        native_addr,
        kafka_shard_addrs,
        native_shard_addrs,
    } = registration
    else {
        unreachable!("a registration registers a node");
    };
    let current = replica.metadata().nodes.get(node).is_some_and(|known| {
        known.shards == *shards
            && &known.kafka_addr == kafka_addr
            && &known.native_addr == native_addr
            && &known.kafka_shard_addrs == kafka_shard_addrs
            && &known.native_shard_addrs == native_shard_addrs
    });
    if current || last.is_some_and(|at| at.elapsed() < REGISTER_RETRY) {
        return;
    }
    let Some(leader) = replica.leader() else { return };
    *last = Some(Instant::now());
    if leader == *node {
        if let Err(error) = replica.propose_detached(registration) {
            tracing::debug!(%error, "controller: registration not proposed");
        }
    } else {
        links.frame(
            leader,
            PeerMessage::Propose {
                command: registration.encode(),
            },
        );
    }
}

struct Links {
    node: u64,
    links: BTreeMap<u64, mpsc::Sender<Vec<u8>>>,
}

impl Links {
    /// Each peer's messages of this turn in one frame.
    fn send(&mut self, messages: &[Message]) {
        let mut by_peer: BTreeMap<u64, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        for message in messages {
            let bytes = message.write_to_bytes().expect("a raft message encodes");
            by_peer
                .entry(net::cluster::node_of(message.to))
                .or_default()
                .push((CONTROLLER_GROUP, bytes));
        }
        for (peer, messages) in by_peer {
            self.frame(peer, PeerMessage::Raft { messages });
        }
    }

    fn frame(&mut self, peer: u64, message: PeerMessage) {
        let Some(link) = self.links.get_mut(&peer) else {
            tracing::warn!(peer, "controller: a message to a node not among the peers");
            return;
        };
        let frame = PeerFrame {
            from: self.node,
            message,
        };
        match frame.encode() {
            Ok(bytes) => {
                if link.try_send(bytes).is_err() {
                    tracing::debug!(peer, "controller: peer queue full, frame dropped");
                }
            }
            Err(error) => tracing::error!(peer, %error, "controller: frame not sent"),
        }
    }
}

/// Keeps a connection to `peer` and writes its frames; frames queued while
/// it is down wait, up to the queue's depth. The controller's task has
/// one to each peer, and so has each shard's replication task.
/// Frames and bytes written to peers by every link of this process (each
/// shard's, the controller's and the partitions'), for `cluster status`.
pub static PEER_FRAMES_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static PEER_BYTES_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A `peer_link` of its own to every peer but `node`, each taking up to
/// `depth` frames: the senders, by peer.
pub(crate) fn open_peer_links(node: u64, peers: &[Peer], depth: usize) -> BTreeMap<u64, mpsc::Sender<Vec<u8>>> {
    peers
        .iter()
        .filter(|p| p.id != node)
        .map(|p| {
            let (tx, rx) = mpsc::channel(depth);
            glommio::spawn_local(peer_link(p.id, p.rpc_addr, rx)).detach();
            (p.id, tx)
        })
        .collect()
}

pub(crate) async fn peer_link(peer: u64, addr: std::net::SocketAddr, mut frames: mpsc::Receiver<Vec<u8>>) {
    let mut pending: Option<Vec<u8>> = None;
    loop {
        let mut stream = match TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(peer, %addr, %error, "internal port: peer unreachable");
                glommio::timer::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        loop {
            let frame = match pending.take() {
                Some(frame) => frame,
                None => match frames.next().await {
                    Some(frame) => frame,
                    None => return,
                },
            };
            if let Err(error) = stream.write_all(&frame).await {
                tracing::debug!(peer, %addr, %error, "internal port: peer connection lost");
                pending = Some(frame);
                break;
            }
            PEER_FRAMES_SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            PEER_BYTES_SENT.fetch_add(frame.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        glommio::timer::sleep(RECONNECT_DELAY).await;
    }
}

async fn accept_loop(listener: TcpListener, inbox: mpsc::Sender<Inbound>, voters: Rc<Vec<u64>>, route: Route) {
    let connections = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "controller: accept failed");
                glommio::timer::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        if connections.get() >= PEER_CONNECTIONS_MAX {
            tracing::warn!(max = PEER_CONNECTIONS_MAX, "internal port: connection limit reached");
            continue;
        }
        connections.set(connections.get() + 1);
        let (inbox, connections, voters, route) = (inbox.clone(), connections.clone(), voters.clone(), route.clone());
        glommio::spawn_local(async move {
            if let Err(error) = peer_connection(stream, inbox, &voters, &route).await {
                tracing::debug!(%error, "internal port: connection ended");
            }
            connections.set(connections.get() - 1);
        })
        .detach();
    }
}

/// Reads a peer's (or a client's) frames until it goes; a malformed one
/// ends the connection, never the node. Raft messages come only from the
/// voters, and a proposal only as a voter's registration of itself: a
/// client of the internal port may ask for the status, nothing more.
async fn peer_connection(
    mut stream: TcpStream,
    mut inbox: mpsc::Sender<Inbound>,
    voters: &[u64],
    route: &Route,
) -> Result<(), BrokerError> {
    let io = |op: &'static str| {
        move |e: std::io::Error| BrokerError::Io {
            op,
            path: "internal port".into(),
            source: e,
        }
    };
    let malformed = |e: net::NetError| BrokerError::Controller(format!("internal port: {e}"));
    loop {
        let mut header = [0u8; PEER_FRAME_HEADER_BYTES];
        match stream.read_exact(&mut header).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(io("read a frame from")(e)),
        }
        let (len, crc) = PeerFrame::header(header).map_err(malformed)?;
        let mut archive = vec![0u8; len];
        stream.read_exact(&mut archive).await.map_err(io("read a frame from"))?;
        let frame = PeerFrame::decode(crc, &archive).map_err(malformed)?;
        let voter = voters.contains(&frame.from);
        match frame.message {
            PeerMessage::Raft { .. } | PeerMessage::Propose { .. } | PeerMessage::Leaders { .. } if !voter => {
                return Err(BrokerError::Controller(format!(
                    "internal port: node {} is not a voter ({voters:?})",
                    frame.from
                )));
            }
            PeerMessage::Raft { messages } => {
                // An empty frame is a shard's beat (`replication::set`):
                // every shard here hears the node is up.
                let beat = messages.is_empty();
                let (controller, partitions): (Vec<_>, Vec<_>) =
                    messages.into_iter().partition(|(group, _)| *group == CONTROLLER_GROUP);
                if !partitions.is_empty() || beat {
                    // Each is checked by the replica set it reaches.
                    (route.raft)(frame.from, partitions);
                }
                for (_, bytes) in controller {
                    let message = Message::parse_from_bytes(&bytes)
                        .map_err(|e| BrokerError::Controller(format!("node {}: a raft message: {e}", frame.from)))?;
                    if net::cluster::node_of(message.from) != frame.from {
                        return Err(BrokerError::Controller(format!(
                            "node {} sent a raft message from node {}",
                            frame.from, message.from
                        )));
                    }
                    if inbox.send(Inbound::Step(message)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            PeerMessage::Propose { command } => {
                let command = ControllerCommand::decode(&command).map_err(malformed)?;
                let own = match &command {
                    ControllerCommand::RegisterNode { node, .. } | ControllerCommand::Reincarnate { node, .. } => {
                        *node == frame.from
                    }
                    _ => false,
                };
                if !own {
                    return Err(BrokerError::Controller(format!(
                        "node {} proposed something other than its own registration or comeback",
                        frame.from
                    )));
                }
                if inbox.send(Inbound::Propose(command)).await.is_err() {
                    return Ok(());
                }
            }
            PeerMessage::StatusRequest => {
                let (tx, rx) = oneshot::channel();
                if inbox.send(Inbound::Status(tx)).await.is_err() {
                    return Ok(());
                }
                let Ok(status) = rx.await else { return Ok(()) };
                let reply = PeerFrame {
                    from: status.node,
                    message: PeerMessage::Status(status),
                };
                let bytes = reply.encode().map_err(malformed)?;
                stream.write_all(&bytes).await.map_err(io("answer on"))?;
            }
            PeerMessage::Leaders { leaders } => (route.leaders)(frame.from, leaders),
            PeerMessage::Status(_) => {
                return Err(BrokerError::Controller(format!(
                    "node {} sent an unasked status",
                    frame.from
                )));
            }
        }
    }
}

/// Reads the log file (created empty if new, with its directory) and cuts
/// a torn last batch off it, so that the batches appended next follow
/// whole ones.
fn open_log(path: &Path) -> Result<(Arc<std::fs::File>, Vec<u8>), BrokerError> {
    let dir = path.parent().expect("the log is in a directory");
    std::fs::create_dir_all(dir).map_err(|source| BrokerError::Io {
        op: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let (file, bytes) = storage::record_file::open(path).map_err(|e| BrokerError::Controller(e.to_string()))?;
    Ok((Arc::new(file), bytes))
}

/// Appends one batch and makes it durable, on the calling thread.
fn append_sync(file: &std::fs::File, batch: &[u8], path: &Path) -> Result<(), BrokerError> {
    storage::record_file::append(file, path, batch, true).map_err(|e| BrokerError::Controller(e.to_string()))
}

/// Appends one batch and makes it durable, off the shard's thread.
async fn append(file: Arc<std::fs::File>, batch: Vec<u8>, path: &Path) -> Result<(), BrokerError> {
    let path = path.to_path_buf();
    storage::blocking::off_shard(move || append_sync(&file, &batch, &path)).await
}
