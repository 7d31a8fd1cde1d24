//! The Kafka listener's decoders, fed arbitrary bytes as a client may send
//! them: framing, request headers and bodies of every API at every version
//! (the error responses of versions corelog does not serve included), and
//! produced record batches (every compression), also with their length and
//! CRC made right so the walk of their records is reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::kafka::{self, records, Decoded};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(length)) = kafka::frame_length(rest, 1 << 16) {
        let Some(message) = rest.get(kafka::LENGTH_BYTES..kafka::LENGTH_BYTES + length) else {
            break;
        };
        let decoded = kafka::decode_request(bytes::Bytes::copy_from_slice(message));
        if let Ok(Decoded::Unsupported {
            api_key,
            version,
            correlation_id,
            request: Some(request),
        }) = &decoded
        {
            if let (Some(response), Ok(api)) = (
                kafka::unsupported::error_response(request, *version, 35),
                kafka::kafka_protocol::messages::ApiKey::try_from(*api_key),
            ) {
                let mut out = bytes::BytesMut::new();
                let _ = kafka::encode_response(*correlation_id, api, *version, &response, &mut out);
            }
        }
        if let Ok(Decoded::Request { body, .. }) = decoded {
            if let kafka::kafka_protocol::messages::RequestKind::Produce(produce) = *body {
                for topic in produce.topic_data {
                    for partition in topic.partition_data {
                        if let Some(batches) = partition.records {
                            let _ = records::to_storage(batches);
                        }
                    }
                }
            }
        }
        rest = &rest[kafka::LENGTH_BYTES + length..];
    }
    // Record batches on their own, as the bulk of a produce request.
    let _ = records::to_storage(bytes::Bytes::copy_from_slice(data));
    // One batch whose length and CRC are right: past the checks random
    // bytes fail, into the walk of its records.
    if data.len() >= 61 {
        let mut batch = data.to_vec();
        let length = (batch.len() - 12) as i32;
        batch[8..12].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        if let Ok(frames) = records::to_storage(bytes::Bytes::from(batch)) {
            // What was stored serves back as Kafka batches.
            let _ = records::to_kafka(&frames, false);
        }
    }
});
