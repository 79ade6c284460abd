"""What each generation of HJ 212 defines: commands, system codes, CP fields.

Pure, standard library only. :func:`~edge_agent.hj212.codec.decode` parses a frame
structurally, accepting every CP field that any generation defines
(:data:`KNOWN_NAMES`, :data:`KNOWN_SUFFIXES`), because the stream is decoded before
the MN, and so the logger's configured generation, is known. :func:`check` then
validates the packet against one generation. Contracts:

- ``check(packet, version, strict=True)`` returns ``()`` or raises
  :class:`~edge_agent.hj212.model.Hj212Error` with kind ``command`` (CN not a
  command of the generation), ``header`` (ST not one of its system codes),
  ``version`` (Flag's version bits name another generation), ``field`` (a CP field
  it does not define; a separate corrected group with its own flag outside 2005),
  ``number`` / ``datatime`` (a defined field whose value does not have its type).
- ``check(..., strict=False)`` never raises and returns the same findings as
  :class:`~edge_agent.hj212.model.Issue` values (what was tolerated).
- Fields no generation defines (``extra_*``), the frame and the header layout are
  :func:`decode`'s business: ``check`` does not report them again.
- Pollutant codes are not checked: every generation's code table is declared
  expandable, and real loggers mix 2005 and 2017 codes (corpus: ``a99948`` beside
  ``831`` in one packet).
- :func:`required_reply` is the answer a logger's packet asks for (Flag bit A).

Sources (the standards' texts are sold, not published; these public implementations
and copies of the standards' examples were read instead):

- HJ/T 212-2005: command codes, ST codes, CP field names and the ``QnRtn`` /
  ``ExeRtn`` values from linqiu126/hcu ``hcusrc/l2codec/zhbhjt212msg.h`` (a
  2016 implementation of the 2005 standard); ``AlarmTarget`` / ``ReportTime`` from
  public 2005 logger firmware; the separate corrected group
  (``01-ZsRtd=…,01-Flag=N;01-Rtd=…,01-Flag=N``) from CEMS vendor code and captures
  in Yimning/Daily-Code ``protocol/*GBhjt2005*.c``. The wire name of the 1072
  password field (``PW`` inside CP) comes from one public parser only.
- HJ 212-2017: commands, ST codes, CP fields and field formats from
  srdgame/lua-HJ212 ``hj212/types.lua``, ``hj212/params.lua``,
  ``hj212/params/tag.lua``, ``hj212/params/state.lua``; cross-checked with
  caoyiliang/HJ212 ``HJ212/Enum.cs`` and ``Test/Program.cs`` (copies of the
  standard's appendix C examples, e.g. ``CN=1062`` ``RtdInterval=30`` with CRC
  ``1C80``). ``CTime`` is accepted beside ``Ctime``: the appendix example copied in
  caoyiliang/HJ212 spells it ``CTime``, lua-HJ212 ``Ctime``.
- HJ 212-2025: caoyiliang/HJ212 (``README.md``, ``HJ212/Enum.cs``, ``GB.cs``,
  ``HJ212/Request/*.cs``, which map every appendix C table of 2017 and 2025): Flag
  version bits 2 (Flag 8/9), heartbeat ``CN=9015`` answered with 9013, new
  commands 1001/1002/1014/2013/2052/2062/2111/3022/3024, commands 3014-3017
  withdrawn, new fields ``SKCreateTime``, ``NewSK``, ``CalibrationType``,
  ``-CompleteTime``, ``-SampleType``, ``-SampleRd``, ``-StandardValue``,
  ``-ResultType``. One secondary source only: ST=44 (seen in one example there,
  absent from its own ST table) is behind ``unverified_2025``. New data-flag bits
  and a resend marker, named in the issue, were found in no public source and are
  not implemented.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from edge_agent.hj212.model import (
    FLAG_REPLY,
    FLAG_SPLIT,
    SUFFIXES,
    Hj212Error,
    Hj212Version,
    Issue,
    Packet,
)

FieldType = Literal["int", "number", "time", "hhmmss", "text"]

_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
_DIGITS = re.compile(r"[0-9]+")
_TIME_KINDS: frozenset[FieldType] = frozenset({"time", "hhmmss"})
_NUMERIC_KINDS: frozenset[FieldType] = frozenset({"int", "number"})


@dataclass(frozen=True, slots=True, eq=False)
class Generation:
    """One generation's dictionary. ``names``: plain CP fields (DataTime aside);
    ``suffixes``: ``code-Suffix`` fields besides pollutant values;
    ``pollutant_suffixes``: the :data:`~.model.SUFFIXES` it defines;
    ``separate_corrected``: corrected values may come as their own group with their
    own flag; ``flag_version``: Flag's bits above A and D."""

    version: Hj212Version
    title: str
    flag_version: int
    systems: frozenset[str]
    commands: frozenset[str]
    names: Mapping[str, FieldType]
    suffixes: Mapping[str, FieldType]
    pollutant_suffixes: frozenset[str]
    separate_corrected: bool


