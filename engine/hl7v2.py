"""A lean HL7 v2 tokenizer: the one reader of HL7 v2 text in the engine.

Sources use :func:`read_header` to answer a sender (ACK needs only MSH); the transform uses
:class:`Message` to walk segments, fields, repetitions, components and sub-components lazily.
It is ~40x faster than python-hl7 and ~1000x faster than hl7apy on an ORU^R01 (see bench/), which is
why neither is on the hot path.

Positions follow HL7 numbering: ``MSH-1`` is the field separator, ``MSH-2`` the encoding characters,
``PID-3`` the third field after the segment name. Component and sub-component numbers start at 1.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from engine.errors import EncodingError, HL7Error

BOM = "\ufeff"

#: MSH-18 character set names (HL7 table 0211) mapped to Python codecs.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
    "UNICODE UTF-16": "utf-16",
    "UNICODE UTF-32": "utf-32",
    "ISO IR6": "ascii",
    "ISO IR100": "latin-1",
    "ISO IR192": "utf-8",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "CNS 11643-1992": "big5",
    "BIG-5": "big5",
    "WINDOWS-1252": "cp1252",
}


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


DEFAULT_DELIMITERS = Delimiters()


@dataclass(frozen=True, slots=True)
class Header:
    """What a source needs from MSH to reply: read without parsing the rest of the message."""

    delimiters: Delimiters
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str  # MSH-9 as "ORU^R01" (code^trigger), structure dropped
    structure: str  # MSH-9.3 when sent
    control_id: str  # MSH-10
    processing_id: str  # MSH-11
    version: str  # MSH-12
    accept_ack_type: str  # MSH-15 (enhanced mode when MSH-15 or MSH-16 is valued)
    application_ack_type: str  # MSH-16
    charset: str  # MSH-18 first repetition, as sent
    fields: tuple[str, ...]  # raw MSH fields; fields[i] is MSH-i for i >= 2, fields[0] == "MSH"

    @property
    def enhanced_mode(self) -> bool:
        return bool(self.accept_ack_type or self.application_ack_type)

    @property
    def sender(self) -> str:
        """Sending application and facility, the key under which MSH-10 must be unique."""
        return f"{self.sending_application}|{self.sending_facility}"


def split_segments(text: str) -> list[str]:
    """Split on any of ``\\r``, ``\\n``, ``\\r\\n``; drop a leading BOM and empty lines."""
    if text.startswith(BOM):
        text = text[1:]
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return [s for s in text.split("\r") if s.strip()]


def _delimiters(msh: str) -> Delimiters:
    if len(msh) < 8 or not msh.startswith("MSH"):
        raise HL7Error("message does not start with an MSH segment", code="100", location="MSH", reject=True)
    fs = msh[3]
    if fs.isalnum() or fs in " \r\n":
        raise HL7Error("invalid field separator in MSH-1", code="102", location="MSH^1^1", reject=True)
    end = msh.find(fs, 4)
    enc = msh[4:end] if end != -1 else msh[4:]
    if len(enc) not in (4, 5) or len(set(enc + fs)) != len(enc) + 1 or any(c.isalnum() or c == " " for c in enc):
        raise HL7Error("invalid encoding characters in MSH-2", code="102", location="MSH^1^2", reject=True)
    return Delimiters(fs, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) == 5 else "")


def _first_component(value: str, d: Delimiters) -> str:
    return value.split(d.repetition, 1)[0].split(d.component, 1)[0]


def _first_line(text: str) -> str:
    """The message's first segment (its MSH), past a BOM and leading blank lines, up to CR or LF."""
    if text.startswith(BOM):
        text = text[1:]
    text = text.lstrip("\r\n \t")
    end = len(text)
    for sep in ("\r", "\n"):
        i = text.find(sep)
        if i != -1 and i < end:
            end = i
    return text[:end]


def read_header(text: str) -> Header:
    """Read MSH from message text. Raises :class:`HL7Error` when MSH is missing or malformed."""
    msh = _first_line(text)
    d = _delimiters(msh)
    parts = msh.split(d.field)
    # parts[0]="MSH", parts[1]=encoding chars (MSH-2). Re-index so fields[i] == MSH-i.
    fields = ("MSH", d.field, *parts[1:])

    def f(i: int) -> str:
        return fields[i] if i < len(fields) else ""

    msh9 = f(9).split(d.component)
    code = msh9[0] if msh9 else ""
    trigger = msh9[1] if len(msh9) > 1 else ""
    if not code:
        raise HL7Error("MSH-9 message type is empty", code="101", location="MSH^1^9", reject=True)
    return Header(
        delimiters=d,
        sending_application=_first_component(f(3), d),
        sending_facility=_first_component(f(4), d),
        receiving_application=_first_component(f(5), d),
        receiving_facility=_first_component(f(6), d),
        message_type=f"{code}^{trigger}" if trigger else code,
        structure=msh9[2] if len(msh9) > 2 else "",
        control_id=_first_component(f(10), d),
        processing_id=_first_component(f(11), d),
        version=_first_component(f(12), d),
        accept_ack_type=f(15),
        application_ack_type=f(16),
        charset=f(18).split(d.repetition, 1)[0],
        fields=tuple(fields),
    )


