//! A replicated partition's `raft-state` file: what of its Raft log is not
//! a record batch in the segments. Raft's own entries (a new leader's empty
//! entry, configuration changes), the hard state (term, vote, commit), cuts
//! of the log's uncommitted tail, and checkpoints of the applied index with
//! the high watermark it stands for, so that a restart reads the partition
//! log back only from there. A `storage::record_file`, one batch per write.
//!
//! Term and vote are synced before the messages that depend on them go out
//! (Raft's safety rests on them); an applied checkpoint is written without
//! a sync, since losing one only makes the next start read further back.

use std::collections::BTreeMap;

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState};
use storage::record_file::{self, BatchWriter};
use storage::Offset;

use super::log_storage::LogStart;

/// The file's name in the partition's directory.
pub const FILE_NAME: &str = "raft-state";

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_CUT: u8 = 3;
const KIND_APPLIED: u8 = 4;
const KIND_LOG_START: u8 = 5;
const KIND_INSTALL: u8 = 6;
const KIND_CONF: u8 = 7;

/// Records to write in one batch.
#[derive(Default)]
pub struct StateBatch {
    writer: BatchWriter,
    /// Whether the batch must be synced before what depends on it.
    pub needs_sync: bool,
}

impl StateBatch {
    /// Raft's own entry at its index (cutting what followed it).
    pub fn entry(&mut self, entry: &Entry) {
        self.writer
            .record(KIND_ENTRY, &entry.write_to_bytes().expect("an entry encodes"));
        self.needs_sync = true;
    }

    pub fn hard_state(&mut self, hard_state: &HardState) {
        self.writer.record(
            KIND_HARD_STATE,
            &hard_state.write_to_bytes().expect("a hard state encodes"),
        );
        self.needs_sync = true;
    }

    /// The log's entries from `index` on are replaced.
    pub fn cut(&mut self, index: u64) {
        self.writer.record(KIND_CUT, &index.to_le_bytes());
        self.needs_sync = true;
    }

    /// Everything up to `index` was applied; the high watermark is `offset`.
    pub fn applied(&mut self, index: u64, offset: Offset) {
        let mut payload = [0u8; 16];
        payload[..8].copy_from_slice(&index.to_le_bytes());
        payload[8..].copy_from_slice(&offset.0.to_le_bytes());
        self.writer.record(KIND_APPLIED, &payload);
    }

    /// The Raft log's entries up to `start.index` are forgotten: the
    /// partition log's segments below `start.offset` may go.
    pub fn log_start(&mut self, start: LogStart) {
        self.writer.record(KIND_LOG_START, &start.encode());
        self.needs_sync = true;
    }

    /// A leader's snapshot replaces the whole log: written before the
    /// partition log is emptied, so a crash between the two finishes the
    /// install at the next open (`ReplicaState::installing`) rather than
    /// leaving a log that belongs to neither.
    pub fn install(&mut self, start: LogStart) {
        self.writer.record(KIND_INSTALL, &start.encode());
        self.needs_sync = true;
    }

    /// The group's configuration after entry `index` (a change applied
    /// there, or a snapshot's at its index).
    pub fn conf(&mut self, index: u64, conf_state: &ConfState) {
        let mut payload = index.to_le_bytes().to_vec();
        payload.extend(conf_state.write_to_bytes().expect("a configuration encodes"));
        self.writer.record(KIND_CONF, &payload);
        self.needs_sync = true;
    }

    pub fn is_empty(&self) -> bool {
        self.writer.is_empty()
    }

    pub fn finish(self) -> Result<Vec<u8>, String> {
        self.writer.finish().map_err(|e| format!("{FILE_NAME}: {e}"))
    }
}

/// What a replay found.
#[derive(Debug, Default, PartialEq)]
pub struct ReplicaState {
    /// Raft's own entries, as cut and appended in file order.
    pub internal: BTreeMap<u64, Entry>,
    pub hard_state: HardState,
    /// The last applied checkpoint: index and high watermark.
    pub applied: Option<(u64, Offset)>,
    /// Where the Raft log starts, once its head was forgotten.
    pub log_start: Option<LogStart>,
    /// A snapshot whose install may not have emptied the partition log
    /// (no `log_start` at or past it followed).
    pub installing: Option<LogStart>,
    /// The configurations recorded, by the index they hold after.
    pub confs: BTreeMap<u64, ConfState>,
    /// Bytes of whole batches (a torn last one lies past them).
    pub valid_bytes: usize,
}

