"""``interlink status``: what flows and what waits, per channel, as a live table on a terminal (redrawn every
``--interval`` seconds until Ctrl-C) or one snapshot (not a terminal, or ``--once``).

Per channel: its state, the counters received / filtered / queued / sent / errored / dead, the rate in and out
over the last interval (messages received and sent per second between two samples; none in a snapshot), the
messages waiting (to be processed and to each destination) and the age of the oldest, and its active alerts;
below, every queue with something waiting and every active alert (channel, kind, rule, state, age).

The numbers have one source, the admin API's (:func:`sample`):

- ``INTERLINK_TOKEN`` set (a viewer token is enough) and the engine's API answering
  (``engine.cli_actions.Via``): ``GET /api/v1/channels``, ``/queues`` and ``/alerts?state=active``; the
  state is the engine's (running, paused, stopped). A sample the API cannot give (the engine stopped
  meanwhile, or answered an error) is taken from the store; a refused token ends the command.
- otherwise the store, through the functions those routes call (``engine.api.admin.channels.table``,
  ``queues.table``, ``AlertBook.listing``) over the channel files on disk; the state is ``store only``, and a
  channel with stored messages but no file is listed as ``not configured``.

Metadata only: names, states, counts, ages, alert kinds and rules; never message content.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer

from engine.cli import ConfigOpt, _settings, _store, app
from engine.errors import ConfigError

if TYPE_CHECKING:
    import httpx
    from rich.console import Console, RenderableType

    from engine.settings import Settings
    from engine.store import Store

__all__ = ["Sample", "render", "sample", "watch"]

STORE_ONLY = "store only"
NOT_CONFIGURED = "not configured"
COLUMNS = ("received", "filtered", "queued", "sent", "errored", "dead")


@dataclass(frozen=True)
class Sample:
    """One reading: the admin API's channel, queue and active-alert rows, and where they came from."""

    at: float  # time.monotonic() when taken
    source: str  # "engine at <url>" or "store"
    channels: list[dict[str, Any]]
    queues: list[dict[str, Any]]
    alerts: list[dict[str, Any]] = field(default_factory=list)


def sample(settings: Settings, store: Store, api: httpx.Client | None) -> Sample:
    """The channel table, queues and active alerts from the engine's API when ``api`` answers, else from the
    store; a refused token is a :class:`PermissionError`."""
    if api is not None:
        import httpx

        try:
            got = [api.get(path) for path in ("/api/v1/channels", "/api/v1/queues", "/api/v1/alerts?state=active")]
        except httpx.TransportError:
            got = []
        for r in got:
            if r.status_code in (401, 403):
                raise PermissionError(f"the engine's API refused the token ({r.status_code})")
        if got and all(r.status_code == 200 for r in got):  # else (an engine stopping: 503) the store's
            channels, queues, alerts = (r.json() for r in got)
            return Sample(time.monotonic(), f"engine at {api.base_url}", channels["channels"], queues["queues"],
                          alerts["items"])  # fmt: skip
    return _from_store(settings, store)


def _from_store(settings: Settings, store: Store) -> Sample:
    from engine.alerts.book import AlertBook
    from engine.alerts.evaluator import alert_json
    from engine.api.admin import channels as channel_table
    from engine.api.admin import queues as queue_table
    from engine.config.channel import Channel, load_channels

    configured: list[Channel] = []
    if settings.channels_dir.is_dir():
        try:
            configured = load_channels([settings.channels_dir])
        except ConfigError:
            typer.echo(f"channel files in {settings.channels_dir} not loaded (see interlink check)", err=True)
    stored = sorted({channel for channel, _ in store.status_counts()} - {c.name for c in configured})
    states = [(c.name, c.source.type, STORE_ONLY) for c in configured] + [(n, "", NOT_CONFIGURED) for n in stored]
    alerts = [alert_json(row) for row in AlertBook(store).listing(state="active", limit=100)]
    return Sample(time.monotonic(), "store", channel_table.table(store, states, configured),
                  queue_table.table(store, configured), alerts)  # fmt: skip


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _iso_age(iso: str | None, now: float) -> float | None:
    from datetime import datetime

    return None if not iso else max(0.0, now - datetime.fromisoformat(iso).timestamp())


