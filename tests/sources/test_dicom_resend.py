"""A study sent again in another encoding is the same study: dcmtk's storescu resends an explicit-VR file
in implicit VR, so its instances are new bytes (not duplicates), but the study message they assemble into
is a duplicate of the first and nothing is mapped or delivered again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from engine.sources.dicom_study import study_digest
from engine.store import MessageStatus
from engine.store.schema import ContentKind
from tests.integration.dicom_data import make_study
from tests.sources.test_dicom import Rig, send_pynetdicom, storescu


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    asyncio.run(r.source.start())
    yield r
    r.close()


def test_the_same_study_in_another_transfer_syntax_assembles_into_a_duplicate(rig: Rig, tmp_path: Path) -> None:
    files = make_study(tmp_path / "in", 2, 2)
    assert send_pynetdicom(rig.port, files) == [0] * 4  # explicit VR little endian, as the files are
    [first] = rig.wait_studies(1)
    done = storescu(rig.port, *files)  # dcmtk proposes implicit VR first: other bytes
    assert done.returncode == 0, done.stderr
    instances = rig.messages("instance")
    syntaxes = {orjson.loads(rig.store.content(r.id, ContentKind.raw) or b"{}")["transfer_syntax"] for r in instances}
    assert len(instances) == 8 and len(syntaxes) == 2, "the resent instances are new bytes, not duplicates"
    time.sleep(0.6)  # longer than the quiet period
    studies = rig.wait_studies(2)
    assert sorted(r.status for r in studies) == [MessageStatus.duplicate, MessageStatus.received]
    assert [r.id for r in studies if r.status == MessageStatus.received] == [first.id]
    assert first.id in rig.queued and len(rig.queued) == 1, "only the first study message is processed"


def test_the_study_digest_follows_what_the_map_reads() -> None:
    def doc(sop: str, patient: str, obj: str, ts: str, ae: str = "CT01") -> bytes:
        header = {"00080018": {"vr": "UI", "Value": [sop]}, "00100020": {"vr": "LO", "Value": [patient]}}
        return orjson.dumps({"object": obj, "size": 1, "transfer_syntax": ts, "calling_ae": ae, "header": header})

    explicit = [doc("1.1", "P", "aa", "1.2.840.10008.1.2.1"), doc("1.2", "P", "bb", "1.2.840.10008.1.2.1")]
    implicit = [doc("1.2", "P", "cc", "1.2.840.10008.1.2"), doc("1.1", "P", "dd", "1.2.840.10008.1.2")]
    assert study_digest(explicit) == study_digest(implicit)  # order and encoding do not matter
    assert study_digest(explicit) != study_digest(explicit[:1])  # the set of instances does
    assert study_digest(explicit) != study_digest([explicit[0], doc("1.2", "Q", "bb", "x")])  # a header does
    assert study_digest(explicit) != study_digest([explicit[0], doc("1.2", "P", "bb", "x", "MR01")])  # the AE
    assert study_digest([explicit[0], doc("1.1", "Q", "ee", "x")]) == study_digest([doc("1.1", "Q", "ff", "y")])
