//! The Kafka listener: Kafka's wire protocol served by every shard, beside
//! the native one, over the same partition ownership and routing. Each
//! request is decoded with `net::kafka` (the `kafka-protocol` crate), served
//! through the shard's own operations, and answered in order on its
//! connection (Kafka clients rely on that; a connection serves one request
//! at a time, as a Kafka broker does).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use net::kafka::kafka_protocol::messages::api_versions_response::ApiVersion;
use net::kafka::kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use net::kafka::kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use net::kafka::kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use net::kafka::kafka_protocol::messages::fetch_request::FetchPartition;
use net::kafka::kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use net::kafka::kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use net::kafka::kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use net::kafka::kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use net::kafka::kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use net::kafka::kafka_protocol::messages::*;
use net::kafka::kafka_protocol::protocol::StrBytes;
use net::kafka::{self as wire, Decoded};
use net::messages::{EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};
use net::ErrorCode;

use crate::error::BrokerError;
use crate::shard::{FetchAt, FetchLimit, ListedOffset, Shard};
use crate::topics::TopicTable;

mod admin;
mod groups;

/// The longest a fetch may wait, whatever it asks.
const FETCH_MAX_WAIT: Duration = Duration::from_secs(60);
/// The node id corelog gives itself in Kafka's metadata when its shards
/// are not brokers of their own.
pub const NODE_ID: i32 = 0;

fn name(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn topic_name(s: &str) -> TopicName {
    TopicName(name(s))
}

/// Where Kafka clients are told to connect: the advertised address, else
/// the bound one.
#[derive(Clone, Debug)]
pub struct Advertised {
    pub host: String,
    pub port: i32,
}

/// The advertised address from `kafka_advertised` ("host:port"), else the
/// bound address.
pub fn advertised(configured: Option<&str>, bound: std::net::SocketAddr) -> Result<Advertised, BrokerError> {
    let Some(configured) = configured else {
        if bound.ip().is_unspecified() {
            return Err(BrokerError::Config(format!(
                "kafka_listen {bound} is a wildcard address: set kafka_advertised to the host:port clients reach"
            )));
        }
        return Ok(Advertised {
            host: bound.ip().to_string(),
            port: i32::from(bound.port()),
        });
    };
    let (host, port) = configured
        .rsplit_once(':')
        .ok_or_else(|| BrokerError::Config(format!("kafka_advertised {configured:?} is not host:port")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| BrokerError::Config(format!("kafka_advertised {configured:?}: bad port")))?;
    Ok(Advertised {
        host: host.to_string(),
        port: i32::from(port),
    })
}

/// Where Kafka clients are told to connect. With shard ports, every shard is
/// a broker of its own in Metadata and FindCoordinator (broker id = shard
/// id) at a port only it accepts on, so an unchanged client sends each
/// partition's requests to the core that owns it, and the group and
/// transaction requests to the coordinating core; the shared port stays the
/// bootstrap. Without, the node is broker `NODE_ID` at the shared port and
/// requests for another shard's partitions cross cores.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub bootstrap: Advertised,
    /// Each shard's own address, by shard id; empty without shard ports.
    pub shards: Vec<Advertised>,
}

impl Endpoints {
    /// The broker id clients know shard `shard` by.
    pub fn broker_of(&self, shard: crate::shard::ShardId) -> i32 {
        if self.shards.is_empty() {
            NODE_ID
        } else {
            i32::from(shard)
        }
    }

    /// Every broker id with its address.
    fn brokers(&self) -> Vec<(i32, &Advertised)> {
        if self.shards.is_empty() {
            vec![(NODE_ID, &self.bootstrap)]
        } else {
            self.shards.iter().enumerate().map(|(id, a)| (id as i32, a)).collect()
        }
    }

    /// The address of the broker clients know shard `shard` by.
    fn of(&self, shard: crate::shard::ShardId) -> &Advertised {
        self.shards.get(usize::from(shard)).unwrap_or(&self.bootstrap)
    }
}

/// A broker as Kafka clients see it.
pub(crate) struct BrokerEntry {
    pub id: i32,
    pub at: Advertised,
    /// In a cluster a node's shards share its rack, so clients and tools
    /// that spread replicas by rack spread them over nodes.
    pub rack: Option<String>,
}

/// Parses a registered "host:port".
fn advertised_of(addr: &str) -> Advertised {
    match addr.rsplit_once(':') {
        Some((host, port)) => Advertised {
            host: host.to_string(),
            port: port.parse().unwrap_or(-1),
        },
        None => Advertised {
            host: addr.to_string(),
            port: -1,
        },
    }
}

/// Every broker of the cluster (this node's shards, or one node alone).
pub(crate) fn brokers(table: &TopicTable, advertised: &Endpoints) -> Vec<BrokerEntry> {
    let Some(view) = &table.cluster else {
        return advertised
            .brokers()
            .into_iter()
            .map(|(id, at)| BrokerEntry {
                id,
                at: at.clone(),
                rack: None,
            })
            .collect();
    };
    let mut brokers = Vec::new();
    for (&node, info) in &view.nodes {
        let rack = Some(format!("node-{node}"));
        if info.kafka_shard_addrs.is_empty() {
            brokers.push(BrokerEntry {
                id: net::cluster::broker_id(node, None),
                at: advertised_of(&info.kafka_addr),
                rack,
            });
        } else {
            for (shard, addr) in info.kafka_shard_addrs.iter().enumerate() {
                brokers.push(BrokerEntry {
                    id: net::cluster::broker_id(node, Some(shard as u32)),
                    at: advertised_of(addr),
                    rack: rack.clone(),
                });
            }
        }
    }
    brokers
}

/// The broker that is `node`'s shard `shard` (on one node, `node` is
/// ignored: this node's shard), with its address.
pub(crate) fn broker_at(table: &TopicTable, advertised: &Endpoints, node: u64, shard: u16) -> (i32, Advertised) {
    let Some(view) = &table.cluster else {
        return (advertised.broker_of(shard), advertised.of(shard).clone());
    };
    match view.nodes.get(&node) {
        Some(info) if info.kafka_shard_addrs.is_empty() => {
            (net::cluster::broker_id(node, None), advertised_of(&info.kafka_addr))
        }
        Some(info) => {
            let addr = info
                .kafka_shard_addrs
                .get(usize::from(shard))
                .unwrap_or(&info.kafka_addr);
            (
                net::cluster::broker_id(node, Some(u32::from(shard))),
                advertised_of(addr),
            )
        }
        // Placed on a node the controller knows (checked when applied);
        // unknown here only if this node's view lags.
        None => (-1, advertised.bootstrap.clone()),
    }
}

pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, advertised: Rc<Endpoints>) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(shard = shard.id, %error, "kafka accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.connections.get() >= shard.config.connections_max {
            tracing::warn!(
                shard = shard.id,
                "connection limit reached; closing a new Kafka connection"
            );
            continue;
        }
        shard.connections.set(shard.connections.get() + 1);
        let (shard, advertised) = (shard.clone(), advertised.clone());
        glommio::spawn_local(async move {
            if let Err(error) = connection(&shard, stream, &advertised).await {
                tracing::debug!(shard = shard.id, %error, "kafka connection ended");
            }
            shard.connections.set(shard.connections.get() - 1);
        })
        .detach();
    }
}

