//! The partition log: one partition's ordered segments, appended at the end,
//! read by offset or timestamp, flushed with group commit, truncated for
//! replication, and trimmed by retention.
//!
//! A `PartitionLog` lives on the shard (glommio executor) that opened it and
//! is `!Send`. Its handle is cheap to clone; clones share one log, so many
//! tasks of the shard can append and read at once.
//!
//! # Durability
//!
//! `append` returns once the batch is in the active segment's write buffer:
//! readable at once, durable only after a flush. `wait_durable` and `flush`
//! make it durable; all tasks waiting at the same time share one fdatasync
//! (group commit). The flush policy adds automatic flushes. Segments are
//! fully written and synced before the log rolls past them, so only the
//! active segment can have a torn tail after a crash, and recovery cuts it
//! at the last complete, valid batch.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use glommio::io::{DmaBuffer, DmaFile, ReadResult};
use glommio::sync::Semaphore;

use crate::batch::{
    self, check_frame, frame_length, peek_header, verify_crc, BatchInfo, BatchLimits, FRAME_LENGTH_BYTES,
};
use crate::blocking::off_shard;
use crate::config::{FlushPolicy, LogConfig, TimestampType};
use crate::error::{io_error, Result, StorageError};
use crate::index::{relative, OffsetIndex, TimeIndex};
use crate::leader_epoch::{EpochStart, LeaderEpochCache};
use crate::offset::{FilePosition, Offset};
use crate::read_ahead::{ReadAhead, ReadAheadStats};
use crate::recovery::scan_segment;
use crate::segment::{
    parse_segment_name, segment_path, Segment, SegmentAppender, LOG_SUFFIX, OFFSET_INDEX_SUFFIX, TIME_INDEX_SUFFIX,
};

/// Bytes read at a time while looking for a batch from an index position.
const SEEK_CHUNK_BYTES: usize = 64 << 10;

/// Name of the file that remembers a log start offset moved by
/// `delete_records_before` past the first segment's base offset.
const LOG_START_CHECKPOINT: &str = "log-start-offset";

/// Name of the file holding the leader epoch cache (`leader_epoch`).
const LEADER_EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";

/// Name of the file naming the batch format the segments are written in, and
/// that format. Format 2 added the leader epoch and Raft index to the batch
/// header; a log of another format is refused at open, never scanned: its
/// batches would read as damage, and recovery cuts damage away.
const LOG_FORMAT_FILE: &str = "log-format";
pub const LOG_FORMAT: u32 = 2;

/// Where a log gets the time: wall-clock ms since the epoch, or a test's clock.
pub type Clock = Rc<dyn Fn() -> i64>;

pub fn system_clock() -> Clock {
    Rc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    })
}

/// How an append sets a batch's leader epoch and Raft index (see
/// `leader_epoch` for what the epochs are for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamp {
    /// A partition that is not replicated: the log's latest epoch (0 for a
    /// log that never had one) and no Raft index.
    Local,
    /// A leader's append: its epoch, never older than the last batch's, and
    /// the batch's index in the partition's Raft log.
    Leader { leader_epoch: i32, raft_index: u64 },
    /// A follower's append of a batch its leader stamped: stored as it came,
    /// base offset and append time included; the base offset must be this
    /// log's end.
    Replica,
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub append_time_ms: i64,
    /// Position of the batch in its segment.
    pub position: FilePosition,
    pub segment_base_offset: Offset,
}

/// Bytes of whole batch frames, laid end to end: from the disk (no copy),
/// from a segment write buffer sealed for its write or kept by the batch
/// cache (no copy), or from the active segment's unsealed buffer (copied
/// once).
#[derive(Debug)]
pub enum ReadBytes {
    Disk(ReadResult),
    Buffer {
        buffer: Rc<DmaBuffer>,
        start: usize,
        end: usize,
    },
    /// From a batch cache arena (the bytes of write buffers a flush sealed
    /// with little in them, gathered).
    Arena {
        arena: Rc<crate::batch_cache::Arena>,
        start: usize,
        end: usize,
    },
    Memory {
        bytes: Rc<Vec<u8>>,
        start: usize,
        end: usize,
        /// Copied from disk reads (a batch joined across two read-ahead
        /// chunks): its crc is checked like a disk read's.
        from_disk: bool,
    },
}

impl ReadBytes {
    /// No bytes.
    pub fn empty() -> ReadBytes {
        ReadBytes::Memory {
            bytes: Rc::new(Vec::new()),
            start: 0,
            end: 0,
            from_disk: false,
        }
    }

    fn slice(&self, from: usize, len: usize) -> ReadBytes {
        assert!(from + len <= self.len());
        match self {
            ReadBytes::Disk(r) => ReadBytes::Disk(ReadResult::slice(r, from, len).expect("slice within bounds")),
            ReadBytes::Buffer { buffer, start, .. } => ReadBytes::Buffer {
                buffer: buffer.clone(),
                start: start + from,
                end: start + from + len,
            },
            ReadBytes::Arena { arena, start, .. } => ReadBytes::Arena {
                arena: arena.clone(),
                start: start + from,
                end: start + from + len,
            },
            ReadBytes::Memory {
                bytes,
                start,
                from_disk,
                ..
            } => ReadBytes::Memory {
                bytes: bytes.clone(),
                start: start + from,
                end: start + from + len,
                from_disk: *from_disk,
            },
        }
    }

    /// The first `len` bytes, sharing the buffer.
    pub fn prefix(&self, len: usize) -> ReadBytes {
        self.slice(0, len)
    }

    fn is_from_disk(&self) -> bool {
        matches!(self, ReadBytes::Disk(_) | ReadBytes::Memory { from_disk: true, .. })
    }
}

impl Deref for ReadBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ReadBytes::Disk(r) => r,
            ReadBytes::Buffer { buffer, start, end } => &buffer.allocated_bytes()[*start..*end],
            ReadBytes::Arena { arena, start, end } => &arena.bytes()[*start..*end],
            ReadBytes::Memory { bytes, start, end, .. } => &bytes[*start..*end],
        }
    }
}

/// The result of a read: whole batches starting with the one that holds the
/// requested offset (it may begin before it, as Kafka's do).
#[derive(Debug)]
pub struct LogRead {
    pub bytes: ReadBytes,
    /// The offset after the last batch returned: where the next read starts.
    pub next_offset: Offset,
    pub log_start_offset: Offset,
    pub log_end_offset: Offset,
}

struct State {
    segments: BTreeMap<Offset, Segment>,
    /// Appender of the last segment; None once the log is closed.
    appender: Option<SegmentAppender>,
    log_start_offset: Offset,
    /// The log end offset: the offset the next record gets.
    next_offset: Offset,
    /// Every offset below this is durable.
    durable_offset: Offset,
    /// Bytes appended since the last flush began.
    unflushed_bytes: u64,
    /// Sealed segments with an open read handle, least recently used first.
    open_reads: VecDeque<Offset>,
    /// The write of a sealed buffer, running while appends fill the next
    /// one: the write, its length, and the base offset of its segment.
    pending_write: Option<(PendingWrite, usize, Offset)>,
    /// Flushes started by `wait_durable` and not yet ended (at most
    /// `FLUSHES_IN_FLIGHT_MAX`), and how many of them have not yet taken
    /// their target: such a flush covers everything appended so far.
    flushes_in_flight: u32,
    flushes_untargeted: u32,
    /// The highest target of the flushes in flight that have taken one.
    flush_target_max: Offset,
    /// Tasks waiting for a flush to end, to look again.
    flush_waiters: Vec<futures::channel::oneshot::Sender<()>>,
    /// Readers waiting for the log end to move (long-polling consumers).
    data_waiters: Vec<futures::channel::oneshot::Sender<()>>,
    /// Whether the log is flushed often enough to zero ahead of its writes
    /// (see `LogConfig::segment_zero_ahead_bytes`), decided again after every
    /// `ZERO_AHEAD_DECISION_BYTES` appended from the bytes and flushes since.
    zero_ahead: bool,
    decision_bytes: u64,
    decision_flushes: u64,
    /// The zero write running ahead of the active segment's writes.
    zeroing: Option<Zeroing>,
    /// Zeros the zero writes write, allocated once the log first zeroes.
    zero_buffer: Option<Rc<DmaBuffer>>,
    /// Shared with the thread's registry (`read_ahead::register`), which
    /// reclaims idle streams for other logs' readers.
    read_ahead: Rc<RefCell<ReadAhead>>,
    /// Counts truncations and segment deletions: a read from disk that
    /// began before one may hold bytes no longer in the log, and is not
    /// given to the batch cache.
    cut_epoch: u64,
    /// Where each leader epoch's batches start.
    leader_epochs: LeaderEpochCache,
    /// An epoch start the checkpoint file holds ahead of `leader_epochs`:
    /// written before the epoch's first batch is appended, so a crash never
    /// leaves a batch of an epoch the file does not name.
    epoch_written: Option<EpochStart>,
    stats: LogStats,
    failed: bool,
    closed: bool,
}

/// A zero write of `[from, end)` of the active segment and the fdatasync
/// after it, running as its own task so that both go to the disk while the
/// log goes on appending.
struct Zeroing {
    task: glommio::Task<std::io::Result<()>>,
    from: u64,
    end: u64,
}

/// A log whose flushes each covered at most this many appended bytes on
/// average (over the last `ZERO_AHEAD_DECISION_BYTES`) is flushed often: it
/// zeroes ahead. Past it, the fdatasyncs saved cost less than the zeros.
/// Flushes of one log whose fdatasyncs may run at once. A flush holds the
/// io lock only for its write; its fdatasync runs after the lock is let go,
/// so the next flush writes while the last one syncs, and an acks=all batch
/// waits for its own write and sync, not for the sync before it as well.
/// An fdatasync makes durable every write completed before it was called,
/// whichever ends first, so flushes may end in any order.
pub const FLUSHES_IN_FLIGHT_MAX: u32 = 4;

const ZERO_AHEAD_FLUSH_BYTES_MAX: u64 = 256 << 10;
const ZERO_AHEAD_DECISION_BYTES: u64 = 4 << 20;
/// The size of one zero write (or the zero-ahead distance, if smaller).
const ZERO_WRITE_BYTES: u64 = 1 << 20;

/// What a read found in the read-ahead streams.
enum AheadRead {
    Served(ReadBytes),
    /// A stream holds the start, but not the first batch whole (a batch
    /// larger than two chunks, or one running past the chunks issued so
    /// far): read it directly, and keep the stream for the reads after it.
    Bypass,
    NoStream,
}

/// A segment write handed to io_uring, awaited later.
type PendingWrite = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<usize>>>>;

