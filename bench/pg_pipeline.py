"""End to end on PostgreSQL + Redis with separate workers (issue 10: ≥ 1,000 ORU^R01/s).

    python bench/pg_pipeline.py [--messages 10000] [--conns 4] [--workers 2] [--obx 8]
                                [--pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
                                [--redis redis://127.0.0.1:6379/0] [--profile DIR]

One ``interlink run`` listener (shared queue: no workers of its own) and ``--workers`` ``interlink worker``
processes, the shipped defaults otherwise (worker threads, mapping processes, validation sampled), an
NDJSON file destination; a PostgreSQL database the run creates and drops, Redis keys under a prefix of its
own (``queue_namespace``), deleted after. ORU^R01 with ``--obx`` OBX sent on ``--conns`` MLLP connections,
each waiting for its ACK. Prints msg/s ACKed and delivered end to end (time until the store has nothing
unfinished), and the CPU time per message of each process from ``/proc/<pid>/stat`` (with its children:
the mapping processes; the PostgreSQL backends of the run's database; Redis, which other users of the
server may share), far less sensitive than wall time to what else runs on a shared machine.
``--profile DIR``: py-spy records each process while measuring, where it holds the GIL (speedscope files).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import drop_database, own_database  # noqa: E402
from bench.pipeline import blast  # noqa: E402
from tests.integration.harness import EngineProcess, wait_until  # noqa: E402
from tests.integration.messages import oru  # noqa: E402
from tests.integration.procfs import children  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def own_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_s(pid: int) -> float:
    """CPU seconds of a process and of its children (the mapping processes)."""
    return own_cpu_s(pid) + sum(cpu_s(c) for c in children(pid))


def backends(store_url: str) -> list[int]:
    """The PostgreSQL server processes connected to the run's database."""
    from sqlalchemy import create_engine, text

    name = store_url.rsplit("/", 1)[1]
    e = create_engine(store_url.rsplit("/", 1)[0] + "/postgres")
    try:
        with e.connect() as c:
            rows = c.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :n"), {"n": name})
            return [int(r[0]) for r in rows]
    finally:
        e.dispose()


def transactions(store_url: str) -> tuple[int, int]:
    """Transactions committed in the run's database so far, and statements' rows returned + changed."""
    from sqlalchemy import create_engine, text

    e = create_engine(store_url)
    try:
        with e.connect() as c:
            row = c.execute(
                text(
                    "SELECT xact_commit, tup_returned + tup_inserted + tup_updated + tup_deleted"
                    " FROM pg_stat_database WHERE datname = current_database()"
                )
            ).one()
            return int(row[0]), int(row[1])
    finally:
        e.dispose()


def redis_cpu_s(client: object) -> float:
    info = client.info("cpu")  # type: ignore[attr-defined]
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


class Sample:
    """CPU seconds per process group at one moment."""

    def __init__(self, groups: dict[str, list[int]], pg: list[int], redis_client: object) -> None:
        self.cpu = {name: sum(cpu_s(p) for p in pids) for name, pids in groups.items()}
        self.own = {name: sum(own_cpu_s(p) for p in pids) for name, pids in groups.items()}
        self.pg = {p: cpu_s(p) for p in pg}
        self.redis = redis_cpu_s(redis_client)


