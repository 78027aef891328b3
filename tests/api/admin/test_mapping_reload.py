"""Hot reload of mapping files (``POST /api/v1/channels/reload``, ``interlink reload``, the watcher): a real
engine with the project's maps and a site overlay, an MLLP channel in and an NDJSON file out.

A changed overlay changes the next message's bundle; a broken map, or a channel naming a map that is gone, is
refused with file:line and the running maps stay; messages sent while the maps are swapped each end ``sent``
exactly once (rows and NDJSON lines), mapping in the worker threads and in mapping processes; the watcher
applies changed maps, in ``interlink run`` and in an ``interlink worker`` process."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from engine.cli import app
from engine.runtime import Engine
from engine.settings import Settings
from engine.sources.mllp_client import send
from engine.store.access import AuditTrail
from engine.store.schema import messages
from engine.transform.authority import Identifiers
from engine.transform.pool import Job
from tests.api.admin.conftest import AdminAPI
from tests.api.running import ROOT
from tests.integration.harness import free_port, wait_until
from tests.integration.messages import adt

HOSP = Identifiers(authority="HOSP")
GENDER_UNKNOWN = """\
segment: PID
target: Patient
description: Site rule replacing the base gender rule only.
merge: true
rules:
  gender: {value: unknown}
"""


def mllp_channel(port: int, out: Path, name: str = "adt", **extra: object) -> dict:
    return {
        "name": name,
        "source": {"type": "mllp", "port": port},
        "identifiers": {"authority": "HOSP"},
        "validation": "off",
        "destinations": [{"name": "ndjson", "type": "file", "path": str(out / f"{name}.ndjson")}],
        **extra,
    }


def patients(out: Path, name: str = "adt") -> list[dict]:
    """The Patient of each NDJSON line, in the file's order."""
    path = out / f"{name}.ndjson"
    lines = path.read_bytes().splitlines() if path.exists() else []
    return [
        e["resource"]
        for b in map(orjson.loads, lines)
        for e in b["entry"]
        if e["resource"]["resourceType"] == "Patient"
    ]


def start(factory: Callable[..., AdminAPI], tmp: Path, processes: int = 0, **settings: object) -> tuple[AdminAPI, int]:
    """The engine with the project's maps, the (empty) overlay ``site`` and the MLLP channel ``adt``."""
    port = free_port()
    (tmp / "site" / "segments").mkdir(parents=True, exist_ok=True)
    channels = [mllp_channel(port, tmp / "out"), *settings.pop("channels", [])]  # type: ignore[misc]
    api = factory(channels=channels, hl7_maps=True, mapping_overlays=[tmp / "site"], mapping_processes=processes,
                  **settings)  # fmt: skip
    return api, port


def statuses(api: AdminAPI) -> dict[str, int]:
    with api.store.work.connect() as conn:
        rows = conn.execute(messages.select().with_only_columns(messages.c.status)).all()
    out: dict[str, int] = {}
    for (status,) in rows:
        out[status] = out.get(status, 0) + 1
    return out


def test_a_changed_overlay_changes_the_next_messages_bundle(
    admin_api_factory: Callable[..., AdminAPI], tmp_path: Path
) -> None:
    api, port = start(admin_api_factory, tmp_path)
    out, admin = tmp_path / "out", api.client("admin")
    send("127.0.0.1", port, [adt("C1", mrn="M1")])
    wait_until(lambda: len(patients(out)) == 1, 30, "the first bundle")
    assert patients(out)[0]["gender"] == "male"

    (tmp_path / "site" / "segments" / "PID-Patient.yaml").write_text(GENDER_UNKNOWN)
    config = tmp_path / "engine.yaml"
    config.write_text(yaml.safe_dump({"http_host": "127.0.0.1", "http_port": api.running.port}))
    r = CliRunner().invoke(app, ["reload", "--config", str(config), "--token", api.tokens["admin"]])
    assert (r.exit_code, r.stdout) == (
        0, "no channel changed\nmapping files reloaded (1): site/segments/PID-Patient.yaml\n"
    )  # fmt: skip
    send("127.0.0.1", port, [adt("C2", mrn="M2")])
    wait_until(lambda: len(patients(out)) == 2, 30, "the second bundle")
    assert patients(out)[1]["gender"] == "unknown"
    assert admin.post("/api/v1/channels/reload").json() == {"changed": [], "mappings": []}  # nothing compiled

    entries = admin.get("/api/v1/audit", params={"action": "mapping.reload"}).json()["entries"]
    assert [(e["actor"], e["target"], e["outcome"]) for e in entries] == [
        ("test-admin", "site/segments/PID-Patient.yaml", "ok")
    ]


