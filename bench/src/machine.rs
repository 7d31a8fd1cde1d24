//! A description of the machine a benchmark ran on, for its report.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub memory_gib: f64,
    /// Device and filesystem of the benchmark's data directory.
    pub filesystem: String,
    pub commit: String,
}

fn first_line_with(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn command(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Machine {
    pub fn describe(data_dir: &std::path::Path) -> Machine {
        let memory_kib: f64 = first_line_with("/proc/meminfo", "MemTotal")
            .and_then(|v| v.trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu_model: first_line_with("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: command("uname", &["-r"]).unwrap_or_else(|| "unknown".into()),
            memory_gib: (memory_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            filesystem: command("df", &["--output=source,fstype", data_dir.to_str().unwrap_or(".")])
                .and_then(|s| {
                    s.lines()
                        .nth(1)
                        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                })
                .unwrap_or_else(|| "unknown".into()),
            commit: command("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into()),
        }
    }

    pub fn markdown(&self) -> String {
        format!(
            "| | |\n|---|---|\n| CPU | {} |\n| cores | {} |\n| memory | {} GiB |\n| kernel | {} |\n| data directory on | {} |\n| corelog commit | {} |\n",
            self.cpu_model, self.cores, self.memory_gib, self.kernel, self.filesystem, self.commit
        )
    }
}

/// The block device's counters (`/proc/diskstats`) under a directory:
/// bytes written and write-cache flushes completed since boot.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskCounters {
    pub bytes_written: u64,
    pub flushes: u64,
}

impl DiskCounters {
    /// The counters of the device `df` names for `dir` (None where it is
    /// not a plain block device, or the kernel does not count flushes).
    pub fn read(dir: &std::path::Path) -> Option<DiskCounters> {
        let source = command("df", &["--output=source", dir.to_str()?])?;
        let device = source.lines().nth(1)?.trim().strip_prefix("/dev/")?.to_string();
        let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
        let line = stats
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some(device.as_str()))?;
        let fields: Vec<u64> = line.split_whitespace().skip(3).filter_map(|f| f.parse().ok()).collect();
        // Sectors written is the 7th count after the name, flushes
        // completed the 16th (Linux 5.5 and later).
        Some(DiskCounters {
            bytes_written: *fields.get(6)? * 512,
            flushes: *fields.get(15)?,
        })
    }

    /// What was done between `self` and `later`, a second over `seconds`:
    /// (MB written, flushes).
    pub fn rates_until(&self, later: &DiskCounters, seconds: f64) -> (f64, f64) {
        (
            later.bytes_written.saturating_sub(self.bytes_written) as f64 / seconds / 1e6,
            later.flushes.saturating_sub(self.flushes) as f64 / seconds,
        )
    }
}
