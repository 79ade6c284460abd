"""Platform settings pointed at the local services, isolated per test."""

from __future__ import annotations

from pydantic import SecretStr

from smartpark.settings import (
    DatabaseSettings,
    KafkaSettings,
    MqttSettings,
    RulesSettings,
    Settings,
    SinkSettings,
    WebhookSettings,
)

# The key webhook secrets are encrypted with in tests (32 bytes, URL-safe base64).
WEBHOOK_KEY = "dGVzdC13ZWJob29rLWtleS0zMi1ieXRlcy1sb25nISE="


def platform_settings(
    mqtt_addr: tuple[str, int],
    kafka_bootstrap: str,
    topic_prefix: str,
    park: str,
    *,
    pg_dsn: str | None = None,
    db_schema: str = "public",
) -> Settings:
    """The bridge subscribes to this park only; topics and groups are the test's own."""
    settings = Settings(
        mqtt=MqttSettings(
            host=mqtt_addr[0],
            port=mqtt_addr[1],
            client_id=f"bridge-{park}",
            subscription=f"sp/v1/{park}/+/+/telemetry",
        ),
        kafka=KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=topic_prefix),
        sink=SinkSettings(group_id=f"sink-{park}"),
        rules=RulesSettings(group_id=f"rules-{park}", reload_every_s=0.5),
        webhooks=WebhookSettings(secret_key=SecretStr(WEBHOOK_KEY)),
    )
    if pg_dsn is not None:
        settings.database = DatabaseSettings(dsn=SecretStr(pg_dsn), schema=db_schema)
    return settings


def settings_env(s: Settings) -> dict[str, str]:
    """The same settings as environment variables, for the service processes."""
    return {
        "SMARTPARK_MQTT__HOST": s.mqtt.host,
        "SMARTPARK_MQTT__PORT": str(s.mqtt.port),
        "SMARTPARK_MQTT__CLIENT_ID": s.mqtt.client_id,
        "SMARTPARK_MQTT__SUBSCRIPTION": s.mqtt.subscription,
        "SMARTPARK_KAFKA__BOOTSTRAP": s.kafka.bootstrap,
        "SMARTPARK_KAFKA__TOPIC_PREFIX": s.kafka.topic_prefix,
        "SMARTPARK_DATABASE__DSN": s.database.dsn.get_secret_value(),
        "SMARTPARK_DATABASE__SCHEMA": s.database.schema_,
        "SMARTPARK_SINK__GROUP_ID": s.sink.group_id,
        "SMARTPARK_RULES__GROUP_ID": s.rules.group_id,
        "SMARTPARK_RULES__RELOAD_EVERY_S": str(s.rules.reload_every_s),
        "SMARTPARK_WEBHOOKS__SECRET_KEY": WEBHOOK_KEY,
    }
