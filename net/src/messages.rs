//! The native protocol's messages, as rkyv archives. A request's body is
//! the archive for its api key; record batches are not in the archive but in
//! the frame's payload, which `PayloadRange`s point into.
//!
//! Errors are Kafka's codes (`ErrorCode`) carried as `i16`, so a newer
//! broker's unknown code still decodes. Partitions are `u32`, offsets `u64`,
//! timestamps ms since the epoch as `i64`.

use rkyv::{Archive, Deserialize, Serialize};

use crate::codec::{access, ApiKey, RequestFrame};
use crate::error::NetError;

/// Where in the frame's payload some raw bytes lie.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PayloadRange {
    pub offset: u32,
    pub len: u32,
}

/// `acks` of a produce request.
pub mod acks {
    /// No response at all.
    pub const NONE: i8 = 0;
    /// The partition's owner appended the batches.
    pub const LEADER: i8 = 1;
    /// Every in-sync replica has them; on one node: durable on disk.
    pub const ALL: i8 = -1;
}

/// `timestamp` of a list-offsets query that asks for the log start offset.
pub const EARLIEST_TIMESTAMP: i64 = -2;
/// `timestamp` of a list-offsets query that asks for the log end offset.
pub const LATEST_TIMESTAMP: i64 = -1;

/// The reply to a request the broker could not take at all: unsupported api
/// or version, or a body that fails validation. Sent with the request's
/// correlation id; the connection stays open.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ErrorResponse {
    pub error: i16,
    pub message: String,
}

