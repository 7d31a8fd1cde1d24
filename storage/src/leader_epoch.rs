//! The leader epoch cache: at which offset each leader epoch's batches start
//! in a partition log (Kafka's `leader-epoch-checkpoint`).
//!
//! A replica that lost leadership asks the new leader where the epoch of
//! its last batch ended there (OffsetForLeaderEpoch, KIP-101/KIP-279) and
//! cuts its log at that offset; a consumer asks the same to detect a
//! truncation it read past (KIP-320). Epoch changes are rare, one per
//! election, so the cache is a short sorted list kept whole in memory and
//! written whole, as text, at every change.
//!
//! Pure: the log owns the file and the order of writes.

use crate::offset::Offset;

/// Epochs a cache holds; the oldest are dropped past it (their offsets are
/// long past every replica's and consumer's position). Each election adds one.
pub const EPOCHS_MAX: usize = 4096;

/// Where epoch `epoch` starts: the base offset of its first batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochStart {
    pub epoch: i32,
    pub start_offset: Offset,
}

/// Both sorted strictly ascending: epochs and their start offsets (an epoch
/// is recorded with its first batch, so no two share an offset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<EpochStart>,
}

impl LeaderEpochCache {
    pub fn entries(&self) -> &[EpochStart] {
        &self.entries
    }

    pub fn latest(&self) -> Option<EpochStart> {
        self.entries.last().copied()
    }

    /// Whether appending a batch of `epoch` at `offset` needs the cache to
    /// change first (a new epoch), or cannot be done (an older epoch than
    /// the last batch's: a log's epochs never go back).
    pub fn check(&self, epoch: i32, offset: Offset) -> Result<bool, String> {
        if epoch < 0 {
            return Err(format!("leader epoch {epoch} is negative"));
        }
        match self.latest() {
            Some(latest) if epoch < latest.epoch => Err(format!(
                "leader epoch {epoch} at offset {offset} is older than epoch {} (from offset {})",
                latest.epoch, latest.start_offset
            )),
            Some(latest) if epoch == latest.epoch => Ok(false),
            Some(latest) if offset < latest.start_offset => Err(format!(
                "leader epoch {epoch} would start at offset {offset}, before epoch {}'s start {}",
                latest.epoch, latest.start_offset
            )),
            _ => Ok(true),
        }
    }

    /// Records that `epoch` starts at `offset`; `check` said it may. An
    /// epoch starting where the latest starts replaces it: that one holds no
    /// batch (retention moved its start to the log end).
    pub fn assign(&mut self, epoch: i32, offset: Offset) {
        assert_eq!(self.check(epoch, offset), Ok(true), "assign only what check allows");
        if self.latest().is_some_and(|latest| latest.start_offset == offset) {
            self.entries.pop();
        }
        self.entries.push(EpochStart {
            epoch,
            start_offset: offset,
        });
        if self.entries.len() > EPOCHS_MAX {
            self.entries.remove(0);
        }
    }

