"""What a first-time user meets: ``-h``, ``--version``, and a store command run outside a project folder."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_short_help_flag_prints_usage() -> None:
    code, out, _ = run("-h")
    assert code == 0 and "Usage" in out and "messages" in out
    code, out, _ = run("messages", "-h")
    assert code == 0 and "list" in out


def test_version_flag_prints_the_package_version() -> None:
    code, out, _ = run("--version")
    assert code == 0
    assert out.strip() == f"interlink {version('interlink')}"


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder that is not a project: no config/engine.yaml, no settings in the environment."""
    for var in ("INTERLINK_CONFIG", "INTERLINK_DATABASE_URL", "INTERLINK_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", [["status"], ["messages", "list"], ["dlq", "list"]])
def test_outside_a_project_says_what_it_looked_for_and_creates_nothing(elsewhere: Path, command: list[str]) -> None:
    code, _, err = run(*command)
    assert code == 1
    assert "config/engine.yaml" in err and "no message store at data/interlink.db" in err
    assert list(elsewhere.iterdir()) == []  # no empty store, no data folder


def test_an_existing_store_is_read_without_a_settings_file(elsewhere: Path) -> None:
    from engine.store import Store

    (elsewhere / "data").mkdir()
    Store("sqlite:///data/interlink.db").close()
    code, out, _ = run("status")
    assert code == 0 and "no messages stored" in out
