//! The batch cache: recently written and recently read bytes of the
//! partition logs on one shard, kept in memory for their readers.
//!
//! O_DIRECT bypasses the page cache, so nothing but the log keeps what a
//! consumer a few seconds behind the producer is about to read (Redpanda's
//! `batch_cache` fills the same gap). What the cache holds is what the log
//! had in memory anyway, not a copy of it, with one exception:
//!
//! - a segment write buffer, once its write is done: the buffer the appends
//!   were copied into becomes the entry (and the appender takes a buffer
//!   evicted earlier for its next one, so a full cache recycles buffers
//!   instead of allocating them);
//! - the bytes of a write buffer sealed by a flush with little in it (an
//!   acks=all log flushes every few hundred microseconds, a few tens of KiB
//!   each time): keeping its 2 MiB buffer per flush would fill the cache
//!   with empty memory, so these bytes are copied (once more) onto the end of
//!   an arena, one entry that grows flush by flush to a buffer's size, and
//!   the write buffer goes back to the appender;
//! - a chunk read ahead of a reader, once the reader has read past it, and a
//!   read from disk no read-ahead covered: the read's own buffer.
//!
//! Entries are byte ranges of one segment of one log, `[start, end)`, never
//! overlapping (an insert is clipped to the gaps between entries), evicted
//! least recently used first when the thread's capacity (`read_cache_bytes`,
//! set by `set_thread_capacity`) would be passed. An entry is charged the
//! memory it holds (its whole buffer or arena), not the bytes it serves.
//!
//! A read is served from an entry only if the first batch at its position
//! lies whole in it; the log's reads start at batch starts. Truncation,
//! segment deletion and closing a log drop the entries they touch, so a
//! range cut from a log is never served again. Bytes read back from disk are
//! served as disk bytes (their crc checked by the log's read, like any disk
//! read); bytes of a write buffer are served as the log's own memory.
//!
//! One cache per executor thread, which is a shard: it is only touched from
//! the logs on that thread, and no borrow of it outlives a call.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use glommio::io::{DmaBuffer, ReadResult};

use crate::batch::frame_length;
use crate::config::BLOCK_BYTES;
use crate::log::ReadBytes;
use crate::offset::Offset;

/// An entry must serve at least this fraction (1 / N) of the memory it is
/// charged, or it is not kept as it is: a 2 MiB write buffer sealed by a
/// flush with 40 KiB in it would take the room of fifty such flushes' bytes
/// (its bytes go onto an arena instead).
pub const FILL_MIN_DIVISOR: usize = 4;
/// Entries charged this little are kept however little they serve (the
/// tail of a segment read back, a batch of a few hundred bytes).
pub const FILL_EXEMPT_BYTES: usize = 4 * BLOCK_BYTES;
/// Write buffers evicted from the cache and kept for the appenders of the
/// thread's logs to take, instead of allocating (and, past the registered
/// io memory, mapping and faulting in) a new one for every write.
pub const RECYCLED_BUFFERS_MAX: usize = 4;

thread_local! {
    static CACHE: RefCell<BatchCache> = RefCell::new(BatchCache::default());
}

static NEXT_LOG_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A name for one open partition log, unique in the process: entries are
/// keyed by it, so a log opened again never sees what its last opening left.
pub(crate) fn new_log_id() -> u64 {
    NEXT_LOG_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Bounds the memory the cache of this thread (a shard) holds. 0 turns it
/// off; lowering it evicts at once.
pub fn set_thread_capacity(bytes: usize) {
    with_cache(|cache| {
        cache.capacity = bytes;
        cache.evict_to(bytes);
    });
}

/// What the cache of this thread did and holds.
pub fn thread_stats() -> BatchCacheStats {
    with_cache(|cache| BatchCacheStats {
        held_bytes: cache.held as u64,
        entries: cache.entries.len() as u64,
        capacity_bytes: cache.capacity as u64,
        ..cache.stats
    })
}

/// Counters of one thread's batch cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchCacheStats {
    /// Reads of bytes not in a write buffer served from the cache, and the
    /// bytes they returned.
    pub hits: u64,
    pub hit_bytes: u64,
    /// Reads of bytes not in a write buffer the cache could not serve.
    pub misses: u64,
    /// Entries kept from write buffers and from reads, and the bytes they
    /// serve.
    pub written_entries: u64,
    pub written_bytes: u64,
    pub read_entries: u64,
    pub read_bytes: u64,
    /// Inserts not kept: too little left after clipping to the gaps between
    /// entries, or more than the whole capacity.
    pub rejected: u64,
    pub evicted_entries: u64,
    /// Memory held now, the most held at once, entries held now, and the
    /// capacity.
    pub held_bytes: u64,
    pub held_bytes_max: u64,
    pub entries: u64,
    pub capacity_bytes: u64,
}

