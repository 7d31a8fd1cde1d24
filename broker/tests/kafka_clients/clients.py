"""Real Kafka clients against a corelog broker's Kafka listener.

Run by broker/tests/kafka.rs: `python3 clients.py SCENARIO BOOTSTRAP [ARG]`.
Each scenario raises (non-zero exit) on the first thing that differs from
what a Kafka broker would do, and prints "ok" at the end.
"""

import sys
import time

BOOTSTRAP = sys.argv[2]
DEADLINE_S = 60


def until(what, done, timeout=DEADLINE_S):
    end = time.time() + timeout
    while not done():
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what}")


def kafka_python_roundtrip():
    """kafka-python: admin create/delete, produce with acks 0, 1 and all,
    keys, values and headers back exactly in per-partition order,
    watermarks, and an oversize record refused."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic
    from kafka.errors import MessageSizeTooLargeError, KafkaError

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, request_timeout_ms=10000)
    admin.create_topics([NewTopic("py", num_partitions=4, replication_factor=1)])
    assert "py" in admin.list_topics(), admin.list_topics()

    sent = {p: [] for p in range(4)}
    for acks in (0, 1, "all"):
        producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks=acks, linger_ms=5,
                                 max_request_size=8 << 20)
        for i in range(60):
            partition = i % 4
            key = f"k-{acks}-{i}".encode()
            value = f"v-{acks}-{i}".encode() * (1 + i % 7)
            headers = [("h", str(i).encode()), ("acks", str(acks).encode())]
            producer.send("py", key=key, value=value, headers=headers, partition=partition)
            sent[partition].append((key, value, headers))
        producer.flush()
        if acks != 0:
            # An oversize record (the topic's batch limit is 1 MiB) is refused.
            future = producer.send("py", value=b"x" * (2 << 20), partition=0)
            try:
                future.get(timeout=10)
                raise AssertionError("an oversize record was accepted")
            except MessageSizeTooLargeError:
                pass
            except KafkaError as e:
                assert "TooLarge" in type(e).__name__, repr(e)
        producer.close()

    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    partitions = [TopicPartition("py", p) for p in range(4)]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    got = {p: [] for p in range(4)}
    total = sum(len(v) for v in sent.values())
    end = time.time() + DEADLINE_S
    while sum(len(v) for v in got.values()) < total and time.time() < end:
        for tp, records in consumer.poll(timeout_ms=500).items():
            for r in records:
                got[tp.partition].append((r.key, r.value, [(k, v) for k, v in r.headers]))
    for p in range(4):
        assert got[p] == sent[p], f"partition {p}: {len(got[p])} records differ from {len(sent[p])} sent"
    ends = consumer.end_offsets(partitions)
    for tp in partitions:
        assert ends[tp] == len(sent[tp.partition]), (tp, ends[tp], len(sent[tp.partition]))
    begins = consumer.beginning_offsets(partitions)
    assert all(v == 0 for v in begins.values()), begins
    consumer.close()

    admin.delete_topics(["py"])
    until("the topic to go", lambda: "py" not in admin.list_topics())
    admin.close()


def confluent_groups():
    """confluent-kafka (librdkafka): two members of a group share a
    four-partition topic, commit, close; a new member resumes at the
    commits; a second group reads everything."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    from confluent_kafka.admin import ConfigResource

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    shared = NewTopic("shared", num_partitions=4, replication_factor=1, config={"retention.ms": "3600000"})
    for f in admin.create_topics([shared]).values():
        f.result(10)
    described = admin.describe_configs([ConfigResource("topic", "shared")])
    configs = list(described.values())[0].result(10)
    assert configs["retention.ms"].value == "3600000", configs["retention.ms"]
    assert configs["segment.bytes"].value == str(1 << 30), configs["segment.bytes"]

    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5})
    for i in range(200):
        producer.produce("shared", key=str(i).encode(), value=f"first-{i}".encode(), partition=i % 4)
    assert producer.flush(20) == 0

    def member(name):
        return Consumer({
            "bootstrap.servers": BOOTSTRAP,
            "group.id": "g",
            "client.id": name,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        })

    a, b = member("a"), member("b")
    a.subscribe(["shared"])
    b.subscribe(["shared"])
    seen = {"a": [], "b": []}
    owners = {}
    end = time.time() + DEADLINE_S
    while len(seen["a"]) + len(seen["b"]) < 200:
        assert time.time() < end, f"consumed {len(seen['a'])} + {len(seen['b'])} of 200"
        for name, consumer in (("a", a), ("b", b)):
            m = consumer.poll(0.2)
            if m is None or m.error():
                continue
            seen[name].append(m.value())
            owners.setdefault(m.partition(), set()).add(name)
            consumer.commit(message=m, asynchronous=False)
    values = sorted(seen["a"] + seen["b"])
    assert values == sorted(f"first-{i}".encode() for i in range(200)), "each record once"
    assert seen["a"] and seen["b"], "both members got partitions"
    a.close()
    b.close()

    for i in range(40):
        producer.produce("shared", value=f"second-{i}".encode(), partition=i % 4)
    assert producer.flush(20) == 0

    resumed = member("c")
    resumed.subscribe(["shared"])
    again = []
    end = time.time() + DEADLINE_S
    while len(again) < 40 and time.time() < end:
        m = resumed.poll(0.5)
        if m is not None and not m.error():
            again.append(m.value())
    time.sleep(1)
    m = resumed.poll(1.0)
    assert m is None or m.error(), "nothing beyond the new records"
    assert sorted(again) == sorted(f"second-{i}".encode() for i in range(40)), again[:5]
    resumed.close()

    other = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "other",
                      "auto.offset.reset": "earliest"})
    other.subscribe(["shared"])
    everything = []
    end = time.time() + DEADLINE_S
    while len(everything) < 240 and time.time() < end:
        m = other.poll(0.5)
        if m is not None and not m.error():
            everything.append(m.value())
    assert len(everything) == 240, len(everything)
    other.close()


