//! What nodes of a cluster say to each other about its metadata: the
//! commands of the controller's Raft log (nodes joining, topics created and
//! deleted with their replica assignment) and their encoding in a log
//! entry. Entries arrive from peers and from disk, so decoding checks every
//! byte and bounds every count before anything is built from them.

use rkyv::{rancor, Archive, Deserialize, Serialize};

use crate::error::NetError;

/// The first byte of an encoded command: the format it was written in, so
/// that a node reading a newer log refuses it by name.
/// Format 2: registrations carry each shard's addresses.
pub const COMMAND_FORMAT: u8 = 2;

/// The most nodes a cluster may have, replicas a partition may have, and
/// partitions a topic may have; a command naming more is malformed.
pub const NODES_MAX: usize = 1024;
pub const REPLICATION_FACTOR_MAX: usize = 16;
pub const PARTITIONS_MAX: u32 = 10_000;
/// Longest topic name (Kafka's limit), and most configs a topic may carry.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
pub const TOPIC_CONFIGS_MAX: usize = 256;
pub const CONFIG_BYTES_MAX: usize = 4096;

/// Most shards a node may register: each is a broker id of its own.
pub const SHARDS_MAX: u32 = 999;
/// A cluster's Kafka broker ids name (node, shard) pairs: node × 1000 +
/// shard with shard ports (node 2's shard 1 is broker 2001), the node alone
/// without. Node ids stop where those ids would pass i32.
pub const BROKER_IDS_PER_NODE: u64 = 1000;
pub const NODE_ID_MAX: u64 = (i32::MAX as u64) / BROKER_IDS_PER_NODE - 1;

/// The broker id clients know `node`'s shard `shard` by; `None` for the
/// shard when the node has no shard ports (one broker per node).
pub fn broker_id(node: u64, shard: Option<u32>) -> i32 {
    debug_assert!(node <= NODE_ID_MAX && shard.is_none_or(|s| s <= SHARDS_MAX));
    match shard {
        Some(shard) => (node * BROKER_IDS_PER_NODE + u64::from(shard)) as i32,
        None => node as i32,
    }
}

/// A node's Raft member id in its incarnation: the node id in the low 32
/// bits, the incarnation above. A node whose data directory was lost
/// rejoins under its old node id but as a new member (KIP-853's directory
/// id): the votes and acknowledgements its lost directory gave stay with
/// the old member, which each group swaps out by a configuration change.
/// Incarnation 0 is the node id itself.
pub fn member_id(node: u64, incarnation: u32) -> u64 {
    debug_assert!(node <= NODE_ID_MAX);
    node | (u64::from(incarnation) << 32)
}

/// The node a Raft member id is an incarnation of.
pub fn node_of(member: u64) -> u64 {
    member & 0xffff_ffff
}

/// The incarnation of a Raft member id.
pub fn incarnation_of(member: u64) -> u32 {
    (member >> 32) as u32
}

/// One replica of a partition: the node holding it and the shard on that
/// node that owns it.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Replica {
    pub node: u64,
    pub shard: u32,
}

