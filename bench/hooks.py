"""Device time → webhook received: injected breaches and a real local receiver.

Part of ``smartpark bench e2e`` (:mod:`bench.e2e`). Beside the load, one stack
analyser in each of ``--alerts`` enterprises (spread over the park) reports ``nh3``
every 10 s, alternately above the bench pack's limit (the threshold rule opens an
alert) and below its clear level (the alert is resolved): every such reading is one
alert event, hence one webhook. Each of those enterprises has its own webhook
subscription (its own endpoint, as enterprises do), all served by one
:class:`Receiver` on loopback that records when each request arrived and answers
``204``. The latency of a webhook is its arrival minus the intended send time of
the reading that caused it (matched by device and event time, ``at_ms``); its
signature is verified afterwards with the subscription's secret, as a receiver
would.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.load import Workload, device_ids
from notifier import signing
from notifier.events import ALERT_OPENED, ALERT_RESOLVED
from smartpark.wire import Reading, TelemetryBatch, encode_batch, telemetry_topic

METRIC = "nh3"
LIMIT, CLEAR, HIGH, LOW = 8.0, 6.0, 9.5, 5.0
STEP_MS = 10_000
PACK = f"""\
pack: bench
version: "1"
watermark_delay: 0
rules:
  - {{id: bench-nh3, kind: threshold, metric: {METRIC}, limit: {LIMIT:g},
     clear: {CLEAR:g}}}
"""
EVENT_TYPES = (ALERT_OPENED, ALERT_RESOLVED)


@dataclass(frozen=True)
class Breach:
    """One scheduled breach-device message (one reading)."""

    send_s: float  # intended send time, wall clock (= the reading's device time)
    topic: str
    payload: bytes
    key: tuple[str, int]  # (device, ts_ms): what its alert event carries


def enterprises(w: Workload, n: int) -> list[str]:
    """``n`` distinct enterprises spread evenly over the park."""
    n = min(n, w.enterprises)
    return [device_ids(w, (i * w.enterprises // n) * w.devices_per_enterprise)[0]
            for i in range(n)]  # fmt: skip


def plan(
    w: Workload, park: str, n: int, t0_s: float, duration_s: float
) -> list[Breach]:
    """The breach messages of a run starting at ``t0_s`` (whole milliseconds), in
    send order; each enterprise's analyser has its own phase within the step."""
    t0_ms = round(t0_s * 1000)
    out: list[Breach] = []
    ents = enterprises(w, n)
    for i, enterprise in enumerate(ents):
        device = f"{enterprise}-stack"
        phase = i * STEP_MS // max(1, len(ents))
        for k in range(int((duration_s * 1000 - phase) // STEP_MS) + 1):
            ts = t0_ms + phase + k * STEP_MS
            if ts >= t0_ms + duration_s * 1000:
                break
            value = HIGH if k % 2 == 0 else LOW
            reading = Reading(k + 1, METRIC, value, "mg/m3", ts)
            batch = TelemetryBatch(park, enterprise, device, (reading,))
            topic = telemetry_topic(park, enterprise, device)
            out.append(Breach(ts / 1000, topic, encode_batch(batch), (device, ts)))
    return sorted(out, key=lambda b: b.send_s)


@dataclass(frozen=True)
class Hook:
    """One webhook request as it arrived."""

    at_s: float  # time.time() when its body was read
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A threading HTTP server on a free loopback port; records every request."""

    received: list[Hook] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook = Hook(
                    time.time(),
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                with receiver._lock:
                    receiver.received.append(hook)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass  # every request is recorded; nothing on stderr

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, enterprise: str) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook/{enterprise}"

    def snapshot(self) -> list[Hook]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)


@dataclass(frozen=True)
class Outcome:
    """The webhooks of a run, matched to the breaches that caused them."""

    latencies: list[float]  # seconds, sorted; the first arrival of each event
    expected: int  # breach readings sent: one event, one webhook each
    duplicates: int  # requests repeating a webhook-id already received
    unmatched: int  # events no breach reading accounts for
    bad_signatures: int


def match(
    breaches: Sequence[Breach], hooks: Sequence[Hook], secrets: dict[str, str]
) -> Outcome:
    """Each event's first arrival minus its breach's intended send time."""
    intended = {b.key: b.send_s for b in breaches}
    seen: set[str] = set()
    latencies: list[float] = []
    duplicates = unmatched = bad = 0
    for h in sorted(hooks, key=lambda h: h.at_s):
        enterprise = h.path.rsplit("/", 1)[-1]
        try:
            signing.verify(secrets[enterprise], h.headers, h.body, now_s=h.at_s)
        except (KeyError, signing.WebhookVerificationError):
            bad += 1
            continue
        wid = h.headers.get("webhook-id", "")
        if wid in seen:
            duplicates += 1
            continue
        seen.add(wid)
        data = json.loads(h.body)["data"]
        key = (str(data["scope"]["device"]), int(data["at_ms"]))
        if key not in intended:
            unmatched += 1
            continue
        latencies.append(h.at_s - intended[key])
    return Outcome(sorted(latencies), len(breaches), duplicates, unmatched, bad)
