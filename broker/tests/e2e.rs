//! End-to-end runs of the real `corelog` binary on 127.0.0.1 and a port it
//! picks: durability across `kill -9`, requests that cross shards, many
//! connections, a slow consumer, and bad input of every kind.

use std::io::{Read, Write};
use std::time::Duration;

use net::client::Connection;
use net::codec::{self, ApiKey, FrameDecoder, PayloadBuilder};
use net::messages::{self, acks, ArchivedErrorResponse};
use net::{ErrorCode, NetError};
use storage::batch::RecordBatchBuilder;

mod common;
use common::*;

#[test]
fn acknowledged_records_survive_kill_9() {
    const PARTITIONS: u32 = 8;
    const RECORDS: u64 = 100_000;
    const PER_BATCH: u64 = 500;
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    let acknowledged = run(async move {
        let mut admin = Connection::connect(&addr).await.unwrap();
        admin.create_topic("durable", PARTITIONS, vec![]).await.unwrap();
        let shards: Vec<u16> = admin.metadata(None).await.unwrap().topics[0]
            .partitions
            .iter()
            .map(|p| p.shard)
            .collect();
        assert!(
            shards.contains(&0) && shards.contains(&1),
            "partitions spread over both shards: {shards:?}"
        );
        // Four connections, each producing to every partition: the kernel
        // spreads them over the shards, so most requests cross shards.
        let mut connections = Vec::new();
        for _ in 0..4 {
            connections.push(Connection::connect(&addr).await.unwrap());
        }
        let mut acknowledged = vec![0u64; PARTITIONS as usize];
        let per_partition = RECORDS / u64::from(PARTITIONS);
        let mut turn = 0;
        for start in (0..per_partition).step_by(PER_BATCH as usize) {
            for partition in 0..PARTITIONS {
                let frame = batch_of(partition, start..start + PER_BATCH);
                let connection = &mut connections[turn % 4];
                turn += 1;
                let base = connection
                    .produce("durable", partition, &frame, acks::ALL)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(base, start, "offsets are dense per partition");
                acknowledged[partition as usize] = start + PER_BATCH;
            }
        }
        acknowledged
    });
    assert_eq!(acknowledged.iter().sum::<u64>(), RECORDS);
    broker.kill9();

    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut connection = Connection::connect(&addr).await.unwrap();
        for partition in 0..PARTITIONS {
            let values = consume_all(&mut connection, "durable", partition).await;
            assert_eq!(
                values.len() as u64,
                acknowledged[partition as usize],
                "partition {partition}"
            );
            for (n, value) in values.iter().enumerate() {
                assert_eq!(value, &format!("{partition}:{n}"), "in order, none twice");
            }
        }
    });
    broker.stop();
}

/// `corelog ARGS... --broker addr`: its stdout, or its stderr as the error.
fn cli(addr: &str, args: &[&str], stdin: &str) -> Result<String, String> {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(args)
        .args(["--broker", addr])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the corelog binary runs");
    child.stdin.take().expect("piped").write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().expect("the CLI finishes");
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

/// The CLI changes a live topic on one node of two shards: configs
/// checked only, set, refused when bad; partitions added over the shards
/// and written; a partition's log start moved, not past its high
/// watermark; all of it kept through a restart.
#[test]
fn the_cli_changes_a_live_topic() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    cli(&addr, &["topic", "create", "t", "--partitions", "2"], "").unwrap();
    let lines: String = (0..100).map(|i| format!("k{i},v{i}\n")).collect();
    cli(&addr, &["produce", "t", "--key-separator", ","], &lines).unwrap();
    let out = cli(
        &addr,
        &[
            "topic",
            "alter-config",
            "t",
            "--set",
            "retention.ms=1000",
            "--validate-only",
        ],
        "",
    )
    .unwrap();
    assert!(out.contains("would change"), "{out}");
    let describe = || cli(&addr, &["topic", "describe", "t"], "").unwrap();
    assert!(!describe().contains("retention.ms"), "{}", describe());
    cli(
        &addr,
        &["topic", "alter-config", "t", "--set", "segment.bytes=65536"],
        "",
    )
    .unwrap();
    assert!(describe().contains("config segment.bytes=65536"), "{}", describe());
    let bad = cli(&addr, &["topic", "alter-config", "t", "--set", "colour=blue"], "").unwrap_err();
    assert!(bad.contains("InvalidConfig") && bad.contains("colour"), "{bad}");
    let internal = cli(
        &addr,
        &["topic", "alter-config", "__consumer_offsets", "--set", "retention.ms=1"],
        "",
    );
    assert!(internal.unwrap_err().contains("InvalidTopic"));

    cli(&addr, &["topic", "add-partitions", "t", "--count", "4"], "").unwrap();
    let described = describe();
    assert!(described.contains("partitions 4"), "{described}");
    let shards: std::collections::BTreeSet<&str> = described
        .lines()
        .filter_map(|l| l.split(" shard ").nth(1)?.split_whitespace().next())
        .collect();
    assert_eq!(shards.len(), 2, "the partitions spread over both shards: {described}");
    cli(&addr, &["produce", "t", "--key-separator", ","], &lines).unwrap();

    let out = cli(
        &addr,
        &["topic", "delete-records", "t", "--partition", "0", "--before", "3"],
        "",
    )
    .unwrap();
    assert!(out.contains("t/0 starts at offset 3"), "{out}");
    let past = cli(
        &addr,
        &["topic", "delete-records", "t", "--partition", "0", "--before", "100000"],
        "",
    );
    assert!(past.unwrap_err().contains("OffsetOutOfRange"));
    let missing = cli(
        &addr,
        &["topic", "delete-records", "t", "--partition", "9", "--before", "1"],
        "",
    );
    assert!(missing.unwrap_err().contains("no partition 9"));
    broker.stop();

    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    let described = cli(&addr, &["topic", "describe", "t"], "").unwrap();
    assert!(
        described.contains("partitions 4") && described.contains("config segment.bytes=65536"),
        "{described}"
    );
    assert!(
        described.contains("partition 0 ") && described.contains("log_start_offset 3"),
        "{described}"
    );
    broker.stop();
}

