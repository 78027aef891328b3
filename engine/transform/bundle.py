"""Assemble the FHIR transaction: identity, deterministic fullUrls, conditional PUTs, references.

Every resource carries its business identifier (``identity``) in ``identifier`` (added when the rules did
not already put it there), so the conditional update finds it again next time:

* ``fullUrl`` = ``urn:uuid:`` + UUIDv5(namespace, ``"<Type>|<system>|<value>"``): the same message always
  yields the same bundle, and a resend of the same result maps to the same URL;
* ``request`` = ``PUT <Type>?identifier=<system>|<value>`` (each part escaped as a FHIR search value —
  ``\\``, ``|``, ``,`` and ``$`` backslash-escaped — then percent-encoded, keeping the characters a URI
  query allows as they are, so ``urn:oid:1.2.3`` stays readable). An identity always has a system (the
  runtime fills a missing one from the channel's default or refuses the message): a search by value alone
  matches the value under every system, i.e. other facilities' records, so :func:`conditional_url`
  refuses to build one;
* when the identity's system was the channel's default, the identifier the rules made from the same value
  without a system gets that system (rather than a second, system-less copy staying beside it);
* an entry written ``write: create`` is ``POST <Type>`` with ``ifNoneExist: identifier=<system>|<value>``
  instead: the server keeps the resource it already holds under that identity (a result message's
  ServiceRequest never replaces the richer one its order message made), and references still resolve to it;
* references between entries (``subject``, ``result`` …) are those ``urn:uuid:`` fullUrls, which the server
  rewrites to the ids it assigns.

Resources carry no ``id``. Two resources of one type with the same identity in one message are one entry
when their content (references included) is identical — a BAR's NK1 or IN1 repeated in each visit group
says the same thing twice — and an error otherwise (HL7 205): a transaction may not hold two entries for
one conditional URL, and which of two different records to keep is not ours to guess (patient safety).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from engine.errors import TransformError
from engine.transform.execute import Instance
from engine.transform.steps import put

IDENTITY_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:interlink:fhir-identity")
_NS = IDENTITY_NAMESPACE.bytes
#: Characters a query value may carry as they are (RFC 3986 query, minus & = + # and FHIR's | , $ \\).
_SAFE = "-._~:/@!'()*;"
_PLAIN = re.compile(r"^[A-Za-z0-9\-._~:/@!'()*;]*$")


def _escape(s: str) -> str:
    if _PLAIN.match(s):
        return s
    return quote(s.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$"), safe=_SAFE)


_VARIANT = {h: "89ab"[int(h, 16) & 3] for h in "0123456789abcdef"}


_escape_system = lru_cache(maxsize=1024)(_escape)  # systems repeat; values (identifiers) are not cached


def conditional_url(resource_type: str, system: str, value: str) -> str:
    """``Type?identifier=system|value``; never without a system (ValueError)."""
    if not system:
        raise ValueError("a conditional URL needs an identifier system: a search by value alone matches every system")
    return f"{resource_type}?identifier={_escape_system(system)}|{_escape(value)}"


def full_url(resource_type: str, system: str, value: str) -> str:
    """``urn:uuid:`` + UUIDv5 (RFC 4122, SHA-1) of ``Type|system|value`` in the Interlink namespace."""
    x = hashlib.sha1(_NS + f"{resource_type}|{system}|{value}".encode()).hexdigest()
    # Version 5 in the 13th hex digit, the RFC 4122 variant (10xx) in the 17th: set on the text directly.
    return f"urn:uuid:{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


def request(inst: Instance) -> dict[str, str]:
    """The entry's request: a conditional update, or for a ``write: create`` entry a conditional create."""
    assert inst.entry is not None
    rtype = inst.entry.resource_type
    url = conditional_url(rtype, *inst.identity)
    if inst.entry.create_only:
        return {"method": "POST", "url": rtype, "ifNoneExist": url.partition("?")[2]}
    return {"method": "PUT", "url": url}


def _ensure_identifier(resource: dict[str, Any], system: str, value: str, filled: bool) -> None:
    ids = resource.setdefault("identifier", [])
    bare = -1
    for n, i in enumerate(ids):
        if i.get("value") == value:
            if i.get("system") == system:
                return
            if filled and bare < 0 and not i.get("system"):
                bare = n
    if bare >= 0:
        # A new dict: the old one may be the run's memo of this identifier, read by other identities.
        ids[bare] = {"system": system, **{k: v for k, v in ids[bare].items() if k != "system"}}
    else:
        ids.append({"system": system, "value": value})


def _collect(inst: Instance, up: int, down: tuple[str, ...]) -> Sequence[Instance]:
    anc: Instance | None = inst
    for _ in range(up):
        anc = anc.parent if anc is not None else None
    if anc is None:
        return []
    if not down:
        return (anc,)
    level = [anc]
    for name in down:
        level = [c for x in level for c in x.children.get(name, ())]
    return level


def assemble(made: list[Instance]) -> dict[str, Any]:
    """The transaction Bundle for the instances of one message."""
    seen: dict[str, Instance] = {}
    twins: list[Instance] = []
    for inst in made:
        assert inst.entry is not None
        system, value = inst.identity
        inst.full_url = full_url(inst.entry.resource_type, system, value)
        if inst.full_url in seen:
            twins.append(inst)
        else:
            seen[inst.full_url] = inst
        _ensure_identifier(inst.resource, system, value, inst.filled)
    entries = []
    for inst in made:
        assert inst.entry is not None
        resource = inst.resource
        for plan in inst.entry.refs:
            refs = []
            for up, down in plan.routes:
                for t in _collect(inst, up, down):
                    refs.append({"reference": t.full_url})
            if refs:
                ref_value: Any = refs if plan.is_list else refs[0]
                key = plan.keys[0][0]
                if len(plan.keys) == 1 and key not in resource:
                    resource[key] = ref_value
                else:
                    put(resource, plan.keys, ref_value)
        if seen[inst.full_url] is inst:
            entries.append({"fullUrl": inst.full_url, "resource": inst.resource, "request": request(inst)})
    for inst in twins:  # compared once references are in: the same content under other parents differs
        assert inst.entry is not None
        if inst.resource != seen[inst.full_url].resource:
            raise TransformError(
                f"two {inst.entry.resource_type} resources have the same business identifier",
                field=inst.entry.identity_field,
                rule=inst.entry.rule,
                code="205",
            )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
