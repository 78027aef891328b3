from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest

from engine.destinations import FhirConfig, FhirDestination, Outcome
from engine.destinations.base import to_json
from engine.destinations.fhir import dependencies, location_reference, plan_chunks, rewrite

from . import full_url, lab_bundle


def references(value: Any) -> list[str]:
    """Every ``reference`` string inside a JSON value."""
    if isinstance(value, dict):
        found = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return found + [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


class FakeFhir:
    """A transaction endpoint with the Medplum behaviour the splitter relies on.

    It refuses transactions over ``max_entries`` and references to anything that is neither an entry
    of the same transaction nor a resource it created earlier, resolves conditional PUTs by URL, and
    answers with a transaction-response whose locations are relative or absolute.
    """

    def __init__(self, *, max_entries: int = 8, absolute: bool = False) -> None:
        self.max_entries = max_entries
        self.absolute = absolute
        self.ids: dict[str, str] = {}  # conditional request URL -> "Type/id"
        self.transactions: list[dict[str, Any]] = []
        self.canned: dict[int, httpx.Response] = {}  # transaction number (1-based) -> response
        self._created = 0
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            bundle = orjson.loads(request.content)
            self.transactions.append(bundle)
            if len(self.transactions) in self.canned:
                return self.canned[len(self.transactions)]
            entries = bundle["entry"]
            if len(entries) > self.max_entries:
                return problem(400, "too many entries")
            identities = {e["fullUrl"]: self._identity(e) for e in entries}
            known = set(self.ids.values())
            for e in entries:
                for ref in references(e["resource"]):
                    if ref not in identities and ref not in known:
                        return problem(400, f"unresolvable reference {ref}")
            for e in entries:
                self.ids[e["request"]["url"]] = identities[e["fullUrl"]]
            prefix = "https://ehr.test/fhir/" if self.absolute else ""
            return httpx.Response(
                200,
                json={
                    "resourceType": "Bundle",
                    "type": "transaction-response",
                    "entry": [
                        {
                            "response": {
                                "status": "201 Created",
                                "location": f"{prefix}{identities[e['fullUrl']]}/_history/1",
                            }
                        }
                        for e in entries
                    ],
                },
            )

    def _identity(self, e: dict[str, Any]) -> str:
        url = e["request"]["url"]
        if url in self.ids:
            return self.ids[url]
        self._created += 1
        return f"{e['resource']['resourceType']}/id-{self._created}"


def problem(status: int, text: str) -> httpx.Response:
    issue = {"severity": "error", "code": "invalid", "diagnostics": text}
    return httpx.Response(status, json={"resourceType": "OperationOutcome", "issue": [issue]})


def fhir(handler: Any, **options: Any) -> FhirDestination:
    config = FhirConfig.model_validate({"type": "fhir", "name": "ehr", "base_url": "https://ehr.test/fhir", **options})
    return FhirDestination(config, transport=httpx.MockTransport(handler))


def check_split(bundle: dict[str, Any], server: FakeFhir, limit: int) -> None:
    """Every entry sent once, no chunk over ``limit``, dependencies first, earlier chunks referenced by id."""
    originals = {e["fullUrl"]: e for e in bundle["entry"]}
    delivered: list[str] = []
    for chunk in server.transactions:
        assert chunk["resourceType"] == "Bundle" and chunk["type"] == "transaction"
        assert 1 <= len(chunk["entry"]) <= limit
        here = {e["fullUrl"] for e in chunk["entry"]}
        for e in chunk["entry"]:
            for sent, original in zip(references(e), references(originals[e["fullUrl"]]), strict=True):
                if original in here:
                    assert sent == original  # same chunk: the server resolves the urn:uuid
                else:
                    assert original in delivered  # earlier chunk: rewritten to the id the server gave
                    assert sent == server.ids[originals[original]["request"]["url"]]
            delivered.append(e["fullUrl"])
    assert sorted(delivered) == sorted(originals)


def test_small_bundle_is_one_transaction_sent_verbatim() -> None:
    seen: list[httpx.Request] = []
    server = FakeFhir()

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return server(request)

    bundle = lab_bundle(observations=2)
    result = fhir(handler).send(bundle, message_id="m-1")
    assert (result.outcome, result.status_code, result.error) == (Outcome.SENT, 200, None)
    assert result.request == to_json(bundle) == seen[0].content
    assert orjson.loads(result.response or b"")["type"] == "transaction-response"
    request = seen[0]
    assert (request.method, str(request.url)) == ("POST", "https://ehr.test/fhir")
    assert request.headers["Content-Type"] == request.headers["Accept"] == "application/fhir+json"
    assert request.headers["X-Interlink-Message-Id"] == "m-1"


@pytest.mark.parametrize("report_first", [False, True])
def test_eleven_entries_split_in_dependency_order_with_server_ids(report_first: bool) -> None:
    server = FakeFhir(max_entries=8)
    bundle = lab_bundle(observations=8, report_first=report_first)
    result = fhir(server).send(bundle, message_id="m")
    assert result.outcome is Outcome.SENT, result.error
    assert len(server.transactions) == 2
    check_split(bundle, server, 8)
    first, last = ([e["resource"]["resourceType"] for e in t["entry"]] for t in server.transactions)
    assert first == ["Patient", "Encounter", *["Observation"] * 6]
    assert last == ["Observation", "Observation", "DiagnosticReport"]
    results = [r["reference"] for r in server.transactions[1]["entry"][2]["resource"]["result"]]
    assert results[:6] == [server.ids[e["request"]["url"]] for e in server.transactions[0]["entry"][2:]]
    assert results[:6] == [f"Observation/id-{n}" for n in range(3, 9)]
    assert results[6:] == [e["fullUrl"] for e in server.transactions[1]["entry"][:2]]
    assert orjson.loads(result.request or b"") == server.transactions
    assert [b["type"] for b in orjson.loads(result.response or b"")] == ["transaction-response"] * 2


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 10, 11])
def test_any_limit_keeps_references_resolvable(limit: int) -> None:
    server = FakeFhir(max_entries=limit)
    bundle = lab_bundle(observations=8, report_first=True)
    result = fhir(server, max_entries_per_transaction=limit).send(bundle, message_id="m")
    assert result.outcome is Outcome.SENT, result.error
    assert len(server.transactions) == -(-11 // limit)
    check_split(bundle, server, limit)


def test_absolute_locations_with_history_become_type_and_id() -> None:
    server = FakeFhir(absolute=True)
    result = fhir(server).send(lab_bundle(), message_id="m")
    assert result.outcome is Outcome.SENT, result.error
    second = server.transactions[1]["entry"]
    refs = [r for e in second for r in references(e) if not r.startswith("urn:uuid:")]
    assert refs and all(r.count("/") == 1 and not r.startswith("http") for r in refs)


def test_failing_second_transaction_is_retry_with_both_chunks_recorded() -> None:
    server = FakeFhir()
    server.canned[2] = httpx.Response(503, content=b"busy", headers={"Retry-After": "3"})
    result = fhir(server).send(lab_bundle(), message_id="m")
    assert (result.outcome, result.status_code, result.retry_after_s) == (Outcome.RETRY, 503, 3.0)
    assert result.error == "transaction 2/2: HTTP 503"
    assert orjson.loads(result.request or b"") == server.transactions
    assert orjson.loads(result.response or b"")[1] == "busy"


def test_resending_after_partial_failure_reuses_the_delivered_resources() -> None:
    server = FakeFhir()
    server.canned[2] = httpx.Response(503)
    dest = fhir(server)
    bundle = lab_bundle()
    assert dest.send(bundle, message_id="m").outcome is Outcome.RETRY
    ids = dict(server.ids)
    assert dest.send(bundle, message_id="m").outcome is Outcome.SENT
    assert {k: server.ids[k] for k in ids} == ids  # conditional PUTs matched what the first try created
    assert len(server.ids) == 11


def test_failing_first_transaction_stops_before_the_second() -> None:
    server = FakeFhir()
    server.canned[1] = problem(422, "Invalid value 'Alex Testperson'")
    result = fhir(server).send(lab_bundle(), message_id="m")
    assert (result.outcome, result.status_code) == (Outcome.PERMANENT, 422)
    assert result.error == "transaction 1/2: HTTP 422: OperationOutcome error invalid"
    assert len(server.transactions) == 1


def transaction_response(*statuses: str, outcome: dict[str, Any] | None = None) -> httpx.Response:
    entries: list[dict[str, Any]] = [{"response": {"status": s, "location": "Patient/p1"}} for s in statuses]
    if outcome:
        entries[-1]["response"]["outcome"] = outcome
    return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response", "entry": entries})


def test_entry_statuses_decide_a_2xx_transaction_response() -> None:
    bundle = lab_bundle(observations=1)
    ok = fhir(lambda r: transaction_response("201 Created", "200 OK", "201", "200")).send(bundle, message_id="m")
    assert ok.outcome is Outcome.SENT
    busy = fhir(lambda r: transaction_response("201 Created", "503 Service Unavailable")).send(bundle, message_id="m")
    assert (busy.outcome, busy.status_code) == (Outcome.RETRY, 503)
    assert busy.error == "Bundle.entry[1] (Encounter): HTTP 503"
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "required", "expression": ["Observation.status"]}],
    }
    bad = fhir(lambda r: transaction_response("503", "201", "422", outcome=outcome)).send(bundle, message_id="m")
    assert (bad.outcome, bad.status_code) == (Outcome.PERMANENT, 422)
    assert bad.error == "Bundle.entry[2] (Observation): HTTP 422: OperationOutcome error required at Observation.status"


