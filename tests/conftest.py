"""Shared fixtures: databases (SQLite and PostgreSQL), a fake backend, runtimes and HTTP clients."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from pixelmill.models.base import TextToImageRequest, StepControl

PG_ADMIN_URL = os.environ.get("PIXELMILL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _pg_available() -> bool:
    try:
        eng = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with eng.connect():
            pass
        eng.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_database():
    """A fresh PostgreSQL database for this test session, migrated to head."""
    if not _pg_available():
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: PostgreSQL tests NOT run")
    from pixelmill.store import migrate

    name = f"pixelmill_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrate.upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"))
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def _truncate_pg(url: str) -> None:
    from pixelmill.store.tables import metadata

    eng = sa.create_engine(url)
    with eng.begin() as conn:
        conn.execute(sa.text("TRUNCATE " + ", ".join(f'"{t.name}"' for t in metadata.sorted_tables) + " RESTART IDENTITY CASCADE"))
    eng.dispose()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory) -> Path:
    """A SQLite database file migrated to head once for the session (``pixelmill migrate``'s result)."""
    from pixelmill.store import migrate

    path = tmp_path_factory.mktemp("migrated") / "pixelmill.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """The same test over SQLite (a file, WAL) and PostgreSQL."""
    if request.param == "sqlite":
        import shutil

        path = tmp_path / "pixelmill.db"
        # as `pixelmill migrate` would leave it (scale-out processes only check the schema): a copy
        # of the session's migrated file: the schema migrating this one would make
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_database")
    _truncate_pg(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'pixelmill.db'}"


class FakeBackend:
    """A hand-written text-to-image backend for engine tests: seeded noise, a step loop, optional delay.

    Asked for previews, it publishes flat grey images whose level is the step
    they were made after (``10 * (step + 1)``).
    """

    def __init__(self, steps: int = 4, step_delay: float = 0.0, fail_with: Exception | None = None):
        self.default_steps = steps
        self.step_delay = step_delay
        self.fail_with = fail_with
        self.calls = 0
        self.started = threading.Event()

    def generate(self, request: TextToImageRequest, control: StepControl) -> list[Image.Image]:
        self.calls += 1
        self.started.set()
        steps = request.steps or self.default_steps
        preview_steps = control.preview_steps(steps)
        for i in range(steps):
            control.check()
            if self.step_delay:
                time.sleep(self.step_delay)
            control.report((i + 1) / steps)
            if i in preview_steps:
                level = min(255, 10 * (i + 1))
                grey = Image.new("RGB", (request.width, request.height), (level, level, level))
                control.preview(preview_steps.index(i), [grey] * request.num_images)
        if self.fail_with:
            raise self.fail_with
        out = []
        for k in range(request.num_images):
            rng = np.random.default_rng(request.seed + k)
            arr = rng.integers(0, 255, (request.height, request.width, 3), dtype=np.uint8)
            out.append(Image.fromarray(arr))
        return out



class RecordingBackend(FakeBackend):
    """A fake image model that keeps every request it was given, to see what reached the model."""

    def __init__(self):
        super().__init__()
        self.requests = []

    def generate(self, request, control):
        self.requests.append(request)
        return super().generate(request, control)


FAKE_CATALOG = """
[[models]]
name = "fake"
path = "/nonexistent"
price_per_megapixel = 2.0
default_steps = 4
bfl_endpoints = ["flux-dev", "flux-pro-1.1", "flux-pro-1.1-ultra", "flux-pro", "flux-2-klein-4b"]
"""


@pytest.fixture
def fake_backend():
    return FakeBackend()


@pytest.fixture
def make_runtime(tmp_path):
    """Build Runtimes on a database URL with the fake model registered; stops them afterwards."""
    from pixelmill.config import Settings
    from pixelmill.models.catalog import ModelCatalog
    from pixelmill.models.registry import ModelRegistry
    from pixelmill.runtime import Runtime

    made = []

    def make(db_url: str, backend=None, start: bool = True, extra_models: dict | None = None, **settings):
        """``extra_models``: {name: (catalog TOML lines, backend)} added after the "fake" model.

        One model thread unless a test asks for more (``worker_threads=2`` is the server's
        default): the engine and API tests reason about a queue that one generation at a time
        goes through; generations side by side have tests of their own."""
        extra_models = extra_models or {}
        settings.setdefault("worker_threads", 1)
        toml = FAKE_CATALOG + "".join(f'\n[[models]]\nname = "{name}"\n{entry}\n' for name, (entry, _) in extra_models.items())
        catalog = ModelCatalog.from_toml(toml)
        registry = ModelRegistry(catalog)
        registry.register("fake", backend or FakeBackend())
        for name, (_, extra) in extra_models.items():
            registry.register(name, extra)
        s = Settings(data_dir=tmp_path / f"data{len(made)}", database_url=db_url, secret_key="test-secret", **settings)
        rt = Runtime(s, catalog=catalog, models=registry)
        if start:
            rt.start()
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.stop()


def create_key(rt, account: str = "acme", credits: float = 1000.0, plan: str = "free") -> str:
    from pixelmill.accounts import keys, ledger

    with rt.db.transaction() as conn:
        aid = keys.find_account_by_name(conn, account) or keys.create_account(conn, account, plan)
        if credits:
            ledger.grant(conn, aid, credits, f"test:{uuid.uuid4()}")
        return keys.create_key(conn, aid).key


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")
