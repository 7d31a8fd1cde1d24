//! Kafka's group and transaction requests, served by the same coordinators
//! as the native ones (`shard::groups`, `shard::txns`). A group's or
//! transactional id's coordinator is the shard owning its internal
//! partition; FindCoordinator names it (`Endpoints`).

use std::time::Duration;

use net::kafka::kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use net::kafka::kafka_protocol::messages::find_coordinator_response::Coordinator;
use net::kafka::kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use net::kafka::kafka_protocol::messages::leave_group_response::MemberResponse;
use net::kafka::kafka_protocol::messages::list_groups_response::ListedGroup;
use net::kafka::kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use net::kafka::kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use net::kafka::kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use net::kafka::kafka_protocol::messages::*;
use net::kafka::kafka_protocol::protocol::StrBytes;
use net::ErrorCode;

use super::{name, Endpoints};
use crate::error::BrokerError;
use crate::group::JoinRequest;
use crate::shard::{GroupAnswer, GroupCall, Shard, TxnAnswer, TxnCall};

/// OffsetDelete: a group's commits of the partitions named, unless its
/// members consume their topics.
pub(super) async fn offset_delete(shard: &Shard, request: OffsetDeleteRequest) -> ResponseKind {
    let partitions = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.name.0.to_string(), p.partition_index.max(0) as u32))
        })
        .collect();
    let call = GroupCall::DeleteOffsets {
        group: request.group_id.0.to_string(),
        partitions,
    };
    let mut response = OffsetDeleteResponse::default();
    match shard.group_call(call).await {
        Ok(GroupAnswer::Committed(results)) => {
            for (topic, partition, code) in results {
                let entry = offset_delete_response::OffsetDeleteResponsePartition::default()
                    .with_partition_index(partition as i32)
                    .with_error_code(code.code());
                match response.topics.last_mut() {
                    Some(last) if *last.name.0 == *topic => last.partitions.push(entry),
                    _ => response.topics.push(
                        offset_delete_response::OffsetDeleteResponseTopic::default()
                            .with_name(super::topic_name(&topic))
                            .with_partitions(vec![entry]),
                    ),
                }
            }
        }
        other => response.error_code = error_of(other),
    }
    ResponseKind::OffsetDelete(response)
}

fn error_of(answer: Result<GroupAnswer, BrokerError>) -> i16 {
    match answer {
        Ok(GroupAnswer::Error(code)) => code.code(),
        Ok(other) => {
            tracing::error!(?other, "coordinator answered another request");
            ErrorCode::UnknownServerError.code()
        }
        Err(error) => {
            tracing::warn!(%error, "group request failed");
            error.coordinator_code().code()
        }
    }
}

pub(super) fn txn_code(answer: Result<TxnAnswer, BrokerError>) -> i16 {
    match answer {
        Ok(TxnAnswer::Error(code)) => code.code(),
        Ok(TxnAnswer::Initialized { .. } | TxnAnswer::Described(_)) => 0,
        Err(error) => {
            tracing::warn!(%error, "transaction request failed");
            error.coordinator_code().code()
        }
    }
}

/// The coordinator of each key: the shard owning the key's partition of
/// `__consumer_offsets` (groups) or `__transaction_state` (transactional
/// ids), as a broker of its own when shards have ports.
pub(super) fn find_coordinator(
    shard: &Shard,
    advertised: &Endpoints,
    version: i16,
    request: FindCoordinatorRequest,
) -> ResponseKind {
    // Kafka's key types: 0 a group, 1 a transactional id.
    let transactional = request.key_type == 1;
    let table = shard.metadata.snapshot();
    let coordinator = |key: &str| {
        let at = if transactional {
            shard.txn_coordinator_at(key)
        } else {
            shard.group_coordinator_at(key)
        };
        match at {
            Ok((node, owner)) => {
                let (id, at) = super::broker_at(&table, advertised, node, owner);
                (ErrorCode::None, id, at)
            }
            Err(error) => {
                tracing::warn!(%error, key, "no coordinator");
                (ErrorCode::CoordinatorNotAvailable, -1, advertised.bootstrap.clone())
            }
        }
    };
    let mut response = FindCoordinatorResponse::default();
    if version >= 4 {
        response.coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let (code, id, at) = coordinator(&key);
                Coordinator::default()
                    .with_key(key)
                    .with_error_code(code.code())
                    .with_node_id(BrokerId(id))
                    .with_host(name(&at.host))
                    .with_port(at.port)
            })
            .collect();
    } else {
        let (code, id, at) = coordinator(&request.key);
        response = response
            .with_error_code(code.code())
            .with_node_id(BrokerId(id))
            .with_host(name(&at.host))
            .with_port(at.port);
    }
    ResponseKind::FindCoordinator(response)
}

