"""The ``pixelmill`` command (typer + rich).

Server side: ``serve``, ``worker``, ``migrate``, ``init``, ``keys``, ``accounts``,
``credits``, ``usage``, ``models add``.  Client side, against a server
(``--server URL``, key from ``PIXELMILL_API_KEY``) or the local embedded data
directory: ``generate``, ``run``, ``models list``; against a running server
with its admin key (``PIXELMILL_ADMIN_KEY``): ``models load`` / ``models unload``.

Only ``migrate``, ``init`` and ``serve`` (embedded) change the database schema;
the other commands check it and say what to run when it is behind.  Read-only
commands print no library log lines; ``--json`` prints one JSON document for
scripts.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from pixelmill.config import ConfigError, Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Self-hosted image-generation API server.", pretty_exceptions_enable=False)
keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys.")
accounts_app = typer.Typer(no_args_is_help=True, help="Manage accounts.")
credits_app = typer.Typer(no_args_is_help=True, help="Manage credits.")
models_app = typer.Typer(no_args_is_help=True, help="The model catalog.")
app.add_typer(keys_app, name="keys")
app.add_typer(accounts_app, name="accounts")
app.add_typer(credits_app, name="credits")
app.add_typer(models_app, name="models")

LOCAL_ACCOUNT = "local"
LOCAL_CREDITS = 1_000_000.0


class CliError(Exception):
    """A refusal the user can act on: printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


_global: dict[str, Any] = {}

#: what runs nodes needs the model runtime (``pixelmill[worker]``); an API node does not
MODEL_RUNTIME = ("torch", "diffusers")


def _need_model_runtime(what: str, install: str) -> None:
    """Refuse to start a process that runs nodes where the model runtime is not installed."""
    import importlib.util

    missing = [m for m in MODEL_RUNTIME if importlib.util.find_spec(m) is None]
    if missing:
        raise CliError(f"{what} runs models in this process, and {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: pip install '{install}'", 2)


@app.callback()
def _options(
    config: Optional[str] = typer.Option(None, "--config", help="TOML settings file (default: $PIXELMILL_CONFIG)"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="where the database, files and secret live"),
    database_url: Optional[str] = typer.Option(None, "--database-url", help="SQLAlchemy URL (default: SQLite in the data dir)"),
) -> None:
    _global.clear()
    _global.update(config=config, data_dir=data_dir, database_url=database_url)


def _settings(**more: Any) -> Settings:
    overrides = {k: v for k, v in {"data_dir": _global.get("data_dir"), "database_url": _global.get("database_url"), **more}.items() if v}
    return Settings.load(_global.get("config"), **overrides)


def _quiet() -> None:
    """Library log lines (Alembic, diffusers, httpx) stay out of command output."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("alembic", "httpx", "diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _db(settings: Settings, *, write: bool):
    """The database, at the newest schema or refused with what to run.

    A write command on the embedded default initialises a brand-new SQLite
    database (as ``serve`` would); it never migrates an existing one."""
    from pixelmill.store import migrate
    from pixelmill.store.db import Database

    url = settings.resolved_database_url()
    embedded = settings.database_url is None
    if embedded and not (settings.data_dir / "pixelmill.db").exists() and not write:
        raise CliError(f"there is no database in {settings.data_dir} yet: run `pixelmill init` (or start `pixelmill serve`)", 2)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        heads = migrate.current_heads(url)
    except Exception as exc:
        raise CliError(f"cannot open the database ({type(exc).__name__}: {exc})", 2) from None
    if embedded and write and not heads:  # a brand-new embedded database: set it up as serve would
        migrate.upgrade(url)
        return Database(url)
    head = migrate.head_revision()
    if head not in heads:
        where = ", ".join(heads) or "empty"
        raise CliError(f"the database schema is behind (at {where}; this version needs {head}): run `pixelmill migrate` (or `pixelmill init`)", 2)
    return Database(url)


def _out(data: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:
        print(json.dumps(data, default=str))
    elif text is not None:
        print(text)


# ---------------------------------------------------------------- server processes


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="address to listen on"),
    port: Optional[int] = typer.Option(None, help="port to listen on"),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Run the API server with its in-process worker (embedded mode)."""
    import uvicorn

    from pixelmill.api.app import create_app
    from pixelmill.runtime import Runtime

    from pixelmill.ops.logs import configure_logging

    configure_logging()  # JSON lines, or plain text on a terminal
    settings = _settings(host=host, port=port)
    if settings.queue == "inprocess":
        _need_model_runtime("the embedded server (an API node sets PIXELMILL_QUEUE=celery)", "pixelmill[all]")
    runtime = Runtime(settings)
    application = create_app(runtime)
    print(f"pixelmill serving on {settings.resolved_base_url()} (data in {settings.data_dir})", flush=True)
    from pixelmill.api.studio import startup_message

    print(startup_message(runtime), flush=True)
    # uvicorn's own lines go through the handler configured above (JSON or plain text, written off
    # the event loop); its access lines are off, as pixelmill's access line covers each request
    config = uvicorn.Config(application, host=settings.host, port=settings.port, log_level=log_level, log_config=None, access_log=False)
    _run_server(config)


