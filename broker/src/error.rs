//! The broker's error type, and the one place where internal errors become
//! protocol error codes.

use net::ErrorCode;
use storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("unknown topic or partition: {topic}/{partition}")]
    UnknownTopicOrPartition { topic: String, partition: u32 },

    #[error("topic {0} already exists")]
    TopicAlreadyExists(String),

    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopic { name: String, reason: String },

    #[error("invalid partition count {0}: must be 1..={max}", max = crate::topics::PARTITIONS_MAX)]
    InvalidPartitions(u32),

    #[error("topic {topic} has {current} partitions: it may grow to more, up to {max}, not to {requested}", max = crate::topics::PARTITIONS_MAX)]
    InvalidPartitionCount {
        topic: String,
        current: usize,
        requested: u32,
    },

    #[error("{topic}/{partition}: offset {offset} is not 0..={high_watermark} (the high watermark), nor -1 for it")]
    DeleteRecordsOutOfRange {
        topic: String,
        partition: u32,
        offset: i64,
        high_watermark: u64,
    },

    #[error("invalid replica assignment: {0}")]
    InvalidReplicaAssignment(String),

    #[error("invalid topic configs: {0}")]
    InvalidTopicConfigs(String),

    #[error("not the controller's leader (the leader: {leader:?})")]
    NotController { leader: Option<u64> },

    #[error("controller: {0}")]
    Controller(String),

    #[error("topic {topic}: replication factor {factor} is not 1..={nodes} (the nodes in the cluster), or -1 for the default")]
    InvalidReplicationFactor { topic: String, factor: usize, nodes: usize },

    #[error("{topic}/{partition} is not hosted by this node (its leader: node {leader:?})")]
    NotLeaderOrFollower {
        topic: String,
        partition: u32,
        leader: Option<u64>,
    },

    #[error("{topic}/{partition}: {in_sync} replicas in sync, fewer than min.insync.replicas {min}")]
    NotEnoughReplicas {
        topic: String,
        partition: u32,
        in_sync: usize,
        min: usize,
    },

    #[error("{topic}/{partition}: the request's leader epoch {requested} is older than the partition's {current}")]
    FencedLeaderEpoch {
        topic: String,
        partition: u32,
        requested: i32,
        current: i32,
    },

    #[error("{topic}/{partition}: the request's leader epoch {requested} is newer than the partition's {current}")]
    UnknownLeaderEpoch {
        topic: String,
        partition: u32,
        requested: i32,
        current: i32,
    },

    #[error("{topic}/{partition}: replica: {reason}")]
    Replication {
        topic: String,
        partition: u32,
        reason: String,
    },

    #[error("{topic}/{partition}: the coordinator is still reading the log it has begun to lead")]
    CoordinatorLoading { topic: String, partition: u32 },

    #[error("invalid topic config {key}={value}: {reason}")]
    InvalidConfig { key: String, value: String, reason: String },

    #[error("invalid acks {0}: must be 0, 1 or -1 (all)")]
    InvalidAcks(i8),

    #[error("{topic}/{partition}: {source}")]
    Storage {
        topic: String,
        partition: u32,
        #[source]
        source: StorageError,
    },

    #[error("record batches for {topic}/{partition} do not parse as whole frames: {reason}")]
    CorruptBatches {
        topic: String,
        partition: u32,
        reason: String,
    },

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{topic}/{partition}: batch of producer {producer_id} epoch {epoch} sequence {sequence} refused: {code:?}"
    )]
    ProducerSequence {
        topic: String,
        partition: u32,
        producer_id: i64,
        epoch: i16,
        sequence: i32,
        code: ErrorCode,
    },

    #[error("timed out: {0}")]
    TimedOut(String),

    #[error("node {node}: {message}")]
    Remote {
        node: u64,
        code: ErrorCode,
        message: String,
    },

    #[error("invalid request: {0}")]
    InvalidRequest(String),

    #[error("shard {0} is gone (shutting down)")]
    ShardGone(u16),

    #[error("invalid configuration: {0}")]
    Config(String),
}

