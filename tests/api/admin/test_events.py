"""``GET /api/v1/events``: the dashboard's live stream (Server-Sent Events) of the channel and queue tables."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from engine.store.access import Tokens
from tests.api.admin.conftest import AdminAPI
from tests.api.running import RunningEngine, webhook_channel
from tests.integration.harness import wait_until

pytestmark = [pytest.mark.integration]

PATIENT = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": "EV-1"}]}


def _events(api: AdminAPI, count: int) -> list[dict]:
    """The data of the first ``count`` stats events of one stream (then the client leaves)."""
    found: list[dict] = []
    with api.client("viewer").stream("GET", "/api/v1/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-store"
        event = ""
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:") and event == "stats":
                found.append(orjson.loads(line.partition(":")[2]))
                if len(found) == count:
                    break
    return found


def test_needs_a_token(admin_api: AdminAPI) -> None:
    r = admin_api.client(None).get("/api/v1/events")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_stream_carries_the_channel_and_queue_tables(admin_api: AdminAPI) -> None:
    r = admin_api.client(None).post(
        "/webhooks/events", content=orjson.dumps(PATIENT), headers={"content-type": "application/fhir+json"}
    )
    assert r.status_code == 202
    message_id = r.json()["message_id"]
    wait_until(lambda: admin_api.store.message(message_id).status == "sent", 10, "the message to be sent")
    first, second = _events(admin_api, 2)
    assert 0.5 < second["at"] - first["at"] < 5  # about one a second
    viewer = admin_api.client("viewer")
    assert second["channels"] == viewer.get("/api/v1/channels").json()["channels"]
    assert second["queues"] == viewer.get("/api/v1/queues").json()["queues"]
    assert second["channels"][0]["name"] == "events"
    assert second["channels"][0]["counters"]["received"] == 1
    assert second["channels"][0]["counters"]["sent"] == 1


def test_described_in_the_openapi_document(admin_api: AdminAPI) -> None:
    doc = admin_api.client(None).get("/openapi.json").json()
    assert "text/event-stream" in doc["paths"]["/api/v1/events"]["get"]["responses"]["200"]["content"]


def test_an_open_stream_does_not_hold_the_engine_stop(tmp_path: Path) -> None:
    """The stream ends as the engine begins to stop (before: the server's 5 s shutdown grace, then a cancel)."""
    lines: list[str] = []
    with RunningEngine(tmp_path, [webhook_channel(out=tmp_path / "out")]) as eng:
        _, secret = Tokens(eng.engine.store).create("viewer", "dash")

        def read() -> None:
            with httpx.stream("GET", f"{eng.url}/api/v1/events", headers={"Authorization": f"Bearer {secret}"},
                              timeout=30) as r:  # fmt: skip
                lines.extend(r.iter_lines())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 10
        while not any(line.startswith("data:") for line in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(line.startswith("data:") for line in lines)
        started = time.monotonic()
    assert time.monotonic() - started < 2.5
    reader.join(5)
    assert not reader.is_alive()  # the response ended cleanly (no error in the reader)
