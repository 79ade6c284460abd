"""HJ 212-2017 frames: CRC, parsing and building (pure, standard library only).

A frame is ``##`` + 4 decimal digits (length of the data segment) + data segment +
4 hex digits CRC + ``\\r\\n``. The data segment is
``QN=…;ST=…;CN=…;PW=…;MN=…;Flag=…;PNUM=…;PNO=…;CP=&&…&&``.

Contracts:

- :func:`decode` raises only :class:`Hj212Error` (``path``, ``reason``, ``kind``),
  whatever the input. ``strict=True`` (default) refuses every deviation;
  ``strict=False`` tolerates a missing ``\\r\\n``, a wrong declared length (when
  the CRC still matches), unknown header and CP fields (kept in ``extra_*``),
  non-canonical numbers, unknown data flags, empty CP fields, a QN that is not 17
  digits, and lists each tolerated issue in :attr:`Decoded.issues`. A bad CRC is
  never tolerated: it means the bytes are not what the logger sent. The CRC's hex
  case is free in both modes, because domain.md says either case is printed.
- :func:`encode` builds the frame of a :class:`Packet`; for every packet that
  :func:`encode` accepts, ``decode(encode(p)).packet == p``.
- Numbers are :class:`~decimal.Decimal` (never float): strict decoding accepts only
  ``-?(0|[1-9][0-9]*)(\\.[0-9]+)?`` and such text re-encodes byte-identically
  (``format(d, "f")`` keeps trailing zeros). :attr:`Decoded.frame` keeps the exact
  data segment and CRC text as received.
- Re-encoding uses the standard field order (header
  QN, ST, CN, PW, MN, Flag, PNUM, PNO; CP: DataTime, then one ``;`` group per
  pollutant with its fields joined by ``,`` in :data:`SUFFIXES` order). A packet
  received in another order decodes to the same :class:`Packet` but re-encodes in
  this order; :attr:`Decoded.frame` still holds the original.

Where domain.md is silent (and what this module does): the text encoding (UTF-8;
length and CRC count bytes), which header fields are mandatory (ST, CN, MN; QN, PW,
Flag optional — the reference packet has no QN and no Flag), the values of
``EFlag`` and ``SampleTime`` (any non-empty text, kept as sent), other CP keys such as
those of command replies (strict: unknown field; lenient: kept), and the time zone
of ``QN``/``DataTime`` (kept as text; :func:`parse_time` takes the zone explicitly).
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Protocol

from edge_agent.hj212.model import (
    FLAG_SPLIT,
    MAX_DATA_LENGTH,
    SUFFIXES,
    Decoded,
    Frame,
    Hj212Error,
    Packet,
    Pollutant,
)
from smartpark.wire import Quality

_ATTR = dict(SUFFIXES)
_TEXT_SUFFIXES = frozenset({"Flag", "EFlag", "SampleTime"})
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
        items = []
        for suffix, attr in SUFFIXES:
            value = getattr(p, attr)
            if value is not None:
                items.append(f"{p.code}-{suffix}={_text(value, f'{p.code}-{suffix}')}")
        if not items:
            raise Hj212Error(f"cp.{p.code}", "pollutant has no value", kind="field")
        groups.append(",".join(items))
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


def decode(raw: bytes | str, *, strict: bool = True) -> Decoded:
    """Parse one whole frame. Raises only :class:`Hj212Error` (see module doc)."""
    if isinstance(raw, str):
        raw = raw.encode(errors="surrogatepass")
    issues: list[str] = []
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
        issues.append("frame.trailer: missing '\\r\\n'")
    if len(body) - 4 != declared:
        reason = f"declared {declared} bytes, data segment is {len(body) - 4} bytes"
        if strict or len(body) < 4:
            raise Hj212Error("frame.length", reason, kind="length")
        issues.append(f"frame.length: {reason}")
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
    return Decoded(packet, Frame(segment, crc_text), tuple(issues))


def _parse_data(segment: str, *, strict: bool, out: list[str]) -> Packet:
    def tolerate(path: str, reason: str, kind: str) -> None:
        if strict:
            raise Hj212Error(path, reason, kind=kind)
        out.append(f"{path}: {reason}")

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
    if split != (pnum is not None) or split != (pno is not None):
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
    values: dict[str, dict[str, Decimal | str]] = {}
    extra: list[tuple[str, str]] = []
    for item in body.split(";") if body else ():
        for entry in item.split(","):
            key, eq, value = entry.partition("=")
            path = f"cp.{key}" if key else "cp"
            if not entry:
                tolerate(path, "empty field", "field")
                continue
            if not eq:
                raise Hj212Error(path, f"field without '=': {entry!r}", kind="field")
            code, dash, suffix = key.rpartition("-")
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
            elif dash and suffix in _ATTR and _CODE.fullmatch(code):
                slot = values.setdefault(code, {})
                if suffix in slot:
                    raise Hj212Error(path, "duplicate field", kind="field")
                slot[suffix] = _value(suffix, value, path, tolerate)
            else:
                tolerate(path, "unknown field", "field")
                extra.append((key, value))
    pollutants = tuple(
        Pollutant(code, **{_ATTR[s]: v for s, v in vals.items()})  # type: ignore[arg-type]
        for code, vals in values.items()
    )
    return {"data_time": data_time, "pollutants": pollutants, "extra_cp": tuple(extra)}


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
