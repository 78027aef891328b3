"""pytest fixtures for the FHIR test server; load with ``pytest_plugins = ["tests.fhir_server.fixtures"]``.

``fhir_server`` (session) is a started :class:`FhirTestServer`; ``fhir`` (function) is the same server,
emptied first. Without node/npm the tests are skipped locally and fail under ``CI=true``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.fhir_server.launch import FhirServerUnavailable, FhirTestServer


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirTestServer]:
    """A running FHIR test server shared by the whole session."""
    server = FhirTestServer()
    try:
        server.start()
    except FhirServerUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"FHIR test server unavailable under CI=true: {exc}")
        pytest.skip(f"FHIR test server unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fhir(fhir_server: FhirTestServer) -> FhirTestServer:
    """The shared FHIR test server, reset to empty with no pending injected failures."""
    fhir_server.reset()
    return fhir_server
