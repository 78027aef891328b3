"""The structural diff of two bundles (engine/transform/diff.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.transform.diff import Change, MessageDiff, ResourceDiff, diff_bundles, summarize

ROOT = Path(__file__).resolve().parents[2]


def entry(url: str, resource: dict[str, Any], method: str = "PUT") -> dict[str, Any]:
    return {"fullUrl": url, "resource": resource, "request": {"method": method, "url": resource["resourceType"]}}


def bundle(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


PATIENT = {"resourceType": "Patient", "name": [{"family": "A", "given": ["B", "C"]}], "gender": "female"}


def test_the_same_bundle_has_no_difference() -> None:
    b = bundle(entry("urn:uuid:1", PATIENT))
    assert diff_bundles(b, b) == []


def test_changed_added_and_removed_paths_with_values() -> None:
    new = {**PATIENT, "name": [{"family": "A", "given": ["B"]}], "gender": "male", "birthDate": "1980-01-01"}
    [d] = diff_bundles(bundle(entry("urn:uuid:1", PATIENT)), bundle(entry("urn:uuid:1", new, method="POST")))
    assert (d.resource_type, d.key, d.op) == ("Patient", "urn:uuid:1", "changed")
    assert set(d.changes) == {
        Change("name[0].given[1]", "removed", old="C"),
        Change("gender", "changed", old="female", new="male"),
        Change("birthDate", "added", new="1980-01-01"),
        Change("request.method", "changed", old="PUT", new="POST"),
    }


def test_entries_on_one_side_only_and_changed_identity() -> None:
    obs = {"resourceType": "Observation", "status": "final"}
    old = bundle(entry("urn:uuid:1", PATIENT), entry("urn:uuid:2", obs))
    new = bundle(entry("urn:uuid:9", PATIENT), entry("urn:uuid:3", {"resourceType": "Encounter"}))
    got = {(d.resource_type, d.key, d.op) for d in diff_bundles(old, new)}
    assert got == {
        ("Patient", "urn:uuid:1 -> urn:uuid:9", "changed"),  # same type left over on both sides: paired
        ("Observation", "urn:uuid:2", "removed"),
        ("Encounter", "urn:uuid:3", "added"),
    }
    assert [d.op for d in diff_bundles(None, new)] == ["added", "added"]


def test_summary_has_paths_without_indices_and_no_values() -> None:
    d = MessageDiff("m1", "lab", "ADT^A01", "sent", "transformed")
    d.resources = [
        ResourceDiff("Patient", "u1", "changed", (Change("name[0].given[1]", "removed", old="C"),)),
        ResourceDiff("Patient", "u2", "changed", (Change("name[1].given[0]", "removed", old="D"),)),
    ]
    assert summarize([d]) == {("Patient", "name.given", "removed"): 2}
    assert "old" not in str(d.as_json(values=False)) and d.as_json()["resources"][0]["changes"][0]["old"] == "C"
    assert d.changed and not MessageDiff("m2", "lab", "", "error", "error").changed
    assert MessageDiff("m3", "lab", "", "sent", "error").changed


def test_replays_compile_again_only_when_a_file_changed(tmp_path: Path) -> None:
    import os
    import shutil

    from engine.settings import Settings
    from engine.transform.diff import Replays

    maps = tmp_path / "maps"
    (maps / "hl7v2").mkdir(parents=True)
    shutil.copytree(ROOT / "mappings" / "json", maps / "json")
    (tmp_path / "channels").mkdir()
    settings = Settings.model_validate({"mappings_dir": maps, "channels_dir": tmp_path / "channels"})
    replays = Replays(settings)
    first = replays.current()
    assert replays.current() is first
    touched = maps / "json" / "segments" / "patient-Patient.yaml"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 1_000_000))
    assert replays.current() is not first
