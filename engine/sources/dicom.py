"""DICOM source: a storage SCP (C-ECHO, C-STORE of every storage SOP class) for modalities and PACS.

Contract:

- Associations: the called AE title must be the channel's ``ae_title``; a calling AE title not in
  ``allowed_calling_ae_titles`` (when given) is rejected at association; at most ``max_associations`` at a
  time. Every storage SOP class is accepted with every transfer syntax pynetdicom knows, compressed ones
  included; an instance is stored exactly as received (never transcoded).
- Each received dataset goes to a temporary file while it arrives (pynetdicom's chunked receive: never a
  whole instance, let alone a study, in memory), then into the content-addressed object store
  (``engine.store.objects``), then its header (without pixel data, private or bulk elements) is committed
  through the one accept path (``Ingest.accept_sync``) as a message of kind ``dicom`` — and only then the
  C-STORE response is sent:

  ====================  ==========================================================================
  0x0000 Success        the instance is committed (or is a resend of a committed one: same bytes)
  0xA700 Out of         the object store or the message store could not take it, or the channel's
  Resources             backlog is full (``engine.backpressure``); nothing claimed
  0xC000 Cannot         the dataset cannot be read, or lacks its Study/Series/SOP Instance UIDs; it is
  understand            stored with that error (object kept, message status ``error``)
  ====================  ==========================================================================

- The duplicate key is the SHA-256 of the stored instance: the same SOP instance resent with the same
  bytes is recognised (status ``duplicate``) and not processed again.
- Instances are ``held`` members of their study's group (``Meta.group`` = Study Instance UID); the study
  is assembled (``engine.sources.dicom_study``) after the associations that carried it are released and
  ``quiet_period_s`` has passed, into one message that one transform maps to ImagingStudy + Patient.
- No patient data and no UIDs reach the logs (pynetdicom's own logger is held to warnings).

pynetdicom runs handlers in its association threads: they commit synchronously through the group committer
(``commit_sync``); the asyncio loop is not involved.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import Field, field_validator

from engine import dicomnet
from engine.config.model import Model
from engine.config.tls import server_context
from engine.errors import ListenError, StoreUnavailable
from engine.ingest import Ingest, Meta
from engine.sources.base import SourceContext
from engine.sources.dicom_study import StudyAssembler, read_instance
from engine.store.objects import ObjectStore
from engine.store.schema import MessageStatus

if TYPE_CHECKING:
    from pynetdicom.events import Event

    from engine.config.channel import Channel
    from engine.metrics import Metrics

__all__ = ["DicomConfig", "DicomSource", "DicomTLSConfig", "build"]

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000


def _ae_title(value: str) -> str:
    v = value.strip()
    if not v or len(v) > 16 or "\\" in v or any(ord(c) < 32 or ord(c) > 126 for c in v):
        raise ValueError("an AE title is 1 to 16 printable ASCII characters without a backslash")
    return v


class DicomTLSConfig(Model):
    """TLS for the DICOM listener (DICOM over TLS, optionally with client certificates)."""

    cert_file: Path = Field(description="PEM certificate (chain) of this listener.")
    key_file: Path = Field(description="PEM private key of the certificate.")
    ca_file: Path | None = Field(
        None, description="PEM CA certificates trusted to sign sender certificates (required from senders when set)."
    )
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Oldest TLS protocol version accepted.")

    def context(self) -> ssl.SSLContext:
        """A server-side SSL context (senders must present a certificate when ``ca_file`` is set)."""
        return server_context(
            self.cert_file, self.key_file, self.ca_file, self.min_version, client_cert=ssl.CERT_REQUIRED, setting="tls"
        )


class DicomConfig(Model):
    """A DICOM storage SCP: modalities and PACS push instances; each study becomes one message."""

    type: Literal["dicom"] = Field(description="Source kind.")
    ae_title: str = Field("INTERLINK", description="This listener's AE title (the called AE title senders use).")
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 or :: for every interface).")
    port: int = Field(description="TCP port to listen on (0 picks a free port, for tests).", ge=0, le=65535)
    allowed_calling_ae_titles: list[str] = Field(
        default_factory=list,
        description="Calling AE titles accepted; others are rejected at association. Empty: any.",
    )
    max_pdu_bytes: int = Field(
        262_144, ge=0, description="Largest PDU this listener receives (0: unlimited), announced at association."
    )
    max_associations: int = Field(10, ge=1, description="Concurrent associations; more are rejected (busy).")
    acse_timeout_s: float = Field(30.0, gt=0, description="Longest wait for an association message (request, release).")
    dimse_timeout_s: float = Field(30.0, gt=0, description="Longest wait for the next DIMSE message of an association.")
    network_timeout_s: float = Field(60.0, gt=0, description="An association silent for this long is aborted.")
    tls: DicomTLSConfig | None = Field(None, description="Serve DICOM over TLS.")
    objects_dir: Path = Field(
        Path("data/objects"), description="Folder of the content-addressed object store the instances are kept in."
    )
    fsync: bool = Field(
        True, description="Make each instance file durable before it is committed and acknowledged (power loss)."
    )
    quiet_period_s: float = Field(
        2.0,
        ge=0,
        description="A study is assembled and mapped once no association carrying it is open and none brought "
        "one of its instances for this long (a study sent over several associations is mapped once).",
    )
    dedupe_window_s: int = Field(
        30 * 86400, ge=0, description="How far back (seconds) a resent identical instance is recognised."
    )
    max_instances_per_study: int = Field(
        20_000, ge=1, description="Largest study assembled into one message; beyond it the study is refused."
    )

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, v: str) -> str:
        return _ae_title(v)

    @field_validator("allowed_calling_ae_titles")
    @classmethod
    def _check_allowed(cls, v: list[str]) -> list[str]:
        return [_ae_title(x) for x in v]


class DicomSource:
    """The storage SCP of one channel (pynetdicom's threaded server)."""

    def __init__(
        self,
        config: DicomConfig,
        channel: Channel,
        ingest: Ingest,
        *,
        metrics: Metrics | None = None,
        objects: ObjectStore | None = None,
    ) -> None:
        self.config = config
        self.channel = channel
        self.name = channel.name
        self._ingest = ingest
        self._metrics = metrics
        self.objects = objects or ObjectStore(config.objects_dir, fsync=config.fsync)
        self.assembler = StudyAssembler(channel, ingest, quiet_period_s=config.quiet_period_s,
                                        max_instances=config.max_instances_per_study)  # fmt: skip
        self._server: Any = None
        self._studies: dict[int, set[str]] = {}  # association → studies it brought (Study Instance UIDs)
        self._lock = threading.Lock()
        self.port = config.port
        self.stats = {"stored": 0, "duplicate": 0, "error": 0, "refused": 0}

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        from pynetdicom import evt

        dicomnet.configure(
            receive=True
        )  # received datasets go to a temporary file as they arrive, never whole in memory
        ae = self._application_entity()
        handlers = [
            (evt.EVT_CONN_OPEN, dicomnet.no_delay),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_end),
            (evt.EVT_ABORTED, self._on_end),
            (evt.EVT_CONN_CLOSE, self._on_end),
        ]
        cfg = self.config
        ctx = cfg.tls.context() if cfg.tls else None  # ConfigError (one line) when the files cannot be loaded
        try:
            self._server = await asyncio.to_thread(
                ae.start_server, (cfg.host, cfg.port), block=False, ssl_context=ctx, evt_handlers=handlers
            )
        except OSError as exc:
            raise ListenError(
                f"cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc.__class__.__name__})"
            ) from None
        self.port = self._server.server_address[1]
        self.assembler.start()

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.shutdown)
        await asyncio.to_thread(self.assembler.stop)

    def _application_entity(self) -> Any:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_called_aet = True
        if cfg.allowed_calling_ae_titles:
            ae.require_calling_aet = list(cfg.allowed_calling_ae_titles)
        ae.maximum_associations = cfg.max_associations
        ae.maximum_pdu_size = cfg.max_pdu_bytes
        ae.acse_timeout = cfg.acse_timeout_s
        ae.dimse_timeout = cfg.dimse_timeout_s
        ae.network_timeout = cfg.network_timeout_s
        return ae

    # -- handlers (pynetdicom threads) ----------------------------------------------------------------

    def _on_store(self, event: Event) -> int:
        t0 = time.perf_counter()
        status, outcome = self._store(event)
        self.stats[outcome] = self.stats.get(outcome, 0) + 1
        if self._metrics is not None:
            self._metrics.received(self.name, outcome, time.perf_counter() - t0)
        return status

    def _store(self, event: Event) -> tuple[int, str]:
        assoc = event.assoc
        peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
        calling = str(assoc.requestor.ae_title).strip()
        try:
            path = event.dataset_path
        except AttributeError:
            return OUT_OF_RESOURCES, "refused"  # chunked receive is off: never acknowledge from memory
        try:
            self._ingest.check(self.channel)  # a full backlog refuses before the object is written
            stored = self.objects.put_file(path)
        except StoreUnavailable:
            return OUT_OF_RESOURCES, "refused"
        instance, error = read_instance(path, stored, calling)
        meta = Meta(
            peer=peer,
            kind="dicom",
            message_type="instance",
            sender=calling,
            dedupe=f"sha256:{stored.sha256}",
            dedupe_window_s=self.config.dedupe_window_s,
            patient=instance.patient if instance else "",
            error=error,
            group=instance.study_uid if instance else "",
        )
        payload = instance.document if instance else orjson.dumps({"object": stored.sha256, "size": stored.size})
        try:
            receipt = self._ingest.accept_sync(self.channel, payload, meta, enqueue=False)
        except StoreUnavailable:
            return OUT_OF_RESOURCES, "refused"
        if error is not None:
            return CANNOT_UNDERSTAND, "error"
        assert instance is not None
        with self._lock:
            self._studies.setdefault(id(assoc), set()).add(instance.study_uid)
        self.assembler.arrived(instance.study_uid, id(assoc))
        if receipt.status == MessageStatus.duplicate:
            return SUCCESS, "duplicate"
        return SUCCESS, "stored"

    def _on_end(self, event: Event) -> None:
        with self._lock:
            studies = self._studies.pop(id(event.assoc), set())
        self.assembler.released(studies, id(event.assoc))


def build(ctx: SourceContext) -> DicomSource:
    """The DICOM source of a channel."""
    config: DicomConfig = ctx.channel.source  # type: ignore[assignment]
    return DicomSource(config, ctx.channel, ctx.ingest, metrics=ctx.metrics)