def test_a_broken_map_or_a_missing_channel_map_is_refused_and_the_running_maps_stay(
    admin_api_factory: Callable[..., AdminAPI], tmp_path: Path
) -> None:
    # the channel "site" maps with a site map of its own (the base ADT_A01 map under another name)
    (tmp_path / "site" / "messages").mkdir(parents=True)
    base = (ROOT / "mappings" / "hl7v2" / "messages" / "ADT_A01.yaml").read_text()
    own = tmp_path / "site" / "messages" / "ZSITE_A01.yaml"
    own.write_text(base.replace("accepts: [ADT^A01]", "accepts: [ZZZ^Z01]"))
    site_port = free_port()
    api, port = start(admin_api_factory, tmp_path, channels=[mllp_channel(site_port, tmp_path / "out", "site",
                                                                           mapping="ZSITE_A01")])  # fmt: skip
    out, admin = tmp_path / "out", api.client("admin")

    broken = tmp_path / "site" / "segments" / "PID-Patient.yaml"
    broken.write_text(GENDER_UNKNOWN.replace("gender:", "gendr:"))
    r = admin.post("/api/v1/channels/reload")
    assert r.status_code == 422
    assert re.search(r"PID-Patient\.yaml:\d+: ", r.json()["detail"]) and "gendr" in r.json()["detail"]

    broken.unlink()
    own.unlink()  # the channel "site" names a map that would be gone
    r = admin.post("/api/v1/channels/reload")
    assert r.status_code == 422
    assert re.search(r"site\.yaml:\d+: channel site: mapping 'ZSITE_A01' does not exist", r.json()["detail"])

    send("127.0.0.1", port, [adt("C1", mrn="M1")])
    send("127.0.0.1", site_port, [adt("C2", mrn="M2")])
    wait_until(lambda: len(patients(out)) + len(patients(out, "site")) == 2, 30, "both bundles")
    assert patients(out)[0]["gender"] == "male"  # the running maps: neither change applied
    assert patients(out, "site")[0]["identifier"][0]["value"] == "M2"  # its own map is still there
    entries = admin.get("/api/v1/audit", params={"action": "channel.reload"}).json()["entries"]
    assert [e["outcome"] for e in entries] == ["refused", "refused"]
    assert admin.get("/api/v1/audit", params={"action": "mapping.reload"}).json()["entries"] == []


@pytest.mark.parametrize("processes", [0, 1], ids=["in-thread", "mapping-process"])
def test_messages_sent_across_a_reload_are_each_sent_once(
    admin_api_factory: Callable[..., AdminAPI], tmp_path: Path, processes: int
) -> None:
    api, port = start(admin_api_factory, tmp_path, processes)
    out = tmp_path / "out"
    old_pids = list(api.engine.pipeline.mapper.current.pids) if processes else []
    sent, stop = [0], threading.Event()
    failures: list[BaseException] = []

    def sender() -> None:
        try:
            while not stop.is_set():
                n = sent[0]
                replies = send("127.0.0.1", port, [adt(f"C{i}", mrn=f"M{i}", visit=f"V{i}") for i in range(n, n + 5)])
                assert all(b"MSA|AA|" in reply for reply in replies)
                sent[0] = n + 5
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    thread = threading.Thread(target=sender)
    thread.start()
    try:
        wait_until(lambda: sent[0] >= 20 or bool(failures), 60, "messages before the reload")
        (tmp_path / "site" / "segments" / "PID-Patient.yaml").write_text(GENDER_UNKNOWN)
        r = api.client("admin").post("/api/v1/channels/reload")
        assert r.json() == {"changed": [], "mappings": ["site/segments/PID-Patient.yaml"]}
        during = sent[0]
        wait_until(lambda: sent[0] >= during + 20 or bool(failures), 60, "messages after the reload")
    finally:
        stop.set()
        thread.join(60)
    assert not failures
    total = sent[0]
    wait_until(lambda: statuses(api).get("sent", 0) >= total, 60, "every message sent")
    assert statuses(api) == {"sent": total}
    found = patients(out)
    mrns = [p["identifier"][0]["value"] for p in found]
    assert sorted(mrns) == sorted(f"M{i}" for i in range(total))  # every message once, none twice
    genders = {p["identifier"][0]["value"]: p["gender"] for p in found}
    assert genders["M0"] == "male" and genders[f"M{total - 1}"] == "unknown"
    if processes:  # new mapping processes; the old ones closed once their work was done
        assert set(api.engine.pipeline.mapper.current.pids).isdisjoint(old_pids)
        wait_until(lambda: not any(_alive(pid) for pid in old_pids), 30, "the old mapping processes to end")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_watcher_applies_a_changed_mapping_file(admin_api_factory: Callable[..., AdminAPI], tmp_path: Path) -> None:
    api, port = start(admin_api_factory, tmp_path, channels_watch_s=0.2)
    out, admin = tmp_path / "out", api.client("admin")

    def reloads() -> list[tuple[str, str, str, str, str]]:
        entries = admin.get("/api/v1/audit").json()["entries"]
        rows = [(e["action"], e["actor"], e["peer"], e["target"], e["outcome"]) for e in reversed(entries)]
        return [r for r in rows if r[1] == "engine"]

    pid = tmp_path / "site" / "segments" / "PID-Patient.yaml"
    pid.write_text(GENDER_UNKNOWN.replace("gender:", "gendr:"))
    wait_until(lambda: len(reloads()) == 1, 60, "the watcher tried the broken map")
    assert reloads() == [("channel.reload", "engine", "watch", "", "refused")]
    pid.write_text(GENDER_UNKNOWN)
    wait_until(lambda: len(reloads()) == 3, 60, "the watcher applied the map")
    assert reloads()[1:] == [
        ("channel.reload", "engine", "watch", "", "ok"),
        ("mapping.reload", "engine", "watch", "site/segments/PID-Patient.yaml", "ok"),
    ]
    send("127.0.0.1", port, [adt("C1", mrn="M1")])
    wait_until(lambda: len(patients(out)) == 1, 30, "the bundle")
    assert patients(out)[0]["gender"] == "unknown"


