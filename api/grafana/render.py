"""The park overview dashboard drawn with matplotlib, for where no Grafana server
is at hand (the README's picture, a report, a terminal).

Contract: :func:`render_park_overview` builds the park's overview dashboard as
provisioning does (:func:`api.grafana.dashboards.all_dashboards` over the
registry), resolves its template variables by their own queries, expands every
panel query with the port of Grafana's macros (:func:`api.grafana.macros.expand`)
and runs it logged in as the park operators' organisation role
(:func:`storage.grafana_queries.run_as`) — the same SQL, the same role, the same
rows Grafana would show. :func:`draw` then lays the panels out on the
dashboard's own grid (its ``gridPos``), each titled with its dashboard title:
tables as tables, stat panels as big numbers, bar charts as bars with the
quota / limit columns as lines, time series as lines with their threshold
steps as lines. Every number on the picture is a cell of a query result
(:attr:`Rendered.texts` lists every text drawn); a query that returns no row
shows "No data", as Grafana does. Dashboard annotations (alerts) are not drawn:
Grafana shows them on time axes, and the park overview has none.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from grafana_foundation_sdk.models import dashboard as dashboard_models
from matplotlib.axes import Axes
from matplotlib.dates import DateFormatter, date2num
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from api.grafana.dashboards import Built, all_dashboards, load_registry
from api.grafana.macros import TimeRange, Variable, expand
from smartpark.errors import UsageError
from smartpark.tenancy import Role, Scope
from storage import Storage
from storage.grafana_queries import QueryResult, run_as
from storage.grafana_roles import GrafanaRole, GrafanaRoles
from storage.secretbox import SecretBox

GRID_COLUMNS = 24  # Grafana's grid width
ROW_INCHES = 0.42  # one grid row (30 px in Grafana) on the picture
WIDTH_INCHES = 16.0
HEADER_INCHES = 0.9
TOP_PAD_INCHES = 0.45
BOTTOM_PAD_INCHES = 0.4
# columns a bar chart draws as a level (a line) rather than as a bar
LEVEL_COLUMNS = ("quota_", "limit")
UNIT_SUFFIX = {"percent": " %", "tce": " tce", "kwatth": " kWh", "m3": " m³"}


@dataclass(slots=True)
class Rendered:
    """What was drawn: each panel's query result by panel title, and every text
    put on the picture (titles, labels, cells, numbers)."""

    results: dict[str, QueryResult]
    texts: list[str] = field(default_factory=list)


async def render_park_overview(
    storage: Storage, dsn: str, box: SecretBox, *, park: str, rng: TimeRange,
    out: Path,
) -> Rendered:  # fmt: skip
    """Run the park overview's panel queries for ``park`` over ``rng`` as the
    park operators' role (created if missing, as provisioning does) and write the
    picture to ``out`` (PNG)."""
    registry = await load_registry(storage.registry)
    board = all_dashboards(registry).get(f"sp-park-{park}")
    if board is None:
        raise UsageError(f"--park {park}: no active park of that id in the registry")
    [zone] = [p.timezone for p in registry.parks if p.id == park]
    role, _ = await GrafanaRoles(storage, box).ensure(Scope(Role.OPERATOR, park))
    results = await run_panels(dsn, role, board, rng)
    tz = ZoneInfo(zone)
    fig, rendered = draw(board, results, rng, tz, role.role)
    with warnings.catch_warnings():
        # a name the bundled font lacks (e.g. Chinese) is drawn as boxes
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(out, format="png", dpi=90)
    return rendered


async def run_panels(
    dsn: str, role: GrafanaRole, board: Built, rng: TimeRange
) -> dict[str, QueryResult]:
    """Every panel query of ``board`` as Grafana runs it on opening: variables
    first (an include-all variable at "All" becomes every value its query
    returns), then each panel, by title. A panel whose columns differ from the
    ones its query states is an error, not a picture."""
    variables: dict[str, Variable] = {}
    for q in board.queries:
        if q.kind == "variable":
            default = board.defaults[q.title]
            got = await run_as(dsn, role, expand(q.sql, rng, variables))
            values = [str(r[0]) for r in got.rows]
            if default.include_all and not default.value:
                variables[q.title] = Variable(values, multi=True, include_all=True)
            elif isinstance(default.value, str) and default.value not in values:
                raise UsageError(
                    f"{board.uid}: variable {q.title} = {default.value!r} is not"
                    f" among the values {role.role} can see: {values}"
                )
            else:
                variables[q.title] = default
    results: dict[str, QueryResult] = {}
    for q in board.queries:
        if q.kind != "panel":
            continue
        got = await run_as(dsn, role, expand(q.sql, rng, variables))
        if got.columns != q.columns:
            raise ValueError(
                f"{board.uid} / {q.title}: columns {got.columns}, expected {q.columns}"
            )
        results[q.title] = got
    return results


# -- drawing (pure: no I/O) -------------------------------------------------------


def draw(
    board: Built, results: Mapping[str, QueryResult], rng: TimeRange,
    tz: ZoneInfo, role: str,
) -> tuple[Figure, Rendered]:  # fmt: skip
    """The dashboard's panels on its grid, each from its query result."""
    rendered = Rendered(dict(results))
    panels = [
        p for p in board.model.panels or []
        if isinstance(p, dashboard_models.Panel) and p.title in results
    ]  # fmt: skip
    rows = max((p.grid_pos.y + p.grid_pos.h for p in panels if p.grid_pos), default=1)
    height = HEADER_INCHES + rows * ROW_INCHES
    fig = Figure(figsize=(WIDTH_INCHES, height))
    header = HEADER_INCHES / height
    title = board.title
    span = (
        f"{rng.start.astimezone(tz):%Y-%m-%d %H:%M:%S} to"
        f" {rng.end.astimezone(tz):%Y-%m-%d %H:%M:%S} ({tz.key})"
    )
    fig.text(0.01, 1 - 0.35 * header, title, fontsize=16, weight="bold")
    fig.text(
        0.01, 1 - 0.8 * header,
        f"{board.uid}, {span}: each panel's own query, run as database role {role}",
        fontsize=9, color="0.35",
    )  # fmt: skip
    rendered.texts += [title, span]
    for panel in panels:
        pos = panel.grid_pos
        assert pos is not None
        # inches from the bottom: room for the title above, tick labels below
        bottom = (rows - pos.y - pos.h) * ROW_INCHES + BOTTOM_PAD_INCHES
        rect = (
            pos.x / GRID_COLUMNS + 0.015,
            bottom / height,
            pos.w / GRID_COLUMNS - 0.03,
            (pos.h * ROW_INCHES - BOTTOM_PAD_INCHES - TOP_PAD_INCHES) / height,
        )
        fig.patches.append(Rectangle(
            (pos.x / GRID_COLUMNS + 0.004, (rows - pos.y - pos.h) * ROW_INCHES / height
             + 0.004), pos.w / GRID_COLUMNS - 0.008,
            pos.h * ROW_INCHES / height - 0.008, transform=fig.transFigure,
            facecolor="none", edgecolor="0.8", linewidth=1,
        ))  # fmt: skip
        ax = fig.add_axes(rect)
        unit = _unit(panel)
        name = str(panel.title)
        ax.set_title(name, fontsize=11, loc="left", weight="bold")
        rendered.texts.append(name)
        result = results[name]
        if not result.rows:
            _no_data(ax)
            rendered.texts.append("No data")
        elif panel.type_val == "stat":
            rendered.texts += _stat(ax, result, unit)
        elif panel.type_val == "barchart":
            rendered.texts += _bars(ax, result, unit)
        elif panel.type_val == "timeseries":
            rendered.texts += _lines(ax, result, _thresholds(panel), tz)
        else:
            rendered.texts += _table(ax, result, unit, tz, pos.h)
    return fig, rendered


