"""NDJSON file destination (placeholder: owned by the destinations work)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engine.spec.model import Model


class FileConfig(Model):
    """Append each bundle as one JSON line to a file."""

    type: Literal["file"] = Field(description="Destination kind.")
    name: str = Field(description="Destination name, unique in the channel.")
    path: str = Field(description="NDJSON file to append to (directories are created).")
