"""Kafka conventions shared by every service: the bridge, the sink, the rules runner
and the notifier.

Topics come from :class:`smartpark.settings.KafkaSettings`. Telemetry records are keyed
by enterprise so every device of an enterprise lands in one partition, in order.
A dead letter keeps the original bytes as its value (up to :data:`DLQ_KEEP_BYTES`;
a larger original keeps its first bytes, and its size and SHA-256 in the headers)
and says why in its headers, so a dead letter always fits in a Kafka record.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CorruptRecordException,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    for_code,
)

from smartpark.settings import KafkaSettings

log = logging.getLogger(__name__)

DLQ_REASON = "sp-reason"
DLQ_SOURCE = "sp-source"
DLQ_RECEIVED_MS = "sp-received-ms"
DLQ_ORIGINAL_BYTES = "sp-original-bytes"
DLQ_SHA256 = "sp-sha256"
DLQ_TRUNCATED = "sp-truncated"
# A dead letter keeps at most this much of the original: far below any broker's
# record limit, and enough to see what was sent.
DLQ_KEEP_BYTES = 64 * 1024
# Kafka refuses these for the record itself, for good: sending it again cannot
# succeed, and retrying it in order would hold up everything behind it.
_REFUSED_FOR_GOOD = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
)


def refused_for_good(exc: KafkaError) -> bool:
    """True if Kafka refused this record itself and will refuse it again (too large,
    corrupt); False for what a retry or a new producer can cure."""
    return isinstance(exc, _REFUSED_FOR_GOOD)


def make_producer(settings: KafkaSettings, *, client_id: str) -> AIOKafkaProducer:
    """A producer that only reports success once every in-sync replica has the record.

    With ``idempotence`` (the default) retries cannot duplicate or reorder records
    within a partition; Tansu, used by the embedded demo, does not support it.
    """
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=settings.idempotence,
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=30_000,
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An input the platform refused, with the bytes exactly as received.

    :attr:`value` is what goes to the dead-letter topic: the original, or its first
    :data:`DLQ_KEEP_BYTES` when it is larger (``sp-truncated: true``); the headers
    always carry the original's size and SHA-256, so a truncated letter still
    identifies what was sent.
    """

    original: bytes
    reason: str
    source: str
    received_ms: int
    key: bytes | None = None

    @property
    def truncated(self) -> bool:
        return len(self.original) > DLQ_KEEP_BYTES

    @property
    def value(self) -> bytes:
        return self.original[:DLQ_KEEP_BYTES]

    def headers(self) -> list[tuple[str, bytes]]:
        headers = [
            (DLQ_REASON, self.reason[:1000].encode()),
            (DLQ_SOURCE, self.source[:1000].encode()),
            (DLQ_RECEIVED_MS, str(self.received_ms).encode()),
            (DLQ_ORIGINAL_BYTES, str(len(self.original)).encode()),
            (DLQ_SHA256, hashlib.sha256(self.original).hexdigest().encode()),
        ]
        if self.truncated:
            headers.append((DLQ_TRUNCATED, b"true"))
        return headers


async def ensure_topics(settings: KafkaSettings) -> None:
    """Create the platform's topics if they do not exist (idempotent).

    Existing topics are left as they are: changing a partition count moves keys
    between partitions, which is an operator's decision, not a start-up side effect.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            settings.telemetry_topic,
            settings.status_topic,
            settings.alerts_topic,
            settings.deadletter_topic,
        ]
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return
        topic_configs = {}
        if settings.min_insync_replicas is not None:
            topic_configs["min.insync.replicas"] = str(settings.min_insync_replicas)
        response = await admin.create_topics(
            [
                NewTopic(
                    t,
                    settings.partitions,
                    settings.replication_factor,
                    topic_configs=topic_configs,
                )
                for t in missing
            ]
        )
        for topic, code, *_ in response.topic_errors:
            # Another process may have created it between list and create.
            if code not in (0, TopicAlreadyExistsError.errno):
                raise for_code(code)(f"creating topic {topic}")
        log.info("created Kafka topics %s", ", ".join(missing))
    finally:
        await admin.close()
