"""The base model for every piece of configuration: strict, described, immutable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """Configuration model: unknown keys are errors, every field carries a description."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
