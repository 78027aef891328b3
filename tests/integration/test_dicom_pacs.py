"""DICOM forward (C-STORE) and STOW-RS to a real Orthanc, through the pipeline and real Dramatiq actors
(in-memory broker). A study sent to the channel's real DICOM source (or, where the source would refuse
it, stored with the source's own functions) is processed and delivered: every instance reaches Orthanc as
stored; a PACS that is down is retried until it is back; a permanent refusal is dead-lettered and
replayed once the PACS takes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import orjson
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import split_dataset

from engine.config.channel import Channel
from engine.ingest import GroupCommitter, Ingest
from engine.pipeline import Pipeline
from engine.queue.actors import Actors
from engine.queue.broker import make_broker
from engine.sources.dicom import DicomSource
from engine.sources.dicom_study import read_instance, study_document
from engine.store import ContentKind, NewMessage, Store
from engine.store.objects import ObjectStore
from engine.transform.limits import Limits
from tests.integration.harness import wait_until
from tests.integration.orthanc import AE_TITLE, Orthanc, orthanc

__all__ = ["orthanc"]  # the module-scoped fixture, imported to be used here

#: pydicom's files in five transfer syntaxes: explicit VR LE (CT, MR), JPEG baseline, RLE, JPEG 2000
SOURCES = ("CT_small.dcm", "MR_small.dcm", "JPEG-lossy.dcm", "SC_rgb_rle.dcm", "JPEG2000.dcm")
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.9999.1"

#: pynetdicom 3.0 leaves the socket of a refused connection to the garbage collector (see the unit tests)
REFUSED_SOCKET = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)


class StudyMaps:
    """Stands in for the DICOM maps (compiling every map takes seconds): one Patient per study message.
    The destinations under test send the study's stored instances, not this bundle."""

    timezone = "UTC"
    limits = Limits()

    def for_kind(self, kind: str) -> StudyMaps:
        return self

    def transform(self, message: Any, **options: Any) -> dict:
        patient = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": "P-1"}]}
        return {"resourceType": "Bundle", "type": "transaction",
                "entry": [{"resource": patient, "request": {"method": "POST", "url": "Patient"}}]}  # fmt: skip


def make_study(folder: Path, *, generated: int = 3, private: bool = False) -> list[Path]:
    """pydicom's files made one study (new UIDs, compressed pixel data kept as it is), plus ``generated``
    copies of the CT; ``private``: a single CT and an instance of a SOP class Orthanc does not know."""
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    names = ["CT_small.dcm", "CT_small.dcm"] if private else [*SOURCES, *["CT_small.dcm"] * generated]
    out = []
    for i, name in enumerate(names):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.IssuerOfPatientID, ds.InstanceNumber = "P-1", "HOSP", i + 1
        if private and i == 1:
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = PRIVATE_SOP_CLASS
        path = folder / f"{i}-{name}"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


