"""The ``interlink`` command: check, convert, test and the store-reading commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from engine.cli import app

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "mappings" / "hl7v2" / "samples"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings pointing at the repository's channels and mappings, with a store in tmp_path."""
    for var in ("INTERLINK_FHIR_BASE_URL", "INTERLINK_CONFIG", "INTERLINK_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    cfg = tmp_path / "engine.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "database_url": f"sqlite:///{tmp_path}/s.db",
                "channels_dir": str(ROOT / "channels"),
                "mappings_dir": str(ROOT / "mappings"),
            }
        )
    )
    return cfg


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_check_passes_on_the_example_channels(config: Path) -> None:
    code, out, _ = run("check", "--config", str(config))
    assert code == 0
    assert "channel lab-results" in out and "channel adt" in out and "ORU^R01" in out


def test_check_warns_about_a_channel_without_default_authority(config: Path, tmp_path: Path) -> None:
    _, _, err = run("check", "--config", str(config))
    assert "warning" not in err  # the example channels declare one
    bare = tmp_path / "bare.yaml"
    bare.write_text("name: bare\nsource: {type: mllp, port: 2999}\ndestinations:\n  - {name: f, type: file, path: x}\n")
    code, out, err = run("check", str(bare), "--config", str(config))
    assert code == 0 and "ok  channel bare" in out
    assert "warning: channel bare declares no default assigning authority (identifiers:)" in err


def test_check_names_file_and_line(config: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nsource:\n  type: mllp\n  port: 70000\ndestinations:\n  - {name: f, type: file, path: x}\n"
    )
    code, _, err = run("check", str(bad), "--config", str(config))
    assert code == 1
    assert f"{bad}:4: source.port" in err


def test_convert_prints_a_transaction_bundle(config: Path) -> None:
    code, out, _ = run("convert", str(SAMPLES / "oru_r01_cbc.hl7"), "--config", str(config))
    assert code == 0
    bundle = json.loads(out)
    assert bundle["type"] == "transaction"
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types.count("Observation") >= 8 and "DiagnosticReport" in types and "Patient" in types
    # every write is conditional on an identity: an update, or (the ServiceRequest an ORU only ensures) a create
    for e in bundle["entry"]:
        request = e["request"]
        if e["resource"]["resourceType"] == "ServiceRequest":
            assert request["method"] == "POST" and request["ifNoneExist"].startswith("identifier=")
        else:
            assert request["method"] == "PUT" and "?identifier=" in request["url"]


def test_convert_with_a_channel_uses_its_mapping(config: Path) -> None:
    code, out, _ = run("convert", str(SAMPLES / "adt_a01.hl7"), "--channel", "adt", "--config", str(config))
    assert code == 0 and json.loads(out)["entry"]


def test_convert_uses_the_channels_default_authority(config: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.hl7"
    bare.write_bytes((SAMPLES / "adt_a01.hl7").read_bytes().replace(b"MRN4455667^^^GENHOSP^MR", b"MRN4455667^^^^MR"))
    code, out, _ = run("convert", str(bare), "--channel", "adt", "--config", str(config))
    assert code == 0
    urls = [e["request"]["url"] for e in json.loads(out)["entry"]]
    assert urls[0] == "Patient?identifier=urn:interlink:id:GENHOSP|MRN4455667"  # MSH-4 GENHOSP → GENHOSP
    code, out, err = run("convert", str(bare), "--config", str(config))  # no channel, no default
    assert code == 1 and out == ""
    assert f"{bare}: PID-3.4: assigning authority is empty" in err and "MRN4455667" not in err


def test_convert_refuses_what_it_cannot_map(config: Path, tmp_path: Path) -> None:
    mfn = tmp_path / "mfn.hl7"
    mfn.write_bytes(b"MSH|^~\\&|A|B|C|D|2024||MFN^M02|1|P|2.5.1\rMFI|PRA\r")
    code, out, err = run("convert", str(mfn), "--config", str(config))
    assert code == 1 and out == ""
    assert "no mapping for message type MFN^M02" in err and str(mfn) in err
    code, _, err = run("convert", str(tmp_path / "missing.hl7"), "--config", str(config))
    assert code == 1 and "cannot read" in err


def test_mapping_tests_run(config: Path) -> None:
    code, out, _ = run("test", "--config", str(config))
    assert code == 0
    assert out.strip().splitlines()[-1].endswith("0 failed")


def test_mapping_tests_can_take_a_channels_default_authority(config: Path) -> None:
    code, out, _ = run("test", "--channel", "adt", "--config", str(config))
    assert code == 0 and out.strip().splitlines()[-1].endswith("0 failed")
    code, _, err = run("test", "--channel", "nope", "--config", str(config))
    assert code == 1 and "no channel named 'nope'" in err


def test_store_commands_on_an_empty_store(config: Path) -> None:
    assert run("status", "--config", str(config))[1].strip() == "no messages stored"
    assert "0 dead letter(s)" in run("dlq", "list", "--config", str(config))[1]
    code, _, err = run("dlq", "replay", "--config", str(config))
    assert code == 1 and "--all" in err


def test_reprocess_hands_an_errored_message_back(config: Path, tmp_path: Path) -> None:
    import time

    from engine.store import NewMessage, Store

    store = Store(f"sqlite:///{tmp_path}/s.db")
    [bad, fine] = store.insert_messages([NewMessage("lab-results", b"MSH|x"), NewMessage("lab-results", b"MSH|y")])
    store.mark_error(bad.id, "PID-7: not a valid date")
    code, out, err = run("messages", "reprocess", bad.id, fine.id, "--config", str(config))
    assert code == 1 and "1 message(s) marked for the running engine" in out and fine.id in err
    row = store.message(bad.id)
    assert row.status == "received" and row.error is None
    received, _ = store.unfinished(older_than=time.time() - 60)  # stale on purpose: the sweeper takes it
    assert bad.id in received
    store.close()
