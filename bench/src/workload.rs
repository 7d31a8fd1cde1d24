//! Workloads as the OpenMessaging Benchmark describes them, from presets in
//! `bench/workloads/*.toml`: producers and consumers against a broker that
//! the harness starts (or one given with `--broker`), measuring throughput
//! each second and latency in HDR histograms, beside the machine's own
//! limits measured in the same run, into `perf-reports/<preset>.md/.json`.
//!
//! Latency: a produce's acknowledgement latency runs from the moment the
//! batch was due to be sent (at a fixed rate: its slot in the schedule, so a
//! stall delays every batch behind it and is counted, not hidden: the
//! correction for coordinated omission) to its response. End-to-end latency
//! runs from the same moment, written into each record's first 8 bytes, to
//! the consumer's receipt of the record.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use net::client::Connection;
use net::kafka::kafka_protocol::messages::TopicName;
use net::messages::{acks, TopicConfig, LATEST_TIMESTAMP};
use net::pipelined::PipelinedConnection;
use serde::{Deserialize, Serialize};
use storage::batch::{self, RecordBatchBuilder};

use crate::broker_process::{BrokerProcess, BrokerStats};
use crate::kafka_client::{self, BatchTemplate, KafkaConnection, PipelinedProducer};
use crate::machine::Machine;

#[derive(clap::Args)]
pub struct Args {
    /// A preset file, e.g. bench/workloads/max-produce-1k.toml.
    preset: PathBuf,
    /// Target a running broker instead of starting one.
    #[arg(long)]
    broker: Option<String>,
    /// Data directory of the broker the harness starts.
    #[arg(long, default_value = "corelog-data/bench-workload")]
    data_dir: PathBuf,
    #[arg(long, default_value_os_t = crate::default_report_dir())]
    report_dir: PathBuf,
    /// Skip measuring the machine's limits (disk, loopback).
    #[arg(long)]
    no_limits: bool,
    /// Client threads, one pinned to each of these cores (overrides the
    /// preset's client_cpus), e.g. 0 or 2,3.
    #[arg(long, value_delimiter = ',')]
    client_cpus: Option<Vec<usize>>,
    /// Cores of the broker the harness starts, one shard each (overrides
    /// the preset's shards and broker_cpus).
    #[arg(long, value_delimiter = ',')]
    broker_cpus: Option<Vec<usize>>,
    /// "native" or "kafka" (overrides the preset's protocol). With kafka,
    /// `--broker` is a Kafka bootstrap address, of corelog's Kafka listener
    /// or of any Kafka-compatible broker.
    #[arg(long)]
    protocol: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    pub description: String,
    pub partitions: u32,
    /// Shards of the broker the harness starts.
    pub shards: usize,
    pub producers: usize,
    pub consumers: usize,
    pub message_bytes: usize,
    pub batch_bytes: usize,
    /// "1" or "all".
    pub acks: String,
    /// "native" (corelog's protocol) or "kafka" (Kafka's protocol, through
    /// the broker's Kafka listener or any Kafka-compatible broker).
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Produce requests each producer keeps in flight (Kafka's
    /// max.in.flight.requests.per.connection).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// "max", "half-max", or records per second.
    pub rate: String,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Stop producing after this many bytes (before `duration_s` if sooner).
    pub produce_bytes: Option<u64>,
    /// Produce everything first, then consume it from the beginning.
    #[serde(default)]
    pub catch_up: bool,
    #[serde(default)]
    pub topic_configs: BTreeMap<String, String>,
    /// Broker configuration keys (broker/src/config.rs) for the broker the
    /// workload starts, as TOML values (`spin_before_park_us = "50"`).
    #[serde(default)]
    pub broker_configs: BTreeMap<String, String>,
    /// Cores for the client threads, one thread pinned to each; empty: one
    /// unpinned client thread.
    #[serde(default)]
    pub client_cpus: Vec<usize>,
    /// Cores for the broker's shards (the harness's own broker); empty: the
    /// broker picks `shards` cores.
    #[serde(default)]
    pub broker_cpus: Vec<usize>,
    /// What the workload should reach, stated in its report beside what it
    /// reached (never asserted).
    #[serde(default)]
    pub aim: Option<String>,
}

fn default_in_flight() -> usize {
    5
}

fn default_protocol() -> String {
    "native".into()
}

impl Workload {
    pub fn kafka(&self) -> bool {
        self.protocol == "kafka"
    }

