//! A `corelog serve` process started by a benchmark from the binary beside
//! the benchmark's own, stopped (SIGTERM) when dropped.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct BrokerProcess {
    child: Child,
    pub addr: String,
}

impl BrokerProcess {
    /// Starts a broker with `shards` shards, pinned to `cpus` when given
    /// (one shard per core listed).
    pub fn start(data_dir: &Path, shards: usize, cpus: &[usize]) -> Result<BrokerProcess, String> {
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
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir);
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
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let addr = line
            .trim()
            .strip_prefix("corelog listening on ")
            .ok_or_else(|| format!("unexpected broker output {line:?}"))?
            .to_string();
        Ok(BrokerProcess { child, addr })
    }

    /// The broker's peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
