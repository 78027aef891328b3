"""The STOW-RS destination with ``httpx.MockTransport``: the multipart body (each stored file byte for byte,
streamed in chunks, exact Content-Length), headers and auth, and the outcome of every kind of response."""

from __future__ import annotations

import os
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from engine.destinations import Outcome, StoredFile, StowConfig, StowDestination, make_destination
from engine.destinations.stow import _Multipart, failure_reasons
from engine.store.objects import ObjectStore

Handler = Callable[[httpx.Request], httpx.Response]
UID = "1.2.826.0.1.3680043.8.498.12345"


def stow(handler: Handler, **options: Any) -> StowDestination:
    config = StowConfig.model_validate({"type": "stow", "name": "web", "base_url": "https://pacs.test/dicom-web/",
                                        **options})  # fmt: skip
    dest = make_destination(config, transport=httpx.MockTransport(handler))
    assert isinstance(dest, StowDestination)
    return dest


@pytest.fixture
def files(tmp_path: Path) -> list[StoredFile]:
    store = ObjectStore(tmp_path / "objects", fsync=False)
    out = []
    for i, size in enumerate((3 * 1024 * 1024 + 7, 1000, 1)):  # one file over three read chunks
        src = tmp_path / f"i{i}.dcm"
        src.write_bytes(os.urandom(size))
        stored = store.put_file(src)
        out.append(StoredFile(store.path(stored.sha256), stored.sha256, stored.size))
    return out