def _codes(text: str) -> frozenset[str]:
    return frozenset(text.split())


_ST_2005 = _codes("21 22 23 31 32 33 34 35 36 37 38 41 91")
_ST_2017 = _ST_2005 | _codes("24 25 26 27 39 51 52")

_CN_2005 = _codes(
    "1000 1001 1011 1012 1021 1022 1031 1032 1041 1042 1061 1062 1072"
    " 2011 2012 2021 2022 2031 2041 2051 2061 2071 2072"
    " 3011 3012 3013 3014 9011 9012 9013 9014"
)
_CN_2017 = _codes(
    "1000 1011 1012 1013 1061 1062 1063 1064 1072"
    " 2011 2012 2021 2022 2031 2041 2051 2061 2081"
    " 3011 3012 3013 3014 3015 3016 3017 3018 3019 3020 3021"
    " 9011 9012 9013 9014"
)
_CN_2025 = (_CN_2017 - _codes("3014 3015 3016 3017")) | _codes(
    "1001 1002 1014 2013 2052 2062 2111 3022 3024 9015"
)

_NAMES_2005: dict[str, FieldType] = {
    "SystemTime": "time",
    "QnRtn": "int",
    "ExeRtn": "int",
    "RtdInterval": "int",
    "AlarmTime": "time",
    "AlarmType": "int",
    "AlarmTarget": "text",
    "ReportTarget": "text",
    "ReportTime": "text",
    "PolId": "text",
    "BeginTime": "time",
    "EndTime": "time",
    "DayStdValue": "number",
    "NightStdValue": "number",
    "PW": "text",
    "OverTime": "int",
    "ReCount": "int",
    "WarnTime": "int",
    "CTime": "int",
}
_NAMES_2017: dict[str, FieldType] = {
    "SystemTime": "time",
    "QnRtn": "int",
    "ExeRtn": "int",
    "RtdInterval": "int",
    "MinInterval": "int",
    "RestartTime": "time",
    "PolId": "text",
    "BeginTime": "time",
    "EndTime": "time",
    "NewPW": "text",
    "OverTime": "int",
    "ReCount": "int",
    "VaseNo": "int",
    "CstartTime": "hhmmss",
    "Ctime": "int",
    "CTime": "int",
    "Stime": "int",
    "InfoId": "text",
}
_NAMES_2025: dict[str, FieldType] = _NAMES_2017 | {
    "SKCreateTime": "time",
    "NewSK": "text",
    "CalibrationType": "int",
}

_SUFFIXES_2005: dict[str, FieldType] = {
    "RS": "int",
    "RT": "number",
    "Ala": "number",
    "UpValue": "number",
    "LowValue": "number",
    "Data": "number",
    "DayData": "number",
    "NightData": "number",
}
_SUFFIXES_2017: dict[str, FieldType] = _SUFFIXES_2005 | {"Info": "text", "SN": "text"}
_SUFFIXES_2025: dict[str, FieldType] = _SUFFIXES_2017 | {
    "CompleteTime": "time",
    "SampleType": "text",
    "SampleRd": "number",
    "StandardValue": "number",
    "ResultType": "text",
}

_ALL_POLLUTANT_SUFFIXES = frozenset(s for s, _ in SUFFIXES)

GENERATIONS: Mapping[Hj212Version, Generation] = {
    Hj212Version.V2005: Generation(
        version=Hj212Version.V2005,
        title="HJ/T 212-2005",
        flag_version=0,
        systems=_ST_2005,
        commands=_CN_2005,
        names=_NAMES_2005,
        suffixes=_SUFFIXES_2005,
        pollutant_suffixes=_ALL_POLLUTANT_SUFFIXES - {"EFlag", "SampleTime"},
        separate_corrected=True,
    ),
    Hj212Version.V2017: Generation(
        version=Hj212Version.V2017,
        title="HJ 212-2017",
        flag_version=1,
        systems=_ST_2017,
        commands=_CN_2017,
        names=_NAMES_2017,
        suffixes=_SUFFIXES_2017,
        pollutant_suffixes=_ALL_POLLUTANT_SUFFIXES,
        separate_corrected=False,
    ),
    Hj212Version.V2025: Generation(
        version=Hj212Version.V2025,
        title="HJ 212-2025",
        flag_version=2,
        systems=_ST_2017,
        commands=_CN_2025,
        names=_NAMES_2025,
        suffixes=_SUFFIXES_2025,
        pollutant_suffixes=_ALL_POLLUTANT_SUFFIXES,
        separate_corrected=False,
    ),
}

#: 2025 features seen in one secondary source only: on with ``unverified_2025``
UNVERIFIED_2025_SYSTEMS = _codes("44")

