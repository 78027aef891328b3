"""Hostile input: caps on what one message may hold, forged segments and broken escape sequences.

Checked before any rule runs, so a message over a cap is refused in time linear in its size (milliseconds
for megabytes), never half-mapped, and the error names the cap and where it was exceeded — never a value:

======================  =====================================================================  ==========
cap (``Limits``)        refused when                                                           HL7 code
======================  =====================================================================  ==========
``max_bytes``           the message is longer (bytes at the source, characters once decoded)   207
``max_segments``        it has more segments                                                   207
``max_repetitions``     one field has more repetitions                                         207
``max_components``      one field repetition has more components, or one component more        207
                        sub-components
``max_batch_messages``  an HL7 batch (FHS/BHS) holds more messages: it is refused whole      207
======================  =====================================================================  ==========

The caps are settable: ``limits:`` in ``config/engine.yaml`` (the engine's, :class:`Limits`) and ``limits:``
in a channel file (:class:`LimitsOverride`: any of them, each at most the engine's, since the worker holds
every message to the engine's caps whatever its channel). They are enforced twice:

* at the source, with the channel's caps (:func:`check_caps`, called by the HL7 acceptor before the
  commit): an over-cap message is stored with its error and answered AR naming the cap. ``max_bytes`` is
  counted in bytes as received there (a message within it in bytes is within it in characters), and MLLP
  stops keeping a frame past it while still reading it (``engine/sources/mllp.py``);
* at transform, with the engine's caps (:func:`check_text`, :func:`check_message`), for every message
  whatever its path into the worker (replays, ``interlink test``).

and, whatever the caps:

* **a forged segment** (:func:`check_text`): a message whose segments end with one terminator (CR, LF or
  CR LF, as its MSH line ends) and that also holds another one. A raw LF inside a CR-terminated field would
  otherwise start a new segment — ``…|text\\nPID|1||OTHER-PATIENT…`` — that the reader (which accepts all
  three terminators) would take for a real one. HL7 100 naming the segment that holds it;
* **a broken escape sequence** (:func:`check_escapes`): an escape character without its closing one, or a
  sequence that is not HL7's (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh…\\ \\Zxx\\ \\H\\ \\N\\ \\.br\\ \\.sp\\
  \\.in\\ \\.ti\\ \\.sk\\ \\.ce\\ \\.fi\\ \\.nf\\``, ``\\Cxxyy\\``, ``\\Mxxyyzz\\``). HL7 102 naming the field
  (``OBX-5``).

``MappingSet.transform`` applies :func:`check_message` (caps, escapes) to every message;
``MappingSet.read`` (decode + :func:`check_text` + parse) is the reader that also sees the terminators.
"""

from __future__ import annotations

import re

from pydantic import Field

from engine.config.model import Model
from engine.errors import TransformError
from engine.hl7v2 import Delimiters, Message, split_segments

_ESCAPE = re.compile(
    r"^(?:[FSTRE]|X(?:[0-9A-Fa-f]{2})+|Z[^\\]*|[HN]|\.(?:br|sp\s*\d*|in\s*[+-]?\d*|ti\s*[+-]?\d*|sk\s*\d*|ce|fi|nf)"
    r"|C[0-9A-Fa-f]{4}|M[0-9A-Fa-f]{4}(?:[0-9A-Fa-f]{2})?)$"
)


class Limits(Model):
    """Caps on one message (see the module docstring); over a cap the message is refused, naming the cap."""

    max_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1,
        description="Longest message: bytes as received at the source, characters at the worker.",
    )
    max_segments: int = Field(10_000, ge=1, description="Most segments in one message.")
    max_repetitions: int = Field(1_000, ge=1, description="Most repetitions of one field.")
    max_components: int = Field(
        100, ge=1, description="Most components in one field repetition (and sub-components in one component)."
    )
    max_batch_messages: int = Field(
        1_000, ge=0, description="Most messages in one HL7 batch (FHS/BHS); a larger batch is refused whole."
    )

    def lowered(self, override: LimitsOverride | None) -> Limits:
        """These caps with a channel's ``limits:`` applied; ValueError naming a cap the override would raise."""
        if override is None:
            return self
        changes = override.model_dump(exclude_none=True)
        raised = sorted(k for k, v in changes.items() if v > getattr(self, k))
        if raised:
            caps = ", ".join(f"{k} = {changes[k]} (engine: {getattr(self, k)})" for k in raised)
            raise ValueError(f"a channel may lower the engine's limits, not raise them: {caps}; "
                             "raise them under `limits:` in the engine settings")  # fmt: skip
        return self.model_copy(update=changes)


class LimitsOverride(Model):
    """A channel's own caps: any of the engine's :class:`Limits`, each at most the engine's value."""

    max_bytes: int | None = Field(
        None, ge=1, description="Longest message (bytes at the source); default: the engine's."
    )
    max_segments: int | None = Field(None, ge=1, description="Most segments in one message; default: the engine's.")
    max_repetitions: int | None = Field(None, ge=1, description="Most repetitions of one field; default: the engine's.")
    max_components: int | None = Field(
        None, ge=1, description="Most components in one field repetition; default: the engine's."
    )
    max_batch_messages: int | None = Field(
        None, ge=0, description="Most messages in one HL7 batch (FHS/BHS); default: the engine's."
    )


DEFAULT = Limits()


