"""The monthly report as a PDF with plots, a PNG of its first page, and a CSV of
the same figures.

A :class:`Report` is plain data (built by :mod:`api.report.monthly` from the
stores): a summary table of figures, each with its definition, then pages of
panels, each panel a few series over the month with the levels it is judged
against (a permit limit, a quota, the GB 21346 levels) drawn as horizontal lines.
Rendering is deterministic for the same report (no "now" is read here; the PDF's
creation date is the report's ``generated_at``), so a report can be regenerated
and compared.

People would rather look than read: every figure of the summary that has a series
behind it has a panel; the CSV carries every number of both, one per row.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Literal

from matplotlib.axes import Axes
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.dates import DateFormatter, date2num
from matplotlib.figure import Figure

PAGE_SIZE = (11.69, 8.27)  # A4 landscape, inches


@dataclass(frozen=True, slots=True)
class Series:
    """One line or set of bars: (time, value) points, ``None`` where there is no
    figure (too little data), drawn as a gap, never as zero."""

    label: str
    points: Sequence[tuple[datetime, float | None]]


@dataclass(frozen=True, slots=True)
class Level:
    """A horizontal line a series is judged against."""

    label: str
    value: float


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    unit: str
    series: Sequence[Series]
    levels: Sequence[Level] = ()
    style: Literal["line", "bar"] = "line"
    note: str = ""  # under the plot: where the numbers come from, what is missing
    tz: tzinfo | None = None  # the time zone the axis' dates are read in


@dataclass(frozen=True, slots=True)
class Page:
    title: str
    panels: Sequence[Panel]


@dataclass(frozen=True, slots=True)
class Item:
    """One line of the summary: a figure, its value as text, its definition."""

    name: str
    value: str
    definition: str


@dataclass(frozen=True, slots=True)
class Report:
    title: str
    subtitle: str  # e.g. "park-1 / coal-power, 2026-11, Asia/Shanghai"
    generated_at: datetime
    summary: Sequence[Item]
    pages: Sequence[Page] = ()
    notes: Sequence[str] = field(default_factory=tuple)


SUMMARY_LINES = 22  # text lines of the summary table that fit on one page


def _summary_chunks(report: Report) -> list[list[list[str]]]:
    """The summary's rows (wrapped), split into pages of at most SUMMARY_LINES."""
    chunks: list[list[list[str]]] = [[]]
    used = 0
    for f in report.summary:
        row = [_wrap(f.name, 30), _wrap(f.value, 24), _wrap(f.definition, 95)]
        lines = max(cell.count("\n") + 1 for cell in row)
        if chunks[-1] and used + lines > SUMMARY_LINES:
            chunks.append([])
            used = 0
        chunks[-1].append(row)
        used += lines
    return chunks


def _summary_figure(report: Report, rows: list[list[str]], first: bool) -> Figure:
    fig = Figure(figsize=PAGE_SIZE)
    fig.text(0.05, 0.93, report.title + ("" if first else " (continued)"),
             fontsize=20, weight="bold")  # fmt: skip
    fig.text(0.05, 0.885, report.subtitle, fontsize=12)
    fig.text(
        0.05, 0.855, f"generated {report.generated_at.isoformat()}",
        fontsize=9, color="0.35",
    )  # fmt: skip
    ax = fig.add_axes((0.05, 0.12, 0.9, 0.7))
    ax.axis("off")
    if rows:
        table = ax.table(
            cellText=rows,
            colLabels=["figure", "value", "definition"],
            colWidths=[0.2, 0.17, 0.63],
            loc="upper left",
            cellLoc="left",
        )
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        cells = table.get_celld()
        for r in range(len(rows) + 1):
            # every cell of a row as high as its tallest text
            lines = max(
                cells[r, c].get_text().get_text().count("\n") + 1 for c in range(3)
            )
            for c in range(3):
                cells[r, c].set_height(0.03 * lines + 0.008)
    if first:
        y = 0.09
        for note in report.notes:
            text = _wrap(note, 170)
            fig.text(0.05, y, text, fontsize=8, color="0.3", va="top")
            y -= 0.02 * (text.count("\n") + 1) + 0.006
    return fig


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    if line:
        lines.append(line)
    return "\n".join(lines)


