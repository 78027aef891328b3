"""Replies to senders: HL7 v2 acknowledgements.

Public API:

``hl7_ack(header, code, text="", error=None, *, now=None) -> str``
    An ACK for a message whose MSH could be read. ``code`` is ``AA``/``AE``/``AR``; in enhanced mode
    (MSH-15 or MSH-16 valued) the accept codes ``CA``/``CE``/``CR`` are sent instead. The reply uses the
    inbound delimiters, swaps sending and receiving application/facility, copies MSH-11, MSH-12 (default
    ``2.5.1``) and MSH-18, answers MSH-10 in MSA-2 and, when ``error`` is given, adds an ERR segment
    (location, table 0357 code, severity ``E``, user message).

``hl7_nak_unparsed(text, error, *, now=None) -> str``
    A NAK for input whose MSH cannot be read (``text`` is ``None`` when it could not even be decoded):
    default delimiters, ``AR`` when ``error.reject`` else ``AE``, MSH-10 salvaged into MSA-2 when it can
    be found.

``hl7_batch_reply(file_header, batches, delimiters, *, now=None) -> str``
    The acknowledgement of an HL7 batch (chapter 2's batch protocol): an FHS when the inbound file had one,
    then for each inbound batch a BHS, its ACK messages and a BTS whose BTS-1 counts them, then an FTS
    (FTS-1: the batches). FHS/BHS swap sending and receiving application/facility of the inbound header,
    get a control id of their own in -11 and carry the inbound -11 in -12 (reference control id). An empty
    batch of ACKs says every message was accepted (the standard's "acknowledge errors only").

``hl7_batch_refusal(header, control_id, error, *, now=None) -> str``
    The one ACK that refuses a whole batch: MSA-2 is the batch's control id (BHS-11, else FHS-11),
    ``AR`` when ``error.reject`` else ``AE``, with the ERR naming the place (``BTS-1``, a cap). Addressed
    from the batch's first MSH when it was readable (``header``), else with default delimiters.

``reply_codec(declared, default) -> str``
    The codec a reply is encoded in: the sender's MSH-18 when known and :func:`byte_compatible`, else
    ``default`` (the channel charset) when byte-compatible, else ``ascii``. MLLP frames with single bytes
    (``0x0B`` … ``0x1C 0x0D``) and senders read the reply's MSH as ASCII, so a reply is never UTF-16/32.

``byte_compatible(codec) -> bool``
    Whether a codec writes ASCII text as the same ASCII bytes (false for UTF-16/32 and unknown codecs).

Both ACK builders return text with segments joined by ``\\r``; the caller encodes it with
:func:`reply_codec` and the source frames it. An inbound MSH-18 naming a charset that is not
byte-compatible is not copied into the ACK (an empty MSH-18 means ASCII). Texts come from the engine's
own error messages, which name fields and rules, never values: nothing from the message body is echoed
back except the MSH fields an ACK must carry.
"""

from __future__ import annotations

import codecs
import functools
import itertools
import re
import secrets
import time
from collections.abc import Sequence
from datetime import datetime

from engine.errors import HL7Error, TransformError
from engine.hl7v2 import CHARSETS, DEFAULT_DELIMITERS, Delimiters, Header

__all__ = ["byte_compatible", "hl7_ack", "hl7_batch_refusal", "hl7_batch_reply", "hl7_nak_unparsed", "reply_codec"]

DEFAULT_VERSION = "2.5.1"

#: HL7 table 0357 (message error condition codes) display texts.
ERROR_CODES: dict[str, str] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

_ENHANCED = {"AA": "CA", "AE": "CE", "AR": "CR", "CA": "CA", "CE": "CE", "CR": "CR"}
_ORIGINAL = {"AA": "AA", "AE": "AE", "AR": "AR", "CA": "AA", "CE": "AE", "CR": "AR"}

# Control ids: a random per-process prefix and a counter, 20 characters (fits MSH-10 in every version).
_ID_PREFIX = secrets.token_hex(4).upper()
_ID_COUNTER = itertools.count(1)

