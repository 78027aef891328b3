"""Production shape: PostgreSQL store, a shared queue (Redis or RabbitMQ), listener and workers in
separate processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from engine.sources.mllp_client import send
from tests.integration.harness import EngineProcess, wait_until
from tests.integration.messages import adt, oru

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("broker", ["redis_url", "amqp_url"])
def test_postgres_and_shared_queue_with_separate_workers(
    tmp_path: Path, pg_fresh: str, broker: str, queue_namespace: str, request: pytest.FixtureRequest
) -> None:
    queue_url = request.getfixturevalue(broker)
    listener = EngineProcess(
        tmp_path / "listener",
        database_url=pg_fresh,
        queue_url=queue_url,
        extra_settings={"queue_namespace": queue_namespace},  # this test's own Redis keys
    )
    listener.start()
    try:
        replies = send("127.0.0.1", listener.lab_port, [oru(f"S{i}", obx=2) for i in range(20)], timeout_s=20)
        assert all(b"MSA|AA|" in r for r in replies)
        [reply] = send("127.0.0.1", listener.adt_port, [adt("S-ADT", "A04")], timeout_s=20)
        # the ADT channel replies after mapping, which needs a worker-free inline transform: still AA
        assert b"MSA|AA|" in reply
        time.sleep(1.0)
        # nobody consumes the Redis queue yet: the listener runs no workers
        assert listener.statuses().get("received", 0) == 20
        if broker == "redis_url":  # the engine's queue lives under this test's prefix (queue_namespace)
            client = redis.Redis.from_url(queue_url)
            try:
                assert client.llen(f"{queue_namespace}:process") > 0
            finally:
                client.close()
        worker = EngineProcess(tmp_path / "worker", database_url=pg_fresh, queue_url=queue_url)
        worker.config.write_text(listener.config.read_text())
        worker.start("worker", wait=False)
        try:
            wait_until(lambda: listener.statuses().get("sent", 0) >= 21, 60, "21 messages sent by the worker")
        finally:
            worker.stop()
        out = (tmp_path / "listener" / "out" / "lab-results.ndjson").read_text().splitlines()
        assert len(out) == 20
    finally:
        listener.stop()
