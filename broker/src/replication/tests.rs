//! A partition's Raft group of three replicas in one thread, each over a
//! real O_DIRECT partition log in its own directory, the messages between
//! them carried by the test: crashes (a replica dropped with its log, its
//! directory opened again), isolations and heals, and what must hold
//! through them: every acknowledged batch at the offset it was acknowledged
//! with, replicas byte for byte the same, high watermarks that never go
//! back.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

use raft::prelude::Message;
use storage::batch::{self, RecordBatchBuilder};
use storage::{LogConfig, Offset, PartitionLog};

use super::replica::{Acks, Appended, PartitionReplica, Reply};
use crate::config::RaftTiming;

/// A follower lagging this many ticks leaves the ISR (the default timing).
const REPLICA_LAG_TICKS: u64 = 300;
use crate::error::BrokerError;

const VOTERS: [u64; 3] = [1, 2, 3];
/// Ticks a group may take to elect a leader (random election timeouts and
/// pre-votes can take a few rounds).
const ELECTION_TICKS_MAX: usize = 300;
/// Turns a group may take to settle after the last proposal or heal.
const SETTLE_TURNS_MAX: usize = 400;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 20,
        index_interval_bytes: 1024,
        write_buffer_bytes: 1 << 20,
        batch_bytes_max: 512 << 10,
        record_bytes_max: 512 << 10,
        ..LogConfig::default()
    }
}

/// A batch of one record whose value names it.
fn frame(tag: u64, value_bytes: usize) -> Vec<u8> {
    let mut value = format!("batch-{tag:08}-").into_bytes();
    value.resize(value_bytes.max(value.len()), b'.');
    let mut builder = RecordBatchBuilder::new();
    builder.push(0, Some(&tag.to_le_bytes()), Some(&value), vec![]);
    builder.build()
}

fn names(frame: &[u8], tag: u64) -> bool {
    let needle = format!("batch-{tag:08}-").into_bytes();
    frame.windows(needle.len()).any(|w| w == needle.as_slice())
}

impl PartitionReplica {
    /// acks=all with no min.insync.replicas.
    fn propose_all(&mut self, frame: Vec<u8>) -> Result<Reply, BrokerError> {
        self.propose(frame, Acks::All, 1)
    }
}

async fn open(dir: &std::path::Path, id: u64, config: LogConfig) -> PartitionReplica {
    open_partition(dir, 0, id, config).await
}

/// Node `id`'s replica of partition `partition` of topic "t", its log in `dir`.
async fn open_partition(dir: &std::path::Path, partition: u32, id: u64, config: LogConfig) -> PartitionReplica {
    let log = Rc::new(PartitionLog::open(dir, config).await.expect("the log opens"));
    PartitionReplica::open(
        "t",
        partition,
        id,
        &VOTERS,
        log,
        storage::log::system_clock(),
        &RaftTiming::default(),
    )
    .await
    .expect("the replica opens")
}

/// Every batch frame of a log, in order.
async fn frames(log: &PartitionLog) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut from = log.log_start_offset();
    while from < log.log_end_offset() {
        let read = log.read(from, 1 << 20).await.unwrap();
        for frame in batch::frames(&read.bytes) {
            if batch::peek_header(frame).unwrap().base_offset >= from {
                frames.push(frame.to_vec());
            }
        }
        from = read.next_offset;
    }
    frames
}

struct Waiting {
    tag: u64,
    reply: Reply,
}

struct Group {
    config: LogConfig,
    dirs: BTreeMap<u64, tempfile::TempDir>,
    replicas: BTreeMap<u64, Option<PartitionReplica>>,
    network: VecDeque<Message>,
    isolated: BTreeSet<u64>,
    /// Replicas that neither tick nor handle a Ready (a SIGSTOPped
    /// process); what is sent to them waits in `held`.
    paused: BTreeSet<u64>,
    held: VecDeque<Message>,
    waiting: Vec<Waiting>,
    /// Acknowledged batches: tag, and where the leader said it is.
    acked: Vec<(u64, Appended)>,
    refused: usize,
    /// The highest high watermark each replica showed.
    watermarks: BTreeMap<u64, Offset>,
}

impl Group {
    async fn new() -> Group {
        Group::with_config(config()).await
    }

    async fn with_config(config: LogConfig) -> Group {
        let mut group = Group {
            config,
            dirs: BTreeMap::new(),
            replicas: BTreeMap::new(),
            network: VecDeque::new(),
            isolated: BTreeSet::new(),
            paused: BTreeSet::new(),
            held: VecDeque::new(),
            waiting: Vec::new(),
            acked: Vec::new(),
            refused: 0,
            watermarks: BTreeMap::new(),
        };
        for id in VOTERS {
            let dir = tempfile::tempdir().unwrap();
            group
                .replicas
                .insert(id, Some(open(dir.path(), id, group.config.clone()).await));
            group.dirs.insert(id, dir);
        }
        group
    }

    fn replica(&mut self, id: u64) -> &mut PartitionReplica {
        self.replicas.get_mut(&id).unwrap().as_mut().expect("the replica is up")
    }

    fn crash(&mut self, id: u64) {
        // Dropped with its log: what was not synced is gone, as in a kill -9.
        self.replicas.insert(id, None);
    }

    async fn restart(&mut self, id: u64) {
        // A new process: what was sent to the old one is gone with it.
        self.paused.remove(&id);
        self.held.retain(|m| m.to != id);
        let replica = open(self.dirs[&id].path(), id, self.config.clone()).await;
        self.replicas.insert(id, Some(replica));
    }

    /// Every replica persists its Ready, then the messages go where they
    /// can (not to or from a replica that is down or isolated).
    async fn turn(&mut self) {
        let mut outbox = Vec::new();
        let paused = &self.paused;
        for (_, replica) in self.replicas.iter_mut().filter(|(id, _)| !paused.contains(id)) {
            let Some(replica) = replica else { continue };
            replica
                .handle_ready(&mut |messages| outbox.extend(messages))
                .await
                .expect("a Ready persists");
        }
        self.network.extend(outbox);
        while let Some(message) = self.network.pop_front() {
            if self.isolated.contains(&message.from) || self.isolated.contains(&message.to) {
                continue;
            }
            if self.paused.contains(&message.to) {
                self.held.push_back(message);
                continue;
            }
            if let Some(Some(replica)) = self.replicas.get_mut(&message.to) {
                replica.step(message);
            }
        }
        for (id, replica) in self.replicas.iter().filter_map(|(id, r)| Some((*id, r.as_ref()?))) {
            let seen = self.watermarks.entry(id).or_default();
            // Within one run of a replica; a restart starts from its checkpoint.
            *seen = (*seen).max(replica.high_watermark());
        }
        let mut still = Vec::new();
        for mut waiting in self.waiting.drain(..) {
            match waiting.reply.try_recv() {
                Ok(Some(Ok(appended))) => self.acked.push((waiting.tag, appended)),
                Ok(Some(Err(BrokerError::NotLeaderOrFollower { .. }))) => self.refused += 1,
                Ok(Some(Err(e))) => panic!("batch {}: {e}", waiting.tag),
                // The replica that proposed it went down: outcome unknown.
                Err(_) => {}
                Ok(None) => still.push(waiting),
            }
        }
        self.waiting = still;
    }

