"""The platform API (FastAPI): one app for operators, enterprises and regulators.

:func:`create_app` builds it from the settings; ``smartpark api`` (:mod:`api.cli`)
serves it with uvicorn. Every route takes its caller's scope from the API key
(:mod:`api.auth`) and hands it to the data-access layer; every error is a problem
(:mod:`api.problems`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from api import problems
from api.replay.jobs import running_jobs
from api.routes import (
    alerts,
    coverage,
    health,
    kpis,
    marks,
    metrics,
    registry,
    replay,
    reports,
    telemetry,
    webhooks,
)
from smartpark.clock import MsClock, system_ms
from smartpark.errors import ConfigError
from smartpark.settings import Settings
from storage import Storage
from storage.secretbox import SecretBox

VERSION = "1"


def create_app(
    settings: Settings, *, storage: Storage | None = None, clock: MsClock = system_ms
) -> FastAPI:
    """The app. ``storage`` (already open, with the webhook keys) is used as
    given, else one is opened for the app's lifetime. Raises :class:`ConfigError`
    without a key pepper or a webhook secret key."""
    pepper = settings.api.key_pepper
    if pepper is None:
        raise ConfigError(
            "SMARTPARK_API__KEY_PEPPER: required (a random secret of 32+ characters;"
            " API keys are stored as its HMAC)"
        )
    webhook_keys = SecretBox.from_settings(settings.webhooks)  # ConfigError if unset

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if storage is not None:
            app.state.storage = storage
            async with running_jobs(storage, settings) as app.state.replays:
                yield
            return
        async with Storage(
            settings.database, pool_size=settings.api.pool_size, clock=clock,
            application_name="smartpark-api", webhook_keys=webhook_keys,
            prefill=True,  # replay jobs read beside the requests: no growing later
        ) as own:  # fmt: skip
            await own.require_migrated()
            app.state.storage = own
            async with running_jobs(own, settings) as app.state.replays:
                yield

    app = FastAPI(
        title="smartpark",
        version=VERSION,
        description=(
            "The smartpark platform API. Authenticate with an API key:"
            " `Authorization: Bearer spk_…`. The key decides what you see."
        ),
        lifespan=lifespan,
        responses=problems.RESPONSES,
        dependencies=[Depends(problems.known_query_parameters)],
    )
    if storage is not None:  # also without a lifespan run (ASGI test transports)
        app.state.storage = storage
    app.state.pepper = pepper.get_secret_value().encode()
    app.state.settings = settings
    problems.install(app)
    metrics.install(app)
    for module in (
        health, metrics, registry, telemetry, alerts, webhooks, marks, coverage,
        kpis, reports, replay,
    ):  # fmt: skip
        app.include_router(module.router)
    return app
