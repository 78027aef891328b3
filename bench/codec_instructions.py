"""Content compression cost in machine instructions, counted by callgrind, and the stored sizes.

    python bench/codec_instructions.py [--n 200] [--levels 1,2,3]

For an ORU^R01 with 8 OBX (tests/integration/messages.py, ~1 KB) and its FHIR bundle as the engine maps
it: bytes after zstd at each level, and instructions per compress and per decompress (re-run under
callgrind as bench/transform_instructions.py does; needs valgrind's headers and ``cc``). The engine's own
codec (engine/store/codec.py) is counted as ``engine``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.transform_instructions import _MARK, _helper, labelled_counts  # noqa: E402


def sample() -> tuple[bytes, bytes]:
    """The raw message and its bundle (compact JSON, as the store receives it)."""
    import orjson

    from bench.transform import CORPUS_CHANNEL
    from engine.transform import load_mappings
    from tests.integration.messages import oru

    raw = oru("BENCH-1", obx=8, mrn="M1001")
    ms = load_mappings(ROOT / "mappings")
    return raw, orjson.dumps(ms.transform(ms.read(raw), validation="off", identifiers=CORPUS_CHANNEL))


def cases(levels: list[int]) -> dict[str, tuple[object, object]]:
    """label → (compress, decompress) callables on bytes."""
    import zstandard

    from engine.store import codec

    out: dict[str, tuple[object, object]] = {}
    for level in levels:
        c = zstandard.ZstdCompressor(level=level, write_checksum=False)
        out[f"level {level}"] = (c.compress, zstandard.ZstdDecompressor().decompress)
    out["engine"] = (lambda b: codec.encode(b)[0], lambda b: codec.decode(b, codec.ZSTD))
    return out


def measure(args: argparse.Namespace, tmp: Path) -> None:
    cg = _helper(tmp)
    raw, bundle = sample()
    cg.cg_start()
    for label, (comp, decomp) in cases(args.levels).items():
        for what, data in (("raw", raw), ("bundle", bundle)):
            packed = comp(data)  # type: ignore[operator]
            for step, fn, arg in (("compress", comp, data), ("decompress", decomp, packed)):
                for _ in range(5):
                    fn(arg)  # type: ignore[operator]
                cg.cg_zero()
                for _ in range(args.n):
                    fn(arg)  # type: ignore[operator]
                cg.cg_dump(f"{label}|{what}|{step}".encode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="Operations counted per row.")
    ap.add_argument("--levels", default="1,2,3", help="Comma-separated zstd levels.")
    args = ap.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    if os.environ.get(_MARK):
        measure(args, Path(os.environ[_MARK]))
        return
    raw, bundle = sample()
    print(f"raw message {len(raw):,} B, bundle {len(bundle):,} B; stored bytes:")
    for label, (comp, _) in cases(args.levels).items():
        print(f"  {label:<8} raw {len(comp(raw)):>6,} B   bundle {len(comp(bundle)):>6,} B")  # type: ignore[operator]
    with tempfile.TemporaryDirectory() as tmp:
        print(f"instructions per operation (callgrind, {args.n} per row):")
        for label, total in labelled_counts(Path(tmp)):
            name, what, step = label.split("|")
            print(f"  {name:<8} {what:<7} {step:<11} {total / args.n / 1e3:>8.1f} k")


if __name__ == "__main__":
    main()
