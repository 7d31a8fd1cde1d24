//! Crash and corruption tests: the log's files are cut and damaged the ways a
//! crash or a failing disk damages them, then reopened. Every batch written
//! whole before the damage must come back; nothing corrupt may ever be served.

mod common;

use std::path::Path;

use common::*;
use storage::segment::{segment_path, LOG_SUFFIX, OFFSET_INDEX_SUFFIX, TIME_INDEX_SUFFIX};
use storage::{LogConfig, Offset, PartitionLog, StorageError};

const BATCHES: u64 = 12;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 20,
        index_interval_bytes: 512,
        ..small_config()
    }
}

/// Writes BATCHES batches of 3 records into a single segment, closes the log,
/// and returns the segment's bytes and where its last batch begins.
async fn build_log(dir: &Path) -> (Vec<u8>, usize) {
    let log = PartitionLog::open(dir, config()).await.unwrap();
    let mut last = None;
    for tag in 0..BATCHES {
        last = Some(
            log.append(&batch(tag, 3, 40 + tag as usize * 7, 100 + tag as i64))
                .await
                .unwrap(),
        );
    }
    log.close().await.unwrap();
    let bytes = std::fs::read(segment_path(dir, Offset(0), LOG_SUFFIX)).unwrap();
    (bytes, last.unwrap().position.0 as usize)
}

/// Puts `segment` as the only segment of a fresh log directory, opens it and
/// returns what reads back.
async fn reopen_with(dir: &Path, segment: &[u8]) -> Vec<Seen> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(segment_path(dir, Offset(0), LOG_SUFFIX), segment).unwrap();
    std::fs::write(dir.join("log-format"), format!("{}\n", storage::log::LOG_FORMAT)).unwrap();
    let log = PartitionLog::open(dir, config()).await.unwrap();
    let seen = read_all(&log, 1 << 20).await;
    // The recovered log takes appends right after what survived.
    let info = log.append(&batch(99, 1, 10, 0)).await.unwrap();
    assert_eq!(info.base_offset, Offset(seen.len() as u64));
    log.close().await.unwrap();
    seen
}

fn assert_intact_prefix(seen: &[Seen], batches: u64) {
    assert_eq!(seen.len() as u64, batches * 3);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.offset, Offset(i as u64));
        let tag = i as u64 / 3;
        assert_eq!(s.key, tag.to_le_bytes());
        let mut value = format!("{tag}-{}-", i % 3).into_bytes();
        value.resize(40 + tag as usize * 7, b'.');
        assert_eq!(s.value, value);
    }
}

#[test]
fn a_cut_at_every_byte_of_the_last_batch_keeps_every_whole_batch() {
    let dir = test_dir();
    run(|| async {
        let (bytes, last_start) = build_log(&dir.path().join("source")).await;
        let work = dir.path().join("cut");
        for cut in last_start..=bytes.len() {
            let seen = reopen_with(&work, &bytes[..cut]).await;
            let whole = if cut == bytes.len() { BATCHES } else { BATCHES - 1 };
            assert_intact_prefix(&seen, whole);
        }
        // Zero padding after the last batch (a flushed partial block) is cut too.
        let mut padded = bytes.clone();
        padded.resize(bytes.len().next_multiple_of(4096) + 4096, 0);
        assert_intact_prefix(&reopen_with(&work, &padded).await, BATCHES);
    });
}

#[test]
fn a_flipped_bit_anywhere_in_the_last_batch_drops_it_and_only_it() {
    let dir = test_dir();
    run(|| async {
        let (bytes, last_start) = build_log(&dir.path().join("source")).await;
        let work = dir.path().join("flip");
        for byte in last_start..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                let seen = reopen_with(&work, &damaged).await;
                assert_intact_prefix(&seen, BATCHES - 1);
            }
        }
    });
}