def _unit(panel: Any) -> str:
    config = panel.field_config
    return str(config.defaults.unit) if config and config.defaults.unit else ""


def _thresholds(panel: Any) -> list[float]:
    config = panel.field_config
    steps = (
        config.defaults.thresholds.steps
        if config and config.defaults.thresholds
        else []
    )
    return [float(s.value) for s in steps if s.value is not None]


def _no_data(ax: Axes) -> None:
    ax.axis("off")
    ax.text(0.5, 0.5, "No data", ha="center", va="center", fontsize=14,
            color="0.5", transform=ax.transAxes)  # fmt: skip


def fmt(value: Any, tz: ZoneInfo | None = None) -> str:
    """A cell as the picture shows it: numbers to 4 significant digits (whole
    numbers whole), times in the park's zone, nothing for NULL."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return f"{value.astimezone(tz):%Y-%m-%d %H:%M:%S}"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float | Decimal):
        number = float(value)
        if number == int(number) and abs(number) < 1e15:
            return str(int(number))
        return f"{number:.4g}"
    return str(value)


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _table(ax: Axes, result: QueryResult, unit: str, tz: ZoneInfo,
           grid_h: int) -> list[str]:  # fmt: skip
    """The rows that fit the panel (Grafana scrolls; the picture says how many
    more there are)."""
    ax.axis("off")
    fits = max(2, 2 * grid_h - 4)
    shown = result.rows if len(result.rows) <= fits else result.rows[: fits - 1]
    suffix = UNIT_SUFFIX.get(unit, "")
    cells = [
        [fmt(v, tz) + (suffix if _numeric(v) else "") for v in row] for row in shown
    ]
    width = 0.98 / len(result.columns)  # "upper left" sits 0.02 in
    table = ax.table(cellText=cells, colLabels=list(result.columns),
                     colWidths=[width] * len(result.columns),
                     loc="upper left", cellLoc="left")  # fmt: skip
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for (r, _), cell in table.get_celld().items():
        cell.set_height(1 / (fits + 1))
        cell.set_edgecolor("0.85")
        if r == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("0.93")
    texts = [*result.columns, *(c for row in cells for c in row)]
    if len(shown) < len(result.rows):
        more = f"... {len(result.rows) - len(shown)} more rows"
        ax.text(0.0, 0.0, more, fontsize=8, color="0.4", transform=ax.transAxes)
        texts.append(more)
    return texts


def _split(result: QueryResult) -> tuple[list[int], list[int]]:
    """Label columns (no number in any row) and value columns (a number in some
    row; NULL elsewhere) of a result."""
    width = len(result.columns)
    values = [i for i in range(width) if any(_numeric(r[i]) for r in result.rows)]
    labels = [i for i in range(width) if i not in values]
    return labels, values


def _stat(ax: Axes, result: QueryResult, unit: str) -> list[str]:
    """One big number per row and value column, named by the row's labels."""
    ax.axis("off")
    labels, values = _split(result)
    items = [
        (" ".join(fmt(row[i]) for i in labels) or result.columns[v], fmt(row[v]))
        for row in result.rows for v in values
    ]  # fmt: skip
    suffix = UNIT_SUFFIX.get(unit, "")
    texts = []
    for n, (label, number) in enumerate(items):
        x = (n + 0.5) / len(items)
        ax.text(x, 0.45, number + suffix, ha="center", va="center", fontsize=34,
                weight="bold", color="#c0392b" if label.startswith("critical")
                else "#d68910", transform=ax.transAxes)  # fmt: skip
        ax.text(x, 0.08, label, ha="center", va="center", fontsize=11,
                transform=ax.transAxes)  # fmt: skip
        texts += [number + suffix, label]
    return texts


