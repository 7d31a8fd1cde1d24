//! Sparse indexes of one segment: the offset index maps an offset to the
//! position of the batch that holds it; the time index maps a timestamp to
//! the first offset whose batch reached it.
//!
//! Both are kept in memory while the segment is open and written to their
//! files when the segment is sealed or the log closes. Their files are a
//! cache: recovery rebuilds a missing or damaged one from the `.log`.
//!
//! File formats (little endian, no header; Kafka's layout):
//! - `.index`: entries of (relative offset u32, position u32), 8 bytes each.
//! - `.timeindex`: entries of (timestamp i64, relative offset u32), 12 bytes.

use crate::offset::{FilePosition, Offset};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetIndexEntry {
    /// Base offset of the batch minus the segment's base offset.
    pub relative_offset: u32,
    pub position: u32,
}

pub const OFFSET_INDEX_ENTRY_BYTES: usize = 8;
pub const TIME_INDEX_ENTRY_BYTES: usize = 12;

/// Offset index of one segment. Invariant: entries strictly increase in both
/// relative offset and position.
#[derive(Clone, Debug, Default)]
pub struct OffsetIndex {
    entries: Vec<OffsetIndexEntry>,
}

impl OffsetIndex {
    pub fn push(&mut self, entry: OffsetIndexEntry) {
        if let Some(last) = self.entries.last() {
            assert!(
                entry.relative_offset > last.relative_offset,
                "offset index entries must increase"
            );
            assert!(entry.position > last.position, "offset index positions must increase");
        }
        self.entries.push(entry);
    }

    /// Position of the last indexed batch starting at or before `relative`,
    /// or the start of the segment.
    pub fn lookup(&self, relative: u32) -> FilePosition {
        let after = self.entries.partition_point(|e| e.relative_offset <= relative);
        match after {
            0 => FilePosition(0),
            n => FilePosition(u64::from(self.entries[n - 1].position)),
        }
    }

    /// The last indexed batch start in `(after, at_most]`: a position no
    /// batch straddles (batches lie end to end), for read-ahead to end a
    /// chunk at.
    pub fn batch_start_in(&self, after: u64, at_most: u64) -> Option<u64> {
        let n = self.entries.partition_point(|e| u64::from(e.position) <= at_most);
        let position = u64::from(self.entries.get(n.checked_sub(1)?)?.position);
        (position > after).then_some(position)
    }

    /// Drops entries at or past `position` (after a truncation).
    pub fn truncate_to_position(&mut self, position: FilePosition) {
        let keep = self.entries.partition_point(|e| u64::from(e.position) < position.0);
        self.entries.truncate(keep);
    }

    pub fn entries(&self) -> &[OffsetIndexEntry] {
        &self.entries
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.entries.len() * OFFSET_INDEX_ENTRY_BYTES);
        for e in &self.entries {
            bytes.extend_from_slice(&e.relative_offset.to_le_bytes());
            bytes.extend_from_slice(&e.position.to_le_bytes());
        }
        bytes
    }

    /// Decodes an index file, refusing one that cannot belong to a segment of
    /// `segment_bytes` bytes holding offsets below `relative_end`.
    pub fn decode(bytes: &[u8], segment_bytes: u64, relative_end: u64) -> Result<OffsetIndex, String> {
        if bytes.len() % OFFSET_INDEX_ENTRY_BYTES != 0 {
            return Err(format!("{} bytes is not a whole number of entries", bytes.len()));
        }
        let mut index = OffsetIndex::default();
        for chunk in bytes.chunks_exact(OFFSET_INDEX_ENTRY_BYTES) {
            let entry = OffsetIndexEntry {
                relative_offset: u32::from_le_bytes(chunk[..4].try_into().expect("4 bytes")),
                position: u32::from_le_bytes(chunk[4..].try_into().expect("4 bytes")),
            };
            if u64::from(entry.position) >= segment_bytes || u64::from(entry.relative_offset) >= relative_end {
                return Err(format!("entry {entry:?} lies past the end of the segment"));
            }
            if let Some(last) = index.entries.last() {
                if entry.relative_offset <= last.relative_offset || entry.position <= last.position {
                    return Err(format!("entry {entry:?} does not follow {last:?}"));
                }
            }
            index.entries.push(entry);
        }
        Ok(index)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeIndexEntry {
    pub timestamp_ms: i64,
    pub relative_offset: u32,
}

/// Time index of one segment. Each entry says: the batch at this offset is the
/// first whose timestamp reached this value; every batch before it is older.
/// Invariant: entries strictly increase in both timestamp and offset.
#[derive(Clone, Debug, Default)]
pub struct TimeIndex {
    entries: Vec<TimeIndexEntry>,
}

impl TimeIndex {
    pub fn push(&mut self, entry: TimeIndexEntry) {
        if let Some(last) = self.entries.last() {
            assert!(
                entry.timestamp_ms > last.timestamp_ms,
                "time index timestamps must increase"
            );
            assert!(
                entry.relative_offset > last.relative_offset,
                "time index offsets must increase"
            );
        }
        self.entries.push(entry);
    }

    pub fn last(&self) -> Option<TimeIndexEntry> {
        self.entries.last().copied()
    }

    /// The relative offset to start scanning from for the first record at or
    /// after `timestamp_ms`: the last entry at or below it, or the segment start.
    pub fn lookup(&self, timestamp_ms: i64) -> u32 {
        let after = self.entries.partition_point(|e| e.timestamp_ms <= timestamp_ms);
        match after {
            0 => 0,
            n => self.entries[n - 1].relative_offset,
        }
    }

    /// Drops entries at or past `relative_offset`.
    pub fn truncate_to_offset(&mut self, relative_offset: u32) {
        let keep = self.entries.partition_point(|e| e.relative_offset < relative_offset);
        self.entries.truncate(keep);
    }

    pub fn entries(&self) -> &[TimeIndexEntry] {
        &self.entries
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.entries.len() * TIME_INDEX_ENTRY_BYTES);
        for e in &self.entries {
            bytes.extend_from_slice(&e.timestamp_ms.to_le_bytes());
            bytes.extend_from_slice(&e.relative_offset.to_le_bytes());
        }
        bytes
    }

    pub fn decode(bytes: &[u8], relative_end: u64) -> Result<TimeIndex, String> {
        if bytes.len() % TIME_INDEX_ENTRY_BYTES != 0 {
            return Err(format!("{} bytes is not a whole number of entries", bytes.len()));
        }
        let mut index = TimeIndex::default();
        for chunk in bytes.chunks_exact(TIME_INDEX_ENTRY_BYTES) {
            let entry = TimeIndexEntry {
                timestamp_ms: i64::from_le_bytes(chunk[..8].try_into().expect("8 bytes")),
                relative_offset: u32::from_le_bytes(chunk[8..].try_into().expect("4 bytes")),
            };
            if u64::from(entry.relative_offset) >= relative_end {
                return Err(format!("entry {entry:?} lies past the end of the segment"));
            }
            if let Some(last) = index.entries.last() {
                if entry.timestamp_ms <= last.timestamp_ms || entry.relative_offset <= last.relative_offset {
                    return Err(format!("entry {entry:?} does not follow {last:?}"));
                }
            }
            index.entries.push(entry);
        }
        Ok(index)
    }
}

