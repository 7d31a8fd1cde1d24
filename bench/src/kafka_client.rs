//! The benchmark's Kafka client, on the kafka-protocol crate: enough of
//! Kafka's protocol to create a topic, find each partition's leader, produce
//! with requests pipelined and fetch, against corelog's Kafka listener or any
//! Kafka-compatible broker, so the same workloads can compare them.
//!
//! A producer encodes its batch once and restamps it per send (each value's
//! first 8 bytes, the batch's timestamps and CRC), as the native side reseals
//! its batch; a consumer walks fetched batches in place, checking each CRC
//! before it trusts a record, as a Kafka consumer does.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use net::kafka::kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use net::kafka::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use net::kafka::kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use net::kafka::kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use net::kafka::kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use net::kafka::kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use net::kafka::kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use net::kafka::kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// The highest version of each API the client speaks, and the lowest it
/// accepts; it uses the lower of its highest and the broker's. Produce and
/// Fetch stop where topic ids replaced topic names; below Produce v3 and
/// Fetch v4 records were not v2 batches.
const VERSIONS: [(ApiKey, i16, i16); 6] = [
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
];
/// Largest response frame the client reads.
const RESPONSE_BYTES_MAX: usize = 256 << 20;
const READ_CHUNK_BYTES: usize = 256 << 10;
/// How long topic creation and deletion may take to show in metadata.
const TOPIC_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const UNSUPPORTED_VERSION: i16 = 35;
const TOPIC_ALREADY_EXISTS: i16 = 36;

// Record batch v2 layout (Kafka's DefaultRecordBatch).
const BATCH_LENGTH_AT: usize = 8;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const RECORD_COUNT_AT: usize = 57;
const BATCH_HEADER_BYTES: usize = 61;
const COMPRESSION_MASK: i16 = 0x07;
const CONTROL_FLAG: i16 = 0x20;

/// Versions agreed with one broker.
#[derive(Clone, Debug)]
pub struct Versions(HashMap<i16, i16>);

impl Versions {
    pub fn of(&self, api: ApiKey) -> i16 {
        self.0[&(api as i16)]
    }

    fn agree(response: &ApiVersionsResponse) -> Result<Versions, String> {
        let mut agreed = HashMap::new();
        for (api, min, max) in VERSIONS {
            let offered = response
                .api_keys
                .iter()
                .find(|k| k.api_key == api as i16)
                .ok_or_else(|| format!("the broker does not offer {api:?}"))?;
            let version = max.min(offered.max_version);
            if version < min.max(offered.min_version) {
                return Err(format!(
                    "{api:?}: the broker offers versions {}..={}, the client speaks {min}..={max}",
                    offered.min_version, offered.max_version
                ));
            }
            agreed.insert(api as i16, version);
        }
        Ok(Versions(agreed))
    }
}

fn encode_request<Req: Encodable>(
    out: &mut BytesMut,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &Req,
) -> Result<(), String> {
    out.clear();
    out.extend_from_slice(&[0; 4]);
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("corelog-bench")))
        .encode(out, api.request_header_version(version))
        .map_err(|e| format!("encode {api:?} header: {e}"))?;
    body.encode(out, version)
        .map_err(|e| format!("encode {api:?} v{version}: {e}"))?;
    let length = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

/// `frame` is a response without its length prefix.
fn decode_response<Resp: Decodable>(mut frame: Bytes, api: ApiKey, version: i16) -> Result<Resp, String> {
    ResponseHeader::decode(&mut frame, api.response_header_version(version))
        .map_err(|e| format!("decode {api:?} response header: {e}"))?;
    Resp::decode(&mut frame, version).map_err(|e| format!("decode {api:?} v{version} response: {e}"))
}

fn frame_length(prefix: [u8; 4], addr: &str) -> Result<usize, String> {
    let length = i32::from_be_bytes(prefix);
    if length < 4 || length as usize > RESPONSE_BYTES_MAX {
        return Err(format!("{addr}: response frame of {length} bytes"));
    }
    Ok(length as usize)
}

/// One connection, one request at a time: admin calls and consumers.
pub struct KafkaConnection {
    addr: String,
    stream: TcpStream,
    correlation_id: i32,
    out: BytesMut,
    input: BytesMut,
    pub versions: Versions,
}

