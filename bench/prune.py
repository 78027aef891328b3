"""Ingest latency while retention prunes a large store: p99 of a commit with and without the pruner.

    python bench/prune.py [--old 1000000] [--rate 1000] [--seconds 20] [--threads 4]

Creates its own SQLite store in a temporary folder (WAL, ingest ``synchronous=FULL`` as shipped), fills it
with ``--old`` finished messages received 100 days ago (each with its raw message and its bundle, sized as
the engine stores an ORU^R01 with 8 OBX compressed: ~350 B and ~1.5 KB, plus a delivery and an attempt),
by multi-row inserts straight into the tables. Then ``--threads`` threads call ``Store.insert_messages``
with one message each (the ingest writer's smallest group commit), together at ``--rate`` messages a
second: first alone for ``--seconds``, then for as long as a :class:`engine.store.retention.Pruner` with
``content_days: 30, metadata_days: 60`` takes to remove every old message (the default batch size and
pause, or ``--batch``/``--pause-ms``). Prints the commit latency p50/p99/max of both phases and how fast
the pruner went. Target (issue 10): ingest p99 ≤ 10 ms while pruning. Wall-clock: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.store import NewMessage, Store  # noqa: E402
from engine.store.retention import DAY_S, Pruner, RetentionSettings  # noqa: E402
from tests.integration.messages import oru  # noqa: E402

FILL_CHUNK = 20_000


def fill(db: Path, n: int) -> float:
    """``n`` sent messages received 100 days ago with their content, delivery and attempt; seconds taken."""
    t0 = time.perf_counter()
    con = sqlite3.connect(db)
    con.execute("PRAGMA synchronous=OFF")
    raw, bundle = os.urandom(350), os.urandom(1500)  # incompressible, as stored bytes are after zstd
    at = time.time() - 100 * DAY_S
    base = int(at * 1_000_000)
    for start in range(0, n, FILL_CHUNK):
        ids = [f"{base + i:014x}{i:018x}" for i in range(start, min(n, start + FILL_CHUNK))]
        t = at + start / 1000  # one group commit's time per chunk, then a µs apart (a real store's spread)
        con.executemany(
            "INSERT INTO messages (id, channel, status, received_at, updated_at, peer, message_type, sender,"
            " control_id, dedupe_key, size_bytes, lane, kind, charset, group_key)"
            " VALUES (?, 'lab', 'sent', ?, ?, '127.0.0.1', 'ORU^R01', 'LIS|LAB', ?, ?, 1024, ?, 'hl7v2', 'utf-8', '')",
            [(i, t + k / 1e6, t, i[-10:], f"lab\x1fLIS|LAB\x1f{i[-10:]}", i[-8:]) for k, i in enumerate(ids)],
        )
        con.executemany(
            "INSERT INTO contents (message_id, kind, destination, data, codec, created_at) VALUES (?, ?, '', ?, 1, ?)",
            [(i, kind, data, t) for i in ids for kind, data in (("raw", raw), ("transformed", bundle))],
        )
        con.executemany(
            "INSERT INTO deliveries (message_id, destination, target, status, attempts, next_attempt_at, updated_at)"
            " VALUES (?, 'ndjson', 'f', 'sent', 1, ?, ?)",
            [(i, t, t) for i in ids],
        )
        con.executemany(
            "INSERT INTO attempts (message_id, destination, number, started_at, duration_ms, outcome, status_code)"
            " VALUES (?, 'ndjson', 1, ?, 0.2, 'sent', NULL)",
            [(i, t) for i in ids],
        )
        con.commit()
    con.close()
    return time.perf_counter() - t0


def ingest(store: Store, rate: float, threads: int, going: Callable[[], bool]) -> list[float]:
    """Commit latencies (ms) of single-message inserts from ``threads`` threads sharing ``rate`` msg/s,
    while ``going()``."""
    latencies: list[float] = []
    lock = threading.Lock()
    period = threads / rate

    def one(k: int) -> None:
        mine: list[float] = []
        due = time.monotonic() + k * period / threads
        i = 0
        while going():
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            msg = NewMessage("lab", oru(f"P{k}-{i}-{time.monotonic_ns()}", obx=8), peer="127.0.0.1")
            t0 = time.perf_counter()
            store.insert_messages([msg])
            mine.append((time.perf_counter() - t0) * 1000)
            due += period  # a fixed schedule: a slow commit is not hidden by sending less
            i += 1
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=one, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return latencies


def summary(name: str, ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100)
    return f"  {name:<22} n={len(ms):>6}  p50 {q[49]:6.2f} ms  p99 {q[98]:6.2f} ms  max {max(ms):7.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=int, default=1_000_000, help="Old finished messages to prune.")
    ap.add_argument("--rate", type=float, default=1000, help="Ingest rate, messages a second (all threads).")
    ap.add_argument("--seconds", type=float, default=20, help="Length of the phase without pruning.")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=RetentionSettings().batch_size)
    ap.add_argument("--pause-ms", type=float, default=RetentionSettings().pause_ms)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="interlink-prune-") as tmp:
        db = Path(tmp) / "store.db"
        store = Store(f"sqlite:///{db}")
        took = fill(db, args.old)
        print(f"filled {args.old:,} old messages in {took:.0f} s ({db.stat().st_size / 2**20:,.0f} MiB)")
        print(f"ingest at {args.rate:,.0f} msg/s on {args.threads} threads:")
        end = time.monotonic() + args.seconds
        print(summary("without pruning", ingest(store, args.rate, args.threads, lambda: time.monotonic() < end)))

        settings = RetentionSettings(content_days=30, metadata_days=60, batch_size=args.batch, pause_ms=args.pause_ms)
        pruner = Pruner(store, settings)
        result: dict[str, float] = {}

        def prune() -> None:
            t0 = time.perf_counter()
            report = pruner.prune()
            result.update(
                seconds=time.perf_counter() - t0,
                messages=report.total().messages,
                batches=report.batches,
                longest_ms=report.longest_ms,
                mean_ms=report.locked_ms / max(report.batches, 1),
            )

        background = threading.Thread(target=prune)
        background.start()
        during = ingest(store, args.rate, args.threads, background.is_alive)  # for as long as the pruner runs
        print(summary("while pruning", during))
        rate = result["messages"] / result["seconds"]
        print(
            f"  pruner: {result['messages']:,.0f} messages in {result['batches']:,.0f} batches of {args.batch}, "
            f"{result['seconds']:.0f} s ({rate:,.0f} messages/s), pause {args.pause_ms} ms; transactions: mean "
            f"{result['mean_ms']:.1f} ms, longest {result['longest_ms']:.1f} ms"
        )
        store.close()
    print(f"load while measuring: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
