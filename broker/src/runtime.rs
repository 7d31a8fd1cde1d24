//! Starting and stopping the shards.
//!
//! Startup order: load the topic table; reserve the listen address (binding
//! port 0 resolves it once, so that every shard binds the same port with
//! SO_REUSEPORT); start one executor thread per shard, each pinned to its
//! core, opening (recovering) its own partitions before it accepts; once all
//! listen, report the address. SIGINT or SIGTERM asks every shard to stop:
//! it stops taking requests from other shards, flushes and closes its logs.

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
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
    /// Each shard's own Kafka address, by shard id (`kafka_shard_ports`).
    pub kafka_shard_addrs: Vec<SocketAddr>,
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

pub fn start(config: BrokerConfig) -> Result<Running, BrokerError> {
    config.validate()?;
    let cpus = config.shard_cpus()?;
    let shards = cpus.len() as u16;
    let metadata = Arc::new(Metadata::load(&config.data_dir, shards)?);
    if !metadata.snapshot().topics.contains_key(OFFSETS_TOPIC) {
        metadata.create(OFFSETS_TOPIC, config.offsets_topic_partitions, offsets_topic_configs())?;
        tracing::info!(partitions = config.offsets_topic_partitions, "created {OFFSETS_TOPIC}");
    }
    if !metadata.snapshot().topics.contains_key(TXN_STATE_TOPIC) {
        metadata.create(
            TXN_STATE_TOPIC,
            config.transaction_state_partitions,
            offsets_topic_configs(),
        )?;
        tracing::info!(
            partitions = config.transaction_state_partitions,
            "created {TXN_STATE_TOPIC}"
        );
    }
    let producer_ids = Arc::new(std::sync::Mutex::new(
        crate::producer_state::ProducerIdAllocator::open(&config.data_dir).map_err(|source| BrokerError::Io {
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
    // Each shard's own Kafka port, reserved like the shared one so that every
    // shard can advertise all of them before any accepts.
    let kafka_shards = match kafka_addr {
        Some(bound) if config.kafka_shard_ports => (0..shards)
            .map(|shard| {
                let port = match bound.port() {
                    0 => 0,
                    port => port.checked_add(1 + shard).ok_or_else(|| {
                        BrokerError::Config(format!("kafka shard port for shard {shard} is past 65535"))
                    })?,
                };
                let addr = SocketAddr::new(bound.ip(), port);
                reserve_addr(addr, &format!("kafka port of shard {shard}"))
            })
            .collect::<Result<Vec<_>, BrokerError>>()?,
        _ => Vec::new(),
    };
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
    let config = Arc::new(config);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards).map(|_| flume::bounded(config.shard_queue_depth)).unzip();
    let inboxes = Arc::new(senders);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), BrokerError>>();
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    let mut threads = Vec::new();
    for (id, (cpu, inbox)) in cpus.iter().copied().zip(receivers).enumerate() {
        let id = id as u16;
        let (config, metadata, inboxes, ready) = (config.clone(), metadata.clone(), inboxes.clone(), ready_tx.clone());
        let producer_ids = producer_ids.clone();
        let advertised = advertised.clone();
        let kafka_shard_addr = kafka_shard_addrs.get(usize::from(id)).copied();
        // glommio pins a Fixed executor's thread itself (before it allocates,
        // so its memory is the core's node's) and only spins before parking
        // on a pinned executor.
        let pinned = core_ids.iter().any(|c| c.id == cpu);
        let placement = if pinned {
            Placement::Fixed(cpu)
        } else {
            Placement::Unbound
        };
        let executor = LocalExecutorBuilder::new(placement)
            // Its blocking calls run on a thread the kernel may place on
            // any core, not queued behind the shard on its own.
            .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
            .name(&format!("shard-{id}"))
            .io_memory(config.io_memory_bytes)
            .preempt_timer(std::time::Duration::from_micros(config.task_quota_us))
            .spin_before_park(std::time::Duration::from_micros(config.spin_before_park_us))
            .spawn(move || async move {
                tracing::info!(shard = id, cpu, pinned, "shard started");
                let shard = Rc::new(Shard::new(id, config, metadata, inboxes, producer_ids));
                let started = async {
                    let opened = shard.open_owned_partitions().await?;
                    let offsets = shard.load_offsets().await?;
                    tracing::info!(shard = id, offsets, "loaded committed offsets");
                    let txns = shard.load_txns().await?;
                    tracing::info!(shard = id, txns, "loaded transaction states");
                    let listener = glommio::net::TcpListener::bind(addr).map_err(|e| BrokerError::Io {
                        op: "listen on",
                        path: addr.to_string().into(),
                        source: e.into(),
                    })?;
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
                    tracing::info!(shard = id, partitions = opened, "recovered partitions; accepting");
                    Ok::<_, BrokerError>((listener, kafka_listeners))
                }
                .await;
                let (listener, kafka_listeners) = match started {
                    Ok(listeners) => listeners,
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                glommio::spawn_local(crate::server::accept_loop(shard.clone(), listener)).detach();
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
                let clock = shard.clone();
                let clock = glommio::spawn_local(async move { clock.run_group_clock().await }).detach();
                let txn_clock = shard.clone();
                let txn_clock = glommio::spawn_local(async move { txn_clock.run_txn_clock().await }).detach();
                shard.clone().serve_inbox(inbox).await;
                clock.cancel();
                txn_clock.cancel();
                shard.close_all().await;
                let (allocations, allocated_bytes) = crate::alloc::thread_allocations();
                // One line on stdout, read by the benchmark harness.
                let stats = &shard.stats;
                println!(
                    "corelog shard stats: shard={id} requests={} records_appended={} allocations={allocations} allocated_bytes={allocated_bytes} produce_local={} produce_hops={} fetch_local={} fetch_hops={} hops={}",
                    stats.requests.get(),
                    stats.records_appended.get(),
                    stats.produce_local.get(),
                    stats.produce_hops.get(),
                    stats.fetch_local.get(),
                    stats.fetch_hops.get(),
                    stats.hops.get(),
                );
                tracing::info!(shard = id, "shard stopped");
            })
            .map_err(|e| BrokerError::Config(format!("start shard {id}: {e}")))?;
        threads.push(std::thread::spawn(move || {
            let _ = executor.join();
        }));
    }
    drop(ready_tx);
    let running = Running {
        addr,
        kafka_addr,
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
    Ok(running)
}
