"""The commands as an engineer runs them: ``smartpark simulate park`` writes configs,
``smartpark edge check`` and ``smartpark edge run`` use them (real processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from edge_agent.config import load_config

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
