"""The platform's Ed25519 signature (storage.signing): what it signs, a third party
checks offline with OpenSSL; a rotation keeps old signatures verifiable."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from smartpark.errors import ConfigError
from smartpark.settings import SigningSettings
from storage.signing import (
    SignatureError,
    generate_private_key,
    parse_private_key,
    signer_from_settings,
    verifier_from_settings,
)
from storage.signing_cli import main as signing_main


def _settings(private: str | None, public: list[str] | None = None) -> SigningSettings:
    return SigningSettings(
        private_key=None if private is None else SecretStr(private),
        public_keys=public or [],
    )


def test_a_signature_verifies_and_a_changed_byte_does_not() -> None:
    cfg = _settings(generate_private_key())
    signer, verifier = signer_from_settings(cfg), verifier_from_settings(cfg)
    sig = signer.sign(b"report")
    assert len(sig) == 64
    verifier.verify(signer.key_id, b"report", sig)
    with pytest.raises(SignatureError, match="does not match"):
        verifier.verify(signer.key_id, b"reporT", sig)


def test_after_a_rotation_the_old_key_still_verifies_and_an_unknown_key_is_named() -> (
    None
):
    old = signer_from_settings(_settings(generate_private_key()))
    new_cfg = _settings(generate_private_key(), [old.public_pem()])
    new = signer_from_settings(new_cfg)
    verifier = verifier_from_settings(new_cfg)
    verifier.verify(old.key_id, b"x", old.sign(b"x"))
    verifier.verify(new.key_id, b"x", new.sign(b"x"))
    assert set(verifier.key_ids) == {old.key_id, new.key_id}
    with pytest.raises(SignatureError, match="not known"):
        verifier.verify("0123456789abcdef", b"x", new.sign(b"x"))


def test_the_seed_form_and_the_pem_form_are_the_same_key() -> None:
    pem = generate_private_key()
    key = parse_private_key(pem)
    from cryptography.hazmat.primitives import serialization

    seed = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    text = base64.urlsafe_b64encode(seed).decode()
    assert (
        signer_from_settings(_settings(text)).key_id
        == signer_from_settings(_settings(pem)).key_id
    )


@pytest.mark.parametrize("bad", ["", "short", "-----BEGIN PRIVATE KEY-----\nxx\n"])
def test_a_missing_or_malformed_key_names_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError, match="SMARTPARK_SIGNING__PRIVATE_KEY"):
        signer_from_settings(_settings(bad))


def test_openssl_verifies_the_raw_signature_offline(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is the documented third-party verifier"
    signer = signer_from_settings(_settings(generate_private_key()))
    data, sig, pub = tmp_path / "r.csv", tmp_path / "r.csv.sig", tmp_path / "pub.pem"
    data.write_bytes(b"a,b\n1,2\n")
    sig.write_bytes(signer.sign(data.read_bytes()))
    pub.write_text(signer.public_pem())
    cmd = [openssl, "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin"]
    cmd += ["-in", str(data), "-sigfile", str(sig)]
    ok = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    data.write_bytes(b"a,b\n1,3\n")
    bad = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert bad.returncode != 0


def test_the_cli_prints_a_key_and_its_public_half(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert signing_main(["keygen"]) == 0
    pem = capsys.readouterr().out
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    monkeypatch.setenv("SMARTPARK_SIGNING__PRIVATE_KEY", pem)
    assert signing_main(["public"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("-----BEGIN PUBLIC KEY-----")
    assert "key id" in out.err
    monkeypatch.delenv("SMARTPARK_SIGNING__PRIVATE_KEY")
    assert signing_main(["public"]) == 2
