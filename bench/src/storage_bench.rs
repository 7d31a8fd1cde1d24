//! The storage benchmark: append throughput of one partition log for 1 KiB
//! records in batches of 16 KiB, 64 KiB and 1 MiB, without flushing and with
//! a flush per append under 1 and 32 concurrent appenders, each beside a raw
//! O_DIRECT sequential write of the same bytes through glommio, in the same
//! run. Every cell is run several times; the report gives medians.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::io::{DmaFile, OpenOptions};
use glommio::LocalExecutorBuilder;
use serde::Serialize;
use storage::batch::RecordBatchBuilder;
use storage::{FlushPolicy, LogConfig, PartitionLog};

use crate::machine::Machine;

#[derive(clap::Args)]
pub struct Args {
    /// Directory for the benchmark's files (on the disk under test).
    #[arg(long, default_value = "corelog-data/bench-storage")]
    data_dir: PathBuf,
    /// Bytes each no-flush cell writes.
    #[arg(long, default_value_t = 2 << 30)]
    bytes: u64,
    /// Longest a flush-per-append cell runs.
    #[arg(long, default_value_t = 3.0)]
    flush_seconds: f64,
    /// Runs of every cell; the report gives the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A short run to check the setup (64 MiB cells, one run, no report).
    #[arg(long)]
    quick: bool,
    /// Only these batch sizes in bytes (for profiling one cell).
    #[arg(long, value_delimiter = ',')]
    batch_sizes: Vec<usize>,
    /// Only the raw baseline and the no-flush log cells (for profiling).
    #[arg(long)]
    no_flush_only: bool,
    /// The log's `segment_zero_ahead_bytes` (0: never zero ahead; a flush
    /// per append zeroes ahead at the default). A run that sets it writes
    /// no report.
    #[arg(long)]
    segment_zero_ahead_bytes: Option<u64>,
    /// Where the report is written.
    #[arg(long, default_value_os_t = crate::default_report_dir())]
    report_dir: PathBuf,
}

/// `Args::segment_zero_ahead_bytes`, set once before the executor starts.
static ZERO_AHEAD_BYTES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

const RECORD_BYTES: usize = 1024;
const BATCH_SIZES: [usize; 3] = [16 << 10, 64 << 10, 1 << 20];
/// Memory glommio registers with io_uring for DMA buffers (see tuning.md):
/// write buffers come from it without page faults, and writes skip pinning.
const IO_MEMORY_BYTES: usize = 64 << 20;
/// Distinct pre-built batches cycled through, so that encoding is not measured.
const BATCH_POOL: usize = 16;

#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize, PartialEq)]
pub enum Case {
    RawWrite,
    RawWritePreallocated,
    LogNoFlush,
    LogFlushEachAppend1,
    LogFlushEachAppend32,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::RawWrite => "raw O_DIRECT write",
            Case::RawWritePreallocated => "raw O_DIRECT write, preallocated",
            Case::LogNoFlush => "log, no flush",
            Case::LogFlushEachAppend1 => "log, flush per append, 1 appender",
            Case::LogFlushEachAppend32 => "log, flush per append, 32 appenders",
        }
    }
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Sample {
    pub case: Case,
    pub batch_bytes: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
    pub appends: u64,
    pub fdatasyncs: u64,
}

