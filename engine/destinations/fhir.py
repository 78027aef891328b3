"""FHIR REST destination: POST the transaction Bundle to the server's base URL.

Servers limit transactions (Medplum: at most 8 entries when any entry is conditional), so a larger
bundle is split into several transactions in dependency order:

1. Entry A depends on entry B when a string in A (outside ``fullUrl``) is B's ``fullUrl``, or holds
   B's ``urn:uuid:`` inside it. Entries that reference each other in a cycle form one group.
2. Groups are ordered so every entry comes after what it references (bundle order breaks ties) and
   packed greedily into chunks of at most ``max_entries_per_transaction``; a cycle larger than that
   cannot be delivered (PERMANENT).
3. Chunks are sent one by one. After each, the server's ``response.location`` (``Patient/123/_history/1``
   → ``Patient/123``) replaces that entry's ``urn:uuid:`` in later chunks; references within a chunk
   stay ``urn:uuid:`` for the server to resolve.

Every entry is conditional, so resending the whole bundle after a partial failure changes nothing
that was already delivered: on RETRY the engine resends from the start.
"""

from __future__ import annotations

import heapq
import re
from typing import Any, Literal

import httpx
import orjson
from pydantic import Field

from engine.destinations.base import DestinationError, Health, Outcome, Result, classify, failure_result, to_json
from engine.destinations.http import MESSAGE_ID_HEADER, HttpOptions, make_client, post, reachable, request_headers
from engine.destinations.outcome import issues_reason

FHIR_JSON = "application/fhir+json"
_UUID = re.compile(r"urn:uuid:[0-9A-Fa-f-]{36}")
_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID = re.compile(r"^[A-Za-z0-9.-]{1,64}$")
_SEVERITY = {Outcome.SENT: 0, Outcome.RETRY: 1, Outcome.PERMANENT: 2}


class FhirConfig(HttpOptions):
    """A FHIR R4 server's REST API."""

    type: Literal["fhir"] = Field(description="Destination kind.")
    name: str = Field(description="Destination name, unique in the channel.")
    base_url: str = Field(description="FHIR base URL, e.g. https://ehr.example.org/fhir/R4.")
    max_entries_per_transaction: int = Field(
        8, ge=1, description="Largest transaction sent; bigger bundles are split in dependency order."
    )

    def target(self) -> str:
        """The system written to (channels writing to the same one share ordering lanes)."""
        return "fhir " + self.base_url.rstrip("/")