/// The memory behind an entry.
enum Held {
    Written(Rc<DmaBuffer>),
    Read(ReadResult),
    Arena(Rc<Arena>),
}

impl Held {
    fn bytes(&self) -> &[u8] {
        match self {
            Held::Written(buffer) => buffer.allocated_bytes(),
            Held::Read(read) => read,
            Held::Arena(arena) => arena.bytes(),
        }
    }
}

/// Memory that is only ever appended to: readers hold slices of what is
/// in it while more is appended after them. Appends write past every byte
/// a slice was taken of (`bytes` covers only what was appended), so no
/// reader ever sees a byte change. Not `Sync` (one shard's).
pub struct Arena {
    data: std::ptr::NonNull<u8>,
    capacity: usize,
    len: std::cell::Cell<usize>,
}

impl Arena {
    fn new(capacity: usize) -> Arena {
        let mut memory = std::mem::ManuallyDrop::new(Vec::<u8>::with_capacity(capacity));
        Arena {
            data: std::ptr::NonNull::new(memory.as_mut_ptr()).expect("a vector's pointer is not null"),
            capacity: memory.capacity(),
            len: std::cell::Cell::new(0),
        }
    }

    fn room(&self) -> usize {
        self.capacity - self.len.get()
    }

    fn append(&self, bytes: &[u8]) {
        let len = self.len.get();
        assert!(
            bytes.len() <= self.capacity - len,
            "an arena is appended within its room"
        );
        // Safety: [len, len + n) lies within the allocation and past every
        // slice `bytes` has handed out.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data.as_ptr().add(len), bytes.len()) };
        self.len.set(len + bytes.len());
    }

