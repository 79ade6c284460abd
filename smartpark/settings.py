"""Process settings for the platform services (bridge, sink, rules, api).

One :class:`Settings` object per process, built in ``main()`` and passed down.
Environment variables use the prefix ``SMARTPARK_`` and ``__`` for nesting, e.g.
``SMARTPARK_KAFKA__BOOTSTRAP=10.0.0.5:9092`` or ``SMARTPARK_DATABASE__DSN=...``.
Nothing reads the environment at import time. The edge agent is configured by its
own YAML file instead (see ``edge_agent.config``).
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from smartpark.errors import ConfigError

# "auto" uses TimescaleDB when the extension is available, plain PostgreSQL otherwise.
DialectSetting = Literal["auto", "timescale", "postgres"]
# COPY is the fast path; "insert" is for servers without COPY (PGlite).
BulkMethod = Literal["copy", "insert"]


class MqttSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: SecretStr | None = None
    tls_ca: str | None = None
    client_id: str = "smartpark-bridge"
    # The bridge subscribes with a persistent session so the broker queues messages
    # while it is down; a clean session would drop them.
    subscription: str = "sp/v1/+/+/+/telemetry"
    keepalive_s: int = 30
    # Several bridges share the telemetry subscription when set: each subscribes
    # to $share/<share_group>/<subscription> and the broker gives each message to
    # one of them (ingest.bridge, "Several bridges"). Each needs its own client_id.
    share_group: str = Field(default="", pattern=r"^[^/+#]*$")


class KafkaSettings(BaseModel):
    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "sp."
    # Tansu (used by the embedded demo) has no idempotent producer.
    idempotence: bool = True
    client_id: str = "smartpark"
    # Used when the platform creates its topics (``ensure_topics``); the telemetry
    # partition count bounds how many sinks and rule runners share the load.
    partitions: int = 4
    replication_factor: int = 1
    # The topics' min.insync.replicas when the platform creates them (None: the
    # broker's default). With replication_factor 3, 2 means a record the producer
    # (acks=all) had acknowledged is on two brokers at least, and writes go on with
    # one broker down (deploy/local/services up --kafka-cluster).
    min_insync_replicas: int | None = Field(default=None, gt=0)

    @property
    def telemetry_topic(self) -> str:
        return f"{self.topic_prefix}telemetry.v1"

    @property
    def status_topic(self) -> str:
        return f"{self.topic_prefix}device-status.v1"

    @property
    def alerts_topic(self) -> str:
        return f"{self.topic_prefix}alerts.v1"

    @property
    def deadletter_topic(self) -> str:
        return f"{self.topic_prefix}deadletter.v1"


class DatabaseSettings(BaseModel):
    dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/smartpark")
    schema_: str = Field(default="public", alias="schema")
    dialect: DialectSetting = "auto"
    bulk_method: BulkMethod = "copy"

    model_config = {"populate_by_name": True}


class BridgeSettings(BaseModel):
    max_future_ms: int = 5 * 60 * 1000
    # A device message larger than this is a dead letter (its first 64 KiB, size and
    # SHA-256 are kept), never a record Kafka would refuse. The local broker caps
    # MQTT packets at the same size (deploy/local/services: max_packet_size).
    max_payload_bytes: int = Field(default=256 * 1024, gt=0, le=900 * 1024)
    # How often the bridge publishes the platform's clock on sp/v1/clock, by which
    # edge agents check their own (edge_agent.clockcheck).
    clock_beacon_s: float = Field(default=10.0, gt=0)
    # On stop, how long to wait for Kafka to acknowledge what is in flight; what
    # is left stays unacknowledged on MQTT and is delivered again.
    drain_timeout_s: float = 10.0


class ConsumerSettings(BaseModel):
    """What every DB-positioned consumer (sink, rules, notifier) is tuned by."""

    group_id: str
    # One batch is one database transaction: what one getmany returns, and what
    # more comes within batch_linger_ms after it (stream.group), up to
    # batch_max_records, and no more than batch_max_bytes of record values (the
    # first record always goes): a gateway's record carries a few hundred
    # readings, so 5 000 of them would be a transaction of a million rows, seconds
    # long, every row of it invisible until its commit. 4 MiB: some 36 000
    # readings, a whole batch of device records.
    batch_max_records: int = Field(default=5000, gt=0)
    batch_max_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    batch_max_wait_ms: int = Field(default=200, ge=0)
    batch_linger_ms: int = Field(default=0, ge=0)


class SinkSettings(ConsumerSettings):
    group_id: str = "smartpark-sink"
    # Fuller batches: one transaction costs about 3 ms of the sink's CPU whatever
    # its size (stream.group); at most this much more latency.
    batch_linger_ms: int = Field(default=100, ge=0)
    # Plain PostgreSQL: how often the rollups are brought up to date, each minute
    # once it has ended (they lag the raw rows by the minute in progress plus this
    # much: storage.rollups); a task of its own, off the write loop.
    rollup_refresh_ms: int = Field(default=10_000, gt=0)


class RulesSettings(ConsumerSettings):
    group_id: str = "smartpark-rules"
    # How often the runner re-reads its pack file for a new version.
    reload_every_s: float = 10.0
    # How often engine snapshots are stored with their offsets; after a crash the
    # records since the last one are evaluated again (and de-duplicated).
    checkpoint_every_ms: int = 5000
    # How often the runner polls the data marks for changes (rules.runner).
    marks_poll_ms: int = Field(default=2000, gt=0)


class NotifierSettings(ConsumerSettings):
    group_id: str = "smartpark-notifier"
    batch_max_records: int = Field(default=1000, gt=0)
    # Destinations the SSRF policy admits although they are loopback, private or
    # link-local: networks ("10.20.0.0/16") or host names. Empty in production
    # unless an enterprise's receiver really sits on the park's private network.
    allow: list[str] = []
    # Delays (ms) before each attempt; None: notifier.retry.DEFAULT_SCHEDULE
    # (ten attempts over about three days).
    schedule_ms: list[int] | None = None
    connect_timeout_s: float = 5.0
    # The whole attempt: connect, send, status line and the first response bytes.
    timeout_s: float = 15.0
    # At most this many endpoints are being delivered to at once (one request in
    # flight per endpoint).
    max_endpoints: int = 64
    # Endpoints are split into this many slots, shared among the running notifiers
    # (each delivers the endpoints of the slots it holds; notifier.service). The
    # most notifiers that get work; the same in every notifier of a database (a
    # notifier started with another count than a running one delivers nothing and
    # says so until that one has stopped: storage.shares).
    slots: int = Field(default=16, ge=1, le=1024)
    # How often due retries are looked for when nothing new arrives.
    poll_ms: int = 500
    # Base URL of the platform's API for the links in webhook bodies; no links
    # when unset.
    public_url: str | None = None
    # How long the old secret keeps signing after a rotation.
    rotation_overlap_h: float = 24.0


class UpstreamSettings(ConsumerSettings):
    """HJ 212 forwarding (upstream/); the platforms and outlets are in the file
    given to ``smartpark upstream run --config``."""

    group_id: str = "smartpark-upstream"
    # How often an idle link looks for queued packets (the feed also wakes it).
    poll_ms: int = Field(default=1000, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    # Delays before each reconnection after a failure, the last one repeated.
    backoff_s: list[float] = [0.5, 1.0, 2.0, 5.0, 10.0, 30.0]
    # How often a waiting service tries to take over sending.
    lock_retry_s: float = Field(default=2.0, gt=0)


class WebhookSettings(BaseModel):
    # Webhook signing secrets are stored encrypted with this key (AES-256-GCM,
    # storage.secretbox): 32 random bytes, URL-safe base64. Required by the
    # notifier, ``smartpark webhooks`` and ``smartpark api``.
    secret_key: SecretStr | None = None
    # Earlier keys, kept only to decrypt until ``smartpark webhooks reencrypt``
    # has moved every secret to ``secret_key`` (README, "Webhooks").
    old_secret_keys: list[SecretStr] = []

    @field_validator("secret_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_key(value.get_secret_value())
        return value

    @field_validator("old_secret_keys")
    @classmethod
    def _old_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        for key in value:
            _check_key(key.get_secret_value())
        return value


def _check_key(text: str) -> None:
    try:
        raw = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:  # AES-256
        raise ValueError("expected 32 random bytes in URL-safe base64")


class SigningSettings(BaseModel):
    # The platform's Ed25519 private key (storage.signing): it signs replay reports
    # and archive manifests. PKCS#8 PEM, or the 32-byte seed in URL-safe base64
    # (``smartpark signing keygen`` prints one). Required by what signs.
    private_key: SecretStr | None = None
    # Public keys (PEM) of retired private keys, so what they signed still verifies
    # after a rotation (README, "Signing key").
    public_keys: list[str] = []


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class ArchiveSettings(BaseModel):
    # Where sealed segments and their manifests live (storage.archive): a local
    # directory or any fsspec URL (s3://bucket/prefix, memory://..., with the
    # protocol's own package and credentials configured as fsspec reads them).
    url: str = "./archive"
    # A local day is sealed once it ended this long ago ("30m", "6h", "2d"; a bare
    # number is seconds): rows
    # arriving later become amendments. Outbox backlogs after an edge outage are
    # what arrives late in the normal course.
    seal_delay: timedelta = timedelta(hours=24)

    @field_validator("seal_delay", mode="before")
    @classmethod
    def _delay(cls, value: object) -> object:
        if isinstance(value, str):
            m = _DURATION_RE.match(value)
            if m is None:
                raise ValueError("expected a duration such as 30m, 6h or 2d")
            value = timedelta(seconds=float(m[1]) * _DURATION_UNITS[m[2]])
        if isinstance(value, timedelta) and value < timedelta(0):
            raise ValueError("must not be negative")
        return value


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # API keys are stored as HMAC-SHA256(key_pepper, secret): a random secret of
    # 32+ characters, kept like any other (smartpark.apikeys). Required by
    # ``smartpark api`` and ``smartpark keys create``.
    key_pepper: SecretStr | None = None
    pool_size: int = Field(default=4, ge=1)
    # The most points (raw readings or aggregate buckets) one request may produce.
    max_points: int = Field(default=100_000, gt=0)
    # Replay jobs (POST /v1/replays) running at once in one API process; more are
    # refused with 429 until one ends. Each holds one of pool_size's connections
    # while it reads: keep it below pool_size.
    max_replays: int = Field(default=2, ge=1)

    @field_validator("key_pepper")
    @classmethod
    def _pepper(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SMARTPARK_", env_nested_delimiter="__", extra="ignore"
    )

    mqtt: MqttSettings = MqttSettings()
    kafka: KafkaSettings = KafkaSettings()
    database: DatabaseSettings = DatabaseSettings()
    bridge: BridgeSettings = BridgeSettings()
    sink: SinkSettings = SinkSettings()
    rules: RulesSettings = RulesSettings()
    notifier: NotifierSettings = NotifierSettings()
    api: ApiSettings = ApiSettings()
    webhooks: WebhookSettings = WebhookSettings()
    signing: SigningSettings = SigningSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    archive: ArchiveSettings = ArchiveSettings()
    log_level: str = "INFO"


def load_settings() -> Settings:
    """The process settings from the environment, checked now.

    A wrong value fails here, at start-up, as a :class:`ConfigError` naming the
    environment variable (``SMARTPARK_DATABASE__DIALECT: ...``), not deep in the
    I/O code later.
    """
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path = "__".join(str(p) for p in err["loc"]).upper()
            problems.append(f"SMARTPARK_{path}: {err['msg']}")
        raise ConfigError("; ".join(problems)) from None
