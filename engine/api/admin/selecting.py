"""What the operator-action routes share: a :class:`~engine.store.operations.Selection` read from a JSON body
or query string (422 naming the field, never the value), ``?dry_run=``, and :func:`act_in_batches`, which runs
an action's batches off the event loop, hands each to the running engine's queue as soon as the store has
committed it, and audits it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pydantic import ValidationError
from starlette.requests import Request

from engine.api.admin.access import Access, Principal
from engine.api.problems import Problem
from engine.store.operations import Selection

__all__ = ["DRY_RUN", "act_in_batches", "dry_run", "query_selection", "selection", "selection_schema",
           "validation_problem"]  # fmt: skip

T = TypeVar("T")

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


async def act_in_batches(
    access: Access,
    who: Principal,
    action: str,
    selection: Selection,
    batches: Callable[[], Iterator[list[T]]],
    each: Callable[[list[T]], None],
    ids: Callable[[list[T]], list[str]],
) -> list[T]:
    """Run ``batches()`` in a thread; after each committed batch: ``each(batch)`` (enqueue it) and one audit row
    (``action``, the selection's filter, the batch's message ids). Returns everything taken."""
    loop = asyncio.get_running_loop()

    def run() -> list[T]:
        done: list[T] = []
        for batch in batches():
            if batch:
                each(batch)
                record = access.record(
                    who, action, target=selection.describe(), message_ids=list(dict.fromkeys(ids(batch)))
                )
                asyncio.run_coroutine_threadsafe(record, loop).result()
            done.extend(batch)
        return done

    return await asyncio.to_thread(run)


def selection_schema(**extra: Any) -> dict[str, Any]:
    """The JSON Schema of a selection body (from :class:`Selection` itself) with a route's ``extra`` properties;
    a property whose value is a tuple ``(schema,)`` is required."""
    schema = Selection.model_json_schema()
    defs = schema.pop("$defs", {})
    props: dict[str, Any] = schema["properties"]
    for name, prop in props.items():
        prop.pop("title", None)
        for alt in prop.get("anyOf", []):
            ref = alt.pop("$ref", "").rsplit("/", 1)[-1]
            if ref:
                alt.update({k: v for k, v in defs[ref].items() if k != "title"})
            if name in ("since", "until"):
                alt.pop("format", None)  # an age such as 2h is no date-time
    props["message_id"] = {"type": "string", "description": "One message id (the same as `ids: [id]`)."}
    required = [k for k, v in extra.items() if isinstance(v, tuple)]
    props.update({k: v[0] if isinstance(v, tuple) else v for k, v in extra.items()})
    schema.pop("title", None)
    return {**schema, **({"required": required} if required else {})}


#: the ``dry_run`` query parameter of an action (OpenAPI)
DRY_RUN = {"name": "dry_run", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
           "description": "Only count what would be taken (exactly what the action then takes)."}  # fmt: skip
#: the answer of a dry run (OpenAPI)
DRY_RUN_ANSWER = {"type": "object", "required": ["dry_run", "count"],
                  "properties": {"dry_run": {"const": True}, "count": {"type": "integer"}}}  # fmt: skip