    async fn tick(&mut self) {
        for (id, replica) in self.replicas.iter_mut() {
            if let Some(replica) = replica.as_mut().filter(|_| !self.paused.contains(id)) {
                replica.tick(&|_| true);
            }
        }
        self.turn().await;
    }

    /// The leader the replicas that are up and not isolated agree on.
    async fn leader(&mut self) -> u64 {
        for _ in 0..ELECTION_TICKS_MAX {
            self.tick().await;
            let leaders: Vec<u64> = self
                .replicas
                .iter()
                .filter(|(id, _)| !self.isolated.contains(id) && !self.paused.contains(id))
                .filter_map(|(id, r)| r.as_ref().filter(|r| r.is_leader()).map(|_| *id))
                .collect();
            if let [leader] = leaders[..] {
                return leader;
            }
        }
        panic!("no leader after {ELECTION_TICKS_MAX} ticks");
    }

    /// A paused replica wakes (SIGCONT): what was sent to it while it
    /// slept arrives before it handles a Ready.
    fn resume(&mut self, id: u64) {
        self.paused.remove(&id);
        let (arrived, held): (VecDeque<Message>, VecDeque<Message>) =
            std::mem::take(&mut self.held).into_iter().partition(|m| m.to == id);
        self.held = held;
        for message in arrived {
            if let Some(Some(replica)) = self.replicas.get_mut(&message.to) {
                replica.step(message);
            }
        }
    }

    fn propose(&mut self, leader: u64, tag: u64, value_bytes: usize) {
        match self.replica(leader).propose_all(frame(tag, value_bytes)) {
            Ok(reply) => self.waiting.push(Waiting { tag, reply }),
            Err(BrokerError::NotLeaderOrFollower { .. }) => self.refused += 1,
            Err(e) => panic!("batch {tag}: {e}"),
        }
    }

    /// Turns (ticking now and then) until every replica that is up holds
    /// the leader's log and high watermark and no reply is outstanding.
    async fn settle(&mut self) {
        for turn in 0..SETTLE_TURNS_MAX {
            if turn % 4 == 0 {
                self.tick().await;
            } else {
                self.turn().await;
            }
            let up: Vec<&PartitionReplica> = self.replicas.values().flatten().collect();
            let Some(leader) = up.iter().find(|r| r.is_leader()) else {
                continue;
            };
            let agreed = up.iter().all(|r| {
                r.high_watermark() == leader.log().log_end_offset()
                    && r.log().log_end_offset() == leader.log().log_end_offset()
            });
            if agreed && self.waiting.is_empty() {
                return;
            }
        }
        panic!("the group did not settle in {SETTLE_TURNS_MAX} turns");
    }

    /// Every replica that is up holds the same bytes from the latest of
    /// their log starts on (retention moves each one's alone), and every
    /// acknowledged batch from there on is where it was acknowledged.
    async fn check(&mut self) {
        let up = || self.replicas.iter().filter_map(|(id, r)| Some((*id, r.as_ref()?)));
        let start = up()
            .map(|(_, r)| r.log().log_start_offset())
            .max()
            .expect("a replica is up");
        let mut logs = Vec::new();
        for (id, replica) in up() {
            let mut frames = frames(replica.log()).await;
            frames.retain(|f| batch::peek_header(f).unwrap().base_offset >= start);
            logs.push((id, frames));
        }
        let (first_id, first) = &logs[0];
        for (id, frames) in &logs[1..] {
            assert_eq!(
                frames.len(),
                first.len(),
                "replicas {first_id} and {id} hold as many batches"
            );
            for (i, (a, b)) in first.iter().zip(frames).enumerate() {
                assert!(a == b, "batch {i} differs between replicas {first_id} and {id}");
            }
        }
        let by_offset: BTreeMap<Offset, &Vec<u8>> = first
            .iter()
            .map(|f| (batch::peek_header(f).unwrap().base_offset, f))
            .collect();
        let mut next = start;
        for (offset, frame) in &by_offset {
            assert_eq!(*offset, next, "offsets follow each other");
            next = batch::peek_header(frame).unwrap().next_offset();
        }
        for (tag, appended) in self.acked.iter().filter(|(_, a)| a.base_offset >= start) {
            let frame = by_offset
                .get(&appended.base_offset)
                .unwrap_or_else(|| panic!("acknowledged batch {tag} at {} is lost", appended.base_offset));
            assert!(
                names(frame, *tag),
                "offset {} holds another batch than {tag}",
                appended.base_offset
            );
        }
        let tags: BTreeSet<u64> = self.acked.iter().map(|(tag, _)| *tag).collect();
        assert_eq!(tags.len(), self.acked.len(), "no batch acknowledged twice");
    }
}

fn run<T>(test: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("a glommio executor (io_uring) is available")
        .run(test)
}

#[test]
fn three_replicas_commit_in_order_and_hold_the_same_bytes() {
    run(async {
        let mut group = Group::new().await;
        let leader = group.leader().await;
        for tag in 0..50 {
            group.propose(leader, tag, 100);
            if tag % 7 == 0 {
                group.turn().await;
            }
        }
        group.settle().await;
        assert_eq!(group.acked.len(), 50, "every batch is acknowledged");
        let mut offsets: Vec<u64> = group.acked.iter().map(|(_, a)| a.base_offset.0).collect();
        offsets.sort_unstable();
        assert_eq!(offsets, (0..50).collect::<Vec<_>>(), "one offset per one-record batch");
        group.check().await;
        // A follower refuses to lead a write.
        let follower = VOTERS.into_iter().find(|id| *id != leader).unwrap();
        assert!(matches!(
            group.replica(follower).propose_all(frame(99, 10)),
            Err(BrokerError::NotLeaderOrFollower { leader: Some(l), .. }) if l == leader
        ));
        // Every batch carries the term it was appended in as its epoch.
        let term = group.replica(leader).term() as i32;
        let log = group.replica(leader).log().clone();
        assert!(frames(&log)
            .await
            .iter()
            .all(|f| batch::peek_header(f).unwrap().leader_epoch == term));
        assert_eq!(log.leader_epochs().last().map(|e| e.epoch), Some(term));
    });
}

