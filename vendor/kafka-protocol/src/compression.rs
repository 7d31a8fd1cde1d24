//! Provides compression utilities for encoding records.
//!
//! This module has implementations of gzip, Snappy, as well as a noop compression format that
//! allows encoding and decoding records into a [`Record`](crate::records::Record).

use crate::protocol::buf::{ByteBuf, ByteBufMut};
use anyhow::Result;

#[cfg(feature = "gzip")]
mod gzip;
#[cfg(feature = "lz4")]
mod lz4;
mod none;
#[cfg(feature = "snappy")]
mod snappy;
#[cfg(feature = "zstd")]
mod zstd;

#[cfg(feature = "gzip")]
/// corelog patch: the most bytes one batch may decompress to. A batch
/// claiming more is refused instead of exhausting memory (a few compressed
/// bytes can claim gigabytes).
pub const DECOMPRESSED_BYTES_MAX: usize = 16 << 20;

/// corelog patch: a batch that decompresses (or claims to) past
/// `DECOMPRESSED_BYTES_MAX`: too large, not malformed, so that a broker can
/// answer MESSAGE_TOO_LARGE rather than CORRUPT_MESSAGE (which clients
/// retry). Found by downcasting the decompressor's error.
#[derive(Debug)]
pub struct DecompressedTooLarge {
    /// The codec.
    pub codec: &'static str,
}

impl std::fmt::Display for DecompressedTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} batch decompresses past {DECOMPRESSED_BYTES_MAX} bytes", self.codec)
    }
}

impl std::error::Error for DecompressedTooLarge {}

/// Reads `reader` to its end, refusing more than `DECOMPRESSED_BYTES_MAX`.
pub(crate) fn read_capped(reader: impl std::io::Read, what: &'static str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    reader
        .take(DECOMPRESSED_BYTES_MAX as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| anyhow::anyhow!("failed to decompress {what}: {e}"))?;
    if out.len() > DECOMPRESSED_BYTES_MAX {
        return Err(DecompressedTooLarge { codec: what }.into());
    }
    Ok(out)
}

pub use gzip::Gzip;
#[cfg(feature = "lz4")]
pub use lz4::Lz4;
pub use none::None;
#[cfg(feature = "snappy")]
pub use snappy::Snappy;
#[cfg(feature = "zstd")]
pub use zstd::Zstd;

/// A trait for record compression algorithms.
pub trait Compressor<B: ByteBufMut> {
    /// Target buffer type for compression.
    type BufMut: ByteBufMut;
    /// Compresses into provided [`ByteBufMut`], with records encoded by `F` into `R`.
    fn compress<R, F>(buf: &mut B, f: F) -> Result<R>
    where
        F: FnOnce(&mut Self::BufMut) -> Result<R>;
}

/// A trait for record decompression algorithms.
pub trait Decompressor<B: ByteBuf> {
    /// Target buffer type for decompression.
    type Buf: ByteBuf;
    /// Decompress records from `B` mapped using `F` into `R`.
    fn decompress<R, F>(buf: &mut B, f: F) -> Result<R>
    where
        F: FnOnce(&mut Self::Buf) -> Result<R>;
}