/// Counters of what the log did, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogStats {
    /// fdatasync calls on segment files made by flushes.
    pub flushes: u64,
    /// O_DIRECT writes of sealed buffers.
    pub writes: u64,
    pub bytes_written: u64,
    /// Time spent waiting for segment writes to finish.
    pub write_wait: Duration,
    pub rolls: u64,
    /// The longest a roll held the log's appends.
    pub roll_time_max: Duration,
    /// The most flushes of `wait_durable` in flight at once (one writing
    /// while others sync; at most `FLUSHES_IN_FLIGHT_MAX`).
    pub flushes_in_flight_max: u32,
    /// Time flushes spent in fdatasync, and the longest one: against the
    /// disk's own fdatasync latency, what a flush adds around it.
    pub sync_time: Duration,
    pub sync_time_max: Duration,
    /// Time flushes spent from taking the io lock to the end of their
    /// fdatasync (the padded write of the buffer's tail, then the sync).
    pub flush_time: Duration,
    /// Bytes of active segments written with zeros ahead of their writes.
    pub zeroed_bytes: u64,
    /// Bytes read from disk by reads no read-ahead stream covered.
    pub disk_read_bytes: u64,
    pub read_ahead: ReadAheadStats,
}

impl State {
    fn usable(&self, dir: &Path) -> Result<()> {
        if self.failed {
            return Err(StorageError::LogFailed {
                path: dir.to_path_buf(),
            });
        }
        if self.closed {
            return Err(StorageError::LogClosed {
                path: dir.to_path_buf(),
            });
        }
        Ok(())
    }

    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn appender(&self) -> &SegmentAppender {
        self.appender.as_ref().expect("an open log has an appender")
    }

    fn appender_mut(&mut self) -> &mut SegmentAppender {
        self.appender.as_mut().expect("an open log has an appender")
    }

    fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }
}

/// Why an append could not be done without first doing I/O.
enum NeedsIo {
    Roll { active_base: Offset },
    Room { bytes: usize },
    NewEpoch(EpochStart),
}

struct Inner {
    /// The log's name in the thread's batch cache.
    id: u64,
    dir: PathBuf,
    /// Swapped whole by `set_config` (a topic's configs changed live);
    /// each use takes the one in force then.
    config: RefCell<Rc<LogConfig>>,
    limits: Cell<BatchLimits>,
    /// Bumped whenever the flush policy changes: an interval flusher
    /// started under an older one stops.
    flusher_generation: Cell<u64>,
    /// The largest write buffer any setting asked for since the log
    /// opened: each new segment's buffer is this size, so that a batch a
    /// buffer took before a setting shrank still fits the next.
    write_buffer_bytes: Cell<usize>,
    clock: Clock,
    /// Serializes everything that writes, syncs or changes the set of
    /// segments: buffer writes, flushes, rolls, truncation, deletion.
    io_lock: Semaphore,
    state: RefCell<State>,
}

#[path = "log_clean.rs"]
mod clean;

/// Times a read that raced the cleaner's swap of its segment looks again.
const READ_TRIES_MAX: usize = 8;
pub use clean::{CleanStats, SegmentStat, CLEAN_MAP_BYTES_MAX};

impl Inner {
    fn config(&self) -> Rc<LogConfig> {
        self.config.borrow().clone()
    }

    /// The settings a new active segment opens with: those in force, with
    /// the largest write buffer asked for since the log opened.
    fn segment_config(&self) -> LogConfig {
        LogConfig {
            write_buffer_bytes: self.write_buffer_bytes.get(),
            ..LogConfig::clone(&self.config())
        }
    }
}

/// One partition's log. See the module docs.
#[derive(Clone)]
pub struct PartitionLog {
    inner: Rc<Inner>,
}

impl PartitionLog {
    /// Opens the log in `dir`, creating it if needed, and recovers it: the
    /// active segment is checked batch by batch and cut at a torn or corrupt
    /// tail; a sealed segment's missing or damaged index is rebuilt from its
    /// log, and a corrupt batch found in a sealed segment fails the open.
    pub async fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<PartitionLog> {
        Self::open_with_clock(dir, config, system_clock()).await
    }

