"""Message search on PostgreSQL with 1,000,000 messages, and what the search indexes cost ingest.

    python bench/search.py [--messages 1000000] [--queries 200] [--pg postgresql+psycopg://postgres@127.0.0.1/postgres]

1. Creates its own database ``interlink_bench_search_<pid>`` (dropped at the end), migrates it with the
   engine's own migrations, and fills it fast: ``--messages`` rows of ``messages`` (3 channels, 8 types, a
   mix of statuses, 30 days of receive times) and two ``message_keys`` rows each (the patient's MRN, one of
   ``messages / 10`` patients, and the message's accession number, both keyed hashes as the pipeline
   writes them), by COPY with the secondary indexes dropped and built again afterwards, then ANALYZE.
   No content rows: a search never reads ``contents``.
2. Times the first page (50 rows, newest first, with its deliveries) of ``engine.store.search.search``
   — what the API and CLI call — by MRN, control id, accession number and a one-hour time range:
   p50/p95 over ``--queries`` random values each, and prints each query's plan (EXPLAIN) once.
3. Ingest with and without the 0007 search indexes (``ix_messages_control_id``, ``ix_messages_received``):
   ``Store.insert_messages`` in batches of 50 from one thread into a fresh database, alternating the two,
   ``--rounds`` times ``--ingest`` messages; prints messages/s (median of rounds) and the ratio, and the
   WAL bytes written per message (PostgreSQL's own count of the work, whatever else runs on the machine).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from engine.store import NewMessage, Store  # noqa: E402
from engine.store.search import MessageQuery, search, statement  # noqa: E402

CHANNELS = ("lab", "adt", "imaging")
TYPES = ("ORU^R01", "ADT^A01", "ADT^A08", "ADT^A03", "ORM^O01", "SIU^S12", "study", "MDM^T02")
STATUSES = ("sent",) * 90 + ("error",) * 4 + ("filtered",) * 3 + ("dead",) * 2 + ("duplicate",)
DAYS = 30
SEARCH_INDEXES = ("ix_messages_control_id", "ix_messages_received")


def admin_engine(url: str) -> Engine:
    return create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})


def create_database(admin: Engine, name: str) -> None:
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{name}"'))


def drop_database(admin: Engine, name: str) -> None:
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def url_of(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


# -- 1. fill ---------------------------------------------------------------------------------------


def _copy(cur: Any, table: str, columns: str, rows: Iterator[str]) -> None:
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        buf = io.StringIO()
        for i, line in enumerate(rows, 1):
            buf.write(line)
            if i % 50_000 == 0:
                copy.write(buf.getvalue())
                buf = io.StringIO()
        copy.write(buf.getvalue())


def fill(store: Store, n: int, now: float) -> dict[str, Any]:
    """``n`` messages and their keys; returns what the queries will look for."""
    rng = random.Random(7)
    patients = max(n // 10, 1)
    mrn_hash = [store.pseudonym(f"MRN{p:07d}") for p in range(patients)]
    start = now - DAYS * 86400
    step = DAYS * 86400 / n
    ids: list[str] = []
    owners: list[int] = []

    def message_rows() -> Iterator[str]:
        for i in range(n):
            at = start + i * step + rng.random() * step
            mid = f"{int(at * 1e6):014x}{i:018x}"
            ids.append(mid)
            owners.append(rng.randrange(patients))
            status = rng.choice(STATUSES)
            error = "PID-7: not a valid calendar date" if status == "error" else "\\N"
            yield (
                f"{mid}\t{CHANNELS[i % 3]}\t{status}\t{at}\t{at + 0.2}\t127.0.0.1\t{TYPES[i % len(TYPES)]}\t"
                f"LIS|LAB\tC{i:09d}\tlab\x1fLIS|LAB\x1fC{i:09d}\t\\N\t{error}\t1024\t\thl7v2\tutf-8\t\\N\t\n"
            )

    def key_rows() -> Iterator[str]:
        for i, (mid, owner) in enumerate(zip(ids, owners, strict=True)):
            yield f"{mid}\tmrn\t{mrn_hash[owner]}\n"
            yield f"{mid}\taccession\t{store.pseudonym(f'ACC{i:09d}')}\n"

    def delivery_rows() -> Iterator[str]:
        for mid in ids:
            yield f"{mid}\tehr\t\tsent\t1\t0\t0\t200\t\\N\n"

    raw = store.work.raw_connection()
    try:
        cur = raw.cursor()
        indexes = [
            (name, sql)
            for name, sql in cur.execute(
                "SELECT indexname, indexdef FROM pg_indexes"
                " WHERE tablename IN ('messages', 'message_keys', 'deliveries') AND indexname NOT LIKE '%pkey'"
            ).fetchall()
        ]
        for name, _ in indexes:
            cur.execute(f'DROP INDEX "{name}"')
        t0 = time.perf_counter()
        _copy(
            cur,
            "messages",
            "id, channel, status, received_at, updated_at, peer, message_type, sender, control_id, dedupe_key,"
            " duplicate_of, error, size_bytes, lane, kind, charset, source_time, group_key",
            message_rows(),
        )
        _copy(cur, "message_keys", "message_id, kind, value", key_rows())
        _copy(
            cur,
            "deliveries",
            "message_id, destination, target, status, attempts, next_attempt_at, updated_at, last_status_code,"
            " last_error",
            delivery_rows(),
        )
        raw.commit()
        copied = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _, sql in indexes:
            cur.execute(sql)
        raw.commit()
        indexed = time.perf_counter() - t0
        raw.driver_connection.autocommit = True  # type: ignore[union-attr]
        cur = raw.driver_connection.cursor()  # type: ignore[union-attr]
        cur.execute("VACUUM ANALYZE messages")
        cur.execute("VACUUM ANALYZE message_keys")
        cur.execute("VACUUM ANALYZE deliveries")
    finally:
        raw.close()
    print(f"filled {n:,} messages + {2 * n:,} keys + {n:,} deliveries: COPY {copied:.1f} s, indexes {indexed:.1f} s")
    return {"patients": patients, "start": start, "n": n}


# -- 2. search -------------------------------------------------------------------------------------


def explain(store: Store, q: MessageQuery) -> str:
    from sqlalchemy.dialects import postgresql

    stmt = statement(store, q)
    sql = str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    with store.work.connect() as c:
        return "\n".join(r[0] for r in c.exec_driver_sql("EXPLAIN (ANALYZE, COSTS OFF) " + sql))


def time_queries(store: Store, name: str, queries: list[MessageQuery]) -> tuple[float, float, float]:
    search(store, queries[0])  # a warm connection
    took = []
    rows = 0
    for q in queries:
        t0 = time.perf_counter()
        page = search(store, q)
        took.append((time.perf_counter() - t0) * 1000)
        rows += len(page.rows)
    took.sort()
    p50, p95 = statistics.median(took), took[int(len(took) * 0.95) - 1]
    print(
        f"  {name:<14} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  max {took[-1]:7.2f} ms"
        f"  ({rows / len(queries):.1f} rows/page)"
    )
    return p50, p95, took[-1]


def run_searches(
    store: Store, info: dict[str, Any], count: int, show_plans: bool
) -> dict[str, tuple[float, float, float]]:
    rng = random.Random(11)
    n = info["n"]
    sets = {
        "mrn": [MessageQuery(mrn=f"MRN{rng.randrange(info['patients']):07d}") for _ in range(count)],
        "control_id": [MessageQuery(control_id=f"C{rng.randrange(n):09d}") for _ in range(count)],
        "accession": [MessageQuery(accession=f"ACC{rng.randrange(n):09d}") for _ in range(count)],
        "time_range": [
            MessageQuery(since=(s := info["start"] + rng.random() * (DAYS - 1) * 86400), until=s + 3600)
            for _ in range(count)
        ],
        "channel+status": [MessageQuery(channel=rng.choice(CHANNELS), status="error") for _ in range(count)],
    }
    if show_plans:
        for name, qs in sets.items():
            print(f"--- plan: {name}\n{explain(store, qs[0])}")
    print(f"first page (50 rows) of engine.store.search over {n:,} messages, {count} queries each:")
    return {name: time_queries(store, name, qs) for name, qs in sets.items()}


# -- 3. ingest with and without the search indexes ----------------------------------------------------


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ingest_rate(
    admin: Engine, admin_url: str, name: str, messages_n: int, with_indexes: bool
) -> tuple[float, float, float]:
    """Messages/s, WAL bytes and the server process's CPU µs per message of ``Store.insert_messages`` (WAL
    and CPU: the work itself, far less sensitive than wall time to what else runs on the machine)."""
    create_database(admin, name)
    store = Store(url_of(admin_url, name))
    try:
        if not with_indexes:
            with store.work.begin() as c:
                for ix in SEARCH_INDEXES:
                    c.execute(text(f'DROP INDEX "{ix}"'))
        raw = b"MSH|^~\\&|LIS|LAB|EHR|HOSP|20240101120000||ORU^R01^ORU_R01|C|P|2.5.1\rPID|1||M^^^HOSP^MR\r" * 8
        batches = [
            [
                NewMessage("lab", raw, message_type="ORU^R01", sender="LIS|LAB", control_id=f"C{b}-{i}",
                           dedupe=f"LIS|LAB\x1fC{b}-{i}", dedupe_window_s=3600, lane=f"{i % 97:024x}")
                for i in range(50)
            ]
            for b in range(messages_n // 50)
        ]  # fmt: skip
        store.insert_messages(batches[0])  # the writer's connection
        cur = store._ingest_connection().cursor()
        cur.execute("SELECT pg_backend_pid()")
        backend = int(cur.fetchone()[0])
        cur.close()
        with store.work.connect() as c:
            lsn0 = c.exec_driver_sql("SELECT pg_current_wal_lsn()").scalar()
        cpu0 = _cpu_s(backend)
        t0 = time.perf_counter()
        for batch in batches[1:]:
            store.insert_messages(batch)
        took = time.perf_counter() - t0
        cpu = _cpu_s(backend) - cpu0
        with store.work.connect() as c:
            wal = c.exec_driver_sql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn0,)).scalar()
        n = (len(batches) - 1) * 50
        return n / took, float(wal) / n, cpu / n * 1e6
    finally:
        store.close()
        drop_database(admin, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ingest", type=int, default=20_000, help="messages per ingest round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--no-plans", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--skip-ingest", action="store_true")
    args = ap.parse_args()
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} on {os.cpu_count()} cores")
    admin = admin_engine(args.pg)
    name = f"interlink_bench_search_{os.getpid()}"
    try:
        if not args.skip_search:
            create_database(admin, name)
            store = Store(url_of(args.pg, name))
            try:
                info = fill(store, args.messages, time.time())
                figures = run_searches(store, info, args.queries, not args.no_plans)
                worst = max(p95 for _, p95, _ in figures.values())
                print(f"worst p95 {worst:.1f} ms (target < 200 ms): {'met' if worst < 200 else 'MISSED'}")
            finally:
                store.close()
                drop_database(admin, name)
        if not args.skip_ingest:
            rates: dict[bool, list[float]] = {True: [], False: []}
            wal: dict[bool, list[float]] = {True: [], False: []}
            cpu: dict[bool, list[float]] = {True: [], False: []}
            for r in range(args.rounds):
                for with_ix in (False, True) if r % 2 == 0 else (True, False):
                    rate, per, us = ingest_rate(admin, args.pg, f"{name}_ingest", args.ingest, with_ix)
                    rates[with_ix].append(rate)
                    wal[with_ix].append(per)
                    cpu[with_ix].append(us)
            without, with_ = statistics.median(rates[False]), statistics.median(rates[True])
            wal_without, wal_with = statistics.median(wal[False]), statistics.median(wal[True])
            cpu_without, cpu_with = statistics.median(cpu[False]), statistics.median(cpu[True])
            print(f"Store.insert_messages, batches of 50, fresh database, {args.rounds} rounds of {args.ingest:,}:")
            print(
                f"  without the search indexes {without:8.0f} msg/s  {[round(x) for x in rates[False]]}"
                f"  WAL {wal_without:,.0f} B/message  server CPU {cpu_without:.1f} µs/message"
            )
            print(
                f"  with the search indexes    {with_:8.0f} msg/s  {[round(x) for x in rates[True]]}"
                f"  WAL {wal_with:,.0f} B/message  server CPU {cpu_with:.1f} µs/message"
            )
            print(
                f"  with/without: throughput {with_ / without:.3f} (target ≥ 0.90), WAL {wal_with / wal_without:.3f},"
                f" server CPU {cpu_with / cpu_without:.3f}"
            )
    finally:
        drop_database(admin, name)
        admin.dispose()
    print(f"load at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
