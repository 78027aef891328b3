"""Stored bytes per message: ORU^R01 (8 OBX, ~1 KB) end to end into the SQLite store and an NDJSON file.

    python bench/storage.py [--messages 2000] [--conns 4]

Runs a real ``interlink run`` (SQLite store, in-process queue, NDJSON destination), sends the messages,
waits until all are delivered, stops the engine, then reads the database's pages per table and index
(SQLite's ``dbstat``) and the bytes of the ``contents`` column by kind. ``--fhir``: delivered to the FHIR
test server (tests/fhir_server) instead, which adds the requests and responses kept per attempt. Prints
bytes per message: the target is ≤ 3 KB in the store (issue 10). Not a timing benchmark: the figure does
not depend on load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pipeline import blast  # noqa: E402
from tests.integration.harness import EngineProcess  # noqa: E402
from tests.integration.messages import oru  # noqa: E402


def measure(workdir: Path, n: int, conns: int, fhir_base_url: str | None = None) -> dict[str, float]:
    eng = EngineProcess(workdir, fhir_base_url=fhir_base_url)
    eng.start()
    try:
        store = eng.store()
        tag = time.monotonic_ns()
        msgs = [oru(f"S{tag}-{i}", obx=8, mrn=f"M{i % 300}") for i in range(n)]
        asyncio.run(blast(eng.lab_port, msgs, conns))
        deadline = time.monotonic() + 600
        while store.backlog():
            if time.monotonic() > deadline:
                raise RuntimeError("pipeline did not finish within 600 s")
            time.sleep(0.05)
        store.close()
    finally:
        eng.stop()
    db = workdir / "data" / "interlink.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("VACUUM")
    figures: dict[str, float] = {"raw message bytes": sum(map(len, msgs)) / n}
    for name, size in con.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"):
        if size >= 4096 * 4:
            figures[f"table/index {name}"] = size / n
    for kind, size, rows in con.execute("SELECT kind, sum(length(data)), count(*) FROM contents GROUP BY kind"):
        figures[f"contents.data {kind} ({rows / n:.2f} rows)"] = size / n
    figures["database file"] = db.stat().st_size / n
    out = workdir / "out" / "lab-results.ndjson"
    if out.exists():
        figures["NDJSON file"] = out.stat().st_size / n
    con.close()
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--fhir", action="store_true", help="Deliver to the FHIR test server (tests/fhir_server).")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        base_url = None
        if args.fhir:
            from tests.fhir_server.launch import FhirTestServer

            base_url = stack.enter_context(FhirTestServer()).base_url
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="interlink-storage-"))
        figures = measure(Path(tmp), args.messages, args.conns, base_url)
    where = "the FHIR test server" if args.fhir else "an NDJSON file"
    print(f"bytes per message, {args.messages} ORU^R01 with 8 OBX delivered to {where} (after VACUUM):")
    for name, value in figures.items():
        print(f"  {name:<40} {value:>9,.0f}")


if __name__ == "__main__":
    main()
