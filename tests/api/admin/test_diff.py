"""``POST /api/v1/diff`` against a real engine: stored JSON events run through the maps on disk; nothing differs
while the maps are unchanged, a changed path (with its old value) once a site overlay in a tmp dir drops a
rule; the running engine keeps mapping as before; the read is audited."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from engine.store.schema import audit
from tests.api.admin.conftest import AdminAPI
from tests.api.running import ROOT, webhook_channel
from tests.integration.harness import wait_until

SAMPLE = ROOT / "mappings" / "json" / "samples" / "appointment_booked.json"


def json_maps(tmp: Path) -> Path:
    """A mapping folder with the project's JSON maps only (compiles in well under a second)."""
    maps = tmp / "maps"
    (maps / "hl7v2").mkdir(parents=True)
    shutil.copytree(ROOT / "mappings" / "json", maps / "json")
    return maps


def drop_birth_date(overlay: Path) -> None:
    """A site overlay: the JSON patient map without its birthDate rule."""
    src = (ROOT / "mappings" / "json" / "segments" / "patient-Patient.yaml").read_text()
    kept = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith("birthDate:"))
    assert kept != src
    (overlay / "json" / "segments").mkdir(parents=True)
    (overlay / "json" / "segments" / "patient-Patient.yaml").write_text(kept + "\n")


def engine_with_an_event(factory: Callable[..., AdminAPI], tmp: Path) -> tuple[AdminAPI, Path, str]:
    """An engine on the JSON maps with an empty site overlay folder, and the id of one event it has sent."""
    overlay = tmp / "overlay"
    overlay.mkdir()
    api = factory([webhook_channel(out=tmp / "out")], mappings_dir=json_maps(tmp), mapping_overlays=[overlay])
    r = api.client(None).post(
        "/webhooks/events", content=SAMPLE.read_bytes(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 202, r.text
    mid = r.json()["message_id"]
    wait_until(lambda: api.store.message(mid).status == "sent", 10, "event sent")
    return api, overlay, mid


def test_diff_nothing_when_unchanged_then_the_overlay_path(
    admin_api_factory: Callable[..., AdminAPI], tmp_path: Path
) -> None:
    api, overlay, mid = engine_with_an_event(admin_api_factory, tmp_path)
    operator = api.client("operator")
    assert api.client("viewer").post("/api/v1/diff", json={"all": True}).status_code == 403

    same = operator.post("/api/v1/diff", json={"channel": "events"}).json()
    assert same["changed"] == 0 and same["summary"] == []
    [m] = same["messages"]
    assert (m["message_id"], m["before"], m["now"], m["resources"]) == (mid, "sent", "transformed", [])

    drop_birth_date(overlay)
    r = operator.post("/api/v1/diff", json={"channel": "events", "limit": 5})
    assert r.status_code == 200, r.text
    changed = r.json()
    assert changed["changed"] == 1
    assert changed["summary"] == [{"resource_type": "Patient", "path": "birthDate", "op": "removed", "count": 1}]
    [res] = changed["messages"][0]["resources"]
    assert res["changes"] == [{"path": "birthDate", "op": "removed", "old": "1984-07-19", "new": None}]
    # the running engine still maps with what it compiled at start
    r = api.client(None).post(
        "/webhooks/events", content=SAMPLE.read_bytes().replace(b"evt_7f3a9c21", b"evt_2"),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    second = r.json()["message_id"]
    wait_until(lambda: api.store.message(second).status == "sent", 10, "second event sent")
    assert b"birthDate" in api.store.content(second, "transformed")

    with api.store.work.connect() as conn:
        rows = list(conn.execute(select(audit).where(audit.c.action == "message.diff")))
    assert [(r.token_id, r.message_ids, r.target) for r in rows] == [
        (api.token_ids["operator"], mid, "channel=events")
    ] * 2


def test_diff_refuses_a_bad_limit_and_an_empty_selection(admin_api: AdminAPI) -> None:
    operator = admin_api.client("operator")
    assert operator.post("/api/v1/diff", json={"all": True, "limit": 0}).status_code == 422
    assert operator.post("/api/v1/diff", json={"limit": 5}).status_code == 422
