//! Transactions against the real `corelog` binary: aborted records are
//! invisible at READ_COMMITTED and visible at READ_UNCOMMITTED; an open
//! transaction holds READ_COMMITTED consumers at its first offset; offsets
//! committed in a transaction count only if it commits; a transaction its
//! producer abandons times out and is aborted, fencing the producer; and a
//! broker killed with `kill -9` mid-transaction, or mid-commit, ends the
//! transaction whole after restart.

use std::time::{Duration, Instant};

use net::client::Connection;
use net::consumer::Consumer;
use net::messages::*;
use net::transaction::TransactionalProducer;
use net::{ErrorCode, NetError};
use storage::batch::{attributes, control, RecordBatchBuilder};

mod common;
use common::*;

const TOPIC: &str = "tx";
const PARTITIONS: u32 = 3;

/// Every record value of a partition a consumer at `isolation_level` gets,
/// read up to the last stable offset (READ_COMMITTED) or high watermark.
async fn read(addr: &str, topic: &str, partition: u32, isolation_level: u8) -> Vec<String> {
    let mut c = Connection::connect(addr).await.unwrap();
    let probe = c
        .fetch_isolated(topic, partition, 0, 1, 0, isolation::READ_COMMITTED)
        .await
        .unwrap();
    let target = if isolation_level == isolation::READ_COMMITTED {
        probe.last_stable_offset
    } else {
        probe.high_watermark
    };
    let mut consumer = Consumer::connect(addr, topic).await.unwrap();
    consumer.set_isolation_level(isolation_level);
    consumer.set_max_wait_ms(10);
    consumer.assign(&[partition]).await.unwrap();
    let mut values = Vec::new();
    while consumer.position(partition).unwrap() < target {
        for record in consumer.poll().await.unwrap() {
            values.push(String::from_utf8(record.value.unwrap()).unwrap());
        }
    }
    values
}

async fn read_all(addr: &str, isolation_level: u8) -> Vec<String> {
    let mut values = Vec::new();
    for partition in 0..PARTITIONS {
        values.extend(read(addr, TOPIC, partition, isolation_level).await);
    }
    values.sort();
    values
}

/// (high watermark, last stable offset) of a partition.
async fn offsets(c: &mut Connection, partition: u32) -> (u64, u64) {
    let fetched = c
        .fetch_isolated(TOPIC, partition, 0, 1, 0, isolation::READ_COMMITTED)
        .await
        .unwrap();
    (fetched.high_watermark, fetched.last_stable_offset)
}

/// Waits until no transaction is open in any partition of the topic.
async fn wait_until_stable(addr: &str) {
    let mut c = Connection::connect(addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut stable = true;
        for partition in 0..PARTITIONS {
            let (hw, lso) = offsets(&mut c, partition).await;
            stable &= hw == lso;
        }
        if stable {
            return;
        }
        assert!(Instant::now() < deadline, "transactions still open after 30 s");
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}

async fn send_values(producer: &mut TransactionalProducer, prefix: &str, count: u32) -> Vec<String> {
    let mut sent = Vec::new();
    for n in 0..count {
        let value = format!("{prefix}-{n}");
        producer
            .send(TOPIC, n % PARTITIONS, None, Some(value.as_bytes()), 0)
            .await
            .unwrap();
        sent.push(value);
    }
    sent
}

fn sorted(mut values: Vec<String>) -> Vec<String> {
    values.sort();
    values
}

fn rejected<T: std::fmt::Debug>(result: Result<T, NetError>, expected: ErrorCode) {
    match result {
        Err(NetError::Rejected { code, .. }) if code == expected => {}
        other => panic!("expected {expected:?}, got {other:?}"),
    }
}

fn plain(values: &[&str]) -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new();
    for value in values {
        builder.push(0, None, Some(value.as_bytes()), vec![]);
    }
    builder.build()
}

