"""Kafka conventions shared by every service: the bridge, the sink, the rules runner
and the notifier.

Topics come from :class:`smartpark.settings.KafkaSettings`. Telemetry records are keyed
by enterprise so every device of an enterprise lands in one partition, in order.
A dead letter keeps the original bytes as its value and says why in its headers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from smartpark.settings import KafkaSettings

log = logging.getLogger(__name__)

DLQ_REASON = "sp-reason"
DLQ_SOURCE = "sp-source"
DLQ_RECEIVED_MS = "sp-received-ms"


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
    """An input the platform refused, with the bytes exactly as received."""

    original: bytes
    reason: str
    source: str
    received_ms: int
    key: bytes | None = None

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (DLQ_REASON, self.reason.encode()),
            (DLQ_SOURCE, self.source.encode()),
            (DLQ_RECEIVED_MS, str(self.received_ms).encode()),
        ]


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
        response = await admin.create_topics(
            [
                NewTopic(t, settings.partitions, settings.replication_factor)
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