# An HL7 path as the mapping language writes it: PID-3, PID-5[2].1, OBX-5.1.2
_PATH = re.compile(r"^([A-Z][A-Z0-9]{2})-(\d+)(?:\[(\d+|\*)\])?(?:\.(\d+))?(?:\.(\d+))?$")


# An MSH segment at the start of the text or of a line (the first 4 KiB are searched).
_MSH_LINE = re.compile(r"(?:^[\ufeff \t]*|(?<=[\r\n]))(MSH[^\r\n]{2,})")


# Every byte value MLLP framing and an ACK's MSH use: a byte-compatible codec writes them unchanged.
_PROBE = "".join(map(chr, range(128)))


@functools.lru_cache(maxsize=64)
def byte_compatible(codec: str) -> bool:
    """Whether ``codec`` writes ASCII as ASCII, one byte per character (see the module docstring)."""
    try:
        codecs.lookup(codec)
        return _PROBE.encode(codec) == _PROBE.encode("ascii")
    except (LookupError, UnicodeError):
        return False


def reply_codec(declared: str, default: str) -> str:
    """The codec for a reply to a message whose MSH-18 (first repetition) is ``declared``."""
    codec = CHARSETS.get(declared.strip().upper()) if declared else None
    if codec is not None and byte_compatible(codec):
        return codec
    return default if byte_compatible(default) else "ascii"


def _control_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012d}"


_clock: tuple[int, str] = (0, "")  # (epoch second, MSH-7 text): formatting costs more than an ACK


def _timestamp(now: datetime | None) -> str:
    global _clock
    if now is None:
        second = int(time.time())
        if _clock[0] != second:
            _clock = (second, datetime.fromtimestamp(second).astimezone().strftime("%Y%m%d%H%M%S%z"))
        return _clock[1]
    if now.tzinfo is None:
        now = now.astimezone()  # naive: local time
    return now.strftime("%Y%m%d%H%M%S%z")


def _escape(value: str, d: Delimiters) -> str:
    """Escape delimiters and line breaks so ``value`` is one HL7 text value."""
    e = d.escape
    if e in value:
        value = value.replace(e, f"{e}E{e}")
    for ch, seq in (
        (d.field, "F"),
        (d.component, "S"),
        (d.subcomponent, "T"),
        (d.repetition, "R"),
        (d.truncation, "P"),
    ):
        if ch and ch in value:
            value = value.replace(ch, f"{e}{seq}{e}")
    if "\r" in value or "\n" in value:
        value = value.replace("\r", f"{e}X0D{e}").replace("\n", f"{e}X0A{e}")
    return value


def _error_location(error: HL7Error | TransformError, d: Delimiters) -> str:
    """ERR-2 (ERL) from an HL7Error location (``PID^1^7``) or a TransformError field (``PID-7``)."""
    if isinstance(error, TransformError):
        m = _PATH.match(error.field)
        if m is None:
            return ""
        seg, fld, rep, comp, sub = m.groups()
        parts = [seg, "1", fld]
        if comp:
            parts += ["1" if rep in (None, "*") else rep, comp]
            if sub:
                parts.append(sub)
    else:
        parts = error.location.split("^") if error.location else []
    return d.component.join(_escape(p, d) for p in parts)


def _error_text(error: HL7Error | TransformError) -> str:
    if isinstance(error, TransformError) and error.rule:
        return f"{error.message} (rule {error.rule})"
    return error.message


def _err_segment(error: HL7Error | TransformError, d: Delimiters) -> str:
    code = error.code or "207"
    cwe = d.component.join((_escape(code, d), _escape(ERROR_CODES.get(code, ""), d), "HL70357"))
    fields = ["ERR", "", _error_location(error, d), cwe, "E", "", "", "", _escape(_error_text(error), d)]
    return d.field.join(fields)


def _msh(
    d: Delimiters,
    *,
    sending: tuple[str, str],
    receiving: tuple[str, str],
    now: datetime | None,
    message_type: str,
    processing_id: str,
    version: str,
    charset: str,
) -> str:
    head, mid, tail = _msh_parts(d, sending, receiving, message_type, processing_id, version, charset)
    return f"{head}{_timestamp(now)}{mid}{_control_id()}{tail}"