/// A command of the controller's log. The leader decides everything a
/// command needs (a topic's assignment included) before proposing it, so
/// that applying it is the same on every node whatever its code computes.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ControllerCommand {
    /// A node joins, or says again how it is reached.
    RegisterNode {
        node: u64,
        shards: u32,
        /// Where Kafka and native clients reach it.
        kafka_addr: String,
        native_addr: String,
        /// Each shard's own Kafka and native addresses, by shard (shard
        /// ports), or none.
        kafka_shard_addrs: Vec<String>,
        native_shard_addrs: Vec<String>,
    },
    /// A topic, all its partitions at once: `assignment[p]` lists partition
    /// p's replicas, the preferred leader first.
    CreateTopic {
        name: String,
        assignment: Vec<Vec<Replica>>,
        /// Topic configs in Kafka's names (`retention.ms`, …).
        configs: Vec<(String, String)>,
    },
    DeleteTopic {
        name: String,
    },
    /// A registered node whose data directory was lost comes back as
    /// incarnation `incarnation`, which must follow its current one, from
    /// the new directory named `directory` (a random id the node drew: it
    /// knows its own proposal by it). Every Raft group then swaps the old
    /// member for the new one.
    Reincarnate {
        node: u64,
        incarnation: u32,
        directory: u64,
    },
    /// A topic's configs change (AlterConfigs, IncrementalAlterConfigs):
    /// with `replace`, every key not set here goes back to its default;
    /// else `set` overrides and `delete` removes keys.
    AlterTopicConfigs {
        name: String,
        replace: bool,
        set: Vec<(String, String)>,
        delete: Vec<String>,
    },
    /// A topic grows (CreatePartitions): `assignment[i]` lists the replicas
    /// of its partition `first + i`, where `first` is its partition count
    /// when the leader proposed this (a topic that has grown since refuses
    /// it, the same on every node).
    CreatePartitions {
        name: String,
        first: u32,
        assignment: Vec<Vec<Replica>>,
    },
}

impl ControllerCommand {
    /// The bytes of a controller log entry.
    pub fn encode(&self) -> Vec<u8> {
        let archive = rkyv::to_bytes::<rancor::Error>(self).expect("serializing into memory cannot fail");
        let mut bytes = Vec::with_capacity(1 + archive.len());
        bytes.push(COMMAND_FORMAT);
        bytes.extend_from_slice(&archive);
        bytes
    }

