"""The webhook source over real HTTP (the engine's uvicorn server on a loopback port, httpx as the sender):
every answer of the contract in ``engine/sources/webhook.py``, Standard Webhooks signatures, bearer tokens,
mutual TLS, idempotency, and the commit before the 202."""

from __future__ import annotations

import hashlib
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from engine.errors import StoreUnavailable
from engine.signing import parse_secret, signed_headers
from engine.store import MessageStatus
from tests.api.running import OTHER_SECRET, SECRET, RunningEngine, webhook_channel
from tests.integration.harness import wait_until

FHIR = "application/fhir+json"
PATIENT = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN-1"}], "gender": "female"}
TOKEN = "s3cret-token-for-tests"
SCHEMA = {
    "type": "object",
    "required": ["type", "reading"],
    "properties": {"type": {"type": "string"}, "reading": {"type": "number"}},
}
HL7 = (
    "MSH|^~\\&|LIS|GENHOSP|EHR|GENHOSP|20240102030405||ADT^A01|{cid}|P|2.5\r"
    "EVN|A01|20240102030405\r"
    "PID|1||123456^^^GENHOSP^MR||DOE^JANE||19800101|F\r"
    "PV1|1|I|W^1^1||||||||||||||||V-1\r"
)


def fhir(resource: dict | None = None) -> bytes:
    return orjson.dumps(resource or PATIENT)


@pytest.fixture(scope="module")
def eng(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    tmp = tmp_path_factory.mktemp("webhook")
    out = tmp / "out"
    (tmp / "data").mkdir()
    (tmp / "data" / "signed.secret").write_text(f"{SECRET}\n{OTHER_SECRET}\n")
    (tmp / "data" / "tokens").write_text(hashlib.sha256(TOKEN.encode()).hexdigest() + "\n")
    (tmp / "schema.json").write_text(orjson.dumps(SCHEMA).decode())
    channels = [
        webhook_channel("open", out=out),
        webhook_channel("signed", out=out, auth={"type": "standard_webhooks", "secret_file": "signed.secret"}),
        webhook_channel("bearer", out=out, auth={"type": "bearer", "token_hashes_file": "tokens"}),
        webhook_channel("small", out=out, max_bytes=100),
        webhook_channel("schema", out=out, json_schema=str(tmp / "schema.json"), accepts=["json"]),
        webhook_channel("hl7", out=out, hl7={"accept": ["ADT^A01"]}),
    ]
    with RunningEngine(tmp, channels, hl7_maps=True) as running:
        yield running


@pytest.fixture
def client(eng: RunningEngine) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=eng.url, timeout=10) as c:
        yield c


def stored(eng: RunningEngine, channel: str) -> list:
    return eng.engine.store.list_messages(channel=channel, limit=10_000)


def keys() -> list[bytes]:
    return [parse_secret(SECRET)]


def signed(body: bytes, *, with_keys: list[bytes] | None = None, **kw: object) -> dict[str, str]:
    return {"content-type": FHIR, **signed_headers(with_keys or keys(), body, **kw)}  # type: ignore[arg-type]


# -- 202 and what it promises -------------------------------------------------------------------------


def test_202_comes_after_the_commit_with_a_location_to_the_status(eng: RunningEngine, client: httpx.Client) -> None:
    r = client.post("/webhooks/open", content=fhir(), headers={"content-type": FHIR})
    assert r.status_code == 202
    message_id = r.json()["message_id"]
    assert r.headers["location"] == r.json()["status_url"] == f"/v1/webhooks/open/messages/{message_id}"
    row = eng.engine.store.message(message_id)  # committed before the answer was sent
    assert row is not None and (row.channel, row.kind, row.message_type) == ("open", "fhir", "Patient")
    assert eng.engine.store.content(message_id, "raw") == fhir()
    wait_until(lambda: client.get(r.headers["location"]).json()["status"] == "sent", 20, "delivery")
    status = client.get(r.headers["location"]).json()
    assert status == {
        "message_id": message_id,
        "channel": "open",
        "status": "sent",
        "duplicate_of": None,
        "error": None,
        "deliveries": [{"destination": "ndjson", "status": "sent", "attempts": 1}],
    }
    assert "MRN-1" not in str(status)  # ids and statuses only
    assert client.get("/v1/webhooks/open/messages/0123456789abcdef").status_code == 404
    assert client.get(f"/v1/webhooks/hl7/messages/{message_id}").status_code == 404  # another channel's message


