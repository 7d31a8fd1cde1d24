//! Committed offsets and group memberships as records of the internal
//! `__consumer_offsets` topic, in Kafka's own schemas (its group
//! coordinator's `OffsetCommitKey`/`OffsetCommitValue` and
//! `GroupMetadataKey`/`GroupMetadataValue`), so that tools which read the
//! topic directly (Burrow, Kafka's `kafka-console-consumer --formatter
//! OffsetsMessageFormatter`) read corelog's as they read Kafka's.
//!
//! Each commit is one record keyed by (group, topic, partition), its value
//! the offset, the commit's time and the client's metadata; a record with
//! no value deletes the key (expiry, a reset). The latest record of a key
//! wins, so a coordinator rebuilds its groups' offsets by replaying its
//! partitions of the topic in order. A group's membership as its
//! coordinator last settled it (generation, leader, members with their
//! subscriptions and assignments) is kept too, so that a coordinator
//! taking over on another node knows the members and their generation, and
//! their commits and heartbeats go on without a rebalance.
//!
//! Byte layout (Kafka's: big endian, strings with an i16 length, -1 for
//! null; byte arrays with an i32 length), the schema's version first:
//! - offset key, version 1: group, topic, partition i32
//! - offset value, version 3: offset i64, leader epoch i32 (-1: none),
//!   metadata, commit timestamp i64
//! - group key, version 2: group
//! - group value, version 3: protocol type, generation i32, protocol
//!   (nullable), leader (nullable), current state timestamp i64, members
//!   (i32 count), each: member id, group instance id (nullable), client
//!   id, client host, rebalance timeout i32, session timeout i32,
//!   subscription (bytes), assignment (bytes)
//!
//! Records corelog wrote before it used Kafka's schemas (a u8 version 0
//! or 1 first, u16 lengths) are still read: a group id is at most 255
//! bytes, so such an offset key starts 0x00 0x00 and a group key 0x01,
//! where Kafka's versions start 0x00 0x01 and 0x00 0x02. A record's value
//! is read in its key's format.

/// The internal topic that holds committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Kafka's schema versions corelog writes, and those it reads besides.
const OFFSET_KEY_VERSION: i16 = 1;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_KEY_VERSION: i16 = 2;
const GROUP_VALUE_VERSION: i16 = 3;

/// The first bytes of corelog's own records of before.
const LEGACY_OFFSET_KEY: u8 = 0;
const LEGACY_GROUP_KEY: u8 = 1;
const LEGACY_VALUE: u8 = 0;

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
    /// The member's metadata for the group's protocol (a consumer's
    /// subscription).
    pub subscription: Vec<u8>,
    pub assignment: Vec<u8>,
}

impl GroupRecord {
    /// Bytes the record takes, about: checked against the batch limit.
    pub fn size(&self) -> usize {
        32 + self.protocol_type.len()
            + self.protocol.len()
            + self.leader.len()
            + self
                .members
                .iter()
                .map(|m| 32 + m.member_id.len() + m.client_id.len() + m.subscription.len() + m.assignment.len())
                .sum::<usize>()
    }
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

/// One record of the offsets topic, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffsetsRecord {
    /// A commit, or (None) its deletion.
    Offset(OffsetKey, Option<OffsetValue>),
    /// A group's membership, or (None) the group emptied.
    Group(String, Option<GroupRecord>),
}

/// The offsets partition that holds a group's commits, and whose owner
/// shard coordinates the group: Kafka's murmur2 of the group id.
pub fn partition_for_group(group: &str, partitions: u32) -> u32 {
    net::client::partition_for_key(group.as_bytes(), partitions)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = i16::try_from(s.len()).expect("names and metadata are bounded below 32 KiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = i32::try_from(bytes.len()).expect("bounded by the batch size");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

pub fn encode_key(key: &OffsetKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + key.group.len() + key.topic.len());
    out.extend_from_slice(&OFFSET_KEY_VERSION.to_be_bytes());
    put_str(&mut out, &key.group);
    put_str(&mut out, &key.topic);
    out.extend_from_slice(&key.partition.to_be_bytes());
    out
}

pub fn encode_value(value: &OffsetValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + value.metadata.len());
    out.extend_from_slice(&OFFSET_VALUE_VERSION.to_be_bytes());
    out.extend_from_slice(&value.offset.to_be_bytes());
    // No leader epoch: corelog's commits do not carry the client's.
    out.extend_from_slice(&(-1i32).to_be_bytes());
    put_str(&mut out, &value.metadata);
    out.extend_from_slice(&value.commit_time_ms.to_be_bytes());
    out
}

pub fn encode_group_key(group: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + group.len());
    out.extend_from_slice(&GROUP_KEY_VERSION.to_be_bytes());
    put_str(&mut out, group);
    out
}

