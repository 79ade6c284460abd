"""Kafka conventions shared by the bridge, the sink and (later) the rules runner.

Topics come from :class:`smartpark.settings.KafkaSettings`. Telemetry records are keyed
by enterprise so every device of an enterprise lands in one partition, in order.
A dead letter keeps the original bytes as its value and says why in its headers.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from smartpark.settings import KafkaSettings

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
