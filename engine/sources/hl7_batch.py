"""HL7 v2 batches: a file or batch envelope (``FHS? (BHS? MSH… BTS?)+ FTS?``) split into its messages.

HL7 v2 chapter 2's batch protocol. One MLLP frame or one HTTP body that starts with ``FHS`` or ``BHS``
(after a byte order mark or blank lines) is a batch; :func:`is_batch` says so from its first bytes.
:func:`split` reads the envelope and returns a :class:`Batch`: the file header (FHS) if any, and each batch
(a BHS and the messages up to its BTS; several BHS in one FHS are allowed; a batch without BHS is one
implicit batch), each message as the exact bytes of the frame from its MSH to the start of the next
segment that is not its own (its last terminator included), never decoded or copied otherwise.

The whole batch is refused (:class:`BatchError`, an ``HL7Error`` with ``reject`` set, naming the place,
never a value) when:

* a ``BTS-1`` (batch message count) is valued and differs from the messages of its batch, or ``FTS-1``
  (file batch count) from the batches of the file: HL7 207 naming ``BTS-1`` / ``FTS-1`` (102 when it is
  not a number);
* it holds more than ``max_messages`` messages: HL7 207 naming the cap ``max_batch_messages`` (reading
  stops at the first message over it);
* the envelope is out of order (a segment before the first MSH, FHS not first, anything after FTS, a
  second FHS, an MSH after a BTS without a new BHS): HL7 100 naming the segment;
* the envelope's own delimiters (FHS-1/2, BHS-1/2) are malformed: HL7 102.

Segment terminators: CR, LF or CR LF, as the message reader accepts. The envelope's fields are read as
latin-1: they are ASCII in every character set HL7 allows over MLLP. A batch holding no message is
valid (the standard's periodic empty batch).

Replying is :mod:`engine.response`'s (``hl7_batch_reply``); accepting each message is
:class:`~engine.sources.hl7.HL7Acceptor`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from engine import hl7v2
from engine.errors import HL7Error
from engine.hl7v2 import DEFAULT_DELIMITERS, Delimiters

__all__ = ["Batch", "BatchError", "Part", "head", "is_batch", "split"]

_BOM = b"\xef\xbb\xbf"
_LINE = re.compile(rb"[^\r\n]+")
_ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")


@dataclass(slots=True)
class Part:
    """One batch of the file: its BHS fields (``header[i]`` is BHS-i; None without BHS) and its messages."""

    header: tuple[str, ...] | None = None
    messages: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class Batch:
    """A split batch: ``file_header[i]`` is FHS-i (None without FHS), ``parts`` its batches."""

    file_header: tuple[str, ...] | None = None
    parts: list[Part] = field(default_factory=list)
    delimiters: Delimiters = DEFAULT_DELIMITERS

    @property
    def messages(self) -> list[bytes]:
        """Every message of every batch, in order."""
        return [m for p in self.parts for m in p.messages]

    @property
    def control_id(self) -> str:
        """The sender's control id for the whole: the first BHS-11, else FHS-11 (``""`` if neither)."""
        for fields in (self.parts[0].header if self.parts else None, self.file_header):
            if fields is not None and len(fields) > 11 and fields[11]:
                return fields[11]
        return ""


class BatchError(HL7Error):
    """The whole batch is refused; ``batch`` holds what was read of its envelope (for the reply)."""

    def __init__(self, message: str, *, code: str, location: str, batch: Batch) -> None:
        super().__init__(message, code=code, location=location, reject=True)
        self.batch = batch


def _start(raw: bytes) -> int:
    """Where the first segment begins (after a UTF-8 byte order mark and blank lines or spaces)."""
    i = len(_BOM) if raw.startswith(_BOM) else 0
    n = len(raw)
    while i < n and raw[i] in b"\r\n \t":
        i += 1
    return i


def is_batch(raw: bytes) -> bool:
    """Whether these bytes are an HL7 batch (they start with FHS or BHS)."""
    i = _start(raw)
    return raw[i : i + 3] in (b"FHS", b"BHS")


def _fields(line: bytes, d: Delimiters) -> tuple[str, ...]:
    """An envelope segment's fields numbered as HL7 does: ``fields[1]`` the separator, ``fields[2]`` MSH-2."""
    parts = line.decode("latin-1").split(d.field)
    return (parts[0], d.field, *parts[1:])


def _first(line: bytes, d: Delimiters) -> str:
    """A trailer segment's first field (BTS-1, FTS-1)."""
    parts = line.decode("latin-1").split(d.field, 2)
    return parts[1] if len(parts) > 1 else ""