    /// Reads a controller log entry, refusing what `encode` could not have
    /// written or what breaks the limits above.
    pub fn decode(bytes: &[u8]) -> Result<ControllerCommand, NetError> {
        let malformed = |reason: String| NetError::Malformed {
            what: "controller command",
            reason,
        };
        let (&format, archive) = bytes.split_first().ok_or_else(|| malformed("empty entry".into()))?;
        if format != COMMAND_FORMAT {
            return Err(malformed(format!("format {format}, this node reads {COMMAND_FORMAT}")));
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(archive);
        let command =
            rkyv::from_bytes::<ControllerCommand, rancor::Error>(&aligned).map_err(|e| malformed(e.to_string()))?;
        command.check().map_err(malformed)?;
        Ok(command)
    }

    /// The limits a well-formed command keeps.
    fn check(&self) -> Result<(), String> {
        match self {
            ControllerCommand::RegisterNode {
                node,
                shards,
                kafka_addr,
                native_addr,
                kafka_shard_addrs,
                native_shard_addrs,
            } => {
                if *node == 0 {
                    return Err("node id 0 (ids start at 1)".into());
                }
                if *node > NODE_ID_MAX {
                    return Err(format!("node id {node} is over {NODE_ID_MAX}"));
                }
                if *shards > SHARDS_MAX {
                    return Err(format!("node {node}: {shards} shards, over {SHARDS_MAX}"));
                }
                for addrs in [kafka_shard_addrs, native_shard_addrs] {
                    if !addrs.is_empty() && addrs.len() != *shards as usize {
                        return Err(format!(
                            "node {node}: {} shard addresses for {shards} shards",
                            addrs.len()
                        ));
                    }
                }
                let addrs = [kafka_addr, native_addr]
                    .into_iter()
                    .chain(kafka_shard_addrs)
                    .chain(native_shard_addrs);
                if addrs.into_iter().any(|a| a.len() > CONFIG_BYTES_MAX) {
                    return Err(format!("node {node}: address over {CONFIG_BYTES_MAX} bytes"));
                }
            }
            ControllerCommand::CreateTopic {
                name,
                assignment,
                configs,
            } => {
                check_topic_name(name)?;
                if assignment.is_empty() {
                    return Err(format!("topic {name}: no partitions"));
                }
                check_assignment(name, 0, assignment)?;
                check_configs(name, configs)?;
            }
            ControllerCommand::AlterTopicConfigs { name, set, delete, .. } => {
                check_topic_name(name)?;
                if delete.len() > TOPIC_CONFIGS_MAX {
                    return Err(format!(
                        "topic {name}: {} configs deleted, over {TOPIC_CONFIGS_MAX}",
                        delete.len()
                    ));
                }
                check_configs(name, set)?;
                if let Some(key) = delete.iter().find(|k| k.is_empty() || k.len() > CONFIG_BYTES_MAX) {
                    return Err(format!(
                        "topic {name}: deleted config {key:?} empty or over {CONFIG_BYTES_MAX} bytes"
                    ));
                }
            }
            ControllerCommand::CreatePartitions {
                name,
                first,
                assignment,
            } => {
                check_topic_name(name)?;
                if *first == 0 || assignment.is_empty() {
                    return Err(format!(
                        "topic {name}: {} partitions added after {first}",
                        assignment.len()
                    ));
                }
                check_assignment(name, *first, assignment)?;
            }
            ControllerCommand::DeleteTopic { name } => check_topic_name(name)?,
            ControllerCommand::Reincarnate { node, incarnation, .. } => {
                if *node == 0 || *node > NODE_ID_MAX {
                    return Err(format!("node id {node} is not 1..={NODE_ID_MAX}"));
                }
                if *incarnation == 0 {
                    return Err(format!("node {node}: incarnation 0 is a node's first"));
                }
            }
        }
        Ok(())
    }
}

/// A topic's partitions `first..` as a command assigns them: within
/// `PARTITIONS_MAX` in all, each on 1..=`REPLICATION_FACTOR_MAX` distinct
/// nodes.
fn check_assignment(name: &str, first: u32, assignment: &[Vec<Replica>]) -> Result<(), String> {
    if assignment.len() as u64 + u64::from(first) > u64::from(PARTITIONS_MAX) {
        return Err(format!(
            "topic {name}: {} partitions, over {PARTITIONS_MAX}",
            assignment.len() as u64 + u64::from(first)
        ));
    }
    for (i, replicas) in assignment.iter().enumerate() {
        let partition = u64::from(first) + i as u64;
        if replicas.is_empty() || replicas.len() > REPLICATION_FACTOR_MAX {
            return Err(format!(
                "topic {name} partition {partition}: {} replicas, not 1..={REPLICATION_FACTOR_MAX}",
                replicas.len()
            ));
        }
        for (i, replica) in replicas.iter().enumerate() {
            if replica.node == 0 {
                return Err(format!("topic {name} partition {partition}: node id 0"));
            }
            if replicas[..i].iter().any(|r| r.node == replica.node) {
                return Err(format!(
                    "topic {name} partition {partition}: node {} holds two replicas",
                    replica.node
                ));
            }
        }
    }
    Ok(())
}

/// A command's topic configs: at most `TOPIC_CONFIGS_MAX`, each key named
/// and within `CONFIG_BYTES_MAX` with its value.
fn check_configs(name: &str, configs: &[(String, String)]) -> Result<(), String> {
    if configs.len() > TOPIC_CONFIGS_MAX {
        return Err(format!(
            "topic {name}: {} configs, over {TOPIC_CONFIGS_MAX}",
            configs.len()
        ));
    }
    for (key, value) in configs {
        if key.is_empty() || key.len() + value.len() > CONFIG_BYTES_MAX {
            return Err(format!(
                "topic {name}: config {key:?} empty or over {CONFIG_BYTES_MAX} bytes"
            ));
        }
    }
    Ok(())
}

fn check_topic_name(name: &str) -> Result<(), String> {
    match topic_name_error(name) {
        Some(reason) => Err(format!("topic name {name:?}: {reason}")),
        None => Ok(()),
    }
}

/// Why `name` is not a topic name by Kafka's rule (1 to 249 of
/// `[a-zA-Z0-9._-]`, not `.` or `..`), or None if it is one.
pub fn topic_name_error(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return Some("a name has 1 to 249 characters");
    }
    if name == "." || name == ".." {
        return Some("'.' and '..' are not topic names");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Some("a name holds only ASCII letters, digits, '.', '_' and '-'");
    }
    None
}