#[test]
fn a_leaders_loss_loses_nothing_acknowledged() {
    run(async {
        let mut group = Group::new().await;
        let mut tag = 0;
        for round in 0..4 {
            let leader = group.leader().await;
            for _ in 0..20 {
                group.propose(leader, tag, 200);
                tag += 1;
                if tag % 3 == 0 {
                    group.turn().await;
                }
            }
            // Killed with batches in flight: some acknowledged, some not.
            group.crash(leader);
            group.leader().await;
            group.restart(leader).await;
            group.settle().await;
            group.check().await;
            assert!(group.acked.len() >= 10 * (round + 1), "most batches are acknowledged");
        }
        // Everything restarted from its files alone agrees again.
        for id in VOTERS {
            group.crash(id);
        }
        for id in VOTERS {
            group.restart(id).await;
        }
        let leader = group.leader().await;
        group.propose(leader, tag, 10);
        group.settle().await;
        group.check().await;
        assert!(group.refused + group.acked.len() <= tag as usize + 1);
    });
}

#[test]
fn an_isolated_leader_commits_nothing_and_its_tail_is_cut() {
    run(async {
        let mut group = Group::new().await;
        let old = group.leader().await;
        group.propose(old, 0, 10);
        group.settle().await;
        group.isolated.insert(old);
        for tag in 1..6 {
            group.propose(old, tag, 10);
        }
        let new = group.leader().await;
        assert_ne!(new, old);
        let watermark = group.replica(old).high_watermark();
        for tag in 6..11 {
            group.propose(new, tag, 10);
        }
        for _ in 0..50 {
            group.turn().await;
        }
        assert_eq!(
            group.replica(old).high_watermark(),
            watermark,
            "cut off, it commits nothing"
        );
        assert!(
            group.replica(old).log().log_end_offset() > watermark,
            "it holds an uncommitted tail"
        );
        group.isolated.clear();
        group.settle().await;
        group.check().await;
        let acked: BTreeSet<u64> = group.acked.iter().map(|(tag, _)| *tag).collect();
        assert_eq!(
            acked,
            [0, 6, 7, 8, 9, 10].into_iter().collect(),
            "the cut-off leader's batches are not"
        );
        assert_eq!(group.refused, 5, "each of them is answered NOT_LEADER_OR_FOLLOWER");
    });
}

#[test]
fn a_follower_far_behind_is_sent_the_log_from_disk() {
    run(async {
        let mut group = Group::new().await;
        let leader = group.leader().await;
        let follower = VOTERS.into_iter().find(|id| *id != leader).unwrap();
        group.crash(follower);
        // Past what the leader keeps in memory for sending.
        let batches = (2 * super::log_storage::TAIL_BYTES_MAX / (64 << 10)) as u64;
        for tag in 0..batches {
            group.propose(leader, tag, 64 << 10);
            group.turn().await;
        }
        group.settle().await;
        assert_eq!(group.acked.len() as u64, batches);
        group.restart(follower).await;
        group.settle().await;
        group.check().await;
        assert!(
            group.replica(leader).fetches_served() > 0,
            "the old entries were read back"
        );
        // The follower restarted again reads its log back from its last
        // applied checkpoint, not from the start, and lost nothing.
        group.crash(follower);
        group.restart(follower).await;
        assert!(
            group.replica(follower).recovered_from() > Offset(0),
            "read back from a checkpoint"
        );
        group.settle().await;
        group.check().await;
    });
}

#[test]
fn a_leader_hands_its_leadership_over_without_an_election_timeout() {
    run(async {
        let mut group = Group::new().await;
        let old = group.leader().await;
        group.propose(old, 0, 10);
        group.settle().await;
        let new = group
            .replica(old)
            .hand_over()
            .expect("a leader has followers to hand over to");
        // Turns without ticks: no election timeout can pass.
        for _ in 0..10 {
            group.turn().await;
        }
        assert!(group.replica(new).is_leader(), "replica {new} leads at once");
        assert!(!group.replica(old).is_leader());
        group.propose(new, 1, 10);
        group.settle().await;
        group.check().await;
        assert_eq!(group.acked.len(), 2);
    });
}

#[derive(Clone, Debug)]
enum Step {
    /// Batches proposed to the leader, if there is one, of this many bytes.
    Propose(u8, u16),
    Crash(u64),
    Restart(u64),
    Isolate(u64),
    Heal,
    Pause(u64),
    Resume(u64),
    Turns(u8),
    Ticks(u8),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (1u8..8, 1u16..4096).prop_map(|(n, bytes)| Step::Propose(n, bytes)),
        1 => (1u64..=3).prop_map(Step::Crash),
        1 => (1u64..=3).prop_map(Step::Restart),
        1 => (1u64..=3).prop_map(Step::Isolate),
        1 => Just(Step::Heal),
        1 => (1u64..=3).prop_map(Step::Pause),
        1 => (1u64..=3).prop_map(Step::Resume),
        2 => (1u8..6).prop_map(Step::Turns),
        2 => (1u8..30).prop_map(Step::Ticks),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Random crashes (with what was not synced lost), restarts from the
    /// replicas' directories, isolations and heals, pauses (SIGSTOP) and
    /// resumes among proposals: once
    /// all are up and healed, every replica holds the same bytes, offsets
    /// follow each other, and every batch acknowledged is at the offset it
    /// was acknowledged with.
    #[test]
    fn a_group_keeps_what_it_acknowledged_through_faults(steps in proptest::collection::vec(step(), 1..40)) {
        run(async {
            let mut group = Group::new().await;
            let mut tag = 0;
            for step in steps {
                match step {
                    Step::Propose(n, bytes) => {
                        let leader = group
                            .replicas
                            .iter()
                            .find_map(|(id, r)| r.as_ref().filter(|r| r.is_leader()).map(|_| *id));
                        if let Some(leader) = leader {
                            for _ in 0..n {
                                group.propose(leader, tag, bytes as usize);
                                tag += 1;
                            }
                        }
                    }
                    Step::Crash(id) => group.crash(id),
                    Step::Restart(id) => {
                        if group.replicas[&id].is_none() {
                            group.restart(id).await;
                        }
                    }
                    Step::Isolate(id) => {
                        group.isolated.insert(id);
                    }
                    Step::Heal => group.isolated.clear(),
                    Step::Pause(id) => {
                        group.paused.insert(id);
                    }
                    Step::Resume(id) => group.resume(id),
                    Step::Turns(n) => {
                        for _ in 0..n {
                            group.turn().await;
                        }
                    }
                    Step::Ticks(n) => {
                        for _ in 0..n {
                            group.tick().await;
                        }
                    }
                }
            }
            group.isolated.clear();
            for id in VOTERS {
                group.resume(id);
                if group.replicas[&id].is_none() {
                    group.restart(id).await;
                }
            }
            group.leader().await;
            group.settle().await;
            group.check().await;
        });
    }
}

