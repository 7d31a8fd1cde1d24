//! The controller's state machine: the cluster metadata its Raft log builds
//! up (nodes, topics, each partition's replicas and their shards, topic
//! configs), how a command changes it, and where a new topic's replicas go.
//!
//! Pure: no I/O and no glommio, so that every node applying the same log
//! holds the same metadata, and tests drive it without a cluster. The
//! leader computes a topic's assignment when it proposes the topic
//! (`assign`), and the command carries it: applying never computes, so a
//! node running other code still applies the log the same way. Leadership
//! is not here; it lives in each partition's own Raft group.

// Topics through the controller (CreateTopics proposing an assignment,
// each node opening what it hosts) are the next step; until they land,
// only the tests call `assign`, `hosted_by` and a proposal's outcome.
#![cfg_attr(not(test), allow(dead_code))]

pub mod driver;
pub mod replica;
pub mod store;

use std::collections::BTreeMap;

use net::cluster::{ControllerCommand, Replica, REPLICATION_FACTOR_MAX};

use crate::error::BrokerError;

/// A node as the controller knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub shards: u32,
    pub kafka_addr: String,
    pub native_addr: String,
    /// Each shard's own addresses (shard ports), or none.
    pub kafka_shard_addrs: Vec<String>,
    pub native_shard_addrs: Vec<String>,
    /// Which life of the node this is: 0 at first, one more each time it
    /// comes back with its data directory lost (`ControllerCommand::
    /// Reincarnate`). Its Raft member id is `member_id(node, incarnation)`.
    pub incarnation: u32,
    /// The directory id that incarnation drew (0 for a first).
    pub directory: u64,
}

/// A topic as the controller knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicAssignment {
    /// Names this topic's creation: a topic deleted and created again under
    /// the same name is another topic (Kafka's topic id), so a node that
    /// still holds the old one's partitions can tell them apart.
    pub id: u64,
    /// `replicas[p]`: partition p's replicas, the preferred leader first.
    pub replicas: Vec<Vec<Replica>>,
    /// `members[p]`: the Raft member ids partition p's group was formed
    /// with (each replica's node in its incarnation when the topic was
    /// created): every replica starts the group's configuration from them,
    /// and replays the changes of its log after.
    pub members: Vec<Vec<u64>>,
    pub configs: BTreeMap<String, String>,
}

/// The cluster metadata: what the controller's log says, applied in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterMetadata {
    pub nodes: BTreeMap<u64, NodeInfo>,
    pub topics: BTreeMap<String, TopicAssignment>,
    /// The controller log index last applied; an entry at or below it is
    /// not applied again (a replay after a restart).
    pub applied_index: u64,
    next_topic_id: u64,
}

/// What applying an entry did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// Already applied (at or below `applied_index`): nothing changed.
    Replayed,
}

