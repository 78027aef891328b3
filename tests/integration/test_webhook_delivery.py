"""The signed HTTP destination against a real receiver that verifies Standard Webhooks signatures with the
reference library: signed delivery, retry then success under one webhook-id, a permanent failure dead-
lettered and then replayed — fed by a webhook channel of an engine running in this process."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson
import pytest

from engine.store import DeliveryStatus
from tests.api.running import SECRET, RunningEngine, webhook_channel
from tests.integration.harness import wait_until

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from standardwebhooks import Webhook, WebhookVerificationError


class Receiver:
    """An HTTP endpoint that verifies each request's signature and answers from a script (then 200)."""

    def __init__(self) -> None:
        self.script: list[int] = []
        self.seen: list[tuple[str, bool, bytes]] = []  # (webhook-id, signature valid, body)
        hook = Webhook(SECRET)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                try:
                    hook.verify(body, {k.lower(): v for k, v in self.headers.items()})
                    valid = True
                except WebhookVerificationError:
                    valid = False
                outer.seen.append((self.headers.get("webhook-id", ""), valid, body))
                status = outer.script.pop(0) if outer.script else 200
                self.send_response(status if valid else 401)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


PATIENT = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN-9"}]}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def eng(tmp_path: Path, receiver: Receiver) -> Iterator[RunningEngine]:
    (tmp_path / "hook.secret").write_text(SECRET + "\n")
    channel = webhook_channel("in", out=tmp_path)
    channel["destinations"] = [{
        "name": "hook", "type": "http", "url": receiver.url, "timeout_s": 5,
        "signing": {"secret_file": str(tmp_path / "hook.secret")},
        "retry": {"max_attempts": 3, "min_backoff_ms": 50, "max_backoff_ms": 100},
    }]  # fmt: skip
    with RunningEngine(tmp_path / "engine", [channel]) as running:
        yield running


def post(eng: RunningEngine) -> str:
    r = httpx.post(f"{eng.url}/webhooks/in", content=orjson.dumps(PATIENT),
                   headers={"content-type": "application/fhir+json"})  # fmt: skip
    assert r.status_code == 202
    return str(r.json()["message_id"])


def delivery(eng: RunningEngine, message_id: str) -> str:
    row = eng.engine.store.delivery(message_id, "hook")
    return "" if row is None else str(row.status)


def test_signed_delivery_retried_under_one_webhook_id(eng: RunningEngine, receiver: Receiver) -> None:
    receiver.script = [503, 503]
    message_id = post(eng)
    wait_until(lambda: delivery(eng, message_id) == DeliveryStatus.sent, 30, "delivered after two retries")
    assert [(wid, ok) for wid, ok, _ in receiver.seen] == [(f"msg_{message_id}", True)] * 3
    sent = orjson.loads(receiver.seen[-1][2])
    assert sent["type"] == "transaction" and sent["entry"][0]["resource"]["identifier"][0]["value"] == "MRN-9"
    assert eng.engine.store.delivery(message_id, "hook").attempts == 3


def test_permanent_failure_is_dead_then_replayed(eng: RunningEngine, receiver: Receiver) -> None:
    receiver.script = [400]
    message_id = post(eng)
    wait_until(lambda: delivery(eng, message_id) == DeliveryStatus.dead, 30, "dead letter")
    assert len(receiver.seen) == 1 and receiver.seen[0][1]
    assert [r.message_id for r in eng.engine.store.dead_letters()] == [message_id]
    assert eng.engine.store.replay_dead(message_id=message_id, for_sweeper=True)
    wait_until(lambda: delivery(eng, message_id) == DeliveryStatus.sent, 30, "sent after replay")
    assert len(receiver.seen) == 2 and all(ok for _, ok, _ in receiver.seen)


def test_a_signing_destination_without_its_secret_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.destinations import HttpConfig, HttpDestination
    from engine.errors import ConfigError

    monkeypatch.delenv("INTERLINK_TEST_HOOK_SECRET", raising=False)
    config = HttpConfig.model_validate({"type": "http", "name": "hook", "url": "http://127.0.0.1:9/",
                                        "signing": {"secret_env": "INTERLINK_TEST_HOOK_SECRET"}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"signing: no secret found \(\$INTERLINK_TEST_HOOK_SECRET\)"):
        HttpDestination(config)
    monkeypatch.setenv("INTERLINK_TEST_HOOK_SECRET", SECRET)
    HttpDestination(config).close()