#: every plain CP name / ``code-Suffix`` any generation defines (what decode accepts)
KNOWN_NAMES = frozenset(n for g in GENERATIONS.values() for n in g.names)
KNOWN_SUFFIXES = frozenset(s for g in GENERATIONS.values() for s in g.suffixes)

#: replies and acknowledgements: never answered themselves
REPLY_CNS = _codes("9011 9012 9013 9014")
#: logger requests and notifications answered with a notify reply (9013), not 9014
NOTIFY_CNS = _codes("1001 1013 1014 9015")


def generation(version: Hj212Version, *, unverified_2025: bool = False) -> Generation:
    """The dictionary of ``version`` (with the unverified 2025 additions if asked)."""
    gen = GENERATIONS[version]
    if unverified_2025 and version is Hj212Version.V2025:
        return Generation(
            version=gen.version,
            title=gen.title + " (with unverified additions)",
            flag_version=gen.flag_version,
            systems=gen.systems | UNVERIFIED_2025_SYSTEMS,
            commands=gen.commands,
            names=gen.names,
            suffixes=gen.suffixes,
            pollutant_suffixes=gen.pollutant_suffixes,
            separate_corrected=gen.separate_corrected,
        )
    return gen


def check(
    packet: Packet,
    version: Hj212Version,
    *,
    strict: bool = True,
    unverified_2025: bool = False,
) -> tuple[Issue, ...]:
    """Validate ``packet`` against ``version`` (see the module doc)."""
    gen = generation(version, unverified_2025=unverified_2025)
    found: list[Issue] = []

    def report(path: str, reason: str, kind: str) -> None:
        if strict:
            raise Hj212Error(path, f"{reason} ({gen.title})", kind=kind)
        found.append(Issue(f"{path}: {reason} ({gen.title})", kind=kind))

    if packet.cn not in gen.commands:
        report("data.CN", f"CN={packet.cn} is not a command", "command")
    if packet.st not in gen.systems:
        report("data.ST", f"ST={packet.st} is not a system code", "header")
    if packet.version is not None and packet.version != gen.flag_version:
        report(
            "data.Flag",
            f"Flag={packet.flag} has version bits {packet.version},"
            f" expected {gen.flag_version}",
            "version",
        )
    for p in packet.pollutants:
        for suffix, attr in SUFFIXES:
            if getattr(p, attr) is not None and suffix not in gen.pollutant_suffixes:
                report(f"cp.{p.code}-{suffix}", "unknown field", "field")
        if p.zs_flag is not None and not gen.separate_corrected:
            report(
                f"cp.{p.code}-Flag",
                "corrected values in a group of their own with their own flag",
                "field",
            )
    for key, value in packet.params:
        _, dash, suffix = key.rpartition("-")
        kind = gen.suffixes.get(suffix) if dash else gen.names.get(key)
        if kind is None:
            report(f"cp.{key}", "unknown field", "field")
            continue
        problem = _problem(kind, value)
        if problem is not None:
            err = (
                "datatime"
                if kind in _TIME_KINDS
                else "number"
                if kind in _NUMERIC_KINDS
                else "field"
            )
            report(f"cp.{key}", problem, err)
    return tuple(found)


def _problem(kind: FieldType, value: str) -> str | None:
    """Why ``value`` is not of ``kind``, or None."""
    if kind == "int":
        return None if _DIGITS.fullmatch(value) else f"expected an integer: {value!r}"
    if kind == "number":
        return None if _NUMBER.fullmatch(value) else f"expected a number: {value!r}"
    if kind == "time":
        return None if _valid(value, (14, 17)) else f"expected a time: {value!r}"
    if kind == "hhmmss":
        ok = len(value) == 6 and _valid("20000101" + value, (14,))
        return None if ok else f"expected HHmmss: {value!r}"
    return None if value else "empty value"


def _valid(text: str, lengths: tuple[int, ...]) -> bool:
    if len(text) not in lengths or not _DIGITS.fullmatch(text):
        return False
    try:
        datetime.strptime(text[:14], "%Y%m%d%H%M%S")  # noqa: DTZ007 - validity only
    except ValueError:
        return False
    return True


def required_reply(packet: Packet) -> Packet | None:
    """The reply ``packet`` asks for (Flag bit A), or None.

    A logger's notification or request (:data:`NOTIFY_CNS`: heartbeat, time
    calibration, key request, hardware serial) is answered with a notify reply
    (9013), any other upload with a data reply (9014); replies are never answered.
    The reply carries the same QN, PW and MN, ST=91, Flag with bits A and D cleared
    (version bits kept), and an empty CP.
    """
    if not packet.reply_required or packet.cn in REPLY_CNS:
        return None
    flag = None if packet.flag is None else packet.flag & ~(FLAG_REPLY | FLAG_SPLIT)
    cn = "9013" if packet.cn in NOTIFY_CNS else "9014"
    return Packet(st="91", cn=cn, mn=packet.mn, pw=packet.pw, qn=packet.qn, flag=flag)