    /// The log was cut: nothing at or after `end` remains. Returns whether
    /// the cache changed.
    pub fn truncate_from_end(&mut self, end: Offset) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end);
        self.entries.len() != before
    }

    /// The log now starts at `log_start`: an epoch wholly before it goes, and
    /// the one holding it starts there. Returns whether the cache changed.
    pub fn truncate_from_start(&mut self, log_start: Offset) -> bool {
        let covering = self.entries.partition_point(|e| e.start_offset <= log_start);
        if covering == 0 {
            return false;
        }
        let gone = covering - 1;
        let moved = self.entries[gone].start_offset != log_start;
        self.entries.drain(..gone);
        self.entries[0].start_offset = log_start;
        gone > 0 || moved
    }

    /// The epoch of the batch at `offset`: the latest epoch starting at or
    /// before it (what ListOffsets v4+ names beside an offset). None before
    /// the first epoch's start.
    pub fn epoch_at(&self, offset: Offset) -> Option<i32> {
        let after = self.entries.partition_point(|e| e.start_offset <= offset);
        after.checked_sub(1).map(|at| self.entries[at].epoch)
    }

    /// Kafka's `endOffsetFor`: the largest epoch at or below `requested` and
    /// the offset where the epoch after it starts (the log end offset if
    /// `requested` is the latest). None when no such epoch can be named: an
    /// empty cache or an epoch later than the latest. An epoch older than
    /// the oldest answers itself with the oldest's start.
    pub fn end_offset_for(&self, requested: i32, log_end: Offset) -> Option<(i32, Offset)> {
        let latest = self.latest()?;
        if requested == latest.epoch {
            return Some((requested, log_end));
        }
        let higher = self.entries.partition_point(|e| e.epoch <= requested);
        let next = self.entries.get(higher)?;
        match higher.checked_sub(1) {
            Some(floor) => Some((self.entries[floor].epoch, next.start_offset)),
            None => Some((requested, next.start_offset)),
        }
    }

    /// The file's text: one `epoch start_offset` line per epoch.
    pub fn encode(&self) -> String {
        self.entries
            .iter()
            .map(|e| format!("{} {}\n", e.epoch, e.start_offset.0))
            .collect()
    }

    pub fn decode(text: &str) -> Result<LeaderEpochCache, String> {
        let mut cache = LeaderEpochCache::default();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let mut fields = line.split_whitespace();
            let (Some(epoch), Some(offset), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(format!("line {}: {line:?} is not `epoch offset`", n + 1));
            };
            let epoch: i32 = epoch
                .parse()
                .map_err(|e| format!("line {}: epoch {epoch:?}: {e}", n + 1))?;
            let offset = Offset(
                offset
                    .parse()
                    .map_err(|e| format!("line {}: offset {offset:?}: {e}", n + 1))?,
            );
            match cache.check(epoch, offset) {
                Ok(true) if cache.latest().is_some_and(|l| l.start_offset == offset) => {
                    return Err(format!("line {}: two epochs start at offset {offset}", n + 1))
                }
                Ok(true) => cache.assign(epoch, offset),
                Ok(false) => return Err(format!("line {}: epoch {epoch} appears twice", n + 1)),
                Err(e) => return Err(format!("line {}: {e}", n + 1)),
            }
        }
        Ok(cache)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cache(entries: &[(i32, u64)]) -> LeaderEpochCache {
        let mut cache = LeaderEpochCache::default();
        for &(epoch, offset) in entries {
            cache.assign(epoch, Offset(offset));
        }
        cache
    }

    #[test]
    fn end_offsets_answer_as_kafkas_cache_does() {
        let c = cache(&[(1, 0), (3, 10), (4, 25)]);
        let end = Offset(40);
        assert_eq!(c.end_offset_for(4, end), Some((4, end)));
        assert_eq!(c.end_offset_for(3, end), Some((3, Offset(25))));
        // An epoch this log never had: the one before it, ending where the
        // next begins.
        assert_eq!(c.end_offset_for(2, end), Some((1, Offset(10))));
        assert_eq!(c.end_offset_for(0, end), Some((0, Offset(0))));
        assert_eq!(c.end_offset_for(5, end), None);
        assert_eq!(LeaderEpochCache::default().end_offset_for(0, end), None);
    }

    #[test]
    fn an_offset_is_named_by_the_epoch_it_lies_in() {
        let c = cache(&[(1, 4), (3, 10), (4, 25)]);
        assert_eq!(c.epoch_at(Offset(3)), None, "before the first epoch");
        assert_eq!(c.epoch_at(Offset(4)), Some(1));
        assert_eq!(c.epoch_at(Offset(9)), Some(1));
        assert_eq!(c.epoch_at(Offset(10)), Some(3));
        assert_eq!(c.epoch_at(Offset(24)), Some(3));
        assert_eq!(c.epoch_at(Offset(1_000)), Some(4), "the latest runs to the end");
        assert_eq!(LeaderEpochCache::default().epoch_at(Offset(0)), None);
    }

    #[test]
    fn epochs_never_go_back_and_never_share_an_offset() {
        let c = cache(&[(2, 5)]);
        assert_eq!(c.check(2, Offset(9)), Ok(false));
        assert_eq!(c.check(3, Offset(9)), Ok(true));
        assert!(c.check(1, Offset(9)).unwrap_err().contains("older than epoch 2"));
        assert!(c.check(3, Offset(4)).is_err());
        // Retention moved epoch 2's start to the log end: it holds nothing,
        // and the next epoch takes its place.
        let mut emptied = cache(&[(2, 5)]);
        emptied.truncate_from_start(Offset(9));
        emptied.assign(3, Offset(9));
        assert_eq!(
            emptied.entries(),
            &[EpochStart {
                epoch: 3,
                start_offset: Offset(9)
            }]
        );
        assert!(c.check(-1, Offset(9)).is_err());
    }

    #[test]
    fn truncation_keeps_what_remains_of_the_log() {
        let mut c = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert!(!c.truncate_from_end(Offset(26)));
        assert!(c.truncate_from_end(Offset(25)));
        assert_eq!(
            c.latest(),
            Some(EpochStart {
                epoch: 3,
                start_offset: Offset(10)
            })
        );
        assert!(c.truncate_from_start(Offset(12)));
        assert_eq!(
            c.entries(),
            &[EpochStart {
                epoch: 3,
                start_offset: Offset(12)
            }]
        );
        assert!(!c.truncate_from_start(Offset(12)));
        assert!(!c.truncate_from_start(Offset(3)));
    }

    #[test]
    fn damaged_files_are_refused_with_the_line() {
        assert!(LeaderEpochCache::decode("1 0\n1 5\n").unwrap_err().contains("line 2"));
        assert!(LeaderEpochCache::decode("2 0\n1 5\n").is_err());
        assert!(LeaderEpochCache::decode("x 0\n").is_err());
        assert!(LeaderEpochCache::decode("1 0 7\n").is_err());
        assert_eq!(LeaderEpochCache::decode("").unwrap(), LeaderEpochCache::default());
    }

    proptest! {
        #[test]
        fn a_cache_survives_its_file_and_answers_every_offset_consistently(
            steps in proptest::collection::vec((0i32..3, 1u64..20), 1..40),
            log_start in 0u64..200,
        ) {
            let mut c = LeaderEpochCache::default();
            let (mut epoch, mut offset) = (0i32, 0u64);
            for (epoch_step, records) in steps {
                epoch += epoch_step;
                if c.check(epoch, Offset(offset)).unwrap() {
                    c.assign(epoch, Offset(offset));
                }
                offset += records;
            }
            let end = Offset(offset);
            prop_assert_eq!(LeaderEpochCache::decode(&c.encode()).unwrap(), c.clone());
            // Every epoch's end is the next one's start, and ends ascend.
            let ends: Vec<Offset> = c.entries().iter().map(|e| c.end_offset_for(e.epoch, end).unwrap().1).collect();
            prop_assert!(ends.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(*ends.last().unwrap(), end);
            c.truncate_from_start(Offset(log_start.min(offset)));
            prop_assert!(c.entries().windows(2).all(|w| w[0].epoch < w[1].epoch && w[0].start_offset < w[1].start_offset));
            prop_assert_eq!(LeaderEpochCache::decode(&c.encode()).unwrap(), c);
        }
    }
}
