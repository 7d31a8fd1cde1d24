//! Property test: random sequences of appends, flushes, rolls, reads,
//! reopens, crashes, truncations and retention, checked against a model (a
//! plain vector of the records that should be there).

mod common;

use common::*;
use proptest::prelude::*;
use storage::{LogConfig, Offset, PartitionLog};

#[derive(Clone, Debug)]
enum Op {
    Append {
        records: usize,
        value_bytes: usize,
    },
    Flush,
    Read {
        at: u64,
        max_bytes: usize,
    },
    Reopen,
    Crash,
    Truncate {
        at: u64,
    },
    DeleteBefore {
        at: u64,
    },
    RetainBytes {
        bytes: u64,
    },
    /// The thread's batch cache resized: off, smaller than one write
    /// buffer (nothing is kept), about one buffer, many.
    CacheBytes {
        bytes: usize,
    },
}

fn cache_bytes() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), Just(3 << 10), Just(60 << 10), Just(1 << 20)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..6, prop_oneof![0usize..10, 100usize..600, 3000usize..5000])
            .prop_map(|(records, value_bytes)| Op::Append { records, value_bytes }),
        2 => Just(Op::Flush),
        3 => (any::<u64>(), 1usize..20_000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
        1 => any::<u64>().prop_map(|at| Op::Truncate { at }),
        1 => any::<u64>().prop_map(|at| Op::DeleteBefore { at }),
        1 => (8_000u64..200_000).prop_map(|bytes| Op::RetainBytes { bytes }),
        1 => cache_bytes().prop_map(|bytes| Op::CacheBytes { bytes }),
    ]
}

fn config(retention_bytes: Option<u64>) -> LogConfig {
    LogConfig {
        segment_bytes: 96 << 10,
        index_interval_bytes: 700,
        // Smaller than a segment: buffers fill and are written mid-segment.
        write_buffer_bytes: 40 << 10,
        batch_bytes_max: 32 << 10,
        record_bytes_max: 32 << 10,
        retention_bytes,
        retention_ms: None,
        // Chunks of three blocks: reads cross chunk boundaries often.
        read_ahead_bytes: 12 << 10,
        ..LogConfig::default()
    }
}

/// Model: (offset, value) of every record that must be in the log.
struct Model {
    records: Vec<(Offset, Vec<u8>)>,
    log_start: Offset,
    log_end: Offset,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn the_log_agrees_with_its_model(cache in cache_bytes(), ops in prop::collection::vec(op(), 1..60)) {
        let dir = test_dir();
        run(|| async move {
            storage::batch_cache::set_thread_capacity(cache);
            let mut log = PartitionLog::open(dir.path(), config(None)).await.unwrap();
            let mut model = Model { records: Vec::new(), log_start: Offset(0), log_end: Offset(0) };
            let mut tag = 0u64;
            for op in ops {
                match op {
                    Op::Append { records, value_bytes } => {
                        tag += 1;
                        let info = log.append(&batch(tag, records, value_bytes, tag as i64)).await.unwrap();
                        assert_eq!(info.base_offset, model.log_end);
                        for i in 0..records {
                            let mut value = format!("{tag}-{i}-").into_bytes();
                            value.resize(value_bytes, b'.');
                            model.records.push((model.log_end.plus(i as u64), value));
                        }
                        model.log_end = info.last_offset.next();
                    }
                    Op::Flush => {
                        assert_eq!(log.flush().await.unwrap(), model.log_end);
                    }
                    Op::Read { at, max_bytes } => {
                        let span = model.log_end.0 - model.log_start.0 + 1;
                        let from = Offset(model.log_start.0 + at % span);
                        let read = log.read(from, max_bytes).await.unwrap();
                        if from == model.log_end {
                            assert!(read.bytes.is_empty());
                        } else {
                            let first = storage::batch::verify_crc(&read.bytes).unwrap();
                            assert!(first.base_offset <= from && from <= first.last_offset());
                            // Every record served is the model's: nothing
                            // truncated or deleted comes back from read-ahead
                            // or the batch cache.
                            let start = model.records.partition_point(|(o, _)| *o < from);
                            let served = records_of(&read.bytes, from);
                            assert!(!served.is_empty());
                            for (i, (offset, value)) in served.iter().enumerate() {
                                assert_eq!(Some(&(*offset, value.clone())), model.records.get(start + i), "read from {from}");
                            }
                            assert_eq!(read.next_offset, served.last().unwrap().0.next());
                        }
                    }
                    Op::Reopen => {
                        log.close().await.unwrap();
                        log = PartitionLog::open(dir.path(), config(None)).await.unwrap();
                        assert_eq!(log.log_end_offset(), model.log_end);
                    }
                    Op::Crash => {
                        let durable = log.durable_offset();
                        drop(log);
                        log = PartitionLog::open(dir.path(), config(None)).await.unwrap();
                        // What was durable survives; of the rest, a prefix may.
                        let end = log.log_end_offset();
                        assert!(end >= durable && end <= model.log_end, "end {end} durable {durable}");
                        model.records.retain(|(o, _)| *o < end);
                        model.log_end = end;
                    }
                    Op::Truncate { at } => {
                        let span = model.log_end.0 - model.log_start.0 + 1;
                        let to = Offset(model.log_start.0 + at % span);
                        log.truncate_to(to).await.unwrap();
                        let end = log.log_end_offset();
                        assert!(end <= to && end >= model.log_start, "end {end} to {to}");
                        model.records.retain(|(o, _)| *o < end);
                        model.log_end = end;
                    }
                    Op::DeleteBefore { at } => {
                        let span = model.log_end.0 - model.log_start.0 + 1;
                        let to = Offset(model.log_start.0 + at % span);
                        log.delete_records_before(to).await.unwrap();
                        model.log_start = to;
                        assert_eq!(log.log_start_offset(), to);
                    }
                    Op::RetainBytes { bytes } => {
                        log.close().await.unwrap();
                        log = PartitionLog::open(dir.path(), config(Some(bytes))).await.unwrap();
                        log.apply_retention().await.unwrap();
                        model.log_start = log.log_start_offset();
                        log.close().await.unwrap();
                        log = PartitionLog::open(dir.path(), config(None)).await.unwrap();
                    }
                    Op::CacheBytes { bytes } => storage::batch_cache::set_thread_capacity(bytes),
                }
                assert_eq!(log.log_end_offset(), model.log_end);
                assert_eq!(log.log_start_offset(), model.log_start);
            }
            let seen = read_all(&log, 5000).await;
            let expected: Vec<_> = model.records.iter().filter(|(o, _)| *o >= model.log_start).collect();
            assert_eq!(seen.len(), expected.len());
            for (s, (offset, value)) in seen.iter().zip(expected) {
                assert_eq!(s.offset, *offset);
                assert_eq!(&s.value, value);
            }
            log.close().await.unwrap();
        });
    }
}

/// The (offset, value) of every record at or after `from` in `bytes`.
fn records_of(bytes: &[u8], from: Offset) -> Vec<(Offset, Vec<u8>)> {
    let mut records = Vec::new();
    for frame in storage::batch::frames(bytes) {
        let info = storage::batch::verify_crc(frame).expect("served batches carry their crc");
        let archived = storage::batch::access(frame).expect("served batches validate");
        for record in archived.records.iter() {
            let offset = info.base_offset.plus(u64::from(record.offset_delta.to_native()));
            if offset >= from {
                records.push((offset, record.value.as_ref().map(|v| v.to_vec()).unwrap_or_default()));
            }
        }
    }
    records
}
