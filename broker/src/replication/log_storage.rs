//! raft-rs's view of one partition's Raft log (its `Storage`), kept over
//! the partition log rather than beside it: a record batch is one Raft
//! entry, stored once, in the segment files.
//!
//! What raft-rs asks of a storage is synchronous; the partition log is on
//! disk behind O_DIRECT. So this holds in memory what raft-rs asks for
//! without waiting: every entry above the applied index (their terms, and
//! for record batches the Kafka offset they end at), the bytes of the most
//! recent batches up to `TAIL_BYTES_MAX`, and Raft's own entries (a new
//! leader's empty entry, configuration changes), which take no Kafka
//! offset and live in the partition's state file. An entry older than what
//! is held is fetched from the partition log asynchronously
//! (`LogTemporarilyUnavailable`, then `on_entries_fetched`): only a lagging
//! follower needs one, and raft-rs asks so only when it may wait.
//!
//! raft-rs also reads committed entries back to hand them to be applied,
//! and may not wait for them. Applying a record batch needs only its index,
//! term and end offset (the high watermark moves to it), so an entry whose
//! bytes are no longer held is handed over without them (`data` empty,
//! marked by `DATA_ELIDED` in its context): never sent, never stored.
//!
//! Retention forgets the log's head (`compact`): the entries up to an
//! applied index go with the segments below the Kafka offset after them.
//! A follower that needs one of them is sent a snapshot instead, which
//! for a partition is only where its log starts (`LogStart`): the index
//! and term of the last entry forgotten and the Kafka offset the next one
//! starts at. The follower empties its log and starts it there
//! (`install`), as a Kafka follower behind its leader's log start does
//! (`truncateFullyAndStartAt`); what is above is sent as entries.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use raft::prelude::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use storage::Offset;

/// Bytes of recent record batches kept for sending to followers without a
/// disk read (a follower that keeps up is sent entries from here).
pub const TAIL_BYTES_MAX: usize = 4 << 20;
/// Fetches from the partition log waiting at once; raft-rs asks again
/// (on a follower's next answer) for one not taken.
const FETCHES_WAITING_MAX: usize = 16;
/// Bytes of fetched entries held until raft-rs takes them.
const FETCHED_BYTES_MAX: usize = 16 << 20;

/// The context of an entry handed over without its bytes.
pub const DATA_ELIDED: &[u8] = b"elided";

/// Where a Raft log starts once its head is gone: every entry up to
/// `index` (of `term`) is forgotten, and the first batch after them starts
/// at Kafka offset `offset`. A partition's snapshot, and its record in the
/// state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogStart {
    pub index: u64,
    pub term: u64,
    pub offset: Offset,
}

impl LogStart {
    const BYTES: usize = 24;

    pub fn encode(&self) -> [u8; LogStart::BYTES] {
        let mut bytes = [0u8; LogStart::BYTES];
        bytes[..8].copy_from_slice(&self.index.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.term.to_le_bytes());
        bytes[16..].copy_from_slice(&self.offset.0.to_le_bytes());
        bytes
    }

    /// Decodes what a peer or the state file holds: only its length is
    /// checked here; what it says is checked against the log it would
    /// start.
    pub fn decode(bytes: &[u8]) -> Result<LogStart, String> {
        if bytes.len() != LogStart::BYTES {
            return Err(format!("{} bytes, not {}", bytes.len(), LogStart::BYTES));
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Ok(LogStart {
            index: word(0),
            term: word(8),
            offset: Offset(word(16)),
        })
    }
}

/// A partition's snapshot, as sent: where the log starts, and the index of
/// the entry that made the configuration the snapshot names (it may lie
/// after the log start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotData {
    pub start: LogStart,
    pub conf_index: u64,
}

impl SnapshotData {
    const BYTES: usize = LogStart::BYTES + 8;

    pub fn encode(&self) -> [u8; SnapshotData::BYTES] {
        let mut bytes = [0u8; SnapshotData::BYTES];
        bytes[..LogStart::BYTES].copy_from_slice(&self.start.encode());
        bytes[LogStart::BYTES..].copy_from_slice(&self.conf_index.to_le_bytes());
        bytes
    }

