"""The BFL request/response schemas against BFL's own OpenAPI document.

``data/bfl-openapi.json`` is BFL's published spec, vendored unchanged.  The
first tests walk it and require every modelled schema to match property for
property (type, nullability, default, bounds, enum, length, title, text), so
"mirrors BFL's API" is checked rather than claimed.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from pixelmill.api.dialects import bfl_schemas as bfl
from pixelmill.api.dialects.bfl_schemas import (
    BFL_ENDPOINTS,
    AsyncResponse,
    AsyncWebhookResponse,
    BadImageInput,
    BflGenerationParams,
    BflRequestError,
    CreditsResponse,
    ResultResponse,
    StatusResponse,
    decode_base64_image,
    is_url,
    parse_request_body,
    to_generation_params,
    validate_request,
    validation_error_body,
)

SPEC = json.loads((Path(__file__).parent / "data" / "bfl-openapi.json").read_text())
SCHEMAS = SPEC["components"]["schemas"]

MODELLED = [
    "FluxPro11Inputs",
    "FluxDevInputs",
    "FluxUltraInput",
    "FluxKontextProInputs",
    "FluxProFillInputs",
    "FluxProExpandInputs",
    "Flux2Inputs",
    "Flux2KleinInputs",
    "Flux2FlexInputs",
    "FinetuneFluxProFillInputs",
    "FinetuneFluxUltraInput",
    "AsyncResponse",
    "AsyncWebhookResponse",
    "ResultResponse",
    "CreditsResponse",
]
REQUEST_SCHEMAS = [name for name in MODELLED if "Response" not in name]

# An endpoint per request model, for the bodies below; each needs these fields.
REQUIRED_FIELDS: dict[str, dict[str, Any]] = {
    "flux-pro": {"prompt": "a cat"},
    "flux-pro-finetuned": {"prompt": "a cat", "finetune_id": "ft"},
    "flux-pro-1.1": {},
    "flux-dev": {},
    "flux-pro-1.1-ultra": {},
    "flux-pro-1.1-ultra-finetuned": {"finetune_id": "my-finetune"},
    "flux-pro-1.0-fill": {"image": "iVBORw0KGgo="},
    "flux-pro-1.0-fill-finetuned": {"image": "iVBORw0KGgo=", "finetune_id": "ft"},
    "flux-pro-1.0-expand": {"image": "iVBORw0KGgo="},
    "flux-kontext-pro": {"prompt": "a cat"},
    "flux-kontext-max": {"prompt": "a cat"},
    "flux-2-pro": {"prompt": "a cat"},
    "flux-2-pro-preview": {"prompt": "a cat"},
    "flux-2-max": {"prompt": "a cat"},
    "flux-2-flex": {"prompt": "a cat"},
    "flux-2-klein-4b": {"prompt": "a cat"},
    "flux-2-klein-9b": {"prompt": "a cat"},
    "flux-2-klein-9b-preview": {"prompt": "a cat"},
}


def _ours(name: str) -> dict[str, Any]:
    """Our model's JSON schema, with refs spelled as in an OpenAPI document."""
    schema = getattr(bfl, name).model_json_schema()
    return json.loads(json.dumps(schema).replace("#/$defs/", "#/components/schemas/"))


def _without_null_default(prop: dict[str, Any]) -> dict[str, Any]:
    # BFL's spec leaves out `"default": null`; pydantic writes it.  Same meaning.
    if "default" in prop and prop["default"] is None:
        return {k: v for k, v in prop.items() if k != "default"}
    return prop


# --------------------------------------------------------------------------
# the spec walk


@pytest.mark.parametrize("name", MODELLED)
def test_schema_properties_match_the_spec_exactly(name: str) -> None:
    ours, theirs = _ours(name), SCHEMAS[name]
    assert sorted(ours["properties"]) == sorted(theirs["properties"])
    assert sorted(ours.get("required", [])) == sorted(theirs.get("required", []))
    for prop, spec_prop in theirs["properties"].items():
        assert _without_null_default(ours["properties"][prop]) == spec_prop, prop


BOUND_KEYS = ("default", "minimum", "maximum", "multipleOf", "maxLength", "minLength", "enum")


