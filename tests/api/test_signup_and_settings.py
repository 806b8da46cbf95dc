"""Sign-up credits from the plan (command line and admin API alike), list settings
from plain environment values, and per-plan execution rates over HTTP."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from pixelmill import cli
from pixelmill.api.app import create_app
from pixelmill.config import ConfigError, Settings
from tests.conftest import create_key

BIG_PLAN = json.dumps({"big": {"initial_credits": 5000, "requests_per_minute": 1000}})


def _create_key_json(capsys, tmp_path, *extra: str) -> dict:
    rc = cli.main(["--data-dir", str(tmp_path), "keys", "create", "--json", *extra])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out.strip().splitlines()[-1])


def test_keys_create_grants_the_plans_initial_credits(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PIXELMILL_PLANS", BIG_PLAN)
    created = _create_key_json(capsys, tmp_path, "--account", "shop", "--plan", "big")
    assert created["credits"] == 5000  # the plan's initial_credits, as the admin API grants
    # an explicit --credits replaces the plan's grant for a new account
    other = _create_key_json(capsys, tmp_path, "--account", "other", "--plan", "big", "--credits", "7")
    assert other["credits"] == 7


def test_admin_api_and_command_line_grant_the_same(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PIXELMILL_PLANS", BIG_PLAN)
    from_cli = _create_key_json(capsys, tmp_path / "cli", "--account", "a", "--plan", "big")["credits"]
    from pixelmill.runtime import Runtime

    rt = Runtime(Settings.load(data_dir=tmp_path / "api", admin_key="adm", secret_key="s"))
    rt.start()
    try:
        client = TestClient(create_app(rt, manage_runtime=False))
        r = client.post("/admin/v1/accounts", json={"name": "a", "plan": "big"}, headers={"Authorization": "Bearer adm"})
        assert r.status_code == 201, r.text
        assert r.json()["credits"] == from_cli == 5000
    finally:
        rt.stop()


@pytest.mark.parametrize(
    "value,expected",
    [
        ("127.0.0.0/8", ["127.0.0.0/8"]),
        ("127.0.0.0/8, 10.0.0.0/8", ["127.0.0.0/8", "10.0.0.0/8"]),
        ('["::1/128", "192.168.0.0/16"]', ["::1/128", "192.168.0.0/16"]),
        ("", []),
    ],
)
def test_list_settings_take_plain_or_json_environment_values(monkeypatch, value, expected):
    monkeypatch.setenv("PIXELMILL_URL_ALLOW_NETWORKS", value)
    monkeypatch.setenv("PIXELMILL_CORS_ORIGINS", "https://a.example,https://b.example")
    s = Settings.load()
    assert s.url_allow_networks == expected
    assert s.cors_origins == ["https://a.example", "https://b.example"]


def test_every_list_setting_reads_plain_environment_text():
    """A list setting added later must be declared the same way (NoDecode), or its plain
    environment value would be parsed as JSON and fail."""
    from typing import get_origin

    from pydantic_settings import NoDecode

    lists = [name for name, f in Settings.model_fields.items() if get_origin(f.annotation) is list]
    assert "url_allow_networks" in lists and "cors_origins" in lists
    for name in lists:
        assert any(m is NoDecode for m in Settings.model_fields[name].metadata), f"{name} is not declared NoDecode"


def test_keys_create_with_a_plain_network_setting_works(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PIXELMILL_URL_ALLOW_NETWORKS", "127.0.0.0/8")
    assert _create_key_json(capsys, tmp_path, "--account", "x")["key"].startswith("sk-")


@pytest.mark.parametrize(
    "name,value,needle",
    [
        ("PIXELMILL_URL_ALLOW_NETWORKS", "not-a-network", "'not-a-network' is not an IP network"),
        ("PIXELMILL_URL_ALLOW_NETWORKS", "[1,", "not a valid JSON list"),
        ("PIXELMILL_PLANS", "{bad", "not valid JSON"),
    ],
)
def test_a_bad_setting_is_one_clear_line_naming_it(monkeypatch, capsys, tmp_path, name, value, needle):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError):
        Settings.load()
    rc = cli.main(["--data-dir", str(tmp_path), "keys", "create", "--account", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert name in err[0] and needle in err[0], err


def test_enterprise_is_not_held_to_ten_executions_a_minute(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url)
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt, "big-co", credits=1000, plan="enterprise")
    codes = [
        client.post("/v1/flux-pro-1.1", json={"prompt": "x", "width": 256, "height": 256}).status_code
        for _ in range(12)
    ]
    assert codes == [200] * 12, codes
    free = TestClient(create_app(rt, manage_runtime=False))
    free.headers["x-key"] = create_key(rt, "small-co", credits=1000, plan="free")
    free_codes = [free.post("/v1/flux-pro-1.1", json={"prompt": "x", "width": 256, "height": 256}).status_code for _ in range(11)]
    assert free_codes[-1] == 429  # free keeps its 10 a minute (its request rate is 10 too)