#[test]
fn a_crash_loses_at_most_what_was_not_flushed() {
    let dir = test_dir();
    run(|| async {
        let log = PartitionLog::open(dir.path(), config()).await.unwrap();
        for tag in 0..5 {
            log.append(&batch(tag, 3, 40 + tag as usize * 7, 0)).await.unwrap();
        }
        let durable = log.flush().await.unwrap();
        assert_eq!(durable, Offset(15));
        for tag in 5..9 {
            log.append(&batch(tag, 3, 40 + tag as usize * 7, 0)).await.unwrap();
        }
        // The process dies: the log is dropped without a flush or close.
        drop(log);
        let log = PartitionLog::open(dir.path(), config()).await.unwrap();
        let seen = read_all(&log, 1 << 20).await;
        assert!(seen.len() as u64 >= durable.0);
        assert_intact_prefix(&seen, seen.len() as u64 / 3);
        log.close().await.unwrap();
    });
}

/// Two sealed segments and an active one, closed cleanly.
async fn build_sealed(dir: &Path) -> Vec<Offset> {
    let config = LogConfig {
        segment_bytes: 1024,
        ..config()
    };
    let log = PartitionLog::open(dir, config).await.unwrap();
    for tag in 0..BATCHES {
        log.append(&batch(tag, 3, 40 + tag as usize * 7, 100 + tag as i64))
            .await
            .unwrap();
    }
    let bases = log.segment_base_offsets();
    assert!(bases.len() >= 3);
    log.close().await.unwrap();
    bases
}

#[test]
fn a_corrupt_batch_in_a_sealed_segment_is_reported_never_served() {
    let dir = test_dir();
    run(|| async {
        let bases = build_sealed(dir.path()).await;
        let config = LogConfig {
            segment_bytes: 1024,
            ..config()
        };
        let sealed = segment_path(dir.path(), bases[0], LOG_SUFFIX);
        let mut bytes = std::fs::read(&sealed).unwrap();
        bytes[60] ^= 0x01;
        std::fs::write(&sealed, &bytes).unwrap();

        // With its index intact the log opens, and a read of the damaged
        // batch fails with the path and position instead of serving it.
        let log = PartitionLog::open(dir.path(), config.clone()).await.unwrap();
        let err = log.read(Offset(0), 1 << 20).await.unwrap_err();
        match &err {
            StorageError::CorruptBatch { path, position, .. } => {
                assert_eq!(path, &sealed);
                assert_eq!(position.0, 0);
            }
            other => panic!("expected CorruptBatch, got {other}"),
        }
        // Later segments still read.
        assert!(!log.read(bases[1], 1 << 20).await.unwrap().bytes.is_empty());
        log.close().await.unwrap();

        // Without its index, the open must rebuild it by scanning, finds the
        // corrupt batch, and refuses to open rather than drop data silently.
        std::fs::remove_file(segment_path(dir.path(), bases[0], OFFSET_INDEX_SUFFIX)).unwrap();
        let err = PartitionLog::open(dir.path(), config)
            .await
            .err()
            .expect("open refused");
        assert!(
            matches!(&err, StorageError::CorruptBatch { path, .. } if path == &sealed),
            "{err}"
        );
        assert!(err.to_string().contains("sealed segment"), "{err}");
    });
}

#[test]
fn damaged_or_missing_indexes_are_rebuilt() {
    let dir = test_dir();
    run(|| async {
        let bases = build_sealed(dir.path()).await;
        let config = LogConfig {
            segment_bytes: 1024,
            ..config()
        };
        std::fs::write(segment_path(dir.path(), bases[0], OFFSET_INDEX_SUFFIX), [1, 2, 3]).unwrap();
        std::fs::remove_file(segment_path(dir.path(), bases[1], TIME_INDEX_SUFFIX)).unwrap();
        std::fs::write(segment_path(dir.path(), bases[1], OFFSET_INDEX_SUFFIX), [0xff; 16]).unwrap();
        let log = PartitionLog::open(dir.path(), config.clone()).await.unwrap();
        assert_intact_prefix(&read_all(&log, 1).await, BATCHES);
        assert_eq!(log.offset_for_timestamp(105).await.unwrap(), Some(Offset(15)));
        log.close().await.unwrap();
        let index = std::fs::read(segment_path(dir.path(), bases[1], OFFSET_INDEX_SUFFIX)).unwrap();
        assert_eq!(index.len() % 8, 0, "the rebuilt index was written back");
    });
}
