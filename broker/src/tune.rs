//! `corelog tune`: what on this machine bears on a broker of one thread per
//! core doing direct I/O (Redpanda's `rpk redpanda tune`), each check with
//! the value found, the value recommended and why; `--apply` sets what can
//! be set safely at run time, as root, and says what it changed.
//!
//! Everything is read from (and written to) procfs and sysfs under a root
//! directory, `/` unless told otherwise, so that the tests run every check
//! and every change against a tree of their own making. Nothing here
//! persists across a reboot: `deploy/corelog.service` and the README say
//! what to make permanent.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// `fs.aio-max-nr` at least: glommio's io_uring rings and each shard's
/// O_DIRECT segments take AIO contexts from it.
pub const AIO_MAX_NR_MIN: u64 = 1_048_576;
/// Locked memory a non-root broker needs at least (io_uring's registered
/// buffers are locked; glommio's io memory per shard is 10 MiB by
/// default).
pub const MEMLOCK_MIN_BYTES: u64 = 512 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// As recommended.
    Good,
    /// Worth changing.
    Change,
    /// This machine does not say (a VM without the knob, a missing file).
    Unknown,
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub found: String,
    pub recommended: String,
    pub verdict: Verdict,
    pub why: &'static str,
    /// What `--apply` writes, and where, when the verdict is Change.
    pub fix: Option<Fix>,
}

/// A value written to a file under the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fix {
    pub path: PathBuf,
    pub value: String,
}

/// Where the checks look: the root of procfs and sysfs, the data directory
/// (its disk and filesystem) and the cores the shards run on.
pub struct Machine {
    pub root: PathBuf,
    pub data_dir: PathBuf,
    pub shard_cpus: Vec<usize>,
}

