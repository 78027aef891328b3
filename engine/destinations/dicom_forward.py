"""DICOM forward: a C-STORE SCU that sends every instance of a study, as stored, to a PACS.

Contract:

- A :class:`~engine.destinations.stored.SendsObjects` destination: it is handed the files of the message's
  stored instances (never the bundle) and sends each exactly as received. The dataset bytes after the
  file meta group go on the wire unchanged (pynetdicom's send from file, ``STORE_SEND_CHUNKED_DATASET``:
  never decoded, never transcoded, never whole in memory); each instance's presentation context proposes
  its SOP class with its own transfer syntax only, so a PACS that does not take that pair refuses it
  rather than the engine converting it. At most 128 contexts per association (the DICOM limit): a study
  with more distinct (SOP class, transfer syntax) pairs goes over several associations.
- One association per attempt; the instances are sent in the message's order. Every outcome is decided
  by :func:`status_outcome` and reported PHI-free (status codes in hex, positions "instance 3 of 8",
  standard SOP class names; never a UID, path or hash):

  ============================================================  =========
  association rejected or aborted, connection refused/timed     RETRY
  out, no C-STORE response, 0xA7xx out of resources, 0x0110
  processing failure, 0x0210 duplicate invocation, 0x0213
  resource limitation, 0xFE00 cancelled
  0x0000 success, 0xBxxx warnings (stored, e.g. coerced)         SENT
  0xCxxx cannot understand, 0xA9xx data set does not match SOP  PERMANENT
  class, 0x0122 SOP class not supported (or its context not
  accepted), 0x0117, 0x0124, 0x0211, 0x0212, any other status;
  a stored instance missing or unreadable; no instances
  ============================================================  =========

  A retryable failure ends the attempt at once (the PACS is down or full); a permanent one is recorded
  and the other instances are still sent, so the PACS holds all it can take. Re-sending an instance the
  PACS already holds is harmless for C-STORE, so a retry or a replay sends the whole study again.
- ``Result.request`` is a small JSON record of what was sent (``[{"object": sha256, "status": "0x0000"}]``,
  in the content store with the attempt); ``Result.status_code`` stays None (it means HTTP elsewhere).
- ``healthcheck`` is a C-ECHO. pynetdicom's own logger is held to warnings (its INFO lines name UIDs).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import orjson
from pydantic import Field, model_validator

from engine import dicomnet
from engine.config.model import Model
from engine.config.tls import describe as tls_describe
from engine.destinations.base import Health, Outcome, Result, RetryPolicy
from engine.destinations.stored import StoredFile
from engine.errors import ConfigError

if TYPE_CHECKING:
    import httpx
    from pynetdicom.association import Association

__all__ = ["DicomForwardConfig", "DicomForwardDestination", "DicomForwardTLSConfig", "status_outcome"]

log = logging.getLogger(__name__)

#: An AE title: 1 to 16 printable ASCII characters, no backslash, not only spaces (PS3.5 AE VR).
AE_TITLE = r"^[\x20-\x5b\x5d-\x7e]*[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]*$"
MAX_CONTEXTS = 128  # presentation contexts one association may propose (PS3.8 9.3.2.2: odd ids 1-255)

_RETRY_STATUSES = {0x0110: "processing failure", 0x0210: "duplicate invocation", 0x0213: "resource limitation",
                   0xFE00: "cancelled"}  # fmt: skip
_NAMES = {0x0117: "invalid SOP instance", 0x0122: "SOP class not supported", 0x0124: "not authorised",
          0x0211: "unrecognised operation", 0x0212: "mistyped argument", **_RETRY_STATUSES}  # fmt: skip


def status_outcome(code: int) -> Outcome:
    """What a DIMSE storage status (C-STORE response, or a STOW-RS FailureReason) means for the delivery."""
    if code == 0x0000 or 0xB000 <= code <= 0xBFFF:
        return Outcome.SENT
    if 0xA700 <= code <= 0xA7FF or code in _RETRY_STATUSES:
        return Outcome.RETRY
    return Outcome.PERMANENT


def status_text(code: int) -> str:
    """``0xC000 (cannot understand)``: the code in hex and its meaning, never anything a peer wrote."""
    if 0xA700 <= code <= 0xA7FF:
        name = "out of resources"
    elif 0xA900 <= code <= 0xA9FF:
        name = "data set does not match SOP class"
    elif 0xC000 <= code <= 0xCFFF:
        name = "cannot understand"
    elif 0xB000 <= code <= 0xBFFF:
        name = "warning"
    else:
        name = _NAMES.get(code, "failure")
    return f"0x{code:04X} ({name})"


class DicomForwardTLSConfig(Model):
    """DICOM over TLS to the PACS: the PACS's certificate is verified; a client certificate is optional."""

    ca_file: Path | None = Field(None, description="PEM CA certificates trusted for the PACS (default: the system's).")
    cert_file: Path | None = Field(None, description="PEM client certificate (chain), when the PACS requires one.")
    key_file: Path | None = Field(None, description="PEM private key of the client certificate.")
    server_hostname: str | None = Field(
        None, description="Name the PACS certificate must carry (default: the host); checked unless verify is off."
    )
    verify: bool = Field(True, description="Verify the PACS certificate and name (keep on in production).")
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Oldest TLS protocol version used.")

    @model_validator(mode="after")
    def _pair(self) -> DicomForwardTLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    def context(self) -> ssl.SSLContext:
        """A client-side SSL context; unreadable files raise ConfigError naming the setting, not the content."""
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tls: cannot load ca_file: {tls_describe(exc)}") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if self.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file is not None and self.key_file is not None:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"tls: cannot load cert_file/key_file: {tls_describe(exc)}") from None
        return ctx


