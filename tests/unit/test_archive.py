"""The archive's pure parts: manifests (canonical bytes, signatures, the offline
check), segments (deterministic, self-contained, statistics), local days and
their due time, the row comparison, atomic files, the settings."""

from __future__ import annotations

import random
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from smartpark.errors import ConfigError
from smartpark.settings import load_settings
from storage.archive.archive import compare_rows, day_range, last_due_day
from storage.archive.files import ArchiveFiles, ArchiveStorageError
from storage.archive.manifest import (
    Manifest,
    ManifestError,
    check_signature,
    parse,
    sign,
)
from storage.archive.segment import (
    ArchivedRow,
    column_stats,
    decode,
    encode,
    rows_of,
    table_of,
)
from storage.signing import SignatureError, Signer, Verifier

KEY = Ed25519PrivateKey.generate()
T0 = datetime(2026, 3, 1, 16, 0, tzinfo=UTC)

OFFLINE = (
    "import base64,json,sys; m=json.load(open(sys.argv[1]));"
    ' open("m.sig","wb").write(base64.urlsafe_b64decode(m.pop("signature")));'
    ' open("m.bin","wb").write(json.dumps(m,sort_keys=True,separators=(",",":"),'
    "ensure_ascii=True).encode())"
)


def row(i: int, device: str = "m1", value: float = 1.5) -> ArchivedRow:
    return ArchivedRow(T0 + timedelta(minutes=i), "p1", "e1", device, "active_power",
                       "realtime", "value", "kW", value, "N", i, None)  # fmt: skip


def manifest(**changes: object) -> Manifest:
    m = Manifest(
        enterprise="e1", park="p1", day="2026-03-02", time_zone="Asia/Shanghai",
        start="2026-03-01T16:00:00+00:00", end="2026-03-02T16:00:00+00:00",
        kind="seal", position=1, row_count=2, columns={"value": {"min": "1.5",
        "max": "2.0", "nulls": 0}}, segment_path="e1/2026-03-02/x.parquet",
        segment_sha256="ab" * 32, segment_bytes=100,
        marks=[{"id": 1, "reason": "calibración"}], previous=None,
        platform_version="0.1.0", created_at="2026-03-05T12:00:00+00:00", key_id="",
    )  # fmt: skip
    return replace(m, **changes)  # type: ignore[arg-type]


def test_a_signed_manifest_round_trips_and_verifies() -> None:
    signed = sign(manifest(), Signer(KEY))
    assert signed.key_id == Signer(KEY).key_id
    again = parse(signed.file_bytes())
    assert again == signed
    check_signature(again, Verifier([KEY.public_key()]))
    assert b" " not in signed.file_bytes().replace(b"2026-03", b"")
    assert b"\\u00f3" in signed.file_bytes()  # non-ASCII escaped: canonical


@pytest.mark.parametrize(
    "change",
    [{"row_count": 3}, {"previous": "00" * 32}, {"segment_sha256": "cd" * 32},
     {"marks": []}, {"position": 2}],
)  # fmt: skip
def test_any_changed_field_breaks_the_signature(change: dict[str, object]) -> None:
    signed = sign(manifest(), Signer(KEY))
    forged = replace(signed, **change)  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="does not match"):
        check_signature(forged, Verifier([KEY.public_key()]))


def test_a_manifest_signed_by_an_unknown_key_is_named() -> None:
    other = Signer(Ed25519PrivateKey.generate())
    signed = sign(manifest(), other)
    with pytest.raises(SignatureError, match=f"key {other.key_id}, which is not"):
        check_signature(signed, Verifier([KEY.public_key()]))
    # after a rotation the old public key keeps it verifiable
    check_signature(signed, Verifier([KEY.public_key(), other.public]))


@pytest.mark.parametrize(
    ("data", "why"),
    [(b"{", "not JSON"), (b"[]", "not a JSON object"),
     (b'{"format": "x"}', "format 'x'"),
     (b'{"format": "smartpark-archive-manifest/1", "z": 1}', "fields differ")],
)  # fmt: skip
def test_an_unreadable_manifest_says_why(data: bytes, why: str) -> None:
    with pytest.raises(ManifestError, match=why):
        parse(data)


def test_openssl_verifies_a_manifest_offline(tmp_path: Path) -> None:
    """The recipe of storage.archive.manifest's docstring, as a third party runs
    it: Python's json to take the signature out, OpenSSL to check it."""
    openssl = shutil.which("openssl")
    assert openssl is not None
    signer = Signer(KEY)
    (tmp_path / "public.pem").write_text(signer.public_pem())
    path = tmp_path / "MANIFEST.json"
    cmd = [openssl, "pkeyutl", "-verify", "-pubin", "-inkey", "public.pem",
           "-rawin", "-in", "m.bin", "-sigfile", "m.sig"]  # fmt: skip
    for forged, expected in ((False, 0), (True, 1)):
        m = sign(manifest(), signer)
        if forged:
            m = replace(m, row_count=1)
        path.write_bytes(m.file_bytes())
        subprocess.run(["python3", "-c", OFFLINE, path.name], cwd=tmp_path, check=True)
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, check=False)
        assert (done.returncode != 0) == bool(expected), done.stdout + done.stderr