async fn connection(shard: &Shard, mut stream: TcpStream, advertised: &Endpoints) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let max = shard.config.frame_bytes_max;
    let mut out = BytesMut::new();
    loop {
        let mut prefix = [0u8; wire::LENGTH_BYTES];
        match stream.read_exact(&mut prefix).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let length = match wire::frame_length(&prefix, max) {
            Ok(Some(length)) => length,
            Ok(None) => unreachable!("four bytes were read"),
            Err(error) => {
                // The stream cannot be resynchronized.
                tracing::warn!(shard = shard.id, %error, "refusing a Kafka frame and closing the connection");
                return Ok(());
            }
        };
        let mut message = vec![0u8; length];
        stream.read_exact(&mut message).await?;
        let read_at = std::time::Instant::now();
        let stats = &shard.stats;
        stats.requests.set(stats.requests.get() + 1);
        stats
            .bytes_received
            .set(stats.bytes_received.get() + (wire::LENGTH_BYTES + length) as u64);
        out.clear();
        match wire::decode_request(Bytes::from(message)) {
            Ok(Decoded::Request { header, version, body }) => {
                let api = ApiKey::try_from(header.request_api_key).expect("decoded requests have known keys");
                let response = handle(shard, advertised, version, *body).await;
                stats.kafka_request(api as i16, read_at.elapsed(), |each| {
                    if let Some(response) = &response {
                        error_codes(response, each);
                    }
                });
                let Some(response) = response else {
                    continue; // acks=0
                };
                if let Err(error) = wire::encode_response(header.correlation_id, api, version, &response, &mut out) {
                    tracing::error!(shard = shard.id, %error, "a Kafka response did not encode; closing");
                    return Ok(());
                }
            }
            Ok(Decoded::Unsupported {
                api_key,
                version,
                correlation_id,
                request,
            }) => {
                tracing::debug!(shard = shard.id, api_key, version, "unsupported Kafka API or version");
                // A produce with acks=0 expects no answer, whatever its version.
                if let Some(RequestKind::Produce(produce)) = request.as_deref() {
                    if produce.acks == 0 {
                        continue;
                    }
                }
                // The API's own response at the version asked, with
                // UNSUPPORTED_VERSION in its error fields, on a connection
                // that stays open (frames are length-delimited, so the next
                // request is readable).
                let code = ErrorCode::UnsupportedVersion.code();
                let own = request.zip(ApiKey::try_from(api_key).ok()).and_then(|(request, api)| {
                    let response = wire::unsupported::error_response(&request, version, code)?;
                    wire::encode_response(correlation_id, api, version, &response, &mut out).ok()
                });
                if own.is_none() {
                    // No response of that API at that version can be built
                    // (ApiVersions itself, an API unknown to Kafka, a version
                    // before v2 record batches): ApiVersions v0 with the error
                    // and the versions served, as Kafka answers an ApiVersions
                    // it cannot parse. Only for ApiVersions is that the format
                    // the client reads; any other client would misread it as
                    // its own response, so that connection is closed after it.
                    out.clear();
                    wire::encode_response(correlation_id, ApiKey::ApiVersions, 0, &api_versions(code), &mut out)
                        .expect("ApiVersions v0 encodes");
                    if api_key != ApiKey::ApiVersions as i16 {
                        stream.write_all(&out).await?;
                        return Ok(());
                    }
                }
            }
            Err(error) => {
                tracing::warn!(shard = shard.id, %error, "malformed Kafka request; closing the connection");
                return Ok(());
            }
        }
        stream.write_all(&out).await?;
        stats.bytes_sent.set(stats.bytes_sent.get() + out.len() as u64);
    }
}

