"""FHIR REST destination (placeholder: owned by the destinations work)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engine.spec.model import Model


class FhirConfig(Model):
    """A FHIR R4 server's REST API."""

    type: Literal["fhir"] = Field(description="Destination kind.")
    name: str = Field(description="Destination name, unique in the channel.")
    base_url: str = Field(description="FHIR base URL, e.g. https://ehr.example.org/fhir/R4.")
