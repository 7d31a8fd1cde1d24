//! The group consumer: a member of a consumer group, sharing its topics'
//! partitions with the other members, and committing how far it got so a
//! member that takes a partition over resumes there.
//!
//! It speaks Kafka's classic ("eager") group protocol: join, the leader
//! computes everyone's assignment (range or round robin, from the
//! subscriptions the coordinator hands it), sync, then heartbeats from
//! `poll`. When the coordinator answers a heartbeat with
//! REBALANCE_IN_PROGRESS the member commits (with auto-commit), gives up
//! every partition, and joins again; so a partition is never consumed by
//! two members of one generation, and a member that missed a rebalance is
//! refused when it heartbeats or commits.
//!
//! Delivery semantics are the application's choice of when to commit:
//! - at most once: `commit_sync` right after `poll`, before processing: a
//!   crash loses the records being processed, never repeats them;
//! - at least once: process, then `commit_sync` (or auto-commit, which
//!   commits what earlier polls returned): a crash repeats the records
//!   since the last commit, never loses them.
//!
//! `poll` must be called more often than the session timeout: it is what
//! heartbeats.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rkyv::rancor;

use crate::client::Connection;
use crate::consumer::{Consumer, ConsumerRecord};
use crate::error::{ErrorCode, NetError};
use crate::messages::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assignor {
    /// Each topic's partitions cut into consecutive ranges, one per member.
    Range,
    /// All partitions dealt to the members in turn.
    RoundRobin,
}

impl Assignor {
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
        }
    }

    fn from_name(name: &str) -> Option<Assignor> {
        [Assignor::Range, Assignor::RoundRobin]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

/// Where a member starts in a partition its group has no commit for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
}

#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub group: String,
    pub topics: Vec<String>,
    pub client_id: String,
    /// In order of preference; the group uses the leader's first that
    /// every member supports.
    pub assignors: Vec<Assignor>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Commit the positions of what `poll` returned at this interval (and
    /// before a rebalance and on close); None: the application commits.
    pub auto_commit: Option<Duration>,
    pub reset: OffsetReset,
    /// Long-poll wait of each fetch; keep it well under the session timeout.
    pub max_wait_ms: u32,
    /// `messages::isolation::READ_COMMITTED` for the consuming side of
    /// exactly-once pipelines.
    pub isolation_level: u8,
}

