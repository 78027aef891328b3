"""The operator actions of the ``interlink`` command: ``dlq list|replay|discard``, ``reprocess`` (also
``messages reprocess``), ``redeliver`` and ``diff``: the admin API's operations for people on a terminal,
with the same selection (``engine.store.operations.Selection``) and a dry run that counts first.

How an action reaches the engine (``Via``), decided per command:

1. ``INTERLINK_TOKEN`` set and the engine's HTTP server (``http_host``:``http_port``) answering: the action
   is the admin API's, under that token (its role checked, audited under its name), and the running engine
   enqueues at once. With an in-process queue (``memory://``) this is the only way to reach its queue.
2. Otherwise, on the store directly, audited as the local user (token id ''): with a shared queue
   (``redis://``, ``amqp://``) what was changed is enqueued on it at once, whoever runs the workers; with
   ``memory://`` it is marked for the running engine's sweeper, which takes it within ``sweeper.interval_s``
   (the command says so). A token set but no API answering falls back to this, with a note.

Listings print ids, names, statuses, counts and paths, never message content; ``diff --show-values``
prints the old and new values (content: audited).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from engine.cli import (
    ConfigOpt,
    _audit,
    _fail,
    _message_id,
    _progress,
    _settings,
    _store,
    app,
    dlq_app,
    engine_url,
    messages_app,
)
from engine.store import operations as ops
from engine.store.operations import Selection

if TYPE_CHECKING:
    import httpx

    from engine.queue.actors import Actors
    from engine.settings import Settings
    from engine.store import Store

__all__ = ["Via"]

T = TypeVar("T")

Channel = Annotated[str | None, typer.Option(help="Only this channel.")]
Destination = Annotated[str | None, typer.Option(help="Only this destination.")]
Type = Annotated[str | None, typer.Option("--type", help="Only this message type (ORU^R01; ORU: every ORU event).")]
Since = Annotated[str | None, typer.Option(help="Received at or after: ISO time or an age (30m, 2h, 7d).")]
Until = Annotated[str | None, typer.Option(help="Received before: ISO time or an age.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Only count what would be taken.")]
All = Annotated[bool, typer.Option("--all", help="Take everything the filters match (none: everything).")]


def _selection(ids: Iterable[str] = (), **fields: Any) -> Selection:
    from pydantic import ValidationError

    try:
        return Selection.model_validate({"ids": list(ids), **{k: v for k, v in fields.items() if v is not None}})
    except ValidationError as exc:
        _fail("; ".join(f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()))


def _chosen(store: Store, ids: list[str], **fields: Any) -> Selection:
    """The selection of a command's ids (whole or unique prefix) and filter options; fails when it names
    nothing."""
    sel = _selection([_message_id(store, i) for i in ids], **fields)
    if not sel.chooses:
        _fail("name message ids, a filter (--channel, --type, --since …) or pass --all")
    return sel


class Via:
    """How this command reaches the running engine (see the module docstring)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.shared_queue = not settings.queue_url.startswith("memory://")
        self.api: httpx.Client | None = self._api()
        self._actors: Actors | None = None

    def _api(self) -> httpx.Client | None:
        import httpx

        token = os.environ.get("INTERLINK_TOKEN", "").strip()
        s = self.settings
        if not token or not s.http_port:
            return None
        verify: Any = True
        if s.http_tls is not None:  # the server's own certificate (or chain) as the one to trust
            import ssl

            verify = ssl.create_default_context(cafile=str(s.http_tls.cert_file))
        client = httpx.Client(base_url=engine_url(s), verify=verify, timeout=600,
                              headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        try:
            client.get("/healthz", timeout=3)
        except httpx.TransportError as exc:
            client.close()
            typer.echo(f"engine API at {client.base_url} not reachable ({type(exc).__name__}): acting on the store "
                       "directly", err=True)  # fmt: skip
            return None
        return client

    def call(self, path: str, body: dict[str, Any], *, dry_run: bool = False) -> tuple[int, dict[str, Any]]:
        """An admin API POST: its status and JSON answer (a problem's, when refused)."""
        assert self.api is not None
        r = self.api.post(path, json=body, params={"dry_run": "true"} if dry_run else None)
        try:
            answer = r.json()
        except ValueError:
            answer = {}
        return r.status_code, answer if isinstance(answer, dict) else {}

    def post(self, path: str, body: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """An admin API call; a refusal is printed as the problem's status and detail (exit 1)."""
        status, answer = self.call(path, body, dry_run=dry_run)
        if status >= 400:
            _fail(_problem(status, answer))
        return answer

    def __enter__(self) -> Via:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.api is not None:
            self.api.close()
        if self._actors is not None:
            self._actors.broker.close()

    @property
    def for_sweeper(self) -> bool:
        """The store is changed for the running engine's sweeper (nobody here can reach its queue)."""
        return not self.shared_queue

    def enqueue_deliver(self, pairs: Iterable[tuple[str, str]]) -> None:
        if self.shared_queue:
            actors = self._enqueuer()
            for m, d in pairs:
                actors.enqueue_deliver(m, d, 0)

    def enqueue_process(self, ids: list[str]) -> None:
        if self.shared_queue and ids:
            self._enqueuer().enqueue_process(ids)

    def _enqueuer(self) -> Actors:
        """Actors on the shared queue, for enqueueing only (workers elsewhere run them)."""
        if self._actors is None:
            from engine.pipeline import Pipeline
            from engine.queue.actors import Actors
            from engine.queue.broker import make_broker

            broker = make_broker(self.settings.queue_url, namespace=self.settings.queue_namespace)
            self._actors = Actors(broker, Pipeline(self.store, None, []))  # type: ignore[arg-type]
        return self._actors

    def handover(self) -> str:
        if self.api is not None:
            return "queued by the running engine"
        if self.shared_queue:
            return "enqueued"
        return (f"marked for the running engine, which takes them within {self.settings.sweeper.interval_s:g} s "
                "(set INTERLINK_TOKEN to act through its API at once)")  # fmt: skip


def _problem(status: int, answer: dict[str, Any]) -> str:
    return f"{status} {answer.get('title', '')}: {answer.get('detail', answer.get('type', ''))}"


def _ids(pairs: list[tuple[str, str]]) -> list[str]:
    return [m for m, _ in pairs]


def _body(sel: Selection, **extra: Any) -> dict[str, Any]:
    return {**sel.model_dump(mode="json", exclude_defaults=True), **extra}


def _batches(batches: Iterator[list[T]], total: int, label: str) -> Iterator[list[T]]:
    """The batches of an action with a progress bar on a terminal (stderr)."""
    with _progress(label, total) as advance:
        for batch in batches:
            yield batch
            advance(len(batch))


def _perform(
    via: Via, sel: Selection, *, path: str, body: dict[str, Any], answer: str, dry_run: bool, count: Callable[[], int],
    batches: Callable[[], Iterator[list[T]]], enqueue: Callable[[list[T]], None], ids: Callable[[list[T]], list[str]],
    action: str,
) -> tuple[int, list[str]]:  # fmt: skip
    """One action, through the API or on the store: (how many, the message ids taken). A dry run counts only.

    On the store the batches are enqueued (``enqueue``) and audited as the local user, one row per batch, with
    a progress bar on a terminal."""
    if via.api is not None:
        out = via.post(path, body, dry_run=dry_run)
        if dry_run:
            return int(out["count"]), []
        taken = out.get("message_ids") or [d["message_id"] for d in out.get("deliveries", [])]
        return int(out[answer]), list(taken)
    total = count()
    if dry_run:
        return total, []
    done: list[str] = []
    for batch in _batches(batches(), total, action.split(".")[-1]):
        if batch:
            enqueue(batch)
            _audit(via.store, action, list(dict.fromkeys(ids(batch))), sel.describe())
        done.extend(ids(batch))
    return len(done), done


# -- dead letters ------------------------------------------------------------------------------------------


@dlq_app.command("list")
def dlq_list(
    channel: Channel = None,
    destination: Destination = None,
    message_type: Type = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, typer.Option(help="How many (oldest first).")] = 100,
    config: ConfigOpt = None,
) -> None:
    """List dead deliveries with their last error (ids, names and codes: no message content)."""
    store = _store(config)
    sel = _selection(channel=channel, destination=destination, message_type=message_type, since=since, until=until)
    rows = ops.dead_letters(store, sel, limit=limit)
    for r in rows:
        held = store.held_behind(r.message_id)
        typer.echo(
            f"{r.message_id}  {r.channel:<14} → {r.destination:<10} {r.attempts} attempt(s)  "
            f"{r.last_status_code or ''} {r.last_error or ''}"
            + (f"  [holding {held} later message(s) of the patient: replay or discard it]" if held else "")
        )
    typer.echo(f"{len(rows)} dead letter(s)" + (f" (first {limit}: dlq replay --dry-run counts all)"
                                                  if len(rows) == limit else ""))  # fmt: skip


@dlq_app.command("replay")
def dlq_replay(
    message_ids: Annotated[list[str] | None, typer.Argument(help="Messages (ids or unique prefixes).")] = None,
    destination: Destination = None,
    channel: Channel = None,
    message_type: Type = None,
    since: Since = None,
    until: Until = None,
    all_: All = False,
    dry_run: DryRun = False,
    config: ConfigOpt = None,
) -> None:
    """Send dead letters again (the stored bundle; attempts restart)."""
    settings, store = _settings(config), _store(config)
    sel = _chosen(store, message_ids or [], destination=destination, channel=channel, message_type=message_type,
                  since=since, until=until, all=all_)  # fmt: skip
    with Via(settings, store) as via:
        n, _ = _perform(via, sel, path="/api/v1/deadletters/replay", body=_body(sel), answer="replayed",
                        dry_run=dry_run, count=lambda: ops.count_dead(store, sel),
                        batches=lambda: ops.replay_dead(store, sel, for_sweeper=via.for_sweeper),
                        enqueue=via.enqueue_deliver, ids=_ids, action="deadletter.replay")  # fmt: skip
        if dry_run:
            typer.echo(f"{n} dead delivery(ies) would be replayed (dry run: nothing changed)")
        else:
            typer.echo(f"{n} delivery(ies) replayed: {via.handover()}")


@dlq_app.command("discard")
def dlq_discard(
    message_ids: Annotated[list[str] | None, typer.Argument(help="Messages (ids or unique prefixes).")] = None,
    reason: Annotated[str, typer.Option(help="Why (kept with the delivery; write no patient data).")] = "",
    destination: Destination = None,
    channel: Channel = None,
    message_type: Type = None,
    since: Since = None,
    until: Until = None,
    all_: All = False,
    dry_run: DryRun = False,
    config: ConfigOpt = None,
) -> None:
    """Give up on dead letters for good: they no longer hold their patients' later messages (ordering)."""
    if not reason.strip():
        _fail("--reason is required: say why (no patient data)")
    settings, store = _settings(config), _store(config)
    sel = _chosen(store, message_ids or [], destination=destination, channel=channel, message_type=message_type,
                  since=since, until=until, all=all_)  # fmt: skip
    with Via(settings, store) as via:

        def release(batch: list[tuple[str, str]]) -> None:
            via.enqueue_deliver(ops.wake_behind(store, batch) if via.shared_queue else [])

        n, _ = _perform(via, sel, path="/api/v1/deadletters/discard", body=_body(sel, reason=reason),
                        answer="discarded", dry_run=dry_run, count=lambda: ops.count_dead(store, sel),
                        batches=lambda: ops.discard_dead(store, sel, reason.strip()), enqueue=release, ids=_ids,
                        action="deadletter.discard")  # fmt: skip
        if dry_run:
            typer.echo(f"{n} dead delivery(ies) would be discarded (dry run: nothing changed)")
        elif not n:
            _fail("no dead delivery matches")
        elif via.api is not None or via.shared_queue:
            typer.echo(f"{n} delivery(ies) discarded; what waited behind them is queued")
        else:
            typer.echo(f"{n} delivery(ies) discarded; what waited behind them goes out within "
                       f"{settings.sweeper.interval_s:g} s")  # fmt: skip


# -- reprocess, redeliver ----------------------------------------------------------------------------------


@app.command("reprocess")
def reprocess(
    message_ids: Annotated[list[str] | None, typer.Argument(help="Messages (ids or unique prefixes).")] = None,
    channel: Channel = None,
    status: Annotated[
        str | None, typer.Option(help="Only this status (default: error and dead; also filtered, sent).")
    ] = None,
    destination: Destination = None,
    message_type: Type = None,
    since: Since = None,
    until: Until = None,
    all_: All = False,
    dry_run: DryRun = False,
    config: ConfigOpt = None,
) -> None:
    """Run messages again from their raw content with the engine's current mappings (e.g. after a fix)."""
    settings, store = _settings(config), _store(config)
    sel = _chosen(store, message_ids or [], channel=channel, status=status, destination=destination,
                  message_type=message_type, since=since, until=until, all=all_)  # fmt: skip
    with Via(settings, store) as via:
        try:
            n, done = _perform(via, sel, path="/api/v1/messages/reprocess", body=_body(sel), answer="reprocessed",
                               dry_run=dry_run, count=lambda: ops.count_reprocess(store, sel),
                               batches=lambda: ops.reprocess(store, sel, for_sweeper=via.for_sweeper),
                               enqueue=via.enqueue_process, ids=list, action="message.reprocess")  # fmt: skip
        except ValueError as exc:  # a status that cannot be reprocessed
            _fail(f"--{exc}")
        if dry_run:
            typer.echo(f"{n} message(s) would be reprocessed (dry run: nothing changed)")
            return
        typer.echo(f"{n} message(s) {via.handover()}")
        skipped = sorted(set(sel.ids) - set(done))
        if skipped and n < 1000:  # (an API answer lists the first 1000 ids)
            _fail(f"not in error or dead (or not in --status, or not matching the filters): {', '.join(skipped)}")


messages_app.command("reprocess", help="Same as `interlink reprocess`.")(reprocess)


@app.command()
def redeliver(
    message_ids: Annotated[list[str], typer.Argument(help="Sent (or duplicate) messages: ids or unique prefixes.")],
    destination: Annotated[str, typer.Option(help="The destination of their channel to deliver them to.")],
    config: ConfigOpt = None,
) -> None:
    """Deliver messages' stored bundles again, on purpose, to one destination of their channel (e.g. one added
    since); a duplicate goes out as its original. One line per message; exit 1 when any was refused."""
    settings, store = _settings(config), _store(config)
    ids = [_message_id(store, m) for m in message_ids]
    refused = 0
    with Via(settings, store) as via:
        for mid in ids:
            line = (
                _redeliver_api(via, mid, destination) if via.api is not None else _redeliver_here(via, mid, destination)
            )
            refused += line.startswith("refused")
            typer.echo(f"{mid}: {line}")
        if via.api is None and not via.shared_queue and refused < len(ids):
            typer.echo("the running engine must have the destination: reload its channels if it was added since it "
                       "started", err=True)  # fmt: skip
    if refused:
        raise typer.Exit(1)


def _redeliver_api(via: Via, mid: str, destination: str) -> str:
    status, answer = via.call(f"/api/v1/messages/{mid}/redeliver", {"destination": destination})
    if status >= 400:
        return f"refused: {_problem(status, answer)}"
    original = f" as its original {answer['message_id']}" if answer.get("duplicate_of_it") else ""
    return f"→ {destination}{original}: {via.handover()}"


def _redeliver_here(via: Via, mid: str, destination: str) -> str:
    from engine.config.channel import load_channels
    from engine.errors import ConfigError

    row = via.store.message(mid)
    assert row is not None
    try:
        channels = load_channels([via.settings.channels_dir])
        target = ops.destination_target(channels, row.channel, destination)
        done = ops.redeliver(via.store, mid, destination, target=target, for_sweeper=via.for_sweeper)
    except ConfigError as exc:
        _fail(str(exc))
    except ops.Refused as exc:
        return f"refused: {exc.detail}"
    via.enqueue_deliver([(done.message_id, done.destination)])
    _audit(via.store, "message.redeliver", [done.message_id, *([done.duplicate] if done.duplicate else [])],
           destination)  # fmt: skip
    original = f" as its original {done.message_id}" if done.duplicate else ""
    return f"→ {destination}{original}: {via.handover()}"


# -- the mapping diff --------------------------------------------------------------------------------------


@app.command()
def diff(
    channel: Channel = None,
    status: Annotated[str | None, typer.Option(help="Only this status (default: every mapped one).")] = None,
    message_type: Type = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, typer.Option(min=1, help="How many stored messages (newest first).")] = 100,
    show_values: Annotated[
        bool, typer.Option("--show-values", help="Also print each change's old and new value (PHI!).")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Run stored messages through the mappings on disk now and summarise what FHIR would change: counts per
    resource type and path (values only with --show-values). Changes nothing."""
    from engine.errors import ConfigError
    from engine.transform.diff import Replay, summarize

    settings, store = _settings(config), _store(config)
    sel = _selection(channel=channel, status=status, message_type=message_type, since=since, until=until, all=True)
    stored = ops.for_diff(store, sel, limit=limit)
    try:
        replay = Replay(settings)
    except ConfigError as exc:
        _fail(str(exc))
    diffs = []
    for batch in _batches(iter([stored[i : i + 20] for i in range(0, len(stored), 20)]), len(stored), "map"):
        diffs.extend(replay.diff(batch))
    changed = [d for d in diffs if d.changed]
    for d in changed:
        typer.echo(f"{d.message_id}  {d.channel:<14} {d.message_type:<9} {d.before} → {d.now}"
                   + (f"  {d.error}" if d.error and d.now != "transformed" else ""))  # fmt: skip
        if show_values:
            for r in d.resources:
                typer.echo(f"  {r.resource_type} {r.key} {r.op}")
                for c in r.changes:
                    typer.echo(f"    {c.op:<8} {c.path}: {_value(c.old)} → {_value(c.new)}")
    if show_values and changed:
        _audit(store, "message.diff", [d.message_id for d in changed], sel.describe())
    counts = summarize(diffs)
    if counts:
        typer.echo("changes per resource type and path:")
        for (rtype, path, op), n in sorted(counts.items()):
            typer.echo(f"  {rtype:<20} {path:<40} {op:<8} {n}")
    typer.echo(f"{len(changed)} of {len(diffs)} message(s) would change")


def _value(v: Any) -> str:
    import orjson

    return "-" if v is None else orjson.dumps(v).decode()
