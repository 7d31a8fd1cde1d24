//! Answers to requests corelog does not serve at the version asked: each
//! API's own response, at that version, with UNSUPPORTED_VERSION wherever the
//! response carries an error code (top level, or each topic, partition, group
//! or resource the request named), so a client reads a clear error on a
//! connection that stays open instead of a dropped connection.

use kafka_protocol::messages::add_partitions_to_txn_response::AddPartitionsToTxnResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResult;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::*;
use uuid::Uuid;

/// `request`'s response at `version` with `code` in every error field it
/// has there; None for an API without a response built here.
pub fn error_response(request: &RequestKind, version: i16, code: i16) -> Option<ResponseKind> {
    Some(match request {
        RequestKind::Produce(r) => ResponseKind::Produce(
            ProduceResponse::default().with_responses(
                r.topic_data
                    .iter()
                    .map(|t| {
                        TopicProduceResponse::default()
                            .with_name(t.name.clone())
                            .with_topic_id(t.topic_id)
                            .with_partition_responses(
                                t.partition_data
                                    .iter()
                                    .map(|p| {
                                        PartitionProduceResponse::default()
                                            .with_index(p.index)
                                            .with_error_code(code)
                                            .with_base_offset(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::Fetch(r) => {
            let mut response = FetchResponse::default().with_responses(
                r.topics
                    .iter()
                    .map(|t| {
                        FetchableTopicResponse::default()
                            .with_topic(t.topic.clone())
                            .with_topic_id(t.topic_id)
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        PartitionData::default()
                                            .with_partition_index(p.partition)
                                            .with_error_code(code)
                                            .with_high_watermark(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
            if version >= 7 {
                response.error_code = code;
            }
            ResponseKind::Fetch(response)
        }
        RequestKind::OffsetForLeaderEpoch(r) => ResponseKind::OffsetForLeaderEpoch(
            OffsetForLeaderEpochResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        OffsetForLeaderTopicResult::default()
                            .with_topic(t.topic.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        EpochEndOffset::default()
                                            .with_partition(p.partition)
                                            .with_error_code(code)
                                            .with_leader_epoch(-1)
                                            .with_end_offset(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(
            ListOffsetsResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        ListOffsetsTopicResponse::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        ListOffsetsPartitionResponse::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(code)
                                            .with_timestamp(-1)
                                            .with_offset(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::Metadata(r) => {
            let mut response = MetadataResponse::default().with_topics(
                r.topics
                    .iter()
                    .flatten()
                    .map(|t| {
                        MetadataResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_topic_id(t.topic_id)
                            .with_error_code(code)
                    })
                    .collect(),
            );
            if version >= 13 {
                response.error_code = code;
            }
            ResponseKind::Metadata(response)
        }
        RequestKind::OffsetCommit(r) => ResponseKind::OffsetCommit(
            OffsetCommitResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        OffsetCommitResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_topic_id(t.topic_id)
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        OffsetCommitResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::OffsetFetch(r) if version >= 8 => ResponseKind::OffsetFetch(
            OffsetFetchResponse::default().with_groups(
                r.groups
                    .iter()
                    .map(|g| {
                        OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id.clone())
                            .with_error_code(code)
                            .with_topics(
                                g.topics
                                    .iter()
                                    .flatten()
                                    .map(|t| {
                                        OffsetFetchResponseTopics::default()
                                            .with_name(t.name.clone())
                                            .with_topic_id(t.topic_id)
                                            .with_partitions(
                                                t.partition_indexes
                                                    .iter()
                                                    .map(|p| {
                                                        OffsetFetchResponsePartitions::default()
                                                            .with_partition_index(*p)
                                                            .with_committed_offset(-1)
                                                            .with_error_code(code)
                                                    })
                                                    .collect(),
                                            )
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::OffsetFetch(r) => {
            let mut response = OffsetFetchResponse::default().with_topics(
                r.topics
                    .iter()
                    .flatten()
                    .map(|t| {
                        OffsetFetchResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partition_indexes
                                    .iter()
                                    .map(|p| {
                                        OffsetFetchResponsePartition::default()
                                            .with_partition_index(*p)
                                            .with_committed_offset(-1)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
            if version >= 2 {
                response.error_code = code;
            }
            ResponseKind::OffsetFetch(response)
        }
        RequestKind::FindCoordinator(r) if version >= 4 => ResponseKind::FindCoordinator(
            FindCoordinatorResponse::default().with_coordinators(
                r.coordinator_keys
                    .iter()
                    .map(|key| {
                        Coordinator::default()
                            .with_key(key.clone())
                            .with_node_id(BrokerId(-1))
                            .with_port(-1)
                            .with_error_code(code)
                    })
                    .collect(),
            ),
        ),
        RequestKind::FindCoordinator(_) => ResponseKind::FindCoordinator(
            FindCoordinatorResponse::default()
                .with_error_code(code)
                .with_node_id(BrokerId(-1))
                .with_port(-1),
        ),
        RequestKind::JoinGroup(_) => ResponseKind::JoinGroup(
            JoinGroupResponse::default()
                .with_error_code(code)
                .with_generation_id(-1),
        ),
        RequestKind::Heartbeat(_) => ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(code)),
        RequestKind::LeaveGroup(_) => ResponseKind::LeaveGroup(LeaveGroupResponse::default().with_error_code(code)),
        RequestKind::SyncGroup(_) => ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(code)),
        RequestKind::DescribeGroups(r) => ResponseKind::DescribeGroups(
            DescribeGroupsResponse::default().with_groups(
                r.groups
                    .iter()
                    .map(|g| DescribedGroup::default().with_group_id(g.clone()).with_error_code(code))
                    .collect(),
            ),
        ),
        RequestKind::ListGroups(_) => ResponseKind::ListGroups(ListGroupsResponse::default().with_error_code(code)),
        RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(
            CreateTopicsResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        CreatableTopicResult::default()
                            .with_name(t.name.clone())
                            .with_error_code(code)
                            .with_num_partitions(-1)
                            .with_replication_factor(-1)
                    })
                    .collect(),
            ),
        ),
        RequestKind::DeleteTopics(r) => {
            let named = r.topic_names.iter().map(|n| (Some(n.clone()), Uuid::nil()));
            let states = r.topics.iter().map(|t| (t.name.clone(), t.topic_id));
            ResponseKind::DeleteTopics(
                DeleteTopicsResponse::default().with_responses(
                    named
                        .chain(states)
                        .map(|(name, id)| {
                            DeletableTopicResult::default()
                                .with_name(name)
                                .with_topic_id(id)
                                .with_error_code(code)
                        })
                        .collect(),
                ),
            )
        }
        RequestKind::DescribeConfigs(r) => ResponseKind::DescribeConfigs(
            DescribeConfigsResponse::default().with_results(
                r.resources
                    .iter()
                    .map(|resource| {
                        DescribeConfigsResult::default()
                            .with_error_code(code)
                            .with_resource_type(resource.resource_type)
                            .with_resource_name(resource.resource_name.clone())
                    })
                    .collect(),
            ),
        ),
        RequestKind::InitProducerId(_) => ResponseKind::InitProducerId(
            InitProducerIdResponse::default()
                .with_error_code(code)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        ),
        RequestKind::AddPartitionsToTxn(r) if version >= 4 => ResponseKind::AddPartitionsToTxn(
            AddPartitionsToTxnResponse::default()
                .with_error_code(code)
                .with_results_by_transaction(
                    r.transactions
                        .iter()
                        .map(|t| {
                            AddPartitionsToTxnResult::default()
                                .with_transactional_id(t.transactional_id.clone())
                                .with_topic_results(super::add_partitions_results(&t.topics, |_| code))
                        })
                        .collect(),
                ),
        ),
        RequestKind::AddPartitionsToTxn(r) => ResponseKind::AddPartitionsToTxn(
            AddPartitionsToTxnResponse::default()
                .with_results_by_topic_v3_and_below(super::add_partitions_results(&r.v3_and_below_topics, |_| code)),
        ),
        RequestKind::AddOffsetsToTxn(_) => {
            ResponseKind::AddOffsetsToTxn(AddOffsetsToTxnResponse::default().with_error_code(code))
        }
        RequestKind::EndTxn(_) => ResponseKind::EndTxn(EndTxnResponse::default().with_error_code(code)),
        RequestKind::TxnOffsetCommit(r) => ResponseKind::TxnOffsetCommit(
            TxnOffsetCommitResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        TxnOffsetCommitResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        TxnOffsetCommitResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::ListTransactions(_) => {
            ResponseKind::ListTransactions(ListTransactionsResponse::default().with_error_code(code))
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopics};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use super::*;
    use crate::kafka::{decode_request, supported, Decoded};

    const UNSUPPORTED_VERSION: i16 = 35;

    fn name(text: &'static str) -> TopicName {
        TopicName(StrBytes::from_static_str(text))
    }

    /// Encodes `body` at `version`, runs it through the listener's decoding
    /// and this module, and decodes the answer as a client would.
    fn answer(api: ApiKey, version: i16, body: RequestKind) -> ResponseKind {
        assert!(
            !supported(api).is_some_and(|(min, max)| (min..=max).contains(&version)),
            "{api:?} v{version} is served"
        );
        let mut out = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(9)
            .encode(&mut out, api.request_header_version(version))
            .unwrap();
        body.encode(&mut out, version).unwrap();
        let Decoded::Unsupported {
            correlation_id,
            request: Some(request),
            ..
        } = decode_request(out.freeze()).unwrap()
        else {
            panic!("{api:?} v{version}: not decoded as an unsupported request")
        };
        assert_eq!(correlation_id, 9);
        let response = error_response(&request, version, UNSUPPORTED_VERSION).expect("an answer");
        let mut encoded = BytesMut::new();
        crate::kafka::encode_response(9, api, version, &response, &mut encoded).unwrap();
        let mut frame = encoded.split_off(4).freeze();
        let header = ResponseHeader::decode(&mut frame, api.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, 9);
        let decoded = ResponseKind::decode(api, &mut frame, version).unwrap();
        assert!(frame.is_empty(), "{api:?} v{version}: the whole response read");
        decoded
    }

    use kafka_protocol::protocol::Decodable;

    #[test]
    fn unserved_versions_get_their_own_response_with_unsupported_version() {
        let produce = RequestKind::Produce(ProduceRequest::default().with_acks(1).with_topic_data(
            vec![TopicProduceData::default()
                .with_name(name("t"))
                .with_partition_data(vec![PartitionProduceData::default().with_index(2)])],
        ));
        let ResponseKind::Produce(r) = answer(ApiKey::Produce, 10, produce) else {
            panic!()
        };
        assert_eq!(r.responses[0].name, name("t"));
        assert_eq!(r.responses[0].partition_responses[0].index, 2);
        assert_eq!(r.responses[0].partition_responses[0].error_code, UNSUPPORTED_VERSION);

        let fetch = RequestKind::Fetch(FetchRequest::default().with_topics(vec![FetchTopic::default()
            .with_topic_id(Uuid::from_u128(7))
            .with_partitions(vec![FetchPartition::default().with_partition(1)])]));
        let ResponseKind::Fetch(r) = answer(ApiKey::Fetch, 13, fetch) else {
            panic!()
        };
        assert_eq!(r.error_code, UNSUPPORTED_VERSION);
        assert_eq!(r.responses[0].topic_id, Uuid::from_u128(7));
        assert_eq!(r.responses[0].partitions[0].error_code, UNSUPPORTED_VERSION);

        for version in [0, 13] {
            let metadata = RequestKind::Metadata(
                MetadataRequest::default()
                    .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(name("m")))])),
            );
            let ResponseKind::Metadata(r) = answer(ApiKey::Metadata, version, metadata) else {
                panic!()
            };
            assert_eq!(r.topics[0].error_code, UNSUPPORTED_VERSION, "Metadata v{version}");
        }

        let offsets = RequestKind::OffsetFetch(OffsetFetchRequest::default().with_groups(vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(StrBytes::from_static_str("g")))
                .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                    .with_name(name("t"))
                    .with_partition_indexes(vec![0, 1])])),
        ]));
        let ResponseKind::OffsetFetch(r) = answer(ApiKey::OffsetFetch, 8, offsets) else {
            panic!()
        };
        assert_eq!(r.groups[0].error_code, UNSUPPORTED_VERSION);
        assert_eq!(r.groups[0].topics[0].partitions.len(), 2);

        let delete = RequestKind::DeleteTopics(DeleteTopicsRequest::default().with_topics(vec![
            delete_topics_request::DeleteTopicState::default().with_name(Some(name("d"))),
        ]));
        let ResponseKind::DeleteTopics(r) = answer(ApiKey::DeleteTopics, 6, delete) else {
            panic!()
        };
        assert_eq!(r.responses[0].error_code, UNSUPPORTED_VERSION);

        let find = RequestKind::FindCoordinator(
            FindCoordinatorRequest::default().with_coordinator_keys(vec![StrBytes::from_static_str("g")]),
        );
        let ResponseKind::FindCoordinator(r) = answer(ApiKey::FindCoordinator, 4, find) else {
            panic!()
        };
        assert_eq!(r.coordinators[0].error_code, UNSUPPORTED_VERSION);

        let join = RequestKind::JoinGroup(
            JoinGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("g")))
                .with_protocol_type(StrBytes::from_static_str("consumer")),
        );
        let ResponseKind::JoinGroup(r) = answer(ApiKey::JoinGroup, 9, join) else {
            panic!()
        };
        assert_eq!(r.error_code, UNSUPPORTED_VERSION);

        let list = RequestKind::ListOffsets(ListOffsetsRequest::default());
        let ResponseKind::ListOffsets(r) = answer(ApiKey::ListOffsets, 7, list) else {
            panic!()
        };
        assert!(r.topics.is_empty());

        let txn = RequestKind::AddPartitionsToTxn(AddPartitionsToTxnRequest::default().with_transactions(vec![
            add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default()
                .with_transactional_id(TransactionalId(StrBytes::from_static_str("x"))),
        ]));
        let ResponseKind::AddPartitionsToTxn(r) = answer(ApiKey::AddPartitionsToTxn, 4, txn) else {
            panic!()
        };
        assert_eq!(r.error_code, UNSUPPORTED_VERSION);
        assert_eq!(r.results_by_transaction.len(), 1);
    }
}
