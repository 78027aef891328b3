"""DICOM end to end: the engine as shipped (``python -m engine run`` with the ``imaging`` channel) takes
studies from real senders — dcmtk's ``storescu``, pynetdicom, and Orthanc pushing what it holds — and
delivers each study to the Medplum-based FHIR test server as ONE ImagingStudy (found by its identifier
``urn:dicom:uid|urn:oid:<Study Instance UID>``) with its Patient, keyed on Patient ID + Issuer of Patient ID.

One engine and one FHIR server serve the module; each test uses its own patient and study, so the tests
need not empty the server (per_patient ordering keeps different patients independent). dcmtk and Orthanc
(installed by scripts/test-services.sh) are skipped locally when absent and a failure under CI=true.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pynetdicom import AE, StoragePresentationContexts

from engine.store.schema import FINAL_MESSAGE_STATUSES
from tests.fhir_server.launch import FhirTestServer
from tests.integration.dicom_data import make_study, make_tiny_study
from tests.integration.harness import EngineProcess, wait_until
from tests.integration.orthanc import Orthanc, orthanc

__all__ = ["orthanc"]  # the module-scoped fixture, imported to be used here
pytestmark = pytest.mark.integration

QUIET_S = 0.5  # the channel's quiet period: a study is assembled this long after its last association ends
ISSUER_SYSTEM = "urn:interlink:id:HOSP"  # Issuer of Patient ID "HOSP" read as an assigning authority


def need(tool: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.access(f"/usr/sbin/{tool}", os.X_OK) else None)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is not installed (scripts/test-services.sh installs it)")
        pytest.skip(f"{tool} is not installed")
    return path


@pytest.fixture(scope="module")
def fhir(fhir_server: FhirTestServer) -> FhirTestServer:
    fhir_server.reset()
    return fhir_server


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, fhir: FhirTestServer) -> Iterator[EngineProcess]:
    eng = EngineProcess(
        tmp_path_factory.mktemp("dicom-engine"),
        fhir_base_url=fhir.base_url,
        retry={"min_backoff_ms": 100, "max_backoff_ms": 500, "max_attempts": 1000},
        imaging={"quiet_period_s": QUIET_S},
    )
    try:
        eng.start()
        yield eng
    finally:
        eng.kill()  # its data is thrown away; a graceful stop took 7-12 s on the 2-core box


# -- senders ----------------------------------------------------------------------------------------------


def storescu(port: int, *files: Path, calling: str = "MODALITY") -> None:
    """dcmtk's storescu: every file over one association."""
    done = subprocess.run(
        [need("storescu"), "-aet", calling, "-aec", "INTERLINK", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def pynetdicom_send(
    port: int, files: list[Path], calling: str = "MODALITY", acked: list[Path] | None = None, timeout_s: float = 30
) -> list[int | None]:
    """pynetdicom over one association: each file's C-STORE status (None: no response, the peer went away).
    Files answered Success are appended to ``acked`` as they are (another thread may watch it). pynetdicom
    waits ``timeout_s`` for a response even when the peer's socket is closed (measured: 30 s after a kill)."""
    ae = AE(ae_title=calling)
    ae.dimse_timeout = timeout_s
    ae.requested_contexts = StoragePresentationContexts[:120]
    assoc = ae.associate("127.0.0.1", port, ae_title="INTERLINK")
    assert assoc.is_established
    # pynetdicom skips close() when shutdown() fails (a peer already gone): close the socket ourselves
    raw = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    out: list[int | None] = []
    try:
        for f in files:
            if not assoc.is_established:
                out.append(None)
                continue
            try:
                status = getattr(assoc.send_c_store(f), "Status", None)
            except (RuntimeError, OSError):
                status = None
            out.append(None if status is None else int(status))
            if status == 0 and acked is not None:
                acked.append(f)
    finally:
        if assoc.is_established:
            assoc.release()
        if raw is not None:
            raw.close()
    return out


# -- what the engine and the FHIR server hold ----------------------------------------------------------------


def study_uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def imaging_studies(fhir: FhirTestServer, uid: str) -> list[dict[str, Any]]:
    return fhir.search("ImagingStudy", identifier=f"urn:dicom:uid|urn:oid:{uid}")


def settled(engine: EngineProcess) -> bool:
    """Every message the engine holds is final (instances grouped or duplicate, studies sent)."""
    return all(status in FINAL_MESSAGE_STATUSES for status in engine.statuses())


def delivered(engine: EngineProcess, fhir: FhirTestServer, uid: str, instances: int, timeout_s: float = 30) -> dict:
    """Wait until the engine is settled and the server holds the study with ``instances`` instances."""

    def done() -> bool:
        found = imaging_studies(fhir, uid)
        return bool(found) and found[0].get("numberOfInstances") == instances and settled(engine)

    wait_until(done, timeout_s, f"the ImagingStudy with {instances} instances (log: {engine.tail(1500)})", 0.1)
    [study] = imaging_studies(fhir, uid)
    return study


def versions(fhir: FhirTestServer, resource: dict[str, Any]) -> int:
    url = f"{fhir.base_url}/{resource['resourceType']}/{resource['id']}/_history"
    return len(fhir.client.get(url).json().get("entry", []))


def check_study(fhir: FhirTestServer, study: dict[str, Any], files: list[Path], patient: str) -> None:
    """The ImagingStudy counts what was sent, series by series, and its subject is the one Patient."""
    per_series: dict[str, int] = {}
    for f in files:
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID)
        per_series[uid] = per_series.get(uid, 0) + 1
    assert study["numberOfSeries"] == len(per_series)
    assert study["numberOfInstances"] == len(files)
    assert {s["uid"]: len(s["instance"]) for s in study["series"]} == per_series
    [pat] = fhir.search("Patient", identifier=f"{ISSUER_SYSTEM}|{patient}")
    assert study["subject"]["reference"] == f"Patient/{pat['id']}"


# -- tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["storescu", "pynetdicom"])
def test_a_multi_series_study_over_one_association(
    engine: EngineProcess, fhir: FhirTestServer, tmp_path: Path, sender: str
) -> None:
    patient = f"P-ONE-{sender}"
    files = make_study(tmp_path, 2, 3, patient=patient)
    if sender == "storescu":
        storescu(engine.dicom_port, *files)
    else:
        assert pynetdicom_send(engine.dicom_port, files) == [0] * 6
    uid = study_uid(files)
    study = delivered(engine, fhir, uid, 6)
    check_study(fhir, study, files, patient)


def test_a_multi_series_study_over_two_associations_of_two_senders(
    engine: EngineProcess, fhir: FhirTestServer, tmp_path: Path
) -> None:
    files = make_study(tmp_path, 3, 2, patient="P-TWO")
    storescu(engine.dicom_port, *files[:4])
    assert pynetdicom_send(engine.dicom_port, files[4:]) == [0, 0]
    study = delivered(engine, fhir, study_uid(files), 6)
    check_study(fhir, study, files, "P-TWO")


def statuses(engine: EngineProcess, message_type: str) -> dict[str, int]:
    """The imaging channel's messages of one type (``instance``, ``study``) per status."""
    store = engine.store()
    try:
        rows = store.list_messages(channel="imaging", limit=100_000)
    finally:
        store.close()
    out: dict[str, int] = {}
    for r in rows:
        if r.message_type == message_type:
            out[r.status] = out.get(r.status, 0) + 1
    return out


def test_the_same_study_again_changes_nothing_at_the_server(
    engine: EngineProcess, fhir: FhirTestServer, tmp_path: Path
) -> None:
    files = make_study(tmp_path, 2, 2, patient="P-AGAIN")
    assert pynetdicom_send(engine.dicom_port, files) == [0] * 4
    uid = study_uid(files)
    first = delivered(engine, fhir, uid, 4)
    requests = fhir.stats()["requests"]
    duplicates = statuses(engine, "instance").get("duplicate", 0)
    assert pynetdicom_send(engine.dicom_port, files) == [0] * 4  # the same sender again
    storescu(engine.dicom_port, *files)  # and the other sender, in implicit VR: other bytes, the same study
    wait_until(lambda: statuses(engine, "instance").get("duplicate", 0) == duplicates + 4, 10, "4 duplicate instances")
    wait_until(lambda: statuses(engine, "study").get("duplicate", 0) == 1, 10, "the study message, a duplicate")
    assert settled(engine)
    assert fhir.stats()["requests"] == requests, "no request at all reached the FHIR server"
    [again] = imaging_studies(fhir, uid)
    assert again["meta"]["versionId"] == first["meta"]["versionId"] and versions(fhir, again) == 1


def test_a_study_that_grows_updates_the_same_imaging_study(
    engine: EngineProcess, fhir: FhirTestServer, tmp_path: Path
) -> None:
    files = make_tiny_study(tmp_path / "a", 1, 3, patient="P-GROW")
    assert pynetdicom_send(engine.dicom_port, files) == [0] * 3
    uid = study_uid(files)
    first = delivered(engine, fhir, uid, 3)
    more = make_tiny_study(tmp_path / "b", 1, 2, patient="P-GROW", study=uid)
    storescu(engine.dicom_port, *more)
    grown = delivered(engine, fhir, uid, 5)
    assert grown["id"] == first["id"] and versions(fhir, grown) == 2
    check_study(fhir, grown, files + more, "P-GROW")


def test_fhir_server_503_then_back_delivers_the_study_once(
    engine: EngineProcess, fhir: FhirTestServer, tmp_path: Path
) -> None:
    files = make_tiny_study(tmp_path, 2, 2, patient="P-503")
    fhir.fail_next(503, count=10**9)
    try:
        assert pynetdicom_send(engine.dicom_port, files) == [0] * 4

        def refused() -> bool:
            return fhir.stats()["injected_failures"] >= 2  # the first attempt and a retry

        wait_until(refused, 30, "the engine to meet the outage and retry")
    finally:
        fhir.fail_next(503, count=0)
    study = delivered(engine, fhir, study_uid(files), 4)
    assert versions(fhir, study) == 1
    check_study(fhir, study, files, "P-503")
    store = engine.store()
    try:  # the newest study message is this one (the tests run one at a time)
        message = next(r for r in store.list_messages(channel="imaging", limit=100) if r.message_type == "study")
        codes = [a.status_code for a in store.attempts_of(message.id)]
    finally:
        store.close()
    assert codes[-1] is not None and codes[-1] < 300 and set(codes[:-1]) == {503}, codes


@pytest.fixture
def pacs(orthanc: Orthanc) -> Orthanc:
    orthanc.clear()
    return orthanc


def test_orthanc_pushes_a_study_it_holds_to_the_engine(
    engine: EngineProcess, fhir: FhirTestServer, pacs: Orthanc, tmp_path: Path
) -> None:
    files = make_tiny_study(tmp_path, 2, 2, patient="P-ORTHANC")
    for f in files:
        httpx.post(f"{pacs.url}/instances", content=f.read_bytes(), timeout=30).raise_for_status()
    modality = {"AET": "INTERLINK", "Host": "127.0.0.1", "Port": engine.dicom_port}
    httpx.put(f"{pacs.url}/modalities/interlink", json=modality, timeout=30).raise_for_status()
    [held] = pacs.get("/studies")
    pushed = httpx.post(f"{pacs.url}/modalities/interlink/store", json={"Resources": [held], "Synchronous": True},
                        timeout=60)  # fmt: skip
    pushed.raise_for_status()
    assert pushed.json().get("InstancesCount") == 4, pushed.text
    study = delivered(engine, fhir, study_uid(files), 4)
    check_study(fhir, study, files, "P-ORTHANC")


def test_kill_9_during_a_200_instance_study_then_resend_what_was_not_acknowledged(
    engine: EngineProcess, fhir: FhirTestServer, tmp_path: Path
) -> None:
    files = make_tiny_study(tmp_path, 4, 50, patient="P-KILL")
    acked: list[Path] = []
    sender = threading.Thread(
        target=pynetdicom_send, args=(engine.dicom_port, files), kwargs={"acked": acked, "timeout_s": 2}
    )
    sender.start()
    wait_until(lambda: len(acked) >= 60, 30, "60 instances acknowledged", 0.002)
    engine.kill()
    sender.join(30)
    assert 60 <= len(acked) < len(files), "killed mid-study"
    engine.start()
    rest = [f for f in files if f not in set(acked)]
    assert pynetdicom_send(engine.dicom_port, rest) == [0] * len(rest)
    study = delivered(engine, fhir, study_uid(files), 200, timeout_s=60)
    check_study(fhir, study, files, "P-KILL")