def confluent_idempotent():
    """An idempotent librdkafka producer: every record exactly once, in
    order."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    for f in admin.create_topics([NewTopic("once", num_partitions=1, replication_factor=1)]).values():
        f.result(10)
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True,
                         "linger.ms": 2, "acks": "all"})
    for i in range(500):
        producer.produce("once", value=str(i).encode())
    assert producer.flush(20) == 0
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "once-reader",
                         "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition("once", 0, 0)])
    got = []
    end = time.time() + DEADLINE_S
    while len(got) < 500 and time.time() < end:
        m = consumer.poll(0.5)
        if m is not None and not m.error():
            got.append(int(m.value()))
    assert got == list(range(500)), (len(got), got[:10])
    low, high = consumer.get_watermark_offsets(TopicPartition("once", 0), timeout=10)
    assert (low, high) == (0, 500), (low, high)
    consumer.close()


def confluent_transactions():
    """A librdkafka transactional producer: an aborted transaction is
    invisible to a read_committed consumer and visible to a
    read_uncommitted one; a consume-transform-produce transaction commits
    its input offsets with its output."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    for f in admin.create_topics([NewTopic(t, num_partitions=2, replication_factor=1)
                                  for t in ("txn-in", "txn-out")]).values():
        f.result(10)
    plain = Producer({"bootstrap.servers": BOOTSTRAP})
    for i in range(10):
        plain.produce("txn-in", value=f"in-{i}".encode(), partition=i % 2)
    assert plain.flush(20) == 0

    producer = Producer({"bootstrap.servers": BOOTSTRAP, "transactional.id": "pipeline",
                         "transaction.timeout.ms": 30000})
    producer.init_transactions(20)
    producer.begin_transaction()
    for i in range(5):
        producer.produce("txn-out", value=f"aborted-{i}".encode(), partition=i % 2)
    producer.flush(20)
    producer.abort_transaction(20)

    source = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "pipeline-group",
                       "auto.offset.reset": "earliest", "enable.auto.commit": False,
                       "isolation.level": "read_committed"})
    source.subscribe(["txn-in"])
    taken = []
    end = time.time() + DEADLINE_S
    while len(taken) < 10 and time.time() < end:
        m = source.poll(0.5)
        if m is not None and not m.error():
            taken.append(m)
    assert len(taken) == 10, len(taken)
    producer.begin_transaction()
    for m in taken:
        producer.produce("txn-out", value=b"out-" + m.value(), partition=m.partition())
    positions = source.position([TopicPartition("txn-in", p) for p in range(2)])
    producer.send_offsets_to_transaction(positions, source.consumer_group_metadata(), 20)
    producer.commit_transaction(20)
    source.close()

    def read(isolation):
        c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"reader-{isolation}",
                      "auto.offset.reset": "earliest", "isolation.level": isolation})
        c.assign([TopicPartition("txn-out", p, 0) for p in range(2)])
        values = []
        idle_until = time.time() + 3
        while time.time() < idle_until:
            m = c.poll(0.3)
            if m is not None and not m.error():
                values.append(m.value())
                idle_until = time.time() + 2
        c.close()
        return sorted(values)

    committed = sorted(f"out-in-{i}".encode() for i in range(10))
    assert read("read_committed") == committed, read("read_committed")
    everything = sorted(committed + [f"aborted-{i}".encode() for i in range(5)])
    assert read("read_uncommitted") == everything

    check = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "pipeline-group"})
    offsets = check.committed([TopicPartition("txn-in", p) for p in range(2)], timeout=10)
    assert sorted(tp.offset for tp in offsets) == [5, 5], offsets
    check.close()


