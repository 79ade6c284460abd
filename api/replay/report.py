"""The replay report: one CSV file with the evidence, the events and the diff, and
its detached Ed25519 signature.

The file (UTF-8, ``\\n`` line ends):

- first, comment lines ``# name: value`` with the evidence: ``report``
  (``smartpark replay``), ``key_id`` (the signing key's id, see
  :mod:`storage.signing`), ``scope``, ``start``, ``end``, ``rows``,
  ``platform_version``, ``started_at``, ``finished_at``, then per part of the range
  ``part N`` with the pack, version, SHA-256, time zone, range, span read, row
  count and digests as JSON; and the counts ``events``, ``new``, ``vanished``,
  ``changed``;
- then a CSV table with the header :data:`COLUMNS`, one row per replayed event
  (``section`` = ``event``) followed by one row per difference
  (``section`` = ``diff``, ``status`` new | vanished | changed, the replay's
  judgement in ``kind``/``verdict``/``value``/``rule_version``/``event_id`` and
  live's in the ``live_`` columns). Times are ISO 8601 UTC with milliseconds;
  ``key_time`` is the window's start (else the event's time).

The signature (``report.csv.sig``) is the raw 64-byte Ed25519 signature of the
file's bytes, exactly as written. A third party verifies it offline with the
platform's public key (``smartpark signing public > smartpark-public.pem``)::

    openssl pkeyutl -verify -pubin -inkey smartpark-public.pem -rawin \\
        -in report.csv -sigfile report.csv.sig

which prints ``Signature Verified Successfully``; any changed byte fails it.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from api.replay.service import ReplayResult
from rules.model import JSON
from rules.replay import key_ms, scope_key
from storage.signing import Signer

COLUMNS = (
    "section", "status", "rule_id", "scope", "key_time", "at", "kind", "verdict",
    "value", "rule_version", "event_id", "live_kind", "live_verdict", "live_value",
    "live_rule_version", "live_event_id",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SignedReport:
    csv: bytes
    signature: bytes
    key_id: str


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _num(value: float | None) -> str:
    return "" if value is None else repr(value)


def _event_row(e: JSON) -> list[str]:
    return [
        "event", "", e["rule_id"], scope_key(e), iso_ms(key_ms(e)),
        iso_ms(e["at_ms"]), e["kind"], str(e["evidence"].get("verdict", "")),
        _num(e["value"]), e["rule_version"], e["event_id"], "", "", "", "", "",
    ]  # fmt: skip


def render_csv(result: ReplayResult, *, key_id: str) -> bytes:
    """The report's bytes (see the module doc)."""
    ev = result.evidence
    out = io.StringIO(newline="")
    counts = result.summary()
    head = [
        ("report", "smartpark replay"),
        ("key_id", key_id),
        ("scope", json.dumps(ev.scope.to_json(), sort_keys=True)),
        ("start", ev.start.isoformat()),
        ("end", ev.end.isoformat()),
        ("rows", str(ev.rows)),
        ("platform_version", ev.platform_version),
        ("started_at", ev.started_at.isoformat()),
        ("finished_at", ev.finished_at.isoformat()),
    ]
    head += [
        (f"part {i}", json.dumps(p.to_json(), sort_keys=True))
        for i, p in enumerate(ev.parts, 1)
    ]
    head += [(k, str(counts[k])) for k in ("events", "new", "vanished", "changed")]
    for name, value in head:
        out.write(f"# {name}: {value}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for event in result.events:
        writer.writerow(_event_row(event.to_json()))
    for d in result.diff:
        new, old = d.replay, d.live
        writer.writerow([
            "diff", d.status, d.rule_id, d.scope, iso_ms(d.key_ms), "",
            new.kind if new else "", new.verdict if new else "",
            _num(new.value) if new else "", new.rule_version if new else "",
            new.event_id if new else "",
            old.kind if old else "", old.verdict if old else "",
            _num(old.value) if old else "", old.rule_version if old else "",
            old.event_id if old else "",
        ])  # fmt: skip
    return out.getvalue().encode()


def sign_report(result: ReplayResult, signer: Signer) -> SignedReport:
    data = render_csv(result, key_id=signer.key_id)
    return SignedReport(data, signer.sign(data), signer.key_id)
