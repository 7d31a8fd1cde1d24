//! The broker's configuration: embedded defaults, a TOML file, then flags.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::BrokerError;

/// The native protocol's default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9292";
/// The Kafka listener's default address (Kafka's port).
pub const DEFAULT_KAFKA_LISTEN: &str = "127.0.0.1:9092";
/// Where Prometheus scrapes `/metrics` and health checks ask
/// `/v1/status/ready` (Redpanda's admin port).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9644";
/// `spin_before_park_us` unless configured (measured: tuning.md).
pub const SPIN_BEFORE_PARK_US_DEFAULT: u64 = 50;
/// Longest spin before park accepted: past it a shard is a busy loop.
pub const SPIN_BEFORE_PARK_US_MAX: u64 = 1_000_000;
/// Bounds of the batch cache a shard gets when `read_cache_bytes` is unset.
/// Raft's heartbeat interval (its tick) may not be shorter than this: the
/// shards' tasks would spend their time ticking.
pub const RAFT_HEARTBEAT_INTERVAL_MS_MIN: u64 = 10;
pub const RAFT_HEARTBEAT_INTERVAL_MS_MAX: u64 = 10_000;
/// An election timeout of fewer heartbeats than this would elect on one
/// late heartbeat; of more, it would take a leader's loss for a quiet spell.
pub const RAFT_ELECTION_TICKS_MIN: u64 = 3;
pub const RAFT_ELECTION_TICKS_MAX: u64 = 1_000;

/// Raft's clock, for the controller's group and every partition's: a leader
/// heartbeats every tick, a follower campaigns after `election_ticks` to
/// twice that without its word, and a follower that has not caught up
/// within `replica_lag_ticks` leaves the ISR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftTiming {
    pub tick: Duration,
    pub election_ticks: usize,
    pub replica_lag_ticks: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            tick: Duration::from_millis(100),
            election_ticks: 10,
            replica_lag_ticks: 300,
        }
    }
}