pub fn encode_group(record: &GroupRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.size());
    out.extend_from_slice(&GROUP_VALUE_VERSION.to_be_bytes());
    put_str(&mut out, &record.protocol_type);
    out.extend_from_slice(&record.generation.to_be_bytes());
    put_str(&mut out, &record.protocol);
    put_str(&mut out, &record.leader);
    // The state's time is not kept: -1, as Kafka writes for none.
    out.extend_from_slice(&(-1i64).to_be_bytes());
    let count = i32::try_from(record.members.len()).expect("members are bounded");
    out.extend_from_slice(&count.to_be_bytes());
    for member in &record.members {
        put_str(&mut out, &member.member_id);
        out.extend_from_slice(&(-1i16).to_be_bytes()); // no static membership
        put_str(&mut out, &member.client_id);
        put_str(&mut out, ""); // the client's host is not kept
        out.extend_from_slice(&(member.rebalance_timeout_ms.min(i32::MAX as u32) as i32).to_be_bytes());
        out.extend_from_slice(&(member.session_timeout_ms.min(i32::MAX as u32) as i32).to_be_bytes());
        put_bytes(&mut out, &member.subscription);
        put_bytes(&mut out, &member.assignment);
    }
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

    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    /// Kafka's string: i16 length; -1 (null) reads as empty.
    fn string(&mut self) -> Option<String> {
        let len = self.i16()?;
        if len == -1 {
            return Some(String::new());
        }
        let bytes = self.take(usize::try_from(len).ok()?)?;
        String::from_utf8(bytes.to_vec()).ok()
    }

    /// Kafka's bytes: i32 length.
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let len = usize::try_from(self.u32()? as i32).ok()?;
        self.take(len).map(<[u8]>::to_vec)
    }

    /// corelog's string of before: u16 length.
    fn legacy_string(&mut self) -> Option<String> {
        let len = self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))?;
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec()).ok()
    }

    fn done<T>(&self, value: T) -> Option<T> {
        self.rest.is_empty().then_some(value)
    }
}

/// Reads one record of the offsets topic; None if its key or value is not
/// one corelog wrote (an unknown version, or damage): a replay skips it.
pub fn decode_record(key: &[u8], value: Option<&[u8]>) -> Option<OffsetsRecord> {
    match key {
        [0, 0, ..] => {
            let key = decode_legacy_key(key)?;
            let value = value.map(decode_legacy_value);
            Some(OffsetsRecord::Offset(key, value.map(|v| v.ok_or(())).transpose().ok()?))
        }
        [LEGACY_GROUP_KEY, ..] => {
            let mut r = Reader { rest: &key[1..] };
            let group = r.legacy_string()?;
            let group = r.done(group)?;
            let value = value.map(decode_legacy_group);
            Some(OffsetsRecord::Group(
                group,
                value.map(|v| v.ok_or(())).transpose().ok()?,
            ))
        }
        _ => {
            let mut r = Reader { rest: key };
            match r.i16()? {
                OFFSET_KEY_VERSION => {
                    let key = OffsetKey {
                        group: r.string()?,
                        topic: r.string()?,
                        partition: r.u32()?,
                    };
                    let key = r.done(key)?;
                    let value = value.map(decode_value);
                    Some(OffsetsRecord::Offset(key, value.map(|v| v.ok_or(())).transpose().ok()?))
                }
                GROUP_KEY_VERSION => {
                    let group = r.string()?;
                    let group = r.done(group)?;
                    let value = value.map(decode_group);
                    Some(OffsetsRecord::Group(
                        group,
                        value.map(|v| v.ok_or(())).transpose().ok()?,
                    ))
                }
                _ => None,
            }
        }
    }
}

/// Kafka's offset value, versions 1 and 3 (what Kafka brokers write).
fn decode_value(bytes: &[u8]) -> Option<OffsetValue> {
    let mut r = Reader { rest: bytes };
    let value = match r.i16()? {
        1 => {
            let offset = r.u64()?;
            let metadata = r.string()?;
            let commit_time_ms = r.u64()? as i64;
            let _expire_time_ms = r.u64()?;
            OffsetValue {
                offset,
                commit_time_ms,
                metadata,
            }
        }
        3 => {
            let offset = r.u64()?;
            let _leader_epoch = r.u32()?;
            let metadata = r.string()?;
            OffsetValue {
                offset,
                metadata,
                commit_time_ms: r.u64()? as i64,
            }
        }
        _ => return None,
    };
    r.done(value)
}

