//! What a node shows Prometheus and health checkers on `metrics_listen`:
//! `/metrics` (Prometheus's text exposition) and `/v1/status/ready`.
//!
//! Every counter lives on the shard that moves it, as a plain `Cell` or a
//! shard-local histogram: nothing atomic, no lock on the hot path. A scrape
//! asks each shard, through its inbox, for its samples
//! (`Shard::metric_samples`), and encodes them here with prometheus-client,
//! on the listener's own thread. A shard that does not answer within
//! `SCRAPE_WAIT` is left out of that scrape (and counted in
//! `corelog_scrape_shards_missing`) rather than holding it. A consumer
//! group's lag joins two shards' samples (its commit, on the group's
//! coordinator; the high watermark, on the partition's owner), so it is
//! computed here.
//!
//! The listener is a small HTTP/1.1 responder on one thread: one request a
//! connection, one connection at a time, the request head bounded and timed
//! out. Scrapes and health checks need no more, and nothing a client of it
//! sends reaches a shard but the ask for samples.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use crate::shard::ShardMessage;
use crate::stalls::StallLog;

/// Longest a scrape waits for a shard's samples.
pub const SCRAPE_WAIT: Duration = Duration::from_secs(2);
/// Longest a client of the listener may take to send its request head, and
/// the most bytes it may hold.
const REQUEST_WAIT: Duration = Duration::from_secs(5);
const REQUEST_HEAD_BYTES_MAX: usize = 8 << 10;

/// Latency histograms' bucket bounds, in seconds: 50 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric's name, help and type. Counters are named without `_total`,
/// which the encoding adds.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Counter(f64),
    Gauge(f64),
    /// Each bucket's own count (not cumulative), by upper bound; the
    /// count above the last bound is `count` less their sum.
    Histogram {
        sum: f64,
        count: u64,
        buckets: Vec<(f64, u64)>,
    },
}

/// One series' value, with its labels.
#[derive(Clone, Debug)]
pub struct Sample {
    pub family: &'static Family,
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

impl Sample {
    pub fn new(family: &'static Family, labels: Vec<(&'static str, String)>, value: Value) -> Sample {
        debug_assert_eq!(
            family.kind,
            match value {
                Value::Counter(_) => Kind::Counter,
                Value::Gauge(_) => Kind::Gauge,
                Value::Histogram { .. } => Kind::Histogram,
            },
            "{}: a value of another type",
            family.name
        );
        Sample { family, labels, value }
    }

    fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

/// A shard-local latency histogram (µs) as Prometheus buckets.
pub fn histogram(latencies: &hdrhistogram::Histogram<u64>) -> Value {
    let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len());
    let mut below = 0;
    for bound in LATENCY_BUCKETS {
        let through = latencies.count_between(0, (bound * 1e6) as u64);
        buckets.push((bound, through - below));
        below = through;
    }
    Value::Histogram {
        sum: latencies.mean() * latencies.len() as f64 / 1e6,
        count: latencies.len(),
        buckets,
    }
}

/// `family!(STATIC, "name", Kind, "help")`: a metric family as a static.
macro_rules! family {
    ($static:ident, $name:literal, $kind:ident, $help:literal) => {
        pub static $static: $crate::metrics::Family = $crate::metrics::Family {
            name: $name,
            help: $help,
            kind: $crate::metrics::Kind::$kind,
        };
    };
}
pub(crate) use family;

family!(
    SCRAPE_SHARDS_MISSING,
    "corelog_scrape_shards_missing",
    Gauge,
    "Shards that did not answer this scrape in time (their samples are missing from it)."
);
family!(
    CONSUMER_GROUP_LAG,
    "corelog_consumer_group_lag",
    Gauge,
    "Records between a consumer group's committed offset and the partition's high watermark."
);
family!(
    STALLS,
    "corelog_shard_stalls",
    Counter,
    "Times a shard's task ran past its quota without yielding (stall_threshold_us)."
);
family!(
    READY,
    "corelog_ready",
    Gauge,
    "1 while the node serves (every owned partition open, listeners up), 0 before and while it stops."
);

/// Where the node is in its life, for `/v1/status/ready`.
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const STOPPING: u8 = 2;

impl Health {
    pub fn serving(&self) {
        let _ = self
            .0
            .compare_exchange(STARTING, SERVING, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn stopping(&self) {
        self.0.store(STOPPING, Ordering::Release);
    }

    fn state(&self) -> &'static str {
        match self.0.load(Ordering::Acquire) {
            STARTING => "starting",
            SERVING => "ready",
            _ => "stopping",
        }
    }
}

/// Serves `listener` on a thread of its own until the process ends.
pub fn spawn(
    listener: TcpListener,
    inboxes: Arc<Vec<flume::Sender<ShardMessage>>>,
    health: Arc<Health>,
    stalls: Vec<Arc<Mutex<StallLog>>>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Err(error) = answer(stream, &inboxes, &health, &stalls) {
                    tracing::debug!(%error, "metrics listener: a request ended");
                }
            }
        })
        .map(|_| ())
}