def test_echoing_outcomes_leave_only_codes_and_paths_in_the_error() -> None:
    """An EHR that repeats the patient's data in its OperationOutcome, whole-request and per entry."""
    secret = "ZQXSECRET4711"
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "duplicate",
                "diagnostics": f"Patient {secret} exists",
                "details": {"text": secret},
                "expression": [f"Patient?identifier=urn:oid:1.2|{secret}", f"Patient.name.where(family='{secret}')"],
            },
            {"severity": "error", "code": "value", "location": [f"Patient.identifier[0].value = {secret}"]},
        ],
    }
    expected = (
        "OperationOutcome error duplicate at Patient…, Patient.name.where(…); "
        "error value at Patient.identifier[0].value…"
    )
    bundle = lab_bundle(observations=1)
    whole = fhir(lambda r: httpx.Response(409, json=outcome)).send(bundle, message_id="m")
    assert whole.error == f"HTTP 409: {expected}"
    entry = fhir(lambda r: transaction_response("201", "409 Conflict", outcome=outcome)).send(bundle, message_id="m")
    assert entry.error == f"Bundle.entry[1] (Encounter): HTTP 409: {expected}"
    assert secret.encode() in (whole.response or b"") and secret.encode() in (entry.response or b"")  # kept as content


def test_entry_failure_in_a_later_chunk_names_the_original_position() -> None:
    server = FakeFhir()
    server.canned[2] = transaction_response("201", "201", "409 Conflict")
    result = fhir(server).send(lab_bundle(), message_id="m")
    assert (result.outcome, result.status_code) == (Outcome.PERMANENT, 409)
    assert result.error == "transaction 2/2: Bundle.entry[10] (DiagnosticReport): HTTP 409"


