//! The log cleaner on real O_DIRECT files: a compacted log keeps the last
//! record of each key at its offset, tombstones go after their retention,
//! reads and lookups work across the gaps, and a clean a crash interrupted
//! leaves the old segment or the new one, never neither.

mod common;

use std::collections::BTreeMap;

use common::*;
use storage::batch::RecordBatchBuilder;
use storage::{CleanupPolicy, LogConfig, Offset, PartitionLog};

fn compact_config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 << 10,
        cleanup: CleanupPolicy {
            delete: false,
            compact: true,
        },
        ..small_config()
    }
}

/// A batch of `count` updates: record `i` sets key `k<(first + i) % keys>`
/// to `v<first + i>`; `None` values are tombstones.
fn updates(first: u64, count: u64, keys: u64, tombstone: impl Fn(u64) -> bool) -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new();
    for n in first..first + count {
        let key = format!("k{}", n % keys);
        let value = format!("v{n}");
        let value = (!tombstone(n)).then_some(value.as_bytes());
        builder.push(n as i64, Some(key.as_bytes()), value, vec![]);
    }
    builder.build()
}

/// Each key's last record among `seen` below `below`: (offset, value).
fn last_of_each(seen: &[Seen], below: Offset) -> BTreeMap<Vec<u8>, (Offset, Vec<u8>)> {
    let mut last = BTreeMap::new();
    for s in seen.iter().filter(|s| s.offset < below) {
        last.insert(s.key.clone(), (s.offset, s.value.clone()));
    }
    last
}

#[test]
fn cleaning_keeps_each_keys_last_record_at_its_offset() {
    let dir = test_dir();
    run(|| async {
        let log = PartitionLog::open(dir.path(), compact_config()).await.unwrap();
        for first in (0..3000).step_by(10) {
            log.append(&updates(first, 10, 50, |_| false)).await.unwrap();
        }
        let before = read_all(&log, 1 << 20).await;
        let segments = log.segment_base_offsets();
        assert!(segments.len() > 5, "16 KiB segments rolled: {}", segments.len());
        let active = *segments.last().unwrap();
        let size = log.size_bytes();

        let stats = log.clean(Offset(u64::MAX), 0, 0).await.unwrap();
        assert_eq!(stats.segments, segments.len() - 1, "every sealed segment");
        assert_eq!(stats.cleaned_to, active);
        assert!(stats.records_removed > 0 && stats.bytes_after < stats.bytes_before);
        assert!(log.size_bytes() < size);
        assert_eq!(log.segment_base_offsets(), segments, "segments keep their bases");

        let expected = |before: &[Seen]| {
            let last = last_of_each(before, active);
            let mut kept: Vec<Seen> = before
                .iter()
                .filter(|s| s.offset >= active || last[&s.key].0 == s.offset)
                .cloned()
                .collect();
            kept.sort_by_key(|s| s.offset);
            kept
        };
        let after = read_all(&log, 1 << 20).await;
        assert_eq!(after, expected(&before), "each key's last record, at its offset");
        assert_eq!(read_all(&log, 1).await, after, "one batch a read, across the gaps");

        // A read from an offset in a gap starts at the next record.
        let gap = (0..active.0)
            .map(Offset)
            .find(|o| after.iter().all(|s| s.offset != *o))
            .unwrap();
        let read = log.read(gap, 1 << 20).await.unwrap();
        let first = records_in(&read.bytes, gap);
        assert_eq!(first[0], *after.iter().find(|s| s.offset > gap).unwrap());
        // A lookup by time lands on a record that is there.
        let found = log.offset_for_timestamp(1234).await.unwrap().unwrap();
        assert!(found.0 >= 1234 || after.iter().any(|s| s.offset >= found));

        // Cleaning again changes nothing; a reopen reads the same.
        let again = log.clean(Offset(u64::MAX), 0, 0).await.unwrap();
        assert_eq!(again.records_removed, 0);
        assert_eq!(read_all(&log, 1 << 20).await, after);
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.path(), compact_config()).await.unwrap();
        assert_eq!(read_all(&log, 1 << 20).await, after);
        // Appends go on after a clean.
        let info = log.append(&updates(3000, 1, 50, |_| false)).await.unwrap();
        assert_eq!(info.base_offset, Offset(3000));
        log.close().await.unwrap();
    });
}

#[test]
fn tombstones_go_after_their_retention_and_take_their_keys_with_them() {
    let dir = test_dir();
    run(|| async {
        let (now, clock) = manual_clock(1_000);
        let config = LogConfig {
            compaction: storage::Compaction {
                delete_retention_ms: 10_000,
                ..Default::default()
            },
            ..compact_config()
        };
        let log = PartitionLog::open_with_clock(dir.path(), config, clock).await.unwrap();
        // Keys k0..k9; every update of k3 after 500 is a tombstone.
        for first in (0..1000).step_by(10) {
            log.append(&updates(first, 10, 10, |n| n % 10 == 3 && n > 500))
                .await
                .unwrap();
        }
        let active = *log.segment_base_offsets().last().unwrap();
        let before = read_all(&log, 1 << 20).await;
        let last = last_of_each(&before, active);
        assert!(last[&b"k3".to_vec()].1.is_empty(), "k3 ends in a tombstone");

        // Within the retention the tombstone stays, readable.
        log.clean(Offset(u64::MAX), now.get() + 5_000, 0).await.unwrap();
        let kept = read_all(&log, 1 << 20).await;
        assert!(kept
            .iter()
            .any(|s| s.key == b"k3" && s.offset < active && s.value.is_empty()));
        // Past it, the tombstone goes; no older record of k3 comes back.
        log.clean(Offset(u64::MAX), now.get() + 20_000, 0).await.unwrap();
        let cleaned = read_all(&log, 1 << 20).await;
        assert!(!cleaned.iter().any(|s| s.key == b"k3" && s.offset < active));
        for key in (0..10).filter(|k| *k != 3).map(|k| format!("k{k}").into_bytes()) {
            let below: Vec<&Seen> = cleaned.iter().filter(|s| s.key == key && s.offset < active).collect();
            assert_eq!(below.len(), 1, "one record of each other key below the active segment");
            assert_eq!(below[0].offset, last[&key].0);
        }
        now.set(0);
        log.close().await.unwrap();
    });
}