pub(super) async fn join(shard: &Shard, version: i16, request: JoinGroupRequest) -> ResponseKind {
    let member_id = request.member_id.to_string();
    let call = GroupCall::Join(JoinRequest {
        group: request.group_id.0.to_string(),
        member_id: member_id.clone(),
        client_id: "kafka".to_string(),
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.to_vec()))
            .collect(),
        session_timeout: Duration::from_millis(request.session_timeout_ms.max(0) as u64),
        // v0 has no rebalance timeout: the session timeout serves.
        rebalance_timeout: Duration::from_millis(if request.rebalance_timeout_ms > 0 {
            request.rebalance_timeout_ms as u64
        } else {
            request.session_timeout_ms.max(0) as u64
        }),
        require_member_id: version >= 4,
    });
    let response = match shard.group_call(call).await {
        Ok(GroupAnswer::Join(outcome)) => JoinGroupResponse::default()
            .with_error_code(outcome.error.code())
            .with_generation_id(outcome.generation)
            .with_protocol_type(Some(request.protocol_type))
            .with_protocol_name(Some(StrBytes::from_string(outcome.protocol)))
            .with_leader(StrBytes::from_string(outcome.leader))
            .with_member_id(StrBytes::from_string(outcome.member_id))
            .with_members(
                outcome
                    .members
                    .into_iter()
                    .map(|(member_id, metadata)| {
                        JoinGroupResponseMember::default()
                            .with_member_id(StrBytes::from_string(member_id))
                            .with_metadata(metadata.into())
                    })
                    .collect(),
            ),
        other => JoinGroupResponse::default()
            .with_error_code(error_of(other))
            .with_generation_id(-1)
            .with_member_id(StrBytes::from_string(member_id)),
    };
    ResponseKind::JoinGroup(response)
}

pub(super) async fn sync(shard: &Shard, request: SyncGroupRequest) -> ResponseKind {
    let call = GroupCall::Sync {
        group: request.group_id.0.to_string(),
        generation: request.generation_id,
        member_id: request.member_id.to_string(),
        assignments: request
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.to_vec()))
            .collect(),
    };
    let response = match shard.group_call(call).await {
        Ok(GroupAnswer::Sync(outcome)) => SyncGroupResponse::default()
            .with_error_code(outcome.error.code())
            .with_protocol_type(request.protocol_type)
            .with_protocol_name(request.protocol_name)
            .with_assignment(outcome.assignment.into()),
        other => SyncGroupResponse::default().with_error_code(error_of(other)),
    };
    ResponseKind::SyncGroup(response)
}

pub(super) async fn heartbeat(shard: &Shard, request: HeartbeatRequest) -> ResponseKind {
    let call = GroupCall::Heartbeat {
        group: request.group_id.0.to_string(),
        generation: request.generation_id,
        member_id: request.member_id.to_string(),
    };
    ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(error_of(shard.group_call(call).await)))
}