/// A group that acknowledged 20 batches and settled: it, its leader and a
/// follower.
async fn settled_group() -> (Group, u64, u64) {
    let mut group = Group::new().await;
    let leader = group.leader().await;
    for tag in 0..20 {
        group.propose(leader, tag, 300);
    }
    group.settle().await;
    let follower = VOTERS.into_iter().find(|id| *id != leader).unwrap();
    (group, leader, follower)
}

/// A follower's directory is lost while the others delete the head of
/// their logs: it comes back as a new member (its node's next
/// incarnation), which the leader swaps in for the old one by a joint
/// configuration change. The new member is sent a snapshot (naming the
/// configuration at the log start) and the changes after it as entries,
/// holds the same bytes, counts in the majority once another replica is
/// lost, and every replica keeps its configuration across restarts.
#[test]
fn a_replica_whose_directory_was_lost_is_swapped_for_its_next_incarnation() {
    run(async {
        let mut group = Group::with_config(retention_config()).await;
        let leader = group.leader().await;
        let lost = VOTERS.into_iter().find(|id| *id != leader).unwrap();
        let other = VOTERS.into_iter().find(|id| *id != leader && *id != lost).unwrap();
        group.crash(lost);
        std::fs::remove_dir_all(group.dirs[&lost].path()).unwrap();
        for tag in 0..100 {
            group.propose(leader, tag, 8 << 10);
            group.turn().await;
        }
        group.settle().await;
        for id in [leader, other] {
            group
                .replica(id)
                .apply_retention()
                .await
                .unwrap()
                .expect("retention moved the log start");
        }

        let new = net::cluster::member_id(lost, 1);
        let dir = tempfile::tempdir().unwrap();
        let replica = open(dir.path(), new, group.config.clone()).await;
        group.replicas.insert(new, Some(replica));
        group.dirs.insert(new, dir);
        // Until the leader swaps it in, the new member is no voter: it
        // neither campaigns nor is sent anything.
        for _ in 0..30 {
            group.tick().await;
        }
        assert!(!group.replica(new).is_leader());
        assert_eq!(group.replica(new).log().log_end_offset(), Offset(0));
        let current = move |node: u64| Some(if node == lost { new } else { node });
        let mut sorted = vec![leader, other, new];
        sorted.sort_unstable();
        for _ in 0..SETTLE_TURNS_MAX {
            group.replica(leader).reconfigure(&current);
            group.tick().await;
            if group
                .replicas
                .values()
                .flatten()
                .all(|r| r.voters() == (sorted.clone(), Vec::new()))
            {
                break;
            }
        }
        for id in [leader, other, new] {
            assert_eq!(
                group.replica(id).voters(),
                (sorted.clone(), Vec::new()),
                "replica {id}'s configuration"
            );
        }
        group.settle().await;
        group.check().await;
        assert!(
            group.replica(new).log().log_start_offset() > Offset(0),
            "it was sent a snapshot"
        );
        assert_eq!(group.replica(leader).in_sync_replicas().len(), 3, "one in sync a node");

        // The leader goes: the other and the new member are the majority.
        group.crash(leader);
        let next = group.leader().await;
        assert!(next == other || next == new);
        for tag in 100..110 {
            group.propose(next, tag, 100);
        }
        group.settle().await;
        group.check().await;
        // Every replica keeps the configuration across a restart.
        for id in [other, new] {
            group.crash(id);
        }
        for id in [leader, other, new] {
            group.restart(id).await;
        }
        for id in [leader, other, new] {
            assert_eq!(
                group.replica(id).voters(),
                (sorted.clone(), Vec::new()),
                "replica {id} after a restart"
            );
        }
        let next = group.leader().await;
        group.propose(next, 110, 100);
        group.settle().await;
        group.check().await;
        assert_eq!(group.acked.len(), 111, "every batch is acknowledged");
    });
}

/// A group quiesced under a leader whose directory is then lost: its node
/// comes back as another member and beats again, so its followers never
/// hear the silence that would wake them. Told of the node's new member
/// (`reconfigure`), they wake and elect a leader among themselves.
#[test]
fn followers_quiesced_under_a_lost_leader_wake_once_its_node_is_another_member() {
    run(async {
        let mut group = Group::new().await;
        let leader = group.leader().await;
        group.propose(leader, 0, 100);
        group.settle().await;
        for _ in 0..20 {
            group.tick().await;
        }
        let others: Vec<u64> = VOTERS.into_iter().filter(|id| *id != leader).collect();
        for id in &others {
            assert!(group.replica(*id).is_quiesced(), "replica {id} quiesced");
        }
        group.crash(leader);
        // Its node is heard from (every tick says so here): they wait.
        for _ in 0..50 {
            group.tick().await;
        }
        for id in &others {
            assert!(!group.replica(*id).is_leader() && group.replica(*id).is_quiesced());
        }
        let new = net::cluster::member_id(leader, 1);
        let current = move |node: u64| Some(if node == leader { new } else { node });
        for id in &others {
            group.replica(*id).reconfigure(&current);
        }
        let next = group.leader().await;
        assert!(others.contains(&next), "a leader among the others: {next}");
        group.propose(next, 1, 100);
        group.settle().await;
        group.check().await;
    });
}

/// Segments of 64 KiB, of which retention keeps 256 KiB.
fn retention_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        retention_bytes: Some(256 << 10),
        ..config()
    }
}

