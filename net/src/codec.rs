//! Framing of the native protocol: sans-IO, bytes in and frames out.
//!
//! ```text
//! request  := len u32 | api_key u16 | api_version u16 | correlation_id u32 | archive_len u32 | archive | payload
//! response := len u32 | correlation_id u32 | api_key u16 | reserved u16     | archive_len u32 | archive | payload
//! ```
//!
//! All integers little endian; `len` counts the bytes after itself. The
//! archive is an rkyv archive of the message for `api_key` (for a response,
//! `ERROR_RESPONSE_KEY` marks an `ErrorResponse`). The payload holds raw
//! bytes the message points into with `PayloadRange`s: record batches, which
//! so travel from producer to disk and from disk to consumer without being
//! copied into or out of an archive. Many requests may be in flight on one
//! connection; responses carry the request's correlation id.

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::Portable;

use crate::error::NetError;
use crate::messages::{ArchivedPayloadRange, PayloadRange};

pub const LENGTH_BYTES: usize = 4;
/// Request header after the length: api key, version, correlation id, archive length.
pub const REQUEST_HEADER_BYTES: usize = 12;
/// Response header after the length: correlation id, api key, reserved, archive length.
pub const RESPONSE_HEADER_BYTES: usize = 12;
/// Default limit on one frame, length prefix included.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 64 << 20;
/// The api key of a response that reports an error with the request itself
/// (unsupported api or version, malformed message).
pub const ERROR_RESPONSE_KEY: u16 = u16::MAX;

/// The requests of the native protocol, with the versions this build speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ApiKey {
    ApiVersions = 0,
    Metadata = 1,
    CreateTopics = 2,
    DeleteTopics = 3,
    Produce = 4,
    Fetch = 5,
    ListOffsets = 6,
    OffsetCommit = 7,
    OffsetFetch = 8,
    JoinGroup = 9,
    SyncGroup = 10,
    Heartbeat = 11,
    LeaveGroup = 12,
    ListGroups = 13,
    DescribeGroups = 14,
    InitProducerId = 15,
    AddPartitionsToTxn = 16,
    AddOffsetsToTxn = 17,
    EndTxn = 18,
    TxnOffsetCommit = 19,
    WriteTxnMarkers = 20,
    TransferLeader = 21,
    FindCoordinator = 22,
    AlterConfigs = 23,
    CreatePartitions = 24,
    DeleteRecords = 25,
    DescribeProducers = 26,
    ListTransactions = 27,
    DescribeLogDirs = 28,
    DeleteGroupOffsets = 29,
}

impl ApiKey {
    pub const ALL: [ApiKey; 30] = [
        ApiKey::ApiVersions,
        ApiKey::Metadata,
        ApiKey::CreateTopics,
        ApiKey::DeleteTopics,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::JoinGroup,
        ApiKey::SyncGroup,
        ApiKey::Heartbeat,
        ApiKey::LeaveGroup,
        ApiKey::ListGroups,
        ApiKey::DescribeGroups,
        ApiKey::InitProducerId,
        ApiKey::AddPartitionsToTxn,
        ApiKey::AddOffsetsToTxn,
        ApiKey::EndTxn,
        ApiKey::TxnOffsetCommit,
        ApiKey::WriteTxnMarkers,
        ApiKey::TransferLeader,
        ApiKey::FindCoordinator,
        ApiKey::AlterConfigs,
        ApiKey::CreatePartitions,
        ApiKey::DeleteRecords,
        ApiKey::DescribeProducers,
        ApiKey::ListTransactions,
        ApiKey::DescribeLogDirs,
        ApiKey::DeleteGroupOffsets,
    ];

    pub fn from_u16(key: u16) -> Option<ApiKey> {
        ApiKey::ALL.into_iter().find(|k| *k as u16 == key)
    }

    /// Versions this build accepts: (min, max).
    pub fn versions(self) -> (u16, u16) {
        (0, 0)
    }
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// One request as it lies in the receive buffer.
#[derive(Clone, Copy, Debug)]
pub struct RequestFrame<'a> {
    pub api_key: u16,
    pub api_version: u16,
    pub correlation_id: u32,
    pub archive: &'a [u8],
    pub payload: &'a [u8],
}

