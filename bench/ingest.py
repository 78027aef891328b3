"""Ingest benchmark: the ACK rate of the engine as shipped, beside the durable and bare echo of the same run.

    python bench/ingest.py [--messages 20000] [--connections 1 4 16] [--no-accept-path]
                           [--pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

For each number of connections it prints messages/s and p50/p99 ACK latency of, in this order:

- **the engine as shipped**: a real ``interlink run`` process with the default settings (workers on,
  mapping processes, SQLite ``synchronous=FULL``, in-process queue, back-pressure, channel validation
  sampled) and an NDJSON file destination: what a user gets;
- the **durable echo** and the **bare echo** (``bench/echo.py``): the yardstick;
- the engine's accept path alone (MLLP source + group commit, workers off, no backlog bound): SQLite FULL,
  SQLite NORMAL, and PostgreSQL when reachable.

Every rate is also printed as a ratio to the durable echo; the targets of issue 10 are checked at the end
(ACK rate as shipped ≥ 0.5 x durable echo on 4 and 16 connections, p99 ≤ 10 ms on 4). Every server runs in
a process of its own, on ports it chose (the OS's free ports), with its data in a temporary folder
(PostgreSQL: a database the run creates and drops); the load generator runs in this one.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.echo import HEADER, ORU, measure, measure_echo, row  # noqa: E402


def accept_path(port_q: Any, database_url: str, workdir: str, sync: str) -> None:
    """The engine's accept path only: MLLP source + ingest + group commit (no workers, no backlog bound)."""
    import yaml

    from engine.runtime import Engine
    from engine.settings import Settings

    wd = Path(workdir)
    (wd / "channels").mkdir(exist_ok=True)
    channel = {
        "name": "lab-results",
        "source": {"type": "mllp", "port": 1, "host": "127.0.0.1", "accept": ["ORU^R01"]},
        "destinations": [{"name": "out", "type": "file", "path": str(wd / "out.ndjson")}],
    }
    (wd / "channels" / "lab.yaml").write_text(yaml.safe_dump(channel))
    settings = Settings.model_validate(
        {
            "database_url": database_url,
            "sqlite_synchronous": sync,
            "data_dir": wd / "data",
            "channels_dir": wd / "channels",
            "mappings_dir": ROOT / "mappings",
            "metrics_port": 0,  # never a port the run did not choose
            "http_port": 0,
            "backlog": {"slow_at": 0, "refuse_at": 0},  # no workers: the backlog only grows
        }
    )

    async def main() -> None:
        engine = Engine(settings, workers=False, sweeper=False)
        # port 0: let the OS choose, then report it
        engine.channels = [
            c.model_copy(update={"source": c.source.model_copy(update={"port": 0})}) for c in engine.channels
        ]
        await engine.start()
        port_q.put(engine.sources["lab-results"].port)  # type: ignore[attr-defined]
        await asyncio.Event().wait()

    asyncio.run(main())


