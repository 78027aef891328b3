"""MLLP accept-path cost in machine instructions per message, counted by callgrind: repeatable whatever the load.

    python bench/accept_instructions.py [--messages 2000] [--conns 1] [--root PATH] [--profile]

Wall-clock ingest rates on the shared 2-core machine swing 2-3x with the other work running; an instruction
count does not. This drives what the MLLP source does per frame, in process and without a socket: the
engine as ``bench/ingest.py`` starts it (``Engine(workers=False, sweeper=False)``, SQLite ``synchronous=FULL``,
the ``lab-results`` channel accepting ORU^R01), then the source's own connection handler
(``MLLPSource._on_client``) on a stand-in stream that hands it one framed message per read and collects the
replies: frame reading, the HL7 decision (decode, MSH, caps, ordering lane), ``Ingest.accept``, the group
committer's insert and commit (the fsync is a system call, not counted; SQLite's C code and the Python around
it are), the enqueue to the in-memory queue, the metrics and the ACK bytes. ``--conns`` such streams run
together (their messages then share group commits, as on a real listener with that many connections).

The script re-runs itself under ``valgrind --tool=callgrind`` with instrumentation off while the engine
starts and warms up (100 frames per connection); then instrumentation on, counters zeroed, ``--messages``
frames, counters dumped. It prints instructions per message (all threads; ``--keep FILE`` keeps callgrind's
output for ``callgrind_annotate``). ``--root`` runs the same driver on another checkout's ``engine`` (e.g. a
``git worktree add /tmp/x <commit>`` of the foundation, whose channel file had ``accept:`` at the top): the
comparison in docs/benchmarks.md was made that way. ``--profile`` runs it under cProfile instead (no
valgrind; the main thread only, not the writer thread) and prints the top functions by own time. Needs
valgrind's headers (Debian ``valgrind``) and ``cc`` (the client-request helper of
bench/transform_instructions.py).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import ORU  # noqa: E402  (the benchmark's own message)
from bench.transform_instructions import _MARK, _helper, instructions, rerun_under_callgrind  # noqa: E402

_WARMUP = 100


class _Reader:
    """A connection's incoming side: one MLLP frame per read, then end of stream (a closed-loop sender)."""

    def __init__(self, frames: list[bytes]) -> None:
        self._frames = iter(frames)

    async def read(self, n: int = -1) -> bytes:
        return next(self._frames, b"")


class _Transport:
    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        pass


class _Writer:
    """A connection's outgoing side: collects what the source sends."""

    def __init__(self, port: int) -> None:
        self.transport = _Transport()
        self.sent: list[bytes] = []
        self._peer = ("127.0.0.1", port)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


def _frames(tag: str, n: int) -> list[bytes]:
    return [b"\x0b" + ORU.format(cid=f"{tag}-{i}", mrn=i % 500).encode() + b"\x1c\r" for i in range(n)]


async def _run(source: Any, frames: list[list[bytes]]) -> None:
    writers = [_Writer(40000 + c) for c in range(len(frames))]
    await asyncio.gather(*(source._on_client(_Reader(f), w) for f, w in zip(frames, writers, strict=True)))
    acks = sum(1 for w in writers for r in w.sent if b"MSA|AA|" in r)
    if acks != sum(map(len, frames)):
        raise SystemExit(f"{acks} of {sum(map(len, frames))} messages acknowledged AA")


async def _drive(args: argparse.Namespace, wd: Path, mark: Callable[[str], None]) -> None:
    import yaml

    from engine.runtime import Engine
    from engine.settings import Settings

    (wd / "channels").mkdir(parents=True)
    source: dict[str, Any] = {"type": "mllp", "port": 0, "host": "127.0.0.1"}
    channel: dict[str, Any] = {
        "name": "lab-results",
        "source": source,
        "destinations": [{"name": "out", "type": "file", "path": str(wd / "out.ndjson")}],
    }
    # the connector seam moved accept: into the source
    (source if (args.root / "engine" / "sources" / "hl7.py").exists() else channel)["accept"] = ["ORU^R01"]
    (wd / "channels" / "lab.yaml").write_text(yaml.safe_dump(channel))
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{wd}/interlink.db",
        "sqlite_synchronous": "FULL",
        "channels_dir": wd / "channels",
        "mappings_dir": args.root / "mappings",
    }
    values.update({k: 0 for k in ("metrics_port", "http_port") if k in Settings.model_fields})
    engine = Engine(Settings.model_validate(values), workers=False, sweeper=False)
    await engine.start()
    try:
        src = engine.sources["lab-results"]
        per = args.messages // args.conns
        await _run(src, [_frames(f"w{c}", _WARMUP) for c in range(args.conns)])
        frames = [_frames(f"m{c}", per) for c in range(args.conns)]
        mark("start")
        await _run(src, frames)
        mark("stop")
    finally:
        await engine.stop()


def measure(args: argparse.Namespace, tmp: Path) -> None:
    """Inside callgrind: start the engine uncounted, then count the frames."""
    cg = _helper(tmp)

    def mark(what: str) -> None:
        if what == "start":
            cg.cg_start()
            cg.cg_zero()
        else:
            cg.cg_dump(f"{args.messages}x{args.conns}".encode())

    asyncio.run(_drive(args, tmp / "work", mark))


def profile(args: argparse.Namespace) -> None:
    """cProfile of the counted part (no valgrind): the top functions by own time."""
    prof = cProfile.Profile()
    t: list[float] = []

    def mark(what: str) -> None:
        t.append(time.process_time())
        prof.enable() if what == "start" else prof.disable()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_drive(args, Path(tmp), mark))
    print(f"CPU {1e6 * (t[1] - t[0]) / args.messages:.0f} us per message (this process, profiler on)")
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000, help="Frames counted (after a warm-up).")
    ap.add_argument("--conns", type=int, default=1, help="Connections sending at once (they share commits).")
    ap.add_argument("--root", type=Path, default=ROOT, help="Checkout whose engine/ and mappings/ are measured.")
    ap.add_argument("--profile", action="store_true", help="cProfile instead of callgrind.")
    ap.add_argument("--keep", type=Path, help="Copy callgrind's output here (for callgrind_annotate).")
    ap.add_argument("--top", type=int, default=30, help="Functions listed by --profile.")
    args = ap.parse_args()
    args.root = args.root.resolve()
    sys.path.insert(0, str(args.root))  # its engine, not this checkout's
    if args.profile:
        profile(args)
        return
    if os.environ.get(_MARK):
        measure(args, Path(os.environ[_MARK]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for dump, text in rerun_under_callgrind(Path(tmp)):
            total = instructions(text)
            if total is not None:
                per = total / args.messages
                print(
                    f"accept path, {args.conns} conn(s): {per / 1e6:.3f} M instructions per message ({args.root.name})"
                )
            if args.keep:
                shutil.copy(dump, args.keep)
                print(f"callgrind output kept in {args.keep} (callgrind_annotate --inclusive=yes {args.keep})")


if __name__ == "__main__":
    main()
