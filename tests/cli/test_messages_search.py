"""``interlink messages search`` and ``messages show``: metadata tables, ids by unique prefix, HL7 one segment
per line, reads and patient look-ups audited; ACK texts unescaped for ``interlink send``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from engine.cli import _ack_code, app
from engine.store import MessageStatus, NewMessage, ProcessResult, Store
from engine.store.access import AuditTrail

RAW = b"MSH|^~\\&|LIS|LAB|EHR|HOSP|20240301||ORU^R01|CTL-9|P|2.5.1\rPID|1||MRN-SECRET-3^^^HOSP^MR||DOE^JANE\r"


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Store]:
    for var in ("INTERLINK_CONFIG", "INTERLINK_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    cfg = tmp_path / "engine.yaml"
    cfg.write_text(yaml.safe_dump({"database_url": f"sqlite:///{tmp_path}/s.db"}))
    store = Store(f"sqlite:///{tmp_path}/s.db")
    yield cfg, store
    store.close()


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def processed(store: Store, mrn: str, *, id_: str | None = None) -> str:
    extra = {"id": id_} if id_ else {}
    [acc] = store.insert_messages(
        [NewMessage("lab", RAW, message_type="ORU^R01", control_id="CTL-9", charset="utf-8", **extra)]
    )
    store.finish_processing([
        ProcessResult(acc.id, MessageStatus.transformed, bundle=b'{"resourceType":"Bundle"}', destinations=("ehr",),
                      keys=(("mrn", store.pseudonym(mrn)),))
    ])  # fmt: skip
    return acc.id


def test_search_by_mrn_prints_metadata_and_audits_the_look_up(setup: tuple[Path, Store]) -> None:
    cfg, store = setup
    mid = processed(store, "MRN-SECRET-3")
    processed(store, "OTHER")
    code, out, _ = run("messages", "search", "--mrn", "MRN-SECRET-3", "--config", str(cfg))
    assert code == 0
    [line] = out.splitlines()
    assert line.startswith(mid) and "ORU^R01" in line and "CTL-9" in line and "ehr:pending" in line
    assert "MRN-SECRET" not in out and "DOE" not in out
    [entry] = AuditTrail(store).page(action="message.search").entries
    assert (entry.token_id, entry.target, entry.message_ids) == ("", "mrn", (mid,))
    code, out, _ = run("messages", "search", "--control-id", "CTL-9", "--type", "ORU", "--since", "1h",
                       "--config", str(cfg))  # fmt: skip
    assert code == 0 and len(out.splitlines()) == 2
    code, _, err = run("messages", "search", "--limit", "500", "--config", str(cfg))
    assert code == 1 and "--limit" in err


def test_show_takes_a_unique_prefix_and_prints_hl7_by_segment(setup: tuple[Path, Store]) -> None:
    cfg, store = setup
    one = processed(store, "M1", id_="abcdef01" + "1" * 24)
    processed(store, "M2", id_="abcdef01" + "2" * 24)
    code, out, _ = run("messages", "show", "abcdef011", "--config", str(cfg))
    assert code == 0 and f"message {one}" in out and "MRN-SECRET" not in out
    assert AuditTrail(store).page(action="message.read").entries == []  # no content: not audited
    code, out, _ = run("messages", "show", "abcdef011", "--content", "--config", str(cfg))
    assert code == 0
    lines = out.splitlines()
    assert "PID|1||MRN-SECRET-3^^^HOSP^MR||DOE^JANE" in lines and any(x.startswith("MSH|") for x in lines)
    [entry] = AuditTrail(store).page(action="message.read").entries
    assert entry.message_ids == (one,)
    code, _, err = run("messages", "show", "abcdef01", "--config", str(cfg))
    assert code == 1 and "more than one message" in err
    code, _, err = run("messages", "show", "abcdef019", "--config", str(cfg))
    assert code == 1 and "no message" in err


def test_ack_texts_are_shown_unescaped() -> None:
    ack = b"MSH|^~\\&|EHR|HOSP|LIS|LAB|2024||ACK|1|P|2.5.1\rMSA|AE|C1|PID-7 \\T\\ PID-8: not valid\\F\\ fix\r"
    assert _ack_code(ack) == ("AE", "PID-7 & PID-8: not valid| fix")
