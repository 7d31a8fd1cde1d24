//! The controller log entry decoder, fed arbitrary bytes as a peer or a
//! damaged disk may send: it refuses or reads, never panics, and what it
//! reads encodes back to the same command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::cluster::ControllerCommand;

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = ControllerCommand::decode(data) {
        assert_eq!(ControllerCommand::decode(&command.encode()).unwrap(), command);
    }
});
