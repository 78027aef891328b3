"""Webhook routes: ``POST /webhooks/{channel}`` and ``GET /v1/webhooks/{channel}/messages/{message_id}``.

The routes only find the channel's endpoint in :class:`WebhookRoutes` (404 when no running channel has
that name) and hand it the request; the endpoint (``engine.sources.webhook.WebhookSource``) authenticates,
reads, commits and answers. Webhook sources register themselves when they start and leave when they stop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.api.problems import Problem

__all__ = ["STATUS_PATH", "WebhookEndpoint", "WebhookRoutes", "routes", "status_location"]

INTAKE_PATH = "/webhooks/{channel}"
STATUS_PATH = "/v1/webhooks/{channel}/messages/{message_id}"


def status_location(channel: str, message_id: str) -> str:
    """The ``Location`` of a message's status."""
    return f"/v1/webhooks/{channel}/messages/{message_id}"


class WebhookEndpoint(Protocol):
    """A running webhook channel."""

    async def receive(self, request: Request) -> Response:
        """Authenticate, read, commit, answer (202 or a problem)."""

    async def status(self, request: Request, message_id: str) -> Response:
        """Authenticate; the message's ids and statuses (no content)."""


class WebhookRoutes:
    """The running webhook channels by name, and what they share (the data folder for generated secrets)."""

    def __init__(self, data_dir: Path, *, mtls: bool = False) -> None:
        self.data_dir = data_dir
        #: whether the server verifies client certificates (http_tls with a ca_file)
        self.mtls = mtls
        self._endpoints: dict[str, WebhookEndpoint] = {}

    def register(self, channel: str, endpoint: WebhookEndpoint) -> None:
        self._endpoints[channel] = endpoint

    def unregister(self, channel: str) -> None:
        self._endpoints.pop(channel, None)

    def get(self, channel: str) -> WebhookEndpoint:
        found = self._endpoints.get(channel)
        if found is None:
            raise Problem(404, "unknown-channel", "no webhook channel of this name is running")
        return found

    def __contains__(self, channel: str) -> bool:
        return channel in self._endpoints


def routes(webhooks: WebhookRoutes) -> list[Route]:
    async def intake(request: Request) -> Response:
        return await webhooks.get(request.path_params["channel"]).receive(request)

    async def status(request: Request) -> Response:
        endpoint = webhooks.get(request.path_params["channel"])
        return await endpoint.status(request, request.path_params["message_id"])

    return [Route(INTAKE_PATH, intake, methods=["POST"]), Route(STATUS_PATH, status, methods=["GET"])]
