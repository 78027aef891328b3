"""Start and drive the Medplum-based FHIR R4 test server (``server.mjs`` next to this file).

    with FhirTestServer() as server:
        httpx.post(f"{server.base_url}/Patient", json={...})
        server.count("Patient", identifier="urn:mrn|123")

``start()`` installs the pinned npm packages with ``npm ci`` when ``node_modules`` is missing or was
installed from another ``package-lock.json``, runs ``node server.mjs --port 0`` and reads the port it
printed. Run ``python -m tests.fhir_server.launch`` to keep one in the foreground for manual use.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

SERVER_DIR = Path(__file__).resolve().parent
MIN_NODE = (20, 19)
_STAMP = ".interlink-lock-sha256"


class FhirServerError(RuntimeError):
    """The test server could not be installed, started or asked something."""


class FhirServerUnavailable(FhirServerError):
    """Node.js or npm is missing (or too old): the server cannot run on this machine."""


def node_problem() -> str | None:
    """Why node/npm cannot run the server here, or None when they can."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        return "node and npm are needed for the FHIR test server (not found on PATH)"
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run node: {exc}"
    found = re.match(r"v(\d+)\.(\d+)", out.strip())
    if not found or (int(found[1]), int(found[2])) < MIN_NODE:
        return f"node >= {MIN_NODE[0]}.{MIN_NODE[1]} is needed for Medplum 4.5.2, found {out.strip()!r}"
    return None


def _lock_digest(directory: Path) -> str:
    return hashlib.sha256((directory / "package-lock.json").read_bytes()).hexdigest()


