//! What stalls a shard: a task queue that runs past its task quota by more
//! than `stall_threshold_us` (a task that computes without yielding, or a
//! blocking call on the shard thread). glommio's stall detector samples the
//! shard thread's stack when the budget runs out; the trace goes, still
//! unresolved, to one reporter thread for the process, which resolves it
//! (reading debug info is slow: never on a shard), logs it with what ran,
//! and keeps each shard's count and worst stalls for the stats printed at
//! stop, which the benchmark reports list.

use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use glommio::{StallDetection, StallDetectionHandler, TaskQueueHandle};

use crate::shard::ShardId;

/// Worst stalls kept per shard.
pub const STALLS_KEPT: usize = 8;
/// Stall traces waiting for the reporter; past it, stalls are counted but
/// their traces dropped (a shard never waits on the reporter).
const REPORTS_QUEUED_MAX: usize = 256;
/// Frames of corelog's own code named per stall.
const FRAMES_NAMED: usize = 6;

/// One stall: how far past its budget the shard ran, and where.
#[derive(Clone, Debug)]
pub struct Stall {
    pub overage: Duration,
    /// corelog's innermost frames at the moment the budget ran out,
    /// innermost first; what else was on the stack if none were.
    pub at: String,
}

/// A shard's stalls so far.
#[derive(Debug, Default)]
pub struct StallLog {
    pub count: u64,
    /// Traces the reporter had no room for.
    pub dropped: u64,
    /// The longest, longest first, at most `STALLS_KEPT`.
    pub worst: Vec<Stall>,
}

impl StallLog {
    fn record(&mut self, stall: Stall) {
        let at = self.worst.partition_point(|kept| kept.overage >= stall.overage);
        if at < STALLS_KEPT {
            self.worst.insert(at, stall);
            self.worst.truncate(STALLS_KEPT);
        }
    }
}

struct Report {
    log: Arc<Mutex<StallLog>>,
    shard: ShardId,
    overage: Duration,
    trace: backtrace::Backtrace,
}

fn reporter() -> &'static mpsc::SyncSender<Report> {
    static REPORTER: OnceLock<mpsc::SyncSender<Report>> = OnceLock::new();
    REPORTER.get_or_init(|| {
        let (reports, received) = mpsc::sync_channel::<Report>(REPORTS_QUEUED_MAX);
        std::thread::Builder::new()
            .name("stall-reporter".into())
            .spawn(move || {
                for mut report in received {
                    report.trace.resolve();
                    let stall = Stall {
                        overage: report.overage,
                        at: where_it_ran(&report.trace),
                    };
                    tracing::warn!(
                        shard = report.shard,
                        overage_us = stall.overage.as_micros() as u64,
                        at = %stall.at,
                        "shard stalled past its task quota"
                    );
                    lock(&report.log).record(stall);
                }
            })
            .expect("start the stall reporter thread");
        reports
    })
}

fn lock(log: &Mutex<StallLog>) -> std::sync::MutexGuard<'_, StallLog> {
    log.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// corelog's own frames of a resolved trace, innermost first.
fn where_it_ran(trace: &backtrace::Backtrace) -> String {
    let names: Vec<String> = trace
        .frames()
        .iter()
        .flat_map(|frame| frame.symbols())
        .filter_map(|symbol| symbol.name().map(|name| format!("{name:#}")))
        .collect();
    let ours: Vec<&String> = names
        .iter()
        .filter(|name| ["corelog::", "storage::", "net::"].iter().any(|c| name.starts_with(c)))
        .take(FRAMES_NAMED)
        .collect();
    let named: Vec<&String> = if ours.is_empty() {
        names.iter().take(FRAMES_NAMED).collect()
    } else {
        ours
    };
    if named.is_empty() {
        return "(no frames)".into();
    }
    named.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(" < ")
}

/// The handler given to a shard's executor.
#[derive(Debug)]
pub struct Detector {
    shard: ShardId,
    threshold: Duration,
    log: Arc<Mutex<StallLog>>,
}

impl Detector {
    pub fn new(shard: ShardId, threshold: Duration) -> (Detector, Arc<Mutex<StallLog>>) {
        let log = Arc::new(Mutex::new(StallLog::default()));
        let detector = Detector {
            shard,
            threshold,
            log: log.clone(),
        };
        (detector, log)
    }
}

impl StallDetectionHandler for Detector {
    fn threshold(&self, _queue: TaskQueueHandle, _max_expected_runtime: Duration) -> Option<Duration> {
        Some(self.threshold)
    }

    fn stall(&self, detection: StallDetection<'_>) {
        let overage = detection.overage();
        let report = Report {
            log: self.log.clone(),
            shard: self.shard,
            overage,
            trace: detection.into_trace(),
        };
        let mut log = lock(&self.log);
        log.count += 1;
        if reporter().try_send(report).is_err() {
            log.dropped += 1;
        }
    }
}

/// The stats line's fields for a shard's stalls, and a line per worst one.
pub fn summary(shard: ShardId, log: &Mutex<StallLog>) -> (String, Vec<String>) {
    let log = lock(log);
    let max = log.worst.first().map_or(0, |s| s.overage.as_micros());
    let fields = format!("stalls={} stall_max_us={max}", log.count);
    let lines = log
        .worst
        .iter()
        .map(|s| {
            format!(
                "corelog shard stall: shard={shard} overage_us={} at={}",
                s.overage.as_micros(),
                s.at
            )
        })
        .collect();
    (fields, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stall(us: u64) -> Stall {
        Stall {
            overage: Duration::from_micros(us),
            at: format!("{us}"),
        }
    }

    #[test]
    fn the_worst_stalls_are_kept_longest_first() {
        let mut log = StallLog::default();
        for us in [5, 90, 1, 40, 7, 300, 2, 8, 60, 3, 11] {
            log.record(stall(us));
        }
        let kept: Vec<u64> = log.worst.iter().map(|s| s.overage.as_micros() as u64).collect();
        assert_eq!(kept, vec![300, 90, 60, 40, 11, 8, 7, 5]);
    }

    /// A task that blocks its executor past the budget is caught with a
    /// trace naming it.
    #[test]
    fn a_blocking_task_is_caught_with_its_frames() {
        let (detector, log) = Detector::new(0, Duration::from_millis(5));
        glommio::LocalExecutorBuilder::default()
            .preempt_timer(Duration::from_millis(1))
            .detect_stalls(Some(Box::new(detector)))
            .make()
            .expect("an executor")
            .run(async {
                glommio::spawn_local(async { block_the_shard() }).await;
            });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while lock(&log).worst.is_empty() {
            assert!(std::time::Instant::now() < deadline, "the stall was reported");
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = lock(&log);
        assert_eq!(log.count, 1);
        assert!(log.worst[0].overage > Duration::ZERO);
        assert!(log.worst[0].at.contains("block_the_shard"), "{}", log.worst[0].at);
    }

    /// Computes for 30 ms without yielding (a loop, not a sleep: a sleep
    /// in tail position would leave no frame of its own).
    #[inline(never)]
    fn block_the_shard() {
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(());
        }
    }
}
