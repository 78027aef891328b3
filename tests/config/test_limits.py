"""The caps on one HL7 message and batch are settable: engine settings ``limits:`` and a channel's ``limits:``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from engine.config.channel import load_channel
from engine.errors import ConfigError
from engine.runtime import load_config
from engine.settings import Settings
from engine.sources.hl7 import channel_limits
from engine.transform.limits import Limits, LimitsOverride

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("model", [Limits, LimitsOverride])
def test_every_cap_is_described(model: type[BaseModel]) -> None:
    assert all(f.description for f in model.model_fields.values())
    assert set(LimitsOverride.model_fields) == set(Limits.model_fields)  # a channel can lower every cap


def test_engine_yaml_documents_the_defaults() -> None:
    documented = yaml.safe_load((ROOT / "config" / "engine.yaml").read_text())["limits"]
    assert documented == Limits().model_dump()


def test_settings_file_and_environment_set_the_caps(tmp_path: Path) -> None:
    path = tmp_path / "engine.yaml"
    path.write_text("limits:\n  max_repetitions: 50\n  max_batch_messages: 10\n")
    s = Settings.load(path, env={"INTERLINK_LIMITS__MAX_SEGMENTS": "300"})
    assert (s.limits.max_repetitions, s.limits.max_batch_messages, s.limits.max_segments) == (50, 10, 300)
    assert s.limits.max_bytes == Limits().max_bytes
    path.write_text("limits:\n  max_repetition: 50\n")
    with pytest.raises(ConfigError, match=r"engine\.yaml:2.*max_repetition"):
        Settings.load(path, env={})


def _channel_file(tmp_path: Path, limits: object) -> Path:
    path = tmp_path / "adt.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "adt",
                "source": {"type": "mllp", "port": 0},
                "limits": limits,
                "destinations": [{"name": "out", "type": "file", "path": "x.ndjson"}],
            }
        )
    )
    return path


def test_a_channel_lowers_the_engine_caps(tmp_path: Path) -> None:
    ch = load_channel(_channel_file(tmp_path, {"max_segments": 50, "max_batch_messages": 0}))
    caps = channel_limits(Limits(max_segments=100), ch)
    assert (caps.max_segments, caps.max_batch_messages, caps.max_repetitions) == (50, 0, Limits().max_repetitions)
    assert channel_limits(Limits(), load_channel(_channel_file(tmp_path, None))) == Limits()


def test_a_channel_may_not_raise_a_cap(tmp_path: Path) -> None:
    ch = load_channel(_channel_file(tmp_path, {"max_bytes": 64 * 1024 * 1024}))
    with pytest.raises(ConfigError, match=r"channel adt: .*not raise them: max_bytes = 67108864 \(engine: 16777216\)"):
        channel_limits(Limits(), ch)


@pytest.mark.parametrize(
    ("limits", "error"), [({"max_segments": 0}, "greater than or equal to 1"), ({"max_segment": 5}, "max_segment")]
)
def test_channel_limits_are_checked_with_their_line(tmp_path: Path, limits: dict, error: str) -> None:
    with pytest.raises(ConfigError, match=rf"adt\.yaml:\d+.*{error}"):
        load_channel(_channel_file(tmp_path, limits))


def test_the_worker_holds_messages_to_the_engine_caps(tmp_path: Path) -> None:
    """The runtime compiles the maps with the engine's caps: the transform refuses over them."""
    maps = tmp_path / "maps" / "hl7v2" / "messages"
    maps.mkdir(parents=True)
    (maps / "ADT_A01.yaml").write_text("description: Takes ADT^A01.\naccepts: [ADT^A01]\nresources: {}\n")
    (tmp_path / "channels").mkdir()
    settings = Settings.model_validate(
        {"mappings_dir": tmp_path / "maps", "channels_dir": tmp_path / "channels", "limits": {"max_repetitions": 3}}
    )
    _, mappings = load_config(settings)
    assert mappings.limits.max_repetitions == 3
