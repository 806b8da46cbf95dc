"""The notifier: one event path that wakes whoever waits on an execution.

It is a lifecycle hook (:class:`~pixelmill.engine.hooks.Hooks`): every event an
execution logs is also published here, *after* the transaction that wrote it
commits, so a woken reader always sees the new state.  ``Prefer: wait``, Server-Sent Events and the
OpenAI synchronous and streaming routes subscribe to the executions they watch
and re-read the store only when woken; their database re-check is a slow
safety net (``Settings.wait_poll_s``), not the way they learn of completion.

Where notices travel:

* **local** (embedded mode): an in-process hub; the worker thread that commits
  wakes the waiting request directly.
* **postgres** (scale-out on PostgreSQL): ``pg_notify`` inside the writing
  transaction (PostgreSQL delivers it at commit, never for a rollback); every
  process that subscribes runs one ``LISTEN`` thread that feeds its local hub.
* **redis** (scale-out on another database): a ``PUBLISH`` after commit; every
  subscribing process runs one pub/sub thread that feeds its local hub.

Notices are hints, never the record: a lost one (listener reconnecting, a
broker hiccup) costs at most one safety-net interval, because waiters re-read
the store.  Besides execution events the bus carries ``keys`` notices (a key
revoked, an account changed: every API node drops its cached principals) and
``runtime`` notices (a node's run time, which feeds the in-memory estimates).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pixelmill.accounts.keys import NOTIFY_CHANNEL
from pixelmill.engine.hooks import Hooks, LifecycleEvent
from pixelmill.store.db import after_commit

log = logging.getLogger("pixelmill.notify")

ENDED = "execution.ended"  # sent to a subscriber that arrives after the execution ended
TERMINAL_EVENTS = frozenset({"execution.succeeded", "execution.failed", "execution.cancelled", ENDED})
CHANNEL = NOTIFY_CHANNEL
RECENT_TERMINAL = 10_000  # executions whose end is remembered, so a late subscriber is woken at once


@dataclass(frozen=True)
class Notice:
    """One small message on the bus: ``topic`` is ``execution``, ``keys`` or ``runtime``."""

    topic: str
    id: str
    event: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def dumps(self) -> str:
        return json.dumps({"t": self.topic, "i": self.id, "e": self.event, "d": self.data}, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str | bytes) -> "Notice":
        m = json.loads(raw)
        return cls(m["t"], m["i"], m.get("e", ""), m.get("d") or {})


def notice_of(event: LifecycleEvent) -> Notice:
    """The notice of a lifecycle event: its type, plus a finished node's queue and run time (for estimates)."""
    data = event.data
    if event.type == "node.completed" and "seconds" in data:
        return Notice("execution", event.execution_id, event.type, {"queue": data.get("queue"), "seconds": data["seconds"]})
    return Notice("execution", event.execution_id, event.type)


