//! The Kafka listener's decoders, fed arbitrary bytes as a client may send
//! them: framing, request headers and bodies of every API at every version
//! corelog serves, and produced record batches (every compression).
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::kafka::{self, records, Decoded};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(length)) = kafka::frame_length(rest, 1 << 16) {
        let Some(message) = rest.get(kafka::LENGTH_BYTES..kafka::LENGTH_BYTES + length) else {
            break;
        };
        if let Ok(Decoded::Request { body, .. }) = kafka::decode_request(bytes::Bytes::copy_from_slice(message)) {
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
});
