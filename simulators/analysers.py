"""What the analysers behind a simulated HJ 212 data logger measure (pure, seeded).

A :class:`Station` is one logger: a CEMS stack (ST=31: SO2, NOx, particulate with
their values corrected to the reference O2, O2, flue temperature, flue-gas flow) or
a wastewater outlet (ST=32: flow, COD, ammonia nitrogen, pH). :class:`Analysers`
gives the values of each tick; :func:`aggregate` the values of a minute or hour.
:mod:`simulators.hj212_source` turns them into frames. Contracts:

- Values are :class:`~decimal.Decimal` with the code's fixed number of decimals, as
  a logger prints them; each code follows its own bounded random walk drawn from
  ``random.Random(f"{seed}:{kind}:{mn}")``, so the same seed and the same calls give
  the same values.
- Corrected codes: the walk is over the corrected value; the raw value is derived
  from it and this tick's printed O2, and ``Zs = o2_corrected(raw, O2, O2ref)`` is
  then computed from the printed raw value and O2, as a logger does.
- Scenarios: ``breach`` draws every code that has a breach range from it;
  ``calibration`` flags the target codes C and they read span gas (their breach
  range, if any); ``fault`` flags them D and freezes their raw value at the last
  one measured before (Zs still follows O2). Other scenarios measure normally.
- :func:`aggregate`: Min/Avg/Max of the raw values and of the Zs values (Avg rounded
  half up), ``Cou = sum(raw * seconds since the previous tick) / cou_divisor``; the
  flag is D if any value was D, else C if any was C, else N.

Units (domain.md section 1 names the codes, not the units): mg/m3 for SO2, NOx and
particulate; % O2; degC; m3/h flue-gas flow; L/s wastewater flow (``Cou`` in m3);
mg/L COD and ammonia nitrogen. The ranges are those of an ultra-low-emission plant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import tzinfo
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal, NamedTuple
from zoneinfo import ZoneInfo


def o2_corrected(c: Decimal, o2: Decimal, o2_ref: Decimal, decimals: int) -> Decimal:
    """``c * (21 - o2_ref) / (21 - o2)``, rounded half up to ``decimals`` places."""
    if not o2 < 21:
        raise ValueError(f"measured O2 {o2} % leaves no oxygen to correct for")
    return quantize(c * (21 - o2_ref) / (21 - o2), decimals)


def quantize(value: Decimal, decimals: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class CodeSpec:
    """One pollutant code; ranges are of the corrected value when ``corrected``."""

    code: str
    decimals: int
    normal: tuple[float, float]
    breach: tuple[float, float] | None = None
    corrected: bool = False
    cou_divisor: int | None = None  # sum(Rtd * seconds) / this = Cou; None: no Cou


O2 = "a19001"
CEMS = (
    CodeSpec("a21026", 2, (15, 30), (60, 90), corrected=True),  # SO2 mg/m3
    CodeSpec("a21002", 2, (30, 45), (80, 120), corrected=True),  # NOx mg/m3
    CodeSpec("a34013", 2, (2, 6), (15, 25), corrected=True),  # particulate mg/m3
    CodeSpec(O2, 2, (6, 9)),  # %
    CodeSpec("a01012", 1, (45, 55)),  # flue temperature degC (after wet FGD)
    CodeSpec("a00000", 1, (6e5, 9e5), cou_divisor=3600),  # flue-gas flow m3/h
)
WASTEWATER = (
    CodeSpec("w00000", 2, (5, 15), cou_divisor=1000),  # flow L/s, Cou m3
    CodeSpec("w01018", 1, (20, 45), (120, 200)),  # COD mg/L
    CodeSpec("w21003", 2, (0.5, 4), (15, 30)),  # ammonia nitrogen mg/L
    CodeSpec("w01001", 2, (6.8, 7.8), (9.6, 10.5)),  # pH
)
#: kind → (ST, codes, the codes a calibration or fault hits by default)
KINDS: dict[str, tuple[str, tuple[CodeSpec, ...], frozenset[str]]] = {
    "cems": ("31", CEMS, frozenset({"a21026", "a21002", O2})),  # the gas analyser
    "wastewater": ("32", WASTEWATER, frozenset({"w01018"})),  # the COD analyser
}


@dataclass(frozen=True, slots=True)
class Station:
    """One logger. ``flag``: 4 = no reply wanted, 5 = reply (CN 9014) required;
    ``tz``: the logger's clock (DataTime, QN); ``minute``/``hourly``: send 2051/2061."""

    kind: Literal["cems", "wastewater"]
    mn: str
    pw: str = "123456"
    flag: int = 5
    tz: tzinfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    o2_ref: Decimal = Decimal(6)
    minute: bool = True
    hourly: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS or not self.mn or self.flag < 0:
            raise ValueError(f"bad station {self.kind!r} MN={self.mn!r} {self.flag}")

    @property
    def st(self) -> str:
        return KINDS[self.kind][0]

    @property
    def codes(self) -> tuple[CodeSpec, ...]:
        return KINDS[self.kind][1]

    @property
    def analyser(self) -> frozenset[str]:
        """The codes a calibration or fault hits unless the phase names others."""
        return KINDS[self.kind][2]


