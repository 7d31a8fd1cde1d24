//! Several `corelog` processes as one cluster: the controller's Raft group
//! over their internal ports elects a leader, every node registers itself
//! through it, a leader killed is replaced, and a node started again on its
//! data directory rejoins and catches up.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use net::cluster::{ControllerCommand, PeerFrame, PeerMessage};

/// Longest the cluster may take to agree after a start or a loss.
const AGREE_WITHIN: Duration = Duration::from_secs(30);

struct Node {
    id: u64,
    rpc: String,
    dir: tempfile::TempDir,
    config: String,
    broker: Option<Broker>,
    /// The native and Kafka addresses it listens on: a node started again
    /// keeps them, as a restarted broker does for its clients (None: any).
    listens: Option<(String, String)>,
}

/// A node's native and Kafka addresses, kept across its restarts.
fn fixed_listens() -> (String, String) {
    (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    )
}

impl Node {
    fn start(&mut self) {
        let (listen, kafka_listen) = self
            .listens
            .clone()
            .unwrap_or_else(|| ("127.0.0.1:0".into(), "127.0.0.1:0".into()));
        let broker = Broker::start_at(self.dir.path(), 1, &self.config, &listen, &kafka_listen);
        self.listens = Some((broker.addr.clone(), broker.kafka_addr.clone()));
        self.broker = Some(broker);
    }

    /// Starts it on ports it never had: clients must learn them anew.
    fn start_on_new_ports(&mut self) {
        self.listens = Some(fixed_listens());
        self.start();
    }
}

