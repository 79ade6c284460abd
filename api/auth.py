"""Who is calling: the API key in ``Authorization: Bearer spk_…``, and its scope.

The scope comes only from the key (:mod:`smartpark.tenancy`); routes take a
:class:`Caller` through :func:`caller` (any role) or :func:`writer` (not a
regulator), and hand ``caller.scope`` to every read and write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request

from api.problems import Problem
from smartpark.apikeys import matches, parse_key
from smartpark.settings import Settings
from smartpark.tenancy import Scope
from storage import Storage
from storage.keys import KeyRow

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True, slots=True)
class Caller:
    key: KeyRow
    remote: str | None
    storage: Storage
    settings: Settings

    @property
    def scope(self) -> Scope:
        return self.key.scope

    async def audit(
        self, action: str, target: str, *, detail: dict[str, Any] | None = None
    ) -> None:
        """Record a write or an export by this caller in the audit log."""
        await self.storage.keys.audit(
            self.key, action, target, remote=self.remote, detail=detail
        )

    async def park_timezone(self, park: str | None) -> str | None:
        """The registered time zone of ``park`` (or of the caller's own park),
        if the registry knows it within the caller's scope."""
        park = park or self.scope.park
        if park is None:
            return None
        return await self.storage.queries.park_timezone(self.scope, park)


def storage_of(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


async def caller(request: Request) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(
            401,
            "send the API key as 'Authorization: Bearer spk_…'",
            headers=_CHALLENGE,
        )
    parsed = parse_key(token.strip())
    if parsed is None:
        raise Problem(401, "malformed API key (expected spk_<id>_<secret>)",
                      headers=_CHALLENGE)  # fmt: skip
    key_id, secret = parsed
    storage = storage_of(request)
    found = await storage.keys.lookup(key_id)
    pepper: bytes = request.app.state.pepper
    if found is None or not matches(secret, found[1], pepper):
        raise Problem(401, "unknown API key", headers=_CHALLENGE)
    key = found[0]
    now = datetime.fromtimestamp(storage.clock() / 1000, UTC)
    if not key.usable(now):
        state = "revoked" if key.revoked_at is not None else "expired"
        raise Problem(401, f"API key {key.id} is {state}", headers=_CHALLENGE)
    await storage.keys.touch(key)
    client = request.client
    return Caller(
        key, None if client is None else client.host, storage,
        request.app.state.settings,
    )  # fmt: skip


async def writer(who: Annotated[Caller, Depends(caller)]) -> Caller:
    if not who.scope.can_write:
        raise Problem(403, "a regulator key is read-only")
    return who


Reader = Annotated[Caller, Depends(caller)]
Writer = Annotated[Caller, Depends(writer)]