impl Machine {
    fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    fn read(&self, absolute: &str) -> Option<String> {
        std::fs::read_to_string(self.path(absolute))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Every check, in the order printed.
    pub fn checks(&self) -> Vec<Check> {
        let mut checks = vec![
            self.governor(),
            self.smt(),
            self.isolated(),
            self.aio_max_nr(),
            self.memlock(),
            self.transparent_huge_pages(),
            self.clock_source(),
        ];
        checks.extend(self.disk());
        checks.extend(self.filesystem());
        checks.extend(self.irqs());
        checks
    }

    fn governor(&self) -> Check {
        let mut found = BTreeSet::new();
        let mut fixes = Vec::new();
        for cpu in &self.shard_cpus {
            let file = format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor");
            if let Some(governor) = self.read(&file) {
                if governor != "performance" {
                    fixes.push(file);
                }
                found.insert(governor);
            }
        }
        let why = "a core that clocks down between requests adds its ramp-up to every tail latency";
        if found.is_empty() {
            return unknown("cpu frequency governor", "performance", why);
        }
        check(
            "cpu frequency governor",
            found.into_iter().collect::<Vec<_>>().join(","),
            "performance",
            fixes.is_empty(),
            why,
            // Every shard core's file; the first names the change.
            fixes.first().map(|file| Fix {
                path: self.path(file),
                value: "performance".into(),
            }),
        )
    }

    /// Shards sharing a physical core (SMT siblings) share its execution
    /// units and caches: one shard a core, the sibling left idle or to the
    /// kernel.
    fn smt(&self) -> Check {
        let why = "two shards on one core's SMT threads compete for it: give each shard a core of its own (--cpus)";
        let mut cores = BTreeSet::new();
        let mut known = 0;
        for cpu in &self.shard_cpus {
            if let Some(siblings) = self.read(&format!(
                "/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
            )) {
                known += 1;
                cores.insert(siblings);
            }
        }
        if known == 0 {
            return unknown("shards on SMT siblings", "one shard a physical core", why);
        }
        let shared = known - cores.len();
        check(
            "shards on SMT siblings",
            format!("{shared} of {known} shards share a core"),
            "none",
            shared == 0,
            why,
            None,
        )
    }

    fn isolated(&self) -> Check {
        let why = "isolcpus/nohz_full keep the kernel's other work off the shards' cores (a boot parameter)";
        let Some(isolated) = self.read("/sys/devices/system/cpu/isolated") else {
            return unknown("shard cores isolated", "the shards' cores", why);
        };
        let set = parse_cpu_list(&isolated);
        let missing: Vec<String> = self
            .shard_cpus
            .iter()
            .filter(|cpu| !set.contains(cpu))
            .map(|cpu| cpu.to_string())
            .collect();
        check(
            "shard cores isolated",
            if isolated.is_empty() { "none".into() } else { isolated },
            format_cpus(&self.shard_cpus),
            missing.is_empty(),
            why,
            None,
        )
    }

    fn aio_max_nr(&self) -> Check {
        let file = "/proc/sys/fs/aio-max-nr";
        let why = "io_uring rings and O_DIRECT segments take AIO contexts: too few and a shard fails to start";
        let Some(found) = self.read(file).and_then(|v| v.parse::<u64>().ok()) else {
            return unknown("fs.aio-max-nr", &AIO_MAX_NR_MIN.to_string(), why);
        };
        check(
            "fs.aio-max-nr",
            found.to_string(),
            format!(">= {AIO_MAX_NR_MIN}"),
            found >= AIO_MAX_NR_MIN,
            why,
            Some(Fix {
                path: self.path(file),
                value: AIO_MAX_NR_MIN.to_string(),
            }),
        )
    }

    fn memlock(&self) -> Check {
        let why = "io_uring locks its registered buffers; a non-root broker needs the limit raised (LimitMEMLOCK)";
        let limit = self.read("/proc/self/limits").and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max locked memory"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        });
        let Some(limit) = limit else {
            return unknown("memlock limit", "unlimited", why);
        };
        let good = limit == "unlimited" || limit.parse::<u64>().is_ok_and(|bytes| bytes >= MEMLOCK_MIN_BYTES);
        check(
            "memlock limit",
            limit,
            format!(">= {MEMLOCK_MIN_BYTES} bytes or unlimited"),
            good,
            why,
            None,
        )
    }

    fn transparent_huge_pages(&self) -> Check {
        let file = "/sys/kernel/mm/transparent_hugepage/enabled";
        let why = "'always' has the kernel compact memory on a shard's page faults (latency spikes); madvise lets the allocator ask";
        let Some(modes) = self.read(file) else {
            return unknown("transparent huge pages", "madvise", why);
        };
        let found = selected(&modes).unwrap_or(modes.clone());
        check(
            "transparent huge pages",
            found.clone(),
            "madvise (or never)",
            found != "always",
            why,
            Some(Fix {
                path: self.path(file),
                value: "madvise".into(),
            }),
        )
    }

    fn clock_source(&self) -> Check {
        let file = "/sys/devices/system/clocksource/clocksource0/current_clocksource";
        let why = "every request is timed; tsc reads in nanoseconds, hpet or acpi_pm take a microsecond a read";
        let Some(found) = self.read(file) else {
            return unknown("clock source", "tsc", why);
        };
        let available = self
            .read("/sys/devices/system/clocksource/clocksource0/available_clocksource")
            .unwrap_or_default();
        let tsc = available.split_whitespace().any(|c| c == "tsc");
        check(
            "clock source",
            found.clone(),
            if tsc { "tsc" } else { "tsc (not offered here)" },
            found == "tsc" || !tsc,
            why,
            tsc.then(|| Fix {
                path: self.path(file),
                value: "tsc".into(),
            }),
        )
    }

    /// The data directory's block device, as `major:minor`, and its
    /// whole disk's (a partition's parent), whose queue holds the knobs.
    fn data_disk(&self) -> Option<String> {
        let mountinfo = self.read("/proc/self/mountinfo")?;
        let mount = mount_of(&mountinfo, &self.data_dir)?;
        let device = mount.device;
        // A partition's queue is its disk's.
        if self.read(&format!("/sys/dev/block/{device}/partition")).is_some() {
            let link = std::fs::read_link(self.path(&format!("/sys/dev/block/{device}"))).ok()?;
            let parent = link.parent()?.file_name()?.to_string_lossy().into_owned();
            return self.read(&format!("/sys/class/block/{parent}/dev"));
        }
        Some(device)
    }

    fn disk(&self) -> Vec<Check> {
        let why_scheduler =
            "corelog orders and batches its own writes (one O_DIRECT stream a partition, group commit): \
                             a kernel scheduler only adds latency on NVMe; mq-deadline suits a rotating disk";
        let why_depth = "a shallow device queue caps the reads and writes in flight that many partitions' shards issue";
        let Some(disk) = self.data_disk() else {
            return vec![
                unknown("data disk scheduler", "none", why_scheduler),
                unknown("data disk queue depth", ">= 256", why_depth),
            ];
        };
        let mut checks = Vec::new();
        let scheduler_file = format!("/sys/dev/block/{disk}/queue/scheduler");
        let rotational = self.read(&format!("/sys/dev/block/{disk}/queue/rotational")).as_deref() == Some("1");
        match self.read(&scheduler_file) {
            Some(modes) => {
                let found = selected(&modes).unwrap_or(modes.clone());
                let want = if rotational { "mq-deadline" } else { "none" };
                let offered = modes.split_whitespace().any(|m| m.trim_matches(['[', ']']) == want);
                checks.push(check(
                    "data disk scheduler",
                    format!("{found} ({disk})"),
                    want,
                    found == want || !offered,
                    why_scheduler,
                    offered.then(|| Fix {
                        path: self.path(&scheduler_file),
                        value: want.into(),
                    }),
                ));
            }
            None => checks.push(unknown("data disk scheduler", "none", why_scheduler)),
        }
        match self
            .read(&format!("/sys/dev/block/{disk}/queue/nr_requests"))
            .and_then(|v| v.parse::<u64>().ok())
        {
            Some(depth) => checks.push(check(
                "data disk queue depth",
                depth.to_string(),
                ">= 256",
                depth >= 256,
                why_depth,
                None,
            )),
            None => checks.push(unknown("data disk queue depth", ">= 256", why_depth)),
        }
        checks
    }

    fn filesystem(&self) -> Vec<Check> {
        let why_fs = "xfs or ext4 take O_DIRECT appends and fallocate well; others may not";
        let why_discard = "online discard issues a TRIM per freed extent inside the write path (retention's deletes): \
                           trim from a timer (fstrim.timer) instead";
        let why_atime = "atime updates write metadata on reads; noatime (or relatime) spares them";
        let Some(mount) = self
            .read("/proc/self/mountinfo")
            .and_then(|mountinfo| mount_of(&mountinfo, &self.data_dir))
        else {
            return vec![
                unknown("data filesystem", "xfs or ext4", why_fs),
                unknown("data mount discard", "off", why_discard),
                unknown("data mount atime", "noatime", why_atime),
            ];
        };
        let options: BTreeSet<&str> = mount.options.split(',').collect();
        let atime = ["noatime", "relatime"].into_iter().find(|o| options.contains(o));
        vec![
            check(
                "data filesystem",
                format!("{} on {}", mount.fstype, mount.mount_point),
                "xfs or ext4",
                mount.fstype == "xfs" || mount.fstype == "ext4",
                why_fs,
                None,
            ),
            check(
                "data mount discard",
                if options.contains("discard") { "on" } else { "off" }.into(),
                "off",
                !options.contains("discard"),
                why_discard,
                None,
            ),
            check(
                "data mount atime",
                atime.unwrap_or("atime").into(),
                "noatime",
                atime.is_some(),
                why_atime,
                None,
            ),
        ]
    }

    /// The interrupts of the data disk and of the network cards, against
    /// the shards' cores: an interrupt handled on a shard's core preempts
    /// the shard.
    fn irqs(&self) -> Vec<Check> {
        let why = "an interrupt handled on a shard's core preempts that shard: steer disk and NIC interrupts to the other cores";
        let mut devices: Vec<(String, PathBuf)> = Vec::new();
        if let Some(disk) = self.data_disk() {
            devices.push((
                format!("data disk {disk}"),
                self.path(&format!("/sys/dev/block/{disk}/device")),
            ));
        }
        if let Ok(entries) = std::fs::read_dir(self.path("/sys/class/net")) {
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name != "lo")
                .collect();
            names.sort();
            for name in names {
                devices.push((
                    format!("nic {name}"),
                    self.path(&format!("/sys/class/net/{name}/device")),
                ));
            }
        }
        let shards: BTreeSet<usize> = self.shard_cpus.iter().copied().collect();
        let mut checks = Vec::new();
        for (device, path) in devices {
            let Some(irqs) = msi_irqs(&path) else { continue };
            let mut on_shards = 0;
            for irq in &irqs {
                let affinity = self
                    .read(&format!("/proc/irq/{irq}/smp_affinity_list"))
                    .unwrap_or_default();
                if parse_cpu_list(&affinity).iter().any(|cpu| shards.contains(cpu)) {
                    on_shards += 1;
                }
            }
            checks.push(Check {
                name: "interrupts on shard cores",
                found: format!("{device}: {on_shards} of {} irqs", irqs.len()),
                recommended: "0".into(),
                verdict: if on_shards == 0 { Verdict::Good } else { Verdict::Change },
                why,
                fix: None,
            });
        }
        if checks.is_empty() {
            checks.push(unknown("interrupts on shard cores", "0", why));
        }
        checks
    }
}

