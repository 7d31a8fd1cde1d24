//! Connections of the native protocol: each shard accepts on the shared
//! port, reads whole frames, handles up to `inflight_requests_max` of a
//! connection's requests at once, and writes responses as they complete
//! (the correlation id matches them up). Fetched batches are written from
//! the log's read buffers, after the response's head, without a copy.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use net::codec::{self, ApiKey, FrameDecoder, LENGTH_BYTES, REQUEST_HEADER_BYTES};
use net::messages::*;
use net::{ErrorCode, NetError};

use crate::shard::{FetchAt, FetchBytes, FetchLimit, Shard, NO_LEADER_EPOCH};

mod groups;
mod txns;

/// The longest a fetch may wait for data, whatever it asks.
const FETCH_MAX_WAIT: Duration = Duration::from_secs(60);

/// Pieces of one response, written in order.
enum Out {
    Owned(Vec<u8>),
    Fetched(FetchBytes),
}

impl Out {
    fn bytes(&self) -> &[u8] {
        match self {
            Out::Owned(bytes) => bytes,
            Out::Fetched(bytes) => bytes,
        }
    }
}

/// Where native clients are told to connect: with `shard_ports`, every
/// shard is a broker of its own (node id = shard id) at a port only it
/// accepts on, and each partition's leader is its owning shard; without,
/// the node is broker 0 at the shared port (as `kafka::Endpoints`).
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub bootstrap: std::net::SocketAddr,
    /// Each shard's own address, by shard id; empty without shard ports.
    pub shards: Vec<std::net::SocketAddr>,
}

impl Endpoints {
    fn broker_of(&self, shard: crate::shard::ShardId) -> u32 {
        if self.shards.is_empty() {
            0
        } else {
            u32::from(shard)
        }
    }

    fn brokers(&self) -> Vec<BrokerInfo> {
        let info = |node_id, addr: &std::net::SocketAddr| BrokerInfo {
            node_id,
            host: addr.ip().to_string(),
            port: addr.port(),
        };
        if self.shards.is_empty() {
            vec![info(0, &self.bootstrap)]
        } else {
            self.shards
                .iter()
                .enumerate()
                .map(|(id, a)| info(id as u32, a))
                .collect()
        }
    }
}

pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, endpoints: Rc<Endpoints>) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(shard = shard.id, %error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.connections.get() >= shard.config.connections_max {
            tracing::warn!(
                shard = shard.id,
                max = shard.config.connections_max,
                "connection limit reached; closing a new connection"
            );
            drop(stream);
            continue;
        }
        shard.connections.set(shard.connections.get() + 1);
        let (shard, endpoints) = (shard.clone(), endpoints.clone());
        glommio::spawn_local(async move {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            if let Err(error) = connection(shard.clone(), stream, endpoints).await {
                tracing::debug!(shard = shard.id, %peer, %error, "connection ended");
            }
            shard.connections.set(shard.connections.get() - 1);
        })
        .detach();
    }
}

