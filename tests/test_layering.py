"""The house rules the code keeps: read from the source, so a regression fails here first."""

from __future__ import annotations

import ast
from pathlib import Path

import pixelmill

ROOT = Path(pixelmill.__file__).parent


def modules(*parts: str) -> list[Path]:
    return sorted((ROOT.joinpath(*parts)).rglob("*.py"))


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def strings(path: Path) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def test_the_api_layer_runs_no_sql():
    offenders = {
        str(p.relative_to(ROOT)): sorted(i for i in imports(p) if i == "sqlalchemy" or i.startswith("pixelmill.store.tables"))
        for p in modules("api")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    cli = imports(ROOT / "cli.py")
    assert not [i for i in cli if i.startswith("pixelmill.store.tables")]


def test_no_dialect_writes_a_node_dict():
    node_types = {"text_to_image", "load_image", "pad", "upscale", "resize", "convert"}
    found = {str(p.relative_to(ROOT)): sorted(strings(p) & node_types) for p in modules("api", "dialects")}
    assert {k: v for k, v in found.items() if v} == {}


def test_services_build_no_http_headers():
    header_names = {"Retry-After", "X-RateLimit-Limit", "RateLimit-Policy", "RateLimit"}
    services = [p for part in ("accounts", "engine", "store", "workflows") for p in modules(part)]
    found = {str(p.relative_to(ROOT)): sorted(strings(p) & header_names) for p in services}
    assert {k: v for k, v in found.items() if v} == {}


def test_domain_layers_never_import_the_web_framework():
    for part in ("engine", "nodes", "recipes", "accounts", "webhooks", "workflows", "models", "store"):
        for p in modules(part):
            assert not [i for i in imports(p) if i.split(".")[0] in ("fastapi", "starlette")], p


def test_waiting_does_not_import_a_dialect():
    assert not [i for i in imports(ROOT / "api" / "wait.py") if i.startswith("pixelmill.api.dialects")]


def test_async_routes_do_no_database_work_on_the_event_loop():
    """An ``async def`` in the API layer reaches services only through ``run_in_threadpool``
    (``executions.finished`` and ``executions.cached`` are in-memory reads and allowed)."""
    import ast
    from pathlib import Path

    services = ("executions.", "workflows.", ".db.", "transaction(", "engine.connect", "storage.", "admission.", "triggers.", "accounts.", "janitor.")
    found = []
    for path in (Path(__file__).parents[1] / "src" / "pixelmill" / "api").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef)):
            threaded = {  # everything handed to run_in_threadpool, lambdas' bodies included
                id(node)
                for call in ast.walk(fn) if isinstance(call, ast.Call) and ast.unparse(call.func).endswith("run_in_threadpool")
                for a in call.args for node in ast.walk(a)
            }
            for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call)):
                name = ast.unparse(call.func)
                if any(s in name + "(" for s in services) and not name.endswith((".finished", ".cached")) and id(call.func) not in threaded and id(call) not in threaded:
                    found.append(f"{path.name}:{call.lineno} {fn.name}: {name}")
    assert found == [], found
