//! Cross-thread wakeups of a parked shard, with no safety net under them.
//!
//! Shards talk to each other and to client threads over flume channels: a
//! message sent from another thread wakes the receiving task through
//! glommio's foreign-waker queue and the executor's eventfd. These tests
//! send millions of such wakes at the moment the receiver parks (it has
//! nothing else to do, no timer that would wake it, no spin before park, no
//! signal interrupting its sleep): one lost wake stops a ping-pong for good,
//! and the watchdog fails the test. Each wake's latency is recorded too; the
//! bound is loose (the machine is shared), the distribution is printed.
//!
//! `CORELOG_WAKE_ROUNDS` scales the rounds (default 200,000 per test).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

/// No progress for this long means a wake was lost: a healthy round trip
/// takes tens of microseconds.
const STALL: Duration = Duration::from_secs(10);
/// A single wake slower than this fails the test: far beyond any scheduling
/// delay of a loaded 2-core machine, far below "never".
const WAKE_LATENCY_MAX: Duration = Duration::from_secs(1);

fn rounds() -> u64 {
    std::env::var("CORELOG_WAKE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

/// Latencies of wakes, in microseconds, bucketed by powers of two.
#[derive(Default)]
struct Latencies {
    buckets: [u64; 32],
    max: Duration,
    count: u64,
}

impl Latencies {
    fn record(&mut self, latency: Duration) {
        let us = latency.as_micros().max(1) as u64;
        self.buckets[(63 - us.leading_zeros()) as usize] += 1;
        self.max = self.max.max(latency);
        self.count += 1;
    }

    fn merge(&mut self, other: &Latencies) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.max = self.max.max(other.max);
        self.count += other.count;
    }

    /// The upper bound of the bucket holding quantile `q`, in µs.
    fn quantile_us(&self, q: f64) -> u64 {
        let target = (self.count as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                return 1 << (i + 1);
            }
        }
        u64::MAX
    }

    fn check(&self, name: &str) {
        eprintln!(
            "{name}: {} wakes, p50 < {} µs, p99 < {} µs, p99.99 < {} µs, max {:?}",
            self.count,
            self.quantile_us(0.50),
            self.quantile_us(0.99),
            self.quantile_us(0.9999),
            self.max
        );
        assert!(
            self.max < WAKE_LATENCY_MAX,
            "{name}: a wake took {:?} (bound {WAKE_LATENCY_MAX:?})",
            self.max
        );
    }
}

/// Runs `sides` on threads of their own and fails if `progress` stops
/// moving for `STALL` before every side returned.
fn watch(name: &str, progress: Arc<AtomicU64>, sides: Vec<Box<dyn FnOnce() -> Latencies + Send>>) -> Latencies {
    let threads: Vec<_> = sides.into_iter().map(std::thread::spawn).collect();
    let mut last = (progress.load(Ordering::Relaxed), Instant::now());
    while !threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        let now = progress.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
        assert!(
            last.1.elapsed() < STALL,
            "{name}: no progress for {STALL:?} at round {now}: a wake was lost (threads left parked)"
        );
    }
    let mut all = Latencies::default();
    for thread in threads {
        all.merge(&thread.join().expect("a side panicked"));
    }
    all
}

/// Answers every ping with a pong until the pings stop; the latency of each
/// ping's wake is recorded.
async fn answer_pings(pings: &flume::Receiver<Instant>, pongs: &flume::Sender<Instant>) -> Latencies {
    let mut latencies = Latencies::default();
    while let Ok(sent) = pings.recv_async().await {
        latencies.record(sent.elapsed());
        pongs.send_async(Instant::now()).await.unwrap();
    }
    latencies
}

/// Pings from a plain thread, each after a pause of up to `jitter_ns`
/// (xorshift), and waits for each pong; `progress` counts the rounds.
fn ping_from_thread(
    rounds: u64,
    progress: &AtomicU64,
    pings: &flume::Sender<Instant>,
    pongs: &flume::Receiver<Instant>,
    jitter_ns: u64,
) -> Latencies {
    let mut latencies = Latencies::default();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let pause = Instant::now();
        let spin = Duration::from_nanos(seed % jitter_ns.max(1));
        while pause.elapsed() < spin {
            std::hint::spin_loop();
        }
        pings.send(Instant::now()).unwrap();
        let sent = pongs.recv().unwrap();
        latencies.record(sent.elapsed());
        progress.store(round + 1, Ordering::Relaxed);
    }
    latencies
}

/// An executor as a shard's, without the nets: no spin before park, no
/// nudging signal.
fn executor(name: &str) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(Placement::Unbound).name(name)
}

/// Two executors bounce a message over flume channels: each receive parks
/// its executor, and each send wakes the other from another thread.
#[test]
fn a_ping_pong_between_executors_never_loses_a_wake() {
    let rounds = rounds();
    let progress = Arc::new(AtomicU64::new(0));
    let (ping_tx, ping_rx) = flume::bounded::<Instant>(1);
    let (pong_tx, pong_rx) = flume::bounded::<Instant>(1);
    let counter = progress.clone();
    let pinger = Box::new(move || {
        executor("pinger")
            .spawn(move || async move {
                let mut latencies = Latencies::default();
                for round in 0..rounds {
                    ping_tx.send_async(Instant::now()).await.unwrap();
                    let sent = pong_rx.recv_async().await.unwrap();
                    latencies.record(sent.elapsed());
                    counter.store(round + 1, Ordering::Relaxed);
                }
                latencies
            })
            .unwrap()
            .join()
            .unwrap()
    });
    let ponger = Box::new(move || {
        executor("ponger")
            .spawn(move || async move { answer_pings(&ping_rx, &pong_tx).await })
            .unwrap()
            .join()
            .unwrap()
    });
    let latencies = watch("executor ping-pong", progress, vec![pinger, ponger]);
    assert_eq!(latencies.count, 2 * rounds);
    latencies.check("executor ping-pong");
}

