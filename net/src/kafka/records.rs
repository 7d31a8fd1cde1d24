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
/// the client skips them.
pub fn to_kafka(frames: &[u8]) -> Result<Bytes, NetError> {
    let mut out = BytesMut::with_capacity(frames.len() + frames.len() / 4);
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    let mut records = Vec::new();
    for frame in batch::frames(frames) {
        let info = batch::verify_crc(frame).map_err(|e| malformed(e.to_string()))?;
        let archived = batch::access(frame).map_err(|e| malformed(e.to_string()))?;
        let log_append = info.attributes & attributes::TIMESTAMP_LOG_APPEND_TIME != 0;
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
        RecordBatchEncoder::encode(&mut out, records.iter(), &options).map_err(|e| malformed(e.to_string()))?;
    }
    Ok(out.freeze())
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
                let mut served = to_kafka(&frames).unwrap();
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
    fn markers_are_served_as_control_batches_and_refused_from_clients() {
        let marker = batch::control::batch(9, 1, batch::control::Marker::Commit, 5);
        let mut served = to_kafka(&marker).unwrap();
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

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        for bytes in [&b""[..], b"\x00\x01", &[0xff; 80][..], &[0; 61][..]] {
            let _ = to_storage(Bytes::copy_from_slice(bytes));
        }
        assert!(to_storage(Bytes::from_static(&[0; 70])).is_err());
    }
}
