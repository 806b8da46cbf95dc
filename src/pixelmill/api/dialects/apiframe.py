"""The Apiframe-style unified API: ``POST /v2/images/generate``, ``GET /v2/jobs/{id}``, ``POST /v2/jobs/{id}/cancel``.

One endpoint for every catalog model: the body names the ``model`` and carries
its options in a ``<family>Params`` object (``fluxParams``, ``sdParams`` ...) or
in a generic ``params`` object; the keys are the same whichever name is used.
A submission answers 202 ``{jobId, status: "QUEUED"}`` with a ``Location``
header; the job is polled (or delivered to ``webhook_url``) in the shape of
:mod:`pixelmill.presenters.apiframe`.  Errors use the service's common body
``{"detail", "message", "error": {"code", "message", ...}}``; validation errors are
422, list every problem at once in ``error.problems`` (``{param, message}``) and
name the first offending field in ``error.param``.  ``model`` is a catalog model
name, an alias (``flux-1.1-pro`` ...) or a BFL endpoint name.  ``Prefer: wait[=N]``
holds the request until the job is finished (or N seconds) and answers with the
job as ``GET /v2/jobs/{id}`` shows it (200 when finished, 202 otherwise).

``image_prompt`` (an http(s) URL, data URL or base64 image) makes the job
image-to-image on models that take input images; ``image_prompt_strength``
(0-1, default 0.5) is how closely the result follows it.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pixelmill import recipes
from pixelmill.accounts.keys import Principal
from pixelmill.api import contract, wire
from pixelmill.api.deps import json_body, principal, webhook_url_refusal
from pixelmill.api.files import signed_url
from pixelmill.api.wait import applied_header, requested_wait, wait_terminal
from pixelmill.engine.graph import GraphProblems
from pixelmill.engine.service import Submission
from pixelmill.errors import InvalidInput, NotFound
from pixelmill.models.imageops import BadImageInput, decode_base64_image, is_url
from pixelmill.presenters.apiframe import render_job, render_submitted

router = APIRouter(prefix="/v2", tags=["Apiframe"])

# width x height for each aspect ratio, about one megapixel, sides multiples of 16
ASPECT_RATIOS = {
    "1:1": (1024, 1024),
    "4:3": (1152, 864),
    "3:4": (864, 1152),
    "3:2": (1248, 832),
    "2:3": (832, 1248),
    "16:9": (1360, 768),
    "9:16": (768, 1360),
    "21:9": (1568, 672),
    "9:21": (672, 1568),
}


class ModelParams(BaseModel):
    """Model options, the same under ``fluxParams``, ``sdParams`` or ``params``."""

    model_config = ConfigDict(extra="forbid")

    #: the model decides which sizes it makes (catalog / weights folder); these are outer bounds
    width: int | None = Field(default=None, ge=16, le=8192, multiple_of=16)
    height: int | None = Field(default=None, ge=16, le=8192, multiple_of=16)
    aspect_ratio: Literal[tuple(ASPECT_RATIOS)] | None = None  # type: ignore[valid-type]
    steps: int | None = Field(default=None, ge=1, le=100)
    guidance: float | None = Field(default=None, ge=0.0, le=100.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    negative_prompt: str | None = Field(default=None, max_length=4000)
    output_format: Literal["jpg", "jpeg", "png", "webp"] = "jpg"
    output_quality: int | None = Field(default=None, ge=0, le=100)  # accepted; encoders use their own quality
    raw: bool = False  # accepted; prompts are never rewritten here
    #: a reference image (http(s) URL, data URL or base64) for models that take input images
    image_prompt: str | None = Field(default=None, max_length=30_000_000)
    #: how closely to follow the reference image, 0-1 (default 0.5)
    image_prompt_strength: float | None = Field(default=None, ge=0.0, le=1.0)

    @field_validator("image_prompt")
    @classmethod
    def _image_reference(cls, v: str | None) -> str | None:
        if v is None or is_url(v):
            return v
        try:
            decode_base64_image(v, "image_prompt", 30_000_000)
        except BadImageInput as e:
            raise ValueError(f"expected an http(s) URL, a data URL or base64 image data: {e.reason}") from None
        return v

    @model_validator(mode="after")
    def _size_or_ratio(self) -> "ModelParams":
        if self.image_prompt_strength is not None and self.image_prompt is None:
            raise ValueError("image_prompt_strength needs an image_prompt")
        if self.aspect_ratio and (self.width or self.height):
            raise ValueError("give either aspect_ratio or width/height, not both")
        if (self.width is None) != (self.height is None):
            raise ValueError("give both width and height")
        return self

    def size(self) -> tuple[int, int]:
        if self.width and self.height:
            return self.width, self.height
        return ASPECT_RATIOS[self.aspect_ratio or "1:1"]


class GenerateRequest(BaseModel):
    """The body of ``POST /v2/images/generate``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4000)
    model: str = Field(min_length=1)
    params: ModelParams = Field(default_factory=ModelParams)
    num_images: int = Field(default=1, ge=1, le=10)
    webhook_url: str | None = Field(default=None, max_length=2083)
    webhook_secret: str | None = Field(default=None, max_length=512)

    @model_validator(mode="before")
    @classmethod
    def _gather(cls, data: Any) -> Any:
        """Fold ``<family>Params`` into ``params`` and ``n`` into ``num_images``."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        found = [k for k in data if k == "params" or (k.endswith("Params") and len(k) > 6)]
        if len(found) > 1:
            raise ValueError(f"send model options in one object, not in {', '.join(found)}")
        if found and found[0] != "params":
            data["params"] = data.pop(found[0])
        if "n" in data:
            if "num_images" in data:
                raise ValueError("give either n or num_images, not both")
            data["num_images"] = data.pop("n")
        return data

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt must not be empty")
        return v

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.lower().startswith(("http://", "https://")):
            raise ValueError("webhook_url must be an http:// or https:// URL")
        return v


def _invalid(message: str, param: str | None, code: str = "invalid_request", **details: Any) -> InvalidInput:
    return InvalidInput(message, code=code, param=param, **details)


def _problem(err: dict[str, Any]) -> dict[str, Any]:
    """A pydantic error as ``{"param", "message"}`` (``param`` dotted: ``params.width``)."""
    param = ".".join(str(p) for p in err["loc"]) or None
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "this field is required"
    elif err["type"] == "extra_forbidden":
        msg = "unknown field"
    return {"param": param, "message": msg}


def _all_problems(problems: list[dict[str, Any]], code: str = "invalid_request", **details: Any) -> InvalidInput:
    """One 422 listing every problem: ``message`` names each (``params.width: ...; model: ...``),
    ``param`` is the first one's, ``problems`` holds them all."""
    message = "; ".join(f"{p['param']}: {p['message']}" if p["param"] else p["message"] for p in problems)
    return _invalid(message, problems[0]["param"], code=code, problems=problems, **details)


