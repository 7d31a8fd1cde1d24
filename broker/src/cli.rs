//! The client commands of the `corelog` binary.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use net::client::{partition_for_key, Connection};
use net::group::{GroupConfig, GroupConsumer, OffsetReset};
use net::messages::{acks, TopicConfig, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};
use storage::batch::{self, RecordBatchBuilder};

use crate::config::DEFAULT_LISTEN;

/// Records per batch the console producer sends at most.
const PRODUCE_BATCH_RECORDS_MAX: usize = 1000;
/// Bytes per batch the console producer sends at most.
const PRODUCE_BATCH_BYTES_MAX: usize = 256 << 10;
/// Bytes a console consumer fetches per partition at a time.
const FETCH_BYTES_MAX: u32 = 1 << 20;

#[derive(clap::Subcommand)]
pub enum TopicCommand {
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Replicas of each partition; -1: the cluster's default.
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        replication_factor: i16,
        /// Topic configs, e.g. retention.ms=86400000.
        #[arg(long = "config", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
    },
    List,
    Describe {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Changes a topic's configs live (Kafka's IncrementalAlterConfigs; with
    /// --replace, AlterConfigs): e.g. --set retention.ms=3600000 --delete
    /// segment.bytes.
    AlterConfig {
        name: String,
        #[arg(long = "set", value_parser = parse_key_value)]
        set: Vec<(String, String)>,
        /// Keys to put back to their defaults.
        #[arg(long = "delete")]
        delete: Vec<String>,
        /// Every key not set goes back to its default.
        #[arg(long)]
        replace: bool,
        /// Only check the change.
        #[arg(long)]
        validate_only: bool,
    },
    /// Grows a topic to --count partitions (never fewer: keys would move).
    AddPartitions {
        name: String,
        #[arg(long)]
        count: u32,
        #[arg(long)]
        validate_only: bool,
    },
    /// Moves a partition's log start to --before (Kafka's DeleteRecords):
    /// the records below it are gone for consumers, whole segments below
    /// it from the disk. -1: the high watermark (everything so far).
    DeleteRecords {
        name: String,
        #[arg(long)]
        partition: u32,
        #[arg(long, allow_negative_numbers = true)]
        before: i64,
    },
    /// The producers a partition's leader remembers: id, epoch, last
    /// sequence, and where its open transaction begins.
    Producers {
        name: String,
        #[arg(long)]
        partition: u32,
    },
    /// Moves a replicated partition's leadership to the replica on a node
    /// (the node, brought up to date, is told to campaign at once);
    /// answered once it leads.
    TransferLeader {
        name: String,
        #[arg(long)]
        partition: u32,
        /// The node whose replica should lead.
        #[arg(long)]
        to: u64,
    },
}

#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// A node's view of the controller: its leader and term, the nodes
    /// registered and the topics, as one JSON line.
    Status {
        /// The node's internal address (its --rpc-listen).
        #[arg(long)]
        node: String,
    },
}

#[derive(clap::Args)]
pub struct ProduceArgs {
    topic: String,
    #[arg(long, default_value = DEFAULT_LISTEN)]
    broker: String,
    /// Split each line into key and value at the first occurrence of this.
    #[arg(long)]
    key_separator: Option<String>,
    /// 0, 1 or all.
    #[arg(long, default_value = "1")]
    acks: String,
}

