"""A real Orthanc PACS for tests: the Debian ``Orthanc`` binary with the ``orthanc-dicomweb`` plugin, on free
loopback ports, with its own storage folder and JSON configuration (no authentication, no other peers).

Use the module-scoped fixture ``orthanc`` (import it into a test module) or :class:`Orthanc` directly.
Without the binary the tests are skipped locally and fail under ``CI=true`` (``scripts/test-services.sh``
installs it). Tests share one server per module: :meth:`Orthanc.clear` empties it between tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import free_port

__all__ = ["AE_TITLE", "Orthanc", "orthanc"]

AE_TITLE = "ORTHANC"
_BINARIES = ("Orthanc", "/usr/sbin/Orthanc")
_PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")


def _unavailable(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required under CI=true (scripts/test-services.sh installs it)")
    pytest.skip(f"{what} is not available")


def _binary() -> str | None:
    for name in _BINARIES:
        found = shutil.which(name) or (name if os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


def _plugin() -> str | None:
    return next((p for p in _PLUGINS if Path(p).is_file()), None)


class Orthanc:
    """One Orthanc process: ``dicom_port`` (AE ``ORTHANC``), ``url`` (REST), ``dicomweb`` (``…/dicom-web``)."""

    def __init__(self, folder: Path, *, binary: str, plugin: str | None) -> None:
        self.folder = folder
        self.binary = binary
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.config = folder / "orthanc.json"
        self.settings: dict[str, Any] = {
            "Name": "interlink-test",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "DicomAet": AE_TITLE,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "StorageCompression": False,
            "ConcurrentJobs": 1,
            "Plugins": [plugin] if plugin else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        self.config.write_text(json.dumps(self.settings))
        self._log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=30)  # one client: a new one per call costs ~50 ms

    def start(self, timeout_s: float = 30) -> None:
        """Start (or restart, on the same ports and storage) and wait until the REST API answers."""
        self.process = subprocess.Popen(
            [self.binary, str(self.config)], stdout=self._log, stderr=subprocess.STDOUT, cwd=self.folder
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: see {self.folder}/orthanc.log")
            try:
                if self.http.get("/system", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("Orthanc did not answer in time")

    def stop(self) -> None:
        """Kill the process (the PACS is then down: connections are refused). Killed, not stopped: a clean
        stop takes Orthanc ~4 s, and its index and storage survive a kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self, **settings: Any) -> None:
        """Stop, change configuration options (e.g. ``UnknownSopClassAccepted=True``), start again."""
        self.stop()
        self.settings.update(settings)
        self.config.write_text(json.dumps(self.settings))
        self.start()

    def close(self) -> None:
        self.stop()
        self.http.close()
        self._log.close()

    # -- REST ---------------------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        response = self.http.get(path)
        response.raise_for_status()
        return response.json()

    def instances(self) -> list[str]:
        """Orthanc's ids of every instance it holds."""
        return list(self.get("/instances"))

    def file(self, instance: str) -> bytes:
        """The DICOM file Orthanc stored for an instance."""
        response = self.http.get(f"/instances/{instance}/file")
        response.raise_for_status()
        return response.content

    def files(self) -> dict[str, bytes]:
        """Every stored instance's file, by SOP Instance UID."""
        out = {}
        for instance in self.instances():
            tags = self.get(f"/instances/{instance}/simplified-tags")
            out[tags["SOPInstanceUID"]] = self.file(instance)
        return out

    def clear(self) -> None:
        """Delete every patient (and so every study and instance)."""
        for patient in self.get("/patients"):
            self.http.delete(f"/patients/{patient}").raise_for_status()


@pytest.fixture(scope="module")
def orthanc() -> Iterator[Orthanc]:
    """A running Orthanc for the test module, emptied before each use by the tests that need it."""
    binary = _binary()
    if binary is None:
        _unavailable("Orthanc (Debian orthanc)")
    plugin = _plugin()
    if plugin is None:
        _unavailable("the Orthanc DICOMweb plugin (Debian orthanc-dicomweb)")
    assert binary is not None
    with tempfile.TemporaryDirectory(prefix="orthanc-") as tmp:
        server = Orthanc(Path(tmp), binary=binary, plugin=plugin)
        try:
            server.start()
            yield server
        finally:
            server.close()