def _delimiters(line: bytes, batch: Batch) -> Delimiters:
    """FHS/BHS-1 and -2, read as MSH-1 and MSH-2 are; BatchError (102) when malformed."""
    try:
        return hl7v2._delimiters("MSH" + line[3:].decode("latin-1"))
    except HL7Error:
        name = line[:3].decode("ascii")
        raise BatchError(f"{name}-1/{name}-2 (the delimiters) are malformed", code="102", location=f"{name}^1^2",
                         batch=batch) from None  # fmt: skip


def head(raw: bytes) -> Batch:
    """The envelope's first header only (FHS and/or BHS), for refusing a batch that cannot be read whole."""
    batch = Batch()
    try:
        for m in _LINE.finditer(raw, _start(raw)):
            line = m.group()
            if line[:3] == b"FHS" and batch.file_header is None and not batch.parts:
                batch.delimiters = _delimiters(line, batch)
                batch.file_header = _fields(line, batch.delimiters)
            elif line[:3] == b"BHS" and not batch.parts:
                if batch.file_header is None:
                    batch.delimiters = _delimiters(line, batch)
                batch.parts.append(Part(_fields(line, batch.delimiters)))
            else:
                break
    except HL7Error:
        pass
    return batch


def _count(value: str, d: Delimiters, where: str, found: int, what: str, batch: Batch) -> None:
    value = value.split(d.component, 1)[0].strip()
    if not value:
        return
    if not value.isdigit():
        raise BatchError(f"{where} ({what} count) is not a number", code="102", location=f"{where[:3]}^1^1",
                         batch=batch)  # fmt: skip
    if int(value) != found:
        raise BatchError(
            f"{where} ({what} count) does not match the {found} {what}{'es' if what == 'batch' else 's'} found: "
            "the batch is refused whole",
            code="207",
            location=f"{where[:3]}^1^1",
            batch=batch,
        )


def split(raw: bytes, max_messages: int) -> Batch:
    """Split a batch into its messages (see the module docstring); raises :class:`BatchError`."""
    batch = Batch()
    d = DEFAULT_DELIMITERS
    part: Part | None = None  # the batch being read
    closed = False  # its BTS was read
    msg_start = -1  # where the message being read starts
    ended = False  # FTS was read
    count = 0

    def refuse(message: str, location: str, code: str = "100") -> BatchError:
        return BatchError(message, code=code, location=location, batch=batch)

    def end_message(at: int) -> None:
        nonlocal msg_start
        if msg_start != -1:
            assert part is not None
            part.messages.append(raw[msg_start:at])
            msg_start = -1

    for m in _LINE.finditer(raw, _start(raw)):
        line = m.group()
        if not line.strip():
            continue
        name = line[:3]
        if ended:
            raise refuse("a segment follows FTS, the end of the file", "FTS")
        if name == b"MSH":
            end_message(m.start())
            if part is None or closed:
                if closed:
                    raise refuse("an MSH follows BTS without a new BHS", "BTS")
                part = Part()
                batch.parts.append(part)
            count += 1
            if count > max_messages:
                raise refuse(
                    f"the batch holds more than {max_messages} messages: over the cap max_batch_messages = "
                    f"{max_messages}",
                    "BTS^1^1",
                    "207",
                )
            msg_start = m.start()
        elif name in _ENVELOPE:
            end_message(m.start())
            label = name.decode("ascii")
            if name == b"FHS":
                if batch.file_header is not None or batch.parts:
                    raise refuse("FHS is not the first segment of the file", "FHS")
                d = batch.delimiters = _delimiters(line, batch)
                batch.file_header = _fields(line, d)
            elif name == b"BHS":
                if batch.file_header is None and not batch.parts:
                    d = batch.delimiters = _delimiters(line, batch)
                part = Part(_fields(line, d))
                batch.parts.append(part)
                closed = False
            elif name == b"BTS":
                if part is None or closed:
                    raise refuse("BTS without a batch to end", "BTS")
                _count(_first(line, d), d, "BTS-1", len(part.messages), "message", batch)
                closed = True
            else:
                if batch.file_header is None:
                    raise refuse(f"{label} without FHS", label)
                _count(_first(line, d), d, "FTS-1", len(batch.parts), "batch", batch)
                ended = True
        elif msg_start == -1:
            label = name.decode("latin-1") if name.isalnum() else "segment"
            raise refuse(f"{label} is outside a message (a batch's segments follow an MSH)", label[:3])
    end_message(len(raw))
    return batch
