//! Kafka's admin APIs that change a topic after its creation or look into
//! its producers and transactions: AlterConfigs, IncrementalAlterConfigs,
//! CreatePartitions, DeleteRecords, DescribeProducers, ListTransactions,
//! DescribeTransactions.
//! Each resource, topic or partition of a request gets its own error code;
//! one refused leaves the others to go on, as a Kafka broker answers.

use net::kafka::kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use net::kafka::kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use net::kafka::kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use net::kafka::kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use net::kafka::kafka_protocol::messages::describe_transactions_response as described_txn;
use net::kafka::kafka_protocol::messages::incremental_alter_configs_response as incremental;
use net::kafka::kafka_protocol::messages::list_transactions_response::TransactionState;
use net::kafka::kafka_protocol::messages::*;
use net::kafka::kafka_protocol::protocol::StrBytes;
use net::ErrorCode;

use super::{RESOURCE_BROKER, RESOURCE_TOPIC};
use crate::error::BrokerError;
use crate::shard::Shard;
use crate::topics::ConfigChanges;

/// IncrementalAlterConfigs' operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// The error code and message a resource, topic or partition is answered
/// with.
fn outcome(result: &Result<(), BrokerError>) -> (i16, Option<StrBytes>) {
    match result {
        Ok(()) => (ErrorCode::None.code(), None),
        Err(error) => (error.code().code(), Some(StrBytes::from_string(error.to_string()))),
    }
}

/// A broker's settings are corelog's config file's, read at start.
fn broker_refused(name: &str) -> Result<(), BrokerError> {
    Err(BrokerError::InvalidRequest(format!(
        "broker {name}: corelog's broker settings come from its config file and flags, not changed live"
    )))
}

/// AlterConfigs: each topic's configs replaced whole (those not named go
/// back to their defaults).
pub(super) async fn alter_configs(shard: &Shard, request: AlterConfigsRequest) -> ResponseKind {
    let mut responses = Vec::new();
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let result = match resource.resource_type {
            RESOURCE_TOPIC => {
                let set = resource
                    .configs
                    .iter()
                    .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                    .collect();
                let changes = ConfigChanges {
                    replace: true,
                    set,
                    delete: Vec::new(),
                };
                shard
                    .alter_topic_configs(&name, changes, request.validate_only, false)
                    .await
            }
            RESOURCE_BROKER => broker_refused(&name),
            other => Err(BrokerError::InvalidRequest(format!(
                "resource type {other} has no configs here"
            ))),
        };
        let (code, message) = outcome(&result);
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name)
                .with_error_code(code)
                .with_error_message(message),
        );
    }
    ResponseKind::AlterConfigs(AlterConfigsResponse::default().with_responses(responses))
}

/// IncrementalAlterConfigs: keys set or deleted, the rest kept. corelog's
/// topic configs hold single values: APPEND and SUBTRACT, for list
/// configs, are refused.
pub(super) async fn incremental_alter_configs(shard: &Shard, request: IncrementalAlterConfigsRequest) -> ResponseKind {
    let mut responses = Vec::new();
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let result = match resource.resource_type {
            RESOURCE_TOPIC => match incremental_changes(&resource.configs) {
                Ok(changes) => {
                    shard
                        .alter_topic_configs(&name, changes, request.validate_only, false)
                        .await
                }
                Err(error) => Err(error),
            },
            RESOURCE_BROKER => broker_refused(&name),
            other => Err(BrokerError::InvalidRequest(format!(
                "resource type {other} has no configs here"
            ))),
        };
        let (code, message) = outcome(&result);
        responses.push(
            incremental::AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name)
                .with_error_code(code)
                .with_error_message(message),
        );
    }
    ResponseKind::IncrementalAlterConfigs(IncrementalAlterConfigsResponse::default().with_responses(responses))
}

