"""A small MLLP client: send messages on one connection, one at a time, and collect the replies.

``await send_messages(host, port, messages, *, tls=None, timeout_s=30.0) -> list[bytes]``
    asyncio; for benchmarks and tests.
``send(host, port, messages, timeout_s=30.0, *, tls=None) -> list[bytes]``
    blocking (plain sockets, no event loop); for ``interlink send``.

Messages are raw bytes without framing; replies come back without framing, one per message, in order.
``tls`` is a client :class:`ssl.SSLContext` (e.g. ``ssl.create_default_context(cafile=...)``).
``timeout_s`` bounds the connection and each reply. A connection closed before a reply raises
:class:`ConnectionError`; a reply not received in time raises :class:`TimeoutError`; a reply larger than
``max_reply_bytes`` raises :class:`ValueError`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

from engine.sources.mllp import EB, SB, frame

__all__ = ["send", "send_messages"]

_CHUNK = 64 * 1024
_MAX_REPLY_BYTES = 8 * 1024 * 1024


def _take_frame(buf: bytearray, max_reply_bytes: int) -> bytes | None:
    """Remove and return the first complete frame in ``buf`` (bytes before its start block are dropped)."""
    start = buf.find(SB)
    if start == -1:
        buf.clear()
        return None
    if start:
        del buf[:start]
    end = buf.find(EB, 1)
    if end == -1:
        if len(buf) > max_reply_bytes:
            raise ValueError(f"reply exceeds {max_reply_bytes} bytes")
        return None
    reply = bytes(buf[1:end])
    del buf[: end + 2 if buf[end + 1 : end + 2] == b"\r" else end + 1]
    return reply


async def send_messages(
    host: str,
    port: int,
    messages: list[bytes],
    *,
    tls: ssl.SSLContext | None = None,
    timeout_s: float = 30.0,
    max_reply_bytes: int = _MAX_REPLY_BYTES,
) -> list[bytes]:
    """Send ``messages`` in order on one connection; return the reply to each."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=tls, server_hostname=host if tls is not None else None
        )
    try:
        replies: list[bytes] = []
        buf = bytearray()
        for i, message in enumerate(messages, start=1):
            writer.write(frame(message))
            async with asyncio.timeout(timeout_s):
                await writer.drain()
                while (reply := _take_frame(buf, max_reply_bytes)) is None:
                    data = await reader.read(_CHUNK)
                    if not data:
                        raise ConnectionError(f"connection closed before the reply to message {i}")
                    buf += data
            replies.append(reply)
        return replies
    finally:
        writer.close()
        try:
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        except (TimeoutError, OSError):
            writer.transport.abort()


def send(
    host: str,
    port: int,
    messages: list[bytes],
    timeout_s: float = 30.0,
    *,
    tls: ssl.SSLContext | None = None,
    max_reply_bytes: int = _MAX_REPLY_BYTES,
) -> list[bytes]:
    """Blocking :func:`send_messages`."""
    raw = socket.create_connection((host, port), timeout=timeout_s)
    try:
        sock = tls.wrap_socket(raw, server_hostname=host) if tls is not None else raw
    except BaseException:
        raw.close()
        raise
    with sock:
        replies: list[bytes] = []
        buf = bytearray()
        for i, message in enumerate(messages, start=1):
            deadline = time.monotonic() + timeout_s
            sock.settimeout(timeout_s)
            sock.sendall(frame(message))
            while (reply := _take_frame(buf, max_reply_bytes)) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no reply to message {i} within {timeout_s:g}s")
                sock.settimeout(remaining)
                try:
                    data = sock.recv(_CHUNK)
                except TimeoutError:
                    raise TimeoutError(f"no reply to message {i} within {timeout_s:g}s") from None
                if not data:
                    raise ConnectionError(f"connection closed before the reply to message {i}")
                buf += data
            replies.append(reply)
        return replies