def _strings(value: Any) -> list[str]:
    """Every string inside a JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _mentions(text: str, full_urls: dict[str, int]) -> list[str]:
    """The bundle fullUrls a string refers to: the whole string, or urn:uuids inside it."""
    if text in full_urls:
        return [text]
    return [u for u in _UUID.findall(text) if u in full_urls] if "urn:uuid:" in text else []


def _body(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "fullUrl"}


def dependencies(entries: list[dict[str, Any]]) -> list[set[int]]:
    """For each entry, the positions of the other entries it references."""
    full_urls: dict[str, int] = {}
    for i, e in enumerate(entries):
        url = e.get("fullUrl")
        if isinstance(url, str) and url not in full_urls:
            full_urls[url] = i
    deps: list[set[int]] = []
    for i, e in enumerate(entries):
        found = {full_urls[u] for s in _strings(_body(e)) for u in _mentions(s, full_urls)}
        deps.append(found - {i})
    return deps


def _groups(deps: list[set[int]]) -> list[list[int]]:
    """Strongly connected components (Tarjan, iterative): entries in a reference cycle share a group."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    groups: list[list[int]] = []
    for root in range(len(deps)):
        if root in index:
            continue
        work = [(root, iter(sorted(deps[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(deps[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                groups.append(sorted(group))
    return groups


def plan_chunks(entries: list[dict[str, Any]], max_entries: int) -> list[list[int]]:
    """Entry positions per transaction, in delivery order (see the module docstring)."""
    if len(entries) <= max_entries:
        return [list(range(len(entries)))] if entries else []
    deps = dependencies(entries)
    groups = _groups(deps)
    group_of = {i: g for g, members in enumerate(groups) for i in members}
    waits_on = [{group_of[d] for i in members for d in deps[i]} - {g} for g, members in enumerate(groups)]
    dependants: list[list[int]] = [[] for _ in groups]
    for g, needed in enumerate(waits_on):
        for n in needed:
            dependants[n].append(g)
    pending = [len(needed) for needed in waits_on]
    ready = [(groups[g][0], g) for g in range(len(groups)) if not pending[g]]
    heapq.heapify(ready)
    chunks: list[list[int]] = []
    while ready:
        _, g = heapq.heappop(ready)
        members = groups[g]
        if len(members) > max_entries:
            raise DestinationError(
                f"reference cycle of {len(members)} entries exceeds max_entries_per_transaction ({max_entries})",
                outcome=Outcome.PERMANENT,
            )
        if not chunks or len(chunks[-1]) + len(members) > max_entries:
            chunks.append([])
        chunks[-1].extend(members)
        for d in dependants[g]:
            pending[d] -= 1
            if not pending[d]:
                heapq.heappush(ready, (groups[d][0], d))
    return chunks


def rewrite(value: Any, resolved: dict[str, str]) -> Any:
    """A copy of ``value`` with references to delivered entries replaced by their ``Type/id``."""
    if isinstance(value, str):
        if value in resolved:
            return resolved[value]
        if "urn:uuid:" in value:
            return _UUID.sub(lambda m: resolved.get(m.group(0), m.group(0)), value)
        return value
    if isinstance(value, dict):
        return {k: rewrite(v, resolved) for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite(v, resolved) for v in value]
    return value


def location_reference(location: str) -> str | None:
    """``Type/id`` from a response location (relative or absolute, with or without ``_history``)."""
    parts = [p for p in location.split("?", 1)[0].split("#", 1)[0].split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) < 2 or not _TYPE.match(parts[-2]) or not _ID.match(parts[-1]):
        return None
    return f"{parts[-2]}/{parts[-1]}"


def _response(item: Any) -> dict[str, Any]:
    response = item.get("response") if isinstance(item, dict) else None
    return response if isinstance(response, dict) else {}


def _entry_status(item: Any) -> int | None:
    status = _response(item).get("status")
    head = status.split(" ", 1)[0] if isinstance(status, str) else ""
    return int(head) if head.isdigit() else None


def _resource_type(entry: dict[str, Any]) -> str:
    resource = entry.get("resource")
    kind = resource.get("resourceType") if isinstance(resource, dict) else None
    return kind if isinstance(kind, str) and _TYPE.match(kind) else "entry"


def _joined(parts: list[bytes]) -> bytes:
    """A JSON array of JSON documents (a part that is not JSON becomes a string)."""
    items = []
    for part in parts:
        try:
            orjson.loads(part)
            items.append(part)
        except orjson.JSONDecodeError:
            items.append(orjson.dumps(part.decode("utf-8", "replace")))
    return b"[" + b",".join(items) + b"]"


class FhirDestination:
    """Delivers transaction Bundles to a FHIR server, split to respect its transaction size limit."""

    def __init__(self, config: FhirConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.name = config.name
        self.config = config
        self._client = make_client(config, transport=transport)

    def close(self) -> None:
        self._client.close()

    def healthcheck(self) -> Health:
        """The server's CapabilityStatement answers (GET [base]/metadata, 2xx)."""
        return reachable(self._client, self.config.base_url, path="/metadata")

    def send(self, bundle: dict[str, Any], *, message_id: str) -> Result:
        headers = request_headers(
            {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, MESSAGE_ID_HEADER: message_id},
            self.config.headers,
        )
        entries = bundle.get("entry") or []
        try:
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                raise DestinationError("Bundle.entry is not a list of entries", outcome=Outcome.PERMANENT)
            chunks = plan_chunks(entries, self.config.max_entries_per_transaction)
            if len(chunks) <= 1:
                return self._transact(to_json(bundle), entries, list(range(len(entries))), headers)[0]
            return self._send_chunks(bundle, entries, chunks, headers)
        except DestinationError as exc:
            return failure_result(exc)

    def overwrites(self, bundle: dict[str, Any]) -> list[str]:
        """fullUrls of the entries that are conditional updates (``PUT Type?identifier=…``)."""
        return [
            e["fullUrl"]
            for e in _entries(bundle)
            if isinstance(e.get("fullUrl"), str) and _conditional_put(e.get("request")) is not None
        ]

    def keep_existing(self, bundle: dict[str, Any], resources: set[str]) -> dict[str, Any]:
        """The bundle with the conditional updates of ``resources`` turned into conditional creates
        (``POST Type`` + ``ifNoneExist``): the server keeps what it holds, and references to the entry still
        resolve to it."""
        entries = []
        for e in _entries(bundle):
            put_query = _conditional_put(e.get("request")) if e.get("fullUrl") in resources else None
            if put_query is None:
                entries.append(e)
                continue
            kind, query = put_query
            entries.append({**e, "request": {"method": "POST", "url": kind, "ifNoneExist": query}})
        return {**bundle, "entry": entries}

    def _send_chunks(
        self,
        bundle: dict[str, Any],
        entries: list[dict[str, Any]],
        chunks: list[list[int]],
        headers: httpx.Headers,
    ) -> Result:
        chunk_of = {i: c for c, members in enumerate(chunks) for i in members}
        needed_later = {d for i, deps in enumerate(dependencies(entries)) for d in deps if chunk_of[d] < chunk_of[i]}
        envelope = {k: v for k, v in bundle.items() if k != "entry"}
        resolved: dict[str, str] = {}
        sent: list[bytes] = []
        received: list[bytes] = []
        result = Result(Outcome.SENT)
        for c, members in enumerate(chunks):
            body = to_json({**envelope, "entry": [rewrite(entries[i], resolved) for i in members]})
            sent.append(body)
            result, reply = self._transact(body, entries, members, headers)
            received.append(result.response or b"")
            if result.outcome is Outcome.SENT:
                error = self._resolve(entries, members, reply, needed_later, resolved)
                if error is None:
                    continue
                result = Result(Outcome.PERMANENT, status_code=result.status_code, error=error)
            return Result(
                result.outcome,
                status_code=result.status_code,
                error=f"transaction {c + 1}/{len(chunks)}: {result.error}",
                retry_after_s=result.retry_after_s,
                request=_joined(sent),
                response=_joined(received),
            )
        return Result(Outcome.SENT, status_code=result.status_code, request=_joined(sent), response=_joined(received))

    def _transact(
        self, body: bytes, entries: list[dict[str, Any]], members: list[int], headers: httpx.Headers
    ) -> tuple[Result, Any]:
        """POST one transaction; a 2xx whose response entries carry failures takes the worst of them."""
        result = post(self._client, self.config.base_url, body, headers)
        if result.outcome is not Outcome.SENT:
            return result, None
        try:
            reply = orjson.loads(result.response or b"")
        except orjson.JSONDecodeError:
            return result, None
        items = reply.get("entry") if isinstance(reply, dict) else None
        worst: tuple[int, int, int] | None = None  # (severity, position, status); the first of the worst
        for pos, item in enumerate(items if isinstance(items, list) else []):
            status = _entry_status(item)
            if status is not None and (worst is None or _SEVERITY[classify(status)] > worst[0]):
                worst = (_SEVERITY[classify(status)], pos, status)
        if worst is None or worst[0] == 0:
            return result, reply
        _, pos, status = worst
        assert isinstance(items, list)  # a worst entry was found among them
        where = members[pos] if pos < len(members) else pos
        kind = _resource_type(entries[where]) if pos < len(members) else "entry"
        outcome = _response(items[pos]).get("outcome")
        reason = f": {issues_reason(outcome)}" if isinstance(outcome, dict) else ""
        error = f"Bundle.entry[{where}] ({kind}): HTTP {status}{reason}"
        return Result(classify(status), status_code=status, error=error, request=body, response=result.response), reply

    @staticmethod
    def _resolve(
        entries: list[dict[str, Any]],
        members: list[int],
        reply: Any,
        needed: set[int],
        resolved: dict[str, str],
    ) -> str | None:
        """Record ``Type/id`` of the chunk's entries that later chunks reference; an error if one lacks it."""
        items = reply.get("entry") if isinstance(reply, dict) else None
        for pos, i in enumerate(members):
            if i not in needed:
                continue
            item = items[pos] if isinstance(items, list) and pos < len(items) else None
            ref = _reference_of(item)
            kind = _resource_type(entries[i])
            if ref is None or (kind != "entry" and ref.split("/", 1)[0] != kind):
                return f"transaction-response gives no {kind} id for Bundle.entry[{i}]"
            resolved[entries[i]["fullUrl"]] = ref
        return None


def _entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    entries = bundle.get("entry")
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _conditional_put(request: Any) -> tuple[str, str] | None:
    """(Type, search query) of a conditional update request, else None."""
    if not isinstance(request, dict) or request.get("method") != "PUT" or not isinstance(request.get("url"), str):
        return None
    kind, sep, query = request["url"].partition("?")
    return (kind, query) if sep and query and _TYPE.match(kind) else None


def _reference_of(item: Any) -> str | None:
    """``Type/id`` of a transaction-response entry: its location, else its returned resource."""
    if not isinstance(item, dict):
        return None
    location = _response(item).get("location")
    if isinstance(location, str) and (ref := location_reference(location)):
        return ref
    resource = item.get("resource")
    if isinstance(resource, dict) and isinstance(resource.get("id"), str):
        return location_reference(f"{resource.get('resourceType')}/{resource['id']}")
    return None
