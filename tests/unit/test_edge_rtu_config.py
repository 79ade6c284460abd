"""Modbus RTU in the agent's config: serial lines, RTU and RTU-over-TCP devices."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_agent.config import load_config
from smartpark.errors import ConfigError

# Line numbers matter below: keep this text in sync with the expectations.
GOOD = """\
site: {park: park1, enterprise: boiler-house}
broker: {host: 127.0.0.1, client_id: edge-boiler-house}
outbox: {path: outbox.db}
serial_lines:
  - id: line-1
    port: /dev/ttyUSB0
    parity: E
  - {id: line-2, port: /dev/ttyUSB1, baudrate: 19200, bytesize: 7, stopbits: 2}
devices:
  - id: water-3
    protocol: modbus_rtu
    line: line-1
    unit_id: 3
    poll_interval_s: 10
    timeout_s: 0.5
    registers:
      - {address: 0, table: input, type: u32, metric: water_volume, unit: L}
  - id: water-4
    protocol: modbus_rtu
    line: line-1
    unit_id: 4
    poll_interval_s: 10
    registers:
      - {address: 0, table: input, type: u32, metric: water_volume, unit: L}
  - id: gw-meter
    protocol: modbus_rtu_tcp
    host: 10.0.0.30
    port: 4001
    unit_id: 7
    poll_interval_s: 10
    registers:
      - {address: 0, type: u32, metric: active_energy, unit: kWh}
  - id: tcp-meter
    protocol: modbus_tcp
    host: 10.0.0.31
    unit_id: 0
    poll_interval_s: 10
    registers:
      - {address: 0, type: u32, metric: active_energy, unit: kWh}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_good_file_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    line1, line2 = cfg.serial_lines
    # defaults a plant engineer may leave out: 9600 8N1
    assert (line1.baudrate, line1.bytesize, line1.parity, line1.stopbits) == (
        9600,
        8,
        "E",
        1,
    )
    assert (line2.baudrate, line2.bytesize, line2.parity, line2.stopbits) == (
        19200,
        7,
        "N",
        2,
    )
    water3, water4, gw, tcp = cfg.devices
    assert (water3.protocol, water3.line, water3.unit_id, water3.host) == (
        "modbus_rtu",
        "line-1",
        3,
        None,
    )
    assert water4.timeout_s == 2.0
    assert (gw.host, gw.port, gw.unit_id) == ("10.0.0.30", 4001, 7)
    assert (tcp.port, tcp.unit_id) == (502, 0)  # unit 0 stays valid for Modbus TCP


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # the line an RTU device names must be declared
        (
            "    line: line-1\n    unit_id: 4\n",
            "    line: line-9\n    unit_id: 4\n",
            "agent.yaml:20: devices[1].line: unknown serial line 'line-9' "
            "(declared: line-1, line-2)",
        ),
        (
            "    protocol: modbus_rtu\n    line: line-1\n    unit_id: 3\n",
            "    protocol: modbus_rtu\n    unit_id: 3\n",
            "agent.yaml:10: devices[0].line: missing required field",
        ),
        # an RTU device is reached through its line, never at host:port
        (
            "    line: line-1\n    unit_id: 3\n",
            "    line: line-1\n    host: 10.0.0.5\n    unit_id: 3\n",
            "agent.yaml:13: devices[0].host: not used by protocol modbus_rtu: the "
            "device is reached through its serial line",
        ),
        (
            "    line: line-1\n    unit_id: 3\n",
            "    line: line-1\n    port: 502\n    unit_id: 3\n",
            "agent.yaml:13: devices[0].port: not used by protocol modbus_rtu: the "
            "device is reached through its serial line",
        ),
        (
            "    host: 10.0.0.30\n",
            "    line: line-1\n",
            "agent.yaml:25: devices[2].host: missing required field",
        ),
        (
            "    host: 10.0.0.31\n",
            "    host: 10.0.0.31\n    line: line-1\n",
            "agent.yaml:36: devices[3].line: only for protocol modbus_rtu (modbus_tcp "
            "devices are reached at host:port)",
        ),
        # RTU unit ids: 0 is broadcast, 248..255 reserved; Modbus TCP keeps 0..255
        (
            "    unit_id: 3\n",
            "    unit_id: 0\n",
            "agent.yaml:13: devices[0].unit_id: Modbus RTU unit ids are 1..247 (got 0)",
        ),
        (
            "    unit_id: 7\n",
            "    unit_id: 248\n",
            "agent.yaml:29: devices[2].unit_id: Modbus RTU unit ids are 1..247 "
            "(got 248)",
        ),
        # devices on one bus are told apart by unit id alone
        (
            "    unit_id: 4\n",
            "    unit_id: 3\n",
            "agent.yaml:21: devices[1].unit_id: unit id 3 is already used by "
            "'water-3' on serial line line-1",
        ),
        (
            "    protocol: modbus_tcp\n    host: 10.0.0.31\n    unit_id: 0\n",
            "    protocol: modbus_rtu_tcp\n    host: 10.0.0.30\n    port: 4001\n"
            "    unit_id: 7\n",
            "agent.yaml:37: devices[3].unit_id: unit id 7 is already used by "
            "'gw-meter' behind 10.0.0.30:4001",
        ),
        # a gateway speaks RTU framing or MBAP, not both
        (
            "    protocol: modbus_tcp\n    host: 10.0.0.31\n",
            "    protocol: modbus_tcp\n    host: 10.0.0.30\n    port: 4001\n",
            "agent.yaml:34: devices[3].protocol: 10.0.0.30:4001 is already used by "
            "'gw-meter' with protocol modbus_rtu_tcp",
        ),
        (
            "    protocol: modbus_rtu_tcp\n",
            "    protocol: modbus_rtu_over_tcp\n",
            "agent.yaml:26: devices[2].protocol: unknown value 'modbus_rtu_over_tcp' "
            "(expected one of 'modbus_tcp', 'modbus_rtu' or 'modbus_rtu_tcp')",
        ),
        # the lines themselves
        (
            "    parity: E\n",
            "    parity: X\n",
            "agent.yaml:7: serial_lines[0].parity: unknown value 'X' (expected one "
            "of 'N', 'E' or 'O')",
        ),
        (
            "bytesize: 7",
            "bytesize: 6",
            "agent.yaml:8: serial_lines[1].bytesize: unknown value 6 (expected one "
            "of 7 or 8)",
        ),
        (
            "stopbits: 2",
            "stopbits: 1.5",
            "agent.yaml:8: serial_lines[1].stopbits: unknown value 1.5 (expected "
            "one of 1 or 2)",
        ),
        (
            "baudrate: 19200",
            "baudrate: 0",
            "agent.yaml:8: serial_lines[1].baudrate: Input should be greater than "
            "or equal to 300 (got 0)",
        ),
        (
            "{id: line-2,",
            "{id: line-1,",
            "agent.yaml:8: serial_lines[1].id: duplicate serial line id 'line-1'",
        ),
        (
            "port: /dev/ttyUSB1",
            "port: /dev/ttyUSB0",
            "agent.yaml:8: serial_lines[1].port: port '/dev/ttyUSB0' is already "
            "line 'line-1'",
        ),
        (
            "    port: /dev/ttyUSB0\n",
            "    port: /dev/ttyUSB0\n    speed: 9600\n",
            "agent.yaml:7: serial_lines[0].speed: unknown field (a typo?)",
        ),
    ],
)
def test_mistakes_name_file_line_and_field(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD.replace(old, new, 1)))
    assert str(info.value) == expected


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # one unit id on two different lines
        ("    line: line-1\n    unit_id: 4\n", "    line: line-2\n    unit_id: 3\n"),
        # one unit id behind two gateway ports, or at two Modbus TCP devices
        (
            "    protocol: modbus_tcp\n    host: 10.0.0.31\n    unit_id: 0\n",
            "    protocol: modbus_rtu_tcp\n    host: 10.0.0.30\n    port: 4002\n"
            "    unit_id: 7\n",
        ),
        ("    host: 10.0.0.31\n", "    host: 10.0.0.31\n    port: 4001\n"),
        # lowercase parity, as some vendor manuals write it
        ("    parity: E\n", "    parity: e\n"),
    ],
)
def test_what_is_allowed(tmp_path: Path, old: str, new: str) -> None:
    assert old in GOOD
    load_config(write(tmp_path, GOOD.replace(old, new, 1)))


