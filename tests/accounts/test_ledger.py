"""The credit ledger: exact integer micro-credits, a stored balance kept with each entry, and the migration to it."""

from __future__ import annotations

import random
import uuid

import pytest
import sqlalchemy as sa

from pixelmill.accounts import keys, ledger
from pixelmill.store import migrate
from pixelmill.store.db import Database
from tests.conftest import PG_ADMIN_URL, _pg_available, create_key


def _account(db: Database, name: str = "acme") -> str:
    with db.transaction() as conn:
        return keys.create_account(conn, name, "free")


@pytest.fixture
def db(db_url):
    migrate.upgrade(db_url)
    d = Database(db_url)
    yield d
    d.dispose()


def test_sub_cent_amounts_add_up_exactly(db):
    aid = _account(db)
    with db.transaction() as conn:
        for i in range(10):
            ledger.grant(conn, aid, 0.000001, f"g{i}")
        for i in range(10):
            ledger.grant(conn, aid, 0.1, f"t{i}")
        assert ledger.balance_micro(conn, aid) == 1_000_010
        assert ledger.balance(conn, aid) == 1.00001


def test_the_stored_balance_moves_with_every_entry_and_reconciles(db):
    aid = _account(db)
    rng = random.Random(7)
    expected = 0
    with db.transaction() as conn:
        ledger.grant(conn, aid, 500, "start")
        expected += 500_000_000
        for i in range(40):
            held = round(rng.uniform(0.01, 3), 4)
            actual = rng.choice([0.0, round(held * rng.random(), 4), held])
            assert ledger.hold(conn, aid, f"e{i}", held)
            assert not ledger.hold(conn, aid, f"e{i}", held)  # exactly once
            assert ledger.settle(conn, aid, f"e{i}", held, actual)
            assert not ledger.settle(conn, aid, f"e{i}", held, actual)
            expected -= ledger.to_micro(actual)
        assert ledger.balance_micro(conn, aid) == expected
        assert ledger.ledger_sum_micro(conn, aid) == expected
        assert ledger.reconcile(conn) == []


def test_a_submit_reads_the_balance_without_summing_the_ledger(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, start=False)
    key = create_key(rt, credits=50)
    from pixelmill.accounts.keys import authenticate
    from pixelmill.engine.service import Submission

    with rt.db.engine.connect() as conn:
        who = authenticate(conn, key)
    statements: list[str] = []
    sa.event.listen(rt.db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    graph = {"nodes": {"gen": {"type": "text_to_image", "params": {"model": "fake", "prompt": "x", "width": 64, "height": 64}}}}
    rt.executions.submit(Submission(principal=who, graph=graph, dialect="test", label="t"))
    summing = [s for s in statements if "credit_ledger" in s and "sum(" in s.lower()]
    assert summing == [], summing


def _seed_old_ledger(url: str) -> dict[str, float]:
    """Accounts with float ledger rows as revision 0002 stored them; returns each balance as 0002 computed it."""
    engine = sa.create_engine(url)
    rng = random.Random(11)
    old: dict[str, float] = {}
    with engine.begin() as conn:
        for a in range(5):
            aid = f"acct{a}"
            conn.execute(sa.text("INSERT INTO accounts (id, name, plan, created_at, webhook_secrets) VALUES (:i, :i, 'free', 1, '[]')"), {"i": aid})
            amounts = [0.1, 0.2, 0.3, 1e-4, 123456.7891, -0.0003] + [round(rng.uniform(-50, 50), 4) for _ in range(200)]
            for n, amount in enumerate(amounts):
                conn.execute(
                    sa.text("INSERT INTO credit_ledger (account_id, kind, amount, entry_key, created_at) VALUES (:a, 'grant', :m, :k, 1)"),
                    {"a": aid, "m": amount, "k": f"{aid}:{n}"},
                )
            total = conn.execute(sa.text("SELECT SUM(amount) FROM credit_ledger WHERE account_id = :a"), {"a": aid}).scalar()
            old[aid] = round(float(total), 4)  # what ledger.balance answered at 0002
    engine.dispose()
    return old


def _check_migration(url: str) -> None:
    migrate.upgrade(url, "0002")
    old = _seed_old_ledger(url)
    migrate.upgrade(url)
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            for aid, value in old.items():
                assert ledger.balance_micro(conn, aid) == ledger.to_micro(value), aid
                assert ledger.balance(conn, aid) == value
            assert ledger.reconcile(conn) == []
    finally:
        db.dispose()
    migrate.downgrade(url, "0002")  # and back: the float amounts return
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        for aid, value in old.items():
            total = conn.execute(sa.text("SELECT SUM(amount) FROM credit_ledger WHERE account_id = :a"), {"a": aid}).scalar()
            assert round(float(total), 4) == value
    engine.dispose()


def test_migration_keeps_every_balance_to_the_last_digit_on_sqlite(tmp_path):
    _check_migration(f"sqlite:///{tmp_path / 'old.db'}")


def test_migration_keeps_every_balance_to_the_last_digit_on_postgresql():
    if not _pg_available():
        pytest.skip("PostgreSQL is not reachable: PostgreSQL migration test NOT run")
    name = f"pixelmill_mig_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        _check_migration(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"))
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