    /// Everything appended so far.
    pub fn bytes(&self) -> &[u8] {
        // Safety: the first `len` bytes were written by `append` and are
        // never written again.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.len.get()) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // Safety: the allocation came from a Vec<u8> of this capacity.
        unsafe { drop(Vec::from_raw_parts(self.data.as_ptr(), 0, self.capacity)) };
    }
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("len", &self.len.get())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// (log id, segment base offset, start position in the segment).
type Key = (u64, Offset, u64);

struct Entry {
    held: Held,
    /// Where the entry's first byte lies in `held`.
    from: usize,
    len: usize,
    /// The memory charged against the capacity.
    charge: usize,
    /// When it was last inserted or served (the cache's clock).
    used: u64,
}

#[derive(Default)]
struct BatchCache {
    capacity: usize,
    held: usize,
    entries: BTreeMap<Key, Entry>,
    /// The entries by `used`, least recent first.
    recency: BTreeMap<u64, Key>,
    clock: u64,
    recycled: Vec<DmaBuffer>,
    /// Arenas evicted, emptied, for the next ones (as `recycled`).
    recycled_arenas: Vec<Arena>,
    stats: BatchCacheStats,
}

fn with_cache<T>(f: impl FnOnce(&mut BatchCache) -> T) -> T {
    CACHE.with(|cache| f(&mut cache.borrow_mut()))
}

/// Serves up to `len` bytes at `position` of a segment if an entry holds the
/// batch that starts there whole. `position` is where a batch starts.
pub(crate) fn lookup(log: u64, segment: Offset, position: u64, len: usize) -> Option<ReadBytes> {
    with_cache(|cache| {
        if cache.capacity == 0 {
            return None;
        }
        let served = cache.serve(log, segment, position, len);
        match &served {
            Some(bytes) => {
                cache.stats.hits += 1;
                cache.stats.hit_bytes += bytes.len() as u64;
            }
            None => cache.stats.misses += 1,
        }
        served
    })
}

/// Offers a segment write buffer whose write is done, holding the segment's
/// bytes `[start, end)` from its first byte. Returns it if it is not kept
/// as it is (its bytes may have been copied into an arena).
pub(crate) fn insert_written(
    log: u64,
    segment: Offset,
    start: u64,
    end: u64,
    buffer: Rc<DmaBuffer>,
) -> Result<(), Rc<DmaBuffer>> {
    let charge = buffer.allocated_bytes().len();
    assert!(end - start <= charge as u64, "a write buffer holds what it wrote");
    with_cache(|cache| {
        if cache.capacity == 0 || charge > cache.capacity {
            return Err(buffer);
        }
        let (clipped, _) = cache.gap(log, segment, start, end);
        if clipped >= end {
            cache.stats.rejected += 1;
            return Err(buffer);
        }
        if ((end - clipped) as usize) < charge / FILL_MIN_DIVISOR {
            let from = (clipped - start) as usize;
            let bytes = &buffer.allocated_bytes()[from..(end - start) as usize];
            cache.append_to_arena(log, segment, clipped, bytes, charge);
            return Err(buffer);
        }
        cache
            .insert(log, segment, start, end, 0, charge, Held::Written(buffer))
            .map(|()| {
                cache.stats.written_entries += 1;
            })
            .map_err(|held| match held {
                Held::Written(buffer) => buffer,
                _ => unreachable!("a write buffer was offered"),
            })
    })
}

/// Offers bytes read from disk: `read` holds the segment's bytes from
/// `start`, `len` of them final (the read may have returned more). If a
/// batch starts at `start`, the entry is cut after the last batch that lies
/// whole in it: the next read starts at the batch after, and finds it at the
/// start of the entry its own read makes, not cut at this one's end.
pub(crate) fn insert_read(log: u64, segment: Offset, start: u64, len: usize, read: ReadResult, batch_at_start: bool) {
    let mut len = len.min(read.len());
    if batch_at_start {
        let mut whole = 0;
        while let Some(frame) = frame_length(&read[whole..len]) {
            if frame > len - whole || frame <= crate::batch::FRAME_LENGTH_BYTES {
                break;
            }
            whole += frame;
        }
        len = whole;
    }
    if len == 0 {
        return;
    }
    // A read's buffer spans the blocks around what it returned.
    let charge = (start as usize % BLOCK_BYTES + read.len()).next_multiple_of(BLOCK_BYTES);
    with_cache(|cache| {
        if cache
            .insert(log, segment, start, start + len as u64, 0, charge, Held::Read(read))
            .is_ok()
        {
            cache.stats.read_entries += 1;
        }
    });
}

/// A write buffer of `len` bytes evicted earlier, restored to full size, for
/// an appender's next buffer.
pub(crate) fn recycled_buffer(len: usize) -> Option<DmaBuffer> {
    with_cache(|cache| {
        let i = cache.recycled.iter().position(|b| b.len() == len)?;
        Some(cache.recycled.swap_remove(i))
    })
}

/// Drops every entry of one segment (deleted by retention).
pub(crate) fn forget_segment(log: u64, segment: Offset) {
    with_cache(|cache| cache.forget(log, |s| s == segment));
}

/// Drops every entry of segments from `segment` on (truncation).
pub(crate) fn forget_segments_from(log: u64, segment: Offset) {
    with_cache(|cache| cache.forget(log, |s| s >= segment));
}

/// Drops every entry of a log (closed, dropped or emptied).
pub(crate) fn forget_log(log: u64) {
    // A thread that is exiting may have dropped its cache already.
    let _ = CACHE.try_with(|cache| {
        let mut cache = cache.borrow_mut();
        cache.forget(log, |_| true);
        if cache.entries.is_empty() {
            // Nothing left to recycle for: give the memory back.
            cache.recycled.clear();
            cache.recycled_arenas.clear();
        }
    });
}

impl BatchCache {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn serve(&mut self, log: u64, segment: Offset, position: u64, len: usize) -> Option<ReadBytes> {
        let (&key, entry) = self.entries.range(..=(log, segment, position)).next_back()?;
        if key.0 != log || key.1 != segment || position >= key.2 + entry.len as u64 {
            return None;
        }
        let at = entry.from + (position - key.2) as usize;
        let avail = entry.len - (position - key.2) as usize;
        let first = frame_length(&entry.held.bytes()[at..at + avail])?;
        if first > avail {
            return None;
        }
        let len = len.min(avail);
        let bytes = match &entry.held {
            Held::Written(buffer) => ReadBytes::Buffer {
                buffer: buffer.clone(),
                start: at,
                end: at + len,
            },
            Held::Read(read) => ReadBytes::Disk(ReadResult::slice(read, at, len).expect("within the read")),
            Held::Arena(arena) => ReadBytes::Arena {
                arena: arena.clone(),
                start: at,
                end: at + len,
            },
        };
        let old = entry.used;
        let used = self.tick();
        self.entries.get_mut(&key).expect("found above").used = used;
        self.recency.remove(&old);
        self.recency.insert(used, key);
        Some(bytes)
    }

