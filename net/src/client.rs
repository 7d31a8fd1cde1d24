//! The client side of the native protocol on glommio: a connection that
//! sends requests and matches responses by correlation id, and the admin,
//! produce and fetch calls built on it.
//!
//! A `Connection` lives on the executor that opened it. It keeps one request
//! in flight at a time (pipelining many is the next step).

use std::net::SocketAddr;

use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::codec::{self, access, ApiKey, FrameDecoder, Message, PayloadBuilder, ResponseFrame, ERROR_RESPONSE_KEY};
use crate::error::{ErrorCode, NetError};
use crate::messages::*;

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 << 10;

pub struct Connection {
    addr: String,
    stream: TcpStream,
    decoder: FrameDecoder,
    buffer: Vec<u8>,
    next_correlation_id: u32,
}

/// A response, owned: its frame's bytes.
pub struct Response {
    bytes: Vec<u8>,
    api_key: u16,
    archive: (usize, usize),
    payload: (usize, usize),
}

impl Response {
    pub fn archive(&self) -> &[u8] {
        &self.bytes[self.archive.0..self.archive.1]
    }

    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.payload.0..self.payload.1]
    }

    pub fn payload_slice(&self, range: &ArchivedPayloadRange) -> Result<&[u8], NetError> {
        codec::payload_slice(self.payload(), range)
    }

    /// The validated message, of the type the request's api answers with.
    pub fn message<T>(&self, what: &'static str) -> Result<&T, NetError>
    where
        T: rkyv::Portable
            + for<'v> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'v, rkyv::rancor::Error>>,
    {
        access(self.archive(), what)
    }

    pub fn api_key(&self) -> u16 {
        self.api_key
    }
}

impl Connection {
    /// Connects and performs the version handshake.
    pub async fn connect(addr: &str) -> Result<Connection, NetError> {
        let stream = TcpStream::connect(addr).await.map_err(|e| NetError::Io {
            op: "connect to",
            addr: addr.to_string(),
            source: e.into(),
        })?;
        stream.set_nodelay(true).map_err(|e| NetError::Io {
            op: "set TCP_NODELAY on",
            addr: addr.to_string(),
            source: e.into(),
        })?;
        let mut connection = Connection {
            addr: addr.to_string(),
            stream,
            decoder: FrameDecoder::default(),
            buffer: Vec::with_capacity(READ_CHUNK_BYTES),
            next_correlation_id: 1,
        };
        let hello = ApiVersionsRequest {
            client_name: "corelog".into(),
            client_version: env!("CARGO_PKG_VERSION").into(),
        };
        let response = connection
            .request(ApiKey::ApiVersions, &hello, &PayloadBuilder::default())
            .await?;
        let versions: &ArchivedApiVersionsResponse = response.message("ApiVersions response")?;
        check(versions.error.to_native(), "")?;
        Ok(connection)
    }

    /// The socket, for a `PipelinedConnection` to take over after the
    /// handshake.
    pub(crate) fn into_stream(self) -> TcpStream {
        self.stream
    }

    pub fn peer(&self) -> Option<SocketAddr> {
        self.stream.peer_addr().ok()
    }

    /// Sends one request and waits for its response. A broker's
    /// `ErrorResponse` comes back as `NetError::Rejected`.
    pub async fn request<M: Message>(
        &mut self,
        api_key: ApiKey,
        message: &M,
        payload: &PayloadBuilder<'_>,
    ) -> Result<Response, NetError> {
        let correlation_id = self.write_request(api_key, message, payload).await?;
        let response = self.read_response().await?;
        if response.0 != correlation_id {
            return Err(NetError::UnexpectedResponse {
                expected: format!("correlation id {correlation_id}"),
                got: format!("correlation id {}", response.0),
            });
        }
        let response = response.1;
        if response.api_key == ERROR_RESPONSE_KEY {
            let error: &ArchivedErrorResponse = response.message("error response")?;
            return Err(NetError::Rejected {
                code: ErrorCode::from_code(error.error.to_native()),
                message: error.message.to_string(),
            });
        }
        if response.api_key != api_key as u16 {
            return Err(NetError::UnexpectedResponse {
                expected: format!("{api_key:?}"),
                got: format!("api key {}", response.api_key),
            });
        }
        Ok(response)
    }

