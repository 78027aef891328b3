"""The whole engine as a process: MLLP in (python-hl7's mllp_send and our client), FHIR out to the
Medplum test server, store inspected afterwards."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine import hl7v2
from engine.sources.mllp_client import send
from tests.integration.harness import EngineProcess, wait_until
from tests.integration.messages import adt, oru

pytestmark = pytest.mark.integration

MLLP_SEND = shutil.which("mllp_send", path=str(Path(sys.executable).parent)) or "mllp_send"


def ack_code(reply: bytes) -> str:
    return hl7v2.Message.parse(reply.decode()).first("MSA").field(1)


def mllp_send(port: int, *messages: bytes, tmp_path: Path) -> list[str]:
    """Send with python-hl7's mllp_send (it reads MLLP-framed messages from a file); return the MSA-1 codes."""
    f = tmp_path / "batch.hl7"
    f.write_bytes(b"".join(b"\x0b" + m + b"\x1c\r" for m in messages))
    out = subprocess.run(
        [MLLP_SEND, "--port", str(port), "--file", str(f), "127.0.0.1"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    return [line.split(b"|")[1].decode() for line in out.replace(b"\r", b"\n").splitlines() if line.startswith(b"MSA|")]


def all_final(engine: EngineProcess, n: int) -> bool:
    store = engine.store()
    try:
        counts = store.status_counts()
    finally:
        store.close()
    done = sum(v for (_, s), v in counts.items() if s in ("sent", "dead", "error", "duplicate", "filtered"))
    return done >= n


@pytest.fixture
def engine_with_fhir(tmp_path: Path, fhir):
    eng = EngineProcess(
        tmp_path / "engine", fhir_base_url=fhir.base_url, retry={"min_backoff_ms": 100, "max_backoff_ms": 500}
    )
    eng.start()
    yield eng, fhir
    eng.stop()


def test_oru_and_adt_reach_the_fhir_server(engine_with_fhir, tmp_path: Path) -> None:
    eng, fhir = engine_with_fhir
    assert mllp_send(eng.lab_port, oru("E2E-1", obx=8), tmp_path=tmp_path) == ["AA"]
    assert mllp_send(eng.adt_port, adt("E2E-2", "A01"), adt("E2E-3", "A08"), tmp_path=tmp_path) == ["AA", "AA"]
    wait_until(lambda: all_final(eng, 3), 30, "3 messages delivered")
    assert fhir.count("Observation") == 8
    assert fhir.count("DiagnosticReport") == 1
    assert fhir.count("Patient") == 2
    assert fhir.count("Encounter") == 2
    [report] = fhir.search("DiagnosticReport")
    assert len(report["result"]) == 8
    assert all(r["reference"].startswith("Observation/") for r in report["result"])


def test_resends_create_no_duplicates(engine_with_fhir, tmp_path: Path) -> None:
    eng, fhir = engine_with_fhir
    first = oru("DUP-1", obx=3)
    assert mllp_send(eng.lab_port, first, first, tmp_path=tmp_path) == ["AA", "AA"]
    # a corrected resend: same result, new MSH-10, status corrected and a new value
    corrected = oru("DUP-2", obx=3, filler="FDUP-1", value="6.1", status="C")
    assert mllp_send(eng.lab_port, corrected, tmp_path=tmp_path) == ["AA"]
    wait_until(lambda: all_final(eng, 3), 30, "3 messages final")
    store = eng.store()
    try:
        statuses = sorted(r.status for r in store.list_messages())
    finally:
        store.close()
    assert statuses == ["duplicate", "sent", "sent"]
    assert fhir.count("Patient") == 1
    assert fhir.count("DiagnosticReport") == 1
    observations = fhir.search("Observation")
    assert len(observations) == 3
    assert {o["status"] for o in observations} == {"corrected"}
    assert {o["valueQuantity"]["value"] for o in observations} == {6.1}


def test_server_503_then_recovers(engine_with_fhir, tmp_path: Path) -> None:
    eng, fhir = engine_with_fhir
    fhir.fail_next(503, count=2, retry_after=1)
    assert mllp_send(eng.lab_port, oru("R-1"), tmp_path=tmp_path) == ["AA"]
    wait_until(lambda: all_final(eng, 1), 30, "delivered after 503s")
    store = eng.store()
    try:
        [m] = store.list_messages()
        attempts = store.attempts_of(m.id)
    finally:
        store.close()
    assert m.status == "sent"
    assert [(a.outcome, a.status_code) for a in attempts] == [("retry", 503), ("retry", 503), ("sent", 200)]
    assert fhir.count("Observation") == 1


def test_400_goes_to_dead_letter_and_replays(engine_with_fhir, tmp_path: Path) -> None:
    eng, fhir = engine_with_fhir
    fhir.fail_next(400, count=1)
    assert mllp_send(eng.lab_port, oru("DL-1"), tmp_path=tmp_path) == ["AA"]
    wait_until(lambda: all_final(eng, 1), 30, "dead letter")
    listed = eng.cli("dlq", "list")
    assert "1 dead letter(s)" in listed.stdout and " 400 " in listed.stdout
    assert fhir.count("Observation") == 0
    replay = eng.cli("dlq", "replay", "--all")
    assert replay.returncode == 0, replay.stderr
    wait_until(lambda: fhir.count("Observation") == 1, 30, "replayed delivery")
    assert "0 dead letter(s)" in eng.cli("dlq", "list").stdout


def test_bad_inputs_are_nakked_and_kept(engine_with_fhir) -> None:
    eng, _ = engine_with_fhir
    cases = {
        "no MSH": (b"PID|1||X\r", "AR"),
        "bad delimiters": (b"MSH|^~|LIS|LAB\rPID|1\r", "AR"),
        "unknown encoding": (oru("BAD-1").replace(b"|P|2.5.1\r", b"|P|2.5.1||||||KLINGON\r", 1), "AE"),
        "invalid utf-8": (oru("BAD-2").replace(b"TESTER", b"TEST\xff\xfeR"), "AE"),
    }
    for name, (raw, expected) in cases.items():
        [reply] = send("127.0.0.1", eng.lab_port, [raw], timeout_s=10)
        assert ack_code(reply) == expected, name
        assert b"ERR|" in reply, name
    # the ADT channel replies after mapping: an invalid birth date is named in the NAK
    [reply] = send("127.0.0.1", eng.adt_port, [adt("BAD-3", birth="19701345")], timeout_s=10)
    assert ack_code(reply) == "AE" and b"PID" in reply
    store = eng.store()
    try:
        rows = store.list_messages(status="error")
    finally:
        store.close()
    assert len(rows) == 5 and all(r.error for r in rows)


def test_oversize_and_unterminated_frames(tmp_path: Path) -> None:
    eng = EngineProcess(tmp_path / "engine")  # file destination; a small frame limit on the lab channel
    ch = eng.workdir / "channels" / "lab-results.yaml"
    ch.write_text(ch.read_text().replace("read_timeout_s: 2", "read_timeout_s: 1\n  max_frame_bytes: 2000"))
    with eng:
        [reply] = send("127.0.0.1", eng.lab_port, [oru("BIG-1", obx=40)], timeout_s=10)
        assert ack_code(reply) in ("AE", "AR") and b"over the cap" in reply
        with socket.create_connection(("127.0.0.1", eng.lab_port), timeout=5) as s:
            s.sendall(b"\x0b" + oru("HANG-1")[:50])
            assert s.recv(100) == b""  # closed without any reply after the read timeout
        store = eng.store()
        try:
            wait_until(lambda: len(store.list_messages(status="error")) == 2, 10, "both stored as errors")
        finally:
            store.close()


def test_kill_9_mid_stream_loses_nothing_acknowledged(tmp_path: Path, fhir) -> None:
    """2,000 messages; the engine is SIGKILLed part-way and restarted; the sender resends what was not
    ACKed. Every ACKed message must be at the server exactly once."""
    total = 2000
    msgs = {f"K{i:05d}": oru(f"K{i:05d}", mrn=f"MRN{i % 97}") for i in range(total)}
    eng = EngineProcess(tmp_path / "engine", fhir_base_url=fhir.base_url)
    eng.start()
    acked: set[str] = set()
    ids = list(msgs)

    def stream(start: int) -> int:
        """Send from ``start`` until done or the connection breaks; return the next index to send."""
        i = start
        try:
            with socket.create_connection(("127.0.0.1", eng.lab_port), timeout=10) as s:
                buf = b""
                while i < total:
                    s.sendall(b"\x0b" + msgs[ids[i]] + b"\x1c\r")
                    while b"\x1c\r" not in buf:
                        chunk = s.recv(65536)
                        if not chunk:
                            raise ConnectionError("closed")
                        buf += chunk
                    reply, _, buf = buf.partition(b"\x1c\r")
                    assert ack_code(reply[1:]) == "AA"
                    acked.add(ids[i])
                    i += 1
        except OSError:
            pass
        return i

    progress = {"next": 0}

    def send_then_kill() -> None:
        progress["next"] = stream(0)

    t = threading.Thread(target=send_then_kill)
    t.start()
    wait_until(lambda: len(acked) >= 700, 60, "700 ACKs before the kill")
    eng.kill()
    t.join(30)
    acked_before_kill = len(acked)
    assert 700 <= acked_before_kill < total
    eng.start()
    nxt = stream(progress["next"])
    assert nxt == total and len(acked) == total
    wait_until(lambda: all_final(eng, total), 240, "all messages delivered after restart", interval_s=0.5)
    eng.stop()
    reports = fhir.search("DiagnosticReport", _count="5000")
    fillers = [i["value"] for r in reports for i in r.get("identifier", []) if i["value"].startswith("FK")]
    assert len(fillers) == len(set(fillers)) == total  # every message exactly once
    assert fhir.count("Observation") == total


def test_reply_after_transform_names_the_field_and_delivers_nothing(tmp_path: Path, fhir) -> None:
    eng = EngineProcess(tmp_path / "engine", fhir_base_url=fhir.base_url, lab_response="after_transform")
    with eng:
        cases = {
            "OBX-5": oru("AT-1", value="five point five"),  # NM that is not a number
            "PID": oru("AT-2", pid=False),  # a result without a patient
            "OBX-14": oru("AT-3").replace(b"|||20240301093000+0000", b"|||20241399250000+0000"),  # invalid date
        }
        for field, raw in cases.items():
            [reply] = send("127.0.0.1", eng.lab_port, [raw], timeout_s=10)
            assert ack_code(reply) == "AE", field
            err = hl7v2.Message.parse(reply.decode()).first("ERR")
            assert field.replace("-", "^1^") in err.field(2) or field in reply.decode(), (field, reply)
        [ok] = send("127.0.0.1", eng.lab_port, [oru("AT-4")], timeout_s=10)
        assert ack_code(ok) == "AA"
        wait_until(lambda: fhir.count("DiagnosticReport") == 1, 20, "the good message delivered")
        store = eng.store()
        try:
            errors = store.list_messages(status="error")
        finally:
            store.close()
    assert len(errors) == 3
    assert fhir.count("Observation") == 1  # nothing of the rejected messages reached the server


def test_metrics_endpoint(tmp_path: Path) -> None:
    import httpx

    from tests.integration.harness import free_port

    port = free_port()
    eng = EngineProcess(tmp_path / "engine", extra_settings={"metrics_port": port})
    with eng:
        assert ack_code(send("127.0.0.1", eng.lab_port, [oru("M-1")], timeout_s=10)[0]) == "AA"
        assert ack_code(send("127.0.0.1", eng.lab_port, [b"PID|no msh\r"], timeout_s=10)[0]) == "AR"
        wait_until(lambda: all_final(eng, 2), 20, "both final")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'interlink_messages_received_total{channel="lab-results",status="received"} 1.0' in text
    assert 'interlink_messages_received_total{channel="lab-results",status="error"} 1.0' in text
    assert 'interlink_messages_processed_total{channel="lab-results",status="transformed"} 1.0' in text
    assert 'interlink_delivery_attempts_total{channel="lab-results",destination="ndjson",outcome="sent"} 1.0' in text
    assert "interlink_backlog 0.0" in text
    assert "interlink_reply_seconds_bucket" in text
    assert "TESTER" not in text  # no message content in metrics
