"""Readings to HJ 212 packets, and the replies a platform link sends (pure).

Sources: the commands, the reply CNs and the CP field names are those of
:mod:`edge_agent.hj212.dictionary` (HJ 212-2017, from srdgame/lua-HJ212
``hj212/types.lua`` and caoyiliang/HJ212); the values of ``QnRtn`` (1 ready to
run, 2 refused, 3 wrong PW, 4 wrong MN, 5 wrong ST, 6 wrong Flag, 7 wrong QN, 8
wrong CN, 9 CRC, 100 unknown) and ``ExeRtn`` (1 done, 2 failed, 3 bad request
conditions, 4 timeout, 5 busy, 6 system fault, 100 no data) from
srdgame/lua-HJ212 ``hj212/types.lua`` (``REPLY`` and ``RESULT``). Unverified
against the standard's text (it is sold, not published): that the data packets
answering a history request carry the request's QN and no reply flag, and that
``-Cou`` of a concentration is in kg (the catalogue's ``total_unit``).

Contracts:

- :class:`Fields` is what one outbox row carries: code → HJ 212 field
  (``Rtd``, ``ZsRtd``, ``Avg``, ``Min``, ``Max``, ``Cou``, ``ZsAvg``, ``ZsMin``,
  ``ZsMax``) → (value text, data flag). :func:`collect` groups readings of an
  outlet by (CN, DataTime); readings whose metric, data type or stat the outlet
  does not forward are skipped and counted by the caller.
- A value is written as the shortest decimal that reads back as the stored
  double (``repr``), never in exponent form: the regulator receives the stored
  figure, not a rounded one.
- A pollutant's ``Flag`` is the flag of its ``Rtd`` (real-time) or ``Avg``
  (interval) value, else of its first value in field order.
- :func:`split_new` keeps a reading once per (upstream, MN, CN, DataTime, code,
  field): a value already in a packet of that key is a duplicate (a Kafka record
  read again after a bridge retry) and never sent twice; a different value for an
  already queued field is a conflict, counted and logged, and the first one stays.
- :func:`fitting` splits a row whose frame would exceed the standard's 9999-byte
  data segment into packets of the same DataTime, by pollutant (not by PNUM/PNO:
  each part is a whole packet the platform acknowledges on its own).
- :class:`QnClock` gives strictly increasing QNs (``yyyyMMddHHmmssSSS`` in the
  outlet's zone): two frames never share a QN, even within one millisecond.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import Decimal

from edge_agent.hj212.codec import encode
from edge_agent.hj212.model import (
    FLAG_REPLY,
    Hj212Error,
    Hj212Version,
    Packet,
    Pollutant,
)

CN_OF_SERIES = {"realtime": "2011", "minute": "2051", "hour": "2061", "day": "2031"}
SERIES_OF_CN = {cn: s for s, cn in CN_OF_SERIES.items()}
HISTORY_CNS = frozenset({"2051", "2061", "2031"})
DATA_REPLY = "9014"
REQUEST_REPLY = "9011"
EXECUTION_RESULT = "9012"
NOTIFY_REPLY = "9013"

# QnRtn values (module doc)
QN_READY = 1
QN_REFUSED = 2
QN_BAD_PW = 3
QN_BAD_MN = 4
QN_BAD_QN = 7
QN_BAD_CN = 8
# ExeRtn values (module doc)
EXE_DONE = 1
EXE_FAILED = 2
EXE_BAD_CONDITIONS = 3
EXE_SYSTEM_FAULT = 6
EXE_NO_DATA = 100

_FLAG_VERSION = {Hj212Version.V2017: 1, Hj212Version.V2025: 2}
# (data type, stat, corrected) → field
_FIELDS: dict[tuple[str, str, bool], str] = {
    ("realtime", "value", False): "Rtd",
    ("realtime", "value", True): "ZsRtd",
}
for _dt in ("minute", "hour", "day"):
    _FIELDS |= {
        (_dt, "value", False): "Avg",
        (_dt, "min", False): "Min",
        (_dt, "max", False): "Max",
        (_dt, "cou", False): "Cou",
        (_dt, "value", True): "ZsAvg",
        (_dt, "min", True): "ZsMin",
        (_dt, "max", True): "ZsMax",
    }
# Pollutant attribute per field, in the codec's encoding order.
_ATTRS = {
    "Rtd": "rtd", "Min": "min", "Avg": "avg", "Max": "max", "Cou": "cou",
    "ZsRtd": "zs_rtd", "ZsMin": "zs_min", "ZsAvg": "zs_avg", "ZsMax": "zs_max",
}  # fmt: skip
_FLAG_FROM = ("Rtd", "Avg")

#: code → field → (value text, data flag), as stored in the outbox
Fields = dict[str, dict[str, Sequence[str]]]


@dataclass(frozen=True, slots=True)
class Value:
    """One reading as the outlet mapping sees it (from the wire or from storage)."""

    device: str
    metric: str
    data_type: str
    stat: str
    ts_ms: int
    value: float
    quality: str


@dataclass(frozen=True, slots=True)
class Mapping212:
    """What :func:`collect` needs of an outlet (see :mod:`upstream.config`)."""

    devices: frozenset[str]
    series: frozenset[str]
    by_metric: Mapping[str, tuple[str, bool]]
    tz: tzinfo


def field_of(data_type: str, stat: str, corrected: bool) -> str | None:
    """The HJ 212 field of a reading, or None when it has none (a corrected total)."""
    return _FIELDS.get((data_type, stat, corrected))


def number_text(value: float) -> str:
    """The shortest decimal text that reads back as ``value``; ValueError if not
    finite."""
    d = Decimal(repr(value))
    if not d.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def data_time(ts_ms: int, tz: tzinfo) -> str:
    """``yyyyMMddHHmmss`` of ``ts_ms`` in ``tz`` (milliseconds dropped)."""
    return (
        datetime.fromtimestamp(ts_ms / 1000, UTC)
        .astimezone(tz)
        .strftime("%Y%m%d%H%M%S")
    )


@dataclass
class Collected:
    """:func:`collect`'s result: fields by (CN, DataTime) and what was skipped."""

    packets: dict[tuple[str, str], Fields] = field(default_factory=dict)
    skipped: int = 0


