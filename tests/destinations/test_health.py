"""Every destination answers ``healthcheck()`` quickly, with a PHI-free reason when the system is down."""

from __future__ import annotations

from pathlib import Path

import httpx

from engine.destinations import REGISTRY, make_destination
from engine.destinations.fhir import FhirConfig
from engine.destinations.file import FileConfig
from engine.destinations.http import HttpConfig
from tests.fhir_server.launch import FhirTestServer
from tests.integration.harness import free_port


def test_every_registered_kind_has_a_healthcheck() -> None:
    for kind, (config, cls) in REGISTRY.items():
        assert config.model_fields["type"].annotation.__args__ == (kind,)
        assert callable(getattr(cls, "healthcheck", None)), kind
        assert callable(getattr(config, "target", None)), kind


def test_fhir_server_up_and_down(fhir: FhirTestServer) -> None:
    up = make_destination(FhirConfig(type="fhir", name="ehr", base_url=fhir.base_url))
    down = make_destination(FhirConfig(type="fhir", name="ehr", base_url=f"http://127.0.0.1:{free_port()}/fhir"))
    try:
        assert up.healthcheck().ok
        health = down.healthcheck()
        assert not health.ok and "ConnectError" in health.detail
    finally:
        up.close()
        down.close()


def test_fhir_metadata_must_answer_2xx() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(404 if r.url.path.endswith("/metadata") else 200))
    dest = make_destination(FhirConfig(type="fhir", name="ehr", base_url="http://ehr.test/fhir"), transport=transport)
    assert dest.healthcheck() == type(dest.healthcheck())(False, "HTTP 404")


def test_http_any_answer_is_reachable() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(405))
    dest = make_destination(HttpConfig(type="http", name="hook", url="http://hook.test/in"), transport=transport)
    assert dest.healthcheck().ok


def test_file_folder_writable_or_not(tmp_path: Path) -> None:
    ok = make_destination(FileConfig(type="file", name="out", path=str(tmp_path / "new" / "out.ndjson")))
    (tmp_path / "blocker").write_text("")
    blocked = make_destination(FileConfig(type="file", name="out", path=str(tmp_path / "blocker" / "x" / "o.ndjson")))
    assert ok.healthcheck().ok
    assert not blocked.healthcheck().ok
