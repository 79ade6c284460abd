"""A segment: the rows of one enterprise-day (or one amendment of it) as Parquet.

Layout (one file, self-contained: every row carries its series identity, not the
database's integer id):

=========== ======================== ============================================
column      type                     encoding
=========== ======================== ============================================
park        string                   dictionary (one value per segment)
enterprise  string                   dictionary (one value per segment)
device      string                   dictionary
metric      string                   dictionary
data_type   string                   dictionary
stat        string                   dictionary
unit        string                   dictionary
time        timestamp[us, UTC]       delta binary packed
value       float64                  byte stream split
quality     string                   dictionary
seq         int64                    delta binary packed
reset       string, nullable         dictionary
=========== ======================== ============================================

Rows are sorted by series (device, metric, data type, stat) then time, so within a
series the times and sequence numbers step regularly (delta encoding stores a
regular step in a few bits) and the values of one meter sit side by side (byte
stream split then zstd finds their shared leading bytes). Compression is zstd.

:func:`encode` is deterministic for a given row set: the same rows give the same
bytes, whatever order they came in.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FORMAT = "smartpark-archive-segment/1"


class ArchivedRow(NamedTuple):
    """One reading as the archive holds it: the API's raw reading shape
    (:class:`storage.queries.ReadingOut`, same fields in the same order)."""

    time: datetime
    park: str
    enterprise: str
    device: str
    metric: str
    data_type: str
    stat: str
    unit: str
    value: float
    quality: str
    seq: int
    reset: str | None

    @property
    def key(self) -> RowKey:
        return RowKey(
            self.enterprise, self.device, self.metric, self.data_type, self.stat,
            self.time,
        )  # fmt: skip


class RowKey(NamedTuple):
    """A reading's identity: (enterprise, device, metric, data type, stat, time)
    (its park follows from its enterprise)."""

    enterprise: str
    device: str
    metric: str
    data_type: str
    stat: str
    time: datetime

    def __str__(self) -> str:
        return (
            f"enterprise={self.enterprise} device={self.device} metric={self.metric}"
            f" data_type={self.data_type} stat={self.stat}"
            f" time={self.time.isoformat()}"
        )


SCHEMA = pa.schema(
    [
        ("park", pa.string()),
        ("enterprise", pa.string()),
        ("device", pa.string()),
        ("metric", pa.string()),
        ("data_type", pa.string()),
        ("stat", pa.string()),
        ("unit", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("value", pa.float64()),
        ("quality", pa.string()),
        ("seq", pa.int64()),
        ("reset", pa.string()),
    ]
)
_SORT = [
    ("device", "ascending"),
    ("metric", "ascending"),
    ("data_type", "ascending"),
    ("stat", "ascending"),
    ("time", "ascending"),
]
_PLAIN = {"time": "DELTA_BINARY_PACKED", "seq": "DELTA_BINARY_PACKED",
          "value": "BYTE_STREAM_SPLIT"}  # fmt: skip
_DICTIONARY = [n for n in SCHEMA.names if n not in _PLAIN]


def table_of(rows: Iterable[Sequence[Any]]) -> pa.Table:
    """The rows (in :class:`ArchivedRow` field order) as a sorted Arrow table."""
    rows = rows if isinstance(rows, Sequence) else list(rows)
    # One list per column (a transpose through zip() would build a tuple per
    # row: several times slower on a day's rows).
    by_name = {name: [r[i] for r in rows] for i, name in enumerate(ArchivedRow._fields)}
    table = pa.Table.from_arrays(
        [pa.array(by_name[f.name], type=f.type) for f in SCHEMA], schema=SCHEMA
    )
    return table.sort_by(_SORT)


def encode(table: pa.Table) -> bytes:
    """The Parquet bytes of a table from :func:`table_of`."""
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        compression_level=9,
        use_dictionary=_DICTIONARY,
        column_encoding=_PLAIN,
        write_statistics=True,
        row_group_size=1 << 22,
    )
    return sink.getvalue()


def decode(data: bytes) -> pa.Table:
    """A segment's table; :class:`ValueError` if the bytes are not one."""
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"not a readable Parquet segment ({exc})") from None
    if not table.schema.equals(SCHEMA):
        raise ValueError("not a segment of this format (columns differ)")
    return table


def rows_of(table: pa.Table) -> list[ArchivedRow]:
    """The rows of a table, in its order."""
    columns = [table.column(n).to_pylist() for n in ArchivedRow._fields]
    return [ArchivedRow(*r) for r in zip(*columns, strict=True)]


def column_stats(table: pa.Table) -> dict[str, dict[str, str | int | None]]:
    """Per column: ``min``, ``max`` (as text: ISO 8601 for times, Python's shortest
    round-trip repr for floats; None for an empty or all-null column) and
    ``nulls``."""
    out: dict[str, dict[str, str | int | None]] = {}
    for name in SCHEMA.names:
        column = table.column(name)
        lo: str | None = None
        hi: str | None = None
        if len(column) > column.null_count:
            mm = pc.min_max(column)
            lo, hi = _text(mm["min"].as_py()), _text(mm["max"].as_py())
        out[name] = {"min": lo, "max": hi, "nulls": column.null_count}
    return out


def _text(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    return str(value)
