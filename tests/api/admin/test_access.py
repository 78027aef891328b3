"""Access to the admin API: bearer tokens with roles, answered before the body is read; the audit trail."""

from __future__ import annotations

import socket
import time

from tests.api.admin.conftest import AdminAPI


def test_tokens_route_needs_an_admin_token(admin_api: AdminAPI) -> None:
    r = admin_api.client(None).get("/api/v1/tokens")
    assert (r.status_code, r.headers["www-authenticate"]) == (401, "Bearer")
    assert r.headers["content-type"] == "application/problem+json"
    r = admin_api.client(None).get("/api/v1/tokens", headers={"Authorization": "Bearer il_nope"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer error=")
    for role in ("viewer", "operator"):
        assert admin_api.client(role).get("/api/v1/tokens").status_code == 403
    listed = admin_api.client("admin").get("/api/v1/tokens").json()["tokens"]
    assert {t["role"] for t in listed} == {"viewer", "operator", "admin"}
    assert all("token" not in t and "secret_hash" not in t for t in listed)


def test_created_token_works_once_shown_and_revoked_is_refused(admin_api: AdminAPI) -> None:
    admin = admin_api.client("admin")
    r = admin.post("/api/v1/tokens", json={"role": "viewer", "name": "night shift"})
    assert r.status_code == 201
    made = r.json()
    assert made["token"].startswith("il_") and made["role"] == "viewer"
    new = admin_api.client(None, headers={"Authorization": f"Bearer {made['token']}"})
    assert new.get("/api/v1/tokens").status_code == 403  # valid, but a viewer
    assert admin.delete(f"/api/v1/tokens/{made['id']}").json()["revoked_at"] is not None
    assert new.get("/api/v1/tokens").status_code == 401
    listed = {t["id"]: t for t in admin.get("/api/v1/tokens").json()["tokens"]}
    assert listed[made["id"]]["revoked_at"] is not None
    assert admin.delete("/api/v1/tokens/nosuchtoken").status_code == 404


def test_unauthenticated_post_is_refused_before_its_body_is_read(admin_api: AdminAPI) -> None:
    host, port = admin_api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 10000000\r\n\r\n{"role"'
        )
        started = time.monotonic()
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 401"), head[:40]
    assert b"\r\nwww-authenticate: bearer\r\n" in head.lower()
    assert time.monotonic() - started < 10  # answered without waiting for the 10 MB that never come


def test_me_says_who_the_caller_is(admin_api: AdminAPI) -> None:
    assert admin_api.client(None).get("/api/v1/me").status_code == 401
    for role in ("viewer", "operator", "admin"):
        assert admin_api.client(role).get("/api/v1/me").json() == {
            "token_id": admin_api.token_ids[role], "name": f"test-{role}", "role": role
        }  # fmt: skip


def test_a_store_that_cannot_be_read_is_a_503_not_a_500(admin_api: AdminAPI) -> None:
    viewer = admin_api.client("viewer")
    admin_api.store.work.dispose()
    (admin_api.tmp / "store.db").rename(admin_api.tmp / "moved.db")
    (admin_api.tmp / "store.db").mkdir()  # the database is now a folder: every connection fails
    try:
        r = viewer.get("/api/v1/me")
        assert (r.status_code, r.json()["type"], r.headers["retry-after"]) == (
            503, "urn:interlink:problem:store-unavailable", "5"
        )  # fmt: skip
    finally:
        (admin_api.tmp / "store.db").rmdir()
        (admin_api.tmp / "moved.db").rename(admin_api.tmp / "store.db")


#: every route of the foundation modules and the lowest role it takes (actions that change nothing here:
#: unknown names and ids, so the matrix can run in any order)
ROUTES = [
    ("GET", "/api/v1/me", "viewer"),
    ("GET", "/api/v1/channels", "viewer"),
    ("GET", "/api/v1/queues", "viewer"),
    ("POST", "/api/v1/channels/nosuch/stop", "admin"),
    ("POST", "/api/v1/channels/nosuch/pause", "admin"),
    ("POST", "/api/v1/channels/reload", "admin"),
    ("GET", "/api/v1/tokens", "admin"),
    ("POST", "/api/v1/tokens", "admin"),
    ("DELETE", "/api/v1/tokens/nosuch", "admin"),
    ("GET", "/api/v1/audit", "admin"),
]
ORDER = ["viewer", "operator", "admin"]


def test_role_matrix_and_bad_or_revoked_tokens(admin_api: AdminAPI) -> None:
    admin = admin_api.client("admin")
    made = admin.post("/api/v1/tokens", json={"role": "admin", "name": "soon revoked"}).json()
    admin.delete(f"/api/v1/tokens/{made['id']}")
    bad = {"wrong": "Bearer il_" + "A" * 43, "revoked": f"Bearer {made['token']}", "malformed": "Basic abc"}
    refused = {what: admin_api.client(None, headers={"Authorization": v}) for what, v in bad.items()}
    callers = {role: admin_api.client(role) for role in ORDER}
    for method, path, lowest in ROUTES:
        for what, c in refused.items():
            assert c.request(method, path, json={}).status_code == 401, (method, path, what)
        for role, c in callers.items():
            r = c.request(method, path, json={"role": "nosuch"})
            allowed = ORDER.index(role) >= ORDER.index(lowest)
            assert (r.status_code not in (401, 403)) == allowed, (method, path, role, r.status_code)
