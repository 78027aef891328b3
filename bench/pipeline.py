"""End-to-end benchmark: ORU^R01 (8 OBX) over MLLP → commit → ACK → map → validate → deliver.

    python bench/pipeline.py [--messages 5000] [--conns 4] [--skip-fhir]

Runs a real ``interlink run`` process (SQLite store, in-process queue, ``validation: sampled``, the
default ``mapping_processes: auto``) and
sends as fast as ACKs come back on ``--conns`` connections. The rate is messages / (time until the
last one is delivered). Targets: ≥ 600 msg/s to the NDJSON destination; peak RSS ≤ 250 MB.
Then the same against the Medplum FHIR test server, beside that server's own ceiling measured alone.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.harness import EngineProcess  # noqa: E402
from tests.integration.messages import oru  # noqa: E402


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """Peak resident memory (VmHWM) of the engine process, and of it plus its child processes."""

    def hwm(p: int) -> float:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    own = hwm(pid)
    return own, own + sum(hwm(int(c)) for c in children)


async def blast(port: int, msgs: list[bytes], conns: int) -> float:
    """Send every message (each connection waits for its ACK before the next); return seconds taken."""
    chunks = [msgs[i::conns] for i in range(conns)]

    async def one(chunk: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for m in chunk:
            writer.write(b"\x0b" + m + b"\x1c\r")
            reply = await reader.readuntil(b"\x1c\r")
            if b"MSA|AA" not in reply:
                raise RuntimeError(f"not acknowledged: {reply[:120]!r}")
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in chunks))
    return time.perf_counter() - t0


def run(workdir: Path, n: int, conns: int, fhir_base_url: str | None, *, warmup: int = 200) -> dict:
    eng = EngineProcess(workdir, fhir_base_url=fhir_base_url)
    for f in (workdir / "channels").glob("*.yaml"):
        f.write_text(f.read_text().replace("validation: full", "validation: sampled"))
    eng.start()
    try:
        store = eng.store()
        tag = time.monotonic_ns()
        warm = [oru(f"W{tag}-{i}", obx=8, mrn=f"M{i % 300}") for i in range(warmup)]
        asyncio.run(blast(eng.lab_port, warm, conns))
        msgs = [oru(f"B{tag}-{i}", obx=8, mrn=f"M{i % 300}") for i in range(n)]

        while store.backlog():
            time.sleep(0.05)
        t0 = time.perf_counter()
        ack_s = asyncio.run(blast(eng.lab_port, msgs, conns))
        while store.backlog():
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("pipeline did not finish within 600 s")
            time.sleep(0.02)
        total_s = time.perf_counter() - t0
        counts = store.status_counts()
        store.close()
        rss = peak_rss_mb(eng.proc.pid)
    finally:
        eng.stop()
    return {"ack_rate": n / ack_s, "rate": n / total_s, "rss": rss, "counts": counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--skip-fhir", action="store_true")
    args = ap.parse_args()

    print(f"ORU^R01 with 8 OBX, {args.messages} messages on {args.conns} connections, SQLite, in-process queue\n")
    with tempfile.TemporaryDirectory() as wd:
        r = run(Path(wd), args.messages, args.conns, None)
    print(
        f"NDJSON destination:  {r['rate']:7.0f} msg/s end to end  (ACKs at {r['ack_rate']:.0f} msg/s)  "
        f"peak RSS {r['rss'][0]:.0f} MB engine, {r['rss'][1]:.0f} MB with its mapping processes"
        "   [targets: >= 600 msg/s, <= 250 MB]"
    )
    if args.skip_fhir:
        return
    from bench.fhir_ceiling import measure_ceiling
    from tests.fhir_server.launch import FhirTestServer

    with FhirTestServer() as server:
        ceiling = measure_ceiling(server.base_url, 1000)
        server.reset()
        with tempfile.TemporaryDirectory() as wd:
            n = min(args.messages, 2000)
            r = run(Path(wd), n, args.conns, server.base_url)
    tx_rate = ceiling["tx_per_s"]
    # each ORU (Patient, Encounter, DiagnosticReport, 8 Observations = 11 entries) is split into
    # 2 transactions of at most 8 conditional entries, so the server caps the engine near tx_rate / 2
    print(
        f"FHIR test server:    {r['rate']:7.0f} msg/s end to end  (ACKs at {r['ack_rate']:.0f} msg/s)  "
        f"peak RSS {r['rss'][0]:.0f} MB engine, {r['rss'][1]:.0f} MB with its mapping processes"
    )
    print(
        f"  server alone: {ceiling['post_per_s']:.0f} single POSTs/s, {tx_rate:.0f} transactions/s "
        f"(8 conditional entries)"
    )
    print(f"  engine / server ceiling: {r['rate'] / (tx_rate / 2):.2f}  (ceiling = transactions/s / 2)")


if __name__ == "__main__":
    main()
