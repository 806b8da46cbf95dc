"""Prebuilt statements answer exactly as SQLAlchemy does, on SQLite and PostgreSQL, without its per-call machinery."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from pixelmill.domain.status import ExecutionStatus
from pixelmill.store.db import Database, database_busy
from pixelmill.store.prebuilt import Prebuilt, Rows, prebuilt

metadata = sa.MetaData()
things = sa.Table(
    "prebuilt_things",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("queue", sa.String(20), nullable=False),
    sa.Column("data", sa.JSON),
    sa.Column("weight", sa.Float, nullable=False, default=0.5),
    sa.Column("cached", sa.Boolean, nullable=False, default=False),
    sa.Column("tries", sa.Integer, nullable=False, default=0),
)

INSERT = prebuilt(sa.insert(things))
UPDATE = prebuilt(sa.update(things).where(things.c.id == sa.bindparam("b_id")))
BY_ID = prebuilt(sa.select(things).where(things.c.id == sa.bindparam("id")))
PICK = prebuilt(
    sa.select(things.c.id, things.c.queue.label("lane"))
    .where(
        things.c.queue.in_(sa.bindparam("queues", expanding=True)),
        things.c.id.not_in(sa.bindparam("taken", expanding=True)),
        things.c.status.in_(ExecutionStatus.active()),  # a constant list
    )
    .order_by(things.c.id)
)
TOTAL = prebuilt(sa.select(sa.func.coalesce(sa.func.sum(things.c.tries), 0)).where(things.c.queue == sa.bindparam("queue")))


@pytest.fixture
def db(db_url):
    database = Database(db_url, busy_timeout_s=0.2)
    metadata.drop_all(database.engine)
    metadata.create_all(database.engine)
    yield database
    metadata.drop_all(database.engine)
    database.dispose()


def _rows(n: int = 12) -> list[dict]:
    return [
        {"id": f"r{i:02d}", "status": ["queued", "running", "succeeded"][i % 3], "queue": "ab"[i % 2], "data": {"i": i, "tags": ["x"] * (i % 2)}}
        for i in range(n)
    ]


def test_a_prebuilt_statement_reads_and_writes_what_sqlalchemy_does(db):
    with db.transaction() as conn:
        result = conn.execute(INSERT, _rows())  # executemany, with the columns' constant defaults
        conn.execute(INSERT, {"id": "z", "status": "queued", "queue": "a", "data": [1, 2], "weight": 2.25, "cached": True, "tries": 3})
        assert conn.execute(UPDATE, {"b_id": "r01", "tries": 7, "cached": True}).rowcount == 1
        assert conn.execute(UPDATE, {"b_id": "missing", "tries": 1}).rowcount == 0
    assert isinstance(result, Rows)  # it did not go through SQLAlchemy's execution
    with db.engine.connect() as conn:
        for rid in ("r00", "r01", "z", "nope"):
            fast = conn.execute(BY_ID, {"id": rid}).first()
            slow = conn.execute(BY_ID.statement, {"id": rid}).first()
            assert (fast is None) == (slow is None)
            if slow is not None:
                assert tuple(fast) == tuple(slow)
                assert fast._mapping == dict(slow._mapping)
                assert (fast.data, fast.weight, fast.cached, fast.tries) == (slow.data, slow.weight, slow.cached, slow.tries)
        z = conn.execute(BY_ID, {"id": "z"}).one()
        assert (z.data, z.weight, z.cached, z.tries) == ([1, 2], 2.25, True, 3)
        r00 = conn.execute(BY_ID, {"id": "r00"}).one()
        assert (r00.data, r00.weight, r00.cached, r00.tries) == ({"i": 0, "tags": []}, 0.5, False, 0)
        assert conn.execute(TOTAL, {"queue": "b"}).scalar() == 7
        assert conn.execute(TOTAL, {"queue": "none"}).scalar_one() == 0


@pytest.mark.parametrize(
    "queues, taken",
    [(["a"], []), (["a", "b"], ["r00", "r01"]), ([], ["r03"]), (["b"], ["r03"]), (["a", "b", "c"], ["r04", "r06", "r08"])],
)
def test_in_lists_of_every_length_bind_as_sqlalchemy_binds_them(db, queues, taken):
    with db.transaction() as conn:
        conn.execute(INSERT, _rows())
    with db.engine.connect() as conn:
        fast = conn.execute(PICK, {"queues": queues, "taken": taken}).all()
        slow = conn.execute(PICK.statement, {"queues": queues, "taken": taken}).all()
    assert [tuple(r) for r in fast] == [tuple(r) for r in slow]
    assert [r.lane for r in fast] == [r.lane for r in slow]
    expected = [r["id"] for r in _rows() if r["queue"] in queues and r["id"] not in taken and r["status"] in ("queued", "running")]
    assert [r.id for r in fast] == expected


def test_a_read_begins_a_transaction_that_closing_the_connection_ends(db):
    with db.engine.connect() as conn:
        conn.execute(INSERT, {"id": "gone", "status": "queued", "queue": "a"})
        assert conn.in_transaction()
    with db.engine.connect() as conn:  # never committed: rolled back on close, as with conn.execute of a statement
        assert conn.execute(BY_ID, {"id": "gone"}).first() is None
    with pytest.raises(RuntimeError):
        with db.transaction() as conn:
            conn.execute(INSERT, {"id": "half", "status": "queued", "queue": "a"})
            raise RuntimeError("the transaction fails after its insert")
    with db.engine.connect() as conn:
        assert conn.execute(BY_ID, {"id": "half"}).first() is None


def test_errors_are_sqlalchemys_and_a_locked_database_is_busy(db):
    with db.transaction() as conn:
        conn.execute(INSERT, {"id": "dup", "status": "queued", "queue": "a"})
    with pytest.raises(sa.exc.IntegrityError):
        with db.transaction() as conn:
            conn.execute(INSERT, {"id": "dup", "status": "queued", "queue": "a"})
    with pytest.raises(sa.exc.ArgumentError):
        with db.engine.connect() as conn:
            conn.execute(BY_ID, {"other": "x"})
    if not db.is_sqlite:
        return
    other = sa.create_engine(db.url)  # another process's writer holds the file
    holding, release = threading.Event(), threading.Event()

    def hold():
        with other.connect() as c:
            c.exec_driver_sql("BEGIN IMMEDIATE")
            holding.set()
            release.wait(10)
            c.exec_driver_sql("ROLLBACK")

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert holding.wait(5)
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError) as err:
            with db.engine.connect() as conn:  # a deferred transaction's first write waits for the lock
                conn.execute(INSERT, {"id": "late", "status": "queued", "queue": "a"})
        assert database_busy(err.value) is not None
        assert time.monotonic() - started < 5
    finally:
        release.set()
        t.join()
        other.dispose()


def test_a_statement_listener_sees_every_prebuilt_statement(db):
    """Statement counters and tracing instrumentation listen to cursor executions: with one
    attached, a prebuilt statement runs through SQLAlchemy, so the listener sees what runs."""
    seen: list[str] = []

    def listen(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", listen)
    try:
        with db.transaction() as conn:
            result = conn.execute(INSERT, {"id": "seen", "status": "queued", "queue": "a"})
            assert not isinstance(result, Rows)
        with db.engine.connect() as conn:
            assert conn.execute(BY_ID, {"id": "seen"}).one().status == "queued"
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", listen)
    assert any(s.startswith("INSERT INTO prebuilt_things") for s in seen)
    assert any(s.startswith("SELECT prebuilt_things.id") for s in seen)


def test_a_prebuilt_statement_builds_on_as_its_statement():
    narrower = BY_ID.where(things.c.status == "queued")
    assert not isinstance(narrower, Prebuilt)
    assert "prebuilt_things.status" in str(narrower)


def test_none_is_stored_as_sqlalchemy_stores_it(db):
    """A JSON column's None is JSON null, as through SQLAlchemy (its type says so, not the driver)."""
    with db.transaction() as conn:
        conn.execute(INSERT, {"id": "fast", "status": "queued", "queue": "a", "data": None})
        conn.execute(INSERT.statement, {"id": "slow", "status": "queued", "queue": "a", "data": None})
    with db.engine.connect() as conn:
        stored = dict(conn.execute(sa.text("SELECT id, data IS NULL FROM prebuilt_things")).all())
        assert stored["fast"] == stored["slow"]
        assert conn.execute(BY_ID, {"id": "fast"}).one().data is None


