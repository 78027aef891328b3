"""How stored content is encoded: each ``contents`` row's ``data`` with its ``codec`` (migration 0009).

- ``PLAIN`` (0): the bytes as they are: every row written before 0009, and content zstd does not shrink
  (a short error reason, an object that is compressed already).
- ``ZSTD`` (1): one zstd frame, no dictionary, the content size in the frame header; level 1, except the
  raw message on the ingest path: level -1 (zstd's first fast level).
- ``ZSTD_REF`` (2): what an attempt sent or got back, compressed against the message's stored bundle (the
  bundle as zstd's raw-content dictionary): the 8-byte id of that bundle's ``contents`` row, then the frame.
  A FHIR destination splits a bundle of more than ``max_entries_per_transaction`` entries (8) into several
  transactions, so what it sent is the bundle's entries again, and a server's transaction-response repeats
  the resources: measured on an ORU^R01 with 8 OBX to the FHIR test server, the request 10.5 KB → 1,663 B
  alone, 340 B against the bundle; the response 13.4 KB → 1,865 B alone, 935 B against it. Reads resolve
  the reference (:func:`decode_rows`, ``Store.content``); retention removes a message's content rows
  together, so a reference never outlives its bundle.

Every write of content goes through :func:`encode` and every read through :func:`decode`; nothing else
in the engine reads ``contents.data`` (the admin API and CLI read through the store's verbs).

Measured on an ORU^R01 with 8 OBX (bench/storage.py end to end; bench/codec_instructions.py and
bench/accept_instructions.py, callgrind):

- the bundle, 10,803 B -> 1,487 B at level 1 for 157k instructions (67k to read back); level 3 stores it
  2 % smaller for 18 % more (184k), level 2 no smaller.
- the raw message, 1,068 B -> 409 B at level -1 for 31k instructions (340 B at level 1 for 55k). Counted
  on the whole accept path (MLLP frame to ACK, 1,000 messages): 0.811 -> 0.844 M instructions per message
  on 1 connection (+4 %), 0.629 -> 0.633 M on 4, against storing it plain: 660 B less per message for
  that. The compression runs in the ingest writer thread before it takes the write lock, and zstd
  releases the GIL while it works.
- A 16 KB dictionary trained on the 83 corpus bundles of other message types would take the ORU bundle
  from 1,474 B to 1,045 B. Not used: every dictionary ever written with must be kept to read its rows,
  and one trained on third-party sample messages would ship their text; a new codec value can add one.

A frame is only ever read from a row this module marked ``ZSTD`` or ``ZSTD_REF``; decoding still refuses a frame
declaring more than :data:`MAX_CONTENT` bytes, so a damaged row cannot make a read allocate gigabytes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Final

import zstandard

PLAIN: Final = 0
ZSTD: Final = 1
ZSTD_REF: Final = 2
_REF_BYTES: Final = 8

#: Largest content a frame may declare (the engine's default max_bytes is far below: 10 MiB; DICOM
#: objects are kept as files, not content).
MAX_CONTENT: Final = 1 << 30

#: Below this size compression cannot pay for its frame header (measured: a 40-byte error reason grows).
_MIN_SIZE: Final = 64
_LEVEL: Final = 1
#: zstd's first fast level, for the raw message on the ingest path (see the module docstring)
_FAST: Final = -1

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # one per thread and level: a ZstdCompressor must not be used by two threads at once
    c: zstandard.ZstdCompressor | None = getattr(_local, f"c{level}", None)
    if c is None:
        c = zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=True)
        setattr(_local, f"c{level}", c)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


class ContentDamaged(ValueError):
    """A row marked compressed is not a frame this store could have written."""


def encode(data: bytes, *, fast: bool = False) -> tuple[bytes, int]:
    """``(stored bytes, codec)`` for content about to be written; ``fast``: on the ingest path."""
    if len(data) < _MIN_SIZE:
        return data, PLAIN
    packed = _compressor(_FAST if fast else _LEVEL).compress(data)
    return (packed, ZSTD) if len(packed) < len(data) else (data, PLAIN)


def encode_against(data: bytes, reference: bytes, reference_id: int) -> tuple[bytes, int]:
    """``(stored bytes, codec)`` for content that repeats much of ``reference`` (the message's bundle, stored
    in the ``contents`` row ``reference_id``): ``ZSTD_REF`` when that is smaller than :func:`encode`."""
    alone = encode(data)
    if len(data) < _MIN_SIZE or not reference:
        return alone
    dictionary = zstandard.ZstdCompressionDict(reference, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    compressor = zstandard.ZstdCompressor(level=_LEVEL, dict_data=dictionary, write_checksum=False, write_dict_id=False)
    packed = reference_id.to_bytes(_REF_BYTES, "big") + compressor.compress(data)
    return (packed, ZSTD_REF) if len(packed) < len(alone[0]) else alone


def reference_of(data: bytes | memoryview, codec: int | None) -> int | None:
    """The ``contents`` id a ``ZSTD_REF`` row was compressed against (None for any other row)."""
    return int.from_bytes(bytes(data[:_REF_BYTES]), "big") if codec == ZSTD_REF else None


def decode(data: bytes | memoryview | None, codec: int | None, reference: bytes | None = None) -> bytes | None:
    """The content a row holds (None stays None: a message without that content); a ``ZSTD_REF`` row needs
    the decoded content of the row :func:`reference_of` names."""
    if data is None:
        return None
    if not codec:
        return bytes(data)
    if codec not in (ZSTD, ZSTD_REF):
        raise ContentDamaged(f"unknown content codec {codec}")
    decompressor = _decompressor()
    if codec == ZSTD_REF:
        if reference is None:
            raise ContentDamaged("content compressed against a bundle that is not there")
        data = bytes(data[_REF_BYTES:])
        dictionary = zstandard.ZstdCompressionDict(reference, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        decompressor = zstandard.ZstdDecompressor(dict_data=dictionary)
    try:
        size = zstandard.frame_content_size(data)
        if size < 0 or size > MAX_CONTENT:
            raise ContentDamaged("compressed content without a plausible size")
        return decompressor.decompress(data)
    except zstandard.ZstdError as exc:
        raise ContentDamaged("compressed content cannot be read") from exc


def decode_rows(rows: Sequence[tuple[int, bytes | memoryview, int | None]]) -> dict[int, bytes]:
    """Decode ``(contents id, data, codec)`` rows of one message together: id → content. A ``ZSTD_REF`` row
    whose reference is not among them is :class:`ContentDamaged`."""
    out = {i: decoded for i, data, c in rows if c != ZSTD_REF and (decoded := decode(data, c)) is not None}
    for i, data, c in rows:
        if c == ZSTD_REF:
            ref = reference_of(data, c)
            out[i] = decode(data, c, out.get(ref) if ref is not None else None) or b""
    return out
