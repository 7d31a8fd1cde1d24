//! The `corelog` binary: `serve` runs a broker; the other commands are
//! clients of a running one (topics, produce, consume).

mod alloc;
mod cli;
mod config;
mod controller;
mod error;
mod group;
mod kafka;
mod metrics;
mod offsets;
mod producer_state;
mod replication;
mod runtime;
mod server;
mod shard;
mod stalls;
mod topics;
mod tune;
mod txn;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{BrokerConfig, DEFAULT_LISTEN};

#[global_allocator]
static ALLOCATOR: alloc::CountingAllocator = alloc::CountingAllocator;

#[derive(Parser)]
#[command(name = "corelog", version, about = "An event streaming broker, one thread per core")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `serve`'s flags, each over the config file's key.
#[derive(clap::Args)]
struct ServeArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the native protocol; port 0 picks a free port.
    #[arg(long)]
    listen: Option<String>,
    /// Address of the Kafka protocol (default 127.0.0.1:9092; "none":
    /// off); port 0 picks a free port.
    #[arg(long)]
    kafka_listen: Option<String>,
    /// Address of the Prometheus metrics and health endpoint (default
    /// 127.0.0.1:9644; "none": off); port 0 picks a free port.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// How log lines are written to stderr: text, or json for log shippers
    /// (one object a line). RUST_LOG sets the filter (default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[arg(long, conflicts_with = "cpus")]
    shards: Option<usize>,
    /// Cores to run shards on, e.g. 0,2,4.
    #[arg(long, value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// This node's id in its cluster (1 or more).
    #[arg(long)]
    node_id: Option<u64>,
    /// The internal listener other nodes reach this one on.
    #[arg(long)]
    rpc_listen: Option<String>,
    /// Every voter of the cluster, this node included:
    /// 1@host:port,2@host:port,3@host:port (their --rpc-listen).
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<String>>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker (defaults: data in ./corelog-data, listening on 127.0.0.1:9292, one shard per core).
    Serve(ServeArgs),
    /// A node's view of its cluster's controller.
    Cluster {
        #[command(subcommand)]
        command: cli::ClusterCommand,
    },
    /// Create, list, describe and delete topics.
    Topic {
        #[command(subcommand)]
        command: cli::TopicCommand,
        #[arg(long, global = true, default_value = DEFAULT_LISTEN)]
        broker: String,
    },
    /// List and describe consumer groups; reset their committed offsets.
    Group {
        #[command(subcommand)]
        command: cli::GroupCommand,
        #[arg(long, global = true, default_value = DEFAULT_LISTEN)]
        broker: String,
    },
    /// The transactions a node's coordinators hold, and each one's state.
    Transactions {
        #[command(subcommand)]
        command: cli::TransactionsCommand,
        #[arg(long, global = true, default_value = DEFAULT_LISTEN)]
        broker: String,
    },
    /// A node's data directory: its filesystem's total and usable bytes,
    /// and each partition's bytes.
    LogDirs {
        #[arg(long, default_value = DEFAULT_LISTEN)]
        broker: String,
    },
    /// Produce lines from standard input, one record each.
    Produce(cli::ProduceArgs),
    /// Print a topic's records, one per line.
    Consume(cli::ConsumeArgs),
    /// Check (and with --apply, set) what on this machine bears on the
    /// broker: CPU governor, SMT, isolated cores, interrupts, the data
    /// disk's scheduler and queue, its filesystem and mount options,
    /// fs.aio-max-nr, memlock, transparent huge pages, the clock source.
    Tune(TuneArgs),
}