pub fn run(args: Args) -> Result<(), String> {
    std::fs::create_dir_all(&args.data_dir).map_err(|e| format!("create {}: {e}", args.data_dir.display()))?;
    let (bytes, runs) = if args.quick {
        (64 << 20, 1)
    } else {
        (args.bytes, args.runs)
    };
    let flush_limit = Duration::from_secs_f64(if args.quick { 0.5 } else { args.flush_seconds });
    let machine = Machine::describe(&args.data_dir);
    let data_dir = args.data_dir.clone();
    let sizes = if args.batch_sizes.is_empty() {
        BATCH_SIZES.to_vec()
    } else {
        args.batch_sizes.clone()
    };
    let no_flush_only = args.no_flush_only;
    if let Some(bytes) = args.segment_zero_ahead_bytes {
        ZERO_AHEAD_BYTES
            .set(bytes)
            .map_err(|_| "zero-ahead set twice".to_string())?;
    }
    let samples = LocalExecutorBuilder::new(if std::env::var_os("CORELOG_BENCH_UNPINNED").is_some() {
        glommio::Placement::Unbound
    } else {
        glommio::Placement::Fixed(0)
    })
    .io_memory(IO_MEMORY_BYTES)
    .spawn(move || async move { measure(&data_dir, &sizes, no_flush_only, bytes, runs, flush_limit).await })
    .map_err(|e| format!("start executor: {e}"))?
    .join()
    .map_err(|e| format!("benchmark thread: {e}"))??;
    let _ = std::fs::remove_dir_all(&args.data_dir);
    let report = render(&machine, &samples, bytes, runs, flush_limit);
    println!("{report}");
    if !args.quick && !args.no_flush_only && args.batch_sizes.is_empty() && args.segment_zero_ahead_bytes.is_none() {
        std::fs::create_dir_all(&args.report_dir).map_err(|e| e.to_string())?;
        let md = args.report_dir.join("storage.md");
        std::fs::write(&md, &report).map_err(|e| format!("write {}: {e}", md.display()))?;
        let json = serde_json::json!({ "machine": machine, "runs": runs, "cell_bytes": bytes, "samples": samples });
        let path = args.report_dir.join("storage.json");
        std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")).map_err(|e| e.to_string())?;
        eprintln!("wrote {} and {}", md.display(), path.display());
        crate::index::write(&args.report_dir)?;
    }
    Ok(())
}

fn batches(batch_bytes: usize) -> Vec<Rc<Vec<u8>>> {
    // Per-record overhead in the archive is a few dozen bytes: aim under the size.
    let records = (batch_bytes / (RECORD_BYTES + 48)).max(1);
    (0..BATCH_POOL)
        .map(|i| {
            let mut builder = RecordBatchBuilder::new();
            let value: Vec<u8> = (0..RECORD_BYTES).map(|b| (b + i) as u8).collect();
            for r in 0..records {
                builder.push(
                    1_700_000_000_000 + r as i64,
                    Some(&(r as u64).to_le_bytes()),
                    Some(&value),
                    vec![],
                );
            }
            Rc::new(builder.build())
        })
        .collect()
}

fn log_config(flush: FlushPolicy) -> LogConfig {
    let default = LogConfig::default();
    LogConfig {
        flush,
        segment_zero_ahead_bytes: ZERO_AHEAD_BYTES
            .get()
            .copied()
            .unwrap_or(default.segment_zero_ahead_bytes),
        ..default
    }
}

async fn measure(
    dir: &Path,
    sizes: &[usize],
    no_flush_only: bool,
    bytes: u64,
    runs: usize,
    flush_limit: Duration,
) -> Result<Vec<Sample>, String> {
    storage::device::prime_iopoll_probe(dir)
        .await
        .map_err(|e| e.to_string())?;
    let mut samples = Vec::new();
    for run in 0..runs {
        for &batch_bytes in sizes {
            let pool = batches(batch_bytes);
            let cases: &[Case] = if no_flush_only {
                &[Case::RawWrite, Case::RawWritePreallocated, Case::LogNoFlush]
            } else {
                &[
                    Case::RawWrite,
                    Case::RawWritePreallocated,
                    Case::LogNoFlush,
                    Case::LogFlushEachAppend1,
                    Case::LogFlushEachAppend32,
                ]
            };
            for &case in cases {
                let cell_dir = dir.join(format!("run{run}-{batch_bytes}-{case:?}"));
                let _ = std::fs::remove_dir_all(&cell_dir);
                std::fs::create_dir_all(&cell_dir).map_err(|e| e.to_string())?;
                let sample = match case {
                    Case::RawWrite => raw_write(&cell_dir, batch_bytes, bytes, false).await,
                    Case::RawWritePreallocated => raw_write(&cell_dir, batch_bytes, bytes, true).await,
                    Case::LogNoFlush => {
                        log_append(&cell_dir, &pool, batch_bytes, FlushPolicy::Manual, 1, bytes, None).await
                    }
                    Case::LogFlushEachAppend1 => {
                        log_append(
                            &cell_dir,
                            &pool,
                            batch_bytes,
                            FlushPolicy::EveryAppend,
                            1,
                            bytes,
                            Some(flush_limit),
                        )
                        .await
                    }
                    Case::LogFlushEachAppend32 => {
                        log_append(
                            &cell_dir,
                            &pool,
                            batch_bytes,
                            FlushPolicy::EveryAppend,
                            32,
                            bytes,
                            Some(flush_limit),
                        )
                        .await
                    }
                }?;
                let sample = Sample { case, ..sample };
                eprintln!(
                    "run {}/{runs} batch {:>7} B  {:<38} {:>8.1} MB/s  ({} appends, {} fdatasyncs)",
                    run + 1,
                    batch_bytes,
                    case.label(),
                    sample.mb_per_s,
                    sample.appends,
                    sample.fdatasyncs
                );
                samples.push(sample);
                let _ = std::fs::remove_dir_all(&cell_dir);
            }
        }
    }
    Ok(samples)
}

