//! A partition log's settings and limits, checked once when the log opens.

use crate::batch::BatchLimits;
use crate::error::{Result, StorageError};

/// Block size that O_DIRECT positions and lengths are aligned to.
pub const BLOCK_BYTES: usize = 4096;

/// When a log makes appended bytes durable (fdatasync) without being asked.
/// Whatever the policy, `PartitionLog::flush` and `wait_durable` make them
/// durable on demand, sharing one fdatasync among all who wait (group commit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Every append returns only once its batch is durable.
    EveryAppend,
    /// A background task flushes every this many milliseconds.
    IntervalMs(u64),
    /// The append that brings the unflushed bytes to this many flushes them.
    Bytes(u64),
    /// Only explicit flushes, a roll and close make bytes durable.
    Manual,
}

/// Which timestamp the time index and time-based retention use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    /// The producer's record timestamps (`max_timestamp_ms`).
    CreateTime,
    /// The log's append time (`append_time_ms`).
    LogAppendTime,
}

/// What becomes of a log's sealed segments (Kafka's `cleanup.policy`):
/// deleted past retention, compacted to the last record of each key, or
/// both. At least one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanupPolicy {
    pub delete: bool,
    pub compact: bool,
}

impl CleanupPolicy {
    pub const DELETE: CleanupPolicy = CleanupPolicy {
        delete: true,
        compact: false,
    };
}

/// When a compacted log is cleaned, and how long its tombstones stay
/// (Kafka's names, in `LogConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct Compaction {
    /// The share of the log not yet cleaned past which it is cleaned.
    pub min_cleanable_dirty_ratio: f64,
    /// A record younger than this is not cleaned away.
    pub min_compaction_lag_ms: u64,
    /// A record older than this is cleaned whatever the dirty ratio.
    pub max_compaction_lag_ms: Option<u64>,
    /// How long a tombstone stays readable once its segment was cleaned.
    pub delete_retention_ms: u64,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: None,
            delete_retention_ms: 24 * 3600 * 1000,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub cleanup: CleanupPolicy,
    pub compaction: Compaction,
    /// Roll to a new segment before the active one would pass this size.
    pub segment_bytes: u64,
    /// Roll to a new segment once the active one's first batch is this old.
    pub segment_ms: Option<u64>,
    /// One offset index entry per this many bytes of batches.
    pub index_interval_bytes: u32,
    /// Largest record batch frame accepted.
    pub batch_bytes_max: usize,
    /// Largest record (key, value and headers) accepted.
    pub record_bytes_max: usize,
    /// Size of each of the active segment's two O_DIRECT write buffers.
    pub write_buffer_bytes: usize,
    /// The active segment's file is extended (fallocate) this much ahead of
    /// its writes. Writes inside the file's size can run asynchronously in
    /// io_uring; writes that extend it are handed by ext4 to an io-wq worker
    /// thread that shares the shard's core and serializes with it.
    pub segment_preallocate_bytes: u64,
    /// How far ahead of its writes a log that is flushed often (acks=all,
    /// a short flush interval) keeps its active segment written with zeros
    /// and synced; 0 never. ext4 maps fallocated space as unwritten extents:
    /// the first write into one converts it, and the next fdatasync must
    /// commit that to the journal. Overwriting blocks already written costs
    /// the fdatasync only the device's cache flush (PostgreSQL zero-fills its
    /// WAL segments for the same reason). A log flushed rarely keeps plain
    /// preallocation: zeroing would write every byte twice.
    pub segment_zero_ahead_bytes: u64,
    /// How far ahead of a reader reading from disk the log reads, in chunks
    /// of `read_ahead::READ_AHEAD_CHUNK_BYTES`, several in flight (see
    /// `read_ahead`); 0 never. Bounded per shard too
    /// (`read_ahead::set_thread_budget`).
    pub read_ahead_bytes: usize,
    pub flush: FlushPolicy,
    /// Delete sealed segments whose newest timestamp is older than this.
    pub retention_ms: Option<u64>,
    /// Delete the oldest sealed segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Sealed segments whose files are kept open for reads at once.
    pub open_segments_max: usize,
    pub timestamp_type: TimestampType,
}

/// The most a log zeroes ahead of its writes (see
/// `LogConfig::segment_zero_ahead_bytes`).
pub const SEGMENT_ZERO_AHEAD_BYTES_MAX: u64 = 256 << 20;

