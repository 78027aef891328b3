"""Validate a bundle with the fhir.resources R4B models (R4B's core resources match R4).

Each resource is first checked by :func:`engine.transform.fhirshape.conforms`: a walk of the keys it has
against the models' element tables, never more permissive than the models (False means "not proven").
Only what it does not prove is validated by the models, which give the verdict and the error; a failure
names the resource type and the element path, never the offending value. Measured in instructions per
message (``bench/transform_instructions.py``, ``docs/benchmarks.md``): full validation of the 8-OBX ORU^R01
10.6 M → 2.6 M, 6.6x cheaper than before the vocabulary cache (17.4 M); 6.4x for ADT^A01.

For what the models do validate:

* **vocabulary is validated once.** The top-level CodeableConcepts, Codings and reference ranges of a
  resource (test codes, units, interpretations, categories) repeat across messages. Each distinct one is
  validated on its own the first time and the model instance is kept (:data:`CACHE_LIMIT` of them,
  keyed by type and JSON bytes); pydantic does not validate a model instance again, so a resource built
  around cached instances costs a third as much. Patients' names, addresses and identifiers are never
  kept beyond one bundle (not vocabulary, and they would keep patient data in memory);
* **values repeated within a bundle** (every Observation's ``subject`` and ``encounter``) are validated
  once per bundle, from a cache that ends with the call;
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
from engine.transform.fhirshape import conforms

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
_complex_fields: dict[str, dict[str, str]] = {}  # resource type → element → its complex FHIR type
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


def _complex(rtype: str) -> dict[str, str]:
    """Element → FHIR type, for the complex (non-primitive) top-level elements of a resource type."""
    found = _complex_fields.get(rtype)
    if found is None:
        from engine.transform import fhirmodel

        found = {}
        for name in fhirmodel.element_names(rtype):
            el = fhirmodel.element(rtype, name)
            if el is not None and not el.primitive and not fhirmodel.is_resource(el.type):
                found[name] = el.type
        _complex_fields[rtype] = found
    return found


def _instance(tname: str, value: Any, cache: dict[tuple[str, bytes], Any]) -> Any:
    """A validated model instance of ``value``, from ``cache``; the value itself when invalid."""
    if not isinstance(value, dict):
        return value
    key = (tname, orjson.dumps(value))
    got = cache.get(key)
    if got is not None:
        return got
    from fhir.resources.R4B import get_fhir_model_class

    try:
        got = get_fhir_model_class(tname).model_validate(value)
    except (ValidationError, ValueError, AttributeError):
        return value  # validated again inside the resource, so the error names its place
    if cache is _cache:
        with _lock:
            if len(_cache) >= CACHE_LIMIT:
                _cache.clear()
            _cache[key] = got
    else:
        cache[key] = got
    return got


def _with_instances(r: dict[str, Any], local: dict[tuple[str, bytes], Any]) -> dict[str, Any]:
    """The resource with its complex top-level elements as validated instances: vocabulary from the process
    cache, the rest (references, identifiers, names…) from a cache that lives for one bundle only."""
    fields = _complex(str(r.get("resourceType")))
    out = dict(r)
    for name, v in r.items():
        tname = fields.get(name)
        if tname is None:
            continue
        cache = _cache if tname in VOCABULARY else local
        if isinstance(v, list):
            out[name] = [_instance(tname, x, cache) for x in v]
        else:
            out[name] = _instance(tname, v, cache)
    return out


def validate_bundle(bundle: dict[str, Any]) -> None:
    """Raise TransformError (code 207) naming ``Type.element.path`` when the bundle is not valid FHIR R4.

    Each resource is validated with its own model (vocabulary from the cache), then the shell around them.
    """
    from fhir.resources.R4B import get_fhir_model_class

    entries = bundle.get("entry") or []
    local: dict[tuple[str, bytes], Any] = {}  # this bundle's repeated values (subject, encounter…)
    for i, e in enumerate(entries):
        r = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(r, dict) or conforms(r):
            continue  # proven valid without building models (fhirshape: never more permissive than them)
        try:
            model = get_fhir_model_class(str(r.get("resourceType")))
        except (ValueError, AttributeError):
            raise _failure(f"entry[{i}]", "unknown resource type") from None
        try:
            model.model_validate(_with_instances(r, local))
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
