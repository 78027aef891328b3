"""Dead letters, reprocess and redeliver through the admin API against a real engine: roles and 401, dry-run
counts equal what is then acted on, actions reach the running engine's queue at once (the sweeper is set to
wait five minutes, so nothing here is its doing), and an audit row for each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import yaml
from sqlalchemy import select

from engine.store.schema import audit
from tests.api.admin.conftest import AdminAPI
from tests.api.running import webhook_channel
from tests.integration.harness import wait_until

#: the sweeper never runs during a test: whatever moves, moved because the action enqueued it
SLOW_SWEEPER = {"sweeper": {"interval_s": 300, "grace_s": 300}}


def _patient(n: int) -> bytes:
    return orjson.dumps(
        {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": f"MRN-{n}"}], "gender": "male"}
    )


def _post(api: AdminAPI, n: int) -> str:
    r = api.client(None).post(
        "/webhooks/events", content=_patient(n), headers={"Content-Type": "application/fhir+json"}
    )
    assert r.status_code == 202, r.text
    return str(r.json()["message_id"])


def _status(api: AdminAPI, mid: str) -> str:
    row = api.store.message(mid)
    return row.status if row else "?"


def _audit(api: AdminAPI, action: str) -> list:
    with api.store.work.connect() as conn:
        return list(conn.execute(select(audit).where(audit.c.action == action).order_by(audit.c.id)))


def _blocked_channel(tmp: Path) -> tuple[dict, Path]:
    """A webhook channel whose NDJSON file cannot be written (a file stands where its folder should be) and
    which gives up after one attempt: every message becomes a dead letter."""
    blocked = tmp / "blocked"
    blocked.write_text("a file where the output folder should be")
    channel = webhook_channel(out=tmp / "out")
    channel["destinations"] = [{"name": "ndjson", "type": "file", "path": str(blocked / "events.ndjson"),
                                "retry": {"max_attempts": 1, "min_backoff_ms": 0}}]  # fmt: skip
    return channel, blocked


def _unblock(blocked: Path) -> Path:
    blocked.unlink()
    blocked.mkdir()
    return blocked / "events.ndjson"


ROUTES = [
    ("POST", "/api/v1/deadletters/replay", {"all": True}),
    ("POST", "/api/v1/deadletters/discard", {"all": True, "reason": "test"}),
    ("POST", "/api/v1/messages/reprocess", {"all": True}),
    ("POST", f"/api/v1/messages/{'0' * 32}/redeliver", {"destination": "ndjson"}),
    ("POST", "/api/v1/diff", {"all": True}),
]


def test_roles_and_401_before_the_body(admin_api: AdminAPI) -> None:
    none, viewer, operator = admin_api.client(None), admin_api.client("viewer"), admin_api.client("operator")
    assert none.get("/api/v1/deadletters").status_code == 401
    r = viewer.get("/api/v1/deadletters")
    assert (r.status_code, r.json()) == (200, {"items": [], "next": None})
    for method, path, body in ROUTES:
        assert none.request(method, path, json=body).status_code == 401, path
        assert none.request(method, path, content=b"{not json").status_code == 401, path
        assert viewer.request(method, path, json=body).status_code == 403, path
    # an operator gets past access: what follows is the route's own answer
    assert operator.post("/api/v1/deadletters/replay", json={}).status_code == 422  # selects nothing
    assert operator.post("/api/v1/deadletters/discard", json={"all": True}).status_code == 422  # no reason
    r = operator.post("/api/v1/deadletters/replay?dry_run=true", json={"ids": ["x' OR 1=1"]})
    assert r.status_code == 422 and "ids[0]" in r.json()["detail"] and "OR" not in r.json()["detail"]
    assert operator.post(f"/api/v1/messages/{'0' * 32}/redeliver", json={"destination": "ndjson"}).status_code == 404


def test_replay_dry_run_count_then_sent_at_once_and_audited(
    admin_api_factory: Callable[..., AdminAPI], tmp_path: Path
) -> None:
    channel, blocked = _blocked_channel(tmp_path)
    api = admin_api_factory([channel], **SLOW_SWEEPER)
    ids = [_post(api, n) for n in range(3)]
    wait_until(lambda: all(_status(api, m) == "dead" for m in ids), 20, "three dead letters")
    viewer, operator = api.client("viewer"), api.client("operator")

    first = viewer.get("/api/v1/deadletters", params={"limit": 2, "channel": "events"}).json()
    rest = viewer.get("/api/v1/deadletters", params={"limit": 2, "cursor": first["next"]}).json()
    listed = first["items"] + rest["items"]
    assert [i["message_id"] for i in listed] == sorted(ids) and rest["next"] is None
    assert set(listed[0]) == {"message_id", "destination", "channel", "message_type", "received_at", "dead_at",
                              "attempts", "last_status_code", "last_error", "holding"}  # fmt: skip
    assert "MRN" not in str(listed)

    dry = operator.post("/api/v1/deadletters/replay?dry_run=true", json={"channel": "events"}).json()
    assert dry == {"dry_run": True, "count": 3}
    assert all(_status(api, m) == "dead" for m in ids)  # a dry run changes nothing
    out = _unblock(blocked)
    started = time.monotonic()
    r = operator.post("/api/v1/deadletters/replay", json={"channel": "events"})
    assert r.status_code == 200 and r.json()["replayed"] == dry["count"]
    wait_until(lambda: all(_status(api, m) == "sent" for m in ids), 10, "replayed dead letters sent")
    assert time.monotonic() - started < 60  # far inside the sweeper's 300 s: the action enqueued them
    assert len(out.read_text().splitlines()) == 3
    [row] = _audit(api, "deadletter.replay")
    assert (row.token_id, row.role, row.target) == (api.token_ids["operator"], "operator", "channel=events")
    assert sorted(row.message_ids.split()) == sorted(ids)
    assert operator.post("/api/v1/deadletters/replay?dry_run=true", json={"all": True}).json()["count"] == 0


def test_discard_needs_a_reason_counts_first_and_is_audited(
    admin_api_factory: Callable[..., AdminAPI], tmp_path: Path
) -> None:
    channel, _ = _blocked_channel(tmp_path)
    api = admin_api_factory([channel], **SLOW_SWEEPER)
    ids = [_post(api, n) for n in range(2)]
    wait_until(lambda: all(_status(api, m) == "dead" for m in ids), 20, "two dead letters")
    operator = api.client("operator")
    body = {"message_id": ids[0], "reason": "test patient"}
    assert operator.post("/api/v1/deadletters/discard", json={"message_id": ids[0]}).status_code == 422
    assert operator.post("/api/v1/deadletters/discard?dry_run=true", json=body).json()["count"] == 1
    r = operator.post("/api/v1/deadletters/discard", json=body).json()
    assert r["discarded"] == 1 and r["deliveries"] == [{"message_id": ids[0], "destination": "ndjson"}]
    d = api.store.delivery(ids[0], "ndjson")
    assert (d.status, d.last_error) == ("discarded", "discarded: test patient")
    [row] = _audit(api, "deadletter.discard")
    assert row.message_ids == ids[0]
    assert api.client("viewer").get("/api/v1/deadletters").json()["items"][0]["message_id"] == ids[1]


def test_reprocess_dry_run_then_processed_at_once(admin_api_factory: Callable[..., AdminAPI], tmp_path: Path) -> None:
    channel, blocked = _blocked_channel(tmp_path)
    api = admin_api_factory([channel], **SLOW_SWEEPER)
    ids = [_post(api, n) for n in range(2)]
    wait_until(lambda: all(_status(api, m) == "dead" for m in ids), 20, "two dead letters")
    operator = api.client("operator")
    assert operator.post("/api/v1/messages/reprocess", json={"status": "received"}).status_code == 422
    dry = operator.post("/api/v1/messages/reprocess?dry_run=true", json={"channel": "events"}).json()
    assert dry == {"dry_run": True, "count": 2}
    _unblock(blocked)
    r = operator.post("/api/v1/messages/reprocess", json={"channel": "events"}).json()
    assert r["reprocessed"] == 2 and sorted(r["message_ids"]) == sorted(ids)
    wait_until(lambda: all(_status(api, m) == "sent" for m in ids), 10, "reprocessed messages sent")
    [row] = _audit(api, "message.reprocess")
    assert sorted(row.message_ids.split()) == sorted(ids)


def test_redeliver_to_a_destination_added_since(admin_api_factory: Callable[..., AdminAPI], tmp_path: Path) -> None:
    channel = webhook_channel(out=tmp_path / "out")
    api = admin_api_factory([channel], **SLOW_SWEEPER)
    mid = _post(api, 1)
    wait_until(lambda: _status(api, mid) == "sent", 10, "message sent")
    operator = api.client("operator")
    r = operator.post(f"/api/v1/messages/{mid}/redeliver", json={"destination": "fhir"})
    assert r.status_code == 422 and "ndjson" in r.json()["detail"]  # not a destination of the channel (yet)

    # switch: the channel now also delivers to a second file (as after moving from NDJSON to a FHIR server)
    second = tmp_path / "out" / "second.ndjson"
    channel["destinations"].append({"name": "second", "type": "file", "path": str(second)})
    (tmp_path / "channels" / "events.yaml").write_text(yaml.safe_dump(channel))
    asyncio.run_coroutine_threadsafe(api.engine.reload(), api.running.loop).result(30)

    r = operator.post(f"/api/v1/messages/{mid}/redeliver", json={"destination": "second"})
    assert r.status_code == 202 and r.json()["message_id"] == mid
    wait_until(lambda: second.exists() and len(second.read_text().splitlines()) == 1, 10, "redelivered")
    wait_until(lambda: _status(api, mid) == "sent", 10, "message settled as sent again")
    assert api.store.delivery(mid, "second").status == "sent"
    # the first destination got it once: redeliver names one destination
    assert len((tmp_path / "out" / "events.ndjson").read_text().splitlines()) == 1
    [row] = _audit(api, "message.redeliver")[-1:]
    assert (row.target, row.message_ids, row.outcome) == ("second", mid, "ok")
    assert [r.outcome for r in _audit(api, "message.redeliver")] == ["refused", "ok"]
    assert operator.post(f"/api/v1/messages/{mid}/redeliver", json={}).status_code == 422


@pytest.mark.parametrize("path", ["/api/v1/deadletters/replay", "/api/v1/messages/reprocess"])
def test_actions_refuse_an_unknown_field(admin_api: AdminAPI, path: str) -> None:
    r = admin_api.client("operator").post(path, json={"channel": "events", "colour": "red"})
    assert r.status_code == 422 and "colour" in r.json()["detail"]
