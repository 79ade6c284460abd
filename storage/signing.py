"""The platform's signature: Ed25519 over what a third party must be able to check
offline (replay reports, archive manifests).

One private key signs (``SMARTPARK_SIGNING__PRIVATE_KEY``); its public key is given
to whoever verifies (``smartpark signing public``). A key is named by its id, the
first 16 hex digits of the SHA-256 of the raw 32-byte public key, and what is signed
records the id, so a verifier picks the right key after a rotation.

Contracts:

- :meth:`Signer.sign` returns the raw 64-byte Ed25519 signature of the bytes given
  (no hashing before, no encoding after): ``openssl pkeyutl -verify -pubin -inkey
  public.pem -rawin -in FILE -sigfile FILE.sig`` checks it.
- :meth:`Verifier.verify` raises :class:`SignatureError` naming the reason: a key id
  that is not configured, or a signature that does not match.
- Rotation: configure the new private key and move the old key's public PEM into
  ``SMARTPARK_SIGNING__PUBLIC_KEYS``; what the old key signed keeps verifying, and
  what is signed from then on names the new key.
- A missing or malformed key is a :class:`~smartpark.errors.ConfigError` naming the
  variable, raised when the signer is built (at start-up), never mid-work.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from smartpark.errors import ConfigError
from smartpark.settings import SigningSettings

KEY_VARIABLE = "SMARTPARK_SIGNING__PRIVATE_KEY"
PUBLIC_KEYS_VARIABLE = "SMARTPARK_SIGNING__PUBLIC_KEYS"


class SignatureError(Exception):
    """A signature that cannot be accepted; the message says why."""


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


class Signer:
    """Signs with the platform's private key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def public_pem(self) -> str:
        return public_pem(self.public)


class Verifier:
    """Checks signatures against the public keys it knows, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self._keys = {key_id(k): k for k in keys}

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def verify(self, kid: str, data: bytes, signature: bytes) -> None:
        public = self._keys.get(kid)
        if public is None:
            known = ", ".join(self._keys) or "none"
            raise SignatureError(f"signed with key {kid}, which is not known ({known})")
        try:
            public.verify(signature, data)
        except InvalidSignature:
            raise SignatureError(
                f"signature does not match the data under key {kid}"
            ) from None


def parse_private_key(text: str, variable: str = KEY_VARIABLE) -> Ed25519PrivateKey:
    """An Ed25519 private key from PKCS#8 PEM or the URL-safe base64 of its 32-byte
    seed; ConfigError naming ``variable`` otherwise."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"{variable}: not a readable PEM private key ({exc})"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{variable}: an Ed25519 key is required")
        return key
    try:
        seed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise ConfigError(
            f"{variable}: expected an Ed25519 PEM private key or its 32-byte seed in"
            " URL-safe base64 (make one with: smartpark signing keygen)"
        )
    return Ed25519PrivateKey.from_private_bytes(seed)


def parse_public_key(
    text: str, variable: str = PUBLIC_KEYS_VARIABLE
) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(text.strip().encode())
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{variable}: not a readable PEM public key ({exc})"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{variable}: an Ed25519 public key is required")
    return key


def generate_private_key() -> str:
    """A new private key, as ``SMARTPARK_SIGNING__PRIVATE_KEY`` holds it (PEM)."""
    return (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode("ascii")
    )


def signer_from_settings(cfg: SigningSettings) -> Signer:
    if cfg.private_key is None or not cfg.private_key.get_secret_value().strip():
        raise ConfigError(
            f"{KEY_VARIABLE}: required to sign"
            " (make one with: smartpark signing keygen)"
        )
    return Signer(parse_private_key(cfg.private_key.get_secret_value()))


def verifier_from_settings(cfg: SigningSettings) -> Verifier:
    """The current key's public key (when a private key is configured) and every
    retired public key."""
    keys = [parse_public_key(text) for text in cfg.public_keys]
    if cfg.private_key is not None and cfg.private_key.get_secret_value().strip():
        keys.append(parse_private_key(cfg.private_key.get_secret_value()).public_key())
    if not keys:
        raise ConfigError(
            f"{KEY_VARIABLE} or {PUBLIC_KEYS_VARIABLE}: at least one key is needed"
            " to verify"
        )
    return Verifier(keys)
