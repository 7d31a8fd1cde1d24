//! The producer: records go into per-partition batches, which are sent when
//! full or when they have lingered long enough, with retries on retriable
//! errors; each record's future resolves to its offset.
//!
//! A `Producer` lives on the executor that created it. Its connection
//! carries one request at a time; batches for many partitions go out one
//! after another as they fill.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;
use glommio::sync::Semaphore;
use storage::batch::{RecordBatchBuilder, RecordHeader};

use crate::client::{partition_for_key, Connection};
use crate::error::{ErrorCode, NetError};
use crate::messages::{acks, MetadataResponse};

#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// `acks::NONE`, `acks::LEADER` or `acks::ALL`.
    pub acks: i8,
    /// A batch is sent once its records hold this many bytes.
    pub batch_bytes: usize,
    /// A batch that is not full is sent this long after its first record.
    pub linger: Duration,
    /// Attempts after the first for a retriable error.
    pub retries: u32,
    pub retry_backoff: Duration,
    /// Idempotence: the broker gives this producer an id, each batch
    /// carries its sequence per partition, and a retried batch the broker
    /// already stored is answered with its offsets instead of being stored
    /// twice. Needs acks all. Each partition then has one batch in flight.
    pub idempotent: bool,
    /// Send each partition's batches to its leader as the metadata names it
    /// (with shard ports, the core that owns it). Off, everything goes to
    /// the address connected to, which routes it: for a producer that
    /// reaches the broker only through that address (a proxy, a NAT).
    pub follow_leaders: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: acks::ALL,
            batch_bytes: 64 << 10,
            linger: Duration::from_millis(5),
            retries: 5,
            retry_backoff: Duration::from_millis(100),
            idempotent: false,
            follow_leaders: true,
        }
    }
}

/// What a record's future resolves to: its offset, or why it was not stored.
pub type RecordResult = Result<u64, Rc<NetError>>;

/// Broker addresses kept from the metadata to ask for leaders through.
const KNOWN_BROKERS_MAX: usize = 1024;

struct Pending {
    builder: RecordBatchBuilder,
    waiters: Vec<oneshot::Sender<RecordResult>>,
    /// Distinguishes this batch from a later one of the same partition, so
    /// a linger timer sends only the batch it was started for.
    generation: u64,
}

/// A connection to one broker address, one request at a time on it.
struct Link {
    connection: RefCell<Option<Connection>>,
    sending: Semaphore,
}

impl Link {
    fn new(connection: Option<Connection>) -> Rc<Link> {
        Rc::new(Link {
            connection: RefCell::new(connection),
            sending: Semaphore::new(1),
        })
    }
}

struct Inner {
    /// The bootstrap address: metadata and producer ids, and every partition
    /// whose leader is not known or cannot be reached.
    addr: String,
    config: ProducerConfig,
    /// A link per broker address: the bootstrap and each partition leader
    /// (a shard of its own when the broker has shard ports), so every
    /// partition's batches go to the core that owns it.
    links: RefCell<HashMap<String, Rc<Link>>>,
    partitions: RefCell<HashMap<String, u32>>,
    /// Each partition's leader address, from the metadata.
    leaders: RefCell<HashMap<(String, u32), String>>,
    /// Every broker's address in the last metadata answered: where to ask
    /// again when the bootstrap and the leaders this producer sent to are
    /// gone (nodes restarted on new ports, the bootstrap lost).
    brokers: RefCell<Vec<String>>,
    pending: RefCell<HashMap<(String, u32), Pending>>,
    next_generation: Cell<u64>,
    sticky: Cell<u32>,
    /// (producer id, epoch) of an idempotent producer.
    identity: Cell<(i64, i16)>,
    /// The next sequence of each partition.
    sequences: RefCell<HashMap<(String, u32), i32>>,
    /// One batch of a partition in flight at a time, so sequences arrive
    /// in order even across retries.
    turns: RefCell<HashMap<(String, u32), Rc<Semaphore>>>,
    /// Whether a batch's fate is unknown (or the broker refused the
    /// sequence), so the producer must start over with a new id before the
    /// next batch.
    needs_new_id: Cell<bool>,
}

#[derive(Clone)]
pub struct Producer {
    inner: Rc<Inner>,
}

