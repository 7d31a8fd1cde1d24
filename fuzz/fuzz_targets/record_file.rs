//! The record file replay (a node's controller log), fed arbitrary bytes
//! as a damaged disk may hold: it refuses or reads, never panics, and what
//! it reads written again replays the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use storage::record_file::{replay, BatchWriter};

fuzz_target!(|data: &[u8]| {
    if let Ok(replayed) = replay(data) {
        assert!(replayed.valid_bytes <= data.len());
        let mut writer = BatchWriter::default();
        for (kind, payload) in &replayed.records {
            writer.record(*kind, payload);
        }
        if let Ok(batch) = writer.finish() {
            let again = replay(&batch).unwrap();
            assert_eq!(again.records, replayed.records);
        }
    }
});
