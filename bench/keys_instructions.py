"""What search keys cost per message, in machine instructions counted by callgrind (repeatable under load).

    python bench/keys_instructions.py [--n 200] [--case ORU,ADT]

Per case (bench/transform.py's messages), counted separately:
- ``extract``: ``keys.from_bundle`` on the mapped bundle (in the mapping process, which holds it anyway);
- ``wire``: the keys' JSON in the reply and read back (``_encode_reply`` / ``_decode_replies`` with and
  without keys: the difference);
- ``hash``: ``Store.pseudonym`` of each key in the engine (the pipeline's ``_result``);
- ``map``: the whole read + parse + map (validation off) the keys ride on, for scale.
The row written to ``message_keys`` in the outcome's transaction is not counted here (the database's work).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.transform_instructions import _MARK, SHORT, _helper, labelled_counts  # noqa: E402


def measure(args: argparse.Namespace, tmp: Path) -> None:
    import orjson

    from bench.transform import CASES, CORPUS_CHANNEL
    from engine.store import Store
    from engine.transform import keys, load_mappings
    from engine.transform.pool import Mapped, _decode_replies, _encode_reply

    cg = _helper(tmp)
    ms = load_mappings(args.mappings)
    store = Store(f"sqlite:///{tmp}/keys.db")
    cg.cg_start()
    for short in [c.strip() for c in args.case.split(",")]:
        rel = CASES[SHORT[short]]
        raw = (args.message if rel is None else args.corpus / rel).read_bytes()
        bundle = ms.transform(ms.read(raw), validation="off", identifiers=CORPUS_CHANNEL)
        body = orjson.dumps(bundle)
        found = keys.from_bundle(bundle)
        plain, keyed = Mapped(bundle=body, source_time=1.0), Mapped(bundle=body, source_time=1.0, keys=found)
        steps = {
            "extract": lambda bundle=bundle: keys.from_bundle(bundle),
            "wire+": lambda m=keyed: _decode_replies(_encode_reply(m)),
            "wire-": lambda m=plain: _decode_replies(_encode_reply(m)),
            "hash": lambda found=found: tuple((k, store.pseudonym(v)) for k, v in found),
            "map": lambda raw=raw: ms.transform(ms.read(raw), validation="off", identifiers=CORPUS_CHANNEL),
        }
        print(f"{short}: {len(found)} keys", file=sys.stderr)
        for name, once in steps.items():
            for _ in range(5):
                once()
            cg.cg_zero()
            for _ in range(args.n):
                once()
            cg.cg_dump(f"{short}:{name}".encode())
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--case", default="ORU,ADT", help=f"Comma-separated: {', '.join(SHORT)}.")
    ap.add_argument("--mappings", type=Path, default=ROOT / "mappings")
    ap.add_argument("--message", type=Path, default=ROOT / "mappings" / "hl7v2" / "samples" / "oru_r01_cbc.hl7")
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "hl7v2")
    args = ap.parse_args()
    if os.environ.get(_MARK):
        measure(args, Path(os.environ[_MARK]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        counts: dict[str, float] = {}
        for label, total in labelled_counts(Path(tmp)):
            counts[label] = total / args.n
        print(f"instructions per message (callgrind, {args.n} per row):")
        for label, per in counts.items():
            case, step = label.split(":")
            if step == "wire-":
                continue
            if step == "wire+":
                per -= counts[f"{case}:wire-"]
                step = "wire"
            print(f"  {case:<4} {step:<8} {per / 1e3:>10.1f} k")


if __name__ == "__main__":
    main()