#[test]
fn aborted_records_are_invisible_to_read_committed_and_open_ones_hold_it_back() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    let checked = run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        c.create_topic(TOPIC, PARTITIONS, vec![]).await.unwrap();
        c.produce(TOPIC, 0, &plain(&["plain-a"]), acks::ALL).await.unwrap();

        let mut aborted = TransactionalProducer::init(&addr, "aborting", Duration::from_secs(60))
            .await
            .unwrap();
        aborted.begin().unwrap();
        let aborted_values = send_values(&mut aborted, "aborted", 9).await;
        aborted.flush().await.unwrap();

        let mut committed = TransactionalProducer::init(&addr, "committing", Duration::from_secs(60))
            .await
            .unwrap();
        committed.begin().unwrap();
        let committed_values = send_values(&mut committed, "committed", 6).await;
        committed.commit().await.unwrap();

        // The aborting transaction is still open: READ_COMMITTED stops at
        // its first offset, where plain-a ends, in partition 0.
        let (hw, lso) = offsets(&mut c, 0).await;
        assert_eq!(lso, 1, "held at the open transaction's first offset");
        assert!(hw > lso);
        assert_eq!(read(&addr, TOPIC, 0, isolation::READ_COMMITTED).await, vec!["plain-a"]);

        aborted.abort().await.unwrap();
        c.produce(TOPIC, 1, &plain(&["plain-b"]), acks::ALL).await.unwrap();

        let mut visible = committed_values.clone();
        visible.extend(["plain-a".to_string(), "plain-b".to_string()]);
        assert_eq!(
            read_all(&addr, isolation::READ_COMMITTED).await,
            sorted(visible.clone())
        );
        visible.extend(aborted_values);
        assert_eq!(
            read_all(&addr, isolation::READ_UNCOMMITTED).await,
            sorted(visible),
            "read_uncommitted sees the aborted records, never the markers"
        );
        for partition in 0..PARTITIONS {
            let (hw, lso) = offsets(&mut c, partition).await;
            assert_eq!(hw, lso, "partition {partition}: nothing open");
        }
        (committed_values, addr)
    });
    // The console consumer at both levels: markers are never printed.
    let (committed_values, addr) = checked;
    let console = |level: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_corelog"))
            .args(["consume", TOPIC, "--from-beginning", "--timeout-ms", "1000"])
            .args(["--isolation-level", level, "--broker", &addr])
            .output()
            .expect("corelog runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        sorted(
            String::from_utf8(output.stdout)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect(),
        )
    };
    let mut visible = committed_values;
    visible.extend(["plain-a".to_string(), "plain-b".to_string()]);
    assert_eq!(console("read_committed"), sorted(visible));
    assert_eq!(console("read_uncommitted").len(), 17, "6 committed, 9 aborted, 2 plain");
    broker.stop();
}

