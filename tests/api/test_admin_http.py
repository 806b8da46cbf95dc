"""The admin API over HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from pixelmill.api.app import create_app
from tests.conftest import wait_for

ADMIN = "admin-secret-for-tests"


@pytest.fixture
def admin(make_runtime, db_url):
    rt = make_runtime(db_url, admin_key=ADMIN)
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["Authorization"] = f"Bearer {ADMIN}"
    return rt, client


def test_admin_api_is_absent_without_an_admin_key(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url)
    client = TestClient(create_app(rt, manage_runtime=False))
    r = client.post("/admin/v1/accounts", json={"name": "a"}, headers={"Authorization": "Bearer anything"})
    assert r.status_code == 404
    assert client.get("/admin/v1/accounts").status_code == 404


def test_admin_key_is_required(admin):
    _, client = admin
    r = client.get("/admin/v1/accounts", headers={"Authorization": ""})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_admin_key"
    r = client.get("/admin/v1/accounts", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_admin_key"
    # an API key is not an admin key
    r = client.post("/admin/v1/accounts", json={"name": "x"}, headers={"Authorization": "Bearer sk-whatever"})
    assert r.status_code == 403


def test_account_lifecycle_keys_and_plans(admin):
    rt, client = admin
    r = client.post("/admin/v1/accounts", json={"name": "acme"})
    assert r.status_code == 201, r.text
    account = r.json()
    assert account["plan"] == "free" and account["credits"] == rt.plans["free"].initial_credits == 100.0
    aid = account["id"]
    assert client.post("/admin/v1/accounts", json={"name": "acme"}).json()["error"]["code"] == "account_exists"
    r = client.post("/admin/v1/accounts", json={"name": "rich", "plan": "pro", "credits": 5000})
    assert r.status_code == 201 and r.json()["plan"] == "pro" and r.json()["credits"] == 5000.0
    r = client.post("/admin/v1/accounts", json={"name": "x", "plan": "platinum"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_plan"
    assert [a["name"] for a in client.get("/admin/v1/accounts").json()["data"]] == ["acme", "rich"]

    r = client.post(f"/admin/v1/accounts/{aid}/keys", json={"name": "ci"})
    assert r.status_code == 201
    created = r.json()
    assert created["key"].startswith("sk-") and created["account_id"] == aid
    api = TestClient(create_app(rt, manage_runtime=False), headers={"x-key": created["key"]})
    r = api.get("/v1/credits")
    assert r.status_code == 200 and r.json() == {"credits": 100.0}
    assert r.headers["X-RateLimit-Limit"] == "10"  # the free plan

    listed = client.get(f"/admin/v1/accounts/{aid}/keys").json()["data"]
    assert [k["id"] for k in listed] == [created["id"]] and listed[0]["name"] == "ci"
    assert all("key" not in k and "key_hash" not in k for k in listed)

    r = client.put(f"/admin/v1/accounts/{aid}/plan", json={"plan": "pro"})
    assert r.status_code == 200 and r.json()["plan"] == "pro"
    assert api.get("/v1/credits").headers["X-RateLimit-Limit"] == "60"
    assert client.put(f"/admin/v1/accounts/{aid}/plan", json={"plan": "nope"}).status_code == 422
    assert client.put("/admin/v1/accounts/missing/plan", json={"plan": "pro"}).status_code == 404

    r = client.delete(f"/admin/v1/keys/{created['id']}")
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert api.get("/v1/credits").json()["error"]["code"] == "revoked_api_key"
    assert client.delete(f"/admin/v1/keys/{created['id']}").status_code == 404
    assert client.post("/admin/v1/accounts/missing/keys", json={}).status_code == 404


def test_credit_grants_are_exactly_once_per_entry_key(admin):
    _, client = admin
    aid = client.post("/admin/v1/accounts", json={"name": "acme", "credits": 0}).json()["id"]
    r = client.post(f"/admin/v1/accounts/{aid}/credits", json={"amount": 50, "entry_key": "invoice-7", "note": "invoice 7"})
    assert r.status_code == 201 and r.json()["granted"] is True and r.json()["credits"] == 50.0
    r = client.post(f"/admin/v1/accounts/{aid}/credits", json={"amount": 50, "entry_key": "invoice-7"})
    assert r.status_code == 200 and r.json()["granted"] is False and r.json()["credits"] == 50.0
    r = client.post(f"/admin/v1/accounts/{aid}/credits", json={"amount": 25})
    assert r.status_code == 201 and r.json()["entry_key"] and r.json()["credits"] == 75.0
    assert client.post(f"/admin/v1/accounts/{aid}/credits", json={"amount": -5}).status_code == 422
    assert client.post("/admin/v1/accounts/missing/credits", json={"amount": 5}).status_code == 404


def test_usage_reports_executions_credits_and_ledger(admin):
    rt, client = admin
    aid = client.post("/admin/v1/accounts", json={"name": "acme"}).json()["id"]
    key = client.post(f"/admin/v1/accounts/{aid}/keys", json={}).json()["key"]
    api = TestClient(create_app(rt, manage_runtime=False), headers={"x-key": key})
    sub = api.post("/v1/flux-dev", json={"prompt": "x", "width": 256, "height": 256}).json()
    wait_for(lambda: api.get(f"/v1/get_result?id={sub['id']}").json()["status"] == "Ready")

    usage = client.get(f"/admin/v1/accounts/{aid}/usage").json()
    assert usage["plan"] == "free"
    assert usage["executions"] == {"total": 1, "by_status": {"succeeded": 1}}
    assert usage["credits_spent"] == pytest.approx(sub["cost"])
    assert usage["credits_held"] == 0
    assert usage["credits"] == pytest.approx(100 - sub["cost"])
    assert sorted(e["kind"] for e in usage["ledger"]) == ["capture", "grant", "hold"]
    later = client.get(f"/admin/v1/accounts/{aid}/usage", params={"since": usage["as_of"] + 1}).json()
    assert later["executions"]["total"] == 0
    assert client.get("/admin/v1/accounts/missing/usage").status_code == 404
