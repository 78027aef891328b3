"""Plain SQL for the per-message hot paths (ingest, process, deliver).

Measured on this kind of machine: building a SQLAlchemy Core statement and its cache key costs
100 to 200 µs, several times the statement itself; these run once per message and stage, so they are
kept as fixed strings in the driver's parameter style. Everything else uses SQLAlchemy Core.
"""

from __future__ import annotations

from engine.store.schema import ContentKind, DeliveryStatus, MessageStatus

_W, _P, _R, _D = DeliveryStatus.waiting, DeliveryStatus.pending, DeliveryStatus.retrying, DeliveryStatus.dead


class Statements:
    """The hot-path statements for one driver parameter style (``?`` or ``%s``)."""

    def __init__(self, paramstyle: str) -> None:
        self.mark = "?" if paramstyle == "qmark" else "%s"
        self._expanded: dict[tuple[str, int], str] = {}
        s = self._sql
        self.insert_message = s(
            "INSERT INTO messages (id, channel, status, received_at, updated_at, peer, message_type, sender,"
            " control_id, dedupe_key, duplicate_of, error, size_bytes, lane, kind, charset, group_key)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self.insert_content = s(
            "INSERT INTO contents (message_id, kind, destination, data, codec, created_at) VALUES (?, ?, ?, ?, ?, ?)"
        )
        # Equality on the dedupe key only, so every planner takes ix_messages_dedupe; the window and
        # status are checked by the caller (a range on received_at here made SQLite scan the whole window
        # through ix_messages_channel_received: measured O(messages in the window)).
        self._find_duplicates = s("SELECT dedupe_key, id, received_at, status FROM messages WHERE dedupe_key IN (?)")
        self._load_for_processing = s(
            "SELECT m.id, m.status, m.channel, c.data, c.codec, m.lane, m.kind, m.charset FROM messages m"
            f" LEFT JOIN contents c ON c.message_id = m.id AND c.kind = '{ContentKind.raw}' WHERE m.id IN (?)"
        )
        self.finish_message = s(
            "UPDATE messages SET status = ?, error = ?, updated_at = ?, source_time = ? WHERE id = ? AND status = ?"
        )
        # a reprocessed message keeps the keys it had (a key is a hash: no harm in one that no longer holds)
        self.insert_key = s(
            "INSERT INTO message_keys (message_id, kind, value) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
        )
        self.insert_delivery = s(
            "INSERT INTO deliveries (message_id, destination, target, status, attempts, next_attempt_at, updated_at)"
            " VALUES (?, ?, ?, ?, 0, ?, ?)"
        )
        self.load_for_delivery = s(
            "SELECT d.status, d.attempts, m.channel, c.data, c.codec, m.lane, m.source_time, d.target FROM deliveries d"
            " JOIN messages m ON m.id = d.message_id"
            f" LEFT JOIN contents c ON c.message_id = d.message_id AND c.kind = '{ContentKind.transformed}'"
            " WHERE d.message_id = ? AND d.destination = ? ORDER BY c.id DESC LIMIT 1"
        )
        self.insert_attempt = s(
            "INSERT INTO attempts (message_id, destination, number, started_at, duration_ms, outcome,"
            " status_code, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self.update_delivery = s(
            "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_at = ?, updated_at = ?,"
            " last_status_code = ?, last_error = ? WHERE message_id = ? AND destination = ?"
        )
        # A message is sent once none of its deliveries is anything but sent.
        self.settle_message = s(
            f"UPDATE messages SET status = '{MessageStatus.sent}', updated_at = ? WHERE id = ?"
            f" AND status IN ('{MessageStatus.transformed}', '{MessageStatus.dead}')"
            " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE message_id = ?"
            f" AND status != '{DeliveryStatus.sent}')"
        )

        # The ordering gate: is an earlier message of the lane unfinished for this target? Only a lane's
        # unfinished messages are read (ix_messages_lane: lane, status, id); a message still `received`
        # blocks whatever its destinations, since its deliveries do not exist yet.
        gate = (
            "SELECT 1 FROM messages e LEFT JOIN deliveries d ON d.message_id = e.id AND d.target = ?"
            " WHERE e.lane = ? AND e.id < ?"
            f" AND e.status IN ('{MessageStatus.received}', '{MessageStatus.transformed}', '{MessageStatus.dead}')"
            f" AND (e.status = '{MessageStatus.received}' OR d.status IN ('{_P}', '{_W}', '{_R}'{{dead}}))"
            " LIMIT 1"
        )
        self.gate_skip_dead = s(gate.format(dead=""))
        self.gate_hold_dead = s(gate.format(dead=f", '{_D}'"))
        self.hold_delivery = s(
            f"UPDATE deliveries SET status = '{_W}', updated_at = ? WHERE message_id = ? AND destination = ?"
            f" AND status IN ('{_P}', '{_R}', '{_W}')"
        )
        self.release_delivery = s(
            f"UPDATE deliveries SET status = '{_P}', updated_at = ? WHERE message_id = ? AND destination = ?"
            f" AND status = '{_W}'"
        )
        # One status, so ix_messages_lane yields the lane's messages in id order and the scan stops at the
        # first waiters (a strict lane's backlog is not read per wake-up). A waiter whose message is `dead`
        # by another destination is left to the sweeper.
        self.waiting_after = s(
            "SELECT d.message_id, d.destination, d.target FROM messages m"
            " JOIN deliveries d ON d.message_id = m.id"
            f" WHERE m.lane = ? AND m.status = '{MessageStatus.transformed}' AND m.id > ?"
            # `|| ''`: without statistics SQLite would scan every waiting delivery per message instead of
            # probing the primary key (seen in EXPLAIN QUERY PLAN)
            f" AND d.status || '' = '{_W}' ORDER BY m.id LIMIT 50"
        )
        # Which of a batch's lanes hold any waiting delivery: one query per batch instead of a waiting_after
        # per message (almost always empty), by the same index walk as waiting_after
        self._lanes_waiting = s(
            "SELECT DISTINCT m.lane FROM messages m JOIN deliveries d ON d.message_id = m.id"
            f" WHERE m.lane IN (?) AND m.status = '{MessageStatus.transformed}' AND d.status || '' = '{_W}'"
        )
        self._newer_writes = s("SELECT resource FROM writes WHERE target = ? AND source_time > ? AND resource IN (?)")
        self.upsert_write = s(
            "INSERT INTO writes (target, resource, source_time, message_id, updated_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (target, resource) DO UPDATE SET source_time = excluded.source_time,"
            " message_id = excluded.message_id, updated_at = excluded.updated_at"
            " WHERE writes.source_time <= excluded.source_time"
        )

    def _sql(self, text: str) -> str:
        return text.replace("?", self.mark)

    def _in(self, sql: str, n: int) -> str:
        # kept per statement and count: the ingest writer asks for one per group commit (5k instructions to
        # build, callgrind), and batches come in a few sizes
        key = (sql, n)
        text = self._expanded.get(key)
        if text is None:
            if len(self._expanded) >= 1024:
                self._expanded.clear()
            text = self._expanded[key] = sql.replace(f"IN ({self.mark})", "IN (" + ", ".join([self.mark] * n) + ")")
        return text

    def find_duplicates(self, n: int) -> str:
        """The duplicate lookup for ``n`` control ids."""
        return self._in(self._find_duplicates, n)

    def load_for_processing(self, n: int) -> str:
        """Status, channel and raw content of ``n`` messages."""
        return self._in(self._load_for_processing, n)

    def lanes_waiting(self, n: int) -> str:
        """Which of ``n`` lanes hold a waiting delivery."""
        return self._in(self._lanes_waiting, n)

    def newer_writes(self, n: int) -> str:
        """Which of ``n`` resources a target holds from a newer source time."""
        return self._in(self._newer_writes, n)
