//! Every decoder of a record batch frame, fed arbitrary bytes: the bytes a
//! producer sends and the bytes recovery reads back from a damaged disk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use storage::batch::{self, BatchLimits};

const LIMITS: BatchLimits = BatchLimits::sized(1 << 20, 1 << 20);

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = batch::check_frame(data, &LIMITS) {
        // A frame that passes the full check must read back consistently.
        let archived = batch::access(data).expect("a checked frame validates");
        assert_eq!(archived.records.len(), info.record_count as usize);
        let peeked = batch::verify_crc(data).expect("a checked frame has its crc");
        assert_eq!((peeked.base_offset, peeked.record_count, peeked.crc), (info.base_offset, info.record_count, info.crc));
        let mut stamped = data.to_vec();
        batch::stamp(&mut stamped, &info, storage::Offset(42), 7);
        let restamped = batch::check_frame(&stamped, &LIMITS).expect("stamping keeps a frame valid");
        assert_eq!(restamped.base_offset, storage::Offset(42));
    }
    let _ = batch::peek_header(data);
    let _ = batch::verify_crc(data);
    let _ = batch::access(data);
    for frame in batch::frames(data) {
        let _ = batch::check_frame(frame, &LIMITS);
    }
});
