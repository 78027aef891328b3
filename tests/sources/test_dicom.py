"""The DICOM source against real senders: dcmtk's ``echoscu``/``storescu`` (skipped locally when dcmtk is
absent, a failure under CI=true) and pynetdicom as an SCU, with a real store and object store."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from engine.config.channel import Channel
from engine.errors import StoreUnavailable
from engine.ingest import GroupCommitter, Ingest
from engine.sources.dicom import DicomSource
from engine.store import MessageStatus, Store
from engine.store.schema import ContentKind
from engine.transform import load_mappings
from engine.transform.authority import Identifiers
from engine.transform.pool import Job, map_one
from tests.integration.dicom_data import make_study

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} (Debian dcmtk) is not installed")
        pytest.skip(f"{tool} (Debian dcmtk) is not installed")
    return path


class Rig:
    """A DICOM channel's source on a free port, with its store, object store and committed ids."""

    def __init__(self, tmp: Path, **source: object) -> None:
        self.store = Store(f"sqlite:///{tmp}/store.db")
        self.queued: list[str] = []
        self.committer = GroupCommitter(self.store, self.queued.extend)
        self.channel = Channel.model_validate(
            {
                "name": "imaging",
                "source": {"type": "dicom", "port": 0, "objects_dir": str(tmp / "objects"), "fsync": False,
                           "quiet_period_s": 0.2, **source},
                "destinations": [{"name": "out", "type": "file", "path": str(tmp / "out.ndjson")}],
            }
        )  # fmt: skip
        self.source = DicomSource(self.channel.source, self.channel, Ingest(self.committer))  # type: ignore[arg-type]

    def close(self) -> None:
        asyncio.run(self.source.stop())
        self.committer.close()
        self.store.close()

    @property
    def port(self) -> int:
        return self.source.port

    def messages(self, message_type: str | None = None) -> list[object]:
        rows = self.store.list_messages(limit=10_000)
        return [r for r in rows if message_type is None or r.message_type == message_type]

    def wait_studies(self, n: int, timeout_s: float = 15.0) -> list[object]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.messages("study")
            if len(found) >= n and self.source.assembler.idle():
                return found
            time.sleep(0.05)
        raise AssertionError(f"expected {n} study message(s), found {len(self.messages('study'))}")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    asyncio.run(r.source.start())
    yield r
    r.close()


def storescu(
    port: int, *files: Path, calling: str = "MODALITY", extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need("storescu"), "-aet", calling, "-aec", "INTERLINK", *extra, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def send_pynetdicom(port: int, files: list[Path], calling: str = "MODALITY") -> list[int]:
    ae = AE(ae_title=calling)
    ae.requested_contexts = StoragePresentationContexts[:120]
    assoc = ae.associate("127.0.0.1", port, ae_title="INTERLINK")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(f).Status) for f in files]
    finally:
        assoc.release()


