//! The partition log end to end on real O_DIRECT files: appends and reads,
//! rolls, reopen, alignment edges, timestamps, truncation, retention, group
//! commit and bad input.

mod common;

use common::*;
use storage::batch::{self, RecordBatchBuilder};
use storage::{EpochStart, FlushPolicy, LogConfig, Offset, PartitionLog, Stamp, StorageError};

#[test]
fn appends_read_back_and_survive_reopen() {
    let dir = test_dir();
    run(|| async {
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        let mut expected = Vec::new();
        for tag in 0..200u64 {
            let count = 1 + (tag as usize % 5);
            let info = log
                .append(&batch(tag, count, 100 + tag as usize, 1000 + tag as i64))
                .await
                .unwrap();
            assert_eq!(info.last_offset.0 - info.base_offset.0 + 1, count as u64);
            for i in 0..count {
                let mut value = format!("{tag}-{i}-").into_bytes();
                value.resize(100 + tag as usize, b'.');
                expected.push((info.base_offset.plus(i as u64), value));
            }
        }
        assert!(log.segment_base_offsets().len() >= 2, "64 KiB segments rolled");
        let check = |seen: Vec<Seen>| {
            assert_eq!(seen.len(), expected.len());
            for (s, (offset, value)) in seen.iter().zip(&expected) {
                assert_eq!(s.offset, *offset);
                assert_eq!(&s.value, value);
            }
        };
        check(read_all(&log, 1).await);
        check(read_all(&log, 10_000).await);
        let end = log.log_end_offset();
        log.close().await.unwrap();

        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(log.log_end_offset(), end);
        check(read_all(&log, 7_000).await);
        // Appends go on after the reopened tail, rewriting its partial block.
        let info = log.append(&batch(999, 3, 10, 5000)).await.unwrap();
        assert_eq!(info.base_offset, end);
        assert_eq!(read_all(&log, 1 << 20).await.len(), expected.len() + 3);
        log.close().await.unwrap();
    });
}

#[test]
fn reads_from_every_offset_start_at_the_right_batch() {
    let dir = test_dir();
    run(|| async {
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        for tag in 0..100u64 {
            log.append(&batch(tag, 3, 300, 0)).await.unwrap();
        }
        log.flush().await.unwrap();
        for from in 0..log.log_end_offset().0 {
            let read = log.read(Offset(from), 1).await.unwrap();
            let info = batch::verify_crc(&read.bytes).unwrap();
            assert!(info.base_offset.0 <= from && from <= info.last_offset().0);
            assert_eq!(read.next_offset, info.next_offset());
        }
        let past = log.read(Offset(301), 100).await.unwrap_err();
        assert!(
            matches!(
                past,
                StorageError::OffsetOutOfRange {
                    offset: Offset(301),
                    ..
                }
            ),
            "{past}"
        );
        log.close().await.unwrap();
    });
}

#[test]
fn alignment_edges_round_trip() {
    let dir = test_dir();
    let sizes = [0usize, 1, 4095, 4096, 4097, 1 << 20];
    run(|| async {
        let config = LogConfig {
            segment_bytes: 8 << 20,
            batch_bytes_max: 2 << 20,
            record_bytes_max: 2 << 20,
            write_buffer_bytes: 4 << 20,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.path(), config.clone()).await.unwrap();
        // Every size alone, then with a flush between each so batches straddle
        // blocks whose partial tail was already written once.
        for round in 0..2u64 {
            for (i, size) in sizes.iter().enumerate() {
                log.append(&batch(round * 10 + i as u64, 1, *size, 0)).await.unwrap();
                if round == 1 {
                    log.flush().await.unwrap();
                }
            }
        }
        let verify = |seen: Vec<Seen>| {
            assert_eq!(seen.len(), 2 * sizes.len());
            for (s, size) in seen.iter().zip(sizes.iter().chain(sizes.iter())) {
                assert_eq!(s.value.len(), *size);
            }
        };
        verify(read_all(&log, 1).await);
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.path(), config).await.unwrap();
        verify(read_all(&log, 3 << 20).await);
        log.close().await.unwrap();
    });
}

#[test]
fn tail_reads_come_from_memory_and_match_disk() {
    let dir = test_dir();
    run(|| async {
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        let info = log.append(&batch(1, 2, 50, 0)).await.unwrap();
        let read = log.read(info.base_offset, 1 << 20).await.unwrap();
        assert!(!read.bytes.is_empty());
        assert!(
            matches!(read.bytes, storage::ReadBytes::Memory { .. }),
            "unflushed tail is served from memory"
        );
        let from_memory = read.bytes.to_vec();
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        let read = log.read(info.base_offset, 1 << 20).await.unwrap();
        assert_eq!(&*read.bytes, &from_memory[..], "the same stamped bytes on disk");
        log.close().await.unwrap();
    });
}

#[test]
fn rolls_by_age() {
    let dir = test_dir();
    run(|| async {
        let (now, clock) = manual_clock(1_000_000);
        let config = LogConfig {
            segment_ms: Some(60_000),
            ..small_config()
        };
        let log = PartitionLog::open_with_clock(dir.path(), config, clock).await.unwrap();
        log.append(&batch(0, 1, 10, 0)).await.unwrap();
        now.set(1_000_000 + 59_999);
        log.append(&batch(1, 1, 10, 0)).await.unwrap();
        assert_eq!(log.segment_base_offsets().len(), 1);
        now.set(1_000_000 + 60_000);
        log.append(&batch(2, 1, 10, 0)).await.unwrap();
        assert_eq!(log.segment_base_offsets(), vec![Offset(0), Offset(2)]);
        log.close().await.unwrap();
    });
}

#[test]
fn finds_offsets_by_timestamp() {
    let dir = test_dir();
    run(|| async {
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        // Batch t holds 4 records stamped 10t, 10t+1, 10t+2, 10t+3.
        for t in 0..300i64 {
            let mut builder = RecordBatchBuilder::new();
            for i in 0..4 {
                builder.push(10 * t + i, None, Some(&[7u8; 200]), vec![]);
            }
            log.append(&builder.build()).await.unwrap();
        }
        assert!(log.segment_base_offsets().len() > 2);
        for target in [-5i64, 0, 1, 3, 4, 9, 10, 11, 1234, 2995, 2999, 3003] {
            let expected = (0..1200u64).find(|o| 10 * (*o as i64 / 4) + (*o as i64 % 4) >= target);
            assert_eq!(
                log.offset_for_timestamp(target).await.unwrap(),
                expected.map(Offset),
                "target {target}"
            );
        }
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(log.offset_for_timestamp(1234).await.unwrap(), Some(Offset(4 * 124)));
        log.close().await.unwrap();
    });
}

