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

use glommio::{LocalExecutorBuilder, Placement};

use crate::offsets::OFFSETS_TOPIC;

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::shard::{Shard, ShardMessage};
use crate::topics::Metadata;

/// How long an idle shard keeps polling before it sleeps.
const SPIN_BEFORE_PARK: std::time::Duration = std::time::Duration::from_millis(20);

/// How often every shard thread is interrupted (see `Nudger`).
const NUDGE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);
/// A signal whose default action is to be ignored, so a stray one harms
/// nothing; the broker installs a no-op handler for it.
const NUDGE_SIGNAL: libc::c_int = libc::SIGURG;

/// glommio 0.9 can put a shard to sleep in `io_uring_enter` although work
/// is due: a wakeup sent from another thread just as its reactor parks (it
/// re-checks its shared channels then, not its queue of foreign wakeups),
/// and, as seen under load, a timer it did not arm. The shard then sleeps
/// until unrelated I/O arrives, which for a client waiting on it may be
/// never (measured: produce requests stalled for 30 s and more until a
/// debugger's interruption woke the shard). The nudger interrupts each
/// shard thread with a no-op signal every `NUDGE_INTERVAL`: the sleeping
/// `io_uring_enter` returns EINTR, and the reactor looks at its timers and
/// queues again. The handler is installed without SA_RESTART for that
/// reason; the shards' other blocking calls (std::fs on regular files)
/// are not interrupted by signals or retry on EINTR.
struct Nudger {
    /// Each shard thread's pthread id while it runs; a thread clears its
    /// entry before it exits, under the lock the nudger signals under.
    threads: Arc<std::sync::Mutex<Vec<Option<libc::pthread_t>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

extern "C" fn nudged(_: libc::c_int) {}

impl Nudger {
    fn start(shards: usize) -> Nudger {
        // SAFETY: installs an async-signal-safe (empty) handler; the
        // sigaction struct is fully initialized.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = nudged as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = 0;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(NUDGE_SIGNAL, &action, std::ptr::null_mut());
        }
        let threads = Arc::new(std::sync::Mutex::new(vec![None; shards]));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handle = {
            let (threads, stop) = (threads.clone(), stop.clone());
            std::thread::Builder::new()
                .name("shard-nudger".into())
                .spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Acquire) {
                        std::thread::sleep(NUDGE_INTERVAL);
                        let threads = threads.lock().expect("nudger lock");
                        for thread in threads.iter().flatten() {
                            // SAFETY: the entry is cleared (under this lock)
                            // before its thread exits, so the id is live.
                            unsafe { libc::pthread_kill(*thread, NUDGE_SIGNAL) };
                        }
                    }
                })
                .expect("start the shard nudger thread")
        };
        Nudger {
            threads,
            stop,
            handle: Some(handle),
        }
    }

    /// Registers the calling shard thread; the guard deregisters it.
    fn register(threads: &Arc<std::sync::Mutex<Vec<Option<libc::pthread_t>>>>, shard: usize) -> NudgeGuard {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        threads.lock().expect("nudger lock")[shard] = Some(me);
        NudgeGuard {
            threads: threads.clone(),
            shard,
        }
    }
}

struct NudgeGuard {
    threads: Arc<std::sync::Mutex<Vec<Option<libc::pthread_t>>>>,
    shard: usize,
}

impl Drop for NudgeGuard {
    fn drop(&mut self) {
        if let Ok(mut threads) = self.threads.lock() {
            threads[self.shard] = None;
        }
    }
}

impl Drop for Nudger {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

pub struct Running {
    pub addr: SocketAddr,
    inboxes: Arc<Vec<flume::Sender<ShardMessage>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    nudger: Nudger,
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
        // Only once no shard thread runs.
        drop(self.nudger);
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
    let producer_ids = Arc::new(std::sync::Mutex::new(
        crate::producer_state::ProducerIdAllocator::open(&config.data_dir).map_err(|source| BrokerError::Io {
            op: "read producer ids in",
            path: config.data_dir.clone(),
            source,
        })?,
    ));
    let (reserved, addr) = reserve(&config.listen)?;
    let config = Arc::new(config);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards).map(|_| flume::bounded(config.shard_queue_depth)).unzip();
    let inboxes = Arc::new(senders);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), BrokerError>>();
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    let mut threads = Vec::new();
    let nudger = Nudger::start(cpus.len());
    for (id, (cpu, inbox)) in cpus.iter().copied().zip(receivers).enumerate() {
        let id = id as u16;
        let (config, metadata, inboxes, ready) = (config.clone(), metadata.clone(), inboxes.clone(), ready_tx.clone());
        let producer_ids = producer_ids.clone();
        let core = core_ids.iter().find(|c| c.id == cpu).copied();
        let nudged_threads = nudger.threads.clone();
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("shard-{id}"))
            .io_memory(config.io_memory_bytes)
            .preempt_timer(std::time::Duration::from_micros(config.task_quota_us))
            // glommio 0.9 can lose a wakeup sent from another thread (a flume
            // message or reply between shards) at the moment its reactor goes
            // to sleep. Spinning a while before sleeping keeps the reactor
            // awake through the round trips of cross-shard requests.
            .spin_before_park(SPIN_BEFORE_PARK)
            .spawn(move || async move {
                let _nudged = Nudger::register(&nudged_threads, id as usize);
                let pinned = core.is_some_and(core_affinity::set_for_current);
                tracing::info!(shard = id, cpu, pinned, "shard started");
                let shard = Rc::new(Shard::new(id, config, metadata, inboxes, producer_ids));
                let started = async {
                    let opened = shard.open_owned_partitions().await?;
                    let offsets = shard.load_offsets().await?;
                    tracing::info!(shard = id, offsets, "loaded committed offsets");
                    let listener = glommio::net::TcpListener::bind(addr).map_err(|e| BrokerError::Io {
                        op: "listen on",
                        path: addr.to_string().into(),
                        source: e.into(),
                    })?;
                    tracing::info!(shard = id, partitions = opened, "recovered partitions; accepting");
                    Ok::<_, BrokerError>(listener)
                }
                .await;
                let listener = match started {
                    Ok(listener) => listener,
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                glommio::spawn_local(crate::server::accept_loop(shard.clone(), listener)).detach();
                let clock = shard.clone();
                let clock = glommio::spawn_local(async move { clock.run_group_clock().await }).detach();
                shard.clone().serve_inbox(inbox).await;
                clock.cancel();
                shard.close_all().await;
                let (allocations, allocated_bytes) = crate::alloc::thread_allocations();
                // One line on stdout, read by the benchmark harness.
                println!(
                    "corelog shard stats: shard={id} requests={} records_appended={} allocations={allocations} allocated_bytes={allocated_bytes}",
                    shard.stats.requests.get(),
                    shard.stats.records_appended.get(),
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
        inboxes,
        threads,
        nudger,
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
    Ok(running)
}
