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

from engine.errors import ConfigError
from engine.settings import HttpTLSSettings

__all__ = ["ClientCertProtocol", "server_context", "subject_name"]


def server_context(tls: HttpTLSSettings) -> ssl.SSLContext:
    """The server-side context; unreadable files raise :class:`ConfigError` naming the setting."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"http_tls: cannot load cert_file/key_file ({type(exc).__name__})") from None
    if tls.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"http_tls: cannot load ca_file ({type(exc).__name__})") from None
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


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
