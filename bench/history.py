"""Flat with history: submit, credits and poll p50 with few and with many stored executions.

For each database (SQLite file; PostgreSQL when reachable) and each history
size, a fresh database is migrated, one account gets ``size`` finished
executions bulk-loaded (each with a node run and two ledger entries), and the
app is called in-process (no socket, worker not started, so submits stay
queued): ``POST /v1/flux-dev`` (submit), ``GET /v1/credits`` and
``GET /v1/get_result`` of history executions never read before (the store
path, not the finished-view cache).  The ratio largest/smallest history is
printed per database (target ≤ 1.5×), then the query plans of what these
requests ask the store (``EXPLAIN``).

    python bench/history.py [--sizes 100,100000] [--requests 150] [--databases sqlite,postgresql]
                            [--pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from _harness import BENCH_PLAN, p50

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _pg_database(admin_url: str) -> tuple[str, callable]:
    name = f"pixelmill_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"))
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()

    return admin_url.rsplit("/", 1)[0] + f"/{name}", drop


def bulk_load(rt, account_id: str, size: int) -> list[str]:
    """``size`` finished executions of the account, with one node run and a hold and a capture each."""
    from pixelmill.store.tables import credit_ledger, executions, node_runs

    now = time.time()
    ids = []
    batch = 5000
    for start in range(0, size, batch):
        ex, runs, entries = [], [], []
        for i in range(start, min(size, start + batch)):
            eid = str(uuid.uuid4())
            ids.append(eid)
            t = now - 86000 + i * (80000 / max(size, 1))
            ex.append(dict(id=eid, account_id=account_id, dialect="bfl", label="flux-dev", status="succeeded",
                           graph={"nodes": {}, "order": ["generate"]}, request={"prompt": "history"}, created_at=t, started_at=t + 0.1,
                           finished_at=t + 1.1, expires_at=now + 86400, cost_estimate=0.01, cost_actual=0.01, cancel_requested=False, priority=0))
            runs.append(dict(id=str(uuid.uuid4()), execution_id=eid, node_id="generate", node_type="text_to_image", status="succeeded",
                             params={"model": "pixelmill-tiny", "prompt": "history"}, links={}, queue="model.pixelmill-tiny", queued_at=t,
                             started_at=t + 0.1, finished_at=t + 1.1, progress=1.0, outputs={"images": []}, seed=1, cost=0.01, attempts=1,
                             cached=False))
            entries.append(dict(account_id=account_id, execution_id=eid, kind="hold", amount_micro=-10_000, entry_key=f"hold:{eid}", created_at=t))
            entries.append(dict(account_id=account_id, execution_id=eid, kind="capture", amount_micro=0, entry_key=f"settle:{eid}", created_at=t + 1.1))
        with rt.db.transaction() as conn:
            conn.execute(sa.insert(executions), ex)
            conn.execute(sa.insert(node_runs), runs)
            conn.execute(sa.insert(credit_ledger), entries)
    with rt.db.engine.connect() as conn:
        if rt.db.is_sqlite:
            conn.exec_driver_sql("ANALYZE")
        else:
            conn.execute(sa.text("ANALYZE"))
            conn.commit()
    return ids


class InProcess:
    """Calls the ASGI app directly (no socket): the server's own cost per request."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key

    async def call(self, method: str, path: str, body: bytes = b"") -> int:
        path, _, query = path.partition("?")
        scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": query.encode(),
                 "headers": [(b"x-key", self.key.encode()), (b"host", b"bench"), (b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 1), "server": ("bench", 80), "scheme": "http", "root_path": "", "http_version": "1.1",
                 "app": self.app, "state": {}}
        sent = []

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)

        await self.app(scope, receive, send)
        return sent[0]["status"]

    async def timed(self, method: str, path: str, body: bytes = b"") -> float:
        start = time.perf_counter()
        status = await self.call(method, path, body)
        took = (time.perf_counter() - start) * 1000
        assert status == 200, f"{method} {path} answered {status}"
        return took


