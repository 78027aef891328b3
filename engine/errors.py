"""The exception tree. Every error the engine raises on purpose is one of these.

    InterlinkError
    ├── ConfigError            a channel, mapping or settings file is wrong (carries file:line)
    ├── HL7Error               an inbound HL7 v2 message cannot be read (carries an HL7 error code)
    │   └── EncodingError      bytes that do not decode with the declared/channel charset
    ├── TransformError         a mapping rule rejected the message (names the rule and the field)
    ├── StoreUnavailable       the message store cannot commit; sources must refuse, never acknowledge
    ├── ListenError            a source cannot listen on its address (port in use, address not local)
    └── DeliveryError          a destination could not take a bundle (outcome says retryable or permanent)

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


class HL7Error(InterlinkError):
    """An inbound HL7 v2 message is unreadable.

    ``code`` is an HL7 table 0357 error condition (e.g. ``100`` segment sequence, ``102`` data type,
    ``207`` application internal error); ``location`` is an ERR-2 style position such as ``MSH^1^2``.
    """

    def __init__(self, message: str, *, code: str = "207", location: str = "", reject: bool = False) -> None:
        self.message = message
        self.code = code
        self.location = location
        #: True when the message must be rejected (AR/CR), not just errored (AE/CE).
        self.reject = reject
        super().__init__(message)


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


class DeliveryError(InterlinkError):
    """A destination failed to accept a bundle."""


def explain(error: HL7Error | TransformError) -> str:
    """The one-line, PHI-free reason stored with a message and shown to operators: where, what, which rule."""
    if isinstance(error, TransformError):
        rule = f" (rule {error.rule})" if error.rule else ""
        return f"{error.field or 'message'}: {error.message}{rule}"
    return f"{error.location or 'message'}: {error.message}"
