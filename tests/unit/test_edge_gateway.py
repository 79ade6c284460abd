"""Gateway messages (``publish.gateway``): which rows of which devices share one.

:func:`edge_agent.publisher.pack` chooses the rows of one message; the publisher
calls it again and again, moving each device's cursor past what it took. Over any
backlog that must hand out every row exactly once, keep each device's rows in
outbox order across messages, never exceed the budget, name a device at most once
a message, and serve the devices round-robin. The config is checked at load.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import PublishConfig, load_config
from edge_agent.outbox import Row
from edge_agent.publisher import pack
from edge_agent.sample import Sample
from smartpark import wire
from smartpark.errors import ConfigError
from tests.unit.test_edge_config import GOOD, error_of, write
from tests.unit.test_edge_outbox import FakeClock, make

TS_MS = 1_767_225_600_000


def row(id_: int, device: str) -> Row:
    return Row(id_, device, id_, "active_power", 1.0, "kW", TS_MS, "N")


def backlog(counts: dict[str, int]) -> dict[str, list[Row]]:
    """Rows of each device, ids growing across devices as the outbox hands them."""
    rows: dict[str, list[Row]] = {d: [] for d in counts}
    next_id = 1
    for i in range(max(counts.values(), default=0)):
        for device, n in counts.items():
            if i < n:
                rows[device].append(row(next_id, device))
                next_id += 1
    return rows


class Pending:
    """An outbox stand-in: ``take`` hands rows after each device's cursor."""

    def __init__(self, rows: dict[str, list[Row]]) -> None:
        self.rows = rows
        self.cursor: dict[str, int] = {}

    def take(self, device: str, limit: int) -> Sequence[Row]:
        after = self.cursor.get(device, 0)
        return [r for r in self.rows.get(device, []) if r.id > after][:limit]

    def send(
        self, devices: list[str], start: int, budget: int
    ) -> tuple[list[tuple[str, Sequence[Row]]], int]:
        chosen, start = pack(devices, start, budget, self.take)
        for device, rows in chosen:
            self.cursor[device] = rows[-1].id
        return chosen, start


def shape(chosen: list[tuple[str, Sequence[Row]]]) -> list[tuple[str, int]]:
    return [(device, len(rows)) for device, rows in chosen]


@pytest.mark.parametrize(
    ("counts", "start", "budget", "expected", "next_start"),
    [
        # everything fits: every device with rows, in order from start
        ({"a": 2, "b": 3, "c": 1}, 0, 10, [("a", 2), ("b", 3), ("c", 1)], 0),
        ({"a": 2, "b": 3, "c": 1}, 1, 10, [("b", 3), ("c", 1), ("a", 2)], 1),
        # a device with nothing pending is skipped; the next start follows the last
        ({"a": 2, "b": 0, "c": 1}, 0, 10, [("a", 2), ("c", 1)], 0),
        ({"a": 2, "b": 0, "c": 0}, 1, 10, [("a", 2)], 1),
        # the budget ends inside a device: it takes what fits, the next starts after
        ({"a": 4, "b": 4, "c": 4}, 0, 6, [("a", 4), ("b", 2)], 2),
        ({"a": 9, "b": 4, "c": 4}, 0, 6, [("a", 6)], 1),
        ({"a": 4, "b": 4, "c": 4}, 2, 5, [("c", 4), ("a", 1)], 1),
        # a start beyond the list (devices went away) wraps around
        ({"a": 1, "b": 1}, 5, 10, [("b", 1), ("a", 1)], 1),
        # nothing pending, or no devices
        ({"a": 0, "b": 0}, 1, 10, [], 1),
        ({}, 3, 10, [], 0),
    ],
)
def test_pack_takes_devices_in_turn_until_the_budget(
    counts: dict[str, int],
    start: int,
    budget: int,
    expected: list[tuple[str, int]],
    next_start: int,
) -> None:
    pending = Pending(backlog(counts))
    chosen, after = pack(list(counts), start, budget, pending.take)
    assert shape(chosen) == expected
    assert after == next_start
    for device, rows in chosen:  # each device's oldest rows, in outbox order
        assert list(rows) == pending.rows[device][: len(rows)]


def test_a_big_backlog_does_not_starve_the_other_devices() -> None:
    pending = Pending(backlog({"big": 100, "b": 1, "c": 1}))
    devices, start = ["big", "b", "c"], 0
    messages = []
    for _ in range(3):
        chosen, start = pending.send(devices, start, 10)
        messages.append(shape(chosen))
    # big fills the first message; the next one starts with the others
    assert messages == [[("big", 10)], [("b", 1), ("c", 1), ("big", 8)], [("big", 10)]]


