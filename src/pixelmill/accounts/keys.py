"""Accounts and API keys.  Keys look like ``sk-…``, are shown once and stored as SHA-256."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pixelmill.errors import Forbidden, NotFound, Unauthorized
from pixelmill.ids import new_id
from pixelmill.store.tables import accounts, api_keys

KEY_PREFIX = "sk-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the account and the key used."""

    account_id: str
    plan: str
    key_id: str | None


@dataclass(frozen=True)
class CreatedKey:
    id: str
    account_id: str
    key: str  # the secret: shown once
    prefix: str


def create_account(conn: Connection, name: str, plan: str, account_id: str | None = None) -> str:
    aid = account_id or new_id()
    conn.execute(
        sa.insert(accounts).values(id=aid, name=name, plan=plan, created_at=time.time(), webhook_secrets=[])
    )
    return aid


def find_account_by_name(conn: Connection, name: str) -> str | None:
    return conn.execute(sa.select(accounts.c.id).where(accounts.c.name == name)).scalar()


def create_key(conn: Connection, account_id: str, name: str = "") -> CreatedKey:
    if conn.execute(sa.select(accounts.c.id).where(accounts.c.id == account_id)).scalar() is None:
        raise NotFound(f"account {account_id} not found", code="account_not_found")
    key = generate_key()
    kid = new_id()
    prefix = key[:10]
    conn.execute(
        sa.insert(api_keys).values(
            id=kid, account_id=account_id, key_hash=hash_key(key), prefix=prefix, name=name, created_at=time.time()
        )
    )
    return CreatedKey(id=kid, account_id=account_id, key=key, prefix=prefix)


def revoke_key(conn: Connection, key_id_or_prefix: str) -> int:
    q = sa.update(api_keys).where(
        sa.or_(api_keys.c.id == key_id_or_prefix, api_keys.c.prefix == key_id_or_prefix),
        api_keys.c.revoked_at.is_(None),
    )
    return conn.execute(q.values(revoked_at=time.time())).rowcount


def list_keys(conn: Connection, account_id: str | None = None) -> list[dict]:
    q = (
        sa.select(api_keys, accounts.c.name.label("account_name"), accounts.c.plan)
        .join(accounts, accounts.c.id == api_keys.c.account_id)
        .order_by(api_keys.c.created_at)
    )
    if account_id:
        q = q.where(api_keys.c.account_id == account_id)
    return [
        {
            "id": r.id,
            "prefix": r.prefix,
            "name": r.name,
            "account_id": r.account_id,
            "account_name": r.account_name,
            "plan": r.plan,
            "created_at": r.created_at,
            "revoked_at": r.revoked_at,
            "last_used_at": r.last_used_at,
        }
        for r in conn.execute(q)
    ]


def authenticate(conn: Connection, key: str | None) -> Principal:
    """The principal for a presented key.  Missing → 401; unknown or revoked → 403."""
    if not key:
        raise Unauthorized("Missing API key: send it in the x-key header", code="missing_api_key")
    row = conn.execute(
        sa.select(api_keys.c.id, api_keys.c.account_id, api_keys.c.revoked_at, accounts.c.plan, accounts.c.disabled_at)
        .join(accounts, accounts.c.id == api_keys.c.account_id)
        .where(api_keys.c.key_hash == hash_key(key))
    ).first()
    # the lookup is by a hash of a high-entropy secret: no timing oracle on the key itself
    if row is None:
        raise Forbidden("Invalid API key", code="invalid_api_key")
    if row.revoked_at is not None:
        raise Forbidden("API key has been revoked", code="revoked_api_key")
    if row.disabled_at is not None:
        raise Forbidden("Account is disabled", code="account_disabled")
    return Principal(account_id=row.account_id, plan=row.plan, key_id=row.id)
