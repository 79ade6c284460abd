"""``smartpark hj212 decode | encode`` through main(argv)."""

from __future__ import annotations

import io
import json

import pytest

from edge_agent.hj212 import crc16
from edge_agent.hj212.cli import main

GOLDEN = (
    "##0109ST=32;CN=2011;PW=123456;MN=NJGDKYYC202101q0001w0001;CP=&&"
    "DataTime=20210305003817000;ele01-Rtd=1;ele02-Rtd=0&&8c41"
)
GOLDEN_JSON = {
    "ST": "32",
    "CN": "2011",
    "PW": "123456",
    "MN": "NJGDKYYC202101q0001w0001",
    "DataTime": "20210305003817000",
    "pollutants": {"ele01": {"Rtd": "1"}, "ele02": {"Rtd": "0"}},
}


def test_decode_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", GOLDEN]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == GOLDEN_JSON
    assert err == ""


def test_decode_stdin_reports_bad_frames(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = GOLDEN.replace("8c41", "8c42")
    lines = f"{GOLDEN}\r\n{bad}\n\n{GOLDEN}\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert main(["decode"]) == 1
    out, err = capsys.readouterr()
    assert [json.loads(line) for line in out.splitlines()] == [GOLDEN_JSON] * 2
    assert err == "frame 2: frame.crc: expected 8c41, got 8c42\n"


def test_decode_lenient_prints_tolerated_issues(
    capsys: pytest.CaptureFixture[str],
) -> None:
    segment = "ST=32;CN=2011;X=1;MN=M;CP=&&&&"
    frame = f"##{len(segment):04d}{segment}{crc16(segment.encode()):04X}"
    assert main(["decode", frame]) == 1
    assert "frame 1: data.X: unknown field" in capsys.readouterr().err
    assert main(["decode", "--lenient", frame]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["extra_header"] == [["X", "1"]]
    assert err == "frame 1: tolerated: data.X: unknown field\n"


def test_encode_argument_roundtrip(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["encode", json.dumps(GOLDEN_JSON)]) == 0
    assert capsys.readouterr().out == GOLDEN + "\n"


def test_encode_stdin_accepts_json_numbers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    obj = '{"ST": "31", "CN": "2051", "MN": "M", "Flag": 4,'
    obj += ' "pollutants": {"a21026": {"Avg": 2.50, "Max": 4, "Flag": "N"}}}'
    monkeypatch.setattr("sys.stdin", io.StringIO(obj))
    assert main(["encode"]) == 0
    frame = capsys.readouterr().out.strip()
    assert "a21026-Avg=2.50,a21026-Max=4,a21026-Flag=N" in frame
    assert main(["decode", frame]) == 0
    assert json.loads(capsys.readouterr().out)["pollutants"]["a21026"]["Avg"] == "2.50"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "not JSON"),
        ("[]", "json: expected a JSON object"),
        ('{"ST": "32", "CN": "2011"}', "json.MN: missing"),
        ('{"ST": "32", "CN": "2011", "MN": "M", "Zz": 1}', "json.Zz: unknown field"),
        ('{"ST": "32", "CN": "2011", "MN": "M", "Flag": true}', "json.Flag"),
        (
            '{"ST": "32", "CN": "2011", "MN": "M", "pollutants": {"a1": {"Rtd": "x"}}}',
            "json.pollutants.a1.Rtd: bad number",
        ),
        (
            '{"ST": "32", "CN": "2011", "MN": "M", "pollutants": {"a1": {"Rtd": NaN}}}',
            "json.pollutants.a1.Rtd",
        ),
        (
            '{"ST": "32", "CN": "2011", "MN": "M", "pollutants": {"a1": {"Foo": "1"}}}',
            "json.pollutants.a1.Foo: unknown field",
        ),
        ('{"ST": "32", "CN": "2011", "MN": "M", "DataTime": "2021"}', "cp.DataTime"),
        ('{"ST": "32", "CN": "2011", "MN": "M", "extra_cp": [["a"]]}', "json.extra_cp"),
    ],
)
def test_encode_errors(
    text: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["encode", text]) == 1
    assert reason in capsys.readouterr().err


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0
    assert "decode" in capsys.readouterr().out