    /// Sends a request that gets no response (a produce with acks 0).
    pub async fn send_only<M: Message>(
        &mut self,
        api_key: ApiKey,
        message: &M,
        payload: &PayloadBuilder<'_>,
    ) -> Result<(), NetError> {
        self.write_request(api_key, message, payload).await.map(|_| ())
    }

    /// Writes a request (head, then the payload's slices) and returns its
    /// correlation id.
    async fn write_request<M: Message>(
        &mut self,
        api_key: ApiKey,
        message: &M,
        payload: &PayloadBuilder<'_>,
    ) -> Result<u32, NetError> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let mut head = Vec::new();
        codec::encode_request_head(api_key, 0, correlation_id, message, payload.len(), &mut head)?;
        self.write(&head).await?;
        for slice in payload.slices() {
            self.write(slice).await?;
        }
        self.stream.flush().await.map_err(|e| self.io("write to", e))?;
        Ok(correlation_id)
    }

    fn io(&self, op: &'static str, e: impl Into<std::io::Error>) -> NetError {
        NetError::Io {
            op,
            addr: self.addr.clone(),
            source: e.into(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        self.stream.write_all(bytes).await.map_err(|e| NetError::Io {
            op: "write to",
            addr: self.addr.clone(),
            source: e,
        })
    }

    async fn read_response(&mut self) -> Result<(u32, Response), NetError> {
        loop {
            if let Some((frame, used)) = self.decoder.response(&self.buffer)? {
                let response = owned(&self.buffer, &frame, used);
                let correlation_id = frame.correlation_id;
                self.buffer.drain(..used);
                return Ok((correlation_id, response));
            }
            let start = self.buffer.len();
            self.buffer.resize(start + READ_CHUNK_BYTES, 0);
            let read = self.stream.read(&mut self.buffer[start..]).await;
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    self.buffer.truncate(start);
                    return Err(self.io("read from", e));
                }
            };
            self.buffer.truncate(start + n);
            if n == 0 {
                return Err(NetError::ConnectionClosed {
                    addr: self.addr.clone(),
                });
            }
        }
    }

    /// Sends a request and returns its response as an owned message.
    pub async fn call<Req, Resp>(
        &mut self,
        api_key: ApiKey,
        request: &Req,
        what: &'static str,
    ) -> Result<Resp, NetError>
    where
        Req: Message,
        Resp: rkyv::Archive,
        Resp::Archived: rkyv::Portable
            + for<'v> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'v, rkyv::rancor::Error>>
            + rkyv::Deserialize<Resp, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
    {
        let response = self.request(api_key, request, &PayloadBuilder::default()).await?;
        let archived: &Resp::Archived = response.message(what)?;
        rkyv::deserialize::<Resp, rkyv::rancor::Error>(archived).map_err(|e| NetError::Malformed {
            what,
            reason: e.to_string(),
        })
    }

    /// A producer id and epoch for an idempotent producer.
    pub async fn init_producer_id(&mut self) -> Result<(i64, i16), NetError> {
        let response: InitProducerIdResponse = self
            .call(
                ApiKey::InitProducerId,
                &InitProducerIdRequest {
                    transactional_id: None,
                    transaction_timeout_ms: -1,
                },
                "InitProducerId response",
            )
            .await?;
        check(response.error, "init producer id")?;
        Ok((response.producer_id, response.producer_epoch))
    }

    /// The producer id of a transactional id, its epoch bumped: any earlier
    /// holder is fenced and its open transaction aborted.
    pub async fn init_transactional_id(
        &mut self,
        transactional_id: &str,
        transaction_timeout_ms: i32,
    ) -> Result<(i64, i16), NetError> {
        let response: InitProducerIdResponse = self
            .call(
                ApiKey::InitProducerId,
                &InitProducerIdRequest {
                    transactional_id: Some(transactional_id.to_string()),
                    transaction_timeout_ms,
                },
                "InitProducerId response",
            )
            .await?;
        check(response.error, &format!("init transactional id {transactional_id}"))?;
        Ok((response.producer_id, response.producer_epoch))
    }

    /// Adds partitions to the open transaction; the first error, if any.
    pub async fn add_partitions_to_txn(&mut self, request: &AddPartitionsToTxnRequest) -> Result<(), NetError> {
        let response: AddPartitionsToTxnResponse = self
            .call(ApiKey::AddPartitionsToTxn, request, "AddPartitionsToTxn response")
            .await?;
        for result in &response.results {
            check(
                result.error,
                &format!(
                    "add {} partition {} to transaction {}",
                    result.topic, result.partition, request.transactional_id
                ),
            )?;
        }
        Ok(())
    }

    pub async fn add_offsets_to_txn(&mut self, request: &AddOffsetsToTxnRequest) -> Result<(), NetError> {
        let response: TxnResponse = self
            .call(ApiKey::AddOffsetsToTxn, request, "AddOffsetsToTxn response")
            .await?;
        check(
            response.error,
            &format!(
                "add group {} to transaction {}",
                request.group, request.transactional_id
            ),
        )
    }

    pub async fn end_txn(&mut self, request: &EndTxnRequest) -> Result<(), NetError> {
        let response: TxnResponse = self.call(ApiKey::EndTxn, request, "EndTxn response").await?;
        let what = if request.commit { "commit" } else { "abort" };
        check(
            response.error,
            &format!("{what} transaction {}", request.transactional_id),
        )
    }

    /// Between nodes: tells a partition's leader that the partition joined
    /// a transaction, or writes the transaction's marker there.
    pub async fn write_txn_markers(&mut self, request: &WriteTxnMarkersRequest) -> Result<(), NetError> {
        let response: TxnResponse = self
            .call(ApiKey::WriteTxnMarkers, request, "WriteTxnMarkers response")
            .await?;
        check(
            response.error,
            &format!(
                "transaction marker {} of producer {} for {}/{}",
                request.marker, request.producer_id, request.topic, request.partition
            ),
        )
    }

    /// Moves a replicated partition's leadership to node `to`: answered
    /// once that node's replica leads it.
    pub async fn transfer_leader(&mut self, request: &TransferLeaderRequest) -> Result<(), NetError> {
        let response: TransferLeaderResponse = self
            .call(ApiKey::TransferLeader, request, "TransferLeader response")
            .await?;
        check(
            response.error,
            response.message.as_deref().unwrap_or(&format!(
                "leadership of {}/{} to node {}",
                request.topic, request.partition, request.to
            )),
        )
    }

    /// The address of `key`'s coordinator (a group's, or a transactional
    /// id's), as `host:port`.
    pub async fn find_coordinator(&mut self, key: &str, transactional: bool) -> Result<String, NetError> {
        let request = FindCoordinatorRequest {
            key: key.to_string(),
            transactional,
        };
        let response: FindCoordinatorResponse = self
            .call(ApiKey::FindCoordinator, &request, "FindCoordinator response")
            .await?;
        check(response.error, &format!("the coordinator of {key}"))?;
        Ok(format!("{}:{}", response.broker.host, response.broker.port))
    }

    /// Commits offsets inside the open transaction; the first error, if any.
    pub async fn txn_offset_commit(&mut self, request: &TxnOffsetCommitRequest) -> Result<(), NetError> {
        let response: OffsetCommitResponse = self
            .call(ApiKey::TxnOffsetCommit, request, "TxnOffsetCommit response")
            .await?;
        for topic in &response.topics {
            for p in &topic.partitions {
                check(
                    p.error,
                    &format!(
                        "transactional commit of {} partition {} in group {}",
                        topic.name, p.partition, request.group
                    ),
                )?;
            }
        }
        Ok(())
    }

    pub async fn join_group(&mut self, request: &JoinGroupRequest) -> Result<JoinGroupResponse, NetError> {
        self.call(ApiKey::JoinGroup, request, "JoinGroup response").await
    }

    pub async fn sync_group(&mut self, request: &SyncGroupRequest) -> Result<SyncGroupResponse, NetError> {
        self.call(ApiKey::SyncGroup, request, "SyncGroup response").await
    }

    /// A member's heartbeat; the coordinator's answer as an error code
    /// (REBALANCE_IN_PROGRESS: join again).
    pub async fn heartbeat(&mut self, group: &str, generation: i32, member_id: &str) -> Result<ErrorCode, NetError> {
        let request = HeartbeatRequest {
            group: group.to_string(),
            generation,
            member_id: member_id.to_string(),
        };
        let response: GroupErrorResponse = self.call(ApiKey::Heartbeat, &request, "Heartbeat response").await?;
        Ok(ErrorCode::from_code(response.error))
    }

    pub async fn leave_group(&mut self, group: &str, member_id: &str) -> Result<ErrorCode, NetError> {
        let request = LeaveGroupRequest {
            group: group.to_string(),
            member_id: member_id.to_string(),
        };
        let response: GroupErrorResponse = self.call(ApiKey::LeaveGroup, &request, "LeaveGroup response").await?;
        Ok(ErrorCode::from_code(response.error))
    }

    /// Commits offsets (the next offset to read, per partition); the first
    /// partition's error, if any, fails the call.
    pub async fn commit_offsets(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), NetError> {
        let topics = commit_topics(offsets);
        let request = OffsetCommitRequest {
            group: group.to_string(),
            generation,
            member_id: member_id.to_string(),
            topics,
        };
        let response: OffsetCommitResponse = self
            .call(ApiKey::OffsetCommit, &request, "OffsetCommit response")
            .await?;
        for topic in &response.topics {
            for p in &topic.partitions {
                let code = ErrorCode::from_code(p.error);
                if code != ErrorCode::None {
                    return Err(NetError::Rejected {
                        code,
                        message: format!("commit of {} partition {} in group {group}", topic.name, p.partition),
                    });
                }
            }
        }
        Ok(())
    }

    /// Committed offsets of a group: of the partitions named, or all.
    pub async fn fetch_offsets(
        &mut self,
        group: &str,
        topics: Option<Vec<OffsetFetchTopic>>,
    ) -> Result<Vec<(String, u32, Option<u64>)>, NetError> {
        let request = OffsetFetchRequest {
            group: group.to_string(),
            topics,
        };
        let response: OffsetFetchResponse = self.call(ApiKey::OffsetFetch, &request, "OffsetFetch response").await?;
        check(response.error, group)?;
        Ok(response
            .topics
            .into_iter()
            .flat_map(|t| {
                let name = t.name;
                t.partitions
                    .into_iter()
                    .map(move |p| (name.clone(), p.partition, p.offset))
            })
            .collect())
    }

    pub async fn list_groups(&mut self) -> Result<Vec<ListedGroup>, NetError> {
        let response: ListGroupsResponse = self
            .call(ApiKey::ListGroups, &ListGroupsRequest {}, "ListGroups response")
            .await?;
        check(response.error, "")?;
        Ok(response.groups)
    }

    pub async fn describe_group(&mut self, group: &str) -> Result<DescribedGroup, NetError> {
        let request = DescribeGroupsRequest {
            groups: vec![group.to_string()],
        };
        let response: DescribeGroupsResponse = self
            .call(ApiKey::DescribeGroups, &request, "DescribeGroups response")
            .await?;
        let described = response.groups.into_iter().next().ok_or_else(|| NetError::Malformed {
            what: "DescribeGroups response",
            reason: "no group in it".into(),
        })?;
        check(described.error, group)?;
        Ok(described)
    }

    pub async fn metadata(&mut self, topics: Option<Vec<String>>) -> Result<MetadataResponse, NetError> {
        let response = self
            .request(
                ApiKey::Metadata,
                &MetadataRequest { topics },
                &PayloadBuilder::default(),
            )
            .await?;
        let archived: &ArchivedMetadataResponse = response.message("Metadata response")?;
        rkyv::deserialize::<MetadataResponse, rkyv::rancor::Error>(archived).map_err(|e| NetError::Malformed {
            what: "Metadata response",
            reason: e.to_string(),
        })
    }

    pub async fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        configs: Vec<TopicConfig>,
    ) -> Result<(), NetError> {
        self.create_topic_with(name, partitions, -1, configs, false).await
    }

    /// Changes a topic's configs (see `AlterConfigsRequest`).
    pub async fn alter_configs(&mut self, request: &AlterConfigsRequest) -> Result<(), NetError> {
        let response: AdminResponse = self
            .call(ApiKey::AlterConfigs, request, "AlterConfigs response")
            .await?;
        check(
            response.error,
            response
                .message
                .as_deref()
                .unwrap_or(&format!("alter the configs of topic {}", request.topic)),
        )
    }

    /// Grows a topic to `request.count` partitions.
    pub async fn create_partitions(&mut self, request: &CreatePartitionsRequest) -> Result<(), NetError> {
        let response: AdminResponse = self
            .call(ApiKey::CreatePartitions, request, "CreatePartitions response")
            .await?;
        check(
            response.error,
            response
                .message
                .as_deref()
                .unwrap_or(&format!("grow topic {} to {} partitions", request.topic, request.count)),
        )
    }

    /// Moves a partition's log start (on its leader): answers where it
    /// starts now.
    pub async fn delete_records(&mut self, request: &DeleteRecordsRequest) -> Result<i64, NetError> {
        let response: DeleteRecordsResponse = self
            .call(ApiKey::DeleteRecords, request, "DeleteRecords response")
            .await?;
        check(
            response.error,
            response.message.as_deref().unwrap_or(&format!(
                "delete the records of {}/{} before {}",
                request.topic, request.partition, request.offset
            )),
        )?;
        Ok(response.log_start_offset)
    }

    /// The producers a partition remembers (on its leader).
    pub async fn describe_producers(&mut self, topic: &str, partition: u32) -> Result<Vec<ProducerInfo>, NetError> {
        let request = DescribeProducersRequest {
            topic: topic.to_string(),
            partition,
        };
        let response: DescribeProducersResponse = self
            .call(ApiKey::DescribeProducers, &request, "DescribeProducers response")
            .await?;
        check(
            response.error,
            response
                .message
                .as_deref()
                .unwrap_or(&format!("describe the producers of {topic}/{partition}")),
        )?;
        Ok(response.producers)
    }

    /// The transactions this node's coordinators hold.
    pub async fn list_transactions(&mut self) -> Result<Vec<TransactionInfo>, NetError> {
        let response: ListTransactionsResponse = self
            .call(
                ApiKey::ListTransactions,
                &ListTransactionsRequest {},
                "ListTransactions response",
            )
            .await?;
        check(response.error, "list transactions")?;
        Ok(response.transactions)
    }

    /// This node's data directory and the bytes of each partition in it.
    pub async fn describe_log_dirs(&mut self) -> Result<DescribeLogDirsResponse, NetError> {
        let response: DescribeLogDirsResponse = self
            .call(
                ApiKey::DescribeLogDirs,
                &DescribeLogDirsRequest {},
                "DescribeLogDirs response",
            )
            .await?;
        check(response.error, "describe the log directory")?;
        Ok(response)
    }

    /// Deletes a group's commits of `partitions`: each partition's error.
    pub async fn delete_group_offsets(
        &mut self,
        group: &str,
        partitions: Vec<TopicPartition>,
    ) -> Result<Vec<OffsetDeleted>, NetError> {
        let request = DeleteGroupOffsetsRequest {
            group: group.to_string(),
            partitions,
        };
        let response: DeleteGroupOffsetsResponse = self
            .call(ApiKey::DeleteGroupOffsets, &request, "DeleteGroupOffsets response")
            .await?;
        check(response.error, &format!("delete offsets of group {group}"))?;
        Ok(response.partitions)
    }

    /// As a node forwarding its client's creation to the controller's leader.
    pub async fn create_topic_forwarded(
        &mut self,
        name: &str,
        partitions: u32,
        replication_factor: i16,
        configs: Vec<TopicConfig>,
    ) -> Result<(), NetError> {
        self.create_topic_with(name, partitions, replication_factor, configs, true)
            .await
    }

    /// `replication_factor` -1: the cluster's default.
    pub async fn create_topic_with(
        &mut self,
        name: &str,
        partitions: u32,
        replication_factor: i16,
        configs: Vec<TopicConfig>,
        forwarded: bool,
    ) -> Result<(), NetError> {
        let request = CreateTopicsRequest {
            topics: vec![NewTopic {
                name: name.to_string(),
                partitions,
                replication_factor,
                configs,
            }],
            forwarded,
        };
        let response = self
            .request(ApiKey::CreateTopics, &request, &PayloadBuilder::default())
            .await?;
        let results: &ArchivedCreateTopicsResponse = response.message("CreateTopics response")?;
        check_topic_results(results.results.iter())
    }

    pub async fn delete_topic(&mut self, name: &str) -> Result<(), NetError> {
        self.delete_topic_with(name, false).await
    }

    /// As a node forwarding its client's deletion to the controller's leader.
    pub async fn delete_topic_forwarded(&mut self, name: &str) -> Result<(), NetError> {
        self.delete_topic_with(name, true).await
    }

    async fn delete_topic_with(&mut self, name: &str, forwarded: bool) -> Result<(), NetError> {
        let request = DeleteTopicsRequest {
            names: vec![name.to_string()],
            forwarded,
        };
        let response = self
            .request(ApiKey::DeleteTopics, &request, &PayloadBuilder::default())
            .await?;
        let results: &ArchivedDeleteTopicsResponse = response.message("DeleteTopics response")?;
        check_topic_results(results.results.iter())
    }

    /// Produces record batch frames (laid end to end) to one partition.
    /// Returns the base offset of the first batch, or None with acks 0.
    pub async fn produce(
        &mut self,
        topic: &str,
        partition: u32,
        batches: &[u8],
        acks: i8,
    ) -> Result<Option<u64>, NetError> {
        let mut payload = PayloadBuilder::default();
        let request = produce_request(topic, partition, batches, acks, &mut payload)?;
        if acks == acks::NONE {
            self.send_only(ApiKey::Produce, &request, &payload).await?;
            return Ok(None);
        }
        let response = self.request(ApiKey::Produce, &request, &payload).await?;
        produced_offset(&response).map(Some)
    }

    /// Fetches from one partition; returns the response (whose payload holds
    /// the batches) with the partition's high watermark.
    pub async fn fetch(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<Fetched, NetError> {
        self.fetch_isolated(
            topic,
            partition,
            offset,
            max_bytes,
            max_wait_ms,
            isolation::READ_UNCOMMITTED,
        )
        .await
    }

    /// A fetch at an isolation level (`messages::isolation`).
    pub async fn fetch_isolated(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
        isolation_level: u8,
    ) -> Result<Fetched, NetError> {
        let request = FetchRequest {
            max_wait_ms,
            min_bytes: 1,
            max_bytes,
            isolation_level,
            topics: vec![FetchTopic {
                name: topic.to_string(),
                partitions: vec![FetchPartition {
                    partition,
                    offset,
                    max_bytes,
                }],
            }],
        };
        let response = self
            .request(ApiKey::Fetch, &request, &PayloadBuilder::default())
            .await?;
        let fetched: &ArchivedFetchResponse = response.message("Fetch response")?;
        let part = fetched.topics.first().and_then(|t| t.partitions.first());
        let part = single(part, "Fetch response")?;
        check(part.error.to_native(), "")?;
        let high_watermark = part.high_watermark.to_native();
        let last_stable_offset = part.last_stable_offset.to_native();
        let log_start_offset = part.log_start_offset.to_native();
        let aborted = part
            .aborted_transactions
            .iter()
            .map(|a| AbortedTransaction {
                producer_id: a.producer_id.to_native(),
                first_offset: a.first_offset.to_native(),
            })
            .collect();
        let range = (part.records.offset.to_native(), part.records.len.to_native());
        codec::payload_slice(response.payload(), &part.records)?;
        Ok(Fetched {
            response,
            range,
            high_watermark,
            last_stable_offset,
            log_start_offset,
            aborted,
        })
    }

    /// The offset for a timestamp, `EARLIEST_TIMESTAMP` or `LATEST_TIMESTAMP`.
    pub async fn list_offset(&mut self, topic: &str, partition: u32, timestamp: i64) -> Result<Option<u64>, NetError> {
        let request = ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: topic.to_string(),
                partitions: vec![ListOffsetsPartition { partition, timestamp }],
            }],
        };
        let response = self
            .request(ApiKey::ListOffsets, &request, &PayloadBuilder::default())
            .await?;
        let listed: &ArchivedListOffsetsResponse = response.message("ListOffsets response")?;
        let part = listed.topics.first().and_then(|t| t.partitions.first());
        let part = single(part, "ListOffsets response")?;
        check(part.error.to_native(), "")?;
        Ok(part.offset.as_ref().map(|o| o.to_native()))
    }
}

