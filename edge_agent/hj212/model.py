"""The values of the HJ 212 codec: frozen dataclasses, constants and the error.

See :mod:`edge_agent.hj212.codec` for the contracts of decoding and encoding and
:mod:`edge_agent.hj212.dictionary` for what each generation of the standard defines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

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


class Hj212Version(StrEnum):
    """The generation of the standard a logger speaks (its configuration says which)."""

    V2005 = "2005"  # HJ/T 212-2005
    V2017 = "2017"  # HJ 212-2017
    V2025 = "2025"  # HJ 212-2025, in force since 2026-01-01


class Hj212Error(PayloadError):
    """An HJ 212 frame is invalid. ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, path: str, reason: str, *, kind: str) -> None:
        self.kind = kind
        super().__init__(path, reason)


#: header: not ``##``/bad field/not UTF-8/ST unknown to the version; length: bad or
#: truncated length; crc (only when all declared bytes are there); cp: missing
#: ``&&``; field: unknown/duplicate/empty field; number; datatime; trailer; stream:
#: garbage; command: CN not defined by the version; version: Flag names another
#: generation of the standard
ERROR_KINDS = frozenset(
    {"header", "length", "crc", "cp", "field", "number", "datatime", "trailer"}
    | {"stream", "command", "version"}
)


class Issue(str):
    """One tolerated deviation, ``"path: reason"``, with the ``kind`` a strict
    decode or check would have refused it with (a plain ``str`` otherwise)."""

    kind: str

    def __new__(cls, text: str, *, kind: str) -> Issue:
        issue = super().__new__(cls, text)
        issue.kind = kind
        return issue


@dataclass(frozen=True, slots=True)
class Pollutant:
    """The values of one pollutant code in one packet; None means absent.

    ``zs_flag`` is the flag of a separate corrected group (HJ/T 212-2005 loggers send
    ``01-Rtd=…,01-Flag=N;01-ZsRtd=…,01-Flag=N``): it qualifies the ``zs_*`` values,
    ``flag`` the measured ones. None when the corrected values share ``flag``.
    """

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
    zs_flag: str | None = None


@dataclass(frozen=True, slots=True)
class Packet:
    """One data segment. ``qn``/``data_time`` are the digits as sent (14 or 17).

    ``params``: the CP fields the standard defines besides DataTime and pollutant
    values (``RtdInterval``, ``QnRtn``, ``SB1-RS``, ``i13004-Info``, …), text as
    sent, in wire order; ``extra_*``: fields no generation defines (lenient only).
    """

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
    params: tuple[tuple[str, str], ...] = ()
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
    issues: tuple[Issue, ...] = field(default=())
