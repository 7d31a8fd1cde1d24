//! The cluster benchmark: three `corelog serve` processes of one shard
//! each on this machine, one cluster over their internal ports. It
//! measures, in one run:
//!
//! - produce throughput and per-request latency with replication factor 3
//!   against factor 1, acks=all both, cells interleaved, with every
//!   process's CPU over the same seconds (the resource that binds);
//! - failover: from a partition leader's kill -9 to the first produce
//!   sent after the kill that is acknowledged (by the new leader), over
//!   repeated kills, with the broker's default timeouts;
//! - what idle replicated partitions cost: frames and bytes a second
//!   between nodes, and CPU, against the same cluster with none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use net::client::Connection;
use net::messages::acks;
use serde::{Deserialize, Serialize};
use storage::batch::RecordBatchBuilder;

use crate::broker_process::BrokerProcess;
use crate::machine::{DiskCounters, Machine};
use crate::storage_bench::median;

#[derive(clap::Args)]
pub struct Args {
    /// Directory under which each node keeps its data (on the disk under test).
    #[arg(long, default_value = "corelog-data/bench-cluster")]
    data_dir: PathBuf,
    /// Bytes produced per throughput cell.
    #[arg(long, default_value_t = 256 << 20)]
    bytes: u64,
    /// Runs of each throughput cell (interleaved) and of each idle window.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Partitions of the throughput topic.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// Client connections producing at once, spread over the partitions,
    /// each with one request in flight: one cell for each count listed.
    #[arg(long, value_delimiter = ',', default_values_t = [6usize, 24])]
    connections: Vec<usize>,
    /// Leader kills measured for failover, at each Raft timing.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// The shorter Raft timing failover is measured at too, beside the
    /// default: heartbeat interval and election timeout, in ms.
    #[arg(long, value_delimiter = ',', default_values_t = [50u64, 500])]
    short_timing_ms: Vec<u64>,
    /// Partitions (replication factor 3) of the idle topic.
    #[arg(long, default_value_t = 1000)]
    idle_partitions: u32,
    /// Seconds of each idle measurement window.
    #[arg(long, default_value_t = 10)]
    window_s: u64,
    #[arg(long, default_value_os_t = crate::default_report_dir())]
    report_dir: PathBuf,
}

const NODES: u64 = 3;
const RECORD_BYTES: usize = 1024;
const BATCH_RECORDS: usize = 60;
/// Longest the cluster may take to elect, agree or answer before the
/// benchmark gives up on it.
const AGREE_WITHIN: Duration = Duration::from_secs(60);
/// Longest one request of the benchmark's own (metadata, create) may take.
const REQUEST_WITHIN: Duration = Duration::from_secs(10);

/// One throughput cell.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProduceSample {
    pub replication_factor: i16,
    pub connections: usize,
    pub run: usize,
    /// The node leading each partition.
    pub leader_nodes: Vec<u64>,
    pub produce_mb_per_s: f64,
    pub ack_p50_us: u64,
    pub ack_p99_us: u64,
    pub ack_max_us: u64,
    /// Each node's CPU over the cell, in % of one core (node 1 first).
    pub node_cpu_percent: Vec<f64>,
    pub client_cpu_percent: f64,
    /// What the one disk under every node wrote a second over the cell
    /// (`/proc/diskstats`), and its flushes a second.
    #[serde(default)]
    pub disk_write_mb_per_s: f64,
    #[serde(default)]
    pub disk_flushes_per_s: f64,
}

/// One idle window, with or without the idle topic.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdleSample {
    pub partitions: u32,
    /// Frames and bytes each node wrote to its peers, a second.
    pub node_frames_per_s: Vec<f64>,
    pub node_bytes_per_s: Vec<f64>,
    pub node_cpu_percent: Vec<f64>,
    pub node_rss_mib: Vec<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failover {
    /// From the kill to the first produce sent after it being acknowledged.
    pub millis: f64,
    /// The nodes' `raft_election_timeout_ms` and heartbeat interval.
    #[serde(default = "default_election_timeout_ms")]
    pub election_timeout_ms: u64,
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    pub killed_node: u64,
    pub new_leader_node: u64,
    pub epoch_before: i32,
    pub epoch_after: i32,
}

struct Node {
    id: u64,
    rpc: String,
    dir: PathBuf,
    configs: BTreeMap<String, String>,
    process: Option<BrokerProcess>,
}

struct Cluster {
    nodes: Vec<Node>,
    /// Its Raft timing: heartbeat interval and election timeout, in ms.
    timing: (u64, u64),
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

impl Cluster {
    fn start(root: &Path) -> Result<Cluster, String> {
        Cluster::start_with(root, DEFAULT_TIMING_MS)
    }