impl Producer {
    pub async fn connect(addr: &str, config: ProducerConfig) -> Result<Producer, NetError> {
        if config.idempotent && config.acks != acks::ALL {
            return Err(NetError::Malformed {
                what: "producer config",
                reason: "an idempotent producer needs acks all".into(),
            });
        }
        let mut connection = Connection::connect(addr).await?;
        let identity = if config.idempotent {
            connection.init_producer_id().await?
        } else {
            (storage::batch::NO_PRODUCER_ID, storage::batch::NO_PRODUCER_EPOCH)
        };
        Ok(Producer {
            inner: Rc::new(Inner {
                addr: addr.to_string(),
                config,
                links: RefCell::new(HashMap::from([(addr.to_string(), Link::new(Some(connection)))])),
                partitions: RefCell::new(HashMap::new()),
                leaders: RefCell::new(HashMap::new()),
                brokers: RefCell::new(Vec::new()),
                pending: RefCell::new(HashMap::new()),
                next_generation: Cell::new(0),
                sticky: Cell::new(0),
                identity: Cell::new(identity),
                sequences: RefCell::new(HashMap::new()),
                turns: RefCell::new(HashMap::new()),
                needs_new_id: Cell::new(false),
            }),
        })
    }

    async fn partitions(&self, topic: &str) -> Result<u32, NetError> {
        if let Some(&n) = self.inner.partitions.borrow().get(topic) {
            return Ok(n);
        }
        let metadata = self
            .with_connection(&self.inner.addr, |mut c| async move {
                let result = c.metadata(Some(vec![topic.to_string()])).await;
                (c, result)
            })
            .await?;
        self.remember_brokers(&metadata);
        let found = metadata.topics.first().filter(|t| t.error == 0);
        let count = found.map_or(0, |t| t.partitions.len() as u32);
        let follow = self.inner.config.follow_leaders;
        for partition in found.iter().filter(|_| follow).flat_map(|t| t.partitions.iter()) {
            if let Some(leader) = metadata.brokers.iter().find(|b| b.node_id == partition.leader) {
                self.inner.leaders.borrow_mut().insert(
                    (topic.to_string(), partition.partition),
                    format!("{}:{}", leader.host, leader.port),
                );
            }
        }
        if count == 0 {
            return Err(NetError::Rejected {
                code: ErrorCode::UnknownTopicOrPartition,
                message: format!("topic {topic}"),
            });
        }
        self.inner.partitions.borrow_mut().insert(topic.to_string(), count);
        Ok(count)
    }

    /// Keeps every broker's address the metadata names, as Kafka's clients
    /// do, so leaders can be asked for through any live one.
    fn remember_brokers(&self, metadata: &MetadataResponse) {
        let mut brokers = self.inner.brokers.borrow_mut();
        brokers.clear();
        brokers.extend(
            metadata
                .brokers
                .iter()
                .take(KNOWN_BROKERS_MAX)
                .map(|b| format!("{}:{}", b.host, b.port)),
        );
    }

    /// Forgets the topic's leaders and asks for them again: from the
    /// bootstrap address, else from any broker the last metadata named or
    /// this producer has sent to (the bootstrap may be the node that was
    /// lost). Where none answers, the next attempt goes to the bootstrap
    /// address and fails or is routed there.
    async fn refresh_leaders(&self, topic: &str) {
        self.inner.partitions.borrow_mut().remove(topic);
        let mut known: Vec<String> = vec![self.inner.addr.clone()];
        for addr in self
            .inner
            .brokers
            .borrow()
            .iter()
            .chain(self.inner.links.borrow().keys())
        {
            if !known.contains(addr) {
                known.push(addr.clone());
            }
        }
        self.inner.leaders.borrow_mut().retain(|(t, _), _| t != topic);
        for addr in known {
            let metadata = self
                .with_connection(&addr, |mut c| async move {
                    let result = c.metadata(Some(vec![topic.to_string()])).await;
                    (c, result)
                })
                .await;
            let Ok(metadata) = metadata else { continue };
            let Some(found) = metadata.topics.first().filter(|t| t.error == 0) else {
                continue;
            };
            self.remember_brokers(&metadata);
            for partition in &found.partitions {
                if let Some(leader) = metadata.brokers.iter().find(|b| b.node_id == partition.leader) {
                    self.inner.leaders.borrow_mut().insert(
                        (topic.to_string(), partition.partition),
                        format!("{}:{}", leader.host, leader.port),
                    );
                }
            }
            self.inner
                .partitions
                .borrow_mut()
                .insert(topic.to_string(), found.partitions.len() as u32);
            return;
        }
    }

