//! Idempotent producers' state of one partition: per producer id, its
//! epoch and the sequence numbers and offsets of its last batches, so that
//! a retried batch is recognized (answered with the offset it already got,
//! not appended twice) and a batch that skips or reorders sequences is
//! refused.
//!
//! The rules are Kafka's (KIP-98): sequences count records per producer and
//! partition from 0; a batch is a duplicate when it matches one of the last
//! `BATCHES_KEPT` batches of its producer and epoch; otherwise it must
//! start right after the last one. A higher epoch starts again at 0; a
//! lower epoch is fenced.
//!
//! Transactions are tracked here too: the first offset of each producer's
//! open transaction in this partition (the last stable offset is the least
//! of them) and the aborted transactions (first offset, marker offset), so
//! a READ_COMMITTED fetch can name those in its range.
//!
//! The state is a function of the log. It is written to `producers.json`
//! in the partition's directory with the log end offset it covers, at a
//! clean shutdown and every `producer_snapshot_interval_ms` while it
//! changes; at open the snapshot is read (and removed) and the log after
//! the offset it covers is replayed into it; without one, the whole log is.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use std::collections::BTreeMap;

use net::messages::AbortedTransaction;
use net::ErrorCode;
use serde::{Deserialize, Serialize};
use storage::batch::control::Marker;
use storage::batch::BatchInfo;

/// Batches of each producer remembered for recognizing retries: Kafka's
/// max.in.flight.requests.per.connection for idempotence.
pub const BATCHES_KEPT: usize = 5;
/// Producers one partition tracks; the least recently seen is forgotten
/// past this.
pub const PRODUCERS_MAX: usize = 10_000;
/// The snapshot's file name in a partition directory.
pub const SNAPSHOT_FILE: &str = "producers.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct BatchSequence {
    first_seq: i32,
    last_seq: i32,
    base_offset: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Producer {
    epoch: i16,
    batches: VecDeque<BatchSequence>,
    /// Log offset of its last batch: the least recent is evicted first.
    last_offset: u64,
}

/// A producer as one partition knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveProducer {
    pub producer_id: i64,
    pub epoch: i16,
    /// The sequence of its last batch's last record here (-1: none kept).
    pub last_sequence: i32,
    /// The offset of its last batch's last record here.
    pub last_offset: u64,
    /// Where its open transaction here begins, if one is open.
    pub txn_start_offset: Option<u64>,
}

/// What to do with an incoming batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Append,
    /// A retry of a batch already in the log at this base offset.
    Duplicate {
        base_offset: u64,
    },
    Refuse(ErrorCode),
}

/// Aborted transactions one partition remembers; past this the oldest is
/// forgotten (a READ_COMMITTED consumer of data that old would see its
/// records) with a warning.
pub const ABORTED_KEPT: usize = 100_000;

