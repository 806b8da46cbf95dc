"""Hostile inputs get a 4xx with a stable code, never a 500: deep JSON, NUL characters,
bad cursors and offsets, malformed graphs, resume ids, input and webhook URLs, file
names in signed URLs; CORS and 405s."""

from __future__ import annotations

import base64
import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pixelmill.api.app import create_app
from tests.conftest import FakeBackend, create_key, wait_for

JSON_ROUTES = [
    ("POST", "/v1/flux-dev"),
    ("POST", "/v1/flux-pro-1.1"),
    ("POST", "/v2/images/generate"),
    ("POST", "/v1/images/generations"),
    ("POST", "/v1/images/edits"),
    ("POST", "/api/v1/workflows"),
    ("POST", "/api/v1/workflows/validate"),
    ("PUT", "/api/v1/workflows/wf"),
    ("POST", "/api/v1/workflows/wf/execute"),
    ("PUT", "/api/v1/webhooks/config"),
]

EDIT_MODEL = 'path = "/nonexistent"\nprice_per_megapixel = 2.0\ndefault_steps = 2\nsupports_image_input = true'


def _client(rt, **headers) -> TestClient:
    client = TestClient(create_app(rt, manage_runtime=False), raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {create_key(rt, plan='unlimited')}"
    client.headers.update(headers)
    return client


@pytest.fixture
def api(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, plans={"unlimited": {}})
    return rt, _client(rt)


def _png(size=(16, 16), color=(200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


# --- item 5: deep JSON, NUL characters, cursors, offsets, graphs, resume ids --------------


@pytest.mark.parametrize("depth", [900, 100_000])
def test_deeply_nested_json_is_a_400_on_every_json_route(api, depth):
    _, client = api
    bodies = [
        "[" * depth + "]" * depth,
        '{"prompt": "x", "model": "fake", "params": ' + '{"a":' * depth + "1" + "}" * depth + "}",
    ]
    for method, path in JSON_ROUTES:
        for body in bodies:
            for idem in (None, f"key-{depth}-{path}-{body[:3]}"):
                headers = {"content-type": "application/json"}
                if idem:
                    headers["Idempotency-Key"] = idem  # the fingerprint parses the body too
                r = client.request(method, path, content=body, headers=headers)
                assert r.status_code == 400, (method, path, idem, r.status_code, r.text[:200])
                err = r.json()["error"]
                assert err["code"] == "json_too_deep", (path, err)


def test_nul_characters_in_ids_queries_and_names_are_400(make_runtime, db_url):
    rt = make_runtime(db_url, plans={"unlimited": {}})
    client = _client(rt)
    for path in [
        "/v2/jobs/a%00b",
        "/v2/jobs/a%00b/cancel",
        "/v1/get_result?id=%00",
        "/api/v1/executions/a%00b",
        "/api/v1/executions/a%00b/poll",
        "/api/v1/executions/a%00b/events",
        "/api/v1/executions?workflow_id=%00",
        "/api/v1/executions?batch_id=a%00",
        "/api/v1/workflows/a%00",
        "/api/v1/batches/a%00",
        "/api/v1/webhooks/events?execution_id=%00",
        "/api/v1/webhooks/events?state=%00",
    ]:
        method = "POST" if path.endswith("/cancel") else "GET"
        r = client.request(method, path)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_characters", (path, r.status_code, r.text[:200])
    r = client.post("/v1/images/generations?x=%00", json={"prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"  # OpenAI's shape there
    graph = {"g": {"type": "text_to_image", "params": {"model": "fake", "prompt": "x", "width": 64, "height": 64}}}
    for body in ({"name": "a\u0000b", "nodes": graph}, {"name": "ok", "description": "\u0000", "nodes": graph}):
        r = client.post("/api/v1/workflows", json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "nul_character", r.text[:200]
    r = client.post("/v1/flux-dev", json={"prompt": "a\u0000b"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "nul_character"
    r = client.post("/v2/images/generate", json={"prompt": "x", "model": "fake\u0000"})
    assert r.status_code == 400


def test_cursor_offset_and_limit_are_checked(api):
    _, client = api
    for query in ("before=__main__", "before=nan", "before=inf", "limit=0", "limit=abc", "limit=101"):
        r = client.get(f"/api/v1/executions?{query}")
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", (query, r.text[:200])
    for query in ("offset=1616132930540729270272", "offset=-1", "offset=x", "limit=1000"):
        r = client.get(f"/api/v1/workflows?{query}")
        assert r.status_code == 422, (query, r.text[:200])
    assert client.get("/api/v1/webhooks/events?limit=100000000000000000000").status_code == 422
    assert client.get("/api/v1/executions?before=1e30").status_code == 200
    assert client.get("/api/v1/workflows?offset=5").status_code == 200


def test_malformed_nodes_are_422(api):
    _, client = api
    gen = {"type": "text_to_image", "params": {"model": "fake", "prompt": "x", "width": 64, "height": 64}}
    for node in ({**gen, "inputs": 5}, {**gen, "inputs": "x"}, {**gen, "inputs": [1, 2]}, {**gen, "params": 5},
                 {**gen, "params": {"prompt": {"$input": ["x"]}}}, {**gen, "type": ["x"]}):
        for path in ("/api/v1/workflows", "/api/v1/workflows/validate"):
            r = client.post(path, json={"name": "x", "nodes": {"g": node}})
            assert r.status_code == 422, (node, r.status_code, r.text[:300])


def test_last_event_id_out_of_range_is_400_not_a_dying_stream(api):
    rt, client = api
    sub = client.post("/v1/flux-dev", json={"prompt": "x", "width": 256, "height": 256}).json()
    path = f"/api/v1/executions/{sub['id']}/events"
    r = client.get(f"{path}?lastEventId={'9' * 30}")
    assert r.status_code == 422, r.text[:200]
    r = client.get(path, headers={"Last-Event-ID": "9" * 30})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_last_event_id"
    r = client.get(path, headers={"Last-Event-ID": "-3"})
    assert r.status_code == 400
    with client.stream("GET", f"{path}?lastEventId={2**63 - 1}") as stream:  # the largest id: nothing after it
        assert stream.status_code == 200
        assert stream.read().startswith(b"retry:")


# --- item 6: OpenAI answers client faults on input URLs with 400 ----------------------------


def test_openai_input_url_faults_are_400_invalid_request_error(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, plans={"unlimited": {}}, extra_models={"editor": (EDIT_MODEL, FakeBackend(steps=2))},
                      url_allow_networks=["127.0.0.2/32"])
    client = _client(rt)
    for url in ("http://127.0.0.1/x.png", "http://169.254.169.254/latest/meta-data", "http://[::1]/x.png", "http://10.0.0.1/a.png"):
        r = client.post("/v1/images/edits", json={"model": "editor", "prompt": "x", "images": [{"image_url": url}]})
        assert r.status_code == 400, (url, r.status_code, r.text[:300])
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["code"] == "url_resolves_to_blocked_address", err
    # allowed by policy, but nothing listens there: the fetch fails when the node runs
    r = client.post("/v1/images/edits", json={"model": "editor", "prompt": "x", "images": [{"image_url": "http://127.0.0.2:9/x.png"}]})
    assert r.status_code == 400, r.text[:300]
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "image" and err["code"] == "connect_failed", err


# --- item 7: file names in signed URLs -------------------------------------------------------


def test_signed_file_name_is_signed_and_the_header_cannot_be_injected(api):
    rt, client = api
    sub = client.post("/v1/flux-dev", json={"prompt": "x", "width": 256, "height": 256}).json()
    done = wait_for(lambda: (b := client.get(f"/v1/get_result?id={sub['id']}").json())["status"] == "Ready" and b)
    sample = done["result"]["sample"]
    assert client.get(sample).status_code == 200
    file_id, rest = sample.split("/files/")[1].split("/", 1)
    name, query = rest.split("?", 1)
    for other in ("evil.html", "x%0d%0aSet-Cookie:%20a=b", "x%22.png"):
        r = client.get(f"/files/{file_id}/{other}?{query}")
        assert r.status_code == 403 and r.json()["error"]["code"] == "bad_signature", other
    for hostile in ('a"b\r\nSet-Cookie: x=1.png', "résumé ünïcode.png", "a\\b;c=d.png"):
        url = rt.signer.url("http://testserver", file_id, hostile)
        r = client.get(url)
        assert r.status_code == 200, (hostile, r.status_code)
        cd = r.headers["content-disposition"]
        assert "\r" not in cd and "\n" not in cd and "set-cookie" not in {k.lower() for k in r.headers if k.lower() != "content-disposition"}
        assert cd.count('"') == 2 and "filename*=UTF-8''" in cd, cd
        from urllib.parse import unquote

        assert unquote(cd.split("filename*=UTF-8''")[1]) == hostile


# --- item 8: webhook URLs given with a request --------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://169.254.169.254/latest", "file:///etc/passwd", "http://[::1]/x", "gopher://a.example/"])
def test_webhook_urls_are_checked_at_submit(api, url):
    _, client = api
    r = client.post("/v1/flux-dev", json={"prompt": "x", "webhook_url": url})
    assert r.status_code == 422, r.text[:200]
    assert r.json()["detail"][0]["loc"] == ["body", "webhook_url"]  # BFL's 422 shape
    r = client.post("/v2/images/generate", json={"prompt": "x", "model": "fake", "webhook_url": url})
    assert r.status_code == 422 and r.json()["error"]["param"] == "webhook_url", r.text[:200]
    graph = {"g": {"type": "text_to_image", "params": {"model": "fake", "prompt": "x", "width": 64, "height": 64}}}
    r = client.post("/api/v1/workflows", json={"name": "w", "nodes": graph, "webhook_url": url})
    assert r.status_code == 422 and r.json()["error"]["code"] in ("invalid_webhook_url", "invalid_workflow"), r.text[:200]
    wid = client.post("/api/v1/workflows", json={"name": "w", "nodes": graph}).json()["id"]
    r = client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {}, "webhook_url": url})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_webhook_url", r.text[:200]
    assert client.get("/api/v1/executions").json()["data"] == []  # nothing was started


# --- item 9: an input image from a declared input -------------------------------------------------


@pytest.mark.parametrize("param", ["data", "url"])
def test_workflow_takes_its_input_image_from_a_required_input(make_runtime, sqlite_url, param):
    rt = make_runtime(sqlite_url, plans={"unlimited": {}}, extra_models={"editor": (EDIT_MODEL, FakeBackend(steps=2))})
    client = _client(rt)
    definition = {
        "name": "restyle",
        "inputs": {"img": {"type": "string", "required": True}, "prompt": {"type": "string", "default": "a red square"}},
        "nodes": {
            "load": {"type": "load_image", "params": {param: {"$input": "img"}}},
            "gen": {
                "type": "text_to_image",
                "params": {"model": "editor", "prompt": {"$input": "prompt"}, "width": 64, "height": 64, "strength": 0.5},
                "inputs": {"image": ["load", "images"]},
            },
        },
    }
    r = client.post("/api/v1/workflows/validate", json=definition)
    assert r.status_code == 200, r.text[:300]
    r = client.post("/api/v1/workflows", json=definition)
    assert r.status_code == 201, r.text[:300]
    wid = r.json()["id"]
    if param == "data":
        r = client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {"img": _png()}})
        assert r.status_code == 201, r.text[:300]
        eid = r.json()["executionId"]
        done = wait_for(lambda: (b := client.get(f"/api/v1/executions/{eid}").json())["status"] not in ("QUEUED", "RUNNING") and b)
        assert done["status"] == "COMPLETED", done
        r = client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {"img": "%%% not base64"}})
        assert r.status_code == 422, r.text[:300]
    else:
        r = client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {"img": "file:///etc/passwd"}})
        assert r.status_code == 422, r.text[:300]
    r = client.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {}})
    assert r.status_code == 422 and "img" in json.dumps(r.json()), r.text[:300]


