"""A key manages its own account's keys on a real server: list (never a secret), create
(the secret shown once), revoke (at once, through the key cache); other accounts' keys stay
out of reach."""

from __future__ import annotations

import time

import httpx
import pytest

from pixelmill.api.app import create_app
from tests.conftest import create_key
from tests.helpers.servers import serve


@pytest.fixture
def server(make_runtime, db_url):
    rt = make_runtime(db_url, admin_key="adm")
    with serve(create_app(rt, manage_runtime=False)) as base:
        yield rt, base


def _as(base, key):
    return httpx.Client(base_url=base, headers={"x-key": key}, timeout=30)


def test_a_key_lists_creates_and_revokes_its_accounts_keys(server):
    rt, base = server
    mine = create_key(rt, account="acme")
    theirs = create_key(rt, account="other")
    with _as(base, mine) as me, _as(base, theirs) as them:
        listed = me.get("/api/v1/account/keys")
        assert listed.status_code == 200, listed.text
        (only,) = listed.json()["data"]
        assert only["current"] is True and mine.startswith(only["prefix"]) and only["createdAt"] > 0
        assert only["lastUsedAt"] is not None and only["lastUsedAt"] > time.time() - 60  # this very request used it
        assert mine not in listed.text and "key_hash" not in listed.text

        r = me.post("/api/v1/account/keys", json={"name": "ci runner"})
        assert r.status_code == 201, r.text
        created = r.json()
        secret = created["key"]
        assert secret.startswith("sk-") and secret.startswith(created["prefix"]) and created["name"] == "ci runner"
        assert created["current"] is False and created["lastUsedAt"] is None
        with _as(base, secret) as new:
            assert new.get("/api/v1/account").json()["name"] == "acme"  # same account
        listed = me.get("/api/v1/account/keys").json()["data"]
        assert [k["name"] for k in listed] == ["", "ci runner"]
        assert secret not in str(listed)  # shown once: never listed
        assert [k["current"] for k in listed] == [True, False]
        assert me.post("/api/v1/account/keys").status_code == 201  # the name is optional

        # another account sees none of these, and cannot revoke them
        assert [k["prefix"] for k in them.get("/api/v1/account/keys").json()["data"]] == [theirs[:10]]
        r = them.delete(f"/api/v1/account/keys/{created['id']}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "key_not_found"
        their_id = them.get("/api/v1/account/keys").json()["data"][0]["id"]
        r = me.delete(f"/api/v1/account/keys/{their_id}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "key_not_found"
        assert them.get("/api/v1/account").status_code == 200

        # revoking stops the key at once, though it was just used (and cached)
        with _as(base, secret) as new:
            assert new.get("/api/v1/account").status_code == 200
            r = me.delete(f"/api/v1/account/keys/{created['id']}")
            assert r.status_code == 200 and r.json() == {"id": created["id"], "revoked": True}
            r = new.get("/api/v1/account")
            assert r.status_code == 403 and r.json()["error"]["code"] == "revoked_api_key"
        assert created["id"] not in [k["id"] for k in me.get("/api/v1/account/keys").json()["data"]]
        r = me.delete(f"/api/v1/account/keys/{created['id']}")  # already revoked
        assert r.status_code == 404


def test_bad_requests_and_the_key_cap(server, monkeypatch):
    rt, base = server
    with _as(base, create_key(rt)) as me:
        r = me.post("/api/v1/account/keys", json={"name": "x" * 201})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_body"
        r = me.post("/api/v1/account/keys", json={"nmae": "typo"})
        assert r.status_code == 422
        r = me.post("/api/v1/account/keys", content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 400
        assert httpx.get(base + "/api/v1/account/keys").status_code == 401

        from pixelmill.accounts import directory

        monkeypatch.setattr(directory, "MAX_OWN_KEYS", 2)
        assert me.post("/api/v1/account/keys").status_code == 201
        r = me.post("/api/v1/account/keys")
        assert r.status_code == 409 and r.json()["error"]["code"] == "too_many_keys"