#[test]
fn truncation_cuts_at_a_batch_and_appends_continue() {
    let dir = test_dir();
    run(|| async {
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        for tag in 0..100u64 {
            log.append(&batch(tag, 2, 900, 0)).await.unwrap();
        }
        let segments_before = log.segment_base_offsets().len();
        // Offset 51 is inside the batch [50, 51]: the cut falls at 50.
        log.truncate_to(Offset(51)).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(50));
        assert!(log.segment_base_offsets().len() < segments_before);
        let info = log.append(&batch(500, 1, 10, 0)).await.unwrap();
        assert_eq!(info.base_offset, Offset(50));
        let seen = read_all(&log, 4096).await;
        assert_eq!(seen.len(), 51);
        assert_eq!(seen.last().unwrap().key, 500u64.to_le_bytes());
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(51));
        assert_eq!(read_all(&log, 4096).await.len(), 51);
        log.truncate_to(Offset(0)).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(0));
        assert_eq!(log.segment_base_offsets(), vec![Offset(0)]);
        log.close().await.unwrap();
    });
}

#[test]
fn retention_by_size_and_age_deletes_whole_sealed_segments() {
    let dir = test_dir();
    run(|| async {
        let (now, clock) = manual_clock(0);
        let config = LogConfig {
            retention_bytes: Some(200 << 10),
            retention_ms: Some(1_000_000),
            ..small_config()
        };
        let log = PartitionLog::open_with_clock(dir.path(), config.clone(), clock.clone())
            .await
            .unwrap();
        for tag in 0..600u64 {
            log.append(&batch(tag, 1, 1000, tag as i64 * 1000)).await.unwrap();
        }
        let before = log.segment_base_offsets();
        let point = log.retention_point();
        assert!(point > Offset(0) && before.contains(&point), "a segment's base");
        assert_eq!(log.log_start_offset(), Offset(0), "finding the point deletes nothing");
        let deleted = log.apply_retention().await.unwrap();
        assert!(deleted > 0);
        assert_eq!(log.log_start_offset(), point, "retention starts the log where it said");
        assert_eq!(log.retention_point(), point, "and then keeps the rest");
        assert!(
            log.size_bytes() < (200 << 10) + (64 << 10),
            "within one segment of the limit"
        );
        assert!(log.size_bytes() >= 200 << 10, "no more than needed was deleted");
        let after = log.segment_base_offsets();
        assert_eq!(after.len(), before.len() - deleted);
        assert_eq!(log.log_start_offset(), after[0]);
        let seen = read_all(&log, 1 << 20).await;
        assert_eq!(seen.first().unwrap().offset, after[0]);
        assert_eq!(seen.last().unwrap().offset, Offset(599));
        assert!(matches!(
            log.read(Offset(0), 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));

        // Age: every record is stamped by its tag in seconds. At 1_000_000 +
        // 560_000 ms, segments whose newest record is older than 560 s go.
        now.set(1_560_000);
        log.apply_retention().await.unwrap();
        let first = log.segment_base_offsets()[0];
        assert!(
            first.0 > 500,
            "segments older than 560 s are gone, first is now {first}"
        );
        // The active segment is never deleted, however old.
        now.set(i64::MAX / 2);
        log.apply_retention().await.unwrap();
        assert_eq!(log.segment_base_offsets().len(), 1);
        assert_eq!(log.log_end_offset(), Offset(600));
        log.close().await.unwrap();
        let log = PartitionLog::open_with_clock(dir.path(), config, clock).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(600));
        log.close().await.unwrap();
    });
}

/// A compacted log whose policy does not also delete keeps every segment
/// whatever its age and size: its records go only by compaction. Set to
/// compact and delete, retention applies again.
#[test]
fn retention_leaves_a_compact_only_log_whole() {
    let dir = test_dir();
    run(|| async {
        let (now, clock) = manual_clock(0);
        let compact = LogConfig {
            retention_bytes: Some(100 << 10),
            retention_ms: Some(1_000),
            cleanup: storage::CleanupPolicy {
                delete: false,
                compact: true,
            },
            ..small_config()
        };
        let log = PartitionLog::open_with_clock(dir.path(), compact.clone(), clock)
            .await
            .unwrap();
        for tag in 0..300u64 {
            log.append(&batch(tag, 1, 1000, tag as i64)).await.unwrap();
        }
        now.set(1_000_000);
        let segments = log.segment_base_offsets().len();
        assert!(segments > 2);
        assert_eq!(log.retention_point(), Offset(0));
        assert_eq!(log.apply_retention().await.unwrap(), 0);
        assert_eq!(log.segment_base_offsets().len(), segments);
        log.set_config(LogConfig {
            cleanup: storage::CleanupPolicy {
                delete: true,
                compact: true,
            },
            ..compact
        })
        .await
        .unwrap();
        assert!(log.apply_retention().await.unwrap() > 0);
        log.close().await.unwrap();
    });
}

