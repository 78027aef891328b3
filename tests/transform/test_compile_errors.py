"""Mistakes in mapping files are ConfigErrors at ``file:line`` when the mappings load, before any message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.transform import load_mappings

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


def broken(tmp_path: Path, rel: str, old: str, new: str, *, here: bool = True) -> tuple[ConfigError, int]:
    """Copy the mappings, replace ``old`` by ``new`` in ``rel``; return the error and the line of ``new``.

    ``here``: the error must be reported in ``rel`` (not in a map that uses it).
    """
    root = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, root)
    f = root / "hl7v2" / rel
    text = f.read_text()
    assert old in text, old
    text = text.replace(old, new, 1)
    f.write_text(text)
    line = text[: text.index(new)].count("\n") + 1 + new[: len(new) - len(new.lstrip("\n"))].count("\n")
    with pytest.raises(ConfigError) as exc:
        load_mappings(root)
    assert exc.value.file is not None
    if here:
        assert exc.value.file.endswith(rel), str(exc.value)
    return exc.value, line


@pytest.mark.parametrize(
    ("rel", "old", "new", "says"),
    [
        (
            "segments/PID-Patient.yaml",
            "  birthDate:",
            "  birthdate:",
            "unknown FHIR element Patient.birthdate (did you mean birthDate?)",
        ),
        ("segments/OBR-DiagnosticReport.yaml", "  issued:", "  issued.value:", "issued is a primitive"),
        ("segments/PID-Patient.yaml", "fn: date}", "fn: dat}", "unknown function 'dat' (did you mean date?)"),
        (
            "segments/PID-Patient.yaml",
            "table: 0001-administrative-gender",
            "table: 0001-gender",
            "unknown codesystem map '0001-gender'",
        ),
        (
            "segments/PID-Patient.yaml",
            "use: XAD-Address}",
            "use: XAD-Adress}",
            "unknown datatype map 'XAD-Adress' (did you mean XAD-Address?)",
        ),
        ("segments/PID-Patient.yaml", "{from: PID-7, fn: date}", "{from: PID-7.x, fn: date}", "not an HL7 path"),
        (
            "segments/OBX-Observation.yaml",
            "when: {unique: OBX-21}}",
            "when: {unique: OBR-3}}",
            "`unique` takes a field of the current segment",
        ),
        (
            "messages/ORU_R01.yaml",
            "      subject: {ref: patient}\n      note:",
            "      subject: [{ref: patient}, {value: {display: x}}]\n      note:",
            "`ref` rules fill a Reference element and mix with other rules only when it repeats",
        ),
        (
            "segments/PID-Patient.yaml",
            "birthDate: {from: PID-7, fn: date}",
            "birthDate: PID-7",
            "birthDate is date: a text value does not fit",
        ),
        (
            "segments/PID-Patient.yaml",
            "gender: {from: PID-8, table",
            "gender: {from: PID-8, fn: datetime, xtable",
            "unknown field",
        ),
        (
            "segments/PID-Patient.yaml",
            "gender: {from: PID-8, table: 0001-administrative-gender}",
            "gender: {value: bogus}",
            "not a valid code for gender (one of male, female, other, unknown)",
        ),
        (
            "segments/PID-Patient.yaml",
            "gender: {from: PID-8, table: 0001-administrative-gender}",
            "gender: {from: PID-8, fn: datetime}",
            "returns dateTime, but gender is code",
        ),
        (
            "segments/PID-Patient.yaml",
            '- {from: "PID-5[*]", use: XPN-HumanName}',
            '- {from: "PID-5[*]", use: CX-Identifier}',
            "map CX-Identifier makes Identifier, but name is HumanName",
        ),
        (
            "messages/ORU_R01.yaml",
            "subject: {ref: patient}\n  report",
            "subject: {ref: patiant}\n  report",
            "`ref: patiant` must name another entry",
        ),
        (
            "messages/ORU_R01.yaml",
            "      subject: {ref: patient}\n      encounter: {ref: encounter}\n      note",
            "      subject: {ref: report}\n      encounter: {ref: encounter}\n      note",
            "subject may reference Patient",
        ),
        (
            "messages/ORU_R01.yaml",
            "within: report",
            "within: reports",
            "`within: reports` must name an entry defined above",
        ),
        ("messages/ADT_A03.yaml", "extends: ADT_A01", "extends: ADT_Z99", "unknown message map 'ADT_Z99'"),
        ("datatypes/XPN-HumanName.yaml", "family: XPN.1.1", "family: XPN.1.1.1", "not an HL7 path"),
        ("codesystems/0001-administrative-gender.yaml", "unmapped: error", "unmapped: fail", "unmapped"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, rel: str, old: str, new: str, says: str) -> None:
    err, line = broken(tmp_path, rel, old, new)
    assert says in err.message
    assert err.line == line, f"{err} (expected line {line})"


def test_cached_map_must_read_only_its_value(tmp_path: Path) -> None:
    err, _ = broken(tmp_path, "datatypes/CWE-Quantity.yaml", "  unit: [CWE.2, CWE.1]", "  unit: [CWE.2, OBX-6.1]")
    assert "a cached map may read only its own value (it reads OBX-6.1)" in err.message
    assert err.line == 6  # the `cache: true` line


def test_resource_without_identity(tmp_path: Path) -> None:
    old = "identity:\n  - {from: PV1-19, use: CX-Identifier}\n"
    err, _ = broken(tmp_path, "segments/PV1-Encounter.yaml", old, "", here=False)
    assert "Encounter from PV1-Encounter has no identity" in err.message
    # The first message map whose encounter entry declares no identity of its own (ADT_A01 declares one).
    assert err.file is not None and "/messages/" in err.file
    assert err.line == Path(err.file).read_text().splitlines().index("  encounter:") + 1


def test_two_maps_for_one_message_type(tmp_path: Path) -> None:
    err, _ = broken(tmp_path, "messages/ADT_A03.yaml", "accepts: [ADT^A03]", "accepts: [ADT^A03, ORU^R01]", here=False)
    assert "ORU^R01 is already mapped by ADT_A03" in err.message


def test_identity_map_must_make_an_identifier(tmp_path: Path) -> None:
    err, _ = broken(
        tmp_path,
        "segments/PV1-Encounter.yaml",
        "- {from: PV1-19, use: CX-Identifier}\nrules",
        "- {from: PV1-19, use: XPN-HumanName}\nrules",
    )
    assert "identity map XPN-HumanName makes HumanName, not Identifier" in str(err)


def test_unknown_timezone() -> None:
    with pytest.raises(ConfigError):
        load_mappings(MAPPINGS, timezone="Nowhere/Land")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping folder not found"):
        load_mappings(tmp_path / "nope")