    pub async fn open_with_clock(dir: impl AsRef<Path>, config: LogConfig, clock: Clock) -> Result<PartitionLog> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| io_error("create log directory", &dir, e))?;
        crate::device::prime_iopoll_probe(&dir).await?;
        clean::finish_swaps(&dir)?;
        let bases = list_segments(&dir)?;
        check_log_format(&dir, !bases.is_empty()).await?;
        let checkpoint = read_log_start_checkpoint(&dir)?;
        let mut leader_epochs = read_leader_epoch_checkpoint(&dir)?;

        let mut segments = BTreeMap::new();
        for (i, &base) in bases.iter().enumerate() {
            if let Some(&next) = bases.get(i + 1) {
                let segment = open_sealed_segment(&dir, base, next, &config).await?;
                segments.insert(base, segment);
            }
        }
        let active_base = bases.last().copied().unwrap_or(checkpoint.unwrap_or(Offset(0)));
        let (active, appender) = recover_active_segment(&dir, active_base, &config).await?;
        if let Some((&last_base, last)) = segments.iter().next_back() {
            if last.next_offset != active_base {
                return Err(StorageError::InvalidLogDir {
                    path: dir,
                    reason: format!(
                        "segment {last_base} ends at offset {} but the next segment starts at {active_base}",
                        last.next_offset
                    ),
                });
            }
        }
        let next_offset = active.next_offset;
        segments.insert(active_base, active);
        sync_dir(&dir).await?;

        let first_base = *segments.keys().next().expect("at least the active segment");
        let log_start_offset = checkpoint.unwrap_or(first_base).max(first_base).min(next_offset);
        // Epochs written ahead of a batch a crash lost, or past a cut the
        // file was not yet rewritten for, name nothing in the log. The file
        // catches up at the next change.
        leader_epochs.truncate_from_end(next_offset);
        leader_epochs.truncate_from_start(log_start_offset);
        tracing::debug!(dir = %dir.display(), segments = segments.len(), %log_start_offset, log_end_offset = %next_offset, "recovered partition log");

        let id = crate::batch_cache::new_log_id();
        let inner = Rc::new(Inner {
            id,
            limits: Cell::new(config.batch_limits()),
            write_buffer_bytes: Cell::new(config.write_buffer_bytes),
            config: RefCell::new(Rc::new(config)),
            flusher_generation: Cell::new(0),
            dir,
            clock,
            io_lock: Semaphore::new(1),
            state: RefCell::new(State {
                segments,
                appender: Some(appender),
                log_start_offset,
                next_offset,
                // Recovery synced the active segment: all that is there is durable.
                durable_offset: next_offset,
                unflushed_bytes: 0,
                open_reads: VecDeque::new(),
                pending_write: None,
                flushes_in_flight: 0,
                flushes_untargeted: 0,
                flush_target_max: Offset(0),
                flush_waiters: Vec::new(),
                data_waiters: Vec::new(),
                zero_ahead: false,
                decision_bytes: 0,
                decision_flushes: 0,
                zeroing: None,
                zero_buffer: None,
                read_ahead: Rc::new(RefCell::new(ReadAhead::new(id))),
                cut_epoch: 0,
                leader_epochs,
                epoch_written: None,
                stats: LogStats::default(),
                failed: false,
                closed: false,
            }),
        });
        crate::read_ahead::register(&inner.state.borrow().read_ahead);
        if let FlushPolicy::IntervalMs(ms) = inner.config().flush {
            spawn_interval_flusher(Rc::downgrade(&inner), Duration::from_millis(ms), 0);
        }
        Ok(PartitionLog { inner })
    }

    /// Puts new settings in force (a topic's configs altered live). What
    /// reads them reads them at each use: the next append is checked
    /// against the new limits, the next roll, retention pass and read-ahead
    /// use the new sizes. A write buffer too small for the new largest
    /// batch grows now, under the io lock; a flush interval restarts.
    pub async fn set_config(&self, config: LogConfig) -> Result<()> {
        config.validate()?;
        let _permit = self.lock().await?;
        let old = self.inner.config();
        {
            let mut st = self.inner.state.borrow_mut();
            st.usable(&self.inner.dir)?;
            st.appender_mut().grow_buffer(config.write_buffer_bytes);
        }
        let buffer = self.inner.write_buffer_bytes.get().max(config.write_buffer_bytes);
        self.inner.write_buffer_bytes.set(buffer);
        self.inner.limits.set(config.batch_limits());
        let flush = config.flush;
        *self.inner.config.borrow_mut() = Rc::new(config);
        if flush != old.flush {
            let generation = self.inner.flusher_generation.get() + 1;
            self.inner.flusher_generation.set(generation);
            if let FlushPolicy::IntervalMs(ms) = flush {
                spawn_interval_flusher(Rc::downgrade(&self.inner), Duration::from_millis(ms), generation);
            }
        }
        tracing::debug!(dir = %self.inner.dir.display(), "partition log settings changed");
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The settings in force now.
    pub fn config(&self) -> Rc<LogConfig> {
        self.inner.config()
    }

    pub fn log_start_offset(&self) -> Offset {
        self.inner.state.borrow().log_start_offset
    }

    /// The offset the next record will get.
    pub fn log_end_offset(&self) -> Offset {
        self.inner.state.borrow().next_offset
    }

    /// Every offset below this is durable on disk.
    pub fn durable_offset(&self) -> Offset {
        self.inner.state.borrow().durable_offset
    }

    pub fn size_bytes(&self) -> u64 {
        self.inner.state.borrow().size_bytes()
    }

    /// Sealed segments whose files are open for reads now (at most
    /// `open_segments_max`).
    pub fn open_segment_files(&self) -> usize {
        self.inner.state.borrow().open_reads.len()
    }

    pub fn stats(&self) -> LogStats {
        self.inner.state.borrow().stats
    }

    /// Base offsets of the segments, oldest first; the last is the active one.
    pub fn segment_base_offsets(&self) -> Vec<Offset> {
        self.inner.state.borrow().segments.keys().copied().collect()
    }

    /// Each leader epoch of the log and where its batches start, oldest first.
    pub fn leader_epochs(&self) -> Vec<EpochStart> {
        self.inner.state.borrow().leader_epochs.entries().to_vec()
    }

    /// The epoch of the log's last batch (None before any): what a
    /// partition that is not replicated answers as its current epoch, on
    /// every fetch that names one, so it copies nothing.
    pub fn latest_leader_epoch(&self) -> Option<i32> {
        self.inner.state.borrow().leader_epochs.latest().map(|e| e.epoch)
    }

    /// The leader epoch of the batch holding `offset`, or None where no
    /// epoch names it (a log of no batches, an offset before the first).
    pub fn leader_epoch_at(&self, offset: Offset) -> Option<i32> {
        self.inner.state.borrow().leader_epochs.epoch_at(offset)
    }

    /// OffsetForLeaderEpoch: the largest epoch at or below `epoch` and the
    /// offset its batches end at (where the next epoch starts, or the log end).
    pub fn end_offset_for_leader_epoch(&self, epoch: i32) -> Option<(i32, Offset)> {
        let st = self.inner.state.borrow();
        st.leader_epochs.end_offset_for(epoch, st.next_offset)
    }

    /// Appends one record batch frame of a partition that is not replicated
    /// (`Stamp::Local`). The frame is checked (limits, rkyv validation,
    /// crc32c, header against records) before anything changes; the log then
    /// copies it into the active segment's buffer and stamps its base offset
    /// and append time there. Returns when the batch is readable; it is
    /// durable once the flush policy or `wait_durable` says so.
    pub async fn append(&self, frame: &[u8]) -> Result<AppendInfo> {
        self.append_stamped(frame, Stamp::Local).await
    }

    /// Appends as `append` does, stamping the leader epoch and Raft index as
    /// `stamp` says. The first batch of a new epoch waits for the epoch's
    /// start to be written to the leader epoch checkpoint.
    ///
    /// A replica's batch (`Stamp::Replica`) was checked against the topic's
    /// limits by its leader; here it need only fit the write buffer, which
    /// never shrinks while the log is open: a follower whose topic's limit
    /// was lowered after its leader took the batch still stores it.
    pub async fn append_stamped(&self, frame: &[u8], stamp: Stamp) -> Result<AppendInfo> {
        let limits = match stamp {
            Stamp::Replica => {
                let fits = self.inner.write_buffer_bytes.get() - crate::config::BLOCK_BYTES;
                BatchLimits {
                    compacted_allowed: true,
                    ..BatchLimits::sized(fits, fits)
                }
            }
            Stamp::Local | Stamp::Leader { .. } => self.inner.limits.get(),
        };
        let info = check_frame(frame, &limits)?;
        let appended = loop {
            let now_ms = (self.inner.clock)();
            let needs = match self.try_append(frame, &info, now_ms, stamp) {
                Ok(appended) => break appended,
                Err(needs) => needs?,
            };
            let _permit = self.lock().await?;
            match needs {
                NeedsIo::Roll { active_base } => self.roll_locked(active_base).await?,
                NeedsIo::Room { bytes } => self.make_room_locked(bytes).await?,
                NeedsIo::NewEpoch(start) => self.write_new_epoch_locked(start).await?,
            }
        };
        match self.inner.config().flush {
            FlushPolicy::EveryAppend => self.wait_durable(appended.last_offset).await?,
            FlushPolicy::Bytes(bytes) => {
                let unflushed = self.inner.state.borrow().unflushed_bytes;
                if unflushed >= bytes {
                    self.wait_durable(appended.last_offset).await?;
                }
            }
            FlushPolicy::IntervalMs(_) | FlushPolicy::Manual => {}
        }
        Ok(appended)
    }

    /// The synchronous heart of an append: no await, so appends are ordered
    /// by the order in which tasks reach it.
    fn try_append(
        &self,
        frame: &[u8],
        info: &BatchInfo,
        now_ms: i64,
        stamp: Stamp,
    ) -> Result<AppendInfo, Result<NeedsIo>> {
        let config = self.inner.config();
        let mut st = self.inner.state.borrow_mut();
        st.usable(&self.inner.dir).map_err(Err)?;
        let refused = |reason: String| {
            Err(StorageError::AppendRefused {
                path: self.inner.dir.clone(),
                reason,
            })
        };
        let (leader_epoch, raft_index) = match stamp {
            Stamp::Local => (st.leader_epochs.latest().map_or(0, |e| e.epoch), 0),
            Stamp::Leader {
                leader_epoch,
                raft_index,
            } => (leader_epoch, raft_index),
            Stamp::Replica => {
                if info.base_offset != st.next_offset {
                    return Err(refused(format!(
                        "a replicated batch at offset {} where the log ends at {}",
                        info.base_offset, st.next_offset
                    )));
                }
                (info.leader_epoch, info.raft_index)
            }
        };
        let new_epoch = st.leader_epochs.check(leader_epoch, st.next_offset).map_err(refused)?;
        let epoch_start = EpochStart {
            epoch: leader_epoch,
            start_offset: st.next_offset,
        };
        if new_epoch && st.epoch_written != Some(epoch_start) {
            return Err(Ok(NeedsIo::NewEpoch(epoch_start)));
        }
        let active = st.active();
        let active_base = active.base_offset;
        let too_big = active.size + frame.len() as u64 > config.segment_bytes;
        let too_old = match (config.segment_ms, active.first_append_ms) {
            (Some(max_age), Some(first)) => now_ms.saturating_sub(first) >= max_age as i64,
            _ => false,
        };
        let offsets_left = u64::from(u32::MAX) - (st.next_offset.0 - active_base.0);
        if !active.is_empty() && (too_big || too_old || offsets_left < u64::from(info.record_count)) {
            return Err(Ok(NeedsIo::Roll { active_base }));
        }
        if st.appender().free_bytes() < frame.len() {
            return Err(Ok(NeedsIo::Room { bytes: frame.len() }));
        }
        let base_offset = st.next_offset;
        let (position, stored) = st.appender_mut().append(frame);
        let stamped = if stamp == Stamp::Replica {
            *info
        } else {
            let stamps = batch::Stamps {
                base_offset,
                append_time_ms: now_ms,
                leader_epoch,
                raft_index,
            };
            batch::stamp(stored, info, stamps);
            BatchInfo {
                base_offset,
                append_time_ms: now_ms,
                leader_epoch,
                raft_index,
                ..*info
            }
        };
        if new_epoch {
            st.leader_epochs.assign(leader_epoch, base_offset);
            st.epoch_written = None;
        }
        st.active_mut()
            .note_batch(position, &stamped, config.timestamp_type, config.index_interval_bytes);
        st.unflushed_bytes += frame.len() as u64;
        st.decision_bytes += frame.len() as u64;
        st.next_offset = stamped.next_offset();
        for waiter in st.data_waiters.drain(..) {
            let _ = waiter.send(());
        }
        Ok(AppendInfo {
            base_offset,
            last_offset: stamped.last_offset(),
            append_time_ms: now_ms,
            position,
            segment_base_offset: active_base,
        })
    }

    /// Returns once every offset up to and including `offset` is durable.
    ///
    /// Group commit: a waiting task that no flush in flight covers starts
    /// one; the others wait for a flush to end, then look again. All that
    /// were appended before a flush took its target return together. Up to
    /// `FLUSHES_IN_FLIGHT_MAX` flushes run at once: each holds the io lock
    /// for its write only, so a batch appended while one syncs starts its own
    /// flush instead of queueing behind that sync.
    pub async fn wait_durable(&self, offset: Offset) -> Result<()> {
        loop {
            let waiter = {
                let mut st = self.inner.state.borrow_mut();
                if st.durable_offset > offset {
                    return Ok(());
                }
                st.usable(&self.inner.dir)?;
                let covered = st.flushes_in_flight > 0 && (st.flushes_untargeted > 0 || st.flush_target_max > offset);
                if covered || st.flushes_in_flight >= FLUSHES_IN_FLIGHT_MAX {
                    let (tx, rx) = futures::channel::oneshot::channel();
                    st.flush_waiters.push(tx);
                    Some(rx)
                } else {
                    st.flushes_in_flight += 1;
                    st.flushes_untargeted += 1;
                    st.stats.flushes_in_flight_max = st.stats.flushes_in_flight_max.max(st.flushes_in_flight);
                    None
                }
            };
            match waiter {
                Some(flushed) => {
                    let _ = flushed.await;
                }
                None => {
                    let mut flushing = FlushingGuard {
                        inner: &self.inner,
                        targeted: false,
                    };
                    // Let the tasks that are ready to run (often those woken
                    // by the last flush) append first, so this flush covers
                    // them too instead of leaving them for the next one.
                    glommio::executor().yield_now().await;
                    let written = {
                        let _permit = self.lock().await?;
                        self.write_for_flush_locked(Some(&mut flushing)).await?
                    };
                    self.sync_flush(written).await?;
                }
            }
        }
    }

    /// Waits until the log holds `offset` (its end has moved past it), or
    /// `deadline` passes. Returns whether the data is there: a long poll's
    /// wait, woken by the append rather than by polling.
    pub async fn wait_for_data(&self, offset: Offset, deadline: std::time::Instant) -> bool {
        loop {
            let arrived = {
                let mut st = self.inner.state.borrow_mut();
                if st.next_offset > offset || st.closed || st.failed {
                    return st.next_offset > offset;
                }
                // Waits that timed out leave their senders behind; drop them.
                st.data_waiters.retain(|w| !w.is_canceled());
                let (tx, rx) = futures::channel::oneshot::channel();
                st.data_waiters.push(tx);
                rx
            };
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
                return false;
            };
            let timeout = Box::pin(glommio::timer::sleep(left));
            if let futures::future::Either::Right(_) = futures::future::select(arrived, timeout).await {
                return self.log_end_offset() > offset;
            }
        }
    }

    /// Makes everything appended so far durable; returns the durable offset.
    pub async fn flush(&self) -> Result<Offset> {
        let target = self.log_end_offset();
        if target > Offset(0) {
            self.wait_durable(Offset(target.0 - 1)).await?;
        }
        Ok(self.durable_offset())
    }

    async fn lock(&self) -> Result<glommio::sync::Permit<'_>> {
        self.inner
            .io_lock
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::LogClosed {
                path: self.inner.dir.clone(),
            })
    }

    fn fail(&self, op: &'static str, path: &Path, error: impl Into<std::io::Error>) -> StorageError {
        let error = error.into();
        tracing::error!(path = %path.display(), %op, %error, "partition log failed; it refuses writes until reopened");
        self.inner.state.borrow_mut().failed = true;
        io_error(op, path, error)
    }

    /// Seals the write buffer and starts writing it; with `pad`, the partial
    /// last block too. A write already running is finished first, so at most
    /// one is in flight. With `wait`, returns only when this write is done;
    /// without, appends go on filling the next buffer while it runs.
    async fn write_out_locked(&self, pad: bool, wait: bool) -> Result<()> {
        self.finish_write_locked().await?;
        self.prepare_space_locked().await?;
        let sealed = {
            let mut st = self.inner.state.borrow_mut();
            st.usable(&self.inner.dir)?;
            st.appender_mut().seal(pad)
        };
        let Some(write) = sealed else { return Ok(()) };
        let expected = write.buffer.len();
        let segment_base = self.inner.state.borrow().active().base_offset;
        let mut write: PendingWrite = Box::pin(async move {
            write
                .file
                .write_rc_at(write.buffer, write.position)
                .await
                .map_err(std::io::Error::from)
        });
        // The first poll queues the request with glommio's reactor, which
        // hands queued requests to the kernel when it runs: between task
        // queue rounds. An appender on the fast path never yields, so the
        // appender yields its task queue once, letting the reactor start the
        // write while the next buffer fills. (A timer here, parking the task
        // for a microsecond, started it sooner, but glommio 0.9 can sleep
        // through a timer that is due as it goes to sleep: the log hung.)
        let mut poll = std::task::Context::from_waker(std::task::Waker::noop());
        let done = write.as_mut().poll(&mut poll);
        self.inner.state.borrow_mut().pending_write = Some((
            Box::pin(async move {
                match done {
                    std::task::Poll::Ready(result) => result,
                    std::task::Poll::Pending => write.await,
                }
            }),
            expected,
            segment_base,
        ));
        if wait {
            self.finish_write_locked().await?;
        } else {
            glommio::executor().yield_task_queue_now().await;
        }
        Ok(())
    }

    /// Readies the active segment's file for a write up to the block that
    /// holds the last byte appended: a zero write running there is waited
    /// for, the file is extended past it (fallocate), and a log flushed often
    /// starts zeroing further ahead.
    async fn prepare_space_locked(&self) -> Result<()> {
        let (needed, zeroed_end) = {
            let st = self.inner.state.borrow();
            let appender = st.appender();
            (
                crate::segment::align_up(appender.position_appended()),
                appender.zeroed_end,
            )
        };
        if needed > zeroed_end {
            self.settle_zeroing_locked().await;
        }
        self.preallocate_locked(needed).await?;
        {
            let mut st = self.inner.state.borrow_mut();
            let appender = st.appender_mut();
            // The write about to go covers up to `needed`: no zero write may
            // start below it.
            appender.zeroed_end = appender.zeroed_end.max(needed);
        }
        self.zero_ahead_locked(needed);
        Ok(())
    }

    /// Extends the active segment's file to hold `needed` bytes.
    /// A failure here (a full disk) changes nothing: the bytes stay in the
    /// buffer and the next write or flush tries again.
    async fn preallocate_locked(&self, needed: u64) -> Result<()> {
        let config = self.inner.config();
        let (file, path, preallocated) = {
            let st = self.inner.state.borrow();
            let appender = st.appender();
            (
                appender.file.clone(),
                appender.path().to_path_buf(),
                appender.preallocated,
            )
        };
        if needed <= preallocated {
            return Ok(());
        }
        let step = config.segment_preallocate_bytes;
        let segment_end = crate::segment::align_up(config.segment_bytes);
        let target = needed.next_multiple_of(step).min(segment_end.max(needed));
        file.pre_allocate(target, false)
            .await
            .map_err(|e| io_error("preallocate segment", &path, e))?;
        let mut st = self.inner.state.borrow_mut();
        let appender = st.appender_mut();
        appender.preallocated = appender.preallocated.max(target);
        Ok(())
    }

    /// Decides again, when it is due, whether the log is flushed often; if
    /// it is and no zero write runs, starts one at the active segment's
    /// `zeroed_end` when that is less than `segment_zero_ahead_bytes` ahead
    /// of `needed`.
    fn zero_ahead_locked(&self, needed: u64) {
        let config = self.inner.config();
        let mut st = self.inner.state.borrow_mut();
        if st.decision_bytes >= ZERO_AHEAD_DECISION_BYTES {
            st.zero_ahead = config.segment_zero_ahead_bytes > 0
                && st.decision_flushes > 0
                && st.decision_bytes / st.decision_flushes <= ZERO_AHEAD_FLUSH_BYTES_MAX;
            st.decision_bytes = 0;
            st.decision_flushes = 0;
        }
        if !st.zero_ahead || st.zeroing.is_some() {
            return;
        }
        let from = st.appender().zeroed_end;
        let segment_end = crate::segment::align_up(config.segment_bytes);
        if from >= needed + config.segment_zero_ahead_bytes || from >= segment_end {
            return;
        }
        let file = st.appender().file.clone();
        let len = ZERO_WRITE_BYTES.min(config.segment_zero_ahead_bytes) as usize;
        let zeros = st
            .zero_buffer
            .get_or_insert_with(|| {
                let mut zeros = file.alloc_dma_buffer(len);
                zeros.as_bytes_mut().fill(0);
                Rc::new(zeros)
            })
            .clone();
        let task = glommio::spawn_local(async move {
            let written = file.write_rc_at(zeros, from).await.map_err(std::io::Error::from)?;
            if written != len {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short zero write: {written} of {len} bytes"),
                ));
            }
            // The sync commits the extents the zeros turned from unwritten
            // to written, so that the flushes over them need not.
            file.fdatasync().await.map_err(std::io::Error::from)
        });
        st.zeroing = Some(Zeroing {
            task,
            from,
            end: from + len as u64,
        });
    }

    /// Waits for the running zero write, if any. It only readies space, so
    /// its failure (a full disk) fails nothing: the log stops zeroing until
    /// it decides again, and the writes go to the space as it is.
    async fn settle_zeroing_locked(&self) {
        let Some(zeroing) = self.inner.state.borrow_mut().zeroing.take() else {
            return;
        };
        let result = zeroing.task.await;
        let mut st = self.inner.state.borrow_mut();
        match result {
            Ok(()) => {
                st.stats.zeroed_bytes += zeroing.end - zeroing.from;
                let appender = st.appender_mut();
                appender.preallocated = appender.preallocated.max(zeroing.end);
            }
            Err(error) => {
                tracing::warn!(path = %st.appender().path().display(), from = zeroing.from, %error, "zeroing ahead of the segment's writes failed; the log stops zeroing for now");
                st.zero_ahead = false;
            }
        }
        // Either way no zero write touches `[from, end)` any more.
        let appender = st.appender_mut();
        appender.zeroed_end = appender.zeroed_end.max(zeroing.end);
    }

    /// Waits for the running write, if any, and accounts for its result.
    async fn finish_write_locked(&self) -> Result<()> {
        let Some((task, expected, segment_base)) = self.inner.state.borrow_mut().pending_write.take() else {
            return Ok(());
        };
        let waited = std::time::Instant::now();
        let result = task.await;
        let path = {
            let mut st = self.inner.state.borrow_mut();
            let written = st.appender_mut().write_done();
            if matches!(result, Ok(n) if n == expected) {
                // The written buffer serves its readers from the batch cache
                // from now on; one the cache does not keep is written again.
                let kept = crate::batch_cache::insert_written(
                    self.inner.id,
                    segment_base,
                    written.position,
                    written.end,
                    written.buffer,
                );
                if let Err(buffer) = kept {
                    st.appender_mut().give_spare(buffer);
                }
            }
            st.stats.writes += 1;
            st.stats.bytes_written += expected as u64;
            st.stats.write_wait += waited.elapsed();
            st.appender().path().to_path_buf()
        };
        match result {
            Ok(written) if written == expected => Ok(()),
            Ok(written) => Err(self.fail(
                "write segment",
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short write: {written} of {expected} bytes"),
                ),
            )),
            Err(e) => Err(self.fail("write segment", &path, e)),
        }
    }

    async fn make_room_locked(&self, bytes: usize) -> Result<()> {
        if self.inner.state.borrow().appender().free_bytes() >= bytes {
            return Ok(());
        }
        self.write_out_locked(false, false).await
    }

    async fn flush_locked(&self) -> Result<()> {
        let written = self.write_for_flush_locked(None).await?;
        self.sync_flush(written).await
    }

    /// The first half of a flush, under the io lock: writes out everything
    /// appended so far (padded to a block) and says what a sync of the
    /// active segment then makes durable. A flush of `wait_durable` takes
    /// its target here, at once, so that tasks appending during the write
    /// know it does not cover them and start the next flush.
    async fn write_for_flush_locked(&self, flushing: Option<&mut FlushingGuard<'_>>) -> Result<FlushWritten> {
        let started = std::time::Instant::now();
        let (target, unflushed) = {
            let st = self.inner.state.borrow();
            (st.next_offset, st.unflushed_bytes)
        };
        if let Some(flushing) = flushing {
            flushing.targeted(target);
        }
        self.write_out_locked(true, true).await?;
        let mut st = self.inner.state.borrow_mut();
        // Taken under the lock, so no other flush counted these bytes.
        st.unflushed_bytes -= unflushed;
        st.decision_flushes += 1;
        Ok(FlushWritten {
            target,
            file: st.appender().file.clone(),
            path: st.appender().path().to_path_buf(),
            cut_epoch: st.cut_epoch,
            started,
        })
    }

    /// The second half of a flush, with or without the io lock: the
    /// fdatasync, then the durable offset moves up to the flush's target.
    async fn sync_flush(&self, written: FlushWritten) -> Result<()> {
        let syncing = std::time::Instant::now();
        let in_flight = crate::flush_stats::sync_started();
        let result = written.file.fdatasync().await;
        drop(in_flight);
        if let Err(e) = result {
            return Err(self.fail("fdatasync segment", &written.path, e));
        }
        let synced = syncing.elapsed();
        crate::flush_stats::record(synced, written.started.elapsed());
        let mut st = self.inner.state.borrow_mut();
        // A truncation while this synced may have cut below the target (it
        // set the durable offset itself); the records there now are not the
        // ones this flush wrote.
        if st.cut_epoch == written.cut_epoch {
            st.durable_offset = st.durable_offset.max(written.target);
        }
        debug_assert!(st.durable_offset <= st.next_offset, "durable past the log end");
        st.stats.flushes += 1;
        st.stats.sync_time += synced;
        st.stats.sync_time_max = st.stats.sync_time_max.max(synced);
        st.stats.flush_time += written.started.elapsed();
        Ok(())
    }

    /// Writes out and syncs the active segment, cuts its file to its logical
    /// size and writes its index files. Afterwards it can be sealed or closed.
    async fn finish_active_locked(&self) -> Result<()> {
        // A zero write landing after the cut below would extend the file
        // again.
        self.settle_zeroing_locked().await;
        self.flush_locked().await?;
        let (file, path, end) = {
            let st = self.inner.state.borrow();
            (
                st.appender().file.clone(),
                st.appender().path().to_path_buf(),
                st.appender().position_appended(),
            )
        };
        if let Err(e) = file.truncate(end).await {
            return Err(self.fail("truncate segment", &path, e));
        }
        if let Err(e) = file.fdatasync().await {
            return Err(self.fail("fdatasync segment", &path, e));
        }
        let (base, offset_index, time_index) = {
            let mut st = self.inner.state.borrow_mut();
            let active = st.active_mut();
            active.index_max_timestamp();
            (
                active.base_offset,
                active.offset_index.encode(),
                active.time_index.encode(),
            )
        };
        write_index_file(segment_path(&self.inner.dir, base, OFFSET_INDEX_SUFFIX), offset_index).await?;
        write_index_file(segment_path(&self.inner.dir, base, TIME_INDEX_SUFFIX), time_index).await?;
        Ok(())
    }

    async fn roll_locked(&self, active_base: Offset) -> Result<()> {
        {
            let st = self.inner.state.borrow();
            st.usable(&self.inner.dir)?;
            if st.active().base_offset != active_base || st.active().is_empty() {
                return Ok(()); // someone else rolled while we waited for the lock
            }
        }
        let rolling = std::time::Instant::now();
        self.finish_active_locked().await?;
        let next_offset = self.log_end_offset();
        let path = segment_path(&self.inner.dir, next_offset, LOG_SUFFIX);
        let appender = match SegmentAppender::open(&path, 0, self.inner.write_buffer_bytes.get()).await {
            Ok(appender) => appender,
            Err(e) => {
                self.inner.state.borrow_mut().failed = true;
                return Err(e);
            }
        };
        // The new file must survive a crash along with the data synced into it.
        sync_dir(&self.inner.dir).await?;
        let mut st = self.inner.state.borrow_mut();
        let sealed = st.appender.replace(appender).expect("an open log has an appender");
        st.active_mut().read_file = Some(sealed.file.clone());
        st.open_reads.push_back(active_base);
        st.segments
            .insert(next_offset, Segment::new(&self.inner.dir, next_offset));
        st.stats.rolls += 1;
        st.stats.roll_time_max = st.stats.roll_time_max.max(rolling.elapsed());
        drop(st);
        self.evict_read_handles();
        tracing::debug!(dir = %self.inner.dir.display(), %next_offset, took = ?rolling.elapsed(), "rolled to a new segment");
        Ok(())
    }

    fn evict_read_handles(&self) {
        let mut st = self.inner.state.borrow_mut();
        while st.open_reads.len() > self.inner.config().open_segments_max {
            let base = st.open_reads.pop_front().expect("non-empty");
            if let Some(segment) = st.segments.get_mut(&base) {
                segment.read_file = None;
            }
        }
    }

    /// Reads whole batches from `from` on, up to `max_bytes` (at least one
    /// batch, however large, so a consumer always progresses). Reading at the
    /// log end returns no bytes. Bytes from disk have their crc32c checked
    /// before they are returned.
    ///
    /// On a cleaned log, an offset in a gap reads from the next batch
    /// after it, in this segment or the next.
    pub async fn read(&self, from: Offset, max_bytes: usize) -> Result<LogRead> {
        // A read that raced the cleaner's swap of its segment looks again;
        // a swap is rare and brief, so a few tries are plenty.
        let mut tries = 0;
        loop {
            match self.read_once(from, max_bytes).await {
                Err(StorageError::SegmentReplaced { .. }) if tries < READ_TRIES_MAX => tries += 1,
                other => return other,
            }
        }
    }

    async fn read_once(&self, from: Offset, max_bytes: usize) -> Result<LogRead> {
        let mut at = from;
        loop {
            if let Some(read) = self.read_in_segment(from, at, max_bytes).await? {
                return Ok(read);
            }
            // Nothing at or after `at` in its segment (a cleaned segment's
            // trailing gap): the next segment's first batch, if any.
            let next = {
                let st = self.inner.state.borrow();
                st.segments.range(at.next()..).next().map(|(base, _)| *base)
            };
            match next {
                Some(base) => at = base,
                None => {
                    let st = self.inner.state.borrow();
                    return Ok(LogRead {
                        bytes: ReadBytes::empty(),
                        next_offset: from,
                        log_start_offset: st.log_start_offset,
                        log_end_offset: st.next_offset,
                    });
                }
            }
        }
    }

    /// `read` within the segment holding `at` (at or past `from`): None
    /// when the segment holds no batch ending at or after `at`.
    async fn read_in_segment(&self, from: Offset, at: Offset, max_bytes: usize) -> Result<Option<LogRead>> {
        let (segment_base, position, log_start_offset, log_end_offset) = {
            let st = self.inner.state.borrow();
            st.usable(&self.inner.dir)?;
            if from < st.log_start_offset || from > st.next_offset {
                return Err(StorageError::OffsetOutOfRange {
                    offset: from,
                    log_start: st.log_start_offset,
                    log_end: st.next_offset,
                });
            }
            let (&base, segment) = st
                .segments
                .range(..=at)
                .next_back()
                .expect("from is at or past the log start");
            (
                base,
                segment.offset_index.lookup(relative(base, at)),
                st.log_start_offset,
                st.next_offset,
            )
        };
        if at >= log_end_offset {
            return Ok(Some(LogRead {
                bytes: ReadBytes::empty(),
                next_offset: from,
                log_start_offset,
                log_end_offset,
            }));
        }
        let found = self
            .seek(segment_base, position.0, max_bytes, |info| info.last_offset() >= at)
            .await?;
        let Some((position, bytes)) = found else {
            return Ok(None);
        };
        let mut taken = 0;
        let mut next_offset = from;
        while let Some(len) = frame_length(&bytes[taken..]) {
            if len > bytes.len() - taken || (taken > 0 && taken + len > max_bytes) {
                break;
            }
            let frame = &bytes[taken..taken + len];
            let info = if bytes.is_from_disk() {
                verify_crc(frame).map_err(|e| self.corrupt(segment_base, position + taken as u64, e))?
            } else {
                peek_header(frame).map_err(|e| self.corrupt(segment_base, position + taken as u64, e))?
            };
            next_offset = info.next_offset();
            taken += len;
        }
        Ok(Some(LogRead {
            bytes: bytes.slice(0, taken),
            next_offset,
            log_start_offset,
            log_end_offset,
        }))
    }

    fn corrupt(&self, segment_base: Offset, position: u64, error: StorageError) -> StorageError {
        StorageError::CorruptBatch {
            path: segment_path(&self.inner.dir, segment_base, LOG_SUFFIX),
            position: FilePosition(position),
            reason: error.to_string(),
        }
    }

    /// Walks the batches of one segment from `position` and returns the
    /// position of the first for which `stop` holds, with the bytes from
    /// there on (at least `want` bytes if the segment has them).
    async fn seek(
        &self,
        base: Offset,
        mut position: u64,
        want: usize,
        stop: impl Fn(&BatchInfo) -> bool,
    ) -> Result<Option<(u64, ReadBytes)>> {
        loop {
            let chunk = self.read_range(base, position, want.max(SEEK_CHUNK_BYTES)).await?;
            if chunk.is_empty() {
                return Ok(None);
            }
            let mut at = 0;
            while let Some(len) = frame_length(&chunk[at..]) {
                if len <= FRAME_LENGTH_BYTES {
                    return Err(self.corrupt(
                        base,
                        position + at as u64,
                        StorageError::BatchMalformed {
                            reason: "empty frame".into(),
                        },
                    ));
                }
                if len > chunk.len() - at {
                    break;
                }
                let info =
                    peek_header(&chunk[at..at + len]).map_err(|e| self.corrupt(base, position + at as u64, e))?;
                if stop(&info) {
                    let mut bytes = chunk.slice(at, chunk.len() - at);
                    if bytes.len() < want {
                        bytes = self.read_range(base, position + at as u64, want.max(len)).await?;
                    }
                    return Ok(Some((position + at as u64, bytes)));
                }
                at += len;
            }
            if at == 0 {
                // One frame larger than the chunk: read exactly it.
                let Some(len) = frame_length(&chunk) else {
                    let segment_end = self.inner.state.borrow().segments.get(&base).map_or(0, |s| s.size);
                    if position + (chunk.len() as u64) < segment_end {
                        continue; // a short read where bytes moved from memory to disk; try again
                    }
                    return Err(self.corrupt(
                        base,
                        position,
                        StorageError::BatchMalformed {
                            reason: "segment ends inside a length prefix".into(),
                        },
                    ));
                };
                let whole = self.read_range(base, position, len).await?;
                if whole.len() < len {
                    let segment_end = self.inner.state.borrow().segments.get(&base).map_or(0, |s| s.size);
                    if position + len as u64 > segment_end {
                        return Err(self.corrupt(
                            base,
                            position,
                            StorageError::BatchMalformed {
                                reason: format!("frame of {len} bytes runs past the segment's end"),
                            },
                        ));
                    }
                    continue; // the frame straddled bytes moving from memory to disk; try again
                }
                let info = peek_header(&whole).map_err(|e| self.corrupt(base, position, e))?;
                if stop(&info) {
                    return Ok(Some((position, whole)));
                }
                at = len;
            }
            position += at as u64;
        }
    }

    /// Reads up to `len` bytes of segment `base` at `start`, from memory if
    /// they are still in the active segment's buffers, else from a
    /// read-ahead stream, else from disk (starting a stream). `start` is
    /// where a batch begins.
    async fn read_range(&self, base: Offset, start: u64, len: usize) -> Result<ReadBytes> {
        enum Source {
            Disk(Rc<DmaFile>),
            Open(PathBuf, u64),
        }
        let ahead = self.inner.config().read_ahead_bytes;
        let (source, len, memory_start, final_end, cut_epoch) = {
            let mut st = self.inner.state.borrow_mut();
            st.usable(&self.inner.dir)?;
            let cut_epoch = st.cut_epoch;
            let is_active = st.active().base_offset == base;
            let Some(segment) = st.segments.get(&base) else {
                return Ok(ReadBytes::empty()); // deleted by retention meanwhile
            };
            let len = len.min(segment.size.saturating_sub(start) as usize);
            if len == 0 {
                return Ok(ReadBytes::empty());
            }
            let segment_size = segment.size;
            let read_file = segment.read_file.clone();
            let log_path = segment.log_path.clone();
            let generation = segment.generation;
            if is_active {
                let appender = st.appender();
                let memory_start = appender.memory_start();
                if let Some(in_flight) = appender.in_flight().filter(|f| start >= f.position && start < f.end) {
                    // Sealed and immutable while its write runs: a slice. A
                    // batch starting in it ends in it (the appender never
                    // splits one across buffers).
                    let from = (start - in_flight.position) as usize;
                    let len = len.min((in_flight.end - start) as usize);
                    return Ok(ReadBytes::Buffer {
                        buffer: in_flight.buffer.clone(),
                        start: from,
                        end: from + len,
                    });
                }
                if start >= memory_start {
                    let mut bytes = Vec::with_capacity(len);
                    appender.extend_from_memory(start, len, &mut bytes);
                    return Ok(ReadBytes::Memory {
                        bytes: Rc::new(bytes),
                        start: 0,
                        end: len,
                        from_disk: false,
                    });
                }
                (
                    Source::Disk(appender.file.clone()),
                    len,
                    Some(memory_start),
                    memory_start,
                    cut_epoch,
                )
            } else if let Some(file) = read_file {
                if let Some(i) = st.open_reads.iter().position(|b| *b == base) {
                    st.open_reads.remove(i);
                }
                st.open_reads.push_back(base);
                (Source::Disk(file), len, None, segment_size, cut_epoch)
            } else {
                (Source::Open(log_path, generation), len, None, segment_size, cut_epoch)
            }
        };
        let straddles_memory = memory_start.is_some_and(|boundary| start + len as u64 > boundary);
        if let Some(bytes) = crate::batch_cache::lookup(self.inner.id, base, start, len) {
            return Ok(bytes);
        }
        let mut streamed = false;
        if ahead > 0 && !straddles_memory {
            match self.read_ahead_hit(base, start, len, final_end).await? {
                AheadRead::Served(bytes) => return Ok(bytes),
                AheadRead::Bypass => {
                    streamed = true;
                    self.inner.state.borrow_mut().stats.read_ahead.bypassed += 1;
                }
                AheadRead::NoStream => {}
            }
        }
        let file = match source {
            Source::Disk(file) => file,
            Source::Open(path, generation) => {
                let file = Rc::new(
                    DmaFile::open(&path)
                        .await
                        .map_err(|e| io_error("open segment", &path, e))?,
                );
                {
                    let mut st = self.inner.state.borrow_mut();
                    if st.segments.get(&base).is_some_and(|s| s.generation != generation) {
                        // The cleaner swapped another file in while this one
                        // opened: `start` was looked up in the one before.
                        return Err(StorageError::SegmentReplaced { base });
                    }
                    if let Some(segment) = st.segments.get_mut(&base) {
                        segment.read_file = Some(file.clone());
                        st.open_reads.push_back(base);
                    }
                }
                self.evict_read_handles();
                file
            }
        };
        if ahead > 0 && !straddles_memory && !streamed {
            // A reader no stream covers: read ahead of it from here on,
            // this read being the stream's first chunk.
            {
                let mut st = self.inner.state.borrow_mut();
                let st = &mut *st;
                st.stats.read_ahead.misses += 1;
                st.read_ahead
                    .borrow_mut()
                    .start(base, file.clone(), start, &mut st.stats.read_ahead);
            }
            if let AheadRead::Served(bytes) = self.read_ahead_hit(base, start, len, final_end).await? {
                return Ok(bytes);
            }
        }
        let path = || segment_path(&self.inner.dir, base, LOG_SUFFIX);
        match memory_start {
            Some(boundary) if straddles_memory => {
                // Part on disk, part in memory: join them in one buffer.
                let disk_len = (boundary - start) as usize;
                let disk = file
                    .read_at(start, disk_len)
                    .await
                    .map_err(|e| io_error("read segment", &path(), e))?;
                let st = self.inner.state.borrow();
                let still_active = st.active().base_offset == base;
                if !still_active || disk.len() < disk_len || st.appender().memory_start() > boundary {
                    // The memory part moved meanwhile: serve the disk part alone.
                    return Ok(ReadBytes::Disk(disk));
                }
                let mut bytes = Vec::with_capacity(len);
                bytes.extend_from_slice(&disk);
                st.appender().extend_from_memory(boundary, len - disk_len, &mut bytes);
                Ok(ReadBytes::Memory {
                    bytes: Rc::new(bytes),
                    start: 0,
                    end: len,
                    from_disk: true,
                })
            }
            _ => {
                let bytes = file
                    .read_at(start, len)
                    .await
                    .map_err(|e| io_error("read segment", &path(), e))?;
                let mut st = self.inner.state.borrow_mut();
                st.stats.disk_read_bytes += bytes.len() as u64;
                // Unless bytes were cut or deleted meanwhile (what the read
                // returned may be gone from the log), the batch cache keeps
                // what was read.
                if st.cut_epoch == cut_epoch {
                    crate::batch_cache::insert_read(self.inner.id, base, start, bytes.len(), bytes.clone(), true);
                }
                Ok(ReadBytes::Disk(bytes))
            }
        }
    }

    /// Serves `[start, start + len)` of segment `base` from a read-ahead
    /// stream if one holds `start`, topping the stream up first (its reads
    /// go to the disk while this one waits). A slice of one chunk when the
    /// first batch lies in it; else that batch joined from two chunks (a
    /// copy, once per chunk boundary). None: no stream holds it.
    async fn read_ahead_hit(&self, base: Offset, start: u64, len: usize, final_end: u64) -> Result<AheadRead> {
        let hit = {
            let mut st = self.inner.state.borrow_mut();
            let st = &mut *st;
            // Looking up first drops the chunks read already, so that the
            // top-up reads as far ahead of this read as it may.
            let read_ahead = st.read_ahead.clone();
            let mut read_ahead = read_ahead.borrow_mut();
            let found = read_ahead.lookup(base, start);
            let sealed = st.active().base_offset != base;
            let State { segments, stats, .. } = &mut *st;
            let index = segments.get(&base).map(|s| &s.offset_index);
            read_ahead.top_up(
                base,
                final_end,
                sealed,
                self.inner.config().read_ahead_bytes,
                |after, at_most| index.and_then(|i| i.batch_start_in(after, at_most)),
                &mut stats.read_ahead,
            );
            match found.or_else(|| read_ahead.lookup(base, start)) {
                Some(hit) => hit,
                None => return Ok(AheadRead::NoStream),
            }
        };
        let path = || segment_path(&self.inner.dir, base, LOG_SUFFIX);
        let failed = |e: Rc<String>| io_error("read ahead segment", &path(), std::io::Error::other(e.to_string()));
        let chunk = hit.read.await.map_err(failed)?;
        let offset = (start - hit.chunk_start) as usize;
        let avail = hit.chunk_len.min(chunk.len()).saturating_sub(offset);
        if avail == 0 {
            return Ok(AheadRead::Bypass);
        }
        let first = frame_length(&chunk[offset..offset + avail]);
        if len <= avail || first.is_some_and(|f| f <= avail) {
            self.inner.state.borrow_mut().stats.read_ahead.hits += 1;
            let served = ReadResult::slice(&chunk, offset, len.min(avail)).expect("within the chunk");
            return Ok(AheadRead::Served(ReadBytes::Disk(served)));
        }
        // The first batch (or its length prefix) runs into the next chunk,
        // which starts at or a little before this one's end.
        let Some((next_start, next_len, next)) = hit.next else {
            return Ok(AheadRead::Bypass);
        };
        let chunk_end = start + avail as u64;
        if next_start > chunk_end {
            return Ok(AheadRead::Bypass);
        }
        let next = next.await.map_err(failed)?;
        let skip = (chunk_end - next_start) as usize;
        let next_end = next_len.min(next.len());
        if skip > next_end {
            return Ok(AheadRead::Bypass);
        }
        let next = &next[skip..next_end];
        let next_avail = next.len();
        let first = match first {
            Some(first) => first,
            None => {
                // The length prefix itself straddles the chunks.
                let mut prefix = [0u8; FRAME_LENGTH_BYTES];
                let tail = &chunk[offset..offset + avail];
                if avail + next_avail < FRAME_LENGTH_BYTES {
                    return Ok(AheadRead::Bypass);
                }
                prefix[..avail].copy_from_slice(tail);
                prefix[avail..].copy_from_slice(&next[..FRAME_LENGTH_BYTES - avail]);
                match frame_length(&prefix) {
                    Some(first) => first,
                    None => return Ok(AheadRead::Bypass),
                }
            }
        };
        if first > avail + next_avail {
            // A batch larger than what the two chunks hold: read it directly.
            return Ok(AheadRead::Bypass);
        }
        let joined_len = len.min(first);
        let mut bytes = Vec::with_capacity(joined_len);
        bytes.extend_from_slice(&chunk[offset..offset + avail]);
        bytes.extend_from_slice(&next[..joined_len - avail]);
        let mut st = self.inner.state.borrow_mut();
        st.stats.read_ahead.hits += 1;
        st.stats.read_ahead.joined += 1;
        Ok(AheadRead::Served(ReadBytes::Memory {
            bytes: Rc::new(bytes),
            start: 0,
            end: joined_len,
            from_disk: true,
        }))
    }

    /// The first offset whose record timestamp is at or after `timestamp_ms`
    /// (by the log's timestamp type), or None if every record is older.
    pub async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<Offset>> {
        let timestamp_type = self.inner.config().timestamp_type;
        let (base, start_offset, position, log_start) = {
            let st = self.inner.state.borrow();
            st.usable(&self.inner.dir)?;
            let Some(segment) = st
                .segments
                .values()
                .find(|s| !s.is_empty() && s.max_timestamp_ms >= timestamp_ms)
            else {
                return Ok(None);
            };
            let start_relative = segment.time_index.lookup(timestamp_ms);
            (
                segment.base_offset,
                segment.base_offset.plus(u64::from(start_relative)),
                segment.offset_index.lookup(start_relative),
                st.log_start_offset,
            )
        };
        let batch_timestamp = |info: &BatchInfo| match timestamp_type {
            TimestampType::CreateTime => info.max_timestamp_ms,
            TimestampType::LogAppendTime => info.append_time_ms,
        };
        let found = self
            .seek(base, position.0, 0, |info| {
                info.last_offset() >= start_offset && batch_timestamp(info) >= timestamp_ms
            })
            .await?;
        let Some((position, bytes)) = found else {
            return Ok(None);
        };
        let len = frame_length(&bytes).expect("seek returns a whole frame");
        let frame = &bytes[..len];
        let info = verify_crc(frame).map_err(|e| self.corrupt(base, position, e))?;
        let offset = match timestamp_type {
            TimestampType::LogAppendTime => info.base_offset,
            TimestampType::CreateTime => {
                let archived = batch::access(frame).map_err(|e| self.corrupt(base, position, e))?;
                let delta = archived
                    .records
                    .iter()
                    .find(|r| info.first_timestamp_ms + r.timestamp_delta_ms.to_native() >= timestamp_ms)
                    .map_or(info.last_offset_delta, |r| r.offset_delta.to_native());
                info.base_offset.plus(u64::from(delta))
            }
        };
        Ok(Some(offset.max(log_start)))
    }

    /// Writes the epoch cache with `start` added, if `start` is still where
    /// the next batch goes; the append that asked looks again either way.
    async fn write_new_epoch_locked(&self, start: EpochStart) -> Result<()> {
        let cache = {
            let st = self.inner.state.borrow();
            st.usable(&self.inner.dir)?;
            if st.next_offset != start.start_offset
                || st.leader_epochs.check(start.epoch, start.start_offset) != Ok(true)
            {
                return Ok(());
            }
            let mut cache = st.leader_epochs.clone();
            cache.assign(start.epoch, start.start_offset);
            cache
        };
        write_leader_epoch_checkpoint(&self.inner.dir, &cache).await?;
        self.inner.state.borrow_mut().epoch_written = Some(start);
        Ok(())
    }

    /// Brings the epoch cache and its file in line with the log's bounds
    /// after a cut or a deletion moved them.
    async fn trim_epochs_locked(&self) -> Result<()> {
        let cache = {
            let mut st = self.inner.state.borrow_mut();
            let (start, end) = (st.log_start_offset, st.next_offset);
            st.epoch_written = None;
            let cut = st.leader_epochs.truncate_from_end(end);
            let trimmed = st.leader_epochs.truncate_from_start(start);
            if !(cut || trimmed) {
                return Ok(());
            }
            st.leader_epochs.clone()
        };
        write_leader_epoch_checkpoint(&self.inner.dir, &cache).await
    }

    /// Removes every record at or after `offset`, cutting at the start of the
    /// batch that holds it (so the log end may fall below `offset`).
    /// Replication uses it to drop a diverged tail.
    pub async fn truncate_to(&self, offset: Offset) -> Result<()> {
        let _permit = self.lock().await?;
        {
            let st = self.inner.state.borrow();
            st.usable(&self.inner.dir)?;
            if offset >= st.next_offset {
                return Ok(());
            }
            if offset < st.log_start_offset {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    log_start: st.log_start_offset,
                    log_end: st.next_offset,
                });
            }
        }
        self.settle_zeroing_locked().await;
        self.flush_locked().await?;
        let (base, position) = {
            let st = self.inner.state.borrow();
            let (&base, segment) = st.segments.range(..=offset).next_back().expect("offset is in the log");
            (base, segment.offset_index.lookup(relative(base, offset)))
        };
        let found = self
            .seek(base, position.0, 0, |info| info.last_offset() >= offset)
            .await?;
        let cut = match found {
            Some((position, bytes)) => {
                let new_end = peek_header(&bytes)
                    .map_err(|e| self.corrupt(base, position, e))?
                    .base_offset;
                let log_start = self.log_start_offset();
                if new_end < log_start {
                    // The cut falls inside the batch holding the log start:
                    // nothing visible remains, and offsets below the log start
                    // must never be handed out again.
                    return self.truncate_fully_locked(log_start).await;
                }
                Some(position)
            }
            None => None,
        };
        // Everything after `base` goes; `base` keeps [0, cut) and becomes active.
        let doomed: Vec<Offset> = {
            let mut st = self.inner.state.borrow_mut();
            st.appender = None;
            // Chunks read ahead and cached may hold the bytes cut below.
            st.read_ahead.borrow_mut().clear();
            st.cut_epoch += 1;
            crate::batch_cache::forget_segments_from(self.inner.id, base);
            let doomed: Vec<Offset> = st.segments.range(base..).map(|(b, _)| *b).skip(1).collect();
            for b in &doomed {
                st.segments.remove(b);
            }
            st.open_reads.retain(|b| *b < base);
            st.segments.get_mut(&base).expect("kept").read_file = None;
            doomed
        };
        for b in doomed.iter().rev() {
            remove_segment_files(&self.inner.dir, *b).await?;
        }
        let path = segment_path(&self.inner.dir, base, LOG_SUFFIX);
        let result = async {
            let file = glommio::io::OpenOptions::new()
                .write(true)
                .dma_open(&path)
                .await
                .map_err(|e| io_error("open segment", &path, e))?;
            if let Some(cut) = cut {
                file.truncate(cut)
                    .await
                    .map_err(|e| io_error("truncate segment", &path, e))?;
            }
            file.fdatasync()
                .await
                .map_err(|e| io_error("fdatasync segment", &path, e))?;
            file.close().await.map_err(|e| io_error("close segment", &path, e))?;
            remove_index_files(&self.inner.dir, base).await?;
            recover_active_segment(&self.inner.dir, base, &self.inner.segment_config()).await
        }
        .await;
        let (segment, appender) = match result {
            Ok(recovered) => recovered,
            Err(e) => {
                self.inner.state.borrow_mut().failed = true;
                return Err(e);
            }
        };
        sync_dir(&self.inner.dir).await?;
        {
            let mut st = self.inner.state.borrow_mut();
            st.next_offset = segment.next_offset;
            st.durable_offset = segment.next_offset;
            st.log_start_offset = st.log_start_offset.min(segment.next_offset);
            st.segments.insert(base, segment);
            st.appender = Some(appender);
            tracing::info!(dir = %self.inner.dir.display(), %offset, log_end_offset = %st.next_offset, "truncated partition log");
        }
        self.trim_epochs_locked().await
    }

    /// Deletes every segment and starts the log afresh, empty, at `start`.
    async fn truncate_fully_locked(&self, start: Offset) -> Result<()> {
        self.settle_zeroing_locked().await;
        let doomed: Vec<Offset> = {
            let mut st = self.inner.state.borrow_mut();
            st.appender = None;
            st.open_reads.clear();
            st.read_ahead.borrow_mut().clear();
            st.cut_epoch += 1;
            crate::batch_cache::forget_log(self.inner.id);
            let doomed = st.segments.keys().copied().collect();
            st.segments.clear();
            doomed
        };
        for base in doomed.iter().rev() {
            if let Err(e) = remove_segment_files(&self.inner.dir, *base).await {
                self.inner.state.borrow_mut().failed = true;
                return Err(e);
            }
        }
        write_log_start_checkpoint(&self.inner.dir, start).await?;
        let (segment, appender) =
            match recover_active_segment(&self.inner.dir, start, &self.inner.segment_config()).await {
                Ok(recovered) => recovered,
                Err(e) => {
                    self.inner.state.borrow_mut().failed = true;
                    return Err(e);
                }
            };
        sync_dir(&self.inner.dir).await?;
        {
            let mut st = self.inner.state.borrow_mut();
            st.segments.insert(start, segment);
            st.appender = Some(appender);
            st.next_offset = start;
            st.durable_offset = start;
            st.log_start_offset = start;
        }
        tracing::info!(dir = %self.inner.dir.display(), %start, "truncated the whole partition log");
        self.trim_epochs_locked().await
    }

    /// Moves the log start offset to `offset` (Kafka's DeleteRecords) and
    /// deletes the sealed segments that now lie wholly before it. The records
    /// below `offset` are made durable first, so the new log start survives
    /// any crash.
    pub async fn delete_records_before(&self, offset: Offset) -> Result<()> {
        let _permit = self.lock().await?;
        {
            let st = self.inner.state.borrow_mut();
            st.usable(&self.inner.dir)?;
            if offset > st.next_offset {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    log_start: st.log_start_offset,
                    log_end: st.next_offset,
                });
            }
            if offset <= st.log_start_offset {
                return Ok(());
            }
        }
        // The checkpoint must never point past what a crash can lose, or the
        // offsets between would be handed out twice after recovery.
        if self.durable_offset() < offset {
            self.flush_locked().await?;
        }
        self.inner.state.borrow_mut().log_start_offset = offset;
        write_log_start_checkpoint(&self.inner.dir, offset).await?;
        self.delete_sealed_segments_locked(|segment, _| segment.next_offset <= offset)
            .await?;
        self.trim_epochs_locked().await
    }

    /// Deletes sealed segments past the retention limits: those whose newest
    /// timestamp is older than `retention_ms`, and the oldest while the log
    /// is larger than `retention_bytes`. Never the active segment. Returns
    /// how many segments went.
    pub async fn apply_retention(&self) -> Result<usize> {
        let _permit = self.lock().await?;
        let mut expired = self.retention_limits();
        self.delete_sealed_segments_locked(|segment, _| expired(segment)).await
    }

    /// Where `apply_retention` would start the log now: the base offset of
    /// the first segment it would keep (the log start if it keeps all). A
    /// replicated partition moves its log start there itself, once its Raft
    /// log may forget what lies below (`delete_records_before`).
    pub fn retention_point(&self) -> Offset {
        let mut expired = self.retention_limits();
        let st = self.inner.state.borrow();
        let active_base = st.active().base_offset;
        st.segments
            .values()
            .find(|s| s.base_offset == active_base || !expired(s))
            .map_or(st.log_start_offset, |s| s.base_offset.max(st.log_start_offset))
    }

    /// Whether each segment, taken from the oldest on, is past retention.
    ///
    /// A log whose cleanup policy does not delete (compact alone) keeps
    /// every segment: its records go only by compaction.
    fn retention_limits(&self) -> impl FnMut(&Segment) -> bool + '_ {
        let now_ms = (self.inner.clock)();
        let config = self.inner.config();
        let deletes = config.cleanup.delete;
        let mut excess_bytes = match config.retention_bytes {
            Some(max) if deletes => self.size_bytes().saturating_sub(max),
            _ => 0,
        };
        move |segment| {
            let expired = deletes
                && config
                    .retention_ms
                    .is_some_and(|ms| segment.max_timestamp_ms < now_ms.saturating_sub(ms as i64));
            let oversize = deletes && excess_bytes >= segment.size;
            if oversize {
                excess_bytes -= segment.size;
            }
            expired || oversize
        }
    }

    /// Deletes every segment and starts the log afresh, empty, at `start`:
    /// a replica handed a snapshot of a log whose start lies past its own
    /// end. `start` may not go below the log start (offsets below it were
    /// handed out once).
    pub async fn reset_to(&self, start: Offset) -> Result<()> {
        let _permit = self.lock().await?;
        {
            let st = self.inner.state.borrow();
            st.usable(&self.inner.dir)?;
            if start < st.log_start_offset {
                return Err(StorageError::OffsetOutOfRange {
                    offset: start,
                    log_start: st.log_start_offset,
                    log_end: st.next_offset,
                });
            }
        }
        self.truncate_fully_locked(start).await
    }

    /// Deletes sealed segments from the oldest on while `doomed` says so.
    async fn delete_sealed_segments_locked(&self, mut doomed: impl FnMut(&Segment, Offset) -> bool) -> Result<usize> {
        let deleted: Vec<Offset> = {
            let mut st = self.inner.state.borrow_mut();
            st.usable(&self.inner.dir)?;
            let active_base = st.active().base_offset;
            let log_start = st.log_start_offset;
            let deleted: Vec<Offset> = st
                .segments
                .values()
                .take_while(|s| s.base_offset != active_base && doomed(s, log_start))
                .map(|s| s.base_offset)
                .collect();
            st.cut_epoch += u64::from(!deleted.is_empty());
            for base in &deleted {
                st.segments.remove(base);
                crate::batch_cache::forget_segment(self.inner.id, *base);
                let st = &mut *st;
                st.read_ahead
                    .borrow_mut()
                    .forget_segment(*base, &mut st.stats.read_ahead);
            }
            st.open_reads.retain(|b| !deleted.contains(b));
            let first_base = *st.segments.keys().next().expect("the active segment stays");
            st.log_start_offset = st.log_start_offset.max(first_base);
            deleted
        };
        for base in &deleted {
            remove_segment_files(&self.inner.dir, *base).await?;
            tracing::info!(dir = %self.inner.dir.display(), base_offset = %base, "deleted segment");
        }
        if !deleted.is_empty() {
            self.trim_epochs_locked().await?;
        }
        Ok(deleted.len())
    }

    /// Flushes everything, cuts the active segment's file to its exact size,
    /// writes its indexes, and closes the log. Without a close, what was not
    /// flushed may be lost, and the next open recovers.
    pub async fn close(self) -> Result<()> {
        let _permit = self.lock().await?;
        self.inner.state.borrow().usable(&self.inner.dir)?;
        self.finish_active_locked().await?;
        let files: Vec<Rc<DmaFile>> = {
            let mut st = self.inner.state.borrow_mut();
            st.closed = true;
            st.open_reads.clear();
            crate::batch_cache::forget_log(self.inner.id);
            let mut files: Vec<Rc<DmaFile>> = st.segments.values_mut().filter_map(|s| s.read_file.take()).collect();
            files.extend(st.appender.take().map(|appender| appender.file.clone()));
            files
        };
        self.inner.io_lock.close();
        // Close the files now: a dropped glommio file is closed only on the
        // reactor's next cycle, which may never come if the executor ends.
        for file in files {
            let path = file.path().map(|p| p.to_path_buf()).unwrap_or_default();
            file.close_rc().await.map_err(|e| io_error("close segment", &path, e))?;
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A log dropped without a close (a crash in a test, a failed open
        // elsewhere) leaves nothing of its own in the thread's cache.
        crate::batch_cache::forget_log(self.id);
    }
}

/// Ends a group-commit flush, even if the flushing task is dropped midway:
/// clears the flag and wakes every task that waited for the flush.
/// What a flush's write covered, for its sync.
struct FlushWritten {
    /// Every offset below it is durable once the sync ends.
    target: Offset,
    file: Rc<DmaFile>,
    path: PathBuf,
    cut_epoch: u64,
    started: std::time::Instant,
}

/// A flush started by `wait_durable`: its end, however it ends, wakes the
/// tasks waiting for one.
struct FlushingGuard<'a> {
    inner: &'a Inner,
    targeted: bool,
}