fn incremental_changes(
    configs: &[incremental_alter_configs_request::AlterableConfig],
) -> Result<ConfigChanges, BrokerError> {
    let mut changes = ConfigChanges::default();
    for config in configs {
        let key = config.name.to_string();
        let invalid = |reason: &str| BrokerError::InvalidConfig {
            key: key.clone(),
            value: config.value.as_ref().map_or(String::new(), |v| v.to_string()),
            reason: reason.to_string(),
        };
        if changes.set.iter().any(|(k, _)| *k == key) || changes.delete.contains(&key) {
            return Err(invalid("named twice in one request"));
        }
        match config.config_operation {
            OP_SET => {
                let value = config.value.as_ref().ok_or_else(|| invalid("SET without a value"))?;
                changes.set.push((key, value.to_string()));
            }
            OP_DELETE => changes.delete.push(key),
            OP_APPEND | OP_SUBTRACT => return Err(invalid("not a list config: only SET and DELETE apply")),
            other => return Err(invalid(&format!("unknown operation {other}"))),
        }
    }
    Ok(changes)
}

/// CreatePartitions: each topic grown to its count, the new partitions
/// placed by corelog (a client's own placement is refused).
pub(super) async fn create_partitions(shard: &Shard, request: CreatePartitionsRequest) -> ResponseKind {
    let mut results = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let result = if topic.assignments.is_some() {
            Err(BrokerError::InvalidReplicaAssignment(format!(
                "topic {name}: corelog places new partitions itself; send no assignments"
            )))
        } else if topic.count < 0 {
            Err(BrokerError::InvalidPartitions(0))
        } else {
            shard
                .create_partitions(&name, topic.count as u32, request.validate_only, false)
                .await
        };
        let (code, message) = outcome(&result);
        results.push(
            CreatePartitionsTopicResult::default()
                .with_name(topic.name)
                .with_error_code(code)
                .with_error_message(message),
        );
    }
    ResponseKind::CreatePartitions(CreatePartitionsResponse::default().with_results(results))
}

