//! The consumer: assigned partitions, a position in each, and `poll`, which
//! returns the next records. The next fetch is sent as soon as a poll
//! returns, so it travels while the application works on the last records.
//!
//! Each partition is fetched from its leader as the metadata names it (a
//! shard of its own when the broker has shard ports), on a connection kept
//! per leader, so the broker serves every fetch on the core that owns the
//! partition and its cache instead of copying it across cores.
//!
//! Transaction markers (control batches) are never returned. At
//! READ_COMMITTED the broker serves records up to the last stable offset
//! and names the aborted transactions among them; their records are
//! dropped here, as Kafka's consumers do.

use std::collections::{HashMap, VecDeque};

use glommio::task::JoinHandle;
use storage::batch;

use crate::client::{Connection, Fetched};
use crate::error::NetError;
use crate::messages::{isolation, AbortedTransaction, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};

/// Bytes asked of a partition per fetch.
pub const FETCH_BYTES_MAX: u32 = 1 << 20;
/// Wait before asking again who leads after a leader was lost (an election
/// takes about one to two seconds): Kafka's retry.backoff.ms.
const LEADER_RETRY_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// An error that says the partition's leader is elsewhere, or gone.
fn leader_moved(error: &NetError) -> bool {
    use crate::error::ErrorCode;
    match error {
        NetError::Rejected { code, .. } => matches!(
            code,
            ErrorCode::NotLeaderOrFollower
                | ErrorCode::LeaderNotAvailable
                | ErrorCode::FencedLeaderEpoch
                | ErrorCode::UnknownLeaderEpoch
        ),
        NetError::Io { .. } | NetError::ConnectionClosed { .. } => true,
        _ => false,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// A fetch in flight: the leader's address it went to (None: the bootstrap
/// connection), the connection back if it is still good, the position's
/// index and the result.
type InFlight = JoinHandle<(Option<String>, Option<Connection>, usize, Result<Fetched, NetError>)>;

pub struct Consumer {
    topic: String,
    /// The bootstrap connection: metadata, offsets, and the fetches of
    /// partitions whose leader is not known (or when not following leaders).
    connection: Option<Connection>,
    /// Each assigned partition's leader address, from the metadata.
    leaders: HashMap<u32, String>,
    /// Every broker the last metadata named: where the bootstrap connection
    /// is made again if its node is lost.
    brokers: Vec<String>,
    /// A connection per leader address, idle between fetches.
    links: HashMap<String, Connection>,
    follow_leaders: bool,
    /// (partition, next offset), fetched in turn.
    positions: Vec<(u32, u64)>,
    turn: usize,
    in_flight: Option<InFlight>,
    max_wait_ms: u32,
    isolation_level: u8,
}

impl Consumer {
    pub async fn connect(addr: &str, topic: &str) -> Result<Consumer, NetError> {
        Ok(Consumer {
            topic: topic.to_string(),
            connection: Some(Connection::connect(addr).await?),
            leaders: HashMap::new(),
            brokers: Vec::new(),
            links: HashMap::new(),
            follow_leaders: true,
            positions: Vec::new(),
            turn: 0,
            in_flight: None,
            max_wait_ms: 100,
            isolation_level: isolation::READ_UNCOMMITTED,
        })
    }

    /// READ_COMMITTED: only records of committed transactions (and of no
    /// transaction), up to the last stable offset. Applies from the next
    /// fetch sent.
    pub fn set_isolation_level(&mut self, isolation_level: u8) {
        self.isolation_level = isolation_level;
    }

    /// Whether fetches go to each partition's leader (the default) or all
    /// through the address given to `connect` (a proxy, a NAT). Applies
    /// from the next `assign`.
    pub fn set_follow_leaders(&mut self, follow: bool) {
        self.follow_leaders = follow;
    }

    /// Long-poll wait of each fetch.
    pub fn set_max_wait_ms(&mut self, max_wait_ms: u32) {
        self.max_wait_ms = max_wait_ms;
    }

    async fn settle(&mut self) -> Result<(), NetError> {
        if let Some(task) = self.in_flight.take() {
            let (leader, connection, _, _) = task.await.expect("fetch task finished");
            self.give_back(leader, connection);
        }
        Ok(())
    }

    fn give_back(&mut self, leader: Option<String>, connection: Option<Connection>) {
        match (leader, connection) {
            (None, connection) => self.connection = connection,
            (Some(addr), Some(connection)) => {
                self.links.insert(addr, connection);
            }
            // A leader's link that failed is opened again by the next fetch.
            (Some(_), None) => {}
        }
    }

    fn connection(&mut self) -> &mut Connection {
        self.connection.as_mut().expect("no fetch in flight")
    }

    /// Consumes these partitions, each from its log start.
    pub async fn assign(&mut self, partitions: &[u32]) -> Result<(), NetError> {
        self.settle().await?;
        self.positions.clear();
        self.leaders.clear();
        if self.follow_leaders {
            self.refresh_leaders().await?;
        }
        for &partition in partitions {
            let offset = self.list_offset(partition, EARLIEST_TIMESTAMP).await?.unwrap_or(0);
            self.positions.push((partition, offset));
        }
        Ok(())
    }

    /// Asks the metadata who leads each partition now (after a leader was
    /// lost or moved), through the bootstrap connection or, if its node is
    /// gone, through another broker the last metadata named.
    async fn refresh_leaders(&mut self) -> Result<(), NetError> {
        let topics = Some(vec![self.topic.clone()]);
        let metadata = match self.connection().metadata(topics.clone()).await {
            Ok(metadata) => metadata,
            Err(error) if leader_moved(&error) => {
                let mut last = error;
                let mut found = None;
                for addr in self.brokers.clone() {
                    let asked = async {
                        let mut connection = Connection::connect(&addr).await?;
                        let metadata = connection.metadata(topics.clone()).await?;
                        Ok::<_, NetError>((connection, metadata))
                    }
                    .await;
                    match asked {
                        Ok((connection, metadata)) => {
                            self.connection = Some(connection);
                            found = Some(metadata);
                            break;
                        }
                        Err(error) => last = error,
                    }
                }
                found.ok_or(last)?
            }
            Err(error) => return Err(error),
        };
        self.leaders.clear();
        for partition in metadata.topics.iter().flat_map(|t| t.partitions.iter()) {
            if let Some(leader) = metadata.brokers.iter().find(|b| b.node_id == partition.leader) {
                self.leaders
                    .insert(partition.partition, format!("{}:{}", leader.host, leader.port));
            }
        }
        if !metadata.brokers.is_empty() {
            self.brokers = metadata
                .brokers
                .iter()
                .map(|b| format!("{}:{}", b.host, b.port))
                .collect();
        }
        Ok(())
    }

    /// ListOffsets at the partition's leader (the bootstrap connection
    /// while none is known): only a leader answers it.
    async fn list_offset(&mut self, partition: u32, timestamp: i64) -> Result<Option<u64>, NetError> {
        let topic = self.topic.clone();
        let Some(addr) = self.leaders.get(&partition).cloned() else {
            return self.connection().list_offset(&topic, partition, timestamp).await;
        };
        let mut link = match self.links.remove(&addr) {
            Some(link) => link,
            None => Connection::connect(&addr).await?,
        };
        let listed = link.list_offset(&topic, partition, timestamp).await;
        if !matches!(listed, Err(NetError::Io { .. } | NetError::ConnectionClosed { .. })) {
            self.links.insert(addr, link);
        }
        listed
    }

    /// Consumes every partition of the topic.
    pub async fn assign_all(&mut self) -> Result<(), NetError> {
        self.settle().await?;
        let topic = self.topic.clone();
        let metadata = self.connection().metadata(Some(vec![topic])).await?;
        let partitions: Vec<u32> = metadata
            .topics
            .first()
            .map(|t| t.partitions.iter().map(|p| p.partition).collect())
            .unwrap_or_default();
        self.assign(&partitions).await
    }

    pub async fn seek(&mut self, partition: u32, offset: u64) -> Result<(), NetError> {
        self.settle().await?;
        for position in self.positions.iter_mut().filter(|p| p.0 == partition) {
            position.1 = offset;
        }
        Ok(())
    }

    pub async fn seek_to_end(&mut self) -> Result<(), NetError> {
        self.settle().await?;
        let mut positions = std::mem::take(&mut self.positions);
        for position in positions.iter_mut() {
            position.1 = self.list_offset(position.0, LATEST_TIMESTAMP).await?.unwrap_or(0);
        }
        self.positions = positions;
        Ok(())
    }

    pub fn position(&self, partition: u32) -> Option<u64> {
        self.positions.iter().find(|p| p.0 == partition).map(|p| p.1)
    }

    fn start_fetch(&mut self) {
        if self.positions.is_empty() || self.in_flight.is_some() {
            return;
        }
        let index = self.turn % self.positions.len();
        self.turn += 1;
        let (partition, offset) = self.positions[index];
        let leader = self.leaders.get(&partition).cloned();
        let link = match &leader {
            Some(addr) => self.links.remove(addr),
            None => Some(self.connection.take().expect("no fetch in flight")),
        };
        let (topic, max_wait, isolation_level) = (self.topic.clone(), self.max_wait_ms, self.isolation_level);
        self.in_flight = Some(
            glommio::spawn_local(async move {
                let mut connection = match (link, &leader) {
                    (Some(connection), _) => connection,
                    (None, Some(addr)) => match Connection::connect(addr).await {
                        Ok(connection) => connection,
                        Err(e) => return (leader, None, index, Err(e)),
                    },
                    (None, None) => unreachable!("the bootstrap connection is always there"),
                };
                let result = connection
                    .fetch_isolated(&topic, partition, offset, FETCH_BYTES_MAX, max_wait, isolation_level)
                    .await;
                // A connection that failed mid-request is not reused.
                let keep = leader.is_none() || !matches!(result, Err(NetError::Io { .. }));
                (leader, keep.then_some(connection), index, result)
            })
            .detach(),
        );
    }

    /// The next records of one partition (possibly none, after a long poll
    /// with nothing new). Starts the following fetch before returning.
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>, NetError> {
        self.start_fetch();
        let Some(task) = self.in_flight.take() else {
            return Ok(Vec::new());
        };
        let (leader, connection, index, result) = task.await.expect("fetch task finished");
        self.give_back(leader, connection);
        let fetched = match result {
            Ok(fetched) => fetched,
            // Its leader was lost or moved: ask who leads now, and fetch
            // there from the next poll on.
            Err(error) if self.follow_leaders && leader_moved(&error) => {
                glommio::timer::sleep(LEADER_RETRY_BACKOFF).await;
                self.refresh_leaders().await?;
                return Ok(Vec::new());
            }
            Err(error) => return Err(error),
        };
        let (partition, from) = self.positions[index];
        let mut records = VecDeque::new();
        let mut next = from;
        let mut aborted = AbortedFilter::new(&fetched.aborted);
        for frame in batch::frames(fetched.batches()) {
            let info = batch::verify_crc(frame).map_err(|e| NetError::Malformed {
                what: "fetched record batch",
                reason: e.to_string(),
            })?;
            let archived = batch::access(frame).map_err(|e| NetError::Malformed {
                what: "fetched record batch",
                reason: e.to_string(),
            })?;
            next = next.max(info.next_offset().0);
            if !aborted.keep(&info, frame) {
                continue;
            }
            for record in archived.records.iter() {
                let offset = info.base_offset.0 + u64::from(record.offset_delta.to_native());
                if offset < from {
                    continue;
                }
                records.push_back(ConsumerRecord {
                    partition,
                    offset,
                    timestamp_ms: info.first_timestamp_ms + record.timestamp_delta_ms.to_native(),
                    key: record.key.as_ref().map(|k| k.to_vec()),
                    value: record.value.as_ref().map(|v| v.to_vec()),
                });
            }
        }
        self.positions[index].1 = next;
        self.start_fetch();
        Ok(records.into())
    }
}

/// Which batches of one fetch reach the application: never a control batch,
/// and not a transactional batch of a producer whose transaction covering
/// it was aborted (Kafka's consumer's rule: an aborted transaction applies
/// from its first offset until its producer's abort marker).
pub struct AbortedFilter {
    /// Aborted transactions not yet reached, first offset last.
    pending: Vec<AbortedTransaction>,
    /// Producers whose records are being dropped.
    dropping: Vec<i64>,
}

impl AbortedFilter {
    pub fn new(aborted: &[AbortedTransaction]) -> AbortedFilter {
        let mut pending = aborted.to_vec();
        pending.sort_by_key(|a| std::cmp::Reverse(a.first_offset));
        AbortedFilter {
            pending,
            dropping: Vec::new(),
        }
    }

    /// Whether the batch (`frame`, whose header is `info`) reaches the
    /// application; call it for every batch of a fetch, in order.
    pub fn keep(&mut self, info: &batch::BatchInfo, frame: &[u8]) -> bool {
        while let Some(next) = self.pending.last() {
            if next.first_offset > info.last_offset().0 {
                break;
            }
            self.dropping.push(next.producer_id);
            self.pending.pop();
        }
        if info.is_control() {
            if batch::control::marker_of(frame) == Some(batch::control::Marker::Abort) {
                self.dropping.retain(|&id| id != info.producer_id);
            }
            return false;
        }
        !(info.is_transactional() && self.dropping.contains(&info.producer_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::batch::{attributes, control, RecordBatchBuilder};

    fn data(producer_id: i64, transactional: bool, base_offset: u64, records: u32) -> (batch::BatchInfo, Vec<u8>) {
        let mut builder = RecordBatchBuilder::new().producer(producer_id, 0, 0);
        if transactional {
            builder = builder.attributes(attributes::TRANSACTIONAL);
        }
        for _ in 0..records {
            builder.push(0, None, Some(b"v"), vec![]);
        }
        let frame = builder.build();
        let mut info = batch::peek_header(&frame).unwrap();
        info.base_offset = storage::Offset(base_offset);
        (info, frame)
    }

    fn marker(producer_id: i64, marker: control::Marker, offset: u64) -> (batch::BatchInfo, Vec<u8>) {
        let frame = control::batch(producer_id, 0, marker, 0);
        let mut info = batch::peek_header(&frame).unwrap();
        info.base_offset = storage::Offset(offset);
        (info, frame)
    }

    #[test]
    fn aborted_transactions_and_markers_are_dropped_and_the_rest_kept() {
        // Producer 1 aborts [0, 4], producer 2 commits [2, 6]; producer 1
        // then writes again in a transaction it commits, and a plain
        // producer writes throughout.
        let log = [
            (data(1, true, 0, 2), true),
            (data(2, true, 2, 2), false),
            (data(-1, false, 4, 1), false),
            (marker(1, control::Marker::Abort, 5), true),
            (marker(2, control::Marker::Commit, 6), true),
            (data(1, true, 7, 1), false),
            (marker(1, control::Marker::Commit, 8), true),
        ];
        let mut filter = AbortedFilter::new(&[AbortedTransaction {
            producer_id: 1,
            first_offset: 0,
        }]);
        for ((info, frame), dropped) in &log {
            assert_eq!(
                filter.keep(info, frame),
                !dropped,
                "batch at {} of producer {}",
                info.base_offset.0,
                info.producer_id
            );
        }
        // At READ_UNCOMMITTED (no aborted list) only markers are dropped.
        let mut filter = AbortedFilter::new(&[]);
        for ((info, frame), _) in &log {
            assert_eq!(filter.keep(info, frame), !info.is_control());
        }
    }
}
