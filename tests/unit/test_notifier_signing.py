"""Standard Webhooks signing and verification (notifier.signing)."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from notifier.signing import (
    WebhookVerificationError,
    decode_secret,
    generate_secret,
    headers,
    sign,
    verify,
)

# Golden vector of the reference implementation: standard-webhooks/standard-webhooks,
# libraries/python/tests/test_webhooks.py, test_sign_function (the same secret, id
# and payload appear in the other libraries' tests).
REF_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
REF_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
REF_TS = 1614265330
REF_BODY = b'{"test": 2432232314}'
REF_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
# Its test_invalid_signature_raises_error: the same signature, last byte changed.
REF_BAD_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="

OLD = generate_secret()
NEW = generate_secret()
NOW = 1_700_000_000
BODY = b'{"type":"alert.opened","data":{"alert_id":"a1"}}'


def ref_headers(signature: str = REF_SIGNATURE) -> dict[str, str]:
    return {
        "webhook-id": REF_ID,
        "webhook-timestamp": str(REF_TS),
        "webhook-signature": signature,
    }


def test_sign_matches_reference_vector() -> None:
    assert sign(REF_SECRET, REF_ID, REF_TS, REF_BODY) == REF_SIGNATURE


@pytest.mark.parametrize("secret", [REF_SECRET, REF_SECRET.removeprefix("whsec_")])
def test_verify_accepts_reference_vector(secret: str) -> None:
    verify(secret, ref_headers(), REF_BODY, now_s=REF_TS)


def test_verify_rejects_reference_bad_signature() -> None:
    with pytest.raises(WebhookVerificationError, match=r"^no matching v1 signature$"):
        verify(REF_SECRET, ref_headers(REF_BAD_SIGNATURE), REF_BODY, now_s=REF_TS)


def test_generated_secret_shape() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(decode_secret(secret)) == 32
    assert generate_secret() != secret
    assert len(decode_secret(generate_secret(24))) == 24


@pytest.mark.parametrize("n_bytes", [0, 23, 65])
def test_generate_secret_refuses_bad_sizes(n_bytes: int) -> None:
    with pytest.raises(ValueError, match=r"n_bytes must be 24\.\.64"):
        generate_secret(n_bytes)


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("whsec_not base64!", "not base64"),
        ("whsec_", "decodes to 0 bytes"),
        ("whsec_" + base64.b64encode(b"short").decode(), "decodes to 5 bytes"),
        ("whsec_" + base64.b64encode(bytes(65)).decode(), "decodes to 65 bytes"),
    ],
)
def test_bad_secret_is_a_value_error(secret: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sign(secret, "msg_1", NOW, BODY)
    with pytest.raises(ValueError, match=message):
        verify(secret, ref_headers(), REF_BODY, now_s=REF_TS)


def test_unpadded_secret_decodes() -> None:
    key = bytes(range(25))  # 25 bytes: base64 ends with "=="
    padded = base64.b64encode(key).decode()
    assert padded.endswith("==")
    assert decode_secret("whsec_" + padded.rstrip("=")) == key


@pytest.mark.parametrize("msg_id", ["", "msg.1"])
def test_sign_refuses_bad_ids(msg_id: str) -> None:
    with pytest.raises(ValueError, match="webhook id must be non-empty without"):
        sign(NEW, msg_id, NOW, BODY)


def test_headers_round_trip() -> None:
    sent = headers([NEW], "msg_1", NOW, BODY)
    assert sent["webhook-id"] == "msg_1"
    assert sent["webhook-timestamp"] == str(NOW)
    assert sent["webhook-signature"] == sign(NEW, "msg_1", NOW, BODY)
    verify(NEW, sent, BODY, now_s=NOW)


def test_header_names_are_case_insensitive() -> None:
    sent = {k.title(): v for k, v in headers([NEW], "msg_1", NOW, BODY).items()}
    assert "Webhook-Signature" in sent
    verify(NEW, sent, BODY, now_s=NOW)


@pytest.mark.parametrize("verifier", [OLD, NEW])
def test_rotation_either_secret_verifies(verifier: str) -> None:
    sent = headers([NEW, OLD], "msg_1", NOW, BODY)
    assert sent["webhook-signature"] == " ".join(
        [sign(NEW, "msg_1", NOW, BODY), sign(OLD, "msg_1", NOW, BODY)]
    )
    verify(verifier, sent, BODY, now_s=NOW)


@pytest.mark.parametrize("secrets", [[], "whsec_abc"])
def test_headers_needs_a_list_of_secrets(secrets: list[str] | str) -> None:
    with pytest.raises(ValueError, match="non-empty sequence"):
        headers(secrets, "msg_1", NOW, BODY)


def test_wrong_secret_fails() -> None:
    sent = headers([OLD], "msg_1", NOW, BODY)
    with pytest.raises(WebhookVerificationError, match=r"^no matching v1 signature$"):
        verify(NEW, sent, BODY, now_s=NOW)


Tamper = Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda h, b: (h, b + b" "), id="body-trailing-space"),
        pytest.param(lambda h, b: (h, b.replace(b"a1", b"a2")), id="body-changed"),
        pytest.param(lambda h, b: ({**h, "webhook-id": "msg_2"}, b), id="id-changed"),
        pytest.param(
            lambda h, b: ({**h, "webhook-timestamp": str(NOW + 1)}, b), id="ts-changed"
        ),
    ],
)
def test_tampering_fails(tamper: Tamper) -> None:
    sent, body = tamper(headers([NEW], "msg_1", NOW, BODY), BODY)
    with pytest.raises(WebhookVerificationError, match=r"^no matching v1 signature$"):
        verify(NEW, sent, body, now_s=NOW)


@pytest.mark.parametrize(
    "missing", ["webhook-id", "webhook-timestamp", "webhook-signature"]
)
@pytest.mark.parametrize("how", ["absent", "empty"])
def test_missing_header(missing: str, how: str) -> None:
    sent = headers([NEW], "msg_1", NOW, BODY)
    if how == "absent":
        del sent[missing]
    else:
        sent[missing] = " "
    with pytest.raises(WebhookVerificationError, match=f"^missing header {missing}$"):
        verify(NEW, sent, BODY, now_s=NOW)


@pytest.mark.parametrize(
    "stamp", ["hello", "1.5", "-5", "+17", "\uff11\uff12\uff13", "9" * 13]
)
def test_bad_timestamp(stamp: str) -> None:
    sent = {**headers([NEW], "msg_1", NOW, BODY), "webhook-timestamp": stamp}
    with pytest.raises(
        WebhookVerificationError, match=r"^bad header webhook-timestamp"
    ):
        verify(NEW, sent, BODY, now_s=NOW)


@pytest.mark.parametrize(
    ("sent_at", "message"),
    [
        (
            NOW - 301,
            "^webhook-timestamp too old: 301 s before now \\(tolerance 300 s\\)$",
        ),
        (
            NOW + 301,
            "^webhook-timestamp too new: 301 s after now \\(tolerance 300 s\\)$",
        ),
    ],
)
def test_timestamp_outside_tolerance(sent_at: int, message: str) -> None:
    sent = headers([NEW], "msg_1", sent_at, BODY)
    with pytest.raises(WebhookVerificationError, match=message):
        verify(NEW, sent, BODY, now_s=NOW)


@pytest.mark.parametrize("sent_at", [NOW - 300, NOW + 300])
def test_timestamp_at_tolerance_edge_verifies(sent_at: int) -> None:
    verify(NEW, headers([NEW], "msg_1", sent_at, BODY), BODY, now_s=NOW)


def test_custom_tolerance() -> None:
    sent = headers([NEW], "msg_1", NOW - 60, BODY)
    verify(NEW, sent, BODY, now_s=NOW, tolerance_s=60)
    with pytest.raises(WebhookVerificationError, match="too old: 61 s"):
        verify(NEW, sent, BODY, now_s=NOW + 1, tolerance_s=60)


def test_default_clock_is_the_system_clock() -> None:
    # The reference vector is from 2021: far outside five minutes of today.
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(REF_SECRET, ref_headers(), REF_BODY)


@pytest.mark.parametrize(
    "extra",
    [
        "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXw==",
        "v1,not-base64!",
        "garbage",
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
    ],
)
def test_other_entries_are_skipped_until_one_matches(extra: str) -> None:
    both = f"{extra}  {REF_SIGNATURE}"
    verify(REF_SECRET, ref_headers(both), REF_BODY, now_s=REF_TS)
    with pytest.raises(WebhookVerificationError, match="no matching v1 signature"):
        verify(REF_SECRET, ref_headers(extra), REF_BODY, now_s=REF_TS)


def test_signature_for_other_version_does_not_count() -> None:
    # The right MAC under a version label other than v1 must not verify.
    relabelled = "v2," + REF_SIGNATURE.removeprefix("v1,")
    with pytest.raises(WebhookVerificationError, match="no matching v1 signature"):
        verify(REF_SECRET, ref_headers(relabelled), REF_BODY, now_s=REF_TS)