class DicomForwardConfig(Model):
    """Forward every instance of each study, as received, to a PACS with C-STORE."""

    type: Literal["dicom"] = Field(description="Destination kind.")
    #: sends the message's stored objects (DICOM instances), so only a source that stores them can feed it
    sends_objects: ClassVar[bool] = True
    name: str = Field(description="Destination name, unique in the channel.")
    host: str = Field(description="The PACS's host name or address.")
    port: int = Field(description="The PACS's DICOM port.", ge=1, le=65535)
    called_ae_title: str = Field(
        description="The PACS's AE title (1-16 printable ASCII characters, no backslash).",
        pattern=AE_TITLE,
        max_length=16,
    )
    calling_ae_title: str = Field(
        "INTERLINK",
        description="This engine's AE title towards the PACS (1-16 printable ASCII characters).",
        pattern=AE_TITLE,
        max_length=16,
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="Longest wait for the TCP connection.")
    acse_timeout_s: float = Field(30.0, gt=0, description="Longest wait for association accept/reject and release.")
    dimse_timeout_s: float = Field(60.0, gt=0, description="Longest wait for each C-STORE response.")
    network_timeout_s: float = Field(60.0, gt=0, description="An association silent for this long is aborted.")
    max_pdu_bytes: int = Field(
        262_144, ge=0, description="Largest PDU this engine receives (0: unlimited), announced at association."
    )
    tls: DicomForwardTLSConfig | None = Field(None, description="Connect with DICOM over TLS.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Retry policy for failed deliveries.")

    def target(self) -> str:
        """The system written to (channels writing to the same one share ordering lanes)."""
        return f"dicom {self.called_ae_title.strip()}@{self.host}:{self.port}"