fn answer(
    mut stream: TcpStream,
    inboxes: &[flume::Sender<ShardMessage>],
    health: &Health,
    stalls: &[Arc<Mutex<StallLog>>],
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_WAIT))?;
    stream.set_write_timeout(Some(REQUEST_WAIT))?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // One connection at a time: a client trickling its head is cut off
    // after REQUEST_WAIT in all, not per read.
    let started = Instant::now();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if started.elapsed() > REQUEST_WAIT {
            return respond(
                &mut stream,
                "408 Request Timeout",
                "text/plain",
                "request head too slow\n",
            );
        }
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..read]);
        if head.len() > REQUEST_HEAD_BYTES_MAX {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "head too large\n",
            );
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let path = path.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => {
            let body = scrape(inboxes, health, stalls);
            respond(
                &mut stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &body,
            )
        }
        ("GET", "/v1/status/ready") => match health.state() {
            "ready" => respond(&mut stream, "200 OK", "text/plain", "ready\n"),
            state => respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                &format!("{state}\n"),
            ),
        },
        ("GET", _) => respond(&mut stream, "404 Not Found", "text/plain", "not found\n"),
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", "GET only\n"),
    }
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// Every shard's samples and what is joined from them, encoded.
pub fn scrape(inboxes: &[flume::Sender<ShardMessage>], health: &Health, stalls: &[Arc<Mutex<StallLog>>]) -> String {
    let (tx, rx) = flume::bounded(inboxes.len());
    let mut asked = 0;
    for inbox in inboxes {
        if inbox.try_send(ShardMessage::Metrics { reply: tx.clone() }).is_ok() {
            asked += 1;
        }
    }
    drop(tx);
    let deadline = Instant::now() + SCRAPE_WAIT;
    let mut samples = Vec::new();
    let mut answered = 0;
    while answered < asked {
        match rx.recv_deadline(deadline) {
            Ok(shard) => {
                samples.extend(shard);
                answered += 1;
            }
            Err(_) => break,
        }
    }
    samples.push(Sample::new(
        &SCRAPE_SHARDS_MISSING,
        Vec::new(),
        Value::Gauge((inboxes.len() - answered) as f64),
    ));
    samples.push(Sample::new(
        &READY,
        Vec::new(),
        Value::Gauge(f64::from(u8::from(health.state() == "ready"))),
    ));
    for (shard, log) in stalls.iter().enumerate() {
        let count = log.lock().map_or(0, |log| log.count);
        samples.push(Sample::new(
            &STALLS,
            vec![("shard", shard.to_string())],
            Value::Counter(count as f64),
        ));
    }
    samples.extend(lags(&samples));
    encode(samples)
}

/// Each group's lag on each partition it committed: the partition's high
/// watermark (`corelog_partition_high_watermark`) less its commit
/// (`corelog_consumer_group_committed_offset`), at least 0.
fn lags(samples: &[Sample]) -> Vec<Sample> {
    let mut high_watermarks = BTreeMap::new();
    for sample in samples
        .iter()
        .filter(|s| s.family.name == crate::shard::metrics::HIGH_WATERMARK.name)
    {
        if let (Some(topic), Some(partition), Value::Gauge(hw)) =
            (sample.label("topic"), sample.label("partition"), &sample.value)
        {
            high_watermarks.insert((topic, partition), *hw);
        }
    }
    samples
        .iter()
        .filter(|s| s.family.name == crate::shard::metrics::GROUP_COMMITTED.name)
        .filter_map(|sample| {
            let (group, topic, partition) = (
                sample.label("group")?,
                sample.label("topic")?,
                sample.label("partition")?,
            );
            let Value::Gauge(committed) = sample.value else {
                return None;
            };
            let hw = high_watermarks.get(&(topic, partition))?;
            Some(Sample::new(
                &CONSUMER_GROUP_LAG,
                vec![
                    ("group", group.to_string()),
                    ("topic", topic.to_string()),
                    ("partition", partition.to_string()),
                ],
                Value::Gauge((hw - committed).max(0.0)),
            ))
        })
        .collect()
}

