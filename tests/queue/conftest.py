"""Queue fixtures: a Redis broker database for Celery tests and engines over either queue."""

from __future__ import annotations

import os
import threading
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field

import pytest

from tests.conftest import FakeBackend, create_key

REDIS_URL = os.environ.get("PIXELMILL_TEST_REDIS", "redis://127.0.0.1:6379")
BROKER_DBS = range(14, 7, -1)  # Redis databases these tests may take, one per concurrent test run
LOCK_KEY = "pixelmill-test-broker-lock"
LOCK_TTL_S = 1800


def _clear(client) -> None:
    """Empty the database except for the lock that reserves it."""
    for key in client.scan_iter(count=500):
        if key != LOCK_KEY.encode():
            client.delete(key)


@pytest.fixture(scope="session")
def broker_db():
    """A Redis database reserved for this test run (test runs side by side each get their own)."""
    import redis

    token = uuid.uuid4().hex
    try:
        redis.Redis.from_url(f"{REDIS_URL}/0", socket_connect_timeout=2).ping()
    except Exception as e:
        pytest.skip(f"Redis is not reachable at {REDIS_URL} ({e}): Celery queue tests NOT run")
    for db in BROKER_DBS:
        client = redis.Redis.from_url(f"{REDIS_URL}/{db}", socket_connect_timeout=2)
        if client.set(LOCK_KEY, token, nx=True, ex=LOCK_TTL_S):
            yield client
            if client.get(LOCK_KEY) == token.encode():
                _clear(client)
                client.delete(LOCK_KEY)
            client.close()
            return
        client.close()
    pytest.skip(f"every Redis database in {list(BROKER_DBS)} is taken by another test run: Celery queue tests NOT run")


@pytest.fixture
def broker_url(broker_db):
    """The reserved Redis database, emptied before and after the test."""
    broker_db.expire(LOCK_KEY, LOCK_TTL_S)
    _clear(broker_db)
    db = broker_db.connection_pool.connection_kwargs["db"]
    yield f"{REDIS_URL}/{db}"
    _clear(broker_db)


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
