"""Schemathesis against the API's own OpenAPI, over a real server and database:
whatever the generated input, no 5xx and no response outside the schema.

The server is the app as ``smartpark api`` runs it (uvicorn, its own database
pool), on a throwaway schema with a little telemetry; the calls carry an
all-parks operator key, so writes are exercised too.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from psycopg import sql
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from api.app import create_app
from api.cli import create_key
from smartpark.tenancy import Role, Scope
from storage import Storage, TelemetryRow
from tests.support.api import PEPPER, api_settings

# The schema only: no database is touched to describe the API.
schema = schemathesis.openapi.from_dict(
    create_app(api_settings("postgresql://unused@127.0.0.1/none", "none")).openapi()
)


async def _prepare(pg_dsn: str, name: str) -> str:
    settings = api_settings(pg_dsn, name)
    async with Storage(settings.database) as storage:
        await storage.migrate()
        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
        await storage.telemetry.write([
            TelemetryRow(t0 + timedelta(minutes=i), "p1", "e1", "d1", "active_energy",
                         float(i), "N", i)
            for i in range(60)
        ])  # fmt: skip
        return await create_key(
            storage, PEPPER.encode(), scope=Scope(Role.OPERATOR), name="schemathesis"
        )


@pytest.fixture(scope="module")
def live_api(pg_dsn: str, kafka_bootstrap: str) -> Iterator[tuple[str, str]]:
    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    key = asyncio.run(_prepare(pg_dsn, name))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(api_settings(pg_dsn, name, kafka_bootstrap))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", key
    finally:
        server.should_exit = True
        thread.join(10)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_error_and_no_response_outside_the_schema(
    case: schemathesis.Case[Any], live_api: tuple[str, str]
) -> None:
    base_url, key = live_api
    headers = {"Authorization": f"Bearer {key}"}
    # Sent with httpx: schemathesis's own requests transport inspects urllib3
    # internals that urllib3-future (installed by grafana-client) replaces.
    kwargs = case.as_transport_kwargs(base_url=base_url, headers=headers)
    body = kwargs.get("data")
    with httpx.Client(timeout=30, cookies=kwargs.get("cookies")) as client:
        response = client.request(
            kwargs["method"], kwargs["url"], headers=kwargs.get("headers"),
            params=kwargs.get("params"), json=kwargs.get("json"),
            **({"content": body} if isinstance(body, bytes | str) else
               {"data": body} if body is not None else {}),
        )  # fmt: skip
    case.validate_response(
        response,
        checks=[not_a_server_error, response_schema_conformance,
                content_type_conformance],
        headers=headers,
        transport_kwargs=kwargs,
    )  # fmt: skip
