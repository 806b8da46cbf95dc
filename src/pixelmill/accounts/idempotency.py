"""Idempotency keys: a retried request with the same ``Idempotency-Key`` creates no new work.

Semantics follow Stripe and the IETF ``Idempotency-Key`` draft, scoped per account:

- first use of a key: a ``processing`` record is inserted *before* the request
  runs (:meth:`IdempotencyStore.begin`).  The execution the request creates is
  written into the record in the same transaction that creates the execution
  (:func:`bind`, called by the execution service), so the record
  and the work can never disagree;
- the request ends with :meth:`IdempotencyStore.settle`: a final answer (2xx, and
  4xx other than 409/429) is saved for replay, except a 4xx of a request that
  created nothing, which is forgotten (the client may fix the request and retry
  with the same key).  An answer that tells the client to retry (5xx, 409, 429)
  is never saved: a record bound to an execution that is still running (or that
  succeeded) stays bound to it, anything else is forgotten, so the retry does the
  work that did not happen;
- same key, same fingerprint, completed → :class:`Replay` of the saved status,
  body and headers;
- same key, same fingerprint, still ``processing`` but bound to an execution →
  a :class:`Claim` with ``resumed`` set: the request is answered from that
  execution (the service returns it instead of creating one, waiting for it where
  the request waits).  This is how a retry after a crash of the first server gets
  its answer without running or billing the work twice;
- same key, different fingerprint → :class:`Mismatch` (the API answers 422);
- same key while the first request still runs and has created nothing yet →
  :class:`InProgress` (409).

Concurrency is settled by the table's ``unique(account_id, key)`` constraint:
every contender inserts first, exactly one insert wins, the others read the
winner's row.  This holds on SQLite and PostgreSQL alike.

A record older than ``ttl_s`` is replaced by the next request using its key.  A
process that dies before its request created anything leaves a ``processing``
record without an execution; one not refreshed for ``abandon_after_s`` (60 s by
default) is considered abandoned and taken over by the next request with that
key.  A request that legitimately runs longer (a synchronous image endpoint)
keeps its record alive with :meth:`IdempotencyStore.touch`, which the HTTP
middleware calls every ``abandon_after_s / 3`` seconds while the request runs.
A takeover changes the record's ``created_at``, so the request that lost it can
no longer bind an execution to it: its submit fails and rolls back.

The claim of the request being served travels in :data:`current_claim` (a
context variable the HTTP middleware sets), so the execution service binds
without any dialect passing it along.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from pixelmill import wirejson
from pixelmill.store.db import Database
from pixelmill.domain.status import ExecutionStatus
from pixelmill.errors import Conflict
from pixelmill.store.tables import executions, idempotency_keys

MAX_KEY_LENGTH = 255
DONE = "done"
PROCESSING = "processing"


def fingerprint(method: str, path: str, body: bytes, content_type: str = "") -> str:
    """SHA-256 over method, path (with query) and the canonical body.

    A JSON body is canonicalised (sorted keys, no insignificant whitespace) so that
    a client re-serialising the same object still matches; in a multipart body the
    random boundary is neutralised (a retry usually draws a new one); any other body
    is used byte for byte.
    """
    canonical = body
    boundary = _multipart_boundary(content_type)
    if boundary:
        canonical = body.replace(boundary.encode("latin-1"), b"<boundary>")
    elif body.strip():
        try:
            canonical = json.dumps(wirejson.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        except (ValueError, UnicodeDecodeError):
            canonical = body
    h = hashlib.sha256()
    h.update(method.upper().encode())
    h.update(b"\n")
    h.update(path.encode())
    h.update(b"\n")
    h.update(canonical)
    return h.hexdigest()


def _multipart_boundary(content_type: str) -> str | None:
    if not content_type.lower().startswith("multipart/"):
        return None
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "boundary" and value.strip('"'):
            return value.strip('"')
    return None


def parse_key(header_value: str) -> str:
    """The key from an ``Idempotency-Key`` header: a Structured-Field String
    (``"abc"``) or, as Stripe accepts, a bare token.  Raises ValueError when empty
    or longer than 255 characters."""
    value = header_value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not value:
        raise ValueError("Idempotency-Key is empty")
    if len(value) > MAX_KEY_LENGTH:
        raise ValueError(f"Idempotency-Key is longer than {MAX_KEY_LENGTH} characters")
    return value


@dataclass
class Claim:
    """This request owns the key: run it, then complete or discard the record.

    ``created_at`` identifies this ownership (a takeover or :meth:`IdempotencyStore.touch`
    changes it), so a request that lost its record can never settle another's.

    ``execution_id`` is the execution bound to the record: set by :meth:`IdempotencyStore.bind`
    when this request created it, or already set when ``resumed`` (a retry of a request
    whose execution exists: answer from it, create nothing).  ``served`` counts the
    submits of this request (a workflow batch submits several executions)."""

    record_id: int
    created_at: float
    execution_id: str | None = None
    resumed: bool = False
    served: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)


current_claim: ContextVar[Claim | None] = ContextVar("pixelmill_idempotency_claim", default=None)
"""The claim of the keyed request being served in this context (set by the HTTP middleware)."""


def is_final(status: int) -> bool:
    """Whether a response status is a final answer for a key (replayed), or tells the client to retry."""
    return status < 500 and status not in (409, 429)


@dataclass(frozen=True)
class Replay:
    """The key was used for the same request, which finished: answer with this."""

    status: int
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class InProgress:
    """The first request with this key is still running."""


@dataclass(frozen=True)
class Mismatch:
    """The key was used for a different request."""


Outcome = Claim | Replay | InProgress | Mismatch


def bind(conn, claim: Claim, execution_id: str) -> None:
    """Write ``execution_id`` into the claimed record, inside the caller's transaction (the one
    that creates the execution).  Raises :class:`~pixelmill.errors.Conflict` when the record
    is no longer this claim's (it was taken over): the caller's transaction must roll back.

    The caller holds ``claim.lock`` until its transaction ends, so a concurrent
    :meth:`IdempotencyStore.touch` cannot move the record under it."""
    n = conn.execute(
        sa.update(idempotency_keys)
        .where(
            idempotency_keys.c.id == claim.record_id,
            idempotency_keys.c.created_at == claim.created_at,
            idempotency_keys.c.state == PROCESSING,
            idempotency_keys.c.execution_id.is_(None),
        )
        .values(execution_id=execution_id)
    ).rowcount
    if n != 1:
        raise Conflict(  # answered with Retry-After: 1 (pixelmill.presenters.limit_headers)
            "A request with this Idempotency-Key is being processed by another request; retry shortly",
            code="idempotency_key_in_progress",
            retry_after=1,
        )


_ENCODING = ":body-encoding"  # in the stored headers: the body is base64 (not UTF-8 text)


def _stored_body(body: bytes, headers: dict[str, str]) -> dict:
    try:
        return {"response_body": body.decode("utf-8"), "response_headers": dict(headers)}
    except UnicodeDecodeError:
        return {"response_body": base64.b64encode(body).decode(), "response_headers": {**headers, _ENCODING: "base64"}}


def _replay(row) -> Replay:
    headers = dict(row.response_headers or {})
    text = row.response_body or ""
    body = base64.b64decode(text) if headers.pop(_ENCODING, None) == "base64" else text.encode("utf-8")
    return Replay(int(row.response_status), body, headers)


class IdempotencyStore:
    """Idempotency records in the ``idempotency_keys`` table."""

    def __init__(self, db: Database, ttl_s: float = 24 * 3600, abandon_after_s: float = 60.0, purge_every_s: float = 3600.0):
        self.db = db
        self.ttl_s = ttl_s
        self.abandon_after_s = abandon_after_s
        self.purge_every_s = purge_every_s
        self._next_purge = time.monotonic() + purge_every_s

    def begin(self, account_id: str, key: str, fp: str, now: float | None = None) -> Outcome:
        """Claim ``key`` for a request with fingerprint ``fp``, or say why not.

        Once every ``purge_every_s`` a call also deletes expired records."""
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + self.purge_every_s
            self.purge_expired()
        for _ in range(5):  # a contender may delete/replace the row between our insert and read
            now = time.time() if now is None else now
            claim = self._insert(account_id, key, fp, now)
            if claim is not None:
                return claim
            with self.db.read() as conn:
                row = conn.execute(
                    sa.select(idempotency_keys).where(idempotency_keys.c.account_id == account_id, idempotency_keys.c.key == key)
                ).first()
            if row is None:
                continue  # discarded since our insert failed: try again
            expired = row.expires_at <= now
            abandoned = row.state == PROCESSING and row.execution_id is None and row.created_at <= now - self.abandon_after_s
            if expired or abandoned:
                claim = self._take_over(row, fp, now)
                if claim is not None:
                    return claim
                continue
            if row.fingerprint != fp:
                return Mismatch()
            if row.state == PROCESSING and row.execution_id is not None:
                claim = self._resume(row, now)
                if claim is not None:
                    return claim
                continue
            if row.state == PROCESSING:
                return InProgress()
            return _replay(row)
        return InProgress()  # heavy contention on one key: the client should retry

    def _insert(self, account_id: str, key: str, fp: str, now: float) -> Claim | None:
        try:
            with self.db.transaction() as conn:
                rid = conn.execute(
                    sa.insert(idempotency_keys)
                    .values(account_id=account_id, key=key, fingerprint=fp, state=PROCESSING, created_at=now, expires_at=now + self.ttl_s)
                    .returning(idempotency_keys.c.id)
                ).scalar_one()
        except IntegrityError:
            return None
        return Claim(int(rid), now)

    def _take_over(self, row, fp: str, now: float) -> Claim | None:
        """Replace an expired or abandoned record; only one contender's update matches."""
        with self.db.transaction() as conn:
            n = conn.execute(
                sa.update(idempotency_keys)
                .where(idempotency_keys.c.id == row.id, idempotency_keys.c.created_at == row.created_at, idempotency_keys.c.state == row.state)
                .values(
                    fingerprint=fp, state=PROCESSING, created_at=now, expires_at=now + self.ttl_s,
                    response_status=None, response_body=None, response_headers=None, execution_id=None,
                )
            ).rowcount
        return Claim(int(row.id), now) if n == 1 else None

    def _resume(self, row, now: float) -> Claim | None:
        """Own a processing record bound to an execution (its first request crashed, or still waits)."""
        with self.db.transaction() as conn:
            n = conn.execute(
                sa.update(idempotency_keys)
                .where(idempotency_keys.c.id == row.id, idempotency_keys.c.created_at == row.created_at, idempotency_keys.c.state == PROCESSING)
                .values(created_at=now)
            ).rowcount
        return Claim(int(row.id), now, execution_id=row.execution_id, resumed=True) if n == 1 else None

    def touch(self, claim: Claim, now: float | None = None) -> bool:
        """Mark a long-running claimed request as alive, so it is not taken for abandoned.

        False when the record is no longer this claim's."""
        now = time.time() if now is None else now
        with claim.lock, self.db.transaction() as conn:
            n = conn.execute(
                sa.update(idempotency_keys)
                .where(idempotency_keys.c.id == claim.record_id, idempotency_keys.c.created_at == claim.created_at, idempotency_keys.c.state == PROCESSING)
                .values(created_at=now)
            ).rowcount
            if n == 1:
                claim.created_at = now
        return n == 1

    def complete(self, claim: Claim, status: int, body: bytes, headers: dict[str, str]) -> None:
        """Save the response of a claimed request for replay."""
        with claim.lock, self.db.transaction() as conn:
            conn.execute(
                sa.update(idempotency_keys)
                .where(idempotency_keys.c.id == claim.record_id, idempotency_keys.c.created_at == claim.created_at)
                .values(state=DONE, response_status=status, **_stored_body(body, headers))
            )

    def settle(self, claim: Claim, status: int, body: bytes, headers: dict[str, str]) -> str:
        """End a claimed request with its response; returns what became of the record.

        ``"saved"``: a final answer, replayed to later requests with the key.
        ``"forgotten"``: the record is deleted (a client error of a request that created
        nothing, or a retry-type answer with no execution worth answering from).
        ``"kept"``: a retry-type answer (5xx, 409, 429) while the bound execution is still
        running or succeeded; the record stays bound so the retry answers from it.
        ``"lost"``: the record is no longer this claim's."""
        with claim.lock, self.db.transaction() as conn:
            row = conn.execute(
                sa.select(idempotency_keys.c.execution_id).where(
                    idempotency_keys.c.id == claim.record_id, idempotency_keys.c.created_at == claim.created_at
                )
            ).first()
            if row is None:
                return "lost"
            mine = (idempotency_keys.c.id == claim.record_id, idempotency_keys.c.created_at == claim.created_at)
            if is_final(status) and (status < 400 or row.execution_id is not None):
                conn.execute(
                    sa.update(idempotency_keys).where(*mine).values(state=DONE, response_status=status, **_stored_body(body, headers))
                )
                return "saved"
            if not is_final(status) and row.execution_id is not None:
                state = conn.execute(sa.select(executions.c.status).where(executions.c.id == row.execution_id)).scalar()
                if state is not None and state not in (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
                    return "kept"
            conn.execute(sa.delete(idempotency_keys).where(*mine))
            return "forgotten"

    def discard(self, claim: Claim) -> None:
        """Forget a claimed key (the request was refused before any work ran)."""
        with claim.lock, self.db.transaction() as conn:
            conn.execute(
                sa.delete(idempotency_keys).where(
                    idempotency_keys.c.id == claim.record_id,
                    idempotency_keys.c.created_at == claim.created_at,
                    idempotency_keys.c.state == PROCESSING,
                )
            )

    def purge_expired(self, now: float | None = None) -> int:
        """Delete records past their expiry; returns how many."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            return conn.execute(sa.delete(idempotency_keys).where(idempotency_keys.c.expires_at <= now)).rowcount
