//! Building a record batch from borrowed bytes: records whose keys, values
//! and headers lie in someone else's buffer (a Kafka produce request) are
//! archived exactly as the owned `Record`s would be, so each byte is copied
//! once, into the frame, and nothing is allocated per record (a record with
//! headers costs the one `Vec` of them).
//!
//! The borrowed types implement rkyv's `Archive` with the owned types'
//! archived forms (`ArchivedRecord`, `ArchivedRecordHeader`,
//! `ArchivedRecordBatch`); a property test checks the frames are byte for
//! byte those of `RecordBatchBuilder`.

use rkyv::munge::munge;
use rkyv::rancor::{Fallible, Source};
use rkyv::ser::{Allocator, Writer};
use rkyv::string::{ArchivedString, StringResolver};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{rancor, Archive, Place, Serialize};

use super::{
    archive_crc, header_field, ArchivedRecord, ArchivedRecordBatch, ArchivedRecordHeader, BatchHeader,
    FRAME_LENGTH_BYTES, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, ROOT_BYTES,
};

/// A record header whose key and value are borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderRef<'a> {
    pub key: &'a str,
    pub value: Option<&'a [u8]>,
}

/// A record whose key, value and headers are borrowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<HeaderRef<'a>>,
}

impl RecordRef<'_> {
    fn payload_bytes(&self) -> usize {
        self.key.map_or(0, <[u8]>::len)
            + self.value.map_or(0, <[u8]>::len)
            + self
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                .sum::<usize>()
    }
}

/// Producer fields and attributes of a batch built from borrowed records.
#[derive(Clone, Copy, Debug)]
pub struct BatchProducer {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub attributes: u16,
}

impl Default for BatchProducer {
    fn default() -> Self {
        BatchProducer {
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            attributes: 0,
        }
    }
}

/// Encodes `records` into a frame with its checksum set, as
/// `RecordBatchBuilder::build` would from the same records. Base offset
/// and append time are zero until the log stamps them. Every timestamp must
/// lie within i64 of the first (callers check what clients send).
pub fn build(producer: BatchProducer, records: &[RecordRef<'_>]) -> Vec<u8> {
    assert!(!records.is_empty(), "a record batch holds at least one record");
    let count = records.len();
    let first_timestamp_ms = records[0].timestamp_ms;
    let max_timestamp_ms = records.iter().map(|r| r.timestamp_ms).max().expect("a record");
    assert!(
        records
            .iter()
            .all(|r| r.timestamp_ms.checked_sub(first_timestamp_ms).is_some()),
        "record timestamps must lie within i64 of the first: the batch keeps deltas"
    );
    let batch = BatchRef {
        header: BatchHeader {
            crc: 0,
            base_offset: 0,
            leader_epoch: 0,
            raft_index: 0,
            append_time_ms: 0,
            last_offset_delta: u32::try_from(count - 1).expect("fewer than 2^32 records"),
            record_count: count as u32,
            first_timestamp_ms,
            max_timestamp_ms,
            producer_id: producer.producer_id,
            producer_epoch: producer.producer_epoch,
            base_sequence: producer.base_sequence,
            attributes: producer.attributes,
        },
        records,
    };
    let payload: usize = records.iter().map(RecordRef::payload_bytes).sum();
    let mut frame = Vec::with_capacity(FRAME_LENGTH_BYTES + ROOT_BYTES + payload + count * 64);
    frame.extend_from_slice(&[0; FRAME_LENGTH_BYTES]);
    let mut frame =
        rkyv::api::high::to_bytes_in::<_, rancor::Error>(&batch, frame).expect("serializing into a Vec cannot fail");
    let archive_len = frame.len() - FRAME_LENGTH_BYTES;
    let archive_len_u32 = u32::try_from(archive_len).expect("batch under 4 GiB");
    frame[..FRAME_LENGTH_BYTES].copy_from_slice(&archive_len_u32.to_le_bytes());
    let crc = archive_crc(&frame[FRAME_LENGTH_BYTES..]);
    let at = FRAME_LENGTH_BYTES + header_field(archive_len, std::mem::offset_of!(super::ArchivedBatchHeader, crc));
    frame[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// Borrowed bytes archived as `Vec<u8>`.
struct Bytes<'a>(&'a [u8]);

impl Archive for Bytes<'_> {
    type Archived = ArchivedVec<u8>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<ArchivedVec<u8>>) {
        ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for Bytes<'_> {
    fn serialize(&self, serializer: &mut S) -> Result<VecResolver, S::Error> {
        ArchivedVec::<u8>::serialize_from_slice(self.0, serializer)
    }
}

impl Archive for HeaderRef<'_> {
    type Archived = ArchivedRecordHeader;
    type Resolver = (StringResolver, Option<VecResolver>);

    fn resolve(&self, (key, value): Self::Resolver, out: Place<ArchivedRecordHeader>) {
        munge!(let ArchivedRecordHeader { key: out_key, value: out_value } = out);
        ArchivedString::resolve_from_str(self.key, key, out_key);
        self.value.map(Bytes).resolve(value, out_value);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for HeaderRef<'_>
where
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        Ok((
            ArchivedString::serialize_from_str(self.key, serializer)?,
            self.value.map(Bytes).serialize(serializer)?,
        ))
    }
}