#[test]
fn a_follower_behind_the_leaders_log_start_is_sent_a_snapshot() {
    run(async {
        let mut group = Group::with_config(retention_config()).await;
        let leader = group.leader().await;
        let behind = VOTERS.into_iter().find(|id| *id != leader).unwrap();
        group.crash(behind);
        for tag in 0..100 {
            group.propose(leader, tag, 8 << 10);
            group.turn().await;
        }
        group.settle().await;
        // Each replica that is up forgets the head retention lets go.
        let mut starts = BTreeMap::new();
        for id in VOTERS.into_iter().filter(|id| *id != behind) {
            let start = group
                .replica(id)
                .apply_retention()
                .await
                .unwrap()
                .expect("retention moved the log start");
            assert!(start.offset > Offset(0) && start.index > 1);
            assert_eq!(group.replica(id).log().log_start_offset(), start.offset);
            starts.insert(id, start);
        }
        assert!(
            group.replica(leader).apply_retention().await.unwrap().is_none(),
            "a second pass finds nothing more"
        );
        group.restart(behind).await;
        group.settle().await;
        group.check().await;
        let caught_up = group.replica(behind).log().clone();
        assert_eq!(
            caught_up.log_start_offset(),
            starts[&leader].offset,
            "the follower's log starts where the leader's snapshot said"
        );
        assert_eq!(
            frames(&caught_up).await.len() as u64,
            100 - starts[&leader].offset.0,
            "and holds every batch after it"
        );
        // What was installed survives a restart, and the group goes on with
        // the snapshotted replica leading.
        group.crash(behind);
        group.restart(behind).await;
        group.settle().await;
        group.check().await;
        group.crash(leader);
        let next = group.leader().await;
        for tag in 100..110 {
            group.propose(next, tag, 100);
        }
        group.restart(leader).await;
        group.settle().await;
        group.check().await;
        assert_eq!(group.acked.len(), 110, "every batch is acknowledged");
    });
}

#[test]
fn delete_records_moves_every_replicas_log_start_through_the_raft_log() {
    run(async {
        let mut group = Group::with_config(LogConfig {
            segment_bytes: 64 << 10,
            ..config()
        })
        .await;
        let leader = group.leader().await;
        let behind = VOTERS.into_iter().find(|id| *id != leader).unwrap();
        group.crash(behind);
        for tag in 0..100 {
            group.propose(leader, tag, 8 << 10);
            group.turn().await;
        }
        group.settle().await;
        let segments = group.replica(leader).log().segment_base_offsets().len();
        let past = group.replica(leader).propose_log_start(Offset(101));
        assert!(
            matches!(
                past,
                Err(BrokerError::Storage {
                    source: storage::StorageError::OffsetOutOfRange { .. },
                    ..
                })
            ),
            "past the high watermark"
        );
        let mut moved = group.replica(leader).propose_log_start(Offset(60)).unwrap();
        let mut answer = None;
        for _ in 0..SETTLE_TURNS_MAX {
            group.turn().await;
            if let Ok(Some(result)) = moved.try_recv() {
                answer = Some(result);
                break;
            }
        }
        assert_eq!(answer.expect("answered").unwrap(), Offset(60));
        group.settle().await;
        for id in VOTERS.into_iter().filter(|id| *id != behind) {
            let log = group.replica(id).log().clone();
            assert_eq!(log.log_start_offset(), Offset(60), "replica {id} moved its log start");
            assert!(
                log.segment_base_offsets().len() < segments,
                "whole segments below it went"
            );
            assert_eq!(frames(&log).await.len(), 40);
        }
        // A replica that was away is sent where the log starts, then the
        // entry that moved it; a restart keeps the start.
        group.restart(behind).await;
        group.settle().await;
        group.check().await;
        assert_eq!(group.replica(behind).log().log_start_offset(), Offset(60));
        for id in VOTERS {
            group.crash(id);
            group.restart(id).await;
        }
        let next = group.leader().await;
        for tag in 100..110 {
            group.propose(next, tag, 100);
        }
        group.settle().await;
        group.check().await;
        for id in VOTERS {
            assert_eq!(
                group.replica(id).log().log_start_offset(),
                Offset(60),
                "replica {id} after a restart"
            );
        }
        assert_eq!(group.acked.len(), 110);
    });
}

#[test]
fn a_snapshots_install_a_crash_interrupted_is_finished_at_open() {
    run(async {
        let (mut group, leader, follower) = settled_group().await;
        let (index, term) = group.replica(leader).committed();
        let offset = group.replica(leader).high_watermark();
        group.crash(follower);
        // The install was recorded, and the crash came before the partition
        // log was emptied.
        let path = group.dirs[&follower].path().join(super::state_file::FILE_NAME);
        let mut batch = super::state_file::StateBatch::default();
        batch.install(super::log_storage::LogStart { index, term, offset });
        let (file, _) = storage::record_file::open(&path).unwrap();
        storage::record_file::append(&file, &path, &batch.finish().unwrap(), true).unwrap();
        group.restart(follower).await;
        let log = group.replica(follower).log().clone();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (offset, offset));
        assert_eq!(group.replica(follower).high_watermark(), offset);
        for tag in 20..25 {
            group.propose(leader, tag, 300);
        }
        group.settle().await;
        group.check().await;
        // Once finished, a restart keeps what came after.
        group.crash(follower);
        group.restart(follower).await;
        assert_eq!(group.replica(follower).log().log_end_offset(), Offset(25));
        group.settle().await;
        group.check().await;
    });
}

#[test]
fn a_peers_append_of_a_damaged_batch_is_refused_and_changes_nothing() {
    run(async {
        let mut group = Group::new().await;
        let leader = group.leader().await;
        group.propose(leader, 0, 100);
        group.settle().await;
        let follower = VOTERS.into_iter().find(|id| *id != leader).unwrap();
        let before = group.replica(follower).log().log_end_offset();
        // The leader's next append, taken off the wire and damaged.
        group.propose(leader, 1, 100);
        let mut outbox = Vec::new();
        group
            .replica(leader)
            .handle_ready(&mut |messages| outbox.extend(messages))
            .await
            .unwrap();
        let mut append = outbox
            .into_iter()
            .find(|m| m.to == follower && !m.entries.is_empty())
            .expect("an append to the follower");
        let mut data = append.entries[0].data.to_vec();
        let last = data.len() - 1;
        data[last] ^= 0x40;
        append.entries[0].data = data.into();
        group.replica(follower).step(append.clone());
        group.turn().await;
        assert_eq!(
            group.replica(follower).log().log_end_offset(),
            before,
            "nothing appended"
        );
        // Stamped for another index than the entry's: refused too.
        let mut misplaced = append;
        misplaced.entries[0].index += 1;
        group.replica(follower).step(misplaced);
        group.turn().await;
        assert_eq!(group.replica(follower).log().log_end_offset(), before);
        // The leader sends it again, whole.
        group.settle().await;
        group.check().await;
        assert_eq!(group.acked.len(), 2);
    });
}

