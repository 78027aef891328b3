"""DICOMweb STOW-RS: every instance of a study, as stored, POSTed to ``{base_url}/studies`` in one request.

Contract:

- A :class:`~engine.destinations.stored.SendsObjects` destination: it is handed the files of the message's
  stored instances (never the bundle). The request is ``multipart/related; type="application/dicom"``,
  one part per instance holding the stored file byte for byte (PS3.18 10.5). The body is streamed from
  the files in 1 MiB reads, with its Content-Length computed beforehand (a 200-instance study is never
  in memory), and can be streamed again (an OAuth2 token refused once is fetched again and the request
  re-sent).
- The client is the HTTP destinations' one (``engine.destinations.http``: timeouts, TLS, extra headers,
  ``auth``); ``X-Interlink-Message-Id`` names the message on every attempt.
- Outcome: a response that lists failed instances (``FailedSOPSequence`` (0008,1198), as a 409 or 202
  does) decides by their ``FailureReason`` (0008,1197) codes through the C-STORE status rules
  (``dicom_forward.status_outcome``): any permanent reason (0xC000, 0xA900, 0x0122, …) → PERMANENT, only
  out-of-resources kinds (0xA7xx, …) → RETRY. Any other response goes through ``classify`` (2xx sent;
  408/429/5xx retry, Retry-After honoured; other 4xx permanent). The error names the HTTP status, how many
  instances failed and the reason codes in hex: never a UID or anything else the server wrote.
- ``Result.request`` records which objects were sent (``[{"object": sha256}]``); the response body is
  kept with the attempt in the content store.
- ``healthcheck`` is a GET of ``{base_url}/studies?limit=1`` (a 2xx means up).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx
import orjson
from pydantic import Field

from engine.destinations.base import Health, Outcome, Result, failure_result, parse_retry_after
from engine.destinations.dicom_forward import status_outcome
from engine.destinations.http import (
    MESSAGE_ID_HEADER,
    HttpOptions,
    make_client,
    reachable,
    request_headers,
    response_result,
)
from engine.destinations.stored import StoredFile

__all__ = ["StowConfig", "StowDestination", "failure_reasons"]

_CHUNK = 1024 * 1024
_FAILED_SOP_SEQUENCE = "00081198"
_FAILURE_REASON = "00081197"
_NO_REASON = -1


class StowConfig(HttpOptions):
    """Store every instance of each study, as received, in a DICOMweb server with STOW-RS."""

    type: Literal["stow"] = Field(description="Destination kind.")
    #: sends the message's stored objects (DICOM instances), so only a source that stores them can feed it
    sends_objects: ClassVar[bool] = True
    name: str = Field(description="Destination name, unique in the channel.")
    base_url: str = Field(
        description="DICOMweb root URL (e.g. https://pacs.example/dicom-web); studies are POSTed to {base_url}/studies."
    )

    def target(self) -> str:
        """The system written to (channels writing to the same one share ordering lanes)."""
        return "stow " + self.base_url.rstrip("/")


class _Multipart:
    """The request body: one ``application/dicom`` part per file, read in chunks each time it is iterated."""

    def __init__(self, paths: Sequence[Path], boundary: str) -> None:
        self.paths = paths
        self.head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        self.tail = f"--{boundary}--\r\n".encode()

    def length(self) -> int:
        """Bytes in the body (OSError when a file has gone)."""
        return sum(len(self.head) + os.stat(p).st_size + 2 for p in self.paths) + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        for path in self.paths:
            yield self.head
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    yield chunk
            yield b"\r\n"
        yield self.tail


def failure_reasons(body: bytes) -> list[int] | None:
    """The FailureReason of each item of a STOW-RS response's FailedSOPSequence (``_NO_REASON`` for an item
    without one); None when the body is not a DICOM JSON response or lists no failures."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        return None
    sequence = data.get(_FAILED_SOP_SEQUENCE)
    items = sequence.get("Value") if isinstance(sequence, dict) else None
    if not isinstance(items, list) or not items:
        return None
    return [_reason(item) for item in items]


def _reason(item: Any) -> int:
    value = item.get(_FAILURE_REASON, {}).get("Value") if isinstance(item, dict) else None
    if isinstance(value, list) and value and isinstance(value[0], int):
        return value[0]
    return _NO_REASON


class StowDestination:
    """Delivers each study's stored instances with one STOW-RS request."""

    def __init__(self, config: StowConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.name = config.name
        self.config = config
        self.url = config.base_url.rstrip("/") + "/studies"
        self._client = make_client(config, transport=transport)

    def send(self, bundle: dict[str, Any], *, message_id: str) -> Result:
        """Never used by the pipeline (this destination sends stored objects); refuses plainly if called."""
        return Result(Outcome.PERMANENT, error="a stow destination sends the stored instances, not bundles")

    def send_objects(self, objects: Sequence[StoredFile], *, message_id: str) -> Result:
        total = len(objects)
        if total == 0:
            return Result(Outcome.PERMANENT, error="the message refers to no stored instances")
        for n, obj in enumerate(objects, 1):
            if not obj.path.is_file():
                return Result(Outcome.PERMANENT, error=f"stored instance {n} of {total} is missing")
        manifest = orjson.dumps([{"object": o.sha256} for o in objects])
        boundary = uuid.uuid4().hex
        body = _Multipart([o.path for o in objects], boundary)
        headers = request_headers(
            {
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
                MESSAGE_ID_HEADER: message_id,
            },
            self.config.headers,
        )
        try:
            headers["Content-Length"] = str(body.length())
            response = self._client.post(self.url, content=body, headers=headers)
        except Exception as exc:  # every failure is classified, none escapes
            return failure_result(exc, request=manifest)
        return stow_result(response, manifest, total)

    def healthcheck(self) -> Health:
        return reachable(self._client, self.url, path="?limit=1")

    def close(self) -> None:
        self._client.close()


def stow_result(response: httpx.Response, manifest: bytes, total: int) -> Result:
    """The Result of a STOW-RS response: by its failed instances' reasons when it lists some, else by status."""
    reasons = failure_reasons(response.content)
    if reasons is None:
        return response_result(response, manifest)
    outcomes = {status_outcome(r) if r != _NO_REASON else Outcome.PERMANENT for r in reasons}
    outcome = Outcome.PERMANENT if Outcome.PERMANENT in outcomes else Outcome.RETRY
    codes = ", ".join(f"0x{r:04X}" if r != _NO_REASON else "no reason" for r in sorted(set(reasons)))
    status = response.status_code
    return Result(
        outcome,
        status_code=status,
        error=f"HTTP {status}: {len(reasons)} of {total} instance(s) failed ({codes})",
        retry_after_s=parse_retry_after(response.headers.get("Retry-After")) if outcome is Outcome.RETRY else None,
        request=manifest,
        response=response.content,
    )