def _from_validation_error(e: ValidationError) -> InvalidInput:
    return _all_problems([_problem(err) for err in e.errors()])


def _unknown_model(rt, name: Any) -> dict[str, Any] | None:
    if not isinstance(name, str) or not name or rt.catalog.resolve(name) is not None:
        return None
    aliases = sorted(rt.catalog.aliases())
    return {
        "param": "model",
        "message": f"Unknown model {name!r}; models on this server: {', '.join(rt.catalog.names())}"
        + (f" (also known as: {', '.join(aliases)})" if aliases else ""),
    }


@router.post("/images/generate", status_code=202, openapi_extra=contract.json_request(GenerateRequest), responses=contract.responses(*contract.SUBMIT, ok={200: wire.Job, 202: wire.JobSubmitted}))
async def generate(request: Request, who: Principal = Depends(principal)):
    rt = request.app.state.runtime
    body = await json_body(request)
    if not isinstance(body, dict):
        raise _invalid("The body must be a JSON object", None)
    try:
        req = GenerateRequest.model_validate(body)
    except ValidationError as e:  # every problem at once, the model name among them
        problems = [_problem(err) for err in e.errors()]
        unknown = _unknown_model(rt, body.get("model"))
        if unknown is not None and not any(p["param"] == "model" for p in problems):
            problems.append(unknown)
        raise _all_problems(problems) from None
    problems = []
    unknown = _unknown_model(rt, req.model)
    spec = rt.catalog.resolve(req.model)
    if unknown is not None:
        problems.append(unknown)
    width, height = req.params.size()
    output_format = "jpeg" if req.params.output_format == "jpg" else req.params.output_format
    reference = req.params.image_prompt
    if spec is not None:
        if req.params.width is None:  # an aspect ratio: the largest of that shape the model makes, up to about 1 MP
            width, height = spec.size_limits().fit(width, height)
        for field, msg in spec.size_limits().problems(width, height):
            problems.append({"param": f"params.{field}" if field else "params", "message": msg})
        if req.params.steps is not None and req.params.steps > spec.max_steps:
            problems.append({"param": "params.steps", "message": f"steps must be at most {spec.max_steps} for {spec.name}"})
        if reference is not None and not spec.supports_image_input:
            takes = [n for n in rt.catalog.names() if rt.catalog.get(n).supports_image_input]
            problems.append({
                "param": "params.image_prompt",
                "message": f"model {req.model!r} does not take reference images" + (f"; models that do: {', '.join(takes)}" if takes else ""),
            })
    refusal = await webhook_url_refusal(request, req.webhook_url)
    if refusal is not None:
        problems.append({"param": "webhook_url", "message": f"this webhook URL cannot be used: {refusal.message}"})
    if problems:
        code = "unknown_model" if unknown is not None and len(problems) == 1 else "image_input_not_supported" if problems[0]["param"] == "params.image_prompt" and len(problems) == 1 else "invalid_request"
        if refusal is not None and len(problems) == 1:
            code = "invalid_webhook_url"
        extra = {"models": rt.catalog.names()} if unknown is not None else {}
        raise _all_problems(problems, code=code, **extra)
    generation = dict(
        model=spec.name, prompt=req.prompt, negative_prompt=req.params.negative_prompt, width=width, height=height,
        steps=req.params.steps, guidance=req.params.guidance, seed=req.params.seed, num_images=req.num_images,
        output_format=output_format,
    )
    recipe: recipes.Generate = recipes.Generate(**generation)
    if reference is not None:  # image-to-image: the closer to follow the reference, the less it is noised
        strength = recipes.strength_from_follow(req.params.image_prompt_strength)
        recipe = recipes.ImageToImage(**generation, image=recipes.ImageRef(reference), strength=strength)
    submission = Submission(
        principal=who,
        graph=recipe.graph(),
        dialect="apiframe",
        label=req.model,
        request=req.model_dump(mode="json", exclude={"webhook_secret": True, "params": {"image_prompt"}}, exclude_none=True),
        webhook_url=req.webhook_url,
        webhook_secret=req.webhook_secret,
    )
    try:
        view = await run_in_threadpool(rt.executions.submit, submission)
    except GraphProblems as e:
        found = [
            {"param": "params." + ".".join(p.path) if p.path else None, "message": p.message}
            for p in recipes.problem_params(e, ModelParams.model_fields)
        ]
        raise _all_problems(found) from None
    wait_s = requested_wait(request.headers.get("prefer"), rt.settings.max_wait_s)
    if wait_s is not None:  # Prefer: wait[=N]: hold until done or N s, answer with the job as polling would
        (view,) = await wait_terminal(rt, who.account_id, [view], wait_s)
        status = 200 if view.status.is_terminal() else 202
        return JSONResponse(render_job(view, lambda f: signed_url(request, f)), status_code=status,
                            headers={"Location": f"/v2/jobs/{view.id}", **applied_header(wait_s)})
    return JSONResponse(render_submitted(view), status_code=202, headers={"Location": f"/v2/jobs/{view.id}"})


@router.get("/jobs/{job_id}", responses=contract.responses(*contract.COMMON, ok={200: wire.Job}))
def get_job(job_id: str, request: Request, who: Principal = Depends(principal)):
    return _job(request, request.app.state.runtime.executions.get, who, job_id)


@router.post("/jobs/{job_id}/cancel", responses=contract.responses(*contract.COMMON, ok={200: wire.Job}))
def cancel_job(job_id: str, request: Request, who: Principal = Depends(principal)):
    """Cancel a queued or running job; a finished job is returned unchanged."""
    return _job(request, request.app.state.runtime.executions.cancel, who, job_id)


def _job(request: Request, action, who: Principal, job_id: str) -> dict:
    """``action(account, job_id)`` rendered as a job; an unknown job is 404 ``job_not_found``."""
    try:
        view = action(who.account_id, job_id)
    except NotFound:
        raise NotFound(f"Job {job_id} not found", code="job_not_found") from None
    return render_job(view, lambda f: signed_url(request, f))