def measure(url: str, size: int, requests: int) -> dict[str, float]:
    from pixelmill.accounts import keys, ledger
    from pixelmill.api.app import create_app
    from pixelmill.config import Settings
    from pixelmill.runtime import Runtime

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=url, secret_key="bench", plans=BENCH_PLAN, default_plan="bench",
                            webhook_dispatcher=False, auth_failures_per_minute=None)
        rt = Runtime(settings)
        try:
            with rt.db.transaction() as conn:
                account = keys.create_account(conn, "bench", "bench")
                ledger.grant(conn, account, 1_000_000, "bench-grant")
                key = keys.create_key(conn, account).key
            history = bulk_load(rt, account, size)
            client = InProcess(create_app(rt, manage_runtime=False), key)
            submit = b'{"prompt": "a red circle", "width": 256, "height": 256, "steps": 4}'
            polled = random.Random(1).sample(history, min(len(history), requests + 10))

            async def run() -> dict[str, float]:
                for i in range(10):  # warm-up
                    await client.timed("POST", "/v1/flux-dev", submit)
                    await client.timed("GET", "/v1/credits")
                    await client.timed("GET", f"/v1/get_result?id={polled[i]}")
                s = [await client.timed("POST", "/v1/flux-dev", submit) for _ in range(requests)]
                c = [await client.timed("GET", "/v1/credits") for _ in range(requests)]
                p = [await client.timed("GET", f"/v1/get_result?id={eid}") for eid in polled[10:10 + requests]]
                return {"submit": p50(s), "credits": p50(c), "poll": p50(p)}

            return asyncio.run(run())
        finally:
            rt.stop()


def explain(url: str) -> None:
    """The query plans of the statements submit, credits and polls run, on a small loaded database."""
    from pixelmill.store.db import Database
    from pixelmill.store.tables import accounts, executions, node_runs

    db = Database(url)
    statements = {
        "active-task count": sa.select(sa.func.count()).select_from(executions)
        .where(executions.c.account_id == "a", executions.c.status.in_(["queued", "running"])),
        "stored balance": sa.select(accounts.c.credit_balance_micro).where(accounts.c.id == "a"),
        "queue position": sa.select(sa.func.count()).select_from(node_runs).where(node_runs.c.status == "queued", node_runs.c.queued_at < 1.0),
        "running since": sa.select(sa.func.min(node_runs.c.started_at)).where(node_runs.c.status == "running"),
        "execution by id": sa.select(executions).where(executions.c.id == "x"),
        "node runs of execution": sa.select(node_runs).where(node_runs.c.execution_id == "x"),
        "newest finished runs (estimate seed)": sa.select(node_runs.c.queue).where(node_runs.c.status == "succeeded")
        .order_by(node_runs.c.status, node_runs.c.finished_at.desc()).limit(50),
    }
    prefix = "EXPLAIN QUERY PLAN " if db.is_sqlite else "EXPLAIN "
    with db.engine.connect() as conn:
        for name, stmt in statements.items():
            sql = str(stmt.compile(dialect=db.engine.dialect, compile_kwargs={"literal_binds": True}))
            rows = conn.exec_driver_sql(prefix + sql).all()
            plan = "; ".join(str(r[-1]) for r in rows)
            print(f"  {name:38} {plan}")
    db.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,100000")
    ap.add_argument("--requests", type=int, default=150)
    ap.add_argument("--pg", default=PG_ADMIN, help="PostgreSQL admin URL ('' to skip)")
    ap.add_argument("--databases", default="sqlite,postgresql", help="which of sqlite,postgresql to measure")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    backends = [b for b in a.databases.split(",") if b == "sqlite" or (b == "postgresql" and a.pg)]
    results: dict[str, dict[int, dict[str, float]]] = {}
    plans_from: dict[str, str] = {}
    for backend in backends:
        results[backend] = {}
        for size in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                if backend == "sqlite":
                    url, drop = f"sqlite:///{tmp}/history.db", (lambda: None)
                else:
                    try:
                        url, drop = _pg_database(a.pg)
                    except Exception as e:
                        print(f"PostgreSQL not reachable ({e}); skipped")
                        break
                try:
                    started = time.monotonic()
                    results[backend][size] = measure(url, size, a.requests)
                    print(f"{backend} {size:>7} stored: measured in {time.monotonic() - started:.0f} s", flush=True)
                    if size == sizes[-1]:
                        print(f"\nquery plans on {backend} with {size} stored executions:")
                        explain(url)
                        print()
                finally:
                    drop()
    print(f"\np50 in ms ({a.requests} requests each; in-process ASGI calls)")
    lo, hi = sizes[0], sizes[-1]
    print(f"{'':12} {'':8} " + " ".join(f"{n:>10}" for n in sizes) + f" {'ratio':>7}")
    for backend, by_size in results.items():
        if len(by_size) < len(sizes):
            continue
        for metric in ("submit", "credits", "poll"):
            values = " ".join(f"{by_size[n][metric]:10.2f}" for n in sizes)
            print(f"{backend:12} {metric:8} {values} {by_size[hi][metric] / by_size[lo][metric]:6.2f}x")


if __name__ == "__main__":
    main()
