"""The BFL FLUX API dialect: ``POST /v1/{endpoint}``, ``GET /v1/get_result``, ``GET /v1/credits``.

Thin: parse and validate the body exactly as BFL does, turn it into a small
graph, call the execution service, render BFL's shapes.

Input images (base64 or URLs) go through a ``load_image`` node into models
that take images.  Fill (``flux-pro-1.0-fill``) is inpainting: its ``mask``
(white = repaint) or, without one, the image's transparent pixels mark what to
regenerate, and everything else is kept.  Expand (``flux-pro-1.0-expand``) is
outpainting: the image gets its margins (edge pixels stretched) and only the
margins are generated.  Fill, expand, and Kontext without an ``aspect_ratio``
answer in the input image's shape (sides multiples of 32; an image given by
URL is not read before the task runs, so these answer 1024x1024).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pixelmill import recipes
from pixelmill.accounts.keys import Principal
from pixelmill.api import contract
from pixelmill.api.deps import json_body, principal, webhook_url_refusal
from pixelmill.api.errors import allowed_methods, validation_message
from pixelmill.api.dialects import bfl_schemas as schemas
from pixelmill.api import wait
from pixelmill.api.files import signed_url
from pixelmill.api.wait import requested_wait
from pixelmill.engine.graph import GraphProblems
from pixelmill.engine.service import Submission
from pixelmill.engine.views import ExecutionView
from pixelmill.presenters.bfl import render_result as _render_result
from pixelmill.errors import NotFound, PixelmillError
from pixelmill.models.imageops import ImageDecodeError, ImageInfo, fit_size, probe_image

router = APIRouter(tags=["BFL"])

SUBMIT_ERRORS = (400, 401, 402, 403, 404, 405, 409, 413, 422, 429, 503)


class PricingRequest(BaseModel):
    """``endpoint`` plus that endpoint's own fields (or the fields under ``inputs``)."""

    model_config = ConfigDict(extra="allow")

    endpoint: str = Field(description='The endpoint to price, e.g. "flux-pro-1.1"')
    inputs: dict[str, Any] | None = None


class PricingResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    endpoint: str
    cost: float
    currency: str
    input_mp: float
    output_mp: float
    width: int
    height: int
    credits: float


class SyncImage(BaseModel):
    url: str
    width: int
    height: int


class SyncResult(schemas.ResultResponse):
    """The synchronous mount's answer: ``get_result``'s body with the image."""

    model_config = ConfigDict(extra="allow")

    polling_url: str | None = None
    images: list[SyncImage] | None = None


def _validation_error(err) -> JSONResponse:
    """BFL's 422 (FastAPI's ``detail`` list) plus the top-level ``message`` BFL's SDK reads."""
    body = schemas.validation_error_body(err)
    return JSONResponse({**body, "message": validation_message(body["detail"])}, status_code=422)


@router.get("/v1/get_result", responses=contract.responses(401, 403, 405, 429, 503, shape="bfl", ok={200: schemas.ResultResponse}))
async def get_result(request: Request, id: str = "", who: Principal = Depends(principal)):
    rt = request.app.state.runtime
    try:
        view = rt.executions.cached(who.account_id, id) or await run_in_threadpool(rt.executions.get, who.account_id, id)
    except NotFound:
        return JSONResponse({"id": id, "status": "Task not found", "result": None, "progress": None, "details": None, "preview": None})
    return JSONResponse(render_finished(request, view))


def render_finished(request: Request, view) -> dict:
    """``get_result``'s body for an execution (also answered from memory: pixelmill.api.hot_reads)."""
    return _render_result(view, lambda f: signed_url(request, f))


@router.get("/v1/credits", responses=contract.responses(401, 403, 405, 429, 503, shape="bfl", ok={200: schemas.CreditsResponse}))
def credits(request: Request, who: Principal = Depends(principal)):
    rt = request.app.state.runtime
    return {"credits": rt.admission.balance(rt.db, who)}


FINETUNED = "-finetuned"


