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

/// The shard of a partition this node does not host (in a cluster).
pub const NOT_HOSTED: u16 = u16::MAX;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicMeta {
    pub name: String,
    /// The owning shard of each partition on this node, by partition
    /// number; `NOT_HOSTED` for one that lives on other nodes only.
    pub shards: Vec<u16>,
    pub configs: BTreeMap<String, String>,
    /// In a cluster, each partition's replicas as (node, shard), the
    /// preferred leader first, as the controller placed them; empty on a
    /// node of its own, where every partition is this node's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<Vec<(u64, u32)>>,
    /// In a cluster, the Raft members each partition's group was formed
    /// with (`TopicAssignment::members`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Vec<u64>>,
    /// The controller's id for this topic's creation (0 on one node): a
    /// partition directory left by a deleted topic of the same name is not
    /// this topic's.
    #[serde(default)]
    pub id: u64,
}

/// The cluster as this node sees it, beside the topics of one snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// This node.
    pub node: u64,
    /// The controller's leader, when known.
    pub controller: Option<u64>,
    pub nodes: BTreeMap<u64, crate::controller::NodeInfo>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TopicTable {
    pub topics: BTreeMap<String, TopicMeta>,
    /// Set when the node is part of a cluster; the topics then come from
    /// the controller's log, not from `topics.json`.
    #[serde(skip)]
    pub cluster: Option<Arc<ClusterView>>,
    /// In a cluster, each topic's name by its controller id (a Raft
    /// group's topic).
    #[serde(skip)]
    pub ids: BTreeMap<u64, String>,
}

impl TopicTable {
    /// The shard of this node that owns the partition, if this node hosts it.
    pub fn owner(&self, topic: &str, partition: u32) -> Option<u16> {
        let shard = *self.topics.get(topic)?.shards.get(partition as usize)?;
        (shard != NOT_HOSTED).then_some(shard)
    }

    /// Whether the partition exists, here or on other nodes.
    pub fn exists(&self, topic: &str, partition: u32) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|t| (partition as usize) < t.shards.len())
    }

    /// Whether the partition exists but lives on other nodes only.
    pub fn is_elsewhere(&self, topic: &str, partition: u32) -> bool {
        self.topics
            .get(topic)
            .and_then(|t| t.shards.get(partition as usize))
            .is_some_and(|s| *s == NOT_HOSTED)
    }

    /// The Raft group of a partition with more than one replica; None for
    /// one that is not replicated (on one node, or a factor of 1).
    pub fn group(&self, topic: &str, partition: u32) -> Option<u64> {
        let meta = self.topics.get(topic)?;
        let replicas = meta.replicas.get(partition as usize)?;
        (self.cluster.is_some() && replicas.len() > 1 && meta.id != 0)
            .then(|| crate::replication::group_id(meta.id, partition))
    }

    /// This node's shard owning a group's partition, if it hosts it.
    pub fn group_owner(&self, group: u64) -> Option<u16> {
        let (id, partition) = crate::replication::group_partition(group);
        self.owner(self.ids.get(&id)?, partition)
    }

    /// The (node, shard) of a partition's preferred leader: in a cluster
    /// its first replica, on one node this node's owning shard. Where the
    /// partition is replicated, `Metadata::leader` says who leads now.
    pub fn leader(&self, topic: &str, partition: u32) -> Option<(u64, u16)> {
        let meta = self.topics.get(topic)?;
        match &self.cluster {
            None => Some((0, *meta.shards.get(partition as usize)?)),
            Some(_) => meta
                .replicas
                .get(partition as usize)?
                .first()
                .map(|&(node, shard)| (node, shard as u16)),
        }
    }

    /// The table of a node in a cluster: the controller's topics, each
    /// partition on the shard the controller chose for this node's replica.
    pub fn from_controller(node: u64, cluster: &crate::controller::ClusterMetadata, controller: Option<u64>) -> Self {
        let topics = cluster
            .topics
            .iter()
            .map(|(name, topic)| {
                let shards = topic
                    .replicas
                    .iter()
                    .map(|replicas| {
                        replicas
                            .iter()
                            .find(|r| r.node == node)
                            .map_or(NOT_HOSTED, |r| r.shard as u16)
                    })
                    .collect();
                let meta = TopicMeta {
                    name: name.clone(),
                    shards,
                    configs: topic.configs.clone(),
                    replicas: topic
                        .replicas
                        .iter()
                        .map(|replicas| replicas.iter().map(|r| (r.node, r.shard)).collect())
                        .collect(),
                    members: topic.members.clone(),
                    id: topic.id,
                };
                (name.clone(), meta)
            })
            .collect();
        TopicTable {
            topics,
            ids: cluster.topics.iter().map(|(name, t)| (t.id, name.clone())).collect(),
            cluster: Some(Arc::new(ClusterView {
                node,
                controller,
                nodes: cluster.nodes.clone(),
            })),
        }
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
    /// Who leads each replicated partition this node hosts, by Raft group,
    /// as its replica here last saw it: written by the shards' replication
    /// tasks when it changes, read for Metadata.
    leaders: RwLock<std::collections::HashMap<u64, crate::replication::Leadership>>,
    /// Who leads each replicated partition as its leader last announced
    /// (`PeerMessage::Leaders`): what this node answers for partitions it
    /// hosts no replica of, and for those whose replica here lags behind.
    /// Only groups of the table, each at most once: bounded by it.
    learned: RwLock<std::collections::HashMap<u64, crate::replication::Leadership>>,
    /// Bumped at every change of `leaders`: the announcer sends nothing
    /// between full announcements while it stands still.
    leaders_version: std::sync::atomic::AtomicU64,
}