@pytest.mark.parametrize(
    "reply",
    [
        httpx.Response(200, content=b"not json"),
        httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response", "entry": []}),
        transaction_response(*["201"] * 8),  # locations of the wrong resource type
    ],
)
def test_unusable_transaction_response_before_a_later_chunk_is_permanent(reply: httpx.Response) -> None:
    server = FakeFhir()
    server.canned[1] = reply
    result = fhir(server).send(lab_bundle(), message_id="m")
    assert result.outcome is Outcome.PERMANENT
    assert result.error is not None and result.error.startswith("transaction 1/2: transaction-response gives no ")
    assert len(server.transactions) == 1


def test_returned_resource_stands_in_for_a_missing_location() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        sent = orjson.loads(request.content)["entry"]
        entries = [
            {"response": {"status": "201"}, "resource": {**e["resource"], "id": f"x{n}"}} for n, e in enumerate(sent)
        ]
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response", "entry": entries})

    seen: list[bytes] = []
    result = fhir(lambda r: seen.append(r.content) or handler(r)).send(lab_bundle(), message_id="m")
    assert result.outcome is Outcome.SENT, result.error
    assert b'"Patient/x0"' in seen[1]


def node(name: str, *refs: str) -> dict[str, Any]:
    return {
        "fullUrl": full_url("Basic", name),
        "resource": {"resourceType": "Basic", "ref": [{"reference": full_url("Basic", r)} for r in refs]},
    }


