"""The append-only credit ledger, in exact integer micro-credits, with a stored balance.

Money is kept as integers: one credit is :data:`MICRO` (1 000 000) micro-credits,
so sums never drift.  The public functions take and return credits (what the
APIs show); :func:`to_micro` rounds a credit amount to the nearest micro-credit.

Every entry changes ``accounts.credit_balance_micro`` by its amount in the same
transaction that appends it, so reading a balance is one row
(:func:`balance`) however long the ledger grows.  The ledger stays the record:
:func:`reconcile` compares the stored balance with the sum of the entries.

Submitting an execution *holds* its estimate (a negative entry); when it ends,
one *settle* entry gives back the difference between hold and actual cost (the
whole hold on failure, moderation or cancel).  Every entry has a unique
``entry_key`` so retries and re-run nodes can never bill twice.  A plan's
``monthly_credits`` are granted once per calendar month (UTC), from the month
after the account was created, when the account first submits or reads its
balance in that month.
"""

from __future__ import annotations

import time
from decimal import ROUND_HALF_EVEN, Decimal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from pixelmill.store.prebuilt import prebuilt
from pixelmill.store.tables import accounts, credit_ledger

MICRO = 1_000_000


def to_micro(credits: float | int | str | Decimal) -> int:
    """Credits -> integer micro-credits (exact for decimal input; floats by their shortest repr)."""
    value = credits if isinstance(credits, Decimal) else Decimal(str(credits))
    return int((value * MICRO).to_integral_value(rounding=ROUND_HALF_EVEN))


def from_micro(micro: int) -> float:
    """Integer micro-credits -> credits, for JSON (exact to the micro-credit for any realistic balance)."""
    return int(micro) / MICRO


# Statements built once: building one per call costs more than executing it.
_BALANCE = prebuilt(sa.select(accounts.c.credit_balance_micro).where(accounts.c.id == sa.bindparam("account")))
_ENTRY = prebuilt(sa.select(credit_ledger.c.id).where(credit_ledger.c.entry_key == sa.bindparam("entry_key")))
#: per dialect (the two the store runs on): an entry whose key was used inserts nothing, and returns no row
_INSERT_NEW_ENTRY = {
    dialect.__name__.rsplit(".", 1)[-1]: prebuilt(
        dialect.insert(credit_ledger).on_conflict_do_nothing(index_elements=[credit_ledger.c.entry_key]).returning(credit_ledger.c.id)
    )
    for dialect in (sqlite, postgresql)
}
_MOVE_BALANCE = prebuilt(
    sa.update(accounts)
    .where(accounts.c.id == sa.bindparam("account"))
    .values(credit_balance_micro=accounts.c.credit_balance_micro + sa.bindparam("change", type_=sa.BigInteger))
)


def balance_micro(conn: Connection, account_id: str) -> int:
    """The stored balance: one indexed row, kept in step with the ledger by :func:`add_entry`."""
    value = conn.execute(_BALANCE, {"account": account_id}).scalar()
    return int(value or 0)


def balance(conn: Connection, account_id: str) -> float:
    return from_micro(balance_micro(conn, account_id))


def ledger_sum_micro(conn: Connection, account_id: str) -> int:
    total = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(credit_ledger.c.amount_micro), 0)).where(credit_ledger.c.account_id == account_id)
    ).scalar()
    return int(total or 0)


def reconcile(conn: Connection, account_id: str | None = None) -> list[dict]:
    """Accounts whose stored balance differs from the sum of their ledger entries (empty when all agree)."""
    sums = (
        sa.select(credit_ledger.c.account_id, sa.func.sum(credit_ledger.c.amount_micro).label("total"))
        .group_by(credit_ledger.c.account_id)
        .subquery()
    )
    q = sa.select(accounts.c.id, accounts.c.credit_balance_micro, sa.func.coalesce(sums.c.total, 0).label("total")).select_from(
        accounts.outerjoin(sums, sums.c.account_id == accounts.c.id)
    )
    if account_id is not None:
        q = q.where(accounts.c.id == account_id)
    return [
        {"account_id": r.id, "stored_micro": int(r.credit_balance_micro), "ledger_micro": int(r.total)}
        for r in conn.execute(q)
        if int(r.credit_balance_micro) != int(r.total)
    ]


