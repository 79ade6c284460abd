"""Standard Webhooks signatures, symmetric scheme ``v1`` (HMAC-SHA256).

Self-contained (standard library only): an enterprise receiving smartpark webhooks
may copy this file as it is. Spec: https://www.standardwebhooks.com/ ("Signature
scheme", "Webhook headers", "Verifying signatures").

Receiver usage::

    from signing import WebhookVerificationError, verify

    try:
        verify(SECRET, request.headers, raw_body)  # the raw bytes, before any parsing
    except WebhookVerificationError as err:
        return 400, str(err)
    if seen_before(request.headers["webhook-id"]):  # at-least-once: de-duplicate
        return 204
    handle(json.loads(raw_body))

Contracts:

- Secrets are ``whsec_`` + base64 of 24 to 64 random bytes; the HMAC key is the
  decoded bytes (the prefix is optional on input, padding may be omitted). A secret
  that does not decode to such a key raises ``ValueError``: that is a configuration
  mistake, never a :class:`WebhookVerificationError`.
- Signed content: ``{webhook-id}.{webhook-timestamp}.{body}`` as bytes, the body
  exactly as sent. ``webhook-timestamp`` is integer Unix seconds.
- ``webhook-signature`` is a space-separated list of ``v1,<base64 HMAC>``; during a
  secret rotation the sender signs with the old and the new secret, and a request
  verifies if any ``v1`` entry matches. Entries of other versions are ignored.
- :func:`verify` returns ``None`` or raises :class:`WebhookVerificationError` whose
  message names the reason; it compares signatures in constant time and reads header
  names case-insensitively. ``now_s=None`` reads the system clock (``time.time()``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"  # noqa: S105  (a format prefix, not a password)
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"

# Far beyond any real Unix time; keeps int() away from pathological input.
_MAX_TIMESTAMP_DIGITS = 12


class WebhookVerificationError(Exception):
    """The request is not an authentic, fresh webhook; ``str(err)`` says why."""


def generate_secret(n_bytes: int = 32) -> str:
    """A new ``whsec_`` secret of ``n_bytes`` random bytes (24 to 64)."""
    if not MIN_KEY_BYTES <= n_bytes <= MAX_KEY_BYTES:
        raise ValueError(f"n_bytes must be {MIN_KEY_BYTES}..{MAX_KEY_BYTES}")
    key = _secrets.token_bytes(n_bytes)
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret; ``ValueError`` if it is not one."""
    text = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"webhook secret is not base64: {exc}") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(
            f"webhook secret decodes to {len(key)} bytes, "
            f"expected {MIN_KEY_BYTES} to {MAX_KEY_BYTES}"
        )
    return key


def _digest(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    content = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, content, hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp_s: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``body`` sent as ``msg_id`` at ``timestamp_s``.

    ``msg_id`` must be non-empty and contain no ``.`` (the spec forbids it: the
    signed content is ``.``-delimited); ``timestamp_s`` is integer Unix seconds.
    """
    if not msg_id or "." in msg_id:
        raise ValueError(f"webhook id must be non-empty without '.': {msg_id!r}")
    if timestamp_s < 0:
        raise ValueError(f"timestamp_s must not be negative: {timestamp_s}")
    mac = _digest(decode_secret(secret), msg_id, str(timestamp_s), body)
    return f"{SIGNATURE_VERSION},{base64.b64encode(mac).decode('ascii')}"


def headers(
    secrets: Sequence[str], msg_id: str, timestamp_s: int, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers, signed with every secret in ``secrets``.

    Pass the current secret alone, or during a rotation's overlap period the new and
    the old one: the receiver accepts the request with either.
    """
    if isinstance(secrets, str) or not secrets:
        raise ValueError("secrets must be a non-empty sequence of whsec_ secrets")
    signatures = " ".join(sign(s, msg_id, timestamp_s, body) for s in secrets)
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(timestamp_s),
        HEADER_SIGNATURE: signatures,
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now_s: float | None = None,
) -> None:
    """Check that ``body`` with ``headers`` was signed with ``secret`` recently.

    Raises :class:`WebhookVerificationError` for a missing or empty header, a
    timestamp that is not integer seconds, a timestamp more than ``tolerance_s``
    before or after ``now_s``, or no ``v1`` signature matching.
    """
    key = decode_secret(secret)
    lower = {name.lower(): value for name, value in headers.items()}
    found: dict[str, str] = {}
    for name in (HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE):
        value = lower.get(name, "").strip()
        if not value:
            raise WebhookVerificationError(f"missing header {name}")
        found[name] = value
    msg_id, stamp = found[HEADER_ID], found[HEADER_TIMESTAMP]

    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > _MAX_TIMESTAMP_DIGITS:
        raise WebhookVerificationError(
            f"bad header {HEADER_TIMESTAMP}: {stamp[:20]!r} is not integer seconds"
        )
    now = time.time() if now_s is None else now_s
    age = now - int(stamp)
    if age > tolerance_s:
        raise WebhookVerificationError(
            f"{HEADER_TIMESTAMP} too old: {age:.0f} s before now "
            f"(tolerance {tolerance_s:g} s)"
        )
    if -age > tolerance_s:
        raise WebhookVerificationError(
            f"{HEADER_TIMESTAMP} too new: {-age:.0f} s after now "
            f"(tolerance {tolerance_s:g} s)"
        )

    expected = _digest(key, msg_id, stamp, body)
    for entry in found[HEADER_SIGNATURE].split():
        version, _, encoded = entry.partition(",")
        if version != SIGNATURE_VERSION:
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        if hmac.compare_digest(expected, candidate):
            return
    raise WebhookVerificationError(f"no matching {SIGNATURE_VERSION} signature")