def test_plan_keeps_bundle_order_when_nothing_references() -> None:
    entries = [node(str(n)) for n in range(7)]
    assert plan_chunks(entries, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert plan_chunks(entries[:3], 3) == [[0, 1, 2]]
    assert plan_chunks([], 3) == []


def test_plan_puts_a_reference_cycle_in_one_chunk() -> None:
    entries = [node("a", "c"), node("b"), node("c", "d"), node("d", "c"), node("e", "a")]
    chunks = plan_chunks(entries, 2)
    assert [2, 3] in chunks
    flat = [i for c in chunks for i in c]
    assert flat.index(0) > flat.index(2) and flat.index(4) > flat.index(0)
    assert all(len(c) <= 2 for c in chunks)


def test_cycle_larger_than_the_limit_is_permanent_and_nothing_is_sent() -> None:
    entries = [node("a", "b"), node("b", "c"), node("c", "a")]
    calls: list[httpx.Request] = []
    dest = fhir(lambda r: calls.append(r) or httpx.Response(200), max_entries_per_transaction=2)
    result = dest.send({"resourceType": "Bundle", "type": "transaction", "entry": entries}, message_id="m")
    assert result.outcome is Outcome.PERMANENT
    assert result.error == "reference cycle of 3 entries exceeds max_entries_per_transaction (2)"
    assert calls == []


def test_dependencies_see_urn_uuids_anywhere_but_their_own_full_url() -> None:
    a, b = full_url("Basic", "a"), full_url("Basic", "b")
    entries = [
        {"fullUrl": a, "resource": {"resourceType": "Basic", "note": a}},
        {
            "fullUrl": b,
            "resource": {"resourceType": "Basic"},
            "request": {"method": "PUT", "url": f"Basic?subject={a}"},
        },
    ]
    assert dependencies(entries) == [set(), {0}]


def test_rewrite_replaces_whole_and_embedded_references_without_mutating() -> None:
    a, b = full_url("Basic", "a"), full_url("Basic", "b")
    value = {"x": [{"reference": a}, {"reference": b}], "url": f"Basic?subject={a}", "n": 1}
    assert rewrite(value, {a: "Basic/1"}) == {
        "x": [{"reference": "Basic/1"}, {"reference": b}],
        "url": "Basic?subject=Basic/1",
        "n": 1,
    }
    assert value["x"][0] == {"reference": a}


@pytest.mark.parametrize(
    ("location", "reference"),
    [
        ("Patient/123", "Patient/123"),
        ("Patient/123/_history/1", "Patient/123"),
        ("https://ehr.test/fhir/R4/Observation/a-b.c/_history/7?x=1", "Observation/a-b.c"),
        ("/fhir/Encounter/9/", "Encounter/9"),
        ("123", None),
        ("patient/123", None),
        ("Patient/has space", None),
    ],
)
def test_location_reference(location: str, reference: str | None) -> None:
    assert location_reference(location) == reference


def test_malformed_bundle_is_permanent() -> None:
    result = fhir(FakeFhir()).send({"resourceType": "Bundle", "entry": "nope"}, message_id="m")
    assert (result.outcome, result.error) == (Outcome.PERMANENT, "Bundle.entry is not a list of entries")


def test_concurrent_sends_share_one_destination() -> None:
    server = FakeFhir()
    dest = fhir(server)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda k: dest.send(lab_bundle(key=str(k)), message_id=str(k)), range(16)))
    assert all(r.outcome is Outcome.SENT for r in results)
    assert len(server.transactions) == 32 and len(server.ids) == 16 * 11
    dest.close()
