"""Headless Chromium (Debian's ``chromium``) driven by Playwright for Python, for the dashboard's tests.

Playwright never downloads a browser here: it is pointed at the system binary (``scripts/test-services.sh``
installs it). ``browser`` is one Chromium per test module; ``shots`` is where screenshots go: the
``INTERLINK_ARTIFACTS`` folder when set (CI keeps it), else the test's own tmp folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("INTERLINK_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/test-services.sh (installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def shots(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """The folder for this test's screenshots."""
    root = os.environ.get("INTERLINK_ARTIFACTS")
    folder = Path(root) / "browser" / request.node.name if root else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