def _msh_parts(
    d: Delimiters,
    sending: tuple[str, str],
    receiving: tuple[str, str],
    message_type: str,
    processing_id: str,
    version: str,
    charset: str,
) -> tuple[str, str, str]:
    """A reply's MSH around its two fields of its own: up to MSH-7 (the time), MSH-8 to MSH-10 (the control
    id), and what follows MSH-10."""
    fs = d.field
    head = fs.join(("MSH" + fs + d.encoding_characters, sending[0], sending[1], receiving[0], receiving[1], ""))
    tail = ["", processing_id or "P", version or DEFAULT_VERSION]
    if charset:
        tail += ["", "", "", "", "", charset]
    return head, fs.join(("", "", message_type, "")), fs.join(tail)


#: The plain ACK (no text, no error) of a sender's MSH, around its time, control id and MSA-2: the MSH fields
#: it answers (MSH-1 to MSH-6, MSH-9, MSH-11, MSH-12, MSH-18) and the code are the key. Measured with
#: bench/accept_instructions.py: 28k instructions per ACK built field by field, 15k from the template.
_ACK_TEMPLATES: dict[tuple[object, ...], tuple[str, str, str]] = {}
_ACK_TEMPLATES_MAX = 1024  # senders x message types x codes; cleared when full


def hl7_ack(
    header: Header,
    code: str,
    text: str = "",
    error: HL7Error | TransformError | None = None,
    *,
    now: datetime | None = None,
) -> str:
    """Acknowledge the message whose MSH is ``header`` (see the module docstring)."""
    try:
        ack_code = (_ENHANCED if header.enhanced_mode else _ORIGINAL)[code]
    except KeyError:
        raise ValueError(f"acknowledgement code must be AA, AE or AR, not {code!r}") from None
    f = header.fields
    if now is None and not text and error is None:  # the common reply: from its template
        key = (ack_code, f[1:7], f[9:10], f[11:13], f[18:19])
        parts = _ACK_TEMPLATES.get(key)
        if parts is None:
            if len(_ACK_TEMPLATES) >= _ACK_TEMPLATES_MAX:
                _ACK_TEMPLATES.clear()
            head, mid, tail = _ack_msh(header)
            parts = _ACK_TEMPLATES[key] = (
                head,
                mid,
                f"{tail}\rMSA{header.delimiters.field}{ack_code}{header.delimiters.field}",
            )
        return f"{parts[0]}{_timestamp(None)}{parts[1]}{_control_id()}{parts[2]}{f[10] if len(f) > 10 else ''}"
    d = header.delimiters
    head, mid, tail = _ack_msh(header)
    msh = f"{head}{_timestamp(now)}{mid}{_control_id()}{tail}"

    def raw(i: int) -> str:
        return f[i] if i < len(f) else ""

    if not text and error is not None:
        text = _error_text(error)
    msa = d.field.join(("MSA", ack_code, raw(10), _escape(text, d)) if text else ("MSA", ack_code, raw(10)))
    if error is None:
        return f"{msh}\r{msa}"
    return f"{msh}\r{msa}\r{_err_segment(error, d)}"


def _ack_msh(header: Header) -> tuple[str, str, str]:
    """The parts (see :func:`_msh_parts`) of the MSH of an ACK to ``header``: sending and receiving swapped."""
    d, f = header.delimiters, header.fields

    def raw(i: int) -> str:
        return f[i] if i < len(f) else ""

    return _msh_parts(
        d,
        sending=(raw(5), raw(6)),
        receiving=(raw(3), raw(4)),
        message_type=d.component.join(("ACK", header.message_type.partition("^")[2], "ACK")),
        processing_id=raw(11),
        version=raw(12),
        charset=raw(18) if _copyable(header.charset) else "",
    )