def _run_server(config) -> None:
    """Run uvicorn's server so that every log line is written before the process dies by a
    signal: uvicorn re-raises a captured SIGTERM once it has shut down, and the process then
    dies by it with no exit handlers, so nothing else would flush the lines still waiting for
    the log writer ("Application shutdown complete", "Finished server process")."""
    import contextlib

    import uvicorn

    from pixelmill.ops.logs import flush_logs

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                try:
                    yield
                finally:
                    flush_logs()  # before uvicorn's capture_signals re-raises the signal

    try:
        Server(config).run()
    except KeyboardInterrupt:  # Ctrl-C, re-raised once the server stopped: a clean stop, as uvicorn.run's
        pass


@app.command()
def worker(
    queues: Optional[str] = typer.Option(None, "--queues", "-Q", help="comma-separated queues, e.g. model.pixelmill-tiny,default (default: every catalog model, then default)"),
    concurrency: int = typer.Option(1, "--concurrency", "-c", help="node runs at a time"),
    pool: str = typer.Option("threads", help="threads or solo; models stay in this one process"),
    no_preload: bool = typer.Option(False, "--no-preload", help="load models on first use instead of before consuming"),
    hostname: Optional[str] = typer.Option(None, help="Celery node name (default: pixelmill-<pid>@<host>)"),
    visibility_timeout: Optional[float] = typer.Option(
        None, "--visibility-timeout",
        help="seconds before a dead worker's task is handed out again; same on every worker, longer than any node run (default: from node_timeout_s)",
    ),
    health_port: Optional[int] = typer.Option(None, "--health-port", help="serve /healthz, /readyz and /metrics on this port (0: any free port; default: off)"),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Run a scale-out worker: node tasks from Celery (Redis), one process per GPU."""
    from pixelmill.worker import parse_queues, run_worker

    if pool not in ("threads", "solo"):
        raise CliError("--pool is threads or solo", 2)
    _need_model_runtime("pixelmill worker", "pixelmill[worker]")
    from pixelmill.ops.logs import configure_logging

    configure_logging()  # JSON lines, or plain text on a terminal
    settings = _settings()
    try:
        code = run_worker(
            settings, queues=parse_queues(queues) or None, concurrency=concurrency, pool=pool, preload=not no_preload,
            hostname=hostname, loglevel=log_level.upper(), visibility_timeout_s=visibility_timeout, health_port=health_port,
        )
    except ValueError as e:
        raise CliError(f"pixelmill worker: {e}", 2) from None
    if code:
        raise typer.Exit(code)


@app.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    from pixelmill.store import migrate as migrations

    _quiet()
    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.resolved_database_url())
    print("database is at the newest schema")


@app.command()
def init(
    account: str = typer.Option("me", help="name of the first account"),
    plan: Optional[str] = typer.Option(None, help="its plan (default: the default plan)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Set up a data directory: the database at the newest schema and a first API key (shown once)."""
    from pixelmill.store import migrate as migrations

    _quiet()
    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.resolved_database_url())
    created = _create_key(settings, account, plan, None, "first key")
    _out(created, as_json, None)
    if not as_json:
        print(created["key"])
        print(f"# data in {settings.data_dir}; account {account}, {created['credits']} credits; the key is shown only once", file=sys.stderr)


# ---------------------------------------------------------------- accounts and keys


def _known_plan(settings: Settings, plan: str) -> None:
    from pixelmill.accounts.plans import load_plans

    plans = load_plans(settings.plans)
    if plan not in plans:
        raise CliError(f"unknown plan {plan!r}; plans: {', '.join(sorted(plans))}", 2)


