//! The record batch: the unit a producer builds, the log stores and a consumer
//! reads, byte for byte the same at every step.
//!
//! # Frame layout
//!
//! ```text
//! frame   := archive_len: u32 LE | archive: [u8; archive_len]
//! archive := rkyv archive of `RecordBatch`, root object last
//! ```
//!
//! The archive is built with rkyv's `unaligned` and `little_endian` formats,
//! so a batch can be validated and read wherever it lies in a socket buffer or
//! a segment file, without copying it to an aligned place first.
//!
//! The header sits at a fixed distance from the end of the archive (rkyv puts
//! the root there). That lets the broker stamp `base_offset` and
//! `append_time_ms` into the bytes in place, and lets recovery and reads learn
//! a batch's offsets from a few fixed-position loads.
//!
//! # Checksum
//!
//! `crc` is crc32c over the whole archive in address order, skipping two
//! header fields: `crc` itself and `base_offset`. The base offset is left out
//! for the reason Kafka leaves it out: the log assigns it, and recovery checks
//! it anyway (offsets must be dense). The append time, leader epoch and Raft
//! index are covered (unlike Kafka's partition leader epoch): the log stamps
//! all three together and updates the checksum, and a replica stores them
//! as the leader stamped them, checksum and all. The append time is covered, so the log
//! updates the checksum when it stamps it; because rkyv puts the root (and so
//! the header) at the end of the archive, that update hashes only the few
//! dozen bytes from the append time to the end, never the records again.

use std::mem::{offset_of, size_of};

use rkyv::{rancor, Archive, Deserialize, Serialize};

use crate::error::{Result, StorageError};
use crate::offset::Offset;

/// Bytes of the length prefix before each archive.
pub const FRAME_LENGTH_BYTES: usize = 4;

/// Bits of `BatchHeader::attributes`, at Kafka's positions so that the Kafka
/// listener can translate without a table.
pub mod attributes {
    /// The batch's timestamps are the broker's append time.
    pub const TIMESTAMP_LOG_APPEND_TIME: u16 = 0x08;
    /// The batch belongs to a transaction.
    pub const TRANSACTIONAL: u16 = 0x10;
    /// The batch is a control batch (a transaction marker), not user data.
    pub const CONTROL: u16 = 0x20;
    /// corelog's own, never sent to a client: the log cleaner rewrote the
    /// batch, dropping records, so its offset deltas have gaps. A client's
    /// batch carrying it is refused.
    pub const COMPACTED: u16 = 0x8000;
}

/// A transaction marker: the one record of a control batch, written by the
/// broker into every partition a transaction touched when it ends. Its key
/// is Kafka's control record key (version 0, then the type, both i16 big
/// endian), so the Kafka listener serves it unchanged.
pub mod borrowed;

pub mod control {
    use super::{attributes, RecordBatchBuilder};

    /// The marker's type.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Marker {
        Abort,
        Commit,
    }

    const KEY_VERSION: i16 = 0;
    const ABORT: i16 = 0;
    const COMMIT: i16 = 1;

    pub fn key(marker: Marker) -> [u8; 4] {
        let kind = match marker {
            Marker::Abort => ABORT,
            Marker::Commit => COMMIT,
        };
        let mut key = [0; 4];
        key[..2].copy_from_slice(&KEY_VERSION.to_be_bytes());
        key[2..].copy_from_slice(&kind.to_be_bytes());
        key
    }

    /// The marker a control record's key names; None for a key that is not
    /// one (a newer version, or damage).
    pub fn parse_key(key: &[u8]) -> Option<Marker> {
        let key: [u8; 4] = key.try_into().ok()?;
        if i16::from_be_bytes([key[0], key[1]]) != KEY_VERSION {
            return None;
        }
        match i16::from_be_bytes([key[2], key[3]]) {
            ABORT => Some(Marker::Abort),
            COMMIT => Some(Marker::Commit),
            _ => None,
        }
    }

    /// A control batch ending `producer_id`'s transaction in one partition.
    pub fn batch(producer_id: i64, producer_epoch: i16, marker: Marker, timestamp_ms: i64) -> Vec<u8> {
        let mut builder = RecordBatchBuilder::new()
            .producer(producer_id, producer_epoch, super::NO_SEQUENCE)
            .attributes(attributes::TRANSACTIONAL | attributes::CONTROL);
        builder.push(timestamp_ms, Some(&key(marker)), None, vec![]);
        builder.build()
    }

    /// The marker of a control batch frame (checked), if it is one.
    pub fn marker_of(frame: &[u8]) -> Option<Marker> {
        let batch = super::access(frame).ok()?;
        let record = batch.records.iter().next()?;
        parse_key(record.key.as_ref()?)
    }
}

