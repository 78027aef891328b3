"""Transform cost in machine instructions per message, counted by callgrind: repeatable whatever the load.

    python bench/transform_instructions.py [--n 50] [--validation off,full] [--case ORU,ADT,VXU,SIU]

Wall-clock rates on the shared 2-core machine swing 2-3x with the other work running; an instruction count
does not. The script re-runs itself under ``valgrind --tool=callgrind`` with instrumentation off while the
mappings load (the load is not measured and runs ~5x faster that way), then, per case and validation mode:
a short warm-up, counters zeroed, ``--n`` times read + parse + map (+ validation), counters dumped. A tiny
helper compiled with the system C compiler issues callgrind's client requests (start, zero, dump); it
needs valgrind's headers (Debian ``valgrind``) and ``cc``.

Prints instructions per message (millions) per case and mode. The cases are bench/transform.py's; the
modes ``now`` and ``before`` count full validation alone (today's, and as before the vocabulary cache), the
ratio bench/transform.py prints.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_MARK = "INTERLINK_UNDER_CALLGRIND"
_HELPER = r"""
#include <valgrind/callgrind.h>
void cg_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void cg_zero(void) { CALLGRIND_ZERO_STATS; }
void cg_dump(const char *label) { CALLGRIND_DUMP_STATS_AT(label); }
"""
SHORT = {"ORU": "ORU^R01 (8 OBX)", "ADT": "ADT^A01 NK1/AL1/DG1/IN1", "VXU": "VXU^V04", "SIU": "SIU^S12"}


def _helper(tmp: Path) -> ctypes.CDLL:
    src, lib = tmp / "cg.c", tmp / "cg.so"
    src.write_text(_HELPER)
    subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return ctypes.CDLL(str(lib))


def measure(args: argparse.Namespace, tmp: Path) -> None:
    """Inside callgrind: load, then count each case and mode."""
    import orjson

    from bench.transform import CASES, CORPUS_CHANNEL, validate_as_before
    from engine.transform import load_mappings
    from engine.transform.validate import validate_bundle

    VALIDATION_ONLY: dict[str, Callable[[Any], None]] = {"now": validate_bundle, "before": validate_as_before}

    cg = _helper(tmp)
    ms = load_mappings(args.mappings)
    cases = [c.strip() for c in args.case.split(",")]
    cg.cg_start()
    for short in cases:
        rel = CASES[SHORT[short]]
        path = args.message if rel is None else args.corpus / rel
        raw = path.read_bytes()
        bundle = ms.transform(ms.read(raw), validation="off", identifiers=CORPUS_CHANNEL)
        for mode in args.validation.split(","):
            if mode in VALIDATION_ONLY:
                check = VALIDATION_ONLY[mode]

                def once(check: Callable[[Any], None] = check, bundle: Any = bundle) -> None:
                    check(orjson.loads(orjson.dumps(bundle)))  # a fresh bundle, as a transform hands over
            else:

                def once(mode: str = mode, raw: bytes = raw) -> None:
                    ms.transform(ms.read(raw), validation=mode, identifiers=CORPUS_CHANNEL)

            for _ in range(5):
                once()
            cg.cg_zero()
            for _ in range(args.n):
                once()
            cg.cg_dump(f"{short}:{mode}".encode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50, help="Messages counted per case and mode.")
    ap.add_argument(
        "--validation",
        default="off,full",
        help="Comma-separated: off, full, sampled (read + parse + map + validation); now, before (validation of "
        "the mapped bundle alone, today's and as before the vocabulary cache: bench/transform.py's ratio).",
    )
    ap.add_argument("--case", default="ORU,ADT,VXU,SIU", help=f"Comma-separated: {', '.join(SHORT)}.")
    ap.add_argument("--mappings", type=Path, default=ROOT / "mappings", help="The mapping folder to compile.")
    ap.add_argument("--message", type=Path, default=ROOT / "mappings" / "hl7v2" / "samples" / "oru_r01_cbc.hl7")
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "hl7v2")
    args = ap.parse_args()
    if os.environ.get(_MARK):
        measure(args, Path(os.environ[_MARK]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        print(f"instructions per message (callgrind, {args.n} messages per row):")
        for label, total in labelled_counts(Path(tmp)):
            print(f"  {label:<12} {total / args.n / 1e6:>8.3f} M")


def rerun_under_callgrind(tmp: Path) -> list[tuple[Path, str]]:
    """Run this same command again under callgrind, counting only what the driver's measure() toggles on
    (it finds ``tmp`` in the environment); each dump's path and text, in the order they were written."""
    out = tmp / "callgrind.out"
    env = {**os.environ, _MARK: str(tmp), "PYTHONHASHSEED": "0"}
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", "-q"]
    subprocess.run([*cmd, sys.executable, *sys.argv], env=env, check=True)
    dumps = sorted(tmp.glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:]))
    return [(d, d.read_text(errors="replace")) for d in dumps]


def labelled_counts(tmp: Path) -> list[tuple[str, int]]:
    """Re-run under callgrind (:func:`rerun_under_callgrind`): each labelled dump's label (what the driver
    passed to ``cg_dump``) and instruction count, in the order they were written."""
    out = []
    for _, text in rerun_under_callgrind(tmp):
        label = re.search(r"^desc: Trigger: Client Request: (.*)$", text, re.M)
        total = instructions(text)
        if label and total is not None:
            out.append((label[1], total))
    return out


def instructions(text: str) -> int | None:
    """The instruction count of one callgrind dump."""
    total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    return int(total[1]) if total else None


if __name__ == "__main__":
    main()