impl KafkaConnection {
    /// Connects and agrees versions with ApiVersions (v3, or v0 where the
    /// broker refuses v3).
    pub async fn connect(addr: &str) -> Result<KafkaConnection, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut connection = KafkaConnection {
            addr: addr.to_string(),
            stream,
            correlation_id: 0,
            out: BytesMut::new(),
            input: BytesMut::new(),
            versions: Versions(HashMap::new()),
        };
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("corelog-bench"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let mut response: ApiVersionsResponse = connection.call_at(ApiKey::ApiVersions, 3, &request).await?;
        if response.error_code == UNSUPPORTED_VERSION {
            response = connection.call_at(ApiKey::ApiVersions, 0, &request).await?;
        }
        if response.error_code != 0 {
            return Err(format!(
                "{addr}: ApiVersions refused with error {}",
                response.error_code
            ));
        }
        connection.versions = Versions::agree(&response).map_err(|e| format!("{addr}: {e}"))?;
        Ok(connection)
    }

    pub async fn call<Req: Encodable, Resp: Decodable>(&mut self, api: ApiKey, body: &Req) -> Result<Resp, String> {
        let version = self.versions.of(api);
        self.call_at(api, version, body).await
    }

    async fn call_at<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &Req,
    ) -> Result<Resp, String> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        encode_request(&mut self.out, api, version, self.correlation_id, body)?;
        let addr = &self.addr;
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|e| format!("write to {addr}: {e}"))?;
        let mut prefix = [0u8; 4];
        self.stream
            .read_exact(&mut prefix)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        // One receive buffer per connection: once the last response's bytes
        // are dropped, reserving takes their memory back instead of
        // allocating (and faulting in) a fetch's megabytes again.
        let length = frame_length(prefix, addr)?;
        self.input.clear();
        self.input.reserve(length);
        self.input.resize(length, 0);
        self.stream
            .read_exact(&mut self.input[..])
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        decode_response(self.input.split().freeze(), api, version)
    }

    /// Each partition's leader, as "host:port", by partition index.
    pub async fn leaders(&mut self, topic: &str) -> Result<Vec<String>, String> {
        let request = MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name(topic)))
        ]));
        let response: MetadataResponse = self.call(ApiKey::Metadata, &request).await?;
        let brokers: HashMap<BrokerId, String> = response
            .brokers
            .iter()
            .map(|b| (b.node_id, format!("{}:{}", b.host, b.port)))
            .collect();
        let described = response
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
            .ok_or_else(|| format!("metadata has no topic {topic}"))?;
        if described.error_code != 0 {
            return Err(format!("metadata of {topic}: error {}", described.error_code));
        }
        let mut leaders = vec![String::new(); described.partitions.len()];
        for partition in &described.partitions {
            let index = partition.partition_index as usize;
            let leader = brokers.get(&partition.leader_id).filter(|_| partition.error_code == 0);
            match (leaders.get_mut(index), leader) {
                (Some(slot), Some(addr)) => *slot = addr.clone(),
                _ => return Err(format!("{topic}/{index}: no leader (error {})", partition.error_code)),
            }
        }
        Ok(leaders)
    }

    /// The offset for `timestamp` (-1 latest, -2 earliest) of each partition.
    pub async fn list_offsets(&mut self, topic: &str, partitions: &[i32], timestamp: i64) -> Result<Vec<i64>, String> {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(*p)
                                .with_timestamp(timestamp)
                        })
                        .collect(),
                )]);
        let response: ListOffsetsResponse = self.call(ApiKey::ListOffsets, &request).await?;
        let answered: HashMap<i32, (i16, i64)> = response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .map(|p| (p.partition_index, (p.error_code, p.offset)))
            .collect();
        partitions
            .iter()
            .map(|p| match answered.get(p) {
                Some((0, offset)) => Ok(*offset),
                Some((code, _)) => Err(format!("ListOffsets {topic}/{p}: error {code}")),
                None => Err(format!("ListOffsets {topic}/{p}: not answered")),
            })
            .collect()
    }

    /// Fetches from each `(partition, offset)` (one request for all, long
    /// polling up to `max_wait_ms`), walks every record's value through
    /// `each` and moves the offsets past what was read. Returns the records.
    pub async fn fetch(
        &mut self,
        topic: &str,
        positions: &mut [(i32, i64)],
        max_wait_ms: i32,
        mut each: impl FnMut(&[u8]),
    ) -> Result<u64, String> {
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(16 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(
                    positions
                        .iter()
                        .map(|(partition, offset)| {
                            FetchPartition::default()
                                .with_partition(*partition)
                                .with_fetch_offset(*offset)
                                .with_partition_max_bytes(1 << 20)
                        })
                        .collect(),
                )]);
        let response: FetchResponse = self.call(ApiKey::Fetch, &request).await?;
        if response.error_code != 0 {
            return Err(format!("Fetch {topic}: error {}", response.error_code));
        }
        let mut records = 0;
        for data in response.responses.iter().flat_map(|t| t.partitions.iter()) {
            if data.error_code != 0 {
                return Err(format!(
                    "Fetch {topic}/{}: error {}",
                    data.partition_index, data.error_code
                ));
            }
            let Some(position) = positions.iter_mut().find(|(p, _)| *p == data.partition_index) else {
                continue;
            };
            if let Some(bytes) = &data.records {
                let (read, next) = walk_batches(bytes, position.1, &mut each)
                    .map_err(|e| format!("Fetch {topic}/{}: {e}", data.partition_index))?;
                records += read;
                position.1 = next;
            }
        }
        Ok(records)
    }
}