async fn connection(shard: Rc<Shard>, stream: TcpStream, endpoints: Rc<Endpoints>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (mut reader, mut writer) = stream.split();
    let inflight_max = shard.config.inflight_requests_max;
    let (responses, outbox) = local_channel::new_bounded::<Vec<Out>>(inflight_max);
    let responses = Rc::new(responses);
    let writing = glommio::spawn_local(async move {
        while let Some(response) = outbox.recv().await {
            for piece in &response {
                writer.write_all(piece.bytes()).await?;
            }
            writer.flush().await?;
        }
        Ok::<(), std::io::Error>(())
    });
    let inflight = Rc::new(Semaphore::new(inflight_max as u64));
    let frame_bytes_max = shard.config.frame_bytes_max;
    let result = loop {
        let mut prefix = [0u8; LENGTH_BYTES];
        if let Err(e) = reader.read_exact(&mut prefix).await {
            break if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(e)
            };
        }
        let size = LENGTH_BYTES + u32::from_le_bytes(prefix) as usize;
        if size > frame_bytes_max || size < LENGTH_BYTES + REQUEST_HEADER_BYTES {
            // The stream cannot be resynchronized: answer, then close.
            let error = if size > frame_bytes_max {
                NetError::FrameTooLarge {
                    size,
                    max: frame_bytes_max,
                }
            } else {
                NetError::FrameTooShort {
                    size,
                    header: LENGTH_BYTES + REQUEST_HEADER_BYTES,
                }
            };
            tracing::warn!(shard = shard.id, %error, "refusing a frame and closing the connection");
            let _ = responses
                .send(error_response(0, ErrorCode::InvalidRequest, &error.to_string()))
                .await;
            break Ok(());
        }
        let mut frame = vec![0u8; size];
        frame[..LENGTH_BYTES].copy_from_slice(&prefix);
        if let Err(e) = reader.read_exact(&mut frame[LENGTH_BYTES..]).await {
            tracing::debug!(shard = shard.id, "client left in the middle of a frame");
            break if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(e)
            };
        }
        // The wait counts from here: a full window of requests in flight
        // holds a request back as much as a busy shard does.
        let read_at = Instant::now();
        let permit = match inflight.clone().acquire_static_permit(1).await {
            Ok(permit) => permit,
            Err(_) => break Ok(()),
        };
        let (shard, responses, endpoints) = (shard.clone(), responses.clone(), endpoints.clone());
        glommio::spawn_local(async move {
            shard.stats.request_wait.record(read_at.elapsed());
            if let Some(response) = handle(&shard, &endpoints, &frame).await {
                let _ = responses.send(response).await;
            }
            drop(permit);
        })
        .detach();
    };
    drop(responses);
    // Let the requests in flight answer before the writer stops.
    let _ = inflight.acquire(inflight_max as u64).await;
    writing.await?;
    result
}

fn error_response(correlation_id: u32, code: ErrorCode, message: &str) -> Vec<Out> {
    let mut out = Vec::new();
    let response = ErrorResponse {
        error: code.code(),
        message: message.to_string(),
    };
    codec::encode_response_head(correlation_id, codec::ERROR_RESPONSE_KEY, &response, 0, &mut out)
        .expect("an error response encodes");
    vec![Out::Owned(out)]
}

fn respond<M: codec::Message>(correlation_id: u32, api: ApiKey, message: &M) -> Vec<Out> {
    let mut out = Vec::new();
    match codec::encode_response_head(correlation_id, api as u16, message, 0, &mut out) {
        Ok(()) => vec![Out::Owned(out)],
        Err(e) => error_response(correlation_id, ErrorCode::UnknownServerError, &e.to_string()),
    }
}