impl FlushingGuard<'_> {
    fn targeted(&mut self, target: Offset) {
        let mut st = self.inner.state.borrow_mut();
        st.flushes_untargeted -= 1;
        st.flush_target_max = st.flush_target_max.max(target);
        self.targeted = true;
    }
}

impl Drop for FlushingGuard<'_> {
    fn drop(&mut self) {
        let waiters = {
            let mut st = self.inner.state.borrow_mut();
            st.flushes_in_flight -= 1;
            if !self.targeted {
                st.flushes_untargeted -= 1;
            }
            if st.flushes_in_flight == 0 {
                st.flush_target_max = Offset(0);
            }
            std::mem::take(&mut st.flush_waiters)
        };
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }
}

fn spawn_interval_flusher(log: Weak<Inner>, interval: Duration, generation: u64) {
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(interval).await;
            let Some(inner) = log.upgrade() else { break };
            if inner.flusher_generation.get() != generation {
                break;
            }
            let log = PartitionLog { inner };
            let (closed, dirty) = {
                let st = log.inner.state.borrow();
                (st.closed || st.failed, st.durable_offset < st.next_offset)
            };
            if closed {
                break;
            }
            if dirty {
                if let Err(error) = log.flush().await {
                    tracing::error!(dir = %log.inner.dir.display(), %error, "interval flush failed");
                }
            }
        }
    })
    .detach();
}

