"""MLLP source: HL7 v2 over TCP (optionally TLS), one asyncio listener per channel.

Framing is MLLP release 1: ``0x0B`` message ``0x1C 0x0D``. Each connection is served strictly in order:
read one frame, await the handler's reply, send it, read the next. Bytes outside a frame are skipped and
counted (never logged). Limits and what happens past them:

- a frame longer than its cap is read to its end block without being kept past the cap; the handler gets
  its first bytes up to the cap with an ``HL7Error`` (code 207, naming the cap) and its reply (an AR) is
  sent, and the connection stays usable. The cap is ``max_frame_bytes`` for an HL7 batch (a frame starting
  with FHS or BHS) and the smaller of it and the channel's ``limits.max_bytes`` for one message: memory
  per connection stays under the cap plus one read (256 KiB) whatever the sender sends;
- a frame not finished within ``read_timeout_s`` is passed to the handler with an ``HL7Error`` so it is
  stored, nothing is sent for it, and the connection is closed;
- a connection that sends nothing within ``first_byte_timeout_s`` of connecting is closed, and one with no
  frame for ``idle_timeout_s`` is closed;
- connections from outside ``allow_from``, and past ``max_connections_per_peer`` from one host, are closed
  at once. When ``max_connections`` are open, a newcomer whose host holds less than its share
  (``max_connections`` divided among the hosts connected, the newcomer's included) evicts the longest-idle
  connection (of a host over its share first; never one in the middle of a message or reply), so one
  host holding every connection cannot lock other senders out; a newcomer whose host already holds its
  share, or finding no idle connection, is closed at once;
- a message whose MSH-18 names a charset that is not byte-compatible with ASCII (UTF-16/32) is passed to
  the handler with an ``HL7Error`` (rejected): MLLP's single-byte framing cannot carry it, and the reply
  to it must be readable by the sender;
- if the handler raises, or gives no reply within ``reply_timeout_s``, the sender gets an AE
  "internal error" and the connection stays usable.

Log lines name peers (addresses), sizes and counts, never message content.

Public API: :class:`MLLPConfig`, :class:`MLLPTLSConfig`, :class:`MLLPSource`, :class:`MLLPStats`,
:func:`frame`, :func:`build` (the registry's constructor: an MLLP listener answering through
:class:`~engine.sources.hl7.HL7Acceptor`). A small client (``send_messages``, ``send``) is in
:mod:`engine.sources.mllp_client`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
import socket
import ssl
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, IPvAnyNetwork, model_validator

from engine import hl7v2, response
from engine.config.model import Model
from engine.config.tls import server_context
from engine.errors import HL7Error, ListenError
from engine.sources import hl7_batch
from engine.sources.base import Handler, Inbound, SourceContext
from engine.sources.hl7 import HL7Acceptor, HL7Options, channel_limits

__all__ = ["CR", "EB", "SB", "MLLPConfig", "MLLPSource", "MLLPStats", "MLLPTLSConfig", "build", "frame"]

log = logging.getLogger(__name__)

SB = b"\x0b"  # start block
EB = b"\x1c"  # end block
CR = b"\x0d"  # trailer after the end block

_CR = 0x0D
_TRAILER = EB + CR
_READ_CHUNK = 256 * 1024
_CLOSE_WAIT_S = 1.0
_CLOCK_SLACK_S = 0.001
_MSH_SCAN_BYTES = 4096  # MSH is read from the first 4 KiB, as ingest does
#: MSH-18 names (HL7 table 0211) whose codec does not write ASCII as ASCII.
_WIDE_CHARSET_NAMES = tuple(
    name.encode("ascii") for name, codec in hl7v2.CHARSETS.items() if not response.byte_compatible(codec)
)
#: b"UNICODE UTF-": what they all begin with (a byte prefix, not a path)
_WIDE_CHARSET_PREFIX = os.path.commonprefix(_WIDE_CHARSET_NAMES) or b""  # noqa: RUF071


def frame(payload: bytes) -> bytes:
    """Wrap one message in MLLP framing."""
    return b"".join((SB, payload, _TRAILER))


class MLLPTLSConfig(Model):
    """TLS for an MLLP listener (MLLP over TLS, optionally with client certificates)."""

    cert_file: Path = Field(description="PEM certificate (chain) the listener presents to senders.")
    key_file: Path = Field(description="PEM private key for cert_file (unencrypted).")
    ca_file: Path | None = Field(
        None, description="PEM CA certificates trusted to sign sender certificates (for mutual TLS)."
    )
    require_client_cert: bool = Field(
        False, description="Refuse senders that do not present a certificate signed by ca_file."
    )
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Oldest TLS protocol version accepted.")
    handshake_timeout_s: float = Field(10.0, gt=0, description="Time allowed for a sender's TLS handshake.")

    @model_validator(mode="after")
    def _client_cert_needs_ca(self) -> MLLPTLSConfig:
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("require_client_cert needs ca_file to verify sender certificates")
        return self

    def context(self) -> ssl.SSLContext:
        """A server-side SSL context; unreadable files raise :class:`ConfigError`."""
        return server_context(
            self.cert_file,
            self.key_file,
            self.ca_file,
            self.min_version,
            client_cert=ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_OPTIONAL,
            setting="tls",
        )


class MLLPConfig(HL7Options):
    """An MLLP (HL7 v2 over TCP) listener, and how the HL7 v2 it carries is read and checked."""

    type: Literal["mllp"] = Field(description="Source kind.")
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 or :: for every interface).")
    port: int = Field(description="TCP port to listen on (0 picks a free port, for tests).", ge=0, le=65535)
    max_frame_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1,
        description="Largest message accepted; a longer one is stored truncated with an error and NAKed.",
    )
    read_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A started frame must end within this, else it is stored with an error, never ACKed, "
        "and the connection closed.",
    )
    idle_timeout_s: float = Field(600.0, gt=0, description="A connection with no message for this long is closed.")
    first_byte_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A new connection that sends nothing for this long is closed (idle_timeout_s applies once "
        "it has sent something).",
    )
    reply_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest wait for the engine's reply (commit) to a message; past it the sender gets AE.",
    )
    write_timeout_s: float = Field(
        30.0, gt=0, description="A sender that does not read its reply within this is disconnected."
    )
    max_connections: int = Field(
        100,
        ge=1,
        description="Concurrent connections. When reached, a sender whose host holds less than its share "
        "(max_connections divided among the connected hosts) evicts the longest-idle connection; "
        "otherwise it is closed at once.",
    )
    max_connections_per_peer: int = Field(
        20,
        ge=1,
        description="Concurrent connections from one sender address (host); further ones are closed at once.",
    )
    allow_from: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Sender addresses or networks (CIDR) allowed to connect; empty allows any.",
    )
    keepalive: bool = Field(
        True, description="Enable TCP keepalive so dead peers (e.g. behind a dropped VPN) are noticed."
    )
    shutdown_grace_s: float = Field(
        5.0, ge=0, description="On stop, how long replies already being prepared may take to be sent."
    )
    tls: MLLPTLSConfig | None = Field(None, description="Serve MLLP over TLS; plain TCP when absent.")


@dataclass
class MLLPStats:
    """Counters since the source was created."""

    connections: int = 0  # accepted
    refused: int = 0  # closed at once: over its limit or share, not in allow_from, or stopping
    evicted: int = 0  # idle connections closed to admit a sender from another host (listener full)
    messages: int = 0  # frames passed to the handler
    replies: int = 0  # replies sent
    skipped_bytes: int = 0  # bytes outside any frame
    oversize: int = 0  # frames longer than max_frame_bytes
    unterminated: int = 0  # frames cut off by read_timeout_s
    handler_errors: int = 0  # handler raised, returned a non-bytes value, or timed out
    wide_charset: int = 0  # messages refused for an MSH-18 that MLLP cannot carry (UTF-16/32)


class _Conn:
    """One connection's state and its watchdog.

    A single timer enforces whichever deadline applies (first byte, idle, frame, reply, write). Deadlines
    mostly move later, so the timer is only re-armed when it fires early or a deadline moves earlier: no
    timer work per message. On expiry (or eviction) the connection's task is cancelled and
    :meth:`expired` tells that cancel apart from one by :meth:`MLLPSource.stop`.
    """

    __slots__ = (
        "_expired",
        "busy",
        "counted",
        "deadline",
        "evicted",
        "host",
        "idle_since",
        "loop",
        "peer",
        "reader",
        "skipped",
        "task",
        "timer",
        "writer",
    )

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
        host: str,
        task: asyncio.Task[None],
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.host = host  # the sender's address without port: the unit of max_connections_per_peer
        self.task = task
        self.loop = task.get_loop()
        self.busy = False  # a complete frame is being answered
        #: Since when the connection waits for a new frame; None while a frame is read or answered.
        self.idle_since: float | None = None
        self.counted = True  # still counted against the limits (see MLLPSource._release)
        self.evicted = False
        self.skipped = 0
        self.deadline = math.inf
        self.timer: asyncio.TimerHandle | None = None
        self._expired = False

    def evict(self) -> None:
        """Close this idle connection to make room (its task ends quietly)."""
        self.evicted = True
        self._expired = True
        self.task.cancel()

    def set_deadline(self, when: float) -> None:
        self.deadline = when
        timer = self.timer
        if timer is None or timer.when() > when:
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(when, self._check)

    def _check(self) -> None:
        self.timer = None
        if self.task.done() or self.deadline == math.inf:
            return
        if self.loop.time() + _CLOCK_SLACK_S >= self.deadline:
            self._expired = True
            self.task.cancel()
        else:
            self.timer = self.loop.call_at(self.deadline, self._check)

    def expired(self) -> bool:
        """Whether the watchdog cancelled the task; if so, the cancellation is undone."""
        if not self._expired:
            return False
        self._expired = False
        self.task.uncancel()
        return True

    def unwatch(self) -> None:
        self.deadline = math.inf
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class MLLPSource:
    """Listen for MLLP connections and answer each frame with ``await handler(raw, inbound)``."""

    def __init__(
        self, config: MLLPConfig, handler: Handler, *, name: str = "", max_message_bytes: int | None = None
    ) -> None:
        self.config = config
        #: the cap on a frame holding one message (not a batch): the channel's limits.max_bytes
        self._message_cap = min(config.max_frame_bytes, max_message_bytes or config.max_frame_bytes)
        self.name = name or f"mllp:{config.port}"
        self.stats = MLLPStats()
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], _Conn] = {}
        self._open = 0  # connections counted against the limits (evicted ones no longer are)
        self._by_host: dict[str, int] = {}
        self._stopping = False
        self._networks = list(config.allow_from)

    @property
    def port(self) -> int:
        """The bound port (useful when the configured port is 0); the configured one before start."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self.config.port

    @property
    def connections(self) -> int:
        """Connections currently open."""
        return len(self._conns)

    async def start(self) -> None:
        """Bind and start accepting connections; :class:`ListenError` (one line) when it cannot bind, and
        :class:`ConfigError` when the TLS files cannot be loaded."""
        if self._server is not None:
            raise RuntimeError(f"{self.name}: already started")
        cfg = self.config
        ssl_ctx = cfg.tls.context() if cfg.tls else None
        self._stopping = False
        try:
            self._server = await asyncio.start_server(
                self._on_client,
                cfg.host,
                cfg.port,
                ssl=ssl_ctx,
                ssl_handshake_timeout=cfg.tls.handshake_timeout_s if cfg.tls else None,
                limit=_READ_CHUNK,
            )
        except OSError as exc:  # port in use, address not on this host, name not resolvable
            raise ListenError(f"cannot listen on {_address(cfg.host, cfg.port)}: {_bind_reason(exc)}") from None
        log.info("%s: listening on %s:%d%s", self.name, cfg.host, self.port, " (TLS)" if ssl_ctx else "")

    async def stop(self) -> None:
        """Stop accepting, let replies in progress finish (``shutdown_grace_s``), close every connection."""
        server = self._server
        if server is None:
            return
        self._stopping = True
        server.close()
        for task, conn in list(self._conns.items()):
            if not conn.busy:
                task.cancel()
        tasks = set(self._conns)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.shutdown_grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=_CLOSE_WAIT_S * 2)
        await server.wait_closed()
        self._server = None
        log.info("%s: stopped", self.name)

    # -- connections ---------------------------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        ip = _ip(writer)
        host = str(ip) if ip is not None else peer
        reason = self._admit(ip, host)
        if reason:
            self.stats.refused += 1
            log.warning("%s: refused connection from %s: %s", self.name, peer, reason)
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        conn = _Conn(reader, writer, peer, host, task)
        self._conns[task] = conn
        self._open += 1
        self._by_host[host] = self._by_host.get(host, 0) + 1
        self.stats.connections += 1
        if self.config.keepalive:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        log.debug("%s: connection from %s", self.name, peer)
        abort = False
        try:
            await self._serve(conn)
        except asyncio.CancelledError:
            pass  # stop(): the connection is closed below
        except TimeoutError:
            abort = True  # unsent reply bytes would hold a graceful close
            log.warning(
                "%s: %s did not read its reply within %gs; closing",
                self.name,
                peer,
                self.config.write_timeout_s,
            )
        except (OSError, EOFError) as exc:  # resets, TLS errors (ssl.SSLError is an OSError)
            log.debug("%s: connection from %s lost: %s", self.name, peer, type(exc).__name__)
        except Exception as exc:  # a bug here must never take the listener down
            log.error("%s: connection from %s failed: %s", self.name, peer, _where(exc))
        finally:
            conn.unwatch()
            del self._conns[task]
            self._release(conn)
            if conn.skipped:
                log.warning("%s: %d bytes outside MLLP frames skipped from %s", self.name, conn.skipped, peer)
            if abort:
                writer.transport.abort()
            else:
                await _close(writer)
            log.debug("%s: connection from %s closed", self.name, peer)

    def _admit(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, host: str) -> str:
        """Why a new connection from ``host`` is refused (``""``: admitted, evicting an idle one if full)."""
        cfg = self.config
        if self._stopping:
            return "source is stopping"
        if self._networks:
            if ip is None:
                return "peer address unknown"
            if not any(ip in net for net in self._networks):
                return "address not in allow_from"
        held = self._by_host.get(host, 0)
        if held >= cfg.max_connections_per_peer:
            return f"max_connections_per_peer ({cfg.max_connections_per_peer}) reached by this host"
        if self._open < cfg.max_connections:
            return ""
        share = max(1, cfg.max_connections // (len(self._by_host) + (0 if held else 1)))
        if held >= share:
            return f"max_connections ({cfg.max_connections}) reached and this host holds its share ({held})"
        victim = self._victim(share)
        if victim is None:
            return f"max_connections ({cfg.max_connections}) reached and none is idle"
        self.stats.evicted += 1
        log.warning(
            "%s: max_connections (%d) reached: closing a connection from %s idle for %.0fs "
            "(its host holds %d) to admit %s",
            self.name,
            cfg.max_connections,
            victim.peer,
            victim.loop.time() - (victim.idle_since or 0.0),
            self._by_host.get(victim.host, 0),
            host,
        )
        victim.evict()
        self._release(victim)
        return ""

    def _victim(self, share: int) -> _Conn | None:
        """The connection to evict: idle, of a host over ``share`` if any, longest idle first."""
        best: _Conn | None = None
        best_key = (True, math.inf)
        for conn in self._conns.values():
            if conn.idle_since is None or not conn.counted:
                continue
            key = (self._by_host.get(conn.host, 0) <= share, conn.idle_since)
            if key < best_key:
                best, best_key = conn, key
        return best

    def _release(self, conn: _Conn) -> None:
        """Stop counting ``conn`` against the limits (once: at eviction, or when its task ends)."""
        if not conn.counted:
            return
        conn.counted = False
        self._open -= 1
        left = self._by_host[conn.host] - 1
        if left:
            self._by_host[conn.host] = left
        else:
            del self._by_host[conn.host]

    async def _serve(self, conn: _Conn) -> None:
        cfg = self.config
        limit = cfg.max_frame_bytes
        reader = conn.reader
        loop = conn.loop
        buf = bytearray()
        in_frame = False  # a start block was seen; buf holds the frame's bytes from index 0
        scanned = 0  # bytes of buf already searched for the end block
        kept: bytearray | None = None  # first `limit` bytes of an oversize frame being discarded
        dropped = 0  # bytes of that frame discarded so far
        trailer = False  # the byte after an end block may be its CR
        frame_deadline = 0.0
        idle_start = loop.time()
        # Until its first byte, a connection gets first_byte_timeout_s (a host holding connections open
        # without sending would otherwise keep them for idle_timeout_s).
        silent = True
        idle_deadline = idle_start + min(cfg.first_byte_timeout_s, cfg.idle_timeout_s)
        while True:
            while buf:
                if not in_frame:
                    if trailer:
                        trailer = False
                        if buf[0] == _CR:
                            del buf[:1]
                            continue
                    start = buf.find(SB)
                    if start == -1:
                        self._skip(conn, len(buf))
                        buf.clear()
                        break
                    if start:
                        self._skip(conn, start)
                    del buf[: start + 1]
                    in_frame = True
                    scanned = 0
                    frame_deadline = loop.time() + cfg.read_timeout_s
                end = buf.find(EB, scanned)
                if end == -1:
                    if kept is not None:
                        dropped += len(buf)
                        buf.clear()
                    elif len(buf) > (limit := self._cap(buf)):
                        dropped = len(buf) - limit
                        del buf[limit:]
                        kept, buf = buf, bytearray()
                    scanned = len(buf)
                    break
                error = None
                if kept is not None:
                    payload = bytes(kept)
                    kept = None
                    error = self._oversize(conn, limit + dropped + end, limit)
                # a frame within the message cap is within every cap: no look at its first segment
                elif end > self._message_cap and end > (limit := self._cap(buf)):
                    payload = bytes(buf[:limit])
                    error = self._oversize(conn, end, limit)
                else:
                    payload = bytes(buf[:end])
                del buf[: end + 1]
                in_frame = False
                trailer = True
                if error is None:
                    error = self._wide_charset(conn, payload)
                reply = await self._reply(conn, payload, Inbound(conn.peer, error))
                del payload  # a large message is not kept while the connection waits for the next
                if reply:
                    await self._send(conn, reply)
                conn.busy = False
                if self._stopping:
                    return
                idle_start = loop.time()
                idle_deadline = idle_start + cfg.idle_timeout_s
            conn.set_deadline(frame_deadline if in_frame else idle_deadline)
            conn.idle_since = None if in_frame else idle_start
            try:
                data = await reader.read(_READ_CHUNK)
            except asyncio.CancelledError:
                if not conn.expired():
                    raise
                if in_frame:
                    await self._unterminated(conn, bytes(kept if kept is not None else buf[:limit]))
                elif conn.evicted:
                    pass  # logged by _admit
                elif silent:
                    log.info(
                        "%s: closing connection from %s: nothing received within %gs",
                        self.name,
                        conn.peer,
                        cfg.first_byte_timeout_s,
                    )
                else:
                    log.info(
                        "%s: closing connection from %s idle for %gs",
                        self.name,
                        conn.peer,
                        cfg.idle_timeout_s,
                    )
                return
            conn.idle_since = None
            if silent and data:
                silent = False
                idle_deadline = idle_start + cfg.idle_timeout_s
            if not data:
                if in_frame:
                    log.info(
                        "%s: %s disconnected in the middle of a frame (%d bytes received); nothing stored",
                        self.name,
                        conn.peer,
                        (limit + dropped) if kept is not None else len(buf),
                    )
                return
            buf += data
            del data  # not kept while waiting for the next read

    def _wide_charset(self, conn: _Conn, payload: bytes) -> HL7Error | None:
        """An error for a message whose MSH-18 names a charset MLLP cannot carry (UTF-16/32), else None."""
        start = payload.find(b"MSH", 0, 64)  # after a BOM or blank lines, if any
        if start == -1:
            return None  # no MSH: ingest NAKs it in ASCII anyway
        end = payload.find(CR, start, start + _MSH_SCAN_BYTES)
        line = payload[start : end if end != -1 else start + _MSH_SCAN_BYTES].upper()
        if _WIDE_CHARSET_PREFIX not in line or not any(name in line for name in _WIDE_CHARSET_NAMES):
            return None  # the common case: one search in the MSH line, no parse
        try:
            declared = hl7v2.read_header(line.decode("latin-1")).charset.strip().upper()
        except HL7Error:
            return None
        codec = hl7v2.CHARSETS.get(declared)
        if codec is None or response.byte_compatible(codec):
            return None
        self.stats.wide_charset += 1
        log.warning("%s: message from %s declares MSH-18 %s, which MLLP cannot carry", self.name, conn.peer, declared)
        return HL7Error(
            f"MSH-18 {declared} cannot be carried by MLLP; send UNICODE UTF-8 or a single-byte character set",
            code="204",
            location="MSH^1^18",
            reject=True,
        )

    def _skip(self, conn: _Conn, n: int) -> None:
        conn.skipped += n
        self.stats.skipped_bytes += n

    def _cap(self, frame: bytearray) -> int:
        """The cap of the frame that ``frame`` begins: ``max_frame_bytes`` for a batch, else the message cap."""
        return self.config.max_frame_bytes if hl7_batch.is_batch(bytes(frame[:64])) else self._message_cap

    def _oversize(self, conn: _Conn, size: int, limit: int) -> HL7Error:
        cap = "max_frame_bytes" if limit == self.config.max_frame_bytes else "max_bytes"
        self.stats.oversize += 1
        log.warning("%s: %d-byte message from %s exceeds %s (%d)", self.name, size, conn.peer, cap, limit)
        return HL7Error(f"the message is over the cap {cap} = {limit} bytes", code="207", reject=True)

    async def _unterminated(self, conn: _Conn, partial: bytes) -> None:
        """Pass a frame cut off by ``read_timeout_s`` to the handler (to store it); send nothing."""
        timeout = self.config.read_timeout_s
        self.stats.unterminated += 1
        log.warning(
            "%s: frame from %s not terminated within %gs (%d bytes kept); closing without reply",
            self.name,
            conn.peer,
            timeout,
            len(partial),
        )
        error = HL7Error(f"message not terminated within {timeout:g} s", code="207", reject=True)
        await self._reply(conn, partial, Inbound(conn.peer, error))

    async def _reply(self, conn: _Conn, payload: bytes, inbound: Inbound) -> bytes:
        """The handler's reply, or an AE "internal error" if it fails or takes too long."""
        conn.busy = True
        self.stats.messages += 1
        conn.set_deadline(conn.loop.time() + self.config.reply_timeout_s)
        try:
            reply = await self._handler(payload, inbound)
            if not isinstance(reply, bytes | bytearray | memoryview):
                raise TypeError(f"handler returned {type(reply).__name__}, not bytes")
        except asyncio.CancelledError:
            if not conn.expired():
                raise
            self.stats.handler_errors += 1
            log.error(
                "%s: no reply from the handler within %gs for a message from %s",
                self.name,
                self.config.reply_timeout_s,
                inbound.peer,
            )
            return _internal_error(payload, "internal error: no reply in time")
        except Exception as exc:
            self.stats.handler_errors += 1
            # The exception's text may quote message content: log its type and where it was raised only.
            log.error("%s: handler failed for a message from %s: %s", self.name, inbound.peer, _where(exc))
            return _internal_error(payload, "internal error")
        conn.expired()  # the handler may have swallowed the watchdog's cancel: undo it
        return reply

    async def _send(self, conn: _Conn, reply: bytes) -> None:
        writer = conn.writer
        writer.write(frame(reply))
        if writer.transport.get_write_buffer_size():
            conn.set_deadline(conn.loop.time() + self.config.write_timeout_s)
            try:
                await writer.drain()
            except asyncio.CancelledError:
                if not conn.expired():
                    raise
                raise TimeoutError from None
        self.stats.replies += 1


def _internal_error(payload: bytes, text: str) -> bytes:
    """AE for a message the engine failed to handle, addressed from its MSH when readable."""
    error = HL7Error(text, code="207")
    head = payload[:4096].decode("latin-1")  # MSH is ASCII in every charset allowed over MLLP
    try:
        header = hl7v2.read_header(head)
    except HL7Error:
        return response.hl7_nak_unparsed(head, error).encode("latin-1")
    return response.hl7_ack(header, "AE", text, error).encode("latin-1", "replace")


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close a connection; abort it if it does not close promptly (e.g. a TLS peer that never answers)."""
    try:
        writer.close()
        async with asyncio.timeout(_CLOSE_WAIT_S):
            await writer.wait_closed()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
    except Exception:
        writer.transport.abort()


def _ip(writer: asyncio.StreamWriter) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The sender's address (an IPv4-mapped IPv6 address as IPv4), None when unknown."""
    addr = writer.get_extra_info("peername")
    try:
        ip = ipaddress.ip_address(addr[0])
    except (TypeError, ValueError, IndexError):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind_reason(exc: OSError) -> str:
    """The reason a bind failed, without the address tuple asyncio puts into ``strerror``."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror})"
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return type(exc).__name__


def _peer(writer: asyncio.StreamWriter) -> str:
    addr = writer.get_extra_info("peername")
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr or "unknown")


def _where(exc: BaseException) -> str:
    """An exception's type and innermost frame, without its message (which may hold PHI)."""
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return type(exc).__name__
    last = tb[-1]
    return f"{type(exc).__name__} at {Path(last.filename).name}:{last.lineno} in {last.name}"


def build(ctx: SourceContext) -> MLLPSource:
    """The MLLP source of a channel: HL7 v2 accepted by :class:`HL7Acceptor`, timed and counted."""
    ch = ctx.channel
    config: MLLPConfig = ch.source  # type: ignore[assignment]
    limits = channel_limits(ctx.limits, ch)
    acceptor = HL7Acceptor(ch, config, ctx.ingest, has_mapping=ctx.has_mapping, transform_now=ctx.transform_now,
                           limits=limits)  # fmt: skip

    async def handle(raw: bytes, inbound: Inbound) -> bytes:
        t0 = time.perf_counter()
        reply = await acceptor.handle(raw, inbound.peer, inbound.error)
        ctx.metrics.received(ch.name, reply.status, time.perf_counter() - t0)
        return acceptor.encode(reply)

    return MLLPSource(config, handle, name=ch.name, max_message_bytes=limits.max_bytes)