class _Failed(Exception):
    """Ends an attempt early with a retryable outcome."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class DicomForwardDestination:
    """C-STORE SCU of one destination; thread-safe (each attempt has its own association)."""

    def __init__(self, config: DicomForwardConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.name = config.name
        self.config = config
        self._tls = config.tls.context() if config.tls is not None else None  # ConfigError at start, not later
        dicomnet.configure(send=True)

    # -- Destination ------------------------------------------------------------------------------

    def send(self, bundle: dict[str, Any], *, message_id: str) -> Result:
        """Never used by the pipeline (this destination sends stored objects); refuses plainly if called."""
        return Result(Outcome.PERMANENT, error="a dicom destination sends the stored instances, not bundles")

    def send_objects(self, objects: Sequence[StoredFile], *, message_id: str) -> Result:
        total = len(objects)
        if total == 0:
            return Result(Outcome.PERMANENT, error="the message refers to no stored instances")
        sent: list[dict[str, str]] = []
        pairs: list[tuple[str, str]] = []
        for n, obj in enumerate(objects, 1):
            pair = _read_meta(obj.path)
            if pair is None:
                why = "missing" if not obj.path.is_file() else "unreadable (no file meta)"
                return Result(Outcome.PERMANENT, error=f"stored instance {n} of {total} is {why}")
            pairs.append(pair)
        permanent: list[str] = []
        try:
            for batch in _batches(pairs):
                self._associate_and_send(batch, objects, pairs, sent, permanent)
        except _Failed as exc:
            return Result(Outcome.RETRY, error=exc.reason, request=orjson.dumps(sent))
        if permanent:
            more = f" (+{len(permanent) - 1} more)" if len(permanent) > 1 else ""
            return Result(Outcome.PERMANENT, error=permanent[0] + more, request=orjson.dumps(sent))
        return Result(Outcome.SENT, request=orjson.dumps(sent))

    def healthcheck(self) -> Health:
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = self._ae(timeout_s=5.0)
        ae.add_requested_context(Verification)
        try:
            assoc = self._associate(ae)
        except _Failed as exc:
            return Health(False, exc.reason)
        try:
            status = assoc.send_c_echo()
            code = int(status.Status) if "Status" in status else None
        except Exception as exc:  # every failure is a health answer
            return Health(False, f"C-ECHO failed ({type(exc).__name__})")
        finally:
            _release(assoc)
        return Health(True) if code == 0 else Health(False, "no C-ECHO response" if code is None else
                                                     f"C-ECHO status {status_text(code)}")  # fmt: skip

    def close(self) -> None:
        pass

    # -- internals ---------------------------------------------------------------------------------

    def _ae(self, *, timeout_s: float | None = None) -> Any:
        from pynetdicom import AE

        cfg = self.config
        ae = AE(ae_title=cfg.calling_ae_title)
        ae.connection_timeout = timeout_s or cfg.connect_timeout_s
        ae.acse_timeout = timeout_s or cfg.acse_timeout_s
        ae.dimse_timeout = timeout_s or cfg.dimse_timeout_s
        ae.network_timeout = timeout_s or cfg.network_timeout_s
        ae.maximum_pdu_size = cfg.max_pdu_bytes
        return ae

    def _associate(self, ae: Any) -> Association:
        from pynetdicom import evt

        cfg = self.config
        tls = (self._tls, cfg.tls.server_hostname or cfg.host) if self._tls is not None and cfg.tls else None
        try:
            assoc = ae.associate(cfg.host, cfg.port, ae_title=cfg.called_ae_title, max_pdu=cfg.max_pdu_bytes,
                                 tls_args=tls, evt_handlers=[(evt.EVT_CONN_OPEN, dicomnet.no_delay)])  # fmt: skip
        except (OSError, RuntimeError, ValueError) as exc:
            raise _Failed(f"association failed ({type(exc).__name__})") from None
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            raise _Failed("association rejected")
        raise _Failed("association failed (no connection, aborted or timed out)")

    def _associate_and_send(
        self,
        batch: list[int],
        objects: Sequence[StoredFile],
        pairs: list[tuple[str, str]],
        sent: list[dict[str, str]],
        permanent: list[str],
    ) -> None:
        """One association carrying the instances at positions ``batch`` (0-based)."""
        ae = self._ae()
        for abstract, syntax in dict.fromkeys(pairs[i] for i in batch):
            ae.add_requested_context(abstract, [syntax])
        assoc = self._associate(ae)
        total = len(objects)
        try:
            accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
            for i in batch:
                where = f"instance {i + 1} of {total}"
                if pairs[i] not in accepted:
                    sent.append({"object": objects[i].sha256, "status": "not accepted"})
                    permanent.append(f"{where}: the PACS did not accept {_context_name(*pairs[i])}")
                    continue
                code = self._store_one(assoc, objects[i].path, where)
                sent.append({"object": objects[i].sha256, "status": f"0x{code:04X}"})
                outcome = status_outcome(code)
                if outcome is Outcome.RETRY:
                    raise _Failed(f"{where}: C-STORE status {status_text(code)}")
                if outcome is Outcome.PERMANENT:
                    permanent.append(f"{where}: C-STORE status {status_text(code)}")
        finally:
            _release(assoc)

    def _store_one(self, assoc: Association, path: Path, where: str) -> int:
        try:
            status = assoc.send_c_store(path)
        except FileNotFoundError:
            raise _Failed(f"{where}: stored instance went missing") from None
        except Exception as exc:  # pynetdicom raises on a broken association or an unreadable file
            if not assoc.is_established:
                raise _Failed(f"{where}: association aborted") from None
            raise _Failed(f"{where}: C-STORE failed ({type(exc).__name__})") from None
        if "Status" not in status:  # pynetdicom's empty answer: timed out, aborted or invalid response
            raise _Failed(f"{where}: no C-STORE response (timed out or aborted)")
        return int(status.Status)


def _read_meta(path: Path) -> tuple[str, str] | None:
    """(SOP class UID, transfer syntax UID) from a stored file's meta group; None when missing/unreadable."""
    from pynetdicom.dsutils import split_dataset

    try:
        meta, _ = split_dataset(path)
        return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
    except Exception:  # a missing file, no meta group, a truncated header: all make the instance unsendable
        return None


def _batches(pairs: list[tuple[str, str]]) -> list[list[int]]:
    """Positions grouped so that each group needs at most MAX_CONTEXTS distinct contexts, in order."""
    batches: list[list[int]] = []
    seen: set[tuple[str, str]] = set()
    for i, pair in enumerate(pairs):
        if not batches or (pair not in seen and len(seen) == MAX_CONTEXTS):
            batches.append([])
            seen = set()
        seen.add(pair)
        batches[-1].append(i)
    return batches


def _context_name(sop_class: str, syntax: str) -> str:
    """Standard names only: a private UID is named as such (it may identify a vendor's product)."""
    from pydicom.uid import UID_dictionary

    def name(uid: str, what: str) -> str:
        entry = UID_dictionary.get(uid)
        return str(entry[0]) if entry else f"a private {what}"

    return f"{name(sop_class, 'SOP class')} in {name(syntax, 'transfer syntax')}"


def _release(assoc: Association) -> None:
    try:
        if assoc.is_established:
            assoc.release()
    except Exception:  # a release that fails leaves nothing to undo
        log.debug("association release failed")
