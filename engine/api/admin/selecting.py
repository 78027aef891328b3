"""What the operator-action routes share: a :class:`~engine.store.operations.Selection` read from a JSON body
or query string (422 naming the field, never the value), ``?dry_run=``, and the audit target that describes
a selection (its filter: names, statuses and times, never message content).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request

from engine.api.problems import Problem
from engine.store.operations import Selection

__all__ = ["describe", "dry_run", "selection", "validation_problem"]

_QUERY_FIELDS = ("channel", "destination", "status", "message_type", "since", "until")


def validation_problem(exc: ValidationError, slug: str = "invalid-selection") -> Problem:
    """A 422 naming each field that failed and why (pydantic's messages carry no input value)."""
    where = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
    return Problem(422, slug, where[:500])


def selection(body: dict[str, Any], *, extra: tuple[str, ...] = ()) -> Selection:
    """The selection of a JSON body (``message_id`` is one id); ``extra`` keys belong to the route. 422 when
    it is invalid or chooses nothing (``{"all": true}`` takes everything)."""
    fields = {k: v for k, v in body.items() if k not in extra and k != "message_id"}
    if "message_id" in body:
        fields["ids"] = [body["message_id"], *fields.get("ids", [])]
    try:
        chosen = Selection.model_validate(fields)
    except ValidationError as exc:
        raise validation_problem(exc) from None
    if not chosen.chooses:
        raise Problem(422, "empty-selection", "name message_id, ids or a filter field, or all: true")
    return chosen


def query_selection(request: Request) -> Selection:
    """The filter of a listing's query string (every field optional: nothing = everything)."""
    fields = {k: request.query_params[k] for k in _QUERY_FIELDS if k in request.query_params}
    try:
        return Selection.model_validate(fields)
    except ValidationError as exc:
        raise validation_problem(exc) from None


def dry_run(request: Request) -> bool:
    value = request.query_params.get("dry_run", "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise Problem(422, "invalid-parameter", "dry_run: true or false")
    return value in ("true", "1")


def describe(s: Selection) -> str:
    """The audit target of a selection: its filter fields (ids go to the audit row's message ids)."""
    parts = [
        f"{k}={v.isoformat() if hasattr(v, 'isoformat') else v}"
        for k, v in s.model_dump(exclude={"ids", "all"}, exclude_none=True).items()
    ]
    if s.ids:
        parts.append(f"ids={len(s.ids)}")
    return " ".join(parts) or "all"
