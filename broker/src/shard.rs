//! The shard runtime: one glommio executor per core, pinned with
//! core_affinity, each owning its partitions' logs outright.
//!
//! Only a partition's owner touches its log. A request that arrives on
//! another shard travels to the owner over the owner's bounded flume inbox
//! and the reply comes back on a one-shot channel; a full inbox makes the
//! sender wait (backpressure). A request for a partition of the shard it
//! arrived on is served in place, without any message.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;

use storage::{Offset, PartitionLog, ReadBytes};

mod admin;
mod cleaner;
mod coordinators;
mod groups;
mod leadership;
pub(crate) mod metrics;
mod retention;
mod txns;

pub use groups::{GroupAnswer, GroupCall};
pub use txns::{TxnAnswer, TxnCall};

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::group::Coordinator;
use crate::producer_state::{Check, ProducerIdAllocator, ProducerStates};
use crate::replication::driver::{Command, COMMIT_WAIT_MAX};
use crate::replication::replica::{Acks, Reply as Committed};
use crate::replication::ReplicaView;
use crate::topics::{log_config, partition_dir, Metadata, TopicMeta, TopicTable};
use crate::txn::TxnCoordinator;
use net::messages::{isolation, AbortedTransaction};
use storage::batch::control::Marker;

pub type ShardId = u16;
/// The owner's answer to one cross-shard request. A oneshot, so the owner
/// can see the asker give up (`cancellation`) without looking.
type Reply<T> = futures::channel::oneshot::Sender<Result<T, BrokerError>>;

/// What one shard asks of another.
pub enum ShardMessage {
    Produce {
        topic: String,
        partition: u32,
        batches: Vec<u8>,
        acks: i8,
        reply: Reply<Produced>,
    },
    Fetch {
        topic: String,
        partition: u32,
        at: FetchAt,
        reply: Reply<Fetched<Vec<u8>>>,
    },
    ListOffset {
        topic: String,
        partition: u32,
        timestamp: i64,
        current_leader_epoch: i32,
        reply: Reply<Option<ListedOffset>>,
    },
    EpochEndOffset {
        topic: String,
        partition: u32,
        current_leader_epoch: i32,
        leader_epoch: i32,
        reply: Reply<(i32, i64)>,
    },
    /// Move the partition's leadership to this node (its owner here).
    TransferLeader {
        topic: String,
        partition: u32,
        to: u64,
        reply: Reply<()>,
    },
    /// DescribeProducers of a partition the shard owns.
    DescribeProducers {
        topic: String,
        partition: u32,
        reply: Reply<Vec<crate::producer_state::ActiveProducer>>,
    },
    /// The transactions this shard's coordinator holds.
    ListTransactions {
        reply: Reply<Vec<(String, crate::txn::TxnMeta)>>,
    },
    /// DeleteRecords of a partition the shard owns.
    DeleteRecords {
        topic: String,
        partition: u32,
        offset: i64,
        reply: Reply<Offset>,
    },
    /// A long poll's wait on another shard's partition: answered when the
    /// log's end moves past `offset` or at `deadline`.
    WaitForData {
        topic: String,
        partition: u32,
        offset: u64,
        deadline: std::time::Instant,
        reply: Reply<bool>,
    },
    /// A consumer group's request, for the shard that coordinates it.
    Group {
        call: GroupCall,
        reply: Reply<GroupAnswer>,
    },
    /// A transactional producer's request, for its coordinating shard.
    Txn {
        call: TxnCall,
        reply: Reply<TxnAnswer>,
    },
    /// The coordinator added the partition to a producer's transaction.
    ExpectTxn {
        topic: String,
        partition: u32,
        producer_id: i64,
        epoch: i16,
        reply: Reply<()>,
    },
    /// A transaction ended: write its marker into the partition.
    WriteMarker {
        topic: String,
        partition: u32,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        reply: Reply<()>,
    },
    OpenPartitions {
        topic: TopicMeta,
        reply: Reply<()>,
    },
    DeletePartitions {
        topic: TopicMeta,
        reply: Reply<()>,
    },
    /// A topic's configs changed: put them in force in the partition logs
    /// this shard owns.
    ApplyConfigs {
        topic: TopicMeta,
        reply: Reply<()>,
    },
    /// The cluster's topic table changed: open and delete what this shard
    /// should now host (see `reconcile`).
    Reconcile,
    /// A peer's Raft messages for partition groups this shard owns.
    Raft {
        from: u64,
        messages: Vec<(u64, Vec<u8>)>,
    },
    /// The bytes of each partition the shard owns (DescribeLogDirs).
    PartitionSizes {
        reply: Reply<Vec<(String, u32, u64)>>,
    },
    /// A scrape's ask for the shard's samples.
    Metrics {
        reply: flume::Sender<Vec<crate::metrics::Sample>>,
    },
    Shutdown,
}

#[derive(Clone, Copy, Debug)]
pub struct Produced {
    pub base_offset: u64,
    pub append_time_ms: i64,
    pub log_start_offset: u64,
}

#[derive(Debug)]
pub struct Fetched<B> {
    pub bytes: B,
    pub high_watermark: u64,
    pub last_stable_offset: u64,
    pub log_start_offset: u64,
    /// READ_COMMITTED: the aborted transactions among the bytes.
    pub aborted: Vec<AbortedTransaction>,
    /// The partition's current leader epoch.
    pub leader_epoch: i32,
}

/// How a partition's fetch keeps to its `max_bytes`, as Kafka's does: the
/// first partition of a response with data returns at least one batch,
/// however large, so that a consumer always progresses; every partition
/// after it returns only batches that fit what is left (none, and no read,
/// when nothing is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchLimit {
    AtLeastOneBatch,
    Within,
}

impl FetchLimit {
    /// The limit of a partition after `taken` bytes of a response.
    pub fn after(taken: usize) -> FetchLimit {
        if taken == 0 {
            FetchLimit::AtLeastOneBatch
        } else {
            FetchLimit::Within
        }
    }
}

/// What a fetch asks of one partition.
#[derive(Clone, Copy, Debug)]
pub struct FetchAt {
    pub offset: u64,
    pub max_bytes: u32,
    pub limit: FetchLimit,
    pub isolation_level: u8,
    /// The leader epoch the client's metadata names (KIP-320); -1: none,
    /// no check.
    pub current_leader_epoch: i32,
}

impl FetchAt {
    /// The first batch at or after `offset`, read uncommitted, unchecked
    /// epoch: what the broker's own lookups read.
    pub fn one_batch(offset: u64, isolation_level: u8) -> FetchAt {
        FetchAt {
            offset,
            max_bytes: 1,
            limit: FetchLimit::AtLeastOneBatch,
            isolation_level,
            current_leader_epoch: NO_LEADER_EPOCH,
        }
    }
}

/// Longest a request to another node (a forwarded controller command, a
/// transaction marker) may take before it is given up as timed out.
pub const REMOTE_CALL_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether a request for a partition this node does not lead is sent on to
/// the node that does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    ToLeader,
    /// It came from another node: answered here, or refused.
    No,
}

/// A request's current leader epoch when it names none: nothing is checked.
pub const NO_LEADER_EPOCH: i32 = -1;

/// ListOffsets' answer: an offset and the leader epoch of the batch there
/// (the current epoch for the latest offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedOffset {
    pub offset: u64,
    pub leader_epoch: i32,
}

/// Fetched bytes: the log's own read buffer on the owning shard, or a copy
/// that crossed from another shard.
pub enum FetchBytes {
    Local(ReadBytes),
    Remote(Vec<u8>),
}

impl Deref for FetchBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FetchBytes::Local(bytes) => bytes,
            FetchBytes::Remote(bytes) => bytes,
        }
    }
}

/// A partition's current leader epoch: a replicated one's term, as its
/// replica knows it; otherwise the epoch of its last batch, 0 for a log
/// that has none.
fn current_epoch(log: &PartitionLog, replica: Option<&ReplicaView>) -> i32 {
    match replica {
        Some(view) => view.term() as i32,
        None => log.latest_leader_epoch().unwrap_or(0),
    }
}

