"""The served OpenAPI document: every operation declared (security, request, responses per
status with error bodies), and its BFL part as BFL's own document (vendored) has it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pixelmill.api.app import create_app

VENDORED = json.loads((Path(__file__).parent / "data" / "bfl-openapi.json").read_text())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from pixelmill.config import Settings
    from pixelmill.runtime import Runtime

    rt = Runtime(Settings(data_dir=tmp_path_factory.mktemp("doc"), secret_key="x", admin_key="adm"))
    client = TestClient(create_app(rt, manage_runtime=False))
    r = client.get("/openapi.json")
    assert r.status_code == 200
    assert client.get("/docs").status_code == 200
    return r.json()


def _resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = doc["components"]["schemas"][name]
    return schema


def _variants(doc: dict, schema: dict) -> list[dict]:
    schema = _resolve(doc, schema)
    if "anyOf" in schema:
        return [v for s in schema["anyOf"] for v in _variants(doc, s)]
    return [schema]


def test_every_operation_declares_security_request_and_responses(served):
    schemes = served["components"]["securitySchemes"]
    assert schemes["x-key"] == {**schemes["x-key"], "type": "apiKey", "in": "header", "name": "x-key"}
    assert schemes["X-API-Key"]["name"] == "X-API-Key" and schemes["Bearer"]["scheme"].lower() == "bearer"
    assert schemes["AdminBearer"]["scheme"].lower() == "bearer"
    ops = [(m, p, op) for p, item in served["paths"].items() for m, op in item.items()]
    assert len(ops) >= 60
    for method, path, op in ops:
        where = f"{method.upper()} {path}"
        responses = op["responses"]
        assert any(s.startswith("2") for s in responses), where
        for status, resp in responses.items():
            if status.startswith("2") and status != "204":
                assert resp.get("content"), (where, status)
            if status[0] in "45":
                schema = _resolve(served, resp["content"]["application/json"]["schema"])
                assert "error" in schema["properties"] or "detail" in schema["properties"], (where, status)
        if method in ("post", "put") and not path.startswith(("/api/v1/executions", "/v2/jobs", "/api/v1/webhooks/events", "/api/v1/webhooks/secret", "/v1/finetune", "/v1/delete_finetune", "/api/v1/workflows/{workflow_id}/publish", "/api/v1/workflows/{workflow_id}/trigger", "/api/v1/models/{model}/")):
            assert "requestBody" in op, where
        if path == "/api/v1/hooks/{token}":
            assert op.get("security") == [], where  # the token in the path is the credential
        elif path.startswith(("/admin/", "/api/v1/models/{model}/")):  # loading and unloading models is the operator's
            assert {"AdminBearer": []} in op["security"], where
            assert {"x-key": []} not in op["security"], where
        else:
            assert {"x-key": []} in op["security"] and {"Bearer": []} in op["security"], where
        if path.startswith(("/api/", "/v2/")) and "/events" not in path:
            assert {"401", "404", "422"} <= set(responses), where
        if path.startswith("/v1/images/"):
            err = _resolve(served, responses["400"]["content"]["application/json"]["schema"])
            assert set(_resolve(served, err["properties"]["error"])["properties"]) >= {"message", "type", "param", "code"}


def test_the_bfl_part_matches_bfls_own_document(served):
    assert VENDORED["components"]["securitySchemes"]["APIKeyHeader"] == {"type": "apiKey", "in": "header", "name": "x-key"}
    for path, item in VENDORED["paths"].items():
        for method, theirs in item.items():
            ours = served["paths"].get(path, {}).get(method)
            where = f"{method.upper()} {path}"
            assert ours is not None, f"{where} is not in the served document"
            if theirs.get("security"):
                assert {"x-key": []} in ours["security"], where
            # query parameters: same names, same required-ness
            their_params = {p["name"]: p.get("required", False) for p in theirs.get("parameters", [])}
            our_params = {p["name"]: p.get("required", False) for p in ours.get("parameters", []) if p["in"] == "query"}
            assert set(their_params) <= set(our_params), where
            # request body: BFL's field names, BFL's required fields, nothing else required
            if "requestBody" in theirs:
                tb = _resolve(VENDORED, theirs["requestBody"]["content"]["application/json"]["schema"])
                ob = _resolve(served, ours["requestBody"]["content"]["application/json"]["schema"])
                assert set(tb["properties"]) <= set(ob["properties"]), (where, set(tb["properties"]) - set(ob["properties"]))
                assert set(tb.get("required", [])) == set(ob.get("required", [])), where
                for name, prop in tb["properties"].items():  # the documented bounds are BFL's
                    mine = ob["properties"][name]
                    for bound in ("minimum", "maximum", "multipleOf", "maxLength"):
                        theirs_b = [v.get(bound) for v in _variants(VENDORED, prop) if bound in v]
                        if theirs_b:
                            ours_b = [v.get(bound) for v in _variants(served, mine) if bound in v]
                            assert ours_b == theirs_b or not ours_b or name in ("width", "height"), (where, name, bound, theirs_b, ours_b)
            # the 200 answer: BFL's response models, by their field names (finetunes are not deleted here: 501)
            if path == "/v1/delete_finetune":
                assert "501" in ours["responses"], where
                continue
            t200 = theirs["responses"]["200"]["content"]["application/json"]["schema"]
            o200 = ours["responses"]["200"]["content"]["application/json"]["schema"]
            their_shapes = [frozenset(v.get("properties", {})) for v in _variants(VENDORED, t200)]
            our_shapes = [frozenset(v.get("properties", {})) for v in _variants(served, o200)]
            for shape in their_shapes:
                assert any(shape <= o for o in our_shapes), (where, sorted(shape))
            # the 422 answer: FastAPI's HTTPValidationError shape
            if "422" in theirs["responses"]:
                o422 = _resolve(served, ours["responses"]["422"]["content"]["application/json"]["schema"])
                item_schema = _resolve(served, o422["properties"]["detail"]["items"])
                assert {"loc", "msg", "type"} <= set(item_schema["required"]), where
    status = _resolve(served, _resolve(served, served["components"]["schemas"]["ResultResponse"])["properties"]["status"])
    assert set(status["enum"]) == set(VENDORED["components"]["schemas"]["StatusResponse"]["enum"])


def test_validation_errors_match_the_advertised_shape(served, make_runtime, sqlite_url):
    from tests.conftest import create_key

    rt = make_runtime(sqlite_url)
    client = TestClient(create_app(rt, manage_runtime=False))
    client.headers["x-key"] = create_key(rt)
    r = client.post("/v1/flux-dev", json={"prompt": "x", "steps": 500})
    assert r.status_code == 422
    body = r.json()
    assert body["detail"][0]["loc"] == ["body", "steps"] and {"loc", "msg", "type"} <= set(body["detail"][0])
    r = client.get("/api/v1/workflows?limit=0")
    assert r.status_code == 422
    body = r.json()
    assert body["error"]["code"] == "validation_error" and body["detail"][0]["loc"] == ["query", "limit"]