#[test]
fn topics_persist_and_shutdown_is_clean() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        let configs = vec![messages::TopicConfig {
            key: "retention.ms".into(),
            value: "3600000".into(),
        }];
        c.create_topic("kept", 3, configs).await.unwrap();
        c.create_topic("dropped", 2, vec![]).await.unwrap();
        c.produce("kept", 1, &batch_of(1, 0..10), acks::LEADER).await.unwrap();
        let again = c.create_topic("kept", 3, vec![]).await.unwrap_err();
        assert!(
            matches!(
                again,
                NetError::Rejected {
                    code: ErrorCode::TopicAlreadyExists,
                    ..
                }
            ),
            "{again}"
        );
        c.delete_topic("dropped").await.unwrap();
        let bad = c.create_topic("bad/name", 1, vec![]).await.unwrap_err();
        assert!(
            matches!(
                bad,
                NetError::Rejected {
                    code: ErrorCode::InvalidTopic,
                    ..
                }
            ),
            "{bad}"
        );
    });
    broker.stop();
    assert!(!dir.path().join("dropped-0").exists());
    let broker = Broker::start(dir.path(), 1);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        let metadata = c.metadata(None).await.unwrap();
        let names: Vec<&str> = metadata.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["__consumer_offsets", "__transaction_state", "kept"],
            "the internal topics are listed too"
        );
        let kept = &metadata.topics[2];
        assert_eq!(kept.partitions.len(), 3);
        assert!(
            kept.partitions.iter().all(|p| p.shard == 0),
            "moved to the one shard left"
        );
        assert_eq!(kept.partitions[1].high_watermark, 10);
        assert_eq!(kept.configs[0].key, "retention.ms");
        assert_eq!(consume_all(&mut c, "kept", 1).await.len(), 10);
    });
    broker.stop();
}

#[test]
fn many_connections_at_once() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut admin = Connection::connect(&addr).await.unwrap();
        admin.create_topic("busy", 4, vec![]).await.unwrap();
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let addr = addr.clone();
                glommio::spawn_local(async move {
                    let mut c = Connection::connect(&addr).await.unwrap();
                    let partition = i % 4;
                    c.produce("busy", partition, &batch_of(partition, 0..5), acks::LEADER)
                        .await
                        .unwrap();
                    c.fetch("busy", partition, 0, 4096, 0).await.unwrap().high_watermark
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await >= 5);
        }
        let total: usize = {
            let mut sum = 0;
            for p in 0..4 {
                sum += consume_all(&mut admin, "busy", p).await.len();
            }
            sum
        };
        assert_eq!(total, 200 * 5);
    });
}