/// Hands each error code a response carries (top level and per topic or
/// partition) to `each`, for the metrics: the APIs clients call most. An
/// API not listed here counts its requests only.
fn error_codes(response: &ResponseKind, each: &mut dyn FnMut(i16)) {
    match response {
        ResponseKind::Produce(r) => r
            .responses
            .iter()
            .flat_map(|t| &t.partition_responses)
            .for_each(|p| each(p.error_code)),
        ResponseKind::Fetch(r) => {
            each(r.error_code);
            r.responses
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| each(p.error_code));
        }
        ResponseKind::Metadata(r) => {
            for topic in &r.topics {
                each(topic.error_code);
                topic.partitions.iter().for_each(|p| each(p.error_code));
            }
        }
        ResponseKind::ListOffsets(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| each(p.error_code)),
        ResponseKind::OffsetForLeaderEpoch(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| each(p.error_code)),
        ResponseKind::OffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| each(p.error_code)),
        ResponseKind::TxnOffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| each(p.error_code)),
        ResponseKind::OffsetFetch(r) => {
            each(r.error_code);
            r.topics
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| each(p.error_code));
        }
        ResponseKind::FindCoordinator(r) => {
            each(r.error_code);
            r.coordinators.iter().for_each(|c| each(c.error_code));
        }
        ResponseKind::CreateTopics(r) => r.topics.iter().for_each(|t| each(t.error_code)),
        ResponseKind::DeleteTopics(r) => r.responses.iter().for_each(|t| each(t.error_code)),
        ResponseKind::DescribeGroups(r) => r.groups.iter().for_each(|g| each(g.error_code)),
        ResponseKind::DescribeConfigs(r) => r.results.iter().for_each(|c| each(c.error_code)),
        ResponseKind::ApiVersions(r) => each(r.error_code),
        ResponseKind::JoinGroup(r) => each(r.error_code),
        ResponseKind::SyncGroup(r) => each(r.error_code),
        ResponseKind::Heartbeat(r) => each(r.error_code),
        ResponseKind::LeaveGroup(r) => each(r.error_code),
        ResponseKind::ListGroups(r) => each(r.error_code),
        ResponseKind::InitProducerId(r) => each(r.error_code),
        ResponseKind::AddOffsetsToTxn(r) => each(r.error_code),
        ResponseKind::EndTxn(r) => each(r.error_code),
        ResponseKind::DescribeCluster(r) => each(r.error_code),
        ResponseKind::OffsetDelete(r) => {
            each(r.error_code);
            r.topics
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| each(p.error_code));
        }
        ResponseKind::DescribeLogDirs(r) => {
            each(r.error_code);
            r.results.iter().for_each(|d| each(d.error_code));
        }
        ResponseKind::AlterConfigs(r) => r.responses.iter().for_each(|c| each(c.error_code)),
        ResponseKind::IncrementalAlterConfigs(r) => r.responses.iter().for_each(|c| each(c.error_code)),
        ResponseKind::CreatePartitions(r) => r.results.iter().for_each(|t| each(t.error_code)),
        ResponseKind::DeleteRecords(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| each(p.error_code)),
        ResponseKind::DescribeProducers(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| each(p.error_code)),
        ResponseKind::ListTransactions(r) => each(r.error_code),
        ResponseKind::DescribeTransactions(r) => r.transaction_states.iter().for_each(|t| each(t.error_code)),
        _ => {}
    }
}

