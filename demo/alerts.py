"""The demo's alert path: rules runner → alerts topic → notifier → a webhook receiver.

The demo's own rule pack flags a meter silent for a few poll intervals
(``missing_data``); the demo silences one meter for a while, so the run shows a
``device.offline`` and a ``device.back`` webhook. The receiver is a local HTTP
server standing in for an enterprise's system: it verifies each request with
:func:`notifier.signing.verify`, as the README tells receivers to, and counts
what verified and what did not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from notifier import signing

log = logging.getLogger("demo.webhooks")


def pack_text(metrics: Sequence[str], poll_interval_s: float) -> str:
    """A pack with one rule: any meter silent for 4 poll intervals is offline."""
    interval_ms = max(1, round(poll_interval_s * 1000))
    return "\n".join(
        [
            "pack: demo",
            'version: "1"',
            "timezone: Asia/Shanghai",
            "watermark_delay: 1s",
            "allowed_lateness: 1min",
            "rules:",
            "  - id: meter-offline",
            "    kind: missing_data",
            "    severity: major",
            "    description: a meter silent for four poll intervals",
            f"    metrics: [{', '.join(sorted(set(metrics)))}]",
            f"    expected_interval: {interval_ms}ms",
            f"    max_silence: {4 * interval_ms}ms",
            "",
        ]
    )


@dataclass
class Received:
    verified: int = 0
    rejected: int = 0


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.receiver.handle(dict(self.headers.items()), body)
        self.send_response(204)
        self.send_header("Connection", "close")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: WebhookReceiver


class WebhookReceiver:
    """``with receiver.serving() as url:`` an endpoint that verifies and counts;
    ``say`` gets a line per verified webhook."""

    def __init__(self, secret: str, say: Callable[[str], None]) -> None:
        self.secret = secret
        self._say = say
        self.received = Received()
        self._lock = threading.Lock()

    def handle(self, headers: dict[str, str], body: bytes) -> None:
        try:
            signing.verify(self.secret, headers, body)
        except signing.WebhookVerificationError as exc:
            log.warning("webhook rejected: %s", exc)
            with self._lock:
                self.received.rejected += 1
            return
        doc = json.loads(body)
        data = doc.get("data", {})
        scope = data.get("scope") or {}
        webhook_id = {k.lower(): v for k, v in headers.items()}.get("webhook-id")
        self._say(
            f"  webhook     {doc.get('type')}: {scope.get('enterprise')}/"
            f"{scope.get('device')}  (signature verified, webhook-id {webhook_id})"
        )
        with self._lock:
            self.received.verified += 1

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.receiver = self
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/smartpark-webhooks"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)


def write_pack(data_dir: Path, metrics: Sequence[str], poll_interval_s: float) -> Path:
    path = data_dir / "demo-pack.yaml"
    path.write_text(pack_text(metrics, poll_interval_s), encoding="utf-8")
    return path
