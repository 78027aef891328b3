"""Benchmark: the FHIR test server's own ceiling, the bar the delivery pipeline is measured against.

    python bench/fhir_ceiling.py [--n 2000] [--transactions 500]

Starts the Medplum-based test server (tests/fhir_server) and measures, on one HTTP connection:
single-resource POSTs of Patients, and transactions of 8 conditional PUTs (a Patient, an Encounter
and 6 Observations linked by urn:uuid), each a new patient. Prints requests/s, p50/p99 latency and
the server's RSS. Others import ``measure_ceiling(base_url, n)``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def patient(key: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:bench:mrn", "value": key}],
        "name": [{"family": "Bench", "given": [key]}],
        "gender": "unknown",
        "birthDate": "1970-01-01",
    }


def visit_transaction(key: str) -> dict[str, Any]:
    """8 conditional PUTs: Patient, Encounter and 6 Observations referencing them by urn:uuid."""
    p_url, e_url = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": p_url,
            "resource": patient(key),
            "request": {"method": "PUT", "url": f"Patient?identifier=urn:bench:mrn|{key}"},
        },
        {
            "fullUrl": e_url,
            "resource": {
                "resourceType": "Encounter",
                "identifier": [{"system": "urn:bench:visit", "value": key}],
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": p_url},
            },
            "request": {"method": "PUT", "url": f"Encounter?identifier=urn:bench:visit|{key}"},
        },
    ]
    for i in range(6):
        obs_key = f"{key}-{i}"
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    "resourceType": "Observation",
                    "identifier": [{"system": "urn:bench:obs", "value": obs_key}],
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
                    "subject": {"reference": p_url},
                    "encounter": {"reference": e_url},
                    "effectiveDateTime": "2024-01-01T10:00:00Z",
                    "valueQuantity": {"value": 60 + i, "unit": "/min", "system": "http://unitsofmeasure.org"},
                },
                "request": {"method": "PUT", "url": f"Observation?identifier=urn:bench:obs|{obs_key}"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _run(client: httpx.Client, url: str, bodies: list[bytes], expect: int, budget_s: float) -> dict[str, float]:
    """POST each body in turn (stopping when the time budget is spent); return rate and latencies."""
    latencies: list[float] = []
    start = time.perf_counter()
    for body in bodies:
        t0 = time.perf_counter()
        response = client.post(url, content=body, headers=FHIR_JSON)
        latencies.append(time.perf_counter() - t0)
        if response.status_code != expect:
            raise RuntimeError(f"POST {url} -> {response.status_code}: {response.text[:500]}")
        if t0 - start > budget_s:
            break
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "count": len(latencies),
        "seconds": round(elapsed, 3),
        "per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 2),
    }


def _busy_ms(client: httpx.Client, base_url: str) -> float | None:
    """Time the test server spent handling FHIR requests so far, when it is our test server."""
    root = base_url.removesuffix("/fhir/R4")
    try:
        response = client.get(f"{root}/$admin/stats")
        return float(response.json()["busy_ms"]) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def _phase(client: httpx.Client, base: str, url: str, bodies: list[bytes], expect: int, budget_s: float) -> dict:
    before = _busy_ms(client, base)
    result = _run(client, url, bodies, expect, budget_s)
    after = _busy_ms(client, base)
    if before is not None and after is not None:
        # Server-side handling time per request: what the server could do with a zero-cost client.
        result["server_ms"] = round((after - before) / result["count"], 3)
        result["server_per_s"] = round(result["count"] / max((after - before) / 1000, 1e-9), 1)
    return result


def measure_ceiling(
    base_url: str,
    n: int = 2000,
    *,
    transactions: int | None = None,
    budget_s: float = 20.0,
) -> dict[str, Any]:
    """Measure the server at ``base_url`` on one connection.

    ``n`` Patient POSTs, then ``transactions`` (default ``n // 4``) 8-entry conditional transactions,
    each phase stopping early after ``budget_s``. Identifiers are unique per call, so the server need
    not be empty. Returns ``{"post": {...}, "transaction": {...}, "post_per_s": x, "tx_per_s": y}``,
    each phase with count, seconds, per_s, p50_ms, p99_ms; ``transaction["entries_per_s"]`` counts
    resources written per second. Against the Interlink test server each phase also has ``server_ms``
    (handling time per request inside the server) and ``server_per_s`` (the rate a zero-cost client
    could reach).
    """
    run = uuid.uuid4().hex[:8]
    n_tx = n // 4 if transactions is None else transactions
    posts = [json.dumps(patient(f"{run}-p{i}")).encode() for i in range(n)]
    bundles = [json.dumps(visit_transaction(f"{run}-t{i}")).encode() for i in range(n_tx)]
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with httpx.Client(limits=limits, timeout=30.0) as client:
        base = base_url.rstrip("/")
        client.post(f"{base}/Patient", content=json.dumps(patient(f"{run}-warm")).encode(), headers=FHIR_JSON)
        result: dict[str, Any] = {
            "post": _phase(client, base, f"{base}/Patient", posts, 201, budget_s),
            "transaction": _phase(client, base, base, bundles, 200, budget_s) if bundles else {},
        }
    if result["transaction"]:
        result["transaction"]["entries_per_s"] = round(result["transaction"]["per_s"] * 8, 1)
    # Headline figures, flat, for callers that only want the rates.
    result["post_per_s"] = result["post"]["per_s"]
    result["tx_per_s"] = result["transaction"].get("per_s", 0.0)
    return result


def rss_mib(pid: int) -> float | None:
    """Resident set size of a process in MiB (Linux), or None when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _server_part(phase: dict[str, float]) -> str:
    if "server_ms" not in phase:
        return ""
    return f"\n{'':25}server side: {phase['server_ms']:.3f} ms each -> {phase['server_per_s']:.0f}/s with a free client"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure the FHIR test server's own ceiling.")
    parser.add_argument("--n", type=int, default=2000, help="Patient POSTs (default 2000)")
    parser.add_argument("--transactions", type=int, default=500, help="8-entry transactions (default 500)")
    parser.add_argument("--budget-s", type=float, default=20.0, help="time cap per phase (default 20 s)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.fhir_server.launch import FhirTestServer

    with FhirTestServer() as server:
        idle = rss_mib(server.pid)
        result = measure_ceiling(server.base_url, args.n, transactions=args.transactions, budget_s=args.budget_s)
        after = rss_mib(server.pid)
        stats = server.stats()

    post, tx = result["post"], result["transaction"]
    print("FHIR test server ceiling (Medplum 4.5.2 router, in memory; 1 connection, httpx)")
    print(
        f"  POST Patient           {post['count']:>6} in {post['seconds']:>6.2f} s  {post['per_s']:>8.1f} req/s"
        f"  p50 {post['p50_ms']:.2f} ms  p99 {post['p99_ms']:.2f} ms" + _server_part(post)
    )
    if tx:
        print(
            f"  transaction (8 cond.)  {tx['count']:>6} in {tx['seconds']:>6.2f} s  {tx['per_s']:>8.1f} tx/s"
            f"   p50 {tx['p50_ms']:.2f} ms  p99 {tx['p99_ms']:.2f} ms  ({tx['entries_per_s']:.0f} resources/s)"
            + _server_part(tx)
        )
    print(f"  server RSS: {idle} MiB idle, {after} MiB after {stats['total']} resources")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