/// A free port below the kernel's ephemeral range: a node started again
/// takes its ports back, and a port the kernel hands out to connections
/// could meanwhile be some connection's own end (EADDRINUSE).
fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    for _ in 0..1000 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(Instant::now().elapsed().as_nanos());
        let port = low + (hasher.finish() % u64::from(high - low)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

fn cluster(n: u64) -> Vec<Node> {
    cluster_with(n, "")
}

/// `n` nodes, each with `extra` in its config file.
fn cluster_with(n: u64, extra: &str) -> Vec<Node> {
    let rpcs: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let peers: Vec<String> = rpcs
        .iter()
        .enumerate()
        .map(|(i, rpc)| format!("\"{}@{rpc}\"", i + 1))
        .collect();
    let mut nodes: Vec<Node> = rpcs
        .iter()
        .enumerate()
        .map(|(i, rpc)| Node {
            id: i as u64 + 1,
            rpc: rpc.clone(),
            dir: data_dir(),
            config: format!(
                "node_id = {}\nrpc_listen = \"{rpc}\"\npeers = [{}]\n{extra}",
                i + 1,
                peers.join(", ")
            ),
            broker: None,
            listens: Some(fixed_listens()),
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    nodes
}

/// Every node but `leader`.
fn others(nodes: &[Node], leader: u64) -> Vec<&Node> {
    nodes.iter().filter(|n| n.id != leader).collect()
}

/// SIGTERM to every node still running, each exiting cleanly.
fn stop_all(nodes: &mut [Node]) {
    for node in nodes {
        if let Some(broker) = node.broker.take() {
            broker.stop();
        }
    }
}

/// `corelog serve` on `dir` with `config_file`, expected to refuse to
/// start: its stderr.
fn refused_start(dir: &std::path::Path, config_file: &std::path::Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "none",
            "--metrics-listen",
            "none",
            "--data-dir",
        ])
        .arg(dir)
        .arg("--config")
        .arg(config_file)
        .output()
        .expect("the corelog binary runs");
    assert!(!output.status.success(), "the node started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A node's `corelog cluster status`, None while it does not answer.
fn status(rpc: &str) -> Option<serde_json::Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(["cluster", "status", "--node", rpc])
        .output()
        .expect("the corelog binary runs");
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// Waits until every node in `nodes` names the same leader among them,
/// in the same term, with `registered` nodes in the metadata; returns
/// (leader, term).
fn agreed(nodes: &[&Node], registered: usize) -> (u64, u64) {
    let started = Instant::now();
    let mut last = Vec::new();
    while started.elapsed() < AGREE_WITHIN {
        last = nodes.iter().map(|n| status(&n.rpc)).collect::<Vec<_>>();
        let views: Option<Vec<(u64, u64, usize, u64)>> = last
            .iter()
            .map(|s| {
                let s = s.as_ref()?;
                Some((
                    s["leader"].as_u64()?,
                    s["term"].as_u64()?,
                    s["nodes"].as_array()?.len(),
                    s["applied_index"].as_u64()?,
                ))
            })
            .collect();
        if let Some(views) = views {
            let (leader, term, count, applied) = views[0];
            let live = nodes.iter().any(|n| n.id == leader);
            if live && count == registered && views.iter().all(|v| *v == (leader, term, count, applied)) {
                return (leader, term);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no agreement within {AGREE_WITHIN:?}: {last:?}");
}

#[test]
fn a_cluster_elects_a_controller_survives_its_loss_and_takes_it_back() {
    let mut nodes = cluster(3);
    let (leader, term) = agreed(&nodes.iter().collect::<Vec<_>>(), 3);

    // Bytes that are no frame end their connection, not the node; nor does
    // a proposal from a node that is not a voter get anywhere.
    let mut garbage = std::net::TcpStream::connect(&nodes[0].rpc).expect("internal port");
    let _ = garbage.write_all(&[0xff; 64]);
    drop(garbage);
    let stranger = PeerFrame {
        from: 9,
        message: PeerMessage::Propose {
            command: ControllerCommand::RegisterNode {
                node: 9,
                shards: 1,
                kafka_addr: "10.9.9.9:9092".into(),
                native_addr: "10.9.9.9:9292".into(),
                kafka_shard_addrs: Vec::new(),
                native_shard_addrs: Vec::new(),
            }
            .encode(),
        },
    };
    for node in &nodes {
        let mut forged = std::net::TcpStream::connect(&node.rpc).expect("internal port");
        let _ = forged.write_all(&stranger.encode().unwrap());
    }
    // Long enough for the leader to commit it had it been taken (a few
    // round trips on loopback): the agreements below want 3 nodes, not 4.
    std::thread::sleep(Duration::from_secs(1));
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);

    let lost = nodes.iter().position(|n| n.id == leader).unwrap();
    nodes[lost].broker.take().unwrap().kill9();
    let survivors = others(&nodes, leader);
    let (next, next_term) = agreed(&survivors, 3);
    assert_ne!(next, leader, "a new leader among the survivors");
    assert!(next_term > term, "in a later term");

    // The lost node starts again on its data directory and catches up.
    nodes[lost].start();
    let (again, again_term) = agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    assert!(again_term >= next_term);
    assert!(nodes.iter().any(|n| n.id == again));
    for node in &mut nodes {
        let mut broker = node.broker.take().unwrap();
        broker.assert_alive();
        broker.stop();
    }
}

/// A leader stopped cleanly (SIGTERM) hands its leadership to a follower
/// before it exits; the others agree on that one in the next term.
#[test]
fn a_leader_stopped_cleanly_hands_over() {
    let mut nodes = cluster(3);
    let (leader, term) = agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let stopping = nodes.iter().position(|n| n.id == leader).unwrap();
    nodes[stopping].broker.take().unwrap().stop();
    let survivors = others(&nodes, leader);
    let (next, next_term) = agreed(&survivors, 3);
    assert_ne!(next, leader);
    assert_eq!(next_term, term + 1, "one hand-over, no contested election");
    stop_all(&mut nodes);
}

/// A leader paused past the election timeout (SIGSTOP) is replaced; let go
/// (SIGCONT), it learns of the later term, follows, and the cluster agrees
/// again on the new leader: no two leaders, no going back.
#[test]
fn a_paused_leader_is_replaced_and_follows_when_it_wakes() {
    let mut nodes = cluster(3);
    let (leader, term) = agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let paused = nodes.iter().position(|n| n.id == leader).unwrap();
    let pid = nodes[paused].broker.as_ref().unwrap().pid().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().expect("kill -STOP");
    let survivors = others(&nodes, leader);
    let (next, next_term) = agreed(&survivors, 3);
    Command::new("kill").args(["-CONT", &pid]).status().expect("kill -CONT");
    assert_ne!(next, leader);
    assert!(next_term > term);
    let (after, after_term) = agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    assert_eq!((after, after_term), (next, next_term), "the woken leader follows");
    stop_all(&mut nodes);
}

/// A controller log damaged before a whole batch (not a crash's torn tail)
/// stops the node's start with the file named, rather than let it forget a
/// vote or an entry it acknowledged; so does a damaged incarnation file.
#[test]
fn a_damaged_controller_log_refuses_the_start() {
    let mut nodes = cluster(3);
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    stop_all(&mut nodes);
    let log = nodes[0].dir.path().join("controller").join("raft.log");
    let whole = std::fs::read(&log).unwrap();
    let mut bytes = whole.clone();
    assert!(bytes.len() > 64, "the log has several batches");
    bytes[10] ^= 0xff; // inside the first batch's body
    std::fs::write(&log, &bytes).unwrap();
    let config_file = nodes[0].dir.path().with_extension("toml");
    let stderr = refused_start(nodes[0].dir.path(), &config_file);
    assert!(stderr.contains("raft.log") && stderr.contains("damaged"), "{stderr}");
    // A damaged incarnation file, too: which life of the node its data
    // directory is cannot be guessed.
    std::fs::write(&log, &whole).unwrap();
    let incarnation = nodes[0].dir.path().join("controller").join("incarnation");
    std::fs::write(&incarnation, "garbage\n").unwrap();
    let stderr = refused_start(nodes[0].dir.path(), &config_file);
    assert!(stderr.contains("incarnation") && stderr.contains("garbage"), "{stderr}");
}

#[test]
fn a_node_with_a_bad_peer_list_refuses_to_start() {
    let dir = data_dir();
    let config_file = dir.path().with_extension("toml");
    std::fs::write(
        &config_file,
        "node_id = 4\nrpc_listen = \"127.0.0.1:1\"\npeers = [\"1@127.0.0.1:2\"]\n",
    )
    .unwrap();
    let stderr = refused_start(dir.path(), &config_file);
    assert!(stderr.contains("node_id 4 is not among the peers"), "{stderr}");
}

/// `corelog` CLI against one node: its stdout, or its stderr as the error.
fn cli(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the corelog binary runs");
    let mut input = child.stdin.take().expect("piped stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    let output = child.wait_with_output().expect("the CLI finishes");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The partitions a node says it hosts, from `topic describe` on it.
fn hosted(addr: &str, topic: &str) -> Result<Vec<u32>, String> {
    let described = cli(&["topic", "describe", topic, "--broker", addr], None)?;
    Ok(described
        .lines()
        .filter(|l| l.trim_start().starts_with("partition ") && !l.contains("not led here"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect())
}

/// Topics go through the controller: created on a follower (forwarded to
/// the leader), one replica a partition placed over every node, each node opening what it hosts;
/// records produced through one node and read through another; a node
/// killed and started again serves its partitions' records; deleted on
/// one node, gone from all, directories included. A Kafka client
/// bootstrapping from one node finds every partition's node.
#[test]
fn topics_are_placed_by_the_controller_and_served_where_they_live() {
    let mut nodes = cluster(3);
    let (leader, _) = agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let follower = nodes.iter().find(|n| n.id != leader).unwrap();
    let addr = |n: &Node| n.broker.as_ref().unwrap().addr.clone();
    let follower_addr = addr(follower);
    create_topic(&follower_addr, "t", &["--partitions", "6", "--replication-factor", "1"])
        .expect("created through a follower");
    // Every node hosts two of the six, and together all of them.
    let mut all: Vec<u32> = Vec::new();
    for node in &nodes {
        let here = hosted(&addr(node), "t").unwrap();
        assert_eq!(here.len(), 2, "node {} hosts {here:?}", node.id);
        all.extend(here);
    }
    all.sort();
    assert_eq!(all, (0..6).collect::<Vec<_>>());

    let lines: String = (0..600).map(|i| format!("k{i},v{i}\n")).collect();
    // acks=all: synced before acknowledged, so a kill -9 below keeps them.
    cli(
        &[
            "produce",
            "t",
            "--key-separator",
            ",",
            "--acks",
            "all",
            "--broker",
            &addr(&nodes[0]),
        ],
        Some(&lines),
    )
    .expect("produced through node 1");
    let read_all = |through: &str| {
        let out = cli(
            &[
                "consume",
                "t",
                "--from-beginning",
                "--max-messages",
                "600",
                "--broker",
                through,
            ],
            None,
        )
        .expect("consumed");
        let mut values: Vec<String> = out.lines().map(str::to_string).collect();
        values.sort();
        values
    };
    let mut expected: Vec<String> = (0..600).map(|i| format!("v{i}")).collect();
    expected.sort();
    assert_eq!(read_all(&addr(&nodes[2])), expected);

    // A Kafka client bootstrapping from one node reads every partition.
    let script = r#"
import sys
from kafka import KafkaConsumer
c = KafkaConsumer("t", bootstrap_servers=sys.argv[1], group_id="g", auto_offset_reset="earliest",
                  consumer_timeout_ms=8000, enable_auto_commit=False)
n = sum(1 for _ in c)
c.commit()
c.close()
print("read", n)
"#;
    if Command::new("python3")
        .args(["-c", "import kafka"])
        .status()
        .is_ok_and(|s| s.success())
    {
        let kafka = nodes[1].broker.as_ref().unwrap().kafka_addr.clone();
        let output = Command::new("python3")
            .args(["-c", script, &kafka])
            .output()
            .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("read 600"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    } else {
        eprintln!("skipping the Kafka client part: kafka-python is not installed");
    }

    // A node killed and started again opens its partitions from its disk.
    nodes[1].broker.take().unwrap().kill9();
    nodes[1].start();
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    assert_eq!(read_all(&addr(&nodes[1])), expected);

    cli(&["topic", "delete", "t", "--broker", &addr(&nodes[2])], None).expect("deleted");
    let started = Instant::now();
    for node in &nodes {
        loop {
            let gone =
                hosted(&addr(node), "t").is_err() && (0..6).all(|p| !node.dir.path().join(format!("t-{p}")).exists());
            if gone {
                break;
            }
            assert!(started.elapsed() < AGREE_WITHIN, "node {} still has topic t", node.id);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    stop_all(&mut nodes);
}

/// Each partition's (leader node, epoch, replicas) as `topic describe` on
/// `addr` reports it; a leader of -1 while none is known there.
fn leaders(addr: &str, topic: &str) -> Result<Vec<(i64, i64, usize)>, String> {
    let described = cli(&["topic", "describe", topic, "--broker", addr], None)?;
    Ok(described
        .lines()
        .filter(|l| l.trim_start().starts_with("partition "))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let after = |key: &str| words[words.iter().position(|w| *w == key).unwrap() + 1];
            let replicas = l.split_once("replicas [").unwrap().1.split(']').next().unwrap();
            // A node with shard ports is one broker a shard.
            let broker: i64 = after("leader").parse().unwrap();
            let per_node = net::cluster::BROKER_IDS_PER_NODE as i64;
            (
                if broker >= per_node { broker / per_node } else { broker },
                after("epoch").parse().unwrap(),
                replicas.split(',').filter(|r| !r.trim().is_empty()).count(),
            )
        })
        .collect())
}

/// Waits until `addr` names a leader among `live` for every partition of
/// `topic`, each in an epoch above `above`; returns the leaders.
fn elected(addr: &str, topic: &str, live: &[u64], above: &[i64]) -> Vec<(i64, i64, usize)> {
    let started = Instant::now();
    loop {
        let last = leaders(addr, topic);
        if let Ok(partitions) = &last {
            let done = !partitions.is_empty()
                && partitions.iter().enumerate().all(|(p, &(leader, epoch, _))| {
                    live.contains(&(leader as u64)) && epoch > above.get(p).copied().unwrap_or(0)
                });
            if done {
                return partitions.clone();
            }
        }
        assert!(
            started.elapsed() < AGREE_WITHIN,
            "no leaders for {topic} on {addr}: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The error code of a Kafka Fetch (v12) of `topic`/`partition` from
/// offset 0 naming `current_leader_epoch`.
fn kafka_fetch(kafka_addr: &str, topic: &str, partition: i32, current_leader_epoch: i32) -> i16 {
    use net::kafka::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use net::kafka::kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, TopicName};
    use net::kafka::kafka_protocol::protocol::StrBytes;
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(current_leader_epoch)
                .with_partition_max_bytes(1 << 20)])]);
    let answer: FetchResponse = common::kafka_call(kafka_addr, ApiKey::Fetch, 12, &request);
    answer.responses[0].partitions[0].error_code
}

/// A Kafka ListOffsets (v6) for the latest offset: (error, offset, epoch).
fn kafka_latest(kafka_addr: &str, topic: &str, partition: i32, current_leader_epoch: i32) -> (i16, i64, i32) {
    kafka_list_offset(kafka_addr, topic, partition, current_leader_epoch, -1)
}

/// A Kafka ListOffsets (v6) for `timestamp` (-1 latest, -2 earliest):
/// (error, offset, epoch).
fn kafka_list_offset(
    kafka_addr: &str,
    topic: &str,
    partition: i32,
    current_leader_epoch: i32,
    timestamp: i64,
) -> (i16, i64, i32) {
    use net::kafka::kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use net::kafka::kafka_protocol::messages::{ApiKey, BrokerId, ListOffsetsRequest, ListOffsetsResponse, TopicName};
    use net::kafka::kafka_protocol::protocol::StrBytes;
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_current_leader_epoch(current_leader_epoch)
                .with_timestamp(timestamp)])]);
    let answer: ListOffsetsResponse = common::kafka_call(kafka_addr, ApiKey::ListOffsets, 6, &request);
    let p = &answer.topics[0].partitions[0];
    (p.error_code, p.offset, p.leader_epoch)
}

/// `corelog topic create TOPIC OPTIONS... --broker THROUGH`: its output.
fn create_topic(through: &str, topic: &str, options: &[&str]) -> Result<String, String> {
    let mut args = vec!["topic", "create", topic];
    args.extend_from_slice(options);
    args.extend(["--broker", through]);
    cli(&args, None)
}

/// Every record of `topic` read through `addr`, its values sorted.
fn read_sorted(addr: &str, topic: &str, count: usize) -> Vec<String> {
    let out = cli(
        &[
            "consume",
            topic,
            "--from-beginning",
            "--max-messages",
            &count.to_string(),
            "--timeout-ms",
            "10000",
            "--broker",
            addr,
        ],
        None,
    )
    .expect("consumed");
    let mut values: Vec<String> = out.lines().map(str::to_string).collect();
    values.sort();
    values
}

/// A topic of three replicas a partition (the default on three nodes):
/// each partition elects a leader; what acks=all acknowledged survives its
/// leader's kill -9; the others elect a new leader in a later epoch and
/// take more records; the old leader, started again, follows and catches
/// up; every node serves every record once.
#[test]
fn a_replicated_partition_keeps_what_it_acknowledged_through_its_leaders_loss() {
    let mut nodes = cluster(3);
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let addr = |n: &Node| n.broker.as_ref().unwrap().addr.clone();
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    create_topic(&addr(&nodes[0]), "r", &["--partitions", "2"]).expect("created");
    let first = elected(&addr(&nodes[0]), "r", &ids, &[]);
    assert!(first.iter().all(|p| p.2 == 3), "three replicas a partition: {first:?}");
    for node in &nodes {
        // Every node knows the same leaders (each hosts a replica).
        assert_eq!(elected(&addr(node), "r", &ids, &[]), first);
    }

    let produce = |through: &str, from: usize, to: usize| {
        let lines: String = (from..to).map(|i| format!("k{i},v{i}\n")).collect();
        cli(
            &[
                "produce",
                "r",
                "--key-separator",
                ",",
                "--acks",
                "all",
                "--broker",
                through,
            ],
            Some(&lines),
        )
        .expect("produced with acks=all");
    };
    produce(&addr(&nodes[1]), 0, 300);

    // The leader of partition 0 is lost without a word.
    let lost = first[0].0 as u64;
    let lost_index = nodes.iter().position(|n| n.id == lost).unwrap();
    nodes[lost_index].broker.take().unwrap().kill9();
    let survivors: Vec<u64> = ids.iter().copied().filter(|&id| id != lost).collect();
    let survivor = addr(nodes.iter().find(|n| n.id == survivors[0]).unwrap());
    let epochs: Vec<i64> = first
        .iter()
        .map(|&(leader, epoch, _)| if leader as u64 == lost { epoch } else { 0 })
        .collect();
    let second = elected(&survivor, "r", &survivors, &epochs);
    produce(&survivor, 300, 600);

    // KIP-320 on the new leader: a client still naming the lost leader's
    // epoch is fenced, one naming the new epoch reads, and ListOffsets
    // names it; a follower told the new epoch answers that it does not lead.
    let (leader, epoch, _) = second[0];
    let kafka_of = |id: u64| {
        let node = nodes.iter().find(|n| n.id == id).unwrap();
        node.broker.as_ref().unwrap().kafka_addr.clone()
    };
    let on_leader = kafka_of(leader as u64);
    assert_eq!(kafka_fetch(&on_leader, "r", 0, first[0].1 as i32), 74, "fenced");
    assert_eq!(kafka_fetch(&on_leader, "r", 0, epoch as i32), 0);
    assert_eq!(kafka_fetch(&on_leader, "r", 0, epoch as i32 + 1), 75, "unknown");
    let (error, _, listed_epoch) = kafka_latest(&on_leader, "r", 0, epoch as i32);
    assert_eq!(
        (error, listed_epoch),
        (0, epoch as i32),
        "the latest offset names the new epoch"
    );
    let follower = *survivors.iter().find(|&&id| id != leader as u64).unwrap();
    assert_eq!(kafka_fetch(&kafka_of(follower), "r", 0, epoch as i32), 6, "a follower");

    let mut expected: Vec<String> = (0..600).map(|i| format!("v{i}")).collect();
    expected.sort();
    assert_eq!(read_sorted(&survivor, "r", 600), expected);

    // Started again on its data, the lost leader follows the new one.
    nodes[lost_index].start();
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let back = addr(&nodes[lost_index]);
    let rejoined = elected(&back, "r", &ids, &[]);
    for (p, (now, before)) in rejoined.iter().zip(&second).enumerate() {
        assert!(
            now.1 >= before.1,
            "partition {p}: epoch went back, {before:?} then {now:?}"
        );
    }
    for node in &nodes {
        assert_eq!(read_sorted(&addr(node), "r", 600), expected, "through node {}", node.id);
    }
    stop_all(&mut nodes);
}

/// corelog's own idempotent producer (acks=all) writes while the leader of
/// its partition is killed (-9), and later while the next leader is paused
/// past the election timeout: it follows each new leader, every record it
/// was told is stored is read back once, at the offset it was told, in the
/// order it was sent; no record is lost, none doubled.
#[test]
fn an_idempotent_producer_rides_through_its_leaders_loss_and_pause() {
    use net::producer::{Producer, ProducerConfig};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const RECORDS: usize = 3000;
    const CHUNK: usize = 50;
    let mut nodes = cluster(3);
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let addr = |n: &Node| n.broker.as_ref().unwrap().addr.clone();
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    create_topic(&addr(&nodes[0]), "i", &[]).expect("created");
    let first = elected(&addr(&nodes[0]), "i", &ids, &[]);

    // The producer bootstraps from a node that is not the first leader.
    let bootstrap = addr(nodes.iter().find(|n| n.id != first[0].0 as u64).unwrap());
    let acked = Arc::new(AtomicUsize::new(0));
    let producing = {
        let (bootstrap, acked) = (bootstrap.clone(), acked.clone());
        std::thread::spawn(move || {
            common::run(async move {
                let producer = Producer::connect(
                    &bootstrap,
                    ProducerConfig {
                        idempotent: true,
                        retries: 60,
                        retry_backoff: Duration::from_millis(50),
                        ..ProducerConfig::default()
                    },
                )
                .await
                .expect("producer");
                let mut offsets = Vec::with_capacity(RECORDS);
                for chunk in 0..RECORDS / CHUNK {
                    let mut futures = Vec::with_capacity(CHUNK);
                    for n in chunk * CHUNK..(chunk + 1) * CHUNK {
                        let value = format!("{n:05}");
                        futures.push(
                            producer
                                .send("i", None, Some(value.as_bytes()), vec![], 0)
                                .await
                                .unwrap(),
                        );
                    }
                    producer.flush().await;
                    for future in futures {
                        let offset = future.await.expect("answered").expect("acknowledged through failovers");
                        offsets.push(offset);
                        acked.fetch_add(1, Ordering::Release);
                    }
                }
                offsets
            })
        })
    };
    let wait_acked = |count: usize| {
        let started = Instant::now();
        while acked.load(Ordering::Acquire) < count {
            assert!(
                started.elapsed() < AGREE_WITHIN * 2,
                "stuck at {} acked",
                acked.load(Ordering::Acquire)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    wait_acked(RECORDS / 4);
    let lost = nodes.iter().position(|n| n.id == first[0].0 as u64).unwrap();
    nodes[lost].broker.take().unwrap().kill9();
    let survivors: Vec<u64> = ids.iter().copied().filter(|&id| id != first[0].0 as u64).collect();
    let second = elected(&bootstrap, "i", &survivors, &[first[0].1]);
    wait_acked(RECORDS / 2);
    nodes[lost].start();
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);

    // The leader now is paused past the election timeout, then let go.
    let paused = nodes.iter().position(|n| n.id == second[0].0 as u64).unwrap();
    let pid = nodes[paused].broker.as_ref().unwrap().pid().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().expect("kill -STOP");
    let awake: Vec<&Node> = nodes.iter().filter(|n| n.id != second[0].0 as u64).collect();
    let awake_ids: Vec<u64> = awake.iter().map(|n| n.id).collect();
    elected(&addr(awake[0]), "i", &awake_ids, &[second[0].1]);
    Command::new("kill").args(["-CONT", &pid]).status().expect("kill -CONT");

    let offsets = producing.join().expect("the producer finished");
    assert_eq!(offsets.len(), RECORDS);
    // Raft's own entries take no offsets, and a batch cut with a lost
    // leader's tail is stored again at the next leader's offsets.
    assert_eq!(
        offsets,
        (0..RECORDS as u64).collect::<Vec<_>>(),
        "each record at the offset it was told, in the order sent"
    );
    let read = cli(
        &[
            "consume",
            "i",
            "--from-beginning",
            "--max-messages",
            &(RECORDS + 1).to_string(),
            "--timeout-ms",
            "3000",
            "--broker",
            &addr(&nodes[lost]),
        ],
        None,
    )
    .expect("consumed");
    let values: Vec<String> = read.lines().map(str::to_string).collect();
    let expected: Vec<String> = (0..RECORDS).map(|n| format!("{n:05}")).collect();
    assert_eq!(values.len(), RECORDS, "each record once");
    assert_eq!(values, expected, "every record once, in the order sent");
    stop_all(&mut nodes);
}

/// A producer outlives every address it has talked to: its bootstrap
/// node (a follower) is killed and started again on new ports, then the
/// leader it sends to is killed. The node it never talked to, named in the
/// metadata, tells it the new leader; every record is acknowledged once.
#[test]
fn a_producer_finds_the_leader_after_its_bootstrap_and_leader_are_lost() {
    use net::producer::{Producer, ProducerConfig};

    /// Records sent in each of the three phases.
    const PHASE: usize = 70;
    let mut nodes = cluster(3);
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let addr = |n: &Node| n.broker.as_ref().unwrap().addr.clone();
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    create_topic(&addr(&nodes[0]), "b", &[]).expect("created");
    let first = elected(&addr(&nodes[0]), "b", &ids, &[]);
    let leader = nodes.iter().position(|n| n.id == first[0].0 as u64).unwrap();
    let bootstrap = (leader + 1) % nodes.len();
    let untouched = (leader + 2) % nodes.len();

    let (to_producer, phases) = std::sync::mpsc::channel::<()>();
    let (to_test, produced) = std::sync::mpsc::channel::<usize>();
    let producing = {
        let bootstrap = addr(&nodes[bootstrap]);
        std::thread::spawn(move || {
            common::run(async move {
                let producer = Producer::connect(
                    &bootstrap,
                    ProducerConfig {
                        idempotent: true,
                        retries: 100,
                        retry_backoff: Duration::from_millis(50),
                        ..ProducerConfig::default()
                    },
                )
                .await
                .expect("producer");
                let mut offsets = Vec::new();
                for phase in 0..3 {
                    for n in phase * PHASE..(phase + 1) * PHASE {
                        let value = format!("{n:04}");
                        let answer = producer
                            .send("b", None, Some(value.as_bytes()), vec![], 0)
                            .await
                            .unwrap();
                        producer.flush().await;
                        offsets.push(answer.await.expect("answered").expect("acknowledged"));
                    }
                    to_test.send(offsets.len()).unwrap();
                    if phase < 2 {
                        phases.recv().unwrap();
                    }
                }
                offsets
            })
        })
    };
    assert_eq!(produced.recv().unwrap(), PHASE);
    // The bootstrap node goes and comes back on new ports.
    nodes[bootstrap].broker.take().unwrap().kill9();
    nodes[bootstrap].start_on_new_ports();
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    to_producer.send(()).unwrap();
    assert_eq!(produced.recv().unwrap(), 2 * PHASE);
    // Then the leader: the producer's every link is to a dead address.
    nodes[leader].broker.take().unwrap().kill9();
    let survivors: Vec<u64> = ids.iter().copied().filter(|&id| id != first[0].0 as u64).collect();
    elected(&addr(&nodes[untouched]), "b", &survivors, &[first[0].1]);
    to_producer.send(()).unwrap();
    let offsets = producing.join().expect("the producer finished");
    let sent = 3 * PHASE;
    assert_eq!(
        offsets,
        (0..sent as u64).collect::<Vec<_>>(),
        "each record once, in order"
    );
    assert_eq!(read_sorted(&addr(&nodes[untouched]), "b", sent).len(), sent);
    stop_all(&mut nodes);
}

/// A node stopped cleanly (SIGTERM) hands the partitions it leads to
/// another replica on its way out, as Kafka's controlled shutdown does:
/// the others lead in the next epoch and take acks=all produces. (That the
/// hand-over needs no election timeout is the unit test
/// `a_leader_hands_its_leadership_over_without_an_election_timeout`; here
/// a pre-voted election would also land in the next epoch.)
#[test]
fn a_partition_leader_stopped_cleanly_hands_its_leadership_over() {
    let mut nodes = cluster(3);
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let addr = |n: &Node| n.broker.as_ref().unwrap().addr.clone();
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    create_topic(&addr(&nodes[0]), "h", &[]).expect("created");
    let first = elected(&addr(&nodes[0]), "h", &ids, &[]);
    let (leader, epoch, _) = first[0];
    let stopping = nodes.iter().position(|n| n.id == leader as u64).unwrap();
    nodes[stopping].broker.take().unwrap().stop();
    let survivors: Vec<u64> = ids.iter().copied().filter(|&id| id != leader as u64).collect();
    let survivor = addr(nodes.iter().find(|n| n.id == survivors[0]).unwrap());
    let next = elected(&survivor, "h", &survivors, &[epoch]);
    assert_eq!(
        next[0].1,
        epoch + 1,
        "one epoch on, no contested election: {first:?} then {next:?}"
    );
    cli(
        &["produce", "h", "--acks", "all", "--broker", &survivor],
        Some("after\n"),
    )
    .expect("produced");
    assert_eq!(read_sorted(&survivor, "h", 1), vec!["after".to_string()]);
    stop_all(&mut nodes);
}

/// A consumer group keeps going through the loss of its coordinator's
/// node: kafka-python, reading and committing every 50 records, has its
/// coordinator `kill -9`ed after the commit at offset 100. The replica
/// that leads the group's `__consumer_offsets` partition next takes over
/// with the group's members and generation (its membership record), so
/// the consumer's next commits succeed without a rebalance, nothing it
/// committed is read again from before it, and no offset is skipped.
#[test]
fn a_consumer_group_keeps_going_through_its_coordinators_loss() {
    if !available("kafka-python", Command::new("python3").args(["-c", "import kafka"])) {
        return;
    }
    let mut nodes = cluster(3);
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let addr = |n: &Node| n.broker.as_ref().unwrap().addr.clone();
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    create_topic(&addr(&nodes[0]), "t", &["--partitions", "1"]).expect("created");
    elected(&addr(&nodes[0]), "t", &ids, &[]);
    let lines: String = (0..300).map(|i| format!("v{i}\n")).collect();
    cli(
        &["produce", "t", "--acks", "all", "--broker", &addr(&nodes[0])],
        Some(&lines),
    )
    .expect("produced");

    let script = r#"
import sys
from kafka import KafkaConsumer, TopicPartition, ConsumerRebalanceListener
assigned = []
class Count(ConsumerRebalanceListener):
    def on_partitions_revoked(self, revoked): pass
    def on_partitions_assigned(self, partitions): assigned.append(len(partitions))
c = KafkaConsumer(bootstrap_servers=sys.argv[1].split(","), group_id="g", auto_offset_reset="earliest",
                  enable_auto_commit=False, consumer_timeout_ms=30000, session_timeout_ms=10000,
                  heartbeat_interval_ms=500, request_timeout_ms=15000)
c.subscribe(["t"], listener=Count())
seen = []
for m in c:
    seen.append(m.offset)
    if len(seen) % 50 == 0:
        c.commit()
        if len(seen) == 100:
            print("coordinator", c._coordinator.coordinator_id, flush=True)
            sys.stdin.readline()
            print("resumed", flush=True)
    if m.offset == 299:
        break
c.commit()
print("committed", c.committed(TopicPartition("t", 0)), flush=True)
print("seen", ",".join(map(str, seen)), flush=True)
print("assignments", len(assigned), flush=True)
c.close()
"#;
    let servers: Vec<String> = nodes
        .iter()
        .map(|n| n.broker.as_ref().unwrap().kafka_addr.clone())
        .collect();
    let mut child = Command::new("python3")
        .args(["-c", script, &servers.join(",")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    // Bounded: a consumer that never gets through is killed, and fails.
    let pid = child.id();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(120));
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    stdout.read_line(&mut line).expect("the consumer's first line");
    let coordinator: u64 = line
        .strip_prefix("coordinator ")
        // kafka-python names the coordinator's connection
        // `coordinator-<broker id>`.
        .map(|id| id.trim().trim_start_matches("coordinator-"))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| {
            let _ = child.kill();
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
            panic!("no coordinator named: {line:?}\n{stderr}")
        });
    // Broker ids name (node, shard) pairs when shards have ports.
    let node = if coordinator >= 1000 {
        coordinator / 1000
    } else {
        coordinator
    };
    let victim = nodes.iter().position(|n| n.id == node).expect("a node's broker id");
    nodes[victim].broker.take().unwrap().kill9();
    writeln!(stdin, "go").expect("the consumer goes on");
    let output = child.wait_with_output().expect("the consumer ends");
    let stdout: String = std::io::Read::bytes(stdout)
        .map(|b| b.unwrap() as char)
        .chain(String::from_utf8_lossy(&output.stdout).chars())
        .collect();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("committed 300"),
        "every record committed through the new coordinator: {stdout}\n{stderr}"
    );
    let seen: Vec<u64> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("seen "))
        .expect("offsets seen")
        .split(',')
        .map(|o| o.parse().unwrap())
        .collect();
    assert_eq!(seen[..100], (0..100).collect::<Vec<u64>>()[..]);
    let mut furthest = 99;
    for &offset in &seen[100..] {
        assert!(offset <= furthest + 1, "skipped to {offset} after {furthest}: {seen:?}");
        assert!(offset >= 100, "read {offset} again, before the commit at 100: {seen:?}");
        furthest = furthest.max(offset);
    }
    assert_eq!(furthest, 299);
    assert!(
        stdout.contains("assignments 1\n"),
        "the new coordinator knew the member: no second rebalance: {stdout}"
    );
    stop_all(&mut nodes);
}

/// One direction of the traffic between two nodes (each node sends over
/// connections of its own), through a proxy the test can cut: cut, it
/// drops every connection it carries and every new one, until healed.
struct Link {
    addr: String,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Link {
    /// How long a pump waits on a quiet socket before it looks at the flags.
    const POLL: Duration = Duration::from_millis(20);

    fn start(to: String) -> Link {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a proxy port");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (cut, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let flags = (cut.clone(), stop.clone());
        std::thread::spawn(move || {
            let (cut, stop) = flags;
            while !stop.load(Ordering::Relaxed) {
                let inbound = match listener.accept() {
                    Ok((inbound, _)) => inbound,
                    Err(_) => {
                        std::thread::sleep(Self::POLL);
                        continue;
                    }
                };
                if cut.load(Ordering::Relaxed) {
                    continue; // dropped: the sender sees its link fail
                }
                let Ok(outbound) = std::net::TcpStream::connect(&to) else {
                    continue;
                };
                for (from, into) in [
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                    (outbound, inbound),
                ] {
                    let (cut, stop) = (cut.clone(), stop.clone());
                    std::thread::spawn(move || Self::pump(from, into, &cut, &stop));
                }
            }
        });
        Link { addr, cut, stop }
    }

    fn pump(mut from: std::net::TcpStream, mut into: std::net::TcpStream, cut: &AtomicBool, stop: &AtomicBool) {
        use std::io::Read;
        from.set_nonblocking(false).unwrap();
        from.set_read_timeout(Some(Self::POLL)).unwrap();
        let mut buffer = vec![0u8; 64 << 10];
        loop {
            if cut.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed) {
                break;
            }
            match from.read(&mut buffer) {
                Ok(0) => break,
                // Bytes read once the link is cut are dropped, not passed
                // on: the cut takes effect at once, not after the read.
                Ok(_) if cut.load(Ordering::SeqCst) => break,
                Ok(n) => {
                    if into.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        let _ = from.shutdown(std::net::Shutdown::Both);
        let _ = into.shutdown(std::net::Shutdown::Both);
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A cluster whose nodes reach each other only through `Link`s: node i
/// names node j at the proxy of links[(i, j)].
fn cluster_through_links(n: u64) -> (Vec<Node>, BTreeMap<(u64, u64), Link>) {
    let rpcs: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let mut links = BTreeMap::new();
    for from in 1..=n {
        for to in (1..=n).filter(|&to| to != from) {
            links.insert((from, to), Link::start(rpcs[to as usize - 1].clone()));
        }
    }
    let mut nodes: Vec<Node> = (1..=n)
        .map(|id| {
            let rpc = rpcs[id as usize - 1].clone();
            let peers: Vec<String> = (1..=n)
                .map(|to| {
                    let at = if to == id { &rpc } else { &links[&(id, to)].addr };
                    format!("\"{to}@{at}\"")
                })
                .collect();
            Node {
                id,
                rpc: rpc.clone(),
                dir: data_dir(),
                config: format!(
                    "node_id = {id}\nrpc_listen = \"{rpc}\"\npeers = [{}]\n",
                    peers.join(", ")
                ),
                broker: None,
                listens: Some(fixed_listens()),
            }
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    (nodes, links)
}

/// Every batch of a stopped node's partition, read from its files: the
/// bytes each replica holds.
fn stored_batches(data_dir: &std::path::Path, topic: &str, partition: u32) -> Vec<Vec<u8>> {
    let dir = data_dir.join(format!("{topic}-{partition}"));
    run(async move {
        let log = storage::PartitionLog::open(&dir, storage::LogConfig::default())
            .await
            .expect("the replica's log opens");
        let mut batches = Vec::new();
        let mut at = log.log_start_offset();
        while at < log.log_end_offset() {
            let read = log.read(at, 1 << 20).await.expect("a read");
            for frame in storage::batch::frames(&read.bytes) {
                batches.push(frame.to_vec());
            }
            assert!(read.next_offset > at, "the read moves on");
            at = read.next_offset;
        }
        log.close().await.expect("closed");
        batches
    })
}

/// A leader cut off from both other nodes (every link to and from it
/// dropped) acknowledges nothing more: the others elect a leader in a
/// later epoch and take writes. Healed, the old leader's uncommitted batch
/// is answered NOT_LEADER_OR_FOLLOWER, never stored, and every replica
/// holds the same batches at the same offsets, byte for byte.
#[test]
fn an_isolated_leader_acknowledges_nothing_and_its_replicas_agree_byte_for_byte_after_healing() {
    let (mut nodes, links) = cluster_through_links(3);
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let addr = |n: &Node| n.broker.as_ref().unwrap().addr.clone();
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    create_topic(&addr(&nodes[0]), "iso", &[]).expect("created");
    let first = elected(&addr(&nodes[0]), "iso", &ids, &[]);
    let (isolated, epoch) = (first[0].0 as u64, first[0].1);
    let at = |id: u64| nodes.iter().position(|n| n.id == id).unwrap();
    let produce = |through: &str, from: usize, to: usize| {
        let lines: String = (from..to).map(|i| format!("v{i:04}\n")).collect();
        cli(&["produce", "iso", "--acks", "all", "--broker", through], Some(&lines)).expect("produced with acks=all");
    };
    produce(&addr(&nodes[at(isolated)]), 0, 100);

    for ((from, to), link) in &links {
        if *from == isolated || *to == isolated {
            link.set_cut(true);
        }
    }
    // A batch sent to the cut-off leader: it can reach no majority.
    let (answered, answer) = std::sync::mpsc::channel();
    let to_isolated = addr(&nodes[at(isolated)]);
    std::thread::spawn(move || {
        let result = run(async move {
            let mut c = net::client::Connection::connect(&to_isolated).await.unwrap();
            c.produce("iso", 0, &batch_of(0, 0..10), net::messages::acks::ALL).await
        });
        let _ = answered.send(result.map_err(|e| e.to_string()));
    });
    let survivors: Vec<u64> = ids.iter().copied().filter(|&id| id != isolated).collect();
    let survivor = addr(&nodes[at(survivors[0])]);
    let second = elected(&survivor, "iso", &survivors, &[epoch]);
    produce(&survivor, 100, 200);
    // Answered while cut off only if it had stepped down before the batch
    // came (check-quorum): then at once, refused.
    let early = answer.try_recv().ok();
    let refused_early = early.is_some();

    for link in links.values() {
        link.set_cut(false);
    }
    let outcome = match early {
        Some(outcome) => outcome,
        None => answer
            .recv_timeout(AGREE_WITHIN)
            .expect("the isolated leader's batch is answered once healed"),
    };
    let refused = outcome.expect_err("the batch the majority never had is not acknowledged");
    assert!(refused.contains("NotLeaderOrFollower"), "{refused}");
    eprintln!(
        "the isolated leader's batch was refused {}",
        if refused_early { "while cut off" } else { "once healed" }
    );
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    for node in &nodes {
        let now = elected(&addr(node), "iso", &ids, &[]);
        assert!(now[0].1 >= second[0].1, "node {}: epoch went back", node.id);
    }
    let expected: Vec<String> = (0..200).map(|i| format!("v{i:04}")).collect();
    assert_eq!(read_sorted(&survivor, "iso", 200), expected);

    stop_all(&mut nodes);
    let stored: Vec<Vec<Vec<u8>>> = nodes.iter().map(|n| stored_batches(n.dir.path(), "iso", 0)).collect();
    assert!(!stored[0].is_empty());
    for (node, batches) in nodes.iter().zip(&stored).skip(1) {
        assert!(
            *batches == stored[0],
            "node {} holds other bytes than node {}",
            node.id,
            nodes[0].id
        );
    }
}

/// The controller's leader is killed (-9) just after a follower forwarded
/// it a topic's creation: the topic ends up whole on every node (every
/// partition with its two replicas' directories, each electing a leader,
/// every node describing the same replicas) or absent from all; and if
/// the creation was answered as done, it is there.
#[test]
fn a_topic_created_as_the_controllers_leader_dies_is_whole_or_absent_everywhere() {
    const PARTITIONS: u32 = 12;
    let mut nodes = cluster(3);
    let (leader, _) = agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let addr = |n: &Node| n.broker.as_ref().unwrap().addr.clone();
    let lost = nodes.iter().position(|n| n.id == leader).unwrap();
    let through = addr(&nodes[(lost + 1) % nodes.len()]);
    let creating = std::thread::spawn(move || {
        create_topic(
            &through,
            "half",
            &["--partitions", &PARTITIONS.to_string(), "--replication-factor", "2"],
        )
    });
    // Long enough for the command to be on its way, too short for it to
    // be applied everywhere.
    std::thread::sleep(Duration::from_millis(30));
    nodes[lost].broker.take().unwrap().kill9();
    let created = creating.join().expect("the CLI finishes");
    nodes[lost].start();
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);

    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    let described: Vec<_> = nodes.iter().map(|n| leaders(&addr(n), "half")).collect();
    let dirs = |p: u32| {
        nodes
            .iter()
            .filter(|n| n.dir.path().join(format!("half-{p}")).exists())
            .count()
    };
    if described.iter().all(|d| d.is_err()) {
        assert!(created.is_err(), "answered as created, absent everywhere: {created:?}");
        assert!(
            (0..PARTITIONS).all(|p| dirs(p) == 0),
            "absent, yet a directory was made"
        );
        eprintln!("the topic is absent everywhere");
    } else {
        // Present on one node: whole on all, once each has applied it.
        for node in &nodes {
            let partitions = elected(&addr(node), "half", &ids, &[]);
            assert_eq!(partitions.len(), PARTITIONS as usize, "node {}", node.id);
            assert!(partitions.iter().all(|p| p.2 == 2), "node {}: {partitions:?}", node.id);
        }
        let started = Instant::now();
        while !(0..PARTITIONS).all(|p| dirs(p) == 2) {
            assert!(started.elapsed() < AGREE_WITHIN, "not every replica was opened");
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("the topic is whole everywhere (creation answered: {})", created.is_ok());
    }
    stop_all(&mut nodes);
}

/// Four nodes, three replicas a partition: every node names each
/// partition's leader and epoch, the node that hosts no replica of it
/// included (it learns it from the leader's announcements), and after a
/// leader's node is killed, the next leader in a later epoch.
#[test]
fn a_node_hosting_no_replica_names_each_partitions_leader_and_epoch() {
    let mut nodes = cluster(4);
    agreed(&nodes.iter().collect::<Vec<_>>(), 4);
    let addr = |n: &Node| n.broker.as_ref().unwrap().addr.clone();
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    create_topic(
        &addr(&nodes[0]),
        "learned",
        &["--partitions", "4", "--replication-factor", "3"],
    )
    .expect("created");
    let first = elected(&addr(&nodes[0]), "learned", &ids, &[]);
    // Each partition lives on three of the four nodes: the fourth learns
    // who leads it.
    for p in 0..4 {
        let hosts = nodes
            .iter()
            .filter(|n| n.dir.path().join(format!("learned-{p}")).exists());
        assert_eq!(hosts.count(), 3, "partition {p}");
    }
    let agree = |live: &[&Node], above: &[i64]| {
        let started = Instant::now();
        loop {
            let seen: Vec<_> = live.iter().map(|n| elected(&addr(n), "learned", &ids, above)).collect();
            if seen.iter().all(|s| *s == seen[0]) {
                return seen[0].clone();
            }
            assert!(
                started.elapsed() < AGREE_WITHIN,
                "the nodes name other leaders: {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(agree(&nodes.iter().collect::<Vec<_>>(), &[]), first);

    let lost = first[0].0 as u64;
    let lost_index = nodes.iter().position(|n| n.id == lost).unwrap();
    nodes[lost_index].broker.take().unwrap().kill9();
    let above: Vec<i64> = first
        .iter()
        .map(|&(leader, epoch, _)| if leader as u64 == lost { epoch } else { 0 })
        .collect();
    let live: Vec<&Node> = nodes.iter().filter(|n| n.id != lost).collect();
    let survivors: Vec<u64> = live.iter().map(|n| n.id).collect();
    let second = agree(&live, &above);
    assert!(second.iter().all(|p| survivors.contains(&(p.0 as u64))), "{second:?}");
    stop_all(&mut nodes);
}

/// Whether confluent-kafka is there; under CI its absence fails the test.
fn confluent_kafka() -> bool {
    available(
        "confluent-kafka",
        Command::new("python3").args(["-c", "import confluent_kafka"]),
    )
}

/// A script of `tests/kafka_clients` run with `args`, its stdin and stdout
/// piped; its stderr goes to the file `KAFKA_CLIENT_STDERR` names, if set.
/// Bounded: a script that never gets through is killed after 300 s (and
/// its test fails on its missing output).
fn kafka_client_script(script: &str, args: &[&str]) -> std::process::Child {
    let path = format!("{}/tests/kafka_clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let child = Command::new("python3")
        .arg(path)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(match std::env::var_os("KAFKA_CLIENT_STDERR") {
            Some(path) => std::process::Stdio::from(std::fs::File::create(path).expect("a stderr file")),
            None => std::process::Stdio::null(),
        })
        .spawn()
        .expect("python3 runs");
    let pid = child.id();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(300));
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    child
}

/// What the failover script saw (`tests/kafka_clients/failover.py`).
#[derive(serde::Deserialize)]
struct ClientsSaw {
    sent: u64,
    /// (value, partition, offset) the producer was told.
    acked: Vec<(String, i32, i64)>,
    errors: Vec<String>,
    /// (partition, offset, value) in the order the consumer read them.
    consumed: Vec<(i32, i64, String)>,
}

/// Checks what clients saw through failovers, as a Jepsen-style checker
/// does: no error reached the application, every acknowledged value was
/// read at the offset it was acknowledged at, no offset holds two values,
/// no value sits at two offsets, and each partition was read from 0 with
/// no gap and never going back.
fn check_what_clients_saw(saw: &ClientsSaw, partitions: i32) {
    assert!(saw.errors.is_empty(), "the clients saw errors: {:?}", saw.errors);
    assert!(!saw.acked.is_empty(), "nothing was acknowledged");
    assert_eq!(
        saw.acked.len() as u64,
        saw.sent,
        "values sent but never acknowledged (the producer stalled)"
    );
    let mut at_offset: BTreeMap<(i32, i64), &str> = BTreeMap::new();
    let mut next: BTreeMap<i32, i64> = (0..partitions).map(|p| (p, 0)).collect();
    for (partition, offset, value) in &saw.consumed {
        let expected = next.get_mut(partition).expect("a partition of the topic");
        if *offset < *expected {
            // librdkafka may fetch an offset again after a leader change;
            // what it gets must be what it got before.
            assert_eq!(
                at_offset.get(&(*partition, *offset)),
                Some(&value.as_str()),
                "partition {partition} offset {offset} read again with another value"
            );
            continue;
        }
        assert_eq!(*offset, *expected, "partition {partition}: the consumer skipped");
        *expected += 1;
        at_offset.insert((*partition, *offset), value);
    }
    let mut where_stored: BTreeMap<&str, (i32, i64)> = BTreeMap::new();
    for (&(partition, offset), &value) in &at_offset {
        if let Some(before) = where_stored.insert(value, (partition, offset)) {
            panic!("{value} stored twice: at {before:?} and at ({partition}, {offset})");
        }
    }
    for (value, partition, offset) in &saw.acked {
        assert_eq!(
            at_offset.get(&(*partition, *offset)),
            Some(&value.as_str()),
            "{value}, acknowledged at ({partition}, {offset}), is not what the consumer read there"
        );
    }
    eprintln!(
        "checked: {} sent, {} acknowledged, {} read ({} distinct)",
        saw.sent,
        saw.acked.len(),
        saw.consumed.len(),
        at_offset.len()
    );
}

/// An unchanged librdkafka client (confluent-kafka's idempotent producer,
/// acks=all, and a consumer) writes and reads while partition leaders are
/// killed (-9) again and again and one is paused past the election timeout
/// (SIGSTOP, then SIGCONT). The checker over what both saw finds no error,
/// nothing acknowledged lost, no offset with two values, no value twice,
/// no consumer skipping or going back.
#[test]
fn librdkafka_clients_ride_through_repeated_leader_kills_and_a_pause() {
    const PARTITIONS: i32 = 2;
    const KILLS: usize = 3;
    if !confluent_kafka() {
        return;
    }
    let mut nodes = cluster(3);
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let addr = |n: &Node| n.broker.as_ref().unwrap().addr.clone();
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    create_topic(&addr(&nodes[0]), "ride", &["--partitions", &PARTITIONS.to_string()]).expect("created");
    elected(&addr(&nodes[0]), "ride", &ids, &[]);
    let servers: Vec<String> = nodes
        .iter()
        .map(|n| n.broker.as_ref().unwrap().kafka_addr.clone())
        .collect();
    let mut child = kafka_client_script("failover.py", &[&servers.join(","), "ride", &PARTITIONS.to_string()]);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    stdout.read_line(&mut line).expect("the clients' first line");
    assert_eq!(line.trim(), "started");

    // Each round: partition 0's leader killed, a new one elected in a later
    // epoch while the clients go on, the killed node started again.
    for round in 0..KILLS {
        let live: Vec<u64> = nodes.iter().filter(|n| n.broker.is_some()).map(|n| n.id).collect();
        let any = addr(&nodes[round % nodes.len()]);
        let before = elected(&any, "ride", &live, &[]);
        let lost = before[0].0 as u64;
        let at = nodes.iter().position(|n| n.id == lost).unwrap();
        nodes[at].broker.take().unwrap().kill9();
        let survivors: Vec<u64> = ids.iter().copied().filter(|&id| id != lost).collect();
        let survivor = addr(nodes.iter().find(|n| n.id == survivors[0]).unwrap());
        elected(&survivor, "ride", &survivors, &[before[0].1]);
        std::thread::sleep(Duration::from_millis(1500));
        nodes[at].start();
        agreed(&nodes.iter().collect::<Vec<_>>(), 3);
        std::thread::sleep(Duration::from_millis(1000));
    }
    // Then partition 1's leader paused past the election timeout.
    let before = elected(&addr(&nodes[0]), "ride", &ids, &[]);
    let paused = nodes.iter().find(|n| n.id == before[1].0 as u64).unwrap();
    let pid = paused.broker.as_ref().unwrap().pid().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().expect("kill -STOP");
    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != paused.id).collect();
    let other = addr(nodes.iter().find(|n| n.id == others[0]).unwrap());
    elected(&other, "ride", &others, &[0, before[1].1]);
    std::thread::sleep(Duration::from_millis(1500));
    Command::new("kill").args(["-CONT", &pid]).status().expect("kill -CONT");
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    std::thread::sleep(Duration::from_millis(1000));

    writeln!(stdin, "stop").expect("the clients are still running");
    line.clear();
    stdout.read_line(&mut line).expect("what the clients saw");
    let saw: ClientsSaw = serde_json::from_str(&line).expect("the clients' JSON line");
    let _ = child.wait();
    check_what_clients_saw(&saw, PARTITIONS);
    stop_all(&mut nodes);
}

/// The Kafka clients written in Python itself, each with its own metadata
/// and retry logic (aiokafka's and kafka-python's idempotent producers,
/// acks=all, and their consumers), write and read at once, each on a topic
/// of its own, while the leader of each topic's first partition is killed
/// (-9) in turn. The checker over what each saw finds no error, nothing
/// acknowledged lost, no offset with two values, no value twice, no
/// consumer skipping or going back.
#[test]
fn python_kafka_clients_ride_through_leader_kills() {
    const PARTITIONS: i32 = 2;
    const CLIENTS: [&str; 2] = ["aiokafka", "kafka-python"];
    let has =
        |name: &str, module: &str| available(name, Command::new("python3").args(["-c", &format!("import {module}")]));
    if !has("aiokafka", "aiokafka") || !has("kafka-python", "kafka") {
        return;
    }
    let mut nodes = cluster(3);
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let addr = |n: &Node| n.broker.as_ref().unwrap().addr.clone();
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    let topic = |client: &str| format!("ride-{client}");
    let servers: Vec<String> = nodes
        .iter()
        .map(|n| n.broker.as_ref().unwrap().kafka_addr.clone())
        .collect();
    let mut children = Vec::new();
    for client in CLIENTS {
        create_topic(
            &addr(&nodes[0]),
            &topic(client),
            &["--partitions", &PARTITIONS.to_string()],
        )
        .expect("created");
        elected(&addr(&nodes[0]), &topic(client), &ids, &[]);
        let mut child = kafka_client_script(
            "failover_python.py",
            &[client, &servers.join(","), &topic(client), &PARTITIONS.to_string()],
        );
        let stdin = child.stdin.take().unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        use std::io::BufRead;
        stdout.read_line(&mut line).expect("the clients' first line");
        assert_eq!(line.trim(), "started", "{client}");
        children.push((client, child, stdin, stdout));
    }

    // Each round: the leader of one client's topic's first partition
    // killed, a new one elected in a later epoch while the clients go on,
    // the killed node started again.
    for (round, client) in CLIENTS.iter().enumerate() {
        let live: Vec<u64> = nodes.iter().filter(|n| n.broker.is_some()).map(|n| n.id).collect();
        let before = elected(&addr(&nodes[round % nodes.len()]), &topic(client), &live, &[]);
        let lost = before[0].0 as u64;
        let at = nodes.iter().position(|n| n.id == lost).unwrap();
        nodes[at].broker.take().unwrap().kill9();
        let survivors: Vec<u64> = ids.iter().copied().filter(|&id| id != lost).collect();
        let survivor = addr(nodes.iter().find(|n| n.id == survivors[0]).unwrap());
        elected(&survivor, &topic(client), &survivors, &[before[0].1]);
        std::thread::sleep(Duration::from_millis(1500));
        nodes[at].start();
        agreed(&nodes.iter().collect::<Vec<_>>(), 3);
        std::thread::sleep(Duration::from_millis(1000));
    }

    for (_, _, stdin, _) in &mut children {
        writeln!(stdin, "stop").expect("the clients are still running");
    }
    for (client, mut child, _, mut stdout) in children {
        use std::io::BufRead;
        let mut line = String::new();
        stdout.read_line(&mut line).expect("what the clients saw");
        let saw: ClientsSaw =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{client}'s JSON line ({e}): {line:?}"));
        let _ = child.wait();
        eprintln!("{client}:");
        check_what_clients_saw(&saw, PARTITIONS);
    }
    stop_all(&mut nodes);
}

/// The node coordinating `transactional_id`, as a Kafka client finds it.
fn txn_coordinator(kafka_addr: &str, transactional_id: &str) -> Option<u64> {
    coordinator_node(kafka_addr, transactional_id, 1)
}

/// The node coordinating a key of Kafka's `key_type` (0 a group, 1 a
/// transactional id).
fn coordinator_node(kafka_addr: &str, key: &str, key_type: i8) -> Option<u64> {
    use net::kafka::kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
    use net::kafka::kafka_protocol::protocol::StrBytes;
    let request = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_string(key.to_string()))
        .with_key_type(key_type);
    let answer: FindCoordinatorResponse = common::kafka_call(kafka_addr, ApiKey::FindCoordinator, 3, &request);
    let broker = u64::try_from(answer.node_id.0)
        .ok()
        .filter(|_| answer.error_code == 0)?;
    let per_node = net::cluster::BROKER_IDS_PER_NODE;
    Some(if broker >= per_node { broker / per_node } else { broker })
}

/// A librdkafka transactional producer writes transactions that span every
/// partition (their leaders on all three nodes, so its coordinator's
/// markers go to other nodes), committing three of four and aborting the
/// fourth, while its coordinator's node is killed (-9) and later started
/// again: the producer goes on, and a read_committed consumer reads every
/// committed value once and no aborted one.
#[test]
fn a_transaction_spans_nodes_and_survives_its_coordinators_loss() {
    const PARTITIONS: u32 = 3;
    if !confluent_kafka() {
        return;
    }
    let mut nodes = cluster(3);
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let addr = |n: &Node| n.broker.as_ref().unwrap().addr.clone();
    let kafka = |n: &Node| n.broker.as_ref().unwrap().kafka_addr.clone();
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    create_topic(&addr(&nodes[0]), "txns", &["--partitions", &PARTITIONS.to_string()]).expect("created");
    elected(&addr(&nodes[0]), "txns", &ids, &[]);
    // One partition led on each node: whichever node coordinates, some of
    // its markers go to other nodes.
    for (p, node) in nodes.iter().enumerate() {
        transfer_leader(&addr(&nodes[0]), "txns", p as u32, node.id).expect("moved");
    }
    let leaders = elected(&addr(&nodes[0]), "txns", &ids, &[]);
    let leading: std::collections::BTreeSet<i64> = leaders.iter().map(|l| l.0).collect();
    assert_eq!(leading.len(), 3, "{leaders:?}");

    let servers: Vec<String> = nodes.iter().map(kafka).collect();
    let mut child = kafka_client_script(
        "transactions.py",
        &[&servers.join(","), "txns", &PARTITIONS.to_string()],
    );
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    use std::io::BufRead;
    let mut wait_for = |wanted: &dyn Fn(&str) -> bool| {
        let mut line = String::new();
        loop {
            line.clear();
            let read = stdout.read_line(&mut line).expect("the producer's output");
            assert!(read > 0, "the producer stopped early");
            if wanted(line.trim()) {
                return line.trim().to_string();
            }
        }
    };
    wait_for(&|l| l == "ready");
    wait_for(&|l| l == "txn 8");

    let coordinator = txn_coordinator(&kafka(&nodes[0]), "cluster-ride").expect("a coordinator");
    eprintln!("coordinator: node {coordinator}; partitions led on nodes {leading:?}");
    let lost = nodes.iter().position(|n| n.id == coordinator).unwrap();
    nodes[lost].broker.take().unwrap().kill9();
    let survivor = nodes.iter().find(|n| n.id != coordinator).unwrap();
    let started = Instant::now();
    let moved = loop {
        if let Some(now) = txn_coordinator(&kafka(survivor), "cluster-ride").filter(|&n| n != coordinator) {
            break now;
        }
        assert!(started.elapsed() < AGREE_WITHIN, "no new coordinator");
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("coordinator moved to node {moved}");
    // Transactions go on with the coordinator's node gone...
    let after_kill: u64 = wait_for(&|l| l.starts_with("txn "))[4..].parse().unwrap();
    wait_for(&|l| l == format!("txn {}", after_kill + 4));
    // ...and once it is back.
    nodes[lost].start();
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    wait_for(&|l| l == format!("txn {}", after_kill + 8));
    writeln!(stdin, "stop").expect("the producer is still running");
    let last = wait_for(&|l| l.starts_with('{'));
    let _ = child.wait();
    let saw: serde_json::Value = serde_json::from_str(&last).expect("the producer's JSON line");
    eprintln!("{saw}");
    assert_eq!(saw["errors"], serde_json::json!([]), "the application saw errors");
    assert_eq!(saw["missing"], serde_json::json!([]), "committed values not read");
    assert_eq!(saw["twice"], serde_json::json!([]), "committed values read twice");
    assert_eq!(saw["aborted_read"], serde_json::json!([]), "aborted values read");
    assert!(saw["committed"].as_u64().unwrap() > 0);
    stop_all(&mut nodes);
}

/// `corelog topic transfer-leader` through `addr`.
fn transfer_leader(addr: &str, topic: &str, partition: u32, to: u64) -> Result<String, String> {
    cli(
        &[
            "topic",
            "transfer-leader",
            topic,
            "--partition",
            &partition.to_string(),
            "--to",
            &to.to_string(),
            "--broker",
            addr,
        ],
        None,
    )
}

/// Each partition's leadership moved where it is asked, through a node
/// that may lead none of them (the request goes to the node that should
/// lead): answered once it leads, in a later epoch, every node naming it;
/// writes go on through it. A node with no replica, or a partition of one
/// replica, is refused by name.
#[test]
fn a_partitions_leadership_moves_to_the_replica_asked() {
    const PARTITIONS: u32 = 3;
    let mut nodes = cluster(3);
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let addr = |n: &Node| n.broker.as_ref().unwrap().addr.clone();
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    create_topic(&addr(&nodes[0]), "moved", &["--partitions", &PARTITIONS.to_string()]).expect("created");
    let mut before = elected(&addr(&nodes[0]), "moved", &ids, &[]);
    for round in 0..2u64 {
        for p in 0..PARTITIONS {
            let to = ids[((u64::from(p) + round) % 3) as usize];
            let through = addr(&nodes[(p as usize + 1) % 3]);
            transfer_leader(&through, "moved", p, to).expect("moved");
            for node in &nodes {
                let now = elected(&addr(node), "moved", &ids, &[]);
                assert_eq!(now[p as usize].0 as u64, to, "node {} names another leader", node.id);
                if before[p as usize].0 as u64 != to {
                    assert!(
                        now[p as usize].1 > before[p as usize].1,
                        "a new leader in a later epoch"
                    );
                }
            }
            before = elected(&addr(&nodes[0]), "moved", &ids, &[]);
        }
    }
    let lines: String = (0..300).map(|i| format!("v{i:03}\n")).collect();
    cli(
        &["produce", "moved", "--acks", "all", "--broker", &addr(&nodes[2])],
        Some(&lines),
    )
    .expect("produced");
    assert_eq!(read_sorted(&addr(&nodes[1]), "moved", 300).len(), 300);

    let refused = transfer_leader(&addr(&nodes[0]), "moved", 0, 9).expect_err("no replica on node 9");
    assert!(refused.contains("no replica on node 9"), "{refused}");
    create_topic(&addr(&nodes[0]), "single", &["--replication-factor", "1"]).expect("created");
    let refused = transfer_leader(&addr(&nodes[0]), "single", 0, 1).expect_err("one replica");
    assert!(refused.contains("one replica"), "{refused}");
    stop_all(&mut nodes);
}

/// corelog's own GroupConsumer finds its group's coordinator (native
/// FindCoordinator) and finds it again when the coordinator's node, which
/// also leads the partition it reads, is killed (-9): it goes on consuming
/// (from the next leader) and committing in the same generation, reading
/// every record once, in order, and its last commit is the partition's end.
#[test]
fn corelogs_group_consumer_follows_its_coordinator_through_its_loss() {
    use net::group::{GroupConfig, GroupConsumer};
    const RECORDS: usize = 300;
    let mut nodes = cluster(3);
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let addr = |n: &Node| n.broker.as_ref().unwrap().addr.clone();
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    create_topic(&addr(&nodes[0]), "grouped", &[]).expect("created");
    elected(&addr(&nodes[0]), "grouped", &ids, &[]);
    let lines: String = (0..RECORDS).map(|i| format!("v{i:04}\n")).collect();
    cli(
        &["produce", "grouped", "--acks", "all", "--broker", &addr(&nodes[0])],
        Some(&lines),
    )
    .expect("produced");
    let kafka = nodes[0].broker.as_ref().unwrap().kafka_addr.clone();
    let coordinator = coordinator_node(&kafka, "native-group", 0).expect("a coordinator");
    let lost = nodes.iter().position(|n| n.id == coordinator).unwrap();
    // The partition is led there too: the kill takes both its leader and
    // the group's coordinator.
    transfer_leader(&addr(&nodes[0]), "grouped", 0, coordinator).expect("moved");
    // Bootstrapped from a node that stays: the coordinator is found anew
    // through it (and through the other brokers it named).
    let bootstrap = addr(&nodes[(lost + 1) % nodes.len()]);

    let (to_test, halfway) = std::sync::mpsc::channel::<i32>();
    let (to_consumer, go_on) = std::sync::mpsc::channel::<()>();
    let consuming = std::thread::spawn(move || {
        run(async move {
            let config = GroupConfig {
                session_timeout: Duration::from_secs(10),
                rebalance_timeout: Duration::from_secs(20),
                heartbeat_interval: Duration::from_millis(200),
                max_wait_ms: 100,
                auto_commit: None,
                ..GroupConfig::new("native-group", &["grouped"])
            };
            let mut member = GroupConsumer::join(&bootstrap, config).await.expect("joined");
            let generation = member.generation();
            let mut read = Vec::new();
            let mut told = false;
            while read.len() < RECORDS {
                for record in member.poll().await.expect("polled through the loss") {
                    read.push(String::from_utf8(record.record.value.unwrap()).unwrap());
                }
                if read.len() >= RECORDS / 3 && !told {
                    member.commit_sync().await.expect("committed");
                    to_test.send(member.generation()).unwrap();
                    go_on.recv().unwrap();
                    told = true;
                }
            }
            member.commit_sync().await.expect("committed after the loss");
            let after = member.generation();
            member.close().await.expect("left");
            (read, generation, after)
        })
    });
    halfway.recv().expect("the consumer got a third of the way");
    nodes[lost].broker.take().unwrap().kill9();
    to_consumer.send(()).unwrap();
    let (read, generation, after) = consuming.join().expect("the consumer finished");
    let expected: Vec<String> = (0..RECORDS).map(|i| format!("v{i:04}")).collect();
    assert_eq!(read, expected, "every record once, in order");
    assert_eq!(generation, after, "no rebalance through the coordinator's loss");

    // Its commit is where a new member of the group starts.
    let survivor = addr(&nodes[(lost + 1) % nodes.len()]);
    let committed = run(async move {
        let mut c = net::client::Connection::connect(&survivor).await.unwrap();
        let at = c.find_coordinator("native-group", false).await.unwrap();
        let mut coordinator = net::client::Connection::connect(&at).await.unwrap();
        coordinator.fetch_offsets("native-group", None).await.unwrap()
    });
    assert_eq!(committed, vec![("grouped".to_string(), 0, Some(RECORDS as u64))]);
    nodes[lost].start();
    stop_all(&mut nodes);
}

/// A node's incarnation as `node`'s controller metadata has it.
fn incarnation(rpc: &str, node: u64) -> Option<u64> {
    status(rpc)?["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"].as_u64() == Some(node))?["incarnation"]
        .as_u64()
}

/// A node whose data directory was lost comes back under its old id as a
/// new incarnation (a new Raft member in every group, KIP-853's directory
/// id), and the others refill it: it ends up holding every record, can
/// lead each partition, and counts in the majorities, of the controller's
/// group and the partitions', that the loss of another node leaves.
#[test]
fn a_node_that_lost_its_data_directory_rejoins_and_is_refilled() {
    const RECORDS: usize = 600;
    let mut nodes = cluster(3);
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let addr = |n: &Node| n.broker.as_ref().unwrap().addr.clone();
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    create_topic(&addr(&nodes[0]), "refill", &["--partitions", "2"]).expect("created");
    elected(&addr(&nodes[0]), "refill", &ids, &[]);
    let value = |i: usize| format!("r{i:05}");
    let produce = |through: &str, range: std::ops::Range<usize>| {
        let lines: String = range.map(|i| value(i) + "\n").collect();
        cli(
            &["produce", "refill", "--acks", "all", "--broker", through],
            Some(&lines),
        )
    };
    produce(&addr(&nodes[0]), 0..RECORDS / 2).expect("produced");

    // Node 3 loses its data directory, and more is written without it.
    let lost = 2;
    nodes[lost].broker.take().unwrap().kill9();
    std::fs::remove_dir_all(nodes[lost].dir.path()).unwrap();
    std::fs::create_dir_all(nodes[lost].dir.path()).unwrap();
    let started = Instant::now();
    while let Err(e) = produce(&addr(&nodes[0]), RECORDS / 2..RECORDS) {
        assert!(started.elapsed() < AGREE_WITHIN, "the two others take no writes: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(incarnation(&nodes[0].rpc, 3), Some(0));

    nodes[lost].start();
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    for node in &nodes {
        assert_eq!(
            incarnation(&node.rpc, 3),
            Some(1),
            "node {} knows node 3's comeback",
            node.id
        );
    }
    // It leads each partition once it holds the whole log, and serves it.
    for partition in 0..2 {
        let started = Instant::now();
        while let Err(e) = transfer_leader(&addr(&nodes[0]), "refill", partition, 3) {
            assert!(started.elapsed() < AGREE_WITHIN * 2, "node 3 never caught up: {e}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let expected: Vec<String> = (0..RECORDS).map(value).collect();
    assert_eq!(read_sorted(&addr(&nodes[lost]), "refill", RECORDS), expected);
    // Its metrics say it leads, in a later epoch, with all three in sync;
    // node 1's that it does not.
    let metrics = |n: &Node| get(&n.broker.as_ref().unwrap().metrics_addr, "/metrics").1;
    let p0 = [("topic", "refill"), ("partition", "0")];
    let text = metrics(&nodes[lost]);
    assert_eq!(metric(&text, "corelog_partition_leader", &p0), Some(1.0), "{text}");
    assert_eq!(metric(&text, "corelog_partition_in_sync_replicas", &p0), Some(3.0));
    assert!(metric(&text, "corelog_partition_leader_epoch", &p0).is_some_and(|e| e >= 2.0));
    assert!(metric(&text, "corelog_partition_leader_changes_total", &p0).is_some_and(|c| c >= 1.0));
    assert!(metric(&text, "corelog_partition_follower_lag_entries", &p0).is_some());
    assert_eq!(metric(&metrics(&nodes[0]), "corelog_partition_leader", &p0), Some(0.0));

    // Started again, it is the same incarnation (its directory says so).
    nodes[lost].broker.take().unwrap().stop();
    nodes[lost].start();
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    assert_eq!(incarnation(&nodes[lost].rpc, 3), Some(1));

    // Node 1 goes: node 2 and the new node 3 are the majority of every
    // group, the controller's included.
    nodes[0].broker.take().unwrap().kill9();
    let started = Instant::now();
    while let Err(e) = create_topic(&addr(&nodes[1]), "after", &[]) {
        assert!(
            started.elapsed() < AGREE_WITHIN * 2,
            "no controller without node 1: {e}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = Instant::now();
    while let Err(e) = produce(&addr(&nodes[lost]), RECORDS..RECORDS + 100) {
        assert!(
            started.elapsed() < AGREE_WITHIN * 2,
            "no partition majority without node 1: {e}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every partition led by node 2 or 3 (a consumer does not wait out
    // an election).
    elected(&addr(&nodes[1]), "refill", &[2, 3], &[]);
    let expected: Vec<String> = (0..RECORDS + 100).map(value).collect();
    assert_eq!(read_sorted(&addr(&nodes[1]), "refill", RECORDS + 100), expected);
    stop_all(&mut nodes);
    for partition in 0..2 {
        assert!(
            stored_batches(nodes[1].dir.path(), "refill", partition)
                == stored_batches(nodes[lost].dir.path(), "refill", partition),
            "nodes 2 and 3 hold the same bytes in partition {partition}"
        );
    }
}

/// Retention on a replicated partition: each replica deletes the head of
/// its log that retention lets go. A follower killed meanwhile and started
/// again behind the leader's log start is sent a snapshot: it starts its
/// log there, catches up, and can lead. What it serves, and the bytes it
/// stores, are its leader's.
#[test]
fn a_follower_behind_the_leaders_log_start_catches_up_by_snapshot() {
    const RECORDS: usize = 2000;
    let mut nodes = cluster_with(3, "log_retention_check_interval_ms = 200\n");
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let addr = |n: &Node| n.broker.as_ref().unwrap().addr.clone();
    let kafka = |n: &Node| n.broker.as_ref().unwrap().kafka_addr.clone();
    let at = |nodes: &[Node], id: u64| nodes.iter().position(|n| n.id == id).unwrap();
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    let segment = (64 << 10).to_string();
    create_topic(
        &addr(&nodes[0]),
        "snap",
        &[
            "--config",
            &format!("segment.bytes={segment}"),
            "--config",
            &format!("segment.preallocate.bytes={segment}"),
            "--config",
            "retention.bytes=131072",
        ],
    )
    .expect("created");
    let leader = elected(&addr(&nodes[0]), "snap", &ids, &[])[0].0 as u64;
    let behind = ids.iter().copied().find(|id| *id != leader).unwrap();
    let behind_at = at(&nodes, behind);
    nodes[behind_at].broker.take().unwrap().kill9();
    // Some 400 KB: six segments, of which retention keeps two.
    let value = |i: usize| format!("v{i:05}-{}", "x".repeat(190));
    let through = addr(&nodes[at(&nodes, leader)]);
    for chunk in 0..4 {
        let lines: String = (chunk * RECORDS / 4..(chunk + 1) * RECORDS / 4)
            .map(|i| value(i) + "\n")
            .collect();
        cli(
            &["produce", "snap", "--acks", "all", "--broker", &through],
            Some(&lines),
        )
        .expect("produced");
    }
    let leader_kafka = kafka(&nodes[at(&nodes, leader)]);
    let started = Instant::now();
    let leader_start = loop {
        let (error, start, _) = kafka_list_offset(&leader_kafka, "snap", 0, -1, -2);
        assert_eq!(error, 0);
        if start > 0 {
            break start;
        }
        assert!(
            started.elapsed() < AGREE_WITHIN,
            "retention never moved the leader's log start"
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    nodes[behind_at].start();
    // It leads once it holds the leader's log: then it serves from where
    // the snapshot started it, every record after.
    let started = Instant::now();
    while let Err(e) = transfer_leader(&through, "snap", 0, behind) {
        assert!(
            started.elapsed() < AGREE_WITHIN * 2,
            "the follower never caught up: {e}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let behind_kafka = kafka(&nodes[at(&nodes, behind)]);
    let (error, start, _) = kafka_list_offset(&behind_kafka, "snap", 0, -1, -2);
    // What every node says, for a failure's message.
    let seen = || -> String {
        nodes
            .iter()
            .filter(|n| n.broker.is_some())
            .map(|n| {
                let earliest = kafka_list_offset(&kafka(n), "snap", 0, -1, -2);
                let latest = kafka_latest(&kafka(n), "snap", 0, -1);
                let described = cli(&["topic", "describe", "snap", "--broker", &addr(n)], None);
                format!(
                    "node {}: earliest {earliest:?}, latest {latest:?}, {described:?}\n",
                    n.id
                )
            })
            .collect()
    };
    assert_eq!(error, 0, "{}", seen());
    assert!(
        start >= leader_start,
        "the follower (node {behind}) starts at the leader's snapshot ({start}, the leader's (node {leader}) log \
         start {leader_start}); the nodes say:\n{}",
        seen()
    );
    let (error, end, _) = kafka_latest(&behind_kafka, "snap", 0, -1);
    assert_eq!((error, end), (0, RECORDS as i64));
    let served = read_sorted(&addr(&nodes[at(&nodes, behind)]), "snap", RECORDS - start as usize);
    let expected: Vec<String> = (start as usize..RECORDS).map(value).collect();
    assert!(
        served == expected,
        "the follower serves every record from its log start"
    );
    let lines: String = (RECORDS..RECORDS + 100).map(|i| value(i) + "\n").collect();
    cli(
        &[
            "produce",
            "snap",
            "--acks",
            "all",
            "--broker",
            &addr(&nodes[at(&nodes, behind)]),
        ],
        Some(&lines),
    )
    .expect("the snapshotted replica takes writes");

    stop_all(&mut nodes);
    let stored: Vec<Vec<Vec<u8>>> = nodes.iter().map(|n| stored_batches(n.dir.path(), "snap", 0)).collect();
    let from = stored
        .iter()
        .map(|batches| storage::batch::peek_header(&batches[0]).unwrap().base_offset)
        .max()
        .unwrap();
    let tail = |batches: &Vec<Vec<u8>>| -> Vec<Vec<u8>> {
        batches
            .iter()
            .filter(|b| storage::batch::peek_header(b).unwrap().base_offset >= from)
            .cloned()
            .collect()
    };
    let expected = tail(&stored[0]);
    assert!(!expected.is_empty());
    for (node, batches) in nodes.iter().zip(&stored).skip(1) {
        assert!(
            tail(batches) == expected,
            "node {} holds other bytes than node {} from offset {from}",
            node.id,
            nodes[0].id
        );
    }
}

/// `topic describe` on `addr`: partition `partition`'s log start offset,
/// if that node leads it.
fn log_start(addr: &str, topic: &str, partition: u32) -> Option<u64> {
    let described = cli(&["topic", "describe", topic, "--broker", addr], None).ok()?;
    let prefix = format!("partition {partition} ");
    let line = described
        .lines()
        .map(str::trim_start)
        .find(|l| l.starts_with(&prefix) && l.contains("log_start_offset"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "log_start_offset")?;
    words.get(at + 1)?.parse().ok()
}

/// Waits until `topic describe` on `addr` says what `done` looks for.
fn described_until(addr: &str, topic: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let described = cli(&["topic", "describe", topic, "--broker", addr], None);
        if let Ok(text) = &described {
            if done(text) {
                return text.clone();
            }
        }
        assert!(started.elapsed() < AGREE_WITHIN, "{what} on {addr}: {described:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A topic changed after its creation, through the controller and the
/// partitions' Raft logs: configs altered through a follower of the
/// controller reach every node and are in force where the partitions live
/// (a record over a lowered max.message.bytes is refused, taken once the
/// limit is replaced away); partitions added are placed, elected and take
/// records; records deleted move the log start on every replica, kept
/// through the leader's kill -9 and by the old leader when it leads again.
#[test]
fn topic_configs_partitions_and_log_starts_change_on_every_node() {
    let mut nodes = cluster(3);
    let (controller, _) = agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    let addr = |n: &Node| n.broker.as_ref().unwrap().addr.clone();
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    let follower = addr(nodes.iter().find(|n| n.id != controller).unwrap());
    create_topic(&follower, "adm", &["--partitions", "1"]).expect("created");
    elected(&follower, "adm", &ids, &[]);

    let alter = |args: &[&str]| {
        let mut all = vec!["topic", "alter-config", "adm"];
        all.extend_from_slice(args);
        all.extend(["--broker", &follower]);
        cli(&all, None)
    };
    alter(&["--set", "retention.ms=3600000", "--set", "max.message.bytes=2000"]).expect("altered");
    for node in &nodes {
        described_until(&addr(node), "adm", "the altered configs", |d| {
            d.contains("config max.message.bytes=2000") && d.contains("config retention.ms=3600000")
        });
    }
    let big = format!("{}\n", "x".repeat(5000));
    let produce =
        |through: &str, lines: &str| cli(&["produce", "adm", "--acks", "all", "--broker", through], Some(lines));
    let refused = produce(&follower, &big).expect_err("a record over max.message.bytes is refused");
    assert!(refused.contains("MessageTooLarge"), "{refused}");
    let bad = alter(&["--set", "segment.bytes=big"]).expect_err("a bad value is refused");
    assert!(bad.contains("InvalidConfig"), "{bad}");
    alter(&["--replace", "--set", "retention.ms=60000"]).expect("replaced");
    for node in &nodes {
        described_until(&addr(node), "adm", "the replaced configs", |d| {
            d.contains("config retention.ms=60000") && !d.contains("max.message.bytes")
        });
    }
    produce(&follower, &big).expect("taken once the limit is gone");

    // Partitions added through another node: placed, elected, written.
    cli(
        &[
            "topic",
            "add-partitions",
            "adm",
            "--count",
            "3",
            "--broker",
            &addr(&nodes[2]),
        ],
        None,
    )
    .expect("grown");
    let shrink = cli(
        &[
            "topic",
            "add-partitions",
            "adm",
            "--count",
            "2",
            "--broker",
            &addr(&nodes[0]),
        ],
        None,
    );
    assert!(shrink.expect_err("a topic never shrinks").contains("InvalidPartitions"));
    for node in &nodes {
        assert_eq!(elected(&addr(node), "adm", &ids, &[]).len(), 3, "on node {}", node.id);
    }
    let lines: String = (0..300).map(|i| format!("k{i},v{i}\n")).collect();
    cli(
        &[
            "produce",
            "adm",
            "--key-separator",
            ",",
            "--acks",
            "all",
            "--broker",
            &follower,
        ],
        Some(&lines),
    )
    .expect("produced to every partition");

    // Records deleted on partition 0, up to its high watermark.
    let leaders = elected(&follower, "adm", &ids, &[]);
    let leader = leaders[0].0 as u64;
    let leader_index = nodes.iter().position(|n| n.id == leader).unwrap();
    let out = cli(
        &[
            "topic",
            "delete-records",
            "adm",
            "--partition",
            "0",
            "--before",
            "-1",
            "--broker",
            &follower,
        ],
        None,
    )
    .expect("deleted");
    let start: u64 = out.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(start > 1, "partition 0 held the big record and some of the 300: {out}");
    assert_eq!(log_start(&addr(&nodes[leader_index]), "adm", 0), Some(start));
    let remaining = read_sorted(&follower, "adm", 300 + 1 - start as usize);
    assert!(
        remaining.iter().all(|v| v.starts_with('v')),
        "the big record went with partition 0's head"
    );

    // The leader is lost: the next one starts its log where it was moved.
    nodes[leader_index].broker.take().unwrap().kill9();
    let survivors: Vec<u64> = ids.iter().copied().filter(|&id| id != leader).collect();
    let survivor = addr(nodes.iter().find(|n| n.id == survivors[0]).unwrap());
    let epochs: Vec<i64> = leaders
        .iter()
        .map(|&(l, e, _)| if l as u64 == leader { e } else { 0 })
        .collect();
    let next = elected(&survivor, "adm", &survivors, &epochs)[0].0 as u64;
    let next_addr = addr(nodes.iter().find(|n| n.id == next).unwrap());
    assert_eq!(
        log_start(&next_addr, "adm", 0),
        Some(start),
        "the new leader's log start"
    );
    nodes[leader_index].start();
    agreed(&nodes.iter().collect::<Vec<_>>(), 3);
    elected(&survivor, "adm", &ids, &[]);
    transfer_leader(&survivor, "adm", 0, leader).expect("the old leader leads again");
    assert_eq!(
        log_start(&addr(&nodes[leader_index]), "adm", 0),
        Some(start),
        "kept through its restart"
    );
    stop_all(&mut nodes);
}
