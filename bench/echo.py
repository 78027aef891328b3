"""The yardstick: a bare MLLP echo and a durable MLLP echo, and the MLLP client every ingest benchmark uses.

    python bench/echo.py [--messages 20000]

- **bare echo**: an asyncio MLLP server answering every frame with a fixed ACK (the ceiling of Python +
  asyncio + loopback on this machine);
- **durable echo**: the same server, but each frame is handed to one writer thread that group-commits every
  frame waiting at that moment to SQLite (WAL, ``synchronous=FULL``) in one transaction, and each frame is
  ACKed only after its commit: the floor of what commit-before-ACK costs in Python, with nothing else done.

:func:`serving` starts either in a process of its own on a free port (the durable one in a temporary folder
it removes), :func:`measure` drives a port with :func:`load` (each connection sends a frame and waits for
its ACK before the next) and returns msg/s with p50/p99 latency. ``bench/ingest.py`` and
``bench/pipeline.py`` print every headline as a ratio to the durable echo measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import queue
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ORU = (
    "MSH|^~\\&|LIS|LAB|EHR|HOSP|20240101120000||ORU^R01^ORU_R01|{cid}|P|2.5.1\r"
    "PID|1||{mrn}^^^HOSP^MR||DOE^JANE||19800101|F\r"
    "OBR|1||F{cid}|GLU^Glucose\r"
    + "".join(f"OBX|{i}|NM|GLU{i}^Glucose {i}||5.{i}|mmol/L|3.5-6.5|N|||F\r" for i in range(1, 9))
)
ACK = b"\x0bMSH|^~\\&|EHR|HOSP|LIS|LAB|20240101120000||ACK^R01^ACK|1|P|2.5.1\rMSA|AA|1\r\x1c\r"
CONNECTIONS = (1, 4, 16)


# -- the servers (each runs in a process of its own) ------------------------------------------------------


def _serve(port_q: Any, answer: Callable[[bytes], Any]) -> None:
    """An MLLP server on a free loopback port: ``await answer(frame)`` before each fixed ACK."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                frame = await reader.readuntil(b"\x1c\r")
                await answer(frame)
                writer.write(ACK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_q.put(srv.sockets[0].getsockname()[1])
        await srv.serve_forever()

    asyncio.run(main())


def bare_echo(port_q: Any) -> None:
    """Frame in, fixed ACK out."""

    async def nothing(frame: bytes) -> None:
        return None

    _serve(port_q, nothing)


def durable_echo(port_q: Any, folder: str) -> None:
    """Frame in, committed to SQLite (WAL, synchronous=FULL) by one group-committing writer thread, ACK out."""
    db = sqlite3.connect(Path(folder) / "echo.db", check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, raw BLOB NOT NULL)")
    waiting: queue.SimpleQueue[tuple[bytes, asyncio.AbstractEventLoop, asyncio.Future[None]]] = queue.SimpleQueue()

    def writer() -> None:
        while True:
            batch = [waiting.get()]
            while True:
                try:
                    batch.append(waiting.get_nowait())
                except queue.Empty:
                    break
            db.execute("BEGIN")
            db.executemany("INSERT INTO m (raw) VALUES (?)", [(frame,) for frame, _, _ in batch])
            db.execute("COMMIT")
            loop = batch[0][1]
            loop.call_soon_threadsafe(_resolve, [fut for _, _, fut in batch])

    threading.Thread(target=writer, name="echo-writer", daemon=True).start()

    async def commit(frame: bytes) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        waiting.put((frame, loop, fut))
        await fut

    _serve(port_q, commit)


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(None)


@contextmanager
def serving(kind: str) -> Iterator[int]:
    """Start the ``bare`` or ``durable`` echo in a process of its own; yields its port; stops it after."""
    ctx = mp.get_context("spawn")
    port_q = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="interlink-echo-") as folder:
        target, args = (bare_echo, ()) if kind == "bare" else (durable_echo, (folder,))
        proc = ctx.Process(target=target, args=(port_q, *args), daemon=True)
        proc.start()
        try:
            yield port_q.get(timeout=60)
        finally:
            proc.kill()
            proc.join()


# -- the client -----------------------------------------------------------------------------------------


async def load(port: int, conns: int, total: int, *, obx_message: str = ORU) -> tuple[float, list[float]]:
    """``total`` ORU^R01 over ``conns`` connections, each waiting for its ACK (AA or CA) before the next;
    returns (seconds, latencies)."""
    per = total // conns
    lat: list[float] = []

    async def one(c: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(per):
            payload = obx_message.format(cid=f"{c}-{i}-{time.monotonic_ns()}", mrn=i % 500).encode()
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


def measure(port: int, conns: int, total: int, *, warmup: int = 2000) -> dict[str, float]:
    """A warm-up, then ``total`` messages: ``rate`` (msg/s), ``p50`` and ``p99`` (ms)."""
    if warmup:
        asyncio.run(load(port, conns, min(warmup, total)))
    elapsed, lat = asyncio.run(load(port, conns, total))
    lat.sort()
    return {
        "rate": len(lat) / elapsed,
        "p50": statistics.median(lat) * 1000,
        "p99": lat[int(len(lat) * 0.99)] * 1000,
    }


def measure_echo(kind: str, conns: int, total: int) -> dict[str, float]:
    """:func:`measure` the ``bare`` or ``durable`` echo, started for this measurement alone."""
    with serving(kind) as port:
        return measure(port, conns, total)


def row(name: str, conns: int, r: dict[str, float], durable: dict[str, float] | None) -> str:
    """One line of the benchmarks' tables: the figures and the ratio to the durable echo."""
    ratio = f"{r['rate'] / durable['rate']:.2f}" if durable else "-"
    return f"{name:<30}{conns:>6}{r['rate']:>10.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{ratio:>11}"


HEADER = f"{'server':<30}{'conns':>6}{'msg/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs durable':>11}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    args = ap.parse_args()
    print(f"ORU^R01 with 8 OBX ({len(ORU)} bytes), {args.messages} messages per run\n")
    print(HEADER)
    for conns in CONNECTIONS:
        durable = measure_echo("durable", conns, args.messages)
        bare = measure_echo("bare", conns, args.messages)
        print(row("durable echo (SQLite FULL)", conns, durable, durable))
        print(row("bare echo", conns, bare, durable))


if __name__ == "__main__":
    main()
