"""The arithmetic every component bench reports with: drain rates from progress
samples, ratios against baselines and goals, enterprises per core."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.figures import Figure, Progress, drain_rate, group_cpu
from bench.report import Capacity, chain_enterprises_per_core, windowed


def _progress(total: int, samples: list[tuple[float, int]]) -> Progress:
    p = Progress("x", total)
    for t, n in samples:
        p.add(t, n)
    return p


@pytest.mark.parametrize(
    ("total", "samples", "rate"),
    [
        # start-up (zeros) is left out: from the first progress to the end
        (100, [(0.0, 0), (0.5, 0), (1.0, 20), (2.0, 60), (3.0, 100)], 40.0),
        # the first sample showing the end counts, not later ones
        (100, [(0.0, 10), (1.0, 100), (2.0, 100)], 90.0),
        # done within one sample: from the last idle sample, a lower bound
        (100, [(0.0, 0), (0.2, 0), (0.4, 100)], 500.0),
        # never finished, or finished without any span to measure
        (100, [(0.0, 0), (1.0, 50)], math.nan),
        (100, [(0.0, 100)], math.nan),
        (100, [], math.nan),
    ],
)
def test_drain_rate(total: int, samples: list[tuple[float, int]], rate: float) -> None:
    got = drain_rate(_progress(total, samples))
    if math.isnan(rate):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(rate)


@pytest.mark.parametrize(
    ("value", "baseline", "goal_ratio", "goal_max", "meets", "text"),
    [
        (70.0, 100.0, 0.7, None, True, "goal ratio >= 70%: met"),
        (69.9, 100.0, 0.7, None, False, "goal ratio >= 70%: NOT met"),
        (100.0, 60.0, None, 100.0, True, "goal <= 100 B: met"),
        (100.1, 60.0, None, 100.0, False, "goal <= 100 B: NOT met"),
        (5.0, 10.0, None, None, None, ""),
    ],
)
def test_figure_goals(
    value: float,
    baseline: float,
    goal_ratio: float | None,
    goal_max: float | None,
    meets: bool | None,
    text: str,
) -> None:
    f = Figure("f", value, "B", "b", baseline, goal_ratio, goal_max)
    assert f.ratio == pytest.approx(value / baseline)
    assert f.meets_goal is meets
    assert f.goal_text() == text


def test_ratio_without_baseline_is_nan() -> None:
    assert math.isnan(Figure("f", 1.0, "x", "b", 0.0).ratio)


def test_chain_adds_the_time_a_reading_takes_in_each_component() -> None:
    # 200 and 200 enterprises a core: one core running both carries 100.
    caps = [Capacity("a", 4000.0), Capacity("b", 4000.0)]
    assert [c.enterprises for c in caps] == [200.0, 200.0]
    assert chain_enterprises_per_core(caps) == pytest.approx(100.0)


def test_windowed_rate_smooths_batches_committed_at_once() -> None:
    # 1000 units committed every 0.5 s, sampled every 0.1 s: 2000 a second, which
    # sample to sample reads as 10 000 a second and then nothing.
    samples = [(i / 10, 1000 * (i // 5)) for i in range(31)]
    xs, ys = windowed(_progress(6000, samples), window_s=1.0)
    steady = [y for x, y in zip(xs, ys, strict=True) if x >= 1.0]
    assert len(steady) == 21
    # within one batch of the window's worth: no spike, no zero
    assert all(1000 <= y <= 2000 * 1.12 for y in steady), steady


_BURN = """
import os, subprocess, sys, time
for _ in range(4):  # children that each burn 0.25 s of CPU and end at once
    subprocess.run([sys.executable, "-c",
        "import time\\nt = time.process_time()\\n"
        "while time.process_time() - t < 0.25: pass"], check=True)
print("done", flush=True)
time.sleep(30)
"""


def test_group_cpu_counts_children_that_ended_between_snapshots() -> None:
    """A parent's reaped children count in its group: PostgreSQL's parallel
    workers and autovacuum end within a second, and sampling each live process's
    own time missed them."""
    with subprocess.Popen(
        [sys.executable, "-c", _BURN], stdout=subprocess.PIPE, text=True
    ) as parent:
        mine = str(parent.pid)

        def classify(entry: Path) -> str | None:
            return "burner" if entry.name == mine else None

        try:
            before = group_cpu(classify).get("burner", 0.0)
            assert parent.stdout is not None
            assert parent.stdout.readline() == "done\n"
            after = group_cpu(classify)["burner"]
        finally:
            parent.kill()
    # four children of 0.25 s each, none of them alive at either snapshot
    assert after - before >= 0.9
