//! What the end-to-end tests share: a real `corelog` process on a port it
//! picks, an executor with a deadline, batches and a reader of partitions.
#![allow(dead_code)] // each test binary uses its own part of this

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use net::client::Connection;
use net::messages::EARLIEST_TIMESTAMP;
use storage::batch::{self, RecordBatchBuilder};

/// A broker process; killed (SIGKILL) when dropped.
pub struct Broker {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    pub addr: String,
    /// The Kafka listener's address.
    pub kafka_addr: String,
    /// The metrics and health listener's address (`/metrics`,
    /// `/v1/status/ready`).
    pub metrics_addr: String,
}

impl Broker {
    pub fn start(data_dir: &Path, shards: usize) -> Broker {
        Broker::start_with_config(data_dir, shards, "")
    }

    /// A broker with these lines of TOML configuration (broker/src/config.rs).
    pub fn start_with_config(data_dir: &Path, shards: usize, config: &str) -> Broker {
        Broker::start_at(data_dir, shards, config, "127.0.0.1:0", "127.0.0.1:0")
    }

    /// A broker listening at the addresses given (port 0: any), as a node
    /// started again keeps its ports for clients that knew them.
    pub fn start_at(data_dir: &Path, shards: usize, config: &str, listen: &str, kafka_listen: &str) -> Broker {
        let config_file = data_dir.with_extension("toml");
        std::fs::write(&config_file, config).expect("write the broker's config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_corelog"))
            .args([
                "serve",
                "--listen",
                listen,
                "--kafka-listen",
                kafka_listen,
                "--metrics-listen",
                "127.0.0.1:0",
                "--shards",
                &shards.to_string(),
                "--data-dir",
            ])
            .arg(data_dir)
            .arg("--config")
            .arg(&config_file)
            .env(
                "RUST_LOG",
                std::env::var("BROKER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            // A file, not the test's stderr: a broker orphaned by a killed
            // test must not hold the test runner's output open.
            .stderr(std::fs::File::create(data_dir.with_extension("log")).expect("broker log file"))
            .spawn()
            .expect("the corelog binary starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let log = data_dir.with_extension("log");
        let mut read = |prefix: &str| {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("the broker reports its addresses");
            line.trim()
                .strip_prefix(prefix)
                .unwrap_or_else(|| {
                    let said = std::fs::read_to_string(&log).unwrap_or_default();
                    panic!("unexpected line {line:?}, expected {prefix:?}; the broker's log:\n{said}")
                })
                .to_string()
        };
        let addr = read("corelog listening on ");
        let kafka_addr = read("corelog kafka listening on ");
        // A node of a cluster says where its internal listener is first.
        let mut metrics_addr = read("corelog ");
        if let Some(rpc) = metrics_addr.strip_prefix("rpc listening on ") {
            assert!(!rpc.is_empty());
            metrics_addr = read("corelog ");
        }
        let metrics_addr = metrics_addr
            .strip_prefix("metrics listening on ")
            .unwrap_or_else(|| panic!("expected the metrics listener, got {metrics_addr:?}"))
            .to_string();
        Broker {
            child,
            stdout,
            addr,
            kafka_addr,
            metrics_addr,
        }
    }

    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(self) {
        self.stop_with_stats();
    }

    /// SIGTERM, a clean exit, and the counters each shard printed as it
    /// stopped (`corelog shard stats:`), one map per shard.
    pub fn stop_with_stats(mut self) -> Vec<std::collections::BTreeMap<String, u64>> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        let status = self.child.wait().expect("reaped");
        assert!(status.success(), "clean shutdown, got {status}");
        let mut shards = Vec::new();
        let mut line = String::new();
        while self.stdout.read_line(&mut line).is_ok_and(|n| n > 0) {
            if let Some(fields) = line.trim().strip_prefix("corelog shard stats: ") {
                shards.push(
                    fields
                        .split_whitespace()
                        .filter_map(|f| f.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.parse().expect("a counter")))
                        .collect(),
                );
            }
            line.clear();
        }
        shards
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().expect("status").is_none(),
            "the broker is still running"
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Longest a test's client work may take: a broker that stops answering
/// fails the test (and its Drop kills the broker) instead of hanging the run.
pub const TEST_DEADLINE: Duration = Duration::from_secs(120);

pub fn run<T>(future: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .make()
        .expect("executor")
        .run(async move {
            let work = std::pin::pin!(future);
            let deadline = std::pin::pin!(glommio::timer::sleep(TEST_DEADLINE));
            match futures::future::select(work, deadline).await {
                futures::future::Either::Left((value, _)) => value,
                futures::future::Either::Right(_) => panic!("the broker did not answer within {TEST_DEADLINE:?}"),
            }
        })
}

pub fn data_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir on disk")
}

/// A batch of records `<partition>:<n>` for n in `range`.
pub fn batch_of(partition: u32, range: std::ops::Range<u64>) -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new();
    for n in range {
        builder.push(
            1_700_000_000_000,
            None,
            Some(format!("{partition}:{n}").as_bytes()),
            vec![],
        );
    }
    builder.build()
}

