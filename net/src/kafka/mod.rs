//! Kafka's wire protocol, sans I/O: framing (a 4-byte big-endian length
//! before each message), request and response headers and bodies through
//! the `kafka-protocol` crate (generated from Kafka's message specs), the
//! versions corelog serves, and the conversion of record batches between
//! Kafka's v2 format and corelog's storage batches (`records`).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey as KafkaApi, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::error::NetError;

pub mod records;
pub mod unsupported;

pub use kafka_protocol;

/// Bytes of the length before each message.
pub const LENGTH_BYTES: usize = 4;

/// The APIs corelog's Kafka listener serves, with the versions of each:
/// those librdkafka 2.x, kafka-python and the Java client negotiate, up to
/// the last version whose fields corelog gives meaning to (Fetch and
/// Metadata stop before topic ids replace names).
pub const SUPPORTED: &[(KafkaApi, i16, i16)] = &[
    (KafkaApi::Produce, 3, 9),
    (KafkaApi::Fetch, 4, 12),
    // v7 adds MAX_TIMESTAMP (-3) lookups, which corelog does not serve.
    (KafkaApi::ListOffsets, 1, 6),
    (KafkaApi::Metadata, 1, 12),
    (KafkaApi::OffsetCommit, 2, 8),
    (KafkaApi::OffsetFetch, 1, 7),
    (KafkaApi::FindCoordinator, 0, 3),
    (KafkaApi::JoinGroup, 0, 7),
    (KafkaApi::Heartbeat, 0, 4),
    (KafkaApi::LeaveGroup, 0, 4),
    (KafkaApi::SyncGroup, 0, 5),
    (KafkaApi::DescribeGroups, 0, 5),
    (KafkaApi::ListGroups, 0, 4),
    (KafkaApi::ApiVersions, 0, 3),
    (KafkaApi::CreateTopics, 2, 7),
    // v6 deletes by topic id; corelog's topics have names only.
    (KafkaApi::DeleteTopics, 1, 5),
    (KafkaApi::DescribeConfigs, 1, 4),
    (KafkaApi::InitProducerId, 0, 4),
    (KafkaApi::AddPartitionsToTxn, 0, 3),
    (KafkaApi::AddOffsetsToTxn, 0, 3),
    (KafkaApi::EndTxn, 0, 3),
    (KafkaApi::TxnOffsetCommit, 0, 3),
    // v2 is the first with the client's current leader epoch (KIP-320).
    (KafkaApi::OffsetForLeaderEpoch, 2, 4),
    (KafkaApi::DescribeLogDirs, 0, 4),
    // v1 lets a client ask for the controllers' endpoints (KIP-919), which
    // corelog does not expose: only brokers are described.
    (KafkaApi::DescribeCluster, 0, 1),
    (KafkaApi::OffsetDelete, 0, 0),
    (KafkaApi::AlterConfigs, 0, 2),
    (KafkaApi::IncrementalAlterConfigs, 0, 1),
    (KafkaApi::CreatePartitions, 0, 3),
    (KafkaApi::DeleteRecords, 0, 2),
    (KafkaApi::DescribeProducers, 0, 0),
    // v2 filters by a transactional id pattern (a Java regex).
    (KafkaApi::ListTransactions, 0, 1),
    (KafkaApi::DescribeTransactions, 0, 0),
];

/// The versions of `api` corelog serves.
pub fn supported(api: KafkaApi) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(a, _, _)| *a == api)
        .map(|(_, min, max)| (*min, *max))
}

/// The length of the message at the start of `bytes`, once its length
/// prefix has arrived; refuses one over `max`.
pub fn frame_length(bytes: &[u8], max: usize) -> Result<Option<usize>, NetError> {
    if bytes.len() < LENGTH_BYTES {
        return Ok(None);
    }
    let length = i32::from_be_bytes(bytes[..LENGTH_BYTES].try_into().expect("4 bytes"));
    if length < 8 {
        return Err(NetError::FrameTooShort {
            size: length.max(0) as usize,
            header: 8,
        });
    }
    let length = length as usize;
    if length > max {
        return Err(NetError::FrameTooLarge { size: length, max });
    }
    Ok(Some(length))
}

/// A request as far as it could be read.
#[derive(Debug)]
pub enum Decoded {
    Request {
        header: RequestHeader,
        version: i16,
        body: Box<RequestKind>,
    },
    /// An API or version corelog does not serve: answered with Kafka's
    /// UNSUPPORTED_VERSION, the connection kept.
    Unsupported {
        api_key: i16,
        version: i16,
        correlation_id: i32,
        /// The request, where the crate knows its API at that version: the
        /// error can then be the API's own response (`unsupported`).
        request: Option<Box<RequestKind>>,
    },
}

