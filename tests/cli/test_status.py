"""``interlink status`` (engine/cli_status.py) against a real engine: the snapshot through its admin API with a
viewer token (the engine's channel states) and from the store without one (``store only``), counters equal to
SQL counts, what waits and an active alert listed; the live view redrawn with rates between samples; a sample
the API cannot give taken from the store."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from pathlib import Path

import httpx
from rich.console import Console
from sqlalchemy import text

from engine.alerts.book import AlertBook, NewAlert
from engine.cli_status import Sample, render, sample, watch
from engine.settings import Settings
from tests.api.admin.conftest import AdminAPI, admin_api_factory  # noqa: F401 (the fixture)
from tests.api.admin.test_channels import FHIR, PATIENT
from tests.cli.test_actions import _config, cli
from tests.integration.harness import free_port


def row(out: str, channel: str) -> list[str]:
    (line,) = [ln.split() for ln in out.splitlines() if ln.split()[:1] == [channel]][:1]
    return line


def post(api: AdminAPI, n: int) -> None:
    for _ in range(n):
        assert api.client(None).post("/webhooks/events", json=PATIENT, headers=FHIR).status_code == 202


def test_snapshot_through_the_api_and_from_the_store(
    admin_api_factory: Callable[..., AdminAPI],  # noqa: F811
    tmp_path: Path,
) -> None:
    api = admin_api_factory(workers=False)  # nothing is processed: what was received waits
    post(api, 3)
    AlertBook(api.store).raise_alerts([NewAlert("events", "queue_age", "stuck", "k1", {"age_s": 61})])
    config = _config(api, tmp_path)
    with api.store.work.connect() as conn:
        received = conn.execute(text("SELECT count(*) FROM messages WHERE channel = 'events'")).scalar_one()
    assert received == 3

    code, out, err = cli(config, "status", "--once")
    assert code == 0, err
    assert "(store)" in out
    _, state1, state2, *numbers = row(out, "events")
    assert (state1, state2) == ("store", "only")
    #           received filtered queued sent errored dead in/s out/s waiting oldest alerts
    assert numbers[:6] == ["3", "0", "3", "0", "0", "0"] and numbers[6:8] == ["-", "-"]
    assert numbers[8] == "3" and numbers[9].endswith("s") and numbers[10] == "1"
    assert "(to process)" in out and "received 3" in out  # the Waiting table
    assert "queue_age" in out and "stuck" in out  # the active alert, by kind and rule
    assert "held in order behind an earlier message: 0" in out
    assert "MRN-1" not in out and "1.2.3" not in out  # metadata only

    code, out, err = cli(config, "status", "--once", token=api.tokens["viewer"])
    assert code == 0, err
    assert f"(engine at {api.url})" in out and row(out, "events")[1:5] == ["running", "3", "0", "3"]
    assert api.client("admin").post("/api/v1/channels/events/pause").status_code == 200
    assert row(cli(config, "status", token=api.tokens["viewer"])[1], "events")[1] == "paused"  # not a TTY: once

    code, _, err = cli(config, "status", "--once", token="not-a-token")
    assert code == 1 and "refused the token (401)" in err


def test_live_view_redraws_with_rates_and_falls_back_to_the_store(
    admin_api_factory: Callable[..., AdminAPI],  # noqa: F811
    tmp_path: Path,
) -> None:
    api = admin_api_factory(workers=False)
    settings = Settings.load(_config(api, tmp_path))
    viewer = api.client("viewer")

    first = sample(settings, api.store, viewer)
    post(api, 4)
    second = dataclasses.replace(sample(settings, api.store, viewer), at=first.at + 2.0)
    out = io.StringIO()
    Console(file=out, width=200).print(render(second, first))
    assert row(out.getvalue(), "events")[8:10] == ["2.0", "0.0"]  # 4 received in 2 s, none sent

    frames: list[Sample] = []

    def read() -> Sample:
        frames.append(sample(settings, api.store, viewer))
        return frames[-1]

    screen = io.StringIO()
    watch(read, Console(file=screen, force_terminal=True, width=200), 0.0, frames=3, sleep=lambda _: post(api, 1))
    assert [f.channels[0]["counters"]["received"] for f in frames] == [4, 5, 6]
    assert screen.getvalue().count("Interlink channels") >= 3  # drawn for each sample, in place (Live's cursor moves)

    gone = httpx.Client(base_url=f"http://127.0.0.1:{free_port()}")
    fallback = sample(settings, api.store, gone)
    assert fallback.source == "store" and fallback.channels[0]["state"] == "store only"
    assert fallback.channels[0]["counters"]["received"] == 7  # the sleep after the last frame posted one more