/// One shard's state. Lives on its executor (!Send).
pub struct Shard {
    pub id: ShardId,
    pub config: Arc<BrokerConfig>,
    pub metadata: Arc<Metadata>,
    inboxes: Arc<Vec<flume::Sender<ShardMessage>>>,
    logs: RefCell<HashMap<(String, u32), PartitionLog>>,
    pub connections: Cell<usize>,
    pub stats: ShardStats,
    /// The groups whose offsets partitions this shard owns.
    coordinator: RefCell<Coordinator>,
    /// Idempotent producers' sequences, per partition this shard owns.
    producer_states: RefCell<HashMap<(String, u32), ProducerStates>>,
    /// One idempotent append at a time per partition: the sequence check,
    /// the append and the state update must not interleave with another
    /// batch's (a retry arriving while its original is being appended).
    idempotent_turns: RefCell<HashMap<(String, u32), Rc<glommio::sync::Semaphore>>>,
    /// Where the log cleaner has cleaned each compacted partition to.
    cleaner_offsets: RefCell<HashMap<(String, u32), Offset>>,
    pub producer_ids: Arc<std::sync::Mutex<ProducerIdAllocator>>,
    /// Offsets writes appended but not yet applied, per offsets partition: a
    /// compaction waits until there are none (see `compact_offsets`).
    offsets_writes: RefCell<HashMap<u32, Rc<glommio::sync::Semaphore>>>,
    /// Each offsets partition's append turn (see `write_offsets`).
    offsets_turns: RefCell<HashMap<u32, Rc<glommio::sync::Semaphore>>>,
    /// The transactional ids whose `__transaction_state` partitions this
    /// shard owns.
    txn_coordinator: RefCell<TxnCoordinator>,
    /// One request at a time per `__transaction_state` partition.
    txn_turns: RefCell<HashMap<u32, Rc<glommio::sync::Semaphore>>>,
    /// Offsets committed in transactions not yet ended, per offsets
    /// partition and producer id: applied on a commit marker, dropped on
    /// an abort.
    txn_offsets: RefCell<HashMap<(u32, i64), Vec<txns::PendingOffset>>>,
    /// The controller's task, in a cluster.
    controller: Option<crate::controller::driver::Handle>,
    /// The topic table this shard's open partitions match (a cluster's
    /// changes are reconciled one at a time, under `reconcile_turn`).
    reconciled: RefCell<Arc<TopicTable>>,
    reconcile_turn: Rc<glommio::sync::Semaphore>,
    /// Told after each reconciliation: requests waiting for a topic to
    /// appear or go here.
    reconcile_waiters: RefCell<Vec<futures::channel::oneshot::Sender<()>>>,
    /// The shard's replication task, in a cluster.
    replication: Option<crate::replication::driver::Handle>,
    /// What this shard sees of its replicated partitions' replicas.
    replicas: RefCell<HashMap<(String, u32), Rc<ReplicaView>>>,
    /// The term a replicated partition's producer states were rebuilt in:
    /// only its leader keeps them, read again from the log when it starts
    /// to lead.
    producer_states_term: RefCell<HashMap<(String, u32), u64>>,
    /// The term each replicated internal partition's coordinator state was
    /// loaded in (see `coordinators`); absent where this replica does not
    /// lead it.
    coordinator_terms: RefCell<HashMap<(coordinators::Internal, u32), u64>>,
    /// One load at a time per internal partition.
    coordinator_loads: RefCell<HashMap<(coordinators::Internal, u32), Rc<glommio::sync::Semaphore>>>,
}

/// Counters of one shard's work, reported when it stops (beside its
/// allocations, to show what a request costs) and to each scrape
/// (`metrics`).
#[derive(Default)]
pub struct ShardStats {
    /// Requests read from this shard's connections.
    pub requests: Cell<u64>,
    /// Kafka requests by API: how many, how long, which error codes.
    kafka: RefCell<Vec<Option<Box<ApiStats>>>>,
    /// Bytes of Kafka requests read and of responses written.
    pub bytes_received: Cell<u64>,
    pub bytes_sent: Cell<u64>,
    /// Records appended to the logs this shard owns.
    pub records_appended: Cell<u64>,
    /// Partition produces and fetches this shard's connections asked for,
    /// served here or sent to the owning shard (a hop between cores).
    pub produce_local: Cell<u64>,
    pub produce_hops: Cell<u64>,
    pub fetch_local: Cell<u64>,
    pub fetch_hops: Cell<u64>,
    /// Requests of any kind this shard sent to another.
    pub hops: Cell<u64>,
    /// How long a native request read whole waited before its handler ran
    /// (its connection's window of requests in flight full, or the shard
    /// busy with other tasks; a Kafka connection serves its
    /// requests in order, in its own task), and how long a produce on either
    /// protocol took from its handler starting to its response ready
    /// (append, flush for acks=all, a hop): where the broker's share of a
    /// produce's latency goes.
    pub request_wait: Latencies,
    pub produce_service: Latencies,
    /// How long an acks=all produce waited for its batches to be durable
    /// (the share of `produce_service` that is the flush).
    pub durable_wait: Latencies,
    /// The flushes of the logs this shard closed, summed (see
    /// `storage::LogStats`): how many, and their time in fdatasync and in
    /// all.
    pub log_flushes: Cell<u64>,
    pub log_sync_time: Cell<std::time::Duration>,
    pub log_sync_time_max: Cell<std::time::Duration>,
    pub log_flush_time: Cell<std::time::Duration>,
    pub log_zeroed_bytes: Cell<u64>,
    pub log_written_bytes: Cell<u64>,
    /// Reads of the logs this shard closed, summed: from disk without
    /// read-ahead, and what read-ahead did.
    pub log_disk_read_bytes: Cell<u64>,
    pub log_read_ahead: Cell<storage::read_ahead::ReadAheadStats>,
    /// What the log cleaner did: bytes of the segments it rewrote, before
    /// and after, and the records it dropped.
    pub cleaned_bytes_before: Cell<u64>,
    pub cleaned_bytes_after: Cell<u64>,
    pub cleaned_records_removed: Cell<u64>,
}

/// A latency histogram of one shard (µs, 3 significant digits).
pub struct Latencies(RefCell<hdrhistogram::Histogram<u64>>);

/// Longest latency recorded as itself; longer ones count as this.
const LATENCY_MAX_US: u64 = 60_000_000;

impl Default for Latencies {
    fn default() -> Self {
        Latencies(RefCell::new(
            hdrhistogram::Histogram::new_with_max(LATENCY_MAX_US, 3).expect("valid histogram bounds"),
        ))
    }
}

impl Latencies {
    /// As Prometheus buckets.
    pub fn value(&self) -> crate::metrics::Value {
        crate::metrics::histogram(&self.0.borrow())
    }

    pub fn record(&self, latency: std::time::Duration) {
        let us = (latency.as_micros() as u64).clamp(1, LATENCY_MAX_US);
        self.0.borrow_mut().saturating_record(us);
    }

    /// `name_p50_us=… name_p99_us=… name_max_us=…` for the stats line.
    pub fn fields(&self, name: &str) -> String {
        let h = self.0.borrow();
        format!(
            "{name}_p50_us={} {name}_p99_us={} {name}_max_us={}",
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.99),
            h.max()
        )
    }
}

/// One Kafka API's requests on a shard.
#[derive(Clone)]
pub struct ApiStats {
    pub requests: u64,
    /// µs, 2 significant digits.
    pub latency: hdrhistogram::Histogram<u64>,
    /// Error codes its responses carried, by code.
    pub errors: std::collections::BTreeMap<i16, u64>,
}

/// Kafka API keys a shard keeps counts for; a higher one (none is served)
/// counts as the last.
const API_KEYS_MAX: usize = 128;

impl ShardStats {
    /// A Kafka request of API `api` answered in `latency`, its response
    /// carrying `errors` (0 for none).
    pub fn kafka_request(&self, api: i16, latency: std::time::Duration, errors: impl FnOnce(&mut dyn FnMut(i16))) {
        let mut apis = self.kafka.borrow_mut();
        if apis.is_empty() {
            apis.resize_with(API_KEYS_MAX, || None);
        }
        let slot = &mut apis[(api.max(0) as usize).min(API_KEYS_MAX - 1)];
        let stats = slot.get_or_insert_with(|| {
            Box::new(ApiStats {
                requests: 0,
                latency: hdrhistogram::Histogram::new_with_max(LATENCY_MAX_US, 2).expect("valid histogram bounds"),
                errors: std::collections::BTreeMap::new(),
            })
        });
        stats.requests += 1;
        let us = (latency.as_micros() as u64).clamp(1, LATENCY_MAX_US);
        stats.latency.saturating_record(us);
        errors(&mut |code| {
            if code != 0 {
                *stats.errors.entry(code).or_default() += 1;
            }
        });
    }

    /// Each Kafka API served so far, by name, with its errors by name.
    pub fn kafka_apis(&self) -> Vec<(String, ApiStats)> {
        self.kafka
            .borrow()
            .iter()
            .enumerate()
            .filter_map(|(key, stats)| {
                let stats = stats.as_ref()?;
                let name = net::kafka::kafka_protocol::messages::ApiKey::try_from(key as i16)
                    .map_or_else(|_| format!("ApiKey{key}"), |api| format!("{api:?}"));
                Some((name, ApiStats::clone(stats)))
            })
            .collect()
    }

    pub fn add_clean(&self, clean: &storage::log::CleanStats) {
        self.cleaned_bytes_before
            .set(self.cleaned_bytes_before.get() + clean.bytes_before);
        self.cleaned_bytes_after
            .set(self.cleaned_bytes_after.get() + clean.bytes_after);
        self.cleaned_records_removed
            .set(self.cleaned_records_removed.get() + clean.records_removed);
    }

    fn add_log(&self, log: &storage::LogStats) {
        self.log_flushes.set(self.log_flushes.get() + log.flushes);
        self.log_sync_time.set(self.log_sync_time.get() + log.sync_time);
        self.log_sync_time_max
            .set(self.log_sync_time_max.get().max(log.sync_time_max));
        self.log_flush_time.set(self.log_flush_time.get() + log.flush_time);
        self.log_zeroed_bytes
            .set(self.log_zeroed_bytes.get() + log.zeroed_bytes);
        self.log_written_bytes
            .set(self.log_written_bytes.get() + log.bytes_written);
        self.log_disk_read_bytes
            .set(self.log_disk_read_bytes.get() + log.disk_read_bytes);
        let mut ahead = self.log_read_ahead.get();
        let more = log.read_ahead;
        ahead.hits += more.hits;
        ahead.misses += more.misses;
        ahead.chunks += more.chunks;
        ahead.chunk_bytes += more.chunk_bytes;
        ahead.wasted_chunks += more.wasted_chunks;
        ahead.joined += more.joined;
        ahead.bypassed += more.bypassed;
        self.log_read_ahead.set(ahead);
    }