def test_fhir_is_delivered_as_a_transaction_of_conditional_entries(eng: RunningEngine, client: httpx.Client) -> None:
    obs = {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:dev", "value": "r-1"}],
        "status": "final",
        "code": {"text": "heart rate"},
        "subject": {"reference": "urn:uuid:p1"},
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": "urn:uuid:p1", "resource": {**PATIENT, "id": "abc"}}, {"resource": obs}],
    }
    r = client.post("/webhooks/open", content=fhir(bundle), headers={"content-type": FHIR})
    assert r.status_code == 202
    location = r.headers["location"]
    wait_until(lambda: client.get(location).json()["status"] == "sent", 20, "delivery")
    sent = orjson.loads(eng.engine.store.content(r.json()["message_id"], "transformed") or b"{}")
    assert sent["type"] == "transaction"
    patient, observation = sent["entry"]
    assert patient["request"] == {"method": "PUT", "url": "Patient?identifier=urn:oid:1.2.3|MRN-1"}
    assert "id" not in patient["resource"]
    assert observation["request"] == {"method": "PUT", "url": "Observation?identifier=urn:dev|r-1"}
    assert observation["resource"]["subject"]["reference"] == patient["fullUrl"]


# -- errors, each a problem ---------------------------------------------------------------------------


def problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["type"].startswith("urn:interlink:problem:")
    return body


def test_400_unparsable_is_stored_with_its_error(eng: RunningEngine, client: httpx.Client) -> None:
    body = problem(client.post("/webhooks/open", content=b'{"resourceType": "Pat', headers={"content-type": FHIR}), 400)
    row = eng.engine.store.message(body["message_id"])
    assert row.status == MessageStatus.error and row.error == "the body is not JSON (UTF-8)"
    assert body["detail"] == "$: the body is not JSON (UTF-8)"


def test_404_405_415(client: httpx.Client) -> None:
    assert problem(client.post("/webhooks/nobody", content=fhir(), headers={"content-type": FHIR}), 404)
    assert problem(client.delete("/webhooks/open"), 405)
    assert problem(client.post("/webhooks/open", content=b"a,b", headers={"content-type": "text/csv"}), 415)
    assert problem(client.post("/webhooks/schema", content=fhir(), headers={"content-type": FHIR}), 415)


def test_413_with_content_length_and_chunked_without(eng: RunningEngine, client: httpx.Client) -> None:
    before = len(stored(eng, "small"))
    problem(client.post("/webhooks/small", content=b"x" * 101, headers={"content-type": FHIR}), 413)

    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for _ in range(10_000):  # 10 MB if it were all read; the server stops long before
            sent.append(1)
            yield b"y" * 1000

    r = client.post("/webhooks/small", content=chunks(), headers={"content-type": FHIR})
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    problem(r, 413)
    assert len(sent) < 10_000  # the answer came while the client was still sending
    assert len(stored(eng, "small")) == before  # nothing kept
    assert (
        client.post(
            "/webhooks/small",
            content=fhir(
                {"resourceType": "Basic", "identifier": [{"system": "urn:s", "value": "1"}], "code": {"text": "x"}}
            ),
            headers={"content-type": FHIR},
        ).status_code
        == 202
    )


def test_422_fhir_structure_and_the_channels_schema(eng: RunningEngine, client: httpx.Client) -> None:
    body = problem(
        client.post(
            "/webhooks/open", content=fhir({"resourceType": "Patient", "gender": 7}), headers={"content-type": FHIR}
        ),
        422,
    )
    assert "Patient.gender" in body["detail"] and "7" not in body["detail"].replace("R4", "")
    problem(client.post("/webhooks/open", content=b'{"id": "x"}', headers={"content-type": FHIR}), 422)
    ok = client.post("/webhooks/schema", json={"type": "wearable.reading", "reading": 72})
    assert ok.status_code == 202
    assert eng.engine.store.message(ok.json()["message_id"]).message_type == "wearable.reading"
    body = problem(client.post("/webhooks/schema", json={"type": "wearable.reading", "reading": "seventy-two"}), 422)
    assert body["detail"] == "$.reading: fails the channel's schema (type)"
    assert "seventy" not in orjson.dumps(body).decode()