#[test]
fn a_peers_snapshot_that_does_not_fit_is_refused_and_changes_nothing() {
    run(async {
        let (mut group, leader, follower) = settled_group().await;
        let (index, term) = group.replica(leader).committed();
        let high_watermark = group.replica(follower).high_watermark();
        let log_start = |group: &mut Group| group.replica(follower).log().log_start_offset();
        let start = log_start(&mut group);
        // A snapshot past the follower's commit, as a leader would send it.
        let snapshot = |index: u64, term: u64, offset: u64, data: Option<Vec<u8>>, voters: Vec<u64>| {
            let mut message = Message::default();
            message.set_msg_type(raft::prelude::MessageType::MsgSnapshot);
            message.from = leader;
            message.to = follower;
            message.term = term;
            let snapshot = message.mut_snapshot();
            let at = super::log_storage::LogStart {
                index,
                term,
                offset: Offset(offset),
            };
            let at = super::log_storage::SnapshotData {
                start: at,
                conf_index: 0,
            };
            snapshot.data = data.unwrap_or_else(|| at.encode().to_vec()).into();
            snapshot.mut_metadata().index = index;
            snapshot.mut_metadata().term = term;
            snapshot
                .mut_metadata()
                .set_conf_state(raft::prelude::ConfState::from((voters, vec![])));
            message
        };
        let past = index + 10;
        for refused in [
            // Bytes that are not a log start.
            snapshot(past, term, 1000, Some(vec![7; 5]), VOTERS.to_vec()),
            // A log start naming another entry than the metadata.
            snapshot(
                past,
                term,
                1000,
                Some(
                    super::log_storage::SnapshotData {
                        start: super::log_storage::LogStart {
                            index: past + 1,
                            term,
                            offset: Offset(1000),
                        },
                        conf_index: 0,
                    }
                    .encode()
                    .to_vec(),
                ),
                VOTERS.to_vec(),
            ),
            // Other replicas than this group's.
            snapshot(past, term, 1000, None, vec![1, 2, 4]),
            // A log starting below the high watermark.
            snapshot(past, term, high_watermark.0.saturating_sub(1), None, VOTERS.to_vec()),
        ] {
            group.replica(follower).step(refused);
            group.turn().await;
            assert_eq!(log_start(&mut group), start, "the log is not replaced");
            assert_eq!(group.replica(follower).high_watermark(), high_watermark);
        }
        group.settle().await;
        group.check().await;
        assert_eq!(group.acked.len(), 20);
    });
}

#[test]
fn a_batch_past_a_gap_in_the_raft_log_is_cut_at_open() {
    run(async {
        let mut group = Group::new().await;
        let leader = group.leader().await;
        for tag in 0..5 {
            group.propose(leader, tag, 100);
        }
        group.settle().await;
        let follower = VOTERS.into_iter().find(|id| *id != leader).unwrap();
        let log = group.replica(follower).log().clone();
        let end = log.log_end_offset();
        let term = group.replica(follower).term() as i32;
        group.crash(follower);
        // A batch whose Raft index skips one (as a crash between a cut and
        // the next append could leave): it follows nothing Raft knows.
        let stamp = storage::Stamp::Leader {
            leader_epoch: term,
            raft_index: 1000,
        };
        log.append_stamped(&frame(99, 10), stamp).await.unwrap();
        log.wait_durable(end).await.unwrap();
        drop(log);
        group.restart(follower).await;
        assert_eq!(
            group.replica(follower).log().log_end_offset(),
            end,
            "the stray batch is cut"
        );
        group.settle().await;
        group.check().await;
    });
}

/// Groups on three nodes of one shard each, every group's log small.
const SET_GROUPS: u64 = 100;

fn small_log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 20,
        segment_preallocate_bytes: 1 << 20,
        segment_zero_ahead_bytes: 0,
        read_ahead_bytes: 0,
        write_buffer_bytes: 64 << 10,
        batch_bytes_max: 32 << 10,
        record_bytes_max: 32 << 10,
        ..LogConfig::default()
    }
}

struct Nodes {
    _dirs: Vec<tempfile::TempDir>,
    sets: BTreeMap<u64, super::set::ReplicaSet>,
    /// Frames in flight: (from, to, encoded frame).
    wire: VecDeque<(u64, u64, Vec<u8>)>,
    /// Nodes that neither tick, turn, send nor hear (a dead process).
    down: BTreeSet<u64>,
}

impl Nodes {
    async fn new() -> Nodes {
        let mut dirs = Vec::new();
        let mut sets = BTreeMap::new();
        for node in VOTERS {
            let dir = tempfile::tempdir().unwrap();
            let mut set = super::set::ReplicaSet::new(node, VOTERS.to_vec(), RaftTiming::default().election_ticks);
            for group in 1..=SET_GROUPS {
                let path = dir.path().join(format!("group-{group}"));
                let replica = open_partition(&path, group as u32, node, small_log_config()).await;
                set.insert(group, replica).unwrap();
            }
            sets.insert(node, set);
            dirs.push(dir);
        }
        Nodes {
            _dirs: dirs,
            sets,
            wire: VecDeque::new(),
            down: BTreeSet::new(),
        }
    }

    /// A turn of every node; the frames go through their encoding.
    async fn turn(&mut self) {
        for (node, set) in self.sets.iter_mut().filter(|(node, _)| !self.down.contains(node)) {
            let wire = &mut self.wire;
            let mut send = |to, message| {
                let frame = net::cluster::PeerFrame { from: *node, message };
                wire.push_back((*node, to, frame.encode().expect("a frame within limits")));
            };
            let turn = set.drive(&mut send).await;
            assert!(turn.stopped.is_empty(), "{:?}", turn.stopped);
            for sync in turn.syncs {
                let (group, result) = sync.wait().await;
                assert!(set.synced(group, result, &mut send).is_none());
            }
            set.flush(&mut send);
        }
        while let Some((from, to, bytes)) = self.wire.pop_front() {
            let frame = net::cluster::PeerFrame::decode_frame(&bytes).expect("a frame decodes");
            assert_eq!(frame.from, from);
            let net::cluster::PeerMessage::Raft { messages } = frame.message else {
                panic!("only Raft messages between sets");
            };
            if !self.down.contains(&to) {
                self.sets.get_mut(&to).unwrap().step(from, messages);
            }
        }
    }

    async fn tick(&mut self) {
        for (node, set) in self.sets.iter_mut().filter(|(node, _)| !self.down.contains(node)) {
            let wire = &mut self.wire;
            set.tick(&mut |to, message| {
                let frame = net::cluster::PeerFrame { from: *node, message };
                wire.push_back((*node, to, frame.encode().expect("a frame within limits")));
            });
        }
        self.turn().await;
    }

    fn quiesced(&self) -> usize {
        self.sets.values().map(|s| s.quiesced()).sum()
    }

