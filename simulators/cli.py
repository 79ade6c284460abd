"""``smartpark simulate park ...``: serve a simulated park and write agent configs.

    smartpark simulate park --seed 1 --enterprises 3 --devices 4 --port-base 15020 \\
        --config-dir /tmp/park --mqtt 127.0.0.1:1883 [--poll-interval-s 10]

Starts one Modbus TCP server per device on 127.0.0.1 from ``--port-base`` (0: free
ports chosen by the OS, as written into the configs), writes one edge-agent YAML
per enterprise into ``--config-dir`` (printing ``wrote PATH`` for each) and runs
until SIGINT/SIGTERM, then prints how many reads each device served.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

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
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_park(args))
    return 0


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
