"""End-to-end benchmark: ORU^R01 over MLLP → commit → ACK → map → validate → deliver, as shipped.

    python bench/pipeline.py [--messages 5000] [--conns 4] [--obx 8] [--slow-at N --refuse-at M] [--skip-fhir]

Runs a real ``interlink run`` process as shipped (``bench/ingest.py`` ``shipped_engine``: default settings,
workers on, SQLite FULL, in-process queue, ``validation: sampled``, ``mapping_processes: auto``) with an
NDJSON destination and sends as fast as ACKs come back on ``--conns`` connections. The rate is messages /
(time until the last one is delivered); beside it, the durable echo and bare echo (``bench/echo.py``)
measured in the same run on as many connections, and every rate as a ratio to the durable echo. Targets
(issue 10): ≥ 1,500 msg/s end to end to NDJSON on 4 connections (≥ 0.3 x durable echo); peak RSS ≤ 250 MB.
With ``--obx 500`` and a small ``--slow-at``/``--refuse-at`` it shows back-pressure: the ACK rate held to
what is delivered, the backlog within its bound (a refused message is sent again after a pause, as an MLLP
sender would). Then the same against the Medplum FHIR test server, beside that server's own ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.echo import measure_echo  # noqa: E402
from bench.ingest import shipped_engine  # noqa: E402
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


async def blast(port: int, msgs: list[bytes], conns: int, refused: list[int] | None = None) -> float:
    """Send every message (each connection waits for its ACK before the next; a message refused because the
    channel is busy is sent again after 0.2 s, counted in ``refused``); return seconds taken."""
    chunks = [msgs[i::conns] for i in range(conns)]

    async def one(chunk: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for m in chunk:
            while True:
                writer.write(b"\x0b" + m + b"\x1c\r")
                reply = await reader.readuntil(b"\x1c\r")
                if b"MSA|AA" in reply:
                    break
                if b"MSA|AE" not in reply or b"busy" not in reply or refused is None:
                    raise RuntimeError(f"not acknowledged: {reply[:120]!r}")
                refused.append(1)
                await asyncio.sleep(0.2)
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in chunks))
    return time.perf_counter() - t0


def run(
    workdir: Path,
    n: int,
    conns: int,
    fhir_base_url: str | None,
    *,
    warmup: int = 200,
    obx: int = 8,
    backlog: dict | None = None,
) -> dict:
    eng = shipped_engine(workdir, fhir_base_url, **({"backlog": backlog} if backlog else {}))
    eng.start()
    try:
        store = eng.store()
        tag = time.monotonic_ns()
        warm = [oru(f"W{tag}-{i}", obx=obx, mrn=f"M{i % 300}") for i in range(warmup)]
        asyncio.run(blast(eng.lab_port, warm, conns, []))
        msgs = [oru(f"B{tag}-{i}", obx=obx, mrn=f"M{i % 300}") for i in range(n)]

        while store.backlog():
            time.sleep(0.05)
        refused: list[int] = []
        most = [0]
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.25):
                most.append(store.backlog())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0 = time.perf_counter()
        ack_s = asyncio.run(blast(eng.lab_port, msgs, conns, refused))
        done.set()
        watcher.join()
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
    return {"ack_rate": n / ack_s, "rate": n / total_s, "rss": rss, "counts": counts, "backlog": max(most),
            "refused": len(refused)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--obx", type=int, default=8, help="OBX segments per ORU^R01")
    ap.add_argument("--slow-at", type=int, help="the engine's backlog.slow_at (default: as shipped)")
    ap.add_argument("--refuse-at", type=int, help="the engine's backlog.refuse_at (default: as shipped)")
    ap.add_argument("--skip-fhir", action="store_true")
    args = ap.parse_args()
    backlog = {k: v for k, v in (("slow_at", args.slow_at), ("refuse_at", args.refuse_at)) if v is not None}

    print(f"ORU^R01 with {args.obx} OBX, {args.messages} messages on {args.conns} connections, as shipped"
          f"{f' with backlog {backlog}' if backlog else ''}\n")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="interlink-bench-") as wd:
        r = run(Path(wd), args.messages, args.conns, None, obx=args.obx, backlog=backlog or None)
    durable = measure_echo("durable", args.conns, 20000)["rate"]
    bare = measure_echo("bare", args.conns, 20000)["rate"]
    print(
        f"NDJSON destination:  {r['rate']:7.0f} msg/s end to end = {r['rate'] / durable:.2f} x durable echo  "
        f"(ACKs at {r['ack_rate']:.0f} msg/s = {r['ack_rate'] / durable:.2f} x)  "
        f"peak RSS {r['rss'][0]:.0f} MB engine, {r['rss'][1]:.0f} MB with its mapping processes"
    )
    print(f"  backlog up to {r['backlog']} while sending; {r['refused']} refusals (busy) sent again")
    print(f"  durable echo {durable:.0f} msg/s, bare echo {bare:.0f} msg/s on {args.conns} connections (same run)")
    print(f"  targets: >= 1,500 msg/s ({'met' if r['rate'] >= 1500 else 'missed'}), >= 0.3 x durable echo "
          f"({'met' if r['rate'] >= 0.3 * durable else 'missed'}), <= 250 MB")  # fmt: skip
    if args.skip_fhir:
        return
    from bench.fhir_ceiling import measure_ceiling
    from tests.fhir_server.launch import FhirTestServer

    with FhirTestServer() as server:
        ceiling = measure_ceiling(server.base_url, 1000)
        server.reset()
        with tempfile.TemporaryDirectory(prefix="interlink-bench-") as wd:
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