def test_a_segment_is_deterministic_sorted_and_self_contained() -> None:
    rows = [row(i, d, 100 + i / 10) for i in range(50) for d in ("m2", "m1")]
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    data = encode(table_of(rows))
    assert data == encode(table_of(shuffled))
    back = rows_of(decode(data))
    assert back == sorted(rows, key=lambda r: (r.device, r.time))
    assert {r.park for r in back} == {"p1"}
    assert {r.unit for r in back} == {"kW"}


def test_segment_statistics_are_text_with_nulls_counted() -> None:
    rows = [row(0, value=2.5), row(1, value=-0.1)._replace(reset="rollover")]
    stats = column_stats(table_of(rows))
    assert stats["value"] == {"min": "-0.1", "max": "2.5", "nulls": 0}
    assert stats["reset"] == {"min": "rollover", "max": "rollover", "nulls": 1}
    assert stats["time"]["min"] == T0.isoformat()
    empty = column_stats(table_of([]))
    assert empty["value"] == {"min": None, "max": None, "nulls": 0}


def test_bytes_that_are_not_a_segment_are_refused() -> None:
    with pytest.raises(ValueError, match="not a readable Parquet segment"):
        decode(b"PAR1 nonsense")


@pytest.mark.parametrize(
    ("zone", "day", "hours"),
    [("Asia/Shanghai", date(2026, 3, 2), 24),
     ("Europe/Berlin", date(2026, 3, 29), 23),  # spring forward
     ("Europe/Berlin", date(2026, 10, 25), 25),  # fall back
     ("UTC", date(2026, 3, 2), 24)],
)  # fmt: skip
def test_a_local_day_is_its_utc_range(zone: str, day: date, hours: int) -> None:
    start, end = day_range(day, ZoneInfo(zone))
    assert end - start == timedelta(hours=hours)
    assert start.astimezone(ZoneInfo(zone)).hour == 0


@pytest.mark.parametrize(
    ("now", "delay", "due"),
    [(datetime(2026, 3, 5, 12, tzinfo=UTC), timedelta(hours=2), date(2026, 3, 4)),
     # local 03-05 01:00: 03-04 ended an hour ago, not two
     (datetime(2026, 3, 4, 17, tzinfo=UTC), timedelta(hours=2), date(2026, 3, 3)),
     (datetime(2026, 3, 4, 18, tzinfo=UTC), timedelta(hours=2), date(2026, 3, 4)),
     (datetime(2026, 3, 5, 12, tzinfo=UTC), timedelta(hours=48), date(2026, 3, 2))],
)  # fmt: skip
def test_a_day_is_due_once_its_end_is_the_delay_past(
    now: datetime, delay: timedelta, due: date
) -> None:
    assert last_due_day(now, ZoneInfo("Asia/Shanghai"), delay) == due


def test_the_row_comparison_names_each_difference_by_key() -> None:
    archived = [row(0), row(1), row(2)]
    hot = [row(0), row(1)._replace(quality="M"), row(3)]
    found = [(f.kind, f.detail) for f in compare_rows("e1", T0.date(), archived, hot)]
    key = "enterprise=e1 device=m1 metric=active_power data_type=realtime stat=value"
    assert found == [
        ("changed", f"{key} time={row(1).time.isoformat()}: quality 'N' -> 'M'"),
        ("deleted", f"{key} time={row(2).time.isoformat()}"),
        ("inserted", f"{key} time={row(3).time.isoformat()}"),
    ]
    assert compare_rows("e1", T0.date(), archived, list(reversed(archived))) == []
    dup = compare_rows("e1", T0.date(), [row(0), row(0)], [row(0)])
    assert [f.kind for f in dup] == ["duplicate"]


def test_files_are_written_whole_and_a_segment_never_rewritten(tmp_path: Path) -> None:
    files = ArchiveFiles(str(tmp_path / "a"))
    files.put_segment("e1/2026-03-02/1.parquet", b"one")
    files.put_segment("e1/2026-03-02/1.parquet", b"one")  # a retried seal
    with pytest.raises(ArchiveStorageError, match="never rewritten"):
        files.put_segment("e1/2026-03-02/1.parquet", b"two")
    files.put_manifest("e1/2026-03-02/1.manifest.json", b"{}")
    assert files.list("e1") == ["e1/2026-03-02/1.manifest.json",
                                "e1/2026-03-02/1.parquet"]  # fmt: skip
    assert files.get("e1/2026-03-02/1.parquet") == b"one"
    assert files.list("e2") == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [("30m", timedelta(minutes=30)), ("6h", timedelta(hours=6)),
     ("2d", timedelta(days=2)), ("3600", timedelta(hours=1))],
)  # fmt: skip
def test_the_seal_delay_reads_a_duration(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: timedelta
) -> None:
    monkeypatch.setenv("SMARTPARK_ARCHIVE__SEAL_DELAY", value)
    assert load_settings().archive.seal_delay == expected


def test_a_bad_seal_delay_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTPARK_ARCHIVE__SEAL_DELAY", "soon")
    with pytest.raises(ConfigError, match="SMARTPARK_ARCHIVE__SEAL_DELAY"):
        load_settings()