@given(
    counts=st.dictionaries(
        st.sampled_from(["d1", "d2", "d3", "d4", "d5"]),
        st.integers(0, 40),
        min_size=1,
    ),
    budget=st.integers(1, 25),
    start=st.integers(0, 10),
    arrivals=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 5)), max_size=5),
)
def test_every_row_goes_exactly_once_in_order_within_the_budget(
    counts: dict[str, int],
    budget: int,
    start: int,
    arrivals: list[tuple[int, int]],
) -> None:
    rows = backlog(counts)
    devices = sorted(rows)
    pending = Pending(rows)
    next_id = sum(counts.values()) + 1
    sent: dict[str, list[int]] = {d: [] for d in devices}
    waiting_since: dict[str, int] = {}  # device -> message number it has rows since
    for number in range(10_000):
        if arrivals and number % 2:  # rows keep arriving between messages
            at, n = arrivals.pop()
            device = devices[at % len(devices)]
            for _ in range(n):
                rows[device].append(row(next_id, device))
                next_id += 1
        for device in devices:
            if pending.take(device, 1):
                waiting_since.setdefault(device, number)
        chosen, start = pending.send(devices, start, budget)
        if not chosen:
            assert not arrivals or all(not pending.take(d, 1) for d in devices)
            if not arrivals:
                break
            continue
        names = [device for device, _ in chosen]
        assert len(names) == len(set(names)), "a device twice in one message"
        assert 0 < sum(len(r) for _, r in chosen) <= budget
        for device, taken in chosen:
            sent[device] += [r.id for r in taken]
            waiting_since.pop(device, None)
        # round-robin: a device with rows waits at most one message per device
        for device, since in waiting_since.items():
            assert number - since < len(devices), (device, since, number)
    for device in devices:
        assert sent[device] == [r.id for r in rows[device]], device


def test_a_packed_message_is_one_the_platform_accepts(tmp_path: Path) -> None:
    """Rows of a real outbox, packed and encoded as the publisher does, decode
    with the platform's own validation into the same readings per device."""
    box = make(tmp_path / "o.db", FakeClock())
    for i in range(3):
        for device in ("m1", "m2", "m3"):
            box.append(
                device,
                [
                    Sample("active_energy", 100.0 + i, "kWh", TS_MS + i * 1000),
                    Sample("active_power", 2.5, "kW", TS_MS + i * 1000),
                ],
            )
    cursor: dict[str, int] = {}

    def take(device: str, limit: int) -> list[Row]:
        return box.pending(limit, device=device, after_id=cursor.get(device, 0))

    decoded = []
    start = 0
    while True:
        chosen, start = pack(box.devices(), start, 5, take)
        if not chosen:
            break
        message = wire.GatewayBatch(
            "p1",
            "e1",
            "agent.edge-e1",
            tuple(
                wire.TelemetryBatch(
                    "p1",
                    "e1",
                    device,
                    tuple(
                        wire.Reading(r.seq, r.metric, r.value, r.unit, r.ts_ms)
                        for r in rows
                    ),
                    box.epoch,
                )
                for device, rows in chosen
            ),
        )
        for device, rows in chosen:
            cursor[device] = rows[-1].id
        decoded.append(
            wire.decode_message(
                wire.encode_gateway(message), now_ms=int(time.time() * 1000)
            )
        )
    box.close()
    assert [d.readings for d in decoded] == [5, 5, 5, 3]  # 18 readings, 4 messages
    assert all(d.version == wire.GATEWAY_VERSION for d in decoded)
    assert {d.sender for d in decoded} == {"agent.edge-e1"}
    got: dict[str, list[tuple[int, str]]] = {}
    for d in decoded:
        for b in d.batches:
            assert b.epoch == box.epoch
            got.setdefault(b.device, []).extend((r.seq, r.metric) for r in b.readings)
    polls = [(s, m) for s in (1, 2, 3) for m in ("active_energy", "active_power")]
    assert got == {"m1": polls, "m2": polls, "m3": polls}


# --- config -------------------------------------------------------------------


def test_gateway_messages_are_off_unless_asked_for(tmp_path: Path) -> None:
    assert PublishConfig().gateway is False
    assert load_config(write(tmp_path, GOOD)).publish.gateway is False
    text = GOOD.replace(
        "publish: {max_readings_per_message: 500, max_in_flight: 20}",
        "publish: {gateway: true, gateway_linger_s: 0.25}",
    )
    publish = load_config(write(tmp_path, text)).publish
    assert (publish.gateway, publish.gateway_linger_s) == (True, 0.25)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "gateway_linger_s: -1",
            "agent.yaml:4: publish.gateway_linger_s: Input should be greater than or"
            " equal to 0",
        ),
        ("gateway: maybe", "agent.yaml:4: publish.gateway: Input should be a valid"),
    ],
)
def test_a_bad_gateway_setting_names_its_line(
    tmp_path: Path, setting: str, message: str
) -> None:
    text = GOOD.replace(
        "publish: {max_readings_per_message: 500, max_in_flight: 20}",
        f"publish: {{{setting}}}",
    )
    err = error_of(tmp_path, text)
    assert isinstance(err, ConfigError)
    assert str(err).startswith(message), str(err)
