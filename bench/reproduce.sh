#!/usr/bin/env bash
# Regenerates every report in perf-reports/ on this machine: the storage and
# broker benchmarks, the workload presets and the sweeps that tuning.md
# cites. About 25 minutes on a 2-core machine; run it on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p corelog -p corelog-bench
bench=target/release/corelog-bench

$bench storage
$bench broker
for preset in bench/workloads/*.toml; do
    $bench run "$preset"
done

sweep="$bench sweep bench/workloads/max-produce-1k.toml"
$sweep --param shards=1,2 --param partitions_per_shard=1,4
$sweep --param shards=1,2
$sweep --param partitions=1,2,4,8
$sweep --param batch_bytes=4096,16384,65536,262144,524288
$sweep --param acks=1,all
$sweep --param topic.flush.ms=1,10,100,1000
# Kafka's protocol against the native one, same workloads, same broker.
$sweep --param protocol=native,kafka
$bench sweep bench/workloads/produce-consume.toml --param protocol=native,kafka
$bench sweep bench/workloads/catch-up-read.toml --param protocol=native,kafka
$bench sweep bench/workloads/half-rate-latency.toml --param broker.spin_before_park_us=0,50,200,1000
$bench run bench/workloads/half-rate-latency.toml --protocol kafka
# Durability: zeroing ahead and spinning under acks=all.
$bench sweep bench/workloads/half-rate-acks-all.toml --param topic.segment.zero.ahead.bytes=0,4194304
$bench sweep bench/workloads/half-rate-acks-all.toml --param broker.spin_before_park_us=0,50
$sweep --param message_bytes=128,1024
# The read path: read-ahead, and the registered memory it reads into.
$bench sweep bench/workloads/catch-up-read.toml --param topic.read.ahead.bytes=0,8388608
$bench sweep bench/workloads/catch-up-read.toml --param broker.io_memory_bytes=33554432,134217728
$bench kafka
$bench index
