"""Back-pressure: a bounded backlog per channel, so a source never accepts work it cannot finish.

A channel's **backlog** is its messages committed and not finished: ``received``, ``transformed``, and
``held`` (a DICOM study's instances waiting for assembly). Each channel has three bounds (``backlog:`` in
the engine's settings, which a channel's ``backlog:`` may change):

- at most ``slow_at``: the reply goes out as soon as the message is committed;
- over ``slow_at``: the message is committed first, then the reply waits, up to ``slow_ms``: the delay
  rises linearly from 0 at ``slow_at`` to ``slow_ms`` at ``refuse_at``, so a sender that waits for each
  reply (MLLP, DICOM, most webhook senders) slows down before anything is refused;
- at ``refuse_at``: :class:`~engine.errors.Busy` is raised **before** the commit: nothing is stored and
  the sender keeps the message. ``Busy`` is a ``StoreUnavailable``, so every source answers it through
  the seam it already has for "not committed": MLLP an AE (HL7 207, "application busy"), the webhook
  ``503 busy`` with ``Retry-After``, DICOM C-STORE ``0xA700`` (out of resources).

The counts live in memory: :meth:`Backlog.reserve` before a commit and :meth:`Backlog.settle` after it
(one lock, no store access); finishes are learnt by :meth:`Backlog.resync`, one ``GROUP BY`` over the
status index every ``resync_s`` (workers may run in other processes), never a count per message. Between
two resyncs a count only grows, so the bound errs towards refusing a little early, never towards admitting
past ``refuse_at``; a message in flight during a resync is counted on both sides of it rather than on
neither. Internal messages (a DICOM study assembled from instances already stored) are not bounded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from engine.config.model import Model
from engine.errors import Busy, ConfigError

if TYPE_CHECKING:
    from engine.config.channel import Channel

__all__ = ["Backlog", "BacklogOverride", "BacklogSettings", "Bounds", "channel_bounds"]

log = logging.getLogger(__name__)


class BacklogOverride(Model):
    """A channel's own backlog bounds: any of the engine's ``backlog:`` bounds (the rest stay the engine's)."""

    slow_at: int | None = Field(
        None, ge=0, description="Backlog over which replies are delayed (0: never); default: the engine's."
    )
    refuse_at: int | None = Field(
        None, ge=0, description="Backlog at which messages are refused uncommitted (0: never); default: the engine's."
    )
    slow_ms: float | None = Field(
        None, ge=0, le=60_000, description="Longest delay of a reply (milliseconds); default: the engine's."
    )


class BacklogSettings(Model):
    """Back-pressure: each channel's backlog (messages received, transformed or held, not finished) is
    bounded; past ``slow_at`` replies are delayed after the commit, at ``refuse_at`` messages are refused
    without being committed (MLLP AE, webhook 503, DICOM 0xA700), so nothing is lost."""

    slow_at: int = Field(5_000, ge=0, description="Backlog of a channel over which its replies are delayed (0: never).")
    refuse_at: int = Field(
        20_000,
        ge=0,
        description="Backlog of a channel at which its messages are refused without being committed: the "
        "sender keeps them and retries (0: never).",
    )
    slow_ms: float = Field(
        100,
        ge=0,
        le=60_000,
        description="Longest delay of a reply (milliseconds), reached at refuse_at; from slow_at it rises "
        "linearly from 0.",
    )
    resync_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often each channel's backlog is read again from the store (finished messages leave "
        "it then; one query over the status index).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> BacklogSettings:
        self.bounds()
        return self

    def bounds(self, override: BacklogOverride | None = None) -> Bounds:
        """The bounds of a channel with ``override`` (its ``backlog:``); ValueError when slow_at ≥ refuse_at."""
        o = override or BacklogOverride()
        b = Bounds(
            self.slow_at if o.slow_at is None else o.slow_at,
            self.refuse_at if o.refuse_at is None else o.refuse_at,
            (self.slow_ms if o.slow_ms is None else o.slow_ms) / 1000,
        )
        if b.slow_at and b.refuse_at and b.slow_at >= b.refuse_at:
            raise ValueError(f"backlog: slow_at ({b.slow_at}) must be below refuse_at ({b.refuse_at})")
        return b


@dataclass(frozen=True, slots=True)
class Bounds:
    """One channel's resolved bounds (0: none); ``slow_s`` the longest reply delay in seconds."""

    slow_at: int
    refuse_at: int
    slow_s: float

    def delay_s(self, backlog: int) -> float:
        """The reply delay at this backlog (counting the message just committed)."""
        if not self.slow_at or backlog <= self.slow_at or not self.slow_s:
            return 0.0
        if not self.refuse_at:
            return self.slow_s
        return self.slow_s * min(1.0, (backlog - self.slow_at) / (self.refuse_at - self.slow_at))


class _Count:
    """One channel's counts (under the Backlog's lock)."""

    __slots__ = ("bounds", "committed", "inflight", "settled")

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self.settled = 0  # committed and unfinished, as of the last resync plus commits since
        self.inflight = 0  # reserved, commit not yet settled
        self.committed = 0  # commits that entered the backlog, ever (a resync's "since")


class Backlog:
    """The channels' backlog counts and bounds (see the module docstring).

    ``read`` returns each channel's unfinished messages from the store (``Store.backlog_by_channel``);
    ``refused`` is told of each refusal (the refusal counter metric).
    """

    def __init__(
        self,
        bounds: dict[str, Bounds],
        read: Callable[[], dict[str, int]],
        *,
        resync_s: float = 1.0,
        refused: Callable[[str], None] | None = None,
    ) -> None:
        self._counts = {name: _Count(b) for name, b in bounds.items()}
        self._read = read
        self._refused = refused
        self.resync_s = resync_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the accept path --------------------------------------------------------------------------------

    def reserve(self, channel: str, n: int = 1) -> None:
        """Room for ``n`` messages about to be committed, or :class:`Busy` (nothing reserved). A batch larger
        than ``refuse_at`` itself is taken when the backlog is empty (else it could never be)."""
        c = self._counts.get(channel)
        if c is None:
            return
        with self._lock:
            refuse_at, backlog = c.bounds.refuse_at, c.settled + c.inflight
            if refuse_at and backlog + n > refuse_at and backlog:
                full = True
            else:
                full = False
                c.inflight += n
        if full:
            if self._refused is not None:
                self._refused(channel)
            raise Busy()

    def check(self, channel: str) -> None:
        """:class:`Busy` when the channel is full now (a source's early look, before work it would waste);
        :meth:`reserve` still decides."""
        c = self._counts.get(channel)
        if c is not None and c.bounds.refuse_at and c.settled + c.inflight >= c.bounds.refuse_at:
            if self._refused is not None:
                self._refused(channel)
            raise Busy()

    def settle(self, channel: str, reserved: int, entered: int) -> float:
        """After the commit (or its failure): ``entered`` of the ``reserved`` messages are now unfinished
        work. Returns how long the reply should wait (seconds; 0 below ``slow_at``)."""
        c = self._counts.get(channel)
        if c is None:
            return 0.0
        with self._lock:
            c.inflight -= reserved
            c.settled += entered
            c.committed += entered
            backlog = c.settled
        return c.bounds.delay_s(backlog) if entered else 0.0

    # -- counts -----------------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Each bounded channel's backlog as counted now (the gauge)."""
        with self._lock:
            return {name: c.settled for name, c in self._counts.items()}

    def use(self, bounds: dict[str, Bounds]) -> None:
        """New bounds after a channel reload: a channel keeps its counts; a new one is counted from the next
        resync (its messages, if any, from before a restart)."""
        with self._lock:
            for name, b in bounds.items():
                if name in self._counts:
                    self._counts[name].bounds = b
                else:
                    self._counts[name] = _Count(b)

    def resync(self) -> None:
        """Read every channel's backlog from the store again (finished messages leave the count here)."""
        with self._lock:
            before = {name: c.committed for name, c in self._counts.items()}
        found = self._read()
        with self._lock:
            for name, c in self._counts.items():
                # commits settled since ``before`` may or may not be in ``found``: counted, to err on the full side
                c.settled = found.get(name, 0) + c.committed - before.get(name, c.committed)

    def start(self) -> None:
        """Resync now, then every ``resync_s`` in a thread of its own, until :meth:`stop`."""
        self.resync()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="backlog-resync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.resync_s):
            try:
                self.resync()
            except Exception as exc:  # the store is down: keep the counts (they only err towards full)
                log.warning("backlog resync failed (%s); counts kept", type(exc).__name__)


def channel_bounds(settings: BacklogSettings, channels: Sequence[Channel]) -> dict[str, Bounds]:
    """Each channel's bounds (the engine's ``backlog:`` with the channel's); ConfigError names the channel."""
    out = {}
    for ch in channels:
        try:
            out[ch.name] = settings.bounds(ch.backlog)
        except ValueError as exc:
            raise ConfigError(f"channel {ch.name}: {exc}") from None
    return out