fn api_versions(error_code: i16) -> ResponseKind {
    let api_keys = wire::SUPPORTED
        .iter()
        .map(|(api, min, max)| {
            ApiVersion::default()
                .with_api_key(*api as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect();
    ResponseKind::ApiVersions(
        ApiVersionsResponse::default()
            .with_error_code(error_code)
            .with_api_keys(api_keys),
    )
}

async fn handle(shard: &Shard, advertised: &Endpoints, version: i16, body: RequestKind) -> Option<ResponseKind> {
    Some(match body {
        RequestKind::ApiVersions(_) => api_versions(0),
        RequestKind::Metadata(request) => metadata(shard, advertised, request).await,
        RequestKind::Produce(request) => return produce(shard, request).await,
        RequestKind::Fetch(request) => fetch(shard, request).await,
        RequestKind::ListOffsets(request) => list_offsets(shard, version, request).await,
        RequestKind::OffsetForLeaderEpoch(request) => offset_for_leader_epoch(shard, request).await,
        RequestKind::CreateTopics(request) => create_topics(shard, request).await,
        RequestKind::DeleteTopics(request) => delete_topics(shard, request).await,
        RequestKind::InitProducerId(request) => init_producer_id(shard, request).await,
        RequestKind::DescribeConfigs(request) => describe_configs(shard, request),
        RequestKind::FindCoordinator(request) => groups::find_coordinator(shard, advertised, version, request),
        RequestKind::JoinGroup(request) => groups::join(shard, version, request).await,
        RequestKind::SyncGroup(request) => groups::sync(shard, request).await,
        RequestKind::Heartbeat(request) => groups::heartbeat(shard, request).await,
        RequestKind::LeaveGroup(request) => groups::leave(shard, version, request).await,
        RequestKind::OffsetCommit(request) => groups::offset_commit(shard, request).await,
        RequestKind::OffsetFetch(request) => groups::offset_fetch(shard, version, request).await,
        RequestKind::ListGroups(_) => groups::list(shard).await,
        RequestKind::DescribeGroups(request) => groups::describe(shard, request).await,
        RequestKind::AddPartitionsToTxn(request) => groups::add_partitions_to_txn(shard, request).await,
        RequestKind::AddOffsetsToTxn(request) => groups::add_offsets_to_txn(shard, request).await,
        RequestKind::EndTxn(request) => groups::end_txn(shard, request).await,
        RequestKind::TxnOffsetCommit(request) => groups::txn_offset_commit(shard, request).await,
        RequestKind::DescribeCluster(request) => describe_cluster(shard, advertised, request),
        RequestKind::OffsetDelete(request) => groups::offset_delete(shard, request).await,
        RequestKind::DescribeLogDirs(request) => describe_log_dirs(shard, advertised, request).await,
        RequestKind::AlterConfigs(request) => admin::alter_configs(shard, request).await,
        RequestKind::IncrementalAlterConfigs(request) => admin::incremental_alter_configs(shard, request).await,
        RequestKind::CreatePartitions(request) => admin::create_partitions(shard, request).await,
        RequestKind::DeleteRecords(request) => admin::delete_records(shard, request).await,
        RequestKind::DescribeProducers(request) => admin::describe_producers(shard, request).await,
        RequestKind::ListTransactions(request) => admin::list_transactions(shard, advertised, request).await,
        RequestKind::DescribeTransactions(request) => admin::describe_transactions(shard, request).await,
        other => {
            // Decoding refuses APIs outside `SUPPORTED`; one listed there but
            // not served here is a bug, answered rather than dropped.
            tracing::error!(?other, "a supported Kafka API without a handler");
            api_versions(ErrorCode::UnsupportedVersion.code())
        }
    })
}

async fn metadata(shard: &Shard, advertised: &Endpoints, request: MetadataRequest) -> ResponseKind {
    let table = shard.metadata.snapshot();
    let names: Vec<String> = match &request.topics {
        Some(topics) => topics
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
            .collect(),
        None => table.topics.keys().cloned().collect(),
    };
    let topics = names
        .into_iter()
        .map(|topic| {
            let Some(meta) = table.topics.get(&topic) else {
                return MetadataResponseTopic::default()
                    .with_name(Some(topic_name(&topic)))
                    .with_error_code(ErrorCode::UnknownTopicOrPartition.code());
            };
            let partitions = (0..meta.shards.len() as u32)
                .map(|p| {
                    let assigned: Vec<(u64, u16)> = match table.cluster {
                        Some(_) => meta.replicas[p as usize].iter().map(|&(n, s)| (n, s as u16)).collect(),
                        None => vec![(0, meta.shards[p as usize])],
                    };
                    let broker = |node: u64, shard: u16| match table.cluster {
                        Some(_) => BrokerId(broker_at(&table, advertised, node, shard).0),
                        None => BrokerId(advertised.broker_of(shard)),
                    };
                    let replicas: Vec<BrokerId> = assigned.iter().map(|&(n, s)| broker(n, s)).collect();
                    let partition = MetadataResponsePartition::default()
                        .with_partition_index(p as i32)
                        .with_replica_nodes(replicas.clone());
                    let Some(leader) = shard.metadata.leader(&table, &topic, p) else {
                        // An election under way: the client asks again.
                        return partition
                            .with_error_code(ErrorCode::LeaderNotAvailable.code())
                            .with_leader_id(BrokerId(-1))
                            .with_leader_epoch(-1)
                            .with_isr_nodes(Vec::new());
                    };
                    // Where the leader's view of its followers is not
                    // known here, every replica is reported in sync.
                    let isr = match leader.in_sync.is_empty() {
                        true => replicas,
                        false => assigned
                            .iter()
                            .filter(|(n, _)| leader.in_sync.contains(n))
                            .map(|&(n, s)| broker(n, s))
                            .collect(),
                    };
                    partition
                        .with_leader_id(broker(leader.node, leader.shard))
                        .with_leader_epoch(leader.epoch)
                        .with_isr_nodes(isr)
                })
                .collect();
            MetadataResponseTopic::default()
                .with_name(Some(topic_name(&topic)))
                .with_is_internal(topic.starts_with("__"))
                .with_partitions(partitions)
        })
        .collect();
    let controller = controller_broker(&table, advertised);
    ResponseKind::Metadata(
        MetadataResponse::default()
            .with_brokers(
                brokers(&table, advertised)
                    .into_iter()
                    .map(|b| {
                        MetadataResponseBroker::default()
                            .with_node_id(BrokerId(b.id))
                            .with_host(name(&b.at.host))
                            .with_port(b.at.port)
                            .with_rack(b.rack.as_deref().map(name))
                    })
                    .collect(),
            )
            .with_cluster_id(Some(name("corelog")))
            .with_controller_id(BrokerId(controller))
            .with_topics(topics),
    )
}

/// The broker clients are told is the controller: shard 0 of the
/// controller's leader in a cluster (-1 while there is none), shard 0 of a
/// node alone.
fn controller_broker(table: &TopicTable, advertised: &Endpoints) -> i32 {
    match &table.cluster {
        Some(view) => view
            .controller
            .map_or(-1, |node| broker_at(table, advertised, node, 0).0),
        None => advertised.broker_of(0),
    }
}

/// DescribeCluster (KIP-700): the brokers Metadata lists, the cluster id
/// and the controller, without a topic.
fn describe_cluster(shard: &Shard, advertised: &Endpoints, request: DescribeClusterRequest) -> ResponseKind {
    /// Kafka's endpoint types (KIP-919): brokers, or controllers.
    const BROKERS: i8 = 1;
    const UNSUPPORTED_ENDPOINT_TYPE: i16 = 120;
    if request.endpoint_type != BROKERS {
        return ResponseKind::DescribeCluster(
            DescribeClusterResponse::default()
                .with_error_code(UNSUPPORTED_ENDPOINT_TYPE)
                .with_error_message(Some(name("corelog describes its brokers only")))
                .with_endpoint_type(request.endpoint_type),
        );
    }
    let table = shard.metadata.snapshot();
    let brokers = brokers(&table, advertised)
        .into_iter()
        .map(|b| {
            describe_cluster_response::DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.id))
                .with_host(name(&b.at.host))
                .with_port(b.at.port)
                .with_rack(b.rack.as_deref().map(name))
        })
        .collect();
    ResponseKind::DescribeCluster(
        DescribeClusterResponse::default()
            .with_endpoint_type(BROKERS)
            .with_cluster_id(name("corelog"))
            .with_controller_id(BrokerId(controller_broker(&table, advertised)))
            .with_brokers(brokers)
            // No ACLs: every operation is allowed (Kafka's "not requested").
            .with_cluster_authorized_operations(i32::MIN),
    )
}

/// DescribeLogDirs: the one data directory, and the bytes of each
/// partition this broker holds, of the topics asked or all; a topic or
/// partition not held here is left out, as Kafka does. With shard ports
/// each shard is a broker and answers for its own partitions (a tool asks
/// every broker and sums); without, the node is one broker and answers for
/// every shard's.
async fn describe_log_dirs(shard: &Shard, advertised: &Endpoints, request: DescribeLogDirsRequest) -> ResponseKind {
    let sizes = match advertised.shards.is_empty() {
        true => shard.partition_sizes().await,
        false => Ok(shard.partition_sizes_local()),
    };
    let sizes = match sizes {
        Ok(sizes) => sizes,
        Err(error) => {
            return ResponseKind::DescribeLogDirs(
                DescribeLogDirsResponse::default().with_error_code(error.code().code()),
            )
        }
    };
    let wanted = |topic: &str, partition: u32| match &request.topics {
        None => true,
        Some(topics) => topics
            .iter()
            .any(|t| t.topic.0.as_str() == topic && t.partitions.contains(&(partition as i32))),
    };
    let mut by_topic: BTreeMap<String, Vec<describe_log_dirs_response::DescribeLogDirsPartition>> = BTreeMap::new();
    for (topic, partition, bytes) in sizes.into_iter().filter(|(t, p, _)| wanted(t, *p)) {
        by_topic.entry(topic).or_default().push(
            describe_log_dirs_response::DescribeLogDirsPartition::default()
                .with_partition_index(partition as i32)
                .with_partition_size(bytes as i64),
        );
    }
    let topics = by_topic
        .into_iter()
        .map(|(topic, mut partitions)| {
            partitions.sort_by_key(|p| p.partition_index);
            describe_log_dirs_response::DescribeLogDirsTopic::default()
                .with_name(topic_name(&topic))
                .with_partitions(partitions)
        })
        .collect();
    let dir = std::path::absolute(&shard.config.data_dir).unwrap_or_else(|_| shard.config.data_dir.clone());
    let (total, usable) = shard.data_dir_bytes().await;
    ResponseKind::DescribeLogDirs(DescribeLogDirsResponse::default().with_results(
        vec![describe_log_dirs_response::DescribeLogDirsResult::default()
            .with_log_dir(StrBytes::from_string(dir.display().to_string()))
            .with_total_bytes(total)
            .with_usable_bytes(usable)
            .with_topics(topics)],
    ))
}

async fn produce(shard: &Shard, request: ProduceRequest) -> Option<ResponseKind> {
    let started = Instant::now();
    let acks = match request.acks {
        -1 => net::messages::acks::ALL,
        0 => net::messages::acks::NONE,
        1 => net::messages::acks::LEADER,
        _ => i8::MAX, // refused below as INVALID_REQUIRED_ACKS
    };
    let mut responses = Vec::new();
    let table = shard.metadata.snapshot();
    for topic in request.topic_data {
        let name = topic.name.0.to_string();
        // Kafka reports the broker's time only for LogAppendTime topics.
        let log_append_time = log_append_time(&table, &name);
        let mut partitions = Vec::new();
        for data in topic.partition_data {
            let partition = data.index;
            let result = match (u32::try_from(partition), data.records) {
                (Ok(p), Some(records)) if acks != i8::MAX => match wire::records::to_storage(records) {
                    Ok(frames) => shard.produce(&name, p, &frames, acks).await,
                    Err(net::NetError::BatchTooLarge { size, max }) => Err(BrokerError::Storage {
                        topic: name.clone(),
                        partition: p,
                        source: storage::StorageError::BatchTooLarge { size, max },
                    }),
                    Err(error) => Err(BrokerError::CorruptBatches {
                        topic: name.clone(),
                        partition: p,
                        reason: error.to_string(),
                    }),
                },
                (_, _) if acks == i8::MAX => Err(BrokerError::InvalidAcks(request.acks as i8)),
                _ => Err(BrokerError::UnknownTopicOrPartition {
                    topic: name.clone(),
                    partition: partition.max(0) as u32,
                }),
            };
            partitions.push(match result {
                Ok(produced) => PartitionProduceResponse::default()
                    .with_index(partition)
                    .with_base_offset(produced.base_offset as i64)
                    .with_log_append_time_ms(if log_append_time {
                        produced.append_time_ms.max(-1)
                    } else {
                        -1
                    })
                    .with_log_start_offset(produced.log_start_offset as i64),
                Err(error) => {
                    tracing::debug!(shard = shard.id, %error, "kafka produce refused");
                    PartitionProduceResponse::default()
                        .with_index(partition)
                        .with_error_code(error.code().code())
                        .with_base_offset(-1)
                        .with_log_append_time_ms(-1)
                        .with_error_message(Some(StrBytes::from_string(error.to_string())))
                }
            });
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic.name)
                .with_partition_responses(partitions),
        );
    }
    shard.stats.produce_service.record(started.elapsed());
    if request.acks == 0 {
        return None;
    }
    Some(ResponseKind::Produce(
        ProduceResponse::default().with_responses(responses),
    ))
}

