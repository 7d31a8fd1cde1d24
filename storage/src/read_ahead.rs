//! Read-ahead for readers of a partition log's on-disk bytes.
//!
//! O_DIRECT reads skip the page cache, so nothing reads ahead of a consumer
//! but the log itself. A read from disk that no stream covers becomes a
//! stream: the next `read_ahead_bytes` of the same segment are read at once,
//! in chunks of `READ_AHEAD_CHUNK_BYTES` (or half of `read_ahead_bytes`, if
//! less), several in flight, and each later
//! read inside the stream is served from them (a slice, not a copy) while the
//! stream tops itself up behind it. A reader that jumps elsewhere starts a
//! new stream; the least recently used of `READ_AHEAD_STREAMS_MAX` goes.
//!
//! What a stream holds is bounded per reader (`LogConfig::read_ahead_bytes`)
//! and per executor thread, which is a shard (`set_thread_budget`): past the
//! thread's budget a stream issues nothing more and readers read as before.
//!
//! A chunk covers only bytes that are final on disk: a sealed segment up to
//! its end, the active segment up to where its write buffers begin (the
//! block a flush rewrote lies above). Truncation and segment deletion drop
//! the streams they touch.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use futures::future::{FutureExt, Shared};
use glommio::io::{DmaFile, ReadResult};

use crate::config::BLOCK_BYTES;
use crate::offset::Offset;
use crate::segment::align_down;

/// One read-ahead read's size: as large as the raw read benchmark's reads
/// that reach the disk's bandwidth with a few in flight.
pub const READ_AHEAD_CHUNK_BYTES: usize = 2 << 20;
/// Streams (readers reading from disk at once) kept per partition log.
pub const READ_AHEAD_STREAMS_MAX: usize = 8;
/// The per-thread budget before `set_thread_budget` is called.
pub const READ_AHEAD_THREAD_BYTES_DEFAULT: usize = 256 << 20;

/// A stream unused this long gives its chunks back when a reader of any
/// log on the thread finds the budget spent: a reader that went away must
/// not hold the shard's read-ahead.
pub const READ_AHEAD_IDLE: Duration = Duration::from_secs(1);

thread_local! {
    static BUDGET: Cell<usize> = const { Cell::new(READ_AHEAD_THREAD_BYTES_DEFAULT) };
    static IN_USE: Cell<usize> = const { Cell::new(0) };
    /// Chunk reads handed to the disk and not yet done, and the most at once.
    static IN_FLIGHT: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    /// The read-ahead of every log open on this thread, for `reclaim_idle`.
    static LOGS: RefCell<Vec<Weak<RefCell<ReadAhead>>>> = const { RefCell::new(Vec::new()) };
}

/// Makes a log's read-ahead known to the thread, so that its idle streams
/// can be reclaimed for readers of other logs.
pub(crate) fn register(read_ahead: &Rc<RefCell<ReadAhead>>) {
    LOGS.with(|logs| {
        let mut logs = logs.borrow_mut();
        logs.retain(|log| log.strong_count() > 0);
        logs.push(Rc::downgrade(read_ahead));
    });
}

/// Drops the chunks of every stream on this thread idle since before
/// `idle_before` (except in the log being read, whose state is borrowed:
/// its own streams are replaced by recency). Returns the bytes freed.
fn reclaim_idle(idle_before: Instant) -> usize {
    let before = IN_USE.with(|u| u.get());
    LOGS.with(|logs| {
        let mut logs = logs.borrow_mut();
        logs.retain(|log| log.strong_count() > 0);
        for log in logs.iter().filter_map(Weak::upgrade) {
            let Ok(mut read_ahead) = log.try_borrow_mut() else {
                continue;
            };
            for stream in read_ahead.streams.iter_mut().filter(|s| s.last_used_at < idle_before) {
                stream.chunks.clear();
            }
        }
    });
    before - IN_USE.with(|u| u.get())
}

/// Bounds the bytes all read-ahead on this thread (a shard) holds at once.
pub fn set_thread_budget(bytes: usize) {
    BUDGET.with(|b| b.set(bytes));
}

