"""Destinations: where transformed bundles are delivered.

Each kind is one module: a typed config (``type: Literal[...]``, and ``target()``, the system it writes to)
and one small class with ``send(bundle, *, message_id) -> Result``, ``healthcheck() -> Health`` and
``close()``, registered in :data:`REGISTRY` with one line. The channel's ``destinations`` union is built
from the registry; ``make_destination`` looks the class up; ``classify`` decides every outcome. A kind that
sends the message's stored objects instead of the bundle (DICOM forward, STOW-RS) also has ``send_objects``
(``engine.destinations.stored``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import httpx

from engine.config.model import tagged_union
from engine.destinations.auth import BearerConfig, OAuth2Config
from engine.destinations.base import (
    ConditionalWrites,
    Destination,
    DestinationError,
    DestinationSettings,
    Health,
    Outcome,
    Result,
    RetryPolicy,
    classify,
    parse_retry_after,
)
from engine.destinations.dicom_forward import DicomForwardConfig, DicomForwardDestination
from engine.destinations.fhir import FhirConfig, FhirDestination
from engine.destinations.file import FileConfig, FileDestination
from engine.destinations.http import HttpConfig, HttpDestination
from engine.destinations.stored import SendsObjects, StoredFile
from engine.destinations.stow import StowConfig, StowDestination

#: Every destination kind: its ``type`` → (config model, class). A new kind is one module and one line here.
REGISTRY: dict[str, tuple[type[Any], Callable[..., Destination]]] = {
    "fhir": (FhirConfig, FhirDestination),
    "http": (HttpConfig, HttpDestination),
    "file": (FileConfig, FileDestination),
    "dicom": (DicomForwardConfig, DicomForwardDestination),
    "stow": (StowConfig, StowDestination),
}

if TYPE_CHECKING:
    DestinationConfig: TypeAlias = DestinationSettings
else:
    DestinationConfig = tagged_union(config for config, _ in REGISTRY.values())

__all__ = [
    "REGISTRY",
    "BearerConfig",
    "ConditionalWrites",
    "Destination",
    "DestinationConfig",
    "DestinationError",
    "DicomForwardConfig",
    "DicomForwardDestination",
    "FhirConfig",
    "FhirDestination",
    "FileConfig",
    "FileDestination",
    "Health",
    "HttpConfig",
    "HttpDestination",
    "OAuth2Config",
    "Outcome",
    "Result",
    "RetryPolicy",
    "SendsObjects",
    "StoredFile",
    "StowConfig",
    "StowDestination",
    "classify",
    "make_destination",
    "parse_retry_after",
    "target_key",
]


def make_destination(config: Any, *, transport: httpx.BaseTransport | None = None) -> Destination:
    """Build the destination a config describes (``transport`` replaces the network for HTTP kinds)."""
    _, cls = REGISTRY[config.type]
    return cls(config, transport=transport)


def target_key(config: Any) -> str:
    """A short, stable key of the system a destination writes to: channels delivering to the same EHR share
    it, so their deliveries meet in the same ordering lanes and stale-write guard."""
    return hashlib.sha1(config.target().encode()).hexdigest()[:16]
