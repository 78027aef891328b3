"""Authentication for HTTP destinations: a static bearer token, or OAuth2 client credentials.

Both are ``httpx.Auth`` flows, so they ride on the destination's own client (pool, TLS, timeouts).
The OAuth2 token is fetched once, shared by every worker thread, reused until shortly before it
expires, and refreshed once when the server answers 401. Secrets never appear in reprs or errors.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from typing import Annotated, Literal

import httpx
import orjson
from pydantic import Field, SecretStr

from engine.config.model import Model
from engine.destinations.base import DestinationError, classify


class BearerConfig(Model):
    """A fixed bearer token sent as ``Authorization: Bearer …``."""

    type: Literal["bearer"] = Field(description="Authentication kind.")
    token: SecretStr = Field(description="The token (use ${ENV} in channel files; never logged).")


class OAuth2Config(Model):
    """OAuth2 client-credentials grant (RFC 6749 §4.4)."""

    type: Literal["oauth2"] = Field(description="Authentication kind.")
    token_url: str = Field(description="Token endpoint URL.")
    client_id: str = Field(description="OAuth2 client id.")
    client_secret: SecretStr = Field(description="OAuth2 client secret (use ${ENV}; never logged).")
    scope: str | None = Field(None, description="Space-separated scopes to request, if any.")
    credentials_in: Literal["header", "body"] = Field(
        "header", description="Send the client credentials as HTTP Basic (header) or form fields (body)."
    )
    refresh_margin_s: float = Field(
        60, ge=0, description="Fetch a new token this many seconds before the current one expires."
    )


AuthConfig = Annotated[BearerConfig | OAuth2Config, Field(discriminator="type")]


class TokenError(DestinationError):
    """The token endpoint refused or answered nonsense; the outcome follows its HTTP status."""


class BearerAuth(httpx.Auth):
    """Adds a fixed bearer token to every request."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "BearerAuth(token=**********)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        yield request


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    expires_at: float | None  # clock time after which it must not be used; None = until refused


class OAuth2ClientCredentials(httpx.Auth):
    """Client-credentials flow with a thread-safe token cache (synchronous clients only)."""

    requires_response_body = True

    def __init__(self, config: OAuth2Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._token: _Token | None = None

    def __repr__(self) -> str:
        return f"OAuth2ClientCredentials(token_url={self._config.token_url!r}, client_secret=**********)"

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = yield from self._current(stale=None)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            token = yield from self._current(stale=token)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        raise RuntimeError("OAuth2ClientCredentials supports synchronous clients only")
        yield request  # pragma: no cover - makes this an async generator

    def _current(self, stale: str | None) -> Generator[httpx.Request, httpx.Response, str]:
        """The cached token, or a new one when there is none, it is about to expire, or it is ``stale``."""
        with self._lock:
            cached = self._token
            if cached is not None and cached.value != stale and not self._expiring(cached):
                return cached.value
            response = yield self._token_request()
            self._token = self._read_token(response)
            return self._token.value

    def _expiring(self, token: _Token) -> bool:
        return token.expires_at is not None and self._clock() >= token.expires_at - self._config.refresh_margin_s

    def _token_request(self) -> httpx.Request:
        c = self._config
        form = {"grant_type": "client_credentials"}
        if c.scope:
            form["scope"] = c.scope
        headers = {"Accept": "application/json"}
        if c.credentials_in == "header":
            pair = f"{c.client_id}:{c.client_secret.get_secret_value()}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            form["client_id"] = c.client_id
            form["client_secret"] = c.client_secret.get_secret_value()
        return httpx.Request("POST", c.token_url, data=form, headers=headers)

    def _read_token(self, response: httpx.Response) -> _Token:
        status = response.status_code
        if not 200 <= status < 300:
            raise TokenError(f"token endpoint: HTTP {status}", outcome=classify(status), status_code=status)
        try:
            body = orjson.loads(response.content)
            value = body["access_token"]
            expires_in = body.get("expires_in")
            lifetime = None if expires_in is None else float(expires_in)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise TokenError(
                "token endpoint: response has no usable access_token",
                outcome=classify(502),
                status_code=status,
            ) from None
        if not isinstance(value, str) or not value:
            raise TokenError("token endpoint: empty access_token", outcome=classify(502), status_code=status)
        return _Token(value, None if lifetime is None else self._clock() + lifetime)


def build_auth(
    config: BearerConfig | OAuth2Config | None, *, clock: Callable[[], float] = time.monotonic
) -> httpx.Auth | None:
    """The ``httpx.Auth`` for an auth config (None: no authentication)."""
    if config is None:
        return None
    if isinstance(config, BearerConfig):
        return BearerAuth(config.token)
    return OAuth2ClientCredentials(config, clock=clock)
