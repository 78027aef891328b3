"""Standard Webhooks signatures (HMAC-SHA256), for webhooks received and sent.

The scheme (standardwebhooks.com): the sender signs ``"{webhook-id}.{webhook-timestamp}.{body}"`` (the raw
body bytes) with HMAC-SHA256 under a shared secret and sends three headers:

- ``webhook-id``: the message's unique id (the same on every retry of one message);
- ``webhook-timestamp``: integer seconds since the epoch, when it was signed;
- ``webhook-signature``: space-separated ``v1,<base64 signature>`` entries (several during a key
  rotation: one per secret; any one that verifies is enough).

A secret is written ``whsec_<base64 bytes>``; one without that prefix is taken as base64 too.

Contract of :class:`Verifier`:

- :meth:`Verifier.check_headers` runs *before the body is read*: the three headers present and well
  formed, the timestamp within ``tolerance_s`` of now in either direction (an old capture, or a clock far
  ahead). It raises :class:`SignatureError`, whose ``reason`` names what failed and never quotes a value;
- :meth:`Verifier.verify` runs on the raw bytes, before anything parses them: every ``v1`` signature is
  compared with every secret's, in constant time (``hmac.compare_digest``); entries of other versions are
  ignored.

Replayed ids are the receiver's business (``engine.sources.http_idempotency``): a verified id seen
before is answered with its first answer and creates nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine.errors import InterlinkError

__all__ = [
    "ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "SignatureError",
    "Signed",
    "Verifier",
    "generate_secret",
    "new_message_id",
    "parse_secret",
    "sign",
    "signed_headers",
]

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
_MAX_ID_CHARS = 256
_MAX_SIGNATURES = 16  # a rotation has two or three; more is a client bug or an attempt to make us work


class SignatureError(InterlinkError):
    """A request's signature headers or signature do not hold. ``reason`` is PHI-free and quotes nothing."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def parse_secret(text: str) -> bytes:
    """The key bytes of a ``whsec_…`` secret (or bare base64); ValueError (naming nothing) when invalid."""
    body = text.strip()
    body = body.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ followed by base64") from None
    if len(key) < 16:
        raise ValueError("a webhook secret must hold at least 16 bytes (24 recommended, 32 generated)")
    return key


def generate_secret() -> str:
    """A new secret of 32 random bytes, as Standard Webhooks writes it (``whsec_…``)."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode("ascii")


def new_message_id() -> str:
    """A fresh ``webhook-id``."""
    return "msg_" + os.urandom(16).hex()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one message."""
    mac = hmac.new(key, b"%s.%d.%s" % (msg_id.encode(), timestamp, body), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def signed_headers(
    keys: Sequence[bytes], body: bytes, *, msg_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``, signed with every key (several during a rotation)."""
    msg_id = msg_id or new_message_id()
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: " ".join(sign(k, msg_id, ts, body) for k in keys),
    }


@dataclass(frozen=True, slots=True)
class Signed:
    """The signature headers of one request, checked for form and time (not yet against the body)."""

    msg_id: str
    timestamp: int
    signatures: tuple[bytes, ...]  # decoded v1 signatures


class Verifier:
    """Verifies Standard Webhooks signatures against one or more secrets (key rotation)."""

    def __init__(self, keys: Sequence[bytes], *, tolerance_s: int = 300) -> None:
        if not keys:
            raise ValueError("a verifier needs at least one secret")
        self._keys = tuple(keys)
        self.tolerance_s = tolerance_s

    def check_headers(self, headers: Mapping[str, str], *, now: float | None = None) -> Signed:
        """Form and freshness of the signature headers; raises :class:`SignatureError`."""
        msg_id = headers.get(ID_HEADER)
        stamp = headers.get(TIMESTAMP_HEADER)
        header = headers.get(SIGNATURE_HEADER)
        if not msg_id or not stamp or not header:
            missing = [
                h for h, v in ((ID_HEADER, msg_id), (TIMESTAMP_HEADER, stamp), (SIGNATURE_HEADER, header)) if not v
            ]
            raise SignatureError(f"missing {', '.join(missing)}")
        if len(msg_id) > _MAX_ID_CHARS or not msg_id.isprintable():
            raise SignatureError(f"{ID_HEADER} is not a printable id of at most {_MAX_ID_CHARS} characters")
        if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
            raise SignatureError(f"{TIMESTAMP_HEADER} is not integer seconds")
        timestamp = int(stamp)
        current = time.time() if now is None else now
        if timestamp < current - self.tolerance_s:
            raise SignatureError(f"{TIMESTAMP_HEADER} is older than {self.tolerance_s} s")
        if timestamp > current + self.tolerance_s:
            raise SignatureError(f"{TIMESTAMP_HEADER} is more than {self.tolerance_s} s in the future")
        signatures: list[bytes] = []
        for entry in header.split(" ")[: _MAX_SIGNATURES + 1]:
            version, _, value = entry.partition(",")
            if version != "v1" or not value:
                continue  # another scheme (v1a: asymmetric) or an empty entry: not ours to check
            try:
                signatures.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                continue
        if not signatures:
            raise SignatureError(f"{SIGNATURE_HEADER} holds no v1 signature")
        if len(signatures) > _MAX_SIGNATURES:
            raise SignatureError(f"{SIGNATURE_HEADER} holds more than {_MAX_SIGNATURES} signatures")
        return Signed(msg_id, timestamp, tuple(signatures))

    def verify(self, signed: Signed, body: bytes) -> None:
        """Raise :class:`SignatureError` unless one signature is one secret's HMAC of the raw ``body``."""
        content = b"%s.%d.%s" % (signed.msg_id.encode(), signed.timestamp, body)
        ok = False
        for key in self._keys:
            expected = hmac.new(key, content, hashlib.sha256).digest()
            for candidate in signed.signatures:
                # every pair is compared (no early exit): the time taken does not say which key matched
                ok |= hmac.compare_digest(expected, candidate)
        if not ok:
            raise SignatureError("no signature matches the body under the channel's secrets")
