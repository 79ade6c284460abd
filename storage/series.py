"""Series: a reading's identity stored once, with an integer id the rows carry.

A series is (park, enterprise, device, metric, data type, stat) with the unit of
its values; ``telemetry`` rows hold only its id (migration 0006). The sink does not
know ids in advance: :class:`SeriesIds` resolves the ids of a batch's rows, creating
the series it has not seen yet, and keeps them for the life of the process. Series
are never deleted or renumbered, so a cached id stays right.

Creating a series commits on its own, before the batch's transaction: a batch that
fails afterwards leaves a series without rows, which is harmless, and the retry
finds it. Two sinks creating the same series race on the unique key; ``ON CONFLICT
DO NOTHING`` and the re-read in a fresh snapshot give both the same id.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

from psycopg import sql

from smartpark.catalogue import series_unit
from storage.base import Conn
from storage.model import TelemetryRow

SeriesKey = tuple[str, str, str, str, str, str]
"""(park, enterprise, device, metric, data_type, stat)"""

_KEY = ("park", "enterprise", "device", "metric", "data_type", "stat")


_FIELDS = TelemetryRow._fields
# The series key of a row, read in C: the sink resolves every row it stores.
_KEY_OF = operator.itemgetter(*(_FIELDS.index(f) for f in _KEY))


def series_key(r: TelemetryRow) -> SeriesKey:
    key: SeriesKey = _KEY_OF(r)
    return key


class SeriesIds:
    """The ids of one schema's series, resolved on demand and cached."""

    def __init__(self, schema: str) -> None:
        table = sql.Identifier(schema, "series")
        key = sql.SQL(", ").join(map(sql.Identifier, _KEY))
        source = sql.SQL(
            "unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
            " %s::text[])"
        )
        self._create = sql.SQL(
            "INSERT INTO {table} ({key}, unit) SELECT * FROM unnest(%s::text[],"
            " %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
            " %s::text[]) ON CONFLICT DO NOTHING"
        ).format(table=table, key=key)
        self._read = sql.SQL(
            "SELECT s.id, {key} FROM {table} s JOIN {source} AS k ({key}) USING ({key})"
        ).format(table=table, key=key, source=source)
        self._ids: dict[SeriesKey, int] = {}

    def forget(self) -> None:
        """Drop the cache (after the series table was emptied: tests, benches)."""
        self._ids.clear()

    async def resolve(self, conn: Conn, rows: Sequence[TelemetryRow]) -> list[int]:
        """The series id of each row, in order. ``conn`` must not be inside a
        transaction: new series commit at once (see the module doc)."""
        keys: list[SeriesKey] = list(map(_KEY_OF, rows))
        found = list(map(self._ids.get, keys))
        if None not in found:
            return found  # type: ignore[return-value]  # no None in it
        missing = [k for k in dict.fromkeys(keys) if k not in self._ids]
        await self._load(conn, missing)
        return [self._ids[k] for k in keys]

    async def _load(self, conn: Conn, missing: list[SeriesKey]) -> None:
        columns = [list(c) for c in zip(*missing, strict=True)]
        units = [series_unit(k[3], k[5]) for k in missing]
        await conn.execute(self._create, [*columns, units])
        cur = await conn.execute(self._read, columns)
        for row in await cur.fetchall():
            self._ids[tuple(row[1:])] = row[0]