def _page_figure(page: Page) -> Figure:
    fig = Figure(figsize=PAGE_SIZE)
    fig.suptitle(page.title, fontsize=14, weight="bold")
    n = max(1, len(page.panels))
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, page.panels, strict=False):
        _draw_panel(ax, panel)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def _draw_panel(ax: Axes, panel: Panel) -> None:
    ax.set_title(panel.title, fontsize=10, loc="left")
    ax.set_ylabel(panel.unit, fontsize=8)
    ax.tick_params(labelsize=7)
    drawn = False
    for s in panel.series:
        xs = [date2num(t) for t, _ in s.points]  # type: ignore[no-untyped-call]
        ys = [math.nan if v is None else v for _, v in s.points]
        if not xs:
            continue
        drawn = True
        if panel.style == "bar":
            ax.bar(xs, ys, width=0.8, label=s.label)
        else:
            ax.plot(xs, ys, linewidth=0.9, label=s.label)
    for lv in panel.levels:
        ax.axhline(lv.value, linestyle="--", linewidth=0.9, color="0.2")
        ax.annotate(
            f"{lv.label} {lv.value:g}", xy=(1.0, lv.value), xycoords=("axes fraction",
            "data"), fontsize=7, ha="right", va="bottom",
        )  # fmt: skip
    if not drawn:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no data in this period", ha="center", va="center",
                transform=ax.transAxes, fontsize=10, color="0.4")  # fmt: skip
    else:
        ax.xaxis.set_major_formatter(DateFormatter("%m-%d", tz=panel.tz))  # type: ignore[no-untyped-call]
        if len(panel.series) > 1:
            ax.legend(fontsize=7, loc="upper left")
    if panel.note:
        ax.set_xlabel(panel.note, fontsize=7, color="0.3")


def figures(report: Report) -> Iterator[Figure]:
    """The report's pages as figures: the summary first."""
    for i, rows in enumerate(_summary_chunks(report)):
        yield _summary_figure(report, rows, i == 0)
    for page in report.pages:
        yield _page_figure(page)


def write_pdf(report: Report, path: Path) -> int:
    """Write the report's PDF; returns its page count."""
    pages = 0
    with (
        warnings.catch_warnings(),
        PdfPages(
            path,
            metadata={
                "Title": f"{report.title}: {report.subtitle}",
                "Creator": "smartpark",
                "CreationDate": report.generated_at,
            },
        ) as pdf,
    ):
        # A glyph the bundled font lacks (e.g. a Chinese name) is drawn as a box
        # rather than failing the report.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        for fig in figures(report):
            pdf.savefig(fig)
            pages += 1
    return pages


def write_first_page_png(report: Report, path: Path, dpi: int = 80) -> None:
    """The first page (the summary) as a PNG, e.g. for the README."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        rows = _summary_chunks(report)[0]
        _summary_figure(report, rows, True).savefig(path, format="png", dpi=dpi)


def to_csv(report: Report) -> str:
    """Every number of the report, one per row: the summary's figures, then every
    point of every series and every level, with its page and panel."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["section", "panel", "series", "time", "value", "unit", "definition"])
    for f in report.summary:
        w.writerow(["summary", f.name, "", "", f.value, "", f.definition])
    for page in report.pages:
        for panel in page.panels:
            for s in panel.series:
                for t, v in s.points:
                    w.writerow([
                        page.title, panel.title, s.label, t.isoformat(),
                        "" if v is None else repr(v), panel.unit, "",
                    ])  # fmt: skip
            for lv in panel.levels:
                w.writerow([page.title, panel.title, lv.label, "", repr(lv.value),
                            panel.unit, "level"])  # fmt: skip
    return out.getvalue()
