"""failover.py's scenario for the Kafka clients written in Python itself
rather than over librdkafka, each with its own metadata and retry logic:
run by broker/tests/cluster.rs as
`python3 failover_python.py CLIENT BOOTSTRAP TOPIC PARTITIONS`, CLIENT
being `aiokafka` or `kafka-python`.

An idempotent producer (acks=all) sends numbered values at a steady rate
while a consumer reads every partition from the beginning; the test kills
leaders meanwhile. The same protocol as failover.py: "started" once the
first value is acknowledged, on until a line arrives on stdin, then one JSON
line with what the producer was told, every error the application saw, and
what the consumer read.
"""

import asyncio
import json
import sys
import threading
import time

CLIENT, BOOTSTRAP, TOPIC, PARTITIONS = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
# Longest the producer may take to have every value acknowledged, and the
# consumer to read them, once told to stop.
DRAIN_S = 90
# Values a second: a steady stream through each failover, light enough for
# two such clients and three brokers on two shared cores.
RATE = 150

acked = []
errors = []
consumed = []
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()


def started():
    print("started", flush=True)


def report(sent):
    print(json.dumps({"sent": sent, "acked": acked, "errors": errors, "consumed": consumed}), flush=True)


def all_read():
    wanted = {value for value, _, _ in acked}
    return wanted <= {value for _, _, value in consumed}


async def with_aiokafka():
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    producer = AIOKafkaProducer(
        bootstrap_servers=BOOTSTRAP,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        request_timeout_ms=30000,
        retry_backoff_ms=50,
        metadata_max_age_ms=1000,
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=BOOTSTRAP,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        metadata_max_age_ms=1000,
        auto_offset_reset="earliest",
    )
    await producer.start()
    await consumer.start()
    consumer.assign([TopicPartition(TOPIC, p) for p in range(PARTITIONS)])
    await consumer.seek_to_beginning()
    pending = set()

    async def send(n):
        value = f"v{n:07d}"
        try:
            metadata = await producer.send_and_wait(TOPIC, key=str(n).encode(), value=value.encode())
            if not acked:
                started()
            acked.append((value, metadata.partition, metadata.offset))
        except Exception as error:  # what the application would see
            errors.append(f"delivery of {value}: {error!r}")

    async def consume(timeout_ms):
        try:
            batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=1000)
        except Exception as error:
            errors.append(f"consumer: {error!r}")
            return
        for records in batches.values():
            consumed.extend((r.partition, r.offset, r.value.decode()) for r in records)

    began = time.time()
    sent = 0
    while not stop.is_set():
        while sent < (time.time() - began) * RATE:
            task = asyncio.ensure_future(send(sent))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        await consume(10)
    deadline = time.time() + DRAIN_S
    if pending:
        await asyncio.wait(pending, timeout=DRAIN_S)
    while time.time() < deadline and not all_read():
        await consume(200)
    await consumer.stop()
    await producer.stop()
    report(sent)


def with_kafka_python():
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    producer = KafkaProducer(
        bootstrap_servers=BOOTSTRAP.split(","),
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        request_timeout_ms=10000,
        delivery_timeout_ms=120000,
        retry_backoff_ms=50,
        metadata_max_age_ms=1000,
    )
    consumer = KafkaConsumer(
        bootstrap_servers=BOOTSTRAP.split(","),
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        metadata_max_age_ms=1000,
    )
    partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    lock = threading.Lock()

    def delivered(value, metadata):
        with lock:
            if not acked:
                started()
            acked.append((value, metadata.partition, metadata.offset))

    def failed(value, error):
        with lock:
            errors.append(f"delivery of {value}: {error!r}")

    def consume(timeout_ms):
        try:
            batches = consumer.poll(timeout_ms=timeout_ms, max_records=1000)
        except Exception as error:
            errors.append(f"consumer: {error!r}")
            return
        for records in batches.values():
            consumed.extend((r.partition, r.offset, r.value.decode()) for r in records)

    began = time.time()
    sent = 0
    while not stop.is_set():
        while sent < (time.time() - began) * RATE:
            value = f"v{sent:07d}"
            future = producer.send(TOPIC, key=str(sent).encode(), value=value.encode())
            future.add_callback(lambda metadata, value=value: delivered(value, metadata))
            future.add_errback(lambda error, value=value: failed(value, error))
            sent += 1
        consume(10)
    deadline = time.time() + DRAIN_S
    producer.flush(timeout=DRAIN_S)
    while time.time() < deadline and not all_read():
        consume(200)
    consumer.close()
    producer.close()
    with lock:
        report(sent)


if CLIENT == "aiokafka":
    asyncio.run(with_aiokafka())
elif CLIENT == "kafka-python":
    with_kafka_python()
else:
    sys.exit(f"unknown client {CLIENT!r}")