impl BrokerError {
    /// The code a client sees for a coordinator request that failed with
    /// this error: those that say where to look again as they are (a
    /// coordinator moved or loading), any other COORDINATOR_NOT_AVAILABLE.
    pub fn coordinator_code(&self) -> ErrorCode {
        match self.code() {
            code @ (ErrorCode::NotCoordinator | ErrorCode::CoordinatorLoadInProgress) => code,
            _ => ErrorCode::CoordinatorNotAvailable,
        }
    }

    /// The protocol error code a client sees for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::UnknownTopicOrPartition { .. } => ErrorCode::UnknownTopicOrPartition,
            BrokerError::TopicAlreadyExists(_) => ErrorCode::TopicAlreadyExists,
            BrokerError::InvalidTopic { .. } => ErrorCode::InvalidTopic,
            BrokerError::InvalidPartitions(_) | BrokerError::InvalidPartitionCount { .. } => {
                ErrorCode::InvalidPartitions
            }
            BrokerError::InvalidTopicConfigs(_) => ErrorCode::InvalidConfig,
            BrokerError::InvalidReplicaAssignment(_) => ErrorCode::InvalidReplicaAssignment,
            BrokerError::DeleteRecordsOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            BrokerError::InvalidReplicationFactor { .. } => ErrorCode::InvalidReplicationFactor,
            // A coordinator lives on the leader of its internal partition.
            BrokerError::NotLeaderOrFollower { topic, .. }
                if topic == crate::offsets::OFFSETS_TOPIC || topic == crate::txn::TXN_STATE_TOPIC =>
            {
                ErrorCode::NotCoordinator
            }
            BrokerError::NotLeaderOrFollower { .. } => ErrorCode::NotLeaderOrFollower,
            BrokerError::CoordinatorLoading { .. } => ErrorCode::CoordinatorLoadInProgress,
            BrokerError::NotController { .. } => ErrorCode::NotController,
            BrokerError::Controller(_) | BrokerError::Replication { .. } => ErrorCode::UnknownServerError,
            BrokerError::InvalidConfig { .. } => ErrorCode::InvalidConfig,
            BrokerError::InvalidAcks(_) => ErrorCode::InvalidRequiredAcks,
            BrokerError::NotEnoughReplicas { .. } => ErrorCode::NotEnoughReplicas,
            BrokerError::FencedLeaderEpoch { .. } => ErrorCode::FencedLeaderEpoch,
            BrokerError::UnknownLeaderEpoch { .. } => ErrorCode::UnknownLeaderEpoch,
            BrokerError::CorruptBatches { .. } => ErrorCode::CorruptMessage,
            BrokerError::Storage { source, .. } => storage_code(source),
            BrokerError::Io { .. } | BrokerError::Config(_) => ErrorCode::UnknownServerError,
            BrokerError::ShardGone(_) | BrokerError::TimedOut(_) => ErrorCode::RequestTimedOut,
            BrokerError::Remote { code, .. } => *code,
            BrokerError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            BrokerError::ProducerSequence { code, .. } => *code,
        }
    }
}

fn storage_code(error: &StorageError) -> ErrorCode {
    match error {
        StorageError::BatchTooLarge { .. } | StorageError::RecordTooLarge { .. } => ErrorCode::MessageTooLarge,
        StorageError::BatchMalformed { .. } | StorageError::BatchCrcMismatch { .. } => ErrorCode::CorruptMessage,
        StorageError::KeyRequired { .. } => ErrorCode::InvalidRecord,
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        StorageError::Io { .. }
        | StorageError::CorruptBatch { .. }
        | StorageError::LogFailed { .. }
        | StorageError::LogClosed { .. }
        | StorageError::InvalidLogDir { .. }
        | StorageError::RecordFile { .. } => ErrorCode::StorageError,
        StorageError::InvalidConfig { .. } => ErrorCode::InvalidConfig,
        // An epoch older than the log's last: the appender was deposed.
        StorageError::AppendRefused { .. } => ErrorCode::NotLeaderOrFollower,
        // Retried inside the log; a caller never sees it.
        StorageError::SegmentReplaced { .. } => ErrorCode::RequestTimedOut,
    }
}
