"""The ``broker`` section: where the MQTT broker is, how to log in, TLS."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge_agent.config.base import (
    StrictModel,
    check_id,
    read_secret,
    resolve_path,
)
from smartpark import wire
from smartpark.yamlfile import located


class _KeyIsEncrypted(Exception):
    """The client key needs a password and none is configured."""


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the handshake fails.

    paho 2.x drops the socket without closing it when ``do_handshake()`` raises
    (a certificate that does not verify), leaving the descriptor to the garbage
    collector on every reconnect attempt.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


class _ClientContext(ssl.SSLContext):
    """An ``SSLContext`` that verifies the broker as ``server_name`` when that is set.

    paho wraps its socket with ``server_hostname=<the host it connects to>``; this
    context substitutes ``server_name`` (SNI and certificate check alike), for a
    broker reached by an address its certificate does not name.
    """

    server_name: str | None = None
    sslsocket_class = _ClosingSSLSocket

    def wrap_socket(  # noqa: PLR0917  # ssl.SSLContext's own signature
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=self.server_name or server_hostname,
            session=session,
        )

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return super().wrap_bio(
            incoming,
            outgoing,
            server_side=server_side,
            server_hostname=self.server_name or server_hostname,
            session=session,
        )


class TlsConfig(StrictModel):
    """TLS to the broker; the context is built once, at load (:meth:`ssl_context`).

    The broker's certificate is always verified, hostname included (against
    ``server_name`` if given, else the broker's ``host``): there is no switch to turn
    that off. ``ca_file`` omitted means the system's CAs. ``cert_file`` and
    ``key_file`` (a client certificate) come together; an encrypted key needs
    ``key_password_file`` or ``key_password_env``. Every file is read at load time,
    so a missing file, a file that is not PEM, a key that does not match its
    certificate or a wrong key password is a :class:`ConfigError` naming the field.
    The key password is used once, to load the key, and kept nowhere.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password_file: Path | None = None
    key_password_env: str | None = None
    server_name: str | None = Field(default=None, min_length=1)
    _context: ssl.SSLContext | None = PrivateAttr(default=None)

    @field_validator("ca_file", "cert_file", "key_file", "key_password_file")
    @classmethod
    def _paths(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolve_path(value, info)

    @model_validator(mode="after")
    def _build(self) -> TlsConfig:
        if self.cert_file is not None and self.key_file is None:
            raise located("required with cert_file (the certificate's key)", "key_file")
        if self.key_file is not None and self.cert_file is None:
            raise located(
                "required with key_file (the client certificate)", "cert_file"
            )
        pw_field = "key_password_env" if self.key_password_env else "key_password_file"
        if self.key_password_file is not None and self.key_password_env is not None:
            raise located(
                "give key_password_file or key_password_env, not both", pw_field
            )
        if self.key_file is None and (self.key_password_file or self.key_password_env):
            raise located("only with key_file (a client key)", pw_field)
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None:
                try:
                    path.read_bytes()
                except OSError as exc:
                    raise located(f"cannot read: {exc.strerror}", name) from None
        self._context = self._new_context(self._key_password(), pw_field)
        return self

    def ssl_context(self) -> ssl.SSLContext:
        """The context built at load: the same object on every call."""
        assert self._context is not None, "TlsConfig was not validated"
        return self._context

    def _key_password(self) -> SecretStr | None:
        return read_secret(
            self.key_password_file, self.key_password_env, field="key_password"
        )

    def _new_context(
        self, key_password: SecretStr | None, pw_field: str
    ) -> _ClientContext:
        # PROTOCOL_TLS_CLIENT: CERT_REQUIRED and check_hostname, as
        # ssl.create_default_context() would set them.
        ctx = _ClientContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.server_name = self.server_name
        if self.ca_file is None:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            try:
                ctx.load_verify_locations(cafile=self.ca_file)
            except ssl.SSLError as exc:
                raise located(_pem_problem(exc, "certificate"), "ca_file") from None
        if self.cert_file is None or self.key_file is None:
            return ctx
        try:
            # load_cert_chain says "PEM lib" for a bad certificate and a bad key
            # alike: check the certificate on its own first, to name the field.
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
                cafile=self.cert_file
            )
        except ssl.SSLError as exc:
            raise located(_pem_problem(exc, "certificate"), "cert_file") from None
        asked = False

        def password() -> str:
            # Always a callback: with none, OpenSSL would prompt on the terminal.
            nonlocal asked
            asked = True
            if key_password is None:
                raise _KeyIsEncrypted
            return key_password.get_secret_value()

        try:
            ctx.load_cert_chain(self.cert_file, self.key_file, password=password)
        except _KeyIsEncrypted:
            raise located(
                "the key is encrypted: give key_password_file or key_password_env",
                "key_file",
            ) from None
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise located(
                    "the key does not belong to the certificate in cert_file",
                    "key_file",
                ) from None
            if asked:
                raise located(
                    "cannot decrypt key_file with this password", pw_field
                ) from None
            raise located(_pem_problem(exc, "private key"), "key_file") from None
        return ctx


