//! A safety net under glommio's parking. glommio 0.9.0 put an executor to
//! sleep with runnable tasks when it was preempted just before running
//! them; corelog builds a copy with that fixed (vendor/glommio/PATCHED.md).
//! A wakeup sent from another thread just as the reactor parks (it re-checks
//! its shared channels then, not its queue of foreign wakeups) is suspected
//! of the same, never caught. An executor asleep in `io_uring_enter` with
//! work due sleeps until unrelated I/O arrives, which for a client waiting
//! on a broker (or a shard waiting on a client) may be never.
//!
//! `nudge_this_thread` registers the calling thread with a process-wide
//! nudger that interrupts every registered thread with a no-op signal
//! every `NUDGE_INTERVAL`: a sleeping `io_uring_enter` returns EINTR and
//! the reactor looks at its timers and queues again. The handler is
//! installed without SA_RESTART for that reason; the other blocking calls
//! of such threads (std::fs on regular files, socket writes through std)
//! are not interrupted by signals or retry on EINTR. A thread is
//! deregistered by a thread-local's destructor as it exits, however it
//! exits, before a join of it returns.
//!
//! Every executor that runs corelog's clients or shards calls it first:
//! the broker's shards, the benchmark's client threads, the CLI, tests.

use std::cell::RefCell;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How often each registered thread is interrupted.
pub const NUDGE_INTERVAL: Duration = Duration::from_millis(5);
/// A signal whose default action is to be ignored, so a stray one harms
/// nothing; a no-op handler is installed for it.
const NUDGE_SIGNAL: libc::c_int = libc::SIGURG;

static THREADS: Mutex<Vec<libc::pthread_t>> = Mutex::new(Vec::new());
static NUDGER: OnceLock<()> = OnceLock::new();

thread_local! {
    static REGISTERED: RefCell<Option<Registered>> = const { RefCell::new(None) };
}

struct Registered(libc::pthread_t);

impl Drop for Registered {
    fn drop(&mut self) {
        // Never skipped, even after a panic elsewhere poisoned the lock: a
        // stale id would be signalled after its thread is gone.
        THREADS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|t| *t != self.0);
    }
}

extern "C" fn nudged(_: libc::c_int) {}

fn start_nudger() {
    // SAFETY: installs an async-signal-safe (empty) handler; the sigaction
    // struct is fully initialized.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = nudged as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = 0;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(NUDGE_SIGNAL, &action, std::ptr::null_mut());
    }
    std::thread::Builder::new()
        .name("glommio-nudger".into())
        .spawn(|| loop {
            std::thread::sleep(NUDGE_INTERVAL);
            let threads = THREADS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for thread in threads.iter() {
                // SAFETY: a thread removes itself (under this lock) before
                // it exits, so every id here is a live thread's.
                unsafe { libc::pthread_kill(*thread, NUDGE_SIGNAL) };
            }
        })
        .expect("start the nudger thread");
}

/// Interrupts the calling thread every `NUDGE_INTERVAL` until it exits.
/// Calling it again on the same thread does nothing more.
pub fn nudge_this_thread() {
    NUDGER.get_or_init(start_nudger);
    REGISTERED.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            THREADS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(me);
            *slot = Some(Registered(me));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_registered_while_it_runs() {
        let id = std::thread::spawn(|| {
            nudge_this_thread();
            nudge_this_thread();
            // SAFETY: no preconditions.
            let me = unsafe { libc::pthread_self() };
            let registered = THREADS.lock().unwrap().iter().filter(|t| **t == me).count();
            assert_eq!(registered, 1);
            // Nudged meanwhile: the signal interrupts the sleep, which std
            // resumes; the thread lives on.
            std::thread::sleep(Duration::from_millis(20));
            me
        })
        .join()
        .unwrap();
        assert!(!THREADS.lock().unwrap().contains(&id), "deregistered as it exited");
    }
}