/// The samples, grouped by family, in Prometheus's text format.
pub fn encode(samples: Vec<Sample>) -> String {
    let mut families: BTreeMap<&'static str, (&'static Family, Vec<Sample>)> = BTreeMap::new();
    for sample in samples {
        families
            .entry(sample.family.name)
            .or_insert_with(|| (sample.family, Vec::new()))
            .1
            .push(sample);
    }
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Scraped(families.into_values().collect())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("encoding into a String cannot fail");
    out
}

/// A label value as the text format needs it: backslash, double quote and
/// line feed escaped.
fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[derive(Debug)]
struct Scraped(Vec<(&'static Family, Vec<Sample>)>);

impl prometheus_client::collector::Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (family, samples) in &self.0 {
            let kind = match family.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Histogram => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            for sample in samples {
                // prometheus-client 0.22 writes label values as given: a
                // group id may hold any character.
                let labels: Vec<(&str, String)> = sample.labels.iter().map(|(k, v)| (*k, escape(v))).collect();
                let mut series = metric.encode_family(&labels)?;
                match &sample.value {
                    Value::Counter(value) => {
                        series.encode_counter::<(), _, f64>(value, None)?;
                    }
                    Value::Gauge(value) => series.encode_gauge(value)?,
                    Value::Histogram { sum, count, buckets } => {
                        let inf = count - buckets.iter().map(|(_, n)| n).sum::<u64>();
                        let mut all = buckets.clone();
                        all.push((f64::MAX, inf));
                        series.encode_histogram::<()>(*sum, *count, &all, None)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static REQUESTS: Family = Family {
        name: "test_requests",
        help: "Requests.",
        kind: Kind::Counter,
    };
    static LATENCY: Family = Family {
        name: "test_latency_seconds",
        help: "Latency.",
        kind: Kind::Histogram,
    };

    #[test]
    fn samples_encode_by_family_with_labels_and_buckets() {
        let mut latencies = hdrhistogram::Histogram::<u64>::new_with_max(60_000_000, 3).unwrap();
        for us in [80, 90, 2_000, 30_000_000] {
            latencies.record(us).unwrap();
        }
        let text = encode(vec![
            Sample::new(
                &REQUESTS,
                vec![("shard", "0".into()), ("api", "Produce".into())],
                Value::Counter(3.0),
            ),
            Sample::new(&LATENCY, vec![("shard", "0".into())], histogram(&latencies)),
            Sample::new(
                &REQUESTS,
                vec![("shard", "1".into()), ("api", "Fetch \"x\"".into())],
                Value::Counter(4.0),
            ),
        ]);
        assert_eq!(text.matches("# TYPE test_requests counter").count(), 1, "{text}");
        assert!(
            text.contains("test_requests_total{shard=\"0\",api=\"Produce\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("api=\"Fetch \\\"x\\\"\""),
            "label values are escaped: {text}"
        );
        assert!(
            text.contains("test_latency_seconds_bucket{le=\"0.0001\",shard=\"0\"} 2")
                || text.contains("test_latency_seconds_bucket{shard=\"0\",le=\"0.0001\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("le=\"+Inf\"") && text.contains("test_latency_seconds_count{shard=\"0\"} 4"),
            "{text}"
        );
    }

    #[test]
    fn readiness_is_starting_then_ready_then_stopping_for_good() {
        let health = Health::default();
        assert_eq!(health.state(), "starting");
        health.serving();
        assert_eq!(health.state(), "ready");
        health.stopping();
        health.serving();
        assert_eq!(health.state(), "stopping", "a stopping node never serves again");
    }

    #[test]
    fn a_groups_lag_is_the_high_watermark_less_its_commit() {
        use crate::shard::metrics::{GROUP_COMMITTED, HIGH_WATERMARK};
        let partition = |p: &str| vec![("topic", "t".to_string()), ("partition", p.to_string())];
        let mut committed = partition("0");
        committed.insert(0, ("group", "g".into()));
        let mut ahead = partition("1");
        ahead.insert(0, ("group", "g".into()));
        let samples = vec![
            Sample::new(&HIGH_WATERMARK, partition("0"), Value::Gauge(100.0)),
            Sample::new(&HIGH_WATERMARK, partition("1"), Value::Gauge(5.0)),
            Sample::new(&GROUP_COMMITTED, committed, Value::Gauge(60.0)),
            Sample::new(&GROUP_COMMITTED, ahead, Value::Gauge(9.0)),
        ];
        let lags: Vec<(Option<&str>, f64)> = lags(&samples)
            .iter()
            .map(|s| match s.value {
                Value::Gauge(v) => (s.label("partition").map(|p| if p == "0" { "0" } else { "1" }), v),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(lags, vec![(Some("0"), 40.0), (Some("1"), 0.0)]);
    }
}
