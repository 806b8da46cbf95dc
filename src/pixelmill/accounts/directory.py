"""Accounts as an operator manages them: open, list, plan changes, keys, grants, usage.

The admin API and the command line both use :class:`AccountDirectory`; each
method is one transaction and answers with typed views.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pixelmill.accounts import keys, ledger
from pixelmill.accounts.plans import Plan, open_account
from pixelmill.accounts.usage import account_usage, usage_by_day
from pixelmill.errors import Conflict, InvalidInput, NotFound
from pixelmill.store.db import Database
from pixelmill.store.tables import accounts, api_keys

MAX_OWN_KEYS = 50
"""Active keys an account may hold when its keys create keys (an operator may add more)."""


@dataclass(frozen=True)
class AccountView:
    id: str
    name: str
    plan: str
    created_at: float
    disabled_at: float | None
    credits: float
    safety_tolerance: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GrantResult:
    account_id: str
    entry_key: str
    amount: float
    granted: bool
    """False when a grant with this ``entry_key`` was made before (nothing was added)."""
    credits: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AccountDirectory:
    def __init__(self, db: Database, plans: Mapping[str, Plan], default_plan: str):
        self.db = db
        self.plans = plans
        self.default_plan = default_plan

    def check_plan(self, plan: str) -> str:
        if plan not in self.plans:
            raise InvalidInput(
                f"Unknown plan {plan!r}; plans: {', '.join(sorted(self.plans))}", code="unknown_plan", plans=sorted(self.plans)
            )
        return plan

    def _view(self, conn: Connection, account_id: str) -> AccountView:
        row = conn.execute(sa.select(accounts).where(accounts.c.id == account_id)).first()
        if row is None:
            raise NotFound(f"Account {account_id} not found", code="account_not_found")
        return AccountView(
            id=row.id,
            name=row.name,
            plan=row.plan,
            created_at=row.created_at,
            disabled_at=row.disabled_at,
            credits=ledger.balance(conn, row.id),
            safety_tolerance=getattr(row, "safety_tolerance", None),
        )

    def open(self, name: str, plan: str | None = None, credits: float | None = None) -> AccountView:
        """A new account on ``plan`` (default plan if None), granted ``credits`` or the plan's initial credits."""
        plan = self.check_plan(plan or self.default_plan)
        with self.db.transaction() as conn:
            if keys.find_account_by_name(conn, name) is not None:
                raise Conflict(f"An account named {name!r} already exists", code="account_exists")
            return self._view(conn, open_account(conn, name, self.plans[plan], credits))

    def find(self, name_or_id: str) -> str | None:
        """The id of the account with this id or name, or None."""
        with self.db.read() as conn:
            found = conn.execute(sa.select(accounts.c.id).where(accounts.c.id == name_or_id)).scalar()
            return found or keys.find_account_by_name(conn, name_or_id)

    def get(self, account_id: str) -> AccountView:
        with self.db.read() as conn:
            return self._view(conn, account_id)

    def list(self, limit: int = 100, offset: int = 0) -> list[AccountView]:
        """Oldest first."""
        with self.db.read() as conn:
            ids = conn.execute(
                sa.select(accounts.c.id).order_by(accounts.c.created_at, accounts.c.id).limit(limit).offset(offset)
            ).scalars().all()
            return [self._view(conn, i) for i in ids]

    def set_plan(self, account_id: str, plan: str) -> AccountView:
        plan = self.check_plan(plan)
        with self.db.transaction() as conn:
            self._view(conn, account_id)
            conn.execute(sa.update(accounts).where(accounts.c.id == account_id).values(plan=plan))
            keys.keys_changed(conn)  # cached principals carry the plan
            return self._view(conn, account_id)

    def set_moderation(self, account_id: str, tolerance: int | None) -> AccountView:
        """Pin the account's moderation tolerance (None: each request's own)."""
        from pixelmill import moderation

        with self.db.transaction() as conn:
            self._view(conn, account_id)
            moderation.set_account_override(conn, account_id, tolerance)
            return self._view(conn, account_id)

    def create_key(self, account_id: str, name: str = "") -> keys.CreatedKey:
        """A new API key; its secret is in this answer only."""
        with self.db.transaction() as conn:
            return keys.create_key(conn, account_id, name)

    def keys(self, account_id: str) -> list[dict]:
        with self.db.read() as conn:
            self._view(conn, account_id)
            return keys.list_keys(conn, account_id)

    def revoke_key(self, key_id: str) -> None:
        with self.db.transaction() as conn:
            if not keys.revoke_key(conn, key_id):
                raise NotFound(f"No active key {key_id}", code="key_not_found")

    # -- a key managing its own account's keys ----------------------------------------------

    def own_keys(self, account_id: str) -> list[dict[str, Any]]:
        """The account's active keys, oldest first: id, prefix, name, created and last used (never a secret)."""
        with self.db.read() as conn:
            return [k for k in keys.list_keys(conn, account_id) if k["revoked_at"] is None]

    def create_own_key(self, account_id: str, name: str = "") -> tuple[keys.CreatedKey, dict[str, Any]]:
        """Another key for the account (at most ``MAX_OWN_KEYS`` active); the secret is in this answer only."""
        with self.db.transaction() as conn:
            active = conn.execute(
                sa.select(sa.func.count()).select_from(api_keys).where(api_keys.c.account_id == account_id, api_keys.c.revoked_at.is_(None))
            ).scalar_one()
            if active >= MAX_OWN_KEYS:
                raise Conflict(
                    f"This account has {active} active keys, the most it may hold; revoke one before creating another",
                    code="too_many_keys", limit=MAX_OWN_KEYS,
                )
            created = keys.create_key(conn, account_id, name)
            row = next(k for k in keys.list_keys(conn, account_id) if k["id"] == created.id)
            return created, row

    def revoke_own_key(self, account_id: str, key_id: str) -> None:
        """Revoke one of the account's active keys (by id); another account's key is not found."""
        with self.db.transaction() as conn:
            exists = conn.execute(
                sa.select(api_keys.c.id).where(api_keys.c.id == key_id, api_keys.c.account_id == account_id, api_keys.c.revoked_at.is_(None))
            ).scalar()
            if exists is None or not keys.revoke_key(conn, key_id, account_id=account_id):
                raise NotFound(f"No active key {key_id} on this account", code="key_not_found")

    def grant(self, account_id: str, amount: float, entry_key: str | None = None, note: str | None = None) -> GrantResult:
        """Add credits exactly once per ``entry_key`` (one is made when not given)."""
        entry_key = entry_key or f"admin-grant:{uuid.uuid4()}"
        with self.db.transaction() as conn:
            self._view(conn, account_id)
            granted = ledger.grant(conn, account_id, amount, f"admin:{account_id}:{entry_key}", note=note or "granted by an administrator")
            return GrantResult(account_id, entry_key, amount, granted, ledger.balance(conn, account_id))

    def own_usage(self, account_id: str, days: int = 30, entries: int = 50) -> tuple[str | None, dict[str, Any], list[dict[str, Any]]]:
        """What an account sees of itself: its name, :func:`account_usage` and its usage per day."""
        with self.db.read() as conn:
            name = conn.execute(sa.select(accounts.c.name).where(accounts.c.id == account_id)).scalar()
            return name, account_usage(conn, account_id, entries=entries) or {}, usage_by_day(conn, account_id, days=days)

    def usage(self, account_id: str, since: float | None = None, entries: int = 50) -> dict[str, Any]:
        """Executions by status, credits spent and held, recent ledger entries."""
        with self.db.read() as conn:
            result = account_usage(conn, account_id, since=since, entries=entries)
        if result is None:
            raise NotFound(f"Account {account_id} not found", code="account_not_found")
        return result
