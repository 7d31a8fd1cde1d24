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
//!
//! A replicated partition also holds each group's membership as its
//! coordinator last settled it (generation, leader, members and their
//! assignments), so that a coordinator taking over on another node knows
//! the members and their generation, and their commits and heartbeats go
//! on without a rebalance (Kafka's group metadata record):
//! - key: `1u8`, group (u16 length + UTF-8)
//! - value: `0u8`, generation i32, protocol type, protocol, leader (each
//!   u16 length + UTF-8), member count u32, then per member: id, client
//!   id (u16 length + UTF-8), session timeout ms u32, rebalance timeout ms
//!   u32, assignment (u32 length + bytes). No value: the group emptied.

/// The internal topic that holds committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

const KEY_VERSION: u8 = 0;
const VALUE_VERSION: u8 = 0;
/// The key version of a group metadata record.
const GROUP_KEY_VERSION: u8 = 1;
const GROUP_VALUE_VERSION: u8 = 0;

/// A group's membership, as its coordinator settled it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRecord {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub members: Vec<MemberRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    pub member_id: String,
    pub client_id: String,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    pub assignment: Vec<u8>,
}

impl GroupRecord {
    /// Bytes the record takes, about: checked against the batch limit.
    pub fn size(&self) -> usize {
        16 + self.protocol_type.len()
            + self.protocol.len()
            + self.leader.len()
            + self
                .members
                .iter()
                .map(|m| 16 + m.member_id.len() + m.client_id.len() + m.assignment.len())
                .sum::<usize>()
    }
}

pub fn encode_group_key(group: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + group.len());
    out.push(GROUP_KEY_VERSION);
    put_str(&mut out, group);
    out
}

pub fn encode_group(record: &GroupRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.size());
    out.push(GROUP_VALUE_VERSION);
    out.extend_from_slice(&record.generation.to_be_bytes());
    put_str(&mut out, &record.protocol_type);
    put_str(&mut out, &record.protocol);
    put_str(&mut out, &record.leader);
    let count = u32::try_from(record.members.len()).expect("members are bounded");
    out.extend_from_slice(&count.to_be_bytes());
    for member in &record.members {
        put_str(&mut out, &member.member_id);
        put_str(&mut out, &member.client_id);
        out.extend_from_slice(&member.session_timeout_ms.to_be_bytes());
        out.extend_from_slice(&member.rebalance_timeout_ms.to_be_bytes());
        let len = u32::try_from(member.assignment.len()).expect("assignments are bounded by the batch size");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&member.assignment);
    }
    out
}

/// The group of a group metadata key; None if the bytes are not one.
pub fn decode_group_key(bytes: &[u8]) -> Option<String> {
    let mut r = Reader { rest: bytes };
    if r.u8()? != GROUP_KEY_VERSION {
        return None;
    }
    let group = r.string()?;
    r.rest.is_empty().then_some(group)
}

pub fn decode_group(bytes: &[u8]) -> Option<GroupRecord> {
    let mut r = Reader { rest: bytes };
    if r.u8()? != GROUP_VALUE_VERSION {
        return None;
    }
    let generation = r.u32()? as i32;
    let (protocol_type, protocol, leader) = (r.string()?, r.string()?, r.string()?);
    let count = r.u32()? as usize;
    // Each member takes at least 16 bytes: a count the bytes cannot hold
    // is damage, not an allocation to make.
    if count > r.rest.len() / 16 {
        return None;
    }
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        let (member_id, client_id) = (r.string()?, r.string()?);
        let (session_timeout_ms, rebalance_timeout_ms) = (r.u32()?, r.u32()?);
        let len = r.u32()? as usize;
        members.push(MemberRecord {
            member_id,
            client_id,
            session_timeout_ms,
            rebalance_timeout_ms,
            assignment: r.take(len)?.to_vec(),
        });
    }
    r.rest.is_empty().then_some(GroupRecord {
        generation,
        protocol_type,
        protocol,
        leader,
        members,
    })
}

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
            let _ = decode_group_key(&bytes);
            let _ = decode_group(&bytes);
        }

        #[test]
        fn group_records_round_trip_and_keys_never_pass_for_offsets(
            group in "[a-z0-9._-]{1,40}",
            generation in any::<i32>(),
            members in proptest::collection::vec(
                ("[a-z0-9-]{1,30}", "[a-z0-9-]{0,20}", any::<u32>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..64)),
                0..8,
            ),
        ) {
            let record = GroupRecord {
                generation,
                protocol_type: "consumer".into(),
                protocol: "range".into(),
                leader: members.first().map(|m| m.0.clone()).unwrap_or_default(),
                members: members
                    .into_iter()
                    .map(|(member_id, client_id, session, rebalance, assignment)| MemberRecord {
                        member_id,
                        client_id,
                        session_timeout_ms: session,
                        rebalance_timeout_ms: rebalance,
                        assignment,
                    })
                    .collect(),
            };
            let encoded = encode_group(&record);
            prop_assert_eq!(decode_group(&encoded), Some(record));
            for cut in 0..encoded.len() {
                prop_assert_eq!(decode_group(&encoded[..cut]), None);
            }
            let key = encode_group_key(&group);
            prop_assert_eq!(decode_group_key(&key), Some(group));
            prop_assert_eq!(decode_key(&key), None);
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
