"""The edge agent's YAML configuration, parsed once into frozen, typed models.

A commented example ships next to this package as ``agent.example.yaml``; the
shape is (one module per section: :mod:`.broker`, :mod:`.devices`, :mod:`.hj212`,
:mod:`.model` for the rest, :mod:`.loader` for the file)::

    site: {park, enterprise}
    broker: {host, port, client_id, username, password_file | password_env, ...,
             protocol: "5" | "3.1.1", session_expiry_s (protocol 5 only),
             tls: {ca_file, cert_file, key_file,
                   key_password_file | key_password_env, server_name}}
    outbox: {path, max_rows, max_age_s, overflow: drop_oldest | refuse_new}
    publish: {max_readings_per_message, max_in_flight,
              refused_retry_min_s, refused_retry_max_s, resend_window_s}
    status: {host, port, unhealthy_after_s}      # optional: the local endpoint
    serial_lines:                                 # optional: RS-485 lines owned
      - {id, port, baudrate, bytesize: 7 | 8, parity: N | E | O, stopbits: 1 | 2}
    devices:
      - {id, protocol: modbus_tcp | modbus_rtu_tcp | modbus_rtu,
         host, port (the TCP protocols) | line (modbus_rtu: a serial line's id),
         unit_id, poll_interval_s, timeout_s,
         max_backoff_s, registers: [{address, table: holding | input,
         type: u16 | i16 | u32 | i32 | f32 | u64 | i64 | f64,
         word_order: big | little, byte_order: big | little, scale, offset,
         metric, unit, rollover_at}]}
    hj212:                                        # optional: HJ 212 data loggers
      {host, port, idle_timeout_s, max_connections, strict,
       loggers: [{mn, device, minute, hourly, daily, timezone,
                  password_file | password_env,
                  pollutants: {code: {metric, corrected, unit}}}]}

Devices sharing a bus — one serial line, or one ``modbus_rtu_tcp`` gateway
``host:port`` — need distinct unit ids (1..247 for RTU); a ``modbus_rtu`` device's
``line`` must be declared in ``serial_lines``; one ``host:port`` cannot be both
``modbus_tcp`` and ``modbus_rtu_tcp``.

Contract of :func:`load_config`: it returns an :class:`AgentConfig` or raises
:class:`~smartpark.errors.ConfigError` whose text reads ``file:line: field: reason``
(``agent.yaml:14: devices[0].registers[1].type: unknown value 'u23' (expected ...)``)
— for YAML syntax errors, duplicate keys, unknown keys (typos), wrong types, unknown
metrics, units that cannot be converted to the metric's unit, invalid ids,
unreadable password files and TLS files that are unreadable, not PEM, or a key that
does not match its certificate. Nothing else is raised for a bad file.

A register's value is ``raw * scale + offset`` in the device's ``unit``; the agent
converts it to the catalogue unit with :func:`smartpark.catalogue.to_canonical`.
The broker password is read at load time from ``password_file`` or the environment
variable named by ``password_env`` and kept as a ``SecretStr``: it is never logged
and never part of ``model_dump()``. With ``broker.tls`` (absent: plain TCP; the port
defaults to 8883 instead of 1883) the TLS context is built once, at load, and
``broker.tls.ssl_context()`` returns it; the key password is only used to load the
key.
"""

from edge_agent.config.broker import BrokerConfig, TlsConfig
from edge_agent.config.devices import (
    MAX_READ_REGISTERS,
    REGISTER_WIDTH,
    DeviceConfig,
    RegisterConfig,
    SerialLineConfig,
)
from edge_agent.config.hj212 import (
    HJ212_INTERVALS,
    Hj212Config,
    LoggerConfig,
    PollutantConfig,
)
from edge_agent.config.loader import load_config, parse_config
from edge_agent.config.model import (
    AgentConfig,
    ClockConfig,
    OutboxConfig,
    PublishConfig,
    SiteConfig,
    StatusConfig,
)

__all__ = [
    "HJ212_INTERVALS",
    "MAX_READ_REGISTERS",
    "REGISTER_WIDTH",
    "AgentConfig",
    "BrokerConfig",
    "ClockConfig",
    "DeviceConfig",
    "Hj212Config",
    "LoggerConfig",
    "OutboxConfig",
    "PollutantConfig",
    "PublishConfig",
    "RegisterConfig",
    "SerialLineConfig",
    "SiteConfig",
    "StatusConfig",
    "TlsConfig",
    "load_config",
    "parse_config",
]
