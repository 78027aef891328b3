"""The one place that records dead letters: a Dramatiq middleware hook on nack.

A message is nacked when its actor raised :class:`DeadLetter` (a permanent delivery failure, or
retries exhausted) or failed unexpectedly more often than Dramatiq retries. Either way the store gets
the reason, and an operator can inspect and replay it (``interlink dlq``). Dramatiq's own Redis
dead-letter set expires after a week and has no replay, so it is not relied upon.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import dramatiq
from dramatiq.broker import MessageProxy

from engine.errors import DeadLetter

__all__ = ["DeadLetter", "DeadLetters"]

log = logging.getLogger(__name__)


class DeadLetters(dramatiq.Middleware):
    """Record nacked messages: ``on_dead(actor_name, args, reason)`` is called for each."""

    def __init__(self, on_dead: Callable[[str, tuple[object, ...], str], None]) -> None:
        self._on_dead = on_dead

    def after_nack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        exc = getattr(message, "_exception", None)
        if isinstance(exc, DeadLetter):
            reason = str(exc)
        elif exc is not None:
            reason = f"worker failed: {exc.__class__.__name__}"
        else:
            reason = "worker failed"
        try:
            self._on_dead(message.actor_name, tuple(message.args), reason)
        except Exception:
            log.exception("recording a dead letter failed for actor %s", message.actor_name)