/// `producer_id` of a producer that is neither idempotent nor transactional.
pub const NO_PRODUCER_ID: i64 = -1;
/// `producer_epoch` and `base_sequence` of such a producer.
pub const NO_PRODUCER_EPOCH: i16 = -1;
pub const NO_SEQUENCE: i32 = -1;

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// crc32c of the archive, see the module docs for what it covers.
    pub crc: u32,
    /// Offset of the first record; stamped by the log when it appends.
    pub base_offset: u64,
    /// Wall-clock time of the append in ms since the epoch; stamped by the log.
    pub append_time_ms: i64,
    /// The leader epoch (Raft term) of the leader that appended the batch,
    /// Kafka's `partitionLeaderEpoch`; stamped by the log. 0 on a partition
    /// that is not replicated.
    pub leader_epoch: i32,
    /// The batch's index in its partition's Raft log; stamped by the
    /// leader's log. 0 (no Raft index is 0) on a partition that is not
    /// replicated.
    pub raft_index: u64,
    /// Offset of the last record minus `base_offset`.
    pub last_offset_delta: u32,
    pub record_count: u32,
    /// Timestamp of the first record, ms since the epoch.
    pub first_timestamp_ms: i64,
    /// Largest record timestamp in the batch.
    pub max_timestamp_ms: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub attributes: u16,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Offset of this record minus the batch's base offset.
    pub offset_delta: u32,
    /// Timestamp of this record minus the batch's first timestamp.
    pub timestamp_delta_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<RecordHeader>,
}

impl Record {
    /// Bytes of user data the record carries: what the record size limit counts.
    pub fn payload_bytes(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
    }
}

impl ArchivedRecord {
    pub fn payload_bytes(&self) -> usize {
        self.key.as_ref().map_or(0, |k| k.len())
            + self.value.as_ref().map_or(0, |v| v.len())
            + self
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()))
                .sum::<usize>()
    }
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RecordBatch {
    pub header: BatchHeader,
    pub records: Vec<Record>,
}

/// Bytes of the root object at the end of every archive.
const ROOT_BYTES: usize = size_of::<ArchivedRecordBatch>();
/// Where the header lies inside the root object.
const HEADER_IN_ROOT: usize = offset_of!(ArchivedRecordBatch, header);

// The in-place stamping and the fixed-position loads below rely on the
// unaligned little-endian format: each archived integer is its plain bytes.
const _: () = assert!(size_of::<rkyv::Archived<u64>>() == 8);
const _: () = assert!(std::mem::align_of::<ArchivedRecordBatch>() == 1);

/// Position of a header field inside the archive, given the archive's length.
const fn header_field(archive_len: usize, field_in_header: usize) -> usize {
    archive_len - ROOT_BYTES + HEADER_IN_ROOT + field_in_header
}

macro_rules! field {
    ($name:ident) => {
        offset_of!(ArchivedBatchHeader, $name)
    };
}

/// The limits a batch is checked against before it is appended.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Largest frame (length prefix included) accepted.
    pub batch_bytes_max: usize,
    /// Largest record payload (key + value + headers) accepted.
    pub record_bytes_max: usize,
    /// Every record but a control batch's must have a key (a compacted
    /// topic's: the cleaner keeps the last record of each key).
    pub keys_required: bool,
    /// A batch the log cleaner rewrote (`attributes::COMPACTED`, gaps in
    /// its offsets) is taken: from a replica's leader, never a client.
    pub compacted_allowed: bool,
}

impl BatchLimits {
    /// Limits of size alone: keys optional, no compacted batch.
    pub const fn sized(batch_bytes_max: usize, record_bytes_max: usize) -> BatchLimits {
        BatchLimits {
            batch_bytes_max,
            record_bytes_max,
            keys_required: false,
            compacted_allowed: false,
        }
    }
}

/// What the log learns of a batch from its header. Cheap to obtain: a few
/// loads at fixed positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchInfo {
    /// Frame bytes, length prefix included.
    pub frame_bytes: usize,
    pub crc: u32,
    pub base_offset: Offset,
    pub leader_epoch: i32,
    pub raft_index: u64,
    pub append_time_ms: i64,
    pub last_offset_delta: u32,
    pub record_count: u32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub attributes: u16,
    /// crc32c state over the archive up to the append time: what `stamp`
    /// continues from. Set by `check_frame`; zero from `peek_header`.
    pub(crate) crc_before_append_time: u32,
}

impl BatchInfo {
    pub fn last_offset(&self) -> Offset {
        self.base_offset.plus(u64::from(self.last_offset_delta))
    }

    pub fn next_offset(&self) -> Offset {
        self.last_offset().next()
    }

