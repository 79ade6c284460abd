"""HJ 212 frames (2005, 2017, 2025): CRC, parsing, building (pure, standard library).

A frame is ``##`` + 4 decimal digits (length of the data segment) + data segment +
4 hex digits CRC + ``\\r\\n``. The data segment is
``QN=…;ST=…;CN=…;PW=…;MN=…;Flag=…;PNUM=…;PNO=…;CP=&&…&&``.

Contracts:

- :func:`decode` raises only :class:`Hj212Error` (``path``, ``reason``, ``kind``),
  whatever the input. ``strict=True`` (default) refuses every deviation;
  ``strict=False`` tolerates a missing ``\\r\\n``, a declared length shorter than
  the data (when the CRC still matches), unknown header and CP fields (kept in
  ``extra_*``), non-canonical numbers, unknown data flags, empty CP fields, a QN
  that is not 17 digits, Flag bit D set without PNUM/PNO, and lists each tolerated
  issue in :attr:`Decoded.issues` (an :class:`~.model.Issue` with the kind strict
  mode would have refused it with). Errors are named for what happened: fewer bytes
  than the declared length and the CRC is a ``length`` error in both modes (a
  truncated frame); ``crc`` only when every declared byte is there. A bad CRC is
  never tolerated: it means the bytes are not what the logger sent. The CRC's hex
  case is free in both modes, because domain.md says either case is printed.
- :func:`decode` accepts the CP fields of every generation of the standard (see
  :mod:`.dictionary`): the pollutant values of :data:`~.model.SUFFIXES` go to
  :attr:`Packet.pollutants`, the other defined fields (``RtdInterval``,
  ``QnRtn``, ``SB1-RS``, …) to :attr:`Packet.params` as text. With ``version``
  it also runs :func:`~.dictionary.check` for that generation (strict: raises;
  lenient: its findings join the issues).
- A pollutant's values may be split over two ``;`` groups, as HJ/T 212-2005
  loggers send the corrected values: ``01-Rtd=…,01-Flag=N;01-ZsRtd=…,01-Flag=D``.
  When exactly two of a code's groups carry a Flag and exactly one of them holds
  only ``Zs*`` values, that group's flag is :attr:`Pollutant.zs_flag`; any other
  repeated field is a duplicate. :func:`encode` writes a pollutant with a
  ``zs_flag`` back in that two-group form.
- :func:`encode` builds the frame of a :class:`Packet`; for every packet that
  :func:`encode` accepts, ``decode(encode(p)).packet == p``.
- Numbers are :class:`~decimal.Decimal` (never float): strict decoding accepts only
  ``-?(0|[1-9][0-9]*)(\\.[0-9]+)?`` and such text re-encodes byte-identically
  (``format(d, "f")`` keeps trailing zeros). :attr:`Decoded.frame` keeps the exact
  data segment and CRC text as received.
- Re-encoding uses the standard field order (header
  QN, ST, CN, PW, MN, Flag, PNUM, PNO; CP: DataTime, then one ``;`` group per
  pollutant with its fields joined by ``,`` in :data:`SUFFIXES` order, then each
  of :attr:`Packet.params` and :attr:`Packet.extra_cp` as a group of its own). A packet
  received in another order decodes to the same :class:`Packet` but re-encodes in
  this order; :attr:`Decoded.frame` still holds the original.

Where domain.md is silent (and what this module does): the text encoding (UTF-8;
length and CRC count bytes), which header fields are mandatory (ST, CN, MN; QN, PW,
Flag optional — the reference packet has no QN and no Flag), the values of
``EFlag`` and ``SampleTime`` (any non-empty text, kept as sent), CP keys no
generation defines (strict: unknown field; lenient: kept), and the time zone
of ``QN``/``DataTime`` (kept as text; :func:`parse_time` takes the zone explicitly).
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Protocol

from edge_agent.hj212.dictionary import KNOWN_NAMES, KNOWN_SUFFIXES, check
from edge_agent.hj212.model import (
    FLAG_SPLIT,
    MAX_DATA_LENGTH,
    SUFFIXES,
    Decoded,
    Frame,
    Hj212Error,
    Hj212Version,
    Issue,
    Packet,
    Pollutant,
)
from smartpark.wire import Quality

_ATTR = dict(SUFFIXES)
_TEXT_SUFFIXES = frozenset({"Flag", "EFlag", "SampleTime"})
_VALUE_SUFFIXES = frozenset(_ATTR) - _TEXT_SUFFIXES
_HEADER = ("QN", "ST", "CN", "PW", "MN", "Flag", "PNUM", "PNO")
_QUALITIES = frozenset(q.value for q in Quality)
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
_LOOSE_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_CODE = re.compile(r"[A-Za-z0-9]+")
_DIGITS = re.compile(r"[0-9]+")
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_FORBIDDEN = (";", ",", "=", "&")


def crc16(data: bytes) -> int:
    """HJ 212 CRC-16 (not the Modbus CRC): see domain.md section 1."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def parse_time(text: str, tz: tzinfo) -> datetime:
    """``yyyyMMddHHmmss`` or ``yyyyMMddHHmmssSSS`` in zone ``tz`` as an aware time."""
    if len(text) not in (14, 17) or not _DIGITS.fullmatch(text):
        raise ValueError(f"not 14 or 17 digits: {text!r}")
    # strptime with %f would read "000" as 0 µs too, but also accept 1-6 digits.
    base = datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=tz)
    return base.replace(microsecond=int(text[14:] or 0) * 1000)


