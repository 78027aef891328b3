"""Standard Webhooks signatures (engine/signing.py), checked against the reference library both ways."""

from __future__ import annotations

import time
import warnings
from datetime import UTC, datetime

import pytest

from engine.signing import SignatureError, Verifier, generate_secret, parse_secret, sign, signed_headers

SECRET = generate_secret()
BODY = b'{"type":"appointment.booked","id":"a-1"}'


def reference(secret: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from standardwebhooks import Webhook
    return Webhook(secret)


def test_our_signatures_verify_with_the_reference_library() -> None:
    headers = signed_headers([parse_secret(SECRET)], BODY)
    assert reference(SECRET).verify(BODY, headers) == {"type": "appointment.booked", "id": "a-1"}


def test_the_reference_librarys_signatures_verify_here() -> None:
    now = int(time.time())
    signature = reference(SECRET).sign("msg_1", datetime.fromtimestamp(now, UTC), BODY.decode())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": signature}
    verifier = Verifier([parse_secret(SECRET)])
    verifier.verify(verifier.check_headers(headers), BODY)
    assert signature == sign(parse_secret(SECRET), "msg_1", now, BODY)


def test_rejections_name_what_failed_never_a_value() -> None:
    key = parse_secret(SECRET)
    verifier = Verifier([key])
    now = 1_800_000_000
    good = signed_headers([key], BODY, msg_id="msg_x", timestamp=now)
    checked = verifier.check_headers(good, now=now + 300)  # the edge of the tolerance holds
    verifier.verify(checked, BODY)
    cases = {
        "missing webhook-signature": ({k: v for k, v in good.items() if k != "webhook-signature"}, now),
        "webhook-timestamp is not integer seconds": ({**good, "webhook-timestamp": "1e9"}, now),
        "webhook-timestamp is older than 300 s": (good, now + 301),
        "webhook-signature holds no v1 signature": ({**good, "webhook-signature": "v1a,abcd v2,Zm9v"}, now),
    }
    for reason, (headers, at) in cases.items():
        with pytest.raises(SignatureError) as caught:
            verifier.check_headers(headers, now=at)
        assert caught.value.reason == reason
    with pytest.raises(SignatureError, match="in the future"):
        verifier.check_headers(good, now=now - 301)
    with pytest.raises(SignatureError, match="no signature matches") as caught:
        verifier.verify(checked, BODY + b"\n")
    assert "appointment" not in caught.value.reason


def test_any_of_several_secrets_and_several_signatures() -> None:
    old, new = parse_secret(generate_secret()), parse_secret(generate_secret())
    headers = signed_headers([old, new], BODY, timestamp=1_800_000_000)
    assert len(headers["webhook-signature"].split()) == 2
    for keys in ([old], [new], [parse_secret(generate_secret()), new]):
        v = Verifier(keys)
        v.verify(v.check_headers(headers, now=1_800_000_000), BODY)
    stranger = Verifier([parse_secret(generate_secret())])
    with pytest.raises(SignatureError):
        stranger.verify(stranger.check_headers(headers, now=1_800_000_000), BODY)


def test_secrets_are_whsec_base64_of_enough_bytes() -> None:
    assert len(parse_secret(generate_secret())) == 32
    for bad in ("whsec_not base64!", "whsec_" + "QUJD", ""):
        with pytest.raises(ValueError, match="webhook secret"):
            parse_secret(bad)
