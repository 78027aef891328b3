"""A destination outage must not leave patients with older data: 20 patients, 1,200 ADT and ORU updates
(alternating feeds, so one patient's updates arrive over two channels), the EHR answering 503 for 60 s,
then the backlog drains. Afterwards every patient's current version at the FHIR server is its newest
message, and nothing is lost or duplicated. Once with the embedded default (SQLite, in-process queue), once
in the production shape (PostgreSQL, Redis, a listener and two worker processes, one killed mid-drain). The
embedded engine is also killed (-9) and restarted during the outage.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.sources.mllp_client import send
from tests.fhir_server.launch import FhirTestServer
from tests.integration.harness import EngineProcess, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PATIENTS = 20
UPDATES = 60  # per patient: even ones ADT^A08 on the adt channel, odd ones ORU^R01 on the lab channel
OUTAGE_S = 60.0
RETRY = {"min_backoff_ms": 200, "max_backoff_ms": 3000, "max_attempts": 1000}
BASE = 1_700_000_000  # epoch of the first update; each update is a minute after the previous one


def _when(seq: int, patient: int) -> str:
    return time.strftime("%Y%m%d%H%M%S+0000", time.gmtime(BASE + seq * 60 + patient))


def _pid(patient: int, seq: int) -> str:
    return f"PID|1||OUT{patient:03d}^^^HOSP^MR||OUTAGE^V{seq}||19700101|F|||{seq} OUTAGE ST^^SPRINGFIELD^IL^62701"


def update(patient: int, seq: int) -> bytes:
    """The seq-th update of a patient: its number in PID-5.2 and in the street of PID-11."""
    when = _when(seq, patient)
    if seq % 2 == 0:
        segs = [
            f"MSH|^~\\&|PAS|HOSP|EHR|HOSP|{when}||ADT^A08^ADT_A01|A-{patient}-{seq}|P|2.5.1",
            f"EVN|A08|{when}",
            _pid(patient, seq),
            f"PV1|1|I|WARD1^101^A^HOSP||||||||||||||||VOUT{patient:03d}^^^HOSP^VN" + "|" * 25 + "20231101000000+0000",
        ]
    else:
        segs = [
            f"MSH|^~\\&|LIS|HOSP|EHR|HOSP|{when}||ORU^R01^ORU_R01|L-{patient}-{seq}|P|2.5.1",
            _pid(patient, seq),
            f"OBR|1|P-{patient}-{seq}^HOSP|F-{patient}-{seq}^HOSP|2345-7^Glucose^LN|||{when}" + "|" * 18 + "F",
            f"OBX|1|NM|2345-7^Glucose^LN||{90 + seq}|mg/dL^mg/dL^UCUM|70-110|N|||F|||{when}",
        ]
    return ("\r".join(segs) + "\r").encode()


def send_all(eng: EngineProcess) -> None:
    """Each patient's updates arrive in order: one round of every patient per channel at a time."""
    for seq in range(UPDATES):
        port = eng.adt_port if seq % 2 == 0 else eng.lab_port
        replies = send("127.0.0.1", port, [update(p, seq) for p in range(PATIENTS)], timeout_s=60)
        assert all(b"MSA|AA|" in r for r in replies), "every update is accepted"


def check_newest_everywhere(fhir: FhirTestServer) -> None:
    total = PATIENTS * UPDATES
    patients = fhir.search("Patient", _count=1000)
    assert len(patients) == PATIENTS, "one Patient per patient: nothing duplicated"
    stale = {}
    for p in patients:
        mrn = next(i["value"] for i in p["identifier"] if i["value"].startswith("OUT"))
        street = p["address"][0]["line"][0]
        if street != f"{UPDATES - 1} OUTAGE ST":
            stale[mrn] = street
    assert not stale, f"patients left with older data: {stale}"
    assert fhir.count("Encounter") == PATIENTS
    assert fhir.count("DiagnosticReport") == total // 2
    assert fhir.count("Observation") == total // 2


def outage(fhir: FhirTestServer) -> float:
    fhir.fail_next(503, count=10**9)
    return time.monotonic()


def recover(fhir: FhirTestServer, started: float) -> None:
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))
    fhir.fail_next(503, count=0)


def test_outage_embedded(tmp_path: Path, fhir: FhirTestServer) -> None:
    eng = EngineProcess(tmp_path / "engine", fhir_base_url=fhir.base_url, retry=RETRY)
    with eng:
        started = outage(fhir)
        send_all(eng)
        assert eng.statuses().get("sent", 0) == 0
        eng.kill()  # the order survives a crash: the in-process queue is gone, the store knows
        eng.start()
        recover(fhir, started)
        total = PATIENTS * UPDATES
        wait_until(lambda: eng.statuses().get("sent", 0) == total, 240, "the backlog drained", 0.5)
    assert eng.statuses() == {"sent": total}
    check_newest_everywhere(fhir)


def test_outage_production_shape_with_a_worker_killed(
    tmp_path: Path, fhir: FhirTestServer, pg_fresh: str, redis_url: str, queue_namespace: str
) -> None:
    settings = {"queue_namespace": queue_namespace}
    listener = EngineProcess(
        tmp_path / "listener",
        fhir_base_url=fhir.base_url,
        retry=RETRY,
        database_url=pg_fresh,
        queue_url=redis_url,
        extra_settings=settings,
    )
    workers = []
    for name in ("w1", "w2"):
        w = EngineProcess(tmp_path / name, database_url=pg_fresh, queue_url=redis_url)
        w.config.write_text(listener.config.read_text())
        workers.append(w)
    with listener:
        for w in workers:
            w.start("worker", wait=False)
        try:
            started = outage(fhir)
            send_all(listener)
            recover(fhir, started)
            total = PATIENTS * UPDATES
            wait_until(lambda: listener.statuses().get("sent", 0) >= total // 4, 120, "the drain under way", 0.2)
            workers[0].kill()
            wait_until(lambda: listener.statuses().get("sent", 0) == total, 300, "the backlog drained", 0.5)
        finally:
            for w in workers:
                w.stop()
    assert listener.statuses() == {"sent": total}
    check_newest_everywhere(fhir)
