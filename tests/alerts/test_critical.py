"""Critical results: found in the mapped FHIR bundle by the pipeline hook, told to a real HTTP receiver
(signed), escalated to the second target when nobody acknowledged them in time, never logged with values."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from prometheus_client import generate_latest
from sqlalchemy import delete, update

from engine.alerts.book import AlertBook
from engine.alerts.config import CriticalConfig
from engine.alerts.critical import INTERPRETATION_SYSTEM, CriticalResults, _may_hold, findings
from engine.alerts.evaluator import Evaluator
from engine.config.channel import Channel
from engine.errors import ConfigError
from engine.pipeline import Pipeline
from engine.store import Store
from engine.store.repository import NewMessage
from engine.store.schema import deliveries, messages
from engine.transform import MappingSet
from engine.transform.mappingset import load_mappings
from tests.alerts.receiver import SECRET_ENV, Receiver, channel
from tests.alerts.test_rules import Clock
from tests.api.running import ROOT, RunningEngine, running, webhook_channel
from tests.integration.harness import wait_until
from tests.integration.messages import oru

LOINC = "http://loinc.org"
MRN, VALUE = "MRN-CRIT-4711", "7.9"
CRITICAL = {"target": "first", "escalate_to": "second", "escalate_after_min": 15}


def obs(full_url: str, *, flag: str | None = None, code: str = "2823-3", value: Any = 6.1) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "valueQuantity": {"value": value, "unit": "mmol/L"},
    }
    if flag:
        resource["interpretation"] = [{"coding": [{"system": INTERPRETATION_SYSTEM, "code": flag}]}]
    return {"fullUrl": full_url, "resource": resource}


def test_findings_by_interpretation_and_by_rule() -> None:
    config = CriticalConfig.model_validate(
        {
            "target": "t",
            "rules": [{"name": "k-high", "system": LOINC, "code": "2823-3", "comparator": ">=", "value": 6.5}],
        }
    )
    bundle = {"entry": [
        obs("urn:uuid:a", flag="HH"), obs("urn:uuid:b", flag="H"), obs("urn:uuid:c", flag="LL", code="1"),
        obs("urn:uuid:d", value=6.5), obs("urn:uuid:e", value=6.4), obs("urn:uuid:f", value=True),
        {"fullUrl": "urn:uuid:g", "resource": {"resourceType": "Patient"}}, "garbage", {"resource": None},
    ]}  # fmt: skip
    found = findings(bundle, config)
    assert [(f.full_url, f.interpretation, f.rule) for f in found] == [
        ("urn:uuid:a", "HH", ""),
        ("urn:uuid:c", "LL", ""),
        ("urn:uuid:d", "", "k-high"),
    ]
    assert found[0].detail() == {"observation": "urn:uuid:a", "interpretation": "HH", "rule": "",
                                 "codes": ["http://loinc.org|2823-3"]}  # fmt: skip
    assert findings({"entry": "nope"}, config) == [] and findings([1], config) == []
    other_system = {"entry": [{"fullUrl": "u", "resource": {**obs("u", flag="HH")["resource"], "interpretation": [
        {"coding": [{"system": "http://example.org/flags", "code": "HH"}]}]}}]}  # fmt: skip
    assert findings(other_system, CriticalConfig(target="t")) == []


@pytest.fixture(scope="module")
def maps() -> MappingSet:
    return load_mappings(ROOT / "mappings")


def pipeline(store: Store, maps: MappingSet, ch: Channel) -> Pipeline:
    """Wired as the engine wires it (engine/runtime.py): the hook reads the channel's settings per batch."""
    p = Pipeline(store, maps, [ch])
    p.hooks = (CriticalResults(AlertBook(store), lambda name: p.channels[name].alerts.critical),)  # type: ignore[union-attr]
    return p


def critical_oru(control_id: str) -> bytes:
    """Two results: the first flagged HH (OBX-8), the second normal."""
    return oru(control_id, mrn=MRN, obx=2, value=VALUE).replace(b"|3.5-6.5|N|", b"|3.5-6.5|HH|", 1)


def process(store: Store, p: Pipeline, raw: bytes) -> str:
    m = NewMessage("lab", raw)
    store.insert_messages([m])
    p.process(m.id)
    return m.id