#[derive(clap::Args)]
pub struct ConsumeArgs {
    topic: String,
    #[arg(long, default_value = DEFAULT_LISTEN)]
    broker: String,
    #[arg(long)]
    from_beginning: bool,
    /// Consume as a member of this consumer group: share the topic's
    /// partitions with the group's other members, start at the group's
    /// committed offsets (else as --from-beginning says), and commit what
    /// was printed every 5 s and on exit.
    #[arg(long, conflicts_with = "partition")]
    group: Option<String>,
    #[arg(long, requires = "offset")]
    partition: Option<u32>,
    #[arg(long, requires = "partition")]
    offset: Option<u64>,
    #[arg(long)]
    max_messages: Option<u64>,
    /// Stop after this long without a new record.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Print `key<TAB>value`.
    #[arg(long)]
    print_key: bool,
    /// read_uncommitted (every record, markers excepted) or read_committed
    /// (only records of committed transactions and of none, up to the last
    /// stable offset).
    #[arg(long, default_value = "read_uncommitted", value_parser = ["read_uncommitted", "read_committed"])]
    isolation_level: String,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

fn run<T>(future: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .make()
        .map_err(|e| format!("start executor: {e}"))?
        .run(future)
}

/// A topic's partition count; an error if the broker does not know it.
/// A connection to each partition's leader, as the metadata names it (in a
/// cluster, a partition lives on one node; with shard ports, on one core).
struct Leaders {
    /// Each partition's leader address.
    addrs: Vec<String>,
    connections: std::collections::HashMap<String, Connection>,
}

impl Leaders {
    async fn of(connection: &mut Connection, topic: &str) -> Result<Leaders, String> {
        let metadata = connection
            .metadata(Some(vec![topic.to_string()]))
            .await
            .map_err(|e| e.to_string())?;
        let bootstrap = connection.peer().map(|a| a.to_string()).unwrap_or_default();
        let addrs = match metadata.topics.first() {
            Some(t) if t.error == 0 && !t.partitions.is_empty() => t
                .partitions
                .iter()
                .map(|p| {
                    metadata
                        .brokers
                        .iter()
                        .find(|b| b.node_id == p.leader)
                        .map_or_else(|| bootstrap.clone(), |b| format!("{}:{}", b.host, b.port))
                })
                .collect(),
            _ => return Err(format!("unknown topic {topic}")),
        };
        Ok(Leaders {
            addrs,
            connections: std::collections::HashMap::new(),
        })
    }

    fn partitions(&self) -> u32 {
        self.addrs.len() as u32
    }