/// Kafka's group value, version 3.
fn decode_group(bytes: &[u8]) -> Option<GroupRecord> {
    let mut r = Reader { rest: bytes };
    if r.i16()? != GROUP_VALUE_VERSION {
        return None;
    }
    let protocol_type = r.string()?;
    let generation = r.u32()? as i32;
    let (protocol, leader) = (r.string()?, r.string()?);
    let _state_time_ms = r.u64()?;
    let count = r.u32()? as usize;
    // Each member takes at least 24 bytes: a count the bytes cannot hold
    // is damage, not an allocation to make.
    if count > r.rest.len() / 24 {
        return None;
    }
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        let member_id = r.string()?;
        let _instance_id = r.string()?;
        let client_id = r.string()?;
        let _client_host = r.string()?;
        let rebalance_timeout_ms = r.u32()?;
        let session_timeout_ms = r.u32()?;
        members.push(MemberRecord {
            member_id,
            client_id,
            session_timeout_ms,
            rebalance_timeout_ms,
            subscription: r.bytes()?,
            assignment: r.bytes()?,
        });
    }
    r.done(GroupRecord {
        generation,
        protocol_type,
        protocol,
        leader,
        members,
    })
}

fn decode_legacy_key(bytes: &[u8]) -> Option<OffsetKey> {
    let mut r = Reader { rest: bytes };
    if r.u8()? != LEGACY_OFFSET_KEY {
        return None;
    }
    let key = OffsetKey {
        group: r.legacy_string()?,
        topic: r.legacy_string()?,
        partition: r.u32()?,
    };
    r.done(key)
}

fn decode_legacy_value(bytes: &[u8]) -> Option<OffsetValue> {
    let mut r = Reader { rest: bytes };
    if r.u8()? != LEGACY_VALUE {
        return None;
    }
    let value = OffsetValue {
        offset: r.u64()?,
        commit_time_ms: r.u64()? as i64,
        metadata: r.legacy_string()?,
    };
    r.done(value)
}