def render(now: Sample, before: Sample | None = None) -> RenderableType:
    """The status tables; rates when an earlier sample is given."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    waiting: dict[str, tuple[int, float | None]] = {}
    for q in now.queues:
        depth, oldest = waiting.get(q["channel"], (0, None))
        age = q["oldest_age_s"]
        waiting[q["channel"]] = (depth + q["depth"], oldest if age is None or (oldest or 0) >= age else age)
    alerts: dict[str, int] = {}
    for a in now.alerts:
        alerts[a["channel"]] = alerts.get(a["channel"], 0) + 1
    previous = {c["name"]: c["counters"] for c in before.channels} if before else {}
    dt = now.at - before.at if before else 0.0

    def rate(channel: dict[str, Any], counter: str) -> str:
        old = previous.get(channel["name"])
        if old is None or dt <= 0:
            return "-"
        return f"{max(0, channel['counters'][counter] - old[counter]) / dt:.1f}"

    table = Table(box=box.SIMPLE_HEAD, title=f"Interlink channels ({now.source})", title_justify="left")
    for name in ("channel", "state", *COLUMNS, "in/s", "out/s", "waiting", "oldest", "alerts"):
        table.add_column(name, justify="left" if name in ("channel", "state") else "right", no_wrap=True)
    for c in now.channels:
        depth, oldest = waiting.get(c["name"], (0, None))
        table.add_row(c["name"], c["state"], *(str(c["counters"][k]) for k in COLUMNS), rate(c, "received"),
                      rate(c, "sent"), str(depth), _age(oldest), str(alerts.get(c["name"], 0)))  # fmt: skip
    parts: list[RenderableType] = [table]
    queued = [q for q in now.queues if q["depth"]]
    if queued:
        qt = Table(box=box.SIMPLE_HEAD, title="Waiting", title_justify="left")
        for name in ("channel", "destination", "depth", "by status", "oldest"):
            qt.add_column(name, justify="right" if name == "depth" else "left", no_wrap=True)
        for q in queued:
            by = ", ".join(f"{k} {v}" for k, v in sorted(q.get("by_status", {}).items()))
            qt.add_row(q["channel"], q["destination"] or "(to process)", str(q["depth"]), by, _age(q["oldest_age_s"]))
        parts.append(qt)
    if now.alerts:
        at = time.time()
        at_ = Table(box=box.SIMPLE_HEAD, title="Active alerts", title_justify="left")
        for name in ("channel", "kind", "rule", "state", "raised"):
            at_.add_column(name, no_wrap=True)
        for a in now.alerts:
            at_.add_row(a["channel"], a["kind"], a["rule"], a["state"], _age(_iso_age(a["raised_at"], at)) + " ago")
        parts.append(at_)
    held = sum(q.get("by_status", {}).get("waiting", 0) for q in now.queues)
    received = sum(c["counters"]["received"] for c in now.channels)
    parts.append(Text(f"{received} message(s) stored; held in order behind an earlier message: {held}"))
    return Group(*parts)


def watch(
    read: Callable[[], Sample],
    console: Console,
    interval_s: float,
    *,
    frames: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Redraw the tables in place every ``interval_s`` (``frames`` of them, else until interrupted)."""
    from rich.live import Live

    before: Sample | None = None
    with Live(console=console, auto_refresh=False, transient=False) as live:
        for _ in _count(frames):
            now = read()
            live.update(render(now, before), refresh=True)
            before = now
            sleep(interval_s)


def _count(frames: int | None) -> Iterable[int]:
    n = 0
    while frames is None or n < frames:
        yield n
        n += 1


@app.command()
def status(
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit (also when not a terminal).")] = (
        False
    ),
    interval_s: Annotated[float, typer.Option(min=0.2, help="Seconds between redraws of the live table.")] = 1.0,
    config: ConfigOpt = None,
) -> None:
    """Per channel: state, counters, rates, what waits and for how long, active alerts; live on a terminal.
    Through the running engine's API with INTERLINK_TOKEN (any role), else from the store."""
    from rich.console import Console

    from engine.cli_actions import Via

    settings, store = _settings(config), _store(config)
    console = Console()
    with Via(settings, store) as via:

        def read() -> Sample:
            try:
                return sample(settings, store, via.api)
            except PermissionError as exc:
                typer.echo(str(exc), err=True)
                raise typer.Exit(1) from None

        if once or not console.is_terminal:
            now = read()
            if now.source == "store" and not any(c["counters"]["received"] for c in now.channels) and not now.alerts:
                typer.echo("no messages stored")
                return
            Console(width=max(console.width, 160)).print(render(now))
            return
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the view, the last frame stays
            watch(read, console, interval_s)