    fn start_with(root: &Path, timing: (u64, u64)) -> Result<Cluster, String> {
        let rpcs = (0..NODES)
            .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
            .collect::<Result<Vec<_>, _>>()?;
        let peers: Vec<String> = rpcs
            .iter()
            .enumerate()
            .map(|(i, rpc)| format!("\"{}@{rpc}\"", i + 1))
            .collect();
        let mut nodes = Vec::new();
        for (i, rpc) in rpcs.iter().enumerate() {
            let dir = root.join(format!("node{}", i + 1));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let configs = BTreeMap::from([
                ("node_id".to_string(), (i + 1).to_string()),
                ("rpc_listen".to_string(), format!("\"{rpc}\"")),
                ("peers".to_string(), format!("[{}]", peers.join(", "))),
                ("raft_heartbeat_interval_ms".to_string(), timing.0.to_string()),
                ("raft_election_timeout_ms".to_string(), timing.1.to_string()),
            ]);
            nodes.push(Node {
                id: i as u64 + 1,
                rpc: rpc.clone(),
                dir,
                configs,
                process: None,
            });
        }
        let mut cluster = Cluster { nodes, timing };
        for id in 1..=NODES {
            cluster.start_node(id)?;
        }
        cluster.wait_agreed()?;
        Ok(cluster)
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    fn start_node(&mut self, id: u64) -> Result<(), String> {
        let node = self.node(id);
        node.process = Some(BrokerProcess::start_configured(
            &node.dir,
            1,
            &[],
            false,
            &node.configs,
        )?);
        Ok(())
    }

    fn kill9(&mut self, id: u64) {
        if let Some(process) = self.node(id).process.take() {
            process.kill9();
        }
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.process.is_some())
    }

    fn addrs(&self) -> Vec<String> {
        self.live()
            .map(|n| n.process.as_ref().expect("live").addr.clone())
            .collect()
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .map(|n| n.process.as_ref().map_or(0, BrokerProcess::pid))
            .collect()
    }

