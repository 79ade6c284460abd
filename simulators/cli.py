"""``smartpark simulate park | cems | wastewater``: simulated plant devices.

``park`` serves a simulated park and writes agent configs:

    smartpark simulate park --seed 1 --enterprises 3 --devices 4 --port-base 15020 \\
        --config-dir /tmp/park --mqtt 127.0.0.1:1883 [--poll-interval-s 10]

Starts one Modbus TCP server per device on 127.0.0.1 from ``--port-base`` (0: free
ports chosen by the OS, as written into the configs), writes one edge-agent YAML
per enterprise into ``--config-dir`` (printing ``wrote PATH`` for each) and runs
until SIGINT/SIGTERM, then prints how many reads each device served.

``cems`` / ``wastewater`` play an HJ 212-2017 data logger (stack ST=31, outlet
ST=32) that connects to a listener and sends real-time, minute and hourly data:

    smartpark simulate cems --connect 127.0.0.1:9212 --mn MN0001 [--pw 123456] \\
        [--seed 1] [--interval-s 1] [--step-s N] [--start 2024-01-01T00:00:00Z] \\
        [--scenario breach | --scenario corrupt@600+300 ...] [--count N] [--flag 5]

DataTime starts at ``--start`` (default: now) and advances ``--step-s`` seconds
(default: ``--interval-s`` rounded, at least 1) per tick, while ticks are
``--interval-s`` real seconds apart: ``--interval-s 0 --step-s 60`` sends a day of
data in moments. ``--scenario NAME[@START+DURATION]`` (seconds of data time from the
first tick; repeatable, later wins; default normal) picks one of normal, breach,
calibration, fault, dropout (which also drops the connection), corrupt. Prints one
line per frame sent and a summary; stops after ``--count`` ticks (0: at SIGINT or
SIGTERM) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from simulators.analysers import Station
from simulators.hj212_logger import Hj212Logger
from simulators.hj212_source import PacketSource, Phase, SentPacket, SimClock
from simulators.park import SimulatedPark

log = logging.getLogger("simulators")


def _hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smartpark simulate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    park = sub.add_parser("park", help="serve a simulated park")
    park.add_argument("--seed", type=int, default=1)
    park.add_argument("--park", default="park1", help="park id")
    park.add_argument("--enterprises", type=int, default=3)
    park.add_argument("--devices", type=int, default=4, help="devices per enterprise")
    park.add_argument(
        "--port-base", type=int, default=15020, help="0: free ports chosen by the OS"
    )
    park.add_argument("--config-dir", required=True)
    park.add_argument("--mqtt", type=_hostport, required=True, metavar="HOST:PORT")
    park.add_argument("--poll-interval-s", type=float, default=10.0)
    for kind in ("cems", "wastewater"):
        _logger_parser(sub.add_parser(kind, help=f"an HJ 212 {kind} data logger"))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_park(args) if args.command == "park" else _logger(args))
    return 0


def _phase(value: str) -> Phase:
    name, _, when = value.partition("@")
    start, _, duration = when.partition("+")
    try:
        return Phase(
            name,
            float(start or 0),
            float(duration or math.inf),
            close=name == "dropout",
        )
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _start(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone: {value!r}")
    return moment.replace(microsecond=0)


def _logger_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connect", type=_hostport, required=True, metavar="HOST:PORT")
    p.add_argument("--mn", required=True, help="the logger's MN")
    p.add_argument("--pw", default="123456")
    p.add_argument("--flag", type=int, default=5, help="4: no reply, 5: reply")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--interval-s", type=float, default=1.0, help="real s per tick")
    p.add_argument("--step-s", type=int, help="data-time s per tick")
    p.add_argument("--start", type=_start, help="first DataTime, ISO with zone")
    p.add_argument("--tz", default="Asia/Shanghai", help="the logger's clock")
    p.add_argument("--o2-ref", type=Decimal, default=Decimal(6), help="reference O2 %%")
    p.add_argument("--scenario", type=_phase, action="append", default=[])
    p.add_argument("--count", type=int, default=0, help="ticks; 0: until stopped")
    p.add_argument("--no-interval-data", action="store_true", help="no 2051/2061")
    p.add_argument("--join", action="store_true", help="a tick's frames in 1 write")
    p.add_argument("--split-every", type=int, default=0, help="cut every Nth write")


async def _logger(args: argparse.Namespace) -> None:
    def show(p: SentPacket) -> None:
        what = "valid" if p.valid else f"corrupt={p.corruption}"
        print(
            f"sent QN={p.qn} CN={p.cn} DataTime={p.data_time} {what} "
            f"bytes={len(p.frame)}",
            flush=True,
        )

    station = Station(
        args.command,
        args.mn,
        pw=args.pw,
        flag=args.flag,
        tz=ZoneInfo(args.tz),
        o2_ref=args.o2_ref,
        minute=not args.no_interval_data,
        hourly=not args.no_interval_data,
    )
    source = PacketSource(station, seed=args.seed, schedule=tuple(args.scenario))
    step = args.step_s or max(1, round(args.interval_s))
    start = args.start or datetime.now(UTC).replace(microsecond=0)
    host, port = args.connect
    logger = Hj212Logger(
        source,
        SimClock(start, step),
        host,
        port,
        count=args.count or None,
        interval_s=args.interval_s,
        join=args.join,
        split_every=args.split_every,
        seed=args.seed,
        on_sent=show,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, logger.stop)
    async with logger:
        await logger.wait()
    s = logger.stats
    print(
        f"summary: ticks={s.ticks} frames={s.frames} bytes={s.bytes} "
        f"withheld={s.withheld} replies={s.replies} "
        f"unanswered={len(logger.unanswered)} unsent={len(logger.unsent)} "
        f"connects={s.connects} reconnects={s.reconnects} "
        f"connect_failures={s.connect_failures} send_failures={s.send_failures}",
        flush=True,
    )


async def _park(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sim = SimulatedPark(
        seed=args.seed,
        park=args.park,
        enterprises=args.enterprises,
        devices_per_enterprise=args.devices,
        port_base=args.port_base,
    )
    async with sim:
        host, port = args.mqtt
        paths = sim.write_configs(
            args.config_dir, host, port, poll_interval_s=args.poll_interval_s
        )
        for d in sim.devices:
            log.info(
                "serving %s on %s:%d", d.device.device_id, d.device.host, d.device.port
            )
        for path in paths:
            print(f"wrote {path}", flush=True)
        await stop.wait()
    for device, served in sim.served_polls().items():
        print(f"{device}: {served} reads served")
