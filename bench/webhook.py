"""Webhook intake benchmark: signed FHIR POSTs → signature check → commit → 202, beside a bare Starlette
endpoint that answers 202 without work, measured in the same run.

    python bench/webhook.py [--requests 10000] [--sync FULL|NORMAL]

For 1, 4 and 16 keep-alive connections it prints accepted requests/s and p50/p99 latency of
- a bare Starlette app on the same uvicorn protocol (httptools): POST → 202, body read, nothing else;
- the engine's HTTP server with one webhook channel (Standard Webhooks HMAC check on the raw bytes, FHIR
  read and structure validation, group-committed SQLite store, 202 + Location; workers off: the accept
  path only, as bench/ingest.py),
and the engine/bare ratio. Each server runs in its own process; the load generator (a minimal HTTP/1.1
client on asyncio streams, signing each request) in this one.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECRET = "whsec_" + "YmVuY2htYXJrLXNlY3JldC1rZXktMzItYnl0ZXMhIQ=="


def observation(i: int) -> bytes:
    import orjson

    return orjson.dumps({
        "resourceType": "Observation",
        "identifier": [{"system": "urn:bench:readings", "value": f"R{i}"}],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": f"Patient/p{i % 500}"},
        "effectiveDateTime": "2026-01-02T03:04:05Z",
        "valueQuantity": {"value": 60 + i % 40, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    })  # fmt: skip


def bare_server(port_q: mp.Queue) -> None:  # type: ignore[type-arg]
    """Starlette + uvicorn (httptools), POST → read body → 202."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def hook(request: Request) -> Response:
        await request.body()
        return Response(b'{"message_id":"x"}', status_code=202, media_type="application/json")

    app = Starlette(routes=[Route("/webhooks/{channel}", hook, methods=["POST"])])
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as uvicorn's own
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)  # connections wait in the backlog until uvicorn serves
    port_q.put(sock.getsockname()[1])
    config = uvicorn.Config(app, http="httptools", lifespan="off", access_log=False, log_config=None)
    uvicorn.Server(config).run(sockets=[sock])


def engine_server(port_q: mp.Queue, workdir: str, sync: str, validate: bool = True) -> None:  # type: ignore[type-arg]
    """The engine's HTTP server with one signed webhook channel; accept path only (no workers)."""
    import socket

    import yaml

    from engine.runtime import Engine
    from engine.settings import Settings

    wd = Path(workdir)
    (wd / "channels").mkdir(exist_ok=True)
    (wd / "data").mkdir(exist_ok=True)
    (wd / "data" / "events.secret").write_text(SECRET + "\n")
    (wd / "maps" / "hl7v2").mkdir(parents=True)
    channel = {
        "name": "events",
        "source": {
            "type": "webhook",
            "auth": {"type": "standard_webhooks", "secret_file": "events.secret"},
            "validate_fhir": validate,
        },
        "destinations": [{"name": "out", "type": "file", "path": str(wd / "out.ndjson")}],
    }
    (wd / "channels" / "events.yaml").write_text(yaml.safe_dump(channel))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings.model_validate({
        "data_dir": wd / "data", "database_url": f"sqlite:///{wd}/interlink.db", "sqlite_synchronous": sync,
        "channels_dir": wd / "channels", "mappings_dir": wd / "maps", "metrics_port": 0, "http_port": port,
    })  # fmt: skip

    async def main() -> None:
        engine = Engine(settings, workers=False, sweeper=False)
        await engine.start()
        port_q.put(port)
        await asyncio.Event().wait()

    asyncio.run(main())


async def load(port: int, conns: int, total: int, *, signed: bool) -> tuple[float, list[float]]:
    from engine.signing import parse_secret, signed_headers

    key = parse_secret(SECRET)
    per = total // conns
    lat: list[float] = []

    async def one(c: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(per):
            body = observation(c * per + i + int(time.time() * 1000) % 1_000_000 * 1000)
            headers = signed_headers([key], body) if signed else {}
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            request = (f"POST /webhooks/events HTTP/1.1\r\nHost: bench\r\nContent-Type: application/fhir+json\r\n"
                       f"Content-Length: {len(body)}\r\n{head}\r\n").encode() + body  # fmt: skip
            t0 = time.perf_counter()
            writer.write(request)
            status_and_headers = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in status_and_headers.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if not status_and_headers.startswith(b"HTTP/1.1 202"):
                raise RuntimeError(f"not accepted: {status_and_headers[:60]!r}")
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in range(conns)))
    return time.perf_counter() - t0, lat


def measure(target, args: tuple, conns: int, total: int, *, signed: bool) -> dict:  # type: ignore[type-arg]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(q, *args), daemon=True)
    p.start()
    try:
        port = q.get(timeout=120)
        asyncio.run(load(port, conns, min(1000, total), signed=signed))  # warm-up
        elapsed, lat = asyncio.run(load(port, conns, total, signed=signed))
    finally:
        p.kill()
        p.join()
    lat.sort()
    return {"rate": len(lat) / elapsed, "p50": statistics.median(lat) * 1000, "p99": lat[int(len(lat) * 0.99)] * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--sync", choices=["FULL", "NORMAL"], default="FULL", help="SQLite synchronous setting")
    ap.add_argument("--no-validate", action="store_true", help="validate_fhir: false on the channel")
    args = ap.parse_args()
    print(f"signed FHIR Observation ({len(observation(1))} bytes), {args.requests} requests per run, "
          f"SQLite {args.sync}, validate_fhir {not args.no_validate}\n")  # fmt: skip
    print(f"{'server':<26}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs bare':>9}")
    for conns in (1, 4, 16):
        bare = measure(bare_server, (), conns, args.requests, signed=True)
        print(f"{'bare Starlette 202':<26}{conns:>6}{bare['rate']:>10.0f}{bare['p50']:>9.2f}{bare['p99']:>9.2f}"
              f"{'1.00':>9}")  # fmt: skip
        with tempfile.TemporaryDirectory() as wd:
            r = measure(engine_server, (wd, args.sync, not args.no_validate), conns, args.requests, signed=True)
        ratio = r["rate"] / bare["rate"]
        print(f"{'engine (sign+commit)':<26}{conns:>6}{r['rate']:>10.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}"
              f"{ratio:>9.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