def lock_account(conn: Connection, account_id: str) -> None:
    """Serialise balance checks per account (PostgreSQL row lock; SQLite is already serial)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(accounts.c.id).where(accounts.c.id == account_id).with_for_update())


def add_entry(
    conn: Connection, account_id: str, kind: str, amount: float | Decimal, entry_key: str, execution_id: str | None = None,
    note: str | None = None, *, micro: int | None = None,
) -> bool:
    """Append one entry and move the stored balance by it; False (nothing written) if ``entry_key`` was used."""
    change = to_micro(amount) if micro is None else int(micro)
    entry = dict(account_id=account_id, execution_id=execution_id, kind=kind, amount_micro=change, entry_key=entry_key, note=note,
                 created_at=time.time())
    if conn.execute(_INSERT_NEW_ENTRY[conn.dialect.name], entry).first() is None:
        return False  # the key was used: by an earlier call, or by a concurrent one that committed first
    conn.execute(_MOVE_BALANCE, {"account": account_id, "change": change})
    return True


def grant(conn: Connection, account_id: str, amount: float, entry_key: str, note: str | None = None) -> bool:
    return add_entry(conn, account_id, "grant", amount, entry_key, note=note)


def _month(when: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(when))


def monthly_grant_due(conn: Connection, account_id: str, amount: float, now: float | None = None) -> str | None:
    """The calendar month (UTC, ``YYYY-MM``) whose plan grant this account has not had yet, or None.

    No grant is due for the month the account was created in: its initial
    credits cover that month.
    """
    if amount <= 0:
        return None
    month = _month(time.time() if now is None else now)
    key = f"monthly:{account_id}:{month}"
    if conn.execute(_ENTRY, {"entry_key": key}).first():
        return None  # the usual case once granted: one indexed lookup
    created = conn.execute(sa.select(accounts.c.created_at).where(accounts.c.id == account_id)).scalar()
    if created is None or _month(created) == month:
        return None
    return month


def grant_monthly(conn: Connection, account_id: str, amount: float, now: float | None = None) -> bool:
    """Grant the plan's monthly credits once per calendar month (UTC); True when granted now."""
    month = monthly_grant_due(conn, account_id, amount, now)
    if month is None:
        return False
    return add_entry(conn, account_id, "grant", amount, f"monthly:{account_id}:{month}", note=f"monthly credits {month}")


def hold(conn: Connection, account_id: str, execution_id: str, amount: float) -> bool:
    return add_entry(conn, account_id, "hold", 0, f"hold:{execution_id}", execution_id, micro=-to_micro(amount))


def settle(conn: Connection, account_id: str, execution_id: str, held: float, actual: float) -> bool:
    """Give back ``held - actual`` (all of it when actual is 0).  Exactly once per execution."""
    return settle_micro(conn, account_id, execution_id, to_micro(held), to_micro(actual))


def settle_micro(conn: Connection, account_id: str, execution_id: str, held_micro: int, actual_micro: int) -> bool:
    """:func:`settle` with both amounts in micro-credits."""
    refund = max(0, int(held_micro) - int(actual_micro))
    kind = "capture" if actual_micro > 0 else "release"
    return add_entry(
        conn, account_id, kind, 0, f"settle:{execution_id}", execution_id, note=f"actual={from_micro(actual_micro)}", micro=refund
    )


def entries(conn: Connection, account_id: str, limit: int = 100) -> list[dict]:
    rows = conn.execute(
        sa.select(credit_ledger)
        .where(credit_ledger.c.account_id == account_id)
        .order_by(credit_ledger.c.id.desc())
        .limit(limit)
    )
    return [{**dict(r._mapping), "amount": from_micro(r.amount_micro)} for r in rows]