impl ClusterMetadata {
    /// Applies the command at log `index`. A command that cannot apply (a
    /// topic that exists, a replica on an unknown node) changes nothing and
    /// answers why, the same on every node; it still takes its index.
    pub fn apply(&mut self, index: u64, command: &ControllerCommand) -> Result<Applied, BrokerError> {
        if index <= self.applied_index {
            return Ok(Applied::Replayed);
        }
        self.applied_index = index;
        match command {
            ControllerCommand::RegisterNode {
                node,
                shards,
                kafka_addr,
                native_addr,
                kafka_shard_addrs,
                native_shard_addrs,
            } => {
                if *shards == 0 {
                    return Err(BrokerError::Config(format!("node {node} registers with no shards")));
                }
                if let Some(known) = self.nodes.get(node) {
                    // A node's shard count may grow; replicas already on
                    // shards it would lose keep their places.
                    if *shards < known.shards {
                        return Err(BrokerError::Config(format!(
                            "node {node} registers {shards} shards, fewer than its {}",
                            known.shards
                        )));
                    }
                }
                self.nodes.insert(
                    *node,
                    NodeInfo {
                        shards: *shards,
                        kafka_addr: kafka_addr.clone(),
                        native_addr: native_addr.clone(),
                        kafka_shard_addrs: kafka_shard_addrs.clone(),
                        native_shard_addrs: native_shard_addrs.clone(),
                        incarnation: self.nodes.get(node).map_or(0, |known| known.incarnation),
                        directory: self.nodes.get(node).map_or(0, |known| known.directory),
                    },
                );
            }
            ControllerCommand::Reincarnate {
                node,
                incarnation,
                directory,
            } => {
                let known = self
                    .nodes
                    .get_mut(node)
                    .ok_or_else(|| BrokerError::Config(format!("node {node} comes back, but was never registered")))?;
                // Compare and set: a retried proposal of the same comeback
                // does not make another.
                if *incarnation != known.incarnation + 1 {
                    return Err(BrokerError::Config(format!(
                        "node {node} comes back as incarnation {incarnation}, but is in its {}",
                        known.incarnation
                    )));
                }
                known.incarnation = *incarnation;
                known.directory = *directory;
            }
            ControllerCommand::CreateTopic {
                name,
                assignment,
                configs,
            } => {
                if self.topics.contains_key(name) {
                    return Err(BrokerError::TopicAlreadyExists(name.clone()));
                }
                let members = self.members(name, 0, assignment)?;
                self.next_topic_id += 1;
                self.topics.insert(
                    name.clone(),
                    TopicAssignment {
                        id: self.next_topic_id,
                        replicas: assignment.clone(),
                        members,
                        configs: configs.iter().cloned().collect(),
                    },
                );
            }
            ControllerCommand::DeleteTopic { name } => {
                self.topics.remove(name).ok_or_else(|| unknown_topic(name))?;
            }
            ControllerCommand::AlterTopicConfigs {
                name,
                replace,
                set,
                delete,
            } => {
                let topic = self.topics.get_mut(name).ok_or_else(|| unknown_topic(name))?;
                let changes = crate::topics::ConfigChanges {
                    replace: *replace,
                    set: set.clone(),
                    delete: delete.clone(),
                };
                topic.configs = changes.apply(&topic.configs);
            }
            ControllerCommand::CreatePartitions {
                name,
                first,
                assignment,
            } => {
                let current = self.topics.get(name).ok_or_else(|| unknown_topic(name))?.replicas.len();
                // Proposed for the topic as it was: one grown meanwhile
                // (two growths proposed at once) takes only the first.
                if current != *first as usize {
                    return Err(BrokerError::InvalidPartitionCount {
                        topic: name.clone(),
                        current,
                        requested: *first + assignment.len() as u32,
                    });
                }
                let members = self.members(name, *first, assignment)?;
                let topic = self.topics.get_mut(name).expect("looked up above");
                topic.replicas.extend(assignment.iter().cloned());
                topic.members.extend(members);
            }
        }
        Ok(Applied::Done)
    }

    /// The Raft members partitions `first..` of a topic start with: each
    /// replica's node in its current incarnation. Every replica must be on
    /// a node and shard the cluster has.
    fn members(&self, name: &str, first: u32, assignment: &[Vec<Replica>]) -> Result<Vec<Vec<u64>>, BrokerError> {
        for (i, replicas) in assignment.iter().enumerate() {
            for replica in replicas {
                let known = self.nodes.get(&replica.node).is_some_and(|n| replica.shard < n.shards);
                if !known {
                    return Err(BrokerError::Config(format!(
                        "topic {name} partition {}: replica on node {} shard {}, which the cluster does not have",
                        first as usize + i,
                        replica.node,
                        replica.shard
                    )));
                }
            }
        }
        Ok(assignment
            .iter()
            .map(|replicas| replicas.iter().map(|r| self.member(r.node)).collect())
            .collect())
    }

    /// `node`'s Raft member id in its current incarnation (a node not
    /// registered: its first).
    pub fn member(&self, node: u64) -> u64 {
        net::cluster::member_id(node, self.nodes.get(&node).map_or(0, |n| n.incarnation))
    }

    /// The partitions `node` should host, with the shard of each: what a
    /// node reconciles its open partitions against.
    pub fn hosted_by(&self, node: u64) -> Vec<(&str, u32, u32)> {
        let mut hosted = Vec::new();
        for (name, topic) in &self.topics {
            for (partition, replicas) in topic.replicas.iter().enumerate() {
                if let Some(replica) = replicas.iter().find(|r| r.node == node) {
                    hosted.push((name.as_str(), partition as u32, replica.shard));
                }
            }
        }
        hosted
    }

