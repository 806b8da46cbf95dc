"""Shared parts of the speed benches: a server in a subprocess, a light HTTP load client, percentiles.

``python bench/_harness.py serve PORT`` runs the API from ``PIXELMILL_*``
environment settings (uvicorn, no access log); the benches start it that way.

The load and fault benches run the real commands instead (:class:`Command`:
``pixelmill serve`` / ``pixelmill worker`` subprocesses that can be SIGKILLed),
on a PostgreSQL database and a Redis database of their own
(:func:`postgres_database`, :func:`redis_database`), and check what the
database recorded afterwards (:func:`audit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable

BENCH_PLAN = {"bench": {"max_active_tasks": 1_000_000}}  # a plan whose limits never trigger


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def p50(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_env(data_dir: Path, **settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELMILL_")}
    env.update(
        PIXELMILL_DATA_DIR=str(data_dir),
        PIXELMILL_SECRET_KEY="bench",
        PIXELMILL_WEBHOOK_DISPATCHER="false",
        PIXELMILL_PLANS=json.dumps(BENCH_PLAN),
        PIXELMILL_DEFAULT_PLAN="bench",
        HF_HUB_OFFLINE="1",  # the benches' models are local folders
    )
    for k, v in settings.items():
        env[f"PIXELMILL_{k.upper()}"] = v if isinstance(v, str) else json.dumps(v)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [src, env.get("PYTHONPATH", "")] if p)
    return env


def make_key(env: dict[str, str], credits: float = 10_000_000.0) -> str:
    """An account on the bench plan and its key, in the database the settings name (migrated first)."""
    code = (
        "from pixelmill.config import Settings; from pixelmill.store import migrate; from pixelmill.store.db import Database;"
        "from pixelmill.accounts import keys, ledger; import uuid\n"
        "s = Settings.load(); migrate.upgrade(s.resolved_database_url()); db = Database(s.resolved_database_url())\n"
        "with db.transaction() as c:\n"
        "    a = keys.create_account(c, 'bench', 'bench'); ledger.grant(c, a, %r, 'bench:' + str(uuid.uuid4()))\n"
        "    print(keys.create_key(c, a).key)\n" % credits
    )
    return subprocess.check_output([sys.executable, "-c", code], env=env).decode().strip().splitlines()[-1]


@contextlib.contextmanager
def server(env: dict[str, str], port: int, target: str = "serve", log: Path | None = None):
    """A server subprocess on ``port`` until the block ends (``target``: ``serve`` or ``floor``)."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, __file__, target, str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}" + (f"; see {log}" if log else ""))
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.1)
        if target == "serve":  # its default models loaded: a bench measures the server at work, not its warm start
            wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=180)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


class Http:
    """A minimal HTTP/1.1 keep-alive client (one connection), light enough not to be the bottleneck."""

    def __init__(self, port: int, headers: dict[str, str]):
        self.port = port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: dict | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{self.extra}"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + data)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if chunked:
            chunks = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                chunks.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            return status, b"".join(c[:-2] for c in chunks)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def hammer(port: int, headers: dict[str, str], path: str, connections: int, seconds: float) -> float:
    """Requests per second of GET ``path`` over ``connections`` keep-alive connections for ``seconds``."""
    done = 0
    errors = 0
    stop = time.monotonic() + seconds

    async def one() -> None:
        nonlocal done, errors
        client = Http(port, headers)
        try:
            while time.monotonic() < stop:
                status, _ = await client.request("GET", path)
                if status == 200:
                    done += 1
                else:
                    errors += 1
        finally:
            client.close()

    start = time.monotonic()
    await asyncio.gather(*(one() for _ in range(connections)))
    if errors:
        print(f"  ({errors} non-200 answers on {path})")
    return done / (time.monotonic() - start)


