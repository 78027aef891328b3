"""The YAML reader of channel, settings and mapping files: safe, strict, and every error at its line."""

from __future__ import annotations

import pytest

from engine.config import yamlfile
from engine.errors import ConfigError


def test_values_and_their_lines_are_read() -> None:
    doc = yamlfile.parse("a: 1\nb:\n  - x\n  - {c: true}\n", "f.yaml")
    assert doc.data == {"a": 1, "b": ["x", {"c": True}]}
    assert doc.lines[("b", 1, "c")] == 4


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("a: 1\na: 2\n", 2, "duplicate key"),
        ("a: [1,\n b", 3, "YAML syntax error"),
        ("ok: 1\nx: !!python/object/apply:os.system [echo]\n", 2, "python tags"),  # never executed
        ("x: !!python/name:os.system\n", 1, "python tags"),
        ("base: &b {a: 1}\nc:\n  <<: *b\n", 3, "merge keys"),
    ],
)
def test_bad_yaml_is_a_config_error_at_its_line(text: str, line: int, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        yamlfile.parse(text, "f.yaml")
    assert f"f.yaml:{line}:" in str(err.value)
    assert says in str(err.value)