pub const READ_CACHE_AUTO_MIN_BYTES: usize = 32 << 20;
pub const READ_CACHE_AUTO_MAX_BYTES: usize = 1 << 30;
/// The share of the machine's memory the shards' batch caches get together
/// when `read_cache_bytes` is unset (1 / N). Not more: until a cache is full
/// every write buffer it keeps is fresh memory, faulted in page by page,
/// and a cache of 3 GiB filling during a 2 GB run halved produce-consume-1p
/// against one of 256 MiB or 1 GiB recycling its buffers (tuning.md).
pub const READ_CACHE_AUTO_MEMORY_DIVISOR: u64 = 32;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Where topics and partition logs live.
    pub data_dir: PathBuf,
    /// Native protocol address; every shard accepts on it (SO_REUSEPORT).
    pub listen: String,
    /// Kafka protocol address, served by every shard like `listen`;
    /// "none" turns the Kafka listener off.
    pub kafka_listen: String,
    /// Prometheus metrics and health (`/metrics`, `/v1/status/ready`);
    /// "none" turns it off.
    pub metrics_listen: String,
    /// host:port Kafka clients are told to connect to (Metadata,
    /// FindCoordinator); default: the bound Kafka address.
    pub kafka_advertised: Option<String>,
    /// Each shard also accepts clients, on either protocol, on ports of its
    /// own and is advertised as a broker of its own there, so clients send
    /// each partition's requests straight to its owning core (the shared
    /// `listen` and `kafka_listen` ports stay the bootstrap). The ports
    /// follow the shared ones: shard i on port + 1 + i, or free ones when
    /// the shared port is 0. Off, the node is one broker and requests hop
    /// between cores.
    pub shard_ports: bool,
    /// Number of shards (one executor each); default: one per core.
    pub shards: Option<usize>,
    /// Cores to pin shards to, one shard per core listed.
    pub cpus: Option<Vec<usize>>,
    /// Largest request frame accepted.
    pub frame_bytes_max: usize,
    /// Connections a shard serves at once; more are closed on accept.
    pub connections_max: usize,
    /// Requests of one connection handled at once.
    pub inflight_requests_max: usize,
    /// Depth of each shard's inbox of cross-shard requests; senders wait
    /// when it is full.
    pub shard_queue_depth: usize,
    /// Memory each shard registers with io_uring for DMA buffers: the
    /// partitions' write buffers and the chunks read ahead of consumers.
    /// Registered memory is locked (memlock) and resident; buffers beyond it
    /// come from the system allocator, mapped and unmapped each time.
    pub io_memory_bytes: usize,
    /// The most each shard holds read ahead of its consumers at once (a
    /// share of `io_memory_bytes`); a topic's `read.ahead.bytes` bounds each
    /// reader.
    pub read_ahead_shard_bytes: usize,
    /// The batch cache of each shard: recently written and read bytes of
    /// its partitions kept in memory for their consumers (O_DIRECT has no
    /// page cache). Unset: a 32nd of the machine's memory shared among
    /// the shards, within `READ_CACHE_AUTO_MIN_BYTES..=READ_CACHE_AUTO_MAX_BYTES`.
    /// 0 turns it off.
    pub read_cache_bytes: Option<usize>,
    /// Partitions of a topic created without a count.
    pub default_partitions: u32,
    /// Longest a shard runs tasks before it looks at I/O completions and
    /// timers again (glommio's preempt timer, 100 ms by default there).
    pub task_quota_us: u64,
    /// How long a shard with nothing to run keeps polling for completions
    /// and messages before it sleeps in the kernel. Spinning saves the
    /// wake-up of a sleeping core (tens of µs) for work that arrives within
    /// it, at the price of a busy core meanwhile; see tuning.md.
    pub spin_before_park_us: u64,
    /// A task queue that runs this long past `task_quota_us` is a stall:
    /// logged with the frames that ran, counted and its worst kept in the
    /// shard stats (glommio's stall detector). 0 turns detection off.
    pub stall_threshold_us: u64,
    /// Partitions of `__consumer_offsets`, fixed when it is first created:
    /// a group's coordinator is the owner of partition hash(group) mod this.
    pub offsets_topic_partitions: u32,
    pub group_session_timeout_min_ms: u64,
    pub group_session_timeout_max_ms: u64,
    /// Members one group may have.
    pub group_members_max: usize,
    /// How long the first rebalance of an empty group waits for more
    /// members (Kafka's group.initial.rebalance.delay.ms).
    pub group_initial_rebalance_delay_ms: u64,
    /// Offsets of a group without members expire after this.
    pub offsets_retention_minutes: u64,
    /// An offsets partition larger than this is compacted: its live commits
    /// are written again and everything before them is deleted.
    pub offsets_compact_bytes: u64,
    /// How often offsets partitions are checked for compaction (the
    /// transaction state log's too, against the same size).
    pub offsets_compact_interval_ms: u64,
    /// Partitions of `__transaction_state`, fixed when it is first created:
    /// a transactional id's coordinator owns partition hash(id) mod this.
    pub transaction_state_partitions: u32,
    /// Longest transaction timeout a producer may ask for.
    pub transaction_max_timeout_ms: i32,
    /// How often each partition's producer state is written to its
    /// snapshot while it changes: a crash replays the log after it.
    pub producer_snapshot_interval_ms: u64,
    /// How often each shard applies its partitions' retention (`retention.ms`,
    /// `retention.bytes`): whole sealed segments past it are deleted
    /// (Kafka's log.retention.check.interval.ms).
    pub log_retention_check_interval_ms: u64,
    /// How often each shard looks for compacted partitions to clean
    /// (Kafka's log.cleaner.backoff.ms).
    pub log_cleaner_backoff_ms: u64,
    /// Most bytes a second each shard's cleaner reads (Kafka's
    /// log.cleaner.io.max.bytes.per.second): its disk use stays bounded.
    pub log_cleaner_io_bytes_per_second: u64,
    /// The cleaner's share of its shard's CPU against the requests'
    /// (1000): a glommio task queue of its own.
    pub log_cleaner_shares: usize,
    /// Raft's heartbeat interval, and its tick (Redpanda's
    /// raft_heartbeat_interval_ms), for the controller and every partition.
    pub raft_heartbeat_interval_ms: u64,
    /// A follower campaigns after this, to twice this, without its
    /// leader's word (Redpanda's election_timeout_ms); a whole number of
    /// heartbeat intervals.
    pub raft_election_timeout_ms: u64,
    /// A follower not caught up with its leader's log within this leaves
    /// the ISR (Kafka's replica.lag.time.max.ms).
    pub replica_lag_time_max_ms: u64,
    /// This node's id in its cluster, 1 or more.
    pub node_id: u64,
    /// The internal listener, for what nodes say to each other (the
    /// controller's Raft messages); needed with `peers`.
    pub rpc_listen: Option<String>,
    /// Every voter of the cluster as `id@host:port` (its `rpc_listen`),
    /// this node included. Empty: a cluster of one, a broker as ever.
    pub peers: Vec<String>,
    /// Which life of this node its data directory is (0 at first, one
    /// more each time it came back with the directory lost): not
    /// configured, read from the directory at start
    /// (`controller::driver::incarnation`).
    #[serde(skip)]
    pub incarnation: u32,
}

