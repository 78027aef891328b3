"""Stored content is compressed on write and read back whole, on SQLite and PostgreSQL; rows written before
migration 0009 (plain) stay readable."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, insert, select

from engine.store import AttemptRecord, ContentKind, DeliveryStatus, MessageStatus, NewMessage, Store, codec, migrate
from engine.store.repository import ProcessResult
from engine.store.schema import contents
from engine.store.search import contents_of
from tests.integration.messages import oru

RAW = oru("CODEC-1", obx=8)
BUNDLE = orjson.dumps(
    {"resourceType": "Bundle", "type": "transaction", "entry": [{"fullUrl": f"urn:uuid:{i}"} for i in range(200)]}
)


@pytest.fixture
def store(store_url: str):
    s = Store(store_url)
    yield s
    s.close()


def stored_rows(store: Store, message_id: str) -> dict[str, tuple[int, int]]:
    """kind → (codec, stored length) as the table holds it."""
    with store.work.connect() as conn:
        rows = conn.execute(
            select(contents.c.kind, contents.c.destination, contents.c.codec, contents.c.data).where(
                contents.c.message_id == message_id
            )
        )
        return {k + (f"/{d}" if d else ""): (c, len(data)) for k, d, c, data in rows}


def test_every_content_kind_is_compressed_and_read_back(store: Store) -> None:
    [acc] = store.insert_messages([NewMessage("lab", RAW)])
    assert store.load_for_processing([acc.id])[0].raw == RAW
    result = ProcessResult(acc.id, MessageStatus.transformed, bundle=BUNDLE, destinations=("ehr",), channel="lab")
    assert store.finish_processing([result]) == {acc.id}
    assert store.load_for_delivery(acc.id, "ehr").bundle == BUNDLE
    sent, response = BUNDLE.replace(b"urn", b"URN"), b'{"resourceType":"Bundle","entry":[]}' * 10
    record = AttemptRecord(1, time.time(), 2.0, "sent", 200, None, sent, response)
    store.record_attempt(acc.id, "ehr", record, status=DeliveryStatus.sent, next_attempt_at=0)
    rows = stored_rows(store, acc.id)
    assert {k: c for k, (c, _) in rows.items() if k != "response/ehr"} == {
        "raw": codec.ZSTD,
        "transformed": codec.ZSTD,
        "sent/ehr": codec.ZSTD_REF,  # what was sent repeats the bundle: stored against it
    }
    assert rows["response/ehr"][0] in (codec.ZSTD, codec.ZSTD_REF)
    assert rows["raw"][1] < len(RAW) / 2 and rows["transformed"][1] < len(BUNDLE) / 5
    assert store.content(acc.id, ContentKind.raw) == RAW
    assert store.content(acc.id, ContentKind.transformed) == BUNDLE
    assert store.content(acc.id, ContentKind.sent, "ehr") == sent
    assert store.content(acc.id, ContentKind.response, "ehr") == response


def test_requests_and_responses_are_stored_against_the_bundle_they_repeat(store: Store) -> None:
    """A split FHIR transaction is the bundle's entries again: it costs a fraction of storing it alone, and
    still reads back after the message was reprocessed into a new bundle."""
    [acc] = store.insert_messages([NewMessage("lab", RAW)])
    store.finish_processing([ProcessResult(acc.id, MessageStatus.transformed, bundle=BUNDLE, destinations=("ehr",))])
    entries = orjson.loads(BUNDLE)["entry"]
    sent = orjson.dumps(
        [{"type": "transaction", "entry": entries[:100]}, {"type": "transaction", "entry": entries[100:]}]
    )
    response = orjson.dumps({"type": "transaction-response", "entry": [{"resource": e} for e in entries]})
    record = AttemptRecord(1, time.time(), 2.0, "retry", 503, "HTTP 503", sent, response)
    store.record_attempt(acc.id, "ehr", record, status=DeliveryStatus.retrying, next_attempt_at=0)
    rows = stored_rows(store, acc.id)
    assert rows["sent/ehr"][0] == rows["response/ehr"][0] == codec.ZSTD_REF
    assert rows["sent/ehr"][1] < len(codec.encode(sent)[0]) / 2
    # reprocessed: a new bundle row; the attempt's rows still name the one they were written against
    store.mark_error(acc.id, "x", from_status=MessageStatus.transformed)
    store.reprocess(acc.id)
    store.finish_processing([ProcessResult(acc.id, MessageStatus.transformed, bundle=b'{"other": 1}' * 50)])
    assert store.content(acc.id, ContentKind.sent, "ehr") == sent
    assert store.content(acc.id, ContentKind.response, "ehr") == response
    by_kind = {(c.kind, c.destination): c.data for c in contents_of(store, acc.id)}
    assert by_kind[("sent", "ehr")] == sent and by_kind[("response", "ehr")] == response


def test_a_reference_that_is_not_there_is_damage_not_garbage() -> None:
    packed, kind = codec.encode_against(BUNDLE[::-1] + BUNDLE, BUNDLE, 41)
    assert kind == codec.ZSTD_REF and codec.reference_of(packed, kind) == 41
    assert (
        codec.decode_rows([(41, codec.encode(BUNDLE)[0], codec.ZSTD), (42, packed, kind)])[42] == BUNDLE[::-1] + BUNDLE
    )
    with pytest.raises(codec.ContentDamaged):
        codec.decode_rows([(42, packed, kind)])
    with pytest.raises(codec.ContentDamaged):
        codec.decode(packed, kind)


def test_error_content_round_trip(store: Store) -> None:
    short, long = "MSH-9 is missing", "mapping failed: " + "segment OBX repeated beyond its cap; " * 20
    for i, error in enumerate((short, long)):
        [acc] = store.insert_messages([NewMessage("lab", RAW, control_id=f"E{i}")])
        store.finish_processing([ProcessResult(acc.id, MessageStatus.error, error=error)])
        assert store.content(acc.id, ContentKind.error) == error.encode()
        # a short reason is not worth a frame; a long one is compressed
        assert stored_rows(store, acc.id)["error"][0] == (codec.PLAIN if error is short else codec.ZSTD)
    [acc] = store.insert_messages([NewMessage("lab", RAW, control_id="E9")])
    assert store.mark_error(acc.id, long)
    assert store.content(acc.id, ContentKind.error) == long.encode()


def test_group_members_read_back(store: Store) -> None:
    held = [NewMessage("img", RAW + bytes([i]) * 100, status=MessageStatus.held, group="g1") for i in range(3)]
    store.insert_messages(held)
    assert [raw for _, _, raw in store.group_members("img", "g1")] == [m.raw for m in held]


def test_plain_rows_as_written_before_0009_are_read(store: Store) -> None:
    """Rows of an older store carry codec 0, whatever their bytes (even a zstd frame a sender sent)."""
    [acc] = store.insert_messages([NewMessage("lab", b"MSH|x")])
    frame = codec.encode(RAW)[0]
    with store.work.begin() as conn:
        conn.execute(contents.delete().where(contents.c.message_id == acc.id))
        conn.execute(
            insert(contents),
            [
                {"message_id": acc.id, "kind": "raw", "destination": "", "data": frame, "created_at": 1.0},
                {"message_id": acc.id, "kind": "transformed", "destination": "", "data": BUNDLE, "created_at": 1.0},
            ],
        )
    assert store.content(acc.id, ContentKind.raw) == frame  # never taken for a frame: it was stored as is
    assert store.load_for_processing([acc.id])[0].raw == frame
    store.finish_processing([ProcessResult(acc.id, MessageStatus.transformed, bundle=None, destinations=("x",))])
    assert store.load_for_delivery(acc.id, "x").bundle == BUNDLE


def test_damaged_rows_are_refused_not_inflated() -> None:
    with pytest.raises(codec.ContentDamaged):
        codec.decode(b"not a frame", codec.ZSTD)
    with pytest.raises(codec.ContentDamaged):
        codec.decode(b"x", 7)
    assert codec.decode(None, None) is None
    # incompressible content is kept as is
    noise = bytes(range(256))
    assert codec.encode(noise) == (noise, codec.PLAIN)


def test_migration_keeps_older_rows_readable(tmp_path: Path) -> None:
    """A store at revision 0008 with content, upgraded: the rows read back as they were."""
    url = f"sqlite:///{tmp_path}/old.db"
    engine = create_engine(url)
    migrate.upgrade(engine, "0008")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO messages (id, channel, status, received_at, updated_at, peer, message_type, sender,"
            " control_id, dedupe_key, size_bytes) VALUES ('m1', 'lab', 'received', 1, 1, '', '', '', '', '', 5)"
        )
        conn.exec_driver_sql(
            "INSERT INTO contents (message_id, kind, destination, data, created_at) VALUES ('m1', 'raw', '', ?, 1)",
            (RAW,),
        )
    engine.dispose()
    store = Store(url)
    try:
        assert store.content("m1", ContentKind.raw) == RAW
        assert store.load_for_processing(["m1"])[0].raw == RAW
    finally:
        store.close()
