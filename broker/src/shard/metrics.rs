//! A shard's samples for a scrape (`crate::metrics`): its own counters and
//! histograms (`ShardStats`), each partition it owns, its Raft groups, the
//! commits of the groups it coordinates, and its thread's CPU time. Read on
//! the shard's own thread, when a scrape asks: the hot path only bumps
//! cells.

use crate::metrics::{family, histogram, Sample, Value};

use super::Shard;

family!(
    REQUESTS,
    "corelog_requests",
    Counter,
    "Requests read on the shard's connections, either protocol."
);
family!(
    KAFKA_REQUESTS,
    "corelog_kafka_requests",
    Counter,
    "Kafka requests served by the shard, by API."
);
family!(
    KAFKA_ERRORS,
    "corelog_kafka_errors",
    Counter,
    "Error codes in the shard's Kafka responses (top level and per partition), by API and error."
);
family!(
    KAFKA_LATENCY,
    "corelog_kafka_request_duration_seconds",
    Histogram,
    "From a Kafka request read whole to its response ready, by API."
);
family!(
    REQUEST_WAIT,
    "corelog_native_request_wait_seconds",
    Histogram,
    "How long a native request read whole waited before its handler ran."
);
family!(
    PRODUCE_SERVICE,
    "corelog_produce_service_seconds",
    Histogram,
    "A produce (either protocol) from its handler starting to its response ready: append, flush, hop, replication."
);
family!(
    DURABLE_WAIT,
    "corelog_produce_durable_wait_seconds",
    Histogram,
    "The share of an acks=all produce spent waiting for its batches to be durable."
);
family!(
    BYTES_RECEIVED,
    "corelog_bytes_received",
    Counter,
    "Request bytes read on the shard's Kafka connections."
);
family!(
    BYTES_SENT,
    "corelog_bytes_sent",
    Counter,
    "Response bytes written on the shard's Kafka connections."
);
family!(
    CLEANER_BYTES,
    "corelog_log_cleaner_bytes",
    Counter,
    "Bytes of sealed segments the shard's log cleaner rewrote, before and after (label stage)."
);
family!(
    CLEANER_REMOVED,
    "corelog_log_cleaner_removed_records",
    Counter,
    "Records the shard's log cleaner dropped: superseded by a later record of their key, or tombstones past delete.retention.ms."
);
family!(
    RECORDS_APPENDED,
    "corelog_records_appended",
    Counter,
    "Records appended to the logs the shard owns."
);
family!(
    PARTITION_REQUESTS,
    "corelog_partition_requests",
    Counter,
    "Partition produces and fetches the shard's connections asked for, served on the shard or hopped to the owner."
);
family!(
    CROSS_SHARD,
    "corelog_cross_shard_requests",
    Counter,
    "Requests of any kind the shard sent to another shard."
);
family!(
    CONNECTIONS,
    "corelog_connections",
    Gauge,
    "Client connections open on the shard."
);
family!(
    LOG_FLUSHES,
    "corelog_log_fdatasyncs",
    Counter,
    "fdatasync calls of the shard's partition logs."
);
family!(
    LOG_SYNC_TIME,
    "corelog_log_fdatasync_seconds",
    Counter,
    "Time the shard's partition logs spent in fdatasync."
);
family!(
    LOG_WRITTEN,
    "corelog_log_written_bytes",
    Counter,
    "Bytes the shard's partition logs wrote to disk."
);
family!(
    CACHE_HITS,
    "corelog_batch_cache_hits",
    Counter,
    "Reads the shard's batch cache served."
);
family!(
    CACHE_MISSES,
    "corelog_batch_cache_misses",
    Counter,
    "Reads the shard's batch cache could not serve."
);
family!(
    ALLOCATIONS,
    "corelog_shard_allocations",
    Counter,
    "Heap allocations made on the shard's thread."
);
family!(
    CPU,
    "corelog_shard_cpu_seconds",
    Counter,
    "CPU time of the shard's thread (its reactor's busy time)."
);
family!(
    RUNQUEUE_WAIT,
    "corelog_shard_runqueue_wait_seconds",
    Counter,
    "Time the shard's thread was runnable but waited for its core."
);
family!(
    LOG_START,
    "corelog_partition_log_start_offset",
    Gauge,
    "A partition's log start offset."
);
family!(
    LOG_END,
    "corelog_partition_log_end_offset",
    Gauge,
    "A partition's log end offset."
);
family!(
    HIGH_WATERMARK,
    "corelog_partition_high_watermark",
    Gauge,
    "A partition's high watermark: what consumers may read up to."
);
family!(
    PARTITION_SIZE,
    "corelog_partition_size_bytes",
    Gauge,
    "Bytes of a partition's segments."
);
family!(
    PARTITION_SEGMENTS,
    "corelog_partition_segments",
    Gauge,
    "A partition's segments."
);
family!(
    LEADER,
    "corelog_partition_leader",
    Gauge,
    "1 where this node's replica leads the partition."
);
family!(
    LEADER_EPOCH,
    "corelog_partition_leader_epoch",
    Gauge,
    "A replicated partition's leader epoch (Raft term)."
);
family!(
    IN_SYNC,
    "corelog_partition_in_sync_replicas",
    Gauge,
    "Replicas in sync with the leader (on the leader)."
);
family!(
    LEADER_CHANGES,
    "corelog_partition_leader_changes",
    Counter,
    "Leadership or term changes this node's replica saw."
);
family!(
    FOLLOWER_LAG,
    "corelog_partition_follower_lag_entries",
    Gauge,
    "On the leader, the most Raft entries (batches) a follower of the partition lacks."
);
family!(
    GROUP_COMMITTED,
    "corelog_consumer_group_committed_offset",
    Gauge,
    "A consumer group's committed offset of a partition, on its coordinator."
);

