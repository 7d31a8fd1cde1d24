//! The group coordinator: consumer groups' membership and rebalances, and
//! their committed offsets in memory. One `Coordinator` per shard holds the
//! groups whose offsets partition (`__consumer_offsets`, by hash of the
//! group id) that shard owns.
//!
//! It is Kafka's classic protocol, and like Kafka's it is blind to what the
//! members consume: protocol metadata and assignments are opaque bytes that
//! the members' client library writes (the group's leader computes the
//! assignment). A rebalance runs: a member joins, leaves or times out, the
//! group goes to `PreparingRebalance`, every member must join again within
//! the rebalance timeout (those that do not are removed), the join
//! completes with a new generation, the leader's `SyncGroup` hands every
//! member its assignment, and the group is `Stable`. A member's heartbeat,
//! sync or commit names its generation, and one from an older generation is
//! refused, so a member that missed a rebalance can neither keep nor commit
//! partitions it no longer owns.
//!
//! No I/O here: time comes in as `now`, delayed answers go out on one-shot
//! channels, and persisting a commit is the caller's (the shard writes it to
//! the offsets log, then applies it here).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use net::error::ErrorCode;

use crate::offsets::{GroupRecord, MemberRecord};

/// Bounds the coordinator enforces, from the broker's configuration.
#[derive(Clone, Debug)]
pub struct GroupLimits {
    pub session_timeout_min: Duration,
    pub session_timeout_max: Duration,
    pub members_max: usize,
    /// How long the first rebalance of an empty group waits for more
    /// members before completing (Kafka's group.initial.rebalance.delay.ms).
    pub initial_rebalance_delay: Duration,
    pub group_id_bytes_max: usize,
    pub offset_metadata_bytes_max: usize,
    /// Offsets of a group that has had no members for this long expire.
    pub offsets_retention: Duration,
}

