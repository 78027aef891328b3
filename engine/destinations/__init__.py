"""Destinations: where transformed bundles are delivered.

Each kind is a typed config plus one small class with ``send(bundle, *, message_id) -> Result`` and
``close()``. ``make_destination`` builds one from its config; ``classify`` decides every outcome.
"""

from __future__ import annotations

from typing import Annotated

import httpx
from pydantic import Field

from engine.destinations.auth import BearerConfig, OAuth2Config
from engine.destinations.base import (
    Destination,
    DestinationError,
    Outcome,
    Result,
    RetryPolicy,
    classify,
    parse_retry_after,
)
from engine.destinations.fhir import FhirConfig, FhirDestination
from engine.destinations.file import FileConfig, FileDestination
from engine.destinations.http import HttpConfig, HttpDestination

DestinationConfig = Annotated[FhirConfig | HttpConfig | FileConfig, Field(discriminator="type")]

__all__ = [
    "BearerConfig",
    "Destination",
    "DestinationConfig",
    "DestinationError",
    "FhirConfig",
    "FhirDestination",
    "FileConfig",
    "FileDestination",
    "HttpConfig",
    "HttpDestination",
    "OAuth2Config",
    "Outcome",
    "Result",
    "RetryPolicy",
    "classify",
    "make_destination",
    "parse_retry_after",
]


def make_destination(
    config: FhirConfig | HttpConfig | FileConfig, *, transport: httpx.BaseTransport | None = None
) -> Destination:
    """Build the destination a config describes (``transport`` replaces the network for HTTP kinds)."""
    if isinstance(config, FhirConfig):
        return FhirDestination(config, transport=transport)
    if isinstance(config, HttpConfig):
        return HttpDestination(config, transport=transport)
    if isinstance(config, FileConfig):
        return FileDestination(config)
    raise TypeError(f"no destination for {type(config).__name__}")