def _over(cap: str, value: int, where: str) -> TransformError:
    return TransformError(f"over the cap {cap} = {value}", field=where, rule=f"limits.{cap}", code="207")


def check_text(text: str, limits: Limits = DEFAULT) -> None:
    """Size and terminators of the decoded text, before it is split into segments."""
    if len(text) > limits.max_bytes:
        raise _over("max_bytes", limits.max_bytes, "MSH")
    body = text.lstrip("\ufeff\r\n \t").rstrip("\r\n \t")  # a file's trailing newline ends the last segment
    cr, lf = body.find("\r"), body.find("\n")
    if cr == -1 or lf == -1:
        return  # one kind of terminator only
    if lf == cr + 1 and "\r" not in body.replace("\r\n", "") and "\n" not in body.replace("\r\n", ""):
        return  # CR LF throughout
    # Name the segment holding the stray terminator: the one in which the first other kind appears.
    term = "\r\n" if lf == cr + 1 else ("\r" if cr < lf else "\n")
    segments = body.split(term)
    for n, seg in enumerate(segments, start=1):
        if "\r" in seg or "\n" in seg:
            name = seg[:3] if seg[:3].isalnum() else "segment"
            raise TransformError(
                f"segment {n} ({name}) holds a segment terminator other than the message's own: a forged segment",
                field=name,
                rule="limits.terminators",
                code="100",
            )


def check_caps(text: str, d: Delimiters, limits: Limits = DEFAULT) -> None:
    """Segment, repetition and component caps of undecoded-or-decoded message text, without parsing it (the
    source's check; ``max_bytes`` is the caller's, on the bytes). Counting separators in the whole text costs
    about a microsecond per KiB: only a text whose counts reach a cap is split, and only the segments whose
    counts reach one are looked at field by field."""
    max_rep, max_comp = limits.max_repetitions, limits.max_components
    rep, comp, sub = d.repetition, d.component, d.subcomponent
    terms = text.count("\r") + text.count("\n")
    over_rep, over_comp = text.count(rep) >= max_rep, text.count(comp) >= max_comp or text.count(sub) >= max_comp
    if terms < limits.max_segments and not over_rep and not over_comp:
        return
    segments = split_segments(text)
    if len(segments) > limits.max_segments:
        raise _over("max_segments", limits.max_segments, "MSH")
    if not (over_rep or over_comp):
        return
    for seg in segments:
        if seg.count(rep) >= max_rep or seg.count(comp) >= max_comp or seg.count(sub) >= max_comp:
            parts = seg.split(d.field)
            name = parts[0]
            fields, first = (["MSH", d.field, *parts[1:]], 3) if name == "MSH" else (parts, 1)
            _caps(name, fields, first, d, limits)


def check_message(message: Message, limits: Limits = DEFAULT) -> None:
    """Segment, repetition and component caps, then escape sequences, of a parsed message."""
    segs = message.segments
    if len(segs) > limits.max_segments:
        raise _over("max_segments", limits.max_segments, "MSH")
    d = message.delimiters
    fs, rep, comp, sub, esc = d.field, d.repetition, d.component, d.subcomponent, d.escape
    max_rep, max_comp = limits.max_repetitions, limits.max_components
    size = 0
    for seg in segs:
        first = 3 if seg.name == "MSH" else 1  # MSH-1/2 are the delimiters themselves
        # Counting separators in the joined segment costs about a microsecond; only a segment whose counts
        # reach a cap, or that holds an escape character, is looked at field by field.
        text = fs.join(seg.fields[first:])
        size += len(text)
        if text.count(rep) >= max_rep or text.count(comp) >= max_comp or text.count(sub) >= max_comp:
            _caps(seg.name, seg.fields, first, d, limits)
        if esc in text:
            for n in range(first, len(seg.fields)):
                if esc in seg.fields[n]:
                    check_escapes(seg.fields[n], message, f"{seg.name}-{n}")
    if size > limits.max_bytes:
        raise _over("max_bytes", limits.max_bytes, "MSH")


def _caps(name: str, fields: list[str], first: int, d: Delimiters, limits: Limits) -> None:
    rep, comp, sub = d.repetition, d.component, d.subcomponent
    max_rep, max_comp = limits.max_repetitions, limits.max_components
    for n in range(first, len(fields)):
        f = fields[n]
        if f.count(rep) >= max_rep:
            raise _over("max_repetitions", max_rep, f"{name}-{n}")
        if f.count(comp) >= max_comp or f.count(sub) >= max_comp:
            for r in f.split(rep):
                if r.count(comp) >= max_comp or any(c.count(sub) >= max_comp for c in r.split(comp)):
                    raise _over("max_components", max_comp, f"{name}-{n}")


def check_escapes(value: str, message: Message, where: str) -> None:
    """Every escape sequence in a raw field value is closed and is one HL7 defines; else HL7 102."""
    esc = message.delimiters.escape
    i = value.find(esc)
    while i != -1:
        j = value.find(esc, i + 1)
        if j == -1:
            raise TransformError("an escape sequence is not terminated", field=where, rule="limits.escapes", code="102")
        if not _ESCAPE.match(value[i + 1 : j]):
            raise TransformError(
                "an escape sequence is not one HL7 defines", field=where, rule="limits.escapes", code="102"
            )
        i = value.find(esc, j + 1)