pub(super) async fn leave(shard: &Shard, version: i16, request: LeaveGroupRequest) -> ResponseKind {
    let group = request.group_id.0.to_string();
    // v3 and later name members in a list; earlier versions one member.
    let members: Vec<String> = if version >= 3 {
        request.members.iter().map(|m| m.member_id.to_string()).collect()
    } else {
        vec![request.member_id.to_string()]
    };
    let mut response = LeaveGroupResponse::default();
    for member_id in members {
        let call = GroupCall::Leave {
            group: group.clone(),
            member_id: member_id.clone(),
        };
        let code = error_of(shard.group_call(call).await);
        if version >= 3 {
            response.members.push(
                MemberResponse::default()
                    .with_member_id(StrBytes::from_string(member_id))
                    .with_error_code(code),
            );
        } else {
            response.error_code = code;
        }
    }
    ResponseKind::LeaveGroup(response)
}

/// A commit request's partitions: those for the coordinator as (topic,
/// partition, offset, metadata), and those refused here (a negative
/// partition or offset: the coordinator's offsets are unsigned, and a
/// negative one stored as anything would move the group).
struct Commits {
    accepted: Vec<(String, u32, u64, String)>,
    refused: Vec<(String, i32)>,
}

fn commits<'a>(topics: impl Iterator<Item = (&'a TopicName, Vec<(i32, i64, Option<&'a StrBytes>)>)>) -> Commits {
    let mut commits = Commits {
        accepted: Vec::new(),
        refused: Vec::new(),
    };
    for (topic, partitions) in topics {
        for (partition, offset, metadata) in partitions {
            match (u32::try_from(partition), u64::try_from(offset)) {
                (Ok(p), Ok(offset)) => commits.accepted.push((
                    topic.0.to_string(),
                    p,
                    offset,
                    metadata.map(|m| m.to_string()).unwrap_or_default(),
                )),
                _ => commits.refused.push((topic.0.to_string(), partition)),
            }
        }
    }
    commits
}

/// Per (topic, partition) error codes of a commit, grouped by topic; the
/// partitions refused before the coordinator with INVALID_REQUEST.
fn commit_results(answer: Result<GroupAnswer, BrokerError>, commits: &Commits) -> Vec<(String, Vec<(i32, i16)>)> {
    let mut results: Vec<(String, i32, i16)> = match answer {
        Ok(GroupAnswer::Committed(results)) => results.into_iter().map(|(t, p, e)| (t, p as i32, e.code())).collect(),
        other => {
            let code = error_of(other);
            commits
                .accepted
                .iter()
                .map(|(t, p, _, _)| (t.clone(), *p as i32, code))
                .collect()
        }
    };
    let invalid = ErrorCode::InvalidRequest.code();
    results.extend(commits.refused.iter().map(|(t, p)| (t.clone(), *p, invalid)));
    let mut topics: Vec<(String, Vec<(i32, i16)>)> = Vec::new();
    for (topic, partition, code) in results {
        match topics.iter_mut().find(|t| t.0 == topic) {
            Some(existing) => existing.1.push((partition, code)),
            None => topics.push((topic, vec![(partition, code)])),
        }
    }
    topics
}

