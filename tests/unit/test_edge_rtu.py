"""Modbus RTU: the agent's pymodbus clients against simulated slaves on a real
pseudo-terminal pair (and over TCP), sharing one bus per line or gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU

from edge_agent import cli
from edge_agent.config import AgentConfig, parse_config
from edge_agent.modbus import ModbusExceptionResponse
from edge_agent.pollers import Poller, make_pollers
from edge_agent.rtu import RtuPoller
from edge_agent.sample import Sample, to_ms
from simulators.device import Fault
from simulators.meters import build_meter
from simulators.rtu import PtyRtuLine, RequestFramer, RtuSlaves, TcpRtuGateway, crc16
from simulators.rtu import with_crc as framed
from smartpark.catalogue import to_canonical
from smartpark.errors import DeviceError, DeviceTimeout

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


# --- framing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "crc"),
    [
        # the Modbus over serial line spec's and vendor manuals' worked examples
        ("01 03 00 00 00 0A", "C5 CD"),
        ("11 03 00 6B 00 03", "76 87"),
        ("01 04 00 00 00 01", "31 CA"),
    ],
)
def test_crc16_golden(body: str, crc: str) -> None:
    assert framed(bytes.fromhex(body))[-2:] == bytes.fromhex(crc)


@given(st.binary(max_size=260))
def test_crc16_matches_pymodbus(data: bytes) -> None:
    assert crc16(data).to_bytes(2, "little") == FramerRTU.compute_CRC(data).to_bytes(
        2, "big"
    )


READ = framed(bytes.fromhex("03 03 00 00 00 02"))
WRITE_MULTIPLE = framed(bytes.fromhex("03 10 00 00 00 01 02 12 34"))


@pytest.mark.parametrize(
    ("chunks", "frames"),
    [
        ([READ], [READ]),
        ([READ[:3], READ[3:7], READ[7:]], [READ]),  # a frame arriving in pieces
        ([READ + READ], [READ, READ]),
        ([b"\x00\xff" + READ], [READ]),  # line noise before a frame
        ([READ[:-1] + b"\x00" + READ], [READ]),  # a corrupted frame, then a good one
        ([WRITE_MULTIPLE[:8], WRITE_MULTIPLE[8:]], [WRITE_MULTIPLE]),  # byte count
    ],
)
def test_request_framer(chunks: list[bytes], frames: list[bytes]) -> None:
    framer = RequestFramer()
    assert [f for c in chunks for f in framer.feed(c)] == frames


# --- the agent's pollers against the simulator ------------------------------


def agent_config(
    devices: list[dict[str, object]], serial_lines: list[dict[str, object]]
) -> AgentConfig:
    return parse_config(
        {
            "site": {"park": "p1", "enterprise": "e1"},
            "broker": {"host": "127.0.0.1", "client_id": "edge-test"},
            "outbox": {"path": "unused.db"},
            "serial_lines": serial_lines,
            "devices": devices,
        },
        source="test",
    )


def on_line(line: PtyRtuLine, unit: int, device_id: str, **kw: Any) -> dict[str, Any]:
    where = {"protocol": "modbus_rtu", "line": "line-1", "poll_interval_s": 1.0}
    return line.slaves.device_config(unit, device_id, **(where | kw))


def line_config(line: PtyRtuLine) -> list[dict[str, object]]:
    return [{"id": "line-1", "port": line.path}]


def assert_values(
    samples: list[Sample], slaves: RtuSlaves, unit: int, t: float
) -> None:
    """``samples`` are ``unit``'s values at ``t``, converted as the agent must."""
    expected = slaves.values_at(unit, t)
    assert {s.metric for s in samples} == set(expected)
    for s in samples:
        spec = next(r for r in slaves.registers(unit) if r.metric == s.metric)
        want = to_canonical(s.metric, expected[s.metric], spec.unit)
        # f32 registers hold ~7 digits; integer registers one step of scale
        tolerance = 1e-6 * abs(want) + to_canonical(s.metric, spec.scale, spec.unit)
        assert s.value == pytest.approx(want, abs=tolerance), s.metric


