"""Live progress: ``GET /api/v1/executions/{id}/events`` as Server-Sent Events.

The stream replays the execution's event log (``execution_events``) after
``Last-Event-ID`` (or ``?lastEventId=``; the log's ``seq``), then follows it:

* each logged event is one SSE message: ``id: <seq>``, ``event: <name>``
  (``execution.created``, ``execution.started``, ``node.started``,
  ``execution.progress``, ``node.completed``, ``execution.succeeded`` …),
  ``data: {"executionId", "createdAt", …event data}``;
* ``node.preview`` messages (nodes asked for ``previews``) carry
  ``{"node", "index", "files", "images": [{"id", "url", "width", "height"}]}``:
  the sampler's intermediate state, with signed URLs;
* about once a second, when it changed, a ``snapshot`` message without an id
  (so resuming is unaffected): ``{"status", "progress", "queuePosition",
  "estimatedStartAt"}``;
* ``: keep-alive`` comments every 15 s of silence;
* without an API key, the signed ``streamUrl`` of the execution (valid one hour)
  opens the stream: ``new EventSource(execution.streamUrl)`` in a browser;
* the stream ends after the terminal event (``execution.succeeded``,
  ``execution.failed`` or ``execution.cancelled``); resuming after it returns
  an empty stream that closes at once.

Reads run in worker threads.  Between reads the stream sleeps on the runtime's
notifier: a logged event wakes it at once; without one it re-reads once a
second (the snapshot) as a safety net.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, AsyncIterator, Callable

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from pixelmill.api.deps import presented_key, principal
from pixelmill.api import contract
from pixelmill.api.files import signed_url
from pixelmill.api.sse import sse_message
from pixelmill.engine.views import EventView, FileView
from pixelmill.errors import BadRequest, Forbidden, NotFound
from pixelmill.presenters.workflow import EXECUTION_STATUS

router = APIRouter(prefix="/api/v1", tags=["Executions"])

TERMINAL_EVENTS = frozenset({"execution.succeeded", "execution.failed", "execution.cancelled"})
SNAPSHOT_S = 1.0
KEEPALIVE_S = 15.0


MAX_SEQ = 2**63 - 1


def _last_event_id(request: Request, query: int | None) -> int:
    """Where to resume: the ``Last-Event-ID`` header, else ``?lastEventId=``; a seq of the log."""
    raw = request.headers.get("last-event-id")
    if raw is None or not raw.strip():
        return query or 0
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_SEQ:
        raise BadRequest("Last-Event-ID must be an event id this stream sent (a non-negative integer)", code="invalid_last_event_id")
    return int(raw)


class EventStream:
    """One client's stream over an execution's event log."""

    def __init__(self, runtime, account_id: str, execution_id: str, after_seq: int, url_for: Callable[[FileView], str]):
        self.rt = runtime
        self.account_id = account_id
        self.execution_id = execution_id
        self.after = after_seq
        self.url_for = url_for

    def _fetch(self) -> list[EventView]:
        return self.rt.executions.events(self.execution_id, self.after, limit=500)

    def _data(self, r: EventView) -> dict[str, Any]:
        data = {"executionId": self.execution_id, "createdAt": r.created_at, **r.data}
        if r.event == "node.preview":
            files = r.preview.files if r.preview is not None else []
            data["images"] = [{"id": f.id, "url": self.url_for(f), "width": f.width, "height": f.height} for f in files]
        return data

    def _messages(self, rows: list) -> tuple[list[str], bool]:
        out, done = [], False
        for r in rows:
            self.after = r.seq
            out.append(sse_message(self._data(r), r.event, r.seq))
            if r.event in TERMINAL_EVENTS:
                done = True
                break
        return out, done

    def _snapshot(self) -> dict[str, Any] | None:
        try:
            view = self.rt.executions.get(self.account_id, self.execution_id)
        except NotFound:
            return None
        return {
            "status": EXECUTION_STATUS[view.status],
            "progress": 1.0 if EXECUTION_STATUS[view.status] == "COMPLETED" else view.progress,
            "queuePosition": view.queue_position,
            "estimatedStartAt": getattr(view, "estimated_start_at", None),
            "terminal": view.status.is_terminal(),
        }

    async def __aiter__(self) -> AsyncIterator[str]:
        with self.rt.notifier.subscribe([self.execution_id]) as sub:
            async for message in self._follow(sub):
                yield message

    async def _follow(self, sub) -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        last_write = time.monotonic()
        last_snapshot: dict | None = None
        snapshot_at = 0.0
        while True:
            messages, done = self._messages(await run_in_threadpool(self._fetch))
            for m in messages:
                yield m
            if done:
                return
            if messages:
                last_write = time.monotonic()
                continue  # more may be waiting (long logs come in pages)
            now = time.monotonic()
            if now - snapshot_at >= SNAPSHOT_S:
                snapshot_at = now
                snap = await run_in_threadpool(self._snapshot)
                if snap is None:
                    return  # expired meanwhile
                if snap["terminal"]:
                    # the terminal event commits with the status: read it, then close
                    messages, _ = self._messages(await run_in_threadpool(self._fetch))
                    for m in messages:
                        yield m
                    return
                snap.pop("terminal")
                if snap != last_snapshot:
                    last_snapshot = snap
                    last_write = now
                    yield sse_message(snap, "snapshot")
            if now - last_write >= KEEPALIVE_S:
                last_write = now
                yield ": keep-alive\n\n"
            next_due = min(snapshot_at + SNAPSHOT_S, last_write + KEEPALIVE_S)
            await sub.wait(max(0.0, next_due - time.monotonic()))
            sub.drain()


@router.get(
    "/executions/{execution_id}/events",
    response_class=StreamingResponse,
    openapi_extra={"security": [{"x-key": []}, {"X-API-Key": []}, {"Bearer": []}, {}]},
    responses={200: {"description": "Server-Sent Events", "content": {"text/event-stream": {"schema": {"type": "string"}}}}, **contract.responses(*contract.COMMON)},
)
async def execution_events_stream(
    execution_id: str,
    request: Request,
    lastEventId: Annotated[int | None, Query(ge=0, le=MAX_SEQ, description="Resume after this event id (as Last-Event-ID)")] = None,
    exp: str | None = None,
    sig: str | None = None,
):
    """The stream, for the key's own execution, or key-less through the signed ``streamUrl``."""
    rt = request.app.state.runtime
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if presented_key(request) is None and exp is not None and sig is not None:
        problem = rt.signer.verify_stream(execution_id, exp, sig)
        if problem == "expired":
            raise Forbidden("This stream URL has expired; fetch a fresh one from the execution", code="url_expired")
        if problem:
            raise Forbidden("Invalid stream URL signature", code="bad_signature")
        view = await run_in_threadpool(rt.executions.get, None, execution_id)
        account_id = view.account_id
        headers["Access-Control-Allow-Origin"] = "*"  # the signature is the credential; no cookies involved
    else:
        account_id = (await principal(request)).account_id
        await run_in_threadpool(rt.executions.get, account_id, execution_id)  # 404 before the stream starts
    stream = EventStream(rt, account_id, execution_id, _last_event_id(request, lastEventId), lambda f: signed_url(request, f))
    return StreamingResponse(stream.__aiter__(), media_type="text/event-stream", headers=headers)
