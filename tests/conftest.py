"""Shared fixtures: real PostgreSQL, Redis and RabbitMQ (skipped locally when absent, a failure under CI=true).

Every run uses its own PostgreSQL database, Redis key prefix and RabbitMQ virtual host, and removes only them."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

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


# Two test runs on one host (two checkouts, CI beside a developer) must never see each other's queues: each
# run keeps its Redis keys under its own prefix and its RabbitMQ queues in its own virtual host, and
# removes only those. Nothing shared is flushed.
RUN_ID = uuid.uuid4().hex[:8]
_tests = itertools.count(1)


@pytest.fixture
def queue_namespace() -> str:
    """The Redis key prefix of this test alone: give it to engines as the ``queue_namespace`` setting."""
    return f"interlink-test-{RUN_ID}-{next(_tests)}"


@pytest.fixture
def redis_url(queue_namespace: str) -> Iterator[str]:
    """Redis (database 15 by default); the test's keys live under ``queue_namespace`` (pass it to every
    engine process) and only those are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        client.close()
        unavailable("Redis on 127.0.0.1:6379")
    try:
        yield REDIS_URL
    finally:
        for key in client.scan_iter(match=f"{queue_namespace}:*", count=1000):
            client.delete(key)
        client.close()


AMQP_URL = os.environ.get("INTERLINK_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
QUEUES = ("process", "deliver", "process.DQ", "deliver.DQ", "process.XQ", "deliver.XQ")


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def amqp_vhost() -> Iterator[str]:
    """A RabbitMQ virtual host of this test run (``rabbitmqctl``, so the tests run on the broker's host),
    deleted at the end of the session."""
    parts = urlsplit(AMQP_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=3).close()
    except OSError:
        unavailable(f"RabbitMQ on {parts.hostname}:{parts.port or 5672}")
    if shutil.which("rabbitmqctl") is None:
        unavailable("rabbitmqctl (the tests create a virtual host of their own)")
    vhost = f"interlink-test-{RUN_ID}"
    user = unquote(parts.username or "guest")
    for args in (("add_vhost", vhost), ("set_permissions", "-p", vhost, user, ".*", ".*", ".*")):
        done = rabbitmqctl(*args)
        if done.returncode != 0:
            rabbitmqctl("delete_vhost", vhost)
            unavailable(f"rabbitmqctl {args[0]} (exit {done.returncode}: {done.stderr.strip()[-300:]})")
    try:
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def amqp_url(amqp_vhost: str) -> str:
    """RabbitMQ in this run's own virtual host, with the engine's queues emptied for the test."""
    import pika
    from pika.exceptions import AMQPError

    parts = urlsplit(AMQP_URL)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + quote(amqp_vhost, safe=""), "", ""))
    try:
        conn = pika.BlockingConnection(pika.URLParameters(url + "?connection_attempts=1&socket_timeout=3"))
    except (AMQPError, OSError):
        unavailable(f"RabbitMQ virtual host {amqp_vhost}")
    try:
        channel = conn.channel()
        for q in QUEUES:
            channel.queue_delete(q)
    finally:
        conn.close()
    return url


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
            c.execute(text("TRUNCATE attempts, deliveries, contents, message_keys, messages"))
    eng.dispose()
    return pg_url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run a test against both store backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return request.getfixturevalue("pg_fresh")


@pytest.fixture(autouse=True)
def _pynetdicom_defaults() -> Iterator[None]:
    """pynetdicom's send-from-file switch is process-wide and the engine's DICOM senders turn it on (then a
    path is sent only in a context of its own transfer syntax); each test's SCU starts from the default."""
    yield
    config = sys.modules.get("pynetdicom._config")
    if config is not None:
        config.STORE_SEND_CHUNKED_DATASET = False
