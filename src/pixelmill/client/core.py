"""The client's requests, answers and retries; the transport (sync or async) is the only difference."""

from __future__ import annotations

import asyncio
import itertools
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


@dataclass(frozen=True)
class Graph:
    """A graph as ``POST /api/v1/executions`` runs it: ``nodes`` by id, each ``{"type", "params", …}``
    (``execution_graph`` gives the one an execution ran; ``run_graph`` runs it again)."""

    nodes: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": self.nodes}

    @classmethod
    def parse(cls, body: dict[str, Any]) -> "Graph":
        return cls(nodes=dict(body.get("nodes") or {}))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """When a call is tried again, the same for :class:`Client` and :class:`AsyncClient`.

    429 and 5xx answers and connection failures are tried again up to ``max_retries``
    times, after what ``Retry-After`` says (at most ``max_backoff_s``), else after an
    exponential backoff with jitter.  A POST carries one ``Idempotency-Key`` across all
    its tries, so a retry after a lost answer never runs the work twice.
    """

    max_retries: int = 3
    max_backoff_s: float = 30.0

    def headers(self, method: str, idempotency_key: str | None = None) -> dict[str, str]:
        """The headers that make the call safe to repeat: one ``Idempotency-Key`` per POST."""
        return {"Idempotency-Key": idempotency_key or str(uuid.uuid4())} if method == "POST" else {}

    def delay(self, attempt: int, outcome: httpx.Response | httpx.TransportError) -> float | None:
        """Seconds to wait before trying again after try ``attempt`` (0 first) ended in ``outcome``;
        None when the outcome is final (an answer to decode, or the error to raise)."""
        if attempt >= self.max_retries:
            return None
        if isinstance(outcome, httpx.TransportError):
            return self.backoff(attempt, None)
        if outcome.status_code in RETRY_STATUSES:
            return self.backoff(attempt, _retry_after(outcome))
        return None

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        return min(self.max_backoff_s, 0.25 * 2**attempt) * (0.5 + random.random() / 2)


def _answer(outcome: httpx.Response | httpx.TransportError) -> Any:
    """A call's final outcome: its decoded JSON (None when empty), else raised."""
    if isinstance(outcome, httpx.TransportError):
        raise outcome
    if outcome.status_code >= 400:
        raise PixelmillError.from_response(outcome)
    return outcome.json() if outcome.content else None


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
    _http_class: type = httpx.Client

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_backoff_s: float = 30.0,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
    ):
        self.base_url = (base_url or os.environ.get("PIXELMILL_BASE_URL") or "http://127.0.0.1:8000").rstrip("/")
        self.api_key = api_key or os.environ.get("PIXELMILL_API_KEY")
        self.retry = RetryPolicy(max_retries, max_backoff_s)
        self._http = self._http_class(base_url=self.base_url, timeout=timeout, transport=transport)

    def _headers(self, method: str, idempotency_key: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "pixelmill-client"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return {**headers, **self.retry.headers(method, idempotency_key), **(extra or {})}

    def _event_headers(self, last_event_id: int | None) -> dict[str, str]:
        extra = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            extra["Last-Event-ID"] = str(last_event_id)
        return self._headers("GET", extra=extra)

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
    def _graph_body(graph: "Graph | dict[str, Any]", label: str | None) -> dict[str, Any]:
        body = graph.to_dict() if isinstance(graph, Graph) else {"nodes": graph["nodes"]}
        if label is not None:
            body["label"] = label
        return body

    @staticmethod
    def _execute_body(inputs: dict[str, Any] | None, webhook_url: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"inputs": inputs or {}}
        if webhook_url:
            body["webhook_url"] = webhook_url
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

    _http_class = httpx.Client

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------

    def request(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
                idempotency_key: str | None = None, headers: dict[str, str] | None = None) -> Any:
        """One API call, tried again as :class:`RetryPolicy` says; the decoded JSON answer (None for an empty one)."""
        sent = self._headers(method, idempotency_key, headers)
        for attempt in itertools.count():
            try:
                outcome = self._http.request(method, path, json=json_body, params=params, headers=sent)
            except httpx.TransportError as exc:
                outcome = exc
            delay = self.retry.delay(attempt, outcome)
            if delay is None:
                return _answer(outcome)
            time.sleep(delay)

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

    def execution_graph(self, execution_id: str) -> Graph:
        """The graph an execution ran (``?include=graph``); :meth:`run_graph` runs it again."""
        return Graph.parse(self.request("GET", f"/api/v1/executions/{execution_id}", params={"include": "graph"})["graph"])

    def run_graph(self, graph: Graph | dict[str, Any], *, label: str | None = None, wait: bool = False,
                  timeout: float | None = None) -> Execution:
        """Run a graph as it is (``POST /api/v1/executions``); with ``wait`` until it finished."""
        started = Execution.parse(self.request("POST", "/api/v1/executions", json_body=self._graph_body(graph, label)))
        return self.wait(started.id, timeout=timeout) if wait else started

    def events(self, execution_id: str, last_event_id: int | None = None) -> Iterator[Event]:
        """The execution's events, live, until its terminal event (resumable from ``last_event_id``)."""
        headers = self._event_headers(last_event_id)
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
        started = self.request("POST", f"/api/v1/workflows/{workflow_id}/execute", json_body=self._execute_body(inputs, webhook_url))
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

    _http_class = httpx.AsyncClient

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def request(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
                      idempotency_key: str | None = None, headers: dict[str, str] | None = None) -> Any:
        sent = self._headers(method, idempotency_key, headers)
        for attempt in itertools.count():
            try:
                outcome = await self._http.request(method, path, json=json_body, params=params, headers=sent)
            except httpx.TransportError as exc:
                outcome = exc
            delay = self.retry.delay(attempt, outcome)
            if delay is None:
                return _answer(outcome)
            await asyncio.sleep(delay)

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

    async def execution_graph(self, execution_id: str) -> Graph:
        body = await self.request("GET", f"/api/v1/executions/{execution_id}", params={"include": "graph"})
        return Graph.parse(body["graph"])

    async def run_graph(self, graph: Graph | dict[str, Any], *, label: str | None = None, wait: bool = False,
                        timeout: float | None = None) -> Execution:
        started = Execution.parse(await self.request("POST", "/api/v1/executions", json_body=self._graph_body(graph, label)))
        return await self.wait(started.id, timeout=timeout) if wait else started

    async def events(self, execution_id: str, last_event_id: int | None = None) -> AsyncIterator[Event]:
        headers = self._event_headers(last_event_id)
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
                      timeout: float | None = None, webhook_url: str | None = None) -> Execution:
        body = self._execute_body(inputs, webhook_url)
        started = await self.request("POST", f"/api/v1/workflows/{workflow_id}/execute", json_body=body)
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
