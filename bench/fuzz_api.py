"""Fuzz the served OpenAPI document for longer than the test suite does.

    python bench/fuzz_api.py [--examples 25] [--budget 900] [--db sqlite|postgres URL] [--seed N]

Builds a server in-process (the same app as ``pixelmill serve``, an image backend that answers
at once with tiny images, an admin key, one account on an unlimited plan), then sends schemathesis'
generated requests (valid and invalid against each operation's declared schemas)
to every operation of ``/openapi.json``.  Each response must not be a server error
and must match the document for its status (status code, content type, body
schema).  Prints the number of cases, the statuses seen, the slowest operations and
every distinct failure; exits 1 when any was found.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import FAKE_CATALOG  # noqa: E402
from tests.helpers.fuzz import TinyBackend, fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=25, help="cases per operation and generation mode")
    parser.add_argument("--budget", type=float, default=900.0, help="seconds; operations left when it runs out are listed")
    parser.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--seed", type=int, default=None, help="derandomise with this seed (default: random)")
    args = parser.parse_args()
    import logging

    logging.disable(logging.ERROR)  # request and node logs would drown the report

    from pixelmill.accounts import keys, ledger
    from pixelmill.api.app import create_app
    from pixelmill.config import Settings
    from pixelmill.models.catalog import ModelCatalog
    from pixelmill.models.registry import ModelRegistry
    from pixelmill.runtime import Runtime

    data = Path(tempfile.mkdtemp(prefix="pixelmill-fuzz-"))
    catalog = ModelCatalog.from_toml(FAKE_CATALOG + '\n[[models]]\nname = "editor"\npath = "/nonexistent"\nprice_per_megapixel = 2.0\ndefault_steps = 1\nsupports_image_input = true\n')
    registry = ModelRegistry(catalog)
    registry.register("fake", TinyBackend())
    registry.register("editor", TinyBackend())
    settings = Settings(
        data_dir=data, database_url=args.db or f"sqlite:///{data / 'fuzz.db'}", secret_key="fuzz", admin_key="fuzz-admin",
        plans={"unlimited": {}}, sync_timeout_s=5,
    )
    rt = Runtime(settings, catalog=catalog, models=registry)
    rt.start()
    try:
        with rt.db.transaction() as conn:
            aid = keys.create_account(conn, f"fuzz-{uuid.uuid4().hex[:6]}", "unlimited")
            ledger.grant(conn, aid, 10_000_000, f"fuzz:{uuid.uuid4()}")
            key = keys.create_key(conn, aid).key
        app = create_app(rt, manage_runtime=False)
        report = fuzz(app, {"x-key": key, "Authorization": "Bearer fuzz-admin"}, max_examples=args.examples, budget_s=args.budget, seed=args.seed)
    finally:
        rt.stop()
    print(report.summary())
    slow = sorted(report.timings.items(), key=lambda kv: -kv[1])[:8]
    print("slowest operations: " + ", ".join(f"{op} {s:.1f}s" for op, s in slow))
    for entry in report.skipped:
        print(f"not run (budget): {entry}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
