//! Committed offsets as records of the internal `__consumer_offsets` topic:
//! each commit is one record keyed by (group, topic, partition), its value
//! the offset, the commit's time and the client's metadata; a record with
//! no value deletes the key (expiry, a reset). The latest record of a key
//! wins, so a coordinator rebuilds its groups' offsets by replaying its
//! partitions of the topic in order.
//!
//! Byte layout (big endian, Kafka's habit), a version byte first so the
//! format can grow:
//! - key: `0u8`, group (u16 length + UTF-8), topic (u16 length + UTF-8),
//!   partition u32
//! - value: `0u8`, offset u64, commit time ms i64, metadata (u16 length +
//!   UTF-8)

/// The internal topic that holds committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

const KEY_VERSION: u8 = 0;
const VALUE_VERSION: u8 = 0;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetKey {
    pub group: String,
    pub topic: String,
    pub partition: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: u64,
    pub commit_time_ms: i64,
    pub metadata: String,
}

/// The offsets partition that holds a group's commits, and whose owner
/// shard coordinates the group: Kafka's murmur2 of the group id.
pub fn partition_for_group(group: &str, partitions: u32) -> u32 {
    net::client::partition_for_key(group.as_bytes(), partitions)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("names and metadata are bounded below 64 KiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn encode_key(key: &OffsetKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + key.group.len() + key.topic.len());
    out.push(KEY_VERSION);
    put_str(&mut out, &key.group);
    put_str(&mut out, &key.topic);
    out.extend_from_slice(&key.partition.to_be_bytes());
    out
}

pub fn encode_value(value: &OffsetValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(19 + value.metadata.len());
    out.push(VALUE_VERSION);
    out.extend_from_slice(&value.offset.to_be_bytes());
    out.extend_from_slice(&value.commit_time_ms.to_be_bytes());
    put_str(&mut out, &value.metadata);
    out
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    fn string(&mut self) -> Option<String> {
        let len = self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))?;
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec()).ok()
    }
}

/// Decodes a key; None if the bytes are not one (an unknown version, or
/// damaged).
pub fn decode_key(bytes: &[u8]) -> Option<OffsetKey> {
    let mut r = Reader { rest: bytes };
    if r.u8()? != KEY_VERSION {
        return None;
    }
    let key = OffsetKey {
        group: r.string()?,
        topic: r.string()?,
        partition: r.u32()?,
    };
    r.rest.is_empty().then_some(key)
}

pub fn decode_value(bytes: &[u8]) -> Option<OffsetValue> {
    let mut r = Reader { rest: bytes };
    if r.u8()? != VALUE_VERSION {
        return None;
    }
    let value = OffsetValue {
        offset: r.u64()?,
        commit_time_ms: r.u64()? as i64,
        metadata: r.string()?,
    };
    r.rest.is_empty().then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keys_and_values_round_trip(
            group in "[a-z0-9._-]{1,40}",
            topic in "[a-z0-9._-]{1,40}",
            partition in any::<u32>(),
            offset in any::<u64>(),
            time in any::<i64>(),
            metadata in ".{0,100}",
        ) {
            let key = OffsetKey { group, topic, partition };
            prop_assert_eq!(decode_key(&encode_key(&key)), Some(key));
            let value = OffsetValue { offset, commit_time_ms: time, metadata };
            prop_assert_eq!(decode_value(&encode_value(&value)), Some(value));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_key(&bytes);
            let _ = decode_value(&bytes);
        }
    }

    #[test]
    fn truncated_or_versioned_bytes_are_refused() {
        let key = encode_key(&OffsetKey {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
        });
        for cut in 0..key.len() {
            assert_eq!(decode_key(&key[..cut]), None);
        }
        let mut newer = key.clone();
        newer[0] = 1;
        assert_eq!(decode_key(&newer), None);
        let mut longer = key;
        longer.push(0);
        assert_eq!(decode_key(&longer), None);
    }

    #[test]
    fn a_group_always_lands_on_the_same_partition() {
        let p = partition_for_group("payments", 4);
        assert!(p < 4);
        assert_eq!(partition_for_group("payments", 4), p);
    }
}
