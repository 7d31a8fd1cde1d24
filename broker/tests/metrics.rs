//! The metrics and health endpoint of a real broker: what `/metrics` says
//! after known traffic (Kafka clients producing and committing, a request
//! refused), and what a real Prometheus scraping it under load answers.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn kafka_python() -> bool {
    available("kafka-python", Command::new("python3").args(["-c", "import kafka"]))
}

fn metered(bootstrap: &str, args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka_clients/clients.py");
    let output = Command::new("python3")
        .args([script, "metered", bootstrap])
        .args(args)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && stdout.contains("ok"),
        "the metered scenario failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A Kafka Metadata request (v1) for a topic that does not exist, over a
/// raw socket: answered UNKNOWN_TOPIC_OR_PARTITION.
fn ask_for_an_absent_topic(kafka_addr: &str) {
    use bytes::BytesMut;
    use net::kafka::kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use net::kafka::kafka_protocol::messages::{ApiKey, MetadataRequest, RequestHeader, TopicName};
    use net::kafka::kafka_protocol::protocol::{Encodable, StrBytes};
    let mut out = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::Metadata as i16)
        .with_request_api_version(1)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("metrics-test")))
        .encode(&mut out, 1)
        .unwrap();
    MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_static_str("absent"))))
        ]))
        .encode(&mut out, 1)
        .unwrap();
    let mut stream = TcpStream::connect(kafka_addr).unwrap();
    let mut frame = (out.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&out);
    stream.write_all(&frame).unwrap();
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(length) as usize];
    stream.read_exact(&mut body).unwrap();
}

#[test]
fn metrics_show_what_clients_produced_committed_and_were_refused() {
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    assert_eq!(
        get(&broker.metrics_addr, "/v1/status/ready"),
        (200, "ready\n".to_string())
    );
    assert_eq!(get(&broker.metrics_addr, "/nowhere").0, 404);
    // A client that sends half a request head and stalls holds the
    // listener (one connection at a time) for its timeout, no longer.
    let mut stalled = TcpStream::connect(&broker.metrics_addr).unwrap();
    stalled.write_all(b"GET /metr").unwrap();
    let asked = Instant::now();
    assert_eq!(get(&broker.metrics_addr, "/v1/status/ready").0, 200);
    assert!(asked.elapsed() < Duration::from_secs(8), "{:?}", asked.elapsed());
    drop(stalled);
    let (status, text) = get(&broker.metrics_addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "corelog_ready", &[]), Some(1.0));
    assert_eq!(metric(&text, "corelog_scrape_shards_missing", &[]), Some(0.0));
    for shard in ["0", "1"] {
        assert!(
            metric(&text, "corelog_shard_cpu_seconds_total", &[("shard", shard)]).is_some(),
            "{text}"
        );
    }
    if !kafka_python() {
        return;
    }
    metered(&broker.kafka_addr, &[]);
    ask_for_an_absent_topic(&broker.kafka_addr);

    let (_, text) = get(&broker.metrics_addr, "/metrics");
    let topic = |partition: &'static str| [("topic", "metered"), ("partition", partition)];
    assert_eq!(
        metric(&text, "corelog_partition_log_end_offset", &topic("0")),
        Some(300.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "corelog_partition_log_end_offset", &topic("1")),
        Some(200.0)
    );
    assert_eq!(
        metric(&text, "corelog_partition_high_watermark", &topic("0")),
        Some(300.0)
    );
    assert_eq!(
        metric(&text, "corelog_partition_log_start_offset", &topic("0")),
        Some(0.0)
    );
    assert!(metric(&text, "corelog_partition_size_bytes", &topic("0")).is_some_and(|b| b > 0.0));
    assert_eq!(metric(&text, "corelog_partition_segments", &topic("1")), Some(1.0));
    let group = [("group", "meter"), ("topic", "metered"), ("partition", "0")];
    assert_eq!(
        metric(&text, "corelog_consumer_group_committed_offset", &group),
        Some(100.0)
    );
    assert_eq!(metric(&text, "corelog_consumer_group_lag", &group), Some(200.0));
    assert!(metric(&text, "corelog_records_appended_total", &[]).is_some_and(|r| r >= 500.0));
    let produces = metric(&text, "corelog_kafka_requests_total", &[("api", "Produce")]).expect("produces counted");
    assert!(produces >= 1.0);
    assert_eq!(
        metric(
            &text,
            "corelog_kafka_request_duration_seconds_count",
            &[("api", "Produce")]
        ),
        Some(produces),
        "every produce timed"
    );
    assert_eq!(
        metric(
            &text,
            "corelog_kafka_errors_total",
            &[("api", "Metadata"), ("error", "UnknownTopicOrPartition")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric(&text, "corelog_kafka_errors_total", &[("api", "Produce")]), None);
    assert!(metric(&text, "corelog_bytes_received_total", &[]).is_some_and(|b| b > 500.0));
    assert!(metric(&text, "corelog_log_fdatasyncs_total", &[]).is_some_and(|f| f >= 1.0));

    // Every metric the shipped Grafana dashboard plots is one the broker
    // exports (those of replicated partitions only in a cluster).
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/corelog.json"))
        .expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut plotted = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expression");
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("corelog_"))
            {
                plotted += 1;
                let family = ["_bucket", "_total"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(name);
                if family == "corelog_partition_leader_changes" {
                    continue;
                }
                assert!(
                    text.contains(&format!("# TYPE {family} ")),
                    "the dashboard plots {name}, which /metrics does not have"
                );
            }
        }
    }
    assert!(plotted >= 18);
    broker.stop();
}

