"""Property: for any reading stream, a run interrupted anywhere (snapshot, JSON,
restore) raises exactly the events of an uninterrupted run, across all rule kinds;
and the same stream always gives the same events."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.engine import Engine
from rules.model import Obs
from rules.pack import parse_pack

T0 = 1_706_716_800_000  # 2024-01-31T16:00Z: a local month boundary in Shanghai
PACK = parse_pack(
    {
        "pack": "property",
        "version": "1",
        "watermark_delay": "1min",
        "allowed_lateness": "15min",
        "timezone": "Asia/Shanghai",
        "rules": [
            {"id": "t", "kind": "threshold", "metric": "so2", "limit": 50, "clear": 40},
            {"id": "w", "kind": "window", "metric": "so2", "window": "10min",
             "aggregate": "mean", "limit": 45, "min_valid": 2,
             "o2_correction": {"reference": 6, "o2_metric": "o2"}},
            {"id": "d", "kind": "duration", "metric": "so2", "limit": 45,
             "for": "3min"},
            {"id": "r", "kind": "rate_of_change", "metric": "so2", "limit": 20},
            {"id": "m", "kind": "missing_data", "metrics": ["so2"],
             "expected_interval": "1min", "max_silence": "5min"},
            {"id": "q", "kind": "quota", "period": "day", "limit": 30,
             "inputs": [{"metric": "water_volume"}]},
            {"id": "x", "kind": "ratio", "period": "day", "limit": 2,
             "numerator": {"metric": "water_volume"},
             "denominator": {"metric": "production_mass"}},
        ],
    }
)  # fmt: skip

readings = st.lists(
    st.tuples(
        st.integers(0, 3),  # device
        st.sampled_from(["so2", "o2", "water_volume", "production_mass"]),
        st.floats(0, 100, allow_nan=False),
        st.integers(-5, 30),  # minutes after the previous reading (< 0: late)
        st.sampled_from("NNNNC"),
        st.sampled_from([None, None, None, "replacement"]),
    ),
    max_size=80,
)


def stream_of(raw: list[tuple[int, str, float, int, str, str | None]]) -> list[Obs]:
    out, ts = [], T0
    for device, metric, value, step, flag, reset in raw:
        ts += step * 60_000
        counter = metric in ("water_volume", "production_mass")
        out.append(
            Obs(
                ts, "p1", f"e{device % 2}", f"d{device}", metric, value, flag, 0,
                reset if counter else None,
            )
        )  # fmt: skip
    return out


def run(engine: Engine, stream: list[Obs]) -> list[str]:
    return [e.to_line() for o in stream for e in engine.feed(o)]


@settings(max_examples=150)
@given(readings, st.data())
def test_an_interrupted_run_raises_exactly_what_an_uninterrupted_one_does(
    raw: list[tuple[int, str, float, int, str, str | None]], data: st.DataObject
) -> None:
    stream = stream_of(raw)
    whole = run(Engine(PACK), stream)
    assert run(Engine(PACK), stream) == whole  # deterministic
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=3)))
    engine, got, at = Engine(PACK), [], 0
    for cut in cuts:
        got += run(engine, stream[at:cut])
        engine = Engine.restore(PACK, json.loads(json.dumps(engine.snapshot())))
        at = cut
    got += run(engine, stream[at:])
    assert got == whole