    fn sent(&self) -> (u64, u64) {
        self.sets
            .values()
            .map(|s| s.sent())
            .fold((0, 0), |(f, m), (sf, sm)| (f + sf, m + sm))
    }

    /// Each group's leader among the nodes up, once every group has one.
    fn leaders(&mut self) -> Option<BTreeMap<u64, u64>> {
        let mut leaders = BTreeMap::new();
        for group in 1..=SET_GROUPS {
            let leader = VOTERS
                .into_iter()
                .filter(|node| !self.down.contains(node))
                .find(|node| {
                    self.sets
                        .get_mut(node)
                        .unwrap()
                        .get_mut(group)
                        .is_some_and(|replica| replica.is_leader())
                })?;
            leaders.insert(group, leader);
        }
        Some(leaders)
    }
}

#[test]
fn a_shards_groups_talk_to_each_peer_in_one_frame_a_step() {
    run(async {
        let mut nodes = Nodes::new().await;
        let mut leaders = None;
        for _ in 0..ELECTION_TICKS_MAX {
            nodes.tick().await;
            leaders = nodes.leaders();
            if leaders.is_some() {
                break;
            }
        }
        let leaders = leaders.expect("every group elects a leader");
        // One batch into every group, each through its own leader.
        let mut replies = Vec::new();
        for (group, leader) in &leaders {
            let replica = nodes.sets.get_mut(leader).unwrap().get_mut(*group).unwrap();
            replies.push(replica.propose_all(frame(*group, 100)).unwrap());
        }
        let (frames_before, messages_before) = nodes.sent();
        let mut outcomes: Vec<Option<Result<Appended, BrokerError>>> = replies.iter().map(|_| None).collect();
        let mut turns = 0;
        while outcomes.iter().any(Option::is_none) {
            assert!(turns < 10, "every batch is committed within 10 turns");
            nodes.turn().await;
            turns += 1;
            for (reply, outcome) in replies.iter_mut().zip(outcomes.iter_mut()) {
                if outcome.is_none() {
                    *outcome = reply.try_recv().unwrap();
                }
            }
        }
        let (frames, messages) = nodes.sent();
        for outcome in outcomes {
            assert_eq!(outcome.unwrap().unwrap().base_offset, Offset(0));
        }
        // Each turn sends at most three frames a peer (what goes before the
        // writes, what goes after them, what their fdatasyncs release),
        // six ordered pairs of nodes: never a frame per group.
        assert!(
            frames - frames_before <= turns * 3 * 6,
            "{} frames in {turns} turns",
            frames - frames_before
        );
        assert!(
            messages - messages_before >= 4 * SET_GROUPS,
            "each group's appends and answers"
        );
        // Idle, every group quiesces within a few ticks, on every node.
        let mut ticks = 0;
        while nodes.quiesced() < 3 * SET_GROUPS as usize {
            assert!(
                ticks < 20,
                "{} of {} replicas quiesced",
                nodes.quiesced(),
                3 * SET_GROUPS
            );
            nodes.tick().await;
            ticks += 1;
        }
        // The answers to the last heartbeats go, and then each shard sends
        // each peer a beat a tick, and no message.
        nodes.turn().await;
        let (frames_before, messages_before) = nodes.sent();
        const IDLE_TICKS: u64 = 30;
        for _ in 0..IDLE_TICKS {
            nodes.tick().await;
        }
        let (frames, messages) = nodes.sent();
        assert_eq!(messages - messages_before, 0, "an idle group sends nothing");
        // (The first tick's beat is not needed where the answers just went.)
        assert!(
            (IDLE_TICKS - 1) * 6 <= frames - frames_before && frames - frames_before <= IDLE_TICKS * 6,
            "a beat a tick to each peer: {} frames in {IDLE_TICKS} ticks",
            frames - frames_before
        );
        assert_eq!(
            nodes.leaders(),
            Some(leaders.clone()),
            "no spurious election while quiet"
        );
        // A write wakes its group alone, which quiesces again after it.
        let (group, leader) = leaders.iter().next().map(|(g, l)| (*g, *l)).unwrap();
        let mut reply = nodes
            .sets
            .get_mut(&leader)
            .unwrap()
            .get_mut(group)
            .unwrap()
            .propose_all(frame(group, 100))
            .unwrap();
        for _ in 0..5 {
            nodes.turn().await;
        }
        assert_eq!(reply.try_recv().unwrap().unwrap().unwrap().base_offset, Offset(1));
        assert!(
            nodes.quiesced() >= 3 * (SET_GROUPS as usize - 1),
            "the other groups stay quiet"
        );
        for _ in 0..10 {
            nodes.tick().await;
        }
        assert_eq!(nodes.quiesced(), 3 * SET_GROUPS as usize, "and it quiesces again");
        // A leader's replica that fails while its node stays up (beating)
        // hands over and wakes its followers: they elect a leader at once.
        // (One the node lost below led too: its other two replicas stay up.)
        let (failed, failed_leader) = leaders
            .iter()
            .find(|(g, l)| **l == leader && **g != group)
            .map(|(g, l)| (*g, *l))
            .expect("the node leads another group");
        {
            let Nodes { sets, wire, .. } = &mut nodes;
            sets.get_mut(&failed_leader)
                .unwrap()
                .let_go(failed, &mut |to, message| {
                    let frame = net::cluster::PeerFrame {
                        from: failed_leader,
                        message,
                    };
                    wire.push_back((failed_leader, to, frame.encode().expect("a frame within limits")));
                });
        }
        let mut ticks = 0;
        loop {
            nodes.tick().await;
            ticks += 1;
            let elected = VOTERS
                .into_iter()
                .filter(|node| *node != failed_leader)
                .any(|node| nodes.sets.get_mut(&node).unwrap().get_mut(failed).unwrap().is_leader());
            if elected {
                break;
            }
            assert!(
                ticks < 2 * 20,
                "group {failed} elects a leader after its leader's replica failed"
            );
        }
        // (Its replica on that node is gone for the rest of the test.)
        let leaders: BTreeMap<u64, u64> = leaders.into_iter().filter(|(g, _)| *g != failed).collect();
        // A node that goes silent: the groups it led wake on the others
        // once its beats stop, and elect leaders there.
        let lost = leader;
        nodes.down.insert(lost);
        let led_by_lost = leaders.values().filter(|l| **l == lost).count();
        assert!(led_by_lost > 0);
        let mut ticks = 0;
        let after = loop {
            nodes.tick().await;
            ticks += 1;
            if let Some(after) = nodes.leaders() {
                break after;
            }
            assert!(ticks < ELECTION_TICKS_MAX, "the lost node's groups elect new leaders");
        };
        for (group, before) in &leaders {
            if *before != lost {
                assert_eq!(
                    after[group], *before,
                    "group {group}, led by a live node, keeps its leader"
                );
            }
        }
    });
}

