//! The transactional producer: records sent to several partitions, and a
//! consumer group's offsets, become visible together when the transaction
//! commits, or not at all (exactly-once consume-transform-produce).
//!
//! Kafka's protocol (KIP-98): `init` gets the transactional id's producer
//! id with its epoch bumped (fencing any earlier holder and aborting its
//! open transaction); each partition is added to the transaction before its
//! first batch; batches carry the producer id, epoch and per-partition
//! sequence and are produced with acks=all; `commit`/`abort` ask the
//! coordinator to end the transaction, which it answers once every
//! partition holds the marker.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use storage::batch::{attributes, RecordBatchBuilder};

use crate::client::Connection;
use crate::error::{ErrorCode, NetError};
use crate::messages::*;

/// Bytes of records buffered for one partition before they are sent.
pub const TXN_BATCH_BYTES: usize = 256 << 10;
/// Tries of a request answered with a retriable error (a transaction still
/// ending, a coordinator starting up).
const RETRIES: u32 = 50;
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// Runs a request again while the broker answers with a retriable error
/// (a transaction still ending, a coordinator starting up).
macro_rules! retry {
    ($request:expr) => {{
        let mut tries = 0;
        loop {
            match $request.await {
                Err(NetError::Rejected { code, .. }) if code.is_retriable() && tries < RETRIES => {
                    tries += 1;
                    glommio::timer::sleep(RETRY_BACKOFF).await;
                }
                other => break other,
            }
        }
    }};
}

pub struct TransactionalProducer {
    connection: Connection,
    transactional_id: String,
    producer_id: i64,
    epoch: i16,
    /// Next sequence per partition, from 0 for each epoch.
    sequences: HashMap<(String, u32), i32>,
    /// Partitions added to the open transaction.
    added: BTreeSet<(String, u32)>,
    /// A group's offsets were added to the open transaction.
    offsets_added: bool,
    /// Records not yet sent, per partition.
    pending: BTreeMap<(String, u32), RecordBatchBuilder>,
    open: bool,
}

impl TransactionalProducer {
    /// Connects and initializes the transactional id; `timeout` is how long
    /// a transaction may stay open before the broker aborts it.
    pub async fn init(addr: &str, transactional_id: &str, timeout: Duration) -> Result<Self, NetError> {
        let mut connection = Connection::connect(addr).await?;
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let (producer_id, epoch) = retry!(connection.init_transactional_id(transactional_id, timeout_ms))?;
        Ok(TransactionalProducer {
            connection,
            transactional_id: transactional_id.to_string(),
            producer_id,
            epoch,
            sequences: HashMap::new(),
            added: BTreeSet::new(),
            offsets_added: false,
            pending: BTreeMap::new(),
            open: false,
        })
    }

    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    pub fn epoch(&self) -> i16 {
        self.epoch
    }

    pub fn begin(&mut self) -> Result<(), NetError> {
        if self.open {
            return Err(self.state_error("begin: a transaction is already open"));
        }
        self.open = true;
        Ok(())
    }

    fn state_error(&self, what: &str) -> NetError {
        NetError::Rejected {
            code: ErrorCode::InvalidTxnState,
            message: format!("transactional id {}: {what}", self.transactional_id),
        }
    }

    /// Buffers a record for `partition` of `topic` in the open transaction;
    /// the partition is added to the transaction first if it is new to it.
    pub async fn send(
        &mut self,
        topic: &str,
        partition: u32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: i64,
    ) -> Result<(), NetError> {
        if !self.open {
            return Err(self.state_error("send outside a transaction"));
        }
        let tp = (topic.to_string(), partition);
        if !self.added.contains(&tp) {
            let request = AddPartitionsToTxnRequest {
                transactional_id: self.transactional_id.clone(),
                producer_id: self.producer_id,
                producer_epoch: self.epoch,
                topics: vec![TxnPartitions {
                    topic: topic.to_string(),
                    partitions: vec![partition],
                }],
            };
            retry!(self.connection.add_partitions_to_txn(&request))?;
            self.added.insert(tp.clone());
        }
        let builder = self.pending.entry(tp.clone()).or_default();
        builder.push(timestamp_ms, key, value, vec![]);
        if builder.payload_bytes() >= TXN_BATCH_BYTES {
            self.send_partition(tp).await?;
        }
        Ok(())
    }

    /// Sends every buffered record (acks=all).
    pub async fn flush(&mut self) -> Result<(), NetError> {
        let partitions: Vec<(String, u32)> = self.pending.keys().cloned().collect();
        for tp in partitions {
            self.send_partition(tp).await?;
        }
        Ok(())
    }

    async fn send_partition(&mut self, tp: (String, u32)) -> Result<(), NetError> {
        let Some(builder) = self.pending.remove(&tp) else {
            return Ok(());
        };
        if builder.is_empty() {
            return Ok(());
        }
        let records = builder.len() as i32;
        let sequence = self.sequences.get(&tp).copied().unwrap_or(0);
        let frame = builder
            .producer(self.producer_id, self.epoch, sequence)
            .attributes(attributes::TRANSACTIONAL)
            .build();
        self.connection.produce(&tp.0, tp.1, &frame, acks::ALL).await?;
        self.sequences.insert(
            tp,
            ((i64::from(sequence) + i64::from(records)) % (i64::from(i32::MAX) + 1)) as i32,
        );
        Ok(())
    }

    /// Commits `offsets` ((topic, partition, next offset)) for `group`
    /// inside the open transaction: they count when it commits.
    pub async fn send_offsets(&mut self, group: &str, offsets: &[(String, u32, u64)]) -> Result<(), NetError> {
        if !self.open {
            return Err(self.state_error("send_offsets outside a transaction"));
        }
        let request = AddOffsetsToTxnRequest {
            transactional_id: self.transactional_id.clone(),
            producer_id: self.producer_id,
            producer_epoch: self.epoch,
            group: group.to_string(),
        };
        retry!(self.connection.add_offsets_to_txn(&request))?;
        self.offsets_added = true;
        let topics = crate::client::commit_topics(offsets);
        let request = TxnOffsetCommitRequest {
            transactional_id: self.transactional_id.clone(),
            group: group.to_string(),
            producer_id: self.producer_id,
            producer_epoch: self.epoch,
            topics,
        };
        self.connection.txn_offset_commit(&request).await
    }

    /// Sends what is buffered and commits: every record of the transaction
    /// becomes visible to READ_COMMITTED consumers at once.
    pub async fn commit(&mut self) -> Result<(), NetError> {
        if !self.open {
            return Err(self.state_error("commit without a transaction"));
        }
        self.flush().await?;
        self.end(true).await
    }

    /// Drops what is buffered and aborts what was sent.
    pub async fn abort(&mut self) -> Result<(), NetError> {
        if !self.open {
            return Err(self.state_error("abort without a transaction"));
        }
        self.pending.clear();
        self.end(false).await
    }

    async fn end(&mut self, commit: bool) -> Result<(), NetError> {
        if self.added.is_empty() && !self.offsets_added {
            // Nothing reached the broker: there is nothing to end.
            self.open = false;
            return Ok(());
        }
        let request = EndTxnRequest {
            transactional_id: self.transactional_id.clone(),
            producer_id: self.producer_id,
            producer_epoch: self.epoch,
            commit,
        };
        retry!(self.connection.end_txn(&request))?;
        self.open = false;
        self.added.clear();
        self.offsets_added = false;
        Ok(())
    }
}
