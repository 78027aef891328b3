"""Plain SQL for the per-message hot paths (ingest, process, deliver).

Measured on this kind of machine: building a SQLAlchemy Core statement and its cache key costs
100 to 200 µs, several times the statement itself; these run once per message and stage, so they are
kept as fixed strings in the driver's parameter style. Everything else uses SQLAlchemy Core.
"""

from __future__ import annotations

from engine.store.schema import ContentKind, DeliveryStatus, MessageStatus


class Statements:
    """The hot-path statements for one driver parameter style (``?`` or ``%s``)."""

    def __init__(self, paramstyle: str) -> None:
        self.mark = "?" if paramstyle == "qmark" else "%s"
        s = self._sql
        self.insert_message = s(
            "INSERT INTO messages (id, channel, status, received_at, updated_at, peer, message_type, sender,"
            " control_id, dedupe_key, duplicate_of, error, size_bytes)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self.insert_content = s(
            "INSERT INTO contents (message_id, kind, destination, data, created_at) VALUES (?, ?, ?, ?, ?)"
        )
        # Equality on the dedupe key only, so every planner takes ix_messages_dedupe; the window and
        # status are checked by the caller (a range on received_at here made SQLite scan the whole window
        # through ix_messages_channel_received: measured O(messages in the window)).
        self._find_duplicates = s("SELECT dedupe_key, id, received_at, status FROM messages WHERE dedupe_key IN (?)")
        self._load_for_processing = s(
            "SELECT m.id, m.status, m.channel, c.data FROM messages m"
            f" LEFT JOIN contents c ON c.message_id = m.id AND c.kind = '{ContentKind.raw}' WHERE m.id IN (?)"
        )
        self.finish_message = s("UPDATE messages SET status = ?, error = ?, updated_at = ? WHERE id = ? AND status = ?")
        self.insert_delivery = s(
            "INSERT INTO deliveries (message_id, destination, status, attempts, next_attempt_at, updated_at)"
            " VALUES (?, ?, ?, 0, ?, ?)"
        )
        self.load_for_delivery = s(
            "SELECT d.status, d.attempts, m.channel, c.data FROM deliveries d"
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

    def _sql(self, text: str) -> str:
        return text.replace("?", self.mark)

    def _in(self, sql: str, n: int) -> str:
        return sql.replace(f"IN ({self.mark})", "IN (" + ", ".join([self.mark] * n) + ")")

    def find_duplicates(self, n: int) -> str:
        """The duplicate lookup for ``n`` control ids."""
        return self._in(self._find_duplicates, n)

    def load_for_processing(self, n: int) -> str:
        """Status, channel and raw content of ``n`` messages."""
        return self._in(self._load_for_processing, n)
