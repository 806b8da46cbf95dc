"""Synchronous waits on submit endpoints: ``Prefer: wait`` / ``Prefer: wait=N`` (RFC 7240, as Replicate).

``wait`` alone means the server's cap (``settings.max_wait_s``, 60 s by default);
``wait=N`` waits at most N seconds (capped).  The request is held without
blocking the event loop until every execution is terminal or the time is up:
it sleeps on the runtime's notifier and re-reads the store (in a worker thread)
when woken, or every ``settings.wait_poll_s`` as a safety net.  The route then
answers with the current state and ``Preference-Applied: wait=N``.
"""

from __future__ import annotations

import asyncio
import time

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pixelmill.api.files import render_execution, signed_url
from pixelmill.engine.notify import TERMINAL_EVENTS
from pixelmill.engine.views import ExecutionView
from pixelmill.presenters.bfl import render_result


def requested_wait(prefer: str | None, cap_s: float) -> int | None:
    """Seconds to wait from a ``Prefer`` header; None when it asks for no wait."""
    if not prefer:
        return None
    for part in prefer.replace(";", ",").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        if not value:
            return int(cap_s)
        try:
            seconds = int(float(value))
        except ValueError:
            return None
        return max(0, min(seconds, int(cap_s)))
    return None


def _reader(runtime, account_id: str):
    """What a subscription calls, in the thread that delivers an end notice: read the execution
    (a finished one stays in memory, :meth:`~pixelmill.engine.service.ExecutionService.finished`)."""

    def read(execution_id: str) -> None:
        runtime.executions.get(account_id, execution_id)

    return read


async def wait_terminal(runtime, account_id: str, views: list[ExecutionView], seconds: float) -> list[ExecutionView]:
    """The executions' views once all are terminal, or as they are when ``seconds`` have passed.

    ``views`` may be a submit's answer without queue positions (``queue_state=False``: a run that
    starts at once never needs them): an answer given unfinished is always read again first."""
    deadline = time.monotonic() + seconds
    current = list(views)
    if all(v.status.is_terminal() for v in current):
        return current

    async def read() -> list[ExecutionView]:
        return await run_in_threadpool(lambda: [runtime.executions.get(account_id, v.id) for v in current])

    def in_memory() -> list[ExecutionView] | None:
        """The views from memory once every execution ended and was read (by ``on_end``); no I/O."""
        views = [runtime.executions.finished(account_id, v.id) for v in current]
        return views if all(v is not None for v in views) else None

    poll_s = runtime.settings.wait_poll_s
    read_again = True  # the views given were not read here
    with runtime.notifier.subscribe([v.id for v in current]) as sub:
        # an execution that ends is read where its notice arrives (the thread that finished it, or the
        # bus listener), so the answer needs no thread-pool hop and no read after the wake-up
        sub.on_end = _reader(runtime, account_id)
        read_at = time.monotonic()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                # as last read (with queue positions and estimates)
                return await read() if read_again else current
            await sub.wait(min(left, max(0.0, read_at + poll_s - time.monotonic())))
            ended = any(n.event in TERMINAL_EVENTS for n in sub.drain())
            if not ended and time.monotonic() < min(deadline, read_at + poll_s):
                continue  # progress and the like: nothing a waiter answers with
            read_at = time.monotonic()
            current, read_again = (in_memory() if ended else None) or await read(), False
            if all(v.status.is_terminal() for v in current):
                return current


def applied_header(seconds: int) -> dict[str, str]:
    return {"Preference-Applied": f"wait={seconds}"}


async def bfl_response(request, account_id: str, view: ExecutionView, seconds: int):
    """BFL submit with ``Prefer: wait``: the get_result shape plus ``polling_url``."""
    rt = request.app.state.runtime
    (view,) = await wait_terminal(rt, account_id, [view], seconds)
    base = (rt.settings.public_base_url or str(request.base_url)).rstrip("/")
    body = render_result(view, lambda f: signed_url(request, f))
    body["polling_url"] = f"{base}/v1/get_result?id={view.id}"
    return JSONResponse(body, headers=applied_header(seconds))


async def workflow_response(request, account_id: str, workflow_id: str, batch_id: str | None, views: list[ExecutionView], seconds: int):
    """Workflow execute with ``Prefer: wait``: the execution (or, for a batch, the batch of runs)."""
    rt = request.app.state.runtime
    views = await wait_terminal(rt, account_id, views, seconds)
    runs = [render_execution(request, v) for v in views]
    first = views[0]
    headers = applied_header(seconds)
    if batch_id is None:
        body = {**runs[0], "pollUrl": f"/api/v1/executions/{first.id}/poll"}
        headers["Location"] = f"/api/v1/executions/{first.id}"
    else:
        body = {"executionId": first.id, "workflowId": workflow_id, "batchId": batch_id, "status": runs[0]["status"],
                "pollUrl": f"/api/v1/executions/{first.id}/poll", "executionRuns": runs}
        headers["Location"] = f"/api/v1/batches/{batch_id}"
    return JSONResponse(body, status_code=201, headers=headers)
