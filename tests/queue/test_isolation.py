"""Two test runs (or engines) on one host never touch each other's queues: Redis keys live under the
run's ``queue_namespace`` and only those are deleted; RabbitMQ queues live in the run's own virtual host."""

from __future__ import annotations

import subprocess
from urllib.parse import unquote, urlsplit

import dramatiq
import pytest
import redis

from engine.queue.broker import make_broker
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.integration


def send_one(broker: dramatiq.Broker) -> None:
    @dramatiq.actor(broker=broker, queue_name="process", actor_name="isolation_probe")
    def probe(n: int) -> None:  # never run: only enqueued
        del n

    probe.send(1)


def test_redis_keys_under_the_runs_namespace_and_only_those_deleted(request: pytest.FixtureRequest) -> None:
    other = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        other.ping()
    except redis.exceptions.ConnectionError:
        other.close()
        pytest.skip("Redis is not available")
    # Another run's waiting work, and an engine on the default namespace, in the same database.
    foreign = {"interlink:process": b"other engine", "interlink-test-otherrun-1:process": b"other run"}
    for key, value in foreign.items():
        other.rpush(key, value)
    seen: dict[str, list[str]] = {}

    def after_fixture_teardown() -> None:  # finalizers run last-in first-out: after redis_url's own
        try:
            left = sorted(k.decode() for k in other.scan_iter(match=f"{seen['namespace']}:*"))
            assert left == [], "the test's own keys are deleted"
            assert {k: other.lrange(k, 0, -1) for k in foreign} == {k: [v] for k, v in foreign.items()}
        finally:
            other.delete(*foreign)
            other.close()

    request.addfinalizer(after_fixture_teardown)
    url = request.getfixturevalue("redis_url")
    namespace = request.getfixturevalue("queue_namespace")
    seen["namespace"] = namespace
    broker = make_broker(url, namespace=namespace)
    try:
        send_one(broker)
        mine = sorted(k.decode() for k in other.scan_iter(match=f"{namespace}:*"))
        assert mine and all(k.startswith(f"{namespace}:") for k in mine)
        assert other.llen(f"{namespace}:process") == 1
        assert {k: other.lrange(k, 0, -1) for k in foreign} == {k: [v] for k, v in foreign.items()}
    finally:
        broker.close()


def queues(vhost: str) -> dict[str, int]:
    done = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [line.split("\t") for line in done.stdout.splitlines()[1:] if line.strip()]
    return {name: int(n) for name, n in rows}


def test_rabbitmq_queues_in_the_runs_own_virtual_host(amqp_url: str) -> None:
    vhost = unquote(urlsplit(amqp_url).path[1:])
    assert vhost.startswith("interlink-test-"), vhost  # never the broker's shared default vhost "/"
    broker = make_broker(amqp_url)
    try:
        send_one(broker)
    finally:
        broker.close()
    assert queues(vhost).get("process") == 1