def _bars(ax: Axes, result: QueryResult, unit: str) -> list[str]:
    """Value columns as grouped bars per row label; quota / limit columns as a
    line over their row's group, labelled with their value."""
    labels, values = _split(result)
    bars = [v for v in values if not result.columns[v].startswith(LEVEL_COLUMNS)]
    levels = [v for v in range(len(result.columns))
              if result.columns[v].startswith(LEVEL_COLUMNS)]  # fmt: skip
    names = [" ".join(fmt(row[i]) for i in labels
                      if not result.columns[i].startswith(LEVEL_COLUMNS))
             for row in result.rows]  # fmt: skip
    width = 0.8 / max(1, len(bars))
    texts: list[str] = [*names]
    for k, v in enumerate(bars):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(result.rows))]
        ys = [float(row[v]) if row[v] is not None else math.nan for row in result.rows]
        ax.bar(xs, ys, width=width * 0.9, label=result.columns[v])
        for x, row in zip(xs, result.rows, strict=True):
            if row[v] is not None:
                ax.annotate(fmt(row[v]), (x, float(row[v])), ha="center",
                            va="bottom", fontsize=8)  # fmt: skip
                texts.append(fmt(row[v]))
        texts.append(result.columns[v])
    for v in levels:
        for i, row in enumerate(result.rows):
            if row[v] is None:
                continue
            level = float(row[v])
            ax.hlines(level, i - 0.45, i + 0.45, colors="#c0392b", linestyles="--")
            text = f"{result.columns[v]} {fmt(row[v])}"
            ax.annotate(text, (i + 0.45, level), ha="right", va="bottom",
                        fontsize=8, color="#c0392b",
                        bbox={"facecolor": "white", "edgecolor": "none",
                              "pad": 1})  # fmt: skip
            texts.append(text)
    ax.set_xticks(range(len(result.rows)), names, fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_ylabel(unit, fontsize=8)
    ax.margins(y=0.25)
    if len(bars) > 1:
        ax.legend(fontsize=8)
    return texts


def _lines(ax: Axes, result: QueryResult, thresholds: Sequence[float],
           tz: ZoneInfo) -> list[str]:  # fmt: skip
    """A time series: the ``time`` column against each value column (or, with a
    text column, one line per its value); threshold steps as dashed lines."""
    t = result.columns.index("time")
    labels, values = _split(result)
    series: dict[str, list[tuple[float, float]]] = {}
    for row in result.rows:
        prefix = " ".join(fmt(row[i]) for i in labels if i != t)
        for v in values:
            name = prefix or result.columns[v]
            y = math.nan if row[v] is None else float(row[v])
            x = float(date2num(row[t]))  # type: ignore[no-untyped-call]
            series.setdefault(name, []).append((x, y))
    for name, points in series.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], label=name,
                linewidth=1.2)  # fmt: skip
    texts = list(series)
    for level in thresholds:
        ax.axhline(level, linestyle="--", color="#c0392b", linewidth=1)
        texts.append(fmt(level))
    ax.xaxis.set_major_formatter(DateFormatter("%m-%d %H:%M", tz=tz))  # type: ignore[no-untyped-call]
    ax.tick_params(labelsize=8)
    if len(series) > 1:
        ax.legend(fontsize=7)
    return texts


def default_range(now: datetime) -> TimeRange:
    """The dashboard's default range, ``now-2d`` to ``now``."""
    return TimeRange(now - timedelta(days=2), now)
