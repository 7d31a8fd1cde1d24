//! The executor corelog runs on must not park while it has runnable tasks.
//!
//! glommio 0.9.0 did: preempted before it ran a task queue, it parked, and
//! with no I/O or timer pending slept for good (vendor/glommio/PATCHED.md).
//! A preemption timer far shorter than a scheduling round makes that race
//! happen within a few thousand yields; this test hung in most runs on 0.9.0.

use std::sync::mpsc;
use std::time::Duration;

const YIELDS: u64 = 200_000;
const ROUNDS: usize = 10;
/// Far longer than the rounds take (tens of milliseconds each), so only a
/// parked executor reaches it.
const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn a_preempted_executor_with_runnable_tasks_does_not_park() {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..ROUNDS {
            let yields = glommio::LocalExecutorBuilder::default()
                .preempt_timer(Duration::from_micros(50))
                .make()
                .expect("a glommio executor (io_uring) is available")
                .run(async {
                    let mut yields = 0;
                    for _ in 0..YIELDS {
                        yield_once().await;
                        yields += 1;
                    }
                    yields
                });
            assert_eq!(yields, YIELDS);
        }
        done.send(()).expect("the test waits for the rounds");
    });
    finished
        .recv_timeout(DEADLINE)
        .expect("the executor finished its yields: it did not park with a runnable task");
}

/// Returns `Pending` once after waking itself: the task stays runnable.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}
