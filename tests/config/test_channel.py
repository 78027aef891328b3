"""Channel files: validation errors name file and line; env interpolation; destination conditions."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.channel import load_channel, load_channels
from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
name: lab
source:
  type: mllp
  port: ${LAB_PORT:-2575}
destinations:
  - name: ehr
    type: fhir
    when: {env_set: TEST_FHIR_URL}
    base_url: ${TEST_FHIR_URL:-}
  - name: out
    type: file
    when: {env_unset: TEST_FHIR_URL}
    path: data/out/lab.ndjson
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_example_channels_load() -> None:
    names = {c.name for c in load_channels([ROOT / "channels"])}
    assert {"lab-results", "adt"} <= names


def test_env_conditions_pick_destination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, GOOD)
    monkeypatch.delenv("TEST_FHIR_URL", raising=False)
    ch = load_channel(p)
    assert [d.type for d in ch.destinations] == ["file"] and ch.source.port == 2575
    monkeypatch.setenv("TEST_FHIR_URL", "http://127.0.0.1:9/fhir")
    monkeypatch.setenv("LAB_PORT", "3000")
    ch = load_channel(p)
    assert [d.type for d in ch.destinations] == ["fhir"] and ch.source.port == 3000


def test_unknown_field_names_its_line(tmp_path: Path) -> None:
    p = write(tmp_path, GOOD.replace("  port:", "  prot: 1\n  port:"))
    with pytest.raises(ConfigError) as e:
        load_channel(p)
    assert str(e.value).startswith(f"{p}:4: source.mllp.prot") or f"{p}:4:" in str(e.value)
    assert "unknown field" in str(e.value)


def test_bad_value_names_its_line(tmp_path: Path) -> None:
    p = write(tmp_path, GOOD.replace("${LAB_PORT:-2575}", "99999"))
    with pytest.raises(ConfigError, match=rf"{p}:4: "):
        load_channel(p)


def test_missing_env_var_is_an_error_at_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_SECRET", raising=False)
    p = write(tmp_path, GOOD.replace("path: data/out/lab.ndjson", "path: ${NOPE_SECRET}"))
    with pytest.raises(ConfigError, match=rf"{p}:13: environment variable NOPE_SECRET is not set"):
        load_channel(p)


def test_yaml_syntax_and_duplicate_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r":2: duplicate key 'name'"):
        load_channel(write(tmp_path, "name: a\nname: b\n"))
    with pytest.raises(ConfigError, match="YAML syntax error"):
        load_channel(write(tmp_path, "name: [a\n"))


def test_duplicate_channel_names_across_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_FHIR_URL", raising=False)
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD, "b.yaml")
    with pytest.raises(ConfigError, match="already used"):
        load_channels([tmp_path])


def test_error_in_second_destination_points_at_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_FHIR_URL", raising=False)
    p = write(tmp_path, GOOD.replace("    path: data/out/lab.ndjson", "    pth: data/out/lab.ndjson"))
    with pytest.raises(
        ConfigError, match=rf"{p}:10: destinations.1.path: required .* destinations.1.pth: unknown field \(line 13\)"
    ):
        load_channel(p)


def test_timezone_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_FHIR_URL", raising=False)
    assert load_channel(write(tmp_path, GOOD + "timezone: Europe/Paris\n")).timezone == "Europe/Paris"
    with pytest.raises(ConfigError, match=r":14: timezone: Value error, unknown time zone 'Mars/Olympus'"):
        load_channel(write(tmp_path, GOOD + "timezone: Mars/Olympus\n"))


def test_default_assigning_authority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_FHIR_URL", raising=False)
    assert not load_channel(write(tmp_path, GOOD)).identifiers.declares_default  # none unless declared
    ch = load_channel(
        write(
            tmp_path,
            GOOD + "identifiers:\n  by_facility: {NORTH: NORTHHOSP}\n  authority: urn:oid:2.16.840.1.113883.3.72\n",
        )
    )
    assert ch.identifiers.by_facility == {"NORTH": "NORTHHOSP"} and ch.identifiers.declares_default
    with pytest.raises(ConfigError, match=r":15: identifiers.by_facilty: .*unknown field"):
        load_channel(write(tmp_path, GOOD + "identifiers:\n  by_facilty: {NORTH: NORTHHOSP}\n"))
    with pytest.raises(ConfigError, match=r":15: identifiers.authority: .*pattern"):
        load_channel(write(tmp_path, GOOD + "identifiers:\n  authority: North Hospital\n"))


def test_example_channels_declare_a_default_authority() -> None:
    assert all(c.identifiers.declares_default for c in load_channels([ROOT / "channels"]))


def test_hl7_settings_belong_to_the_source(tmp_path: Path) -> None:
    ch = load_channel(
        write(tmp_path, GOOD.replace("  port: ${LAB_PORT:-2575}\n", "  port: 1\n  charset: latin-1\n  accept: [ORU]\n"))
    )
    assert ch.source.charset == "latin-1" and ch.source.accepts("ORU^R01") and not ch.source.accepts("ADT^A01")
    assert ch.source.dedupe.enabled
    old = write(tmp_path, GOOD + "accept: [ORU^R01]\n")
    with pytest.raises(ConfigError) as exc:
        load_channel(old)
    assert str(exc.value).startswith(f"{old}:14:") and "move it under `source:`" in str(exc.value)


def test_ordering_shorthand_and_defaults(tmp_path: Path) -> None:
    default = load_channel(write(tmp_path, GOOD))
    assert (default.ordering.mode, default.ordering.on_dead, default.ordering.stale_writes) == (
        "per_patient",
        "hold",
        "keep_newer",
    )
    strict = load_channel(write(tmp_path, GOOD + "ordering: strict\n"))
    assert strict.ordering.mode == "strict"
    with pytest.raises(ConfigError) as exc:
        load_channel(write(tmp_path, GOOD + "ordering: {mode: sometimes}\n"))
    assert ":14:" in str(exc.value) and "mode" in str(exc.value)


def test_source_kinds_come_from_the_registry(tmp_path: Path) -> None:
    from engine.sources import REGISTRY

    assert "mllp" in REGISTRY
    for kind, (config, build) in REGISTRY.items():
        assert config.model_fields["type"].annotation.__args__ == (kind,) and callable(build)
    with pytest.raises(ConfigError) as exc:
        load_channel(write(tmp_path, GOOD.replace("type: mllp", "type: carrier-pigeon")))
    assert "mllp" in str(exc.value)


@pytest.mark.parametrize("kind", ["dicom", "stow"])
def test_a_destination_of_stored_instances_needs_a_source_that_stores_them(tmp_path: Path, kind: str) -> None:
    extra = (
        "host: 127.0.0.1\n    port: 4242\n    called_ae_title: PACS"
        if kind == "dicom"
        else "base_url: http://x/dicom-web"
    )
    p = write(
        tmp_path,
        "name: lab\nsource: {type: mllp, port: 2575}\ndestinations:\n"
        f"  - name: pacs\n    type: {kind}\n    {extra}\n",
    )
    with pytest.raises(ConfigError, match=f"destination pacs \\({kind}\\) sends the stored DICOM instances"):
        load_channel(p)