def _finetunes_not_written() -> JSONResponse:
    message = (
        "Finetunes on this server are the LoRAs of the operator's model catalog: they cannot be created or "
        "deleted through the API. GET /v1/my_finetunes lists them; ask the operator to add one."
    )
    return JSONResponse({"detail": message, "message": message, "error": {"code": "finetuning_not_offered", "message": message}}, status_code=501)


def serving_model(catalog, endpoint: str):
    """The catalog model serving ``/v1/{endpoint}``: the one mapped to it, else (a model name or alias)
    the one it names; a ``-finetuned`` endpoint not mapped itself is served by the model of its base
    endpoint (``flux-pro-1.1-ultra-finetuned`` by the one serving ``flux-pro-1.1-ultra``)."""
    spec = catalog.for_bfl_endpoint(endpoint)
    if spec is None and endpoint.endswith(FINETUNED):
        spec = catalog.for_bfl_endpoint(endpoint.removesuffix(FINETUNED))
    return spec or catalog.resolve(endpoint)


def visible_finetunes(catalog) -> dict[str, dict[str, Any]]:
    """Every finetune a client can name: the LoRAs of the models serving a ``-finetuned`` endpoint,
    by name, with the models that have it and the endpoints that take it."""
    out: dict[str, dict[str, Any]] = {}
    for endpoint in schemas.BFL_ENDPOINTS:
        spec = serving_model(catalog, endpoint) if endpoint.endswith(FINETUNED) else None
        for name in sorted(spec.loras) if spec is not None else ():
            entry = out.setdefault(name, {"finetune_id": name, "finetune_type": "lora", "models": [], "endpoints": []})
            if spec.name not in entry["models"]:
                entry["models"].append(spec.name)
            entry["endpoints"].append(endpoint)
    return dict(sorted(out.items()))


@router.get("/v1/my_finetunes", responses=contract.responses(401, 403, 405, 429, 503, shape="bfl", ok={200: schemas.MyFinetunesResponse}))
def finetunes(request: Request, who: Principal = Depends(principal)):
    """The finetunes a request may name: the LoRAs of the catalog models serving a ``-finetuned`` endpoint."""
    return {"finetunes": list(visible_finetunes(request.app.state.runtime.catalog))}


@router.get("/v1/finetune_details", responses=contract.responses(401, 403, 405, 422, 429, 503, shape="bfl", ok={200: schemas.FinetuneDetailResponse}))
def finetune_details(request: Request, finetune_id: str, who: Principal = Depends(principal)):
    """One finetune: its type (``lora``), the models that have it and the endpoints that take it;
    an unknown ``finetune_id`` is BFL's 422 about that query field."""
    found = visible_finetunes(request.app.state.runtime.catalog).get(finetune_id)
    if found is None:
        return _unknown_finetune(("query", "finetune_id"), finetune_id, request.app.state.runtime.catalog, None)
    return {"finetune_details": found}


def _unknown_finetune(loc: tuple[str, ...], finetune_id: str, catalog, spec) -> JSONResponse:
    """BFL's answer to a finetune it does not have: 422 in FastAPI's shape, about ``finetune_id``."""
    known = sorted(spec.loras) if spec is not None else list(visible_finetunes(catalog))
    where = f" for model {spec.name}" if spec is not None else ""
    msg = f"Finetune not found: no finetune {finetune_id!r}{where} on this server (finetunes: {', '.join(known) or 'none'})"
    detail = [{"type": "value_error", "loc": list(loc), "msg": msg, "input": finetune_id}]
    return JSONResponse({"detail": detail, "message": validation_message(detail)}, status_code=422)


@dataclass
class _Built:
    """A BFL request checked and turned into a recipe, ready to price or to submit."""

    endpoint: str
    req: Any
    params: Any
    recipe: Any
    width: int
    height: int
    input_mp: float