/// One response as it lies in the receive buffer.
#[derive(Clone, Copy, Debug)]
pub struct ResponseFrame<'a> {
    pub correlation_id: u32,
    pub api_key: u16,
    pub archive: &'a [u8],
    pub payload: &'a [u8],
}

/// Gives the bytes a `PayloadRange` points at, checking its bounds.
pub fn payload_slice<'a>(payload: &'a [u8], range: &ArchivedPayloadRange) -> Result<&'a [u8], NetError> {
    let (offset, len) = (range.offset.to_native(), range.len.to_native());
    let start = offset as usize;
    start
        .checked_add(len as usize)
        .and_then(|end| payload.get(start..end))
        .ok_or(NetError::PayloadOutOfRange {
            offset,
            len,
            payload: payload.len(),
        })
}

impl<'a> RequestFrame<'a> {
    pub fn payload_slice(&self, range: &ArchivedPayloadRange) -> Result<&'a [u8], NetError> {
        payload_slice(self.payload, range)
    }
}

impl<'a> ResponseFrame<'a> {
    pub fn payload_slice(&self, range: &ArchivedPayloadRange) -> Result<&'a [u8], NetError> {
        payload_slice(self.payload, range)
    }
}

/// Splits a byte stream into frames, refusing any frame over the limit as
/// soon as its length prefix arrives, before it is buffered.
#[derive(Clone, Copy, Debug)]
pub struct FrameDecoder {
    pub frame_bytes_max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder {
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
        }
    }
}

impl FrameDecoder {
    /// Total bytes (prefix included) of the frame starting `buf`, once its
    /// length prefix has arrived.
    pub fn frame_bytes(&self, buf: &[u8], header: usize) -> Result<Option<usize>, NetError> {
        if buf.len() < LENGTH_BYTES {
            return Ok(None);
        }
        let size = LENGTH_BYTES + read_u32(buf, 0) as usize;
        if size > self.frame_bytes_max {
            return Err(NetError::FrameTooLarge {
                size,
                max: self.frame_bytes_max,
            });
        }
        if size < LENGTH_BYTES + header {
            return Err(NetError::FrameTooShort {
                size,
                header: LENGTH_BYTES + header,
            });
        }
        Ok(Some(size))
    }

    /// The request at the start of `buf` and the bytes it spans, or None
    /// until all of it has arrived.
    pub fn request<'a>(&self, buf: &'a [u8]) -> Result<Option<(RequestFrame<'a>, usize)>, NetError> {
        let Some(size) = self.frame_bytes(buf, REQUEST_HEADER_BYTES)? else {
            return Ok(None);
        };
        if buf.len() < size {
            return Ok(None);
        }
        let (archive, payload) = split_body(&buf[LENGTH_BYTES + REQUEST_HEADER_BYTES..size], read_u32(buf, 12))?;
        let frame = RequestFrame {
            api_key: read_u16(buf, 4),
            api_version: read_u16(buf, 6),
            correlation_id: read_u32(buf, 8),
            archive,
            payload,
        };
        Ok(Some((frame, size)))
    }

    /// The response at the start of `buf` and the bytes it spans.
    pub fn response<'a>(&self, buf: &'a [u8]) -> Result<Option<(ResponseFrame<'a>, usize)>, NetError> {
        let Some(size) = self.frame_bytes(buf, RESPONSE_HEADER_BYTES)? else {
            return Ok(None);
        };
        if buf.len() < size {
            return Ok(None);
        }
        let (archive, payload) = split_body(&buf[LENGTH_BYTES + RESPONSE_HEADER_BYTES..size], read_u32(buf, 12))?;
        let frame = ResponseFrame {
            correlation_id: read_u32(buf, 4),
            api_key: read_u16(buf, 8),
            archive,
            payload,
        };
        Ok(Some((frame, size)))
    }
}

fn split_body(body: &[u8], archive_len: u32) -> Result<(&[u8], &[u8]), NetError> {
    let archive_len = archive_len as usize;
    if archive_len > body.len() {
        return Err(NetError::ArchiveOverrun {
            archive: archive_len,
            available: body.len(),
        });
    }
    Ok(body.split_at(archive_len))
}

