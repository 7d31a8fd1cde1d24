//! The Kafka listener against the native protocol: the same produce and
//! consume load (1 KiB records in batches of 60, acks=1, one request at a
//! time per connection) through each, against one broker, in the same run.
//! The Kafka side is a minimal client on the `kafka-protocol` crate, so the
//! figures compare the broker's two edges rather than two client libraries.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use net::client::Connection;
use net::kafka::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use net::kafka::kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use net::kafka::kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, TopicName,
};
use net::kafka::kafka_protocol::protocol::StrBytes;
use net::kafka::kafka_protocol::records::RecordBatchDecoder;
use net::messages::{acks, EARLIEST_TIMESTAMP};
use serde::{Deserialize, Serialize};
use storage::batch::{self, RecordBatchBuilder};

use crate::kafka_client::{BatchTemplate, KafkaConnection};
use crate::machine::Machine;
use crate::storage_bench::median;

#[derive(clap::Args)]
pub struct Args {
    /// Directory for the broker's data (on the disk under test).
    #[arg(long, default_value = "corelog-data/bench-kafka")]
    data_dir: PathBuf,
    /// Bytes produced (and then consumed) per protocol per run.
    #[arg(long, default_value_t = 512 << 20)]
    bytes: u64,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Client connections producing at once.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    #[arg(long, default_value_t = 1)]
    shards: usize,
    #[arg(long, default_value_os_t = crate::default_report_dir())]
    report_dir: PathBuf,
}

const RECORD_BYTES: usize = 1024;
const BATCH_RECORDS: usize = 60;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub protocol: String,
    pub produce_mb_per_s: f64,
    pub consume_mb_per_s: f64,
}

pub fn run(args: Args) -> Result<(), String> {
    let machine = Machine::describe(std::path::Path::new("."));
    let mut samples = Vec::new();
    for run in 0..args.runs {
        for protocol in ["native", "kafka"] {
            let dir = args.data_dir.join(format!("run{run}-{protocol}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let broker = crate::broker_process::BrokerProcess::start_with_kafka(&dir, args.shards)?;
            let kafka = broker.kafka_addr.clone().expect("started with the Kafka listener");
            let sample = measure(&broker.addr, &kafka, protocol, &args)?;
            eprintln!(
                "run {}/{}: {protocol}: produce {:.0} MB/s, consume {:.0} MB/s",
                run + 1,
                args.runs,
                sample.produce_mb_per_s,
                sample.consume_mb_per_s
            );
            samples.push(sample);
            drop(broker);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let report = render(&machine, &samples, &args);
    println!("{report}");
    std::fs::create_dir_all(&args.report_dir).map_err(|e| e.to_string())?;
    std::fs::write(args.report_dir.join("kafka.md"), &report).map_err(|e| e.to_string())?;
    let json = serde_json::json!({ "machine": machine, "samples": samples, "bytes": args.bytes });
    std::fs::write(
        args.report_dir.join("kafka.json"),
        serde_json::to_string_pretty(&json).expect("json"),
    )
    .map_err(|e| e.to_string())?;
    crate::index::write(&args.report_dir)
}

fn measure(native: &str, kafka: &str, protocol: &'static str, args: &Args) -> Result<Sample, String> {
    let (native, kafka) = (native.to_string(), kafka.to_string());
    let (partitions, connections, bytes) = (args.partitions, args.connections, args.bytes);
    glommio::LocalExecutorBuilder::default()
        .io_memory(4 << 20)
        .make()
        .map_err(|e| e.to_string())?
        .run(async move {
            let mut admin = Connection::connect(&native).await.map_err(|e| e.to_string())?;
            admin
                .create_topic("bench", partitions, vec![])
                .await
                .map_err(|e| e.to_string())?;
            let value = vec![0x42u8; RECORD_BYTES];
            let mut builder = RecordBatchBuilder::new();
            for _ in 0..BATCH_RECORDS {
                builder.push(0, None, Some(&value), vec![]);
            }
            let native_frame = Rc::new(builder.build());
            let kafka_frame = BatchTemplate::new(BATCH_RECORDS, &value).stamp(0, 0);
            let batches = bytes.div_ceil((BATCH_RECORDS * RECORD_BYTES) as u64);
            let started = Instant::now();
            let tasks: Vec<_> = (0..connections)
                .map(|c| {
                    let (native, kafka) = (native.clone(), kafka.clone());
                    let (native_frame, kafka_frame) = (native_frame.clone(), kafka_frame.clone());
                    glommio::spawn_local(async move {
                        let mut indices = (c as u64..batches).step_by(connections);
                        if protocol == "native" {
                            let mut connection = Connection::connect(&native).await.map_err(|e| e.to_string())?;
                            for i in indices.by_ref() {
                                let partition = (i % u64::from(partitions)) as u32;
                                connection
                                    .produce("bench", partition, &native_frame, acks::LEADER)
                                    .await
                                    .map_err(|e| e.to_string())?;
                            }
                        } else {
                            let mut connection = KafkaConnection::connect(&kafka).await?;
                            for i in indices {
                                let partition = (i % u64::from(partitions)) as i32;
                                let request = ProduceRequest::default()
                                    .with_acks(1)
                                    .with_timeout_ms(30_000)
                                    .with_topic_data(vec![TopicProduceData::default()
                                        .with_name(TopicName(StrBytes::from_static_str("bench")))
                                        .with_partition_data(vec![PartitionProduceData::default()
                                            .with_index(partition)
                                            .with_records(Some(kafka_frame.clone()))])]);
                                let response: ProduceResponse = connection.call(ApiKey::Produce, &request).await?;
                                let code = response.responses[0].partition_responses[0].error_code;
                                if code != 0 {
                                    return Err(format!("Kafka produce refused: error {code}"));
                                }
                            }
                        }
                        Ok::<(), String>(())
                    })
                })
                .collect();
            for task in tasks {
                task.await?;
            }
            let produce_seconds = started.elapsed().as_secs_f64();
            let produced = batches * (BATCH_RECORDS * RECORD_BYTES) as u64;

            let started = Instant::now();
            let tasks: Vec<_> = (0..partitions)
                .map(|partition| {
                    let (native, kafka) = (native.clone(), kafka.clone());
                    glommio::spawn_local(async move { consume(&native, &kafka, protocol, partition).await })
                })
                .collect();
            let mut records = 0;
            for task in tasks {
                records += task.await?;
            }
            let consume_seconds = started.elapsed().as_secs_f64();
            if records * RECORD_BYTES as u64 != produced {
                return Err(format!(
                    "consumed {records} records of {}",
                    produced / RECORD_BYTES as u64
                ));
            }
            Ok(Sample {
                protocol: protocol.to_string(),
                produce_mb_per_s: produced as f64 / produce_seconds / 1e6,
                consume_mb_per_s: produced as f64 / consume_seconds / 1e6,
            })
        })
}

/// Reads one partition from its start to its end; the records read.
async fn consume(native: &str, kafka: &str, protocol: &str, partition: u32) -> Result<u64, String> {
    let mut records = 0u64;
    if protocol == "native" {
        let mut connection = Connection::connect(native).await.map_err(|e| e.to_string())?;
        let mut next = connection
            .list_offset("bench", partition, EARLIEST_TIMESTAMP)
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or(0);
        loop {
            let fetched = connection
                .fetch("bench", partition, next, 1 << 20, 0)
                .await
                .map_err(|e| e.to_string())?;
            if fetched.batches().is_empty() {
                return Ok(records);
            }
            for frame in batch::frames(fetched.batches()) {
                let info = batch::verify_crc(frame).map_err(|e| e.to_string())?;
                records += u64::from(info.record_count);
                next = info.next_offset().0;
            }
        }
    }
    let mut connection = KafkaConnection::connect(kafka).await?;
    let mut next = 0i64;
    loop {
        let request = FetchRequest::default()
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("bench")))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition as i32)
                    .with_fetch_offset(next)
                    .with_partition_max_bytes(1 << 20)])]);
        let response: FetchResponse = connection.call(ApiKey::Fetch, &request).await?;
        let data = &response.responses[0].partitions[0];
        if data.error_code != 0 {
            return Err(format!("Kafka fetch refused: error {}", data.error_code));
        }
        let mut bytes = data.records.clone().unwrap_or_default();
        if bytes.is_empty() {
            return Ok(records);
        }
        // The client decodes every record, as a Kafka consumer does.
        while !bytes.is_empty() {
            let set = RecordBatchDecoder::decode(&mut bytes).map_err(|e| e.to_string())?;
            for record in &set.records {
                if record.offset >= next {
                    records += 1;
                    next = record.offset + 1;
                }
            }
        }
    }
}