# --- item 10: CORS ------------------------------------------------------------------------------


def test_cors_is_off_by_default_and_follows_the_setting(make_runtime, sqlite_url):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-key"}
    rt = make_runtime(sqlite_url)
    client = TestClient(create_app(rt, manage_runtime=False))
    r = client.options("/v1/flux-dev", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in client.get("/v1/credits", headers={"Origin": "https://app.example"}).headers

    rt = make_runtime(sqlite_url, cors_origins=["https://app.example"])
    client = TestClient(create_app(rt, manage_runtime=False))
    r = client.options("/v1/flux-dev", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    r = client.options("/v1/flux-dev", headers={**preflight, "Origin": "https://evil.example"})
    assert r.headers.get("access-control-allow-origin") != "https://evil.example"
    r = client.get("/v1/credits", headers={"Origin": "https://app.example", "x-key": create_key(rt)})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    # trigger URLs keep their own policy: any origin
    r = client.options("/api/v1/hooks/sometoken", headers={**preflight, "Origin": "https://forms.example"})
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"


# --- 405 with Allow ------------------------------------------------------------------------------


def test_method_mismatch_is_405_with_every_allowed_method(api):
    _, client = api
    r = client.post("/v1/credits")
    assert r.status_code == 405 and r.headers["allow"] == "GET" and r.json()["error"]["code"] == "method_not_allowed"
    r = client.patch("/api/v1/workflows/abc")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, PUT"
    r = client.get("/v1/flux-dev")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = client.get("/v1/images/generations")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]["type"] == "invalid_request_error"
    assert client.post("/v1/flux-imaginary", json={}).status_code == 404


def test_non_finite_numbers_and_out_of_range_grants_are_4xx(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, plans={"unlimited": {}}, admin_key="adm")
    client = _client(rt)
    for path, body in [("/v1/flux-dev", '{"prompt": "x", "guidance": NaN}'), ("/api/v1/workflows", '{"name": "x", "nodes": {"g": {"type": "text_to_image", "params": {"guidance": Infinity}}}}'),
                       ("/v2/images/generate", '{"prompt": "x", "model": "fake", "params": {"guidance": -Infinity}}')]:
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_number", (path, r.text[:200])
    admin = {"Authorization": "Bearer adm"}
    r = client.post("/admin/v1/accounts", json={"name": "big", "credits": 1e300}, headers=admin)
    assert r.status_code == 422, r.text[:200]  # found by the fuzzer: 500 (integer overflow in the ledger)
    aid = client.post("/admin/v1/accounts", json={"name": "ok"}, headers=admin).json()["id"]
    r = client.post(f"/admin/v1/accounts/{aid}/credits", json={"amount": 1e300}, headers=admin)
    assert r.status_code == 422, r.text[:200]
    assert client.get("/admin/v1/accounts?offset=99999999999999999999", headers=admin).status_code == 422
