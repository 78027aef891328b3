"""Validate a bundle with the fhir.resources R4B models (R4B's core resources match R4).

Costs about 0.2 ms per resource — more than mapping it — hence ``validation: full | sampled | off`` per
channel. A failure names the resource type and the element path, never the offending value.

Two measured savings (``bench/transform.py``; about half the cost of a lab bundle, see docs/benchmarks.md):

* **vocabulary is validated once.** The top-level CodeableConcepts, Codings and reference ranges of a
  resource (test codes, units, interpretations, categories) repeat across messages. Each distinct one is
  validated on its own the first time and the model instance is kept (:data:`CACHE_LIMIT` of them,
  keyed by type and JSON bytes); pydantic does not validate a model instance again, so a resource built
  around cached instances costs a third as much. Patients' names, addresses and identifiers are never
  cached (not vocabulary, and they would keep patient data in memory).
* **the Bundle shell is checked by hand**: entries, fullUrls and conditional requests are what
  ``bundle.assemble`` writes; a few type checks replace a pydantic Bundle model over every entry.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import orjson
from pydantic import ValidationError

from engine.errors import TransformError

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
#: FHIR types whose values are vocabulary: validated once per distinct value.
VOCABULARY = frozenset({"CodeableConcept", "Coding", "ObservationReferenceRange"})
CACHE_LIMIT = 4096
BUNDLE_TYPES = frozenset(
    {"document", "message", "transaction", "transaction-response", "batch", "batch-response", "history"}
    | {"searchset", "collection"}
)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"})

_cache: dict[tuple[str, bytes], Any] = {}
_vocabulary_fields: dict[str, dict[str, str]] = {}  # resource type → element → vocabulary type
_lock = threading.Lock()


def _path(bundle: dict[str, Any], loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    rest = loc
    if len(loc) >= 3 and loc[0] == "entry" and isinstance(loc[1], int) and loc[2] == "resource":
        try:
            parts.append(str(bundle["entry"][loc[1]]["resource"]["resourceType"]))
        except (KeyError, IndexError, TypeError):
            parts.append("Resource")
        rest = loc[3:]
    else:
        parts.append("Bundle")
    for p in rest:
        if isinstance(p, int):
            parts[-1] += f"[{p}]"
        elif "[" not in str(p) and "-" not in str(p):  # skip pydantic union tags
            parts.append(str(p))
    return ".".join(parts)


def _vocabulary(rtype: str) -> dict[str, str]:
    found = _vocabulary_fields.get(rtype)
    if found is None:
        from engine.transform import fhirmodel

        found = {}
        for name in fhirmodel.element_names(rtype):
            el = fhirmodel.element(rtype, name)
            if el is not None and el.type in VOCABULARY:
                found[name] = el.type
        _vocabulary_fields[rtype] = found
    return found


def _instance(tname: str, value: Any) -> Any:
    """A validated model instance of a vocabulary value, from the cache; the value itself when invalid."""
    if not isinstance(value, dict):
        return value
    key = (tname, orjson.dumps(value))
    got = _cache.get(key)
    if got is not None:
        return got
    from fhir.resources.R4B import get_fhir_model_class

    try:
        got = get_fhir_model_class(tname).model_validate(value)
    except ValidationError:
        return value  # validated again inside the resource, so the error names its place
    with _lock:
        if len(_cache) >= CACHE_LIMIT:
            _cache.clear()
        _cache[key] = got
    return got


def _with_instances(r: dict[str, Any]) -> dict[str, Any]:
    vocab = _vocabulary(str(r.get("resourceType")))
    if not vocab:
        return r
    out = dict(r)
    for name, tname in vocab.items():
        v = out.get(name)
        if isinstance(v, list):
            out[name] = [_instance(tname, x) for x in v]
        elif v is not None:
            out[name] = _instance(tname, v)
    return out


def validate_bundle(bundle: dict[str, Any]) -> None:
    """Raise TransformError (code 207) naming ``Type.element.path`` when the bundle is not valid FHIR R4.

    Each resource is validated with its own model (vocabulary from the cache), then the shell around them.
    """
    from fhir.resources.R4B import get_fhir_model_class

    entries = bundle.get("entry") or []
    for i, e in enumerate(entries):
        r = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(r, dict):
            continue
        try:
            model = get_fhir_model_class(str(r.get("resourceType")))
        except (ValueError, AttributeError):
            raise _failure(f"entry[{i}]", "unknown resource type") from None
        try:
            model.model_validate(_with_instances(r))
        except ValidationError as exc:
            raise _from_pydantic(bundle, exc, ("entry", i, "resource")) from None
    _check_shell(bundle, entries)


def _check_shell(bundle: dict[str, Any], entries: Any) -> None:
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") not in BUNDLE_TYPES:
        raise _failure("Bundle.type", "not a Bundle of a known type")
    if not isinstance(entries, list):
        raise _failure("Bundle.entry", "not a list")
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise _failure(f"Bundle.entry[{i}]", "not an object")
        url = e.get("fullUrl")
        if url is not None and (not isinstance(url, str) or not url or any(c.isspace() for c in url)):
            raise _failure(f"Bundle.entry[{i}].fullUrl", "not a uri")
        req = e.get("request")
        if req is None:
            continue
        if not isinstance(req, dict):
            raise _failure(f"Bundle.entry[{i}].request", "not an object")
        if req.get("method") not in METHODS:
            raise _failure(f"Bundle.entry[{i}].request.method", "not an HTTP verb FHIR allows")
        if not isinstance(req.get("url"), str) or not req["url"]:
            raise _failure(f"Bundle.entry[{i}].request.url", "missing or not a uri")


def _from_pydantic(bundle: dict[str, Any], exc: ValidationError, prefix: tuple[Any, ...]) -> TransformError:
    err = exc.errors(include_url=False)[0]
    return _failure(_path(bundle, (*prefix, *err["loc"])), _QUOTED.sub("…", str(err["msg"])))


def _failure(where: str, msg: str) -> TransformError:
    return TransformError(f"FHIR validation failed at {where}: {msg}", rule="fhir-r4-validation", code="207")