fn counter(value: u64) -> Value {
    Value::Counter(value as f64)
}

/// The shard's thread's time on its core and waiting for it
/// (`/proc/thread-self/schedstat`, in ns), if the kernel says.
fn schedstat() -> Option<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some((fields.next()?? as f64 / 1e9, fields.next()?? as f64 / 1e9))
}

impl Shard {
    /// Every sample this shard holds, for a scrape.
    pub(crate) fn metric_samples(&self) -> Vec<Sample> {
        let shard = || vec![("shard", self.id.to_string())];
        let with = |pairs: &[(&'static str, String)]| {
            let mut labels = shard();
            labels.extend(pairs.iter().cloned());
            labels
        };
        let stats = &self.stats;
        let mut samples = vec![
            Sample::new(&REQUESTS, shard(), counter(stats.requests.get())),
            Sample::new(&RECORDS_APPENDED, shard(), counter(stats.records_appended.get())),
            Sample::new(
                &CLEANER_BYTES,
                with(&[("stage", "before".into())]),
                counter(stats.cleaned_bytes_before.get()),
            ),
            Sample::new(
                &CLEANER_BYTES,
                with(&[("stage", "after".into())]),
                counter(stats.cleaned_bytes_after.get()),
            ),
            Sample::new(&CLEANER_REMOVED, shard(), counter(stats.cleaned_records_removed.get())),
            Sample::new(&BYTES_RECEIVED, shard(), counter(stats.bytes_received.get())),
            Sample::new(&BYTES_SENT, shard(), counter(stats.bytes_sent.get())),
            Sample::new(&CROSS_SHARD, shard(), counter(stats.hops.get())),
            Sample::new(&CONNECTIONS, shard(), Value::Gauge(self.connections.get() as f64)),
            Sample::new(&REQUEST_WAIT, shard(), stats.request_wait.value()),
            Sample::new(&PRODUCE_SERVICE, shard(), stats.produce_service.value()),
            Sample::new(&DURABLE_WAIT, shard(), stats.durable_wait.value()),
        ];
        for (kind, served, count) in [
            ("produce", "local", &stats.produce_local),
            ("produce", "hop", &stats.produce_hops),
            ("fetch", "local", &stats.fetch_local),
            ("fetch", "hop", &stats.fetch_hops),
        ] {
            samples.push(Sample::new(
                &PARTITION_REQUESTS,
                with(&[("request", kind.into()), ("served", served.into())]),
                counter(count.get()),
            ));
        }
        for (api, api_stats) in stats.kafka_apis() {
            let api = with(&[("api", api)]);
            samples.push(Sample::new(&KAFKA_REQUESTS, api.clone(), counter(api_stats.requests)));
            samples.push(Sample::new(&KAFKA_LATENCY, api.clone(), histogram(&api_stats.latency)));
            for (code, count) in &api_stats.errors {
                let mut labels = api.clone();
                let error = net::kafka::kafka_protocol::error::ResponseError::try_from_code(*code)
                    .map_or_else(|| code.to_string(), |error| error.to_string());
                labels.push(("error", error));
                samples.push(Sample::new(&KAFKA_ERRORS, labels, counter(*count)));
            }
        }
        // The logs closed so far, and those open now.
        let (mut flushes, mut sync_time, mut written) = (
            stats.log_flushes.get(),
            stats.log_sync_time.get(),
            stats.log_written_bytes.get(),
        );
        for ((topic, partition), log) in self.logs.borrow().iter() {
            let log_stats = log.stats();
            flushes += log_stats.flushes;
            sync_time += log_stats.sync_time;
            written += log_stats.bytes_written;
            let partition_labels = || with(&[("topic", topic.clone()), ("partition", partition.to_string())]);
            let view = self.replica_view(topic, *partition);
            let high_watermark = view.as_ref().map_or(log.log_end_offset(), |v| v.high_watermark());
            samples.extend([
                Sample::new(
                    &LOG_START,
                    partition_labels(),
                    Value::Gauge(log.log_start_offset().0 as f64),
                ),
                Sample::new(
                    &LOG_END,
                    partition_labels(),
                    Value::Gauge(log.log_end_offset().0 as f64),
                ),
                Sample::new(
                    &HIGH_WATERMARK,
                    partition_labels(),
                    Value::Gauge(high_watermark.0 as f64),
                ),
                Sample::new(
                    &PARTITION_SIZE,
                    partition_labels(),
                    Value::Gauge(log.size_bytes() as f64),
                ),
                Sample::new(
                    &PARTITION_SEGMENTS,
                    partition_labels(),
                    Value::Gauge(log.segment_base_offsets().len() as f64),
                ),
            ]);
            if let Some(view) = view {
                samples.extend([
                    Sample::new(
                        &LEADER,
                        partition_labels(),
                        Value::Gauge(f64::from(u8::from(view.is_leader()))),
                    ),
                    Sample::new(&LEADER_EPOCH, partition_labels(), Value::Gauge(view.term() as f64)),
                    Sample::new(&IN_SYNC, partition_labels(), Value::Gauge(view.in_sync_count() as f64)),
                    Sample::new(&LEADER_CHANGES, partition_labels(), counter(view.leadership_changes())),
                    Sample::new(
                        &FOLLOWER_LAG,
                        partition_labels(),
                        Value::Gauge(view.follower_lag() as f64),
                    ),
                ]);
            }
        }
        samples.extend([
            Sample::new(&LOG_FLUSHES, shard(), counter(flushes)),
            Sample::new(&LOG_SYNC_TIME, shard(), Value::Counter(sync_time.as_secs_f64())),
            Sample::new(&LOG_WRITTEN, shard(), counter(written)),
        ]);
        for (group, topic, partition, offset) in self.coordinator.borrow().committed_offsets() {
            samples.push(Sample::new(
                &GROUP_COMMITTED,
                vec![
                    ("group", group.to_string()),
                    ("topic", topic.to_string()),
                    ("partition", partition.to_string()),
                ],
                Value::Gauge(offset as f64),
            ));
        }
        let cache = storage::batch_cache::thread_stats();
        let (allocations, _) = crate::alloc::thread_allocations();
        samples.extend([
            Sample::new(&CACHE_HITS, shard(), counter(cache.hits)),
            Sample::new(&CACHE_MISSES, shard(), counter(cache.misses)),
            Sample::new(&ALLOCATIONS, shard(), counter(allocations)),
        ]);
        if let Some((on_cpu, waiting)) = schedstat() {
            samples.push(Sample::new(&CPU, shard(), Value::Counter(on_cpu)));
            samples.push(Sample::new(&RUNQUEUE_WAIT, shard(), Value::Counter(waiting)));
        }
        samples
    }
}
