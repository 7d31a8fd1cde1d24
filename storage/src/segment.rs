//! One segment of a partition log: its files, its in-memory indexes, and (for
//! the active segment) the appender that writes it with O_DIRECT.
//!
//! A segment is named by its base offset, as Kafka names them:
//! `<20-digit base offset>.log`, `.index`, `.timeindex`.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaBuffer, DmaFile};

use crate::batch::BatchInfo;
use crate::config::{TimestampType, BLOCK_BYTES};
use crate::error::{io_error, Result};
use crate::index::{relative, OffsetIndex, OffsetIndexEntry, TimeIndex, TimeIndexEntry};
use crate::offset::{FilePosition, Offset};

pub const LOG_SUFFIX: &str = "log";
pub const OFFSET_INDEX_SUFFIX: &str = "index";
pub const TIME_INDEX_SUFFIX: &str = "timeindex";

pub fn segment_path(dir: &Path, base: Offset, suffix: &str) -> PathBuf {
    dir.join(format!("{:020}.{suffix}", base.0))
}

/// Parses `<20 digits>.log` into its base offset.
pub fn parse_segment_name(name: &str) -> Option<Offset> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok().map(Offset)
}

pub(crate) fn align_down(v: u64) -> u64 {
    v & !(BLOCK_BYTES as u64 - 1)
}

pub(crate) fn align_up(v: u64) -> u64 {
    align_down(v + BLOCK_BYTES as u64 - 1)
}

/// What a log knows of one segment. Lives on the log's shard.
#[derive(Debug)]
pub struct Segment {
    pub base_offset: Offset,
    pub log_path: PathBuf,
    /// Logical bytes of batches; the file may be longer by block padding.
    pub size: u64,
    /// One past the last offset the segment holds.
    pub next_offset: Offset,
    /// Newest timestamp of any batch (by the log's timestamp type).
    pub max_timestamp_ms: i64,
    /// Offset of the batch that first reached `max_timestamp_ms`.
    offset_of_max_timestamp: Offset,
    /// Append time of the first batch, for rolling by age.
    pub first_append_ms: Option<i64>,
    pub offset_index: OffsetIndex,
    pub time_index: TimeIndex,
    bytes_since_index_entry: u64,
    /// Open read handle of a sealed segment; bounded by `open_segments_max`.
    pub read_file: Option<Rc<DmaFile>>,
    /// Bumped each time the cleaner swaps a new file in: a read that looked
    /// a position up in one file must not read it from the next.
    pub generation: u64,
}