#[test]
fn a_long_poll_waits_for_data_and_a_slow_consumer_holds_up_no_one() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut admin = Connection::connect(&addr).await.unwrap();
        admin.create_topic("poll", 2, vec![]).await.unwrap();
        for p in 0..2 {
            admin
                .produce("poll", p, &batch_of(p, 0..100), acks::LEADER)
                .await
                .unwrap();
        }
        // A long poll at the end of the log returns when data arrives, woken
        // by the append: on the owner shard, or on the other shard through
        // the owner (each partition is polled from several connections, which
        // land on both shards).
        for round in 0..3u64 {
            for p in 0..2 {
                let waiters: Vec<_> = (0..2)
                    .map(|_| {
                        let addr = addr.clone();
                        glommio::spawn_local(async move {
                            let mut c = Connection::connect(&addr).await.unwrap();
                            let started = std::time::Instant::now();
                            let fetched = c.fetch("poll", p, 100 + round, 1 << 20, 5_000).await.unwrap();
                            (fetched.batches().len(), started.elapsed())
                        })
                    })
                    .collect();
                glommio::timer::sleep(Duration::from_millis(200)).await;
                admin
                    .produce("poll", p, &batch_of(p, 100 + round..101 + round), acks::LEADER)
                    .await
                    .unwrap();
                for waiter in waiters {
                    let (bytes, waited) = waiter.await;
                    assert!(bytes > 0, "the long poll returned the new batch");
                    assert!(
                        waited >= Duration::from_millis(150) && waited < Duration::from_secs(4),
                        "{waited:?}"
                    );
                }
            }
        }
        // With nothing arriving, a long poll returns empty at its max wait.
        let mut c = Connection::connect(&addr).await.unwrap();
        let started = std::time::Instant::now();
        let fetched = c.fetch("poll", 1, 103, 1 << 20, 300).await.unwrap();
        assert_eq!(fetched.batches().len(), 0);
        assert!(
            started.elapsed() >= Duration::from_millis(290),
            "{:?}",
            started.elapsed()
        );
    });

    // A consumer that pipelines fetches and never reads its socket.
    let mut slow = std::net::TcpStream::connect(&broker.addr).unwrap();
    let fetch = messages::FetchRequest {
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: 1 << 20,
        isolation_level: messages::isolation::READ_UNCOMMITTED,
        topics: vec![messages::FetchTopic {
            name: "poll".into(),
            partitions: vec![messages::FetchPartition {
                partition: 1,
                offset: 0,
                max_bytes: 1 << 20,
            }],
        }],
    };
    let mut request = Vec::new();
    codec::encode_request(ApiKey::Fetch, 0, 9, &fetch, &PayloadBuilder::default(), &mut request).unwrap();
    slow.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    for _ in 0..2000 {
        if slow.write_all(&request).is_err() {
            break; // the broker stopped reading: backpressure reached the client
        }
    }
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        assert_eq!(
            consume_all(&mut c, "poll", 1).await.len(),
            103,
            "others are served meanwhile"
        );
    });
    drop(slow);
}

/// Sends raw bytes on a fresh connection and reads one response frame, if
/// one comes before the broker closes the connection.
fn exchange(stream: &mut std::net::TcpStream, bytes: &[u8]) -> Option<(u16, Vec<u8>)> {
    stream.write_all(bytes).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).ok()?;
    let mut frame = prefix.to_vec();
    frame.resize(4 + u32::from_le_bytes(prefix) as usize, 0);
    stream.read_exact(&mut frame[4..]).ok()?;
    let (response, _) = FrameDecoder::default().response(&frame).unwrap().unwrap();
    Some((response.api_key, response.archive.to_vec()))
}

fn error_code(archive: &[u8]) -> ErrorCode {
    let error: &ArchivedErrorResponse = codec::access(archive, "error").unwrap();
    ErrorCode::from_code(error.error.to_native())
}

