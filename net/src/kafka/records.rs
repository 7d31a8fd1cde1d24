//! Record batches between Kafka's v2 format and corelog's storage batches.
//!
//! A produced Kafka batch (decompressed if the client compressed it: gzip,
//! snappy, lz4, zstd) becomes one storage batch with the same producer id,
//! epoch, base sequence, transactional bit, timestamps, keys, values and
//! headers; a stored batch is served as one uncompressed Kafka batch at the
//! same base offset, markers as Kafka control batches (their record keys
//! are already Kafka's). The formats differ, so each record's bytes are
//! copied once each way.

use bytes::{BufMut, Bytes, BytesMut};
use storage::batch::borrowed::{BatchProducer, RecordRef};
use storage::batch::{self, attributes};

use crate::error::NetError;

/// Largest Kafka batch accepted, on the wire and once decompressed (the
/// patched kafka-protocol's `DECOMPRESSED_BYTES_MAX`): this bounds what one
/// batch can cost (its records walked, a storage frame built from them).
pub const KAFKA_BATCH_BYTES_MAX: usize = kafka_protocol::compression::DECOMPRESSED_BYTES_MAX;
/// Bytes of a v2 batch before its records.
const BATCH_HEADER_BYTES: usize = 61;

fn malformed(reason: String) -> NetError {
    NetError::Malformed {
        what: "Kafka record batch",
        reason,
    }
}

/// Kafka record batches (as a producer sends them) as storage batch
/// frames laid end to end. Control batches are refused: markers are the
/// broker's to write.
pub fn to_storage(mut kafka: Bytes) -> Result<Vec<u8>, NetError> {
    let mut frames = Vec::new();
    while !kafka.is_empty() {
        // The batch's own length (after the offset and length fields) is
        // checked before its records are walked.
        if kafka.len() < BATCH_HEADER_BYTES {
            return Err(malformed(format!("{} bytes, shorter than a batch header", kafka.len())));
        }
        let length = i32::from_be_bytes(kafka[8..12].try_into().expect("4 bytes"));
        let total = 12usize.saturating_add(usize::try_from(length).unwrap_or(usize::MAX));
        if total > kafka.len() || total < BATCH_HEADER_BYTES {
            return Err(malformed(format!("a batch of {total} bytes, {} left", kafka.len())));
        }
        if total > KAFKA_BATCH_BYTES_MAX {
            return Err(NetError::BatchTooLarge {
                size: total,
                max: KAFKA_BATCH_BYTES_MAX,
            });
        }
        let batch = kafka.split_to(total);
        let header = check_batch(&batch)?;
        // Uncompressed records are archived straight from the request's
        // bytes; compressed ones from the decompressed bytes.
        let records = match header.compression {
            0 => batch.slice(BATCH_HEADER_BYTES..),
            codec => decompress(codec, batch.slice(BATCH_HEADER_BYTES..))?,
        };
        let walked = walk_records(&records, &header)?;
        let built = batch::borrowed::build(header.producer, &walked);
        // A request's one batch (the usual case) is not copied again.
        match frames.is_empty() {
            true => frames = built,
            false => frames.extend_from_slice(&built),
        }
    }
    Ok(frames)
}

/// What a v2 batch's header says, once checked.
struct BatchHeaderFields {
    producer: BatchProducer,
    compression: u16,
    base_timestamp: i64,
    count: i32,
}