fn decode_legacy_group(bytes: &[u8]) -> Option<GroupRecord> {
    let mut r = Reader { rest: bytes };
    if r.u8()? != LEGACY_VALUE {
        return None;
    }
    let generation = r.u32()? as i32;
    let (protocol_type, protocol, leader) = (r.legacy_string()?, r.legacy_string()?, r.legacy_string()?);
    let count = r.u32()? as usize;
    if count > r.rest.len() / 16 {
        return None;
    }
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        let (member_id, client_id) = (r.legacy_string()?, r.legacy_string()?);
        let (session_timeout_ms, rebalance_timeout_ms) = (r.u32()?, r.u32()?);
        let len = r.u32()? as usize;
        members.push(MemberRecord {
            member_id,
            client_id,
            session_timeout_ms,
            rebalance_timeout_ms,
            subscription: Vec::new(),
            assignment: r.take(len)?.to_vec(),
        });
    }
    r.done(GroupRecord {
        generation,
        protocol_type,
        protocol,
        leader,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn offset(bytes_key: &[u8], value: Option<&[u8]>) -> Option<(OffsetKey, Option<OffsetValue>)> {
        match decode_record(bytes_key, value)? {
            OffsetsRecord::Offset(key, value) => Some((key, value)),
            OffsetsRecord::Group(..) => None,
        }
    }

    fn group_record(members: Vec<(String, String, u32, u32, Vec<u8>)>) -> GroupRecord {
        GroupRecord {
            generation: 7,
            protocol_type: "consumer".into(),
            protocol: "range".into(),
            leader: members.first().map(|m| m.0.clone()).unwrap_or_default(),
            members: members
                .into_iter()
                .map(|(member_id, client_id, session, rebalance, assignment)| MemberRecord {
                    member_id,
                    client_id,
                    session_timeout_ms: session % (i32::MAX as u32),
                    rebalance_timeout_ms: rebalance % (i32::MAX as u32),
                    subscription: assignment.iter().rev().copied().collect(),
                    assignment,
                })
                .collect(),
        }
    }

    proptest! {
        #[test]
        fn keys_and_values_round_trip(
            group in "[a-z0-9._-]{1,40}",
            topic in "[a-z0-9._-]{1,40}",
            partition in any::<u32>(),
            offset_value in any::<u64>(),
            time in any::<i64>(),
            metadata in ".{0,100}",
        ) {
            let key = OffsetKey { group, topic, partition };
            let value = OffsetValue { offset: offset_value, commit_time_ms: time, metadata };
            let encoded = (encode_key(&key), encode_value(&value));
            prop_assert_eq!(offset(&encoded.0, Some(&encoded.1)), Some((key.clone(), Some(value))));
            prop_assert_eq!(offset(&encoded.0, None), Some((key, None)));
            for cut in 0..encoded.1.len() {
                prop_assert_eq!(offset(&encoded.0, Some(&encoded.1[..cut])), None);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            key in proptest::collection::vec(any::<u8>(), 0..64),
            value in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = decode_record(&key, Some(&value));
            let _ = decode_record(&key, None);
        }

        #[test]
        fn group_records_round_trip_and_never_pass_for_offsets(
            group in "[a-z0-9._-]{1,40}",
            members in proptest::collection::vec(
                ("[a-z0-9-]{1,30}", "[a-z0-9-]{0,20}", any::<u32>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..64)),
                0..8,
            ),
        ) {
            let record = group_record(members.into_iter().map(|m| (m.0, m.1, m.2, m.3, m.4)).collect());
            let (key, value) = (encode_group_key(&group), encode_group(&record));
            prop_assert_eq!(decode_record(&key, Some(&value)), Some(OffsetsRecord::Group(group.clone(), Some(record))));
            prop_assert_eq!(decode_record(&key, None), Some(OffsetsRecord::Group(group, None)));
            for cut in 0..value.len() {
                prop_assert_eq!(decode_record(&key, Some(&value[..cut])), None);
            }
        }
    }

    /// The bytes are Kafka's schemas', as a Kafka broker writes them.
    #[test]
    fn records_are_written_in_kafkas_schemas() {
        let key = encode_key(&OffsetKey {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
        });
        assert_eq!(key, [0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 3]);
        let value = encode_value(&OffsetValue {
            offset: 42,
            commit_time_ms: 1000,
            metadata: "m".into(),
        });
        let mut expected = vec![0, 3];
        expected.extend_from_slice(&42u64.to_be_bytes());
        expected.extend_from_slice(&(-1i32).to_be_bytes());
        expected.extend_from_slice(&[0, 1, b'm']);
        expected.extend_from_slice(&1000i64.to_be_bytes());
        assert_eq!(value, expected);
        assert_eq!(encode_group_key("g"), [0, 2, 0, 1, b'g']);
        // A Kafka broker's version 1 value (with an expiry) reads too.
        let mut v1 = vec![0, 1];
        v1.extend_from_slice(&42u64.to_be_bytes());
        v1.extend_from_slice(&[0, 1, b'm']);
        v1.extend_from_slice(&1000i64.to_be_bytes());
        v1.extend_from_slice(&(-1i64).to_be_bytes());
        assert_eq!(offset(&key, Some(&v1)).unwrap().1.unwrap().offset, 42);
    }

    /// What corelog wrote before it used Kafka's schemas is still read.
    #[test]
    fn records_of_before_kafkas_schemas_are_read() {
        let mut key = vec![0u8];
        for s in ["g", "t"] {
            key.extend_from_slice(&(s.len() as u16).to_be_bytes());
            key.extend_from_slice(s.as_bytes());
        }
        key.extend_from_slice(&3u32.to_be_bytes());
        let mut value = vec![0u8];
        value.extend_from_slice(&42u64.to_be_bytes());
        value.extend_from_slice(&1000i64.to_be_bytes());
        value.extend_from_slice(&[0, 1, b'm']);
        let expected = OffsetKey {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
        };
        let read = offset(&key, Some(&value)).unwrap();
        assert_eq!(read.0, expected);
        assert_eq!(read.1.unwrap().offset, 42);
        let mut group_key = vec![1u8, 0, 1];
        group_key.push(b'g');
        let mut group = vec![0u8];
        group.extend_from_slice(&5u32.to_be_bytes());
        for s in ["consumer", "range", "m1"] {
            group.extend_from_slice(&(s.len() as u16).to_be_bytes());
            group.extend_from_slice(s.as_bytes());
        }
        group.extend_from_slice(&1u32.to_be_bytes());
        for s in ["m1", "c1"] {
            group.extend_from_slice(&(s.len() as u16).to_be_bytes());
            group.extend_from_slice(s.as_bytes());
        }
        group.extend_from_slice(&10_000u32.to_be_bytes());
        group.extend_from_slice(&60_000u32.to_be_bytes());
        group.extend_from_slice(&2u32.to_be_bytes());
        group.extend_from_slice(&[9, 9]);
        let Some(OffsetsRecord::Group(name, Some(record))) = decode_record(&group_key, Some(&group)) else {
            panic!("a group record of before reads");
        };
        assert_eq!(
            (
                name.as_str(),
                record.generation,
                record.members[0].assignment.as_slice()
            ),
            ("g", 5, &[9u8, 9][..])
        );
    }

    #[test]
    fn unknown_versions_and_trailing_bytes_are_refused() {
        let key = encode_key(&OffsetKey {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
        });
        for cut in 0..key.len() {
            assert_eq!(decode_record(&key[..cut], None), None);
        }
        let mut newer = key.clone();
        newer[1] = 9;
        assert_eq!(decode_record(&newer, None), None);
        let mut longer = key;
        longer.push(0);
        assert_eq!(decode_record(&longer, None), None);
    }

    #[test]
    fn a_group_always_lands_on_the_same_partition() {
        let p = partition_for_group("payments", 4);
        assert!(p < 4);
        assert_eq!(partition_for_group("payments", 4), p);
    }
}
