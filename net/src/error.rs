//! Errors of the net crate, and the protocol error codes a response carries.

/// What was wrong with bytes received or a message to send, or with a
/// conversation with a broker.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{op} {addr}: {source}")]
    Io {
        op: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },

    #[error("connection to {addr} closed by the broker")]
    ConnectionClosed { addr: String },

    #[error("broker refused the request: {code:?}: {message}")]
    Rejected { code: ErrorCode, message: String },

    #[error("response {got} does not answer request {expected}")]
    UnexpectedResponse { expected: String, got: String },

    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { size: usize, max: usize },

    #[error("frame of {size} bytes is shorter than its {header} byte header")]
    FrameTooShort { size: usize, header: usize },

    #[error("frame's archive length {archive} exceeds the {available} bytes after its header")]
    ArchiveOverrun { archive: usize, available: usize },

    #[error("unsupported request: api key {api_key} version {api_version}")]
    UnsupportedApi { api_key: u16, api_version: u16 },

    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },

    /// A well-formed record batch over the limit (as sent, or decompressed):
    /// Kafka's MESSAGE_TOO_LARGE, not a corrupt message.
    #[error("a record batch of {size} bytes, over the limit of {max} bytes")]
    BatchTooLarge { size: usize, max: usize },

    #[error("payload range {offset}+{len} lies outside the frame's {payload} payload bytes")]
    PayloadOutOfRange { offset: u32, len: u32, payload: usize },

    #[error("message too large to encode: {what} of {size} bytes")]
    TooLargeToEncode { what: &'static str, size: usize },
}

impl NetError {
    /// The broker's error code, when the broker refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            NetError::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A response's error code. The numbers are Kafka's, so the Kafka listener
/// passes them through unchanged; codes this build does not know decode to
/// `Unknown(code)` rather than failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    None,
    UnknownServerError,
    OffsetOutOfRange,
    CorruptMessage,
    UnknownTopicOrPartition,
    InvalidFetchSize,
    RequestTimedOut,
    /// The partition's leader is elsewhere (or this node does not host it):
    /// the client refreshes its metadata and retries there.
    NotLeaderOrFollower,
    /// The partition has no leader now (an election under way): the
    /// client asks again.
    LeaderNotAvailable,
    MessageTooLarge,
    InvalidTopic,
    RecordListTooLarge,
    InvalidRequiredAcks,
    /// Fewer replicas in sync than the topic's `min.insync.replicas`: an
    /// acks=all produce is refused before it is appended.
    NotEnoughReplicas,
    UnsupportedVersion,
    TopicAlreadyExists,
    InvalidPartitions,
    InvalidConfig,
    InvalidRequest,
    /// A part of a request refused for another part's sake.
    OperationNotAttempted,
    InvalidReplicationFactor,
    /// Replicas placed by the client: corelog places them itself.
    InvalidReplicaAssignment,
    /// The request needs the controller and this node is not its leader.
    NotController,
    /// DescribeTransactions of an id its coordinator does not know.
    TransactionalIdNotFound,
    StorageError,
    OffsetMetadataTooLarge,
    /// The coordinator is reading its partition's log (it has just begun
    /// to lead it): retry after a backoff.
    CoordinatorLoadInProgress,
    CoordinatorNotAvailable,
    NotCoordinator,
    IllegalGeneration,
    InconsistentGroupProtocol,
    InvalidGroupId,
    UnknownMemberId,
    InvalidSessionTimeout,
    RebalanceInProgress,
    NonEmptyGroup,
    GroupIdNotFound,
    GroupMaxSizeReached,
    /// KIP-394: a new member of a Kafka group is given its id first and
    /// joins again with it.
    MemberIdRequired,
    OutOfOrderSequenceNumber,
    InvalidProducerEpoch,
    InvalidRecord,
    InvalidTxnState,
    InvalidProducerIdMapping,
    InvalidTransactionTimeout,
    ConcurrentTransactions,
    ProducerFenced,
    /// A request's current leader epoch is older than the partition's: the
    /// client's metadata is stale.
    FencedLeaderEpoch,
    /// A request's current leader epoch is newer than the partition's: this
    /// replica has not learned of it yet.
    UnknownLeaderEpoch,
    Unknown(i16),
}