/// Checks a whole v2 batch's header and CRC (which covers the records as
/// sent, compressed or not). Control batches are refused: markers are the
/// broker's to write.
fn check_batch(batch: &[u8]) -> Result<BatchHeaderFields, NetError> {
    if batch[KAFKA_MAGIC_AT] != 2 {
        return Err(malformed(format!(
            "record batch magic {} (only v2 is served)",
            batch[KAFKA_MAGIC_AT]
        )));
    }
    let crc = u32::from_be_bytes(batch[KAFKA_CRC_AT..KAFKA_CRC_AT + 4].try_into().expect("4 bytes"));
    let actual = crc32c::crc32c(&batch[KAFKA_ATTRIBUTES_AT..]);
    if crc != actual {
        return Err(malformed(format!(
            "CRC {crc:#010x} where the bytes give {actual:#010x}"
        )));
    }
    let be_i64 = |at: usize| i64::from_be_bytes(batch[at..at + 8].try_into().expect("8 bytes"));
    let be_i32 = |at: usize| i32::from_be_bytes(batch[at..at + 4].try_into().expect("4 bytes"));
    let attributes = u16::from_be_bytes([batch[KAFKA_ATTRIBUTES_AT], batch[KAFKA_ATTRIBUTES_AT + 1]]);
    if attributes & KAFKA_CONTROL != 0 {
        return Err(malformed("a control batch from a client".into()));
    }
    let count = be_i32(KAFKA_RECORD_COUNT_AT);
    if count <= 0 {
        return Err(malformed(format!("a batch claiming {count} records")));
    }
    // Kafka refuses a batch whose offsets do not cover its records.
    let last_offset_delta = be_i32(KAFKA_LAST_OFFSET_DELTA_AT);
    if i64::from(last_offset_delta) + 1 != i64::from(count) {
        return Err(malformed(format!(
            "last offset delta {last_offset_delta} for {count} records"
        )));
    }
    Ok(BatchHeaderFields {
        producer: BatchProducer {
            producer_id: be_i64(KAFKA_PRODUCER_ID_AT),
            producer_epoch: i16::from_be_bytes([batch[KAFKA_PRODUCER_EPOCH_AT], batch[KAFKA_PRODUCER_EPOCH_AT + 1]]),
            base_sequence: be_i32(KAFKA_BASE_SEQUENCE_AT),
            attributes: if attributes & KAFKA_TRANSACTIONAL != 0 {
                attributes::TRANSACTIONAL
            } else {
                0
            },
        },
        compression: attributes & KAFKA_COMPRESSION_MASK,
        base_timestamp: be_i64(KAFKA_BASE_TIMESTAMP_AT),
        count,
    })
}

/// A batch's records section decompressed (at most
/// `KAFKA_BATCH_BYTES_MAX`, the patched crate's cap).
fn decompress(codec: u16, mut compressed: Bytes) -> Result<Bytes, NetError> {
    use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};
    let take = |buf: &mut Bytes| Ok(std::mem::take(buf));
    match codec {
        1 => Gzip::decompress(&mut compressed, take),
        2 => Snappy::decompress(&mut compressed, take),
        3 => Lz4::decompress(&mut compressed, take),
        4 => Zstd::decompress(&mut compressed, take),
        other => return Err(malformed(format!("compression codec {other}"))),
    }
    .map_err(
        |e| match e.downcast_ref::<kafka_protocol::compression::DecompressedTooLarge>() {
            // Its decompressed size is not known past the cap.
            Some(_) => NetError::BatchTooLarge {
                size: KAFKA_BATCH_BYTES_MAX + 1,
                max: KAFKA_BATCH_BYTES_MAX,
            },
            None => malformed(e.to_string()),
        },
    )
}

