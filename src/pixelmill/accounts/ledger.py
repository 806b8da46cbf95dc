"""The append-only credit ledger.

Available credits = the sum of an account's entries.  Submitting an execution
*holds* its estimate (a negative entry); when it ends, one *settle* entry gives
back the difference between hold and actual cost (the whole hold on failure,
moderation or cancel).  Every entry has a unique ``entry_key`` so retries and
re-run nodes can never bill twice.  A plan's ``monthly_credits`` are granted once
per calendar month (UTC), from the month after the account was created, when
the account first submits or reads its balance in that month.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from pixelmill.store.tables import accounts, credit_ledger


def balance(conn: Connection, account_id: str) -> float:
    total = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(credit_ledger.c.amount), 0.0)).where(
            credit_ledger.c.account_id == account_id
        )
    ).scalar()
    return round(float(total or 0.0), 4)


def lock_account(conn: Connection, account_id: str) -> None:
    """Serialise balance checks per account (PostgreSQL row lock; SQLite is already serial)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(accounts.c.id).where(accounts.c.id == account_id).with_for_update())


def add_entry(
    conn: Connection, account_id: str, kind: str, amount: float, entry_key: str, execution_id: str | None = None, note: str | None = None
) -> bool:
    """Append one entry; False (and nothing written) if ``entry_key`` was already used."""
    exists = conn.execute(sa.select(credit_ledger.c.id).where(credit_ledger.c.entry_key == entry_key)).first()
    if exists:
        return False
    try:
        with conn.begin_nested():
            conn.execute(
                sa.insert(credit_ledger).values(
                    account_id=account_id,
                    execution_id=execution_id,
                    kind=kind,
                    amount=round(float(amount), 4),
                    entry_key=entry_key,
                    note=note,
                    created_at=time.time(),
                )
            )
    except IntegrityError:
        return False
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
    if conn.execute(sa.select(credit_ledger.c.id).where(credit_ledger.c.entry_key == key)).first():
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
    return add_entry(conn, account_id, "hold", -amount, f"hold:{execution_id}", execution_id)


def settle(conn: Connection, account_id: str, execution_id: str, held: float, actual: float) -> bool:
    """Give back ``held - actual`` (all of it when actual is 0).  Exactly once per execution."""
    refund = max(0.0, held - actual)
    kind = "capture" if actual > 0 else "release"
    return add_entry(conn, account_id, kind, refund, f"settle:{execution_id}", execution_id, note=f"actual={actual}")


def entries(conn: Connection, account_id: str, limit: int = 100) -> list[dict]:
    rows = conn.execute(
        sa.select(credit_ledger)
        .where(credit_ledger.c.account_id == account_id)
        .order_by(credit_ledger.c.id.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in rows]