/// The batches a fetch returned, in the response's own buffer.
pub struct Fetched {
    response: Response,
    range: (u32, u32),
    pub high_watermark: u64,
    pub last_stable_offset: u64,
    pub log_start_offset: u64,
    /// READ_COMMITTED: the aborted transactions among the batches.
    pub aborted: Vec<AbortedTransaction>,
}

impl Fetched {
    /// Whole record batch frames laid end to end (see `storage::batch::frames`).
    pub fn batches(&self) -> &[u8] {
        let (offset, len) = (self.range.0 as usize, self.range.1 as usize);
        &self.response.payload()[offset..offset + len]
    }
}

pub(crate) fn owned(buffer: &[u8], frame: &ResponseFrame<'_>, used: usize) -> Response {
    let base = buffer.as_ptr() as usize;
    let archive_start = frame.archive.as_ptr() as usize - base;
    let payload_start = frame.payload.as_ptr() as usize - base;
    Response {
        bytes: buffer[..used].to_vec(),
        api_key: frame.api_key,
        archive: (archive_start, archive_start + frame.archive.len()),
        payload: (payload_start, payload_start + frame.payload.len()),
    }
}

/// (topic, partition, next offset) as the topics of a commit request, a
/// topic's partitions together while they come in a run.
pub fn commit_topics(offsets: &[(String, u32, u64)]) -> Vec<OffsetCommitTopic> {
    let mut topics: Vec<OffsetCommitTopic> = Vec::new();
    for (topic, partition, offset) in offsets {
        let entry = OffsetCommitPartition {
            partition: *partition,
            offset: *offset,
            metadata: String::new(),
        };
        match topics.last_mut() {
            Some(last) if last.name == *topic => last.partitions.push(entry),
            _ => topics.push(OffsetCommitTopic {
                name: topic.clone(),
                partitions: vec![entry],
            }),
        }
    }
    topics
}