/// A fetch: reads every partition asked for; with fewer than `min_bytes`
/// it waits for an append to any of them until `max_wait_ms`, as the
/// native fetch does.
async fn fetch(shard: &Shard, request: FetchRequest) -> ResponseKind {
    let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(FETCH_MAX_WAIT);
    let deadline = Instant::now() + max_wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_bytes = if request.max_bytes <= 0 {
        usize::MAX
    } else {
        request.max_bytes as usize
    };
    let isolation = if request.isolation_level == 1 {
        net::messages::isolation::READ_COMMITTED
    } else {
        net::messages::isolation::READ_UNCOMMITTED
    };
    loop {
        let table = shard.metadata.snapshot();
        let mut total = 0usize;
        let mut waits: Vec<(String, u32, u64)> = Vec::new();
        let mut responses = Vec::new();
        for topic in &request.topics {
            let name = topic.topic.0.to_string();
            let mut partitions = Vec::new();
            for p in &topic.partitions {
                let partition = p.partition;
                // Only the first partition with data may pass a limit (by
                // one batch); past the response's max_bytes the others
                // answer with their watermarks, read nothing.
                let budget = Budget {
                    bytes: (p.partition_max_bytes.max(0) as usize).min(max_bytes.saturating_sub(total)),
                    limit: FetchLimit::after(total),
                };
                let data = fetch_partition(shard, &name, p, budget, isolation, log_append_time(&table, &name)).await;
                if let Ok((data, end)) = &data {
                    total += data.records.as_ref().map_or(0, |r| r.len());
                    waits.push((name.clone(), partition as u32, *end));
                }
                partitions.push(match data {
                    Ok((data, _)) => data,
                    Err(code) => PartitionData::default()
                        .with_partition_index(partition)
                        .with_error_code(code.code())
                        .with_high_watermark(-1)
                        .with_last_stable_offset(-1)
                        .with_log_start_offset(-1)
                        .with_records(Some(Bytes::new())),
                });
            }
            responses.push(
                FetchableTopicResponse::default()
                    .with_topic(topic.topic.clone())
                    .with_partitions(partitions),
            );
        }
        if total >= min_bytes || Instant::now() >= deadline || waits.is_empty() {
            return ResponseKind::Fetch(FetchResponse::default().with_responses(responses));
        }
        let waits = waits
            .iter()
            .map(|(topic, partition, end)| Box::pin(shard.wait_for_data(topic, *partition, *end, deadline)));
        let _ = futures::future::select_all(waits).await;
    }
}