pub fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// Deletes `topic` if it exists, then creates it with `partitions` and
/// `configs`, and waits until every partition has a leader.
pub async fn recreate_topic(
    bootstrap: &str,
    topic: &str,
    partitions: u32,
    configs: &BTreeMap<String, String>,
) -> Result<(), String> {
    let mut admin = KafkaConnection::connect(bootstrap).await?;
    let request = DeleteTopicsRequest::default()
        .with_topic_names(vec![topic_name(topic)])
        .with_timeout_ms(30_000);
    let response: DeleteTopicsResponse = admin.call(ApiKey::DeleteTopics, &request).await?;
    for result in &response.responses {
        if result.error_code != 0 && result.error_code != UNKNOWN_TOPIC_OR_PARTITION {
            return Err(format!("delete {topic}: error {}", result.error_code));
        }
    }
    // Replication factor -1 (the broker's default) exists from v4.
    let replication_factor = if admin.versions.of(ApiKey::CreateTopics) >= 4 {
        -1
    } else {
        1
    };
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(topic))
            .with_num_partitions(partitions as i32)
            .with_replication_factor(replication_factor)
            .with_configs(
                configs
                    .iter()
                    .map(|(name, value)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(name.clone()))
                            .with_value(Some(StrBytes::from_string(value.clone())))
                    })
                    .collect(),
            )]);
    let give_up = Instant::now() + TOPIC_SETTLE_TIMEOUT;
    loop {
        let response: CreateTopicsResponse = admin.call(ApiKey::CreateTopics, &request).await?;
        let code = response.topics.first().map_or(0, |t| t.error_code);
        match code {
            0 => break,
            // A deletion still under way (Kafka deletes asynchronously).
            TOPIC_ALREADY_EXISTS if Instant::now() < give_up => {
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
            code => return Err(format!("create {topic}: error {code}")),
        }
    }
    loop {
        match admin.leaders(topic).await {
            Ok(leaders) if leaders.len() == partitions as usize => return Ok(()),
            Ok(_) | Err(_) if Instant::now() < give_up => glommio::timer::sleep(Duration::from_millis(100)).await,
            Ok(leaders) => return Err(format!("{topic}: {} partitions of {partitions}", leaders.len())),
            Err(e) => return Err(e),
        }
    }
}

type Waiter = oneshot::Sender<Result<Bytes, String>>;

struct Pipeline {
    addr: String,
    produce_version: i16,
    writer: RefCell<Option<WriteHalf<TcpStream>>>,
    /// One request written at a time, so frames never interleave.
    writing: Semaphore,
    /// Kafka answers a connection's requests in order: waiters in order of
    /// writing, each with its correlation id.
    waiting: RefCell<VecDeque<(i32, Waiter)>>,
    next_correlation_id: Cell<i32>,
    broken: RefCell<Option<String>>,
    reader: RefCell<Option<glommio::task::JoinHandle<()>>>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.borrow_mut().take() {
            reader.cancel();
        }
    }
}

/// A producer's connection to one broker with many produce requests in
/// flight (Kafka's max.in.flight.requests.per.connection); the caller bounds
/// how many. Clones share it.
#[derive(Clone)]
pub struct PipelinedProducer {
    inner: Rc<Pipeline>,
}

