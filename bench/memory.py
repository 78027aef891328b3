"""Memory with large messages: RSS of a real ``interlink run`` and its mapping process, round by round.

    python bench/memory.py [--rounds 10] [--conns 10] [--note-mb 4] [--mapping-processes 1]

Starts the engine (SQLite, in-process queue, NDJSON file destination, ``validation: full``), sends five
ordinary ORU^R01 to warm it, then ``--rounds`` rounds of one ORU^R01 carrying a ``--note-mb`` MB NTE on each
of ``--conns`` connections that stay open, waiting after each round until everything is delivered.
Prints the lowest RSS over one second after each round for the engine and each mapping process, and
the growth over idle at the end (target: within 50 MB after 100 such messages).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.sources.mllp import frame  # noqa: E402
from engine.sources.mllp_client import send  # noqa: E402
from tests.integration.harness import EngineProcess, wait_until  # noqa: E402
from tests.integration.messages import oru  # noqa: E402
from tests.integration.procfs import mapping_processes, settled  # noqa: E402

MB = 1024 * 1024


async def one_round(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], tag: str, note: bytes) -> None:
    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, control_id: str) -> None:
        writer.write(frame(oru(control_id) + b"NTE|1||" + note + b"\r"))
        await writer.drain()
        reply = await reader.readuntil(b"\x1c\r")
        if b"MSA|AA|" not in reply:
            raise SystemExit(f"not acknowledged: {reply[:120]!r}")

    await asyncio.gather(*(one(r, w, f"{tag}-{i}") for i, (r, w) in enumerate(conns)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--note-mb", type=float, default=4)
    ap.add_argument("--mapping-processes", type=int, default=1)
    args = ap.parse_args()
    note = b"A" * int(args.note_mb * MB)
    with tempfile.TemporaryDirectory() as tmp:
        engine = EngineProcess(Path(tmp), extra_settings={"mapping_processes": args.mapping_processes}).start()
        assert engine.proc is not None
        store = engine.store()
        try:
            send("127.0.0.1", engine.lab_port, [oru(f"W{i}") for i in range(5)], timeout_s=30)
            wait_until(lambda: store.backlog() == 0, 60, "warm-up delivered")
            pids = [engine.proc.pid, *mapping_processes(engine.proc.pid)]
            idle = settled(pids)
            print(f"{args.conns} connections, {args.note_mb:g} MB NTE per message, mapping processes: {len(pids) - 1}")
            print(
                f"{'':>10}{'engine MB':>11}"
                + "".join(f"{'mapping ' + str(i + 1) + ' MB':>14}" for i in range(len(pids) - 1))
            )
            print(f"{'idle':>10}" + "".join(f"{v / MB:>{11 if i == 0 else 14}.0f}" for i, v in enumerate(idle)))

            async def rounds() -> None:
                conns = [await asyncio.open_connection("127.0.0.1", engine.lab_port) for _ in range(args.conns)]
                try:
                    for r in range(args.rounds):
                        await one_round(conns, f"R{r}", note)
                        await asyncio.to_thread(wait_until, lambda: store.backlog() == 0, 300, "delivered")
                        now = await asyncio.to_thread(settled, pids)
                        print(
                            f"{'round ' + str(r + 1):>10}"
                            + "".join(f"{v / MB:>{11 if i == 0 else 14}.0f}" for i, v in enumerate(now))
                        )
                finally:
                    for _, w in conns:
                        w.close()

            asyncio.run(rounds())
            after = settled(pids)
            growth = ", ".join(f"{(a - i) / MB:+.0f} MB" for a, i in zip(after, idle, strict=True))
            print(f"after {args.rounds * args.conns} messages, over idle: {growth} (engine first)")
        finally:
            store.close()
            engine.stop()


if __name__ == "__main__":
    main()
