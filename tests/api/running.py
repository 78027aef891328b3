"""An engine started in this test process (its own event loop in a thread), with its HTTP server on a free
loopback port, for tests that talk to it over real HTTP with httpx."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from engine.runtime import Engine
from engine.settings import Settings
from tests.integration.harness import free_port

ROOT = Path(__file__).resolve().parents[2]

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes, a test key
OTHER_SECRET = "whsec_" + "dGhpcyBpcyBhbm90aGVyIHRlc3Qga2V5IQ=="


def webhook_channel(name: str = "events", *, auth: dict[str, Any] | None = None, out: Path, **source: Any) -> dict:
    return {
        "name": name,
        "source": {"type": "webhook", "auth": auth or {"type": "none"}, **source},
        "identifiers": {"authority": "HOSP"},
        "validation": "full",
        "destinations": [{"name": "ndjson", "type": "file", "path": str(out / f"{name}.ndjson")}],
    }


class RunningEngine:
    """``interlink run`` in a thread: ``url`` is its HTTP server, ``engine`` the Engine object."""

    def __init__(
        self, tmp: Path, channels: list[dict], *, workers: bool = True, hl7_maps: bool = False, **settings: Any
    ) -> None:
        """``hl7_maps``: compile the project's maps (seconds); otherwise an empty mapping folder (FHIR only)."""
        (tmp / "channels").mkdir(parents=True, exist_ok=True)
        maps = ROOT / "mappings" if hl7_maps else tmp / "no-maps"
        (maps / "hl7v2").mkdir(parents=True, exist_ok=True)
        for ch in channels:
            (tmp / "channels" / f"{ch['name']}.yaml").write_text(yaml.safe_dump(ch))
        self.port = free_port()
        self.settings = Settings.model_validate(
            {
                "data_dir": tmp / "data",
                "database_url": f"sqlite:///{tmp}/store.db",
                "channels_dir": tmp / "channels",
                "mappings_dir": maps,
                "mapping_processes": 0,
                "metrics_port": 0,
                "http_port": self.port,
                "worker_threads": 2,
                "sweeper": {"interval_s": 1, "grace_s": 1},
                **settings,
            }
        )
        self.engine = Engine(self.settings, workers=workers)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        scheme = "https" if self.settings.http_tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> RunningEngine:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.engine.start(), self.loop).result(60)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.engine.stop(), self.loop).result(60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


@contextmanager
def running(tmp: Path, channels: list[dict], **kw: Any) -> Iterator[RunningEngine]:
    with RunningEngine(tmp, channels, **kw) as eng:
        yield eng
