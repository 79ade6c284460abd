"""upstream.config: the upstream file, checked at start with errors naming the place."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from edge_agent.hj212.model import Hj212Version
from smartpark.errors import ConfigError
from upstream.config import load, parse

GOOD_YAML = """\
upstreams:
  - name: province
    host: 10.1.2.3
    port: 9001
    version: "2025"
    overtime_s: 5
    recount: 2
    outlets:
      - outlet: stack-1
        park: p1
        enterprise: e1
        devices: [cems-1]
        mn: "88888880000001"
        password_file: pw.txt
        series: [realtime, hour]
        pollutants:
          a21026: {metric: so2, corrected: so2_corrected}
          a21002: {metric: nox}
"""


def good() -> dict[str, Any]:
    return {
        "upstreams": [{
            "name": "province", "host": "127.0.0.1", "port": 9001,
            "outlets": [{
                "outlet": "stack-1", "park": "p1", "enterprise": "e1",
                "devices": ["cems-1"], "mn": "88888880000001",
                "password_env": "UPSTREAM_PW", "series": ["realtime"],
                "pollutants": {"a21026": {"metric": "so2"}},
            }],
        }]
    }  # fmt: skip


def test_a_file_is_read_with_its_password_kept_secret(tmp_path: Path) -> None:
    (tmp_path / "pw.txt").write_text("pw-123\n")
    (tmp_path / "upstream.yaml").write_text(GOOD_YAML)
    cfg = load(tmp_path / "upstream.yaml")
    (u,) = cfg.upstreams
    assert (u.version, u.overtime_s, u.recount, u.tls) == (
        Hj212Version.V2025, 5.0, 2, False
    )  # fmt: skip
    (o,) = u.outlets
    assert o.password.get_secret_value() == "pw-123"
    assert "pw-123" not in repr(o)
    assert "pw-123" not in repr(cfg)
    assert o.st == "31"
    assert o.timezone == "Asia/Shanghai"
    assert o.by_metric == {
        "so2": ("a21026", False), "so2_corrected": ("a21026", True),
        "nox": ("a21002", False),
    }  # fmt: skip


def test_an_error_names_the_file_line_and_field(tmp_path: Path) -> None:
    (tmp_path / "pw.txt").write_text("pw-123\n")
    (tmp_path / "upstream.yaml").write_text(
        GOOD_YAML.replace("metric: nox", "metric: noxx")
    )
    with pytest.raises(ConfigError) as err:
        load(tmp_path / "upstream.yaml")
    text = str(err.value)
    assert "upstream.yaml:18" in text
    assert "noxx" in text
    assert "did you mean 'nox'" in text


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


_DELETE = object()
U = ("upstreams", 0)
OUT = (*U, "outlets", 0)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ((*U, "version"), "2005", "2017 or -2025"),
        ((*U, "port"), 0, "upstreams[0].port: Input should be greater"),
        ((*U, "overtime_s"), 0, "upstreams[0].overtime_s: Input should be greater"),
        ((*U, "ca_file"), "ca.pem", "ca_file needs tls"),
        ((*OUT, "mn"), "8888;1", "may not contain"),
        ((*OUT, "st"), "3", "two digits"),
        ((*OUT, "timezone"), "Mars/Base", "unknown time zone"),
        ((*OUT, "series"), ["realtime", "realtime"], "listed twice"),
        ((*OUT, "series"), ["weekly"], "outlets[0].series[0]: unknown value 'weekly'"),
        ((*OUT, "devices"), [], "outlets[0].devices: List should have at least 1"),
        ((*OUT, "pollutants"), {"a21026": {}}, "give metric, corrected or both"),
        ((*OUT, "pollutants"), {"a-1": {"metric": "so2"}}, "letters and digits"),
        ((*OUT, "pollutants"),
         {"a21026": {"metric": "so2"}, "a99999": {"metric": "so2"}},
         "so2 is mapped by a21026 too"),
        ((*OUT, "password_env"), "UPSTREAM_PW_UNSET", "UPSTREAM_PW_UNSET is not set"),
        ((*OUT, "password_env"), _DELETE, "give password_env or password_file"),
        ((*OUT, "colour"), "red", "outlets[0].colour: unknown field"),
    ],
)  # fmt: skip
def test_each_mistake_is_named(
    path: tuple[Any, ...], value: Any, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPSTREAM_PW", "pw")
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse(_set(good(), path, value))


def test_an_mn_or_a_device_is_used_once_per_upstream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UPSTREAM_PW", "pw")
    data = good()
    second = copy.deepcopy(data["upstreams"][0]["outlets"][0])
    second["outlet"] = "stack-2"
    second["devices"] = ["cems-2"]
    data["upstreams"][0]["outlets"].append(second)
    with pytest.raises(ConfigError, match="MN 88888880000001 is used"):
        parse(data)
    second["mn"] = "88888880000002"
    second["devices"] = ["cems-1"]
    with pytest.raises(ConfigError, match="cems-1 is in outlet stack-1 too"):
        parse(data)
    second["devices"] = ["cems-2"]
    assert len(parse(data).upstreams[0].outlets) == 2
    data["upstreams"].append(copy.deepcopy(data["upstreams"][0]))
    with pytest.raises(ConfigError, match="'province' is named twice"):
        parse(data)
