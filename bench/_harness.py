"""Shared parts of the speed benches: a server in a subprocess, a light HTTP load client, percentiles.

``python bench/_harness.py serve PORT`` runs the API from ``PIXELMILL_*``
environment settings (uvicorn, no access log); the benches start it that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


if __name__ == "__main__":
    {"serve": _serve, "floor": _floor}[sys.argv[1]](int(sys.argv[2]))