def _bounds(prop: dict[str, Any]) -> dict[str, Any]:
    """Default and bounds of a property, looking inside ``anyOf`` and refs."""
    found = {k: prop[k] for k in BOUND_KEYS if k in prop}
    for option in prop.get("anyOf", []):
        if "$ref" in option:
            option = SCHEMAS[option["$ref"].rsplit("/", 1)[1]]
        found.update({k: option[k] for k in BOUND_KEYS if k in option and k != "default"})
    return found


@pytest.mark.parametrize("name", REQUEST_SCHEMAS)
def test_defaults_and_bounds_hold_at_runtime(name: str) -> None:
    """Not only the schema text: instances get the spec's defaults, and values
    just outside each spec bound are refused."""
    model: type[BaseModel] = getattr(bfl, name)
    required = {"prompt": "a cat", "image": "iVBORw0KGgo=", "finetune_id": "ft"}
    base = {k: v for k, v in required.items() if k in model.model_fields}
    instance = model.model_validate(base).model_dump(mode="json")
    for prop, spec_prop in SCHEMAS[name]["properties"].items():
        bounds = _bounds(spec_prop)
        if "default" in bounds and prop not in base:
            assert instance[prop] == bounds["default"], prop
        step = 1 if any(o.get("type") == "integer" for o in [spec_prop, *spec_prop.get("anyOf", [])]) else 0.01
        for key, outside in (("minimum", -step), ("maximum", step)):
            if key in bounds:
                with pytest.raises(ValidationError) as info:
                    model.model_validate({**base, prop: bounds[key] + outside})
                assert info.value.errors()[0]["loc"] == (prop,)
        if "multipleOf" in bounds:
            with pytest.raises(ValidationError):
                model.model_validate({**base, prop: bounds["minimum"] + bounds["multipleOf"] // 2})
        if "maxLength" in bounds:
            with pytest.raises(ValidationError):
                model.model_validate({**base, prop: "https://a.example/" + "x" * bounds["maxLength"]})


def test_every_generation_route_in_the_spec_is_registered_with_its_schema() -> None:
    routes = {}
    for path, item in SPEC["paths"].items():
        body = item.get("post", {}).get("requestBody")
        if body and path != "/v1/delete_finetune":
            ref = body["content"]["application/json"]["schema"]["$ref"]
            routes[path.removeprefix("/v1/")] = ref.rsplit("/", 1)[1]
    assert routes, "spec has no POST routes?"
    for endpoint, schema_name in routes.items():
        assert BFL_ENDPOINTS[endpoint].__name__ == schema_name
    # the only registered endpoints not in today's spec are legacy FLUX.1 [pro] and its finetuned variant
    assert set(BFL_ENDPOINTS) - set(routes) == {"flux-pro", "flux-pro-finetuned"}


def test_enums_match_the_spec() -> None:
    assert [s.value for s in StatusResponse] == SCHEMAS["StatusResponse"]["enum"]
    assert [f.value for f in bfl.OutputFormat] == SCHEMAS["OutputFormat"]["enum"]
    assert StatusResponse("Task not found") is StatusResponse.TaskNotFound
    assert not StatusResponse.Pending.is_terminal()
    assert all(s.is_terminal() for s in StatusResponse if s is not StatusResponse.Pending)


# --------------------------------------------------------------------------
# legacy flux-pro (from BFL's SDK, not in the spec)


def test_legacy_flux_pro_defaults_and_bounds() -> None:
    req = validate_request("flux-pro", {"prompt": "a cat"})
    assert (req.steps, req.guidance, req.interval) == (40, 2.5, 2.0)
    assert (req.width, req.height) == (1024, 768)
    for field, bad in (("steps", 51), ("guidance", 5.1), ("interval", 0.9), ("interval", 4.1)):
        with pytest.raises(ValidationError):
            validate_request("flux-pro", {"prompt": "a cat", field: bad})
    with pytest.raises(ValidationError, match="Either prompt or image_prompt"):
        validate_request("flux-pro", {})


# --------------------------------------------------------------------------
# bad input: FastAPI's 422 body, loc paths


BAD_INPUTS = [
    # pydantic checks multipleOf before the range, so 250 and 1441 are reported
    # as "not a multiple of 32"; 224 and 1472 as out of range
    ("flux-pro-1.1", {"width": 250}, "width", "multiple_of"),
    ("flux-pro-1.1", {"width": 1441}, "width", "multiple_of"),
    ("flux-pro-1.1", {"width": 224}, "width", "greater_than_equal"),
    ("flux-pro-1.1", {"height": 1472}, "height", "less_than_equal"),
    ("flux-pro-1.1", {"width": 1000}, "width", "multiple_of"),
    ("flux-pro-1.1", {"height": 1000.5}, "height", "int_from_float"),
    ("flux-dev", {"steps": 0}, "steps", "greater_than_equal"),
    ("flux-dev", {"steps": 51}, "steps", "less_than_equal"),
    ("flux-dev", {"guidance": 1.4}, "guidance", "greater_than_equal"),
    ("flux-pro-1.1-ultra", {"aspect_ratio": "3:1"}, "aspect_ratio", "value_error"),
    ("flux-pro-1.1-ultra", {"aspect_ratio": "wide"}, "aspect_ratio", "value_error"),
    ("flux-pro-1.1-ultra", {"image_prompt_strength": 1.5}, "image_prompt_strength", "less_than_equal"),
    ("flux-kontext-pro", {"prompt": "x", "aspect_ratio": "1:3"}, "aspect_ratio", "value_error"),
    ("flux-pro-1.1", {"output_format": "gif"}, "output_format", "enum"),
    ("flux-pro-1.1", {"webhook_url": "https://a.example/" + "x" * 2083}, "webhook_url", "url_too_long"),
    ("flux-pro-1.1", {"webhook_url": "ftp://a.example/hook"}, "webhook_url", "url_scheme"),
    ("flux-pro-1.1", {"seed": "abc"}, "seed", "int_parsing"),
    ("flux-pro-1.1", {"safety_tolerance": 7}, "safety_tolerance", "less_than_equal"),
    ("flux-2-pro", {"prompt": "x", "safety_tolerance": 6}, "safety_tolerance", "less_than_equal"),
    ("flux-2-pro", {"prompt": "x", "width": 0}, "width", "greater_than_equal"),
    ("flux-2-flex", {"prompt": "x", "guidance": 10.5}, "guidance", "less_than_equal"),
    ("flux-pro-1.0-fill", {"image": "AAAA", "steps": 14}, "steps", "greater_than_equal"),
    ("flux-pro-1.0-fill", {"image": "AAAA", "guidance": 100.5}, "guidance", "less_than_equal"),
    ("flux-pro-1.0-expand", {"image": "AAAA", "top": 2049}, "top", "less_than_equal"),
    ("flux-pro-1.0-fill", {}, "image", "missing"),
    ("flux-kontext-max", {}, "prompt", "missing"),
    ("flux-2-klein-4b", {"prompt": None}, "prompt", "string_type"),
]


@pytest.mark.parametrize(("endpoint", "body", "field", "error_type"), BAD_INPUTS)
def test_bad_input_renders_fastapi_422_body(endpoint: str, body: dict, field: str, error_type: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_request(endpoint, body)
    rendered = validation_error_body(info.value)
    assert list(rendered) == ["detail"]
    (error,) = rendered["detail"]
    assert error["loc"] == ["body", field]
    assert error["type"] == error_type
    assert error["msg"]
    assert set(error) <= {"type", "loc", "msg", "input", "ctx"}
    json.dumps(rendered)  # ready to send as is


def test_several_errors_are_all_reported_in_field_order() -> None:
    with pytest.raises(ValidationError) as info:
        validate_request("flux-dev", {"width": 250, "steps": 0, "seed": "abc"})
    locs = [e["loc"] for e in validation_error_body(info.value)["detail"]]
    assert locs == [["body", "width"], ["body", "steps"], ["body", "seed"]]


def test_flux2_size_over_4_megapixels_is_a_body_level_422() -> None:
    validate_request("flux-2-pro", {"prompt": "x", "width": 2048, "height": 2048})
    validate_request("flux-2-pro", {"prompt": "x", "width": 4096, "height": 1024})
    with pytest.raises(ValidationError) as info:
        validate_request("flux-2-pro", {"prompt": "x", "width": 2064, "height": 2048})
    (error,) = validation_error_body(info.value)["detail"]
    assert error["loc"] == ["body"] and error["type"] == "value_error"
    assert "4 megapixels" in error["msg"]


def test_unknown_fields_are_ignored_like_bfl() -> None:
    req = validate_request("flux-pro-1.1", {"prompt": "x", "num_images": 4, "foo": {"bar": 1}})
    assert "foo" not in req.model_dump() and not hasattr(req, "num_images")


def test_lax_parsing_like_fastapi() -> None:
    req = validate_request("flux-dev", {"seed": "42", "width": 512.0, "prompt_upsampling": "true"})
    assert (req.seed, req.width, req.prompt_upsampling) == (42, 512, True)


def _app_with_routes() -> TestClient:
    app = FastAPI()
    for endpoint in ("flux-dev", "flux-pro-1.1-ultra", "flux-2-pro", "flux-kontext-pro"):
        model = BFL_ENDPOINTS[endpoint]

        def route(body):  # type: ignore[no-untyped-def]
            return {}

        route.__annotations__ = {"body": model, "return": dict}
        app.post(f"/v1/{endpoint}")(route)
    return TestClient(app)


PARITY_BODIES = [
    ("flux-dev", '{"steps": 0, "seed": "abc", "width": 1000, "output_format": "gif"}'),
    ("flux-dev", '{"webhook_url": "https://a.example/' + "x" * 2100 + '"}'),
    ("flux-dev", "[1, 2]"),
    ("flux-dev", "null"),
    ("flux-dev", '"text"'),
    ("flux-dev", ""),
    ("flux-dev", '{"prompt": "x",}'),
    ("flux-pro-1.1-ultra", '{"aspect_ratio": "3:1", "safety_tolerance": 7}'),
    ("flux-2-pro", '{"prompt": "x", "width": 4096, "height": 4096}'),
    ("flux-kontext-pro", '{"input_image": 5}'),
]


@pytest.mark.parametrize(("endpoint", "raw"), PARITY_BODIES)
def test_manual_validation_gives_the_body_fastapi_gives(endpoint: str, raw: str) -> None:
    """A route that validates by hand answers exactly what FastAPI would."""
    client = _app_with_routes()
    response = client.post(f"/v1/{endpoint}", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    with pytest.raises((ValidationError, BflRequestError)) as info:
        parse_request_body(endpoint, raw.encode())
    assert validation_error_body(info.value) == response.json()


def test_error_list_input_is_prefixed_with_body() -> None:
    body = validation_error_body([{"type": "value_error", "loc": ("mask",), "msg": "bad mask"}])
    assert body == {"detail": [{"type": "value_error", "loc": ["body", "mask"], "msg": "bad mask"}]}


# --------------------------------------------------------------------------
# normalised parameters


def _params(endpoint: str, body: dict[str, Any], **kw: Any) -> BflGenerationParams:
    req = validate_request(endpoint, {**REQUIRED_FIELDS[endpoint], **body})
    return to_generation_params(endpoint, req, **kw)


def _size(endpoint: str, body: dict[str, Any], **kw: Any) -> tuple[int | None, int | None]:
    params = _params(endpoint, body, **kw)
    return params.width, params.height


@pytest.mark.parametrize("endpoint", sorted(BFL_ENDPOINTS))
def test_every_endpoint_normalises_with_only_required_fields(endpoint: str) -> None:
    params = _params(endpoint, {})
    assert params.endpoint == endpoint and params.num_images == 1
    assert params.output_format == ("png" if "kontext" in endpoint else "jpeg")
    assert params.safety_tolerance == 2 and params.seed is None
    assert params.webhook_url is None and params.webhook_secret is None


def test_text_to_image_families() -> None:
    p = _params("flux-pro-1.1", {"prompt": "a cat", "seed": 7, "width": 512, "height": 1440})
    assert (p.prompt, p.seed, p.width, p.height, p.steps, p.guidance) == ("a cat", 7, 512, 1440, None, None)
    p = _params("flux-dev", {})
    assert (p.width, p.height, p.steps, p.guidance) == (1024, 768, 28, 3.0)
    p = _params("flux-dev", {"steps": None, "guidance": None, "output_format": None})  # null = default
    assert (p.steps, p.guidance, p.output_format) == (28, 3.0, "jpeg")
    p = _params("flux-pro", {"interval": 3})
    assert (p.steps, p.guidance, p.extras) == (40, 2.5, {"interval": 3.0})


def test_ultra_sizes_like_bfl_and_capped_by_server_limit() -> None:
    p = _params("flux-pro-1.1-ultra", {"raw": True, "image_prompt": "QUJD", "image_prompt_strength": 0.3})
    assert (p.width, p.height, p.raw) == (2752, 1536, True)
    assert p.input_images == ["QUJD"] and p.extras == {"aspect_ratio": "16:9", "image_prompt_strength": 0.3}
    assert _params("flux-pro-1.1-ultra", {"aspect_ratio": "1:1"}).width == 2048
    assert _size("flux-pro-1.1-ultra", {"aspect_ratio": "9:16"}) == (1536, 2752)
    for ratio in ("21:9", "16:9", "1:1", "2:3", "9:21"):
        q = _params("flux-pro-1.1-ultra", {"aspect_ratio": ratio}, max_megapixels=1.0)
        assert q.width % 32 == 0 and q.height % 32 == 0
        assert 0.85 * 2**20 < q.width * q.height <= 2**20
    q = _params("flux-pro-1.1-ultra-finetuned", {})
    assert (q.width, q.height) == (2752, 1536)
    assert q.extras["finetune_id"] == "my-finetune" and q.extras["finetune_strength"] == 1.2


def test_kontext_sizes_and_images() -> None:
    p = _params("flux-kontext-pro", {"aspect_ratio": "16:9", "input_image": "https://img.example/a.png"})
    assert (p.width, p.height) == (1376, 768)
    p = _params("flux-kontext-pro", {"aspect_ratio": "21:9"})
    assert (p.width, p.height) == (1568, 672)
    assert _size("flux-kontext-max", {}) == (1024, 1024)
    # an input image and no aspect ratio: the output follows the image
    p = _params("flux-kontext-max", {"input_image": "QUJD", "input_image_3": "REVG", "input_image_2": "Q0RF"})
    assert (p.width, p.height) == (None, None)
    assert p.input_images == ["QUJD", "Q0RF", "REVG"]


def test_flux2_sizes() -> None:
    assert _size("flux-2-pro", {}) == (1024, 1024)
    assert _size("flux-2-max", {"width": None, "height": None}) == (1024, 1024)
    p = _params("flux-2-pro", {"width": 1000, "height": 1090})
    assert (p.width, p.height) == (992, 1088)  # rounded down to multiples of 16
    p = _params("flux-2-klein-4b", {"width": 1920})
    assert (p.width, p.height) == (1920, 1024)
    p = _params("flux-2-flex", {"input_image": "QUJD", "input_image_8": "SElK"})
    assert (p.steps, p.guidance, p.prompt_upsampling) == (50, 5.0, True)
    assert p.input_images == ["QUJD", "SElK"]
    assert _params("flux-2-pro", {}).prompt_upsampling is False  # the field does not exist there
    with pytest.raises(BflRequestError) as info:
        _params("flux-2-pro", {"width": 2048, "height": 2048}, max_megapixels=2.0)
    assert validation_error_body(info.value)["detail"][0]["loc"] == ["body"]


def test_fill_and_expand() -> None:
    p = _params("flux-pro-1.0-fill", {"mask": "TUFTSw==", "prompt": None})
    assert (p.prompt, p.mask, p.input_images, p.steps, p.guidance) == ("", "TUFTSw==", ["iVBORw0KGgo="], 50, 60.0)
    assert (p.width, p.height) == (None, None)
    p = _params("flux-pro-1.0-expand", {"top": 64, "right": 128, "left": None})
    assert (p.width, p.height) == (None, None)
    assert p.extras == {"top": 64, "bottom": 0, "left": 0, "right": 128}


def test_webhook_fields_and_raw_dict_input() -> None:
    p = to_generation_params(
        "flux-dev",
        {"webhook_url": "https://hooks.example/bfl?x=1", "webhook_secret": "s3cret", "prompt_upsampling": True},
    )
    assert p.webhook_url == "https://hooks.example/bfl?x=1" and p.webhook_secret == "s3cret"
    assert p.prompt_upsampling is True


# --------------------------------------------------------------------------
# image fields

PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def test_decode_base64_image_forms() -> None:
    b64 = base64.b64encode(PNG_1PX).decode()
    assert decode_base64_image(b64, "image", 10_000) == PNG_1PX
    assert decode_base64_image(f"data:image/png;base64,{b64}", "image", 10_000) == PNG_1PX
    assert decode_base64_image(f"DATA:image/PNG;BASE64,{b64}", "image", 10_000) == PNG_1PX
    wrapped = "\n".join(b64[i : i + 20] for i in range(0, len(b64), 20))
    assert decode_base64_image(wrapped, "image", 10_000) == PNG_1PX
    assert decode_base64_image(b64.rstrip("="), "image", 10_000) == PNG_1PX
    urlsafe = base64.urlsafe_b64encode(b"\xfb\xff\xfe" * 10).decode()
    assert decode_base64_image(urlsafe, "image", 100) == b"\xfb\xff\xfe" * 10


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("not base64!", "unexpected characters"),
        ("QUJDR", "truncated"),
        ("", "empty"),
        ("data:text/plain;base64,QUJD", "image/*"),
        ("data:image/png,QUJD", "base64"),
        ("data:nonsense", "malformed"),
        ("https://img.example/a.png", "URL"),
        ("QU=JD", "invalid base64"),
    ],
)
def test_decode_base64_image_rejects(value: str, reason: str) -> None:
    with pytest.raises(BadImageInput) as info:
        decode_base64_image(value, "input_image_2", 10_000)
    assert info.value.field == "input_image_2" and reason in info.value.reason
    body = validation_error_body(info.value)
    assert body["detail"][0]["loc"] == ["body", "input_image_2"]


def test_decode_base64_image_size_limit_checked_before_decoding() -> None:
    b64 = base64.b64encode(b"x" * 1000).decode()
    assert len(decode_base64_image(b64, "image", 1000)) == 1000
    with pytest.raises(BadImageInput, match="larger than 999 bytes"):
        decode_base64_image(b64, "image", 999)
    with pytest.raises(BadImageInput, match="larger than"):
        decode_base64_image("A" * 10_000_000, "image", 1000)


def test_is_url() -> None:
    assert is_url("https://img.example/a.png") and is_url("HTTP://img.example:8080/a?x=1")
    for value in ("ftp://img.example/a", "data:image/png;base64,AAAA", "iVBORw0KGgo=", "https://", "http:///x", None, 5):
        assert not is_url(value)


# --------------------------------------------------------------------------
# responses


def test_response_models_serialise_like_bfl() -> None:
    submit = AsyncResponse(id="abc", polling_url="https://api.example/v1/get_result?id=abc", cost=4.0)
    assert submit.model_dump(mode="json") == {
        "id": "abc",
        "polling_url": "https://api.example/v1/get_result?id=abc",
        "cost": 4.0,
        "input_mp": None,
        "output_mp": None,
    }
    hooked = AsyncWebhookResponse(id="abc", status="Pending", webhook_url="https://h.example/")
    assert set(hooked.model_dump()) == {"id", "status", "webhook_url", "cost", "input_mp", "output_mp"}
    ready = ResultResponse(id="abc", status="Ready", result={"sample": "https://d.example/x.jpg", "seed": 1})
    assert ready.model_dump(mode="json")["status"] == "Ready"
    moderated = ResultResponse.model_validate(
        {"id": "abc", "status": "Content Moderated", "details": {"Moderation Reasons": ["x"]}}
    )
    assert moderated.status is StatusResponse.ContentModerated and moderated.result is None
    with pytest.raises(ValidationError):
        ResultResponse(id="abc", status="Done")
    assert CreditsResponse(credits=12.5).model_dump() == {"credits": 12.5}
