"""Wire shapes of the workflow, webhook, Apiframe and OpenAI routes as Pydantic models.

They document what the presenters render (``/openapi.json``); the fuzzing test
checks real responses against them.  Objects allow extra fields, so adding a field
to a response is never a breaking change for the document.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Problem(_Open):
    code: str | None = None
    message: str | None = None


# --- workflow API -------------------------------------------------------------------------


class NodeOutput(_Open):
    url: str
    contentType: str | None = None
    width: int | None = None
    height: int | None = None


class NodeRun(_Open):
    nodeId: str
    type: str
    status: Literal["WAITING", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "SKIPPED"]
    progress: float | None = None
    queuedAt: float | None = None
    startedAt: float | None = None
    finishedAt: float | None = None
    durationMs: int | None = None
    credits: float | None = None
    estimatedCredits: float | None = None
    cached: bool | None = None
    seed: int | None = None
    outputs: list[NodeOutput] = Field(default_factory=list)
    error: Problem | None = None


class Credits(_Open):
    estimated: float | None = None
    charged: float | None = None


class GraphNode(_Open):
    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, list[str]] | None = Field(default=None, description="input name -> [node id, output name]")


class ExecutionGraph(_Open):
    """The graph an execution ran (``?include=graph``): ``POST /api/v1/executions`` with it runs it again."""

    nodes: dict[str, GraphNode]


class Execution(_Open):
    """An execution with its node runs."""

    id: str
    executionId: str
    workflowId: str | None = None
    batchId: str | None = None
    status: Status
    progress: float | None = None
    queuePosition: int | None = None
    estimatedStartAt: float | None = None
    createdAt: float | None = None
    startedAt: float | None = None
    finishedAt: float | None = None
    durationMs: int | None = None
    credits: Credits | None = None
    error: Problem | None = None
    outputs: list[str] = Field(default_factory=list)
    nodeRuns: list[NodeRun] = Field(default_factory=list)
    inputs: dict[str, Any] | None = None
    streamUrl: str | None = None
    graph: ExecutionGraph | None = Field(default=None, description="With ?include=graph: the graph it ran")


class ExecutionPage(_Open):
    data: list[Execution]
    hasMore: bool
    nextCursor: float | None = None


class Execute(_Open):
    """201 of execute: the first execution's id, and every run of the batch."""

    executionId: str | None = None
    workflowId: str | None = None
    batchId: str | None = None
    status: Status | None = None
    pollUrl: str | None = None
    streamUrl: str | None = None
    executionRuns: list[Execution] | None = None
    dryRun: bool | None = None
    estimatedCredits: float | None = None
    runs: list[dict[str, Any]] | None = None


class ExecuteRequest(_Open):
    """Body of execute: ``inputs`` (one run) or ``batch`` (1-100 runs)."""

    inputs: dict[str, Any] | None = None
    batch: list[dict[str, Any]] | None = Field(default=None, min_length=1, max_length=100)
    webhook_url: str | None = Field(default=None, max_length=2083)
    webhook_events: list[str] | None = None
    dry_run: bool | None = None


class Batch(_Open):
    batchId: str
    status: Status
    executionRuns: list[Execution]


class Workflow(_Open):
    id: str
    name: str
    description: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    nodes: dict[str, Any]
    webhook_url: str | None = None
    version: int
    createdAt: float | None = None
    updatedAt: float | None = None


class WorkflowPage(_Open):
    data: list[Workflow]
    total: int
    limit: int
    offset: int


class Validation(_Open):
    valid: bool
    estimatedCredits: float
    breakdown: list[dict[str, Any]] | dict[str, Any] | None = None


class DataList(_Open):
    data: list[dict[str, Any]]


# --- webhooks and triggers --------------------------------------------------------------------


class DeliveryAttempt(_Open):
    attemptedAt: float | None = None
    statusCode: int | None = None
    latencyMs: int | float | None = None
    error: str | None = None


class WebhookEvent(_Open):
    id: str
    executionId: str | None = None
    type: str
    url: str | None = None
    state: str
    attempts: int
    nextAttemptAt: float | None = None
    createdAt: float | None = None
    deliveredAt: float | None = None
    deliveries: list[DeliveryAttempt] = Field(default_factory=list)


