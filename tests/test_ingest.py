"""The accept path: commit before reply, group commit, NAKs for bad input, duplicates, enhanced mode."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine import hl7v2, response
from engine.config.channel import Channel
from engine.errors import HL7Error, TransformError
from engine.ingest import GroupCommitter, Ingest
from engine.sources.base import Inbound
from engine.sources.hl7 import HL7Acceptor
from engine.sources.mllp import MLLPConfig, MLLPSource
from engine.sources.mllp_client import send_messages
from engine.store import ContentKind, NewMessage, Store

ORU = (
    "MSH|^~\\&|LIS|LAB|EHR|HOSP|20240101120000||ORU^R01^ORU_R01|{cid}|P|2.5.1\r"
    "PID|1||123^^^HOSP^MR||DOE^JANE||19800101|F\r"
    "OBR|1||F1|GLU^Glucose\r"
    "OBX|1|NM|GLU^Glucose||5.5|mmol/L|||||F\r"
)


def channel(**over) -> Channel:
    data = {
        "name": "lab",
        "source": {"type": "mllp", "port": 2575, "accept": ["ORU^R01"]},
        "destinations": [{"name": "out", "type": "file", "path": "x.ndjson"}],
        **over,
    }
    return Channel.model_validate(data)


@pytest.fixture
def store(tmp_path: Path):
    s = Store(f"sqlite:///{tmp_path}/s.db")
    yield s
    s.close()


def run(coro):
    return asyncio.run(coro)


def ack_fields(reply: str) -> tuple[str, str, str]:
    m = hl7v2.Message.parse(reply)
    msa = m.first("MSA")
    err = m.first("ERR")
    return msa.field(1), msa.field(2), err.field(3) if err else ""


def make(store: Store, ch: Channel, enqueued: list[str], transform_now=None, has_mapping=lambda t: t == "ORU^R01"):
    committer = GroupCommitter(store, enqueued.extend)
    acceptor = HL7Acceptor(ch, ch.source, Ingest(committer), has_mapping=has_mapping, transform_now=transform_now)
    return committer, acceptor


def test_ack_after_commit_and_enqueue(store: Store) -> None:
    enqueued: list[str] = []
    committer, ingest = make(store, channel(), enqueued)
    reply = run(ingest.handle(ORU.format(cid="C1").encode(), "127.0.0.1:5"))
    committer.close()
    assert ack_fields(reply.text) == ("AA", "C1", "")
    row = store.message(reply.message_id)
    assert row.status == "received" and row.message_type == "ORU^R01" and row.sender == "LIS|LAB"
    assert store.content(reply.message_id, ContentKind.raw) == ORU.format(cid="C1").encode()
    assert enqueued == [reply.message_id]


def test_concurrent_senders_share_commits(store: Store) -> None:
    enqueued: list[str] = []
    calls = []
    real = store.insert_messages
    store.insert_messages = lambda batch: calls.append(len(batch)) or real(batch)  # type: ignore[method-assign]
    committer, ingest = make(store, channel(), enqueued)

    async def many():
        return await asyncio.gather(*(ingest.handle(ORU.format(cid=f"C{i}").encode(), "p") for i in range(300)))

    replies = run(many())
    committer.close()
    assert all(ack_fields(r.text)[0] == "AA" for r in replies)
    assert sum(calls) == 300 and len(calls) < 300  # batched
    assert len(set(enqueued)) == 300


def test_duplicate_control_id_is_acked_not_processed(store: Store) -> None:
    enqueued: list[str] = []
    committer, ingest = make(store, channel(), enqueued)
    first = run(ingest.handle(ORU.format(cid="D1").encode(), "p"))
    again = run(ingest.handle(ORU.format(cid="D1").encode(), "p"))
    committer.close()
    assert ack_fields(again.text)[0] == "AA" and again.status == "duplicate"
    assert store.message(again.message_id).duplicate_of == first.message_id
    assert enqueued == [first.message_id]


@pytest.mark.parametrize(
    ("raw", "code", "err_code"),
    [
        (b"PID|1||123\r", "AR", "100"),  # no MSH
        (b"MSH|^~\\&|LIS|LAB|EHR|HOSP|2024||ORU^R01|X|P|2.5.1||||||ZZ-UNKNOWN\rPID|1\r", "AE", "204"),  # MSH-18
        ("MSH|^~\\&|LIS|LAB|EHR|HOSP|2024||ORU^R01|X|P|2.5.1\rPID|1||\xff\xfe\r".encode("latin-1"), "AE", "102"),
        (b"MSH|^~\\&|LIS|LAB|EHR|HOSP|2024||ADT^A01|X|P|2.5.1\rPID|1\r", "AR", "200"),  # not accepted here
        (b"MSH|^~\\&|LIS|LAB|EHR|HOSP|2024||ORU^R01||P|2.5.1\rPID|1\r", "AR", "101"),  # no MSH-10
    ],
    ids=["no-msh", "unknown-charset", "invalid-utf8", "wrong-type", "no-control-id"],
)
def test_bad_input_is_stored_with_error_and_nakked(store: Store, raw: bytes, code: str, err_code: str) -> None:
    enqueued: list[str] = []
    committer, ingest = make(store, channel(), enqueued)
    reply = run(ingest.handle(raw, "p"))
    committer.close()
    msa, _, err = ack_fields(reply.text)
    assert msa == code and err.startswith(err_code)
    row = store.message(reply.message_id)
    assert row.status == "error" and row.error
    assert store.content(reply.message_id, ContentKind.raw) == raw
    assert enqueued == []


def test_source_detected_error_is_stored(store: Store) -> None:
    committer, ingest = make(store, channel(), [])
    err = HL7Error("message exceeds 10 bytes", code="207")
    reply = run(ingest.handle(ORU.format(cid="O1").encode()[:10], "p", err))
    committer.close()
    assert store.message(reply.message_id).error == "message exceeds 10 bytes"


def test_enhanced_mode_uses_commit_codes_and_never_ack(store: Store) -> None:
    committer, ingest = make(store, channel(), [])
    enhanced = ORU.format(cid="E1").replace("|P|2.5.1\r", "|P|2.5.1|||AL|NE\r", 1)
    assert ack_fields(run(ingest.handle(enhanced.encode(), "p")).text)[0] == "CA"
    never = ORU.format(cid="E2").replace("|P|2.5.1\r", "|P|2.5.1|||NE|NE\r", 1)
    reply = run(ingest.handle(never.encode(), "p"))
    committer.close()
    assert reply.text == "" and store.message(reply.message_id).status == "received"


def test_after_transform_reply_names_the_field(store: Store) -> None:
    def transform_now(message_id: str) -> None:
        raise TransformError("not a valid date", field="PID-7", rule="PID-Patient.birthDate")

    enqueued: list[str] = []
    committer, ingest = make(store, channel(response="after_transform"), enqueued, transform_now)
    reply = run(ingest.handle(ORU.format(cid="T1").encode(), "p"))
    committer.close()
    m = hl7v2.Message.parse(reply.text)
    assert m.first("MSA").field(1) == "AE"
    assert "PID" in m.first("ERR").field(2) and "not a valid date" in reply.text
    assert enqueued == []  # processed inline, never queued


def test_store_unavailable_means_no_ack(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path}/s.db")
    with s.ingest.begin() as c:
        c.exec_driver_sql("DROP TABLE contents")
    committer, ingest = make(s, channel(), [])
    reply = run(ingest.handle(ORU.format(cid="U1").encode(), "p"))
    committer.close()
    s.close()
    assert ack_fields(reply.text)[0] == "AE" and reply.message_id is None


def test_commit_sync_for_threads(store: Store) -> None:
    committer = GroupCommitter(store, lambda rows: None)
    acc = committer.commit_sync(NewMessage(channel="lab", raw=b"x"))
    committer.close()
    assert store.message(acc.id) is not None


@pytest.mark.parametrize(
    "raw",
    [
        b"\xef\xbb\xbf" + ORU.format(cid="B1").encode(),  # UTF-8 BOM
        ORU.format(cid="B2").replace("\r", "\n").encode(),  # LF terminators
        ORU.format(cid="B3").replace("\r", "\r\n").encode(),  # CRLF terminators
        ORU.format(cid="B4").replace("|P|2.5.1\r", "|P|2.5.1||||||8859/1\r", 1).replace("DOE", "DÖE").encode("latin-1"),
    ],
    ids=["bom", "lf", "crlf", "latin-1-by-msh18"],
)
def test_accepts_what_senders_really_send(store: Store, raw: bytes) -> None:
    committer, ingest = make(store, channel(), [])
    reply = run(ingest.handle(raw, "p"))
    committer.close()
    assert ack_fields(reply.text)[0] == "AA"
    assert store.message(reply.message_id).message_type == "ORU^R01"
    assert store.content(reply.message_id, ContentKind.raw) == raw  # kept byte for byte
    assert ingest.encode(reply).decode(response.reply_codec(reply.charset, "utf-8")) == reply.text


# -- MSH-18 UTF-16/32: MLLP cannot carry them; the reply must be readable by the sender ------------------

WIDE = ORU.format(cid="W1").replace("|P|2.5.1\r", "|P|2.5.1||||||UNICODE UTF-16\r", 1)


@pytest.mark.parametrize("raw", [WIDE.encode(), WIDE.encode() + b"X"], ids=["decodes", "does-not-decode"])
def test_reply_to_a_wide_msh18_is_never_wide(store: Store, raw: bytes) -> None:
    committer, ingest = make(store, channel(), [])
    reply = run(ingest.handle(raw, "p"))
    committer.close()
    data = ingest.encode(reply)
    assert data.startswith(b"MSH|^~\\&|") and data.isascii() and b"\x00" not in data
    assert "UTF-16" not in reply.text  # the ACK's MSH-18 does not claim a charset it is not in


def test_wide_msh18_refused_by_the_source_is_stored_with_its_error(store: Store) -> None:
    committer, ingest = make(store, channel(), [])
    error = HL7Error("MSH-18 UNICODE UTF-16 cannot be carried by MLLP", code="204", location="MSH^1^18", reject=True)
    reply = run(ingest.handle(WIDE.encode(), "p", error))
    committer.close()
    assert ack_fields(ingest.encode(reply).decode("ascii")) == (
        "AR",
        "W1",
        "204^Unknown key identifier^HL70357",
    )
    row = store.message(reply.message_id)
    assert row.status == "error" and "MSH-18" in row.error
    assert store.content(reply.message_id, ContentKind.raw) == WIDE.encode()


def mllp_listener(store: Store, ch: Channel) -> tuple[GroupCommitter, MLLPSource]:
    """An MLLP source answering through HL7Acceptor, as the engine wires a channel."""
    committer, ingest = make(store, ch, [])

    async def handle(raw: bytes, inbound: Inbound) -> bytes:
        return ingest.encode(await ingest.handle(raw, inbound.peer, inbound.error))

    return committer, MLLPSource(MLLPConfig(type="mllp", port=0), handle, name="lab")


def over_mllp(store: Store, ch: Channel, messages: list[bytes]) -> list[bytes]:
    async def main() -> list[bytes]:
        committer, source = mllp_listener(store, ch)
        await source.start()
        try:
            return await send_messages("127.0.0.1", source.port, messages, timeout_s=5)
        finally:
            await source.stop()
            committer.close()

    return run(main())


def test_wide_msh18_over_mllp_gets_an_ascii_ar_and_is_stored(store: Store) -> None:
    utf32 = ORU.format(cid="W2").replace("|P|2.5.1\r", "|P|2.5.1||||||UNICODE UTF-32\r", 1).encode()
    encoded = "\ufeff" + ORU.format(cid="W3")  # really UTF-16: no MSH readable at all
    replies = over_mllp(store, channel(), [WIDE.encode(), utf32, encoded.encode("utf-16-le")])
    for reply, cid in zip(replies, ["W1", "W2", ""], strict=True):
        assert reply.startswith(b"MSH|^~\\&|") and reply.isascii() and b"\x00" not in reply
        assert ack_fields(reply.decode("ascii"))[:2] == ("AR", cid)
    assert ack_fields(replies[0].decode())[2].startswith("204")
    rows = store.list_messages(limit=10)
    assert len(rows) == 3 and {r.status for r in rows} == {"error"}
    assert {r.control_id for r in rows} == {"W1", "W2", ""}


def test_single_byte_msh18_is_answered_in_that_charset_over_mllp(store: Store) -> None:
    raw = (
        ORU.format(cid="L1")
        .replace("|LIS|LAB|", "|LIS|LABÖ|", 1)
        .replace("|P|2.5.1\r", "|P|2.5.1||||||8859/1\r", 1)
        .encode("latin-1")
    )
    (reply,) = over_mllp(store, channel(), [raw])
    assert "|LABÖ|".encode("latin-1") in reply  # MSH-6 of the ACK, in the sender's charset
    assert ack_fields(reply.decode("latin-1"))[:2] == ("AA", "L1")