async def _build(endpoint: str, request: Request, *, sized_by_model: bool = False, body: Any = None) -> _Built | JSONResponse:
    """Validate ``request``'s body for ``endpoint`` as BFL does and make its recipe;
    a JSONResponse (422 in BFL's shape) when the request cannot be served.

    ``sized_by_model``: explicit ``width``/``height`` are the serving model's to judge
    (the largest size of that shape it makes), not BFL's per-endpoint range (the
    synchronous mount, whose clients were written for other services' sizes).
    """
    rt = request.app.state.runtime
    if endpoint in ("finetune", "delete_finetune"):
        return _finetunes_not_written()
    if endpoint not in schemas.BFL_ENDPOINTS:
        other = [m for m in allowed_methods(request) if m != request.method]
        if other:  # a path another route answers with other methods (POST /v1/credits)
            err = PixelmillError(f"{request.method} is not allowed on {request.url.path}; allowed: {', '.join(other)}", code="method_not_allowed", status=405)
            err.headers["Allow"] = ", ".join(other)
            raise err
        raise NotFound(f"Unknown endpoint /v1/{endpoint}", code="unknown_endpoint")
    spec = serving_model(rt.catalog, endpoint)
    if spec is None:
        raise NotFound(
            f"No model is configured for /v1/{endpoint} on this server; configured endpoints: "
            + ", ".join(sorted(e for m in rt.catalog.models for e in m.bfl_endpoints)),
            code="endpoint_not_configured",
        )
    if body is None:
        body = await json_body(request)
    if not isinstance(body, dict):
        return _validation_error([{"type": "model_attributes_type", "loc": (), "msg": "Input should be a valid dictionary or object", "input": body}])
    limits = spec.size_limits()
    asked: tuple[int, int] | None = None
    if sized_by_model and "width" in schemas.BFL_ENDPOINTS[endpoint].model_fields:
        w, h = body.get("width"), body.get("height")
        if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 and not isinstance(w, bool) and not isinstance(h, bool):
            asked = (w, h)
            body = {k: v for k, v in body.items() if k not in ("width", "height")}
    try:
        req = schemas.validate_request(endpoint, body)
        # sizes asked of the synchronous mount are fitted below: the body's defaults are not the model's to judge
        params = schemas.to_generation_params(endpoint, req, limits=limits if asked is None else None)
        decoded = {f: schemas.decode_base64_image(v, f, rt.settings.max_body_bytes) for f, v in _image_fields(req) if not schemas.is_url(v)}
        pictures = await run_in_threadpool(_inspect_images, decoded, rt.settings.max_image_pixels)
    except ValidationError as e:
        return _validation_error(e)
    except (schemas.BflParamError, schemas.BadImageInput) as e:
        return _validation_error(e)
    finetune = getattr(req, "finetune_id", None)
    if finetune is not None and finetune not in spec.loras:
        return _unknown_finetune(("body", "finetune_id"), finetune, rt.catalog, spec)
    loras = ((finetune, float(req.finetune_strength)),) if finetune is not None else ()
    if asked is not None:
        m = limits.multiple
        params.width, params.height = limits.fit(max(m, asked[0] // m * m), max(m, asked[1] // m * m))
    refusal = await webhook_url_refusal(request, params.webhook_url)
    if refusal is not None:
        return _validation_error(
            [{"type": "value_error", "loc": ("webhook_url",), "msg": f"Value error, this webhook URL cannot be used: {refusal.message}", "input": params.webhook_url}]
        )
    if params.input_images and params.width is None and not spec.supports_image_input:
        raise PixelmillError(
            f"/v1/{endpoint} is served by {spec.name}, which does not take input images",
            code="image_input_not_supported",
            status=422,
        )
    takes_image = bool(params.input_images) and spec.supports_image_input
    first_field = next((f for f, v in _image_fields(req) if v == params.input_images[0]), None) if takes_image else None
    expand = endpoint == "flux-pro-1.0-expand"
    margins = {side: getattr(req, side, None) or 0 for side in ("top", "bottom", "left", "right")} if expand else {}
    if params.width is not None:
        width, height = params.width, params.height
    elif first_field in pictures:  # fill, expand, and Kontext without aspect_ratio: the input image's shape
        w, h = pictures[first_field].size
        if expand:
            w, h = w + margins["left"] + margins["right"], h + margins["top"] + margins["bottom"]
        width, height = limits.fit(*fit_size(w, h, multiple=max(32, limits.multiple), max_side=limits.max_side))
    else:
        width, height = limits.fit(1024, 1024)
    generation = dict(
        model=spec.name, prompt=params.prompt, width=width, height=height, steps=params.steps,
        guidance=params.guidance, seed=params.seed, output_format=params.output_format,
        safety_tolerance=params.safety_tolerance, loras=loras,
    )
    recipe: recipes.Generate
    if not takes_image:
        recipe = recipes.Generate(**generation)
    elif endpoint.startswith("flux-pro-1.0-fill"):  # inpainting: the mask, or else the image's transparency
        problem = _fill_problem(req, first_field, pictures)
        if problem is not None:
            return _validation_error(problem)
        mask = getattr(req, "mask", None)
        image = recipes.ImageRef(params.input_images[0])
        recipe = recipes.Inpaint(**generation, image=image, mask=recipes.ImageRef(mask) if mask else None, strength=recipes.FULL_REPAINT)
    elif expand:  # outpainting: the image with edge-stretched margins, repainted where the margins are
        recipe = recipes.Outpaint(**generation, image=recipes.ImageRef(params.input_images[0]), **margins)
    else:
        recipe = recipes.ImageToImage(  # FLUX.2 / Kontext: every further reference image goes along
            **generation, image=recipes.ImageRef(params.input_images[0]),
            references=tuple(recipes.ImageRef(v) for v in params.input_images[1:8]),
        )
    input_mp = sum(im.size[0] * im.size[1] for f, im in pictures.items() if f != "mask") / 1_000_000
    return _Built(endpoint, req, params, recipe, width, height, input_mp)


async def _submit(built: _Built, request: Request, who: Principal, queue_state: bool) -> ExecutionView | JSONResponse:
    """Submit; ``queue_state``: the answer shows the view's queue position (an answer in ``get_result``'s
    shape: the submit answer itself has none, its polls show one)."""
    rt = request.app.state.runtime
    try:
        return await run_in_threadpool(rt.executions.submit, Submission(
            principal=who,
            graph=built.recipe.graph(),
            dialect="bfl",
            label=built.endpoint,
            request=built.req.model_dump(mode="json", exclude={"webhook_secret"}),
            webhook_url=built.params.webhook_url,
            webhook_secret=built.params.webhook_secret,
        ), queue_state=queue_state)
    except GraphProblems as e:  # what the model cannot do, said about the request's own fields
        return _validation_error(_request_problems(e, built.req))


@router.post("/v1/pricing", openapi_extra=contract.json_request(PricingRequest), responses=contract.responses(400, 401, 403, 404, 405, 413, 422, 429, 501, 503, shape="bfl", ok={200: PricingResponse}))
async def pricing(request: Request, who: Principal = Depends(principal)):
    """A price quote before submitting: ``{"endpoint": "flux-pro-1.1", ...the endpoint's own fields}``
    (or the fields under ``"inputs"``) answers what that submit would hold, in credits."""
    rt = request.app.state.runtime
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("endpoint") or body.get("model"), str):
        return _validation_error([{"type": "missing", "loc": ("endpoint",), "msg": "Field required: the endpoint to price, e.g. \"flux-pro-1.1\"", "input": body}])
    endpoint = body.get("endpoint") or body.get("model")
    inputs = body.get("inputs") if isinstance(body.get("inputs"), dict) else {k: v for k, v in body.items() if k not in ("endpoint", "model")}
    built = await _build(endpoint, request, body=inputs)
    if isinstance(built, JSONResponse):
        return built
    try:
        prepared = await run_in_threadpool(rt.executions.prepare, built.recipe.graph())
    except GraphProblems as e:
        return _validation_error(_request_problems(e, built.req))
    credits = await run_in_threadpool(rt.admission.balance, rt.db, who)  # may grant this month's credits: off the loop
    return {
        "endpoint": endpoint,
        "cost": prepared.cost,
        "currency": "credits",
        "input_mp": round(built.input_mp, 4),
        "output_mp": round(built.width * built.height / 1_000_000, 4),
        "width": built.width,
        "height": built.height,
        "credits": credits,
    }


class DeleteFinetuneInputs(BaseModel):
    finetune_id: str = Field(description="The finetune to delete")


@router.post("/v1/finetune", responses=contract.responses(401, 403, 405, 429, 501, shape="bfl"))
@router.post(
    "/v1/delete_finetune",
    openapi_extra=contract.json_request(DeleteFinetuneInputs),
    responses=contract.responses(401, 403, 405, 422, 429, 501, shape="bfl"),
)
def finetune_writes(who: Principal = Depends(principal)):
    """BFL's finetune creation and deletion: finetunes are the operator's catalog LoRAs (501, in BFL's error shape)."""
    return _finetunes_not_written()


def _documented(endpoint: str):
    async def route(request: Request, who: Principal = Depends(principal)):
        return await submit(endpoint, request, who)

    route.__name__ = "submit_" + endpoint.replace("-", "_").replace(".", "_")
    return route


for _endpoint, _model in schemas.BFL_ENDPOINTS.items():  # one documented operation per endpoint, BFL's request model
    router.add_api_route(
        f"/v1/{_endpoint}",
        _documented(_endpoint),
        methods=["POST"],
        summary=f"Submit a /v1/{_endpoint} task",
        openapi_extra=contract.json_request(_model),
        responses=contract.responses(
            *SUBMIT_ERRORS, 501, shape="bfl", ok={200: [schemas.AsyncResponse, schemas.AsyncWebhookResponse, schemas.ResultResponse]}
        ),
    )


@router.post("/v1/{endpoint}", include_in_schema=False)  # unknown endpoints: 404; finetune creation: 501
async def submit(endpoint: str, request: Request, who: Principal = Depends(principal)):
    rt = request.app.state.runtime
    built = await _build(endpoint, request)
    if isinstance(built, JSONResponse):
        return built
    wait_s = requested_wait(request.headers.get("prefer"), rt.settings.max_wait_s)
    view = await _submit(built, request, who, queue_state=False)  # BFL's submit answer has none; a wait reads them if it times out
    if isinstance(view, JSONResponse):
        return view
    if wait_s is not None:  # Prefer: wait[=N]: hold until done or N s, answer like get_result
        return await wait.bfl_response(request, who.account_id, view, wait_s)
    return render_submit(request, view, built.width * built.height / 1_000_000, built.input_mp)


@router.post("/sync/v1/{endpoint}", openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "description": "The body of POST /v1/{endpoint}"}}}}}, responses=contract.responses(*SUBMIT_ERRORS, 500, 501, 504, shape="bfl", ok={200: SyncResult}))
async def submit_sync(endpoint: str, request: Request, who: Principal = Depends(principal)):
    """The synchronous mount: the same endpoints, answered once the image is made.

    200 with the ``get_result`` body plus ``images: [{"url", "width", "height"}]``;
    a failure answers its HTTP status with ``error: {code, message}``, a top-level
    ``message`` and BFL's ``detail``; past ``sync_timeout_s`` 504 with the task's
    ``id`` and ``polling_url``.  Sizes the model cannot make are made at the
    largest size of that shape it can (the answer says which).
    """
    rt = request.app.state.runtime
    built = await _build(endpoint, request, sized_by_model=True)
    if isinstance(built, JSONResponse):
        return _with_error(built)
    view = await _submit(built, request, who, queue_state=False)  # a timeout answers in get_result's shape, read again then
    if isinstance(view, JSONResponse):
        return _with_error(view)
    (view,) = await wait.wait_terminal(rt, who.account_id, [view], rt.settings.sync_timeout_s)
    base = (rt.settings.public_base_url or str(request.base_url)).rstrip("/")
    body = _render_result(view, lambda f: signed_url(request, f))
    body["polling_url"] = f"{base}/v1/get_result?id={view.id}"
    if body["status"] == "Ready":
        body["images"] = [{"url": body["result"]["sample"], "width": built.width, "height": built.height}]
        body["width"], body["height"] = built.width, built.height
        return body
    if body["status"] == "Pending":
        message = f"The image is not ready after {rt.settings.sync_timeout_s:g} s; poll polling_url for it"
        code, status = "sync_timeout", 504
    else:
        details = body.get("details") or {}
        message = details.get("message") or f"The task ended with status {body['status']}"
        code, status = details.get("code") or "generation_failed", 500 if body["status"] == "Error" else 400
    return JSONResponse({**body, "detail": message, "message": message, "error": {"code": code, "message": message}}, status_code=status)


