"""Rule core throughput: hourly means with O2 correction, against NumPy (a script).

    .venv/bin/python -m bench.rules_bench [--stacks 200] [--hours 6]

Generates CEMS data shaped like the city's stacks (one SO2 and one O2 reading per
stack per minute, the O2 at the same event time, a few flagged C), then measures in
one run:

  (a) the rule core: ``rules.engine.Engine`` with one ``window`` rule (hourly mean
      of SO2 corrected to 6 % O2, validity and hysteresis included), fed every
      reading one at a time in stream order, as the runner does;
  (b) NumPy: the same corrected hourly means computed column-wise over arrays built
      beforehand (no validity, no lifecycle, no events) — the floor for the
      arithmetic alone.

It checks that both give the same hourly means, then prints readings/s of each, the
ratio, and the headroom of (a) over the city reference rate.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any

import numpy as np

from rules.engine import Engine
from rules.kinds.base import RuleSpec
from rules.model import AlertEvent, Finding, Obs
from rules.pack import parse_pack

CITY_READINGS_PER_S = 5600
T0 = 1_704_067_200_000  # 2024-01-01T00:00Z
MINUTE, HOUR = 60_000, 3_600_000
PACK = {
    "pack": "bench",
    "version": "1",
    "watermark_delay": 0,
    "allowed_lateness": "1h",
    "rules": [
        {
            "id": "so2-hourly",
            "kind": "window",
            "metric": "so2",
            "window": "1h",
            "aggregate": "mean",
            "limit": 35,
            "o2_correction": {"reference": 6, "o2_metric": "o2"},
        }
    ],
}


def generate(stacks: int, hours: int, seed: int) -> list[Obs]:
    rng = random.Random(seed)
    out: list[Obs] = []
    for minute in range(hours * 60 + 1):  # one more: closes the last hour
        ts = T0 + minute * MINUTE
        for s in range(stacks):
            device = f"e{s // 2}.stack-{s % 2}"
            enterprise = f"e{s // 2}"
            flag = "C" if rng.random() < 0.02 else "N"
            so2 = round(rng.uniform(15, 40), 2)
            o2 = round(rng.uniform(5.5, 9.5), 2)
            out.append(Obs(ts, "p1", enterprise, device, "so2", so2, flag))
            out.append(Obs(ts, "p1", enterprise, device, "o2", o2))
    return out


class RecordingEngine(Engine):
    """The engine, also keeping every window verdict (the lifecycle only turns
    changes into events, and a compliant hour is no event)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.means: dict[tuple[str, int], float] = {}

    def _lifecycle(self, rule: RuleSpec, findings: list[Finding]) -> list[AlertEvent]:
        for f in findings:
            if f.window is not None and f.value is not None and not f.revision:
                self.means[(f.scope.device or "", f.window.start_ms)] = f.value
        return super()._lifecycle(rule, findings)


def core(stream: list[Obs]) -> tuple[float, dict[tuple[str, int], float]]:
    engine = RecordingEngine(parse_pack(PACK))
    started = time.perf_counter()
    for obs in stream:
        engine.feed(obs)
    return time.perf_counter() - started, engine.means


def numpy_means(stream: list[Obs]) -> tuple[float, dict[tuple[str, int], float]]:
    # Arrays built outside the timing, as a columnar engine would hold them.
    so2 = [o for o in stream if o.metric == "so2"]
    o2 = {(o.device, o.ts_ms): o.value for o in stream if o.metric == "o2"}
    devices = sorted({o.device for o in so2})
    index = {d: i for i, d in enumerate(devices)}
    dev = np.array([index[o.device] for o in so2])
    ts = np.array([o.ts_ms for o in so2], dtype=np.int64)
    c = np.array([o.value for o in so2])
    ox = np.array([o2[(o.device, o.ts_ms)] for o in so2])
    valid = np.array([o.quality == "N" for o in so2])
    started = time.perf_counter()
    hour = (ts - T0) // HOUR
    closed = hour < hour.max()  # the last hour is still open in the core too
    keep = valid & closed
    corrected = c[keep] * (21 - 6) / (21 - ox[keep])
    key = dev[keep] * (hour.max() + 1) + hour[keep]
    sums = np.bincount(key, weights=corrected)
    counts = np.bincount(key)
    nz = np.nonzero(counts)[0]
    result = sums[nz] / counts[nz]
    elapsed = time.perf_counter() - started
    nhours = int(hour.max()) + 1
    means = {
        (devices[int(k) // nhours], T0 + int(k) % nhours * HOUR): float(m)
        for k, m in zip(nz, result, strict=True)
    }
    return elapsed, means


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, default=200)
    parser.add_argument("--hours", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    stream = generate(args.stacks, args.hours, args.seed)
    n = len(stream)
    print(f"{n} readings: {args.stacks} stacks x {args.hours} h, SO2 + O2 per minute")
    t_core, core_means = core(stream)
    t_np, np_means = numpy_means(stream)
    worst = max(abs(core_means[k] - np_means[k]) for k in np_means)
    same = core_means.keys() == np_means.keys() and worst < 1e-9
    print(f"hourly means: {len(np_means)}, equal: {same} (max diff {worst:.1e})")
    print(f"(a) rule core : {n / t_core:12,.0f} readings/s ({t_core:.2f} s)")
    print(
        f"(b) NumPy     : {n / t_np:12,.0f} readings/s ({t_np:.4f} s, arithmetic only)"
    )
    print(f"(a)/(b)       : {t_np / t_core:.4%}")
    print(
        f"headroom      : {n / t_core / CITY_READINGS_PER_S:.1f}x the city reference"
        f" ({CITY_READINGS_PER_S} readings/s, all kinds of readings) on one core"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