fn log_append_time(table: &crate::topics::TopicTable, topic: &str) -> bool {
    table
        .topics
        .get(topic)
        .is_some_and(|t| t.configs.get("message.timestamp.type").map(String::as_str) == Some("LogAppendTime"))
}

/// What one partition of a fetch may return.
#[derive(Clone, Copy)]
struct Budget {
    bytes: usize,
    limit: FetchLimit,
}

/// One partition of a fetch, and its log end (to wait on).
async fn fetch_partition(
    shard: &Shard,
    topic: &str,
    request: &FetchPartition,
    budget: Budget,
    isolation: u8,
    log_append_time: bool,
) -> Result<(PartitionData, u64), ErrorCode> {
    let (partition, offset) = (request.partition, request.fetch_offset);
    let partition_u = u32::try_from(partition).map_err(|_| ErrorCode::UnknownTopicOrPartition)?;
    if offset < 0 {
        return Err(ErrorCode::OffsetOutOfRange);
    }
    let at = FetchAt {
        offset: offset as u64,
        max_bytes: budget.bytes.min(u32::MAX as usize) as u32,
        limit: budget.limit,
        isolation_level: isolation,
        // Before v9 a fetch names no epoch: -1 from the decoder.
        current_leader_epoch: request.current_leader_epoch,
    };
    let fetched = shard.fetch(topic, partition_u, at).await.map_err(|e| e.code())?;
    if (offset as u64) > fetched.high_watermark || (offset as u64) < fetched.log_start_offset {
        return Err(ErrorCode::OffsetOutOfRange);
    }
    let records = wire::records::to_kafka(&fetched.bytes, log_append_time).map_err(|_| ErrorCode::CorruptMessage)?;
    let aborted = (isolation == net::messages::isolation::READ_COMMITTED).then(|| {
        fetched
            .aborted
            .iter()
            .map(|a| {
                net::kafka::kafka_protocol::messages::fetch_response::AbortedTransaction::default()
                    .with_producer_id(ProducerId(a.producer_id))
                    .with_first_offset(a.first_offset as i64)
            })
            .collect()
    });
    let data = PartitionData::default()
        .with_partition_index(partition)
        .with_high_watermark(fetched.high_watermark as i64)
        .with_last_stable_offset(fetched.last_stable_offset as i64)
        .with_log_start_offset(fetched.log_start_offset as i64)
        .with_aborted_transactions(aborted)
        .with_records(Some(records));
    Ok((data, fetched.high_watermark))
}

