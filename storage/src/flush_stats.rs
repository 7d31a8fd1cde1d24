//! What the flushes of this thread's logs cost (a shard's, since a shard
//! owns its logs): latency histograms of their fdatasyncs and of whole
//! flushes, and how many fdatasyncs ran at once. Kept per thread, as the
//! batch cache is, so recording takes no lock; a log's own `LogStats` keep
//! sums and maxima, which die with the log, while these show the
//! distribution across all of them, the thing an acks=all tail is made of.

use std::cell::RefCell;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Longest latency recorded as itself (µs); longer ones count as this.
const LATENCY_MAX_US: u64 = 60_000_000;

#[derive(Clone)]
pub struct FlushStats {
    /// fdatasync of a segment by a flush, µs.
    pub sync: Histogram<u64>,
    /// A whole flush, from waiting for the io lock to the end of its
    /// fdatasync, µs.
    pub flush: Histogram<u64>,
    pub syncs_in_flight: u32,
    pub syncs_in_flight_max: u32,
}

impl Default for FlushStats {
    fn default() -> Self {
        let histogram = || Histogram::new_with_max(LATENCY_MAX_US, 3).expect("valid histogram bounds");
        FlushStats {
            sync: histogram(),
            flush: histogram(),
            syncs_in_flight: 0,
            syncs_in_flight_max: 0,
        }
    }
}

thread_local! {
    static STATS: RefCell<FlushStats> = RefCell::new(FlushStats::default());
}

/// A copy of this thread's figures.
pub fn thread_stats() -> FlushStats {
    STATS.with(|s| s.borrow().clone())
}

/// Counts an fdatasync in flight until the returned guard drops.
pub(crate) fn sync_started() -> SyncInFlight {
    STATS.with(|s| {
        let mut s = s.borrow_mut();
        s.syncs_in_flight += 1;
        s.syncs_in_flight_max = s.syncs_in_flight_max.max(s.syncs_in_flight);
    });
    SyncInFlight
}

pub(crate) fn record(sync: Duration, flush: Duration) {
    let us = |d: Duration| (d.as_micros() as u64).clamp(1, LATENCY_MAX_US);
    STATS.with(|s| {
        let mut s = s.borrow_mut();
        s.sync.saturating_record(us(sync));
        s.flush.saturating_record(us(flush));
    });
}

pub(crate) struct SyncInFlight;

impl Drop for SyncInFlight {
    fn drop(&mut self) {
        STATS.with(|s| s.borrow_mut().syncs_in_flight -= 1);
    }
}
