"""Run a real engine process (``python -m engine run``) against a temporary config, for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from engine.store import Store

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class EngineProcess:
    """An ``interlink run`` (or ``worker``) process with its own data folder, channels and ports."""

    def __init__(
        self,
        workdir: Path,
        *,
        fhir_base_url: str | None = None,
        database_url: str | None = None,
        queue_url: str = "memory://",
        lab_response: str = "on_commit",
        retry: dict | None = None,
        extra_settings: dict | None = None,
        imaging: dict | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.lab_port = free_port()
        self.adt_port = free_port()
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.imaging = imaging is not None
        self.database_url = database_url or f"sqlite:///{workdir}/data/interlink.db"
        self.settings = {
            "data_dir": str(workdir / "data"),
            "database_url": self.database_url,
            "queue_url": queue_url,
            "channels_dir": str(workdir / "channels"),
            "mappings_dir": str(ROOT / "mappings"),
            "worker_threads": 4,
            "sweeper": {"interval_s": 1, "grace_s": 2},
            "metrics_port": 0,
            "http_port": self.http_port,
            **(extra_settings or {}),
        }
        (workdir / "channels").mkdir(exist_ok=True)
        if fhir_base_url:
            dest = {"name": "ehr", "type": "fhir", "base_url": fhir_base_url, "timeout_s": 10}
        else:
            dest = {"name": "ndjson", "type": "file", "path": str(workdir / "out" / "CHANNEL.ndjson")}
        if retry:
            dest["retry"] = retry
        for name, port, accept, response in (
            ("lab-results", self.lab_port, ["ORU^R01"], lab_response),
            ("adt", self.adt_port, ["ADT^A01", "ADT^A03", "ADT^A04", "ADT^A08"], "after_transform"),
        ):
            d = {**dest}
            if "path" in d:
                d["path"] = d["path"].replace("CHANNEL", name)
            channel = {
                "name": name,
                "source": {"type": "mllp", "host": "127.0.0.1", "port": port, "read_timeout_s": 2, "accept": accept},
                "response": response,
                "validation": "full",
                # The test messages send PV1-19 and order numbers without an assigning authority.
                "identifiers": {"authority": "HOSP"},
                "destinations": [d],
            }
            (workdir / "channels" / f"{name}.yaml").write_text(yaml.safe_dump(channel))
        if imaging is not None:  # the DICOM channel `imaging` on dicom_port; ``imaging`` adds source options
            d = {**dest, "path": str(workdir / "out" / "imaging.ndjson")} if "path" in dest else {**dest}
            source = {"type": "dicom", "host": "127.0.0.1", "port": self.dicom_port,
                      "objects_dir": str(workdir / "data" / "objects"), **imaging}  # fmt: skip
            channel = {"name": "imaging", "source": source, "identifiers": {"by_application": {"MODALITY": "GENHOSP"}},
                       "destinations": [d]}  # fmt: skip
            (workdir / "channels" / "imaging.yaml").write_text(yaml.safe_dump(channel))
        self.config = workdir / "engine.yaml"
        self.config.write_text(yaml.safe_dump(self.settings))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "engine.log"

    def start(self, command: str = "run", wait: bool = True) -> EngineProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLINK_")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine", command, "--config", str(self.config)],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait and command == "run":
            try:
                wait_until(self._listening, 60, "engine to listen")
            except AssertionError as exc:  # never leave an engine behind for the rest of the session
                self.kill()
                raise AssertionError(f"{exc} (log: {self.tail()})") from None
        return self

    def _listening(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"engine exited with {self.proc.returncode}: {self.tail()}")
        # the HTTP server starts after the listeners: a test that posts at once needs it up too
        ports = [
            self.lab_port,
            *([self.dicom_port] if self.imaging else []),
            *([http] if (http := self.settings.get("http_port")) else []),
        ]
        try:
            for port in ports:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    pass
            return True
        except OSError:
            return False

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLINK_")}
        return subprocess.run(
            [sys.executable, "-m", "engine", *args, "--config", str(self.config)],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def store(self) -> Store:
        return Store(self.database_url, migrate_schema=False)

    def statuses(self) -> dict[str, int]:
        """Messages per status, all channels together."""
        store = self.store()
        try:
            out: dict[str, int] = {}
            for (_, s), n in store.status_counts().items():
                out[s] = out.get(s, 0) + n
            return out
        finally:
            store.close()

    def __enter__(self) -> EngineProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
