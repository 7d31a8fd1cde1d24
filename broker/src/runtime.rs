//! Starting and stopping the shards.
//!
//! Startup order: load the topic table; reserve the listen addresses
//! (binding port 0 resolves it once, so that every shard binds the same port
//! with SO_REUSEPORT) and, with `shard_ports`, each shard's own ports, so
//! every shard can advertise all of them; start one executor thread per
//! shard, each pinned to its core, opening (recovering) its own partitions
//! before it accepts; once all listen, report the address. SIGINT or SIGTERM asks every shard to stop:
//! it stops taking requests from other shards, flushes and closes its logs.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};

use crate::offsets::OFFSETS_TOPIC;
use crate::txn::TXN_STATE_TOPIC;

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::shard::{Shard, ShardMessage};
use crate::topics::Metadata;

pub struct Running {
    pub addr: SocketAddr,
    /// The Kafka listener's bound address, if it is on.
    pub kafka_addr: Option<SocketAddr>,
    /// Each shard's own native and Kafka addresses, by shard id
    /// (`shard_ports`; empty without).
    pub shard_addrs: Vec<SocketAddr>,
    pub kafka_shard_addrs: Vec<SocketAddr>,
    /// The internal listener's address, when the node has peers.
    pub rpc_addr: Option<SocketAddr>,
    /// The metrics and health listener's address, unless it is off.
    pub metrics_addr: Option<SocketAddr>,
    /// What `/v1/status/ready` says.
    pub health: Arc<crate::metrics::Health>,
    inboxes: Arc<Vec<flume::Sender<ShardMessage>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Asks every shard to close its logs and stop, and waits for them.
    pub fn shutdown(self) {
        for inbox in self.inboxes.iter() {
            let _ = inbox.send(ShardMessage::Shutdown);
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Binds the address without listening, so port 0 becomes a concrete port
/// that every shard can then share.
fn reserve(listen: &str) -> Result<(socket2::Socket, SocketAddr), BrokerError> {
    let addr = listen
        .to_socket_addrs()
        .map_err(|e| BrokerError::Config(format!("listen address {listen}: {e}")))?
        .next()
        .ok_or_else(|| BrokerError::Config(format!("listen address {listen} resolves to nothing")))?;
    reserve_addr(addr, listen)
}

fn reserve_addr(addr: SocketAddr, listen: &str) -> Result<(socket2::Socket, SocketAddr), BrokerError> {
    let io = |source| BrokerError::Io {
        op: "reserve listen address",
        path: listen.into(),
        source,
    };
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).map_err(io)?;
    socket.set_reuse_port(true).map_err(io)?;
    socket.set_reuse_address(true).map_err(io)?;
    socket.bind(&addr.into()).map_err(io)?;
    let bound = socket
        .local_addr()
        .map_err(io)?
        .as_socket()
        .ok_or_else(|| BrokerError::Config(format!("{listen} is not an IP address")))?;
    Ok((socket, bound))
}

/// The offsets topic's log settings: small segments, little preallocated
/// (commits are small; many brokers hold few of them).
fn offsets_topic_configs() -> std::collections::BTreeMap<String, String> {
    [
        ("segment.bytes", (64u64 << 20).to_string()),
        ("segment.preallocate.bytes", (1u64 << 20).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Where the internal listener puts what peers sent to partition groups:
/// each group's messages to the shard that owns the partition here, in
/// one message per shard. A shard whose inbox is full misses them (Raft
/// sends again), rather than the listener waiting on it. What peers say
/// they lead goes into the node's metadata.
fn route_raft(
    metadata: Arc<Metadata>,
    inboxes: Arc<Vec<flume::Sender<ShardMessage>>>,
) -> crate::controller::driver::Route {
    let learning = metadata.clone();
    let raft = Rc::new(move |from: u64, messages: Vec<(u64, Vec<u8>)>| {
        if messages.is_empty() {
            // A beat: the peer is up, for every shard's quiesced groups.
            for (shard, inbox) in inboxes.iter().enumerate() {
                if inbox
                    .try_send(ShardMessage::Raft {
                        from,
                        messages: Vec::new(),
                    })
                    .is_err()
                {
                    tracing::debug!(from, shard, "a peer's beat dropped: the shard's inbox is full");
                }
            }
            return;
        }
        let table = metadata.snapshot();
        let mut per_shard: std::collections::BTreeMap<u16, Vec<(u64, Vec<u8>)>> = Default::default();
        for (group, message) in messages {
            match table.group_owner(group) {
                Some(shard) => per_shard.entry(shard).or_default().push((group, message)),
                None => tracing::debug!(from, group, "raft message for a partition not hosted here, dropped"),
            }
        }
        for (shard, messages) in per_shard {
            let Some(inbox) = inboxes.get(usize::from(shard)) else {
                continue;
            };
            if inbox.try_send(ShardMessage::Raft { from, messages }).is_err() {
                tracing::debug!(from, shard, "raft messages dropped: the shard's inbox is full");
            }
        }
    });
    crate::controller::driver::Route {
        raft,
        leaders: Rc::new(move |from, notes| learning.learn_leaders(from, notes)),
    }
}

pub fn start(mut config: BrokerConfig) -> Result<Running, BrokerError> {
    config.validate()?;
    let cpus = config.shard_cpus()?;
    let shards = cpus.len() as u16;
    let metadata = Arc::new(Metadata::load(&config.data_dir, shards)?);
    let peers = config.cluster_peers()?;
    // In a cluster the controller's log says which topics there are and
    // which partitions this node hosts: read before the shards open them.
    let opened = if peers.is_empty() {
        None
    } else {
        if u32::from(shards) > net::cluster::SHARDS_MAX {
            return Err(BrokerError::Config(format!(
                "{shards} shards: a node of a cluster has at most {}",
                net::cluster::SHARDS_MAX
            )));
        }
        let opened =
            crate::controller::driver::open(config.node_id, peers.clone(), &config.data_dir, config.raft_timing())?;
        config.incarnation = opened.incarnation;
        metadata.replace(crate::topics::TopicTable::from_controller(
            config.node_id,
            opened.metadata(),
            None,
        ));
        Some(opened)
    };
    if opened.is_none() && !metadata.snapshot().topics.contains_key(OFFSETS_TOPIC) {
        metadata.create(OFFSETS_TOPIC, config.offsets_topic_partitions, offsets_topic_configs())?;
        tracing::debug!(partitions = config.offsets_topic_partitions, "created {OFFSETS_TOPIC}");
    }
    if opened.is_none() && !metadata.snapshot().topics.contains_key(TXN_STATE_TOPIC) {
        metadata.create(
            TXN_STATE_TOPIC,
            config.transaction_state_partitions,
            offsets_topic_configs(),
        )?;
        tracing::debug!(
            partitions = config.transaction_state_partitions,
            "created {TXN_STATE_TOPIC}"
        );
    }
    let producer_ids = Arc::new(std::sync::Mutex::new(
        crate::producer_state::ProducerIdAllocator::open_for(
            &config.data_dir,
            opened.as_ref().map(|_| (config.node_id, config.incarnation)),
        )
        .map_err(|source| BrokerError::Io {
            op: "read producer ids in",
            path: config.data_dir.clone(),
            source,
        })?,
    ));
    let (reserved, addr) = reserve(&config.listen)?;
    let kafka = if config.kafka_listen == "none" {
        None
    } else {
        Some(reserve(&config.kafka_listen)?)
    };
    let kafka_addr = kafka.as_ref().map(|(_, addr)| *addr);
    let metrics_listener = if config.metrics_listen == "none" {
        None
    } else {
        let listener = std::net::TcpListener::bind(&config.metrics_listen).map_err(|source| BrokerError::Io {
            op: "listen (metrics) on",
            path: config.metrics_listen.clone().into(),
            source,
        })?;
        Some(listener)
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    // Each shard's own ports, reserved like the shared ones so that every
    // shard can advertise all of them before any accepts.
    let reserve_shards = |bound: SocketAddr, configured: &str, listener: &str| {
        if !config.shard_ports {
            return Ok(Vec::new());
        }
        // Free ports for the shards when the shared one was left to the
        // kernel too (the bound port is then a random one, its successors
        // anyone's).
        let fixed = configured
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .is_some_and(|port| port != 0);
        (0..shards)
            .map(|shard| {
                let port = if fixed {
                    bound
                        .port()
                        .checked_add(1 + shard)
                        .ok_or_else(|| BrokerError::Config(format!("{listener} port of shard {shard} is past 65535")))?
                } else {
                    0
                };
                reserve_addr(
                    SocketAddr::new(bound.ip(), port),
                    &format!("{listener} port of shard {shard}"),
                )
            })
            .collect::<Result<Vec<_>, BrokerError>>()
    };
    let native_shards = reserve_shards(addr, &config.listen, "native")?;
    let shard_addrs: Vec<SocketAddr> = native_shards.iter().map(|(_, addr)| *addr).collect();
    let kafka_shards = match kafka_addr {
        Some(bound) => reserve_shards(bound, &config.kafka_listen, "kafka")?,
        None => Vec::new(),
    };
    let native = Arc::new(crate::server::Endpoints {
        bootstrap: addr,
        shards: shard_addrs.clone(),
    });
    let kafka_shard_addrs: Vec<SocketAddr> = kafka_shards.iter().map(|(_, addr)| *addr).collect();
    let advertised = kafka_addr
        .map(|bound| -> Result<_, BrokerError> {
            let bootstrap = crate::kafka::advertised(config.kafka_advertised.as_deref(), bound)?;
            let shards = kafka_shard_addrs
                .iter()
                .map(|addr| crate::kafka::Advertised {
                    host: bootstrap.host.clone(),
                    port: i32::from(addr.port()),
                })
                .collect();
            Ok(crate::kafka::Endpoints { bootstrap, shards })
        })
        .transpose()?;
    // The controller's replica runs on shard 0 when the node has peers.
    let cluster = if peers.is_empty() {
        None
    } else {
        let rpc_listen = config.rpc_listen.as_deref().expect("validated: peers need rpc_listen");
        let (rpc_reserved, rpc_addr) = reserve(rpc_listen)?;
        let registration = net::cluster::ControllerCommand::RegisterNode {
            node: config.node_id,
            shards: u32::from(shards),
            kafka_addr: advertised
                .as_ref()
                .map(|a| format!("{}:{}", a.bootstrap.host, a.bootstrap.port))
                .unwrap_or_default(),
            native_addr: addr.to_string(),
            kafka_shard_addrs: advertised
                .as_ref()
                .map(|a| a.shards.iter().map(|s| format!("{}:{}", s.host, s.port)).collect())
                .unwrap_or_default(),
            native_shard_addrs: shard_addrs.iter().map(|a| a.to_string()).collect(),
        };
        Some((rpc_reserved, rpc_addr, peers.clone(), registration))
    };
    let rpc_addr = cluster.as_ref().map(|(_, addr, _, _)| *addr);
    let (handle, requests) = crate::controller::driver::Handle::new();
    let internal_topics = vec![
        crate::controller::driver::InternalTopic {
            name: OFFSETS_TOPIC.to_string(),
            partitions: config.offsets_topic_partitions,
            configs: offsets_topic_configs(),
        },
        crate::controller::driver::InternalTopic {
            name: TXN_STATE_TOPIC.to_string(),
            partitions: config.transaction_state_partitions,
            configs: offsets_topic_configs(),
        },
    ];
    let (rpc_reserved, mut controller) = match (cluster, opened) {
        (Some((reserved, addr, _, registration)), Some(opened)) => (
            Some(reserved),
            Some((addr, opened, registration, requests, internal_topics)),
        ),
        _ => (None, None),
    };
    let handle = controller.as_ref().map(|_| handle);
    let config = Arc::new(config);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards).map(|_| flume::bounded(config.shard_queue_depth)).unzip();
    let inboxes = Arc::new(senders);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), BrokerError>>();
    let open_gate = Arc::new(OpenGate::new(usize::from(shards)));
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    let read_cache_bytes = config.read_cache_shard_bytes(usize::from(shards));
    tracing::debug!(shards, read_cache_bytes, "batch cache per shard");
    let mut threads = Vec::new();
    let mut stall_logs = Vec::new();
    for (id, (cpu, inbox)) in cpus.iter().copied().zip(receivers).enumerate() {
        let id = id as u16;
        let (config, metadata, inboxes, ready) = (config.clone(), metadata.clone(), inboxes.clone(), ready_tx.clone());
        let producer_ids = producer_ids.clone();
        let open_gate = open_gate.clone();
        let handle = handle.clone();
        let advertised = advertised.clone();
        let kafka_shard_addr = kafka_shard_addrs.get(usize::from(id)).copied();
        let shard_addr = shard_addrs.get(usize::from(id)).copied();
        let native = native.clone();
        let controller = if id == 0 { controller.take() } else { None };
        let peers = peers.clone();
        // glommio pins a Fixed executor's thread itself (before it allocates,
        // so its memory is the core's node's) and only spins before parking
        // on a pinned executor.
        let pinned = core_ids.iter().any(|c| c.id == cpu);
        let placement = if pinned {
            Placement::Fixed(cpu)
        } else {
            Placement::Unbound
        };
        let (detector, stall_log) =
            crate::stalls::Detector::new(id, std::time::Duration::from_micros(config.stall_threshold_us));
        stall_logs.push(stall_log.clone());
        let detector =
            (config.stall_threshold_us > 0).then(|| Box::new(detector) as Box<dyn glommio::StallDetectionHandler>);
        let executor = LocalExecutorBuilder::new(placement)
            .detect_stalls(detector)
            // Its blocking calls run on a thread the kernel may place on
            // any core, not queued behind the shard on its own.
            .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
            .name(&format!("shard-{id}"))
            .io_memory(config.io_memory_bytes)
            .preempt_timer(std::time::Duration::from_micros(config.task_quota_us))
            .spin_before_park(std::time::Duration::from_micros(config.spin_before_park_us))
            .spawn(move || async move {
                tracing::debug!(shard = id, cpu, pinned, "shard started");
                storage::read_ahead::set_thread_budget(config.read_ahead_shard_bytes);
                storage::batch_cache::set_thread_capacity(read_cache_bytes);
                let born = std::time::Instant::now();
                // In a cluster each shard drives the Raft groups of the
                // partitions it owns, on a task of its own.
                let replication = (!peers.is_empty()).then(|| {
                    let (replication, commands) = crate::replication::driver::channel();
                    let task = crate::replication::driver::run(
                        config.node_id,
                        id,
                        peers.clone(),
                        commands,
                        metadata.clone(),
                        config.raft_timing(),
                    );
                    (replication, glommio::spawn_local(task))
                });
                let (replication, replication_task) = replication.unzip();
                let shard = Rc::new(Shard::new(
                    id,
                    config,
                    metadata,
                    inboxes.clone(),
                    producer_ids,
                    handle,
                    replication,
                ));
                let started = async {
                    let opened = shard.open_owned_partitions().await?;
                    let offsets = shard.load_offsets().await?;
                    let txns = shard.load_txns().await?;
                    let listen = |addr: SocketAddr| {
                        glommio::net::TcpListener::bind(addr).map_err(|e| BrokerError::Io {
                            op: "listen on",
                            path: addr.to_string().into(),
                            source: e.into(),
                        })
                    };
                    let listeners = std::iter::once(addr)
                        .chain(shard_addr)
                        .map(listen)
                        .collect::<Result<Vec<_>, _>>()?;
                    let kafka_listen = |addr: SocketAddr| {
                        glommio::net::TcpListener::bind(addr).map_err(|e| BrokerError::Io {
                            op: "listen (kafka) on",
                            path: addr.to_string().into(),
                            source: e.into(),
                        })
                    };
                    let kafka_listeners = kafka_addr
                        .into_iter()
                        .chain(kafka_shard_addr)
                        .map(kafka_listen)
                        .collect::<Result<Vec<_>, _>>()?;
                    let rpc_listener = match controller {
                        Some((addr, opened, registration, requests, internal_topics)) => {
                            let listener = glommio::net::TcpListener::bind(addr).map_err(|e| BrokerError::Io {
                                op: "listen (internal) on",
                                path: addr.to_string().into(),
                                source: e.into(),
                            })?;
                            let node = shard.config.node_id;
                            let on_change = {
                                let shard = shard.clone();
                                Box::new(move |metadata: &crate::controller::ClusterMetadata, leader: Option<u64>| {
                                    shard.cluster_changed(crate::topics::TopicTable::from_controller(
                                        node, metadata, leader,
                                    ))
                                })
                            };
                            let route = route_raft(shard.metadata.clone(), inboxes.clone());
                            let wiring = crate::controller::driver::Wiring {
                                requests,
                                internal_topics,
                                on_change,
                                route,
                            };
                            Some((opened, listener, registration, wiring))
                        }
                        None => None,
                    };
                    // The shard's one line at start.
                    tracing::info!(
                        shard = id,
                        cpu,
                        pinned,
                        partitions = opened,
                        committed_offsets = offsets,
                        transactions = txns,
                        read_cache_bytes,
                        "shard open"
                    );
                    Ok::<_, BrokerError>((listeners, kafka_listeners, rpc_listener))
                }
                .await;
                let (listeners, kafka_listeners, rpc_listener) = match started {
                    Ok(listeners) => listeners,
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                // Clients wait in the listeners' backlogs until every shard
                // has finished what a restart left: recovery asks the other
                // shards (whose inboxes are served by now), and a request
                // served before would meet a partition that does not yet
                // know its open transactions.
                let accepting = {
                    let shard = shard.clone();
                    let native = Rc::new(native.as_ref().clone());
                    glommio::spawn_local(async move {
                        shard.recover_txns().await;
                        open_gate.arrive_and_wait(id).await;
                        for listener in listeners {
                            glommio::spawn_local(crate::server::accept_loop(shard.clone(), listener, native.clone()))
                                .detach();
                        }
                        if let Some(advertised) = advertised {
                            let advertised = Rc::new(advertised);
                            for kafka_listener in kafka_listeners {
                                glommio::spawn_local(crate::kafka::accept_loop(
                                    shard.clone(),
                                    kafka_listener,
                                    advertised.clone(),
                                ))
                                .detach();
                            }
                        }
                        tracing::debug!(shard = id, "accepting clients");
                    })
                    .detach()
                };
                let controller = rpc_listener.map(|(opened, listener, registration, wiring)| {
                    let (stop, stopped) = futures::channel::oneshot::channel();
                    let task = glommio::spawn_local(async move {
                        if let Err(error) =
                            crate::controller::driver::run(opened, listener, registration, wiring, stopped).await
                        {
                            tracing::error!(%error, "the controller replica stopped");
                        }
                    });
                    (stop, task)
                });
                // The controller's shard tells the other nodes which
                // partitions this node leads.
                let announcer = (controller.is_some()).then(|| {
                    let task = crate::replication::leaders::announce(
                        shard.config.node_id,
                        peers.clone(),
                        shard.metadata.clone(),
                        shard.config.raft_timing().tick,
                    );
                    glommio::spawn_local(task).detach()
                });
                let clock = shard.clone();
                let clock = glommio::spawn_local(async move { clock.run_group_clock().await }).detach();
                let txn_clock = shard.clone();
                let txn_clock = glommio::spawn_local(async move { txn_clock.run_txn_clock().await }).detach();
                let retention = shard.clone();
                let retention = glommio::spawn_local(async move { retention.run_retention_clock().await }).detach();
                // The cleaner's reads and rewrites share the core with the
                // requests, in a queue of their own at a lower share.
                let cleaner_queue = glommio::executor().create_task_queue(
                    glommio::Shares::Static(shard.config.log_cleaner_shares),
                    glommio::Latency::NotImportant,
                    "log-cleaner",
                );
                let cleaner = shard.clone();
                let cleaner = glommio::spawn_local_into(async move { cleaner.run_cleaner_clock().await }, cleaner_queue)
                    .expect("the cleaner's queue was just made")
                    .detach();
                shard.clone().serve_inbox(inbox).await;
                accepting.cancel();
                if let Some(announcer) = announcer {
                    announcer.cancel();
                }
                clock.cancel();
                txn_clock.cancel();
                retention.cancel();
                cleaner.cancel();
                if let Some((stop, task)) = controller {
                    // A leader hands over before its node goes.
                    let _ = stop.send(());
                    task.await;
                }
                if let Some(task) = replication_task {
                    // Stopped by `serve_inbox`; every handle is gone now.
                    drop(task.cancel());
                }
                shard.close_all().await;
                let (allocations, allocated_bytes) = crate::alloc::thread_allocations();
                // One line on stdout, read by the benchmark harness; a
                // reader gone already (a closed pipe) is no reason to fail.
                let stats = &shard.stats;
                let (stall_fields, stall_lines) = crate::stalls::summary(id, &stall_log);
                let mut stdout = std::io::stdout().lock();
                for line in stall_lines {
                    let _ = writeln!(stdout, "{line}");
                }
                let _ = writeln!(
                    stdout,
                    "corelog shard stats: shard={id} requests={} records_appended={} allocations={allocations} allocated_bytes={allocated_bytes} produce_local={} produce_hops={} fetch_local={} fetch_hops={} hops={} {stall_fields} {} {} {} {} {} cpu_ms={} wall_ms={}",
                    stats.requests.get(),
                    stats.records_appended.get(),
                    stats.produce_local.get(),
                    stats.produce_hops.get(),
                    stats.fetch_local.get(),
                    stats.fetch_hops.get(),
                    stats.hops.get(),
                    stats.request_wait.fields("request_wait"),
                    stats.produce_service.fields("produce_service"),
                    stats.durable_wait.fields("durable_wait"),
                    stats.flush_fields(),
                    stats.read_fields(),
                    thread_cpu_time().map_or(0, |t| t.as_millis()),
                    born.elapsed().as_millis(),
                );
                tracing::info!(shard = id, "shard stopped");
            })
            .map_err(|e| BrokerError::Config(format!("start shard {id}: {e}")))?;
        threads.push(std::thread::spawn(move || {
            let _ = executor.join();
        }));
    }
    drop(ready_tx);
    let health = Arc::new(crate::metrics::Health::default());
    if let Some(listener) = metrics_listener {
        crate::metrics::spawn(listener, inboxes.clone(), health.clone(), stall_logs).map_err(|source| {
            BrokerError::Io {
                op: "start the metrics listener on",
                path: config.metrics_listen.clone().into(),
                source,
            }
        })?;
    }
    let running = Running {
        addr,
        kafka_addr,
        rpc_addr,
        metrics_addr,
        health,
        shard_addrs,
        kafka_shard_addrs,
        inboxes,
        threads,
    };
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                running.shutdown();
                return Err(error);
            }
            Err(_) => {
                running.shutdown();
                return Err(BrokerError::Config("a shard died while starting".into()));
            }
        }
    }
    drop(reserved);
    drop(kafka);
    drop(kafka_shards);
    drop(native_shards);
    drop(rpc_reserved);
    running.health.serving();
    Ok(running)
}

/// Where the shards meet before any accepts a client: each arrives once it
/// has finished recovering, and all go on when the last has arrived.
struct OpenGate {
    waiting: AtomicUsize,
    opens: Vec<flume::Sender<()>>,
    opened: Vec<flume::Receiver<()>>,
}

impl OpenGate {
    fn new(shards: usize) -> Self {
        let (opens, opened) = (0..shards).map(|_| flume::bounded(1)).unzip();
        Self {
            waiting: AtomicUsize::new(shards),
            opens,
            opened,
        }
    }

    /// Arrives for shard `id`, then waits for the others (a shard that
    /// stops first cancels the task waiting here).
    async fn arrive_and_wait(&self, id: u16) {
        if self.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            for open in &self.opens {
                // Never full: each is sent to once.
                let _ = open.try_send(());
            }
        }
        // The gate holds the senders: this ends only with a send.
        let _ = self.opened[usize::from(id)].recv_async().await;
    }
}

/// Time the calling thread has run on a CPU (the scheduler's own count,
/// nanoseconds, from /proc): beside its wall time, how much of a core a
/// shard used, spinning before it parks included.
fn thread_cpu_time() -> Option<std::time::Duration> {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = schedstat.split_whitespace().next()?.parse().ok()?;
    Some(std::time::Duration::from_nanos(ns))
}
