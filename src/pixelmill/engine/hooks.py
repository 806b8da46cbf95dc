"""Lifecycle hooks: one typed extension point for everything that reacts to executions.

A hook is a subclass of :class:`Hooks` that overrides only the methods it needs;
every method does nothing by default.  The engine's :class:`~pixelmill.engine.lifecycle.Lifecycle`
calls its list of hooks in order for each event it writes:

* :meth:`Hooks.on_event` runs **inside** the transaction of the state change, with
  its connection: what it writes commits or rolls back together with the change
  (the webhook outbox).  An exception here fails the state change.
* :meth:`Hooks.after_commit` runs **after** that transaction committed, never for a
  change that rolled back (wake-ups of waiting clients, metrics).  An exception
  here is logged and ignored: the change is already durable.

Events (``LifecycleEvent.type``): ``execution.created``, ``execution.started``,
``execution.progress``, ``execution.cancel_requested``, ``node.started``,
``node.preview``, ``node.completed``, ``node.failed``, ``node.cancelled``,
``execution.succeeded``, ``execution.failed``, ``execution.cancelled``.

Example::

    class CountFinished(Hooks):
        def after_commit(self, event: LifecycleEvent) -> None:
            if event.is_terminal:
                counter.labels(event.type).inc()

    runtime.lifecycle.add_hook(CountFinished())
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

log = logging.getLogger("pixelmill.engine")

TERMINAL_EVENTS = frozenset({"execution.succeeded", "execution.failed", "execution.cancelled"})


@dataclass(frozen=True)
class LifecycleEvent:
    """One entry of an execution's event log, as hooks see it."""

    execution_id: str
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    #: what the writer knew beyond the stored data, so hooks need not read it back (never stored):
    #: node events carry ``node_type``, ``params``, ``queued_at``, ``started_at``, ``finished_at``;
    #: terminal events ``dialect`` and ``cost_actual_micro``
    facts: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_terminal(self) -> bool:
        """True for the event that finishes the execution (succeeded, failed, cancelled)."""
        return self.type in TERMINAL_EVENTS


class Hooks:
    """Base class of lifecycle hooks; every method does nothing unless overridden."""

    def on_event(self, conn: Connection, event: LifecycleEvent) -> None:
        """Called inside the transaction that writes ``event``, with its connection."""

    def after_commit(self, event: LifecycleEvent) -> None:
        """Called once the transaction that wrote ``event`` has committed."""


def wants_after_commit(hook: Hooks) -> bool:
    """Whether ``hook`` overrides :meth:`Hooks.after_commit` (others need no commit callback)."""
    return type(hook).after_commit is not Hooks.after_commit


def run_after_commit(hooks: list[Hooks], event: LifecycleEvent) -> None:
    for hook in hooks:
        try:
            hook.after_commit(event)
        except Exception:  # the change is durable; a hook's failure must not undo or hide it
            log.exception("after-commit hook %s failed for %s of execution %s", type(hook).__name__, event.type, event.execution_id)
