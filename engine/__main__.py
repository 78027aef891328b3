"""``python -m engine`` is the ``interlink`` command."""

from engine.cli import app

app()
