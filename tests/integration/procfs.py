"""What Linux's /proc says about an engine process and its children (memory and lifecycle checks, benchmarks)."""

from __future__ import annotations

import time
from pathlib import Path

from engine.transform.pool import PROCESS_NAME


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes (0 when it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``, in pid order."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def mapping_processes(pid: int) -> list[int]:
    """The engine's mapping processes (forked or spawned; not multiprocessing's resource tracker), by the
    name they give themselves."""
    found = []
    for child in children(pid):
        try:
            if Path(f"/proc/{child}/comm").read_bytes().strip() == PROCESS_NAME:
                found.append(child)
        except OSError:
            continue
    return found


def settled(pids: list[int]) -> list[int]:
    """Each process's lowest RSS over a second (a sample can catch the sweeper or a metrics scrape)."""
    lowest = [rss(p) for p in pids]
    for _ in range(10):
        time.sleep(0.1)
        lowest = [min(a, rss(p)) for a, p in zip(lowest, pids, strict=True)]
    return lowest
