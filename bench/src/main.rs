//! corelog-bench: benchmarks of corelog and of the machine it runs on.
//!
//! Each benchmark measures corelog beside a baseline of the same machine
//! taken in the same run (a raw O_DIRECT write of the same bytes, for the
//! storage engine), repeats every cell, and writes the medians with the
//! machine's description to `perf-reports/`.

mod broker_bench;
mod broker_process;
mod cluster_bench;
mod index;
mod kafka_bench;
mod kafka_client;
mod limits;
mod machine;
mod storage_bench;
mod sweep;
mod workload;
mod workload_report;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "corelog-bench",
    about = "Benchmarks of corelog and of the machine it runs on"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Append throughput of the partition log against raw O_DIRECT writes.
    Storage(storage_bench::Args),
    /// Produce and consume throughput of a broker with 1 and with 2 shards.
    Broker(broker_bench::Args),
    /// Produce and consume throughput through the Kafka listener against
    /// the native protocol, on one broker.
    Kafka(kafka_bench::Args),
    /// Three nodes as one cluster: replication factor 3 against 1 with
    /// acks=all, failover time over repeated leader kills, and what idle
    /// replicated partitions cost.
    Cluster(cluster_bench::Args),
    /// Run a workload preset (bench/workloads/*.toml) and write its report.
    Run(workload::Args),
    /// Run a workload at each value of one parameter; one table and plot.
    Sweep(sweep::Args),
    /// Regenerate perf-reports/README.md from the reports' JSON files.
    Index {
        #[arg(long, default_value_os_t = default_report_dir())]
        report_dir: PathBuf,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Storage(args) => storage_bench::run(args),
        Command::Broker(args) => broker_bench::run(args),
        Command::Kafka(args) => kafka_bench::run(args),
        Command::Cluster(args) => cluster_bench::run(args),
        Command::Run(args) => workload::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Index { report_dir } => index::write(&report_dir),
    };
    if let Err(error) = result {
        eprintln!("corelog-bench: {error}");
        std::process::exit(1);
    }
}

/// Where reports go by default: `perf-reports/` at the workspace root.
pub fn default_report_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../perf-reports")
}
