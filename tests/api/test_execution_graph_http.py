"""``GET /api/v1/executions/{id}?include=graph`` on a real server: the graph an execution ran,
for BFL and OpenAI submissions (built by recipes) and workflow runs (inputs filled in), and
submitting it again to ``POST /api/v1/executions`` makes the same picture."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from pixelmill.api.app import create_app
from tests.api.test_openai_http import EDIT_MODEL
from tests.conftest import RecordingBackend
from tests.conftest import create_key, wait_for
from tests.helpers.servers import serve


@pytest.fixture
def api(make_runtime, sqlite_url):
    rt = make_runtime(sqlite_url, extra_models={"fake-edit": (EDIT_MODEL, RecordingBackend())})
    with serve(create_app(rt, manage_runtime=False)) as base:
        with httpx.Client(base_url=base, headers={"x-key": create_key(rt, plan="enterprise")}, timeout=30) as client:
            client.rt = rt
            yield client


def _finished(client, eid: str) -> dict:
    body = wait_for(lambda: (b := client.get(f"/api/v1/executions/{eid}").json())["status"] not in ("QUEUED", "RUNNING") and b, timeout=60)
    assert body["status"] == "COMPLETED", body
    return body


def _pixels(client, url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(client.get(url).content)).convert("RGB"))


def _rerun(client, graph: dict) -> dict:
    r = client.post("/api/v1/executions", json={"nodes": graph["nodes"], "label": "re-run"})
    assert r.status_code == 201, r.text
    return _finished(client, r.json()["executionId"])


def test_a_bfl_submission_shows_its_graph_and_runs_again(api):
    r = api.post("/v1/flux-dev", json={"prompt": "a red circle", "width": 256, "height": 256, "seed": 5, "output_format": "png"})
    assert r.status_code == 200, r.text
    eid = r.json()["id"]
    first = _finished(api, eid)
    assert "graph" not in first  # only when asked for

    body = api.get(f"/api/v1/executions/{eid}", params={"include": "graph"}).json()
    assert body["id"] == eid and body["status"] == "COMPLETED"
    [(node_id, node)] = body["graph"]["nodes"].items()
    assert node["type"] == "text_to_image"
    assert node["params"]["prompt"] == "a red circle" and node["params"]["seed"] == 5
    assert node["params"]["width"] == 256 and node["params"]["model"] == "fake"

    again = _rerun(api, body["graph"])
    assert again["id"] != eid and [n["nodeId"] for n in again["nodeRuns"]] == [node_id]
    assert np.array_equal(_pixels(api, again["outputs"][0]), _pixels(api, first["outputs"][0]))  # same graph, same seed


def test_an_openai_edit_shows_the_input_image_and_its_link(api):
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 10)).save(buf, "PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    r = api.post("/v1/images/edits", json={"images": [{"image_url": data_url}], "prompt": "make it blue", "size": "256x256", "seed": 3})
    assert r.status_code == 200, r.text
    [latest] = api.get("/api/v1/executions", params={"limit": 1}).json()["data"]
    graph = api.get(f"/api/v1/executions/{latest['id']}?include=graph").json()["graph"]
    by_type = {n["type"]: (nid, n) for nid, n in graph["nodes"].items()}
    load_id, load = by_type["load_image"]
    assert load["params"]["data"] == data_url
    _gen_id, gen = by_type["text_to_image"]
    assert gen["params"]["prompt"] == "make it blue" and gen["params"]["model"] == "fake-edit"
    assert list(gen["inputs"].values())[0][0] == load_id  # the edit starts from the loaded image
    again = _rerun(api, graph)
    assert len(again["outputs"]) == 1


def test_a_workflow_run_shows_its_graph_with_the_inputs_filled_in(api):
    spec = {
        "name": "w",
        "inputs": {"prompt": {"type": "string", "required": True}},
        "nodes": {
            "gen": {"type": "text_to_image", "params": {"model": "fake", "prompt": {"$input": "prompt"}, "width": 64, "height": 64, "seed": 1}},
            "small": {"type": "resize", "params": {"width": 32, "height": 32}, "inputs": {"image": ["gen", "images"]}},
        },
    }
    wid = api.post("/api/v1/workflows", json=spec).json()["id"]
    eid = api.post(f"/api/v1/workflows/{wid}/execute", json={"inputs": {"prompt": "a green square"}}).json()["executionId"]
    _finished(api, eid)
    graph = api.get(f"/api/v1/executions/{eid}?include=graph").json()["graph"]
    assert graph["nodes"]["gen"]["params"]["prompt"] == "a green square"
    assert graph["nodes"]["small"]["inputs"] == {"image": ["gen", "images"]}
    again = _rerun(api, graph)
    assert [n["nodeId"] for n in again["nodeRuns"]] == ["gen", "small"] and again["workflowId"] is None


def test_include_is_checked_and_the_graph_is_the_owners_only(api):
    r = api.post("/v1/flux-dev", json={"prompt": "x", "width": 256, "height": 256})
    eid = r.json()["id"]
    r = api.get(f"/api/v1/executions/{eid}?include=nodes")
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    r = api.get(f"/api/v1/executions/{eid}?include=graph", headers={"x-key": create_key(api.rt, account="someone-else")})
    assert r.status_code == 404 and r.json()["error"]["code"] == "execution_not_found"
