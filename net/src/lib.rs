//! corelog's wire protocols.
//!
//! Today: the native protocol's sans-IO codec (`codec`) and its messages
//! (`messages`): bytes in, frames and typed messages out, no sockets, so it
//! can be fuzzed and driven by any transport. Record batches travel as raw
//! bytes in a frame's payload section, outside the rkyv archive that
//! describes them, so neither side copies record bytes to build or read a
//! message. The client library and the Kafka codec come next (issues 3, 6).

pub mod client;
pub mod cluster;
pub mod codec;
pub mod consumer;
pub mod error;
pub mod group;
pub mod kafka;
pub mod messages;
pub mod pipelined;
pub mod producer;
pub mod transaction;

pub use codec::{ApiKey, FrameDecoder, PayloadBuilder, RequestFrame, ResponseFrame};
pub use error::{ErrorCode, NetError};
