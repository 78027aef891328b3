"""The Dockerfile: linted by hadolint, exposes every port the engine listens on, and its environment makes
the engine listen on every interface (inside a container, 127.0.0.1 cannot be reached from outside).

No container runtime can run here (Docker's engine cannot; Podman cannot pull base images nor set the
rlimits it needs in this sandbox), so the image's environment is applied to a real engine process
started from the files the image copies.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config.channel import load_channels
from engine.settings import Settings
from tests.integration.harness import wait_until

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, args = (pending + line).strip().partition(" ")
        out.append((word.upper(), args.strip()))
        pending = ""
    return out


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in instructions():
        if word == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def exposed_ports() -> set[int]:
    return {int(p.split("/")[0]) for word, args in instructions() if word == "EXPOSE" for p in args.split()}


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: it comes with the test extra (pip install -e '.[test]')")
    return found


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [hadolint(), "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"hadolint:\n{done.stdout}{done.stderr}"


def test_image_exposes_every_port_the_engine_listens_on(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("INTERLINK_")]:
        monkeypatch.delenv(key)
    settings = Settings.load(ROOT / "config" / "engine.yaml", env={})
    listeners = {getattr(c.source, "port", None) for c in load_channels([ROOT / "channels"])} - {None}
    ports = listeners | {settings.metrics_port, settings.http_port}
    assert ports == {2575, 2576, 8080, 9464, 11112}
    assert exposed_ports() == ports


def listening(ports: set[int]) -> dict[int, str]:
    """Local address (hex, as the kernel shows it) of each listening TCP socket on one of ``ports``."""
    found: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            address, port_hex = cols[1].rsplit(":", 1)
            if cols[3] == "0A" and int(port_hex, 16) in ports:  # 0A: LISTEN
                found[int(port_hex, 16)] = address
    return found


def free_port_on_every_interface() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_image_environment_makes_the_engine_listen_on_every_interface(tmp_path: Path) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp")
    for name in ("channels", "mappings", "config"):  # what the image copies into its working folder
        (tmp_path / name).symlink_to(ROOT / name)
    lab, adt, metrics, http = (free_port_on_every_interface() for _ in range(4))
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLINK_")}
    env |= image_env()
    env |= {
        "INTERLINK_LAB_RESULTS_PORT": str(lab),
        "INTERLINK_ADT_PORT": str(adt),
        "INTERLINK_METRICS_PORT": str(metrics),
        "INTERLINK_HTTP_PORT": str(http),
        "INTERLINK_MAPPING_PROCESSES": "0",
    }
    log = tmp_path / "engine.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "run"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"engine exited with {proc.returncode}: {log.read_text()[-2000:]}")
            return len(listening({lab, adt, metrics, http})) == 4

        wait_until(up, 30, "the engine to listen on its four ports")
        every_interface = {"00000000", "00000000000000000000000000000000"}  # 0.0.0.0 or ::
        bound = listening({lab, adt, metrics, http})
        assert {port: address in every_interface for port, address in bound.items()} == {
            lab: True,
            adt: True,
            metrics: True,
            http: True,
        }, bound
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
