"""Counters that go backwards: rollover or replacement, told apart at the edge.

A counter metric (catalogue ``Kind.COUNTER``: energy, volumes, masses) only grows;
consumption is the difference of two readings. When a reading is *below* the
previous reading of the same (device, metric), the step across it is not
``value - previous`` and :class:`CounterGuard` says why, in the sample's ``reset``
(carried on the wire as ``reset``, see :mod:`smartpark.wire`):

- ``rollover``: the register wrapped. The device's register for the metric has a
  known wrap modulus ``M`` (catalogue unit): an explicit ``rollover_at`` in the
  register config (a meter whose display wraps at e.g. 99 999 999), else for an
  integer register ``2**(16 * width)`` raw counts, i.e. ``M = 2**(16*width) * |scale|``
  in the device unit, converted with :func:`smartpark.catalogue.to_canonical`. The
  step across the wrap is then ``value + M - previous``; it is called a rollover only
  if that step is at most ``ROLLOVER_MAX_FRACTION`` (10 %) of ``M``. A counter that
  consumed a tenth of its whole range between two polls is not plausible; a meter
  swapped for one that starts near 0 is.
- ``replacement``: any other backwards step: no modulus (float registers, HJ 212
  series), or a step that is too large for a wrap, or a value below ``previous - M``.

Limits of the heuristic, by construction: a replacement whose new reading happens to
land within 10 % of ``M`` past the wrap (a new meter started at 0 shortly after the
old one was close to its limit) is indistinguishable from a rollover and is called
one; a wrap that consumed more than 10 % of ``M`` since the last stored reading (a
long outage on a small register) is called a replacement. Either way the reading is
flagged, so no consumer takes the backwards step for negative consumption.

The first reading of a series (nothing known before it) and a reading equal to or
above the previous one are left unannotated. Gauges are never touched.

State: the last value of each (device, metric) counter series, as it was *stored*.
:meth:`CounterGuard.check` is pure (it does not change the state); the caller
stores the checked samples and the new last values in one outbox transaction
(:meth:`edge_agent.outbox.Outbox.append` with ``last_counters``), then calls
:meth:`CounterGuard.commit`. A poll that is refused or fails to store therefore does
not advance the state, and the next stored reading is compared with the last one
that will actually reach the platform. :meth:`snapshot` / :meth:`restore` carry the
state across restarts (the outbox holds it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edge_agent.config import AgentConfig, RegisterConfig
from edge_agent.sample import Sample
from smartpark.catalogue import METRICS, Kind, to_canonical
from smartpark.wire import Reset

# A wrap is believed only if the step across it is at most this share of the range.
ROLLOVER_MAX_FRACTION = 0.1
_INTEGER_TYPES = frozenset({"u16", "i16", "u32", "i32", "u64", "i64"})
_COUNTERS = frozenset(name for name, m in METRICS.items() if m.kind is Kind.COUNTER)

SeriesKey = tuple[str, str]
"""(device, metric)."""


def register_modulus(reg: RegisterConfig) -> float | None:
    """The value range after which ``reg`` wraps to 0, in the metric's catalogue unit.

    ``rollover_at`` when configured (it wins: a display limit is reached before the
    register's own), else ``2**(16*width) * |scale|`` for an integer register, else
    None (a float register does not wrap).
    """
    if reg.rollover_at is not None:
        return to_canonical(reg.metric, reg.rollover_at, reg.unit)
    if reg.type in _INTEGER_TYPES:
        span = float(2 ** (16 * reg.width)) * abs(reg.scale)
        return to_canonical(reg.metric, span, reg.unit)
    return None


def moduli_from_config(config: AgentConfig) -> dict[SeriesKey, float]:
    """Wrap modulus of every counter series of the config's register-mapped devices.

    Series not listed (float registers, HJ 212 series) have no known modulus.
    """
    out: dict[SeriesKey, float] = {}
    for device in config.devices:
        for reg in device.registers:
            if reg.metric in _COUNTERS:
                modulus = register_modulus(reg)
                if modulus is not None:
                    out[(device.id, reg.metric)] = modulus
    return out


def classify(previous: float, value: float, modulus: float | None) -> Reset | None:
    """The reset of a counter step ``previous -> value`` (see the module contract)."""
    if value >= previous:
        return None
    if modulus is not None and 0 <= value + modulus - previous <= (
        ROLLOVER_MAX_FRACTION * modulus
    ):
        return Reset.ROLLOVER
    return Reset.REPLACEMENT


@dataclass(frozen=True, slots=True)
class CounterReset:
    """One flagged reading, for the agent's counters and log."""

    metric: str
    kind: Reset
    previous: float
    value: float


@dataclass(frozen=True, slots=True)
class Checked:
    """The outcome of :meth:`CounterGuard.check` for one poll of one device.

    ``samples``: the poll, counters annotated with ``reset`` where flagged (gauges and
    continuing counters unchanged, order kept). ``last``: the new last value of each
    counter metric in the poll, to store with the samples. ``resets``: what was
    flagged.
    """

    device: str
    samples: list[Sample]
    last: dict[str, float]
    resets: list[CounterReset]

    @property
    def rollovers(self) -> int:
        return sum(r.kind is Reset.ROLLOVER for r in self.resets)

    @property
    def replacements(self) -> int:
        return sum(r.kind is Reset.REPLACEMENT for r in self.resets)


class CounterGuard:
    """Flags counter readings that go backwards (see the module contract).

    ``moduli`` maps (device, metric) to the series' wrap modulus in the catalogue
    unit; a counter series without an entry has none (any backwards step is a
    replacement).
    """

    def __init__(self, moduli: Mapping[SeriesKey, float]) -> None:
        self._moduli = dict(moduli)
        self._last: dict[SeriesKey, float] = {}

    @classmethod
    def from_config(cls, config: AgentConfig) -> CounterGuard:
        return cls(moduli_from_config(config))

    def modulus(self, device: str, metric: str) -> float | None:
        return self._moduli.get((device, metric))

    def check(self, device: str, samples: Sequence[Sample]) -> Checked:
        """Annotate one poll against the stored state; does not change the state."""
        out: list[Sample] = []
        last: dict[str, float] = {}
        resets: list[CounterReset] = []
        for s in samples:
            if s.metric not in _COUNTERS:
                out.append(s)
                continue
            previous = last.get(s.metric, self._last.get((device, s.metric)))
            modulus = self.modulus(device, s.metric)
            if (
                previous is not None
                and (kind := classify(previous, s.value, modulus)) is not None
            ):
                out.append(dataclasses.replace(s, reset=kind.value))
                resets.append(CounterReset(s.metric, kind, previous, s.value))
            else:
                out.append(s)
            last[s.metric] = s.value
        return Checked(device, out, last, resets)

    def commit(self, checked: Checked) -> None:
        """Take ``checked.last`` as stored: later polls compare against it."""
        for metric, value in checked.last.items():
            self._last[(checked.device, metric)] = value

    def last(self, device: str, metric: str) -> float | None:
        """The last stored value of the series, None if none is known."""
        return self._last.get((device, metric))

    def snapshot(self) -> dict[SeriesKey, float]:
        """The state: the last stored value per (device, metric) counter series."""
        return dict(self._last)

    def restore(self, state: Mapping[SeriesKey, float]) -> None:
        """Replace the state with a :meth:`snapshot` (e.g. as the outbox kept it)."""
        self._last = dict(state)
