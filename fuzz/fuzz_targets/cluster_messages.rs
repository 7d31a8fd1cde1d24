//! The decoders of what nodes send each other, fed arbitrary bytes as a
//! peer or a damaged disk may send: controller log entries and the frames
//! of the internal port. Each refuses or reads, never panics, and what it
//! reads encodes back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::cluster::{ControllerCommand, PeerFrame};

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = ControllerCommand::decode(data) {
        assert_eq!(ControllerCommand::decode(&command.encode()).unwrap(), command);
    }
    if let Ok(frame) = PeerFrame::decode_frame(data) {
        assert_eq!(PeerFrame::decode_frame(&frame.encode().unwrap()).unwrap(), frame);
    }
});