    /// Where a new topic's replicas go, for the leader to propose.
    ///
    /// Each partition's preferred leader is the node with the fewest of this
    /// topic's leaders so far, then of its replicas, then the fewest leaders
    /// and replicas in the cluster, then the lowest id; its other replicas
    /// go to the nodes with the fewest of this topic's replicas, then of all
    /// replicas. On each node a replica
    /// goes to the shard with the fewest of this topic's leaders (for a
    /// leader) or replicas, then the fewest in the cluster. So a topic's
    /// leaders spread evenly over nodes and over each node's shards, and the
    /// cluster stays balanced as topics come and go.
    pub fn assign(
        &self,
        topic: &str,
        partitions: u32,
        replication_factor: usize,
    ) -> Result<Vec<Vec<Replica>>, BrokerError> {
        if partitions == 0 || partitions > net::cluster::PARTITIONS_MAX {
            return Err(BrokerError::InvalidPartitions(partitions));
        }
        self.assign_after(topic, &[], partitions, replication_factor)
    }

    /// Where the partitions a topic grows by go (CreatePartitions): as
    /// `assign` would place them after its `existing` ones, with as many
    /// replicas as its first partition has.
    pub fn assign_more(&self, topic: &str, count: u32) -> Result<Vec<Vec<Replica>>, BrokerError> {
        let existing = &self.topics.get(topic).ok_or_else(|| unknown_topic(topic))?.replicas;
        crate::topics::check_growth(topic, existing.len(), count)?;
        let factor = existing.first().map_or(1, Vec::len);
        self.assign_after(topic, existing, count - existing.len() as u32, factor)
    }

    fn assign_after(
        &self,
        topic: &str,
        existing: &[Vec<Replica>],
        partitions: u32,
        replication_factor: usize,
    ) -> Result<Vec<Vec<Replica>>, BrokerError> {
        if replication_factor == 0 || replication_factor > self.nodes.len().min(REPLICATION_FACTOR_MAX) {
            return Err(BrokerError::InvalidReplicationFactor {
                topic: topic.to_string(),
                factor: replication_factor,
                nodes: self.nodes.len(),
            });
        }
        let mut cluster = Load::default();
        for assignment in self.topics.values() {
            for replicas in &assignment.replicas {
                cluster.add(replicas);
            }
        }
        let mut this = Load::default();
        for replicas in existing {
            this.add(replicas);
        }
        let mut assignment = Vec::with_capacity(partitions as usize);
        for _ in 0..partitions {
            let mut replicas: Vec<Replica> = Vec::with_capacity(replication_factor);
            for position in 0..replication_factor {
                let leader = position == 0;
                let node = *self
                    .nodes
                    .keys()
                    .filter(|n| replicas.iter().all(|r| r.node != **n))
                    .min_by_key(|n| {
                        let replicas = (this.node_replicas(**n), cluster.node_replicas(**n));
                        if leader {
                            (
                                this.node_leaders(**n),
                                replicas.0,
                                cluster.node_leaders(**n),
                                replicas.1,
                                **n,
                            )
                        } else {
                            (replicas.0, 0, replicas.1, 0, **n)
                        }
                    })
                    .expect("replication factor checked against the nodes");
                let shard = (0..self.nodes[&node].shards)
                    .min_by_key(|s| {
                        let at = (node, *s);
                        if leader {
                            (this.shard_leaders(at), cluster.shard_leaders(at), *s)
                        } else {
                            (this.shard_replicas(at), cluster.shard_replicas(at), *s)
                        }
                    })
                    .expect("a node has a shard");
                replicas.push(Replica { node, shard });
            }
            this.add(&replicas);
            cluster.add(&replicas);
            assignment.push(replicas);
        }
        Ok(assignment)
    }
}

fn unknown_topic(name: &str) -> BrokerError {
    BrokerError::UnknownTopicOrPartition {
        topic: name.to_string(),
        partition: 0,
    }
}

