"""Polls of an execution, answered before routing.

A client waiting for a result polls it, often many times a second.  For a poll
by a key whose principal is cached, the accounts step
(:class:`pixelmill.api.middleware.AccountsMiddleware`, which has already
authenticated the key and read its rate-limit state) answers at once through
the same renderer as the route, instead of passing the request through routing,
dependency injection and the route's error handling: from memory when the
execution is there (finished, or unfinished and read a moment ago, see
:meth:`ExecutionService.cached`), else after one read in a worker thread, the
read the route makes.  The answer is the route's answer byte for byte; anything
else (an unknown execution, an error of the read, an uncached key, another
method, a query parameter besides the execution id such as ``?include=graph``)
goes the normal way, and the route answers it in its dialect's shape.

Each dialect's route is registered in :func:`pixelmill.api.app.create_app` with
its path template and renderer.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from pixelmill.api.files import request_base_url
from pixelmill.engine.views import ExecutionView

#: a renderer: the route's JSON body for a finished execution
Render = Callable[[Request, ExecutionView], Any]


@dataclass(frozen=True)
class HotRoute:
    path: str  # the route's template, as metrics label requests
    pattern: re.Pattern
    query_id: str | None  # the execution id is this query parameter (else the path's one parameter)
    render: Render


class HotReads:
    """The poll routes answered before routing (see the module docstring).

    An answer's only part that moves with time is its signed URLs, whose expiry is
    counted in whole seconds: within one second the answer for one view is the same
    bytes, so each view is rendered once per second however often it is polled (a
    running execution gets a new view with each change).  Runs on the event loop only
    (no lock).
    """

    #: rendered answers kept for the current second, at most
    MAX_RENDERED = 10_000

    def __init__(self) -> None:
        self._routes: list[HotRoute] = []
        self._second = 0
        #: (route, execution, base URL) -> (the view rendered, its bytes): reused for that very view only
        self._rendered: dict[tuple[str, str, str], tuple[ExecutionView, bytes]] = {}

    def add(self, path: str, render: Render, query_id: str | None = None) -> None:
        """``path`` is a route template with at most one ``{parameter}``, the execution id unless ``query_id`` names it."""
        regex = re.escape(path)
        regex = re.sub(r"\\\{[a-z_]+\\\}", "([^/]+)", regex)
        self._routes.append(HotRoute(path, re.compile(f"^{regex}$"), query_id, render))

    async def answer(self, scope: Scope, runtime: Any, account_id: str) -> Response | None:
        """The route's answer for a poll of an execution the account may see; None when the route answers."""
        found = self._match(scope)
        if found is None:
            return None
        route, execution_id = found
        executions = runtime.executions
        try:
            view = executions.cached(account_id, execution_id)
            if view is None:
                view = await run_in_threadpool(executions.get, account_id, execution_id)
        except Exception:  # not found, the database busy, …: the route reads again and answers in its dialect's shape
            return None
        scope["route"] = route  # metrics and logs name the route's template
        return self._respond(route, Request(scope), view)

    def _match(self, scope: Scope) -> tuple[HotRoute, str] | None:
        """The poll route the request is for and the execution it names, or None."""
        if scope["method"] != "GET" or not self._routes:
            return None
        path = scope["path"]
        for route in self._routes:
            m = route.pattern.match(path)
            if m is None:
                continue
            query = QueryParams(scope["query_string"])
            if any(name != route.query_id for name in query.keys()):
                return None  # options (``?include=graph``) and their validation are the route's
            return route, (query.get(route.query_id, "") if route.query_id is not None else m.group(1))
        return None

    def _respond(self, route: HotRoute, request: Request, view: ExecutionView) -> Response:
        second = int(time.time())
        if second != self._second:  # the URLs signed last second expire a second earlier than this one's
            self._second, self._rendered = second, {}
        key = (route.path, view.id, request_base_url(request))
        kept = self._rendered.get(key)
        if kept is not None and kept[0] is view:  # a new view (it ran on, finished, was read again): render it
            return Response(kept[1], media_type="application/json")
        body = JSONResponse(route.render(request, view)).body
        if len(self._rendered) < self.MAX_RENDERED or key in self._rendered:
            self._rendered[key] = (view, body)
        return Response(body, media_type="application/json")