#[derive(clap::Args)]
struct TuneArgs {
    /// Report only (the default).
    #[arg(long, conflicts_with = "apply")]
    check: bool,
    /// Set what can be set at run time (root), and say what changed.
    #[arg(long)]
    apply: bool,
    /// The broker's config file: its data directory and shard cores.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The shards' cores, e.g. 0,2,4 (default: the config's).
    #[arg(long, value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// One JSON object a check instead of a table.
    #[arg(long)]
    json: bool,
    /// Where procfs and sysfs are found (tests).
    #[arg(long, default_value = "/", hide = true)]
    root: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let json = matches!(&cli.command, Command::Serve(args) if args.log_format == LogFormat::Json);
    if json {
        // One JSON object a line, for log shippers.
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    }
    // A shard that panics takes the node with it: a node missing a core
    // (its partitions, its controller replica) while the rest answers is
    // worse than one that is down, which clients and peers handle.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Cluster { command } => cli::cluster(command),
        Command::Topic { command, broker } => cli::topic(&broker, command),
        Command::Group { command, broker } => cli::group(&broker, command),
        Command::Transactions { command, broker } => cli::transactions(&broker, command),
        Command::LogDirs { broker } => cli::log_dirs(&broker),
        Command::Produce(args) => cli::produce(args),
        Command::Consume(args) => cli::consume(args),
        Command::Tune(args) => tune(args),
    };
    if let Err(error) = result {
        eprintln!("corelog: {error}");
        std::process::exit(1);
    }
}

fn tune(args: TuneArgs) -> Result<(), String> {
    let mut config = match &args.config {
        Some(path) => BrokerConfig::from_toml_file(path).map_err(|e| e.to_string())?,
        None => BrokerConfig::default(),
    };
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    if args.cpus.is_some() {
        config.cpus = args.cpus;
    }
    let data_dir = std::env::current_dir()
        .map_err(|e| format!("the working directory: {e}"))?
        .join(&config.data_dir);
    let machine = tune::Machine {
        root: args.root,
        data_dir,
        shard_cpus: config.shard_cpus().map_err(|e| e.to_string())?,
    };
    let mut checks = machine.checks();
    // --check is the default; clap refuses it beside --apply.
    if args.apply && !args.check {
        for line in tune::apply(&machine, &checks) {
            println!("{line}");
        }
        checks = machine.checks();
    }
    let report = match args.json {
        true => tune::report_json(&checks),
        false => tune::report(&checks),
    };
    print!("{report}");
    Ok(())
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let mut config = match args.config {
        Some(path) => BrokerConfig::from_toml_file(&path).map_err(|e| e.to_string())?,
        None => BrokerConfig::default(),
    };
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(kafka_listen) = args.kafka_listen {
        config.kafka_listen = kafka_listen;
    }
    if let Some(metrics_listen) = args.metrics_listen {
        config.metrics_listen = metrics_listen;
    }
    if args.shards.is_some() {
        config.shards = args.shards;
        config.cpus = None;
    }
    if args.cpus.is_some() {
        config.cpus = args.cpus;
    }
    if let Some(node_id) = args.node_id {
        config.node_id = node_id;
    }
    if args.rpc_listen.is_some() {
        config.rpc_listen = args.rpc_listen;
    }
    if let Some(peers) = args.peers {
        config.peers = peers;
    }
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .map_err(|e| format!("install signal handlers: {e}"))?;
    let data_dir = config.data_dir.clone();
    let node_id = config.node_id;
    let running = runtime::start(config).map_err(|e| e.to_string())?;
    tracing::info!(addr = %running.addr, data_dir = %data_dir.display(), "corelog listening");
    println!("corelog listening on {}", running.addr);
    for (shard, addr) in running.shard_addrs.iter().enumerate() {
        tracing::info!(shard, %addr, "native listener of the shard's own (its node id)");
    }
    if let Some(kafka_addr) = running.kafka_addr {
        tracing::info!(addr = %kafka_addr, "kafka listener");
        println!("corelog kafka listening on {kafka_addr}");
        for (shard, addr) in running.kafka_shard_addrs.iter().enumerate() {
            tracing::info!(shard, %addr, "kafka listener of the shard's own (its broker id)");
        }
    }
    if let Some(rpc_addr) = running.rpc_addr {
        tracing::info!(addr = %rpc_addr, node = node_id, "internal listener (the controller's raft)");
        println!("corelog rpc listening on {rpc_addr}");
    }
    if let Some(metrics_addr) = running.metrics_addr {
        tracing::info!(addr = %metrics_addr, "metrics and health listener");
        println!("corelog metrics listening on {metrics_addr}");
    }
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down: flushing and closing partitions");
    }
    running.health.stopping();
    running.shutdown();
    tracing::info!("stopped");
    Ok(())
}
