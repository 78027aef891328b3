"""engine.queue.coalesce: ids handed over close together go to the queue as one message."""

from __future__ import annotations

import threading
import time

from engine.queue.coalesce import Coalescer


def test_ids_within_the_linger_go_as_one_batch_and_a_full_one_at_once() -> None:
    sent: list[list[str]] = []
    arrived = threading.Event()

    def send(ids: list[str]) -> None:
        sent.append(ids)
        arrived.set()

    c = Coalescer(send, max_ids=4, linger_s=0.2)
    try:
        c.add(["a"])
        c.add(["b", "c"])
        assert sent == []  # held for the linger
        assert arrived.wait(5)
        assert sent == [["a", "b", "c"]]
        arrived.clear()
        c.add(["d", "e", "f", "g", "h"])  # a full batch goes in the caller's thread, the rest lingers
        assert sent[1] == ["d", "e", "f", "g"]
        assert arrived.wait(5)
        time.sleep(0.25)
        assert sent == [["a", "b", "c"], ["d", "e", "f", "g"], ["h"]]
    finally:
        c.close()


def test_close_sends_what_is_held_and_later_ids_go_at_once() -> None:
    sent: list[list[str]] = []
    c = Coalescer(sent.append, max_ids=20, linger_s=60)
    c.add(["a", "b"])
    c.close()
    assert sent == [["a", "b"]]
    c.add(["c"])
    assert sent == [["a", "b"], ["c"]]


def test_a_failed_send_is_logged_and_the_next_batch_still_goes() -> None:
    sent: list[list[str]] = []

    def send(ids: list[str]) -> None:
        if ids == ["bad"]:
            raise ConnectionError("queue down")
        sent.append(ids)

    c = Coalescer(send, max_ids=20, linger_s=0.01)
    try:
        c.add(["bad"])
        time.sleep(0.1)
        c.add(["good"])
        time.sleep(0.1)
        assert sent == [["good"]]
    finally:
        c.close()
