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