/// The records of a checked batch (`records`: the bytes after its header,
/// decompressed), borrowing their keys, values and headers: one allocation
/// per batch (the record list), none per record but a record's list of
/// headers when it has some. Kafka lets header keys repeat; all are kept.
fn walk_records<'a>(records: &'a [u8], header: &BatchHeaderFields) -> Result<Vec<RecordRef<'a>>, NetError> {
    let count = header.count;
    // Records are at least 7 bytes each, so the count cannot reserve more
    // than the bytes present; and at most a bounded first reservation.
    let mut walked = Vec::with_capacity((count as usize).min(records.len() / 7).min(RECORDS_RESERVED_MAX));
    let mut at = 0;
    let mut first_timestamp = None;
    for i in 0..count {
        let bad = |what: &str| malformed(format!("record {i} of {count}: {what}"));
        let length = read_varint(records, &mut at).ok_or_else(|| bad("cut inside its length"))?;
        let end = usize::try_from(length)
            .ok()
            .and_then(|l| at.checked_add(l))
            .filter(|end| *end <= records.len())
            .ok_or_else(|| bad("longer than its batch"))?;
        let record = &records[..end];
        at += 1; // attributes, unused in v2
        let timestamp_delta = read_varint(record, &mut at).ok_or_else(|| bad("cut inside its timestamp"))?;
        read_varint(record, &mut at).ok_or_else(|| bad("cut inside its offset delta"))?;
        let key = read_bytes(record, &mut at).ok_or_else(|| bad("key runs past the record"))?;
        let value = read_bytes(record, &mut at).ok_or_else(|| bad("value runs past the record"))?;
        let header_count = read_varint(record, &mut at).ok_or_else(|| bad("cut inside its header count"))?;
        if header_count < 0 || header_count as usize > end.saturating_sub(at) {
            return Err(bad("header count out of range"));
        }
        let mut headers = Vec::new();
        for _ in 0..header_count {
            let key = read_bytes(record, &mut at)
                .flatten()
                .ok_or_else(|| bad("header key missing or past the record"))?;
            let key = std::str::from_utf8(key).map_err(|_| bad("header key not UTF-8"))?;
            let value = read_bytes(record, &mut at).ok_or_else(|| bad("header value runs past the record"))?;
            headers.push(batch::borrowed::HeaderRef { key, value });
        }
        if at != end {
            return Err(bad("its fields do not fill its length"));
        }
        // Timestamps must stay within i64 of each other: the storage batch
        // keeps each as a delta from the first.
        let timestamp = header
            .base_timestamp
            .checked_add(timestamp_delta)
            .filter(|t| first_timestamp.is_none_or(|first: i64| t.checked_sub(first).is_some()))
            .ok_or_else(|| bad("timestamp out of range"))?;
        first_timestamp.get_or_insert(timestamp);
        walked.push(RecordRef {
            timestamp_ms: timestamp,
            key,
            value,
            headers,
        });
    }
    if at != records.len() {
        return Err(malformed(format!(
            "{} bytes after the batch's {count} records",
            records.len() - at
        )));
    }
    Ok(walked)
}

/// A zigzag varint (Kafka's record fields) at `*at`, moving past it; None
/// when the bytes end inside it or it runs past 10 bytes.
pub fn read_varint(bytes: &[u8], at: &mut usize) -> Option<i64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    None
}

/// A length-prefixed field at `*at` (None inside: length -1), moving past
/// it; None when it runs past `bytes`.
pub fn read_bytes<'a>(bytes: &'a [u8], at: &mut usize) -> Option<Option<&'a [u8]>> {
    let length = read_varint(bytes, at)?;
    if length < 0 {
        return (length == -1).then_some(None);
    }
    let end = at
        .checked_add(usize::try_from(length).ok()?)
        .filter(|end| *end <= bytes.len())?;
    let field = &bytes[*at..end];
    *at = end;
    Some(Some(field))
}

