"""Manifests: what a segment holds, signed, and chained per enterprise.

A manifest is a JSON object (fields in :class:`Manifest`). Its **canonical bytes**
are ``json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
allow_nan=False)`` encoded as UTF-8: keys sorted at every level, no whitespace,
non-ASCII escaped, so any JSON library reproduces them. The signature is Ed25519
(:mod:`storage.signing`) over the canonical bytes of every field except
``signature``; the manifest file is the canonical bytes of every field including
``signature`` (URL-safe base64 of the 64 raw bytes). The manifest's **hash** is
the SHA-256 of that file, and ``previous`` of the next manifest of the same
enterprise is that hash: a hash chain per enterprise, across days and amendments,
in sealing order (``position`` 1, 2, ...; the first has ``previous`` null).

Checking a manifest offline needs only the file and the platform's public key::

    python -c 'import json,sys,base64; m=json.load(open(sys.argv[1]));
    s=base64.urlsafe_b64decode(m.pop("signature")); open("m.sig","wb").write(s);
    open("m.bin","wb").write(json.dumps(m,sort_keys=True,separators=(",",":"),
    ensure_ascii=True).encode())' MANIFEST.json
    openssl pkeyutl -verify -pubin -inkey public.pem -rawin -in m.bin -sigfile m.sig

Key rotation: ``key_id`` names the key that signed (first 16 hex digits of the
SHA-256 of the raw public key). After a rotation, manifests signed by the old key
verify as long as its public key is in ``SMARTPARK_SIGNING__PUBLIC_KEYS``; nothing
is re-signed, and the chain runs on across the rotation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from storage.signing import SignatureError, Signer, Verifier

FORMAT = "smartpark-archive-manifest/1"
KINDS = ("seal", "amendment")


class ManifestError(ValueError):
    """A manifest file that cannot be read as one; the message says why."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """One seal or amendment of an enterprise-day (see the module doc)."""

    enterprise: str
    park: str
    day: str  # local day, ISO 8601 (YYYY-MM-DD)
    time_zone: str  # IANA name of the park's zone
    start: str  # the local day as a UTC range [start, end), ISO 8601
    end: str
    kind: str  # KINDS
    position: int  # 1, 2, ... per enterprise, in sealing order
    row_count: int
    columns: dict[str, dict[str, str | int | None]]  # min, max, nulls
    segment_path: str  # relative to the archive's root
    segment_sha256: str
    segment_bytes: int
    marks: list[dict[str, Any]]  # the day's data marks as they stood when sealed
    previous: str | None  # hash of the previous manifest of the enterprise
    platform_version: str
    created_at: str  # ISO 8601, UTC
    key_id: str
    signature: str = field(default="")  # URL-safe base64, 64 bytes
    format: str = FORMAT

    def unsigned_bytes(self) -> bytes:
        fields = asdict(self)
        del fields["signature"]
        return canonical(fields)

    def file_bytes(self) -> bytes:
        """The manifest file: canonical bytes with the signature."""
        return canonical(asdict(self))


def canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
        allow_nan=False,
    ).encode()  # fmt: skip


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sign(unsigned: Manifest, signer: Signer) -> Manifest:
    """``unsigned`` with ``key_id`` and ``signature`` set by ``signer``."""
    named = replace(unsigned, key_id=signer.key_id, signature="")
    signature = signer.sign(named.unsigned_bytes())
    return replace(named, signature=base64.urlsafe_b64encode(signature).decode())


def check_signature(manifest: Manifest, verifier: Verifier) -> None:
    """Raise :class:`SignatureError` naming why the signature is not accepted."""
    try:
        raw = base64.urlsafe_b64decode(manifest.signature.encode())
    except (binascii.Error, ValueError):
        raise SignatureError("signature is not URL-safe base64") from None
    verifier.verify(manifest.key_id, manifest.unsigned_bytes(), raw)


def parse(data: bytes) -> Manifest:
    """A manifest from its file bytes; :class:`ManifestError` saying why not."""
    try:
        fields = json.loads(data)
    except ValueError as exc:
        raise ManifestError(f"not JSON ({exc})") from None
    if not isinstance(fields, dict):
        raise ManifestError("not a JSON object")
    if fields.get("format") != FORMAT:
        raise ManifestError(f"format {fields.get('format')!r}, expected {FORMAT!r}")
    try:
        manifest = Manifest(**fields)
    except TypeError as exc:
        raise ManifestError(f"fields differ from the format ({exc})") from None
    if manifest.kind not in KINDS:
        raise ManifestError(f"kind {manifest.kind!r} is not one of {KINDS}")
    return manifest