def build_frame(data: str, crc: str | None = None) -> bytes:
    """Wrap a data segment: ``##``, length, segment, CRC (computed if None), CRLF."""
    raw = data.encode()
    if len(raw) > MAX_DATA_LENGTH:
        raise Hj212Error(
            "frame.length",
            f"data segment is {len(raw)} bytes, limit {MAX_DATA_LENGTH}",
            kind="length",
        )
    text = f"{crc16(raw):04x}" if crc is None else crc
    return b"##%04d%s%s\r\n" % (len(raw), raw, text.encode())


def encode(packet: Packet) -> bytes:
    """The frame of ``packet`` (lower-case CRC, like the reference packet)."""
    return build_frame(encode_data(packet))


def encode_data(packet: Packet) -> str:
    """The data segment of ``packet``; :class:`Hj212Error` if it cannot be sent."""
    head = [(k, v) for k, v in _header_values(packet) if v is not None]
    head += packet.extra_header
    groups = [] if packet.data_time is None else [f"DataTime={packet.data_time}"]
    for p in packet.pollutants:
        measured: list[str] = []
        corrected: list[str] = []
        for suffix, attr in SUFFIXES:
            value = getattr(p, attr)
            if value is not None:
                item = f"{p.code}-{suffix}={_text(value, f'{p.code}-{suffix}')}"
                separate = p.zs_flag is not None and suffix.startswith("Zs")
                (corrected if separate else measured).append(item)
        if p.zs_flag is not None:
            corrected.append(f"{p.code}-Flag={_text(p.zs_flag, f'{p.code}-Flag')}")
        if not measured and not corrected:
            raise Hj212Error(f"cp.{p.code}", "pollutant has no value", kind="field")
        groups += [",".join(items) for items in (measured, corrected) if items]
    for key, value in packet.params:
        groups.append(f"{key}={_text(value, f'cp.{key}')}")
    groups += [f"{k}={v}" for k, v in packet.extra_cp]
    cp = "&&" + ";".join(groups) + "&&"
    for key, value in head:
        _text(value, f"data.{key}")
    segment = "".join(f"{k}={v};" for k, v in head) + "CP=" + cp
    # Parsing what we built catches every value that would not come back as sent
    # (a separator inside MN, a pollutant code with a dash, PNO without Flag bit D).
    if _parse_data(segment, strict=False, out=[]) != packet:
        raise Hj212Error("data", "packet would not decode to itself", kind="field")
    return segment