def _with_error(response: JSONResponse) -> JSONResponse:
    """Add ``error: {code, message}`` to a 422 body (clients of the synchronous mount read ``error.message``)."""
    import json

    body = json.loads(response.body)
    if isinstance(body, dict) and "error" not in body:
        body["error"] = {"code": "invalid_request" if response.status_code == 422 else "error", "message": body.get("message") or str(body.get("detail"))}
    return JSONResponse(body, status_code=response.status_code, headers={k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")})


def _request_problems(e: GraphProblems, req) -> list[dict[str, Any]]:
    """Graph problems as BFL 422 items: ``loc`` is the request field they are about
    (``["body", "width"]``), or the body; no internal node names."""
    fields = type(req).model_fields
    out = []
    for problem in recipes.problem_params(e):
        field = problem.path[-1] if problem.about_params and problem.path and problem.path[-1] in fields else None
        out.append({"type": "value_error", "loc": (field,) if field else (), "msg": problem.message, "input": getattr(req, field, None) if field else None})
    return out


def _inspect_images(decoded: dict[str, bytes], max_pixels: int) -> dict[str, ImageInfo]:
    """Check each base64 image field from its header (format, size, transparency), so an unreadable
    or oversized picture is a 422 now; its pixels are decoded once, by the node that loads it."""
    out = {}
    for field, raw in decoded.items():
        try:
            out[field] = probe_image(raw, max_pixels=max_pixels)
        except ImageDecodeError as e:
            raise schemas.BadImageInput(field, str(e)) from None
    return out


def _fill_problem(req, image_field: str | None, pictures: dict) -> schemas.BadImageInput | None:
    """Why a fill request cannot be inpainted (a mask of another size, or no mask and no transparency), or None."""
    mask = getattr(req, "mask", None)
    image = pictures.get(image_field or "")
    if mask:
        if image is not None and "mask" in pictures and pictures["mask"].size != image.size:
            m, i = pictures["mask"].size, image.size
            return schemas.BadImageInput("mask", f"the mask is {m[0]}x{m[1]} but the image is {i[0]}x{i[1]}; they must match")
    elif image is not None and not image.alpha:
        return schemas.BadImageInput("mask", "give a mask, or an image whose transparent pixels mark the area to fill")
    return None


def _image_fields(req) -> list[tuple[str, str]]:
    names = ["image_prompt", "image", "mask", "input_image"] + [f"input_image_{i}" for i in range(2, 9)]
    return [(n, getattr(req, n)) for n in names if isinstance(getattr(req, n, None), str) and getattr(req, n)]


def render_submit(request: Request, view: ExecutionView, output_mp: float, input_mp: float = 0.0) -> dict[str, Any]:
    base = (request.app.state.runtime.settings.public_base_url or str(request.base_url)).rstrip("/")
    body = {
        "id": view.id,
        "polling_url": f"{base}/v1/get_result?id={view.id}",
        "cost": view.cost_estimate,
        "input_mp": round(input_mp, 4),
        "output_mp": round(output_mp, 4),
    }
    if view.webhook_url:
        body = {"id": view.id, "status": "Pending", "webhook_url": view.webhook_url, **{k: body[k] for k in ("cost", "input_mp", "output_mp")}, "polling_url": body["polling_url"]}
    return body