impl Default for GroupLimits {
    fn default() -> GroupLimits {
        GroupLimits {
            session_timeout_min: Duration::from_millis(1_000),
            session_timeout_max: Duration::from_secs(300),
            members_max: 1_000,
            initial_rebalance_delay: Duration::from_millis(300),
            group_id_bytes_max: 255,
            offset_metadata_bytes_max: 4096,
            offsets_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// Kafka's names, as `kafka-consumer-groups --describe` prints them.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub group: String,
    /// Empty for a member joining for the first time.
    pub member_id: String,
    pub client_id: String,
    pub protocol_type: String,
    /// (assignor name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Vec<u8>)>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// KIP-394 (Kafka's JoinGroup v4 and later): a member joining without
    /// an id is answered MEMBER_ID_REQUIRED with one, and counts as a
    /// member only when it joins again with it, so a client that gives up
    /// after its first join leaves no member behind to wait out.
    pub require_member_id: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinOutcome {
    pub error: ErrorCode,
    pub generation: i32,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Every member and its metadata for the chosen protocol: for the
    /// leader only; empty for the others.
    pub members: Vec<(String, Vec<u8>)>,
}

impl JoinOutcome {
    fn error(error: ErrorCode, member_id: &str) -> JoinOutcome {
        JoinOutcome {
            error,
            generation: -1,
            protocol: String::new(),
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncOutcome {
    pub error: ErrorCode,
    pub assignment: Vec<u8>,
}

/// An answer now, or one that comes when the rebalance gets there.
pub enum Pending<T> {
    Ready(T),
    Wait(oneshot::Receiver<T>),
}

impl<T> Pending<T> {
    /// The answer; `gone` if the coordinator dropped the wait (the shard
    /// stopped).
    pub async fn get(self, gone: T) -> T {
        match self {
            Pending::Ready(value) => value,
            Pending::Wait(receiver) => receiver.await.unwrap_or(gone),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub offset: u64,
    pub metadata: String,
    pub commit_time_ms: i64,
    /// Where the commit lies in the offsets log: of two commits of one
    /// partition made durable out of order, the later in the log wins.
    pub log_offset: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub client_id: String,
    pub assignment: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    pub group: String,
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub generation: i32,
    pub members: Vec<MemberDescription>,
}

/// What a group's members consume (`Coordinator::subscribed_topics`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subscribed {
    Topics(std::collections::BTreeSet<String>),
    All,
}

/// The topics of a consumer protocol subscription (Kafka's
/// ConsumerProtocolSubscription: version, then the topics, in every
/// version), or None if the bytes are not one. A member's bytes: every
/// count is checked against what is there.
pub fn consumer_subscription(bytes: &[u8]) -> Option<Vec<String>> {
    let mut at = 2; // the version
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let slice = bytes.get(*at..at.checked_add(n)?)?;
        *at += n;
        Some(slice)
    };
    let count = i32::from_be_bytes(take(&mut at, 4)?.try_into().ok()?);
    if count < 0 || count as usize > bytes.len() / 2 {
        return None;
    }
    let mut topics = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = i16::from_be_bytes(take(&mut at, 2)?.try_into().ok()?);
        let name = take(&mut at, usize::try_from(len).ok()?)?;
        topics.push(String::from_utf8(name.to_vec()).ok()?);
    }
    Some(topics)
}

struct Member {
    client_id: String,
    protocols: Vec<(String, Vec<u8>)>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    assignment: Vec<u8>,
    last_heartbeat: Instant,
    join: Option<oneshot::Sender<JoinOutcome>>,
    sync: Option<oneshot::Sender<SyncOutcome>>,
}

struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: String,
    members: BTreeMap<String, Member>,
    /// While preparing a rebalance: when it completes even if some members
    /// have not joined again (they are removed), and the earliest moment it
    /// may complete (the initial delay of an empty group).
    rebalance_deadline: Instant,
    rebalance_not_before: Instant,
    empty_since: Option<Instant>,
    offsets: BTreeMap<(String, u32), Committed>,
}

impl Group {
    fn new(now: Instant) -> Group {
        Group {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: String::new(),
            members: BTreeMap::new(),
            rebalance_deadline: now,
            rebalance_not_before: now,
            empty_since: Some(now),
            offsets: BTreeMap::new(),
        }
    }

    /// Starts a rebalance: members must join again; pending syncs learn of
    /// it.
    fn prepare_rebalance(&mut self, now: Instant, limits: &GroupLimits) {
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        if self.state == GroupState::Empty {
            self.rebalance_not_before = now + limits.initial_rebalance_delay;
        } else {
            self.rebalance_not_before = now;
        }
        self.rebalance_deadline = now + timeout.max(limits.initial_rebalance_delay);
        self.state = GroupState::PreparingRebalance;
        for member in self.members.values_mut() {
            if let Some(sync) = member.sync.take() {
                let _ = sync.send(SyncOutcome {
                    error: ErrorCode::RebalanceInProgress,
                    assignment: Vec::new(),
                });
            }
        }
    }

    /// Removes a member, answering anything it waits for; the group
    /// rebalances (or empties) around its absence.
    fn remove(&mut self, member_id: &str, now: Instant, limits: &GroupLimits) {
        let Some(member) = self.members.remove(member_id) else {
            return;
        };
        if let Some(join) = member.join {
            let _ = join.send(JoinOutcome::error(ErrorCode::UnknownMemberId, member_id));
        }
        if let Some(sync) = member.sync {
            let _ = sync.send(SyncOutcome {
                error: ErrorCode::UnknownMemberId,
                assignment: Vec::new(),
            });
        }
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.generation += 1;
            self.protocol.clear();
            self.leader.clear();
            self.empty_since = Some(now);
        } else if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(now, limits);
        }
    }

    /// Completes the join phase if every member has joined again (or the
    /// rebalance timed out): a new generation, the leader gets everyone's
    /// metadata.
    fn try_complete_join(&mut self, now: Instant, limits: &GroupLimits) {
        if self.state != GroupState::PreparingRebalance || now < self.rebalance_not_before {
            return;
        }
        let all_joined = self.members.values().all(|m| m.join.is_some());
        if !all_joined {
            if now < self.rebalance_deadline {
                return;
            }
            let late: Vec<String> = self
                .members
                .iter()
                .filter(|(_, m)| m.join.is_none())
                .map(|(id, _)| id.clone())
                .collect();
            for id in late {
                tracing::info!(member = %id, "member did not join the rebalance in time; removed");
                self.remove(&id, now, limits);
            }
            if self.members.is_empty() {
                return;
            }
            // `remove` may have started a new rebalance state; stay in it.
            self.state = GroupState::PreparingRebalance;
        }
        if !self.members.contains_key(&self.leader) {
            self.leader = self.members.keys().next().cloned().unwrap_or_default();
        }
        // The leader's most preferred protocol that every member supports.
        let leader = &self.members[&self.leader];
        let chosen = leader
            .protocols
            .iter()
            .map(|(name, _)| name)
            .find(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
            })
            .cloned()
            .unwrap_or_default();
        self.protocol = chosen;
        self.generation += 1;
        self.state = GroupState::CompletingRebalance;
        self.empty_since = None;
        let everyone: Vec<(String, Vec<u8>)> = self
            .members
            .iter()
            .map(|(id, m)| {
                let metadata = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == self.protocol)
                    .map(|(_, meta)| meta.clone())
                    .unwrap_or_default();
                (id.clone(), metadata)
            })
            .collect();
        for (id, member) in self.members.iter_mut() {
            member.assignment.clear();
            member.last_heartbeat = now;
            if let Some(join) = member.join.take() {
                let _ = join.send(JoinOutcome {
                    error: ErrorCode::None,
                    generation: self.generation,
                    protocol: self.protocol.clone(),
                    leader: self.leader.clone(),
                    member_id: id.clone(),
                    members: if *id == self.leader {
                        everyone.clone()
                    } else {
                        Vec::new()
                    },
                });
            }
        }
    }
}

pub struct Coordinator {
    limits: GroupLimits,
    groups: BTreeMap<String, Group>,
    next_member: u64,
    /// Ids given with MEMBER_ID_REQUIRED and not yet joined with, by
    /// (group, member id), until when they may be.
    pending_members: BTreeMap<(String, String), Instant>,
}

/// Ids given out with MEMBER_ID_REQUIRED and not yet used, over all groups
/// of a coordinator; each expires after its session timeout.
pub const PENDING_MEMBERS_MAX: usize = 4096;

impl Coordinator {
    pub fn new(limits: GroupLimits) -> Coordinator {
        Coordinator {
            limits,
            groups: BTreeMap::new(),
            next_member: 0,
            pending_members: BTreeMap::new(),
        }
    }

    pub fn limits(&self) -> &GroupLimits {
        &self.limits
    }