    /// Decodes a peer's bytes: only their length is checked here.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotData, String> {
        if bytes.len() != SnapshotData::BYTES {
            return Err(format!("{} bytes, not {}", bytes.len(), SnapshotData::BYTES));
        }
        let (start, conf_index) = bytes.split_at(LogStart::BYTES);
        Ok(SnapshotData {
            start: LogStart::decode(start)?,
            conf_index: u64::from_le_bytes(conf_index.try_into().expect("8 bytes")),
        })
    }
}

/// One entry above the window's start.
#[derive(Clone, Debug)]
enum Slot {
    /// Raft's own entry, whole.
    Internal(Entry),
    /// A record batch: its term, the offset after its last record, and its
    /// bytes while the tail holds them.
    Batch {
        term: u64,
        next_offset: Offset,
        data: Option<Bytes>,
    },
}

impl Slot {
    fn term(&self) -> u64 {
        match self {
            Slot::Internal(entry) => entry.term,
            Slot::Batch { term, .. } => *term,
        }
    }

    fn data_bytes(&self) -> usize {
        match self {
            Slot::Batch { data: Some(data), .. } => data.len(),
            _ => 0,
        }
    }
}

/// A read from the partition log raft-rs asked for.
#[derive(Debug)]
pub struct Fetch {
    pub low: u64,
    pub high: u64,
    pub max_size: u64,
    pub context: GetEntriesContext,
}

pub struct LogStorage {
    hard_state: HardState,
    /// The group's configuration in force, and the index of the entry
    /// that made it (a change applied there, a snapshot's, or the log
    /// start's for the one the group was formed with): a change at or below
    /// it is in it already.
    conf: (u64, ConfState),
    /// The index and term of the entry before the first this log holds.
    before_first: (u64, u64),
    /// The Kafka offset the first entry's batch starts at.
    start_offset: Offset,
    /// Entries `window_first..=last_index`, contiguous.
    window: VecDeque<Slot>,
    window_first: u64,
    /// The Kafka offset where the window's first entry starts.
    window_base_offset: Offset,
    /// Bytes of batches the window holds.
    tail_bytes: usize,
    /// Each term's first index in this log, ascending (a term's first
    /// entry is its leader's empty entry, an internal one, so these are
    /// known for the whole log, not only the window).
    term_starts: Vec<(u64, u64)>,
    /// Raft's own entries below the window (above it they are slots).
    internal_below: BTreeMap<u64, Entry>,
    /// Everything up to here was applied: the window may forget it.
    applied: u64,
    fetches: RefCell<VecDeque<Fetch>>,
    fetched: RefCell<BTreeMap<u64, Entry>>,
    fetched_bytes: RefCell<usize>,
}

/// Where an entry's record batch starts and ends in Kafka offsets, for
/// truncating and fetching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Located {
    /// In the window: the offset its entry starts at (for a batch, its base
    /// offset; for an internal entry, where the next batch would start).
    At(Offset),
    /// Below the window: the partition log must be searched.
    Below,
}

impl LogStorage {
    /// A storage for a log after `start` (the index and term of the entry
    /// before its first, and where its first batch starts; `conf` the
    /// configuration in force and the entry that made it), whose entries
    /// from `window_first` on are
    /// appended next (the first of them starting at Kafka offset
    /// `base_offset`); `internal_below` are Raft's own entries before
    /// `window_first`, and everything up to `applied` was applied.
    pub fn new(
        hard_state: HardState,
        conf: (u64, ConfState),
        start: LogStart,
        window_first: u64,
        base_offset: Offset,
        internal_below: BTreeMap<u64, Entry>,
        applied: u64,
    ) -> LogStorage {
        let before_first = (start.index, start.term);
        assert!(
            base_offset >= start.offset,
            "the window's first batch starts at or after the log's"
        );
        assert!(
            window_first > before_first.0,
            "the window starts after the first entry's predecessor"
        );
        assert!(
            internal_below.keys().all(|i| *i > before_first.0 && *i < window_first),
            "internal entries below the window lie below it"
        );
        let mut term_starts = vec![(before_first.0, before_first.1)];
        for entry in internal_below.values() {
            if entry.term != term_starts.last().expect("never empty").1 {
                term_starts.push((entry.index, entry.term));
            }
        }
        LogStorage {
            hard_state,
            conf,
            before_first,
            start_offset: start.offset,
            window: VecDeque::new(),
            window_first,
            window_base_offset: base_offset,
            tail_bytes: 0,
            term_starts,
            internal_below,
            applied,
            fetches: RefCell::new(VecDeque::new()),
            fetched: RefCell::new(BTreeMap::new()),
            fetched_bytes: RefCell::new(0),
        }
    }

