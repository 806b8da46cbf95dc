"""A Python client for pixelmill's own API, sync and async, on httpx.

    from pixelmill.client import Client

    with Client("http://127.0.0.1:8000", api_key="sk-...") as px:
        job = px.generate("a red circle on a yellow background", width=256, height=256, seed=7)
        for event in px.events(job.id):          # typed progress events, live
            print(event.type, event.data.get("progress"))
        done = px.wait(job.id)
        px.download(done.outputs[0], "out.png")
        again = px.run_graph(px.execution_graph(done.id), wait=True)   # the same graph, run again

``AsyncClient`` has the same methods as coroutines (``events`` is an async
iterator).  Every POST carries an ``Idempotency-Key`` (one per call, kept
across its retries), so a retry after a lost answer never runs work twice;
429 and 5xx answers and connection failures are retried up to
``max_retries`` times, waiting what ``Retry-After`` says (else a short
exponential backoff).  Errors raise :class:`PixelmillError` with the
server's stable ``code``, HTTP ``status`` and ``message``.
"""

from __future__ import annotations

from pixelmill.client.core import (
    AsyncClient,
    Client,
    Event,
    Execution,
    Graph,
    PixelmillError,
    RetryPolicy,
    Workflow,
    verify_webhook,
)

__all__ = ["AsyncClient", "Client", "Event", "Execution", "Graph", "PixelmillError", "RetryPolicy", "Workflow", "verify_webhook"]
