"""Transform benchmark: HL7 readers and the mapping of one ORU^R01 with 8 OBX, with and without validation;
then per message type (ORU^R01 8 OBX, ADT^A01 with NK1/AL1/DG1/IN1, VXU^V04, SIU^S12 — corpus messages):
parse + map with validation off, sampled (1 in 100) and full, and full validation as it was before the
vocabulary cache (every value validated, pydantic Bundle shell) for the ratio.

    python bench/transform.py [--seconds 2] [--message mappings/hl7v2/samples/oru_r01_cbc.hl7] [--corpus DIR]

Prints messages/s (and µs per message) for: a naive split on CR, | and ^ (the floor); the engine's
``hl7v2.Message.parse``; python-hl7 ``hl7.parse``; hl7apy ``parse_message`` (a few iterations: it is slow);
``MappingSet.transform`` with validation off, and with full fhir.resources R4B validation; the same message
with its identities' assigning authorities removed, mapped with a channel default (``identifiers:``); and
the ratios.
Each measurement runs for about ``--seconds`` (hl7apy for at most that, and at least 3 messages), so the
whole run stays well under a minute. Wall-clock rates swing with the machine's load: for before/after
comparisons count instructions with ``bench/transform_instructions.py`` (same cases).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import hl7v2  # noqa: E402
from engine.transform import load_mappings  # noqa: E402
from engine.transform.authority import Identifiers  # noqa: E402

#: Per message type: a message of the public corpus (../shared/corpus/hl7v2), as a channel receives it.
CASES = {
    "ORU^R01 (8 OBX)": None,  # the --message sample
    "ADT^A01 NK1/AL1/DG1/IN1": "microsoft-fhir-converter/ADT-A01-01.hl7",
    "VXU^V04": "microsoft-fhir-converter/VXU-V04-01.hl7",
    "SIU^S12": "microsoft-fhir-converter/SIU-S12-01.hl7",
}
CORPUS_CHANNEL = Identifiers(facility_as_authority=True, authority="CORPUS")


def validate_as_before(bundle: dict[str, Any]) -> None:
    """Full validation as it was before the vocabulary cache: every resource whole, then a Bundle model."""
    from fhir.resources.R4B import get_fhir_model_class
    from fhir.resources.R4B.bundle import Bundle

    for e in bundle["entry"]:
        get_fhir_model_class(e["resource"]["resourceType"]).model_validate(e["resource"])
    Bundle.model_validate(
        {**bundle, "entry": [{k: v for k, v in e.items() if k != "resource"} for e in bundle["entry"]]}
    )


def rate(fn: Callable[[], Any], seconds: float, *, min_n: int = 3, batch: int = 50) -> float:
    """Calls per second of ``fn``, measured for about ``seconds`` after a short warm-up."""
    for _ in range(min(batch, 5)):
        fn()
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn()
        n += batch
        now = time.perf_counter()
        if now >= deadline and n >= min_n:
            return n / (now - start)


def naive_split(text: str) -> list[list[list[str]]]:
    return [[f.split("^") for f in seg.split("|")] for seg in text.split("\r") if seg]


def without_authorities(text: str) -> str:
    """The message with the assigning authorities of PID-3, PV1-19 (CX-4) and OBR-2/3, OBX-21 (EI-2..4) emptied."""
    cx = {("PID", 3), ("PV1", 19)}
    ei = {("OBR", 2), ("OBR", 3), ("OBX", 21)}
    out = []
    for seg in text.split("\r"):
        fields = seg.split("|")
        for n in range(1, len(fields)):
            if (fields[0], n) in cx or (fields[0], n) in ei:
                reps = []
                for rep in fields[n].split("~"):
                    comps = rep.split("^")
                    for c in (3,) if (fields[0], n) in cx else (1, 2, 3):
                        if c < len(comps):
                            comps[c] = ""
                    reps.append("^".join(comps))
                fields[n] = "~".join(reps)
        out.append("|".join(fields))
    return "\r".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="Time per measurement.")
    ap.add_argument("--message", type=Path, default=ROOT / "mappings" / "hl7v2" / "samples" / "oru_r01_cbc.hl7")
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "hl7v2")
    args = ap.parse_args()

    text = hl7v2.decode(args.message.read_bytes()).replace("\r\n", "\r").replace("\n", "\r")
    ms = load_mappings(ROOT / "mappings")
    message = hl7v2.Message.parse(text)
    bundle = ms.transform(message, validation="full")
    obx = sum(1 for s in message.segments if s.name == "OBX")
    print(
        f"message: {args.message.name}, {len(message.segments)} segments ({obx} OBX), "
        f"bundle of {len(bundle['entry'])} resources"
    )

    results: dict[str, float] = {}

    def report(name: str, per_s: float) -> None:
        results[name] = per_s
        print(f"  {name:<34} {per_s:>10,.0f} msg/s  {1e6 / per_s:>9.1f} µs")

    print("reading:")
    report("naive split (\\r | ^)", rate(lambda: naive_split(text), args.seconds))
    report("engine hl7v2.Message.parse", rate(lambda: hl7v2.Message.parse(text), args.seconds))
    try:
        import hl7

        report("python-hl7 hl7.parse", rate(lambda: hl7.parse(text), args.seconds, batch=10))
    except ImportError:
        print("  python-hl7 not installed")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from hl7apy.parser import parse_message

            report("hl7apy parse_message", rate(lambda: parse_message(text), args.seconds, batch=1))
    except ImportError:
        print("  hl7apy not installed")

    print("mapping (parsed message → transaction Bundle):")
    report("transform, validation off", rate(lambda: ms.transform(message, validation="off"), args.seconds))
    report("transform, validation full", rate(lambda: ms.transform(message, validation="full"), args.seconds))
    report(
        "parse + transform (off)", rate(lambda: ms.transform(hl7v2.Message.parse(text), validation="off"), args.seconds)
    )
    bare = hl7v2.Message.parse(without_authorities(text))
    channel = Identifiers(by_facility={"GENHOSP": "GENHOSP"}, authority="GENHOSP")
    report(
        "transform (off), default authority",
        rate(lambda: ms.transform(bare, validation="off", identifiers=channel), args.seconds),
    )

    print("ratios:")
    engine = results["engine hl7v2.Message.parse"]
    for other in ("naive split (\\r | ^)", "python-hl7 hl7.parse", "hl7apy parse_message"):
        if other in results:
            print(f"  engine parse vs {other:<28} {engine / results[other]:>8.2f}x")
    off, full = results["transform, validation off"], results["transform, validation full"]
    print(f"  full validation costs {off / full:.1f}x the mapping ({1e6 / full - 1e6 / off:.0f} µs per bundle)")
    defaulted = results["transform (off), default authority"]
    print(f"  identities with a channel default vs sent authorities: {defaulted / off:.2f}x")
    budget_us = 300.0
    print(f"  transform (off) vs the {budget_us:.0f} µs budget: {1e6 / off / budget_us:.2f}x")
    per_type(ms, args)


def per_type(ms: Any, args: argparse.Namespace) -> None:
    """Parse + map per message type, validation off / sampled / full, and full validation as before."""
    from engine.transform.validate import validate_bundle

    print("per message type (parse + map, msg/s; µs per message in brackets):")
    print(f"  {'message':<26} {'off':>14} {'sampled':>14} {'full':>14} {'valid. now':>11} {'valid. before':>14}")
    for name, rel in CASES.items():
        path = args.message if rel is None else args.corpus / rel
        if not path.is_file():
            print(f"  {name:<26} (message not found: {path.name})")
            continue
        raw = path.read_bytes()
        message = ms.read(raw)
        bundle = ms.transform(message, validation="full", identifiers=CORPUS_CHANNEL)

        def run(validation: str, raw: bytes = raw) -> None:
            ms.transform(ms.read(raw), validation=validation, identifiers=CORPUS_CHANNEL)

        rates = [rate(lambda v=v: run(v), args.seconds, batch=10) for v in ("off", "sampled", "full")]
        now = rate(lambda b=bundle: validate_bundle(b), args.seconds, batch=5)
        before = rate(lambda b=bundle: validate_as_before(b), args.seconds, batch=5)
        cells = " ".join(f"{r:>6,.0f} ({1e6 / r:>5.0f})" for r in rates)
        print(
            f"  {name:<26} {cells} {1e6 / now:>9.0f}µs {1e6 / before:>12.0f}µs"
            f"   {len(bundle['entry'])} resources, full validation {now / before:.2f}x as fast as before"
        )


if __name__ == "__main__":
    main()
