"""mappings/dicom through the one compiler and runtime: a study assembled from pydicom's bundled files (via
the source's own instance reading and study assembly) maps to Patient + ImagingStudy, keyed as promised."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pydicom
import pytest
from pydicom.dataset import Dataset

from engine.errors import ConfigError
from engine.sources.dicom_study import read_instance, study_document
from engine.store.objects import ObjectStore
from engine.transform import MappingSet, load_mappings
from engine.transform.authority import Identifiers
from engine.transform.pool import Job, Mapped, map_one
from tests.sources.test_dicom import MAPPINGS, make_study


@pytest.fixture(scope="module")
def ms() -> MappingSet:
    return load_mappings(MAPPINGS)


def study(tmp_path: Path, files: list[Path]) -> bytes:
    objects = ObjectStore(tmp_path / "objects", fsync=False)
    docs = []
    for f in files:
        instance, error = read_instance(f, objects.put_file(f), "MODALITY")
        assert error is None and instance is not None
        docs.append(instance.document)
    return study_document(docs, time.time())[0]


def mapped(ms: MappingSet, raw: bytes, identifiers: Identifiers | None = None) -> Mapped:
    return map_one(ms, Job(raw, "", None, "full", None, identifiers or Identifiers(), "dicom"))


def resources(m: Mapped, kind: str) -> list[dict]:
    assert m.error is None and m.bundle is not None, m.error
    return [e["resource"] for e in orjson.loads(m.bundle)["entry"] if e["resource"]["resourceType"] == kind]


def edit(files: list[Path], **values: object) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        for k, v in values.items():
            setattr(ds, k, v)
        ds.save_as(f)


def test_study_maps_to_patient_and_imaging_study(ms: MappingSet, tmp_path: Path) -> None:
    files = make_study(tmp_path / "in", 2, 3)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "24627-2", "LN", "CT Chest"
    edit(files, BodyPartExamined="CHEST", Laterality="L", ProcedureCodeSequence=[code], StudyDate="20240315",
         StudyTime="101530.250", ReferringPhysicianName="Smith^Anna^^Dr")  # fmt: skip
    m = mapped(ms, study(tmp_path, files))
    [patient] = resources(m, "Patient")
    assert patient["identifier"][0]["value"] == "P-1"
    assert patient["identifier"][0]["system"] == "urn:interlink:id:HOSP"
    [img] = resources(m, "ImagingStudy")
    uid = pydicom.dcmread(files[0]).StudyInstanceUID
    assert img["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}
    assert img["subject"]["reference"].startswith("urn:uuid:")
    assert (img["numberOfSeries"], img["numberOfInstances"]) == (2, 6)
    assert img["started"] == "2024-03-15T10:15:30.250-05:00"  # TimezoneOffsetFromUTC of the template
    assert img["procedureCode"][0]["coding"][0] == {"system": "http://loinc.org", "code": "24627-2",
                                                    "display": "CT Chest"}  # fmt: skip
    assert img["referrer"]["display"] == "Dr Anna Smith"
    assert img["basedOn"][0]["identifier"]["value"] == "ACC-1"
    series = img["series"][0]
    assert series["bodySite"]["code"] == "51185008" and series["laterality"]["code"] == "7771000"
    assert [i["number"] for i in series["instance"]] == [1, 2, 3]
    assert series["instance"][0]["sopClass"]["code"] == f"urn:oid:{pydicom.dcmread(files[0]).SOPClassUID}"


def test_a_grown_study_is_the_same_imaging_study(ms: MappingSet, tmp_path: Path) -> None:
    files = make_study(tmp_path / "in", 2, 3)
    first = resources(mapped(ms, study(tmp_path, files[:2])), "ImagingStudy")
    whole = resources(mapped(ms, study(tmp_path, files)), "ImagingStudy")
    assert first[0]["identifier"] == whole[0]["identifier"]
    assert (first[0]["numberOfInstances"], whole[0]["numberOfInstances"]) == (2, 6)


def test_patient_id_without_issuer_takes_the_channel_default_or_the_study_is_refused(
    ms: MappingSet, tmp_path: Path
) -> None:
    files = make_study(tmp_path / "in", 1, 1, issuer="")
    raw = study(tmp_path, files)
    refused = mapped(ms, raw)
    assert refused.error is not None and refused.error.field == "PatientID"
    assert "P-1" not in str(refused.error)
    ok = mapped(ms, raw, Identifiers(by_application={"MODALITY": "urn:oid:1.2.3"}))
    assert resources(ok, "Patient")[0]["identifier"][0]["system"] == "urn:oid:1.2.3"


def test_an_unknown_dicom_keyword_is_a_load_time_error(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, root)
    path = root / "dicom" / "segments" / "STUDY-Patient.yaml"
    path.write_text(path.read_text().replace("PatientBirthDate", "PatientBirthDat"))
    with pytest.raises(ConfigError) as err:
        load_mappings(root)
    assert "unknown DICOM keyword 'PatientBirthDat'" in str(err.value) and "STUDY-Patient.yaml" in str(err.value)
