//! A small append-only file of records for state that is not a partition
//! log (a Raft group's log and hard state on a node's controller): records
//! written in batches, each batch synced before the next is written, and
//! replayed whole at start. Knows nothing of what the records mean.
//!
//! ```text
//! batch  := length u32 | crc32c(body) u32 | body        (little endian)
//! body   := record*
//! record := kind u8 | length u32 | payload
//! ```
//!
//! A crash can tear only the last batch, so a bad batch at the end is cut
//! off, and a bad batch with a whole one after it is damage: the replay
//! refuses it rather than forget what was acknowledged as durable.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::StorageError;

/// The most bytes one batch may hold.
pub const BATCH_BYTES_MAX: usize = 16 << 20;

const BATCH_HEADER_BYTES: usize = 8;
const RECORD_HEADER_BYTES: usize = 5;

/// Records gathered into one batch.
#[derive(Default)]
pub struct BatchWriter {
    body: Vec<u8>,
}

impl BatchWriter {
    pub fn record(&mut self, kind: u8, payload: &[u8]) {
        self.body.push(kind);
        self.body.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.body.extend_from_slice(payload);
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The batch's bytes, or why it cannot be written.
    pub fn finish(self) -> Result<Vec<u8>, String> {
        if self.body.len() > BATCH_BYTES_MAX {
            return Err(format!("a batch of {} bytes, over {BATCH_BYTES_MAX}", self.body.len()));
        }
        let mut batch = Vec::with_capacity(BATCH_HEADER_BYTES + self.body.len());
        batch.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        batch.extend_from_slice(&crc32c::crc32c(&self.body).to_le_bytes());
        batch.extend_from_slice(&self.body);
        Ok(batch)
    }
}

/// What a replay found: every record of the whole batches in file order,
/// as (kind, payload), and how many bytes of the file those batches are
/// (a torn last batch lies past them, to be cut).
#[derive(Debug, Default)]
pub struct Replayed<'a> {
    pub records: Vec<(u8, &'a [u8])>,
    pub valid_bytes: usize,
    /// Why the bytes past `valid_bytes` were not read, if there are any.
    pub torn: Option<String>,
}

/// Opens the record file at `path` for appending (created empty if new,
/// its directory synced) and cuts a torn last batch off it, so the batches
/// appended next follow whole ones. Returns the file and the bytes of its
/// whole batches, for `replay`. Blocks: call it off a shard's thread, or
/// before the shards start.
pub fn open(path: &Path) -> crate::Result<(File, Vec<u8>)> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| StorageError::Io { op, path, source }
    };
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(io("open", path))?;
    let mut bytes = std::fs::read(path).map_err(io("read", path))?;
    let valid = replay(&bytes)
        .map_err(|reason| StorageError::RecordFile {
            path: path.to_path_buf(),
            reason,
        })?
        .valid_bytes;
    if valid < bytes.len() {
        file.set_len(valid as u64).map_err(io("cut the torn tail of", path))?;
        file.sync_data().map_err(io("fdatasync", path))?;
        bytes.truncate(valid);
    }
    let dir = path.parent().expect("a record file is in a directory");
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync", dir))?;
    Ok((file, bytes))
}

/// Appends one batch (`BatchWriter::finish`'s bytes) to a file `open`
/// opened, synced if `sync`. Blocks, as `open` does.
pub fn append(file: &File, path: &Path, batch: &[u8], sync: bool) -> crate::Result<()> {
    let mut writer = file;
    writer
        .write_all(batch)
        .and_then(|()| if sync { file.sync_data() } else { Ok(()) })
        .map_err(|source| StorageError::Io {
            op: "append to",
            path: path.to_path_buf(),
            source,
        })
}

/// Reads a record file's bytes.
pub fn replay(bytes: &[u8]) -> Result<Replayed<'_>, String> {
    let mut replayed = Replayed::default();
    let mut at = 0;
    while at < bytes.len() {
        match batch_at(bytes, at) {
            Ok((body, next)) => {
                read_body(body, &mut replayed.records).map_err(|e| format!("batch at byte {at}: {e}"))?;
                at = next;
                replayed.valid_bytes = at;
            }
            Err(reason) => {
                let declared = declared_end(bytes, at);
                if declared.is_some_and(|end| end < bytes.len() && batch_at(bytes, end).is_ok()) {
                    return Err(format!("damaged at byte {at}: {reason}, with whole batches after it"));
                }
                replayed.torn = Some(format!("{} bytes at byte {at}: {reason}", bytes.len() - at));
                break;
            }
        }
    }
    Ok(replayed)
}

