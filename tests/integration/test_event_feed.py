"""The event feed of a real ``interlink run``: a receiver that verifies every Standard Webhooks signature with
engine.signing gets message.received, delivery.sent and delivery.dead for each message, ids and statuses
only (no MRN, control id, name or value), and a refused batch is retried under the same webhook-id."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from engine.signing import SignatureError, Verifier, generate_secret, parse_secret
from tests.integration.harness import EngineProcess, wait_until
from tests.integration.messages import oru
from tests.integration.test_end_to_end import mllp_send


class Receiver:
    """``/feed`` verifies each batch's signature and answers from a script (then 204); ``/reject`` answers 400."""

    def __init__(self, secret: str) -> None:
        self.script: list[int] = []
        self.batches: list[tuple[str, bool, bytes]] = []  # (webhook-id, signature valid, body)
        verifier = Verifier([parse_secret(secret)])
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                status = 400
                if self.path == "/feed":
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    try:
                        verifier.verify(verifier.check_headers(headers), body)
                        valid = True
                    except SignatureError:
                        valid = False
                    outer.batches.append((headers.get("webhook-id", ""), valid, body))
                    status = (outer.script.pop(0) if outer.script else 204) if valid else 401
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict[str, Any]]:
        """Events of the batches taken (the 2xx ones: the last of each webhook-id)."""
        taken: dict[str, bytes] = {wid: body for wid, ok, body in self.batches if ok}
        return [e for body in taken.values() for e in orjson.loads(body)["events"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.integration
def test_lifecycle_events_arrive_signed_without_content(tmp_path: Path) -> None:
    secret = generate_secret()
    receiver = Receiver(secret)
    receiver.script = [503]  # the first batch is refused once: retried under the same webhook-id
    eng = EngineProcess(tmp_path / "engine")
    (tmp_path / "feed.secret").write_text(secret + "\n")
    lab = eng.workdir / "channels" / "lab-results.yaml"
    channel = yaml.safe_load(lab.read_text())
    channel["destinations"].append({"name": "partner", "type": "http", "url": receiver.url + "/reject",
                                    "retry": {"max_attempts": 1}})  # fmt: skip
    channel["events"] = {
        "destination": {
            "type": "http",
            "name": "feed",
            "url": receiver.url + "/feed",
            "signing": {"secret_file": str(tmp_path / "feed.secret")},
            "retry": {"min_backoff_ms": 100, "max_backoff_ms": 400},
        },
        "interval_s": 0.2,
        "settle_s": 0.5,
    }
    lab.write_text(yaml.safe_dump(channel))
    (eng.workdir / "channels" / "adt.yaml").unlink()
    try:
        eng.start(wait=False)
        wait_until(eng._listening, 120, "the engine to listen")  # a loaded 2-core box can take over 30 s
        sent = [oru(f"CTRL{i}", mrn=f"MRN-SECRET-{i}", value="7.25") for i in (1, 2)]
        assert mllp_send(eng.lab_port, *sent, tmp_path=tmp_path) == ["AA", "AA"]

        def kinds() -> list[str]:
            return sorted(e["type"] for e in receiver.events())

        want = ["delivery.dead"] * 2 + ["delivery.sent"] * 2 + ["message.received"] * 2
        wait_until(lambda: kinds() == want, 30, f"the feed's events (got {kinds()})")
    finally:
        eng.stop()
        receiver.close()
    assert all(ok for _, ok, _ in receiver.batches)
    ids = [wid for wid, _, _ in receiver.batches]
    assert ids[0] == ids[1]  # the refused batch, retried: one webhook-id
    events = receiver.events()
    assert {e["channel"] for e in events} == {"lab-results"}
    assert {e.get("destination") for e in events} == {None, "ndjson", "partner"}
    assert len({e["id"] for e in events}) == len(events)
    assert len({e["message_id"] for e in events}) == 2
    for _, _, body in receiver.batches:
        for secret_text in (b"MRN-SECRET", b"CTRL", b"TESTER", b"7.25", b"ORU", b"HOSP"):
            assert secret_text not in body
    assert set(events[0]) <= {"id", "type", "channel", "message_id", "destination", "status", "at"}