    /// `disk_read_bytes=… read_ahead_hits=…` for the stats line: bytes read
    /// from disk (directly, and in read-ahead chunks) and how reads were
    /// served.
    pub fn read_fields(&self) -> String {
        let a = self.log_read_ahead.get();
        // The shard's own thread: its batch cache and read-ahead reads.
        let c = storage::batch_cache::thread_stats();
        let (_, reads_in_flight_max) = storage::read_ahead::thread_reads_in_flight();
        format!(
            "disk_read_bytes={} read_ahead_bytes={} read_ahead_hits={} read_ahead_misses={} read_ahead_joined={} read_ahead_bypassed={} read_ahead_wasted_chunks={} read_ahead_in_flight_max={} \
             cache_hits={} cache_misses={} cache_hit_bytes={} cache_written_bytes={} cache_read_bytes={} cache_rejected={} cache_evicted={} cache_held_max_bytes={} cache_capacity_bytes={}",
            self.log_disk_read_bytes.get(),
            a.chunk_bytes,
            a.hits,
            a.misses,
            a.joined,
            a.bypassed,
            a.wasted_chunks,
            reads_in_flight_max,
            c.hits,
            c.misses,
            c.hit_bytes,
            c.written_bytes,
            c.read_bytes,
            c.rejected,
            c.evicted_entries,
            c.held_bytes_max,
            c.capacity_bytes,
        )
    }

    /// `log_flushes=… log_zeroed_bytes=… log_sync_mean_us=… log_sync_max_us=… log_flush_mean_us=…`
    /// and the distributions of this shard's fdatasyncs and flushes, for
    /// the stats line.
    pub fn flush_fields(&self) -> String {
        let flushes = self.log_flushes.get().max(1) as f64;
        // The shard's own thread: every flush of every log it owns.
        let f = storage::flush_stats::thread_stats();
        format!(
            "log_flushes={} log_zeroed_bytes={} log_sync_mean_us={:.0} log_sync_max_us={} log_flush_mean_us={:.0} \
             log_sync_p50_us={} log_sync_p99_us={} log_flush_p50_us={} log_flush_p99_us={} log_syncs_in_flight_max={}",
            self.log_flushes.get(),
            self.log_zeroed_bytes.get(),
            self.log_sync_time.get().as_secs_f64() * 1e6 / flushes,
            self.log_sync_time_max.get().as_micros(),
            self.log_flush_time.get().as_secs_f64() * 1e6 / flushes,
            f.sync.value_at_quantile(0.50),
            f.sync.value_at_quantile(0.99),
            f.flush.value_at_quantile(0.50),
            f.flush.value_at_quantile(0.99),
            f.syncs_in_flight_max,
        )
    }
}

fn bump(counter: &Cell<u64>) {
    counter.set(counter.get() + 1);
}

impl Shard {
    pub fn new(
        id: ShardId,
        config: Arc<BrokerConfig>,
        metadata: Arc<Metadata>,
        inboxes: Arc<Vec<flume::Sender<ShardMessage>>>,
        producer_ids: Arc<std::sync::Mutex<ProducerIdAllocator>>,
        controller: Option<crate::controller::driver::Handle>,
        replication: Option<crate::replication::driver::Handle>,
    ) -> Shard {
        let coordinator = RefCell::new(Coordinator::new(config.group_limits()));
        let reconciled = RefCell::new(metadata.snapshot());
        let max_timeout_ms = config.transaction_max_timeout_ms;
        Shard {
            id,
            config,
            metadata,
            inboxes,
            logs: RefCell::new(HashMap::new()),
            connections: Cell::new(0),
            stats: ShardStats::default(),
            coordinator,
            producer_states: RefCell::new(HashMap::new()),
            idempotent_turns: RefCell::new(HashMap::new()),
            cleaner_offsets: RefCell::new(HashMap::new()),
            producer_ids,
            offsets_writes: RefCell::new(HashMap::new()),
            offsets_turns: RefCell::new(HashMap::new()),
            txn_coordinator: RefCell::new(TxnCoordinator::new(max_timeout_ms)),
            txn_turns: RefCell::new(HashMap::new()),
            txn_offsets: RefCell::new(HashMap::new()),
            controller,
            reconciled,
            reconcile_turn: Rc::new(glommio::sync::Semaphore::new(1)),
            reconcile_waiters: RefCell::new(Vec::new()),
            replication,
            replicas: RefCell::new(HashMap::new()),
            producer_states_term: RefCell::new(HashMap::new()),
            coordinator_terms: RefCell::new(HashMap::new()),
            coordinator_loads: RefCell::new(HashMap::new()),
        }
    }

    /// On shard 0, when the controller's metadata or leader changed: puts
    /// the new table in place and has every shard reconcile with it.
    pub fn cluster_changed(&self, table: TopicTable) {
        self.metadata.replace(table);
        let inboxes = self.inboxes.clone();
        glommio::spawn_local(async move {
            for inbox in inboxes.iter() {
                // A shard gone is stopping; nothing to reconcile there.
                let _ = inbox.send_async(ShardMessage::Reconcile).await;
            }
        })
        .detach();
    }

    /// Brings this shard's partitions from the table it last reconciled
    /// with to the current one: a topic gone (or replaced by a new one of
    /// the same name) has its partitions here deleted, a new one opened.
    /// Level-triggered: whatever changes arrived meanwhile, one pass
    /// catches up with the latest.
    async fn reconcile(&self) {
        let Ok(_turn) = self.reconcile_turn.acquire_permit(1).await else {
            return;
        };
        let current = self.metadata.snapshot();
        let previous = self.reconciled.borrow().clone();
        tracing::debug!(
            shard = self.id,
            before = previous.topics.len(),
            after = current.topics.len(),
            "reconciling with the cluster's topics"
        );
        for (name, old) in &previous.topics {
            if current.topics.get(name).is_none_or(|t| t.id != old.id) {
                match self.delete_partitions(old).await {
                    Ok(()) => tracing::info!(shard = self.id, topic = %name, "deleted the topic's partitions here"),
                    Err(error) => tracing::error!(shard = self.id, topic = %name, %error, "partitions not deleted"),
                }
            }
        }
        for (name, new) in &current.topics {
            let old = previous.topics.get(name).filter(|t| t.id == new.id);
            // A new topic, or one grown: open what is new here.
            if old.is_none_or(|t| t.shards.len() != new.shards.len()) {
                if let Err(error) = self.open_partitions(new).await {
                    tracing::error!(shard = self.id, topic = %name, %error, "partitions not opened");
                }
            }
            if old.is_some_and(|t| t.configs != new.configs) {
                if let Err(error) = self.apply_topic_configs(new).await {
                    tracing::error!(shard = self.id, topic = %name, %error, "topic configs not applied");
                }
            }
        }
        *self.reconciled.borrow_mut() = current;
        for waiter in self.reconcile_waiters.borrow_mut().drain(..) {
            let _ = waiter.send(());
        }
    }