    pub fn last_index(&self) -> u64 {
        self.window_first + self.window.len() as u64 - 1
    }

    pub fn first_index(&self) -> u64 {
        self.before_first.0 + 1
    }

    /// Where the log starts: the entry before its first, and the Kafka
    /// offset its first batch starts at.
    pub fn log_start(&self) -> LogStart {
        LogStart {
            index: self.before_first.0,
            term: self.before_first.1,
            offset: self.start_offset,
        }
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The configuration a change applied at `index` made.
    pub fn set_conf(&mut self, index: u64, conf_state: ConfState) {
        assert!(index >= self.conf.0, "configuration changes apply in order");
        self.conf = (index, conf_state);
    }

    /// The configuration in force, and the index of the entry that made it.
    pub fn conf(&self) -> (u64, &ConfState) {
        (self.conf.0, &self.conf.1)
    }

    /// Forgets every entry up to `start.index` (applied), whose batches lie
    /// below `start.offset`: retention deleting the segments that held them.
    pub fn compact(&mut self, start: LogStart) {
        assert!(
            start.index > self.before_first.0 && start.index <= self.applied,
            "compaction to entry {} outside {}..={} (applied)",
            start.index,
            self.before_first.0 + 1,
            self.applied
        );
        assert_eq!(
            raft::Storage::term(self, start.index).ok(),
            Some(start.term),
            "entry {}'s term",
            start.index
        );
        while self.window_first <= start.index {
            let slot = self
                .window
                .pop_front()
                .expect("the window holds entries up to the last");
            self.tail_bytes -= slot.data_bytes();
            if let Slot::Batch { next_offset, .. } = slot {
                self.window_base_offset = next_offset;
            }
            self.window_first += 1;
        }
        if self.window_first == start.index + 1 {
            assert!(
                self.window_base_offset <= start.offset,
                "the batches up to entry {} end at {}, past the log start {}",
                start.index,
                self.window_base_offset,
                start.offset
            );
            self.window_base_offset = start.offset;
        }
        self.internal_below = self.internal_below.split_off(&(start.index + 1));
        self.term_starts.retain(|(index, _)| *index > start.index);
        self.term_starts.insert(0, (start.index, start.term));
        self.before_first = (start.index, start.term);
        self.start_offset = start.offset;
        self.forget_fetches_through(start.index);
    }

    /// Replaces the whole log with a leader's snapshot: no entry is held,
    /// everything up to `start.index` counts as committed and applied, and
    /// the next entry's batch starts at `start.offset`, under the
    /// snapshot's configuration `conf` (made at the entry it names).
    pub fn install(&mut self, start: LogStart, conf: (u64, ConfState)) {
        assert!(
            start.index >= self.hard_state.commit,
            "a snapshot at {} below the commit index {}",
            start.index,
            self.hard_state.commit
        );
        self.before_first = (start.index, start.term);
        self.start_offset = start.offset;
        self.window.clear();
        self.window_first = start.index + 1;
        self.window_base_offset = start.offset;
        self.tail_bytes = 0;
        self.term_starts = vec![(start.index, start.term)];
        self.internal_below.clear();
        self.conf = conf;
        self.applied = start.index;
        self.hard_state.commit = start.index;
        self.forget_fetches_through(u64::MAX);
    }

    /// Reads waiting for entries now gone are dropped (raft-rs, asked
    /// again, sends a snapshot), with what was read for them.
    fn forget_fetches_through(&mut self, index: u64) {
        self.fetches.borrow_mut().retain(|fetch| fetch.low > index);
        let mut fetched = self.fetched.borrow_mut();
        let kept = fetched.split_off(&(index.saturating_add(1)));
        *fetched = kept;
        *self.fetched_bytes.borrow_mut() = fetched.values().map(|e| e.data.len()).sum();
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        assert!(hard_state.term >= self.hard_state.term, "a term never goes back");
        self.hard_state = hard_state;
    }

    #[cfg(test)]
    pub fn set_commit(&mut self, commit: u64) {
        assert!(commit >= self.hard_state.commit, "the commit index never goes back");
        self.hard_state.commit = commit;
    }

    /// The Kafka offset after the last record batch of the log.
    pub fn end_offset(&self) -> Offset {
        self.window
            .iter()
            .rev()
            .find_map(|slot| match slot {
                Slot::Batch { next_offset, .. } => Some(*next_offset),
                Slot::Internal(_) => None,
            })
            .unwrap_or(self.window_base_offset)
    }

    /// Where entry `index` starts, in Kafka offsets.
    pub fn locate(&self, index: u64) -> Located {
        assert!(index <= self.last_index() + 1, "entry {index} is past the log");
        if index < self.window_first {
            return Located::Below;
        }
        let before = (index - self.window_first) as usize;
        let start = self
            .window
            .range(..before)
            .rev()
            .find_map(|slot| match slot {
                Slot::Batch { next_offset, .. } => Some(*next_offset),
                Slot::Internal(_) => None,
            })
            .unwrap_or(self.window_base_offset);
        Located::At(start)
    }

    /// The Kafka offset after entry `index`'s batch (or after the last
    /// batch before it), when the window holds it.
    pub fn end_offset_of(&self, index: u64) -> Option<Offset> {
        match self.locate(index + 1) {
            Located::At(offset) => Some(offset),
            Located::Below => None,
        }
    }

    /// Whether entry `index` is one of Raft's own (no record batch).
    #[cfg(test)]
    pub fn is_internal(&self, index: u64) -> bool {
        if index < self.window_first {
            return self.internal_below.contains_key(&index);
        }
        matches!(
            self.window.get((index - self.window_first) as usize),
            Some(Slot::Internal(_))
        )
    }

    /// Raft's own entries in `low..high`, for a fetch that reads the
    /// batches between them from the partition log.
    pub fn internal_entries(&self, low: u64, high: u64) -> Vec<Entry> {
        let mut entries: Vec<Entry> = self.internal_below.range(low..high).map(|(_, e)| e.clone()).collect();
        for index in low.max(self.window_first)..high.min(self.last_index() + 1) {
            if let Slot::Internal(entry) = &self.window[(index - self.window_first) as usize] {
                entries.push(entry.clone());
            }
        }
        entries
    }

    /// Appends `entry` (its index at most one past the last; an earlier
    /// one cuts what follows it, as Raft's log does). A batch gives the
    /// offset after its last record.
    pub fn append(&mut self, entry: &Entry, batch_next_offset: Option<Offset>) {
        let index = entry.index;
        assert!(
            index > self.before_first.0 && index <= self.last_index() + 1,
            "entry {index} outside {}..={}",
            self.before_first.0 + 1,
            self.last_index() + 1
        );
        self.cut_from(index);
        let slot = match batch_next_offset {
            Some(next_offset) => {
                assert!(next_offset > self.end_offset(), "offsets strictly increase");
                Slot::Batch {
                    term: entry.term,
                    next_offset,
                    // A batch read back at start comes without its bytes.
                    data: Some(entry.data.clone()).filter(|data| !data.is_empty()),
                }
            }
            None => Slot::Internal(entry.clone()),
        };
        let (_, last_term) = *self.term_starts.last().expect("never empty");
        assert!(entry.term >= last_term, "terms never go back along the log");
        if entry.term != last_term {
            self.term_starts.push((index, entry.term));
        }
        self.tail_bytes += slot.data_bytes();
        self.window.push_back(slot);
        self.trim();
    }

    /// Forgets entries from `index` on (a leader's log replacing them).
    fn cut_from(&mut self, index: u64) {
        if index > self.last_index() {
            return;
        }
        assert!(
            index > self.hard_state.commit,
            "entry {index} is committed; it is never cut"
        );
        assert!(index >= self.window_first, "an uncommitted entry is in the window");
        while self.last_index() >= index {
            let slot = self.window.pop_back().expect("the window holds the entry");
            self.tail_bytes -= slot.data_bytes();
        }
        while self.term_starts.len() > 1 && self.term_starts.last().expect("never empty").0 >= index {
            self.term_starts.pop();
        }
        self.fetched.borrow_mut().clear();
        *self.fetched_bytes.borrow_mut() = 0;
    }

    /// Everything up to `applied` was applied.
    pub fn set_applied(&mut self, applied: u64) {
        assert!(applied >= self.applied, "the applied index never goes back");
        self.applied = applied;
        self.trim();
    }

    /// Keeps the tail's bytes within `TAIL_BYTES_MAX`: applied entries go
    /// first, then the bytes (not the slots) of the oldest unapplied ones;
    /// an applied entry whose bytes are gone is not kept at all (a send
    /// reads it back from the partition log).
    fn trim(&mut self) {
        while self.window_first <= self.applied
            && self
                .window
                .front()
                .is_some_and(|slot| self.tail_bytes > TAIL_BYTES_MAX || slot.data_bytes() == 0)
        {
            let slot = self.window.pop_front().expect("not empty");
            self.tail_bytes -= slot.data_bytes();
            match slot {
                Slot::Internal(entry) => {
                    self.internal_below.insert(entry.index, entry);
                }
                Slot::Batch { next_offset, .. } => self.window_base_offset = next_offset,
            }
            self.window_first += 1;
        }
        for slot in self.window.iter_mut() {
            if self.tail_bytes <= TAIL_BYTES_MAX {
                break;
            }
            if let Slot::Batch { data, .. } = slot {
                if let Some(bytes) = data.take() {
                    self.tail_bytes -= bytes.len();
                }
            }
        }
    }

    /// The next read from the partition log raft-rs waits for.
    pub fn has_fetch(&self) -> bool {
        !self.fetches.borrow().is_empty()
    }

    pub fn take_fetch(&self) -> Option<Fetch> {
        self.fetches.borrow_mut().pop_front()
    }

    /// Entries read back from the partition log for a fetch: raft-rs asks
    /// for them again once told (`on_entries_fetched`).
    pub fn fetched(&self, entries: Vec<Entry>) {
        let mut fetched = self.fetched.borrow_mut();
        let mut bytes = self.fetched_bytes.borrow_mut();
        for entry in entries {
            if *bytes + entry.data.len() > FETCHED_BYTES_MAX {
                break;
            }
            *bytes += entry.data.len();
            fetched.insert(entry.index, entry);
        }
    }

    fn window_entry(&self, index: u64) -> Option<Entry> {
        let slot = self.window.get(index.checked_sub(self.window_first)? as usize)?;
        Some(match slot {
            Slot::Internal(entry) => entry.clone(),
            Slot::Batch { term, data, .. } => {
                let mut entry = Entry {
                    index,
                    term: *term,
                    ..Default::default()
                };
                entry.set_entry_type(EntryType::EntryNormal);
                match data {
                    Some(data) => entry.data = data.clone(),
                    None => entry.context = Bytes::from_static(DATA_ELIDED),
                }
                entry
            }
        })
    }
}

impl raft::Storage for LogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf.1.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into().unwrap_or(u64::MAX);
        if low <= self.before_first.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= self.last_index() + 1,
            "entries {low}..{high} asked past the last {}",
            self.last_index()
        );
        let mut entries = Vec::new();
        let mut size = 0u64;
        let mut fetched = self.fetched.borrow_mut();
        for index in low..high {
            let entry = match self.window_entry(index) {
                // A send needs the bytes; a batch without them is read back.
                Some(entry) if entry.context.as_ref() == DATA_ELIDED && context.can_async() => {
                    fetched.get(&index).cloned()
                }
                Some(entry) => Some(entry),
                None => match self.internal_below.get(&index) {
                    Some(entry) => Some(entry.clone()),
                    None => fetched.get(&index).cloned(),
                },
            };
            let entry = match entry {
                Some(entry) => entry,
                None if context.can_async() => {
                    if !entries.is_empty() {
                        break;
                    }
                    let mut fetches = self.fetches.borrow_mut();
                    if fetches.len() < FETCHES_WAITING_MAX {
                        fetches.push_back(Fetch {
                            low,
                            high,
                            max_size,
                            context,
                        });
                    }
                    return Err(raft::Error::Store(StorageError::LogTemporarilyUnavailable));
                }
                None => {
                    // Only a send reads below the window (raft-rs applies
                    // and checks configurations above the applied index,
                    // which the window always holds).
                    let mut entry = Entry {
                        index,
                        term: self.term(index)?,
                        ..Default::default()
                    };
                    entry.context = Bytes::from_static(DATA_ELIDED);
                    entry
                }
            };
            size += entry.data.len() as u64 + entry.context.len() as u64;
            if !entries.is_empty() && size > max_size {
                break;
            }
            entries.push(entry);
        }
        // What a send took is not needed again.
        if let Some(last) = entries.last() {
            let taken: Vec<u64> = fetched.range(..=last.index).map(|(i, _)| *i).collect();
            let mut bytes = self.fetched_bytes.borrow_mut();
            for index in taken {
                if let Some(entry) = fetched.remove(&index) {
                    *bytes -= entry.data.len();
                }
            }
        }
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.before_first.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > self.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if let Some(slot) = index
            .checked_sub(self.window_first)
            .and_then(|at| self.window.get(at as usize))
        {
            return Ok(slot.term());
        }
        let at = self.term_starts.partition_point(|(start, _)| *start <= index);
        Ok(self.term_starts[at - 1].1)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(LogStorage::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(LogStorage::last_index(self))
    }

    /// Asked for a follower that needs an entry this log forgot: where the
    /// log starts (nothing more is a partition's state).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let start = self.log_start();
        let (index, term) = (start.index, start.term);
        if index == 0 || index < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        let data = SnapshotData {
            start,
            conf_index: self.conf.0,
        };
        let mut snapshot = Snapshot {
            data: Bytes::copy_from_slice(&data.encode()),
            ..Default::default()
        };
        let metadata = snapshot.mut_metadata();
        metadata.index = index;
        metadata.term = term;
        // The configuration in force, which may be younger than the log
        // start: a member a change added must find itself in it (raft-rs
        // refuses a snapshot that does not name it), and skips the change
        // when its entry arrives (`SnapshotData::conf_index`).
        metadata.set_conf_state(self.conf.1.clone());
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use raft::Storage as _;

    use super::*;

    fn batch(index: u64, term: u64, bytes: usize) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; bytes].into(),
            ..Default::default()
        }
    }

    fn noop(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn storage() -> LogStorage {
        LogStorage::new(
            HardState::default(),
            (0, ConfState::from((vec![1, 2, 3], vec![]))),
            LogStart {
                index: 0,
                term: 0,
                offset: Offset(0),
            },
            1,
            Offset(0),
            BTreeMap::new(),
            0,
        )
    }

    #[test]
    fn terms_offsets_and_cuts() {
        let mut s = storage();
        s.append(&noop(1, 1), None);
        s.append(&batch(2, 1, 10), Some(Offset(5)));
        s.append(&batch(3, 1, 10), Some(Offset(9)));
        s.append(&noop(4, 2), None);
        s.append(&batch(5, 2, 10), Some(Offset(12)));
        assert_eq!(s.last_index(), 5);
        assert_eq!(s.end_offset(), Offset(12));
        assert_eq!(s.locate(1), Located::At(Offset(0)));
        assert_eq!(s.locate(3), Located::At(Offset(5)));
        assert_eq!(s.locate(5), Located::At(Offset(9)));
        assert_eq!(s.locate(6), Located::At(Offset(12)));
        assert_eq!(s.end_offset_of(4), Some(Offset(9)));
        assert_eq!(s.end_offset_of(0), Some(Offset(0)));
        assert_eq!((s.term(0).unwrap(), s.term(3).unwrap(), s.term(4).unwrap()), (0, 1, 2));
        assert!(s.is_internal(4) && !s.is_internal(5));
        // A leader of term 3 replaces entries 4 and 5.
        s.append(&noop(4, 3), None);
        assert_eq!((s.last_index(), s.end_offset()), (4, Offset(9)));
        assert_eq!(s.term(4).unwrap(), 3);
        let entries = s.entries(1, 5, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(entries.iter().map(|e| e.term).collect::<Vec<_>>(), [1, 1, 1, 3]);
        assert_eq!(entries[1].data.len(), 10);
    }

    #[test]
    fn old_entries_are_fetched_for_a_send_and_elided_for_apply() {
        let mut s = storage();
        let big = TAIL_BYTES_MAX / 4 + 1;
        s.append(&noop(1, 1), None);
        for index in 2..=9 {
            s.append(&batch(index, 1, big), Some(Offset(index * 10)));
        }
        // Nothing applied: every slot is kept, only the oldest bytes go.
        assert_eq!(s.window_first, 1);
        assert!(s.tail_bytes <= TAIL_BYTES_MAX);
        let applying = s.entries(2, 4, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(applying[0].context.as_ref(), DATA_ELIDED);
        assert!(applying[0].data.is_empty());
        // A send of the same entries waits for a fetch.
        let e = s.entries(2, 4, None, GetEntriesContext::empty(true)).unwrap_err();
        assert_eq!(e, raft::Error::Store(StorageError::LogTemporarilyUnavailable));
        let fetch = s.take_fetch().unwrap();
        assert_eq!((fetch.low, fetch.high), (2, 4));
        s.fetched(vec![batch(2, 1, big), batch(3, 1, big)]);
        let sent = s.entries(2, 4, None, GetEntriesContext::empty(true)).unwrap();
        assert_eq!(sent.iter().map(|e| e.data.len()).collect::<Vec<_>>(), [big, big]);
        assert_eq!(*s.fetched_bytes.borrow(), 0, "what a send took is let go");
        // Applied entries leave the window; their terms stay known.
        s.set_applied(8);
        assert!(s.window_first > 2);
        assert_eq!(s.locate(2), Located::Below);
        assert_eq!(s.term(1).unwrap(), 1);
        assert!(s.is_internal(1));
        assert_eq!(s.internal_entries(1, 9).len(), 1);
        assert_eq!(s.end_offset(), Offset(90));
    }

    #[test]
    fn a_compacted_log_answers_a_snapshot_of_where_it_starts() {
        let mut s = storage();
        assert_eq!(
            s.snapshot(0, 2).unwrap_err(),
            raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable),
            "nothing forgotten, nothing to send"
        );
        s.append(&noop(1, 1), None);
        s.append(&batch(2, 1, 10), Some(Offset(5)));
        s.append(&noop(3, 2), None);
        s.append(&batch(4, 2, 10), Some(Offset(9)));
        s.append(&batch(5, 2, 10), Some(Offset(12)));
        s.set_commit(5);
        s.set_applied(4);
        // Node 3 swapped for its next incarnation at entries 3 (joint) and
        // 5 (left): a snapshot at 4 names the configuration of 5, which
        // the new member needs to find itself in.
        let joint = {
            let mut joint = ConfState::from((vec![1, 2, 1 << 32 | 3], vec![]));
            joint.voters_outgoing = vec![1, 2, 3];
            joint
        };
        s.set_conf(3, joint);
        let swapped = ConfState::from((vec![1, 2, 1 << 32 | 3], vec![]));
        s.set_conf(5, swapped.clone());
        assert_eq!(s.initial_state().unwrap().conf_state, swapped);
        // Retention deleted the segment holding offsets 0..9.
        let start = LogStart {
            index: 4,
            term: 2,
            offset: Offset(9),
        };
        s.compact(start);
        assert_eq!((LogStorage::first_index(&s), s.log_start()), (5, start));
        assert_eq!(s.term(4).unwrap(), 2);
        assert_eq!(s.term(3), Err(raft::Error::Store(StorageError::Compacted)));
        assert_eq!(
            s.entries(3, 5, None, GetEntriesContext::empty(true)).unwrap_err(),
            raft::Error::Store(StorageError::Compacted)
        );
        assert_eq!(s.locate(5), Located::At(Offset(9)));
        assert!(s.internal_entries(1, 6).is_empty(), "internal entries below went too");
        let snapshot = s.snapshot(0, 2).unwrap();
        assert_eq!((snapshot.get_metadata().index, snapshot.get_metadata().term), (4, 2));
        assert_eq!(snapshot.get_metadata().get_conf_state(), &swapped);
        assert_eq!(
            SnapshotData::decode(&snapshot.data),
            Ok(SnapshotData { start, conf_index: 5 })
        );
        // A follower installing it holds nothing, and appends after it.
        let mut follower = storage();
        follower.append(&noop(1, 1), None);
        follower.install(start, (5, swapped.clone()));
        assert_eq!(follower.conf(), (5, &swapped));
        assert_eq!((follower.last_index(), follower.end_offset()), (4, Offset(9)));
        assert_eq!((follower.applied(), follower.hard_state().commit), (4, 4));
        follower.append(&batch(5, 2, 10), Some(Offset(12)));
        assert_eq!(follower.locate(5), Located::At(Offset(9)));
        assert_eq!(follower.term(4).unwrap(), 2);
        assert!(LogStart::decode(&[0; 23]).is_err());
        assert!(SnapshotData::decode(&[0; 24]).is_err());
    }

    #[test]
    #[should_panic(expected = "committed")]
    fn a_committed_entry_is_never_cut() {
        let mut s = storage();
        s.append(&noop(1, 1), None);
        s.append(&batch(2, 1, 1), Some(Offset(1)));
        s.set_commit(2);
        s.append(&noop(2, 2), None);
    }
}
