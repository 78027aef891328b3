"""HTTP delivery: the client options every HTTP destination shares, and the plain JSON POST destination.

The JSON POST destination signs each request with Standard Webhooks HMAC-SHA256 when it has ``signing``
(``engine.signing``): ``webhook-id`` is ``msg_<message id>`` (the same on every retry of one message, so the
receiver can recognise a repeat), ``webhook-timestamp`` the time of the attempt, and ``webhook-signature``
one ``v1,`` signature per configured secret (two while a key is rotated). Secrets come from the
environment or a file named in the channel, never from the channel file itself; a destination whose
secret cannot be found does not start (``ConfigError``).

One ``httpx.Client`` per destination (a connection pool shared by the worker threads). A response is
turned into a ``Result`` by ``response_result``; a failed request by ``base.failure_result``. Both go
through ``classify``. The error of a failed response names its status and, for an OperationOutcome, only
what ``outcome.outcome_reason`` allows (codes and element paths): never the body's text.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import Field, model_validator

from engine.config.model import Model
from engine.destinations.auth import AuthConfig, build_auth
from engine.destinations.base import (
    DestinationError,
    Health,
    Outcome,
    Result,
    RetryPolicy,
    classify,
    describe,
    failure_result,
    parse_retry_after,
    to_json,
)
from engine.destinations.outcome import outcome_reason
from engine.errors import ConfigError
from engine.signing import parse_secret, signed_headers

MESSAGE_ID_HEADER = "X-Interlink-Message-Id"


class HttpOptions(Model):
    """Connection settings shared by HTTP-based destinations."""

    timeout_s: float = Field(30, gt=0, description="Connect and read timeout of each request (s).")
    verify_tls: bool = Field(True, description="Verify the server's TLS certificate (keep on in production).")
    ca_file: str | None = Field(None, description="PEM file of CA certificates to trust instead of the system's.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra request headers (put credentials under `auth`, not here)."
    )
    auth: AuthConfig | None = Field(None, description="Authentication: bearer token or OAuth2 client credentials.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Retry policy for failed deliveries.")


def reachable(client: httpx.Client, url: str, *, path: str = "", timeout_s: float = 5.0) -> Health:
    """Health of an HTTP peer: any HTTP answer to a GET of ``url + path`` means reachable (``path`` set: only
    a 2xx does); no answer is the transport failure, described without what the peer sent."""
    try:
        response = client.get(url.rstrip("/") + path if path else url, timeout=timeout_s)
    except Exception as exc:  # every failure is a health answer, none escapes
        return Health(False, describe(exc))
    if path and not response.is_success:
        return Health(False, f"HTTP {response.status_code}")
    return Health(True)


def make_client(options: HttpOptions, *, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """The pooled client for one destination (``transport`` replaces the network, e.g. in tests)."""
    verify: ssl.SSLContext | bool = options.verify_tls
    if options.ca_file and options.verify_tls:
        verify = ssl.create_default_context(cafile=options.ca_file)
    return httpx.Client(
        timeout=httpx.Timeout(options.timeout_s),
        verify=verify,
        auth=build_auth(options.auth),
        transport=transport,
        follow_redirects=False,
    )


def response_result(response: httpx.Response, request: bytes) -> Result:
    """The Result of an HTTP response: classified by status, Retry-After read when retrying."""
    status = response.status_code
    outcome = classify(status)
    if outcome is Outcome.SENT:
        return Result(outcome, status_code=status, request=request, response=response.content)
    reason = outcome_reason(response.content)
    return Result(
        outcome,
        status_code=status,
        error=f"HTTP {status}: {reason}" if reason else f"HTTP {status}",
        retry_after_s=parse_retry_after(response.headers.get("Retry-After")) if outcome is Outcome.RETRY else None,
        request=request,
        response=response.content,
    )


def request_headers(defaults: dict[str, str], extra: dict[str, str]) -> httpx.Headers:
    """``defaults`` overridden, case-insensitively, by the configured ``extra`` headers."""
    headers = httpx.Headers(defaults)
    headers.update(extra)
    return headers


def post(client: httpx.Client, url: str, body: bytes, headers: httpx.Headers) -> Result:
    """POST ``body``; never raises for delivery problems."""
    try:
        response = client.post(url, content=body, headers=headers)
    except Exception as exc:  # every failure is classified, none escapes
        return failure_result(exc, request=body)
    return response_result(response, body)


class SigningConfig(Model):
    """Standard Webhooks signatures on every request (HMAC-SHA256 of ``webhook-id.webhook-timestamp.body``)."""

    secret_env: str | None = Field(
        None, description="Environment variable holding the secret(s): whsec_… base64, space-separated for a rotation."
    )
    secret_file: Path | None = Field(None, description="File holding the secret(s), one per line.")

    @model_validator(mode="after")
    def _has_source(self) -> SigningConfig:
        if self.secret_env is None and self.secret_file is None:
            raise ValueError("name secret_env or secret_file (secrets never go in the channel file)")
        return self

    def keys(self) -> list[bytes]:
        """The signing keys, read now; ConfigError naming the variable or file when there are none."""
        values: list[str] = []
        if self.secret_env and os.environ.get(self.secret_env, "").strip():
            values = os.environ[self.secret_env].split()
        elif self.secret_file is not None:
            try:
                values = [v.strip() for v in self.secret_file.read_text().splitlines() if v.strip()]
            except OSError as exc:
                raise ConfigError(f"signing: cannot read secret_file {self.secret_file} ({exc.strerror})") from None
        if not values:
            where = " or ".join(x for x in (f"${self.secret_env}" if self.secret_env else "",
                                            str(self.secret_file or "")) if x)  # fmt: skip
            raise ConfigError(f"signing: no secret found ({where})")
        try:
            return [parse_secret(v) for v in values]
        except ValueError as exc:
            raise ConfigError(f"signing: {exc}") from None


class HttpConfig(HttpOptions):
    """POST each bundle as JSON to a URL."""

    type: Literal["http"] = Field(description="Destination kind.")
    name: str = Field(description="Destination name, unique in the channel.")
    url: str = Field(description="URL the bundle is POSTed to.")
    content_type: str = Field("application/json", description="Content-Type of the request.")
    signing: SigningConfig | None = Field(
        None, description="Sign every request with Standard Webhooks HMAC-SHA256 (webhook-id/-timestamp/-signature)."
    )

    def target(self) -> str:
        """The system written to (channels writing to the same one share ordering lanes)."""
        return "http " + self.url


class HttpDestination:
    """Delivers bundles with one JSON POST each."""

    def __init__(self, config: HttpConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.name = config.name
        self.config = config
        self._keys = config.signing.keys() if config.signing is not None else []
        self._client = make_client(config, transport=transport)

    def send(self, bundle: dict[str, Any], *, message_id: str) -> Result:
        try:
            body = to_json(bundle)
        except DestinationError as exc:
            return failure_result(exc)
        headers = request_headers(
            {"Content-Type": self.config.content_type, MESSAGE_ID_HEADER: message_id}, self.config.headers
        )
        if self._keys:
            headers.update(signed_headers(self._keys, body, msg_id=f"msg_{message_id}"))
        return post(self._client, self.config.url, body, headers)

    def healthcheck(self) -> Health:
        return reachable(self._client, self.config.url)

    def close(self) -> None:
        self._client.close()
