"""What simulated plant meters measure, as pure functions of time.

A meter is a tuple of :class:`Channel`: where the value sits in the register map
(an :class:`~edge_agent.config.RegisterConfig`, exactly what an agent config
needs to read it) and the value in the device's unit at ``t`` seconds after the
simulation started. Rates follow a smooth daily-ish load curve; counters are its
exact integral, so they never go backwards and consumption between two readings
matches the rate. Everything is derived from ``random.Random(f"{seed}:{device}")``:
the same seed, device id and clock give the same values on every run.

Register layouts differ on purpose (word/byte orders, scales, units needing
conversion, holding vs input tables), as they do across real vendors.

Counter discontinuities, for tests of rollover and replacement handling:
:func:`with_counter` gives a meter whose counter reads a chosen value from a chosen
moment on (a replaced meter starting near 0, or one set just below
:func:`wrap_at` so that it rolls over soon); an integer register then wraps as a
real one does (:func:`edge_agent.modbus.encode_value`), and a counter whose
register config has ``rollover_at`` wraps at that display limit.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.config import RegisterConfig


@dataclass(frozen=True, slots=True)
class Profile:
    """``rate(t) = base * (1 + a sin(2πt/T1 + p1) + b sin(2πt/T2 + p2))``.

    ``a + b < 1`` keeps the rate positive, so counters only grow.
    """

    base: float
    a: float
    t1: float
    p1: float
    b: float
    t2: float
    p2: float

    @classmethod
    def random(cls, rng: random.Random, base: float) -> Profile:
        return cls(
            base=base,
            a=rng.uniform(0.05, 0.3),
            t1=rng.uniform(600.0, 3600.0),
            p1=rng.uniform(0, 2 * math.pi),
            b=rng.uniform(0.01, 0.1),
            t2=rng.uniform(20.0, 120.0),
            p2=rng.uniform(0, 2 * math.pi),
        )

    def rate(self, t: float) -> float:
        w1, w2 = 2 * math.pi / self.t1, 2 * math.pi / self.t2
        return self.base * (
            1
            + self.a * math.sin(w1 * t + self.p1)
            + self.b * math.sin(w2 * t + self.p2)
        )

    def integral_h(self, t: float) -> float:
        """∫₀ᵗ rate dt in rate-hours (kW → kWh, m3/h → m3)."""
        w1, w2 = 2 * math.pi / self.t1, 2 * math.pi / self.t2
        seconds = (
            t
            + self.a / w1 * (math.cos(self.p1) - math.cos(w1 * t + self.p1))
            + self.b / w2 * (math.cos(self.p2) - math.cos(w2 * t + self.p2))
        )
        return self.base * seconds / 3600.0


@dataclass(frozen=True, slots=True)
class Channel:
    register: RegisterConfig
    value: Callable[[float], float]  # device-unit value at t seconds


Meter = tuple[Channel, ...]


def _reg(
    address: int, type_: str, metric: str, unit: str, **kw: object
) -> RegisterConfig:
    return RegisterConfig.model_validate(
        {"address": address, "type": type_, "metric": metric, "unit": unit, **kw}
    )


def energy_meter(rng: random.Random, rated_kw: float) -> Meter:
    """Holding registers 0..8: kWh u32 x 0.1, kW f32, varh u64 word-swapped,
    power factor i16 x 0.001."""
    p = Profile.random(rng, rated_kw * rng.uniform(0.5, 0.8))
    e0 = rng.uniform(1e4, 1e6)  # kWh already on the register when we start
    tan_phi = rng.uniform(0.2, 0.45)
    q0 = rng.uniform(1e6, 1e8)  # varh
    pf = 1 / math.sqrt(1 + tan_phi**2)
    return (
        Channel(
            _reg(0, "u32", "active_energy", "kWh", scale=0.1),
            lambda t: e0 + p.integral_h(t),
        ),
        Channel(_reg(2, "f32", "active_power", "kW"), p.rate),
        Channel(
            _reg(4, "u64", "reactive_energy", "varh", word_order="little"),
            lambda t: q0 + 1000 * tan_phi * p.integral_h(t),
        ),
        Channel(
            _reg(8, "i16", "power_factor", "1", scale=0.001),
            lambda t: pf - 0.02 * math.sin(t / 97.0),
        ),
    )


def water_meter(rng: random.Random, rated_m3h: float) -> Meter:
    """Input registers 0..3: litres u32, m3/h f32 word-swapped (CDAB)."""
    p = Profile.random(rng, rated_m3h * rng.uniform(0.4, 0.8))
    v0 = rng.uniform(1e5, 1e7)  # litres
    return (
        Channel(
            _reg(0, "u32", "water_volume", "L", table="input"),
            lambda t: v0 + 1000 * p.integral_h(t),
        ),
        Channel(
            _reg(2, "f32", "water_flow", "m3/h", table="input", word_order="little"),
            p.rate,
        ),
    )


def steam_meter(rng: random.Random, rated_th: float) -> Meter:
    """Holding registers 0..5: kg u32, t/h f32, MJ u32."""
    p = Profile.random(rng, rated_th * rng.uniform(0.5, 0.8))
    m0 = rng.uniform(1e5, 1e7)  # kg
    h0 = rng.uniform(1e5, 1e7)  # MJ
    enthalpy_mj_per_t = rng.uniform(2700.0, 3000.0)
    return (
        Channel(
            _reg(0, "u32", "steam_mass", "kg"),
            lambda t: m0 + 1000 * p.integral_h(t),
        ),
        Channel(_reg(2, "f32", "steam_flow", "t/h"), p.rate),
        Channel(
            _reg(4, "u32", "steam_heat", "MJ"),
            lambda t: h0 + enthalpy_mj_per_t * p.integral_h(t),
        ),
    )


def production_counter(rng: random.Random, rated_th: float) -> Meter:
    """Input registers 0..5: kg u64 x 0.001 (grams), t/h f32 byte-swapped (BADC)."""
    p = Profile.random(rng, rated_th * rng.uniform(0.6, 0.9))
    m0 = rng.uniform(1e6, 1e8)  # kg
    return (
        Channel(
            _reg(0, "u64", "production_mass", "kg", table="input", scale=0.001),
            lambda t: m0 + 1000 * p.integral_h(t),
        ),
        Channel(
            _reg(
                4, "f32", "production_rate", "t/h", table="input", byte_order="little"
            ),
            p.rate,
        ),
    )


def wrap_at(reg: RegisterConfig) -> float | None:
    """The device-unit value at which ``reg`` reads its lowest value again.

    ``rollover_at`` if configured; else, for an integer register, where the raw
    count leaves its range: ``offset + 2**bits * scale`` unsigned, ``offset +
    2**(bits-1) * scale`` signed (it turns negative there); None for a float.
    """
    if reg.rollover_at is not None:
        return reg.rollover_at
    if reg.type.startswith("f"):
        return None
    bits = 16 * reg.width - (1 if reg.type.startswith("i") else 0)
    return reg.offset + float(2**bits) * reg.scale


def with_counter(meter: Meter, metric: str, *, at_t: float, value: float) -> Meter:
    """``meter``, its ``metric`` counter reading ``value`` at ``at_t`` s and after.

    The counter keeps growing at the meter's rate from there (the rest of the meter
    is unchanged). With ``rollover_at`` on the register the value wraps there.
    Raises ``KeyError`` if the meter has no such metric.
    """
    if all(ch.register.metric != metric for ch in meter):
        raise KeyError(metric)
    return tuple(
        dataclasses.replace(ch, value=_shifted(ch, at_t, value))
        if ch.register.metric == metric
        else ch
        for ch in meter
    )


def _shifted(ch: Channel, at_t: float, value: float) -> Callable[[float], float]:
    base = ch.value
    shift = value - base(at_t)
    limit = ch.register.rollover_at

    def shifted(t: float) -> float:
        v = base(t) + shift
        return v % limit if limit is not None else v

    return shifted


MeterFactory = Callable[[random.Random, float], Meter]
KINDS: dict[str, tuple[MeterFactory, float]] = {
    # kind: (factory, rated size)
    "energy": (energy_meter, 8000.0),  # kW
    "water": (water_meter, 120.0),  # m3/h
    "steam": (steam_meter, 60.0),  # t/h
    "production": (production_counter, 25.0),  # t/h
}


def build_meter(kind: str, *, seed: int, device_id: str) -> Meter:
    factory, rated = KINDS[kind]
    rng = random.Random(f"{seed}:{device_id}")  # noqa: S311 - reproducible, not secret
    return factory(rng, rated * rng.uniform(0.5, 1.5))