    /// Every live node names the same controller leader, in the same
    /// term, with every node registered.
    fn wait_agreed(&self) -> Result<(), String> {
        let started = Instant::now();
        let mut last = Vec::new();
        while started.elapsed() < AGREE_WITHIN {
            last = self.live().map(|n| cluster_status(&n.rpc)).collect::<Vec<_>>();
            let views: Option<Vec<(u64, u64, usize)>> = last
                .iter()
                .map(|s| {
                    let s = s.as_ref()?;
                    Some((s["leader"].as_u64()?, s["term"].as_u64()?, s["nodes"].as_array()?.len()))
                })
                .collect();
            if let Some(views) = views {
                let first = views[0];
                if first.0 != 0 && first.2 == NODES as usize && views.iter().all(|v| *v == first) {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("the nodes did not agree within {AGREE_WITHIN:?}: {last:?}"))
    }

    /// Each partition's (leader node, epoch, leader's native address) once
    /// every live node names the same elected leader for each; None for
    /// the address where the leader is not live.
    fn wait_leaders(&self, topic: &str, partitions: u32) -> Result<Vec<Leader>, String> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < AGREE_WITHIN * 5 {
            let views: Result<Vec<Vec<Leader>>, String> =
                self.addrs().iter().map(|addr| leaders(addr, topic)).collect();
            match views {
                Ok(views) => {
                    let first = &views[0];
                    let elected = first.len() == partitions as usize
                        && first.iter().all(|l| l.node != 0 && l.epoch >= 0 && l.addr.is_some());
                    if elected && views.iter().all(|v| v == first) {
                        return Ok(first.clone());
                    }
                    last = format!("{views:?}");
                }
                Err(error) => last = error,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("{topic}: no agreed leaders: {last}"))
    }

    fn stop(self) {
        for node in self.nodes {
            if let Some(process) = node.process {
                process.stop();
            }
        }
    }
}

/// `corelog cluster status` of the node whose internal port is `rpc`.
fn cluster_status(rpc: &str) -> Option<serde_json::Value> {
    let binary = std::env::current_exe().ok()?.with_file_name("corelog");
    let output = std::process::Command::new(binary)
        .args(["cluster", "status", "--node", rpc])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Leader {
    node: u64,
    epoch: i32,
    addr: Option<String>,
}

/// Runs `work` on a glommio executor of its own on this thread, bounded.
fn on_executor<T: 'static>(work: impl std::future::Future<Output = Result<T, String>> + 'static) -> Result<T, String> {
    glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .make()
        .map_err(|e| e.to_string())?
        .run(async move {
            let work = std::pin::pin!(work);
            let deadline = std::pin::pin!(glommio::timer::sleep(REQUEST_WITHIN));
            match futures::future::select(work, deadline).await {
                futures::future::Either::Left((value, _)) => value,
                futures::future::Either::Right(_) => Err(format!("no answer within {REQUEST_WITHIN:?}")),
            }
        })
}

/// A topic's partition leaders as the broker at `addr` knows them.
fn leaders(addr: &str, topic: &str) -> Result<Vec<Leader>, String> {
    let (addr, topic) = (addr.to_string(), topic.to_string());
    on_executor(async move {
        let mut connection = Connection::connect(&addr).await.map_err(|e| e.to_string())?;
        let metadata = connection
            .metadata(Some(vec![topic.clone()]))
            .await
            .map_err(|e| e.to_string())?;
        let Some(found) = metadata.topics.first().filter(|t| t.error == 0) else {
            return Ok(Vec::new());
        };
        Ok(found
            .partitions
            .iter()
            .map(|p| {
                let per_node = net::cluster::BROKER_IDS_PER_NODE;
                let id = u64::from(p.leader);
                // A node answers NOT_LEADER_OR_FOLLOWER for a partition it
                // does not lead, naming the leader it knows all the same.
                let known = p.leader != u32::MAX && p.leader != 0 && p.leader_epoch >= 0;
                Leader {
                    node: if !known {
                        0
                    } else if id >= per_node {
                        id / per_node
                    } else {
                        id
                    },
                    epoch: if known { p.leader_epoch } else { -1 },
                    addr: metadata
                        .brokers
                        .iter()
                        .find(|b| known && b.node_id == p.leader)
                        .map(|b| format!("{}:{}", b.host, b.port)),
                }
            })
            .collect())
    })
}

fn create_topic(addr: &str, topic: &str, partitions: u32, replication_factor: i16) -> Result<(), String> {
    let (addr, topic) = (addr.to_string(), topic.to_string());
    on_executor(async move {
        let mut connection = Connection::connect(&addr).await.map_err(|e| e.to_string())?;
        connection
            .create_topic_with(&topic, partitions, replication_factor, vec![], false)
            .await
            .map_err(|e| format!("create {topic}: {e}"))
    })
}

fn delete_topic(addr: &str, topic: &str) -> Result<(), String> {
    let (addr, topic) = (addr.to_string(), topic.to_string());
    on_executor(async move {
        let mut connection = Connection::connect(&addr).await.map_err(|e| e.to_string())?;
        connection
            .delete_topic(&topic)
            .await
            .map_err(|e| format!("delete {topic}: {e}"))
    })
}

/// Nanoseconds on a CPU of every thread of process `pid` (0: this one).
fn cpu_ns(pid: u32) -> u64 {
    let dir = if pid == 0 {
        "/proc/self/task".to_string()
    } else {
        format!("/proc/{pid}/task")
    };
    let Ok(tasks) = std::fs::read_dir(dir) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// CPU of each process over the seconds since `before` was taken, in % of
/// one core.
struct CpuWindow {
    started: Instant,
    pids: Vec<u32>,
    before: Vec<u64>,
}

impl CpuWindow {
    fn open(pids: Vec<u32>) -> CpuWindow {
        let before = pids.iter().map(|&p| cpu_ns(p)).collect();
        CpuWindow {
            started: Instant::now(),
            pids,
            before,
        }
    }

    fn close(&self) -> Vec<f64> {
        let wall = self.started.elapsed().as_nanos() as f64;
        self.pids
            .iter()
            .zip(&self.before)
            .map(|(&p, &b)| 100.0 * cpu_ns(p).saturating_sub(b) as f64 / wall)
            .collect()
    }
}

pub fn run(args: Args) -> Result<(), String> {
    let machine = Machine::describe(Path::new("."));
    std::fs::create_dir_all(&args.data_dir).map_err(|e| e.to_string())?;
    let cluster = Cluster::start(&args.data_dir)?;
    let result = measure_all(cluster, &args);
    let _ = std::fs::remove_dir_all(&args.data_dir);
    let (produce, failovers, idle) = result?;
    let report = render(&machine, &produce, &failovers, &idle, &args);
    println!("{report}");
    std::fs::create_dir_all(&args.report_dir).map_err(|e| e.to_string())?;
    std::fs::write(args.report_dir.join("cluster.md"), &report).map_err(|e| e.to_string())?;
    let json = serde_json::json!({
        "machine": machine,
        "headline": headline(&produce, &failovers, &idle),
        "produce": produce,
        "failovers": failovers,
        "idle": idle,
        "bytes": args.bytes,
    });
    std::fs::write(
        args.report_dir.join("cluster.json"),
        serde_json::to_string_pretty(&json).expect("json"),
    )
    .map_err(|e| e.to_string())?;
    crate::index::write(&args.report_dir)
}

type Measured = (Vec<ProduceSample>, Vec<Failover>, Vec<IdleSample>);

fn measure_all(mut cluster: Cluster, args: &Args) -> Result<Measured, String> {
    let mut produce = Vec::new();
    for run in 0..args.runs {
        for (&connections, replication_factor) in args.connections.iter().flat_map(|c| [(c, 3i16), (c, 1)]) {
            let sample = produce_cell(&cluster, run, replication_factor, connections, args)?;
            eprintln!(
                "run {}/{}: replication factor {replication_factor}, {connections} connections, acks=all: {:.1} MB/s, \
                 ack p50 {} µs p99 {} µs; cpu nodes {:.0?}% client {:.0}%",
                run + 1,
                args.runs,
                sample.produce_mb_per_s,
                sample.ack_p50_us,
                sample.ack_p99_us,
                sample.node_cpu_percent,
                sample.client_cpu_percent
            );
            produce.push(sample);
        }
    }
    let mut failed_over = failovers(&mut cluster, args)?;
    let idle = idle(&cluster, args)?;
    cluster.stop();
    // Again on three fresh nodes with the shorter timing.
    if let [heartbeat, election] = args.short_timing_ms[..] {
        let dir = args.data_dir.join("short-timing");
        let mut short = Cluster::start_with(&dir, (heartbeat, election))?;
        let measured = failovers(&mut short, args);
        short.stop();
        failed_over.extend(measured?);
    }
    Ok((produce, failed_over, idle))
}

fn produce_cell(
    cluster: &Cluster,
    run: usize,
    replication_factor: i16,
    connections: usize,
    args: &Args,
) -> Result<ProduceSample, String> {
    let topic = format!("throughput-rf{replication_factor}-c{connections}-run{run}");
    let any = cluster.addrs()[0].clone();
    create_topic(&any, &topic, args.partitions, replication_factor)?;
    let leaders = cluster.wait_leaders(&topic, args.partitions)?;
    let targets: Vec<String> = leaders.iter().map(|l| l.addr.clone().expect("elected")).collect();

    let cpu = CpuWindow::open(cluster.pids().into_iter().chain([0]).collect());
    let disk_before = DiskCounters::read(&args.data_dir);
    let bytes = args.bytes;
    let (produced, seconds, histogram) = glommio::LocalExecutorBuilder::default()
        .io_memory(4 << 20)
        .make()
        .map_err(|e| e.to_string())?
        .run({
            let topic = topic.clone();
            async move {
                let value = vec![0x42u8; RECORD_BYTES];
                let mut builder = RecordBatchBuilder::new();
                for _ in 0..BATCH_RECORDS {
                    builder.push(0, None, Some(&value), vec![]);
                }
                let frame = Rc::new(builder.build());
                let batches = bytes.div_ceil((BATCH_RECORDS * RECORD_BYTES) as u64);
                let partitions = targets.len() as u64;
                let started = Instant::now();
                let tasks: Vec<_> = (0..connections)
                    .map(|c| {
                        let (frame, topic) = (frame.clone(), topic.clone());
                        let partition = c as u64 % partitions;
                        let addr = targets[partition as usize].clone();
                        glommio::spawn_local(async move {
                            let mut histogram =
                                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                            let mut connection = Connection::connect(&addr).await.map_err(|e| e.to_string())?;
                            // Connection c takes every connections-th batch.
                            let mut i = c as u64;
                            while i < batches {
                                let sent = Instant::now();
                                connection
                                    .produce(&topic, partition as u32, &frame, acks::ALL)
                                    .await
                                    .map_err(|e| format!("{topic}/{partition} at {addr}: {e}"))?;
                                histogram.saturating_record(sent.elapsed().as_micros() as u64);
                                i += connections as u64;
                            }
                            Ok::<_, String>(histogram)
                        })
                    })
                    .collect();
                let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                for task in tasks {
                    histogram.add(task.await?).map_err(|e| e.to_string())?;
                }
                let seconds = started.elapsed().as_secs_f64();
                Ok::<_, String>((batches * (BATCH_RECORDS * RECORD_BYTES) as u64, seconds, histogram))
            }
        })?;
    let mut cpu = cpu.close();
    let (disk_write_mb_per_s, disk_flushes_per_s) = match (disk_before, DiskCounters::read(&args.data_dir)) {
        (Some(before), Some(after)) => before.rates_until(&after, seconds),
        _ => (0.0, 0.0),
    };
    let client = cpu.pop().unwrap_or(0.0);
    delete_topic(&any, &topic)?;
    Ok(ProduceSample {
        replication_factor,
        connections,
        run,
        leader_nodes: leaders.iter().map(|l| l.node).collect(),
        produce_mb_per_s: produced as f64 / seconds / 1e6,
        ack_p50_us: histogram.value_at_quantile(0.5),
        ack_p99_us: histogram.value_at_quantile(0.99),
        ack_max_us: histogram.max(),
        node_cpu_percent: cpu,
        client_cpu_percent: client,
        disk_write_mb_per_s,
        disk_flushes_per_s,
    })
}

/// (sent, acknowledged) of every produce the failover producer had
/// acknowledged.
type Acks = Arc<Mutex<Vec<(Instant, Instant)>>>;

fn default_election_timeout_ms() -> u64 {
    DEFAULT_TIMING_MS.1
}

fn default_heartbeat_interval_ms() -> u64 {
    DEFAULT_TIMING_MS.0
}

/// The broker's default Raft timing: heartbeat interval, election timeout.
const DEFAULT_TIMING_MS: (u64, u64) = (100, 1000);

fn failovers(cluster: &mut Cluster, args: &Args) -> Result<Vec<Failover>, String> {
    const TOPIC: &str = "failover";
    let any = cluster.addrs()[0].clone();
    create_topic(&any, TOPIC, 1, 3)?;
    cluster.wait_leaders(TOPIC, 1)?;

    let acked: Acks = Arc::new(Mutex::new(Vec::new()));
    let stopping = Arc::new(AtomicBool::new(false));
    let producing = {
        let (acked, stopping, bootstrap) = (acked.clone(), stopping.clone(), any.clone());
        std::thread::spawn(move || produce_until_stopped(&bootstrap, &acked, &stopping))
    };
    let wait_acks_after = |since: Instant| -> Result<Instant, String> {
        let started = Instant::now();
        loop {
            if let Some(&(_, at)) = acked.lock().expect("acks").iter().find(|(sent, _)| *sent > since) {
                return Ok(at);
            }
            if started.elapsed() > AGREE_WITHIN {
                return Err(format!("no produce acknowledged within {AGREE_WITHIN:?} of {since:?}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    };

    let mut measured = Vec::new();
    let outcome = (|| {
        for kill in 0..args.kills {
            // Acks flowing to the leader every live node agrees on.
            wait_acks_after(Instant::now())?;
            let before = cluster.wait_leaders(TOPIC, 1)?.remove(0);
            let killed_at = Instant::now();
            cluster.kill9(before.node);
            let first = wait_acks_after(killed_at)?;
            let after = cluster.wait_leaders(TOPIC, 1)?.remove(0);
            let failover = Failover {
                millis: (first - killed_at).as_secs_f64() * 1e3,
                election_timeout_ms: cluster.timing.1,
                heartbeat_interval_ms: cluster.timing.0,
                killed_node: before.node,
                new_leader_node: after.node,
                epoch_before: before.epoch,
                epoch_after: after.epoch,
            };
            eprintln!(
                "kill {}/{}: node {} (epoch {}) → node {} (epoch {}) in {:.0} ms",
                kill + 1,
                args.kills,
                failover.killed_node,
                failover.epoch_before,
                failover.new_leader_node,
                failover.epoch_after,
                failover.millis
            );
            measured.push(failover);
            cluster.start_node(before.node)?;
            cluster.wait_agreed()?;
            // The restarted node follows the new leader before the next
            // kill, so two replicas hold everything acknowledged.
            cluster.wait_leaders(TOPIC, 1)?;
            std::thread::sleep(Duration::from_secs(2));
        }
        Ok::<(), String>(())
    })();
    stopping.store(true, Ordering::Release);
    let produced = producing
        .join()
        .map_err(|_| "the failover producer panicked".to_string())?;
    outcome?;
    produced?;
    delete_topic(&cluster.addrs()[0], TOPIC)?;
    Ok(measured)
}

/// One idempotent producer (acks=all, retrying every 10 ms) sending one
/// record at a time, as an application that waits for each ack would.
fn produce_until_stopped(bootstrap: &str, acked: &Acks, stopping: &AtomicBool) -> Result<(), String> {
    use net::producer::{Producer, ProducerConfig};
    let bootstrap = bootstrap.to_string();
    glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .make()
        .map_err(|e| e.to_string())?
        .run(async move {
            let producer = Producer::connect(
                &bootstrap,
                ProducerConfig {
                    idempotent: true,
                    retries: 6000,
                    retry_backoff: Duration::from_millis(10),
                    linger: Duration::ZERO,
                    ..ProducerConfig::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
            let value = [0x42u8; 100];
            while !stopping.load(Ordering::Acquire) {
                let sent = Instant::now();
                let answer = producer
                    .send("failover", None, Some(&value), vec![], 0)
                    .await
                    .map_err(|e| e.to_string())?;
                producer.flush().await;
                match answer.await {
                    Ok(Ok(_)) => acked.lock().expect("acks").push((sent, Instant::now())),
                    Ok(Err(error)) => return Err(format!("a produce failed through the failovers: {error}")),
                    Err(_) => return Err("the producer dropped a record".to_string()),
                }
            }
            Ok(())
        })
}

fn idle(cluster: &Cluster, args: &Args) -> Result<Vec<IdleSample>, String> {
    const TOPIC: &str = "idle";
    let mut samples = Vec::new();
    for _ in 0..args.runs {
        samples.push(idle_window(cluster, 0, args)?);
    }
    let any = cluster.addrs()[0].clone();
    let created = Instant::now();
    create_topic(&any, TOPIC, args.idle_partitions, 3)?;
    cluster.wait_leaders(TOPIC, args.idle_partitions)?;
    eprintln!(
        "{} partitions of 3 replicas created and led in {:.1} s",
        args.idle_partitions,
        created.elapsed().as_secs_f64()
    );
    // Past the elections' and catch-ups' last frames.
    std::thread::sleep(Duration::from_secs(5));
    for _ in 0..args.runs {
        samples.push(idle_window(cluster, args.idle_partitions, args)?);
    }
    delete_topic(&any, TOPIC)?;
    Ok(samples)
}

fn idle_window(cluster: &Cluster, partitions: u32, args: &Args) -> Result<IdleSample, String> {
    let counters = |cluster: &Cluster| -> Result<Vec<(u64, u64)>, String> {
        cluster
            .nodes
            .iter()
            .map(|n| {
                let status = cluster_status(&n.rpc).ok_or_else(|| format!("node {} has no status", n.id))?;
                Ok((
                    status["frames_sent"].as_u64().unwrap_or(0),
                    status["bytes_sent"].as_u64().unwrap_or(0),
                ))
            })
            .collect()
    };
    let before = counters(cluster)?;
    let cpu = CpuWindow::open(cluster.pids());
    std::thread::sleep(Duration::from_secs(args.window_s));
    let cpu = cpu.close();
    let after = counters(cluster)?;
    let seconds = args.window_s as f64;
    let sample = IdleSample {
        partitions,
        node_frames_per_s: before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.0.saturating_sub(b.0) as f64 / seconds)
            .collect(),
        node_bytes_per_s: before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.1.saturating_sub(b.1) as f64 / seconds)
            .collect(),
        node_cpu_percent: cpu,
        node_rss_mib: cluster
            .pids()
            .iter()
            .map(|&pid| rss_kib(pid).unwrap_or(0) >> 10)
            .collect(),
    };
    eprintln!(
        "idle, {partitions} user partitions: frames/s {:.0?}, bytes/s {:.0?}, cpu {:.1?}%, rss {:?} MiB",
        sample.node_frames_per_s, sample.node_bytes_per_s, sample.node_cpu_percent, sample.node_rss_mib
    );
    Ok(sample)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn median_of<T>(samples: &[&T], f: impl Fn(&T) -> f64) -> f64 {
    median(samples.iter().map(|s| f(s)).collect())
}

fn produce_of(samples: &[ProduceSample], replication_factor: i16, connections: usize) -> Vec<&ProduceSample> {
    samples
        .iter()
        .filter(|s| s.replication_factor == replication_factor && s.connections == connections)
        .collect()
}

/// Every process's CPU in a cell, the client's included.
fn all_cpu_of(sample: &ProduceSample) -> f64 {
    sample.node_cpu_percent.iter().sum::<f64>() + sample.client_cpu_percent
}

fn all_cpu(cells: &[&ProduceSample]) -> f64 {
    median_of(cells, all_cpu_of)
}

fn idle_of(samples: &[IdleSample], partitions: u32) -> Vec<&IdleSample> {
    samples.iter().filter(|s| s.partitions == partitions).collect()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn headline(produce: &[ProduceSample], failovers: &[Failover], idle: &[IdleSample]) -> String {
    let deepest = produce.iter().map(|s| s.connections).max().unwrap_or(1);
    let rate = |rf| median_of(&produce_of(produce, rf, deepest), |s| s.produce_mb_per_s);
    let millis: Vec<f64> = failovers
        .iter()
        .filter(|f| f.election_timeout_ms == DEFAULT_TIMING_MS.1)
        .map(|f| f.millis)
        .collect();
    let busy = idle.iter().map(|s| s.partitions).max().unwrap_or(0);
    let frames = |p| median_of(&idle_of(idle, p), |s| mean(&s.node_frames_per_s));
    format!(
        "3 nodes, acks=all, {deepest} batches in flight: replication factor 3 {:.0} MB/s, {:.0}% of factor 1 ({:.0} MB/s); failover median {:.0} ms, \
         max {:.0} ms over {} kills; {busy} idle partitions: {:.0} frames/s a node (none: {:.0})",
        rate(3),
        100.0 * rate(3) / rate(1),
        rate(1),
        median(millis.clone()),
        millis.iter().copied().fold(0.0, f64::max),
        failovers.len(),
        frames(busy),
        frames(0),
    )
}

fn render(
    machine: &Machine,
    produce: &[ProduceSample],
    failovers: &[Failover],
    idle: &[IdleSample],
    args: &Args,
) -> String {
    let mut out = String::from("# Cluster: replication, failover, idle partitions\n\n");
    out.push_str(
        "Generated by `cargo build --release && target/release/corelog-bench cluster`; do not edit by hand.\n\n",
    );
    out.push_str(&format!(
        "Three `corelog serve` processes of one shard each, unpinned, on this machine, one cluster over their internal \
         ports on 127.0.0.1, and the benchmark's client (one glommio executor) beside them: four processes on {} cores. \
         CPU is each process's time on a CPU (every thread's `/proc/PID/task/*/schedstat`) over the same seconds, in % \
         of one core; the machine has {}%.\n\n",
        machine.cores,
        machine.cores * 100
    ));
    out.push_str("## Machine\n\n");
    out.push_str(&machine.markdown());

    out.push_str(&format!(
        "\n## Produce, replication factor 3 against 1 (acks=all)\n\n\
         A topic of {} partitions a cell, led where the elections put them (listed below the table); N connections, \
         each to its partition's leader, sending batches of {BATCH_RECORDS} records of 1 KiB with acks=all and \
         waiting for each reply (so N batches in flight); {} MiB a cell; the ack latency of each request measured \
         around it by the client. acks=all with factor 3 is a reply once two of three replicas have fdatasynced the \
         batch; with factor 1, once the leader has. The cells alternate (factor 3 first, then 1, for each N), {} \
         runs; medians, each run in brackets. *Little* is what N batches in flight at the median ack latency would \
         carry (N × batch bytes / p50): near the measured rate, the wait for each ack binds, not a resource. *Disk* \
         is what the one device under all three nodes' data directories wrote a second over the cell, and its \
         flushes a second (`/proc/diskstats`): every replica writes every byte to it.\n\n\
         | replication factor | connections | produce MB/s | ack p50 µs | ack p99 µs | ack max µs | Little MB/s | \
         CPU node 1, 2, 3 (% of a core) | CPU client | CPU all | disk MB/s written | disk flushes/s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        args.partitions,
        args.bytes >> 20,
        args.runs
    ));
    let batch_bytes = (BATCH_RECORDS * RECORD_BYTES) as f64;
    for &connections in &args.connections {
        for rf in [3i16, 1] {
            let cells = produce_of(produce, rf, connections);
            let runs = |f: fn(&ProduceSample) -> f64| -> String {
                let values: Vec<f64> = cells.iter().map(|s| f(s)).collect();
                format!("{:.0} {values:.0?}", median(values.clone()))
            };
            let node_cpu: Vec<String> = (0..NODES as usize)
                .map(|n| format!("{:.0}", median_of(&cells, |s| s.node_cpu_percent[n])))
                .collect();
            let little = connections as f64 * batch_bytes / median_of(&cells, |s| s.ack_p50_us as f64);
            out.push_str(&format!(
                "| {rf} | {connections} | {} | {} | {} | {} | {little:.0} | {} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
                runs(|s| s.produce_mb_per_s),
                runs(|s| s.ack_p50_us as f64),
                runs(|s| s.ack_p99_us as f64),
                runs(|s| s.ack_max_us as f64),
                node_cpu.join(", "),
                median_of(&cells, |s| s.client_cpu_percent),
                all_cpu(&cells),
                median_of(&cells, |s| s.disk_write_mb_per_s),
                median_of(&cells, |s| s.disk_flushes_per_s),
            ));
        }
    }
    let placed: Vec<String> = produce
        .iter()
        .map(|s| {
            format!(
                "factor {} × {} run {}: {:?}",
                s.replication_factor,
                s.connections,
                s.run + 1,
                s.leader_nodes
            )
        })
        .collect();
    out.push_str(&format!(
        "\nLeader node of each partition, by cell: {}.\n",
        placed.join("; ")
    ));
    let deepest = args.connections.iter().copied().max().unwrap_or(1);
    let (rf3, rf1) = (produce_of(produce, 3, deepest), produce_of(produce, 1, deepest));
    let per_mb = |cells: &[&ProduceSample]| median_of(cells, |s| all_cpu_of(s) / s.produce_mb_per_s);
    let cpu3 = all_cpu(&rf3);
    let disk = |cells: &[&ProduceSample]| median_of(cells, |s| s.disk_write_mb_per_s);
    out.push_str(&format!(
        "\nWith {deepest} in flight, factor 3 moves {:.0}% of factor 1's bytes a second. The processes together use \
         {cpu3:.0}% (factor 3) and {:.0}% (factor 1) of the machine's {}%: {}. The one disk under all three nodes \
         wrote {:.0} MB/s with factor 3 (each record three times, plus indexes and state) against {:.0} MB/s with \
         factor 1: {}. CPU per MB/s is {:.2}% of a core with factor 3 and {:.2}% with factor 1: each batch crosses \
         to two followers, is written and fdatasynced three times, and the acks come back.\n",
        100.0 * median_of(&rf3, |s| s.produce_mb_per_s) / median_of(&rf1, |s| s.produce_mb_per_s),
        all_cpu(&rf1),
        machine.cores * 100,
        if cpu3 > 0.85 * (machine.cores * 100) as f64 {
            "the two cores bind, every replica's work coming out of the CPU that a replica on a machine of its own \
             would have to itself"
        } else {
            "the CPU is not saturated"
        },
        disk(&rf3),
        disk(&rf1),
        if disk(&rf3) > 0.75 * disk(&rf1) {
            "the disk's write rate, shared here by three replicas that on a cluster of machines would each have a \
             disk of their own, is what binds factor 3 (the Little column: the ack waits for a majority's writes \
             and fdatasyncs queued on that one device)"
        } else {
            "the disk is not what binds either; the wait for each ack (a majority's fdatasync, with the hops \
             between) is, as the Little column shows"
        },
        per_mb(&rf3),
        per_mb(&rf1),
    ));

    out.push_str(
        "\n## Failover\n\n\
         A topic of one partition, three replicas. One idempotent producer (corelog's own, acks=all, retrying every \
         10 ms, following leaders through the metadata) sends one 100-byte record at a time and waits for each ack. \
         The partition's leader is killed (-9); the time is from the kill to the ack of the first record sent after \
         it, which only a new leader can give. The killed node is started again and caught up before the next kill. \
         First with the broker's default Raft timing (`raft_heartbeat_interval_ms` 100: a heartbeat and a tick; \
         `raft_election_timeout_ms` 1000: an election after 1 to 2 s without the leader's word), then on three \
         fresh nodes with a shorter one.\n",
    );
    let mut timings: Vec<(u64, u64)> = failovers
        .iter()
        .map(|f| (f.heartbeat_interval_ms, f.election_timeout_ms))
        .collect();
    timings.dedup();
    for (heartbeat, election) in timings {
        let these: Vec<&Failover> = failovers
            .iter()
            .filter(|f| (f.heartbeat_interval_ms, f.election_timeout_ms) == (heartbeat, election))
            .collect();
        let millis: Vec<f64> = these.iter().map(|f| f.millis).collect();
        out.push_str(&format!(
            "\n### Heartbeat every {heartbeat} ms, election timeout {election} ms\n\n\
             {} kills: median **{:.0} ms**, min {:.0} ms, max **{:.0} ms**.\n\n\
             | kill | killed node (epoch) | new leader (epoch) | ms |\n|---|---|---|---|\n",
            these.len(),
            median(millis.clone()),
            millis.iter().copied().fold(f64::INFINITY, f64::min),
            millis.iter().copied().fold(0.0, f64::max),
        ));
        for (i, f) in these.iter().enumerate() {
            out.push_str(&format!(
                "| {} | {} ({}) | {} ({}) | {:.0} |\n",
                i + 1,
                f.killed_node,
                f.epoch_before,
                f.new_leader_node,
                f.epoch_after,
                f.millis
            ));
        }
    }

    let busy = args.idle_partitions;
    out.push_str(&format!(
        "\n## Idle partitions\n\n\
         The same three nodes, first with no user topic (the controller and the internal topics' partitions only), \
         then with a topic of {busy} partitions of three replicas each (every node hosts all {busy}, leads a third), \
         nothing produced: frames and bytes each node wrote to its peers over {} s windows (`corelog cluster status`: \
         `frames_sent`, `bytes_sent`), CPU over the same seconds, resident memory at the end. {} windows each; \
         medians of the three nodes' mean.\n\n\
         | user partitions | frames/s a node | bytes/s a node | CPU a node (% of a core) | RSS a node (MiB) |\n\
         |---|---|---|---|---|\n",
        args.window_s, args.runs
    ));
    for partitions in [0, busy] {
        let windows = idle_of(idle, partitions);
        out.push_str(&format!(
            "| {partitions} | {:.0} | {:.0} | {:.1} | {:.0} |\n",
            median_of(&windows, |s| mean(&s.node_frames_per_s)),
            median_of(&windows, |s| mean(&s.node_bytes_per_s)),
            median_of(&windows, |s| mean(&s.node_cpu_percent)),
            median_of(&windows, |s| mean(
                &s.node_rss_mib.iter().map(|&m| m as f64).collect::<Vec<_>>()
            )),
        ));
    }
    let frames = |p| median_of(&idle_of(idle, p), |s| mean(&s.node_frames_per_s));
    let bytes = |p| median_of(&idle_of(idle, p), |s| mean(&s.node_bytes_per_s));
    out.push_str(&format!(
        "\nUncoalesced and awake, {busy} partitions' leaders would send a heartbeat a tick (10 a second) to each of \
         two followers, and each follower answer it: about {:.0} messages a second a node. An idle group quiesces \
         instead (its leader, once every follower holds its whole log and commit, stops ticking and tells them to \
         stop too), and what stands for its heartbeats is one beat a tick from each shard to each peer node, an \
         empty frame: a quiesced follower wakes once its leader's node has been silent for an election timeout. \
         So each node writes {:.0} frames and {:.0} bytes a second with {busy} idle partitions, against {:.0} and \
         {:.0} with none: the controller's own group (which does not quiesce), the beats, and each leader's \
         announcement of the groups it leads every 3 s (a few bytes a group). What CPU remains is the ticks' \
         bookkeeping and those.\n",
        f64::from(busy) / 3.0 * 2.0 * 10.0 * 2.0,
        frames(busy),
        bytes(busy),
        frames(0),
        bytes(0),
    ));
    out
}
