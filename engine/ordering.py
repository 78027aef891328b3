"""Delivery ordering: which lane a message belongs to, and whether its delivery may go now.

A *lane* is a set of messages that must reach each target in arrival (message id) order: one lane per
patient (``ordering: per_patient``; the same lane in every channel, so an ADT and a lab feed delivering to
the same EHR keep one patient's updates in order), one per channel (``strict``), or none (``''``). The
lane is fixed when the message is accepted, from what the source read (for HL7 v2, PID-3), so ordering
never waits for a mapping to say who the patient is. Lane names are keyed hashes: no identifier is stored.

The gate (:class:`Gate`): a delivery may go when no earlier message of its lane is still unprocessed, or has
a delivery to the same target that is pending, waiting, retrying (or dead, when the channel holds on a dead
letter). Otherwise it is parked as ``waiting``; whoever finishes the message ahead of it wakes the first
waiting delivery behind it (:meth:`Gate.wake`). There is no lock between the two sides: the parking side
re-checks the gate after parking and the waking side looks for waiters after its own change is committed,
so one of them always sees the other (both release by a conditional ``waiting → pending``; only one wins).
The recovery sweeper re-checks waiting deliveries left untouched, as a backstop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from engine.store import Store

if TYPE_CHECKING:
    from engine.config.channel import Channel


def lane(channel: Channel, patient: str, pseudonym: Callable[[str], str]) -> str:
    """The lane of a message of ``channel`` about ``patient`` (``''`` when unknown: unordered), named by
    the store's keyed hash (``Store.pseudonym``) so the stored lane does not give the identifier away."""
    mode = channel.ordering.mode
    if mode == "per_patient":
        return "p:" + pseudonym("patient\x1f" + patient) if patient else ""
    if mode == "strict":
        return "c:" + pseudonym("channel\x1f" + channel.name)
    return ""


class Gate:
    """The ordering gate over the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def may_send(self, channel: Channel, message_id: str, destination: str, lane: str, target: str) -> bool:
        """True when the delivery may go now; else it is parked as waiting (and someone else will wake it)."""
        if not lane:
            return True
        hold = channel.ordering.on_dead == "hold"
        if not self.store.blocked(message_id, lane, target, hold_dead=hold):
            return True
        if not self.store.hold(message_id, destination):
            return False  # finished or dead meanwhile: nothing to send
        if self.store.blocked(message_id, lane, target, hold_dead=hold):
            return False
        # The message ahead finished between the two checks: take the delivery back, unless its waker did.
        return self.store.release(message_id, destination)

    def waiting(self, lanes: Iterable[str]) -> set[str]:
        """Which of ``lanes`` hold a waiting delivery: a batch wakes only in those (one query for the batch;
        asked after the batch's change is committed, like :meth:`wake`)."""
        return self.store.lanes_waiting(lanes)

    def wake(self, lane: str, message_id: str, target: str | None = None) -> list[tuple[str, str]]:
        """``message_id`` no longer holds its lane for ``target`` (None: for any target): release the first
        waiting delivery behind it; the caller queues what is returned."""
        if not lane:
            return []
        return self.store.wake_after(lane, message_id, target)