def test_c_echo_with_dcmtk(rig: Rig) -> None:
    done = subprocess.run(
        [need("echoscu"), "-aet", "MODALITY", "-aec", "INTERLINK", "127.0.0.1", str(rig.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def test_one_instance_is_committed_before_success_and_assembled_into_one_study(rig: Rig, tmp_path: Path) -> None:
    [file] = make_study(tmp_path / "in", 1, 1)
    done = storescu(rig.port, file)
    assert done.returncode == 0, done.stderr
    [instance] = rig.messages("instance")
    assert instance.kind == "dicom" and instance.status in (MessageStatus.held, MessageStatus.grouped)
    # the object is the instance as it came over the wire (dcmtk may re-encode a file to the syntax agreed)
    doc = orjson.loads(rig.store.content(instance.id, ContentKind.raw))
    stored = pydicom.dcmread(rig.source.objects.path(doc["object"]))
    sent = pydicom.dcmread(file)
    assert stored.SOPInstanceUID == sent.SOPInstanceUID and stored.PixelData == sent.PixelData
    [study] = rig.wait_studies(1)
    assert study.status == MessageStatus.received and study.id in rig.queued
    assert rig.store.message(instance.id).status == MessageStatus.grouped


def test_a_study_over_two_associations_maps_to_one_imaging_study_with_every_instance(rig: Rig, tmp_path: Path) -> None:
    files = make_study(tmp_path / "in", 2, 6)
    first, second = files[:5], files[5:]
    assert send_pynetdicom(rig.port, first) == [0] * 5
    assert send_pynetdicom(rig.port, second) == [0] * 7
    studies = rig.wait_studies(1)
    newest = max(studies, key=lambda r: r.id)
    raw = rig.store.content(newest.id, ContentKind.raw)
    assert raw is not None
    mapped = map_one(load_mappings(MAPPINGS), Job(raw, "", None, "full", None, Identifiers(), "dicom"))
    assert mapped.error is None and mapped.bundle is not None
    resources = [e["resource"] for e in orjson.loads(mapped.bundle)["entry"]]
    [img] = [r for r in resources if r["resourceType"] == "ImagingStudy"]
    assert img["numberOfSeries"] == 2 and img["numberOfInstances"] == 12
    assert sorted(len(s["instance"]) for s in img["series"]) == [6, 6]
    assert all(held.status == MessageStatus.grouped for held in rig.messages("instance"))


def test_the_same_study_again_creates_nothing_new(rig: Rig, tmp_path: Path) -> None:
    files = make_study(tmp_path / "in", 1, 3)
    send_pynetdicom(rig.port, files)
    rig.wait_studies(1)
    assert send_pynetdicom(rig.port, files) == [0, 0, 0]
    time.sleep(0.6)  # longer than the quiet period
    assert len(rig.wait_studies(1)) == 1
    statuses = sorted(r.status for r in rig.messages("instance"))
    assert statuses == ["duplicate"] * 3 + ["grouped"] * 3


def test_a_calling_ae_title_not_allowed_is_rejected_at_association(tmp_path: Path) -> None:
    r = Rig(tmp_path, allowed_calling_ae_titles=["CT01"])
    asyncio.run(r.source.start())
    try:
        ae = AE(ae_title="INTRUDER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", r.port, ae_title="INTERLINK")
        assert assoc.is_rejected
        ae = AE(ae_title="CT01")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", r.port, ae_title="INTERLINK")
        assert assoc.is_established
        assoc.release()
    finally:
        r.close()


def test_a_malformed_dataset_gets_c000_and_is_stored_with_its_error(rig: Rig, tmp_path: Path) -> None:
    from pynetdicom import _config

    [good] = make_study(tmp_path / "in", 1, 1)
    ds = pydicom.dcmread(good)
    bad = tmp_path / "bad.dcm"
    # valid file meta, then a dataset whose second element claims 512 bytes and holds 5
    meta_len = 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
    body = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + b"\x08\x00\x16\x00UI\x00\x02" + b"1.2.3"
    bad.write_bytes(good.read_bytes()[:meta_len] + body)
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes as they are, undecoded
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", rig.port, ae_title="INTERLINK")
        status = assoc.send_c_store(bad)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    assert int(status.Status) == 0xC000
    [row] = rig.messages("instance")
    assert row.status == MessageStatus.error and row.error == "DICOM dataset ends inside an element"
    doc = orjson.loads(rig.store.content(row.id, ContentKind.raw))
    assert rig.source.objects.exists(doc["object"])  # kept with its error


def test_store_unavailable_gives_a700_and_nothing_is_claimed(rig: Rig, tmp_path: Path) -> None:
    files = make_study(tmp_path / "in", 1, 2)

    def broken(batch: object) -> object:
        raise StoreUnavailable("message store commit failed (OperationalError)")

    real = rig.store.insert_messages
    rig.store.insert_messages = broken  # type: ignore[method-assign]
    try:
        assert send_pynetdicom(rig.port, files) == [0xA700, 0xA700]
    finally:
        rig.store.insert_messages = real  # type: ignore[method-assign]
    assert rig.messages() == []
    assert send_pynetdicom(rig.port, files) == [0, 0]


def test_compressed_transfer_syntax_is_stored_as_received(rig: Rig, tmp_path: Path) -> None:
    source = Path(get_testdata_file("JPEG2000.dcm"))
    done = storescu(rig.port, source, extra=("-xw", "-R"))  # propose only JPEG 2000: no conversion
    assert done.returncode == 0, done.stderr
    [row] = rig.messages("instance")
    doc = orjson.loads(rig.store.content(row.id, ContentKind.raw))
    assert doc["transfer_syntax"] == pydicom.dcmread(source).file_meta.TransferSyntaxUID
    stored = pydicom.dcmread(rig.source.objects.path(doc["object"]))
    assert stored.PixelData == pydicom.dcmread(source).PixelData  # never transcoded


@pytest.fixture
def dcmtk_folder(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "folder"
    make_study(folder, 2, 4)
    yield folder


def test_storescu_folder_mode_gives_one_study(rig: Rig, dcmtk_folder: Path) -> None:
    done = storescu(rig.port, dcmtk_folder, extra=("+sd", "+r"))
    assert done.returncode == 0, done.stderr
    [study] = rig.wait_studies(1)
    assert len(orjson.loads(rig.store.content(study.id, ContentKind.raw))["instances"]) == 8


def test_private_elements_stay_in_the_object_only(tmp_path: Path) -> None:
    """The instance document leaves private elements out, at the top and inside sequence items; the stored
    object keeps them (it is stored as received)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from engine.sources.dicom_study import read_instance
    from engine.store.objects import ObjectStore

    [path] = make_study(tmp_path / "in", 1, 1)
    ds = pydicom.dcmread(path)
    ds.add_new(0x00091010, "LO", "TOP-SECRET")
    item = Dataset()
    item.CodeValue = "T-D1100"
    item.add_new(0x00111010, "LO", "NESTED-SECRET")
    ds.AnatomicRegionSequence = Sequence([item])
    ds.save_as(path)
    stored = ObjectStore(tmp_path / "objects", fsync=False).put_file(path)
    instance, error = read_instance(path, stored, "MODALITY")
    assert error is None and instance is not None
    header = orjson.loads(instance.document)["header"]
    assert "00091010" not in header
    assert header["00082218"]["Value"][0] == {"00080100": {"vr": "SH", "Value": ["T-D1100"]}}
    assert b"SECRET" not in instance.document and b"NESTED-SECRET" in path.read_bytes()


def test_the_receivers_sockets_send_without_delay(rig: Rig) -> None:
    """pynetdicom leaves Nagle on; the source turns it off on each association (a response waited for the
    sender's delayed ACK)."""
    import socket

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", rig.port, ae_title="INTERLINK")
    assert assoc.is_established
    try:
        [server_side] = rig.source._server.active_associations
        sock = server_side.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        assoc.release()
