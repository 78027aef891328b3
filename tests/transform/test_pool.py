"""The mapping process pool gives exactly what mapping in the thread gives, and survives a crash."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from engine.errors import HL7Error, TransformError
from engine.settings import Settings
from engine.transform import load_mappings
from engine.transform.authority import Identifiers
from engine.transform.pool import InThreadMapper, Job, MapperUnavailable, ProcessMapper
from tests.integration.messages import adt, oru

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
SAMPLES = sorted((MAPPINGS / "hl7v2" / "samples").glob("*.hl7"))
SETTINGS = Settings(mappings_dir=MAPPINGS)


@pytest.fixture(scope="module")
def pool():
    p = ProcessMapper(SETTINGS, processes=1)
    yield p
    p.close()


def jobs() -> list[Job]:
    raws = [s.read_bytes() for s in SAMPLES] + [
        oru("P1", obx=8),
        oru("P2", value="not a number"),  # TransformError
        oru("P3", pid=False),  # TransformError (no PID)
        b"PID|1||X\r",  # HL7Error (no MSH)
        adt("P4", "A08"),
        "MSH|^~\\&|A|B|C|D|2024||ADT^A01|P5|P|2.5.1||||||8859/1\rPID|1||M^^^H^MR||MÜLLER^JÖRG\rPV1|1|I|||||||||||||||||V1\r".encode(
            "latin-1"
        ),
    ]
    # The generated messages send PV1-19 and order numbers without an assigning authority: the channel's
    # default travels with each job; the last job has none and is refused (PV1-19.4).
    hosp = Identifiers(by_facility={"LAB": "HOSP"}, authority="HOSP")
    return [Job(r, "utf-8", None, "full", None, hosp) for r in raws] + [Job(adt("P6"), "utf-8", None, "full")]


def test_same_results_as_in_thread(pool: ProcessMapper) -> None:
    inline = InThreadMapper(load_mappings(MAPPINGS)).map_many(jobs())
    remote = pool.map_many(jobs())
    assert len(inline) == len(remote) == len(jobs())
    for a, b in zip(inline, remote, strict=True):
        assert a.bundle == b.bundle and a.empty == b.empty
        assert isinstance(b.error, HL7Error | TransformError | None) and (a.error is None) == (b.error is None)
        assert isinstance(a.error, TransformError) == isinstance(b.error, TransformError)
        if a.error is not None:
            assert vars(a.error) == vars(b.error)
    kinds = [type(m.error).__name__ if m.error else "ok" for m in remote]
    assert kinds.count("TransformError") == 3 and kinds.count("HL7Error") == 1
    assert isinstance(remote[-4].error, HL7Error) and isinstance(remote[-6].error, TransformError)
    assert "JÖRG".encode() in remote[-2].bundle  # latin-1 input, decoded by MSH-18 in the child
    assert b"urn:interlink:id:HOSP|V1" in remote[-2].bundle  # the default authority crossed the pipe
    assert isinstance(remote[-1].error, TransformError) and remote[-1].error.field == "PV1-19.4"


def test_a_dead_child_is_replaced(pool: ProcessMapper) -> None:
    [pid] = pool.pids
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(MapperUnavailable):
        pool.map_many(jobs()[:1])
    [new_pid] = pool.pids
    assert new_pid != pid
    assert pool.map_many(jobs()[:1])[0].bundle is not None


def test_a_child_outlives_the_thread_that_started_it() -> None:
    # Linux's parent-death signal fires when the starting *thread* ends: that must not end the child.
    box: list[ProcessMapper] = []
    starter = threading.Thread(target=lambda: box.append(ProcessMapper(SETTINGS, processes=1)))
    starter.start()
    starter.join()
    [mapper] = box
    try:
        time.sleep(0.2)  # the signal, had it ended the child, has been delivered by now
        [pid] = mapper.pids
        assert mapper.map_many(jobs()[:1])[0].bundle is not None
        assert mapper.pids == [pid]
    finally:
        mapper.close()


def test_a_child_leaves_quietly_when_its_pipe_closes(capfd: pytest.CaptureFixture[str]) -> None:
    mapper = ProcessMapper(SETTINGS, processes=1)
    [child] = mapper._all
    child.conn.close()  # what the parent's death looks like from the child's side of the pipe
    child.process.join(timeout=10)
    mapper.close()
    assert child.process.exitcode == 0
    assert "Traceback" not in capfd.readouterr().err


def test_strict_and_input_checks_travel_with_the_job(pool: ProcessMapper) -> None:
    """A channel's ``strict: true`` reaches the mapping (in the thread and in a mapping process), and the
    reader refuses a forged segment (a raw LF inside a CR-terminated field) before any rule runs."""
    hosp = Identifiers(by_facility={"LAB": "HOSP"}, authority="HOSP")
    sample = (MAPPINGS / "hl7v2" / "samples" / "oru_r01_cbc.hl7").read_bytes()
    segments = sample.replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip(b"\r").split(b"\r")
    extra = b"\r".join([*segments, b"MSA|AA|1"])  # an MSA has no place in ORU_R01
    forged = b"\r".join(s + b"\nPID|1||OTHER^^^H^MR" if s.startswith(b"NTE|") else s for s in segments)
    batch = [
        Job(extra, "utf-8", None, "off", None, hosp),
        Job(extra, "utf-8", None, "off", None, hosp, "hl7v2", True),
        Job(forged, "utf-8", None, "off", None, hosp),
    ]
    for mapper in (InThreadMapper(load_mappings(MAPPINGS)), pool):
        lax, strict, bad = mapper.map_many(batch)
        assert lax.bundle is not None
        assert isinstance(strict.error, TransformError) and (strict.error.field, strict.error.rule) == ("MSA", "strict")
        assert isinstance(bad.error, TransformError) and bad.error.rule == "limits.terminators"


def test_a_mapping_process_maps_with_the_sites_overlays_and_caps(tmp_path: Path) -> None:
    """The settings' overlay folders and caps reach the mapping processes (they compiled the base maps
    with the default caps before), so a channel maps the same in a worker thread and in a child."""
    site = tmp_path / "site" / "hl7v2" / "segments"
    site.mkdir(parents=True)
    (site / "PID-Patient.yaml").write_text(
        "segment: PID\ntarget: Patient\ndescription: Site rule replacing the gender rule only.\nmerge: true\n"
        "rules:\n  gender: {value: unknown}\n"
    )
    settings = Settings(mappings_dir=MAPPINGS, mapping_overlays=[tmp_path / "site"], limits={"max_segments": 12})
    hosp = Identifiers(by_facility={"LAB": "HOSP"}, authority="HOSP")
    mapper = ProcessMapper(settings, processes=1)
    try:
        small, big = mapper.map_many([Job(adt("P7", "A08"), "utf-8", None, "full", None, hosp),
                                      Job(oru("P8", obx=20), "utf-8", None, "full", None, hosp)])  # fmt: skip
    finally:
        mapper.close()
    assert small.bundle is not None and b'"gender":"unknown"' in small.bundle
    assert isinstance(big.error, TransformError) and "max_segments" in big.error.message
