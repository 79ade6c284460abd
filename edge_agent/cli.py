"""``smartpark edge run | check --config FILE``.

``run`` runs the agent until SIGINT/SIGTERM, logging a stats line every
``--stats-interval-s``; exit code 0 after a clean stop, 1 if an internal task
failed, 2 for a bad configuration. ``check`` validates the file, reads every device
once and connects to the broker once, printing one line each; exit code 0 only if
everything answered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.agent import AgentStats, EdgeAgent
from edge_agent.config import AgentConfig, BrokerConfig, load_config
from edge_agent.modbus import ModbusPoller
from edge_agent.sample import utc_now
from smartpark.errors import ConfigError, DeviceError, SmartparkError

log = logging.getLogger("edge_agent")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smartpark edge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent until SIGINT/SIGTERM")
    run.add_argument("--config", required=True, type=Path)
    run.add_argument("--stats-interval-s", type=float, default=60.0)
    run.add_argument("--log-level", default="INFO")
    check = sub.add_parser("check", help="validate the config, try each device once")
    check.add_argument("--config", required=True, type=Path)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"smartpark edge: {exc}", file=sys.stderr)
        return 2
    # pymodbus logs each timeout as an ERROR without naming the device; the agent
    # logs every failure itself, with the device id and the reason.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if args.command == "check":
        return asyncio.run(_check(config))
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(_run(config, args.stats_interval_s))
    except SmartparkError as exc:
        log.critical("edge agent failed: %s", exc)
        return 1
    return 0


async def _run(config: AgentConfig, stats_interval_s: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with EdgeAgent(config) as agent:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(stats_interval_s):
                    await agent.run_until(stop)
            log.info("%s", format_stats(agent.stats()))


def format_stats(stats: AgentStats) -> str:
    """One log line an operator can read."""
    ob, pub = stats.outbox, stats.publisher
    age = "-" if ob.oldest_age_s is None else f"{ob.oldest_age_s:.0f} s"
    parts = [
        f"broker {'connected' if pub.connected else 'DISCONNECTED'}",
        f"outbox {ob.rows}/{ob.max_rows} rows (oldest {age}, dropped {ob.dropped_rows},"
        f" expired {ob.expired_rows}, refused polls {ob.refused_polls})",
        f"messages published {pub.published_messages} acked {pub.acked_messages}"
        f" in flight {pub.in_flight}",
    ]
    for device, d in stats.devices.items():
        line = f"{device}: ok {d.polls_ok} errors {d.errors} seq {d.last_seq}"
        if d.consecutive_failures:
            line += f" FAILING x{d.consecutive_failures} ({d.last_error})"
            line += f" backoff {d.backoff_s:.0f} s"
        parts.append(line)
    return "; ".join(parts)


async def _check(config: AgentConfig) -> int:
    ok = True
    for device in config.devices:
        poller = ModbusPoller(device, clock=utc_now)
        where = f"{device.id} ({device.host}:{device.port} unit {device.unit_id})"
        try:
            samples = await poller.read()
        except DeviceError as exc:
            print(f"FAIL {where}: {exc.reason}")
            ok = False
            continue
        finally:
            poller.close()
        values = ", ".join(f"{s.metric}={s.value:g} {s.unit}" for s in samples)
        print(f"ok   {where}: {values}")
    b = config.broker
    problem = await asyncio.to_thread(probe_broker, b)
    if problem is None:
        print(f"ok   broker {b.host}:{b.port}")
    else:
        print(f"FAIL broker {b.host}:{b.port}: {problem}")
        ok = False
    return 0 if ok else 1


def probe_broker(broker: BrokerConfig, *, timeout_s: float = 5.0) -> str | None:
    """Connect once with a throw-away clean session; None if the broker accepts us.

    Blocking. Uses ``{client_id}.check`` as client id so a running agent's
    persistent session is not taken over. Returns the reason on failure.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{broker.client_id}.check",
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    if broker.username is not None:
        password = broker.password
        client.username_pw_set(
            broker.username, None if password is None else password.get_secret_value()
        )
    answers: list[ReasonCode] = []

    def on_connect(
        c: mqtt.Client, u: object, f: mqtt.ConnectFlags, rc: ReasonCode, p: object
    ) -> None:
        answers.append(rc)

    client.on_connect = on_connect
    try:
        client.connect(broker.host, broker.port, keepalive=broker.keepalive_s)
    except OSError as exc:
        return f"cannot connect to {broker.host}:{broker.port}: {exc.strerror or exc}"
    deadline = time.monotonic() + timeout_s
    while not answers and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    client.disconnect()
    if not answers:
        return f"no answer from {broker.host}:{broker.port} within {timeout_s} s"
    return f"refused: {answers[0]}" if answers[0].is_failure else None