    /// Waits until this shard has reconciled with a table where `done`
    /// holds, up to `RECONCILE_WAIT`.
    async fn await_reconciled(&self, what: &str, done: impl Fn(&TopicTable) -> bool) -> Result<(), BrokerError> {
        use futures::FutureExt;
        let deadline = std::time::Instant::now() + RECONCILE_WAIT;
        loop {
            if done(&self.reconciled.borrow()) {
                return Ok(());
            }
            let (tx, rx) = futures::channel::oneshot::channel();
            self.reconcile_waiters.borrow_mut().push(tx);
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(BrokerError::TimedOut(format!(
                    "{what}: committed by the controller, not applied on this node within {RECONCILE_WAIT:?}"
                )));
            }
            futures::select! {
                _ = rx.fuse() => {}
                _ = glommio::timer::sleep(left).fuse() => {}
            }
        }
    }

    /// Asks the controller's leader, on another node, to do what this
    /// node's controller replica refused as a follower: through its native
    /// listener, marked forwarded so that it goes no further.
    async fn forward_to_controller(
        &self,
        leader: u64,
        call: impl AsyncFnOnce(&mut net::client::Connection) -> Result<(), net::NetError>,
    ) -> Result<(), BrokerError> {
        self.call_node(leader, BrokerError::NotController { leader: Some(leader) }, call)
            .await
    }

    /// Makes one request of another node, on its native listener (a
    /// connection of its own: these are rare), within `REMOTE_CALL_MAX`;
    /// `unknown` when the node's address is not known.
    async fn call_node(
        &self,
        node: u64,
        unknown: BrokerError,
        call: impl AsyncFnOnce(&mut net::client::Connection) -> Result<(), net::NetError>,
    ) -> Result<(), BrokerError> {
        use futures::FutureExt;
        let table = self.metadata.snapshot();
        let Some(addr) = table
            .cluster
            .as_ref()
            .and_then(|c| c.nodes.get(&node))
            .map(|n| n.native_addr.clone())
        else {
            return Err(unknown);
        };
        let remote = |error: net::NetError| BrokerError::Remote {
            node,
            code: error.code().unwrap_or(net::ErrorCode::UnknownServerError),
            message: error.to_string(),
        };
        let called = async {
            let mut connection = net::client::Connection::connect(&addr).await.map_err(remote)?;
            call(&mut connection).await.map_err(remote)
        };
        // A node paused or cut off keeps the connection and never answers.
        futures::select! {
            result = called.fuse() => result,
            _ = glommio::timer::sleep(REMOTE_CALL_MAX).fuse() => Err(BrokerError::TimedOut(format!(
                "node {node} ({addr}) did not answer within {REMOTE_CALL_MAX:?}"
            ))),
        }
    }

    /// Opens (recovering) every partition this shard owns.
    pub async fn open_owned_partitions(&self) -> Result<usize, BrokerError> {
        let table = self.metadata.snapshot();
        let mut opened = 0;
        for topic in table.topics.values() {
            opened += self.open_partitions(topic).await?;
        }
        Ok(opened)
    }

    async fn open_partitions(&self, topic: &TopicMeta) -> Result<usize, BrokerError> {
        let config = log_config(&topic.configs)?;
        let mut opened = 0;
        for (partition, &owner) in topic.shards.iter().enumerate() {
            let partition = partition as u32;
            if owner != self.id || self.logs.borrow().contains_key(&(topic.name.clone(), partition)) {
                continue;
            }
            let dir = partition_dir(&self.config.data_dir, &topic.name, partition);
            if topic.id != 0 {
                let (dir, id) = (dir.clone(), topic.id);
                storage::blocking::off_shard(move || crate::topics::claim_partition_dir(&dir, id)).await?;
            }
            let log = PartitionLog::open(&dir, config.clone())
                .await
                .map_err(|source| BrokerError::Storage {
                    topic: topic.name.clone(),
                    partition,
                    source,
                })?;
            // Internal partitions at debug: a broker's start says one line a
            // shard, and one a partition of its users'.
            if topic.name.starts_with("__") {
                tracing::debug!(
                    shard = self.id, topic = %topic.name, partition, log_start_offset = %log.log_start_offset(),
                    log_end_offset = %log.log_end_offset(), "opened partition"
                );
            } else {
                tracing::info!(
                    shard = self.id, topic = %topic.name, partition, log_start_offset = %log.log_start_offset(),
                    log_end_offset = %log.log_end_offset(), "opened partition"
                );
            }
            let members: Vec<u64> = topic.members.get(partition as usize).cloned().unwrap_or_else(|| {
                topic
                    .replicas
                    .get(partition as usize)
                    .map(|r| r.iter().map(|(node, _)| *node).collect())
                    .unwrap_or_default()
            });
            if members.len() > 1 {
                self.open_replica(topic, partition, &members, &log).await?;
                self.logs.borrow_mut().insert((topic.name.clone(), partition), log);
                opened += 1;
                continue;
            }
            // A snapshot that ends before the log start may miss markers
            // retention has since deleted: the log alone is the truth then.
            let (states, covered) = ProducerStates::load(&dir, log.log_end_offset().0)
                .filter(|(_, covered)| *covered >= log.log_start_offset().0)
                .unwrap_or_else(|| (ProducerStates::default(), 0));
            let mut states = replay_producer_states(&log, states, Offset(covered))
                .await
                .map_err(|source| BrokerError::Storage {
                    topic: topic.name.clone(),
                    partition,
                    source,
                })?;
            // The snapshot read was removed: write a new one soon, or a
            // second crash would replay this partition's whole log.
            states.mark_dirty();
            self.producer_states
                .borrow_mut()
                .insert((topic.name.clone(), partition), states);
            self.logs.borrow_mut().insert((topic.name.clone(), partition), log);
            opened += 1;
        }
        Ok(opened)
    }

    /// Opens the partition's replica over its log (read back from its last
    /// applied checkpoint) and hands it to the shard's replication task.
    /// Its producer states are not kept here until it leads.
    async fn open_replica(
        &self,
        topic: &TopicMeta,
        partition: u32,
        members: &[u64],
        log: &PartitionLog,
    ) -> Result<(), BrokerError> {
        let group = crate::replication::group_id(topic.id, partition);
        let replica = crate::replication::replica::PartitionReplica::open(
            &topic.name,
            partition,
            net::cluster::member_id(self.config.node_id, self.config.incarnation),
            members,
            Rc::new(log.clone()),
            storage::log::system_clock(),
            &self.config.raft_timing(),
        )
        .await?;
        let view = Rc::new(ReplicaView::new(group, replica.high_watermark()));
        tracing::debug!(
            shard = self.id, topic = %topic.name, partition, group, members = ?members,
            recovered_from = %replica.recovered_from(), "opened partition replica"
        );
        let mut handle = self.replication.clone().ok_or_else(|| BrokerError::Replication {
            topic: topic.name.clone(),
            partition,
            reason: "a replicated partition on a node without peers".into(),
        })?;
        use futures::SinkExt;
        handle
            .send(Command::Open {
                group,
                replica: Box::new(replica),
                view: view.clone(),
            })
            .await
            .map_err(|_| BrokerError::ShardGone(self.id))?;
        self.replicas.borrow_mut().insert((topic.name.clone(), partition), view);
        Ok(())
    }

    /// Lets the shard's replication task go of a partition's replica.
    async fn close_replica(&self, topic: &str, partition: u32) {
        let view = self.replicas.borrow_mut().remove(&(topic.to_string(), partition));
        self.producer_states_term
            .borrow_mut()
            .remove(&(topic.to_string(), partition));
        let (Some(view), Some(mut handle)) = (view, self.replication.clone()) else {
            return;
        };
        use futures::SinkExt;
        let (reply, closed) = futures::channel::oneshot::channel();
        if handle
            .send(Command::Close {
                group: view.group,
                reply,
            })
            .await
            .is_ok()
        {
            let _ = closed.await;
        }
    }

    fn replica_view(&self, topic: &str, partition: u32) -> Option<Rc<ReplicaView>> {
        self.replication.as_ref()?;
        self.replicas.borrow().get(&(topic.to_string(), partition)).cloned()
    }

    /// A replicated partition's view, if this node's replica leads it;
    /// NOT_LEADER_OR_FOLLOWER naming the leader it knows if not.
    fn leading(&self, topic: &str, partition: u32) -> Result<Option<Rc<ReplicaView>>, BrokerError> {
        match self.replica_view(topic, partition) {
            Some(view) if !view.is_leader() => Err(BrokerError::NotLeaderOrFollower {
                topic: topic.to_string(),
                partition,
                leader: view.leader().filter(|l| *l != self.config.node_id),
            }),
            view => Ok(view),
        }
    }

    /// `leading`, after checking a client's current leader epoch against
    /// the partition's, as Kafka does before it looks at leadership: an
    /// older one is fenced (the client's metadata is stale), a newer one
    /// unknown (this replica has not learned of it yet).
    fn leading_in(
        &self,
        topic: &str,
        partition: u32,
        log: &PartitionLog,
        requested: i32,
    ) -> Result<Option<Rc<ReplicaView>>, BrokerError> {
        if requested != NO_LEADER_EPOCH {
            let current = current_epoch(log, self.replica_view(topic, partition).as_deref());
            let topic = topic.to_string();
            if requested < current {
                return Err(BrokerError::FencedLeaderEpoch {
                    topic,
                    partition,
                    requested,
                    current,
                });
            }
            if requested > current {
                return Err(BrokerError::UnknownLeaderEpoch {
                    topic,
                    partition,
                    requested,
                    current,
                });
            }
        }
        self.leading(topic, partition)
    }

    /// The topic's `min.insync.replicas` (1 unless set).
    fn min_insync(&self, topic: &str) -> usize {
        self.metadata
            .snapshot()
            .topics
            .get(topic)
            .and_then(|t| t.configs.get(crate::topics::MIN_INSYNC_REPLICAS))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }

    /// Proposes a batch to the partition's group: the reply to wait on for
    /// its outcome.
    async fn propose(&self, topic: &str, view: &ReplicaView, frame: &[u8], acks: i8) -> Result<Committed, BrokerError> {
        use futures::SinkExt;
        let mut handle = self
            .replication
            .clone()
            .expect("a replicated partition has a replication task");
        let (reply, answer) = futures::channel::oneshot::channel();
        let acks = if acks == net::messages::acks::ALL {
            Acks::All
        } else {
            Acks::Leader
        };
        handle
            .send(Command::Propose {
                group: view.group,
                frame: frame.to_vec(),
                acks,
                min_insync: self.min_insync(topic),
                reply,
            })
            .await
            .map_err(|_| BrokerError::ShardGone(self.id))?;
        answer.await.map_err(|_| BrokerError::ShardGone(self.id))?
    }

    /// Waits for a proposed batch's outcome, up to `COMMIT_WAIT_MAX`.
    async fn committed(&self, topic: &str, partition: u32, reply: Committed) -> Result<Stored, BrokerError> {
        use futures::FutureExt;
        let unknown =
            |why: &str| BrokerError::TimedOut(format!("{topic}/{partition}: {why}; the batch's outcome is unknown"));
        futures::select! {
            outcome = reply.fuse() => match outcome {
                Ok(Ok(appended)) => Ok(Stored {
                    base_offset: appended.base_offset,
                    last_offset: appended.last_offset,
                    append_time_ms: appended.append_time_ms,
                }),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(unknown("the replica was let go")),
            },
            _ = glommio::timer::sleep(COMMIT_WAIT_MAX).fuse() => Err(unknown(&format!("not committed within {COMMIT_WAIT_MAX:?}"))),
        }
    }

    /// Appends one batch made here (a transaction marker, a coordinator's
    /// record) and waits until it is durable: on a replicated partition,
    /// committed.
    async fn append_durable(
        &self,
        topic: &str,
        partition: u32,
        log: &PartitionLog,
        frame: &[u8],
    ) -> Result<Stored, BrokerError> {
        let appending = self.begin_append(topic, partition, log, frame).await?;
        self.settle(topic, partition, log, appending).await
    }

    /// Appends one batch made here to the partition's log, or proposes it
    /// (acks=all) where the partition is replicated and this replica leads
    /// it; `settle` waits until it is durable. Callers holding a turn
    /// append under it and settle after it.
    async fn begin_append(
        &self,
        topic: &str,
        partition: u32,
        log: &PartitionLog,
        frame: &[u8],
    ) -> Result<Appending, BrokerError> {
        if let Some(view) = self.leading(topic, partition)? {
            let reply = self.propose(topic, &view, frame, net::messages::acks::ALL).await?;
            return Ok(Appending::Proposed(reply));
        }
        let appended = log.append(frame).await.map_err(|source| BrokerError::Storage {
            topic: topic.to_string(),
            partition,
            source,
        })?;
        Ok(Appending::Local(appended))
    }

    /// Waits until a batch `begin_append` began is durable.
    async fn settle(
        &self,
        topic: &str,
        partition: u32,
        log: &PartitionLog,
        appending: Appending,
    ) -> Result<Stored, BrokerError> {
        match appending {
            Appending::Proposed(reply) => self.committed(topic, partition, reply).await,
            Appending::Settled(stored) => Ok(stored),
            Appending::Local(appended) => {
                log.wait_durable(appended.last_offset)
                    .await
                    .map_err(|source| BrokerError::Storage {
                        topic: topic.to_string(),
                        partition,
                        source,
                    })?;
                Ok(Stored {
                    base_offset: appended.base_offset,
                    last_offset: appended.last_offset,
                    append_time_ms: appended.append_time_ms,
                })
            }
        }
    }

    /// On a replicated partition's leader, under its idempotent turn: the
    /// producer states rebuilt from the log when this replica has begun to
    /// lead since they were (a follower keeps none; the log it now leads
    /// holds every batch it will commit).
    async fn refresh_producer_states(
        &self,
        key: &(String, u32),
        log: &PartitionLog,
        view: &ReplicaView,
    ) -> Result<(), BrokerError> {
        let term = view.term();
        if self.producer_states_term.borrow().get(key) == Some(&term) {
            return Ok(());
        }
        let states = replay_producer_states(log, ProducerStates::default(), log.log_start_offset())
            .await
            .map_err(|source| BrokerError::Storage {
                topic: key.0.clone(),
                partition: key.1,
                source,
            })?;
        tracing::debug!(shard = self.id, topic = %key.0, partition = key.1, term, "producer states rebuilt from the log");
        self.producer_states.borrow_mut().insert(key.clone(), states);
        self.producer_states_term.borrow_mut().insert(key.clone(), term);
        Ok(())
    }

    async fn delete_partitions(&self, topic: &TopicMeta) -> Result<(), BrokerError> {
        for (partition, &owner) in topic.shards.iter().enumerate() {
            let partition = partition as u32;
            if owner != self.id {
                continue;
            }
            self.close_replica(&topic.name, partition).await;
            let log = self.logs.borrow_mut().remove(&(topic.name.clone(), partition));
            self.producer_states
                .borrow_mut()
                .remove(&(topic.name.clone(), partition));
            if let Some(log) = log {
                let _ = log.close().await;
            }
            let dir = partition_dir(&self.config.data_dir, &topic.name, partition);
            storage::blocking::off_shard(move || match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(BrokerError::Io {
                    op: "remove partition directory",
                    path: dir,
                    source,
                }),
            })
            .await?;
        }
        Ok(())
    }

    /// Flushes and closes every log: the last thing a shard does.
    pub async fn close_all(&self) {
        let logs: Vec<((String, u32), PartitionLog)> = self.logs.borrow_mut().drain().collect();
        for ((topic, partition), log) in logs {
            let dir = log.dir().to_path_buf();
            let end = log.log_end_offset().0;
            self.stats.add_log(&log.stats());
            if let Err(error) = log.close().await {
                tracing::error!(shard = self.id, %topic, partition, %error, "closing partition failed");
                continue;
            }
            // A snapshot of the producers' sequences, valid for exactly this
            // log end: the next open loads it instead of reading the log.
            let mut states = self.producer_states.borrow_mut().remove(&(topic.clone(), partition));
            if self.replicas.borrow_mut().remove(&(topic.clone(), partition)).is_some() {
                // A replica's states are the leader's of one term, rebuilt
                // from the log whenever it leads: none is saved.
                states = None;
            }
            // Written even when empty: the next open then reads no log.
            if let Some(states) = states {
                if let Err(error) = states.save(&dir, end) {
                    tracing::warn!(shard = self.id, %topic, partition, %error, "producer state snapshot not written");
                }
            }
        }
    }

    /// Writes the snapshot of each partition whose producer state changed
    /// since its last one, so a crash replays only the log after it. Each is
    /// taken under the partition's idempotent turn: every batch that changes
    /// the state is appended and recorded under it, so the state matches
    /// the log up to its end. Internal topics are left to a full replay.
    pub async fn snapshot_producer_states(&self) {
        let dirty: Vec<(String, u32)> = self
            .producer_states
            .borrow()
            .iter()
            .filter(|((topic, _), states)| states.is_dirty() && !topic.starts_with("__"))
            .filter(|(key, _)| !self.replicas.borrow().contains_key(key))
            .map(|(key, _)| key.clone())
            .collect();
        for key in dirty {
            let turn = self.idempotent_turn(&key);
            let Ok(_turn) = turn.acquire_permit(1).await else {
                return;
            };
            let Ok(log) = self.log(&key.0, key.1) else {
                continue;
            };
            let end = log.log_end_offset().0;
            let encoded = {
                let mut states = self.producer_states.borrow_mut();
                let Some(states) = states.get_mut(&key) else {
                    continue;
                };
                states.prune(log.log_start_offset().0);
                states.encode_snapshot(end)
            };
            // The write and its fsync go off the shard; the turn, held
            // meanwhile, keeps the state as encoded.
            let dir = log.dir().to_path_buf();
            let written = match encoded {
                Ok(bytes) => {
                    storage::blocking::off_shard(move || crate::producer_state::write_snapshot(&dir, &bytes)).await
                }
                Err(error) => Err(error),
            };
            match written {
                Ok(()) => {
                    if let Some(states) = self.producer_states.borrow_mut().get_mut(&key) {
                        states.saved();
                    }
                }
                Err(error) => {
                    tracing::warn!(shard = self.id, topic = %key.0, partition = key.1, %error, "producer state snapshot not written")
                }
            }
        }
    }

    /// A partition's idempotent turn: appends that change its producer state
    /// (idempotent and transactional batches, markers, transactional offset
    /// commits) and its snapshots take it, one at a time.
    fn idempotent_turn(&self, key: &(String, u32)) -> Rc<glommio::sync::Semaphore> {
        self.idempotent_turns
            .borrow_mut()
            .entry(key.clone())
            .or_insert_with(|| Rc::new(glommio::sync::Semaphore::new(1)))
            .clone()
    }

    fn owner(&self, topic: &str, partition: u32) -> Result<ShardId, BrokerError> {
        let table = self.metadata.snapshot();
        table.owner(topic, partition).ok_or_else(|| {
            if table.is_elsewhere(topic, partition) {
                BrokerError::NotLeaderOrFollower {
                    topic: topic.to_string(),
                    partition,
                    leader: table.leader(topic, partition).map(|(node, _)| node),
                }
            } else {
                unknown(topic, partition)
            }
        })
    }

    fn log(&self, topic: &str, partition: u32) -> Result<PartitionLog, BrokerError> {
        self.logs
            .borrow()
            .get(&(topic.to_string(), partition))
            .cloned()
            .ok_or_else(|| unknown(topic, partition))
    }

    async fn ask<T>(&self, owner: ShardId, message: impl FnOnce(Reply<T>) -> ShardMessage) -> Result<T, BrokerError> {
        bump(&self.stats.hops);
        let (reply, answer) = futures::channel::oneshot::channel();
        // A full inbox makes the sender wait, woken when the owner takes a
        // message: backpressure between shards.
        self.inboxes[owner as usize]
            .send_async(message(reply))
            .await
            .map_err(|_| BrokerError::ShardGone(owner))?;
        // A dropped reply (the owner stopped before answering) is a gone shard.
        answer.await.map_err(|_| BrokerError::ShardGone(owner))?
    }

    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        batches: &[u8],
        acks: i8,
    ) -> Result<Produced, BrokerError> {
        refuse_internal(topic)?;
        let owner = self.owner(topic, partition)?;
        if owner == self.id {
            bump(&self.stats.produce_local);
            return self.produce_local(topic, partition, batches, acks).await;
        }
        bump(&self.stats.produce_hops);
        let (topic, batches) = (topic.to_string(), batches.to_vec());
        self.ask(owner, |reply| ShardMessage::Produce {
            topic,
            partition,
            batches,
            acks,
            reply,
        })
        .await
    }

    async fn produce_local(
        &self,
        topic: &str,
        partition: u32,
        batches: &[u8],
        acks: i8,
    ) -> Result<Produced, BrokerError> {
        let log = self.log(topic, partition)?;
        let storage_error = |source| BrokerError::Storage {
            topic: topic.to_string(),
            partition,
            source,
        };
        let mut frames = Vec::new();
        let mut at = 0;
        while at < batches.len() {
            match storage::batch::frame_length(&batches[at..]) {
                Some(len) if len > storage::batch::FRAME_LENGTH_BYTES && at + len <= batches.len() => {
                    frames.push(&batches[at..at + len]);
                    at += len;
                }
                _ => {
                    return Err(BrokerError::CorruptBatches {
                        topic: topic.to_string(),
                        partition,
                        reason: format!("bytes at {at} of {} are not a whole batch frame", batches.len()),
                    })
                }
            }
        }
        if frames.is_empty() {
            return Err(BrokerError::CorruptBatches {
                topic: topic.to_string(),
                partition,
                reason: "no record batch".into(),
            });
        }
        if let Some(view) = self.leading(topic, partition)? {
            return self
                .produce_replicated(topic, partition, &log, &view, frames, acks)
                .await;
        }
        let mut first = None;
        let mut last = Offset(0);
        for frame in frames {
            let header = storage::batch::peek_header(frame).map_err(storage_error)?;
            let plain = header.producer_id < 0 && !header.is_transactional() && !header.is_control();
            let appended = if plain {
                let appended = log.append(frame).await.map_err(storage_error)?;
                Stored {
                    base_offset: appended.base_offset,
                    last_offset: appended.last_offset,
                    append_time_ms: appended.append_time_ms,
                }
            } else {
                self.append_idempotent(topic, partition, &log, None, frame, header)
                    .await?
            };
            first.get_or_insert(appended);
            last = appended.last_offset;
            let records = appended.last_offset.0 - appended.base_offset.0 + 1;
            self.stats
                .records_appended
                .set(self.stats.records_appended.get() + records);
        }
        if acks == net::messages::acks::ALL {
            let waiting = std::time::Instant::now();
            log.wait_durable(last).await.map_err(storage_error)?;
            self.stats.durable_wait.record(waiting.elapsed());
        }
        let first = first.expect("at least one frame");
        Ok(Produced {
            base_offset: first.base_offset.0,
            append_time_ms: first.append_time_ms,
            log_start_offset: log.log_start_offset().0,
        })
    }

    /// A produce to a replicated partition this replica leads: every batch
    /// proposed at once, then their outcomes awaited (an idempotent one is
    /// awaited under its turn, before the next is checked).
    async fn produce_replicated(
        &self,
        topic: &str,
        partition: u32,
        log: &PartitionLog,
        view: &ReplicaView,
        frames: Vec<&[u8]>,
        acks: i8,
    ) -> Result<Produced, BrokerError> {
        let mut proposed = Vec::with_capacity(frames.len());
        for frame in frames {
            let header = storage::batch::peek_header(frame).map_err(|source| BrokerError::Storage {
                topic: topic.to_string(),
                partition,
                source,
            })?;
            let plain = header.producer_id < 0 && !header.is_transactional() && !header.is_control();
            proposed.push(if plain {
                Err(self.propose(topic, view, frame, acks).await?)
            } else {
                Ok(self
                    .append_idempotent(topic, partition, log, Some((view, acks)), frame, header)
                    .await?)
            });
        }
        let mut first = None;
        for proposal in proposed {
            let stored = match proposal {
                Ok(stored) => stored,
                Err(reply) => self.committed(topic, partition, reply).await?,
            };
            first.get_or_insert(stored);
            let records = stored.last_offset.0 - stored.base_offset.0 + 1;
            self.stats
                .records_appended
                .set(self.stats.records_appended.get() + records);
        }
        let first = first.expect("at least one frame");
        Ok(Produced {
            base_offset: first.base_offset.0,
            append_time_ms: first.append_time_ms,
            log_start_offset: log.log_start_offset().0,
        })
    }

    /// Appends a batch of an idempotent producer, unless it is a retry of
    /// one the log holds (answered with that batch's offsets) or out of
    /// sequence (refused). On a replicated partition (`replica`, with the
    /// request's acks) it is proposed and its outcome awaited under the
    /// turn, so that the next batch's check sees it.
    async fn append_idempotent(
        &self,
        topic: &str,
        partition: u32,
        log: &PartitionLog,
        replica: Option<(&ReplicaView, i8)>,
        frame: &[u8],
        header: storage::batch::BatchInfo,
    ) -> Result<Stored, BrokerError> {
        let key = (topic.to_string(), partition);
        let turn = self.idempotent_turn(&key);
        let _turn = turn
            .acquire_permit(1)
            .await
            .map_err(|_| BrokerError::ShardGone(self.id))?;
        if let Some((view, _)) = replica {
            self.refresh_producer_states(&key, log, view).await?;
        }
        let check = self
            .producer_states
            .borrow()
            .get(&key)
            .map_or(Check::Append, |states| states.check(&header));
        match check {
            // A retry of a batch the log holds: answer with its offsets.
            Check::Duplicate { base_offset } => Ok(Stored {
                base_offset: Offset(base_offset),
                last_offset: Offset(base_offset + u64::from(header.last_offset_delta)),
                append_time_ms: -1,
            }),
            Check::Refuse(code) => Err(BrokerError::ProducerSequence {
                topic: topic.to_string(),
                partition,
                producer_id: header.producer_id,
                epoch: header.producer_epoch,
                sequence: header.base_sequence,
                code,
            }),
            Check::Append => {
                let appended = match replica {
                    Some((view, acks)) => {
                        let reply = self.propose(topic, view, frame, acks).await?;
                        match self.committed(topic, partition, reply).await {
                            Ok(stored) => stored,
                            Err(error) => {
                                // Its outcome unknown, the states may miss
                                // it: read them from the log again.
                                self.producer_states_term.borrow_mut().remove(&key);
                                return Err(error);
                            }
                        }
                    }
                    None => {
                        let appended = log.append(frame).await.map_err(|source| BrokerError::Storage {
                            topic: topic.to_string(),
                            partition,
                            source,
                        })?;
                        Stored {
                            base_offset: appended.base_offset,
                            last_offset: appended.last_offset,
                            append_time_ms: appended.append_time_ms,
                        }
                    }
                };
                let mut stored = header;
                stored.base_offset = appended.base_offset;
                if let Some(states) = self.producer_states.borrow_mut().get_mut(&key) {
                    states.record(&stored, None);
                }
                Ok(appended)
            }
        }
    }

    pub async fn fetch(&self, topic: &str, partition: u32, at: FetchAt) -> Result<Fetched<FetchBytes>, BrokerError> {
        let owner = self.owner(topic, partition)?;
        if owner == self.id {
            bump(&self.stats.fetch_local);
            let fetched = self.fetch_local(topic, partition, at).await?;
            return Ok(Fetched {
                bytes: FetchBytes::Local(fetched.bytes),
                high_watermark: fetched.high_watermark,
                last_stable_offset: fetched.last_stable_offset,
                log_start_offset: fetched.log_start_offset,
                aborted: fetched.aborted,
                leader_epoch: fetched.leader_epoch,
            });
        }
        bump(&self.stats.fetch_hops);
        let topic = topic.to_string();
        let fetched = self
            .ask(owner, |reply| ShardMessage::Fetch {
                topic,
                partition,
                at,
                reply,
            })
            .await?;
        Ok(Fetched {
            bytes: FetchBytes::Remote(fetched.bytes),
            high_watermark: fetched.high_watermark,
            last_stable_offset: fetched.last_stable_offset,
            log_start_offset: fetched.log_start_offset,
            aborted: fetched.aborted,
            leader_epoch: fetched.leader_epoch,
        })
    }

    /// Reads from the partition; at READ_COMMITTED only batches below the
    /// last stable offset, with the aborted transactions among them.
    async fn fetch_local(&self, topic: &str, partition: u32, at: FetchAt) -> Result<Fetched<ReadBytes>, BrokerError> {
        let FetchAt {
            offset,
            max_bytes,
            limit,
            isolation_level,
            current_leader_epoch,
        } = at;
        let log = self.log(topic, partition)?;
        let replica = self.leading_in(topic, partition, &log, current_leader_epoch)?;
        let storage = |source| BrokerError::Storage {
            topic: topic.to_string(),
            partition,
            source,
        };
        let read = if limit == FetchLimit::Within && max_bytes == 0 {
            // Past the response's limit: the watermarks, and no read.
            let (log_start, log_end) = (log.log_start_offset(), log.log_end_offset());
            if offset < log_start.0 || offset > log_end.0 {
                return Err(storage(storage::StorageError::OffsetOutOfRange {
                    offset: Offset(offset),
                    log_start,
                    log_end,
                }));
            }
            storage::LogRead {
                bytes: storage::ReadBytes::empty(),
                next_offset: Offset(offset),
                log_start_offset: log_start,
                log_end_offset: log_end,
            }
        } else {
            let mut read = log.read(Offset(offset), max_bytes as usize).await.map_err(storage)?;
            if limit == FetchLimit::Within && read.bytes.len() > max_bytes as usize {
                // One batch larger than what is left of the response.
                read.bytes = read.bytes.prefix(0);
            }
            read
        };
        let mut read = read;
        let high_watermark = match &replica {
            // Consumers read only what is committed.
            Some(view) => {
                let high_watermark = view.high_watermark();
                let mut committed = 0;
                for frame in storage::batch::frames(&read.bytes) {
                    let info = storage::batch::peek_header(frame).map_err(storage)?;
                    if info.last_offset() >= high_watermark {
                        break;
                    }
                    committed += frame.len();
                }
                if committed < read.bytes.len() {
                    read.bytes = read.bytes.prefix(committed);
                }
                high_watermark.0
            }
            None => read.log_end_offset.0,
        };
        let key = (topic.to_string(), partition);
        if let Some(view) = &replica {
            if isolation_level == isolation::READ_COMMITTED {
                let turn = self.idempotent_turn(&key);
                let _turn = turn
                    .acquire_permit(1)
                    .await
                    .map_err(|_| BrokerError::ShardGone(self.id))?;
                self.refresh_producer_states(&key, &log, view).await?;
            }
        }
        let last_stable_offset = self
            .producer_states
            .borrow()
            .get(&key)
            .map_or(high_watermark, |s| s.last_stable_offset(high_watermark));
        let mut bytes = read.bytes;
        let mut aborted = Vec::new();
        if isolation_level == isolation::READ_COMMITTED {
            let mut stable_bytes = 0;
            for frame in storage::batch::frames(&bytes) {
                let info = storage::batch::peek_header(frame).map_err(|source| BrokerError::Storage {
                    topic: topic.to_string(),
                    partition,
                    source,
                })?;
                if info.last_offset().0 >= last_stable_offset {
                    break;
                }
                stable_bytes += frame.len();
            }
            if stable_bytes < bytes.len() {
                bytes = bytes.prefix(stable_bytes);
            }
            if let Some(states) = self.producer_states.borrow().get(&key) {
                aborted = states.aborted_between(offset, last_stable_offset);
            }
        }
        Ok(Fetched {
            bytes,
            high_watermark,
            last_stable_offset,
            log_start_offset: read.log_start_offset.0,
            aborted,
            leader_epoch: current_epoch(&log, replica.as_deref()),
        })
    }

    /// Waits until the partition holds `offset` (its end has moved past it)
    /// or `deadline` passes; returns whether it does. On the owner this is
    /// woken by the append itself; from another shard the owner waits and
    /// replies.
    pub async fn wait_for_data(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        deadline: std::time::Instant,
    ) -> Result<bool, BrokerError> {
        let owner = self.owner(topic, partition)?;
        if owner == self.id {
            return self.wait_for_data_local(topic, partition, offset, deadline).await;
        }
        let topic = topic.to_string();
        self.ask(owner, |reply| ShardMessage::WaitForData {
            topic,
            partition,
            offset,
            deadline,
            reply,
        })
        .await
    }

    async fn wait_for_data_local(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        deadline: std::time::Instant,
    ) -> Result<bool, BrokerError> {
        let log = self.log(topic, partition)?;
        if let Some(view) = self.leading(topic, partition)? {
            return Ok(view.wait_for_data(Offset(offset), deadline).await);
        }
        Ok(log.wait_for_data(Offset(offset), deadline).await)
    }

    /// ListOffsets: the offset for `timestamp` (or the earliest or latest)
    /// with its batch's leader epoch, after checking the client's
    /// `current_leader_epoch` (`NO_LEADER_EPOCH`: none).
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
        current_leader_epoch: i32,
    ) -> Result<Option<ListedOffset>, BrokerError> {
        let owner = self.owner(topic, partition)?;
        if owner == self.id {
            return self
                .list_offset_local(topic, partition, timestamp, current_leader_epoch)
                .await;
        }
        let topic = topic.to_string();
        self.ask(owner, |reply| ShardMessage::ListOffset {
            topic,
            partition,
            timestamp,
            current_leader_epoch,
            reply,
        })
        .await
    }

    /// (topic, partition, bytes) of every partition this shard owns.
    pub fn partition_sizes_local(&self) -> Vec<(String, u32, u64)> {
        self.logs
            .borrow()
            .iter()
            .map(|((topic, partition), log)| (topic.clone(), *partition, log.size_bytes()))
            .collect()
    }

    /// (topic, partition, bytes) of every partition of this node, asked of
    /// each shard in turn.
    pub async fn partition_sizes(&self) -> Result<Vec<(String, u32, u64)>, BrokerError> {
        let mut sizes = self.partition_sizes_local();
        for owner in (0..self.inboxes.len() as ShardId).filter(|s| *s != self.id) {
            sizes.extend(self.ask(owner, |reply| ShardMessage::PartitionSizes { reply }).await?);
        }
        Ok(sizes)
    }

    /// OffsetForLeaderEpoch (KIP-320): the largest epoch at most
    /// `leader_epoch` and the offset where the epoch after it starts (the
    /// log end for the current one), or (-1, -1) for an epoch before the
    /// log's first; after checking the client's `current_leader_epoch`
    /// (-1: none) against the partition's.
    pub async fn epoch_end_offset(
        &self,
        topic: &str,
        partition: u32,
        current_leader_epoch: i32,
        leader_epoch: i32,
    ) -> Result<(i32, i64), BrokerError> {
        let owner = self.owner(topic, partition)?;
        if owner == self.id {
            return self.epoch_end_offset_local(topic, partition, current_leader_epoch, leader_epoch);
        }
        let topic = topic.to_string();
        self.ask(owner, |reply| ShardMessage::EpochEndOffset {
            topic,
            partition,
            current_leader_epoch,
            leader_epoch,
            reply,
        })
        .await
    }

    fn epoch_end_offset_local(
        &self,
        topic: &str,
        partition: u32,
        current_leader_epoch: i32,
        leader_epoch: i32,
    ) -> Result<(i32, i64), BrokerError> {
        let log = self.log(topic, partition)?;
        let replica = self.leading_in(topic, partition, &log, current_leader_epoch)?;
        let current = current_epoch(&log, replica.as_deref());
        if leader_epoch == current {
            return Ok((current, log.log_end_offset().0 as i64));
        }
        Ok(log
            .end_offset_for_leader_epoch(leader_epoch)
            .map_or((-1, -1), |(epoch, offset)| (epoch, offset.0 as i64)))
    }

    async fn list_offset_local(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
        current_leader_epoch: i32,
    ) -> Result<Option<ListedOffset>, BrokerError> {
        let log = self.log(topic, partition)?;
        let replica = self.leading_in(topic, partition, &log, current_leader_epoch)?;
        let current = current_epoch(&log, replica.as_deref());
        // An offset at the log's end (no batch there yet) is in the
        // current epoch, as Kafka answers the latest offset.
        let listed = |offset: Offset| ListedOffset {
            offset: offset.0,
            leader_epoch: if offset >= log.log_end_offset() {
                current
            } else {
                log.leader_epoch_at(offset).unwrap_or(current)
            },
        };
        match timestamp {
            net::messages::EARLIEST_TIMESTAMP => Ok(Some(listed(log.log_start_offset()))),
            // What a consumer can read up to.
            net::messages::LATEST_TIMESTAMP => Ok(Some(ListedOffset {
                offset: replica.map_or(log.log_end_offset(), |v| v.high_watermark()).0,
                leader_epoch: current,
            })),
            ts => log
                .offset_for_timestamp(ts)
                .await
                .map(|o| o.map(listed))
                .map_err(|source| BrokerError::Storage {
                    topic: topic.to_string(),
                    partition,
                    source,
                }),
        }
    }

    /// Creates a topic and opens its partitions on their owners.
    /// Checks that `create_topic` would accept the topic, creating nothing.
    pub fn validate_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        refuse_internal(name)?;
        let partitions = if partitions == 0 {
            self.config.default_partitions
        } else {
            partitions
        };
        self.metadata.validate_create(name, partitions, configs)
    }

    /// Creates a topic: on one node in its topic table, in a cluster
    /// through the controller (forwarded to its leader when this node's
    /// replica follows, unless `forwarded` says it already was).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: Option<u16>,
        configs: BTreeMap<String, String>,
        forwarded: bool,
    ) -> Result<(), BrokerError> {
        let partitions = if partitions == 0 {
            self.config.default_partitions
        } else {
            partitions
        };
        refuse_internal(name)?;
        if let Some(controller) = &self.controller {
            self.metadata.validate_create(name, partitions, &configs)?;
            let created = controller
                .create_topic(name, partitions, replication_factor, configs.clone())
                .await;
            match created {
                Err(BrokerError::NotController { leader: Some(leader) }) if !forwarded => {
                    let configs: Vec<net::messages::TopicConfig> = configs
                        .into_iter()
                        .map(|(key, value)| net::messages::TopicConfig { key, value })
                        .collect();
                    let factor = replication_factor.map_or(-1, |f| f as i16);
                    self.forward_to_controller(leader, async |c| {
                        c.create_topic_forwarded(name, partitions, factor, configs).await
                    })
                    .await?
                }
                other => other?,
            }
            self.await_reconciled(&format!("topic {name} created"), |t| t.topics.contains_key(name))
                .await?;
            tracing::info!(topic = name, partitions, "created topic through the controller");
            return Ok(());
        }
        if replication_factor.is_some_and(|f| f != 1) {
            return Err(BrokerError::InvalidReplicationFactor {
                topic: name.to_string(),
                factor: usize::from(replication_factor.unwrap_or(1)),
                nodes: 1,
            });
        }
        // The topic table is rewritten and synced: off the shard.
        let (metadata, topic) = (self.metadata.clone(), name.to_string());
        let meta = storage::blocking::off_shard(move || metadata.create(&topic, partitions, configs)).await?;
        self.change_on_owners(&meta, TopicChange::Open).await?;
        tracing::info!(topic = name, partitions, "created topic");
        Ok(())
    }

    /// Has every shard owning a partition of `meta` make `change` to its
    /// partitions, this one included.
    pub(super) async fn change_on_owners(&self, meta: &TopicMeta, change: TopicChange) -> Result<(), BrokerError> {
        for owner in owners(meta) {
            if owner == self.id {
                match change {
                    TopicChange::Open => self.open_partitions(meta).await.map(|_| ())?,
                    TopicChange::Delete => self.delete_partitions(meta).await?,
                    TopicChange::Configs => self.apply_topic_configs(meta).await?,
                }
            } else {
                let topic = meta.clone();
                self.ask(owner, |reply| match change {
                    TopicChange::Open => ShardMessage::OpenPartitions { topic, reply },
                    TopicChange::Delete => ShardMessage::DeletePartitions { topic, reply },
                    TopicChange::Configs => ShardMessage::ApplyConfigs { topic, reply },
                })
                .await?;
            }
        }
        Ok(())
    }

    pub async fn delete_topic(&self, name: &str, forwarded: bool) -> Result<(), BrokerError> {
        refuse_internal(name)?;
        if let Some(controller) = &self.controller {
            match controller.delete_topic(name).await {
                Err(BrokerError::NotController { leader: Some(leader) }) if !forwarded => {
                    self.forward_to_controller(leader, async |c| c.delete_topic_forwarded(name).await)
                        .await?
                }
                other => other?,
            }
            self.await_reconciled(&format!("topic {name} deleted"), |t| !t.topics.contains_key(name))
                .await?;
            tracing::info!(topic = name, "deleted topic through the controller");
            return Ok(());
        }
        let (metadata, topic) = (self.metadata.clone(), name.to_string());
        let meta = storage::blocking::off_shard(move || metadata.delete(&topic)).await?;
        self.change_on_owners(&meta, TopicChange::Delete).await?;
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Serves other shards' requests until told to shut down.
    /// Hands a peer's Raft messages to the replication task; dropped if
    /// its queue is full (Raft sends again what was not answered).
    fn step_replicas(&self, from: u64, messages: Vec<(u64, Vec<u8>)>) {
        let Some(mut handle) = self.replication.clone() else {
            return;
        };
        if handle.try_send(Command::Step { from, messages }).is_err() {
            tracing::debug!(
                shard = self.id,
                from,
                "replication: the task's queue is full, messages dropped"
            );
        }
    }

    /// A clean stop of the replication task: the groups this shard leads
    /// are handed over first. Meanwhile the inbox still brings the peers'
    /// messages the hand-over waits for; anything else is refused (its
    /// reply dropped: the shard is going).
    async fn stop_replication(&self, inbox: &flume::Receiver<ShardMessage>) {
        use futures::{FutureExt, SinkExt};
        let Some(mut handle) = self.replication.clone() else {
            return;
        };
        let (reply, stopped) = futures::channel::oneshot::channel();
        let until = std::time::Instant::now() + crate::controller::driver::HAND_OVER_WAIT;
        if handle.send(Command::Stop { until, reply }).await.is_err() {
            return;
        }
        let mut stopped = stopped.fuse();
        loop {
            futures::select! {
                _ = stopped => return,
                message = inbox.recv_async().fuse() => match message {
                    Ok(ShardMessage::Raft { from, messages }) => self.step_replicas(from, messages),
                    Ok(_) => {}
                    Err(_) => return,
                },
            }
        }
    }

    pub async fn serve_inbox(self: Rc<Self>, inbox: flume::Receiver<ShardMessage>) {
        while let Ok(message) = inbox.recv_async().await {
            let shard = self.clone();
            match message {
                ShardMessage::Shutdown => {
                    self.stop_replication(&inbox).await;
                    break;
                }
                ShardMessage::Raft { from, messages } => self.step_replicas(from, messages),
                ShardMessage::PartitionSizes { reply } => {
                    let _ = reply.send(Ok(shard.partition_sizes_local()));
                }
                ShardMessage::Metrics { reply } => {
                    let _ = reply.try_send(self.metric_samples());
                }
                ShardMessage::Produce {
                    topic,
                    partition,
                    batches,
                    acks,
                    reply,
                } => {
                    glommio::spawn_local(async move {
                        let _ = reply.send(shard.produce_local(&topic, partition, &batches, acks).await);
                    })
                    .detach();
                }
                ShardMessage::Fetch {
                    topic,
                    partition,
                    at,
                    reply,
                } => {
                    glommio::spawn_local(async move {
                        let fetched = shard.fetch_local(&topic, partition, at).await;
                        let _ = reply.send(fetched.map(|f| Fetched {
                            bytes: f.bytes.to_vec(),
                            high_watermark: f.high_watermark,
                            last_stable_offset: f.last_stable_offset,
                            log_start_offset: f.log_start_offset,
                            aborted: f.aborted,
                            leader_epoch: f.leader_epoch,
                        }));
                    })
                    .detach();
                }
                ShardMessage::DescribeProducers {
                    topic,
                    partition,
                    reply,
                } => {
                    glommio::spawn_local(async move {
                        let _ = reply.send(shard.describe_producers_here(&topic, partition).await);
                    })
                    .detach();
                }
                ShardMessage::ListTransactions { reply } => {
                    let _ = reply.send(Ok(shard.transactions_here()));
                }
                ShardMessage::DeleteRecords {
                    topic,
                    partition,
                    offset,
                    reply,
                } => {
                    glommio::spawn_local(async move {
                        let _ = reply.send(shard.delete_records_here(&topic, partition, offset).await);
                    })
                    .detach();
                }
                ShardMessage::TransferLeader {
                    topic,
                    partition,
                    to,
                    reply,
                } => {
                    debug_assert_eq!(to, shard.config.node_id);
                    glommio::spawn_local(async move {
                        let _ = reply.send(shard.transfer_leader_here(&topic, partition).await);
                    })
                    .detach();
                }
                ShardMessage::EpochEndOffset {
                    topic,
                    partition,
                    current_leader_epoch,
                    leader_epoch,
                    reply,
                } => {
                    let _ =
                        reply.send(shard.epoch_end_offset_local(&topic, partition, current_leader_epoch, leader_epoch));
                }
                ShardMessage::ListOffset {
                    topic,
                    partition,
                    timestamp,
                    current_leader_epoch,
                    reply,
                } => {
                    glommio::spawn_local(async move {
                        let _ = reply.send(
                            shard
                                .list_offset_local(&topic, partition, timestamp, current_leader_epoch)
                                .await,
                        );
                    })
                    .detach();
                }
                ShardMessage::WaitForData {
                    topic,
                    partition,
                    offset,
                    deadline,
                    mut reply,
                } => {
                    glommio::spawn_local(async move {
                        // The asking fetch may finish first (another of its
                        // partitions got data) and drop its end: the wait
                        // ends then, woken by the drop.
                        let waited = std::pin::pin!(shard.wait_for_data_local(&topic, partition, offset, deadline));
                        let abandoned = std::pin::pin!(reply.cancellation());
                        if let futures::future::Either::Left((result, _)) =
                            futures::future::select(waited, abandoned).await
                        {
                            let _ = reply.send(result);
                        }
                    })
                    .detach();
                }
                ShardMessage::Group { call, reply } => {
                    glommio::spawn_local(async move {
                        let _ = reply.send(shard.group_call_local(call).await);
                    })
                    .detach();
                }
                ShardMessage::Txn { call, reply } => {
                    glommio::spawn_local(async move {
                        let _ = reply.send(shard.txn_call_local(call).await);
                    })
                    .detach();
                }
                ShardMessage::ExpectTxn {
                    topic,
                    partition,
                    producer_id,
                    epoch,
                    reply,
                } => {
                    glommio::spawn_local(async move {
                        let _ = reply.send(shard.expect_txn_local(&topic, partition, producer_id, epoch).await);
                    })
                    .detach();
                }
                ShardMessage::WriteMarker {
                    topic,
                    partition,
                    producer_id,
                    epoch,
                    commit,
                    reply,
                } => {
                    glommio::spawn_local(async move {
                        let marker = if commit { Marker::Commit } else { Marker::Abort };
                        let _ = reply.send(
                            shard
                                .write_marker_local(&topic, partition, producer_id, epoch, marker)
                                .await,
                        );
                    })
                    .detach();
                }
                ShardMessage::OpenPartitions { topic, reply } => {
                    glommio::spawn_local(async move {
                        let _ = reply.send(shard.open_partitions(&topic).await.map(|_| ()));
                    })
                    .detach();
                }
                ShardMessage::DeletePartitions { topic, reply } => {
                    glommio::spawn_local(async move {
                        let _ = reply.send(shard.delete_partitions(&topic).await);
                    })
                    .detach();
                }
                ShardMessage::ApplyConfigs { topic, reply } => {
                    glommio::spawn_local(async move {
                        let _ = reply.send(shard.apply_topic_configs(&topic).await);
                    })
                    .detach();
                }
                ShardMessage::Reconcile => {
                    glommio::spawn_local(async move { shard.reconcile().await }).detach();
                }
            }
        }
    }
}