/// A transaction aborted in this partition: the producer's transactional
/// records from `first_offset` to the abort marker at `last_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: u64,
    pub last_offset: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct OpenTxn {
    first_offset: u64,
    epoch: i16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerStates {
    producers: HashMap<i64, Producer>,
    /// Each producer's open transaction here: its first offset and the
    /// epoch it was opened at.
    #[serde(default)]
    ongoing: BTreeMap<i64, OpenTxn>,
    /// Aborted transactions, in marker (log) order.
    #[serde(default)]
    aborted: VecDeque<AbortedTxn>,
    /// Producers the transaction coordinator announced (AddPartitionsToTxn)
    /// with their epochs: only they may open a transaction here, so no
    /// transactional batch lands where no marker will follow. Not in the
    /// snapshot: the coordinator announces open transactions again when it
    /// starts.
    #[serde(skip)]
    expected: HashMap<i64, i16>,
    /// Changed since the last snapshot.
    #[serde(skip)]
    dirty: bool,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    log_end_offset: u64,
    states: ProducerStates,
}

/// The sequence after `seq` (sequences wrap at i32::MAX, as in Kafka).
fn next_seq(seq: i32, records: u32) -> i32 {
    ((i64::from(seq) + i64::from(records)) % (i64::from(i32::MAX) + 1)) as i32
}

impl ProducerStates {
    pub fn check(&self, batch: &BatchInfo) -> Check {
        if batch.is_control() {
            // Markers are the broker's to write.
            return Check::Refuse(ErrorCode::InvalidRecord);
        }
        if batch.producer_id < 0 {
            return if batch.is_transactional() {
                Check::Refuse(ErrorCode::InvalidRecord)
            } else {
                Check::Append
            };
        }
        if batch.base_sequence < 0 || batch.producer_epoch < 0 {
            return Check::Refuse(ErrorCode::InvalidRecord);
        }
        let known = self.producers.get(&batch.producer_id);
        if known.is_some_and(|p| batch.producer_epoch < p.epoch) {
            return Check::Refuse(ErrorCode::InvalidProducerEpoch);
        }
        match self.ongoing.get(&batch.producer_id) {
            // While its transaction is open here, a producer writes at that
            // transaction's epoch only: a jump in epoch would let it outrun
            // the marker that must end the transaction.
            Some(open) if batch.producer_epoch != open.epoch => {
                return Check::Refuse(ErrorCode::InvalidTxnState);
            }
            Some(_) if !batch.is_transactional() => return Check::Refuse(ErrorCode::InvalidTxnState),
            None if batch.is_transactional()
                && self.expected.get(&batch.producer_id) != Some(&batch.producer_epoch) =>
            {
                return Check::Refuse(ErrorCode::InvalidTxnState);
            }
            _ => {}
        }
        let Some(producer) = known else {
            return Check::Append;
        };
        if batch.producer_epoch > producer.epoch {
            return if batch.base_sequence == 0 {
                Check::Append
            } else {
                Check::Refuse(ErrorCode::OutOfOrderSequenceNumber)
            };
        }
        let last_seq = next_seq(batch.base_sequence, batch.record_count.saturating_sub(1));
        if let Some(kept) = producer
            .batches
            .iter()
            .find(|b| b.first_seq == batch.base_sequence && b.last_seq == last_seq)
        {
            return Check::Duplicate {
                base_offset: kept.base_offset,
            };
        }
        match producer.batches.back() {
            Some(previous) if next_seq(previous.last_seq, 1) != batch.base_sequence => {
                Check::Refuse(ErrorCode::OutOfOrderSequenceNumber)
            }
            _ => Check::Append,
        }
    }

    /// Records a batch the log holds (just appended, or read back); a
    /// control batch with its marker.
    pub fn record(&mut self, batch: &BatchInfo, marker: Option<Marker>) {
        if batch.producer_id < 0 {
            return;
        }
        self.dirty = true;
        if batch.is_control() {
            self.end_transaction(batch, marker);
            return;
        }
        if batch.is_transactional() {
            self.ongoing.entry(batch.producer_id).or_insert(OpenTxn {
                first_offset: batch.base_offset.0,
                epoch: batch.producer_epoch,
            });
        }
        if batch.base_sequence < 0 {
            return;
        }
        if !self.producers.contains_key(&batch.producer_id) && self.producers.len() >= PRODUCERS_MAX {
            let oldest = self
                .producers
                .iter()
                .min_by_key(|(_, p)| p.last_offset)
                .map(|(id, _)| *id)
                .expect("at least one producer");
            self.producers.remove(&oldest);
        }
        let producer = self.producers.entry(batch.producer_id).or_insert_with(|| Producer {
            epoch: batch.producer_epoch,
            batches: VecDeque::new(),
            last_offset: 0,
        });
        if batch.producer_epoch != producer.epoch {
            producer.epoch = batch.producer_epoch;
            producer.batches.clear();
        }
        if producer.batches.len() == BATCHES_KEPT {
            producer.batches.pop_front();
        }
        producer.batches.push_back(BatchSequence {
            first_seq: batch.base_sequence,
            last_seq: next_seq(batch.base_sequence, batch.record_count.saturating_sub(1)),
            base_offset: batch.base_offset.0,
        });
        producer.last_offset = batch.last_offset().0;
    }

    /// A transaction marker: the producer's open transaction here ends. Its
    /// epoch (bumped when the coordinator aborts on a timeout) fences
    /// earlier epochs from now on.
    fn end_transaction(&mut self, marker_batch: &BatchInfo, marker: Option<Marker>) {
        let producer_id = marker_batch.producer_id;
        self.expected.remove(&producer_id);
        let first = self.ongoing.remove(&producer_id);
        if let (Some(OpenTxn { first_offset, .. }), Some(Marker::Abort)) = (first, marker) {
            if self.aborted.len() == ABORTED_KEPT {
                let forgotten = self.aborted.pop_front();
                tracing::warn!(
                    ?forgotten,
                    "aborted transactions past the limit: the oldest is forgotten"
                );
            }
            self.aborted.push_back(AbortedTxn {
                producer_id,
                first_offset,
                last_offset: marker_batch.base_offset.0,
            });
        }
        if let Some(producer) = self.producers.get_mut(&producer_id) {
            if marker_batch.producer_epoch > producer.epoch {
                producer.epoch = marker_batch.producer_epoch;
                producer.batches.clear();
            }
        } else {
            self.producers.insert(
                producer_id,
                Producer {
                    epoch: marker_batch.producer_epoch,
                    batches: VecDeque::new(),
                    last_offset: marker_batch.base_offset.0,
                },
            );
        }
    }

    /// The coordinator added this partition to `producer_id`'s transaction.
    pub fn expect(&mut self, producer_id: i64, epoch: i16) {
        self.expected.insert(producer_id, epoch);
    }

    /// Whether the coordinator added this partition to the transaction of
    /// `producer_id` at `epoch` (and no marker has ended it since).
    pub fn expects(&self, producer_id: i64, epoch: i16) -> bool {
        self.expected.get(&producer_id) == Some(&epoch)
    }

    /// Whether `producer_id` may write a marker at `epoch`: one that ends
    /// its open transaction here (at that transaction's epoch or later),
    /// else one not older than the producer's epoch.
    pub fn marker_epoch_ok(&self, producer_id: i64, epoch: i16) -> bool {
        match self.ongoing.get(&producer_id) {
            Some(open) => epoch >= open.epoch,
            None => self.producers.get(&producer_id).is_none_or(|p| epoch >= p.epoch),
        }
    }

    /// Marks the state as changed, so the next snapshot is written.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// The offset below which every transaction has ended.
    pub fn last_stable_offset(&self, high_watermark: u64) -> u64 {
        self.ongoing
            .values()
            .map(|open| open.first_offset)
            .min()
            .unwrap_or(high_watermark)
            .min(high_watermark)
    }

    /// The producers this partition remembers, by id: what
    /// DescribeProducers shows.
    pub fn active(&self) -> Vec<ActiveProducer> {
        let mut active: Vec<ActiveProducer> = self
            .producers
            .iter()
            .map(|(&producer_id, producer)| ActiveProducer {
                producer_id,
                epoch: producer.epoch,
                last_sequence: producer.batches.back().map_or(-1, |b| b.last_seq),
                last_offset: producer.last_offset,
                txn_start_offset: self.ongoing.get(&producer_id).map(|open| open.first_offset),
            })
            .collect();
        active.sort_by_key(|p| p.producer_id);
        active
    }

    /// Whether any transaction is open in this partition.
    pub fn has_open_transactions(&self) -> bool {
        !self.ongoing.is_empty()
    }

    /// The aborted transactions whose records may lie in `[from, to)`.
    pub fn aborted_between(&self, from: u64, to: u64) -> Vec<AbortedTransaction> {
        self.aborted
            .iter()
            .filter(|a| a.last_offset >= from && a.first_offset < to)
            .map(|a| AbortedTransaction {
                producer_id: a.producer_id,
                first_offset: a.first_offset,
            })
            .collect()
    }

    /// Forgets aborted transactions wholly before the log start.
    pub fn prune(&mut self, log_start_offset: u64) {
        while self.aborted.front().is_some_and(|a| a.last_offset < log_start_offset) {
            self.aborted.pop_front();
            self.dirty = true;
        }
    }

    /// Whether the state changed since `saved` was last called.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    pub fn saved(&mut self) {
        self.dirty = false;
    }

    /// Writes the snapshot (atomically: a temporary file renamed).
    pub fn save(&self, dir: &Path, log_end_offset: u64) -> std::io::Result<()> {
        write_snapshot(dir, &self.encode_snapshot(log_end_offset)?)
    }

    /// The snapshot's bytes, valid for exactly `log_end_offset`.
    pub fn encode_snapshot(&self, log_end_offset: u64) -> std::io::Result<Vec<u8>> {
        serde_json::to_vec(&Snapshot {
            log_end_offset,
            states: self.clone(),
        })
        .map_err(std::io::Error::other)
    }

    /// The snapshot in `dir` and the log end offset it covers, if there is
    /// one that covers no more than the log's `log_end_offset`. It is removed
    /// once read: the log may be cut below it by a later recovery, and only
    /// snapshots written after this open describe this log.
    pub fn load(dir: &Path, log_end_offset: u64) -> Option<(ProducerStates, u64)> {
        let path = dir.join(SNAPSHOT_FILE);
        let bytes = std::fs::read(&path).ok()?;
        let _ = std::fs::remove_file(&path);
        let snapshot: Snapshot = serde_json::from_slice(&bytes).ok()?;
        (snapshot.log_end_offset <= log_end_offset).then_some((snapshot.states, snapshot.log_end_offset))
    }
}

