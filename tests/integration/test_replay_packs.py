"""Pack versions kept for replay: what the live runner records at start and at a
switch, a changed file under a recorded version refused, and which version was in
force over a range."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rules.runner import RulesRunner
from smartpark.settings import Settings
from storage import Storage
from storage.rule_packs import PackConflict, RulePackStore
from tests.support.clients import wait_for

pytestmark = [pytest.mark.integration]

PACK = """\
pack: kept
version: "{version}"
rules:
  - {{id: nh3-slip, kind: threshold, metric: nh3, limit: {limit}}}
"""
T = datetime(2026, 11, 1, tzinfo=UTC)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def test_the_runner_records_its_versions_and_refuses_a_changed_one(
    platform: Settings, tmp_path: Path
) -> None:
    settings = platform
    path = tmp_path / "pack.yaml"
    v1 = PACK.format(version="1", limit=8)
    path.write_text(v1)
    async with Storage(settings.database) as storage:
        await storage.migrate()
        packs = RulePackStore(storage)
        async with RulesRunner(settings, path) as runner:
            [row] = await packs.versions("kept")
            assert (row.version, row.sha256, row.content, row.valid_to) == (
                "1", sha(v1), v1, None,
            )  # fmt: skip
            task = asyncio.create_task(runner.run())
            try:
                v2 = PACK.format(version="2", limit=4)
                path.write_text(v2)
                await wait_for(
                    lambda: runner.stats.pack_version == "2", timeout_s=30, what="v2"
                )
                # version 1 again, with other content: refused, v2 keeps running
                path.write_text(PACK.format(version="1", limit=5))
                await asyncio.sleep(1.5)  # > reload_every_s
                assert runner.pack.version == "2"
            finally:
                runner.stop()
                await task
        first, second = await packs.versions("kept")
        assert (first.version, second.version) == ("1", "2")
        assert first.valid_to == second.valid_from
        assert second.valid_to is None
        assert second.sha256 == sha(v2)
        # a runner started on a recorded version with other content does not start
        path.write_text(PACK.format(version="2", limit=5))
        with pytest.raises(PackConflict, match="recorded with SHA-256"):
            async with RulesRunner(settings, path):
                pass


async def test_the_version_in_force_over_a_range(platform: Settings) -> None:
    async with Storage(platform.database) as storage:
        await storage.migrate()
        packs = RulePackStore(storage)
        texts = {v: PACK.format(version=v, limit=8) for v in ("1", "2")}
        for version, at in (
            ("1", T),
            ("2", T + timedelta(days=2)),
            ("1", T + timedelta(days=3)),
        ):
            await packs.record(
                pack="kept", version=version, sha256=sha(texts[version]),
                content=texts[version], at=at,
            )  # fmt: skip
        spans = await packs.in_force(
            "kept", T - timedelta(days=1), T + timedelta(days=5)
        )
        # nothing before the first record; v1, v2 for a day, v1 again (reopened)
        assert [(s.version.version, s.start, s.end) for s in spans] == [
            ("1", T, T + timedelta(days=2)),
            ("2", T + timedelta(days=2), T + timedelta(days=3)),
            ("1", T + timedelta(days=3), T + timedelta(days=5)),
        ]
        with pytest.raises(PackConflict):
            await packs.record(pack="kept", version="2", sha256=sha("other"),
                               content="other", at=T + timedelta(days=4))  # fmt: skip
        assert [r.valid_to for r in await packs.versions("kept")][1] == T + timedelta(
            days=3
        )
