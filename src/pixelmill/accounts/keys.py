"""Accounts and API keys.  Keys look like ``sk-…``, are shown once and stored as SHA-256."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pixelmill.errors import Forbidden, NotFound, Unauthorized
from pixelmill.ids import new_id
from pixelmill.store.db import after_commit
from pixelmill.store.tables import accounts, api_keys

log = logging.getLogger("pixelmill.accounts")

KEY_PREFIX = "sk-"
LAST_USED_RESOLUTION_S = 60.0
"""A key's ``last_used_at`` is written at most this often (it is as precise as this)."""


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


def revoke_key(conn: Connection, key_id_or_prefix: str, account_id: str | None = None) -> int:
    """Revoke an active key by id or prefix (only one of ``account_id``'s, when given); how many were revoked."""
    q = sa.update(api_keys).where(
        sa.or_(api_keys.c.id == key_id_or_prefix, api_keys.c.prefix == key_id_or_prefix),
        api_keys.c.revoked_at.is_(None),
    )
    if account_id is not None:
        q = q.where(api_keys.c.account_id == account_id)
    n = conn.execute(q.values(revoked_at=time.time())).rowcount
    if n:
        keys_changed(conn)
    return n


def keys_changed(conn: Connection) -> None:
    """Make every process drop its cached principals once ``conn``'s transaction commits.

    Call it with any change to keys or accounts (revoked, disabled, new plan).
    In this process the caches are cleared after commit; other processes learn
    it through PostgreSQL ``NOTIFY`` (in the transaction) or, on SQLite, through
    a marker file beside the database whose time stamp they check.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_notify(:channel, :payload)"), {"channel": NOTIFY_CHANNEL, "payload": KEYS_NOTICE})
    marker = _marker_path(conn.engine.url)

    def clear() -> None:
        if marker is not None:
            try:
                marker.touch()
                os.utime(marker)
            except OSError as exc:
                log.warning("could not stamp %s: %s", marker, exc)
        for cache in list(_CACHES):
            cache.clear()

    after_commit(conn, clear)


NOTIFY_CHANNEL = "pixelmill_events"  # shared with pixelmill.engine.notify
KEYS_NOTICE = '{"t":"keys","i":""}'
_CACHES: "weakref.WeakSet[KeyCache]" = weakref.WeakSet()


def _marker_path(url) -> Path | None:
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database + "-keys")


class KeyCache:
    """Principals of recently seen keys, so a request needs no database read to authenticate.

    Entries live at most ``ttl_s``.  They are dropped at once when keys or
    accounts change (:func:`keys_changed`): in this process directly, from other
    processes through the notifier (``keys`` notices, PostgreSQL) or the SQLite
    marker file.  Where other processes could change keys unseen (a notifier that
    is not listening), ``usable()`` says False and every request reads the store.
    Only valid keys are cached: an unknown or revoked key is looked up every time.
    """

    def __init__(self, db, ttl_s: float = 60.0, max_size: int = 10_000, usable: Callable[[], bool] | None = None):
        self.db = db
        self.ttl_s = ttl_s
        self.max_size = max_size
        self.usable = usable or (lambda: True)
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()
        self._marker = _marker_path(db.engine.url)
        self._marker_stamp = self._stamp()
        _CACHES.add(self)

    def _stamp(self) -> int:
        if self._marker is None:
            return 0
        try:
            return os.stat(self._marker).st_mtime_ns
        except OSError:
            return 0

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def cached(self, key: str | None) -> Principal | None:
        """The principal of ``key`` if it is cached and still valid; None means: ask :meth:`authenticate`."""
        if not key or self.ttl_s <= 0:
            return None
        stamp = self._stamp()
        if stamp != self._marker_stamp:
            self._marker_stamp = stamp
            self.clear()
            return None
        if not self.usable():
            return None
        hit = self._entries.get(key)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def authenticate(self, key: str | None) -> Principal:
        """:func:`authenticate`, answered from the cache when it can be."""
        hit = self.cached(key)
        if hit is not None:
            return hit
        with self.db.read() as conn:
            principal, last_used_at = _lookup(conn, key)
        if last_used_at is None or last_used_at < time.time() - LAST_USED_RESOLUTION_S:
            self._stamp_used(principal.key_id)
        if self.ttl_s > 0 and self.usable():
            with self._lock:
                if len(self._entries) >= self.max_size:
                    self._entries.clear()
                self._entries[key] = (principal, time.monotonic() + self.ttl_s)  # type: ignore[index]
        return principal


    def _stamp_used(self, key_id: str | None) -> None:
        """Record that a key was used now (best effort: a busy database never fails a request)."""
        if key_id is None:
            return
        now = time.time()
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    sa.update(api_keys)
                    .where(api_keys.c.id == key_id)
                    .where(sa.or_(api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at < now - LAST_USED_RESOLUTION_S))
                    .values(last_used_at=now)
                )
        except Exception as exc:  # the stamp waits for the next lookup
            log.debug("could not record the use of key %s: %s", key_id, exc)


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
    return _lookup(conn, key)[0]


def _lookup(conn: Connection, key: str | None) -> tuple[Principal, float | None]:
    """:func:`authenticate`, with when the key was last used (as recorded)."""
    if not key:
        raise Unauthorized("Missing API key: send it in the x-key header", code="missing_api_key")
    row = conn.execute(
        sa.select(
            api_keys.c.id, api_keys.c.account_id, api_keys.c.revoked_at, api_keys.c.last_used_at, accounts.c.plan, accounts.c.disabled_at
        )
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
    return Principal(account_id=row.account_id, plan=row.plan, key_id=row.id), row.last_used_at


def any_active_key(conn: Connection) -> bool:
    """Whether this installation has at least one usable API key (a fresh one has none)."""
    return conn.execute(sa.select(api_keys.c.id).where(api_keys.c.revoked_at.is_(None)).limit(1)).first() is not None
