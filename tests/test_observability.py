"""Logging set-up, in a real process: tracebacks keep frames but not texts; other libraries' chatter stays out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
SECRET = "ZQXSECRET4711"

SCRIPT = f"""
import logging
from engine.observability import setup_logging
from engine.settings import Settings

setup_logging(Settings(log_level="DEBUG", log_format=FORMAT))
log = logging.getLogger("engine.pipeline")

def parse(value):
    return int(value)

def deliver(value):
    try:
        parse(value)
    except ValueError as exc:
        raise KeyError("patient {SECRET}") from exc

try:
    deliver("{SECRET}")
except KeyError:
    log.exception("delivery of %s failed", "m-1")
try:
    {{}}["{SECRET}"]
except KeyError:
    try:
        raise RuntimeError("{SECRET} again")
    except RuntimeError:
        log.error("handling failed", exc_info=True)
log.debug("engine debug line")
logging.getLogger("httpcore.http11").debug("response headers [(b'X-Echo', b'{SECRET}')]")
logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /in?mrn={SECRET} HTTP/1.1" 202')
logging.getLogger("somelib").warning("somelib warning")
"""


def run(log_format: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", f"FORMAT = {log_format!r}\n" + SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stderr


def test_text_tracebacks_keep_frames_and_types_but_no_exception_text() -> None:
    out = run("text")
    assert SECRET not in out
    assert "ERROR   engine.pipeline: delivery of m-1 failed" in out
    assert "Traceback (most recent call last):" in out
    assert ", in parse" in out and ", in deliver" in out  # the frames are there
    assert "ValueError (text withheld" in out and "KeyError (text withheld" in out
    assert "The above exception was the direct cause of the following exception:" in out
    assert "During handling of the above exception, another exception occurred:" in out
    assert "RuntimeError (text withheld" in out


def test_json_lines_name_the_exception_type_and_where_it_was_raised() -> None:
    lines = [orjson.loads(line) for line in run("json").splitlines()]
    assert SECRET not in str(lines)
    failed = next(rec for rec in lines if rec["msg"] == "delivery of m-1 failed")
    assert (failed["level"], failed["logger"], failed["exc"]) == ("error", "engine.pipeline", "KeyError")
    assert failed["exc_at"].startswith("<string>:")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_below_warning_only_the_engines_own_lines(log_format: str) -> None:
    out = run(log_format)
    assert "engine debug line" in out
    assert "somelib warning" in out
    assert "httpcore" not in out and "uvicorn" not in out