/// Bytes of read-ahead this thread holds now (issued or ready, not yet
/// dropped).
pub fn thread_bytes_in_use() -> usize {
    IN_USE.with(|u| u.get())
}

/// Read-ahead reads this thread has in flight now, and the most it had at
/// once.
pub fn thread_reads_in_flight() -> (usize, usize) {
    IN_FLIGHT.with(|f| f.get())
}

/// Counts a chunk read in flight for as long as it lives (done, failed or
/// dropped unread).
struct InFlightRead;

impl InFlightRead {
    fn start() -> InFlightRead {
        IN_FLIGHT.with(|f| {
            let (now, most) = f.get();
            f.set((now + 1, most.max(now + 1)));
        });
        InFlightRead
    }
}

impl Drop for InFlightRead {
    fn drop(&mut self) {
        IN_FLIGHT.with(|f| {
            let (now, most) = f.get();
            f.set((now - 1, most));
        });
    }
}

/// A chunk read's result, awaitable by every reader it serves. The error is
/// shared, so it is kept as text (it goes into a `StorageError` either way).
pub(crate) type ChunkRead = Shared<futures::future::LocalBoxFuture<'static, Result<ReadResult, Rc<String>>>>;

struct Chunk {
    /// Where its read starts (block aligned).
    start: u64,
    /// Bytes from `start` that the chunk serves: final on disk, and ending
    /// where a batch starts when the index knows one (the read may return
    /// more).
    len: usize,
    read: ChunkRead,
}

impl Chunk {
    fn end(&self) -> u64 {
        self.start + self.len as u64
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        IN_USE.with(|u| u.set(u.get() - self.len));
    }
}

struct Stream {
    base: Offset,
    file: Rc<DmaFile>,
    chunks: VecDeque<Chunk>,
    /// Where the next chunk's bytes start (a batch start, or where the last
    /// chunk had to end).
    next: u64,
    last_used: u64,
    last_used_at: Instant,
}

/// The read-ahead streams of one partition log.
pub(crate) struct ReadAhead {
    /// The log's id in the thread's batch cache, which keeps the chunks
    /// read already.
    log: u64,
    streams: Vec<Stream>,
    clock: u64,
}

/// What a read found in a stream: the chunk holding its start, and the one
/// after it (for a batch that straddles the two).
pub(crate) struct Hit {
    pub chunk_start: u64,
    pub chunk_len: usize,
    pub read: ChunkRead,
    pub next: Option<(u64, usize, ChunkRead)>,
}

/// Counters of what read-ahead did.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadAheadStats {
    /// Reads served from a stream.
    pub hits: u64,
    /// Reads from disk no stream covered (each starts one).
    pub misses: u64,
    /// Chunk reads issued, and their bytes.
    pub chunks: u64,
    pub chunk_bytes: u64,
    /// Chunks a stream dropped unread (the reader jumped or went away).
    pub wasted_chunks: u64,
    /// Reads whose first batch straddled two chunks, joined by a copy.
    pub joined: u64,
    /// Reads a stream held but could not serve (a batch larger than two
    /// chunks), read directly.
    pub bypassed: u64,
}

impl ReadAhead {
    pub(crate) fn new(log: u64) -> ReadAhead {
        ReadAhead {
            log,
            streams: Vec::new(),
            clock: 0,
        }
    }

    /// The stream chunk holding `start` of segment `base`; chunks wholly
    /// before it are dropped (read already: the batch cache may keep them
    /// for other readers).
    pub(crate) fn lookup(&mut self, base: Offset, start: u64) -> Option<Hit> {
        self.clock += 1;
        let clock = self.clock;
        // A stream holds `[first chunk's start, next)`, or is about to
        // read at `next` (its reader has read all it held).
        let stream = self.streams.iter_mut().find(|s| {
            let from = s.chunks.front().map_or(s.next, |c| c.start);
            s.base == base && from <= start && start <= s.next
        })?;
        stream.last_used = clock;
        stream.last_used_at = Instant::now();
        while stream.chunks.front().is_some_and(|c| c.end() <= start) {
            let read = stream.chunks.pop_front().expect("checked");
            if let Some(Ok(bytes)) = read.read.peek() {
                crate::batch_cache::insert_read(self.log, base, read.start, read.len, bytes.clone(), false);
            }
        }
        let mut chunks = stream.chunks.iter();
        let chunk = chunks.next()?;
        debug_assert!(chunk.start <= start && start < chunk.end());
        Some(Hit {
            chunk_start: chunk.start,
            chunk_len: chunk.len,
            read: chunk.read.clone(),
            next: chunks.next().map(|c| (c.start, c.len, c.read.clone())),
        })
    }