#[test]
fn bad_input_gets_clear_errors_and_loses_nothing() {
    let dir = data_dir();
    let mut broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        c.create_topic("safe", 2, vec![]).await.unwrap();
        for p in 0..2 {
            c.produce("safe", p, &batch_of(p, 0..50), acks::ALL).await.unwrap();
        }
    });

    // A garbage body in a well-formed frame: an error response, and the
    // connection goes on serving.
    let mut stream = std::net::TcpStream::connect(&broker.addr).unwrap();
    let mut garbage = vec![28u8, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 16, 0, 0, 0];
    garbage.extend_from_slice(&[0xEE; 16]);
    let (key, archive) = exchange(&mut stream, &garbage).expect("a response to garbage");
    assert_eq!(key, codec::ERROR_RESPONSE_KEY);
    assert_eq!(error_code(&archive), ErrorCode::InvalidRequest);
    // An unknown api on the same connection: UNSUPPORTED_VERSION, still open.
    let mut unknown = Vec::new();
    let hello = messages::ApiVersionsRequest {
        client_name: "t".into(),
        client_version: "0".into(),
    };
    codec::encode_request(
        ApiKey::ApiVersions,
        0,
        3,
        &hello,
        &PayloadBuilder::default(),
        &mut unknown,
    )
    .unwrap();
    unknown[4] = 200;
    let (key, archive) = exchange(&mut stream, &unknown).expect("a response to an unknown api");
    assert_eq!(key, codec::ERROR_RESPONSE_KEY);
    assert_eq!(error_code(&archive), ErrorCode::UnsupportedVersion);
    unknown[4] = ApiKey::ApiVersions as u8;
    let (key, _) = exchange(&mut stream, &unknown).expect("the connection still serves");
    assert_eq!(key, ApiKey::ApiVersions as u16);

    // An oversized frame: an error, then the broker closes the connection.
    let mut stream = std::net::TcpStream::connect(&broker.addr).unwrap();
    let (key, archive) = exchange(&mut stream, &u32::MAX.to_le_bytes()).expect("an error for an oversized frame");
    assert_eq!(key, codec::ERROR_RESPONSE_KEY);
    assert_eq!(error_code(&archive), ErrorCode::InvalidRequest);
    let mut rest = Vec::new();
    assert_eq!(stream.read_to_end(&mut rest).unwrap_or(0), 0, "closed");

    // A truncated frame, then the client vanishes.
    let mut stream = std::net::TcpStream::connect(&broker.addr).unwrap();
    stream.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(stream);

    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        // Unknown topic and partition.
        let err = c
            .produce("nope", 0, &batch_of(0, 0..1), acks::LEADER)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                NetError::Rejected {
                    code: ErrorCode::UnknownTopicOrPartition,
                    ..
                }
            ),
            "{err}"
        );
        let err = c
            .produce("safe", 7, &batch_of(7, 0..1), acks::LEADER)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                NetError::Rejected {
                    code: ErrorCode::UnknownTopicOrPartition,
                    ..
                }
            ),
            "{err}"
        );
        // A batch whose crc does not match, to a partition on each shard.
        for p in 0..2 {
            let mut bad = batch_of(p, 0..3);
            let n = bad.len();
            bad[n / 2] ^= 0x10;
            let err = c.produce("safe", p, &bad, acks::ALL).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    NetError::Rejected {
                        code: ErrorCode::CorruptMessage,
                        ..
                    }
                ),
                "{err}"
            );
            // Bytes that are not whole batch frames at all.
            let err = c.produce("safe", p, &[1, 2, 3], acks::ALL).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    NetError::Rejected {
                        code: ErrorCode::CorruptMessage,
                        ..
                    }
                ),
                "{err}"
            );
        }
        // A record over the size limit.
        let mut builder = RecordBatchBuilder::new();
        builder.push(0, None, Some(&vec![0u8; 2 << 20]), vec![]);
        let err = c.produce("safe", 0, &builder.build(), acks::ALL).await.unwrap_err();
        assert!(
            matches!(
                err,
                NetError::Rejected {
                    code: ErrorCode::MessageTooLarge,
                    ..
                }
            ),
            "{err}"
        );
        // A fetch past the log end.
        let err = c.fetch("safe", 0, 999, 1024, 0).await.err().expect("out of range");
        assert!(
            matches!(
                err,
                NetError::Rejected {
                    code: ErrorCode::OffsetOutOfRange,
                    ..
                }
            ),
            "{err}"
        );
        // Nothing stored was lost or changed.
        for p in 0..2 {
            let values = consume_all(&mut c, "safe", p).await;
            assert_eq!(values.len(), 50);
            assert_eq!(values[49], format!("{p}:49"));
        }
    });
    broker.assert_alive();
    broker.stop();
}