fn check(
    name: &'static str,
    found: String,
    recommended: impl Into<String>,
    good: bool,
    why: &'static str,
    fix: Option<Fix>,
) -> Check {
    Check {
        name,
        found,
        recommended: recommended.into(),
        verdict: if good { Verdict::Good } else { Verdict::Change },
        why,
        fix: if good { None } else { fix },
    }
}

fn unknown(name: &'static str, recommended: &str, why: &'static str) -> Check {
    Check {
        name,
        found: "not exposed here".into(),
        recommended: recommended.into(),
        verdict: Verdict::Unknown,
        why,
        fix: None,
    }
}

/// The bracketed choice of a sysfs list (`none [mq-deadline] kyber`).
fn selected(modes: &str) -> Option<String> {
    modes
        .split_whitespace()
        .find(|m| m.starts_with('['))
        .map(|m| m.trim_matches(['[', ']']).to_string())
}

/// `0-3,8,10-11` as a set.
pub fn parse_cpu_list(list: &str) -> BTreeSet<usize> {
    let mut cpus = BTreeSet::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((low, high)) => {
                if let (Ok(low), Ok(high)) = (low.parse::<usize>(), high.parse::<usize>()) {
                    cpus.extend(low..=high.min(low + 65_535));
                }
            }
            None => {
                if let Ok(cpu) = part.parse() {
                    cpus.insert(cpu);
                }
            }
        }
    }
    cpus
}