def measure_process(target: Any, args: tuple[Any, ...], conns: int, total: int) -> dict[str, float]:
    """:func:`bench.echo.measure` a server started by ``target(port_q, *args)`` in a process of its own."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(q, *args), daemon=True)
    p.start()
    try:
        return measure(q.get(timeout=120), conns, total)
    finally:
        p.kill()
        p.join()


def shipped_engine(workdir: Path, fhir_base_url: str | None = None, **settings: Any) -> Any:
    """An ``interlink run`` process (not started) in ``workdir`` as shipped: the default settings
    (config/engine.yaml; ``settings`` may change some), channel validation sampled, an NDJSON destination
    (or the FHIR server at ``fhir_base_url``), every port chosen free."""
    from tests.integration.harness import EngineProcess

    # the harness's test settings back to the shipped defaults
    shipped = {"worker_threads": 8, "sweeper": {"interval_s": 30, "grace_s": 60}, **settings}
    eng = EngineProcess(workdir, fhir_base_url=fhir_base_url, extra_settings=shipped)
    for f in (workdir / "channels").glob("*.yaml"):
        f.write_text(f.read_text().replace("validation: full", "validation: sampled"))
    return eng


def measure_shipped(conns: int, total: int) -> dict[str, float]:
    """The engine as shipped (:func:`shipped_engine`), in a temporary folder, started for this measurement
    alone. The warm-up is drained before measuring; ``backlog`` is the most messages found unfinished while
    measuring (sampled every 0.25 s)."""
    with tempfile.TemporaryDirectory(prefix="interlink-bench-") as wd:
        eng = shipped_engine(Path(wd))
        eng.start()
        try:
            store = eng.store()
            measure(eng.lab_port, conns, min(2000, total), warmup=0)
            while store.backlog():
                time.sleep(0.05)
            seen = [0]
            done = threading.Event()

            def watch() -> None:
                while not done.wait(0.25):
                    seen.append(store.backlog())

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            r = measure(eng.lab_port, conns, total, warmup=0)
            done.set()
            watcher.join()
            r["backlog"] = max(seen)
            store.close()
        finally:
            eng.stop()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--no-accept-path", action="store_true", help="only the engine as shipped and the echoes")
    ap.add_argument(
        "--pg",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="an administrative connection: the run creates its own database beside it and drops it after",
    )
    args = ap.parse_args()

    backends: list[tuple[str, str | None, str]] = []
    pg_db = None
    if not args.no_accept_path:
        backends = [("sqlite FULL", None, "FULL"), ("sqlite NORMAL", None, "NORMAL")]
        pg_db = own_database(args.pg)
        if pg_db is not None:
            backends.append(("postgresql", pg_db, "FULL"))
    try:
        run(args, backends)
    finally:
        if pg_db is not None:
            drop_database(args.pg, pg_db)


def own_database(admin_url: str) -> str | None:
    """A new, empty PostgreSQL database for this run (never one the benchmark did not create)."""
    from sqlalchemy import create_engine, text

    name = f"interlink_bench_{uuid.uuid4().hex[:8]}"
    try:
        e = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 2})
        with e.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        e.dispose()
    except Exception as exc:
        print(f"(PostgreSQL not reachable, skipped: {exc.__class__.__name__})")
        return None
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, url: str) -> None:
    from sqlalchemy import create_engine, text

    e = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with e.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    e.dispose()


def run(args: argparse.Namespace, backends: list[tuple[str, str | None, str]]) -> None:
    print(f"ORU^R01 with 8 OBX ({len(ORU)} bytes), {args.messages} messages per run\n")
    print(HEADER)
    shipped: dict[int, dict[str, float]] = {}
    durable: dict[int, dict[str, float]] = {}
    for conns in args.connections:
        shipped[conns] = measure_shipped(conns, args.messages)
        durable[conns] = d = measure_echo("durable", conns, args.messages)
        bare = measure_echo("bare", conns, args.messages)
        backlog = f"   (backlog up to {shipped[conns]['backlog']:.0f})"
        print(row("engine as shipped", conns, shipped[conns], d) + backlog)
        print(row("durable echo (SQLite FULL)", conns, d, d))
        print(row("bare echo", conns, bare, d))
        for name, url, sync in backends:
            with tempfile.TemporaryDirectory(prefix="interlink-bench-") as wd:
                db = url or f"sqlite:///{wd}/interlink.db"
                r = measure_process(accept_path, (db, wd, sync), conns, args.messages)
            print(row(f"accept path, {name}", conns, r, d))
    print("\ntargets (issue 10):")
    for conns in (4, 16):
        if conns in shipped:
            ratio = shipped[conns]["rate"] / durable[conns]["rate"]
            verdict = "met" if ratio >= 0.5 else "missed"
            print(f"  ACK rate as shipped, {conns} connections: {ratio:.2f} x durable echo (>= 0.5): {verdict}")
    if 4 in shipped:
        p99 = shipped[4]["p99"]
        print(f"  p99 as shipped, 4 connections: {p99:.1f} ms (<= 10 ms): {'met' if p99 <= 10 else 'missed'}")


if __name__ == "__main__":
    main()