def test_an_unknown_line_with_none_declared(tmp_path: Path) -> None:
    text = re.sub(r"serial_lines:\n(  .*\n)+", "", GOOD)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value) == (
        "agent.yaml:7: devices[0].line: unknown serial line 'line-1' (declared: none)"
    )


def uncomment_config(text: str) -> str:
    """The example with its commented-out config blocks enabled: a block starts
    with ``# serial_lines:`` or ``# - id:`` and runs over the more indented
    commented lines after it."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        m = re.match(r"^(\s*)# (.*)$", line)
        if m and (
            m[2].startswith(("serial_lines:", "- id:"))
            or (inside and m[2].startswith(" "))
        ):
            out.append(m[1] + m[2])
            inside = True
        else:
            out.append(line)
            inside = False
    return "\n".join(out) + "\n"


def test_the_commented_rtu_example_is_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMARTPARK_MQTT_PASSWORD", "x")
    monkeypatch.setenv("SMARTPARK_HJ212_PW", "x")
    example = Path(__file__).resolve().parents[2] / "edge_agent" / "agent.example.yaml"
    text = uncomment_config(example.read_text(encoding="utf-8"))
    cfg = load_config(write(tmp_path, text))
    assert [line.id for line in cfg.serial_lines] == ["line-1"]
    by_protocol = {d.protocol: d for d in cfg.devices}
    assert by_protocol["modbus_rtu"].line == "line-1"
    assert by_protocol["modbus_rtu_tcp"].port == 4001