@contextlib.contextmanager
def _install_lock(directory: Path) -> Iterator[None]:
    """Serialize ``npm ci`` between processes (e.g. parallel test sessions)."""
    name = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"interlink-fhir-server-{name}.lock"
    with path.open("a") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_node_modules(directory: Path = SERVER_DIR, timeout_s: float = 300.0) -> bool:
    """Run ``npm ci`` unless node_modules matches package-lock.json; return whether it ran."""
    stamp = directory / "node_modules" / _STAMP
    digest = _lock_digest(directory)
    with _install_lock(directory):
        if stamp.is_file() and stamp.read_text().strip() == digest:
            return False
        npm = shutil.which("npm")
        if npm is None:
            raise FhirServerUnavailable("npm not found on PATH")
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=directory,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired as exc:
            raise FhirServerError(f"npm ci did not finish within {timeout_s:.0f} s") from exc
        if done.returncode != 0:
            raise FhirServerError(f"npm ci failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
        stamp.write_text(digest + "\n")
        return True


class FhirTestServer:
    """One ``node server.mjs`` process on 127.0.0.1 and a client for its admin endpoints."""

    def __init__(
        self,
        *,
        port: int = 0,
        startup_timeout_s: float = 30.0,
        request_timeout_s: float = 30.0,
        directory: Path = SERVER_DIR,
    ) -> None:
        self._requested_port = port
        self._startup_timeout_s = startup_timeout_s
        self._request_timeout_s = request_timeout_s
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._client: httpx.Client | None = None
        self._port: int | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> FhirTestServer:
        """Install dependencies if needed, start node and wait for its port; return self."""
        if self._process is not None:
            return self
        problem = node_problem()
        if problem:
            raise FhirServerUnavailable(problem)
        ensure_node_modules(self._directory)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self._process = subprocess.Popen(
            [shutil.which("node") or "node", "server.mjs", "--port", str(self._requested_port), "--watch-stdin"],
            cwd=self._directory,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        try:
            self._port = self._read_port()
        except BaseException:
            self.stop()
            raise
        self._client = httpx.Client(timeout=self._request_timeout_s)
        return self

    def _read_port(self) -> int:
        assert self._process is not None and self._process.stdout is not None
        deadline = time.monotonic() + self._startup_timeout_s
        fd = self._process.stdout.fileno()
        buffer = b""
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FhirServerError(
                    f"FHIR test server did not start within {self._startup_timeout_s:.0f} s" + self._stderr_tail()
                )
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = self._process.wait(timeout=5)
                    raise FhirServerError(f"FHIR test server exited with code {code}" + self._stderr_tail())
                buffer += chunk
        line = buffer.split(b"\n", 1)[0]
        found = re.fullmatch(rb'\{"port": (\d+)\}', line.strip())
        if not found:
            raise FhirServerError(f"unexpected first line from the FHIR test server: {line!r}")
        return int(found[1])

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace")[-4000:]
        return f"; stderr:\n{text}" if text.strip() else ""

    def stop(self) -> None:
        """Stop the node process (if running) and close the client."""
        if self._client is not None:
            self._client.close()
            self._client = None
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
            if process.stdout is not None:
                process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._port = None

    def __enter__(self) -> FhirTestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- addresses ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise FhirServerError("FHIR test server is not running")
        return self._port

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (admin endpoints live under ``/$admin/``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The FHIR base URL, ``http://127.0.0.1:PORT/fhir/R4``."""
        return f"{self.root_url}/fhir/R4"

    @property
    def running(self) -> bool:
        """Whether the node process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        """The node process id."""
        if self._process is None:
            raise FhirServerError("FHIR test server is not running")
        return self._process.pid

    @property
    def client(self) -> httpx.Client:
        """A plain httpx client (absolute URLs) shared by the helpers below."""
        if self._client is None:
            raise FhirServerError("FHIR test server is not running")
        return self._client

    # --- admin ----------------------------------------------------------------------------

    def _admin(self, method: str, name: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.client.request(method, f"{self.root_url}/$admin/{name}", json=payload)
        _check(response)
        result: dict[str, Any] = response.json()
        return result

    def health(self) -> bool:
        """Whether the server answers its health check."""
        try:
            return self.client.get(f"{self.root_url}/$admin/health").status_code == 200
        except httpx.HTTPError:
            return False

    def reset(self) -> None:
        """Empty the repository, cancel pending injected failures and zero the counters."""
        self._admin("POST", "reset")

    def fail_next(
        self,
        status: int,
        count: int = 1,
        retry_after: float | str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next ``count`` FHIR requests with ``status`` (and Retry-After, ``body`` if given)."""
        spec: dict[str, Any] = {"status": status, "count": count}
        if retry_after is not None:
            spec["retry_after"] = retry_after
        if body is not None:
            spec["body"] = body
        self._admin("POST", "fail", spec)

    def stats(self) -> dict[str, Any]:
        """Counts since the last reset.

        ``resources`` (live resources per type), ``total``, ``requests`` (FHIR requests served),
        ``injected_failures``, ``rollbacks`` (failed requests undone), ``errors`` (internal errors),
        ``busy_ms`` (time spent handling FHIR requests), ``indexed_searches``, ``scanned_searches``,
        ``pending_failures``.
        """
        return self._admin("GET", "stats")

    # --- FHIR -----------------------------------------------------------------------------

    def search(self, resource_type: str, **params: str | int) -> list[dict[str, Any]]:
        """All resources matching a search, following ``next`` links across pages."""
        resources: list[dict[str, Any]] = []
        url: str | None = f"{self.base_url}/{resource_type}"
        query: dict[str, str | int] | None = params
        while url:
            response = self.client.get(url, params=query)
            _check(response)
            bundle = response.json()
            resources.extend(entry["resource"] for entry in bundle.get("entry", []))
            url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
            query = None
        return resources

    def count(self, resource_type: str, **params: str | int) -> int:
        """How many resources match a search (``_summary=count``)."""
        response = self.client.get(f"{self.base_url}/{resource_type}", params={**params, "_summary": "count"})
        _check(response)
        return int(response.json()["total"])

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """One resource by id."""
        response = self.client.get(f"{self.base_url}/{resource_type}/{resource_id}")
        _check(response)
        result: dict[str, Any] = response.json()
        return result


def _check(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise FhirServerError(
            f"{response.request.method} {response.request.url} -> {response.status_code}: {response.text[:2000]}"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the server in the foreground until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m tests.fhir_server.launch", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port (0 picks a free one)")
    args = parser.parse_args(argv)
    with FhirTestServer(port=args.port) as server:
        print(f"FHIR test server: {server.base_url}", flush=True)
        print(f"admin: {server.root_url}/$admin/stats (Ctrl-C stops it)", flush=True)
        try:
            while server.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 0
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