    pub fn join(&mut self, request: JoinRequest, now: Instant) -> Pending<JoinOutcome> {
        let limits = self.limits.clone();
        let refuse = |error| Pending::Ready(JoinOutcome::error(error, &request.member_id));
        if request.group.is_empty() || request.group.len() > limits.group_id_bytes_max {
            return refuse(ErrorCode::InvalidGroupId);
        }
        if request.session_timeout < limits.session_timeout_min || request.session_timeout > limits.session_timeout_max
        {
            return refuse(ErrorCode::InvalidSessionTimeout);
        }
        if request.protocol_type.is_empty() || request.protocols.is_empty() {
            return refuse(ErrorCode::InconsistentGroupProtocol);
        }
        self.pending_members.retain(|_, until| *until > now);
        let pending_key = (request.group.clone(), request.member_id.clone());
        let pending = self.pending_members.contains_key(&pending_key);
        let known = self
            .groups
            .get(&request.group)
            .is_some_and(|g| g.members.contains_key(&request.member_id));
        if !request.member_id.is_empty() && !known && !pending {
            return refuse(ErrorCode::UnknownMemberId);
        }
        if request.member_id.is_empty() && request.require_member_id {
            // Ids handed out count against the group's size, as Kafka counts
            // its pending members.
            let members = self.groups.get(&request.group).map_or(0, |g| g.members.len());
            let group_pending = self
                .pending_members
                .range((request.group.clone(), String::new())..)
                .take_while(|((group, _), _)| *group == request.group)
                .count();
            if members + group_pending >= limits.members_max {
                return refuse(ErrorCode::GroupMaxSizeReached);
            }
            if self.pending_members.len() >= PENDING_MEMBERS_MAX {
                return refuse(ErrorCode::CoordinatorNotAvailable);
            }
            self.next_member += 1;
            let member_id = format!("{}-{}-{}", request.client_id, now_nanos_tag(), self.next_member);
            self.pending_members.insert(
                (request.group.clone(), member_id.clone()),
                now + request.session_timeout,
            );
            return Pending::Ready(JoinOutcome::error(ErrorCode::MemberIdRequired, &member_id));
        }
        let group = self
            .groups
            .entry(request.group.clone())
            .or_insert_with(|| Group::new(now));
        if !group.members.is_empty() {
            let shares_one = request.protocols.iter().any(|(name, _)| {
                group
                    .members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            });
            if group.protocol_type != request.protocol_type || !shares_one {
                return refuse(ErrorCode::InconsistentGroupProtocol);
            }
        }
        let member_id = if request.member_id.is_empty() || pending {
            if group.members.len() >= limits.members_max {
                return refuse(ErrorCode::GroupMaxSizeReached);
            }
            if pending {
                // Its id is now a member's: no longer pending.
                self.pending_members.remove(&pending_key);
                request.member_id.clone()
            } else {
                self.next_member += 1;
                format!("{}-{}-{}", request.client_id, now_nanos_tag(), self.next_member)
            }
        } else if group.members.contains_key(&request.member_id) {
            request.member_id.clone()
        } else {
            return refuse(ErrorCode::UnknownMemberId);
        };
        group.protocol_type = request.protocol_type.clone();
        let (tx, rx) = oneshot::channel();
        let member = group.members.entry(member_id.clone()).or_insert_with(|| Member {
            client_id: request.client_id.clone(),
            protocols: Vec::new(),
            session_timeout: request.session_timeout,
            rebalance_timeout: request.rebalance_timeout,
            assignment: Vec::new(),
            last_heartbeat: now,
            join: None,
            sync: None,
        });
        member.protocols = request.protocols;
        member.session_timeout = request.session_timeout;
        member.rebalance_timeout = request.rebalance_timeout;
        member.last_heartbeat = now;
        if let Some(previous) = member.join.replace(tx) {
            let _ = previous.send(JoinOutcome::error(ErrorCode::RebalanceInProgress, &member_id));
        }
        match group.state {
            GroupState::PreparingRebalance => {}
            // A known member that joins again outside a rebalance has lost
            // its assignment (or changed its subscription): rebalance, as
            // Kafka does.
            GroupState::Empty | GroupState::CompletingRebalance | GroupState::Stable => {
                group.prepare_rebalance(now, &limits);
            }
        }
        group.try_complete_join(now, &limits);
        Pending::Wait(rx)
    }

