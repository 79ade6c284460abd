"""The rule pack versions that ran live (table ``rule_packs``, migration 0013).

Contracts:

- :meth:`RulePackStore.record` is called by the live runner when it starts a
  version and when it switches to one. In one transaction: the version's row is
  inserted if absent (or reopened if it ran before), and every other version of
  the pack still open is closed at that time. The same version with another
  SHA-256 raises :class:`PackConflict` and changes nothing: a version is what the
  alerts record, its content never changes.
- :meth:`RulePackStore.in_force` answers which versions were in force over a
  range: each with the part of the range it covers, in time order. At a time, the
  version in force is the one with the latest ``valid_from`` not after it whose
  ``valid_to`` is unset or after it. Times are the runners' clocks when they
  started or switched (processing time, not event time).

Every method raises :class:`~smartpark.errors.StorageError` when the database fails.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime

from psycopg import sql
from psycopg.rows import class_row

from smartpark.errors import ConfigError
from storage.base import Database, storage_errors, table


class PackConflict(ConfigError):
    """A pack version recorded with another content hash."""


@dataclass(frozen=True, slots=True)
class PackVersionRow:
    pack: str
    version: str
    sha256: str
    content: str
    valid_from: datetime
    valid_to: datetime | None


@dataclass(frozen=True, slots=True)
class PackSpan:
    """A version and the part ``[start, end)`` of a range it was in force for."""

    version: PackVersionRow
    start: datetime
    end: datetime


class RulePackStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _t(self) -> sql.Identifier:
        return table(self._db.schema, "rule_packs")

    async def record(
        self, *, pack: str, version: str, sha256: str, content: str, at: datetime
    ) -> None:
        """Record that ``version`` of ``pack`` runs from ``at`` (module contract)."""
        t = self._t()
        with storage_errors(f"record rule pack {pack} {version}"):
            async with self._db.connection() as conn, conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))",
                    (f"rule_packs:{pack}",),
                )
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT sha256, valid_to IS NULL FROM {}"
                        " WHERE pack = %s AND version = %s"
                    ).format(t),
                    (pack, version),
                )
                found = await cur.fetchone()
                if found is not None and found[0] != sha256:
                    raise PackConflict(
                        f"rule pack {pack} version {version} was recorded with"
                        f" SHA-256 {found[0]}; this file's is {sha256} (a changed"
                        " pack needs a new version)"
                    )
                await conn.execute(
                    sql.SQL(
                        "UPDATE {} SET valid_to = greatest(%s, valid_from)"
                        " WHERE pack = %s AND version <> %s AND valid_to IS NULL"
                    ).format(t),
                    (at, pack, version),
                )
                if found is None:
                    await conn.execute(
                        sql.SQL(
                            "INSERT INTO {} (pack, version, sha256, content,"
                            " valid_from) VALUES (%s, %s, %s, %s, %s)"
                        ).format(t),
                        (pack, version, sha256, content, at),
                    )
                elif not found[1]:
                    await conn.execute(
                        sql.SQL(
                            "UPDATE {} SET valid_to = NULL"
                            " WHERE pack = %s AND version = %s"
                        ).format(t),
                        (pack, version),
                    )

    async def get(self, pack: str, version: str) -> PackVersionRow | None:
        with storage_errors("read a rule pack version"):
            async with self._db.connection() as conn:
                cur = conn.cursor(row_factory=class_row(PackVersionRow))
                await cur.execute(
                    sql.SQL("SELECT * FROM {} WHERE pack = %s AND version = %s").format(
                        self._t()
                    ),
                    (pack, version),
                )
                return await cur.fetchone()

    async def versions(self, pack: str | None = None) -> list[PackVersionRow]:
        """Every recorded version (of ``pack``), by pack then ``valid_from``."""
        where = sql.SQL(" WHERE pack = %s") if pack is not None else sql.SQL("")
        with storage_errors("read rule pack versions"):
            async with self._db.connection() as conn:
                cur = conn.cursor(row_factory=class_row(PackVersionRow))
                await cur.execute(
                    sql.SQL("SELECT * FROM {}{} ORDER BY pack, valid_from").format(
                        self._t(), where
                    ),
                    (pack,) if pack is not None else (),
                )
                return await cur.fetchall()

    async def in_force(
        self, pack: str, start: datetime, end: datetime
    ) -> list[PackSpan]:
        """The versions of ``pack`` in force over ``[start, end)`` (module
        contract); parts of the range with no version in force are left out."""
        rows = await self.versions(pack)
        cuts = sorted(
            {start, end}
            | {r.valid_from for r in rows if start < r.valid_from < end}
            | {r.valid_to for r in rows if r.valid_to and start < r.valid_to < end}
        )
        spans: list[PackSpan] = []
        for lo, hi in itertools.pairwise(cuts):
            live = [
                r
                for r in rows
                if r.valid_from <= lo and (r.valid_to is None or r.valid_to > lo)
            ]
            if not live:
                continue
            row = max(live, key=lambda r: r.valid_from)
            if spans and spans[-1].version == row and spans[-1].end == lo:
                spans[-1] = PackSpan(row, spans[-1].start, hi)
            else:
                spans.append(PackSpan(row, lo, hi))
        return spans
