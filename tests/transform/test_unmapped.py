"""``interlink test --unmapped``: the fields of the input that no rule reads, per message type.

The reads are found from the map files (through segment, datatype and included maps); a field the
message sends and no rule reads is reported by its place, a field read only in some components reports the
other components sent, and nothing but place names is ever printed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from engine import hl7v2
from engine.cli import app
from engine.transform.library import read_sources
from engine.transform.unmapped import message_reads, unread

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "mappings"
SAMPLE = MAPPINGS / "hl7v2" / "samples" / "oru_r01_cbc.hl7"
PLACE = re.compile(r"^[A-Z][A-Z0-9]{2}-\d+(\.\d+)?$")


def _with(text: str, segment: str, field: int, value: str) -> str:
    segs = hl7v2.split_segments(text)
    i = next(n for n, s in enumerate(segs) if s.startswith(segment + "|"))
    fields = segs[i].split("|")
    fields += [""] * (field + 1 - len(fields))
    fields[field] = value
    segs[i] = "|".join(fields)
    return "\r".join(segs)


@pytest.fixture(scope="module")
def reads():  # type: ignore[no-untyped-def]
    return message_reads(read_sources([MAPPINGS]), "ORU_R01")


def test_a_field_no_rule_reads_is_reported_by_place(reads) -> None:  # type: ignore[no-untyped-def]
    text = SAMPLE.read_text().rstrip("\r\n") + "\rZPX|1|SITE DATA^MORE"  # a site segment no map reads
    places = unread(hl7v2.Message.parse(text), reads)
    assert "ZPX-1" in places and "ZPX-2" in places
    assert all(PLACE.match(p) for p in places)
    for read in ("PID-3", "PID-5", "PID-7", "PID-8", "OBX-3", "OBX-5", "OBR-4", "MSH-9"):
        assert read not in places and not any(p.startswith(read + ".") for p in places)


def test_components_a_datatype_map_does_not_read_are_reported(reads) -> None:  # type: ignore[no-untyped-def]
    assert reads.reads("PID", 3, 1) and reads.reads("PID", 3, 4)
    text = _with(SAMPLE.read_text(), "PID", 3, "MRN1^^^GENHOSP^MR^^^^^^^^^^^^^^^^^CHECKDIGITZ")
    places = unread(hl7v2.Message.parse(text), reads)
    unread_components = [p for p in places if p.startswith("PID-3.")]
    assert unread_components and "PID-3.1" not in unread_components and "PID-3.4" not in unread_components


def test_command_reports_per_message_type_without_values(tmp_path: Path) -> None:
    cfg = tmp_path / "engine.yaml"
    cfg.write_text(yaml.safe_dump({"mappings_dir": str(MAPPINGS), "channels_dir": str(ROOT / "channels")}))
    result = CliRunner().invoke(app, ["test", "--unmapped", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "ORU^R01 (ORU_R01)" in result.stdout
    for value in ("EVERYWOMAN", "MRN4455667", "1962", "SPRINGFIELD"):
        assert value not in result.stdout
