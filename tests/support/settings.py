"""Platform settings pointed at the local services, isolated per test."""

from __future__ import annotations

from pydantic import SecretStr

from smartpark.settings import (
    DatabaseSettings,
    KafkaSettings,
    MqttSettings,
    Settings,
    SinkSettings,
)


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
    )
    if pg_dsn is not None:
        settings.database = DatabaseSettings(dsn=SecretStr(pg_dsn), schema=db_schema)
    return settings
