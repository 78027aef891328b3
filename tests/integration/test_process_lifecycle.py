"""The engine's mapping processes end with it, quietly: after a kill -9, and on Ctrl-C to the process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.sources.mllp_client import send
from tests.integration.harness import EngineProcess, wait_until
from tests.integration.messages import oru
from tests.integration.procfs import children, mapping_processes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GONE_WITHIN_S = 1.0


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def mapping_children(engine: EngineProcess, count: int) -> list[int]:
    assert engine.proc is not None
    pid = engine.proc.pid

    def spawned() -> list[int]:
        return mapping_processes(pid)

    wait_until(lambda: len(spawned()) == count, 10, f"{count} mapping processes")
    return spawned()


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_kill_9_ends_mapping_processes_at_once_and_quietly(tmp_path: Path) -> None:
    engine = EngineProcess(tmp_path, extra_settings={"mapping_processes": 2}).start()
    try:
        assert engine.proc is not None
        mappers = mapping_children(engine, 2)
        everything = children(engine.proc.pid)  # the mapping processes and multiprocessing's resource tracker
        # One message whose mapping keeps a child busy for seconds: it is mid-batch when the engine dies.
        busy = oru("BUSY", obx=8000)
        threading.Thread(target=lambda: _send_quietly(engine.lab_port, busy), daemon=True).start()
        before = {pid: cpu_ticks(pid) for pid in mappers}
        wait_until(
            lambda: any(cpu_ticks(pid) - before[pid] >= 20 for pid in mappers), 30, "a mapping process to be busy"
        )
        logged = engine.log.stat().st_size
        engine.kill()
        killed = time.monotonic()
        while alive(everything) and time.monotonic() - killed < 10:
            time.sleep(0.02)
        took = time.monotonic() - killed
        assert not alive(everything), "mapping processes outlived the engine"
        assert took <= GONE_WITHIN_S, f"mapping processes outlived the engine by {took:.2f} s"
        time.sleep(0.2)
        written = engine.log.read_bytes()[logged:]
        assert b"Traceback" not in written and b"Error" not in written, written.decode(errors="replace")
    finally:
        engine.kill()


def in_own_session(tmp_path: Path) -> EngineProcess:
    """``interlink run`` (one mapping process) in a session of its own, like a terminal's foreground job:
    SIGINT to the process group reaches every process in it."""
    engine = EngineProcess(tmp_path, extra_settings={"mapping_processes": 1})
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLINK_")}
    with open(engine.log, "ab") as log:
        engine.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "run", "--config", str(engine.config)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return engine


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_ctrl_c_to_the_process_group_stops_cleanly_without_tracebacks(tmp_path: Path) -> None:
    engine = in_own_session(tmp_path)
    try:
        wait_until(engine._listening, 30, "engine to listen")
        [mapper] = mapping_children(engine, 1)
        replies = send("127.0.0.1", engine.lab_port, [oru("C1")], timeout_s=10)
        assert b"MSA|AA|C1" in replies[0]
        os.killpg(engine.proc.pid, signal.SIGINT)
        assert engine.proc.wait(timeout=30) == 0
        wait_until(lambda: not alive([mapper]), 5, "the mapping process to end")
        text = engine.tail(20_000)
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    finally:
        engine.kill()


def _send_quietly(port: int, message: bytes) -> None:
    with contextlib.suppress(OSError):  # the engine is killed before it answers
        send("127.0.0.1", port, [message], timeout_s=60)


def test_ctrl_c_while_the_engine_starts_stops_it_cleanly(tmp_path: Path) -> None:
    """SIGINT between the first listener starting and the HTTP server starting: the engine finishes
    starting, then stops as usual (it was a KeyboardInterrupt traceback and exit 1 mid-start)."""
    engine = in_own_session(tmp_path)
    try:
        wait_until(lambda: "started (mllp source)" in engine.tail(20_000), 60, "a first listener to start", 0.001)
        os.killpg(engine.proc.pid, signal.SIGINT)
        assert engine.proc.wait(timeout=30) == 0
        text = engine.tail(20_000)
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
        assert "stopping" in text
    finally:
        engine.kill()