#[test]
fn a_set_drops_what_is_not_for_its_groups_and_refuses_a_group_twice() {
    run(async {
        let (leader, follower) = (1, 2);
        let dir = tempfile::tempdir().unwrap();
        let mut set = super::set::ReplicaSet::new(follower, VOTERS.to_vec(), RaftTiming::default().election_ticks);
        let replica = open_partition(dir.path(), 0, follower, config()).await;
        set.insert(7, replica).unwrap();
        let again = open_partition(&dir.path().join("b"), 1, follower, config()).await;
        assert!(set.insert(7, again).is_err(), "a group held twice");
        let controller = open_partition(&dir.path().join("c"), 2, follower, config()).await;
        assert!(set.insert(net::cluster::CONTROLLER_GROUP, controller).is_err());
        // Bytes that do not decode, a message naming another sender, one
        // for a group not held: all dropped, nothing changes.
        let heartbeat = |from: u64, to: u64, term: u64| {
            use protobuf::Message as _;
            let mut m = Message::default();
            m.set_msg_type(raft::prelude::MessageType::MsgHeartbeat);
            m.from = from;
            m.to = to;
            m.term = term;
            m.write_to_bytes().unwrap()
        };
        set.step(leader, vec![(7, vec![0xff; 9])]);
        set.step(leader, vec![(7, heartbeat(99, follower, 50))]);
        set.step(leader, vec![(8, heartbeat(leader, follower, 50))]);
        set.step(leader, vec![(7, heartbeat(leader, 99, 50))]);
        assert_eq!(set.get_mut(7).unwrap().term(), 0, "no message was taken");
        set.step(leader, vec![(7, heartbeat(leader, follower, 50))]);
        assert_eq!(set.get_mut(7).unwrap().term(), 50, "a well-formed one is");
    });
}

#[test]
fn acks_1_answers_from_the_leaders_log_and_acks_all_only_once_committed() {
    run(async {
        let mut group = Group::new().await;
        let old = group.leader().await;
        group.isolated.insert(old);
        let mut leader_only = group.replica(old).propose(frame(0, 10), Acks::Leader, 1).unwrap();
        let mut all = group.replica(old).propose(frame(1, 10), Acks::All, 1).unwrap();
        for _ in 0..3 {
            group.turn().await;
        }
        let appended = leader_only
            .try_recv()
            .unwrap()
            .expect("acks=1: in the leader's log")
            .unwrap();
        assert_eq!(appended.base_offset, Offset(0));
        assert!(
            all.try_recv().unwrap().is_none(),
            "acks=all waits: the leader is cut off"
        );
        // A new leader never had either: the acks=1 batch is lost, as it is
        // in Kafka; the acks=all one is refused, never acknowledged.
        let new = group.leader().await;
        group.propose(new, 2, 10);
        group.isolated.clear();
        group.settle().await;
        group.check().await;
        assert!(matches!(
            all.try_recv(),
            Ok(Some(Err(BrokerError::NotLeaderOrFollower { .. })))
        ));
        let log = group.replica(old).log().clone();
        assert!(
            frames(&log).await.iter().all(|f| !names(f, 0)),
            "the acks=1 batch was cut with the old leader's tail"
        );
    });
}

#[test]
fn acks_all_is_refused_while_fewer_than_min_insync_replicas_are_in_sync() {
    run(async {
        let mut group = Group::new().await;
        let leader = group.leader().await;
        assert_eq!(
            group.replica(leader).in_sync_replicas().len(),
            3,
            "all in sync at the start of a term"
        );
        let followers: Vec<u64> = VOTERS.into_iter().filter(|id| *id != leader).collect();
        group.crash(followers[0]);
        for tag in 0..3 {
            group.propose(leader, tag, 10);
        }
        // Past the lag limit the crashed follower is out of sync; the
        // leader keeps its lease on the other's answers.
        for _ in 0..REPLICA_LAG_TICKS + 5 {
            group.tick().await;
        }
        assert_eq!(group.replica(leader).in_sync_replicas().len(), 2);
        let reply = group.replica(leader).propose(frame(3, 10), Acks::All, 2).unwrap();
        group.waiting.push(Waiting { tag: 3, reply });
        let refused = group.replica(leader).propose(frame(4, 10), Acks::All, 3);
        assert!(
            matches!(refused, Err(BrokerError::NotEnoughReplicas { in_sync: 2, min: 3, .. })),
            "{refused:?}"
        );
        assert_eq!(refused.unwrap_err().code(), net::ErrorCode::NotEnoughReplicas);
        // acks=1 does not ask for replicas.
        let reply = group.replica(leader).propose(frame(5, 10), Acks::Leader, 3).unwrap();
        group.waiting.push(Waiting { tag: 5, reply });
        // Back and caught up, it is in sync again.
        group.restart(followers[0]).await;
        group.settle().await;
        for _ in 0..3 {
            group.tick().await;
        }
        assert_eq!(group.replica(leader).in_sync_replicas().len(), 3);
        let reply = group.replica(leader).propose(frame(6, 10), Acks::All, 3).unwrap();
        group.waiting.push(Waiting { tag: 6, reply });
        group.settle().await;
        group.check().await;
        let acked: BTreeSet<u64> = group.acked.iter().map(|(tag, _)| *tag).collect();
        assert_eq!(acked, [0, 1, 2, 3, 5, 6].into_iter().collect());
    });
}

#[test]
fn a_paused_leaders_unpersisted_batch_replaced_by_the_next_leader_is_not_acknowledged() {
    run(async {
        let mut group = Group::new().await;
        let old = group.leader().await;
        group.propose(old, 0, 10);
        group.settle().await;
        // Proposed, then paused before its Ready: the batch is in raft-rs's
        // memory only when the new leader's entries reach it.
        group.propose(old, 1, 10);
        group.paused.insert(old);
        let new = group.leader().await;
        assert_ne!(new, old);
        group.propose(new, 2, 10);
        for _ in 0..10 {
            group.turn().await;
        }
        group.resume(old);
        group.settle().await;
        group.check().await;
        let acked: BTreeSet<u64> = group.acked.iter().map(|(tag, _)| *tag).collect();
        assert_eq!(acked, [0, 2].into_iter().collect());
        assert_eq!(
            group.refused, 1,
            "the replaced batch is answered NOT_LEADER_OR_FOLLOWER"
        );
    });
}
