"""A librdkafka transactional producer (confluent-kafka) on a cluster: run
by broker/tests/cluster.rs as `python3 transactions.py BOOTSTRAP TOPIC
PARTITIONS`.

Each transaction writes one value to every partition (their leaders spread
over the nodes, so the coordinator's markers go to other nodes) and
commits, every fourth one aborts. It prints "ready" once transactions
flow and "txn N" after each one, goes on until a line arrives on stdin
(the test kills the coordinator's node meanwhile), then reads the topic
with a read_committed consumer and prints one JSON line: transactions
committed and aborted, every error the application saw, committed values
missing or read twice, and aborted values read. The test checks it.

Errors librdkafka marks retriable are retried as its documentation asks of
an application; one that needs the transaction aborted aborts it (its
values are then expected nowhere).
"""

import json
import select
from collections import Counter
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

BOOTSTRAP, TOPIC, PARTITIONS = sys.argv[1], sys.argv[2], int(sys.argv[3])
# Longest one call may take, and the read at the end.
CALL_S = 60
READ_S = 60

errors = []


def client_error(error):
    if error.fatal():
        errors.append(f"fatal: {error}")


producer = Producer({
    "bootstrap.servers": BOOTSTRAP,
    "transactional.id": "cluster-ride",
    "transaction.timeout.ms": 60000,
    "message.timeout.ms": 60000,
    "request.timeout.ms": 10000,
    "topic.metadata.refresh.interval.ms": 1000,
    "error_cb": client_error,
})


def retried(what, call):
    """Runs a transactional call, again while librdkafka says retriable;
    answers whether the transaction must be aborted."""
    end = time.time() + CALL_S
    while True:
        try:
            call()
            return False
        except KafkaException as e:
            error = e.args[0]
            if error.retriable() and time.time() < end:
                time.sleep(0.1)
                continue
            if error.txn_requires_abort():
                return True
            errors.append(f"{what}: {error}")
            raise


retried("init", lambda: producer.init_transactions(CALL_S))
print("ready", flush=True)
committed, aborted = [], []
n = 0
stopped = False
while not stopped:
    values = [f"t{n:05d}-p{p}" for p in range(PARTITIONS)]
    producer.begin_transaction()
    for p, value in enumerate(values):
        producer.produce(TOPIC, value=value.encode(), partition=p)
    if producer.flush(CALL_S) > 0:
        errors.append(f"transaction {n}: values not delivered within {CALL_S} s")
        break
    # A value that failed makes the commit ask for an abort.
    if n % 4 == 3:
        retried("abort", lambda: producer.abort_transaction(CALL_S))
        aborted += values
    else:
        if retried("commit", lambda: producer.commit_transaction(CALL_S)):
            retried("abort", lambda: producer.abort_transaction(CALL_S))
            aborted += values
        else:
            committed += values
    print(f"txn {n}", flush=True)
    n += 1
    stopped = bool(select.select([sys.stdin], [], [], 0)[0])

consumer = Consumer({
    "bootstrap.servers": BOOTSTRAP,
    "group.id": "transactions-checker",
    "enable.auto.commit": False,
    "isolation.level": "read_committed",
    "error_cb": client_error,
})
consumer.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
read = []
wanted = set(committed)
end = time.time() + READ_S
while time.time() < end and not wanted <= set(read):
    for message in consumer.consume(num_messages=1000, timeout=0.2):
        if message.error():
            if message.error().code() != KafkaError._PARTITION_EOF:
                errors.append(f"consumer: {message.error()}")
            continue
        read.append(message.value().decode())
consumer.close()
print(json.dumps({
    "transactions": n,
    "committed": len(committed),
    "aborted": len(aborted),
    "errors": errors,
    "missing": sorted(wanted - set(read)),
    "twice": sorted(v for v, count in Counter(read).items() if count > 1),
    "aborted_read": sorted(set(aborted) & set(read)),
}), flush=True)
