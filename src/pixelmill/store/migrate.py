"""Schema migrations (Alembic), and the schema check every other process makes.

Only ``pixelmill migrate`` and the embedded server's start change the schema
(:func:`upgrade`).  Two of them starting at once cannot race: on PostgreSQL the
upgrade holds an advisory lock, on SQLite an exclusive lock on a file beside the
database.  Every other process (API nodes and workers in scale-out, CLI
commands) calls :func:`require_current`, which refuses to go on with a message
naming the command to run when the database is behind (or ahead of) this
version of pixelmill.  Alembic's own progress lines are kept out of the output.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
#: the PostgreSQL advisory lock key migrations hold (any constant shared by every pixelmill process)
ADVISORY_LOCK_KEY = 0x706978656C6D  # "pixelm"


class SchemaOutOfDate(RuntimeError):
    """The database's schema is not the one this pixelmill was built for."""


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _engine_url(url: str) -> str:
    return "postgresql+psycopg://" + url[len("postgresql://") :] if url.startswith("postgresql://") else url


@contextlib.contextmanager
def _quiet_alembic(verbose: bool) -> Iterator[None]:
    logger = logging.getLogger("alembic")
    before = logger.level
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def migration_lock(url: str) -> Iterator[None]:
    """One migrator at a time: a PostgreSQL advisory lock, or a file lock beside a SQLite database."""
    if url.startswith("postgresql"):
        import sqlalchemy as sa

        engine = sa.create_engine(_engine_url(url), poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
                    conn.commit()
        finally:
            engine.dispose()
        return
    path = url.split("///", 1)[-1] if url.startswith("sqlite") else ""
    if not path or path == ":memory:":
        yield
        return
    import fcntl

    lock_path = Path(path).with_name(Path(path).name + ".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def upgrade(url: str, revision: str = "head", verbose: bool = False) -> None:
    """Bring the schema to ``revision`` under the migration lock (a no-op when it is there)."""
    with migration_lock(url), _quiet_alembic(verbose):
        command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str, verbose: bool = False) -> None:
    with migration_lock(url), _quiet_alembic(verbose):
        command.downgrade(alembic_config(url), revision)


def current_heads(url: str) -> list[str]:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, pool

    engine = create_engine(_engine_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn, _quiet_alembic(False):
            return list(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()


def head_revision() -> str:
    """The newest revision the code ships."""
    from alembic.script import ScriptDirectory

    with _quiet_alembic(False):
        return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def schema_problem(url: str) -> str | None:
    """Why this database's schema cannot be used as it is, or None when it is current."""
    try:
        heads = current_heads(url)
    except Exception as e:  # unreachable database: say so rather than guess
        return f"the database cannot be reached ({type(e).__name__}: {e})"
    head = head_revision()
    if heads == [head]:
        return None
    if not heads:
        return f"the database has no pixelmill schema yet (this version needs revision {head}); run `pixelmill migrate` first"
    from alembic.script import ScriptDirectory

    known = {s.revision for s in ScriptDirectory.from_config(alembic_config(url)).walk_revisions()}
    if any(h not in known for h in heads):
        return (
            f"the database schema is at revision {', '.join(heads)}, newer than this version of pixelmill knows "
            f"(its newest is {head}); upgrade pixelmill on this machine"
        )
    return f"the database schema is at revision {', '.join(heads)} but this version needs {head}; run `pixelmill migrate` first"


def require_current(url: str) -> None:
    """Raise :class:`SchemaOutOfDate` (with what to do) unless the schema is at this version's head."""
    problem = schema_problem(url)
    if problem is not None:
        raise SchemaOutOfDate(problem)
