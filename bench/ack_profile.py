"""Where the engine as shipped spends its time while ACKing: py-spy on ``interlink run`` under MLLP load.

    python bench/ack_profile.py [--conns 4] [--seconds 15] [--top 8] [--keep DIR]

Starts the engine as shipped (``bench/ingest.py`` ``shipped_engine``: default settings, workers on, SQLite
FULL, NDJSON destination) in a temporary folder, keeps ``--conns`` MLLP connections sending ORU^R01 (8 OBX)
as fast as ACKs come back, and samples the engine process with py-spy (``pip install py-spy``; it needs to
ptrace a process of the same user) twice, 100 samples/s for ``--seconds`` each:

1. every thread, idle or not (``--idle``): per thread group, the share of its wall time by where it was
   (:func:`place`: the innermost line of the engine's own code and the Python function it was in below
   it, or a wait); a thread group's samples are divided by its number of threads;
2. only threads holding the GIL (``--gil``): the share of wall time the GIL was held, by the same places
   (the engine's Python runs one thread at a time; the mapping processes are not sampled here).

Thread groups: ``event loop`` (MainThread: MLLP, HL7 decision, ACK), ``ingest writer`` (group commit),
``workers`` (dramatiq worker threads: process, map hand-off, claim, deliver), ``queue consumers``, other.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.echo import load  # noqa: E402
from bench.ingest import shipped_engine  # noqa: E402

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^():]+):(?P<line>\d+)\)$")
_WAITS = ("threading.py", "queue.py", "selectors.py", "socket.py", "ssl.py")
_WAIT_FUNCS = {"wait", "get", "select", "sleep", "acquire", "_wait_for_tstate_lock", "join", "poll", "run_forever"}


def group(thread: str, frames: list[str]) -> str:
    if thread == "MainThread":
        return "event loop"
    if thread == "ingest-writer":
        return "ingest writer"
    text = ";".join(frames)
    if "WorkerThread.run" in text:
        return "workers"
    if "ConsumerThread.run" in text:
        return "queue consumers"
    return "other"


def place(frames: list[str]) -> str:
    """Where a sample is: the innermost engine frame with its line (``engine/ingest.py:120``: what that line
    calls, a C function such as a queue's get or SQLite's commit, is below what py-spy shows), then the
    innermost Python frame below it when there is one, or ``waiting in`` when that is a lock, queue, sleep or
    selector; ``idle`` for a thread waiting outside the engine's code."""
    parsed = [m.groupdict() if (m := _FRAME.match(f)) else {"func": f, "file": "", "line": ""} for f in frames]
    leaf = parsed[-1] if parsed else {"func": "?", "file": "", "line": ""}
    leaf_func = leaf["func"].rsplit(".", 1)[-1]
    waiting = (leaf["file"].endswith(_WAITS) and leaf_func in _WAIT_FUNCS) or leaf_func in ("select", "poll")
    own = next((p for p in reversed(parsed) if p["file"].startswith("engine/")), None)
    if own is None:
        return "idle" if waiting else f"{leaf['func']} ({leaf['file'] or '?'})"
    where = f"{own['func']} ({own['file']}:{own['line']})"
    if waiting:
        return f"waiting in {where}"
    return where if own is leaf else f"{where} > {leaf['func']}"


def read_raw(path: Path) -> list[tuple[str, list[str], int]]:
    """py-spy ``--format raw --threads`` lines: (thread name, frames outermost first, samples)."""
    out = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        head, *frames = stack.split(";")
        thread = head.split(": ", 1)[1] if ": " in head else head
        out.append((thread, frames, int(count)))
    return out


def record(pid: int, seconds: float, out: Path, *extra: str) -> None:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    cmd = [spy, "record", "-p", str(pid), "--threads", "-r", "100", "-d", str(int(seconds)), "--format", "raw"]
    subprocess.run([*cmd, *extra, "-o", str(out)], check=True, capture_output=True)


def report(idle: Path, gil: Path, seconds: float, top: int) -> None:
    samples = seconds * 100
    by_group: dict[str, Counter[str]] = defaultdict(Counter)
    threads: dict[str, set[str]] = defaultdict(set)
    for thread, frames, n in read_raw(idle):
        g = group(thread, frames)
        threads[g].add(thread)
        by_group[g][place(frames)] += n
    for g in ("event loop", "ingest writer", "workers", "queue consumers", "other"):
        if g not in by_group:
            continue
        k = len(threads[g])
        print(f"\n{g} ({k} thread{'s' if k > 1 else ''}): share of its wall time")
        for where, n in by_group[g].most_common(top):
            print(f"  {100 * n / (samples * k):5.1f} %  {where}")
    held: Counter[str] = Counter()
    for thread, frames, n in read_raw(gil):
        held[f"{group(thread, frames)}: {place(frames)}"] += n
    groups: Counter[str] = Counter()
    for where, n in held.items():
        groups[where.split(": ", 1)[0]] += n
    print(f"\nGIL held {100 * sum(held.values()) / samples:.0f} % of wall time: "
          + ", ".join(f"{g} {100 * n / samples:.1f} %" for g, n in groups.most_common()))  # fmt: skip
    print("by place (share of wall time):")
    for where, n in held.most_common(top * 2):
        print(f"  {100 * n / samples:5.1f} %  {where}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--keep", type=Path, help="a folder to keep py-spy's raw output in")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="interlink-profile-") as wd:
        eng = shipped_engine(Path(wd))
        eng.start()
        try:
            asyncio.run(load(eng.lab_port, args.conns, 2000))  # warm-up
            stop = threading.Event()
            sent = [0]

            def drive() -> None:
                while not stop.is_set():
                    asyncio.run(load(eng.lab_port, args.conns, 200 * args.conns))
                    sent[0] += 200 * args.conns

            driver = threading.Thread(target=drive, daemon=True)
            driver.start()
            time.sleep(2)
            t0 = time.perf_counter()
            out = args.keep or Path(wd)
            out.mkdir(parents=True, exist_ok=True)
            record(eng.proc.pid, args.seconds, out / "idle.txt", "--idle")
            record(eng.proc.pid, args.seconds, out / "gil.txt", "--gil")
            rate = sent[0] / (time.perf_counter() - t0)
            stop.set()
            driver.join()
        finally:
            eng.stop()
        print(f"engine as shipped, {args.conns} connections, ~{rate:.0f} msg/s ACKed while sampled (py-spy slows it)")
        report(out / "idle.txt", out / "gil.txt", args.seconds, args.top)


if __name__ == "__main__":
    main()