def test_hh_result_notified_signed_then_escalated(
    store: Store, maps: MappingSet, tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    ch = channel(tmp_path, receiver.url, {"critical": CRITICAL})
    p = pipeline(store, maps, ch)
    with caplog.at_level("DEBUG"):
        mid = process(store, p, critical_oru("C1"))
        clock = Clock(time.time())  # the pipeline raised it at the real time; the evaluator's clock moves on
        ev = Evaluator(store, [ch], clock=clock)
        [alert] = AlertBook(store).listing()
        assert (alert.kind, alert.state, alert.message_id, alert.rule) == ("critical", "open", mid, "HH")
        assert ev.step() == 1
        clock.now += 14 * 60
        ev.step()
        assert len(receiver.requests) == 1
        clock.now += 2 * 60  # 16 minutes, nobody acknowledged
        ev.step()
        ev.step()
    first, second = receiver.notices("/first"), receiver.notices("/second")
    assert [n["notice"] for n in first] == ["raised"] and [n["notice"] for n in second] == ["escalated"]
    assert second[0]["alert"]["state"] == "escalated"
    result = first[0]["result"]
    assert result["observation"]["interpretation"][0]["coding"][0]["code"] == "HH"
    assert result["observation"]["valueQuantity"]["value"] == float(VALUE)
    assert result["patient"]["identifier"][0]["value"] == MRN
    assert first[0]["alert"]["detail"]["observation"].startswith("urn:uuid:")
    # the log names ids, channels and rules: never the patient, the value or the content
    for secret in (MRN, "TESTER", VALUE, "Analyte"):
        assert secret not in caplog.text
    assert mid in caplog.text and "escalated" in caplog.text
    stored = AlertBook(store).get(alert.id)
    assert MRN not in str(tuple(stored)) and VALUE not in stored.detail


def test_processed_again_raises_no_second_alert(
    store: Store, maps: MappingSet, tmp_path: Path, receiver: Receiver
) -> None:
    ch = channel(tmp_path, receiver.url, {"critical": CRITICAL})
    p = pipeline(store, maps, ch)
    mid = process(store, p, critical_oru("C2"))
    with store.work.begin() as conn:  # as if the claim after the hook had not committed (a crash): again
        conn.execute(update(messages).where(messages.c.id == mid).values(status="received"))
        conn.execute(delete(deliveries).where(deliveries.c.message_id == mid))
    assert p.process(mid).processed[mid].status == "transformed"
    assert len(AlertBook(store).listing()) == 1
    process(store, p, oru("C3", mrn=MRN, obx=2))  # all normal: no alert
    assert len(AlertBook(store).listing()) == 1


def test_acknowledged_in_time_is_not_escalated(
    store: Store, maps: MappingSet, tmp_path: Path, receiver: Receiver
) -> None:
    ch = channel(tmp_path, receiver.url, {"critical": CRITICAL})
    p = pipeline(store, maps, ch)
    process(store, p, critical_oru("C4"))
    clock = Clock(time.time())  # the pipeline raised it at the real time; the evaluator's clock moves on
    ev = Evaluator(store, [ch], clock=clock)
    ev.step()
    [alert] = AlertBook(store).listing()
    acked = AlertBook(store).acknowledge(alert.id, "ward-nurse", clock.now + 60)
    assert (acked.state, acked.acked_by) == ("acknowledged", "ward-nurse")
    clock.now += 60 * 60
    ev.step()
    assert [n["notice"] for n in receiver.notices()] == ["raised"]
    assert receiver.notices("/second") == []


def test_channel_without_critical_settings_is_not_read(store: Store, maps: MappingSet, tmp_path: Path) -> None:
    ch = channel(tmp_path, "http://127.0.0.1:9", {"rules": [{"kind": "dead_letters", "target": "first"}]})
    p = pipeline(store, maps, ch)
    process(store, p, critical_oru("C5"))
    assert AlertBook(store).listing() == []


def test_engine_raises_and_notifies_a_critical_fhir_result(tmp_path: Path, receiver: Receiver) -> None:
    """The runtime's wiring: a webhook channel (FHIR input, no HL7 maps), the hook in its workers and the
    evaluator thread of `interlink run`, with the real clock."""
    targets = [{"type": "http", "name": "first", "url": f"{receiver.url}/first", "signing": {"secret_env": SECRET_ENV}}]
    ch = {**webhook_channel(out=tmp_path / "out"), "alerts": {"targets": targets, "interval_s": 0.1,
                                                             "critical": {"target": "first"}}}  # fmt: skip
    body = orjson.dumps({**obs("x", flag="LL")["resource"], "identifier": [{"system": "urn:lab", "value": "R1"}]})
    with running(tmp_path, [ch]) as eng:
        fhir = {"content-type": "application/fhir+json"}
        answer = httpx.post(f"{eng.url}/webhooks/events", content=body, headers=fhir)
        assert answer.status_code == 202, answer.text
        wait_until(lambda: len(receiver.requests) == 1, 20, "the critical result notice")
        assert b"interlink_alerts_active 1.0" in generate_latest(eng.engine.metrics.registry)
    [notice] = receiver.notices("/first")
    assert notice["alert"]["message_id"] == answer.json()["message_id"]
    assert notice["alert"]["detail"]["interpretation"] == "LL"
    assert notice["result"]["observation"]["identifier"] == [{"system": "urn:lab", "value": "R1"}]


def test_a_target_without_its_secret_stops_the_start_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    targets = [{"type": "http", "name": "pager", "url": "http://127.0.0.1:9/", "signing": {"secret_env": SECRET_ENV}}]
    ch = {**webhook_channel(out=tmp_path / "out"), "alerts": {"targets": targets, "critical": {"target": "pager"}}}
    eng = RunningEngine(tmp_path, [ch])
    with pytest.raises(
        ConfigError, match=rf"channel events: alerts.targets pager: signing: no secret found \(\${SECRET_ENV}\)"
    ):
        asyncio.run(eng.engine.start())
    eng.loop.close()
    assert eng.engine.sources == {} and eng.engine.http is None


def test_the_byte_prefilter_never_hides_a_critical_result() -> None:
    config = CriticalConfig(target="t", interpretations=["HH", "LL", "AA", "<"])
    for flag in ("HH", "LL", "AA", "<"):
        bundle = {"entry": [obs("urn:uuid:a", flag=flag)]}
        for raw in (orjson.dumps(bundle), json.dumps(bundle, indent=2).encode(), json.dumps(bundle).encode()):
            assert _may_hold(raw, config) and findings(orjson.loads(raw), config)
    assert not _may_hold(orjson.dumps({"entry": [obs("urn:uuid:a", flag="H")]}), config)
    assert not _may_hold(b"{}", CriticalConfig(target="t", interpretations=[]))


def test_alerts_added_by_a_reload_apply_to_hook_and_evaluator(tmp_path: Path, receiver: Receiver) -> None:
    ch = webhook_channel(out=tmp_path / "out")
    body = orjson.dumps({**obs("x", flag="AA")["resource"], "identifier": [{"system": "urn:lab", "value": "R2"}]})
    fhir = {"content-type": "application/fhir+json"}
    with running(tmp_path, [ch]) as eng:
        first = httpx.post(f"{eng.url}/webhooks/events", content=body, headers=fhir).json()["message_id"]
        wait_until(lambda: eng.engine.store.message(first).status == "sent", 20, "the first delivery")
        targets = [{"type": "http", "name": "t", "url": f"{receiver.url}/t", "signing": {"secret_env": SECRET_ENV}}]
        ch["alerts"] = {"targets": targets, "interval_s": 0.1, "critical": {"target": "t"}}
        (tmp_path / "channels" / "events.yaml").write_text(yaml.safe_dump(ch))
        assert asyncio.run_coroutine_threadsafe(eng.engine.reload(), eng.loop).result(30).channels == ["events"]
        body = body.replace(b"R2", b"R3")
        second = httpx.post(f"{eng.url}/webhooks/events", content=body, headers=fhir).json()["message_id"]
        wait_until(lambda: len(receiver.requests) == 1, 20, "the critical result notice")
    [notice] = receiver.notices("/t")
    assert notice["alert"]["message_id"] == second  # the result before the reload raised nothing