/// Longest a topic's creation or deletion waits, once the controller has
/// committed it, for this node to apply it.
const RECONCILE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn owners(meta: &TopicMeta) -> Vec<ShardId> {
    let mut owners: Vec<ShardId> = meta
        .shards
        .iter()
        .copied()
        .filter(|s| *s != crate::topics::NOT_HOSTED)
        .collect();
    owners.sort_unstable();
    owners.dedup();
    owners
}

/// What a topic's owning shards do to their partitions of it.
#[derive(Clone, Copy)]
pub(crate) enum TopicChange {
    Open,
    Delete,
    Configs,
}

/// Where a produced batch went.
#[derive(Clone, Copy)]
struct Stored {
    base_offset: Offset,
    last_offset: Offset,
    append_time_ms: i64,
}

/// A batch made here on its way to durability (see `Shard::begin_append`).
enum Appending {
    /// In this node's log, its offsets known, not yet synced.
    Local(storage::AppendInfo),
    /// Proposed to the partition's group, its offsets known at commit.
    Proposed(Committed),
    /// Durable already.
    Settled(Stored),
}

impl Appending {
    /// Where the batch begins, once that is known.
    fn base_offset(&self) -> Option<Offset> {
        match self {
            Appending::Local(appended) => Some(appended.base_offset),
            Appending::Settled(stored) => Some(stored.base_offset),
            Appending::Proposed(_) => None,
        }
    }
}