    pub fn is_control(&self) -> bool {
        self.attributes & attributes::CONTROL != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & attributes::TRANSACTIONAL != 0
    }
}

fn load<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    bytes[at..at + N].try_into().expect("slice of N bytes")
}

/// Reads the length prefix at the start of `bytes`, if there are four bytes.
pub fn frame_length(bytes: &[u8]) -> Option<usize> {
    let prefix = bytes.get(..FRAME_LENGTH_BYTES)?;
    let archive_len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
    Some(FRAME_LENGTH_BYTES + archive_len)
}

/// Reads the header of the frame at the start of `bytes` without validating
/// the archive. For bytes that were checked once already (by `check_frame`
/// before they were appended, by a crc match when read back); anything it
/// returns for unchecked bytes is a guess.
pub fn peek_header(bytes: &[u8]) -> Result<BatchInfo> {
    let frame_bytes = frame_length(bytes).ok_or_else(|| malformed("shorter than its length prefix"))?;
    if frame_bytes > bytes.len() {
        return Err(malformed(format!(
            "length prefix says {frame_bytes} bytes but only {} are there",
            bytes.len()
        )));
    }
    let archive = &bytes[FRAME_LENGTH_BYTES..frame_bytes];
    if archive.len() < ROOT_BYTES {
        return Err(malformed(format!(
            "archive of {} bytes is smaller than a batch header ({ROOT_BYTES} bytes)",
            archive.len()
        )));
    }
    let len = archive.len();
    Ok(BatchInfo {
        frame_bytes,
        crc: u32::from_le_bytes(load(archive, header_field(len, field!(crc)))),
        base_offset: Offset(u64::from_le_bytes(load(
            archive,
            header_field(len, field!(base_offset)),
        ))),
        leader_epoch: i32::from_le_bytes(load(archive, header_field(len, field!(leader_epoch)))),
        raft_index: u64::from_le_bytes(load(archive, header_field(len, field!(raft_index)))),
        append_time_ms: i64::from_le_bytes(load(archive, header_field(len, field!(append_time_ms)))),
        last_offset_delta: u32::from_le_bytes(load(archive, header_field(len, field!(last_offset_delta)))),
        record_count: u32::from_le_bytes(load(archive, header_field(len, field!(record_count)))),
        first_timestamp_ms: i64::from_le_bytes(load(archive, header_field(len, field!(first_timestamp_ms)))),
        max_timestamp_ms: i64::from_le_bytes(load(archive, header_field(len, field!(max_timestamp_ms)))),
        producer_id: i64::from_le_bytes(load(archive, header_field(len, field!(producer_id)))),
        producer_epoch: i16::from_le_bytes(load(archive, header_field(len, field!(producer_epoch)))),
        base_sequence: i32::from_le_bytes(load(archive, header_field(len, field!(base_sequence)))),
        attributes: u16::from_le_bytes(load(archive, header_field(len, field!(attributes)))),
        crc_before_append_time: 0,
    })
}

/// The header fields the checksum skips, sorted by position in the archive.
fn crc_skipped(archive_len: usize) -> [(usize, usize); 2] {
    let mut skipped = [
        (header_field(archive_len, field!(crc)), size_of::<u32>()),
        (header_field(archive_len, field!(base_offset)), size_of::<u64>()),
    ];
    skipped.sort_unstable();
    skipped
}

/// Continues `crc` over `archive[from..to]`, skipping the fields it skips.
fn crc_range(archive: &[u8], mut crc: u32, mut from: usize, to: usize) -> u32 {
    for (start, bytes) in crc_skipped(archive.len()) {
        let end = start + bytes;
        if end <= from || start >= to {
            continue;
        }
        crc = crc32c::crc32c_append(crc, &archive[from..start.max(from)]);
        from = end;
    }
    if from < to {
        crc = crc32c::crc32c_append(crc, &archive[from..to]);
    }
    crc
}

/// Where the append time lies in an archive of `archive_len` bytes.
fn append_time_at(archive_len: usize) -> usize {
    header_field(archive_len, field!(append_time_ms))
}

/// crc32c of an archive as the header's `crc` field holds it.
pub fn archive_crc(archive: &[u8]) -> u32 {
    assert!(archive.len() >= ROOT_BYTES);
    let split = append_time_at(archive.len());
    crc_range(archive, crc_range(archive, 0, 0, split), split, archive.len())
}

/// Verifies that the frame at the start of `bytes` carries its checksum. The
/// check a read makes before it serves bytes from disk.
pub fn verify_crc(bytes: &[u8]) -> Result<BatchInfo> {
    let info = peek_header(bytes)?;
    let computed = archive_crc(&bytes[FRAME_LENGTH_BYTES..info.frame_bytes]);
    if computed != info.crc {
        return Err(StorageError::BatchCrcMismatch {
            stored: info.crc,
            computed,
        });
    }
    Ok(info)
}

