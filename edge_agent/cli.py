"""``smartpark edge run | check --config FILE``.

``run`` runs the agent until SIGINT/SIGTERM, logging a stats line every
``--stats-interval-s``; exit code 0 after a clean stop, 1 if an internal task
failed, 2 for a bad configuration (as every ``smartpark`` command:
:mod:`smartpark.cli`). ``check`` validates the file, reads every device once and
connects to the broker once, printing one line each; exit code 0 only if everything
answered, else 1.
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

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig, BrokerConfig, Hj212Config, load_config
from edge_agent.hj212.listener import Hj212Listener
from edge_agent.pollers import location, make_pollers
from edge_agent.publisher import V311_HINT, connect_error
from edge_agent.sample import Sample, utc_now
from edge_agent.stats import AgentStats
from smartpark.cli import command
from smartpark.errors import DeviceError

log = logging.getLogger("edge_agent")


@command("edge")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smartpark edge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent until SIGINT/SIGTERM")
    run.add_argument("--config", required=True, type=Path)
    run.add_argument("--stats-interval-s", type=float, default=60.0)
    run.add_argument("--log-level", default="INFO")
    check = sub.add_parser("check", help="validate the config, try each device once")
    check.add_argument("--config", required=True, type=Path)
    check.add_argument(
        "--hj212-wait-s",
        type=float,
        default=0.0,
        help="listen this long for a packet from each HJ 212 logger (they connect"
        " to the agent, so by default check only binds the listening port)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    config = load_config(args.config)
    # pymodbus logs each timeout as an ERROR without naming the device; the agent
    # logs every failure itself, with the device id and the reason.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if args.command == "check":
        return asyncio.run(_check(config, hj212_wait_s=args.hj212_wait_s))
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(_run(config, args.stats_interval_s))
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
    broker = "broker connected" if pub.connected else "broker DISCONNECTED"
    if not pub.connected and pub.last_connect_error:
        broker += f" ({pub.last_connect_error})"
    refusing = [f"{r.topic}: {r.reason}" for r in pub.refusing]
    parts = [
        *([f"POLLS REFUSED: {stats.clock_problem}"] if stats.clock_problem else []),
        *([f"BROKER REFUSES {', '.join(refusing)}"] if refusing else []),
        broker,
        f"outbox {ob.rows}/{ob.max_rows} rows (oldest {age}, dropped {ob.dropped_rows},"
        f" expired {ob.expired_rows}, refused polls {ob.refused_polls})",
        f"kept for resend {ob.acked_rows} rows, sent again {pub.resent_readings}"
        f" readings after {pub.resends} lost connections"
        + (
            f", NOT QUEUED AGAIN {ob.requeue_skipped_rows} (outbox full)"
            if ob.requeue_skipped_rows
            else ""
        ),
        f"messages published {pub.published_messages} acked {pub.acked_messages}"
        f" refused {sum(pub.refused_messages.values())} in flight {pub.in_flight}",
    ]
    if (hj := stats.hj212) is not None:
        rejected = ", ".join(f"{k} {n}" for k, n in sorted(hj.frames_rejected.items()))
        parts.append(
            f"hj212 {hj.connections_open} loggers connected, packets ok {hj.frames_ok}"
            f" rejected {hj.frames_rejected.total()}"
            + (f" ({rejected})" if rejected else "")
            + f", unmapped codes {hj.unmapped_codes}"
        )
    for device, d in stats.devices.items():
        line = f"{device}: ok {d.polls_ok} errors {d.errors} seq {d.last_seq}"
        if d.rollovers or d.replacements:
            line += f" counter rollovers {d.rollovers} replacements {d.replacements}"
        if d.consecutive_failures:
            line += f" FAILING x{d.consecutive_failures} ({d.last_error})"
            line += f" backoff {d.backoff_s:.0f} s"
        parts.append(line)
    return "; ".join(parts)


async def _check(config: AgentConfig, *, hj212_wait_s: float = 0.0) -> int:
    ok = config.hj212 is None or await check_hj212(config.hj212, hj212_wait_s)
    pollers = make_pollers(config, clock=utc_now)
    try:
        for device in config.devices:
            at = f"{device.id} ({location(config, device)})"
            try:
                samples = await pollers[device.id].read()
            except DeviceError as exc:
                print(f"FAIL {at}: {exc.reason}")
                ok = False
                continue
            values = ", ".join(f"{s.metric}={s.value:g} {s.unit}" for s in samples)
            print(f"ok   {at}: {values}")
    finally:
        for poller in pollers.values():
            poller.close()
    b = config.broker
    problem = await asyncio.to_thread(probe_broker, b)
    where = f"broker {b.host}:{b.port}{' (TLS)' if b.tls is not None else ''}"
    if problem is None:
        print(f"ok   {where}")
    else:
        print(f"FAIL {where}: {problem}")
        ok = False
    return 0 if ok else 1


def probe_broker(broker: BrokerConfig, *, timeout_s: float = 5.0) -> str | None:
    """Connect once with a throw-away clean session; None if the broker accepts us.

    Blocking. Uses ``{client_id}.check`` as client id so a running agent's
    persistent session is not taken over, and ``broker.protocol``. Returns the
    reason on failure (a TLS failure as ``TLS: certificate verify failed: ...``),
    never a credential; with MQTT 5, a failure that a 3.1.1-only broker would cause
    says so.
    """
    v5 = broker.protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{broker.client_id}.check",
        # MQTT 5: clean start on the first connection, no session expiry
        clean_session=None if v5 else True,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    )
    if broker.tls is not None:
        client.tls_set_context(broker.tls.ssl_context())
    if broker.username is not None:
        password = broker.password
        client.username_pw_set(
            broker.username, None if password is None else password.get_secret_value()
        )
    answers: list[ReasonCode] = []
    closed: list[str] = []
    errors: list[str] = []  # paho's error-level log lines: why a read failed

    def on_connect(
        c: mqtt.Client, u: object, f: mqtt.ConnectFlags, rc: ReasonCode, p: object
    ) -> None:
        answers.append(rc)

    def on_disconnect(
        c: mqtt.Client, u: object, f: mqtt.DisconnectFlags, rc: ReasonCode, p: object
    ) -> None:
        closed.append(str(rc))

    def on_log(c: mqtt.Client, u: object, level: int, buf: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            errors.append(buf)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_log = on_log
    where = f"{broker.host}:{broker.port}"
    try:
        client.connect(broker.host, broker.port, keepalive=broker.keepalive_s)
    except OSError as exc:
        return f"cannot connect to {where}: {connect_error(exc)}"
    deadline = time.monotonic() + timeout_s
    while not answers and not closed and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    client.disconnect()
    hint = V311_HINT if v5 else ""
    if not answers and closed:
        why = errors[-1] if errors else closed[0]
        return f"the broker closed the connection before answering ({why}){hint}"
    if not answers:
        return f"no answer from {where} within {timeout_s} s{hint}"
    if not answers[0].is_failure:
        return None
    if str(answers[0]) != "Unsupported protocol version":
        hint = ""
    return f"refused: {answers[0]}{hint}"


async def check_hj212(config: Hj212Config, wait_s: float) -> bool:
    """Bind the listener's port; with ``wait_s`` > 0, wait for each logger's packet.

    Prints one line per logger (and one for the port); True if all is well.
    Packets received here are decoded and shown, not stored: the agent must not be
    running (it holds the port), so a logger's data of these seconds is not kept.
    """
    first: dict[str, list[Sample]] = {}
    all_heard = asyncio.Event()

    def heard(device: str, samples: list[Sample]) -> None:
        first.setdefault(device_mn[device], samples)
        if len(first) == len(config.loggers):
            all_heard.set()

    device_mn = {
        device: logger.mn
        for logger in config.loggers
        for device in logger.series.values()
    }
    where = f"hj212 listener {config.host}:{config.port}"
    listener = Hj212Listener(
        config.mappings(),
        heard,
        host=config.host,
        port=config.port,
        idle_timeout_s=config.idle_timeout_s,
        strict=config.strict,
    )
    try:
        async with listener:
            print(f"ok   {where}: port bound, {len(config.loggers)} loggers mapped")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_heard.wait(), wait_s)
    except OSError as exc:
        print(f"FAIL {where}: cannot listen: {exc.strerror or exc}")
        return False
    ok = True
    for logger in config.loggers:
        name = f"{logger.device} (MN={logger.mn})"
        samples = first.get(logger.mn)
        if samples is not None:
            values = ", ".join(
                f"{s.metric}={s.value:g} {s.unit} [{s.quality}]" for s in samples
            )
            print(f"ok   {name}: {values}")
        elif wait_s > 0:
            print(f"FAIL {name}: no valid packet within {wait_s:g} s")
            ok = False
        else:
            print(f"-    {name}: not waited for (use --hj212-wait-s)")
    for rejected in listener.rejected:
        print(f"     rejected from {rejected.peer}: {rejected.kind}: {rejected.reason}")
    return ok