/// A partition's leader as a client is told: where, and its epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLeader {
    pub node: u64,
    pub shard: u16,
    pub epoch: i32,
    /// The replicas in sync, by node; empty when not known here.
    pub in_sync: Vec<u64>,
}

pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

/// The file in a cluster topic's partition directory naming the topic's
/// creation (its controller id).
const TOPIC_ID_FILE: &str = "topic.id";
/// `TOPIC_ID_FILE` while it is written, before its rename.
const TOPIC_ID_TEMP_FILE: &str = "topic.id.tmp";
/// The replicas (the leader among them) that must be in sync for an
/// acks=all produce to be taken; fewer refuse it with NOT_ENOUGH_REPLICAS.
/// A replication setting, not the log's: `log_config` only checks it.
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";

/// Makes `dir` the directory of the partition of cluster topic `id`: a
/// directory left by an older topic of the same name (deleted while this
/// node was away, so never deleted here) is removed first; one that names
/// no topic is refused, since it holds a log this node cannot place.
pub fn claim_partition_dir(dir: &Path, id: u64) -> Result<(), BrokerError> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BrokerError::Io { op, path, source }
    };
    let file = dir.join(TOPIC_ID_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) if text.trim().parse::<u64>() == Ok(id) => return Ok(()),
        Ok(text) => {
            tracing::warn!(
                dir = %dir.display(), old = text.trim(), new = id,
                "removing a deleted topic's partition left under the same name"
            );
            std::fs::remove_dir_all(dir).map_err(io("remove", dir))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A claim cut short (the node stopped before the rename) leaves
            // only its temporary file: nothing of a log is written before
            // the claim is whole, so that directory is this claim's own.
            let unclaimed = match std::fs::read_dir(dir) {
                Ok(entries) => entries
                    .map(|entry| entry.map(|e| e.file_name()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(io("list", dir))?
                    .iter()
                    .all(|name| *name == *TOPIC_ID_TEMP_FILE),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(source) => return Err(io("list", dir)(source)),
            };
            if !unclaimed {
                return Err(BrokerError::Config(format!(
                    "{} holds a partition log of no topic of this cluster (no {TOPIC_ID_FILE}): move it away",
                    dir.display()
                )));
            }
        }
        Err(source) => return Err(io("read", &file)(source)),
    }
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let temp = dir.join(TOPIC_ID_TEMP_FILE);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&temp).map_err(io("create", &temp))?;
        f.write_all(id.to_string().as_bytes()).map_err(io("write", &temp))?;
        f.sync_all().map_err(io("fsync", &temp))?;
    }
    std::fs::rename(&temp, &file).map_err(io("rename into", &file))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", parent))?;
    }
    Ok(())
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
                let shard = table.topics[&name].shards[partition];
                if shard >= shards && shard != NOT_HOSTED {
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
            leaders: RwLock::new(std::collections::HashMap::new()),
            learned: RwLock::new(std::collections::HashMap::new()),
            leaders_version: std::sync::atomic::AtomicU64::new(0),
        };
        if moved {
            metadata.persist(&metadata.snapshot())?;
        }
        Ok(metadata)
    }

    pub fn set_leadership(&self, group: u64, leadership: Option<crate::replication::Leadership>) {
        let mut leaders = self.leaders.write().expect("leaders lock");
        match leadership {
            Some(leadership) => leaders.insert(group, leadership),
            None => leaders.remove(&group),
        };
        self.leaders_version.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Changes so far to the leaderships of the replicas hosted here.
    pub fn leaders_version(&self) -> u64 {
        self.leaders_version.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The leaderships another node announced for the groups it leads.
    /// A note is taken only for a group of the table that names `from`
    /// among its replicas, and only if its term is not older than the one
    /// known: what this node answers never goes back an epoch.
    pub fn learn_leaders(&self, from: u64, notes: Vec<net::cluster::LeaderNote>) {
        let table = self.snapshot();
        let mut learned = self.learned.write().expect("learned leaders lock");
        for note in notes {
            let (id, partition) = crate::replication::group_partition(note.group);
            let replicas = table
                .ids
                .get(&id)
                .and_then(|name| table.topics.get(name))
                .and_then(|t| t.replicas.get(partition as usize));
            if !replicas.is_some_and(|r| r.iter().any(|(node, _)| *node == from)) {
                tracing::debug!(
                    from,
                    group = note.group,
                    "a leader note for a group it has no replica of, dropped"
                );
                continue;
            }
            if learned.get(&note.group).is_some_and(|known| known.term > note.term) {
                continue;
            }
            learned.insert(
                note.group,
                crate::replication::Leadership {
                    leader: Some(from),
                    term: note.term,
                    in_sync: note.in_sync,
                },
            );
        }
    }

    /// The groups this node's replicas lead, with their terms and ISRs:
    /// what it announces to the others.
    pub fn led_here(&self, node: u64) -> Vec<net::cluster::LeaderNote> {
        self.leaders
            .read()
            .expect("leaders lock")
            .iter()
            .filter(|(_, l)| l.leader == Some(node))
            .map(|(&group, l)| net::cluster::LeaderNote {
                group,
                term: l.term,
                in_sync: l.in_sync.clone(),
            })
            .collect()
    }

    /// A partition's leader now: for a replicated one, the latest its
    /// replica here knows or its leader announced (None while neither
    /// names one: a client asks again; the preferred leader while neither
    /// knows anything, as before the first election); else the
    /// partition's only replica.
    pub fn leader(&self, table: &TopicTable, topic: &str, partition: u32) -> Option<PartitionLeader> {
        let preferred = table.leader(topic, partition)?;
        let Some(group) = table.group(topic, partition) else {
            return Some(PartitionLeader {
                node: preferred.0,
                shard: preferred.1,
                epoch: 0,
                in_sync: Vec::new(),
            });
        };
        let here = self.leaders.read().expect("leaders lock").get(&group).cloned();
        let announced = self.learned.read().expect("learned leaders lock").get(&group).cloned();
        // The later term wins; in the same term, one that names a leader.
        let leadership = match (here, announced) {
            (Some(here), Some(announced)) => {
                if (announced.term, announced.leader.is_some()) > (here.term, here.leader.is_some()) {
                    Some(announced)
                } else {
                    Some(here)
                }
            }
            (here, announced) => here.or(announced),
        };
        let Some(leadership) = leadership else {
            // Not hosted here (or not opened yet), and not announced.
            return Some(PartitionLeader {
                node: preferred.0,
                shard: preferred.1,
                epoch: -1,
                in_sync: Vec::new(),
            });
        };
        let node = leadership.leader?;
        let shard = table.topics[topic].replicas[partition as usize]
            .iter()
            .find(|(n, _)| *n == node)
            .map(|(_, shard)| *shard as u16)?;
        Some(PartitionLeader {
            node,
            shard,
            epoch: leadership.term as i32,
            in_sync: leadership.in_sync,
        })
    }

    pub fn snapshot(&self) -> Arc<TopicTable> {
        self.table.read().expect("topic table lock").clone()
    }

    /// Puts a cluster's table in place (derived from the controller's log,
    /// which is what persists it), answering the one it replaced.
    pub fn replace(&self, table: TopicTable) -> Arc<TopicTable> {
        debug_assert!(table.cluster.is_some(), "only a cluster's table is replaced whole");
        // Announcements for deleted topics' groups go with them.
        self.learned
            .write()
            .expect("learned leaders lock")
            .retain(|group, _| table.ids.contains_key(&crate::replication::group_partition(*group).0));
        std::mem::replace(&mut *self.table.write().expect("topic table lock"), Arc::new(table))
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
            replicas: Vec::new(),
            members: Vec::new(),
            id: 0,
        };
        let mut table = TopicTable::clone(&guard);
        table.topics.insert(name.to_string(), meta.clone());
        self.persist(&table)?;
        *guard = Arc::new(table);
        Ok(meta)
    }

    /// Changes a topic's configs (checked whole, as the partition logs will
    /// take them) and persists them, answering the topic as it is now;
    /// with `validate_only` only checks. The owning shards then put them in
    /// force (`Shard::apply_topic_configs`).
    pub fn alter_configs(
        &self,
        name: &str,
        changes: &ConfigChanges,
        validate_only: bool,
    ) -> Result<TopicMeta, BrokerError> {
        let mut guard = self.table.write().expect("topic table lock");
        let mut meta = guard.topics.get(name).cloned().ok_or_else(|| unknown_topic(name))?;
        meta.configs = changes.apply(&meta.configs);
        log_config(&meta.configs)?;
        if validate_only {
            return Ok(meta);
        }
        let mut table = TopicTable::clone(&guard);
        table.topics.insert(name.to_string(), meta.clone());
        self.persist(&table)?;
        *guard = Arc::new(table);
        Ok(meta)
    }

    /// Grows a topic to `count` partitions, the new ones on the least
    /// loaded shards, and persists it, answering the topic as it is now;
    /// with `validate_only` only checks. A topic never shrinks: keys would
    /// map to other partitions and records would be lost.
    pub fn add_partitions(&self, name: &str, count: u32, validate_only: bool) -> Result<TopicMeta, BrokerError> {
        let mut guard = self.table.write().expect("topic table lock");
        let mut meta = guard.topics.get(name).cloned().ok_or_else(|| unknown_topic(name))?;
        check_growth(name, meta.shards.len(), count)?;
        let mut load = guard.load(self.shards);
        while meta.shards.len() < count as usize {
            let shard = least_loaded(&load);
            load[shard as usize] += 1;
            meta.shards.push(shard);
        }
        if validate_only {
            return Ok(meta);
        }
        let mut table = TopicTable::clone(&guard);
        table.topics.insert(name.to_string(), meta.clone());
        self.persist(&table)?;
        *guard = Arc::new(table);
        Ok(meta)
    }

    pub fn delete(&self, name: &str) -> Result<TopicMeta, BrokerError> {
        let mut guard = self.table.write().expect("topic table lock");
        let mut table = TopicTable::clone(&guard);
        let meta = table.topics.remove(name).ok_or_else(|| unknown_topic(name))?;
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

fn unknown_topic(name: &str) -> BrokerError {
    BrokerError::UnknownTopicOrPartition {
        topic: name.to_string(),
        partition: 0,
    }
}

/// Whether a topic of `current` partitions may grow to `count`: more than
/// it has, within `PARTITIONS_MAX`.
pub fn check_growth(name: &str, current: usize, count: u32) -> Result<(), BrokerError> {
    if count as usize <= current || count > PARTITIONS_MAX {
        return Err(BrokerError::InvalidPartitionCount {
            topic: name.to_string(),
            current,
            requested: count,
        });
    }
    Ok(())
}

/// A change of a topic's configs, as AlterConfigs (`replace`: what is not
/// set goes back to its default) and IncrementalAlterConfigs (`set` and
/// `delete`, the rest kept) ask it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigChanges {
    pub replace: bool,
    pub set: Vec<(String, String)>,
    pub delete: Vec<String>,
}

impl ConfigChanges {
    /// The configs `current` becomes.
    pub fn apply(&self, current: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut configs = if self.replace { BTreeMap::new() } else { current.clone() };
        for key in &self.delete {
            configs.remove(key);
        }
        configs.extend(self.set.iter().cloned());
        configs
    }

    /// Whether `configs` show this change made.
    pub fn made_in(&self, configs: &BTreeMap<String, String>) -> bool {
        self.set.iter().all(|(k, v)| configs.get(k) == Some(v))
            && self.delete.iter().all(|k| !configs.contains_key(k))
            && (!self.replace || configs.len() == self.set.len())
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
        ("cleanup.policy", "delete".to_string()),
        (
            "min.cleanable.dirty.ratio",
            d.compaction.min_cleanable_dirty_ratio.to_string(),
        ),
        ("min.compaction.lag.ms", d.compaction.min_compaction_lag_ms.to_string()),
        // Kafka shows "no maximum" as Long.MAX_VALUE.
        ("max.compaction.lag.ms", i64::MAX.to_string()),
        ("delete.retention.ms", d.compaction.delete_retention_ms.to_string()),
        ("retention.ms", optional(d.retention_ms)),
        ("retention.bytes", optional(d.retention_bytes)),
        ("segment.bytes", d.segment_bytes.to_string()),
        ("segment.ms", optional(d.segment_ms)),
        ("segment.preallocate.bytes", d.segment_preallocate_bytes.to_string()),
        ("segment.zero.ahead.bytes", d.segment_zero_ahead_bytes.to_string()),
        ("read.ahead.bytes", d.read_ahead_bytes.to_string()),
        ("max.message.bytes", d.batch_bytes_max.to_string()),
        ("flush.every.append", "false".to_string()),
        // -1: no flush by time or by bytes (the default policy applies).
        ("flush.ms", "-1".to_string()),
        ("flush.bytes", "-1".to_string()),
        (MIN_INSYNC_REPLICAS, "1".to_string()),
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
            "cleanup.policy" => {
                let mut policy = storage::CleanupPolicy {
                    delete: false,
                    compact: false,
                };
                for word in value.split(',').map(str::trim) {
                    match word {
                        "delete" => policy.delete = true,
                        "compact" => policy.compact = true,
                        _ => return Err(invalid("delete, compact, or compact,delete")),
                    }
                }
                config.cleanup = policy;
            }
            "min.cleanable.dirty.ratio" => {
                config.compaction.min_cleanable_dirty_ratio = value
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| invalid("a number in 0..=1"))?
            }
            "min.compaction.lag.ms" => config.compaction.min_compaction_lag_ms = number()?,
            "max.compaction.lag.ms" => {
                config.compaction.max_compaction_lag_ms = match number()? {
                    max if max >= i64::MAX as u64 => None,
                    0 => return Err(invalid("positive")),
                    max => Some(max),
                }
            }
            "delete.retention.ms" => config.compaction.delete_retention_ms = number()?,
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
            MIN_INSYNC_REPLICAS => {
                if number()? == 0 {
                    return Err(invalid("at least 1"));
                }
            }
            "flush.ms" if value == "-1" => {}
            "flush.bytes" if value == "-1" => {}
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
    config
        .validate()
        .map_err(|e| BrokerError::InvalidTopicConfigs(e.to_string()))?;
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
    fn a_cluster_topic_claims_its_partition_directory() {
        let data = tempfile::tempdir().unwrap();
        let dir = partition_dir(data.path(), "t", 0);
        claim_partition_dir(&dir, 7).unwrap();
        std::fs::write(dir.join("00000000000000000000.log"), b"records of topic 7").unwrap();
        // The same topic again: kept.
        claim_partition_dir(&dir, 7).unwrap();
        assert!(dir.join("00000000000000000000.log").exists());
        // Another topic of the same name: the old one's log goes.
        claim_partition_dir(&dir, 9).unwrap();
        assert!(!dir.join("00000000000000000000.log").exists());
        assert_eq!(std::fs::read_to_string(dir.join(TOPIC_ID_FILE)).unwrap(), "9");
        // A log that names no topic is refused, and left alone.
        let stray = partition_dir(data.path(), "s", 0);
        std::fs::create_dir_all(&stray).unwrap();
        std::fs::write(stray.join("00000000000000000000.log"), b"?").unwrap();
        assert!(matches!(claim_partition_dir(&stray, 3), Err(BrokerError::Config(_))));
        assert!(stray.join("00000000000000000000.log").exists());
        // A claim the node's stop cut short, before its rename: taken.
        let cut = partition_dir(data.path(), "c", 0);
        std::fs::create_dir_all(&cut).unwrap();
        std::fs::write(cut.join(TOPIC_ID_TEMP_FILE), b"").unwrap();
        claim_partition_dir(&cut, 4).unwrap();
        assert_eq!(std::fs::read_to_string(cut.join(TOPIC_ID_FILE)).unwrap(), "4");
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
        assert_eq!(config.cleanup, storage::CleanupPolicy::DELETE);

        let compacted = |policy: &str| {
            log_config(&BTreeMap::from([
                ("cleanup.policy".to_string(), policy.to_string()),
                ("min.cleanable.dirty.ratio".to_string(), "0.1".to_string()),
                ("max.compaction.lag.ms".to_string(), i64::MAX.to_string()),
                ("delete.retention.ms".to_string(), "1000".to_string()),
            ]))
        };
        let both = compacted("compact, delete").unwrap();
        assert!(both.cleanup.compact && both.cleanup.delete && both.batch_limits().keys_required);
        assert_eq!(both.compaction.min_cleanable_dirty_ratio, 0.1);
        assert_eq!(both.compaction.max_compaction_lag_ms, None);
        assert_eq!(both.compaction.delete_retention_ms, 1000);
        let compact = compacted("compact").unwrap();
        assert!(compact.cleanup.compact && !compact.cleanup.delete);
        assert!(matches!(compacted("shred"), Err(BrokerError::InvalidConfig { .. })));
        assert!(matches!(compacted(""), Err(BrokerError::InvalidConfig { .. })));
        let ratio = BTreeMap::from([("min.cleanable.dirty.ratio".to_string(), "1.5".to_string())]);
        assert!(matches!(log_config(&ratio), Err(BrokerError::InvalidConfig { .. })));
        // Every default DescribeConfigs shows is one log_config takes.
        let defaults: BTreeMap<String, String> =
            config_defaults().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert!(log_config(&defaults).is_ok(), "{defaults:?}");
    }

    #[test]
    fn configs_change_and_partitions_grow_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let metadata = Metadata::load(dir.path(), 2).unwrap();
        let set = |k: &str, v: &str| (k.to_string(), v.to_string());
        metadata
            .create(
                "t",
                1,
                BTreeMap::from([set("retention.ms", "1000"), set("segment.bytes", "65536")]),
            )
            .unwrap();
        let incremental = ConfigChanges {
            replace: false,
            set: vec![set("retention.bytes", "4096")],
            delete: vec!["retention.ms".into()],
        };
        let meta = metadata.alter_configs("t", &incremental, false).unwrap();
        let expected = BTreeMap::from([set("retention.bytes", "4096"), set("segment.bytes", "65536")]);
        assert_eq!(meta.configs, expected);
        assert!(incremental.made_in(&meta.configs));
        let whole = ConfigChanges {
            replace: true,
            set: vec![set("flush.ms", "10")],
            delete: vec![],
        };
        assert!(!whole.made_in(&meta.configs));
        // Checked before anything changes; validate_only changes nothing.
        let bad = ConfigChanges {
            set: vec![set("segment.bytes", "big")],
            ..ConfigChanges::default()
        };
        assert!(matches!(
            metadata.alter_configs("t", &bad, false),
            Err(BrokerError::InvalidConfig { .. })
        ));
        assert!(matches!(
            metadata.alter_configs("nope", &whole, false),
            Err(BrokerError::UnknownTopicOrPartition { .. })
        ));
        assert_eq!(metadata.alter_configs("t", &whole, true).unwrap().configs.len(), 1);
        assert_eq!(metadata.snapshot().topics["t"].configs, expected);
        metadata.alter_configs("t", &whole, false).unwrap();

        assert!(matches!(
            metadata.add_partitions("t", 1, false),
            Err(BrokerError::InvalidPartitionCount {
                current: 1,
                requested: 1,
                ..
            })
        ));
        assert!(metadata.add_partitions("t", PARTITIONS_MAX + 1, false).is_err());
        assert_eq!(metadata.add_partitions("t", 3, true).unwrap().shards.len(), 3);
        assert_eq!(metadata.snapshot().topics["t"].shards.len(), 1);
        assert_eq!(metadata.add_partitions("t", 3, false).unwrap().shards, vec![0, 1, 0]);
        let reloaded = Metadata::load(dir.path(), 2).unwrap().snapshot();
        assert_eq!(reloaded.topics["t"].shards.len(), 3);
        assert_eq!(reloaded.topics["t"].configs, BTreeMap::from([set("flush.ms", "10")]));
    }
}