def _header_values(p: Packet) -> list[tuple[str, str | None]]:
    def num(n: int | None) -> str | None:
        return None if n is None else str(n)

    return [
        ("QN", p.qn),
        ("ST", p.st),
        ("CN", p.cn),
        ("PW", p.pw),
        ("MN", p.mn),
        ("Flag", num(p.flag)),
        ("PNUM", num(p.pnum)),
        ("PNO", num(p.pno)),
    ]


def _text(value: Decimal | str, path: str) -> str:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise Hj212Error(path, f"non-finite number {value}", kind="number")
        return format(value, "f")
    if any(c in value for c in _FORBIDDEN) or "\r" in value or "\n" in value:
        raise Hj212Error(path, f"text {value!r} contains a separator", kind="field")
    return value


def decode(
    raw: bytes | str,
    *,
    strict: bool = True,
    version: Hj212Version | None = None,
    unverified_2025: bool = False,
) -> Decoded:
    """Parse one whole frame. Raises only :class:`Hj212Error` (see module doc)."""
    if isinstance(raw, str):
        raw = raw.encode(errors="surrogatepass")
    issues: list[Issue] = []
    if not raw.startswith(b"##"):
        raise Hj212Error(
            "frame", f"does not start with '##': {raw[:8]!r}", kind="header"
        )
    digits = raw[2:6]
    if len(digits) < 4 or not digits.isdigit() or not digits.isascii():
        raise Hj212Error(
            "frame.length", f"expected 4 decimal digits, got {digits!r}", kind="length"
        )
    declared = int(digits)
    if len(raw) < 6 + declared + 4:
        raise Hj212Error(
            "frame.length",
            f"truncated: declared {declared} bytes and a 4-digit CRC,"
            f" {len(raw) - 6} bytes follow the length",
            kind="length",
        )
    body = raw[6:]
    if body.endswith(b"\r\n"):
        body = body[:-2]
    elif strict:
        raise Hj212Error(
            "frame.trailer",
            f"missing '\\r\\n', frame ends {raw[-6:]!r}",
            kind="trailer",
        )
    else:
        # A lone CR is the first half of the trailer, not a digit of the CRC.
        if len(body) == declared + 5 and body.endswith(b"\r"):
            body = body[:-1]
        issues.append(Issue("frame.trailer: missing '\\r\\n'", kind="trailer"))
    if len(body) - 4 != declared:
        reason = f"declared {declared} bytes, data segment is {len(body) - 4} bytes"
        if strict or len(body) - 4 < declared:
            raise Hj212Error("frame.length", reason, kind="length")
        issues.append(Issue(f"frame.length: {reason}", kind="length"))
    data, crc_raw = body[:-4], body[-4:]
    crc_text = crc_raw.decode("ascii", errors="replace")
    if not _HEX4.fullmatch(crc_text):
        raise Hj212Error(
            "frame.crc", f"expected 4 hex digits, got {crc_raw!r}", kind="crc"
        )
    computed = crc16(data)
    if int(crc_text, 16) != computed:
        raise Hj212Error(
            "frame.crc", f"expected {computed:04x}, got {crc_text}", kind="crc"
        )
    try:
        segment = data.decode()
    except UnicodeDecodeError as exc:
        raise Hj212Error("data", f"not UTF-8: {exc.reason}", kind="header") from None
    packet = _parse_data(segment, strict=strict, out=issues)
    if version is not None:
        issues += check(packet, version, strict=strict, unverified_2025=unverified_2025)
    return Decoded(packet, Frame(segment, crc_text), tuple(issues))