/// Bytes one frame between nodes may hold: a controller append of a few
/// MiB of entries fits, and a reader allocates no more than this for one.
pub const PEER_FRAME_BYTES_MAX: usize = 32 << 20;
/// Raft messages one frame may carry.
pub const PEER_FRAME_MESSAGES_MAX: usize = 4096;
/// The header bytes a reader reads first: length and crc.
pub const PEER_FRAME_HEADER_BYTES: usize = 8;

/// The Raft group a message belongs to: the controller's, for now the
/// only one.
pub const CONTROLLER_GROUP: u64 = 0;

/// What one node sends another on the internal (`--rpc-listen`) port.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum PeerMessage {
    /// Raft messages, each with its group, in raft-rs's protobuf encoding:
    /// all of one loop turn's messages to this node in one frame.
    Raft {
        messages: Vec<(u64, Vec<u8>)>,
    },
    /// A command for the controller's leader to propose on the sender's
    /// behalf (a node registering itself); no answer: the sender watches
    /// the metadata for its effect.
    Propose {
        command: Vec<u8>,
    },
    /// Asks for the receiver's view of the controller (`corelog cluster
    /// status`); answered with `Status`.
    StatusRequest,
    Status(ControllerStatus),
    /// The partition groups the sender leads, with each one's term and
    /// in-sync replicas: how a node that hosts no replica of a partition
    /// learns who leads it (Redpanda's metadata dissemination). No answer.
    Leaders {
        leaders: Vec<LeaderNote>,
    },
}

/// Most groups one `Leaders` message names; a node leading more sends
/// several.
pub const LEADER_NOTES_MAX: usize = 4096;

/// One group's leadership, as its leader announces it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LeaderNote {
    pub group: u64,
    pub term: u64,
    /// The replicas caught up with the leader (the ISR), itself included.
    pub in_sync: Vec<u64>,
}

/// One node's view of the controller group.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ControllerStatus {
    pub node: u64,
    /// 0 when it knows no leader.
    pub leader: u64,
    pub term: u64,
    pub applied_index: u64,
    /// The nodes registered.
    pub nodes: Vec<NodeStatus>,
    pub topics: Vec<String>,
    /// Frames and bytes this node has written to its peers since it
    /// started, over every link (the controller's and the partitions'
    /// groups): what the benchmark of idle partitions counts.
    pub frames_sent: u64,
    pub bytes_sent: u64,
}

/// A registered node, as the controller's metadata holds it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    pub kafka_addr: String,
    /// Which life of the node (`ControllerCommand::Reincarnate`), and the
    /// directory id it drew for it (0 for a first).
    pub incarnation: u32,
    pub directory: u64,
}

/// A frame between nodes: who sent it and what it says.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PeerFrame {
    pub from: u64,
    pub message: PeerMessage,
}

