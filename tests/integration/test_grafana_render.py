"""The park overview picture: the dashboard's own panel queries, run as the park
operators' role over data written through the storage write path, drawn to a
PNG whose figures are exactly the query results."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from api.grafana.dashboards import all_dashboards, load_registry
from api.grafana.macros import TimeRange, Variable, expand
from api.grafana.render import fmt, render_park_overview
from smartpark.errors import UsageError
from storage.secretbox import SecretBox
from tests.support.api import api_settings
from tests.support.grafana_world import END, START, World, grafana_world

pytestmark = pytest.mark.integration

RANGE = TimeRange(START, END)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
async def world(pg_dsn: str, db_schema: str) -> AsyncIterator[World]:
    async with grafana_world(pg_dsn, db_schema) as w:
        yield w


def box(world: World) -> SecretBox:
    return SecretBox.from_settings(
        api_settings(world.dsn, world.storage.schema).webhooks
    )


async def test_the_picture_draws_exactly_what_the_panel_queries_return(
    world: World, tmp_path: Path
) -> None:
    out = tmp_path / "overview.png"
    rendered = await render_park_overview(
        world.storage, world.dsn, box(world), park="p1", rng=RANGE, out=out
    )
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 20_000

    # the same queries, expanded the same way, run on a connection of our own
    # as the park operators' role
    board = all_dashboards(await load_registry(world.storage.registry))["sp-park-p1"]
    variables = {"park": Variable("p1")}
    expected: dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]] = {}
    with world.connect("op-p1") as conn:
        for q in board.queries:
            if q.kind == "panel":
                cur = conn.execute(expand(q.sql, RANGE, variables).encode())
                assert cur.description is not None
                expected[q.title] = (
                    tuple(c.name for c in cur.description), cur.fetchall()
                )  # fmt: skip
    assert sorted(rendered.results) == sorted(expected)
    for title, (columns, rows) in expected.items():
        assert rendered.results[title].columns == columns, title
        assert rendered.results[title].rows == rows, title

    texts = rendered.texts
    # every panel titled as on the dashboard
    for title in expected:
        assert title in texts
    # the stat panel's big numbers: open alerts of p1 by severity
    assert expected["Open alerts by severity"][1] == [("critical", 2), ("warning", 1)]
    assert {"critical", "2", "warning", "1"} <= set(texts)
    # every cell of every table, with the panel's unit
    for row in expected["Coverage"][1]:
        assert f"{fmt(row[2])} %" in texts
    assert "e1-silent" in texts
    for row in expected["Emissions against limits (hourly means)"][1]:
        assert {row[1], row[2], fmt(row[4]), fmt(row[5])} <= set(texts)
    # the bars and the quota drawn as a line, labelled with its value
    for enterprise, tce, quota in expected["Energy today against quota (tce)"][1]:
        assert enterprise in texts
        assert fmt(tce) in texts
        assert f"quota_tce {fmt(quota)}" in texts


async def test_an_unknown_park_is_refused_by_name(world: World, tmp_path: Path) -> None:
    out = tmp_path / "none.png"
    with pytest.raises(UsageError, match="--park nowhere"):
        await render_park_overview(
            world.storage, world.dsn, box(world), park="nowhere", rng=RANGE, out=out
        )
    assert not out.exists()
