"""HJ 212 end to end on the real services.

simulated CEMS stack and wastewater outfall (HJ 212 loggers over TCP) → edge agent's
listener → outbox → Mosquitto → bridge → Kafka → sink → PostgreSQL. Every valid
reading of every packet the loggers sent must be stored exactly once, with its flag,
in its series; nothing of the corrupted packets may be stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig, parse_config
from simulators.analysers import Station
from simulators.hj212_logger import Hj212Logger
from simulators.hj212_source import PacketSource, Phase, SentPacket, SimClock
from smartpark.catalogue import metric as catalogue_metric
from smartpark.catalogue import to_canonical
from smartpark.settings import Settings
from tests.support.pipeline import running_platform

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CEMS_MN, WATER_MN = "88888880000001", "88888880000002"
# code -> (metric of the measured value, metric of the corrected value, unit sent)
POLLUTANTS: dict[str, tuple[str, str | None, str | None]] = {
    "a21026": ("so2", "so2_corrected", None),
    "a21002": ("nox", "nox_corrected", None),
    "a34013": ("particulate", "particulate_corrected", None),
    "a19001": ("o2", None, None),
    "a01012": ("flue_temperature", None, None),
    "a00000": ("flue_gas_flow", None, None),
    "w00000": ("wastewater_flow", None, "L/s"),
    "w01018": ("cod", None, None),
    "w21003": ("ammonia_nitrogen", None, None),
    "w01001": ("ph", None, None),
}
SERIES = {  # MN -> CN -> device
    CEMS_MN: {"2011": "stack-1", "2051": "stack-1.min", "2061": "stack-1.hour"},
    WATER_MN: {"2011": "outfall-1", "2051": "outfall-1.min", "2061": "outfall-1.hour"},
}


def logger_config(mn: str, codes: list[str]) -> dict[str, Any]:
    series = SERIES[mn]
    pollutants: dict[str, dict[str, str]] = {}
    for code in codes:
        raw, zs, unit = POLLUTANTS[code]
        entry = {"metric": raw}
        if zs is not None:
            entry["corrected"] = zs
        if unit is not None:
            entry["unit"] = unit
        pollutants[code] = entry
    return {
        "mn": mn,
        "device": series["2011"],
        "minute": series["2051"],
        "hourly": series["2061"],
        "pollutants": pollutants,
    }


def agent_config(host: str, port: int, park: str, tmp_path: Path) -> AgentConfig:
    return parse_config(
        {
            "site": {"park": park, "enterprise": "coal-power"},
            "broker": {"host": host, "port": port, "client_id": f"edge-{park}"},
            "outbox": {"path": str(tmp_path / "outbox.db")},
            "hj212": {
                "host": "127.0.0.1",
                "port": 0,
                "loggers": [
                    logger_config(CEMS_MN, [c for c in POLLUTANTS if c[0] == "a"]),
                    logger_config(WATER_MN, [c for c in POLLUTANTS if c[0] == "w"]),
                ],
            },
        }
    )


# device, metric, data type, stat, ts_ms, value, quality
Row = tuple[str, str, str, str, int, float, str]
DATA_TYPES = {"2011": "realtime", "2051": "minute", "2061": "hour"}
# HJ 212 value keys (measured, corrected) per stat; real-time packets have Rtd only
INTERVAL_KEYS = (("Avg", "ZsAvg", "value"), ("Min", "ZsMin", "min"),
                 ("Max", "ZsMax", "max"), ("Cou", None, "cou"))  # fmt: skip


def expected_rows(mn: str, sent: list[SentPacket]) -> list[Row]:
    """What the platform must store for the valid packets (from ground truth)."""
    rows: list[Row] = []
    for p in sent:
        if not p.valid:
            continue
        assert p.cn is not None
        device = SERIES[mn][p.cn]
        keys = (("Rtd", "ZsRtd", "value"),) if p.cn == "2011" else INTERVAL_KEYS
        for e in p.readings:
            raw, zs, unit = POLLUTANTS[e.code]
            for raw_key, zs_key, stat in keys:
                for name, key in ((raw, raw_key), (zs, zs_key)):
                    if name is None or key is None or key not in e.values:
                        continue
                    value = float(e.values[key])
                    if stat != "cou":
                        value = to_canonical(
                            name, value, unit or catalogue_metric(name).unit
                        )
                    rows.append(
                        (device, name, DATA_TYPES[p.cn], stat, p.data_time_ms,
                         value, e.flag)
                    )  # fmt: skip
    return rows


async def test_every_valid_hj212_reading_is_stored_once_and_no_corrupt_one(
    mqtt_addr: tuple[str, int],
    park_id: str,
    platform: Settings,
    tmp_path: Path,
) -> None:
    settings = platform
    # 90 minutes of data time, 20 s a packet, ending well before now (a reading
    # from the future would be refused downstream); every scenario happens once.
    start = (datetime.now(UTC) - timedelta(hours=3)).replace(
        minute=0, second=0, microsecond=0
    )
    schedule = (
        Phase("calibration", 600, 300),
        Phase("fault", 1200, 300),
        Phase("breach", 1800, 600),
        Phase("corrupt", 2700, 900),
        Phase("dropout", 3900, 300, close=True),
    )
    cems = Station("cems", CEMS_MN, flag=5)
    water = Station("wastewater", WATER_MN, flag=4)
    cfg = agent_config(*mqtt_addr, park_id, tmp_path)
    async with running_platform(settings) as (storage, bridge, sink):
        async with EdgeAgent(cfg) as agent:
            port = agent.hj212_port
            assert port is not None
            loggers = [
                Hj212Logger(
                    PacketSource(station, seed=seed, schedule=schedule),
                    SimClock(start, 20),
                    "127.0.0.1",
                    port,
                    count=270,
                    interval_s=0.005,
                    join=True,
                    split_every=3,
                )
                for seed, station in ((1, cems), (2, water))
            ]
            async with contextlib.AsyncExitStack() as stack:
                for lg in loggers:
                    await stack.enter_async_context(lg)
                await asyncio.gather(*(lg.wait() for lg in loggers))
            stats = agent.stats()
        expected = expected_rows(CEMS_MN, loggers[0].sent) + expected_rows(
            WATER_MN, loggers[1].sent
        )
        stored: list[Row] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while loop.time() < deadline and len(stored) < len(expected):
            await asyncio.sleep(0.5)
            stored = [
                (r.device, r.metric, r.data_type, r.stat,
                 int(r.time.timestamp() * 1000), r.value, r.quality)
                for r in await storage.telemetry.readings(park=park_id)
            ]  # fmt: skip
        keys = await storage.telemetry.reading_keys(park=park_id)

    sent = [p for lg in loggers for p in lg.sent]
    corrupt = Counter(p.corruption for p in sent if not p.valid)
    # the run exercised what it claims to
    assert set(corrupt) == {
        "crc",
        "length",
        "truncated",
        "garbage",
        "unknown_cp",
        "oversize",
    }
    assert {e.flag for p in sent if p.valid for e in p.readings} >= {"N", "C", "D"}
    assert {p.cn for p in sent if p.valid} == {"2011", "2051", "2061"}
    assert all(not lg.unsent for lg in loggers)
    assert loggers[0].unanswered == []  # every CEMS packet answered (Flag=5)
    # exactly the valid readings, each once, with its flag; nothing corrupt
    assert len(stored) == len(expected)
    assert sorted(stored) == sorted(expected)
    # one seq per packet per series, without gaps
    per_device = Counter(
        p.cn and SERIES[mn][p.cn]
        for mn, lg in ((CEMS_MN, loggers[0]), (WATER_MN, loggers[1]))
        for p in lg.sent
        if p.valid
    )
    seqs: dict[str, set[int]] = {}
    for k in keys:
        seqs.setdefault(k.device, set()).add(k.seq)
    assert {d: sorted(s) for d, s in seqs.items()} == {
        d: list(range(1, n + 1)) for d, n in per_device.items()
    }
    hj = stats.hj212
    assert hj is not None
    assert hj.frames_ok == sum(per_device.values())
    assert sum(hj.frames_rejected.values()) >= sum(corrupt.values())
    assert sink.stats.dead_letters == bridge.stats.dead_letters == 0
