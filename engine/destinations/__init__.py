"""Destinations: where transformed bundles are delivered.

Each kind is a typed config plus one small class with ``send(bundle, *, message_id) -> Result`` and
``close()``. ``make_destination`` builds one from its config; ``classify`` decides every outcome.
"""

from __future__ import annotations

import hashlib
import os
from typing import Annotated

import httpx
from pydantic import Field

from engine.destinations.auth import BearerConfig, OAuth2Config
from engine.destinations.base import (
    ConditionalWrites,
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
    "ConditionalWrites",
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
    "target_key",
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


def target_key(config: FhirConfig | HttpConfig | FileConfig) -> str:
    """A short, stable key of the system a destination writes to: channels delivering to the same EHR share
    it, so their deliveries meet in the same ordering lanes and stale-write guard."""
    if isinstance(config, FhirConfig):
        where = "fhir " + config.base_url.rstrip("/")
    elif isinstance(config, HttpConfig):
        where = "http " + config.url
    else:
        where = "file " + os.path.abspath(config.path)
    return hashlib.sha1(where.encode()).hexdigest()[:16]