def confluent_compression():
    """Batches compressed by librdkafka with each codec are stored and read
    back."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic("packed", num_partitions=1, replication_factor=1)])["packed"].result(10)
    expected = []
    for codec in ("gzip", "snappy", "lz4", "zstd"):
        producer = Producer({"bootstrap.servers": BOOTSTRAP, "compression.type": codec, "linger.ms": 20})
        for i in range(50):
            value = f"{codec}-{i}-".encode() * 20
            producer.produce("packed", value=value, partition=0)
            expected.append(value)
        assert producer.flush(20) == 0
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "packed-reader"})
    consumer.assign([TopicPartition("packed", 0, 0)])
    got = []
    end = time.time() + DEADLINE_S
    while len(got) < len(expected) and time.time() < end:
        m = consumer.poll(0.5)
        if m is not None and not m.error():
            got.append(m.value())
    assert got == expected, (len(got), len(expected))
    consumer.close()


def kafka_python_times():
    """kafka-python: a LogAppendTime topic serves the broker's append time
    marked as such; offsets_for_times finds the first record at or after a
    time with that record's timestamp; CreateTopics with validate_only
    checks everything and creates nothing."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic
    from kafka.errors import InvalidConfigurationError, KafkaError, TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, request_timeout_ms=10000)
    admin.create_topics([NewTopic("created-time", 1, 1),
                         NewTopic("append-time", 1, 1,
                                  topic_configs={"message.timestamp.type": "LogAppendTime"})])
    before_ms = int(time.time() * 1000)
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=0)
    for i in range(10):
        # Old, distinct producer timestamps: 1000, 2000, ... 10000.
        producer.send("created-time", value=b"c%d" % i, timestamp_ms=1000 * (i + 1)).get(timeout=10)
        producer.send("append-time", value=b"a%d" % i, timestamp_ms=1000 * (i + 1)).get(timeout=10)
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False,
                             consumer_timeout_ms=3000, auto_offset_reset="earliest")
    created, appended = TopicPartition("created-time", 0), TopicPartition("append-time", 0)
    consumer.assign([created, appended])
    got = {created: [], appended: []}
    end = time.time() + DEADLINE_S
    while (len(got[created]) < 10 or len(got[appended]) < 10) and time.time() < end:
        for tp, records in consumer.poll(timeout_ms=500).items():
            got[tp].extend(records)
    assert [r.timestamp for r in got[created]] == [1000 * (i + 1) for i in range(10)], got[created]
    assert all(r.timestamp_type == 0 for r in got[created]), [r.timestamp_type for r in got[created]]
    for r in got[appended]:
        assert r.timestamp_type == 1, r
        assert before_ms - 1000 <= r.timestamp <= time.time() * 1000 + 1000, (r.timestamp, before_ms)

    found = consumer.offsets_for_times({created: 4500})
    assert (found[created].offset, found[created].timestamp) == (4, 5000), found
    found = consumer.offsets_for_times({created: 99999})
    assert found[created] is None, found
    found = consumer.offsets_for_times({appended: before_ms - 60000})
    assert found[appended].offset == 0 and found[appended].timestamp >= before_ms - 1000, found
    consumer.close()

    admin.create_topics([NewTopic("validated", 3, 1)], validate_only=True)
    assert "validated" not in admin.list_topics(), admin.list_topics()
    for bad, error in ((NewTopic("validated", 3, 1, topic_configs={"retention.ms": "soon"}),
                        InvalidConfigurationError),
                       (NewTopic("created-time", 1, 1), TopicAlreadyExistsError)):
        try:
            admin.create_topics([bad], validate_only=True)
            raise AssertionError(f"validate_only accepted {bad}")
        except error:
            pass
    assert "validated" not in admin.list_topics(), admin.list_topics()
    # One node holds one replica; a name twice in one request creates neither.
    from kafka.errors import InvalidReplicationFactorError, InvalidRequestError
    for bad, error in (([NewTopic("replicated", 1, 3)], InvalidReplicationFactorError),
                       ([NewTopic("twice", 1, 1), NewTopic("twice", 2, 1)], InvalidRequestError)):
        try:
            admin.create_topics(bad)
            raise AssertionError(f"accepted {bad}")
        except error:
            pass
    topics = admin.list_topics()
    assert "replicated" not in topics and "twice" not in topics, topics
    admin.close()