def _create_key(settings: Settings, account: str, plan: str | None, credits: float | None, name: str) -> dict:
    from pixelmill.accounts import keys, ledger
    from pixelmill.accounts.plans import load_plans, open_account

    if plan:
        _known_plan(settings, plan)
    chosen = load_plans(settings.plans).get(plan or settings.default_plan)
    db = _db(settings, write=True)
    with db.transaction() as conn:
        account_id = keys.find_account_by_name(conn, account)
        if account_id is None:
            if chosen is None:
                raise CliError(f"unknown default plan {settings.default_plan!r}", 2)
            account_id = open_account(conn, account, chosen, credits)
        elif credits:
            ledger.grant(conn, account_id, credits, f"cli-grant:{uuid.uuid4()}", note="granted from the command line")
        created = keys.create_key(conn, account_id, name or "")
        balance = ledger.balance(conn, account_id)
    return {"key": created.key, "id": created.id, "account_id": account_id, "credits": balance}


@keys_app.command("create")
def keys_create(
    account: str = typer.Option("default", help="account name"),
    plan: Optional[str] = typer.Option(None, help="plan for a new account"),
    name: Optional[str] = typer.Option(None, help="a label for the key"),
    credits: Optional[float] = typer.Option(None, help="credits to grant (a new account: instead of its plan's initial_credits)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create an API key (and its account if new)."""
    _quiet()
    created = _create_key(_settings(), account, plan, credits, name or "")
    if as_json:
        _out(created, True)
    else:
        print(created["key"])
        print(f"# key id {created['id']}, account {account} ({created['account_id']}), {created['credits']} credits; the key is shown only once", file=sys.stderr)


@keys_app.command("list")
def keys_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """List keys (never the keys themselves: their prefixes)."""
    from pixelmill.accounts import keys

    _quiet()
    db = _db(_settings(), write=False)
    with db.engine.connect() as conn:
        rows = keys.list_keys(conn)
    if as_json:
        _out(rows, True)
        return
    for r in rows:
        state = "revoked" if r["revoked_at"] else "active"
        print(f"{r['id']}  {r['prefix']}…  {state:8} account={r['account_name']} plan={r['plan']} name={r['name']}")


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="key id")) -> None:
    """Revoke a key by id."""
    from pixelmill.accounts import keys

    _quiet()
    db = _db(_settings(), write=True)
    with db.transaction() as conn:
        n = keys.revoke_key(conn, key_id)
    if not n:
        raise CliError(f"no active key {key_id}", 1)
    print(f"revoked {key_id}")


def _directory(settings: Settings, *, write: bool):
    from pixelmill.accounts.directory import AccountDirectory
    from pixelmill.accounts.plans import load_plans

    return AccountDirectory(_db(settings, write=write), load_plans(settings.plans), settings.default_plan)


def _account_id(directory, name_or_id: str) -> str:
    account_id = directory.find(name_or_id)
    if account_id is None:
        raise CliError(f"no account {name_or_id}", 1)
    return account_id


@accounts_app.command("set-plan")
def accounts_set_plan(account: str = typer.Argument(..., help="account name or id"), plan: str = typer.Argument(...)) -> None:
    """Move an account to another plan."""
    _quiet()
    settings = _settings()
    _known_plan(settings, plan)
    directory = _directory(settings, write=True)
    account_id = _account_id(directory, account)
    directory.set_plan(account_id, plan)
    print(f"account {account} ({account_id}) is now on plan {plan}")


@credits_app.command("grant")
def credits_grant(
    account: str = typer.Argument(..., help="account name or id"),
    amount: float = typer.Argument(...),
    entry_key: Optional[str] = typer.Option(None, "--entry-key", help="makes the grant exactly-once: repeating it adds nothing"),
    note: Optional[str] = typer.Option(None),
) -> None:
    """Grant credits to an account (a ledger entry)."""
    _quiet()
    if amount <= 0:
        raise CliError("the amount must be positive", 2)
    entry = entry_key or f"cli-grant:{uuid.uuid4()}"
    directory = _directory(_settings(), write=True)
    account_id = _account_id(directory, account)
    result = directory.grant(account_id, amount, entry, note=note or "granted from the command line")
    granted, balance = result.granted, result.credits
    if granted:
        print(f"granted {amount} credits to {account} ({account_id}); balance {balance}")
    else:
        print(f"entry {entry} was already granted; nothing added; balance {balance}")


