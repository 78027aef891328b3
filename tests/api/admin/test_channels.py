"""/api/v1/channels and /api/v1/queues over real HTTP on a real engine: roles, control actions (each
audited), reload (an invalid file refused with file:line, the running version kept), and counters and queue
depths equal to SQL counts of the store."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from pynetdicom import AE, StoragePresentationContexts
from sqlalchemy import create_engine, text

from engine.sources.mllp_client import send
from engine.store import MessageStatus, ProcessResult
from tests.alerts.receiver import Receiver
from tests.api.admin.conftest import AdminAPI
from tests.api.running import webhook_channel
from tests.integration.dicom_data import make_study
from tests.integration.harness import free_port, wait_until
from tests.integration.messages import oru

PATIENT = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN-1"}]}
FHIR = {"content-type": "application/fhir+json"}


def actions(api: AdminAPI) -> list[tuple[str, str, str]]:
    entries = api.client("admin").get("/api/v1/audit", params={"action": "channel."}).json()["entries"]
    return [(e["action"], e["target"], e["outcome"]) for e in reversed(entries)]


def test_roles_on_channel_routes(admin_api: AdminAPI) -> None:
    assert admin_api.client(None).get("/api/v1/channels").status_code == 401
    assert admin_api.client(None).get("/api/v1/queues").status_code == 401
    for role in ("viewer", "operator", "admin"):
        assert admin_api.client(role).get("/api/v1/channels").status_code == 200
        assert admin_api.client(role).get("/api/v1/queues").status_code == 200
    for role in ("viewer", "operator"):
        c = admin_api.client(role)
        assert c.post("/api/v1/channels/events/stop").status_code == 403
        assert c.post("/api/v1/channels/reload").status_code == 403
    assert admin_api.client(None).post("/api/v1/channels/events/stop").status_code == 401
    assert actions(admin_api) == []  # refused requests change nothing and record no action
    [row] = admin_api.client("viewer").get("/api/v1/channels").json()["channels"]
    assert (row["name"], row["source"], row["state"]) == ("events", "webhook", "running")
    assert row["destinations"] == ["ndjson"]


def test_stop_start_pause_resume_take_effect_and_are_audited(admin_api: AdminAPI) -> None:
    admin, sender = admin_api.client("admin"), admin_api.client(None)
    assert sender.post("/webhooks/events", json=PATIENT, headers=FHIR).status_code == 202

    assert admin.post("/api/v1/channels/events/stop").json() == {"name": "events", "state": "stopped"}
    assert sender.post("/webhooks/events", json=PATIENT, headers=FHIR).status_code == 404
    assert admin.post("/api/v1/channels/events/start").json()["state"] == "running"
    assert sender.post("/webhooks/events", json=PATIENT, headers=FHIR).status_code == 202

    assert admin.post("/api/v1/channels/events/pause").json()["state"] == "paused"
    stored = len(admin_api.store.list_messages(limit=100))
    refused = sender.post("/webhooks/events", json=PATIENT, headers=FHIR)
    assert (refused.status_code, "retry-after" in refused.headers) == (503, True)
    assert refused.json()["detail"] == "channel paused, send again later; nothing was accepted"
    assert len(admin_api.store.list_messages(limit=100)) == stored  # nothing committed while paused
    assert admin.get("/api/v1/channels").json()["channels"][0]["state"] == "paused"
    assert admin.post("/api/v1/channels/events/resume").json()["state"] == "running"
    assert sender.post("/webhooks/events", json=PATIENT, headers=FHIR).status_code == 202

    assert admin.post("/api/v1/channels/nosuch/stop").status_code == 404
    assert admin.post("/api/v1/channels/events/explode").status_code == 404
    assert actions(admin_api) == [
        ("channel.stop", "events", "ok"), ("channel.start", "events", "ok"),
        ("channel.pause", "events", "ok"), ("channel.resume", "events", "ok"),
    ]  # fmt: skip
    [entry] = admin.get("/api/v1/audit", params={"action": "channel.pause"}).json()["entries"]
    assert (entry["actor"], entry["role"], entry["token_id"], entry["peer"]) == (
        "test-admin", "admin", admin_api.token_ids["admin"], "127.0.0.1"
    )  # fmt: skip


def test_reload_refuses_an_invalid_file_and_keeps_the_running_version(admin_api: AdminAPI) -> None:
    admin, sender = admin_api.client("admin"), admin_api.client(None)
    channels = admin_api.tmp / "channels"
    good = (channels / "events.yaml").read_text()
    (channels / "events.yaml").write_text(good + "unknown_setting: 1\n")
    r = admin.post("/api/v1/channels/reload")
    assert (r.status_code, r.headers["content-type"]) == (422, "application/problem+json")
    assert "events.yaml:" in r.json()["detail"] and "unknown_setting" in r.json()["detail"]
    assert sender.post("/webhooks/events", json=PATIENT, headers=FHIR).status_code == 202  # still running

    (channels / "events.yaml").write_text(good)
    second = webhook_channel("second", out=admin_api.tmp / "out")
    (channels / "second.yaml").write_text(yaml.safe_dump(second))
    assert admin.post("/api/v1/channels/reload").json() == {"changed": ["second"], "mappings": []}
    assert sender.post("/webhooks/second", json=PATIENT, headers=FHIR).status_code == 202
    assert [c["name"] for c in admin.get("/api/v1/channels").json()["channels"]] == ["events", "second"]
    assert admin.post("/api/v1/channels/reload").json() == {"changed": [], "mappings": []}
    assert actions(admin_api) == [
        ("channel.reload", "", "refused"), ("channel.reload", "second", "ok"), ("channel.reload", "", "ok")
    ]  # fmt: skip


@pytest.fixture
def refuser() -> Iterator[Receiver]:
    """An HTTP endpoint refusing every request with 400 (a permanent failure: dead letters)."""
    with Receiver([400] * 100) as r:
        yield r


def sql_counts(url: str) -> dict[tuple[str, str], int]:
    """The store's own count, by a connection of the test's (not the engine's code)."""
    db = create_engine(url)
    try:
        with db.connect() as conn:
            rows = conn.execute(text("SELECT channel, status, count(*) FROM messages GROUP BY channel, status"))
            return {(c, s): n for c, s, n in rows}
    finally:
        db.dispose()


def test_counters_equal_sql_counts_after_a_mixed_run(
    admin_api_factory: Callable[..., AdminAPI], refuser: Receiver, tmp_path: Path, store_url: str
) -> None:
    hook = webhook_channel("hook", out=tmp_path / "out")
    hook["destinations"] = [{"name": "ehr", "type": "http", "url": refuser.url + "/", "timeout_s": 5}]
    api = admin_api_factory([webhook_channel(out=tmp_path / "out"), hook], database_url=store_url)
    sender = api.client(None)
    for _ in range(3):
        assert sender.post("/webhooks/events", json=PATIENT, headers=FHIR).status_code == 202  # sent
    no_identifier = {"resourceType": "Patient", "name": [{"family": "X"}]}
    assert sender.post("/webhooks/events", json=no_identifier, headers=FHIR).status_code == 202  # -> error
    empty = {"resourceType": "Bundle", "type": "collection", "entry": []}
    assert sender.post("/webhooks/events", json=empty, headers=FHIR).status_code == 202  # -> filtered
    assert sender.post("/webhooks/hook", json=PATIENT, headers=FHIR).status_code == 202  # -> dead (400)
    finished = {MessageStatus.sent, MessageStatus.error, MessageStatus.dead, MessageStatus.filtered}
    wait_until(lambda: all(s in finished for _, s in sql_counts(store_url)) and
               sum(sql_counts(store_url).values()) == 6, 30, "the messages finished")  # fmt: skip

    expected = sql_counts(store_url)
    assert expected == {("events", "sent"): 3, ("events", "error"): 1, ("events", "filtered"): 1, ("hook", "dead"): 1}
    got = {c["name"]: c["counters"] for c in api.client("viewer").get("/api/v1/channels").json()["channels"]}
    for name in ("events", "hook"):
        mine = {s: n for (c, s), n in expected.items() if c == name}
        assert got[name]["received"] == sum(mine.values())
        assert got[name]["sent"] == mine.get("sent", 0)
        assert got[name]["errored"] == mine.get("error", 0)
        assert got[name]["dead"] == mine.get("dead", 0)
        assert got[name]["filtered"] == mine.get("filtered", 0)
        assert got[name]["queued"] == sum(mine.get(s, 0) for s in ("received", "transformed", "held"))
    # and the Prometheus metrics of the same run (one engine process, an empty store at its start)
    registry = api.engine.metrics.registry

    def metric(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    for name in ("events", "hook"):
        mine = {s: n for (c, s), n in expected.items() if c == name}
        assert metric("interlink_messages_received_total", channel=name, status="202") == sum(mine.values())
        assert metric("interlink_messages_processed_total", channel=name, status="error") == mine.get("error", 0)
        assert metric("interlink_messages_processed_total", channel=name, status="filtered") == mine.get("filtered", 0)
        transformed = mine.get("sent", 0) + mine.get("dead", 0)
        assert metric("interlink_messages_processed_total", channel=name, status="transformed") == transformed
    assert metric("interlink_dead_letters_total", destination="ehr") == expected["hook", "dead"]


def test_queue_depth_and_oldest_age_from_the_store(admin_api_factory: Callable[..., AdminAPI]) -> None:
    api = admin_api_factory(workers=False, sweeper={"interval_s": 3600, "grace_s": 3600})
    sender = api.client(None)
    ids = [sender.post("/webhooks/events", json=PATIENT, headers=FHIR).json()["message_id"] for _ in range(3)]
    api.store.finish_processing([ProcessResult(ids[0], MessageStatus.transformed, bundle=b"{}",
                                               destinations=("ndjson",), channel="events", targets=("",))])  # fmt: skip
    asked = time.time()
    listed = api.client("viewer").get("/api/v1/queues").json()["queues"]
    answered = time.time()
    rows = {(q["channel"], q["destination"]): q for q in listed}
    assert set(rows) == {("events", None), ("events", "ndjson")}
    assert (rows["events", None]["depth"], rows["events", "ndjson"]["depth"]) == (2, 1)
    assert rows["events", "ndjson"]["by_status"] == {"pending": 1}
    oldest = min(api.store.message(i).received_at for i in ids[1:])  # type: ignore[union-attr]
    # the age of the oldest message waiting, as of some moment while the request was answered
    assert asked - oldest - 0.001 <= rows["events", None]["oldest_age_s"] <= answered - oldest + 0.001


def test_reload_applies_new_channels_bounds_and_keeps_a_pause(admin_api_factory: Callable[..., AdminAPI]) -> None:
    api = admin_api_factory(workers=False, sweeper={"interval_s": 3600, "grace_s": 3600})
    admin, sender = api.client("admin"), api.client(None)
    channels = api.tmp / "channels"
    assert admin.post("/api/v1/channels/events/pause").status_code == 200
    events = yaml.safe_load((channels / "events.yaml").read_text())
    events["destinations"].append({"name": "copy", "type": "file", "path": str(api.tmp / "out" / "copy.ndjson")})
    (channels / "events.yaml").write_text(yaml.safe_dump(events))
    second = webhook_channel("second", out=api.tmp / "out")
    second["backlog"] = {"slow_at": 0, "refuse_at": 1}
    (channels / "second.yaml").write_text(yaml.safe_dump(second))
    assert admin.post("/api/v1/channels/reload").json() == {"changed": ["events", "second"], "mappings": []}
    listed = {c["name"]: c for c in admin.get("/api/v1/channels").json()["channels"]}
    assert (listed["events"]["state"], listed["events"]["destinations"]) == ("paused", ["ndjson", "copy"])
    assert sender.post("/webhooks/events", json=PATIENT, headers=FHIR).status_code == 503  # still paused
    assert sender.post("/webhooks/second", json=PATIENT, headers=FHIR).status_code == 202
    assert sender.post("/webhooks/second", json=PATIENT, headers=FHIR).status_code == 503  # its backlog is full


def test_a_paused_mllp_channel_naks_ae_and_stores_nothing(
    admin_api_factory: Callable[..., AdminAPI], tmp_path: Path
) -> None:
    port = free_port()
    lab = {"name": "lab", "source": {"type": "mllp", "host": "127.0.0.1", "port": port, "accept": ["ORU^R01"]},
           "identifiers": {"authority": "HOSP"},
           "destinations": [{"name": "ndjson", "type": "file", "path": str(tmp_path / "lab.ndjson")}]}  # fmt: skip
    api = admin_api_factory([lab], workers=False, sweeper={"interval_s": 3600, "grace_s": 3600})
    admin = api.client("admin")
    # no maps are compiled here: the channel refuses ORU with AR, and stores it (with its error)
    assert b"MSA|AR|C1" in send("127.0.0.1", port, [oru("C1")])[0]
    assert admin.post("/api/v1/channels/lab/pause").status_code == 200
    [nak] = send("127.0.0.1", port, [oru("C2")])
    assert b"MSA|AE|C2" in nak and b"paused" in nak
    assert len(api.store.list_messages()) == 1
    assert admin.post("/api/v1/channels/lab/resume").status_code == 200
    assert b"MSA|AR|C3" in send("127.0.0.1", port, [oru("C3")])[0]
    assert admin.post("/api/v1/channels/lab/stop").status_code == 200
    with pytest.raises(OSError):
        send("127.0.0.1", port, [oru("C4")], timeout_s=5)
    assert len(api.store.list_messages()) == 2


def test_readiness_follows_channel_control_and_reload(admin_api: AdminAPI) -> None:
    admin, probe = admin_api.client("admin"), admin_api.client(None)

    def checks() -> set[str]:
        r = probe.get("/readyz")
        assert r.status_code == 200  # a channel an operator stopped does not make the engine unready
        return set(r.json()["checks"])

    assert {"channel:events", "destination:events/ndjson"} <= checks()
    admin.post("/api/v1/channels/events/stop")
    assert "channel:events" not in checks()
    admin.post("/api/v1/channels/events/start")
    assert "channel:events" in checks()
    second = webhook_channel("second", out=admin_api.tmp / "out")
    (admin_api.tmp / "channels" / "second.yaml").write_text(yaml.safe_dump(second))
    assert admin.post("/api/v1/channels/reload").json() == {"changed": ["second"], "mappings": []}
    assert {"channel:second", "destination:second/ndjson"} <= checks()


def test_a_paused_dicom_channel_answers_a700_and_still_assembles_what_it_took(
    admin_api_factory: Callable[..., AdminAPI], tmp_path: Path
) -> None:
    imaging = {"name": "imaging", "source": {"type": "dicom", "port": 0, "objects_dir": str(tmp_path / "objects"),
                                             "fsync": False, "quiet_period_s": 0.2},
               "destinations": [{"name": "out", "type": "file", "path": str(tmp_path / "imaging.ndjson")}]}  # fmt: skip
    api = admin_api_factory([imaging], workers=False, sweeper={"interval_s": 3600, "grace_s": 3600})
    files = make_study(tmp_path / "in", 1, 3)

    def store_one(f: Path) -> int:
        ae = AE(ae_title="MODALITY")
        ae.requested_contexts = StoragePresentationContexts[:120]
        port = api.engine.sources["imaging"].port  # type: ignore[attr-defined]
        assoc = ae.associate("127.0.0.1", port, ae_title="INTERLINK")
        assert assoc.is_established
        try:
            return int(assoc.send_c_store(f).Status)
        finally:
            assoc.release()

    assert store_one(files[0]) == 0
    assert api.client("admin").post("/api/v1/channels/imaging/pause").status_code == 200
    assert store_one(files[1]) == 0xA700
    # the instance taken before the pause still becomes its study's message (assembly is not refused)
    wait_until(lambda: any(m.message_type == "study" for m in api.store.list_messages()), 30, "the study")
    assert len([m for m in api.store.list_messages() if m.message_type != "study"]) == 1
    assert api.client("admin").post("/api/v1/channels/imaging/resume").status_code == 200
    assert store_one(files[2]) == 0