#[test]
fn producer_and_consumer_round_trip() {
    use net::consumer::Consumer;
    use net::producer::{Producer, ProducerConfig};

    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut admin = Connection::connect(&addr).await.unwrap();
        admin.create_topic("events", 6, vec![]).await.unwrap();
        let producer = Producer::connect(
            &addr,
            ProducerConfig {
                batch_bytes: 16 << 10,
                linger: Duration::from_millis(5),
                ..ProducerConfig::default()
            },
        )
        .await
        .unwrap();
        let mut futures = Vec::new();
        for i in 0..5000u32 {
            let key = format!("user-{}", i % 37);
            let value = format!("event-{i}");
            let future = producer
                .send(
                    "events",
                    Some(key.as_bytes()),
                    Some(value.as_bytes()),
                    vec![],
                    1_000 + i64::from(i),
                )
                .await
                .unwrap();
            futures.push((key, value, future));
        }
        producer.flush().await;
        let mut stored = std::collections::HashMap::new();
        for (key, value, future) in futures {
            let offset = future.await.expect("resolved").expect("stored");
            let partition = net::client::partition_for_key(key.as_bytes(), 6);
            assert!(
                stored.insert((partition, offset), (key, value)).is_none(),
                "one offset per record"
            );
        }
        let unknown = producer.send("no-such-topic", None, Some(b"x"), vec![], 0).await;
        assert!(matches!(
            unknown,
            Err(NetError::Rejected {
                code: ErrorCode::UnknownTopicOrPartition,
                ..
            })
        ));

        let mut consumer = Consumer::connect(&addr, "events").await.unwrap();
        consumer.set_max_wait_ms(10);
        consumer.assign_all().await.unwrap();
        let mut seen = 0;
        let mut last = std::collections::HashMap::new();
        while seen < 5000 {
            for record in consumer.poll().await.unwrap() {
                let (key, value) = &stored[&(record.partition, record.offset)];
                assert_eq!(record.key.as_deref(), Some(key.as_bytes()));
                assert_eq!(record.value.as_deref(), Some(value.as_bytes()));
                let previous = last.insert(record.partition, record.offset);
                assert!(previous.is_none_or(|p| p < record.offset), "in order per partition");
                seen += 1;
            }
        }
        assert_eq!(seen, 5000);
        // Seek back and read a partition's first record again.
        consumer.seek(0, 0).await.unwrap();
        let again = loop {
            let records = consumer.poll().await.unwrap();
            if let Some(first) = records.into_iter().find(|r| r.partition == 0) {
                break first;
            }
        };
        assert_eq!(again.offset, 0);
    });
    // The producer sent each partition's batches to its owning shard, and
    // the consumer fetched each from it (shard ports): none crossed cores.
    let shards = broker.stop_with_stats();
    let total = |key: &str| shards.iter().map(|s| s[key]).sum::<u64>();
    assert_eq!((total("produce_hops"), total("fetch_hops")), (0, 0), "{shards:?}");
    assert!(
        shards.iter().all(|s| s["produce_local"] > 0 && s["fetch_local"] > 0),
        "{shards:?}"
    );
}

#[test]
fn many_requests_in_flight_on_one_connection() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut admin = Connection::connect(&addr).await.unwrap();
        admin.create_topic("pipelined", 4, vec![]).await.unwrap();
    });
    // 100 produce requests written back to back before any response is
    // read; every one is answered, each with its own correlation id.
    let mut stream = std::net::TcpStream::connect(&broker.addr).unwrap();
    let mut requests = Vec::new();
    for id in 0..100u32 {
        let partition = id % 4;
        let frame = batch_of(partition, 0..3);
        let mut payload = PayloadBuilder::default();
        let range = payload.push(&frame).unwrap();
        let request = messages::ProduceRequest {
            acks: acks::ALL,
            timeout_ms: 10_000,
            topics: vec![messages::ProduceTopic {
                name: "pipelined".into(),
                partitions: vec![messages::ProducePartition {
                    partition,
                    batches: range,
                }],
            }],
        };
        codec::encode_request(ApiKey::Produce, 0, 1000 + id, &request, &payload, &mut requests).unwrap();
    }
    stream.write_all(&requests).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answered = std::collections::BTreeSet::new();
    let mut buffer = Vec::new();
    while answered.len() < 100 {
        let mut chunk = [0u8; 4096];
        let n = match stream.read(&mut chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => other.unwrap(),
        };
        assert!(n > 0, "the broker closed the connection");
        buffer.extend_from_slice(&chunk[..n]);
        while let Some((frame, used)) = FrameDecoder::default().response(&buffer).unwrap() {
            assert_eq!(frame.api_key, ApiKey::Produce as u16);
            let produced: &messages::ArchivedProduceResponse = codec::access(frame.archive, "produce").unwrap();
            assert_eq!(produced.topics[0].partitions[0].error.to_native(), 0);
            assert!(answered.insert(frame.correlation_id), "one answer per request");
            buffer.drain(..used);
        }
    }
    assert_eq!(answered, (1000..1100).collect());
}