class Rig:
    """A channel (DICOM source's object store, one destination), its store, pipeline, actors and worker."""

    def __init__(self, tmp: Path, destination: dict[str, Any]) -> None:
        self.objects = ObjectStore(tmp / "objects", fsync=False)
        self.store = Store(f"sqlite:///{tmp}/store.db")
        destination = {"name": "pacs", "retry": {"max_attempts": 50, "min_backoff_ms": 100, "max_backoff_ms": 300},
                       **destination}  # fmt: skip
        channel = Channel.model_validate(
            {
                "name": "imaging",
                "source": {
                    "type": "dicom",
                    "port": 0,
                    "objects_dir": str(tmp / "objects"),
                    "fsync": False,
                    "quiet_period_s": 0.2,
                },
                "destinations": [destination],
            }
        )
        self.channel = channel
        self.pipeline = Pipeline(self.store, StudyMaps(), [channel])  # type: ignore[arg-type]
        self.broker = make_broker("memory://")
        self.actors = Actors(self.broker, self.pipeline)
        self.worker = dramatiq.Worker(self.broker, worker_threads=1, worker_timeout=50)
        self.worker.start()
        self.committed: list[str] = []
        self.committer: GroupCommitter | None = None
        self.source: DicomSource | None = None

    def receive_over_dicom(self, files: list[Path]) -> tuple[str, dict[str, bytes]]:
        """Send the files to the channel's DICOM source (a real SCP: what it stores is what pynetdicom wrote
        while receiving) and wait for its study message, which it queues for processing like the engine does;
        returns the message id and the stored bytes of each instance by SOP Instance UID."""

        def committed(ids: list[str]) -> None:
            self.committed.extend(ids)
            self.actors.enqueue_process(ids)

        self.committer = GroupCommitter(self.store, committed)
        self.source = DicomSource(self.channel.source, self.channel, Ingest(self.committer), objects=self.objects)  # type: ignore[arg-type]
        asyncio.run(self.source.start())
        ae = AE(ae_title="MODALITY")
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])  # as it is: no conversion
        assoc = ae.associate("127.0.0.1", self.source.port, ae_title="INTERLINK")
        assert assoc.is_established
        try:
            assert [int(assoc.send_c_store(path).Status) for path in files] == [0] * len(files)
        finally:
            assoc.release()
        wait_until(lambda: bool(self.committed), 30, "the study assembled")
        [message_id] = self.committed
        document = orjson.loads(self.store.content(message_id, ContentKind.raw) or b"")
        stored = {}
        for instance in document["instances"]:
            data = self.objects.path(instance["object"]).read_bytes()
            stored[instance["header"]["00080018"]["Value"][0]] = data
        return message_id, stored

    def receive(self, files: list[Path]) -> tuple[str, dict[str, bytes]]:
        """Store the files as the DICOM source does and commit one study message; returns its id and the
        stored bytes of each instance by SOP Instance UID."""
        docs, stored = [], {}
        for path in files:
            obj = self.objects.put_file(path)
            instance, error = read_instance(path, obj, "MODALITY")
            assert instance is not None and error is None
            docs.append(instance.document)
            stored[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path.read_bytes()
        document, patient, calling, _ = study_document(docs, time.time())
        [accepted] = self.store.insert_messages(
            [
                NewMessage(
                    channel="imaging", raw=document, kind="dicom", message_type="study", sender=calling, lane=patient
                )
            ]
        )
        self.actors.enqueue_process([accepted.id])
        return accepted.id, stored

    def status(self, message_id: str) -> str:
        row = self.store.delivery(message_id, "pacs")
        return "" if row is None else str(row.status)

    def close(self) -> None:
        if self.source is not None:
            asyncio.run(self.source.stop())
        if self.committer is not None:
            self.committer.close()
        self.worker.stop()
        self.broker.close()
        self.pipeline.close()
        self.store.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Rig]]:
    made: list[Rig] = []

    def build(destination: dict[str, Any]) -> Rig:
        made.append(Rig(tmp_path, destination))
        return made[-1]

    yield build
    for r in made:
        r.close()


@pytest.fixture
def pacs(orthanc: Orthanc) -> Orthanc:
    orthanc.clear()
    return orthanc


def forward_to(pacs: Orthanc) -> dict[str, Any]:
    return {"type": "dicom", "host": "127.0.0.1", "port": pacs.dicom_port, "called_ae_title": AE_TITLE,
            "connect_timeout_s": 2, "acse_timeout_s": 10, "dimse_timeout_s": 10}  # fmt: skip


def dataset(data: bytes, where: Path) -> tuple[bytes, pydicom.Dataset]:
    """The bytes after the file meta group of a Part 10 file, and the file read."""
    where.write_bytes(data)
    _, offset = split_dataset(where)
    return data[offset:], pydicom.dcmread(where)


def undefined_length_sequences(ds: pydicom.Dataset) -> bool:
    return any(e.VR == "SQ" and e.is_undefined_length for e in ds.iterall())


def test_forward_puts_every_instance_in_orthanc_as_stored(
    rig: Callable[..., Rig], pacs: Orthanc, tmp_path: Path
) -> None:
    r = rig(forward_to(pacs))
    message_id, stored = r.receive_over_dicom(make_study(tmp_path / "study"))
    wait_until(lambda: r.status(message_id) == "sent", 60, "forwarded")
    got = pacs.files()
    assert sorted(got) == sorted(stored) and len(got) == 8
    for uid, original in stored.items():
        sent, ours = dataset(original, tmp_path / "ours.dcm")
        held, theirs = dataset(got[uid], tmp_path / "theirs.dcm")
        assert theirs.file_meta.TransferSyntaxUID == ours.file_meta.TransferSyntaxUID  # never transcoded
        assert theirs.PixelData == ours.PixelData
        if undefined_length_sequences(ours):
            # Orthanc (DCMTK) writes what it receives with explicit-length sequences: the same elements
            assert [(e.tag, e.value) for e in theirs.iterall()] == [(e.tag, e.value) for e in ours.iterall()]
        else:
            assert held == sent  # byte for byte as stored
    [attempt] = r.store.attempts_of(message_id)
    assert (attempt.outcome, attempt.error) == ("sent", None)