impl PipelinedProducer {
    pub async fn connect(addr: &str) -> Result<PipelinedProducer, String> {
        let connection = KafkaConnection::connect(addr).await?;
        let produce_version = connection.versions.of(ApiKey::Produce);
        let (reader, writer) = connection.stream.split();
        let inner = Rc::new(Pipeline {
            addr: addr.to_string(),
            produce_version,
            writer: RefCell::new(Some(writer)),
            writing: Semaphore::new(1),
            waiting: RefCell::new(VecDeque::new()),
            next_correlation_id: Cell::new(1),
            broken: RefCell::new(None),
            reader: RefCell::new(None),
        });
        let reading = glommio::spawn_local(read_responses(Rc::downgrade(&inner), reader)).detach();
        *inner.reader.borrow_mut() = Some(reading);
        Ok(PipelinedProducer { inner })
    }

    /// Produces one batch (acks 1 or -1); returns its base offset.
    pub async fn produce(&self, topic: &TopicName, partition: i32, batch: Bytes, acks: i16) -> Result<i64, String> {
        let inner = &self.inner;
        if let Some(reason) = inner.broken.borrow().clone() {
            return Err(format!("{}: {reason}", inner.addr));
        }
        let request = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic.clone())
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch))])]);
        let version = inner.produce_version;
        let (tx, rx) = oneshot::channel();
        {
            let _turn = inner.writing.acquire_permit(1).await.map_err(|e| e.to_string())?;
            let id = inner.next_correlation_id.get();
            inner.next_correlation_id.set(id.wrapping_add(1));
            let mut out = BytesMut::new();
            encode_request(&mut out, ApiKey::Produce, version, id, &request)?;
            inner.waiting.borrow_mut().push_back((id, tx));
            let mut writer = inner
                .writer
                .borrow_mut()
                .take()
                .ok_or_else(|| format!("{}: closed", inner.addr))?;
            let written = writer.write_all(&out).await;
            *inner.writer.borrow_mut() = Some(writer);
            if let Err(e) = written {
                // The stream is cut mid-frame: nothing after it can be read.
                let reason = format!("write to {}: {e}", inner.addr);
                fail(inner, reason.clone());
                return Err(reason);
            }
        }
        let frame = rx.await.map_err(|_| format!("{}: closed", inner.addr))??;
        let response: ProduceResponse = decode_response(frame, ApiKey::Produce, version)?;
        let answer = response
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .ok_or_else(|| format!("produce to {}/{partition}: empty response", topic.0))?;
        if answer.error_code != 0 {
            return Err(format!(
                "produce to {}/{partition}: error {}",
                topic.0, answer.error_code
            ));
        }
        Ok(answer.base_offset)
    }
}

async fn read_responses(inner: std::rc::Weak<Pipeline>, mut reader: ReadHalf<TcpStream>) {
    let mut buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let reason = loop {
        while buffer.len() >= 8 {
            let Some(inner) = inner.upgrade() else { return };
            let length = match frame_length(buffer[..4].try_into().expect("4 bytes"), &inner.addr) {
                Ok(length) => length,
                Err(e) => return fail(&inner, e),
            };
            if buffer.len() < 4 + length {
                buffer.reserve(4 + length - buffer.len());
                break;
            }
            let _ = buffer.split_to(4);
            let frame = buffer.split_to(length).freeze();
            let correlation_id = i32::from_be_bytes(frame[..4].try_into().expect("4 bytes"));
            let waiter = inner.waiting.borrow_mut().pop_front();
            match waiter {
                Some((id, waiter)) if id == correlation_id => {
                    let _ = waiter.send(Ok(frame));
                }
                _ => return fail(&inner, format!("response {correlation_id} out of order")),
            }
        }
        let start = buffer.len();
        buffer.resize(start + READ_CHUNK_BYTES, 0);
        match reader.read(&mut buffer[start..]).await {
            Ok(0) => break "closed by the broker".to_string(),
            Ok(n) => buffer.truncate(start + n),
            Err(e) => break e.to_string(),
        }
    };
    if let Some(inner) = inner.upgrade() {
        fail(&inner, reason);
    }
}

fn fail(inner: &Pipeline, reason: String) {
    *inner.broken.borrow_mut() = Some(reason.clone());
    let waiting: Vec<(i32, Waiter)> = inner.waiting.borrow_mut().drain(..).collect();
    for (_, waiter) in waiting {
        let _ = waiter.send(Err(format!("{}: {reason}", inner.addr)));
    }
}

/// An uncompressed v2 record batch encoded once, restamped for each send.
pub struct BatchTemplate {
    bytes: Vec<u8>,
    /// Where each record's value starts.
    values: Vec<usize>,
}

