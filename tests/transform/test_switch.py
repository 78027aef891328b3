"""Swapping the mapper while a batch is mapped (a reload of the maps, ``pool.Switch``): the batch finishes on
the mapping process it began on, the next batch goes to the new one, and the old process closes only after
its batch was answered. Mapping processes that read other mapping files than the engine compiled refuse to
start."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from engine.reload import mapping_digests, mapping_fingerprint
from engine.settings import Settings
from engine.transform.authority import Identifiers
from engine.transform.pool import Job, Mapped, MapperUnavailable, ProcessMapper, Switch
from tests.integration.messages import adt

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
HOSP = Identifiers(authority="HOSP")
GENDER = "segment: PID\ntarget: Patient\ndescription: Site gender.\nmerge: true\nrules:\n  gender: {value: unknown}\n"


class Held(ProcessMapper):
    """A mapping process whose next batch waits for ``go`` once it has been handed over."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, processes=1)
        self.started, self.go, self.closed = threading.Event(), threading.Event(), threading.Event()

    def map_many(self, jobs: Sequence[Job]) -> list[Mapped]:
        self.started.set()
        assert self.go.wait(30)
        return super().map_many(jobs)

    def close(self) -> None:
        self.closed.set()
        super().close()


def gender(m: Mapped) -> str:
    assert m.bundle is not None, m.error
    return next(e["resource"]["gender"] for e in orjson.loads(m.bundle)["entry"] if "gender" in e["resource"])


def test_a_batch_in_flight_finishes_on_the_old_process_and_the_next_goes_to_the_new(tmp_path: Path) -> None:
    site = tmp_path / "site" / "segments"
    site.mkdir(parents=True)
    (site / "PID-Patient.yaml").write_text(GENDER)
    old = Held(Settings(mappings_dir=MAPPINGS))
    switch = Switch(old)
    results: list[list[Mapped]] = []
    thread = threading.Thread(target=lambda: results.append(switch.map_many([Job(adt("C1"), "utf-8", None, "off",
                                                                                 identifiers=HOSP)])))  # fmt: skip
    thread.start()
    try:
        assert old.started.wait(30)
        new = ProcessMapper(Settings(mappings_dir=MAPPINGS, mapping_overlays=[tmp_path / "site"]), processes=1)
        switch.use(new)
        assert not old.closed.is_set()  # it holds a batch
        [second] = switch.map_many([Job(adt("C2"), "utf-8", None, "off", identifiers=HOSP)])
        assert gender(second) == "unknown"
        assert not old.closed.is_set()
    finally:
        old.go.set()
        thread.join(30)
    [[first]] = results
    assert gender(first) == "male"  # mapped by the old maps, answered: not lost, not retried
    assert old.closed.is_set() and old.pids == []
    switch.close()
    assert new.pids == []


def test_a_mapping_process_that_reads_other_files_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "site" / "segments").mkdir(parents=True)
    settings = Settings(mappings_dir=MAPPINGS, mapping_overlays=[tmp_path / "site"])
    compiled = mapping_fingerprint(mapping_digests(settings))  # what the engine compiled
    (tmp_path / "site" / "segments" / "PID-Patient.yaml").write_text(GENDER)  # changed since
    with pytest.raises(MapperUnavailable, match="read other mapping files"):
        ProcessMapper(settings, processes=1, files=compiled)
