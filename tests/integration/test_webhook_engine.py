"""Webhooks against a real ``interlink run`` process: the events channel's generated secret and
``interlink send``, its JSON events mapped by the JSON maps (an unknown type ends in error naming $.type),
and a kill -9 while a load client posts (every 202 at the FHIR server exactly once)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from engine.signing import parse_secret, signed_headers
from engine.store.schema import ContentKind
from tests.integration.harness import EngineProcess, wait_until
from tests.integration.test_end_to_end import all_final

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "mappings" / "json" / "samples"
UNKNOWN_EVENT = b'{"type": "invoice.paid", "source": "sunrise-booking", "patient": {"id": "SECRET-7"}}'


def add_events_channel(eng: EngineProcess, destination: dict) -> None:
    channel = yaml.safe_load((ROOT / "channels" / "events.yaml").read_text())
    channel["destinations"] = [destination]
    (eng.workdir / "channels" / "events.yaml").write_text(yaml.safe_dump(channel))


def observation(i: int) -> bytes:
    return orjson.dumps({
        "resourceType": "Observation",
        "identifier": [{"system": "urn:test:readings", "value": f"R{i:05d}"}],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": 60 + i % 40, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    })  # fmt: skip


@pytest.mark.integration
def test_events_secret_generated_once_and_send_signs_with_it(tmp_path: Path) -> None:
    eng = EngineProcess(tmp_path / "engine")
    add_events_channel(eng, {"name": "ndjson", "type": "file", "path": str(tmp_path / "out.ndjson")})
    with eng:
        secret = tmp_path / "engine" / "data" / "events.secret"
        assert secret.exists() and stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert str(secret) in eng.tail() or "events.secret" in eng.tail()
        assert parse_secret(secret.read_text().strip())
        sample = tmp_path / "patient.json"
        sample.write_bytes(observation(1))
        done = eng.cli("send", "--channel", "events", str(sample))
        assert done.returncode == 0, done.stderr
        assert ": 202 " in done.stdout
        unsigned = httpx.post(f"http://127.0.0.1:{eng.http_port}/webhooks/events", content=observation(2),
                              headers={"content-type": "application/fhir+json"})  # fmt: skip
        assert unsigned.status_code == 401
        wait_until(lambda: (tmp_path / "out.ndjson").exists(), 20, "the delivery")
        key = parse_secret(secret.read_text().strip())
        url = f"http://127.0.0.1:{eng.http_port}/webhooks/events"
        ids = {}
        for name in ("appointment_booked", "observation_recorded", "unknown"):
            body = (SAMPLES / f"{name}.json").read_bytes() if name != "unknown" else UNKNOWN_EVENT
            answer = httpx.post(url, content=body, headers={"content-type": "application/json",
                                                            **signed_headers([key], body)})  # fmt: skip
            assert answer.status_code == 202, answer.text
            ids[name] = answer.json()["message_id"]
        out = tmp_path / "out.ndjson"
        wait_until(lambda: out.read_text().count('"Observation"') >= 5 and '"Appointment"' in out.read_text(), 20,
                   "the mapped JSON events")  # fmt: skip
        types = [e["resource"]["resourceType"] for line in out.read_text().splitlines()
                 for e in orjson.loads(line).get("entry", [])]  # fmt: skip
        assert types.count("Appointment") == 1 and types.count("Observation") == 1 + 4  # the FHIR one sent first
        store = eng.store()
        try:
            wait_until(lambda: store.message(ids["unknown"]).status == "error", 20, "the unknown event's error")
            error = (store.content(ids["unknown"], ContentKind.error) or b"").decode()
            assert "$.type" in error and "invoice" not in error and "SECRET" not in error
        finally:
            store.close()
    first = secret.read_text()
    with eng:
        assert secret.read_text() == first  # kept, not regenerated


@pytest.mark.integration
@pytest.mark.slow
def test_kill_9_while_posting_every_202_reaches_the_server_exactly_once(tmp_path: Path, fhir) -> None:
    total = 600
    eng = EngineProcess(tmp_path / "engine")
    add_events_channel(eng, {"name": "ehr", "type": "fhir", "base_url": fhir.base_url, "timeout_s": 10})
    (tmp_path / "engine" / "data").mkdir(parents=True, exist_ok=True)
    secret = "whsec_" + "c2VjcmV0LWZvci10aGUta2lsbC10ZXN0IQ=="
    (tmp_path / "engine" / "data" / "events.secret").write_text(secret + "\n")
    key = parse_secret(secret)
    eng.start()
    url = f"http://127.0.0.1:{eng.http_port}/webhooks/events"
    accepted: set[int] = set()
    stop = threading.Event()

    def post_from(start: int) -> int:
        i = start
        with httpx.Client(timeout=10) as client:
            while i < total and not stop.is_set():
                body = observation(i)
                headers = {"content-type": "application/fhir+json", **signed_headers([key], body)}
                try:
                    r = client.post(url, content=body, headers=headers)
                except httpx.HTTPError:
                    return i  # the engine is gone: this one was not accepted
                assert r.status_code == 202, r.text
                accepted.add(i)
                i += 1
        return i

    progress = {"next": 0}
    t = threading.Thread(target=lambda: progress.update(next=post_from(0)))
    try:
        t.start()
        wait_until(lambda: len(accepted) >= 200, 60, "200 accepted before the kill")
        eng.kill()
        t.join(30)
        assert 200 <= len(accepted) < total
        eng.start()
        assert post_from(progress["next"]) == total and accepted == set(range(total))
        wait_until(lambda: all_final(eng, total), 240, "every accepted message finished", interval_s=0.5)
        eng.stop()
    finally:
        stop.set()
        eng.kill()  # a failure above must not leave an engine running for the rest of the session
    found = [i["value"] for r in fhir.search("Observation", _count="5000") for i in r.get("identifier", [])]
    assert sorted(found) == [f"R{i:05d}" for i in range(total)]  # each exactly once
    assert os.path.exists(eng.workdir / "data" / "events.secret")