/// Replicas and preferred leaders counted by node and by (node, shard).
#[derive(Default)]
struct Load {
    leaders: BTreeMap<(u64, u32), usize>,
    replicas: BTreeMap<(u64, u32), usize>,
}

impl Load {
    fn add(&mut self, replicas: &[Replica]) {
        for (i, r) in replicas.iter().enumerate() {
            *self.replicas.entry((r.node, r.shard)).or_default() += 1;
            if i == 0 {
                *self.leaders.entry((r.node, r.shard)).or_default() += 1;
            }
        }
    }

    fn node_leaders(&self, node: u64) -> usize {
        self.leaders.range((node, 0)..=(node, u32::MAX)).map(|(_, n)| n).sum()
    }

    fn node_replicas(&self, node: u64) -> usize {
        self.replicas.range((node, 0)..=(node, u32::MAX)).map(|(_, n)| n).sum()
    }

    fn shard_leaders(&self, at: (u64, u32)) -> usize {
        self.leaders.get(&at).copied().unwrap_or(0)
    }

    fn shard_replicas(&self, at: (u64, u32)) -> usize {
        self.replicas.get(&at).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cluster(shards: &[u32]) -> ClusterMetadata {
        let mut metadata = ClusterMetadata::default();
        for (i, &shards) in shards.iter().enumerate() {
            let node = i as u64 + 1;
            let command = ControllerCommand::RegisterNode {
                node,
                shards,
                kafka_addr: format!("127.0.0.1:{}", 9092 + node),
                native_addr: format!("127.0.0.1:{}", 9400 + node),
                kafka_shard_addrs: Vec::new(),
                native_shard_addrs: Vec::new(),
            };
            metadata.apply(metadata.applied_index + 1, &command).unwrap();
        }
        metadata
    }

    fn create(
        metadata: &mut ClusterMetadata,
        name: &str,
        partitions: u32,
        factor: usize,
    ) -> Result<Applied, BrokerError> {
        let assignment = metadata.assign(name, partitions, factor)?;
        let command = ControllerCommand::CreateTopic {
            name: name.into(),
            assignment,
            configs: vec![],
        };
        // Through the entry's bytes, as a follower applies it.
        let command = ControllerCommand::decode(&command.encode()).unwrap();
        metadata.apply(metadata.applied_index + 1, &command)
    }

    fn spread(counts: impl Iterator<Item = usize>) -> usize {
        let counts: Vec<usize> = counts.collect();
        counts.iter().max().unwrap() - counts.iter().min().unwrap()
    }

    #[test]
    fn a_topic_exists_whole_or_not_at_all() {
        let mut metadata = cluster(&[2, 2, 2]);
        create(&mut metadata, "orders", 6, 3).unwrap();
        let before = metadata.clone();
        let again = create(&mut metadata, "orders", 3, 1);
        assert!(matches!(again, Err(BrokerError::TopicAlreadyExists(_))));
        assert_eq!(metadata.topics, before.topics, "a refused command changes nothing");
        assert_eq!(metadata.applied_index, before.applied_index + 1, "but takes its index");
        let stray = ControllerCommand::CreateTopic {
            name: "stray".into(),
            assignment: vec![vec![Replica { node: 1, shard: 0 }], vec![Replica { node: 9, shard: 0 }]],
            configs: vec![],
        };
        assert!(metadata.apply(metadata.applied_index + 1, &stray).is_err());
        assert!(!metadata.topics.contains_key("stray"), "no partition of it was made");
        assert!(matches!(
            metadata.assign("big", 3, 4),
            Err(BrokerError::InvalidReplicationFactor {
                factor: 4,
                nodes: 3,
                ..
            })
        ));
    }

    #[test]
    fn a_topic_grows_and_its_configs_change_through_the_log() {
        let mut metadata = cluster(&[2, 2, 2]);
        create(&mut metadata, "orders", 3, 2).unwrap();
        let apply = |metadata: &mut ClusterMetadata, command: ControllerCommand| {
            let command = ControllerCommand::decode(&command.encode()).unwrap();
            metadata.apply(metadata.applied_index + 1, &command)
        };
        let more = metadata.assign_more("orders", 6).unwrap();
        assert_eq!(more.len(), 3);
        assert!(more.iter().all(|replicas| replicas.len() == 2));
        let grow = ControllerCommand::CreatePartitions {
            name: "orders".into(),
            first: 3,
            assignment: more,
        };
        apply(&mut metadata, grow.clone()).unwrap();
        let topic = &metadata.topics["orders"];
        assert_eq!((topic.replicas.len(), topic.members.len()), (6, 6));
        // Leaders spread over the nodes as if the topic had been made with 6.
        let leaders = |node| topic.replicas.iter().filter(|r| r[0].node == node).count();
        assert_eq!((leaders(1), leaders(2), leaders(3)), (2, 2, 2));
        // The same growth again (proposed twice) is refused, changing nothing.
        let before = metadata.topics.clone();
        assert!(matches!(
            apply(&mut metadata, grow),
            Err(BrokerError::InvalidPartitionCount { current: 6, .. })
        ));
        assert_eq!(metadata.topics, before);
        assert!(matches!(
            metadata.assign_more("orders", 6),
            Err(BrokerError::InvalidPartitionCount { .. })
        ));
        assert!(metadata.assign_more("none", 6).is_err());

        let set = |k: &str, v: &str| (k.to_string(), v.to_string());
        apply(
            &mut metadata,
            ControllerCommand::AlterTopicConfigs {
                name: "orders".into(),
                replace: false,
                set: vec![set("retention.ms", "1000"), set("segment.bytes", "65536")],
                delete: vec![],
            },
        )
        .unwrap();
        apply(
            &mut metadata,
            ControllerCommand::AlterTopicConfigs {
                name: "orders".into(),
                replace: false,
                set: vec![],
                delete: vec!["retention.ms".into()],
            },
        )
        .unwrap();
        assert_eq!(
            metadata.topics["orders"].configs,
            BTreeMap::from([set("segment.bytes", "65536")])
        );
        let unknown = ControllerCommand::AlterTopicConfigs {
            name: "none".into(),
            replace: true,
            set: vec![],
            delete: vec![],
        };
        assert!(apply(&mut metadata, unknown).is_err());
    }

    #[test]
    fn replaying_an_applied_entry_changes_nothing() {
        let mut metadata = cluster(&[1, 1, 1]);
        create(&mut metadata, "a", 2, 2).unwrap();
        let index = metadata.applied_index;
        let delete = ControllerCommand::DeleteTopic { name: "a".into() };
        assert_eq!(metadata.apply(index, &delete).unwrap(), Applied::Replayed);
        assert!(metadata.topics.contains_key("a"));
        assert_eq!(metadata.apply(index + 1, &delete).unwrap(), Applied::Done);
        assert!(metadata.topics.is_empty());
        create(&mut metadata, "a", 2, 2).unwrap();
        assert_eq!(metadata.topics["a"].id, 2, "created again, another topic");
    }

    #[test]
    fn a_node_comes_back_once_per_incarnation_and_new_topics_name_its_new_member() {
        let mut metadata = cluster(&[1, 1, 1]);
        create(&mut metadata, "before", 1, 3).unwrap();
        let mut members = metadata.topics["before"].members[0].clone();
        members.sort_unstable();
        assert_eq!(members, vec![1, 2, 3]);
        let back = |incarnation, directory| ControllerCommand::Reincarnate {
            node: 3,
            incarnation,
            directory,
        };
        let apply = |metadata: &mut ClusterMetadata, command: &ControllerCommand| {
            let command = ControllerCommand::decode(&command.encode()).unwrap();
            metadata.apply(metadata.applied_index + 1, &command)
        };
        apply(&mut metadata, &back(1, 77)).unwrap();
        let member = net::cluster::member_id(3, 1);
        assert_eq!((metadata.nodes[&3].incarnation, metadata.nodes[&3].directory), (1, 77));
        assert_eq!(metadata.member(3), member);
        assert_eq!(net::cluster::node_of(member), 3);
        // A retried proposal of the same comeback, or another directory's
        // for the same incarnation, makes no other.
        assert!(apply(&mut metadata, &back(1, 77)).is_err());
        assert!(apply(&mut metadata, &back(1, 78)).is_err());
        assert!(
            apply(&mut metadata, &back(3, 79)).is_err(),
            "incarnations follow each other"
        );
        assert_eq!((metadata.nodes[&3].incarnation, metadata.nodes[&3].directory), (1, 77));
        assert!(apply(
            &mut metadata,
            &ControllerCommand::Reincarnate {
                node: 9,
                incarnation: 1,
                directory: 1
            }
        )
        .is_err());
        // Registering again (new addresses) keeps the incarnation.
        let register = ControllerCommand::RegisterNode {
            node: 3,
            shards: 1,
            kafka_addr: "127.0.0.1:1".into(),
            native_addr: "127.0.0.1:2".into(),
            kafka_shard_addrs: Vec::new(),
            native_shard_addrs: Vec::new(),
        };
        apply(&mut metadata, &register).unwrap();
        assert_eq!(metadata.nodes[&3].incarnation, 1);
        create(&mut metadata, "after", 1, 3).unwrap();
        let mut members = metadata.topics["after"].members[0].clone();
        members.sort_unstable();
        assert_eq!(members, vec![1, 2, member]);
        assert_eq!(
            metadata.topics["before"].members[0].iter().max(),
            Some(&3),
            "a group formed before keeps what it was formed with"
        );
        // Incarnation 0 is no comeback.
        assert!(ControllerCommand::decode(&back(0, 1).encode()).is_err());
    }

    #[test]
    fn each_node_hosts_what_the_assignment_says() {
        let mut metadata = cluster(&[4, 4, 4]);
        create(&mut metadata, "t", 12, 3).unwrap();
        for node in 1..=3 {
            let hosted = metadata.hosted_by(node);
            assert_eq!(hosted.len(), 12, "factor 3 on 3 nodes: every partition everywhere");
            assert!(hosted.iter().all(|(_, _, shard)| *shard < 4));
        }
    }

    proptest! {
        /// Topics created and deleted at random on a random cluster: every
        /// partition's replicas are on distinct known nodes and shards, each
        /// topic's preferred leaders spread over nodes and over each node's
        /// shards within one of even, and its replicas within two.
        #[test]
        fn assignments_spread_leaders_and_replicas(
            shards in proptest::collection::vec(1u32..5, 1..6),
            topics in proptest::collection::vec((1u32..40, 1usize..4, any::<bool>()), 1..12),
        ) {
            let mut metadata = cluster(&shards);
            let nodes = shards.len();
            for (i, (partitions, factor, delete)) in topics.into_iter().enumerate() {
                let name = format!("t{i}");
                let factor = factor.min(nodes);
                create(&mut metadata, &name, partitions, factor).unwrap();
                let topic = &metadata.topics[&name];
                prop_assert_eq!(topic.replicas.len(), partitions as usize);
                for replicas in &topic.replicas {
                    prop_assert_eq!(replicas.len(), factor);
                    for (j, r) in replicas.iter().enumerate() {
                        prop_assert!(r.shard < metadata.nodes[&r.node].shards);
                        prop_assert!(replicas[..j].iter().all(|o| o.node != r.node));
                    }
                }
                let leaders_on = |node: u64| topic.replicas.iter().filter(|r| r[0].node == node).count();
                prop_assert!(spread(metadata.nodes.keys().map(|n| leaders_on(*n))) <= 1);
                for (node, info) in &metadata.nodes {
                    let on_shard = |s: u32| topic.replicas.iter().filter(|r| r[0].node == *node && r[0].shard == s).count();
                    prop_assert!(spread((0..info.shards).map(on_shard)) <= 1, "node {node}'s shards");
                }
                let replicas_on = |node: u64| topic.replicas.iter().flatten().filter(|r| r.node == node).count();
                // Followers fill in around the leaders: near even, not exact.
                prop_assert!(spread(metadata.nodes.keys().map(|n| replicas_on(*n))) <= 2);
                if delete {
                    let command = ControllerCommand::DeleteTopic { name };
                    metadata.apply(metadata.applied_index + 1, &command).unwrap();
                }
            }
        }
    }
}