fn list_segments(dir: &Path) -> Result<Vec<Offset>> {
    let mut bases = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io_error("list log directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list log directory", dir, e))?;
        if let Some(base) = entry.file_name().to_str().and_then(parse_segment_name) {
            bases.push(base);
        }
    }
    bases.sort();
    Ok(bases)
}

async fn open_sealed_segment(dir: &Path, base: Offset, next: Offset, config: &LogConfig) -> Result<Segment> {
    let log_path = segment_path(dir, base, LOG_SUFFIX);
    let size = std::fs::metadata(&log_path)
        .map_err(|e| io_error("stat segment", &log_path, e))?
        .len();
    let relative_end = next.0 - base.0;
    let read = |suffix| std::fs::read(segment_path(dir, base, suffix)).map_err(|e| e.to_string());
    let indexes = read(OFFSET_INDEX_SUFFIX)
        .and_then(|b| OffsetIndex::decode(&b, size, relative_end))
        .and_then(|o| Ok((o, TimeIndex::decode(&read(TIME_INDEX_SUFFIX)?, relative_end)?)));
    match indexes {
        Ok((offset_index, time_index)) if time_index.last().is_some() && size > 0 => {
            let mut segment = Segment::new(dir, base);
            segment.size = size;
            segment.next_offset = next;
            segment.max_timestamp_ms = time_index.last().expect("checked").timestamp_ms;
            segment.offset_index = offset_index;
            segment.time_index = time_index;
            Ok(segment)
        }
        other => {
            let reason = other.err().unwrap_or_else(|| "empty time index".into());
            tracing::warn!(segment = %log_path.display(), %reason, "rebuilding the indexes of a sealed segment");
            let file = DmaFile::open(&log_path)
                .await
                .map_err(|e| io_error("open segment", &log_path, e))?;
            let scan = scan_segment(&file, dir, base, size, config, true).await?;
            file.close()
                .await
                .map_err(|e| io_error("close segment", &log_path, e))?;
            if let Some((position, reason)) = scan.defect {
                return Err(StorageError::CorruptBatch {
                    path: log_path,
                    position,
                    reason: format!("{reason} (in a sealed segment: refusing to drop the batches after it)"),
                });
            }
            let mut segment = scan.segment;
            // A cleaned segment may end in a gap (or hold nothing at all):
            // its offsets run to the next segment's base all the same.
            if segment.next_offset > next {
                return Err(StorageError::CorruptBatch {
                    path: log_path,
                    position: FilePosition(segment.size),
                    reason: format!(
                        "sealed segment runs to offset {} past the next's beginning at {next}",
                        segment.next_offset
                    ),
                });
            }
            segment.next_offset = next;
            segment.index_max_timestamp();
            write_index_file(
                segment_path(dir, base, OFFSET_INDEX_SUFFIX),
                segment.offset_index.encode(),
            )
            .await?;
            write_index_file(segment_path(dir, base, TIME_INDEX_SUFFIX), segment.time_index.encode()).await?;
            Ok(segment)
        }
    }
}

