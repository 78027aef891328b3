"""Webhook source: messages POSTed to the engine's HTTP server at ``/webhooks/{channel}``.

Contract, in the order a request meets it:

1. **Authentication** (``engine.sources.http_auth``): bearer token or client certificate from the headers
   and the connection; for Standard Webhooks signatures, the headers and their timestamp. Nothing of the
   body has been read when this refuses (401, 403).
2. **Size**: a ``Content-Length`` over ``max_bytes`` is refused at once; a body without one (chunked) is
   refused as soon as it passes ``max_bytes`` while being read (413); it must arrive within
   ``read_timeout_s`` (408).
3. **Signature** on the raw bytes (401), before anything parses them.
4. **Media type** (415): ``application/fhir+json``, ``application/json``, ``application/hl7-v2`` or
   ``x-application/hl7-v2+er7``, among those the channel ``accepts``.
5. **Idempotency** (``engine.sources.http_idempotency``): a repeat (same ``Idempotency-Key``, else
   ``webhook-id``) gets the first answer and creates nothing.
6. **Reading**, by media type, as far as the answer needs: JSON that does not parse is 400; FHIR must
   have a ``resourceType`` the channel takes and (``validate_fhir``) pass FHIR R4 structure validation;
   JSON events must pass the channel's ``json_schema`` when it has one (422); HL7 v2 goes through
   :class:`~engine.sources.hl7.HL7Acceptor` exactly as over MLLP (MSH checks, MSH-10 duplicates,
   reply after transform), and its acknowledgement code becomes the status (AA 202, AR 422, AE 400 or,
   for a mapping error, 422). A readable body that is refused is stored with its error (status
   ``error``) and the problem names the stored ``message_id``. An HL7 **batch** (a body starting with
   FHS or BHS; ``engine.sources.hl7_batch``) is split and its messages committed together: **202** with
   ``{"batch": <BHS-11 or FHS-11>, "messages": [{"message_id", "status_url", "ack"}, …]}`` in the
   batch's order, a message not accepted carrying ``"problem"`` (the reason, naming the place) and
   ``"hl7_code"``; a batch refused whole (BTS-1/FTS-1 count, ``max_batch_messages``, envelope order)
   is a **422** ``hl7-batch-refused`` naming the place and the stored batch's ``message_id``.
7. **Commit** through the one accept path (``Ingest.accept``); only then **202** with
   ``{"message_id", "status_url"}`` and ``Location`` (the status, ``GET
   /v1/webhooks/{channel}/messages/{id}``, same authentication, ids and statuses only). When the store
   cannot commit: **503** ``store-unavailable`` with ``Retry-After``, nothing claimed; when the channel's
   backlog is full (``engine/backpressure.py``): **503** ``busy``, ``Retry-After: 1``, nothing claimed.
   With ``response: after_transform`` the message is mapped first and a mapping error is a 422 naming
   the field.

Errors are RFC 9457 problems naming places, never values; log lines name the channel and statuses only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import Field, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.api.problems import Problem
from engine.api.webhooks import WebhookRoutes, status_location
from engine.config.model import Model
from engine.errors import Busy, ConfigError, InboundError, StoreUnavailable, TransformError, explain
from engine.ingest import Meta
from engine.signing import ID_HEADER
from engine.sources import hl7_batch
from engine.sources.base import SourceContext
from engine.sources.hl7 import HL7Acceptor, HL7Options, channel_limits
from engine.sources.http_auth import AuthConfig, Authenticator, build_authenticator
from engine.sources.http_body import input_kind, read_body
from engine.sources.http_idempotency import Answer, IdempotencyCache
from engine.sources.http_payload import check_schema, fhir_patient, json_path, read_fhir, read_json, type_label
from engine.store import MessageStatus

__all__ = ["WebhookConfig", "WebhookSource", "build"]

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "idempotency-key"
BodyKind = Literal["fhir", "json", "hl7v2"]
BODY_KINDS: tuple[BodyKind, ...] = ("fhir", "json", "hl7v2")
_MAX_KEY_CHARS = 255


class WebhookConfig(Model):
    """An HTTP webhook endpoint at ``/webhooks/<channel name>`` on the engine's HTTP server."""

    type: Literal["webhook"] = Field(description="Source kind.")
    auth: AuthConfig = Field(
        description="How senders authenticate: standard_webhooks (HMAC signatures), bearer, mtls or none."
    )
    accepts: list[BodyKind] = Field(
        default_factory=lambda: list(BODY_KINDS),
        min_length=1,
        description="Body kinds taken: fhir (application/fhir+json), json (application/json), hl7v2 "
        "(application/hl7-v2, x-application/hl7-v2+er7); others get 415.",
    )
    max_bytes: int = Field(1_048_576, ge=1, description="Largest body accepted (413 beyond, checked while reading).")
    read_timeout_s: float = Field(30.0, gt=0, description="The whole body must arrive within this (408 beyond).")
    validate_fhir: bool = Field(
        True, description="Check FHIR bodies against the R4 structure on receipt (422 naming the element)."
    )
    fhir_types: list[str] = Field(
        default_factory=list, description="FHIR resource types taken (resourceType); empty: any."
    )
    json_schema: Path | None = Field(
        None, description="JSON Schema file that JSON events must satisfy (422 naming the place and keyword)."
    )
    event_type: str = Field(
        "type", description="Dotted path of a JSON event's type (its message type: which JSON map applies)."
    )
    patient: str | None = Field(
        None, description="Dotted path of the patient a JSON event is about (its ordering lane); none: no lane."
    )
    idempotency_window_s: int = Field(
        86_400,
        ge=0,
        description="How long a repeated Idempotency-Key / webhook-id is recognised by the store (answered with "
        "the first message's id, never processed again).",
    )
    replay_cache_s: int = Field(
        900,
        ge=0,
        description="How long a repeat is answered from memory with the first answer, storing nothing (keep it "
        "above twice the signature tolerance).",
    )
    hl7: HL7Options = Field(
        default_factory=HL7Options, description="How HL7 v2 bodies are read and checked (as over MLLP)."
    )

    @model_validator(mode="after")
    def _replay_covers_tolerance(self) -> WebhookConfig:
        tolerance = getattr(self.auth, "tolerance_s", None)
        if tolerance is not None and self.replay_cache_s < 2 * tolerance:
            raise ValueError("replay_cache_s must be at least twice auth.tolerance_s (a replay must be recognised "
                             "for as long as its timestamp is accepted)")  # fmt: skip
        return self