/// A voter of the cluster as `peers` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    pub rpc_addr: std::net::SocketAddr,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("corelog-data"),
            listen: DEFAULT_LISTEN.to_string(),
            kafka_listen: DEFAULT_KAFKA_LISTEN.to_string(),
            metrics_listen: DEFAULT_METRICS_LISTEN.to_string(),
            kafka_advertised: None,
            shard_ports: true,
            shards: None,
            cpus: None,
            frame_bytes_max: net::codec::FRAME_BYTES_MAX_DEFAULT,
            connections_max: 4096,
            inflight_requests_max: 64,
            shard_queue_depth: 1024,
            io_memory_bytes: 128 << 20,
            read_ahead_shard_bytes: 64 << 20,
            read_cache_bytes: None,
            default_partitions: 1,
            task_quota_us: 1000,
            spin_before_park_us: SPIN_BEFORE_PARK_US_DEFAULT,
            stall_threshold_us: 5_000,
            offsets_topic_partitions: 4,
            group_session_timeout_min_ms: 1_000,
            group_session_timeout_max_ms: 300_000,
            group_members_max: 1_000,
            group_initial_rebalance_delay_ms: 300,
            offsets_retention_minutes: 7 * 24 * 60,
            offsets_compact_bytes: 128 << 20,
            offsets_compact_interval_ms: 10_000,
            transaction_state_partitions: 4,
            transaction_max_timeout_ms: 900_000,
            producer_snapshot_interval_ms: 30_000,
            log_retention_check_interval_ms: 300_000,
            log_cleaner_backoff_ms: 15_000,
            log_cleaner_io_bytes_per_second: 128 << 20,
            log_cleaner_shares: 100,
            raft_heartbeat_interval_ms: 100,
            raft_election_timeout_ms: 1_000,
            replica_lag_time_max_ms: 30_000,
            node_id: 1,
            rpc_listen: None,
            peers: Vec::new(),
            incarnation: 0,
        }
    }
}

impl BrokerConfig {
    /// Raft's clock as configured (validated).
    pub fn raft_timing(&self) -> RaftTiming {
        let heartbeat = self.raft_heartbeat_interval_ms.max(1);
        RaftTiming {
            tick: Duration::from_millis(heartbeat),
            election_ticks: (self.raft_election_timeout_ms / heartbeat) as usize,
            replica_lag_ticks: self.replica_lag_time_max_ms.div_ceil(heartbeat),
        }
    }
}

impl BrokerConfig {
    pub fn from_toml_file(path: &std::path::Path) -> Result<BrokerConfig, BrokerError> {
        let text = std::fs::read_to_string(path).map_err(|source| BrokerError::Io {
            op: "read config",
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| BrokerError::Config(format!("{}: {e}", path.display())))
    }

    /// The cores shards run on: `cpus`, else the first `shards` cores, else all.
    pub fn shard_cpus(&self) -> Result<Vec<usize>, BrokerError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpus = match (&self.cpus, self.shards) {
            (Some(cpus), _) => cpus.clone(),
            (None, Some(n)) => (0..n).map(|i| i % cores).collect(),
            (None, None) => (0..cores).collect(),
        };
        if cpus.is_empty() || cpus.len() > u16::MAX as usize {
            return Err(BrokerError::Config(format!("{} shards: need 1..=65535", cpus.len())));
        }
        Ok(cpus)
    }