/// Scans the active segment, cuts a torn or corrupt tail, syncs what stays,
/// and opens an appender at its end.
async fn recover_active_segment(dir: &Path, base: Offset, config: &LogConfig) -> Result<(Segment, SegmentAppender)> {
    let path = segment_path(dir, base, LOG_SUFFIX);
    let file = glommio::io::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(&path)
        .await
        .map_err(|e| io_error("open segment", &path, e))?;
    let file_bytes = file.file_size().await.map_err(|e| io_error("stat segment", &path, e))?;
    let scan = scan_segment(&file, dir, base, file_bytes, config, false).await?;
    let end = scan.segment.size;
    if let Some((position, reason)) = scan
        .defect
        .as_ref()
        .filter(|(_, reason)| reason != crate::recovery::ZEROS)
    {
        tracing::warn!(
            segment = %path.display(), %position, %reason, dropped_bytes = file_bytes - end,
            "cutting the torn tail of the active segment"
        );
    }
    if end < file_bytes {
        file.truncate(end)
            .await
            .map_err(|e| io_error("truncate segment", &path, e))?;
    }
    file.fdatasync()
        .await
        .map_err(|e| io_error("fdatasync segment", &path, e))?;
    file.close().await.map_err(|e| io_error("close segment", &path, e))?;
    let appender = SegmentAppender::open(&path, end, config.write_buffer_bytes).await?;
    Ok((scan.segment, appender))
}