    /// The report's file stem: a Kafka run of a preset beside its native one.
    pub fn report_name(&self) -> String {
        match self.kafka() {
            true => format!("{}-kafka", self.name),
            false => self.name.clone(),
        }
    }
}

/// Shortest record that carries its due time.
const STAMP_BYTES: usize = 8;
/// Latencies are recorded in microseconds, up to an hour.
const LATENCY_MAX_US: u64 = 3_600_000_000;
/// How long consumers may trail the producers before a run gives up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p99_9_us: u64,
    pub p99_99_us: u64,
    pub max_us: u64,
    /// (percentile, microseconds) for the spectrum plot.
    pub spectrum: Vec<(f64, u64)>,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        let spectrum = [
            0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
        ]
        .iter()
        .map(|q| (*q, h.value_at_quantile(q / 100.0)))
        .collect();
        Percentiles {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p99_9_us: h.value_at_quantile(0.999),
            p99_99_us: h.value_at_quantile(0.9999),
            max_us: h.max(),
            spectrum,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub produce_mb_per_s: f64,
    pub produce_records_per_s: f64,
    pub consume_mb_per_s: f64,
    pub consume_records_per_s: f64,
    /// Per second of the measured window: (produce MB/s, consume MB/s).
    pub per_second: Vec<(f64, f64)>,
    pub produce_ack: Percentiles,
    pub end_to_end: Percentiles,
    /// From a batch's due time to the client handing it to its connection:
    /// the load generator's own delay (its executor busy, its window full),
    /// part of every produce acknowledgement's latency.
    #[serde(default)]
    pub send_delay: Option<Percentiles>,
    pub target_records_per_s: Option<f64>,
    pub produced_bytes: u64,
    pub consumed_bytes: u64,
    pub broker_peak_rss_bytes: Option<u64>,
    /// What the harness's own broker reported when it stopped.
    #[serde(default)]
    pub broker: Option<BrokerStats>,
}

/// What one client thread measures; merged across threads at the end.
struct Shared {
    start: Instant,
    measure_from: Instant,
    totals: Arc<Totals>,
    produced: RefCell<Vec<(u64, u64)>>,
    consumed: RefCell<Vec<(u64, u64)>>,
    ack: RefCell<Histogram<u64>>,
    e2e: RefCell<Histogram<u64>>,
    send_delay: RefCell<Histogram<u64>>,
}

/// Counters every client thread reads: the progress line, the consumers'
/// drain and a catch-up's start depend on all threads' producers.
#[derive(Default)]
struct Totals {
    produced_records: AtomicU64,
    consumed_records: AtomicU64,
    producers_running: AtomicUsize,
}

impl Shared {
    fn second(&self, now: Instant) -> Option<usize> {
        now.checked_duration_since(self.measure_from)
            .map(|d| d.as_secs() as usize)
    }

