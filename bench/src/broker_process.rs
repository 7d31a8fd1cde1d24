//! A `corelog serve` process started by a benchmark from the binary beside
//! the benchmark's own, stopped (SIGTERM) by `stop` or when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub struct BrokerProcess {
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
    pub addr: String,
    /// The Kafka listener's address, when started with it.
    pub kafka_addr: Option<String>,
    rss: Arc<Mutex<Vec<u64>>>,
    sampling: Arc<AtomicBool>,
}

/// What the broker reported of itself when it stopped, summed over shards.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BrokerStats {
    pub requests: u64,
    pub records_appended: u64,
    /// Allocations made by the shards' threads over the broker's life
    /// (startup, connections, every request).
    pub allocations: u64,
    pub allocated_bytes: u64,
    /// Partition produces and fetches served by the shard whose connection
    /// asked, and those sent to the owning shard (a hop between cores).
    #[serde(default)]
    pub produce_local: u64,
    #[serde(default)]
    pub produce_hops: u64,
    #[serde(default)]
    pub fetch_local: u64,
    #[serde(default)]
    pub fetch_hops: u64,
    /// Task queue runs past the task quota by more than the broker's stall
    /// threshold, and the worst of each shard: (shard, µs over, frames).
    #[serde(default)]
    pub stalls: u64,
    #[serde(default)]
    pub worst_stalls: Vec<(u64, u64, String)>,
    /// The shards' latency fields (`request_wait_p99_us`, …), the worst
    /// shard's value of each.
    #[serde(default)]
    pub latencies_us: std::collections::BTreeMap<String, u64>,
    /// Flushes (fdatasync of a segment) of the logs the shards closed.
    #[serde(default)]
    pub log_flushes: u64,
    /// Bytes of active segments the logs wrote with zeros ahead of their
    /// writes (they are flushed often).
    #[serde(default)]
    pub log_zeroed_bytes: u64,
    /// The most fdatasyncs of one shard's logs running at once.
    #[serde(default)]
    pub log_syncs_in_flight_max: u64,
    /// The shards' time on a CPU and their lives, summed over shards.
    #[serde(default)]
    pub shard_cpu_ms: u64,
    #[serde(default)]
    pub shard_wall_ms: u64,
    /// Bytes the logs read from disk outside read-ahead, and in read-ahead
    /// chunks; reads served from read-ahead, reads that started a stream,
    /// reads joined across two chunks.
    #[serde(default)]
    pub disk_read_bytes: u64,
    #[serde(default)]
    pub read_ahead_bytes: u64,
    #[serde(default)]
    pub read_ahead_hits: u64,
    #[serde(default)]
    pub read_ahead_misses: u64,
    #[serde(default)]
    pub read_ahead_joined: u64,
    /// The most read-ahead reads any shard had in flight at once (the
    /// largest over shards).
    #[serde(default)]
    pub read_ahead_in_flight_max: u64,
    /// The shards' batch caches: reads of bytes past the write buffers
    /// served from memory and not, bytes served, bytes kept from write
    /// buffers and from disk reads, and the most any shard held at once
    /// (summed over shards) against their capacity.
    #[serde(default)]
    pub cache_hits: u64,
    #[serde(default)]
    pub cache_misses: u64,
    #[serde(default)]
    pub cache_hit_bytes: u64,
    #[serde(default)]
    pub cache_written_bytes: u64,
    #[serde(default)]
    pub cache_read_bytes: u64,
    #[serde(default)]
    pub cache_held_max_bytes: u64,
    #[serde(default)]
    pub cache_capacity_bytes: u64,
    /// Shards that reported.
    #[serde(default)]
    pub shards: u64,
    /// Resident memory (VmRSS) sampled once a second, in bytes.
    pub rss_samples: Vec<u64>,
    pub peak_rss_bytes: Option<u64>,
}

impl BrokerStats {
    /// The shards' CPU time over their lives, as a share of one core (a
    /// broker of two shards busy all the time shows 200).
    pub fn cpu_percent_of_a_core(&self) -> Option<f64> {
        (self.shard_wall_ms > 0).then(|| {
            // Summed over shards: the wall of one shard is the broker's life.
            let shards = self.shards.max(1) as f64;
            100.0 * self.shard_cpu_ms as f64 / (self.shard_wall_ms as f64 / shards)
        })
    }
}

impl BrokerProcess {
    /// Starts a broker with `shards` shards, pinned to `cpus` when given
    /// (one shard per core listed).
    pub fn start(data_dir: &Path, shards: usize, cpus: &[usize]) -> Result<BrokerProcess, String> {
        BrokerProcess::start_with(data_dir, shards, cpus, false)
    }

    /// Starts a broker with its Kafka listener on a free port too.
    pub fn start_with_kafka(data_dir: &Path, shards: usize) -> Result<BrokerProcess, String> {
        BrokerProcess::start_with(data_dir, shards, &[], true)
    }

    pub fn start_with(data_dir: &Path, shards: usize, cpus: &[usize], kafka: bool) -> Result<BrokerProcess, String> {
        BrokerProcess::start_configured(data_dir, shards, cpus, kafka, &std::collections::BTreeMap::new())
    }

