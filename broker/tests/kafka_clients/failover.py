"""An unchanged librdkafka client (confluent-kafka) writing and reading
through a cluster's failovers: run by broker/tests/cluster.rs as
`python3 failover.py BOOTSTRAP TOPIC PARTITIONS`.

An idempotent producer (acks=all) sends numbered values as fast as one
request in flight a partition allows while a consumer reads every partition
from the beginning; the test kills and pauses leaders meanwhile. It prints
"started" once the first value is acknowledged, keeps going until a line
arrives on stdin, then flushes, reads until it has seen every acknowledged
value (or its deadline), and prints one JSON line: what the producer was
told (value, partition, offset), every error either client reported, and
what the consumer read (partition, offset, value). The test checks it.
"""

import json
import os
import sys
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

BOOTSTRAP, TOPIC, PARTITIONS = sys.argv[1], sys.argv[2], int(sys.argv[3])
# Longest the producer may take to have every value acknowledged, and the
# consumer to read them, once told to stop.
DRAIN_S = 90
# Values a second the producer offers: enough to keep every partition's
# pipeline busy through each failover, few enough for two shared cores.
RATE = 400

acked = []
timeline = []
began = time.time()
errors = []
consumed = []
stop = threading.Event()
started = threading.Event()


def delivered(error, message):
    if error is not None:
        errors.append(f"delivery of {message.value()!r}: {error}")
        return
    acked.append((message.value().decode(), message.partition(), message.offset()))
    timeline.append((round(time.time() - began, 2), message.partition(), message.offset()))
    if not started.is_set():
        started.set()
        print("started", flush=True)


def client_error(error):
    # Transport errors and brokers going down are what a failover looks
    # like to librdkafka; it says so here and carries on. Only a fatal
    # error (idempotence broken) is the application's problem.
    if error.fatal():
        errors.append(f"fatal: {error}")


producer = Producer({
    "bootstrap.servers": BOOTSTRAP,
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": 120000,
    "request.timeout.ms": 10000,
    "retry.backoff.ms": 50,
    "topic.metadata.refresh.interval.ms": 1000,
    "error_cb": client_error,
    **({"debug": os.environ["FAILOVER_DEBUG"]} if os.environ.get("FAILOVER_DEBUG") else {}),
})
consumer = Consumer({
    "bootstrap.servers": BOOTSTRAP,
    "group.id": "failover-checker",
    "enable.auto.commit": False,
    "fetch.wait.max.ms": 100,
    "topic.metadata.refresh.interval.ms": 1000,
    "error_cb": client_error,
})
consumer.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])


def consume(timeout):
    for message in consumer.consume(num_messages=1000, timeout=timeout):
        if message.error():
            if message.error().code() != KafkaError._PARTITION_EOF:
                errors.append(f"consumer: {message.error()}")
            continue
        consumed.append((message.partition(), message.offset(), message.value().decode()))


threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
sent = 0
while not stop.is_set():
    while sent < (time.time() - began) * RATE:
        while True:
            try:
                producer.produce(TOPIC, key=str(sent).encode(), value=f"v{sent:07d}".encode(), on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
    producer.poll(0)
    consume(0.01)

stopped_at = round(time.time() - began, 2)
deadline = time.time() + DRAIN_S
while producer.flush(1) > 0 and time.time() < deadline:
    consume(0)
wanted = {value for value, _, _ in acked}
while time.time() < deadline and not wanted <= {value for _, _, value in consumed}:
    consume(0.2)
consumer.close()
print(json.dumps({"sent": sent, "acked": acked, "errors": errors, "consumed": consumed}), flush=True)
if os.environ.get("FAILOVER_TIMELINE"):
    with open(os.environ["FAILOVER_TIMELINE"], "w") as f:
        json.dump({"stopped": stopped_at, "timeline": timeline}, f)