def test_a_worker_process_watches_the_mapping_files_too(tmp_path: Path) -> None:
    """``interlink worker`` (no sources, no API: no reload reaches it) follows the files with the watcher."""
    (tmp_path / "site" / "segments").mkdir(parents=True)
    (tmp_path / "channels").mkdir()
    (tmp_path / "channels" / "adt.yaml").write_text(yaml.safe_dump(mllp_channel(free_port(), tmp_path / "out")))
    settings = Settings.model_validate({
        "data_dir": tmp_path / "data", "database_url": f"sqlite:///{tmp_path}/store.db",
        "channels_dir": tmp_path / "channels", "mappings_dir": ROOT / "mappings",
        "mapping_overlays": [tmp_path / "site"], "mapping_processes": 0, "metrics_port": 0, "http_port": 0,
        "channels_watch_s": 0.2,
    })  # fmt: skip
    engine = Engine(settings, sources=False, sweeper=False)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    job = Job(adt("C1"), "utf-8", None, "off", identifiers=HOSP)
    try:
        asyncio.run_coroutine_threadsafe(engine.start(), loop).result(60)
        first = engine.mappings
        (tmp_path / "site" / "segments" / "PID-Patient.yaml").write_text(GENDER_UNKNOWN)
        trail = AuditTrail(engine.store)
        wait_until(lambda: trail.page(action="mapping.reload").entries, 60, "the worker's watcher applied the map")
        assert [(e.actor, e.peer, e.target) for e in trail.page(action="mapping.reload").entries] == [
            ("engine", "watch", "site/segments/PID-Patient.yaml")
        ]
        assert engine.mappings is not first
        [mapped] = engine.pipeline.mapper.map_many([job])
        assert mapped.bundle is not None and b'"gender":"unknown"' in mapped.bundle
    finally:
        asyncio.run_coroutine_threadsafe(engine.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_maps_swapped_by_a_reload_whose_listener_cannot_start_are_audited(
    admin_api_factory: Callable[..., AdminAPI], tmp_path: Path
) -> None:
    api, _ = start(admin_api_factory, tmp_path)
    admin = api.client("admin")
    (tmp_path / "site" / "segments" / "PID-Patient.yaml").write_text(GENDER_UNKNOWN)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        channel = mllp_channel(taken.getsockname()[1], tmp_path / "out")
        (tmp_path / "channels" / "adt.yaml").write_text(yaml.safe_dump(channel))
        r = admin.post("/api/v1/channels/reload")
    assert r.status_code == 409
    entries = admin.get("/api/v1/audit", params={"action": "channel.reload"}).json()["entries"]
    entries += admin.get("/api/v1/audit", params={"action": "mapping.reload"}).json()["entries"]
    assert sorted((e["action"], e["target"], e["outcome"]) for e in entries) == [
        ("channel.reload", "adt", "failed"), ("mapping.reload", "site/segments/PID-Patient.yaml", "ok")
    ]  # fmt: skip
    [mapped] = api.engine.pipeline.mapper.map_many([Job(adt("C1"), "utf-8", None, "off", identifiers=HOSP)])
    assert mapped.bundle is not None and b'"gender":"unknown"' in mapped.bundle  # the maps were applied
