"""Sources: where messages come from.

Each kind is one module: a typed config (``type: Literal[...]``) and a ``build(SourceContext) -> Source``,
registered in :data:`REGISTRY` with one line. The channel's ``source`` union is built from the registry
and the runtime looks the builder up; neither names a source. Every source takes messages in through
``engine.ingest.Ingest.accept`` and answers in its own protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from engine.config.model import tagged_union
from engine.sources import dicom, mllp, webhook
from engine.sources.base import Handler, Inbound, Source, SourceContext, SourceSettings

#: Every source kind: its ``type`` → (config model, builder). A new kind is one module and one line here.
REGISTRY: dict[str, tuple[type[Any], Callable[[SourceContext], Source]]] = {
    "mllp": (mllp.MLLPConfig, mllp.build),
    "dicom": (dicom.DicomConfig, dicom.build),
    "webhook": (webhook.WebhookConfig, webhook.build),
}

if TYPE_CHECKING:
    SourceConfig: TypeAlias = SourceSettings
else:
    SourceConfig = tagged_union(config for config, _ in REGISTRY.values())


def build_source(ctx: SourceContext) -> Source:
    """The running source of a channel, built by its kind's builder."""
    _, build = REGISTRY[ctx.channel.source.type]
    return build(ctx)


__all__ = ["REGISTRY", "Handler", "Inbound", "Source", "SourceConfig", "SourceContext", "build_source"]