fn declared_end(bytes: &[u8], at: usize) -> Option<usize> {
    let len = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
    (len <= BATCH_BYTES_MAX).then_some(at + BATCH_HEADER_BYTES + len)
}

/// The body of the whole batch at `at`, and where the next one starts.
fn batch_at(bytes: &[u8], at: usize) -> Result<(&[u8], usize), String> {
    let header = bytes
        .get(at..at + BATCH_HEADER_BYTES)
        .ok_or("a batch header cut short")?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > BATCH_BYTES_MAX {
        return Err(format!("a batch of {len} bytes, over {BATCH_BYTES_MAX}"));
    }
    let start = at + BATCH_HEADER_BYTES;
    let body = bytes.get(start..start + len).ok_or("a batch cut short")?;
    if crc32c::crc32c(body) != crc {
        return Err("a batch whose crc does not match".into());
    }
    Ok((body, start + len))
}

fn read_body<'a>(mut body: &'a [u8], records: &mut Vec<(u8, &'a [u8])>) -> Result<(), String> {
    while !body.is_empty() {
        if body.len() < RECORD_HEADER_BYTES {
            return Err("a record header cut short".into());
        }
        let kind = body[0];
        let len = u32::from_le_bytes(body[1..5].try_into().expect("4 bytes")) as usize;
        let payload = body
            .get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len)
            .ok_or("a record longer than its batch")?;
        records.push((kind, payload));
        body = &body[RECORD_HEADER_BYTES + len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(batches: u64) -> Vec<u8> {
        let mut file = Vec::new();
        for b in 0..batches {
            let mut writer = BatchWriter::default();
            writer.record(1, &b.to_le_bytes());
            writer.record(2, b"state");
            file.extend(writer.finish().unwrap());
        }
        file
    }

    fn numbers(replayed: &Replayed<'_>) -> Vec<u64> {
        replayed
            .records
            .iter()
            .filter(|(kind, _)| *kind == 1)
            .map(|(_, p)| u64::from_le_bytes((*p).try_into().unwrap()))
            .collect()
    }

    #[test]
    fn batches_replay_in_order() {
        let bytes = file(3);
        let replayed = replay(&bytes).unwrap();
        assert_eq!(numbers(&replayed), [0, 1, 2]);
        assert_eq!(replayed.records.len(), 6);
        assert_eq!(replayed.valid_bytes, file(3).len());
        assert!(replayed.torn.is_none());
    }

    #[test]
    fn a_torn_last_batch_is_cut_and_damage_before_a_whole_one_refused() {
        let whole = file(3);
        for cut in [whole.len() - 1, whole.len() - 10, file(2).len() + 3] {
            let replayed = replay(&whole[..cut]).unwrap();
            assert_eq!(numbers(&replayed), [0, 1], "cut at {cut}");
            assert_eq!(replayed.valid_bytes, file(2).len());
            assert!(replayed.torn.is_some());
        }
        let mut damaged = whole.clone();
        damaged[file(1).len() + BATCH_HEADER_BYTES + 2] ^= 0xff;
        let e = replay(&damaged).unwrap_err();
        assert!(e.contains("damaged at byte"), "{e}");
    }

    proptest! {
        /// Arbitrary damage never panics the replay, and what it accepts is
        /// a prefix of what was written.
        #[test]
        fn damaged_files_replay_a_prefix_or_are_refused(
            cut in 0usize..200, flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..3)
        ) {
            let mut bytes = file(4);
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] ^= value;
            }
            bytes.truncate(cut.min(bytes.len()));
            if let Ok(replayed) = replay(&bytes) {
                let n = numbers(&replayed);
                let prefix: Vec<u64> = (0..n.len() as u64).collect();
                prop_assert_eq!(n, prefix);
            }
        }
    }
}
