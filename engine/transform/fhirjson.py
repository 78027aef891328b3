"""FHIR received as FHIR (input kind ``fhir``): a resource or a Bundle, made into a transaction the
destinations can deliver idempotently.

- a ``transaction`` Bundle is kept as sent (its entries must each have a ``request``);
- any other Bundle (``collection``, ``batch``, ``message`` …) and a single resource become a transaction
  with one conditional entry per resource: ``PUT Type?identifier=system|value`` keyed on the resource's
  first identifier that has both a system and a value, ``fullUrl`` the deterministic ``urn:uuid`` of that
  identity (``engine.transform.bundle``), references between entries rewritten to it, and the server's
  own ``id``/``meta.versionId``/``meta.lastUpdated`` dropped;
- a resource without such an identifier is refused (``TransformError`` naming ``Type.identifier``): a
  write keyed on anything less cannot be repeated safely, and a search by value alone matches other
  systems' records.

The source time (for the stale-write guard) is ``meta.lastUpdated`` of the resource, else the Bundle's
``timestamp``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from engine.errors import TransformError
from engine.transform.bundle import conditional_url, full_url

__all__ = ["source_time", "to_transaction"]

_SERVER_META = ("versionId", "lastUpdated")


def _identity(resource: dict[str, Any]) -> tuple[str, str] | None:
    for ident in resource.get("identifier") or ():
        if not isinstance(ident, dict):
            continue
        system, value = ident.get("system"), ident.get("value")
        if isinstance(system, str) and isinstance(value, str) and system and value:
            return system, value
    return None


def to_transaction(data: Any) -> dict[str, Any]:
    """The transaction Bundle to deliver for a received resource or Bundle; TransformError when it cannot be."""
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise TransformError("not a FHIR resource", field="resourceType", rule="fhir-input")
    if data["resourceType"] != "Bundle":
        resources: list[tuple[str | None, dict[str, Any]]] = [(None, data)]
    elif data.get("type") == "transaction":
        for i, e in enumerate(data.get("entry") or ()):
            if not isinstance(e, dict) or not isinstance(e.get("request"), dict):
                raise TransformError("a transaction entry needs a request", field=f"Bundle.entry[{i}].request",
                                     rule="fhir-input")  # fmt: skip
        return data
    else:
        resources = [
            (e.get("fullUrl") if isinstance(e.get("fullUrl"), str) else None, e["resource"])
            for e in data.get("entry") or ()
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
    renamed: dict[str, str] = {}
    entries: list[dict[str, Any]] = []
    for old_url, resource in resources:
        rtype = str(resource.get("resourceType"))
        identity = _identity(resource)
        if identity is None:
            raise TransformError("needs an identifier with a system and a value to be written idempotently",
                                 field=f"{rtype}.identifier", rule="fhir-input")  # fmt: skip
        url = full_url(rtype, *identity)
        if old_url:
            renamed[old_url] = url
        if isinstance(resource.get("id"), str):
            renamed[f"{rtype}/{resource['id']}"] = url
        clean = {k: v for k, v in resource.items() if k != "id"}
        if isinstance(clean.get("meta"), dict):
            meta = {k: v for k, v in clean["meta"].items() if k not in _SERVER_META}
            if meta:
                clean["meta"] = meta
            else:
                del clean["meta"]
        entries.append({"fullUrl": url, "resource": clean,
                        "request": {"method": "PUT", "url": conditional_url(rtype, *identity)}})  # fmt: skip
    for e in entries:
        _rewrite(e["resource"], renamed)
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _rewrite(node: Any, renamed: dict[str, str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str) and v in renamed:
                node[k] = renamed[v]
            else:
                _rewrite(v, renamed)
    elif isinstance(node, list):
        for v in node:
            _rewrite(v, renamed)


def source_time(data: Any) -> float | None:
    """``meta.lastUpdated`` of a resource, else a Bundle's ``timestamp``, as epoch seconds (None: neither)."""
    if not isinstance(data, dict):
        return None
    meta = data.get("meta")
    for value in (meta.get("lastUpdated") if isinstance(meta, dict) else None, data.get("timestamp")):
        if isinstance(value, str):
            try:
                when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            if when.tzinfo is not None:
                return when.timestamp()
    return None
