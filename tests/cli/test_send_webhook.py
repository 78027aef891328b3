"""``interlink send --channel <webhook channel>`` prints each file's answer as it arrives (``post_files``'s
``on_answer`` is told before the next file is posted) and exits 1 when one was refused; a real engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

from engine.config.channel import load_channels
from engine.settings import Settings
from engine.sources.webhook_client import post_files
from tests.api.admin.conftest import AdminAPI, admin_api_factory  # noqa: F401 (the fixture)
from tests.api.admin.test_channels import PATIENT
from tests.cli.test_actions import _config, cli


def test_each_answer_is_printed_as_it_arrives(admin_api_factory: Callable[..., AdminAPI], tmp_path: Path) -> None:  # noqa: F811
    api = admin_api_factory()
    config = _config(api, tmp_path)
    good, broken, other = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    good.write_bytes(orjson.dumps(PATIENT))
    other.write_bytes(orjson.dumps(PATIENT))
    broken.write_bytes(b'{"resourceType": "Patient", ')  # not JSON: refused
    settings = Settings.load(config)
    (channel,) = load_channels([settings.channels_dir])
    stored_at_answer: list[int] = []

    def on_answer(i: int, status: int, text: str) -> None:
        stored_at_answer.append(len(api.store.list_messages(limit=100)))

    answers = post_files(settings, channel, [good, other], on_answer=on_answer)
    assert [s for s, _ in answers] == [202, 202] and stored_at_answer == [1, 2]  # told before the next POST

    code, out, _ = cli(config, "send", "--channel", "events", str(good), str(broken), str(other))
    lines = out.splitlines()
    assert code == 1 and len(lines) == 3
    assert lines[0].startswith(f"{good}: 202 ") and lines[2].startswith(f"{other}: 202 ")
    assert lines[1].startswith(f"{broken}: 4")
