"""Which request parameter a graph problem is about, for dialects that name one in their errors."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pixelmill.engine.graph import GraphProblems


@dataclass(frozen=True)
class ProblemParam:
    """One problem of a refused graph: the generation parameter path it names (may be empty) and its message."""

    path: tuple[str, ...]
    message: str
    about_params: bool = False
    """True when the engine located it in a node's params (rather than its inputs or the node)."""


def problem_params(err: GraphProblems, fields: Iterable[str] = ()) -> list[ProblemParam]:
    """Every problem of ``err``, each with the generation parameter it is about.

    The path is the problem's location without the ``params`` level; a
    model-level check (no location) whose message starts with one of ``fields``
    (``"steps must be at most ..."``) is about that field.
    """
    known = set(fields)
    out = []
    for problem in err.details.get("problems") or [{"msg": err.message}]:
        message = str(problem.get("msg", ""))
        loc = [str(p) for p in problem.get("loc") or []]
        path = tuple(p for p in loc if p != "params")
        if not path and message.split(" ", 1)[0] in known:
            path = (message.split(" ", 1)[0],)
        out.append(ProblemParam(path, message, about_params=loc[:1] == ["params"]))
    return out


def first_problem(err: GraphProblems, fields: Iterable[str] = ()) -> ProblemParam:
    """The first of :func:`problem_params`."""
    return problem_params(err, fields)[0]