def _parse_data(segment: str, *, strict: bool, out: list[Issue]) -> Packet:
    def tolerate(path: str, reason: str, kind: str) -> None:
        if strict:
            raise Hj212Error(path, reason, kind=kind)
        out.append(Issue(f"{path}: {reason}", kind=kind))

    at = segment.find("CP=&&")
    while at > 0 and segment[at - 1] != ";":
        at = segment.find("CP=&&", at + 1)
    if at < 0:
        raise Hj212Error("data.CP", "missing 'CP=&&'", kind="cp")
    if len(segment) < at + 7 or not segment.endswith("&&"):
        raise Hj212Error("data.CP", "missing closing '&&'", kind="cp")
    head: dict[str, str] = {}
    extra_header: list[tuple[str, str]] = []
    for item in segment[:at].split(";")[:-1]:
        key, eq, value = item.partition("=")
        path = f"data.{key}" if key else "data"
        if not eq:
            raise Hj212Error(path, f"field without '=': {item!r}", kind="header")
        if key in head or any(key == k for k, _ in extra_header):
            raise Hj212Error(path, "duplicate field", kind="field")
        if key in _HEADER:
            head[key] = value
        else:
            tolerate(path, "unknown field", "field")
            extra_header.append((key, value))
    fields_ = _header(head, tolerate)
    cp = _parse_cp(segment[at + 5 : -2], tolerate)
    return Packet(**fields_, **cp, extra_header=tuple(extra_header))  # type: ignore[arg-type]


class _Tolerate(Protocol):
    def __call__(self, path: str, reason: str, kind: str) -> None: ...


def _header(head: dict[str, str], tolerate: _Tolerate) -> dict[str, object]:
    for key in ("ST", "CN", "MN"):
        if not head.get(key):
            raise Hj212Error(f"data.{key}", "missing or empty", kind="header")
    for key, n in (("ST", None), ("CN", 4)):
        value = head[key]
        if not _DIGITS.fullmatch(value) or (n is not None and len(value) != n):
            raise Hj212Error(f"data.{key}", f"bad code {value!r}", kind="header")
    out: dict[str, object] = {"st": head["ST"], "cn": head["CN"], "mn": head["MN"]}
    out["pw"] = head.get("PW")
    qn = head.get("QN")
    if qn is not None and not _valid_time(qn, (17,)):
        if not _valid_time(qn, (14, 17)):
            raise Hj212Error("data.QN", f"bad timestamp {qn!r}", kind="header")
        tolerate("data.QN", f"{qn!r} is not yyyyMMddHHmmssSSS", "header")
    out["qn"] = qn
    for key in ("Flag", "PNUM", "PNO"):
        number = head.get(key)
        if number is not None and not _DIGITS.fullmatch(number):
            raise Hj212Error(f"data.{key}", f"bad integer {number!r}", kind="header")
        out[key.lower()] = None if number is None else int(number)
    flag, pnum, pno = out["flag"], out["pnum"], out["pno"]
    split = isinstance(flag, int) and bool(flag & FLAG_SPLIT)
    if split and pnum is None and pno is None:
        # The packet is intact: only the numbering of its parts is missing.
        tolerate("data.Flag", "bit D=2 (split) is set without PNUM and PNO", "header")
    elif split != (pnum is not None) or split != (pno is not None):
        raise Hj212Error(
            "data.Flag",
            "PNUM and PNO are present exactly when bit D=2 is set",
            kind="header",
        )
    if isinstance(pnum, int) and isinstance(pno, int) and not 1 <= pno <= pnum:
        raise Hj212Error("data.PNO", f"PNO={pno} not in 1..PNUM={pnum}", kind="header")
    return out


def _valid_time(text: str, lengths: tuple[int, ...]) -> bool:
    if len(text) not in lengths or not _DIGITS.fullmatch(text):
        return False
    try:
        datetime.strptime(text[:14], "%Y%m%d%H%M%S")  # noqa: DTZ007 - validity only
    except ValueError:
        return False
    return True