/// Writes snapshot bytes into `dir` (atomically: a temporary file synced,
/// then renamed). Blocking: the shard runs it off its thread.
pub fn write_snapshot(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, dir.join(SNAPSHOT_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::Offset;

    fn batch(producer_id: i64, epoch: i16, base_sequence: i32, records: u32, base_offset: u64) -> BatchInfo {
        let mut builder = storage::batch::RecordBatchBuilder::new();
        for _ in 0..records {
            builder.push(0, None, Some(b"v"), vec![]);
        }
        let frame = builder.build();
        let mut info = storage::batch::peek_header(&frame).unwrap();
        info.producer_id = producer_id;
        info.producer_epoch = epoch;
        info.base_sequence = base_sequence;
        info.base_offset = Offset(base_offset);
        info
    }

    #[test]
    fn retries_are_recognized_and_gaps_refused() {
        let mut states = ProducerStates::default();
        let first = batch(7, 0, 0, 10, 100);
        assert_eq!(states.check(&first), Check::Append);
        states.record(&first, None);
        assert_eq!(
            states.check(&batch(7, 0, 0, 10, 0)),
            Check::Duplicate { base_offset: 100 }
        );
        assert_eq!(
            states.check(&batch(7, 0, 11, 5, 0)),
            Check::Refuse(ErrorCode::OutOfOrderSequenceNumber),
            "a gap"
        );
        let second = batch(7, 0, 10, 5, 110);
        assert_eq!(states.check(&second), Check::Append);
        states.record(&second, None);
        assert_eq!(
            states.check(&batch(7, 0, 0, 10, 0)),
            Check::Duplicate { base_offset: 100 }
        );
        // Epoch 0 goes on at 15 (its last batch ended at 14); epoch 1 then
        // starts again at 0 and fences epoch 0; a jump in epoch must start
        // at 0.
        assert_eq!(
            states.check(&batch(7, 0, 15, 1, 0)),
            Check::Append,
            "epoch 0 is current: 15 follows 14"
        );
        states.record(&batch(7, 1, 0, 1, 120), None);
        assert_eq!(
            states.check(&batch(7, 0, 16, 1, 0)),
            Check::Refuse(ErrorCode::InvalidProducerEpoch)
        );
        assert_eq!(
            states.check(&batch(7, 2, 5, 1, 0)),
            Check::Refuse(ErrorCode::OutOfOrderSequenceNumber)
        );
        // Producers without an id are not tracked.
        assert_eq!(states.check(&batch(-1, -1, -1, 3, 0)), Check::Append);
        states.record(&batch(2, 4, 0, 3, 130), None);
        assert_eq!(
            states.active(),
            vec![
                ActiveProducer {
                    producer_id: 2,
                    epoch: 4,
                    last_sequence: 2,
                    last_offset: 132,
                    txn_start_offset: None,
                },
                ActiveProducer {
                    producer_id: 7,
                    epoch: 1,
                    last_sequence: 0,
                    last_offset: 120,
                    txn_start_offset: None,
                },
            ]
        );
    }

    #[test]
    fn only_the_last_batches_are_remembered() {
        let mut states = ProducerStates::default();
        for n in 0..(BATCHES_KEPT as i32 + 2) {
            states.record(&batch(1, 0, n * 2, 2, n as u64 * 2), None);
        }
        assert_eq!(
            states.check(&batch(1, 0, 0, 2, 0)),
            Check::Refuse(ErrorCode::OutOfOrderSequenceNumber),
            "too old to recognize"
        );
        let recent = (BATCHES_KEPT as i32 + 1) * 2;
        assert_eq!(
            states.check(&batch(1, 0, recent, 2, 0)),
            Check::Duplicate {
                base_offset: recent as u64
            }
        );
    }

    #[test]
    fn sequences_wrap() {
        let mut states = ProducerStates::default();
        states.record(&batch(3, 0, i32::MAX - 1, 2, 0), None);
        assert_eq!(states.check(&batch(3, 0, 0, 1, 0)), Check::Append);
    }

    #[test]
    fn a_snapshot_is_used_only_for_the_log_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let mut states = ProducerStates::default();
        states.record(&batch(9, 0, 0, 4, 0), None);
        states.save(dir.path(), 4).unwrap();
        let (mut loaded, covered) = ProducerStates::load(dir.path(), 4).unwrap();
        loaded.dirty = true;
        assert_eq!((loaded, covered), (states.clone(), 4));
        assert_eq!(ProducerStates::load(dir.path(), 4), None, "read once");
        states.save(dir.path(), 4).unwrap();
        assert_eq!(
            ProducerStates::load(dir.path(), 6).map(|(_, covered)| covered),
            Some(4),
            "the log after it is replayed"
        );
        states.save(dir.path(), 4).unwrap();
        assert_eq!(ProducerStates::load(dir.path(), 3), None, "the log was cut below it");
    }

    fn transactional(producer_id: i64, base_offset: u64, records: u32) -> BatchInfo {
        let mut info = batch(producer_id, 0, 0, records, base_offset);
        info.attributes |= storage::batch::attributes::TRANSACTIONAL;
        info
    }

    fn marker(producer_id: i64, epoch: i16, offset: u64) -> BatchInfo {
        let mut info = batch(producer_id, epoch, -1, 1, offset);
        info.attributes |= storage::batch::attributes::TRANSACTIONAL | storage::batch::attributes::CONTROL;
        info
    }

    #[test]
    fn open_transactions_hold_the_last_stable_offset_and_aborts_are_listed() {
        let mut states = ProducerStates::default();
        states.expect(1, 0);
        states.expect(2, 0);
        assert_eq!(states.last_stable_offset(10), 10, "no transaction: the high watermark");
        states.record(&transactional(1, 10, 2), None);
        let mut second = transactional(2, 12, 3);
        second.base_sequence = 0;
        states.record(&second, None);
        let mut more = transactional(1, 15, 1);
        more.base_sequence = 2;
        states.record(&more, None);
        assert_eq!(states.last_stable_offset(16), 10);
        assert!(states.has_open_transactions());
        states.record(&marker(1, 0, 16), Some(Marker::Abort));
        assert_eq!(states.last_stable_offset(17), 12, "producer 2 is still open");
        states.record(&marker(2, 0, 17), Some(Marker::Commit));
        assert_eq!(states.last_stable_offset(18), 18);
        assert!(!states.has_open_transactions());
        let aborted = vec![AbortedTransaction {
            producer_id: 1,
            first_offset: 10,
        }];
        assert_eq!(states.aborted_between(0, 18), aborted);
        assert_eq!(states.aborted_between(16, 18), aborted, "its marker is in range");
        assert_eq!(states.aborted_between(17, 18), vec![], "wholly before");
        assert_eq!(states.aborted_between(0, 10), vec![], "wholly after");
        states.prune(17);
        assert_eq!(states.aborted_between(0, 18), vec![]);
    }

    #[test]
    fn only_an_announced_producer_opens_a_transaction_and_markers_come_from_the_broker() {
        let mut states = ProducerStates::default();
        let first = transactional(4, 0, 1);
        assert_eq!(states.check(&first), Check::Refuse(ErrorCode::InvalidTxnState));
        states.expect(4, 0);
        assert_eq!(states.check(&first), Check::Append);
        states.record(&first, None);
        states.record(&marker(4, 0, 1), Some(Marker::Commit));
        let mut next = transactional(4, 2, 1);
        next.base_sequence = 1;
        assert_eq!(
            states.check(&next),
            Check::Refuse(ErrorCode::InvalidTxnState),
            "the marker ended the announcement"
        );
        assert_eq!(states.check(&marker(4, 0, 3)), Check::Refuse(ErrorCode::InvalidRecord));
        let mut anonymous = transactional(-1, 0, 1);
        anonymous.producer_epoch = -1;
        assert_eq!(states.check(&anonymous), Check::Refuse(ErrorCode::InvalidRecord));
    }

    #[test]
    fn an_open_transaction_pins_its_producers_epoch_until_its_marker() {
        let mut states = ProducerStates::default();
        states.expect(6, 0);
        states.record(&transactional(6, 0, 1), None);
        let mut jump = transactional(6, 1, 1);
        jump.producer_epoch = 5;
        assert_eq!(states.check(&jump), Check::Refuse(ErrorCode::InvalidTxnState));
        let mut plain = batch(6, 5, 0, 1, 1);
        plain.attributes = 0;
        assert_eq!(
            states.check(&plain),
            Check::Refuse(ErrorCode::InvalidTxnState),
            "not even outside the transaction"
        );
        assert!(
            states.marker_epoch_ok(6, 0),
            "the marker at the transaction's epoch ends it"
        );
        assert!(!states.marker_epoch_ok(6, -1));
    }

    #[test]
    fn a_marker_with_a_bumped_epoch_fences_the_old_one() {
        let mut states = ProducerStates::default();
        states.expect(5, 0);
        states.record(&transactional(5, 0, 1), None);
        states.record(&marker(5, 1, 1), Some(Marker::Abort));
        assert_eq!(
            states.check(&transactional(5, 0, 1)),
            Check::Refuse(ErrorCode::InvalidProducerEpoch),
            "the aborted transaction's producer is fenced"
        );
        assert!(!states.marker_epoch_ok(5, 0));
        assert!(states.marker_epoch_ok(5, 1));
    }
}

