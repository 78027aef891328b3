"""Ingest benchmark: MLLP → commit → ACK, beside a bare asyncio MLLP echo server measured in the same run.

    python bench/ingest.py [--messages 20000] [--pg postgresql+psycopg://postgres@127.0.0.1/postgres]

For 1 and 4 connections it prints messages/s and p50/p99 ACK latency of
- a bare asyncio MLLP echo server (the ceiling of Python + asyncio + loopback on this machine),
- the engine's MLLP source + group-committed store (SQLite, and PostgreSQL when reachable),
and the engine/echo ratio. The server runs in its own process; the load generator in this one.
Workers are off: this measures the accept path only (bench/pipeline.py measures end to end).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ORU = (
    "MSH|^~\\&|LIS|LAB|EHR|HOSP|20240101120000||ORU^R01^ORU_R01|{cid}|P|2.5.1\r"
    "PID|1||{mrn}^^^HOSP^MR||DOE^JANE||19800101|F\r"
    "OBR|1||F{cid}|GLU^Glucose\r"
    + "".join(f"OBX|{i}|NM|GLU{i}^Glucose {i}||5.{i}|mmol/L|3.5-6.5|N|||F\r" for i in range(1, 9))
)
ACK = b"MSH|^~\\&|EHR|HOSP|LIS|LAB|20240101120000||ACK^R01^ACK|1|P|2.5.1\rMSA|AA|1\r"


def echo_server(port_q: mp.Queue) -> None:  # type: ignore[type-arg]
    """A bare MLLP server: frame in, fixed ACK out."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\x1c\r")
                writer.write(b"\x0b" + ACK + b"\x1c\r")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_q.put(srv.sockets[0].getsockname()[1])
        await srv.serve_forever()

    asyncio.run(main())


def engine_server(port_q: mp.Queue, database_url: str, workdir: str, sync: str = "FULL") -> None:  # type: ignore[type-arg]
    """The engine's accept path only: MLLP source + ingest + group commit (no workers)."""
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
            "channels_dir": wd / "channels",
            "mappings_dir": ROOT / "mappings",
        }
    )

    async def main() -> None:
        engine = Engine(settings, workers=False, sweeper=False)
        # port 0: let the OS choose, then report it
        engine.channels = [
            c.model_copy(update={"source": c.source.model_copy(update={"port": 0})}) for c in engine.channels
        ]
        await engine.start()
        port_q.put(engine.sources["lab-results"].port)
        await asyncio.Event().wait()

    asyncio.run(main())


async def load(port: int, conns: int, total: int) -> tuple[float, list[float]]:
    per = total // conns
    lat: list[float] = []

    async def one(c: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(per):
            payload = ORU.format(cid=f"{c}-{i}-{time.monotonic_ns()}", mrn=i % 500).encode()
            t0 = time.perf_counter()
            writer.write(b"\x0b" + payload + b"\x1c\r")
            reply = await reader.readuntil(b"\x1c\r")
            lat.append(time.perf_counter() - t0)
            if b"MSA|AA" not in reply and b"MSA|CA" not in reply:
                raise RuntimeError(f"not acknowledged: {reply[:200]!r}")
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in range(conns)))
    return time.perf_counter() - t0, lat


def measure(target, args: tuple, conns: int, total: int) -> dict:  # type: ignore[type-arg]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(q, *args), daemon=True)
    p.start()
    try:
        port = q.get(timeout=60)
        asyncio.run(load(port, conns, min(2000, total)))  # warm-up
        elapsed, lat = asyncio.run(load(port, conns, total))
    finally:
        p.kill()
        p.join()
    lat.sort()
    return {
        "rate": len(lat) / elapsed,
        "p50": statistics.median(lat) * 1000,
        "p99": lat[int(len(lat) * 0.99)] * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument(
        "--pg",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="an administrative connection: the run creates its own database beside it and drops it after",
    )
    args = ap.parse_args()

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
    print(f"{'server':<22}{'conns':>6}{'msg/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs echo':>9}")
    for conns in (1, 4, 16):
        echo = measure(echo_server, (), conns, args.messages)
        print(f"{'asyncio echo':<22}{conns:>6}{echo['rate']:>10.0f}{echo['p50']:>9.2f}{echo['p99']:>9.2f}{'1.00':>9}")
        for name, url, sync in backends:
            with tempfile.TemporaryDirectory() as wd:
                db = url or f"sqlite:///{wd}/interlink.db"
                r = measure(engine_server, (db, wd, sync), conns, args.messages)
            ratio = r["rate"] / echo["rate"]
            print(f"{'engine ' + name:<22}{conns:>6}{r['rate']:>10.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{ratio:>9.2f}")


if __name__ == "__main__":
    main()
