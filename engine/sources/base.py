"""What every source is and hands to the engine: the :class:`Source` protocol, the :class:`SourceContext` a
source is built with, the raw bytes with an :class:`Inbound`, and a :data:`Handler`.

A source moves bytes and answers the sender. For each message it calls the channel's handler (one
decision hook: its answer is the protocol reply) with the raw bytes, transport framing removed and
nothing decoded, and an :class:`Inbound` describing where they came from and what the source itself
found wrong with them (an oversize or unterminated frame, or a character set its transport cannot
carry). The handler stores the message (with that error, if any) and returns the full reply bytes; the
source frames and sends them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from engine.errors import InboundError
from engine.transform.limits import DEFAULT as DEFAULT_LIMITS
from engine.transform.limits import Limits

if TYPE_CHECKING:
    from engine.api.webhooks import WebhookRoutes
    from engine.config.channel import Channel
    from engine.ingest import Ingest
    from engine.metrics import Metrics

__all__ = ["Handler", "Inbound", "Source", "SourceContext"]


@dataclass(frozen=True, slots=True)
class Inbound:
    """Transport facts about one inbound message."""

    #: The sender's address, ``host:port`` (``[v6addr]:port`` for IPv6).
    peer: str
    #: A problem the source detected (the bytes are still passed so they can be stored with it, and the
    #: reply is an error).
    error: InboundError | None = None


#: ``await handler(raw, inbound) -> reply``: store the message, return the reply to send
#: (empty bytes: send nothing).
Handler = Callable[[bytes, Inbound], Awaitable[bytes]]


class SourceSettings(Protocol):
    """What every source kind's config has (for type checking; the channel validates the real models)."""

    @property
    def type(self) -> str: ...


class Source(Protocol):
    """A running source of one channel: it moves bytes and answers the sender, through the accept path."""

    name: str

    async def start(self) -> None:
        """Bind and start taking messages; :class:`~engine.errors.ListenError` (one line) when it cannot."""

    async def stop(self) -> None:
        """Stop taking messages, let replies in progress finish, release everything."""


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What a source is built with: its channel, the accept path, and the engine's services it may use."""

    channel: Channel
    ingest: Ingest
    #: whether a mapping exists for a message type (sources that check types before accepting)
    has_mapping: Callable[[str], bool]
    #: process a committed message now and raise TransformError if its mapping rejects it (replies after
    #: transform); None when this process runs no mapping
    transform_now: Callable[[str], None] | None
    metrics: Metrics
    #: the engine's HTTP server, for sources that receive over it (webhooks); None when it is not served
    http: WebhookRoutes | None = None
    #: the engine's caps on one message (settings ``limits:``); a channel's ``limits:`` may lower them
    limits: Limits = DEFAULT_LIMITS