impl BatchTemplate {
    /// `records` records, each with `value` and no key or headers.
    pub fn new(records: usize, value: &[u8]) -> BatchTemplate {
        assert!(value.len() >= 8, "a value carries an 8-byte stamp");
        let records: Vec<Record> = (0..records as i64)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i,
                // The encoder starts a new batch where sequences break:
                // -1 (none) for the batch, counting on from there.
                sequence: -1 + i as i32,
                timestamp: 0,
                key: None,
                value: Some(Bytes::copy_from_slice(value)),
                headers: Default::default(),
            })
            .collect();
        let mut out = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut out,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .expect("a batch encodes");
        let bytes = out.to_vec();
        assert_eq!(
            be_i32(&bytes, RECORD_COUNT_AT) as usize,
            records.len(),
            "one batch holds every record"
        );
        let mut values = Vec::with_capacity(records.len());
        let mut at = BATCH_HEADER_BYTES;
        while at < bytes.len() {
            let (value, _, next) = record_value(&bytes, at).expect("the encoder's own batch walks");
            values.push(value.expect("a value").0);
            at = next;
        }
        assert_eq!(values.len(), records.len());
        BatchTemplate { bytes, values }
    }

    /// The batch with `stamp` in every value's first 8 bytes and
    /// `timestamp_ms` as its records' time, its CRC recomputed.
    pub fn stamp(&mut self, stamp: u64, timestamp_ms: i64) -> Bytes {
        for &at in &self.values {
            self.bytes[at..at + 8].copy_from_slice(&stamp.to_le_bytes());
        }
        self.bytes[BASE_TIMESTAMP_AT..BASE_TIMESTAMP_AT + 8].copy_from_slice(&timestamp_ms.to_be_bytes());
        self.bytes[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&timestamp_ms.to_be_bytes());
        let crc = crc32c::crc32c(&self.bytes[ATTRIBUTES_AT..]);
        self.bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        Bytes::copy_from_slice(&self.bytes)
    }
}

fn be_i16(bytes: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}

fn be_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// A zigzag varint (Kafka's record fields) at `*at`, moving past it.
fn varint(bytes: &[u8], at: &mut usize) -> Result<i64, String> {
    net::kafka::records::read_varint(bytes, at).ok_or_else(|| "record cut inside a varint".to_string())
}

/// The record at `at` in an uncompressed batch: its value's (start,
/// length) if it has one, its offset delta, and where the next record
/// starts.
#[allow(clippy::type_complexity)]
fn record_value(batch: &[u8], mut at: usize) -> Result<(Option<(usize, usize)>, i64, usize), String> {
    let length = varint(batch, &mut at)?;
    let end = at
        .checked_add(usize::try_from(length).map_err(|_| "negative record length")?)
        .filter(|end| *end <= batch.len())
        .ok_or("record runs past its batch")?;
    let record = &batch[..end];
    at += 1; // attributes
    varint(record, &mut at)?; // timestamp delta
    let offset_delta = varint(record, &mut at)?;
    net::kafka::records::read_bytes(record, &mut at).ok_or("key runs past its record")?;
    let value = net::kafka::records::read_bytes(record, &mut at).ok_or("value runs past its record")?;
    // A value ends where `at` now stands.
    Ok((value.map(|v| (at - v.len(), v.len())), offset_delta, end))
}