    fn count(series: &RefCell<Vec<(u64, u64)>>, second: usize, bytes: u64, records: u64) {
        let mut series = series.borrow_mut();
        if series.len() <= second {
            series.resize(second + 1, (0, 0));
        }
        series[second].0 += bytes;
        series[second].1 += records;
    }
}

/// One client thread's figures.
struct Part {
    produced: Vec<(u64, u64)>,
    consumed: Vec<(u64, u64)>,
    ack: Histogram<u64>,
    e2e: Histogram<u64>,
    send_delay: Histogram<u64>,
    produce_end: Instant,
    consume_start: Option<Instant>,
    consume_end: Instant,
}

pub fn run(args: Args) -> Result<(), String> {
    let mut workload = load(&args.preset)?;
    if let Some(cpus) = args.client_cpus {
        workload.client_cpus = cpus;
    }
    if let Some(cpus) = args.broker_cpus {
        workload.shards = cpus.len();
        workload.broker_cpus = cpus;
    }
    if let Some(protocol) = args.protocol {
        workload.protocol = protocol;
        check_protocol(&workload.protocol)?;
    }
    let machine = Machine::describe(Path::new("."));
    let limits = if args.no_limits {
        None
    } else {
        eprintln!("measuring the machine's limits (disk write and read, loopback TCP)...");
        Some(crate::limits::measure(&args.data_dir.join("limits"))?)
    };
    let outcome = execute(&workload, args.broker.as_deref(), &args.data_dir)?;
    crate::workload_report::write(&args.report_dir, &workload, &machine, limits.as_ref(), &outcome)?;
    crate::index::write(&args.report_dir)
}

/// Runs a workload against the broker at `broker`, or against one started
/// for it (its data under `data_dir`, removed afterwards).
pub fn execute(workload: &Workload, broker: Option<&str>, data_dir: &Path) -> Result<Outcome, String> {
    let started = match broker {
        Some(_) => None,
        None => {
            let dir = data_dir.join(&workload.name);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            Some(BrokerProcess::start_configured(
                &dir,
                workload.shards,
                &workload.broker_cpus,
                workload.kafka(),
                &workload.broker_configs,
            )?)
        }
    };
    let addr = match (broker, &started) {
        (Some(addr), _) => addr.to_string(),
        (None, Some(started)) if workload.kafka() => started.kafka_addr.clone().expect("a Kafka listener"),
        (None, Some(started)) => started.addr.clone(),
        (None, None) => unreachable!("a broker given or started"),
    };
    let acks = acks_of(&workload.acks)?;
    let target = match workload.rate.as_str() {
        "max" => None,
        "half-max" => {
            // The probe runs the whole workload, consumers included: half
            // of a producers-only maximum can be more than the machine
            // sustains once consumers share it.
            eprintln!("probing the maximum rate for 5 s...");
            let probe = Workload {
                name: format!("{}-probe", workload.name),
                rate: "max".into(),
                warmup_s: 1.0,
                duration_s: 5.0,
                produce_bytes: None,
                catch_up: false,
                ..workload.clone()
            };
            let max = run_threads(&addr, &probe, acks, None)?;
            Some(max.produce_records_per_s / 2.0)
        }
        number => Some(
            number
                .parse::<f64>()
                .map_err(|_| format!("rate {number:?}: max, half-max or a number"))?,
        ),
    };
    let mut outcome = run_threads(&addr, workload, acks, target)?;
    if let Some(started) = started {
        let stats = started.stop();
        outcome.broker_peak_rss_bytes = stats.peak_rss_bytes;
        outcome.broker = Some(stats);
    }
    let _ = std::fs::remove_dir_all(data_dir.join(&workload.name));
    Ok(outcome)
}

/// Reads and checks a preset file.
pub fn load(path: &Path) -> Result<Workload, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let workload: Workload = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if workload.message_bytes < STAMP_BYTES || workload.producers == 0 || workload.partitions == 0 {
        return Err("a workload needs records of at least 8 bytes, a producer and a partition".into());
    }
    acks_of(&workload.acks)?;
    check_protocol(&workload.protocol)?;
    if !workload.broker_cpus.is_empty() && workload.broker_cpus.len() != workload.shards {
        return Err(format!(
            "{}: broker_cpus names {} cores for {} shards",
            path.display(),
            workload.broker_cpus.len(),
            workload.shards
        ));
    }
    Ok(workload)
}

fn acks_of(text: &str) -> Result<i8, String> {
    match text {
        "1" => Ok(acks::LEADER),
        "all" | "-1" => Ok(acks::ALL),
        other => Err(format!(
            "acks {other}: must be 1 or all (acks 0 has no acknowledgement to time)"
        )),
    }
}

pub fn check_protocol(text: &str) -> Result<(), String> {
    match text {
        "native" | "kafka" => Ok(()),
        other => Err(format!("protocol {other}: must be native or kafka")),
    }
}

fn client_executor(placement: Placement) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(placement)
        .io_memory(8 << 20)
        // Timers (a fixed rate's schedule) must not wait out glommio's
        // default 100 ms task quota while consumers keep the queue busy.
        .preempt_timer(Duration::from_millis(1))
}