    /// Keeps `held`'s bytes `[from, from + (end - start))` as the segment's
    /// `[start, end)`, clipped to the gap between the entries around it.
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        log: u64,
        segment: Offset,
        mut start: u64,
        mut end: u64,
        mut from: usize,
        charge: usize,
        held: Held,
    ) -> Result<(), Held> {
        if self.capacity == 0 || charge > self.capacity {
            self.stats.rejected += u64::from(self.capacity > 0);
            return Err(held);
        }
        let (clipped_start, clipped_end) = self.gap(log, segment, start, end);
        from += (clipped_start - start) as usize;
        start = clipped_start;
        end = clipped_end;
        let len = (end - start) as usize;
        // An arena is charged its capacity from its first bytes: it grows.
        let growing = matches!(held, Held::Arena(_));
        if len == 0 || (!growing && charge > FILL_EXEMPT_BYTES && len < charge / FILL_MIN_DIVISOR) {
            self.stats.rejected += 1;
            return Err(held);
        }
        self.evict_to(self.capacity - charge);
        let used = self.tick();
        let previous = self.entries.insert(
            (log, segment, start),
            Entry {
                held,
                from,
                len,
                charge,
                used,
            },
        );
        assert!(previous.is_none(), "entries never overlap");
        self.recency.insert(used, (log, segment, start));
        self.held += charge;
        self.stats.held_bytes_max = self.stats.held_bytes_max.max(self.held as u64);
        match self.entries[&(log, segment, start)].held {
            Held::Written(_) | Held::Arena(_) => self.stats.written_bytes += len as u64,
            Held::Read(_) => self.stats.read_bytes += len as u64,
        }
        Ok(())
    }

    /// `[start, end)` clipped to the gap between the entries of the segment
    /// around it (empty, `start >= end`, if there is none).
    fn gap(&self, log: u64, segment: Offset, mut start: u64, mut end: u64) -> (u64, u64) {
        if let Some((&key, before)) = self.entries.range(..=(log, segment, start)).next_back() {
            let before_end = key.2 + before.len as u64;
            if key.0 == log && key.1 == segment && before_end > start {
                start = before_end.min(end);
            }
        }
        if let Some((&key, _)) = self.entries.range((log, segment, start)..).next() {
            if key.0 == log && key.1 == segment && key.2 < end {
                end = key.2;
            }
        }
        (start, end.max(start))
    }

    /// Copies `bytes`, the segment's from `start`, onto the end of the arena
    /// entry that ends at `start` if it has room, else into a new arena of
    /// `capacity` bytes.
    fn append_to_arena(&mut self, log: u64, segment: Offset, start: u64, bytes: &[u8], capacity: usize) {
        let end = start + bytes.len() as u64;
        if self.gap(log, segment, start, end) != (start, end) {
            self.stats.rejected += 1;
            return; // another entry holds some of it already
        }
        let growing = self
            .entries
            .range(..(log, segment, start))
            .next_back()
            .filter(|(key, entry)| {
                let ends_here = key.0 == log && key.1 == segment && key.2 + entry.len as u64 == start;
                ends_here
                    && matches!(&entry.held, Held::Arena(arena)
                        if arena.room() >= bytes.len() && entry.from + entry.len == arena.bytes().len())
            })
            .map(|(key, _)| *key);
        if let Some(key) = growing {
            let used = self.tick();
            let entry = self.entries.get_mut(&key).expect("found above");
            let Held::Arena(arena) = &entry.held else {
                unreachable!("filtered above")
            };
            arena.append(bytes);
            entry.len += bytes.len();
            let old = std::mem::replace(&mut entry.used, used);
            self.recency.remove(&old);
            self.recency.insert(used, key);
            self.stats.written_bytes += bytes.len() as u64;
            return;
        }
        let capacity = capacity.max(bytes.len());
        let arena = match self.recycled_arenas.iter().position(|a| a.capacity == capacity) {
            Some(i) => self.recycled_arenas.swap_remove(i),
            None => Arena::new(capacity),
        };
        arena.append(bytes);
        let charge = arena.capacity;
        let held = Held::Arena(Rc::new(arena));
        if self.insert(log, segment, start, end, 0, charge, held).is_ok() {
            self.stats.written_entries += 1;
        }
    }