def _codec(declared: str, default_charset: str) -> str:
    declared = declared.strip()
    if not declared:
        return default_charset
    codec = CHARSETS.get(declared.upper())
    if codec is None:
        raise EncodingError(f"unknown character set in MSH-18: {declared[:40]!r}", code="204", location="MSH^1^18")
    return codec


def _decode(raw: bytes, codec: str) -> str:
    try:
        return raw.decode(codec)
    except (UnicodeDecodeError, LookupError) as exc:
        pos = getattr(exc, "start", None)
        where = f" at byte {pos}" if pos is not None else ""
        raise EncodingError(f"message is not valid {codec}{where}", code="102") from None


def read(raw: bytes, default_charset: str = "utf-8") -> tuple[str, Header]:
    """Decode raw bytes (MSH-18 when declared and known, else ``default_charset``) and read their MSH.

    One pass for the accept path. Raises :class:`HL7Error` when MSH cannot be read, and
    :class:`EncodingError` (with ``.header`` set, so the reply can still name the message) when the
    bytes do not decode.
    """
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[3:]
        default_charset = "utf-8"
    # MSH is plain ASCII in every charset HL7 allows over MLLP: latin-1 reads it losslessly.
    header = read_header(raw[:4096].decode("latin-1"))
    try:
        text = _decode(raw, _codec(header.charset, default_charset))
    except EncodingError as exc:
        exc.header = header
        raise
    end = raw.find(b"\r")
    if not raw[: end if end != -1 else 4096].isascii():  # non-ASCII names in MSH: read them decoded
        header = read_header(text)
    return text, header


def decode(raw: bytes, default_charset: str = "utf-8") -> str:
    """Decode raw bytes using MSH-18 when declared (and known), else ``default_charset``.

    Raises :class:`EncodingError` for an unknown MSH-18 value or bytes invalid in the chosen charset.
    """
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[3:]
        default_charset = "utf-8"
    return _decode(raw, _codec(_declared_charset(raw[:4096].decode("latin-1")), default_charset))


def _declared_charset(text: str) -> str:
    """MSH-18 as :func:`read_header` reads it, ``""`` when it would refuse the MSH: the charset alone,
    without building a :class:`Header` (a fifth of an 8-OBX ORU's parse)."""
    msh = _first_line(text)
    try:
        d = _delimiters(msh)
    except HL7Error:
        return ""
    parts = msh.split(d.field)
    # parts[i] is MSH-(i+1): MSH-9 at 8, MSH-18 at 17
    if len(parts) < 9 or not parts[8].split(d.component, 1)[0]:
        return ""  # read_header refuses an empty MSH-9
    return parts[17].split(d.repetition, 1)[0] if len(parts) > 17 else ""


_UNESCAPE_FIXED = {"F": "field", "S": "component", "T": "subcomponent", "R": "repetition", "E": "escape"}
_FORMATTING = frozenset({"H", "N", ".fi", ".nf"})  # highlighting, fill mode: no text of their own
_FORMATTING_ARG = frozenset({".in", ".ti", ".sk", ".ce"})  # indent, temporary indent, skip, centre
_MAX_SP = 100  # \.sp 99999999\ must not become a memory bomb