/// Decodes one request message (without its length prefix).
pub fn decode_request(message: Bytes) -> Result<Decoded, NetError> {
    let malformed = |reason: String| NetError::Malformed {
        what: "Kafka request",
        reason,
    };
    if message.len() < 8 {
        return Err(malformed(format!(
            "{} bytes, shorter than a request header",
            message.len()
        )));
    }
    let api_key = i16::from_be_bytes([message[0], message[1]]);
    let version = i16::from_be_bytes([message[2], message[3]]);
    let correlation_id = i32::from_be_bytes([message[4], message[5], message[6], message[7]]);
    let unsupported = |request| Decoded::Unsupported {
        api_key,
        version,
        correlation_id,
        request,
    };
    let Ok(api) = KafkaApi::try_from(api_key) else {
        return Ok(unsupported(None));
    };
    let served = supported(api).is_some_and(|(min, max)| (min..=max).contains(&version));
    let mut buf = message;
    if !served {
        // Versions the crate knows decode (or the answer is the generic
        // one); a request that does not is unanswerable in its own format.
        let request = RequestHeader::decode(&mut buf, api.request_header_version(version))
            .and_then(|_| RequestKind::decode(api, &mut buf, version))
            .ok()
            .map(Box::new);
        return Ok(unsupported(request));
    }
    let header = RequestHeader::decode(&mut buf, api.request_header_version(version))
        .map_err(|e| malformed(format!("{api:?} v{version} header: {e}")))?;
    let body =
        RequestKind::decode(api, &mut buf, version).map_err(|e| malformed(format!("{api:?} v{version}: {e}")))?;
    Ok(Decoded::Request {
        header,
        version,
        body: Box::new(body),
    })
}

/// Encodes a response message with its length prefix into `out`.
pub fn encode_response(
    correlation_id: i32,
    api: KafkaApi,
    version: i16,
    body: &ResponseKind,
    out: &mut BytesMut,
) -> Result<(), NetError> {
    let start = out.len();
    out.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let encode_error = |e: anyhow::Error| NetError::Malformed {
        what: "Kafka response",
        reason: format!("{api:?} v{version}: {e}"),
    };
    header
        .encode(out, api.response_header_version(version))
        .map_err(encode_error)?;
    body.encode(out, version).map_err(encode_error)?;
    let length = (out.len() - start - LENGTH_BYTES) as i32;
    out[start..start + LENGTH_BYTES].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

/// AddPartitionsToTxn's per-partition results for `topics`, each
/// partition's error code from `code` (given its index).
pub fn add_partitions_results(
    topics: &[kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic],
    code: impl Fn(i32) -> i16,
) -> Vec<kafka_protocol::messages::add_partitions_to_txn_response::AddPartitionsToTxnTopicResult> {
    use kafka_protocol::messages::add_partitions_to_txn_response::{
        AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
    };
    topics
        .iter()
        .map(|t| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(
                    t.partitions
                        .iter()
                        .map(|p| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(*p)
                                .with_partition_error_code(code(*p))
                        })
                        .collect(),
                )
        })
        .collect()
}

/// Reads the correlation id back from an encoded response (for tests and
/// clients).
pub fn response_correlation_id(message: &[u8]) -> Option<i32> {
    let mut buf = message.get(..4)?;
    Some(buf.get_i32())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;

    fn request(api: KafkaApi, version: i16, body: &RequestKind) -> Bytes {
        let mut out = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str("test")))
            .encode(&mut out, api.request_header_version(version))
            .unwrap();
        body.encode(&mut out, version).unwrap();
        out.freeze()
    }

    #[test]
    fn supported_requests_decode_and_others_are_named_unsupported() {
        let body = RequestKind::ApiVersions(
            ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("t"))
                .with_client_software_version(StrBytes::from_static_str("1")),
        );
        match decode_request(request(KafkaApi::ApiVersions, 3, &body)).unwrap() {
            Decoded::Request { header, version, body } => {
                assert_eq!((header.correlation_id, version), (42, 3));
                assert!(matches!(*body, RequestKind::ApiVersions(_)));
            }
            other => panic!("{other:?}"),
        }
        let metadata = RequestKind::Metadata(MetadataRequest::default());
        assert!(matches!(
            decode_request(request(KafkaApi::Metadata, 13, &metadata)).unwrap(),
            Decoded::Unsupported {
                api_key: 3,
                version: 13,
                correlation_id: 42,
                request: Some(_),
            }
        ));
        let mut unknown = BytesMut::new();
        unknown.put_i16(999);
        unknown.put_i16(0);
        unknown.put_i32(7);
        assert!(matches!(
            decode_request(unknown.freeze()).unwrap(),
            Decoded::Unsupported { api_key: 999, .. }
        ));
        assert!(decode_request(Bytes::from_static(b"\0\x03")).is_err());
        let mut truncated = request(KafkaApi::Metadata, 9, &metadata).to_vec();
        truncated.truncate(12);
        assert!(decode_request(Bytes::from(truncated)).is_err());
    }

    #[test]
    fn frame_lengths_are_checked() {
        assert_eq!(frame_length(&[0, 0], 100).unwrap(), None);
        assert_eq!(frame_length(&[0, 0, 0, 20], 100).unwrap(), Some(20));
        assert!(frame_length(&[0, 0, 1, 0], 100).is_err());
        assert!(frame_length(&[0xff, 0xff, 0xff, 0xff], 100).is_err());
    }
}