class Subscription:
    """Wake-ups for a set of executions, awaited from one event loop (or a thread)."""

    def __init__(self, hub: "Hub", ids: Iterable[str]):
        self.hub = hub
        self.ids = tuple(ids)
        self.events: list[Notice] = []
        self._lock = threading.Lock()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            self._async = asyncio.Event()
        except RuntimeError:
            self._loop = None
        self._thread = threading.Event()
        #: called with an execution's id when a notice says it ended, in the thread that delivers
        #: the notice and before the waiter wakes (a waiter reads the finished execution into memory
        #: there, and answers from it without a thread hop of its own)
        self.on_end: Callable[[str], None] | None = None

    def _fire(self, notice: Notice) -> None:
        on_end = self.on_end
        if on_end is not None and notice.topic == "execution" and notice.event in TERMINAL_EVENTS:
            try:
                on_end(notice.id)
            except Exception:  # the waiter reads it itself
                log.debug("reading ended execution %s for its waiter failed", notice.id, exc_info=True)
        with self._lock:
            self.events.append(notice)
            if len(self.events) > 1000:
                del self.events[:-1000]
        self._thread.set()
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._async.set)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def drain(self) -> list[Notice]:
        """The notices received since the last drain."""
        with self._lock:
            out, self.events = self.events, []
        return out

    @property
    def finished(self) -> bool:
        """True once every watched execution was seen ending (here or before subscribing)."""
        return all(self.hub.ended(i) for i in self.ids)

    async def wait(self, timeout: float) -> bool:
        """Until a notice arrives (True) or ``timeout`` passes (False)."""
        assert self._loop is not None, "subscribe from inside the event loop to await"
        if not self._async.is_set():
            try:
                await asyncio.wait_for(self._async.wait(), max(0.0, timeout))
            except asyncio.TimeoutError:
                return False
        self._async.clear()
        self._thread.clear()
        return True

    def wait_sync(self, timeout: float) -> bool:
        got = self._thread.wait(max(0.0, timeout))
        self._thread.clear()
        return got

    def close(self) -> None:
        self.hub._remove(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Hub:
    """In-process fan-out of notices to subscriptions and listeners."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[str, set[Subscription]] = {}
        self._listeners: dict[str, list[Callable[[Notice], None]]] = {}
        self._ended: OrderedDict[str, float] = OrderedDict()

    def subscribe(self, ids: Iterable[str]) -> Subscription:
        sub = Subscription(self, ids)
        with self._lock:
            for i in sub.ids:
                self._subs.setdefault(i, set()).add(sub)
            ended = [i for i in sub.ids if i in self._ended]
        if ended:  # it ended before we subscribed: wake at once
            sub._fire(Notice("execution", ended[0], ENDED))
        return sub

    def ended(self, execution_id: str) -> bool:
        with self._lock:
            return execution_id in self._ended

    def listen(self, topic: str, callback: Callable[[Notice], None]) -> None:
        with self._lock:
            self._listeners.setdefault(topic, []).append(callback)

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            for i in sub.ids:
                subs = self._subs.get(i)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self._subs[i]

    def dispatch(self, notice: Notice) -> None:
        with self._lock:
            if notice.topic == "execution" and notice.event in TERMINAL_EVENTS:
                self._ended[notice.id] = time.time()
                if len(self._ended) > RECENT_TERMINAL:
                    self._ended.popitem(last=False)
            subs = list(self._subs.get(notice.id, ())) if notice.topic == "execution" else []
            listeners = list(self._listeners.get(notice.topic, ()))
        for cb in listeners:  # first: what this process keeps of the execution is dropped before anyone wakes
            try:
                cb(notice)
            except Exception:
                log.exception("notice listener failed for %s", notice)
        for sub in subs:
            sub._fire(notice)


class Notifier(Hooks):
    """Publishes notices after commit and wakes local subscribers; a bus carries them to other processes.

    As a lifecycle hook it publishes every event an execution logs.
    """

    name = "local"

    def __init__(self) -> None:
        self.hub = Hub()

    # -- publishing --------------------------------------------------------
    def after_commit(self, event: LifecycleEvent) -> None:
        self._send(notice_of(event))

    def publish(self, conn: Connection | None, notice: Notice) -> None:
        """Send ``notice`` once ``conn``'s transaction commits (at once when ``conn`` is None)."""
        if conn is None:
            self._send(notice)
        else:
            after_commit(conn, lambda: self._send(notice))

    def _send(self, notice: Notice) -> None:
        self.hub.dispatch(notice)

    # -- listening ---------------------------------------------------------
    def subscribe(self, ids: Iterable[str]) -> Subscription:
        self.start()
        return self.hub.subscribe(ids)

    def listen(self, topic: str, callback: Callable[[Notice], None]) -> None:
        self.hub.listen(topic, callback)

    def start(self) -> None:
        """Start receiving from other processes (a no-op for the local notifier)."""

    def stop(self) -> None:
        pass


class _ListeningNotifier(Notifier):
    """A notifier whose notices also reach other processes; one receiving thread, started on first use."""

    def __init__(self) -> None:
        super().__init__()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._start_lock = threading.Lock()
        self.connected = threading.Event()

    def start(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._stopping.clear()
                self._thread = threading.Thread(target=self._run, name=f"pixelmill-notify-{self.name}", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Stop receiving; the thread notices within a second and closes its connection (it is a daemon)."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=0.05)

    def _run(self) -> None:
        delay = 0.2
        while not self._stopping.is_set():
            try:
                self._receive()
                delay = 0.2
            except Exception as exc:
                self.connected.clear()
                if self._stopping.is_set():
                    return
                log.warning("%s notifier disconnected (%s); reconnecting in %.1f s", self.name, exc, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, 5.0)

    def _connected(self) -> None:
        """Listening (again): whatever was missed meanwhile may have changed keys, so caches start afresh."""
        self.connected.set()
        self.hub.dispatch(Notice("keys", ""))

    def _deliver(self, raw: str | bytes) -> None:
        try:
            notice = Notice.loads(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed notice: %r", raw[:200])
            return
        self.hub.dispatch(notice)

    def _receive(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class RedisNotifier(_ListeningNotifier):
    """Notices over Redis pub/sub, published after commit."""

    name = "redis"

    def __init__(self, url: str, channel: str | None = None) -> None:
        super().__init__()
        import redis

        self.url = url
        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        db = self.client.connection_pool.connection_kwargs.get("db", 0)
        self.channel = channel or f"{CHANNEL}:{db}"  # pub/sub ignores database numbers
        self._pubsub = None

    def _send(self, notice: Notice) -> None:
        self.hub.dispatch(notice)  # this process's waiters need no round trip
        try:
            self.client.publish(self.channel, notice.dumps())
        except Exception as exc:  # waiters elsewhere fall back to their safety-net re-check
            log.warning("could not publish a notice on Redis: %s", exc)

    def _receive(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=None, health_check_interval=30)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub = pubsub
        try:
            pubsub.subscribe(self.channel)
            self._connected()
            while not self._stopping.is_set():
                msg = pubsub.get_message(timeout=1.0)
                if msg is not None and msg.get("type") == "message":
                    self._deliver(msg["data"])
        finally:
            self._pubsub = None
            pubsub.close()
            client.close()

    def stop(self) -> None:
        super().stop()
        self.client.close()


class PostgresNotifier(_ListeningNotifier):
    """Notices over PostgreSQL LISTEN/NOTIFY, sent inside the writing transaction (delivered at commit)."""

    name = "postgres"

    def __init__(self, url: str, channel: str = CHANNEL) -> None:
        super().__init__()
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.channel = channel
        self._conn = None

    def on_event(self, conn: Connection, event: LifecycleEvent) -> None:
        conn.execute(sa.text("SELECT pg_notify(:channel, :payload)"), {"channel": self.channel, "payload": notice_of(event).dumps()})

    def after_commit(self, event: LifecycleEvent) -> None:
        self.hub.dispatch(notice_of(event))  # no round trip for this process

    def publish(self, conn: Connection | None, notice: Notice) -> None:
        payload = notice.dumps()
        if len(payload) > 7000:  # NOTIFY payloads are capped at 8000 bytes
            notice = Notice(notice.topic, notice.id, notice.event)
            payload = notice.dumps()
        if conn is None:
            import psycopg

            self.hub.dispatch(notice)
            with psycopg.connect(self.url, autocommit=True) as c:
                c.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))
            return
        conn.execute(sa.text("SELECT pg_notify(:channel, :payload)"), {"channel": self.channel, "payload": payload})
        after_commit(conn, lambda: self.hub.dispatch(notice))  # this process's waiters need no round trip

    def _receive(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            self._conn = conn
            conn.execute(f'LISTEN "{self.channel}"')
            self._connected()
            while not self._stopping.is_set():
                for n in conn.notifies(timeout=1.0):
                    self._deliver(n.payload)
        self._conn = None


def make_notifier(kind: str, queue: str, database_url: str, broker_url: str) -> Notifier:
    """The notifier for a process: ``auto`` is PostgreSQL on PostgreSQL (other processes, the command line
    among them, reach it through the database), else local for the embedded queue, else Redis."""
    if kind == "auto":
        if database_url.startswith("postgresql"):
            kind = "postgres"
        elif queue == "inprocess":
            kind = "local"
        elif broker_url.startswith(("redis://", "rediss://", "unix://")):
            kind = "redis"
        else:
            log.warning("no notification bus for broker %s: waits rely on re-reading the store", broker_url.split("://")[0])
            kind = "local"
    if kind == "postgres":
        return PostgresNotifier(database_url)
    if kind == "redis":
        return RedisNotifier(broker_url)
    return Notifier()