class WebhookEventPage(_Open):
    data: list[WebhookEvent]


class WebhookConfig(_Open):
    url: str | None = Field(description="The URL that receives every execution event of the account; null clears it")


class WebhookSecret(_Open):
    key: str
    previousKeyActive: bool | None = None


class Trigger(_Open):
    triggerId: str
    workflowId: str
    triggerUrl: str
    token: str
    createdAt: float | None = None


class TriggerStatus(_Open):
    workflowId: str
    published: bool
    triggerId: str | None = None
    createdAt: float | None = None


class Started(_Open):
    executionId: str
    status: Status
    pollUrl: str


# --- Apiframe-style /v2 ------------------------------------------------------------------------


class JobSubmitted(_Open):
    jobId: str
    status: str


class Job(_Open):
    jobId: str
    status: str
    model: str | None = None
    progress: float | None = None
    queuePosition: int | None = None
    result: dict[str, Any] | None = None
    error: Problem | None = None
    createdAt: str | None = None
    startedAt: str | None = None
    completedAt: str | None = None
    cost: float | None = None


# --- OpenAI --------------------------------------------------------------------------------


class ImageData(_Open):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(_Open):
    created: int
    data: list[ImageData]
    background: str | None = None
    output_format: str | None = None
    size: str | None = None
    quality: str | None = None
    usage: dict[str, Any] | None = None


class ModelEntry(_Open):
    id: str
    object: Literal["model"] = "model"
    created: int | None = None
    owned_by: str | None = None


class ModelState(_Open):
    """One model's residency after a load or unload."""

    name: str
    state: Literal["cold", "loading", "resident"]
    workers: list[dict[str, Any]] = Field(default_factory=list)
    memory_bytes: int | None = None
    load_seconds: float | None = None


class ModelList(_Open):
    object: Literal["list"] = "list"
    data: list[ModelEntry]


class ImageEditForm(BaseModel):
    """The multipart fields of an edit (or a variation, without ``prompt``/``mask``)."""

    image: bytes = Field(json_schema_extra={"format": "binary"})
    mask: bytes | None = Field(default=None, json_schema_extra={"format": "binary"})
    prompt: str | None = Field(default=None, max_length=32000)
    model: str | None = None
    n: int | None = Field(default=None, ge=1, le=10)
    size: str | None = None
    response_format: Literal["url", "b64_json"] | None = None


class ImageUrl(BaseModel):
    image_url: str


class ImageEditJson(BaseModel):
    """An edit as JSON: images and mask by URL (http(s) or data URL)."""

    prompt: str = Field(max_length=32000)
    images: list[ImageUrl] = Field(min_length=1)
    mask: ImageUrl | None = None
    model: str | None = None
    n: int | None = Field(default=None, ge=1, le=10)
    size: str | None = None
    response_format: Literal["url", "b64_json"] | None = None


class Account(_Open):
    """The calling key's account: plan, credits and usage."""

    id: str
    name: str | None = None
    plan: str | None = None
    planLimits: dict[str, Any] | None = None
    credits: float
    executions: dict[str, Any] | None = None
    creditsSpent: float | None = None
    creditsHeld: float | None = None
    ledger: list[dict[str, Any]] = Field(default_factory=list)
    usageByDay: list[dict[str, Any]] | dict[str, Any] | None = None


class ApiKey(_Open):
    """One of the account's keys, as its keys see it: never the secret."""

    id: str
    prefix: str
    name: str | None = None
    createdAt: float
    lastUsedAt: float | None = Field(default=None, description="When it was last used (to the minute)")
    current: bool = Field(default=False, description="True for the key that made this request")


class ApiKeyList(_Open):
    data: list[ApiKey]


class ApiKeyCreate(BaseModel):
    """Body of creating a key (optional)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)


class CreatedApiKey(ApiKey):
    """A new key: ``key`` is its secret, in this answer only."""

    key: str


class RevokedApiKey(_Open):
    id: str
    revoked: bool


class GraphRequest(_Open):
    """A graph to run as it is (the workflow graph format, no ``$input`` references)."""

    nodes: dict[str, Any]
    label: str | None = None
    dry_run: bool | None = None


class Balance(_Open):
    credits: float