    pub fn sync(
        &mut self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Vec<u8>)>,
        now: Instant,
    ) -> Pending<SyncOutcome> {
        let refuse = |error| {
            Pending::Ready(SyncOutcome {
                error,
                assignment: Vec::new(),
            })
        };
        let Some(group) = self.groups.get_mut(group_id) else {
            return refuse(ErrorCode::UnknownMemberId);
        };
        if !group.members.contains_key(member_id) {
            return refuse(ErrorCode::UnknownMemberId);
        }
        if generation != group.generation {
            return refuse(ErrorCode::IllegalGeneration);
        }
        match group.state {
            GroupState::Empty => refuse(ErrorCode::UnknownMemberId),
            GroupState::PreparingRebalance => refuse(ErrorCode::RebalanceInProgress),
            GroupState::Stable => {
                let member = group.members.get_mut(member_id).expect("checked above");
                member.last_heartbeat = now;
                Pending::Ready(SyncOutcome {
                    error: ErrorCode::None,
                    assignment: member.assignment.clone(),
                })
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                {
                    let member = group.members.get_mut(member_id).expect("checked above");
                    member.last_heartbeat = now;
                    member.sync = Some(tx);
                }
                if member_id == group.leader {
                    let mut assignments: BTreeMap<String, Vec<u8>> = assignments.into_iter().collect();
                    for (id, member) in group.members.iter_mut() {
                        member.assignment = assignments.remove(id).unwrap_or_default();
                    }
                    group.state = GroupState::Stable;
                    for member in group.members.values_mut() {
                        if let Some(sync) = member.sync.take() {
                            let _ = sync.send(SyncOutcome {
                                error: ErrorCode::None,
                                assignment: member.assignment.clone(),
                            });
                        }
                    }
                }
                Pending::Wait(rx)
            }
        }
    }

    pub fn heartbeat(&mut self, group_id: &str, generation: i32, member_id: &str, now: Instant) -> ErrorCode {
        let Some(group) = self.groups.get_mut(group_id) else {
            return ErrorCode::UnknownMemberId;
        };
        let Some(member) = group.members.get_mut(member_id) else {
            return ErrorCode::UnknownMemberId;
        };
        member.last_heartbeat = now;
        if group.state == GroupState::PreparingRebalance {
            return ErrorCode::RebalanceInProgress;
        }
        if generation != group.generation {
            return ErrorCode::IllegalGeneration;
        }
        ErrorCode::None
    }

    pub fn leave(&mut self, group_id: &str, member_id: &str, now: Instant) -> ErrorCode {
        let limits = self.limits.clone();
        let Some(group) = self.groups.get_mut(group_id) else {
            return ErrorCode::UnknownMemberId;
        };
        if !group.members.contains_key(member_id) {
            return ErrorCode::UnknownMemberId;
        }
        tracing::info!(group = group_id, member = member_id, "member left");
        group.remove(member_id, now, &limits);
        group.try_complete_join(now, &limits);
        ErrorCode::None
    }

    /// Whether a commit may be made: by a member of the current generation
    /// of a group that is not rebalancing, or by anyone (generation -1, no
    /// member id) to a group that has no members.
    pub fn check_commit(&self, group_id: &str, generation: i32, member_id: &str) -> ErrorCode {
        if group_id.is_empty() || group_id.len() > self.limits.group_id_bytes_max {
            return ErrorCode::InvalidGroupId;
        }
        let Some(group) = self.groups.get(group_id) else {
            return if generation < 0 {
                ErrorCode::None
            } else {
                ErrorCode::IllegalGeneration
            };
        };
        if generation < 0 && member_id.is_empty() {
            return if group.members.is_empty() {
                ErrorCode::None
            } else {
                ErrorCode::UnknownMemberId
            };
        }
        if !group.members.contains_key(member_id) {
            return ErrorCode::UnknownMemberId;
        }
        if generation != group.generation {
            return ErrorCode::IllegalGeneration;
        }
        // Members commit what they consumed as a rebalance begins (before
        // they give their partitions up), as in Kafka; between the join and
        // the sync nobody owns anything yet.
        match group.state {
            GroupState::Stable | GroupState::PreparingRebalance => ErrorCode::None,
            GroupState::CompletingRebalance | GroupState::Empty => ErrorCode::RebalanceInProgress,
        }
    }

    /// Records a commit that is durable in the offsets log at `log_offset`
    /// (or replayed from it); `None` deletes (a tombstone). Of two records
    /// of one partition applied out of log order, the later in the log
    /// wins, a tombstone included.
    pub fn apply_commit(
        &mut self,
        group_id: &str,
        topic: &str,
        partition: u32,
        log_offset: u64,
        committed: Option<Committed>,
        now: Instant,
    ) {
        let group = self
            .groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(now));
        let key = (topic.to_string(), partition);
        let newer = group
            .offsets
            .get(&key)
            .is_none_or(|current| current.log_offset < log_offset);
        if newer {
            match committed {
                Some(committed) => {
                    debug_assert_eq!(committed.log_offset, log_offset);
                    group.offsets.insert(key, committed);
                }
                None => {
                    group.offsets.remove(&key);
                }
            }
        }
        if group.offsets.is_empty() && group.members.is_empty() {
            self.groups.remove(group_id);
        }
    }

    /// The topics `group`'s members consume, which OffsetDelete must leave
    /// alone; None for a group not held here. An empty group consumes
    /// none. A group of another protocol than Kafka's consumer protocol, or
    /// whose chosen protocol's subscription does not parse, counts as
    /// consuming every topic while it has members.
    pub fn subscribed_topics(&self, group_id: &str) -> Option<Subscribed> {
        let group = self.groups.get(group_id)?;
        if group.members.is_empty() {
            return Some(Subscribed::Topics(std::collections::BTreeSet::new()));
        }
        if group.protocol_type != "consumer" {
            return Some(Subscribed::All);
        }
        let mut topics = std::collections::BTreeSet::new();
        for member in group.members.values() {
            let Some((_, metadata)) = member.protocols.iter().find(|(name, _)| *name == group.protocol) else {
                return Some(Subscribed::All);
            };
            match consumer_subscription(metadata) {
                Some(subscribed) => topics.extend(subscribed),
                None => return Some(Subscribed::All),
            }
        }
        Some(Subscribed::Topics(topics))
    }

    /// Every committed offset held here: (group, topic, partition, offset).
    pub fn committed_offsets(&self) -> Vec<(&str, &str, u32, u64)> {
        self.groups
            .iter()
            .flat_map(|(name, group)| {
                group.offsets.iter().map(move |((topic, partition), committed)| {
                    (name.as_str(), topic.as_str(), *partition, committed.offset)
                })
            })
            .collect()
    }

    /// Committed offsets of a group: of the partitions named, or all.
    pub fn offsets(&self, group_id: &str, only: Option<&[(String, u32)]>) -> Vec<((String, u32), Option<Committed>)> {
        let group = self.groups.get(group_id);
        match only {
            Some(keys) => keys
                .iter()
                .map(|key| (key.clone(), group.and_then(|g| g.offsets.get(key).cloned())))
                .collect(),
            None => group
                .map(|g| g.offsets.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect())
                .unwrap_or_default(),
        }
    }

    /// Whether an offset is expired now (see `tick`).
    pub fn is_expired(&self, group_id: &str, topic: &str, partition: u32, now: Instant, now_ms: i64) -> bool {
        let retention = self.limits.offsets_retention;
        let Some(group) = self.groups.get(group_id) else {
            return false;
        };
        let empty_long_enough = group.members.is_empty()
            && group
                .empty_since
                .is_some_and(|since| now.saturating_duration_since(since) > retention);
        let old_enough = group
            .offsets
            .get(&(topic.to_string(), partition))
            .is_some_and(|c| now_ms.saturating_sub(c.commit_time_ms) > retention.as_millis() as i64);
        empty_long_enough && old_enough
    }

    /// Every live commit of the groups `owned` selects: what a compaction
    /// of the offsets log keeps.
    pub fn commits(&self, owned: impl Fn(&str) -> bool) -> Vec<(String, String, u32, Committed)> {
        self.groups
            .iter()
            .filter(|(id, _)| owned(id))
            .flat_map(|(id, g)| {
                g.offsets
                    .iter()
                    .map(move |((topic, p), c)| (id.clone(), topic.clone(), *p, c.clone()))
            })
            .collect()
    }

    /// Forgets the groups `owned` selects (their offsets partition is led
    /// elsewhere now): a member waiting in a join or sync is answered
    /// NOT_COORDINATOR, so it looks for the new coordinator. Answers how
    /// many went.
    pub fn unload(&mut self, owned: impl Fn(&str) -> bool) -> usize {
        let before = self.groups.len();
        self.groups.retain(|id, group| {
            if !owned(id) {
                return true;
            }
            for (member_id, member) in std::mem::take(&mut group.members) {
                if let Some(join) = member.join {
                    let _ = join.send(JoinOutcome::error(ErrorCode::NotCoordinator, &member_id));
                }
                if let Some(sync) = member.sync {
                    let _ = sync.send(SyncOutcome {
                        error: ErrorCode::NotCoordinator,
                        assignment: Vec::new(),
                    });
                }
            }
            false
        });
        before - self.groups.len()
    }

    /// The membership to write once `member_id`, the leader, has settled
    /// `generation`'s assignments: None unless that is what is current.
    pub fn settled(&self, group_id: &str, generation: i32, member_id: &str) -> Option<GroupRecord> {
        let group = self.groups.get(group_id)?;
        if group.state != GroupState::Stable || group.generation != generation || group.leader != member_id {
            return None;
        }
        Some(GroupRecord {
            generation: group.generation,
            protocol_type: group.protocol_type.clone(),
            protocol: group.protocol.clone(),
            leader: group.leader.clone(),
            members: group
                .members
                .iter()
                .map(|(id, m)| MemberRecord {
                    member_id: id.clone(),
                    client_id: m.client_id.clone(),
                    session_timeout_ms: m.session_timeout.as_millis().min(u128::from(u32::MAX)) as u32,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis().min(u128::from(u32::MAX)) as u32,
                    subscription: m
                        .protocols
                        .iter()
                        .find(|(name, _)| *name == group.protocol)
                        .map(|(_, metadata)| metadata.clone())
                        .unwrap_or_default(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Whether the group has no members (or is not known).
    pub fn is_empty(&self, group_id: &str) -> bool {
        self.groups.get(group_id).is_none_or(|g| g.members.is_empty())
    }

    /// Takes a group's membership from the offsets log (a coordinator
    /// taking over): its members stable in their generation, each with a
    /// full session from `now`, as if it had just heartbeated. None: the
    /// group emptied. A group in the middle of something here is left as
    /// it is (only a replay, before any request, restores).
    pub fn restore(&mut self, group_id: &str, record: Option<GroupRecord>, now: Instant) {
        let group = self
            .groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(now));
        if group.members.values().any(|m| m.join.is_some() || m.sync.is_some()) {
            return;
        }
        group.members.clear();
        match record {
            None => {
                group.state = GroupState::Empty;
                group.protocol.clear();
                group.leader.clear();
                group.empty_since = Some(now);
            }
            Some(record) => {
                group.generation = record.generation;
                group.protocol_type = record.protocol_type;
                group.protocol = record.protocol;
                group.leader = record.leader;
                for member in record.members {
                    group.members.insert(
                        member.member_id,
                        Member {
                            client_id: member.client_id,
                            // A rejoin brings every protocol again; the
                            // chosen one (its subscription, for
                            // OffsetDelete) is all a stable group needs.
                            protocols: vec![(group.protocol.clone(), member.subscription)],
                            session_timeout: Duration::from_millis(u64::from(member.session_timeout_ms)),
                            rebalance_timeout: Duration::from_millis(u64::from(member.rebalance_timeout_ms)),
                            assignment: member.assignment,
                            last_heartbeat: now,
                            join: None,
                            sync: None,
                        },
                    );
                }
                if group.members.is_empty() {
                    group.state = GroupState::Empty;
                    group.empty_since = Some(now);
                } else {
                    group.state = GroupState::Stable;
                    group.empty_since = None;
                }
            }
        }
        if group.members.is_empty() && group.offsets.is_empty() {
            self.groups.remove(group_id);
        }
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let group = self.groups.get(group_id)?;
        Some(GroupDescription {
            group: group_id.to_string(),
            state: group.state,
            protocol_type: group.protocol_type.clone(),
            protocol: group.protocol.clone(),
            generation: group.generation,
            members: group
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    client_id: m.client_id.clone(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    pub fn list(&self) -> Vec<(String, GroupState, String)> {
        self.groups
            .iter()
            .map(|(id, g)| (id.clone(), g.state, g.protocol_type.clone()))
            .collect()
    }

    /// Advances time: members whose session lapsed are removed, rebalances
    /// whose time is up complete. Returns the offsets that expired (groups
    /// empty for longer than the retention), for the caller to tombstone.
    pub fn tick(&mut self, now: Instant, now_ms: i64) -> Vec<(String, String, u32)> {
        let limits = self.limits.clone();
        let retention_ms = limits.offsets_retention.as_millis() as i64;
        let mut expired = Vec::new();
        for (group_id, group) in self.groups.iter_mut() {
            let lapsed: Vec<String> = group
                .members
                .iter()
                // A member waiting in a join is not expected to heartbeat.
                .filter(|(_, m)| {
                    m.join.is_none() && now.saturating_duration_since(m.last_heartbeat) > m.session_timeout
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in lapsed {
                tracing::info!(group = %group_id, member = %id, "member's session timed out; removed");
                group.remove(&id, now, &limits);
            }
            group.try_complete_join(now, &limits);
            // As in Kafka: an offset expires once its group has been empty
            // for the retention and the offset itself is older than that.
            if let Some(since) = group.empty_since {
                if group.members.is_empty() && now.saturating_duration_since(since) > limits.offsets_retention {
                    expired.extend(
                        group
                            .offsets
                            .iter()
                            .filter(|(_, c)| now_ms.saturating_sub(c.commit_time_ms) > retention_ms)
                            .map(|((t, p), _)| (group_id.clone(), t.clone(), *p)),
                    );
                }
            }
        }
        // Groups that hold nothing (every member gone, no offsets) go.
        self.groups
            .retain(|_, g| !g.members.is_empty() || !g.offsets.is_empty());
        expired
    }
}

/// A tag that keeps member ids unique across broker restarts (a member id
/// from before a restart must not name a new member).
fn now_nanos_tag() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod subscription_tests {
    use super::*;

    /// A ConsumerProtocolSubscription of `version` naming `topics`, with
    /// user data after them.
    fn subscription(version: i16, topics: &[&str]) -> Vec<u8> {
        let mut bytes = version.to_be_bytes().to_vec();
        bytes.extend((topics.len() as i32).to_be_bytes());
        for topic in topics {
            bytes.extend((topic.len() as i16).to_be_bytes());
            bytes.extend(topic.as_bytes());
        }
        bytes.extend((-1i32).to_be_bytes());
        bytes
    }

    #[test]
    fn a_consumer_subscription_names_its_topics_and_bad_bytes_name_none() {
        assert_eq!(
            consumer_subscription(&subscription(3, &["a", "bb"])),
            Some(vec!["a".to_string(), "bb".to_string()])
        );
        assert_eq!(consumer_subscription(&subscription(0, &[])), Some(vec![]));
        let whole = subscription(1, &["topic"]);
        for cut in 0..whole.len() - 4 {
            assert_eq!(consumer_subscription(&whole[..cut]), None, "cut at {cut}");
        }
        // A count far past the bytes reserves nothing for it.
        let mut lying = 0i16.to_be_bytes().to_vec();
        lying.extend(i32::MAX.to_be_bytes());
        assert_eq!(consumer_subscription(&lying), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> GroupLimits {
        GroupLimits {
            initial_rebalance_delay: Duration::ZERO,
            ..GroupLimits::default()
        }
    }

    fn join_request(member_id: &str) -> JoinRequest {
        JoinRequest {
            group: "g".into(),
            member_id: member_id.into(),
            client_id: "c".into(),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), b"meta".to_vec())],
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(5),
            require_member_id: false,
        }
    }

    fn ready<T>(pending: Pending<T>) -> T {
        match pending {
            Pending::Ready(value) => value,
            Pending::Wait(mut rx) => rx.try_recv().unwrap().expect("answered"),
        }
    }

    fn waiting<T>(pending: Pending<T>) -> oneshot::Receiver<T> {
        match pending {
            Pending::Wait(rx) => rx,
            Pending::Ready(_) => panic!("answered at once"),
        }
    }

    #[test]
    fn a_coordinator_taking_over_knows_the_settled_members_and_their_generation() {
        let mut first = Coordinator::new(limits());
        let now = Instant::now();
        let joined = ready(first.join(join_request(""), now));
        let id = joined.member_id;
        assert_eq!(first.settled("g", 1, &id), None, "not settled before the leader's sync");
        ready(first.sync("g", 1, &id, vec![(id.clone(), b"p0".to_vec())], now));
        let record = first.settled("g", 1, &id).expect("settled");
        assert_eq!(first.settled("g", 0, &id), None, "an older generation is not current");
        let decoded = crate::offsets::decode_record(
            &crate::offsets::encode_group_key("g"),
            Some(&crate::offsets::encode_group(&record)),
        );
        let Some(crate::offsets::OffsetsRecord::Group(_, decoded)) = decoded else {
            panic!("a group record reads back");
        };
        let mut next = Coordinator::new(limits());
        next.restore("g", decoded, now);
        assert_eq!(next.heartbeat("g", 1, &id, now), ErrorCode::None);
        assert_eq!(next.check_commit("g", 1, &id), ErrorCode::None);
        assert_eq!(ready(next.sync("g", 1, &id, vec![], now)).assignment, b"p0");
        // Its session runs from the take-over: a member gone with the old
        // coordinator is removed when it lapses.
        next.tick(now + Duration::from_secs(11), 0);
        assert!(next.is_empty("g"));
        next.restore("g", None, now);
        assert_eq!(next.check_commit("g", 1, &id), ErrorCode::IllegalGeneration);
    }

    #[test]
    fn one_member_joins_syncs_and_is_stable() {
        let mut c = Coordinator::new(limits());
        let now = Instant::now();
        let joined = ready(c.join(join_request(""), now));
        assert_eq!(joined.error, ErrorCode::None);
        assert_eq!(joined.generation, 1);
        assert_eq!(joined.leader, joined.member_id);
        assert_eq!(joined.members.len(), 1);
        let id = joined.member_id;
        let synced = ready(c.sync("g", 1, &id, vec![(id.clone(), b"p0".to_vec())], now));
        assert_eq!(synced.assignment, b"p0");
        assert_eq!(c.describe("g").unwrap().state, GroupState::Stable);
        assert_eq!(c.heartbeat("g", 1, &id, now), ErrorCode::None);
        assert_eq!(c.heartbeat("g", 0, &id, now), ErrorCode::IllegalGeneration);
        assert_eq!(c.check_commit("g", 1, &id), ErrorCode::None);
        assert_eq!(c.check_commit("g", 0, &id), ErrorCode::IllegalGeneration);
        assert_eq!(c.check_commit("g", -1, ""), ErrorCode::UnknownMemberId);
    }

    #[test]
    fn kafka_members_get_their_id_first_and_join_with_it() {
        let mut c = Coordinator::new(limits());
        let now = Instant::now();
        let first = JoinRequest {
            require_member_id: true,
            ..join_request("")
        };
        let given = ready(c.join(first, now));
        assert_eq!(given.error, ErrorCode::MemberIdRequired);
        assert!(!given.member_id.is_empty());
        assert!(c.describe("g").is_none_or(|g| g.members.is_empty()), "not a member yet");
        let joined = ready(c.join(join_request(&given.member_id), now));
        assert_eq!(joined.error, ErrorCode::None);
        assert_eq!(joined.member_id, given.member_id);
        assert_eq!(joined.leader, given.member_id);
        // An id used once is a member's; a made-up one is refused.
        assert_eq!(
            ready(c.join(join_request("made-up"), now)).error,
            ErrorCode::UnknownMemberId
        );
        // An id not joined with within the session timeout expires.
        let late = ready(c.join(
            JoinRequest {
                require_member_id: true,
                ..join_request("")
            },
            now,
        ));
        let later = now + Duration::from_secs(11);
        assert_eq!(
            ready(c.join(join_request(&late.member_id), later)).error,
            ErrorCode::UnknownMemberId
        );
        // Ids handed out count against the group's size.
        let mut small = Coordinator::new(GroupLimits {
            members_max: 2,
            ..limits()
        });
        let first_join = || JoinRequest {
            require_member_id: true,
            ..join_request("")
        };
        assert_eq!(ready(small.join(first_join(), now)).error, ErrorCode::MemberIdRequired);
        assert_eq!(ready(small.join(first_join(), now)).error, ErrorCode::MemberIdRequired);
        assert_eq!(
            ready(small.join(first_join(), now)).error,
            ErrorCode::GroupMaxSizeReached
        );
    }

    #[test]
    fn a_second_member_rebalances_the_group_and_the_first_must_rejoin() {
        let mut c = Coordinator::new(limits());
        let now = Instant::now();
        let a = ready(c.join(join_request(""), now)).member_id;
        ready(c.sync("g", 1, &a, vec![(a.clone(), b"all".to_vec())], now));
        // b joins: the join waits for a to come back.
        let mut b_join = waiting(c.join(join_request(""), now));
        assert!(b_join.try_recv().unwrap().is_none());
        assert_eq!(c.heartbeat("g", 1, &a, now), ErrorCode::RebalanceInProgress);
        assert_eq!(
            c.check_commit("g", 1, &a),
            ErrorCode::None,
            "a commit before giving partitions up"
        );
        let a_join = ready(c.join(join_request(&a), now));
        let b_join = b_join.try_recv().unwrap().unwrap();
        assert_eq!((a_join.generation, b_join.generation), (2, 2));
        assert_eq!(a_join.leader, a);
        assert_eq!(a_join.members.len(), 2, "the leader sees every member");
        assert!(b_join.members.is_empty());
        // b's sync waits for the leader's.
        let mut b_sync = waiting(c.sync("g", 2, &b_join.member_id, vec![], now));
        let a_sync = ready(c.sync(
            "g",
            2,
            &a,
            vec![(a.clone(), b"p0".to_vec()), (b_join.member_id.clone(), b"p1".to_vec())],
            now,
        ));
        assert_eq!(a_sync.assignment, b"p0");
        assert_eq!(b_sync.try_recv().unwrap().unwrap().assignment, b"p1");
        // An old generation's sync or commit is refused.
        assert_eq!(
            ready(c.sync("g", 1, &a, vec![], now)).error,
            ErrorCode::IllegalGeneration
        );
        assert_eq!(c.check_commit("g", 1, &a), ErrorCode::IllegalGeneration);
    }

    #[test]
    fn a_member_that_stops_heartbeating_is_removed_and_the_rest_rebalance() {
        let mut c = Coordinator::new(limits());
        let t0 = Instant::now();
        let a = ready(c.join(join_request(""), t0)).member_id;
        let mut b = waiting(c.join(join_request(""), t0));
        ready(c.join(join_request(&a), t0));
        let b = b.try_recv().unwrap().unwrap().member_id;
        ready(c.sync("g", 2, &a, vec![], t0));
        ready(c.sync("g", 2, &b, vec![], t0));
        // b keeps heartbeating; a goes silent past its 10 s session.
        let t1 = t0 + Duration::from_secs(6);
        assert_eq!(c.heartbeat("g", 2, &b, t1), ErrorCode::None);
        let t2 = t0 + Duration::from_secs(11);
        c.tick(t2, 0);
        let group = c.describe("g").unwrap();
        assert_eq!(group.state, GroupState::PreparingRebalance);
        assert_eq!(group.members.len(), 1);
        assert_eq!(c.heartbeat("g", 2, &a, t2), ErrorCode::UnknownMemberId);
        let joined = ready(c.join(join_request(&b), t2));
        assert_eq!((joined.generation, joined.leader.as_str()), (3, b.as_str()));
    }

    #[test]
    fn a_member_that_does_not_rejoin_in_time_is_dropped_from_the_rebalance() {
        let mut c = Coordinator::new(limits());
        let t0 = Instant::now();
        let a = ready(c.join(join_request(""), t0)).member_id;
        ready(c.sync("g", 1, &a, vec![], t0));
        let mut b = waiting(c.join(join_request(""), t0));
        // a heartbeats (learning of the rebalance) but never rejoins.
        assert_eq!(
            c.heartbeat("g", 1, &a, t0 + Duration::from_secs(1)),
            ErrorCode::RebalanceInProgress
        );
        c.tick(t0 + Duration::from_secs(4), 0);
        assert!(b.try_recv().unwrap().is_none(), "waits out the rebalance timeout");
        c.tick(t0 + Duration::from_secs(6), 0);
        let joined = b.try_recv().unwrap().unwrap();
        assert_eq!(joined.members.len(), 1);
        assert_eq!(joined.leader, joined.member_id);
    }

    #[test]
    fn leaving_empties_the_group_and_offsets_outlive_members_until_retention() {
        let mut c = Coordinator::new(GroupLimits {
            offsets_retention: Duration::from_secs(60),
            ..limits()
        });
        let t0 = Instant::now();
        let a = ready(c.join(join_request(""), t0)).member_id;
        ready(c.sync("g", 1, &a, vec![], t0));
        let committed = Committed {
            offset: 42,
            metadata: String::new(),
            commit_time_ms: 0,
            log_offset: 7,
        };
        let older = Committed {
            offset: 40,
            log_offset: 6,
            ..committed.clone()
        };
        c.apply_commit("g", "t", 0, 7, Some(committed.clone()), t0);
        c.apply_commit("g", "t", 0, 6, Some(older), t0);
        assert_eq!(
            c.offsets("g", None)[0].1.as_ref().unwrap().offset,
            42,
            "the later commit in the log wins"
        );
        assert_eq!(c.leave("g", &a, t0), ErrorCode::None);
        assert_eq!(c.describe("g").unwrap().state, GroupState::Empty);
        assert_eq!(
            c.check_commit("g", -1, ""),
            ErrorCode::None,
            "admin commits to an empty group"
        );
        assert_eq!(c.offsets("g", None), vec![(("t".to_string(), 0), Some(committed))]);
        // The commit was made at wall-clock time 0: old enough once the
        // group has been empty for the retention.
        assert!(c.tick(t0 + Duration::from_secs(30), 1_000_000).is_empty());
        assert_eq!(
            c.tick(t0 + Duration::from_secs(61), 1_000_000),
            vec![("g".to_string(), "t".to_string(), 0)]
        );
        // A recent commit outlives the group's emptiness.
        assert!(c.tick(t0 + Duration::from_secs(61), 30_000).is_empty());
        assert!(c.is_expired("g", "t", 0, t0 + Duration::from_secs(61), 1_000_000));
        assert!(!c.is_expired("g", "t", 0, t0 + Duration::from_secs(61), 30_000));
        assert!(!c.is_expired("g", "t", 0, t0 + Duration::from_secs(30), 1_000_000));
        // A tombstone older in the log than the commit does not delete it.
        c.apply_commit("g", "t", 0, 5, None, t0);
        assert_eq!(c.offsets("g", None).len(), 1);
        c.apply_commit("g", "t", 0, 8, None, t0);
        assert!(
            c.describe("g").is_none(),
            "a group with no members and no offsets is gone"
        );
    }

    #[test]
    fn bad_joins_are_refused() {
        let mut c = Coordinator::new(limits());
        let now = Instant::now();
        let bad_timeout = JoinRequest {
            session_timeout: Duration::from_millis(10),
            ..join_request("")
        };
        assert_eq!(ready(c.join(bad_timeout, now)).error, ErrorCode::InvalidSessionTimeout);
        assert_eq!(
            ready(c.join(join_request("ghost"), now)).error,
            ErrorCode::UnknownMemberId
        );
        let a = ready(c.join(join_request(""), now)).member_id;
        let other_protocol = JoinRequest {
            protocols: vec![("sticky".into(), vec![])],
            ..join_request("")
        };
        assert_eq!(
            ready(c.join(other_protocol, now)).error,
            ErrorCode::InconsistentGroupProtocol
        );
        let no_group = JoinRequest {
            group: String::new(),
            ..join_request("")
        };
        assert_eq!(ready(c.join(no_group, now)).error, ErrorCode::InvalidGroupId);
        assert!(c.describe("g").unwrap().members.iter().any(|m| m.member_id == a));
    }
}