#[test]
fn offsets_committed_in_a_transaction_count_only_if_it_commits() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        c.create_topic("in", 1, vec![]).await.unwrap();
        c.create_topic(TOPIC, PARTITIONS, vec![]).await.unwrap();
        let inputs: Vec<String> = (0..20).map(|n| format!("in-{n}")).collect();
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        c.produce("in", 0, &plain(&refs), acks::ALL).await.unwrap();

        // Consume, transform and produce, with the consumed position
        // committed in the same transaction.
        let mut producer = TransactionalProducer::init(&addr, "pipeline", Duration::from_secs(60))
            .await
            .unwrap();
        let mut input = Consumer::connect(&addr, "in").await.unwrap();
        input.assign(&[0]).await.unwrap();
        let mut outputs = Vec::new();
        for (round, commit) in [(0, true), (1, false)] {
            producer.begin().unwrap();
            let mut taken = 0;
            while taken < 10 {
                for record in input.poll().await.unwrap() {
                    if taken < 10 {
                        let value = format!("out-{}", String::from_utf8(record.value.unwrap()).unwrap());
                        producer
                            .send(TOPIC, taken % PARTITIONS, None, Some(value.as_bytes()), 0)
                            .await
                            .unwrap();
                        if commit {
                            outputs.push(value);
                        }
                        taken += 1;
                    }
                }
            }
            let position = 10 * (round + 1);
            input.seek(0, position).await.unwrap();
            producer
                .send_offsets("g", &[("in".to_string(), 0, position)])
                .await
                .unwrap();
            if commit {
                producer.commit().await.unwrap();
            } else {
                producer.abort().await.unwrap();
            }
        }
        let committed = c.fetch_offsets("g", None).await.unwrap();
        assert_eq!(
            committed,
            vec![("in".to_string(), 0, Some(10))],
            "the aborted commit of 20 did not count"
        );
        assert_eq!(read_all(&addr, isolation::READ_COMMITTED).await, sorted(outputs));
    });
    // The offsets log replays to the same: the transaction's commit counts,
    // the aborted one does not.
    broker.kill9();
    let broker = Broker::start(dir.path(), 1);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        let committed = c.fetch_offsets("g", None).await.unwrap();
        assert_eq!(committed, vec![("in".to_string(), 0, Some(10))]);
    });
    broker.stop();
}

#[test]
fn an_abandoned_transaction_times_out_and_its_producer_is_fenced() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        c.create_topic(TOPIC, PARTITIONS, vec![]).await.unwrap();
        let mut zombie = TransactionalProducer::init(&addr, "zombie", Duration::from_millis(500))
            .await
            .unwrap();
        zombie.begin().unwrap();
        send_values(&mut zombie, "lost", 6).await;
        zombie.flush().await.unwrap();
        wait_until_stable(&addr).await;
        assert_eq!(read_all(&addr, isolation::READ_COMMITTED).await, Vec::<String>::new());
        assert_eq!(read_all(&addr, isolation::READ_UNCOMMITTED).await.len(), 6);
        // The abort bumped the epoch: the zombie can end nothing.
        rejected(zombie.commit().await, ErrorCode::ProducerFenced);
    });
    broker.stop();
}

fn raw_batch(producer: (i64, i16), sequence: i32, value: &str) -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new()
        .producer(producer.0, producer.1, sequence)
        .attributes(attributes::TRANSACTIONAL);
    builder.push(0, None, Some(value.as_bytes()), vec![]);
    builder.build()
}

