//! Rebuilding a segment's state from its `.log` file: on open for the active
//! segment (whose tail a crash may have torn), and for a sealed segment whose
//! index files are missing or damaged.

use std::path::Path;

use glommio::io::DmaFile;

use crate::batch::{check_frame, frame_length, BatchLimits, FRAME_LENGTH_BYTES};
use crate::config::LogConfig;
use crate::error::{io_error, Result};
use crate::offset::{FilePosition, Offset};
use crate::segment::Segment;

/// Bytes read from disk at a time while scanning a segment.
const SCAN_CHUNK_BYTES: usize = 4 << 20;

/// Batches already on disk are checked against the format's own limits, not
/// the current configuration: a lowered `batch_bytes_max` must not make
/// recovery cut away batches that were valid when they were appended.
const RECOVERY_LIMITS: BatchLimits = BatchLimits::sized(i32::MAX as usize, usize::MAX);

/// Why a scan stops at zeros: the normal end of a preallocated file, or of a
/// partial block padded by a flush.
pub const ZEROS: &str = "an empty frame (preallocated space, zero padding or a torn length prefix)";

/// A segment rebuilt from its log, and where and why the scan stopped early.
pub struct Scan {
    pub segment: Segment,
    /// The first position that does not hold a complete, valid batch.
    pub defect: Option<(FilePosition, String)>,
}

/// Reads every batch of `file` from the start, checking each fully (length,
/// rkyv validation, crc32c, dense offsets from `base`, leader epochs never
/// going back), and rebuilds the segment's indexes. Stops at the first batch
/// that fails. A `sealed` segment may have been cleaned: its batches may be
/// compacted and its offsets may jump between them (still increasing).
pub async fn scan_segment(
    file: &DmaFile,
    dir: &Path,
    base: Offset,
    file_bytes: u64,
    config: &LogConfig,
    sealed: bool,
) -> Result<Scan> {
    let limits = BatchLimits {
        compacted_allowed: sealed,
        ..RECOVERY_LIMITS
    };
    let mut segment = Segment::new(dir, base);
    let path = segment.log_path.clone();
    let mut position = 0u64;
    let mut chunk_position = 0u64;
    let mut leader_epoch = 0i32;
    let mut chunk = file
        .read_at(0, 0)
        .await
        .map_err(|e| io_error("read segment", &path, e))?;
    let defect = loop {
        if position >= file_bytes {
            break None;
        }
        let in_chunk = ((position - chunk_position) as usize).min(chunk.len());
        let needed = frame_length(&chunk[in_chunk..]).unwrap_or(FRAME_LENGTH_BYTES);
        if chunk.len() - in_chunk < needed {
            let remaining = (file_bytes - position) as usize;
            if needed > remaining {
                break Some(format!(
                    "a batch of {needed} bytes runs past the file's end ({remaining} bytes left)"
                ));
            }
            let len = needed.max(SCAN_CHUNK_BYTES).min(remaining);
            chunk = file
                .read_at(position, len)
                .await
                .map_err(|e| io_error("read segment", &path, e))?;
            chunk_position = position;
            if chunk.len() < needed {
                break Some(format!("short read: {} of {needed} bytes", chunk.len()));
            }
            continue;
        }
        let available = &chunk[in_chunk..];
        if needed == FRAME_LENGTH_BYTES {
            break Some(ZEROS.to_string());
        }
        let info = match check_frame(&available[..needed], &limits) {
            Ok(info) => info,
            Err(e) => break Some(e.to_string()),
        };
        let in_order = match sealed {
            false => info.base_offset == segment.next_offset,
            true => info.base_offset >= segment.next_offset,
        };
        if !in_order {
            break Some(format!(
                "batch has base offset {} where {} was expected",
                info.base_offset, segment.next_offset
            ));
        }
        if info.leader_epoch < leader_epoch {
            break Some(format!(
                "batch at offset {} has leader epoch {} after a batch of epoch {leader_epoch}",
                info.base_offset, info.leader_epoch
            ));
        }
        leader_epoch = info.leader_epoch;
        segment.note_batch(
            FilePosition(position),
            &info,
            config.timestamp_type,
            config.index_interval_bytes,
        );
        position += needed as u64;
    };
    Ok(Scan {
        segment,
        defect: defect.map(|reason| (FilePosition(position), reason)),
    })
}
