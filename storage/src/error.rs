//! The storage crate's one error type. Every variant names what was wrong and
//! where: which path, offset or position.

use std::io;
use std::path::PathBuf;

use crate::offset::{FilePosition, Offset};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("record batch of {size} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge { size: usize, max: usize },

    #[error("record at offset delta {offset_delta} is {size} bytes, over the limit of {max} bytes")]
    RecordTooLarge { offset_delta: u32, size: usize, max: usize },

    #[error("record at offset delta {offset_delta} has no key: a compacted topic keeps the last record of each key")]
    KeyRequired { offset_delta: u32 },

    /// A read raced the log cleaner's swap of segment `base`: asked again
    /// by `PartitionLog::read`, never seen by its callers.
    #[error("segment {base} was replaced by its cleaned copy during the read")]
    SegmentReplaced { base: crate::offset::Offset },

    #[error("malformed record batch: {reason}")]
    BatchMalformed { reason: String },

    #[error("record batch crc32c mismatch: header says {stored:#010x}, bytes hash to {computed:#010x}")]
    BatchCrcMismatch { stored: u32, computed: u32 },

    #[error("corrupt record batch in {path} at position {position}: {reason}")]
    CorruptBatch {
        path: PathBuf,
        position: FilePosition,
        reason: String,
    },

    #[error("offset {offset} is out of range: the log holds [{log_start}, {log_end})")]
    OffsetOutOfRange {
        offset: Offset,
        log_start: Offset,
        log_end: Offset,
    },

    #[error("invalid log configuration: {reason}")]
    InvalidConfig { reason: String },

    /// A record file (`record_file`) damaged before its last batch.
    #[error("{path}: {reason}")]
    RecordFile { path: PathBuf, reason: String },

    #[error("invalid log directory {path}: {reason}")]
    InvalidLogDir { path: PathBuf, reason: String },

    /// A replicated append that would break the log's order: a leader epoch
    /// older than the last batch's, or a replica's batch stamped for another
    /// offset than the log's end. Nothing was appended.
    #[error("append to {path} refused: {reason}")]
    AppendRefused { path: PathBuf, reason: String },

    /// A write or fdatasync failed: the page cache may have dropped data that
    /// we believed written, so the log refuses all further appends until it
    /// is reopened and recovered from what is really on disk.
    #[error("log {path} is failed after an earlier I/O error and must be reopened")]
    LogFailed { path: PathBuf },

    #[error("log {path} is closed")]
    LogClosed { path: PathBuf },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Wraps an I/O error with the operation and path it came from.
pub(crate) fn io_error(op: &'static str, path: &std::path::Path, source: impl Into<io::Error>) -> StorageError {
    StorageError::Io {
        op,
        path: path.to_path_buf(),
        source: source.into(),
    }
}