#[test]
fn a_log_reset_past_its_end_starts_empty_there_and_stays_so() {
    let dir = test_dir();
    run(|| async {
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        for tag in 0..200u64 {
            log.append(&batch(tag, 1, 1000, 0)).await.unwrap();
        }
        log.delete_records_before(Offset(20)).await.unwrap();
        assert!(matches!(
            log.reset_to(Offset(10)).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        log.reset_to(Offset(500)).await.unwrap();
        assert_eq!(
            (log.log_start_offset(), log.log_end_offset()),
            (Offset(500), Offset(500))
        );
        assert_eq!(log.segment_base_offsets(), vec![Offset(500)]);
        let info = log
            .append_stamped(&batch(7, 2, 100, 0), Stamp::Replica)
            .await
            .map(|info| info.base_offset);
        assert!(info.is_err(), "a replica's batch must name the offset it goes at");
        let info = log.append(&batch(7, 2, 100, 0)).await.unwrap();
        assert_eq!(info.base_offset, Offset(500));
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(
            (log.log_start_offset(), log.log_end_offset()),
            (Offset(500), Offset(502))
        );
        assert_eq!(read_all(&log, 5000).await.first().unwrap().offset, Offset(500));
        log.close().await.unwrap();
    });
}

#[test]
fn delete_records_moves_the_log_start_durably() {
    let dir = test_dir();
    run(|| async {
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        for tag in 0..200u64 {
            log.append(&batch(tag, 1, 1000, 0)).await.unwrap();
        }
        log.delete_records_before(Offset(150)).await.unwrap();
        assert_eq!(log.log_start_offset(), Offset(150));
        assert!(log.segment_base_offsets()[0] <= Offset(150));
        assert_eq!(read_all(&log, 5000).await.first().unwrap().offset, Offset(150));
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(log.log_start_offset(), Offset(150));
        assert!(matches!(
            log.read(Offset(149), 10).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        log.close().await.unwrap();
    });
}

/// The keys (`task * 1000 + i`) of the records task `task` appended, in log
/// order.
fn keys_of_task(seen: &[Seen], task: u64) -> Vec<u64> {
    seen.iter()
        .map(|s| u64::from_le_bytes(s.key.clone().try_into().unwrap()))
        .filter(|k| k / 1000 == task)
        .collect()
}

#[test]
fn concurrent_appenders_share_flushes() {
    let dir = test_dir();
    run(|| async {
        let config = LogConfig {
            flush: FlushPolicy::EveryAppend,
            ..small_config()
        };
        let log = PartitionLog::open(dir.path(), config).await.unwrap();
        let tasks: Vec<_> = (0..32u64)
            .map(|task| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    for i in 0..20u64 {
                        let info = log.append(&batch(task * 1000 + i, 2, 200, 0)).await.unwrap();
                        assert!(
                            log.durable_offset() > info.last_offset,
                            "EveryAppend returns once durable"
                        );
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        assert_eq!(log.log_end_offset(), Offset(32 * 20 * 2));
        let stats = log.stats();
        eprintln!("group commit: {stats:?}");
        assert!(
            stats.flushes < 32 * 20,
            "group commit: {} fdatasyncs for {} appends",
            stats.flushes,
            32 * 20
        );
        let seen = read_all(&log, 1 << 16).await;
        for task in 0..32u64 {
            let keys = keys_of_task(&seen, task);
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted, "each appender's batches in its order");
            assert_eq!(keys.len(), 40);
        }
        log.close().await.unwrap();
    });
}

#[test]
fn interval_and_byte_flush_policies_make_appends_durable() {
    let dir = test_dir();
    run(|| async {
        let config = LogConfig {
            flush: FlushPolicy::IntervalMs(5),
            ..small_config()
        };
        let log = PartitionLog::open(dir.path().join("interval"), config).await.unwrap();
        let info = log.append(&batch(1, 1, 10, 0)).await.unwrap();
        let mut waited = 0;
        while log.durable_offset() <= info.last_offset {
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            waited += 1;
            assert!(waited < 2000, "the interval flusher never flushed");
        }
        log.close().await.unwrap();

        let config = LogConfig {
            flush: FlushPolicy::Bytes(10_000),
            ..small_config()
        };
        let log = PartitionLog::open(dir.path().join("bytes"), config).await.unwrap();
        let first = log.append(&batch(1, 1, 1000, 0)).await.unwrap();
        assert!(log.durable_offset() <= first.last_offset);
        let mut last = first;
        for tag in 0..20 {
            last = log.append(&batch(tag, 1, 1000, 0)).await.unwrap();
        }
        assert!(
            log.durable_offset() > first.last_offset,
            "crossing 10,000 bytes flushed"
        );
        assert!(log.durable_offset().0 + 12 >= last.last_offset.0);
        log.close().await.unwrap();
    });
}

#[test]
fn bad_batches_are_refused_and_change_nothing() {
    let dir = test_dir();
    run(|| async {
        let config = LogConfig {
            record_bytes_max: 1000,
            batch_bytes_max: 4096,
            write_buffer_bytes: 1 << 20,
            ..small_config()
        };
        let log = PartitionLog::open(dir.path(), config).await.unwrap();
        log.append(&batch(1, 2, 10, 0)).await.unwrap();

        let mut bad_crc = batch(2, 1, 10, 0);
        let n = bad_crc.len();
        bad_crc[n / 3] ^= 0x40;
        let garbage = vec![0xA5u8; 300];
        let truncated = batch(3, 2, 10, 0)[..40].to_vec();
        let results = [
            log.append(&bad_crc).await,
            log.append(&garbage).await,
            log.append(&truncated).await,
            log.append(&batch(4, 1, 1001, 0)).await,
            log.append(&batch(5, 5, 999, 0)).await,
            log.append(&[]).await,
        ];
        assert!(matches!(
            results[0],
            Err(StorageError::BatchCrcMismatch { .. } | StorageError::BatchMalformed { .. })
        ));
        assert!(matches!(results[1], Err(StorageError::BatchMalformed { .. })));
        assert!(matches!(results[2], Err(StorageError::BatchMalformed { .. })));
        assert!(matches!(
            results[3],
            Err(StorageError::RecordTooLarge {
                size: 1009,
                max: 1000,
                ..
            })
        ));
        assert!(matches!(results[4], Err(StorageError::BatchTooLarge { max: 4096, .. })));
        assert!(results[5].is_err());
        for r in &results {
            assert!(!r.as_ref().unwrap_err().to_string().is_empty());
        }
        assert_eq!(log.log_end_offset(), Offset(2));
        assert_eq!(read_all(&log, 4096).await.len(), 2);
        log.close().await.unwrap();
    });
}

#[test]
fn settings_changed_live_apply_to_the_next_append_roll_and_flush() {
    let dir = test_dir();
    run(|| async {
        let small = LogConfig {
            batch_bytes_max: 4096,
            record_bytes_max: 4096,
            write_buffer_bytes: 8192,
            ..small_config()
        };
        let log = PartitionLog::open(dir.path(), small.clone()).await.unwrap();
        log.append(&batch(1, 1, 100, 0)).await.unwrap();
        let big = batch(2, 1, 20_000, 0);
        assert!(matches!(
            log.append(&big).await,
            Err(StorageError::BatchTooLarge { max: 4096, .. })
        ));

        // A larger batch limit grows the active segment's buffer, keeping
        // what it held: the batch before reads back beside the new one.
        let larger = LogConfig {
            batch_bytes_max: 32 << 10,
            record_bytes_max: 32 << 10,
            write_buffer_bytes: 64 << 10,
            ..small.clone()
        };
        log.set_config(larger.clone()).await.unwrap();
        assert_eq!(log.config().batch_bytes_max, 32 << 10);
        let info = log.append(&big).await.unwrap();
        assert_eq!(info.base_offset, Offset(1));
        log.flush().await.unwrap();
        let seen = read_all(&log, 1 << 20).await;
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].value.len(), 20_000);

        // A smaller segment size rolls at the next append.
        let segments = log.segment_base_offsets().len();
        log.set_config(LogConfig {
            segment_bytes: 4096,
            ..larger.clone()
        })
        .await
        .unwrap();
        log.append(&batch(3, 1, 100, 0)).await.unwrap();
        assert_eq!(log.segment_base_offsets().len(), segments + 1);

        // A flush interval set live starts flushing; a bad setting is
        // refused and leaves the one in force.
        log.set_config(LogConfig {
            flush: FlushPolicy::IntervalMs(5),
            ..larger.clone()
        })
        .await
        .unwrap();
        let last = log.append(&batch(4, 1, 10, 0)).await.unwrap();
        let mut waited = 0;
        while log.durable_offset() <= last.last_offset {
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            waited += 1;
            assert!(waited < 2000, "the interval flusher set live never flushed");
        }
        let bad = LogConfig {
            write_buffer_bytes: 1000,
            ..larger
        };
        assert!(matches!(
            log.set_config(bad).await,
            Err(StorageError::InvalidConfig { .. })
        ));
        assert_eq!(log.config().flush, FlushPolicy::IntervalMs(5));
        log.close().await.unwrap();
        let reopened = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(read_all(&reopened, 1 << 20).await.len(), 4);
        reopened.close().await.unwrap();
    });
}

#[test]
fn invalid_config_is_refused() {
    let dir = test_dir();
    run(|| async {
        for config in [
            LogConfig {
                write_buffer_bytes: 1000,
                ..LogConfig::default()
            },
            LogConfig {
                write_buffer_bytes: 1 << 20,
                batch_bytes_max: 1 << 20,
                ..LogConfig::default()
            },
            LogConfig {
                segment_bytes: 1 << 32,
                ..LogConfig::default()
            },
            LogConfig {
                flush: FlushPolicy::IntervalMs(0),
                ..LogConfig::default()
            },
            LogConfig {
                segment_zero_ahead_bytes: 1000,
                ..LogConfig::default()
            },
            LogConfig {
                segment_zero_ahead_bytes: 1 << 30,
                ..LogConfig::default()
            },
            LogConfig {
                read_ahead_bytes: 5000,
                ..LogConfig::default()
            },
            LogConfig {
                read_ahead_bytes: 1 << 30,
                ..LogConfig::default()
            },
        ] {
            let err = PartitionLog::open(dir.path(), config).await.err().expect("refused");
            assert!(matches!(err, StorageError::InvalidConfig { .. }), "{err}");
        }
    });
}

#[test]
fn a_segment_larger_than_the_write_buffer_reads_back_while_it_is_written() {
    let dir = test_dir();
    run(|| async {
        let config = LogConfig {
            segment_bytes: 1 << 20,
            write_buffer_bytes: 16 << 10,
            batch_bytes_max: 8 << 10,
            record_bytes_max: 8 << 10,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.path(), config.clone()).await.unwrap();
        let reader = {
            let log = log.clone();
            glommio::spawn_local(async move {
                // A consumer following the tail, across the memory/disk boundary.
                let mut next = Offset(0);
                let mut seen = 0u64;
                while seen < 3000 {
                    let read = log.read(next, 5000).await.unwrap();
                    for frame in batch::frames(&read.bytes) {
                        let info = batch::verify_crc(frame).unwrap();
                        assert_eq!(info.base_offset, next);
                        seen += u64::from(info.record_count);
                        next = info.next_offset();
                    }
                    glommio::yield_if_needed().await;
                    if read.bytes.is_empty() {
                        glommio::timer::sleep(std::time::Duration::from_micros(100)).await;
                    }
                }
                seen
            })
        };
        for tag in 0..1000u64 {
            log.append(&batch(tag, 3, 100 + (tag as usize * 37) % 2000, 0))
                .await
                .unwrap();
            if tag % 7 == 0 {
                glommio::yield_if_needed().await;
            }
        }
        assert_eq!(reader.await, 3000);
        assert!(log.stats().writes > 10, "the buffer filled and was written many times");
        assert_eq!(read_all(&log, 3000).await.len(), 3000);
        log.close().await.unwrap();
        let log = PartitionLog::open(dir.path(), config).await.unwrap();
        assert_eq!(read_all(&log, 70_000).await.len(), 3000);
        log.close().await.unwrap();
    });
}

#[test]
fn open_segment_files_stay_within_their_limit() {
    let dir = test_dir();
    run(|| async {
        let config = LogConfig {
            open_segments_max: 3,
            segment_bytes: 8 << 10,
            ..small_config()
        };
        let log = PartitionLog::open(dir.path(), config).await.unwrap();
        for tag in 0..100u64 {
            log.append(&batch(tag, 2, 900, 0)).await.unwrap();
        }
        assert!(log.segment_base_offsets().len() > 10);
        assert!(log.open_segment_files() <= 3);
        // Reading every segment opens each in turn; the oldest are closed.
        assert_eq!(read_all(&log, 1000).await.len(), 200);
        assert!(log.open_segment_files() <= 3);
        assert_eq!(read_all(&log, 1 << 20).await.len(), 200);
        assert!(log.open_segment_files() <= 3);
        log.close().await.unwrap();
    });
}

#[test]
fn a_long_poll_wakes_on_append_and_times_out_without_one() {
    let dir = test_dir();
    run(|| async {
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        let started = std::time::Instant::now();
        let deadline = started + std::time::Duration::from_millis(50);
        assert!(!log.wait_for_data(Offset(0), deadline).await, "nothing arrived");
        assert!(started.elapsed() >= std::time::Duration::from_millis(45));
        let waiter = {
            let log = log.clone();
            glommio::spawn_local(async move {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                let woke = log.wait_for_data(Offset(0), deadline).await;
                (woke, std::time::Instant::now())
            })
        };
        glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
        let appended_at = std::time::Instant::now();
        log.append(&batch(1, 1, 10, 0)).await.unwrap();
        let (woke, at) = waiter.await;
        assert!(woke);
        assert!(
            at.duration_since(appended_at) < std::time::Duration::from_secs(1),
            "woken by the append"
        );
        assert!(
            log.wait_for_data(Offset(0), std::time::Instant::now()).await,
            "already there"
        );
        log.close().await.unwrap();
    });
}

/// Flushes overlap: one holds the io lock only for its write, so a batch
/// appended while a flush syncs starts the next flush at once instead of
/// waiting for that sync to end.
#[test]
fn a_flush_starts_while_the_last_one_syncs() {
    let dir = test_dir();
    run(|| async {
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        let first = log.append(&batch(1, 2, 900, 0)).await.unwrap();
        let syncing = {
            let log = log.clone();
            glommio::spawn_local(async move { log.wait_durable(first.last_offset).await.unwrap() })
        };
        // Parked, not spinning, so that the reactor reaps the first write.
        while storage::flush_stats::thread_stats().syncs_in_flight == 0 {
            glommio::timer::sleep(std::time::Duration::from_micros(10)).await;
        }
        // The first flush is in its fdatasync, its target taken: it does not
        // cover this batch, and starts no later than this wait does.
        let second = log.append(&batch(2, 2, 900, 0)).await.unwrap();
        log.wait_durable(second.last_offset).await.unwrap();
        syncing.await;
        assert_eq!(log.stats().flushes_in_flight_max, 2, "{:?}", log.stats());
        assert_eq!(log.durable_offset(), log.log_end_offset());
        log.close().await.unwrap();
    });
}

/// Appenders arriving at their own pace (so that flushes overlap), each
/// acknowledged only once its batch is durable: the durable offset never
/// passes the log end, across segment rolls, and every acknowledged record
/// is there after a reopen without a close (the files as a crash leaves
/// them).
#[test]
fn overlapping_flushes_keep_every_acknowledged_record() {
    let dir = test_dir();
    let config = LogConfig {
        flush: FlushPolicy::EveryAppend,
        segment_bytes: 256 << 10,
        ..small_config()
    };
    run(|| async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.unwrap();
        let tasks: Vec<_> = (0..16u64)
            .map(|task| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    for i in 0..30u64 {
                        // Staggered arrivals: some land while a flush syncs.
                        glommio::timer::sleep(std::time::Duration::from_micros(30 * ((task + i) % 5))).await;
                        let info = log.append(&batch(task * 1000 + i, 2, 900, 0)).await.unwrap();
                        let durable = log.durable_offset();
                        assert!(durable > info.last_offset, "acknowledged once durable");
                        assert!(durable <= log.log_end_offset(), "durable past the log end");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        let end = log.log_end_offset();
        assert_eq!(end, Offset(16 * 30 * 2));
        let stats = log.stats();
        assert!(stats.rolls >= 2, "{stats:?}");
        assert!(stats.flushes_in_flight_max <= storage::log::FLUSHES_IN_FLIGHT_MAX);
        eprintln!("overlapping flushes: {stats:?}");
        assert_eq!(storage::flush_stats::thread_stats().syncs_in_flight, 0);
        drop(log);

        let log = PartitionLog::open(dir.path(), config.clone()).await.unwrap();
        assert_eq!(log.log_end_offset(), end, "every acknowledged record survived");
        let seen = read_all(&log, 1 << 20).await;
        for task in 0..16u64 {
            assert_eq!(
                keys_of_task(&seen, task),
                (0..30)
                    .map(|i| task * 1000 + i)
                    .flat_map(|k| [k, k])
                    .collect::<Vec<_>>()
            );
        }
        log.close().await.unwrap();
    });
}

/// A log flushed after every append zeroes its active segment ahead of its
/// writes (so that ext4 need not convert unwritten extents and commit its
/// journal in each flush). No zero write may land on a record: every record
/// reads back, after rolls, a truncation, and a reopen without a close (the
/// files as a crash leaves them), and each sealed segment's file ends at its
/// last batch.
#[test]
fn a_log_flushed_often_zeroes_ahead_and_keeps_every_record() {
    let dir = test_dir();
    let config = LogConfig {
        segment_bytes: 6 << 20,
        segment_preallocate_bytes: 1 << 20,
        segment_zero_ahead_bytes: 2 << 20,
        ..LogConfig::default()
    };
    run(|| async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.unwrap();
        // Where each segment's last batch ends, by segment base offset.
        let mut ends = std::collections::BTreeMap::new();
        let mut appended = 0u64;
        for tag in 0..1200u64 {
            let frame = batch(tag, 16, 1000, 0);
            let info = log.append(&frame).await.unwrap();
            log.wait_durable(info.last_offset).await.unwrap();
            ends.insert(info.segment_base_offset, info.position.0 + frame.len() as u64);
            appended += 16;
        }
        let stats = log.stats();
        assert!(stats.zeroed_bytes >= 4 << 20, "zeroed ahead: {stats:?}");
        assert!(stats.rolls >= 2, "{stats:?}");
        assert_eq!(read_all(&log, 1 << 20).await.len() as u64, appended);
        let bases = log.segment_base_offsets();
        for base in &bases[..bases.len() - 1] {
            let path = storage::segment::segment_path(dir.path(), *base, storage::segment::LOG_SUFFIX);
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                ends[base],
                "sealed segment {base} ends at its last batch, no zeros after it"
            );
        }
        // Cut inside the active segment while it is being zeroed ahead.
        let cut = Offset(appended - 40 * 16);
        log.truncate_to(cut).await.unwrap();
        assert_eq!(log.log_end_offset(), cut);
        for tag in 0..100u64 {
            let info = log.append(&batch(10_000 + tag, 16, 1000, 0)).await.unwrap();
            log.wait_durable(info.last_offset).await.unwrap();
        }
        let end = log.log_end_offset();
        assert_eq!(end, Offset(cut.0 + 1600));
        drop(log);

        let log = PartitionLog::open(dir.path(), config.clone()).await.unwrap();
        assert_eq!(log.log_end_offset(), end, "every durable record survived");
        let seen = read_all(&log, 1 << 20).await;
        assert_eq!(seen.len() as u64, end.0);
        for (i, s) in seen.iter().enumerate() {
            let tag = if (i as u64) < cut.0 {
                i as u64 / 16
            } else {
                10_000 + (i as u64 - cut.0) / 16
            };
            assert_eq!(s.key, tag.to_le_bytes(), "record {i}");
            assert!(
                s.value.starts_with(format!("{tag}-{}-", i % 16).as_bytes()),
                "record {i}"
            );
        }
        log.close().await.unwrap();
    });
}

/// Zeroing ahead writes every byte twice: a log flushed rarely, or told not
/// to, never does it.
#[test]
fn a_log_flushed_rarely_or_told_not_to_never_zeroes() {
    let dir = test_dir();
    run(|| async {
        let rare = PartitionLog::open(&dir.path().join("rare"), LogConfig::default())
            .await
            .unwrap();
        for tag in 0..400u64 {
            rare.append(&batch(tag, 16, 1000, 0)).await.unwrap();
        }
        rare.flush().await.unwrap();
        let off = LogConfig {
            segment_zero_ahead_bytes: 0,
            ..LogConfig::default()
        };
        let told = PartitionLog::open(&dir.path().join("told"), off).await.unwrap();
        for tag in 0..400u64 {
            let info = told.append(&batch(tag, 16, 1000, 0)).await.unwrap();
            told.wait_durable(info.last_offset).await.unwrap();
        }
        assert_eq!(rare.stats().zeroed_bytes, 0);
        assert_eq!(told.stats().zeroed_bytes, 0);
        assert_eq!(told.stats().flushes, 400);
        rare.close().await.unwrap();
        told.close().await.unwrap();
    });
}

/// A flush seals a buffer of a few blocks; once written, that buffer is the
/// one a later seal takes over again (two take turns), at its full size.
#[test]
fn written_write_buffers_are_reused() {
    let dir = test_dir();
    let path = dir.path().join("00000000000000000000.log");
    run(|| async move {
        let buffer_bytes = 64 << 10;
        storage::device::prime_iopoll_probe(path.parent().unwrap())
            .await
            .unwrap();
        let mut appender = storage::segment::SegmentAppender::open(&path, 0, buffer_bytes)
            .await
            .unwrap();
        let mut sealed = Vec::new();
        for round in 0..4u8 {
            appender.append(&[round; 5000]);
            let write = appender.seal(true).expect("bytes to write");
            sealed.push(write.buffer.as_ptr() as usize);
            let written = write.file.write_rc_at(write.buffer, write.position).await.unwrap();
            assert_eq!(
                written,
                (5000 * (round as usize + 1)).next_multiple_of(4096) - write.position as usize
            );
            appender.write_done();
        }
        assert_eq!(sealed[0], sealed[2], "the first buffer came back");
        assert_eq!(sealed[1], sealed[3], "the second buffer came back");
        assert_ne!(sealed[0], sealed[1]);
        let read = appender.file.read_at(0, 20000).await.unwrap();
        for round in 0..4u8 {
            let at = round as usize * 5000;
            assert!(read[at..at + 5000].iter().all(|b| *b == round), "round {round}");
        }
    });
}

/// Sequential readers served by read-ahead get exactly what readers of a
/// log without it get: across chunk boundaries (batches straddling two
/// chunks, batches larger than a chunk), rolls, a reader jumping back, a
/// truncation and deleted segments; and read-ahead served most reads.
#[test]
fn read_ahead_serves_what_the_disk_holds() {
    let dir = test_dir();
    let with = LogConfig {
        segment_bytes: 1 << 20,
        write_buffer_bytes: 512 << 10,
        batch_bytes_max: 256 << 10,
        record_bytes_max: 256 << 10,
        read_ahead_bytes: 16 << 10,
        ..LogConfig::default()
    };
    let without = LogConfig {
        read_ahead_bytes: 0,
        ..with.clone()
    };
    run(|| async {
        let ahead = PartitionLog::open(&dir.path().join("ahead"), with).await.unwrap();
        let plain = PartitionLog::open(&dir.path().join("plain"), without).await.unwrap();
        for tag in 0..400u64 {
            // Mostly 0.5-20 KiB batches, every 50th one of 100 KiB.
            let (count, value_bytes) = if tag % 50 == 49 {
                (1, 100_000)
            } else {
                (1 + tag as usize % 40, 500)
            };
            let frame = batch(tag, count, value_bytes, tag as i64);
            ahead.append(&frame).await.unwrap();
            plain.append(&frame).await.unwrap();
        }
        ahead.flush().await.unwrap();
        plain.flush().await.unwrap();
        assert!(ahead.segment_base_offsets().len() >= 3);
        let same = |a: Vec<Seen>, b: Vec<Seen>| {
            assert_eq!(a.len(), b.len());
            assert!(a == b, "read-ahead served other bytes than the disk holds");
        };
        for max_bytes in [6 << 10, 64 << 10, 1 << 20] {
            same(read_all(&ahead, max_bytes).await, read_all(&plain, max_bytes).await);
        }
        let stats = ahead.stats().read_ahead;
        // Chunks of 8 KiB: a reader crosses one every read or two, a 100 KiB
        // batch is read around them.
        assert!(stats.hits > stats.misses, "read-ahead served most reads: {stats:?}");
        assert!(stats.joined > 0, "some batches straddled two chunks: {stats:?}");
        assert!(
            stats.bypassed > 0,
            "batches larger than two chunks were read directly: {stats:?}"
        );
        assert_eq!(plain.stats().read_ahead.hits, 0);
        let (_, in_flight_max) = storage::read_ahead::thread_reads_in_flight();
        assert!(in_flight_max >= 2, "several chunk reads in flight at once");

        // A reader that jumps back reads the same batches either way (read
        // ahead, a read may end at a chunk's end: fewer of them).
        for from in [Offset(10), Offset(3000), Offset(5)] {
            let a = ahead.read(from, 32 << 10).await.unwrap();
            let b = plain.read(from, 32 << 10).await.unwrap();
            // Records, not bytes: each log stamped its own append times.
            let (a_seen, b_seen) = (records_in(&a.bytes, from), records_in(&b.bytes, from));
            assert!(!a_seen.is_empty() && b_seen.starts_with(&a_seen), "read from {from}");
            assert!(a.next_offset > from && a.next_offset <= b.next_offset);
        }

        // A cut drops what read-ahead read of the cut range.
        let cut = Offset(ahead.log_end_offset().0 / 2);
        ahead.truncate_to(cut).await.unwrap();
        plain.truncate_to(cut).await.unwrap();
        for tag in 1000..1100u64 {
            let frame = batch(tag, 7, 900, 0);
            ahead.append(&frame).await.unwrap();
            plain.append(&frame).await.unwrap();
        }
        ahead.flush().await.unwrap();
        plain.flush().await.unwrap();
        same(read_all(&ahead, 20 << 10).await, read_all(&plain, 20 << 10).await);

        // Deleted segments are not served.
        let second = ahead.segment_base_offsets()[1];
        ahead.delete_records_before(second).await.unwrap();
        plain.delete_records_before(second).await.unwrap();
        assert!(matches!(
            ahead.read(Offset(0), 1 << 20).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        same(read_all(&ahead, 20 << 10).await, read_all(&plain, 20 << 10).await);
        ahead.close().await.unwrap();
        plain.close().await.unwrap();
    });
}

/// A shard's read-ahead budget smaller than one chunk: nothing is read
/// ahead, and reads are served as before.
#[test]
fn a_read_ahead_budget_below_one_chunk_reads_nothing_ahead() {
    let dir = test_dir();
    run(|| async {
        storage::read_ahead::set_thread_budget(4096);
        let config = LogConfig {
            write_buffer_bytes: 256 << 10,
            batch_bytes_max: 64 << 10,
            record_bytes_max: 64 << 10,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.path(), config).await.unwrap();
        for tag in 0..300u64 {
            log.append(&batch(tag, 10, 1000, 0)).await.unwrap();
        }
        log.flush().await.unwrap();
        assert_eq!(read_all(&log, 64 << 10).await.len(), 3000);
        let stats = log.stats().read_ahead;
        assert_eq!((stats.hits, stats.chunks), (0, 0), "{stats:?}");
        assert!(stats.misses > 0);
        assert_eq!(storage::read_ahead::thread_bytes_in_use(), 0);
        log.close().await.unwrap();
        storage::read_ahead::set_thread_budget(storage::read_ahead::READ_AHEAD_THREAD_BYTES_DEFAULT);
    });
}

/// A reader that went away does not keep the shard's read-ahead: once its
/// stream has been idle for `READ_AHEAD_IDLE`, a reader of another log that
/// finds the budget spent takes it over.
#[test]
fn idle_streams_give_their_budget_to_readers_of_other_logs() {
    let dir = test_dir();
    run(|| async {
        let config = LogConfig {
            write_buffer_bytes: 256 << 10,
            batch_bytes_max: 64 << 10,
            record_bytes_max: 64 << 10,
            read_ahead_bytes: 64 << 10,
            ..LogConfig::default()
        };
        let (a, b) = (
            PartitionLog::open(&dir.path().join("a"), config.clone()).await.unwrap(),
            PartitionLog::open(&dir.path().join("b"), config).await.unwrap(),
        );
        for tag in 0..300u64 {
            a.append(&batch(tag, 10, 1000, 0)).await.unwrap();
            b.append(&batch(tag, 10, 1000, 0)).await.unwrap();
        }
        a.flush().await.unwrap();
        b.flush().await.unwrap();
        // Room for one stream's two chunks of about 32 KiB (a chunk counts
        // from the block its read starts in).
        storage::read_ahead::set_thread_budget(72 << 10);
        a.read(Offset(0), 16 << 10).await.unwrap();
        assert_eq!(
            a.stats().read_ahead.chunks,
            2,
            "{:?} in use {}",
            a.stats().read_ahead,
            storage::read_ahead::thread_bytes_in_use()
        );
        b.read(Offset(0), 16 << 10).await.unwrap();
        assert_eq!(b.stats().read_ahead.chunks, 0, "the budget is a's");
        glommio::timer::sleep(storage::read_ahead::READ_AHEAD_IDLE + std::time::Duration::from_millis(200)).await;
        assert_eq!(read_all(&b, 16 << 10).await.len(), 3000);
        assert!(b.stats().read_ahead.chunks > 0, "b read ahead once a's stream was idle");
        assert!(b.stats().read_ahead.hits > 0);
        // a's reader comes back: its stream restarts and reads correctly.
        assert_eq!(read_all(&a, 16 << 10).await.len(), 3000);
        a.close().await.unwrap();
        b.close().await.unwrap();
        assert_eq!(
            storage::read_ahead::thread_bytes_in_use(),
            0,
            "closed logs hold nothing"
        );
        storage::read_ahead::set_thread_budget(storage::read_ahead::READ_AHEAD_THREAD_BYTES_DEFAULT);
    });
}

/// The batch cache serves what was just written, and what was read from disk
/// once, from memory, byte for byte what the disk holds; a cache too small
/// for one buffer keeps nothing; a truncated or deleted range is never
/// served from it; a closed log leaves nothing in it.
#[test]
fn the_batch_cache_serves_recent_batches_and_never_what_was_cut() {
    use storage::batch_cache::{set_thread_capacity, thread_stats};
    let dir = test_dir();
    let config = LogConfig {
        segment_bytes: 2 << 20,
        write_buffer_bytes: 256 << 10,
        batch_bytes_max: 128 << 10,
        record_bytes_max: 128 << 10,
        // Without read-ahead every miss is a read from disk of its own.
        read_ahead_bytes: 0,
        ..LogConfig::default()
    };
    run(|| async {
        set_thread_capacity(16 << 20);
        let log = PartitionLog::open(dir.path(), config).await.unwrap();
        // The last batch is small: one that the active segment's memory
        // begins inside is read joined from disk and memory, not cached.
        for tag in 0..410u64 {
            // 1-20 KiB batches, every 40th one of 100 KiB.
            let (count, value_bytes) = if tag % 40 == 39 {
                (1, 100_000)
            } else {
                (1 + tag as usize % 20, 1000)
            };
            log.append(&batch(tag, count, value_bytes, tag as i64)).await.unwrap();
        }
        log.flush().await.unwrap();
        assert!(log.segment_base_offsets().len() >= 2);
        let written = thread_stats();
        assert!(written.written_entries > 0, "{written:?}");
        assert!(written.held_bytes <= 16 << 20);

        // Everything written is in memory: no read goes to the disk.
        let from_memory = read_all(&log, 64 << 10).await;
        assert_eq!(log.stats().disk_read_bytes, 0, "{:?}", thread_stats());
        assert!(thread_stats().hits > 0);

        // The disk holds the same: read it with the cache off.
        set_thread_capacity(0);
        assert_eq!(thread_stats().held_bytes, 0, "switched off, it holds nothing");
        let from_disk = read_all(&log, 64 << 10).await;
        assert!(
            from_memory == from_disk,
            "the cache served other bytes than the disk holds"
        );
        let disk_bytes = log.stats().disk_read_bytes;
        assert!(disk_bytes > 0);

        // Read once from disk, then from the cache: the same bytes, no new
        // disk reads, and a reader jumping back is served too.
        set_thread_capacity(16 << 20);
        assert!(read_all(&log, 64 << 10).await == from_disk);
        let after_first = log.stats().disk_read_bytes;
        assert!(after_first > disk_bytes);
        assert!(read_all(&log, 20 << 10).await == from_disk);
        for from in [Offset(3000), Offset(10), Offset(1500)] {
            let read = log.read(from, 32 << 10).await.unwrap();
            assert!(!read.bytes.is_empty() && read.next_offset > from);
        }
        assert_eq!(log.stats().disk_read_bytes, after_first, "read back from the cache");
        assert!(thread_stats().read_entries > 0);

        // A cut: new batches take the cut offsets, and not one old byte is
        // served from the cache in their place.
        let cut = Offset(log.log_end_offset().0 / 2);
        log.truncate_to(cut).await.unwrap();
        let end = log.log_end_offset();
        for tag in 1000..1200u64 {
            log.append(&batch(tag, 5, 900, 0)).await.unwrap();
        }
        log.flush().await.unwrap();
        let cached = read_all(&log, 48 << 10).await;
        assert!(cached
            .iter()
            .any(|s| s.offset == end && s.value.starts_with(b"1000-0-")));
        set_thread_capacity(0);
        let truth = read_all(&log, 48 << 10).await;
        assert!(cached == truth, "the cache served bytes cut from the log");

        // A cache smaller than one write buffer keeps nothing and serves
        // what the disk holds.
        set_thread_capacity(100 << 10);
        for tag in 2000..2100u64 {
            log.append(&batch(tag, 5, 900, 0)).await.unwrap();
        }
        log.flush().await.unwrap();
        let small = thread_stats();
        assert_eq!(small.written_entries, thread_stats().written_entries);
        let truth = {
            set_thread_capacity(0);
            read_all(&log, 48 << 10).await
        };
        set_thread_capacity(100 << 10);
        assert!(read_all(&log, 48 << 10).await == truth);
        assert!(thread_stats().held_bytes <= 100 << 10);

        // Deleted segments: gone from the log and from the cache.
        set_thread_capacity(16 << 20);
        assert!(read_all(&log, 48 << 10).await == truth);
        let second = log.segment_base_offsets()[1];
        log.delete_records_before(second).await.unwrap();
        assert!(matches!(
            log.read(Offset(0), 1 << 20).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        let kept: Vec<Seen> = truth.iter().filter(|s| s.offset >= second).cloned().collect();
        assert!(read_all(&log, 48 << 10).await == kept);

        log.close().await.unwrap();
        let closed = thread_stats();
        assert_eq!(
            (closed.entries, closed.held_bytes),
            (0, 0),
            "a closed log leaves nothing cached"
        );
        set_thread_capacity(0);
    });
}

/// A log flushed after every append (acks=all) seals write buffers with a
/// few KiB in them: their bytes gather in the cache's arenas, and a reader
/// behind the log is served from memory, byte for byte what the disk holds.
#[test]
fn a_log_flushed_after_every_append_is_read_back_from_the_batch_cache() {
    use storage::batch_cache::{set_thread_capacity, thread_stats};
    let dir = test_dir();
    let config = LogConfig {
        segment_bytes: 1 << 20,
        write_buffer_bytes: 256 << 10,
        batch_bytes_max: 128 << 10,
        record_bytes_max: 128 << 10,
        read_ahead_bytes: 64 << 10,
        ..LogConfig::default()
    };
    run(|| async {
        set_thread_capacity(16 << 20);
        let log = PartitionLog::open(dir.path(), config).await.unwrap();
        for tag in 0..400u64 {
            log.append(&batch(tag, 1 + tag as usize % 8, 700, tag as i64))
                .await
                .unwrap();
            log.flush().await.unwrap();
        }
        assert!(log.stats().flushes >= 400);
        assert!(
            log.segment_base_offsets().len() >= 2,
            "rolled: arenas of more than one segment"
        );
        let cached = read_all(&log, 32 << 10).await;
        let stats = log.stats();
        assert_eq!(
            (stats.disk_read_bytes, stats.read_ahead.chunk_bytes),
            (0, 0),
            "{:?}",
            thread_stats()
        );
        assert!(thread_stats().held_bytes < 16 << 20);
        set_thread_capacity(0);
        let from_disk = read_all(&log, 32 << 10).await;
        assert!(log.stats().read_ahead.chunk_bytes > 0);
        assert!(cached == from_disk, "the arenas served other bytes than the disk holds");
        log.close().await.unwrap();
    });
}

/// The frames of the whole log, as the log serves them.
async fn all_frames(log: &PartitionLog) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut next = log.log_start_offset();
    loop {
        let read = log.read(next, 1 << 20).await.unwrap();
        if read.bytes.is_empty() {
            return frames;
        }
        frames.extend(batch::frames(&read.bytes).map(<[u8]>::to_vec));
        next = read.next_offset;
    }
}

#[test]
fn leader_epochs_are_stamped_recorded_and_survive_cuts_and_reopen() {
    let dir = test_dir();
    run(|| async {
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        for tag in 0..10u64 {
            log.append(&batch(tag, 2, 100, 0)).await.unwrap();
        }
        let epoch = |epoch, start| EpochStart {
            epoch,
            start_offset: Offset(start),
        };
        assert_eq!(log.leader_epochs(), vec![epoch(0, 0)]);
        for (i, tag) in (10..30u64).enumerate() {
            let stamp = Stamp::Leader {
                leader_epoch: 3,
                raft_index: 100 + i as u64,
            };
            log.append_stamped(&batch(tag, 2, 2000, 0), stamp).await.unwrap();
        }
        assert!(log.segment_base_offsets().len() >= 2, "64 KiB segments rolled");
        assert_eq!(log.leader_epochs(), vec![epoch(0, 0), epoch(3, 20)]);
        // A deposed leader's epoch is refused, and nothing is appended.
        let stale = Stamp::Leader {
            leader_epoch: 2,
            raft_index: 1,
        };
        let e = log.append_stamped(&batch(99, 1, 1, 0), stale).await.unwrap_err();
        assert!(matches!(e, StorageError::AppendRefused { .. }), "{e}");
        assert!(e.to_string().contains("older than epoch 3"), "{e}");
        assert_eq!(log.log_end_offset(), Offset(60));

        // Every served batch carries what was stamped.
        let frames = all_frames(&log).await;
        let stamps: Vec<(i32, u64)> = frames
            .iter()
            .map(|f| {
                let info = batch::verify_crc(f).unwrap();
                (info.leader_epoch, info.raft_index)
            })
            .collect();
        assert!(stamps[..10].iter().all(|&s| s == (0, 0)));
        assert_eq!(stamps[10..], (100..120).map(|i| (3, i)).collect::<Vec<_>>()[..]);

        assert_eq!(log.end_offset_for_leader_epoch(3), Some((3, Offset(60))));
        assert_eq!(log.end_offset_for_leader_epoch(2), Some((0, Offset(20))));
        assert_eq!(log.end_offset_for_leader_epoch(0), Some((0, Offset(20))));
        assert_eq!(log.end_offset_for_leader_epoch(4), None);
        log.close().await.unwrap();

        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(log.leader_epochs(), vec![epoch(0, 0), epoch(3, 20)]);
        // A replica stores the leader's batches exactly: offsets, append
        // times, epochs and Raft indexes.
        let follower_dir = test_dir();
        let follower = PartitionLog::open(follower_dir.path(), small_config()).await.unwrap();
        for frame in &frames {
            follower.append_stamped(frame, Stamp::Replica).await.unwrap();
        }
        assert_eq!(all_frames(&follower).await, frames);
        assert_eq!(follower.leader_epochs(), log.leader_epochs());
        let e = follower.append_stamped(&frames[3], Stamp::Replica).await.unwrap_err();
        assert!(e.to_string().contains("at offset 6 where the log ends at 60"), "{e}");

        // A cut drops the epochs past it, on disk too.
        log.truncate_to(Offset(20)).await.unwrap();
        assert_eq!(log.leader_epochs(), vec![epoch(0, 0)]);
        let next = Stamp::Leader {
            leader_epoch: 5,
            raft_index: 100,
        };
        log.append_stamped(&batch(7, 1, 10, 0), next).await.unwrap();
        assert_eq!(log.leader_epochs(), vec![epoch(0, 0), epoch(5, 20)]);
        // Records deleted from the front take the epochs wholly before them.
        log.delete_records_before(Offset(21)).await.unwrap();
        assert_eq!(log.leader_epochs(), vec![epoch(5, 21)]);
        log.close().await.unwrap();
        // Epoch 5 now holds no batch: a reopen cannot tell it from an epoch
        // written ahead of a batch a crash lost, and forgets it.
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(log.leader_epochs(), vec![]);
        log.close().await.unwrap();
        follower.close().await.unwrap();
    });
}

#[test]
fn a_log_of_another_batch_format_is_refused_untouched() {
    let dir = test_dir();
    run(|| async {
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        log.append(&batch(1, 3, 100, 0)).await.unwrap();
        log.close().await.unwrap();
        let format = dir.path().join("log-format");
        let sizes = |dir: &std::path::Path| {
            let mut sizes: Vec<(String, u64)> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().unwrap().len(),
                    )
                })
                .collect();
            sizes.sort();
            sizes
        };
        for marker in [None, Some("1\n")] {
            match marker {
                Some(text) => std::fs::write(&format, text).unwrap(),
                None => std::fs::remove_file(&format).unwrap(),
            }
            let before = sizes(dir.path());
            let e = PartitionLog::open(dir.path(), small_config()).await.err().unwrap();
            assert!(matches!(e, StorageError::InvalidLogDir { .. }), "{e}");
            assert!(e.to_string().contains("reads format 2"), "{e}");
            assert_eq!(sizes(dir.path()), before, "a refused log is not touched");
        }
        std::fs::write(&format, "2\n").unwrap();
        let log = PartitionLog::open(dir.path(), small_config()).await.unwrap();
        assert_eq!(read_all(&log, 4096).await.len(), 3);
        log.close().await.unwrap();
    });
}