    async fn of_partition(&mut self, partition: u32) -> Result<&mut Connection, String> {
        let addr = &self.addrs[partition as usize];
        if !self.connections.contains_key(addr) {
            let connection = Connection::connect(addr).await.map_err(|e| e.to_string())?;
            self.connections.insert(addr.clone(), connection);
        }
        Ok(self.connections.get_mut(addr).expect("inserted"))
    }
}

pub fn topic(broker: &str, command: TopicCommand) -> Result<(), String> {
    run(async {
        let mut connection = Connection::connect(broker).await.map_err(|e| e.to_string())?;
        match command {
            TopicCommand::Create {
                name,
                partitions,
                replication_factor,
                configs,
            } => {
                let configs = configs
                    .into_iter()
                    .map(|(key, value)| TopicConfig { key, value })
                    .collect();
                connection
                    .create_topic_with(&name, partitions, replication_factor, configs, false)
                    .await
                    .map_err(|e| e.to_string())?;
                println!("created topic {name} with {partitions} partitions");
            }
            TopicCommand::List => {
                for topic in connection.metadata(None).await.map_err(|e| e.to_string())?.topics {
                    println!("{}", topic.name);
                }
            }
            TopicCommand::Describe { name } => {
                let metadata = connection
                    .metadata(Some(vec![name.clone()]))
                    .await
                    .map_err(|e| e.to_string())?;
                let topic = metadata.topics.into_iter().next().ok_or("no such topic")?;
                if topic.error != 0 {
                    return Err(format!("topic {name}: {:?}", net::ErrorCode::from_code(topic.error)));
                }
                println!("topic {} partitions {}", topic.name, topic.partitions.len());
                for config in &topic.configs {
                    println!("  config {}={}", config.key, config.value);
                }
                for p in &topic.partitions {
                    let replicas = format!(
                        "leader {} epoch {} replicas {:?} isr {:?}",
                        p.leader as i32, p.leader_epoch, p.replicas, p.in_sync
                    );
                    match net::ErrorCode::from_code(p.error) {
                        net::ErrorCode::None => println!(
                            "  partition {} {replicas} shard {} log_start_offset {} high_watermark {}",
                            p.partition, p.shard, p.log_start_offset, p.high_watermark
                        ),
                        // A follower here, or hosted on other nodes only: its
                        // offsets are the leader's to say.
                        net::ErrorCode::NotLeaderOrFollower => {
                            println!("  partition {} {replicas} (not led here)", p.partition)
                        }
                        error => println!("  partition {} {replicas} error {error:?}", p.partition),
                    }
                }
            }
            TopicCommand::Delete { name } => {
                connection.delete_topic(&name).await.map_err(|e| e.to_string())?;
                println!("deleted topic {name}");
            }
            TopicCommand::AlterConfig {
                name,
                set,
                delete,
                replace,
                validate_only,
            } => {
                let request = net::messages::AlterConfigsRequest {
                    topic: name.clone(),
                    replace,
                    set: set.into_iter().map(|(key, value)| TopicConfig { key, value }).collect(),
                    delete,
                    validate_only,
                    forwarded: false,
                };
                connection.alter_configs(&request).await.map_err(|e| e.to_string())?;
                match validate_only {
                    true => println!("the configs of topic {name} would change"),
                    false => println!("changed the configs of topic {name}"),
                }
            }
            TopicCommand::AddPartitions {
                name,
                count,
                validate_only,
            } => {
                let request = net::messages::CreatePartitionsRequest {
                    topic: name.clone(),
                    count,
                    validate_only,
                    forwarded: false,
                };
                connection
                    .create_partitions(&request)
                    .await
                    .map_err(|e| e.to_string())?;
                match validate_only {
                    true => println!("topic {name} could grow to {count} partitions"),
                    false => println!("topic {name} has {count} partitions"),
                }
            }
            TopicCommand::DeleteRecords {
                name,
                partition,
                before,
            } => {
                let mut leaders = Leaders::of(&mut connection, &name).await?;
                if partition >= leaders.partitions() {
                    return Err(format!("topic {name} has no partition {partition}"));
                }
                let request = net::messages::DeleteRecordsRequest {
                    topic: name.clone(),
                    partition,
                    offset: before,
                };
                let start = leaders
                    .of_partition(partition)
                    .await?
                    .delete_records(&request)
                    .await
                    .map_err(|e| e.to_string())?;
                println!("{name}/{partition} starts at offset {start}");
            }
            TopicCommand::Producers { name, partition } => {
                let mut leaders = Leaders::of(&mut connection, &name).await?;
                if partition >= leaders.partitions() {
                    return Err(format!("topic {name} has no partition {partition}"));
                }
                let producers = leaders
                    .of_partition(partition)
                    .await?
                    .describe_producers(&name, partition)
                    .await
                    .map_err(|e| e.to_string())?;
                for p in producers {
                    let transaction = match p.txn_start_offset {
                        -1 => "-".to_string(),
                        offset => offset.to_string(),
                    };
                    println!(
                        "producer {} epoch {} last_sequence {} transaction_start_offset {transaction}",
                        p.producer_id, p.epoch, p.last_sequence
                    );
                }
            }
            TopicCommand::TransferLeader { name, partition, to } => {
                let request = net::messages::TransferLeaderRequest {
                    topic: name.clone(),
                    partition,
                    to,
                    forwarded: false,
                };
                connection.transfer_leader(&request).await.map_err(|e| e.to_string())?;
                println!("{name}/{partition} is led by node {to}");
            }
        }
        Ok(())
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn produce(args: ProduceArgs) -> Result<(), String> {
    let acks = match args.acks.as_str() {
        "0" => acks::NONE,
        "1" => acks::LEADER,
        "all" | "-1" => acks::ALL,
        other => return Err(format!("--acks {other}: must be 0, 1 or all")),
    };
    run(async move {
        let mut bootstrap = Connection::connect(&args.broker).await.map_err(|e| e.to_string())?;
        let mut leaders = Leaders::of(&mut bootstrap, &args.topic).await?;
        let partitions = leaders.partitions();
        let mut builders: Vec<RecordBatchBuilder> = (0..partitions).map(|_| RecordBatchBuilder::new()).collect();
        // Records without a key stick to one partition per batch, then move on.
        let mut sticky = 0u32;
        let mut sent = 0u64;
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let line = line.map_err(|e| format!("read standard input: {e}"))?;
            let (key, value) = match &args.key_separator {
                Some(sep) => match line.split_once(sep.as_str()) {
                    Some((k, v)) => (Some(k.as_bytes()), v.as_bytes()),
                    None => (None, line.as_bytes()),
                },
                None => (None, line.as_bytes()),
            };
            let partition = match key {
                Some(key) => partition_for_key(key, partitions),
                None => sticky,
            };
            let builder = &mut builders[partition as usize];
            builder.push(now_ms(), key, Some(value), vec![]);
            if builder.len() >= PRODUCE_BATCH_RECORDS_MAX || builder.payload_bytes() >= PRODUCE_BATCH_BYTES_MAX {
                let full = std::mem::take(builder);
                sent += send(
                    leaders.of_partition(partition).await?,
                    &args.topic,
                    partition,
                    full,
                    acks,
                )
                .await?;
                if key.is_none() {
                    sticky = (sticky + 1) % partitions;
                }
            }
        }
        for (partition, builder) in builders.into_iter().enumerate() {
            if !builder.is_empty() {
                let partition = partition as u32;
                sent += send(
                    leaders.of_partition(partition).await?,
                    &args.topic,
                    partition,
                    builder,
                    acks,
                )
                .await?;
            }
        }
        eprintln!("produced {sent} records to {}", args.topic);
        Ok(())
    })
}

async fn send(
    connection: &mut Connection,
    topic: &str,
    partition: u32,
    builder: RecordBatchBuilder,
    acks: i8,
) -> Result<u64, String> {
    let records = builder.len() as u64;
    let frame = builder.build();
    connection
        .produce(topic, partition, &frame, acks)
        .await
        .map_err(|e| format!("produce to {topic}/{partition}: {e}"))?;
    Ok(records)
}

pub fn consume(args: ConsumeArgs) -> Result<(), String> {
    if let Some(group) = args.group.clone() {
        return consume_in_group(args, group);
    }
    run(async move {
        let mut bootstrap = Connection::connect(&args.broker).await.map_err(|e| e.to_string())?;
        let mut leaders = Leaders::of(&mut bootstrap, &args.topic).await?;
        let partitions = leaders.partitions();
        let mut positions: Vec<(u32, u64)> = Vec::new();
        match (args.partition, args.offset) {
            (Some(partition), Some(offset)) => positions.push((partition, offset)),
            _ => {
                let start = if args.from_beginning {
                    EARLIEST_TIMESTAMP
                } else {
                    LATEST_TIMESTAMP
                };
                for partition in 0..partitions {
                    let offset = leaders
                        .of_partition(partition)
                        .await?
                        .list_offset(&args.topic, partition, start)
                        .await
                        .map_err(|e| e.to_string())?
                        .unwrap_or(0);
                    positions.push((partition, offset));
                }
            }
        }
        let mut printed = 0u64;
        let mut last_record = Instant::now();
        let isolation_level = if args.isolation_level == "read_committed" {
            net::messages::isolation::READ_COMMITTED
        } else {
            net::messages::isolation::READ_UNCOMMITTED
        };
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        loop {
            let mut progressed = false;
            for (partition, offset) in positions.iter_mut() {
                let wait = if progressed { 0 } else { 100 };
                let fetched = leaders
                    .of_partition(*partition)
                    .await?
                    .fetch_isolated(&args.topic, *partition, *offset, FETCH_BYTES_MAX, wait, isolation_level)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut aborted = net::consumer::AbortedFilter::new(&fetched.aborted);
                for frame in batch::frames(fetched.batches()) {
                    let info = batch::verify_crc(frame).map_err(|e| e.to_string())?;
                    let archived = batch::access(frame).map_err(|e| e.to_string())?;
                    if !aborted.keep(&info, frame) {
                        // Markers and aborted records are skipped, not printed.
                        *offset = (*offset).max(info.next_offset().0);
                        progressed = true;
                        continue;
                    }
                    for record in archived.records.iter() {
                        let record_offset = info.base_offset.0 + u64::from(record.offset_delta.to_native());
                        if record_offset < *offset {
                            continue;
                        }
                        if args.print_key {
                            out.write_all(record.key.as_ref().map_or(&[][..], |k| k.as_slice()))
                                .and_then(|_| out.write_all(b"\t"))
                                .map_err(|e| e.to_string())?;
                        }
                        out.write_all(record.value.as_ref().map_or(&[][..], |v| v.as_slice()))
                            .and_then(|_| out.write_all(b"\n"))
                            .map_err(|e| e.to_string())?;
                        printed += 1;
                        *offset = record_offset + 1;
                        progressed = true;
                        if args.max_messages.is_some_and(|max| printed >= max) {
                            out.flush().map_err(|e| e.to_string())?;
                            return Ok(());
                        }
                    }
                }
            }
            out.flush().map_err(|e| e.to_string())?;
            if progressed {
                last_record = Instant::now();
            } else if args
                .timeout_ms
                .is_some_and(|ms| last_record.elapsed() >= Duration::from_millis(ms))
            {
                return Ok(());
            }
        }
    })
}

/// How often a group console consumer commits what it printed.
const GROUP_COMMIT_INTERVAL: Duration = Duration::from_secs(5);

fn consume_in_group(args: ConsumeArgs, group: String) -> Result<(), String> {
    run(async move {
        let config = GroupConfig {
            auto_commit: None,
            reset: if args.from_beginning {
                OffsetReset::Earliest
            } else {
                OffsetReset::Latest
            },
            client_id: "corelog-console".to_string(),
            isolation_level: if args.isolation_level == "read_committed" {
                net::messages::isolation::READ_COMMITTED
            } else {
                net::messages::isolation::READ_UNCOMMITTED
            },
            ..GroupConfig::new(&group, &[args.topic.as_str()])
        };
        let mut member = GroupConsumer::join(&args.broker, config)
            .await
            .map_err(|e| e.to_string())?;
        // The next offset of each partition, as far as records were printed.
        let mut printed_to: BTreeMap<u32, u64> = BTreeMap::new();
        let mut printed = 0u64;
        let mut last_record = Instant::now();
        let mut last_commit = Instant::now();
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        let finished = loop {
            let records = member.poll().await.map_err(|e| e.to_string())?;
            let mut done = false;
            for r in &records {
                if args.print_key {
                    out.write_all(r.record.key.as_deref().unwrap_or_default())
                        .and_then(|_| out.write_all(b"\t"))
                        .map_err(|e| e.to_string())?;
                }
                out.write_all(r.record.value.as_deref().unwrap_or_default())
                    .and_then(|_| out.write_all(b"\n"))
                    .map_err(|e| e.to_string())?;
                printed_to.insert(r.record.partition, r.record.offset + 1);
                printed += 1;
                if args.max_messages.is_some_and(|max| printed >= max) {
                    done = true;
                    break;
                }
            }
            out.flush().map_err(|e| e.to_string())?;
            if !records.is_empty() {
                last_record = Instant::now();
            }
            let idle = args
                .timeout_ms
                .is_some_and(|ms| last_record.elapsed() >= Duration::from_millis(ms));
            if done || idle {
                break Ok(());
            }
            if last_commit.elapsed() >= GROUP_COMMIT_INTERVAL {
                last_commit = Instant::now();
                commit_printed(&mut member, &args.topic, &printed_to).await;
            }
        };
        commit_printed(&mut member, &args.topic, &printed_to).await;
        member.close().await.map_err(|e| e.to_string())?;
        finished
    })
}

/// Commits the printed positions of the partitions this member still owns
/// (a partition lost in a rebalance is another member's to commit).
async fn commit_printed(member: &mut GroupConsumer, topic: &str, printed_to: &BTreeMap<u32, u64>) {
    let owned: Vec<(String, u32, u64)> = printed_to
        .iter()
        .filter(|(p, _)| member.assignment().iter().any(|(t, q)| t == topic && q == *p))
        .map(|(p, next)| (topic.to_string(), *p, *next))
        .collect();
    if let Err(error) = member.commit_positions(&owned).await {
        eprintln!("corelog: commit failed: {error}");
    }
}

#[derive(clap::Subcommand)]
pub enum TransactionsCommand {
    /// Every transaction: id, producer, epoch, state.
    List {
        /// Only those in this state (Ongoing, CompleteCommit, ...).
        #[arg(long)]
        state: Option<String>,
    },
    /// One transaction: its state, producer, timeout, start and partitions.
    Describe { id: String },
}

pub fn transactions(broker: &str, command: TransactionsCommand) -> Result<(), String> {
    run(async {
        let mut connection = Connection::connect(broker).await.map_err(|e| e.to_string())?;
        let all = connection.list_transactions().await.map_err(|e| e.to_string())?;
        match command {
            TransactionsCommand::List { state } => {
                for t in all.iter().filter(|t| state.as_ref().is_none_or(|s| *s == t.state)) {
                    println!(
                        "{}\tproducer {}\tepoch {}\t{}",
                        t.transactional_id, t.producer_id, t.epoch, t.state
                    );
                }
            }
            TransactionsCommand::Describe { id } => {
                let t = all
                    .iter()
                    .find(|t| t.transactional_id == id)
                    .ok_or_else(|| format!("no transaction {id} on this node's coordinators"))?;
                println!(
                    "transaction {} producer {} epoch {} state {} timeout_ms {} started_ms {}",
                    t.transactional_id, t.producer_id, t.epoch, t.state, t.timeout_ms, t.started_ms
                );
                for p in &t.partitions {
                    println!("  partition {}/{}", p.topic, p.partition);
                }
            }
        }
        Ok(())
    })
}

pub fn log_dirs(broker: &str) -> Result<(), String> {
    run(async {
        let mut connection = Connection::connect(broker).await.map_err(|e| e.to_string())?;
        let dirs = connection.describe_log_dirs().await.map_err(|e| e.to_string())?;
        println!(
            "dir {} total_bytes {} usable_bytes {}",
            dirs.dir, dirs.total_bytes, dirs.usable_bytes
        );
        let mut partitions = dirs.partitions;
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        for p in partitions {
            println!("  {}/{} {}", p.topic, p.partition, p.bytes);
        }
        Ok(())
    })
}

#[derive(clap::Subcommand)]
pub enum GroupCommand {
    /// Every consumer group and its state.
    List,
    /// A group's members, their partitions, and committed offset and lag
    /// per partition.
    Describe { group: String },
    /// Deletes a group's commits of a topic (Kafka's OffsetDelete): refused
    /// while a member of the group consumes it.
    DeleteOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        /// Partitions to delete; default: every partition of the topic.
        #[arg(long = "partition")]
        partitions: Vec<u32>,
    },
    /// Moves a group's committed offsets (the group must have no members).
    ResetOffsets {
        group: String,
        /// Topics to reset; default: every topic the group has committed.
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// earliest, latest, or an offset.
        #[arg(long)]
        to: String,
    },
}

/// Where `reset-offsets --to` points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResetTo {
    Earliest,
    Latest,
    Offset(u64),
}

fn parse_reset_to(text: &str) -> Result<ResetTo, String> {
    match text {
        "earliest" => Ok(ResetTo::Earliest),
        "latest" => Ok(ResetTo::Latest),
        number => number
            .parse()
            .map(ResetTo::Offset)
            .map_err(|_| format!("--to {number}: earliest, latest or an offset")),
    }
}

pub fn group(broker: &str, command: GroupCommand) -> Result<(), String> {
    run(async {
        let mut connection = Connection::connect(broker).await.map_err(|e| e.to_string())?;
        match command {
            GroupCommand::List => {
                for group in connection.list_groups().await.map_err(|e| e.to_string())? {
                    println!("{}\t{}\t{}", group.group, group.state, group.protocol_type);
                }
            }
            GroupCommand::Describe { group } => {
                let described = connection.describe_group(&group).await.map_err(|e| e.to_string())?;
                println!(
                    "group {} state {} protocol {} generation {} members {}",
                    described.group,
                    described.state,
                    if described.protocol.is_empty() {
                        "-"
                    } else {
                        &described.protocol
                    },
                    described.generation,
                    described.members.len()
                );
                let mut owners = std::collections::BTreeMap::new();
                for member in &described.members {
                    let assignment: Vec<String> = decode_assignment(&member.assignment)
                        .into_iter()
                        .map(|(topic, p)| {
                            owners.insert((topic.clone(), p), member.member_id.clone());
                            format!("{topic}-{p}")
                        })
                        .collect();
                    println!(
                        "  member {} client {} partitions [{}]",
                        member.member_id,
                        member.client_id,
                        assignment.join(", ")
                    );
                }
                let committed = connection
                    .fetch_offsets(&group, None)
                    .await
                    .map_err(|e| e.to_string())?;
                println!(
                    "  {:<30} {:>9} {:>14} {:>14} {:>10}  member",
                    "topic", "partition", "committed", "log end", "lag"
                );
                for (topic, partition, offset) in committed {
                    let end = connection
                        .list_offset(&topic, partition, LATEST_TIMESTAMP)
                        .await
                        .ok()
                        .flatten();
                    let lag = match (offset, end) {
                        (Some(o), Some(e)) => e.saturating_sub(o).to_string(),
                        _ => "-".into(),
                    };
                    println!(
                        "  {:<30} {:>9} {:>14} {:>14} {:>10}  {}",
                        topic,
                        partition,
                        offset.map_or("-".into(), |o| o.to_string()),
                        end.map_or("-".into(), |e| e.to_string()),
                        lag,
                        owners.get(&(topic.clone(), partition)).map_or("-", String::as_str)
                    );
                }
            }
            GroupCommand::DeleteOffsets {
                group,
                topic,
                partitions,
            } => {
                let partitions = if partitions.is_empty() {
                    let metadata = connection
                        .metadata(Some(vec![topic.clone()]))
                        .await
                        .map_err(|e| e.to_string())?;
                    match metadata.topics.first() {
                        Some(t) if t.error == 0 => t.partitions.iter().map(|p| p.partition).collect(),
                        _ => return Err(format!("unknown topic {topic}")),
                    }
                } else {
                    partitions
                };
                let asked = partitions
                    .into_iter()
                    .map(|partition| net::messages::TopicPartition {
                        topic: topic.clone(),
                        partition,
                    })
                    .collect();
                let results = connection
                    .delete_group_offsets(&group, asked)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut refused = 0;
                for r in &results {
                    match net::ErrorCode::from_code(r.error) {
                        net::ErrorCode::None => println!("{}/{}: deleted", r.topic, r.partition),
                        code => {
                            refused += 1;
                            println!("{}/{}: {code:?}", r.topic, r.partition);
                        }
                    }
                }
                if refused > 0 {
                    return Err(format!("{refused} of group {group}'s commits not deleted"));
                }
            }
            GroupCommand::ResetOffsets { group, topics, to } => {
                let to = parse_reset_to(&to)?;
                let topics = if topics.is_empty() {
                    let mut committed: Vec<String> = connection
                        .fetch_offsets(&group, None)
                        .await
                        .map_err(|e| e.to_string())?
                        .into_iter()
                        .map(|(t, _, _)| t)
                        .collect();
                    committed.dedup();
                    committed
                } else {
                    topics
                };
                if topics.is_empty() {
                    return Err(format!(
                        "group {group} has no committed offsets: name the topics with --topic"
                    ));
                }
                let metadata = connection
                    .metadata(Some(topics.clone()))
                    .await
                    .map_err(|e| e.to_string())?;
                let mut offsets = Vec::new();
                for topic in &metadata.topics {
                    if topic.error != 0 {
                        return Err(format!(
                            "topic {}: {:?}",
                            topic.name,
                            net::ErrorCode::from_code(topic.error)
                        ));
                    }
                    for p in &topic.partitions {
                        let offset = match to {
                            ResetTo::Offset(offset) => offset.clamp(p.log_start_offset, p.high_watermark),
                            ResetTo::Earliest => connection
                                .list_offset(&topic.name, p.partition, EARLIEST_TIMESTAMP)
                                .await
                                .map_err(|e| e.to_string())?
                                .unwrap_or(0),
                            ResetTo::Latest => connection
                                .list_offset(&topic.name, p.partition, LATEST_TIMESTAMP)
                                .await
                                .map_err(|e| e.to_string())?
                                .unwrap_or(0),
                        };
                        offsets.push((topic.name.clone(), p.partition, offset));
                    }
                }
                match connection.commit_offsets(&group, -1, "", &offsets).await {
                    Ok(()) => {}
                    Err(net::NetError::Rejected {
                        code: net::ErrorCode::UnknownMemberId,
                        ..
                    }) => {
                        return Err(format!(
                            "group {group} has active members: stop them before resetting its offsets"
                        ))
                    }
                    Err(e) => return Err(e.to_string()),
                }
                for (topic, partition, offset) in offsets {
                    println!("{group} {topic} {partition} -> {offset}");
                }
            }
        }
        Ok(())
    })
}

/// A consumer member's assignment as (topic, partition) pairs; empty if
/// the bytes are not a corelog consumer's assignment.
fn decode_assignment(bytes: &[u8]) -> Vec<(String, u32)> {
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<net::messages::ConsumerAssignment, rkyv::rancor::Error>(&aligned)
        .map(|a| {
            a.partitions
                .into_iter()
                .flat_map(|t| {
                    let topic = t.topic;
                    t.partitions.into_iter().map(move |p| (topic.clone(), p))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Longest `corelog cluster status` waits for a node's answer.
const CLUSTER_STATUS_TIMEOUT: Duration = Duration::from_secs(10);

pub fn cluster(command: ClusterCommand) -> Result<(), String> {
    let ClusterCommand::Status { node } = command;
    let status = crate::controller::driver::peer_status(&node, CLUSTER_STATUS_TIMEOUT)?;
    let json = serde_json::json!({
        "node": status.node,
        "leader": status.leader,
        "term": status.term,
        "applied_index": status.applied_index,
        "nodes": status.nodes.iter().map(|n| serde_json::json!({"id": n.id, "kafka": n.kafka_addr, "incarnation": n.incarnation})).collect::<Vec<_>>(),
        "topics": status.topics,
        "frames_sent": status.frames_sent,
        "bytes_sent": status.bytes_sent,
    });
    println!("{json}");
    Ok(())
}
