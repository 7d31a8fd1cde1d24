//! The consumer: assigned partitions, a position in each, and `poll`, which
//! returns the next records. The next fetch is sent as soon as a poll
//! returns, so it travels while the application works on the last records.

use std::collections::VecDeque;

use glommio::task::JoinHandle;
use storage::batch;

use crate::client::{Connection, Fetched};
use crate::error::NetError;
use crate::messages::{EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};

/// Bytes asked of a partition per fetch.
pub const FETCH_BYTES_MAX: u32 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

type InFlight = JoinHandle<(Connection, usize, Result<Fetched, NetError>)>;

pub struct Consumer {
    topic: String,
    connection: Option<Connection>,
    /// (partition, next offset), fetched in turn.
    positions: Vec<(u32, u64)>,
    turn: usize,
    in_flight: Option<InFlight>,
    max_wait_ms: u32,
}

impl Consumer {
    pub async fn connect(addr: &str, topic: &str) -> Result<Consumer, NetError> {
        Ok(Consumer {
            topic: topic.to_string(),
            connection: Some(Connection::connect(addr).await?),
            positions: Vec::new(),
            turn: 0,
            in_flight: None,
            max_wait_ms: 100,
        })
    }

    /// Long-poll wait of each fetch.
    pub fn set_max_wait_ms(&mut self, max_wait_ms: u32) {
        self.max_wait_ms = max_wait_ms;
    }

    async fn settle(&mut self) -> Result<(), NetError> {
        if let Some(task) = self.in_flight.take() {
            let (connection, _, _) = task.await.expect("fetch task finished");
            self.connection = Some(connection);
        }
        Ok(())
    }

    fn connection(&mut self) -> &mut Connection {
        self.connection.as_mut().expect("no fetch in flight")
    }

    /// Consumes these partitions, each from its log start.
    pub async fn assign(&mut self, partitions: &[u32]) -> Result<(), NetError> {
        self.settle().await?;
        self.positions.clear();
        for &partition in partitions {
            let topic = self.topic.clone();
            let offset = self
                .connection()
                .list_offset(&topic, partition, EARLIEST_TIMESTAMP)
                .await?
                .unwrap_or(0);
            self.positions.push((partition, offset));
        }
        Ok(())
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
        let topic = self.topic.clone();
        let mut positions = std::mem::take(&mut self.positions);
        for position in positions.iter_mut() {
            position.1 = self
                .connection()
                .list_offset(&topic, position.0, LATEST_TIMESTAMP)
                .await?
                .unwrap_or(0);
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
        let mut connection = self.connection.take().expect("no fetch in flight");
        let (topic, max_wait) = (self.topic.clone(), self.max_wait_ms);
        self.in_flight = Some(
            glommio::spawn_local(async move {
                let result = connection
                    .fetch(&topic, partition, offset, FETCH_BYTES_MAX, max_wait)
                    .await;
                (connection, index, result)
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
        let (connection, index, result) = task.await.expect("fetch task finished");
        self.connection = Some(connection);
        let fetched = result?;
        let (partition, from) = self.positions[index];
        let mut records = VecDeque::new();
        let mut next = from;
        for frame in batch::frames(fetched.batches()) {
            let info = batch::verify_crc(frame).map_err(|e| NetError::Malformed {
                what: "fetched record batch",
                reason: e.to_string(),
            })?;
            let archived = batch::access(frame).map_err(|e| NetError::Malformed {
                what: "fetched record batch",
                reason: e.to_string(),
            })?;
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
            next = next.max(info.next_offset().0);
        }
        self.positions[index].1 = next;
        self.start_fetch();
        Ok(records.into())
    }
}