def _serve(port: int) -> None:
    import uvicorn

    from pixelmill.api.app import create_app
    from pixelmill.config import Settings
    from pixelmill.runtime import Runtime

    uvicorn.run(create_app(Runtime(Settings.load())), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _floor(port: int) -> None:
    """The floor: a bare FastAPI endpoint that does one insert into the same kind of database."""
    import uuid

    import sqlalchemy as sa
    import uvicorn
    from fastapi import FastAPI

    from pixelmill.config import Settings
    from pixelmill.store.db import Database

    db = Database(Settings.load().resolved_database_url().replace("pixelmill.db", "floor.db"))
    table = sa.Table("jobs", sa.MetaData(), sa.Column("id", sa.String(40), primary_key=True), sa.Column("body", sa.JSON))
    table.metadata.create_all(db.engine)
    app = FastAPI()

    @app.post("/submit")
    def submit(body: dict):
        jid = str(uuid.uuid4())
        with db.transaction() as conn:
            conn.execute(sa.insert(table).values(id=jid, body=body))
        return {"id": jid}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---------------------------------------------------------------- real commands, shared services, audits

PIXELMILL = [sys.executable, "-m", "pixelmill.cli"]
PG_ADMIN_URL = os.environ.get("PIXELMILL_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("PIXELMILL_BENCH_REDIS", "redis://127.0.0.1:6379")
BENCH_REDIS_DBS = (15, 7, 6, 5)  # the tests take 14..8; a bench run reserves one of these
_REDIS_LOCK = "pixelmill-bench-lock"


def exit_on_sigterm() -> None:
    """SIGTERM (``timeout``, a terminal closing) ends this process as Ctrl-C would: ``finally`` blocks
    stop the subprocesses it started and drop the databases it made."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def tiny_catalog(path: Path, **fields) -> Path:
    """A catalog with only the shipped pixelmill-tiny (on the CPU), serving the BFL endpoint ``flux-dev``."""
    entry = {"name": "pixelmill-tiny", "path": "builtin:pixelmill-tiny", "device": "cpu", "price_per_megapixel": 1.0,
             "bfl_endpoints": ["flux-dev"], **fields}
    path.write_text("[[models]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in entry.items()))
    return path


@contextlib.contextmanager
def postgres_database(admin_url: str = PG_ADMIN_URL):
    """A fresh PostgreSQL database (its URL) for the block, dropped afterwards."""
    import sqlalchemy as sa

    name = f"pixelmill_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"))
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@contextlib.contextmanager
def redis_database(base_url: str = REDIS_URL):
    """A Redis database no test and no other bench uses (its URL), emptied before and after the block."""
    import redis

    token = uuid.uuid4().hex
    for db in BENCH_REDIS_DBS:
        client = redis.Redis.from_url(f"{base_url}/{db}", socket_connect_timeout=2)
        if not client.set(_REDIS_LOCK, token, nx=True, ex=3600):
            client.close()
            continue
        try:
            for key in client.scan_iter(count=500):
                if key != _REDIS_LOCK.encode():
                    client.delete(key)
            yield f"{base_url}/{db}"
        finally:
            client.flushdb()  # the lock goes with the rest
            client.close()
        return
    raise RuntimeError(f"every Redis database in {BENCH_REDIS_DBS} is taken by another bench run")


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 180.0, status: int = 200) -> float:
    """Poll ``url`` until it answers ``status``; the seconds it took.  Raises if ``proc`` exits meanwhile."""
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, proc.args[2:4]))} exited with {proc.returncode} while starting")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == status:
                return time.monotonic() - start
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer {status} in {timeout:.0f} s")


class Command:
    """One ``pixelmill`` command (``serve`` or ``worker``) in a subprocess with its own log, started and killed at will.

    ``start()`` waits until it is ready: ``/readyz`` answers 200 on ``port`` (the server's port, or a
    worker's ``--health-port``), so its models are loaded.  Each start appends to the same log."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path, port: int | None = None,
                 program: list[str] | None = None, nice: int = 0):
        self.name, self.args, self.env, self.port = name, args, env, port
        self.nice = nice  # the process's niceness (a worker that stands for another machine: see bench/load.py)
        self.program = program or PIXELMILL  # the argv before the command's own arguments
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @classmethod
    def serve(cls, name: str, env: dict[str, str], log_dir: Path, program: list[str] | None = None) -> Command:
        port = free_port()
        return cls(name, ["serve", "--port", str(port), "--log-level", "warning"], env, log_dir, port, program)

    @classmethod
    def worker(cls, name: str, env: dict[str, str], log_dir: Path, *args: str, nice: int = 0) -> Command:
        port = free_port()
        return cls(name, ["worker", "--health-port", str(port), "--log-level", "warning", *args], env, log_dir, port, nice=nice)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, timeout: float = 240.0) -> float:
        """Start and wait until ready; the seconds that took."""
        with open(self.log_path, "ab") as log:
            nice = self.nice
            self.proc = subprocess.Popen(self.program + self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=(lambda: os.nice(nice)) if nice else None)
        try:
            return wait_http(self.base + "/readyz", self.proc, timeout)
        except RuntimeError as e:
            raise RuntimeError(f"{self.name}: {e}\n{self.tail()}") from None

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return f"--- {self.name} log ({self.log_path}):\n" + self.log_path.read_bytes()[-chars:].decode(errors="replace")
        return ""


@contextlib.contextmanager
def running(*commands: Command):
    """Start the commands one after the other; stop (SIGTERM) every one still running when the block ends."""
    try:
        for c in commands:
            c.start()
        yield commands
    finally:
        for c in commands:
            c.stop()


def drain(db_url: str, execution_ids: list[str], stall_s: float = 60.0) -> float:
    """Wait until every one of these executions is finished (succeeded, failed or cancelled), or until
    none finished for ``stall_s`` seconds (what is left then is lost); the seconds waited."""
    import sqlalchemy as sa

    from pixelmill.domain.status import ExecutionStatus
    from pixelmill.store.tables import executions

    ids, start = set(execution_ids), time.monotonic()
    engine = sa.create_engine(db_url)
    try:
        finished, changed = -1, time.monotonic()
        while time.monotonic() - changed < stall_s:
            with engine.connect() as conn:
                rows = conn.execute(sa.select(executions.c.id, executions.c.status)).all()
            now = sum(1 for r in rows if r.id in ids and ExecutionStatus(r.status).is_terminal())
            if now == len(ids):
                break
            if now != finished:
                finished, changed = now, time.monotonic()
            time.sleep(0.5)
    finally:
        engine.dispose()
    return time.monotonic() - start


def audit(db_url: str, execution_ids: list[str]) -> dict:
    """What the database recorded for these executions, from its own tables.

    ``double_charged``: executions with more than one hold or more than one settle (capture or
    release) entry in the credit ledger; ``charged_once``: exactly one hold and one capture;
    ``unsettled``: a hold and no settle yet; ``completed_twice``: node runs with more than one
    ``node.completed`` event; ``rerun``: node runs attempted more than once (a kill's victims);
    ``unreconciled``: accounts whose stored balance differs from their ledger sum; ``status``: the
    executions by status; ``node_seconds``: each finished node run's run time."""
    import sqlalchemy as sa

    from pixelmill.accounts import ledger
    from pixelmill.store.tables import credit_ledger, execution_events, executions, node_runs

    ids = set(execution_ids)
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            entries = Counter()
            for eid, kind in conn.execute(sa.select(credit_ledger.c.execution_id, credit_ledger.c.kind).where(credit_ledger.c.execution_id.is_not(None))):
                if eid in ids:
                    entries[(eid, kind)] += 1
                    if kind in ("capture", "release"):
                        entries[(eid, "settle")] += 1
            completions = Counter()
            for eid, data in conn.execute(sa.select(execution_events.c.execution_id, execution_events.c.data).where(execution_events.c.event == "node.completed")):
                if eid in ids:
                    completions[(eid, data.get("node"))] += 1
            status = Counter()
            for eid, st in conn.execute(sa.select(executions.c.id, executions.c.status)):
                if eid in ids:
                    status[st] += 1
            runs = [
                r for r in conn.execute(sa.select(node_runs.c.execution_id, node_runs.c.node_id, node_runs.c.attempts, node_runs.c.started_at, node_runs.c.finished_at))
                if r.execution_id in ids
            ]
            unreconciled = ledger.reconcile(conn)
    finally:
        engine.dispose()
    return {
        "status": dict(status),
        "double_charged": sum(1 for e in ids if entries[(e, "hold")] > 1 or entries[(e, "settle")] > 1),
        "charged_once": sum(1 for e in ids if entries[(e, "hold")] == 1 and entries[(e, "settle")] == 1 and entries[(e, "capture")] == 1),
        "unsettled": sum(1 for e in ids if entries[(e, "hold")] and not entries[(e, "settle")]),
        "node_runs": len(runs),
        "completed_twice": sum(1 for n in completions.values() if n > 1),
        "never_completed": sum(1 for r in runs if completions[(r.execution_id, r.node_id)] == 0),
        "rerun": sum(1 for r in runs if r.attempts > 1),
        "unreconciled": len(unreconciled),
        "node_seconds": [r.finished_at - r.started_at for r in runs if r.started_at and r.finished_at],
    }


if __name__ == "__main__":
    {"serve": _serve, "floor": _floor}[sys.argv[1]](int(sys.argv[2]))


def print_columns(columns: dict[str, dict], rows: list[tuple[str, Callable[[dict], str]]], cell: int) -> None:
    """A table: one column per named result, one line per ``(label, fn)`` row (``fn(result)`` is the cell)."""
    width = max(len(label) for label, _ in rows)
    print(f"{'':{width}}  " + "  ".join(f"{name:>{cell}}" for name in columns))
    for label, fn in rows:
        print(f"{label:{width}}  " + "  ".join(f"{fn(r):>{cell}}" for r in columns.values()))