#[test]
fn kill_9_mid_transaction_ends_it_whole_after_restart() {
    let dir = data_dir();
    // Producer state snapshots every 100 ms: the restart loads one taken
    // while the transactions were open and replays the log after it.
    let config = "producer_snapshot_interval_ms = 100\n";
    let broker = Broker::start_with_config(dir.path(), 2, config);
    let addr = broker.addr.clone();
    let (done_values, resumed) = run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        c.create_topic(TOPIC, PARTITIONS, vec![]).await.unwrap();
        let mut done = TransactionalProducer::init(&addr, "done", Duration::from_secs(60))
            .await
            .unwrap();
        done.begin().unwrap();
        let values = send_values(&mut done, "done", 6).await;
        done.commit().await.unwrap();
        let mut open = TransactionalProducer::init(&addr, "open", Duration::from_secs(60))
            .await
            .unwrap();
        open.begin().unwrap();
        send_values(&mut open, "open", 6).await;
        open.flush().await.unwrap();
        // A transaction that goes on after the restart: partitions 0 and 1
        // added, only partition 0 written before the crash.
        let resumed = c.init_transactional_id("resumed", 60_000).await.unwrap();
        c.add_partitions_to_txn(&AddPartitionsToTxnRequest {
            transactional_id: "resumed".into(),
            producer_id: resumed.0,
            producer_epoch: resumed.1,
            topics: vec![TxnPartitions {
                topic: TOPIC.into(),
                partitions: vec![0, 1],
            }],
        })
        .await
        .unwrap();
        c.produce(TOPIC, 0, &raw_batch(resumed, 0, "resumed-0"), acks::ALL)
            .await
            .unwrap();
        glommio::timer::sleep(Duration::from_millis(400)).await;
        // Opened after the snapshot: the restart finds it in the replay,
        // and its 1 s timeout aborts it.
        let mut late = TransactionalProducer::init(&addr, "late", Duration::from_secs(1))
            .await
            .unwrap();
        late.begin().unwrap();
        send_values(&mut late, "late", 3).await;
        late.flush().await.unwrap();
        (values, resumed)
    });
    broker.kill9();
    assert!(
        dir.path().join(format!("{TOPIC}-0")).join("producers.json").exists(),
        "a snapshot was taken while the transactions were open"
    );

    let broker = Broker::start_with_config(dir.path(), 2, config);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        let (hw, lso) = offsets(&mut c, 0).await;
        assert!(lso < hw, "the open transactions are still open after the restart");
        // The resumed transaction's producer writes to the partition it had
        // added before the crash, and commits.
        c.produce(TOPIC, 1, &raw_batch(resumed, 0, "resumed-1"), acks::ALL)
            .await
            .unwrap();
        c.end_txn(&EndTxnRequest {
            transactional_id: "resumed".into(),
            producer_id: resumed.0,
            producer_epoch: resumed.1,
            commit: true,
        })
        .await
        .unwrap();
        // The open one's producer comes back: initializing the id aborts
        // what it left.
        let mut again = TransactionalProducer::init(&addr, "open", Duration::from_secs(60))
            .await
            .unwrap();
        wait_until_stable(&addr).await;
        let mut visible = done_values;
        visible.extend(["resumed-0".to_string(), "resumed-1".to_string()]);
        assert_eq!(
            read_all(&addr, isolation::READ_COMMITTED).await,
            sorted(visible.clone())
        );
        assert_eq!(read_all(&addr, isolation::READ_UNCOMMITTED).await.len(), 17);
        again.begin().unwrap();
        visible.extend(send_values(&mut again, "again", 3).await);
        again.commit().await.unwrap();
        assert_eq!(read_all(&addr, isolation::READ_COMMITTED).await, sorted(visible));
    });
    broker.stop();
}

#[test]
fn kill_9_during_a_commit_leaves_all_or_nothing() {
    // The broker dies somewhere in the commit: before the prepared state is
    // written, between markers, or after; each delay is a fresh broker.
    for delay_us in [0, 500, 1_000, 2_000, 4_000, 8_000] {
        let dir = data_dir();
        let broker = Broker::start(dir.path(), 2);
        let addr = broker.addr.clone();
        let acknowledged = run(async move {
            let mut c = Connection::connect(&addr).await.unwrap();
            c.create_topic(TOPIC, PARTITIONS, vec![]).await.unwrap();
            let mut producer = TransactionalProducer::init(&addr, "racing", Duration::from_secs(1))
                .await
                .unwrap();
            producer.begin().unwrap();
            send_values(&mut producer, "racing", 30).await;
            producer.flush().await.unwrap();
            let committing = glommio::spawn_local(async move { producer.commit().await }).detach();
            glommio::timer::sleep(Duration::from_micros(delay_us)).await;
            broker.kill9();
            matches!(committing.await, Some(Ok(())))
        });
        let broker = Broker::start(dir.path(), 2);
        let addr = broker.addr.clone();
        run(async move {
            // A prepared commit is finished by the restarted coordinator; an
            // open transaction times out (1 s) and is aborted.
            wait_until_stable(&addr).await;
            let committed = read_all(&addr, isolation::READ_COMMITTED).await;
            eprintln!(
                "killed {delay_us} us into the commit: {} of 30 records committed",
                committed.len()
            );
            assert!(
                committed.is_empty() || committed.len() == 30,
                "all or nothing, got {} records",
                committed.len()
            );
            assert!(
                !acknowledged || committed.len() == 30,
                "an acknowledged commit is never lost"
            );
            assert_eq!(read_all(&addr, isolation::READ_UNCOMMITTED).await.len(), 30);
        });
        broker.stop();
        let log = std::fs::read_to_string(dir.path().with_extension("log")).unwrap_or_default();
        if log.contains("left prepared") {
            eprintln!("killed {delay_us} us into the commit: the restart finished it from its prepared state");
        }
    }
}