async fn handle(shard: &Shard, endpoints: &Endpoints, bytes: &[u8]) -> Option<Vec<Out>> {
    shard.stats.requests.set(shard.stats.requests.get() + 1);
    let decoder = FrameDecoder {
        frame_bytes_max: shard.config.frame_bytes_max,
    };
    let frame = match decoder.request(bytes) {
        Ok(Some((frame, _))) => frame,
        Ok(None) => unreachable!("the connection read the whole frame"),
        Err(e) => return Some(error_response(0, ErrorCode::InvalidRequest, &e.to_string())),
    };
    let id = frame.correlation_id;
    let request = match decode_request(&frame) {
        Ok(request) => request,
        Err(e @ NetError::UnsupportedApi { .. }) => {
            return Some(error_response(id, ErrorCode::UnsupportedVersion, &e.to_string()))
        }
        Err(e) => return Some(error_response(id, ErrorCode::InvalidRequest, &e.to_string())),
    };
    match request {
        Request::ApiVersions(_) => {
            let apis = ApiKey::ALL
                .iter()
                .map(|api| ApiVersionRange {
                    api_key: *api as u16,
                    min_version: api.versions().0,
                    max_version: api.versions().1,
                })
                .collect();
            let response = ApiVersionsResponse {
                error: 0,
                apis,
                broker_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            Some(respond(id, ApiKey::ApiVersions, &response))
        }
        Request::Metadata(request) => Some(respond(
            id,
            ApiKey::Metadata,
            &metadata(shard, endpoints, request).await,
        )),
        Request::CreateTopics(request) => {
            let mut results = Vec::new();
            for topic in request.topics.iter() {
                let configs: BTreeMap<String, String> = topic
                    .configs
                    .iter()
                    .map(|c| (c.key.to_string(), c.value.to_string()))
                    .collect();
                let factor = topic.replication_factor.to_native();
                let result = match replication_factor(&topic.name, factor) {
                    Ok(factor) => {
                        shard
                            .create_topic(
                                &topic.name,
                                topic.partitions.to_native(),
                                factor,
                                configs,
                                request.forwarded,
                            )
                            .await
                    }
                    Err(error) => Err(error),
                };
                results.push(topic_result(&topic.name, result));
            }
            Some(respond(id, ApiKey::CreateTopics, &CreateTopicsResponse { results }))
        }
        Request::DeleteTopics(request) => {
            let mut results = Vec::new();
            for name in request.names.iter() {
                results.push(topic_result(name, shard.delete_topic(name, request.forwarded).await));
            }
            Some(respond(id, ApiKey::DeleteTopics, &DeleteTopicsResponse { results }))
        }
        Request::Produce(request) => {
            let started = Instant::now();
            let acks = request.acks;
            let mut topics = Vec::new();
            for topic in request.topics.iter() {
                let mut partitions = Vec::new();
                for p in topic.partitions.iter() {
                    let partition = p.partition.to_native();
                    let result = match (acks, frame.payload_slice(&p.batches)) {
                        (acks::NONE | acks::LEADER | acks::ALL, Ok(batches)) => {
                            shard.produce(&topic.name, partition, batches, acks).await
                        }
                        (_, Ok(_)) => Err(crate::error::BrokerError::InvalidAcks(acks)),
                        (_, Err(e)) => Err(crate::error::BrokerError::CorruptBatches {
                            topic: topic.name.to_string(),
                            partition,
                            reason: e.to_string(),
                        }),
                    };
                    partitions.push(match result {
                        Ok(produced) => ProducePartitionResponse {
                            partition,
                            error: 0,
                            base_offset: produced.base_offset,
                            log_append_time_ms: produced.append_time_ms,
                            log_start_offset: produced.log_start_offset,
                            message: None,
                        },
                        Err(error) => {
                            tracing::debug!(shard = shard.id, %error, "produce refused");
                            ProducePartitionResponse {
                                partition,
                                error: error.code().code(),
                                base_offset: 0,
                                log_append_time_ms: -1,
                                log_start_offset: 0,
                                message: Some(error.to_string()),
                            }
                        }
                    });
                }
                topics.push(ProduceTopicResponse {
                    name: topic.name.to_string(),
                    partitions,
                });
            }
            shard.stats.produce_service.record(started.elapsed());
            if acks == acks::NONE {
                return None;
            }
            Some(respond(id, ApiKey::Produce, &ProduceResponse { topics }))
        }
        Request::Fetch(request) => Some(fetch(shard, id, request).await),
        Request::ListOffsets(request) => {
            let mut topics = Vec::new();
            for topic in request.topics.iter() {
                let mut partitions = Vec::new();
                for p in topic.partitions.iter() {
                    let partition = p.partition.to_native();
                    let result = shard
                        .list_offset(&topic.name, partition, p.timestamp.to_native(), NO_LEADER_EPOCH)
                        .await;
                    partitions.push(match result {
                        Ok(listed) => ListOffsetsPartitionResponse {
                            partition,
                            error: 0,
                            offset: listed.map(|l| l.offset),
                        },
                        Err(error) => ListOffsetsPartitionResponse {
                            partition,
                            error: error.code().code(),
                            offset: None,
                        },
                    });
                }
                topics.push(ListOffsetsTopicResponse {
                    name: topic.name.to_string(),
                    partitions,
                });
            }
            Some(respond(id, ApiKey::ListOffsets, &ListOffsetsResponse { topics }))
        }
        Request::OffsetCommit(request) => Some(groups::offset_commit(shard, id, request).await),
        Request::OffsetFetch(request) => Some(groups::offset_fetch(shard, id, request).await),
        Request::JoinGroup(request) => Some(groups::join(shard, id, request).await),
        Request::SyncGroup(request) => Some(groups::sync(shard, id, request).await),
        Request::Heartbeat(request) => Some(groups::heartbeat(shard, id, request).await),
        Request::LeaveGroup(request) => Some(groups::leave(shard, id, request).await),
        Request::ListGroups(_) => Some(groups::list(shard, id).await),
        Request::DescribeGroups(request) => Some(groups::describe(shard, id, request).await),
        Request::InitProducerId(request) => Some(match request.transactional_id.as_ref() {
            None => init_producer_id(shard, id).await,
            Some(transactional_id) => {
                txns::init_transactional(shard, id, transactional_id, request.transaction_timeout_ms.to_native()).await
            }
        }),
        Request::AddPartitionsToTxn(request) => Some(txns::add_partitions(shard, id, request).await),
        Request::AddOffsetsToTxn(request) => Some(txns::add_offsets(shard, id, request).await),
        Request::EndTxn(request) => Some(txns::end(shard, id, request).await),
        Request::WriteTxnMarkers(request) => Some(txns::write_markers(shard, id, request).await),
        Request::FindCoordinator(request) => {
            let key = request.key.as_str();
            let at = if request.transactional {
                shard.txn_coordinator_at(key)
            } else {
                shard.group_coordinator_at(key)
            };
            let table = shard.metadata.snapshot();
            let broker = at.map(|(node, owner)| native_broker(&table, endpoints, node, owner));
            let response = match broker {
                Ok(Some(broker)) => FindCoordinatorResponse { error: 0, broker },
                found => {
                    tracing::debug!(key, ?found, "no coordinator to name");
                    FindCoordinatorResponse {
                        error: ErrorCode::CoordinatorNotAvailable.code(),
                        broker: BrokerInfo {
                            node_id: 0,
                            host: String::new(),
                            port: 0,
                        },
                    }
                }
            };
            Some(respond(id, ApiKey::FindCoordinator, &response))
        }
        Request::TransferLeader(request) => {
            let forward = if request.forwarded {
                crate::shard::Forward::No
            } else {
                crate::shard::Forward::ToLeader
            };
            let result = shard
                .transfer_leader(
                    request.topic.as_str(),
                    request.partition.to_native(),
                    request.to.to_native(),
                    forward,
                )
                .await;
            let (error, message) = match result {
                Ok(()) => (ErrorCode::None.code(), None),
                Err(error) => (error.code().code(), Some(error.to_string())),
            };
            Some(respond(
                id,
                ApiKey::TransferLeader,
                &TransferLeaderResponse { error, message },
            ))
        }
        Request::TxnOffsetCommit(request) => Some(groups::txn_offset_commit(shard, id, request).await),
        Request::AlterConfigs(request) => {
            let changes = crate::topics::ConfigChanges {
                replace: request.replace,
                set: request
                    .set
                    .iter()
                    .map(|c| (c.key.to_string(), c.value.to_string()))
                    .collect(),
                delete: request.delete.iter().map(|k| k.to_string()).collect(),
            };
            let result = shard
                .alter_topic_configs(&request.topic, changes, request.validate_only, request.forwarded)
                .await;
            Some(respond(id, ApiKey::AlterConfigs, &admin_response(result)))
        }
        Request::CreatePartitions(request) => {
            let result = shard
                .create_partitions(
                    &request.topic,
                    request.count.to_native(),
                    request.validate_only,
                    request.forwarded,
                )
                .await;
            Some(respond(id, ApiKey::CreatePartitions, &admin_response(result)))
        }
        Request::DeleteRecords(request) => {
            let result = shard
                .delete_records(
                    &request.topic,
                    request.partition.to_native(),
                    request.offset.to_native(),
                )
                .await;
            let response = match result {
                Ok(start) => DeleteRecordsResponse {
                    error: ErrorCode::None.code(),
                    message: None,
                    log_start_offset: start.0 as i64,
                },
                Err(error) => DeleteRecordsResponse {
                    error: error.code().code(),
                    message: Some(error.to_string()),
                    log_start_offset: -1,
                },
            };
            Some(respond(id, ApiKey::DeleteRecords, &response))
        }
        Request::DescribeProducers(request) => {
            let result = shard
                .describe_producers(&request.topic, request.partition.to_native())
                .await;
            let response = match result {
                Ok(producers) => DescribeProducersResponse {
                    error: ErrorCode::None.code(),
                    message: None,
                    producers: producers
                        .into_iter()
                        .map(|p| ProducerInfo {
                            producer_id: p.producer_id,
                            epoch: p.epoch,
                            last_sequence: p.last_sequence,
                            txn_start_offset: p.txn_start_offset.map_or(-1, |o| o as i64),
                        })
                        .collect(),
                },
                Err(error) => DescribeProducersResponse {
                    error: error.code().code(),
                    message: Some(error.to_string()),
                    producers: Vec::new(),
                },
            };
            Some(respond(id, ApiKey::DescribeProducers, &response))
        }
        Request::ListTransactions(_) => {
            let response = match shard.list_all_transactions().await {
                Ok(transactions) => ListTransactionsResponse {
                    error: ErrorCode::None.code(),
                    transactions: transactions
                        .into_iter()
                        .map(|(transactional_id, meta)| TransactionInfo {
                            transactional_id,
                            producer_id: meta.producer_id,
                            epoch: meta.epoch,
                            state: meta.state.name().to_string(),
                            timeout_ms: meta.timeout_ms,
                            started_ms: match meta.state {
                                crate::txn::TxnState::Ongoing => meta.started_ms,
                                _ => -1,
                            },
                            partitions: meta
                                .partitions
                                .into_iter()
                                .map(|(topic, partition)| TopicPartition { topic, partition })
                                .collect(),
                        })
                        .collect(),
                },
                Err(error) => ListTransactionsResponse {
                    error: error.coordinator_code().code(),
                    transactions: Vec::new(),
                },
            };
            Some(respond(id, ApiKey::ListTransactions, &response))
        }
        Request::DescribeLogDirs(_) => {
            let dir = std::path::absolute(&shard.config.data_dir).unwrap_or_else(|_| shard.config.data_dir.clone());
            let (total_bytes, usable_bytes) = shard.data_dir_bytes().await;
            let response = match shard.partition_sizes().await {
                Ok(sizes) => DescribeLogDirsResponse {
                    error: ErrorCode::None.code(),
                    dir: dir.display().to_string(),
                    total_bytes,
                    usable_bytes,
                    partitions: sizes
                        .into_iter()
                        .map(|(topic, partition, bytes)| PartitionSize {
                            topic,
                            partition,
                            bytes,
                        })
                        .collect(),
                },
                Err(error) => DescribeLogDirsResponse {
                    error: error.code().code(),
                    dir: dir.display().to_string(),
                    total_bytes,
                    usable_bytes,
                    partitions: Vec::new(),
                },
            };
            Some(respond(id, ApiKey::DescribeLogDirs, &response))
        }
        Request::DeleteGroupOffsets(request) => {
            let call = crate::shard::GroupCall::DeleteOffsets {
                group: request.group.to_string(),
                partitions: request
                    .partitions
                    .iter()
                    .map(|p| (p.topic.to_string(), p.partition.to_native()))
                    .collect(),
            };
            let response = match shard.group_call(call).await {
                Ok(crate::shard::GroupAnswer::Committed(results)) => DeleteGroupOffsetsResponse {
                    error: ErrorCode::None.code(),
                    partitions: results
                        .into_iter()
                        .map(|(topic, partition, code)| OffsetDeleted {
                            topic,
                            partition,
                            error: code.code(),
                        })
                        .collect(),
                },
                Ok(crate::shard::GroupAnswer::Error(code)) => DeleteGroupOffsetsResponse {
                    error: code.code(),
                    partitions: Vec::new(),
                },
                Ok(_) => DeleteGroupOffsetsResponse {
                    error: ErrorCode::UnknownServerError.code(),
                    partitions: Vec::new(),
                },
                Err(error) => DeleteGroupOffsetsResponse {
                    error: error.coordinator_code().code(),
                    partitions: Vec::new(),
                },
            };
            Some(respond(id, ApiKey::DeleteGroupOffsets, &response))
        }
    }
}

fn admin_response(result: Result<(), crate::error::BrokerError>) -> AdminResponse {
    match result {
        Ok(()) => AdminResponse {
            error: ErrorCode::None.code(),
            message: None,
        },
        Err(error) => AdminResponse {
            error: error.code().code(),
            message: Some(error.to_string()),
        },
    }
}

/// A producer id for an idempotent producer (epoch 0: without a
/// transactional id nothing fences a producer but its own restart, which
/// gets a new id).
async fn init_producer_id(shard: &Shard, id: u32) -> Vec<Out> {
    let allocated = shard.allocate_producer_id().await;
    let response = match allocated {
        Ok(producer_id) => InitProducerIdResponse {
            error: 0,
            producer_id,
            producer_epoch: 0,
        },
        Err(error) => {
            tracing::error!(%error, "allocating a producer id failed");
            InitProducerIdResponse {
                error: ErrorCode::UnknownServerError.code(),
                producer_id: -1,
                producer_epoch: -1,
            }
        }
    };
    respond(id, ApiKey::InitProducerId, &response)
}

/// A requested replication factor: -1 for the default, else 1 or more.
pub fn replication_factor(topic: &str, factor: i16) -> Result<Option<u16>, crate::error::BrokerError> {
    match factor {
        -1 => Ok(None),
        f if f >= 1 => Ok(Some(f as u16)),
        f => Err(crate::error::BrokerError::InvalidReplicationFactor {
            topic: topic.to_string(),
            factor: f.max(0) as usize,
            nodes: 1,
        }),
    }
}

fn topic_result(name: &str, result: Result<(), crate::error::BrokerError>) -> TopicResult {
    match result {
        Ok(()) => TopicResult {
            name: name.to_string(),
            error: 0,
            message: None,
        },
        Err(error) => TopicResult {
            name: name.to_string(),
            error: error.code().code(),
            message: Some(error.to_string()),
        },
    }
}

async fn metadata(shard: &Shard, endpoints: &Endpoints, request: &ArchivedMetadataRequest) -> MetadataResponse {
    let table = shard.metadata.snapshot();
    let names: Vec<String> = match request.topics.as_ref() {
        Some(names) => names.iter().map(|n| n.to_string()).collect(),
        None => table.topics.keys().cloned().collect(),
    };
    let mut topics = Vec::new();
    for name in names {
        let Some(meta) = table.topics.get(&name) else {
            topics.push(TopicMetadata {
                name,
                error: ErrorCode::UnknownTopicOrPartition.code(),
                partitions: Vec::new(),
                configs: Vec::new(),
            });
            continue;
        };
        let mut partitions = Vec::new();
        for partition in 0..meta.shards.len() as u32 {
            let broker = |node: u64, owner: u16| match table.cluster {
                Some(_) => cluster_broker(&table, node, owner),
                None => endpoints.broker_of(owner),
            };
            let replicas: Vec<(u64, u16)> = match table.cluster {
                Some(_) => meta.replicas[partition as usize]
                    .iter()
                    .map(|&(n, s)| (n, s as u16))
                    .collect(),
                None => vec![(0, meta.shards[partition as usize])],
            };
            let mut described = PartitionMetadata {
                partition,
                error: 0,
                leader: u32::MAX,
                shard: 0,
                log_start_offset: 0,
                high_watermark: 0,
                leader_epoch: -1,
                replicas: replicas.iter().map(|&(n, s)| broker(n, s)).collect(),
                in_sync: Vec::new(),
            };
            let Some(leader) = shard.metadata.leader(&table, &name, partition) else {
                // An election under way: the client asks again.
                described.error = ErrorCode::LeaderNotAvailable.code();
                partitions.push(described);
                continue;
            };
            described.leader = broker(leader.node, leader.shard);
            described.shard = leader.shard;
            described.leader_epoch = leader.epoch;
            described.in_sync = match leader.in_sync.is_empty() {
                true => described.replicas.clone(),
                false => replicas
                    .iter()
                    .filter(|(n, _)| leader.in_sync.contains(n))
                    .map(|&(n, s)| broker(n, s))
                    .collect(),
            };
            if table.is_elsewhere(&name, partition) {
                // Its offsets are known where it is hosted.
                described.error = ErrorCode::NotLeaderOrFollower.code();
                partitions.push(described);
                continue;
            }
            let start = shard
                .list_offset(&name, partition, EARLIEST_TIMESTAMP, NO_LEADER_EPOCH)
                .await;
            let end = shard
                .list_offset(&name, partition, LATEST_TIMESTAMP, NO_LEADER_EPOCH)
                .await;
            match (start, end) {
                (Ok(start), Ok(end)) => {
                    described.log_start_offset = start.map_or(0, |l| l.offset);
                    described.high_watermark = end.map_or(0, |l| l.offset);
                }
                (Err(e), _) | (_, Err(e)) => described.error = e.code().code(),
            }
            partitions.push(described);
        }
        topics.push(TopicMetadata {
            name,
            error: 0,
            partitions,
            configs: meta
                .configs
                .iter()
                .map(|(key, value)| TopicConfig {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
        });
    }
    let brokers = match &table.cluster {
        Some(view) => cluster_brokers(view),
        None => endpoints.brokers(),
    };
    MetadataResponse { brokers, topics }
}

/// Every node's native brokers: each shard its own (shard ports), or the
/// node alone; ids as the Kafka listener gives them.
fn cluster_brokers(view: &crate::topics::ClusterView) -> Vec<BrokerInfo> {
    let info = |node_id: i32, addr: &str| {
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "0"));
        BrokerInfo {
            node_id: node_id as u32,
            host: host.to_string(),
            port: port.parse().unwrap_or(0),
        }
    };
    let mut brokers = Vec::new();
    for (&node, n) in &view.nodes {
        if n.native_shard_addrs.is_empty() {
            brokers.push(info(net::cluster::broker_id(node, None), &n.native_addr));
        }
        for (shard, addr) in n.native_shard_addrs.iter().enumerate() {
            brokers.push(info(net::cluster::broker_id(node, Some(shard as u32)), addr));
        }
    }
    brokers
}

/// Node `node`'s shard `shard` as a native client reaches it: its own port
/// with shard ports, else the node's (on one node, this listener's).
fn native_broker(
    table: &crate::topics::TopicTable,
    endpoints: &Endpoints,
    node: u64,
    shard: crate::shard::ShardId,
) -> Option<BrokerInfo> {
    let Some(view) = &table.cluster else {
        let at = endpoints.shards.get(usize::from(shard)).unwrap_or(&endpoints.bootstrap);
        return Some(BrokerInfo {
            node_id: endpoints.broker_of(shard),
            host: at.ip().to_string(),
            port: at.port(),
        });
    };
    let n = view.nodes.get(&node)?;
    let addr = n.native_shard_addrs.get(usize::from(shard)).unwrap_or(&n.native_addr);
    let (host, port) = addr.rsplit_once(':')?;
    Some(BrokerInfo {
        node_id: cluster_broker(table, node, shard),
        host: host.to_string(),
        port: port.parse().ok()?,
    })
}

fn cluster_broker(table: &crate::topics::TopicTable, node: u64, shard: u16) -> u32 {
    let shard_ports = table
        .cluster
        .as_ref()
        .and_then(|c| c.nodes.get(&node))
        .is_some_and(|n| !n.native_shard_addrs.is_empty());
    net::cluster::broker_id(node, shard_ports.then_some(u32::from(shard))) as u32
}

/// Serves a fetch: reads every partition asked for, and if fewer than
/// `min_bytes` came back, waits for an append to any of them (woken by the
/// append, on whichever shard owns the partition) and reads again, until
/// `max_wait_ms` has passed.
async fn fetch(shard: &Shard, id: u32, request: &ArchivedFetchRequest) -> Vec<Out> {
    let max_wait = Duration::from_millis(u64::from(request.max_wait_ms.to_native())).min(FETCH_MAX_WAIT);
    let deadline = Instant::now() + max_wait;
    let min_bytes = request.min_bytes.to_native() as usize;
    let max_bytes = request.max_bytes.to_native() as usize;
    loop {
        let mut pieces = Vec::new();
        let mut topics = Vec::new();
        let mut total = 0usize;
        // (topic, partition, log end) of each partition read without error.
        let mut waits = Vec::new();
        for topic in request.topics.iter() {
            let mut partitions = Vec::new();
            for p in topic.partitions.iter() {
                let partition = p.partition.to_native();
                let limit = FetchLimit::after(total);
                let budget = (p.max_bytes.to_native() as usize).min(max_bytes.saturating_sub(total));
                let at = FetchAt {
                    offset: p.offset.to_native(),
                    max_bytes: budget as u32,
                    limit,
                    isolation_level: request.isolation_level,
                    current_leader_epoch: NO_LEADER_EPOCH,
                };
                let result = shard.fetch(&topic.name, partition, at).await;
                partitions.push(match result {
                    Ok(fetched) => {
                        waits.push((topic.name.as_str(), partition, fetched.high_watermark));
                        let range = PayloadRange {
                            offset: total as u32,
                            len: fetched.bytes.len() as u32,
                        };
                        total += fetched.bytes.len();
                        let response = FetchPartitionResponse {
                            partition,
                            error: 0,
                            high_watermark: fetched.high_watermark,
                            last_stable_offset: fetched.last_stable_offset,
                            log_start_offset: fetched.log_start_offset,
                            aborted_transactions: fetched.aborted,
                            records: range,
                        };
                        if !fetched.bytes.is_empty() {
                            pieces.push(Out::Fetched(fetched.bytes));
                        }
                        response
                    }
                    Err(error) => FetchPartitionResponse {
                        partition,
                        error: error.code().code(),
                        high_watermark: 0,
                        last_stable_offset: 0,
                        log_start_offset: 0,
                        aborted_transactions: Vec::new(),
                        records: PayloadRange::default(),
                    },
                });
            }
            topics.push(FetchTopicResponse {
                name: topic.name.to_string(),
                partitions,
            });
        }
        if total >= min_bytes.max(1) || Instant::now() >= deadline {
            let mut head = Vec::new();
            if let Err(e) =
                codec::encode_response_head(id, ApiKey::Fetch as u16, &FetchResponse { topics }, total, &mut head)
            {
                return error_response(id, ErrorCode::UnknownServerError, &e.to_string());
            }
            let mut out = vec![Out::Owned(head)];
            out.extend(pieces);
            return out;
        }
        if waits.is_empty() {
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
            continue;
        }
        // Whichever partition grows first ends the wait; the others' waits
        // are dropped (a remote owner's ends at the deadline).
        let waits = waits
            .into_iter()
            .map(|(topic, partition, end)| Box::pin(shard.wait_for_data(topic, partition, end, deadline)));
        let _ = futures::future::select_all(waits).await;
    }
}
