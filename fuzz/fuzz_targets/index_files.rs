//! The index file decoders, fed arbitrary bytes as a damaged disk may hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use storage::index::{OffsetIndex, TimeIndex};

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = OffsetIndex::decode(data, 1 << 30, 1 << 30) {
        assert_eq!(index.encode(), data);
        let _ = index.lookup(u32::from_le_bytes([data.len() as u8, 0, 0, 0]));
    }
    if let Ok(index) = TimeIndex::decode(data, 1 << 30) {
        assert_eq!(index.encode(), data);
        let _ = index.lookup(data.len() as i64);
    }
});