@app.command()
def usage(
    account: str = typer.Argument(..., help="account name or id"),
    since: Optional[float] = typer.Option(None, help="UNIX time: count executions created from then on"),
    entries: int = typer.Option(20, help="ledger entries to show"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """An account's executions, credits spent and ledger."""
    _quiet()
    directory = _directory(_settings(), write=False)
    account_id = _account_id(directory, account)
    result = directory.usage(account_id, since=since, entries=entries)
    if as_json:
        _out(result, True)
        return
    ex = result["executions"]
    print(f"account {account} ({account_id}) on plan {result['plan']}: {result['credits']} credits available")
    print(f"executions: {ex['total']} " + " ".join(f"{k}={v}" for k, v in sorted(ex["by_status"].items())))
    print(f"credits spent: {result['credits_spent']}, held by active executions: {result['credits_held']}")
    for e in result["ledger"]:
        print(f"  {e['created_at']:.0f}  {e['kind']:8} {e['amount']:+.4f}  {e['execution_id'] or ''}  {e['note'] or ''}")


# ---------------------------------------------------------------- client commands


@contextmanager
def _connect(server: str | None) -> Iterator[Any]:
    """A client for ``--server`` (key from PIXELMILL_API_KEY), or for an embedded server started here
    on the local data directory (a key of the ``local`` account, revoked afterwards)."""
    from pixelmill.client import Client

    if server:
        with Client(server) as px:
            if not px.api_key:
                raise CliError("set PIXELMILL_API_KEY to a key of that server", 2)
            yield px
        return
    import socket
    import threading
    import time

    import uvicorn

    from pixelmill.accounts import keys, ledger
    from pixelmill.api.app import create_app
    from pixelmill.ops.logs import no_loading_bars
    from pixelmill.runtime import Runtime

    settings = _settings()
    db = _db(settings, write=True)
    no_loading_bars()  # the command's own progress is the one that counts
    with db.transaction() as conn:
        account_id = keys.find_account_by_name(conn, LOCAL_ACCOUNT) or keys.create_account(conn, LOCAL_ACCOUNT, "enterprise")
        if ledger.balance(conn, account_id) < LOCAL_CREDITS / 2:
            ledger.grant(conn, account_id, LOCAL_CREDITS, f"local-cli:{uuid.uuid4()}", note="the operator's own use from the command line")
        created = keys.create_key(conn, account_id, "pixelmill command line")
    runtime = Runtime(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server_ = uvicorn.Server(uvicorn.Config(create_app(runtime), log_level="warning"))
    thread = threading.Thread(target=server_.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server_.started:
            if not thread.is_alive():
                raise CliError("the local server did not start", 1)
            time.sleep(0.05)
        with Client(f"http://127.0.0.1:{sock.getsockname()[1]}", created.key, timeout=600) as px:
            yield px
    finally:
        server_.should_exit = True
        thread.join(timeout=30)
        sock.close()
        with db.transaction() as conn:
            keys.revoke_key(conn, created.id)


def _follow(px, execution_id: str, quiet: bool) -> Any:
    """Show the execution's progress (one bar per node) until it ends; the finished execution."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        return px.wait(execution_id)
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), console=console) as bars:
        tasks: dict[str, Any] = {}
        overall = bars.add_task("queued", total=1.0)
        for event in px.events(execution_id):
            data = event.data
            node = data.get("node")
            if node and node not in tasks and event.type.startswith("node."):
                tasks[node] = bars.add_task(f"  {node}", total=1.0)
            if event.type == "snapshot":
                position = data.get("queuePosition")
                label = f"queued (position {position})" if data.get("status") == "QUEUED" and position is not None else str(data.get("status", "")).lower()
                bars.update(overall, description=label, completed=data.get("progress") or 0.0)
            elif event.type == "execution.progress":
                bars.update(overall, description="running", completed=data.get("progress") or 0.0)
                if node in tasks and data.get("nodeProgress") is not None:
                    bars.update(tasks[node], completed=data["nodeProgress"])
            elif event.type == "node.completed" and node in tasks:
                bars.update(tasks[node], completed=1.0)
            elif event.terminal:
                bars.update(overall, description=event.type.split(".", 1)[1], completed=1.0 if event.type == "execution.succeeded" else None)
    return px.get(execution_id)


def _save_outputs(px, execution, out: Path, as_json: bool) -> list[str]:
    if execution.status != "COMPLETED":
        error = execution.error or {}
        raise CliError(f"execution {execution.id} {execution.status.lower()}: {error.get('code')}: {error.get('message')}", 1)
    paths = []
    for i, url in enumerate(execution.outputs):
        target = out
        if len(execution.outputs) > 1 or out.is_dir():
            stem = out / execution.id if out.is_dir() else out.with_name(out.stem)
            target = Path(f"{stem}-{i}{Path(url.split('?')[0]).suffix}") if not out.is_dir() else out / f"{execution.id}-{i}{Path(url.split('?')[0]).suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        px.download(url, target)
        paths.append(str(target))
    return paths


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="what to draw"),
    output: Path = typer.Option(Path("out.png"), "--output", "-o", help="file (or folder) to write"),
    model: Optional[str] = typer.Option(None, help="catalog model or alias (default: the server's first)"),
    size: Optional[str] = typer.Option(None, help="WIDTHxHEIGHT, e.g. 512x512"),
    steps: Optional[int] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    n: int = typer.Option(1, "--n", help="number of images"),
    server: Optional[str] = typer.Option(None, "--server", help="a pixelmill server URL (default: the local data directory)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Generate images with a live progress bar and save them."""
    _quiet()
    width = height = None
    if size:
        try:
            width, height = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise CliError(f"--size is WIDTHxHEIGHT, e.g. 512x512, not {size!r}", 2) from None
    fmt = output.suffix.lstrip(".").lower().replace("jpg", "jpeg") if output.suffix else None
    with _connect(server) as px:
        job = px.generate(prompt, model=model, width=width, height=height, steps=steps, seed=seed, n=n,
                          output_format=fmt if fmt in ("png", "jpeg", "webp") else None)
        done = _follow(px, job.id, as_json)
        paths = _save_outputs(px, done, output, as_json)
    _out({"executionId": done.id, "files": paths, "credits": done.credits}, as_json, "\n".join(paths))


def _parse_inputs(pairs: list[str]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--input takes KEY=VALUE, not {pair!r}", 2)
        try:
            inputs[key] = json.loads(value)
        except ValueError:
            inputs[key] = value
    return inputs


@app.command()
def run(
    workflow: Path = typer.Argument(..., exists=True, dir_okay=False, help="a workflow JSON file (saved on the server by its name)"),
    inputs: list[str] = typer.Option([], "--input", "-i", help="KEY=VALUE (JSON values allowed), repeatable"),
    output: Path = typer.Option(Path("."), "--output", "-o", help="folder for the outputs"),
    server: Optional[str] = typer.Option(None, "--server", help="a pixelmill server URL (default: the local data directory)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run a workflow file with per-node progress and save its outputs."""
    _quiet()
    try:
        spec = json.loads(workflow.read_text())
    except ValueError as e:
        raise CliError(f"{workflow}: not JSON ({e})", 2) from None
    values = _parse_inputs(inputs)
    output.mkdir(parents=True, exist_ok=True)
    with _connect(server) as px:
        existing = next((w for w in px.list_workflows() if w.name == spec.get("name")), None)
        saved = px.update_workflow(existing.id, spec) if existing else px.create_workflow(spec)
        started = px.execute(saved.id, values)
        done = _follow(px, started.id, as_json)
        paths = _save_outputs(px, done, output, as_json)
    _out({"executionId": done.id, "workflowId": saved.id, "files": paths, "credits": done.credits}, as_json, "\n".join(paths))


@models_app.command("list")
def models_list(
    server: Optional[str] = typer.Option(None, "--server", help="a pixelmill server URL (default: the local catalog)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The catalog's models (with their state on a server)."""
    _quiet()
    if server:
        from pixelmill.client import Client

        with Client(server) as px:
            rows = px.models()
    else:
        from pixelmill.models.catalog import ModelCatalog

        catalog = ModelCatalog.load(_settings().resolved_models_catalog())
        rows = [{"id": name, "state": "cold", "aliases": list(getattr(catalog.get(name), "aliases", []) or [])} for name in catalog.names()]
    if as_json:
        _out(rows, True)
        return
    for row in rows:
        name = row.get("id") or row.get("name")
        print(f"{name:28} {row.get('state', ''):10} {', '.join(row.get('aliases') or [])}")


def _model_control(action: str, name: str, server: str | None, as_json: bool) -> None:
    import os

    from pixelmill.client import Client

    _quiet()
    admin_key = os.environ.get("PIXELMILL_ADMIN_KEY")
    if not admin_key:
        raise CliError("set PIXELMILL_ADMIN_KEY to the server's admin key", 2)
    with Client(server, admin_key, timeout=900, max_retries=0) as px:
        state = px.load_model(name) if action == "load" else px.unload_model(name)
    workers = ", ".join(
        f"{w.get('worker')}: {w['outcome']}" if "outcome" in w else f"{w.get('worker')} on {w.get('device')}" for w in state.get("workers") or []
    )
    memory = f", {state['memory_bytes'] / 2**20:.1f} MiB" if state.get("memory_bytes") else ""
    _out(state, as_json, f"{state['name']}: {state['state']}{' (' + workers + memory + ')' if workers else ''}")


@models_app.command("load")
def models_load(
    name: str = typer.Argument(..., help="catalog name (or alias) of the model"),
    server: Optional[str] = typer.Option(None, "--server", help="the server's URL (default: $PIXELMILL_BASE_URL or http://127.0.0.1:8000)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Load a model on a running server now, or on its workers in scale-out (admin key from PIXELMILL_ADMIN_KEY)."""
    _model_control("load", name, server, as_json)


@models_app.command("unload")
def models_unload(
    name: str = typer.Argument(..., help="catalog name (or alias) of the model"),
    server: Optional[str] = typer.Option(None, "--server", help="the server's URL (default: $PIXELMILL_BASE_URL or http://127.0.0.1:8000)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Free an idle model's memory on a running server, or on its workers in scale-out (admin key from PIXELMILL_ADMIN_KEY)."""
    _model_control("unload", name, server, as_json)


@models_app.command("add")
def models_add(
    path: Path = typer.Argument(..., exists=True, file_okay=False, help="a local diffusers model folder"),
    name: Optional[str] = typer.Option(None, help="catalog name (default: the folder's name)"),
    price: float = typer.Option(1.0, "--price-per-megapixel"),
    endpoints: list[str] = typer.Option([], "--bfl-endpoint", help="BFL endpoints it serves, repeatable"),
) -> None:
    """Validate a local diffusers folder and add it to the catalog file."""
    import re

    from pixelmill.models.catalog import ModelCatalog

    _quiet()
    index = path / "model_index.json"
    if not index.is_file():
        raise CliError(f"{path} is not a diffusers model folder (no model_index.json)", 2)
    try:
        meta = json.loads(index.read_text())
        pipeline = meta["_class_name"]
        import diffusers

        if not hasattr(diffusers, pipeline):
            raise CliError(f"{path}: pipeline {pipeline} is not one this diffusers knows", 2)
        missing = [c for c, spec in meta.items() if not c.startswith("_") and isinstance(spec, list) and spec[0] and not (path / c).is_dir()]
        if missing:
            raise CliError(f"{path}: missing component folders {', '.join(missing)}", 2)
    except (ValueError, KeyError) as e:
        raise CliError(f"{path}: unreadable model_index.json ({e})", 2) from None
    settings = _settings()
    name = name or re.sub(r"[^A-Za-z0-9._-]+", "-", path.resolve().name)
    target = settings.resolved_models_catalog() or (settings.data_dir / "models.toml")
    current = ModelCatalog.load(target if target.exists() else None)
    if name in current.names():
        raise CliError(f"the catalog already has a model named {name!r}", 2)
    text = target.read_text() if target.exists() else _builtin_catalog_text()
    entry = f'\n[[models]]\nname = "{name}"\npath = "{path.resolve()}"\nprice_per_megapixel = {price}\n'
    if endpoints:
        entry += "bfl_endpoints = [" + ", ".join(json.dumps(e) for e in endpoints) + "]\n"
    ModelCatalog.from_toml(text + entry, source=str(target), base_dir=target.parent)  # refuse what would not load
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text + entry)
    print(f"added {name} ({pipeline}) to {target}")


def _builtin_catalog_text() -> str:
    return (Path(__file__).parent / "models" / "default_catalog.toml").read_text()


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Run the command; its exit code (usage errors 2, refusals 1 or 2, as each command says)."""
    import httpx

    from pixelmill.client import PixelmillError
    from pixelmill.store.migrate import SchemaOutOfDate

    try:
        app(args=argv, prog_name="pixelmill", standalone_mode=True)
        return 0
    except SystemExit as e:  # typer's own exits: help, usage errors, typer.Exit
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except CliError as e:
        print(f"pixelmill: {e}", file=sys.stderr)
        return e.code
    except PixelmillError as e:  # the server refused: its status, stable code and message
        print(f"pixelmill: {e}", file=sys.stderr)
        return 1
    except httpx.TransportError as e:
        print(f"pixelmill: cannot reach the server ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    except (ConfigError, SchemaOutOfDate) as e:
        print(f"pixelmill: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