def parts(request: httpx.Request, body: bytes) -> list[tuple[str, bytes]]:
    """(Content-Type, payload) of each part of a multipart/related request."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    assert message.is_multipart()
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in message.iter_parts()]


def failed(status: int, *reasons: int | None) -> httpx.Response:
    items = [{"00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
              "00081155": {"vr": "UI", "Value": [UID]},
              **({"00081197": {"vr": "US", "Value": [r]}} if r is not None else {})} for r in reasons]  # fmt: skip
    return httpx.Response(status, json={"00081198": {"vr": "SQ", "Value": items}})


def test_each_stored_file_is_one_part_streamed_with_its_exact_length(files: list[StoredFile]) -> None:
    seen: list[tuple[httpx.Request, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request, request.read()))
        return httpx.Response(200, json={"00081199": {"vr": "SQ", "Value": []}})

    result = stow(handler, headers={"X-Site": "north"}).send_objects(files, message_id="m-1")
    assert (result.outcome, result.status_code, result.error) == (Outcome.SENT, 200, None)
    request, body = seen[0]
    assert (request.method, str(request.url)) == ("POST", "https://pacs.test/dicom-web/studies")
    assert request.headers["content-type"].startswith('multipart/related; type="application/dicom"; boundary=')
    assert request.headers["accept"] == "application/dicom+json"
    assert request.headers["x-interlink-message-id"] == "m-1" and request.headers["x-site"] == "north"
    assert int(request.headers["content-length"]) == len(body) and "transfer-encoding" not in request.headers
    assert parts(request, body) == [("application/dicom", f.path.read_bytes()) for f in files]
    assert orjson.loads(result.request or b"") == [{"object": f.sha256} for f in files]


def test_the_body_is_read_from_the_files_in_chunks_and_can_be_read_again(files: list[StoredFile]) -> None:
    body = _Multipart([f.path for f in files], "b0undary")
    first, again = list(body), list(body)
    assert first == again and len(b"".join(first)) == body.length()
    assert max(len(c) for c in first) == 1024 * 1024  # never a whole instance, let alone a study


def test_conflict_with_failed_instances_is_permanent_naming_codes_not_uids(files: list[StoredFile]) -> None:
    result = stow(lambda r: failed(409, 0xC000, 0xA900)).send_objects(files, message_id="m")
    assert (result.outcome, result.status_code) == (Outcome.PERMANENT, 409)
    assert result.error == "HTTP 409: 2 of 3 instance(s) failed (0xA900, 0xC000)"
    assert UID not in str(result.error) and result.response is not None and UID.encode() in result.response


def test_only_out_of_resources_failures_are_retried(files: list[StoredFile]) -> None:
    result = stow(lambda r: failed(202, 0xA700)).send_objects(files, message_id="m")
    assert (result.outcome, result.error) == (Outcome.RETRY, "HTTP 202: 1 of 3 instance(s) failed (0xA700)")
    mixed = stow(lambda r: failed(409, 0xA700, None)).send_objects(files, message_id="m")
    assert (mixed.outcome, mixed.error) == (
        Outcome.PERMANENT,
        "HTTP 409: 2 of 3 instance(s) failed (no reason, 0xA700)",
    )


@pytest.mark.parametrize(("status", "outcome"), [(503, Outcome.RETRY), (429, Outcome.RETRY), (400, Outcome.PERMANENT),
                                                 (409, Outcome.PERMANENT), (415, Outcome.PERMANENT)])  # fmt: skip
def test_responses_without_failed_instances_go_by_status(
    files: list[StoredFile], status: int, outcome: Outcome
) -> None:
    result = stow(
        lambda r: httpx.Response(status, text="<html>oops</html>", headers={"Retry-After": "4"})
    ).send_objects(files, message_id="m")
    assert (result.outcome, result.error) == (outcome, f"HTTP {status}")
    assert result.retry_after_s == (4.0 if outcome is Outcome.RETRY else None)


def test_failure_reasons_reads_dicom_json_only() -> None:
    assert failure_reasons(failed(409, 0xC000).content) == [0xC000]
    assert failure_reasons(b"[" + failed(409, 0x0122).content + b"]") == [0x0122]
    assert failure_reasons(b'{"00081198": {"vr": "SQ"}}') is None  # Orthanc's empty sequence: nothing failed
    assert failure_reasons(b"<html>") is None and failure_reasons(b"") is None


def test_network_failure_is_retry(files: list[StoredFile]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    result = stow(handler).send_objects(files, message_id="m")
    assert (result.outcome, result.error) == (Outcome.RETRY, "ConnectError: refused")


def test_missing_or_no_instances_are_permanent_without_a_request(files: list[StoredFile]) -> None:
    calls: list[httpx.Request] = []
    dest = stow(lambda r: calls.append(r) or httpx.Response(200))
    files[2].path.unlink()
    assert dest.send_objects(files, message_id="m").error == "stored instance 3 of 3 is missing"
    assert dest.send_objects([], message_id="m").outcome is Outcome.PERMANENT
    assert dest.send({"resourceType": "Bundle"}, message_id="m").outcome is Outcome.PERMANENT
    assert calls == []


def test_a_refused_oauth2_token_is_fetched_again_and_the_whole_body_resent(files: list[StoredFile]) -> None:
    bodies: list[bytes] = []
    tokens = iter(["t1", "t2"])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(200, json={"access_token": next(tokens), "expires_in": 3600})
        bodies.append(request.read())
        return httpx.Response(401 if request.headers["authorization"] == "Bearer t1" else 200)

    auth = {"type": "oauth2", "token_url": "https://pacs.test/token", "client_id": "c", "client_secret": "s"}
    result = stow(handler, auth=auth).send_objects(files, message_id="m")
    assert result.outcome is Outcome.SENT
    assert len(bodies) == 2 and bodies[0] == bodies[1] and len(bodies[1]) > sum(f.size for f in files)


def test_bearer_auth_and_healthcheck() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    dest = stow(handler, auth={"type": "bearer", "token": "secret-token"})
    assert dest.healthcheck().ok
    assert str(seen[0].url) == "https://pacs.test/dicom-web/studies?limit=1"
    assert seen[0].headers["authorization"] == "Bearer secret-token"
    assert not stow(lambda r: httpx.Response(404)).healthcheck().ok
    assert dest.config.target() == "stow https://pacs.test/dicom-web"
