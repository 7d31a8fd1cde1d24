//! The log cleaner: compaction of a partition log's sealed segments to
//! the last record of each key (Kafka's log cleaner).
//!
//! A pass reads the log from its start up to a point the caller chooses
//! (below the active segment; in a replicated partition, below what every
//! replica committed) and maps each key to its last offset there. It then
//! rewrites each sealed segment wholly below the point, keeping a record
//! only if it is its key's last, a record without a key (none is taken
//! into a compacted topic, but one may predate the policy), or part of a
//! control batch; of an idempotent producer's last batch, its last record
//! stays whatever else goes, so that the batch's header (the producer's
//! epoch and last sequence) is there to rebuild the producer's state from. A tombstone (a key with no value) that is its key's last
//! goes too once its batch was appended `delete_retention_ms` before the
//! pass's `now_ms`. Records keep their offsets and batches their headers
//! (`batch::retain`): a cleaned log has gaps, as a compacted Kafka log has.
//!
//! Given the same log, point and `now_ms`, a pass keeps the same records:
//! replicas that clean at the same point of their Raft log hold the same
//! batches after it.
//!
//! The cleaned segment is written beside the old one (`.cleaned` files,
//! with std::fs off the shard: the cleaner is background work), synced,
//! then swapped in under the io lock: each file renamed to `.swap`, the
//! log's last (its `.swap` says the set is whole), then each renamed over
//! the old, the indexes first. A crash before the log's `.swap` leaves the
//! old segment (the partial files are removed at open); after it, open
//! finishes the swap (`finish_swaps`). Either way, old or new, never
//! neither.

use std::collections::HashMap;

use super::*;
use crate::batch::{access, frames, retain, Retained};

/// Most bytes of keys a pass maps (with `MAP_ENTRY_BYTES` each beside):
/// a pass that would map more cleans only up to where its map filled, and
/// the next goes on from there.
pub const CLEAN_MAP_BYTES_MAX: usize = 64 << 20;
/// What one key costs the map besides its bytes.
const MAP_ENTRY_BYTES: usize = 48;
/// Bytes read from the log at a time.
const CLEAN_READ_BYTES: usize = 4 << 20;
/// Bytes of cleaned batches gathered before they are written out.
const CLEAN_WRITE_BYTES: usize = 4 << 20;

/// The suffix of a cleaned file being written, and of one ready to swap in.
const CLEANED: &str = "cleaned";
const SWAP: &str = "swap";

/// What a cleaning pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// Segments rewritten.
    pub segments: usize,
    /// Bytes of the segments before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Records dropped: superseded, or tombstones past their retention.
    pub records_removed: u64,
    /// Every sealed segment below this offset is clean.
    pub cleaned_to: Offset,
}

/// Holds a pass to `bytes_per_second` of what it reads: the cleaner's
/// disk use stays within its share, whatever the log's size.
struct Throttle {
    bytes_per_second: u64,
    started: std::time::Instant,
    bytes: u64,
}

impl Throttle {
    fn new(bytes_per_second: u64) -> Throttle {
        Throttle {
            bytes_per_second,
            started: std::time::Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `bytes` read, then waits until the pass is within its rate.
    async fn take(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
        if self.bytes_per_second == 0 {
            return;
        }
        let due = std::time::Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_second as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            glommio::timer::sleep(due - elapsed).await;
        }
    }
}

/// A segment as the cleaner's caller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentStat {
    pub base_offset: Offset,
    /// One past its last offset.
    pub next_offset: Offset,
    pub size: u64,
    pub max_timestamp_ms: i64,
}

/// What every segment of one pass is cleaned against.
struct Pass<'a> {
    map: &'a OffsetMap,
    /// A tombstone appended before this goes.
    horizon_ms: i64,
    config: &'a LogConfig,
}

/// Each key's last offset below the map's end.
struct OffsetMap {
    last: HashMap<Box<[u8]>, u64>,
    /// Each idempotent producer's last batch below the map's end, by base
    /// offset: kept (one record of it at least) so that its sequence and
    /// epoch survive the clean, as Kafka keeps it.
    producers: HashMap<i64, u64>,
    bytes: usize,
    /// Offsets below this are mapped.
    end: Offset,
}

