"""The sealed archive on plain PostgreSQL (local services): seal, verify, amend,
retain, seamless reads; one schema and one archive directory per test."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg import sql
from pydantic import SecretStr

from smartpark import kpi
from smartpark.errors import ArchivedRange, StorageError
from smartpark.settings import DatabaseSettings
from smartpark.tenancy import Role, Scope
from storage import Storage, TelemetryRow
from storage.archive import Archive, ArchiveFiles, Finding
from storage.archive.manifest import parse, sign
from storage.archive.segment import decode, rows_of
from storage.coverage import CoverageStore, Selection
from storage.kpis import KpiStore
from storage.queries import Filters, ReadingOut
from storage.signing import Signer, Verifier

pytestmark = pytest.mark.integration

TZ = "Asia/Shanghai"  # UTC+8: local days are 16:00..16:00 UTC
NOW = datetime(2026, 3, 5, 12, 0, tzinfo=UTC)  # local 2026-03-05 20:00
DAYS = [date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)]
KEY = Ed25519PrivateKey.generate()


def local_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(hours=8)


def day_rows(day: date, enterprise: str = "e1", park: str = "p1") -> list[TelemetryRow]:
    """Two meters every 10 minutes of a local day: a power (a few significant
    digits) and an energy counter (increasing, reset once on the second day)."""
    rows = []
    start = local_midnight(day)
    base = (day - DAYS[0]).days * 1000.0
    for i in range(144):
        t = start + timedelta(minutes=10 * i)
        power = round(120 + (i % 17) * 0.7, 1)
        rows.append(TelemetryRow(t, park, enterprise, f"{enterprise}-m1",
                                 "active_power", power, "N", i))  # fmt: skip
        energy = base + i * 2.5
        reset = "rollover" if day == DAYS[1] and i == 50 else None
        rows.append(TelemetryRow(t, park, enterprise, f"{enterprise}-m2",
                                 "active_energy", energy, "N", i, reset))  # fmt: skip
    return rows


async def register(storage: Storage, enterprise: str = "e1", park: str = "p1") -> None:
    async with storage.connection() as conn:
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, name, timezone) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING"
            ).format(sql.Identifier(storage.schema, "parks")),
            (park, park, TZ),
        )
        await conn.execute(
            sql.SQL("INSERT INTO {} (id, park, name) VALUES (%s, %s, %s)").format(
                sql.Identifier(storage.schema, "enterprises")
            ),
            (enterprise, park, enterprise),
        )


async def execute(storage: Storage, query: str, *params: object) -> int:
    """Run ``query`` with ``{t}`` for telemetry and ``{s}`` for series."""
    async with storage.connection() as conn:
        cur = await conn.execute(
            sql.SQL(query).format(
                t=sql.Identifier(storage.schema, "telemetry"),
                s=sql.Identifier(storage.schema, "series"),
            ),
            params,
        )
        return cur.rowcount


@pytest.fixture
async def storage(pg_dsn: str, db_schema: str) -> AsyncIterator[Storage]:
    cfg = DatabaseSettings(dsn=SecretStr(pg_dsn), schema=db_schema, dialect="postgres")
    async with Storage(cfg, clock=lambda: int(NOW.timestamp() * 1000)) as s:
        await s.migrate()
        await register(s)
        for day in [*DAYS, date(2026, 3, 5)]:
            await s.telemetry.write(day_rows(day))
        yield s


async def rollup_rows(storage: Storage) -> list[tuple[object, ...]]:
    async with storage.connection() as conn:
        cur = await conn.execute(
            sql.SQL("SELECT * FROM {} ORDER BY 1, 2").format(
                sql.Identifier(storage.schema, "telemetry_1h")
            )
        )
        return await cur.fetchall()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def archive(storage: Storage, root: Path) -> Archive:
    return make_archive(storage, str(root))


def make_archive(storage: Storage, url: str, key: Ed25519PrivateKey = KEY) -> Archive:
    return Archive(
        storage, ArchiveFiles(url), seal_delay=timedelta(hours=2),
        signer=Signer(key), verifier=Verifier([KEY.public_key()]),
    )  # fmt: skip


def kinds(findings: list[Finding]) -> list[str]:
    return sorted({f.kind for f in findings})


def manifest_files(root: Path) -> list[Path]:
    return matching(root, "*.manifest.json")


def matching(root: Path, pattern: str) -> list[Path]:
    return sorted(root.rglob(pattern))


async def test_seal_writes_one_chained_segment_per_due_day_once(
    storage: Storage, archive: Archive, root: Path
) -> None:
    first = await archive.seal(until=DAYS[0])
    assert first.written == [("e1", DAYS[0], "seal", 288)]
    report = await archive.seal()
    # 03-04 is due but has no rows; 03-05 is not due yet
    assert report.written == [("e1", d, "seal", 288) for d in DAYS[1:]]
    assert not report.problems
    assert (await archive.seal()).written == []  # idempotent
    files = manifest_files(root)
    assert len(files) == 3
    previous = None
    for path in files:
        data = path.read_bytes()
        m = parse(data)
        assert m.previous == previous
        assert (m.time_zone, m.kind) == (TZ, "seal")
        assert m.row_count == 288
        assert m.columns["value"]["nulls"] == 0
        assert m.columns["reset"]["nulls"] == (287 if m.day == "2026-03-02" else 288)
        previous = hashlib.sha256(data).hexdigest()
        segment = decode((root / m.segment_path).read_bytes())
        rows = rows_of(segment)
        assert {r.device for r in rows} == {"e1-m1", "e1-m2"}
        assert rows == sorted(rows, key=lambda r: (r.device, r.metric, r.time))
        assert all(r.unit in ("kW", "kWh") for r in rows)
    v = await archive.verify()
    assert v.findings == []
    assert (v.manifests, v.segments, v.rows_compared) == (3, 3, 864)


async def test_a_flipped_value_is_found_with_its_key(
    storage: Storage, archive: Archive
) -> None:
    await archive.seal()
    t = local_midnight(DAYS[1]) + timedelta(minutes=30)
    assert (
        await execute(
            storage,
            "UPDATE {t} SET value = value + 0.1 WHERE time = %s AND series_id ="
            " (SELECT id FROM {s} WHERE device = 'e1-m1')",
            t,
        )
        == 1
    )
    findings = (await archive.verify()).findings
    assert [(f.kind, f.day) for f in findings] == [("changed", DAYS[1])]
    text = str(findings[0])
    assert "device=e1-m1 metric=active_power data_type=realtime stat=value" in text
    assert t.isoformat() in text
    assert "value 122.1 -> 122.19999999999999" in text


async def test_a_deleted_and_an_inserted_row_are_found(
    storage: Storage, archive: Archive
) -> None:
    await archive.seal()
    gone = local_midnight(DAYS[0]) + timedelta(minutes=100)
    assert (
        await execute(
            storage,
            "DELETE FROM {t} WHERE time = %s AND series_id ="
            " (SELECT id FROM {s} WHERE device = 'e1-m2')",
            gone,
        )
        == 1
    )
    extra = local_midnight(DAYS[2]) + timedelta(minutes=5)
    assert (
        await execute(
            storage,
            "INSERT INTO {t} (time, seq, value, series_id) SELECT %s, 999, 1.0, id"
            " FROM {s} WHERE device = 'e1-m1'",
            extra,
        )
        == 1
    )
    findings = (await archive.verify()).findings
    assert [(f.kind, f.day) for f in findings] == [
        ("deleted", DAYS[0]), ("inserted", DAYS[2]),
    ]  # fmt: skip
    assert f"device=e1-m2 metric=active_energy data_type=realtime stat=value" \
        f" time={gone.isoformat()}" in findings[0].detail  # fmt: skip
    assert "device=e1-m1" in findings[1].detail
    assert extra.isoformat() in findings[1].detail


async def test_two_swapped_segments_are_found(archive: Archive, root: Path) -> None:
    await archive.seal()
    first, second = matching(root, "*.parquet")[:2]
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    findings = (await archive.verify()).findings
    assert [(f.kind, f.day) for f in findings] == [
        ("segment", DAYS[0]), ("segment", DAYS[1]),
    ]  # fmt: skip
    assert "changed, swapped or replaced" in findings[0].detail


async def test_a_manifest_resigned_with_another_key_is_named(
    archive: Archive, root: Path
) -> None:
    await archive.seal()
    path = manifest_files(root)[1]
    forged = sign(parse(path.read_bytes()), Signer(Ed25519PrivateKey.generate()))
    path.write_bytes(forged.file_bytes())
    findings = (await archive.verify()).findings
    signature = [f for f in findings if f.kind == "signature"]
    assert len(signature) == 1
    assert signature[0].day == DAYS[1]
    assert path.name in signature[0].detail
    assert "not known" in signature[0].detail
    # the rewritten file also no longer matches the index nor the next link
    assert kinds(findings) == ["chain", "manifest", "signature"]


async def test_two_swapped_manifests_break_the_chain(
    archive: Archive, root: Path
) -> None:
    await archive.seal()
    first, second = manifest_files(root)[:2]
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    findings = (await archive.verify()).findings
    assert "chain" in kinds(findings)
    assert any("swapped or reordered" in f.detail for f in findings)


async def test_late_rows_become_an_amendment_and_the_chain_stays_valid(
    storage: Storage, archive: Archive, root: Path
) -> None:
    await archive.seal()
    late = [
        r._replace(time=r.time + timedelta(minutes=5), seq=r.seq + 10_000)
        for r in day_rows(DAYS[1])[:6]
    ]
    await storage.telemetry.write(late)
    assert kinds((await archive.verify()).findings) == ["inserted"]
    report = await archive.seal()
    assert report.written == [("e1", DAYS[1], "amendment", 6)]
    assert (await archive.seal()).written == []
    v = await archive.verify()
    assert v.findings == []
    assert v.manifests == 4
    assert v.rows_compared == 870
    amendment = [parse(p.read_bytes()) for p in manifest_files(root)
                 if "amendment" in p.name]  # fmt: skip
    assert len(amendment) == 1
    assert amendment[0].position == 4
    # every sealed segment is still the one first written
    seals = [p.name for p in matching(root, "*-seal-*.parquet")]
    assert len(seals) == 3


async def test_retention_evicts_only_verified_days_and_reads_stay_the_same(
    storage: Storage, archive: Archive
) -> None:
    scope = Scope(Role.REGULATOR)
    start, end = local_midnight(DAYS[0]), local_midnight(date(2026, 3, 6))
    f = Filters(data_type=None, stat=None)

    async def read_all() -> list[ReadingOut]:
        page = await storage.queries.readings(
            scope, f, start=start, end=end, limit=100_000
        )
        streamed = [
            r async for chunk in storage.queries.stream_readings(
                scope, f, start=start, end=end, chunk=100
            ) for r in chunk
        ]  # fmt: skip
        assert streamed == page
        return list(page)

    before = await read_all()
    assert len(before) == 4 * 288
    await archive.seal()
    # a tampered day is not evicted
    t = local_midnight(DAYS[2]) + timedelta(minutes=30)
    await execute(storage, "UPDATE {t} SET quality = 'M' WHERE time = %s", t)
    changed = [r for r in before if r.time == t]
    await storage.telemetry.refresh_rollups()
    rollups = await rollup_rows(storage)
    report = await archive.retain(older_than_days=2)  # days before 03-03
    assert [(e, d) for e, d, _ in report.evicted] == [("e1", DAYS[0]), ("e1", DAYS[1])]
    assert [(f.kind, f.day) for f in report.findings] == [("changed", DAYS[2])] * 2
    assert await storage.telemetry.count_rows() == 2 * 288
    after = await read_all()
    expected = [replace(r, quality="M") if r in changed else r for r in before]
    assert after == expected
    # paging through the seam gives the same rows
    paged, after_key = [], None
    while True:
        page = await storage.queries.readings(
            scope, f, start=start, end=end, after=after_key, limit=97
        )
        if not page:
            break
        paged += page
        after_key = page[-1].key
    assert paged == expected
    # rollups stay, also through a refresh; a second retain evicts nothing more
    await storage.telemetry.refresh_rollups()
    assert await rollup_rows(storage) == rollups
    again = await archive.retain(older_than_days=2)
    assert again.evicted == []


async def test_seal_needs_the_park_in_the_registry(
    storage: Storage, archive: Archive
) -> None:
    await storage.telemetry.write(day_rows(DAYS[0], "e9", "p9"))
    report = await archive.seal()
    assert [str(p) for p in report.problems] == [
        "unsealable: enterprise e9: park p9 has no valid time zone in the registry;"
        " its days are not sealed"
    ]


async def test_an_fsspec_memory_url_holds_the_archive(
    storage: Storage, uid: str
) -> None:
    archive = make_archive(storage, f"memory://archive-{uid}")
    assert len((await archive.seal()).written) == 3
    assert (await archive.verify()).findings == []
    files = ArchiveFiles(f"memory://archive-{uid}")
    listed = files.list("e1")
    assert len(listed) == 6
    assert not any(".tmp-" in p for p in listed)
    path = next(p for p in listed if p.endswith(".parquet"))
    files._fs.pipe_file(files._full(path), b"not parquet")
    assert kinds((await archive.verify()).findings) == ["segment"]


def test_the_cli_seals_verifies_and_names_each_finding(
    pg_dsn: str, db_schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from storage.archive.cli import main
    from storage.signing import generate_private_key

    cfg = DatabaseSettings(dsn=SecretStr(pg_dsn), schema=db_schema, dialect="postgres")

    async def prepare() -> None:
        async with Storage(cfg) as s:
            await s.migrate()
            await register(s)
            for day in DAYS:
                await s.telemetry.write(day_rows(day))

    async def flip() -> None:
        async with Storage(cfg) as s:
            t = local_midnight(DAYS[2]) + timedelta(minutes=10)
            await execute(s, "UPDATE {t} SET seq = seq + 1 WHERE time = %s", t)

    asyncio.run(prepare())
    for name, value in {
        "DATABASE__DSN": pg_dsn, "DATABASE__SCHEMA": db_schema,
        "SIGNING__PRIVATE_KEY": generate_private_key(),
        "ARCHIVE__URL": str(tmp_path / "archive"), "ARCHIVE__SEAL_DELAY": "2h",
    }.items():  # fmt: skip
        monkeypatch.setenv(f"SMARTPARK_{name}", value)
    assert main(["seal"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"sealed seal: e1 {d} (288 rows)" for d in DAYS]
    assert main(["seal"]) == 0
    assert capsys.readouterr().out == "nothing to seal\n"
    assert main(["verify"]) == 0
    head = hashlib.sha256(manifest_files(tmp_path / "archive")[-1].read_bytes())
    assert capsys.readouterr().out == (
        f"head e1 position 3 sha256 {head.hexdigest()}\n"
        "0 findings: 1 enterprises, 3 manifests, 3 segments verified,"
        " 864 archived rows compared with the database\n"
    )
    asyncio.run(flip())
    assert main(["verify", "--enterprise", "e1"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4  # two series changed at that time, head, summary
    assert lines[0].startswith(f"FINDING changed: enterprise e1 {DAYS[2]}: ")
    assert "seq 1 -> 2" in lines[0]
    assert main(["retain", "--older-than", "1"]) == 1
    text = capsys.readouterr().out
    assert "evicted: e1 2026-03-01 (288 rows)" in text
    assert "evicted: e1 2026-03-03" not in text
    assert "2 days evicted, 2 findings" in text


async def test_late_rows_of_an_evicted_day_are_read_amended_then_evicted(
    storage: Storage, archive: Archive
) -> None:
    scope = Scope(Role.REGULATOR)
    start, end = local_midnight(DAYS[0]), local_midnight(DAYS[2])
    f = Filters(data_type=None, stat=None)
    await archive.seal()
    before = await storage.queries.readings(scope, f, start=start, end=end, limit=9999)
    await archive.retain(older_than_days=2)
    assert await storage.telemetry.count_rows() == 2 * 288
    old = day_rows(DAYS[0])[10]  # redelivered after the eviction
    new = old._replace(time=old.time + timedelta(seconds=1), seq=50_000)
    await storage.telemetry.write([old, new])
    page = await storage.queries.readings(scope, f, start=start, end=end, limit=9999)
    assert len(page) == len(before) + 1
    assert next(r for r in page if r.seq == 50_000).time == new.time
    found = (await archive.verify()).findings
    assert [(x.kind, x.day) for x in found] == [("inserted", DAYS[0])]
    assert new.time.isoformat() in found[0].detail
    report = await archive.retain(older_than_days=2)
    assert report.seal.written == [("e1", DAYS[0], "amendment", 1)]
    assert report.findings == []
    assert report.evicted == [("e1", DAYS[0], 2)]
    assert await storage.telemetry.count_rows() == 2 * 288
    again = await storage.queries.readings(scope, f, start=start, end=end, limit=9999)
    assert again == page


async def test_exports_merge_two_enterprises_evicted_on_the_same_days(
    storage: Storage, archive: Archive
) -> None:
    await register(storage, "e2")
    for day in DAYS:
        await storage.telemetry.write(day_rows(day, "e2"))
    scope = Scope(Role.REGULATOR)
    start, end = local_midnight(DAYS[0]), local_midnight(date(2026, 3, 6))
    f = Filters(data_type=None, stat=None)
    before = await storage.queries.readings(scope, f, start=start, end=end, limit=9999)
    await archive.retain(older_than_days=2)
    assert await storage.telemetry.count_rows() == 3 * 288
    streamed = [
        r async for chunk in storage.queries.stream_readings(
            scope, f, start=start, end=end, chunk=7
        ) for r in chunk
    ]  # fmt: skip
    assert streamed == before
    one = await storage.queries.readings(
        Scope(Role.ENTERPRISE, "p1", "e2"), f, start=start, end=end, limit=9999
    )
    assert one == [r for r in before if r.enterprise == "e2"]


async def test_a_file_the_index_does_not_name_is_reported(
    archive: Archive, root: Path
) -> None:
    await archive.seal()
    stray = manifest_files(root)[0].with_name("000009-seal-0.manifest.json")
    stray.write_bytes(b"{}")
    found = (await archive.verify()).findings
    assert [x.kind for x in found] == ["orphan"]
    assert stray.name in found[0].detail


async def test_late_rows_are_not_amended_onto_a_changed_segment(
    storage: Storage, archive: Archive, root: Path
) -> None:
    await archive.seal()
    segment = matching(root, "*.parquet")[0]
    segment.write_bytes(segment.read_bytes() + b"x")
    late = day_rows(DAYS[0])[0]._replace(seq=7777, time=local_midnight(DAYS[0]))
    await storage.telemetry.write([late._replace(time=late.time + timedelta(0, 1))])
    report = await archive.seal()
    assert report.written == []
    assert [(p.kind, p.day) for p in report.problems] == [("segment", DAYS[0])]
    assert "differs from its manifest" in report.problems[0].detail


async def test_a_second_seal_while_one_runs_is_refused_and_writes_nothing(
    storage: Storage, archive: Archive, root: Path, pg_dsn: str, db_schema: str
) -> None:
    key = f"smartpark.archive.{db_schema}"
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as other:
        await other.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
        with pytest.raises(StorageError, match="another archive seal"):
            await archive.seal()
        with pytest.raises(StorageError, match="another archive seal"):
            await archive.retain(older_than_days=1)
        assert manifest_files(root) == []
        # given back (a closed connection's lock goes a moment later, not at once)
        await other.execute(
            "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,)
        )
    assert len((await archive.seal()).written) == 3
    assert len((await archive.seal()).written) == 0


async def test_figures_from_raw_rows_refuse_evicted_days_and_name_them(
    storage: Storage, archive: Archive
) -> None:
    """Coverage, KPIs and counter consumption count the hot table's raw rows: over
    an evicted day they would leave it out, so they refuse, naming it; rollup
    aggregates keep answering, and later days are unaffected."""
    await storage.telemetry.refresh_rollups()
    await archive.retain(older_than_days=2)  # evicts 03-01 and 03-02
    zone = ZoneInfo(TZ)
    scope = Scope(Role.REGULATOR)
    evicted = local_midnight(DAYS[1]), local_midnight(DAYS[2])
    hot = local_midnight(DAYS[2]), local_midnight(date(2026, 3, 4))
    f = Filters(park="p1", data_type=None, stat=None)

    async def aggregate(span: tuple[datetime, datetime], consumption: bool) -> str:
        _, used = await storage.queries.aggregates(
            scope, f, start=span[0], end=span[1], interval="1h", tz=zone,
            consumption=consumption,
        )  # fmt: skip
        return used

    with pytest.raises(ArchivedRange, match="e1 2026-03-02"):
        await aggregate(evicted, consumption=True)
    assert await aggregate(evicted, consumption=False) == "rollup"
    assert await aggregate(hot, consumption=True) in {"raw", "rollup"}
    coverage = CoverageStore(storage)
    with pytest.raises(ArchivedRange, match="coverage figures"):
        await coverage.figures(scope, Selection("p1"), first=DAYS[1], last=DAYS[1],
                               unit="day", tz=zone)  # fmt: skip
    assert await coverage.figures(scope, Selection("p1"), first=DAYS[2],
                                  last=DAYS[2], unit="day", tz=zone)  # fmt: skip
    period = kpi.periods("day", DAYS[1], DAYS[2], zone)
    kpis = KpiStore(storage, storage.queries)
    with pytest.raises(ArchivedRange, match="KPIs"):
        await kpis.enterprise(scope, "e1", kind="day", periods=period, tz=zone,
                              coefficients=kpi.shipped())  # fmt: skip