pub(crate) fn produce_request<'a>(
    topic: &str,
    partition: u32,
    batches: &'a [u8],
    acks: i8,
    payload: &mut PayloadBuilder<'a>,
) -> Result<ProduceRequest, NetError> {
    Ok(ProduceRequest {
        acks,
        timeout_ms: 30_000,
        topics: vec![ProduceTopic {
            name: topic.to_string(),
            partitions: vec![ProducePartition {
                partition,
                batches: payload.push(batches)?,
            }],
        }],
    })
}

/// The base offset a single-partition produce response reports.
pub(crate) fn produced_offset(response: &Response) -> Result<u64, NetError> {
    let produced: &ArchivedProduceResponse = response.message("Produce response")?;
    let partition = single(
        produced.topics.first().and_then(|t| t.partitions.first()),
        "Produce response",
    )?;
    check(
        partition.error.to_native(),
        partition.message.as_ref().map_or("", |m| m.as_str()),
    )?;
    Ok(partition.base_offset.to_native())
}

/// The first error among per-topic results of an admin request.
fn check_topic_results<'a>(results: impl Iterator<Item = &'a ArchivedTopicResult>) -> Result<(), NetError> {
    for result in results {
        check(
            result.error.to_native(),
            result.message.as_ref().map_or("", |m| m.as_str()),
        )?;
    }
    Ok(())
}

/// The one partition result a single-partition request gets back.
fn single<'a, T>(part: Option<&'a T>, what: &'static str) -> Result<&'a T, NetError> {
    part.ok_or_else(|| NetError::Malformed {
        what,
        reason: "no partition result".into(),
    })
}

fn check(code: i16, message: &str) -> Result<(), NetError> {
    match ErrorCode::from_code(code) {
        ErrorCode::None => Ok(()),
        code => Err(NetError::Rejected {
            code,
            message: message.to_string(),
        }),
    }
}

/// Kafka's partitioner hash (murmur2 with Kafka's seed), so keys land on the
/// partitions Kafka clients would choose.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= u32::from(tail[2]) << 16;
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for a key.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0);
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Vectors from Kafka's UtilsTest.testMurmur2.
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            ("abc", 479470107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), expected, "murmur2({input:?})");
        }
    }
}
