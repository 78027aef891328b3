"""Recovery sweeper: re-enqueue what the store says is unfinished.

Covers a crash between commit and enqueue, a flushed Redis, a dead worker and lost delayed retries of
the in-process queue. It does not rely on Dramatiq's (random) maintenance: it runs at start-up and then
every ``interval_s``. Work is only picked up once untouched for ``grace_s``, so a live queue entry is
not doubled (and if it is, every step is idempotent). And only while the queue concerned has nothing
waiting: under a backlog, old-but-queued work is not orphaned, and re-enqueueing it would double the
backlog.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from engine.queue.actors import DELIVER_QUEUE, PROCESS_QUEUE
from engine.store.repository import Store

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(
        self,
        store: Store,
        enqueue_process: Callable[[list[str]], None],
        enqueue_deliver: Callable[[str, str, int], None],
        *,
        waiting: Callable[[str], int] = lambda _queue: 0,
        interval_s: float = 30,
        grace_s: float = 60,
    ) -> None:
        self.store = store
        self._process = enqueue_process
        self._deliver = enqueue_deliver
        self._waiting = waiting
        self.interval_s = interval_s
        self.grace_s = grace_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self, grace_s: float | None = None) -> tuple[int, int]:
        """One pass; returns (messages re-enqueued, deliveries re-enqueued)."""
        cutoff = time.time() - (self.grace_s if grace_s is None else grace_s)
        received, due = self.store.unfinished(older_than=cutoff)
        if received and self._waiting(PROCESS_QUEUE):
            received = []
        if due and self._waiting(DELIVER_QUEUE):
            due = []
        self.store.touch_messages(received)
        self.store.touch_deliveries(due)
        if received:
            self._process(received)
        for mid, dest in due:
            self._deliver(mid, dest, 0)
        if received or due:
            log.info("sweeper re-enqueued %d message(s) and %d deliver(ies)", len(received), len(due))
        return len(received), len(due)

    def start(self, *, initial_grace_s: float | None = None) -> None:
        """Sweep now (with ``initial_grace_s``, e.g. 0 when the queue is in-process and was lost), then
        periodically in a background thread."""
        self.sweep(initial_grace_s)
        self._thread = threading.Thread(target=self._loop, name="sweeper", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep()
            except Exception:
                log.exception("sweeper pass failed; will try again")

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