fn format_cpus(cpus: &[usize]) -> String {
    cpus.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
}

/// A line of `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub mount_point: String,
    pub fstype: String,
    pub options: String,
}

/// The mount holding `path` (the longest mount point that is its prefix).
pub fn mount_of(mountinfo: &str, path: &Path) -> Option<Mount> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            let mount_point = fields.get(4)?.to_string();
            let mut options = fields.get(5)?.to_string();
            if let Some(super_options) = fields.get(separator + 3) {
                options = format!("{options},{super_options}");
            }
            Some(Mount {
                device: fields.get(2)?.to_string(),
                mount_point,
                fstype: fields.get(separator + 1)?.to_string(),
                options,
            })
        })
        .filter(|mount| path.starts_with(&mount.mount_point))
        .max_by_key(|mount| mount.mount_point.len())
}

/// The MSI interrupts of the device at `path` (a sysfs device link) or of
/// the nearest parent that has them (a virtio disk's PCI function).
fn msi_irqs(path: &Path) -> Option<Vec<String>> {
    let mut at = std::fs::canonicalize(path).ok()?;
    for _ in 0..4 {
        if let Ok(entries) = std::fs::read_dir(at.join("msi_irqs")) {
            let mut irqs: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            irqs.sort_by_key(|irq| irq.parse::<u64>().unwrap_or(u64::MAX));
            return Some(irqs);
        }
        at = at.parent()?.to_path_buf();
    }
    None
}