    /// The batch cache bytes of each of `shards` shards.
    pub fn read_cache_shard_bytes(&self, shards: usize) -> usize {
        match self.read_cache_bytes {
            Some(bytes) => bytes,
            None => {
                let share =
                    machine_memory_bytes().map_or(0, |m| m / READ_CACHE_AUTO_MEMORY_DIVISOR) / shards.max(1) as u64;
                (share.min(usize::MAX as u64) as usize).clamp(READ_CACHE_AUTO_MIN_BYTES, READ_CACHE_AUTO_MAX_BYTES)
            }
        }
    }

    /// The voters `peers` names, their addresses resolved; empty for a
    /// cluster of one.
    pub fn cluster_peers(&self) -> Result<Vec<Peer>, BrokerError> {
        use std::net::ToSocketAddrs;
        let mut peers: Vec<Peer> = Vec::with_capacity(self.peers.len());
        for entry in &self.peers {
            let invalid = |why: &str| BrokerError::Config(format!("peer {entry:?}: {why} (peers are id@host:port)"));
            let (id, addr) = entry.split_once('@').ok_or_else(|| invalid("no '@'"))?;
            let id: u64 = id.parse().map_err(|_| invalid("the id is not a number"))?;
            if id == 0 {
                return Err(invalid("node ids start at 1"));
            }
            let rpc_addr = addr
                .to_socket_addrs()
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| invalid("the address does not resolve"))?;
            if peers.iter().any(|p| p.id == id) {
                return Err(invalid("the id is named twice"));
            }
            peers.push(Peer { id, rpc_addr });
        }
        if peers.len() > net::cluster::NODES_MAX {
            return Err(BrokerError::Config(format!(
                "{} peers, over {}",
                peers.len(),
                net::cluster::NODES_MAX
            )));
        }
        if !peers.is_empty() {
            if !peers.iter().any(|p| p.id == self.node_id) {
                return Err(BrokerError::Config(format!(
                    "node_id {} is not among the peers {:?}",
                    self.node_id, self.peers
                )));
            }
            if self.rpc_listen.is_none() {
                return Err(BrokerError::Config(
                    "peers need rpc_listen, the address the others reach this node on".into(),
                ));
            }
        }
        Ok(peers)
    }

    pub fn group_limits(&self) -> crate::group::GroupLimits {
        crate::group::GroupLimits {
            session_timeout_min: Duration::from_millis(self.group_session_timeout_min_ms),
            session_timeout_max: Duration::from_millis(self.group_session_timeout_max_ms),
            members_max: self.group_members_max,
            initial_rebalance_delay: Duration::from_millis(self.group_initial_rebalance_delay_ms),
            offsets_retention: Duration::from_secs(self.offsets_retention_minutes * 60),
            ..crate::group::GroupLimits::default()
        }
    }

    pub fn validate(&self) -> Result<(), BrokerError> {
        let positive = [
            ("frame_bytes_max", self.frame_bytes_max),
            ("connections_max", self.connections_max),
            ("inflight_requests_max", self.inflight_requests_max),
            ("shard_queue_depth", self.shard_queue_depth),
            ("task_quota_us", self.task_quota_us as usize),
            ("offsets_topic_partitions", self.offsets_topic_partitions as usize),
            ("group_members_max", self.group_members_max),
            (
                "transaction_state_partitions",
                self.transaction_state_partitions as usize,
            ),
            (
                "transaction_max_timeout_ms",
                self.transaction_max_timeout_ms.max(0) as usize,
            ),
            (
                "producer_snapshot_interval_ms",
                self.producer_snapshot_interval_ms as usize,
            ),
            (
                "log_retention_check_interval_ms",
                self.log_retention_check_interval_ms as usize,
            ),
            ("log_cleaner_backoff_ms", self.log_cleaner_backoff_ms as usize),
            (
                "log_cleaner_io_bytes_per_second",
                self.log_cleaner_io_bytes_per_second as usize,
            ),
            ("log_cleaner_shares", self.log_cleaner_shares),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(BrokerError::Config(format!("{name} must be positive")));
            }
        }
        if self.log_cleaner_shares > 1000 {
            return Err(BrokerError::Config(format!(
                "log_cleaner_shares {} must be 1..=1000 (the requests' queue has 1000)",
                self.log_cleaner_shares
            )));
        }
        if self.read_ahead_shard_bytes > self.io_memory_bytes {
            return Err(BrokerError::Config(format!(
                "read_ahead_shard_bytes {} is more than io_memory_bytes {}: read-ahead comes out of that memory",
                self.read_ahead_shard_bytes, self.io_memory_bytes
            )));
        }
        if let (Some(bytes), Some(memory)) = (self.read_cache_bytes, machine_memory_bytes()) {
            if bytes as u64 > memory {
                return Err(BrokerError::Config(format!(
                    "read_cache_bytes {bytes} is more than this machine's memory ({memory} bytes)"
                )));
            }
        }
        if self.node_id == 0 {
            return Err(BrokerError::Config("node_id must be 1 or more".into()));
        }
        let heartbeat = self.raft_heartbeat_interval_ms;
        if !(RAFT_HEARTBEAT_INTERVAL_MS_MIN..=RAFT_HEARTBEAT_INTERVAL_MS_MAX).contains(&heartbeat) {
            return Err(BrokerError::Config(format!(
                "raft_heartbeat_interval_ms {heartbeat} is outside \
                 {RAFT_HEARTBEAT_INTERVAL_MS_MIN}..={RAFT_HEARTBEAT_INTERVAL_MS_MAX}"
            )));
        }
        let election = self.raft_election_timeout_ms;
        if election % heartbeat != 0
            || !(RAFT_ELECTION_TICKS_MIN..=RAFT_ELECTION_TICKS_MAX).contains(&(election / heartbeat))
        {
            return Err(BrokerError::Config(format!(
                "raft_election_timeout_ms {election} must be {RAFT_ELECTION_TICKS_MIN} to \
                 {RAFT_ELECTION_TICKS_MAX} times raft_heartbeat_interval_ms {heartbeat}"
            )));
        }
        if self.replica_lag_time_max_ms < election {
            return Err(BrokerError::Config(format!(
                "replica_lag_time_max_ms {} is less than raft_election_timeout_ms {election}: \
                 every follower would leave the ISR between two elections",
                self.replica_lag_time_max_ms
            )));
        }
        if self.node_id > net::cluster::NODE_ID_MAX {
            // Kafka broker ids are node × 1000 + shard, in an i32.
            return Err(BrokerError::Config(format!(
                "node_id {} is over {}",
                self.node_id,
                net::cluster::NODE_ID_MAX
            )));
        }
        self.cluster_peers()?;
        if self.spin_before_park_us > SPIN_BEFORE_PARK_US_MAX {
            return Err(BrokerError::Config(format!(
                "spin_before_park_us {} is over the limit of {SPIN_BEFORE_PARK_US_MAX}",
                self.spin_before_park_us
            )));
        }
        Ok(())
    }
}