KINDS = {1: "energy", 2: "water", 3: "steam", 4: "production", 5: "water", 6: "water"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def slaves(clock: FakeClock) -> RtuSlaves:
    return RtuSlaves(
        {u: build_meter(k, seed=3, device_id=f"u{u}") for u, k in KINDS.items()},
        clock=clock,
    )


@pytest.fixture
async def line(slaves: RtuSlaves) -> AsyncIterator[PtyRtuLine]:
    async with PtyRtuLine(slaves) as line:
        yield line


@pytest.fixture
async def pollers_closed() -> AsyncIterator[list[dict[str, Poller]]]:
    """Pollers registered here are closed after the test."""
    made: list[dict[str, Poller]] = []
    yield made
    for pollers in made:
        for poller in pollers.values():
            poller.close()


def pollers_for(
    cfg: AgentConfig, clock: Any, made: list[dict[str, Poller]]
) -> dict[str, Poller]:
    pollers = make_pollers(cfg, clock=clock)
    made.append(pollers)
    return pollers


async def test_values_read_over_rtu_equal_the_simulators(
    line: PtyRtuLine,
    slaves: RtuSlaves,
    clock: FakeClock,
    pollers_closed: list[dict[str, Poller]],
) -> None:
    # Four meter kinds (word orders, scales, holding and input tables) on one line:
    # pyserial opens a port exclusively, so they can only work over one connection.
    cfg = agent_config(
        [on_line(line, u, f"m{u}") for u in (1, 2, 3, 4)], line_config(line)
    )
    pollers = pollers_for(cfg, clock, pollers_closed)
    for minutes in (0, 5, 90):
        clock.now = T0 + timedelta(minutes=minutes)
        for unit in (1, 2, 3, 4):
            samples = await pollers[f"m{unit}"].read()
            assert_values(samples, slaves, unit, minutes * 60.0)
            assert {s.ts_ms for s in samples} == {to_ms(clock.now)}
    assert slaves.served_reads == {1: 3, 2: 3, 3: 3, 4: 3}
    assert all(p.requests_per_poll == 1 for p in pollers.values())


async def test_rtu_over_tcp_two_units_behind_one_gateway(
    slaves: RtuSlaves, clock: FakeClock, pollers_closed: list[dict[str, Poller]]
) -> None:
    async with TcpRtuGateway(slaves) as gateway:
        where = {
            "protocol": "modbus_rtu_tcp",
            "host": gateway.host,
            "port": gateway.port,
            "poll_interval_s": 1.0,
            "timeout_s": 0.5,
        }
        cfg = agent_config(
            [slaves.device_config(u, f"gw{u}", **where) for u in (1, 2)], []
        )
        pollers = pollers_for(cfg, clock, pollers_closed)
        for _ in range(2):
            for unit in (1, 2):
                assert_values(await pollers[f"gw{unit}"].read(), slaves, unit, 0.0)
        assert gateway.connections == 1
        assert slaves.served_reads == {1: 2, 2: 2}


async def test_exception_responses_and_the_line_goes_on(
    line: PtyRtuLine,
    slaves: RtuSlaves,
    clock: FakeClock,
    pollers_closed: list[dict[str, Poller]],
) -> None:
    unmapped = on_line(line, 2, "unmapped")
    unmapped["registers"] = [{**unmapped["registers"][0], "address": 40}]
    cfg = agent_config(
        [on_line(line, 1, "broken"), unmapped, on_line(line, 3, "fine")],
        line_config(line),
    )
    pollers = pollers_for(cfg, clock, pollers_closed)
    slaves.set_fault(1, Fault.exception(4))
    with pytest.raises(ModbusExceptionResponse) as info:
        await pollers["broken"].read()
    assert info.value.code == 4
    assert info.value.reason == (
        "Modbus exception 4 (server device failure) reading holding 0"
    )
    with pytest.raises(ModbusExceptionResponse) as info:
        await pollers["unmapped"].read()
    assert info.value.code == 2
    assert_values(await pollers["fine"].read(), slaves, 3, 0.0)


async def test_a_dead_unit_costs_one_timeout_and_the_line_goes_on(
    line: PtyRtuLine,
    slaves: RtuSlaves,
    clock: FakeClock,
    pollers_closed: list[dict[str, Poller]],
) -> None:
    cfg = agent_config(
        [on_line(line, 5, "dead", timeout_s=0.3), on_line(line, 6, "live")],
        line_config(line),
    )
    pollers = pollers_for(cfg, clock, pollers_closed)
    slaves.set_fault(5, Fault.timeout())
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"^device dead: no answer within 0.3 s$"):
        await pollers["dead"].read()
    took = time.monotonic() - started
    assert 0.3 <= took < 0.45, took
    assert slaves.requests[5] == 1  # retries=0: one request per attempt, no more
    started = time.monotonic()
    assert_values(await pollers["live"].read(), slaves, 6, 0.0)
    # the live device paid at most the quiet gap after the timeout
    assert time.monotonic() - started < 0.2


async def test_waiting_for_the_line_does_not_count_against_the_timeout(
    line: PtyRtuLine, slaves: RtuSlaves, pollers_closed: list[dict[str, Poller]]
) -> None:
    cfg = agent_config(
        [
            on_line(line, 5, "dead", timeout_s=0.3),
            on_line(line, 6, "live", timeout_s=0.1),
        ],
        line_config(line),
    )
    pollers = pollers_for(cfg, lambda: datetime.now(UTC), pollers_closed)
    slaves.set_fault(5, Fault.timeout())
    started = datetime.now(UTC)
    # The dead device's task runs first and takes the free bus at once; the live
    # one queues behind it for longer than its own timeout.
    dead = asyncio.create_task(pollers["dead"].read())
    live = asyncio.create_task(pollers["live"].read())
    samples = await live
    with pytest.raises(DeviceTimeout):
        await dead
    assert_values(samples, slaves, 6, 0.0)
    # stamped when it got the bus, not when it began to wait
    assert samples[0].ts_ms >= to_ms(started + timedelta(seconds=0.3))
    asked = {unit: t for t, kind, unit in slaves.wire if kind == "request"}
    assert asked[6] - asked[5] >= 0.3


