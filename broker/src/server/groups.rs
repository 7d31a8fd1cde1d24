//! Native-protocol handlers of the consumer group requests: each turns the
//! archived request into a `GroupCall` for the group's coordinator and its
//! answer into the response message.

use std::time::Duration;

use net::codec::ApiKey;
use net::messages::*;
use net::ErrorCode;

use super::{respond, Out};
use crate::error::BrokerError;
use crate::shard::{GroupAnswer, GroupCall, Shard};

/// The error code of an answer that is not the one expected: the
/// coordinator's own error, or why it could not be reached.
fn error_of(answer: Result<GroupAnswer, BrokerError>) -> i16 {
    match answer {
        Ok(GroupAnswer::Error(code)) => code.code(),
        Ok(other) => {
            tracing::error!(?other, "coordinator answered another request");
            ErrorCode::UnknownServerError.code()
        }
        Err(error) => unreachable_coordinator(&error),
    }
}

fn unreachable_coordinator(error: &BrokerError) -> i16 {
    tracing::warn!(%error, "group request failed");
    error.coordinator_code().code()
}

pub(super) async fn join(shard: &Shard, id: u32, request: &ArchivedJoinGroupRequest) -> Vec<Out> {
    let call = GroupCall::Join(crate::group::JoinRequest {
        group: request.group.to_string(),
        member_id: request.member_id.to_string(),
        client_id: request.client_id.to_string(),
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.to_vec()))
            .collect(),
        session_timeout: Duration::from_millis(u64::from(request.session_timeout_ms.to_native())),
        rebalance_timeout: Duration::from_millis(u64::from(request.rebalance_timeout_ms.to_native())),
        require_member_id: false,
    });
    let response = match shard.group_call(call).await {
        Ok(GroupAnswer::Join(outcome)) => JoinGroupResponse {
            error: outcome.error.code(),
            generation: outcome.generation,
            protocol: outcome.protocol,
            leader: outcome.leader,
            member_id: outcome.member_id,
            members: outcome
                .members
                .into_iter()
                .map(|(member_id, metadata)| GroupMember { member_id, metadata })
                .collect(),
        },
        other => JoinGroupResponse {
            error: error_of(other),
            generation: -1,
            protocol: String::new(),
            leader: String::new(),
            member_id: request.member_id.to_string(),
            members: Vec::new(),
        },
    };
    respond(id, ApiKey::JoinGroup, &response)
}

pub(super) async fn sync(shard: &Shard, id: u32, request: &ArchivedSyncGroupRequest) -> Vec<Out> {
    let call = GroupCall::Sync {
        group: request.group.to_string(),
        generation: request.generation.to_native(),
        member_id: request.member_id.to_string(),
        assignments: request
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.to_vec()))
            .collect(),
    };
    let response = match shard.group_call(call).await {
        Ok(GroupAnswer::Sync(outcome)) => SyncGroupResponse {
            error: outcome.error.code(),
            assignment: outcome.assignment,
        },
        other => SyncGroupResponse {
            error: error_of(other),
            assignment: Vec::new(),
        },
    };
    respond(id, ApiKey::SyncGroup, &response)
}

pub(super) async fn heartbeat(shard: &Shard, id: u32, request: &ArchivedHeartbeatRequest) -> Vec<Out> {
    let call = GroupCall::Heartbeat {
        group: request.group.to_string(),
        generation: request.generation.to_native(),
        member_id: request.member_id.to_string(),
    };
    let error = error_of(shard.group_call(call).await);
    respond(id, ApiKey::Heartbeat, &GroupErrorResponse { error })
}

pub(super) async fn leave(shard: &Shard, id: u32, request: &ArchivedLeaveGroupRequest) -> Vec<Out> {
    let call = GroupCall::Leave {
        group: request.group.to_string(),
        member_id: request.member_id.to_string(),
    };
    let error = error_of(shard.group_call(call).await);
    respond(id, ApiKey::LeaveGroup, &GroupErrorResponse { error })
}

pub(super) async fn offset_commit(shard: &Shard, id: u32, request: &ArchivedOffsetCommitRequest) -> Vec<Out> {
    let offsets = commit_offsets(&request.topics);
    let call = GroupCall::Commit {
        group: request.group.to_string(),
        generation: request.generation.to_native(),
        member_id: request.member_id.to_string(),
        offsets,
    };
    commit_response(shard, id, ApiKey::OffsetCommit, call).await
}

/// TxnOffsetCommit: offsets that count if the producer's transaction
/// commits.
pub(super) async fn txn_offset_commit(shard: &Shard, id: u32, request: &ArchivedTxnOffsetCommitRequest) -> Vec<Out> {
    let call = GroupCall::TxnCommit {
        group: request.group.to_string(),
        producer_id: request.producer_id.to_native(),
        epoch: request.producer_epoch.to_native(),
        offsets: commit_offsets(&request.topics),
    };
    commit_response(shard, id, ApiKey::TxnOffsetCommit, call).await
}