/// Stored batch frames (as a fetch reads them) as Kafka v2 batches.
/// Records before `from` in the first batch are served too, as Kafka does:
/// the client skips them. For a LogAppendTime topic (`log_append_time`)
/// each batch says so in its attributes and carries the broker's append
/// time as its max timestamp, which clients then give every record.
///
/// Written straight from the archived records into one buffer: each
/// record's bytes are copied once and nothing is allocated per record (a
/// fetch is the hot path of every Kafka consumer).
pub fn to_kafka(frames: &[u8], log_append_time: bool) -> Result<Bytes, NetError> {
    let mut out = BytesMut::with_capacity(frames.len() + frames.len() / 8);
    for frame in batch::frames(frames) {
        let info = batch::verify_crc(frame).map_err(|e| malformed(e.to_string()))?;
        let archived = batch::access(frame).map_err(|e| malformed(e.to_string()))?;
        let log_append = log_append_time || info.attributes & attributes::TIMESTAMP_LOG_APPEND_TIME != 0;
        let mut kafka_attributes = 0u16;
        if log_append {
            kafka_attributes |= KAFKA_TIMESTAMP_TYPE_LOG_APPEND;
        }
        if info.is_transactional() {
            kafka_attributes |= KAFKA_TRANSACTIONAL;
        }
        if info.is_control() {
            kafka_attributes |= KAFKA_CONTROL;
        }
        let start = out.len();
        out.put_i64(info.base_offset.0 as i64);
        out.put_i32(0); // batch length, set below
        out.put_i32(info.leader_epoch);
        out.put_i8(2); // magic
        out.put_u32(0); // crc, set below
        out.put_u16(kafka_attributes);
        out.put_i32(info.last_offset_delta as i32);
        out.put_i64(info.first_timestamp_ms);
        out.put_i64(if log_append {
            info.append_time_ms
        } else {
            info.max_timestamp_ms
        });
        out.put_i64(info.producer_id);
        out.put_i16(info.producer_epoch);
        out.put_i32(info.base_sequence);
        out.put_i32(info.record_count as i32);
        debug_assert_eq!(out.len() - start, BATCH_HEADER_BYTES);
        for record in archived.records.iter() {
            let key = record.key.as_ref().map(|k| &k[..]);
            let value = record.value.as_ref().map(|v| &v[..]);
            let timestamp_delta = record.timestamp_delta_ms.to_native();
            let offset_delta = i64::from(record.offset_delta.to_native());
            let mut length = 1 + varint_len(timestamp_delta) + varint_len(offset_delta);
            length += bytes_len(key) + bytes_len(value) + varint_len(record.headers.len() as i64);
            for header in record.headers.iter() {
                length += bytes_len(Some(header.key.as_bytes())) + bytes_len(header.value.as_ref().map(|v| &v[..]));
            }
            put_varint(&mut out, length as i64);
            out.put_i8(0); // record attributes, unused
            put_varint(&mut out, timestamp_delta);
            put_varint(&mut out, offset_delta);
            put_bytes(&mut out, key);
            put_bytes(&mut out, value);
            put_varint(&mut out, record.headers.len() as i64);
            for header in record.headers.iter() {
                put_bytes(&mut out, Some(header.key.as_bytes()));
                put_bytes(&mut out, header.value.as_ref().map(|v| &v[..]));
            }
        }
        let batch = &mut out[start..];
        let batch_length =
            i32::try_from(batch.len() - KAFKA_LENGTH_END).map_err(|_| malformed("batch over 2 GiB".into()))?;
        batch[KAFKA_LENGTH_AT..KAFKA_LENGTH_END].copy_from_slice(&batch_length.to_be_bytes());
        let crc = crc32c::crc32c(&batch[KAFKA_ATTRIBUTES_AT..]);
        batch[KAFKA_CRC_AT..KAFKA_CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }
    Ok(out.freeze())
}

// Kafka's record batch v2 layout (DefaultRecordBatch).
const KAFKA_LENGTH_AT: usize = 8;
const KAFKA_LENGTH_END: usize = 12;
const KAFKA_CRC_AT: usize = 17;
const KAFKA_ATTRIBUTES_AT: usize = 21;
#[cfg(test)]
const KAFKA_MAX_TIMESTAMP_AT: usize = 35;
const KAFKA_TIMESTAMP_TYPE_LOG_APPEND: u16 = 0x08;
const KAFKA_TRANSACTIONAL: u16 = 0x10;
const KAFKA_CONTROL: u16 = 0x20;
const KAFKA_COMPRESSION_MASK: u16 = 0x07;
const KAFKA_MAGIC_AT: usize = 16;
const KAFKA_BASE_TIMESTAMP_AT: usize = 27;
const KAFKA_PRODUCER_ID_AT: usize = 43;
const KAFKA_PRODUCER_EPOCH_AT: usize = 51;
const KAFKA_BASE_SEQUENCE_AT: usize = 53;
const KAFKA_RECORD_COUNT_AT: usize = 57;
const KAFKA_LAST_OFFSET_DELTA_AT: usize = 23;
/// Most record slots reserved before a batch's records are read.
const RECORDS_RESERVED_MAX: usize = 1024;

/// Bytes of `value` as a zigzag varint (Kafka's record fields).
fn varint_len(value: i64) -> usize {
    let zigzag = ((value << 1) ^ (value >> 63)) as u64;
    (64 - (zigzag | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut BytesMut, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.put_u8(zigzag as u8 | 0x80);
        zigzag >>= 7;
    }
    out.put_u8(zigzag as u8);
}

/// Bytes of a length-prefixed field (-1 for none).
fn bytes_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        Some(b) => varint_len(b.len() as i64) + b.len(),
        None => varint_len(-1),
    }
}

