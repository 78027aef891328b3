"""Shared fixtures: real PostgreSQL and Redis (skipped locally when absent, a failure under CI=true)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = (
    ["tests.fhir_server.fixtures"] if (Path(__file__).parent / "fhir_server" / "fixtures.py").exists() else []
)

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "hl7v2"
PG_ADMIN_URL = os.environ.get("INTERLINK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("INTERLINK_TEST_REDIS", "redis://127.0.0.1:6379/15")


def unavailable(what: str) -> None:
    """Skip locally, fail in CI: CI must exercise the real services."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required under CI=true")
    pytest.skip(f"{what} is not available")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the session, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    name = f"interlink_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError:
        admin.dispose()
        unavailable("PostgreSQL on 127.0.0.1:5432")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def redis_url() -> str:
    """Redis database 15, emptied for the test."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError:
        unavailable("Redis on 127.0.0.1:6379")
    finally:
        client.close()
    return REDIS_URL


AMQP_URL = os.environ.get("INTERLINK_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")


@pytest.fixture
def amqp_url() -> str:
    """RabbitMQ with the engine's queues emptied for the test."""
    import pika
    from pika.exceptions import AMQPError

    try:
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL + "?connection_attempts=1&socket_timeout=3"))
    except (AMQPError, OSError):
        unavailable("RabbitMQ on 127.0.0.1:5672")
    try:
        channel = conn.channel()
        for q in ("process", "deliver", "process.DQ", "deliver.DQ", "process.XQ", "deliver.XQ"):
            channel.queue_delete(q)
    finally:
        conn.close()
    return AMQP_URL


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture
def pg_fresh(pg_url: str) -> str:
    """The session's PostgreSQL database with the engine's tables emptied."""
    from sqlalchemy import create_engine, text

    eng = create_engine(pg_url)
    with eng.begin() as c:
        if c.execute(text("select to_regclass('public.messages')")).scalar():
            c.execute(text("TRUNCATE attempts, deliveries, contents, messages"))
    eng.dispose()
    return pg_url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run a test against both store backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return request.getfixturevalue("pg_fresh")