/// (topic, partition, offset, metadata) of a commit request.
fn commit_offsets(topics: &rkyv::vec::ArchivedVec<ArchivedOffsetCommitTopic>) -> Vec<(String, u32, u64, String)> {
    topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.name.to_string(),
                    p.partition.to_native(),
                    p.offset.to_native(),
                    p.metadata.to_string(),
                )
            })
        })
        .collect()
}

/// Runs a commit call; the answer per partition, in an OffsetCommit
/// response.
async fn commit_response(shard: &Shard, id: u32, api: ApiKey, call: GroupCall) -> Vec<Out> {
    let keys: Vec<(String, u32)> = match &call {
        GroupCall::Commit { offsets, .. } | GroupCall::TxnCommit { offsets, .. } => {
            offsets.iter().map(|(t, p, _, _)| (t.clone(), *p)).collect()
        }
        _ => Vec::new(),
    };
    let results: Vec<(String, u32, i16)> = match shard.group_call(call).await {
        Ok(GroupAnswer::Committed(results)) => results.into_iter().map(|(t, p, e)| (t, p, e.code())).collect(),
        other => {
            let error = error_of(other);
            keys.into_iter().map(|(t, p)| (t, p, error)).collect()
        }
    };
    let mut topics: Vec<TopicPartitionErrors> = Vec::new();
    for (topic, partition, error) in results {
        match topics.last_mut() {
            Some(last) if last.name == topic => last.partitions.push(PartitionError { partition, error }),
            _ => topics.push(TopicPartitionErrors {
                name: topic,
                partitions: vec![PartitionError { partition, error }],
            }),
        }
    }
    respond(id, api, &OffsetCommitResponse { topics })
}

pub(super) async fn offset_fetch(shard: &Shard, id: u32, request: &ArchivedOffsetFetchRequest) -> Vec<Out> {
    let only: Option<Vec<(String, u32)>> = request.topics.as_ref().map(|topics| {
        topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.name.to_string(), p.to_native())))
            .collect()
    });
    let call = GroupCall::FetchOffsets {
        group: request.group.to_string(),
        only,
    };
    let response = match shard.group_call(call).await {
        Ok(GroupAnswer::Offsets(offsets)) => {
            let mut topics: Vec<OffsetFetchTopicResponse> = Vec::new();
            for ((topic, partition), committed) in offsets {
                let entry = OffsetFetchPartition {
                    partition,
                    offset: committed.as_ref().map(|c| c.offset),
                    metadata: committed.map(|c| c.metadata).unwrap_or_default(),
                    error: 0,
                };
                match topics.last_mut() {
                    Some(last) if last.name == topic => last.partitions.push(entry),
                    _ => topics.push(OffsetFetchTopicResponse {
                        name: topic,
                        partitions: vec![entry],
                    }),
                }
            }
            OffsetFetchResponse { error: 0, topics }
        }
        other => OffsetFetchResponse {
            error: error_of(other),
            topics: Vec::new(),
        },
    };
    respond(id, ApiKey::OffsetFetch, &response)
}

pub(super) async fn list(shard: &Shard, id: u32) -> Vec<Out> {
    let response = match shard.list_all_groups().await {
        Ok(groups) => ListGroupsResponse {
            error: 0,
            groups: groups
                .into_iter()
                .map(|(group, state, protocol_type)| ListedGroup {
                    group,
                    state: state.name().to_string(),
                    protocol_type,
                })
                .collect(),
        },
        Err(error) => ListGroupsResponse {
            error: unreachable_coordinator(&error),
            groups: Vec::new(),
        },
    };
    respond(id, ApiKey::ListGroups, &response)
}

pub(super) async fn describe(shard: &Shard, id: u32, request: &ArchivedDescribeGroupsRequest) -> Vec<Out> {
    let mut groups = Vec::new();
    for name in request.groups.iter() {
        let call = GroupCall::Describe {
            group: name.to_string(),
        };
        let empty = |error: i16| DescribedGroup {
            group: name.to_string(),
            error,
            state: String::new(),
            protocol_type: String::new(),
            protocol: String::new(),
            generation: -1,
            members: Vec::new(),
        };
        groups.push(match shard.group_call(call).await {
            Ok(GroupAnswer::Described(Some(d))) => DescribedGroup {
                group: d.group,
                error: 0,
                state: d.state.name().to_string(),
                protocol_type: d.protocol_type,
                protocol: d.protocol,
                generation: d.generation,
                members: d
                    .members
                    .into_iter()
                    .map(|m| DescribedMember {
                        member_id: m.member_id,
                        client_id: m.client_id,
                        assignment: m.assignment,
                    })
                    .collect(),
            },
            Ok(GroupAnswer::Described(None)) => empty(ErrorCode::GroupIdNotFound.code()),
            other => empty(error_of(other)),
        });
    }
    respond(id, ApiKey::DescribeGroups, &DescribeGroupsResponse { groups })
}