def unescape(value: str, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Resolve HL7 escape sequences; unknown ones are kept.

    Delimiters (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\), hex data \\Xhh…\\ (UTF-8 when the bytes are UTF-8, else
    Latin-1), and the formatted-text (FT) commands as plain text: \\.br\\ a line break, \\.sp n\\ n line
    breaks (default 1), \\H\\ and \\N\\ (highlighting on/off) and the other dot commands (.fi .nf .in
    .ti .sk .ce) dropped.
    """
    esc = d.escape
    if esc not in value:
        return value
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c != esc:
            out.append(c)
            i += 1
            continue
        j = value.find(esc, i + 1)
        if j == -1:
            out.append(value[i:])
            break
        seq = value[i + 1 : j]
        if seq in _UNESCAPE_FIXED:
            out.append(getattr(d, _UNESCAPE_FIXED[seq]))
        elif seq == ".br":
            out.append("\n")
        elif seq.startswith(".sp") and (seq[3:].strip().isdigit() or not seq[3:].strip()):
            out.append("\n" * min(int(seq[3:].strip() or 1), _MAX_SP))
        elif seq in _FORMATTING or seq[:3] in _FORMATTING_ARG:
            pass
        elif seq.startswith("X") and len(seq) % 2 == 1:
            try:
                data = bytes.fromhex(seq[1:])
            except ValueError:
                out.append(value[i : j + 1])
            else:
                try:
                    out.append(data.decode("utf-8"))
                except UnicodeDecodeError:
                    out.append(data.decode("latin-1"))
        else:
            out.append(value[i : j + 1])
        i = j + 1
    return "".join(out)


class Segment:
    """One segment; fields are split once, deeper levels on demand."""

    __slots__ = ("_d", "fields", "name")

    def __init__(self, text: str, d: Delimiters) -> None:
        self._d = d
        parts = text.split(d.field)
        self.name = parts[0]
        if self.name == "MSH":
            # Keep HL7 numbering: fields[1] is MSH-1 (the separator itself), fields[2] is MSH-2.
            self.fields = ["MSH", d.field, *parts[1:]]
        else:
            self.fields = parts

    @property
    def delimiters(self) -> Delimiters:
        return self._d

    def field(self, n: int) -> str:
        """Raw text of field ``n`` (all repetitions), ``""`` when absent."""
        f = self.fields
        return f[n] if n < len(f) else ""

    def repetitions(self, n: int) -> list[str]:
        raw = self.field(n)
        if not raw:
            return []
        if self.name == "MSH" and n in (1, 2):
            return [raw]
        return raw.split(self._d.repetition)

    def component(self, value: str, c: int, s: int = 0) -> str:
        """Component ``c`` (1-based) of one repetition, and sub-component ``s`` when given; unescaped."""
        comps = value.split(self._d.component)
        if c > len(comps):
            return ""
        v = comps[c - 1]
        if s:
            subs = v.split(self._d.subcomponent)
            v = subs[s - 1] if s <= len(subs) else ""
        return unescape(v, self._d)

    def __repr__(self) -> str:  # names only: never PHI in reprs that may reach logs
        return f"<Segment {self.name} fields={len(self.fields) - 1}>"


class Message:
    """A parsed message: an ordered list of segments."""

    __slots__ = ("delimiters", "segments")

    def __init__(self, segments: list[Segment], delimiters: Delimiters) -> None:
        self.segments = segments
        self.delimiters = delimiters

    @classmethod
    def parse(cls, text: str) -> Message:
        lines = split_segments(text)
        if not lines:
            raise HL7Error("empty message", code="100", location="MSH", reject=True)
        d = _delimiters(lines[0])
        segments = []
        for i, line in enumerate(lines, start=1):
            name = line[:3]
            if len(line) < 3 or not name.isalnum() or not name.isupper() or (len(line) > 3 and line[3] != d.field):
                raise HL7Error(f"segment {i} has no valid segment name", code="100", location=f"{i}")
            segments.append(Segment(line, d))
        return cls(segments, d)

    @property
    def header(self) -> Segment:
        return self.segments[0]

    @property
    def message_type(self) -> str:
        msh9 = self.header.field(9).split(self.delimiters.component)
        return "^".join(msh9[:2]) if len(msh9) > 1 and msh9[1] else msh9[0]

    def first(self, name: str) -> Segment | None:
        for s in self.segments:
            if s.name == name:
                return s
        return None

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    def __repr__(self) -> str:
        return f"<Message {self.message_type} segments={len(self.segments)}>"


def patient_key(text: str, d: Delimiters) -> str:
    """The patient a message is about, for delivery ordering: PID-3.1 of the MR-typed identifier, else of the
    first one; ``""`` when there is no PID-3. One string search, no parse (it runs on the accept path).

    Deliberately coarse (the assigning authority is left out): two patients sharing a key only share an
    ordering lane, while a key that changed between one patient's messages would break their order.
    """
    for marker in ("\rPID" + d.field, "\nPID" + d.field):
        start = text.find(marker)
        if start != -1:
            break
    else:
        return ""
    start += 1
    end = len(text)
    for sep in ("\r", "\n"):
        i = text.find(sep, start)
        if i != -1 and i < end:
            end = i
    fields = text[start:end].split(d.field, 4)
    if len(fields) < 4 or not fields[3]:
        return ""
    reps = [r.split(d.component) for r in fields[3].split(d.repetition)]
    chosen = next((r for r in reps if len(r) > 4 and r[4].split(d.subcomponent, 1)[0] == "MR"), reps[0])
    return chosen[0].strip()


def codec_for(declared: str, default_charset: str) -> str:
    """The codec a message is decoded with: MSH-18 when it names a known charset, else ``default_charset``."""
    try:
        return _codec(declared, default_charset)
    except EncodingError:
        return default_charset
