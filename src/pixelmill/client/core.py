"""The client's requests, answers and retries; the transport (sync or async) is the only difference."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator
from urllib.parse import quote

import httpx

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
TERMINAL_EVENTS = frozenset({"execution.succeeded", "execution.failed", "execution.cancelled"})


class PixelmillError(Exception):
    """An error answer: ``status`` (HTTP), ``code`` (stable), ``message`` and the whole ``body``."""

    def __init__(self, status: int, code: str, message: str, body: Any = None, retry_after: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.body, self.retry_after = status, code, message, body, retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> "PixelmillError":
        try:
            body = response.json()
        except ValueError:
            body = response.text
        code, message = f"http_{response.status_code}", response.reason_phrase
        if isinstance(body, dict):
            err = body.get("error")
            if isinstance(err, dict):
                code, message = err.get("code") or code, err.get("message") or message
            elif isinstance(body.get("detail"), str):
                message = body["detail"]
            if isinstance(body.get("message"), str):
                message = body["message"]
            code = body.get("code") if isinstance(body.get("code"), str) else code
        return cls(response.status_code, code, message, body, _retry_after(response))


@dataclass(frozen=True)
class Event:
    """One message of an execution's event stream: ``type`` (``node.started``, ``execution.progress``,
    ``snapshot``, ``execution.succeeded`` …), its ``data`` and its resumable ``id`` (None for snapshots)."""

    type: str
    data: dict[str, Any]
    id: int | None = None

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


@dataclass(frozen=True)
class Execution:
    """An execution as ``GET /api/v1/executions/{id}`` shows it."""

    id: str
    status: str  # QUEUED | RUNNING | COMPLETED | FAILED | CANCELLED
    progress: float | None
    outputs: list[str]
    node_runs: list[dict[str, Any]]
    credits: dict[str, Any]
    error: dict[str, Any] | None
    queue_position: int | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def parse(cls, body: dict[str, Any]) -> "Execution":
        return cls(
            id=body.get("executionId") or body.get("jobId") or body["id"],
            status=body.get("status", "QUEUED"),
            progress=body.get("progress"),
            outputs=list(body.get("outputs") or []),
            node_runs=list(body.get("nodeRuns") or []),
            credits=dict(body.get("credits") or {}),
            error=body.get("error"),
            queue_position=body.get("queuePosition"),
            raw=body,
        )


@dataclass(frozen=True)
class Workflow:
    id: str
    name: str
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, body: dict[str, Any]) -> "Workflow":
        return cls(id=body["id"], name=body.get("name", ""), raw=body)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _backoff(attempt: int, retry_after: float | None, cap: float) -> float:
    if retry_after is not None:
        return min(retry_after, cap)
    return min(cap, 0.25 * 2**attempt) * (0.5 + random.random() / 2)


class _SseParser:
    """Server-Sent Events, a line at a time: ``feed`` answers an :class:`Event` when one is complete."""

    def __init__(self) -> None:
        self.event, self.data, self.id = "message", [], None

    def feed(self, line: str) -> Event | None:
        if line == "":
            out = Event(self.event, json.loads("\n".join(self.data)), self.id) if self.data else None
            self.event, self.data, self.id = "message", [], None
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id":
            self.id = int(value) if value.isdigit() else None
        return None


class _Base:
    def __init__(self, base_url: str | None, api_key: str | None, max_retries: int, max_backoff_s: float):
        self.base_url = (base_url or os.environ.get("PIXELMILL_BASE_URL") or "http://127.0.0.1:8000").rstrip("/")
        self.api_key = api_key or os.environ.get("PIXELMILL_API_KEY")
        self.max_retries = max_retries
        self.max_backoff_s = max_backoff_s

    def _headers(self, method: str, idempotency_key: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "pixelmill-client"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        return headers

    @staticmethod
    def _generate_body(prompt: str, model: str, width, height, steps, seed, n, output_format, guidance, negative_prompt, safety_tolerance, webhook_url):
        params = {
            k: v
            for k, v in dict(
                width=width, height=height, steps=steps, seed=seed, output_format=output_format,
                guidance=guidance, negative_prompt=negative_prompt,
            ).items()
            if v is not None
        }
        body: dict[str, Any] = {"prompt": prompt, "model": model, "num_images": n, "params": params}
        if webhook_url:
            body["webhook_url"] = webhook_url
        if safety_tolerance is not None:
            body["params"]["safety_tolerance"] = safety_tolerance
        return body

    @staticmethod
    def _first_model(body: dict[str, Any]) -> str:
        models = body.get("data") or body.get("models") or []
        if not models:
            raise PixelmillError(0, "no_models", "the server lists no models")
        first = models[0]
        return first.get("id") or first.get("name") if isinstance(first, dict) else str(first)


class Client(_Base):
    """The synchronous client (see the package docstring)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_backoff_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        super().__init__(base_url, api_key, max_retries, max_backoff_s)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------

    def request(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
                idempotency_key: str | None = None, headers: dict[str, str] | None = None) -> Any:
        """One API call with retries; the decoded JSON answer (None for an empty one)."""
        sent = {**self._headers(method, idempotency_key), **(headers or {})}
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http.request(method, path, json=json_body, params=params, headers=sent)
            except httpx.TransportError:
                if attempt >= self.max_retries:
                    raise
                time.sleep(_backoff(attempt, None, self.max_backoff_s))
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                time.sleep(_backoff(attempt, _retry_after(response), self.max_backoff_s))
                continue
            if response.status_code >= 400:
                raise PixelmillError.from_response(response)
            return response.json() if response.content else None
        raise AssertionError("unreachable")

    # -- executions --------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        body = self.request("GET", "/api/v1/models")
        return list(body.get("data") or body.get("models") or []) if isinstance(body, dict) else list(body)

    def generate(self, prompt: str, *, model: str | None = None, width: int | None = None, height: int | None = None,
                 steps: int | None = None, seed: int | None = None, n: int = 1, output_format: str | None = None,
                 guidance: float | None = None, negative_prompt: str | None = None, safety_tolerance: int | None = None,
                 webhook_url: str | None = None, wait: bool = False, timeout: float | None = None) -> Execution:
        """Submit a text-to-image job (``/v2/images/generate``); with ``wait`` until it finished."""
        model = model or self._first_model(self.request("GET", "/v1/models"))
        body = self._generate_body(prompt, model, width, height, steps, seed, n, output_format, guidance, negative_prompt, safety_tolerance, webhook_url)
        job = self.request("POST", "/v2/images/generate", json_body=body)
        return self.wait(job["jobId"], timeout=timeout) if wait else self.get(job["jobId"])

    def get(self, execution_id: str) -> Execution:
        return Execution.parse(self.request("GET", f"/api/v1/executions/{execution_id}"))

    def cancel(self, execution_id: str) -> Execution:
        self.request("POST", f"/api/v1/executions/{execution_id}/cancel")
        return self.get(execution_id)

    def events(self, execution_id: str, last_event_id: int | None = None) -> Iterator[Event]:
        """The execution's events, live, until its terminal event (resumable from ``last_event_id``)."""
        headers = self._headers("GET", None)
        headers["Accept"] = "text/event-stream"
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        with self._http.stream("GET", f"/api/v1/executions/{execution_id}/events", headers=headers, timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                raise PixelmillError.from_response(response)
            parser = _SseParser()
            for line in response.iter_lines():
                event = parser.feed(line)
                if event is not None:
                    yield event
                    if event.terminal:
                        return

    def wait(self, execution_id: str, timeout: float | None = None) -> Execution:
        """Block until the execution finished (by its event stream; polling if the stream breaks)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for event in self.events(execution_id):
                if event.terminal or (deadline and time.monotonic() > deadline):
                    break
        except httpx.TransportError:
            pass
        while True:
            execution = self.get(execution_id)
            if execution.done or (deadline and time.monotonic() > deadline):
                return execution
            time.sleep(0.2)

    # -- workflows ---------------------------------------------------------------------------

    def create_workflow(self, spec: dict[str, Any]) -> Workflow:
        return Workflow.parse(self.request("POST", "/api/v1/workflows", json_body=spec))

    def get_workflow(self, workflow_id: str) -> Workflow:
        return Workflow.parse(self.request("GET", f"/api/v1/workflows/{workflow_id}"))

    def list_workflows(self) -> list[Workflow]:
        body = self.request("GET", "/api/v1/workflows")
        return [Workflow.parse(w) for w in body.get("data", [])]

    def update_workflow(self, workflow_id: str, spec: dict[str, Any]) -> Workflow:
        return Workflow.parse(self.request("PUT", f"/api/v1/workflows/{workflow_id}", json_body=spec))

    def delete_workflow(self, workflow_id: str) -> None:
        self.request("DELETE", f"/api/v1/workflows/{workflow_id}")

    def execute(self, workflow_id: str, inputs: dict[str, Any] | None = None, *, wait: bool = False,
                timeout: float | None = None, webhook_url: str | None = None) -> Execution:
        body: dict[str, Any] = {"inputs": inputs or {}}
        if webhook_url:
            body["webhook_url"] = webhook_url
        started = self.request("POST", f"/api/v1/workflows/{workflow_id}/execute", json_body=body)
        eid = started["executionId"]
        return self.wait(eid, timeout=timeout) if wait else self.get(eid)

    def execute_batch(self, workflow_id: str, batch: list[dict[str, Any]]) -> list[Execution]:
        started = self.request("POST", f"/api/v1/workflows/{workflow_id}/execute", json_body={"batch": batch})
        runs = started.get("executions") or started.get("data") or []
        return [self.get(r["executionId"]) for r in runs]

    # -- files and account -------------------------------------------------------------------

    def download(self, url: str, path: str | Path | None = None) -> bytes:
        """A result file's bytes (signed URLs need no key); written to ``path`` when given."""
        response = self._http.get(url)
        if response.status_code >= 400:
            raise PixelmillError.from_response(response)
        if path is not None:
            Path(path).write_bytes(response.content)
        return response.content

    def credits(self) -> float:
        return float(self.request("GET", "/v1/credits")["credits"])

    # -- administration (the client's key is the server's admin key) -------------------------

    def load_model(self, name: str) -> dict[str, Any]:
        """Load a model now: its state once resident (embedded), or ``loading`` while the workers load it (scale-out)."""
        return self.request("POST", f"/api/v1/models/{quote(name, safe='')}/load")

    def unload_model(self, name: str) -> dict[str, Any]:
        """Free an idle model's memory (409 ``model_in_use`` while it runs)."""
        return self.request("POST", f"/api/v1/models/{quote(name, safe='')}/unload")


class AsyncClient(_Base):
    """The asynchronous client: the same methods as coroutines."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_backoff_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        super().__init__(base_url, api_key, max_retries, max_backoff_s)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def request(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
                      idempotency_key: str | None = None, headers: dict[str, str] | None = None) -> Any:
        sent = {**self._headers(method, idempotency_key), **(headers or {})}
        for attempt in range(self.max_retries + 1):
            try:
                response = await self._http.request(method, path, json=json_body, params=params, headers=sent)
            except httpx.TransportError:
                if attempt >= self.max_retries:
                    raise
                await asyncio.sleep(_backoff(attempt, None, self.max_backoff_s))
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                await asyncio.sleep(_backoff(attempt, _retry_after(response), self.max_backoff_s))
                continue
            if response.status_code >= 400:
                raise PixelmillError.from_response(response)
            return response.json() if response.content else None
        raise AssertionError("unreachable")

    async def models(self) -> list[dict[str, Any]]:
        body = await self.request("GET", "/api/v1/models")
        return list(body.get("data") or body.get("models") or []) if isinstance(body, dict) else list(body)

    async def generate(self, prompt: str, *, model: str | None = None, width: int | None = None, height: int | None = None,
                       steps: int | None = None, seed: int | None = None, n: int = 1, output_format: str | None = None,
                       guidance: float | None = None, negative_prompt: str | None = None, safety_tolerance: int | None = None,
                       webhook_url: str | None = None, wait: bool = False, timeout: float | None = None) -> Execution:
        model = model or self._first_model(await self.request("GET", "/v1/models"))
        body = self._generate_body(prompt, model, width, height, steps, seed, n, output_format, guidance, negative_prompt, safety_tolerance, webhook_url)
        job = await self.request("POST", "/v2/images/generate", json_body=body)
        return await self.wait(job["jobId"], timeout=timeout) if wait else await self.get(job["jobId"])

    async def get(self, execution_id: str) -> Execution:
        return Execution.parse(await self.request("GET", f"/api/v1/executions/{execution_id}"))

    async def cancel(self, execution_id: str) -> Execution:
        await self.request("POST", f"/api/v1/executions/{execution_id}/cancel")
        return await self.get(execution_id)

    async def events(self, execution_id: str, last_event_id: int | None = None) -> AsyncIterator[Event]:
        headers = self._headers("GET", None)
        headers["Accept"] = "text/event-stream"
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        async with self._http.stream("GET", f"/api/v1/executions/{execution_id}/events", headers=headers, timeout=None) as response:
            if response.status_code >= 400:
                await response.aread()
                raise PixelmillError.from_response(response)
            parser = _SseParser()
            async for line in response.aiter_lines():
                event = parser.feed(line)
                if event is not None:
                    yield event
                    if event.terminal:
                        return

    async def wait(self, execution_id: str, timeout: float | None = None) -> Execution:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            async for event in self.events(execution_id):
                if event.terminal or (deadline and time.monotonic() > deadline):
                    break
        except httpx.TransportError:
            pass
        while True:
            execution = await self.get(execution_id)
            if execution.done or (deadline and time.monotonic() > deadline):
                return execution
            await asyncio.sleep(0.2)

    async def create_workflow(self, spec: dict[str, Any]) -> Workflow:
        return Workflow.parse(await self.request("POST", "/api/v1/workflows", json_body=spec))

    async def execute(self, workflow_id: str, inputs: dict[str, Any] | None = None, *, wait: bool = False,
                      timeout: float | None = None) -> Execution:
        started = await self.request("POST", f"/api/v1/workflows/{workflow_id}/execute", json_body={"inputs": inputs or {}})
        eid = started["executionId"]
        return await self.wait(eid, timeout=timeout) if wait else await self.get(eid)

    async def download(self, url: str, path: str | Path | None = None) -> bytes:
        response = await self._http.get(url)
        if response.status_code >= 400:
            raise PixelmillError.from_response(response)
        if path is not None:
            Path(path).write_bytes(response.content)
        return response.content

    async def credits(self) -> float:
        return float((await self.request("GET", "/v1/credits"))["credits"])

    async def load_model(self, name: str) -> dict[str, Any]:
        return await self.request("POST", f"/api/v1/models/{quote(name, safe='')}/load")

    async def unload_model(self, name: str) -> dict[str, Any]:
        return await self.request("POST", f"/api/v1/models/{quote(name, safe='')}/unload")


def verify_webhook(payload: bytes | str, headers: dict[str, str], secret: str) -> dict[str, Any]:
    """Check a webhook's Standard Webhooks signature with the account's ``whsec_`` secret; its JSON body.

    Raises ``standardwebhooks.WebhookVerificationError`` when it is forged or older than five minutes."""
    from standardwebhooks import Webhook

    return Webhook(secret).verify(payload, {k.lower(): v for k, v in headers.items()})