/// Fully checks one frame that fills `frame` exactly: its length against the
/// limits, the archive's structure (rkyv validation), its checksum, and that
/// its header agrees with its records. A batch passes this before the log
/// appends it, and recovery puts every batch of an unflushed tail through it.
pub fn check_frame(frame: &[u8], limits: &BatchLimits) -> Result<BatchInfo> {
    if frame.len() > limits.batch_bytes_max {
        return Err(StorageError::BatchTooLarge {
            size: frame.len(),
            max: limits.batch_bytes_max,
        });
    }
    let mut info = peek_header(frame)?;
    if info.frame_bytes != frame.len() {
        return Err(malformed(format!(
            "length prefix says {} bytes but the frame is {} bytes",
            info.frame_bytes,
            frame.len()
        )));
    }
    let archive = &frame[FRAME_LENGTH_BYTES..];
    let split = append_time_at(archive.len());
    info.crc_before_append_time = crc_range(archive, 0, 0, split);
    let computed = crc_range(archive, info.crc_before_append_time, split, archive.len());
    if computed != info.crc {
        return Err(StorageError::BatchCrcMismatch {
            stored: info.crc,
            computed,
        });
    }
    let batch = rkyv::access::<ArchivedRecordBatch, rancor::Error>(archive)
        .map_err(|e| malformed(format!("archive fails validation: {e}")))?;
    check_records(batch, &info, limits)?;
    Ok(info)
}

fn check_records(batch: &ArchivedRecordBatch, info: &BatchInfo, limits: &BatchLimits) -> Result<()> {
    let count = batch.records.len();
    if count == 0 {
        return Err(malformed("a batch holds at least one record"));
    }
    if info.record_count as usize != count {
        return Err(malformed(format!(
            "header says {} records, the batch holds {count}",
            info.record_count
        )));
    }
    let compacted = info.attributes & attributes::COMPACTED != 0;
    if compacted && !limits.compacted_allowed {
        return Err(malformed("only a log's cleaner writes a compacted batch"));
    }
    // A client's batch counts its offsets densely; one the cleaner rewrote
    // keeps its records' offsets, with gaps, and its last offset.
    if !compacted && info.last_offset_delta as usize != count - 1 {
        return Err(malformed(format!(
            "last offset delta {} does not match {count} records",
            info.last_offset_delta
        )));
    }
    let control = info.attributes & attributes::CONTROL != 0;
    let mut max_timestamp_ms = i64::MIN;
    let mut next_delta = 0u64;
    for (index, record) in batch.records.iter().enumerate() {
        let offset_delta = record.offset_delta.to_native();
        let in_order = match compacted {
            false => offset_delta as usize == index,
            true => u64::from(offset_delta) >= next_delta && offset_delta <= info.last_offset_delta,
        };
        if !in_order {
            return Err(malformed(format!(
                "record {index} has offset delta {offset_delta}; deltas must count up from 0"
            )));
        }
        next_delta = u64::from(offset_delta) + 1;
        let size = record.payload_bytes();
        if size > limits.record_bytes_max {
            return Err(StorageError::RecordTooLarge {
                offset_delta,
                size,
                max: limits.record_bytes_max,
            });
        }
        if limits.keys_required && !control && record.key.is_none() {
            return Err(StorageError::KeyRequired { offset_delta });
        }
        let timestamp_ms = info
            .first_timestamp_ms
            .checked_add(record.timestamp_delta_ms.to_native())
            .ok_or_else(|| malformed(format!("record {index}: timestamp overflows")))?;
        max_timestamp_ms = max_timestamp_ms.max(timestamp_ms);
    }
    // The cleaner keeps the batch's max timestamp (the time index holds
    // it) though the record that had it may be gone.
    let timestamps_agree = match compacted {
        false => max_timestamp_ms == info.max_timestamp_ms,
        true => max_timestamp_ms <= info.max_timestamp_ms,
    };
    if !timestamps_agree {
        return Err(malformed(format!(
            "header max timestamp {} differs from the records' {max_timestamp_ms}",
            info.max_timestamp_ms
        )));
    }
    Ok(())
}

/// What `retain` made of a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Retained {
    /// Every record stays: the frame as it is.
    All,
    /// No record stays: the batch goes.
    None,
    /// The frame rewritten with the records that stay.
    Some(Vec<u8>),
}