/// Bytes read at a time while rebuilding producer state.
const REBUILD_READ_BYTES: usize = 1 << 20;

/// Brings producer state up to the log's end by reading the log from
/// `covered` (where its snapshot ends; the log start without one): see
/// `producer_state`.
async fn replay_producer_states(
    log: &PartitionLog,
    mut states: ProducerStates,
    covered: Offset,
) -> Result<ProducerStates, storage::StorageError> {
    let mut next = covered.max(log.log_start_offset());
    while next < log.log_end_offset() {
        let read = log.read(next, REBUILD_READ_BYTES).await?;
        if read.bytes.is_empty() {
            break;
        }
        for frame in storage::batch::frames(&read.bytes) {
            let info = storage::batch::peek_header(frame)?;
            // A batch before `covered` is in the snapshot already.
            if info.base_offset >= covered {
                let marker = if info.is_control() {
                    storage::batch::control::marker_of(frame)
                } else {
                    None
                };
                states.record(&info, marker);
            }
            next = next.max(info.next_offset());
        }
    }
    states.prune(log.log_start_offset().0);
    Ok(states)
}

/// Clients neither create, delete nor produce to the broker's internal
/// topics (`__consumer_offsets`); they read them like any other.
fn refuse_internal(topic: &str) -> Result<(), BrokerError> {
    if topic.starts_with("__") {
        return Err(BrokerError::InvalidTopic {
            name: topic.to_string(),
            reason: "topics named __* are the broker's own".into(),
        });
    }
    Ok(())
}

fn unknown(topic: &str, partition: u32) -> BrokerError {
    BrokerError::UnknownTopicOrPartition {
        topic: topic.to_string(),
        partition,
    }
}
