//! The native protocol's decoders, fed arbitrary bytes as a client or a
//! broker may send them: framing, request decoding (every api, the group
//! and producer-id requests included), payload ranges, and the response
//! archives a client decodes, with the consumer protocol's subscription
//! and assignment bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::codec::{access, FrameDecoder};
use net::messages::{self, Request};

fuzz_target!(|data: &[u8]| {
    let decoder = FrameDecoder { frame_bytes_max: 1 << 16 };
    let mut rest = data;
    while let Ok(Some((frame, used))) = decoder.request(rest) {
        if let Ok(Request::Produce(produce)) = messages::decode_request(&frame) {
            for topic in produce.topics.iter() {
                for partition in topic.partitions.iter() {
                    let _ = frame.payload_slice(&partition.batches);
                }
            }
        }
        rest = &rest[used..];
    }
    if let Ok(Some((frame, _))) = decoder.response(data) {
        if let Ok(fetch) = access::<messages::ArchivedFetchResponse>(frame.archive, "fetch") {
            for topic in fetch.topics.iter() {
                for partition in topic.partitions.iter() {
                    let _ = frame.payload_slice(&partition.records);
                }
            }
        }
        let _ = access::<messages::ArchivedMetadataResponse>(frame.archive, "metadata");
        let _ = access::<messages::ArchivedProduceResponse>(frame.archive, "produce");
        let _ = access::<messages::ArchivedErrorResponse>(frame.archive, "error");
        let _ = access::<messages::ArchivedJoinGroupResponse>(frame.archive, "join");
        let _ = access::<messages::ArchivedSyncGroupResponse>(frame.archive, "sync");
        let _ = access::<messages::ArchivedOffsetFetchResponse>(frame.archive, "offset fetch");
        let _ = access::<messages::ArchivedOffsetCommitResponse>(frame.archive, "offset commit");
        let _ = access::<messages::ArchivedDescribeGroupsResponse>(frame.archive, "describe groups");
        let _ = access::<messages::ArchivedListGroupsResponse>(frame.archive, "list groups");
        let _ = access::<messages::ArchivedInitProducerIdResponse>(frame.archive, "init producer id");
        let _ = access::<messages::ArchivedAddPartitionsToTxnResponse>(frame.archive, "add partitions");
        let _ = access::<messages::ArchivedTxnResponse>(frame.archive, "txn");
        // What a group's leader and members read from each other's bytes.
        let _ = access::<messages::ArchivedConsumerSubscription>(frame.archive, "subscription");
        let _ = access::<messages::ArchivedConsumerAssignment>(frame.archive, "assignment");
    }
});
