"""What an HTTP source reads from a JSON or FHIR body before committing it: enough to refuse it, to know
its type, and to know the patient it is about (its ordering lane). Never more, and never a value in an
error: errors are :class:`~engine.errors.InboundError` naming a place (``$.resourceType``,
``Observation.status``) with ``kind`` ``unreadable`` (400) or ``invalid`` (422).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from engine.errors import InboundError, TransformError

__all__ = ["fhir_patient", "json_path", "read_fhir", "read_json", "schema_validator", "type_label"]

_TYPE_LABEL = re.compile(r"^[A-Za-z0-9_.:^/-]{1,40}$")


def read_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InboundError("the body is not JSON (UTF-8)", kind="unreadable", location="$") from None


def read_fhir(body: bytes, *, types: list[str], validate: bool) -> dict[str, Any]:
    """A FHIR resource or Bundle, its type checked (and its structure, with ``validate``)."""
    data = read_json(body)
    if not isinstance(data, dict):
        raise InboundError("a FHIR body is a JSON object", location="$")
    rtype = data.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise InboundError("resourceType is missing", location="$.resourceType")
    if types and rtype not in types:
        raise InboundError("this channel does not take this resource type", location="$.resourceType")
    if validate:
        from engine.transform.validate import validate_bundle

        bundle = data if rtype == "Bundle" else {"resourceType": "Bundle", "type": "collection",
                                                 "entry": [{"resource": data}]}  # fmt: skip
        try:
            validate_bundle(bundle)
        except TransformError as exc:
            raise InboundError(exc.message, location="$") from None
    return data


def _reference(value: Any) -> str:
    return value.get("reference", "") if isinstance(value, dict) and isinstance(value.get("reference"), str) else ""


def _identity(resource: dict[str, Any]) -> str:
    for ident in resource.get("identifier") or ():
        if isinstance(ident, dict) and ident.get("system") and ident.get("value"):
            return f"{ident['system']}|{ident['value']}"
    return ""


def fhir_patient(data: dict[str, Any]) -> str:
    """Who a resource or Bundle is about, as sent (its ordering lane): a Patient's first identifier with a
    system, else the subject/patient reference."""
    resources = [data]
    if data.get("resourceType") == "Bundle":
        resources = [e["resource"] for e in data.get("entry") or () if isinstance(e, dict)
                     and isinstance(e.get("resource"), dict)]  # fmt: skip
    for r in resources:
        if r.get("resourceType") == "Patient" and (key := _identity(r)):
            return key
    for r in resources:
        if ref := _reference(r.get("subject")) or _reference(r.get("patient")):
            return ref
    return ""


def json_path(data: Any, path: str) -> Any:
    """The value at a dotted path (``event.type``, ``items.0.id``), or None."""
    for part in path.split("."):
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def type_label(value: Any) -> str:
    """A message type stored and listed with the message: a short token, or '' (never free text)."""
    return value if isinstance(value, str) and _TYPE_LABEL.match(value) else ""


def schema_validator(path: Path) -> Any:
    """A JSON Schema validator for a channel's events (``jsonschema``, the draft the schema declares)."""
    import jsonschema

    from engine.errors import ConfigError

    try:
        schema = orjson.loads(path.read_bytes())
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
    except (OSError, orjson.JSONDecodeError, jsonschema.SchemaError) as exc:
        raise ConfigError(f"json_schema {path}: not a readable JSON Schema ({type(exc).__name__})") from None
    return cls(schema)


def check_schema(validator: Any, data: Any) -> None:
    """422 naming the first failing place and the schema keyword (never the value)."""
    error = next(iter(validator.iter_errors(data)), None)
    if error is None:
        return
    where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    raise InboundError(f"fails the channel's schema ({error.validator})", location=where)
