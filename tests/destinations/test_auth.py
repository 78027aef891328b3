from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from engine.destinations import (
    FhirConfig,
    FhirDestination,
    HttpConfig,
    HttpDestination,
    OAuth2Config,
    Outcome,
)
from engine.destinations.auth import BearerAuth, BearerConfig, OAuth2ClientCredentials, build_auth

SECRET = "s3cr3t-Value"
BUNDLE: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction", "entry": []}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Server:
    """A token endpoint at /token and an API that accepts the tokens it issued and has not revoked."""

    def __init__(self, *, expires_in: int | None = 3600, token_status: int = 200) -> None:
        self.expires_in = expires_in
        self.token_status = token_status
        self.token_requests: list[httpx.Request] = []
        self.api_auth: list[str | None] = []
        self.revoked: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            if request.url.path == "/token":
                self.token_requests.append(request)
                if self.token_status != 200:
                    return httpx.Response(self.token_status, json={"error": "invalid_client"})
                body: dict[str, Any] = {
                    "access_token": f"t{len(self.token_requests)}",
                    "token_type": "Bearer",
                }
                if self.expires_in is not None:
                    body["expires_in"] = self.expires_in
                return httpx.Response(200, json=body)
            auth = request.headers.get("Authorization")
            self.api_auth.append(auth)
        time.sleep(0.001)
        issued = {f"Bearer t{n}" for n in range(1, len(self.token_requests) + 1)}
        if auth not in issued or auth.removeprefix("Bearer ") in self.revoked:
            return httpx.Response(401)
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response", "entry": []})


def oauth(**overrides: Any) -> OAuth2Config:
    fields = {"type": "oauth2", "token_url": "https://auth.test/token", "client_id": "interlink"}
    return OAuth2Config.model_validate({**fields, "client_secret": SECRET, **overrides})


def http_dest(server: Server, config: OAuth2Config, clock: Clock | None = None) -> HttpDestination:
    dest = HttpDestination(
        HttpConfig(type="http", name="api", url="https://api.test/in", auth=config),
        transport=httpx.MockTransport(server),
    )
    if clock is not None:  # swap in an auth flow on a controllable clock
        dest._client.auth = OAuth2ClientCredentials(config, clock=clock)
    return dest


def test_bearer_token_header() -> None:
    seen: list[httpx.Request] = []
    config = FhirConfig.model_validate(
        {
            "type": "fhir",
            "name": "ehr",
            "base_url": "https://ehr.test/fhir",
            "auth": {"type": "bearer", "token": SECRET},
        }
    )
    dest = FhirDestination(config, transport=httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200)))
    assert dest.send(BUNDLE, message_id="m").outcome is Outcome.SENT
    assert seen[0].headers["Authorization"] == f"Bearer {SECRET}"


def test_token_requested_once_and_reused() -> None:
    server = Server()
    dest = http_dest(server, oauth(scope="system/*.write"))
    results = [dest.send(BUNDLE, message_id=str(n)) for n in range(3)]
    assert [r.outcome for r in results] == [Outcome.SENT] * 3
    assert len(server.token_requests) == 1
    assert server.api_auth == ["Bearer t1"] * 3
    token_request = server.token_requests[0]
    assert parse_qs(token_request.content.decode()) == {
        "grant_type": ["client_credentials"],
        "scope": ["system/*.write"],
    }
    basic = base64.b64encode(f"interlink:{SECRET}".encode()).decode()
    assert token_request.headers["Authorization"] == f"Basic {basic}"
    assert token_request.headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_credentials_in_body() -> None:
    server = Server()
    assert http_dest(server, oauth(credentials_in="body")).send(BUNDLE, message_id="m").outcome is Outcome.SENT
    form = parse_qs(server.token_requests[0].content.decode())
    assert form == {
        "grant_type": ["client_credentials"],
        "client_id": ["interlink"],
        "client_secret": [SECRET],
    }
    assert "Authorization" not in server.token_requests[0].headers


def test_token_refreshed_shortly_before_expiry() -> None:
    server, clock = Server(expires_in=300), Clock()
    dest = http_dest(server, oauth(refresh_margin_s=60), clock)
    dest.send(BUNDLE, message_id="1")
    clock.now += 239  # 61 s left: still good
    dest.send(BUNDLE, message_id="2")
    clock.now += 2  # 59 s left: inside the margin
    dest.send(BUNDLE, message_id="3")
    assert server.api_auth == ["Bearer t1", "Bearer t1", "Bearer t2"]
    assert len(server.token_requests) == 2


def test_token_without_expiry_kept_until_refused() -> None:
    server, clock = Server(expires_in=None), Clock()
    dest = http_dest(server, oauth(), clock)
    dest.send(BUNDLE, message_id="1")
    clock.now += 10**7
    dest.send(BUNDLE, message_id="2")
    assert len(server.token_requests) == 1


def test_401_refreshes_the_token_once_and_resends() -> None:
    server = Server()
    dest = http_dest(server, oauth())
    dest.send(BUNDLE, message_id="1")
    server.revoked.add("t1")
    result = dest.send(BUNDLE, message_id="2")
    assert result.outcome is Outcome.SENT
    assert server.api_auth == ["Bearer t1", "Bearer t1", "Bearer t2"]
    assert dest.send(BUNDLE, message_id="3").outcome is Outcome.SENT
    assert len(server.token_requests) == 2


def test_401_after_refresh_is_permanent_without_looping() -> None:
    server = Server()
    dest = http_dest(server, oauth())
    server.revoked.update({"t1", "t2", "t3"})
    result = dest.send(BUNDLE, message_id="1")
    assert (result.outcome, result.status_code) == (Outcome.PERMANENT, 401)
    assert len(server.token_requests) == 2 and len(server.api_auth) == 2


@pytest.mark.parametrize(("status", "outcome"), [(503, Outcome.RETRY), (401, Outcome.PERMANENT)])
def test_token_endpoint_failure_is_classified(status: int, outcome: Outcome) -> None:
    server = Server(token_status=status)
    result = http_dest(server, oauth()).send(BUNDLE, message_id="m")
    assert (result.outcome, result.status_code) == (outcome, status)
    assert result.error == f"token endpoint: HTTP {status}"
    assert server.api_auth == []


def test_token_response_without_access_token_is_retry() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"token_type": "Bearer"}))
    dest = HttpDestination(
        HttpConfig(type="http", name="api", url="https://api.test/in", auth=oauth()), transport=transport
    )
    result = dest.send(BUNDLE, message_id="m")
    assert (result.outcome, result.error) == (
        Outcome.RETRY,
        "token endpoint: response has no usable access_token",
    )


def test_concurrent_first_sends_fetch_one_token() -> None:
    server = Server()
    dest = http_dest(server, oauth())
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: dest.send(BUNDLE, message_id=str(n)), range(32)))
    assert all(r.outcome is Outcome.SENT for r in results)
    assert len(server.token_requests) == 1


def test_secrets_never_in_reprs_or_results() -> None:
    server = Server(token_status=401)
    config = oauth()
    bearer = BearerConfig(type="bearer", token=SECRET)  # type: ignore[arg-type]
    dest = http_dest(server, config)
    result = dest.send(BUNDLE, message_id="m")
    texts = [
        repr(config),
        str(config),
        repr(bearer),
        config.model_dump_json(),
        repr(HttpConfig(type="http", name="api", url="https://x", auth=config)),
        repr(build_auth(config)),
        repr(BearerAuth(bearer.token)),
        repr(result),
    ]
    assert all(SECRET not in t for t in texts)
    assert build_auth(None) is None
