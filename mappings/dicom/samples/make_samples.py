"""Writes the DICOM sample instances of the sibling tests (``mappings/dicom/**/*.tests.yaml``).

    .venv/bin/python mappings/dicom/samples/make_samples.py

Every patient, physician and number here is made up. The files are tiny (8 x 8 pixels, about 1.5 KB each)
and the same bytes on every run (fixed UIDs and dates), so regenerating them changes nothing in git:

    ct_chest/      one CT study, 2 series x 2 instances: patient with an issuer, accession number with an
                   issuer, procedure code, body part, laterality, referring physician, study time with a
                   UTC offset. Three transfer syntaxes: explicit VR little endian, implicit VR little
                   endian (s1-i2) and RLE lossless (s2-i2, compressed), as a modality may send them.
    mr_no_issuer.dcm      one MR instance whose Patient ID comes without an Issuer of Patient ID
    mr_qualifiers.dcm     one MR instance whose patient namespace is an OID in the issuer's qualifiers
    no_study_uid.dcm      one CT instance without a Study Instance UID (refused by the source)
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
)

HERE = Path(__file__).resolve().parent
ROOT_UID = "2.25.31415926535897932384626433832795"  # a made-up UUID-derived root, fixed for stable bytes
SIDE = 8


def uid(*parts: int) -> str:
    return ".".join([ROOT_UID, *map(str, parts)])


def pixels(seed: int) -> bytes:
    return bytes((seed * 17 + i * 3) % 256 for i in range(SIDE * SIDE))


def rle_frame(data: bytes) -> bytes:
    """One RLE Lossless frame (PS3.5 G) of 8-bit pixels: a 64-byte header naming one segment, then the
    segment as PackBits literal runs of at most 128 bytes."""
    header = struct.pack("<16L", 1, 64, *([0] * 14))
    segment = b"".join(bytes([len(c) - 1]) + c for c in (data[i : i + 128] for i in range(0, len(data), 128)))
    return header + segment + (b"\0" if len(segment) % 2 else b"")


def instance(
    sop_class: str, study: str, series: str, sop: str, modality: str, series_no: int, instance_no: int
) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_no, instance_no
    ds.StudyDate, ds.StudyTime = "20240315", "101530"
    ds.SeriesDate, ds.SeriesTime = "20240315", "102000"
    ds.TimezoneOffsetFromUTC = "+0100"
    ds.InstitutionName = "Example General Hospital"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = SIDE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels(series_no * 10 + instance_no)
    return ds


def save(ds: Dataset, path: Path, syntax: str = ExplicitVRLittleEndian) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = uid(9)
    meta.ImplementationVersionName = "INTERLINK_SAMPLE"
    ds.file_meta = meta
    if syntax == RLELossless:
        ds.PixelData = encapsulate([rle_frame(ds.PixelData)])
        ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def ct_chest() -> None:
    study = uid(1)
    syntaxes = {(1, 2): ImplicitVRLittleEndian, (2, 2): RLELossless}
    for s, (description, laterality) in enumerate((("Axial 5mm", "L"), ("Coronal MPR", "")), start=1):
        for i in (1, 2):
            ds = instance(CTImageStorage, study, uid(1, s), uid(1, s, i), "CT", s, i)
            ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = "Doe^Jane^Q^Ms", "MRN-1001", "GENHOSP"
            ds.PatientBirthDate, ds.PatientSex = "19700412", "F"
            ds.AccessionNumber = "ACC-2001"
            issuer = Dataset()
            issuer.LocalNamespaceEntityID = "RIS"
            ds.IssuerOfAccessionNumberSequence = [issuer]
            ds.ReferringPhysicianName = "Smith^Anna^^Dr"
            ds.StudyDescription = "CT chest without contrast"
            ds.RequestedProcedureDescription = "CT chest"
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "24627-2", "LN", "CT Chest"
            ds.ProcedureCodeSequence = [code]
            ds.SeriesDescription, ds.BodyPartExamined = description, "CHEST"
            if laterality:
                ds.Laterality = laterality
            save(ds, HERE / "ct_chest" / f"s{s}-i{i}.dcm", syntaxes.get((s, i), ExplicitVRLittleEndian))


def mr_instances() -> None:
    ds = instance(MRImageStorage, uid(2), uid(2, 1), uid(2, 1, 1), "MR", 1, 1)
    ds.PatientName, ds.PatientID = "Roe^Richard", "LOCAL-77"
    ds.PatientBirthDate, ds.PatientSex = "19851130", "M"
    save(ds, HERE / "mr_no_issuer.dcm")

    ds = instance(MRImageStorage, uid(3), uid(3, 1), uid(3, 1, 1), "MR", 1, 1)
    ds.PatientName, ds.PatientID, ds.PatientSex = "Poe^Pat", "N-5", "O"
    qualifiers = Dataset()
    qualifiers.UniversalEntityID, qualifiers.UniversalEntityIDType = "1.2.826.0.1.3680043.99.1", "ISO"
    ds.IssuerOfPatientIDQualifiersSequence = [qualifiers]
    save(ds, HERE / "mr_qualifiers.dcm")


def no_study_uid() -> None:
    ds = instance(CTImageStorage, uid(4), uid(4, 1), uid(4, 1, 1), "CT", 1, 1)
    ds.PatientID, ds.IssuerOfPatientID = "MRN-1002", "GENHOSP"
    del ds.StudyInstanceUID
    save(ds, HERE / "no_study_uid.dcm")


def main() -> int:
    ct_chest()
    mr_instances()
    no_study_uid()
    return 0


if __name__ == "__main__":
    sys.exit(main())