    /// A broker with these configuration keys (TOML values), written to a
    /// file beside its data directory.
    pub fn start_configured(
        data_dir: &Path,
        shards: usize,
        cpus: &[usize],
        kafka: bool,
        configs: &std::collections::BTreeMap<String, String>,
    ) -> Result<BrokerProcess, String> {
        let binary = std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("corelog");
        if !binary.exists() {
            return Err(format!(
                "{} is missing: build it with `cargo build --release -p corelog`",
                binary.display()
            ));
        }
        let mut command = Command::new(&binary);
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--kafka-listen",
                if kafka { "127.0.0.1:0" } else { "none" },
                "--metrics-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir);
        if !configs.is_empty() {
            let file = data_dir.with_extension("toml");
            let text: String = configs.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            std::fs::write(&file, text).map_err(|e| format!("write {}: {e}", file.display()))?;
            command.arg("--config").arg(&file);
        }
        if cpus.is_empty() {
            command.args(["--shards", &shards.to_string()]);
        } else {
            let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
            command.args(["--cpus", &list.join(",")]);
        }
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start {}: {e}", binary.display()))?;
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        let addr = line
            .trim()
            .strip_prefix("corelog listening on ")
            .ok_or_else(|| format!("unexpected broker output {line:?}"))?
            .to_string();
        let kafka_addr = if kafka {
            let mut line = String::new();
            stdout.read_line(&mut line).map_err(|e| e.to_string())?;
            Some(
                line.trim()
                    .strip_prefix("corelog kafka listening on ")
                    .ok_or_else(|| format!("unexpected broker output {line:?}"))?
                    .to_string(),
            )
        } else {
            None
        };
        let (rss, sampling) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(true)));
        {
            let (rss, sampling, pid) = (rss.clone(), sampling.clone(), child.id());
            std::thread::spawn(move || {
                while sampling.load(Ordering::Acquire) {
                    match status_kib(pid, "VmRSS:") {
                        Some(kib) => rss.lock().expect("rss samples").push(kib * 1024),
                        None => break,
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        }
        Ok(BrokerProcess {
            child,
            stdout: Some(stdout),
            addr,
            kafka_addr,
            rss,
            sampling,
        })
    }

    /// Stops the broker (SIGTERM: it flushes and closes every log) and
    /// collects what it reported.
    pub fn stop(mut self) -> BrokerStats {
        let mut stats = BrokerStats {
            peak_rss_bytes: status_kib(self.child.id(), "VmHWM:").map(|kib| kib * 1024),
            ..BrokerStats::default()
        };
        self.sampling.store(false, Ordering::Release);
        self.terminate();
        for line in self.stdout.take().expect("stdout").lines().map_while(Result::ok) {
            if let Some(stall) = line.strip_prefix("corelog shard stall: ") {
                // shard=N overage_us=N at=frames (the frames last: they hold spaces)
                let field = |key: &str| {
                    stall
                        .split_whitespace()
                        .find_map(|f| f.strip_prefix(key))
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                let at = stall.split_once("at=").map_or("", |(_, at)| at).to_string();
                stats.worst_stalls.push((field("shard="), field("overage_us="), at));
                continue;
            }
            let Some(fields) = line.strip_prefix("corelog shard stats: ") else {
                continue;
            };
            stats.shards += 1;
            for field in fields.split_whitespace() {
                let Some((key, value)) = field.split_once('=') else {
                    continue;
                };
                let value: u64 = value.parse().unwrap_or(0);
                match key {
                    "requests" => stats.requests += value,
                    "records_appended" => stats.records_appended += value,
                    "allocations" => stats.allocations += value,
                    "allocated_bytes" => stats.allocated_bytes += value,
                    "produce_local" => stats.produce_local += value,
                    "produce_hops" => stats.produce_hops += value,
                    "fetch_local" => stats.fetch_local += value,
                    "fetch_hops" => stats.fetch_hops += value,
                    "stalls" => stats.stalls += value,
                    "log_flushes" => stats.log_flushes += value,
                    "log_zeroed_bytes" => stats.log_zeroed_bytes += value,
                    "log_syncs_in_flight_max" => {
                        stats.log_syncs_in_flight_max = stats.log_syncs_in_flight_max.max(value)
                    }
                    "cpu_ms" => stats.shard_cpu_ms += value,
                    "disk_read_bytes" => stats.disk_read_bytes += value,
                    "read_ahead_bytes" => stats.read_ahead_bytes += value,
                    "read_ahead_hits" => stats.read_ahead_hits += value,
                    "read_ahead_misses" => stats.read_ahead_misses += value,
                    "read_ahead_joined" => stats.read_ahead_joined += value,
                    "read_ahead_in_flight_max" => {
                        stats.read_ahead_in_flight_max = stats.read_ahead_in_flight_max.max(value)
                    }
                    "cache_hits" => stats.cache_hits += value,
                    "cache_misses" => stats.cache_misses += value,
                    "cache_hit_bytes" => stats.cache_hit_bytes += value,
                    "cache_written_bytes" => stats.cache_written_bytes += value,
                    "cache_read_bytes" => stats.cache_read_bytes += value,
                    "cache_held_max_bytes" => stats.cache_held_max_bytes += value,
                    "cache_capacity_bytes" => stats.cache_capacity_bytes += value,
                    "wall_ms" => stats.shard_wall_ms += value,
                    key if key.ends_with("_us") && !key.starts_with("stall") => {
                        let worst = stats.latencies_us.entry(key.to_string()).or_insert(0);
                        *worst = (*worst).max(value);
                    }
                    _ => {}
                }
            }
        }
        stats.rss_samples = self.rss.lock().expect("rss samples").clone();
        stats
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the broker without a word (SIGKILL), as a lost machine would.
    pub fn kill9(mut self) {
        self.sampling.store(false, Ordering::Release);
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stdout = None;
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A `/proc/PID/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.sampling.store(false, Ordering::Release);
        if self.stdout.is_some() {
            self.terminate();
        }
    }
}
