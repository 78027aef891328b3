from __future__ import annotations

import errno
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.destinations import FileConfig, FileDestination, Outcome
from engine.destinations import file as file_module

from . import lab_bundle


def dest(path: Path | str, **options: Any) -> FileDestination:
    return FileDestination(FileConfig.model_validate({"type": "file", "name": "out", "path": str(path), **options}))


def lines(path: Path) -> list[Any]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [orjson.loads(line) for line in data.split(b"\n")[:-1]]


def test_one_json_line_per_send_in_created_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.ndjson"
    d = dest(path)
    first = d.send(lab_bundle(key="1"), message_id="m1")
    second = d.send(lab_bundle(key="2"), message_id="m2")
    d.close()
    assert first.outcome is second.outcome is Outcome.SENT
    assert first.request == orjson.dumps(lab_bundle(key="1"))
    assert lines(path) == [lab_bundle(key="1"), lab_bundle(key="2")]


def test_appends_to_an_existing_file_and_reopens_after_close(tmp_path: Path) -> None:
    path = tmp_path / "out.ndjson"
    path.write_bytes(b'{"old":1}\n')
    d = dest(path)
    d.send({"n": 1}, message_id="m")
    d.close()
    d.send({"n": 2}, message_id="m")
    d.close()
    assert lines(path) == [{"old": 1}, {"n": 1}, {"n": 2}]


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def test_output_files_and_new_folders_are_private(tmp_path: Path) -> None:
    """Bundles are PHI: the file (also the one reopened after rotation) is 0600 and the folders the
    destination creates are 0700, under a common umask; a folder that already existed keeps its mode."""
    tmp_path.chmod(0o755)
    path = tmp_path / "data" / "out" / "lab.ndjson"
    old = os.umask(0o022)
    try:
        d = dest(path)
        d.send({"n": 1}, message_id="m")
        path.rename(path.with_suffix(".1"))
        d.send({"n": 2}, message_id="m")
        d.close()
    finally:
        os.umask(old)
    assert (mode(path), mode(path.with_suffix(".1"))) == ("0o600", "0o600")
    assert (mode(path.parent), mode(path.parent.parent)) == ("0o700", "0o700")
    assert mode(tmp_path) == "0o755"


def test_concurrent_sends_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "out.ndjson"
    d = dest(path)
    big = "x" * 70_000  # larger than a pipe buffer and a page: a torn write would show

    def send(n: int) -> Outcome:
        return d.send({"n": n, "pad": big[: (n * 997) % len(big)]}, message_id=str(n)).outcome

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(send, range(200)))
    d.close()
    assert outcomes == [Outcome.SENT] * 200
    assert sorted(line["n"] for line in lines(path)) == list(range(200))


def test_fsync_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(file_module.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    dest(tmp_path / "nosync.ndjson").send({"n": 1}, message_id="m")
    assert synced == []
    dest(tmp_path / "sync.ndjson", fsync=True).send({"n": 1}, message_id="m")
    assert len(synced) == 1


def test_disk_full_is_retry() -> None:
    result = dest("/dev/full").send({"n": 1}, message_id="m")
    assert (result.outcome, result.error) == (Outcome.RETRY, "OSError: No space left on device")
    assert result.request == b'{"n":1}'


def test_unwritable_path_is_retry(tmp_path: Path) -> None:
    result = dest(tmp_path).send({"n": 1}, message_id="m")  # a directory
    assert (result.outcome, result.error) == (Outcome.RETRY, "IsADirectoryError: Is a directory")


def test_failed_write_leaves_no_partial_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.ndjson"
    d = dest(path)
    d.send({"n": 1}, message_id="m")
    real = os.write

    def half_then_full(fd: int, data: Any) -> int:
        real(fd, bytes(data[:5]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(file_module.os, "write", half_then_full)
    assert d.send({"n": 2, "pad": "y" * 100}, message_id="m").outcome is Outcome.RETRY
    monkeypatch.setattr(file_module.os, "write", real)
    assert d.send({"n": 3}, message_id="m").outcome is Outcome.SENT
    d.close()
    assert lines(path) == [{"n": 1}, {"n": 3}]


def test_rotated_file_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "out.ndjson"
    d = dest(path)
    d.send({"n": 1}, message_id="m")
    path.rename(tmp_path / "out.ndjson.1")
    d.send({"n": 2}, message_id="m")
    d.close()
    assert lines(tmp_path / "out.ndjson.1") == [{"n": 1}]
    assert lines(path) == [{"n": 2}]


def test_unserialisable_bundle_is_permanent(tmp_path: Path) -> None:
    path = tmp_path / "out.ndjson"
    result = dest(path).send({"bad": object()}, message_id="m")
    assert (result.outcome, result.error) == (Outcome.PERMANENT, "bundle is not JSON-serialisable")
    assert not path.exists()