def _pem_problem(exc: ssl.SSLError, what: str) -> str:
    if exc.reason in (None, "NO_CERTIFICATE_OR_CRL_FOUND", "NO_START_LINE"):
        return f"no PEM {what} in the file"
    return f"not a valid PEM {what}: {exc.reason}"


#: Session Expiry Interval ceiling in MQTT 5 (0xFFFFFFFF: the session never expires).
MAX_SESSION_EXPIRY_S = 0xFFFF_FFFF


class BrokerConfig(StrictModel):
    """Where the broker is and how to talk to it.

    ``protocol``: ``"5"`` (default) or ``"3.1.1"`` for a broker that speaks only
    3.1.1; with 3.1.1 a publish the broker refuses (ACL, quota) is acknowledged like
    any other and the agent cannot see the refusal. ``session_expiry_s`` (MQTT 5
    only): how long the broker keeps the agent's session after the connection
    drops (see :mod:`edge_agent.publisher`).
    """

    host: str
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_min_s: int = Field(default=1, ge=1)
    reconnect_max_s: int = Field(default=60, ge=1)
    tls: TlsConfig | None = None  # None: plain TCP
    protocol: Literal["5", "3.1.1"] = "5"
    session_expiry_s: int = Field(default=86_400, ge=1, le=MAX_SESSION_EXPIRY_S)
    _password: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _tls_port(cls, data: Any) -> Any:
        # 8883 is MQTT over TLS's registered port; TLS spoken to 1883 would only
        # fail with an obscure handshake error.
        if isinstance(data, dict) and "tls" in data and "port" not in data:
            return {**data, "port": 8883}
        return data

    @field_validator("tls", mode="before")
    @classmethod
    def _bare_tls(cls, value: Any) -> Any:
        # A bare "tls:" in YAML is null; whoever wrote it meant TLS, not plain TCP.
        return {} if value is None else value

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_number(cls, value: Any) -> Any:
        # "protocol: 5" in YAML is the integer 5; the version is meant either way.
        return (
            str(value)
            if isinstance(value, int) and not isinstance(value, bool)
            else value
        )

    @model_validator(mode="after")
    def _expiry_needs_v5(self) -> BrokerConfig:
        if self.protocol != "5" and "session_expiry_s" in self.model_fields_set:
            raise ValueError(
                "session_expiry_s needs protocol 5 (an MQTT 3.1.1 session without "
                "clean session never expires on the broker)"
            )
        return self

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        check_id(value)
        if not wire.valid_id(f"agent.{value}"):
            raise ValueError(
                "at most 58 characters: the agent's status is published as device "
                "'agent.{client_id}'"
            )
        return value

    @field_validator("password_file")
    @classmethod
    def _password_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolve_path(value, info)

    @model_validator(mode="after")
    def _read_password(self) -> BrokerConfig:
        self._password = read_secret(self.password_file, self.password_env)
        return self

    @property
    def password(self) -> SecretStr | None:
        return self._password