@pytest.mark.parametrize(
    ("late_s", "order"),
    [
        # the late answer comes while the bus waits for quiet: the next request
        # goes out only after it, on a quiet line
        (0.12, ["request 3", "answer 3", "request 4", "answer 4"]),
        # the late answer comes while unit 4's request is out: pymodbus drops it
        (0.25, ["request 3", "request 4", "answer 3", "answer 4"]),
    ],
)
async def test_a_late_answer_is_not_taken_for_the_next_devices_answer(
    clock: FakeClock, late_s: float, order: list[str]
) -> None:
    # Two meters of one kind: unit 3's late answer is a valid answer to unit 4's
    # request in every way but its unit id.
    slaves = RtuSlaves(
        {u: build_meter("water", seed=3, device_id=f"twin-{u}") for u in (3, 4)},
        clock=clock,
    )
    assert slaves.values_at(3, 0.0) != slaves.values_at(4, 0.0)
    slaves.set_delay(3, late_s)
    slaves.set_delay(4, 0.2)
    async with PtyRtuLine(slaves) as line:
        cfg = agent_config(
            [
                on_line(line, 3, "slow", timeout_s=0.1),
                on_line(line, 4, "next", timeout_s=0.5),
            ],
            line_config(line),
        )
        pollers = make_pollers(cfg, clock=clock)
        try:
            with pytest.raises(DeviceTimeout):
                await pollers["slow"].read()
            samples = await pollers["next"].read()
        finally:
            for poller in pollers.values():
                poller.close()
    assert_values(samples, slaves, 4, 0.0)
    assert [f"{kind} {unit}" for _, kind, unit in slaves.wire] == order
    if order[1] == "answer 3":
        poller = pollers["next"]
        assert isinstance(poller, RtuPoller)
        answered_3, asked_4 = slaves.wire[1][0], slaves.wire[2][0]
        assert asked_4 - answered_3 >= poller.bus.quiet_s * 0.9


async def test_a_line_that_cannot_be_opened(
    tmp_path: Path, clock: FakeClock, pollers_closed: list[dict[str, Poller]]
) -> None:
    port = str(tmp_path / "ttyUSB9")
    cfg = agent_config(
        [
            {
                "id": "m1",
                "protocol": "modbus_rtu",
                "line": "line-1",
                "unit_id": 1,
                "poll_interval_s": 1,
                "registers": [
                    {
                        "address": 0,
                        "type": "u16",
                        "metric": "active_power",
                        "unit": "kW",
                    }
                ],
            }
        ],
        [{"id": "line-1", "port": port}],
    )
    pollers = pollers_for(cfg, clock, pollers_closed)
    with pytest.raises(DeviceError) as info:
        await pollers["m1"].read()
    assert info.value.reason == f"cannot open serial line line-1 ({port})"


async def test_cli_check_says_where_each_device_is(
    tmp_path: Path,
    line: PtyRtuLine,
    slaves: RtuSlaves,
    capsys: pytest.CaptureFixture[str],
) -> None:
    slaves.set_fault(5, Fault.timeout())
    async with TcpRtuGateway(slaves) as gateway:
        gw = {"protocol": "modbus_rtu_tcp", "host": gateway.host, "port": gateway.port}
        data = {
            "site": {"park": "p1", "enterprise": "e1"},
            "broker": {"host": "127.0.0.1", "port": 1, "client_id": "edge-test"},
            "outbox": {"path": "outbox.db"},
            "serial_lines": line_config(line),
            "devices": [
                on_line(line, 2, "water-2", timeout_s=0.2),
                on_line(line, 5, "dead-5", timeout_s=0.2),
                slaves.device_config(1, "gw-1", poll_interval_s=1, **gw),
            ],
        }
        path = tmp_path / "agent.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        code = await asyncio.to_thread(cli.main, ["check", "--config", str(path)])
    out = capsys.readouterr().out.splitlines()
    assert code == 1  # a dead device and no broker
    assert out[0].startswith(f"ok   water-2 (line-1 {line.path} unit 2): water_volume=")
    assert out[1] == f"FAIL dead-5 (line-1 {line.path} unit 5): no answer within 0.2 s"
    assert out[2].startswith(
        f"ok   gw-1 (RTU over TCP 127.0.0.1:{gateway.port} unit 1): active_energy="
    )
    assert out[3].startswith("FAIL broker 127.0.0.1:1")