async fn offset_for_leader_epoch(shard: &Shard, request: OffsetForLeaderEpochRequest) -> ResponseKind {
    let mut topics = Vec::new();
    for topic in request.topics {
        let name = topic.topic.0.to_string();
        let mut partitions = Vec::new();
        for p in topic.partitions {
            let result = match u32::try_from(p.partition) {
                Ok(partition) => {
                    shard
                        .epoch_end_offset(&name, partition, p.current_leader_epoch, p.leader_epoch)
                        .await
                }
                Err(_) => Err(BrokerError::UnknownTopicOrPartition {
                    topic: name.clone(),
                    partition: 0,
                }),
            };
            let response = EpochEndOffset::default().with_partition(p.partition);
            partitions.push(match result {
                Ok((epoch, offset)) => response.with_leader_epoch(epoch).with_end_offset(offset),
                Err(error) => response
                    .with_error_code(error.code().code())
                    .with_leader_epoch(-1)
                    .with_end_offset(-1),
            });
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions),
        );
    }
    ResponseKind::OffsetForLeaderEpoch(OffsetForLeaderEpochResponse::default().with_topics(topics))
}

async fn list_offsets(shard: &Shard, version: i16, request: ListOffsetsRequest) -> ResponseKind {
    let mut topics = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::new();
        for p in topic.partitions {
            let timestamp = match p.timestamp {
                -1 => LATEST_TIMESTAMP,
                -2 => EARLIEST_TIMESTAMP,
                ts => ts,
            };
            let result = match u32::try_from(p.partition_index) {
                // READ_COMMITTED's latest offset is the last stable one.
                Ok(partition) if timestamp == LATEST_TIMESTAMP && request.isolation_level == 1 => {
                    let at = FetchAt {
                        current_leader_epoch: p.current_leader_epoch,
                        ..FetchAt::one_batch(0, net::messages::isolation::READ_COMMITTED)
                    };
                    shard.fetch(&name, partition, at).await.map(|f| {
                        Some(ListedOffset {
                            offset: f.last_stable_offset,
                            leader_epoch: f.leader_epoch,
                        })
                    })
                }
                Ok(partition) => {
                    shard
                        .list_offset(&name, partition, timestamp, p.current_leader_epoch)
                        .await
                }
                Err(_) => Err(BrokerError::UnknownTopicOrPartition {
                    topic: name.clone(),
                    partition: 0,
                }),
            };
            let response = ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            // A lookup by time answers with the found record's timestamp.
            let found_at = match (&result, u32::try_from(p.partition_index)) {
                (Ok(Some(listed)), Ok(partition)) if timestamp >= 0 => {
                    let log_append = log_append_time(&shard.metadata.snapshot(), &name);
                    record_timestamp(shard, &name, partition, listed.offset, log_append).await
                }
                _ => -1,
            };
            partitions.push(match result {
                // No record at or after the timestamp: Kafka answers -1.
                Ok(listed) => response
                    .with_offset(listed.map_or(-1, |l| l.offset as i64))
                    .with_timestamp(found_at)
                    .with_leader_epoch(match listed {
                        Some(l) if version >= 4 => l.leader_epoch,
                        _ => -1,
                    }),
                Err(error) => response.with_error_code(error.code().code()).with_offset(-1),
            });
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ResponseKind::ListOffsets(ListOffsetsResponse::default().with_topics(topics))
}

/// The timestamp of the record at `offset` (the append time on a
/// LogAppendTime topic), or -1 where it cannot be read.
async fn record_timestamp(shard: &Shard, topic: &str, partition: u32, offset: u64, log_append: bool) -> i64 {
    let at = FetchAt::one_batch(offset, net::messages::isolation::READ_UNCOMMITTED);
    let Ok(fetched) = shard.fetch(topic, partition, at).await else {
        return -1;
    };
    for frame in storage::batch::frames(&fetched.bytes) {
        let Ok(info) = storage::batch::verify_crc(frame) else {
            return -1;
        };
        if offset < info.base_offset.0 || offset > info.last_offset().0 {
            continue;
        }
        if log_append {
            return info.append_time_ms;
        }
        let Ok(archived) = storage::batch::access(frame) else {
            return -1;
        };
        return archived
            .records
            .iter()
            .find(|r| info.base_offset.0 + u64::from(r.offset_delta.to_native()) == offset)
            .map_or(-1, |r| info.first_timestamp_ms + r.timestamp_delta_ms.to_native());
    }
    -1
}

async fn create_topics(shard: &Shard, request: CreateTopicsRequest) -> ResponseKind {
    let mut results = Vec::new();
    let named = |name: &TopicName| request.topics.iter().filter(|t| t.name == *name).count();
    let duplicated: Vec<bool> = request.topics.iter().map(|t| named(&t.name) > 1).collect();
    for (topic, duplicated) in request.topics.into_iter().zip(duplicated) {
        let name = topic.name.0.to_string();
        // As Kafka: a name twice in one request creates neither.
        let factor = crate::server::replication_factor(&name, topic.replication_factor);
        let refused = if duplicated {
            Some((
                ErrorCode::InvalidRequest,
                format!("topic {name} is named twice in one request"),
            ))
        } else if let Err(error) = &factor {
            Some((error.code(), error.to_string()))
        } else {
            None
        };
        if let Some((code, message)) = refused {
            results.push(
                CreatableTopicResult::default()
                    .with_name(topic.name)
                    .with_error_code(code.code())
                    .with_error_message(Some(StrBytes::from_string(message)))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1),
            );
            continue;
        }
        let configs: BTreeMap<String, String> = topic
            .configs
            .iter()
            .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
            .collect();
        let partitions = if topic.num_partitions < 0 {
            0
        } else {
            topic.num_partitions as u32
        };
        let result = if topic.num_partitions == 0 {
            Err(BrokerError::InvalidPartitions(0))
        } else if request.validate_only {
            shard.validate_topic(&name, partitions, &configs)
        } else {
            let factor = factor.expect("refused above");
            shard.create_topic(&name, partitions, factor, configs, false).await
        };
        let count = match request.validate_only {
            // What would have been created.
            true if partitions == 0 => shard.config.default_partitions as i32,
            true => partitions as i32,
            false => shard
                .metadata
                .snapshot()
                .topics
                .get(&name)
                .map_or(-1, |t| t.shards.len() as i32),
        };
        results.push(match result {
            Ok(()) => CreatableTopicResult::default()
                .with_name(topic.name)
                .with_num_partitions(count)
                .with_replication_factor(1),
            Err(error) => CreatableTopicResult::default()
                .with_name(topic.name)
                .with_error_code(error.code().code())
                .with_error_message(Some(StrBytes::from_string(error.to_string())))
                .with_num_partitions(-1)
                .with_replication_factor(-1),
        });
    }
    ResponseKind::CreateTopics(CreateTopicsResponse::default().with_topics(results))
}