def _answer(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, orjson.dumps(payload), "application/json", tuple((headers or {}).items()))


def _not_committed(busy: bool, why: str = "") -> Problem:
    """The 503 of a message not committed: the channel is busy (its backlog is full, or an operator paused
    it: ``why``, the engine's own words; retry soon), or the store failed."""
    if busy:
        return Problem(503, "busy", f"{why}; nothing was accepted" if why else "the channel's backlog is full; "
                       "nothing was accepted, retry later", headers={"Retry-After": "1"})  # fmt: skip
    return Problem(503, "store-unavailable", "the message store cannot commit now; nothing was accepted",
                   headers={"Retry-After": "5"})  # fmt: skip


def _problem_answer(p: Problem) -> Answer:
    return Answer(p.status, orjson.dumps(p.body()), "application/problem+json", tuple(p.headers.items()))


class WebhookSource:
    """One webhook channel: registered on the HTTP server while it runs."""

    def __init__(self, ctx: SourceContext, routes: WebhookRoutes, authenticator: Authenticator) -> None:
        self.ctx = ctx
        self.channel = ctx.channel
        self.name = ctx.channel.name
        self.config: WebhookConfig = ctx.channel.source  # type: ignore[assignment]
        self._routes = routes
        self._auth = authenticator
        self._cache = IdempotencyCache(ttl_s=self.config.replay_cache_s)
        self._hl7 = HL7Acceptor(self.channel, self.config.hl7, ctx.ingest, has_mapping=ctx.has_mapping,
                                transform_now=ctx.transform_now,
                                limits=channel_limits(ctx.limits, self.channel))  # fmt: skip
        self._schema = None
        if self.config.json_schema is not None:
            from engine.sources.http_payload import schema_validator

            self._schema = schema_validator(self.config.json_schema)
        self._store = ctx.ingest.committer.store
        self._running = False

    async def start(self) -> None:
        self._routes.register(self.name, self)
        self._running = True

    async def stop(self) -> None:
        self._running = False
        self._routes.unregister(self.name)

    @property
    def ready(self) -> bool:
        return self._running and self.name in self._routes

    # -- intake -------------------------------------------------------------------------------------

    async def receive(self, request: Request) -> Response:
        t0 = time.perf_counter()
        checked = self._auth.before_body(request)
        body = await read_body(request, max_bytes=self.config.max_bytes, timeout_s=self.config.read_timeout_s)
        self._auth.after_body(checked, body)
        kind, charset = input_kind(request)
        if kind not in self.config.accepts:
            raise Problem(415, "unsupported-media-type", "send " + " or ".join(self.config.accepts))
        key = request.headers.get(IDEMPOTENCY_HEADER) or (checked.msg_id if checked else request.headers.get(ID_HEADER))
        if key is not None and (len(key) > _MAX_KEY_CHARS or not key.isprintable() or not key):
            raise Problem(
                400, "bad-idempotency-key", f"an idempotency key is 1 to {_MAX_KEY_CHARS} printable characters"
            )
        peer = _peer(request)
        if key is None:
            answer = await self._accept(kind, charset, body, peer, None)
            replayed = False
        else:
            digest = hashlib.sha256(kind.encode() + b"\0" + body).digest()
            answer, replayed = await self._cache.run(key, digest,
                                                     lambda: self._accept(kind, charset, body, peer, key))  # fmt: skip
        self.ctx.metrics.received(self.name, "replayed" if replayed else str(answer.status), time.perf_counter() - t0)
        headers = dict(answer.headers)
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(answer.body, status_code=answer.status, media_type=answer.media_type, headers=headers)

    async def _accept(self, kind: str, charset: str, body: bytes, peer: str, key: str | None) -> Answer:
        try:
            if kind == "hl7v2":
                return await self._accept_hl7(body, peer)
            return await self._accept_json(kind, body, peer, key)
        except Problem as p:
            return _problem_answer(p)

    async def _accept_json(self, kind: str, body: bytes, peer: str, key: str | None) -> Answer:
        meta = Meta(peer=peer, kind=kind, charset="utf-8", dedupe=f"idem\x1f{key}" if key else "")
        meta.dedupe_window_s = self.config.idempotency_window_s
        try:
            if kind == "fhir":
                data = read_fhir(body, types=self.config.fhir_types, validate=self.config.validate_fhir)
                meta.message_type = type_label(data["resourceType"])
                meta.patient = fhir_patient(data)
            else:
                data = read_json(body)
                if self._schema is not None:
                    check_schema(self._schema, data)
                meta.message_type = type_label(json_path(data, self.config.event_type))
                if self.config.patient:
                    found = json_path(data, self.config.patient)
                    meta.patient = str(found) if isinstance(found, str | int) else ""
        except InboundError as exc:
            meta.error = exc
        after = self.channel.response == "after_transform" and meta.error is None
        try:
            receipt = await self.ctx.ingest.accept(self.channel, body, meta, enqueue=not after)
        except StoreUnavailable as exc:
            if meta.error is not None and not isinstance(exc, Busy):
                raise self._refusal(meta.error, None) from None
            raise _not_committed(isinstance(exc, Busy), str(exc)) from None
        if meta.error is not None:
            raise self._refusal(meta.error, receipt.message_id)
        if after and receipt.status == MessageStatus.received and self.ctx.transform_now is not None:
            try:
                await asyncio.to_thread(self.ctx.transform_now, receipt.message_id)
            except TransformError as exc:
                raise Problem(422, "mapping-refused", explain(exc), message_id=receipt.message_id) from None
        return self._accepted(receipt.duplicate_of or receipt.message_id)

    async def _accept_hl7(self, body: bytes, peer: str) -> Answer:
        if hl7_batch.is_batch(body):
            return await self._accept_hl7_batch(body, peer)
        d = await self._hl7.decide(body, peer)
        if d.status in ("unavailable", "busy"):
            raise _not_committed(d.status == "busy", d.error.message if d.error else "")
        if d.code == "AA":
            assert d.message_id is not None
            return self._accepted(d.duplicate_of or d.message_id)
        err = d.error
        detail = explain(err) if err is not None else "refused"
        if isinstance(err, TransformError):
            raise Problem(422, "mapping-refused", detail, message_id=d.message_id)
        code = err.code if err is not None else "207"
        # HL7 table 0357: 2xx but 207 say "not taken here" (type, event, processing id, version): readable but
        # refused; 1xx (segment sequence, required field, data type) and 207 say it cannot be read.
        if code.startswith("2") and code != "207":
            raise Problem(422, "hl7-rejected", detail, message_id=d.message_id, extra={"hl7_code": code})
        raise Problem(400, "hl7-unreadable", detail, message_id=d.message_id, extra={"hl7_code": code})

    async def _accept_hl7_batch(self, body: bytes, peer: str) -> Answer:
        bd = await self._hl7.decide_batch(body, peer)
        if bd.status in ("unavailable", "busy"):
            raise _not_committed(bd.status == "busy", bd.refusal.message if bd.refusal else "")
        if bd.refusal is not None:
            raise Problem(422, "hl7-batch-refused", explain(bd.refusal), message_id=bd.message_id,
                          extra={"hl7_code": bd.refusal.code})  # fmt: skip
        messages: list[dict[str, Any]] = []
        for d in bd.decisions:
            message_id = d.duplicate_of or d.message_id or ""
            entry: dict[str, Any] = {"message_id": message_id, "status_url": status_location(self.name, message_id),
                                     "ack": d.code}  # fmt: skip
            if d.error is not None:
                entry.update(problem=explain(d.error), hl7_code=d.error.code)
            messages.append(entry)
        return _answer(202, {"batch": bd.batch.control_id, "messages": messages})

    def _refusal(self, error: InboundError, message_id: str | None) -> Problem:
        where = f"{error.location}: " if error.location else ""
        if error.kind == "unreadable":
            return Problem(400, "unreadable", where + error.message, message_id=message_id)
        return Problem(422, "invalid", where + error.message, message_id=message_id)

    def _accepted(self, message_id: str) -> Answer:
        location = status_location(self.name, message_id)
        return _answer(202, {"message_id": message_id, "status_url": location}, {"Location": location})

    # -- status -------------------------------------------------------------------------------------

    async def status(self, request: Request, message_id: str) -> Response:
        checked = self._auth.before_body(request)
        self._auth.after_body(checked, b"")
        found = await asyncio.to_thread(self._status, message_id)
        if found is None:
            raise Problem(404, "unknown-message", "no message of this id in this channel")
        return JSONResponse(found)

    def _status(self, message_id: str) -> dict[str, Any] | None:
        if len(message_id) > 64 or not message_id.isalnum():
            return None
        m = self._store.message(message_id)
        if m is None or m.channel != self.name:
            return None
        deliveries = [{"destination": d.destination, "status": d.status, "attempts": d.attempts}
                      for d in self._store.deliveries_of(message_id)]  # fmt: skip
        return {"message_id": m.id, "channel": m.channel, "status": m.status, "duplicate_of": m.duplicate_of,
                "error": m.error, "deliveries": deliveries}  # fmt: skip


def _peer(request: Request) -> str:
    client = request.client
    if client is None:
        return ""
    return f"[{client.host}]:{client.port}" if ":" in client.host else f"{client.host}:{client.port}"


def build(ctx: SourceContext) -> WebhookSource:
    """The webhook source of a channel; its secrets are read now (ConfigError when there are none)."""
    routes = ctx.http
    if routes is None:
        raise ConfigError("a webhook channel needs the engine's HTTP server (http_port is 0)")
    config: WebhookConfig = ctx.channel.source  # type: ignore[assignment]
    auth = build_authenticator(config.auth, routes.data_dir, ctx.channel.name, mtls_available=routes.mtls)
    return WebhookSource(ctx, routes, auth)
