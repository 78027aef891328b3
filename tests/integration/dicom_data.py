"""DICOM test data shared by the source tests and the end-to-end tests: studies written as Part 10 files.

- :func:`make_study` copies pydicom's bundled CT and MR files (real modality headers, ~40 KB each) into a
  study of ``series`` x ``per_series`` instances with new UIDs.
- :func:`make_tiny_study` builds the same shape from scratch with a 16 x 16 CT image (~1 KB per file), for
  studies of hundreds of instances (pydicom's files x 200 would be 8 MB to write, send and store).

Both stamp Patient ID, Issuer of Patient ID and an accession number on every instance and return the
paths in series-then-instance order.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = ["SOURCES", "make_study", "make_tiny_study"]

SOURCES = ("CT_small.dcm", "MR_small.dcm")


def make_study(folder: Path, series: int, per_series: int, *, patient: str = "P-1", issuer: str = "HOSP") -> list[Path]:
    """A study of ``series`` x ``per_series`` instances from pydicom's bundled files, with new UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    out = []
    for s in range(series):
        template = pydicom.dcmread(get_testdata_file(SOURCES[s % len(SOURCES)]))
        series_uid = generate_uid()
        for i in range(per_series):
            ds = template.copy()
            ds.StudyInstanceUID = study
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = s + 1
            ds.InstanceNumber = i + 1
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.PatientID = patient
            ds.IssuerOfPatientID = issuer
            ds.AccessionNumber = "ACC-1"
            path = folder / f"s{s}-i{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            out.append(path)
    return out


def _tiny_ct(study: str, series_uid: str, series_number: int, number: int, patient: str, issuer: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = number
    ds.PatientName = "TINY^TEST"
    ds.PatientID = patient
    ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240315"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC-T"
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(256)) * 2  # 16 x 16 x 2 bytes
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def make_tiny_study(
    folder: Path, series: int, per_series: int, *, patient: str = "P-T", issuer: str = "HOSP", study: str = ""
) -> list[Path]:
    """A study of ``series`` x ``per_series`` generated 16 x 16 CT instances (about 1 KB each).

    ``study`` extends an existing study (new series and instances under that Study Instance UID)."""
    folder.mkdir(parents=True, exist_ok=True)
    study = study or generate_uid()
    out = []
    for s in range(series):
        series_uid = generate_uid()
        for i in range(per_series):
            ds = _tiny_ct(study, series_uid, s + 1, i + 1, patient, issuer)
            path = folder / f"{series_uid[-12:]}-i{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            out.append(path)
    return out
