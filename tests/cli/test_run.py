"""``interlink run`` start-up failures: one line naming what failed, exit code 1, no traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.integration.harness import EngineProcess


@pytest.mark.slow
def test_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    engine = EngineProcess(tmp_path, extra_settings={"mapping_processes": 1})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", engine.lab_port))
        taken.listen()
        result = engine.cli("run")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"channel lab-results: cannot listen on 127.0.0.1:{engine.lab_port}: address already in use"