/// Walks the v2 batches fetched from `from`: checks each CRC, skips control
/// batches and records before `from`, passes every value to `each`. A batch
/// cut at the end (a fetch's byte limit) is left for the next fetch.
/// Returns the records read and the next offset to fetch.
pub fn walk_batches(mut bytes: &[u8], from: i64, each: &mut impl FnMut(&[u8])) -> Result<(u64, i64), String> {
    let (mut records, mut next) = (0u64, from);
    while bytes.len() >= BATCH_HEADER_BYTES {
        let base_offset = i64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
        let length = be_i32(bytes, BATCH_LENGTH_AT);
        let total = usize::try_from(length).map_err(|_| format!("batch at {base_offset}: length {length}"))? + 12;
        if total < BATCH_HEADER_BYTES {
            return Err(format!("batch at {base_offset}: length {length}"));
        }
        if total > bytes.len() {
            break;
        }
        let batch = &bytes[..total];
        bytes = &bytes[total..];
        if batch[MAGIC_AT] != 2 {
            return Err(format!("batch at {base_offset}: magic {}", batch[MAGIC_AT]));
        }
        let crc = u32::from_be_bytes(batch[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes"));
        if crc32c::crc32c(&batch[ATTRIBUTES_AT..]) != crc {
            return Err(format!("batch at {base_offset}: CRC mismatch"));
        }
        let attributes = be_i16(batch, ATTRIBUTES_AT);
        let last = base_offset + i64::from(be_i32(batch, LAST_OFFSET_DELTA_AT));
        if attributes & CONTROL_FLAG == 0 {
            if attributes & COMPRESSION_MASK == 0 {
                let mut at = BATCH_HEADER_BYTES;
                for _ in 0..be_i32(batch, RECORD_COUNT_AT) {
                    let (value, delta, end) =
                        record_value(batch, at).map_err(|e| format!("batch at {base_offset}: {e}"))?;
                    if base_offset + delta >= from {
                        if let Some((start, length)) = value {
                            each(&batch[start..start + length]);
                        }
                        records += 1;
                    }
                    at = end;
                }
            } else {
                let mut compressed = Bytes::copy_from_slice(batch);
                let set =
                    RecordBatchDecoder::decode(&mut compressed).map_err(|e| format!("batch at {base_offset}: {e}"))?;
                for record in set.records.iter().filter(|r| r.offset >= from) {
                    if let Some(value) = &record.value {
                        each(value);
                    }
                    records += 1;
                }
            }
        }
        next = next.max(last + 1);
    }
    Ok((records, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values_of(bytes: &[u8], from: i64) -> (Vec<Vec<u8>>, i64) {
        let mut values = Vec::new();
        let (records, next) = walk_batches(bytes, from, &mut |v| values.push(v.to_vec())).unwrap();
        assert_eq!(records as usize, values.len());
        (values, next)
    }

    #[test]
    fn a_stamped_batch_decodes_with_kafkas_decoder_and_the_walker() {
        let mut template = BatchTemplate::new(5, &[0x5a; 100]);
        let batch = template.stamp(0x0102_0304_0506_0708, 1_700_000_000_000);
        let mut decoded = batch.clone();
        let set = RecordBatchDecoder::decode(&mut decoded).expect("Kafka's decoder accepts the restamped batch");
        assert_eq!(set.records.len(), 5);
        for record in &set.records {
            assert_eq!(record.timestamp, 1_700_000_000_000);
            let value = record.value.as_ref().unwrap();
            assert_eq!(&value[..8], &0x0102_0304_0506_0708u64.to_le_bytes());
            assert!(value[8..].iter().all(|b| *b == 0x5a));
        }
        let (values, next) = values_of(&batch, 0);
        assert_eq!(values.len(), 5);
        assert_eq!(next, 5);
        assert_eq!(&values[4][..8], &0x0102_0304_0506_0708u64.to_le_bytes());
    }

    #[test]
    fn the_walker_skips_records_before_the_fetch_offset_and_leaves_a_cut_batch() {
        let mut template = BatchTemplate::new(4, &[1; 16]);
        let mut fetched = template.stamp(7, 1).to_vec();
        let mut second = template.stamp(8, 2).to_vec();
        second[..8].copy_from_slice(&4i64.to_be_bytes()); // base offset 4, outside the CRC
        fetched.extend_from_slice(&second);
        let (values, next) = values_of(&fetched, 2);
        assert_eq!((values.len(), next), (6, 8));
        // The second batch cut short: only the first is read.
        let (values, next) = values_of(&fetched[..fetched.len() - 10], 0);
        assert_eq!((values.len(), next), (4, 4));
    }

    #[test]
    fn the_walker_refuses_a_corrupt_batch() {
        let mut template = BatchTemplate::new(2, &[1; 16]);
        let mut batch = template.stamp(7, 1).to_vec();
        let last = batch.len() - 1;
        batch[last] ^= 0xff;
        let error = walk_batches(&batch, 0, &mut |_| {}).unwrap_err();
        assert!(error.contains("CRC"), "{error}");
    }

    #[test]
    fn the_walker_reads_compressed_batches_through_the_decoder() {
        let records: Vec<Record> = (0..3)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: -1 + i as i32,
                timestamp: 0,
                key: None,
                value: Some(Bytes::from(vec![i as u8; 32])),
                headers: Default::default(),
            })
            .collect();
        let mut out = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut out,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::Gzip,
            },
        )
        .unwrap();
        let (values, next) = values_of(&out, 1);
        assert_eq!(values, vec![vec![1u8; 32], vec![2u8; 32]]);
        assert_eq!(next, 3);
    }
}