def _parse_cp(body: str, tolerate: _Tolerate) -> dict[str, object]:
    data_time: str | None = None
    groups: dict[str, list[dict[str, Decimal | str]]] = {}
    params: list[tuple[str, str]] = []
    extra: list[tuple[str, str]] = []
    for item in body.split(";") if body else ():
        here: dict[str, dict[str, Decimal | str]] = {}
        for entry in item.split(","):
            key, eq, value = entry.partition("=")
            path = f"cp.{key}" if key else "cp"
            if not entry:
                tolerate(path, "empty field", "field")
                continue
            if not eq:
                raise Hj212Error(path, f"field without '=': {entry!r}", kind="field")
            code, dash, suffix = key.rpartition("-")
            coded = bool(dash) and _CODE.fullmatch(code) is not None
            if key == "DataTime":
                if data_time is not None:
                    raise Hj212Error(path, "duplicate field", kind="field")
                if not _valid_time(value, (14, 17)):
                    raise Hj212Error(
                        path,
                        f"expected yyyyMMddHHmmss[SSS], got {value!r}",
                        kind="datatime",
                    )
                data_time = value
            elif coded and suffix in _ATTR:
                slot = here.setdefault(code, {})
                if suffix in slot:
                    raise Hj212Error(path, "duplicate field", kind="field")
                slot[suffix] = _value(suffix, value, path, tolerate)
            elif (coded and suffix in KNOWN_SUFFIXES) or (
                not dash and key in KNOWN_NAMES
            ):
                if any(k == key for k, _ in params):
                    raise Hj212Error(path, "duplicate field", kind="field")
                params.append((key, value))
            else:
                tolerate(path, "unknown field", "field")
                extra.append((key, value))
        for code, slot in here.items():
            groups.setdefault(code, []).append(slot)
    pollutants = tuple(_pollutant(code, slots) for code, slots in groups.items())
    return {
        "data_time": data_time,
        "pollutants": pollutants,
        "params": tuple(params),
        "extra_cp": tuple(extra),
    }


def _pollutant(code: str, slots: list[dict[str, Decimal | str]]) -> Pollutant:
    """Merge a code's groups; a 2005 corrected group keeps its own flag."""
    zs_flag: Decimal | str | None = None
    flagged = [s for s in slots if "Flag" in s]
    corrected = [s for s in flagged if _corrected_only(s)]
    if len(flagged) == 2 and len(corrected) == 1:
        zs_flag = corrected[0].pop("Flag")
    values: dict[str, Decimal | str] = {}
    for slot in slots:
        for suffix, value in slot.items():
            if suffix in values:
                raise Hj212Error(f"cp.{code}-{suffix}", "duplicate field", kind="field")
            values[suffix] = value
    kwargs = {_ATTR[s]: v for s, v in values.items()}
    return Pollutant(code, **kwargs, zs_flag=zs_flag)  # type: ignore[arg-type]


def _corrected_only(slot: dict[str, Decimal | str]) -> bool:
    held = _VALUE_SUFFIXES.intersection(slot)
    return bool(held) and all(s.startswith("Zs") for s in held)


def _value(suffix: str, text: str, path: str, tolerate: _Tolerate) -> Decimal | str:
    if suffix in _TEXT_SUFFIXES:
        if not text:
            raise Hj212Error(path, "empty value", kind="field")
        if suffix == "Flag" and text not in _QUALITIES:
            tolerate(path, f"unknown data flag {text!r}", "field")
        return text
    if not _NUMBER.fullmatch(text):
        if not _LOOSE_NUMBER.fullmatch(text):
            raise Hj212Error(path, f"bad number {text!r}", kind="number")
        tolerate(path, f"non-canonical number {text!r}", "number")
    try:
        return Decimal(text)
    except InvalidOperation:  # unreachable after the regexes; kept for the contract
        raise Hj212Error(path, f"bad number {text!r}", kind="number") from None