/// The baseline: the same number of bytes written sequentially with O_DIRECT
/// through glommio, in buffers as large as the log's write buffer, one write
/// in flight at a time (the log's own pattern), no copy, no checks. With
/// `preallocate`, the file is extended ahead of the writes in the log's
/// steps, as the log does.
pub(crate) async fn raw_write(dir: &Path, batch_bytes: usize, bytes: u64, preallocate: bool) -> Result<Sample, String> {
    let path = dir.join("raw");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .dma_open(&path)
        .await
        .map_err(|e| e.to_string())?;
    let buffer_bytes = log_config(FlushPolicy::Manual).write_buffer_bytes;
    let mut buffer = file.alloc_dma_buffer(buffer_bytes);
    buffer.as_bytes_mut().fill(0x5a);
    let buffer = Rc::new(buffer);
    let start = Instant::now();
    let mut position = 0u64;
    let mut preallocated = 0u64;
    let step = log_config(FlushPolicy::Manual).segment_preallocate_bytes;
    while position < bytes {
        if preallocate && position + buffer_bytes as u64 > preallocated {
            preallocated = (position + buffer_bytes as u64).next_multiple_of(step);
            file.pre_allocate(preallocated, false)
                .await
                .map_err(|e| e.to_string())?;
        }
        let n = file
            .write_rc_at(buffer.clone(), position)
            .await
            .map_err(|e| e.to_string())?;
        position += n as u64;
    }
    file.fdatasync().await.map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    close(file).await?;
    Ok(Sample {
        case: if preallocate {
            Case::RawWritePreallocated
        } else {
            Case::RawWrite
        },
        batch_bytes,
        bytes: position,
        seconds,
        mb_per_s: position as f64 / seconds / 1e6,
        appends: 0,
        fdatasyncs: 1,
    })
}

async fn close(file: DmaFile) -> Result<(), String> {
    file.close().await.map_err(|e| e.to_string())
}