/// The version handshake: the first request on a connection.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ApiVersionsRequest {
    pub client_name: String,
    pub client_version: String,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ApiVersionRange {
    pub api_key: u16,
    pub min_version: u16,
    pub max_version: u16,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ApiVersionsResponse {
    pub error: i16,
    pub apis: Vec<ApiVersionRange>,
    pub broker_version: String,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MetadataRequest {
    /// None: every topic.
    pub topics: Option<Vec<String>>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct BrokerInfo {
    pub node_id: u32,
    pub host: String,
    pub port: u16,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PartitionMetadata {
    pub partition: u32,
    pub error: i16,
    pub leader: u32,
    /// The shard (core) of the leader that owns the partition.
    pub shard: u16,
    pub log_start_offset: u64,
    pub high_watermark: u64,
    /// The leader's epoch (its Raft term); 0 for a partition not
    /// replicated, -1 where this broker does not know it.
    pub leader_epoch: i32,
    /// Every replica's broker, the preferred leader first; in a cluster of
    /// one, the leader alone.
    pub replicas: Vec<u32>,
    /// The replicas caught up with the leader, as the leader last told
    /// this broker; all of them where it does not know.
    pub in_sync: Vec<u32>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TopicConfig {
    pub key: String,
    pub value: String,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TopicMetadata {
    pub name: String,
    pub error: i16,
    pub partitions: Vec<PartitionMetadata>,
    pub configs: Vec<TopicConfig>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MetadataResponse {
    pub brokers: Vec<BrokerInfo>,
    pub topics: Vec<TopicMetadata>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct NewTopic {
    pub name: String,
    pub partitions: u32,
    /// -1: the cluster's default.
    pub replication_factor: i16,
    pub configs: Vec<TopicConfig>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct CreateTopicsRequest {
    pub topics: Vec<NewTopic>,
    /// Sent by a node on behalf of its client to the controller's leader:
    /// a node that is not the leader (any more) refuses it rather than
    /// forwarding again.
    pub forwarded: bool,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TopicResult {
    pub name: String,
    pub error: i16,
    pub message: Option<String>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct CreateTopicsResponse {
    pub results: Vec<TopicResult>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DeleteTopicsRequest {
    pub names: Vec<String>,
    /// As `CreateTopicsRequest::forwarded`.
    pub forwarded: bool,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DeleteTopicsResponse {
    pub results: Vec<TopicResult>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ProducePartition {
    pub partition: u32,
    /// Record batch frames laid end to end in the payload.
    pub batches: PayloadRange,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ProduceTopic {
    pub name: String,
    pub partitions: Vec<ProducePartition>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ProduceRequest {
    /// `acks::NONE`, `acks::LEADER` or `acks::ALL`.
    pub acks: i8,
    pub timeout_ms: u32,
    pub topics: Vec<ProduceTopic>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ProducePartitionResponse {
    pub partition: u32,
    pub error: i16,
    /// Offset of the first record of the first batch appended.
    pub base_offset: u64,
    pub log_append_time_ms: i64,
    pub log_start_offset: u64,
    pub message: Option<String>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ProduceTopicResponse {
    pub name: String,
    pub partitions: Vec<ProducePartitionResponse>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ProduceResponse {
    pub topics: Vec<ProduceTopicResponse>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FetchPartition {
    pub partition: u32,
    pub offset: u64,
    pub max_bytes: u32,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FetchTopic {
    pub name: String,
    pub partitions: Vec<FetchPartition>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FetchRequest {
    /// Long poll: wait up to this long for `min_bytes` to be available.
    pub max_wait_ms: u32,
    pub min_bytes: u32,
    pub max_bytes: u32,
    /// `isolation::READ_UNCOMMITTED` or `isolation::READ_COMMITTED`.
    pub isolation_level: u8,
    pub topics: Vec<FetchTopic>,
}

/// What a fetch may read (Kafka's isolation levels).
pub mod isolation {
    /// Up to the high watermark, transactions' records whatever their end.
    pub const READ_UNCOMMITTED: u8 = 0;
    /// Up to the last stable offset; the response lists the aborted
    /// transactions in range so the consumer can drop their records.
    pub const READ_COMMITTED: u8 = 1;
}

/// A transaction that was aborted: the consumer drops `producer_id`'s
/// transactional records from `first_offset` up to its abort marker.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct AbortedTransaction {
    pub producer_id: i64,
    pub first_offset: u64,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FetchPartitionResponse {
    pub partition: u32,
    pub error: i16,
    pub high_watermark: u64,
    /// The offset below which every transaction has ended.
    pub last_stable_offset: u64,
    pub log_start_offset: u64,
    /// READ_COMMITTED only: the aborted transactions among the records.
    pub aborted_transactions: Vec<AbortedTransaction>,
    /// Whole record batch frames, laid end to end in the payload.
    pub records: PayloadRange,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FetchTopicResponse {
    pub name: String,
    pub partitions: Vec<FetchPartitionResponse>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FetchResponse {
    pub topics: Vec<FetchTopicResponse>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsPartition {
    pub partition: u32,
    /// `EARLIEST_TIMESTAMP`, `LATEST_TIMESTAMP`, or a timestamp in ms.
    pub timestamp: i64,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsTopic {
    pub name: String,
    pub partitions: Vec<ListOffsetsPartition>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsRequest {
    pub topics: Vec<ListOffsetsTopic>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsPartitionResponse {
    pub partition: u32,
    pub error: i16,
    /// None when no record is at or after the timestamp.
    pub offset: Option<u64>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsTopicResponse {
    pub name: String,
    pub partitions: Vec<ListOffsetsPartitionResponse>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsResponse {
    pub topics: Vec<ListOffsetsTopicResponse>,
}

// Consumer groups. The coordinator treats protocol metadata and
// assignments as opaque bytes; `ConsumerSubscription` and
// `ConsumerAssignment` are what this crate's group consumer puts in them.

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct GroupProtocol {
    pub name: String,
    pub metadata: Vec<u8>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct JoinGroupRequest {
    pub group: String,
    /// Empty on a member's first join; the coordinator names it.
    pub member_id: String,
    pub client_id: String,
    pub protocol_type: String,
    pub protocols: Vec<GroupProtocol>,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct GroupMember {
    pub member_id: String,
    pub metadata: Vec<u8>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct JoinGroupResponse {
    pub error: i16,
    pub generation: i32,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Every member's metadata, sent to the leader only.
    pub members: Vec<GroupMember>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct GroupAssignment {
    pub member_id: String,
    pub assignment: Vec<u8>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SyncGroupRequest {
    pub group: String,
    pub generation: i32,
    pub member_id: String,
    /// The leader's assignment of every member; empty from the others.
    pub assignments: Vec<GroupAssignment>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SyncGroupResponse {
    pub error: i16,
    pub assignment: Vec<u8>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct HeartbeatRequest {
    pub group: String,
    pub generation: i32,
    pub member_id: String,
}

/// The answer to a request whose only result is an error code
/// (Heartbeat, LeaveGroup).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct GroupErrorResponse {
    pub error: i16,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct LeaveGroupRequest {
    pub group: String,
    pub member_id: String,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct OffsetCommitPartition {
    pub partition: u32,
    /// The next offset to consume, as in Kafka.
    pub offset: u64,
    pub metadata: String,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct OffsetCommitTopic {
    pub name: String,
    pub partitions: Vec<OffsetCommitPartition>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct OffsetCommitRequest {
    pub group: String,
    /// -1 with an empty member id: a commit from outside the group (an
    /// admin, or a consumer with assigned partitions), allowed while the
    /// group has no members.
    pub generation: i32,
    pub member_id: String,
    pub topics: Vec<OffsetCommitTopic>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PartitionError {
    pub partition: u32,
    pub error: i16,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TopicPartitionErrors {
    pub name: String,
    pub partitions: Vec<PartitionError>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct OffsetCommitResponse {
    pub topics: Vec<TopicPartitionErrors>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct OffsetFetchTopic {
    pub name: String,
    pub partitions: Vec<u32>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct OffsetFetchRequest {
    pub group: String,
    /// None: every partition the group has committed.
    pub topics: Option<Vec<OffsetFetchTopic>>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct OffsetFetchPartition {
    pub partition: u32,
    /// None: nothing committed.
    pub offset: Option<u64>,
    pub metadata: String,
    pub error: i16,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct OffsetFetchTopicResponse {
    pub name: String,
    pub partitions: Vec<OffsetFetchPartition>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct OffsetFetchResponse {
    pub error: i16,
    pub topics: Vec<OffsetFetchTopicResponse>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListGroupsRequest {}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListedGroup {
    pub group: String,
    pub state: String,
    pub protocol_type: String,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListGroupsResponse {
    pub error: i16,
    pub groups: Vec<ListedGroup>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DescribeGroupsRequest {
    pub groups: Vec<String>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DescribedMember {
    pub member_id: String,
    pub client_id: String,
    pub assignment: Vec<u8>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DescribedGroup {
    pub group: String,
    /// GROUP_ID_NOT_FOUND for a group the coordinator does not know.
    pub error: i16,
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub generation: i32,
    pub members: Vec<DescribedMember>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DescribeGroupsResponse {
    pub groups: Vec<DescribedGroup>,
}

/// Asks for a producer id: a new one for an idempotent producer, or for a
/// transactional id the id it has with its epoch bumped (fencing the
/// previous holder and aborting its open transaction).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct InitProducerIdRequest {
    pub transactional_id: Option<String>,
    /// How long a transaction may stay open before the broker aborts it.
    pub transaction_timeout_ms: i32,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct InitProducerIdResponse {
    pub error: i16,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TxnPartitions {
    pub topic: String,
    pub partitions: Vec<u32>,
}

/// Adds partitions to the producer's open transaction (opening it): they
/// get its marker when it ends.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct AddPartitionsToTxnRequest {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub topics: Vec<TxnPartitions>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TxnPartitionResult {
    pub topic: String,
    pub partition: u32,
    pub error: i16,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct AddPartitionsToTxnResponse {
    pub results: Vec<TxnPartitionResult>,
}

/// Adds a consumer group's offsets partition to the transaction, before
/// the producer commits offsets in it (TxnOffsetCommit).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct AddOffsetsToTxnRequest {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub group: String,
}

/// The answer to AddOffsetsToTxn and EndTxn.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TxnResponse {
    pub error: i16,
}

/// Commits or aborts the producer's open transaction: answered once every
/// partition in it holds the marker.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct EndTxnRequest {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
}

/// Offsets committed inside a transaction: they count for the group only
/// if the transaction commits.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TxnOffsetCommitRequest {
    pub transactional_id: String,
    pub group: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub topics: Vec<OffsetCommitTopic>,
}

/// What a transaction's coordinator asks of one of its partitions.
pub mod txn_marker {
    /// The partition joined the producer's transaction (AddPartitionsToTxn).
    pub const EXPECT: u8 = 0;
    /// The transaction committed: a commit marker ends it there.
    pub const COMMIT: u8 = 1;
    /// The transaction aborted: an abort marker ends it there.
    pub const ABORT: u8 = 2;
}

/// Between nodes: a transaction's coordinator tells the leader of one of
/// its partitions, on another node, that the partition joined the
/// transaction or that the transaction ended (Kafka's WriteTxnMarkers).
/// Answered with `TxnResponse` once done (a marker: durable); the node
/// answering does not forward it further.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WriteTxnMarkersRequest {
    pub topic: String,
    pub partition: u32,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// One of `txn_marker`.
    pub marker: u8,
}

/// Moves a replicated partition's leadership to the replica on node `to`
/// (`corelog topic transfer-leader`): answered once that replica leads, or
/// with an error (REQUEST_TIMED_OUT when it did not within the wait). Any
/// node takes it and sends it on to node `to`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TransferLeaderRequest {
    pub topic: String,
    pub partition: u32,
    pub to: u64,
    /// Sent on by another node: answered here, never sent further.
    pub forwarded: bool,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TransferLeaderResponse {
    pub error: i16,
    pub message: Option<String>,
}

/// Changes a topic's configs live (`corelog topic alter-config`, and a
/// node forwarding its Kafka client's AlterConfigs to the controller's
/// leader): with `replace`, every key not in `set` goes back to its
/// default; else `set` overrides and `delete` removes keys.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct AlterConfigsRequest {
    pub topic: String,
    pub replace: bool,
    pub set: Vec<TopicConfig>,
    pub delete: Vec<String>,
    pub validate_only: bool,
    /// As `CreateTopicsRequest::forwarded`.
    pub forwarded: bool,
}

/// Grows a topic to `count` partitions (`corelog topic add-partitions`).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct CreatePartitionsRequest {
    pub topic: String,
    pub count: u32,
    pub validate_only: bool,
    /// As `CreateTopicsRequest::forwarded`.
    pub forwarded: bool,
}

/// The answer to an admin request that changes one thing: its error, and
/// what it was when there is one.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct AdminResponse {
    pub error: i16,
    pub message: Option<String>,
}

/// Moves a partition's log start to `offset` (Kafka's DeleteRecords;
/// `corelog topic delete-records`); -1: its high watermark. Sent to the
/// partition's leader.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DeleteRecordsRequest {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DeleteRecordsResponse {
    pub error: i16,
    pub message: Option<String>,
    /// Where the log starts now.
    pub log_start_offset: i64,
}

/// The producers a partition's leader remembers (`corelog topic
/// producers`; Kafka's DescribeProducers).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DescribeProducersRequest {
    pub topic: String,
    pub partition: u32,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub epoch: i16,
    /// Its last batch's last sequence (-1: none kept).
    pub last_sequence: i32,
    /// Where its open transaction begins (-1: none open).
    pub txn_start_offset: i64,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DescribeProducersResponse {
    pub error: i16,
    pub message: Option<String>,
    pub producers: Vec<ProducerInfo>,
}

/// The transactions a node's coordinators hold (`corelog transactions`;
/// Kafka's ListTransactions and DescribeTransactions).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListTransactionsRequest {}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TransactionInfo {
    pub transactional_id: String,
    pub producer_id: i64,
    pub epoch: i16,
    /// Kafka's name of its state (Ongoing, CompleteCommit, ...).
    pub state: String,
    pub timeout_ms: i32,
    /// When the open transaction began (ms since the epoch); -1 if none.
    pub started_ms: i64,
    pub partitions: Vec<TopicPartition>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListTransactionsResponse {
    pub error: i16,
    pub transactions: Vec<TransactionInfo>,
}

/// A node's data directory: its filesystem's bytes and each partition's
/// (`corelog log-dirs`; Kafka's DescribeLogDirs).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DescribeLogDirsRequest {}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PartitionSize {
    pub topic: String,
    pub partition: u32,
    pub bytes: u64,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DescribeLogDirsResponse {
    pub error: i16,
    pub dir: String,
    /// The filesystem's total and usable bytes; -1 where not known.
    pub total_bytes: i64,
    pub usable_bytes: i64,
    pub partitions: Vec<PartitionSize>,
}

/// Deletes a group's commits of some partitions (`corelog group
/// delete-offsets`; Kafka's OffsetDelete): refused for a topic an active
/// member consumes.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DeleteGroupOffsetsRequest {
    pub group: String,
    pub partitions: Vec<TopicPartition>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct OffsetDeleted {
    pub topic: String,
    pub partition: u32,
    pub error: i16,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DeleteGroupOffsetsResponse {
    pub error: i16,
    pub partitions: Vec<OffsetDeleted>,
}

/// Where a group's (or a transactional id's) coordinator is: the broker
/// leading its internal partition, which moves with that leadership.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FindCoordinatorRequest {
    pub key: String,
    /// A transactional id's coordinator, not a group's.
    pub transactional: bool,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FindCoordinatorResponse {
    pub error: i16,
    /// The coordinator as a broker of Metadata's list.
    pub broker: BrokerInfo,
}

/// `protocol_type` of consumer groups.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// A consumer's protocol metadata: what it subscribes to.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ConsumerSubscription {
    pub topics: Vec<String>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TopicPartitions {
    pub topic: String,
    pub partitions: Vec<u32>,
}

/// A consumer's assignment, written by the group's leader.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ConsumerAssignment {
    pub partitions: Vec<TopicPartitions>,
}

/// A request decoded in place: the validated archive in the receive buffer.
#[derive(Debug)]
pub enum Request<'a> {
    ApiVersions(&'a ArchivedApiVersionsRequest),
    Metadata(&'a ArchivedMetadataRequest),
    CreateTopics(&'a ArchivedCreateTopicsRequest),
    DeleteTopics(&'a ArchivedDeleteTopicsRequest),
    Produce(&'a ArchivedProduceRequest),
    Fetch(&'a ArchivedFetchRequest),
    ListOffsets(&'a ArchivedListOffsetsRequest),
    OffsetCommit(&'a ArchivedOffsetCommitRequest),
    OffsetFetch(&'a ArchivedOffsetFetchRequest),
    JoinGroup(&'a ArchivedJoinGroupRequest),
    SyncGroup(&'a ArchivedSyncGroupRequest),
    Heartbeat(&'a ArchivedHeartbeatRequest),
    LeaveGroup(&'a ArchivedLeaveGroupRequest),
    ListGroups(&'a ArchivedListGroupsRequest),
    DescribeGroups(&'a ArchivedDescribeGroupsRequest),
    InitProducerId(&'a ArchivedInitProducerIdRequest),
    AddPartitionsToTxn(&'a ArchivedAddPartitionsToTxnRequest),
    AddOffsetsToTxn(&'a ArchivedAddOffsetsToTxnRequest),
    EndTxn(&'a ArchivedEndTxnRequest),
    TxnOffsetCommit(&'a ArchivedTxnOffsetCommitRequest),
    WriteTxnMarkers(&'a ArchivedWriteTxnMarkersRequest),
    TransferLeader(&'a ArchivedTransferLeaderRequest),
    FindCoordinator(&'a ArchivedFindCoordinatorRequest),
    AlterConfigs(&'a ArchivedAlterConfigsRequest),
    CreatePartitions(&'a ArchivedCreatePartitionsRequest),
    DeleteRecords(&'a ArchivedDeleteRecordsRequest),
    DescribeProducers(&'a ArchivedDescribeProducersRequest),
    ListTransactions(&'a ArchivedListTransactionsRequest),
    DescribeLogDirs(&'a ArchivedDescribeLogDirsRequest),
    DeleteGroupOffsets(&'a ArchivedDeleteGroupOffsetsRequest),
}

/// Decodes a request frame's body: checks the api key and version are
/// supported and validates the archive. Payload ranges are checked when
/// used (`RequestFrame::payload_slice`).
pub fn decode_request<'a>(frame: &RequestFrame<'a>) -> Result<Request<'a>, NetError> {
    let unsupported = NetError::UnsupportedApi {
        api_key: frame.api_key,
        api_version: frame.api_version,
    };
    let Some(api) = ApiKey::from_u16(frame.api_key) else {
        return Err(unsupported);
    };
    let (min, max) = api.versions();
    if frame.api_version < min || frame.api_version > max {
        return Err(unsupported);
    }
    let archive = frame.archive;
    Ok(match api {
        ApiKey::ApiVersions => Request::ApiVersions(access(archive, "ApiVersions request")?),
        ApiKey::Metadata => Request::Metadata(access(archive, "Metadata request")?),
        ApiKey::CreateTopics => Request::CreateTopics(access(archive, "CreateTopics request")?),
        ApiKey::DeleteTopics => Request::DeleteTopics(access(archive, "DeleteTopics request")?),
        ApiKey::Produce => Request::Produce(access(archive, "Produce request")?),
        ApiKey::Fetch => Request::Fetch(access(archive, "Fetch request")?),
        ApiKey::ListOffsets => Request::ListOffsets(access(archive, "ListOffsets request")?),
        ApiKey::OffsetCommit => Request::OffsetCommit(access(archive, "OffsetCommit request")?),
        ApiKey::OffsetFetch => Request::OffsetFetch(access(archive, "OffsetFetch request")?),
        ApiKey::JoinGroup => Request::JoinGroup(access(archive, "JoinGroup request")?),
        ApiKey::SyncGroup => Request::SyncGroup(access(archive, "SyncGroup request")?),
        ApiKey::Heartbeat => Request::Heartbeat(access(archive, "Heartbeat request")?),
        ApiKey::LeaveGroup => Request::LeaveGroup(access(archive, "LeaveGroup request")?),
        ApiKey::ListGroups => Request::ListGroups(access(archive, "ListGroups request")?),
        ApiKey::DescribeGroups => Request::DescribeGroups(access(archive, "DescribeGroups request")?),
        ApiKey::InitProducerId => Request::InitProducerId(access(archive, "InitProducerId request")?),
        ApiKey::AddPartitionsToTxn => Request::AddPartitionsToTxn(access(archive, "AddPartitionsToTxn request")?),
        ApiKey::AddOffsetsToTxn => Request::AddOffsetsToTxn(access(archive, "AddOffsetsToTxn request")?),
        ApiKey::EndTxn => Request::EndTxn(access(archive, "EndTxn request")?),
        ApiKey::TxnOffsetCommit => Request::TxnOffsetCommit(access(archive, "TxnOffsetCommit request")?),
        ApiKey::WriteTxnMarkers => Request::WriteTxnMarkers(access(archive, "WriteTxnMarkers request")?),
        ApiKey::TransferLeader => Request::TransferLeader(access(archive, "TransferLeader request")?),
        ApiKey::FindCoordinator => Request::FindCoordinator(access(archive, "FindCoordinator request")?),
        ApiKey::AlterConfigs => Request::AlterConfigs(access(archive, "AlterConfigs request")?),
        ApiKey::CreatePartitions => Request::CreatePartitions(access(archive, "CreatePartitions request")?),
        ApiKey::DeleteRecords => Request::DeleteRecords(access(archive, "DeleteRecords request")?),
        ApiKey::DescribeProducers => Request::DescribeProducers(access(archive, "DescribeProducers request")?),
        ApiKey::ListTransactions => Request::ListTransactions(access(archive, "ListTransactions request")?),
        ApiKey::DescribeLogDirs => Request::DescribeLogDirs(access(archive, "DescribeLogDirs request")?),
        ApiKey::DeleteGroupOffsets => Request::DeleteGroupOffsets(access(archive, "DeleteGroupOffsets request")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::*;
    use proptest::prelude::*;

    fn produce_frame(batches: &[Vec<u8>], correlation_id: u32) -> Vec<u8> {
        let mut payload = PayloadBuilder::default();
        let partitions = batches
            .iter()
            .enumerate()
            .map(|(i, b)| ProducePartition {
                partition: i as u32,
                batches: payload.push(b).unwrap(),
            })
            .collect();
        let request = ProduceRequest {
            acks: acks::ALL,
            timeout_ms: 30_000,
            topics: vec![ProduceTopic {
                name: "orders".into(),
                partitions,
            }],
        };
        let mut out = Vec::new();
        encode_request(ApiKey::Produce, 0, correlation_id, &request, &payload, &mut out).unwrap();
        out
    }

    #[test]
    fn a_produce_request_carries_its_batches_outside_the_archive() {
        let batches = vec![vec![1u8; 300], vec![], vec![7u8; 5000]];
        let bytes = produce_frame(&batches, 42);
        let decoder = FrameDecoder::default();
        let (frame, used) = decoder.request(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(frame.correlation_id, 42);
        assert_eq!(frame.payload.len(), 5300);
        let Request::Produce(produce) = decode_request(&frame).unwrap() else {
            panic!("not a produce")
        };
        assert_eq!(produce.acks, acks::ALL);
        for (p, expected) in produce.topics[0].partitions.iter().zip(&batches) {
            assert_eq!(frame.payload_slice(&p.batches).unwrap(), &expected[..]);
        }
    }

    #[test]
    fn frames_arrive_in_pieces_and_back_to_back() {
        let mut stream = produce_frame(&[vec![3u8; 100]], 1);
        let first_len = stream.len();
        stream.extend(produce_frame(&[vec![4u8; 10]], 2));
        let decoder = FrameDecoder::default();
        for cut in 0..stream.len() {
            match decoder.request(&stream[..cut]).unwrap() {
                None => assert!(cut < first_len),
                Some((frame, used)) => {
                    assert_eq!(frame.correlation_id, 1);
                    assert_eq!(used, first_len);
                }
            }
        }
        let (first, used) = decoder.request(&stream).unwrap().unwrap();
        assert_eq!(first.correlation_id, 1);
        let (second, _) = decoder.request(&stream[used..]).unwrap().unwrap();
        assert_eq!(second.correlation_id, 2);
    }

    #[test]
    fn bad_frames_get_clear_errors() {
        let decoder = FrameDecoder { frame_bytes_max: 1024 };
        let oversized = 5000u32.to_le_bytes();
        assert!(matches!(
            decoder.request(&oversized).unwrap_err(),
            NetError::FrameTooLarge { size: 5004, max: 1024 }
        ));
        let short = [2u8, 0, 0, 0, 1, 2];
        assert!(matches!(decoder.request(&short), Err(NetError::FrameTooShort { .. })));
        let mut overrun = vec![12u8, 0, 0, 0, 4, 0, 0, 0, 9, 0, 0, 0];
        overrun.extend_from_slice(&100u32.to_le_bytes());
        assert!(matches!(
            decoder.request(&overrun),
            Err(NetError::ArchiveOverrun { .. })
        ));

        let mut garbage = vec![20u8, 0, 0, 0, 4, 0, 0, 0, 9, 0, 0, 0, 8, 0, 0, 0];
        garbage.extend_from_slice(&[0xAB; 8]);
        let (frame, _) = decoder.request(&garbage).unwrap().unwrap();
        assert!(matches!(decode_request(&frame), Err(NetError::Malformed { .. })));

        let mut bytes = produce_frame(&[vec![1u8; 10]], 5);
        bytes[4] = 99; // unknown api key
        let (frame, _) = FrameDecoder::default().request(&bytes).unwrap().unwrap();
        assert!(matches!(
            decode_request(&frame).unwrap_err(),
            NetError::UnsupportedApi {
                api_key: 99,
                api_version: 0
            }
        ));
        let mut bytes = produce_frame(&[vec![1u8; 10]], 5);
        bytes[6] = 7; // unsupported version
        let (frame, _) = FrameDecoder::default().request(&bytes).unwrap().unwrap();
        assert!(matches!(
            decode_request(&frame),
            Err(NetError::UnsupportedApi { api_version: 7, .. })
        ));
    }

    #[test]
    fn a_range_outside_the_payload_is_refused() {
        let range = PayloadRange { offset: 8, len: 10 };
        let mut payload = PayloadBuilder::default();
        let request = ProduceRequest {
            acks: acks::LEADER,
            timeout_ms: 1,
            topics: vec![ProduceTopic {
                name: "t".into(),
                partitions: vec![ProducePartition {
                    partition: 0,
                    batches: range,
                }],
            }],
        };
        payload.push(&[0u8; 12]).unwrap();
        let mut out = Vec::new();
        encode_request(ApiKey::Produce, 0, 1, &request, &payload, &mut out).unwrap();
        let (frame, _) = FrameDecoder::default().request(&out).unwrap().unwrap();
        let Request::Produce(produce) = decode_request(&frame).unwrap() else {
            panic!()
        };
        assert!(matches!(
            frame
                .payload_slice(&produce.topics[0].partitions[0].batches)
                .unwrap_err(),
            NetError::PayloadOutOfRange {
                offset: 8,
                len: 10,
                payload: 12
            }
        ));
    }

    #[test]
    fn a_fetch_response_head_is_followed_by_the_log_bytes() {
        let records = vec![9u8; 777];
        let response = FetchResponse {
            topics: vec![FetchTopicResponse {
                name: "orders".into(),
                partitions: vec![FetchPartitionResponse {
                    partition: 3,
                    error: 0,
                    high_watermark: 10,
                    last_stable_offset: 8,
                    log_start_offset: 0,
                    aborted_transactions: vec![AbortedTransaction {
                        producer_id: 4,
                        first_offset: 2,
                    }],
                    records: PayloadRange { offset: 0, len: 777 },
                }],
            }],
        };
        let mut out = Vec::new();
        encode_response_head(11, ApiKey::Fetch as u16, &response, records.len(), &mut out).unwrap();
        out.extend_from_slice(&records); // in the broker: the log's read, written after the head
        let (frame, used) = FrameDecoder::default().response(&out).unwrap().unwrap();
        assert_eq!(
            (frame.correlation_id, frame.api_key, used),
            (11, ApiKey::Fetch as u16, out.len())
        );
        let fetched: &ArchivedFetchResponse = access(frame.archive, "Fetch response").unwrap();
        let partition = &fetched.topics[0].partitions[0];
        assert_eq!(partition.high_watermark.to_native(), 10);
        assert_eq!(frame.payload_slice(&partition.records).unwrap(), &records[..]);
    }

    #[test]
    fn every_request_type_round_trips() {
        let decoder = FrameDecoder::default();
        let mut out = Vec::new();
        let empty = PayloadBuilder::default();
        let check = |api: ApiKey, out: &mut Vec<u8>| {
            let (frame, _) = decoder.request(out).unwrap().unwrap();
            let decoded = decode_request(&frame).unwrap();
            let matches = matches!(
                (api, decoded),
                (ApiKey::ApiVersions, Request::ApiVersions(_))
                    | (ApiKey::Metadata, Request::Metadata(_))
                    | (ApiKey::CreateTopics, Request::CreateTopics(_))
                    | (ApiKey::DeleteTopics, Request::DeleteTopics(_))
                    | (ApiKey::Fetch, Request::Fetch(_))
                    | (ApiKey::ListOffsets, Request::ListOffsets(_))
            );
            assert!(matches, "{api:?}");
            out.clear();
        };
        let hello = ApiVersionsRequest {
            client_name: "test".into(),
            client_version: "0".into(),
        };
        encode_request(ApiKey::ApiVersions, 0, 1, &hello, &empty, &mut out).unwrap();
        check(ApiKey::ApiVersions, &mut out);
        encode_request(
            ApiKey::Metadata,
            0,
            2,
            &MetadataRequest { topics: None },
            &empty,
            &mut out,
        )
        .unwrap();
        check(ApiKey::Metadata, &mut out);
        let create = CreateTopicsRequest {
            topics: vec![NewTopic {
                name: "a".into(),
                partitions: 8,
                replication_factor: -1,
                configs: vec![TopicConfig {
                    key: "retention.ms".into(),
                    value: "1000".into(),
                }],
            }],
            forwarded: false,
        };
        encode_request(ApiKey::CreateTopics, 0, 3, &create, &empty, &mut out).unwrap();
        check(ApiKey::CreateTopics, &mut out);
        let delete = DeleteTopicsRequest {
            names: vec!["a".into()],
            forwarded: true,
        };
        encode_request(ApiKey::DeleteTopics, 0, 4, &delete, &empty, &mut out).unwrap();
        check(ApiKey::DeleteTopics, &mut out);
        let fetch = FetchRequest {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 1 << 20,
            isolation_level: isolation::READ_COMMITTED,
            topics: vec![FetchTopic {
                name: "a".into(),
                partitions: vec![FetchPartition {
                    partition: 0,
                    offset: 5,
                    max_bytes: 1 << 20,
                }],
            }],
        };
        encode_request(ApiKey::Fetch, 0, 5, &fetch, &empty, &mut out).unwrap();
        check(ApiKey::Fetch, &mut out);
        let list = ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: "a".into(),
                partitions: vec![ListOffsetsPartition {
                    partition: 0,
                    timestamp: EARLIEST_TIMESTAMP,
                }],
            }],
        };
        encode_request(ApiKey::ListOffsets, 0, 6, &list, &empty, &mut out).unwrap();
        check(ApiKey::ListOffsets, &mut out);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let decoder = FrameDecoder { frame_bytes_max: 4096 };
            if let Ok(Some((frame, _))) = decoder.request(&bytes) {
                let _ = decode_request(&frame);
            }
            if let Ok(Some((frame, _))) = decoder.response(&bytes) {
                let _ = access::<ArchivedFetchResponse>(frame.archive, "Fetch response");
            }
        }

        #[test]
        fn produce_requests_round_trip(
            batches in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..10),
            correlation_id in any::<u32>(),
        ) {
            let bytes = produce_frame(&batches, correlation_id);
            let (frame, used) = FrameDecoder::default().request(&bytes).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(frame.correlation_id, correlation_id);
            let Request::Produce(produce) = decode_request(&frame).unwrap() else { panic!() };
            for (p, expected) in produce.topics[0].partitions.iter().zip(&batches) {
                prop_assert_eq!(frame.payload_slice(&p.batches).unwrap(), &expected[..]);
            }
        }
    }
}
