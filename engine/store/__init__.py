"""The message store: what was received, what it became, where it went."""

from engine.store.repository import Accepted, AttemptRecord, NewMessage, ProcessResult, Store, new_id
from engine.store.schema import ContentKind, DeliveryStatus, MessageStatus

__all__ = [
    "Accepted",
    "AttemptRecord",
    "ContentKind",
    "DeliveryStatus",
    "MessageStatus",
    "NewMessage",
    "ProcessResult",
    "Store",
    "new_id",
]
