"""TLS for the HTTP server: the server's SSL context, and the client certificate handed to the app.

uvicorn does not put the peer's certificate in the ASGI scope; :class:`ClientCertProtocol` (its httptools
protocol, extended) adds the ASGI TLS extension to each request's scope, read once per connection:
``scope["extensions"]["tls"] = {"client_cert_name": <RFC 4514 subject or None>,
"client_cert_sha256": <hex fingerprint of the DER certificate or None>}``. A certificate is only there when
the handshake verified it against ``ca_file`` (the context asks with ``CERT_OPTIONAL``), so a channel that
requires mutual TLS only has to look for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from engine.config import tls as config_tls
from engine.settings import HttpTLSSettings

__all__ = ["ClientCertProtocol", "server_context", "subject_name"]


def server_context(tls: HttpTLSSettings) -> ssl.SSLContext:
    """The server-side context; unreadable files raise :class:`ConfigError` naming the setting."""
    return config_tls.server_context(
        tls.cert_file,
        tls.key_file,
        tls.ca_file,
        tls.min_version,
        client_cert=ssl.CERT_OPTIONAL,
        setting="http_tls",
        alpn=["http/1.1"],
    )


def _client_cert(transport: asyncio.Transport) -> dict[str, Any]:
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return {"client_cert_name": None, "client_cert_sha256": None}
    # The decoded form is only given for a certificate the handshake verified (CERT_OPTIONAL + ca_file).
    decoded = ssl_object.getpeercert() or {}
    return {"client_cert_name": subject_name(decoded.get("subject", ())) or None,
            "client_cert_sha256": hashlib.sha256(der).hexdigest()}  # fmt: skip


_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
          "localityName": "L", "stateOrProvinceName": "ST", "emailAddress": "emailAddress"}  # fmt: skip


def subject_name(subject: Any) -> str:
    """An RFC 4514-style name (most specific first) of the subject ``ssl.getpeercert()`` decodes."""
    parts = []
    for rdn in reversed(subject):
        parts.append("+".join(f"{_SHORT.get(k, k)}={_escape(v)}" for k, v in rdn))
    return ",".join(parts)


def _escape(value: str) -> str:
    return "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)


class ClientCertProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the verified client certificate in each request's scope."""

    _tls: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._tls = _client_cert(transport) if self.scheme == "https" else None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            self.scope["extensions"] = {"tls": self._tls}  # type: ignore[dict-item]  # ASGI's TLS extension
