"""The exception tree. Every error the engine raises on purpose is one of these.

    InterlinkError
    ├── ConfigError            a channel, mapping or settings file is wrong (carries file:line)
    ├── InboundError           inbound bytes cannot be accepted as a message (source-neutral: what and where)
    │   └── HL7Error           an inbound HL7 v2 message cannot be read (carries an HL7 error code)
    │       └── EncodingError  bytes that do not decode with the declared/channel charset
    ├── TransformError         a mapping rule rejected the message (names the rule and the field)
    ├── StoreUnavailable       the message store cannot commit; sources must refuse, never acknowledge
    │   └── Busy               the channel's backlog is full: refused before the commit (back-pressure)
    ├── ListenError            a source cannot listen on its address (port in use, address not local)
    ├── DeliveryError          a destination could not take a bundle (outcome says retryable or permanent)
    └── DeadLetter             a queued step gives up for good (the dead-letter door records it)

Messages never contain PHI: they name fields, rules and positions, not values.
"""

from __future__ import annotations


class InterlinkError(Exception):
    """Base of every deliberate engine error."""


class ConfigError(InterlinkError):
    """A configuration file is invalid; ``str()`` is ``file:line: message``."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        super().__init__(self.location_prefix() + message)

    def location_prefix(self) -> str:
        if self.file is None:
            return ""
        return f"{self.file}:{self.line}: " if self.line else f"{self.file}: "


class InboundError(InterlinkError):
    """Inbound bytes that cannot be accepted as a message, said without the protocol's words.

    ``kind`` is what is wrong: ``too_large``, ``incomplete`` (cut off), ``unreadable`` (not the format
    the source expects), ``unsupported`` (a message this channel does not take), ``invalid`` (readable but
    wrong); ``location`` is where, in the format's own notation (``MSH-10``, ``(0008,0018)``, ``$.id``).
    Each source turns it into its own reply (an HL7 NAK, a DICOM status, an HTTP problem); the raw bytes
    are stored with it.
    """

    def __init__(self, message: str, *, kind: str = "invalid", location: str = "", reject: bool = True) -> None:
        self.message = message
        self.kind = kind
        self.location = location
        #: True when the sender must not resend it as is (HL7 AR rather than AE).
        self.reject = reject
        super().__init__(message)


class HL7Error(InboundError):
    """An inbound HL7 v2 message is unreadable.

    ``code`` is an HL7 table 0357 error condition (e.g. ``100`` segment sequence, ``102`` data type,
    ``207`` application internal error); ``location`` is an ERR-2 style position such as ``MSH^1^2``.
    """

    def __init__(self, message: str, *, code: str = "207", location: str = "", reject: bool = False) -> None:
        super().__init__(message, kind="unreadable", location=location, reject=reject)
        self.code = code


class EncodingError(HL7Error):
    """The bytes do not decode with the charset declared in MSH-18 or configured on the channel.

    ``header`` is the message's MSH (read before decoding) when it could be read, else None.
    """

    header: object = None


class ListenError(InterlinkError):
    """A source cannot listen on its address; ``str()`` names the address and the reason, one line."""


class TransformError(InterlinkError):
    """A mapping rule rejected the message. ``field`` is an HL7 path such as ``OBX-5``."""

    def __init__(self, message: str, *, field: str = "", rule: str = "", code: str = "102") -> None:
        self.message = message
        self.field = field
        self.rule = rule
        self.code = code
        super().__init__(f"{field}: {message}" if field else message)


class StoreUnavailable(InterlinkError):
    """The message store could not commit; nothing may be acknowledged."""


class Busy(StoreUnavailable):
    """The channel's backlog is at its ``refuse_at`` bound (``engine.backpressure``): nothing was committed,
    and the sender should retry later. Sources answer it as any ``StoreUnavailable``."""

    def __init__(self, message: str = "application busy, retry later: the channel's backlog is full") -> None:
        super().__init__(message)


class DeliveryError(InterlinkError):
    """A destination failed to accept a bundle."""


def explain(error: HL7Error | TransformError) -> str:
    """The one-line, PHI-free reason stored with a message and shown to operators: where, what, which rule."""
    if isinstance(error, TransformError):
        rule = f" (rule {error.rule})" if error.rule else ""
        return f"{error.field or 'message'}: {error.message}{rule}"
    return f"{error.location or 'message'}: {error.message}"


class DeadLetter(InterlinkError):
    """Raised in a queued step to give up for good; ``args[0]`` is the PHI-free reason. The dead-letter
    middleware (``engine.queue.deadletter``) is the one door that records it."""
