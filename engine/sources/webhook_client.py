"""A small webhook sender (``interlink send --channel <webhook channel>``): POST files to a webhook channel of
the running engine, signed with the channel's own secret when it wants Standard Webhooks signatures.

The media type comes from the file: JSON with a ``resourceType`` is ``application/fhir+json``, other JSON
``application/json``, anything else ``application/hl7-v2`` (line ends made CR, as HL7 wants). Each answer
is ``(status, text)``: the message id for a 202, else the problem's ``detail``; ``on_answer(index, status,
text)`` is told each as it arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import orjson

from engine.errors import ConfigError
from engine.signing import parse_secret, signed_headers
from engine.sources.http_auth import NoAuth, StandardWebhooksAuth, read_values

if TYPE_CHECKING:
    from engine.config.channel import Channel
    from engine.settings import Settings

__all__ = ["media_type", "post_files", "url_of"]


def media_type(raw: bytes) -> tuple[str, bytes]:
    """The Content-Type of a file's bytes, and the bytes to send."""
    body = raw.lstrip(b"\xef\xbb\xbf")
    if body.lstrip()[:1] in (b"{", b"["):
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict) and "resourceType" in data:
            return "application/fhir+json", body
        return "application/json", body
    return "application/hl7-v2", body.replace(b"\r\n", b"\r").replace(b"\n", b"\r")


def url_of(settings: Settings, channel: str) -> str:
    host = settings.http_host if settings.http_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if settings.http_tls else "http"
    return f"{scheme}://{host}:{settings.http_port}/webhooks/{channel}"


def post_files(
    settings: Settings,
    channel: Channel,
    files: list[Path],
    *,
    timeout_s: float = 30,
    on_answer: Callable[[int, int, str], None] | None = None,
) -> list[tuple[int, str]]:
    """POST each file; ConfigError when the channel's secret cannot be found, OSError for an unreadable file."""
    auth = channel.source.auth  # type: ignore[attr-defined]
    keys: list[bytes] = []
    if isinstance(auth, StandardWebhooksAuth):
        try:
            keys = [
                parse_secret(v) for v in read_values(auth.secret_env, auth.secret_file, settings.data_dir, "secret")
            ]
        except ValueError as exc:
            raise ConfigError(f"channel {channel.name}: {exc}") from None
    elif not isinstance(auth, NoAuth):
        raise ConfigError(f"channel {channel.name}: send signs for standard_webhooks channels only ({auth.type})")
    verify: object = True
    if settings.http_tls is not None:
        import ssl

        verify = ssl.create_default_context(cafile=str(settings.http_tls.cert_file))
    out: list[tuple[int, str]] = []
    with httpx.Client(timeout=timeout_s, verify=verify) as client:  # type: ignore[arg-type]
        for f in files:
            content_type, body = media_type(f.read_bytes())
            headers = {"content-type": content_type, **(signed_headers(keys[:1], body) if keys else {})}
            try:
                r = client.post(url_of(settings, channel.name), content=body, headers=headers)
            except httpx.HTTPError as exc:
                raise OSError(f"cannot send to {url_of(settings, channel.name)}: {type(exc).__name__}") from None
            try:
                answer = r.json()
            except ValueError:
                answer = {}
            text = answer.get("message_id", "") if r.status_code == 202 else answer.get("detail", r.reason_phrase)
            out.append((r.status_code, str(text)))
            if on_answer is not None:
                on_answer(len(out) - 1, r.status_code, str(text))
    return out
