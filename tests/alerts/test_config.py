"""A channel file's ``alerts:`` is checked when loaded: errors name the file and line, never a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.channel import load_channel
from engine.errors import ConfigError

CHANNEL = """\
name: lab
source: {type: mllp, port: 0}
identifiers: {authority: HOSP}
destinations: [{name: file, type: file, path: out.ndjson}]
alerts:
  targets:
    - {type: http, name: oncall, url: "https://pager.test/hook", signing: {secret_env: PAGER_SECRET}}
  rules:
%s
"""


def load(tmp_path: Path, rules: str) -> object:
    path = tmp_path / "lab.yaml"
    path.write_text(CHANNEL % rules)
    return load_channel(path)


def test_a_valid_file(tmp_path: Path) -> None:
    ch = load(tmp_path, '    - {kind: silence, minutes: 30, target: oncall, hours: {from: "07:00", to: "19:00"}}\n'
                        "    - {kind: error_rate, percent: 5, target: oncall}")  # fmt: skip
    assert [r.rule_name for r in ch.alerts.rules] == ["silence", "error_rate"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("rules", "why"),
    [
        ("    - {kind: dead_letters, target: pager}", "unknown alert target(s) ['pager']"),
        (
            "    - {kind: queue_age, seconds: 60, target: oncall}\n    - {kind: queue_age, seconds: 9, target: oncall}",
            "alert rule names must be unique",
        ),
        ("    - {kind: silence, minutes: 5, target: oncall, hours: {timezone: Mars/Olympus}}", "unknown time zone"),
        ("    - {kind: loud, target: oncall}", "kind"),
        ("    - {kind: error_rate, percent: 150, target: oncall}", "percent"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, rules: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, rules)
    text = str(err.value)
    assert why in text and f"{tmp_path / 'lab.yaml'}:" in text


def test_a_critical_rule_needs_comparator_and_value_together(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text((CHANNEL % "    []").replace("  rules:\n    []", "  critical: {target: oncall, rules: "
                    "[{name: k, system: 'http://loinc.org', code: 2823-3, comparator: '>'}]}"))  # fmt: skip
    with pytest.raises(ConfigError, match="give comparator and value together"):
        load_channel(path)
