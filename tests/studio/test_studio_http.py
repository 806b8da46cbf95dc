"""Studio as served by the API: the page, its headers, its build, and the endpoints it uses."""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pixelmill.api.app import create_app
from pixelmill.api.studio import STUDIO_DIR
from tests.conftest import create_key, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _check_build():
    spec = importlib.util.spec_from_file_location("check_build", ROOT / "web" / "scripts" / "check_build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def client(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url)
    c = TestClient(create_app(rt, manage_runtime=False))
    return rt, c


def test_committed_build_matches_the_web_sources():
    msg = _check_build().problem()
    assert msg is None, msg


def test_stale_build_is_detected(tmp_path):
    mod = _check_build()
    web = tmp_path / "web"
    (web / "src").mkdir(parents=True)
    (web / "src" / "a.ts").write_text("export const a = 1;\n")
    build = tmp_path / "studio"
    build.mkdir()
    (build / "index.html").write_text("<!doctype html>")
    (build / "build-info.json").write_text('{"sourceHash": "%s"}' % mod.source_hash(web))
    assert mod.problem(web, build) is None
    (web / "src" / "a.ts").write_text("export const a = 2;\n")
    assert "stale" in mod.problem(web, build)


def test_package_data_ships_every_studio_file():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["pixelmill"]
    files = [p.relative_to(STUDIO_DIR.parent).as_posix() for p in STUDIO_DIR.rglob("*") if p.is_file()]
    assert files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) or fnmatch.fnmatch(Path(f).name, pat.split("/")[-1]) for pat in patterns)]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_studio_page_has_a_strict_csp_and_no_secrets(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, admin_key="admin-key-that-must-stay-secret")
    c = TestClient(create_app(rt, manage_runtime=False))
    secrets = [create_key(rt), "admin-key-that-must-stay-secret", rt.settings.resolved_secret_key()]
    r = c.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'", "base-uri 'none'"):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert "<script>" not in r.text  # no inline script: everything comes from /assets
    scripts = re.findall(r'src="(/assets/[^"]+\.js)"', r.text)
    styles = re.findall(r'href="(/assets/[^"]+\.css)"', r.text)
    assert scripts and styles
    for path in scripts + styles:
        a = c.get(path)
        assert a.status_code == 200 and "content-security-policy" in a.headers
        assert not re.search(r"(?<![A-Za-z])(sk-[A-Za-z0-9_-]{20,}|whsec_[A-Za-z0-9+/=]{20,})", a.text)
        assert not any(s in a.text or s in r.text for s in secrets)
    assert c.head("/").status_code == 200


def test_api_paths_keep_answering_json(client):
    _rt, c = client
    for path in ("/nope", "/api/v1/nope", "/assets/..%2fapp.py", "/assets/nope.js"):
        r = c.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("application/json")
    assert c.get("/healthz").json()["status"] == "ok"


def test_csp_allows_the_public_base_url_for_result_images(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, public_base_url="https://images.example.com/")
    csp = TestClient(create_app(rt, manage_runtime=False)).get("/").headers["content-security-policy"]
    assert "img-src 'self' data: blob: https://images.example.com" in csp


# --- the endpoints Studio relies on ----------------------------------------------------------

def test_models_account_and_graph_runs(client):
    rt, c = client
    c.headers["x-key"] = create_key(rt, credits=10)
    models = c.get("/api/v1/models").json()["data"]  # what the playground's model picker shows
    assert models[0]["name"] == "fake" and models[0]["state"] in ("resident", "loading", "cold")
    assert {"supports_image_input", "default_steps", "max_steps", "bfl_endpoints"} <= set(models[0])

    graph = {"nodes": {"generate": {"type": "text_to_image", "params": {"model": "fake", "prompt": "a red circle", "width": 64, "height": 64}}}}
    dry = c.post("/api/v1/executions?dry_run=true", json=graph).json()
    assert dry["dryRun"] is True and dry["breakdown"][0]["nodeId"] == "generate" and dry["estimatedCredits"] > 0

    r = c.post("/api/v1/executions", json={**graph, "label": "playground"})
    assert r.status_code == 201, r.text
    eid = r.json()["id"]
    assert r.headers["location"] == f"/api/v1/executions/{eid}"
    done = wait_for(lambda: (b := c.get(f"/api/v1/executions/{eid}").json())["status"] == "COMPLETED" and b)
    assert done["credits"]["charged"] == pytest.approx(dry["estimatedCredits"])
    assert done["nodeRuns"][0]["outputs"]

    acct = c.get("/api/v1/account?days=7").json()
    assert acct["credits"] == pytest.approx(10 - dry["estimatedCredits"])
    assert acct["executions"]["total"] == 1 and len(acct["usageByDay"]) == 7
    assert acct["usageByDay"][-1]["byModel"] == {"fake": pytest.approx(dry["estimatedCredits"])}
    assert any(e["kind"] == "hold" for e in acct["ledger"])

    listed = c.get("/api/v1/executions?status=COMPLETED").json()["data"]
    assert [e["id"] for e in listed] == [eid]
    assert c.get("/api/v1/executions?status=FAILED").json()["data"] == []
    assert c.get("/api/v1/executions?status=bogus").status_code == 422


def test_graph_run_problems_and_402_breakdown(client):
    rt, c = client
    c.headers["x-key"] = create_key(rt, credits=0.0001)
    bad = {"nodes": {"generate": {"type": "text_to_image", "params": {"model": "fake", "width": 8}}, "up": {"type": "upscale", "inputs": {"image": ["nowhere", "images"]}}}}
    r = c.post("/api/v1/executions?dry_run=true", json=bad)
    assert r.status_code == 422
    problems = r.json()["error"]["problems"]
    assert {(p["node"], tuple(p["loc"])) for p in problems} >= {("generate", ("params", "width")), ("up", ("inputs", "image"))}
    assert c.post("/api/v1/executions", json={"nodes": []}).status_code == 422

    graph = {"nodes": {"generate": {"type": "text_to_image", "params": {"model": "fake", "prompt": "x", "width": 512, "height": 512}}}}
    r = c.post("/api/v1/executions", json=graph)
    assert r.status_code == 402
    body = r.json()
    assert body["requiredCredits"] > body["availableCredits"] and body["breakdown"][0]["nodeId"] == "generate"


def test_pricing_as_the_user_types_does_not_use_up_the_request_window(client):
    rt, c = client
    c.headers["x-key"] = create_key(rt, credits=10, plan="free")  # 10 requests a minute
    graph = {"nodes": {"generate": {"type": "text_to_image", "params": {"model": "fake", "prompt": "x", "width": 64, "height": 64}}}}
    for _ in range(12):
        assert c.post("/api/v1/executions?dry_run=true", json=graph).status_code == 200
        assert c.post("/api/v1/workflows/validate", json={"name": "w", **graph}).status_code == 200
    for _ in range(10):
        assert c.post("/api/v1/webhooks/secret/rotate").status_code == 200  # state-changing POSTs are counted
    assert c.post("/api/v1/webhooks/secret/rotate").status_code == 429