/// The most a log reads ahead of one reader.
pub const READ_AHEAD_BYTES_MAX: usize = 256 << 20;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            cleanup: CleanupPolicy::DELETE,
            compaction: Compaction::default(),
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * 24 * 3600 * 1000),
            index_interval_bytes: 4096,
            batch_bytes_max: 1 << 20,
            record_bytes_max: 1 << 20,
            write_buffer_bytes: 2 << 20,
            segment_preallocate_bytes: 32 << 20,
            segment_zero_ahead_bytes: 4 << 20,
            read_ahead_bytes: 8 << 20,
            flush: FlushPolicy::Manual,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            open_segments_max: 64,
            timestamp_type: TimestampType::CreateTime,
        }
    }
}

impl LogConfig {
    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            batch_bytes_max: self.batch_bytes_max,
            record_bytes_max: self.record_bytes_max,
            keys_required: self.cleanup.compact,
            compacted_allowed: false,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(StorageError::InvalidConfig { reason });
        // Index entries hold 32-bit positions, as Kafka's do.
        if self.segment_bytes == 0 || self.segment_bytes > i32::MAX as u64 {
            return invalid(format!("segment_bytes {} must be in 1..=2^31-1", self.segment_bytes));
        }
        if self.index_interval_bytes == 0 {
            return invalid("index_interval_bytes must be positive".into());
        }
        if self.batch_bytes_max < 64 {
            return invalid(format!(
                "batch_bytes_max {} is too small for any batch",
                self.batch_bytes_max
            ));
        }
        if self.record_bytes_max == 0 {
            return invalid("record_bytes_max must be positive".into());
        }
        if self.write_buffer_bytes % BLOCK_BYTES != 0 {
            return invalid(format!(
                "write_buffer_bytes {} must be a multiple of {BLOCK_BYTES}",
                self.write_buffer_bytes
            ));
        }
        // A batch must fit in a buffer beside the partial block carried over.
        if self.write_buffer_bytes < self.batch_bytes_max + BLOCK_BYTES {
            return invalid(format!(
                "write_buffer_bytes {} must be at least batch_bytes_max {} plus one block",
                self.write_buffer_bytes, self.batch_bytes_max
            ));
        }
        if self.segment_preallocate_bytes == 0 || self.segment_preallocate_bytes % BLOCK_BYTES as u64 != 0 {
            return invalid(format!(
                "segment_preallocate_bytes {} must be a positive multiple of {BLOCK_BYTES}",
                self.segment_preallocate_bytes
            ));
        }
        if self.segment_zero_ahead_bytes % BLOCK_BYTES as u64 != 0
            || self.segment_zero_ahead_bytes > SEGMENT_ZERO_AHEAD_BYTES_MAX
        {
            return invalid(format!(
                "segment_zero_ahead_bytes {} must be a multiple of {BLOCK_BYTES} and at most {SEGMENT_ZERO_AHEAD_BYTES_MAX}",
                self.segment_zero_ahead_bytes
            ));
        }
        if self.read_ahead_bytes > READ_AHEAD_BYTES_MAX || self.read_ahead_bytes % BLOCK_BYTES != 0 {
            return invalid(format!(
                "read_ahead_bytes {} must be a multiple of {BLOCK_BYTES} and at most {READ_AHEAD_BYTES_MAX}",
                self.read_ahead_bytes
            ));
        }
        if let FlushPolicy::IntervalMs(0) | FlushPolicy::Bytes(0) = self.flush {
            return invalid("a flush interval must be positive".into());
        }
        if self.open_segments_max == 0 {
            return invalid("open_segments_max must be positive".into());
        }
        if !self.cleanup.delete && !self.cleanup.compact {
            return invalid("the cleanup policy must delete, compact, or both".into());
        }
        let ratio = self.compaction.min_cleanable_dirty_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return invalid(format!("min_cleanable_dirty_ratio {ratio} must be in 0..=1"));
        }
        if let Some(max) = self.compaction.max_compaction_lag_ms {
            if max == 0 || max < self.compaction.min_compaction_lag_ms {
                return invalid(format!(
                    "max_compaction_lag_ms {max} must be positive and at least min_compaction_lag_ms {}",
                    self.compaction.min_compaction_lag_ms
                ));
            }
        }
        Ok(())
    }
}