/// Rewrites a stored batch keeping the records `keep` selects by offset,
/// as the log cleaner does: the header stays (base and last offset,
/// timestamps, producer id, epoch and sequence, leader epoch, Raft index),
/// the records kept keep their offsets, and the batch is marked
/// `COMPACTED`. The frame must have passed `check_frame` (or been read
/// back from a log, which verifies it).
pub fn retain(frame: &[u8], mut keep: impl FnMut(Offset, &ArchivedRecord) -> bool) -> Result<Retained> {
    let archived = access(frame)?;
    let base = archived.header.base_offset.to_native();
    let kept: Vec<bool> = archived
        .records
        .iter()
        .map(|r| keep(Offset(base + u64::from(r.offset_delta.to_native())), r))
        .collect();
    if kept.iter().all(|k| *k) {
        return Ok(Retained::All);
    }
    if !kept.iter().any(|k| *k) {
        return Ok(Retained::None);
    }
    let mut batch: RecordBatch = rkyv::deserialize::<RecordBatch, rancor::Error>(archived)
        .map_err(|e| malformed(format!("batch does not deserialize: {e}")))?;
    let mut kept = kept.into_iter();
    batch.records.retain(|_| kept.next().expect("one verdict a record"));
    batch.header.record_count = batch.records.len() as u32;
    batch.header.attributes |= attributes::COMPACTED;
    Ok(Retained::Some(encode(&batch, frame.len())))
}