impl PartitionLog {
    /// Compacts the sealed segments wholly below `up_to` (see the module
    /// docs): answers what it did. Appends and reads go on meanwhile; a
    /// segment retention, a cut or another pass changed meanwhile is left
    /// as it is.
    /// It reads at most `bytes_per_second` (0: as fast as it can).
    pub async fn clean(&self, up_to: Offset, now_ms: i64, bytes_per_second: u64) -> Result<CleanStats> {
        let config = self.inner.config();
        let up_to = up_to.min(self.inner.state.borrow().active().base_offset);
        let mut throttle = Throttle::new(bytes_per_second);
        let map = self.map_keys(up_to, &mut throttle).await?;
        let sealed: Vec<(Offset, Offset)> = {
            let st = self.inner.state.borrow();
            st.usable(&self.inner.dir)?;
            let active = st.active().base_offset;
            st.segments
                .values()
                .filter(|s| s.base_offset != active && s.next_offset <= map.end)
                .map(|s| (s.base_offset, s.next_offset))
                .collect()
        };
        let horizon_ms =
            now_ms.saturating_sub(i64::try_from(config.compaction.delete_retention_ms).unwrap_or(i64::MAX));
        let mut stats = CleanStats::default();
        for (base, next) in sealed {
            let pass = Pass {
                map: &map,
                horizon_ms,
                config: &config,
            };
            self.clean_segment(base, next, &pass, &mut stats, &mut throttle).await?;
            stats.cleaned_to = next;
        }
        if stats.segments > 0 {
            tracing::debug!(
                dir = %self.inner.dir.display(), segments = stats.segments, before = stats.bytes_before,
                after = stats.bytes_after, removed = stats.records_removed, "cleaned partition log"
            );
        }
        Ok(stats)
    }

