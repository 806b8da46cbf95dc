"""The Alembic migrations build exactly the schema the code declares, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pixelmill.store import migrate
from pixelmill.store.tables import metadata


def test_migrated_database_matches_the_declared_tables(db_url):
    migrate.upgrade(db_url)  # idempotent at head
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == [], f"tables.py and the migrations disagree; add a migration: {diff}"
    assert migrate.current_heads(db_url) == [migrate.head_revision()]


def test_upgrade_from_the_first_revision_keeps_queued_runs_published(tmp_path):
    """Runs queued before published_at existed count as published: the sweeper must not resend them."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(url, "0001")
    engine = sa.create_engine(url)  # no foreign-key enforcement on a bare SQLite connection
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO node_runs (id, execution_id, node_id, node_type, status, params, links, queued_at, progress, "
            "cost, attempts, cached) VALUES ('r', 'e', 'gen', 'text_to_image', 'queued', '{}', '{}', 123.5, 0, 0, 0, 0)"
        ))
    migrate.upgrade(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT published_at FROM node_runs WHERE id = 'r'")).scalar() == 123.5
    engine.dispose()


def _fresh_pg_database():
    import uuid

    import pytest

    from tests.conftest import PG_ADMIN_URL, _pg_available

    if not _pg_available():
        pytest.skip("PostgreSQL is not reachable: PostgreSQL migration test NOT run")
    name = f"pixelmill_race_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return admin, name, PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def test_simultaneous_first_starts_on_postgresql_migrate_once(tmp_path):
    """Several processes migrating a new PostgreSQL database at once: one migrates, the others wait and find it done."""
    import subprocess
    import sys

    admin, name, url = _fresh_pg_database()
    try:
        code = f"from pixelmill.store import migrate; migrate.upgrade({url!r}); print('ok')"
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
        outs = [p.communicate(timeout=180) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], [o[1][-2000:] for o in outs]
        assert migrate.current_heads(url) == [migrate.head_revision()]
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"))
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def test_scale_out_processes_refuse_a_schema_that_is_behind(tmp_path):
    import pytest

    from pixelmill.config import Settings
    from pixelmill.runtime import Runtime

    url = f"sqlite:///{tmp_path / 'old.db'}"
    settings = Settings(data_dir=tmp_path / "data", database_url=url, queue="celery", secret_key="s")
    with pytest.raises(migrate.SchemaOutOfDate, match="no pixelmill schema yet.*pixelmill migrate"):
        Runtime(settings)
    migrate.upgrade(url, "0002")
    with pytest.raises(migrate.SchemaOutOfDate, match="revision 0002 but this version needs.*pixelmill migrate"):
        Runtime(settings)
    assert migrate.current_heads(url) == ["0002"]  # checked, never changed
    migrate.upgrade(url)
    Runtime(settings).stop()


def test_a_worker_and_cli_commands_refuse_a_schema_that_is_behind_and_only_migrate_changes_it(tmp_path):
    import os
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    migrate.upgrade(url, "0002")
    env = {**os.environ, "PIXELMILL_DATA_DIR": str(tmp_path / "data"), "PIXELMILL_DATABASE_URL": url,
           "PIXELMILL_QUEUE": "celery", "PIXELMILL_BROKER_URL": "redis://127.0.0.1:6379/0"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pixelmill.cli", *args], env=env, capture_output=True, text=True, timeout=120)

    for refused in (cli("worker", "--queues", "default"), cli("keys", "list")):
        assert refused.returncode == 2, refused.stderr
        assert "pixelmill migrate" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert migrate.current_heads(url) == ["0002"]  # checked, never changed
    r = cli("migrate")
    assert r.returncode == 0, r.stderr
    assert migrate.current_heads(url) == [migrate.head_revision()]
    for out in (r, cli("keys", "create", "--account", "a"), cli("keys", "list")):
        assert out.returncode == 0, out.stderr
        assert "alembic" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr


def _price_rows(url: str) -> None:
    """Executions and node runs as a 0008 schema stored them: float credits rounded to 4 decimals."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO accounts (id, name, plan, created_at, webhook_secrets) VALUES ('a', 'a', 'free', 1, '[]')"))
        for i, (estimate, actual) in enumerate([(0.0123, 0.0123), (1234.5678, 1234.5677), (0.3, None), (33.3333, 0.0), (9876543.2109, 9876543.2109)]):
            conn.execute(sa.text(
                "INSERT INTO executions (id, account_id, dialect, label, status, graph, request, created_at, expires_at, cost_estimate, "
                "cost_actual, cancel_requested, priority) VALUES (:id, 'a', 'bfl', 'x', 'succeeded', '{}', '{}', 1, 2, :e, :a, false, 0)"
            ), {"id": f"e{i}", "e": estimate, "a": actual})
            conn.execute(sa.text(
                "INSERT INTO node_runs (id, execution_id, node_id, node_type, status, params, links, progress, cost, attempts, cached) "
                "VALUES (:id, :eid, 'gen', 'text_to_image', 'succeeded', '{}', '{}', 1, :c, 1, false)"
            ), {"id": f"r{i}", "eid": f"e{i}", "c": estimate})
    engine.dispose()


def _read(url: str, sql: str) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


def _check_exact_credits_migration(url: str) -> None:
    migrate.upgrade(url, "0008")
    _price_rows(url)
    migrate.upgrade(url)
    assert _read(url, "SELECT id, cost_estimate_micro, cost_actual_micro FROM executions ORDER BY id") == [
        ("e0", 12_300, 12_300), ("e1", 1_234_567_800, 1_234_567_700), ("e2", 300_000, None), ("e3", 33_333_300, 0),
        ("e4", 9_876_543_210_900, 9_876_543_210_900),
    ]
    assert _read(url, "SELECT id, cost_micro FROM node_runs ORDER BY id") == [
        ("r0", 12_300), ("r1", 1_234_567_800), ("r2", 300_000), ("r3", 33_333_300), ("r4", 9_876_543_210_900),
    ]
    migrate.downgrade(url, "0008")  # and back, to the same floats
    assert _read(url, "SELECT id, cost_estimate, cost_actual FROM executions ORDER BY id") == [
        ("e0", 0.0123, 0.0123), ("e1", 1234.5678, 1234.5677), ("e2", 0.3, None), ("e3", 33.3333, 0.0), ("e4", 9876543.2109, 9876543.2109),
    ]


def test_credits_on_executions_and_node_runs_become_exact_micro_credits_on_sqlite(tmp_path):
    _check_exact_credits_migration(f"sqlite:///{tmp_path / 'old.db'}")


def test_credits_on_executions_and_node_runs_become_exact_micro_credits_on_postgresql():
    admin, name, url = _fresh_pg_database()
    try:
        _check_exact_credits_migration(url)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"))
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
