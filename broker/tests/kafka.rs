//! The Kafka listener against real Kafka clients: kcat (librdkafka) and the
//! Python clients kafka-python, confluent-kafka (librdkafka) and aiokafka, which
//! `.ci/run` installs. Without them a test says so and passes, except
//! under `CI=true`, where they must be there.

use std::io::Write;
use std::process::{Command, Stdio};

use net::client::Connection;

mod common;
use common::*;

fn python_clients() -> bool {
    available(
        "the Python Kafka clients",
        Command::new("python3").args(["-c", "import kafka, confluent_kafka, aiokafka"]),
    )
}

fn kcat() -> bool {
    available("kcat", Command::new("kcat").arg("-V"))
}

fn python(scenario: &str, bootstrap: &str) {
    python_with(scenario, bootstrap, &[]);
}

fn python_with(scenario: &str, bootstrap: &str, args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka_clients/clients.py");
    let output = Command::new("python3")
        .args([script, scenario, bootstrap])
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("ok"),
        "{scenario} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn kcat_run(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("kcat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat runs");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin.as_bytes())
        .expect("kcat reads its input");
    let output = child.wait_with_output().expect("kcat ends");
    assert!(
        output.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

#[test]
fn kcat_produces_and_consumes_keys_values_and_headers() {
    if !kcat() {
        return;
    }
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let addr = broker.addr.clone();
    run(async move {
        let mut c = Connection::connect(&addr).await.unwrap();
        c.create_topic("lines", 2, vec![]).await.unwrap();
    });
    let bootstrap = broker.kafka_addr.clone();
    for (partition, acks) in [("0", "1"), ("1", "all"), ("0", "0")] {
        let input: String = (0..5).map(|i| format!("k{partition}{acks}{i}:v{i}\n")).collect();
        kcat_run(
            &[
                "-b",
                &bootstrap,
                "-P",
                "-t",
                "lines",
                "-p",
                partition,
                "-K",
                ":",
                "-H",
                "origin=kcat",
                "-X",
                &format!("acks={acks}"),
            ],
            &input,
        );
    }
    let consumed = kcat_run(
        &[
            "-b",
            &bootstrap,
            "-C",
            "-t",
            "lines",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%p %o %k %s %h\n",
        ],
        "",
    );
    let mut lines: Vec<&str> = consumed.lines().collect();
    lines.sort();
    let mut expected = Vec::new();
    for (partition, acks, base) in [("0", "1", 0), ("0", "0", 5), ("1", "all", 0)] {
        for i in 0..5 {
            expected.push(format!(
                "{partition} {} k{partition}{acks}{i} v{i} origin=kcat",
                base + i
            ));
        }
    }
    expected.sort();
    assert_eq!(lines, expected);
    // Watermarks through the Kafka listener: kcat's metadata and query.
    let listed = kcat_run(&["-b", &bootstrap, "-L", "-t", "lines"], "");
    assert!(listed.contains("topic \"lines\" with 2 partitions"), "{listed}");
    let end = kcat_run(&["-b", &bootstrap, "-Q", "-t", "lines:0:-1"], "");
    assert!(
        end.split_whitespace().collect::<Vec<_>>().ends_with(&["offset", "10"]),
        "{end}"
    );
    broker.stop();
}

#[test]
fn kafka_python_admin_produce_and_fetch_round_trip_exactly() {
    if !python_clients() {
        return;
    }
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    python("kafka-python-roundtrip", &broker.kafka_addr);
    broker.stop();
}

/// kafka-python's admin client describes the cluster (every shard a
/// broker, the controller among them) and the log directories (each
/// partition once over all brokers, its bytes growing with what was
/// produced).
#[test]
fn kafka_python_describes_the_cluster_and_its_log_dirs() {
    if !python_clients() {
        return;
    }
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    python_with("kafka-python-cluster-admin", &broker.kafka_addr, &["2"]);
    broker.stop();
}

/// kafka-python's admin client deletes a group's commits (OffsetDelete):
/// of a topic no member consumes, durably (still gone after a restart);
/// not of the topic an active member consumes (GROUP_SUBSCRIBED_TO_TOPIC);
/// an unknown group's: GROUP_ID_NOT_FOUND.
#[test]
fn kafka_python_deletes_a_groups_offsets_of_topics_it_does_not_consume() {
    if !python_clients() {
        return;
    }
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    python("kafka-python-offset-delete", &broker.kafka_addr);
    broker.stop();
    let broker = Broker::start(dir.path(), 2);
    python("kafka-python-offsets-after-restart", &broker.kafka_addr);
    broker.stop();
}

/// kafka-python's admin client changes a live topic (configs set,
/// deleted and replaced; partitions added; records deleted), each in
/// force at once, refused with Kafka's codes when bad, and all kept
/// through a restart.
#[test]
fn kafka_python_changes_a_live_topics_configs_partitions_and_log_start() {
    if !python_clients() {
        return;
    }
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    python("kafka-python-topic-admin", &broker.kafka_addr);
    broker.stop();
    let broker = Broker::start(dir.path(), 2);
    python("kafka-python-topic-admin-after-restart", &broker.kafka_addr);
    broker.stop();
}

/// kafka-python's admin client lists transactions and describes a
/// partition's producers: an open transaction, its producer and where
/// it began, then its commit.
#[test]
fn kafka_python_lists_transactions_and_describes_producers() {
    if !python_clients() {
        return;
    }
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    python("kafka-python-producers-and-transactions", &broker.kafka_addr);
    broker.stop();
}

/// A tool reading `__consumer_offsets` directly (as Burrow does) decodes
/// corelog's commits and group metadata with the schemas of Kafka's group
/// coordinator.
#[test]
fn the_offsets_topic_holds_kafkas_own_record_format() {
    if !python_clients() {
        return;
    }
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    python("kafka-python-reads-the-offsets-topic", &broker.kafka_addr);
    broker.stop();
}

/// `corelog ARGS... --broker addr`: its stdout, or its stderr as the error.
fn corelog(addr: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(args)
        .args(["--broker", addr])
        .output()
        .expect("the corelog binary runs");
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

/// The CLI's views of what Kafka clients left: a transaction listed and
/// described, its partition's producers, the node's data directory with
/// the partition's bytes; and a group's commits of a topic deleted (an
/// unknown group refused).
#[test]
fn the_cli_shows_transactions_producers_and_log_dirs_and_deletes_group_offsets() {
    if !python_clients() {
        return;
    }
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    python("open-transaction-and-commit", &broker.kafka_addr);
    let addr = &broker.addr;
    let listed = corelog(addr, &["transactions", "list"]).unwrap();
    assert!(
        listed.lines().any(|l| l.starts_with("cli\t") && l.ends_with("Ongoing")),
        "{listed}"
    );
    let committed = corelog(addr, &["transactions", "list", "--state", "CompleteCommit"]).unwrap();
    assert!(!committed.contains("cli\t"), "{committed}");
    let described = corelog(addr, &["transactions", "describe", "cli"]).unwrap();
    assert!(
        described.contains("state Ongoing") && described.contains("partition cli-txn/0"),
        "{described}"
    );
    assert!(corelog(addr, &["transactions", "describe", "nobody"]).is_err());
    let producers = corelog(addr, &["topic", "producers", "cli-txn", "--partition", "0"]).unwrap();
    assert!(
        producers.contains("last_sequence 0 transaction_start_offset 0"),
        "{producers}"
    );
    let dirs = corelog(addr, &["log-dirs"]).unwrap();
    let total: i64 = dirs
        .split_whitespace()
        .skip_while(|w| *w != "total_bytes")
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(total > 0, "{dirs}");
    let bytes: u64 = dirs
        .lines()
        .find(|l| l.trim_start().starts_with("cli-txn/0 "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("cli-txn/0 among the partitions: {dirs}"));
    assert!(bytes > 0, "{dirs}");
    let deleted = corelog(addr, &["group", "delete-offsets", "cli-group", "--topic", "cli-txn"]).unwrap();
    assert!(deleted.contains("cli-txn/0: deleted"), "{deleted}");
    let unknown = corelog(addr, &["group", "delete-offsets", "nobody", "--topic", "cli-txn"]);
    assert!(unknown.unwrap_err().contains("GroupIdNotFound"));
    broker.stop();
}

/// A compacted topic (cleanup.policy=compact at creation): 100,000
/// updates of 1,000 keys from librdkafka come down, by the shard's log
/// cleaner, to about one record per key; a consumer from the beginning
/// sees each key's last value, in offset order; a record without a key is
/// refused with INVALID_RECORD. The cleaner's metrics count what it did,
/// and a restart keeps the cleaned log.
#[test]
fn a_compacted_topic_keeps_each_keys_last_value() {
    if !python_clients() {
        return;
    }
    let dir = data_dir();
    let config = "log_cleaner_backoff_ms = 200\n";
    let broker = Broker::start_with_config(dir.path(), 2, config);
    python("compacted-topic", &broker.kafka_addr);
    let (_, text) = common::get(&broker.metrics_addr, "/metrics");
    let removed: f64 = text
        .lines()
        .filter(|l| l.starts_with("corelog_log_cleaner_removed_records"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(removed > 90_000.0, "the cleaner dropped most updates: {removed}");
    broker.stop();
    let position = std::fs::read_to_string(dir.path().join("table-0").join("cleaner-offset"))
        .expect("the cleaner's position is kept in the partition's directory");
    assert!(position.trim().parse::<u64>().unwrap() > 90_000, "{position}");
    let broker = Broker::start_with_config(dir.path(), 2, config);
    let out = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(["log-dirs", "--broker", &broker.addr])
        .output()
        .unwrap();
    let dirs = String::from_utf8_lossy(&out.stdout).into_owned();
    let bytes: u64 = dirs
        .lines()
        .find(|l| l.trim_start().starts_with("table/0 "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("table/0 among the partitions: {dirs}"));
    assert!(
        bytes < 1 << 20,
        "100,000 updates in {bytes} bytes after cleaning: {dirs}"
    );
    broker.stop();
}

/// Each shard is a Kafka broker of its own (`shard_ports`, on by
/// default): unchanged librdkafka and kafka-python clients send every
/// partition's produce and fetch to the core that owns it, which the
/// shards' counters show; with the switch off the node is one broker and
/// the same load crosses cores.
#[test]
fn shard_aware_kafka_clients_send_each_partition_to_its_owner() {
    if !python_clients() {
        return;
    }
    let sum = |shards: &[std::collections::BTreeMap<String, u64>], key: &str| -> u64 {
        shards
            .iter()
            .map(|s| s.get(key).copied().expect("the counter is printed"))
            .sum()
    };
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    python_with("shard-aware", &broker.kafka_addr, &["2"]);
    let shards = broker.stop_with_stats();
    assert_eq!(shards.len(), 2);
    assert_eq!(sum(&shards, "produce_hops"), 0, "no produce crossed shards: {shards:?}");
    assert_eq!(sum(&shards, "fetch_hops"), 0, "no fetch crossed shards: {shards:?}");
    assert!(
        sum(&shards, "produce_local") >= 16,
        "both clients produced to all 8 partitions: {shards:?}"
    );
    assert!(
        shards.iter().all(|s| s["produce_local"] > 0),
        "both shards served produces: {shards:?}"
    );

    let dir = data_dir();
    let broker = Broker::start_with_config(dir.path(), 2, "shard_ports = false\n");
    python_with("shard-aware", &broker.kafka_addr, &["1"]);
    let shards = broker.stop_with_stats();
    assert!(
        sum(&shards, "produce_hops") > 0,
        "one broker for two shards: produces hop: {shards:?}"
    );
}

#[test]
fn timestamps_lookups_by_time_and_validate_only_topic_creation() {
    if !python_clients() {
        return;
    }
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    python("kafka-python-times", &broker.kafka_addr);
    broker.stop();
}

#[test]
fn aiokafka_produces_and_a_group_resumes_from_its_commits() {
    if !python_clients() {
        return;
    }
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    python("aiokafka-roundtrip", &broker.kafka_addr);
    broker.stop();
}

#[test]
fn a_librdkafka_group_shares_partitions_and_resumes_from_commits() {
    if !python_clients() {
        return;
    }
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    python("confluent-groups", &broker.kafka_addr);
    broker.stop();
}

#[test]
fn an_idempotent_librdkafka_producer_is_seen_exactly_once() {
    if !python_clients() {
        return;
    }
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    python("confluent-idempotent", &broker.kafka_addr);
    broker.stop();
}

#[test]
fn librdkafka_transactions_are_read_committed_and_commit_offsets() {
    if !python_clients() {
        return;
    }
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    python("confluent-transactions", &broker.kafka_addr);
    broker.stop();
}

#[test]
fn batches_compressed_with_every_codec_are_stored_and_served() {
    if !python_clients() {
        return;
    }
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 1);
    python("confluent-compression", &broker.kafka_addr);
    broker.stop();
}

mod raw {
    //! Bad input on the Kafka listener, over a raw socket.
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use bytes::{Bytes, BytesMut};
    use net::kafka::kafka_protocol::messages::{
        ApiKey, ApiVersionsResponse, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader,
    };
    use net::kafka::kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    use super::common::*;

    fn send(stream: &mut TcpStream, api: ApiKey, version: i16, body: &impl Encodable, header_version: i16) {
        let mut out = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("raw")))
            .encode(&mut out, header_version)
            .unwrap();
        body.encode(&mut out, version.min(12)).unwrap();
        let mut frame = (out.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&out);
        stream.write_all(&frame).unwrap();
    }

    fn send_raw(stream: &mut TcpStream, api_key: i16, version: i16, header_version: i16, body: &[u8]) {
        let mut out = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api_key)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("raw")))
            .encode(&mut out, header_version)
            .unwrap();
        out.extend_from_slice(body);
        let mut frame = (out.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&out);
        stream.write_all(&frame).unwrap();
    }

    fn receive(stream: &mut TcpStream) -> Option<Bytes> {
        let mut length = [0u8; 4];
        stream.read_exact(&mut length).ok()?;
        let mut body = vec![0u8; i32::from_be_bytes(length) as usize];
        stream.read_exact(&mut body).ok()?;
        Some(Bytes::from(body))
    }

    fn closed(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(stream.read(&mut byte), Ok(0) | Err(_))
    }

    #[test]
    fn bad_kafka_requests_get_kafkas_errors_and_the_broker_stays_up() {
        let dir = data_dir();
        let mut broker = Broker::start(dir.path(), 2);
        let kafka_addr = broker.kafka_addr.clone();
        let connect = || {
            let s = TcpStream::connect(&kafka_addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        };
        // An ApiVersions of a version corelog does not know: answered in v0
        // with UNSUPPORTED_VERSION and the versions it has; the connection
        // stays for the client's retry.
        let mut stream = connect();
        send(&mut stream, ApiKey::ApiVersions, 99, &MetadataRequest::default(), 2);
        let mut response = receive(&mut stream).expect("an answer");
        let header = ResponseHeader::decode(&mut response, 0).unwrap();
        assert_eq!(header.correlation_id, 7);
        let versions = ApiVersionsResponse::decode(&mut response, 0).unwrap();
        assert_eq!(versions.error_code, 35);
        assert!(versions.api_keys.iter().any(|k| k.api_key == ApiKey::Produce as i16));
        // Metadata of an unknown topic: UNKNOWN_TOPIC_OR_PARTITION, not a
        // topic created behind the client's back.
        let request = MetadataRequest::default().with_topics(Some(vec![
            net::kafka::kafka_protocol::messages::metadata_request::MetadataRequestTopic::default().with_name(Some(
                net::kafka::kafka_protocol::messages::TopicName(StrBytes::from_static_str("nowhere")),
            )),
        ]));
        send(&mut stream, ApiKey::Metadata, 9, &request, 2);
        let mut response = receive(&mut stream).expect("an answer on the same connection");
        ResponseHeader::decode(&mut response, 1).unwrap();
        let metadata = MetadataResponse::decode(&mut response, 9).unwrap();
        assert_eq!(metadata.topics[0].error_code, 3);
        // A version corelog does not serve, of an API it does: that API's
        // own response at that version, with UNSUPPORTED_VERSION where it
        // has error codes; the connection stays.
        let mut body = BytesMut::new();
        request.encode(&mut body, 13).unwrap();
        send_raw(&mut stream, ApiKey::Metadata as i16, 13, 2, &body);
        let mut response = receive(&mut stream).expect("an answer");
        assert_eq!(ResponseHeader::decode(&mut response, 1).unwrap().correlation_id, 7);
        let metadata = MetadataResponse::decode(&mut response, 13).unwrap();
        assert_eq!((metadata.error_code, metadata.topics[0].error_code), (35, 35));
        // A Produce at an unserved version with acks=0 expects no answer
        // and gets none: the next answer on the connection is the next
        // request's.
        {
            use net::kafka::kafka_protocol::messages::ProduceRequest;
            let mut body = BytesMut::new();
            ProduceRequest::default().with_acks(0).encode(&mut body, 10).unwrap();
            send_raw(&mut stream, ApiKey::Produce as i16, 10, 2, &body);
        }
        send(&mut stream, ApiKey::Metadata, 9, &request, 2);
        let mut response = receive(&mut stream).expect("the connection still serves");
        ResponseHeader::decode(&mut response, 1).unwrap();
        assert_eq!(
            MetadataResponse::decode(&mut response, 9).unwrap().topics[0].error_code,
            3
        );
        // An API unknown to Kafka has no response format: ApiVersions v0
        // with UNSUPPORTED_VERSION and what is served, then the connection
        // closes (any other reading of those bytes would be wrong).
        let mut unknown = connect();
        send_raw(&mut unknown, 999, 0, 1, &[]);
        let mut response = receive(&mut unknown).expect("an answer");
        ResponseHeader::decode(&mut response, 0).unwrap();
        assert_eq!(ApiVersionsResponse::decode(&mut response, 0).unwrap().error_code, 35);
        assert!(closed(&mut unknown));
        // A negative partition added to a transaction: refused, the other
        // partitions not attempted (it was once read as partition 0).
        {
            use net::kafka::kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
            use net::kafka::kafka_protocol::messages::{
                AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, TopicName, TransactionalId,
            };
            let add = AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_static_str("t")))
                .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("nowhere")))
                    .with_partitions(vec![-1, 0])]);
            send(&mut stream, ApiKey::AddPartitionsToTxn, 3, &add, 2);
            let mut response = receive(&mut stream).expect("an answer");
            ResponseHeader::decode(&mut response, 1).unwrap();
            let added = AddPartitionsToTxnResponse::decode(&mut response, 3).unwrap();
            let codes: Vec<(i32, i16)> = added.results_by_topic_v3_and_below[0]
                .results_by_partition
                .iter()
                .map(|p| (p.partition_index, p.partition_error_code))
                .collect();
            assert_eq!(codes, vec![(-1, 3), (0, 55)]);
        }
        // Bytes that are no request: the connection is closed (the stream
        // cannot be resynchronized), the broker stays up.
        let mut garbage = connect();
        garbage
            .write_all(&[0, 0, 0, 12, 0, 3, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8])
            .unwrap();
        assert!(closed(&mut garbage));
        let mut huge = connect();
        huge.write_all(&i32::MAX.to_be_bytes()).unwrap();
        assert!(closed(&mut huge), "a frame over the limit closes the connection");
        let mut negative = connect();
        negative.write_all(&(-5i32).to_be_bytes()).unwrap();
        assert!(closed(&mut negative));
        // A Metadata request whose topic array claims 2^32 - 2 entries in a
        // few bytes: refused without allocating for them.
        let mut lying = connect();
        let mut body = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::Metadata as i16)
            .with_request_api_version(9)
            .with_correlation_id(1)
            .encode(&mut body, 2)
            .unwrap();
        body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0]);
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        lying.write_all(&frame).unwrap();
        assert!(closed(&mut lying));
        // A commit with a negative offset: that partition refused with
        // INVALID_REQUEST, the others committed, nothing else moved.
        let native = broker.addr.clone();
        run(async move {
            let mut c = net::client::Connection::connect(&native).await.unwrap();
            c.create_topic("committed", 2, vec![]).await.unwrap();
        });
        let mut stream = connect();
        use net::kafka::kafka_protocol::messages::offset_commit_request::{
            OffsetCommitRequestPartition, OffsetCommitRequestTopic,
        };
        use net::kafka::kafka_protocol::messages::{GroupId, OffsetCommitRequest, OffsetCommitResponse, TopicName};
        let commit = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("committed")))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(-5),
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(1)
                        .with_committed_offset(3),
                ])]);
        send(&mut stream, ApiKey::OffsetCommit, 2, &commit, 1);
        let mut response = receive(&mut stream).expect("an answer");
        ResponseHeader::decode(&mut response, 0).unwrap();
        let committed = OffsetCommitResponse::decode(&mut response, 2).unwrap();
        let codes: Vec<(i32, i16)> = committed.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.error_code))
            .collect();
        assert_eq!(codes, vec![(1, 0), (0, 42)]);
        let offsets = run({
            let native = broker.addr.clone();
            async move {
                let mut c = net::client::Connection::connect(&native).await.unwrap();
                c.fetch_offsets("g", None).await.unwrap()
            }
        });
        assert_eq!(
            offsets,
            vec![("committed".to_string(), 1, Some(3))],
            "partition 0 has no commit"
        );
        // A batch over the batch limit (16 MiB), within the frame limit:
        // MESSAGE_TOO_LARGE, which clients do not retry (not the
        // CORRUPT_MESSAGE it once was), and nothing is stored.
        {
            use net::kafka::kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
            use net::kafka::kafka_protocol::messages::{ProduceRequest, ProduceResponse};
            use net::kafka::kafka_protocol::records::{
                Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
            };
            let record = Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: 0,
                sequence: -1,
                timestamp: 1,
                key: None,
                value: Some(Bytes::from(vec![7u8; 20 << 20])),
                headers: Default::default(),
            };
            let mut records = BytesMut::new();
            let options = RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            };
            RecordBatchEncoder::encode(&mut records, [&record], &options).unwrap();
            let produce = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(5000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("committed")))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records.freeze()))])]);
            send(&mut stream, ApiKey::Produce, 7, &produce, 1);
            let mut response = receive(&mut stream).expect("an answer");
            ResponseHeader::decode(&mut response, 0).unwrap();
            let produced = ProduceResponse::decode(&mut response, 7).unwrap();
            assert_eq!(produced.responses[0].partition_responses[0].error_code, 10);
        }
        // A client that vanishes mid-frame harms no one.
        let mut vanishing = connect();
        vanishing.write_all(&[0, 0, 1, 0, 0, 3]).unwrap();
        drop(vanishing);
        broker.assert_alive();
        let mut stream = connect();
        send(&mut stream, ApiKey::Metadata, 9, &MetadataRequest::default(), 2);
        assert!(receive(&mut stream).is_some(), "still serving");
        broker.stop();
    }

    #[test]
    fn a_kafka_group_member_is_given_its_id_before_it_joins() {
        use net::kafka::kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
        use net::kafka::kafka_protocol::messages::{GroupId, JoinGroupRequest, JoinGroupResponse};
        let dir = data_dir();
        let broker = Broker::start(dir.path(), 2);
        let mut stream = TcpStream::connect(&broker.kafka_addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let join = |member_id: &str| {
            JoinGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("raw-group")))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(10_000)
                .with_member_id(StrBytes::from_string(member_id.to_string()))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str("range"))
                    .with_metadata(Bytes::from_static(b"m"))])
        };
        let mut call = |request: &JoinGroupRequest, version: i16| {
            send(&mut stream, ApiKey::JoinGroup, version, request, 1);
            let mut response = receive(&mut stream).expect("an answer");
            ResponseHeader::decode(&mut response, 0).unwrap();
            JoinGroupResponse::decode(&mut response, version).unwrap()
        };
        // v4 and later (KIP-394): the id first, with MEMBER_ID_REQUIRED.
        let given = call(&join(""), 5);
        assert_eq!(given.error_code, 79);
        assert!(!given.member_id.is_empty());
        let joined = call(&join(&given.member_id), 5);
        assert_eq!(joined.error_code, 0);
        assert_eq!(
            (joined.member_id.as_str(), joined.leader.as_str()),
            (given.member_id.as_str(), given.member_id.as_str())
        );
        assert_eq!(joined.generation_id, 1);
        // An id the broker never gave is refused.
        assert_eq!(call(&join("made-up"), 5).error_code, 25);
        // v3 and earlier join in one step.
        let old = join("").with_group_id(GroupId(StrBytes::from_static_str("old-group")));
        let joined = call(&old, 3);
        assert_eq!(joined.error_code, 0);
        assert!(!joined.member_id.is_empty());
        broker.stop();
    }

    /// OffsetForLeaderEpoch (KIP-320), what a client asks after a leader
    /// change to find where its log and the leader's part: the current
    /// epoch ends at the log end, an older client epoch is fenced, a newer
    /// one unknown, an unknown partition said so.
    #[test]
    fn offset_for_leader_epoch_answers_each_epochs_end_and_checks_the_clients() {
        use net::kafka::kafka_protocol::messages::offset_for_leader_epoch_request::{
            OffsetForLeaderPartition, OffsetForLeaderTopic,
        };
        use net::kafka::kafka_protocol::messages::{
            OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, TopicName,
        };

        let dir = data_dir();
        let broker = Broker::start(dir.path(), 2);
        let addr = broker.addr.clone();
        run(async move {
            let mut c = net::client::Connection::connect(&addr).await.unwrap();
            c.create_topic("epochs", 2, vec![]).await.unwrap();
            for b in 0..3u64 {
                let batch = batch_of(0, b * 10..(b + 1) * 10);
                c.produce("epochs", 0, &batch, net::messages::acks::ALL).await.unwrap();
            }
        });
        let ask = |topic: &'static str, partitions: Vec<(i32, i32, i32)>| {
            let mut stream = TcpStream::connect(&broker.kafka_addr).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let request = OffsetForLeaderEpochRequest::default()
                .with_replica_id(net::kafka::kafka_protocol::messages::BrokerId(-1))
                .with_topics(vec![OffsetForLeaderTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str(topic)))
                    .with_partitions(
                        partitions
                            .into_iter()
                            .map(|(partition, current, epoch)| {
                                OffsetForLeaderPartition::default()
                                    .with_partition(partition)
                                    .with_current_leader_epoch(current)
                                    .with_leader_epoch(epoch)
                            })
                            .collect(),
                    )]);
            send(&mut stream, ApiKey::OffsetForLeaderEpoch, 4, &request, 2);
            let mut response = receive(&mut stream).expect("an answer");
            ResponseHeader::decode(&mut response, 1).unwrap();
            let answer = OffsetForLeaderEpochResponse::decode(&mut response, 4).unwrap();
            answer.topics[0]
                .partitions
                .iter()
                .map(|p| (p.partition, p.error_code, p.leader_epoch, p.end_offset))
                .collect::<Vec<_>>()
        };
        // Partition 0 holds 30 records of epoch 0; partition 1 none.
        assert_eq!(
            ask("epochs", vec![(0, 0, 0), (1, -1, 0), (0, -1, 5), (0, 1, 0), (9, -1, 0)]),
            vec![
                (0, 0, 0, 30),
                (1, 0, 0, 0),
                // An epoch this log never had: Kafka's undefined answer.
                (0, 0, -1, -1),
                // The client knows an epoch this partition has not reached.
                (0, 75, -1, -1),
                (9, 3, -1, -1),
            ]
        );
        assert_eq!(ask("nowhere", vec![(0, -1, 0)]), vec![(0, 3, -1, -1)]);
        broker.stop();
    }

    /// Fetch (v9+) and ListOffsets (v4+) check the client's current leader
    /// epoch as OffsetForLeaderEpoch does (KIP-320): none (-1) and the
    /// partition's own pass, a newer one is UNKNOWN_LEADER_EPOCH (75), and
    /// ListOffsets names the epoch of each offset it lists. (An older one,
    /// FENCED_LEADER_EPOCH, needs a leader change: `cluster.rs`.)
    #[test]
    fn fetch_and_list_offsets_check_the_clients_leader_epoch() {
        use net::kafka::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
        use net::kafka::kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
        use net::kafka::kafka_protocol::messages::{
            FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, TopicName,
        };

        let dir = data_dir();
        let broker = Broker::start(dir.path(), 1);
        let addr = broker.addr.clone();
        run(async move {
            let mut c = net::client::Connection::connect(&addr).await.unwrap();
            c.create_topic("fenced", 1, vec![]).await.unwrap();
            c.produce("fenced", 0, &batch_of(0, 0..10), net::messages::acks::ALL)
                .await
                .unwrap();
        });
        let mut stream = TcpStream::connect(&broker.kafka_addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut fetch = |current: i32| {
            let request = FetchRequest::default()
                .with_replica_id(net::kafka::kafka_protocol::messages::BrokerId(-1))
                .with_max_wait_ms(0)
                .with_min_bytes(1)
                .with_max_bytes(1 << 20)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("fenced")))
                    .with_partitions(vec![FetchPartition::default()
                        .with_partition(0)
                        .with_current_leader_epoch(current)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20)])]);
            send(&mut stream, ApiKey::Fetch, 12, &request, 2);
            let mut response = receive(&mut stream).expect("an answer");
            ResponseHeader::decode(&mut response, 1).unwrap();
            let fetched = FetchResponse::decode(&mut response, 12).unwrap();
            let p = &fetched.responses[0].partitions[0];
            (p.error_code, p.records.as_ref().map_or(0, |r| r.len()) > 0)
        };
        assert_eq!(fetch(-1), (0, true));
        assert_eq!(fetch(0), (0, true));
        assert_eq!(fetch(1), (75, false), "an epoch the partition has not reached");

        let mut list = |timestamp: i64, current: i32| {
            let request = ListOffsetsRequest::default()
                .with_replica_id(net::kafka::kafka_protocol::messages::BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("fenced")))
                    .with_partitions(vec![ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_current_leader_epoch(current)
                        .with_timestamp(timestamp)])]);
            send(&mut stream, ApiKey::ListOffsets, 6, &request, 2);
            let mut response = receive(&mut stream).expect("an answer");
            ResponseHeader::decode(&mut response, 1).unwrap();
            let listed = ListOffsetsResponse::decode(&mut response, 6).unwrap();
            let p = &listed.topics[0].partitions[0];
            (p.error_code, p.offset, p.leader_epoch)
        };
        assert_eq!(list(-1, -1), (0, 10, 0), "latest, in the current epoch");
        assert_eq!(list(-2, 0), (0, 0, 0), "earliest, in the epoch of its batch");
        assert_eq!(list(-1, 3), (75, -1, -1));
        broker.stop();
    }

    /// A Kafka fetch of several partitions keeps to max_bytes: the first
    /// partition may pass it by one batch, the others return nothing once
    /// the response is full, with their high watermarks.
    #[test]
    fn a_kafka_fetch_of_several_partitions_keeps_to_its_max_bytes() {
        use net::kafka::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
        use net::kafka::kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};

        let dir = data_dir();
        let broker = Broker::start(dir.path(), 2);
        let addr = broker.addr.clone();
        run(async move {
            let mut c = net::client::Connection::connect(&addr).await.unwrap();
            c.create_topic("sized", 3, vec![]).await.unwrap();
            for p in 0..3 {
                for b in 0..5u64 {
                    let batch = batch_of(p, b * 50..(b + 1) * 50);
                    c.produce("sized", p, &batch, net::messages::acks::ALL).await.unwrap();
                }
            }
        });
        let mut stream = TcpStream::connect(&broker.kafka_addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let request = FetchRequest::default()
            .with_replica_id(net::kafka::kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(100)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("sized")))
                .with_partitions(
                    (0..3)
                        .map(|p| {
                            FetchPartition::default()
                                .with_partition(p)
                                .with_fetch_offset(0)
                                .with_partition_max_bytes(1 << 20)
                        })
                        .collect(),
                )]);
        send(&mut stream, ApiKey::Fetch, 4, &request, 1);
        let mut response = receive(&mut stream).expect("an answer");
        ResponseHeader::decode(&mut response, 0).unwrap();
        let fetched = FetchResponse::decode(&mut response, 4).unwrap();
        let partitions = &fetched.responses[0].partitions;
        let sizes: Vec<(usize, i64)> = partitions
            .iter()
            .map(|p| {
                assert_eq!(p.error_code, 0);
                (p.records.as_ref().map_or(0, |r| r.len()), p.high_watermark)
            })
            .collect();
        // The first partition: one batch, larger than the limit; the others
        // nothing, and every high watermark.
        assert!(sizes[0].0 > 100, "{sizes:?}");
        assert_eq!((sizes[1].0, sizes[2].0), (0, 0), "{sizes:?}");
        assert!(sizes.iter().all(|(_, hw)| *hw == 250), "{sizes:?}");
        broker.stop();
    }
}