def _copyable(charset: str) -> bool:
    """An inbound MSH-18 the ACK may repeat: empty, unknown (kept as sent), or byte-compatible."""
    codec = CHARSETS.get(charset.strip().upper())
    return codec is None or byte_compatible(codec)


def _salvage_msh(text: str) -> tuple[str, str, str]:
    """Best-effort MSH-10, MSH-11 and MSH-12 (first components) from an unreadable MSH."""
    m = _MSH_LINE.search(text, 0, 4096)
    if m is None:
        return "", "", ""
    line = m.group(1)
    fs = line[3]
    if fs.isalnum() or fs.isspace():
        return "", "", ""
    parts = line.split(fs)  # parts[k] is MSH-(k+1) for k >= 1
    enc = parts[1] if len(parts) > 1 else ""
    comp = enc[0] if enc and not enc[0].isalnum() and not enc[0].isspace() else ""

    def field(n: int) -> str:
        v = parts[n - 1] if len(parts) > n - 1 else ""
        if comp:
            v = v.split(comp, 1)[0]
        return v[:199]

    return field(10), field(11)[:3], field(12)[:20]


def hl7_nak_unparsed(text: str | None, error: HL7Error, *, now: datetime | None = None) -> str:
    """NAK input whose MSH cannot be read (see the module docstring)."""
    d = DEFAULT_DELIMITERS
    control_id, processing_id, version = _salvage_msh(text) if text else ("", "", "")
    msh = _msh(
        d,
        sending=("", ""),
        receiving=("", ""),
        now=now,
        message_type="ACK",
        processing_id=_escape(processing_id, d),
        version=_escape(version, d),
        charset="",
    )
    code = "AR" if error.reject else "AE"
    msa = d.field.join(("MSA", code, _escape(control_id, d), _escape(error.message, d)))
    return f"{msh}\r{msa}\r{_err_segment(error, d)}"


def _envelope(name: str, inbound: Sequence[str] | None, d: Delimiters, now: datetime | None) -> str:
    """A reply FHS/BHS for the inbound one (``inbound[i]`` is its field i): swapped, with a reference id."""
    f = inbound or ()

    def raw(i: int) -> str:
        return f[i] if i < len(f) else ""

    fields = [name + d.field + d.encoding_characters, raw(5), raw(6), raw(3), raw(4), _timestamp(now), "", "", "",
              _control_id(), raw(11)]  # fmt: skip
    return d.field.join(fields).rstrip(d.field)


def hl7_batch_reply(
    file_header: Sequence[str] | None,
    batches: Sequence[tuple[Sequence[str] | None, Sequence[str]]],
    d: Delimiters = DEFAULT_DELIMITERS,
    *,
    now: datetime | None = None,
) -> str:
    """Acknowledge an HL7 batch (see the module docstring): ``batches`` pairs each inbound BHS (None when
    the batch had none) with the ACK texts sent for its messages."""
    out: list[str] = []
    if file_header is not None:
        out.append(_envelope("FHS", file_header, d, now))
    for header, acks in batches:
        out.append(_envelope("BHS", header, d, now))
        out.extend(acks)
        out.append(f"BTS{d.field}{len(acks)}")
    if file_header is not None:
        out.append(f"FTS{d.field}{len(batches)}")
    return "\r".join(out)


def hl7_batch_refusal(header: Header | None, control_id: str, error: HL7Error, *, now: datetime | None = None) -> str:
    """The ACK refusing a whole batch (see the module docstring)."""
    code = "AR" if error.reject else "AE"
    if header is not None:
        d = header.delimiters
        msh = hl7_ack(header, code, now=now).split("\r", 1)[0]
        mode = _ENHANCED if header.enhanced_mode else _ORIGINAL
    else:
        d = DEFAULT_DELIMITERS
        msh = _msh(d, sending=("", ""), receiving=("", ""), now=now, message_type="ACK", processing_id="",
                   version="", charset="")  # fmt: skip
        mode = _ORIGINAL
    msa = d.field.join(("MSA", mode[code], _escape(control_id, d), _escape(error.message, d)))
    return f"{msh}\r{msa}\r{_err_segment(error, d)}"