    /// Runs `f` with the connection to `addr`, connecting first if there is
    /// none or it was lost.
    async fn with_connection<T, F, Fut>(&self, addr: &str, f: F) -> Result<T, NetError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: std::future::Future<Output = (Connection, Result<T, NetError>)>,
    {
        let link = self
            .inner
            .links
            .borrow_mut()
            .entry(addr.to_string())
            .or_insert_with(|| Link::new(None))
            .clone();
        let _turn = link
            .sending
            .acquire_permit(1)
            .await
            .map_err(|_| NetError::ConnectionClosed { addr: addr.to_string() })?;
        let connection = link.connection.borrow_mut().take();
        let connection = match connection {
            Some(c) => c,
            None => Connection::connect(addr).await?,
        };
        let (connection, result) = f(connection).await;
        if !matches!(result, Err(NetError::Io { .. } | NetError::ConnectionClosed { .. })) {
            *link.connection.borrow_mut() = Some(connection);
        }
        result
    }

    /// Where `slot`'s batches go: its leader, else the bootstrap address.
    fn leader(&self, slot: &(String, u32)) -> String {
        self.inner
            .leaders
            .borrow()
            .get(slot)
            .cloned()
            .unwrap_or_else(|| self.inner.addr.clone())
    }

    /// Adds a record to its partition's batch and returns a future of its
    /// offset. Without a key, records stick to one partition per batch.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Vec<RecordHeader>,
        timestamp_ms: i64,
    ) -> Result<oneshot::Receiver<RecordResult>, NetError> {
        let partitions = self.partitions(topic).await?;
        let partition = match key {
            Some(key) => partition_for_key(key, partitions),
            None => self.inner.sticky.get() % partitions,
        };
        let (tx, rx) = oneshot::channel();
        let slot = (topic.to_string(), partition);
        let (full, start_linger) = {
            let mut pending = self.inner.pending.borrow_mut();
            let batch = pending.entry(slot.clone()).or_insert_with(|| {
                let generation = self.inner.next_generation.get();
                self.inner.next_generation.set(generation + 1);
                Pending {
                    builder: RecordBatchBuilder::new(),
                    waiters: Vec::new(),
                    generation,
                }
            });
            batch.builder.push(timestamp_ms, key, value, headers);
            batch.waiters.push(tx);
            let start_linger = (batch.waiters.len() == 1).then_some(batch.generation);
            (
                batch.builder.payload_bytes() >= self.inner.config.batch_bytes,
                start_linger,
            )
        };
        if full {
            if key.is_none() {
                self.inner.sticky.set(self.inner.sticky.get().wrapping_add(1));
            }
            self.send_batch(&slot, None).await;
        } else if let Some(generation) = start_linger {
            let producer = self.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(producer.inner.config.linger).await;
                producer.send_batch(&slot, Some(generation)).await;
            })
            .detach();
        }
        Ok(rx)
    }

    /// A new producer id, with every partition's sequence back at 0.
    async fn reset_identity(&self) -> Result<(), NetError> {
        let identity = self
            .with_connection(&self.inner.addr, |mut c| async move {
                let result = c.init_producer_id().await;
                (c, result)
            })
            .await?;
        self.inner.identity.set(identity);
        self.inner.sequences.borrow_mut().clear();
        self.inner.needs_new_id.set(false);
        Ok(())
    }

    /// Sends every batch now and waits for their answers.
    pub async fn flush(&self) {
        let slots: Vec<(String, u32)> = self.inner.pending.borrow().keys().cloned().collect();
        for slot in slots {
            self.send_batch(&slot, None).await;
        }
    }

    /// Sends the batch of `slot` (if `generation` is given, only if it is
    /// still that batch) and resolves its records' futures.
    async fn send_batch(&self, slot: &(String, u32), generation: Option<u64>) {
        let batch = {
            let mut pending = self.inner.pending.borrow_mut();
            match pending.get(slot) {
                Some(p) if generation.is_none_or(|g| g == p.generation) => pending.remove(slot),
                _ => None,
            }
        };
        let Some(batch) = batch else { return };
        let idempotent = self.inner.config.idempotent;
        let turn = idempotent.then(|| {
            self.inner
                .turns
                .borrow_mut()
                .entry(slot.clone())
                .or_insert_with(|| Rc::new(Semaphore::new(1)))
                .clone()
        });
        let _turn = match &turn {
            Some(turn) => Some(
                turn.acquire_permit(1)
                    .await
                    .expect("the turn semaphore is never closed"),
            ),
            None => None,
        };
        if idempotent && self.inner.needs_new_id.get() {
            if let Err(error) = self.reset_identity().await {
                let error = Rc::new(error);
                for waiter in batch.waiters {
                    let _ = waiter.send(Err(error.clone()));
                }
                return;
            }
        }
        let records = batch.waiters.len() as i32;
        let sequence = self.inner.sequences.borrow().get(slot).copied().unwrap_or(0);
        let frame = if idempotent {
            let (id, epoch) = self.inner.identity.get();
            self.inner
                .sequences
                .borrow_mut()
                .insert(slot.clone(), sequence.wrapping_add(records) & i32::MAX);
            batch.builder.producer(id, epoch, sequence).build()
        } else {
            batch.builder.build()
        };
        let acks = self.inner.config.acks;
        let mut attempt = 0;
        let result = loop {
            let frame = &frame;
            let leader = self.leader(slot);
            let result = self
                .with_connection(&leader, |mut c| async move {
                    let result = c.produce(&slot.0, slot.1, frame, acks).await;
                    (c, result)
                })
                .await;
            // A leader that cannot be reached (an advertised port a firewall
            // closes): the bootstrap address routes to the owner instead.
            if matches!(result, Err(NetError::Io { .. })) && leader != self.inner.addr {
                self.inner.leaders.borrow_mut().remove(slot);
            }
            let retriable = match &result {
                Err(NetError::Rejected { code, .. }) => code.is_retriable(),
                Err(NetError::Io { .. } | NetError::ConnectionClosed { .. }) => true,
                _ => false,
            };
            if !retriable || attempt >= self.inner.config.retries {
                break result;
            }
            attempt += 1;
            glommio::timer::sleep(self.inner.config.retry_backoff * attempt).await;
            // The leader moved (or is being elected, or is gone): ask again
            // who leads before the retry.
            let moved = matches!(
                &result,
                Err(NetError::Rejected {
                    code: ErrorCode::NotLeaderOrFollower | ErrorCode::LeaderNotAvailable,
                    ..
                }) | Err(NetError::Io { .. } | NetError::ConnectionClosed { .. })
            );
            if moved && self.inner.config.follow_leaders {
                self.refresh_leaders(&slot.0).await;
            }
        };
        if idempotent {
            match &result {
                Ok(_) => {}
                // The broker no longer accepts this producer's sequences:
                // start over as a new producer.
                Err(NetError::Rejected {
                    code: ErrorCode::OutOfOrderSequenceNumber | ErrorCode::InvalidProducerEpoch,
                    ..
                }) => self.inner.needs_new_id.set(true),
                // Refused for good: the broker did not store it, so the
                // partition's next batch takes its sequence.
                Err(NetError::Rejected { code, .. }) if !code.is_retriable() => {
                    self.inner.sequences.borrow_mut().insert(slot.clone(), sequence);
                }
                // Out of retries: whether it was stored is unknown, so start
                // over as a new producer (Kafka bumps the epoch instead),
                // before the next batch if not now.
                Err(_) => {
                    self.inner.needs_new_id.set(true);
                    let _ = self.reset_identity().await;
                }
            }
        }
        match result {
            Ok(base) => {
                for (i, waiter) in batch.waiters.into_iter().enumerate() {
                    // With acks 0 there is no offset to give: u64::MAX says so.
                    let _ = waiter.send(Ok(base.map_or(u64::MAX, |b| b + i as u64)));
                }
            }
            Err(error) => {
                let error = Rc::new(error);
                for waiter in batch.waiters {
                    let _ = waiter.send(Err(error.clone()));
                }
            }
        }
    }
}
