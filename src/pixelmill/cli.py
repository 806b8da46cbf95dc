"""The ``pixelmill`` command: serve, worker, keys, migrate."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pixelmill.config import Settings


def _settings(args) -> Settings:
    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None):
        overrides["port"] = args.port
    return Settings.load(args.config, **overrides)


def cmd_serve(args) -> int:
    import uvicorn

    from pixelmill.api.app import create_app
    from pixelmill.runtime import Runtime

    settings = _settings(args)
    runtime = Runtime(settings)
    app = create_app(runtime)
    print(f"pixelmill serving on {settings.resolved_base_url()} (data in {settings.data_dir})", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level)
    return 0


def cmd_worker(args) -> int:
    from pixelmill.worker import parse_queues, run_worker

    settings = _settings(args)
    try:
        return run_worker(
            settings,
            queues=parse_queues(args.queues) or None,
            concurrency=args.concurrency,
            pool=args.pool,
            preload=not args.no_preload,
            hostname=args.hostname,
            loglevel=args.log_level.upper(),
            visibility_timeout_s=args.visibility_timeout,
        )
    except ValueError as e:
        print(f"pixelmill worker: {e}", file=sys.stderr)
        return 2


def cmd_migrate(args) -> int:
    from pixelmill.store import migrate

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.resolved_database_url())
    print("database is at the newest schema")
    return 0


def _db(args):
    from pixelmill.store import migrate
    from pixelmill.store.db import Database

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url()
    migrate.upgrade(url)
    return settings, Database(url)


def cmd_keys(args) -> int:
    from pixelmill.accounts import keys, ledger

    settings, db = _db(args)
    if args.keys_cmd == "create":
        if args.plan and not _known_plan(settings, args.plan):
            return 2
        from pixelmill.accounts.plans import load_plans, open_account

        plan = load_plans(settings.plans).get(args.plan or settings.default_plan)
        with db.transaction() as conn:
            account_id = keys.find_account_by_name(conn, args.account)
            if account_id is None:
                if plan is None:
                    print(f"unknown default plan {settings.default_plan!r}", file=sys.stderr)
                    return 2
                account_id = open_account(conn, args.account, plan, args.credits)
            elif args.credits:
                import uuid

                ledger.grant(conn, account_id, args.credits, f"cli-grant:{uuid.uuid4()}", note="granted from the command line")
            created = keys.create_key(conn, account_id, args.name or "")
            balance = ledger.balance(conn, account_id)
        if args.json:
            print(json.dumps({"key": created.key, "id": created.id, "account_id": account_id, "credits": balance}))
        else:
            print(created.key)
            print(f"# key id {created.id}, account {args.account} ({account_id}), {balance} credits; the key is shown only once", file=sys.stderr)
    elif args.keys_cmd == "list":
        with db.engine.connect() as conn:
            rows = keys.list_keys(conn)
        for r in rows:
            state = "revoked" if r["revoked_at"] else "active"
            print(f"{r['id']}  {r['prefix']}…  {state:8} account={r['account_name']} plan={r['plan']} name={r['name']}")
    elif args.keys_cmd == "revoke":
        with db.transaction() as conn:
            n = keys.revoke_key(conn, args.key_id)
        if not n:
            print(f"no active key {args.key_id}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}")
    return 0


def _known_plan(settings, plan: str) -> bool:
    from pixelmill.accounts.plans import load_plans

    plans = load_plans(settings.plans)
    if plan in plans:
        return True
    print(f"unknown plan {plan!r}; plans: {', '.join(sorted(plans))}", file=sys.stderr)
    return False


def _find_account(conn, name_or_id: str) -> str | None:
    import sqlalchemy as sa

    from pixelmill.accounts import keys
    from pixelmill.store.tables import accounts

    found = conn.execute(sa.select(accounts.c.id).where(accounts.c.id == name_or_id)).scalar()
    return found or keys.find_account_by_name(conn, name_or_id)


def cmd_accounts(args) -> int:
    import sqlalchemy as sa

    from pixelmill.accounts import keys
    from pixelmill.store.tables import accounts

    settings, db = _db(args)
    if args.accounts_cmd == "set-plan":
        if not _known_plan(settings, args.plan):
            return 2
        with db.transaction() as conn:
            account_id = _find_account(conn, args.account)
            if account_id is None:
                print(f"no account {args.account}", file=sys.stderr)
                return 1
            conn.execute(sa.update(accounts).where(accounts.c.id == account_id).values(plan=args.plan))
            keys.keys_changed(conn)
        print(f"account {args.account} ({account_id}) is now on plan {args.plan}")
    return 0


def cmd_credits(args) -> int:
    import uuid

    from pixelmill.accounts import ledger

    _settings_, db = _db(args)
    if args.credits_cmd == "grant":
        if args.amount <= 0:
            print("the amount must be positive", file=sys.stderr)
            return 2
        entry_key = args.entry_key or f"cli-grant:{uuid.uuid4()}"
        with db.transaction() as conn:
            account_id = _find_account(conn, args.account)
            if account_id is None:
                print(f"no account {args.account}", file=sys.stderr)
                return 1
            granted = ledger.grant(conn, account_id, args.amount, f"admin:{account_id}:{entry_key}", note=args.note or "granted from the command line")
            balance = ledger.balance(conn, account_id)
        if granted:
            print(f"granted {args.amount} credits to {args.account} ({account_id}); balance {balance}")
        else:
            print(f"entry {entry_key} was already granted; nothing added; balance {balance}")
    return 0


def cmd_usage(args) -> int:
    from pixelmill.accounts.usage import account_usage

    _settings_, db = _db(args)
    with db.engine.connect() as conn:
        account_id = _find_account(conn, args.account)
        result = account_usage(conn, account_id, since=args.since, entries=args.entries) if account_id else None
    if result is None:
        print(f"no account {args.account}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
        return 0
    ex = result["executions"]
    print(f"account {args.account} ({account_id}) on plan {result['plan']}: {result['credits']} credits available")
    print(f"executions: {ex['total']} " + " ".join(f"{k}={v}" for k, v in sorted(ex["by_status"].items())))
    print(f"credits spent: {result['credits_spent']}, held by active executions: {result['credits_held']}")
    for e in result["ledger"]:
        print(f"  {e['created_at']:.0f}  {e['kind']:8} {e['amount']:+.4f}  {e['execution_id'] or ''}  {e['note'] or ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixelmill", description="Self-hosted image-generation API server")
    p.add_argument("--config", help="TOML settings file (default: $PIXELMILL_CONFIG)")
    p.add_argument("--data-dir", help="where the database, files and secret live")
    p.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in the data dir)")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the API server with its in-process worker")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=cmd_serve)

    w = sub.add_parser("worker", help="run a scale-out worker: node tasks from Celery (Redis), one process per GPU")
    w.add_argument("--queues", "-Q", help="comma-separated queues to consume, e.g. model.pixelmill-tiny,default (default: every catalog model, then default)")
    w.add_argument("--concurrency", "-c", type=int, default=1, help="node runs at a time (default 1)")
    w.add_argument("--pool", choices=["threads", "solo"], default="threads", help="threads (default) or solo; models stay in this one process")
    w.add_argument("--no-preload", action="store_true", help="load models on first use instead of before consuming")
    w.add_argument("--hostname", help="Celery node name (default: pixelmill-<pid>@<host>)")
    w.add_argument(
        "--visibility-timeout", type=float,
        help="seconds before a dead worker's task is handed out again; same on every worker, longer than any node run (default: from node_timeout_s)",
    )
    w.add_argument("--log-level", default="info")
    w.set_defaults(func=cmd_worker)

    m = sub.add_parser("migrate", help="bring the database schema up to date")
    m.set_defaults(func=cmd_migrate)

    k = sub.add_parser("keys", help="manage API keys")
    ks = k.add_subparsers(dest="keys_cmd", required=True)
    kc = ks.add_parser("create", help="create an API key (and its account if new)")
    kc.add_argument("--account", default="default", help="account name")
    kc.add_argument("--plan", help="plan for a new account")
    kc.add_argument("--name", help="a label for the key")
    kc.add_argument("--credits", type=float, help="credits to grant (a new account: instead of its plan's initial_credits)")
    kc.add_argument("--json", action="store_true")
    ks.add_parser("list", help="list keys")
    kr = ks.add_parser("revoke", help="revoke a key by id or prefix")
    kr.add_argument("key_id")
    k.set_defaults(func=cmd_keys)

    a = sub.add_parser("accounts", help="manage accounts")
    acs = a.add_subparsers(dest="accounts_cmd", required=True)
    asp = acs.add_parser("set-plan", help="move an account to another plan")
    asp.add_argument("account", help="account name or id")
    asp.add_argument("plan")
    a.set_defaults(func=cmd_accounts)

    c = sub.add_parser("credits", help="manage credits")
    cs = c.add_subparsers(dest="credits_cmd", required=True)
    cg = cs.add_parser("grant", help="grant credits to an account (a ledger entry)")
    cg.add_argument("account", help="account name or id")
    cg.add_argument("amount", type=float)
    cg.add_argument("--entry-key", help="makes the grant exactly-once: repeating it adds nothing")
    cg.add_argument("--note")
    c.set_defaults(func=cmd_credits)

    u = sub.add_parser("usage", help="an account's executions, credits spent and ledger")
    u.add_argument("account", help="account name or id")
    u.add_argument("--since", type=float, help="UNIX time: count executions created from then on")
    u.add_argument("--entries", type=int, default=20, help="ledger entries to show")
    u.add_argument("--json", action="store_true")
    u.set_defaults(func=cmd_usage)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from pixelmill.config import ConfigError

    try:
        return args.func(args)
    except ConfigError as e:
        print(f"pixelmill: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