/// Validates an archive and gives access to its message.
pub fn access<'a, T>(archive: &'a [u8], what: &'static str) -> Result<&'a T, NetError>
where
    T: Portable + for<'v> CheckBytes<HighValidator<'v, rancor::Error>>,
{
    rkyv::access::<T, rancor::Error>(archive).map_err(|e| NetError::Malformed {
        what,
        reason: e.to_string(),
    })
}

/// Collects the raw byte slices a message's payload carries, handing out the
/// ranges the message records. Nothing is copied until the frame is written.
#[derive(Debug, Default)]
pub struct PayloadBuilder<'a> {
    slices: Vec<&'a [u8]>,
    len: usize,
}

impl<'a> PayloadBuilder<'a> {
    pub fn push(&mut self, bytes: &'a [u8]) -> Result<PayloadRange, NetError> {
        let too_large = || NetError::TooLargeToEncode {
            what: "payload",
            size: self.len + bytes.len(),
        };
        let offset = u32::try_from(self.len).map_err(|_| too_large())?;
        let len = u32::try_from(bytes.len()).map_err(|_| too_large())?;
        self.len += bytes.len();
        self.slices.push(bytes);
        Ok(PayloadRange { offset, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn slices(&self) -> &[&'a [u8]] {
        &self.slices
    }
}

/// A message rkyv can serialize into a frame.
pub trait Message: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>> {}
impl<T> Message for T where T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>> {}

fn archive<M: Message>(message: &M) -> AlignedVec {
    rkyv::to_bytes::<rancor::Error>(message).expect("serializing a message into memory cannot fail")
}

fn frame_len(header: usize, archive: usize, payload: usize, what: &'static str) -> Result<u32, NetError> {
    let size = header + archive + payload;
    u32::try_from(size).map_err(|_| NetError::TooLargeToEncode { what, size })
}

/// Writes a request's length, header and archive into `out`; its payload
/// (`payload_len` bytes) must follow on the wire, written by the caller from
/// its own buffers (a vectored write), or with `encode_request`.
pub fn encode_request_head<M: Message>(
    api_key: ApiKey,
    api_version: u16,
    correlation_id: u32,
    message: &M,
    payload_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), NetError> {
    let archive = archive(message);
    let len = frame_len(REQUEST_HEADER_BYTES, archive.len(), payload_len, "request")?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(api_key as u16).to_le_bytes());
    out.extend_from_slice(&api_version.to_le_bytes());
    out.extend_from_slice(&correlation_id.to_le_bytes());
    out.extend_from_slice(&(archive.len() as u32).to_le_bytes());
    out.extend_from_slice(&archive);
    Ok(())
}

/// A whole request frame, payload copied in: for tests and small messages.
pub fn encode_request<M: Message>(
    api_key: ApiKey,
    api_version: u16,
    correlation_id: u32,
    message: &M,
    payload: &PayloadBuilder<'_>,
    out: &mut Vec<u8>,
) -> Result<(), NetError> {
    encode_request_head(api_key, api_version, correlation_id, message, payload.len(), out)?;
    for slice in payload.slices() {
        out.extend_from_slice(slice);
    }
    Ok(())
}

/// Writes a response's length, header and archive; `payload_len` bytes of
/// payload must follow (for a fetch: batches straight from the log's reads).
pub fn encode_response_head<M: Message>(
    correlation_id: u32,
    api_key: u16,
    message: &M,
    payload_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), NetError> {
    let archive = archive(message);
    let len = frame_len(RESPONSE_HEADER_BYTES, archive.len(), payload_len, "response")?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&correlation_id.to_le_bytes());
    out.extend_from_slice(&api_key.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(archive.len() as u32).to_le_bytes());
    out.extend_from_slice(&archive);
    Ok(())
}

/// A whole response frame, payload copied in.
pub fn encode_response<M: Message>(
    correlation_id: u32,
    api_key: u16,
    message: &M,
    payload: &PayloadBuilder<'_>,
    out: &mut Vec<u8>,
) -> Result<(), NetError> {
    encode_response_head(correlation_id, api_key, message, payload.len(), out)?;
    for slice in payload.slices() {
        out.extend_from_slice(slice);
    }
    Ok(())
}