/// Every record value of a partition, read from the start.
pub async fn consume_all(connection: &mut Connection, topic: &str, partition: u32) -> Vec<String> {
    let mut values = Vec::new();
    let mut next = connection
        .list_offset(topic, partition, EARLIEST_TIMESTAMP)
        .await
        .unwrap()
        .unwrap();
    loop {
        let fetched = connection.fetch(topic, partition, next, 1 << 20, 0).await.unwrap();
        if fetched.batches().is_empty() {
            assert_eq!(next, fetched.high_watermark);
            return values;
        }
        for frame in batch::frames(fetched.batches()) {
            let info = batch::verify_crc(frame).unwrap();
            if info.is_control() {
                next = info.next_offset().0;
                continue;
            }
            for record in batch::access(frame).unwrap().records.iter() {
                let offset = info.base_offset.0 + u64::from(record.offset_delta.to_native());
                if offset >= next {
                    values.push(String::from_utf8(record.value.as_ref().unwrap().to_vec()).unwrap());
                }
            }
            next = info.next_offset().0;
        }
    }
}

/// One Kafka request on a connection of its own, and its decoded answer:
/// what a test needs to see a single field no client shows.
pub fn kafka_call<Q, R>(addr: &str, api: net::kafka::kafka_protocol::messages::ApiKey, version: i16, request: &Q) -> R
where
    Q: net::kafka::kafka_protocol::protocol::Encodable,
    R: net::kafka::kafka_protocol::protocol::Decodable,
{
    use bytes::BytesMut;
    use net::kafka::kafka_protocol::messages::{RequestHeader, ResponseHeader};
    use net::kafka::kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use std::io::{Read, Write};

    let mut stream = std::net::TcpStream::connect(addr).expect("the Kafka listener takes a connection");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("test")))
        .encode(&mut out, api.request_header_version(version))
        .unwrap();
    request.encode(&mut out, version).unwrap();
    let mut frame = (out.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&out);
    stream.write_all(&frame).unwrap();
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).expect("an answer");
    let mut body = vec![0u8; i32::from_be_bytes(length) as usize];
    stream.read_exact(&mut body).expect("the whole answer");
    let mut body = bytes::Bytes::from(body);
    ResponseHeader::decode(&mut body, api.response_header_version(version)).unwrap();
    R::decode(&mut body, version).unwrap()
}

/// Whether `program --version`-like probing finds the tool; under CI a
/// missing tool fails the test.
pub fn available(what: &str, probe: &mut Command) -> bool {
    let found = probe
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{what} is missing; .ci/run installs it"
        );
        eprintln!("skipped: {what} is not installed (.ci/run installs it)");
    }
    found
}

/// `GET path` on `addr`: the status code and the body.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    try_get(addr, path).expect("the listener answers")
}

/// `GET path` on `addr`, None if it does not answer (yet).
pub fn try_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The sum of every series of `name` carrying `labels`, None if there is
/// none.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
        if series_name != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.parse::<f64>().expect("a number");
        }
    }
    found
}