    /// Maps each key to its last offset from the log start up to `up_to`,
    /// or up to where `CLEAN_MAP_BYTES_MAX` filled (a whole batch at most
    /// past it, so that a pass always progresses).
    async fn map_keys(&self, up_to: Offset, throttle: &mut Throttle) -> Result<OffsetMap> {
        let mut map = OffsetMap {
            last: HashMap::new(),
            producers: HashMap::new(),
            bytes: 0,
            end: self.log_start_offset(),
        };
        let mut from = map.end;
        'read: while from < up_to {
            let read = self.read(from, CLEAN_READ_BYTES).await?;
            if read.bytes.is_empty() {
                break;
            }
            throttle.take(read.bytes.len()).await;
            for frame in frames(&read.bytes) {
                let info = peek_header(frame)?;
                if info.next_offset() > up_to || map.bytes > CLEAN_MAP_BYTES_MAX {
                    break 'read;
                }
                if info.producer_id >= 0 {
                    map.producers.insert(info.producer_id, info.base_offset.0);
                }
                if !info.is_control() {
                    let batch = access(frame)?;
                    for record in batch.records.iter() {
                        let Some(key) = record.key.as_ref() else { continue };
                        let offset = info.base_offset.0 + u64::from(record.offset_delta.to_native());
                        if map.last.insert(Box::from(key.as_slice()), offset).is_none() {
                            map.bytes += key.len() + MAP_ENTRY_BYTES;
                        }
                    }
                }
                map.end = info.next_offset();
            }
            if read.next_offset <= from {
                break;
            }
            from = read.next_offset;
        }
        Ok(map)
    }

    /// Rewrites segment `base` (offsets up to `next`) with what `map` keeps
    /// of it, and swaps it in.
    async fn clean_segment(
        &self,
        base: Offset,
        next: Offset,
        pass: &Pass<'_>,
        stats: &mut CleanStats,
        throttle: &mut Throttle,
    ) -> Result<()> {
        let Pass {
            map,
            horizon_ms,
            config,
        } = *pass;
        let dir = self.inner.dir.clone();
        let Some(generation) = self.inner.state.borrow().segments.get(&base).map(|s| s.generation) else {
            return Ok(());
        };
        let [(_, offset_index_path, _), (_, time_index_path, _), (_, log_path, _)] = swap_paths(&dir, base);
        let file = {
            let path = log_path.clone();
            off_shard(move || std::fs::File::create(&path).map_err(|e| io_error("create cleaned segment", &path, e)))
                .await?
        };
        let file = std::sync::Arc::new(file);
        let mut segment = Segment::new(&dir, base);
        let mut pending: Vec<u8> = Vec::with_capacity(CLEAN_WRITE_BYTES);
        let mut removed = 0u64;
        let mut before = 0u64;
        let log_start = self.log_start_offset();
        let mut from = base.max(log_start);
        while from < next {
            let read = match self.read(from, CLEAN_READ_BYTES).await {
                Ok(read) => read,
                // Retention or a cut took the segment meanwhile.
                Err(StorageError::OffsetOutOfRange { .. }) => return self.drop_cleaned(base).await,
                Err(e) => return Err(e),
            };
            if read.bytes.is_empty() {
                break;
            }
            throttle.take(read.bytes.len()).await;
            for frame in frames(&read.bytes) {
                let info = peek_header(frame)?;
                if info.base_offset >= next {
                    break;
                }
                before += frame.len() as u64;
                let retained = if info.is_control() {
                    Retained::All
                } else {
                    let tombstones_expire = info.append_time_ms < horizon_ms;
                    retain(frame, |offset, record| {
                        let keep = offset >= log_start
                            && match record.key.as_ref() {
                                None => true,
                                Some(key) => {
                                    map.last.get(key.as_slice()) == Some(&offset.0)
                                        && !(record.value.is_none() && tombstones_expire)
                                }
                            };
                        removed += u64::from(!keep);
                        keep
                    })?
                };
                // A producer's last batch keeps its last record at least:
                // the producer's state is rebuilt from batch headers.
                let last_of_producer =
                    info.producer_id >= 0 && map.producers.get(&info.producer_id) == Some(&info.base_offset.0);
                let retained = match retained {
                    Retained::None if last_of_producer => {
                        let last = access(frame)?
                            .records
                            .last()
                            .map(|r| info.base_offset.0 + u64::from(r.offset_delta.to_native()));
                        removed -= 1;
                        retain(frame, |offset, _| Some(offset.0) == last)?
                    }
                    other => other,
                };
                let kept = match &retained {
                    Retained::All => frame,
                    Retained::Some(frame) => frame.as_slice(),
                    Retained::None => continue,
                };
                let info = peek_header(kept)?;
                segment.note_batch(
                    FilePosition(segment.size),
                    &info,
                    config.timestamp_type,
                    config.index_interval_bytes,
                );
                pending.extend_from_slice(kept);
                if pending.len() >= CLEAN_WRITE_BYTES {
                    write_cleaned(&file, &log_path, std::mem::take(&mut pending)).await?;
                }
            }
            from = read.next_offset.max(from.next());
        }
        write_cleaned(&file, &log_path, pending).await?;
        {
            let (file, path) = (file.clone(), log_path.clone());
            off_shard(move || file.sync_all().map_err(|e| io_error("sync cleaned segment", &path, e))).await?;
        }
        drop(file);
        segment.next_offset = next;
        segment.index_max_timestamp();
        write_index_file(offset_index_path, segment.offset_index.encode()).await?;
        write_index_file(time_index_path, segment.time_index.encode()).await?;
        sync_dir(&dir).await?;

        let _permit = self.lock().await?;
        let unchanged = {
            let st = self.inner.state.borrow();
            st.usable(&dir)?;
            st.segments
                .get(&base)
                .is_some_and(|s| s.next_offset == next && s.generation == generation)
                && st.active().base_offset != base
                && st.log_start_offset == log_start
        };
        if !unchanged {
            return self.drop_cleaned(base).await;
        }
        stats.segments += 1;
        stats.bytes_before += before;
        stats.bytes_after += segment.size;
        stats.records_removed += removed;
        swap_in(&dir, base).await?;
        let mut st = self.inner.state.borrow_mut();
        let st = &mut *st;
        // Readers that looked the old segment up read its file again (the
        // new one at its own positions): what the caches hold of the old
        // one goes, and a read that opened a file meanwhile asks again.
        st.cut_epoch += 1;
        crate::batch_cache::forget_segment(self.inner.id, base);
        st.read_ahead
            .borrow_mut()
            .forget_segment(base, &mut st.stats.read_ahead);
        st.open_reads.retain(|b| *b != base);
        segment.generation = generation + 1;
        st.segments.insert(base, segment);
        Ok(())
    }

    /// Every segment's offsets, bytes and newest timestamp, oldest first:
    /// what the cleaner's caller weighs (the dirty share, the age of what
    /// is not clean).
    pub fn segment_stats(&self) -> Vec<SegmentStat> {
        self.inner
            .state
            .borrow()
            .segments
            .values()
            .map(|s| SegmentStat {
                base_offset: s.base_offset,
                next_offset: s.next_offset,
                size: s.size,
                max_timestamp_ms: s.max_timestamp_ms,
            })
            .collect()
    }

    /// Removes what a pass wrote of segment `base` and leaves it as it was.
    async fn drop_cleaned(&self, base: Offset) -> Result<()> {
        let dir = self.inner.dir.clone();
        off_shard(move || remove_cleaned(&dir, base)).await
    }
}

