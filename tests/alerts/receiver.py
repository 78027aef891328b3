"""A real HTTP receiver for alert notices (http.server in a thread), and the channels the alert tests use."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from engine.config.channel import Channel
from engine.signing import Verifier, parse_secret

SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="  # a test key
SECRET_ENV = "ALERTS_TEST_SECRET"


class Receiver:
    """Answers each POST with the next status of ``script`` (then 204) and keeps (path, headers, body)."""

    def __init__(self, script: list[int] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.requests.append((self.path, dict(self.headers.items()), body))
                self.send_response(owner.script.pop(0) if owner.script else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def notices(self, path: str | None = None) -> list[dict[str, Any]]:
        """The notices taken (their JSON), checking each one's Standard Webhooks signature."""
        verifier = Verifier([parse_secret(SECRET)])
        out = []
        for p, headers, body in self.requests:
            if path is not None and p != path:
                continue
            verifier.verify(verifier.check_headers({k.lower(): v for k, v in headers.items()}), body)
            out.append(orjson.loads(body))
        return out


def channel(tmp: Path, url: str, alerts: dict[str, Any], name: str = "lab") -> Channel:
    """A channel with a file destination and these ``alerts`` (targets ``first`` and ``second`` at ``url``)."""
    targets = [
        {"type": "http", "name": n, "url": f"{url}/{n}", "signing": {"secret_env": SECRET_ENV},
         "retry": {"min_backoff_ms": 1000, "max_backoff_ms": 2000}}
        for n in ("first", "second")
    ]  # fmt: skip
    return Channel.model_validate(
        {
            "name": name,
            "source": {"type": "mllp", "port": 0},
            "identifiers": {"authority": "HOSP"},
            "destinations": [{"name": "file", "type": "file", "path": str(tmp / "out.ndjson")}],
            "alerts": {"targets": targets, **alerts},
        }
    )