/// MemTotal of /proc/meminfo, if it can be read.
fn machine_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_timing_is_checked_and_counted_in_heartbeats() {
        let timing = BrokerConfig::default().raft_timing();
        assert_eq!(timing, RaftTiming::default(), "the defaults are the tests' timing");
        let short = BrokerConfig {
            raft_heartbeat_interval_ms: 50,
            raft_election_timeout_ms: 500,
            replica_lag_time_max_ms: 10_000,
            ..BrokerConfig::default()
        };
        short.validate().unwrap();
        assert_eq!(
            short.raft_timing(),
            RaftTiming {
                tick: Duration::from_millis(50),
                election_ticks: 10,
                replica_lag_ticks: 200,
            }
        );
        for (heartbeat, election, lag, refused) in [
            (5, 500, 30_000, "raft_heartbeat_interval_ms"),
            (100, 150, 30_000, "raft_election_timeout_ms"),
            (100, 200, 30_000, "raft_election_timeout_ms"),
            (10, 20_000, 30_000, "raft_election_timeout_ms"),
            (100, 1_000, 500, "replica_lag_time_max_ms"),
        ] {
            let config = BrokerConfig {
                raft_heartbeat_interval_ms: heartbeat,
                raft_election_timeout_ms: election,
                replica_lag_time_max_ms: lag,
                ..BrokerConfig::default()
            };
            let error = config.validate().expect_err("refused");
            assert!(
                error.to_string().contains(refused),
                "{heartbeat}/{election}/{lag}: {error}"
            );
        }
    }

    #[test]
    fn the_defaults_are_valid_and_a_spin_past_its_limit_is_refused() {
        BrokerConfig::default()
            .validate()
            .expect("the embedded defaults are valid");
        let spinning = BrokerConfig {
            spin_before_park_us: SPIN_BEFORE_PARK_US_MAX + 1,
            ..BrokerConfig::default()
        };
        let error = spinning.validate().expect_err("a spin past the limit is refused");
        assert!(error.to_string().contains("spin_before_park_us"), "{error}");
        let overdrawn = BrokerConfig {
            io_memory_bytes: 32 << 20,
            read_ahead_shard_bytes: 64 << 20,
            ..BrokerConfig::default()
        };
        let error = overdrawn
            .validate()
            .expect_err("read-ahead larger than the registered memory is refused");
        assert!(error.to_string().contains("read_ahead_shard_bytes"), "{error}");
        let huge = BrokerConfig {
            read_cache_bytes: Some(usize::MAX),
            ..BrokerConfig::default()
        };
        let error = huge.validate().expect_err("a cache larger than the machine is refused");
        assert!(error.to_string().contains("read_cache_bytes"), "{error}");
        let auto = BrokerConfig::default().read_cache_shard_bytes(2);
        assert!((READ_CACHE_AUTO_MIN_BYTES..=READ_CACHE_AUTO_MAX_BYTES).contains(&auto));
        assert!(
            auto as u64 <= machine_memory_bytes().unwrap() / READ_CACHE_AUTO_MEMORY_DIVISOR / 2
                || auto == READ_CACHE_AUTO_MIN_BYTES
        );
        let off = BrokerConfig {
            read_cache_bytes: Some(0),
            ..BrokerConfig::default()
        };
        assert_eq!(off.read_cache_shard_bytes(2), 0);
        let unknown: Result<BrokerConfig, _> = toml::from_str("spin_before_parks_us = 5");
        assert!(unknown.is_err(), "an unknown key is refused");
    }

    #[test]
    fn peers_are_checked() {
        let cluster = |node_id: u64, rpc: Option<&str>, peers: &[&str]| BrokerConfig {
            node_id,
            rpc_listen: rpc.map(str::to_string),
            peers: peers.iter().map(|p| p.to_string()).collect(),
            ..BrokerConfig::default()
        };
        let three = ["1@127.0.0.1:9501", "2@127.0.0.1:9502", "3@localhost:9503"];
        let peers = cluster(2, Some("127.0.0.1:9502"), &three).cluster_peers().unwrap();
        assert_eq!(peers.iter().map(|p| p.id).collect::<Vec<_>>(), [1, 2, 3]);
        for (config, says) in [
            (cluster(4, Some("127.0.0.1:9504"), &three), "not among the peers"),
            (cluster(1, None, &three), "need rpc_listen"),
            (
                cluster(1, Some("x:1"), &["1@127.0.0.1:1", "1@127.0.0.1:2"]),
                "named twice",
            ),
            (cluster(1, Some("x:1"), &["0@127.0.0.1:1"]), "start at 1"),
            (cluster(1, Some("x:1"), &["1-127.0.0.1:1"]), "no '@'"),
            (cluster(1, Some("x:1"), &["1@nowhere"]), "does not resolve"),
            (cluster(0, None, &[]), "node_id must be"),
            (cluster(net::cluster::NODE_ID_MAX + 1, None, &[]), "is over"),
        ] {
            let error = config.validate().expect_err(says).to_string();
            assert!(error.contains(says), "{error}");
        }
        let alone: BrokerConfig = toml::from_str("node_id = 7").unwrap();
        assert!(alone.cluster_peers().unwrap().is_empty(), "no peers: a cluster of one");
    }
}
