"""The database handle: engine, transactions, SQLite pragmas."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine


class Database:
    """Owns the SQLAlchemy engine.  ``transaction()`` is the one way to write.

    On SQLite a ``transaction()`` starts with ``BEGIN IMMEDIATE`` (WAL mode, busy
    timeout) so concurrent writers queue instead of failing on lock upgrades;
    plain ``engine.connect()`` reads use a deferred ``BEGIN`` and never block
    writers (WAL readers see a snapshot).
    """

    def __init__(self, url: str, echo: bool = False):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = sa.create_engine(
                url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20, max_overflow=20
            )
            sa.event.listen(self.engine, "connect", _sqlite_on_connect)
            sa.event.listen(self.engine, "begin", _sqlite_begin_immediate)
        else:
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://") :]
                self.url = url
            self.engine = sa.create_engine(url, echo=echo, pool_size=20, max_overflow=20, pool_pre_ping=True)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction; callbacks registered with :func:`after_commit` run once it committed."""
        with self.engine.connect() as conn:
            conn.execution_options(pixelmill_write=True)
            pending: list[Callable[[], None]] = []
            setattr(conn, _AFTER_COMMIT, pending)
            try:
                with conn.begin():
                    yield conn
            finally:
                setattr(conn, _AFTER_COMMIT, None)
        for fn in pending:  # reached only when the block committed
            fn()

    def dispose(self) -> None:
        self.engine.dispose()


_AFTER_COMMIT = "_pixelmill_after_commit"


def after_commit(conn: Connection, fn: Callable[[], None]) -> None:
    """Run ``fn`` once ``conn``'s transaction (from :meth:`Database.transaction`) has committed.

    Dropped when the transaction rolls back.  On a connection that did not come
    from :meth:`Database.transaction`, ``fn`` runs at once.
    """
    pending = getattr(conn, _AFTER_COMMIT, None)
    if pending is None:
        fn()
    else:
        pending.append(fn)


def _sqlite_on_connect(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" event emit BEGIN
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin_immediate(conn) -> None:
    write = conn.get_execution_options().get("pixelmill_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
