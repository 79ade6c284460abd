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
from collections.abc import Iterable, Sequence

from psycopg import sql

from smartpark.catalogue import series_unit
from storage.base import Conn
from storage.model import TelemetryRow

SeriesKey = tuple[str, str, str, str, str, str]
"""(park, enterprise, device, metric, data_type, stat)"""
DeviceKey = tuple[str, str, str]
"""(park, enterprise, device)"""
DeviceSeries = dict[tuple[str, str, str], int]
"""A device's series ids by (metric, data_type, stat)"""

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
        arrays = sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in _KEY)
        self._create = sql.SQL(
            "INSERT INTO {table} ({key}, unit) SELECT * FROM unnest({arrays},"
            " %s::text[]) ON CONFLICT DO NOTHING RETURNING id, {key}"
        ).format(table=table, key=key, arrays=arrays)
        # (position in the parameters, id) of the keys stored: no text read back.
        self._read = sql.SQL(
            "SELECT k.i, s.id FROM unnest({arrays}) WITH ORDINALITY AS k ({key}, i)"
            " JOIN {table} s USING ({key})"
        ).format(table=table, key=key, arrays=arrays)
        self._all = sql.SQL("SELECT id, {key} FROM {table}").format(
            table=table, key=key
        )
        self._ids: dict[SeriesKey, int] = {}
        # The same ids by device: the sink looks a wire batch's device up once.
        self._by_device: dict[DeviceKey, DeviceSeries] = {}

    def forget(self) -> None:
        """Drop the cache (after the series table was emptied: tests, benches)."""
        self._ids.clear()
        self._by_device.clear()

    def of_device(self, device: DeviceKey) -> DeviceSeries:
        """The cached ids of ``device``'s series by (metric, data_type, stat); a
        series missing from it is not known yet (:meth:`load` it). Read only."""
        known = self._by_device.get(device)
        if known is None:
            known = self._by_device[device] = {}
        return known

    async def resolve(self, conn: Conn, rows: Sequence[TelemetryRow]) -> list[int]:
        """The series id of each row, in order. ``conn`` must not be inside a
        transaction: new series commit at once (see the module doc)."""
        found = list(map(self._ids.get, map(_KEY_OF, rows)))
        if None not in found:
            return found  # type: ignore[return-value]  # no None in it
        keys: list[SeriesKey] = list(map(_KEY_OF, rows))
        await self.load(conn, keys)
        return [self._ids[k] for k in keys]

    async def load(self, conn: Conn, keys: Iterable[SeriesKey]) -> None:
        """Cache the ids of ``keys``, creating the series not stored yet. ``conn``
        must not be inside a transaction (see :meth:`resolve`).

        The ids not cached are read; the series not stored yet are created; those
        another sink created meanwhile are read. A restarted sink finds its series
        with one read (and burns no ids of the sequence on conflicts)."""
        missing = [k for k in dict.fromkeys(keys) if k not in self._ids]
        if not missing:
            return
        unknown = await self._read_ids(conn, missing)
        if not unknown:
            return
        units = [series_unit(k[3], k[5]) for k in unknown]
        cur = await conn.execute(self._create, [*_columns(unknown), text_array(units)])
        for row in await cur.fetchall():
            self._keep(row[1:], row[0])
        raced = [k for k in unknown if k not in self._ids]
        if raced:
            await self._read_ids(conn, raced)

    async def preload(self, conn: Conn) -> int:
        """Cache every stored series (a sink about to start): one scan of the
        table instead of a keyed read for each series on first sight, which at the
        province's 560 000 series kept a restarted sink behind for most of a minute
        (measured: about 20 000 rows a second stored while the cache filled). The
        cache holds them all afterwards anyway. The number cached."""
        async with conn.cursor() as cur:
            await cur.execute(self._all)
            n = 0
            while rows := await cur.fetchmany(50_000):
                for series_id, *key in rows:
                    self._keep(tuple(key), series_id)
                n += len(rows)
        return n

    async def _read_ids(self, conn: Conn, keys: list[SeriesKey]) -> list[SeriesKey]:
        """Cache the stored ids of ``keys``; return the keys not stored."""
        cur = await conn.execute(self._read, _columns(keys))
        for i, series_id in await cur.fetchall():
            self._keep(keys[i - 1], series_id)
        return [k for k in keys if k not in self._ids]

    def _keep(self, key: SeriesKey, series_id: int) -> None:
        self._ids[key] = series_id
        self.of_device(key[:3])[key[3:]] = series_id


def _columns(keys: list[SeriesKey]) -> list[str]:
    return [text_array(column) for column in zip(*keys, strict=True)]


def text_array(values: Sequence[str]) -> str:
    """A ``text[]`` literal of ``values``, every element quoted (so ``NULL`` is a
    string). One join in C: psycopg would quote a list element by element in
    Python, a second for the 56 000 series of the city reference."""
    if not values:
        return "{}"
    whole = "".join(values)
    if '"' in whole or "\\" in whole:
        values = [_escape(v) for v in values]
    return '{"' + '","'.join(values) + '"}'


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