/// A plain thread (a client's, a signal handler's) wakes a parked executor
/// after a varying pause, so the message lands before, during and after
/// the executor's way into sleep; the executor has a far timer pending, as
/// a shard's clocks do, which arms the reactor's timer on the way.
#[test]
fn a_thread_waking_a_parking_executor_never_loses_a_wake() {
    let rounds = rounds();
    let progress = Arc::new(AtomicU64::new(0));
    let (request_tx, request_rx) = flume::bounded::<Instant>(1);
    let (answer_tx, answer_rx) = flume::bounded::<Instant>(1);
    let counter = progress.clone();
    // Pauses of 0 to ~30 µs, around the executor's park.
    let thread_side = Box::new(move || ping_from_thread(rounds, &counter, &request_tx, &answer_rx, 30_000));
    let executor_side = Box::new(move || {
        executor("woken")
            .spawn(move || async move {
                let clock = glommio::spawn_local(async {
                    loop {
                        glommio::timer::sleep(Duration::from_secs(3600)).await;
                    }
                })
                .detach();
                let latencies = answer_pings(&request_rx, &answer_tx).await;
                clock.cancel();
                latencies
            })
            .unwrap()
            .join()
            .unwrap()
    });
    let latencies = watch("thread to executor", progress, vec![thread_side, executor_side]);
    assert_eq!(latencies.count, 2 * rounds);
    latencies.check("thread to executor");
}

/// Many tasks on one executor each wait on their own channel, fed by
/// another executor in bursts, as a shard's connections wait on replies:
/// wakes arrive in batches, some while the executor runs, some as it parks.
#[test]
fn bursts_of_wakes_to_many_tasks_are_all_delivered() {
    const TASKS: usize = 64;
    let rounds = (rounds() / TASKS as u64).max(1);
    let progress = Arc::new(AtomicU64::new(0));
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..TASKS).map(|_| flume::bounded::<Instant>(1)).unzip();
    let (done_tx, done_rx) = flume::bounded::<()>(TASKS);
    let counter = progress.clone();
    let feeder = Box::new(move || {
        executor("feeder")
            .spawn(move || async move {
                for round in 0..rounds {
                    for sender in &senders {
                        sender.send_async(Instant::now()).await.unwrap();
                    }
                    for _ in 0..TASKS {
                        done_rx.recv_async().await.unwrap();
                    }
                    counter.store(round + 1, Ordering::Relaxed);
                }
                Latencies::default()
            })
            .unwrap()
            .join()
            .unwrap()
    });
    let waiters = Box::new(move || {
        executor("waiters")
            .spawn(move || async move {
                let tasks: Vec<_> = receivers
                    .into_iter()
                    .map(|receiver| {
                        let done = done_tx.clone();
                        glommio::spawn_local(async move {
                            let mut latencies = Latencies::default();
                            while let Ok(sent) = receiver.recv_async().await {
                                latencies.record(sent.elapsed());
                                done.send_async(()).await.unwrap();
                            }
                            latencies
                        })
                    })
                    .collect();
                let mut all = Latencies::default();
                for task in tasks {
                    all.merge(&task.await);
                }
                all
            })
            .unwrap()
            .join()
            .unwrap()
    });
    let latencies = watch("bursts to many tasks", progress, vec![feeder, waiters]);
    assert_eq!(latencies.count, rounds * TASKS as u64);
    latencies.check("bursts to many tasks");
}

/// A shard's executor runs work past its task quota while wakes from
/// another thread arrive: the preemption timer fires at every moment of the
/// scheduling round, also just before the woken task would run. (glommio
/// 0.9.0 parked when preempted there, with the woken task runnable and no
/// I/O to wake it: vendor/glommio/PATCHED.md. This is the lost
/// cross-thread wake corelog's nets were built around.)
#[test]
fn a_preempted_executor_still_runs_tasks_woken_from_another_thread() {
    let rounds = rounds() / 4;
    let progress = Arc::new(AtomicU64::new(0));
    let (request_tx, request_rx) = flume::bounded::<Instant>(1);
    let (answer_tx, answer_rx) = flume::bounded::<Instant>(1);
    let counter = progress.clone();
    let thread_side = Box::new(move || ping_from_thread(rounds, &counter, &request_tx, &answer_rx, 0));
    let executor_side = Box::new(move || {
        executor("preempted")
            .preempt_timer(Duration::from_micros(50))
            .spawn(move || async move {
                let busy = glommio::spawn_local(async {
                    let mut seed = 0x2545_f491_4f6c_dd1du64;
                    loop {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let spin = Instant::now();
                        while spin.elapsed() < Duration::from_nanos(seed % 80_000) {
                            std::hint::spin_loop();
                        }
                        glommio::yield_if_needed().await;
                    }
                })
                .detach();
                let latencies = answer_pings(&request_rx, &answer_tx).await;
                busy.cancel();
                latencies
            })
            .unwrap()
            .join()
            .unwrap()
    });
    let latencies = watch("preempted executor", progress, vec![thread_side, executor_side]);
    assert_eq!(latencies.count, 2 * rounds);
    latencies.check("preempted executor");
}