/// Encodes a batch into a frame with its checksum set.
fn encode(batch: &RecordBatch, estimate: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(estimate);
    frame.extend_from_slice(&[0; FRAME_LENGTH_BYTES]);
    let mut frame =
        rkyv::api::high::to_bytes_in::<_, rancor::Error>(batch, frame).expect("serializing into a Vec cannot fail");
    let archive_len = frame.len() - FRAME_LENGTH_BYTES;
    let archive_len_u32 = u32::try_from(archive_len).expect("batch under 4 GiB");
    frame[..FRAME_LENGTH_BYTES].copy_from_slice(&archive_len_u32.to_le_bytes());
    let crc = archive_crc(&frame[FRAME_LENGTH_BYTES..]);
    let at = FRAME_LENGTH_BYTES + header_field(archive_len, field!(crc));
    frame[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// What the log writes into a batch when it appends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamps {
    pub base_offset: Offset,
    pub append_time_ms: i64,
    pub leader_epoch: i32,
    pub raft_index: u64,
}

// `stamp` rehashes only from the append time on: every covered field it
// writes must lie there.
const _: () = assert!(field!(leader_epoch) > field!(append_time_ms));
const _: () = assert!(field!(raft_index) > field!(append_time_ms));

/// Writes the log's fields into a frame that `check_frame` passed, in place,
/// and brings its checksum up to date by hashing from the append time on
/// (the root's last few dozen bytes).
pub fn stamp(frame: &mut [u8], checked: &BatchInfo, stamps: Stamps) {
    let Stamps {
        base_offset,
        append_time_ms,
        leader_epoch,
        raft_index,
    } = stamps;
    let archive = &mut frame[FRAME_LENGTH_BYTES..];
    let len = archive.len();
    assert_eq!(
        len + FRAME_LENGTH_BYTES,
        checked.frame_bytes,
        "stamp the frame that was checked"
    );
    let at = header_field(len, field!(base_offset));
    archive[at..at + 8].copy_from_slice(&base_offset.0.to_le_bytes());
    let epoch_at = header_field(len, field!(leader_epoch));
    archive[epoch_at..epoch_at + 4].copy_from_slice(&leader_epoch.to_le_bytes());
    let index_at = header_field(len, field!(raft_index));
    archive[index_at..index_at + 8].copy_from_slice(&raft_index.to_le_bytes());
    let at = append_time_at(len);
    archive[at..at + 8].copy_from_slice(&append_time_ms.to_le_bytes());
    let crc = crc_range(archive, checked.crc_before_append_time, at, len);
    let at = header_field(len, field!(crc));
    archive[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Recomputes the checksum of a frame whose record bytes the producer has
/// changed in place (a benchmark stamping send times into a prepared batch,
/// say), so it is not encoded again.
pub fn reseal(frame: &mut [u8]) -> Result<()> {
    let info = peek_header(frame)?;
    let archive = &mut frame[FRAME_LENGTH_BYTES..info.frame_bytes];
    let crc = archive_crc(archive);
    let at = header_field(archive.len(), field!(crc));
    archive[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Validates the archive of a frame and gives access to its records. For a
/// reader that wants keys and values; the log itself never needs it on the
/// append or read path.
pub fn access(frame: &[u8]) -> Result<&ArchivedRecordBatch> {
    let frame_bytes = frame_length(frame).ok_or_else(|| malformed("shorter than its length prefix"))?;
    let archive = frame
        .get(FRAME_LENGTH_BYTES..frame_bytes)
        .ok_or_else(|| malformed("truncated frame"))?;
    rkyv::access::<ArchivedRecordBatch, rancor::Error>(archive)
        .map_err(|e| malformed(format!("archive fails validation: {e}")))
}

/// Iterates over the frames laid end to end in `bytes` (as a log read returns
/// them), yielding each frame's bytes. Stops at the first incomplete frame.
pub fn frames(bytes: &[u8]) -> Frames<'_> {
    Frames { rest: bytes }
}

pub struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Frames<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let len = frame_length(self.rest)?;
        if len > self.rest.len() {
            return None;
        }
        let (frame, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(frame)
    }
}

fn malformed(reason: impl Into<String>) -> StorageError {
    StorageError::BatchMalformed { reason: reason.into() }
}

/// Builds a record batch frame on the producer's side: records are pushed,
/// then `build` encodes them once into the frame the broker will store.
#[derive(Debug)]
pub struct RecordBatchBuilder {
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    attributes: u16,
    first_timestamp_ms: i64,
    max_timestamp_ms: i64,
    records: Vec<Record>,
    payload_bytes: usize,
}

impl Default for RecordBatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordBatchBuilder {
    pub fn new() -> Self {
        RecordBatchBuilder {
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            attributes: 0,
            first_timestamp_ms: 0,
            max_timestamp_ms: i64::MIN,
            records: Vec::new(),
            payload_bytes: 0,
        }
    }

    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn attributes(mut self, attributes: u16) -> Self {
        self.attributes = attributes;
        self
    }

    pub fn push(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Vec<RecordHeader>,
    ) -> &mut Self {
        if self.records.is_empty() {
            self.first_timestamp_ms = timestamp_ms;
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        let record = Record {
            offset_delta: u32::try_from(self.records.len()).expect("fewer than 2^32 records"),
            timestamp_delta_ms: timestamp_ms - self.first_timestamp_ms,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers,
        };
        self.payload_bytes += record.payload_bytes();
        self.records.push(record);
        self
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of user data pushed so far; the frame is somewhat larger.
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// Encodes the batch into a frame with its checksum set. Base offset and
    /// append time are zero until the log stamps them.
    pub fn build(self) -> Vec<u8> {
        assert!(!self.records.is_empty(), "a record batch holds at least one record");
        let count = self.records.len();
        let batch = RecordBatch {
            header: BatchHeader {
                crc: 0,
                base_offset: 0,
                leader_epoch: 0,
                raft_index: 0,
                append_time_ms: 0,
                last_offset_delta: (count - 1) as u32,
                record_count: count as u32,
                first_timestamp_ms: self.first_timestamp_ms,
                max_timestamp_ms: self.max_timestamp_ms,
                producer_id: self.producer_id,
                producer_epoch: self.producer_epoch,
                base_sequence: self.base_sequence,
                attributes: self.attributes,
            },
            records: self.records,
        };
        let estimate = FRAME_LENGTH_BYTES + ROOT_BYTES + self.payload_bytes + count * 64;
        encode(&batch, estimate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: BatchLimits = BatchLimits::sized(8 << 20, 4 << 20);

    fn stamps(base_offset: Offset, append_time_ms: i64) -> Stamps {
        Stamps {
            base_offset,
            append_time_ms,
            leader_epoch: 0,
            raft_index: 0,
        }
    }

    fn sample(values: &[&[u8]]) -> Vec<u8> {
        let mut builder = RecordBatchBuilder::new().producer(7, 1, 42);
        for (i, value) in values.iter().enumerate() {
            builder.push(
                1_000 + i as i64,
                Some(format!("k{i}").as_bytes()),
                Some(value),
                vec![RecordHeader {
                    key: "h".into(),
                    value: Some(vec![i as u8]),
                }],
            );
        }
        builder.build()
    }

    #[test]
    fn built_batch_checks_and_reads_back() {
        let frame = sample(&[b"one", b"", b"three"]);
        let info = check_frame(&frame, &LIMITS).unwrap();
        assert_eq!(info.record_count, 3);
        assert_eq!(info.last_offset_delta, 2);
        assert_eq!(info.first_timestamp_ms, 1_000);
        assert_eq!(info.max_timestamp_ms, 1_002);
        assert_eq!(info.producer_id, 7);
        assert_eq!(info.base_sequence, 42);
        let batch = access(&frame).unwrap();
        assert_eq!(batch.records[2].value.as_ref().unwrap().as_slice(), b"three");
        assert_eq!(batch.records[1].key.as_ref().unwrap().as_slice(), b"k1");
    }

    #[test]
    fn control_markers_round_trip_and_unknown_keys_are_not_markers() {
        for marker in [control::Marker::Abort, control::Marker::Commit] {
            let frame = control::batch(42, 3, marker, 1_000);
            let info = verify_crc(&frame).unwrap();
            assert!(info.is_control() && info.is_transactional());
            assert_eq!((info.producer_id, info.producer_epoch, info.record_count), (42, 3, 1));
            assert_eq!(control::marker_of(&frame), Some(marker));
        }
        assert_eq!(control::parse_key(&[0, 1, 0, 1]), None, "key version 1");
        assert_eq!(control::parse_key(&[0, 0, 0, 7]), None, "type 7");
        assert_eq!(control::parse_key(&[0, 0, 0]), None);
        assert_eq!(control::marker_of(&sample(&[b"v"])), None, "a data batch");
    }

    #[test]
    fn stamping_keeps_the_checksum_valid() {
        let mut frame = sample(&[b"a", b"b"]);
        let checked = check_frame(&frame, &LIMITS).unwrap();
        stamp(&mut frame, &checked, stamps(Offset(1 << 40), 123_456));
        assert_eq!(
            archive_crc(&frame[FRAME_LENGTH_BYTES..]),
            peek_header(&frame).unwrap().crc
        );
        let info = check_frame(&frame, &LIMITS).unwrap();
        assert_eq!(info.base_offset, Offset(1 << 40));
        assert_eq!(info.append_time_ms, 123_456);
        assert_eq!(info.last_offset(), Offset((1 << 40) + 1));
        let archived = access(&frame).unwrap();
        assert_eq!(archived.header.base_offset.to_native(), 1 << 40);
        let checked = check_frame(&frame, &LIMITS).unwrap();
        let replicated = Stamps {
            leader_epoch: 7,
            raft_index: 1 << 33,
            ..stamps(Offset(1 << 40), 123_456)
        };
        stamp(&mut frame, &checked, replicated);
        let info = check_frame(&frame, &LIMITS).unwrap();
        assert_eq!((info.leader_epoch, info.raft_index), (7, 1 << 33));
        assert_eq!((info.base_offset, info.append_time_ms), (Offset(1 << 40), 123_456));
        let archived = access(&frame).unwrap();
        assert_eq!(archived.header.leader_epoch.to_native(), 7);
        assert_eq!(archived.header.raft_index.to_native(), 1 << 33);
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let frame = sample(&[b"payload-1", b"payload-2"]);
        let len = frame.len();
        // The base offset alone is outside the checksum; recovery checks it.
        let base_offset_at = FRAME_LENGTH_BYTES + header_field(len - FRAME_LENGTH_BYTES, field!(base_offset));
        for byte in 0..len {
            for bit in 0..8 {
                let mut bad = frame.clone();
                bad[byte] ^= 1 << bit;
                let result = check_frame(&bad, &LIMITS);
                if (base_offset_at..base_offset_at + 8).contains(&byte) {
                    assert_eq!(result.unwrap().base_offset, peek_header(&bad).unwrap().base_offset);
                } else {
                    assert!(result.is_err(), "flip of bit {bit} in byte {byte} went unnoticed");
                }
            }
        }
    }

    #[test]
    fn a_resealed_frame_checks_again() {
        let mut frame = sample(&[b"aaaaaaaa", b"bbbbbbbb"]);
        let at = frame.windows(8).position(|w| w == b"bbbbbbbb").unwrap();
        frame[at..at + 8].copy_from_slice(b"cccccccc");
        assert!(matches!(
            check_frame(&frame, &LIMITS),
            Err(StorageError::BatchCrcMismatch { .. })
        ));
        reseal(&mut frame).unwrap();
        check_frame(&frame, &LIMITS).unwrap();
        assert_eq!(
            access(&frame).unwrap().records[1].value.as_ref().unwrap().as_slice(),
            b"cccccccc"
        );
    }

    #[test]
    fn limits_are_enforced() {
        let frame = sample(&[&[0u8; 1000]]);
        let tight = BatchLimits::sized(100, 4096);
        assert!(matches!(
            check_frame(&frame, &tight),
            Err(StorageError::BatchTooLarge { .. })
        ));
        let tight = BatchLimits::sized(1 << 20, 999);
        assert!(matches!(
            check_frame(&frame, &tight),
            Err(StorageError::RecordTooLarge { offset_delta: 0, .. })
        ));
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        for bytes in [&[][..], &[1, 0][..], &[4, 0, 0, 0, 1, 2, 3, 4][..], &[0xff; 64][..]] {
            let err = check_frame(bytes, &LIMITS).unwrap_err();
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn frames_iterates_until_an_incomplete_frame() {
        let a = sample(&[b"x"]);
        let b = sample(&[b"yy", b"zz"]);
        let mut bytes = [a.clone(), b.clone()].concat();
        bytes.extend_from_slice(&b[..10]);
        let found: Vec<&[u8]> = frames(&bytes).collect();
        assert_eq!(found, vec![&a[..], &b[..]]);
    }

    #[test]
    fn a_cleaned_batch_keeps_its_offsets_header_and_the_records_kept() {
        let mut frame = sample(&[b"a", b"b", b"c", b"d"]);
        let checked = check_frame(&frame, &LIMITS).unwrap();
        stamp(&mut frame, &checked, stamps(Offset(100), 5));
        assert_eq!(retain(&frame, |_, _| true).unwrap(), Retained::All);
        assert_eq!(retain(&frame, |_, _| false).unwrap(), Retained::None);
        let Retained::Some(cleaned) = retain(&frame, |offset, _| offset.0 % 2 == 1).unwrap() else {
            panic!("two of four kept");
        };
        // A client may not send it; a replica takes it from its leader.
        assert!(matches!(
            check_frame(&cleaned, &LIMITS),
            Err(StorageError::BatchMalformed { .. })
        ));
        let replica = BatchLimits {
            compacted_allowed: true,
            ..LIMITS
        };
        let info = check_frame(&cleaned, &replica).unwrap();
        let before = peek_header(&frame).unwrap();
        assert_eq!(
            (info.base_offset, info.last_offset(), info.record_count),
            (Offset(100), Offset(103), 2)
        );
        assert_eq!(
            (
                info.producer_id,
                info.producer_epoch,
                info.base_sequence,
                info.max_timestamp_ms
            ),
            (
                before.producer_id,
                before.producer_epoch,
                before.base_sequence,
                before.max_timestamp_ms
            )
        );
        let archived = access(&cleaned).unwrap();
        let kept: Vec<(u32, Option<&[u8]>)> = archived
            .records
            .iter()
            .map(|r| (r.offset_delta.to_native(), r.value.as_ref().map(|v| v.as_slice())))
            .collect();
        assert_eq!(kept, vec![(1, Some(&b"b"[..])), (3, Some(&b"d"[..]))]);
        // Cleaned again, it keeps its gaps.
        let Retained::Some(again) = retain(&cleaned, |offset, _| offset == Offset(103)).unwrap() else {
            panic!("one kept");
        };
        assert_eq!(check_frame(&again, &replica).unwrap().last_offset(), Offset(103));
    }

    #[test]
    fn a_compacted_topic_refuses_a_record_without_a_key() {
        let keyed = BatchLimits {
            keys_required: true,
            ..LIMITS
        };
        assert!(check_frame(&sample(&[b"a"]), &keyed).is_ok());
        let mut builder = RecordBatchBuilder::new();
        builder.push(0, Some(b"k"), Some(b"v"), vec![]);
        builder.push(0, None, Some(b"v"), vec![]);
        assert!(matches!(
            check_frame(&builder.build(), &keyed),
            Err(StorageError::KeyRequired { offset_delta: 1 })
        ));
        // A transaction marker has a key; a control batch is the broker's.
        let marker = control::batch(7, 1, control::Marker::Commit, 0);
        assert!(check_frame(&marker, &keyed).is_ok());
    }

    proptest! {
        #[test]
        fn any_batch_round_trips(
            records in prop::collection::vec(
                (any::<i32>(), prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
                 prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
                 prop::collection::vec(("[a-z]{0,8}", prop::option::of(prop::collection::vec(any::<u8>(), 0..8))), 0..3)),
                1..20),
            base in any::<u32>(),
        ) {
            let mut builder = RecordBatchBuilder::new();
            for (ts, key, value, headers) in &records {
                let headers = headers.iter().map(|(k, v)| RecordHeader { key: k.clone(), value: v.clone() }).collect();
                builder.push(i64::from(*ts), key.as_deref(), value.as_deref(), headers);
            }
            let mut frame = builder.build();
            let checked = check_frame(&frame, &LIMITS).unwrap();
            stamp(&mut frame, &checked, stamps(Offset(u64::from(base)), 5));
            let info = check_frame(&frame, &LIMITS).unwrap();
            prop_assert_eq!(info.append_time_ms, 5);
            prop_assert_eq!(info.record_count as usize, records.len());
            let batch: RecordBatch = rkyv::deserialize::<RecordBatch, rancor::Error>(access(&frame).unwrap()).unwrap();
            for (record, (ts, key, value, headers)) in batch.records.iter().zip(&records) {
                prop_assert_eq!(batch.header.first_timestamp_ms + record.timestamp_delta_ms, i64::from(*ts));
                prop_assert_eq!(&record.key, key);
                prop_assert_eq!(&record.value, value);
                prop_assert_eq!(record.headers.len(), headers.len());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = check_frame(&bytes, &LIMITS);
            let _ = peek_header(&bytes);
            let _ = verify_crc(&bytes);
        }
    }
}
