"""Large messages do not leave the engine holding memory (issue 5, defect 5).

A real ``interlink run`` takes 100 ORU^R01 each carrying a 4 MB NTE, ten at a time on ten connections that
stay open (as senders keep them). Once everything is processed and delivered, the engine's RSS is back
within 50 MB of what it was idle; the mapping process's is reported and held to the same bound.
Measured with this test before the fix: +357 MB in the engine and +143 MB in the mapping process.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from engine.sources.mllp import frame
from engine.sources.mllp_client import send
from tests.integration.harness import EngineProcess, wait_until
from tests.integration.messages import oru
from tests.integration.procfs import mapping_processes, settled

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="reads RSS from /proc"),
]

MB = 1024 * 1024
NOTE_BYTES = 4 * MB
CONNECTIONS = 10
ROUNDS = 10
BOUND_BYTES = 50 * MB


def large(control_id: str) -> bytes:
    return oru(control_id) + b"NTE|1||" + b"A" * NOTE_BYTES + b"\r"


async def send_rounds(port: int) -> None:
    """ROUNDS rounds: one large message on each of CONNECTIONS open connections, all answered."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CONNECTIONS)]

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, control_id: str) -> None:
        writer.write(frame(large(control_id)))
        await writer.drain()
        reply = await reader.readuntil(b"\x1c\r")
        assert b"MSA|AA|" + control_id.encode() in reply, reply[:200]

    try:
        for r in range(ROUNDS):
            async with asyncio.timeout(120):
                await asyncio.gather(*(one(rd, wr, f"M{r}-{i}") for i, (rd, wr) in enumerate(conns)))
    finally:
        for _, writer in conns:
            writer.close()


def test_rss_returns_near_idle_after_large_messages(tmp_path: Path) -> None:
    with EngineProcess(tmp_path, extra_settings={"mapping_processes": 1}) as engine:
        assert engine.proc is not None
        pid = engine.proc.pid
        store = engine.store()
        try:
            replies = send("127.0.0.1", engine.lab_port, [oru(f"W{i}") for i in range(5)], timeout_s=30)
            assert all(b"MSA|AA|" in r for r in replies)  # warm: every code path has run once
            wait_until(lambda: store.backlog() == 0, 60, "the warm-up messages to be delivered")
            pids = [pid, *mapping_processes(pid)]
            assert len(pids) == 2
            idle = settled(pids)

            asyncio.run(send_rounds(engine.lab_port))
            wait_until(lambda: store.backlog() == 0, 120, "the large messages to be delivered")
            after = settled(pids)
        finally:
            store.close()
        assert len(list((tmp_path / "out").glob("*.ndjson"))) == 1
        grew = [(a - i) / MB for a, i in zip(after, idle, strict=True)]
        figures = (
            f"engine {idle[0] / MB:.0f} → {after[0] / MB:.0f} MB, mapping {idle[1] / MB:.0f} → {after[1] / MB:.0f} MB"
        )
        print(figures)
        assert after[0] - idle[0] < BOUND_BYTES, f"engine holds {grew[0]:.0f} MB more than idle ({figures})"
        assert after[1] - idle[1] < BOUND_BYTES, f"mapping process holds {grew[1]:.0f} MB more ({figures})"