def test_each_engine_binds_with_its_own_options(tmp_path):
    """Forms are kept per engine: an engine's options (here its JSON serializer) choose its processors."""
    import json

    plain = sa.create_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    tagged = sa.create_engine(f"sqlite:///{tmp_path / 'tagged.db'}", json_serializer=lambda o: json.dumps({"tagged": o}))
    try:
        for engine in (plain, tagged, plain):
            metadata.create_all(engine)
            with engine.begin() as conn:
                conn.execute(INSERT, {"id": f"r{len(conn.execute(sa.text('SELECT id FROM prebuilt_things')).all())}", "status": "q", "queue": "a", "data": [1]})
        with plain.connect() as conn:
            assert [r[0] for r in conn.execute(sa.text("SELECT data FROM prebuilt_things"))] == ["[1]", "[1]"]
        with tagged.connect() as conn:
            assert [r[0] for r in conn.execute(sa.text("SELECT data FROM prebuilt_things"))] == ['{"tagged": [1]}']
    finally:
        plain.dispose()
        tagged.dispose()


def test_an_engines_compiled_forms_go_with_it(tmp_path):
    """What is compiled for an engine is freed with the engine: a process that opens and closes
    engines (a test run, a command line that opens its own) does not keep every one it had."""
    import gc
    import weakref

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'gone.db'}")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(INSERT, {"id": "r1", "status": "q", "queue": "a", "data": [1]})
        assert conn.execute(BY_ID, {"id": "r1"}).one().queue == "a"
        conn.execute(UPDATE, {"b_id": "r1", "tries": 2})
        assert conn.execute(TOTAL, {"queue": "a"}).scalar() == 2
    dialect = weakref.ref(engine.dialect)
    engine.dispose()
    del engine, conn
    gc.collect()
    assert dialect() is None