def test_stow_puts_every_instance_in_orthanc_byte_identical(
    rig: Callable[..., Rig], pacs: Orthanc, tmp_path: Path
) -> None:
    r = rig({"type": "stow", "base_url": pacs.dicomweb, "timeout_s": 30})
    message_id, stored = r.receive_over_dicom(make_study(tmp_path / "study"))
    wait_until(lambda: r.status(message_id) == "sent", 60, "stored with STOW-RS")
    assert pacs.files() == stored  # every file byte for byte, file meta included


@REFUSED_SOCKET
def test_pacs_down_is_retried_then_sent_once_it_is_up(rig: Callable[..., Rig], pacs: Orthanc, tmp_path: Path) -> None:
    r = rig(forward_to(pacs))
    pacs.stop()
    try:
        message_id, stored = r.receive(make_study(tmp_path / "study", generated=0))
        wait_until(lambda: len(r.store.attempts_of(message_id)) >= 2, 30, "retried while the PACS is down")
        assert r.status(message_id) == "retrying"
    finally:
        pacs.start()
    wait_until(lambda: r.status(message_id) == "sent", 60, "sent once the PACS is up")
    attempts = r.store.attempts_of(message_id)
    assert {a.outcome for a in attempts[:-1]} == {"retry"} and attempts[-1].outcome == "sent"
    assert attempts[0].error == "association failed (no connection, aborted or timed out)"
    assert sorted(pacs.files()) == sorted(stored)


def test_a_sop_class_the_pacs_refuses_is_dead_then_replayed(
    rig: Callable[..., Rig], pacs: Orthanc, tmp_path: Path
) -> None:
    r = rig(forward_to(pacs))
    message_id, stored = r.receive(make_study(tmp_path / "study", private=True))
    wait_until(lambda: r.status(message_id) == "dead", 30, "dead letter")
    [dead] = r.store.dead_letters()
    assert dead.message_id == message_id
    # the attempt's error first, then the dead-letter door's reason ("permanent failure after 1 attempt(s): …")
    assert dead.last_error.endswith(
        "instance 2 of 2: the PACS did not accept a private SOP class in Explicit VR Little Endian"
    )
    assert all(uid not in dead.last_error for uid in [PRIVATE_SOP_CLASS, *stored])
    assert len(pacs.instances()) == 1  # the CT went
    pacs.restart(UnknownSopClassAccepted=True)  # the PACS administrator lets the SOP class in
    try:
        for m, d in r.store.replay_dead(message_id=message_id):
            r.actors.enqueue_deliver(m, d)
        wait_until(lambda: r.status(message_id) == "sent", 30, "sent after replay")
        assert sorted(pacs.files()) == sorted(stored)
    finally:
        pacs.restart(UnknownSopClassAccepted=False)


def test_stow_refused_instances_are_dead_naming_codes(rig: Callable[..., Rig], pacs: Orthanc, tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.StudyInstanceUID  # Orthanc refuses it: FailedSOPSequence, reason 0xC000
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken, enforce_file_format=True)
    r = rig({"type": "stow", "base_url": pacs.dicomweb})
    obj = r.objects.put_file(broken)
    document = b'{"assembled_at":0,"calling_ae":"M","instances":[{"object":"%s","size":%d}]}' % (
        obj.sha256.encode(), obj.size,
    )  # fmt: skip
    [accepted] = r.store.insert_messages([NewMessage(channel="imaging", raw=document, kind="dicom")])
    r.store.mark_transformed(accepted.id, b"{}", ["pacs"])
    r.actors.enqueue_deliver(accepted.id, "pacs")
    wait_until(lambda: r.status(accepted.id) == "dead", 30, "dead letter")
    [dead] = r.store.dead_letters()
    assert dead.last_error.endswith("HTTP 400: 1 of 1 instance(s) failed (0xC000)")
    assert pacs.instances() == []