impl ErrorCode {
    pub fn code(self) -> i16 {
        match self {
            ErrorCode::None => 0,
            ErrorCode::UnknownServerError => -1,
            ErrorCode::OffsetOutOfRange => 1,
            ErrorCode::CorruptMessage => 2,
            ErrorCode::UnknownTopicOrPartition => 3,
            ErrorCode::InvalidFetchSize => 4,
            ErrorCode::LeaderNotAvailable => 5,
            ErrorCode::NotLeaderOrFollower => 6,
            ErrorCode::RequestTimedOut => 7,
            ErrorCode::MessageTooLarge => 10,
            ErrorCode::InvalidTopic => 17,
            ErrorCode::RecordListTooLarge => 18,
            ErrorCode::InvalidRequiredAcks => 21,
            ErrorCode::NotEnoughReplicas => 19,
            ErrorCode::UnsupportedVersion => 35,
            ErrorCode::TopicAlreadyExists => 36,
            ErrorCode::InvalidPartitions => 37,
            ErrorCode::InvalidConfig => 40,
            ErrorCode::InvalidRequest => 42,
            ErrorCode::OperationNotAttempted => 55,
            ErrorCode::InvalidReplicationFactor => 38,
            ErrorCode::InvalidReplicaAssignment => 39,
            ErrorCode::NotController => 41,
            ErrorCode::TransactionalIdNotFound => 105,
            ErrorCode::StorageError => 56,
            ErrorCode::OffsetMetadataTooLarge => 12,
            ErrorCode::CoordinatorLoadInProgress => 14,
            ErrorCode::CoordinatorNotAvailable => 15,
            ErrorCode::NotCoordinator => 16,
            ErrorCode::IllegalGeneration => 22,
            ErrorCode::InconsistentGroupProtocol => 23,
            ErrorCode::InvalidGroupId => 24,
            ErrorCode::UnknownMemberId => 25,
            ErrorCode::InvalidSessionTimeout => 26,
            ErrorCode::RebalanceInProgress => 27,
            ErrorCode::NonEmptyGroup => 68,
            ErrorCode::GroupIdNotFound => 69,
            ErrorCode::GroupMaxSizeReached => 81,
            ErrorCode::MemberIdRequired => 79,
            ErrorCode::OutOfOrderSequenceNumber => 45,
            ErrorCode::InvalidProducerEpoch => 47,
            ErrorCode::InvalidRecord => 87,
            ErrorCode::InvalidTxnState => 48,
            ErrorCode::InvalidProducerIdMapping => 49,
            ErrorCode::InvalidTransactionTimeout => 50,
            ErrorCode::ConcurrentTransactions => 51,
            ErrorCode::ProducerFenced => 90,
            ErrorCode::FencedLeaderEpoch => 74,
            ErrorCode::UnknownLeaderEpoch => 75,
            ErrorCode::Unknown(code) => code,
        }
    }

    pub fn from_code(code: i16) -> ErrorCode {
        const KNOWN: [ErrorCode; 49] = [
            ErrorCode::None,
            ErrorCode::UnknownServerError,
            ErrorCode::OffsetOutOfRange,
            ErrorCode::CorruptMessage,
            ErrorCode::UnknownTopicOrPartition,
            ErrorCode::InvalidFetchSize,
            ErrorCode::RequestTimedOut,
            ErrorCode::NotLeaderOrFollower,
            ErrorCode::LeaderNotAvailable,
            ErrorCode::MessageTooLarge,
            ErrorCode::InvalidTopic,
            ErrorCode::RecordListTooLarge,
            ErrorCode::InvalidRequiredAcks,
            ErrorCode::NotEnoughReplicas,
            ErrorCode::UnsupportedVersion,
            ErrorCode::TopicAlreadyExists,
            ErrorCode::InvalidPartitions,
            ErrorCode::InvalidConfig,
            ErrorCode::InvalidRequest,
            ErrorCode::OperationNotAttempted,
            ErrorCode::InvalidReplicationFactor,
            ErrorCode::InvalidReplicaAssignment,
            ErrorCode::NotController,
            ErrorCode::TransactionalIdNotFound,
            ErrorCode::StorageError,
            ErrorCode::OffsetMetadataTooLarge,
            ErrorCode::CoordinatorLoadInProgress,
            ErrorCode::CoordinatorNotAvailable,
            ErrorCode::NotCoordinator,
            ErrorCode::IllegalGeneration,
            ErrorCode::InconsistentGroupProtocol,
            ErrorCode::InvalidGroupId,
            ErrorCode::UnknownMemberId,
            ErrorCode::InvalidSessionTimeout,
            ErrorCode::RebalanceInProgress,
            ErrorCode::NonEmptyGroup,
            ErrorCode::GroupIdNotFound,
            ErrorCode::GroupMaxSizeReached,
            ErrorCode::MemberIdRequired,
            ErrorCode::OutOfOrderSequenceNumber,
            ErrorCode::InvalidProducerEpoch,
            ErrorCode::InvalidRecord,
            ErrorCode::InvalidTxnState,
            ErrorCode::InvalidProducerIdMapping,
            ErrorCode::InvalidTransactionTimeout,
            ErrorCode::ConcurrentTransactions,
            ErrorCode::ProducerFenced,
            ErrorCode::FencedLeaderEpoch,
            ErrorCode::UnknownLeaderEpoch,
        ];
        KNOWN
            .into_iter()
            .find(|known| known.code() == code)
            .unwrap_or(ErrorCode::Unknown(code))
    }

    /// Whether a client may retry the request as it is.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::RequestTimedOut
                | ErrorCode::NotLeaderOrFollower
                | ErrorCode::LeaderNotAvailable
                | ErrorCode::NotEnoughReplicas
                | ErrorCode::FencedLeaderEpoch
                | ErrorCode::UnknownLeaderEpoch
                | ErrorCode::NotController
                | ErrorCode::UnknownTopicOrPartition
                | ErrorCode::StorageError
                | ErrorCode::CoordinatorLoadInProgress
                | ErrorCode::CoordinatorNotAvailable
                | ErrorCode::NotCoordinator
                | ErrorCode::ConcurrentTransactions
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_survive() {
        for code in -5i16..100 {
            assert_eq!(ErrorCode::from_code(code).code(), code);
        }
        assert_eq!(ErrorCode::from_code(10), ErrorCode::MessageTooLarge);
        assert_eq!(ErrorCode::from_code(999), ErrorCode::Unknown(999));
    }
}
