"""An API app over a freshly migrated test schema, and keys for every role."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from pydantic import SecretStr

from api.app import create_app
from api.cli import create_key
from smartpark.clock import MsClock, system_ms
from smartpark.settings import (
    ApiSettings,
    BulkMethod,
    DatabaseSettings,
    KafkaSettings,
    NotifierSettings,
    Settings,
    SigningSettings,
    WebhookSettings,
)
from smartpark.tenancy import Role, Scope
from storage import Storage
from storage.secretbox import SecretBox
from tests.support.settings import WEBHOOK_KEY

PEPPER = "test-pepper-" + "x" * 32
# The platform's signing key in API tests (replay reports): a fixed 32-byte seed.
SIGNING_KEY = "dGVzdC1zaWduaW5nLWtleS0zMi1ieXRlcy1sb25nISE="


@dataclass
class Api:
    storage: Storage
    client: httpx.AsyncClient

    async def key(self, role: Role, park: str | None = None,
                  enterprise: str | None = None) -> dict[str, str]:  # fmt: skip
        """The Authorization header of a new key for the scope."""
        full = await create_key(
            self.storage, PEPPER.encode(), scope=Scope(role, park, enterprise),
            name=f"test {role.value}",
        )  # fmt: skip
        return {"Authorization": f"Bearer {full}"}


def api_settings(
    pg_dsn: str, schema: str, kafka: str = "127.0.0.1:19092", max_points: int = 100_000,
    bulk_method: BulkMethod = "copy",
) -> Settings:  # fmt: skip
    return Settings(
        database=DatabaseSettings(
            dsn=SecretStr(pg_dsn), schema=schema, bulk_method=bulk_method
        ),
        kafka=KafkaSettings(bootstrap=kafka),
        api=ApiSettings(key_pepper=SecretStr(PEPPER), max_points=max_points),
        webhooks=WebhookSettings(secret_key=SecretStr(WEBHOOK_KEY)),
        signing=SigningSettings(private_key=SecretStr(SIGNING_KEY)),
    )


@asynccontextmanager
async def running_api(
    pg_dsn: str, schema: str, *, kafka: str = "127.0.0.1:19092",
    clock: MsClock = system_ms, max_points: int = 100_000, pool_size: int = 4,
    bulk_method: BulkMethod = "copy", notifier: NotifierSettings | None = None,
) -> AsyncIterator[Api]:  # fmt: skip
    settings = api_settings(pg_dsn, schema, kafka, max_points, bulk_method)
    if notifier is not None:
        settings = settings.model_copy(update={"notifier": notifier})
    keys = SecretBox.from_settings(settings.webhooks)
    async with Storage(
        settings.database, pool_size=pool_size, clock=clock, webhook_keys=keys
    ) as storage:
        await storage.migrate()
        app = create_app(settings, storage=storage, clock=clock)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api.test"
        ) as client:
            yield Api(storage, client)