/// Creates the workload's topic afresh, then runs its producers and
/// consumers on one client thread per `client_cpus` entry (each pinned to
/// its core), or on one unpinned thread; producer `p` and consumer `c` run
/// on thread `p % threads` and `c % threads`.
fn run_threads(addr: &str, workload: &Workload, acks: i8, target: Option<f64>) -> Result<Outcome, String> {
    let topic = format!("bench-{}", workload.name);
    {
        let (addr, topic, workload) = (addr.to_string(), topic.clone(), workload.clone());
        client_executor(Placement::Unbound)
            .make()
            .map_err(|e| e.to_string())?
            .run(async move {
                if workload.kafka() {
                    return kafka_client::recreate_topic(&addr, &topic, workload.partitions, &workload.topic_configs)
                        .await;
                }
                let mut admin = Connection::connect(&addr).await.map_err(|e| e.to_string())?;
                let _ = admin.delete_topic(&topic).await;
                let configs = workload
                    .topic_configs
                    .iter()
                    .map(|(key, value)| TopicConfig {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect();
                admin
                    .create_topic(&topic, workload.partitions, configs)
                    .await
                    .map_err(|e| e.to_string())
            })?;
    }
    let placements: Vec<Placement> = if workload.client_cpus.is_empty() {
        vec![Placement::Unbound]
    } else {
        workload.client_cpus.iter().map(|cpu| Placement::Fixed(*cpu)).collect()
    };
    let threads = placements.len();
    let totals = Arc::new(Totals {
        producers_running: AtomicUsize::new(workload.producers),
        ..Totals::default()
    });
    let start = Instant::now();
    let handles = placements
        .into_iter()
        .enumerate()
        .map(|(thread, placement)| {
            let (addr, topic, workload, totals) = (addr.to_string(), topic.clone(), workload.clone(), totals.clone());
            client_executor(placement)
                .name(&format!("bench-client-{thread}"))
                .spawn(move || async move {
                    run_part(&addr, &topic, &workload, acks, target, start, totals, thread, threads).await
                })
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut parts = Vec::new();
    for handle in handles {
        parts.push(handle.join().map_err(|e| e.to_string())??);
    }
    eprintln!();
    Ok(merge(start + Duration::from_secs_f64(workload.warmup_s), parts, target))
}

fn merge(measure_from: Instant, parts: Vec<Part>, target: Option<f64>) -> Outcome {
    fn add(into: &mut Vec<(u64, u64)>, from: &[(u64, u64)]) {
        if into.len() < from.len() {
            into.resize(from.len(), (0, 0));
        }
        for (i, (b, r)) in from.iter().enumerate() {
            into[i].0 += b;
            into[i].1 += r;
        }
    }
    let mut produced = Vec::new();
    let mut consumed = Vec::new();
    let mut ack = Histogram::new_with_max(LATENCY_MAX_US, 3).expect("histogram");
    let mut e2e = Histogram::new_with_max(LATENCY_MAX_US, 3).expect("histogram");
    let mut send_delay = Histogram::new_with_max(LATENCY_MAX_US, 3).expect("histogram");
    for part in &parts {
        add(&mut produced, &part.produced);
        add(&mut consumed, &part.consumed);
        ack.add(&part.ack).expect("same histogram bounds");
        e2e.add(&part.e2e).expect("same histogram bounds");
        send_delay.add(&part.send_delay).expect("same histogram bounds");
    }
    let produce_end = parts.iter().map(|p| p.produce_end).max().unwrap_or(measure_from);
    let consume_start = parts
        .iter()
        .filter_map(|p| p.consume_start)
        .min()
        .unwrap_or(measure_from)
        .max(measure_from);
    let consume_end = parts.iter().map(|p| p.consume_end).max().unwrap_or(measure_from);
    let seconds = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64().max(1e-9);
    let sum = |series: &[(u64, u64)]| series.iter().fold((0u64, 0u64), |acc, (b, r)| (acc.0 + b, acc.1 + r));
    let (produced_bytes, produced_records) = sum(&produced);
    let (consumed_bytes, consumed_records) = sum(&consumed);
    let produce_seconds = seconds(measure_from, produce_end);
    let consume_seconds = seconds(consume_start, consume_end);
    let per_second = (0..produced.len().max(consumed.len()))
        .map(|s| {
            let mb = |series: &[(u64, u64)]| series.get(s).map_or(0.0, |(b, _)| *b as f64 / 1e6);
            (mb(&produced), mb(&consumed))
        })
        .collect();
    Outcome {
        produce_mb_per_s: produced_bytes as f64 / produce_seconds / 1e6,
        produce_records_per_s: produced_records as f64 / produce_seconds,
        consume_mb_per_s: consumed_bytes as f64 / consume_seconds / 1e6,
        consume_records_per_s: consumed_records as f64 / consume_seconds,
        per_second,
        produce_ack: Percentiles::of(&ack),
        end_to_end: Percentiles::of(&e2e),
        send_delay: Some(Percentiles::of(&send_delay)),
        target_records_per_s: target,
        produced_bytes,
        consumed_bytes,
        broker_peak_rss_bytes: None,
        broker: None,
    }
}

/// One client thread: its share of the producers and consumers.
#[allow(clippy::too_many_arguments)]
async fn run_part(
    addr: &str,
    topic: &str,
    workload: &Workload,
    acks: i8,
    target: Option<f64>,
    start: Instant,
    totals: Arc<Totals>,
    thread: usize,
    threads: usize,
) -> Result<Part, String> {
    let warmup = Duration::from_secs_f64(workload.warmup_s);
    let shared = Rc::new(Shared {
        start,
        measure_from: start + warmup,
        totals: totals.clone(),
        produced: RefCell::new(Vec::new()),
        consumed: RefCell::new(Vec::new()),
        ack: RefCell::new(Histogram::new_with_max(LATENCY_MAX_US, 3).expect("histogram")),
        e2e: RefCell::new(Histogram::new_with_max(LATENCY_MAX_US, 3).expect("histogram")),
        send_delay: RefCell::new(Histogram::new_with_max(LATENCY_MAX_US, 3).expect("histogram")),
    });
    let deadline = start + warmup + Duration::from_secs_f64(workload.duration_s);
    let records_per_batch = (workload.batch_bytes / workload.message_bytes).max(1);
    let batch_bytes = (records_per_batch * workload.message_bytes) as u64;
    let batches_max = workload.produce_bytes.map(|b| b.div_ceil(batch_bytes));
    let interval =
        target.map(|rate| Duration::from_secs_f64(records_per_batch as f64 * workload.producers as f64 / rate));
    let my_consumers: Vec<usize> = (0..workload.consumers).filter(|c| c % threads == thread).collect();

    // Consumers start at the log end, before producing, unless catching up.
    let mut consumers = Vec::new();
    if !my_consumers.is_empty() && !workload.catch_up {
        consumers = start_consumers(addr, topic, workload, &my_consumers, shared.clone(), LATEST_TIMESTAMP).await?;
    }
    let progress = (thread == 0).then(|| spawn_progress(shared.clone(), workload, deadline));
    let producers: Vec<_> = (0..workload.producers)
        .filter(|p| p % threads == thread)
        .map(|p| {
            let (addr, topic, shared, workload) =
                (addr.to_string(), topic.to_string(), shared.clone(), workload.clone());
            glommio::spawn_local(async move {
                let result = produce(
                    p,
                    &addr,
                    &topic,
                    &workload,
                    acks,
                    shared.clone(),
                    interval,
                    deadline,
                    batches_max,
                )
                .await;
                shared.totals.producers_running.fetch_sub(1, Ordering::AcqRel);
                result
            })
        })
        .collect();
    for producer in producers {
        producer.await?;
    }
    let produce_end = Instant::now();

    let mut consume_start = None;
    if !my_consumers.is_empty() && workload.catch_up {
        // Catching up starts once every thread's producers are done.
        while totals.producers_running.load(Ordering::Acquire) > 0 {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        consume_start = Some(Instant::now());
        consumers = start_consumers(
            addr,
            topic,
            workload,
            &my_consumers,
            shared.clone(),
            net::messages::EARLIEST_TIMESTAMP,
        )
        .await?;
    }
    if !consumers.is_empty() {
        let give_up = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let drained = totals.producers_running.load(Ordering::Acquire) == 0
                && totals.consumed_records.load(Ordering::Acquire) >= totals.produced_records.load(Ordering::Acquire);
            if drained || Instant::now() >= give_up {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    }
    let consume_end = Instant::now();
    for consumer in consumers {
        consumer.cancel();
    }
    if let Some(progress) = progress {
        progress.cancel();
    }
    // Cancelled consumers and the progress line may still hold `shared`
    // until the executor drops them; take the figures out.
    let (ack, e2e) = (shared.ack.borrow().clone(), shared.e2e.borrow().clone());
    let send_delay = shared.send_delay.borrow().clone();
    Ok(Part {
        produced: shared.produced.take(),
        consumed: shared.consumed.take(),
        ack,
        e2e,
        send_delay,
        produce_end,
        consume_start,
        consume_end,
    })
}

/// One producer: batches to partitions in turn, as fast as its window of
/// requests in flight allows or on a fixed schedule.
#[allow(clippy::too_many_arguments)]
async fn produce(
    p: usize,
    addr: &str,
    topic: &str,
    workload: &Workload,
    acks: i8,
    shared: Rc<Shared>,
    interval: Option<Duration>,
    deadline: Instant,
    batches_max: Option<u64>,
) -> Result<(), String> {
    let records_per_batch = (workload.batch_bytes / workload.message_bytes).max(1);
    let batch_bytes = (records_per_batch * workload.message_bytes) as u64;
    let mut sender = Sender::connect(addr, topic, workload, records_per_batch).await?;
    let window = Rc::new(glommio::sync::Semaphore::new(workload.max_in_flight.max(1) as u64));
    let failure: Rc<RefCell<Option<String>>> = Rc::new(RefCell::new(None));
    let mut n = 0u64;
    loop {
        if let Some(error) = failure.borrow().clone() {
            return Err(error);
        }
        let sequence = n * workload.producers as u64 + p as u64;
        if batches_max.is_some_and(|max| sequence >= max) {
            break;
        }
        let due = match interval {
            Some(interval) => {
                let due = shared.start + interval.mul_f64(n as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    glommio::timer::sleep(wait).await;
                }
                due
            }
            None => Instant::now(),
        };
        if due >= deadline {
            break;
        }
        // A full window holds the producer back; the wait counts in the
        // latency of the batch that was due.
        let permit = window
            .clone()
            .acquire_static_permit(1)
            .await
            .map_err(|e| e.to_string())?;
        let stamp = due.duration_since(shared.start).as_nanos() as u64;
        let partition = (sequence % u64::from(workload.partitions)) as u32;
        let request = sender.send(partition, stamp, acks)?;
        let sent = Instant::now();
        if shared.second(sent).is_some() {
            let delay = sent.duration_since(due).as_micros() as u64;
            let _ = shared.send_delay.borrow_mut().record(delay.clamp(1, LATENCY_MAX_US));
        }
        let (shared, failure) = (shared.clone(), failure.clone());
        glommio::spawn_local(async move {
            match request.await {
                Ok(_) => {
                    let now = Instant::now();
                    shared
                        .totals
                        .produced_records
                        .fetch_add(records_per_batch as u64, Ordering::AcqRel);
                    if let Some(second) = shared.second(now) {
                        Shared::count(&shared.produced, second, batch_bytes, records_per_batch as u64);
                        let latency = now.duration_since(due).as_micros() as u64;
                        let _ = shared.ack.borrow_mut().record(latency.clamp(1, LATENCY_MAX_US));
                    }
                }
                Err(e) => *failure.borrow_mut() = Some(format!("produce: {e}")),
            }
            drop(permit);
        })
        .detach();
        n += 1;
    }
    // Wait for the requests still in flight.
    let _ = window.acquire(workload.max_in_flight.max(1) as u64).await;
    if let Some(error) = failure.borrow().clone() {
        return Err(error);
    }
    Ok(())
}

/// A producer's connection and batch, on either protocol. Each send stamps
/// the batch's due time into every record's value and reseals its checksum,
/// so the client's cost per batch is a crc and a copy, not an encoding.
enum Sender {
    Native {
        topic: Rc<str>,
        /// Each partition's leader (its owning shard), by partition.
        leaders: Vec<PipelinedConnection>,
        frame: Vec<u8>,
        stamp_at: Vec<usize>,
    },
    Kafka {
        topic: TopicName,
        /// Each partition's leader, by partition.
        leaders: Vec<PipelinedProducer>,
        template: BatchTemplate,
    },
}

type Produced = Pin<Box<dyn Future<Output = Result<(), String>>>>;

impl Sender {
    async fn connect(addr: &str, topic: &str, workload: &Workload, records: usize) -> Result<Sender, String> {
        let value = vec![0x5au8; workload.message_bytes];
        if workload.kafka() {
            let leaders = KafkaConnection::connect(addr).await?.leaders(topic).await?;
            let mut connections: HashMap<String, PipelinedProducer> = HashMap::new();
            let mut by_partition = Vec::with_capacity(leaders.len());
            for leader in leaders {
                if !connections.contains_key(&leader) {
                    connections.insert(leader.clone(), PipelinedProducer::connect(&leader).await?);
                }
                by_partition.push(connections[&leader].clone());
            }
            return Ok(Sender::Kafka {
                topic: kafka_client::topic_name(topic),
                leaders: by_partition,
                template: BatchTemplate::new(records, &value),
            });
        }
        let mut connections: HashMap<String, PipelinedConnection> = HashMap::new();
        let mut leaders = Vec::new();
        for leader in native_leaders(addr, topic).await? {
            if !connections.contains_key(&leader) {
                let connection = PipelinedConnection::connect(&leader, workload.max_in_flight)
                    .await
                    .map_err(|e| e.to_string())?;
                connections.insert(leader.clone(), connection);
            }
            leaders.push(connections[&leader].clone());
        }
        let mut builder = RecordBatchBuilder::new();
        for _ in 0..records {
            builder.push(0, None, Some(&value), vec![]);
        }
        let frame = builder.build();
        let stamp_at: Vec<usize> = batch::access(&frame)
            .map_err(|e| e.to_string())?
            .records
            .iter()
            .map(|r| r.value.as_ref().expect("a value").as_ptr() as usize - frame.as_ptr() as usize)
            .collect();
        Ok(Sender::Native {
            topic: topic.into(),
            leaders,
            frame,
            stamp_at,
        })
    }

    /// Stamps the batch and returns its produce request, to be awaited.
    fn send(&mut self, partition: u32, stamp: u64, acks: i8) -> Result<Produced, String> {
        match self {
            Sender::Native {
                topic,
                leaders,
                frame,
                stamp_at,
            } => {
                for &at in stamp_at.iter() {
                    frame[at..at + STAMP_BYTES].copy_from_slice(&stamp.to_le_bytes());
                }
                batch::reseal(frame).map_err(|e| e.to_string())?;
                let (topic, connection, frame) = (topic.clone(), leaders[partition as usize].clone(), frame.clone());
                Ok(Box::pin(async move {
                    connection
                        .produce(&topic, partition, &frame, acks)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }))
            }
            Sender::Kafka {
                topic,
                leaders,
                template,
            } => {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                let batch = template.stamp(stamp, now_ms);
                let (topic, leader) = (topic.clone(), leaders[partition as usize].clone());
                Ok(Box::pin(async move {
                    leader
                        .produce(&topic, partition as i32, batch, i16::from(acks))
                        .await
                        .map(|_| ())
                }))
            }
        }
    }
}

/// Each partition's leader address, by partition, from the native
/// metadata: with shard ports, the owning shard's own port.
async fn native_leaders(addr: &str, topic: &str) -> Result<Vec<String>, String> {
    let metadata = Connection::connect(addr)
        .await
        .map_err(|e| e.to_string())?
        .metadata(Some(vec![topic.to_string()]))
        .await
        .map_err(|e| e.to_string())?;
    let topic_meta = metadata
        .topics
        .iter()
        .find(|t| t.name == topic && t.error == 0)
        .ok_or_else(|| format!("topic {topic} is not in the metadata"))?;
    topic_meta
        .partitions
        .iter()
        .map(|p| {
            metadata
                .brokers
                .iter()
                .find(|b| b.node_id == p.leader)
                .map(|b| format!("{}:{}", b.host, b.port))
                .ok_or_else(|| {
                    format!(
                        "partition {} of {topic}: leader {} is not a listed broker",
                        p.partition, p.leader
                    )
                })
        })
        .collect()
}

async fn start_consumers(
    addr: &str,
    topic: &str,
    workload: &Workload,
    which: &[usize],
    shared: Rc<Shared>,
    from: i64,
) -> Result<Vec<glommio::task::JoinHandle<Result<(), String>>>, String> {
    let mut tasks = Vec::new();
    for &c in which {
        let partitions: Vec<u32> = (0..workload.partitions)
            .filter(|p| *p as usize % workload.consumers == c)
            .collect();
        if workload.kafka() {
            tasks.extend(start_kafka_consumer(addr, topic, workload, &partitions, shared.clone(), from).await?);
            continue;
        }
        // One connection per leader (owning shard) of this consumer's partitions.
        let leaders = native_leaders(addr, topic).await?;
        let mut connections: Vec<(String, Connection)> = Vec::new();
        let mut positions = Vec::new();
        for &partition in &partitions {
            let leader = &leaders[partition as usize];
            let at = match connections.iter().position(|(a, _)| a == leader) {
                Some(at) => at,
                None => {
                    let connection = Connection::connect(leader).await.map_err(|e| e.to_string())?;
                    connections.push((leader.clone(), connection));
                    connections.len() - 1
                }
            };
            let offset = connections[at]
                .1
                .list_offset(topic, partition, from)
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or(0);
            positions.push((partition, offset, at));
        }
        let (topic, shared, workload) = (topic.to_string(), shared.clone(), workload.clone());
        tasks.push(
            glommio::spawn_local(async move {
                loop {
                    for (partition, offset, at) in positions.iter_mut() {
                        let fetched = connections[*at]
                            .1
                            .fetch(&topic, *partition, *offset, 1 << 20, 100)
                            .await
                            .map_err(|e| e.to_string())?;
                        let received = Received::now(&shared, &workload);
                        let mut records = 0u64;
                        for frame in batch::frames(fetched.batches()) {
                            let info = batch::verify_crc(frame).map_err(|e| e.to_string())?;
                            let archived = batch::access(frame).map_err(|e| e.to_string())?;
                            for record in archived.records.iter() {
                                if let Some(value) = record.value.as_ref() {
                                    received.value(value);
                                }
                            }
                            records += u64::from(info.record_count);
                            *offset = info.next_offset().0;
                        }
                        received.count(records);
                    }
                }
            })
            .detach(),
        );
    }
    Ok(tasks)
}

/// A Kafka consumer of `partitions`: one connection and fetch loop per
/// partition leader, each fetch asking for all of that leader's partitions.
async fn start_kafka_consumer(
    bootstrap: &str,
    topic: &str,
    workload: &Workload,
    partitions: &[u32],
    shared: Rc<Shared>,
    from: i64,
) -> Result<Vec<glommio::task::JoinHandle<Result<(), String>>>, String> {
    let leaders = KafkaConnection::connect(bootstrap).await?.leaders(topic).await?;
    let mut by_leader: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for &partition in partitions {
        let leader = leaders
            .get(partition as usize)
            .ok_or_else(|| format!("{topic}/{partition}: no leader"))?;
        by_leader.entry(leader.clone()).or_default().push(partition as i32);
    }
    let timestamp = if from == net::messages::EARLIEST_TIMESTAMP {
        -2
    } else {
        -1
    };
    let mut tasks = Vec::new();
    for (leader, partitions) in by_leader {
        let mut connection = KafkaConnection::connect(&leader).await?;
        let offsets = connection.list_offsets(topic, &partitions, timestamp).await?;
        let mut positions: Vec<(i32, i64)> = partitions.into_iter().zip(offsets).collect();
        let (topic, shared, workload) = (topic.to_string(), shared.clone(), workload.clone());
        tasks.push(
            glommio::spawn_local(async move {
                loop {
                    let mut values: Vec<u64> = Vec::new();
                    let records = connection
                        .fetch(&topic, &mut positions, 100, |value| {
                            values.push(u64::from_le_bytes(value[..STAMP_BYTES].try_into().expect("8 bytes")))
                        })
                        .await?;
                    let received = Received::now(&shared, &workload);
                    for stamp in values {
                        received.stamp(stamp);
                    }
                    received.count(records);
                }
            })
            .detach(),
        );
    }
    Ok(tasks)
}

/// Records received by a consumer at one moment: their end-to-end
/// latencies and counts.
struct Received<'a> {
    shared: &'a Shared,
    now: Instant,
    now_ns: u64,
    /// Catching up, a record's age is not a latency.
    timed: bool,
    message_bytes: u64,
}

impl<'a> Received<'a> {
    fn now(shared: &'a Shared, workload: &Workload) -> Received<'a> {
        let now = Instant::now();
        Received {
            shared,
            now,
            now_ns: now.duration_since(shared.start).as_nanos() as u64,
            timed: !workload.catch_up && shared.second(now).is_some(),
            message_bytes: workload.message_bytes as u64,
        }
    }

    fn value(&self, value: &[u8]) {
        if let Some(stamp) = value.get(..STAMP_BYTES) {
            self.stamp(u64::from_le_bytes(stamp.try_into().expect("8 bytes")));
        }
    }

    fn stamp(&self, stamp: u64) {
        if self.timed {
            let latency_us = self.now_ns.saturating_sub(stamp) / 1000;
            let _ = self.shared.e2e.borrow_mut().record(latency_us.clamp(1, LATENCY_MAX_US));
        }
    }

    fn count(&self, records: u64) {
        self.shared.totals.consumed_records.fetch_add(records, Ordering::AcqRel);
        if let Some(second) = self.shared.second(self.now) {
            Shared::count(&self.shared.consumed, second, records * self.message_bytes, records);
        }
    }
}

fn spawn_progress(shared: Rc<Shared>, workload: &Workload, deadline: Instant) -> glommio::task::JoinHandle<()> {
    let (name, total) = (
        workload.name.clone(),
        deadline.duration_since(shared.start).as_secs_f64(),
    );
    glommio::spawn_local(async move {
        let mut last = (0u64, Instant::now());
        loop {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            let sent = shared.totals.produced_records.load(Ordering::Acquire);
            let received = shared.totals.consumed_records.load(Ordering::Acquire);
            let now = Instant::now();
            let rate = (sent - last.0) as f64 / now.duration_since(last.1).as_secs_f64();
            last = (sent, now);
            eprint!(
                "\r[{name}] sent {sent} records ({rate:.0}/s), received {received}, {:.0}/{total:.0} s   ",
                now.duration_since(shared.start).as_secs_f64()
            );
        }
    })
    .detach()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_is_runnable() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let workload: Workload = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                path.file_stem().unwrap().to_str().unwrap(),
                workload.name,
                "file named after its workload"
            );
            assert!(workload.message_bytes >= STAMP_BYTES && workload.producers > 0 && workload.partitions > 0);
            acks_of(&workload.acks).unwrap();
            assert!(["max", "half-max"].contains(&workload.rate.as_str()) || workload.rate.parse::<f64>().is_ok());
            names.push(workload.name);
        }
        names.sort();
        assert_eq!(
            names,
            [
                "acks-all-flush",
                "catch-up-read",
                "catch-up-read-1p",
                "half-rate-acks-all",
                "half-rate-latency",
                "max-produce-1k",
                "max-produce-1k-pinned",
                "produce-consume",
                "produce-consume-1p",
                "sustained-produce-10g"
            ]
        );
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = Histogram::<u64>::new_with_max(LATENCY_MAX_US, 3).unwrap();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50_us, 500);
        assert_eq!(p.p99_us, 990);
        assert_eq!(p.max_us, 1000);
        assert_eq!(p.spectrum.last().unwrap(), &(100.0, 1000));
    }
}