async fn write_cleaned(file: &std::sync::Arc<std::fs::File>, path: &Path, bytes: Vec<u8>) -> Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let (file, path) = (file.clone(), path.to_path_buf());
    off_shard(move || {
        use std::io::Write;
        (&*file)
            .write_all(&bytes)
            .map_err(|e| io_error("write cleaned segment", &path, e))
    })
    .await
}

/// The files of segment `base`, each as `(final, cleaned, swap)` paths,
/// indexes first and the log last.
fn swap_paths(dir: &Path, base: Offset) -> [(PathBuf, PathBuf, PathBuf); 3] {
    [OFFSET_INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX].map(|suffix| {
        let path = segment_path(dir, base, suffix);
        let with = |extra: &str| {
            let mut name = path.clone().into_os_string();
            name.push(".");
            name.push(extra);
            PathBuf::from(name)
        };
        (path.clone(), with(CLEANED), with(SWAP))
    })
}

/// Swaps the cleaned files of segment `base` in for the old (see the
/// module docs for the order, which `finish_swaps` relies on).
async fn swap_in(dir: &Path, base: Offset) -> Result<()> {
    let dir = dir.to_path_buf();
    off_shard(move || {
        let paths = swap_paths(&dir, base);
        let rename = |from: &Path, to: &Path| std::fs::rename(from, to).map_err(|e| io_error("rename", from, e));
        let sync = || {
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error("sync log directory", &dir, e))
        };
        for (_, cleaned, swap) in &paths {
            rename(cleaned, swap)?;
        }
        sync()?;
        for (path, _, swap) in &paths {
            rename(swap, path)?;
        }
        sync()
    })
    .await
}

fn remove_cleaned(dir: &Path, base: Offset) -> Result<()> {
    for (_, cleaned, swap) in swap_paths(dir, base) {
        for path in [cleaned, swap] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("remove cleaned file", &path, e)),
            }
        }
    }
    Ok(())
}

/// At open, before the segments are listed: a clean a crash interrupted
/// is finished if its log's `.swap` was written (the set is whole), else
/// undone.
pub(super) fn finish_swaps(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_error("list log directory", dir, e))?;
    let mut bases = std::collections::BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list log directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name
            .strip_suffix(&format!(".{CLEANED}"))
            .or_else(|| name.strip_suffix(&format!(".{SWAP}")))
        else {
            continue;
        };
        let Some(base) = stem
            .split('.')
            .next()
            .and_then(|b| (b.len() == 20).then(|| b.parse().ok()).flatten())
        else {
            continue;
        };
        bases.insert(Offset(base));
    }
    for base in bases {
        let paths = swap_paths(dir, base);
        let (log, _, log_swap) = &paths[2];
        if log_swap.exists() {
            for (path, _, swap) in &paths {
                if swap.exists() {
                    std::fs::rename(swap, path).map_err(|e| io_error("rename", swap, e))?;
                } else if path != log {
                    // An index whose swap is not there (swapped in already,
                    // or its rename not durable): rebuilt from the new log.
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_error("remove index", path, e)),
                    }
                }
            }
            tracing::info!(segment = %log.display(), "finished the swap of a cleaned segment a stop interrupted");
        }
        remove_cleaned(dir, base)?;
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync log directory", dir, e))
}