fn put_bytes(out: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
        None => put_varint(out, -1),
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use proptest::prelude::*;
    use storage::batch::{RecordBatchBuilder, RecordHeader};

    use super::*;

    fn local_stamps(base_offset: u64, append_time_ms: i64) -> batch::Stamps {
        batch::Stamps {
            base_offset: storage::Offset(base_offset),
            append_time_ms,
            leader_epoch: 0,
            raft_index: 0,
        }
    }

    /// (timestamp, key, value, headers) of a record.
    type RecordParts = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Option<Vec<u8>>)>);

    fn kafka_batch(compression: Compression, producer_id: i64, transactional: bool) -> Bytes {
        let records: Vec<Record> = (0..3)
            .map(|i| Record {
                transactional,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id,
                producer_epoch: if producer_id < 0 { -1 } else { 2 },
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: if producer_id < 0 { -1 + i as i32 } else { 10 + i as i32 },
                timestamp: 1_000 + i,
                key: Some(Bytes::from(format!("k{i}"))),
                value: (i != 1).then(|| Bytes::from(vec![b'v'; 100 * i as usize])),
                headers: [(StrBytes::from_static_str("h"), Some(Bytes::from_static(b"x")))]
                    .into_iter()
                    .collect(),
            })
            .collect();
        encode(&records, compression)
    }

    /// `records` as one v2 batch, compressed so.
    fn encode(records: &[Record], compression: Compression) -> Bytes {
        let mut out = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut out,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        out.freeze()
    }

    /// A record of no producer and no headers, the `offset`th of its batch.
    fn plain_record(offset: i64, timestamp: i64, key: Option<Bytes>, value: Option<Bytes>) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: -1 + offset as i32,
            timestamp,
            key,
            value,
            headers: Default::default(),
        }
    }

    /// One record of `value_bytes` zeros, in a batch compressed so.
    fn big_batch(compression: Compression, value_bytes: usize) -> Bytes {
        let value = Some(Bytes::from(vec![0u8; value_bytes]));
        encode(&[plain_record(0, 1_000, None, value)], compression)
    }

    #[test]
    fn a_batch_over_the_limit_is_too_large_not_corrupt() {
        let over = KAFKA_BATCH_BYTES_MAX + 1024;
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Zstd,
            Compression::Lz4,
            Compression::Snappy,
        ] {
            let batch = big_batch(compression, over);
            assert!(
                matches!(
                    to_storage(batch),
                    Err(NetError::BatchTooLarge {
                        max: KAFKA_BATCH_BYTES_MAX,
                        ..
                    })
                ),
                "{compression:?}"
            );
            // Just under the limit, it passes.
            assert!(
                to_storage(big_batch(compression, KAFKA_BATCH_BYTES_MAX - 4096)).is_ok(),
                "{compression:?}"
            );
        }
        // A batch cut short is malformed, whatever its claimed size.
        let cut = big_batch(Compression::None, 1000).slice(..500);
        assert!(matches!(to_storage(cut), Err(NetError::Malformed { .. })));
    }

    #[test]
    fn batches_round_trip_with_every_compression() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            for (producer_id, transactional) in [(-1, false), (7, false), (7, true)] {
                let frames = to_storage(kafka_batch(compression, producer_id, transactional)).unwrap();
                let info = batch::verify_crc(&frames).unwrap();
                assert_eq!(info.record_count, 3);
                assert_eq!(info.producer_id, producer_id);
                assert_eq!(info.is_transactional(), transactional);
                if producer_id >= 0 {
                    assert_eq!((info.producer_epoch, info.base_sequence), (2, 10));
                }
                let mut served = to_kafka(&frames, false).unwrap();
                let set = RecordBatchDecoder::decode(&mut served).unwrap();
                assert_eq!(set.records.len(), 3, "one stored batch, one Kafka batch");
                assert!(served.is_empty());
                for (i, record) in set.records.iter().enumerate() {
                    assert_eq!(record.offset, i as i64, "offsets from the stored base (0)");
                    assert_eq!(record.timestamp, 1_000 + i as i64);
                    assert_eq!(record.key.as_deref(), Some(format!("k{i}").as_bytes()));
                    assert_eq!(record.value.as_ref().map(|v| v.len()), (i != 1).then_some(100 * i));
                    assert_eq!(record.headers.len(), 1);
                    assert_eq!(record.transactional, transactional);
                }
            }
        }
    }

    fn record_strategy() -> impl Strategy<Value = RecordParts> {
        (
            -5_000i64..5_000_000,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..3000)),
            proptest::collection::vec(
                (
                    "[a-z]{0,12}",
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
                ),
                0..3,
            ),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever a stored batch holds comes out as a Kafka batch that
        /// Kafka's decoder (the crate's, CRC checked) reads back exactly.
        #[test]
        fn stored_batches_serve_as_kafka_batches_that_decode_exactly(
            records in proptest::collection::vec(record_strategy(), 1..40),
            producer in proptest::option::of((0i64..1 << 40, 0i16..100, 0i32..1 << 20)),
            transactional in any::<bool>(),
            log_append in any::<bool>(),
            base_offset in 0u64..1 << 40,
        ) {
            let mut builder = RecordBatchBuilder::new();
            if let Some((id, epoch, sequence)) = producer {
                builder = builder.producer(id, epoch, sequence);
            }
            if transactional {
                builder = builder.attributes(attributes::TRANSACTIONAL);
            }
            for (timestamp, key, value, headers) in &records {
                let headers = headers
                    .iter()
                    .map(|(key, value)| RecordHeader { key: key.clone(), value: value.clone() })
                    .collect();
                builder.push(1_700_000_000_000 + timestamp, key.as_deref(), value.as_deref(), headers);
            }
            let mut frame = builder.build();
            let limits = batch::BatchLimits::sized(8 << 20, 8 << 20);
            let info = batch::check_frame(&frame, &limits).unwrap();
            batch::stamp(&mut frame, &info, local_stamps(base_offset, 1_800_000_000_000));
            let served = to_kafka(&frame, log_append).unwrap();
            let mut decoding = served.clone();
            let set = RecordBatchDecoder::decode(&mut decoding).unwrap();
            prop_assert!(decoding.is_empty());
            prop_assert_eq!(set.records.len(), records.len());
            for (i, (got, (timestamp, key, value, headers))) in set.records.iter().zip(&records).enumerate() {
                prop_assert_eq!(got.offset, (base_offset + i as u64) as i64);
                prop_assert_eq!(got.timestamp, 1_700_000_000_000 + timestamp);
                prop_assert_eq!(got.key.as_deref(), key.as_deref());
                prop_assert_eq!(got.value.as_deref(), value.as_deref());
                let got_headers: Vec<(String, Option<Vec<u8>>)> =
                    got.headers.iter().map(|(k, v)| (k.to_string(), v.as_ref().map(|v| v.to_vec()))).collect();
                // Kafka's headers may repeat a key; the crate keeps the last.
                let mut expected: Vec<(String, Option<Vec<u8>>)> = Vec::new();
                for (k, v) in headers {
                    match expected.iter_mut().find(|(e, _)| e == k) {
                        Some(slot) => slot.1 = v.clone(),
                        None => expected.push((k.clone(), v.clone())),
                    }
                }
                prop_assert_eq!(got_headers, expected);
                prop_assert_eq!(got.transactional, transactional);
                prop_assert_eq!(got.producer_id, producer.map_or(-1, |p| p.0));
                prop_assert_eq!(got.producer_epoch, producer.map_or(-1, |p| p.1));
                let log_append_type = got.timestamp_type == TimestampType::LogAppend;
                prop_assert_eq!(log_append_type, log_append);
            }
            if let Some((_, _, sequence)) = producer {
                prop_assert_eq!(set.records[0].sequence, sequence);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100))]

        /// A produced Kafka batch becomes the same storage batch whether it
        /// came uncompressed (walked in place) or compressed (decoded), and
        /// that batch holds every field the client sent.
        #[test]
        fn produced_batches_store_every_field_compressed_or_not(
            records in proptest::collection::vec(record_strategy(), 1..30),
            producer in proptest::option::of((0i64..1 << 40, 0i16..100, 0i32..1 << 20)),
            transactional in any::<bool>(),
        ) {
            let (id, epoch, sequence) = producer.unwrap_or((-1, -1, -1));
            let kafka_records: Vec<Record> = records
                .iter()
                .enumerate()
                .map(|(i, (timestamp, key, value, headers))| Record {
                    transactional,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: 0,
                    producer_id: id,
                    producer_epoch: epoch,
                    timestamp_type: TimestampType::Creation,
                    offset: i as i64,
                    sequence: sequence.wrapping_add(i as i32),
                    timestamp: 1_700_000_000_000 + timestamp,
                    key: key.clone().map(Bytes::from),
                    value: value.clone().map(Bytes::from),
                    // The crate's encoder keeps one value per header key.
                    headers: headers
                        .iter()
                        .enumerate()
                        .map(|(j, (k, v))| (StrBytes::from_string(format!("{k}{j}")), v.clone().map(Bytes::from)))
                        .collect(),
                })
                .collect();
            let walked = to_storage(encode(&kafka_records, Compression::None)).unwrap();
            let decoded = to_storage(encode(&kafka_records, Compression::Gzip)).unwrap();
            prop_assert_eq!(&walked, &decoded);
            let info = batch::verify_crc(&walked).unwrap();
            prop_assert_eq!((info.producer_id, info.producer_epoch, info.base_sequence), (id, epoch, sequence));
            prop_assert_eq!(info.is_transactional(), transactional);
            let archived = batch::access(&walked).unwrap();
            for (stored, sent) in archived.records.iter().zip(&kafka_records) {
                prop_assert_eq!(info.first_timestamp_ms + stored.timestamp_delta_ms.to_native(), sent.timestamp);
                prop_assert_eq!(stored.key.as_ref().map(|k| &k[..]), sent.key.as_deref());
                prop_assert_eq!(stored.value.as_ref().map(|v| &v[..]), sent.value.as_deref());
                prop_assert_eq!(stored.headers.len(), sent.headers.len());
            }
        }

        /// A flipped byte in an uncompressed batch is refused (CRC, or a
        /// length or count the bytes do not hold), never stored or panicked on.
        #[test]
        fn a_damaged_batch_is_refused(
            records in proptest::collection::vec(record_strategy(), 1..5),
            at in any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let kafka_records: Vec<Record> = records
                .iter()
                .enumerate()
                .map(|(i, (timestamp, key, value, _))| {
                    plain_record(i as i64, *timestamp, key.clone().map(Bytes::from), value.clone().map(Bytes::from))
                })
                .collect();
            let mut out = BytesMut::from(&encode(&kafka_records, Compression::None)[..]);
            let at = at.index(out.len());
            // Bytes outside the CRC: the base offset (ignored) and the
            // partition leader epoch (ignored); the length is checked.
            prop_assume!(!(0..8).contains(&at) && !(12..16).contains(&at));
            out[at] ^= flip;
            prop_assert!(to_storage(out.freeze()).is_err());
        }
    }

    #[test]
    fn a_served_batch_produced_again_stores_the_same_records_repeated_header_keys_included() {
        let mut builder = RecordBatchBuilder::new().producer(5, 1, 9);
        for i in 0..3u8 {
            builder.push(
                1_000 + i64::from(i),
                Some(&[i]),
                (i != 1).then_some(&[i, i][..]),
                vec![
                    RecordHeader {
                        key: "trace".into(),
                        value: Some(vec![i]),
                    },
                    RecordHeader {
                        key: "trace".into(),
                        value: None,
                    },
                ],
            );
        }
        let original = builder.build();
        let served = to_kafka(&original, false).unwrap();
        let stored = to_storage(served).unwrap();
        assert_eq!(stored, original, "Kafka's batch carries every field of the stored one");
    }

    #[test]
    fn log_append_time_topics_serve_the_append_time_marked_as_such() {
        let mut frames = to_storage(kafka_batch(Compression::None, -1, false)).unwrap();
        let limits = batch::BatchLimits::sized(1 << 20, 1 << 20);
        let info = batch::check_frame(&frames, &limits).unwrap();
        batch::stamp(&mut frames, &info, local_stamps(40, 1_700_000_123_456));
        let served = to_kafka(&frames, true).unwrap();
        assert_eq!(
            u16::from_be_bytes([served[KAFKA_ATTRIBUTES_AT], served[KAFKA_ATTRIBUTES_AT + 1]]) & 0x08,
            0x08
        );
        assert_eq!(
            i64::from_be_bytes(
                served[KAFKA_MAX_TIMESTAMP_AT..KAFKA_MAX_TIMESTAMP_AT + 8]
                    .try_into()
                    .unwrap()
            ),
            1_700_000_123_456
        );
        let crc = u32::from_be_bytes(served[KAFKA_CRC_AT..KAFKA_CRC_AT + 4].try_into().unwrap());
        assert_eq!(
            crc,
            crc32c::crc32c(&served[KAFKA_ATTRIBUTES_AT..]),
            "the CRC covers the new attributes"
        );
        let set = RecordBatchDecoder::decode(&mut served.clone()).unwrap();
        assert!(set.records.iter().all(|r| r.timestamp_type == TimestampType::LogAppend));
        assert_eq!(set.records[2].offset, 42);
        // CreateTime topics keep the producer's timestamps.
        let created = to_kafka(&frames, false).unwrap();
        let set = RecordBatchDecoder::decode(&mut created.clone()).unwrap();
        assert!(set.records.iter().all(|r| r.timestamp_type == TimestampType::Creation));
        assert_eq!(set.records[1].timestamp, 1_001);
    }

    #[test]
    fn markers_are_served_as_control_batches_and_refused_from_clients() {
        let marker = batch::control::batch(9, 1, batch::control::Marker::Commit, 5);
        let mut served = to_kafka(&marker, false).unwrap();
        let set = RecordBatchDecoder::decode(&mut served).unwrap();
        assert!(set.records[0].control && set.records[0].transactional);
        assert_eq!(set.records[0].key.as_deref(), Some(&[0u8, 0, 0, 1][..]));
        assert!(to_storage(encode(&set.records, Compression::None)).is_err());
    }

    /// A batch header with a valid checksum whose counts claim far more
    /// than its bytes hold: refused without allocating for the claim.
    fn lying_batch(record_count: i32, compression_bits: i16, records: &[u8]) -> Bytes {
        let mut body = Vec::new();
        body.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
        body.push(2); // magic
        let crc_at = body.len();
        body.extend_from_slice(&0u32.to_be_bytes());
        let crc_from = body.len();
        body.extend_from_slice(&compression_bits.to_be_bytes()); // attributes
        body.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
        body.extend_from_slice(&0i64.to_be_bytes()); // first timestamp
        body.extend_from_slice(&0i64.to_be_bytes()); // max timestamp
        body.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
        body.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
        body.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
        body.extend_from_slice(&record_count.to_be_bytes());
        body.extend_from_slice(records);
        let crc = crc32c::crc32c(&body[crc_from..]);
        body[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
        let mut batch = Vec::new();
        batch.extend_from_slice(&0i64.to_be_bytes()); // base offset
        batch.extend_from_slice(&(body.len() as i32).to_be_bytes());
        batch.extend_from_slice(&body);
        Bytes::from(batch)
    }

    #[test]
    fn counts_and_sizes_that_lie_are_refused_without_allocating_for_them() {
        // 2^31 records in a few bytes.
        assert!(to_storage(lying_batch(i32::MAX, 0, &[0; 16])).is_err());
        // One record claiming 2^30 headers: length 10, attributes, deltas,
        // key -1, value -1, header count as a zigzag varint.
        let record = [20, 0, 0, 0, 1, 1, 0x80, 0x80, 0x80, 0x80, 0x08];
        assert!(to_storage(lying_batch(1, 0, &record)).is_err());
        // A gzip bomb: 64 MiB of zeros in a few KiB.
        let mut bomb = Vec::new();
        {
            use std::io::Write;
            let mut encoder = flate2::write::GzEncoder::new(&mut bomb, flate2::Compression::best());
            encoder.write_all(&vec![0u8; 64 << 20]).unwrap();
            encoder.finish().unwrap();
        }
        assert!(bomb.len() < 1 << 20);
        assert!(to_storage(lying_batch(1, 1, &bomb)).is_err());
        // A batch length past the limit, or past the bytes there.
        let mut long = lying_batch(1, 0, &[0; 16]).to_vec();
        long[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(to_storage(Bytes::from(long)).is_err());
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        for bytes in [&b""[..], b"\x00\x01", &[0xff; 80][..], &[0; 61][..]] {
            let _ = to_storage(Bytes::copy_from_slice(bytes));
        }
        assert!(to_storage(Bytes::from_static(&[0; 70])).is_err());
    }
}
