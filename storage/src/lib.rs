//! corelog's storage engine: the partition log.
//!
//! A partition's records live in a directory of segments, each a `.log` file
//! of record batches written with O_DIRECT through glommio's DMA files, with a
//! sparse `.index` (offset to position) and `.timeindex` (timestamp to
//! offset) beside it. This crate owns the record batch format, segments and
//! their indexes, recovery of a torn tail, flushing with group commit,
//! read-ahead and the batch cache for readers, and retention. It knows
//! nothing of sockets or shards: a `PartitionLog` lives on the glommio
//! executor that opened it and is driven from there.

pub mod batch;
pub mod batch_cache;
pub mod blocking;
pub mod error;
pub mod flush_stats;
pub mod offset;

pub use error::{Result, StorageError};
pub use offset::{FilePosition, Offset};
pub mod config;
pub mod device;
pub mod index;
pub mod leader_epoch;
pub mod log;
pub mod read_ahead;
pub mod record_file;
pub mod recovery;
pub mod segment;

pub use config::{CleanupPolicy, Compaction, FlushPolicy, LogConfig, TimestampType};
pub use leader_epoch::{EpochStart, LeaderEpochCache};
pub use log::{AppendInfo, LogRead, LogStats, PartitionLog, ReadBytes, Stamp};
