"""The engine's HTTP server, over real HTTP: probes, the OpenAPI document, problems for unknown paths and
methods, a port in use, TLS with client certificates in the scope."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest

from engine.api.app import create_app
from engine.api.health import Readiness
from engine.api.server import HttpServer
from engine.api.webhooks import WebhookRoutes
from engine.errors import ListenError
from tests.api.running import running, webhook_channel


def test_healthz_readyz_and_openapi(tmp_path: Path) -> None:
    with running(tmp_path, [webhook_channel(out=tmp_path / "out")]) as eng, httpx.Client(base_url=eng.url) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 200
        checks = ready.json()["checks"]
        assert {k: v["ok"] for k, v in checks.items() if v["required"]} == {
            "store": True,
            "queue": True,
            "channel:events": True,
        }
        assert checks["destination:events/ndjson"] == {"ok": True, "required": False}
        doc = c.get("/openapi.json").json()
        assert doc["openapi"].startswith("3.")
        assert {
            "/healthz",
            "/readyz",
            "/webhooks/{channel}",
            "/v1/webhooks/{channel}/messages/{message_id}",
        } <= set(doc["paths"])


def test_unknown_path_and_method_are_problems(tmp_path: Path) -> None:
    with running(tmp_path, [webhook_channel(out=tmp_path / "out")]) as eng, httpx.Client(base_url=eng.url) as c:
        r = c.get("/nothing/here")
        assert (r.status_code, r.headers["content-type"]) == (404, "application/problem+json")
        assert r.json()["type"] == "urn:interlink:problem:not-found"
        r = c.put("/webhooks/events", content=b"{}")
        assert (r.status_code, r.headers["content-type"]) == (405, "application/problem+json")
        assert r.json()["status"] == 405


def test_readyz_says_not_ready_when_the_store_is_gone(tmp_path: Path) -> None:
    with running(tmp_path, [webhook_channel(out=tmp_path / "out")]) as eng, httpx.Client(base_url=eng.url) as c:
        eng.engine.store.work.dispose()
        (tmp_path / "store.db").unlink()
        (tmp_path / "store.db").mkdir()  # the database is now a folder: every connection fails
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["store"]["ok"] is False
        assert c.get("/healthz").status_code == 200


def test_a_port_in_use_is_one_listen_error(tmp_path: Path) -> None:
    async def main(port: int) -> None:
        server = HttpServer(create_app(Readiness(), WebhookRoutes(tmp_path)), host="127.0.0.1", port=port)
        await server.start()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{port}: address already in use"):
            asyncio.run(main(port))


def test_webhook_channel_without_http_server_does_not_start(tmp_path: Path) -> None:
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="channel events: a webhook channel needs the engine's HTTP server"):  # noqa: SIM117
        with running(tmp_path, [webhook_channel(out=tmp_path / "out")], http_port=0):
            pass


def test_connections_get_tcp_nodelay(tmp_path: Path) -> None:
    """asyncio sets TCP_NODELAY only on sockets whose proto says TCP; without it each response (head, then
    body) waited for the client's delayed ACK: 44 ms per request, measured by bench/webhook.py."""

    async def main() -> int:
        server = HttpServer(create_app(Readiness(), WebhookRoutes(tmp_path)), host="127.0.0.1", port=0)
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            (conn,) = server._server.server_state.connections
            nodelay = conn.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            writer.close()
            return int(nodelay)
        finally:
            await server.stop()

    assert asyncio.run(main()) == 1