/// DeleteRecords: each partition's log start moved to its offset (-1: the
/// high watermark); answered with where each starts now.
pub(super) async fn delete_records(shard: &Shard, request: DeleteRecordsRequest) -> ResponseKind {
    let mut topics = Vec::new();
    for topic in request.topics {
        let mut partitions = Vec::new();
        for partition in topic.partitions {
            let result = match u32::try_from(partition.partition_index) {
                Ok(index) => shard.delete_records(&topic.name.0, index, partition.offset).await,
                Err(_) => Err(BrokerError::UnknownTopicOrPartition {
                    topic: topic.name.0.to_string(),
                    partition: 0,
                }),
            };
            let answer = DeleteRecordsPartitionResult::default().with_partition_index(partition.partition_index);
            partitions.push(match result {
                Ok(start) => answer.with_low_watermark(start.0 as i64),
                Err(error) => answer.with_low_watermark(-1).with_error_code(error.code().code()),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ResponseKind::DeleteRecords(DeleteRecordsResponse::default().with_topics(topics))
}

/// DescribeProducers: the producers each partition's leader remembers.
/// corelog keeps neither a producer's last timestamp nor the coordinator's
/// epoch per partition: both are -1.
pub(super) async fn describe_producers(shard: &Shard, request: DescribeProducersRequest) -> ResponseKind {
    let mut topics = Vec::new();
    for topic in request.topics {
        let mut partitions = Vec::new();
        for index in topic.partition_indexes {
            let result = match u32::try_from(index) {
                Ok(partition) => shard.describe_producers(&topic.name.0, partition).await,
                Err(_) => Err(BrokerError::UnknownTopicOrPartition {
                    topic: topic.name.0.to_string(),
                    partition: 0,
                }),
            };
            let answer = PartitionResponse::default().with_partition_index(index);
            partitions.push(match result {
                Ok(producers) => answer.with_active_producers(
                    producers
                        .into_iter()
                        .map(|p| {
                            ProducerState::default()
                                .with_producer_id(ProducerId(p.producer_id))
                                .with_producer_epoch(i32::from(p.epoch))
                                .with_last_sequence(p.last_sequence)
                                .with_last_timestamp(-1)
                                .with_coordinator_epoch(-1)
                                .with_current_txn_start_offset(p.txn_start_offset.map_or(-1, |o| o as i64))
                        })
                        .collect(),
                ),
                Err(error) => answer
                    .with_error_code(error.code().code())
                    .with_error_message(Some(StrBytes::from_string(error.to_string()))),
            });
        }
        topics.push(
            TopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ResponseKind::DescribeProducers(DescribeProducersResponse::default().with_topics(topics))
}

/// ListTransactions: the transactions this broker's coordinators hold,
/// filtered by state, producer id and (v1) how long they have run. With
/// shard ports each shard is a broker and answers for its own (a tool asks
/// every broker); without, the node answers for every shard's.
pub(super) async fn list_transactions(
    shard: &Shard,
    advertised: &super::Endpoints,
    request: ListTransactionsRequest,
) -> ResponseKind {
    use crate::txn::TxnState;
    const STATES: [TxnState; 6] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
    ];
    let (states, unknown): (Vec<&StrBytes>, Vec<&StrBytes>) = request
        .state_filters
        .iter()
        .partition(|f| STATES.iter().any(|s| s.name() == f.as_str()));
    let transactions = match advertised.shards.is_empty() {
        true => shard.list_all_transactions().await,
        false => Ok(shard.transactions_here()),
    };
    let transactions = match transactions {
        Ok(transactions) => transactions,
        Err(error) => {
            tracing::warn!(%error, "listing transactions failed");
            return ResponseKind::ListTransactions(
                ListTransactionsResponse::default().with_error_code(ErrorCode::CoordinatorNotAvailable.code()),
            );
        }
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let listed = transactions
        .into_iter()
        .filter(|(_, meta)| states.is_empty() || states.iter().any(|s| s.as_str() == meta.state.name()))
        .filter(|(_, meta)| {
            request.producer_id_filters.is_empty()
                || request.producer_id_filters.contains(&ProducerId(meta.producer_id))
        })
        .filter(|(_, meta)| request.duration_filter < 0 || now_ms - meta.started_ms >= request.duration_filter)
        .map(|(id, meta)| {
            TransactionState::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(id)))
                .with_producer_id(ProducerId(meta.producer_id))
                .with_transaction_state(StrBytes::from_static_str(meta.state.name()))
        })
        .collect();
    ResponseKind::ListTransactions(
        ListTransactionsResponse::default()
            .with_unknown_state_filters(unknown.into_iter().cloned().collect())
            .with_transaction_states(listed),
    )
}

/// DescribeTransactions, on the ids' coordinator (a client finds it with
/// FindCoordinator): each id's state, producer, timeout, start and
/// partitions; TRANSACTIONAL_ID_NOT_FOUND for one it does not know.
pub(super) async fn describe_transactions(shard: &Shard, request: DescribeTransactionsRequest) -> ResponseKind {
    use crate::shard::{TxnAnswer, TxnCall};
    let mut states = Vec::new();
    for id in request.transactional_ids {
        let call = TxnCall::Describe { id: id.0.to_string() };
        let answer = described_txn::TransactionState::default().with_transactional_id(id);
        states.push(match shard.txn_call(call).await {
            Ok(TxnAnswer::Described(Some(meta))) => {
                let mut topics: std::collections::BTreeMap<&str, Vec<i32>> = std::collections::BTreeMap::new();
                for (topic, partition) in &meta.partitions {
                    topics.entry(topic).or_default().push(*partition as i32);
                }
                answer
                    .with_transaction_state(StrBytes::from_static_str(meta.state.name()))
                    .with_transaction_timeout_ms(meta.timeout_ms)
                    .with_transaction_start_time_ms(match meta.state {
                        crate::txn::TxnState::Ongoing => meta.started_ms,
                        _ => -1,
                    })
                    .with_producer_id(ProducerId(meta.producer_id))
                    .with_producer_epoch(meta.epoch)
                    .with_topics(
                        topics
                            .into_iter()
                            .map(|(topic, partitions)| {
                                described_txn::TopicData::default()
                                    .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                                    .with_partitions(partitions)
                            })
                            .collect(),
                    )
            }
            Ok(TxnAnswer::Described(None)) => answer.with_error_code(ErrorCode::TransactionalIdNotFound.code()),
            other => answer.with_error_code(super::groups::txn_code(other)),
        });
    }
    ResponseKind::DescribeTransactions(DescribeTransactionsResponse::default().with_transaction_states(states))
}