#[test]
fn a_pipelined_connection_keeps_a_window_of_requests_in_flight() {
    use net::pipelined::PipelinedConnection;

    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut admin = Connection::connect(&addr).await.unwrap();
        admin.create_topic("window", 2, vec![]).await.unwrap();
        let connection = PipelinedConnection::connect(&addr, 16).await.unwrap();
        let tasks: Vec<_> = (0..300u32)
            .map(|i| {
                let connection = connection.clone();
                glommio::spawn_local(async move {
                    let partition = i % 2;
                    let base = connection
                        .produce("window", partition, &batch_of(partition, 0..2), acks::LEADER)
                        .await
                        .unwrap();
                    (partition, base)
                })
            })
            .collect();
        let mut offsets = std::collections::BTreeSet::new();
        for task in tasks {
            assert!(offsets.insert(task.await), "every batch its own offsets");
        }
        assert_eq!(offsets.len(), 300);
        let err = connection
            .produce("missing", 0, &batch_of(0, 0..1), acks::LEADER)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                NetError::Rejected {
                    code: ErrorCode::UnknownTopicOrPartition,
                    ..
                }
            ),
            "{err}"
        );
        for p in 0..2 {
            assert_eq!(consume_all(&mut admin, "window", p).await.len(), 300);
        }
    });
}

/// A consumer catching up on what was just written reads it from the shard's
/// batch cache, not from disk; with the cache off, the same reads go to the
/// disk, and return the same records.
#[test]
fn a_consumer_catching_up_reads_from_the_batch_cache() {
    use net::consumer::Consumer;
    use net::producer::{Producer, ProducerConfig};

    let mut counters = Vec::new();
    for cache in ["read_cache_bytes = 67108864", "read_cache_bytes = 0"] {
        let dir = data_dir();
        let broker = Broker::start_with_config(dir.path(), 1, cache);
        let addr = broker.addr.clone();
        run(async move {
            let mut admin = Connection::connect(&addr).await.unwrap();
            admin.create_topic("recent", 1, vec![]).await.unwrap();
            let producer = Producer::connect(
                &addr,
                ProducerConfig {
                    batch_bytes: 64 << 10,
                    linger: Duration::from_millis(5),
                    ..ProducerConfig::default()
                },
            )
            .await
            .unwrap();
            // 10 MB: several 2 MiB write buffers written and sealed.
            let mut futures = Vec::new();
            for i in 0..10_000u32 {
                let mut value = format!("record-{i}-").into_bytes();
                value.resize(1000, b'.');
                futures.push(producer.send("recent", None, Some(&value), vec![], 0).await.unwrap());
            }
            producer.flush().await;
            for future in futures {
                future.await.expect("resolved").expect("stored");
            }
            let mut consumer = Consumer::connect(&addr, "recent").await.unwrap();
            consumer.set_max_wait_ms(10);
            consumer.assign_all().await.unwrap();
            let mut seen = 0u32;
            while seen < 10_000 {
                for record in consumer.poll().await.unwrap() {
                    assert_eq!(record.offset, u64::from(seen));
                    let value = record.value.expect("a value");
                    assert!(value.starts_with(format!("record-{seen}-").as_bytes()));
                    seen += 1;
                }
            }
        });
        counters.push(broker.stop_with_stats().remove(0));
    }
    let (cached, uncached) = (&counters[0], &counters[1]);
    assert!(cached["cache_hits"] > 0, "{cached:?}");
    assert_eq!(cached["disk_read_bytes"] + cached["read_ahead_bytes"], 0, "{cached:?}");
    assert!(cached["cache_written_bytes"] >= 6 << 20, "{cached:?}");
    assert_eq!(uncached["cache_hits"], 0, "{uncached:?}");
    assert!(
        uncached["read_ahead_in_flight_max"] >= 2,
        "reads ahead in flight together: {uncached:?}"
    );
    assert!(
        uncached["disk_read_bytes"] + uncached["read_ahead_bytes"] >= 6 << 20,
        "{uncached:?}"
    );
}

