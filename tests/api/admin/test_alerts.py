"""``/api/v1/alerts`` on a running engine: viewer lists (metadata only, by cursor), operator acknowledges
(audited), resolved and unknown alerts refused; and no route without a token."""

from __future__ import annotations

from engine.alerts.book import AlertBook, NewAlert, dedupe_key
from engine.store.access import AuditTrail
from tests.api.admin.conftest import AdminAPI


def raise_some(api: AdminAPI, n: int) -> list[str]:
    book = AlertBook(api.store)
    new = [NewAlert("events", "critical", "HH", dedupe_key("critical", f"m{i}", "urn:uuid:x"),
                    {"observation": "urn:uuid:x", "interpretation": "HH"}, message_id=f"{i:032x}")
           for i in range(n)]  # fmt: skip
    return [alert_id for alert_id, _ in book.raise_alerts(new)]


def test_list_by_cursor_and_filters(admin_api: AdminAPI) -> None:
    ids = raise_some(admin_api, 5)
    rule = NewAlert("events", "queue_age", "queue_age", dedupe_key("rule", "events", "queue_age"), {"oldest_s": 9.0})
    [(rule_id, _)] = AlertBook(admin_api.store).raise_alerts([rule])
    assert admin_api.client(None).get("/api/v1/alerts").status_code == 401
    viewer = admin_api.client("viewer")
    page = viewer.get("/api/v1/alerts", params={"limit": 4}).json()
    assert [a["id"] for a in page["items"]] == [rule_id, *ids[::-1][:3]]
    rest = viewer.get("/api/v1/alerts", params={"limit": 4, "cursor": page["next"]}).json()
    assert [a["id"] for a in rest["items"]] == ids[1::-1] and rest["next"] is None
    first = page["items"][1]
    assert first["kind"] == "critical" and first["state"] == "open" and first["detail"]["interpretation"] == "HH"
    assert first["raised_at"].endswith("Z") and first["acked_at"] is None
    critical = viewer.get("/api/v1/alerts", params={"kind": "critical", "state": "active"}).json()["items"]
    assert len(critical) == 5
    assert viewer.get("/api/v1/alerts", params={"channel": "other"}).json()["items"] == []
    for bad in ({"state": "closed"}, {"kind": "x"}, {"limit": "0"}, {"cursor": "'; drop"}):
        assert viewer.get("/api/v1/alerts", params=bad).status_code == 400


def test_ack_is_for_operators_and_audited(admin_api: AdminAPI) -> None:
    [alert_id] = raise_some(admin_api, 1)
    assert admin_api.client(None).post(f"/api/v1/alerts/{alert_id}/ack").status_code == 401
    assert admin_api.client("viewer").post(f"/api/v1/alerts/{alert_id}/ack").status_code == 403
    operator = admin_api.client("operator")
    answer = operator.post(f"/api/v1/alerts/{alert_id}/ack")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["state"], body["acked_by"]) == ("acknowledged", "test-operator") and body["acked_at"]
    assert operator.post(f"/api/v1/alerts/{alert_id}/ack").json()["acked_at"] == body["acked_at"]  # no change
    assert admin_api.client("viewer").get("/api/v1/alerts", params={"state": "active"}).json()["items"] == []
    assert AlertBook(admin_api.store).count_active() == 0  # an acknowledged critical result is done
    entries = AuditTrail(admin_api.store).page(action="alert.ack").entries
    assert len(entries) == 2
    assert entries[0].target == alert_id and entries[0].token_id == admin_api.token_ids["operator"]
    assert list(entries[0].message_ids) == [f"{0:032x}"]
    assert operator.post(f"/api/v1/alerts/{'0' * 32}/ack").status_code == 404
    assert operator.post("/api/v1/alerts/nope/ack").status_code == 404


def test_a_resolved_alert_cannot_be_acknowledged(admin_api: AdminAPI) -> None:
    book = AlertBook(admin_api.store)
    rule = NewAlert("events", "silence", "silence", dedupe_key("rule", "events", "silence"), {})
    [(alert_id, _)] = book.raise_alerts([rule])
    assert book.resolve(alert_id)
    answer = admin_api.client("operator").post(f"/api/v1/alerts/{alert_id}/ack")
    assert answer.status_code == 409 and answer.headers["content-type"] == "application/problem+json"
    [entry] = AuditTrail(admin_api.store).page(action="alert.ack").entries
    assert entry.outcome == "refused"
    assert book.get(alert_id).state == "resolved"


def test_routes_in_openapi(admin_api: AdminAPI) -> None:
    paths = admin_api.client(None).get("/openapi.json").json()["paths"]
    assert set(paths["/api/v1/alerts"]) == {"get"} and set(paths["/api/v1/alerts/{id}/ack"]) == {"post"}