/// Writes and syncs a small file (an index, a checkpoint) off the shard.
async fn write_index_file(path: PathBuf, bytes: Vec<u8>) -> Result<()> {
    off_shard(move || {
        use std::io::Write;
        let mut file = std::fs::File::create(&path).map_err(|e| io_error("create index", &path, e))?;
        file.write_all(&bytes).map_err(|e| io_error("write index", &path, e))?;
        file.sync_data().map_err(|e| io_error("sync index", &path, e))
    })
    .await
}

async fn remove_index_files(dir: &Path, base: Offset) -> Result<()> {
    for suffix in [OFFSET_INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        let path = segment_path(dir, base, suffix);
        off_shard(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("remove index", &path, e)),
        })
        .await?;
    }
    Ok(())
}

async fn remove_segment_files(dir: &Path, base: Offset) -> Result<()> {
    remove_index_files(dir, base).await?;
    let path = segment_path(dir, base, LOG_SUFFIX);
    glommio::io::remove(&path)
        .await
        .map_err(|e| io_error("remove segment", &path, e))
}

fn read_log_start_checkpoint(dir: &Path) -> Result<Option<Offset>> {
    let path = dir.join(LOG_START_CHECKPOINT);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(|o| Some(Offset(o)))
            .map_err(|e| StorageError::InvalidLogDir {
                path,
                reason: format!("log start checkpoint {text:?} is not an offset: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read log start checkpoint", &path, e)),
    }
}