/// The checks as a table: name, found, recommended, and why for those to
/// change.
pub fn report(checks: &[Check]) -> String {
    let mut out = format!("{:<28} {:<8} {:<36} {}\n", "CHECK", "VERDICT", "FOUND", "RECOMMENDED");
    for c in checks {
        let verdict = match c.verdict {
            Verdict::Good => "ok",
            Verdict::Change => "change",
            Verdict::Unknown => "unknown",
        };
        out.push_str(&format!(
            "{:<28} {:<8} {:<36} {}\n",
            c.name, verdict, c.found, c.recommended
        ));
        if c.verdict != Verdict::Good {
            out.push_str(&format!("    why: {}\n", c.why));
        }
    }
    out
}

/// The checks as JSON lines, one object a check.
pub fn report_json(checks: &[Check]) -> String {
    checks
        .iter()
        .map(|c| {
            serde_json::json!({
                "check": c.name,
                "verdict": format!("{:?}", c.verdict).to_lowercase(),
                "found": c.found,
                "recommended": c.recommended,
                "why": c.why,
                "fix": c.fix.as_ref().map(|f| serde_json::json!({"path": f.path, "value": f.value})),
            })
            .to_string()
                + "\n"
        })
        .collect()
}

/// Applies every fix of a check to change; for the governor, to every
/// shard core. Answers a line per change made or refused.
pub fn apply(machine: &Machine, checks: &[Check]) -> Vec<String> {
    let mut done = Vec::new();
    for check in checks.iter().filter(|c| c.verdict == Verdict::Change) {
        let Some(fix) = &check.fix else {
            done.push(format!("{}: not changed here ({})", check.name, check.why));
            continue;
        };
        let files: Vec<PathBuf> = if check.name == "cpu frequency governor" {
            machine
                .shard_cpus
                .iter()
                .map(|cpu| machine.path(&format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor")))
                .collect()
        } else {
            vec![fix.path.clone()]
        };
        for file in files {
            match std::fs::write(&file, &fix.value) {
                Ok(()) => done.push(format!(
                    "{}: {} -> {} ({})",
                    check.name,
                    check.found,
                    fix.value,
                    file.display()
                )),
                Err(error) => done.push(format!("{}: could not write {}: {error}", check.name, file.display())),
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine's procfs and sysfs, as files under a temporary root.
    fn machine(files: &[(&str, &str)]) -> (tempfile::TempDir, Machine) {
        let root = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let file = root.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        }
        let machine = Machine {
            root: root.path().to_path_buf(),
            data_dir: PathBuf::from("/var/lib/corelog/data"),
            shard_cpus: vec![2, 3],
        };
        (root, machine)
    }

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}"))
    }

    const MOUNTINFO: &str = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n\
                             40 27 259:1 / /var/lib/corelog rw,noatime - xfs /dev/nvme0n1p1 rw,attr2\n";

    #[test]
    fn a_machine_is_checked_against_what_a_shard_per_core_broker_needs() {
        let (_root, machine) = machine(&[
            ("/sys/devices/system/cpu/cpu2/cpufreq/scaling_governor", "powersave\n"),
            ("/sys/devices/system/cpu/cpu3/cpufreq/scaling_governor", "performance\n"),
            ("/sys/devices/system/cpu/cpu2/topology/thread_siblings_list", "2,3\n"),
            ("/sys/devices/system/cpu/cpu3/topology/thread_siblings_list", "2,3\n"),
            ("/sys/devices/system/cpu/isolated", "2-3\n"),
            ("/proc/sys/fs/aio-max-nr", "65536\n"),
            (
                "/proc/self/limits",
                "Limit Soft Hard Units\nMax locked memory         8388608              8388608              bytes\n",
            ),
            (
                "/sys/kernel/mm/transparent_hugepage/enabled",
                "[always] madvise never\n",
            ),
            (
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
                "hpet\n",
            ),
            (
                "/sys/devices/system/clocksource/clocksource0/available_clocksource",
                "tsc hpet acpi_pm\n",
            ),
            ("/proc/self/mountinfo", MOUNTINFO),
            ("/sys/class/block/nvme0n1/dev", "259:0\n"),
            ("/sys/dev/block/259:0/queue/scheduler", "[mq-deadline] none\n"),
            ("/sys/dev/block/259:0/queue/rotational", "0\n"),
            ("/sys/dev/block/259:0/queue/nr_requests", "64\n"),
        ]);
        // The partition's sysfs entry links into its disk's directory.
        let blocks = machine.root.join("sys/devices/nvme/nvme0n1");
        std::fs::create_dir_all(blocks.join("nvme0n1p1")).unwrap();
        std::fs::write(blocks.join("nvme0n1p1/partition"), "1\n").unwrap();
        std::os::unix::fs::symlink(blocks.join("nvme0n1p1"), machine.root.join("sys/dev/block/259:1")).unwrap();
        let checks = machine.checks();
        let governor = find(&checks, "cpu frequency governor");
        assert_eq!(
            (governor.verdict, governor.found.as_str()),
            (Verdict::Change, "performance,powersave")
        );
        assert_eq!(find(&checks, "shards on SMT siblings").verdict, Verdict::Change);
        assert_eq!(find(&checks, "shard cores isolated").verdict, Verdict::Good);
        assert_eq!(find(&checks, "fs.aio-max-nr").verdict, Verdict::Change);
        assert_eq!(find(&checks, "memlock limit").verdict, Verdict::Change);
        assert_eq!(find(&checks, "transparent huge pages").found, "always");
        assert_eq!(find(&checks, "clock source").verdict, Verdict::Change);
        let scheduler = find(&checks, "data disk scheduler");
        assert_eq!(
            (scheduler.verdict, scheduler.recommended.as_str()),
            (Verdict::Change, "none")
        );
        assert!(
            scheduler.found.contains("259:0"),
            "the partition's disk: {}",
            scheduler.found
        );
        assert_eq!(find(&checks, "data disk queue depth").verdict, Verdict::Change);
        let fs = find(&checks, "data filesystem");
        assert_eq!(
            (fs.verdict, fs.found.as_str()),
            (Verdict::Good, "xfs on /var/lib/corelog")
        );
        assert_eq!(find(&checks, "data mount discard").verdict, Verdict::Good);
        assert_eq!(find(&checks, "data mount atime").found, "noatime");
        assert!(report(&checks).contains("why: a core that clocks down"));
        assert_eq!(report_json(&checks).lines().count(), checks.len());

        // What can be set at run time is, and a second check finds it so.
        let changed = apply(&machine, &checks);
        assert!(
            changed.iter().any(|l| l.starts_with("fs.aio-max-nr: 65536 -> 1048576")),
            "{changed:?}"
        );
        let again = machine.checks();
        for name in [
            "cpu frequency governor",
            "fs.aio-max-nr",
            "transparent huge pages",
            "clock source",
            "data disk scheduler",
        ] {
            assert_eq!(find(&again, name).verdict, Verdict::Good, "{name} after --apply");
        }
        assert_eq!(
            machine
                .read("/sys/devices/system/cpu/cpu2/cpufreq/scaling_governor")
                .as_deref(),
            Some("performance")
        );
        assert_eq!(
            find(&again, "memlock limit").verdict,
            Verdict::Change,
            "a limit is the service's to set"
        );
    }

    #[test]
    fn a_machine_that_exposes_nothing_says_so_rather_than_guess() {
        let (_root, machine) = machine(&[]);
        let checks = machine.checks();
        assert!(checks.iter().all(|c| c.verdict == Verdict::Unknown), "{checks:?}");
        assert!(apply(&machine, &checks).is_empty());
    }

    #[test]
    fn cpu_lists_and_mounts_parse() {
        assert_eq!(parse_cpu_list("0-2,5, 7-8"), BTreeSet::from([0, 1, 2, 5, 7, 8]));
        assert!(parse_cpu_list("").is_empty());
        let mount = mount_of(MOUNTINFO, Path::new("/var/lib/corelog/data")).unwrap();
        assert_eq!((mount.device.as_str(), mount.fstype.as_str()), ("259:1", "xfs"));
        assert!(mount.options.contains("noatime"));
        assert_eq!(mount_of(MOUNTINFO, Path::new("/home")).unwrap().mount_point, "/");
    }
}
