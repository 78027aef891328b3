"""PHI canary: a unique marker in every PHI field of every message, through every error path of a real
engine process, must end up in the content table and nowhere else.

Paths: HL7 NAKs from the accept path (unknown type, empty MSH-10, unknown charset, bytes that do not
decode), mapping errors (reply after transform, and in the worker), FHIR 4xx/5xx and a 200
transaction-response whose entry failed, each with an OperationOutcome that echoes the marker in
``diagnostics``, ``details``, ``expression`` and ``location``; retries, dead letters, ``dlq replay``
and ``messages reprocess``. Then searched: the engine log at DEBUG (text and JSON), the Prometheus text,
the replies, the output of every CLI command without ``--content``, and every column of every table
but ``contents`` (whatever tables and columns the schema has by then).
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from engine.cli import app
from engine.sources.mllp_client import send
from engine.store import codec
from tests.integration.harness import EngineProcess, free_port, wait_until

pytestmark = pytest.mark.integration

# Letters and digits only: valid in every HL7 field type that takes text, unchanged by escaping.
MARK = f"ZQX{secrets.token_hex(4).upper()}CANARY"
BIRTH_HL7, BIRTH_FHIR = "19610203", "1961-02-03"
BAD_BIRTH = "19610245"  # 45 February: the mapping refuses it
NEEDLES = (MARK, MARK.lower(), BIRTH_HL7, BIRTH_FHIR, BAD_BIRTH)
FINAL = {"sent", "dead", "error", "duplicate", "filtered"}


def _segments(*segs: str) -> bytes:
    return ("\r".join(segs) + "\r").encode()


def _msh(control_id: str, message_type: str, charset: str = "") -> str:
    msh = f"MSH|^~\\&|LIS|GENHOSP|EHR|GENHOSP|20240301101500+0000||{message_type}|{control_id}|P|2.5.1"
    return msh + ("||||||" + charset if charset else "")


def _pid(patient: str, birth: str = BIRTH_HL7) -> str:
    fields = [""] * 20
    fields[1] = "1"
    # one patient per message: delivery ordering would hold a patient's later messages behind a dead one
    fields[3] = f"{MARK}MRN{patient}^^^GENHOSP^MR~{MARK}ALT^^^GENHOSP^PI"
    fields[5] = f"{MARK}FAMILY^{MARK}GIVEN^{MARK}MIDDLE^^^^L"
    fields[6] = f"{MARK}MAIDEN^{MARK}MOTHER"
    fields[7] = birth
    fields[8] = "F"
    fields[11] = f"1 {MARK} STREET^APT {MARK}^{MARK}CITY^IL^62701^USA^H"
    fields[13] = f"{MARK}HOMEPHONE^PRN^PH~^NET^Internet^{MARK.lower()}@example.org"
    fields[14] = f"{MARK}WORKPHONE^WPN^PH"
    fields[18] = f"{MARK}ACCOUNT^^^GENHOSP^AN"
    fields[19] = f"{MARK}SSN"
    return "PID" + "|".join(fields)


def _nk1() -> str:
    return f"NK1|1|{MARK}NKFAMILY^{MARK}NKGIVEN|SPO^Spouse^HL70063|2 {MARK} ROAD^^{MARK}TOWN^IL^62702|{MARK}NKPHONE"


def _pv1(patient_class: str = "O") -> str:
    return (
        f"PV1|1|{patient_class}|LAB^^^GENHOSP||||{MARK}DOC^{MARK}DOCFAMILY^{MARK}DOCGIVEN"
        + "|" * 12
        + f"{MARK}VISIT^^^GENHOSP^VN"
    )


def oru(control_id: str, *, nm_value: str = "5.5", charset: str = "", message_type: str = "ORU^R01^ORU_R01") -> bytes:
    """An ORU^R01 with the marker in every PHI field (patient, next of kin, visit, order numbers, results, notes)."""
    return _segments(
        _msh(control_id, message_type, charset),
        _pid(control_id.replace("-", "")),
        _nk1(),
        _pv1(),
        f"ORC|RE|{MARK}PLACER^EHR|{MARK}FILLER^GENLAB||CM",
        f"OBR|1|{MARK}PLACER^EHR|{MARK}FILLER^GENLAB|24323-8^Comprehensive metabolic panel^LN|||20240301090000+0000"
        + "|" * 18
        + "F",
        f"NTE|1|L|Specimen of {MARK} received",
        f"OBX|1|ST|8251-1^Service comment^LN||{MARK} result text||||||F|||20240301093000+0000",
        f"NTE|1|L|{MARK} observation note",
        f"OBX|2|NM|2345-7^Glucose^LN||{nm_value}|mmol/L^mmol/L^UCUM|3.5-6.5|N|||F|||20240301093000+0000",
    )


def adt(control_id: str, *, trigger: str = "A01", birth: str = BIRTH_HL7, admit: str = "20240301100000+0000") -> bytes:
    return _segments(
        _msh(control_id, f"ADT^{trigger}^ADT_A01"),
        f"EVN|{trigger}|20240301101500+0000",
        _pid(control_id.replace("-", ""), birth),
        _nk1(),
        _pv1("I") + "|" * 25 + admit,
    )


def echo_outcome(variant: int) -> dict[str, Any]:
    """An OperationOutcome that repeats the marker wherever EHRs have been seen to put values."""
    paths = [
        [
            f"Patient.identifier.where(value='{MARK}MRN')",
            f"Patient.name.where(family={MARK}FAMILY).given",
            f"Patient?identifier=urn:oid:2.16.840.1.113883.3.72.5.20|{MARK}MRN",
        ],
        [
            f"Patient.identifier[0].value = {MARK}MRN",
            f'Patient.name[0].family "{MARK}FAMILY"',
            f"{MARK}MRN",
        ],
        [
            f"Patient.birthDate.where($this = @{BIRTH_FHIR})",
            f"Patient.{MARK.lower()}",
            f"Patient.telecom[0].value:{MARK}HOMEPHONE",
        ],
    ][variant % 3]
    return {
        "resourceType": "OperationOutcome",
        "text": {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{MARK}FAMILY</div>'},
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "diagnostics": f"Patient {MARK}FAMILY {MARK}GIVEN born {BIRTH_FHIR} (MRN {MARK}MRN) rejected",
                "details": {"text": f"identifier {MARK}MRN is taken", "coding": [{"code": f"{MARK}CODE"}]},
                "expression": paths,
            },
            {
                "severity": "error",
                "code": "business-rule",
                "location": [f"/f:Patient/f:name[0]/f:family/@value='{MARK}FAMILY'", f"Line[1] Col[{MARK}]"],
            },
            {"severity": f"{MARK}SEVERITY", "code": f"{MARK.lower()}", "expression": [f"Encounter.{MARK}VISIT"]},
        ],
    }


def transaction_response(status: str, outcome: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [{"response": {"status": status, "outcome": outcome}}],
    }


class Scenario:
    """The engine, its store and everything the test has seen leave it."""

    def __init__(self, eng: EngineProcess, metrics_port: int) -> None:
        self.eng = eng
        self.metrics_port = metrics_port
        self._lock = threading.Lock()
        self.seen: dict[str, str] = {}  # where → what was seen there
        self.stored_leaks: list[str] = []
        self.kinds: dict[str, set[str]] = {}  # content kind → ids of the messages whose content holds MARK

    def note(self, where: str, text: str | bytes) -> str:
        value = text.decode("latin-1") if isinstance(text, bytes) else text
        with self._lock:
            self.seen[f"{where} #{len(self.seen)}"] = value
        return value

    def send(self, port: int, raw: bytes, where: str) -> str:
        [reply] = send("127.0.0.1", port, [raw], timeout_s=20)
        text = self.note(f"reply to {where}", reply)
        return text.split("MSA|", 1)[1][:2] if "MSA|" in text else "??"

    def cli(self, *args: str) -> str:
        """``interlink ARGS`` in its own process (the commands that change state)."""
        done = self.eng.cli(*args)
        self.note(f"interlink {' '.join(args)}", done.stdout + done.stderr)
        return done.stdout

    def show(self, *args: str) -> str:
        """``interlink ARGS`` in this process: the read-only listings (a process each costs ~1 s here)."""
        result = CliRunner().invoke(app, [*args, "--config", str(self.eng.config)])
        assert result.exit_code == 0, (args, result.output)
        return self.note(f"interlink {' '.join(args)}", result.output)

    def rows(self) -> list[Any]:
        store = self.eng.store()
        try:
            return list(store.list_messages(limit=1000))
        finally:
            store.close()

    def by_control(self) -> dict[str, Any]:
        return {r.control_id: r for r in self.rows()}

    def wait_statuses(self, expected: dict[str, str | set[str]], timeout_s: float = 60) -> None:
        def done() -> bool:
            rows = self.by_control()
            for cid, want in expected.items():
                status = rows[cid].status if cid in rows else None
                if status not in (want if isinstance(want, set) else {want}):
                    return False
            return True

        wait_until(done, timeout_s, f"statuses {expected} (log: {self.eng.tail()})", interval_s=0.1)


def run_scenario(s: Scenario, fhir: Any) -> None:
    eng = s.eng
    lab, adt_port = eng.lab_port, eng.adt_port

    # FHIR 422 with an echoing OperationOutcome: permanent, dead at once
    fhir.fail_next(422, count=1, body=echo_outcome(0))
    assert s.send(lab, oru("CAN-422"), "ORU 422") == "AA"
    s.wait_statuses({"CAN-422": "dead"})
    # FHIR 503 (echoing) three times: retried, then dead when retries are exhausted
    fhir.fail_next(503, count=3, body=echo_outcome(1))
    assert s.send(lab, oru("CAN-503"), "ORU 503") == "AA"
    s.wait_statuses({"CAN-503": "dead"})
    # HTTP 200, but the transaction-response entry failed with an echoing outcome
    fhir.fail_next(200, count=1, body=transaction_response("422 Unprocessable Entity", echo_outcome(2)))
    assert s.send(lab, oru("CAN-TX"), "ORU entry 422") == "AA"
    s.wait_statuses({"CAN-TX": "dead"})

    # the accept path: NAKs
    assert s.send(lab, adt("CAN-TYPE"), "ADT on the lab channel") == "AR"
    assert s.send(adt_port, adt("CAN-A99", trigger="A99"), "unknown trigger") == "AR"
    assert s.send(lab, oru(""), "empty MSH-10") == "AR"
    assert s.send(lab, oru("CAN-CHARSET", charset="KLINGON"), "unknown charset") == "AE"
    broken = oru("CAN-BYTES").replace(f"{MARK}GIVEN".encode(), f"{MARK}\xff\xfeGIVEN".encode("latin-1"))
    assert s.send(lab, broken, "invalid UTF-8") == "AE"
    # mapping errors: replied after transform (ADT), or found by the worker (ORU, replied on commit)
    assert s.send(adt_port, adt("CAN-BIRTH", birth=BAD_BIRTH), "invalid PID-7") == "AE"
    assert s.send(adt_port, adt("CAN-ADMIT", admit=MARK), "PV1-44 not a date/time") == "AE"
    assert s.send(lab, oru("CAN-NM", nm_value=MARK), "OBX-5 NM not a number") == "AA"
    # and the good path
    assert s.send(adt_port, adt("CAN-OK"), "good ADT") == "AA"
    s.wait_statuses(
        {
            "CAN-TYPE": "error",
            "CAN-A99": "error",
            "CAN-CHARSET": "error",
            "CAN-BYTES": "error",
            "CAN-BIRTH": "error",
            "CAN-ADMIT": "error",
            "CAN-NM": "error",
            "CAN-OK": "sent",
        }
    )
    ids = {cid: r.id for cid, r in s.by_control().items()}
    inspect(s, ids.values(), full=False)

    # replay every dead letter into 500s (echoing): retried and dead again
    fhir.fail_next(500, count=9, body=echo_outcome(1))
    assert "3 delivery(ies)" in s.cli("dlq", "replay", "--all")
    wait_until(lambda: fhir.stats()["pending_failures"] == 0, 60, "the replayed deliveries to fail again")
    s.wait_statuses({"CAN-422": "dead", "CAN-503": "dead", "CAN-TX": "dead"})
    inspect(s, ids.values(), full=False)

    # replay one, reprocess another from raw (both delivered now), replay the rest
    s.cli("dlq", "replay", ids["CAN-422"])
    s.cli("messages", "reprocess", ids["CAN-503"], ids["CAN-NM"], ids["CAN-BIRTH"])
    s.wait_statuses({"CAN-422": "sent", "CAN-503": "sent", "CAN-NM": "error", "CAN-BIRTH": "error"})
    s.cli("messages", "reprocess", ids["CAN-OK"])  # refused: not in error or dead
    s.cli("dlq", "replay", "--all")
    s.wait_statuses({"CAN-TX": "sent"})
    inspect(s, ids.values())


def inspect(s: Scenario, message_ids: Iterable[str], *, full: bool = True) -> None:
    """Everything an operator can see without --content, the metrics, and every stored column."""
    commands = [("status",), ("messages", "list"), ("dlq", "list")]
    if full:
        commands += [("messages", "list", "--status", status) for status in ("error", "dead", "sent")]
        commands += [("messages", "list", "--channel", "adt"), ("dlq", "list", "--channel", "lab-results")]
        commands += [("messages", "show", message_id) for message_id in message_ids]
    for args in commands:
        s.show(*args)
    s.note("metrics", httpx.get(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=10).text)
    leaks, kinds = stored_columns(s.eng.database_url)
    s.stored_leaks.extend(leaks)
    for kind, ids in kinds.items():
        s.kinds.setdefault(kind, set()).update(ids)


def stored_columns(database_url: str) -> tuple[list[str], dict[str, set[str]]]:
    """Needles found in any column of any table but ``contents``; and the content kinds holding MARK."""
    leaks: list[str] = []
    kinds: dict[str, set[str]] = {}
    engine = sa.create_engine(database_url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        with engine.connect() as c:
            for table in meta.sorted_tables:
                rows = list(c.execute(sa.select(table)).mappings())
                if table.name == "contents":  # stored compressed (engine/store/codec.py): read as the store does
                    by_message: dict[str, list[Any]] = {}
                    for row in rows:
                        by_message.setdefault(str(row["message_id"]), []).append(row)
                    for message_id, its in by_message.items():
                        plain = codec.decode_rows([(r["id"], r["data"], r["codec"]) for r in its])
                        for r in its:
                            if MARK in _text(plain.get(r["id"], b"")):
                                kinds.setdefault(str(r["kind"]), set()).add(message_id)
                    continue
                for row in rows:
                    for column, value in row.items():
                        text = _text(value)
                        found = [n for n in NEEDLES if n in text]
                        if found:
                            leaks.append(f"{table.name}.{column}: {found} in {text[:300]!r}")
    finally:
        engine.dispose()
    return leaks, kinds


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("latin-1")
    return value if isinstance(value, str) else ""  # numbers cannot hold the marker


def leaks_in(seen: dict[str, str]) -> list[str]:
    out = []
    for where, text in seen.items():
        for needle in NEEDLES:
            at = text.find(needle)
            if at >= 0:
                out.append(f"{where}: {needle!r} in …{text[max(0, at - 150) : at + 80]!r}…")
    return out


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_phi_canary_reaches_only_the_content_table(
    tmp_path: Path, fhir: Any, log_format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in [v for v in os.environ if v.startswith("INTERLINK_")]:
        monkeypatch.delenv(var)  # the in-process CLI reads only the engine's config file
    metrics_port = free_port()
    eng = EngineProcess(
        tmp_path / "engine",
        fhir_base_url=fhir.base_url,
        retry={"max_attempts": 3, "min_backoff_ms": 50, "max_backoff_ms": 200},
        extra_settings={
            "log_level": "DEBUG",
            "log_format": log_format,
            "metrics_port": metrics_port,
            "sweeper": {"interval_s": 0.5, "grace_s": 0.5},
        },
    )
    s = Scenario(eng, metrics_port)
    with eng:
        run_scenario(s, fhir)
    log = eng.log.read_text(errors="replace")
    s.seen["engine log"] = log
    after_stop, _ = stored_columns(eng.database_url)
    s.stored_leaks.extend(after_stop)
    leaks = leaks_in(s.seen) + s.stored_leaks
    assert not leaks, "\n".join(leaks)
    kinds = s.kinds

    # the marker did travel: raw, transformed and the echoing responses are in the content table
    assert {"raw", "transformed", "response"} <= set(kinds), kinds
    assert len(kinds["raw"]) == len(s.rows()) == 12
    # the log is not empty and really is in the configured format
    lines = [line for line in log.splitlines() if line.strip()]
    assert any("DEBUG" in line or '"level":"debug"' in line for line in lines)
    if log_format == "json":
        assert all(isinstance(orjson.loads(line), dict) for line in lines), lines[:5]
    # the errors that were stored still name places and codes
    assert "OperationOutcome error invalid at Patient.identifier" in "\n".join(s.seen.values())