class Measured(NamedTuple):
    raw: Decimal
    zs: Decimal | None
    flag: str
    seconds: int  # since the previous tick (what this value stands for in Cou)


_FLAGS = {"calibration": "C", "fault": "D"}


class Analysers:
    """The analysers of one station: :meth:`measure` once per tick."""

    def __init__(self, station: Station, seed: int) -> None:
        self.station = station
        key = f"{seed}:{station.kind}:{station.mn}"
        self.rng = random.Random(key)  # noqa: S311 - reproducible, not secret
        self._u = {s.code: self.rng.random() for s in station.codes}
        self._last: dict[str, Decimal] = {}

    def measure(
        self, scenario: str, targets: frozenset[str], seconds: int
    ) -> dict[str, Measured]:
        """This tick's values, in the station's code order (see the module doc)."""
        out: dict[str, Measured] = {}
        ref = self.station.o2_ref
        # O2 first: the corrected codes need this tick's printed O2.
        for spec in sorted(self.station.codes, key=lambda s: s.corrected):
            u = self._u[spec.code] + self.rng.gauss(0.0, 0.04)
            u = -u if u < 0 else 2 - u if u > 1 else u  # reflect at the range ends
            u = self._u[spec.code] = min(max(u, 0.0), 1.0)
            hit = spec.code in targets and scenario in _FLAGS
            span = scenario == "breach" or (hit and scenario == "calibration")
            lo, hi = spec.breach if span and spec.breach else spec.normal
            level = Decimal(repr(lo + (hi - lo) * u))
            o2 = out[O2].raw if spec.corrected else ref
            raw = quantize(level * (21 - o2) / (21 - ref), spec.decimals)
            flag = _FLAGS[scenario] if hit else "N"
            if flag == "D":
                raw = self._last.get(spec.code, raw)
            else:
                self._last[spec.code] = raw
            zs = o2_corrected(raw, o2, ref, spec.decimals) if spec.corrected else None
            out[spec.code] = Measured(raw, zs, flag, seconds)
        return {s.code: out[s.code] for s in self.station.codes}


def real_time(m: Measured) -> dict[str, Decimal]:
    """The CN 2011 fields of one value: ``Rtd`` and, if corrected, ``ZsRtd``."""
    return {"Rtd": m.raw} if m.zs is None else {"Rtd": m.raw, "ZsRtd": m.zs}


def aggregate(spec: CodeSpec, values: list[Measured]) -> tuple[dict[str, Decimal], str]:
    """The interval fields (``Min``, ``Avg``, ..., ``Cou``) and flag of ``values``."""
    out: dict[str, Decimal] = {}
    for prefix, column in (
        ("", [v.raw for v in values]),
        ("Zs", [v.zs for v in values]),
    ):
        nums = [x for x in column if x is not None]
        if nums:
            mean = quantize(sum(nums, Decimal(0)) / len(nums), spec.decimals)
            out |= {f"{prefix}Min": min(nums), f"{prefix}Avg": mean}
            out[f"{prefix}Max"] = max(nums)
    if spec.cou_divisor:
        volume = sum((v.raw * v.seconds for v in values), Decimal(0))
        out["Cou"] = quantize(volume / spec.cou_divisor, spec.decimals)
    flags = {v.flag for v in values}
    return out, "D" if "D" in flags else "C" if "C" in flags else "N"
