"""The audit trail: admin only, newest first by cursor, stable while rows are appended, never editable; and
every admin route (of every module) refuses a request without a token before reading its body."""

from __future__ import annotations

import re
import threading

import httpx

from engine.store.access import AuditTrail
from tests.api.admin.conftest import AdminAPI


def test_audit_is_admin_only_and_cannot_be_changed(admin_api: AdminAPI) -> None:
    assert admin_api.client(None).get("/api/v1/audit").status_code == 401
    for role in ("viewer", "operator"):
        assert admin_api.client(role).get("/api/v1/audit").status_code == 403
    admin = admin_api.client("admin")
    admin.post("/api/v1/tokens", json={"role": "viewer"})
    [entry] = admin.get("/api/v1/audit").json()["entries"]
    for method in ("DELETE", "PUT", "PATCH", "POST"):
        assert admin.request(method, "/api/v1/audit").status_code == 405
        assert admin.request(method, f"/api/v1/audit/{entry['id']}").status_code in (404, 405)
    assert admin.get("/api/v1/audit").json()["entries"] == [entry]
    assert admin.get("/api/v1/audit", params={"cursor": "x'; drop"}).status_code == 400
    assert admin.get("/api/v1/audit", params={"limit": "0"}).status_code == 400


def test_pages_are_stable_while_rows_are_appended(admin_api: AdminAPI) -> None:
    trail = AuditTrail(admin_api.store)
    before = [trail.append(token_id="t", actor="a", role="admin", action="test.old", message_ids=[f"m{i}"])
              for i in range(120)]  # fmt: skip
    stop = threading.Event()

    def append() -> None:
        while not stop.is_set():
            trail.append(token_id="t", actor="a", role="admin", action="test.new")

    writer = threading.Thread(target=append)
    writer.start()
    seen: list[int] = []
    try:
        admin = admin_api.client("admin")
        page = admin.get("/api/v1/audit", params={"limit": 25, "action": "test."}).json()
        seen += [e["id"] for e in page["entries"]]
        while page["next_cursor"]:
            page = admin.get("/api/v1/audit", params={"limit": 25, "action": "test.",
                                                      "cursor": page["next_cursor"]}).json()  # fmt: skip
            seen += [e["id"] for e in page["entries"]]
    finally:
        stop.set()
        writer.join()
    assert len(seen) == len(set(seen)), "a row was listed twice"
    assert seen == sorted(seen, reverse=True)
    assert set(before) <= set(seen), "a row that existed when paging began was skipped"
    one = admin_api.client("admin").get("/api/v1/audit", params={"message_id": "m7"}).json()["entries"]
    assert [e["message_ids"] for e in one] == [["m7"]]


def test_every_admin_route_refuses_without_a_token_before_the_body(admin_api: AdminAPI) -> None:
    app = admin_api.engine.http.config.app  # type: ignore[union-attr]
    checked = 0
    with httpx.Client(base_url=admin_api.url, timeout=10) as c:
        for route in app.routes:
            path = getattr(route, "path", "")
            if not path.startswith("/api/v1/"):
                continue
            url = re.sub(r"\{[^}]+\}", "x", path)
            for method in sorted(getattr(route, "methods", None) or {"GET"}):
                if method == "HEAD":
                    continue
                r = c.request(method, url, content=b"{", headers={"content-type": "application/json"})
                assert (r.status_code, r.headers.get("www-authenticate")) == (401, "Bearer"), (method, path)
                checked += 1
    assert checked >= 7


def test_openapi_lists_the_admin_routes(admin_api: AdminAPI) -> None:
    paths = httpx.get(f"{admin_api.url}/openapi.json").json()["paths"]
    assert {"/api/v1/tokens", "/api/v1/tokens/{token_id}", "/api/v1/channels", "/api/v1/channels/reload",
            "/api/v1/channels/{name}/{action}", "/api/v1/queues", "/api/v1/audit"} <= set(paths)  # fmt: skip
    assert paths["/api/v1/channels/{name}/{action}"]["post"]["security"] == [{"bearer": []}]
