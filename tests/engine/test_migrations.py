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
