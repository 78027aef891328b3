"""What per-patient ordering costs: the same load through `ordering: none` and `ordering: per_patient`.

    python bench/ordering.py [--messages 3000] [--patients 100] [--conns 4] [--skip-fhir]

Runs a real ``interlink run`` (SQLite, in-process queue, default mapping processes) twice per destination
with only the lab channel's ``ordering`` changed, and sends ORU^R01 (8 OBX) for ``--patients`` patients
round-robin on ``--conns`` connections. The rate is messages / (time until the last one is delivered).
Prints both rates and their ratio (target: per_patient / none >= 0.8 with 100 patients), to the NDJSON
file destination (the gate's own cost shows most) and to the Medplum FHIR test server.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pipeline import blast  # noqa: E402
from tests.integration.harness import EngineProcess  # noqa: E402
from tests.integration.messages import oru  # noqa: E402


def run(workdir: Path, mode: str, n: int, patients: int, conns: int, fhir_base_url: str | None) -> float:
    eng = EngineProcess(workdir, fhir_base_url=fhir_base_url)
    for f in (workdir / "channels").glob("*.yaml"):
        doc = yaml.safe_load(f.read_text())
        doc.update(validation="sampled", ordering=mode)
        f.write_text(yaml.safe_dump(doc))
    eng.start()
    try:
        store = eng.store()
        tag = time.monotonic_ns()
        warm = [oru(f"W{tag}-{i}", obx=8, mrn=f"M{i % patients}") for i in range(200)]
        asyncio.run(blast(eng.lab_port, warm, conns))
        msgs = [oru(f"B{tag}-{i}", obx=8, mrn=f"M{i % patients}", filler=f"F{tag}-{i}") for i in range(n)]
        while store.backlog():
            time.sleep(0.05)
        t0 = time.perf_counter()
        asyncio.run(blast(eng.lab_port, msgs, conns))
        while store.backlog():
            if time.perf_counter() - t0 > 900:
                raise RuntimeError("pipeline did not finish within 900 s")
            time.sleep(0.02)
        total_s = time.perf_counter() - t0
        sent = sum(v for (_, s), v in store.status_counts().items() if s == "sent")
        store.close()
        if sent != n + 200:
            raise RuntimeError(f"{sent} of {n + 200} messages sent")
    finally:
        eng.stop()
    return n / total_s


def compare(label: str, n: int, patients: int, conns: int, fhir_base_url: str | None, reset=None) -> None:
    rates = {}
    for mode in ("none", "per_patient"):
        if reset:
            reset()
        with tempfile.TemporaryDirectory() as wd:
            rates[mode] = run(Path(wd), mode, n, patients, conns, fhir_base_url)
    ratio = rates["per_patient"] / rates["none"]
    print(
        f"{label:<18} none {rates['none']:6.0f} msg/s   per_patient {rates['per_patient']:6.0f} msg/s   "
        f"ratio {ratio:.2f}   [target >= 0.80]"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--patients", type=int, default=100)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--skip-fhir", action="store_true")
    args = ap.parse_args()
    print(
        f"ORU^R01 with 8 OBX, {args.messages} messages for {args.patients} patients on {args.conns} connections,"
        " SQLite, in-process queue\n"
    )
    compare("NDJSON file", args.messages, args.patients, args.conns, None)
    if args.skip_fhir:
        return
    from tests.fhir_server.launch import FhirTestServer

    with FhirTestServer() as server:
        compare("FHIR test server", min(args.messages, 2000), args.patients, args.conns, server.base_url, server.reset)


if __name__ == "__main__":
    main()
