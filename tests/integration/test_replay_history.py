"""storage.history on both dialects: rows of a scope in event-time order, in
batches, as one snapshot; days moved to the sealed archive read back from it in
the same order."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg import sql
from pydantic import SecretStr

from api.replay.service import ReplayRequest, ReplayScope, run_replay
from smartpark.errors import NotFound
from smartpark.settings import DatabaseSettings
from storage import Storage, TelemetryRow
from storage.archive import Archive, ArchiveFiles
from storage.history import HistoryRow, HistoryScope, HistoryStore
from storage.signing import Signer, Verifier

pytestmark = [pytest.mark.integration]

T0 = datetime(2026, 11, 1, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


def rows() -> list[TelemetryRow]:
    """Two enterprises, three devices, two metrics, a reading every minute; written
    device by device, so storage order is not time order."""
    return [
        TelemetryRow(T0 + timedelta(minutes=i), "p1", enterprise, device, metric,
                     i + 0.5, "N", i + 1)
        for enterprise, device in (("e1", "d1"), ("e1", "d2"), ("e2", "d3"))
        for i in range(30)
        for metric in ("so2", "o2")
    ]  # fmt: skip


async def read(
    store: HistoryStore, scope: HistoryScope, **kw: int
) -> list[list[HistoryRow]]:
    return [b async for b in store.read(scope, T0, T0 + timedelta(minutes=20), **kw)]


async def check_history(storage: Storage) -> None:
    await storage.migrate()
    await storage.telemetry.write(rows())
    store = HistoryStore(storage)
    batches = await read(store, HistoryScope("p1"), batch_rows=7)
    flat = [r for b in batches for r in b]
    assert [len(b) for b in batches[:-1]] == [7] * (len(batches) - 1)
    assert len(flat) == 20 * 3 * 2
    # time, then enterprise, device, metric (data type, stat)
    assert flat == sorted(
        flat, key=lambda r: (r.ts_ms, r.enterprise, r.device, r.metric)
    )
    assert flat[0] == HistoryRow(T0_MS, "p1", "e1", "d1", "o2", 0.5, "N", 1, None,
                                 "realtime", "value")  # fmt: skip
    e2 = [r for b in await read(store, HistoryScope("p1", "e2")) for r in b]
    assert {r.device for r in e2} == {"d3"}
    assert len(e2) == 40
    d2 = [r for b in await read(store, HistoryScope("p1", "e1", ("d2",))) for r in b]
    assert {r.device for r in d2} == {"d2"}
    assert len(d2) == 40
    assert (
        await store.estimate(HistoryScope("p1"), T0, T0 + timedelta(minutes=20)) == 120
    )
    assert await read(store, HistoryScope("other-park")) == []


async def test_history_on_plain_postgresql(
    pg_dsn: str, db_schema: str, tmp_path: Path
) -> None:
    settings = DatabaseSettings(dsn=SecretStr(pg_dsn), schema=db_schema)
    async with Storage(settings) as storage:
        await check_history(storage)
        store = HistoryStore(storage)
        before = await read(store, HistoryScope("p1"), batch_rows=7)
        # e2's day leaves for the sealed archive: read back the same, in order
        async with storage.connection() as conn:
            await conn.execute(
                sql.SQL("INSERT INTO {} (id, name, timezone)"
                        " VALUES ('p1', 'p1', 'UTC')")
                .format(sql.Identifier(db_schema, "parks"))
            )  # fmt: skip
            for ent in ("e1", "e2"):
                await conn.execute(
                    sql.SQL("INSERT INTO {} (id, park, name) VALUES (%s, 'p1', %s)")
                    .format(sql.Identifier(db_schema, "enterprises")), (ent, ent),
                )  # fmt: skip
        key = Ed25519PrivateKey.generate()
        archive = Archive(
            storage, ArchiveFiles(str(tmp_path / "archive")),
            seal_delay=timedelta(hours=1), signer=Signer(key),
            verifier=Verifier([key.public_key()]),
        )  # fmt: skip
        report = await archive.retain(older_than_days=2, enterprise="e2")
        assert [(e, d) for e, d, _ in report.evicted] == [("e2", date(2026, 11, 1))]
        assert await storage.telemetry.count_rows() == 60 * 2
        assert await read(store, HistoryScope("p1"), batch_rows=7) == before
        e2 = [r for b in await read(store, HistoryScope("p1", "e2")) for r in b]
        assert e2 == [r for b in before for r in b if r.enterprise == "e2"]
        d3 = [r for b in await read(store, HistoryScope("p1", "e2", ("d3",)))
              for r in b]  # fmt: skip
        assert d3 == e2


PACK = """\
pack: outlet-test
version: "1"
timezone: UTC
watermark_delay: 0
rules:
  - {id: so2-10min, kind: window, metric: so2, window: 10min, limit: 5}
  - {id: quota, kind: quota, period: day, limit: 1, inputs: [{metric: water_volume}]}
"""


async def test_an_outlet_replay_reads_and_reports_its_devices_only(
    pg_dsn: str, db_schema: str
) -> None:
    settings = DatabaseSettings(dsn=SecretStr(pg_dsn), schema=db_schema)
    async with Storage(settings) as storage:
        await storage.migrate()
        await storage.telemetry.write(rows())
        async with storage.connection() as conn:
            for statement, params in (
                ("INSERT INTO {}.parks (id, name, timezone) VALUES ('p1', 'P', 'UTC')",
                 ()),
                ("INSERT INTO {}.enterprises (id, park, name) VALUES ('e1', 'p1', 'E')",
                 ()),
                ("INSERT INTO {}.outlets (id, park, enterprise, kind, name)"
                 " VALUES ('o1', 'p1', 'e1', 'stack', 'O'),"
                 " ('o2', 'p1', 'e1', 'stack', 'empty')", ()),
                ("INSERT INTO {}.devices (id, park, enterprise, outlet, protocol,"
                 " interval_s) VALUES ('d2', 'p1', 'e1', 'o1', 'hj212', 60)", ()),
            ):  # fmt: skip
                await conn.execute(
                    sql.SQL(statement).format(sql.Identifier(db_schema)), params
                )
        store = HistoryStore(storage)
        o1 = await store.outlet_devices("o1")
        assert o1 is not None
        assert (o1.park, o1.enterprise, o1.devices) == ("p1", "e1", ("d2",))
        empty = await store.outlet_devices("o2")
        assert empty is not None
        assert empty.devices == ()
        assert await store.outlet_devices("o3") is None
        result = await run_replay(
            storage,
            ReplayRequest(ReplayScope("p1", outlet="o1"), T0,
                          T0 + timedelta(minutes=20), proposed=PACK),
        )  # fmt: skip
        assert {e.scope.device for e in result.events} == {"d2"}
        assert result.evidence.parts[0].rows == 2 * 30  # d2's so2 and o2, all read
        with pytest.raises(NotFound, match="no outlet 'o1' in park 'p2'"):
            await run_replay(
                storage,
                ReplayRequest(ReplayScope("p2", outlet="o1"), T0,
                              T0 + timedelta(minutes=20), proposed=PACK),
            )  # fmt: skip


@pytest.fixture
def ts_schema(timescale_dsn: str, uid: str) -> Iterator[str]:
    name = f"t_{uid}"
    yield name
    with psycopg.connect(timescale_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
        )


@pytest.mark.timescale
async def test_history_on_timescaledb(timescale_dsn: str, ts_schema: str) -> None:
    settings = DatabaseSettings(
        dsn=SecretStr(timescale_dsn), schema=ts_schema, bulk_method="insert"
    )
    async with Storage(settings) as storage:
        await check_history(storage)
