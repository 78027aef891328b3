"""The seam for destinations that send stored objects: which files a message refers to, and the pipeline
handing them (not the bundle) to such a destination, with the same attempt records and dead-letter path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from engine.config.channel import Channel
from engine.destinations import Destination, Health, Outcome, Result, SendsObjects, StoredFile, make_destination
from engine.destinations.stored import object_store, stored_files
from engine.pipeline import Pipeline
from engine.store import ContentKind, NewMessage, Store
from engine.store.objects import ObjectStore

SHA = ["a" * 64, "b" * 64]


class Recorder:
    """A SendsObjects destination that records what it was handed."""

    name = "pacs"

    def __init__(self, outcome: Outcome = Outcome.SENT) -> None:
        self.outcome = outcome
        self.handed: list[tuple[list[StoredFile], str]] = []

    def send(self, bundle: dict[str, Any], *, message_id: str) -> Result:
        raise AssertionError("a SendsObjects destination is never sent the bundle")

    def send_objects(self, objects: Sequence[StoredFile], *, message_id: str) -> Result:
        self.handed.append((list(objects), message_id))
        return Result(self.outcome, error=None if self.outcome is Outcome.SENT else "refused", request=b"[1]")

    def healthcheck(self) -> Health:
        return Health(True)

    def close(self) -> None:
        pass


def test_stored_files_of_a_study_or_an_instance_document(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    study = orjson.dumps(
        {"assembled_at": 1, "instances": [{"object": SHA[0], "size": 5}, {"object": SHA[1], "size": 7}]}
    )
    assert stored_files(study, store) == [
        StoredFile(tmp_path / "aa" / SHA[0], SHA[0], 5),
        StoredFile(tmp_path / "bb" / SHA[1], SHA[1], 7),
    ]
    assert stored_files(orjson.dumps({"object": SHA[0], "size": 5}), store) == [
        StoredFile(tmp_path / "aa" / SHA[0], SHA[0], 5)
    ]
    for raw in (None, b"", b"MSH|^~\\&|", b"[1]", b'{"object": "../../etc/passwd"}', b'{"instances": 3}'):
        assert stored_files(raw, store) == []


def test_only_sources_with_an_object_folder_have_an_object_store(tmp_path: Path) -> None:
    dicom = Channel.model_validate({"name": "i", "source": {"type": "dicom", "port": 0, "objects_dir": str(tmp_path)},
                                    "destinations": [{"name": "f", "type": "file", "path": "x"}]})  # fmt: skip
    mllp = Channel.model_validate({"name": "l", "source": {"type": "mllp", "port": 0},
                                   "destinations": [{"name": "f", "type": "file", "path": "x"}]})  # fmt: skip
    found = object_store(dicom.source)
    assert found is not None and found.root == tmp_path
    assert object_store(mllp.source) is None


def built(destination: dict[str, Any]) -> Destination:
    channel = {"name": "i", "source": {"type": "dicom", "port": 0}, "destinations": [destination]}
    return make_destination(Channel.model_validate(channel).destinations[0])


def test_the_registered_kinds_send_objects_and_the_bundle_kinds_do_not() -> None:
    assert isinstance(Recorder(), SendsObjects)
    dicom = built({"name": "p", "type": "dicom", "host": "h", "port": 104, "called_ae_title": "PACS"})
    stow = built({"name": "s", "type": "stow", "base_url": "http://pacs.test/dicom-web"})
    file = built({"name": "f", "type": "file", "path": "x"})
    assert isinstance(dicom, SendsObjects) and isinstance(stow, SendsObjects) and not isinstance(file, SendsObjects)
    for d in (dicom, stow, file):
        d.close()


def pipeline(tmp_path: Path, recorder: Recorder, source: dict[str, Any]) -> tuple[Pipeline, Store]:
    store = Store(f"sqlite:///{tmp_path}/s.db")
    channel = Channel.model_validate({"name": "imaging", "source": source,
        "destinations": [{"name": "pacs", "type": "dicom", "host": "h", "port": 104, "called_ae_title": "PACS",
                          "retry": {"max_attempts": 1}}]})  # fmt: skip

    def make(config: Any) -> Destination:
        return recorder  # type: ignore[return-value]

    return Pipeline(store, None, [channel], make=make), store  # type: ignore[arg-type]


def transformed(store: Store, raw: bytes) -> str:
    [accepted] = store.insert_messages([NewMessage(channel="imaging", raw=raw, kind="dicom")])
    assert store.mark_transformed(accepted.id, b'{"resourceType": "Bundle"}', ["pacs"])
    return accepted.id


def test_the_pipeline_hands_the_stored_files_and_records_the_attempt(tmp_path: Path) -> None:
    recorder = Recorder()
    p, store = pipeline(tmp_path, recorder, {"type": "dicom", "port": 0, "objects_dir": str(tmp_path / "objects")})
    raw = orjson.dumps({"instances": [{"object": SHA[1], "size": 1}, {"object": SHA[0], "size": 2}]})
    message_id = transformed(store, raw)
    decision = p.deliver(message_id, "pacs")
    assert decision.status == "sent" and decision.dead == []
    [(files, handed_id)] = recorder.handed
    assert handed_id == message_id
    assert [(f.path, f.sha256) for f in files] == [(tmp_path / "objects" / s[:2] / s, s) for s in (SHA[1], SHA[0])]
    [attempt] = store.attempts_of(message_id)
    assert (attempt.outcome, attempt.number) == ("sent", 1)
    assert store.content(message_id, ContentKind.sent, "pacs") == b"[1]"
    p.close()
    store.close()


def test_a_permanent_refusal_goes_to_the_one_dead_letter_door(tmp_path: Path) -> None:
    recorder = Recorder(Outcome.PERMANENT)
    p, store = pipeline(tmp_path, recorder, {"type": "dicom", "port": 0})
    message_id = transformed(store, orjson.dumps({"instances": [{"object": SHA[0], "size": 1}]}))
    decision = p.deliver(message_id, "pacs")
    [gave_up] = decision.dead
    assert gave_up.reason == "permanent failure after 1 attempt(s): refused"
    assert [len(files) for files, _ in recorder.handed] == [1]  # (an HL7 channel cannot have it: test_channel)
    p.close()
    store.close()
