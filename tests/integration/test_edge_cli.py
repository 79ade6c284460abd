"""The commands as an engineer runs them: ``smartpark simulate park`` writes configs,
``smartpark edge check`` and ``smartpark edge run`` use them (real processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from edge_agent.config import load_config
from edge_agent.hj212 import Packet, Pollutant, encode
from tests.support.mosquitto import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def smartpark(*args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "smartpark.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def read_until(proc: asyncio.subprocess.Process, text: str) -> str:
    """Stderr of ``proc`` up to and including the first line containing ``text``."""
    assert proc.stderr is not None
    seen = ""
    async with asyncio.timeout(30):
        while text not in seen:
            line = await proc.stderr.readline()
            assert line, f"exited before {text!r}: {seen}"
            seen += line.decode()
    return seen


async def test_simulated_park_configs_pass_edge_check_and_run(
    mqtt_addr: tuple[str, int], park_id: str, tmp_path: Path
) -> None:
    host, port = mqtt_addr
    config_dir = tmp_path / "configs"
    sim = await smartpark(
        "simulate", "park", "--seed", "3", "--park", park_id, "--enterprises", "2",
        "--devices", "2", "--port-base", "0", "--config-dir", str(config_dir),
        "--mqtt", f"{host}:{port}", "--poll-interval-s", "0.2",
    )  # fmt: skip
    try:
        assert sim.stdout is not None
        wrote = [
            (await asyncio.wait_for(sim.stdout.readline(), 20)).decode().strip()
            for _ in range(2)
        ]
        paths = [Path(line.removeprefix("wrote ")) for line in wrote]
        assert [p.name for p in paths] == ["coal-power-1.yaml", "alu-smelter-1.yaml"]
        cfg = load_config(paths[0])  # the written YAML is valid and readable
        assert [d.id for d in cfg.devices] == [
            "coal-power-1.energy-1",
            "coal-power-1.steam-2",
        ]
        assert paths[0].read_text().startswith("# Edge agent for coal-power-1")

        code, out, err = await finish(
            await smartpark("edge", "check", "--config", str(paths[1]))
        )
        assert code == 0, out + err
        lines = out.splitlines()
        assert len(lines) == 3
        assert lines[0].startswith("ok   alu-smelter-1.energy-1 (127.0.0.1:")
        assert "active_energy=" in lines[0]
        assert "kWh" in lines[0]
        assert lines[2] == f"ok   broker {host}:{port}"

        agent = await smartpark(
            "edge", "run", "--config", str(paths[0]), "--stats-interval-s", "0.5"
        )
        # Signal only once it runs: a loaded machine may take seconds to start it.
        seen = await read_until(agent, "broker connected; outbox")
        agent.send_signal(signal.SIGTERM)
        code, out, err = await finish(agent)
        err = seen + err
        assert code == 0, err
        assert "connected to broker" in err
        assert "edge agent stopped; 0 rows stay in the outbox" in err
    finally:
        sim.send_signal(signal.SIGINT)
        code, out, err = await finish(sim)
    assert code == 0, err
    served = dict(
        line.split(": ") for line in out.splitlines() if "reads served" in line
    )
    assert int(served["coal-power-1.energy-1"].split()[0]) >= 2  # the agent polled

    # The simulator is gone: check now names every device that does not answer.
    code, out, _ = await finish(
        await smartpark("edge", "check", "--config", str(paths[0]))
    )
    assert code == 1
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 2
    assert "cannot connect to 127.0.0.1:" in fails[0]


HJ212_CONFIG = """\
site: {{park: {park}, enterprise: coal-power}}
broker: {{host: {host}, port: {port}, client_id: edge-check-{park}}}
outbox: {{path: outbox.db}}
hj212:
  host: 127.0.0.1
  port: {hj_port}
  loggers:
    - mn: "88888880000001"
      device: stack-1
      pollutants:
        a21026: {{metric: so2, corrected: so2_corrected}}
    - mn: "88888880000002"
      device: stack-2
      pollutants:
        a21026: {{metric: so2}}
"""


async def test_edge_check_listens_for_each_hj212_logger(
    mqtt_addr: tuple[str, int], park_id: str, tmp_path: Path
) -> None:
    host, port = mqtt_addr
    hj_port = free_port()
    path = tmp_path / "agent.yaml"
    path.write_text(
        HJ212_CONFIG.format(park=park_id, host=host, port=port, hj_port=hj_port)
    )
    so2 = Pollutant("a21026", rtd=Decimal("21.5"), zs_rtd=Decimal("25.3"), flag="C")
    frame = encode(
        Packet(
            st="31",
            cn="2011",
            mn="88888880000001",
            data_time="20260101080000",
            pollutants=(so2,),
        )
    )
    check = await smartpark(
        "edge", "check", "--config", str(path), "--hj212-wait-s", "3"
    )
    # the logger connects once check listens, and sends one packet
    async with asyncio.timeout(20):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", hj_port)
                break
            except OSError:
                await asyncio.sleep(0.05)
    writer.write(frame)
    await writer.drain()
    code, out, _ = await finish(check)
    writer.close()
    lines = out.splitlines()
    assert code == 1, out  # the second logger sent nothing
    assert lines[0] == (
        f"ok   hj212 listener 127.0.0.1:{hj_port}: port bound, 2 loggers mapped"
    )
    assert lines[1] == (
        "ok   stack-1 (MN=88888880000001): so2=21.5 mg/m3 [C],"
        " so2_corrected=25.3 mg/m3 [C]"
    )
    assert lines[2] == "FAIL stack-2 (MN=88888880000002): no valid packet within 3 s"
    assert lines[-1] == f"ok   broker {host}:{port}"

    # a port another process holds is reported, not a traceback
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", hj_port))
        holder.listen()
        code, out, _ = await finish(
            await smartpark("edge", "check", "--config", str(path))
        )
    assert code == 1
    first = out.splitlines()[0]
    assert first.startswith(f"FAIL hj212 listener 127.0.0.1:{hj_port}: cannot listen:")
    assert first.lower().endswith("address already in use")
