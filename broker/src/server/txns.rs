//! Handlers of the transactional producer's requests: each goes to the
//! transactional id's coordinating shard (`shard::txns`).

use net::codec::ApiKey;
use net::messages::*;
use net::ErrorCode;

use super::{respond, Out};
use crate::error::BrokerError;
use crate::shard::{Shard, TxnAnswer, TxnCall};

/// The error code of an answer: the coordinator's own, or why it could not
/// be reached.
fn code_of(answer: &Result<TxnAnswer, BrokerError>) -> i16 {
    match answer {
        Ok(TxnAnswer::Error(code)) => code.code(),
        Ok(TxnAnswer::Initialized { .. } | TxnAnswer::Described(_)) => ErrorCode::None.code(),
        Err(error) => {
            tracing::warn!(%error, "transaction request failed");
            match error {
                BrokerError::UnknownTopicOrPartition { .. } | BrokerError::ShardGone(_) => {
                    ErrorCode::CoordinatorNotAvailable.code()
                }
                other => other.code().code(),
            }
        }
    }
}

pub(super) async fn init_transactional(
    shard: &Shard,
    id: u32,
    transactional_id: &str,
    transaction_timeout_ms: i32,
) -> Vec<Out> {
    let call = TxnCall::Init {
        id: transactional_id.to_string(),
        timeout_ms: transaction_timeout_ms,
    };
    let answer = shard.txn_call(call).await;
    let response = match answer {
        Ok(TxnAnswer::Initialized { producer_id, epoch }) => InitProducerIdResponse {
            error: 0,
            producer_id,
            producer_epoch: epoch,
        },
        other => InitProducerIdResponse {
            error: code_of(&other),
            producer_id: -1,
            producer_epoch: -1,
        },
    };
    respond(id, ApiKey::InitProducerId, &response)
}

pub(super) async fn add_partitions(shard: &Shard, id: u32, request: &ArchivedAddPartitionsToTxnRequest) -> Vec<Out> {
    let partitions: Vec<(String, u32)> = request
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.to_string(), p.to_native())))
        .collect();
    let call = TxnCall::AddPartitions {
        id: request.transactional_id.to_string(),
        producer_id: request.producer_id.to_native(),
        epoch: request.producer_epoch.to_native(),
        partitions: partitions.clone(),
    };
    let error = code_of(&shard.txn_call(call).await);
    let results = partitions
        .into_iter()
        .map(|(topic, partition)| TxnPartitionResult {
            topic,
            partition,
            error,
        })
        .collect();
    respond(id, ApiKey::AddPartitionsToTxn, &AddPartitionsToTxnResponse { results })
}

pub(super) async fn add_offsets(shard: &Shard, id: u32, request: &ArchivedAddOffsetsToTxnRequest) -> Vec<Out> {
    let call = TxnCall::AddOffsets {
        id: request.transactional_id.to_string(),
        producer_id: request.producer_id.to_native(),
        epoch: request.producer_epoch.to_native(),
        group: request.group.to_string(),
    };
    let error = code_of(&shard.txn_call(call).await);
    respond(id, ApiKey::AddOffsetsToTxn, &TxnResponse { error })
}

pub(super) async fn end(shard: &Shard, id: u32, request: &ArchivedEndTxnRequest) -> Vec<Out> {
    let call = TxnCall::End {
        id: request.transactional_id.to_string(),
        producer_id: request.producer_id.to_native(),
        epoch: request.producer_epoch.to_native(),
        commit: request.commit,
    };
    let error = code_of(&shard.txn_call(call).await);
    respond(id, ApiKey::EndTxn, &TxnResponse { error })
}

/// A coordinator on another node asks this one, as the leader of one of
/// the transaction's partitions, to take the partition into the
/// transaction or to end it there. Answered here or refused: never sent
/// on to a third node.
pub(super) async fn write_markers(shard: &Shard, id: u32, request: &ArchivedWriteTxnMarkersRequest) -> Vec<Out> {
    let result = shard
        .txn_partition_call(
            request.topic.as_str(),
            request.partition.to_native(),
            request.producer_id.to_native(),
            request.producer_epoch.to_native(),
            request.marker,
            crate::shard::Forward::No,
        )
        .await;
    let error = match &result {
        Ok(()) => ErrorCode::None.code(),
        Err(error) => {
            tracing::debug!(%error, "a transaction marker from another node refused");
            error.code().code()
        }
    };
    respond(id, ApiKey::WriteTxnMarkers, &TxnResponse { error })
}
