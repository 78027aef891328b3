"""The base model for every piece of configuration: strict, described, immutable."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field


class Model(BaseModel):
    """Configuration model: unknown keys are errors, every field carries a description."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def tagged_union(models: Iterable[type[BaseModel]]) -> Any:
    """The union of config models told apart by their ``type`` field (a registry's kinds), for pydantic."""
    return Annotated[Union[tuple(models)], Field(discriminator="type")]  # noqa: UP007