    /// Evicts least recently used entries until at most `bytes` are held.
    fn evict_to(&mut self, bytes: usize) {
        while self.held > bytes {
            let (_, key) = self.recency.pop_first().expect("held bytes belong to entries");
            let entry = self.entries.remove(&key).expect("recency names entries");
            self.stats.evicted_entries += 1;
            self.release(entry);
        }
    }

    fn forget(&mut self, log: u64, doomed: impl Fn(Offset) -> bool) {
        let keys: Vec<Key> = self
            .entries
            .range((log, Offset(0), 0)..=(log, Offset(u64::MAX), u64::MAX))
            .map(|(key, _)| *key)
            .filter(|key| doomed(key.1))
            .collect();
        for key in keys {
            let entry = self.entries.remove(&key).expect("listed above");
            self.recency.remove(&entry.used);
            self.release(entry);
        }
    }

    fn release(&mut self, entry: Entry) {
        self.held -= entry.charge;
        // A reader may still hold a slice of it: then it is freed with the
        // reader's.
        match entry.held {
            Held::Written(buffer) => {
                if let Ok(mut buffer) = Rc::try_unwrap(buffer) {
                    if self.recycled.len() < RECYCLED_BUFFERS_MAX {
                        buffer.restore_size();
                        self.recycled.push(buffer);
                    }
                }
            }
            Held::Arena(arena) => {
                if let Ok(arena) = Rc::try_unwrap(arena) {
                    if self.recycled_arenas.len() < RECYCLED_BUFFERS_MAX {
                        // Nothing refers to its bytes any more.
                        arena.len.set(0);
                        self.recycled_arenas.push(arena);
                    }
                }
            }
            Held::Read(_) => {}
        }
    }
}

