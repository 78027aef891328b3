"""Authentication of HTTP sources, per channel, before anything reads a body as data.

Kinds (``auth.type`` in a webhook source):

- ``standard_webhooks``: HMAC-SHA256 signatures (``engine.signing``). The headers are checked (present,
  well formed, timestamp within ``tolerance_s``) before the body is read; the signature is checked on the
  raw bytes, which are read only as far as the size limit allows and parsed only after it holds.
  Secrets: ``secret_env`` (one or more ``whsec_…``, space-separated during a rotation) else
  ``secret_file`` (one per line; relative to the data folder); with ``generate: true`` and neither set,
  the file is created (mode 0600) with a new secret at the first start and its path logged.
- ``bearer``: ``Authorization: Bearer <token>``; only SHA-256 hashes (hex) of the accepted tokens are
  configured (``token_hashes_env`` / ``token_hashes_file``), compared in constant time.
- ``mtls``: a client certificate verified by the server's ``http_tls.ca_file``; optionally limited to
  ``subjects`` (RFC 4514 names) or ``fingerprints_sha256``. Missing: 401; not on the lists: 403.
- ``none``: open (for a listener only reachable from a trusted network).

Secrets never come from the channel file itself: it names the variable or file that holds them.
Rejections are :class:`~engine.api.problems.Problem` (401/403) whose detail names what failed, never a
value.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path
from typing import Annotated, Literal, Protocol

from pydantic import Field, model_validator
from starlette.requests import Request

from engine.api.problems import Problem
from engine.config.model import Model
from engine.errors import ConfigError
from engine.signing import SignatureError, Signed, Verifier, generate_secret, parse_secret

__all__ = [
    "AuthConfig",
    "Authenticator",
    "BearerAuth",
    "MutualTLSAuth",
    "NoAuth",
    "StandardWebhooksAuth",
    "build_authenticator",
]

log = logging.getLogger(__name__)


class StandardWebhooksAuth(Model):
    """Standard Webhooks HMAC-SHA256 signatures (webhook-id, webhook-timestamp, webhook-signature)."""

    type: Literal["standard_webhooks"] = Field(description="Authentication kind.")
    secret_env: str | None = Field(
        None, description="Environment variable holding the secret(s): whsec_… base64, space-separated for a rotation."
    )
    secret_file: Path | None = Field(
        None, description="File holding the secret(s), one per line (relative: under the engine's data folder)."
    )
    generate: bool = Field(
        False,
        description="When secret_env is unset and secret_file does not exist: create secret_file (mode 0600) with "
        "a new secret at the first start, and log where it is.",
    )
    tolerance_s: int = Field(300, ge=1, le=3600, description="Largest age (or lead) of webhook-timestamp accepted.")

    @model_validator(mode="after")
    def _has_source(self) -> StandardWebhooksAuth:
        if self.secret_env is None and self.secret_file is None:
            raise ValueError("name secret_env or secret_file (secrets never go in the channel file)")
        if self.generate and self.secret_file is None:
            raise ValueError("generate needs secret_file: where the generated secret is kept")
        return self


class BearerAuth(Model):
    """Bearer tokens, of which only SHA-256 hashes are configured."""

    type: Literal["bearer"] = Field(description="Authentication kind.")
    token_hashes_env: str | None = Field(
        None, description="Environment variable holding SHA-256 hashes (hex) of the accepted tokens, space-separated."
    )
    token_hashes_file: Path | None = Field(
        None, description="File of SHA-256 hashes (hex) of the accepted tokens, one per line (relative: data folder)."
    )

    @model_validator(mode="after")
    def _has_source(self) -> BearerAuth:
        if self.token_hashes_env is None and self.token_hashes_file is None:
            raise ValueError("name token_hashes_env or token_hashes_file")
        return self


class MutualTLSAuth(Model):
    """Client certificates verified by the HTTP server's ``http_tls.ca_file``."""

    type: Literal["mtls"] = Field(description="Authentication kind.")
    subjects: list[str] = Field(
        default_factory=list,
        description="Certificate subjects allowed (RFC 4514, most specific first: 'CN=scheduler,O=Clinic'); "
        "empty: any certificate the CA signed (unless fingerprints_sha256 is set).",
    )
    fingerprints_sha256: list[str] = Field(
        default_factory=list, description="SHA-256 fingerprints (hex, colons allowed) of the certificates allowed."
    )


class NoAuth(Model):
    """No authentication (only for a listener reachable from a trusted network alone)."""

    type: Literal["none"] = Field(description="Authentication kind.")


AuthConfig = Annotated[
    StandardWebhooksAuth | BearerAuth | MutualTLSAuth | NoAuth,
    Field(discriminator="type"),
]


