"""Backlogs on Kafka and the measured drains of the platform's consumers.

A component's throughput is measured on a backlog, not on a live load: the input is
put in place first (records on a Kafka topic, messages queued for an MQTT session),
then the component starts and is sampled until it has worked through all of it (see
:func:`bench.figures.drain_rate`). The producer of the backlog is then never the
limit, and the same backlog can be drained by the raw baseline.

Progress of a Kafka consumer of the platform (the sink, the rules runner) is its
group's committed offsets: both commit them to Kafka after the database transaction
of each batch (:mod:`stream.group`, for lag monitoring), so a committed record is a
stored one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bench.figures import SAMPLE_S, Progress, ServiceProcess
from smartpark.settings import KafkaSettings
from stream.kafka import make_producer


async def produce_all(
    kafka: KafkaSettings,
    topic: str,
    records: Sequence[tuple[bytes, bytes]],
    *,
    warm_up: bool = False,
) -> float:
    """Produce ``(key, value)`` records with the platform's producer settings
    (``acks=all``, idempotent, linger 5 ms) as fast as it takes them; the seconds
    from the first send to the last acknowledgement.

    ``warm_up``: first one empty record to each partition, acknowledged before the
    clock starts (a topic created just now answers NotLeaderForPartition for a
    while even once its metadata names the leaders, and those retries are not the
    producer's rate). Only for a topic nothing consumes.
    """
    producer = make_producer(kafka, client_id="smartpark-bench")
    await producer.start()
    try:
        await _leaders(producer, topic)
        if warm_up:
            parts = sorted(await producer.partitions_for(topic))
            await asyncio.gather(
                *[await producer.send(topic, b"", partition=p) for p in parts]
            )
        start = time.perf_counter()
        deliveries = [
            await producer.send(topic, value, key=key) for key, value in records
        ]
        await asyncio.gather(*deliveries)
        return time.perf_counter() - start
    finally:
        await producer.stop()


async def _leaders(
    producer: AIOKafkaProducer, topic: str, timeout_s: float = 30
) -> None:
    """Wait until every partition of ``topic`` has a leader: a topic created just
    now answers NotLeaderForPartition for a moment, and its retries would be timed."""
    deadline = time.monotonic() + timeout_s
    while True:
        parts = await producer.partitions_for(topic)
        cluster = producer.client.cluster
        if all(
            (cluster.leader_for_partition(TopicPartition(topic, p)) or -1) >= 0
            for p in parts
        ):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{topic}: partitions without a leader after {timeout_s} s"
            )
        await asyncio.sleep(0.2)
        await producer.client.force_metadata_update()


async def end_offsets(bootstrap: str, topic: str) -> int:
    """Records on ``topic`` (the sum of its partitions' end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return await _ends(consumer, topic)
    finally:
        await consumer.stop()


async def _ends(consumer: AIOKafkaConsumer, topic: str) -> int:
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()  # a topic created just now
        parts = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    ends = await consumer.end_offsets(tps)
    return int(sum(ends.values()))


async def watch_end_offsets(
    bootstrap: str,
    topic: str,
    progress: Progress,
    *,
    base: int,
    proc: ServiceProcess,
    timeout_s: float,
) -> None:
    """Sample the records on ``topic`` beyond ``base`` into ``progress`` until it
    is complete; RuntimeError after ``timeout_s`` or if ``proc`` exits."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await _sample(
            lambda: _ends(consumer, topic),
            progress,
            base,
            proc=proc,
            timeout_s=timeout_s,
            what=topic,
        )
    finally:
        await consumer.stop()


async def watch_committed(
    bootstrap: str,
    group: str,
    progress: Progress,
    *,
    per_record: int,
    proc: ServiceProcess,
    timeout_s: float,
) -> None:
    """Sample ``group``'s committed offsets (times ``per_record`` units a record)
    into ``progress`` until complete; RuntimeError after ``timeout_s`` or if
    ``proc`` exits."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    last = 0

    async def done() -> int:
        # The group's coordinator may not be there yet (the offsets topic is still
        # being created or its leader is moving): a retriable error; the progress
        # stays at the last sample and the next one asks again.
        nonlocal last
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        except KafkaError as exc:
            if not exc.retriable:
                raise
            return last
        last = per_record * sum(max(0, int(o.offset)) for o in offsets.values())
        return last

    try:
        await _sample(
            done, progress, 0, proc=proc, timeout_s=timeout_s, what=f"group {group}"
        )
    finally:
        await admin.close()


async def _sample(
    read: object,
    progress: Progress,
    base: int,
    *,
    proc: ServiceProcess,
    timeout_s: float,
    what: str,
) -> None:
    assert callable(read)
    start = time.perf_counter()
    while not progress.complete:
        proc.check_running()
        at = time.perf_counter() - start
        if at > timeout_s:
            done = progress.samples[-1][1] if progress.samples else 0
            raise RuntimeError(
                f"{progress.label}: {done} of {progress.total} done on {what}"
                f" after {timeout_s:.0f} s"
            )
        progress.add(at, await read() - base)
        await asyncio.sleep(SAMPLE_S)


async def drop_topics(bootstrap: str, topics: Sequence[str]) -> None:
    """Delete those of ``topics`` that exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(topics) & set(await admin.list_topics())
        if existing:
            await admin.delete_topics(sorted(existing))
    finally:
        await admin.close()