def run(args: argparse.Namespace, workdir: Path, pg_url: str) -> dict:
    import redis

    namespace = f"interlink-bench-{uuid.uuid4().hex[:8]}"
    shipped = {"worker_threads": 8, "sweeper": {"interval_s": 30, "grace_s": 60}, "queue_namespace": namespace}
    listener = EngineProcess(workdir / "listener", database_url=pg_url, queue_url=args.redis, extra_settings=shipped)
    for f in (listener.workdir / "channels").glob("*.yaml"):
        f.write_text(f.read_text().replace("validation: full", "validation: sampled"))
    client = redis.Redis.from_url(args.redis)
    workers: list[EngineProcess] = []
    spies: list[subprocess.Popen[bytes]] = []
    listener.start()
    try:
        for i in range(args.workers):
            w = EngineProcess(workdir / f"worker{i}", database_url=pg_url, queue_url=args.redis)
            w.config.write_text(listener.config.read_text())
            workers.append(w.start("worker", wait=False))
        store = listener.store()
        out = listener.workdir / "out" / "lab-results.ndjson"
        tag = time.monotonic_ns()
        warm = [oru(f"W{tag}-{i}", obx=args.obx, mrn=f"M{i % 300}") for i in range(args.warmup)]
        asyncio.run(blast(listener.lab_port, warm, args.conns, []))
        wait_until(lambda: store.backlog() == 0, 120, "the warm-up to be delivered", 0.1)
        msgs = [oru(f"B{tag}-{i}", obx=args.obx, mrn=f"M{i % 300}") for i in range(args.messages)]
        assert listener.proc is not None
        groups = {"listener": [listener.proc.pid]}
        for i, w in enumerate(workers):
            assert w.proc is not None
            groups[f"worker {i + 1}"] = [w.proc.pid]
        pg = backends(pg_url)
        if args.profile:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            for name, pids in groups.items():
                target = Path(args.profile) / f"{name.replace(' ', '')}.speedscope"
                spies.append(subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "--subprocesses",
                     "--gil", "-f", "speedscope", "-o", str(target), "-r", "50", "--pid", str(pids[0])],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))  # fmt: skip
            time.sleep(1.0)
        before = Sample(groups, pg, client)
        tx0 = transactions(pg_url)
        t0 = time.perf_counter()
        ack_s = asyncio.run(blast(listener.lab_port, msgs, args.conns, []))
        while store.backlog():
            if time.perf_counter() - t0 > 900:
                raise RuntimeError("the pipeline did not finish within 900 s")
            time.sleep(0.02)
        total_s = time.perf_counter() - t0
        after = Sample(groups, pg, client)
        time.sleep(0.6)  # the statistics collector's report interval
        tx1 = transactions(pg_url)
        for spy in spies:
            spy.send_signal(2)  # SIGINT: py-spy writes its file
        for spy in spies:
            spy.wait(60)
        counts = store.status_counts()
        store.close()
        lines = len(out.read_bytes().splitlines()) if out.exists() else 0
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.kill()
        for w in workers:
            w.stop()
        listener.stop()
        keys = list(client.scan_iter(f"{namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()
    n = args.messages
    cpu = {}
    for name in groups:
        cpu[name] = (after.own[name] - before.own[name]) / n * 1000
        mapping = (after.cpu[name] - after.own[name]) - (before.cpu[name] - before.own[name])
        if mapping > 0:
            cpu[f"{name}: mapping processes"] = mapping / n * 1000
    cpu["postgresql (run's backends)"] = sum(after.pg[p] - before.pg.get(p, 0.0) for p in after.pg) / n * 1000
    cpu["redis (shared server)"] = (after.redis - before.redis) / n * 1000
    tx = ((tx1[0] - tx0[0]) / n, (tx1[1] - tx0[1]) / n)
    return {"tx": tx, "ack_rate": n / ack_s, "rate": n / total_s, "cpu_ms": cpu, "counts": counts, "lines": lines}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--warmup", type=int, default=400)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--obx", type=int, default=8, help="OBX segments per ORU^R01")
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                    help="an administrative connection: the run's own database is made beside it")  # fmt: skip
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--profile", help="folder for py-spy profiles of each process while measuring")
    args = ap.parse_args()
    pg_url = own_database(args.pg)
    if pg_url is None:
        sys.exit("PostgreSQL is not reachable")
    try:
        with tempfile.TemporaryDirectory(prefix="interlink-bench-") as wd:
            r = run(args, Path(wd), pg_url)
    finally:
        drop_database(args.pg, pg_url)
    load = os.getloadavg()
    print(f"PostgreSQL + Redis, 1 listener + {args.workers} workers; ORU^R01 with {args.obx} OBX, "
          f"{args.messages} messages on {args.conns} connections; NDJSON destination")  # fmt: skip
    print(f"  end to end {r['rate']:7.0f} msg/s   (ACKed at {r['ack_rate']:.0f} msg/s)   target >= 1,000: "
          f"{'met' if r['rate'] >= 1000 else 'missed'}")  # fmt: skip
    print(f"  delivered: {r['lines']} NDJSON lines (warm-up included); statuses {dict(r['counts'])}")
    print(f"  PostgreSQL per message: {r['tx'][0]:.2f} transactions committed, {r['tx'][1]:.0f} rows read or written")
    print("  CPU per message (ms):")
    for name, ms in r["cpu_ms"].items():
        print(f"    {name:<30}{ms:7.3f}")
    engine_ms = sum(ms for name, ms in r["cpu_ms"].items() if not name.startswith("redis"))
    print(f"    {'engine + its PostgreSQL':<30}{engine_ms:7.3f}   (= {1000 / engine_ms:.0f} msg/s per core)")
    print(f"  load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