fn render(machine: &Machine, samples: &[Sample], args: &Args) -> String {
    let mut out = String::from("# Kafka listener against the native protocol\n\n");
    out.push_str(
        "Generated by `cargo build --release && target/release/corelog-bench kafka`; do not edit by hand.\n\n",
    );
    out.push_str(&format!(
        "One `corelog serve` process with {} shard(s) per protocol and run. {} connections produce batches of \
         {BATCH_RECORDS} records of 1 KiB with acks=1, one request at a time per connection, {} MiB in all, round \
         robin over {} partitions; then one connection per partition fetches everything back (1 MiB per fetch). \
         Native: corelog's client. Kafka: a minimal client on the kafka-protocol crate (Produce and \
         Fetch at the highest versions both speak: v9 and v12, uncompressed v2 batches, every fetched record \
         decoded). What differs at the broker is its edge: a produced Kafka batch is walked (CRC, every length) \
         and archived as a storage batch where a native batch is checked and stored as it came; a fetch writes \
         each stored record into a Kafka batch (and its CRC) where the native fetch sends the stored bytes \
         untouched. The clients differ too: corelog's client copies each response out of its receive buffer, \
         the Kafka client decodes every record, so a ratio above 100% is possible. Values count towards MB/s \
         (10^6 bytes/s). {} runs, interleaved; medians, with each run in brackets.\n\n",
        args.shards,
        args.connections,
        args.bytes >> 20,
        args.partitions,
        args.runs
    ));
    out.push_str("## Machine\n\n");
    out.push_str(&machine.markdown());
    out.push_str("\n## Throughput\n\n| protocol | produce MB/s | consume MB/s |\n|---|---|---|\n");
    let of = |protocol: &str, f: fn(&Sample) -> f64| -> (f64, Vec<f64>) {
        let values: Vec<f64> = samples.iter().filter(|s| s.protocol == protocol).map(f).collect();
        (median(values.clone()), values)
    };
    for protocol in ["native", "kafka"] {
        let (produce, produce_runs) = of(protocol, |s| s.produce_mb_per_s);
        let (consume, consume_runs) = of(protocol, |s| s.consume_mb_per_s);
        out.push_str(&format!(
            "| {protocol} | {produce:.0} {produce_runs:.0?} | {consume:.0} {consume_runs:.0?} |\n"
        ));
    }
    let ratio = |f: fn(&Sample) -> f64| of("kafka", f).0 / of("native", f).0 * 100.0;
    out.push_str(&format!(
        "\nKafka path: produce {:.0}% and consume {:.0}% of the native path (aim: 70% or more).\n",
        ratio(|s| s.produce_mb_per_s),
        ratio(|s| s.consume_mb_per_s)
    ));
    out
}
