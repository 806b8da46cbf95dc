"""The pixelmill command: schema checks without migrating, quiet read-only commands, generate/run with progress, models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from pixelmill import cli
from pixelmill.api.app import create_app
from pixelmill.store import migrate
from tests.helpers.servers import serve
from tests.conftest import FakeBackend, create_key

PIXELMILL = [sys.executable, "-m", "pixelmill.cli"]


def run_cli(tmp_path, *args, env=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(PIXELMILL + ["--data-dir", str(tmp_path / "data"), *args], capture_output=True, text=True, timeout=300, env=full_env)


def test_read_only_commands_never_create_or_migrate_a_database(tmp_path):
    out = run_cli(tmp_path, "keys", "list")
    assert out.returncode == 2 and "pixelmill init" in out.stderr
    assert not (tmp_path / "data" / "pixelmill.db").exists()


def test_commands_print_no_library_log_lines(tmp_path):
    created = run_cli(tmp_path, "keys", "create", "--account", "a", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    listing = run_cli(tmp_path, "keys", "list", "--json")
    assert listing.returncode == 0
    assert [row["id"] for row in json.loads(listing.stdout)] == [key["id"]]
    for output in (created.stdout + created.stderr, listing.stdout + listing.stderr):
        assert "alembic" not in output.lower() and "INFO" not in output


def test_a_database_behind_the_code_is_refused_until_migrated(tmp_path):
    url = f"sqlite:///{tmp_path / 'data' / 'pixelmill.db'}"
    (tmp_path / "data").mkdir()
    migrate.upgrade(url, "0004")
    for args in (("keys", "list"), ("keys", "create", "--account", "a")):
        out = run_cli(tmp_path, *args)
        assert out.returncode == 2 and "schema is behind" in out.stderr and "pixelmill migrate" in out.stderr
    assert migrate.current_heads(url) == ["0004"]  # nothing migrated it
    assert run_cli(tmp_path, "migrate").returncode == 0
    assert run_cli(tmp_path, "keys", "list").returncode == 0


def test_init_makes_the_database_and_a_first_key(tmp_path, capsys):
    assert cli.main(["--data-dir", str(tmp_path / "data"), "init", "--account", "owner", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["key"].startswith("sk-") and created["credits"] > 0
    assert migrate.current_heads(f"sqlite:///{tmp_path / 'data' / 'pixelmill.db'}") == [migrate.head_revision()]


@pytest.fixture
def remote(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, backend=FakeBackend(steps=4, step_delay=0.05))
    with serve(create_app(rt, manage_runtime=False)) as base:
        yield base, create_key(rt, credits=100.0)


def test_generate_against_a_server_saves_the_images(tmp_path, remote):
    base, key = remote
    out = run_cli(tmp_path, "generate", "a red circle", "--server", base, "--model", "fake", "--size", "64x80", "--seed", "5",
                  "--n", "2", "-o", str(tmp_path / "pic.png"), "--json", env={"PIXELMILL_API_KEY": key})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert len(result["files"]) == 2 and result["credits"]["charged"] > 0
    assert all(Image.open(f).size == (64, 80) for f in result["files"])
    # without a key for the server: one clear line
    missing = run_cli(tmp_path, "generate", "x", "--server", base, env={"PIXELMILL_API_KEY": ""})
    assert missing.returncode == 2 and "PIXELMILL_API_KEY" in missing.stderr
    refused = run_cli(tmp_path, "generate", "x", "--server", base, "--model", "fake", "--size", "64x48", env={"PIXELMILL_API_KEY": key})
    assert refused.returncode == 1 and "422" in refused.stderr and "Traceback" not in refused.stderr


def test_run_a_workflow_file_with_inputs(tmp_path, remote):
    base, key = remote
    spec = {
        "name": "two-step",
        "inputs": {"prompt": {"type": "string", "required": True}, "seed": {"type": "integer", "default": 1}},
        "nodes": {
            "gen": {"type": "text_to_image", "params": {"model": "fake", "prompt": {"$input": "prompt"}, "seed": {"$input": "seed"}, "width": 64, "height": 64}},
            "small": {"type": "resize", "params": {"width": 32}, "inputs": {"image": ["gen", "images"]}},
        },
    }
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(spec))
    env = {"PIXELMILL_API_KEY": key}
    out = run_cli(tmp_path, "run", str(path), "--input", "prompt=a cat", "--input", "seed=9", "--server", base, "-o", str(tmp_path / "outs"), "--json", env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [Image.open(f).size for f in result["files"]] == [(32, 32)]
    again = json.loads(run_cli(tmp_path, "run", str(path), "-i", "prompt=a dog", "--server", base, "-o", str(tmp_path / "outs"), "--json", env=env).stdout)
    assert again["workflowId"] == result["workflowId"]  # saved once, by its name
    bad = run_cli(tmp_path, "run", str(path), "--input", "nonsense", "--server", base, env=env)
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr


def test_models_add_validates_a_folder_and_lists_it(tmp_path):
    from tests.helpers.tiny_pipelines import cached_tiny_flux

    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    refused = run_cli(tmp_path, "models", "add", str(not_a_model))
    assert refused.returncode == 2 and "model_index.json" in refused.stderr
    added = run_cli(tmp_path, "models", "add", cached_tiny_flux(), "--name", "my-flux", "--price-per-megapixel", "2")
    assert added.returncode == 0, added.stderr
    listed = json.loads(run_cli(tmp_path, "models", "list", "--json").stdout)
    names = [m["id"] for m in listed]
    assert "my-flux" in names and "pixelmill-tiny" in names
    twice = run_cli(tmp_path, "models", "add", cached_tiny_flux(), "--name", "my-flux")
    assert twice.returncode == 2 and "already" in twice.stderr


def test_generate_on_the_local_data_directory_with_the_shipped_model(tmp_path):
    out = run_cli(tmp_path, "generate", "a red circle on a yellow background", "--size", "256x256", "--seed", "3", "-o", str(tmp_path / "local.png"), "--json")
    assert out.returncode == 0, out.stderr
    files = json.loads(out.stdout)["files"]
    assert Image.open(files[0]).size == (256, 256)
    keys = json.loads(run_cli(tmp_path, "keys", "list", "--json").stdout)
    assert all(k["revoked_at"] for k in keys if k["account_name"] == "local")  # the command's own key is gone


def test_a_server_whose_startup_fails_exits_with_uvicorns_startup_failure_code():
    """`pixelmill serve` whose application does not start (its lifespan raised: say the runtime could not
    start) exits with 3, as `uvicorn.run` does, not 0: a supervisor or a script sees the failure."""
    import socket
    from contextlib import asynccontextmanager

    import uvicorn
    from fastapi import FastAPI

    from pixelmill import cli

    @asynccontextmanager
    async def lifespan(_app):
        raise RuntimeError("the runtime could not start")
        yield

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(FastAPI(lifespan=lifespan), host="127.0.0.1", port=port, log_config=None, lifespan="on")
    with pytest.raises(SystemExit) as exited:
        cli._run_server(config)
    assert exited.value.code == 3
