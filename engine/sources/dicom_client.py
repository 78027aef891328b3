"""A small DICOM storage SCU (``interlink send --channel <DICOM channel>``, benchmarks, tests): C-STORE files
to a storage SCP, each instance exactly as it is on disk.

``send_files(host, port, files, *, called_ae, ...) -> list[StoreResult]``
    Blocking. The files are split into ``associations`` contiguous runs, each sent on its own association
    (in its own thread), one C-STORE at a time. Each association proposes one presentation context per
    (SOP class, transfer syntax) its files carry, one transfer syntax each, so every instance goes in the
    syntax it was written in (streamed from the file by pynetdicom, never decoded or transcoded); more than
    128 such pairs take further associations in turn (PS3.8 allows 128 contexts per association).
    ``on_result`` is called with each file's result as it arrives (from the sending threads, one at a time);
    the list returned is in the order of ``files``.

A :class:`StoreResult` holds the C-STORE response status, or ``None`` when the file was not stored at all:
not a DICOM file, its transfer syntax refused, the association rejected or ended before the response.
``reason`` is PHI-free: a status category and meaning from pynetdicom's tables, or why nothing was sent.
Warnings (0xB000-0xBFFF: stored, with coercion) count as stored.
"""

from __future__ import annotations

import math
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine import dicomnet

__all__ = ["MAX_CONTEXTS", "StoreResult", "send_files"]

#: presentation contexts one association may propose (PS3.8 9.3.2.2: context IDs are odd numbers 1-255)
MAX_CONTEXTS = 128


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What became of one file."""

    path: Path
    status: int | None  # the C-STORE response status; None: no response (see ``reason``)
    reason: str

    @property
    def stored(self) -> bool:
        return self.status is not None and (self.status == 0 or 0xB000 <= self.status <= 0xBFFF)

    def line(self) -> str:
        """``0x0000 Success``, ``0xC000 Failure: Cannot Understand``, or ``not sent: <why>``."""
        if self.status is None:
            return f"not sent: {self.reason}"
        return f"0x{self.status:04X} {self.reason}"


def _reason(status: int) -> str:
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

    category = code_to_category(status)
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, ("", ""))[1]
    return f"{category}: {meaning}" if meaning and category != "Success" else category


@dataclass(frozen=True, slots=True)
class _File:
    index: int
    path: Path
    context: tuple[str, str]  # (SOP class UID, transfer syntax UID)


def _read_meta(path: Path) -> tuple[str, str] | str:
    """(SOP class, transfer syntax) from the file meta information, or why the file cannot be sent."""
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_file_meta_info

    try:
        meta = read_file_meta_info(path)
    except OSError as exc:
        return f"cannot read the file ({exc.strerror or exc.__class__.__name__})"
    except (InvalidDicomError, ValueError, KeyError, EOFError):
        return "not a DICOM file (no file meta information)"
    sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
    syntax = str(meta.get("TransferSyntaxUID", "") or "")
    if not sop_class or not syntax or "MediaStorageSOPInstanceUID" not in meta:
        return "the file meta information lacks its SOP class, instance or transfer syntax"
    return sop_class, syntax


def _batches(files: Sequence[_File]) -> list[list[_File]]:
    """Consecutive runs of files whose distinct contexts fit one association."""
    out: list[list[_File]] = []
    seen: set[tuple[str, str]] = set()
    for f in files:
        if not out or (f.context not in seen and len(seen) == MAX_CONTEXTS):
            out.append([])
            seen = set()
        seen.add(f.context)
        out[-1].append(f)
    return out


def send_files(
    host: str,
    port: int,
    files: Sequence[Path],
    *,
    called_ae: str,
    calling_ae: str = "INTERLINK-SCU",
    associations: int = 1,
    tls: ssl.SSLContext | None = None,
    timeout_s: float = 30.0,
    on_result: Callable[[StoreResult], None] | None = None,
) -> list[StoreResult]:
    """Send every file (see the module contract); the results in the order of ``files``."""
    dicomnet.configure(send=True)  # each instance streamed from its file: never decoded, transcoded or whole in memory

    results: list[StoreResult | None] = [None] * len(files)
    lock = threading.Lock()

    def report(index: int, result: StoreResult) -> None:
        with lock:
            results[index] = result
            if on_result is not None:
                on_result(result)

    readable: list[_File] = []
    for i, path in enumerate(files):
        meta = _read_meta(path)
        if isinstance(meta, str):
            report(i, StoreResult(path, None, meta))
        else:
            readable.append(_File(i, path, meta))
    n = max(1, min(associations, len(readable)))
    size = math.ceil(len(readable) / n) if readable else 0
    runs = [readable[k * size : (k + 1) * size] for k in range(n)] if readable else []

    def worker(run: list[_File]) -> None:
        for batch in _batches(run):
            _send_batch(host, port, batch, called_ae, calling_ae, tls, timeout_s, report)

    threads = [threading.Thread(target=worker, args=(run,), name=f"dicom-scu-{k}") for k, run in enumerate(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r if r is not None else StoreResult(files[i], None, "not sent") for i, r in enumerate(results)]


def _send_batch(
    host: str,
    port: int,
    batch: list[_File],
    called_ae: str,
    calling_ae: str,
    tls: ssl.SSLContext | None,
    timeout_s: float,
    report: Callable[[int, StoreResult], None],
) -> None:
    """One association: propose the batch's contexts, C-STORE each file, release."""
    from pynetdicom import AE, evt

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class, syntax in dict.fromkeys(f.context for f in batch):
        ae.add_requested_context(sop_class, [syntax])
    try:
        # pynetdicom leaks the socket of a refused connection (its shutdown of an unconnected socket raises
        # before the close): find out first, on a socket of our own
        socket.create_connection((host, port), timeout=timeout_s).close()
        assoc = ae.associate(host, port, ae_title=called_ae, tls_args=(tls, host) if tls is not None else None,
                             evt_handlers=[(evt.EVT_CONN_OPEN, dicomnet.no_delay)])  # fmt: skip
    except (OSError, RuntimeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.__class__.__name__
        for f in batch:
            report(f.index, StoreResult(f.path, None, f"cannot connect to {host}:{port} ({why})"))
        return
    if not assoc.is_established:
        why = "association rejected" if assoc.is_rejected else "association aborted" if assoc.is_aborted else ""
        for f in batch:
            report(f.index, StoreResult(f.path, None, why or f"no association with {host}:{port}"))
        return
    accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
    try:
        for f in batch:
            if not assoc.is_established:
                report(f.index, StoreResult(f.path, None, "the association ended before it was sent"))
                continue
            if f.context not in accepted:
                report(f.index, StoreResult(f.path, None, "the receiver refused its SOP class or transfer syntax"))
                continue
            try:
                response = assoc.send_c_store(f.path)
            except (ValueError, AttributeError, OSError) as exc:
                report(f.index, StoreResult(f.path, None, f"cannot be sent ({exc.__class__.__name__})"))
                continue
            status = response.get("Status") if response is not None else None
            if status is None:
                report(f.index, StoreResult(f.path, None, "no response (timeout or association ended)"))
            else:
                report(f.index, StoreResult(f.path, int(status), _reason(int(status))))
    finally:
        if assoc.is_established:
            assoc.release()