def aiokafka_roundtrip():
    """aiokafka: produce with acks=all (keys, values, headers), a consumer
    group that commits, and a second member of the group resuming exactly
    after the commits."""
    import asyncio
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def run():
        admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        await admin.start()
        await admin.create_topics([NewTopic("aio", num_partitions=2, replication_factor=1)])
        await admin.close()

        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True)
        await producer.start()
        sent = []
        for i in range(100):
            key, value = b"k%d" % i, b"v%d" % i * (1 + i % 5)
            headers = [("i", str(i).encode())]
            await producer.send_and_wait("aio", value=value, key=key, headers=headers, partition=i % 2)
            sent.append((i % 2, key, value, headers))
        await producer.stop()

        async def consume(count):
            consumer = AIOKafkaConsumer("aio", bootstrap_servers=BOOTSTRAP, group_id="aio-group",
                                        enable_auto_commit=False, auto_offset_reset="earliest")
            await consumer.start()
            got = []
            deadline = time.time() + DEADLINE_S
            while len(got) < count and time.time() < deadline:
                batches = await consumer.getmany(timeout_ms=500, max_records=count - len(got))
                for tp, records in batches.items():
                    got.extend((tp.partition, r.key, r.value, list(r.headers)) for r in records)
            await consumer.commit()
            await consumer.stop()
            return got

        first = await consume(60)
        rest = await consume(40)
        got = sorted(first + rest, key=lambda r: (r[0], int(r[1][1:])))
        expected = sorted(sent, key=lambda r: (r[0], int(r[1][1:])))
        assert got == expected, (len(first), len(rest))

    asyncio.run(run())


