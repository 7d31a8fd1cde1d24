//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use storage::batch::{self, RecordBatchBuilder};
use storage::{LogConfig, Offset, PartitionLog};

/// Longest one test's executor may run. A test that outlives it aborts the
/// test binary with a message: a stalled executor must fail the suite in
/// minutes, not hold CI until its time limit.
pub const TEST_DEADLINE: Duration = Duration::from_secs(300);

/// Runs a future on a fresh glommio executor on this thread.
pub fn run<F, T>(f: impl FnOnce() -> F) -> T
where
    F: Future<Output = T>,
{
    let (finished, watched) = mpsc::channel::<()>();
    let test = std::thread::current().name().unwrap_or("a storage test").to_owned();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = watched.recv_timeout(TEST_DEADLINE) {
            eprintln!("{test} ran past {TEST_DEADLINE:?}: its executor stalled; aborting");
            std::process::abort();
        }
    });
    let value = glommio::LocalExecutorBuilder::default()
        .make()
        .expect("a glommio executor (io_uring) is available")
        .run(f());
    drop(finished);
    value
}

/// A batch of `count` records whose values name their index in the test:
/// `<tag>-<i>`, padded to `value_bytes` bytes.
pub fn batch(tag: u64, count: usize, value_bytes: usize, timestamp_ms: i64) -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new();
    for i in 0..count {
        let mut value = format!("{tag}-{i}-").into_bytes();
        value.resize(value_bytes, b'.');
        builder.push(timestamp_ms, Some(&tag.to_le_bytes()), Some(&value), vec![]);
    }
    builder.build()
}

/// One record as a test sees it after reading it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub offset: Offset,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub timestamp_ms: i64,
}

/// Reads the whole log from its start with reads of `max_bytes`, checking
/// every batch, and returns its records in order.
pub async fn read_all(log: &PartitionLog, max_bytes: usize) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut next = log.log_start_offset();
    loop {
        let read = log.read(next, max_bytes).await.expect("read");
        if read.bytes.is_empty() {
            assert_eq!(next, read.log_end_offset, "an empty read happens only at the log end");
            return seen;
        }
        seen.extend(records_in(&read.bytes, next));
        assert!(read.next_offset > next, "reads progress");
        next = read.next_offset;
    }
}

/// The records at or after `from` in `bytes` (whole batches), checking
/// every batch. Records, not bytes: two logs given the same batches stamp
/// their own append times into them.
pub fn records_in(bytes: &[u8], from: Offset) -> Vec<Seen> {
    let mut seen = Vec::new();
    for frame in batch::frames(bytes) {
        let info = batch::verify_crc(frame).expect("served batches carry their crc");
        let archived = batch::access(frame).expect("served batches validate");
        for record in archived.records.iter() {
            let offset = info.base_offset.plus(u64::from(record.offset_delta.to_native()));
            if offset < from {
                continue;
            }
            seen.push(Seen {
                offset,
                key: record.key.as_ref().map(|k| k.to_vec()).unwrap_or_default(),
                value: record.value.as_ref().map(|v| v.to_vec()).unwrap_or_default(),
                timestamp_ms: info.first_timestamp_ms + record.timestamp_delta_ms.to_native(),
            });
        }
    }
    seen
}

/// A clock a test moves by hand.
pub fn manual_clock(start_ms: i64) -> (Rc<Cell<i64>>, storage::log::Clock) {
    let now = Rc::new(Cell::new(start_ms));
    let clock_now = now.clone();
    (now, Rc::new(move || clock_now.get()))
}

pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        index_interval_bytes: 1024,
        write_buffer_bytes: 1 << 20,
        batch_bytes_max: 512 << 10,
        record_bytes_max: 512 << 10,
        ..LogConfig::default()
    }
}

/// A fresh directory on the disk the tests build on: O_DIRECT needs a real
/// filesystem, and /tmp may be a tmpfs.
pub fn test_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temporary directory under target/")
}