impl GroupConfig {
    pub fn new(group: &str, topics: &[&str]) -> GroupConfig {
        GroupConfig {
            group: group.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            client_id: "corelog".to_string(),
            assignors: vec![Assignor::Range, Assignor::RoundRobin],
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(1),
            auto_commit: Some(Duration::from_secs(5)),
            reset: OffsetReset::Earliest,
            max_wait_ms: 100,
            isolation_level: crate::messages::isolation::READ_UNCOMMITTED,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRecord {
    pub topic: String,
    pub record: ConsumerRecord,
}

pub struct GroupConsumer {
    /// The broker it was given: where it asks for the coordinator and
    /// bootstraps its fetching consumers.
    addr: String,
    config: GroupConfig,
    /// The group's coordinator, found through `addr` (FindCoordinator) and
    /// found again when it moves (its node lost, its partition led
    /// elsewhere).
    coordinator: Connection,
    coordinator_addr: String,
    /// Where to ask for the coordinator: `addr`, then the brokers the last
    /// metadata named.
    brokers: Vec<String>,
    member_id: String,
    generation: i32,
    /// One fetching consumer per assigned topic.
    consumers: BTreeMap<String, Consumer>,
    assignment: Vec<(String, u32)>,
    turn: usize,
    last_heartbeat: Instant,
    last_commit: Instant,
    /// The commit `commit_async` sent, on its own connection, and that
    /// connection when idle.
    async_commit: Option<glommio::task::JoinHandle<(Connection, Result<(), NetError>)>>,
    committer: Option<Connection>,
}

fn encode<T>(value: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<rkyv::util::AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
    >,
{
    rkyv::to_bytes::<rancor::Error>(value)
        .expect("serializing into memory cannot fail")
        .to_vec()
}

fn decode<T>(bytes: &[u8], what: &'static str) -> Result<T, NetError>
where
    T: rkyv::Archive,
    T::Archived: for<'v> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'v, rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    // Copied into an aligned buffer: the bytes come from a message's field.
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rancor::Error>(&aligned).map_err(|e| NetError::Malformed {
        what,
        reason: e.to_string(),
    })
}

/// Computes every member's assignment, as the group's leader does.
/// `members`: (member id, subscribed topics); `partitions`: each topic's
/// partition count. Members and partitions are taken in sorted order, so
/// every leader computes the same.
pub fn assign(
    assignor: Assignor,
    members: &[(String, Vec<String>)],
    partitions: &BTreeMap<String, u32>,
) -> BTreeMap<String, Vec<(String, u32)>> {
    let mut out: BTreeMap<String, Vec<(String, u32)>> =
        members.iter().map(|(id, _)| (id.clone(), Vec::new())).collect();
    let subscribed = |topic: &str| -> Vec<&String> {
        let mut ids: Vec<&String> = members
            .iter()
            .filter(|(_, topics)| topics.iter().any(|t| t == topic))
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        ids
    };
    match assignor {
        Assignor::Range => {
            for (topic, &count) in partitions {
                let ids = subscribed(topic);
                if ids.is_empty() {
                    continue;
                }
                let (each, extra) = (count / ids.len() as u32, count % ids.len() as u32);
                let mut next = 0;
                for (i, id) in ids.iter().enumerate() {
                    let take = each + u32::from((i as u32) < extra);
                    for p in next..next + take {
                        out.get_mut(*id).expect("a member").push((topic.clone(), p));
                    }
                    next += take;
                }
            }
        }
        Assignor::RoundRobin => {
            let mut turn = 0usize;
            let mut all_ids: Vec<&String> = members.iter().map(|(id, _)| id).collect();
            all_ids.sort();
            for (topic, &count) in partitions {
                for p in 0..count {
                    // The next member in turn that subscribes to the topic.
                    for _ in 0..all_ids.len() {
                        let id = all_ids[turn % all_ids.len()];
                        turn += 1;
                        let wants = members
                            .iter()
                            .any(|(m, topics)| m == id && topics.iter().any(|t| t == topic));
                        if wants {
                            out.get_mut(id).expect("a member").push((topic.clone(), p));
                            break;
                        }
                    }
                }
            }
        }
    }
    out
}

impl GroupConsumer {
    /// Connects, joins the group and takes up its assignment.
    pub async fn join(addr: &str, config: GroupConfig) -> Result<GroupConsumer, NetError> {
        if config.topics.is_empty() || config.assignors.is_empty() {
            return Err(NetError::Malformed {
                what: "group consumer config",
                reason: "needs a topic and an assignor".into(),
            });
        }
        let (coordinator_addr, coordinator, known) = find_coordinator(&[addr.to_string()], &config).await?;
        let mut consumer = GroupConsumer {
            addr: addr.to_string(),
            coordinator,
            coordinator_addr,
            brokers: std::iter::once(addr.to_string()).chain(known).collect(),
            config,
            member_id: String::new(),
            generation: -1,
            consumers: BTreeMap::new(),
            assignment: Vec::new(),
            turn: 0,
            last_heartbeat: Instant::now(),
            last_commit: Instant::now(),
            async_commit: None,
            committer: None,
        };
        consumer.rejoin().await?;
        Ok(consumer)
    }

    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// The partitions this member consumes in the current generation.
    pub fn assignment(&self) -> &[(String, u32)] {
        &self.assignment
    }

    /// Joins (again), syncs, and positions each assigned partition at the
    /// group's commit (or the reset policy's end).
    async fn rejoin(&mut self) -> Result<(), NetError> {
        self.consumers.clear();
        self.assignment.clear();
        loop {
            let subscription = encode(&ConsumerSubscription {
                topics: self.config.topics.clone(),
            });
            let request = JoinGroupRequest {
                group: self.config.group.clone(),
                member_id: self.member_id.clone(),
                client_id: self.config.client_id.clone(),
                protocol_type: CONSUMER_PROTOCOL_TYPE.to_string(),
                protocols: self
                    .config
                    .assignors
                    .iter()
                    .map(|a| GroupProtocol {
                        name: a.name().to_string(),
                        metadata: subscription.clone(),
                    })
                    .collect(),
                session_timeout_ms: self.config.session_timeout.as_millis() as u32,
                rebalance_timeout_ms: self.config.rebalance_timeout.as_millis() as u32,
            };
            let joined = match self.coordinator.join_group(&request).await {
                Ok(joined) => joined,
                Err(error) if coordinator_moved(&error) => {
                    self.find_coordinator_again().await?;
                    continue;
                }
                Err(error) => return Err(error),
            };
            match ErrorCode::from_code(joined.error) {
                ErrorCode::None => {}
                ErrorCode::UnknownMemberId => {
                    // Our membership lapsed: join as a new member.
                    self.member_id.clear();
                    continue;
                }
                ErrorCode::RebalanceInProgress => {
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                code if moved_code(code) => {
                    self.find_coordinator_again().await?;
                    continue;
                }
                code => {
                    return Err(NetError::Rejected {
                        code,
                        message: format!("join group {}", self.config.group),
                    })
                }
            }
            self.member_id = joined.member_id.clone();
            self.generation = joined.generation;
            let assignments = if joined.leader == joined.member_id {
                self.lead(&joined).await?
            } else {
                Vec::new()
            };
            let synced = match self
                .coordinator
                .sync_group(&SyncGroupRequest {
                    group: self.config.group.clone(),
                    generation: self.generation,
                    member_id: self.member_id.clone(),
                    assignments,
                })
                .await
            {
                Ok(synced) => synced,
                Err(error) if coordinator_moved(&error) => {
                    self.find_coordinator_again().await?;
                    continue;
                }
                Err(error) => return Err(error),
            };
            match ErrorCode::from_code(synced.error) {
                ErrorCode::None => {}
                code if moved_code(code) => {
                    self.find_coordinator_again().await?;
                    continue;
                }
                // Another rebalance began before this one settled.
                ErrorCode::RebalanceInProgress | ErrorCode::IllegalGeneration => continue,
                ErrorCode::UnknownMemberId => {
                    self.member_id.clear();
                    continue;
                }
                code => {
                    return Err(NetError::Rejected {
                        code,
                        message: format!("sync group {}", self.config.group),
                    })
                }
            }
            let assignment: ConsumerAssignment = if synced.assignment.is_empty() {
                ConsumerAssignment::default()
            } else {
                decode(&synced.assignment, "consumer assignment")?
            };
            self.take_up(assignment).await?;
            self.last_heartbeat = Instant::now();
            return Ok(());
        }
    }

    /// The leader's part: every member's assignment, from their
    /// subscriptions and the topics' partition counts.
    async fn lead(&mut self, joined: &JoinGroupResponse) -> Result<Vec<GroupAssignment>, NetError> {
        let assignor = Assignor::from_name(&joined.protocol).ok_or_else(|| NetError::Malformed {
            what: "JoinGroup response",
            reason: format!("unknown assignor {:?}", joined.protocol),
        })?;
        let mut members = Vec::new();
        let mut topics: Vec<String> = Vec::new();
        for member in &joined.members {
            let subscription: ConsumerSubscription = decode(&member.metadata, "consumer subscription")?;
            topics.extend(subscription.topics.iter().cloned());
            members.push((member.member_id.clone(), subscription.topics));
        }
        topics.sort();
        topics.dedup();
        let metadata = self.coordinator.metadata(Some(topics)).await?;
        let partitions: BTreeMap<String, u32> = metadata
            .topics
            .iter()
            .filter(|t| t.error == 0)
            .map(|t| (t.name.clone(), t.partitions.len() as u32))
            .collect();
        Ok(assign(assignor, &members, &partitions)
            .into_iter()
            .map(|(member_id, owned)| {
                let mut by_topic: BTreeMap<String, Vec<u32>> = BTreeMap::new();
                for (topic, p) in owned {
                    by_topic.entry(topic).or_default().push(p);
                }
                GroupAssignment {
                    member_id,
                    assignment: encode(&ConsumerAssignment {
                        partitions: by_topic
                            .into_iter()
                            .map(|(topic, partitions)| TopicPartitions { topic, partitions })
                            .collect(),
                    }),
                }
            })
            .collect())
    }

    async fn take_up(&mut self, assignment: ConsumerAssignment) -> Result<(), NetError> {
        let topics: Vec<OffsetFetchTopic> = assignment
            .partitions
            .iter()
            .map(|t| OffsetFetchTopic {
                name: t.topic.clone(),
                partitions: t.partitions.clone(),
            })
            .collect();
        let committed = loop {
            match self
                .coordinator
                .fetch_offsets(&self.config.group, Some(topics.clone()))
                .await
            {
                Ok(committed) => break committed,
                Err(error) if coordinator_moved(&error) => self.find_coordinator_again().await?,
                Err(error) => return Err(error),
            }
        };
        for owned in &assignment.partitions {
            // Through the coordinator just found: alive, where the bootstrap
            // node may not be.
            let mut consumer = Consumer::connect(&self.coordinator_addr, &owned.topic).await?;
            consumer.set_max_wait_ms(self.config.max_wait_ms);
            consumer.set_isolation_level(self.config.isolation_level);
            consumer.assign(&owned.partitions).await?;
            for &partition in &owned.partitions {
                let commit = committed
                    .iter()
                    .find(|(t, p, _)| *t == owned.topic && *p == partition)
                    .and_then(|(_, _, offset)| *offset);
                match (commit, self.config.reset) {
                    (Some(offset), _) => consumer.seek(partition, offset).await?,
                    (None, OffsetReset::Earliest) => {}
                    (None, OffsetReset::Latest) => {
                        let end = self
                            .coordinator
                            .list_offset(&owned.topic, partition, LATEST_TIMESTAMP)
                            .await?
                            .unwrap_or(0);
                        consumer.seek(partition, end).await?;
                    }
                }
                self.assignment.push((owned.topic.clone(), partition));
            }
            self.consumers.insert(owned.topic.clone(), consumer);
        }
        Ok(())
    }

    /// The next records of one assigned topic (possibly none). Heartbeats,
    /// auto-commits and rebalances happen here.
    pub async fn poll(&mut self) -> Result<Vec<GroupRecord>, NetError> {
        if self.last_heartbeat.elapsed() >= self.config.heartbeat_interval {
            self.last_heartbeat = Instant::now();
            let answer = match self
                .coordinator
                .heartbeat(&self.config.group, self.generation, &self.member_id)
                .await
            {
                Ok(answer) => answer,
                Err(error) if coordinator_moved(&error) => ErrorCode::NotCoordinator,
                Err(error) => return Err(error),
            };
            match answer {
                ErrorCode::None => {}
                // The next coordinator knows the group's members: this one
                // goes on, heartbeating there.
                code if moved_code(code) => self.find_coordinator_again().await?,
                ErrorCode::RebalanceInProgress => {
                    if self.config.auto_commit.is_some() {
                        // Commit what this generation consumed before giving
                        // it up; a refusal only means another repeats it.
                        let _ = self.commit_sync().await;
                    }
                    self.rejoin().await?;
                }
                ErrorCode::IllegalGeneration | ErrorCode::UnknownMemberId => {
                    if answer == ErrorCode::UnknownMemberId {
                        self.member_id.clear();
                    }
                    self.rejoin().await?;
                }
                code => {
                    return Err(NetError::Rejected {
                        code,
                        message: format!("heartbeat to group {}", self.config.group),
                    })
                }
            }
        }
        if let Some(interval) = self.config.auto_commit {
            if self.last_commit.elapsed() >= interval {
                match self.commit_sync().await {
                    Ok(()) => {}
                    // This member missed a rebalance: another member repeats
                    // what was not committed; join again.
                    Err(NetError::Rejected {
                        code:
                            code @ (ErrorCode::UnknownMemberId
                            | ErrorCode::IllegalGeneration
                            | ErrorCode::RebalanceInProgress),
                        ..
                    }) => {
                        if code == ErrorCode::UnknownMemberId {
                            self.member_id.clear();
                        }
                        self.rejoin().await?;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        if self.consumers.is_empty() {
            glommio::timer::sleep(Duration::from_millis(u64::from(self.config.max_wait_ms))).await;
            return Ok(Vec::new());
        }
        let topics: Vec<String> = self.consumers.keys().cloned().collect();
        let topic = topics[self.turn % topics.len()].clone();
        self.turn = self.turn.wrapping_add(1);
        let records = self.consumers.get_mut(&topic).expect("a consumer").poll().await?;
        Ok(records
            .into_iter()
            .map(|record| GroupRecord {
                topic: topic.clone(),
                record,
            })
            .collect())
    }

    /// The position (next offset) of every assigned partition.
    pub fn positions(&self) -> Vec<(String, u32, u64)> {
        self.assignment
            .iter()
            .filter_map(|(topic, p)| {
                let position = self.consumers.get(topic)?.position(*p)?;
                Some((topic.clone(), *p, position))
            })
            .collect()
    }

    /// Commits the positions of what `poll` has returned without waiting
    /// for the answer (Kafka's commitAsync): the commit travels on a second
    /// connection while the application goes on. One is in flight at a
    /// time, so commits land in order: this first waits for the previous
    /// one and returns its error, if it failed.
    pub async fn commit_async(&mut self) -> Result<(), NetError> {
        let previous = self.wait_commits().await;
        self.last_commit = Instant::now();
        let positions = self.positions();
        if positions.is_empty() {
            return previous;
        }
        let mut connection = match self.committer.take() {
            Some(connection) => connection,
            None => Connection::connect(&self.coordinator_addr).await?,
        };
        let (group, generation, member_id) = (self.config.group.clone(), self.generation, self.member_id.clone());
        self.async_commit = Some(
            glommio::spawn_local(async move {
                let result = connection
                    .commit_offsets(&group, generation, &member_id, &positions)
                    .await;
                (connection, result)
            })
            .detach(),
        );
        previous
    }

    /// Waits for the commit `commit_async` sent, if any; its outcome.
    pub async fn wait_commits(&mut self) -> Result<(), NetError> {
        let Some(task) = self.async_commit.take() else {
            return Ok(());
        };
        let (connection, result) = task.await.expect("commit task finished");
        if result.is_ok() {
            self.committer = Some(connection);
        }
        result
    }

    /// Commits the positions of what `poll` has returned, and waits until
    /// the coordinator has them durably (after any `commit_async` in flight).
    pub async fn commit_sync(&mut self) -> Result<(), NetError> {
        self.wait_commits().await?;
        self.last_commit = Instant::now();
        let positions = self.positions();
        self.commit(&positions).await
    }

    /// Commits on the coordinator, found again while it moves.
    async fn commit(&mut self, positions: &[(String, u32, u64)]) -> Result<(), NetError> {
        if positions.is_empty() {
            return Ok(());
        }
        loop {
            let committed = self
                .coordinator
                .commit_offsets(&self.config.group, self.generation, &self.member_id, positions)
                .await;
            match committed {
                Err(error) if coordinator_moved(&error) => self.find_coordinator_again().await?,
                other => return other,
            }
        }
    }

    /// The coordinator moved or went: asks for it again (within the
    /// rebalance timeout) and connects there. A commit connection to the
    /// old one goes.
    async fn find_coordinator_again(&mut self) -> Result<(), NetError> {
        let (addr, connection, known) = find_coordinator(&self.brokers, &self.config).await?;
        self.coordinator = connection;
        self.coordinator_addr = addr;
        self.committer = None;
        if !known.is_empty() {
            self.brokers = std::iter::once(self.addr.clone()).chain(known).collect();
        }
        Ok(())
    }

    /// Commits the given positions (next offsets to read) of partitions
    /// this member owns: for an application that commits exactly what it
    /// processed rather than everything `poll` returned.
    pub async fn commit_positions(&mut self, positions: &[(String, u32, u64)]) -> Result<(), NetError> {
        self.last_commit = Instant::now();
        self.commit(positions).await
    }

    /// Leaves the group (committing first with auto-commit), so the others
    /// rebalance at once instead of after the session timeout.
    pub async fn close(mut self) -> Result<(), NetError> {
        self.wait_commits().await?;
        if self.config.auto_commit.is_some() {
            self.commit_sync().await?;
        }
        let _ = self
            .coordinator
            .leave_group(&self.config.group, &self.member_id)
            .await?;
        Ok(())
    }
}

/// Between two asks for a coordinator that is not there yet (an election,
/// a coordinator loading its partition).
const COORDINATOR_RETRY: Duration = Duration::from_millis(100);

/// An error that says the coordinator is elsewhere or gone: ask again.
fn moved_code(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable | ErrorCode::CoordinatorLoadInProgress
    )
}

fn coordinator_moved(error: &NetError) -> bool {
    match error {
        NetError::Rejected { code, .. } => moved_code(*code),
        NetError::Io { .. } | NetError::ConnectionClosed { .. } => true,
        _ => false,
    }
}

/// Asks where the group's coordinator is and connects there: asks each of
/// `brokers` in turn (the bootstrap first, then every broker the last
/// metadata named, so a lost bootstrap node is no dead end), again while
/// none names one or it cannot be reached, up to the rebalance timeout.
/// Answers the brokers the asked one's metadata names now, too.
async fn find_coordinator(
    brokers: &[String],
    config: &GroupConfig,
) -> Result<(String, Connection, Vec<String>), NetError> {
    let deadline = Instant::now() + config.rebalance_timeout;
    loop {
        let mut last = None;
        for broker in brokers {
            let found = async {
                let mut asked = Connection::connect(broker).await?;
                let addr = asked.find_coordinator(&config.group, false).await?;
                let known = asked
                    .metadata(Some(Vec::new()))
                    .await?
                    .brokers
                    .iter()
                    .map(|b| format!("{}:{}", b.host, b.port))
                    .collect();
                let connection = Connection::connect(&addr).await?;
                Ok::<_, NetError>((addr, connection, known))
            }
            .await;
            match found {
                Err(error) if coordinator_moved(&error) => last = Some(error),
                other => return other,
            }
        }
        let error = last.unwrap_or_else(|| NetError::Malformed {
            what: "group consumer",
            reason: "no broker to ask for the coordinator".into(),
        });
        if Instant::now() >= deadline {
            return Err(error);
        }
        glommio::timer::sleep(COORDINATOR_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(specs: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        specs
            .iter()
            .map(|(id, topics)| (id.to_string(), topics.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    #[test]
    fn range_cuts_each_topic_into_consecutive_runs() {
        let partitions = BTreeMap::from([("a".to_string(), 5), ("b".to_string(), 2)]);
        let out = assign(
            Assignor::Range,
            &members(&[("m2", &["a", "b"]), ("m1", &["a", "b"])]),
            &partitions,
        );
        assert_eq!(
            out["m1"],
            vec![("a".into(), 0), ("a".into(), 1), ("a".into(), 2), ("b".into(), 0)]
        );
        assert_eq!(out["m2"], vec![("a".into(), 3), ("a".into(), 4), ("b".into(), 1)]);
    }

    #[test]
    fn round_robin_deals_partitions_in_turn_to_subscribers() {
        let partitions = BTreeMap::from([("a".to_string(), 3), ("b".to_string(), 2)]);
        let out = assign(
            Assignor::RoundRobin,
            &members(&[("m1", &["a"]), ("m2", &["a", "b"])]),
            &partitions,
        );
        assert_eq!(out["m1"], vec![("a".into(), 0), ("a".into(), 2)]);
        assert_eq!(out["m2"], vec![("a".into(), 1), ("b".into(), 0), ("b".into(), 1)]);
    }

    proptest::proptest! {
        #[test]
        fn every_partition_goes_to_exactly_one_subscriber(
            counts in proptest::collection::vec(0u32..20, 1..4),
            subs in proptest::collection::vec(proptest::collection::vec(proptest::bool::ANY, 3), 1..6),
            round_robin in proptest::bool::ANY,
        ) {
            let topics: Vec<String> = (0..counts.len()).map(|i| format!("t{i}")).collect();
            let partitions: BTreeMap<String, u32> = topics.iter().cloned().zip(counts.iter().copied()).collect();
            let members: Vec<(String, Vec<String>)> = subs
                .iter()
                .enumerate()
                .map(|(i, wants)| {
                    let chosen = topics.iter().zip(wants).filter(|(_, w)| **w).map(|(t, _)| t.clone()).collect();
                    (format!("m{i}"), chosen)
                })
                .collect();
            let assignor = if round_robin { Assignor::RoundRobin } else { Assignor::Range };
            let out = assign(assignor, &members, &partitions);
            for (topic, &count) in &partitions {
                let anyone = members.iter().any(|(_, t)| t.contains(topic));
                for p in 0..count {
                    let owners: Vec<&String> = out
                        .iter()
                        .filter(|(_, owned)| owned.contains(&(topic.clone(), p)))
                        .map(|(m, _)| m)
                        .collect();
                    proptest::prop_assert_eq!(owners.len(), usize::from(anyone), "{} {}", topic, p);
                    for owner in owners {
                        let subscribed = members.iter().any(|(m, t)| m == owner && t.contains(topic));
                        proptest::prop_assert!(subscribed);
                    }
                }
            }
        }
    }
}