/// Producer ids are handed out from blocks reserved durably in the data
/// directory (`producer_ids.json`: the first id of the next block), so an
/// id is never given twice, across restarts and crashes alike.
pub struct ProducerIdAllocator {
    path: std::path::PathBuf,
    next: i64,
    block_end: i64,
    /// In a cluster, this node's id in the high bits of every id it gives,
    /// so that two nodes never give the same one (Kafka has the controller
    /// hand out blocks; a node's own range needs no round trip).
    node_bits: i64,
}

/// Ids a node of a cluster can give: the low bits of a producer id.
const NODE_PRODUCER_IDS: i64 = 1 << 40;
/// A node's ids are split among its incarnations (`BrokerConfig::
/// incarnation`): one that lost its data directory lost the count of what
/// it gave, and must not give those ids again. The 256th incarnation
/// after one takes its range again; the ids of that life expired long
/// before.
const INCARNATION_PRODUCER_IDS: i64 = 1 << 32;
const INCARNATION_RANGES: u32 = (NODE_PRODUCER_IDS / INCARNATION_PRODUCER_IDS) as u32;

/// Ids reserved per write of `producer_ids.json`.
const PRODUCER_ID_BLOCK: i64 = 1_000;

#[derive(Serialize, Deserialize)]
struct ReservedIds {
    next_block: i64,
}