/// Kept entries are read through the log in `storage/tests`; these check the
/// cache's own bookkeeping.
#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Vec<u8> {
        let mut bytes = vec![7u8; len];
        bytes[..4].copy_from_slice(&((len - 4) as u32).to_le_bytes());
        bytes
    }

    /// DMA buffers come from an executor's thread.
    fn on_executor(run: impl FnOnce() + Send + 'static) {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move { run() })
            .expect("executor")
            .join()
            .expect("test ran");
    }

    fn written(bytes: &[u8], capacity: usize) -> Rc<DmaBuffer> {
        let mut buffer = glommio::allocate_dma_buffer_global(capacity);
        buffer.as_bytes_mut()[..bytes.len()].copy_from_slice(bytes);
        Rc::new(buffer)
    }

    #[test]
    fn entries_are_clipped_served_whole_evicted_by_recency_and_forgotten() {
        let run = || {
            set_thread_capacity(16 << 10);
            let a: Vec<u8> = [frame(1000), frame(1000), frame(2000)].concat();
            insert_written(1, Offset(0), 0, 4000, written(&a, 4096)).expect("kept");
            // The first batch at 1000 lies whole in the entry.
            assert_eq!(&lookup(1, Offset(0), 1000, 10_000).expect("held")[..], &a[1000..]);
            // Another log, segment or a position past the entry: no.
            assert!(lookup(2, Offset(0), 1000, 100).is_none());
            assert!(lookup(1, Offset(5), 1000, 100).is_none());
            assert!(lookup(1, Offset(0), 4000, 100).is_none());
            // The next buffer begins with a copy of the first's partial last
            // block (from 3000): it is clipped to begin where the first ends.
            let tail: Vec<u8> = [a[3000..4000].to_vec(), frame(3000)].concat();
            insert_written(1, Offset(0), 3000, 7000, written(&tail, 4096)).expect("kept, clipped");
            let hit = lookup(1, Offset(0), 4000, 10_000).expect("the second entry");
            assert_eq!(&hit[..], &tail[1000..4000]);
            drop(hit);
            // Too little left after clipping: given back.
            assert!(insert_written(1, Offset(0), 3000, 7000, written(&tail, 4096)).is_err());
            // A batch running past its entry is not served.
            let cut = frame(3000);
            insert_written(1, Offset(9), 0, 2000, written(&cut[..2000], 4096)).expect("kept");
            assert!(lookup(1, Offset(9), 0, 100).is_none());
            let stats = thread_stats();
            assert_eq!(stats.entries, 3);
            assert_eq!(stats.held_bytes, 3 * 4096);
            // Past the capacity the least recently used goes: the first
            // entry, served again now, stays; the second goes.
            lookup(1, Offset(0), 0, 100).expect("touch the first");
            for segment in 20..22 {
                insert_written(1, Offset(segment), 0, 4000, written(&a, 4096)).expect("kept");
            }
            assert!(lookup(1, Offset(0), 4000, 100).is_none(), "least recent, evicted");
            assert!(lookup(1, Offset(0), 0, 100).is_some(), "touched, kept");
            assert_eq!(thread_stats().held_bytes, 4 * 4096);
            assert!(recycled_buffer(4096).is_some(), "an evicted buffer is recycled");
            forget_segments_from(1, Offset(20));
            assert!(lookup(1, Offset(20), 0, 100).is_none());
            assert!(lookup(1, Offset(0), 0, 100).is_some());
            forget_log(1);
            let stats = thread_stats();
            assert_eq!((stats.entries, stats.held_bytes), (0, 0));
            // A buffer larger than the whole cache is refused.
            set_thread_capacity(2048);
            assert!(insert_written(3, Offset(0), 0, 4000, written(&a, 4096)).is_err());
            set_thread_capacity(0);
        };
        on_executor(run);
    }

    #[test]
    fn sparse_write_buffers_gather_in_an_arena_that_readers_read_as_it_grows() {
        let run = || {
            set_thread_capacity(64 << 10);
            // Flushes of 700 bytes each, from 8 KiB buffers (each begins with
            // the partial block before it): copied onto one arena.
            let frames: Vec<Vec<u8>> = (0..10).map(|_| frame(700)).collect();
            let log: Vec<u8> = frames.concat();
            let mut held = Vec::new();
            for i in 0..10u64 {
                let (start, end) = (i * 700, (i + 1) * 700);
                let base = start & !(BLOCK_BYTES as u64 - 1);
                let buffer = written(&log[base as usize..end as usize], 8192);
                assert!(
                    insert_written(5, Offset(0), base, end, buffer).is_err(),
                    "the buffer goes back"
                );
                // A reader keeps a slice of every flush's bytes while more
                // are appended after them.
                let read = lookup(5, Offset(0), start, 700).expect("in the arena");
                assert_eq!(&read[..], &log[start as usize..end as usize]);
                held.push(read);
                let from_start = lookup(5, Offset(0), 0, 1 << 20).expect("from the first");
                assert_eq!(&from_start[..], &log[..end as usize]);
            }
            for (i, read) in held.iter().enumerate() {
                assert_eq!(
                    &read[..],
                    &log[i * 700..(i + 1) * 700],
                    "bytes never change under a reader"
                );
            }
            let stats = thread_stats();
            assert_eq!((stats.entries, stats.written_entries, stats.held_bytes), (1, 1, 8192));
            // Past the arena's room a new one starts where it ends.
            let buffer = written(&frame(7000), 8192);
            assert!(
                insert_written(5, Offset(0), 7000, 14_000, buffer).is_ok(),
                "dense: kept as it is"
            );
            let buffer = written(&frame(1000), 8192);
            assert!(insert_written(5, Offset(0), 14_000, 15_000, buffer).is_err());
            let buffer = written(&frame(1000)[..], 8192);
            assert!(insert_written(5, Offset(0), 15_000, 16_000, buffer).is_err());
            assert_eq!(thread_stats().entries, 3);
            assert_eq!(lookup(5, Offset(0), 15_000, 1000).expect("second arena").len(), 1000);
            drop(held);
            forget_log(5);
            assert_eq!(thread_stats().held_bytes, 0);
            set_thread_capacity(0);
        };
        on_executor(run);
    }
}
