"""``/api/v1/messages``: search stored messages (viewer) and read one (content: operator, audited).

``GET /api/v1/messages?channel&status&since&until&type&control_id&mrn&accession&sender&cursor&limit`` →
``{"messages": [...], "next_cursor": str | null}``, newest first (``engine.store.search``). Each message is
metadata only — id, channel, status, kind, type, received/updated (epoch seconds), size, sender, control id,
peer, error reason (PHI-free), duplicate of, and its deliveries' statuses — so a viewer may search. ``mrn``
and ``accession`` are given plain and matched by their keyed hash; a search by either is audited
(``message.search``, target = the filter names, never their values, and the ids found): it tells who looked a
patient up. ``since``/``until``: ISO 8601 (no offset: the engine host's time zone) or an age such as ``2h``,
as every operator action takes them (``engine.store.operations.Selection``).

``GET /api/v1/messages/{id}`` (the whole id or a unique prefix of ≥ 8 hex digits; an ambiguous prefix is a
409 naming how to disambiguate): the same metadata, each delivery (status, attempts, last status code and
error) and each attempt (number, destination, start, duration, outcome, status code, error). A **viewer gets
exactly that** — never content, no 403, so the dashboard shows one view for both roles. An **operator**
(or admin) also gets ``content``: the raw message (HL7 v2 as its segments, one string each; a DICOM study or
instance as a summary by DICOM keyword; JSON and FHIR as sent; anything else as text), the transformed
bundle, and per attempt the request sent (``null`` when it was the bundle itself, as stored) and the
response; each such read is audited (``message.read``, the message's id).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from engine import hl7v2
from engine.api.admin import PREFIX, Admin, Role, json
from engine.api.admin.spec import operation, param
from engine.api.problems import Problem
from engine.store import MessageStatus, Store
from engine.store.operations import Selection
from engine.store.schema import ContentKind
from engine.store.search import (
    MAX_LIMIT,
    AmbiguousId,
    BadQuery,
    MessageQuery,
    UnknownId,
    contents_of,
    delivery_statuses,
    resolve_id,
    search,
)

__all__ = ["OPENAPI", "message_json", "parse_time", "raw_view", "routes"]

_STATUSES = frozenset(s.value for s in MessageStatus)


def parse_time(value: str, field: str) -> float:
    """Epoch seconds from the forms every operator action takes (``operations.Selection``: ISO 8601, no
    offset meaning the engine host's time zone, or an age such as ``30m``, ``2h``, ``7d``)."""
    try:
        when = Selection.model_validate({"since": value.strip()}).since
    except ValidationError:
        when = None
    if when is None:
        raise BadQuery(field, "an ISO 8601 time or an age such as 2h")
    return when.timestamp()


def query_of(params: dict[str, str]) -> MessageQuery:
    def text(name: str, limit: int = 200) -> str | None:
        value = params.get(name)
        if value is None or value == "":
            return None
        if len(value) > limit:
            raise BadQuery(name, f"at most {limit} characters")
        return value

    try:
        limit = int(params.get("limit") or 50)
    except ValueError:
        raise BadQuery("limit", f"a number from 1 to {MAX_LIMIT}") from None
    since, until, status = text("since", 40), text("until", 40), text("status", 16)
    if status is not None and status not in _STATUSES:
        raise BadQuery("status", "one of " + ", ".join(sorted(_STATUSES)))
    return MessageQuery(
        channel=text("channel", 100),
        status=status,
        since=parse_time(since, "since") if since else None,
        until=parse_time(until, "until") if until else None,
        message_type=text("type", 40),
        control_id=text("control_id"),
        mrn=text("mrn"),
        accession=text("accession"),
        sender=text("sender"),
        cursor=text("cursor", 200),
        limit=limit,
    )


def message_json(row: Any, deliveries: list[tuple[str, str]]) -> dict[str, Any]:
    """A message's metadata (no content: what a viewer may see)."""
    return {
        "id": row.id,
        "channel": row.channel,
        "status": row.status,
        "kind": row.kind,
        "type": row.message_type,
        "received_at": row.received_at,
        "updated_at": row.updated_at,
        "size_bytes": row.size_bytes,
        "sender": row.sender,
        "control_id": row.control_id,
        "peer": row.peer,
        "error": row.error,
        "duplicate_of": row.duplicate_of,
        "deliveries": [{"destination": d, "status": s} for d, s in deliveries],
    }


# -- content views --------------------------------------------------------------------------------------


def _dicom_dataset(header: dict[str, Any]) -> dict[str, Any]:
    """A DICOM JSON dataset by keyword (unknown tags by tag), sequences as lists of datasets."""
    from pydicom.datadict import keyword_for_tag

    out: dict[str, Any] = {}
    for tag, element in header.items():
        try:
            name = keyword_for_tag(int(tag, 16)) or tag
        except ValueError:
            name = tag
        values = element.get("Value") if isinstance(element, dict) else None
        if values is None:
            out[name] = None
        elif element.get("vr") == "SQ":
            out[name] = [_dicom_dataset(item) for item in values if isinstance(item, dict)]
        else:
            if element.get("vr") == "PN":  # a person name: its alphabetic form
                values = [v.get("Alphabetic", v) if isinstance(v, dict) else v for v in values]
            out[name] = values[0] if len(values) == 1 else values
    return out


def _dicom_view(doc: dict[str, Any]) -> dict[str, Any]:
    def instance(d: dict[str, Any]) -> dict[str, Any]:
        return {
            "object": d.get("object"),
            "size": d.get("size"),
            "transfer_syntax": d.get("transfer_syntax"),
            "calling_ae": d.get("calling_ae"),
            "dataset": _dicom_dataset(d.get("header") or {}),
        }

    if isinstance(doc.get("instances"), list):  # a study message
        return {
            "format": "dicom-study",
            "calling_ae": doc.get("calling_ae"),
            "assembled_at": doc.get("assembled_at"),
            "instances": [instance(d) for d in doc["instances"] if isinstance(d, dict)],
        }
    return {"format": "dicom-instance", **instance(doc)}


def raw_view(data: bytes, kind: str, charset: str) -> dict[str, Any]:
    """The raw content for reading: HL7 v2 by segment, DICOM by keyword, JSON as sent, else text."""
    if kind == "hl7v2":
        try:
            text = hl7v2.decode(data, charset or "utf-8")
        except Exception:  # an undecodable message was stored with its error: show what can be shown
            text = data.decode("utf-8", "replace")
        return {"format": "hl7v2", "segments": hl7v2.split_segments(text)}
    if kind in ("dicom", "json", "fhir"):
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return {"format": "text", "text": data.decode("utf-8", "replace")}
        if kind == "dicom" and isinstance(doc, dict):
            return _dicom_view(doc)
        return {"format": kind, "json": doc}
    return {"format": "text", "text": data.decode(charset or "utf-8", "replace")}


def _body(data: bytes | None) -> Any:
    """A request or response as JSON when it is JSON, else text."""
    if data is None:
        return None
    try:
        return {"json": orjson.loads(data)}
    except orjson.JSONDecodeError:
        return {"text": data.decode("utf-8", "replace")}


def detail(store: Store, message_id: str, *, content: bool) -> dict[str, Any] | None:
    """Everything about one message; its content only when ``content``."""
    row = store.message(message_id)
    if row is None:
        return None
    out = message_json(row, delivery_statuses(store, [message_id]).get(message_id, []))
    out["deliveries"] = [
        {"destination": d.destination, "status": d.status, "attempts": d.attempts,
         "last_status_code": d.last_status_code, "last_error": d.last_error, "updated_at": d.updated_at}
        for d in sorted(store.deliveries_of(message_id), key=lambda d: d.destination)
    ]  # fmt: skip
    attempts = store.attempts_of(message_id)
    out["attempts"] = [
        {"number": a.number, "destination": a.destination, "started_at": a.started_at, "duration_ms": a.duration_ms,
         "outcome": a.outcome, "status_code": a.status_code, "error": a.error}
        for a in attempts
    ]  # fmt: skip
    if not content:
        return out
    stored = contents_of(store, message_id)
    newest = {(c.kind, c.destination): c.data for c in stored}
    raw = newest.get((ContentKind.raw, ""))
    bundle = newest.get((ContentKind.transformed, ""))
    # an attempt's request and response are the rows its destination stored after it started (and before
    # the next attempt to it): attempts and their contents are written in one transaction, in that order
    # (attempts are in id order; numbers restart after a replay, so the next attempt is the next row)
    for i, (view, a) in enumerate(zip(out["attempts"], attempts, strict=True)):
        later = [c for c in stored if c.destination == a.destination and c.created_at >= a.started_at]
        nxt = [b.started_at for b in attempts[i + 1 :] if b.destination == a.destination]
        mine = [c for c in later if not nxt or c.created_at < nxt[0]]
        view["request"] = _body(next((c.data for c in mine if c.kind == ContentKind.sent), None))
        view["response"] = _body(next((c.data for c in mine if c.kind == ContentKind.response), None))
    out["content"] = {
        "raw": raw_view(raw, row.kind, row.charset) if raw is not None else None,
        "transformed": orjson.loads(bundle) if bundle is not None else None,
    }
    return out


# -- routes ---------------------------------------------------------------------------------------------


def _bad(exc: BadQuery) -> Problem:
    return Problem(400, "invalid-query", f"{exc.field}: {exc.message}")


def routes(admin: Admin) -> list[BaseRoute]:
    access, store = admin.access, admin.store

    async def list_messages(request: Request) -> Response:
        who = await access.require(request, Role.viewer)
        try:
            q = query_of(dict(request.query_params))
            page = await asyncio.to_thread(search, store, q)
        except BadQuery as exc:
            raise _bad(exc) from None
        if q.mrn or q.accession:
            keys = " ".join(k for k, v in (("mrn", q.mrn), ("accession", q.accession)) if v)
            await access.record(who, "message.search", target=keys, message_ids=[r.id for r in page.rows])
        return json({
            "messages": [message_json(r, page.deliveries.get(r.id, [])) for r in page.rows],
            "next_cursor": page.next_cursor,
        })  # fmt: skip

    async def show(request: Request) -> Response:
        who = await access.require(request, Role.viewer)
        given = request.path_params["message_id"]
        try:
            message_id = await asyncio.to_thread(resolve_id, store, given)
        except BadQuery as exc:
            raise _bad(exc) from None
        except UnknownId:
            raise Problem(404, "unknown-message", "no message has this id") from None
        except AmbiguousId:
            raise Problem(409, "ambiguous-id", "more than one message starts with this id: give more digits") from None
        content = who.role >= Role.operator
        found = await asyncio.to_thread(detail, store, message_id, content=content)
        if found is None:  # removed (retention) between the two reads
            raise Problem(404, "unknown-message", "no message has this id")
        if content:
            await access.record(who, "message.read", message_ids=[message_id])
        return json(found)

    return [
        Route(f"{PREFIX}/messages", list_messages, methods=["GET"]),
        Route(f"{PREFIX}/messages/{{message_id}}", show, methods=["GET"]),
    ]


# -- the OpenAPI description (engine/api/admin/spec.py) -------------------------------------------------------

_STRING_OR_NULL = {"type": ["string", "null"]}
_DELIVERY_STATUS = {
    "type": "object",
    "required": ["destination", "status"],
    "properties": {"destination": {"type": "string"}, "status": {"type": "string"}},
}
_MESSAGE = {
    "type": "object",
    "description": "A message's metadata (never content).",
    "required": ["id", "channel", "status", "kind", "type", "received_at", "updated_at", "size_bytes", "sender",
                 "control_id", "peer", "error", "duplicate_of", "deliveries"],
    "properties": {
        "id": {"type": "string"}, "channel": {"type": "string"}, "status": {"type": "string"},
        "kind": {"type": "string"}, "type": {"type": "string"},
        "received_at": {"type": "number", "description": "Epoch seconds."}, "updated_at": {"type": "number"},
        "size_bytes": {"type": "integer"}, "sender": {"type": "string"}, "control_id": {"type": "string"},
        "peer": {"type": "string"}, "error": _STRING_OR_NULL, "duplicate_of": _STRING_OR_NULL,
        "deliveries": {"type": "array", "items": _DELIVERY_STATUS},
    },
}  # fmt: skip
_ATTEMPT = {
    "type": "object",
    "required": ["number", "destination", "started_at", "duration_ms", "outcome", "status_code", "error"],
    "properties": {
        "number": {"type": "integer"}, "destination": {"type": "string"}, "started_at": {"type": "number"},
        "duration_ms": {"type": "number"}, "outcome": {"type": "string"}, "status_code": {"type": ["integer", "null"]},
        "error": _STRING_OR_NULL,
        "request": {"description": "Operators: the request sent ({json} or {text}); null: the stored bundle."},
        "response": {"description": "Operators: the response ({json} or {text}), null when none."},
    },
}  # fmt: skip
_DETAIL = {
    "type": "object",
    "description": "Metadata, deliveries and attempts; `content` only for operators and admins (audited).",
    "required": [*_MESSAGE["required"], "attempts"],
    "properties": {
        **_MESSAGE["properties"],  # type: ignore[dict-item]
        "deliveries": {"type": "array", "items": {"type": "object", "properties": {
            "destination": {"type": "string"}, "status": {"type": "string"}, "attempts": {"type": "integer"},
            "last_status_code": {"type": ["integer", "null"]}, "last_error": _STRING_OR_NULL,
            "updated_at": {"type": "number"}}}},
        "attempts": {"type": "array", "items": _ATTEMPT},
        "content": {"type": "object", "properties": {
            "raw": {"description": "`format` hl7v2 (`segments`), dicom-study / dicom-instance (datasets by keyword), "
                                   "json / fhir (`json`), or text (`text`)."},
            "transformed": {"description": "The FHIR bundle made of it, or null."}}},
    },
}  # fmt: skip
_SEARCH_PARAMS = [
    param("channel", description="Only this channel."),
    param("status", description="Only this message status."),
    param("since", description="Received at or after: ISO 8601 (no offset: the engine host's zone) or an age (2h)."),
    param("until", description="Received before (same forms)."),
    param("type", description="Message type (`ORU^R01`; `ORU` for every event)."),
    param("control_id", description="The sender's control id (MSH-10)."),
    param("mrn", description="A patient identifier, plain (matched by its keyed hash; the search is audited)."),
    param("accession", description="An accession / filler / placer number, plain (audited like mrn)."),
    param("sender", description="Sender as stored (MSH-3|MSH-4)."),
    param("cursor", description="`next_cursor` of the previous page."),
    param("limit", description=f"Rows per page (1-{MAX_LIMIT}, default 50).", type="integer"),
]

OPENAPI: dict[str, Any] = {
    f"{PREFIX}/messages": {
        "get": operation(
            "Search messages, newest first, by cursor pages", "viewer", "searchMessages",
            {"type": "object", "required": ["messages", "next_cursor"], "properties": {
                "messages": {"type": "array", "items": _MESSAGE}, "next_cursor": _STRING_OR_NULL}},
            parameters=_SEARCH_PARAMS, errors=(400,),
        )
    },
    f"{PREFIX}/messages/{{message_id}}": {
        "get": operation(
            "One message: metadata, deliveries, attempts; content for operators", "viewer", "getMessage", _DETAIL,
            parameters=[param("message_id", "path", "The id, or a unique prefix of at least 8 hex digits.")],
            errors=(400, 404, 409),
        )
    },
}  # fmt: skip
OPENAPI[f"{PREFIX}/messages/{{message_id}}"]["get"]["responses"]["409"]["description"] = (
    "More than one message starts with this prefix: give more digits."
)
