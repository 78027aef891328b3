"""HL7 v2 acceptance, shared by every source that carries HL7 v2 (MLLP today; HTTP later).

What is HL7-specific about accepting a message lives here, not in the accept path: decoding (MSH-18, else
the channel's ``charset``), the MSH checks (type accepted, a mapping for it, MSH-10 present), the duplicate
key (sending application and facility + MSH-10), the ordering lane (PID-3), and the reply (ACK/NAK in
original or enhanced mode, encoded like the inbound message when that is byte-compatible).

:class:`HL7Options` is the HL7 part of a source's config; :class:`HL7Acceptor` turns raw bytes into a
commit (``engine.ingest.Ingest.accept``) and a reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field

from engine import hl7v2, response
from engine.config.model import Model
from engine.errors import EncodingError, HL7Error, InboundError, StoreUnavailable, TransformError
from engine.ingest import Ingest, Meta
from engine.store import MessageStatus

if TYPE_CHECKING:
    from engine.config.channel import Channel

__all__ = ["Decision", "Dedupe", "HL7Acceptor", "HL7Options", "Reply"]


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
    behind an AE/AR, and the stored message (``status`` ``unavailable``: nothing was committed)."""

    header: hl7v2.Header | None
    text: str | None
    code: str
    error: HL7Error | TransformError | None
    message_id: str | None
    status: str
    duplicate_of: str | None = None


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
    ) -> None:
        self.channel = channel
        self.options = options
        self._ingest = ingest
        self._has_mapping = has_mapping
        self._transform_now = transform_now

    async def reply_bytes(self, raw: bytes, peer: str, error: InboundError | None = None) -> bytes:
        """Accept one message and return the encoded reply (empty: send nothing)."""
        return self.encode(await self.handle(raw, peer, error))

    async def handle(self, raw: bytes, peer: str, error: InboundError | None = None) -> Reply:
        d = await self.decide(raw, peer, error)
        return self._reply(d.header, d.text, d.code, d.error, d.message_id, d.status)

    async def decide(self, raw: bytes, peer: str, error: InboundError | None = None) -> Decision:
        """Accept one message and say what happened, without building a reply (for transports such as HTTP
        that answer in their own terms): the acknowledgement code it would get, and why."""
        ch, opts = self.channel, self.options
        text: str | None = None
        header: hl7v2.Header | None = None
        try:
            text, header = hl7v2.read(raw, opts.charset)
            if error is None:
                error = self._check_type(header)
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
            patient=hl7v2.patient_key(text, header.delimiters) if ok else "",  # type: ignore[arg-type, union-attr]
            error=error,
        )
        wait_for_transform = ch.response == "after_transform" and error is None
        try:
            receipt = await self._ingest.accept(ch, raw, meta, enqueue=not wait_for_transform)
        except StoreUnavailable as exc:
            return Decision(header, text, "AE", HL7Error(exc.args[0], code="207"), None, "unavailable")
        if error is not None:
            code = "AR" if error.reject else "AE"
            return Decision(header, text, code, _hl7(error), receipt.message_id, "error")
        if wait_for_transform and receipt.status == MessageStatus.received and self._transform_now:
            try:
                await asyncio.to_thread(self._transform_now, receipt.message_id)
            except TransformError as exc:
                return Decision(header, text, "AE", exc, receipt.message_id, "error")
        return Decision(header, text, "AA", None, receipt.message_id, receipt.status, receipt.duplicate_of)

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


def _hl7(error: InboundError) -> HL7Error:
    """An HL7 error for the NAK of a problem a transport found (oversize, cut off), in HL7's terms."""
    if isinstance(error, HL7Error):
        return error
    return HL7Error(error.message, code="207", location=error.location, reject=error.reject)
