"""HL7 v2 acceptance, shared by every source that carries HL7 v2 (MLLP today; HTTP later).

What is HL7-specific about accepting a message lives here, not in the accept path: decoding (MSH-18, else
the channel's ``charset``), the MSH checks (type accepted, a mapping for it, MSH-10 present), the duplicate
key (sending application and facility + MSH-10), the ordering lane (PID-3), and the reply (ACK/NAK in
original or enhanced mode, encoded like the inbound message when that is byte-compatible), and the caps
of the channel (``engine.transform.limits``: size, segments, repetitions, components; over one → AR naming
the cap, the message stored with that error).

**Batches** (``engine.sources.hl7_batch``): bytes starting with FHS or BHS are split into their messages;
each goes through the same decode, checks, caps and duplicate key, and all are committed in one
transaction (``Ingest.accept_many``) before the reply: a crash keeps the whole batch or none of it, and a
store failure refuses it whole (AE, nothing kept). The reply is one batch acknowledgement
(``response.hl7_batch_reply``) holding an ACK for each message not accepted (``batch_ack: errors``, the
standard's "acknowledge errors only": an empty batch of ACKs accepts all) or for every message
(``batch_ack: all``); MSH-15 of the messages is not consulted. A batch refused whole (count mismatch in
BTS-1/FTS-1, over ``max_batch_messages``, envelope out of order, a transport error) is stored once as it
came, with its error, and answered by a batch holding one AR whose MSA-2 is the batch's control id.

:class:`HL7Options` is the HL7 part of a source's config; :class:`HL7Acceptor` turns raw bytes into a
commit (``engine.ingest.Ingest.accept``) and a reply; :func:`channel_limits` resolves a channel's caps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from engine import hl7v2, response
from engine.config.model import Model
from engine.errors import Busy, ConfigError, EncodingError, HL7Error, InboundError, StoreUnavailable, TransformError
from engine.ingest import Ingest, Meta, Receipt
from engine.sources import hl7_batch
from engine.store import MessageStatus
from engine.transform.limits import DEFAULT as DEFAULT_LIMITS
from engine.transform.limits import Limits, check_caps

if TYPE_CHECKING:
    from engine.config.channel import Channel

__all__ = ["BatchDecision", "Decision", "Dedupe", "HL7Acceptor", "HL7Options", "Reply", "channel_limits"]


class Dedupe(Model):
    """Recognise a message resent under the same MSH-10 by the same sender."""

    enabled: bool = Field(True, description="Detect duplicate MSH-10 per sending application/facility.")
    window_s: int = Field(7 * 86400, ge=0, description="How far back (seconds) a duplicate MSH-10 is recognised.")


class HL7Options(Model):
    """How HL7 v2 messages are read and checked when they are accepted."""

    charset: str = Field(
        "utf-8", description="Charset used when MSH-18 is empty (MSH-18, when valued, takes precedence)."
    )
    accept: list[str] = Field(
        default_factory=list,
        description="Message types accepted (MSH-9 as 'ORU^R01' or just 'ADT'); empty accepts all that map.",
    )
    dedupe: Dedupe = Field(default_factory=Dedupe, description="Duplicate MSH-10 detection.")
    batch_ack: Literal["errors", "all"] = Field(
        "errors",
        description="A batch (FHS/BHS) is answered by one batch acknowledgement holding an ACK for each message "
        "not accepted (errors: an empty batch accepts all) or for every message (all).",
    )

    def accepts(self, message_type: str) -> bool:
        if not self.accept:
            return True
        code = message_type.split("^", 1)[0]
        return message_type in self.accept or code in self.accept


@dataclass(slots=True)
class Reply:
    """What acceptance decided: the reply text to send (``""`` = send nothing) and the stored message."""

    text: str
    message_id: str | None
    status: str
    #: The sender's MSH-18 (first repetition): the reply is encoded in it when byte-compatible.
    charset: str = ""


@dataclass(slots=True)
class Decision:
    """What acceptance decided, before any reply is built: the acknowledgement code (AA, AE, AR), the error
    behind an AE/AR, and the stored message (``status`` ``unavailable`` or ``busy``: nothing was committed)."""

    header: hl7v2.Header | None
    text: str | None
    code: str
    error: HL7Error | TransformError | None
    message_id: str | None
    status: str
    duplicate_of: str | None = None


@dataclass(slots=True)
class BatchDecision:
    """What acceptance decided for a batch: each message's decision, or the refusal of the whole (then
    ``message_id`` is the stored batch, ``None`` when nothing could be committed: ``status`` unavailable or
    busy)."""

    batch: hl7_batch.Batch
    decisions: list[Decision]
    refusal: HL7Error | None = None
    message_id: str | None = None
    status: str = "batch"


def channel_limits(engine_limits: Limits, channel: Channel) -> Limits:
    """The caps a channel's messages are held to at its source: the engine's, lowered by the channel's
    ``limits:``; ConfigError when the channel would raise one (the worker holds every message to the
    engine's)."""
    try:
        return engine_limits.lowered(channel.limits)
    except ValueError as exc:
        raise ConfigError(f"channel {channel.name}: {exc}") from None


class HL7Acceptor:
    """Accept HL7 v2 messages for one channel: decode, check, commit, reply.

    ``transform_now`` (for channels replying after transform) runs the processing step for a committed
    message and raises TransformError when the mapping rejects it.
    """

    def __init__(
        self,
        channel: Channel,
        options: HL7Options,
        ingest: Ingest,
        *,
        has_mapping: Callable[[str], bool],
        transform_now: Callable[[str], None] | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.channel = channel
        self.options = options
        self.limits = limits  # the channel's caps (channel_limits)
        self._ingest = ingest
        self._has_mapping = has_mapping
        self._transform_now = transform_now
        self._per_patient = channel.ordering.mode == "per_patient"

    async def reply_bytes(self, raw: bytes, peer: str, error: InboundError | None = None) -> bytes:
        """Accept one message and return the encoded reply (empty: send nothing)."""
        return self.encode(await self.handle(raw, peer, error))

    async def handle(self, raw: bytes, peer: str, error: InboundError | None = None) -> Reply:
        if hl7_batch.is_batch(raw):
            return self.batch_reply(await self.decide_batch(raw, peer, error))
        d = await self.decide(raw, peer, error)
        return self._reply(d.header, d.text, d.code, d.error, d.message_id, d.status)

    async def decide(self, raw: bytes, peer: str, error: InboundError | None = None) -> Decision:
        """Accept one message and say what happened, without building a reply (for transports such as HTTP
        that answer in their own terms): the acknowledgement code it would get, and why."""
        header, text, meta = self._read(raw, peer, error)
        wait = self.channel.response == "after_transform" and meta.error is None
        try:
            receipt = await self._ingest.accept(self.channel, raw, meta, enqueue=not wait)
        except StoreUnavailable as exc:
            return Decision(header, text, "AE", HL7Error(exc.args[0], code="207"), None, _not_committed(exc))
        if meta.error is None and not wait:  # accepted, nothing to run before the reply: no coroutine for it
            return Decision(header, text, "AA", None, receipt.message_id, receipt.status, receipt.duplicate_of)
        return await self._decided(header, text, meta, receipt, wait)

    async def decide_batch(self, raw: bytes, peer: str, error: InboundError | None = None) -> BatchDecision:
        """Accept an HL7 batch (see the module docstring): its messages in one commit, or a refusal."""
        ch = self.channel
        try:
            if error is not None:
                raise _hl7(error)
            batch = hl7_batch.split(raw, self.limits.max_batch_messages)
        except HL7Error as exc:
            found = exc.batch if isinstance(exc, hl7_batch.BatchError) else hl7_batch.head(raw)
            meta = Meta(peer=peer, kind="hl7v2", charset=self.options.charset, error=exc)
            try:
                receipt = await self._ingest.accept(ch, raw, meta)
            except StoreUnavailable as down:
                return BatchDecision(found, [], HL7Error(down.args[0], code="207"), None, _not_committed(down))
            return BatchDecision(found, [], exc, receipt.message_id, "error")
        reads = [self._read(m, peer, None) for m in batch.messages]
        wait = ch.response == "after_transform"
        try:
            receipts = await self._ingest.accept_many(
                ch, [(m, meta) for m, (_, _, meta) in zip(batch.messages, reads, strict=True)], enqueue=not wait
            )
        except StoreUnavailable as exc:
            return BatchDecision(batch, [], HL7Error(exc.args[0], code="207"), None, _not_committed(exc))
        decisions = [
            await self._decided(header, text, meta, receipt, wait and meta.error is None)
            for (header, text, meta), receipt in zip(reads, receipts, strict=True)
        ]
        return BatchDecision(batch, decisions)

    def _read(self, raw: bytes, peer: str, error: InboundError | None) -> tuple[hl7v2.Header | None, str | None, Meta]:
        """Decode one message, read its MSH, check its type and the channel's caps: what the commit needs."""
        opts, limits = self.options, self.limits
        text: str | None = None
        header: hl7v2.Header | None = None
        if error is None and len(raw) > limits.max_bytes:
            error = HL7Error(f"the message is over the cap max_bytes = {limits.max_bytes}", code="207", reject=True)
        try:
            text, header = hl7v2.read(raw, opts.charset)
            if error is None:
                error = self._check_type(header) or _check_caps(text, header.delimiters, limits)
        except EncodingError as exc:
            header = exc.header  # type: ignore[assignment]
            error = error or exc
        except HL7Error as exc:
            error = error or exc
        ok = error is None and text is not None and header is not None
        meta = Meta(
            peer=peer,
            kind="hl7v2",
            charset=hl7v2.codec_for(header.charset if header else "", opts.charset),
            message_type=header.message_type if header else "",
            sender=header.sender if header else "",
            control_id=header.control_id if header else "",
            dedupe=f"{header.sender}\x1f{header.control_id}" if header and header.control_id else "",
            dedupe_window_s=opts.dedupe.window_s if opts.dedupe.enabled else None,
            # PID-3 is read only when the channel orders per patient (the lane is all it is for)
            patient=hl7v2.patient_key(text, header.delimiters) if ok and self._per_patient else "",  # type: ignore[arg-type, union-attr]
            error=error,
        )
        return header, text, meta

    async def _decided(
        self, header: hl7v2.Header | None, text: str | None, meta: Meta, receipt: Receipt, wait: bool
    ) -> Decision:
        """The decision for a committed message (running its mapping first when the channel replies after it)."""
        error = meta.error
        if error is not None:
            code = "AR" if error.reject else "AE"
            return Decision(header, text, code, _hl7(error), receipt.message_id, "error")
        if wait and receipt.status == MessageStatus.received and self._transform_now:
            try:
                await asyncio.to_thread(self._transform_now, receipt.message_id)
            except TransformError as exc:
                return Decision(header, text, "AE", exc, receipt.message_id, "error")
        return Decision(header, text, "AA", None, receipt.message_id, receipt.status, receipt.duplicate_of)

    def batch_reply(self, bd: BatchDecision) -> Reply:
        """The batch acknowledgement of a batch decision (see the module docstring)."""
        batch = bd.batch
        first = next((d.header for d in bd.decisions if d.header is not None), None)
        charset = first.charset if first is not None else ""
        if bd.refusal is not None:
            if first is None and batch.messages:
                try:
                    first = hl7v2.read_header(batch.messages[0][:4096].decode("latin-1"))
                except HL7Error:
                    first = None
            nak = response.hl7_batch_refusal(first, batch.control_id, bd.refusal)
            headers = [p.header for p in batch.parts] or [None]
            batches = [(h, [nak] if i == 0 else []) for i, h in enumerate(headers)]
            text = response.hl7_batch_reply(batch.file_header, batches, batch.delimiters)
            return Reply(text, bd.message_id, bd.status, charset)
        everything = self.options.batch_ack == "all"
        decisions = iter(bd.decisions)
        batches = []
        for part in batch.parts:
            acks = []
            for _ in part.messages:
                d = next(decisions)
                if everything or d.code != "AA":
                    acks.append(_ack(d))
            batches.append((part.header, acks))
        text = response.hl7_batch_reply(batch.file_header, batches, batch.delimiters)
        return Reply(text, None, "batch", charset)

    def _check_type(self, header: hl7v2.Header) -> HL7Error | None:
        ch = self.channel
        if not self.options.accepts(header.message_type):
            return HL7Error(
                f"message type {header.message_type} is not accepted by channel {ch.name}",
                code="200",
                location="MSH^1^9",
                reject=True,
            )
        if ch.mapping is None and not self._has_mapping(header.message_type):
            return HL7Error(
                f"no mapping for message type {header.message_type}", code="200", location="MSH^1^9", reject=True
            )
        if not header.control_id:
            return HL7Error("MSH-10 message control id is empty", code="101", location="MSH^1^10", reject=True)
        return None

    @staticmethod
    def _reply(
        header: hl7v2.Header | None,
        text: str | None,
        code: str,
        error: HL7Error | TransformError | None,
        message_id: str | None,
        status: str,
    ) -> Reply:
        if header is None:
            assert isinstance(error, HL7Error)
            return Reply(response.hl7_nak_unparsed(text, error), message_id, status)
        # Enhanced mode: MSH-15 says when the sender wants an accept acknowledgement at all.
        when = header.accept_ack_type.upper()
        ok = code == "AA"
        if (when == "NE") or (when == "ER" and ok) or (when == "SU" and not ok):
            return Reply("", message_id, status, header.charset)
        return Reply(response.hl7_ack(header, code, error=error), message_id, status, header.charset)

    def encode(self, reply: Reply) -> bytes:
        """Encode the reply like the inbound message (MSH-18, else the channel charset), but only in a
        codec that writes ASCII as ASCII: MLLP framing and the sender's MSH reader need single bytes."""
        return reply.text.encode(response.reply_codec(reply.charset, self.options.charset), errors="replace")


def _not_committed(exc: StoreUnavailable) -> str:
    """The status of a decision with nothing committed: ``busy`` (the channel's backlog is full: back-pressure)
    or ``unavailable`` (the store failed); both are answered AE."""
    return "busy" if isinstance(exc, Busy) else "unavailable"


def _hl7(error: InboundError) -> HL7Error:
    """An HL7 error for the NAK of a problem a transport found (oversize, cut off), in HL7's terms."""
    if isinstance(error, HL7Error):
        return error
    return HL7Error(error.message, code="207", location=error.location, reject=error.reject)


def _ack(d: Decision) -> str:
    """One message's ACK inside a batch acknowledgement (MSH-15 is not consulted there)."""
    if d.header is None:
        assert isinstance(d.error, HL7Error)
        return response.hl7_nak_unparsed(d.text, d.error)
    return response.hl7_ack(d.header, d.code, error=d.error)


def _check_caps(text: str, d: hl7v2.Delimiters, limits: Limits) -> HL7Error | None:
    """The channel's segment, repetition and component caps (``limits.check_caps``) as an AR naming the cap
    and the field (ERR-2)."""
    try:
        check_caps(text, d, limits)
    except TransformError as exc:
        where = exc.field.replace("-", "^1^", 1) if "-" in exc.field else exc.field
        return HL7Error(f"{exc.message} (rule {exc.rule})", code=exc.code, location=where, reject=True)
    return None
