"""MLLP source (placeholder: owned by the MLLP work)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engine.spec.model import Model


class MLLPConfig(Model):
    """An MLLP (HL7 v2 over TCP) listener."""

    type: Literal["mllp"] = Field(description="Source kind.")
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(description="TCP port to listen on.", ge=1, le=65535)
