"""Reading an HTTP request body within limits, and its media type.

:func:`read_body` refuses a declared ``Content-Length`` over ``max_bytes`` before reading anything, and
stops reading (413) as soon as a body without one (chunked) passes ``max_bytes``: an oversize body is
never held in memory. The whole body must arrive within ``timeout_s`` (408).
"""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request

from engine.api.problems import Problem

__all__ = ["INPUT_KINDS", "input_kind", "read_body"]

#: media type → input kind
INPUT_KINDS = {
    "application/fhir+json": "fhir",
    "application/json": "json",
    "application/hl7-v2": "hl7v2",
    "x-application/hl7-v2+er7": "hl7v2",
}


def input_kind(request: Request) -> tuple[str, str]:
    """``(kind, charset)`` of the request's Content-Type (charset '' when not given); 415 when unknown."""
    value = request.headers.get("content-type", "")
    media, *params = value.split(";")
    kind = INPUT_KINDS.get(media.strip().lower())
    if kind is None:
        raise Problem(415, "unsupported-media-type", "send " + ", ".join(INPUT_KINDS))
    charset = ""
    for p in params:
        name, _, v = p.partition("=")
        if name.strip().lower() == "charset":
            charset = v.strip().strip('"').lower()
    return kind, charset


async def read_body(request: Request, *, max_bytes: int, timeout_s: float) -> bytes:
    """The raw body, or a 413 / 408 / 400 problem."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isascii() or not declared.isdigit():
            raise Problem(400, "bad-content-length", "Content-Length is not a number")
        if int(declared) > max_bytes:
            raise Problem(413, "too-large", f"the body is over the channel's {max_bytes} bytes",
                          headers={"Connection": "close"})  # fmt: skip
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise Problem(413, "too-large", f"the body is over the channel's {max_bytes} bytes",
                                  headers={"Connection": "close"})  # fmt: skip
                chunks.append(chunk)
    except TimeoutError:
        raise Problem(408, "body-timeout", f"the body did not arrive within {timeout_s:g} s",
                      headers={"Connection": "close"}) from None  # fmt: skip
    except ClientDisconnect:
        raise Problem(400, "incomplete-body", "the client went away before the body ended") from None
    if size == 0:
        raise Problem(400, "empty-body", "a body is required")
    return b"".join(chunks)
