"""The database handle: engine, transactions, SQLite pragmas."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pixelmill.store.prebuilt import driver_sql

if TYPE_CHECKING:
    from pixelmill.errors import ServiceUnavailable

T = TypeVar("T")
log = logging.getLogger("pixelmill.store")


_IDLE_SINCE = "pixelmill_idle_since"


def _mark_idle(_dbapi_connection, record) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


class Database:
    """Owns the SQLAlchemy engine.  ``transaction()`` is the one way to write.

    On SQLite a ``transaction()`` starts with ``BEGIN IMMEDIATE`` (WAL mode, busy
    timeout) so concurrent writers queue instead of failing on lock upgrades;
    plain ``engine.connect()`` reads use a deferred ``BEGIN`` and never block
    writers (WAL readers see a snapshot).  Writers of one process queue on a
    lock of their own first: SQLite's busy handler polls with sleeps of up to
    100 ms, so a crowd of threads waiting in it hands the file over late and
    unfairly, while a process lock hands it over the moment the last writer
    commits (other processes, such as the command line, still meet the busy
    timeout).
    """

    def __init__(self, url: str, echo: bool = False, busy_timeout_s: float = 15.0):
        self.url = url
        self.busy_timeout_s = busy_timeout_s
        wait_ms = max(1, int(busy_timeout_s * 1000))
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = sa.create_engine(
                url, echo=echo, connect_args={"check_same_thread": False, "timeout": busy_timeout_s}, pool_size=20, max_overflow=20
            )
            sa.event.listen(self.engine, "connect", lambda dbapi_conn, _record: _sqlite_on_connect(dbapi_conn, wait_ms))
            sa.event.listen(self.engine, "begin", _sqlite_begin_immediate)
        else:
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://") :]
                self.url = url
            # a row or table lock that is not granted in time fails (as SQLite's busy timeout does)
            self.engine = sa.create_engine(
                url, echo=echo, pool_size=20, max_overflow=20, connect_args={"options": f"-c lock_timeout={wait_ms}"}
            )
            sa.event.listen(self.engine, "checkin", _mark_idle)
            sa.event.listen(self.engine, "checkout", self._ping_if_idle)
        self._write_lock = threading.RLock() if self.is_sqlite else None
        # PostgreSQL reads run each statement on its own: no BEGIN and ROLLBACK round trips around them
        self._reader: Engine = self.engine if self.is_sqlite else self.engine.execution_options(isolation_level="AUTOCOMMIT")

    #: a pooled PostgreSQL connection idle for longer is checked with a round trip before use
    ping_after_idle_s = 2.0

    def _ping_if_idle(self, dbapi_connection, record, _proxy) -> None:
        """Check a pooled connection that sat idle (PostgreSQL may have dropped it: a restart, an idle
        timeout, a proxy) before handing it out; a failed check replaces every connection pooled
        before it, as ``pool_pre_ping`` does.  One back in the pool for less than
        :attr:`ping_after_idle_s` is handed out as it is: ``pool_pre_ping``'s round trip at every
        checkout was about 150 us of CPU on a read of 1 ms.  A restart within that time fails the
        one request that meets it, which then invalidates the pool."""
        idle_since = record.info.get(_IDLE_SINCE)  # None: a new connection
        if idle_since is None or time.monotonic() - idle_since < self.ping_after_idle_s:
            return
        dialect = self.engine.dialect
        try:
            alive = dialect.do_ping(dbapi_connection)
        except Exception as exc:
            if not dialect.is_disconnect(exc, dbapi_connection, None):
                raise
            alive = False
        if not alive:
            raise sa.exc.InvalidatePoolError("a pooled connection was dropped while idle")

    def read(self) -> Connection:
        """A connection to read with (``with db.read() as conn:``); never to write (see :meth:`transaction`).

        On PostgreSQL its statements run without a transaction around them, each seeing what was
        committed when it started, as each statement of a READ COMMITTED transaction does anyway:
        a read saves the ``BEGIN`` and ``ROLLBACK`` round trips.  On SQLite it is a deferred
        transaction, one snapshot for the whole read."""
        return self._reader.connect()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction; callbacks registered with :func:`after_commit` run once it committed."""
        with self._writer(), self.engine.connect() as conn:
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

    @contextlib.contextmanager
    def _writer(self) -> Iterator[None]:
        """This process's turn to write (SQLite); a turn not given within the busy timeout is "database is locked"."""
        if self._write_lock is None:
            yield
            return
        if not self._write_lock.acquire(timeout=self.busy_timeout_s):
            import sqlite3

            raise sa.exc.OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked"))
        try:
            yield
        finally:
            self._write_lock.release()

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


def _sqlite_on_connect(dbapi_conn, busy_timeout_ms: int = 30000) -> None:
    dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" event emit BEGIN
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cur.close()


def _sqlite_begin_immediate(conn) -> None:
    write = conn.get_execution_options().get("pixelmill_write", False)
    driver_sql(conn, "BEGIN IMMEDIATE" if write else "BEGIN")


BUSY_RETRY_AFTER_S = 2
_PG_BUSY_STATES = {"55P03", "57014", "40P01", "40001"}  # lock not available, statement timeout, deadlock, serialization


def database_busy(exc: BaseException) -> "ServiceUnavailable | None":
    """The 503 to answer when ``exc`` means the database stayed locked (or its pool stayed full, or it
    dropped the connection); else None.

    Such a failure is the server's momentary state, not the client's request: it is
    retryable, and says when to retry.
    """
    from sqlalchemy.exc import OperationalError, TimeoutError as PoolTimeout

    from pixelmill.errors import ServiceUnavailable

    busy = False
    if isinstance(exc, PoolTimeout):
        busy = True
    elif isinstance(exc, OperationalError):
        orig = exc.orig
        text = str(orig).lower()
        busy = "database is locked" in text or "database table is locked" in text or getattr(orig, "sqlstate", None) in _PG_BUSY_STATES
        # the database dropped the connection (a restart): SQLAlchemy renewed the pool, a retry gets a new one
        busy = busy or exc.connection_invalidated
    if not busy:
        return None
    return ServiceUnavailable(  # answered with Retry-After (pixelmill.presenters.limit_headers)
        "The database is busy; nothing was changed, retry shortly", code="database_busy", retry_after=BUSY_RETRY_AFTER_S
    )


def retry_when_busy(
    fn: Callable[[], T], give_up_after_s: float, what: str = "write", first_delay_s: float = 0.05, max_delay_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``, called again with backoff while it fails because the database is busy (:func:`database_busy`).

    For writes a process must not lose (a node run's result, its failure): ``fn`` is
    one whole transaction, so a try that failed changed nothing.  Each try waits up to
    the busy timeout for the lock; between tries the wait doubles (with jitter) up to
    ``max_delay_s``.  After ``give_up_after_s`` the last error is raised; any other
    error at once.
    """
    deadline = time.monotonic() + give_up_after_s
    delay = first_delay_s
    tries = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if database_busy(exc) is None or time.monotonic() + delay > deadline:
                raise
            tries += 1
            if tries == 1 or tries % 10 == 0:
                log.warning("database busy during %s; retrying (try %d)", what, tries + 1)
        sleep(delay * random.uniform(0.5, 1.0))
        delay = min(max_delay_s, delay * 2)