def test_hl7_over_http_is_accepted_as_over_mllp(eng: RunningEngine, client: httpx.Client) -> None:
    headers = {"content-type": "application/hl7-v2"}
    r = client.post("/webhooks/hl7", content=HL7.format(cid="H1").encode(), headers=headers)
    assert r.status_code == 202, r.text
    row = eng.engine.store.message(r.json()["message_id"])
    assert (row.kind, row.message_type, row.control_id) == ("hl7v2", "ADT^A01", "H1")
    again = client.post("/webhooks/hl7", content=HL7.format(cid="H1").encode(), headers=headers)
    assert again.json()["message_id"] == r.json()["message_id"]  # MSH-10 resent: the first message
    refused = problem(
        client.post(
            "/webhooks/hl7",
            content=HL7.format(cid="H2").replace("A01", "A08").encode(),
            headers={"content-type": "x-application/hl7-v2+er7"},
        ),
        422,
    )
    assert refused["hl7_code"] == "200" and refused["detail"].startswith("MSH^1^9")
    problem(client.post("/webhooks/hl7", content=b"not hl7 at all", headers=headers), 400)
    wait_until(lambda: client.get(r.headers["location"]).json()["status"] == "sent", 30, "HL7 delivered")


def test_503_when_the_store_cannot_commit(
    eng: RunningEngine, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(batch: object) -> None:
        raise StoreUnavailable("message store commit failed (OperationalError)")

    before = len(stored(eng, "open"))
    monkeypatch.setattr(eng.engine.store, "insert_messages", down)
    body = problem(client.post("/webhooks/open", content=fhir(), headers={"content-type": FHIR}), 503)
    assert "message_id" not in body
    r = client.post("/webhooks/open", content=b"{", headers={"content-type": FHIR})
    assert r.status_code == 400  # refused anyway; nothing claimed either way
    monkeypatch.undo()
    assert len(stored(eng, "open")) == before


# -- idempotency --------------------------------------------------------------------------------------


def test_a_repeated_idempotency_key_gets_the_first_answer_and_creates_nothing(
    eng: RunningEngine, client: httpx.Client
) -> None:
    headers = {"content-type": FHIR, "Idempotency-Key": "order-42"}
    first = client.post("/webhooks/open", content=fhir(), headers=headers)
    count = len(stored(eng, "open"))
    again = client.post("/webhooks/open", content=fhir(), headers=headers)
    assert (again.status_code, again.content, again.headers["location"]) == (
        202,
        first.content,
        first.headers["location"],
    )
    assert again.headers["idempotent-replayed"] == "true"
    assert len(stored(eng, "open")) == count
    other = problem(client.post("/webhooks/open", content=fhir({**PATIENT, "gender": "male"}), headers=headers), 422)
    assert other["type"].endswith("idempotency-key-reused")
    assert len(stored(eng, "open")) == count


def test_after_the_memory_forgets_the_store_still_answers_the_first_id(
    eng: RunningEngine, client: httpx.Client
) -> None:
    headers = {"content-type": FHIR, "Idempotency-Key": "order-43"}
    first = client.post("/webhooks/open", content=fhir(), headers=headers).json()["message_id"]
    eng.engine.sources["open"]._cache._done.clear()  # as after a restart
    again = client.post("/webhooks/open", content=fhir(), headers=headers)
    assert again.status_code == 202 and again.json()["message_id"] == first
    dupes = [m for m in stored(eng, "open") if m.status == MessageStatus.duplicate]
    assert eng.engine.store.message(dupes[0].id).duplicate_of == first  # recorded, never processed


# -- Standard Webhooks signatures ---------------------------------------------------------------------


def test_signatures(eng: RunningEngine, client: httpx.Client) -> None:
    body = fhir()
    post = lambda headers, content=body: client.post("/webhooks/signed", content=content, headers=headers)  # noqa: E731
    count = len(stored(eng, "signed"))
    valid = signed(body)
    assert post(valid).status_code == 202
    replay = post(valid)  # a captured request sent again: the first answer, nothing new
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
    assert len(stored(eng, "signed")) == count + 1
    assert problem(post(valid, body + b" "), 401)  # body tampered (same webhook-id, so checked before replay)
    assert problem(post(signed(body, with_keys=[parse_secret("whsec_" + "A" * 32)])), 401)  # wrong secret
    old = problem(post(signed(body, timestamp=int(time.time()) - 301)), 401)
    assert old["detail"] == "webhook-timestamp is older than 300 s"
    future = problem(post(signed(body, timestamp=int(time.time()) + 301)), 401)
    assert future["detail"] == "webhook-timestamp is more than 300 s in the future"
    rotated = signed(body, with_keys=[parse_secret("whsec_" + "B" * 32), parse_secret(OTHER_SECRET)])
    assert post(rotated).status_code == 202  # a new key beside an old one: one match is enough
    assert post({"content-type": FHIR}).status_code == 401
    assert len(stored(eng, "signed")) == count + 2  # nothing refused was stored
    assert client.get(replay.headers["location"], headers=signed(b"")).status_code == 200
    assert problem(client.get(replay.headers["location"]), 401)


def test_unsigned_garbage_is_401_before_any_parsing(eng: RunningEngine, client: httpx.Client) -> None:
    count = len(stored(eng, "signed"))
    for content_type in (FHIR, "application/json", "application/hl7-v2", "text/plain"):
        problem(
            client.post("/webhooks/signed", content=b"\xff{not json, not hl7", headers={"content-type": content_type}),
            401,
        )
    bad_sig = {**signed(b"other"), "content-type": FHIR}
    problem(client.post("/webhooks/signed", content=b"\xff{not json", headers=bad_sig), 401)
    assert len(stored(eng, "signed")) == count


def test_bearer_tokens_are_checked_against_their_hashes(eng: RunningEngine, client: httpx.Client) -> None:
    r = client.post("/webhooks/bearer", content=fhir(), headers={"content-type": FHIR})
    assert problem(r, 401) and r.headers["www-authenticate"].startswith("Bearer")
    wrong = {"content-type": FHIR, "authorization": "Bearer nope"}
    problem(client.post("/webhooks/bearer", content=b"{", headers=wrong), 401)
    right = {"content-type": FHIR, "authorization": f"Bearer {TOKEN}"}
    assert client.post("/webhooks/bearer", content=fhir(), headers=right).status_code == 202


# -- mutual TLS ---------------------------------------------------------------------------------------


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def test_mutual_tls_401_without_a_certificate_403_for_one_not_allowed(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command line tool is needed to make test certificates")
    server, client_cert, stranger = (make_cert(tmp_path, n) for n in ("server", "client", "stranger"))
    cas = tmp_path / "clients.pem"
    cas.write_bytes(client_cert[0].read_bytes() + stranger[0].read_bytes())
    tls = {"cert_file": str(server[0]), "key_file": str(server[1]), "ca_file": str(cas)}
    channel = webhook_channel("mtls", out=tmp_path / "out", auth={"type": "mtls", "subjects": ["CN=client"]})
    with RunningEngine(tmp_path / "engine", [channel], http_tls=tls) as eng:

        def post(cert: tuple[Path, Path] | None) -> httpx.Response:
            ctx = ssl.create_default_context(cafile=str(server[0]))
            if cert:
                ctx.load_cert_chain(*cert)
            with httpx.Client(base_url=eng.url, verify=ctx) as c:
                return c.post("/webhooks/mtls", content=fhir(), headers={"content-type": FHIR})

        assert problem(post(None), 401)
        assert problem(post(stranger), 403)
        assert post(client_cert).status_code == 202
