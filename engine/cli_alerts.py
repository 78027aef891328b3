"""``interlink alerts list|ack``: the alerts of ``GET /api/v1/alerts`` and ``POST /api/v1/alerts/{id}/ack``
(engine/alerts/) for people on a terminal, on the store directly: an acknowledgement is a state change in the
store, so the running engine's evaluator sees it at its next pass (no reminder, no escalation); it is audited
as the local user (token id '', action ``alert.ack``), like every store-direct CLI action.

The listing prints ids, times, channels, kinds, rules, states, who acknowledged and a critical result's
message id: never message content. Ids may be given by a unique prefix (8 characters or more).
"""

from __future__ import annotations

import getpass
from typing import Annotated

import typer

from engine.alerts.book import AlertBook
from engine.cli import ConfigOpt, _audit, _fail, _store, _when, app
from engine.store.schema import AlertState

__all__ = ["alerts_app"]

alerts_app = typer.Typer(no_args_is_help=True, help="Channel alerts and critical results (engine/alerts/).")
app.add_typer(alerts_app, name="alerts")

STATES = ("active", *(s.value for s in AlertState), "all")


@alerts_app.command("list")
def alerts_list(
    state: Annotated[str, typer.Option(help=f"One of {', '.join(STATES)} (active: what needs attention).")] = (
        "active"
    ),
    channel: Annotated[str | None, typer.Option(help="Only this channel.")] = None,
    kind: Annotated[str | None, typer.Option(help="silence, error_rate, dead_letters, queue_age or critical.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many, newest first.")] = 50,
    config: ConfigOpt = None,
) -> None:
    """List alerts, newest first (metadata only)."""
    if state not in STATES:
        _fail(f"--state must be one of {', '.join(STATES)}")
    rows = AlertBook(_store(config)).listing(
        state=None if state == "all" else state, channel=channel, kind=kind, limit=limit
    )
    for r in rows:
        acked = f"  acked by {r.acked_by} {_when(r.acked_at)}" if r.acked_at else ""
        message = f"  message {r.message_id}" if r.message_id else ""
        typer.echo(f"{r.id}  {_when(r.raised_at)}  {r.channel:<14} {r.kind:<12} {r.rule:<16} {r.state:<12}"
                   f"{acked}{message}")  # fmt: skip
    if not rows:
        typer.echo("no alerts", err=True)


@alerts_app.command("ack")
def alerts_ack(
    alert_id: Annotated[str, typer.Argument(help="The alert's id, or a unique prefix of it (8 characters or more).")],
    config: ConfigOpt = None,
) -> None:
    """Acknowledge an alert: no reminder and no escalation follow (audited)."""
    store = _store(config)
    book = AlertBook(store)
    found = book.ids_starting(alert_id) if len(alert_id) >= 8 else []
    if len(found) != 1:
        _fail(f"more than one alert starts with {alert_id}: give more characters" if found else f"no alert {alert_id}")
    row = book.acknowledge(found[0], getpass.getuser())
    assert row is not None
    ids = [row.message_id] if row.message_id else []
    if row.state == AlertState.resolved:
        _fail(f"alert {row.id} is resolved: nothing to acknowledge")
    _audit(store, "alert.ack", ids, target=row.id)
    typer.echo(f"alert {row.id} ({row.channel}, {row.rule}) acknowledged by {row.acked_by}")
