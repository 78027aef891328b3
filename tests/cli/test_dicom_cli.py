"""``interlink send|convert|check`` for DICOM channels: C-STORE to a running engine's DICOM channel (one
engine for the module), the bundle a set of instances becomes, and the kind-aware channel check."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from engine.cli import app
from tests.integration.harness import ROOT, EngineProcess, free_port, wait_until

SAMPLES = ROOT / "mappings" / "dicom" / "samples"
CT = sorted((SAMPLES / "ct_chest").glob("*.dcm"))
PHI = ("MRN-1001", "Doe", "Jane", "LOCAL-77", "Roe", "19700412")  # values of the samples: never printed


class Engine(EngineProcess):
    """``interlink run`` with the DICOM channel ``imaging`` (beside the harness's MLLP channels), NDJSON out.

    Its mapping folder holds the DICOM maps alone: compiling every HL7 map costs each command seconds."""

    def __init__(self, workdir: Path) -> None:
        (workdir / "mappings").mkdir(parents=True)
        (workdir / "mappings" / "dicom").symlink_to(ROOT / "mappings" / "dicom", target_is_directory=True)
        only_dicom = {"mappings_dir": str(workdir / "mappings"), "mapping_processes": 0}
        super().__init__(workdir, imaging={"fsync": False, "quiet_period_s": 0.2}, extra_settings=only_dicom)
        self.out = workdir / "out" / "imaging.ndjson"

    def studies(self) -> list[dict]:
        if not self.out.exists():
            return []
        bundles = [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]
        return [e["resource"] for b in bundles for e in b["entry"] if e["resource"]["resourceType"] == "ImagingStudy"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    e = Engine(tmp_path_factory.mktemp("dicom-cli")).start()
    yield e
    e.stop()


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_send_a_folder_prints_each_status_and_fails_when_one_is_refused(engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    shutil.copytree(SAMPLES / "ct_chest", folder / "ct_chest")
    shutil.copy(SAMPLES / "no_study_uid.dcm", folder / "no_study_uid.dcm")
    (folder / "ct_chest" / "notes.txt").write_text("not DICOM")
    code, out, err = run("send", "--channel", "imaging", str(folder), "--config", str(engine.config))
    assert code == 1
    lines = out.strip().splitlines()
    assert sorted(lines[:-1]) == sorted(
        [f"{folder / 'ct_chest' / f.name}: 0x0000 Success" for f in CT]
        + [f"{folder / 'no_study_uid.dcm'}: 0xC000 Failure: Cannot Understand"]
    )
    assert lines[-1] == f"4 stored, 1 failed (127.0.0.1:{engine.dicom_port}, AE INTERLINK)"
    assert "1 file(s) in the folders are not DICOM files" in err
    assert not any(v in out + err for v in PHI)
    # every instance went in its own transfer syntax (implicit, explicit, RLE): one study of 4 at the output
    wait_until(lambda: any(s["numberOfInstances"] == 4 for s in engine.studies()), 30, "the ImagingStudy")


def test_send_over_two_associations_resends_as_success(engine: Engine) -> None:
    args = ("send", "--channel", "imaging", *map(str, CT), "--associations", "2", "--calling-ae", "MODALITY")
    code, out, _ = run(*args, "--config", str(engine.config))
    assert code == 0, out
    assert sorted(out.strip().splitlines()[:-1]) == sorted(f"{f}: 0x0000 Success" for f in CT)
    assert out.strip().splitlines()[-1].startswith("4 stored, 0 failed")


def test_send_to_no_listener_says_not_sent(engine: Engine) -> None:
    code, out, _ = run("send", "--channel", "imaging", str(CT[0]), "--port", str(free_port()),
                       "--timeout-s", "5", "--config", str(engine.config))  # fmt: skip
    assert code == 1
    assert out.startswith(f"{CT[0]}: not sent: ")
    assert "0 stored, 1 failed" in out


def test_convert_prints_the_study_bundle(engine: Engine) -> None:
    code, out, _ = run("convert", str(SAMPLES / "ct_chest"), "--channel", "imaging", "--config", str(engine.config))
    assert code == 0
    bundle = json.loads(out)
    [study] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ImagingStudy"]
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (2, 4)
    assert [e["request"]["url"].split("?")[0] for e in bundle["entry"]] == ["Patient", "ImagingStudy"]
    code, out, _ = run("convert", *map(str, CT[:2]), "--config", str(engine.config))  # files, no channel
    assert code == 0 and '"numberOfInstances": 2' in out


def test_convert_takes_the_channels_default_by_calling_ae_or_refuses(engine: Engine) -> None:
    no_issuer = str(SAMPLES / "mr_no_issuer.dcm")
    code, out, err = run("convert", no_issuer, "--channel", "imaging", "--config", str(engine.config))
    assert code == 1 and out == ""
    assert f"{no_issuer}: PatientID: assigning authority is empty" in err
    assert not any(v in err for v in PHI)
    args = ("convert", no_issuer, "--channel", "imaging", "--calling-ae", "MODALITY", "--config", str(engine.config))
    code, out, _ = run(*args)
    assert code == 0 and "Patient?identifier=urn:interlink:id:GENHOSP|LOCAL-77" in out


def test_convert_names_the_tag_of_an_instance_the_source_refuses(engine: Engine) -> None:
    bad = str(SAMPLES / "no_study_uid.dcm")
    code, out, err = run("convert", bad, str(CT[0]), "--config", str(engine.config))
    assert code == 1 and out == ""
    assert err.strip() == f"{bad}: (0020,000D): StudyInstanceUID is missing (the DICOM source answers 0xC000)"


def test_check_knows_dicom_channels_and_maps(engine: Engine, tmp_path: Path) -> None:
    code, out, err = run("check", "--config", str(engine.config))
    assert code == 0
    assert "ok  channel imaging (dicom → ndjson)" in out and "ok  dicom: 1 type(s) mapped: study" in out
    assert "warning" not in err
    channel = yaml.safe_load((engine.workdir / "channels" / "imaging.yaml").read_text())
    named = tmp_path / "named.yaml"
    named.write_text(yaml.safe_dump({**channel, "mapping": "dicom/messages/study.yaml", "identifiers": {}}))
    code, out, err = run("check", str(named), "--config", str(engine.config))
    assert code == 0, err
    assert "warning: channel imaging declares no default assigning authority" in err and "PatientID" in err
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({**channel, "mapping": "dicom/messages/nope.yaml"}))
    code, _, err = run("check", str(wrong), "--config", str(engine.config))
    assert code == 1 and "channel imaging: mapping 'dicom/messages/nope.yaml' does not exist" in err
