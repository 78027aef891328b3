"""Server-side TLS contexts, built one way for every listener (MLLP, DICOM, the HTTP server).

Each listener keeps its own config model (their fields say what the certificate is for); they all build
their context here, so the protocol floor, the client-certificate policy and the PHI-free error (naming the
setting and the file role, never a path's content) are the same everywhere.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from engine.errors import ConfigError

__all__ = ["describe", "server_context"]


def server_context(
    cert_file: Path,
    key_file: Path,
    ca_file: Path | None,
    min_version: Literal["1.2", "1.3"],
    *,
    client_cert: ssl.VerifyMode,
    setting: str,
    alpn: list[str] | None = None,
) -> ssl.SSLContext:
    """A server context presenting ``cert_file``; with ``ca_file``, client certificates signed by it are
    verified under ``client_cert`` (``CERT_OPTIONAL`` or ``CERT_REQUIRED``). Unreadable files raise
    :class:`ConfigError` naming ``setting``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(alpn)
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{setting}: cannot load cert_file/key_file: {describe(exc)}") from None
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{setting}: cannot load ca_file: {describe(exc)}") from None
        ctx.verify_mode = client_cert
    return ctx


def describe(exc: BaseException) -> str:
    """A short reason for a TLS or file error: the SSL reason, the OS error text, else the type."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