/// A borrowed record at its place in the batch.
struct Placed<'r, 'a> {
    offset_delta: u32,
    timestamp_delta_ms: i64,
    record: &'r RecordRef<'a>,
}

struct PlacedResolver {
    key: Option<VecResolver>,
    value: Option<VecResolver>,
    headers: VecResolver,
}

impl Archive for Placed<'_, '_> {
    type Archived = ArchivedRecord;
    type Resolver = PlacedResolver;

    fn resolve(&self, resolver: PlacedResolver, out: Place<ArchivedRecord>) {
        munge!(let ArchivedRecord { offset_delta, timestamp_delta_ms, key, value, headers } = out);
        self.offset_delta.resolve((), offset_delta);
        self.timestamp_delta_ms.resolve((), timestamp_delta_ms);
        self.record.key.map(Bytes).resolve(resolver.key, key);
        self.record.value.map(Bytes).resolve(resolver.value, value);
        ArchivedVec::resolve_from_len(self.record.headers.len(), resolver.headers, headers);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for Placed<'_, '_>
where
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<PlacedResolver, S::Error> {
        Ok(PlacedResolver {
            key: self.record.key.map(Bytes).serialize(serializer)?,
            value: self.record.value.map(Bytes).serialize(serializer)?,
            headers: ArchivedVec::<ArchivedRecordHeader>::serialize_from_slice(&self.record.headers, serializer)?,
        })
    }
}

struct BatchRef<'r, 'a> {
    header: BatchHeader,
    records: &'r [RecordRef<'a>],
}

impl BatchRef<'_, '_> {
    fn placed(&self) -> impl ExactSizeIterator<Item = Placed<'_, '_>> + Clone {
        let first = self.header.first_timestamp_ms;
        self.records.iter().enumerate().map(move |(i, record)| Placed {
            offset_delta: i as u32,
            timestamp_delta_ms: record
                .timestamp_ms
                .checked_sub(first)
                .expect("record timestamps within i64 of the first (`build` checks)"),
            record,
        })
    }
}

impl Archive for BatchRef<'_, '_> {
    type Archived = ArchivedRecordBatch;
    type Resolver = (<BatchHeader as Archive>::Resolver, VecResolver);

    fn resolve(&self, (header, records): Self::Resolver, out: Place<ArchivedRecordBatch>) {
        munge!(let ArchivedRecordBatch { header: out_header, records: out_records } = out);
        self.header.resolve(header, out_header);
        ArchivedVec::resolve_from_len(self.records.len(), records, out_records);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for BatchRef<'_, '_>
where
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        let records =
            ArchivedVec::<ArchivedRecord>::serialize_from_iter::<Placed<'_, '_>, _, _>(self.placed(), serializer)?;
        Ok((self.header.serialize(serializer)?, records))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::batch::{RecordBatchBuilder, RecordHeader};

    type Parts = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Option<Vec<u8>>)>);

    fn parts() -> impl Strategy<Value = Parts> {
        (
            -10_000i64..10_000,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..600)),
            proptest::collection::vec(
                (
                    "[a-z]{0,20}",
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                ),
                0..3,
            ),
        )
    }

    proptest! {
        /// Borrowed and owned records make the same frame, byte for byte.
        #[test]
        fn borrowed_records_archive_exactly_as_owned_ones(
            records in proptest::collection::vec(parts(), 1..30),
            producer in proptest::option::of((0i64..1 << 40, 0i16..10, 0i32..1000, 0u16..0x40)),
        ) {
            let mut owned = RecordBatchBuilder::new();
            let mut batch_producer = BatchProducer::default();
            if let Some((id, epoch, sequence, attributes)) = producer {
                owned = owned.producer(id, epoch, sequence).attributes(attributes);
                batch_producer = BatchProducer {
                    producer_id: id,
                    producer_epoch: epoch,
                    base_sequence: sequence,
                    attributes,
                };
            }
            let mut borrowed = Vec::new();
            for (timestamp, key, value, headers) in &records {
                owned.push(
                    1_000_000 + timestamp,
                    key.as_deref(),
                    value.as_deref(),
                    headers
                        .iter()
                        .map(|(k, v)| RecordHeader { key: k.clone(), value: v.clone() })
                        .collect(),
                );
                borrowed.push(RecordRef {
                    timestamp_ms: 1_000_000 + timestamp,
                    key: key.as_deref(),
                    value: value.as_deref(),
                    headers: headers.iter().map(|(k, v)| HeaderRef { key: k, value: v.as_deref() }).collect(),
                });
            }
            prop_assert_eq!(build(batch_producer, &borrowed), owned.build());
        }
    }
}
