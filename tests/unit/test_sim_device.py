"""A simulated meter over real Modbus TCP, read by the agent's poller (loopback)."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from edge_agent.config import DeviceConfig
from edge_agent.counters import CounterGuard, register_modulus
from edge_agent.modbus import ModbusExceptionResponse, ModbusPoller
from edge_agent.sample import Sample
from simulators.device import Fault, SimulatedDevice
from simulators.meters import build_meter, wrap_at
from smartpark.catalogue import METRICS, Kind, to_canonical
from smartpark.errors import DeviceError, DeviceTimeout

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def device_config(sim: SimulatedDevice, timeout_s: float = 0.5) -> DeviceConfig:
    return DeviceConfig(
        id=sim.device_id,
        protocol="modbus_tcp",
        host=sim.host,
        port=sim.port,
        unit_id=sim.unit_id,
        poll_interval_s=1.0,
        timeout_s=timeout_s,
        registers=sim.registers,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["energy", "water", "steam", "production"])
async def meter(
    request: pytest.FixtureRequest, clock: FakeClock
) -> AsyncIterator[SimulatedDevice]:
    kind = request.param
    sim = SimulatedDevice(
        f"e1.{kind}-1",
        kind,
        build_meter(kind, seed=5, device_id=f"e1.{kind}-1"),
        port=0,
        clock=clock,
    )
    await sim.start()
    yield sim
    await sim.stop()


async def test_poller_reads_the_canonical_values(
    meter: SimulatedDevice, clock: FakeClock
) -> None:
    poller = ModbusPoller(device_config(meter), clock=clock)
    for minutes in (0, 5, 90):
        clock.now = T0 + timedelta(minutes=minutes)
        samples = await poller.read()
        expected = meter.values_at(minutes * 60.0)
        assert {s.metric for s in samples} == set(expected)
        for s in samples:
            spec = next(r for r in meter.registers if r.metric == s.metric)
            want = to_canonical(s.metric, expected[s.metric], spec.unit)
            tolerance = 1e-6 * abs(want) + to_canonical(s.metric, spec.scale, spec.unit)
            assert s.value == pytest.approx(want, abs=tolerance)
            assert s.ts_ms == int(clock.now.timestamp() * 1000)
            assert s.quality == "N"
    assert meter.served_reads == 3
    poller.close()


async def test_exception_fault_raises_with_the_code(
    meter: SimulatedDevice, clock: FakeClock
) -> None:
    poller = ModbusPoller(device_config(meter), clock=clock)
    meter.set_fault(Fault.exception(6))
    with pytest.raises(ModbusExceptionResponse) as info:
        await poller.read()
    assert info.value.code == 6
    assert info.value.device == meter.device_id
    assert "Modbus exception 6 (server device busy)" in str(info.value)
    assert meter.served_reads == 0
    meter.set_fault(None)
    assert await poller.read()
    assert meter.served_reads == 1
    poller.close()


@pytest.mark.parametrize("kind", ["energy"])
async def test_timeout_fault_then_recovery(kind: str, clock: FakeClock) -> None:
    sim = SimulatedDevice(
        "e1.m-1", kind, build_meter(kind, seed=1, device_id="x"), port=0, clock=clock
    )
    await sim.start()
    poller = ModbusPoller(device_config(sim, timeout_s=0.3), clock=clock)
    sim.set_fault(Fault.timeout())
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(DeviceTimeout, match=r"no answer within 0\.3 s"):
            await poller.read()
        assert time.monotonic() - started < 1.0
    sim.set_fault(None)
    # A fresh connection: the late answers of the abandoned requests cannot be
    # mistaken for this one.
    first = await poller.read()
    second = await poller.read()
    assert [s.metric for s in first] == [s.metric for s in second]
    assert sim.served_reads == 2
    poller.close()
    await sim.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_nothing_listening_is_a_device_error(clock: FakeClock) -> None:
    sim = SimulatedDevice(
        "e1.m-1",
        "energy",
        build_meter("energy", seed=1, device_id="x"),
        port=free_port(),
        clock=clock,
    )
    poller = ModbusPoller(device_config(sim), clock=clock)
    with pytest.raises(DeviceError, match="cannot connect"):
        await poller.read()


async def test_wrong_unit_id_is_answered_with_an_exception(clock: FakeClock) -> None:
    sim = SimulatedDevice(
        "e1.m-1",
        "water",
        build_meter("water", seed=1, device_id="x"),
        port=0,
        clock=clock,
    )
    await sim.start()
    cfg = device_config(sim).model_copy(update={"unit_id": 9})
    poller = ModbusPoller(cfg, clock=clock)
    with pytest.raises(ModbusExceptionResponse):
        await poller.read()
    poller.close()
    await sim.stop()


async def test_counter_continues_across_a_device_restart(clock: FakeClock) -> None:
    sim = SimulatedDevice(
        "e1.m-1",
        "energy",
        build_meter("energy", seed=1, device_id="x"),
        port=0,
        clock=clock,
    )
    await sim.start()
    poller = ModbusPoller(device_config(sim), clock=clock)
    before = {s.metric: s.value for s in await poller.read()}
    await sim.stop()
    clock.now += timedelta(hours=1)
    with pytest.raises(DeviceError):
        await poller.read()
    await sim.start()  # same port, same start time: the meter kept counting
    after = {s.metric: s.value for s in await poller.read()}
    assert after["active_energy"] > before["active_energy"]
    poller.close()
    await sim.stop()


@pytest.mark.parametrize("kind", ["energy", "water", "steam"])
async def test_a_meter_rolls_over_and_is_replaced(kind: str, clock: FakeClock) -> None:
    """set_counter drives the register past its wrap and back to 0; the poller reads
    what a real meter would serve and the agent's guard flags both."""
    sim = SimulatedDevice(
        f"e1.{kind}-1",
        kind,
        build_meter(kind, seed=5, device_id=f"e1.{kind}-1"),
        port=0,
        clock=clock,
    )
    await sim.start()
    poller = ModbusPoller(device_config(sim), clock=clock)
    # The u32 counters (u64 ones would take millennia to wrap).
    counters = [
        r
        for r in sim.registers
        if METRICS[r.metric].kind is Kind.COUNTER and r.type == "u32"
    ]
    assert counters
    moduli = {(sim.device_id, r.metric): register_modulus(r) for r in counters}
    guard = CounterGuard({k: m for k, m in moduli.items() if m is not None})

    async def poll() -> dict[str, Sample]:
        checked = guard.check(sim.device_id, await poller.read())
        guard.commit(checked)
        return {s.metric: s for s in checked.samples}

    await poll()
    for r in counters:
        wrap = wrap_at(r)
        assert wrap is not None
        sim.set_counter(r.metric, wrap - 5 * r.scale)
    assert all(s.reset is None for s in (await poll()).values())
    clock.now += timedelta(minutes=1)  # every counter grows past its wrap
    wrapped = await poll()
    for r in counters:
        modulus = moduli[(sim.device_id, r.metric)]
        assert modulus is not None
        assert wrapped[r.metric].reset == "rollover", r.metric
        assert 0 <= wrapped[r.metric].value < 0.1 * modulus
    for r in counters:
        sim.set_counter(r.metric, 0.0)
    replaced = await poll()
    for r in counters:
        assert (replaced[r.metric].value, replaced[r.metric].reset) == (
            0.0,
            "replacement",
        )
    counter_metrics = {r.metric for r in counters}
    assert all(s.reset is None for m, s in replaced.items() if m not in counter_metrics)
    poller.close()
    await sim.stop()
