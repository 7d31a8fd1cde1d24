//! The controller replica's durable state: its Raft log entries and hard
//! state (term, vote, commit) as records of a record file
//! (`storage::record_file`), one batch per Raft `Ready`, each synced
//! before the messages that depend on it go out; replayed at start.

use protobuf::Message as _;
use raft::prelude::{Entry, HardState};
use storage::record_file::{self, BatchWriter};

pub use storage::record_file::BATCH_BYTES_MAX;

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;

/// One Ready's records.
#[derive(Default)]
pub struct ReadyBatch {
    writer: BatchWriter,
}

impl ReadyBatch {
    pub fn entry(&mut self, entry: &Entry) {
        self.writer
            .record(KIND_ENTRY, &entry.write_to_bytes().expect("an entry encodes"));
    }

    pub fn hard_state(&mut self, hard_state: &HardState) {
        self.writer.record(
            KIND_HARD_STATE,
            &hard_state.write_to_bytes().expect("a hard state encodes"),
        );
    }

    pub fn is_empty(&self) -> bool {
        self.writer.is_empty()
    }

    pub fn finish(self) -> Result<Vec<u8>, String> {
        self.writer.finish().map_err(|e| format!("controller log: {e}"))
    }
}

/// What a replay found: every entry in file order (later ones overwrite
/// earlier ones at the same index, as Raft appended them) and the last
/// hard state.
#[derive(Debug, Default)]
pub struct Replayed {
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
}

/// Reads a controller log file's bytes.
pub fn replay(bytes: &[u8]) -> Result<Replayed, String> {
    let file = record_file::replay(bytes).map_err(|e| format!("controller log: {e}"))?;
    if let Some(torn) = &file.torn {
        tracing::warn!(%torn, "controller log: cut a torn last batch");
    }
    let mut replayed = Replayed::default();
    for (kind, payload) in file.records {
        match kind {
            KIND_ENTRY => replayed
                .entries
                .push(Entry::parse_from_bytes(payload).map_err(|e| format!("controller log: an entry: {e}"))?),
            KIND_HARD_STATE => {
                replayed.hard_state = Some(
                    HardState::parse_from_bytes(payload).map_err(|e| format!("controller log: a hard state: {e}"))?,
                )
            }
            other => return Err(format!("controller log: a record of unknown kind {other}")),
        }
    }
    Ok(replayed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_hard_states_replay() {
        let mut file = Vec::new();
        for index in 1..=3u64 {
            let mut batch = ReadyBatch::default();
            batch.entry(&Entry {
                index,
                term: 2,
                data: index.to_le_bytes().to_vec().into(),
                ..Default::default()
            });
            batch.hard_state(&HardState {
                term: 2,
                vote: 1,
                commit: index - 1,
                ..Default::default()
            });
            file.extend(batch.finish().unwrap());
        }
        let replayed = replay(&file).unwrap();
        assert_eq!(replayed.entries.iter().map(|e| e.index).collect::<Vec<_>>(), [1, 2, 3]);
        let hard_state = replayed.hard_state.unwrap();
        assert_eq!((hard_state.term, hard_state.vote, hard_state.commit), (2, 1, 2));
        let mut odd = BatchWriter::default();
        odd.record(9, b"?");
        let e = replay(&odd.finish().unwrap()).unwrap_err();
        assert!(e.contains("unknown kind 9"), "{e}");
    }
}