#[test]
fn bad_transactional_requests_get_clear_errors_and_lose_nothing() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        c.create_topic(TOPIC, PARTITIONS, vec![]).await.unwrap();
        rejected(
            c.init_transactional_id("t", 3_600_000).await,
            ErrorCode::InvalidTransactionTimeout,
        );
        rejected(c.init_transactional_id("", 1_000).await, ErrorCode::InvalidRequest);
        rejected(
            c.end_txn(&EndTxnRequest {
                transactional_id: "nobody".into(),
                producer_id: 1,
                producer_epoch: 0,
                commit: true,
            })
            .await,
            ErrorCode::InvalidProducerIdMapping,
        );
        let (producer_id, epoch) = c.init_transactional_id("t", 10_000).await.unwrap();
        let add = |topic: &str| AddPartitionsToTxnRequest {
            transactional_id: "t".into(),
            producer_id,
            producer_epoch: epoch,
            topics: vec![TxnPartitions {
                topic: topic.into(),
                partitions: vec![0],
            }],
        };
        rejected(
            c.add_partitions_to_txn(&add("missing")).await,
            ErrorCode::UnknownTopicOrPartition,
        );
        rejected(
            c.add_partitions_to_txn(&add("__consumer_offsets")).await,
            ErrorCode::UnknownTopicOrPartition,
        );
        // A transactional batch for a partition not added to the
        // transaction: refused, or it would hold the partition open forever.
        let transactional = RecordBatchBuilder::new()
            .producer(producer_id, epoch, 0)
            .attributes(attributes::TRANSACTIONAL);
        let mut batch = transactional;
        batch.push(0, None, Some(b"stray"), vec![]);
        rejected(
            c.produce(TOPIC, 1, &batch.build(), acks::ALL).await,
            ErrorCode::InvalidTxnState,
        );
        // Markers are the broker's to write.
        rejected(
            c.produce(
                TOPIC,
                1,
                &control::batch(producer_id, epoch, control::Marker::Commit, 0),
                acks::ALL,
            )
            .await,
            ErrorCode::InvalidRecord,
        );
        // Offsets in a transaction the group was not added to.
        rejected(
            c.txn_offset_commit(&TxnOffsetCommitRequest {
                transactional_id: "t".into(),
                group: "g".into(),
                producer_id,
                producer_epoch: epoch,
                topics: vec![OffsetCommitTopic {
                    name: TOPIC.into(),
                    partitions: vec![OffsetCommitPartition {
                        partition: 0,
                        offset: 1,
                        metadata: String::new(),
                    }],
                }],
            })
            .await,
            ErrorCode::InvalidTxnState,
        );
        // A second producer with the id fences the first.
        let (_, newer) = c.init_transactional_id("t", 10_000).await.unwrap();
        assert_eq!(newer, epoch + 1);
        rejected(c.add_partitions_to_txn(&add(TOPIC)).await, ErrorCode::ProducerFenced);
        // Nothing above reached the log; plain records still go in.
        assert_eq!(
            c.produce(TOPIC, 1, &plain(&["after"]), acks::ALL).await.unwrap(),
            Some(0),
            "nothing refused above reached the log"
        );
        assert_eq!(read(&addr, TOPIC, 1, isolation::READ_COMMITTED).await, vec!["after"]);
    });
    broker.stop();
}
