"""Fast paths stay correct: cached keys, cached finished executions, the submit answer, in-memory estimates."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import sqlalchemy as sa
from fastapi.testclient import TestClient

from pixelmill.api.app import create_app
from pixelmill.engine.service import Submission
from pixelmill.store.tables import executions
from tests.conftest import FakeBackend, create_key, wait_for

GEN = {"nodes": {"gen": {"type": "text_to_image", "params": {"model": "fake", "prompt": "p", "steps": 1, "width": 64, "height": 64}}}}


def _client(rt, key):
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = key
    return client


def test_submit_answers_with_what_it_wrote(make_runtime, db_url):
    rt = make_runtime(db_url, start=False)
    key = create_key(rt)
    who = rt.keys.authenticate(key)
    first = rt.executions.submit(Submission(who, GEN, "workflow", "one"))
    second = rt.executions.submit(Submission(who, GEN, "workflow", "two", batch_id="b1"))
    for view in (first, second):
        stored = dataclasses.asdict(rt.executions.get(who.account_id, view.id))
        answered = dataclasses.asdict(view)
        a, b = answered.pop("estimated_start_at"), stored.pop("estimated_start_at")
        assert (a is None and b is None) or a <= b  # "now" for the first in line, unknown before any run
        assert answered == stored
    assert second.queue_position == 1


def test_finished_execution_is_served_from_memory_but_never_to_another_account_or_after_expiry(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, backend=FakeBackend(steps=1))
    key, other = create_key(rt, "acme"), create_key(rt, "other")
    client = _client(rt, key)
    eid = client.post("/v1/flux-dev", json={"prompt": "x", "width": 256, "height": 256}).json()["id"]
    wait_for(lambda: client.get(f"/v1/get_result?id={eid}").json()["status"] == "Ready")
    assert rt.executions.finished(rt.keys.authenticate(key).account_id, eid) is not None  # now cached
    assert client.get(f"/v1/get_result?id={eid}", headers={"x-key": other}).json()["status"] == "Task not found"
    assert client.get(f"/api/v1/executions/{eid}", headers={"x-key": other}).status_code == 404
    assert client.get(f"/api/v1/executions/{eid}").json()["status"] == "COMPLETED"
    with rt.db.transaction() as conn:
        conn.execute(sa.update(executions).where(executions.c.id == eid).values(expires_at=time.time() - 1))
    rt.executions._finished.get(eid).expires_at = time.time() - 1  # as if its time had passed
    assert client.get(f"/v1/get_result?id={eid}").json()["status"] == "Task not found"


def test_revoked_key_is_refused_on_its_next_request_even_when_cached(make_runtime, sqlite_url):
    from pixelmill.accounts import keys

    rt = make_runtime(sqlite_url)
    client = _client(rt, create_key(rt))
    assert client.get("/v1/credits").status_code == 200
    assert rt.keys.cached(client.headers["x-key"]) is not None
    with rt.db.transaction() as conn:
        keys.revoke_key(conn, keys.list_keys(conn)[0]["id"])
    assert client.get("/v1/credits").json()["error"]["code"] == "revoked_api_key"


def test_plan_change_reaches_cached_principals(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, admin_key="admin-secret")
    key = create_key(rt)
    who = rt.keys.authenticate(key)
    assert who.plan == "free" and rt.keys.cached(key) is not None
    client = _client(rt, key)
    r = client.put(f"/admin/v1/accounts/{who.account_id}/plan", json={"plan": "pro"}, headers={"Authorization": "Bearer admin-secret"})
    assert r.status_code == 200, r.text
    assert rt.keys.cached(key) is None
    assert rt.keys.authenticate(key).plan == "pro"


def _revoke_from_another_process(db_url: str, data_dir, key_id: str) -> None:
    env = {**os.environ, "PIXELMILL_DATABASE_URL": db_url, "PIXELMILL_DATA_DIR": str(data_dir)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.environ.get("PYTHONPATH", ""), os.getcwd()] if p)
    subprocess.run([sys.executable, "-m", "pixelmill.cli", "keys", "revoke", key_id], env=env, check=True, capture_output=True)


def test_key_revoked_by_another_process_is_refused_on_the_next_request(make_runtime, db_url, tmp_path):
    """Scale-out: a key cached by this API node, revoked elsewhere (the command line), is refused at once."""
    from pixelmill.accounts import keys

    rt = make_runtime(db_url, start=False)
    key = create_key(rt)
    client = _client(rt, key)
    if not rt.db.is_sqlite:
        assert rt.notifier.name == "postgres"
        wait_for(rt._key_cache_usable, timeout=10)
    assert client.get("/v1/credits").status_code == 200
    assert rt.keys.cached(key) is not None
    with rt.db.engine.connect() as conn:
        key_id = keys.list_keys(conn)[0]["id"]
    _revoke_from_another_process(db_url, tmp_path / "cli", key_id)
    if not rt.db.is_sqlite:  # the notice travels through PostgreSQL: give it the moment it needs
        wait_for(lambda: rt.keys.cached(key) is None, timeout=10)
    assert client.get("/v1/credits").json()["error"]["code"] == "revoked_api_key"


def test_estimates_come_from_run_times_learned_from_notices(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, backend=FakeBackend(steps=2, step_delay=0.1))
    key = create_key(rt)
    who = rt.keys.authenticate(key)
    assert rt.executions.run_times.mean() is None
    view = rt.executions.submit(Submission(who, GEN, "workflow", "one"))
    wait_for(lambda: rt.executions.get(who.account_id, view.id).status.is_terminal())
    wait_for(lambda: rt.executions.run_times.mean("model.fake") is not None)
    assert 0.1 <= rt.executions.run_times.mean("model.fake") < 5
    # a fresh process seeds its averages from the store once
    rt2 = make_runtime(sqlite_url, start=False)
    assert abs(rt2.executions.run_times.mean("model.fake") - rt.executions.run_times.mean("model.fake")) < 1e-3


def _route_calls(app, monkeypatch, *paths: str) -> list[str]:
    """The requests that reach the routes of ``paths`` (a route's own handler, past routing and its dependencies)."""
    calls: list[str] = []
    for route in app.router.routes:
        if getattr(route, "path", None) in paths:
            inner = route.app

            async def counted(scope, receive, send, inner=inner):
                calls.append(scope["path"])
                await inner(scope, receive, send)

            monkeypatch.setattr(route, "app", counted)  # the routes are shared by every app: undone after the test
    return calls


def test_polls_answered_before_routing_match_the_routes_answer(make_runtime, db_url, monkeypatch):
    """A poll by a cached key is answered before routing (pixelmill.api.hot_reads): from memory, or after the
    route's own read when the execution is not there (finished or not).  The answer is the route's: same body,
    same headers (a query parameter the hot path leaves to the route shows the route's answer)."""
    from urllib.parse import urlsplit

    rt = make_runtime(db_url, backend=FakeBackend(steps=1))
    key = create_key(rt, "acme")
    client = _client(rt, key)
    polls = ("/v1/get_result", "/api/v1/executions/{execution_id}", "/api/v1/executions/{execution_id}/poll")
    routed_calls = _route_calls(client.app, monkeypatch, *polls)
    eid = client.post("/v1/flux-dev", json={"prompt": "x", "width": 256, "height": 256}).json()["id"]
    wait_for(lambda: client.get(f"/v1/get_result?id={eid}").json()["status"] == "Ready")

    def stable(body):  # signed URLs carry their own expiry: compare them without it
        if isinstance(body, dict):
            return {k: stable(v) for k, v in body.items()}
        if isinstance(body, list):
            return [stable(v) for v in body]
        if isinstance(body, str) and body.startswith("http"):
            return urlsplit(body).path
        return body

    def same_as_routed(path: str, forget) -> None:
        routed = client.get(path + ("&" if "?" in path else "?") + "by=route")  # an extra parameter: the route answers
        assert routed_calls.pop() == urlsplit(path).path
        forget()  # the route's read kept the view: not in memory now
        for _ in range(2):  # not in memory (read), then in memory
            hot = client.get(path)
            assert routed_calls == []
            assert routed.status_code == hot.status_code == 200
            assert stable(routed.json()) == stable(hot.json())
            assert sorted(routed.headers.keys()) == sorted(hot.headers.keys())
            assert hot.headers["x-ratelimit-limit"] == routed.headers["x-ratelimit-limit"]
            assert hot.headers["content-type"] == "application/json"

    routed_calls.clear()
    for path in (f"/v1/get_result?id={eid}", f"/api/v1/executions/{eid}", f"/api/v1/executions/{eid}/poll"):
        same_as_routed(path, lambda: rt.executions._finished.discard())  # finished
    # unfinished, not in memory: submitted to a server of the same database that runs no worker
    idle = make_runtime(db_url, start=False)
    client, rt = _client(idle, key), idle
    queued = client.post("/api/v1/executions", json=GEN).json()["id"]
    for path in (f"/v1/get_result?id={queued}", f"/api/v1/executions/{queued}"):
        same_as_routed(path, lambda: idle.executions.changed(queued))  # unfinished: as a notice drops its view
        assert client.get(path).json()["status"] in ("Pending", "QUEUED")
    # another account, an unknown id: the routes answer in their own shapes
    other = create_key(rt, "other")
    assert client.get(f"/v1/get_result?id={eid}", headers={"x-key": other}).json()["status"] == "Task not found"
    assert client.get(f"/api/v1/executions/{eid}", headers={"x-key": other}).status_code == 404
    assert client.get("/v1/get_result?id=nope").json()["status"] == "Task not found"
    assert len(routed_calls) == 3


def test_a_finished_executions_answer_is_rendered_once_a_second_and_its_urls_signed_that_second(make_runtime, sqlite_url, monkeypatch):
    """Polls within one second get the same bytes (rendered once); a poll in a later second gets URLs
    that expire that much later, as a fresh render would sign them."""
    from urllib.parse import parse_qs, urlsplit

    import pixelmill.api.hot_reads as hot_reads
    import pixelmill.files.signing as signing

    rt = make_runtime(sqlite_url, backend=FakeBackend(steps=1))
    client = _client(rt, create_key(rt, "acme"))
    eid = client.post("/v1/flux-dev", json={"prompt": "x", "width": 256, "height": 256}).json()["id"]
    wait_for(lambda: client.get(f"/v1/get_result?id={eid}").json()["status"] == "Ready")
    now = [time.time() + 1]  # a second after the polls above, whose answers were rendered in theirs

    class Clock:
        @staticmethod
        def time():
            return now[0]

    monkeypatch.setattr(hot_reads, "time", Clock)
    monkeypatch.setattr(signing, "time", Clock)
    rendered = []
    response = hot_reads.JSONResponse
    monkeypatch.setattr(hot_reads, "JSONResponse", lambda content: rendered.append(1) or response(content))

    def expiry(body):
        return int(parse_qs(urlsplit(body["result"]["sample"]).query)["exp"][0])

    first = client.get(f"/v1/get_result?id={eid}")
    same_second = client.get(f"/v1/get_result?id={eid}")
    assert first.content == same_second.content and len(rendered) == 1
    now[0] += 5
    later = client.get(f"/v1/get_result?id={eid}")
    assert expiry(later.json()) == expiry(first.json()) + 5
    assert later.json()["result"]["sample"] != first.json()["result"]["sample"]


def test_an_answer_rendered_in_a_second_is_not_reused_once_the_execution_moved_on(make_runtime, sqlite_url, monkeypatch):
    """Within one second a poll gets a new answer as soon as the execution has a new view (it finished)."""
    import pixelmill.api.hot_reads as hot_reads

    rt = make_runtime(sqlite_url, backend=FakeBackend(steps=20, step_delay=0.05))
    client = _client(rt, create_key(rt, "acme"))
    second = [time.time()]

    class Clock:
        @staticmethod
        def time():
            return second[0]

    monkeypatch.setattr(hot_reads, "time", Clock)  # the whole test is one second for the answers
    eid = client.post("/v1/flux-dev", json={"prompt": "x", "width": 256, "height": 256}).json()["id"]
    wait_for(lambda: client.get(f"/v1/get_result?id={eid}").json()["status"] == "Pending" and rt.executions.cached(None, eid) is not None)
    assert client.get(f"/v1/get_result?id={eid}").json()["status"] == "Pending"  # from memory, rendered this second
    wait_for(lambda: rt.executions.get(None, eid).status.is_terminal())
    assert client.get(f"/v1/get_result?id={eid}").json()["status"] == "Ready"


def test_a_running_execution_is_polled_from_memory_until_a_notice_says_it_changed(make_runtime, sqlite_url):
    from pixelmill.engine.notify import Notice

    rt = make_runtime(sqlite_url, start=False, live_view_ttl_s=60)  # no worker: the execution stays queued
    key, other = create_key(rt, "acme"), create_key(rt, "other")
    client = _client(rt, key)
    eid = client.post("/v1/flux-dev", json={"prompt": "x", "width": 256, "height": 256}).json()["id"]
    routed = client.get(f"/v1/get_result?id={eid}")
    assert routed.json()["status"] == "Pending"
    assert rt.executions.cached(rt.keys.authenticate(key).account_id, eid) is not None  # the submit's own view
    # another process changes the record, and its notice has not arrived: the poll is answered from memory
    with rt.db.transaction() as conn:
        conn.execute(sa.update(executions).where(executions.c.id == eid).values(status="cancelled", finished_at=time.time()))
    assert client.get(f"/v1/get_result?id={eid}").content == routed.content
    assert client.get(f"/v1/get_result?id={eid}", headers={"x-key": other}).json()["status"] == "Task not found"
    assert client.get(f"/api/v1/executions/{eid}", headers={"x-key": other}).status_code == 404
    # the notice arrives: the next poll reads the record
    rt.notifier.publish(None, Notice("execution", eid, "execution.cancelled"))
    assert rt.executions.cached(None, eid) is None
    assert client.get(f"/api/v1/executions/{eid}").json()["status"] == "CANCELLED"


def test_an_unfinished_executions_view_is_at_most_the_ttl_old_without_notices(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, start=False, live_view_ttl_s=0.2, queued_view_ttl_s=0.8)
    client = _client(rt, create_key(rt))
    eid = client.post("/api/v1/executions", json=GEN).json()["id"]
    assert client.get(f"/api/v1/executions/{eid}").json()["status"] == "QUEUED"
    with rt.db.transaction() as conn:  # changed where no notice is sent
        conn.execute(sa.update(executions).where(executions.c.id == eid).values(status="running", started_at=time.time()))
    time.sleep(0.3)
    assert client.get(f"/api/v1/executions/{eid}").json()["status"] == "QUEUED"  # a queued view is kept longer
    time.sleep(0.6)
    assert client.get(f"/api/v1/executions/{eid}").json()["status"] == "RUNNING"
    with rt.db.transaction() as conn:
        conn.execute(sa.update(executions).where(executions.c.id == eid).values(status="cancelled", finished_at=time.time()))
    time.sleep(0.3)
    assert client.get(f"/api/v1/executions/{eid}").json()["status"] == "CANCELLED"


def test_a_view_read_before_a_change_notice_is_not_kept(make_runtime, sqlite_url):
    from pixelmill.engine.service import LiveViews

    rt = make_runtime(sqlite_url, start=False)
    client = _client(rt, create_key(rt))
    eid = client.post("/api/v1/executions", json=GEN).json()["id"]
    view = rt.executions.get(None, eid)
    live = LiveViews(ttl_s=60)
    read_at = live.stamp()
    live.changed(eid)  # the notice came while the view was being read
    live.put(view, read_at)
    assert live.get(eid) is None
    live.put(view, live.stamp())
    assert live.get(eid) is view


def test_signed_urls_name_the_host_and_scheme_each_request_came_by(make_runtime, sqlite_url):
    """The base of signed URLs is worked out once per scheme, host and root path, never shared
    between requests that came by different names."""
    rt = make_runtime(sqlite_url, backend=FakeBackend(steps=1))
    key = create_key(rt)
    client = _client(rt, key)
    secure = TestClient(create_app(rt, manage_runtime=False), base_url="https://testserver")
    secure.headers["x-key"] = key
    wf = client.post("/api/v1/workflows", json={"name": "w", "nodes": GEN["nodes"]}).json()["id"]
    for http, base, headers in [
        (client, "http://testserver", {}),
        (client, "http://images.example.com:8080", {"host": "images.example.com:8080"}),
        (client, "http://other.example.org", {"host": "other.example.org"}),
        (secure, "https://testserver", {}),
        (client, "http://testserver", {}),
        (secure, "https://images.example.com:8080", {"host": "images.example.com:8080"}),
    ]:
        answer = http.post(f"/api/v1/workflows/{wf}/execute", json={}, headers=headers).json()
        assert answer["streamUrl"].startswith(base + "/api/v1/executions/"), (base, answer["streamUrl"])