    /// Starts a stream at `from` of segment `base` (replacing one that ends
    /// there, or the least recently used).
    pub(crate) fn start(&mut self, base: Offset, file: Rc<DmaFile>, from: u64, stats: &mut ReadAheadStats) {
        self.clock += 1;
        let stream = Stream {
            base,
            file,
            chunks: VecDeque::new(),
            next: from,
            last_used: self.clock,
            last_used_at: Instant::now(),
        };
        if let Some(i) = self.streams.iter().position(|s| s.base == base && s.next == from) {
            stats.wasted_chunks += self.streams[i].chunks.len() as u64;
            self.streams[i] = stream;
        } else if self.streams.len() < READ_AHEAD_STREAMS_MAX {
            self.streams.push(stream);
        } else {
            let oldest = (0..self.streams.len())
                .min_by_key(|i| self.streams[*i].last_used)
                .expect("streams are full");
            stats.wasted_chunks += self.streams[oldest].chunks.len() as u64;
            self.streams[oldest] = stream;
        }
    }

    /// Issues chunk reads on every stream of segment `base` until each holds
    /// `ahead` bytes, none reaching past `limit` (where the segment's final
    /// bytes on disk end; a batch ends there if `limit_is_batch_end`),
    /// within this thread's budget. A chunk ends where
    /// `batch_start_in(after, at_most)` says a batch starts, so that batches
    /// rarely straddle two chunks.
    pub(crate) fn top_up(
        &mut self,
        base: Offset,
        limit: u64,
        limit_is_batch_end: bool,
        ahead: usize,
        batch_start_in: impl Fn(u64, u64) -> Option<u64>,
        stats: &mut ReadAheadStats,
    ) {
        for stream in self.streams.iter_mut().filter(|s| s.base == base) {
            loop {
                let held: usize = stream.chunks.iter().map(|c| c.len).sum();
                if held >= ahead || stream.next >= limit {
                    break;
                }
                // At least two chunks in flight, whatever the distance.
                let chunk = READ_AHEAD_CHUNK_BYTES.min(align_down(ahead as u64 / 2).max(BLOCK_BYTES as u64) as usize);
                let target = (stream.next + chunk as u64).min(limit);
                let end = if target == limit && limit_is_batch_end {
                    limit
                } else {
                    batch_start_in(stream.next, target).unwrap_or(target)
                };
                let start = align_down(stream.next);
                let len = (end - start) as usize;
                let budget = BUDGET.with(|b| b.get());
                if IN_USE.with(|u| u.get()) + len > budget
                    && (reclaim_idle(Instant::now() - READ_AHEAD_IDLE) == 0 || IN_USE.with(|u| u.get()) + len > budget)
                {
                    break;
                }
                IN_USE.with(|u| u.set(u.get() + len));
                let file = stream.file.clone();
                let aligned = len.next_multiple_of(BLOCK_BYTES);
                let in_flight = InFlightRead::start();
                let read = glommio::spawn_local(async move {
                    let _in_flight = in_flight;
                    file.read_at_aligned(start, aligned)
                        .await
                        .map_err(|e| Rc::new(e.to_string()))
                })
                .boxed_local()
                .shared();
                stream.chunks.push_back(Chunk { start, len, read });
                stream.next = end;
                stats.chunks += 1;
                stats.chunk_bytes += len as u64;
            }
        }
    }

    /// Drops the streams of segment `base` (deleted, or cut).
    pub(crate) fn forget_segment(&mut self, base: Offset, stats: &mut ReadAheadStats) {
        self.streams.retain(|s| {
            let keep = s.base != base;
            if !keep {
                stats.wasted_chunks += s.chunks.len() as u64;
            }
            keep
        });
    }

    pub(crate) fn clear(&mut self) {
        self.streams.clear();
    }
}
