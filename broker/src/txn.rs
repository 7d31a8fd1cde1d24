//! The transaction coordinator's state machine, sans I/O: per transactional
//! id its producer id and epoch, the state of its transaction and the
//! partitions in it. Each transactional id is coordinated by the shard that
//! owns its `__transaction_state` partition (murmur2 of the id, as groups);
//! that shard writes every new state to the log before acting on it, so a
//! restart replays the log into this machine and finishes what was begun.
//!
//! States and moves are Kafka's (KIP-98): Empty → Ongoing on the first
//! AddPartitions; Ongoing → PrepareCommit/PrepareAbort on EndTxn (or
//! PrepareAbort with the epoch bumped when the transaction times out or the
//! id is initialized again); then markers go to every partition, then
//! CompleteCommit/CompleteAbort, which accept a new transaction.

use std::collections::{BTreeSet, HashMap};

use net::ErrorCode;
use serde::{Deserialize, Serialize};

/// The internal topic holding transaction states.
pub const TXN_STATE_TOPIC: &str = "__transaction_state";
/// Partitions one transaction may touch.
pub const TXN_PARTITIONS_MAX: usize = 10_000;
/// Largest encoded state of one transaction: far under the state log's
/// batch limit (1 MiB), whatever its topics' names.
pub const TXN_STATE_BYTES_MAX: usize = 256 << 10;
/// Transactional ids one shard coordinates.
pub const TXN_IDS_MAX: usize = 100_000;
/// Longest transactional id accepted.
pub const TXN_ID_BYTES_MAX: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    fn is_prepared(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// One transactional id's record in `__transaction_state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<(String, u32)>,
    /// When the open transaction began (Ongoing), for its timeout.
    pub started_ms: i64,
}

/// A record's value: the version first, so a later format is refused, not
/// misread.
#[derive(Serialize, Deserialize)]
struct Stored {
    version: u16,
    meta: TxnMeta,
}

const STORED_VERSION: u16 = 0;

pub fn encode(meta: &TxnMeta) -> Vec<u8> {
    serde_json::to_vec(&Stored {
        version: STORED_VERSION,
        meta: meta.clone(),
    })
    .expect("a transaction state serializes")
}

pub fn decode(bytes: &[u8]) -> Option<TxnMeta> {
    let stored: Stored = serde_json::from_slice(bytes).ok()?;
    (stored.version == STORED_VERSION).then_some(stored.meta)
}

/// What a request leads to: a new state to write (then act on), an answer
/// without a write, or a refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write this state, then apply it (`TxnCoordinator::apply`).
    Write(TxnMeta),
    /// Nothing to write: the request is already satisfied.
    Done,
    Refuse(ErrorCode),
}

/// What InitProducerId leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitStep {
    /// A fresh id is needed (first use, or the epoch ran out): write this
    /// state with the id filled in.
    NewId {
        timeout_ms: i32,
    },
    /// The open transaction must be aborted first (with the epoch bumped,
    /// fencing its producer); then ask again.
    AbortFirst(TxnMeta),
    Write(TxnMeta),
    Refuse(ErrorCode),
}

#[derive(Default)]
pub struct TxnCoordinator {
    txns: HashMap<String, TxnMeta>,
    max_timeout_ms: i32,
}

impl TxnCoordinator {
    pub fn new(max_timeout_ms: i32) -> TxnCoordinator {
        TxnCoordinator {
            txns: HashMap::new(),
            max_timeout_ms,
        }
    }

    pub fn get(&self, id: &str) -> Option<&TxnMeta> {
        self.txns.get(id)
    }

    /// Makes a written (or replayed) state current.
    pub fn apply(&mut self, id: &str, meta: TxnMeta) {
        self.txns.insert(id.to_string(), meta);
    }