/// Refuses a directory whose segments are of another batch format (or of
/// the format before the marker existed), and marks a new one.
async fn check_log_format(dir: &Path, has_segments: bool) -> Result<()> {
    let path = dir.join(LOG_FORMAT_FILE);
    let refused = |found: String| StorageError::InvalidLogDir {
        path: dir.to_path_buf(),
        reason: format!(
            "its segments are in batch format {found}; this corelog reads format {LOG_FORMAT} and does not convert"
        ),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim() == LOG_FORMAT.to_string() => Ok(()),
        Ok(text) => Err(refused(format!("{:?}", text.trim()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && has_segments => {
            Err(refused("1 (no log-format file)".into()))
        }
        // Written before any segment is, off the shard like every write.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            replace_file(dir, LOG_FORMAT_FILE, format!("{LOG_FORMAT}\n").into_bytes()).await
        }
        Err(e) => Err(io_error("read log format", &path, e)),
    }
}

fn read_leader_epoch_checkpoint(dir: &Path) -> Result<LeaderEpochCache> {
    let path = dir.join(LEADER_EPOCH_CHECKPOINT);
    match std::fs::read_to_string(&path) {
        Ok(text) => LeaderEpochCache::decode(&text).map_err(|reason| StorageError::InvalidLogDir {
            path,
            reason: format!("leader epoch checkpoint: {reason}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LeaderEpochCache::default()),
        Err(e) => Err(io_error("read leader epoch checkpoint", &path, e)),
    }
}

async fn write_leader_epoch_checkpoint(dir: &Path, cache: &LeaderEpochCache) -> Result<()> {
    replace_file(dir, LEADER_EPOCH_CHECKPOINT, cache.encode().into_bytes()).await
}

async fn write_log_start_checkpoint(dir: &Path, offset: Offset) -> Result<()> {
    replace_file(dir, LOG_START_CHECKPOINT, offset.0.to_string().into_bytes()).await
}

/// Replaces `dir/name` with `bytes` whole, durably: a crash leaves the old
/// file or the new one, never a mix.
async fn replace_file(dir: &Path, name: &str, bytes: Vec<u8>) -> Result<()> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}.tmp"));
    write_index_file(temp.clone(), bytes).await?;
    off_shard(move || std::fs::rename(&temp, &path).map_err(|e| io_error("rename", &path, e))).await?;
    sync_dir(dir).await
}

/// Makes a directory's entries (a new, renamed or removed file) durable.
async fn sync_dir(dir: &Path) -> Result<()> {
    let dir = dir.to_path_buf();
    off_shard(move || {
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("sync log directory", &dir, e))
    })
    .await
}
