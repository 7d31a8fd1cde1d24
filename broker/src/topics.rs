//! Topics: their partitions, each partition's owning shard, and their
//! configuration, persisted in `<data dir>/topics.json`.
//!
//! The table is shared by all shards as an immutable snapshot behind a lock
//! that is held only to swap or clone the snapshot, never across an await.
//! Changes are rare (create, delete) and written to disk before they are
//! visible.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use storage::{FlushPolicy, LogConfig};

use crate::error::BrokerError;

pub use net::cluster::PARTITIONS_MAX;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicMeta {
    pub name: String,
    /// The owning shard of each partition, by partition number.
    pub shards: Vec<u16>,
    pub configs: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TopicTable {
    pub topics: BTreeMap<String, TopicMeta>,
}

impl TopicTable {
    pub fn owner(&self, topic: &str, partition: u32) -> Option<u16> {
        self.topics.get(topic)?.shards.get(partition as usize).copied()
    }

    /// Partitions each shard owns, over all topics.
    fn load(&self, shards: u16) -> Vec<usize> {
        let mut load = vec![0; shards as usize];
        for topic in self.topics.values() {
            // Shards past the count are being moved away and weigh nothing.
            for &shard in topic.shards.iter().filter(|s| **s < shards) {
                load[shard as usize] += 1;
            }
        }
        load
    }
}

pub struct Metadata {
    path: PathBuf,
    shards: u16,
    table: RwLock<Arc<TopicTable>>,
}

pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

impl Metadata {
    /// Loads the table; partitions owned by shards that no longer exist
    /// (the broker restarted with fewer) move to the least loaded shards.
    pub fn load(data_dir: &Path, shards: u16) -> Result<Metadata, BrokerError> {
        std::fs::create_dir_all(data_dir).map_err(|source| BrokerError::Io {
            op: "create data directory",
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join("topics.json");
        let mut table: TopicTable = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| BrokerError::Config(format!("{} is not a topic table: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TopicTable::default(),
            Err(source) => {
                return Err(BrokerError::Io {
                    op: "read topic table",
                    path,
                    source,
                })
            }
        };
        let mut moved = false;
        let names: Vec<String> = table.topics.keys().cloned().collect();
        for name in names {
            for partition in 0..table.topics[&name].shards.len() {
                if table.topics[&name].shards[partition] >= shards {
                    let load = table.load(shards);
                    let target = least_loaded(&load);
                    table.topics.get_mut(&name).expect("listed").shards[partition] = target;
                    moved = true;
                }
            }
        }
        let metadata = Metadata {
            path,
            shards,
            table: RwLock::new(Arc::new(table)),
        };
        if moved {
            metadata.persist(&metadata.snapshot())?;
        }
        Ok(metadata)
    }

    pub fn snapshot(&self) -> Arc<TopicTable> {
        self.table.read().expect("topic table lock").clone()
    }

    /// Checks that `create` would accept the topic, creating nothing
    /// (CreateTopics with validate_only).
    pub fn validate_create(
        &self,
        name: &str,
        partitions: u32,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        validate_name(name)?;
        if partitions == 0 || partitions > PARTITIONS_MAX {
            return Err(BrokerError::InvalidPartitions(partitions));
        }
        log_config(configs)?;
        if self.snapshot().topics.contains_key(name) {
            return Err(BrokerError::TopicAlreadyExists(name.to_string()));
        }
        Ok(())
    }

    /// Adds a topic, its partitions spread over the least loaded shards.
    pub fn create(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta, BrokerError> {
        self.validate_create(name, partitions, &configs)?;
        let mut guard = self.table.write().expect("topic table lock");
        if guard.topics.contains_key(name) {
            return Err(BrokerError::TopicAlreadyExists(name.to_string()));
        }
        let mut load = guard.load(self.shards);
        let shards = (0..partitions)
            .map(|_| {
                let shard = least_loaded(&load);
                load[shard as usize] += 1;
                shard
            })
            .collect();
        let meta = TopicMeta {
            name: name.to_string(),
            shards,
            configs,
        };
        let mut table = TopicTable::clone(&guard);
        table.topics.insert(name.to_string(), meta.clone());
        self.persist(&table)?;
        *guard = Arc::new(table);
        Ok(meta)
    }

    pub fn delete(&self, name: &str) -> Result<TopicMeta, BrokerError> {
        let mut guard = self.table.write().expect("topic table lock");
        let mut table = TopicTable::clone(&guard);
        let meta = table
            .topics
            .remove(name)
            .ok_or_else(|| BrokerError::UnknownTopicOrPartition {
                topic: name.to_string(),
                partition: 0,
            })?;
        self.persist(&table)?;
        *guard = Arc::new(table);
        Ok(meta)
    }

    fn persist(&self, table: &TopicTable) -> Result<(), BrokerError> {
        let io = |op, source| BrokerError::Io {
            op,
            path: self.path.clone(),
            source,
        };
        let temp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(table).expect("a topic table serializes");
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&temp).map_err(|e| io("create topic table", e))?;
            file.write_all(&bytes).map_err(|e| io("write topic table", e))?;
            file.sync_all().map_err(|e| io("sync topic table", e))?;
        }
        std::fs::rename(&temp, &self.path).map_err(|e| io("replace topic table", e))?;
        let dir = self.path.parent().expect("topics.json is in the data directory");
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync data directory", e))
    }
}

fn least_loaded(load: &[usize]) -> u16 {
    let (shard, _) = load
        .iter()
        .enumerate()
        .min_by_key(|(shard, load)| (**load, *shard))
        .expect("at least one shard");
    shard as u16
}

fn validate_name(name: &str) -> Result<(), BrokerError> {
    match net::cluster::topic_name_error(name) {
        Some(reason) => Err(BrokerError::InvalidTopic {
            name: name.to_string(),
            reason: reason.to_string(),
        }),
        None => Ok(()),
    }
}

/// The partition log settings of a topic: the storage defaults, then the
/// topic's configs (Kafka's keys where Kafka has one).
/// Every topic config key `log_config` knows, with the value a topic has
/// when it does not set it (Kafka's spelling, for DescribeConfigs).
pub fn config_defaults() -> Vec<(&'static str, String)> {
    let d = LogConfig::default();
    let optional = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
    vec![
        ("retention.ms", optional(d.retention_ms)),
        ("retention.bytes", optional(d.retention_bytes)),
        ("segment.bytes", d.segment_bytes.to_string()),
        ("segment.ms", optional(d.segment_ms)),
        ("segment.preallocate.bytes", d.segment_preallocate_bytes.to_string()),
        ("segment.zero.ahead.bytes", d.segment_zero_ahead_bytes.to_string()),
        ("read.ahead.bytes", d.read_ahead_bytes.to_string()),
        ("max.message.bytes", d.batch_bytes_max.to_string()),
        ("flush.every.append", "false".to_string()),
        (
            "message.timestamp.type",
            match d.timestamp_type {
                storage::TimestampType::CreateTime => "CreateTime",
                storage::TimestampType::LogAppendTime => "LogAppendTime",
            }
            .to_string(),
        ),
    ]
}

pub fn log_config(configs: &BTreeMap<String, String>) -> Result<LogConfig, BrokerError> {
    let mut config = LogConfig::default();
    for (key, value) in configs {
        let invalid = |reason: &str| BrokerError::InvalidConfig {
            key: key.clone(),
            value: value.clone(),
            reason: reason.to_string(),
        };
        let number = || value.parse::<u64>().map_err(|_| invalid("not a non-negative integer"));
        match key.as_str() {
            "retention.ms" => config.retention_ms = if value == "-1" { None } else { Some(number()?) },
            "retention.bytes" => config.retention_bytes = if value == "-1" { None } else { Some(number()?) },
            "segment.bytes" => config.segment_bytes = number()?,
            "segment.ms" => config.segment_ms = Some(number()?),
            "segment.preallocate.bytes" => config.segment_preallocate_bytes = number()?,
            "segment.zero.ahead.bytes" => config.segment_zero_ahead_bytes = number()?,
            "read.ahead.bytes" => config.read_ahead_bytes = number()? as usize,
            "max.message.bytes" => {
                let max = number()? as usize;
                config.batch_bytes_max = max;
                config.record_bytes_max = max;
                config.write_buffer_bytes = config.write_buffer_bytes.max((max + 4096).next_multiple_of(4096));
            }
            "flush.ms" => config.flush = FlushPolicy::IntervalMs(number()?),
            "flush.bytes" => config.flush = FlushPolicy::Bytes(number()?),
            "flush.every.append" => match value.as_str() {
                "true" => config.flush = FlushPolicy::EveryAppend,
                "false" => {}
                _ => return Err(invalid("true or false")),
            },
            "message.timestamp.type" => {
                config.timestamp_type = match value.as_str() {
                    "CreateTime" => storage::TimestampType::CreateTime,
                    "LogAppendTime" => storage::TimestampType::LogAppendTime,
                    _ => return Err(invalid("CreateTime or LogAppendTime")),
                }
            }
            _ => return Err(invalid("unknown topic config")),
        }
    }
    config.validate().map_err(|e| BrokerError::Config(e.to_string()))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_evenly_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let metadata = Metadata::load(dir.path(), 3).unwrap();
        let a = metadata.create("a", 4, BTreeMap::new()).unwrap();
        assert_eq!(a.shards, vec![0, 1, 2, 0]);
        let b = metadata.create("b", 2, BTreeMap::new()).unwrap();
        assert_eq!(b.shards, vec![1, 2]);
        assert!(matches!(
            metadata.create("a", 1, BTreeMap::new()),
            Err(BrokerError::TopicAlreadyExists(_))
        ));
        let reloaded = Metadata::load(dir.path(), 3).unwrap();
        assert_eq!(reloaded.snapshot().topics["a"], a);
        // Restarted on two shards: the partitions of shard 2 move.
        let fewer = Metadata::load(dir.path(), 2).unwrap();
        let table = fewer.snapshot();
        assert!(table.topics.values().all(|t| t.shards.iter().all(|s| *s < 2)));
        assert_eq!(table.load(2), vec![3, 3]);
        fewer.delete("a").unwrap();
        assert!(!Metadata::load(dir.path(), 2)
            .unwrap()
            .snapshot()
            .topics
            .contains_key("a"));
    }

    #[test]
    fn bad_names_counts_and_configs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let metadata = Metadata::load(dir.path(), 1).unwrap();
        for name in ["", ".", "..", "a/b", "with space", &"x".repeat(250)] {
            assert!(matches!(
                metadata.create(name, 1, BTreeMap::new()),
                Err(BrokerError::InvalidTopic { .. })
            ));
        }
        assert!(matches!(
            metadata.create("t", 0, BTreeMap::new()),
            Err(BrokerError::InvalidPartitions(0))
        ));
        let bad = BTreeMap::from([("retention.ms".to_string(), "soon".to_string())]);
        assert!(matches!(
            metadata.create("t", 1, bad),
            Err(BrokerError::InvalidConfig { .. })
        ));
        let unknown = BTreeMap::from([("colour".to_string(), "blue".to_string())]);
        assert!(matches!(
            metadata.create("t", 1, unknown),
            Err(BrokerError::InvalidConfig { .. })
        ));
        let good = BTreeMap::from([
            ("retention.ms".to_string(), "1000".to_string()),
            ("flush.every.append".to_string(), "true".to_string()),
        ]);
        let config = log_config(&good).unwrap();
        assert_eq!(config.retention_ms, Some(1000));
        assert_eq!(config.flush, FlushPolicy::EveryAppend);
    }
}