impl Segment {
    pub fn new(dir: &Path, base_offset: Offset) -> Segment {
        Segment {
            base_offset,
            log_path: segment_path(dir, base_offset, LOG_SUFFIX),
            size: 0,
            next_offset: base_offset,
            max_timestamp_ms: i64::MIN,
            offset_of_max_timestamp: base_offset,
            first_append_ms: None,
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            bytes_since_index_entry: 0,
            read_file: None,
            generation: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Records a batch just placed at `position`: offsets, indexes, timestamps.
    /// The one place index entries are made, on append and in recovery alike.
    pub fn note_batch(
        &mut self,
        position: FilePosition,
        info: &BatchInfo,
        timestamp_type: TimestampType,
        index_interval_bytes: u32,
    ) {
        assert_eq!(position.0, self.size, "batches are laid end to end");
        // Dense in what is appended (the log gives each batch the next
        // offset); a cleaned segment's batches may leave gaps between them.
        assert!(info.base_offset >= self.next_offset, "offsets increase");
        let timestamp_ms = match timestamp_type {
            TimestampType::CreateTime => info.max_timestamp_ms,
            TimestampType::LogAppendTime => info.append_time_ms,
        };
        if self.bytes_since_index_entry >= u64::from(index_interval_bytes) {
            self.offset_index.push(OffsetIndexEntry {
                relative_offset: relative(self.base_offset, info.base_offset),
                position: u32::try_from(position.0).expect("segment under 4 GiB"),
            });
            self.index_max_timestamp();
            self.bytes_since_index_entry = 0;
        }
        if timestamp_ms > self.max_timestamp_ms {
            self.max_timestamp_ms = timestamp_ms;
            self.offset_of_max_timestamp = info.base_offset;
        }
        if self.first_append_ms.is_none() {
            self.first_append_ms = Some(info.append_time_ms);
        }
        self.bytes_since_index_entry += info.frame_bytes as u64;
        self.size += info.frame_bytes as u64;
        self.next_offset = info.next_offset();
    }

    /// Adds a time index entry for the newest timestamp seen, if it is newer
    /// than the last entry. Done at each offset index interval and on seal.
    pub fn index_max_timestamp(&mut self) {
        if self.size == 0 {
            return;
        }
        let newer = self
            .time_index
            .last()
            .is_none_or(|last| self.max_timestamp_ms > last.timestamp_ms);
        if newer {
            let relative_offset = relative(self.base_offset, self.offset_of_max_timestamp);
            // A newer maximum is always reached at a later batch than the last entry's.
            self.time_index.push(TimeIndexEntry {
                timestamp_ms: self.max_timestamp_ms,
                relative_offset,
            });
        }
    }
}

/// Appends bytes to the active segment's `.log` file with O_DIRECT.
///
/// The segment's unwritten tail lives in `buffer`, which always starts at a
/// block boundary of the file, so every write is aligned. An append copies
/// the batch into the buffer and returns: the bytes are readable at once, from
/// memory, but not durable. When the buffer is full, or on a flush, the
/// buffer is sealed (it becomes `in_flight`, shared with the write and with
/// readers) and the spare buffer takes over, beginning with a copy of the
/// partial last block. A written buffer goes to the batch cache, or becomes
/// the spare if the cache does not keep it; without a spare the next seal
/// takes a buffer the cache evicted. So a log flushed thousands of times a
/// second reuses its two buffers rather than allocating 2 MiB (and, past
/// glommio's registered pool, mapping, faulting in and unmapping it) per
/// flush, and a log whose buffers the cache keeps takes back the ones it
/// evicts.
///
/// Invariants: `position_written` is block aligned and at most `buffer_base`;
/// bytes below `memory_start()` are on disk; at most one write is in flight
/// (the log's io lock serializes them), so a rewrite of the partial block can
/// never be reordered behind an older write of it.
pub struct SegmentAppender {
    pub file: Rc<DmaFile>,
    path: PathBuf,
    buffer_bytes: usize,
    buffer: DmaBuffer,
    /// File position of `buffer[0]`; block aligned.
    buffer_base: u64,
    /// Bytes of the buffer holding data.
    buffer_len: usize,
    /// A sealed buffer being written.
    in_flight: Option<InFlight>,
    /// The buffer the next seal takes over, once one has been written.
    spare: Option<DmaBuffer>,
    /// Logical end of what has been handed to the disk (the last write may
    /// have padded a partial block with zeros).
    position_submitted: u64,
    /// The file's size: preallocated ahead of the writes.
    pub preallocated: u64,
    /// No zero-ahead write (see `LogConfig::segment_zero_ahead_bytes`) ever
    /// touches the file below this: it is at or past every position data has
    /// been handed to the disk for, and a zero write only starts from it.
    pub zeroed_end: u64,
}

/// A sealed buffer: bytes `[position, end)` of the segment from its first
/// byte (its write may stop short of `end`, at the last whole block).
pub struct InFlight {
    pub position: u64,
    pub end: u64,
    pub buffer: Rc<DmaBuffer>,
}

/// A sealed buffer ready to be written at `position`.
pub struct SealedWrite {
    pub file: Rc<DmaFile>,
    pub buffer: Rc<DmaBuffer>,
    pub position: u64,
    /// Logical end position covered by this write.
    pub end: u64,
}

impl SegmentAppender {
    /// Opens (or creates) `path` for appending at `end`, the logical end of
    /// its batches. The partial last block is read back into the buffer, so
    /// the next write rewrites it whole.
    pub async fn open(path: &Path, end: u64, buffer_bytes: usize) -> Result<SegmentAppender> {
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .dma_open(path)
            .await
            .map_err(|e| io_error("open segment", path, e))?;
        let buffer_base = align_down(end);
        let buffer_len = (end - buffer_base) as usize;
        let mut buffer = file.alloc_dma_buffer(buffer_bytes);
        if buffer_len > 0 {
            let block = file
                .read_at_aligned(buffer_base, BLOCK_BYTES)
                .await
                .map_err(|e| io_error("read partial block", path, e))?;
            assert!(block.len() >= buffer_len, "the partial block is on disk");
            buffer.as_bytes_mut()[..buffer_len].copy_from_slice(&block[..buffer_len]);
        }
        Ok(SegmentAppender {
            file: Rc::new(file),
            path: path.to_path_buf(),
            buffer_bytes,
            buffer,
            buffer_base,
            buffer_len,
            in_flight: None,
            spare: None,
            position_submitted: end,
            preallocated: end,
            zeroed_end: align_up(end),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logical end of the segment: every byte appended so far.
    pub fn position_appended(&self) -> u64 {
        self.buffer_base + self.buffer_len as u64
    }

    /// Bytes below this position are on disk; from it on, they are in memory.
    pub fn memory_start(&self) -> u64 {
        self.in_flight
            .as_ref()
            .map_or(self.buffer_base, |in_flight| in_flight.position)
    }

    /// The sealed buffer being written, if any: readers are served from it
    /// without a copy.
    pub fn in_flight(&self) -> Option<&InFlight> {
        self.in_flight.as_ref()
    }

    /// Makes the buffer hold `buffer_bytes` from now on, if that is more
    /// than it holds (a topic's largest batch grew): the bytes not yet
    /// written move to a new buffer. A buffer never shrinks while the
    /// segment is active; the next segment's takes the configured size.
    pub fn grow_buffer(&mut self, buffer_bytes: usize) {
        if buffer_bytes <= self.buffer_bytes {
            return;
        }
        let mut bigger = self.file.alloc_dma_buffer(buffer_bytes);
        bigger.as_bytes_mut()[..self.buffer_len].copy_from_slice(&self.buffer.as_bytes()[..self.buffer_len]);
        self.buffer = bigger;
        self.buffer_bytes = buffer_bytes;
        // A spare of the old size would not do for the next seal.
        self.spare = None;
    }

    pub fn free_bytes(&self) -> usize {
        self.buffer_bytes - self.buffer_len
    }

    /// Whether bytes have been appended since the last write was submitted.
    pub fn has_unwritten(&self) -> bool {
        self.position_appended() > self.position_submitted
    }

    /// Copies a frame to the end of the buffer and returns the part of the
    /// buffer now holding it, for the log to stamp. The caller checked room.
    pub fn append(&mut self, frame: &[u8]) -> (FilePosition, &mut [u8]) {
        assert!(frame.len() <= self.free_bytes(), "the log makes room before it appends");
        let position = FilePosition(self.position_appended());
        let at = self.buffer_len;
        self.buffer_len += frame.len();
        let target = &mut self.buffer.as_bytes_mut()[at..at + frame.len()];
        target.copy_from_slice(frame);
        (position, target)
    }

    /// Seals the buffer for a write. `pad` writes the partial last block too,
    /// zero padded (a flush); without it only whole blocks go (the buffer is
    /// full). Returns None when there is nothing to write.
    pub fn seal(&mut self, pad: bool) -> Option<SealedWrite> {
        assert!(self.in_flight.is_none(), "one write in flight at a time");
        let whole = align_down(self.buffer_len as u64) as usize;
        let write_len = if pad {
            align_up(self.buffer_len as u64) as usize
        } else {
            whole
        };
        if write_len == 0 || !self.has_unwritten() {
            return None;
        }
        let mut next = self
            .spare
            .take()
            .or_else(|| crate::batch_cache::recycled_buffer(self.buffer_bytes))
            .unwrap_or_else(|| self.file.alloc_dma_buffer(self.buffer_bytes));
        debug_assert_eq!(next.len(), self.buffer_bytes);
        let tail = self.buffer_len - whole;
        next.as_bytes_mut()[..tail].copy_from_slice(&self.buffer.as_bytes()[whole..self.buffer_len]);
        let mut sealed = std::mem::replace(&mut self.buffer, next);
        // Zeros past the logical end read back as an empty frame: recovery
        // stops there instead of parsing stale memory.
        if write_len > self.buffer_len {
            sealed.as_bytes_mut()[self.buffer_len..write_len].fill(0);
        }
        sealed.trim_to_size(write_len);
        let sealed = Rc::new(sealed);
        let position = self.buffer_base;
        let end = self.position_appended();
        self.in_flight = Some(InFlight {
            position,
            end,
            buffer: sealed.clone(),
        });
        self.buffer_base += whole as u64;
        self.buffer_len = tail;
        self.position_submitted = if pad {
            end
        } else {
            self.position_submitted.max(self.buffer_base)
        };
        Some(SealedWrite {
            file: self.file.clone(),
            buffer: sealed,
            position,
            end,
        })
    }

    /// The write of the sealed buffer finished (or failed: then the log is
    /// failed and the appender is never used again). Returns the buffer, for
    /// the batch cache or `give_spare`.
    pub fn write_done(&mut self) -> InFlight {
        self.in_flight.take().expect("a write was in flight")
    }

    /// Takes a written buffer back as the next seal's, unless a reader still
    /// holds a slice of it (then it is freed with the reader's).
    pub fn give_spare(&mut self, buffer: Rc<DmaBuffer>) {
        if let Ok(mut buffer) = Rc::try_unwrap(buffer) {
            buffer.restore_size();
            self.spare = Some(buffer);
        }
    }

    /// Appends the bytes at `[position, position + len)`, from memory, to
    /// `out` (no zeroing of a buffer first: a consumer at the tail takes a
    /// copy per fetch). The range must lie within `[memory_start(),
    /// position_appended())`.
    pub fn extend_from_memory(&self, position: u64, len: usize, out: &mut Vec<u8>) {
        assert!(position >= self.memory_start());
        assert!(position + len as u64 <= self.position_appended());
        let mut at = position;
        let mut left = len;
        // The in-flight buffer may overlap the current one by one block (a
        // flush wrote the partial block): the current buffer is newer.
        if let Some(in_flight) = &self.in_flight {
            if at < self.buffer_base {
                let n = ((self.buffer_base - at) as usize).min(left);
                let from = (at - in_flight.position) as usize;
                out.extend_from_slice(&in_flight.buffer.as_bytes()[from..from + n]);
                left -= n;
                at += n as u64;
            }
        }
        if left > 0 {
            let from = (at - self.buffer_base) as usize;
            out.extend_from_slice(&self.buffer.as_bytes()[from..from + left]);
        }
    }
}