impl ReplicaState {
    /// The batch that writes this state whole, for a fresh file.
    pub fn rewrite(&self) -> StateBatch {
        let mut batch = StateBatch::default();
        if let Some(start) = self.installing {
            batch.install(start);
        }
        if let Some(start) = self.log_start.filter(|_| self.installing.is_none()) {
            batch.log_start(start);
        }
        for (index, conf_state) in &self.confs {
            batch.conf(*index, conf_state);
        }
        for entry in self.internal.values() {
            batch.entry(entry);
        }
        batch.hard_state(&self.hard_state);
        if let Some((index, offset)) = self.applied {
            batch.applied(index, offset);
        }
        batch
    }
}

pub fn replay(bytes: &[u8]) -> Result<ReplicaState, String> {
    let file = record_file::replay(bytes).map_err(|e| format!("{FILE_NAME}: {e}"))?;
    if let Some(torn) = &file.torn {
        tracing::warn!(%torn, "{FILE_NAME}: cut a torn last batch");
    }
    let mut state = ReplicaState {
        valid_bytes: file.valid_bytes,
        ..ReplicaState::default()
    };
    let index_of = |payload: &[u8], what: &str| -> Result<u64, String> {
        let bytes: [u8; 8] = payload
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("{FILE_NAME}: a {what} record of {} bytes", payload.len()))?;
        Ok(u64::from_le_bytes(bytes))
    };
    for (kind, payload) in file.records {
        match kind {
            KIND_ENTRY => {
                let entry = Entry::parse_from_bytes(payload).map_err(|e| format!("{FILE_NAME}: an entry: {e}"))?;
                state.internal.split_off(&entry.index);
                state.internal.insert(entry.index, entry);
            }
            KIND_HARD_STATE => {
                state.hard_state =
                    HardState::parse_from_bytes(payload).map_err(|e| format!("{FILE_NAME}: a hard state: {e}"))?;
            }
            KIND_CUT => {
                state.internal.split_off(&index_of(payload, "cut")?);
            }
            KIND_APPLIED => {
                if payload.len() != 16 {
                    return Err(format!("{FILE_NAME}: an applied record of {} bytes", payload.len()));
                }
                let index = index_of(payload, "applied")?;
                let offset = index_of(&payload[8..], "applied")?;
                state.applied = Some((index, Offset(offset)));
            }
            KIND_LOG_START => {
                let start = LogStart::decode(payload).map_err(|e| format!("{FILE_NAME}: a log start: {e}"))?;
                state.internal = state.internal.split_off(&(start.index + 1));
                state.installing = state.installing.filter(|i| i.index > start.index);
                state.log_start = Some(start);
            }
            KIND_INSTALL => {
                let start = LogStart::decode(payload).map_err(|e| format!("{FILE_NAME}: an install: {e}"))?;
                state.internal.clear();
                // The snapshot's configuration follows in the same batch.
                state.confs.clear();
                state.installing = Some(start);
                state.log_start = Some(start);
            }
            KIND_CONF => {
                let index = index_of(payload, "configuration")?;
                let conf_state = ConfState::parse_from_bytes(&payload[8..])
                    .map_err(|e| format!("{FILE_NAME}: a configuration: {e}"))?;
                state.confs.insert(index, conf_state);
            }
            other => return Err(format!("{FILE_NAME}: a record of unknown kind {other}")),
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn configurations_replay_by_index_and_an_install_carries_its_own() {
        let conf = |voters: Vec<u64>, outgoing: Vec<u64>| {
            let mut conf = ConfState::from((voters, vec![]));
            conf.voters_outgoing = outgoing;
            conf
        };
        let joint = conf(vec![1, 2, 4], vec![1, 2, 3]);
        let mut file = Vec::new();
        let mut batch = StateBatch::default();
        batch.conf(5, &joint);
        batch.conf(6, &conf(vec![1, 2, 4], vec![]));
        assert!(batch.needs_sync);
        file.extend(batch.finish().unwrap());
        let state = replay(&file).unwrap();
        assert_eq!(state.confs.keys().copied().collect::<Vec<_>>(), [5, 6]);
        assert_eq!(state.confs[&5], joint);
        let again = replay(&state.rewrite().finish().unwrap()).unwrap();
        assert_eq!(again.confs, state.confs);
        let start = LogStart {
            index: 30,
            term: 2,
            offset: Offset(70),
        };
        let mut batch = StateBatch::default();
        batch.install(start);
        batch.conf(30, &conf(vec![1, 2, 3], vec![]));
        file.extend(batch.finish().unwrap());
        let state = replay(&file).unwrap();
        assert_eq!(state.confs.keys().copied().collect::<Vec<_>>(), [30]);
        let again = replay(&state.rewrite().finish().unwrap()).unwrap();
        assert_eq!((again.confs, again.installing), (state.confs, state.installing));
    }

    #[test]
    fn entries_cuts_hard_states_and_checkpoints_replay() {
        let mut file = Vec::new();
        let mut batch = StateBatch::default();
        batch.entry(&noop(1, 1));
        batch.entry(&noop(5, 2));
        batch.hard_state(&HardState {
            term: 2,
            vote: 1,
            commit: 4,
            ..Default::default()
        });
        file.extend(batch.finish().unwrap());
        let mut batch = StateBatch::default();
        batch.applied(6, Offset(40));
        assert!(!batch.needs_sync, "a checkpoint is not synced");
        file.extend(batch.finish().unwrap());
        let mut batch = StateBatch::default();
        batch.cut(5);
        batch.entry(&noop(7, 3));
        file.extend(batch.finish().unwrap());
        let state = replay(&file).unwrap();
        assert_eq!(state.internal.keys().copied().collect::<Vec<_>>(), [1, 7]);
        assert_eq!((state.hard_state.term, state.hard_state.vote), (2, 1));
        assert_eq!(state.applied, Some((6, Offset(40))));
        // An entry at an index cuts what followed it.
        let mut batch = StateBatch::default();
        batch.entry(&noop(1, 4));
        file.extend(batch.finish().unwrap());
        let state = replay(&file).unwrap();
        assert_eq!(state.internal.keys().copied().collect::<Vec<_>>(), [1]);
        // A rewrite holds the same state.
        let again = replay(&state.rewrite().finish().unwrap()).unwrap();
        assert_eq!(
            (again.internal, again.hard_state, again.applied),
            (state.internal, state.hard_state, state.applied)
        );
        // A log start forgets the entries up to it; an install all of them
        // until a log start at or past it says the partition log was emptied.
        let start = |index, offset| LogStart {
            index,
            term: 4,
            offset: Offset(offset),
        };
        let mut batch = StateBatch::default();
        batch.entry(&noop(9, 4));
        batch.log_start(start(8, 60));
        file.extend(batch.finish().unwrap());
        let state = replay(&file).unwrap();
        assert_eq!(state.internal.keys().copied().collect::<Vec<_>>(), [9]);
        assert_eq!((state.log_start, state.installing), (Some(start(8, 60)), None));
        let mut batch = StateBatch::default();
        batch.install(start(20, 90));
        file.extend(batch.finish().unwrap());
        let state = replay(&file).unwrap();
        assert!(state.internal.is_empty());
        assert!(state.confs.is_empty(), "an install replaces the configurations");
        assert_eq!(state.installing, Some(start(20, 90)));
        let again = replay(&state.rewrite().finish().unwrap()).unwrap();
        assert_eq!((again.log_start, again.installing), (state.log_start, state.installing));
        let mut batch = StateBatch::default();
        batch.log_start(start(20, 90));
        batch.entry(&noop(21, 5));
        file.extend(batch.finish().unwrap());
        let state = replay(&file).unwrap();
        assert_eq!((state.log_start, state.installing), (Some(start(20, 90)), None));
        let again = replay(&state.rewrite().finish().unwrap()).unwrap();
        assert_eq!((&again.internal, again.log_start), (&state.internal, state.log_start));
        let mut odd = BatchWriter::default();
        odd.record(KIND_CUT, b"short");
        assert!(replay(&odd.finish().unwrap())
            .unwrap_err()
            .contains("cut record of 5 bytes"));
    }
}