/// Converts an offset to the segment-relative form the indexes hold.
pub fn relative(base: Offset, offset: Offset) -> u32 {
    assert!(offset >= base);
    u32::try_from(offset.0 - base.0).expect("a segment holds fewer than 2^32 offsets")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An offset index whose entries step by each (offset, position) gap.
    fn offset_index_of(gaps: &[(u32, u32)]) -> OffsetIndex {
        let mut index = OffsetIndex::default();
        let (mut offset, mut position) = (0u32, 0u32);
        for (d_offset, d_position) in gaps {
            offset += d_offset;
            position += d_position;
            index.push(OffsetIndexEntry {
                relative_offset: offset,
                position,
            });
        }
        index
    }

    proptest! {
        #[test]
        fn offset_lookup_agrees_with_a_linear_scan(
            gaps in prop::collection::vec((1u32..50, 1u32..5000), 0..200),
            probes in prop::collection::vec(0u32..20_000, 1..50),
        ) {
            let index = offset_index_of(&gaps);
            for probe in probes {
                let linear = index.entries().iter().rev().find(|e| e.relative_offset <= probe)
                    .map_or(0, |e| u64::from(e.position));
                prop_assert_eq!(index.lookup(probe), FilePosition(linear));
            }
            let decoded = OffsetIndex::decode(&index.encode(), u64::MAX, u64::MAX).unwrap();
            prop_assert_eq!(decoded.entries(), index.entries());
        }

        #[test]
        fn batch_start_in_agrees_with_a_linear_scan(
            gaps in prop::collection::vec((1u32..50, 1u32..5000), 0..200),
            probes in prop::collection::vec((0u64..600_000, 0u64..20_000), 1..50),
        ) {
            let index = offset_index_of(&gaps);
            for (after, span) in probes {
                let at_most = after + span;
                let linear = index.entries().iter().rev()
                    .map(|e| u64::from(e.position))
                    .find(|p| *p <= at_most)
                    .filter(|p| *p > after);
                prop_assert_eq!(index.batch_start_in(after, at_most), linear);
            }
        }

        #[test]
        fn time_lookup_agrees_with_a_linear_scan(
            gaps in prop::collection::vec((1i64..1000, 1u32..50), 0..200),
            probes in prop::collection::vec(-10i64..200_000, 1..50),
        ) {
            let mut index = TimeIndex::default();
            let (mut ts, mut offset) = (0i64, 0u32);
            for (d_ts, d_offset) in gaps {
                ts += d_ts;
                offset += d_offset;
                index.push(TimeIndexEntry { timestamp_ms: ts, relative_offset: offset });
            }
            for probe in probes {
                let linear = index.entries().iter().rev().find(|e| e.timestamp_ms <= probe)
                    .map_or(0, |e| e.relative_offset);
                prop_assert_eq!(index.lookup(probe), linear);
            }
            let decoded = TimeIndex::decode(&index.encode(), u64::MAX).unwrap();
            prop_assert_eq!(decoded.entries(), index.entries());
        }

        #[test]
        fn damaged_index_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = OffsetIndex::decode(&bytes, 1 << 20, 1 << 20);
            let _ = TimeIndex::decode(&bytes, 1 << 20);
        }
    }

    #[test]
    fn unsorted_index_is_refused() {
        let mut bytes = Vec::new();
        for (o, p) in [(5u32, 100u32), (3, 200)] {
            bytes.extend_from_slice(&o.to_le_bytes());
            bytes.extend_from_slice(&p.to_le_bytes());
        }
        assert!(OffsetIndex::decode(&bytes, 1 << 20, 1 << 20).is_err());
        assert!(OffsetIndex::decode(&bytes[..7], 1 << 20, 1 << 20).is_err());
    }
}