class Authenticator(Protocol):
    """Checks one request: ``before_body`` from headers and transport, ``after_body`` on the raw bytes."""

    def before_body(self, request: Request) -> Signed | None: ...

    def after_body(self, checked: Signed | None, body: bytes) -> None: ...


class _Open:
    def before_body(self, request: Request) -> Signed | None:
        return None

    def after_body(self, checked: Signed | None, body: bytes) -> None:
        return None


class _Signatures:
    def __init__(self, verifier: Verifier) -> None:
        self._verifier = verifier

    def before_body(self, request: Request) -> Signed | None:
        try:
            return self._verifier.check_headers(request.headers)
        except SignatureError as exc:
            raise Problem(401, "bad-signature", exc.reason) from None

    def after_body(self, checked: Signed | None, body: bytes) -> None:
        assert checked is not None
        try:
            self._verifier.verify(checked, body)
        except SignatureError as exc:
            raise Problem(401, "bad-signature", exc.reason) from None


class _Bearer:
    def __init__(self, hashes: list[bytes]) -> None:
        self._hashes = hashes

    def before_body(self, request: Request) -> Signed | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="interlink"'}
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(401, "no-credentials", "Authorization: Bearer token required", headers=challenge)
        digest = hashlib.sha256(token.strip().encode()).digest()
        ok = False
        for known in self._hashes:
            ok |= hmac.compare_digest(digest, known)
        if not ok:
            raise Problem(401, "bad-token", "the bearer token is not one of the channel's", headers=challenge)
        return None

    def after_body(self, checked: Signed | None, body: bytes) -> None:
        return None


class _MutualTLS:
    def __init__(self, config: MutualTLSAuth) -> None:
        self._subjects = set(config.subjects)
        self._prints = {f.replace(":", "").lower() for f in config.fingerprints_sha256}

    def before_body(self, request: Request) -> Signed | None:
        tls = request.scope.get("extensions", {}).get("tls") or {}
        fingerprint = tls.get("client_cert_sha256")
        if not fingerprint:
            raise Problem(401, "no-client-certificate", "a client certificate signed by the server's CA is required")
        if (self._subjects or self._prints) and (
            tls.get("client_cert_name") not in self._subjects and fingerprint not in self._prints
        ):
            raise Problem(403, "certificate-not-allowed", "the client certificate is not allowed on this channel")
        return None

    def after_body(self, checked: Signed | None, body: bytes) -> None:
        return None


def build_authenticator(config: StandardWebhooksAuth | BearerAuth | MutualTLSAuth | NoAuth, data_dir: Path,
                        channel: str, *, mtls_available: bool = False) -> Authenticator:  # fmt: skip
    """The authenticator of a channel, its secrets read now; :class:`ConfigError` when there are none."""
    if isinstance(config, NoAuth):
        return _Open()
    if isinstance(config, MutualTLSAuth):
        if not mtls_available:
            raise ConfigError("auth mtls needs the HTTP server's http_tls with a ca_file")
        return _MutualTLS(config)
    if isinstance(config, BearerAuth):
        values = read_values(config.token_hashes_env, config.token_hashes_file, data_dir, "token_hashes")
        try:
            hashes = [bytes.fromhex(v) for v in values]
        except ValueError:
            raise ConfigError("bearer: token hashes must be SHA-256 hex digests") from None
        if any(len(h) != 32 for h in hashes):
            raise ConfigError("bearer: token hashes must be SHA-256 hex digests (64 hex digits)")
        return _Bearer(hashes)
    values = read_values(config.secret_env, config.secret_file, data_dir, "secret", generate=config.generate)
    try:
        keys = [parse_secret(v) for v in values]
    except ValueError as exc:
        raise ConfigError(f"standard_webhooks: {exc}") from None
    return _Signatures(Verifier(keys, tolerance_s=config.tolerance_s))


def read_values(env: str | None, file: Path | None, data_dir: Path, what: str, *, generate: bool = False) -> list[str]:
    if env and os.environ.get(env, "").strip():
        return os.environ[env].split()
    path = None if file is None else (file if file.is_absolute() else data_dir / file)
    if path is not None and not path.exists() and generate:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate_secret() + "\n")
        log.warning("generated a webhook signing secret in %s (mode 0600)%s: senders sign with it",
                    path, f"; set {env} to use your own" if env else "")  # fmt: skip
    if path is not None and path.exists():
        try:
            values = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise ConfigError(f"{what}_file {path}: cannot read ({exc.strerror})") from None
        if values:
            return values
        raise ConfigError(f"{what}_file {path} is empty")
    where = " or ".join(x for x in (f"${env}" if env else "", str(path) if path else "") if x)
    raise ConfigError(f"no {what} found ({where})")