def test_a_read_holds_no_transaction_open_on_postgresql_and_one_snapshot_on_sqlite(db):
    """``Database.read()``: on PostgreSQL each statement runs on its own (no BEGIN and ROLLBACK round trips,
    no session left "idle in transaction" between statements) and sees what was committed before it, as
    READ COMMITTED statements do; on SQLite the read is one snapshot."""
    with db.transaction() as conn:
        conn.execute(INSERT, [{"id": "a", "status": "queued", "queue": "q"}])
    with db.read() as conn:
        assert conn.execute(BY_ID, {"id": "a"}).first().status == "queued"
        if not db.is_sqlite:
            pid = conn.execute(sa.text("select pg_backend_pid()")).scalar()
            with db.engine.connect() as other:
                state = other.execute(sa.text("select state from pg_stat_activity where pid = :p"), {"p": pid}).scalar()
            assert state == "idle"  # not "idle in transaction"
        with db.transaction() as writer:
            writer.execute(UPDATE, {"b_id": "a", "status": "running"})
        seen = conn.execute(BY_ID, {"id": "a"}).first().status
        assert seen == ("queued" if db.is_sqlite else "running")
    with db.read() as conn:  # written through the rows it reads, as every read is
        assert conn.execute(BY_ID, {"id": "a"}).first().status == "running"


def _terminate_backends(url: str) -> None:
    """What a PostgreSQL restart (or an idle timeout, or a proxy) does to a pool's connections."""
    name = url.rsplit("/", 1)[-1]
    admin = sa.create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
    admin.dispose()


def _count_pings(db: Database, monkeypatch) -> list[int]:
    pings = [0]
    do_ping = db.engine.dialect.do_ping

    def counted(dbapi_connection):
        pings[0] += 1
        return do_ping(dbapi_connection)

    monkeypatch.setattr(db.engine.dialect, "do_ping", counted)
    return pings


def test_a_connection_postgresql_dropped_while_it_sat_idle_fails_no_request(pg_database, monkeypatch):
    """PostgreSQL drops the pool's idle connections (a restart, an idle timeout, a proxy): the next
    reads and writes get fresh connections instead of failing."""
    db = Database(pg_database)
    monkeypatch.setattr(db, "ping_after_idle_s", 0.2)
    try:
        with db.read() as a, db.read() as b:  # two connections in the pool
            assert a.execute(sa.text("select 1")).scalar() == b.execute(sa.text("select 1")).scalar() == 1
        _terminate_backends(pg_database)
        time.sleep(0.3)
        with db.read() as conn:
            assert conn.execute(sa.text("select 2")).scalar() == 2
        with db.transaction() as conn:
            assert conn.execute(sa.text("select 3")).scalar() == 3
    finally:
        db.engine.dispose()


def test_a_connection_used_moments_ago_is_not_pinged_again(pg_database, monkeypatch):
    """A connection back in the pool for less than ``ping_after_idle_s`` is handed out as it is: a busy
    server's reads make no extra round trip to check it (before: one ``pool_pre_ping`` round trip per
    checkout, about 150 us of a read's CPU); one that sat idle longer is checked first."""
    db = Database(pg_database)
    pings = _count_pings(db, monkeypatch)
    try:
        for _ in range(20):
            with db.read() as conn:
                conn.execute(sa.text("select 1")).scalar()
            with db.transaction() as conn:
                conn.execute(sa.text("select 1")).scalar()
        assert pings[0] == 0
        monkeypatch.setattr(db, "ping_after_idle_s", 0.2)
        time.sleep(0.3)
        with db.read() as conn:
            conn.execute(sa.text("select 1")).scalar()
        assert pings[0] == 1
    finally:
        db.engine.dispose()


def test_a_connection_dropped_moments_after_its_last_use_fails_one_read_as_busy_and_the_pool_is_renewed(pg_database):
    """PostgreSQL restarts within ``ping_after_idle_s`` of a connection's last use: the one read that meets
    the dead connection fails as the retryable 503 ``database_busy`` (nothing was changed), not as a 500,
    and every connection pooled before it is replaced, so the next read succeeds."""
    db = Database(pg_database)
    try:
        with db.read() as a, db.read() as b:
            assert a.execute(sa.text("select 1")).scalar() == b.execute(sa.text("select 1")).scalar() == 1
        _terminate_backends(pg_database)
        with pytest.raises(sa.exc.OperationalError) as failed:
            with db.read() as conn:
                conn.execute(sa.text("select 1"))
        busy = database_busy(failed.value)
        assert busy is not None and (busy.status, busy.code) == (503, "database_busy") and busy.details["retry_after"] > 0
        with db.read() as a, db.read() as b:
            assert a.execute(sa.text("select 2")).scalar() == b.execute(sa.text("select 2")).scalar() == 2
    finally:
        db.engine.dispose()