/// A fetch of several partitions keeps to its limits as Kafka's does: the
/// first partition with data may pass them by one batch, so a consumer
/// always progresses; the partitions after it return only batches that fit
/// what is left of the response (and of their own max_bytes), and none once
/// the response is full, with their watermarks.
#[test]
fn a_fetch_of_several_partitions_keeps_to_its_max_bytes() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        c.create_topic("sized", 3, vec![]).await.unwrap();
        // Ten batches of 100 records a partition, all of one size.
        let mut batch_bytes = 0;
        for p in 0..3 {
            for b in 0..10u64 {
                let mut builder = RecordBatchBuilder::new();
                for n in b * 100..(b + 1) * 100 {
                    builder.push(0, None, Some(format!("{p}:{n:06}").as_bytes()), vec![]);
                }
                let batch = builder.build();
                assert!(batch_bytes == 0 || batch.len() == batch_bytes);
                batch_bytes = batch.len();
                c.produce("sized", p, &batch, acks::ALL).await.unwrap();
            }
        }
        let fetch = |max_bytes: u32, partition_max: [u32; 3]| messages::FetchRequest {
            max_wait_ms: 0,
            min_bytes: 1,
            max_bytes,
            isolation_level: messages::isolation::READ_UNCOMMITTED,
            topics: vec![messages::FetchTopic {
                name: "sized".into(),
                partitions: (0..3)
                    .map(|p| messages::FetchPartition {
                        partition: p,
                        offset: 0,
                        max_bytes: partition_max[p as usize],
                    })
                    .collect(),
            }],
        };
        // (bytes, high watermark) of each partition in a fetch's response.
        let mut sizes = async |request: messages::FetchRequest| -> Vec<(u32, u64)> {
            let response = c
                .request(ApiKey::Fetch, &request, &PayloadBuilder::default())
                .await
                .unwrap();
            let fetched: &messages::ArchivedFetchResponse = response.message("Fetch response").unwrap();
            fetched.topics[0]
                .partitions
                .iter()
                .map(|p| {
                    assert_eq!(p.error.to_native(), 0);
                    (p.records.len.to_native(), p.high_watermark.to_native())
                })
                .collect()
        };
        let whole = |bytes: u32| bytes as usize % batch_bytes == 0;

        // Room for about three batches in all: the first partition takes two
        // (its own limit), the second what fits of the rest, the third none.
        let limit = (3 * batch_bytes + batch_bytes / 2) as u32;
        let got = sizes(fetch(limit, [2 * batch_bytes as u32 + 10, 1 << 20, 1 << 20])).await;
        assert_eq!(got[0].0 as usize, 2 * batch_bytes, "{got:?}");
        assert_eq!(got[1].0 as usize, batch_bytes, "{got:?}");
        assert_eq!(got[2].0, 0, "{got:?}");
        assert!(got.iter().all(|(bytes, hw)| whole(*bytes) && *hw == 1000), "{got:?}");
        assert!(got.iter().map(|(bytes, _)| *bytes).sum::<u32>() <= limit);

        // A limit smaller than one batch: the first partition still gets
        // one, the others nothing (and no read), but their watermarks.
        let got = sizes(fetch(100, [1 << 20; 3])).await;
        assert_eq!(got[0].0 as usize, batch_bytes, "{got:?}");
        assert_eq!((got[1].0, got[2].0), (0, 0), "{got:?}");
        assert!(got.iter().all(|(_, hw)| *hw == 1000), "{got:?}");

        // A partition's own limit below one batch, after the first: nothing.
        let got = sizes(fetch(1 << 20, [1 << 20, 100, 1 << 20])).await;
        assert_eq!(got[0].0 as usize, 10 * batch_bytes, "{got:?}");
        assert_eq!(got[1].0, 0, "{got:?}");
        assert_eq!(got[2].0 as usize, 10 * batch_bytes, "{got:?}");
    });
    broker.stop();
}