async fn log_append(
    dir: &Path,
    pool: &[Rc<Vec<u8>>],
    batch_bytes: usize,
    flush: FlushPolicy,
    appenders: usize,
    bytes: u64,
    time_limit: Option<Duration>,
) -> Result<Sample, String> {
    let log = PartitionLog::open(dir, log_config(flush))
        .await
        .map_err(|e| e.to_string())?;
    let frame_bytes = pool[0].len() as u64;
    let appends_total = bytes.div_ceil(frame_bytes);
    let start = Instant::now();
    let deadline = time_limit.map(|limit| start + limit);
    let tasks: Vec<_> = (0..appenders)
        .map(|a| {
            let log = log.clone();
            let pool: Vec<Rc<Vec<u8>>> = pool.to_vec();
            glommio::spawn_local(async move {
                let mut appended = 0u64;
                let mut i = a as u64;
                while i < appends_total {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    log.append(&pool[(i as usize) % pool.len()])
                        .await
                        .map_err(|e| e.to_string())?;
                    appended += 1;
                    i += appenders as u64;
                }
                Ok::<u64, String>(appended)
            })
        })
        .collect();
    let mut appends = 0;
    for task in tasks {
        appends += task.await?;
    }
    // Without a flush policy, the cell ends when the bytes are durable, as
    // the raw write's does.
    log.flush().await.map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    let stats = log.stats();
    if std::env::var_os("CORELOG_BENCH_DEBUG").is_some() {
        eprintln!("{stats:?} over {seconds:.3} s");
    }
    log.close().await.map_err(|e| e.to_string())?;
    let written = appends * frame_bytes;
    Ok(Sample {
        case: Case::LogNoFlush,
        batch_bytes,
        bytes: written,
        seconds,
        mb_per_s: written as f64 / seconds / 1e6,
        appends,
        fdatasyncs: stats.flushes,
    })
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn render(machine: &Machine, samples: &[Sample], bytes: u64, runs: usize, flush_limit: Duration) -> String {
    let cell = |case: Case, batch: usize| -> (f64, Vec<f64>, f64) {
        let matching: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.case == case && s.batch_bytes == batch)
            .collect();
        let rates: Vec<f64> = matching.iter().map(|s| s.mb_per_s).collect();
        let per_sync = median(
            matching
                .iter()
                .map(|s| s.appends as f64 / (s.fdatasyncs.max(1)) as f64)
                .collect(),
        );
        (median(rates.clone()), rates, per_sync)
    };
    let mut out = String::new();
    out.push_str("# Storage engine: append throughput\n\n");
    out.push_str("Generated by `cargo run --release -p corelog-bench -- storage`; do not edit by hand.\n\n");
    out.push_str(&format!(
        "One partition log on one glommio executor pinned to CPU 0, appending pre-built record batches of 1 KiB records. \
         No-flush cells write {} MiB and end with one flush (so they end durable, like the raw write); \
         flush-per-append cells run for {:.1} s. Every cell ran {runs} time(s) in this run, interleaved; \
         figures are medians (MB/s, 10^6 bytes/s), with every run's figure in brackets.\n\n",
        bytes >> 20,
        flush_limit.as_secs_f64()
    ));
    out.push_str(
        "The baseline is a raw O_DIRECT sequential write of the same number of bytes through glommio, \
                  in buffers the size of the log's write buffer, one write in flight: the log's own I/O pattern \
                  without its copy into the buffer, its checks (rkyv validation, crc32c), stamping or indexing. \
                  It is measured twice: writing past the end of the file (each write extends it), and into a file \
                  extended ahead with fallocate in 32 MiB steps, as the log does. On ext4 an O_DIRECT write that \
                  extends the file is handed to an io_uring worker thread that inherits the executor's core, so \
                  it cannot overlap the executor's own work; writes inside the file's size run asynchronously. \
                  The ratio is taken against the faster of the two.\n\n",
    );
    out.push_str("## Machine\n\n");
    out.push_str(&machine.markdown());
    out.push_str(
        "\n## Without flush: log against raw\n\n\
         | batch | raw write | raw write, preallocated | log, no flush | log / best raw |\n|---|---|---|---|---|\n",
    );
    for batch in BATCH_SIZES {
        let (raw, raw_runs, _) = cell(Case::RawWrite, batch);
        let (pre, pre_runs, _) = cell(Case::RawWritePreallocated, batch);
        let (log, log_runs, _) = cell(Case::LogNoFlush, batch);
        out.push_str(&format!(
            "| {} KiB | {raw:.0} {raw_runs:.0?} | {pre:.0} {pre_runs:.0?} | {log:.0} {log_runs:.0?} | **{:.0}%** |\n",
            batch >> 10,
            100.0 * log / raw.max(pre)
        ));
    }
    out.push_str("\n## Flush per append: group commit\n\n| batch | appenders | log MB/s | / log without flush | appends per fdatasync |\n|---|---|---|---|---|\n");
    for batch in BATCH_SIZES {
        let (no_flush, _, _) = cell(Case::LogNoFlush, batch);
        for (case, appenders) in [(Case::LogFlushEachAppend1, 1), (Case::LogFlushEachAppend32, 32)] {
            let (rate, runs, per_sync) = cell(case, batch);
            out.push_str(&format!(
                "| {} KiB | {appenders} | {rate:.0} {runs:.0?} | **{:.0}%** | {per_sync:.1} |\n",
                batch >> 10,
                100.0 * rate / no_flush
            ));
        }
    }
    out
}
