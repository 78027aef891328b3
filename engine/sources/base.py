"""What every source hands to the engine: the raw bytes, an :class:`Inbound`, and a :data:`Handler`.

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

from engine.errors import HL7Error

__all__ = ["Handler", "Inbound"]


@dataclass(frozen=True, slots=True)
class Inbound:
    """Transport facts about one inbound message."""

    #: The sender's address, ``host:port`` (``[v6addr]:port`` for IPv6).
    peer: str
    #: A problem the source detected (the bytes are still passed so they can be stored with it, and the
    #: reply is an error).
    error: HL7Error | None = None


#: ``await handler(raw, inbound) -> reply``: store the message, return the reply to send
#: (empty bytes: send nothing).
Handler = Callable[[bytes, Inbound], Awaitable[bytes]]