impl ProducerIdAllocator {
    /// Opens the allocator of a node alone (`member` None) or of node
    /// `member.0` of a cluster, in its incarnation `member.1`.
    pub fn open_for(data_dir: &Path, member: Option<(u64, u32)>) -> std::io::Result<ProducerIdAllocator> {
        let node_bits = match member {
            None => 0,
            Some((node, incarnation)) => {
                assert!(node <= net::cluster::NODE_ID_MAX, "node ids are checked at start");
                (node as i64) * NODE_PRODUCER_IDS
                    + i64::from(incarnation % INCARNATION_RANGES) * INCARNATION_PRODUCER_IDS
            }
        };
        let path = data_dir.join("producer_ids.json");
        let next = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<ReservedIds>(&bytes)
                    .map_err(std::io::Error::other)?
                    .next_block
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(ProducerIdAllocator {
            path,
            next,
            block_end: next,
            node_bits,
        })
    }

    pub fn allocate(&mut self) -> std::io::Result<i64> {
        if self.next == self.block_end {
            let end = self.block_end + PRODUCER_ID_BLOCK;
            let temp = self.path.with_extension("json.tmp");
            {
                use std::io::Write;
                let mut file = std::fs::File::create(&temp)?;
                file.write_all(&serde_json::to_vec(&ReservedIds { next_block: end }).map_err(std::io::Error::other)?)?;
                file.sync_all()?;
            }
            std::fs::rename(&temp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            self.block_end = end;
        }
        if self.node_bits != 0 && self.next >= INCARNATION_PRODUCER_IDS {
            return Err(std::io::Error::other(format!(
                "{}: this node has given all {INCARNATION_PRODUCER_IDS} producer ids it may in its incarnation",
                self.path.display()
            )));
        }
        let id = self.node_bits + self.next;
        self.next += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod allocator_tests {
    use super::*;

    #[test]
    fn nodes_of_a_cluster_give_ids_of_their_own() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut one = ProducerIdAllocator::open_for(a.path(), Some((1, 0))).unwrap();
        let mut two = ProducerIdAllocator::open_for(b.path(), Some((2, 0))).unwrap();
        let ones: Vec<i64> = (0..2_500).map(|_| one.allocate().unwrap()).collect();
        let twos: Vec<i64> = (0..2_500).map(|_| two.allocate().unwrap()).collect();
        assert!(ones.iter().all(|id| !twos.contains(id)));
        assert_eq!(ones[0], NODE_PRODUCER_IDS);
        assert_eq!(twos[0], 2 * NODE_PRODUCER_IDS);
        // A restart keeps the node's range and never gives an id again.
        let mut again = ProducerIdAllocator::open_for(b.path(), Some((2, 0))).unwrap();
        assert!(again.allocate().unwrap() > *twos.last().unwrap());
        // Node 2 back with its directory lost: its new incarnation starts
        // counting again, in a range of its own.
        let lost = tempfile::tempdir().unwrap();
        let mut reborn = ProducerIdAllocator::open_for(lost.path(), Some((2, 1))).unwrap();
        let reborns: Vec<i64> = (0..2_500).map(|_| reborn.allocate().unwrap()).collect();
        assert!(reborns.iter().all(|id| !twos.contains(id) && !ones.contains(id)));
        assert!(reborns.iter().all(|id| *id / NODE_PRODUCER_IDS == 2));
        assert!(
            ProducerIdAllocator::open_for(a.path(), Some((net::cluster::NODE_ID_MAX, u32::MAX)))
                .unwrap()
                .allocate()
                .unwrap()
                > 0
        );
    }

    #[test]
    fn ids_are_never_given_twice_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = ProducerIdAllocator::open_for(dir.path(), None).unwrap();
        let first: Vec<i64> = (0..3).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(first, vec![0, 1, 2]);
        drop(a);
        let mut b = ProducerIdAllocator::open_for(dir.path(), None).unwrap();
        assert_eq!(
            b.allocate().unwrap(),
            PRODUCER_ID_BLOCK,
            "a restart skips the rest of the block"
        );
    }
}
