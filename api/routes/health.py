"""``/health`` (the process answers), ``/ready`` (its database and Kafka answer),
``/v1/me`` (what the caller's key may see)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.auth import Reader, storage_of
from api.problems import MEDIA_TYPE

router = APIRouter()
_TIMEOUT_S = 2.0


@router.get("/health", tags=["health"], responses={200: {"content": {
    "application/json": {"example": {"status": "ok"}}}}})  # fmt: skip
async def health() -> dict[str, str]:
    """Liveness: the process answers. Checks nothing else."""
    return {"status": "ok"}


@router.get(
    "/ready",
    tags=["health"],
    responses={
        200: {"content": {"application/json": {"example": {
            "status": "ready", "checks": {"database": "ok", "kafka": "ok"}}}}},
        503: {"description": "a dependency does not answer", "content": {
            MEDIA_TYPE: {"example": {"status": 503, "title": "Service unavailable"}}}},
    },
)  # fmt: skip
async def ready(request: Request) -> JSONResponse:
    """Readiness: the database answers a query and a Kafka bootstrap server
    accepts a connection, each within two seconds."""
    checks = {
        "database": await _database(request),
        "kafka": await _kafka(request.app.state.settings.kafka.bootstrap),
    }
    ok = all(v == "ok" for v in checks.values())
    body: dict[str, Any] = {"status": "ready" if ok else "not ready", "checks": checks}
    if ok:
        return JSONResponse(body)
    body |= {
        "type": "about:blank",
        "title": "Service unavailable",
        "status": 503,
        "detail": "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok"),
    }
    return JSONResponse(body, status_code=503, media_type=MEDIA_TYPE)  # fmt: skip


async def _database(request: Request) -> str:
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            async with storage_of(request).connection() as conn:
                await conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure is "not ready", said why
        return f"unavailable ({type(exc).__name__})"
    return "ok"


async def _kafka(bootstrap: str) -> str:
    errors = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            async with asyncio.timeout(_TIMEOUT_S):
                _, writer = await asyncio.open_connection(host, int(port))
        except (OSError, TimeoutError, ValueError) as exc:
            errors.append(f"{server}: {type(exc).__name__}")
        else:
            writer.close()
            return "ok"
    return "unavailable (" + ", ".join(errors) + ")"


_ME = {
    "key_id": "0a1b2c3d4e5f",
    "role": "enterprise",
    "park": "park-1",
    "enterprise": "coal-power",
    "scope": "enterprise coal-power of park park-1",
}


_ME_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"example": _ME}}}
}


@router.get("/v1/me", tags=["auth"], responses=_ME_RESPONSE)
async def me(who: Reader) -> dict[str, Any]:
    """The caller's key and the scope it grants."""
    s = who.scope
    return {"key_id": who.key.id, "role": s.role.value, "park": s.park,
            "enterprise": s.enterprise, "scope": s.describe()}  # fmt: skip
