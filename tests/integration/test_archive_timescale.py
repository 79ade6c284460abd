"""The sealed archive on the TimescaleDB build on PGlite: seal, verify, a flipped
value found. PGlite serves one connection at a time: the storage's pool has one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from smartpark.settings import DatabaseSettings
from storage import Dialect, Storage
from storage.archive import Archive, ArchiveFiles
from storage.signing import Signer, Verifier
from tests.integration.test_archive import (
    DAYS,
    KEY,
    NOW,
    day_rows,
    execute,
    local_midnight,
    register,
)

pytestmark = [pytest.mark.integration, pytest.mark.timescale]


@pytest.fixture
def ts_schema(timescale_dsn: str, uid: str) -> Iterator[str]:
    name = f"t_{uid}"
    yield name
    with psycopg.connect(timescale_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
        )


@pytest.fixture
async def storage(timescale_dsn: str, ts_schema: str) -> AsyncIterator[Storage]:
    cfg = DatabaseSettings(
        dsn=SecretStr(timescale_dsn), schema=ts_schema, bulk_method="insert"
    )
    async with Storage(cfg, clock=lambda: int(NOW.timestamp() * 1000)) as s:
        assert s.dialect is Dialect.TIMESCALE
        await s.migrate()
        await register(s)
        for day in [*DAYS, date(2026, 3, 5)]:
            await s.telemetry.write(day_rows(day))
        yield s


async def test_seal_and_verify_on_timescale(storage: Storage, tmp_path: Path) -> None:
    archive = Archive(
        storage, ArchiveFiles(str(tmp_path / "archive")),
        seal_delay=timedelta(hours=2), signer=Signer(KEY),
        verifier=Verifier([KEY.public_key()]),
    )  # fmt: skip
    report = await archive.seal()
    assert report.written == [("e1", d, "seal", 288) for d in DAYS]
    assert (await archive.seal()).written == []
    v = await archive.verify()
    assert v.findings == []
    assert v.rows_compared == 864
    t = local_midnight(DAYS[0]) + timedelta(minutes=40)
    assert (
        await execute(
            storage,
            "UPDATE {t} SET value = -1 WHERE time = %s AND series_id ="
            " (SELECT id FROM {s} WHERE device = 'e1-m2')",
            t,
        )
        == 1
    )
    findings = (await archive.verify()).findings
    assert [(f.kind, f.day) for f in findings] == [("changed", DAYS[0])]
    assert "device=e1-m2 metric=active_energy" in findings[0].detail
