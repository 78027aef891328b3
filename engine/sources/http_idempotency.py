"""Idempotent HTTP intake: a request repeated under the same key gets the first answer and creates nothing.

The key is the ``Idempotency-Key`` header, else the Standard Webhooks ``webhook-id`` (a sender resends a
message under the same id; a captured request replayed within the signature tolerance has it too).
:class:`IdempotencyCache` remembers, per channel, each key's first successful answer with a digest of the
request (content type + body) for ``ttl_s``:

- the same key and digest again: the first answer, byte for byte (``replayed`` is True), nothing stored;
- the same key with another body: a 422 problem (``idempotency-key-reused``, as the IETF
  Idempotency-Key draft advises), nothing stored;
- a repeat while the first is still being committed waits for it and gets its answer.

Only 2xx answers are remembered: an error is evaluated again (a 503 must not stick). Beyond ``ttl_s`` or
after a restart, the store's duplicate key (the same key, ``idempotency_window_s``) still recognises the
repeat: it is recorded as ``duplicate`` of the first message, answered with the first message's id, and
neither processed nor delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from engine.api.problems import Problem

__all__ = ["Answer", "IdempotencyCache"]


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer that can be given again."""

    status: int
    body: bytes
    media_type: str
    headers: tuple[tuple[str, str], ...] = ()


class IdempotencyCache:
    """First answers by key, for ``ttl_s``, at most ``max_entries`` (the oldest go first)."""

    def __init__(self, *, ttl_s: float, max_entries: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._done: OrderedDict[str, tuple[float, bytes, Answer]] = OrderedDict()
        self._flight: dict[str, tuple[bytes, asyncio.Future[Answer]]] = {}

    async def run(self, key: str, digest: bytes, produce: Callable[[], Awaitable[Answer]]) -> tuple[Answer, bool]:
        """``(answer, replayed)``: the remembered answer for ``key``, else ``produce()``'s."""
        now = time.monotonic()
        self._expire(now)
        found = self._done.get(key)
        if found is not None:
            _, first_digest, answer = found
            self._check(digest, first_digest)
            return answer, True
        flying = self._flight.get(key)
        if flying is not None:
            first_digest, fut = flying
            self._check(digest, first_digest)
            return await asyncio.shield(fut), True
        fut = asyncio.get_running_loop().create_future()
        self._flight[key] = (digest, fut)
        try:
            answer = await produce()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: a waiter may be gone
            raise
        finally:
            self._flight.pop(key, None)
        fut.set_result(answer)
        if 200 <= answer.status < 300 and self.ttl_s > 0:
            self._done[key] = (now, digest, answer)
            while len(self._done) > self.max_entries:
                self._done.popitem(last=False)
        return answer, False

    @staticmethod
    def _check(digest: bytes, first: bytes) -> None:
        if digest != first:
            raise Problem(422, "idempotency-key-reused", "this key was used for a different request")

    def _expire(self, now: float) -> None:
        while self._done:
            key, (at, _, _) = next(iter(self._done.items()))
            if now - at < self.ttl_s:
                return
            del self._done[key]

    def __len__(self) -> int:
        return len(self._done)
