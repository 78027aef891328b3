"""Coalescing of message ids into fewer queue messages.

On a shared queue every ``process`` message costs a broker round trip to send, one to fetch and one to
acknowledge, and the worker's fixed work per batch (a read, a claim transaction, an attempts transaction);
a group commit on PostgreSQL under 4 senders holds ~1 message. :class:`Coalescer` sends the ids handed to
it within ``linger_s`` of the first as one message (at most ``max_ids``; a full batch goes at once).
What it holds is not yet queued: a crash loses at most ``linger_s`` worth of ids from the queue, and the
recovery sweeper finds them in the store like any committed message that was not queued.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Coalescer:
    """Hands ``send`` lists of ids gathered over ``linger_s`` (at most ``max_ids`` each); thread-safe."""

    def __init__(self, send: Callable[[list[str]], None], *, max_ids: int, linger_s: float) -> None:
        self._send = send
        self._max = max_ids
        self._linger_s = linger_s
        self._ids: list[str] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="queue-coalescer", daemon=True)
        self._thread.start()

    def add(self, ids: list[str]) -> None:
        """Queue ``ids`` within ``linger_s`` (full batches at once, in the caller's thread)."""
        full: list[list[str]] = []
        with self._cv:
            if self._closed:
                full = [ids]
            else:
                self._ids.extend(ids)
                while len(self._ids) >= self._max:
                    full.append(self._ids[: self._max])
                    del self._ids[: self._max]
                if self._ids:
                    self._cv.notify()
        for batch in full:
            self._send(batch)

    def close(self) -> None:
        """Send what is held and stop."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._ids and not self._closed:
                    self._cv.wait()
                deadline = time.monotonic() + self._linger_s
                while self._ids and not self._closed and (left := deadline - time.monotonic()) > 0:
                    self._cv.wait(left)
                batch, self._ids = self._ids, []
                closed = self._closed
            if batch:
                try:
                    self._send(batch)
                except Exception:  # the recovery sweeper re-enqueues what the store says is unfinished
                    log.exception("enqueue of %d message id(s) failed; the sweeper will pick them up", len(batch))
            if closed:
                return
