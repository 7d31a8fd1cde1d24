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
//! The state is rebuilt from the log: at a clean shutdown it is written to
//! `producers.json` in the partition's directory with the log end offset it
//! covers; at open, a snapshot that covers the whole log is loaded, and
//! otherwise (a crash) the state is rebuilt by reading the log's last two
//! segments. A producer whose last batch lies further back is met as a new
//! one (its next batch is accepted whatever its sequence).

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use net::ErrorCode;
use serde::{Deserialize, Serialize};
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

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerStates {
    producers: HashMap<i64, Producer>,
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
        if batch.producer_id < 0 {
            return Check::Append;
        }
        if batch.base_sequence < 0 || batch.producer_epoch < 0 {
            return Check::Refuse(ErrorCode::InvalidRecord);
        }
        let Some(producer) = self.producers.get(&batch.producer_id) else {
            return Check::Append;
        };
        if batch.producer_epoch < producer.epoch {
            return Check::Refuse(ErrorCode::InvalidProducerEpoch);
        }
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

    /// Records a batch the log holds (just appended, or read back).
    pub fn record(&mut self, batch: &BatchInfo) {
        if batch.producer_id < 0 || batch.base_sequence < 0 {
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

    /// Writes the snapshot (atomically: a temporary file renamed).
    pub fn save(&self, dir: &Path, log_end_offset: u64) -> std::io::Result<()> {
        let snapshot = Snapshot {
            log_end_offset,
            states: self.clone(),
        };
        let temp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let bytes = serde_json::to_vec(&snapshot).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&temp, dir.join(SNAPSHOT_FILE))
    }

    /// The snapshot in `dir`, if there is one that covers exactly the log
    /// up to `log_end_offset`. Any snapshot is removed once read: after a
    /// later crash it would be stale.
    pub fn load(dir: &Path, log_end_offset: u64) -> Option<ProducerStates> {
        let path = dir.join(SNAPSHOT_FILE);
        let bytes = std::fs::read(&path).ok()?;
        let _ = std::fs::remove_file(&path);
        let snapshot: Snapshot = serde_json::from_slice(&bytes).ok()?;
        (snapshot.log_end_offset == log_end_offset).then_some(snapshot.states)
    }
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
        states.record(&first);
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
        states.record(&second);
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
        states.record(&batch(7, 1, 0, 1, 120));
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
    }

    #[test]
    fn only_the_last_batches_are_remembered() {
        let mut states = ProducerStates::default();
        for n in 0..(BATCHES_KEPT as i32 + 2) {
            states.record(&batch(1, 0, n * 2, 2, n as u64 * 2));
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
        states.record(&batch(3, 0, i32::MAX - 1, 2, 0));
        assert_eq!(states.check(&batch(3, 0, 0, 1, 0)), Check::Append);
    }

    #[test]
    fn a_snapshot_is_used_only_for_the_log_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let mut states = ProducerStates::default();
        states.record(&batch(9, 0, 0, 4, 0));
        states.save(dir.path(), 4).unwrap();
        assert_eq!(ProducerStates::load(dir.path(), 4), Some(states.clone()));
        assert_eq!(ProducerStates::load(dir.path(), 4), None, "read once");
        states.save(dir.path(), 4).unwrap();
        assert_eq!(ProducerStates::load(dir.path(), 5), None, "the log moved on after it");
    }
}

/// Producer ids are handed out from blocks reserved durably in the data
/// directory (`producer_ids.json`: the first id of the next block), so an
/// id is never given twice, across restarts and crashes alike.
pub struct ProducerIdAllocator {
    path: std::path::PathBuf,
    next: i64,
    block_end: i64,
}

/// Ids reserved per write of `producer_ids.json`.
const PRODUCER_ID_BLOCK: i64 = 1_000;

#[derive(Serialize, Deserialize)]
struct ReservedIds {
    next_block: i64,
}

impl ProducerIdAllocator {
    pub fn open(data_dir: &Path) -> std::io::Result<ProducerIdAllocator> {
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
        let id = self.next;
        self.next += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod allocator_tests {
    use super::*;

    #[test]
    fn ids_are_never_given_twice_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = ProducerIdAllocator::open(dir.path()).unwrap();
        let first: Vec<i64> = (0..3).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(first, vec![0, 1, 2]);
        drop(a);
        let mut b = ProducerIdAllocator::open(dir.path()).unwrap();
        assert_eq!(
            b.allocate().unwrap(),
            PRODUCER_ID_BLOCK,
            "a restart skips the rest of the block"
        );
    }
}