pub(super) async fn offset_commit(shard: &Shard, request: OffsetCommitRequest) -> ResponseKind {
    let offsets = commits(request.topics.iter().map(|t| {
        (
            &t.name,
            t.partitions
                .iter()
                .map(|p| (p.partition_index, p.committed_offset, p.committed_metadata.as_ref()))
                .collect(),
        )
    }));
    let call = GroupCall::Commit {
        group: request.group_id.0.to_string(),
        generation: request.generation_id_or_member_epoch,
        member_id: request.member_id.to_string(),
        offsets: offsets.accepted.clone(),
    };
    let topics = commit_results(shard.group_call(call).await, &offsets)
        .into_iter()
        .map(|(topic, partitions)| {
            OffsetCommitResponseTopic::default()
                .with_name(super::topic_name(&topic))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(p, code)| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    ResponseKind::OffsetCommit(OffsetCommitResponse::default().with_topics(topics))
}

pub(super) async fn offset_fetch(shard: &Shard, version: i16, request: OffsetFetchRequest) -> ResponseKind {
    let only = request.topics.as_ref().map(|topics| {
        topics
            .iter()
            .flat_map(|t| {
                t.partition_indexes
                    .iter()
                    .map(move |p| (t.name.0.to_string(), (*p).max(0) as u32))
            })
            .collect::<Vec<_>>()
    });
    let call = GroupCall::FetchOffsets {
        group: request.group_id.0.to_string(),
        only,
    };
    let mut response = OffsetFetchResponse::default();
    match shard.group_call(call).await {
        Ok(GroupAnswer::Offsets(offsets)) => {
            for ((topic, partition), committed) in offsets {
                let entry = OffsetFetchResponsePartition::default()
                    .with_partition_index(partition as i32)
                    .with_committed_offset(committed.as_ref().map_or(-1, |c| c.offset as i64))
                    .with_committed_leader_epoch(-1)
                    .with_metadata(Some(StrBytes::from_string(
                        committed.map(|c| c.metadata).unwrap_or_default(),
                    )));
                match response.topics.last_mut() {
                    Some(last) if *last.name.0 == *topic => last.partitions.push(entry),
                    _ => response.topics.push(
                        OffsetFetchResponseTopic::default()
                            .with_name(super::topic_name(&topic))
                            .with_partitions(vec![entry]),
                    ),
                }
            }
        }
        other => {
            let code = error_of(other);
            if version >= 2 {
                response.error_code = code;
            } else {
                // v1 has no top-level error: each partition asked carries it.
                for topic in request.topics.iter().flatten() {
                    response.topics.push(
                        OffsetFetchResponseTopic::default()
                            .with_name(topic.name.clone())
                            .with_partitions(
                                topic
                                    .partition_indexes
                                    .iter()
                                    .map(|p| {
                                        OffsetFetchResponsePartition::default()
                                            .with_partition_index(*p)
                                            .with_committed_offset(-1)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            ),
                    );
                }
            }
        }
    }
    ResponseKind::OffsetFetch(response)
}

pub(super) async fn list(shard: &Shard) -> ResponseKind {
    let response = match shard.list_all_groups().await {
        Ok(groups) => ListGroupsResponse::default().with_groups(
            groups
                .into_iter()
                .map(|(group, state, protocol_type)| {
                    ListedGroup::default()
                        .with_group_id(GroupId(StrBytes::from_string(group)))
                        .with_protocol_type(StrBytes::from_string(protocol_type))
                        .with_group_state(StrBytes::from_static_str(state.name()))
                })
                .collect(),
        ),
        Err(error) => {
            tracing::warn!(%error, "listing groups failed");
            ListGroupsResponse::default().with_error_code(ErrorCode::CoordinatorNotAvailable.code())
        }
    };
    ResponseKind::ListGroups(response)
}

pub(super) async fn describe(shard: &Shard, request: DescribeGroupsRequest) -> ResponseKind {
    let mut groups = Vec::new();
    for group in request.groups {
        let call = GroupCall::Describe {
            group: group.0.to_string(),
        };
        let described = DescribedGroup::default().with_group_id(group.clone());
        groups.push(match shard.group_call(call).await {
            Ok(GroupAnswer::Described(Some(d))) => described
                .with_group_state(StrBytes::from_static_str(d.state.name()))
                .with_protocol_type(StrBytes::from_string(d.protocol_type))
                .with_protocol_data(StrBytes::from_string(d.protocol))
                .with_members(
                    d.members
                        .into_iter()
                        .map(|m| {
                            DescribedGroupMember::default()
                                .with_member_id(StrBytes::from_string(m.member_id))
                                .with_client_id(StrBytes::from_string(m.client_id))
                                .with_member_assignment(m.assignment.into())
                        })
                        .collect(),
                ),
            // Kafka describes an unknown group as Dead, without an error.
            Ok(GroupAnswer::Described(None)) => described.with_group_state(StrBytes::from_static_str("Dead")),
            other => described.with_error_code(error_of(other)),
        });
    }
    ResponseKind::DescribeGroups(DescribeGroupsResponse::default().with_groups(groups))
}

pub(super) async fn init_transactional(shard: &Shard, id: &str, timeout_ms: i32) -> Result<(i64, i16), ErrorCode> {
    let call = TxnCall::Init {
        id: id.to_string(),
        timeout_ms,
    };
    match shard.txn_call(call).await {
        Ok(TxnAnswer::Initialized { producer_id, epoch }) => Ok((producer_id, epoch)),
        other => Err(ErrorCode::from_code(txn_code(other))),
    }
}

pub(super) async fn add_partitions_to_txn(shard: &Shard, request: AddPartitionsToTxnRequest) -> ResponseKind {
    let topics = request.v3_and_below_topics;
    let respond = |code: &dyn Fn(i32) -> i16| {
        ResponseKind::AddPartitionsToTxn(
            AddPartitionsToTxnResponse::default()
                .with_results_by_topic_v3_and_below(net::kafka::add_partitions_results(&topics, code)),
        )
    };
    // A negative partition exists nowhere: refused, and (as Kafka answers
    // a request it cannot take whole) the others not attempted.
    if topics.iter().any(|t| t.partitions.iter().any(|p| *p < 0)) {
        let (unknown, skipped) = (
            ErrorCode::UnknownTopicOrPartition.code(),
            ErrorCode::OperationNotAttempted.code(),
        );
        return respond(&|p| if p < 0 { unknown } else { skipped });
    }
    let partitions: Vec<(String, u32)> = topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.name.0.to_string(), *p as u32)))
        .collect();
    let call = TxnCall::AddPartitions {
        id: request.v3_and_below_transactional_id.0.to_string(),
        producer_id: request.v3_and_below_producer_id.0,
        epoch: request.v3_and_below_producer_epoch,
        partitions,
    };
    let code = txn_code(shard.txn_call(call).await);
    respond(&|_| code)
}

pub(super) async fn add_offsets_to_txn(shard: &Shard, request: AddOffsetsToTxnRequest) -> ResponseKind {
    let call = TxnCall::AddOffsets {
        id: request.transactional_id.0.to_string(),
        producer_id: request.producer_id.0,
        epoch: request.producer_epoch,
        group: request.group_id.0.to_string(),
    };
    ResponseKind::AddOffsetsToTxn(
        AddOffsetsToTxnResponse::default().with_error_code(txn_code(shard.txn_call(call).await)),
    )
}

pub(super) async fn end_txn(shard: &Shard, request: EndTxnRequest) -> ResponseKind {
    let call = TxnCall::End {
        id: request.transactional_id.0.to_string(),
        producer_id: request.producer_id.0,
        epoch: request.producer_epoch,
        commit: request.committed,
    };
    ResponseKind::EndTxn(EndTxnResponse::default().with_error_code(txn_code(shard.txn_call(call).await)))
}

pub(super) async fn txn_offset_commit(shard: &Shard, request: TxnOffsetCommitRequest) -> ResponseKind {
    let offsets = commits(request.topics.iter().map(|t| {
        (
            &t.name,
            t.partitions
                .iter()
                .map(|p| (p.partition_index, p.committed_offset, p.committed_metadata.as_ref()))
                .collect(),
        )
    }));
    let call = GroupCall::TxnCommit {
        group: request.group_id.0.to_string(),
        producer_id: request.producer_id.0,
        epoch: request.producer_epoch,
        offsets: offsets.accepted.clone(),
    };
    let topics = commit_results(shard.group_call(call).await, &offsets)
        .into_iter()
        .map(|(topic, partitions)| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(super::topic_name(&topic))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(p, code)| {
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    ResponseKind::TxnOffsetCommit(TxnOffsetCommitResponse::default().with_topics(topics))
}
