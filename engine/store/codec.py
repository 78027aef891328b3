"""How stored content is encoded: each ``contents`` row's ``data`` with its ``codec`` (migration 0009).

- ``PLAIN`` (0): the bytes as they are: every row written before 0009, and content zstd does not shrink
  (a short error reason, an object that is compressed already).
- ``ZSTD`` (1): one zstd frame, level 1, no dictionary, the content size in the frame header.

Every write of content goes through :func:`encode` and every read through :func:`decode`; nothing else
in the engine reads ``contents.data`` (the admin API and CLI read through the store's verbs).

Measured on an ORU^R01 with 8 OBX, bench/storage.py and bench/codec_instructions.py (callgrind):

- raw message 1,064 B -> 338 B; its FHIR bundle 10,803 B -> 1,476 B. Per message at level 1: 55k
  instructions to compress the raw message, 157k the bundle; 21k and 67k to read them back (the accept
  path spends ~740k per message, the mapping ~4 M). Level 3 stores the bundle 2 % smaller for 18 % more
  instructions (184k), level 2 no smaller than level 1.
- A 16 KB dictionary trained on the 83 corpus bundles of other message types would take the ORU bundle
  from 1,474 B to 1,045 B. Not used: every dictionary ever written with must be kept to read its rows, a
  dictionary trained on third-party sample messages would ship their text, and the store meets its
  target (≤ 3 KB per 1 KB ORU) without one. The codec column leaves room for one (a new code).

A frame is only ever read from a row this module marked ``ZSTD``; decoding still refuses a frame
declaring more than :data:`MAX_CONTENT` bytes, so a damaged row cannot make a read allocate gigabytes.
"""

from __future__ import annotations

import threading
from typing import Final

import zstandard

PLAIN: Final = 0
ZSTD: Final = 1

#: Largest content a frame may declare (the engine's default max_bytes is far below: 10 MiB; DICOM
#: objects are kept as files, not content).
MAX_CONTENT: Final = 1 << 30

#: Below this size compression cannot pay for its frame header (measured: a 40-byte error reason grows).
_MIN_SIZE: Final = 64
_LEVEL: Final = 1

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    # one per thread: a ZstdCompressor must not be used by two threads at once
    c: zstandard.ZstdCompressor | None = getattr(_local, "c", None)
    if c is None:
        c = _local.c = zstandard.ZstdCompressor(level=_LEVEL, write_checksum=False, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


class ContentDamaged(ValueError):
    """A row marked compressed is not a frame this store could have written."""


def encode(data: bytes) -> tuple[bytes, int]:
    """``(stored bytes, codec)`` for content about to be written."""
    if len(data) < _MIN_SIZE:
        return data, PLAIN
    packed = _compressor().compress(data)
    return (packed, ZSTD) if len(packed) < len(data) else (data, PLAIN)


def decode(data: bytes | memoryview | None, codec: int | None) -> bytes | None:
    """The content a row holds (None stays None: a message without that content)."""
    if data is None:
        return None
    if not codec:
        return bytes(data)
    if codec != ZSTD:
        raise ContentDamaged(f"unknown content codec {codec}")
    try:
        size = zstandard.frame_content_size(data)
        if size < 0 or size > MAX_CONTENT:
            raise ContentDamaged("compressed content without a plausible size")
        return _decompressor().decompress(data)
    except zstandard.ZstdError as exc:
        raise ContentDamaged("compressed content cannot be read") from exc
