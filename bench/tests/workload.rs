//! The workload harness end to end: `corelog-bench run` starts a real
//! `corelog` broker and drives it through each protocol, and every record
//! produced must come back to the consumers.

use std::path::Path;
use std::process::Command;

fn run_workload(dir: &Path, protocol: &str) -> serde_json::Value {
    let preset = dir.join("tiny.toml");
    std::fs::write(
        &preset,
        r#"name = "tiny"
description = "A few seconds of a fixed rate, produced and consumed."
partitions = 3
shards = 1
producers = 2
consumers = 2
message_bytes = 256
batch_bytes = 4096
acks = "all"
rate = "20000"
warmup_s = 0.0
duration_s = 2.0
"#,
    )
    .unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_corelog-bench"))
        .arg("run")
        .arg(&preset)
        .args(["--protocol", protocol, "--no-limits", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--report-dir")
        .arg(dir.join("reports"))
        .status()
        .unwrap();
    assert!(status.success(), "corelog-bench run --protocol {protocol}: {status}");
    let stem = if protocol == "kafka" { "tiny-kafka" } else { "tiny" };
    let report = std::fs::read_to_string(dir.join("reports").join(format!("{stem}.md"))).unwrap();
    assert!(report.contains(&format!("--protocol {protocol}")) || protocol == "native");
    serde_json::from_str(&std::fs::read_to_string(dir.join("reports").join(format!("{stem}.json"))).unwrap()).unwrap()
}

#[test]
fn a_workload_runs_through_the_native_protocol_and_the_kafka_listener() {
    let dir = tempfile::tempdir().unwrap();
    for protocol in ["native", "kafka"] {
        let report = run_workload(dir.path(), protocol);
        let outcome = &report["outcome"];
        let produced = outcome["produced_bytes"].as_u64().unwrap();
        let consumed = outcome["consumed_bytes"].as_u64().unwrap();
        assert!(produced > 0, "{protocol}: nothing produced: {outcome}");
        // 20000 records/s for 2 s, all of it measured (no warm-up).
        assert!(
            produced >= 10_000 * 256,
            "{protocol}: {produced} bytes produced at a fixed rate of 20000 records/s"
        );
        assert_eq!(consumed, produced, "{protocol}: every record produced was consumed");
        assert!(outcome["end_to_end"]["count"].as_u64().unwrap() > 0, "{protocol}");
        assert_eq!(report["workload"]["protocol"], protocol);
    }
}