/// The files of `dir` whose names end with `suffix`.
fn named(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(suffix))
        .collect();
    found.sort();
    found
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

/// A clean a crash cut short: before the log's `.swap` the old segment
/// stays (what was written is removed at open); after it the swap is
/// finished at open, even with an index's rename lost.
#[test]
fn a_crash_during_a_clean_leaves_the_old_segment_or_the_new() {
    let root = test_dir();
    let (original, cleaned) = (root.path().join("original"), root.path().join("cleaned"));
    let (before, after) = run(|| {
        let (original, cleaned) = (original.clone(), cleaned.clone());
        async move {
            let log = PartitionLog::open(&original, compact_config()).await.unwrap();
            for first in (0..600).step_by(10) {
                log.append(&updates(first, 10, 20, |_| false)).await.unwrap();
            }
            log.close().await.unwrap();
            copy_dir(&original, &cleaned);
            let log = PartitionLog::open(&cleaned, compact_config()).await.unwrap();
            let before = read_all(&log, 1 << 20).await;
            log.clean(Offset(u64::MAX), 0, 0).await.unwrap();
            let after = read_all(&log, 1 << 20).await;
            log.close().await.unwrap();
            assert_ne!(before, after);
            (before, after)
        }
    });
    let first = |dir: &std::path::Path, suffix: &str| named(dir, suffix)[0].clone();
    let name = |path: &std::path::Path| path.file_name().unwrap().to_str().unwrap().to_string();

    // Cut short before the log's swap: the cleaned log and an index swap
    // lie beside the old segment.
    let early = root.path().join("early");
    copy_dir(&original, &early);
    let log = first(&cleaned, ".log");
    std::fs::copy(&log, early.join(format!("{}.cleaned", name(&log)))).unwrap();
    let index = first(&cleaned, ".index");
    std::fs::copy(&index, early.join(format!("{}.swap", name(&index)))).unwrap();
    // Cut short after it: the log's swap is there, one index swapped in
    // already, the time index's rename lost.
    let late = root.path().join("late");
    copy_dir(&original, &late);
    std::fs::copy(&log, late.join(format!("{}.swap", name(&log)))).unwrap();
    std::fs::copy(&index, late.join(name(&index))).unwrap();

    // Only the first segment is swapped in there: the rest is as it was.
    let second = Offset(name(&named(&cleaned, ".log")[1])[..20].parse().unwrap());
    let mixed: Vec<Seen> = after
        .iter()
        .filter(|s| s.offset < second)
        .chain(before.iter().filter(|s| s.offset >= second))
        .cloned()
        .collect();

    run(|| async move {
        let log = PartitionLog::open(&early, compact_config()).await.unwrap();
        assert_eq!(read_all(&log, 1 << 20).await, before, "the old segment");
        log.close().await.unwrap();
        assert!(named(&early, ".cleaned").is_empty() && named(&early, ".swap").is_empty());
        let log = PartitionLog::open(&late, compact_config()).await.unwrap();
        assert_eq!(read_all(&log, 1 << 20).await, mixed, "the new first segment");
        log.close().await.unwrap();
        assert!(named(&late, ".swap").is_empty());
    });
}

/// An idempotent producer's last batch keeps a record even when later
/// updates supersede all of it: its header (epoch, sequences) is what the
/// producer's state is rebuilt from after a restart.
#[test]
fn a_producers_last_batch_keeps_its_header() {
    let dir = test_dir();
    run(|| async {
        let log = PartitionLog::open(dir.path(), compact_config()).await.unwrap();
        let mut idempotent = RecordBatchBuilder::new().producer(7, 3, 40);
        for k in 0..5 {
            idempotent.push(0, Some(format!("k{k}").as_bytes()), Some(b"old"), vec![]);
        }
        let first = log.append(&idempotent.build()).await.unwrap();
        for first in (0..2000).step_by(10) {
            log.append(&updates(first, 10, 5, |_| false)).await.unwrap();
        }
        log.clean(Offset(u64::MAX), 0, 0).await.unwrap();
        let read = log.read(log.log_start_offset(), 1 << 20).await.unwrap();
        let frame = storage::batch::frames(&read.bytes).next().unwrap();
        let info = storage::batch::peek_header(frame).unwrap();
        assert_eq!(
            info.base_offset, first.base_offset,
            "the producer's batch is first still"
        );
        assert_eq!(
            (
                info.producer_id,
                info.producer_epoch,
                info.base_sequence,
                info.last_offset_delta
            ),
            (7, 3, 40, 4)
        );
        assert_eq!(info.record_count, 1, "its last record alone");
        let kept = records_in(&read.bytes, Offset(0));
        assert_eq!(kept[0].offset, first.last_offset);
        log.close().await.unwrap();
    });
}
