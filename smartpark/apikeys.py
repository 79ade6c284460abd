"""API keys: their shape, and the keyed hash they are stored as (pure).

A key reads ``spk_<id>_<secret>``: ``spk_`` makes a leaked key easy to find (in
logs, in a repository scan), ``<id>`` (12 hex digits) names the stored row without
revealing anything, ``<secret>`` (43 URL-safe characters, 256 bits) is what proves
the caller. Only ``HMAC-SHA256(pepper, secret)`` is stored; the pepper is a secret
of the platform from the environment (``SMARTPARK_API__KEY_PEPPER``), so a copy of
the table alone verifies nothing. The secret has 256 bits of entropy, so a keyed
fast hash is enough: nothing to guess, and verification costs microseconds per
request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

PREFIX = "spk_"
_KEY_RE = re.compile(r"^spk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


def new_key() -> tuple[str, str]:
    """``(key_id, full key)`` of a fresh key."""
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def parse_key(text: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    m = _KEY_RE.match(text)
    return None if m is None else (m[1], m[2])


def secret_hash(secret: str, pepper: bytes) -> bytes:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).digest()


def matches(secret: str, stored: bytes, pepper: bytes) -> bool:
    return hmac.compare_digest(secret_hash(secret, pepper), stored)
