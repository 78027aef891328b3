"""The DICOM forward destination against an in-process pynetdicom storage SCP that records the dataset bytes
each C-STORE carried and answers from a script: as stored on the wire (compressed and undefined-length
sequences included), the outcome of every status, association failures, refused contexts, TLS, C-ECHO."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from engine.destinations import DicomForwardConfig, DicomForwardDestination, Outcome, StoredFile, make_destination
from engine.destinations.dicom_forward import MAX_CONTEXTS, _batches, status_outcome
from engine.store.objects import ObjectStore
from tests.integration.harness import free_port
from tests.sources.test_mllp import make_cert

FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG-lossy.dcm", "SC_rgb_rle.dcm", "JPEG2000.dcm")
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.9999.1"

#: pynetdicom 3.0 leaves the socket of a refused connection to the garbage collector (it shuts the
#: unconnected socket down, which fails, and so never closes it): a ResourceWarning, not our leak.
REFUSED_SOCKET = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta group: what C-STORE carries."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


class Scp:
    """A storage SCP (AE ``PACS``) on a free port: records (transfer syntax, dataset bytes) per C-STORE and
    answers with the next status of ``script`` (then Success)."""

    def __init__(self, *, sop_classes: list[str] | None = None, calling: list[str] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:  # fmt: skip
        self.script: list[int] = []
        self.received: list[tuple[str, bytes]] = []
        ae = AE(ae_title="PACS")
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None and (sop_classes is None or cx.abstract_syntax in sop_classes):
                ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_called_aet = True
        if calling:
            ae.require_calling_aet = calling
        self.server = ae.start_server(("127.0.0.1", 0), block=False, ssl_context=tls,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])  # fmt: skip
        self.port = self.server.server_address[1]

    def _store(self, event: Any) -> int:
        try:
            path = event.dataset_path  # chunked receive (a process-wide setting the DICOM source turns on)
        except AttributeError:
            path = None
        data = dataset_bytes(Path(path)) if path else event.request.DataSet.getvalue()
        self.received.append((str(event.context.transfer_syntax), data))
        return self.script.pop(0) if self.script else 0x0000

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def shared_scp() -> Iterator[Scp]:
    s = Scp()
    yield s
    s.close()


@pytest.fixture
def scp(shared_scp: Scp) -> Scp:
    shared_scp.script.clear()
    shared_scp.received.clear()
    return shared_scp


@pytest.fixture
def objects(tmp_path: Path) -> ObjectStore:
    return ObjectStore(tmp_path / "objects", fsync=False)


def put(store: ObjectStore, path: Path | str) -> StoredFile:
    stored = store.put_file(Path(path))
    return StoredFile(store.path(stored.sha256), stored.sha256, stored.size)


def samples(store: ObjectStore, *names: str) -> list[StoredFile]:
    return [put(store, get_testdata_file(n)) for n in names]


def forward(port: int, **options: Any) -> DicomForwardDestination:
    config = DicomForwardConfig.model_validate(
        {"type": "dicom", "name": "pacs", "host": "127.0.0.1", "port": port, "called_ae_title": "PACS",
         "acse_timeout_s": 5, "dimse_timeout_s": 5, "network_timeout_s": 5, "connect_timeout_s": 2, **options}
    )  # fmt: skip
    dest = make_destination(config)
    assert isinstance(dest, DicomForwardDestination)
    return dest


def test_every_instance_goes_as_stored_in_its_own_transfer_syntax(scp: Scp, objects: ObjectStore) -> None:
    files = samples(objects, *FILES)
    result = forward(scp.port).send_objects(files, message_id="m-1")
    assert (result.outcome, result.error, result.status_code) == (Outcome.SENT, None, None)
    sent = [(pydicom.dcmread(f.path, stop_before_pixels=True).file_meta.TransferSyntaxUID, dataset_bytes(f.path))
            for f in files]  # fmt: skip
    assert scp.received == sent  # never transcoded: JPEG baseline, RLE, JPEG 2000 and sequence encodings kept
    assert orjson.loads(result.request or b"") == [{"object": f.sha256, "status": "0x0000"} for f in files]


def test_a_retry_sends_the_whole_study_again(scp: Scp, objects: ObjectStore) -> None:
    files = samples(objects, "CT_small.dcm", "MR_small.dcm")
    dest = forward(scp.port)
    assert dest.send_objects(files, message_id="m").outcome is Outcome.SENT
    assert dest.send_objects(files, message_id="m").outcome is Outcome.SENT
    assert [data for _, data in scp.received] == [dataset_bytes(f.path) for f in files] * 2


def test_out_of_resources_is_retry_and_ends_the_attempt(scp: Scp, objects: ObjectStore) -> None:
    scp.script = [0x0000, 0xA702]
    files = samples(objects, "CT_small.dcm", "MR_small.dcm", "SC_rgb_rle.dcm")
    result = forward(scp.port).send_objects(files, message_id="m")
    assert (result.outcome, result.error) == (
        Outcome.RETRY,
        "instance 2 of 3: C-STORE status 0xA702 (out of resources)",
    )
    assert len(scp.received) == 2


def test_cannot_understand_is_permanent_and_the_others_are_still_sent(scp: Scp, objects: ObjectStore) -> None:
    scp.script = [0xC000, 0x0000, 0xC211]
    files = samples(objects, "CT_small.dcm", "MR_small.dcm", "SC_rgb_rle.dcm")
    result = forward(scp.port).send_objects(files, message_id="m")
    assert result.outcome is Outcome.PERMANENT
    assert result.error == "instance 1 of 3: C-STORE status 0xC000 (cannot understand) (+1 more)"
    assert len(scp.received) == 3
    assert [s["status"] for s in orjson.loads(result.request or b"")] == ["0xC000", "0x0000", "0xC211"]


def test_a_warning_status_is_stored(scp: Scp, objects: ObjectStore) -> None:
    scp.script = [0xB000]
    assert forward(scp.port).send_objects(samples(objects, "CT_small.dcm"), message_id="m").outcome is Outcome.SENT


def test_a_sop_class_the_pacs_does_not_take_is_permanent_without_uids(objects: ObjectStore, tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = PRIVATE_SOP_CLASS
    ds.save_as(tmp_path / "private.dcm", enforce_file_format=True)
    scp = Scp(sop_classes=[CTImageStorage])
    try:
        files = [*samples(objects, "CT_small.dcm", "MR_small.dcm"), put(objects, tmp_path / "private.dcm")]
        result = forward(scp.port).send_objects(files, message_id="m")
    finally:
        scp.close()
    assert result.outcome is Outcome.PERMANENT
    assert result.error == (
        "instance 2 of 3: the PACS did not accept MR Image Storage in Explicit VR Little Endian (+1 more)"
    )
    assert len(scp.received) == 1  # the CT went; nothing was converted to make the others fit
    assert PRIVATE_SOP_CLASS not in str(result.error) and str(ds.SOPInstanceUID) not in str(result.error)


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (0x0000, Outcome.SENT), (0xB000, Outcome.SENT), (0xB007, Outcome.SENT),
        (0xA700, Outcome.RETRY), (0xA7FF, Outcome.RETRY), (0x0110, Outcome.RETRY), (0x0213, Outcome.RETRY),
        (0xC000, Outcome.PERMANENT), (0xCFFF, Outcome.PERMANENT), (0xA900, Outcome.PERMANENT),
        (0x0122, Outcome.PERMANENT), (0x0124, Outcome.PERMANENT), (0x0117, Outcome.PERMANENT),
        (0x0212, Outcome.PERMANENT), (0xD000, Outcome.PERMANENT),
    ],
)  # fmt: skip
def test_status_outcomes(code: int, outcome: Outcome) -> None:
    assert status_outcome(code) is outcome


@REFUSED_SOCKET
def test_pacs_down_is_retry_and_so_is_a_rejected_association(objects: ObjectStore) -> None:
    files = samples(objects, "CT_small.dcm")
    down = forward(free_port()).send_objects(files, message_id="m")
    assert (down.outcome, down.error) == (Outcome.RETRY, "association failed (no connection, aborted or timed out)")
    scp = Scp(calling=["MODALITY"])
    try:
        rejected = forward(scp.port).send_objects(files, message_id="m")
    finally:
        scp.close()
    assert (rejected.outcome, rejected.error) == (Outcome.RETRY, "association rejected")


def test_missing_or_no_instances_are_permanent_and_nothing_is_sent(scp: Scp, objects: ObjectStore) -> None:
    files = samples(objects, "CT_small.dcm", "MR_small.dcm")
    files[1].path.unlink()
    dest = forward(scp.port)
    assert (dest.send_objects(files, message_id="m").error) == "stored instance 2 of 2 is missing"
    assert dest.send_objects([], message_id="m").outcome is Outcome.PERMANENT
    assert dest.send({"resourceType": "Bundle"}, message_id="m").outcome is Outcome.PERMANENT
    assert scp.received == []


def test_more_than_128_contexts_go_over_several_associations() -> None:
    pairs = [(f"1.2.3.{i % 130}", ExplicitVRLittleEndian) for i in range(300)]
    batches = _batches(pairs)
    assert [i for b in batches for i in b] == list(range(300))
    assert all(len({pairs[i] for i in b}) <= MAX_CONTEXTS for b in batches) and len(batches) == 3


@REFUSED_SOCKET
def test_healthcheck_is_a_c_echo(scp: Scp) -> None:
    assert forward(scp.port).healthcheck().ok
    down = forward(free_port()).healthcheck()
    assert not down.ok and down.detail.startswith("association failed")


def test_over_tls_with_the_pacs_certificate_verified(objects: ObjectStore, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "pacs")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    scp = Scp(tls=server)
    try:
        tls = {"ca_file": str(cert), "server_hostname": "localhost"}
        result = forward(scp.port, tls=tls).send_objects(samples(objects, "CT_small.dcm"), message_id="m")
        assert result.outcome is Outcome.SENT and len(scp.received) == 1
        stranger, _ = make_cert(tmp_path, "stranger")
        refused = forward(scp.port, tls={"ca_file": str(stranger)}).send_objects(
            samples(objects, "CT_small.dcm"), message_id="m"
        )
        assert refused.outcome is Outcome.RETRY and len(scp.received) == 1
    finally:
        scp.close()


def test_config_checks_ae_titles_and_tls_pairs() -> None:
    base = {"type": "dicom", "name": "p", "host": "h", "port": 104}
    with pytest.raises(ValueError, match="called_ae_title"):
        DicomForwardConfig.model_validate({**base, "called_ae_title": "BAD\\AE"})
    with pytest.raises(ValueError, match="called_ae_title"):
        DicomForwardConfig.model_validate({**base, "called_ae_title": "X" * 17})
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        DicomForwardConfig.model_validate({**base, "called_ae_title": "PACS", "tls": {"cert_file": "c.pem"}})
    config = DicomForwardConfig.model_validate({**base, "called_ae_title": "PACS"})
    assert (config.calling_ae_title, config.target()) == ("INTERLINK", "dicom PACS@h:104")


def test_generated_instances_keep_their_bytes(scp: Scp, objects: ObjectStore, tmp_path: Path) -> None:
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    paths = []
    for i in range(3):
        ds = template.copy()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.save_as(tmp_path / f"g{i}.dcm", enforce_file_format=True)
        paths.append(tmp_path / f"g{i}.dcm")
    files = [put(objects, p) for p in paths]
    assert forward(scp.port).send_objects(files, message_id="m").outcome is Outcome.SENT
    assert [d for _, d in scp.received] == [dataset_bytes(p) for p in paths]


def test_pdus_are_sent_at_once(scp: Scp) -> None:
    """TCP_NODELAY on the association's socket: with Nagle on, each instance's dataset waited for the PACS's
    delayed ACK (measured to dcmtk's storescp run with TCP_NODELAY=1: 18 instances/s, 92-183 with it set)."""
    dest = forward(scp.port)
    ae = dest._ae()
    ae.add_requested_context(Verification)
    assoc = dest._associate(ae)
    try:
        assert assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        assoc.release()
