"""``/api/v1/users`` and ``interlink token users|revoke-user``: tokens grouped by the name they were given to;
revoking a name refuses all its tokens at once, leaves others working, and audits token ids only."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from engine.cli import app
from tests.api.admin.conftest import AdminAPI


def test_users_needs_an_admin_token(admin_api: AdminAPI) -> None:
    for method, path in (("GET", "/api/v1/users"), ("POST", "/api/v1/users/test-admin/revoke")):
        assert admin_api.client(None).request(method, path).status_code == 401
        for role in ("viewer", "operator"):
            assert admin_api.client(role).request(method, path).status_code == 403
    assert admin_api.client("admin").get("/api/v1/users").status_code == 200


def test_users_group_tokens_by_name_and_revoke_all_of_one(admin_api: AdminAPI) -> None:
    admin = admin_api.client("admin")
    name = "Ann O'Neil / ward 3"  # a person's name, with a slash
    made = [
        admin.post("/api/v1/tokens", json={"role": role, "name": name}).json()
        for role in ("operator", "viewer", "viewer")
    ]
    other = admin.post("/api/v1/tokens", json={"role": "viewer", "name": "Bob"}).json()
    admin.delete(f"/api/v1/tokens/{made[2]['id']}")
    clients = [admin_api.client(None, headers={"Authorization": f"Bearer {m['token']}"}) for m in (*made, other)]
    assert clients[0].get("/api/v1/me").status_code == 200  # used: last_used_at set

    listed = {u["name"]: u for u in admin.get("/api/v1/users").json()["users"]}
    assert set(listed) == {name, "Bob", "test-viewer", "test-operator", "test-admin"}
    ann = listed[name]
    assert (ann["roles"], ann["live"], ann["revoked"]) == (["viewer", "operator"], 2, 1)
    assert ann["created_at"] == min(m["created_at"] for m in made) and ann["last_used_at"] is not None
    assert (listed["Bob"]["roles"], listed["Bob"]["live"], listed["Bob"]["last_used_at"]) == (["viewer"], 1, None)

    r = admin.post(f"/api/v1/users/{name}/revoke")
    assert r.status_code == 200
    body = r.json()
    assert sorted(body["revoked_tokens"]) == sorted(m["id"] for m in made[:2])
    assert (body["roles"], body["live"], body["revoked"]) == ([], 0, 3)
    assert [c.get("/api/v1/me").status_code for c in clients] == [401, 401, 401, 200]
    assert admin.get("/api/v1/me").status_code == 200

    again = admin.post(f"/api/v1/users/{name}/revoke").json()  # nothing live: nothing done, nothing audited
    assert again["revoked_tokens"] == [] and again["revoked"] == 3
    assert admin.post("/api/v1/users/nobody/revoke").status_code == 404

    entries = admin.get("/api/v1/audit", params={"action": "user.revoke"}).json()["entries"]
    assert sorted(e["target"] for e in entries) == sorted(body["revoked_tokens"])
    assert all(e["message_ids"] == [] and e["token_id"] == admin_api.token_ids["admin"] for e in entries)
    assert "Ann" not in str(entries)  # the name (a person's) is not in the audit trail


def test_token_users_and_revoke_user_cli(admin_api: AdminAPI) -> None:
    config = admin_api.tmp / "engine.yaml"
    config.write_text(yaml.safe_dump({"database_url": admin_api.engine.settings.database_url,
                                      "data_dir": str(admin_api.tmp / "data")}))  # fmt: skip

    def run(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(app, ["token", *args, "--config", str(config)])
        return result.exit_code, result.stdout, result.stderr

    code, out, _ = run("users")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert code == 0 and set(lines) == {"test-viewer", "test-operator", "test-admin"}
    assert "operator" in lines["test-operator"] and "1 live 0 revoked" in lines["test-operator"]

    code, out, _ = run("revoke-user", "test-operator")
    assert code == 0 and admin_api.token_ids["operator"] in out
    assert admin_api.client("operator").get("/api/v1/me").status_code == 401
    assert admin_api.client("viewer").get("/api/v1/me").status_code == 200
    assert "0 live 1 revoked" in run("users")[1]
    assert run("revoke-user", "nobody")[0] == 1

    entries = admin_api.client("admin").get("/api/v1/audit", params={"action": "user.revoke"}).json()["entries"]
    assert [(e["target"], e["token_id"], e["peer"]) for e in entries] == [(admin_api.token_ids["operator"], "", "cli")]