/// Retention runs on its own: a topic whose `retention.bytes` keeps about
/// two segments loses its oldest whole segments at the next check, its log
/// start offset moves up, and a consumer from the earliest offset reads
/// every record from there on, in order, to the end.
#[test]
fn retention_deletes_the_oldest_segments_at_its_check() {
    const SEGMENT: u64 = 64 << 10;
    let dir = data_dir();
    let broker = Broker::start_with_config(dir.path(), 1, "log_retention_check_interval_ms = 200\n");
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        let configs = [
            ("segment.bytes", SEGMENT),
            ("segment.preallocate.bytes", SEGMENT),
            ("retention.bytes", 2 * SEGMENT),
        ]
        .into_iter()
        .map(|(key, value)| messages::TopicConfig {
            key: key.into(),
            value: value.to_string(),
        })
        .collect();
        c.create_topic("kept", 1, configs).await.unwrap();
        // 2,000 records of about 200 bytes: some six segments.
        for chunk in 0..20u64 {
            let mut builder = RecordBatchBuilder::new();
            for n in chunk * 100..(chunk + 1) * 100 {
                builder.push(
                    1_700_000_000_000,
                    None,
                    Some(format!("{n:05}{}", "x".repeat(190)).as_bytes()),
                    vec![],
                );
            }
            c.produce("kept", 0, &builder.build(), acks::ALL).await.unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let start = loop {
            let start = c
                .list_offset("kept", 0, messages::EARLIEST_TIMESTAMP)
                .await
                .unwrap()
                .unwrap();
            if start > 0 {
                break start;
            }
            assert!(std::time::Instant::now() < deadline, "retention never ran");
            glommio::timer::sleep(Duration::from_millis(100)).await;
        };
        let values = consume_all(&mut c, "kept", 0).await;
        let first: u64 = values[0][..5].parse().unwrap();
        assert_eq!(first, start, "reading starts at the log start offset");
        let expected: Vec<u64> = (start..2000).collect();
        let read: Vec<u64> = values.iter().map(|v| v[..5].parse().unwrap()).collect();
        assert_eq!(read, expected, "every record from the log start on, in order");
        assert!(start >= 1000, "about two segments of six are kept, from {start}");
    });
    broker.stop();
}

/// The requests between nodes and the admin verbs, sent to one node with
/// bad or pointless arguments, get clear errors and leave the broker up: a
/// transaction marker of no known kind, a leadership transfer on a
/// partition of one replica or of no topic; FindCoordinator names an
/// address a group's requests are served at.
#[test]
fn node_to_node_requests_with_bad_arguments_are_refused_by_name() {
    let dir = data_dir();
    let mut broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        c.create_topic("solo", 1, vec![]).await.unwrap();
        let marker = messages::WriteTxnMarkersRequest {
            topic: "solo".into(),
            partition: 0,
            producer_id: 1,
            producer_epoch: 0,
            marker: 9,
        };
        match c.write_txn_markers(&marker).await {
            Err(NetError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::InvalidRequest),
            other => panic!("a marker of kind 9 was taken: {other:?}"),
        }
        for (topic, wanted) in [
            ("solo", ErrorCode::InvalidRequest),
            ("nowhere", ErrorCode::UnknownTopicOrPartition),
        ] {
            let transfer = messages::TransferLeaderRequest {
                topic: topic.into(),
                partition: 0,
                to: 1,
                forwarded: false,
            };
            match c.transfer_leader(&transfer).await {
                Err(NetError::Rejected { code, message }) => assert_eq!(code, wanted, "{message}"),
                other => panic!("a transfer on {topic} was taken: {other:?}"),
            }
        }
        let at = c.find_coordinator("some-group", false).await.unwrap();
        let mut coordinator = Connection::connect(&at).await.unwrap();
        assert!(coordinator.fetch_offsets("some-group", None).await.unwrap().is_empty());
    });
    broker.assert_alive();
    broker.stop();
}

/// `corelog tune --check` on this machine: a line for every check, each
/// with a verdict, and nothing changed; `--apply` on a tree of procfs and
/// sysfs files sets what it can and says so.
#[test]
fn tune_checks_this_machine_and_applies_to_a_tree_of_its_files() {
    let dir = data_dir();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(["tune", "--check", "--json", "--cpus", "0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("the corelog binary runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let checks: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON object a line"))
        .collect();
    for name in [
        "cpu frequency governor",
        "shards on SMT siblings",
        "shard cores isolated",
        "fs.aio-max-nr",
        "memlock limit",
        "transparent huge pages",
        "clock source",
        "data disk scheduler",
        "data disk queue depth",
        "data filesystem",
        "data mount discard",
        "data mount atime",
        "interrupts on shard cores",
    ] {
        let check = checks
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {checks:?}"));
        assert!(
            ["good", "change", "unknown"].contains(&check["verdict"].as_str().unwrap()),
            "{check}"
        );
    }

    let root = data_dir();
    let aio = root.path().join("proc/sys/fs/aio-max-nr");
    std::fs::create_dir_all(aio.parent().unwrap()).unwrap();
    std::fs::write(&aio, "65536\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(["tune", "--apply", "--cpus", "0", "--root"])
        .arg(root.path())
        .output()
        .expect("the corelog binary runs");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(said.contains("fs.aio-max-nr: 65536 -> 1048576"), "{said}");
    assert_eq!(std::fs::read_to_string(&aio).unwrap(), "1048576");
}