impl PeerFrame {
    /// `length u32 | crc32c u32 | archive`, little endian.
    pub fn encode(&self) -> Result<Vec<u8>, NetError> {
        let archive = rkyv::to_bytes::<rancor::Error>(self).expect("serializing into memory cannot fail");
        if archive.len() > PEER_FRAME_BYTES_MAX {
            return Err(NetError::TooLargeToEncode {
                what: "peer frame",
                size: archive.len(),
            });
        }
        let mut frame = Vec::with_capacity(PEER_FRAME_HEADER_BYTES + archive.len());
        frame.extend_from_slice(&(archive.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32c::crc32c(&archive).to_le_bytes());
        frame.extend_from_slice(&archive);
        Ok(frame)
    }

    /// The length and crc of the frame whose header is `header`, once the
    /// length is checked against the limit: what a reader reads next.
    pub fn header(header: [u8; PEER_FRAME_HEADER_BYTES]) -> Result<(usize, u32), NetError> {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        if len > PEER_FRAME_BYTES_MAX {
            return Err(NetError::FrameTooLarge {
                size: len,
                max: PEER_FRAME_BYTES_MAX,
            });
        }
        Ok((len, u32::from_le_bytes(header[4..].try_into().expect("4 bytes"))))
    }

    /// The frame whose header said `crc`, from its archive bytes.
    pub fn decode(crc: u32, archive: &[u8]) -> Result<PeerFrame, NetError> {
        let malformed = |reason: String| NetError::Malformed {
            what: "peer frame",
            reason,
        };
        if crc32c::crc32c(archive) != crc {
            return Err(malformed("crc does not match".into()));
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(archive);
        let frame = rkyv::from_bytes::<PeerFrame, rancor::Error>(&aligned).map_err(|e| malformed(e.to_string()))?;
        if frame.from == 0 {
            return Err(malformed("from node 0 (ids start at 1)".into()));
        }
        match &frame.message {
            PeerMessage::Raft { messages } if messages.len() > PEER_FRAME_MESSAGES_MAX => {
                return Err(malformed(format!(
                    "{} raft messages, over {PEER_FRAME_MESSAGES_MAX}",
                    messages.len()
                )));
            }
            PeerMessage::Leaders { leaders } => {
                if leaders.len() > LEADER_NOTES_MAX {
                    return Err(malformed(format!(
                        "{} leader notes, over {LEADER_NOTES_MAX}",
                        leaders.len()
                    )));
                }
                if let Some(note) = leaders.iter().find(|n| n.in_sync.len() > REPLICATION_FACTOR_MAX) {
                    return Err(malformed(format!(
                        "group {}: {} in-sync replicas, over {REPLICATION_FACTOR_MAX}",
                        note.group,
                        note.in_sync.len()
                    )));
                }
            }
            _ => {}
        }
        Ok(frame)
    }

    /// Header and archive in one slice (tests, fuzzing).
    pub fn decode_frame(bytes: &[u8]) -> Result<PeerFrame, NetError> {
        let header: [u8; PEER_FRAME_HEADER_BYTES] = bytes
            .get(..PEER_FRAME_HEADER_BYTES)
            .and_then(|h| h.try_into().ok())
            .ok_or(NetError::FrameTooShort {
                size: bytes.len(),
                header: PEER_FRAME_HEADER_BYTES,
            })?;
        let (len, crc) = PeerFrame::header(header)?;
        let archive = &bytes[PEER_FRAME_HEADER_BYTES..];
        if archive.len() != len {
            return Err(NetError::ArchiveOverrun {
                archive: len,
                available: archive.len(),
            });
        }
        PeerFrame::decode(crc, archive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn create(partitions: usize, replicas: usize) -> ControllerCommand {
        ControllerCommand::CreateTopic {
            name: "orders".into(),
            assignment: (0..partitions)
                .map(|p| {
                    (0..replicas)
                        .map(|r| Replica {
                            node: 1 + ((p + r) % 5) as u64,
                            shard: (p % 3) as u32,
                        })
                        .collect()
                })
                .collect(),
            configs: vec![("retention.ms".into(), "60000".into())],
        }
    }

    #[test]
    fn commands_round_trip() {
        for command in [
            create(6, 3),
            ControllerCommand::DeleteTopic { name: "orders".into() },
            ControllerCommand::RegisterNode {
                node: 3,
                shards: 16,
                kafka_addr: "10.0.0.3:9092".into(),
                native_addr: "10.0.0.3:9400".into(),
                kafka_shard_addrs: vec!["10.0.0.3:9093".into(); 16],
                native_shard_addrs: Vec::new(),
            },
            ControllerCommand::AlterTopicConfigs {
                name: "orders".into(),
                replace: false,
                set: vec![("retention.ms".into(), "1000".into())],
                delete: vec!["segment.bytes".into()],
            },
            ControllerCommand::CreatePartitions {
                name: "orders".into(),
                first: 6,
                assignment: vec![vec![Replica { node: 2, shard: 1 }]; 3],
            },
        ] {
            assert_eq!(ControllerCommand::decode(&command.encode()).unwrap(), command);
        }
    }

    #[test]
    fn what_encode_cannot_write_is_refused_by_name() {
        let mut bytes = create(2, 2).encode();
        bytes[0] = COMMAND_FORMAT + 1;
        let e = ControllerCommand::decode(&bytes).unwrap_err().to_string();
        assert!(e.contains(&format!("format {}", COMMAND_FORMAT + 1)), "{e}");
        assert!(ControllerCommand::decode(&[]).is_err());
        let twice = ControllerCommand::CreateTopic {
            name: "t".into(),
            assignment: vec![vec![Replica { node: 1, shard: 0 }, Replica { node: 1, shard: 1 }]],
            configs: vec![],
        };
        let e = ControllerCommand::decode(&twice.encode()).unwrap_err().to_string();
        assert!(e.contains("node 1 holds two replicas"), "{e}");
        let unnamed = ControllerCommand::DeleteTopic { name: "..".into() };
        assert!(ControllerCommand::decode(&unnamed.encode()).is_err());
        let none = ControllerCommand::CreateTopic {
            name: "t".into(),
            assignment: vec![],
            configs: vec![],
        };
        assert!(ControllerCommand::decode(&none.encode()).is_err());
        let past_max = ControllerCommand::CreatePartitions {
            name: "t".into(),
            first: PARTITIONS_MAX,
            assignment: vec![vec![Replica { node: 1, shard: 0 }]],
        };
        let e = ControllerCommand::decode(&past_max.encode()).unwrap_err().to_string();
        assert!(e.contains(&format!("over {PARTITIONS_MAX}")), "{e}");
        let unnamed_key = ControllerCommand::AlterTopicConfigs {
            name: "t".into(),
            replace: true,
            set: vec![],
            delete: vec![String::new()],
        };
        assert!(ControllerCommand::decode(&unnamed_key.encode()).is_err());
    }

    #[test]
    fn peer_frames_round_trip_and_damage_is_refused() {
        let frame = PeerFrame {
            from: 2,
            message: PeerMessage::Raft {
                messages: vec![(CONTROLLER_GROUP, vec![1, 2, 3]), (CONTROLLER_GROUP, vec![])],
            },
        };
        let bytes = frame.encode().unwrap();
        assert_eq!(PeerFrame::decode_frame(&bytes).unwrap(), frame);
        let mut damaged = bytes.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(PeerFrame::decode_frame(&damaged).is_err());
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            PeerFrame::decode_frame(&huge),
            Err(NetError::FrameTooLarge { .. })
        ));
        let anonymous = PeerFrame {
            from: 0,
            message: PeerMessage::StatusRequest,
        };
        assert!(PeerFrame::decode_frame(&anonymous.encode().unwrap()).is_err());
    }

    #[test]
    fn leader_notes_round_trip_and_their_counts_are_bounded() {
        let note = |group: u64, in_sync: usize| LeaderNote {
            group,
            term: 7,
            in_sync: (1..=in_sync as u64).collect(),
        };
        let frame = |leaders: Vec<LeaderNote>| PeerFrame {
            from: 3,
            message: PeerMessage::Leaders { leaders },
        };
        let sent = frame(vec![note(1 << 32, 3), note(2 << 32 | 5, 1)]);
        assert_eq!(PeerFrame::decode_frame(&sent.encode().unwrap()).unwrap(), sent);
        let many = frame((0..=LEADER_NOTES_MAX as u64).map(|g| note(g, 1)).collect());
        assert!(PeerFrame::decode_frame(&many.encode().unwrap()).is_err());
        let wide = frame(vec![note(1, REPLICATION_FACTOR_MAX + 1)]);
        assert!(PeerFrame::decode_frame(&wide.encode().unwrap()).is_err());
    }

    proptest! {
        /// Damaged entries never panic the decoder, and what it accepts
        /// encodes back to a command that decodes the same.
        #[test]
        fn damaged_entries_are_refused_or_read_consistently(
            cut in 0usize..400, flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..4)
        ) {
            let mut bytes = create(4, 3).encode();
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] ^= value;
            }
            bytes.truncate(cut.min(bytes.len()));
            if let Ok(command) = ControllerCommand::decode(&bytes) {
                prop_assert_eq!(ControllerCommand::decode(&command.encode()).unwrap(), command);
            }
        }
    }
}
