"""Logging set-up. Log lines name ids, channels, statuses and fields, never message content (PHI).

What the engine logs is written to that rule; two things it does not write are held to it here:

- exceptions: a logged traceback keeps its frames (file, line, function: code, not data) and the type
  of each exception in the chain, but never an exception's text, which may quote a value
  (``ValueError: invalid literal for int() with base 10: '…'``). JSON lines carry the type and the
  innermost frame (``"exc": "ValueError", "exc_at": "ingest.py:129"``);
- other libraries' own lines: below WARNING only the engine's loggers (``engine.*``) are written. At
  DEBUG, httpcore logs the peer's response headers and an HTTP server logs request lines with their
  query strings: both can hold what a peer or a sender put there.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from types import TracebackType

import orjson

from engine.settings import Settings

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def exception_lines(exc_info: ExcInfo) -> list[str]:
    """The traceback of ``exc_info`` (chained exceptions first, as Python prints them), each exception's
    text replaced by its type."""
    if exc_info[0] is None:
        return []
    chain = []
    seen: set[int] = set()
    te: traceback.TracebackException | None = traceback.TracebackException(*exc_info, capture_locals=False)
    while te is not None and id(te) not in seen:
        seen.add(id(te))
        chain.append(te)
        te = te.__cause__ or (None if te.__suppress_context__ else te.__context__)
    lines: list[str] = []
    for i, te in enumerate(reversed(chain)):
        if i:
            lines.append("")
            lines.append(
                "The above exception was the direct cause of the following exception:"
                if te.__cause__ is not None
                else "During handling of the above exception, another exception occurred:"
            )
            lines.append("")
        if te.stack:
            lines.append("Traceback (most recent call last):")
            lines.extend(line.rstrip("\n") for line in te.stack.format())
        lines.append(f"{_type_name(te)} (text withheld: it may quote message content)")
    return lines


def _type_name(te: traceback.TracebackException) -> str:
    kind = te.exc_type
    if kind is None:
        return "Exception"
    module = kind.__module__
    return kind.__qualname__ if module in ("builtins", "__main__") else f"{module}.{kind.__qualname__}"


class TextFormatter(logging.Formatter):
    """``time level logger: message``; tracebacks without exception texts."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatException(self, ei: ExcInfo) -> str:
        return "\n".join(exception_lines(ei))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and for an exception its type and innermost frame."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            out["exc"] = record.exc_info[0].__name__
            frames = traceback.extract_tb(record.exc_info[2]) if record.exc_info[2] is not None else []
            if frames:
                out["exc_at"] = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}"
        return orjson.dumps(out).decode()


class OwnLinesBelowWarning(logging.Filter):
    """Below WARNING, only records of the engine's own loggers pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name == "engine" or record.name.startswith("engine.")


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(OwnLinesBelowWarning())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    logging.getLogger("dramatiq").setLevel(max(logging.WARNING, root.level))
    # their DEBUG lines would be dropped by the filter anyway: not producing them is cheaper
    for name in ("httpx", "httpcore", "hpack", "h11"):
        logging.getLogger(name).setLevel(logging.WARNING)