    pub fn init(&self, id: &str, timeout_ms: i32) -> InitStep {
        if id.is_empty() || id.len() > TXN_ID_BYTES_MAX {
            return InitStep::Refuse(ErrorCode::InvalidRequest);
        }
        if timeout_ms <= 0 || timeout_ms > self.max_timeout_ms {
            return InitStep::Refuse(ErrorCode::InvalidTransactionTimeout);
        }
        let Some(meta) = self.txns.get(id) else {
            if self.txns.len() >= TXN_IDS_MAX {
                return InitStep::Refuse(ErrorCode::CoordinatorNotAvailable);
            }
            return InitStep::NewId { timeout_ms };
        };
        match meta.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => InitStep::Refuse(ErrorCode::ConcurrentTransactions),
            TxnState::Ongoing => InitStep::AbortFirst(self.aborting(meta)),
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                if meta.epoch == i16::MAX {
                    return InitStep::NewId { timeout_ms };
                }
                InitStep::Write(TxnMeta {
                    epoch: meta.epoch + 1,
                    timeout_ms,
                    state: TxnState::Empty,
                    partitions: BTreeSet::new(),
                    started_ms: 0,
                    producer_id: meta.producer_id,
                })
            }
        }
    }

    /// The state that aborts `meta`'s open transaction with its epoch
    /// bumped: the producer that holds it is fenced.
    fn aborting(&self, meta: &TxnMeta) -> TxnMeta {
        TxnMeta {
            epoch: meta.epoch.saturating_add(1),
            state: TxnState::PrepareAbort,
            ..meta.clone()
        }
    }

    fn check_producer(&self, id: &str, producer_id: i64, epoch: i16) -> Result<&TxnMeta, ErrorCode> {
        let meta = self.txns.get(id).ok_or(ErrorCode::InvalidProducerIdMapping)?;
        if meta.producer_id != producer_id {
            return Err(ErrorCode::InvalidProducerIdMapping);
        }
        if epoch < meta.epoch {
            return Err(ErrorCode::ProducerFenced);
        }
        if epoch > meta.epoch {
            return Err(ErrorCode::InvalidProducerEpoch);
        }
        Ok(meta)
    }

    /// Adds partitions to the producer's transaction, opening it.
    pub fn add_partitions(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, u32)],
        now_ms: i64,
    ) -> Step {
        let meta = match self.check_producer(id, producer_id, epoch) {
            Ok(meta) => meta,
            Err(code) => return Step::Refuse(code),
        };
        if meta.state.is_prepared() {
            return Step::Refuse(ErrorCode::ConcurrentTransactions);
        }
        let opening = meta.state != TxnState::Ongoing;
        if !opening && partitions.iter().all(|p| meta.partitions.contains(p)) {
            return Step::Done;
        }
        let mut next = meta.clone();
        if opening {
            next.state = TxnState::Ongoing;
            next.partitions.clear();
            next.started_ms = now_ms;
        }
        next.partitions.extend(partitions.iter().cloned());
        if next.partitions.len() > TXN_PARTITIONS_MAX || encode(&next).len() > TXN_STATE_BYTES_MAX {
            return Step::Refuse(ErrorCode::InvalidRequest);
        }
        Step::Write(next)
    }

    /// EndTxn: the prepared state to write, after which markers go out. A
    /// retry of an end already completed is answered as done.
    pub fn end(&self, id: &str, producer_id: i64, epoch: i16, commit: bool) -> Step {
        let meta = match self.check_producer(id, producer_id, epoch) {
            Ok(meta) => meta,
            Err(code) => return Step::Refuse(code),
        };
        match (meta.state, commit) {
            (TxnState::Ongoing, _) => Step::Write(TxnMeta {
                state: if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                },
                ..meta.clone()
            }),
            (TxnState::PrepareCommit | TxnState::PrepareAbort, _) => Step::Refuse(ErrorCode::ConcurrentTransactions),
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Step::Done,
            // An abort with nothing open is harmless: the producer may not
            // have sent anything yet.
            (TxnState::Empty, false) => Step::Done,
            _ => Step::Refuse(ErrorCode::InvalidTxnState),
        }
    }

    /// The state that follows a prepared one once every marker is written.
    pub fn completed(meta: &TxnMeta) -> TxnMeta {
        debug_assert!(meta.state.is_prepared());
        TxnMeta {
            state: if meta.state == TxnState::PrepareCommit {
                TxnState::CompleteCommit
            } else {
                TxnState::CompleteAbort
            },
            partitions: BTreeSet::new(),
            ..meta.clone()
        }
    }

    /// Open transactions past their timeout, each with the state that aborts
    /// it (epoch bumped).
    pub fn timed_out(&self, now_ms: i64) -> Vec<(String, TxnMeta)> {
        self.txns
            .iter()
            .filter(|(_, m)| m.state == TxnState::Ongoing && now_ms - m.started_ms > i64::from(m.timeout_ms))
            .map(|(id, m)| (id.clone(), self.aborting(m)))
            .collect()
    }

    /// Transactions left prepared (a restart cut their markers short) or
    /// open: recovery finishes the first and re-announces the second.
    pub fn unfinished(&self) -> Vec<(String, TxnMeta)> {
        self.txns
            .iter()
            .filter(|(_, m)| m.state.is_prepared() || m.state == TxnState::Ongoing)
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect()
    }

    /// Forgets the states of the ids `owned` selects (their partition is
    /// led elsewhere now); answers how many went.
    pub fn unload(&mut self, owned: impl Fn(&str) -> bool) -> usize {
        let before = self.txns.len();
        self.txns.retain(|id, _| !owned(id));
        before - self.txns.len()
    }

    /// Every state of the ids `owned` selects: a compaction's rewrite.
    pub fn states(&self, owned: impl Fn(&str) -> bool) -> Vec<(String, TxnMeta)> {
        self.txns
            .iter()
            .filter(|(id, _)| owned(id))
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(list: &[(&str, u32)]) -> Vec<(String, u32)> {
        list.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    fn written(step: Step) -> TxnMeta {
        match step {
            Step::Write(meta) => meta,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn initialized(c: &mut TxnCoordinator, id: &str) -> TxnMeta {
        let meta = match c.init(id, 10_000) {
            InitStep::NewId { timeout_ms } => TxnMeta {
                producer_id: 7,
                epoch: 0,
                timeout_ms,
                state: TxnState::Empty,
                partitions: BTreeSet::new(),
                started_ms: 0,
            },
            InitStep::Write(meta) => meta,
            other => panic!("{other:?}"),
        };
        c.apply(id, meta.clone());
        meta
    }

    #[test]
    fn a_transaction_goes_from_open_to_prepared_to_complete() {
        let mut c = TxnCoordinator::new(60_000);
        let meta = initialized(&mut c, "t");
        let open = written(c.add_partitions("t", 7, 0, &parts(&[("a", 0), ("b", 1)]), 1_000));
        assert_eq!(open.state, TxnState::Ongoing);
        assert_eq!(open.started_ms, 1_000);
        c.apply("t", open);
        assert_eq!(
            c.add_partitions("t", 7, 0, &parts(&[("a", 0)]), 2_000),
            Step::Done,
            "already in"
        );
        let prepared = written(c.end("t", 7, 0, true));
        assert_eq!(prepared.state, TxnState::PrepareCommit);
        c.apply("t", prepared.clone());
        assert_eq!(
            c.add_partitions("t", 7, 0, &parts(&[("c", 0)]), 3_000),
            Step::Refuse(ErrorCode::ConcurrentTransactions)
        );
        let done = TxnCoordinator::completed(&prepared);
        assert_eq!((done.state, done.partitions.len()), (TxnState::CompleteCommit, 0));
        c.apply("t", done);
        assert_eq!(c.end("t", 7, 0, true), Step::Done, "a retried commit");
        assert_eq!(c.end("t", 7, 0, false), Step::Refuse(ErrorCode::InvalidTxnState));
        // The next transaction starts afresh.
        let next = written(c.add_partitions("t", 7, 0, &parts(&[("c", 0)]), 4_000));
        assert_eq!(next.partitions.len(), 1);
        assert_eq!(meta.producer_id, next.producer_id);
    }

    #[test]
    fn a_second_init_fences_the_first_and_aborts_its_transaction() {
        let mut c = TxnCoordinator::new(60_000);
        initialized(&mut c, "t");
        c.apply("t", written(c.add_partitions("t", 7, 0, &parts(&[("a", 0)]), 0)));
        let abort = match c.init("t", 10_000) {
            InitStep::AbortFirst(meta) => meta,
            other => panic!("{other:?}"),
        };
        assert_eq!((abort.state, abort.epoch), (TxnState::PrepareAbort, 1));
        c.apply("t", TxnCoordinator::completed(&abort));
        let again = match c.init("t", 10_000) {
            InitStep::Write(meta) => meta,
            other => panic!("{other:?}"),
        };
        assert_eq!((again.producer_id, again.epoch, again.state), (7, 2, TxnState::Empty));
        c.apply("t", again);
        assert_eq!(
            c.add_partitions("t", 7, 0, &parts(&[("a", 0)]), 0),
            Step::Refuse(ErrorCode::ProducerFenced)
        );
        assert_eq!(
            c.end("t", 8, 2, true),
            Step::Refuse(ErrorCode::InvalidProducerIdMapping)
        );
        assert_eq!(
            c.end("nobody", 7, 2, true),
            Step::Refuse(ErrorCode::InvalidProducerIdMapping)
        );
    }

    #[test]
    fn open_transactions_time_out_and_bad_requests_are_refused() {
        let mut c = TxnCoordinator::new(60_000);
        assert_eq!(c.init("t", 0), InitStep::Refuse(ErrorCode::InvalidTransactionTimeout));
        assert_eq!(
            c.init("t", 60_001),
            InitStep::Refuse(ErrorCode::InvalidTransactionTimeout)
        );
        assert_eq!(c.init("", 1_000), InitStep::Refuse(ErrorCode::InvalidRequest));
        initialized(&mut c, "t");
        c.apply("t", written(c.add_partitions("t", 7, 0, &parts(&[("a", 0)]), 1_000)));
        assert!(c.timed_out(11_000).is_empty(), "exactly at the timeout");
        let expired = c.timed_out(11_001);
        assert_eq!(expired.len(), 1);
        assert_eq!((expired[0].1.state, expired[0].1.epoch), (TxnState::PrepareAbort, 1));
        assert_eq!(c.unfinished().len(), 1);
    }

    #[test]
    fn states_round_trip_and_other_versions_are_refused() {
        let meta = TxnMeta {
            producer_id: 3,
            epoch: 4,
            timeout_ms: 5,
            state: TxnState::PrepareAbort,
            partitions: [("x".to_string(), 1)].into_iter().collect(),
            started_ms: 6,
        };
        assert_eq!(decode(&encode(&meta)), Some(meta));
        assert_eq!(decode(br#"{"version":1,"meta":{}}"#), None);
        assert_eq!(decode(b"\xff"), None);
    }
}