def shard_aware():
    """librdkafka (confluent-kafka) and kafka-python see every shard as a
    broker of its own and produce and fetch each partition at its owner:
    the test then reads the broker's per-shard counters."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    shards = int(sys.argv[3])  # the brokers the metadata should list
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    for f in admin.create_topics([NewTopic("routed", num_partitions=8, replication_factor=1)]).values():
        f.result(10)
    cluster = admin.list_topics(timeout=10)
    ports = {b.port for b in cluster.brokers.values()}
    assert len(cluster.brokers) == shards and len(ports) == shards, cluster.brokers
    # Brokers of their own: the shared port is only the bootstrap.
    bootstrap_port = int(BOOTSTRAP.rsplit(":", 1)[1])
    assert (bootstrap_port in ports) == (shards == 1), (bootstrap_port, ports)
    leaders = {p.id: p.leader for p in cluster.topics["routed"].partitions.values()}
    assert set(leaders.values()) == set(range(shards)), leaders

    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5, "acks": "all"})
    for i in range(400):
        producer.produce("routed", value=f"rd-{i}".encode(), partition=i % 8)
    assert producer.flush(20) == 0

    py = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks=1, linger_ms=5)
    for i in range(400):
        py.send("routed", value=f"py-{i}".encode(), partition=i % 8)
    py.flush()
    py.close()

    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "routed-rd",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(["routed"])
    got = 0
    end = time.time() + DEADLINE_S
    while got < 800:
        assert time.time() < end, f"librdkafka consumed {got} of 800"
        m = consumer.poll(0.2)
        if m is not None and not m.error():
            got += 1
    consumer.close()

    reader = KafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False, consumer_timeout_ms=3000)
    reader.assign([TopicPartition("routed", p) for p in range(8)])
    reader.seek_to_beginning()
    assert sum(1 for _ in reader) == 800
    reader.close()


def metered():
    """kafka-python: what the metrics test then reads back from /metrics.
    Topic "metered" of 2 partitions; 300 records to partition 0 and 200 to
    partition 1 (acks=all); group "meter" commits offset 100 of partition 0.
    With a rate in records a second as the next argument, it
    produces to partition 0 at that rate instead, for the seconds after it,
    then commits the group at half of what it wrote."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.structs import OffsetAndMetadata

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    admin.create_topics([NewTopic("metered", 2, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=5)
    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id="meter", enable_auto_commit=False)
    if len(sys.argv) > 3:
        rate, seconds = int(sys.argv[3]), int(sys.argv[4])
        began = time.time()
        sent = 0
        while time.time() - began < seconds:
            while sent < (time.time() - began) * rate:
                producer.send("metered", value=b"r%d" % sent, partition=0)
                sent += 1
            time.sleep(0.01)
        producer.flush()
        consumer.commit({TopicPartition("metered", 0): OffsetAndMetadata(sent // 2, "", -1)})
        print(f"sent {sent}")
    else:
        for i in range(500):
            producer.send("metered", value=b"m%d" % i, partition=0 if i < 300 else 1)
        producer.flush()
        consumer.commit({TopicPartition("metered", 0): OffsetAndMetadata(100, "", -1)})
    producer.close()
    consumer.close()


def kafka_python_cluster_admin():
    """kafka-python's admin client: DescribeCluster names every broker (one
    a shard) and the controller; DescribeLogDirs the data directory and the
    bytes of each partition, which grow with what is produced."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    cluster = admin.describe_cluster()
    brokers = {b["broker_id"] for b in cluster["brokers"]}
    assert len(brokers) == int(sys.argv[3]), cluster
    assert cluster["controller_id"] in brokers, cluster
    assert cluster["cluster_id"] == "corelog", cluster
    admin.create_topics([NewTopic("sized", 2, 1)])
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    for i in range(100):
        producer.send("sized", value=b"x" * 1000, partition=0)
    producer.flush()
    producer.close()
    # Every broker (a shard each) answers for its own partitions: each
    # partition once over all of them.
    answers = admin.describe_log_dirs()
    assert {a["broker"] for a in answers} == brokers, answers
    sizes = {}
    for answer in answers:
        assert len(answer["log_dirs"]) == 1, answer
        dir_ = answer["log_dirs"][0]
        assert 0 < dir_["usable_bytes"] <= dir_["total_bytes"], dir_
        for topic in answer["log_dirs"][0]["topics"]:
            for p in topic["partitions"]:
                key = (topic["name"], p["partition_index"])
                assert key not in sizes, f"{key} described twice"
                sizes[key] = p["partition_size"]
    assert sizes[("sized", 0)] >= 100 * 1000 and sizes[("sized", 1)] == 0, sizes
    assert ("__consumer_offsets", 0) in sizes, sizes.keys()
    admin.close()


def kafka_python_offset_delete():
    """kafka-python's admin client deletes a group's commits (OffsetDelete):
    those of a topic no member consumes go, durably (a restart keeps them
    gone is checked by the test); those of the topic an active member
    consumes stay, refused with GROUP_SUBSCRIBED_TO_TOPIC; an unknown group
    is GROUP_ID_NOT_FOUND."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import GroupIdNotFoundError, GroupSubscribedToTopicError, NoError
    from kafka.structs import OffsetAndMetadata

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    admin.create_topics([NewTopic("kept", 1, 1), NewTopic("dropped", 1, 1)])
    member = KafkaConsumer("kept", bootstrap_servers=BOOTSTRAP, group_id="deleting", enable_auto_commit=False)
    deadline = time.time() + 30
    while not member.assignment() and time.time() < deadline:
        member.poll(timeout_ms=200)
    assert member.assignment(), "the member joined"
    member.commit({
        TopicPartition("kept", 0): OffsetAndMetadata(5, "", -1),
        TopicPartition("dropped", 0): OffsetAndMetadata(7, "", -1),
    })
    results = admin.delete_group_offsets("deleting", [TopicPartition("kept", 0), TopicPartition("dropped", 0)])
    assert results[TopicPartition("kept", 0)] is GroupSubscribedToTopicError, results
    assert results[TopicPartition("dropped", 0)] is NoError, results
    committed = admin.list_group_offsets("deleting")["deleting"]
    assert TopicPartition("kept", 0) in committed and TopicPartition("dropped", 0) not in committed, committed
    member.close()
    try:
        admin.delete_group_offsets("nobody", [TopicPartition("kept", 0)])
        raise AssertionError("an unknown group's offsets deleted")
    except GroupIdNotFoundError:
        pass
    admin.close()


def kafka_python_offsets_after_restart():
    """After the broker restarted: the deleted commit is still gone."""
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    committed = admin.list_group_offsets("deleting")["deleting"]
    assert TopicPartition("kept", 0) in committed and TopicPartition("dropped", 0) not in committed, committed
    admin.close()


def kafka_python_topic_admin():
    """kafka-python's admin client changes a live topic: configs set and
    deleted (IncrementalAlterConfigs) and replaced whole (AlterConfigs),
    each shown by DescribeConfigs and in force at once (a lowered
    max.message.bytes refuses a record the topic took before, a raised one
    takes it); partitions added, produced to and fetched from; records
    deleted, after which a consumer from the beginning starts at the new
    log start. Bad asks get Kafka's codes."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import (AlterConfigOp, ConfigResource, ConfigResourceType, KafkaAdminClient,
                             NewPartitions, NewTopic)
    from kafka.errors import (InvalidPartitionsError, InvalidReplicationAssignmentError, MessageSizeTooLargeError,
                              OffsetOutOfRangeError, UnknownTopicOrPartitionError)

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    admin.create_topics([NewTopic("live", 1, 1)])
    topic = lambda configs=None: ConfigResource(ConfigResourceType.TOPIC, "live", configs)

    def described():
        answer = admin.describe_configs([topic()], config_filter="modified")
        return {k: v["value"] for k, v in answer["topic"]["live"].items()} if isinstance(answer, dict) else answer

    result = admin.alter_configs([topic({"max.message.bytes": "2000", "retention.ms": "3600000"})], incremental=True)
    assert result == {"topic": {"live": "OK"}}, result
    assert described() == {"max.message.bytes": "2000", "retention.ms": "3600000"}, described()

    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", retries=0, max_request_size=1 << 20)
    producer.send("live", value=b"small", partition=0).get(timeout=30)
    try:
        producer.send("live", value=b"x" * 5000, partition=0).get(timeout=30)
        raise AssertionError("a record over max.message.bytes was taken")
    except MessageSizeTooLargeError:
        pass
    result = admin.alter_configs([topic({"max.message.bytes": (AlterConfigOp.DELETE, None)})], incremental=True)
    assert result == {"topic": {"live": "OK"}}, result
    assert described() == {"retention.ms": "3600000"}, described()
    producer.send("live", value=b"x" * 5000, partition=0).get(timeout=30)

    # AlterConfigs replaces the whole set; kafka-python sends the keys set
    # before beside the new one, so retention.ms stays.
    result = admin.alter_configs([topic({"segment.bytes": "1048576"})], incremental=False)
    assert result == {"topic": {"live": "OK"}}, result
    kept = {"retention.ms": "3600000", "segment.bytes": "1048576"}
    assert described() == kept, described()
    # A bad value, an unknown key, a list operation and an unknown topic
    # are refused, changing nothing.
    for bad in [{"segment.bytes": "big"}, {"colour": "blue"}, {"retention.ms": (AlterConfigOp.APPEND, "1")}]:
        result = admin.alter_configs([topic(bad)], incremental=True, raise_on_unknown=False)
        assert "InvalidConfig" in result["topic"]["live"], (bad, result)
    assert described() == kept, described()
    result = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "nowhere", {"retention.ms": "1"})],
                                 incremental=True, raise_on_unknown=False)
    assert "UnknownTopicOrPartition" in result["topic"]["nowhere"], result
    result = admin.alter_configs([topic({"retention.ms": "1"})], incremental=True, validate_only=True)
    assert result == {"topic": {"live": "OK"}} and described() == kept, described()

    # Partitions added: the metadata shows them and they take records.
    admin.create_partitions({"live": NewPartitions(total_count=3)})
    until("three partitions", lambda: len(producer.partitions_for("live") or []) == 3 or not producer._metadata.request_update())
    for p in range(3):
        producer.send("live", value=f"in {p}".encode(), partition=p).get(timeout=30)
    for bad in [2, 3]:
        try:
            admin.create_partitions({"live": NewPartitions(total_count=bad)})
            raise AssertionError(f"a topic of 3 partitions grown to {bad}")
        except InvalidPartitionsError:
            pass
    try:
        admin.create_partitions({"nowhere": NewPartitions(total_count=2)})
        raise AssertionError("an unknown topic grown")
    except UnknownTopicOrPartitionError:
        pass
    try:
        admin.create_partitions({"live": NewPartitions(total_count=4, new_assignments=[[0]])})
        raise AssertionError("a client's placement taken")
    except InvalidReplicationAssignmentError:
        pass
    broker = ConfigResource(ConfigResourceType.BROKER, "0", {"log.retention.ms": "1"})
    result = admin.alter_configs([broker], incremental=True, raise_on_unknown=False)
    assert "InvalidRequest" in result["broker"]["0"], result

    # Records deleted: partition 0 holds 2 records; the log starts at 1.
    deleted = admin.delete_records({TopicPartition("live", 0): 1})
    assert deleted[TopicPartition("live", 0)]["low_watermark"] == 1, deleted
    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest", consumer_timeout_ms=5000)
    consumer.assign([TopicPartition("live", 0)])
    consumer.seek_to_beginning()
    assert consumer.position(TopicPartition("live", 0)) == 1
    values = [m.value for m in consumer]
    assert values == [b"x" * 5000, b"in 0"], values
    consumer.close()
    deleted = admin.delete_records({TopicPartition("live", 1): -1})
    assert deleted[TopicPartition("live", 1)]["low_watermark"] == 1, deleted
    try:
        admin.delete_records({TopicPartition("live", 2): 5})
        raise AssertionError("records past the high watermark deleted")
    except OffsetOutOfRangeError:
        pass
    producer.close()
    admin.close()


def kafka_python_topic_admin_after_restart():
    """After a restart: the changed configs, the added partitions and the
    moved log start are all still there."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    answer = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "live")], config_filter="modified")
    kept = {"retention.ms": "3600000", "segment.bytes": "1048576"}
    assert {k: v["value"] for k, v in answer["topic"]["live"].items()} == kept, answer
    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP)
    assert consumer.partitions_for_topic("live") == {0, 1, 2}
    starts = consumer.beginning_offsets([TopicPartition("live", p) for p in range(3)])
    assert [starts[TopicPartition("live", p)] for p in range(3)] == [1, 1, 0], starts
    consumer.close()
    admin.close()


def kafka_python_producers_and_transactions():
    """kafka-python's admin client lists transactions (ListTransactions),
    describes them (DescribeTransactions) and a partition's producers
    (DescribeProducers): a
    transactional librdkafka producer with one transaction open shows up in
    both, its transaction's first offset among them."""
    from confluent_kafka import Producer
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TransactionalIdNotFoundError

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    admin.create_topics([NewTopic("txn-described", 1, 1)])
    idempotent = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True})
    idempotent.produce("txn-described", b"plain", partition=0)
    assert idempotent.flush(30) == 0
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "transactional.id": "described"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce("txn-described", b"open", partition=0)
    assert producer.flush(30) == 0
    # Each broker (a shard) lists its own coordinators' transactions.
    listed = [t for ts in admin.list_transactions().values() for t in ts]
    ours = [t for t in listed if t.transactional_id == "described"]
    assert len(ours) == 1 and ours[0].state.value == "Ongoing", listed
    committed = lambda: [t for ts in admin.list_transactions(state_filters=["CompleteCommit"]).values() for t in ts]
    assert not [t for t in committed() if t.transactional_id == "described"]
    described = admin.describe_producers([TopicPartition("txn-described", 0)])
    active = described[TopicPartition("txn-described", 0)].active_producers
    assert len(active) == 2, active
    by_id = {p.producer_id: p for p in active}
    txn = by_id[ours[0].producer_id]
    assert txn.current_transaction_start_offset == 1 and txn.last_sequence == 0, txn
    plain = [p for p in active if p.producer_id != ours[0].producer_id][0]
    assert plain.current_transaction_start_offset == -1, plain
    # DescribeTransactions, on the id's coordinator: its state, producer
    # and partitions; an unknown id is TRANSACTIONAL_ID_NOT_FOUND.
    description = admin.describe_transactions(["described"])["described"]
    assert description.state.value == "Ongoing" and description.producer_id == ours[0].producer_id, description
    assert description.topic_partitions == {TopicPartition("txn-described", 0)}, description
    assert description.transaction_start_time_ms > 0, description
    try:
        admin.describe_transactions(["nobody"])
        raise AssertionError("an unknown transactional id described")
    except TransactionalIdNotFoundError:
        pass
    producer.commit_transaction(30)
    assert [t for t in committed() if t.transactional_id == "described"], committed()
    admin.close()


def kafka_python_reads_the_offsets_topic():
    """A tool reading `__consumer_offsets` directly, as Burrow does: its
    commits and group metadata decode with the key and value schemas of
    Kafka's group coordinator (OffsetCommitKey v1 / OffsetCommitValue v3,
    GroupMetadataKey v2 / GroupMetadataValue v3, the member's assignment in
    the consumer protocol)."""
    import struct
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    admin.create_topics([NewTopic("watched", 1, 1)])
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    for i in range(10):
        producer.send("watched", value=b"v%d" % i, partition=0)
    producer.flush()
    producer.close()
    member = KafkaConsumer("watched", bootstrap_servers=BOOTSTRAP, group_id="watchers",
                           auto_offset_reset="earliest", enable_auto_commit=False)
    seen = 0
    deadline = time.time() + 30
    while seen < 10 and time.time() < deadline:
        seen += sum(len(r) for r in member.poll(timeout_ms=200).values())
    assert seen == 10, seen
    member.commit()

    class Reader:
        def __init__(self, data):
            self.data, self.at = data, 0

        def take(self, fmt):
            (v,) = struct.unpack_from(fmt, self.data, self.at)
            self.at += struct.calcsize(fmt)
            return v

        def string(self):
            n = self.take(">h")
            if n < 0:
                return None
            v = self.data[self.at:self.at + n].decode()
            self.at += n
            return v

        def bytes(self):
            n = self.take(">i")
            v = self.data[self.at:self.at + n]
            self.at += n
            return v

    reader = KafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=None, enable_auto_commit=False)
    partitions = [TopicPartition("__consumer_offsets", p) for p in reader.partitions_for_topic("__consumer_offsets")]
    reader.assign(partitions)
    reader.seek_to_beginning()
    commit, group = None, None
    deadline = time.time() + 30
    while (commit is None or group is None) and time.time() < deadline:
        for records in reader.poll(timeout_ms=200).values():
            for record in records:
                key = Reader(record.key)
                version = key.take(">h")
                if version in (0, 1):
                    k = (key.string(), key.string(), key.take(">i"))
                    if k == ("watchers", "watched", 0) and record.value is not None:
                        value = Reader(record.value)
                        assert value.take(">h") == 3
                        offset, epoch, metadata, ts = value.take(">q"), value.take(">i"), value.string(), value.take(">q")
                        assert value.at == len(record.value), "the whole value read"
                        commit = (offset, metadata, abs(ts / 1000 - time.time()) < 300)
                elif version == 2 and key.string() == "watchers" and record.value is not None:
                    value = Reader(record.value)
                    assert value.take(">h") == 3
                    protocol_type, generation = value.string(), value.take(">i")
                    protocol, leader, _state_ts = value.string(), value.string(), value.take(">q")
                    members = []
                    for _ in range(value.take(">i")):
                        member_id, _instance, client_id, _host = (value.string(), value.string(),
                                                                  value.string(), value.string())
                        _rebalance, _session = value.take(">i"), value.take(">i")
                        subscription, assignment = value.bytes(), value.bytes()
                        a = Reader(assignment)
                        a.take(">h")
                        owned = {}
                        for _ in range(a.take(">i")):
                            topic = a.string()
                            owned[topic] = [a.take(">i") for _ in range(a.take(">i"))]
                        members.append((member_id, client_id, owned, len(subscription) > 0))
                    assert value.at == len(record.value), "the whole value read"
                    group = (protocol_type, generation, protocol, leader, members)
    assert commit is not None and commit[0] == 10 and commit[2], commit
    assert group is not None, "the group's metadata record"
    protocol_type, generation, protocol, leader, members = group
    assert protocol_type == "consumer" and generation >= 1 and protocol in ("range", "roundrobin"), group
    assert len(members) == 1 and members[0][0] == leader and members[0][2] == {"watched": [0]} and members[0][3], group
    reader.close()
    member.close()
    admin.close()


