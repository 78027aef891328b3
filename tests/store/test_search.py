"""Message search against SQLite and PostgreSQL: every filter, keyset pages, id prefixes."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from engine.store import MessageStatus, NewMessage, ProcessResult, Store
from engine.store.schema import message_keys
from engine.store.search import (
    AmbiguousId,
    BadQuery,
    MessageQuery,
    UnknownId,
    decode_cursor,
    resolve_id,
    search,
    statement,
)


@pytest.fixture
def store(store_url: str):
    s = Store(store_url)
    yield s
    s.close()


def add(
    store: Store,
    n: int = 1,
    *,
    channel: str = "lab",
    control: str = "C",
    type_: str = "ORU^R01",
    sender: str = "LIS|LAB",
    mrn: str | None = None,
    accession: str | None = None,
    status: MessageStatus = MessageStatus.transformed,
) -> list[str]:
    """``n`` messages committed in one batch (one received_at), then processed with their keys."""
    batch = [
        NewMessage(channel, b"MSH|x", message_type=type_, sender=sender, control_id=f"{control}{i}") for i in range(n)
    ]
    ids = [a.id for a in store.insert_messages(batch)]
    found = tuple((kind, store.pseudonym(v)) for kind, v in (("mrn", mrn), ("accession", accession)) if v is not None)
    results = [
        ProcessResult(i, status, bundle=b"{}" if status == MessageStatus.transformed else None,
                      error="x" if status == MessageStatus.error else None, keys=found)
        for i in ids
    ]  # fmt: skip
    store.finish_processing(results)
    return ids


def ids_of(store: Store, **query: object) -> list[str]:
    return [r.id for r in search(store, MessageQuery(**query)).rows]  # type: ignore[arg-type]


def test_each_filter_finds_its_messages_newest_first(store: Store) -> None:
    a = add(store, channel="lab", control="A", mrn="MRN-1", accession="ACC-9")
    b = add(store, channel="adt", control="B", type_="ADT^A01", sender="PAS|HOSP", mrn="MRN-1")
    c = add(store, channel="lab", control="C", mrn="MRN-2", status=MessageStatus.error)
    assert ids_of(store) == c + b + a
    assert ids_of(store, mrn="MRN-1") == b + a
    assert ids_of(store, mrn=" MRN-1 ") == b + a  # blanks around a typed value do not matter
    assert ids_of(store, mrn="MRN-3") == []
    assert ids_of(store, accession="ACC-9") == a
    assert ids_of(store, accession="MRN-1") == []  # kinds are apart
    assert ids_of(store, control_id="A0") == a
    assert ids_of(store, channel="lab") == c + a
    assert ids_of(store, status="error") == c
    assert ids_of(store, message_type="ADT^A01") == b
    assert ids_of(store, message_type="ORU") == c + a
    assert ids_of(store, message_type="OR") == []
    assert ids_of(store, sender="PAS|HOSP") == b
    assert ids_of(store, channel="lab", mrn="MRN-1") == a
    row = store.message(b[0])
    assert ids_of(store, since=row.received_at, until=row.received_at + 1e-6) == b
    assert ids_of(store, until=row.received_at) == a


def test_keys_are_kept_hashed_only(store: Store) -> None:
    add(store, mrn="MRN-PLAIN-77", accession="ACC-PLAIN-88")
    with store.work.connect() as conn:
        values = list(conn.execute(select(message_keys.c.kind, message_keys.c.value)))
    assert sorted(k for k, _ in values) == ["accession", "mrn"]
    assert all("PLAIN" not in v and len(v) == 24 for _, v in values)


def test_a_page_shows_deliveries_and_no_content(store: Store) -> None:
    [mid] = add(store, mrn="M")
    page = search(store, MessageQuery())
    assert page.rows[0].id == mid and not hasattr(page.rows[0], "data")
    assert page.deliveries == {}  # transformed without destinations
    [other] = store.insert_messages([NewMessage("lab", b"MSH|y")])
    store.mark_transformed(other.id, b"{}", ["ehr", "archive"])
    page = search(store, MessageQuery())
    assert page.deliveries[other.id] == [("archive", "pending"), ("ehr", "pending")]


def test_pages_follow_each_other_and_stay_stable_under_inserts(store: Store) -> None:
    first = add(store, 4, control="P")  # one batch: one received_at, ordered by id
    time.sleep(0.002)
    second = add(store, 3, control="Q")
    expected = list(reversed(first + second))
    seen: list[str] = []
    page = search(store, MessageQuery(limit=3))
    seen += [r.id for r in page.rows]
    while page.next_cursor:
        add(store, 2, control="NEW")  # committed between pages: newer than the first page, never seen after it
        page = search(store, MessageQuery(limit=3, cursor=page.next_cursor))
        seen += [r.id for r in page.rows]
    assert seen == expected
    # the newest now are the ones committed meanwhile; a cursor names the last row of its page
    p1 = search(store, MessageQuery(limit=3))
    assert p1.rows[0].id not in expected
    assert decode_cursor(p1.next_cursor or "")[1] == p1.rows[-1].id


def test_a_page_exactly_full_has_no_next_cursor(store: Store) -> None:
    add(store, 3)
    assert search(store, MessageQuery(limit=3)).next_cursor is None
    assert search(store, MessageQuery(limit=2)).next_cursor is not None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (MessageQuery(limit=0), "limit"),
        (MessageQuery(limit=201), "limit"),
        (MessageQuery(cursor="!!not-ours"), "cursor"),
        (MessageQuery(since=10.0, until=5.0), "until"),
    ],
)
def test_bad_queries_name_the_parameter(store: Store, query: MessageQuery, field: str) -> None:
    with pytest.raises(BadQuery) as info:
        search(store, query)
    assert info.value.field == field


def test_ids_resolve_by_unique_prefix(store: Store) -> None:
    one, two = "abcdef01" + "1" * 24, "abcdef01" + "2" * 24
    store.insert_messages([NewMessage("lab", b"x", id=one), NewMessage("lab", b"y", id=two)])
    assert resolve_id(store, one) == one
    assert resolve_id(store, "abcdef012") == two
    assert resolve_id(store, "ABCDEF0111") == one
    with pytest.raises(AmbiguousId):
        resolve_id(store, "abcdef01")
    with pytest.raises(UnknownId):
        resolve_id(store, "abcdef013")
    for bad in ("abcdef0", "zzzzzzzzzz", "0" * 33):
        with pytest.raises(BadQuery):
            resolve_id(store, bad)


@pytest.mark.parametrize(
    "query",
    [
        MessageQuery(mrn="M"),
        MessageQuery(accession="A"),
        MessageQuery(control_id="C"),
        MessageQuery(since=1.0, until=2.0),
        MessageQuery(channel="lab"),
        MessageQuery(),
        MessageQuery(cursor="MS41OmFiYw"),  # 1.5:abc
    ],
)
def test_each_search_meets_an_index_on_sqlite(tmp_path, query: MessageQuery) -> None:
    """SQLite's plans (PostgreSQL's, on 1,000,000 messages: bench/search.py prints them)."""
    from sqlalchemy.dialects import sqlite

    store = Store(f"sqlite:///{tmp_path}/s.db")
    sql = str(statement(store, query).compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    with store.work.connect() as conn:
        plan = [r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
    store.close()
    # a bare SCAN reads the table; SCAN … USING INDEX walks an index in order and stops at the page's end
    assert not any(step.startswith("SCAN") and "USING" not in step for step in plan), plan
