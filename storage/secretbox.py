"""Webhook signing secrets encrypted at rest (AES-256-GCM, keys from the
environment).

A :class:`SecretBox` holds the current key (``SMARTPARK_WEBHOOKS__SECRET_KEY``)
and any older keys still needed to decrypt (``SMARTPARK_WEBHOOKS__OLD_SECRET_KEYS``).
A key is 32 random bytes, URL-safe base64 (44 characters); its id is derived from
it (the first 12 hex digits of its SHA-256), so nothing else has to be configured
and a ciphertext names the key that opens it.

Contracts:

- :meth:`SecretBox.seal` encrypts with the current key; the stored text is
  ``base64(nonce ‖ ciphertext ‖ tag)`` and the row keeps the key id beside it. The
  subscription id is the associated data: a ciphertext copied to another
  subscription does not open.
- :meth:`SecretBox.open` decrypts with the key the row names; a key that is not
  configured, or a ciphertext that does not authenticate, is a
  :class:`~smartpark.errors.ConfigError` naming the variable (the secret is never
  guessed at, and never lost: the row stays as it is).
- Rotation: configure the new key as ``SECRET_KEY`` and the old one in
  ``OLD_SECRET_KEYS``; ``smartpark webhooks reencrypt`` (or the notifier at start-up)
  re-encrypts every secret with the current key; then the old key may go.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from smartpark.errors import ConfigError
from smartpark.settings import WebhookSettings

KEY_VARIABLE = "SMARTPARK_WEBHOOKS__SECRET_KEY"
OLD_KEYS_VARIABLE = "SMARTPARK_WEBHOOKS__OLD_SECRET_KEYS"
_NONCE_BYTES = 12


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:12]


def parse_key(text: str, variable: str = KEY_VARIABLE) -> bytes:
    """The 32 key bytes of URL-safe base64 ``text``; ConfigError naming
    ``variable`` otherwise."""
    try:
        key = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:  # AES-256
        raise ConfigError(
            f"{variable}: expected 32 random bytes in URL-safe base64 (make one"
            ' with: python -c "import base64, os;'
            ' print(base64.urlsafe_b64encode(os.urandom(32)).decode())")'
        )
    return key


def new_key() -> str:
    """A new random key, as the environment variable holds it."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


class SecretBox:
    def __init__(self, current: bytes, old: Sequence[bytes] = ()) -> None:
        self._current = AESGCM(current)
        self.current_id = key_id(current)
        self._keys = {key_id(k): AESGCM(k) for k in old}
        self._keys[self.current_id] = self._current

    @classmethod
    def from_text(cls, current: str | None, old: Sequence[str] = ()) -> SecretBox:
        """From the settings' strings; ConfigError naming the variable when the
        current key is missing or any key is malformed."""
        if current is None or not current.strip():
            raise ConfigError(
                f"{KEY_VARIABLE}: required (webhook signing secrets are stored"
                " encrypted with it; see README, 'Webhooks')"
            )
        return cls(parse_key(current), [parse_key(k, OLD_KEYS_VARIABLE) for k in old])

    @classmethod
    def from_settings(cls, cfg: WebhookSettings) -> SecretBox:
        """From ``settings.webhooks``; ConfigError naming the variable when the
        current key is missing: call it at start-up."""
        current = None if cfg.secret_key is None else cfg.secret_key.get_secret_value()
        return cls.from_text(
            current, [k.get_secret_value() for k in cfg.old_secret_keys]
        )

    def seal(self, secret: str, subscription_id: str) -> tuple[str, str]:
        """(ciphertext text, key id) of ``secret`` under the current key."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._current.encrypt(nonce, secret.encode(), subscription_id.encode())
        return base64.b64encode(nonce + sealed).decode("ascii"), self.current_id

    def open(self, stored: str, kid: str, subscription_id: str) -> str:
        aead = self._keys.get(kid)
        if aead is None:
            raise ConfigError(
                f"{OLD_KEYS_VARIABLE}: a webhook secret of {subscription_id} is"
                f" encrypted with key {kid}, which is not configured"
            )
        try:
            raw = base64.b64decode(stored, validate=True)
            plain = aead.decrypt(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], subscription_id.encode()
            )
        except (binascii.Error, ValueError, InvalidTag):
            raise ConfigError(
                f"{KEY_VARIABLE}: a webhook secret of {subscription_id} does not"
                f" decrypt with key {kid} (altered, or another key with that id)"
            ) from None
        return plain.decode()