async fn delete_topics(shard: &Shard, request: DeleteTopicsRequest) -> ResponseKind {
    let mut names: Vec<TopicName> = request.topic_names;
    names.extend(request.topics.into_iter().filter_map(|t| t.name));
    let mut responses = Vec::new();
    for topic in names {
        let result = shard.delete_topic(&topic.0, false).await;
        let response = DeletableTopicResult::default().with_name(Some(topic));
        responses.push(match result {
            Ok(()) => response,
            Err(error) => response
                .with_error_code(error.code().code())
                .with_error_message(Some(StrBytes::from_string(error.to_string()))),
        });
    }
    ResponseKind::DeleteTopics(DeleteTopicsResponse::default().with_responses(responses))
}

async fn init_producer_id(shard: &Shard, request: InitProducerIdRequest) -> ResponseKind {
    let answer = match request.transactional_id {
        None => {
            let allocated = shard.allocate_producer_id().await;
            allocated.map(|id| (id, 0)).map_err(|error| {
                tracing::error!(%error, "allocating a producer id failed");
                ErrorCode::UnknownServerError
            })
        }
        Some(id) => groups::init_transactional(shard, &id.0, request.transaction_timeout_ms).await,
    };
    let response = match answer {
        Ok((producer_id, epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch),
        Err(code) => InitProducerIdResponse::default()
            .with_error_code(code.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    };
    ResponseKind::InitProducerId(response)
}

/// Kafka's resource types in DescribeConfigs.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Kafka's config sources: set on the topic, or the broker's default.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

/// DescribeConfigs: a topic's configs as corelog applies them (those set at
/// creation, then the defaults of every key it knows); a broker's as none
/// it lets clients change.
fn describe_configs(shard: &Shard, request: DescribeConfigsRequest) -> ResponseKind {
    let table = shard.metadata.snapshot();
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let wanted = |key: &str| {
                resource
                    .configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| k.as_str() == key))
            };
            match resource.resource_type {
                RESOURCE_TOPIC => {
                    let Some(topic) = table.topics.get(resource.resource_name.as_str()) else {
                        return result.with_error_code(ErrorCode::UnknownTopicOrPartition.code());
                    };
                    let mut configs = Vec::new();
                    let defaults = crate::topics::config_defaults();
                    // Keys set on the topic that have no default (none
                    // today: every key log_config takes has one) come first.
                    for (key, value) in &topic.configs {
                        if wanted(key) && !defaults.iter().any(|(k, _)| k == key) {
                            configs.push(
                                DescribeConfigsResourceResult::default()
                                    .with_name(name(key))
                                    .with_value(Some(name(value)))
                                    .with_config_source(SOURCE_TOPIC),
                            );
                        }
                    }
                    for (key, default) in defaults {
                        if !wanted(key) {
                            continue;
                        }
                        let (value, source) = match topic.configs.get(key) {
                            Some(value) => (value.clone(), SOURCE_TOPIC),
                            None => (default, SOURCE_DEFAULT),
                        };
                        configs.push(
                            DescribeConfigsResourceResult::default()
                                .with_name(name(key))
                                .with_value(Some(StrBytes::from_string(value)))
                                .with_config_source(source),
                        );
                    }
                    result.with_configs(configs)
                }
                RESOURCE_BROKER => result,
                _ => result.with_error_code(ErrorCode::InvalidRequest.code()),
            }
        })
        .collect();
    ResponseKind::DescribeConfigs(DescribeConfigsResponse::default().with_results(results))
}
