"""Queue fixtures: a Redis broker database for Celery tests and engines over either queue."""

from __future__ import annotations

import os
import threading
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field

import pytest

from tests.conftest import FakeBackend, create_key

TEST_BROKER_URL = os.environ.get("PIXELMILL_TEST_REDIS", "redis://127.0.0.1:6379/14")


def _redis():
    import redis

    return redis.Redis.from_url(TEST_BROKER_URL, socket_connect_timeout=2)


@pytest.fixture
def broker_url():
    """A dedicated, flushed Redis database; the test is skipped (loudly) without Redis."""
    client = _redis()
    try:
        client.ping()
    except Exception as e:
        pytest.skip(f"Redis is not reachable at {TEST_BROKER_URL} ({e}): Celery queue tests NOT run")
    client.flushdb()
    yield TEST_BROKER_URL
    client.flushdb()
    client.close()


@dataclass
class Engine:
    """A runtime on one queue kind with a fake model, a consumer, and a count of deliveries."""

    rt: object
    backend: FakeBackend
    kind: str
    deliveries: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def principal(self, account: str = "acme"):
        from pixelmill.accounts import keys

        key = create_key(self.rt, account=account)
        with self.rt.db.engine.connect() as conn:
            return keys.authenticate(conn, key)


@pytest.fixture(params=["inprocess", "celery"])
def engine(request, db_url, make_runtime):
    """The same engine over the embedded thread queue and over Celery + Redis (worker in a thread)."""
    kind = request.param
    backend = FakeBackend()
    stack = ExitStack()
    if kind == "inprocess":
        rt = make_runtime(db_url, backend=backend, start=False)
    else:
        broker = request.getfixturevalue("broker_url")
        rt = make_runtime(db_url, backend=backend, start=False, queue="celery", broker_url=broker)
    eng = Engine(rt, backend, kind)
    run = rt.queue.handler

    def counting(task):  # recorded once handled, so a count means "processed"
        try:
            run(task)
        finally:
            with eng._lock:
                eng.deliveries.append(task)

    rt.queue.handler = counting
    rt.start()
    if kind == "celery":
        from celery.contrib.testing.worker import start_worker

        stack.enter_context(
            start_worker(
                rt.queue.app,
                pool="threads",
                concurrency=1,
                perform_ping_check=False,
                loglevel="WARNING",
                queues=["model.fake", "default"],
                hostname=f"test-{uuid.uuid4().hex[:8]}@localhost",
                shutdown_timeout=20,
            )
        )
    with stack:
        yield eng