/// A process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// An instant query to Prometheus's HTTP API: its one value, None while it
/// has none.
fn query(prometheus: &str, promql: &str) -> Option<f64> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = try_get(prometheus, &format!("/api/v1/query?query={encoded}"))?;
    if status != 200 {
        return None;
    }
    let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
    answer["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// A real Prometheus scrapes the broker every second while kafka-python
/// produces at a known rate and a group commits half of it: its queries
/// of the produce rate, the partition's end and the group's lag answer
/// what was produced.
#[test]
fn prometheus_sees_the_produce_rate_and_a_groups_lag() {
    const RATE: u32 = 200;
    const SECONDS: u32 = 8;
    if !available("prometheus", Command::new("prometheus").arg("--version")) || !kafka_python() {
        return;
    }
    let dir = data_dir();
    let broker = Broker::start(dir.path(), 2);
    let config = dir.path().with_extension("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: corelog\n    static_configs:\n      - targets: ['{}']\n",
            broker.metrics_addr
        ),
    )
    .unwrap();
    let web = free_addr();
    let tsdb = data_dir();
    let _prometheus = Process(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.path().display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let started = Instant::now();
    while query(&web, "up{job=\"corelog\"}") != Some(1.0) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "prometheus never scraped corelog"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let said = metered(&broker.kafka_addr, &[&RATE.to_string(), &SECONDS.to_string()]);
    let sent: f64 = said
        .lines()
        .find_map(|l| l.strip_prefix("sent "))
        .and_then(|n| n.parse().ok())
        .expect("the scenario says what it sent");
    // Two more scrapes after the commit.
    std::thread::sleep(Duration::from_secs(3));
    let end = query(
        &web,
        "corelog_partition_log_end_offset{topic=\"metered\",partition=\"0\"}",
    );
    assert_eq!(end, Some(sent));
    let lag = query(
        &web,
        "corelog_consumer_group_lag{group=\"meter\",topic=\"metered\",partition=\"0\"}",
    );
    assert_eq!(lag, Some(sent - (sent / 2.0).floor()));
    // The rate over the load, as a dashboard would plot it: its peak within
    // a factor of two of what was offered (scrapes a second apart).
    let peak = query(
        &web,
        "max_over_time(sum(rate(corelog_records_appended_total[3s]))[30s:1s])",
    )
    .expect("a rate");
    assert!(
        peak > f64::from(RATE) / 2.0 && peak < f64::from(RATE) * 2.0,
        "peak produce rate {peak}/s for {RATE}/s offered"
    );
    broker.stop();
}