def open_transaction_and_commit():
    """Leaves what the CLI test then looks at: a transaction of id "cli"
    open on partition 0 of "cli-txn" (its producer gone, the transaction
    waits for its timeout), and group "cli-group"'s commit of that topic,
    no member left."""
    from confluent_kafka import Producer
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.structs import OffsetAndMetadata

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    admin.create_topics([NewTopic("cli-txn", 1, 1)])
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "transactional.id": "cli"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce("cli-txn", b"open", partition=0)
    assert producer.flush(30) == 0
    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id="cli-group", enable_auto_commit=False)
    consumer.commit({TopicPartition("cli-txn", 0): OffsetAndMetadata(1, "", -1)})
    consumer.close()
    admin.close()


def compacted_topic():
    """A topic created with cleanup.policy=compact takes 100,000 updates of
    1,000 keys from librdkafka; the broker's cleaner (a short backoff in
    the test's config) brings it down to about one record per key, and a
    consumer from the beginning sees, in offset order, exactly the last
    value of each key. A record without a key is refused with
    INVALID_RECORD, as Kafka refuses it on a compacted topic."""
    from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition, OFFSET_BEGINNING
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    configs = {"cleanup.policy": "compact", "segment.bytes": "65536", "min.cleanable.dirty.ratio": "0.01"}
    for future in admin.create_topics([NewTopic("table", 1, 1, config=configs)]).values():
        future.result()
    # Batches of 500: the active segment (never cleaned) holds a few.
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5, "enable.idempotence": True,
                         "batch.num.messages": 500})
    updates, keys = 100_000, 1_000
    for n in range(updates):
        while True:
            try:
                producer.produce("table", key=f"k{n % keys}", value=f"v{n}", partition=0)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0
    refused = []
    producer.produce("table", value=b"no key", partition=0, on_delivery=lambda err, msg: refused.append(err))
    producer.flush(30)
    assert refused and refused[0] is not None and refused[0].code() == KafkaError.INVALID_RECORD, refused

    def read_all():
        consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "reader", "enable.auto.commit": False,
                             "enable.partition.eof": True})
        consumer.assign([TopicPartition("table", 0, OFFSET_BEGINNING)])
        seen = []
        while True:
            msg = consumer.poll(10)
            assert msg is not None, "no end of partition within 10 s"
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                break
            seen.append((msg.offset(), msg.key().decode(), msg.value().decode()))
        consumer.close()
        return seen

    deadline = time.time() + DEADLINE_S
    while True:
        seen = read_all()
        if len(seen) < 5 * keys or time.time() > deadline:
            break
        time.sleep(0.5)
    assert len(seen) < 5 * keys, f"{len(seen)} records after cleaning, of {updates}"
    offsets = [o for o, _, _ in seen]
    assert offsets == sorted(set(offsets)), "offsets strictly increase"
    last = {}
    for _, key, value in seen:
        last[key] = value
    expected = {f"k{k}": f"v{updates - keys + k}" for k in range(keys)}
    assert last == expected, [(k, last.get(k), v) for k, v in expected.items() if last.get(k) != v][:5]


SCENARIOS = {
    "compacted-topic": compacted_topic,
    "open-transaction-and-commit": open_transaction_and_commit,
    "kafka-python-reads-the-offsets-topic": kafka_python_reads_the_offsets_topic,
    "kafka-python-topic-admin": kafka_python_topic_admin,
    "kafka-python-topic-admin-after-restart": kafka_python_topic_admin_after_restart,
    "kafka-python-producers-and-transactions": kafka_python_producers_and_transactions,
    "kafka-python-offset-delete": kafka_python_offset_delete,
    "kafka-python-offsets-after-restart": kafka_python_offsets_after_restart,
    "kafka-python-cluster-admin": kafka_python_cluster_admin,
    "metered": metered,
    "kafka-python-times": kafka_python_times,
    "aiokafka-roundtrip": aiokafka_roundtrip,
    "confluent-transactions": confluent_transactions,
    "confluent-compression": confluent_compression,
    "kafka-python-roundtrip": kafka_python_roundtrip,
    "confluent-groups": confluent_groups,
    "confluent-idempotent": confluent_idempotent,
    "shard-aware": shard_aware,
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()
    print("ok")
