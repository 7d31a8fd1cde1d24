//! What nodes of a cluster say to each other about its metadata: the
//! commands of the controller's Raft log (nodes joining, topics created and
//! deleted with their replica assignment) and their encoding in a log
//! entry. Entries arrive from peers and from disk, so decoding checks every
//! byte and bounds every count before anything is built from them.

use rkyv::{rancor, Archive, Deserialize, Serialize};

use crate::error::NetError;

/// The first byte of an encoded command: the format it was written in, so
/// that a node reading a newer log refuses it by name.
pub const COMMAND_FORMAT: u8 = 1;

/// The most nodes a cluster may have, replicas a partition may have, and
/// partitions a topic may have; a command naming more is malformed.
pub const NODES_MAX: usize = 1024;
pub const REPLICATION_FACTOR_MAX: usize = 16;
pub const PARTITIONS_MAX: u32 = 10_000;
/// Longest topic name (Kafka's limit), and most configs a topic may carry.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
pub const TOPIC_CONFIGS_MAX: usize = 256;
pub const CONFIG_BYTES_MAX: usize = 4096;

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
                kafka_addr,
                native_addr,
                ..
            } => {
                if *node == 0 {
                    return Err("node id 0 (ids start at 1)".into());
                }
                if kafka_addr.len() > CONFIG_BYTES_MAX || native_addr.len() > CONFIG_BYTES_MAX {
                    return Err(format!("node {node}: address over {CONFIG_BYTES_MAX} bytes"));
                }
            }
            ControllerCommand::CreateTopic {
                name,
                assignment,
                configs,
            } => {
                check_topic_name(name)?;
                if assignment.is_empty() || assignment.len() > PARTITIONS_MAX as usize {
                    return Err(format!(
                        "topic {name}: {} partitions, not 1..={PARTITIONS_MAX}",
                        assignment.len()
                    ));
                }
                for (partition, replicas) in assignment.iter().enumerate() {
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
                if configs.len() > TOPIC_CONFIGS_MAX {
                    return Err(format!(
                        "topic {name}: {} configs, over {TOPIC_CONFIGS_MAX}",
                        configs.len()
                    ));
                }
                if let Some((key, _)) = configs
                    .iter()
                    .find(|(k, v)| k.is_empty() || k.len() + v.len() > CONFIG_BYTES_MAX)
                {
                    return Err(format!(
                        "topic {name}: config {key:?} empty or over {CONFIG_BYTES_MAX} bytes"
                    ));
                }
            }
            ControllerCommand::DeleteTopic { name } => check_topic_name(name)?,
        }
        Ok(())
    }
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
            },
        ] {
            assert_eq!(ControllerCommand::decode(&command.encode()).unwrap(), command);
        }
    }

    #[test]
    fn what_encode_cannot_write_is_refused_by_name() {
        let mut bytes = create(2, 2).encode();
        bytes[0] = 2;
        let e = ControllerCommand::decode(&bytes).unwrap_err().to_string();
        assert!(e.contains("format 2"), "{e}");
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
