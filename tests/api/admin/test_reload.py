"""Channel reload from a terminal (``interlink reload``, through the running engine's admin API) and by the
opt-in watcher (``channels_watch_s``): a valid change is applied, an invalid file is refused naming its
file:line while the running version stays, and each is audited."""

from __future__ import annotations

from collections.abc import Callable

import yaml
from typer.testing import CliRunner

from engine.cli import app
from tests.api.admin.conftest import AdminAPI
from tests.api.running import webhook_channel
from tests.integration.harness import wait_until

PATIENT = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN-1"}]}
FHIR = {"content-type": "application/fhir+json"}


def test_interlink_reload(admin_api: AdminAPI) -> None:
    config = admin_api.tmp / "engine.yaml"
    config.write_text(yaml.safe_dump({"http_host": "127.0.0.1", "http_port": admin_api.running.port}))
    channels = admin_api.tmp / "channels"
    (channels / "broken.yaml").write_text("name: broken\nsource: {type: webhook}\ndestinations: 3\n")

    def reload(*extra: str) -> tuple[int, str, str]:
        r = CliRunner().invoke(app, ["reload", "--config", str(config), *extra])
        return r.exit_code, r.stdout, r.stderr

    code, _, err = reload()
    assert code == 1 and "INTERLINK_TOKEN" in err
    code, _, err = reload("--token", admin_api.tokens["viewer"])
    assert code == 1 and "403" in err
    code, _, err = reload("--token", admin_api.tokens["admin"])
    assert code == 1 and "broken.yaml:2: source.auth" in err and "destinations" in err
    (channels / "broken.yaml").unlink()
    (channels / "second.yaml").write_text(yaml.safe_dump(webhook_channel("second", out=admin_api.tmp / "out")))
    assert reload("--token", admin_api.tokens["admin"])[:2] == (0, "reloaded: second\n")
    assert admin_api.client(None).post("/webhooks/second", json=PATIENT, headers=FHIR).status_code == 202


def test_watched_channel_files_are_applied_when_they_change(admin_api_factory: Callable[..., AdminAPI]) -> None:
    api = admin_api_factory(channels_watch_s=0.1)
    admin, channels = api.client("admin"), api.tmp / "channels"

    def reloads() -> list[tuple[str, str, str, str]]:
        entries = admin.get("/api/v1/audit", params={"action": "channel.reload"}).json()["entries"]
        return [(e["actor"], e["peer"], e["target"], e["outcome"]) for e in reversed(entries)]

    (channels / "broken.yaml").write_text("name: broken\nsource: {type: webhook}\ndestinations: 3\n")
    wait_until(lambda: len(reloads()) == 1, 30, "the watcher tried the broken file")
    assert reloads() == [("engine", "watch", "", "refused")]
    assert api.client(None).post("/webhooks/events", json=PATIENT, headers=FHIR).status_code == 202
    (channels / "broken.yaml").unlink()
    (channels / "second.yaml").write_text(yaml.safe_dump(webhook_channel("second", out=api.tmp / "out")))
    # (a look between the unlink and the write applies nothing, an "ok" row without target: wait for the change)
    wait_until(lambda: ("engine", "watch", "second", "ok") in reloads(), 30, "the watcher applied the change")
    assert reloads()[-1] == ("engine", "watch", "second", "ok")
    assert api.client(None).post("/webhooks/second", json=PATIENT, headers=FHIR).status_code == 202
