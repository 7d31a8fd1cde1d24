//! Record batches between Kafka's v2 format and corelog's storage batches.
//!
//! A produced Kafka batch (decompressed if the client compressed it: gzip,
//! snappy, lz4, zstd) becomes one storage batch with the same producer id,
//! epoch, base sequence, transactional bit, timestamps, keys, values and
//! headers; a stored batch is served as one uncompressed Kafka batch at the
//! same base offset, markers as Kafka control batches (their record keys
//! are already Kafka's). The formats differ, so each record's bytes are
//! copied once each way.

use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use storage::batch::{self, attributes, RecordBatchBuilder, RecordHeader};

use crate::error::NetError;

/// Largest Kafka batch accepted, on the wire and once decompressed (the
/// patched kafka-protocol's `DECOMPRESSED_BYTES_MAX`): decoding makes a
/// record struct per record, so this bounds what one batch can cost.
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
        // checked before the decoder sees it.
        if kafka.len() < BATCH_HEADER_BYTES {
            return Err(malformed(format!("{} bytes, shorter than a batch header", kafka.len())));
        }
        let length = i32::from_be_bytes(kafka[8..12].try_into().expect("4 bytes"));
        let total = 12usize.saturating_add(usize::try_from(length).unwrap_or(usize::MAX));
        if total > KAFKA_BATCH_BYTES_MAX || total > kafka.len() || total < BATCH_HEADER_BYTES {
            return Err(malformed(format!(
                "a batch of {total} bytes ({} left, at most {KAFKA_BATCH_BYTES_MAX})",
                kafka.len()
            )));
        }
        let set = RecordBatchDecoder::decode(&mut kafka).map_err(|e| malformed(e.to_string()))?;
        let Some(first) = set.records.first() else {
            return Err(malformed("a batch without records".into()));
        };
        if first.control {
            return Err(malformed("a control batch from a client".into()));
        }
        let mut builder = RecordBatchBuilder::new()
            .producer(first.producer_id, first.producer_epoch, first.sequence)
            .attributes(if first.transactional {
                attributes::TRANSACTIONAL
            } else {
                0
            });
        for record in &set.records {
            let headers = record
                .headers
                .iter()
                .map(|(key, value)| RecordHeader {
                    key: key.to_string(),
                    value: value.as_ref().map(|v| v.to_vec()),
                })
                .collect();
            builder.push(
                record.timestamp,
                record.key.as_deref(),
                record.value.as_deref(),
                headers,
            );
        }
        frames.extend_from_slice(&builder.build());
    }
    Ok(frames)
}

/// Stored batch frames (as a fetch reads them) as Kafka v2 batches.
/// Records before `from` in the first batch are served too, as Kafka does:
/// the client skips them. For a LogAppendTime topic (`log_append_time`)
/// each batch says so in its attributes and carries the broker's append
/// time as its max timestamp, which clients then give every record.
pub fn to_kafka(frames: &[u8], log_append_time: bool) -> Result<Bytes, NetError> {
    let mut out = BytesMut::with_capacity(frames.len() + frames.len() / 4);
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    let mut records = Vec::new();
    for frame in batch::frames(frames) {
        let info = batch::verify_crc(frame).map_err(|e| malformed(e.to_string()))?;
        let archived = batch::access(frame).map_err(|e| malformed(e.to_string()))?;
        let log_append = log_append_time || info.attributes & attributes::TIMESTAMP_LOG_APPEND_TIME != 0;
        records.clear();
        for (i, record) in archived.records.iter().enumerate() {
            let delta = record.offset_delta.to_native();
            let headers: IndexMap<StrBytes, Option<Bytes>> = record
                .headers
                .iter()
                .map(|h| {
                    (
                        StrBytes::from_string(h.key.to_string()),
                        h.value.as_ref().map(|v| Bytes::copy_from_slice(v)),
                    )
                })
                .collect();
            records.push(Record {
                transactional: info.is_transactional(),
                control: info.is_control(),
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: info.producer_id,
                producer_epoch: info.producer_epoch,
                timestamp_type: if log_append {
                    TimestampType::LogAppend
                } else {
                    TimestampType::Creation
                },
                offset: (info.base_offset.0 + u64::from(delta)) as i64,
                // The encoder keeps records in one batch while offset minus
                // sequence stays the same, and writes the first record's
                // sequence as the batch's: -1 (none) stays -1.
                sequence: info.base_sequence.wrapping_add(i as i32),
                timestamp: info.first_timestamp_ms + record.timestamp_delta_ms.to_native(),
                key: record.key.as_ref().map(|k| Bytes::copy_from_slice(k)),
                value: record.value.as_ref().map(|v| Bytes::copy_from_slice(v)),
                headers,
            });
        }
        let start = out.len();
        RecordBatchEncoder::encode(&mut out, records.iter(), &options).map_err(|e| malformed(e.to_string()))?;
        if log_append {
            // The encoder leaves the timestamp type out of the attributes.
            set_log_append_time(&mut out[start..], info.append_time_ms);
        }
    }
    Ok(out.freeze())
}

// Kafka's record batch v2 layout, for `set_log_append_time`.
const KAFKA_CRC_AT: usize = 17;
const KAFKA_ATTRIBUTES_AT: usize = 21;
const KAFKA_MAX_TIMESTAMP_AT: usize = 35;
const KAFKA_TIMESTAMP_TYPE_LOG_APPEND: u16 = 0x08;

/// Marks each encoded Kafka batch in `batches` LogAppendTime with
/// `append_time_ms` as its max timestamp, and recomputes its CRC (which
/// covers attributes to the end), as Kafka's broker does on append.
fn set_log_append_time(batches: &mut [u8], append_time_ms: i64) {
    let mut at = 0;
    while at < batches.len() {
        let length = i32::from_be_bytes(batches[at + 8..at + 12].try_into().expect("4 bytes"));
        let batch = &mut batches[at..at + 12 + length as usize];
        let attributes = u16::from_be_bytes([batch[KAFKA_ATTRIBUTES_AT], batch[KAFKA_ATTRIBUTES_AT + 1]]);
        batch[KAFKA_ATTRIBUTES_AT..KAFKA_ATTRIBUTES_AT + 2]
            .copy_from_slice(&(attributes | KAFKA_TIMESTAMP_TYPE_LOG_APPEND).to_be_bytes());
        batch[KAFKA_MAX_TIMESTAMP_AT..KAFKA_MAX_TIMESTAMP_AT + 8].copy_from_slice(&append_time_ms.to_be_bytes());
        let crc = crc32c::crc32c(&batch[KAFKA_ATTRIBUTES_AT..]);
        batch[KAFKA_CRC_AT..KAFKA_CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        at += batch.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn log_append_time_topics_serve_the_append_time_marked_as_such() {
        let mut frames = to_storage(kafka_batch(Compression::None, -1, false)).unwrap();
        let limits = batch::BatchLimits {
            batch_bytes_max: 1 << 20,
            record_bytes_max: 1 << 20,
        };
        let info = batch::check_frame(&frames, &limits).unwrap();
        batch::stamp(&mut frames, &info, storage::Offset(40), 1_700_000_123_456);
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
        let mut again = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut again,
            set.records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        assert!(to_storage(again.freeze()).is_err());
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
