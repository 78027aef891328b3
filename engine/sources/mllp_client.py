"""A small MLLP client: send messages on one connection, one at a time, and collect the replies.

``await send_messages(host, port, messages, *, tls=None, timeout_s=30.0) -> list[bytes]``
    asyncio; for benchmarks and tests.
``send(host, port, messages, timeout_s=30.0, *, tls=None, reconnects=0, on_reply=None, on_reconnect=None)``
    blocking (plain sockets, no event loop); for ``interlink send``. ``on_reply(index, reply)`` is called as
    each reply arrives. With ``reconnects`` > 0, a connection that cannot be made, drops or times out before
    a message's reply is opened again (after 0.5 s, doubling to 5 s) and that message sent again, at most
    ``reconnects`` times in a row; ``on_reconnect(index, error)`` is told first. The engine may have stored
    the message before the connection dropped: the resent copy has the same MSH-10, so a channel with
    ``dedupe`` (the default) stores it as ``duplicate`` and ACKs it AA without processing it again.

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
from collections.abc import Callable

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


#: errors after which the connection is opened again and the unacknowledged message resent
RETRYABLE: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


def _connect(host: str, port: int, tls: ssl.SSLContext | None, timeout_s: float) -> socket.socket:
    raw = socket.create_connection((host, port), timeout=timeout_s)
    try:
        return tls.wrap_socket(raw, server_hostname=host) if tls is not None else raw
    except BaseException:
        raw.close()
        raise


def _exchange(sock: socket.socket, message: bytes, i: int, timeout_s: float, max_reply_bytes: int) -> bytes:
    """Send one message on ``sock`` and read its reply (nothing else is in flight, so any bytes before its
    frame are stray)."""
    buf = bytearray()
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
    return reply


def send(
    host: str,
    port: int,
    messages: list[bytes],
    timeout_s: float = 30.0,
    *,
    tls: ssl.SSLContext | None = None,
    max_reply_bytes: int = _MAX_REPLY_BYTES,
    reconnects: int = 0,
    on_reply: Callable[[int, bytes], None] | None = None,
    on_reconnect: Callable[[int, BaseException], None] | None = None,
) -> list[bytes]:
    """Blocking :func:`send_messages`, with replies reported as they arrive and reconnection (see above)."""
    replies: list[bytes] = []
    sock: socket.socket | None = None
    failures = 0
    try:
        while len(replies) < len(messages):
            i = len(replies)
            try:
                if sock is None:
                    sock = _connect(host, port, tls, timeout_s)
                reply = _exchange(sock, messages[i], i + 1, timeout_s, max_reply_bytes)
            except RETRYABLE as exc:
                if sock is not None:
                    sock.close()
                    sock = None
                failures += 1
                if failures > reconnects:
                    raise
                if on_reconnect is not None:
                    on_reconnect(i, exc)
                time.sleep(min(5.0, 0.5 * 2 ** (failures - 1)))
                continue
            failures = 0
            replies.append(reply)
            if on_reply is not None:
                on_reply(i, reply)
        return replies
    finally:
        if sock is not None:
            sock.close()
