//! The broker benchmark: produce and consume throughput of 1 KiB records
//! through the native protocol, against a broker with 1 and with 2 shards,
//! started by the benchmark from the `corelog` binary beside it.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use net::client::Connection;
use net::messages::{acks, EARLIEST_TIMESTAMP};
use serde::{Deserialize, Serialize};
use storage::batch::{self, RecordBatchBuilder};

use crate::machine::Machine;
use crate::storage_bench::median;

#[derive(clap::Args)]
pub struct Args {
    /// Directory for the broker's data (on the disk under test).
    #[arg(long, default_value = "corelog-data/bench-broker")]
    data_dir: PathBuf,
    /// Bytes produced (and then consumed) per run.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Client connections producing (and consuming) at once.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    #[arg(long, default_value_os_t = crate::default_report_dir())]
    report_dir: PathBuf,
}

const RECORD_BYTES: usize = 1024;
const BATCH_RECORDS: usize = 60;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub shards: usize,
    pub produce_mb_per_s: f64,
    pub consume_mb_per_s: f64,
    pub records: u64,
}

pub fn run(args: Args) -> Result<(), String> {
    let machine = Machine::describe(std::path::Path::new("."));
    let mut samples = Vec::new();
    for run in 0..args.runs {
        for shards in [1usize, 2] {
            let dir = args.data_dir.join(format!("run{run}-{shards}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let broker = crate::broker_process::BrokerProcess::start(&dir, shards, &[])?;
            let sample = measure(&broker.addr, shards, &args)?;
            eprintln!(
                "run {}/{}: {shards} shard(s): produce {:.0} MB/s, consume {:.0} MB/s",
                run + 1,
                args.runs,
                sample.produce_mb_per_s,
                sample.consume_mb_per_s
            );
            samples.push(sample);
            drop(broker);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let report = render(&machine, &samples, &args);
    println!("{report}");
    std::fs::create_dir_all(&args.report_dir).map_err(|e| e.to_string())?;
    std::fs::write(args.report_dir.join("broker.md"), &report).map_err(|e| e.to_string())?;
    let json = serde_json::json!({ "machine": machine, "samples": samples, "bytes": args.bytes });
    std::fs::write(
        args.report_dir.join("broker.json"),
        serde_json::to_string_pretty(&json).expect("json"),
    )
    .map_err(|e| e.to_string())?;
    crate::index::write(&args.report_dir)
}

fn measure(addr: &str, shards: usize, args: &Args) -> Result<Sample, String> {
    let (addr, partitions, connections, bytes) = (addr.to_string(), args.partitions, args.connections, args.bytes);
    glommio::LocalExecutorBuilder::default()
        .io_memory(4 << 20)
        .make()
        .map_err(|e| e.to_string())?
        .run(async move {
            let mut admin = Connection::connect(&addr).await.map_err(|e| e.to_string())?;
            admin
                .create_topic("bench", partitions, vec![])
                .await
                .map_err(|e| e.to_string())?;
            let value = vec![0x42u8; RECORD_BYTES];
            let mut builder = RecordBatchBuilder::new();
            for _ in 0..BATCH_RECORDS {
                builder.push(0, None, Some(&value), vec![]);
            }
            let frame = Rc::new(builder.build());
            let batches = bytes.div_ceil((BATCH_RECORDS * RECORD_BYTES) as u64);
            let started = Instant::now();
            let tasks: Vec<_> = (0..connections)
                .map(|c| {
                    let (addr, frame) = (addr.clone(), frame.clone());
                    glommio::spawn_local(async move {
                        let mut connection = Connection::connect(&addr).await.map_err(|e| e.to_string())?;
                        let mut i = c as u64;
                        while i < batches {
                            let partition = (i % u64::from(partitions)) as u32;
                            connection
                                .produce("bench", partition, &frame, acks::LEADER)
                                .await
                                .map_err(|e| e.to_string())?;
                            i += connections as u64;
                        }
                        Ok::<(), String>(())
                    })
                })
                .collect();
            for task in tasks {
                task.await?;
            }
            let produce_seconds = started.elapsed().as_secs_f64();
            let produced = batches * (BATCH_RECORDS * RECORD_BYTES) as u64;

            let started = Instant::now();
            let tasks: Vec<_> = (0..partitions)
                .map(|partition| {
                    let addr = addr.clone();
                    glommio::spawn_local(async move {
                        let mut connection = Connection::connect(&addr).await.map_err(|e| e.to_string())?;
                        let mut next = connection
                            .list_offset("bench", partition, EARLIEST_TIMESTAMP)
                            .await
                            .map_err(|e| e.to_string())?
                            .unwrap_or(0);
                        let mut records = 0u64;
                        loop {
                            let fetched = connection
                                .fetch("bench", partition, next, 1 << 20, 0)
                                .await
                                .map_err(|e| e.to_string())?;
                            if fetched.batches().is_empty() {
                                return Ok::<u64, String>(records);
                            }
                            for frame in batch::frames(fetched.batches()) {
                                let info = batch::verify_crc(frame).map_err(|e| e.to_string())?;
                                records += u64::from(info.record_count);
                                next = info.next_offset().0;
                            }
                        }
                    })
                })
                .collect();
            let mut records = 0;
            for task in tasks {
                records += task.await?;
            }
            let consume_seconds = started.elapsed().as_secs_f64();
            let consumed = records * RECORD_BYTES as u64;
            Ok(Sample {
                shards,
                produce_mb_per_s: produced as f64 / produce_seconds / 1e6,
                consume_mb_per_s: consumed as f64 / consume_seconds / 1e6,
                records,
            })
        })
}

fn render(machine: &Machine, samples: &[Sample], args: &Args) -> String {
    let mut out = String::from("# Broker: produce and consume throughput\n\n");
    out.push_str(
        "Generated by `cargo build --release && target/release/corelog-bench broker`; do not edit by hand.\n\n",
    );
    out.push_str(&format!(
        "A `corelog serve` process with 1 or 2 shards on this machine; one client process (one glommio executor, \
         unpinned) with {} connections producing batches of {BATCH_RECORDS} records of 1 KiB with acks=1 to a topic of \
         {} partitions, {} MiB in all, round robin over partitions; then one connection per partition fetching \
         everything back from the start (1 MiB per fetch, crc checked by the client). Record bytes (values) count \
         towards MB/s (10^6 bytes/s). {} runs, interleaved; medians, with each run in brackets. On this 2-core machine \
         the client shares the cores with the shards, so 2 shards compete with the client for CPU.\n\n",
        args.connections,
        args.partitions,
        args.bytes >> 20,
        args.runs
    ));
    out.push_str("## Machine\n\n");
    out.push_str(&machine.markdown());
    out.push_str("\n## Throughput\n\n| shards | produce MB/s | consume MB/s |\n|---|---|---|\n");
    for shards in [1usize, 2] {
        let of = |f: fn(&Sample) -> f64| -> (f64, Vec<f64>) {
            let values: Vec<f64> = samples.iter().filter(|s| s.shards == shards).map(f).collect();
            (median(values.clone()), values)
        };
        let (produce, produce_runs) = of(|s| s.produce_mb_per_s);
        let (consume, consume_runs) = of(|s| s.consume_mb_per_s);
        out.push_str(&format!(
            "| {shards} | {produce:.0} {produce_runs:.0?} | {consume:.0} {consume_runs:.0?} |\n"
        ));
    }
    out
}
