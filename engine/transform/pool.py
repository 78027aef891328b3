"""Run the mapping where there is a free CPU core: in the calling thread, or in worker processes.

The engine is one Python process, and everything in it shares one interpreter lock; measured on a
2-core machine, parse + map is about a third of the CPU a message costs. ``ProcessMapper`` moves it to
child processes that compile the same mapping files, so the listener, the store and the deliveries keep
the first core and the mapping gets the others.

The wire between parent and child carries bytes only (JSON requests, length-prefixed replies): nothing a
sender controls is ever pickled. A reply also carries the message's search keys (``engine.transform.keys``:
patient identifiers and order numbers, read from the bundle or the parsed message the child has anyway), so
the engine never parses a message again to index it. A child that dies is restarted and the batch it held fails with
``MapperUnavailable`` (the queue retries it).

A reload replaces the maps while messages are mapped (:class:`Switch`): a batch maps wholly on the mapper
it began on, and a replaced mapper (its processes) is closed once the last batch it holds is answered, so
no job is dropped or mapped twice across the swap. New processes are told the fingerprint of the mapping
files the engine compiled (``engine.reload``) and refuse to serve when the files they read differ.

A child never outlives the engine process and leaves quietly: on Linux it asks for a signal when its
parent dies (``PR_SET_PDEATHSIG``, so a ``kill -9`` of the engine ends a child in the middle of a batch
at once), and everywhere it ends on the pipe's EOF or a broken pipe without a traceback. It ignores
SIGINT: a Ctrl-C reaches the whole process group, and the engine then closes its children itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing as mp
import os
import queue
import signal
import struct
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import orjson

from engine import allocator, hl7v2
from engine.errors import HL7Error, InterlinkError, TransformError
from engine.transform import dates, keys
from engine.transform.authority import Identifiers
from engine.transform.limits import check_text
from engine.transform.mappingset import MappingSet, load_site_mappings

if TYPE_CHECKING:
    from engine.config.channel import Channel
    from engine.settings import Settings

_OK, _EMPTY, _TRANSFORM_ERROR, _HL7_ERROR = 0, 1, 2, 3
_HEAD = struct.Struct("!BII")  # kind, body size, search keys size (JSON [[kind, value], …] after the body)
_TIME = struct.Struct("!d")  # the source time after an _OK head (NaN: none)


class MapperUnavailable(InterlinkError):
    """A mapping process died or could not be started; the work can be retried."""


@dataclass(slots=True, frozen=True)
class Job:
    """One message to map."""

    raw: bytes
    charset: str
    mapping: str | None
    validation: str
    timezone: str | None = None
    identifiers: Identifiers | None = None  # the channel's default assigning authority (none: refuse)
    kind: str = "hl7v2"  # the input kind: which parser and mapping library
    strict: bool = False  # the channel's `strict`: check the HL7 message structure first
    event_type: str = "type"  # JSON events: the dotted path of the event type (the webhook's `event_type:`)


def channel_job(channel: Channel, raw: bytes, charset: str, kind: str) -> Job:
    """The job of a stored message of ``channel`` (its raw content, the charset and input kind it was stored
    with): the worker and the mapping diff (``engine.transform.diff``) map a message one way."""
    return Job(
        raw,
        charset or "utf-8",
        channel.mapping,
        channel.validation,
        channel.timezone,
        channel.identifiers,
        kind,
        channel.strict,
        getattr(channel.source, "event_type", "type"),  # JSON events: where their type is
    )


@dataclass(slots=True, frozen=True)
class Mapped:
    """The bundle (JSON bytes), or why there is none. ``empty``: the mapping produced no resources.

    ``source_time``: when the message's event happened at the source (epoch s; see :func:`source_time`).
    ``keys``: what the message is searched by, plain (``engine.transform.keys``; the store hashes them).
    """

    bundle: bytes | None = None
    error: HL7Error | TransformError | None = None
    empty: bool = False
    source_time: float | None = None
    keys: tuple[tuple[str, str], ...] = ()


def source_time(message: hl7v2.Message, tz: str | None) -> float | None:
    """EVN-2 (recorded date/time), else MSH-7, as epoch seconds (read in ``tz`` when sent without an
    offset); None when neither is a valid time. The stale-write guard compares these."""
    evn = message.first("EVN")
    for value in (evn.field(2) if evn else "", message.header.field(7)):
        value = value.split(message.delimiters.component, 1)[0].strip()
        if not value:
            continue
        try:
            zone = dates.zone(tz or "UTC")
            text = dates.parse_ts(value, zone)
            if "T" in text:
                return datetime.fromisoformat(text).timestamp()
            y, m, d = [*map(int, text.split("-")), 1, 1][:3]  # a date alone: its midnight
            return datetime(y, m, d, tzinfo=zone).timestamp()
        except (dates.Invalid, ValueError):
            continue
    return None


def map_one(mappings: MappingSet, job: Job) -> Mapped:
    """Decode, parse and map one message by its input kind (HL7 v2, a DICOM study, a JSON event, FHIR)."""
    if job.kind == "dicom":
        return _map_dicom(mappings, job)
    if job.kind == "json":
        return _map_json(mappings, job)
    if job.kind == "fhir":
        return _map_fhir(job)
    if job.kind != "hl7v2":
        return Mapped(error=TransformError(f"no mapping library for input kind {job.kind}", code="200"))
    message = None
    try:
        text = hl7v2.decode(job.raw, job.charset)
        check_text(text, mappings.limits)  # a forged segment or an oversize text, before the split
        message = hl7v2.Message.parse(text)
        bundle = mappings.transform(
            message,
            mapping=job.mapping,
            validation=job.validation,
            timezone=job.timezone,
            identifiers=job.identifiers,
            strict=job.strict,
        )
    except (HL7Error, TransformError) as exc:
        # no bundle: the keys as the message says them, when it could be read
        return Mapped(error=exc, keys=keys.from_hl7(message) if message is not None else ())
    if not bundle.get("entry"):
        return Mapped(empty=True)
    return Mapped(
        bundle=orjson.dumps(bundle),
        source_time=source_time(message, job.timezone or mappings.timezone),
        keys=keys.from_bundle(bundle),
    )


def _map_dicom(mappings: MappingSet, job: Job) -> Mapped:
    """A DICOM study message (``engine.sources.dicom_study``) through the maps of ``mappings/dicom/``."""
    from engine.transform import dicom

    try:
        message, assembled_at = dicom.study_message(job.raw)
        bundle = mappings.for_kind("dicom").transform(
            message, mapping=job.mapping, validation=job.validation, timezone=job.timezone, identifiers=job.identifiers
        )
    except TransformError as exc:
        return Mapped(error=exc)
    if not bundle.get("entry"):
        return Mapped(empty=True)
    return Mapped(bundle=orjson.dumps(bundle), source_time=assembled_at, keys=keys.from_bundle(bundle))


def _map_json(mappings: MappingSet, job: Job) -> Mapped:
    """A JSON event (a webhook body) through the maps of ``mappings/json/`` (``engine.transform.jsonevent``)."""
    from engine.transform import jsonevent

    try:
        json_maps = mappings.for_kind("json")
        message = jsonevent.event_message(job.raw, json_maps.limits, job.event_type)
        if job.mapping is None and json_maps.mapping_for(message) is None:
            where = "$." + job.event_type
            raise TransformError("no JSON map accepts this event type", field=where, rule="mapping", code="200")
        bundle = json_maps.transform(
            message, mapping=job.mapping, validation=job.validation, timezone=job.timezone, identifiers=job.identifiers
        )
    except TransformError as exc:
        return Mapped(error=exc)
    if not bundle.get("entry"):
        return Mapped(empty=True)
    return Mapped(bundle=orjson.dumps(bundle), keys=keys.from_bundle(bundle))


def _map_fhir(job: Job) -> Mapped:
    """FHIR received as FHIR: made into a transaction of conditional entries (``engine.transform.fhirjson``),
    validated as the channel says (``sampled`` bodies were already checked on receipt by a webhook source)."""
    from engine.transform import fhirjson
    from engine.transform.validate import validate_bundle

    try:
        data = orjson.loads(job.raw)
        bundle = fhirjson.to_transaction(data)
        if job.validation == "full":
            validate_bundle(bundle)
    except orjson.JSONDecodeError:
        return Mapped(error=TransformError("the body is not JSON", field="$", rule="fhir-input", code="102"))
    except TransformError as exc:
        return Mapped(error=exc)
    if not bundle.get("entry"):
        return Mapped(empty=True)
    return Mapped(bundle=orjson.dumps(bundle), source_time=fhirjson.source_time(data), keys=keys.from_bundle(bundle))


class InThreadMapper:
    """Maps in the calling thread."""

    def __init__(self, mappings: MappingSet) -> None:
        self.mappings = mappings

    def map_many(self, jobs: Sequence[Job]) -> list[Mapped]:
        return [map_one(self.mappings, j) for j in jobs]

    def close(self) -> None:
        pass


# -- the child's side -------------------------------------------------------------------------------


def _encode_reply(m: Mapped) -> bytes:
    found = orjson.dumps(m.keys) if m.keys else b""
    if m.bundle is not None:
        when = _TIME.pack(math.nan if m.source_time is None else m.source_time)
        return _HEAD.pack(_OK, len(m.bundle), len(found)) + when + m.bundle + found
    if m.empty:
        return _HEAD.pack(_EMPTY, 0, 0)
    e = m.error
    if isinstance(e, TransformError):
        body = orjson.dumps({"message": e.message, "field": e.field, "rule": e.rule, "code": e.code})
        return _HEAD.pack(_TRANSFORM_ERROR, len(body), len(found)) + body + found
    assert isinstance(e, HL7Error)
    body = orjson.dumps({"message": e.message, "code": e.code, "location": e.location, "reject": e.reject})
    return _HEAD.pack(_HL7_ERROR, len(body), len(found)) + body + found


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PR_SET_NAME = 15
#: A mapping process's name (Linux ``comm``, at most 15 bytes)
PROCESS_NAME = b"interlink-map"
_PARENT_DEATH_SIGNAL = signal.SIGUSR1


def _exit_with_parent() -> None:
    """End this process as soon as the engine process that started it is gone, without a word.

    The kernel sends PR_SET_PDEATHSIG's signal when the *thread* that started the child exits, which
    happens while the engine runs (a worker thread replaces a dead child, then ends): the handler leaves
    only when the parent process itself is gone, i.e. the child has been given to another parent.
    """
    parent = mp.parent_process()
    parent_pid = parent.pid if parent is not None and parent.pid else os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform != "linux":
        return  # the pipe's EOF (or a broken pipe) still ends the child when the parent dies

    def on_parent_death(signum: int, frame: object) -> None:
        if os.getppid() != parent_pid:
            os._exit(0)

    signal.signal(_PARENT_DEATH_SIGNAL, on_parent_death)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NAME, PROCESS_NAME, 0, 0, 0)  # what ps, top and /proc/<pid>/comm show, forked or spawned
    if libc.prctl(_PR_SET_PDEATHSIG, int(_PARENT_DEATH_SIGNAL), 0, 0, 0) != 0:
        return
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(0)


def _child(conn: Connection, settings_json: str, files: str | None = None) -> None:
    """A mapping process: serve batches until the parent closes the pipe or dies; never a traceback for
    that (a broken pipe is the parent dying while a batch was mapped)."""
    _exit_with_parent()
    allocator.configure()
    try:
        _serve(conn, settings_json, files)
    except (EOFError, OSError):
        return


def _serve(conn: Connection, settings_json: str, files: str | None) -> None:
    from engine.reload import mapping_digests, mapping_fingerprint
    from engine.settings import Settings

    settings = Settings.model_validate_json(settings_json)
    before = mapping_fingerprint(mapping_digests(settings)) if files else None
    mappings = load_site_mappings(settings)
    if files and not before == files == mapping_fingerprint(mapping_digests(settings)):
        conn.send_bytes(b"stale")  # the files changed since the engine compiled them: not the same maps
        return
    conn.send_bytes(b"ready")
    while True:
        try:
            request = conn.recv_bytes()
        except (EOFError, OSError):
            return
        jobs = [
            Job(
                raw.encode("latin-1"),
                c,
                m,
                v,
                tz,
                None if ids is None else Identifiers.model_validate(ids),
                kind,
                st,
                et,
            )
            for raw, c, m, v, tz, ids, kind, st, et in orjson.loads(request)
        ]
        conn.send_bytes(b"".join(_encode_reply(map_one(mappings, j)) for j in jobs))
        del request, jobs  # a batch of large messages is not kept while waiting for the next


# -- the parent's side ------------------------------------------------------------------------------


def _decode_replies(data: bytes) -> list[Mapped]:
    out: list[Mapped] = []
    pos = 0
    while pos < len(data):
        kind, size, keys_size = _HEAD.unpack_from(data, pos)
        pos += _HEAD.size
        when = math.nan
        if kind == _OK:
            (when,) = _TIME.unpack_from(data, pos)
            pos += _TIME.size
        body = data[pos : pos + size]
        pos += size
        found = tuple((k, v) for k, v in orjson.loads(data[pos : pos + keys_size])) if keys_size else ()
        pos += keys_size
        if kind == _OK:
            out.append(Mapped(bundle=body, source_time=None if math.isnan(when) else when, keys=found))
        elif kind == _EMPTY:
            out.append(Mapped(empty=True))
        elif kind == _TRANSFORM_ERROR:
            out.append(Mapped(error=TransformError(**orjson.loads(body)), keys=found))
        else:
            out.append(Mapped(error=HL7Error(**orjson.loads(body)), keys=found))
    return out


class _Child:
    def __init__(self, ctx: mp.context.SpawnContext, settings_json: str, files: str | None) -> None:
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(
            target=_child, args=(child_conn, settings_json, files), name="interlink-mapper", daemon=True
        )
        self.process.start()
        child_conn.close()
        answer = b""
        with contextlib.suppress(EOFError, OSError):  # a child that failed to compile closed the pipe
            answer = self.conn.recv_bytes() if self.conn.poll(120) else b""
        if answer != b"ready":
            self.close()
            why = "read other mapping files than the engine" if answer == b"stale" else "did not start"
            raise MapperUnavailable(f"mapping process {why}")

    def call(self, jobs: Sequence[Job]) -> list[Mapped]:
        request = orjson.dumps(
            [
                [
                    j.raw.decode("latin-1"),
                    j.charset,
                    j.mapping,
                    j.validation,
                    j.timezone,
                    None if j.identifiers is None else j.identifiers.model_dump(mode="json"),
                    j.kind,
                    j.strict,
                    j.event_type,
                ]
                for j in jobs
            ]
        )
        self.conn.send_bytes(request)
        return _decode_replies(self.conn.recv_bytes())

    def close(self) -> None:
        self.conn.close()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()


class ProcessMapper:
    """Maps in ``processes`` child processes; thread-safe (a calling thread borrows an idle child)."""

    def __init__(self, settings: Settings, *, processes: int = 1, files: str | None = None) -> None:
        """``files``: the fingerprint of the mapping files the engine compiled (``engine.reload``); a child
        that reads other bytes does not start (MapperUnavailable). None: not checked."""
        self._settings = settings.model_dump_json()  # the child loads the same maps, overlays and caps
        self._ctx = mp.get_context("spawn")
        self._idle: queue.SimpleQueue[_Child] = queue.SimpleQueue()
        self._all: list[_Child] = []
        self._lock = threading.Lock()
        try:
            for _ in range(processes):
                self._add(files)
        except MapperUnavailable:
            self.close()  # the children already started
            raise

    def _add(self, files: str | None = None) -> None:
        # a replacement for a dead child (files None) compiles what is on disk then, as at start-up: one
        # checked against files that changed since would leave the pool a process short
        child = _Child(self._ctx, self._settings, files)
        with self._lock:
            self._all.append(child)
        self._idle.put(child)

    def map_many(self, jobs: Sequence[Job]) -> list[Mapped]:
        child = self._idle.get()
        try:
            result = child.call(jobs)
        except (EOFError, OSError) as exc:
            with self._lock:
                self._all.remove(child)
            child.close()
            self._add()
            raise MapperUnavailable(f"mapping process failed ({exc.__class__.__name__}); restarted") from None
        self._idle.put(child)
        return result

    def close(self) -> None:
        with self._lock:
            children, self._all = self._all, []
        for c in children:
            c.close()

    @property
    def pids(self) -> list[int]:
        return [c.process.pid for c in self._all if c.process.pid is not None]


Mapper = InThreadMapper | ProcessMapper


class Switch:
    """The mapper in use, replaceable while batches are mapped (a reload of the maps); thread-safe.

    A batch maps wholly on the mapper current when it began; :meth:`use` makes the next batches go to the
    new one and closes the old one when the last batch it holds is answered (at once when it holds none).
    """

    def __init__(self, mapper: Mapper) -> None:
        self._lock = threading.Lock()
        self._current = mapper
        self._busy: dict[Mapper, int] = {}  # batches in progress per mapper
        self._retired: list[Mapper] = []  # replaced, closed when their last batch is answered

    @property
    def current(self) -> Mapper:
        return self._current

    def map_many(self, jobs: Sequence[Job]) -> list[Mapped]:
        with self._lock:
            mapper = self._current
            self._busy[mapper] = self._busy.get(mapper, 0) + 1
        try:
            return mapper.map_many(jobs)
        finally:
            done = None
            with self._lock:
                self._busy[mapper] -= 1
                if not self._busy[mapper]:
                    del self._busy[mapper]
                    if mapper in self._retired:
                        self._retired.remove(mapper)
                        done = mapper
            if done is not None:
                done.close()

    def use(self, mapper: Mapper) -> None:
        """Map the next batches with ``mapper``; the one it replaces finishes what it holds, then closes."""
        with self._lock:
            old, self._current = self._current, mapper
            busy = old in self._busy
            if busy:
                self._retired.append(old)
        if not busy:
            old.close()

    def close(self) -> None:
        with self._lock:
            mappers, self._retired = [self._current, *self._retired], []
        for m in mappers:
            m.close()
