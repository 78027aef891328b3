"""``interlink token create|list|revoke`` on the store named by the settings file, with no engine in the CLI's
process: a token it prints (its last line) works against the running engine's admin API at once."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from engine.cli import app
from tests.api.admin.conftest import AdminAPI


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_token_create_list_revoke(admin_api: AdminAPI) -> None:
    config = admin_api.tmp / "engine.yaml"
    config.write_text(yaml.safe_dump({"database_url": admin_api.engine.settings.database_url,
                                      "data_dir": str(admin_api.tmp / "data")}))  # fmt: skip
    code, out, _ = run("token", "create", "--role", "operator", "--name", "ops", "--config", str(config))
    assert code == 0
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("il_")
    token_id = out.split()[1]
    c = admin_api.client(None, headers={"Authorization": f"Bearer {secret}"})
    assert c.get("/api/v1/channels").status_code == 200
    assert c.get("/api/v1/tokens").status_code == 403  # an operator

    code, out, _ = run("token", "list", "--config", str(config))
    listed = [line for line in out.splitlines() if line.startswith(token_id)]
    assert code == 0 and len(listed) == 1 and "operator" in listed[0] and secret not in out

    assert run("token", "revoke", token_id, "--config", str(config))[0] == 0
    assert c.get("/api/v1/channels").status_code == 401
    code, _, err = run("token", "revoke", token_id, "--config", str(config))
    assert code == 1 and "already revoked" in err
    assert run("token", "create", "--role", "root", "--config", str(config))[0] == 1

    entries = admin_api.client("admin").get("/api/v1/audit", params={"action": "token."}).json()["entries"]
    assert [(e["action"], e["target"], e["token_id"], e["peer"]) for e in entries] == [
        ("token.revoke", token_id, "", "cli"), ("token.create", token_id, "", "cli")
    ]  # fmt: skip
