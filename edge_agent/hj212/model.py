"""The values of the HJ 212 codec: frozen dataclasses, constants and the error.

See :mod:`edge_agent.hj212.codec` for the contracts of decoding and encoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from smartpark.errors import PayloadError

MAX_DATA_LENGTH = 9999
#: bytes around the data segment: ``##`` + 4 length digits + 4 CRC digits + CRLF
OVERHEAD = 12
FLAG_REPLY = 1
FLAG_SPLIT = 2

#: wire suffix → attribute of :class:`Pollutant`, in encoding order
SUFFIXES: tuple[tuple[str, str], ...] = (
    ("Rtd", "rtd"),
    ("Min", "min"),
    ("Avg", "avg"),
    ("Max", "max"),
    ("Cou", "cou"),
    ("ZsRtd", "zs_rtd"),
    ("ZsMin", "zs_min"),
    ("ZsAvg", "zs_avg"),
    ("ZsMax", "zs_max"),
    ("Flag", "flag"),
    ("EFlag", "eflag"),
    ("SampleTime", "sample_time"),
)


class Hj212Error(PayloadError):
    """An HJ 212 frame is invalid. ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, path: str, reason: str, *, kind: str) -> None:
        self.kind = kind
        super().__init__(path, reason)


#: header: not ``##``/bad field/not UTF-8; length; crc; cp: missing ``&&``;
#: field: unknown/duplicate/empty field; number; datatime; trailer; stream: garbage
ERROR_KINDS = frozenset(
    {"header", "length", "crc", "cp", "field", "number", "datatime", "trailer"}
    | {"stream"}
)


@dataclass(frozen=True, slots=True)
class Pollutant:
    """The values of one pollutant code in one packet; None means absent."""

    code: str
    rtd: Decimal | None = None
    min: Decimal | None = None
    avg: Decimal | None = None
    max: Decimal | None = None
    cou: Decimal | None = None
    zs_rtd: Decimal | None = None
    zs_min: Decimal | None = None
    zs_avg: Decimal | None = None
    zs_max: Decimal | None = None
    flag: str | None = None
    eflag: str | None = None
    sample_time: str | None = None


@dataclass(frozen=True, slots=True)
class Packet:
    """One data segment. ``qn``/``data_time`` are the digits as sent (14 or 17)."""

    st: str
    cn: str
    mn: str
    pw: str | None = None
    qn: str | None = None
    flag: int | None = None
    pnum: int | None = None
    pno: int | None = None
    data_time: str | None = None
    pollutants: tuple[Pollutant, ...] = ()
    extra_header: tuple[tuple[str, str], ...] = ()
    extra_cp: tuple[tuple[str, str], ...] = ()

    @property
    def reply_required(self) -> bool:
        return self.flag is not None and bool(self.flag & FLAG_REPLY)

    @property
    def split(self) -> bool:
        return self.flag is not None and bool(self.flag & FLAG_SPLIT)

    @property
    def version(self) -> int | None:
        """Protocol version: the Flag bits above A and D (Flag=4 or 5 → 1)."""
        return None if self.flag is None else self.flag >> 2


@dataclass(frozen=True, slots=True)
class Frame:
    """The data segment and CRC text exactly as received (CRC case kept)."""

    data: str
    crc: str


@dataclass(frozen=True, slots=True)
class Decoded:
    packet: Packet
    frame: Frame
    issues: tuple[str, ...] = field(default=())