def collect(values: Iterable[Value], outlet: Mapping212) -> Collected:
    """Group the outlet's readings into packet fields (see the module doc)."""
    out = Collected()
    for v in values:
        if v.device not in outlet.devices:
            continue
        mapped = outlet.by_metric.get(v.metric)
        name = None if mapped is None else field_of(v.data_type, v.stat, mapped[1])
        if mapped is None or name is None or v.data_type not in outlet.series:
            out.skipped += 1
            continue
        try:
            text = number_text(v.value)
        except ValueError:
            out.skipped += 1
            continue
        key = (CN_OF_SERIES[v.data_type], data_time(v.ts_ms, outlet.tz))
        out.packets.setdefault(key, {}).setdefault(mapped[0], {})[name] = [
            text,
            v.quality,
        ]
    return out


@dataclass
class Split:
    """:func:`split_new`'s result: the fields not yet queued, and the counts."""

    new: Fields = field(default_factory=dict)
    duplicates: int = 0
    conflicts: list[str] = field(default_factory=list)


def split_new(queued: Iterable[Fields], incoming: Fields) -> Split:
    """The fields of ``incoming`` no packet of the same key holds (module doc)."""
    held: dict[tuple[str, str], str] = {}
    for fields in queued:
        for code, values in fields.items():
            for name, pair in values.items():
                held[(code, name)] = pair[0]
    out = Split()
    for code, values in incoming.items():
        for name, (text, flag) in values.items():
            prior = held.get((code, name))
            if prior is None:
                out.new.setdefault(code, {})[name] = [text, flag]
            elif prior == text:
                out.duplicates += 1
            else:
                out.conflicts.append(f"{code}-{name}: queued {prior}, now {text}")
    return out


def merge(into: Fields, more: Fields) -> Fields:
    """``into`` with ``more``'s fields added (a new dict)."""
    out = {code: dict(values) for code, values in into.items()}
    for code, values in more.items():
        out.setdefault(code, {}).update(values)
    return out


def flag_bits(version: Hj212Version, *, reply: bool) -> int:
    """Flag: the generation's version bits, and bit A when a reply is wanted."""
    return (_FLAG_VERSION[version] << 2) | (FLAG_REPLY if reply else 0)


def data_packet(
    fields: Fields,
    *,
    cn: str,
    data_time_text: str,
    mn: str,
    st: str,
    pw: str,
    qn: str,
    flag: int,
    order: Iterable[str] = (),
) -> Packet:
    """The data packet of one outbox row; pollutants in ``order`` (the outlet's
    configured codes), then any other code alphabetically."""
    known = [c for c in order if c in fields]
    codes = known + sorted(set(fields) - set(known))
    return Packet(
        st=st, cn=cn, mn=mn, pw=pw, qn=qn, flag=flag, data_time=data_time_text,
        pollutants=tuple(_pollutant(code, fields[code]) for code in codes),
    )  # fmt: skip


def fitting(fields: Fields, build: Callable[[Fields], Packet]) -> list[Fields]:
    """``fields`` as one packet, or halved by pollutant until each part's frame
    (``build``) fits the 9999-byte data segment; :class:`Hj212Error` otherwise."""
    try:
        encode(build(fields))
    except Hj212Error as exc:
        if exc.kind != "length" or len(fields) < 2:
            raise
        codes = list(fields)
        half = len(codes) // 2
        return fitting({c: fields[c] for c in codes[:half]}, build) + fitting(
            {c: fields[c] for c in codes[half:]}, build
        )
    return [fields]


def _pollutant(code: str, values: Mapping[str, Sequence[str]]) -> Pollutant:
    kwargs: dict[str, Decimal] = {
        _ATTRS[name]: Decimal(text) for name, (text, _) in values.items()
    }
    flag_from = next((n for n in _FLAG_FROM if n in values), None)
    if flag_from is None:
        flag_from = next(n for n in _ATTRS if n in values)
    return Pollutant(code, flag=values[flag_from][1], **kwargs)  # type: ignore[arg-type]


def reply(request: Packet, cn: str, name: str, code: int, flag: int) -> Packet:
    """A 9011 (``QnRtn``) or 9012 (``ExeRtn``) answer to ``request``: same QN, PW
    and MN, ST=91."""
    return Packet(
        st="91", cn=cn, mn=request.mn, pw=request.pw, qn=request.qn, flag=flag,
        params=((name, str(code)),),
    )  # fmt: skip


class QnClock:
    """Strictly increasing QNs from a millisecond clock (module doc)."""

    def __init__(self, tz: tzinfo) -> None:
        self._tz = tz
        self._last_ms = 0

    def next(self, now_ms: int) -> str:
        ms = max(now_ms, self._last_ms + 1)
        self._last_ms = ms
        t = datetime.fromtimestamp(ms / 1000, UTC).astimezone(self._tz)
        return t.strftime("%Y%m%d%H%M%S") + f"{ms % 1000:03d}"
